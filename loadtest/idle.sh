#!/usr/bin/env bash
# Measures what an idle viewer stream costs one gateway: builds the gateway and the load tester in release mode,
# starts one gateway (SQLite, in-process fan-out; with REDIS=1 a private Redis as well) on a free loopback port, reads
# its resident memory (VmRSS in /proc/PID/status), then opens VIEWERS viewer streams on THREADS threads from
# PROCESSES load tester processes at once (`--scenario idle`: each process holds one socket per stream, so a large
# count is spread), waits until the gateway counts every stream open (chatkit_open_streams), lets it settle for
# SETTLE seconds, reads its resident memory again and its CPU time over WINDOW seconds of idleness (heartbeats only),
# and reports KiB of resident memory per idle viewer stream and µs of CPU per viewer and second. The load testers hold
# their streams for HOLD, then report (errors, events on streams that should carry only heartbeats). Everything it
# started is stopped on exit, failure and Ctrl-C included.
#
# The open-files limit of this shell (and so of the gateway and each load tester) is raised to FILES: the gateway
# holds one socket per viewer besides its own few dozen files, so VIEWERS must stay below FILES by a margin.
#
# Settings come from the environment:
#   VIEWERS           idle viewer streams (19000)
#   THREADS           threads they watch, spread evenly (190)
#   PROCESSES         load tester processes sharing them (4)
#   HOLD              how long each load tester holds its streams once open (90s)
#   SETTLE            seconds between the last stream opening and the memory reading (5)
#   WINDOW            seconds over which the idle CPU time is read, after the memory (30)
#   OPEN_CONCURRENCY  streams being opened at once, per load tester (64)
#   FILES             open-files limit for every process (20000)
#   REDIS             1 to run the gateway with a private Redis (fan-out as between replicas), else in-process
#   WORKERS           HTTP worker threads of the gateway (its default: one per CPU)
#   READY_TIMEOUT     seconds to wait for the gateway and for every stream to open (120)
#   CARGO_TARGET_DIR is respected when set.
#
# Progress and details go to stderr; the summary to stdout. The exit status is 1 when a stream failed or the run broke.
set -euo pipefail
LT_NAME=idle.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VIEWERS=${VIEWERS:-19000}
THREADS=${THREADS:-190}
PROCESSES=${PROCESSES:-4}
HOLD=${HOLD:-90s}
SETTLE=${SETTLE:-5}
WINDOW=${WINDOW:-30}
OPEN_CONCURRENCY=${OPEN_CONCURRENCY:-64}
FILES=${FILES:-20000}
READY_TIMEOUT=${READY_TIMEOUT:-120}

cd "$lt_root"
if ! [[ $VIEWERS =~ ^[1-9][0-9]*$ && $PROCESSES =~ ^[1-9][0-9]?$ && $THREADS =~ ^[1-9][0-9]*$ ]]; then
    lt_die "VIEWERS and THREADS must be positive numbers and PROCESSES 1 to 99"
fi
((VIEWERS + 500 <= FILES)) || lt_die "VIEWERS ($VIEWERS) must stay 500 below FILES ($FILES): the gateway holds them all"
((THREADS >= PROCESSES)) || lt_die "THREADS must be at least PROCESSES: each load tester makes its own"
lt_raise_fd_limit "$FILES"

lt_machine
echo "Load: $VIEWERS idle viewers on $THREADS threads from $PROCESSES load testers, one gateway" \
    "(${REDIS:+Redis }fan-out); the gateway and the load testers share this machine."

lt_build release
lt_init
idle_loaders=()
idle_cleanup() {
    local pid
    for pid in "${idle_loaders[@]}"; do lt_stop "$pid"; done
    lt_cleanup
}
trap idle_cleanup EXIT
redis_url=
if [[ ${REDIS:-0} != 0 ]]; then
    lt_start_redis
    redis_url="redis://127.0.0.1:$lt_redis_port"
fi
lt_start_replicas 1 "sqlite://$lt_tmp/idle.db" $redis_url
port=${lt_ports[0]}
gateway=${lt_server_pids[0]}

rss_kib() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$gateway/status"; }
open_streams() {
    lt_metrics "$port" | awk '/^chatkit_open_streams\{/ { n += $2 } END { print n + 0 }'
}

# The gateway has answered a readiness probe; a short pause lets its start-up allocations finish.
sleep 1
rss_before=$(rss_kib)
lt_say "gateway resident memory before: $rss_before KiB"

for k in $(seq 1 "$PROCESSES"); do
    viewers=$(((VIEWERS * k / PROCESSES) - (VIEWERS * (k - 1) / PROCESSES)))
    threads=$(((THREADS * k / PROCESSES) - (THREADS * (k - 1) / PROCESSES)))
    "$lt_loadtest" --scenario idle --url "http://127.0.0.1:$port" --threads "$threads" --viewers "$viewers" \
        --duration "$HOLD" --drain 0s --open-concurrency "$OPEN_CONCURRENCY" --setup-timeout "${READY_TIMEOUT}s" \
        --workers 1 --json >"$lt_tmp/idle-$k.json" 2>"$lt_tmp/idle-$k.log" &
    idle_loaders+=("$!")
done

deadline=$((SECONDS + READY_TIMEOUT + 1))
until (($(open_streams) >= VIEWERS)); do
    ((SECONDS < deadline)) || lt_die "not every stream opened within ${READY_TIMEOUT}s: $(open_streams) of $VIEWERS"
    for pid in "${idle_loaders[@]}"; do
        kill -0 "$pid" 2>/dev/null || lt_die "a load tester exited while opening; its log: $(cat "$lt_tmp"/idle-*.log)"
    done
    sleep 1
done
lt_say "$VIEWERS streams open; settling for ${SETTLE}s"
sleep "$SETTLE"
rss_after=$(rss_kib)
open=$(open_streams)
cpu_from=$(lt_cpu_seconds "$gateway")
sleep "$WINDOW"
cpu_to=$(lt_cpu_seconds "$gateway")
files=$(find "/proc/$gateway/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)

status=0
for k in $(seq 1 "$PROCESSES"); do
    wait "${idle_loaders[k - 1]}" || status=1
    cat "$lt_tmp/idle-$k.log" >&2
done
idle_loaders=()
errors=0
for k in $(seq 1 "$PROCESSES"); do
    line=$(<"$lt_tmp/idle-$k.json")
    errors=$((errors + $(lt_field errors_total "$line") + $(lt_field other_events "$line")))
done
lt_replica_report || status=1

per_viewer=$(awk -v a="$rss_after" -v b="$rss_before" -v n="$open" 'BEGIN { printf "%.2f", (a - b) / n }')
cpu_per=$(awk -v a="$cpu_to" -v b="$cpu_from" -v n="$open" -v w="$WINDOW" 'BEGIN { printf "%.3f", (a - b) * 1e6 / (n * w) }')
echo
echo "Summary ($open idle viewers on one gateway, $THREADS threads, $PROCESSES load testers):"
echo "  resident memory  $rss_before KiB before, $rss_after KiB with the streams open: $per_viewer KiB per idle viewer"
echo "  idle CPU         $(awk -v a="$cpu_to" -v b="$cpu_from" 'BEGIN { printf "%.2f", a - b }') s over ${WINDOW}s:" \
    "$cpu_per µs per viewer and second (heartbeats)"
echo "  gateway files    $files open"
echo "  errors           $errors (stream errors and events on idle streams)"
if ((status != 0 || errors != 0)); then
    exit 1
fi
