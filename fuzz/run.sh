#!/usr/bin/env bash
# Builds and runs guardrail-tower's fuzz targets (cargo-fuzz / libFuzzer), each for a bounded time.
#
# Usage:   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      (from anywhere)
#   e.g.   fuzz/run.sh             # every target, 60 s each
#          fuzz/run.sh 300 guarded_sse_body
#
# Requirements: a Rust toolchain (stable is enough: RUSTC_BOOTSTRAP=1 lets it take the nightly
# flags libFuzzer needs) and cargo-fuzz (`cargo install --locked cargo-fuzz`), a C++ compiler
# (libfuzzer-sys builds libFuzzer).
#
# Environment:
#   CARGO_TARGET_DIR  where to build (default /tmp/target-fuzz)
#   FUZZ_WORK         corpora and crash artifacts (default /tmp/guardrail-tower-fuzz); the saved
#                     inputs of tests/fuzz_regressions/<target>/ seed each corpus
#   SANITIZER         none (default: the code is safe Rust) or address
#   RSS_LIMIT_MB      libFuzzer -rss_limit_mb (default 2048)
#   JOBS              libFuzzer -fork=N (default 0: one process); with JOBS > 0 a target keeps going
#                     after a crash (-ignore_crashes) and reports every crash at the end
#
# Exit status: 0 when no target crashed; 1 when one did (a panic, a hang, a leak over the RSS
# limit, a timeout). Each crash input is minimized when it can be, and copied into
# tests/fuzz_regressions/<target>/crash-<hash>, where `cargo test --test fuzz_regressions` runs it
# with the same checks. A failing input there is a bug to fix, or a check to correct.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
secs="${1:-60}"
shift $(($# > 0 ? 1 : 0))
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(sse_decoder request_parsing error_normalizer guarded_sse_body)
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/target-fuzz}"
export RUSTC_BOOTSTRAP=1
work="${FUZZ_WORK:-/tmp/guardrail-tower-fuzz}"
sanitizer="${SANITIZER:-none}"
rss="${RSS_LIMIT_MB:-2048}"
jobs="${JOBS:-0}"

max_len() {
    case "$1" in
        sse_decoder) echo 4096 ;;
        request_parsing) echo 8192 ;;
        error_normalizer) echo 8192 ;;
        guarded_sse_body) echo 16384 ;;
    esac
}
dict() {
    case "$1" in
        sse_decoder | guarded_sse_body) echo "$here/dict/sse.dict" ;;
        *) echo "$here/dict/json.dict" ;;
    esac
}

cd "$root" || exit 2
echo "building ${targets[*]} (sanitizer: $sanitizer, target dir: $CARGO_TARGET_DIR)"
mkdir -p "$work"
for t in "${targets[@]}"; do
    # One retry: a parallel build elsewhere can make the first attempt fail.
    if ! cargo fuzz build -O -a -s "$sanitizer" --target-dir "$CARGO_TARGET_DIR" "$t" >"$work/build.log" 2>&1 &&
        ! cargo fuzz build -O -a -s "$sanitizer" --target-dir "$CARGO_TARGET_DIR" "$t" >"$work/build.log" 2>&1; then
        tail -20 "$work/build.log"
        echo "build of $t failed" >&2
        exit 2
    fi
done
bin_dir="$CARGO_TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release"

failed=0
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    artifacts="$work/artifacts/$t"
    saved="$root/tests/fuzz_regressions/$t"
    mkdir -p "$corpus" "$artifacts"
    [ -d "$saved" ] && cp -n "$saved"/* "$corpus"/ 2>/dev/null
    flags=(-max_total_time="$secs" -max_len="$(max_len "$t")" -rss_limit_mb="$rss" -timeout=10
        -dict="$(dict "$t")" -artifact_prefix="$artifacts/" -print_final_stats=1)
    if [ "$jobs" -gt 0 ]; then
        flags+=(-fork="$jobs" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
    fi
    log="$work/$t.log"
    echo "== $t: ${secs}s, max_len $(max_len "$t") (log: $log)"
    before="$(ls "$artifacts" | wc -l)"
    "$bin_dir/$t" "${flags[@]}" "$corpus" >"$log" 2>&1
    rc=$?
    # The last progress line: runs so far, coverage, corpus size, executions per second.
    grep -E '^#[0-9]+.*exec/s' "$log" | tail -1
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" | tr -s ' \n' ' '
    echo
    new=$(ls -t "$artifacts" | head -n $(($(ls "$artifacts" | wc -l) - before)))
    if [ "$rc" -ne 0 ] || [ -n "$new" ]; then
        failed=1
        echo "!! $t failed (exit $rc)"
        grep -m1 -A2 -E 'panicked at|ERROR: libFuzzer' "$log"
        mkdir -p "$saved"
        for a in $new; do
            input="$artifacts/$a"
            case "$a" in crash-*)
                # Minimize (bounded); keep the original when minimizing finds nothing smaller.
                "$bin_dir/$t" -minimize_crash=1 -max_total_time=30 -runs=20000 \
                    -exact_artifact_path="$artifacts/min-$a" "$input" >/dev/null 2>&1
                [ -s "$artifacts/min-$a" ] && input="$artifacts/min-$a" ;;
            esac
            cp "$input" "$saved/$a"
            echo "   saved tests/fuzz_regressions/$t/$a ($(wc -c <"$input") bytes)"
        done
    fi
done
exit "$failed"
