#!/usr/bin/env bash
# Run every test of chatkit-gateway: the one command for developers and CI.
#
#   bash scripts/test.sh [extra cargo test args...]
#
# With no arguments it also runs the load test in CI mode (loadtest/scenarios.sh --ci).
#
# Works on a fresh Debian 12 machine with the Rust toolchain, python3 and root:
# it installs what is missing (redis-server, PostgreSQL, nginx, promtool, Chromium,
# Node.js with playwright-core, a Python venv with the reference SDK openai-chatkit,
# PyYAML and kubernetes-validate) and leaves alone whatever is already working.
# Safe to run again; a second run only runs the checks and tests.
#
# Environment:
#   TEST_DATABASE_URL            PostgreSQL URL for the tests; exported. Default:
#                                postgres://postgres@127.0.0.1:5432/postgres, for which
#                                the script provisions a local server. Any other value
#                                is used as is and local PostgreSQL is left alone.
#   CHATKIT_VENV                 venv for the conformance validator (default: $ROOT/.venv-conformance)
#   CHATKIT_CONFORMANCE_PYTHON   exported: the venv's python, for the conformance test
#   CARGO_TARGET_DIR             respected if set, never set here
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CHATKIT_VERSION="1.6.5"
DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
export DEBIAN_FRONTEND=noninteractive

step() { echo "==> $*"; }
info() { echo "    $*"; }
die() {
    echo "error: $*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

APT_UPDATED=0
# apt_install PACKAGE...: install Debian packages (root only, `apt-get update` at most once).
apt_install() {
    if ! is_root; then
        die "missing $*; install it as root with: apt-get install -y $*"
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        info "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    info "apt-get install -y $*"
    apt-get install -y -qq "$@" >/dev/null
}

# wait_for SECONDS COMMAND...: retry COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
    local tries=$(($1 * 2))
    shift
    while ! "$@"; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.5
    done
}

# --------------------------------------------------------------------------- #
step "1/4 redis"
# --------------------------------------------------------------------------- #
# Tests start their own redis-server on free ports; a default instance on 6379
# is only a convenience, so it is started without persistence.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server
fi
info "$(redis-server --version)"

redis_answers() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }
if redis_answers; then
    info "redis answers on 127.0.0.1:6379"
else
    info "starting redis-server on 127.0.0.1:6379 (no persistence)"
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no >/dev/null
    wait_for 10 redis_answers || die "redis-server did not answer on 127.0.0.1:6379"
fi

# --------------------------------------------------------------------------- #
step "2/4 PostgreSQL"
# --------------------------------------------------------------------------- #
pg_answers() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432
}

# Can `postgres` connect over TCP without a password (trust auth)?
pg_trusts() {
    command -v psql >/dev/null 2>&1 &&
        env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
            psql "$DEFAULT_DATABASE_URL" -w -q -tA -c 'select 1' >/dev/null 2>&1
}

# The newest PostgreSQL version with configuration under /etc/postgresql, else installed binaries.
pg_version() {
    local v
    v="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$v" ]; then
        v="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    fi
    echo "$v"
}

if [ -n "${TEST_DATABASE_URL:-}" ] && [ "$TEST_DATABASE_URL" != "$DEFAULT_DATABASE_URL" ]; then
    info "TEST_DATABASE_URL is set; using it and leaving local PostgreSQL alone"
else
    if pg_answers; then
        info "PostgreSQL answers on 127.0.0.1:5432"
    else
        if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(pg_version)" ]; then
            apt_install postgresql
        fi
        if ! pg_answers; then
            is_root || die "PostgreSQL is not running on 127.0.0.1:5432; start it (as root) and run again"
            PG_VERSION="$(pg_version)"
            [ -n "$PG_VERSION" ] || die "no PostgreSQL version found under /etc/postgresql"
            if [ ! -d "/etc/postgresql/$PG_VERSION/main" ]; then
                info "creating cluster $PG_VERSION/main"
                pg_createcluster --port 5432 "$PG_VERSION" main >/dev/null
            fi
            if ! pg_ctlcluster "$PG_VERSION" main status >/dev/null 2>&1; then
                info "starting cluster $PG_VERSION/main"
                pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
            fi
            wait_for 30 pg_answers || die "PostgreSQL $PG_VERSION/main did not answer on 127.0.0.1:5432"
        fi
    fi

    if pg_trusts; then
        info "user postgres connects over TCP with trust auth"
    else
        is_root || die "user postgres cannot connect to 127.0.0.1:5432 without a password; set 'trust' for local, 127.0.0.1/32 and ::1/128 in pg_hba.conf (as root), or set TEST_DATABASE_URL"
        PG_VERSION="$(pg_version)"
        HBA="/etc/postgresql/$PG_VERSION/main/pg_hba.conf"
        [ -f "$HBA" ] || die "user postgres cannot connect without a password and $HBA does not exist; set TEST_DATABASE_URL"
        MARKER="# chatkit-gateway scripts/test.sh: trust local connections for tests"
        if ! grep -qF "$MARKER" "$HBA"; then
            info "setting trust auth for local, 127.0.0.1 and ::1 in $HBA (backup: $HBA.orig)"
            [ -f "$HBA.orig" ] || cp -p "$HBA" "$HBA.orig"
            # pg_hba.conf is read top-down, first match wins: put the trust lines first.
            {
                echo "$MARKER"
                echo "local   all   all                  trust"
                echo "host    all   all   127.0.0.1/32   trust"
                echo "host    all   all   ::1/128        trust"
                cat "$HBA"
            } >"$HBA.new"
            chown --reference="$HBA" "$HBA.new"
            chmod --reference="$HBA" "$HBA.new"
            mv "$HBA.new" "$HBA"
        fi
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main reload
        wait_for 10 pg_trusts || die "user postgres still cannot connect to 127.0.0.1:5432 with trust auth (see $HBA)"
    fi
fi
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-$DEFAULT_DATABASE_URL}"
info "TEST_DATABASE_URL=$TEST_DATABASE_URL"

# --------------------------------------------------------------------------- #
step "3/4 Python venv for the conformance validator (openai-chatkit $CHATKIT_VERSION)"
# --------------------------------------------------------------------------- #
VENV="${CHATKIT_VENV:-$ROOT/.venv-conformance}"
PY="$VENV/bin/python"
# A venv whose creation failed half-way (no ensurepip) has a python but no pip.
venv_ok() { [ -x "$PY" ] && "$PY" -m pip --version >/dev/null 2>&1; }
if ! venv_ok; then
    info "creating venv $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1 || ! venv_ok; then
        info "python3 -m venv failed; installing python3-venv"
        apt_install python3-venv
        python3 -m venv "$VENV" || die "could not create venv $VENV"
        venv_ok || die "venv $VENV has no working pip"
    fi
fi

chatkit_ok() {
    "$PY" - "$CHATKIT_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata
import sys

import chatkit  # noqa: F401

sys.exit(0 if importlib.metadata.version("openai-chatkit") == sys.argv[1] else 1)
EOF
}
if chatkit_ok; then
    info "openai-chatkit $CHATKIT_VERSION present in $VENV"
else
    info "pip install openai-chatkit==$CHATKIT_VERSION"
    "$PY" -m pip install --quiet --disable-pip-version-check "openai-chatkit==$CHATKIT_VERSION"
    chatkit_ok || die "openai-chatkit $CHATKIT_VERSION is not importable from $PY"
fi
export CHATKIT_CONFORMANCE_PYTHON="$PY"
info "CHATKIT_CONFORMANCE_PYTHON=$CHATKIT_CONFORMANCE_PYTHON"
"$PY" tests/conformance/validate.py --self-test

# --------------------------------------------------------------------------- #
step "3b/4 tools for the deploy checks (PyYAML, kubernetes-validate, nginx, promtool)"
# --------------------------------------------------------------------------- #
# tests/deploy.rs parses every YAML file under deploy/ with PyYAML and checks the
# Kubernetes manifests against the API schemas with kubernetes-validate (both in
# the venv above), runs nginx with deploy/nginx/nginx.conf (`nginx -t`, and in
# front of test replicas) and `promtool check` and `promtool test rules` on
# deploy/prometheus/. The Debian packages are installed without their recommends
# (prometheus would bring node-exporter); no service of theirs is started or
# needed: the tests run the nginx and promtool binaries themselves.
KUBERNETES_VALIDATE_VERSION="1.37.0"
yaml_ok() { "$PY" -c 'import yaml' >/dev/null 2>&1; }
if yaml_ok; then
    info "PyYAML present in $VENV"
else
    info "pip install PyYAML"
    "$PY" -m pip install --quiet --disable-pip-version-check PyYAML
    yaml_ok || die "PyYAML is not importable from $PY"
fi
kubernetes_validate_ok() {
    "$PY" - "$KUBERNETES_VALIDATE_VERSION" <<'PYEOF' >/dev/null 2>&1
import importlib.metadata
import sys

import kubernetes_validate  # noqa: F401

sys.exit(0 if importlib.metadata.version("kubernetes-validate") == sys.argv[1] else 1)
PYEOF
}
if kubernetes_validate_ok; then
    info "kubernetes-validate $KUBERNETES_VALIDATE_VERSION present in $VENV"
else
    info "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    "$PY" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    kubernetes_validate_ok || die "kubernetes-validate $KUBERNETES_VALIDATE_VERSION is not importable from $PY"
fi

nginx_bin() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }; }
if [ -z "$(nginx_bin)" ]; then
    is_root || die "missing nginx; install it as root with: apt-get install -y --no-install-recommends nginx"
    apt_install --no-install-recommends nginx
fi
[ -n "$(nginx_bin)" ] || die "nginx is not installed after apt-get install nginx"
export CHATKIT_NGINX="${CHATKIT_NGINX:-$(nginx_bin)}"
info "CHATKIT_NGINX=$CHATKIT_NGINX ($("$CHATKIT_NGINX" -v 2>&1))"

if ! command -v promtool >/dev/null 2>&1; then
    is_root || die "missing promtool; install it as root with: apt-get install -y --no-install-recommends prometheus"
    apt_install --no-install-recommends prometheus
fi
command -v promtool >/dev/null 2>&1 || die "promtool is not installed after apt-get install prometheus"
export CHATKIT_PROMTOOL="${CHATKIT_PROMTOOL:-$(command -v promtool)}"
info "CHATKIT_PROMTOOL=$CHATKIT_PROMTOOL ($("$CHATKIT_PROMTOOL" --version 2>&1 | sed -n 1p))"

# --------------------------------------------------------------------------- #
step "3c/4 browser tests (Node.js, Chromium, playwright-core)"
# --------------------------------------------------------------------------- #
# tests/browser.rs drives the chat page in headless Chromium through
# tests/browser/e2e.mjs: Debian's chromium (no browser is ever downloaded) and
# playwright-core, pinned in tests/browser/package.json and package-lock.json,
# which needs Node.js 20 or later.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
NODE_MAJOR="$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/')"
[ "${NODE_MAJOR:-0}" -ge 20 ] 2>/dev/null ||
    die "the browser tests need Node.js 20 or later (playwright-core), found $(node --version 2>/dev/null || echo none)"
info "node $(node --version), npm $(npm --version)"

CHROMIUM="${CHATKIT_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
    [ -z "${CHATKIT_CHROMIUM:-}" ] || die "CHATKIT_CHROMIUM=$CHATKIT_CHROMIUM is not an executable"
    apt_install chromium
fi
[ -x "$CHROMIUM" ] || die "chromium is not at $CHROMIUM after apt-get install chromium"
export CHATKIT_CHROMIUM="$CHROMIUM"
info "CHATKIT_CHROMIUM=$CHATKIT_CHROMIUM ($("$CHATKIT_CHROMIUM" --version 2>/dev/null))"

PLAYWRIGHT_VERSION="$(node -p 'require("./tests/browser/package.json").dependencies["playwright-core"]')"
playwright_ok() {
    [ "$(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version' 2>/dev/null)" = "$PLAYWRIGHT_VERSION" ]
}
if playwright_ok; then
    info "playwright-core $PLAYWRIGHT_VERSION present in tests/browser/node_modules"
else
    info "npm ci in tests/browser (playwright-core $PLAYWRIGHT_VERSION)"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    playwright_ok || die "playwright-core $PLAYWRIGHT_VERSION is not in tests/browser/node_modules after npm ci"
fi

# --------------------------------------------------------------------------- #
step "4/4 cargo fmt, clippy, test"
# --------------------------------------------------------------------------- #
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
    # three on PostgreSQL and Redis) for 10 s each with small numbers, on the
    # debug build just made; it fails unless nothing is lost and nothing errs.
    step "load test, CI mode (loadtest/scenarios.sh --ci)"
    PG_URL="${TEST_DATABASE_URL%/*}" bash loadtest/scenarios.sh --ci
fi

step "all tests passed"
# One closing line with the totals of every test binary, so that the last line
# a reader sees is not the (empty) doc-test summary of the last crate.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$LOG"
