#!/usr/bin/env bash
# Measures fan-out across replicas on this machine: builds the gateway and the load tester in
# release mode, starts a private Redis on a free loopback port, creates a fresh PostgreSQL
# database, starts REPLICAS gateways on free loopback ports sharing both, waits until every one
# answers /readyz with 200, then runs the load tester's fanout scenario: VIEWERS viewer streams
# over THREADS threads (spread over the replicas), RATE thread updates a second for DURATION,
# each timed from its send to its receipt by every viewer. Everything it started is stopped
# (SIGTERM, then SIGKILL after 10 s) and the database dropped on exit, failure and Ctrl-C included.
#
# Settings come from the environment:
#   THREADS           threads watched and updated (1000)
#   VIEWERS           viewer streams (10000)
#   RATE              updates per second (200)
#   DURATION          length of the update phase (15s)
#   DRAIN             wait after the last update's answer before counting (2s)
#   REPLICAS          gateway replicas (3)
#   OPEN_CONCURRENCY  viewer streams being opened at once (256)
#   TIMEOUT           limit on one request or one stream opening (10s)
#   SETUP_TIMEOUT     limit on creating the threads and opening every viewer (120s)
#   WORKERS           HTTP worker threads per replica (the gateway's default: one per CPU)
#   LOADTEST_WORKERS  runtime threads of the load tester (one per CPU)
#   PG_URL            PostgreSQL server to create the database on (postgres://postgres@127.0.0.1:5432)
#   REDIS_SERVER      redis-server binary (/usr/bin/redis-server, else the one on PATH)
#   READY_TIMEOUT     seconds to wait for Redis and each replica (30)
#   REPORT            where the JSON report is kept ($CARGO_TARGET_DIR/fanout-report.json)
#   CARGO_TARGET_DIR is respected when set.
#
# Progress and details go to stderr; the machine line and the summary to stdout. The exit status
# is 1 when the run failed, lost a delivery or counted any error.
set -euo pipefail
export LC_ALL=C

THREADS=${THREADS:-1000}
VIEWERS=${VIEWERS:-10000}
RATE=${RATE:-200}
DURATION=${DURATION:-15s}
DRAIN=${DRAIN:-2s}
REPLICAS=${REPLICAS:-3}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-256}
TIMEOUT=${TIMEOUT:-10s}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-120s}
WORKERS=${WORKERS:-}
LOADTEST_WORKERS=${LOADTEST_WORKERS:-}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
READY_TIMEOUT=${READY_TIMEOUT:-30}
if [[ -z ${REDIS_SERVER:-} ]]; then
    if [[ -x /usr/bin/redis-server ]]; then REDIS_SERVER=/usr/bin/redis-server; else REDIS_SERVER=redis-server; fi
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
gateway=$target_dir/release/chatkit-gateway
loadtest=$target_dir/release/chatkit-loadtest
REPORT=${REPORT:-$target_dir/fanout-report.json}

for tool in "$REDIS_SERVER" psql; do
    if ! command -v "$tool" >/dev/null; then
        echo "fanout.sh: $tool is needed and not found" >&2
        exit 1
    fi
done
if ! [[ $REPLICAS =~ ^[1-9][0-9]?$ && $VIEWERS =~ ^[1-9][0-9]*$ ]]; then
    echo "fanout.sh: REPLICAS must be 1 to 99 and VIEWERS a positive number" >&2
    exit 1
fi
# The load tester holds one socket per viewer; each replica holds its share of them, plus its
# database pool and Redis connections. The limit is raised in this shell, so every process
# started from it inherits it.
fds_needed=$((VIEWERS + 4096))
if (($(ulimit -Sn) < fds_needed)); then
    if ! ulimit -Sn "$fds_needed" 2>/dev/null; then
        # Raising the hard limit needs CAP_SYS_RESOURCE, which containers often lack.
        if ! { ulimit -Hn "$fds_needed" && ulimit -Sn "$fds_needed"; } 2>/dev/null; then
            echo "fanout.sh: $VIEWERS viewers need about $fds_needed open files per process, but the limit is" \
                "$(ulimit -n) (hard $(ulimit -Hn)) and cannot be raised from here" >&2
            exit 1
        fi
    fi
fi

# sed stops at the first match itself: a `| head` would end it with SIGPIPE, which pipefail reports.
cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo 2>/dev/null || true)
echo "Machine: $(nproc) CPUs, ${cpu_model:-unknown CPU model} ($(uname -sm)); open files $(ulimit -n)"
echo "Load: $VIEWERS viewers on $THREADS threads over $REPLICAS replicas, $RATE updates/s for $DURATION;" \
    "Redis, PostgreSQL, the replicas and the load tester share this machine."

cargo build --release -p chatkit-gateway -p chatkit-loadtest >&2

tmp=$(mktemp -d "${TMPDIR:-/tmp}/chatkit-fanout.XXXXXX")
database=chatkit_fanout_$(date +%s)_$$
database_made=
redis_pid=
replica_pids=()
loadtest_pid=

# Stops one process: SIGTERM, then SIGKILL when it is still there after ten seconds.
stop() {
    local pid=$1
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    # Traps stay quiet from here: a second Ctrl-C must not leave the database behind.
    trap '' INT TERM
    stop "$loadtest_pid"
    local pid
    # The replicas stop together, so their grace periods overlap instead of adding up.
    for pid in "${replica_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${replica_pids[@]}"; do stop "$pid"; done
    stop "$redis_pid"
    if [[ -n $database_made ]]; then
        psql "$PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 ||
            echo "fanout.sh: could not drop the database $database; drop it by hand" >&2
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port is taken when something accepts a connection on it; a random high port that refuses
# one, and that this script has not handed out yet, is free (a race with another program
# remains possible but unlikely).
taken_ports=" "
free_port() {
    local candidate
    for _ in $(seq 1 200); do
        candidate=$((20000 + RANDOM % 12000))
        if [[ $taken_ports != *" $candidate "* ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
            taken_ports+="$candidate "
            echo "$candidate"
            return 0
        fi
    done
    echo "fanout.sh: found no free loopback port" >&2
    return 1
}
# The ports stay below 32000, out of the kernel's usual ephemeral range (32768-60999), so
# the load tester's 10,000 outgoing connections cannot take one first.

# --- Redis ------------------------------------------------------------------------------------
redis_port=$(free_port)
"$REDIS_SERVER" --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$tmp" \
    --maxclients 1000 >"$tmp/redis.log" 2>&1 &
redis_pid=$!
redis_answers() (
    exec 3<>"/dev/tcp/127.0.0.1/$redis_port" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    [[ $reply == +PONG* ]]
)
deadline=$((SECONDS + READY_TIMEOUT + 1))
until redis_answers 2>/dev/null; do
    if ! kill -0 "$redis_pid" 2>/dev/null || ((SECONDS >= deadline)); then
        echo "fanout.sh: Redis did not start on 127.0.0.1:$redis_port; its log:" >&2
        cat "$tmp/redis.log" >&2
        exit 1
    fi
    sleep 0.1
done
echo "fanout.sh: Redis (pid $redis_pid) on 127.0.0.1:$redis_port" >&2

# --- PostgreSQL -------------------------------------------------------------------------------
if ! psql "$PG_URL/postgres" -qAtc "CREATE DATABASE \"$database\"" >&2; then
    echo "fanout.sh: could not create a database on $PG_URL" >&2
    exit 1
fi
database_made=1
echo "fanout.sh: database $database created" >&2

# --- the replicas -----------------------------------------------------------------------------
ports=()
for i in $(seq 1 "$REPLICAS"); do
    port=$(free_port)
    ports+=("$port")
    mkdir -p "$tmp/data-$i"
    env REDIS_URL="redis://127.0.0.1:$redis_port" DATABASE_URL="$PG_URL/$database" \
        CHATKIT_BIND="127.0.0.1:$port" CHATKIT_DATA_DIR="$tmp/data-$i" CHATKIT_LOG=warn \
        CHATKIT_SHUTDOWN_GRACE_SECS=5 ${WORKERS:+CHATKIT_WORKERS="$WORKERS"} \
        "$gateway" >"$tmp/replica-$i.log" 2>&1 &
    replica_pids+=($!)
done

# GET /readyz answers 200 once the store answers and the replica's Redis subscriber is connected.
ready() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    IFS= read -r -t 2 status_line <&3 || exit 1
    [[ $status_line == "HTTP/1.1 200"* ]]
)
deadline=$((SECONDS + READY_TIMEOUT + 1))
for i in $(seq 1 "$REPLICAS"); do
    port=${ports[i - 1]}
    pid=${replica_pids[i - 1]}
    until ready "$port" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "fanout.sh: replica $i did not become ready on 127.0.0.1:$port within ${READY_TIMEOUT}s; its log:" >&2
            cat "$tmp/replica-$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "fanout.sh: replica $i (pid $pid) ready on 127.0.0.1:$port" >&2
done

# --- the load ---------------------------------------------------------------------------------
urls=$(printf 'http://127.0.0.1:%s,' "${ports[@]}")
urls=${urls%,}
mkdir -p "$(dirname "$REPORT")"
# The load tester runs in the background so that a signal to this script is handled at once
# (bash runs traps only between commands, but `wait` is interrupted). Its progress and its
# table go straight to stderr; only the JSON line is captured.
"$loadtest" --scenario fanout --url "$urls" --threads "$THREADS" --viewers "$VIEWERS" --rate "$RATE" \
    --duration "$DURATION" --drain "$DRAIN" --open-concurrency "$OPEN_CONCURRENCY" --timeout "$TIMEOUT" \
    --setup-timeout "$SETUP_TIMEOUT" ${LOADTEST_WORKERS:+--workers "$LOADTEST_WORKERS"} --json \
    >"$tmp/report.json" &
loadtest_pid=$!
status=0
wait "$loadtest_pid" || status=$?
loadtest_pid=

for i in $(seq 1 "$REPLICAS"); do
    pid=${replica_pids[i - 1]}
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "fanout.sh: replica $i exited during the run" >&2
        status=1
    else
        peak=$(sed -n 's/^VmHWM:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null || true)
        echo "fanout.sh: replica $i peak resident memory ${peak:-unknown}" >&2
    fi
    if [[ -s $tmp/replica-$i.log ]]; then
        echo "fanout.sh: replica $i logged $(wc -l <"$tmp/replica-$i.log") lines; the last ones:" >&2
        tail -n 5 "$tmp/replica-$i.log" >&2
    fi
done

line=$(<"$tmp/report.json")
if [[ -z $line ]]; then
    echo "fanout.sh: the load tester produced no report (exit status $status)" >&2
    exit 1
fi
printf '%s\n' "$line" >"$REPORT"

# Picks a number out of the JSON line, whose top-level keys are flat and unique.
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$line"; }
echo
echo "Summary ($VIEWERS viewers, $THREADS threads, $REPLICAS replicas, $RATE updates/s for $DURATION, drain $DRAIN):"
echo "  updates    $(field updates_sent) sent at $(field update_rate)/s, $(field updates_ok) ok, $(field updates_failed) failed"
echo "  deliveries $(field expected) expected, $(field received) received, $(field lost) lost, $(field resyncs) resyncs"
echo "  fan-out ms p50 $(field fanout_p50_ms), p90 $(field fanout_p90_ms), p99 $(field fanout_p99_ms), max $(field fanout_max_ms)"
echo "  errors     $(field errors_total)"
echo "  report     $REPORT"

if ((status != 0)) || [[ $(field lost) != 0 || $(field errors_total) != 0 ]]; then
    exit 1
fi
