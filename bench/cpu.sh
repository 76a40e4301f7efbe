#!/usr/bin/env bash
# Where each proxy's CPU goes per request under load: user and kernel (system) time, context
# switches and system calls, read from /proc (and strace -c, when BENCH_STRACE=1) around a fixed
# number of requests at a fixed concurrency. Instruction counts (bench/instructions.sh) see user
# space only; this shows the kernel's share beside it. See BENCHMARKS.md.
#
#   bash bench/cpu.sh
#   BENCH_EVENTS=20 BENCH_REQUESTS=8000 bash bench/cpu.sh
#
# For each target (bare, gw-none, gw-filter: as in bench/run.sh), in front of the mock upstream:
# start the proxy, warm up (2,000 requests), read its CPU times and context switches (every
# thread's), serve N requests with oha, read them again, and print the difference per request;
# beside it the mock's CPU time, the rest of the machine's (the load generator: run it on an
# otherwise idle machine) and the time the cores stood idle, and the proxy's time by thread.
#
# Environment (all optional):
#   BENCH_REQUESTS    N (default 40000)
#   BENCH_CONCURRENCY oha's concurrency (default 16)
#   BENCH_TARGETS     subset of: bare gw-none gw-filter (default: all three)
#   BENCH_EVENTS      E: streams of E content events instead of non-streaming requests
#   BENCH_STRACE      1: also count the proxy's system calls per request (strace -c -f; a
#                     separate run, since tracing slows every call down)
#   BENCH_GATEWAY     the gateway binary to measure (default: the release build)
#   BENCH_PORT_BASE   first of two consecutive ports on 127.0.0.1 (default 18491)
#   BENCH_SKIP_BUILD  1 to use already built binaries
#   CARGO_TARGET_DIR  where the release binaries are built (default: ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${BENCH_REQUESTS:-40000}
CONCURRENCY=${BENCH_CONCURRENCY:-16}
TARGETS=${BENCH_TARGETS:-bare gw-none gw-filter}
BODY=$ROOT/bench/chat.json
PORT_BASE=${BENCH_PORT_BASE:-18491}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
GATEWAY=${BENCH_GATEWAY:-$BIN/guardrail-gateway}
HOST=127.0.0.1
NAME=cpu
. "$ROOT/bench/lib.sh"
MOCK_PORT=$PORT_BASE
PROXY_PORT=$((PORT_BASE + 1))

[[ $N =~ ^[0-9]{1,7}$ ]] && ((N >= 100)) || die "BENCH_REQUESTS must be an integer from 100 (got '$N')"
[[ $CONCURRENCY =~ ^[0-9]{1,4}$ ]] && ((CONCURRENCY >= 1)) || die "BENCH_CONCURRENCY must be a positive integer"
check_targets $PROXY_TARGETS
need_oha
[[ ${BENCH_STRACE:-0} != 1 ]] || command -v strace >/dev/null || die "BENCH_STRACE=1 needs strace"
build_release

work_dir cpu
stream_request

start_mock

# start TARGET: starts the proxy (start_proxy: sets PROXY to its pid) and warms it up.
start() {
    start_proxy "$1"
    post_all "$1" 2000 "$CONCURRENCY"
}

# sample: the proxy's user and system clock ticks, all its threads' context switches, the mock's
# clock ticks, and the machine's busy, idle and stolen ticks (all cores, from /proc/stat; stolen:
# taken by the hypervisor of a virtual machine).
sample() {
    local ticks switches mock machine
    ticks=$(awk '{ print $14, $15 }' "/proc/$PROXY/stat")
    switches=$(cat /proc/"$PROXY"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }')
    mock=$(awk '{ print $14 + $15 }' "/proc/$MOCK_PID/stat")
    machine=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6, $9 }' /proc/stat)
    echo "$ticks $switches $mock $machine"
}

# threads: each of the proxy's threads' name and user + system clock ticks, one per line.
threads() {
    local t
    for t in /proc/"$PROXY"/task/*; do
        # The name is in parentheses and may hold spaces: the figures are counted from the end.
        awk '{ n = $0; sub(/^[0-9]+ \(/, "", n); sub(/\) .*$/, "", n); gsub(/ /, "_", n); m = split($0, f, ") "); split(f[m], g, " "); print n, g[12] + g[13] }' "$t/stat" 2>/dev/null || true
    done
}

TICK=$(getconf CLK_TCK)
THREADS=()
# Per request: the proxy's user and system time and context switches; the mock's CPU time; the
# rest of the machine's busy time (the load generator, mostly); and the time both cores stood
# idle (a proxy that is CPU-bound leaves none: idle time is waiting, not work); and the time the
# hypervisor took from both (on a virtual machine: while it is not zero, the run is not steady).
printf '| target | req/s | user µs | system µs | context switches | mock µs | load generator and rest µs | idle µs | stolen µs |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for target in $TARGETS; do
    start "$target"
    threads >"$WORK/threads.0"
    read -r u0 s0 c0 m0 b0 i0 t0 <<<"$(sample)"
    post_all "$target" "$N" "$CONCURRENCY"
    read -r u1 s1 c1 m1 b1 i1 t1 <<<"$(sample)"
    threads >"$WORK/threads.1"
    # The proxy's CPU time by thread name (Tokio's workers, the spend log's SQLite thread...).
    awk -v n="$N" -v k="$TICK" 'NR == FNR { a[$1] += $2; next } { b[$1] += $2 }
        END { for (t in b) if (b[t] - a[t] > 0) printf "%s %.1f µs; ", t, (b[t] - a[t]) / k / n * 1e6 }' \
        "$WORK/threads.0" "$WORK/threads.1" >"$WORK/threads.txt"
    rps=$(awk '/Requests\/sec/ { print $2 }' "$WORK/oha.txt")
    stop_tree "$PROXY"
    PIDS=("$MOCK_PID")
    awk -v t="$target" -v r="$rps" -v n="$N" -v k="$TICK" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v dc=$((c1 - c0)) \
        -v dm=$((m1 - m0)) -v db=$((b1 - b0)) -v di=$((i1 - i0)) -v dt=$((t1 - t0)) \
        'BEGIN { f = 1e6 / k / n; printf "| %s | %.0f | %.1f | %.1f | %.2f | %.1f | %.1f | %.1f | %.1f |\n", t, r, du * f, ds * f, dc / n, dm * f, (db - du - ds - dm) * f, di * f, dt * f }'
    THREADS+=("$target: $(cat "$WORK/threads.txt")")
done

echo
echo 'CPU time by thread (user + system per request):'
printf -- '- %s\n' "${THREADS[@]}"

[[ ${BENCH_STRACE:-0} == 1 ]] || exit 0
echo
printf '| target | system calls per request (strace -c -f), most frequent first |\n|---|---|\n'
for target in $TARGETS; do
    start "$target"
    strace -c -f -p "$PROXY" -o "$WORK/strace.txt" 2>/dev/null &
    tracer=$!
    sleep 0.5
    post_all "$target" "$N" "$CONCURRENCY"
    kill -INT "$tracer"
    wait "$tracer" 2>/dev/null || true
    calls=$(awk -v n="$N" 'NR > 2 && $4 ~ /^[0-9]+$/ && $NF != "total" { printf "%s %.2f\n", $NF, $4 / n }' "$WORK/strace.txt" |
        sort -k2 -rn | awk '$2 >= 0.01 { printf "%s%s %s", sep, $1, $2; sep = ", " }')
    printf '| %s | %s |\n' "$target" "$calls"
    stop_tree "$PROXY"
    PIDS=("$MOCK_PID")
done
