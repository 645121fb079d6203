#!/usr/bin/env bash
# Benchmarks chatkit-gateway on this machine for the README: builds the gateway and the load
# tester in release mode, starts the gateway (the echo responder) on a free loopback port with a
# fresh SQLite database, waits until it answers /readyz with 200, runs the load scenarios one
# after another and prints a Markdown table. The gateway is stopped on exit, failure and Ctrl-C.
#
# Settings come from the environment:
#   CONCURRENCY    virtual clients per scenario (32)
#   DURATION       measured time per scenario (10s)
#   WARMUP         unmeasured load before each measurement (2s)
#   TIMEOUT        limit on one request (10s)
#   SCENARIOS      which scenarios, in order ("turn list create")
#   USER_HEADER    header that names the user, given to both programs (x-user-id)
#   AUTH           how clients authenticate: header (the user header) or session (each client makes a session
#                  through /v1 with an admin key first and sends its client secret; CHATKIT_AUTH=session) (header)
#   REDIS          1: the gateway uses a private Redis for its coordination (session rate limits), as replicas do (0)
#   READY_TIMEOUT  seconds to wait for the gateway to be ready (30)
#   WORKERS        HTTP worker threads of the gateway (its default: one per CPU)
#   STORE          sqlite (the default: a fresh SQLite database), or postgres: the scaled path, a fresh
#                  PostgreSQL database on PG_URL (postgres://postgres@127.0.0.1:5432) and a private Redis, with
#                  a second table of Redis commands and PostgreSQL commits per turn (each scenario then ends
#                  with an 11 s pause, for PostgreSQL's counts to arrive)
#   TRACES         1: the gateway traces every request and exports it over OTLP/HTTP to a sink on loopback that
#                  keeps nothing (loadtest/otlp_sink.py), to measure what exporting costs; unset, it traces nothing (0)
#   CARGO_TARGET_DIR is respected when set.
#
# Details of each run go to stderr; the machine line and the table go to stdout.
set -euo pipefail
LT_NAME=run.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TIMEOUT=${TIMEOUT:-10s}
SCENARIOS=${SCENARIOS:-turn list create}
AUTH=${AUTH:-header}
REDIS=${REDIS:-0}
TRACES=${TRACES:-0}

cd "$lt_root"
lt_machine
echo "Load: $CONCURRENCY clients per scenario, $DURATION measured after $WARMUP warm-up;" \
    "the gateway and the load tester share this machine."
echo "Authentication: $AUTH$( ((REDIS)) && echo ", coordination on Redis")$( ((TRACES)) && echo ", every request traced and exported")."

STORE=${STORE:-sqlite}

lt_build release
lt_init
case $AUTH in
header) ;;
session)
    lt_admin_key=load-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    lt_gateway_env+=(CHATKIT_AUTH=session CHATKIT_ADMIN_KEYS="$lt_admin_key")
    ;;
*) lt_die "AUTH must be header or session, not $AUTH" ;;
esac
if ((TRACES)); then lt_start_trace_sink; fi
case $STORE in
    sqlite)
        redis_url=
        if ((REDIS)); then
            lt_start_redis
            redis_url=redis://127.0.0.1:$lt_redis_port
        fi
        lt_start_replicas 1 "sqlite://$lt_tmp/bench.db" "$redis_url"
        ;;
    postgres)
        echo "Store: PostgreSQL ($PG_URL) with a private Redis (the scaled path)."
        lt_start_redis
        lt_create_database database_url
        lt_count_database=${database_url##*/}
        lt_start_replicas 1 "$database_url" "redis://127.0.0.1:$lt_redis_port"
        ;;
    *) lt_die "unknown STORE \`$STORE\`; use sqlite or postgres" ;;
esac
port=${lt_ports[0]}

failed=0
lt_request_scenarios "http://127.0.0.1:$port" || failed=1
lt_request_table "" # one server, so no label column
lt_count_table

if ((failed)); then
    lt_say "at least one scenario failed; the gateway log follows"
    tail -n 50 "$lt_tmp/replica-1.log" >&2
    exit 1
fi
