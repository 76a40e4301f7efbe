#!/usr/bin/env bash
# Instructions per request of each proxy, counted by valgrind's callgrind: a figure that does not
# depend on what else the machine is doing (unlike req/s or CPU time on shared cores), for
# before/after comparisons of a change. See BENCHMARKS.md.
#
#   bash bench/instructions.sh
#
# For each target (bare, gw-none, gw-filter, gw-master, gw-vkey: the same as bench/run.sh;
# gw-metrics and gw-filter-metrics: gw-none and gw-filter with Prometheus metrics on, `serve
# --metrics`; gw-remote: gw-none with one Generic Guardrail API pre_call check per request,
# against bench/src/bin/guard-mock.rs answering at once), the proxy runs under
# callgrind in front of the mock upstream (not under valgrind) on loopback, and serves N and then
# 2N non-streaming chat requests (oha, concurrency 4) in two fresh runs; the difference of the
# two instruction totals over N is the cost of one request, with start-up and shutdown cancelled
# out. Counts user-space instructions of the proxy process only (the kernel's share is not seen).
#
# Environment (all optional):
#   BENCH_REQUESTS   N (default 1000)
#   BENCH_TARGETS    subset of: bare gw-none gw-filter gw-master gw-vkey gw-metrics
#                    gw-filter-metrics gw-remote (default: all)
#   BENCH_PORT_BASE  first of two consecutive ports on 127.0.0.1 (default 18451)
#   BENCH_BODY       the request body (default bench/chat.json)
#   BENCH_EVENTS     E: every request asks for a stream of E content events instead (the body
#                    with "stream": true, and x-mock-events: E), so the figure is per stream
#   BENCH_GUARDRAILS the YAML appended to the gw-filter config (default bench/content-filter.yaml)
#   BENCH_GATEWAY    the gateway binary to measure (default: the release build), e.g. a copy of an
#                    earlier build, to compare two builds
#   BENCH_WORKERS    Tokio worker threads of the proxy (TOKIO_WORKER_THREADS, default 1: with
#                    more, idle workers' spinning and stealing enter the count, and it varies
#                    with the machine's load by up to 20 %)
#   BENCH_PROFILE    a directory: keeps each target's callgrind files there, as
#                    TARGET.REQUESTS.callgrind (for callgrind_annotate; the difference of a
#                    function's figures in the two files, over N, is its cost per request)
#   BENCH_BATCH_WRITE_AT  seconds: the gateway configs get general_settings.proxy_batch_write_at
#                    (how long the spend-log writer waits for a batch to fill; default 20 ms).
#                    Under callgrind the gateway serves a few hundred requests a second, so
#                    20 ms gathers about 8 records a transaction, where a loaded gateway fills
#                    its 256-record batches; 2 gives batches of that size here too
#   BENCH_SKIP_BUILD 1 to use already built binaries
#   CARGO_TARGET_DIR where the release binaries are built (default: ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${BENCH_REQUESTS:-1000}
TARGETS=${BENCH_TARGETS:-bare gw-none gw-filter gw-master gw-vkey gw-metrics gw-filter-metrics gw-remote}
# gw-master: gw-none with a master key, every request sending it; gw-vkey: the same, every
# request sending a virtual key generated at start (one /key/generate, the same in both runs).
MASTER_KEY=sk-bench-master-key-0123456789
BODY=${BENCH_BODY:-$ROOT/bench/chat.json}
GUARDRAILS=${BENCH_GUARDRAILS:-$ROOT/bench/content-filter.yaml}
PORT_BASE=${BENCH_PORT_BASE:-18451}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
GATEWAY=${BENCH_GATEWAY:-$BIN/guardrail-gateway}
HOST=127.0.0.1
NAME=instructions
. "$ROOT/bench/lib.sh"
MOCK_PORT=$PORT_BASE
PROXY_PORT=$((PORT_BASE + 1))
GUARD_PORT=$((PORT_BASE + 2))

[[ $N =~ ^[0-9]{1,6}$ ]] && ((N >= 5)) || die "BENCH_REQUESTS must be an integer from 5 (got '$N')"
check_targets bare gw-none gw-filter gw-master gw-vkey gw-metrics gw-filter-metrics gw-remote
[[ -z ${BENCH_BATCH_WRITE_AT:-} || $BENCH_BATCH_WRITE_AT =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_BATCH_WRITE_AT must be a number of seconds (got '$BENCH_BATCH_WRITE_AT')"
command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
need_oha
build_release

work_dir instructions
stream_request


start_mock
if [[ " $TARGETS " == *" gw-remote "* ]]; then
    "$BIN/guard-mock" --listen "$HOST:$GUARD_PORT" --latency-ms 0 >"$WORK/guard.log" 2>&1 &
    PIDS+=($!)
    wait_port "$GUARD_PORT" || die "nothing listens on $HOST:$GUARD_PORT"
fi
[[ -z ${BENCH_PROFILE:-} ]] || mkdir -p "$BENCH_PROFILE"

# total TARGET REQUESTS: callgrind's instruction total for the proxy serving REQUESTS requests.
total() {
    local target=$1 requests=$2 cmd
    rm -f "$WORK"/callgrind.* "$WORK"/spend.db*
    case $target in
        bare) cmd=("$BIN/bare-proxy" --listen "$HOST:$PROXY_PORT" --upstream "http://$HOST:$MOCK_PORT") ;;
        *)
            gateway_yaml "$HOST:$MOCK_PORT" "$WORK/spend.db" >"$WORK/$target.yaml"
            [[ -z ${BENCH_BATCH_WRITE_AT:-} ]] || echo "  proxy_batch_write_at: $BENCH_BATCH_WRITE_AT" >>"$WORK/$target.yaml"
            [[ $target == gw-filter || $target == gw-filter-metrics ]] && cat "$GUARDRAILS" >>"$WORK/$target.yaml"
            [[ $target == gw-master || $target == gw-vkey ]] && echo "  master_key: $MASTER_KEY" >>"$WORK/$target.yaml"
            [[ $target == gw-remote ]] && remote_guardrail_yaml "$HOST:$GUARD_PORT" pre_call >>"$WORK/$target.yaml"
            # --transparent-huge-pages: without it the gateway starts itself again (execve) to
            # have THP off from its first allocation, and callgrind does not follow an execve.
            # Huge pages change no instruction count.
            cmd=("$GATEWAY" serve --config "$WORK/$target.yaml" --listen "$HOST:$PROXY_PORT" --transparent-huge-pages)
            [[ $target == gw-metrics || $target == gw-filter-metrics ]] && cmd+=(--metrics)
            ;;
    esac
    TOKIO_WORKER_THREADS=${BENCH_WORKERS:-1} valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.%p" "${cmd[@]}" >"$WORK/proxy.log" 2>&1 &
    local pid=$!
    wait_port "$PROXY_PORT" || die "nothing listens on $HOST:$PROXY_PORT"
    local auth=() key
    case $target in
        gw-master) auth=(-H "authorization: Bearer $MASTER_KEY") ;;
        gw-vkey)
            key=$(curl -sf -H "authorization: Bearer $MASTER_KEY" -H "content-type: application/json" \
                -d '{"key_alias": "bench"}' "http://$HOST:$PROXY_PORT/key/generate" |
                python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])') || die "cannot generate a virtual key"
            auth=(-H "authorization: Bearer $key")
            ;;
    esac
    post_all "$target" "$requests" 4 "${auth[@]}"
    kill -INT "$pid"
    wait "$pid" || true
    awk '/^(summary|totals):/ { print $2; exit }' "$WORK"/callgrind.*
    [[ -z ${BENCH_PROFILE:-} ]] || cp "$WORK"/callgrind.* "$BENCH_PROFILE/$target.$requests.callgrind"
}

printf '| target | instructions per request |\n|---|---:|\n'
for target in $TARGETS; do
    one=$(total "$target" "$N")
    two=$(total "$target" $((2 * N)))
    printf '| %s | %d |\n' "$target" $(((two - one) / N))
done
