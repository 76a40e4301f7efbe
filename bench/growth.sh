#!/usr/bin/env bash
# How the gateway's cost grows with the prompt: 1 KiB, 100 KiB and 1 MiB prompts through a
# content filter with 1,000 blocked keywords and every prebuilt PII pattern, in pre_call and
# post_call (the mock's reply echoes the prompt, so the response grows too). See BENCHMARKS.md
# ("Growth").
#
#   bash bench/growth.sh
#
# For each size: callgrind instructions per request of the gateway with no guardrail and with the
# filter (bench/instructions.sh, with BENCH_BODY and BENCH_GUARDRAILS), the filter's cost per
# prompt byte, and the marginal cost of each byte added since the previous size (flat when the
# cost is linear); then, without valgrind, the gateway's peak RSS (VmHWM) after BENCH_DURATION s
# (default 10) of 16 concurrent clients sending that prompt, with the filter. The prompt is
# English-like text of common words that contains no keyword and no PII, so every byte is
# scanned and the request passes.
#
# Environment (all optional): BENCH_SIZES (KiB, default "1 100 1024"), BENCH_DURATION,
# BENCH_SKIP_BUILD, CARGO_TARGET_DIR, BENCH_PORT_BASE (default 18481), BENCH_OUT.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZES=${BENCH_SIZES:-1 100 1024}
DURATION=${BENCH_DURATION:-10}
PORT_BASE=${BENCH_PORT_BASE:-18481}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HOST=127.0.0.1
NAME=growth
. "$ROOT/bench/lib.sh"
need_oha
build_release
work_dir growth

# The filter: 1,000 keywords (made-up words that no English text contains) and every prebuilt
# pattern; the prompts: common words, seeded, so every run sends the same bytes.
python3 - "$WORK" $SIZES <<'PY'
import json, random, sys
work, sizes = sys.argv[1], [int(s) for s in sys.argv[2:]]
rng = random.Random(18)
letters = "bcdfghjklmnpqrstvwxz"
keywords = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(7, 11))) for _ in range(1200)})[:1000]
patterns = ["email", "us_ssn", "us_ssn_no_dash", "us_phone", "credit_card", "visa", "mastercard",
            "amex", "discover", "ipv4", "aws_access_key", "github_token", "slack_token", "generic_api_key"]
with open(f"{work}/filter.yaml", "w") as f:
    f.write("guardrails:\n  - guardrail_name: big-filter\n    litellm_params:\n")
    f.write("      guardrail: litellm_content_filter\n      mode: [pre_call, post_call]\n      default_on: true\n")
    f.write("      blocked_words:\n")
    for k in keywords:
        f.write(f"        - {{keyword: {k}, action: BLOCK}}\n")
    f.write("      patterns:\n")
    for p in patterns:
        f.write(f"        - {{pattern_type: prebuilt, pattern_name: {p}, action: MASK}}\n")
words = ("the of and to in is that it for on was with as be at by this from or have an they which "
         "one you were all we when there can more if no out so said what up its about into than them "
         "only other new some could time these two may first then do any like my now over such our man "
         "me even most made after also did many before must through back years where much your way "
         "well down should because each just those people how too little state good very make world "
         "still own see men work long get here between both life being under never day same another "
         "know while last might us great old year off come since against go came right used take three "
         "weather river garden morning window kitchen letter summer winter evening story music").split()
for kib in sizes:
    target = kib * 1024
    out, n = [], 0
    while n < target:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(8, 16))).capitalize() + ". "
        out.append(sentence)
        n += len(sentence)
    prompt = "".join(out)[:target]
    body = {"model": "bench-model", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": prompt}], "max_tokens": 64}
    with open(f"{work}/prompt-{kib}.json", "w") as f:
        json.dump(body, f)
PY

requests_for() {
    case $1 in
        1) echo 200 ;;
        100) echo 20 ;;
        *) echo 5 ;;
    esac
}

peak_rss() {
    local body=$1 mock=$PORT_BASE gw=$((PORT_BASE + 1)) i
    gateway_yaml "$HOST:$mock" "$WORK/spend.db" >"$WORK/gw.yaml"
    cat "$WORK/filter.yaml" >>"$WORK/gw.yaml"
    rm -f "$WORK"/spend.db*
    "$BIN/mock-upstream" --listen "$HOST:$mock" >"$WORK/mock.log" 2>&1 &
    PIDS+=($!)
    "$BIN/guardrail-gateway" serve --config "$WORK/gw.yaml" --listen "$HOST:$gw" >"$WORK/gw.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 100; i++)); do
        curl -sf -o /dev/null "http://$HOST:$gw/health" && break
        sleep 0.1
    done
    timeout $((DURATION + 60)) oha --no-tui --output-format json -z "${DURATION}s" -c 16 -m POST \
        -H "content-type: application/json" -D "$body" "http://$HOST:$gw/v1/chat/completions" >"$WORK/oha.json" 2>&1 || true
    local ok
    ok=$(jq '[.statusCodeDistribution // {} | to_entries[] | select(.key == "200") | .value] | add // 0' "$WORK/oha.json")
    echo "$(awk '/^VmHWM:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status") $ok"
    stop_all
}

TABLE=$WORK/table.md
{
    echo "| prompt | requests counted | no guardrail: instr/request | with the filter: instr/request | filter minus none, per prompt byte | marginal, per added prompt byte: no guardrail | marginal: with the filter | peak RSS MiB, c16 with the filter | requests in ${DURATION} s |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >"$TABLE"
for kib in $SIZES; do
    n=$(requests_for "$kib")
    body=$WORK/prompt-$kib.json
    bytes=$((kib * 1024))
    counts=$(BENCH_SKIP_BUILD=1 BENCH_REQUESTS=$n BENCH_TARGETS="gw-none gw-filter" BENCH_BODY=$body \
        BENCH_GUARDRAILS=$WORK/filter.yaml BENCH_PORT_BASE=$((PORT_BASE + 4)) bash "$ROOT/bench/instructions.sh")
    none=$(awk -F'|' '$2 ~ /gw-none/ {gsub(/ /, "", $3); print $3}' <<<"$counts")
    filter=$(awk -F'|' '$2 ~ /gw-filter/ {gsub(/ /, "", $3); print $3}' <<<"$counts")
    read -r rss ok < <(peak_rss "$body")
    awk -v k="$kib" -v n="$n" -v a="$none" -v b="$filter" -v by="$bytes" -v rss="$rss" -v ok="$ok" \
        -v pa="${prev_none:-}" -v pb="${prev_filter:-}" -v pby="${prev_bytes:-}" 'BEGIN {
        ma = (pa == "" ? "" : sprintf("%.1f", (a - pa) / (by - pby)))
        mb = (pb == "" ? "" : sprintf("%.1f", (b - pb) / (by - pby)))
        printf "| %d KiB | %d | %d | %d | %.1f | %s | %s | %s | %s |\n", k, n, a, b, (b - a) / by, ma, mb, rss, ok }' >>"$TABLE"
    prev_none=$none prev_filter=$filter prev_bytes=$bytes
    echo "growth: $(tail -n 1 "$TABLE")" >&2
done
tee "${BENCH_OUT:-/dev/null}" <"$TABLE"
