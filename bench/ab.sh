#!/usr/bin/env bash
# Two builds of guardrail-gateway against each other in req/s: A and B run alternately (A, B,
# A, B, ...), each fresh, in front of one mock upstream, so that whatever the machine does
# during the run falls on both. See BENCHMARKS.md: a change's effect in real time, beside its
# instruction count (bench/instructions.sh).
#
#   BENCH_A=/tmp/gateway-before BENCH_B=target/release/guardrail-gateway bash bench/ab.sh
#
# Each round: start the gateway, wait for /health, warm up, measure with oha at a fixed
# concurrency, stop it. Prints every round and the medians; the spread of one binary's rounds
# says how quiet the machine was (a difference smaller than that spread is not resolved).
#
# Environment:
#   BENCH_A, BENCH_B   the two gateway binaries (required)
#   BENCH_ROUNDS       rounds of each (default 7)
#   BENCH_CONFIG       none (default: bench/gateway.yaml) or filter (with
#                      bench/content-filter.yaml appended, as bench/run.sh's gw-filter)
#   BENCH_EVENTS       E: streams of E events (the body with "stream": true, x-mock-events: E)
#                      instead of non-streaming requests
#   BENCH_CONCURRENCY  oha's concurrency (default 16)
#   BENCH_DURATION     seconds measured per round (default 5), after BENCH_WARMUP (default 2)
#   BENCH_PORT_BASE    first of two consecutive ports on 127.0.0.1 (default 18471)
#   BENCH_SKIP_BUILD   1 to use the mock upstream already built
#   CARGO_TARGET_DIR   where the mock upstream is built (default: ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST=127.0.0.1
NAME=ab
. "$ROOT/bench/lib.sh"

A=${BENCH_A:-}
B=${BENCH_B:-}
[[ -n $A && -n $B ]] || die "set BENCH_A and BENCH_B to the two gateway binaries"
for bin in "$A" "$B"; do [[ -x $bin ]] || die "not an executable: $bin"; done
ROUNDS=${BENCH_ROUNDS:-7}
CONCURRENCY=${BENCH_CONCURRENCY:-16}
DURATION=${BENCH_DURATION:-5}
WARMUP=${BENCH_WARMUP:-2}
PORT_BASE=${BENCH_PORT_BASE:-18471}
MOCK_PORT=$PORT_BASE
PROXY_PORT=$((PORT_BASE + 1))
for n in "$ROUNDS" "$CONCURRENCY" "$DURATION" "$WARMUP"; do
    [[ $n =~ ^[0-9]{1,4}$ ]] || die "BENCH_ROUNDS, BENCH_CONCURRENCY, BENCH_DURATION and BENCH_WARMUP are numbers (got '$n')"
done
((ROUNDS >= 1 && DURATION >= 1 && CONCURRENCY >= 1)) || die "rounds, duration and concurrency must be at least 1"
case ${BENCH_CONFIG:-none} in none | filter) ;; *) die "BENCH_CONFIG is none or filter (got '$BENCH_CONFIG')" ;; esac
need_oha
build_release
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

work_dir ab
BODY=$ROOT/bench/chat.json
stream_request
gateway_yaml "$HOST:$MOCK_PORT" "$WORK/spend.db" >"$WORK/gateway.yaml"
[[ ${BENCH_CONFIG:-none} == filter ]] && cat "$ROOT/bench/content-filter.yaml" >>"$WORK/gateway.yaml"

start_mock

# load SECONDS: runs oha against the gateway; prints its requests per second.
load() {
    timeout $(($1 + 30)) oha --no-tui --output-format json -z "${1}s" -c "$CONCURRENCY" -m POST \
        -H "content-type: application/json" "${STREAM[@]}" -D "$BODY" \
        "http://$HOST:$PROXY_PORT/v1/chat/completions" >"$WORK/oha.json" 2>"$WORK/oha.err" ||
        die "oha failed: $(tail -n 3 "$WORK/oha.err")"
    python3 -c 'import json, sys
s = json.load(open(sys.argv[1]))
codes = s.get("statusCodeDistribution", {})
bad = {k: v for k, v in codes.items() if k != "200"}
if bad:
    sys.exit(f"not every answer was a 200: {bad}")
print(round(s["summary"]["requestsPerSec"]))' "$WORK/oha.json" || die "the run failed"
}

# round BINARY: one fresh gateway, warmed up and measured; prints its requests per second.
round() {
    rm -f "$WORK"/spend.db*
    "$1" serve --config "$WORK/gateway.yaml" --listen "$HOST:$PROXY_PORT" >"$WORK/gateway.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PROXY_PORT" "$pid" || die "the gateway did not start: $(tail -n 5 "$WORK/gateway.log")"
    ((WARMUP == 0)) || load "$WARMUP" >/dev/null
    load "$DURATION"
    stop_tree "$pid"
    PIDS=("$MOCK_PID")
}

a=()
b=()
for ((r = 1; r <= ROUNDS; r++)); do
    a+=("$(round "$A")")
    b+=("$(round "$B")")
    echo "round $r: A ${a[-1]} B ${b[-1]} req/s"
done
python3 -c 'import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
ma, mb = statistics.median(a), statistics.median(b)
ahead = sum(y > x for x, y in zip(a, b))
print(f"A: median {ma:.0f} req/s, rounds {min(a)}-{max(a)}")
print(f"B: median {mb:.0f} req/s, rounds {min(b)}-{max(b)}")
print(f"B/A {mb / ma:.3f}; B ahead in {ahead} of {len(a)} rounds")' "${a[*]}" "${b[*]}"
