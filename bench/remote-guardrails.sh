#!/usr/bin/env bash
# What a remote guardrail service costs through guardrail-gateway. See BENCHMARKS.md
# ("Remote guardrails").
#
#   bash bench/remote-guardrails.sh
#
# A Generic Guardrail API service mock (bench/src/bin/guard-mock.rs: allows everything after a
# fixed latency, counts connections and checks) at each latency of BENCH_LATENCIES (ms, default
# "0 5 50"; at 0 the service answers at once, so what is added is the gateway's own), the mock upstream, and the gateway with one `generic_guardrail_api` guardrail
# (default_on) in one mode at a time, against the gateway with no guardrail:
#   pre        mode pre_call, non-streaming requests one at a time: the added p50 latency, to
#              compare with the service's own latency (added - latency: the gateway's overhead);
#              the gateway without the guardrail is measured at the same pace (a request every
#              LATENCY ms), since idle processes answer their next request more slowly
#   during     mode during_call with an upstream that takes 100 ms (x-mock-delay-ms: 100): the
#              check runs while the upstream works, so nothing should be added
#   pool       mode pre_call, 16 concurrent clients for BENCH_DURATION s: checks made and TCP
#              connections the gateway opened to the service (pooled: connections << checks)
#   window     mode post_call, stream_policy {window: {chars: 200, overlap: 20}}, 50-event streams:
#              checks per stream (one per window of text, not one per event)
# Every request must answer 200; the table goes to stdout (and BENCH_OUT if set).
#
# Environment (all optional): BENCH_LATENCIES, BENCH_REQUESTS (sequential requests per point,
# default 200), BENCH_DURATION (default 5), BENCH_PORT_BASE (default 18471; three ports),
# BENCH_SKIP_BUILD, CARGO_TARGET_DIR, BENCH_OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LATENCIES=${BENCH_LATENCIES:-0 5 50}
REQUESTS=${BENCH_REQUESTS:-200}
DURATION=${BENCH_DURATION:-5}
PORT_BASE=${BENCH_PORT_BASE:-18471}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HOST=127.0.0.1
NAME=remote-guardrails
. "$ROOT/bench/lib.sh"
MOCK_PORT=$PORT_BASE
GUARD_PORT=$((PORT_BASE + 1))
GW_PORT=$((PORT_BASE + 2))
UPSTREAM_DELAY_MS=100
STREAM_EVENTS=50

need_oha
command -v jq >/dev/null || die "jq is needed"
build_release

work_dir remote


# config MODE: the gateway config with the guardrail in MODE (none: no guardrail).
config() {
    gateway_yaml "$HOST:$MOCK_PORT" "$WORK/spend.db"
    [[ $1 == none ]] && return
    local policy=""
    [[ $1 == post_call ]] && policy="{window: {chars: 200, overlap: 20}}"
    remote_guardrail_yaml "$HOST:$GUARD_PORT" "$1" "$policy"
}

# start LATENCY MODE: the mock, the guard mock, the gateway.
start() {
    "$BIN/mock-upstream" --listen "$HOST:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
    PIDS+=($!)
    "$BIN/guard-mock" --listen "$HOST:$GUARD_PORT" --latency-ms "$1" >"$WORK/guard.log" 2>&1 &
    PIDS+=($!)
    config "$2" >"$WORK/gw.yaml"
    rm -f "$WORK"/spend.db*
    "$BIN/guardrail-gateway" serve --config "$WORK/gw.yaml" --listen "$HOST:$GW_PORT" >"$WORK/gw.log" 2>&1 &
    PIDS+=($!)
    wait_port "$MOCK_PORT" || die "nothing listens on $HOST:$MOCK_PORT"
    wait_port "$GUARD_PORT" || die "nothing listens on $HOST:$GUARD_PORT"
    wait_port "$GW_PORT" || die "nothing listens on $HOST:$GW_PORT"
}

stats() { curl -sf "http://$HOST:$GUARD_PORT/stats"; }

# oha_run ARGS...: runs oha with JSON output against the gateway (or URL, if set); prints
# "p50_ms ok total" (total: every answer and error).
oha_run() {
    timeout 600 oha --no-tui --output-format json -m POST -H "content-type: application/json" "$@" \
        "${URL:-http://$HOST:$GW_PORT/v1/chat/completions}" >"$WORK/oha.json" 2>"$WORK/oha.err" ||
        die "oha failed: $(tail -n 3 "$WORK/oha.err")"
    jq -r '
        ([.statusCodeDistribution // {} | to_entries[] | select(.key == "200") | .value] | add // 0) as $ok
        | ([.statusCodeDistribution // {} | to_entries[] | .value] | add // 0) as $answers
        | ([.errorDistribution // {} | to_entries[] | select(.key | test("deadline") | not) | .value] | add // 0) as $errors
        | "\((.latencyPercentiles.p50 // 0) * 1000 * 1000 | round / 1000) \($ok) \($answers + $errors)"
    ' "$WORK/oha.json"
}

jq '.stream = true | .stream_options = {include_usage: true}' "$ROOT/bench/chat.json" >"$WORK/stream.json"
OUTPUT=$WORK/table.md
{
    echo "| service latency ms | measurement | no guardrail | with the guardrail | result |"
    echo "|---:|---|---:|---:|---|"
} >"$OUTPUT"

for latency in $LATENCIES; do
    # pre_call: added latency, one request at a time.
    start "$latency" none
    # The service's own latency, as a client next to it sees it (the nominal latency, the
    # mock's thread waking and one HTTP exchange).
    echo '{"texts":["hello"],"input_type":"request"}' >"$WORK/check.json"
    read -r service _ _ < <(URL=http://$HOST:$GUARD_PORT/beta/litellm_basic_guardrail_api oha_run -n "$REQUESTS" -c 1 -D "$WORK/check.json")
    # The gateway without the guardrail, at the pace the guarded requests will have (one every
    # LATENCY ms): after milliseconds of idleness every process of the chain (client, gateway,
    # mock) runs cold and each hop takes longer (on a 2-core VM the mock's own p50 went from
    # 0.03 ms back to back to 0.28 ms at one request every 50 ms, the bare proxy's from 0.07 to
    # 0.48 ms); measured back to back, that would count as the guardrail's cost.
    pace=() paced="back to back"
    if ((latency > 0)); then
        pace=(-q "$(awk -v l="$latency" 'BEGIN { printf "%.3f", 1000 / l }')")
        paced="one request every $latency ms"
    fi
    read -r base ok total < <(oha_run -n "$REQUESTS" -c 1 "${pace[@]}" -D "$ROOT/bench/chat.json")
    ((ok == REQUESTS)) || die "no guardrail: $ok of $REQUESTS answered 200"
    read -r base_delayed _ _ < <(oha_run -n "$((REQUESTS / 4 + 1))" -c 1 -H "x-mock-delay-ms: $UPSTREAM_DELAY_MS" -D "$ROOT/bench/chat.json")
    stop_all

    start "$latency" pre_call
    read -r pre ok total < <(oha_run -n "$REQUESTS" -c 1 -D "$ROOT/bench/chat.json")
    ((ok == REQUESTS)) || die "pre_call: $ok of $REQUESTS answered 200"
    added=$(awk -v a="$pre" -v b="$base" 'BEGIN { printf "%.3f", a - b }')
    over=$(awk -v a="$added" -v l="$service" 'BEGIN { printf "%+.3f", a - l }')
    echo "| $latency | pre_call, c1, p50 ms (no guardrail: $paced) | $base | $pre | added $added ms: the service's $service ms (p50 measured next to it) $over ms |" >>"$OUTPUT"
    s0=$(stats)
    read -r _ ok total < <(oha_run -z "${DURATION}s" -c 16 -D "$ROOT/bench/chat.json")
    s1=$(stats)
    checks=$(($(jq .requests <<<"$s1") - $(jq .requests <<<"$s0")))
    conns=$(($(jq .connections <<<"$s1") - $(jq .connections <<<"$s0")))
    echo "| $latency | pre_call, c16 for ${DURATION} s: checks / new connections to the service | | $checks / $conns | $ok of $total requests answered 200; $(jq .connections <<<"$s1") connections in all, $(jq .open <<<"$s1") open at the end |" >>"$OUTPUT"
    stop_all

    # during_call: hidden behind the upstream's time.
    start "$latency" during_call
    read -r during ok _ < <(oha_run -n "$((REQUESTS / 4 + 1))" -c 1 -H "x-mock-delay-ms: $UPSTREAM_DELAY_MS" -D "$ROOT/bench/chat.json")
    added=$(awk -v a="$during" -v b="$base_delayed" 'BEGIN { printf "%+.3f", a - b }')
    echo "| $latency | during_call, upstream takes $UPSTREAM_DELAY_MS ms, c1, p50 ms | $base_delayed | $during | added $added ms |" >>"$OUTPUT"
    stop_all

    # post_call streams under a window policy: checks per stream.
    start "$latency" post_call
    s0=$(stats)
    streams=$((REQUESTS / 4 + 1))
    read -r window ok _ < <(oha_run -n "$streams" -c 4 -H "x-mock-events: $STREAM_EVENTS" -D "$WORK/stream.json")
    ((ok == streams)) || die "post_call streams: $ok of $streams answered 200"
    s1=$(stats)
    checks=$(($(jq .requests <<<"$s1") - $(jq .requests <<<"$s0")))
    chars=$(curl -sf -H "content-type: application/json" -H "x-mock-events: $STREAM_EVENTS" \
        -d @"$WORK/stream.json" "http://$HOST:$GW_PORT/v1/chat/completions" |
        sed -n 's/^data: //p' | grep -v '^\[DONE\]' | jq -j '.choices[0].delta.content // empty' | wc -c)
    per=$(awk -v c="$checks" -v s="$streams" 'BEGIN { printf "%.2f", c / s }')
    echo "| $latency | post_call window 200/20, $STREAM_EVENTS-event streams ($chars chars), c4: checks per stream | | $per | $checks checks for $streams streams of $STREAM_EVENTS events; stream p50 $window ms |" >>"$OUTPUT"
    stop_all
done

cat "$OUTPUT" | tee "${BENCH_OUT:-/dev/null}"
