#!/usr/bin/env bash
# Measures what the agent hop costs: builds the gateway and the load tester in release mode and runs the `turn`
# scenario on loopback against a gateway with the built-in echo responder and against a gateway whose agent backend
# (CHATKIT_AGENT_URL) is the load tester's minimal echo agent (`chatkit-loadtest agent-echo`), each gateway with a
# fresh SQLite database. Each gateway gets two loads:
#   - a light one (LATENCY_CLIENTS clients, one by default) that does not saturate the machine, so that the latency
#     a turn gains is the hop's own and not time spent queueing;
#   - a saturating one (CONCURRENCY clients), for the turns per second each sustains. (Under saturation latency only
#     restates throughput: with N clients each waiting for its answer, p50 is about N / turns per second.)
# Prints every run, then the latency the hop adds at p50 and p99 under the light load and the ratio of turns per
# second under the saturating one (medians over ROUNDS rounds, which alternate echo and agent), as Markdown, against
# the aims of issue 13 (at most +1 ms at p50 and +3 ms at p99, at least half the turns per second). Every process
# started here is stopped on exit, failure and Ctrl-C.
#
# Settings come from the environment:
#   LATENCY_CLIENTS  virtual clients of the light load (1)
#   CONCURRENCY      virtual clients of the saturating load (32)
#   ROUNDS           rounds, each measuring echo then agent (1)
#   DURATION         measured time per run (10s)
#   WARMUP           unmeasured load before each measurement (2s)
#   TIMEOUT          limit on one request (10s)
#   USER_HEADER      header that names the user, given to both programs (x-user-id)
#   READY_TIMEOUT    seconds to wait for the agent and each gateway to be ready (30)
#   WORKERS          HTTP worker threads of the gateway (its default: one per CPU)
#   HISTORY_ITEMS    thread items sent with each agent request (the gateway's default, 20)
#   CARGO_TARGET_DIR is respected when set.
#
# Details of each run go to stderr; the machine line and the tables go to stdout.
set -euo pipefail
LT_NAME=agent.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LATENCY_CLIENTS=${LATENCY_CLIENTS:-1}
CONCURRENCY=${CONCURRENCY:-32}
ROUNDS=${ROUNDS:-1}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
TIMEOUT=${TIMEOUT:-10s}
# Read by lt_request_scenarios: only turns go through the responder, and so through the agent.
SCENARIOS=turn
SATURATING_CLIENTS=$CONCURRENCY

cd "$lt_root"
lt_machine
echo "Loads: $LATENCY_CLIENTS and $SATURATING_CLIENTS clients, $DURATION measured after $WARMUP warm-up each;" \
    "$ROUNDS round(s); the gateway, the echo agent and the load tester share this machine."

lt_build release
lt_init

# Shows the end of every log of this run, for a run that failed.
show_logs() {
    local log
    for log in "$lt_tmp"/*.log; do
        lt_say "the end of $(basename "$log"):"
        tail -n 20 "$log" >&2
    done
}

# measure RESPONDER ROUND: one gateway answering with RESPONDER (echo or agent), under both loads. Each run's report
# lands in "$lt_tmp/RESPONDER CLIENTS #ROUND-turn.json", and its row in lt_rows.
errors=0
measure() {
    local responder=$1 round=$2 clients
    lt_gateway_env=()
    if [[ $responder == agent ]]; then
        lt_start_echo_agent
        if [[ -n ${HISTORY_ITEMS:-} ]]; then lt_gateway_env+=(CHATKIT_AGENT_HISTORY_ITEMS="$HISTORY_ITEMS"); fi
    fi
    lt_start_replicas 1 "sqlite://$lt_tmp/$responder-$round.db"
    for clients in "$LATENCY_CLIENTS" "$SATURATING_CLIENTS"; do
        CONCURRENCY=$clients lt_request_scenarios "http://127.0.0.1:${lt_ports[0]}" "$responder $clients #$round" || {
            show_logs
            lt_die "the run of $clients clients against the $responder responder failed"
        }
        errors=$((errors + lt_errors))
    done
    lt_teardown
}

for round in $(seq 1 "$ROUNDS"); do
    measure echo "$round"
    measure agent "$round"
done

lt_request_table "responder clients #round"

# median RESPONDER CLIENTS KEY: the median over the rounds of KEY in those runs' reports.
median() {
    local round values=()
    for round in $(seq 1 "$ROUNDS"); do
        values+=("$(lt_field "$3" "$(<"$lt_tmp/$1 $2 #$round-turn.json")")")
    done
    printf '%s\n' "${values[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "Turns through an agent backend (aims: at most +1 ms at p50 and +3 ms at p99 with $LATENCY_CLIENTS client(s)," \
    "at least 0.5 of the turns/s with $SATURATING_CLIENTS; medians of $ROUNDS round(s))."
echo
echo "| added p50 ms | added p99 ms | turns/s ratio | aims met (and no errors) |"
echo "|---:|---:|---:|---|"
awk -v e50="$(median echo "$LATENCY_CLIENTS" latency_p50_ms)" -v a50="$(median agent "$LATENCY_CLIENTS" latency_p50_ms)" \
    -v e99="$(median echo "$LATENCY_CLIENTS" latency_p99_ms)" -v a99="$(median agent "$LATENCY_CLIENTS" latency_p99_ms)" \
    -v erps="$(median echo "$SATURATING_CLIENTS" rps)" -v arps="$(median agent "$SATURATING_CLIENTS" rps)" \
    -v errors="$errors" 'BEGIN {
        p50 = a50 - e50; p99 = a99 - e99; ratio = arps / erps
        met = (p50 <= 1 && p99 <= 3 && ratio >= 0.5 && errors == 0) ? "yes" : "no"
        printf "| %+.2f | %+.2f | %.2f | %s |\n", p50, p99, ratio, met
    }'
