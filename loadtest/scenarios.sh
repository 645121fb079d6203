#!/usr/bin/env bash
# Runs the standard load scenarios on this machine, one after the other, each with the load
# tester's `mixed` scenario: viewer streams on threads spread over the replicas while writers
# send turns back to back to the threads and the replicas in turn; every user message is timed
# from its send to its receipt by each viewer of its thread, and every delivery is counted.
#
#   sqlite    one replica on a fresh SQLite database (fan-out in process)
#   postgres  REPLICAS replicas sharing a fresh PostgreSQL database and a private Redis
#
# Each scenario starts what it needs on loopback, waits until every replica answers /readyz with
# 200, runs the load, then stops it all again (SIGTERM, then SIGKILL after 10 s) and drops its
# database; the same happens on exit, failure and Ctrl-C. A summary table follows the last one.
#
#   loadtest/scenarios.sh        measure: release build, 1,000 viewers on 100 threads, 8 writers,
#                                15 s per scenario
#   loadtest/scenarios.sh --ci   check: the debug build as `cargo test --workspace` makes it (what the
#                                test command has just built, so no dependency compiles again), 20
#                                viewers on 10 threads, 2 writers, 10 s per scenario (LOADTEST_CI=1
#                                does the same)
#
# Settings come from the environment; --ci changes only the defaults:
#   SCENARIOS         which scenarios, in order ("sqlite postgres")
#   THREADS           threads the viewers watch and the turns go to (100; CI 10)
#   VIEWERS           viewer streams (1000; CI 20)
#   WRITERS           writers sending turns back to back (8; CI 2)
#   DURATION          how long the writers send, per scenario (15s; CI 10s)
#   DRAIN             wait after the last turn before counting (2s)
#   REPLICAS          replicas of the postgres scenario (3)
#   PROFILE           build profile: release; dev for the debug build; test for the debug build with the
#                     features `cargo test --workspace` resolves (release; CI test)
#   OPEN_CONCURRENCY  viewer streams being opened at once (256)
#   TIMEOUT           limit on one turn or one stream opening (10s)
#   SETUP_TIMEOUT     limit on creating the threads and opening every viewer (120s; CI 30s)
#   WORKERS           HTTP worker threads per replica (the gateway's default: one per CPU)
#   LOADTEST_WORKERS  runtime threads of the load tester (one per CPU)
#   PG_URL            PostgreSQL server to create databases on (postgres://postgres@127.0.0.1:5432)
#   REDIS_SERVER      redis-server binary (/usr/bin/redis-server, else the one on PATH)
#   READY_TIMEOUT     seconds to wait for Redis and each replica (30)
#   REPORT_DIR        where the reports are kept ($CARGO_TARGET_DIR/loadtest): mixed-<scenario>.json, the
#                     load tester's JSON line for each; scenarios.json with all of them; and
#                     metrics-<scenario>-<replica>.txt, each replica's /metrics at the end of its run
#   CARGO_TARGET_DIR is respected when set.
#
# Progress and details go to stderr; the machine line and the summary table to stdout. The exit
# status is 1 when a scenario failed, lost a delivery (a user message or an answer) or counted
# any error, 2 on a usage error.
set -euo pipefail
LT_NAME=scenarios.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

lt_ci_args "${BASH_SOURCE[0]}" "$@"
if [[ $ci == 1 ]]; then
    THREADS=${THREADS:-10}
    VIEWERS=${VIEWERS:-20}
    WRITERS=${WRITERS:-2}
    DURATION=${DURATION:-10s}
    SETUP_TIMEOUT=${SETUP_TIMEOUT:-30s}
    PROFILE=${PROFILE:-test}
fi
SCENARIOS=${SCENARIOS:-sqlite postgres}
THREADS=${THREADS:-100}
VIEWERS=${VIEWERS:-1000}
WRITERS=${WRITERS:-8}
DURATION=${DURATION:-15s}
DRAIN=${DRAIN:-2s}
REPLICAS=${REPLICAS:-3}
PROFILE=${PROFILE:-release}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-256}
TIMEOUT=${TIMEOUT:-10s}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-120s}
LOADTEST_WORKERS=${LOADTEST_WORKERS:-}
REPORT_DIR=${REPORT_DIR:-$lt_target_dir/loadtest}

cd "$lt_root"
if ! [[ $REPLICAS =~ ^[1-9][0-9]?$ && $VIEWERS =~ ^[1-9][0-9]*$ ]]; then
    echo "$LT_NAME: REPLICAS must be 1 to 99 and VIEWERS a positive number" >&2
    exit 2
fi
scenarios=()
for name in $SCENARIOS; do
    case $name in
        sqlite | postgres) scenarios+=("$name") ;;
        *)
            echo "$LT_NAME: unknown scenario \`$name\` in SCENARIOS; the standard ones are sqlite and postgres" >&2
            exit 2
            ;;
    esac
done
((${#scenarios[@]} > 0)) || {
    echo "$LT_NAME: SCENARIOS is empty" >&2
    exit 2
}
# What the postgres scenario needs is checked before anything is built, so that a missing piece fails at once.
if [[ " ${scenarios[*]} " == *" postgres "* ]]; then
    command -v "$REDIS_SERVER" >/dev/null || lt_die "$REDIS_SERVER is needed for the postgres scenario and not found"
    command -v psql >/dev/null || lt_die "psql is needed for the postgres scenario and not found"
    PGCONNECT_TIMEOUT=5 psql "$PG_URL/postgres" -w -qAtc 'select 1' >/dev/null ||
        lt_die "PostgreSQL does not answer at $PG_URL without a password (the postgres scenario needs it)"
fi
# The load tester holds one socket per viewer and wants 512 spare (for writers, setup and itself); a replica holds at
# most every viewer's socket plus its pools. So the CI sizes fit the usual soft limit of 1024 as it is.
lt_raise_fd_limit $((VIEWERS + 768))

started=$SECONDS
step() { echo "==> [$((SECONDS - started))s] $*" >&2; }

lt_machine
echo "Load: the mixed scenario, $VIEWERS viewers on $THREADS threads and $WRITERS writers for $DURATION" \
    "(drain $DRAIN) per scenario, $PROFILE build${ci:+ (CI mode)}; the replicas, their stores and the load" \
    "tester share this machine."

step "building the gateway and the load tester ($PROFILE)"
lt_build "$PROFILE"
lt_init
mkdir -p "$REPORT_DIR"

# run_scenario INDEX NAME: starts what scenario NAME needs, runs the load, keeps the report and a table row, and
# stops everything again. Fails when the run failed, lost anything or counted an error.
rows=()
reports=()
line=
f() { lt_field "$1" "$line"; }
run_scenario() {
    local index=$1 name=$2 replicas store database_url status=0
    local label="[$index/${#scenarios[@]}] $name"
    case $name in
        sqlite)
            replicas=1
            store="SQLite, in-process fan-out"
            step "$label: starting one replica on SQLite"
            lt_start_replicas 1 "sqlite://$lt_tmp/$name.db"
            ;;
        postgres)
            replicas=$REPLICAS
            store="PostgreSQL and Redis"
            step "$label: starting Redis, a PostgreSQL database and $replicas replicas"
            lt_start_redis
            lt_create_database database_url
            lt_start_replicas "$replicas" "$database_url" "redis://127.0.0.1:$lt_redis_port"
            ;;
    esac
    step "$label: $VIEWERS viewers on $THREADS threads over $replicas replica(s), $WRITERS writers for $DURATION"
    lt_run_loadtest "$lt_tmp/$name.json" --scenario mixed --url "$(lt_urls)" --threads "$THREADS" \
        --viewers "$VIEWERS" --writers "$WRITERS" --duration "$DURATION" --drain "$DRAIN" \
        --open-concurrency "$OPEN_CONCURRENCY" --timeout "$TIMEOUT" --setup-timeout "$SETUP_TIMEOUT" \
        --user-header "$USER_HEADER" ${LOADTEST_WORKERS:+--workers "$LOADTEST_WORKERS"} --json || status=$?
    lt_replica_report || status=1
    lt_save_metrics "$REPORT_DIR/metrics-$name"
    step "$label: stopping"
    lt_teardown

    line=$(<"$lt_tmp/$name.json")
    if [[ -z $line ]]; then
        lt_say "$name: the load tester produced no report (exit status $status)"
        rows+=("| $name | $replicas | $store | failed | | | | | | | | | | | |")
        return 1
    fi
    printf '%s\n' "$line" >"$REPORT_DIR/mixed-$name.json"
    reports+=("\"$name\":$line")
    rows+=("| $name | $replicas | $store | $(f viewers_open) / $(f threads) | $(f writers) | $(f turns_ok) | $(f turn_rate) | $(f turn_p50_ms) / $(f turn_p99_ms) | $(f first_event_p50_ms) / $(f first_event_p99_ms) | $(f fanout_p50_ms) / $(f fanout_p99_ms) / $(f fanout_max_ms) | $(f received) of $(f expected) | $(f lost) | $(f answers_lost) | $(f resyncs) | $(f errors_total) |")
    if ((status != 0)) || [[ $(f lost) != 0 || $(f answers_lost) != 0 || $(f errors_total) != 0 ]]; then
        lt_say "$name: failed (exit status $status, $(f lost) user messages and $(f answers_lost) answers lost," \
            "$(f errors_total) errors)"
        return 1
    fi
}

failed=0
index=0
for name in "${scenarios[@]}"; do
    index=$((index + 1))
    run_scenario "$index" "$name" || failed=1
done
joined=$(
    IFS=,
    echo "${reports[*]}"
)
printf '{"profile":"%s","ci":%s,"scenarios":{%s}}\n' "$PROFILE" "${ci:-0}" "$joined" >"$REPORT_DIR/scenarios.json"
step "done"

echo
echo "Mixed load: turns are timed from the request to the end of their stream; fan-out from sending a user"
echo "message to its receipt by each viewer of its thread. Times in milliseconds."
echo
echo "| scenario | replicas | store | viewers / threads | writers | turns | turns/s | turn p50 / p99 | first event p50 / p99 | fan-out p50 / p99 / max | user messages received | lost | answers lost | resyncs | errors |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
echo
echo "Reports: $REPORT_DIR/scenarios.json (and mixed-<scenario>.json, metrics-<scenario>-<replica>.txt)"
if ((failed)); then
    lt_say "FAILED: at least one scenario failed, lost a delivery or counted an error"
    exit 1
fi
