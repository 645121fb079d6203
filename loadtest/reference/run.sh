#!/usr/bin/env bash
# Benchmarks the reference ChatKit Python server (PyPI openai-chatkit==1.6.5, echo_server.py
# next to this script) under our own load tester, so the README can set its numbers beside
# the gateway's. Two modes are measured one after the other:
#   shipped  the SDK as published, on uvicorn's asyncio loop
#   tuned    uvloop, and the SDK's per-request TypeAdapter(ChatKitReq) built once
# For each mode the server starts on a free loopback port with a fresh SQLite database, the
# scenarios run in turn, and the server is stopped. A Markdown table goes to stdout.
#
# Settings come from the environment:
#   REF_VENV       virtualenv for the reference server (/tmp/chatkit-ref-venv); created and
#                  filled with openai-chatkit==1.6.5 fastapi uvicorn uvloop when missing
#   PYTHON         interpreter that creates the venv (python3)
#   MODES          which modes, in order ("shipped tuned")
#   SCENARIOS      which scenarios, in order ("turn list create")
#   CONCURRENCY    virtual clients per scenario (32)
#   DURATION       measured time per scenario (10s)
#   WARMUP         unmeasured load before each measurement (2s)
#   TIMEOUT        limit on one request (10s)
#   READY_TIMEOUT  seconds to wait for the server to answer (60; importing the SDK is slow)
#   CARGO_TARGET_DIR is respected when set.
#
# It shares ../lib.sh with the gateway's load-test scripts: building, free ports, waiting for the server, running the
# load tester and tabling its reports, and the cleanup on exit, failure and Ctrl-C.
#
# Details of each run go to stderr; the machine lines and the table go to stdout. The exit
# status is 1 when a scenario failed or counted any error.
set -euo pipefail
LT_NAME=run.sh
READY_TIMEOUT=${READY_TIMEOUT:-60}
USER_HEADER=x-user-id # echo_server.py reads the user from this header
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

REF_VENV=${REF_VENV:-/tmp/chatkit-ref-venv}
PYTHON=${PYTHON:-python3}
MODES=${MODES:-shipped tuned}
SCENARIOS=${SCENARIOS:-turn list create}
CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TIMEOUT=${TIMEOUT:-10s}

cd "$lt_root"
server_py=$lt_root/loadtest/reference/echo_server.py

# --- the reference server's virtualenv --------------------------------------------------
py=$REF_VENV/bin/python
venv_ready() {
    "$py" - <<'EOF' 2>/dev/null
import importlib.metadata as md
assert md.version("openai-chatkit") == "1.6.5"
import fastapi, uvicorn, uvloop  # noqa: F401
EOF
}
if [[ ! -x $py ]]; then
    lt_say "creating the virtualenv $REF_VENV"
    "$PYTHON" -m venv "$REF_VENV" >&2
fi
if ! venv_ready; then
    lt_say "installing openai-chatkit==1.6.5 fastapi uvicorn uvloop into $REF_VENV"
    "$py" -m pip install --quiet --disable-pip-version-check "openai-chatkit==1.6.5" fastapi uvicorn uvloop >&2
    venv_ready || lt_die "$REF_VENV still lacks openai-chatkit 1.6.5, fastapi, uvicorn or uvloop"
fi

# --- the load tester ----------------------------------------------------------------------
lt_build release loadtest

versions=$("$py" -c 'import importlib.metadata as m, platform
print(f"Python {platform.python_version()}, " + ", ".join(f"{p} {m.version(p)}" for p in ("openai-chatkit", "pydantic", "fastapi", "starlette", "uvicorn", "uvloop")))')
lt_machine
echo "Reference: $versions; one worker process, h11, access log off"
echo "Load: $CONCURRENCY clients per scenario, $DURATION measured after $WARMUP warm-up;" \
    "the server and the load tester share this machine."
echo "Uptime before: $(uptime)"

# Any HTTP status line in answer to POST /chatkit means the server is serving; the empty
# request is refused (401, no user), which is enough.
# shellcheck disable=SC2317 # lt_await calls it.
server_answers() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'POST /chatkit HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}' \
        "$1" >&3
    IFS= read -r -t 2 status_line <&3 || exit 1
    [[ $status_line == HTTP/1.* ]]
)

# --- one server at a time -------------------------------------------------------------------
# Each mode starts its own server, runs the scenarios against it and stops it again, as the cleanup on exit, failure
# and Ctrl-C does (uvicorn finishes open streams on SIGTERM; one that hangs for ten seconds is killed).
lt_init
failed=0
for mode in $MODES; do
    case $mode in
        shipped) mode_flags=() ;;
        tuned) mode_flags=(--tuned) ;;
        *)
            lt_say "unknown mode \`$mode\`; use shipped or tuned"
            exit 2
            ;;
    esac
    lt_free_port port
    log=$lt_tmp/$mode.log
    # LOG_LEVEL is dropped because the SDK turns on its per-request logging when it is set.
    env -u LOG_LEVEL "$py" "$server_py" --port "$port" --db "$lt_tmp/$mode.db" --workers 1 "${mode_flags[@]}" \
        >"$log" 2>&1 &
    server_pid=$!
    lt_server_pids+=("$server_pid")
    lt_cpu_pids+=("$server_pid")
    lt_await "the $mode server" "$server_pid" "$log" $((SECONDS + READY_TIMEOUT + 1)) server_answers "$port"
    lt_say "$mode reference server (pid $server_pid) is serving on 127.0.0.1:$port"

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
lt_request_table mode

exit "$failed"
