#!/usr/bin/env bash
# Measures fan-out across replicas on this machine: builds the gateway and the load tester in
# release mode, starts a private Redis on a free loopback port, creates a fresh PostgreSQL
# database, starts REPLICAS gateways on free loopback ports sharing both, waits until every one
# answers /readyz with 200, then runs the load tester's fanout scenario: VIEWERS viewer streams
# over THREADS threads (spread over the replicas), RATE thread updates a second for DURATION,
# each timed from its send to its receipt by every viewer, and the replicas' CPU time from the first update to the end
# of the drain per delivery (updates included: with many viewers per thread it approaches the cost of one delivery; see
# the README's Benchmark for the method). Everything it started is stopped
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
LT_NAME=fanout.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

THREADS=${THREADS:-1000}
VIEWERS=${VIEWERS:-10000}
RATE=${RATE:-200}
DURATION=${DURATION:-15s}
DRAIN=${DRAIN:-2s}
REPLICAS=${REPLICAS:-3}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-256}
TIMEOUT=${TIMEOUT:-10s}
SETUP_TIMEOUT=${SETUP_TIMEOUT:-120s}
LOADTEST_WORKERS=${LOADTEST_WORKERS:-}
REPORT=${REPORT:-$lt_target_dir/fanout-report.json}

cd "$lt_root"
for tool in "$REDIS_SERVER" psql; do
    command -v "$tool" >/dev/null || lt_die "$tool is needed and not found"
done
if ! [[ $REPLICAS =~ ^[1-9][0-9]?$ && $VIEWERS =~ ^[1-9][0-9]*$ ]]; then
    lt_die "REPLICAS must be 1 to 99 and VIEWERS a positive number"
fi
# The load tester holds one socket per viewer; each replica holds its share of them, plus its
# database pool and Redis connections.
lt_raise_fd_limit $((VIEWERS + 4096))

lt_machine
echo "Load: $VIEWERS viewers on $THREADS threads over $REPLICAS replicas, $RATE updates/s for $DURATION;" \
    "Redis, PostgreSQL, the replicas and the load tester share this machine."

lt_build release
lt_init
lt_start_redis
lt_create_database database_url
lt_start_replicas "$REPLICAS" "$database_url" "redis://127.0.0.1:$lt_redis_port"

mkdir -p "$(dirname "$REPORT")"
status=0
pid_args=()
for pid in "${lt_cpu_pids[@]}"; do pid_args+=(--server-pid "$pid"); done
lt_run_loadtest "$lt_tmp/report.json" --scenario fanout --url "$(lt_urls)" --threads "$THREADS" \
    --viewers "$VIEWERS" --rate "$RATE" --duration "$DURATION" --drain "$DRAIN" \
    --open-concurrency "$OPEN_CONCURRENCY" --timeout "$TIMEOUT" --setup-timeout "$SETUP_TIMEOUT" \
    ${LOADTEST_WORKERS:+--workers "$LOADTEST_WORKERS"} "${pid_args[@]}" --json || status=$?
lt_replica_report || status=1

line=$(<"$lt_tmp/report.json")
[[ -n $line ]] || lt_die "the load tester produced no report (exit status $status)"
printf '%s\n' "$line" >"$REPORT"

field() { lt_field "$1" "$line"; }
echo
echo "Summary ($VIEWERS viewers, $THREADS threads, $REPLICAS replicas, $RATE updates/s for $DURATION, drain $DRAIN):"
echo "  updates    $(field updates_sent) sent at $(field update_rate)/s, $(field updates_ok) ok, $(field updates_failed) failed"
echo "  deliveries $(field expected) expected, $(field received) received, $(field lost) lost, $(field resyncs) resyncs"
echo "  fan-out ms p50 $(field fanout_p50_ms), p90 $(field fanout_p90_ms), p99 $(field fanout_p99_ms), max $(field fanout_max_ms)"
echo "  server CPU $(field server_cpu_s) s: $(field server_cpu_us_per_delivery) µs per delivery (updates included)"
echo "  errors     $(field errors_total)"
echo "  report     $REPORT"

if ((status != 0)) || [[ $(field lost) != 0 || $(field errors_total) != 0 ]]; then
    exit 1
fi
