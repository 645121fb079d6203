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
# Details of each run go to stderr; the machine lines and the table go to stdout. The exit
# status is 1 when a scenario failed or counted any error.
set -euo pipefail
export LC_ALL=C

REF_VENV=${REF_VENV:-/tmp/chatkit-ref-venv}
PYTHON=${PYTHON:-python3}
MODES=${MODES:-shipped tuned}
SCENARIOS=${SCENARIOS:-turn list create}
CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TIMEOUT=${TIMEOUT:-10s}
READY_TIMEOUT=${READY_TIMEOUT:-60}
USER_HEADER=x-user-id # echo_server.py reads the user from this header

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
loadtest=$target_dir/release/chatkit-loadtest
server_py=$here/echo_server.py

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
    echo "run.sh: creating the virtualenv $REF_VENV" >&2
    "$PYTHON" -m venv "$REF_VENV" >&2
fi
if ! venv_ready; then
    echo "run.sh: installing openai-chatkit==1.6.5 fastapi uvicorn uvloop into $REF_VENV" >&2
    "$py" -m pip install --quiet --disable-pip-version-check "openai-chatkit==1.6.5" fastapi uvicorn uvloop >&2
    venv_ready || { echo "run.sh: $REF_VENV still lacks openai-chatkit 1.6.5, fastapi, uvicorn or uvloop" >&2; exit 1; }
fi

# --- the load tester ----------------------------------------------------------------------
cargo build --release -p chatkit-loadtest >&2

# sed stops at the first match itself: a `| head` would end it with SIGPIPE, which pipefail reports.
cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo 2>/dev/null || true)
versions=$("$py" -c 'import importlib.metadata as m, platform
print(f"Python {platform.python_version()}, " + ", ".join(f"{p} {m.version(p)}" for p in ("openai-chatkit", "pydantic", "fastapi", "starlette", "uvicorn", "uvloop")))')
echo "Machine: $(nproc) CPUs, ${cpu_model:-unknown CPU model} ($(uname -sm))"
echo "Reference: $versions; one worker process, h11, access log off"
echo "Load: $CONCURRENCY clients per scenario, $DURATION measured after $WARMUP warm-up;" \
    "the server and the load tester share this machine."
echo "Uptime before: $(uptime)"

# --- one server at a time, cleaned up on any exit -------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/chatkit-ref-bench.XXXXXX")
server_pid=
loadtest_pid=
stop_server() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        # uvicorn finishes open streams on SIGTERM; one that hangs for ten seconds is killed.
        for _ in $(seq 1 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    if [[ -n $server_pid ]]; then
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=
}
cleanup() {
    if [[ -n $loadtest_pid ]]; then
        kill "$loadtest_pid" 2>/dev/null || true
        wait "$loadtest_pid" 2>/dev/null || true
    fi
    stop_server
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port is taken when something accepts a connection on it; a random high port that
# refuses one is free (a race with another program remains possible but unlikely).
port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local candidate
    for _ in $(seq 1 100); do
        candidate=$((20000 + RANDOM % 40000))
        if port_is_free "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Any HTTP status line in answer to POST /chatkit means the server is serving; the empty
# request is refused (401, no user), which is enough.
server_answers() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'POST /chatkit HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}' \
        "$1" >&3
    IFS= read -r -t 2 status_line <&3 || exit 1
    [[ $status_line == HTTP/1.* ]]
)

# Picks a number out of the load tester's JSON line, whose keys are flat and unique.
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }
ms() {
    local value
    value=$(field "$1" "$2")
    if [[ -z $value || $value == null ]]; then echo "n/a"; else printf '%.2f' "$value"; fi
}

rows=()
failed=0
for mode in $MODES; do
    case $mode in
        shipped) mode_flags=() ;;
        tuned) mode_flags=(--tuned) ;;
        *)
            echo "run.sh: unknown mode \`$mode\`; use shipped or tuned" >&2
            exit 2
            ;;
    esac
    port=$(free_port) || { echo "run.sh: found no free loopback port" >&2; exit 1; }
    db=$tmp/$mode.db
    log=$tmp/$mode.log
    # LOG_LEVEL is dropped because the SDK turns on its per-request logging when it is set.
    env -u LOG_LEVEL "$py" "$server_py" --port "$port" --db "$db" --workers 1 "${mode_flags[@]}" >"$log" 2>&1 &
    server_pid=$!

    # SECONDS counts whole seconds, so one more makes the wait at least READY_TIMEOUT.
    deadline=$((SECONDS + READY_TIMEOUT + 1))
    until server_answers "$port" 2>/dev/null; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "run.sh: the $mode server exited before answering; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "run.sh: the $mode server did not answer POST /chatkit within ${READY_TIMEOUT}s; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "run.sh: $mode reference server (pid $server_pid) is serving on 127.0.0.1:$port" >&2

    mode_failed=0
    for scenario in $SCENARIOS; do
        echo >&2
        echo "run.sh: $mode / $scenario" >&2
        # In the background so that a signal to this script is handled at once (bash runs
        # traps only between commands, but `wait` is interrupted).
        "$loadtest" --url "http://127.0.0.1:$port" --scenario "$scenario" --concurrency "$CONCURRENCY" \
            --duration "$DURATION" --warmup "$WARMUP" --timeout "$TIMEOUT" --user-header "$USER_HEADER" --json \
            >"$tmp/$mode-$scenario.json" &
        loadtest_pid=$!
        wait "$loadtest_pid" || mode_failed=1
        loadtest_pid=
        line=$(<"$tmp/$mode-$scenario.json")
        if [[ -z $line ]]; then
            mode_failed=1
            rows+=("| $mode | $scenario | failed | | | | | |")
            continue
        fi
        errors=$(field errors_total "$line")
        [[ $errors == 0 ]] || mode_failed=1
        rps=$(printf '%.0f' "$(field rps "$line")")
        rows+=("| $mode | $scenario | $rps | $(ms latency_p50_ms "$line") | $(ms latency_p90_ms "$line") | $(ms latency_p99_ms "$line") | $(ms latency_max_ms "$line") | $errors |")
    done

    stop_server
    if ((mode_failed)); then
        failed=1
        echo "run.sh: the $mode run had failures; the end of its server log:" >&2
        tail -n 50 "$log" >&2
    fi
done

echo "Uptime after: $(uptime)"
echo
echo "Latencies in milliseconds, from sending the request to the end of the response."
echo
echo "| mode | scenario | req/s | p50 | p90 | p99 | max | errors |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"

exit "$failed"
