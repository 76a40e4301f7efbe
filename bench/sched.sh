#!/usr/bin/env bash
# Where the idle time under load goes: the cores stand idle for a few microseconds a request
# even in a closed loop that should keep them busy (bench/cpu.sh's "idle µs" column). This
# records the kernel's scheduler events with `perf sched` while 16 concurrent clients load each
# proxy, and divides every idle stretch of a core by what the other core was doing meanwhile:
#
#   bash bench/sched.sh
#
# For each target (bare, gw-none, gw-filter: as in bench/cpu.sh), the proxy serves oha's
# requests in front of the mock upstream; after a warm-up, `perf sched record -a` records
# BENCH_SECONDS of the run. The table gives, per request:
#   - idle µs: time a core was idle;
#   - waited µs: the part of it during which a thread was runnable on the other core, queued
#     behind what that core was running (the kernel did not move it to the idle core);
#   - which threads waited so (the proxy's, the mock's, the load generator's);
#   - what ran on the other core meanwhile, by thread (the busiest three);
# and the proxy's threads' longest stretch on a core.
#
# Needs perf (Debian: linux-perf) and the right to record scheduler events of every process
# (root, or kernel.perf_event_paranoid at -1).
#
# Environment (all optional):
#   BENCH_TARGETS     subset of: bare gw-none gw-filter (default: all three)
#   BENCH_SECONDS     seconds recorded per target (default 2)
#   BENCH_CONCURRENCY concurrent requests (default 16)
#   BENCH_EVENTS      E: every request asks for a stream of E content events instead (the body
#                     with "stream": true, and x-mock-events: E)
#   BENCH_PORT_BASE   first of two consecutive ports on 127.0.0.1 (default 18521)
#   BENCH_GATEWAY     the gateway binary to measure (default: the release build)
#   BENCH_KEEP        1 keeps the work directory (perf.data and `perf sched timehist` output)
#   BENCH_SKIP_BUILD  1 to use already built binaries
#   CARGO_TARGET_DIR  where the release binaries are built (default: ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGETS=${BENCH_TARGETS:-bare gw-none gw-filter}
SECONDS_RECORDED=${BENCH_SECONDS:-2}
CONCURRENCY=${BENCH_CONCURRENCY:-16}
BODY=$ROOT/bench/chat.json
PORT_BASE=${BENCH_PORT_BASE:-18521}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
GATEWAY=${BENCH_GATEWAY:-$BIN/guardrail-gateway}
HOST=127.0.0.1
NAME=sched
. "$ROOT/bench/lib.sh"
MOCK_PORT=$PORT_BASE
PROXY_PORT=$((PORT_BASE + 1))

[[ $SECONDS_RECORDED =~ ^[1-9][0-9]?$ ]] || die "BENCH_SECONDS must be a whole number of seconds from 1 to 99 (got '$SECONDS_RECORDED')"
[[ $CONCURRENCY =~ ^[0-9]{1,4}$ ]] && ((CONCURRENCY >= 1)) || die "BENCH_CONCURRENCY must be a positive integer"
check_targets $PROXY_TARGETS
need_oha
command -v perf >/dev/null || die "perf is needed (Debian: apt-get install linux-perf)"
command -v python3 >/dev/null || die "python3 is needed"
perf sched record -a -o /dev/null -- true >/dev/null 2>&1 ||
    die "perf cannot record scheduler events here (run as root, or set kernel.perf_event_paranoid to -1)"
build_release

work_dir sched
stream_request
start_mock

printf '| target | req/s | idle µs | waited µs | of which the proxy / the mock / the load generator waited | what ran on the other core meanwhile | the proxy'"'"'s longest stretch on a core |\n|---|---:|---:|---:|---|---|---:|\n'
for target in $TARGETS; do
    start_proxy "$target"
    post_all "$target" 2000 "$CONCURRENCY"
    # The load runs a second longer than the recording on each side, so every recorded
    # moment is under load.
    timeout 300 oha --no-tui -z "$((SECONDS_RECORDED + 2))s" -c "$CONCURRENCY" -m POST -H "content-type: application/json" \
        "${STREAM[@]}" -D "$BODY" "http://$HOST:$PROXY_PORT/v1/chat/completions" >"$WORK/oha.txt" 2>&1 &
    LOAD=$!
    sleep 1
    perf sched record -a -o "$WORK/$target.data" -- sleep "$SECONDS_RECORDED" >/dev/null 2>"$WORK/perf.log" ||
        die "perf sched record failed: $(tail -n 3 "$WORK/perf.log")"
    wait "$LOAD" || die "$target: oha failed: $(tail -n 3 "$WORK/oha.txt")"
    rps=$(awk '/Requests\/sec/ { print $2 }' "$WORK/oha.txt")
    stop_tree "$PROXY"
    PIDS=("$MOCK_PID")
    perf sched timehist -i "$WORK/$target.data" >"$WORK/$target.timehist" 2>/dev/null
    python3 "$ROOT/bench/sched_idle.py" "$WORK/$target.timehist" "$target" "$rps" "$PROXY" "$MOCK_PID" ||
        die "cannot read $WORK/$target.timehist"
done
