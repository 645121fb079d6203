#!/usr/bin/env bash
# Benchmarks chatkit-gateway on this machine for the README: builds the gateway and the load
# tester in release mode, starts the gateway on a free loopback port with a fresh SQLite
# database, runs the load scenarios one after another and prints a Markdown table.
#
# Settings come from the environment:
#   CONCURRENCY    virtual clients per scenario (32)
#   DURATION       measured time per scenario (10s)
#   WARMUP         unmeasured load before each measurement (2s)
#   TIMEOUT        limit on one request (10s)
#   SCENARIOS      which scenarios, in order ("turn list create")
#   USER_HEADER    header that names the user, given to both programs (x-user-id)
#   READY_TIMEOUT  seconds to wait for the gateway to answer (30)
#   CARGO_TARGET_DIR is respected when set.
#
# Details of each run go to stderr; the machine line and the table go to stdout.
set -euo pipefail
export LC_ALL=C

CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TIMEOUT=${TIMEOUT:-10s}
SCENARIOS=${SCENARIOS:-turn list create}
USER_HEADER=${USER_HEADER:-x-user-id}
READY_TIMEOUT=${READY_TIMEOUT:-30}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
gateway=$target_dir/release/chatkit-gateway
loadtest=$target_dir/release/chatkit-loadtest

# sed stops at the first match itself: a `| head` would end it with SIGPIPE, which pipefail reports.
cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo 2>/dev/null || true)
echo "Machine: $(nproc) CPUs, ${cpu_model:-unknown CPU model} ($(uname -sm))"
echo "Load: $CONCURRENCY clients per scenario, $DURATION measured after $WARMUP warm-up;" \
    "the gateway and the load tester share this machine."

cargo build --release -p chatkit-gateway -p chatkit-loadtest >&2

tmp=$(mktemp -d "${TMPDIR:-/tmp}/chatkit-bench.XXXXXX")
gateway_pid=
loadtest_pid=
cleanup() {
    if [[ -n $loadtest_pid ]]; then
        kill "$loadtest_pid" 2>/dev/null || true
        wait "$loadtest_pid" 2>/dev/null || true
    fi
    if [[ -n $gateway_pid ]] && kill -0 "$gateway_pid" 2>/dev/null; then
        kill "$gateway_pid" 2>/dev/null || true
        # A gateway that ignores SIGTERM for ten seconds is killed so the temp dir can go.
        for _ in $(seq 1 100); do
            kill -0 "$gateway_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$gateway_pid" 2>/dev/null || true
        wait "$gateway_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port is taken when something accepts a connection on it; a random high port that
# refuses one is free (a race with another program remains possible but unlikely).
port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port=
for _ in $(seq 1 100); do
    candidate=$((20000 + RANDOM % 40000))
    if port_is_free "$candidate"; then
        port=$candidate
        break
    fi
done
if [[ -z $port ]]; then
    echo "run.sh: found no free loopback port" >&2
    exit 1
fi

mkdir -p "$tmp/data"
DATABASE_URL="sqlite://$tmp/bench.db" CHATKIT_BIND="127.0.0.1:$port" CHATKIT_DATA_DIR="$tmp/data" \
    CHATKIT_USER_HEADER="$USER_HEADER" "$gateway" >"$tmp/gateway.log" 2>&1 &
gateway_pid=$!

# Any HTTP status line in answer to POST /chatkit means the gateway is serving; an empty
# body is enough, since even a 400 proves the endpoint is up.
gateway_answers() (
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    printf 'POST /chatkit HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}' \
        "$port" >&3
    IFS= read -r -t 2 status_line <&3 || exit 1
    [[ $status_line == HTTP/1.* ]]
)
# SECONDS counts whole seconds, so one more makes the wait at least READY_TIMEOUT.
deadline=$((SECONDS + READY_TIMEOUT + 1))
until gateway_answers 2>/dev/null; do
    if ! kill -0 "$gateway_pid" 2>/dev/null; then
        echo "run.sh: the gateway exited before answering; its log:" >&2
        cat "$tmp/gateway.log" >&2
        exit 1
    fi
    if ((SECONDS >= deadline)); then
        echo "run.sh: the gateway did not answer POST /chatkit within ${READY_TIMEOUT}s; its log:" >&2
        cat "$tmp/gateway.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "run.sh: gateway (pid $gateway_pid) is serving on 127.0.0.1:$port" >&2

# Picks a number out of the load tester's JSON line, whose keys are flat and unique.
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }
ms() {
    local value
    value=$(field "$1" "$2")
    if [[ -z $value || $value == null ]]; then echo "n/a"; else printf '%.2f' "$value"; fi
}

rows=()
failed=0
for scenario in $SCENARIOS; do
    echo >&2
    # The load tester runs in the background so that a signal to this script is handled
    # at once (bash runs traps only between commands, but `wait` is interrupted).
    "$loadtest" --url "http://127.0.0.1:$port" --scenario "$scenario" --concurrency "$CONCURRENCY" \
        --duration "$DURATION" --warmup "$WARMUP" --timeout "$TIMEOUT" --user-header "$USER_HEADER" --json \
        >"$tmp/$scenario.json" &
    loadtest_pid=$!
    wait "$loadtest_pid" || failed=1
    loadtest_pid=
    line=$(<"$tmp/$scenario.json")
    if [[ -z $line ]]; then
        rows+=("| $scenario | failed | | | | | |")
        continue
    fi
    rps=$(printf '%.0f' "$(field rps "$line")")
    rows+=("| $scenario | $rps | $(ms latency_p50_ms "$line") | $(ms latency_p90_ms "$line") | $(ms latency_p99_ms "$line") | $(ms latency_max_ms "$line") | $(field errors_total "$line") |")
done

echo
echo "Latencies in milliseconds, from sending the request to the end of the response."
echo
echo "| scenario | req/s | p50 | p90 | p99 | max | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"

if ((failed)); then
    echo "run.sh: at least one scenario failed; the gateway log follows" >&2
    tail -n 50 "$tmp/gateway.log" >&2
    exit 1
fi
