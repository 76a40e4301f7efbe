//! Process-wide settings of the gateway binary, applied before its runtime starts.

/// Turns transparent huge pages (THP) off for this process and the processes it starts
/// (Linux `prctl(PR_SET_THP_DISABLE)`); returns whether they are now off. On other systems,
/// or if the kernel refuses, nothing changes and this returns `false`.
///
/// Where THP is enabled (`always`, or `madvise`, since mimalloc advises huge pages for its
/// arenas; see `/sys/kernel/mm/transparent_hugepage/enabled`), the kernel backs any touched
/// 2 MiB-aligned stretch of the heap with a whole 2 MiB page, so a gateway whose heap is a few
/// MiB holds several times that. Measured under load with the content filter
/// (`BENCHMARKS.md`): 52 MiB peak RSS with THP, 24 MiB without, at the same CPU per request.
///
/// Call it first thing in `main`, before the runtime and the allocator's arenas are set up: it
/// does not split huge pages that already exist.
pub fn disable_transparent_huge_pages() -> bool {
    #[cfg(target_os = "linux")]
    {
        nix::sys::prctl::set_thp_disable(true).is_ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_process_stops_using_transparent_huge_pages() {
        assert!(disable_transparent_huge_pages());
        assert_eq!(nix::sys::prctl::get_thp_disable(), Ok(true));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.lines().any(|l| l == "THP_enabled:\t0"), "{status}");
    }
}
