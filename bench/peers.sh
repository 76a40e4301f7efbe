#!/usr/bin/env bash
# guardrail-gateway side by side with its peers, on the same mock upstream and the same load:
# LiteLLM's proxy (pinned, from PyPI, into a cache directory) and the Portkey gateway (pinned,
# from npm, into the same cache). See BENCHMARKS.md ("Peers").
#
#   bash bench/peers.sh
#
# Targets (BENCH_TARGETS, default all four), each started fresh for each measurement:
#   bare      the bare hyper proxy (bench/src/bin/bare-proxy.rs): the ceiling of a proxy here
#   gateway   guardrail-gateway with the content filter of bench/content-filter.yaml (20 blocked
#             words + 5 PII patterns) in pre_call and post_call, stream_policy exact, SQLite spend log
#   litellm   LiteLLM's proxy ($LITELLM_VERSION, `litellm --num_workers 2`) with the same
#             guardrail config (litellm_content_filter, pre_call and post_call), no database
#   portkey   the Portkey gateway ($PORTKEY_VERSION, node, --headless) with its `default.contains`
#             check on the same 20 words (operator none, deny) as input and output guardrails,
#             sent in the x-portkey-config header (streams: the input guardrail only, see below)
# Scenarios: non-streaming chat and 50-event streams (x-mock-events: 50) at each concurrency of
# BENCH_CONCURRENCY (default "1 16 64"), BENCH_DURATION seconds each (default 10) after
# BENCH_WARMUP (default 2). Reported per target and point: req/s, p50 and p99 (ms), failed, and
# per target its peak RSS (VmHWM summed over the target's processes: LiteLLM's workers too). Then
# what each target does with a streamed reply that contains a blocked word (the mock says
# "BLUEBIRD" when the prompt mentions a project): the status, whether the word reached the
# client, and how the stream ended. Writes the Markdown tables and an SVG chart (throughput
# against concurrency, non-streaming, all targets) to BENCH_OUT_DIR (default bench/results).
#
# Environment (all optional):
#   BENCH_TARGETS BENCH_CONCURRENCY BENCH_DURATION BENCH_WARMUP BENCH_OUT_DIR as above
#   BENCH_CACHE      where LiteLLM and Portkey are installed (default ~/.cache/guardrail-tower-bench)
#   BENCH_PORT_BASE  first of six consecutive ports on 127.0.0.1 (default 18461)
#   BENCH_SKIP_BUILD 1 to use already built binaries
#   CARGO_TARGET_DIR where the release binaries are built (default ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LITELLM_VERSION=1.81.14
PORTKEY_VERSION=1.15.2
TARGETS=${BENCH_TARGETS:-bare gateway litellm portkey}
CONCURRENCY=${BENCH_CONCURRENCY:-1 16 64}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CACHE=${BENCH_CACHE:-$HOME/.cache/guardrail-tower-bench}
OUT=${BENCH_OUT_DIR:-$ROOT/bench/results}
PORT_BASE=${BENCH_PORT_BASE:-18461}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HOST=127.0.0.1
NAME=peers
. "$ROOT/bench/lib.sh"
MOCK_PORT=$PORT_BASE
PROXY_PORT=$((PORT_BASE + 1))
UPSTREAM_KEY=sk-bench-not-a-real-key

check_targets bare gateway litellm portkey
need_oha
command -v jq >/dev/null || die "jq is needed (apt-get install jq)"

work_dir peers

# ---------------------------------------------------------------------------------------------
# Installs (each once, into the cache)

install_litellm() {
    local venv=$CACHE/litellm-$LITELLM_VERSION
    if [[ ! -x $venv/bin/litellm ]]; then
        log "installing litellm[proxy]==$LITELLM_VERSION into $venv"
        mkdir -p "$CACHE"
        python3 -m venv "$venv" && "$venv/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION" \
            >"$CACHE/litellm-install.log" 2>&1 || {
            log "litellm install failed: $(tail -n 3 "$CACHE/litellm-install.log")"
            return 1
        }
    fi
    LITELLM=$venv/bin/litellm
}

install_portkey() {
    local dir=$CACHE/portkey-$PORTKEY_VERSION
    PORTKEY=$dir/node_modules/@portkey-ai/gateway/build/start-server.js
    if [[ ! -f $PORTKEY ]]; then
        log "installing @portkey-ai/gateway@$PORTKEY_VERSION into $dir"
        mkdir -p "$dir"
        npm install --prefix "$dir" --no-audit --no-fund "@portkey-ai/gateway@$PORTKEY_VERSION" \
            >"$CACHE/portkey-install.log" 2>&1 || {
            log "portkey install failed: $(tail -n 3 "$CACHE/portkey-install.log")"
            return 1
        }
    fi
}

build_release
AVAILABLE=()
for t in $TARGETS; do
    case $t in
        litellm) install_litellm && AVAILABLE+=(litellm) || log "skipping litellm" ;;
        portkey) install_portkey && AVAILABLE+=(portkey) || log "skipping portkey" ;;
        *) AVAILABLE+=("$t") ;;
    esac
done

# ---------------------------------------------------------------------------------------------
# Configs and requests

WORDS=$(sed -n 's/.*{keyword: \([a-z]*\), action: BLOCK}.*/\1/p' "$ROOT/bench/content-filter.yaml")
gateway_yaml "$HOST:$MOCK_PORT" "$WORK/spend.db" >"$WORK/gateway.yaml"
cat "$ROOT/bench/content-filter.yaml" >>"$WORK/gateway.yaml"
{
    cat <<EOF
model_list:
  - model_name: bench-model
    litellm_params:
      model: openai/bench-model
      api_base: http://$HOST:$MOCK_PORT/v1
      api_key: $UPSTREAM_KEY
litellm_settings:
  set_verbose: false
EOF
    cat "$ROOT/bench/content-filter.yaml"
} >"$WORK/litellm.yaml"
# Portkey 1.15.2 under Node 20 answers every streamed request here with HTTP 500 ("TypeError:
# immutable" in its log), with or without guardrails; its stream rows count those failures. Its
# streams are sent with the input guardrail only (the output guardrail is not what fails); what
# it does with a blocked word in a stream is checked with both.
PORTKEY_CONFIG=$(jq -cn --arg host "http://$HOST:$MOCK_PORT/v1" --arg key "$UPSTREAM_KEY" \
    --argjson words "$(printf '%s\n' $WORDS | jq -R . | jq -sc .)" '{
      provider: "openai", api_key: $key, custom_host: $host,
      input_guardrails: [{"default.contains": {operator: "none", words: $words}, deny: true}],
      output_guardrails: [{"default.contains": {operator: "none", words: $words}, deny: true}]
    }')
PORTKEY_INPUT_ONLY=$(jq -c 'del(.output_guardrails)' <<<"$PORTKEY_CONFIG")
jq '.stream = true | .stream_options = {include_usage: true}' "$ROOT/bench/chat.json" >"$WORK/stream.json"
jq '.stream = true | .messages[-1].content = "Tell me about the project, please."' \
    "$ROOT/bench/chat.json" >"$WORK/blocked-stream.json"


# start TARGET SCENARIO: starts the mock and TARGET; sets URL, HEADERS, TARGET_PID.
start() {
    local target=$1 scenario=$2
    "$BIN/mock-upstream" --listen "$HOST:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
    PIDS+=($!)
    wait_port "$MOCK_PORT" $! || die "the mock did not start"
    HEADERS=(-H "content-type: application/json")
    URL=http://$HOST:$PROXY_PORT/v1/chat/completions
    rm -f "$WORK"/spend.db*
    case $target in
        bare) "$BIN/bare-proxy" --listen "$HOST:$PROXY_PORT" --upstream "http://$HOST:$MOCK_PORT" >"$WORK/$target.log" 2>&1 & ;;
        gateway) "$BIN/guardrail-gateway" serve --config "$WORK/gateway.yaml" --listen "$HOST:$PROXY_PORT" >"$WORK/$target.log" 2>&1 & ;;
        litellm)
            LITELLM_LOG=ERROR "$LITELLM" --config "$WORK/litellm.yaml" --host "$HOST" --port "$PROXY_PORT" \
                --num_workers 2 >"$WORK/$target.log" 2>&1 &
            HEADERS+=(-H "authorization: Bearer sk-anything")
            ;;
        portkey)
            node "$PORTKEY" --port="$PROXY_PORT" --headless >"$WORK/$target.log" 2>&1 &
            if [[ $scenario == stream ]]; then
                HEADERS+=(-H "x-portkey-config: $PORTKEY_INPUT_ONLY")
            else
                HEADERS+=(-H "x-portkey-config: $PORTKEY_CONFIG")
            fi
            ;;
    esac
    TARGET_PID=$!
    PIDS+=("$TARGET_PID")
    wait_port "$PROXY_PORT" "$TARGET_PID" || {
        log "$target did not start: $(tail -n 5 "$WORK/$target.log")"
        return 1
    }
    # Ready means one request answered (LiteLLM's workers start after the port opens).
    local i
    for ((i = 0; i < 120; i++)); do
        curl -sf -o /dev/null "${HEADERS[@]}" -d @"$ROOT/bench/chat.json" "$URL" && return 0
        sleep 0.5
    done
    log "$target does not answer: $(curl -s "${HEADERS[@]}" -d @"$ROOT/bench/chat.json" "$URL" | head -c 300)"
    return 1
}

# Peak RSS (MiB) of a process and its descendants, summed.
tree_hwm_kib() {
    local pid=$1 total child
    total=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
    for child in $(pgrep -P "$pid" 2>/dev/null); do
        total=$((total + $(tree_hwm_kib "$child")))
    done
    echo "${total:-0}"
}

# load CONC SECONDS BODY [extra headers...]: prints "rps p50_ms p99_ms failed".
load() {
    local conc=$1 secs=$2 body=$3
    shift 3
    timeout $((secs + 60)) oha --no-tui --output-format json -z "${secs}s" -c "$conc" -m POST \
        "${HEADERS[@]}" "$@" -D "$body" "$URL" >"$WORK/oha.json" 2>"$WORK/oha.err" || true
    [[ -s $WORK/oha.json ]] || {
        echo "0 0 0 err"
        return
    }
    jq -r --argjson secs "$secs" '
        ([.statusCodeDistribution // {} | to_entries[] | select(.key | startswith("2")) | .value] | add // 0) as $ok
        | ([.statusCodeDistribution // {} | to_entries[] | select(.key | startswith("2") | not) | .value] | add // 0) as $bad
        | ([.errorDistribution // {} | to_entries[] | select(.key | test("deadline") | not) | .value] | add // 0) as $err
        | "\($ok / $secs | floor) \((.latencyPercentiles.p50 // 0) * 1000 * 100 | round / 100) \((.latencyPercentiles.p99 // 0) * 1000 * 100 | round / 100) \($bad + $err)"
    ' "$WORK/oha.json"
}

# What the client sees of a streamed reply with a blocked word in it (Portkey: with its output
# guardrail too).
block_behaviour() {
    local out=$WORK/blocked.txt status code=0 headers=("${HEADERS[@]}")
    [[ $1 == portkey ]] && headers=(-H "content-type: application/json" -H "x-portkey-config: $PORTKEY_CONFIG")
    status=$(curl -s -o "$out" -w '%{http_code}' --max-time 20 "${headers[@]}" -d @"$WORK/blocked-stream.json" "$URL") || code=$?
    local leaked=no ending
    # In a content delta, not in an error message that names the keyword.
    grep '^data: ' "$out" | grep -v '"error"' | grep -qi bluebird && leaked=yes
    if [[ $status != 200 ]]; then
        ending="no stream: $(head -c 100 "$out" | tr '\n|' '  ')"
    else
        ending="no [DONE]"
        grep -q '^data: \[DONE\]' "$out" && ending="[DONE]"
        grep -q '"error"' "$out" && ending="an error event, then $ending"
        ((code == 0)) || ending="$ending; the connection was cut (curl exit $code)"
        ending="$ending; $(grep -c '^data: ' "$out") data events"
    fi
    echo "$status|$leaked|$ending"
}

RESULTS=$WORK/results.tsv
: >"$RESULTS"
BLOCKS=$WORK/blocks.tsv
: >"$BLOCKS"
FAILED_TARGETS=()
for target in "${AVAILABLE[@]}"; do
    for scenario in chat stream; do
        body=$ROOT/bench/chat.json
        extra=()
        if [[ $scenario == stream ]]; then
            body=$WORK/stream.json
            extra=(-H "x-mock-events: 50")
        fi
        for conc in $CONCURRENCY; do
            if ! start "$target" "$scenario"; then
                FAILED_TARGETS+=("$target")
                stop_all
                continue 3
            fi
            ((WARMUP > 0)) && load "$conc" "$WARMUP" "$body" "${extra[@]}" >/dev/null
            read -r rps p50 p99 failed < <(load "$conc" "$DURATION" "$body" "${extra[@]}")
            rss=$(($(tree_hwm_kib "$TARGET_PID") / 1024))
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$scenario" "$conc" "$rps" "$p50" "$p99" "$rss" "$failed" >>"$RESULTS"
            log "$target $scenario c$conc: $rps req/s, p50 $p50 ms, p99 $p99 ms, peak RSS $rss MiB, failed $failed"
            if [[ $scenario == stream && $conc == "${CONCURRENCY%% *}" ]]; then
                printf '%s|%s\n' "$target" "$(block_behaviour "$target")" >>"$BLOCKS"
            fi
            stop_all
        done
    done
done

mkdir -p "$OUT"
{
    echo "| target | scenario | concurrency | req/s | × bare | p50 ms | p99 ms | peak RSS MiB | failed |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' '
        { row[NR] = $0; if ($1 == "bare") bare[$2, $3] = $4 }
        END {
            for (i = 1; i <= NR; i++) {
                split(row[i], f, "\t")
                ratio = ((f[2], f[3]) in bare && bare[f[2], f[3]] > 0) ? sprintf("%.2f", f[4] / bare[f[2], f[3]]) : "n/a"
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4], ratio, f[5], f[6], f[7], f[8]
            }
        }' "$RESULTS"
    echo
    echo "| target | streamed reply with a blocked word: status | the word reached the client | how the stream ended |"
    echo "|---|---:|---|---|"
    awk -F'|' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$BLOCKS"
    for t in "${FAILED_TARGETS[@]}"; do echo; echo "$t: did not start or did not answer (see the log above)"; done
} | tee "$OUT/peers.md"

# The chart: throughput against concurrency, non-streaming, one line per target.
python3 - "$RESULTS" "$OUT/peers.svg" <<'PY'
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
series = {}
for t, scenario, conc, rps, *_ in rows:
    if scenario == "chat":
        series.setdefault(t, []).append((int(conc), float(rps)))
concs = sorted({c for pts in series.values() for c, _ in pts})
W, H, L, B, T, R = 640, 400, 70, 50, 30, 150
top = max([r for pts in series.values() for _, r in pts] + [1]) * 1.1
x = lambda c: L + (W - L - R) * (concs.index(c) / max(len(concs) - 1, 1))
y = lambda r: H - B - (H - B - T) * r / top
colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="18" text-anchor="middle" font-size="14">Non-streaming chat: requests per second against concurrency</text>',
       f'<line x1="{L}" y1="{H-B}" x2="{W-R}" y2="{H-B}" stroke="black"/>',
       f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H-B}" stroke="black"/>']
for i in range(6):
    v = top * i / 5
    out.append(f'<text x="{L-6}" y="{y(v)+4:.1f}" text-anchor="end">{v:.0f}</text>')
    out.append(f'<line x1="{L}" y1="{y(v):.1f}" x2="{W-R}" y2="{y(v):.1f}" stroke="#ddd"/>')
for c in concs:
    out.append(f'<text x="{x(c):.1f}" y="{H-B+18}" text-anchor="middle">c{c}</text>')
out.append(f'<text x="{(L+W-R)/2}" y="{H-10}" text-anchor="middle">concurrent connections</text>')
for i, (t, pts) in enumerate(series.items()):
    col = colors[i % len(colors)]
    pts.sort()
    out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (col, " ".join(f"{x(c):.1f},{y(r):.1f}" for c, r in pts)))
    for c, r in pts:
        out.append(f'<circle cx="{x(c):.1f}" cy="{y(r):.1f}" r="3" fill="{col}"/>')
    out.append(f'<text x="{W-R+10}" y="{T+20+18*i}" fill="{col}">{t}</text>')
out.append("</svg>")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
log "wrote $OUT/peers.md and $OUT/peers.svg"
