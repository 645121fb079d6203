#!/usr/bin/env bash
# The chaos run: three replicas sharing a fresh PostgreSQL database and a private Redis (one server, or a Redis Cluster
# of six nodes with REDIS_MODE=cluster) under the load tester's `mixed` load (viewers on every replica, writers sending
# turns back to back, each writer through one replica), while a loop driven by a fixed seed breaks things, one action
# at a time:
#
#   kill     SIGKILL a replica, then start it again on the same port
#   redis    single: stop Redis and start it again, empty, on the same port (every lease and fan-out history is gone);
#            cluster: SIGKILL a master, wait until its replica has taken over its slots, start it again (it rejoins as
#            a replica)
#   pause    SIGSTOP a replica for longer than its thread lease (CHATKIT_LEASE_TTL_SECS), then SIGCONT it: another
#            replica takes its threads over, and its fenced writes are refused with a retryable `error` event
#
# The turns are answered by the load tester's echo agent (`chatkit-loadtest agent-echo`) after TURN_DELAY_MS, as a
# model that thinks would, so that a pause is likely to catch a turn between its lease and its last write; with
# TURN_DELAY_MS=0 the replicas' built-in echo responder answers instead.
#
# Afterwards the load tester reads every thread back from PostgreSQL (`--check-store`) and checks that every turn a
# client saw complete is stored exactly once, that no thread has interleaved or reordered turns, and that every viewer
# received each completed turn's messages or a `resync` (or lost its stream with a killed replica). The exit status is
# 1 when anything was lost, duplicated, interleaved, out of order or missed, 2 on a usage error.
#
#   loadtest/chaos.sh        release build, 60 viewers on 20 threads, 4 writers, 60 s of chaos
#   loadtest/chaos.sh --ci   the debug build as `cargo test --workspace` makes it, 12 viewers on 6 threads, 3 writers,
#                            20 s (about 35 s in all after the build; LOADTEST_CI=1 does the same)
#
# Everything listens on 127.0.0.1 and is stopped on exit, failure and Ctrl-C; the database is dropped.
#
# Settings come from the environment; --ci changes only the defaults:
#   REDIS_MODE        single or cluster (single)
#   SEED              seed of the chaos loop, so that a run can be repeated (14)
#   DURATION          how long the writers send; chaos stops 3 s before its end (60s; CI 20s)
#   INTERVAL          seconds between two chaos actions (4; CI 3)
#   THREADS           threads (20; CI 6)
#   VIEWERS           viewer streams (60; CI 12)
#   WRITERS           writers, writer w sending through replica w mod 3 (4; CI 3)
#   TURN_DELAY_MS     how long the echo agent thinks before each answer; 0 for the built-in echo responder (200)
#   LEASE_TTL         the replicas' CHATKIT_LEASE_TTL_SECS (2); a pause lasts LEASE_TTL + 2 s
#   PROFILE           release, dev or test (release; CI test)
#   TIMEOUT           limit on one turn (10s)
#   PG_URL, REDIS_SERVER, REDIS_CLI, READY_TIMEOUT, WORKERS as lib.sh reads them; CARGO_TARGET_DIR is respected.
set -euo pipefail
LT_NAME=chaos.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

lt_ci_args "${BASH_SOURCE[0]}" "$@"
if [[ $ci == 1 ]]; then
    DURATION=${DURATION:-20s}
    INTERVAL=${INTERVAL:-3}
    THREADS=${THREADS:-6}
    VIEWERS=${VIEWERS:-12}
    WRITERS=${WRITERS:-3}
    PROFILE=${PROFILE:-test}
fi
SEED=${SEED:-14}
DURATION=${DURATION:-60s}
INTERVAL=${INTERVAL:-4}
THREADS=${THREADS:-20}
VIEWERS=${VIEWERS:-60}
WRITERS=${WRITERS:-4}
LEASE_TTL=${LEASE_TTL:-2}
REDIS_MODE=${REDIS_MODE:-single}
TURN_DELAY_MS=${TURN_DELAY_MS:-200}
PROFILE=${PROFILE:-release}
TIMEOUT=${TIMEOUT:-10s}
REPLICAS=3

if ! [[ $SEED =~ ^[0-9]+$ && $DURATION =~ ^[1-9][0-9]*s$ && $INTERVAL =~ ^[1-9][0-9]*$ && $LEASE_TTL =~ ^[1-9]$ &&
    $TURN_DELAY_MS =~ ^[0-9]+$ && $REDIS_MODE =~ ^(single|cluster)$ ]] || ((TURN_DELAY_MS > 5000)); then
    echo "$LT_NAME: SEED must be a number, DURATION whole seconds such as 20s, INTERVAL 1 or more, LEASE_TTL 1-9," \
        "TURN_DELAY_MS 0-5000, REDIS_MODE single or cluster" >&2
    exit 2
fi
duration_secs=${DURATION%s}
((duration_secs <= 600)) || {
    echo "$LT_NAME: DURATION is at most 600s" >&2
    exit 2
}
command -v "$REDIS_SERVER" >/dev/null || lt_die "$REDIS_SERVER is needed and not found"
[[ $REDIS_MODE == single ]] || command -v "$REDIS_CLI" >/dev/null || lt_die "$REDIS_CLI is needed and not found"
command -v psql >/dev/null || lt_die "psql is needed and not found"
PGCONNECT_TIMEOUT=5 psql "$PG_URL/postgres" -w -qAtc 'select 1' >/dev/null ||
    lt_die "PostgreSQL does not answer at $PG_URL without a password"
lt_raise_fd_limit $((VIEWERS + 768))

cd "$lt_root"
started=$SECONDS
step() { echo "==> [$((SECONDS - started))s] $*" >&2; }

lt_machine
if [[ $REDIS_MODE == cluster ]]; then redis_name="a Redis Cluster (3 masters, 3 replicas)"; else redis_name=Redis; fi
if ((TURN_DELAY_MS > 0)); then answerer="the echo agent, ${TURN_DELAY_MS} ms a turn"; else answerer="the echo responder"; fi
echo "Chaos: seed $SEED, one action every ${INTERVAL}s during $DURATION of the mixed load ($VIEWERS viewers on" \
    "$THREADS threads, $WRITERS writers) on $REPLICAS replicas with PostgreSQL and $redis_name, answered by" \
    "$answerer, lease ${LEASE_TTL}s, $PROFILE build${ci:+ (CI mode)}."

step "building the gateway and the load tester ($PROFILE)"
lt_build "$PROFILE"
lt_init

step "starting $redis_name, a PostgreSQL database and $REPLICAS replicas"
if [[ $REDIS_MODE == cluster ]]; then
    lt_start_redis_cluster
    redis_url=$(lt_redis_cluster_url)
else
    lt_start_redis
    redis_url="redis://127.0.0.1:$lt_redis_port"
fi
lt_create_database database_url
lt_gateway_env=(CHATKIT_LEASE_TTL_SECS="$LEASE_TTL")
if ((TURN_DELAY_MS > 0)); then lt_start_echo_agent "$TURN_DELAY_MS"; fi
# Replicas are numbered after whatever was started before them (the echo agent), so `first` is the first one's.
first=$((${#lt_server_pids[@]} + 1))
lt_start_replicas "$REPLICAS" "$database_url" "$redis_url"
ports=("${lt_ports[@]}")

step "starting the load; chaos begins once the writers do"
"$lt_loadtest" --scenario mixed --url "$(lt_urls)" --threads "$THREADS" --viewers "$VIEWERS" --writers "$WRITERS" \
    --pin-writers --duration "$DURATION" --drain 3s --timeout "$TIMEOUT" --setup-timeout 30s --user-header "$USER_HEADER" \
    --check-store "$database_url" --json >"$lt_tmp/report.json" 2>"$lt_tmp/loadtest.log" &
lt_loadtest_pid=$!
until grep -q "writers start" "$lt_tmp/loadtest.log" 2>/dev/null; do
    kill -0 "$lt_loadtest_pid" 2>/dev/null || break
    sleep 0.2
done

# ready I: waits until replica I answers /readyz again after a restart.
ready() {
    local i=$1
    lt_await "replica $i" "${lt_server_pids[i - 1]}" "$lt_tmp/replica-$i.log" $((SECONDS + READY_TIMEOUT + 1)) \
        lt_ready "${ports[i - first]}"
}

# restart_redis: the `redis` action of the mode.
restart_redis() {
    if [[ $REDIS_MODE == single ]]; then
        step "chaos: restart Redis"
        lt_stop "$lt_redis_pid"
        lt_redis_pid=
        sleep 1
        lt_start_redis "$lt_redis_port"
        return
    fi
    local masters node dead
    mapfile -t masters < <(lt_cluster_masters | awk '{ print $1 }' | sort -n)
    ((${#masters[@]} > 0)) || lt_die "Redis Cluster: no live master found"
    dead=${masters[RANDOM % ${#masters[@]}]}
    for node in "${!lt_cluster_ports[@]}"; do [[ ${lt_cluster_ports[node]} != "$dead" ]] || break; done
    step "chaos: SIGKILL the Redis Cluster master on port $dead, wait for its replica to take over, start it again"
    kill -KILL "${lt_cluster_pids[node]}" 2>/dev/null || true
    wait "${lt_cluster_pids[node]}" 2>/dev/null || true
    lt_settle_cluster "a replica took over the slots of the master on port $dead" "$dead" lt_cluster_whole
    step "chaos: failover done; restarting the old master"
    lt_spawn_cluster_node "$node"
    lt_await_cluster_node "$node"
    lt_settle_cluster "the old master on port $dead rejoined" "" lt_cluster_whole
}

RANDOM=$SEED
chaos_end=$((SECONDS + duration_secs - 3))
actions=()
counts=(0 0 0)
round=()
while ((SECONDS + INTERVAL < chaos_end)) && kill -0 "$lt_loadtest_pid" 2>/dev/null; do
    sleep "$INTERVAL"
    # The actions come in rounds of all three, each round in an order the seed picks, so that even a short run
    # has every kind.
    if ((${#round[@]} == 0)); then
        round=(0 1 2)
        for j in 2 1; do
            k=$((RANDOM % (j + 1)))
            swap=${round[j]} round[j]=${round[k]} round[k]=$swap
        done
    fi
    action=${round[0]}
    round=("${round[@]:1}")
    i=$((RANDOM % REPLICAS + first))
    counts[action]=$((counts[action] + 1))
    case $action in
        0)
            step "chaos: SIGKILL replica $i, then start it again"
            actions+=("kill $i")
            kill -KILL "${lt_server_pids[i - 1]}" 2>/dev/null || true
            wait "${lt_server_pids[i - 1]}" 2>/dev/null || true
            sleep 1
            lt_spawn_replica "$i" "${ports[i - first]}" "$database_url" "$redis_url"
            lt_server_pids[i - 1]=$lt_spawned
            ready "$i"
            ;;
        1)
            actions+=("redis")
            restart_redis
            ;;
        2)
            step "chaos: SIGSTOP replica $i for $((LEASE_TTL + 2))s, then SIGCONT"
            actions+=("pause $i")
            kill -STOP "${lt_server_pids[i - 1]}"
            sleep $((LEASE_TTL + 2))
            kill -CONT "${lt_server_pids[i - 1]}"
            ;;
    esac
done
step "chaos over (${#actions[@]} actions: ${actions[*]:-none}); waiting for the load and the store check"

status=0
wait "$lt_loadtest_pid" || status=$?
lt_loadtest_pid=
cat "$lt_tmp/loadtest.log" >&2
line=$(<"$lt_tmp/report.json")
step "stopping"
lt_teardown
f() { lt_field "$1" "$line"; }

echo
if [[ $REDIS_MODE == cluster ]]; then redis_action="Redis Cluster master kills"; else redis_action="Redis restarts"; fi
echo "Chaos run, seed $SEED, $redis_name, answered by $answerer: ${counts[0]} replica kills, ${counts[1]}" \
    "$redis_action, ${counts[2]} pauses past the lease."
echo
echo "| turns attempted | completed | refused (retryable error) | failed otherwise | lost | duplicated | interleaved | out of order | viewers (ended / resynced) | viewer misses |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
if [[ -z $line || -z $(f check_lost) ]]; then
    echo "| failed | | | | | | | | | |"
    lt_say "FAILED: the load tester produced no store check (exit status $status)"
    exit 1
fi
echo "| $(f check_attempted) | $(f check_completed) | $(f check_refused) | $(f check_failed) | $(f check_lost) | $(f check_duplicated) | $(f check_interleaved) | $(f check_out_of_order) | $(f check_viewers) ($(f check_viewers_ended) / $(f check_viewers_resynced)) | $(f check_viewer_misses) |"
if ((status != 0)) || [[ $(f check_passed) != true ]]; then
    lt_say "FAILED: the store check found a loss, a duplicate, an interleaving, a reordering or a missed message" \
        "(load tester exit status $status)"
    exit 1
fi
if [[ $(f check_completed) == 0 ]]; then
    lt_say "FAILED: no turn completed"
    exit 1
fi
