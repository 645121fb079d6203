#!/usr/bin/env bash
# Benchmarks chatkit-gateway beside two ChatKit server SDKs under our own load tester, one server after the
# other, so the README can set their numbers side by side from one command:
#   gateway  chatkit-gateway (release build, the echo responder, a fresh SQLite file), as ../run.sh starts it
#   shipped  the reference Python server (PyPI openai-chatkit==1.6.5, echo_server.py next to this script) as
#            published, on uvicorn's asyncio loop
#   tuned    the same with uvloop, and the SDK's per-request TypeAdapter(ChatKitReq) built once
#   node     the Node peer: npm chatkit-node-backend-sdk 1.1.2 on express with a better-sqlite3 file store
#            (node/echo_server.mjs, its packages pinned by node/package-lock.json)
# Each server starts on a free loopback port with a fresh SQLite database, the scenarios run against it in
# turn, and it is stopped. One Markdown table goes to stdout, with the server CPU per request, then the
# gateway's request rate divided by each other server's, scenario by scenario.
#
# Settings come from the environment:
#   MODES          which servers, in order ("gateway shipped tuned node"); the ratios need gateway
#   REF_VENV       virtualenv for the Python server (/tmp/chatkit-ref-venv); created and filled with
#                  openai-chatkit==1.6.5 fastapi uvicorn uvloop when missing
#   PYTHON         interpreter that creates the venv (python3)
#   NODE           Node.js binary for the Node peer (node; version 20 or later)
#   NPM            npm binary that installs the Node peer's packages (npm): `npm ci` from the lock file into
#                  loadtest/reference/node/node_modules when they are missing (better-sqlite3 compiles its
#                  SQLite binding then when no prebuilt one can be downloaded: a C++ compiler and Node's headers)
#   SCENARIOS      which scenarios, in order ("turn list create")
#   CONCURRENCY    virtual clients per scenario (32)
#   DURATION       measured time per scenario (10s)
#   WARMUP         unmeasured load before each measurement (2s)
#   TIMEOUT        limit on one request (10s)
#   READY_TIMEOUT  seconds to wait for a server to answer (60; importing the Python SDK is slow)
#   WORKERS        HTTP worker threads of the gateway (its default: one per CPU)
#   CARGO_TARGET_DIR is respected when set.
#
# It shares ../lib.sh with the gateway's load-test scripts: building, free ports, starting the gateway, waiting for
# a server, running the load tester and tabling its reports, and the cleanup on exit, failure and Ctrl-C.
#
# Details of each run go to stderr; the machine lines and the tables go to stdout. The exit status is 1 when a
# scenario failed or counted any error.
set -euo pipefail
LT_NAME=run.sh
READY_TIMEOUT=${READY_TIMEOUT:-60}
USER_HEADER=x-user-id # echo_server.py and node/echo_server.mjs read the user from this header
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

REF_VENV=${REF_VENV:-/tmp/chatkit-ref-venv}
PYTHON=${PYTHON:-python3}
NODE=${NODE:-node}
NPM=${NPM:-npm}
MODES=${MODES:-gateway shipped tuned node}
SCENARIOS=${SCENARIOS:-turn list create}
CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TIMEOUT=${TIMEOUT:-10s}

cd "$lt_root"
server_py=$lt_root/loadtest/reference/echo_server.py
node_dir=$lt_root/loadtest/reference/node

wants_gateway='' wants_python='' wants_node=''
for mode in $MODES; do
    case $mode in
        gateway) wants_gateway=1 ;;
        shipped | tuned) wants_python=1 ;;
        node) wants_node=1 ;;
        *)
            lt_say "unknown mode \`$mode\`; use gateway, shipped, tuned or node"
            exit 2
            ;;
    esac
done

# --- the Python server's virtualenv -------------------------------------------------------
py=$REF_VENV/bin/python
venv_ready() {
    "$py" - <<'EOF' 2>/dev/null
import importlib.metadata as md
assert md.version("openai-chatkit") == "1.6.5"
import fastapi, uvicorn, uvloop  # noqa: F401
EOF
}
if [[ -n $wants_python ]]; then
    if [[ ! -x $py ]]; then
        lt_say "creating the virtualenv $REF_VENV"
        "$PYTHON" -m venv "$REF_VENV" >&2
    fi
    if ! venv_ready; then
        lt_say "installing openai-chatkit==1.6.5 fastapi uvicorn uvloop into $REF_VENV"
        "$py" -m pip install --quiet --disable-pip-version-check "openai-chatkit==1.6.5" fastapi uvicorn uvloop >&2
        venv_ready || lt_die "$REF_VENV still lacks openai-chatkit 1.6.5, fastapi, uvicorn or uvloop"
    fi
fi

# --- the Node peer's packages -------------------------------------------------------------
# Ready when the pinned SDK is installed and better-sqlite3's native binding loads in this Node.
node_ready() {
    (cd "$node_dir" && "$NODE" -e '
        const sdk = require("./node_modules/chatkit-node-backend-sdk/package.json");
        if (sdk.version !== "1.1.2") process.exit(1);
        new (require("better-sqlite3"))(":memory:").close();' 2>/dev/null)
}
if [[ -n $wants_node ]]; then
    command -v "$NODE" >/dev/null || lt_die "the node mode needs Node.js 20 or later ($NODE), which is not found"
    if ! node_ready; then
        lt_say "installing the Node peer's packages into $node_dir/node_modules (npm ci)"
        (cd "$node_dir" && "$NPM" ci --no-audit --no-fund >&2)
        node_ready || lt_die "$node_dir/node_modules lacks chatkit-node-backend-sdk 1.1.2 or a working better-sqlite3"
    fi
fi

# --- the load tester, and the gateway ------------------------------------------------------
if [[ -n $wants_gateway ]]; then lt_build release; else lt_build release loadtest; fi

lt_machine
if [[ -n $wants_gateway ]]; then
    echo "Gateway: chatkit-gateway $(sed -n 's/^version = "\(.*\)"/\1/p;T;q' Cargo.toml)" \
        "($(git rev-parse --short HEAD 2>/dev/null || echo "no git")), release build, SQLite, the echo responder"
fi
if [[ -n $wants_python ]]; then
    echo "Python: $("$py" -c 'import importlib.metadata as m, platform
print(f"Python {platform.python_version()}, " + ", ".join(f"{p} {m.version(p)}" for p in ("openai-chatkit", "pydantic", "fastapi", "starlette", "uvicorn", "uvloop")))');" \
        "one worker process, h11, access log off"
fi
if [[ -n $wants_node ]]; then
    # shellcheck disable=SC2016 # The backquotes are JavaScript's.
    echo "Node: $(cd "$node_dir" && "$NODE" -e '
        const v = (p) => `${p} ${require(`./node_modules/${p}/package.json`).version}`;
        const names = ["chatkit-node-backend-sdk", "express", "better-sqlite3"];
        console.log([`Node.js ${process.versions.node}`, ...names.map(v)].join(", "))');" \
        "one process, the SDK's info logging off"
fi
echo "Load: $CONCURRENCY clients per scenario, $DURATION measured after $WARMUP warm-up;" \
    "each server and the load tester share this machine."
echo "Uptime before: $(uptime)"

# Any HTTP status line in answer to POST /chatkit means a peer is serving; the empty request is refused (401, no
# user), which is enough.
# shellcheck disable=SC2317,SC2329 # lt_await calls it.
server_answers() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'POST /chatkit HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}' \
        "$1" >&3
    IFS= read -r -t 2 status_line <&3 || exit 1
    [[ $status_line == HTTP/1.* ]]
)

# start_peer MODE PORT LOG: starts the Python or Node server for MODE on PORT with a fresh database, its output into
# LOG, and waits until it answers.
start_peer() {
    local mode=$1 port=$2 log=$3 command=() pid
    case $mode in
        # LOG_LEVEL is dropped because the Python SDK turns on its per-request logging when it is set.
        shipped) command=(env -u LOG_LEVEL "$py" "$server_py" --workers 1) ;;
        tuned) command=(env -u LOG_LEVEL "$py" "$server_py" --workers 1 --tuned) ;;
        node) command=(env NODE_ENV=production "$NODE" "$node_dir/echo_server.mjs") ;;
    esac
    "${command[@]}" --port "$port" --db "$lt_tmp/$mode.db" >"$log" 2>&1 &
    pid=$!
    lt_server_pids+=("$pid")
    lt_cpu_pids+=("$pid")
    lt_await "the $mode server" "$pid" "$log" $((SECONDS + READY_TIMEOUT + 1)) server_answers "$port"
    lt_say "$mode server (pid $pid) is serving on 127.0.0.1:$port"
}

# --- one server at a time -------------------------------------------------------------------
# Each mode starts its own server, runs the scenarios against it and stops it again, as the cleanup on exit, failure
# and Ctrl-C does (uvicorn finishes open streams on SIGTERM; one that hangs for ten seconds is killed).
lt_init
failed=0
for mode in $MODES; do
    if [[ $mode == gateway ]]; then
        lt_start_replicas 1 "sqlite://$lt_tmp/gateway.db"
        port=${lt_ports[0]}
        log=$lt_tmp/replica-1.log
    else
        lt_free_port port
        log=$lt_tmp/$mode.log
        start_peer "$mode" "$port" "$log"
    fi

    mode_failed=0
    lt_request_scenarios "http://127.0.0.1:$port" "$mode" || mode_failed=1
    ((lt_errors == 0)) || mode_failed=1
    lt_teardown
    if ((mode_failed)); then
        failed=1
        lt_say "the $mode run had failures; the end of its server log:"
        tail -n 50 "$log" >&2
    fi
done

echo "Uptime after: $(uptime)"
echo
echo "gateway: chatkit-gateway; shipped: openai-chatkit 1.6.5 as published; tuned: the same with uvloop and its"
echo "request validator built once; node: chatkit-node-backend-sdk 1.1.2 on express and better-sqlite3."
lt_request_table server

# report_field KEY MODE SCENARIO: a field of one run's report, nothing when it has no report or the field is null.
report_field() {
    local file=$lt_tmp/$2-$3.json value
    [[ -s $file ]] || return 0
    value=$(lt_field "$1" "$(<"$file")")
    [[ $value == null ]] || echo "$value"
}

# ratio_table TITLE KEY NUMERATOR: a table of one ratio per other server and scenario, of the report field KEY:
# the gateway's over the other server's when NUMERATOR is `gateway`, the other server's over the gateway's otherwise.
ratio_table() {
    local title=$1 key=$2 numerator=$3 header="| server |" rule="|---|" rows=() mode scenario row ours theirs
    for scenario in $SCENARIOS; do
        header+=" $scenario |"
        rule+="---:|"
    done
    for mode in $MODES; do
        [[ $mode != gateway ]] || continue
        row="| $mode |"
        for scenario in $SCENARIOS; do
            ours=$(report_field "$key" gateway "$scenario")
            theirs=$(report_field "$key" "$mode" "$scenario")
            if [[ $numerator != gateway ]]; then read -r ours theirs <<<"$theirs $ours"; fi
            if [[ -n $ours && -n $theirs ]] && awk -v t="$theirs" 'BEGIN { exit !(t > 0) }'; then
                row+=" $(awk -v o="$ours" -v t="$theirs" 'BEGIN { printf "%.1f×", o / t }') |"
            else
                row+=" n/a |"
            fi
        done
        rows+=("$row")
    done
    ((${#rows[@]} > 0)) || return 0
    echo
    echo "$title"
    echo
    echo "$header"
    echo "$rule"
    printf '%s\n' "${rows[@]}"
}

# The gateway's request rate over each other server's (the figure the issue's aims are stated in), and each other
# server's CPU per request over the gateway's (which depends less on what else the machine is doing).
if [[ -n $wants_gateway ]]; then
    ratio_table "The gateway's requests per second divided by each other server's:" rps gateway
    ratio_table "Each other server's CPU per request divided by the gateway's:" server_cpu_us_per_op other
fi

exit "$failed"
