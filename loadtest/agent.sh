#!/usr/bin/env bash
# Measures what the agent hop costs: builds the gateway and the load tester in release mode and runs the `turn`
# scenario twice on loopback, first against a gateway with the built-in echo responder, then against a gateway whose
# agent backend (CHATKIT_AGENT_URL) is the load tester's minimal echo agent (`chatkit-loadtest agent-echo`), each
# gateway with a fresh SQLite database. Prints both rows, then the latency the hop adds at p50 and p99 and the ratio of
# turns per second, as Markdown, against the aims of issue 13 (at most +1 ms at p50 and +3 ms at p99, at least half
# the turns per second). Every process started here is stopped on exit, failure and Ctrl-C.
#
# Settings come from the environment:
#   CONCURRENCY    virtual clients (32)
#   DURATION       measured time per run (10s)
#   WARMUP         unmeasured load before each measurement (2s)
#   TIMEOUT        limit on one request (10s)
#   USER_HEADER    header that names the user, given to both programs (x-user-id)
#   READY_TIMEOUT  seconds to wait for the agent and each gateway to be ready (30)
#   WORKERS        HTTP worker threads of the gateway (its default: one per CPU)
#   HISTORY_ITEMS  thread items sent with each agent request (the gateway's default, 20)
#   CARGO_TARGET_DIR is respected when set.
#
# Details of each run go to stderr; the machine line and the tables go to stdout.
set -euo pipefail
LT_NAME=agent.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONCURRENCY=${CONCURRENCY:-32}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TIMEOUT=${TIMEOUT:-10s}
# Read by lt_request_scenarios: only turns go through the responder, and so through the agent.
SCENARIOS=turn

cd "$lt_root"
lt_machine
echo "Load: $CONCURRENCY clients, $DURATION measured after $WARMUP warm-up; the gateway, the echo agent and the" \
    "load tester share this machine."

lt_build release
lt_init

agent_listens() (exec 3<>"/dev/tcp/127.0.0.1/$1")

# Shows the end of every log of this run, for a run that failed.
show_logs() {
    local log
    for log in "$lt_tmp"/*.log; do
        lt_say "the end of $(basename "$log"):"
        tail -n 20 "$log" >&2
    done
}

# The built-in echo responder.
lt_start_replicas 1 "sqlite://$lt_tmp/echo.db"
lt_request_scenarios "http://127.0.0.1:${lt_ports[0]}" echo || {
    show_logs
    lt_die "the run against the built-in echo responder failed"
}
echo_errors=$lt_errors
lt_teardown

# The same gateway with the echo agent behind it.
agent_port=
lt_free_port agent_port
"$lt_loadtest" agent-echo --port "$agent_port" >"$lt_tmp/agent.log" 2>&1 &
# Kept with the servers under test, so that the cleanup stops it too.
lt_server_pids+=($!)
lt_await "the echo agent on 127.0.0.1:$agent_port" "${lt_server_pids[0]}" "$lt_tmp/agent.log" \
    $((SECONDS + READY_TIMEOUT + 1)) agent_listens "$agent_port"
lt_say "echo agent (pid ${lt_server_pids[0]}) on 127.0.0.1:$agent_port"
# The echo agent does not verify signatures, but the gateway needs a secret to sign with.
lt_gateway_env=(CHATKIT_AGENT_URL="http://127.0.0.1:$agent_port/agent"
    CHATKIT_AGENT_SECRET="whsec_$(head -c 32 /dev/urandom | base64)")
if [[ -n ${HISTORY_ITEMS:-} ]]; then lt_gateway_env+=(CHATKIT_AGENT_HISTORY_ITEMS="$HISTORY_ITEMS"); fi
lt_start_replicas 1 "sqlite://$lt_tmp/agent.db"
lt_request_scenarios "http://127.0.0.1:${lt_ports[0]}" agent || {
    show_logs
    lt_die "the run through the echo agent failed"
}
agent_errors=$lt_errors

lt_request_table responder
echo
echo "Turns through an agent backend (aims: at most +1 ms at p50 and +3 ms at p99, at least 0.5 of the turns/s)."
echo
echo "| added p50 ms | added p99 ms | turns/s ratio | aims met (and no errors) |"
echo "|---:|---:|---:|---|"
echo_line=$(<"$lt_tmp/echo-turn.json")
agent_line=$(<"$lt_tmp/agent-turn.json")
awk -v e50="$(lt_field latency_p50_ms "$echo_line")" -v a50="$(lt_field latency_p50_ms "$agent_line")" \
    -v e99="$(lt_field latency_p99_ms "$echo_line")" -v a99="$(lt_field latency_p99_ms "$agent_line")" \
    -v erps="$(lt_field rps "$echo_line")" -v arps="$(lt_field rps "$agent_line")" \
    -v errors=$((echo_errors + agent_errors)) 'BEGIN {
        p50 = a50 - e50; p99 = a99 - e99; ratio = arps / erps
        met = (p50 <= 1 && p99 <= 3 && ratio >= 0.5 && errors == 0) ? "yes" : "no"
        printf "| %+.2f | %+.2f | %.2f | %s |\n", p50, p99, ratio, met
    }'
