#!/usr/bin/env bash
# Thousands of slow streams, and many idle keep-alive connections, through the bare proxy and
# guardrail-gateway. See BENCHMARKS.md ("Slow streams").
#
#   bash bench/slow-streams.sh
#
# Targets (BENCH_TARGETS, default "mock bare gw-filter"), each started fresh:
#   mock       the mock upstream directly (the client's and the mock's own jitter)
#   bare       the bare hyper proxy in front of the mock
#   gw-none    guardrail-gateway with no guardrail, SQLite spend log (the layers' own share)
#   gw-filter  guardrail-gateway, stream_policy BENCH_POLICY (default exact), the content filter of
#              bench/content-filter.yaml in pre_call and post_call, SQLite spend log
# For each: BENCH_STREAMS (default 1000) concurrent streams, started evenly over BENCH_RAMP s
# (default 5), each BENCH_SECONDS s long (default 30) at BENCH_RATE events a second (default
# 30), paced by the mock on a fixed schedule (x-mock-events-per-second); bench/src/bin/slow-streams.rs
# reports the target's peak RSS and CPU seconds (per 1,000 streams) and the delay of each content
# word against its schedule (p50, p99, p99.9). Then BENCH_IDLE (default 10000) keep-alive
# connections, one GET /health each, left open: the target's RSS per connection.
#
# BENCH_BODY is the request body (default bench/chat.json; "stream": true is set by the client),
# e.g. a long prompt: what a stream keeps of its request shows in the peak RSS.
# BENCH_IDLE=0 skips the idle connections. Needs open files for the streams and the idle connections (ulimit -n is raised to 65536 when
# allowed). Environment (all optional): the variables above, BENCH_PORT_BASE (default 18501;
# two ports), BENCH_SKIP_BUILD, CARGO_TARGET_DIR, BENCH_OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGETS=${BENCH_TARGETS:-mock bare gw-filter}
STREAMS=${BENCH_STREAMS:-1000}
SECONDS_EACH=${BENCH_SECONDS:-30}
RATE=${BENCH_RATE:-30}
RAMP=${BENCH_RAMP:-5}
IDLE=${BENCH_IDLE:-10000}
POLICY=${BENCH_POLICY:-exact}
BODY=${BENCH_BODY:-$ROOT/bench/chat.json}
PORT_BASE=${BENCH_PORT_BASE:-18501}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HOST=127.0.0.1
NAME=slow-streams
. "$ROOT/bench/lib.sh"
MOCK_PORT=$PORT_BASE
PROXY_PORT=$((PORT_BASE + 1))

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) > STREAMS * 2 + 100)) || die "ulimit -n is $(ulimit -n): too low for $STREAMS streams"
build_release
work_dir slow


# The policy is the guardrail's own: a content filter without one runs exact whatever
# general_settings.stream_policy says (it has a span matcher).
{
    gateway_yaml "$HOST:$MOCK_PORT" "$WORK/spend.db"
    sed "s|^      default_on: true|      default_on: true\n      stream_policy: $POLICY|" "$ROOT/bench/content-filter.yaml"
} >"$WORK/gw-filter.yaml"
gateway_yaml "$HOST:$MOCK_PORT" "$WORK/spend.db" >"$WORK/gw-none.yaml"

# start TARGET: the mock and TARGET; sets URL and TARGET_PID (the measured process).
start() {
    "$BIN/mock-upstream" --listen "$HOST:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
    local mock=$!
    PIDS+=("$mock")
    wait_port "$MOCK_PORT" || die "nothing listens on $HOST:$MOCK_PORT"
    rm -f "$WORK"/spend.db*
    case $1 in
        mock)
            TARGET_PID=$mock
            BASE=http://$HOST:$MOCK_PORT
            return
            ;;
        bare) "$BIN/bare-proxy" --listen "$HOST:$PROXY_PORT" --upstream "http://$HOST:$MOCK_PORT" >"$WORK/proxy.log" 2>&1 & ;;
        gw-none | gw-filter) "$BIN/guardrail-gateway" serve --config "$WORK/$1.yaml" --listen "$HOST:$PROXY_PORT" >"$WORK/proxy.log" 2>&1 & ;;
    esac
    TARGET_PID=$!
    PIDS+=("$TARGET_PID")
    wait_port "$PROXY_PORT" || die "nothing listens on $HOST:$PROXY_PORT"
    BASE=http://$HOST:$PROXY_PORT
}

field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }

TABLE=$WORK/table.md
{
    echo "| target | streams completed / failed | peak RSS MiB | CPU s per 1,000 streams | word delay p50 ms | p99 ms | p99.9 ms | idle connections: RSS per connection (KiB) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
} >"$TABLE"
for target in $TARGETS; do
    start "$target"
    line=$("$BIN/slow-streams" streams --url "$BASE/v1/chat/completions" --streams "$STREAMS" \
        --rate "$RATE" --seconds "$SECONDS_EACH" --ramp "$RAMP" --body "$BODY" \
        --pid "$TARGET_PID") || die "$target: $line"
    echo "slow-streams: $target: $line" >&2
    stop_all
    idle="" # BENCH_IDLE=0: the column says "not measured", not 0
    if ((IDLE > 0)); then
        start "$target"
        idle=$("$BIN/slow-streams" idle --url "$BASE/health" --connections "$IDLE" --pid "$TARGET_PID") ||
            die "$target idle: $idle"
        echo "slow-streams: $target: $idle" >&2
        stop_all
    fi
    awk -v t="$target" -v ok="$(field completed "$line")" -v bad="$(field failed "$line")" \
        -v rss="$(field peak_rss_mib "$line")" -v cpu="$(field cpu_s_per_1000_streams "$line")" \
        -v p50="$(field delay_p50_us "$line")" -v p99="$(field delay_p99_us "$line")" \
        -v p999="$(field delay_p999_us "$line")" -v per="$(field bytes_per_connection "$idle")" 'BEGIN {
            idle = per == "" ? "not measured" : sprintf("%.1f", per / 1024)
            printf "| %s | %s / %s | %s | %s | %.2f | %.2f | %.2f | %s |\n", t, ok, bad, rss, cpu,
                p50 / 1000, p99 / 1000, p999 / 1000, idle }' >>"$TABLE"
done
echo
echo "$STREAMS streams × ${SECONDS_EACH} s at $RATE events/s (started over ${RAMP} s), gateway stream_policy $POLICY; $IDLE idle connections; $(nproc) cores."
tee "${BENCH_OUT:-/dev/null}" <"$TABLE"
