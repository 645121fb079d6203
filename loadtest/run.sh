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
#   READY_TIMEOUT  seconds to wait for the gateway to be ready (30)
#   WORKERS        HTTP worker threads of the gateway (its default: one per CPU)
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

cd "$lt_root"
lt_machine
echo "Load: $CONCURRENCY clients per scenario, $DURATION measured after $WARMUP warm-up;" \
    "the gateway and the load tester share this machine."

lt_build release
lt_init
lt_start_replicas 1 "sqlite://$lt_tmp/bench.db"
port=${lt_ports[0]}

failed=0
lt_request_scenarios "http://127.0.0.1:$port" || failed=1
lt_request_table "" # one server, so no label column

if ((failed)); then
    lt_say "at least one scenario failed; the gateway log follows"
    tail -n 50 "$lt_tmp/replica-1.log" >&2
    exit 1
fi
