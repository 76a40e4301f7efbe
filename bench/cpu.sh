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
# thread's), serve N requests with oha, read them again, and print the difference per request.
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
for t in $TARGETS; do
    case $t in bare | gw-none | gw-filter) ;; *) die "unknown target '$t'" ;; esac
done
PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
command -v oha >/dev/null || die "oha is needed (cargo install --locked oha, or run bench/run.sh once)"
[[ ${BENCH_STRACE:-0} != 1 ]] || command -v strace >/dev/null || die "BENCH_STRACE=1 needs strace"
build_release

work_dir cpu
stream_request

start_mock

# start TARGET: starts the proxy; sets PROXY to its pid.
start() {
    rm -f "$WORK"/spend.db*
    case $1 in
        bare) "$BIN/bare-proxy" --listen "$HOST:$PROXY_PORT" --upstream "http://$HOST:$MOCK_PORT" >"$WORK/proxy.log" 2>&1 & ;;
        *)
            gateway_yaml "$HOST:$MOCK_PORT" "$WORK/spend.db" >"$WORK/gw.yaml"
            [[ $1 == gw-filter ]] && cat "$ROOT/bench/content-filter.yaml" >>"$WORK/gw.yaml"
            "$GATEWAY" serve --config "$WORK/gw.yaml" --listen "$HOST:$PROXY_PORT" >"$WORK/proxy.log" 2>&1 &
            ;;
    esac
    PROXY=$!
    PIDS+=("$PROXY")
    wait_port "$PROXY_PORT" "$PROXY" || die "$1 did not start: $(tail -n 3 "$WORK/proxy.log")"
    post_all "$1" 2000 "$CONCURRENCY"
}

# sample: the proxy's user and system clock ticks and all its threads' context switches.
sample() {
    local ticks switches
    ticks=$(awk '{ print $14, $15 }' "/proc/$PROXY/stat")
    switches=$(cat /proc/"$PROXY"/task/*/status | awk '/ctxt_switches/ { s += $2 } END { print s }')
    echo "$ticks $switches"
}

TICK=$(getconf CLK_TCK)
printf '| target | req/s | user µs | system µs | context switches |\n|---|---:|---:|---:|---:|\n'
for target in $TARGETS; do
    start "$target"
    read -r u0 s0 c0 <<<"$(sample)"
    post_all "$target" "$N" "$CONCURRENCY"
    read -r u1 s1 c1 <<<"$(sample)"
    rps=$(awk '/Requests\/sec/ { print $2 }' "$WORK/oha.txt")
    stop_tree "$PROXY"
    PIDS=("$MOCK_PID")
    awk -v t="$target" -v r="$rps" -v n="$N" -v k="$TICK" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v dc=$((c1 - c0)) \
        'BEGIN { printf "| %s | %.0f | %.1f | %.1f | %.2f |\n", t, r, du / k / n * 1e6, ds / k / n * 1e6, dc / n }'
done

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
