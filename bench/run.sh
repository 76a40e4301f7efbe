#!/usr/bin/env bash
# Load benchmark of guardrail-gateway on loopback. See BENCHMARKS.md for the method.
#
#   bash bench/run.sh
#
# Measures the same POST /v1/chat/completions requests, at fixed concurrency and duration,
# against four targets, each started fresh for each measurement on its own 127.0.0.1 port:
#   mock       the mock upstream directly (bench/src/bin/mock-upstream.rs)
#   bare       a bare hyper + hyper-util passthrough proxy in front of the mock (bench/src/bin/bare-proxy.rs)
#   gw-none    guardrail-gateway, no guardrails configured (all five layers present), spend log on SQLite
#   gw-filter  guardrail-gateway, a content filter (20 blocked words + email, us_ssn, credit_card,
#              us_phone, ipv4) in pre_call and post_call, spend log on SQLite
#   gw-master  gw-none with a master key, every request authenticated with it
#   gw-vkey    gw-none with a master key, every request authenticated with a virtual key
#              (generated once at start; looked up in the key cache, refreshed every 5 s)
# and prints one Markdown table (req/s, p50, p99, peak RSS of the measured process) plus the
# ratios gw-none/bare and gw-filter/bare, and gw-master/gw-none and gw-vkey/gw-none (the cost of
# authentication), from the same run.
#
# Environment (all optional):
#   BENCH_DURATION   seconds per measured run (default 10)
#   BENCH_WARMUP     seconds of warm-up before each measured run (default 2; 0 to skip)
#   BENCH_SCENARIOS  subset of: chat-c1 chat-c16 chat-c64 stream-c16 stream-c256 (default: all
#                    but chat-c1, which is for the added latency of one request at a time)
#   BENCH_ROUNDS     rounds (default 1): with R > 1 every scenario measures each target R times,
#                    the targets alternating (bare, gw-none, ..., bare, gw-none, ...), and the
#                    tables give the median of the R runs per target and the median of the R
#                    per-round ratios
#   BENCH_TARGETS    subset of: mock bare gw-none gw-filter gw-master gw-vkey (default: all)
#   BENCH_PORT_BASE  first of six consecutive ports on 127.0.0.1 (default 18401)
#   BENCH_TOOL       oha | wrk (default: oha if installed or installable, else wrk)
#   BENCH_SKIP_BUILD 1 to use already built binaries
#   BENCH_OUT        a file to copy the final table to
#   BENCH_KEEP       1 to keep the work directory (configs, server logs, raw load-generator output)
#   CARGO_TARGET_DIR where the release binaries are built (default: ./target)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${BENCH_DURATION:-10}
ROUNDS=${BENCH_ROUNDS:-1}
WARMUP=${BENCH_WARMUP:-2}
SCENARIOS=${BENCH_SCENARIOS:-chat-c16 chat-c64 stream-c16 stream-c256}
TARGETS=${BENCH_TARGETS:-mock bare gw-none gw-filter gw-master gw-vkey}
PORT_BASE=${BENCH_PORT_BASE:-18401}
TOOL=${BENCH_TOOL:-}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
HOST=127.0.0.1
STREAM_EVENTS=50
NAME=bench
. "$ROOT/bench/lib.sh"

# check_range NAME VALUE MIN MAX: VALUE must be an integer in MIN..MAX.
check_range() {
    if ! [[ $2 =~ ^[0-9]{1,6}$ ]] || (($2 < $3 || $2 > $4)); then
        die "$1 must be an integer in $3..$4 (got '$2')"
    fi
}
check_range BENCH_DURATION "$DURATION" 1 600
check_range BENCH_WARMUP "$WARMUP" 0 60
check_range BENCH_ROUNDS "$ROUNDS" 1 9
check_range BENCH_PORT_BASE "$PORT_BASE" 1024 65530
for s in $SCENARIOS; do
    case $s in chat-c1 | chat-c16 | chat-c64 | stream-c16 | stream-c256) ;; *) die "unknown scenario '$s'" ;; esac
done
check_targets mock bare gw-none gw-filter gw-master gw-vkey

MOCK_PORT=$PORT_BASE
BARE_PORT=$((PORT_BASE + 1))
GW_NONE_PORT=$((PORT_BASE + 2))
GW_FILTER_PORT=$((PORT_BASE + 3))
GW_MASTER_PORT=$((PORT_BASE + 4))
GW_VKEY_PORT=$((PORT_BASE + 5))
MASTER_KEY=sk-bench-master-key-0123456789
# The authorization header of the current target's requests (none for the others).
AUTH=()

work_dir bench

# ---------------------------------------------------------------------------------------------
# Build and tools

[[ ${BENCH_SKIP_BUILD:-0} == 1 ]] || log "building release binaries into $TARGET_DIR"
build_release
for b in guardrail-gateway mock-upstream bare-proxy; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (build it or unset BENCH_SKIP_BUILD)"
done

PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
if [[ -z $TOOL ]]; then
    if command -v oha >/dev/null; then
        TOOL=oha
    elif command -v wrk >/dev/null; then
        TOOL=wrk
    else
        log "installing oha from crates.io (cargo install --locked oha; a few minutes, once)"
        if cargo install --locked --quiet oha >&2; then
            TOOL=oha
        else
            log "oha could not be installed; trying wrk from the Debian archive"
            sudo=()
            ((EUID == 0)) || sudo=(sudo)
            "${sudo[@]}" apt-get install -y wrk >&2 || die "neither oha nor wrk could be installed"
            TOOL=wrk
        fi
    fi
fi
case $TOOL in
    oha | wrk) command -v "$TOOL" >/dev/null || die "BENCH_TOOL=$TOOL is not installed" ;;
    *) die "BENCH_TOOL must be oha or wrk" ;;
esac
if [[ $TOOL == oha ]]; then
    if command -v jq >/dev/null; then
        JSON=jq
    elif command -v python3 >/dev/null; then
        JSON=python3
    else
        die "reading oha's JSON output needs jq or python3"
    fi
    if oha --help | grep -q -- '--output-format'; then
        OHA_JSON=(--output-format json)
    else
        OHA_JSON=(-j)
    fi
fi
TOOL_VERSION=$("$TOOL" --version 2>&1 | head -n 1 || true)

# 256 connections in and 256 out per process, plus the load generator's.
ulimit -n 8192 2>/dev/null || ulimit -n 4096 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# Request bodies (~1 KiB) and gateway configs

# A realistic chat request (bench/chat.json): system prompt, one earlier turn, a new question.
# No blocked word, no PII, and none of the mock's trigger words, so every guardrail runs and
# passes. The streaming variant adds `stream` and `stream_options.include_usage`.
cp "$ROOT/bench/chat.json" "$WORK/chat.json"
sed '1s/^{/{"stream": true, "stream_options": {"include_usage": true}, /' "$ROOT/bench/chat.json" >"$WORK/stream.json"

# Writes a gateway config: $1 file, $2 spend-log path, $3 "filter" for the content filter,
# "keys" for a master key.
write_config() {
    local file=$1 db=$2 kind=$3
    gateway_yaml "$HOST:$MOCK_PORT" "$db" >"$file"
    [[ $kind == keys ]] && echo "  master_key: $MASTER_KEY" >>"$file"
    [[ $kind == filter ]] || return 0
    cat "$ROOT/bench/content-filter.yaml" >>"$file"
}

# ---------------------------------------------------------------------------------------------
# Processes

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# Waits (at most 10 s) until $2 accepts connections (and, with $3 = health, answers
# GET /health with 200); fails if process $1 exits first.
wait_ready() {
    local pid=$1 port=$2 mode=${3:-tcp} i status
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 1
        if [[ $mode == health ]]; then
            status=$(timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$port && printf 'GET /health HTTP/1.0\r\nHost: $HOST\r\n\r\n' >&3 && head -n 1 <&3" 2>/dev/null || true)
            [[ $status == *" 200"* ]] && return 0
        elif port_in_use "$port"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# Starts "$@" in the background with its output in $WORK/$name.log; sets STARTED_PID.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

# User + system CPU time of a process, in clock ticks.
cpu_ticks() {
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
CLK_TCK=$(getconf CLK_TCK)

peak_rss_mib() {
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024; found = 1 } END { if (!found) print "n/a" }' "/proc/$1/status" 2>/dev/null || echo n/a
}

# Starts the mock and, for a proxy target, the proxy in front of it; sets URL and MEASURED_PID.
start_target() {
    local target=$1 tag=$2 port
    AUTH=()
    for port in "$MOCK_PORT" "$BARE_PORT" "$GW_NONE_PORT" "$GW_FILTER_PORT" "$GW_MASTER_PORT" "$GW_VKEY_PORT"; do
        ! port_in_use "$port" || die "port $port on $HOST is already in use (set BENCH_PORT_BASE)"
    done
    start "mock-$tag" "$BIN/mock-upstream" --listen "$HOST:$MOCK_PORT"
    local mock_pid=$STARTED_PID
    wait_ready "$mock_pid" "$MOCK_PORT" || die "the mock did not start: $(tail -n 5 "$WORK/mock-$tag.log")"
    case $target in
        mock)
            MEASURED_PID=$mock_pid
            port=$MOCK_PORT
            ;;
        bare)
            start "bare-$tag" "$BIN/bare-proxy" --listen "$HOST:$BARE_PORT" --upstream "http://$HOST:$MOCK_PORT"
            MEASURED_PID=$STARTED_PID
            port=$BARE_PORT
            wait_ready "$MEASURED_PID" "$port" || die "bare-proxy did not start: $(tail -n 5 "$WORK/bare-$tag.log")"
            ;;
        gw-*)
            local kind=none
            case $target in
                gw-none) port=$GW_NONE_PORT ;;
                gw-filter) port=$GW_FILTER_PORT kind=filter ;;
                gw-master) port=$GW_MASTER_PORT kind=keys ;;
                gw-vkey) port=$GW_VKEY_PORT kind=keys ;;
            esac
            write_config "$WORK/$target-$tag.yaml" "$WORK/spend-$target-$tag.db" "$kind"
            start "$target-$tag" "$BIN/guardrail-gateway" serve --config "$WORK/$target-$tag.yaml" --listen "$HOST:$port"
            MEASURED_PID=$STARTED_PID
            wait_ready "$MEASURED_PID" "$port" health || die "the gateway did not start: $(tail -n 5 "$WORK/$target-$tag.log")"
            if [[ $target == gw-master ]]; then
                AUTH=(-H "authorization: Bearer $MASTER_KEY")
            elif [[ $target == gw-vkey ]]; then
                local key
                key=$(curl -sf -H "authorization: Bearer $MASTER_KEY" -H "content-type: application/json" \
                    -d '{"key_alias": "bench"}' "http://$HOST:$port/key/generate" |
                    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])') ||
                    die "cannot generate a virtual key: $(tail -n 5 "$WORK/$target-$tag.log")"
                AUTH=(-H "authorization: Bearer $key")
            fi
            ;;
    esac
    URL="http://$HOST:$port/v1/chat/completions"
}

# ---------------------------------------------------------------------------------------------
# Load

# Runs the load generator: $1 url, $2 concurrency, $3 seconds, $4 stream (true|false),
# $5 output file, which gets one line "ok seconds p50_s p99_s failed" (failed: non-2xx answers
# and errors, not counting requests cut off by the deadline).
run_load() {
    local url=$1 conc=$2 secs=$3 stream=$4 out=$5 body=$WORK/chat.json
    local headers=(-H "content-type: application/json" "${AUTH[@]}")
    if [[ $stream == true ]]; then
        body=$WORK/stream.json
        headers+=(-H "x-mock-events: $STREAM_EVENTS")
    fi
    if [[ $TOOL == oha ]]; then
        timeout $((secs + 30)) oha --no-tui "${OHA_JSON[@]}" -z "${secs}s" -c "$conc" -m POST \
            "${headers[@]}" -D "$body" "$url" >"$out.raw" 2>"$out.err" || true
        [[ -s $out.raw ]] || die "oha failed: $(tail -n 3 "$out.err")"
        if [[ $JSON == jq ]]; then
            jq -r '
              def sum(f): [f] | add // 0;
              sum(.statusCodeDistribution // {} | to_entries[] | select(.key | startswith("2")) | .value) as $ok
              | sum(.statusCodeDistribution // {} | to_entries[] | select(.key | startswith("2") | not) | .value) as $bad
              | sum(.errorDistribution // {} | to_entries[] | select(.key | test("deadline") | not) | .value) as $err
              | "\($ok) \(.summary.total) \(.latencyPercentiles.p50 // 0) \(.latencyPercentiles.p99 // 0) \($bad + $err)"
            ' "$out.raw" >"$out"
        else
            python3 - "$out.raw" >"$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution") or {}
ok = sum(v for k, v in codes.items() if k.startswith("2"))
bad = sum(v for k, v in codes.items() if not k.startswith("2"))
bad += sum(v for k, v in (r.get("errorDistribution") or {}).items() if "deadline" not in k)
p = r.get("latencyPercentiles") or {}
print(ok, r["summary"]["total"], p.get("p50") or 0, p.get("p99") or 0, bad)
PY
        fi
    else
        local threads=2 lua=$WORK/wrk.lua
        ((conc >= threads)) || threads=$conc
        {
            echo 'wrk.method = "POST"'
            echo "wrk.body = [==[$(cat "$body")]==]"
            echo 'wrk.headers["content-type"] = "application/json"'
            ((${#AUTH[@]} == 0)) || echo "wrk.headers[\"authorization\"] = \"${AUTH[1]#authorization: }\""
            [[ $stream == true ]] && echo "wrk.headers[\"x-mock-events\"] = \"$STREAM_EVENTS\""
            cat <<'LUA'
done = function(summary, latency, requests)
  local e = summary.errors
  local failed = e.status + e.connect + e.read + e.write + e.timeout
  io.write(string.format("BENCH %d %.6f %.6f %.6f %d\n", summary.requests - e.status,
    summary.duration / 1e6, latency:percentile(50) / 1e6, latency:percentile(99) / 1e6, failed))
end
LUA
        } >"$lua"
        timeout $((secs + 30)) wrk -t "$threads" -c "$conc" -d "${secs}s" --timeout 30s -s "$lua" \
            "$url" >"$out.raw" 2>"$out.err" || true
        grep '^BENCH ' "$out.raw" | cut -d' ' -f2- >"$out" || die "wrk failed: $(tail -n 3 "$out.err")"
    fi
}

# ---------------------------------------------------------------------------------------------
# Run

count=0
for _ in $SCENARIOS; do
    for _ in $TARGETS; do count=$((count + 1)); done
done
count=$((count * ROUNDS))
estimate=$((count * (DURATION + WARMUP + 2)))
log "$TOOL ($TOOL_VERSION); $count measurements of ${WARMUP}s warm-up + ${DURATION}s; about ${estimate}s"
((estimate <= 300)) || log "warning: this run will take more than 5 minutes"

RESULTS=$WORK/results.tsv
: >"$RESULTS"
started=$SECONDS
for scenario in $SCENARIOS; do
    conc=${scenario##*-c}
    stream=false
    [[ $scenario == stream-* ]] && stream=true
    for round in $(seq "$ROUNDS"); do for target in $TARGETS; do
        tag=$scenario
        start_target "$target" "$tag"
        if ((WARMUP > 0)); then
            run_load "$URL" "$conc" "$WARMUP" "$stream" "$WORK/warmup-$target-$tag"
        fi
        cpu0=$(cpu_ticks "$MEASURED_PID")
        run_load "$URL" "$conc" "$DURATION" "$stream" "$WORK/load-$target-$tag"
        cpu1=$(cpu_ticks "$MEASURED_PID")
        rss=$(peak_rss_mib "$MEASURED_PID")
        kill -0 "$MEASURED_PID" 2>/dev/null || die "$target exited during the run: $(tail -n 5 "$WORK/$target-$tag.log" 2>/dev/null)"
        stop_all
        read -r ok secs p50 p99 failed <"$WORK/load-$target-$tag"
        awk -v s="$scenario" -v c="$conc" -v t="$target" -v ok="$ok" -v secs="$secs" \
            -v p50="$p50" -v p99="$p99" -v rss="$rss" -v failed="$failed" \
            -v cpu=$((cpu1 - cpu0)) -v tck="$CLK_TCK" -v round="$round" 'BEGIN {
                printf "%s\t%s\t%s\t%.0f\t%.2f\t%.2f\t%s\t%s\t%d\t%d\n", s, c, t,
                    (secs > 0 ? ok / secs : 0), p50 * 1000, p99 * 1000, rss,
                    (ok > 0 ? sprintf("%.0f", cpu * 1e6 / tck / ok) : "n/a"), failed, round }' >>"$RESULTS"
        log "$(tail -n 1 "$RESULTS" | tr '\t' ' ') ($((SECONDS - started))s)"
    done; done
done

TABLE=$WORK/table.md
awk -F'\t' -v rounds="$ROUNDS" '
    # The median of the n values v[1..n] (sorted in place; n is small).
    function median(v, n,    i, j, x) {
        for (i = 2; i <= n; i++) {
            x = v[i]
            for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]
            v[j + 1] = x
        }
        return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    # The median over the rounds of column c of target t in scenario s.
    function med(s, t, c,    r, n, v, f) {
        n = 0
        for (r = 1; r <= rounds; r++) if ((s, t, r) in row) { split(row[s, t, r], f, "\t"); v[++n] = f[c] + 0 }
        return n ? median(v, n) : ""
    }
    # The median over the rounds of (column c of t) / (column c of base), or, with diff set,
    # of their difference; "n/a" when no round has both.
    function ratio(s, t, base, c, diff,    r, n, v, a, b, x) {
        n = 0
        for (r = 1; r <= rounds; r++) {
            if (!((s, t, r) in row) || !((s, base, r) in row)) continue
            split(row[s, t, r], a, "\t"); split(row[s, base, r], b, "\t")
            if (diff) v[++n] = a[c] - b[c]
            else if (b[c] > 0) v[++n] = a[c] / b[c]
        }
        if (!n) return "n/a"
        x = median(v, n)
        if (diff) return sprintf(c == 5 ? "%+.3f" : "%+.2f", x)
        return sprintf(base == "gw-none" ? "%.3f" : "%.2f", x)
    }
    BEGIN {
        name["mock"] = "(1) mock upstream directly"
        name["bare"] = "(2) bare hyper proxy"
        name["gw-none"] = "(3) gateway, no guardrails"
        name["gw-filter"] = "(4) gateway, content filter + SQLite"
        name["gw-master"] = "(5) gateway, no guardrails, master key"
        name["gw-vkey"] = "(6) gateway, no guardrails, virtual key"
    }
    {
        row[$1, $3, $10] = $0; conc[$1] = $2
        if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
        if (!(($1, $3) in tseen)) { tseen[$1, $3] = 1; targets[$1] = targets[$1] " " $3 }
        ran[$3] = 1
    }
    END {
        if (rounds > 1) print "Each figure: the median of " rounds " alternating runs (ratios and differences: the median of the per-round values)."
        if (rounds > 1) print ""
        print "| scenario | concurrency | target | req/s | p50 ms | p99 ms | peak RSS MiB | CPU µs/req | failed |"
        print "|---|---:|---|---:|---:|---:|---:|---:|---:|"
        for (i = 1; i <= n; i++) {
            s = order[i]; m = split(substr(targets[s], 2), ts, " ")
            for (k = 1; k <= m; k++) {
                t = ts[k]
                printf "| %s | %s | %s | %.0f | %.2f | %.2f | %.1f | %.0f | %d |\n", s, conc[s], name[t],
                    med(s, t, 4), med(s, t, 5), med(s, t, 6), med(s, t, 7), med(s, t, 8), med(s, t, 9)
            }
        }
        print ""
        # The authentication columns only when (5) or (6) ran.
        auth = ("gw-master" in ran) || ("gw-vkey" in ran)
        printf "| scenario | (3)/(2) req/s | (4)/(2) req/s | (3) added p50 ms | (4) added p50 ms | (3) added p99 ms | (4) added p99 ms |%s\n",
            auth ? " (5)/(3) req/s | (6)/(3) req/s |" : ""
        printf "|---|---:|---:|---:|---:|---:|---:|%s\n", auth ? "---:|---:|" : ""
        for (i = 1; i <= n; i++) {
            s = order[i]
            printf "| %s | %s | %s | %s | %s | %s | %s |", s,
                ratio(s, "gw-none", "bare", 4, 0), ratio(s, "gw-filter", "bare", 4, 0),
                ratio(s, "gw-none", "bare", 5, 1), ratio(s, "gw-filter", "bare", 5, 1),
                ratio(s, "gw-none", "bare", 6, 1), ratio(s, "gw-filter", "bare", 6, 1)
            if (auth) printf " %s | %s |", ratio(s, "gw-master", "gw-none", 4, 0), ratio(s, "gw-vkey", "gw-none", 4, 0)
            printf "\n"
        }
    }' "$RESULTS" >"$TABLE"

{
    echo
    echo "guardrail-gateway load benchmark: $TOOL, ${DURATION}s per run after ${WARMUP}s warm-up, loopback,"
    echo "$(nproc) cores shared by the load generator, the proxy and the mock; total $((SECONDS - started))s."
    echo "peak RSS: VmHWM of the measured process (the mock for (1), the proxy for (2) to (6)), warm-up included."
    echo "CPU µs/req: user + system CPU time of that process during the measured run, per successful request."
    echo "failed: non-2xx answers and transport errors (requests cut off by the deadline excluded)."
    echo
    cat "$TABLE"
} | tee "${BENCH_OUT:-/dev/null}"
