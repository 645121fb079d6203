#!/usr/bin/env bash
# Set this machine up for the tests of chatkit-gateway: install, create and start what they need, and leave alone
# whatever already works. `scripts/test.sh` runs it first; it can also run alone.
#
#   bash scripts/provision.sh              progress on stderr; on stdout one `export NAME=value` line a variable
#   eval "$(bash scripts/provision.sh)"    the same, and the variables set in this shell
#
# Works on a fresh Debian 12 machine with python3 and root (apt-get reachable); as another user it stops at the first
# missing thing and says how to install it. A second run finds everything present and changes nothing.
#
# PLAN, the table below, is what it provides, one row a thing, taken in order. A row's "present when" runs first; when
# it fails, "else" installs (or creates, or starts) the thing, and "present when" must pass afterwards. "exports"
# names a variable the tests read and the function that prints its value. Both commands are shell code, run when
# their row comes up; every function they name is defined further down, with what it does.
# shellcheck disable=SC2016 # The cells are code, expanded when their row runs.
PLAN=(
    # thing                       | present when                                            | else                                           | exports
    'redis-server                 | have redis-server redis-cli                             | apt_install redis-server                       |'
    'Redis on 127.0.0.1:6379      | redis_answers                                           | start_redis                                    |'
    'PostgreSQL on 127.0.0.1:5432 | local_pg pg_answers                                     | start_pg                                       |'
    'PostgreSQL trust auth        | local_pg pg_trusts                                      | trust_pg                                       | TEST_DATABASE_URL=database_url'
    'Python venv                  | venv_ok                                                 | make_venv                                      | CHATKIT_CONFORMANCE_PYTHON=venv_python'
    'openai-chatkit (venv)        | pip_has openai-chatkit==1.6.5 chatkit                   | pip_install openai-chatkit==1.6.5              |'
    'openai (venv)                | pip_has openai==3.0.0 openai                            | pip_install openai==3.0.0                      |'
    'openai-agents (venv)         | pip_has openai-agents==0.24.0 agents                    | pip_install openai-agents==0.24.0              |'
    'PyYAML (venv)                | pip_has PyYAML yaml                                     | pip_install PyYAML                             |'
    'kubernetes-validate (venv)   | pip_has kubernetes-validate==1.37.0 kubernetes_validate | pip_install kubernetes-validate==1.37.0        |'
    'jsonschema (venv)            | pip_has jsonschema jsonschema                           | pip_install jsonschema                         |'
    'moto server (venv)           | pip_has moto==5.2.6 moto.server                         | pip_install "moto[server]==5.2.6"              |'
    'MCP SDK (venv)               | pip_has mcp==2.3.0 mcp.server.mcpserver                 | pip_install mcp==2.3.0                         |'
    'nginx                        | nginx_bin                                               | apt_install --no-install-recommends nginx      | CHATKIT_NGINX=nginx_path'
    'promtool                     | have promtool                                           | apt_install --no-install-recommends prometheus | CHATKIT_PROMTOOL=promtool_path'
    'Node.js and npm              | have node npm                                           | apt_install nodejs npm                         |'
    'Node.js 20 or later          | node_at_least 20                                        | refuse_old_node                                |'
    'Chromium                     | chromium_ok                                             | install_chromium                               | CHATKIT_CHROMIUM=chromium_path'
    'playwright-core, axe-core    | playwright_ok                                           | npm_ci                                         |'
)
# Why each is needed: tests/integration/replicas.rs and others start their own redis-server on free ports (the default instance is
# a convenience; tests/integration/redis_cluster.rs makes a six-node Redis Cluster of them with redis-cli, Redis 7 or later); the PostgreSQL store tests and the load test's postgres scenario make throwaway databases on
# TEST_DATABASE_URL; tests/integration/conformance.rs and tests/integration/rest_api.rs validate with the reference SDK openai-chatkit;
# tests/integration/responses_oracle.rs runs openai-chatkit's Agents SDK mapping (tests/conformance/responses_oracle.py) on
# pinned openai and openai-agents: openai 3.1.0 and later type the `annotation` of `response.output_text.annotation.added`
# with classes of that event's own module, which openai-chatkit 1.6.5's TypeAdapter for the output-text annotations
# refuses, so every cited answer ends in a `stream.error`; 3.0.0 still leaves it untyped, and 0.24.0 (the example agent's
# pin) is an openai-agents that accepts it. The reference's own lock (openai 2.34.0, openai-agents 0.15.3) gives the
# same oracle output on every fixture; that pair is not used because 0.24.0 is what examples/agent-python pins.
# tests/integration/deploy/ parses deploy/ with PyYAML, checks the Kubernetes manifests with kubernetes-validate and runs nginx
# and promtool; tests/integration/agent.rs checks the agent wire format's JSON Schema with jsonschema;
# tests/integration/blob_contract.rs and shared_attachments.rs run moto's S3-compatible server (python -m moto.server);
# tests/integration/mcp_tools.rs runs tests/mcp/server.py, an MCP server on the Python MCP SDK (`mcp`, its MCPServer);
# tests/integration/browser.rs drives the chat page in Debian's Chromium (no browser is ever downloaded) through
# playwright-core, pinned in tests/browser/package.json and package-lock.json.
#
# Settings (environment):
#   TEST_DATABASE_URL   PostgreSQL URL for the tests. Default: postgres://postgres@127.0.0.1:5432/postgres, for which
#                       the local server is provisioned; any other value is used as is, and local PostgreSQL left alone.
#   CHATKIT_VENV        venv of the Python checks (default: $ROOT/.venv-conformance)
#   CHATKIT_NGINX, CHATKIT_PROMTOOL, CHATKIT_CHROMIUM
#                       binaries to use instead of the ones found or installed
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Only the export lines go to stdout (fd 3), so that a caller can evaluate them; everything else, the installers'
# chatter included, goes to stderr.
exec 3>&1 1>&2

DEFAULT_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
VENV="${CHATKIT_VENV:-$ROOT/.venv-conformance}"
PY="$VENV/bin/python"
export DEBIAN_FRONTEND=noninteractive

info() { echo "    $*"; }
die() {
    echo "error: $*"
    exit 1
}
is_root() { [ "$(id -u)" -eq 0 ]; }

# have COMMAND...: every COMMAND is on PATH.
have() {
    local command
    for command in "$@"; do
        command -v "$command" >/dev/null 2>&1 || return 1
    done
}

APT_UPDATED=0
# apt_install [OPTION...] PACKAGE...: installs Debian packages (root only; `apt-get update` at most once a run).
apt_install() {
    is_root || die "not root: install it as root with: apt-get install -y $*"
    if [ "$APT_UPDATED" -eq 0 ]; then
        info "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    info "apt-get install -y $*"
    apt-get install -y -qq "$@" >/dev/null
}

# wait_for SECONDS COMMAND...: retries COMMAND every 0.5 s until it succeeds or time runs out.
wait_for() {
    local tries=$(($1 * 2))
    shift
    while ! "$@"; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.5
    done
}

# --- Redis -------------------------------------------------------------------------------------------------------- #
redis_answers() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

# start_redis: starts a default instance on 127.0.0.1:6379 without persistence, since it only serves as a convenience.
start_redis() {
    info "starting redis-server on 127.0.0.1:6379 (no persistence)"
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save "" --appendonly no >/dev/null
    wait_for 10 redis_answers || die "redis-server did not answer on 127.0.0.1:6379"
}

# --- PostgreSQL --------------------------------------------------------------------------------------------------- #
# local_pg CHECK...: passes without looking when TEST_DATABASE_URL names another server than the local default (which
# is then left alone, as it says once), else runs CHECK.
PG_ELSEWHERE_SAID=0
local_pg() {
    if [ -n "${TEST_DATABASE_URL:-}" ] && [ "$TEST_DATABASE_URL" != "$DEFAULT_DATABASE_URL" ]; then
        # On stderr, since the plan silences what a check prints on stdout.
        [ "$PG_ELSEWHERE_SAID" -eq 1 ] || info "TEST_DATABASE_URL names another server; local PostgreSQL is left alone" >&2
        PG_ELSEWHERE_SAID=1
        return 0
    fi
    "$@"
}

database_url() { echo "${TEST_DATABASE_URL:-$DEFAULT_DATABASE_URL}"; }

pg_answers() { have pg_isready && pg_isready -q -h 127.0.0.1 -p 5432; }

# pg_trusts: user postgres connects over TCP without a password (trust auth).
pg_trusts() {
    have psql &&
        env -u PGPASSWORD PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=5 \
            psql "$DEFAULT_DATABASE_URL" -w -q -tA -c 'select 1' >/dev/null 2>&1
}

# pg_version: the newest PostgreSQL version with a configuration under /etc/postgresql, else the newest installed.
pg_version() {
    local v
    v="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$v" ]; then
        v="$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)"
    fi
    echo "$v"
}

# start_pg: installs the postgresql package when it is missing, then creates the cluster <version>/main on port 5432
# when there is none, and starts it.
start_pg() {
    if ! have pg_ctlcluster || [ -z "$(pg_version)" ]; then
        apt_install postgresql
    fi
    # Installing the package may have created and started a cluster already.
    pg_answers && return 0
    is_root || die "PostgreSQL is not running on 127.0.0.1:5432; start it (as root) and run again"
    local version
    version="$(pg_version)"
    [ -n "$version" ] || die "no PostgreSQL version found under /etc/postgresql"
    if [ ! -d "/etc/postgresql/$version/main" ]; then
        info "creating cluster $version/main"
        pg_createcluster --port 5432 "$version" main >/dev/null
    fi
    if ! pg_ctlcluster "$version" main status >/dev/null 2>&1; then
        info "starting cluster $version/main"
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi
    wait_for 30 pg_answers || die "PostgreSQL $version/main did not answer on 127.0.0.1:5432"
}

# trust_pg: puts trust lines for local, 127.0.0.1 and ::1 first in pg_hba.conf (once, marked, with a backup in
# pg_hba.conf.orig) and reloads the cluster.
trust_pg() {
    is_root || die "user postgres cannot connect to 127.0.0.1:5432 without a password; set 'trust' for local," \
        "127.0.0.1/32 and ::1/128 in pg_hba.conf (as root), or set TEST_DATABASE_URL"
    local version hba marker
    version="$(pg_version)"
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    [ -f "$hba" ] || die "user postgres cannot connect without a password and $hba does not exist; set TEST_DATABASE_URL"
    marker="# chatkit-gateway scripts/test.sh: trust local connections for tests"
    if ! grep -qF "$marker" "$hba"; then
        info "setting trust auth for local, 127.0.0.1 and ::1 in $hba (backup: $hba.orig)"
        [ -f "$hba.orig" ] || cp -p "$hba" "$hba.orig"
        # pg_hba.conf is read top-down and the first match wins, so the trust lines go first.
        {
            echo "$marker"
            echo "local   all   all                  trust"
            echo "host    all   all   127.0.0.1/32   trust"
            echo "host    all   all   ::1/128        trust"
            cat "$hba"
        } >"$hba.new"
        chown --reference="$hba" "$hba.new"
        chmod --reference="$hba" "$hba.new"
        mv "$hba.new" "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    wait_for 10 pg_trusts || die "user postgres still cannot connect to 127.0.0.1:5432 with trust auth (see $hba)"
}

# --- Python venv -------------------------------------------------------------------------------------------------- #
# venv_ok: the venv has a python with pip; one whose creation failed half-way (no ensurepip) has a python but no pip.
venv_ok() { [ -x "$PY" ] && "$PY" -m pip --version >/dev/null 2>&1; }

venv_python() { echo "$PY"; }

# make_venv: creates the venv, installing python3-venv first when python3 cannot.
make_venv() {
    info "creating venv $VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1 || ! venv_ok; then
        info "python3 -m venv failed; installing python3-venv"
        apt_install python3-venv
        python3 -m venv "$VENV" || die "could not create venv $VENV"
    fi
}

# pip_has NAME[==VERSION] MODULE: the venv imports MODULE, and has distribution NAME at VERSION when one is given.
pip_has() {
    "$PY" - "$1" "$2" <<'EOF' >/dev/null 2>&1
import importlib
import importlib.metadata
import sys

name, _, version = sys.argv[1].partition("==")
importlib.import_module(sys.argv[2])
sys.exit(0 if not version or importlib.metadata.version(name) == version else 1)
EOF
}

pip_install() {
    info "pip install $*"
    "$PY" -m pip install --quiet --disable-pip-version-check "$@"
}

# --- nginx and promtool, for tests/integration/deploy/ ---------------------------------------------------------------------- #
# Their Debian packages are installed without recommends (prometheus would bring node-exporter), and no service of
# theirs is started: the tests run the binaries themselves.
nginx_bin() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }; }
nginx_path() { echo "${CHATKIT_NGINX:-$(nginx_bin)}"; }
promtool_path() { echo "${CHATKIT_PROMTOOL:-$(command -v promtool)}"; }

# --- the browser tests -------------------------------------------------------------------------------------------- #
# node_at_least MAJOR: node's major version is MAJOR or later.
node_at_least() {
    local major
    major="$(node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/')"
    [ "${major:-0}" -ge "$1" ] 2>/dev/null
}

# refuse_old_node: stops, since an older Node.js is not replaced here.
refuse_old_node() { die "the browser tests need Node.js 20 or later (playwright-core); found $(node --version)"; }

chromium_path() { echo "${CHATKIT_CHROMIUM:-/usr/bin/chromium}"; }
chromium_ok() { [ -x "$(chromium_path)" ]; }

# install_chromium: installs Debian's chromium, unless CHATKIT_CHROMIUM names a binary that is not there.
install_chromium() {
    [ -z "${CHATKIT_CHROMIUM:-}" ] || die "CHATKIT_CHROMIUM=$CHATKIT_CHROMIUM is not an executable"
    apt_install chromium
}

# playwright_ok: tests/browser/node_modules holds every package package.json pins (playwright-core, axe-core), at its version.
playwright_ok() {
    node -e '
        const wanted = require("./tests/browser/package.json").dependencies;
        for (const [name, version] of Object.entries(wanted)) {
            let have = null;
            try { have = require(`./tests/browser/node_modules/${name}/package.json`).version; } catch (_) {}
            if (have !== version) process.exit(1);
        }' 2>/dev/null
}

npm_ci() {
    info "npm ci in tests/browser"
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
}

# --- the plan ----------------------------------------------------------------------------------------------------- #
# trim TEXT: TEXT without its leading and trailing blanks.
trim() {
    local text="$1"
    text="${text#"${text%%[![:space:]]*}"}"
    printf '%s\n' "${text%"${text##*[![:space:]]}"}"
}

echo "==> provision (scripts/provision.sh)"
for row in "${PLAN[@]}"; do
    IFS='|' read -r thing check fix exports <<<"$row"
    thing="$(trim "$thing")" check="$(trim "$check")" fix="$(trim "$fix")" exports="$(trim "$exports")"
    # A check only answers; what it prints (a path, say) is not news.
    if eval "$check" >/dev/null; then
        info "$thing: present"
    else
        info "$thing: missing"
        eval "$fix"
        eval "$check" >/dev/null || die "$thing: still missing after \`$fix\`"
        info "$thing: ready"
    fi
    if [ -n "$exports" ]; then
        name="${exports%%=*}"
        value="$(eval "${exports#*=}")"
        export "$name=$value"
        printf 'export %s=%q\n' "$name" "$value" >&3
    fi
done
