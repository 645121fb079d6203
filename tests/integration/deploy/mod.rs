//! The deployment files under `deploy/`, checked as far as this machine can (one module per
//! area; this one holds the tools, the YAML loader and the facts they share):
//!
//! - every YAML file parses (PyYAML from the conformance venv; a duplicated key is an error),
//!   and the Kubernetes manifests match the API schemas, strictly (kubernetes-validate);
//! - `nginx -t` accepts `deploy/nginx/nginx.conf`, on a copy whose upstream hosts (the compose
//!   service names, which only Docker's DNS knows) are replaced by loopback addresses; and real
//!   SSE streams pass through that configuration to three replicas sharing a store and Redis;
//! - `promtool` accepts the Prometheus config and both copies of the alert rules, and the
//!   rules' unit tests (`deploy/prometheus/alerts.test.yml`) pass;
//! - the Grafana dashboard and the alert rules name only metrics the gateway exports, and the
//!   dashboard has a panel for every family group;
//! - the compose file, the Kubernetes manifests and the Dockerfile agree with each other and
//!   with the gateway: ports, probes, grace periods, secrets, scrape paths, shared volumes;
//! - traces: the replicas export to the compose Tempo on the port its configuration receives on,
//!   with settings the gateway accepts; Grafana's Tempo data source points at it; every latency
//!   panel links to a Tempo search that names only spans and attributes the gateway makes.
//!
//! nginx, promtool, PyYAML and kubernetes-validate are installed by `scripts/test.sh`. A check
//! whose tool is missing fails and says how to install it; none passes without running.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::common::redis::RedisServer;
use crate::common::viewer;
use crate::common::*;
use chatkit_gateway::secret::Secret;
use chatkit_gateway::store::{MemoryStore, Store};
use chatkit_gateway::telemetry::metrics::METRICS;
use serde_json::{json, Value};

mod compose;
mod docker;
mod kubernetes;
mod metrics;
mod nginx;
mod traces;

// The few helpers one area's checks borrow from another's.
use self::compose::{gateway_port, gateway_services};
use self::kubernetes::k8s_object;
use self::metrics::panels;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What the gateway still does after its shutdown grace: it drains connections for up to
/// this long (`CONNECTION_DRAIN_SECS` in `src/app.rs`).
const CONNECTION_DRAIN_SECS: u64 = 5;

/// The gateway's default `CHATKIT_SHUTDOWN_GRACE_SECS`.
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

/// Variables that hold secrets: never in a ConfigMap or written out in the compose file.
const SECRET_VARIABLES: [&str; 4] = ["DATABASE_URL", "REDIS_URL", "CHATKIT_ADMIN_KEYS", "OPENAI_API_KEY"];

/// The metric families of the gateway by the group a dashboard must show them in.
const GROUPS: &[(&str, &[&str])] = &[
    ("requests", &["chatkit_requests_total", "chatkit_request_duration_seconds"]),
    ("turns", &["chatkit_turn_duration_seconds", "chatkit_turn_first_event_seconds"]),
    ("streams", &["chatkit_open_streams"]),
    ("actors/mailbox", &["chatkit_thread_actors", "chatkit_thread_mailbox_depth"]),
    ("rejections", &["chatkit_rejected_inputs_total"]),
    ("leases", &["chatkit_lease_wait_seconds", "chatkit_lease_contended_total"]),
    (
        "fan-out",
        &["chatkit_fanout_published_total", "chatkit_fanout_delivered_total", "chatkit_fanout_latency_seconds"],
    ),
    ("Redis", &["chatkit_redis_connected", "chatkit_redis_reconnects_total"]),
    ("model", &["chatkit_model_calls_total", "chatkit_model_tokens_total", "chatkit_model_errors_total"]),
    ("store", &["chatkit_store_operation_seconds"]),
];

/// Series Prometheus makes itself, which dashboards and rules may use beside the gateway's.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

fn deploy_dir() -> PathBuf {
    Path::new(ROOT).join("deploy")
}

fn read(relative: &str) -> String {
    let path = deploy_dir().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Tools

fn is_executable(path: &Path) -> bool {
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// A program from `$var`, else from PATH, else from one of `also`; panics with how to install it.
fn tool(var: &str, name: &str, also: &[&str], install: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(is_executable(&path), "${var} is {}, which is not an executable {name}", path.display());
        return path;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).map(|dir| dir.join(name)).chain(also.iter().map(PathBuf::from));
    for candidate in found {
        if is_executable(&candidate) {
            return candidate;
        }
    }
    panic!(
        "{name} is needed for this check and was not found (not in ${var}, on PATH or in {also:?}): \
         run `bash scripts/test.sh`, which installs it, or `{install}` as root"
    );
}

fn nginx() -> PathBuf {
    tool("CHATKIT_NGINX", "nginx", &["/usr/sbin/nginx"], "apt-get install -y --no-install-recommends nginx")
}

fn promtool() -> PathBuf {
    tool("CHATKIT_PROMTOOL", "promtool", &[], "apt-get install -y --no-install-recommends prometheus")
}

/// Runs a command; its combined output, and whether it succeeded.
fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn run_ok(command: &mut Command) -> String {
    let (ok, text) = run(command);
    assert!(ok, "{command:?} failed:\n{text}");
    text
}

// ---------------------------------------------------------------------------
// YAML, through PyYAML

/// Loads every `*.yml` and `*.yaml` under the directory in argv[1] and prints
/// `{relative path: [documents]}` as JSON. Keys repeated in one mapping are an
/// error (PyYAML would silently keep the last); merge keys (`<<`) are allowed.
const LOAD_YAML: &str = r#"
import json, os, sys
try:
    import yaml
except ImportError:
    sys.exit(3)

class Loader(yaml.SafeLoader):
    pass

def mapping(loader, node):
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, "duplicate key %r" % (key,), key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)

Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)

root = sys.argv[1]
files, errors = {}, []
for directory, subdirectories, names in os.walk(root):
    subdirectories.sort()
    for name in sorted(names):
        if name.endswith((".yml", ".yaml")):
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    files[os.path.relpath(path, root)] = list(yaml.load_all(f, Loader=Loader))
            except Exception as error:
                errors.append("%s: %s" % (os.path.relpath(path, root), error))
if errors:
    sys.stderr.write("\n".join(errors) + "\n")
    sys.exit(1)
json.dump(files, sys.stdout, default=str)
"#;

/// Every YAML file under deploy/, by path relative to it: its documents as JSON.
fn yaml_files() -> &'static BTreeMap<String, Vec<Value>> {
    static FILES: OnceLock<BTreeMap<String, Vec<Value>>> = OnceLock::new();
    FILES.get_or_init(|| {
        let python = venv_python();
        let output = Command::new(&python)
            .arg("-c")
            .arg(LOAD_YAML)
            .arg(deploy_dir())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        match output.status.code() {
            Some(0) => serde_json::from_slice(&output.stdout).expect("the YAML loader prints JSON"),
            Some(3) => panic!(
                "PyYAML is not installed for {}: run `bash scripts/test.sh`, or `{} -m pip install PyYAML`",
                python.display(),
                python.display()
            ),
            _ => panic!("YAML under deploy/ does not load:\n{}", String::from_utf8_lossy(&output.stderr)),
        }
    })
}

/// The single document of a YAML file under deploy/.
fn yaml(relative: &str) -> &'static Value {
    let documents = yaml_files().get(relative).unwrap_or_else(|| panic!("deploy/{relative} is missing"));
    assert_eq!(documents.len(), 1, "deploy/{relative} should hold one document");
    &documents[0]
}

fn str_of<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} should be a string, is {value}"))
}

/// Whether every pair of `subset` is in `superset` (label selectors).
fn labels_within(subset: &Value, superset: &Value) -> bool {
    let (Some(subset), Some(superset)) = (subset.as_object(), superset.as_object()) else { return false };
    !subset.is_empty() && subset.iter().all(|(key, value)| superset.get(key) == Some(value))
}
