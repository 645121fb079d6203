#!/usr/bin/env bash
# Run every test of chatkit-gateway: the one command for developers and CI.
#
#   bash scripts/test.sh [extra cargo test args...]
#
# First scripts/provision.sh sets the machine up (see its table: what it installs, how it finds each thing present,
# and the variables it exports for the tests: TEST_DATABASE_URL, CHATKIT_CONFORMANCE_PYTHON, CHATKIT_NGINX,
# CHATKIT_PROMTOOL, CHATKIT_CHROMIUM). Then the conformance validator's self-test, cargo fmt --check,
# clippy -D warnings and cargo test --workspace. With no arguments it also runs the load test in CI mode
# (loadtest/scenarios.sh --ci) and the chaos run in CI mode (loadtest/chaos.sh --ci, on one Redis and on a Redis
# Cluster), on binaries built with the tests' own feature resolution, so that no dependency is compiled twice. The
# last line gives the totals of every test binary.
#
# Works on a fresh Debian 12 machine with the Rust toolchain, python3 and root; safe to run again (a second run only
# runs the checks and tests).
#
# Environment: what scripts/provision.sh reads (TEST_DATABASE_URL, CHATKIT_VENV, CHATKIT_NGINX, CHATKIT_PROMTOOL,
# CHATKIT_CHROMIUM); CARGO_TARGET_DIR is respected if set, never set here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { echo "==> $*"; }
info() { echo "    $*"; }

# provision.sh prints its progress on stderr and only the export lines on stdout. The assignment stops this script
# when it fails, which `eval "$(...)"` alone would not.
exports="$(bash scripts/provision.sh)"
eval "$exports"
while IFS= read -r line; do info "$line"; done <<<"$exports"

step "conformance validator self-test"
"$CHATKIT_CONFORMANCE_PYTHON" tests/conformance/validate.py --self-test

step "cargo fmt, clippy, test"
info "cargo fmt --all -- --check"
cargo fmt --all -- --check
info "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
info "cargo test --workspace $*"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
cargo test --workspace "$@" 2>&1 | tee "$LOG"

if [ "$#" -eq 0 ]; then
    # The load test in CI mode: both standard scenarios (one replica on SQLite;
    # three on PostgreSQL and Redis) for 10 s each with small numbers; it fails
    # unless nothing is lost and nothing errs. Its binaries are the debug build
    # with the features `cargo test --workspace` resolved just now, so that only
    # the load tester's own binary is compiled, no dependency a second time.
    step "load test, CI mode (loadtest/scenarios.sh --ci)"
    PG_URL="${TEST_DATABASE_URL%/*}" bash loadtest/scenarios.sh --ci
    # The chaos run in CI mode (about 30 s each on the same binaries), on one Redis
    # and on a Redis Cluster: replicas killed, paused past their lease and Redis
    # restarted (or a cluster master killed) under the mixed load, then every
    # thread read back from PostgreSQL; it fails on a lost or duplicated turn, an
    # interleaved or reordered thread, or a message a viewer missed unannounced.
    step "chaos run, CI mode (loadtest/chaos.sh --ci)"
    PG_URL="${TEST_DATABASE_URL%/*}" bash loadtest/chaos.sh --ci
    step "chaos run on a Redis Cluster, CI mode (REDIS_MODE=cluster loadtest/chaos.sh --ci)"
    PG_URL="${TEST_DATABASE_URL%/*}" REDIS_MODE=cluster bash loadtest/chaos.sh --ci
fi

step "all tests passed"
# One closing line with the totals of every test binary, so that the last line
# a reader sees is not the (empty) doc-test summary of the last crate.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$LOG"
