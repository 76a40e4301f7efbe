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
/// It does not split huge pages that already exist, such as those of the allocator's first
/// arena, set up before `main`: [`disable_transparent_huge_pages_from_start`] avoids those.
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

/// [`disable_transparent_huge_pages`] from the process's first allocation on: if THP was on,
/// turns it off and starts this program again in the same process (`execve` of
/// `/proc/self/exe` with the same arguments and environment: same PID, and the setting survives
/// `execve`), so the new image never had a huge page. Returns (without restarting) when THP was
/// already off, which the restarted image finds; returns whether THP is off.
///
/// Why the restart: Rust's runtime allocates before `main` (the main thread's handle, the
/// arguments), and mimalloc sets up its first arena for that, with huge pages where THP is on.
/// Turning THP off in `main` left those pages: 4 MiB of huge pages at start, most of it unused
/// (measured in `BENCHMARKS.md`), in every gateway. If the restart fails (no `/proc`), the
/// process goes on with THP off from then on, as before.
///
/// Call it first thing in `main`, before any thread is started.
pub fn disable_transparent_huge_pages_from_start() -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStringExt as _;

        if nix::sys::prctl::get_thp_disable() == Ok(true) {
            return true;
        }
        if !disable_transparent_huge_pages() {
            return false;
        }
        let args: Result<Vec<std::ffi::CString>, _> = std::env::args_os()
            .map(|a| std::ffi::CString::new(a.into_vec()))
            .collect();
        if let Ok(args) = args {
            // Returns only if the program could not be started again.
            let _ = nix::unistd::execv(c"/proc/self/exe", &args);
        }
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The process's open-file limit (the soft `RLIMIT_NOFILE`): how many file descriptors it may
/// hold, sockets included. `None` when it is unlimited or cannot be read (systems other than
/// Linux).
pub fn open_file_limit() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit};
        getrlimit(Resource::RLIMIT_NOFILE)
            .ok()
            .and_then(|(soft, _)| (soft != RLIM_INFINITY).then_some(soft))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Raises the open-file limit (the soft `RLIMIT_NOFILE`) to the most the process may have (the
/// hard limit), as Go's runtime and nginx's `worker_rlimit_nofile` do; returns the limits
/// before and after when it rose. The usual soft limit of 1,024 (systemd's and most shells'
/// default, kept low for programs that use `select`) holds a gateway to a few hundred
/// connections, while the hard limit, set by the administrator, is what the system allows.
/// The gateway uses `epoll` and never `select`, so the soft limit protects nothing here.
///
/// Call it before [`Gateway`](crate::app::Gateway) is built: its default
/// [`max_client_connections`](crate::config::GatewayConfig::max_client_connections) is
/// derived from the limit then.
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        if soft >= hard {
            return None;
        }
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
        Some((soft, hard))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The memory the process may use, in bytes: the least of the machine's (`MemTotal` in
/// `/proc/meminfo`) and its control group's limit (cgroup v2 `memory.max`, v1
/// `memory.limit_in_bytes`), as a container sets it. `None` where none can be read (systems
/// other than Linux).
pub fn memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let machine = read("/proc/meminfo").and_then(|info| mem_total(&info));
    let group = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .into_iter()
    .find_map(read)
    .and_then(|limit| limit.trim().parse::<u64>().ok());
    match (machine, group) {
        (Some(m), Some(g)) => Some(m.min(g)),
        (m, g) => m.or(g),
    }
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib = line["MemTotal:".len()..].trim().strip_suffix("kB")?.trim();
    kib.parse::<u64>().ok()?.checked_mul(1024)
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

    #[test]
    fn memory_is_read_from_meminfo_and_the_control_group() {
        assert_eq!(
            mem_total("MemTotal:       24579812 kB\nMemFree:  1 kB\n"),
            Some(24_579_812 * 1024)
        );
        assert_eq!(mem_total("MemFree:  1 kB\n"), None);
        let machine = mem_total(&std::fs::read_to_string("/proc/meminfo").unwrap()).unwrap();
        let limit = memory_limit().unwrap();
        assert!(limit > 0 && limit <= machine, "{limit} of {machine}");
    }

    #[test]
    fn the_open_file_limit_is_read_and_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let _ = raise_open_file_limit();
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert_eq!(
            open_file_limit(),
            Some(soft).filter(|&s| s != nix::sys::resource::RLIM_INFINITY)
        );
        // Raised already: nothing more to do.
        assert_eq!(raise_open_file_limit(), None);
    }
}
