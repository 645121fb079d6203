#!/usr/bin/env bash
# Flame graphs of the gateway under load, for the README: builds the gateway and the load tester in release mode (or
# takes PREBUILT's), starts one gateway (echo responder, fresh SQLite database, in-process fan-out) on a loopback port,
# puts it under one load, records it with `perf record --call-graph dwarf` for a few seconds in the middle of that load,
# and writes an SVG flame graph with inferno (`cargo install inferno`).
#
#   bash loadtest/flame.sh turn|list|delivery OUT.svg [TITLE]
#
#   turn       32 clients sending echo turns (`--scenario turn`)
#   list       32 clients listing 20 threads (`--scenario list`)
#   delivery   3,000 viewer streams on 10 threads and 40 thread updates a second (`--scenario fanout`), so that the
#              gateway's time is mostly deliveries
#
# Settings: PERF (perf), INFERNO_DIR (where inferno-collapse-perf and inferno-flamegraph are; ~/.cargo/bin), SECONDS_
# RECORDED (4), and those of lib.sh (PREBUILT, USER_HEADER, CARGO_TARGET_DIR). Needs perf allowed to record a process
# (root, or kernel.perf_event_paranoid at most 1).
set -euo pipefail
LT_NAME=flame.sh
# shellcheck source=loadtest/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

what=${1:-}
out=${2:-}
[[ $what =~ ^(turn|list|delivery)$ && -n $out ]] || lt_die "usage: flame.sh turn|list|delivery OUT.svg [TITLE]"
title=${3:-"chatkit-gateway: $what"}
PERF=${PERF:-perf}
INFERNO_DIR=${INFERNO_DIR:-$HOME/.cargo/bin}
RECORDED=${SECONDS_RECORDED:-4}
command -v "$PERF" >/dev/null || lt_die "perf is missing (Debian: linux-perf)"
[[ -x $INFERNO_DIR/inferno-flamegraph ]] || lt_die "inferno is missing: cargo install inferno"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

cd "$lt_root"
lt_build release
lt_init
lt_raise_fd_limit 8000
lt_start_replicas 1 "sqlite://$lt_tmp/flame.db"
port=${lt_ports[0]}
pid=${lt_server_pids[0]}

case $what in
turn | list) load=(--scenario "$what" --concurrency 32 --duration $((RECORDED + 6))s --warmup 1s) ;;
delivery) load=(--scenario fanout --threads 10 --viewers 3000 --rate 40 --duration $((RECORDED + 10))s) ;;
esac
"$lt_loadtest" --url "http://127.0.0.1:$port" --user-header "$USER_HEADER" "${load[@]}" --json \
    >"$lt_tmp/load.json" 2>"$lt_tmp/load.err" &
load_pid=$!
# The recording starts once the load runs at full strength: after the warm-up, or once every viewer is open.
if [[ $what == delivery ]]; then
    for _ in $(seq 300); do
        open=$(lt_metrics "$port" | awk '/^chatkit_open_streams/ { s += $2 } END { print s + 0 }')
        ((open >= 3000)) && break
        sleep 0.2
    done
fi
sleep 3
"$PERF" record -F 999 --call-graph dwarf,16384 -p "$pid" -o "$lt_tmp/perf.data" -- sleep "$RECORDED" >/dev/null 2>&1
wait "$load_pid" || lt_die "the load failed: $(tail -n 5 "$lt_tmp/load.err")"
"$PERF" script -i "$lt_tmp/perf.data" 2>/dev/null | "$INFERNO_DIR/inferno-collapse-perf" --all >"$lt_tmp/folded"
"$INFERNO_DIR/inferno-flamegraph" --title "$title" --width 1400 --minwidth 0.2 <"$lt_tmp/folded" >"$out"
lt_say "wrote $out; the load: $(head -c 400 "$lt_tmp/load.json")"
