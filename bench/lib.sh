# Helpers shared by the bench scripts: sourced, not run. A script sets ROOT (the repository),
# NAME (its name in messages) and HOST, keeps the processes it starts in the array PIDS, and
# then:
#   . "$ROOT/bench/lib.sh"

# die MESSAGE: prints "NAME: MESSAGE" and exits with 1.
die() {
    echo "$NAME: $*" >&2
    exit 1
}

# log MESSAGE: prints "NAME: MESSAGE" to standard error.
log() { echo "$NAME: $*" >&2; }

# wait_port PORT [PID]: succeeds once something listens on HOST:PORT; fails after 60 s, or at
# once if PID is given and has exited.
wait_port() {
    local i
    for ((i = 0; i < 600; i++)); do
        (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null && return 0
        if [[ -n ${2:-} ]] && ! kill -0 "$2" 2>/dev/null; then
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# stop_tree PID: stops PID's children (a server's workers), then PID: SIGTERM, up to 10 s to
# exit, then SIGKILL.
stop_tree() {
    local pid=$1 child i
    for child in $(pgrep -P "$pid" 2>/dev/null); do stop_tree "$child"; done
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# stop_all: stops every process in PIDS, and empties it.
stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do stop_tree "$pid"; done
    PIDS=()
}

# need_oha: puts cargo's bin directory on PATH and dies unless the load generator oha is there.
need_oha() {
    PATH=$PATH:${CARGO_HOME:-$HOME/.cargo}/bin
    command -v oha >/dev/null || die "oha is needed (cargo install --locked oha, or run bench/run.sh once)"
}

# check_targets ALLOWED...: dies unless every target of TARGETS is one of ALLOWED.
check_targets() {
    local t
    for t in $TARGETS; do
        [[ " $* " == *" $t "* ]] || die "unknown target '$t' (one of: $*)"
    done
}

# gateway_yaml MOCK DB: prints bench/gateway.yaml (the gateway-without-guardrails config) for
# the mock upstream at MOCK (HOST:PORT) and the SQLite spend log at DB.
gateway_yaml() {
    sed -e "s|MOCK_ADDR|$1|" -e "s|SPEND_DB|$2|" "$ROOT/bench/gateway.yaml"
}

# The targets start_proxy knows.
PROXY_TARGETS="bare gw-none gw-filter"

# start_proxy TARGET: starts TARGET's proxy on HOST:PROXY_PORT in front of the mock on
# HOST:MOCK_PORT: for bare, BIN's bare-proxy; for gw-none and gw-filter, GATEWAY with
# bench/gateway.yaml (gw-filter: with bench/content-filter.yaml appended) and a fresh SQLite
# spend log in WORK. Sets PROXY to its pid and adds it to PIDS; dies if it does not start.
start_proxy() {
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
}

# remote_guardrail_yaml GUARD MODE [POLICY]: prints a `guardrails:` section with one default-on
# Generic Guardrail API guardrail (the service at GUARD, HOST:PORT) in MODE, with
# stream_policy POLICY when given.
remote_guardrail_yaml() {
    cat <<EOF
guardrails:
  - guardrail_name: remote
    litellm_params:
      guardrail: generic_guardrail_api
      api_base: http://$1
      mode: $2
      default_on: true
EOF
    [[ -z ${3:-} ]] || echo "      stream_policy: $3"
}

# stream_request: with BENCH_EVENTS=E set, points BODY at a copy of it in WORK with
# "stream": true, and sets STREAM to the header asking the mock for E content events (so
# every request is a stream of E events); without it, leaves BODY and sets STREAM empty.
stream_request() {
    STREAM=()
    [[ -n ${BENCH_EVENTS:-} ]] || return 0
    [[ $BENCH_EVENTS =~ ^[0-9]{1,5}$ ]] || die "BENCH_EVENTS must be a number of events (got '$BENCH_EVENTS')"
    python3 -c 'import json, sys; b = json.load(open(sys.argv[1])); b["stream"] = True; json.dump(b, open(sys.argv[2], "w"))' \
        "$BODY" "$WORK/stream.json"
    BODY=$WORK/stream.json
    STREAM=(-H "x-mock-events: $BENCH_EVENTS")
}

# start_mock: starts the mock upstream on HOST:MOCK_PORT (its output in WORK/mock.log) and waits
# until it listens; sets MOCK_PID and adds it to PIDS. Dies, with the mock's last lines, if it
# does not start.
start_mock() {
    "$BIN/mock-upstream" --listen "$HOST:$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
    MOCK_PID=$!
    PIDS+=("$MOCK_PID")
    wait_port "$MOCK_PORT" "$MOCK_PID" || die "the mock upstream did not start: $(tail -n 5 "$WORK/mock.log")"
}

# post_all WHAT N CONCURRENCY [OHA ARGS...]: N chat requests (BODY, with STREAM's header when
# set) from oha at CONCURRENCY to the proxy on HOST:PROXY_PORT, its output in WORK/oha.txt;
# dies (naming WHAT) unless every request got a 200. Bounded by a 300 s timeout.
post_all() {
    local what=$1 n=$2 concurrency=$3
    shift 3
    timeout 300 oha --no-tui -n "$n" -c "$concurrency" -m POST -H "content-type: application/json" "$@" "${STREAM[@]}" \
        -D "$BODY" "http://$HOST:$PROXY_PORT/v1/chat/completions" >"$WORK/oha.txt" 2>&1 ||
        die "$what: oha failed: $(tail -n 3 "$WORK/oha.txt")"
    grep -q '\[200\] '"$n"' responses' "$WORK/oha.txt" ||
        die "$what: not every request got a 200: $(grep -A3 'Status code' "$WORK/oha.txt")"
}

# build_release: builds the release binaries the scripts run, unless BENCH_SKIP_BUILD=1.
build_release() {
    [[ ${BENCH_SKIP_BUILD:-0} == 1 ]] && return 0
    (cd "$ROOT" && cargo build --release --quiet -p guardrail-gateway -p guardrail-tower-bench)
}

# work_dir NAME: sets WORK to a new temporary directory and empties PIDS; on exit, Ctrl-C
# included, every process in PIDS is stopped and WORK removed (kept with BENCH_KEEP=1).
work_dir() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/guardrail-$1.XXXXXX")
    PIDS=()
    trap remove_work EXIT
    trap 'exit 130' INT TERM
}

# remove_work: what work_dir runs on exit.
remove_work() {
    stop_all
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
