# shellcheck shell=bash
# Shared pieces of the load-test scripts (run.sh, fanout.sh, scenarios.sh, chaos.sh, reference/run.sh): building the binaries,
# free loopback ports, a private Redis, a throwaway PostgreSQL database, gateway replicas or another server under test
# and their readiness, the open-files limit, running the load tester and reading its report, and the cleanup that stops
# everything started here and drops every database made here, on exit, failure and Ctrl-C alike. Everything listens on
# 127.0.0.1 only.
#
# Source it after `set -euo pipefail` with LT_NAME set to the script's name (for messages), then call lt_init.
# It reads these settings from the environment:
#   PG_URL         PostgreSQL server to create databases on (postgres://postgres@127.0.0.1:5432)
#   REDIS_SERVER   redis-server binary (/usr/bin/redis-server, else the one on PATH)
#   REDIS_CLI      redis-cli binary, which makes a Redis Cluster (redis-cli)
#   READY_TIMEOUT  seconds to wait for Redis and for each replica (30)
#   USER_HEADER    header that names the user, given to the gateway (x-user-id)
#   WORKERS        HTTP worker threads per replica (the gateway's default: one per CPU)
#   PREBUILT       a directory holding chatkit-gateway and chatkit-loadtest to run instead of building them
#   CARGO_TARGET_DIR is respected when set.

export LC_ALL=C
LT_NAME=${LT_NAME:-loadtest}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
READY_TIMEOUT=${READY_TIMEOUT:-30}
USER_HEADER=${USER_HEADER:-x-user-id}
WORKERS=${WORKERS:-}
if [[ -z ${REDIS_SERVER:-} ]]; then
    if [[ -x /usr/bin/redis-server ]]; then REDIS_SERVER=/usr/bin/redis-server; else REDIS_SERVER=redis-server; fi
fi

REDIS_CLI=${REDIS_CLI:-redis-cli}

lt_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lt_target_dir=${CARGO_TARGET_DIR:-$lt_root/target}

# What this script started or made, undone by lt_teardown.
lt_tmp=
lt_loadtest_pid=
# The servers under test: gateway replicas, or the reference server.
lt_server_pids=()
# The processes whose CPU time the request scenarios report per request (`--server-pid`): the gateway replicas
# lt_start_replicas started, or what a script sets (the reference server).
lt_cpu_pids=()
lt_redis_pid=
lt_redis_port=
# The nodes of a private Redis Cluster, by index: their pids and ports.
lt_cluster_pids=()
lt_cluster_ports=()
lt_databases=()
lt_ports=()
# Ports handed out so far, so that two replicas started back to back never get the same one.
lt_taken_ports=" "

lt_say() { echo "$LT_NAME: $*" >&2; }
lt_die() {
    lt_say "$@"
    exit 1
}

# lt_init: makes the run's temporary directory and sets the traps that clean up after it.
lt_init() {
    lt_tmp=$(mktemp -d "${TMPDIR:-/tmp}/chatkit-$LT_NAME.XXXXXX")
    trap lt_cleanup EXIT
    trap 'exit 130' INT TERM
}

# lt_machine: one line naming the machine the figures come from.
lt_machine() {
    # sed stops at the first match itself: a `| head` would end it with SIGPIPE, which pipefail reports.
    local cpu_model
    cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p;T;q' /proc/cpuinfo 2>/dev/null || true)
    echo "Machine: $(nproc) CPUs, ${cpu_model:-unknown CPU model} ($(uname -sm)); open files $(ulimit -n)"
}

# lt_build PROFILE [loadtest]: builds the gateway and the load tester (only the load tester with `loadtest`) and sets
# lt_gateway and lt_loadtest to their paths. PROFILE is `release`; `dev` for the debug build; or `test` for the debug
# build as `cargo test --workspace` makes it: cargo unifies the features of dependencies with those the
# dev-dependencies ask for only while it builds test targets, so a plain `cargo build` after `cargo test` would compile
# some dependencies again. With `test`, right after the test command's `cargo test` nothing but the load tester's own
# binary compiles; on its own it also builds every test target.
lt_build() {
    if [[ -n ${PREBUILT:-} ]]; then
        # Binaries built earlier (another commit's, for a before-and-after comparison): nothing is compiled.
        lt_gateway=$PREBUILT/chatkit-gateway
        lt_loadtest=$PREBUILT/chatkit-loadtest
        [[ -x $lt_gateway && -x $lt_loadtest ]] || lt_die "PREBUILT=$PREBUILT lacks chatkit-gateway or chatkit-loadtest"
        return 0
    fi
    local dir=debug packages=(-p chatkit-gateway -p chatkit-loadtest)
    if [[ ${2:-} == loadtest ]]; then packages=(-p chatkit-loadtest); fi
    case $1 in
        release)
            cargo build --release "${packages[@]}" >&2
            dir=release
            ;;
        dev) cargo build "${packages[@]}" >&2 ;;
        test) cargo build --workspace --bins --tests >&2 ;;
        *) lt_die "unknown build profile \`$1\`; use release, dev or test" ;;
    esac
    lt_gateway=$lt_target_dir/$dir/chatkit-gateway
    lt_loadtest=$lt_target_dir/$dir/chatkit-loadtest
}

# lt_raise_fd_limit NEEDED: raises this shell's open-files limit to NEEDED, so that every process started from it
# inherits it, or fails saying why.
lt_raise_fd_limit() {
    local needed=$1
    (($(ulimit -Sn) < needed)) || return 0
    ulimit -Sn "$needed" 2>/dev/null && return 0
    # Raising the hard limit needs CAP_SYS_RESOURCE, which containers often lack.
    { ulimit -Hn "$needed" && ulimit -Sn "$needed"; } 2>/dev/null && return 0
    lt_die "the load needs about $needed open files per process, but the limit is $(ulimit -n)" \
        "(hard $(ulimit -Hn)) and cannot be raised from here"
}

# lt_ci_args SCRIPT ARGS...: reads the arguments of a script that has a short CI mode: sets `ci` to 1 for `--ci` (or
# a LOADTEST_CI other than 0), to empty otherwise; prints SCRIPT's header comment for `--help` and exits; refuses any
# other argument (exit 2).
lt_ci_args() {
    local script=$1 arg
    shift
    ci=${LOADTEST_CI:-}
    for arg in "$@"; do
        case $arg in
            --ci) ci=1 ;;
            -h | --help)
                sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$script"
                exit 0
                ;;
            *)
                echo "$LT_NAME: unknown argument \`$arg\`; use --ci or --help" >&2
                exit 2
                ;;
        esac
    done
    if [[ -n $ci && $ci != 0 ]]; then ci=1; else ci=; fi
}

# lt_free_port VAR: sets VAR to a free loopback port. A port is taken when something accepts a connection on it; a
# random one that refuses, and that this script has not handed out yet, is free (a race with another program
# remains possible but unlikely). The ports stay below 32000, out of the kernel's usual ephemeral range
# (32768-60999), so that the load tester's many outgoing connections cannot take one first.
lt_free_port() {
    local candidate
    for _ in $(seq 1 200); do
        candidate=$((20000 + RANDOM % 12000))
        if [[ $lt_taken_ports != *" $candidate "* ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
            lt_taken_ports+="$candidate "
            printf -v "$1" '%s' "$candidate"
            return 0
        fi
    done
    lt_die "found no free loopback port"
}

# lt_stop PID: stops one process with SIGTERM, then SIGKILL when it is still there after ten seconds.
lt_stop() {
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

# lt_teardown: stops the load tester, the servers under test (together, so that their grace periods overlap) and
# Redis, and drops the databases; what it undid is forgotten, so the script can start again.
lt_teardown() {
    local pid database
    lt_stop "$lt_loadtest_pid"
    lt_loadtest_pid=
    # A paused replica (the chaos run stops them) is woken first, so that it can hear SIGTERM.
    for pid in "${lt_server_pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
    for pid in "${lt_server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${lt_server_pids[@]}"; do lt_stop "$pid"; done
    lt_server_pids=()
    lt_cpu_pids=()
    lt_stop "$lt_redis_pid"
    lt_redis_pid=
    if [[ -n $lt_sink_pid ]]; then
        lt_stop "$lt_sink_pid"
        lt_say "$(cat "$lt_tmp/sink.log")"
    fi
    lt_sink_pid=
    for pid in "${lt_cluster_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${lt_cluster_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    lt_cluster_pids=()
    lt_cluster_ports=()
    for database in "${lt_databases[@]}"; do
        psql "$PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null 2>&1 ||
            lt_say "could not drop the database $database; drop it by hand"
    done
    lt_databases=()
}

lt_cleanup() {
    # Traps stay quiet from here: a second Ctrl-C must not leave a database or a process behind.
    trap '' INT TERM
    lt_teardown
    if [[ -n $lt_tmp ]]; then rm -rf "$lt_tmp"; fi
}

# lt_start_trace_sink: starts loadtest/otlp_sink.py, an OTLP/HTTP receiver that keeps nothing, on a free port, and
# points the replicas started next at it (lt_gateway_env), so that they trace every request and export it.
lt_sink_pid=
lt_start_trace_sink() {
    local port
    lt_free_port port
    python3 "$lt_root/loadtest/otlp_sink.py" "$port" >"$lt_tmp/sink.log" 2>&1 &
    lt_sink_pid=$!
    lt_await "the trace sink on 127.0.0.1:$port" "$lt_sink_pid" "$lt_tmp/sink.log" $((SECONDS + READY_TIMEOUT + 1)) \
        lt_port_open "$port"
    lt_gateway_env+=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$port")
    lt_say "trace sink (pid $lt_sink_pid) on 127.0.0.1:$port"
}

# lt_port_open PORT: whether something accepts connections on loopback PORT.
lt_port_open() (
    exec 3<>"/dev/tcp/127.0.0.1/$1"
)

# lt_start_redis [PORT]: starts a private Redis without persistence on a free port, or on PORT (to restart it where
# the replicas look for it), sets lt_redis_port and waits until it answers.
lt_start_redis() {
    command -v "$REDIS_SERVER" >/dev/null || lt_die "$REDIS_SERVER is needed and not found"
    if [[ -n ${1:-} ]]; then lt_redis_port=$1; else lt_free_port lt_redis_port; fi
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$lt_redis_port" --save '' --appendonly no --dir "$lt_tmp" \
        --maxclients 1000 >"$lt_tmp/redis.log" 2>&1 &
    lt_redis_pid=$!
    lt_await "Redis on 127.0.0.1:$lt_redis_port" "$lt_redis_pid" "$lt_tmp/redis.log" $((SECONDS + READY_TIMEOUT + 1)) \
        lt_redis_answers "$lt_redis_port"
    lt_say "Redis (pid $lt_redis_pid) on 127.0.0.1:$lt_redis_port"
}

# lt_redis_answers PORT: whether the Redis on PORT answers PING.
lt_redis_answers() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || exit 1
    [[ $reply == +PONG* ]]
)

# lt_start_redis_cluster: starts a private Redis Cluster of six nodes on free ports (three masters with a replica
# each, made by `redis-cli --cluster create`) and waits until every node reports it ready. A node timeout of one
# second lets a replica take over a killed master within a few seconds, and the cluster keeps serving the other
# shards meanwhile (`cluster-require-full-coverage no`).
lt_start_redis_cluster() {
    command -v "$REDIS_CLI" >/dev/null || lt_die "$REDIS_CLI is needed to make a Redis Cluster and not found"
    local i port addresses=()
    for i in 0 1 2 3 4 5; do
        lt_free_port port
        lt_cluster_ports[i]=$port
        lt_spawn_cluster_node "$i"
        addresses+=("127.0.0.1:$port")
    done
    for i in 0 1 2 3 4 5; do lt_await_cluster_node "$i"; done
    "$REDIS_CLI" --cluster create "${addresses[@]}" --cluster-replicas 1 --cluster-yes >"$lt_tmp/cluster-create.log" 2>&1 ||
        {
            cat "$lt_tmp/cluster-create.log" >&2
            lt_die "redis-cli --cluster create failed"
        }
    lt_settle_cluster "every node of the new cluster sees all slots served" "" lt_cluster_whole
    lt_say "Redis Cluster on 127.0.0.1 ports ${lt_cluster_ports[*]}"
}

# lt_spawn_cluster_node I: starts cluster node I on its port without waiting; a restarted node keeps its directory,
# and so its nodes.conf, and rejoins the cluster it was part of.
lt_spawn_cluster_node() {
    local i=$1
    mkdir -p "$lt_tmp/cluster-$i"
    "$REDIS_SERVER" --bind 127.0.0.1 --port "${lt_cluster_ports[i]}" --save '' --appendonly no \
        --dir "$lt_tmp/cluster-$i" --maxclients 1000 --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 1000 --cluster-require-full-coverage no --cluster-replica-validity-factor 0 \
        >>"$lt_tmp/cluster-$i.log" 2>&1 &
    lt_cluster_pids[i]=$!
}

# lt_await_cluster_node I: waits until cluster node I answers PING.
lt_await_cluster_node() {
    local i=$1
    lt_await "Redis Cluster node $i on 127.0.0.1:${lt_cluster_ports[i]}" "${lt_cluster_pids[i]}" \
        "$lt_tmp/cluster-$i.log" $((SECONDS + READY_TIMEOUT + 1)) lt_redis_answers "${lt_cluster_ports[i]}"
}

# lt_redis_cluster_url: the REDIS_URL the replicas get, `redis+cluster://` and three seed nodes.
lt_redis_cluster_url() {
    echo "redis+cluster://127.0.0.1:${lt_cluster_ports[0]},127.0.0.1:${lt_cluster_ports[1]},127.0.0.1:${lt_cluster_ports[2]}"
}

# lt_cluster_masters [DEAD_PORT]: prints "PORT SLOTS" for each master that a live node (other than DEAD_PORT) sees
# alive and serving slots.
lt_cluster_masters() {
    local dead=${1:-} port
    for port in "${lt_cluster_ports[@]}"; do
        [[ $port != "$dead" ]] || continue
        lt_redis_answers "$port" 2>/dev/null || continue
        "$REDIS_CLI" -p "$port" cluster nodes 2>/dev/null | awk '
            $3 ~ /master/ && $3 !~ /fail/ && NF >= 9 {
                split($2, address, /[:@]/)
                slots = 0
                for (i = 9; i <= NF; i++) {
                    if ($i ~ /^\[/) continue
                    n = split($i, range, "-")
                    slots += (n == 2) ? range[2] - range[1] + 1 : 1
                }
                print address[2], slots
            }'
        return 0
    done
}

# lt_cluster_whole [DEAD_PORT]: whether live masters other than DEAD_PORT serve all 16384 slots, and every live node
# says cluster_state:ok.
lt_cluster_whole() {
    local dead=${1:-} port
    [[ $(lt_cluster_masters "$dead" | awk -v dead="$dead" '$1 != dead { s += $2 } END { print s + 0 }') == 16384 ]] ||
        return 1
    for port in "${lt_cluster_ports[@]}"; do
        [[ $port != "$dead" ]] || continue
        "$REDIS_CLI" -p "$port" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    done
}

# lt_settle_cluster WHAT DEAD_PORT CHECK: waits (READY_TIMEOUT at most) until CHECK DEAD_PORT succeeds.
lt_settle_cluster() {
    local what=$1 dead=$2 check=$3 deadline=$((SECONDS + READY_TIMEOUT + 1))
    until "$check" "$dead"; do
        ((SECONDS < deadline)) || lt_die "Redis Cluster: not within ${READY_TIMEOUT}s: $what"
        sleep 0.2
    done
}

# lt_start_echo_agent [DELAY_MS]: starts the load tester's echo agent (`chatkit-loadtest agent-echo`) on a free port,
# waiting DELAY_MS before each answer, and points the replicas started next at it (lt_gateway_env). It is kept with
# the servers under test, so that the cleanup stops it too.
lt_start_echo_agent() {
    local delay=${1:-0} agent_port= pid
    lt_free_port agent_port
    "$lt_loadtest" agent-echo --port "$agent_port" --delay-ms "$delay" >"$lt_tmp/agent.log" 2>&1 &
    pid=$!
    lt_server_pids+=("$pid")
    lt_await "the echo agent on 127.0.0.1:$agent_port" "$pid" "$lt_tmp/agent.log" $((SECONDS + READY_TIMEOUT + 1)) \
        lt_listens "$agent_port"
    if ((delay > 0)); then
        lt_say "echo agent (pid $pid) on 127.0.0.1:$agent_port, answering after $delay ms"
    else
        lt_say "echo agent (pid $pid) on 127.0.0.1:$agent_port"
    fi
    # The echo agent does not verify signatures, but the gateway needs a secret to sign with.
    lt_gateway_env+=(CHATKIT_AGENT_URL="http://127.0.0.1:$agent_port/agent"
        CHATKIT_AGENT_SECRET="whsec_$(head -c 32 /dev/urandom | base64)")
}

# lt_listens PORT: whether something accepts connections on the loopback PORT.
lt_listens() (exec 3<>"/dev/tcp/127.0.0.1/$1")

# lt_create_database VAR: creates a fresh PostgreSQL database, dropped on exit, and sets VAR to its URL.
lt_create_database() {
    command -v psql >/dev/null || lt_die "psql is needed and not found"
    local database
    database=chatkit_${LT_NAME//[^a-z0-9]/_}_$(date +%s)_$$_${#lt_databases[@]}
    psql "$PG_URL/postgres" -qAtc "CREATE DATABASE \"$database\"" >&2 || lt_die "could not create a database on $PG_URL"
    lt_databases+=("$database")
    lt_say "database $database created"
    printf -v "$1" '%s' "$PG_URL/$database"
}

# lt_start_replicas COUNT DATABASE_URL [REDIS_URL]: starts COUNT gateways with the echo responder on free ports
# (lt_ports), each with its own data directory and log ($lt_tmp/replica-N.log), and waits until every one answers
# GET /readyz with 200: the store answers and, with Redis, the replica's subscriber is connected.
# Settings in lt_gateway_env (NAME=VALUE words, such as an agent backend's URL) are given to each replica too.
lt_gateway_env=()
lt_start_replicas() {
    local count=$1 database_url=$2 redis_url=${3:-} i port
    lt_ports=()
    local first=$((${#lt_server_pids[@]} + 1))
    for i in $(seq "$first" $((first + count - 1))); do
        lt_free_port port
        lt_ports+=("$port")
        lt_spawn_replica "$i" "$port" "$database_url" "$redis_url"
        lt_server_pids+=("$lt_spawned")
        lt_cpu_pids+=("$lt_spawned")
    done
    local deadline=$((SECONDS + READY_TIMEOUT + 1)) pid
    for i in $(seq "$first" $((first + count - 1))); do
        port=${lt_ports[i - first]}
        pid=${lt_server_pids[i - 1]}
        lt_await "replica $i on 127.0.0.1:$port" "$pid" "$lt_tmp/replica-$i.log" "$deadline" lt_ready "$port"
        lt_say "replica $i (pid $pid) ready on 127.0.0.1:$port"
    done
}

# lt_spawn_replica I PORT DATABASE_URL [REDIS_URL]: starts replica I (its data directory and its log, appended to,
# $lt_tmp/replica-I.log) on PORT without waiting for it, and sets lt_spawned to its pid. lt_start_replicas uses it, and
# a script restarting a replica where the clients look for it.
lt_spawned=
lt_spawn_replica() {
    local i=$1 port=$2 database_url=$3 redis_url=${4:-}
    mkdir -p "$lt_tmp/data-$i"
    # Settings the caller's environment might hold that would change what is measured are cleared.
    env -u REDIS_URL -u OPENAI_API_KEY -u CHATKIT_ADMIN_KEYS -u RUST_LOG -u CHATKIT_AGENT_URL \
        -u CHATKIT_AGENT_SECRET -u CHATKIT_WORKFLOWS -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT \
        ${redis_url:+REDIS_URL="$redis_url"} DATABASE_URL="$database_url" CHATKIT_BIND="127.0.0.1:$port" \
        CHATKIT_DATA_DIR="$lt_tmp/data-$i" CHATKIT_LOG=warn CHATKIT_MODEL=echo CHATKIT_AUTH=header \
        CHATKIT_USER_HEADER="$USER_HEADER" CHATKIT_SHUTDOWN_GRACE_SECS=5 ${WORKERS:+CHATKIT_WORKERS="$WORKERS"} \
        "${lt_gateway_env[@]}" "$lt_gateway" >>"$lt_tmp/replica-$i.log" 2>&1 &
    lt_spawned=$!
}

# lt_await WHAT PID LOG DEADLINE CHECK...: waits until CHECK succeeds. When process PID exits first, or SECONDS reaches
# DEADLINE (one second more than READY_TIMEOUT from the start, since SECONDS counts whole seconds), it says so, shows
# LOG and exits.
lt_await() {
    local what=$1 pid=$2 log=$3 deadline=$4
    shift 4
    until "$@" 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            lt_say "$what exited before it was ready; its log:"
        elif ((SECONDS >= deadline)); then
            lt_say "$what was not ready within ${READY_TIMEOUT}s; its log:"
        else
            sleep 0.1
            continue
        fi
        cat "$log" >&2
        exit 1
    done
}

lt_ready() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    IFS= read -r -t 2 status_line <&3 || exit 1
    [[ $status_line == "HTTP/1.1 200"* ]]
)

# lt_urls: the replicas' base URLs from lt_ports, comma-separated, as --url takes them.
lt_urls() {
    local urls
    urls=$(printf 'http://127.0.0.1:%s,' "${lt_ports[@]}")
    echo "${urls%,}"
}

# lt_cpu_seconds PID: the CPU time, user and system, that process PID has used so far, in seconds.
lt_cpu_seconds() {
    local stat fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
        echo unknown
        return
    }
    # The command name in parentheses may hold spaces; user and system time are the 12th and 13th fields after it.
    read -r -a fields <<<"${stat##*) }"
    awk -v ticks="$(getconf CLK_TCK)" -v user="${fields[11]}" -v sys="${fields[12]}" \
        'BEGIN { printf "%.2f", (user + sys) / ticks }'
}

# lt_replica_report: says for each replica whether it is still up, its peak resident memory and the end of its log.
# Fails when a replica exited.
lt_replica_report() {
    local i pid peak status=0
    for i in $(seq 1 "${#lt_server_pids[@]}"); do
        pid=${lt_server_pids[i - 1]}
        if ! kill -0 "$pid" 2>/dev/null; then
            lt_say "replica $i exited during the run"
            status=1
        else
            peak=$(sed -n 's/^VmHWM:[[:space:]]*//p' "/proc/$pid/status" 2>/dev/null || true)
            lt_say "replica $i peak resident memory ${peak:-unknown}, $(lt_cpu_seconds "$pid") s of CPU since it started"
        fi
        if [[ -s $lt_tmp/replica-$i.log ]]; then
            lt_say "replica $i logged $(wc -l <"$lt_tmp/replica-$i.log") lines; the last ones:"
            tail -n 5 "$lt_tmp/replica-$i.log" >&2
        fi
    done
    return "$status"
}

# lt_save_metrics PREFIX: keeps each replica's GET /metrics (Prometheus text) in PREFIX-<replica>.txt, for a look at
# where the time went (lease waits, store operations, fan-out inside the gateway). A replica that does not answer
# leaves an empty file.
lt_save_metrics() {
    local prefix=$1 i
    for i in $(seq 1 "${#lt_ports[@]}"); do
        lt_metrics "${lt_ports[i - 1]}" >"$prefix-$i.txt" 2>/dev/null || true
    done
}

lt_metrics() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$1" >&3
    # The body follows the first empty line; the gateway answers with a length, not in chunks.
    timeout 5 sed '1,/^\r\{0,1\}$/d' <&3
)

# lt_run_loadtest OUT ARGS...: runs the load tester with ARGS, its JSON line into OUT, and answers its exit status.
# It runs in the background so that a signal to the script is handled at once (bash runs traps only between
# commands, but `wait` is interrupted); its progress and its table go straight to stderr.
lt_run_loadtest() {
    local out=$1 status=0
    shift
    "$lt_loadtest" "$@" >"$out" &
    lt_loadtest_pid=$!
    wait "$lt_loadtest_pid" || status=$?
    lt_loadtest_pid=
    return "$status"
}

# lt_field KEY LINE: picks a value out of a JSON report line, whose top-level keys are flat and unique.
lt_field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" <<<"$2"; }

# lt_ms KEY LINE: a latency of a JSON report line, in milliseconds to two places, or n/a.
lt_ms() {
    local value
    value=$(lt_field "$1" "$2")
    if [[ -z $value || $value == null ]]; then echo "n/a"; else printf '%.2f' "$value"; fi
}

# lt_counts: prints "REDIS_COMMANDS PG_COMMITS TURNS": the commands the private Redis ran so far (INFO commandstats,
# which counts those a script runs too, but not INFO itself), the transactions committed in the database named
# lt_count_database (0 without one), and the turns the replicas ran (their chatkit_turn_duration_seconds counts).
lt_count_database=
lt_counts() {
    local redis=0 pg=0 turns=0 port
    if [[ -n $lt_redis_port ]]; then
        redis=$("$REDIS_CLI" -p "$lt_redis_port" INFO commandstats |
            awk -F'[=,:]' '/^cmdstat_/ && $1 != "cmdstat_info" { s += $3 } END { print s + 0 }')
    fi
    if [[ -n $lt_count_database ]]; then
        pg=$(psql "$PG_URL/postgres" -qAtc \
            "SELECT xact_commit FROM pg_stat_database WHERE datname = '$lt_count_database'")
    fi
    for port in "${lt_ports[@]}"; do
        turns=$((turns + $(lt_metrics "$port" | awk '/^chatkit_turn_duration_seconds_count/ { s += $2 } END { print s + 0 }')))
    done
    echo "$redis $pg $turns"
}

# lt_count_row LABEL BEFORE AFTER: adds to lt_count_rows the Redis commands and PostgreSQL commits per turn between
# two lt_counts lines.
lt_count_row() {
    local label=$1 before after
    read -r -a before <<<"$2"
    read -r -a after <<<"$3"
    awk -v label="$label" -v r="$((after[0] - before[0]))" -v p="$((after[1] - before[1]))" \
        -v t="$((after[2] - before[2]))" 'BEGIN {
            if (t == 0) { printf "| %s | 0 | n/a | n/a |\n", label; exit }
            printf "| %s | %d | %.1f | %.2f |\n", label, t, r / t, p / t }' >>"$lt_tmp/count-rows"
}

# lt_count_table: prints what lt_count_row gathered.
lt_count_table() {
    [[ -s $lt_tmp/count-rows ]] || return 0
    echo
    echo "Per turn over each whole scenario (its setup, warm-up and measured time): Redis commands, counting those"
    echo "scripts run (INFO commandstats), and PostgreSQL transactions committed (pg_stat_database.xact_commit)."
    echo
    echo "| scenario | turns | Redis commands/turn | PostgreSQL commits/turn |"
    echo "|---|---:|---:|---:|"
    cat "$lt_tmp/count-rows"
}

# lt_request_scenarios URL [LABEL]: runs the request scenarios named in SCENARIOS one after the other against URL
# (CONCURRENCY clients for DURATION after WARMUP, TIMEOUT a request; with lt_admin_key set, each client on a session's
# client secret made with that admin key instead of the user header) and adds a Markdown table row for each to
# lt_rows, LABEL in its first cell when given, with the CPU time the processes of lt_cpu_pids used per successful
# request; sets lt_errors to the errors they counted. Fails when a scenario failed.
lt_rows=()
lt_errors=0
lt_admin_key=
lt_request_scenarios() {
    local url=$1 label=${2:-} scenario line rps cells cpu pid pid_args=() status=0 counted=
    lt_errors=0
    for pid in "${lt_cpu_pids[@]}"; do pid_args+=(--server-pid "$pid"); done
    for scenario in $SCENARIOS; do
        echo >&2
        lt_say "${label:+$label / }$scenario"
        counted=
        if [[ -n $lt_count_database && $scenario != list ]]; then counted=$(lt_counts); fi
        lt_run_loadtest "$lt_tmp/${label:+$label-}$scenario.json" --url "$url" --scenario "$scenario" \
            --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup "$WARMUP" --timeout "$TIMEOUT" \
            --user-header "$USER_HEADER" ${lt_admin_key:+--admin-key "$lt_admin_key"} "${pid_args[@]}" --json ||
            status=1
        if [[ -n $counted ]]; then
            # An idle PostgreSQL connection reports its counts within ten seconds.
            sleep 11
            lt_count_row "${label:+$label / }$scenario" "$counted" "$(lt_counts)"
        fi
        line=$(<"$lt_tmp/${label:+$label-}$scenario.json")
        if [[ -z $line ]]; then
            lt_rows+=("| ${label:+$label | }$scenario | failed | | | | | | |")
            status=1
            continue
        fi
        lt_errors=$((lt_errors + $(lt_field errors_total "$line")))
        rps=$(printf '%.0f' "$(lt_field rps "$line")")
        cells="$rps | $(lt_ms latency_p50_ms "$line") | $(lt_ms latency_p90_ms "$line") | $(lt_ms latency_p99_ms "$line")"
        cpu=$(lt_field server_cpu_us_per_op "$line")
        if [[ -z $cpu || $cpu == null ]]; then cpu="n/a"; else cpu=$(printf '%.0f' "$cpu"); fi
        lt_rows+=("| ${label:+$label | }$scenario | $cells | $(lt_ms latency_max_ms "$line") | $cpu | $(lt_field errors_total "$line") |")
    done
    return "$status"
}

# lt_request_table [LABEL_COLUMN]: prints lt_rows as a Markdown table, LABEL_COLUMN heading the label cells when the
# rows have them.
lt_request_table() {
    local column=${1:-} align=
    if [[ -n $column ]]; then align='---|'; fi
    echo
    echo "Latencies in milliseconds, from sending the request to the end of the response; server CPU in µs of the"
    echo "server processes' own CPU time (user and system) per successful request over the measured window."
    echo
    echo "| ${column:+$column | }scenario | req/s | p50 | p90 | p99 | max | server CPU µs/req | errors |"
    echo "|$align---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${lt_rows[@]}"
}
