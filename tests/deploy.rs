//! The deployment files under `deploy/`, checked as far as this machine can:
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
//!   with the gateway: ports, probes, grace periods, secrets, scrape paths, shared volumes.
//!
//! nginx, promtool, PyYAML and kubernetes-validate are installed by `scripts/test.sh`. A check
//! whose tool is missing fails and says how to install it; none passes without running.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chatkit_gateway::secret::Secret;
use chatkit_gateway::store::{MemoryStore, Store};
use chatkit_gateway::telemetry::metrics::METRICS;
use common::redis::RedisServer;
use common::viewer;
use common::*;
use serde_json::{json, Value};

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

// ---------------------------------------------------------------------------
// Metrics and PromQL

struct Exported {
    families: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

impl Exported {
    /// The family a series name belongs to: the name itself, or a histogram's
    /// `_bucket`, `_sum` or `_count`.
    fn family_of(&self, series: &str) -> Option<&str> {
        if let Some(family) = self.families.get(series) {
            return Some(family);
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| series.strip_suffix(suffix))
            .find_map(|base| self.histograms.get(base).map(String::as_str))
    }
}

/// Every metric family the gateway exports, with the histograms among them.
fn exported() -> &'static Exported {
    static EXPORTED: OnceLock<Exported> = OnceLock::new();
    EXPORTED.get_or_init(|| {
        // A labelled family with no series yet is left out of a gather (the
        // prometheus crate prunes empty families), so a fresh process would list
        // only some of them: give each one a series first.
        let metrics = &*METRICS;
        metrics.requests.with_label_values(&["deploy_test", "ok"]);
        metrics.request_duration.with_label_values(&["deploy_test"]);
        metrics.turn_duration.with_label_values(&["completed"]);
        metrics.turn_first_event.with_label_values(&["deploy_test"]);
        metrics.lease_wait.with_label_values(&["deploy_test"]);
        metrics.fanout_latency.with_label_values(&["thread"]);
        metrics.model_calls.with_label_values(&["deploy_test"]);
        metrics.model_tokens.with_label_values(&["deploy_test", "prompt"]);
        metrics.store_duration.with_label_values(&["deploy_test", "deploy_test"]);
        let families: BTreeSet<String> = metrics.names().into_iter().collect();
        let histograms = metrics
            .render()
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.strip_suffix(" histogram"))
            .map(str::to_string)
            .collect();
        for (group, names) in GROUPS {
            for name in *names {
                assert!(families.contains(*name), "{name} ({group}) is not exported; exported: {families:?}");
            }
        }
        Exported { families, histograms }
    })
}

/// The metric names a PromQL expression selects. Label matchers, strings,
/// ranges, numbers and durations, Grafana variables, functions, aggregations,
/// keywords and the label lists after `by`, `without`, `on`, `ignoring`,
/// `group_left` and `group_right` are not names.
fn promql_metric_names(expr: &str) -> Vec<String> {
    const AGGREGATIONS: [&str; 14] = [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    const KEYWORDS: [&str; 9] = ["and", "or", "unless", "offset", "bool", "atan2", "inf", "nan", "start"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Skips from an opening bracket to just past its match, stepping over strings.
    let skip_group = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' | '\'' | '`' => {
                    let quote = chars[i];
                    i += 1;
                    while i < chars.len() && chars[i] != quote {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        panic!("unbalanced {open}{close} in {expr:?}");
    };
    let next_non_space = |mut i: usize| -> usize {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(i, '{', '}');
            } else {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.' || chars[i] == '_') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let after = next_non_space(i);
            if LABEL_LISTS.contains(&word.as_str()) {
                if chars.get(after) == Some(&'(') {
                    i = skip_group(after, '(', ')');
                }
            } else if AGGREGATIONS.contains(&word.as_str())
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                || chars.get(after) == Some(&'(')
            {
                // An aggregation, keyword or function call: not a name.
            } else {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The gateway families an expression uses; panics on any name the gateway does not export.
fn families_in(expr: &str, context: &str) -> BTreeSet<String> {
    let exported = exported();
    let mut families = BTreeSet::new();
    for name in promql_metric_names(expr) {
        if PROMETHEUS_SERIES.contains(&name.as_str()) {
            continue;
        }
        let family = exported.family_of(&name).unwrap_or_else(|| {
            panic!("{context}: `{name}` in `{expr}` is not a metric the gateway exports ({:?})", exported.families)
        });
        families.insert(family.to_string());
    }
    families
}

#[test]
fn the_promql_reader_finds_metric_names_and_nothing_else() {
    let expr = r#"histogram_quantile(0.99, sum by (le, op) (rate(chatkit_request_duration_seconds_bucket{job="$job", outcome=~"a|b"}[$__rate_interval]))) / on(instance) group_left(x) max without (y) (chatkit_thread_actors offset 5m) > bool 1e3 and up"#;
    assert_eq!(promql_metric_names(expr), ["chatkit_request_duration_seconds_bucket", "chatkit_thread_actors", "up"]);
    assert_eq!(promql_metric_names(r#"sum(rate(foo_total{a="}"}[5m])) or vector(0)"#), ["foo_total"]);
    let families = families_in("rate(chatkit_fanout_latency_seconds_count[1m]) + chatkit_redis_connected", "test");
    assert_eq!(families.into_iter().collect::<Vec<_>>(), ["chatkit_fanout_latency_seconds", "chatkit_redis_connected"]);
    let caught = std::panic::catch_unwind(|| families_in("chatkit_requests_total_count", "test"));
    assert!(caught.is_err(), "a counter has no _count series");
    assert!(std::panic::catch_unwind(|| families_in("process_resident_memory_bytes", "test")).is_err());
}

// ---------------------------------------------------------------------------
// The compose file

fn compose() -> &'static Value {
    yaml("docker-compose.yml")
}

fn service(name: &str) -> &'static Value {
    let service = &compose()["services"][name];
    assert!(service.is_object(), "docker-compose.yml has no service {name}");
    service
}

/// The gateway replicas: the services named `gateway-N`.
fn gateway_services() -> Vec<String> {
    let services = compose()["services"].as_object().expect("services");
    services.keys().filter(|name| name.starts_with("gateway-")).cloned().collect()
}

/// The port the gateway replicas listen on in compose (from their CHATKIT_BIND).
fn gateway_port() -> u16 {
    let bind = str_of(&service("gateway-1")["environment"]["CHATKIT_BIND"], "CHATKIT_BIND");
    bind.parse::<SocketAddr>().unwrap_or_else(|e| panic!("CHATKIT_BIND {bind}: {e}")).port()
}

/// A compose duration such as `45s`, `1m30s` or `90`, in seconds.
fn compose_duration(text: &str) -> u64 {
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().unwrap_or_else(|_| panic!("bad duration {text}"));
        number.clear();
        total += n * match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => panic!("unsupported duration {text}"),
        };
    }
    total + if number.is_empty() { 0 } else { number.parse::<u64>().unwrap() }
}

/// The `source:target` bind mounts and volumes of a compose service.
fn mounts(service: &Value) -> Vec<(String, String)> {
    let volumes = service["volumes"].as_array().cloned().unwrap_or_default();
    volumes
        .iter()
        .map(|volume| {
            let text = str_of(volume, "a short volume entry");
            let mut parts = text.split(':');
            (parts.next().unwrap().to_string(), parts.next().unwrap_or_default().to_string())
        })
        .collect()
}

#[test]
fn compose_runs_three_replicas_on_postgres_and_redis_behind_nginx() {
    let gateways = gateway_services();
    assert_eq!(gateways, ["gateway-1", "gateway-2", "gateway-3"], "three gateway replicas");
    for name in ["nginx", "postgres", "redis", "prometheus", "grafana"] {
        service(name);
    }
    let mut data_volumes = BTreeSet::new();
    for name in &gateways {
        let gateway = service(name);
        assert_eq!(gateway["build"]["dockerfile"], "deploy/Dockerfile", "{name} builds deploy/Dockerfile");
        assert_eq!(gateway["build"]["context"], "..", "{name}: the build context is the repository root");
        let env = &gateway["environment"];
        assert_eq!(env["CHATKIT_BIND"], "0.0.0.0:8080", "{name} listens on every interface of its container");
        let database = str_of(&env["DATABASE_URL"], "DATABASE_URL");
        assert!(database.starts_with("postgres://") && database.contains("@postgres:5432/"), "{name}: {database}");
        assert_eq!(env["REDIS_URL"], "redis://redis:6379", "{name} shares Redis");
        for secret in ["CHATKIT_ADMIN_KEYS", "DATABASE_URL"] {
            let value = str_of(&env[secret], secret);
            assert!(value.contains("${"), "{name}: {secret} must come from deploy/.env, not be written out: {value}");
        }
        assert!(env.get("OPENAI_API_KEY").is_none(), "{name}: an empty OPENAI_API_KEY is refused; use gateway.env");
        assert!(gateway.get("ports").is_none(), "{name} is reached through nginx only");
        // Attachment bytes on one volume shared by every replica.
        let data_dir = str_of(&env["CHATKIT_DATA_DIR"], "CHATKIT_DATA_DIR");
        let volume = mounts(gateway)
            .into_iter()
            .find(|(_, target)| target == data_dir)
            .unwrap_or_else(|| panic!("{name}: nothing mounted at CHATKIT_DATA_DIR {data_dir}"))
            .0;
        assert!(compose()["volumes"].get(&volume).is_some(), "{name}: {volume} is not a named volume");
        data_volumes.insert(volume);
        // Docker's SIGKILL must not cut the shutdown grace short (its default is 10 s).
        let grace = env["CHATKIT_SHUTDOWN_GRACE_SECS"]
            .as_str()
            .map(|s| s.parse::<u64>().expect("CHATKIT_SHUTDOWN_GRACE_SECS"))
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
        let stop = compose_duration(str_of(&gateway["stop_grace_period"], "stop_grace_period"));
        assert!(stop > grace + CONNECTION_DRAIN_SECS, "{name}: stop_grace_period {stop}s <= {grace}s grace + drain");
        for dependency in ["postgres", "redis"] {
            assert_eq!(
                gateway["depends_on"][dependency]["condition"], "service_healthy",
                "{name} waits for {dependency}"
            );
        }
    }
    assert_eq!(data_volumes.len(), 1, "every replica must mount the same attachments volume: {data_volumes:?}");

    // Every bind mount comes from deploy/ and exists.
    let services = compose()["services"].as_object().unwrap();
    for (name, service) in services {
        for (source, _) in mounts(service) {
            if let Some(relative) = source.strip_prefix("./") {
                assert!(deploy_dir().join(relative).exists(), "{name} mounts deploy/{relative}, which is missing");
            }
        }
    }
    let nginx = service("nginx");
    assert!(mounts(nginx).contains(&("./nginx/nginx.conf".into(), "/etc/nginx/nginx.conf".into())));
    let published = nginx["ports"].as_array().expect("nginx publishes a port");
    assert!(published.iter().any(|port| str_of(port, "port").ends_with(":80")), "nginx publishes its port 80");
    let prometheus = service("prometheus");
    assert!(mounts(prometheus).contains(&("./prometheus".into(), "/etc/prometheus".into())));
    let command = prometheus["command"].as_array().expect("prometheus command");
    assert!(command.contains(&json!("--config.file=/etc/prometheus/prometheus.yml")));
    let grafana = service("grafana");
    assert!(mounts(grafana).contains(&("./grafana/provisioning".into(), "/etc/grafana/provisioning".into())));
    assert!(str_of(&grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"], "password").contains("${"));
    let provider = &yaml("grafana/provisioning/dashboards/chatkit.yml")["providers"][0];
    let dashboards = str_of(&provider["options"]["path"], "dashboard provider path");
    assert!(
        mounts(grafana).contains(&("./grafana/dashboards".into(), dashboards.into())),
        "grafana must mount ./grafana/dashboards at the provider's path {dashboards}"
    );
    let datasource = &yaml("grafana/provisioning/datasources/prometheus.yml")["datasources"][0];
    assert_eq!(datasource["type"], "prometheus");
    assert_eq!(datasource["url"], "http://prometheus:9090", "the data source is the compose Prometheus");
}

// ---------------------------------------------------------------------------
// nginx

#[derive(Debug)]
struct Directive {
    name: String,
    args: Vec<String>,
    block: Vec<Directive>,
}

/// Parses nginx configuration syntax: directives, quoted arguments, blocks, comments.
fn parse_nginx(text: &str) -> Vec<Directive> {
    #[derive(Debug, PartialEq)]
    enum Token {
        Word(String),
        End,
        Open,
        Close,
    }
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            ';' => tokens.push(Token::End),
            '{' => tokens.push(Token::Open),
            '}' => tokens.push(Token::Close),
            '"' | '\'' => {
                let mut word = String::new();
                while let Some(next) = chars.next() {
                    match next {
                        '\\' => word.push(chars.next().expect("escape")),
                        q if q == c => break,
                        other => word.push(other),
                    }
                }
                tokens.push(Token::Word(word));
            }
            first => {
                let mut word = String::from(first);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, ';' | '{' | '}') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    fn block(tokens: &mut std::vec::IntoIter<Token>, nested: bool) -> Vec<Directive> {
        let mut directives = Vec::new();
        let mut words = Vec::new();
        while let Some(token) = tokens.next() {
            match token {
                Token::Word(word) => words.push(word),
                Token::End | Token::Open => {
                    assert!(!words.is_empty(), "nginx.conf: `;` or `{{` without a directive");
                    let name = words.remove(0);
                    let children = if token == Token::Open { block(tokens, true) } else { Vec::new() };
                    directives.push(Directive { name, args: std::mem::take(&mut words), block: children });
                }
                Token::Close => {
                    assert!(nested && words.is_empty(), "nginx.conf: unexpected `}}`");
                    return directives;
                }
            }
        }
        assert!(!nested && words.is_empty(), "nginx.conf: unclosed block or unterminated directive");
        directives
    }
    block(&mut tokens.into_iter(), false)
}

fn children<'a>(block: &'a [Directive], name: &str) -> Vec<&'a Directive> {
    block.iter().filter(|d| d.name == name).collect()
}

/// An nginx time (`1h`, `90s`, `60`) in seconds.
fn nginx_seconds(text: &str) -> u64 {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let n: u64 = text[..split].parse().unwrap_or_else(|_| panic!("bad nginx time {text}"));
    n * match &text[split..] {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => panic!("unsupported nginx time unit {other} in {text}"),
    }
}

/// A copy of deploy/nginx/nginx.conf for this machine: the compose service names of the
/// upstream (which only Docker's DNS resolves) become `upstreams`, in order, and with
/// `listen` the server listens there instead of port 80. Nothing else changes.
fn nginx_test_copy(upstreams: &[String], listen: Option<&str>) -> String {
    let original = read("nginx/nginx.conf");
    let gateways = gateway_services();
    assert_eq!(upstreams.len(), gateways.len());
    let port = gateway_port();
    let mut copy = original.clone();
    for (gateway, upstream) in gateways.iter().zip(upstreams) {
        let server = format!("server {gateway}:{port}");
        assert_eq!(original.matches(&server).count(), 1, "nginx.conf must list `{server}` once in its upstream");
        copy = copy.replace(&server, &format!("server {upstream}"));
    }
    if let Some(address) = listen {
        assert!(copy.contains("listen 80;"), "nginx.conf listens on port 80");
        copy = copy.replace("listen 80;", &format!("listen {address};"));
    }
    copy
}

/// Writes `config` into a fresh directory used as nginx's prefix.
fn nginx_dir(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("nginx.conf"), config).expect("write nginx.conf");
    dir
}

fn nginx_command(dir: &Path) -> Command {
    let mut command = Command::new(nginx());
    command
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdin(Stdio::null());
    command
}

#[test]
fn nginx_config_is_valid_and_made_for_sse() {
    let config = parse_nginx(&read("nginx/nginx.conf"));
    let http = children(&config, "http");
    assert_eq!(http.len(), 1, "one http block");
    let http = &http[0].block;

    // The upstream lists exactly the compose gateway services on their port.
    let upstreams = children(http, "upstream");
    assert_eq!(upstreams.len(), 1, "one upstream");
    let upstream = upstreams[0];
    let servers: Vec<String> = children(&upstream.block, "server").iter().map(|s| s.args[0].clone()).collect();
    let expected: Vec<String> = gateway_services().iter().map(|g| format!("{g}:{}", gateway_port())).collect();
    assert_eq!(servers, expected, "the upstream servers are the compose replicas");
    assert!(!children(&upstream.block, "keepalive").is_empty(), "keep-alive connections to the replicas");

    // The location that proxies to it streams: no buffering, HTTP/1.1 keep-alive,
    // read timeouts far past the heartbeat and the model's timeout.
    let servers = children(http, "server");
    assert_eq!(servers.len(), 1, "one server");
    let server = &servers[0].block;
    let proxied: Vec<&Directive> = children(server, "location")
        .into_iter()
        .filter(|location| children(&location.block, "proxy_pass").iter().any(|p| p.args.len() == 1))
        .collect();
    assert_eq!(proxied.len(), 1, "one location proxies to the replicas");
    let location = proxied[0];
    assert_eq!(children(&location.block, "proxy_pass")[0].args, [format!("http://{}", upstream.args[0])]);
    // A directive as the location sees it: its own, else inherited.
    let effective = |name: &str| -> Vec<&Directive> {
        for scope in [&location.block, server, http] {
            let found = children(scope, name);
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    };
    let value = |name: &str| -> String {
        let found = effective(name);
        assert_eq!(found.len(), 1, "{name} should be set once for the proxied location");
        found[0].args.join(" ")
    };
    assert_eq!(value("proxy_buffering"), "off");
    assert_eq!(value("proxy_request_buffering"), "off");
    assert_eq!(value("proxy_cache"), "off");
    assert_eq!(value("proxy_http_version"), "1.1");
    let headers: Vec<Vec<String>> = effective("proxy_set_header").iter().map(|d| d.args.clone()).collect();
    assert!(headers.contains(&vec!["Connection".into(), String::new()]), "Connection \"\" for upstream keep-alive");
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        let seconds = nginx_seconds(&value(timeout));
        assert!(seconds >= 600, "{timeout} {seconds}s is too short for viewer streams");
    }

    // `nginx -t` on the copy with loopback upstreams (no DNS needed).
    let loopback: Vec<String> =
        (1..=gateway_services().len()).map(|i| format!("127.0.0.{i}:{}", gateway_port())).collect();
    let dir = nginx_dir(&nginx_test_copy(&loopback, None));
    let output = run_ok(nginx_command(dir.path()).arg("-t"));
    assert!(output.contains("test is successful"), "{output}");
}

/// An nginx master process, stopped (SIGQUIT, then SIGKILL) when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// What nginx logged: before its configuration was read (`-e`), and after (the
    /// configuration's `error_log /dev/stderr`).
    fn log(&self) -> String {
        ["error.log", "stderr.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: a graceful stop of the master and its workers.
        let _ = Command::new("kill").arg("-QUIT").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now, below the ephemeral range.
fn free_port() -> u16 {
    for _ in 0..200 {
        let port = 20_000 + (rand_u16() % 12_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

fn rand_u16() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish() as u16
}

/// Starts nginx with the deploy configuration in front of `upstreams`, on a free loopback port.
fn start_nginx(upstreams: &[String]) -> (Nginx, u16) {
    for _ in 0..5 {
        let port = free_port();
        let dir = nginx_dir(&nginx_test_copy(upstreams, Some(&format!("127.0.0.1:{port}"))));
        let pid = dir.path().join("nginx.pid");
        let child = nginx_command(dir.path())
            .arg("-g")
            .arg(format!("daemon off; pid {};", pid.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).expect("nginx's stderr"))
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (nginx, port);
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                // Most likely the port was taken meanwhile: try another.
                eprintln!("nginx exited ({status}) on port {port}:\n{}", nginx.log());
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("nginx did not start with the deploy configuration");
}

/// The compose topology on loopback: three replicas sharing a store and Redis, behind nginx
/// with deploy/nginx/nginx.conf. Turn streams and viewer streams (with their heartbeats) pass
/// through it as they happen; /metrics and the probes stay private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_pass_through_nginx_to_three_replicas() {
    nginx(); // fail early, with instructions, when it is missing
    let redis = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let replicas: Vec<TestApp> = (0..3)
        .map(|_| {
            let url = redis.url();
            spawn(Spawn {
                store: Some(store.clone()),
                configure: Box::new(move |c| {
                    c.fanout.redis_url = Some(Secret::new(url));
                    c.fanout.heartbeat_secs = 1;
                }),
                ..Default::default()
            })
        })
        .collect();
    for replica in &replicas {
        eventually("the replica is ready (Redis connected)", || async {
            let response = replica.client.get(replica.url("/readyz")).send().await;
            response.is_ok_and(|r| r.status() == 200)
        })
        .await;
    }
    let upstreams: Vec<String> = replicas.iter().map(|r| format!("127.0.0.1:{}", r.addr.port())).collect();
    let (nginx, port) = start_nginx(&upstreams);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap();

    for private in ["/metrics", "/healthz", "/readyz"] {
        let status = client.get(format!("{base}{private}")).send().await.unwrap().status();
        assert_eq!(status, 404, "{private} must not be reachable through nginx");
    }
    assert_eq!(client.get(replicas[0].url("/metrics")).send().await.unwrap().status(), 200);

    // A history stream through nginx: heartbeats arrive one by one, so nothing buffers them.
    let mut history = viewer::open(&format!("{base}/chatkit/events"), "alice", None).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while history.heartbeats == 0 && Instant::now() < deadline {
        assert!(history.next_within(Duration::from_millis(500)).await.is_none(), "no event yet");
    }
    assert!(history.heartbeats >= 1, "heartbeats (every second here) pass through nginx while the stream is open");

    // A turn through nginx: its stream arrives whole, and the history stream (on whichever
    // replica nginx picked) sees the new thread while it stays open.
    let create = request("threads.create", json!({"input": text_input("through nginx")}));
    let response = client.post(format!("{base}/chatkit")).header("x-user-id", "alice").json(&create).send().await;
    let response = response.expect("POST /chatkit through nginx");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = parse_sse(&response.text().await.unwrap());
    assert_eq!(events[0]["type"], "thread.created", "{events:?}");
    let thread_id = str_of(&events[0]["thread"]["id"], "thread id").to_string();
    assert!(assistant_text(&events).contains("through nginx"), "{events:?}");
    let frames = history.until(|frame| frame.kind() == "thread.created").await;
    assert_eq!(frames.last().unwrap().data["thread"]["id"], thread_id.as_str());

    // A thread viewer through nginx sees the next turn's items live.
    let mut thread = viewer::open(&format!("{base}/chatkit/threads/{thread_id}/events"), "alice", None).await;
    let say = request("threads.add_user_message", json!({"thread_id": thread_id, "input": text_input("again")}));
    let response = client.post(format!("{base}/chatkit")).header("x-user-id", "alice").json(&say).send().await;
    assert!(assistant_text(&parse_sse(&response.unwrap().text().await.unwrap())).contains("again"));
    let frames = thread
        .until(|frame| frame.kind() == "thread.item.done" && frame.data["item"]["type"] == "assistant_message")
        .await;
    assert!(frames.iter().any(|f| f.data["item"]["type"] == "user_message"), "{frames:?}");
    let log = nginx.log();
    assert!(!log.contains("[error]") && !log.contains("[crit]"), "nginx logged errors:\n{log}");
}

// ---------------------------------------------------------------------------
// Prometheus

fn promtool_in_prometheus_dir() -> Command {
    let mut command = Command::new(promtool());
    command.current_dir(deploy_dir().join("prometheus"));
    command
}

fn alert_rules() -> Vec<&'static Value> {
    let groups = yaml("prometheus/alerts.yml")["groups"].as_array().expect("groups");
    groups.iter().flat_map(|group| group["rules"].as_array().expect("rules")).collect()
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_tests_pass() {
    promtool();
    run_ok(promtool_in_prometheus_dir().args(["check", "config", "prometheus.yml"]));
    run_ok(promtool_in_prometheus_dir().args(["check", "rules", "alerts.yml"]));
    let output = run_ok(promtool_in_prometheus_dir().args(["test", "rules", "alerts.test.yml"]));
    assert!(output.contains("SUCCESS"), "{output}");

    // The PrometheusRule for the Operator carries the same groups, and they check too
    // (JSON is YAML, so the groups are written as JSON).
    let rule = k8s_object("PrometheusRule");
    assert_eq!(
        rule["spec"]["groups"],
        yaml("prometheus/alerts.yml")["groups"],
        "k8s/prometheusrule.yaml != alerts.yml"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheusrule-groups.yml");
    std::fs::write(&path, serde_json::to_string_pretty(&json!({"groups": rule["spec"]["groups"]})).unwrap()).unwrap();
    run_ok(Command::new(promtool()).arg("check").arg("rules").arg(&path));
}

#[test]
fn prometheus_scrapes_metrics_of_every_replica() {
    let config = yaml("prometheus/prometheus.yml");
    let jobs = config["scrape_configs"].as_array().expect("scrape_configs");
    let job = jobs.iter().find(|job| job["job_name"] == "chatkit-gateway").expect("a chatkit-gateway job");
    assert_eq!(job["metrics_path"], "/metrics");
    let targets: BTreeSet<&str> = job["static_configs"]
        .as_array()
        .expect("static_configs")
        .iter()
        .flat_map(|c| c["targets"].as_array().expect("targets"))
        .map(|t| str_of(t, "target"))
        .collect();
    let expected: Vec<String> = gateway_services().iter().map(|g| format!("{g}:{}", gateway_port())).collect();
    assert_eq!(targets, expected.iter().map(String::as_str).collect(), "every replica is a target");
    assert!(config["rule_files"].as_array().unwrap().contains(&json!("alerts.yml")));
}

#[test]
fn alert_rules_cover_the_failure_modes_with_exported_metrics() {
    let rules = alert_rules();
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in &rules {
        let name = str_of(&rule["alert"], "alert name");
        let expr = str_of(&rule["expr"], "expr");
        let severity = str_of(&rule["labels"]["severity"], "severity");
        assert!(["warning", "critical"].contains(&severity), "{name}: severity {severity}");
        assert!(rule["annotations"]["summary"].is_string() && rule["annotations"]["description"].is_string(), "{name}");
        // Both the compose job and the ServiceMonitor's (the Service's name) are chatkit-gateway.
        assert!(expr.contains(r#"job="chatkit-gateway""#), "{name} should select job=\"chatkit-gateway\": {expr}");
        used.insert(name.to_string(), families_in(expr, name));
    }
    let uses =
        |family: &str| used.iter().filter(|(_, f)| f.contains(family)).map(|(n, _)| n.clone()).collect::<Vec<_>>();
    // The failure modes that matter, each watched by at least one rule.
    let modes: [(&str, &[&str]); 4] = [
        ("Redis down", &["chatkit_redis_connected"]),
        ("fan-out latency", &["chatkit_fanout_latency_seconds"]),
        ("error rate", &["chatkit_requests_total"]),
        (
            "saturation",
            &[
                "chatkit_thread_mailbox_depth",
                "chatkit_rejected_inputs_total",
                "chatkit_lease_wait_seconds",
                "chatkit_open_streams",
            ],
        ),
    ];
    for (mode, families) in modes {
        for family in families {
            assert!(!uses(family).is_empty(), "no alert rule for {mode} uses {family}");
        }
    }
    let server_errors = rules.iter().any(|rule| {
        let expr = rule["expr"].as_str().unwrap();
        expr.contains("chatkit_requests_total") && expr.contains("internal_error") && expr.contains("store_unavailable")
    });
    assert!(server_errors, "the error-rate rule should count internal_error and store_unavailable");
}

// ---------------------------------------------------------------------------
// Grafana

/// Every panel of a dashboard, rows' nested panels included (rows themselves left out).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut found = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().map(|a| a.iter().collect()).unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        if panel["type"] != "row" {
            found.push(panel);
        }
    }
    found
}

#[test]
fn the_dashboard_shows_every_family_group_with_exported_metrics_only() {
    let path = deploy_dir().join("grafana/dashboards/chatkit-gateway.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());

    let mut panel_families: Vec<(String, BTreeSet<String>)> = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = str_of(&panel["title"], "panel title").to_string();
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "duplicate panel id in {title}");
        assert!(panel["gridPos"]["w"].as_u64().is_some_and(|w| w > 0 && w <= 24), "{title}: gridPos");
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {title} has no targets"));
        assert!(!targets.is_empty(), "panel {title} has no queries");
        let mut families = BTreeSet::new();
        for target in targets {
            let expr = str_of(&target["expr"], "expr");
            families.extend(families_in(expr, &format!("panel {title}")));
        }
        panel_families.push((title, families));
    }
    // Template variables query metrics too: label_values(<series>, <label>).
    for variable in dashboard["templating"]["list"].as_array().expect("templating") {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().or(variable["query"].as_str()).expect("variable query");
        let inner = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')).expect("label_values");
        let series = inner.rsplit_once(',').map_or(inner, |(series, _label)| series);
        let families = families_in(series, "a template variable");
        assert!(!families.is_empty(), "variable {} queries no gateway metric", variable["name"]);
    }

    for (group, families) in GROUPS {
        let showing: Vec<&str> = panel_families
            .iter()
            .filter(|(_, used)| families.iter().any(|f| used.contains(*f)))
            .map(|(title, _)| title.as_str())
            .collect();
        assert!(!showing.is_empty(), "no panel shows the {group} group ({families:?})");
    }
    // Every family the issue names is on the dashboard somewhere.
    let shown: BTreeSet<&String> = panel_families.iter().flat_map(|(_, f)| f).collect();
    for family in GROUPS.iter().flat_map(|(_, families)| families.iter()) {
        assert!(shown.contains(&family.to_string()), "{family} is on no panel");
    }
}

// ---------------------------------------------------------------------------
// Kubernetes

/// Every Kubernetes object under deploy/k8s/, with the file it is in.
fn k8s_objects() -> Vec<(&'static str, &'static Value)> {
    yaml_files()
        .iter()
        .filter(|(path, _)| path.starts_with("k8s/") && !path.ends_with("kustomization.yaml"))
        .flat_map(|(path, documents)| documents.iter().map(move |document| (path.as_str(), document)))
        .collect()
}

/// The one object of `kind` applied by kustomization.yaml.
fn k8s_object(kind: &str) -> &'static Value {
    let resources = kustomize_resources();
    let found: Vec<&Value> = k8s_objects()
        .into_iter()
        .filter(|(path, object)| object["kind"] == kind && resources.contains(&path["k8s/".len()..]))
        .map(|(_, object)| object)
        .collect();
    assert_eq!(found.len(), 1, "deploy/k8s/ should apply one {kind}");
    found[0]
}

fn kustomize_resources() -> BTreeSet<&'static str> {
    let kustomization = yaml("k8s/kustomization.yaml");
    kustomization["resources"].as_array().expect("resources").iter().map(|r| str_of(r, "resource")).collect()
}

#[test]
fn every_yaml_file_parses() {
    let files = yaml_files();
    let mut on_disk = Vec::new();
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
                on_disk.push(path.strip_prefix(deploy_dir()).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    on_disk.sort();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), on_disk, "every YAML file was loaded");
    for required in [
        "docker-compose.yml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts.test.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/chatkit.yml",
        "k8s/kustomization.yaml",
    ] {
        assert!(files.contains_key(required), "deploy/{required} is missing");
    }
    for (path, documents) in files {
        assert!(!documents.is_empty() && documents.iter().all(Value::is_object), "{path}: documents must be mappings");
    }
    for (path, object) in k8s_objects() {
        for field in ["apiVersion", "kind"] {
            assert!(object[field].is_string(), "{path}: no {field}");
        }
        assert!(object["metadata"]["name"].is_string(), "{path}: no metadata.name");
    }
}

/// Validates every Kubernetes manifest under the directory in argv[1] with
/// kubernetes-validate, strictly (unknown fields are errors), for each version in
/// argv[2:]; prints one JSON result per document and version.
const VALIDATE_K8S: &str = r#"
import json, os, sys
try:
    import yaml
    import kubernetes_validate
except ImportError:
    sys.exit(3)
root, versions = sys.argv[1], sys.argv[2:] or [kubernetes_validate.latest_version()]
results = []
for name in sorted(os.listdir(root)):
    if not name.endswith((".yaml", ".yml")) or name == "kustomization.yaml":
        continue
    with open(os.path.join(root, name), encoding="utf-8") as f:
        documents = [d for d in yaml.safe_load_all(f) if d]
    for document in documents:
        for version in versions:
            result = {"file": name, "kind": document.get("kind"), "version": version}
            try:
                result["schema"] = kubernetes_validate.validate(document, version, strict=True)
                result["result"] = "valid"
            except kubernetes_validate.SchemaNotFoundError:
                result["result"] = "no schema"
            except kubernetes_validate.ValidationError as error:
                result["result"] = "invalid"
                result["error"] = "%s: %s" % (".".join(str(p) for p in error.path), error.message)
            results.append(result)
json.dump(results, sys.stdout)
"#;

/// Kinds without a schema in kubernetes-validate: the Prometheus Operator's CRDs, whose
/// fields the tests here check one by one.
const CUSTOM_KINDS: [&str; 2] = ["ServiceMonitor", "PrometheusRule"];

#[test]
fn k8s_manifests_match_the_kubernetes_api_schemas() {
    let python = venv_python();
    // The oldest Kubernetes the manifests aim at, and the newest the schemas know.
    let output = Command::new(&python)
        .arg("-c")
        .arg(VALIDATE_K8S)
        .arg(deploy_dir().join("k8s"))
        .args(["1.28.0", "1.37.0"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    match output.status.code() {
        Some(0) => {}
        Some(3) => panic!(
            "kubernetes-validate is not installed for {}: run `bash scripts/test.sh`, or `{} -m pip install \
             kubernetes-validate==1.37.0`",
            python.display(),
            python.display()
        ),
        _ => panic!("the schema check failed:\n{}", String::from_utf8_lossy(&output.stderr)),
    }
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON results");
    let mut validated = BTreeSet::new();
    for result in &results {
        let (file, kind) = (str_of(&result["file"], "file"), str_of(&result["kind"], "kind"));
        match str_of(&result["result"], "result") {
            "valid" => {
                validated.insert(kind);
            }
            "no schema" => assert!(CUSTOM_KINDS.contains(&kind), "{file}: no schema for {kind}: {result}"),
            _ => {
                panic!("{file}: {kind} does not match the Kubernetes {} schema: {}", result["version"], result["error"])
            }
        }
    }
    for kind in [
        "Namespace",
        "ConfigMap",
        "Secret",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
    ] {
        assert!(validated.contains(kind), "no {kind} was validated: {results:?}");
    }
}

#[test]
fn kustomization_applies_every_manifest_but_the_example_secret() {
    let resources = kustomize_resources();
    let manifests: BTreeSet<&str> = yaml_files()
        .keys()
        .filter_map(|path| path.strip_prefix("k8s/"))
        .filter(|name| !name.contains('/') && *name != "kustomization.yaml" && *name != "secret.example.yaml")
        .collect();
    assert_eq!(resources, manifests, "kustomization.yaml resources");
    let secret = yaml("k8s/secret.example.yaml");
    assert_eq!(secret["kind"], "Secret");
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ConfigMap",
        "ServiceMonitor",
        "PrometheusRule",
        "PersistentVolumeClaim",
        "Ingress",
    ] {
        k8s_object(kind);
    }
}

#[test]
fn the_deployment_drains_within_its_grace_and_probes_readiness_and_liveness() {
    let deployment = k8s_object("Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert!(labels_within(&deployment["spec"]["selector"]["matchLabels"], pod_labels), "selector matches the pods");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];

    // Settings from the ConfigMap, secrets from the Secret.
    let env_from = container["envFrom"].as_array().expect("envFrom");
    let config_map_name = env_from.iter().find_map(|e| e["configMapRef"]["name"].as_str()).expect("a configMapRef");
    let secret_name = env_from.iter().find_map(|e| e["secretRef"]["name"].as_str()).expect("a secretRef");
    let config_map = k8s_object("ConfigMap");
    assert_eq!(config_map["metadata"]["name"], config_map_name);
    let data = &config_map["data"];
    for secret in SECRET_VARIABLES {
        assert!(data.get(secret).is_none(), "{secret} belongs in the Secret, not the ConfigMap");
    }
    let example = yaml("k8s/secret.example.yaml");
    assert_eq!(example["metadata"]["name"], secret_name);
    for secret in SECRET_VARIABLES {
        assert!(example["stringData"].get(secret).is_some(), "secret.example.yaml should show {secret}");
    }
    for value in data.as_object().expect("data").values() {
        assert!(value.is_string(), "ConfigMap values are strings: {value}");
    }

    // SIGKILL comes after terminationGracePeriodSeconds, counted from the preStop hook:
    // the hook, the shutdown grace and the connection drain must all fit before it.
    let grace: u64 = str_of(&data["CHATKIT_SHUTDOWN_GRACE_SECS"], "CHATKIT_SHUTDOWN_GRACE_SECS").parse().unwrap();
    let termination = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    let pre_stop = &container["lifecycle"]["preStop"];
    let hook = match pre_stop["exec"]["command"].as_array() {
        Some(command) if command.first() == Some(&json!("sleep")) => {
            str_of(&command[1], "sleep seconds").parse::<u64>().expect("preStop sleep seconds")
        }
        Some(command) => panic!("unexpected preStop command {command:?}"),
        None => pre_stop["sleep"]["seconds"].as_u64().unwrap_or(0),
    };
    assert!(termination > grace, "terminationGracePeriodSeconds {termination} <= CHATKIT_SHUTDOWN_GRACE_SECS {grace}");
    assert!(
        termination > hook + grace + CONNECTION_DRAIN_SECS,
        "terminationGracePeriodSeconds {termination} <= preStop {hook}s + grace {grace}s + drain {CONNECTION_DRAIN_SECS}s"
    );

    // Probes: ready is /readyz, alive is /healthz, on the port the gateway binds.
    let bind: SocketAddr = str_of(&data["CHATKIT_BIND"], "CHATKIT_BIND").parse().unwrap();
    assert!(bind.ip().is_unspecified(), "the pod must listen on every interface, not {bind}");
    let ports = container["ports"].as_array().expect("ports");
    let port_of = |reference: &Value| -> u64 {
        match reference {
            Value::Number(n) => n.as_u64().unwrap(),
            Value::String(name) => ports
                .iter()
                .find(|p| p["name"] == name.as_str())
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {name}")),
            other => panic!("bad port {other}"),
        }
    };
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(port_of(&get["port"]), u64::from(bind.port()), "{probe} port");
    }
    if container.get("startupProbe").is_some() {
        assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz");
    }

    // Not root, nothing writable but the volumes.
    let run_as_non_root =
        pod["securityContext"]["runAsNonRoot"] == true || container["securityContext"]["runAsNonRoot"] == true;
    assert!(run_as_non_root, "runAsNonRoot");
    assert_ne!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);

    // Attachment bytes on a volume every replica shares.
    let data_dir = str_of(&data["CHATKIT_DATA_DIR"], "CHATKIT_DATA_DIR");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["mountPath"] == data_dir)
        .unwrap_or_else(|| panic!("nothing mounted at CHATKIT_DATA_DIR {data_dir}"));
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).expect("the volume");
    let claim = k8s_object("PersistentVolumeClaim");
    assert_eq!(volume["persistentVolumeClaim"]["claimName"], claim["metadata"]["name"]);
    assert!(claim["spec"]["accessModes"].as_array().unwrap().contains(&json!("ReadWriteMany")), "shared by replicas");
}

#[test]
fn service_pdb_hpa_ingress_and_service_monitor_point_at_the_deployment() {
    let deployment = k8s_object("Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];

    let service = k8s_object("Service");
    assert!(labels_within(&service["spec"]["selector"], pod_labels), "the Service selects the pods");
    let ports = service["spec"]["ports"].as_array().expect("service ports");
    let http = ports.iter().find(|p| p["name"] == "http").expect("a Service port named http");
    let container_ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"].as_array().unwrap();
    assert!(container_ports.iter().any(|p| p["name"] == http["targetPort"]), "targetPort names a container port");

    let pdb = k8s_object("PodDisruptionBudget");
    assert!(labels_within(&pdb["spec"]["selector"]["matchLabels"], pod_labels), "the PDB selects the pods");
    assert!(pdb["spec"].get("maxUnavailable").is_some() || pdb["spec"].get("minAvailable").is_some());

    let hpa = k8s_object("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);
    let (min, max) = (hpa["spec"]["minReplicas"].as_u64().unwrap(), hpa["spec"]["maxReplicas"].as_u64().unwrap());
    assert!(min >= 2 && max >= min, "{min}..{max} replicas");

    let monitor = k8s_object("ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(labels_within(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]));
    let endpoints = monitor["spec"]["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(endpoint["path"], "/metrics", "the ServiceMonitor scrapes /metrics");
        assert_eq!(endpoint["port"], http["name"], "the ServiceMonitor scrapes the Service's http port");
    }
    // The job label the rules select is the Service's name.
    assert_eq!(service["metadata"]["name"], "chatkit-gateway");

    let ingress = k8s_object("Ingress");
    let annotations = &ingress["metadata"]["annotations"];
    assert_eq!(annotations["nginx.ingress.kubernetes.io/proxy-buffering"], "off");
    let read_timeout: u64 =
        str_of(&annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"], "timeout").parse().unwrap();
    assert!(read_timeout >= 600, "proxy-read-timeout {read_timeout}s is too short for viewer streams");
    for rule in ingress["spec"]["rules"].as_array().expect("rules") {
        for path in rule["http"]["paths"].as_array().expect("paths") {
            assert_eq!(path["backend"]["service"]["name"], service["metadata"]["name"]);
            assert_eq!(path["backend"]["service"]["port"]["name"], http["name"]);
            assert_ne!(path["path"], "/metrics");
        }
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile

/// The Dockerfile's instructions, continuation lines joined, comments left out.
fn dockerfile() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("Dockerfile").lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// The HEALTHCHECK command of the Dockerfile (exec form).
fn healthcheck_command() -> Vec<String> {
    let instruction = dockerfile().into_iter().find(|i| i.starts_with("HEALTHCHECK ")).expect("a HEALTHCHECK");
    let (_, command) = instruction.split_once(" CMD ").expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(command.trim()).expect("the HEALTHCHECK command in exec (JSON) form")
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let instructions = dockerfile();
    let stages: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, i)| i.starts_with("FROM ")).map(|(n, _)| n).collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let (build, runtime) = (&instructions[..*stages.last().unwrap()], &instructions[*stages.last().unwrap()..]);
    assert!(build.iter().any(|i| i.contains("cargo build --release --locked")), "a locked release build");
    assert!(runtime.iter().any(|i| i.starts_with("COPY --from=")), "the runtime copies the binary from the build");
    assert!(!runtime.iter().any(|i| i.contains("cargo ")), "no toolchain in the runtime stage");

    let user = runtime.iter().rev().find_map(|i| i.strip_prefix("USER ")).expect("a USER in the runtime stage");
    let user = user.split(':').next().unwrap();
    assert!(user != "root" && user != "0", "the runtime user must not be root: {user}");

    // Rust version: at least the crate's rust-version.
    let manifest = std::fs::read_to_string(Path::new(ROOT).join("Cargo.toml")).unwrap();
    let needed =
        manifest.lines().find_map(|l| l.strip_prefix("rust-version = ")).expect("rust-version").trim_matches('"');
    let arg = instructions.iter().find_map(|i| i.strip_prefix("ARG RUST_VERSION=")).expect("ARG RUST_VERSION");
    let version = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap()).collect::<Vec<_>>();
    assert!(version(arg) >= version(needed), "RUST_VERSION {arg} < rust-version {needed}");

    // The port it exposes is the one CHATKIT_BIND names.
    let env = runtime.iter().filter(|i| i.starts_with("ENV ")).cloned().collect::<Vec<_>>().join(" ");
    let bind = env.split_whitespace().find_map(|w| w.strip_prefix("CHATKIT_BIND=")).expect("ENV CHATKIT_BIND");
    let port = bind.parse::<SocketAddr>().expect("CHATKIT_BIND").port();
    assert!(runtime.iter().any(|i| *i == format!("EXPOSE {port}")), "EXPOSE {port}");
    assert_eq!(bind, format!("0.0.0.0:{port}"));

    // What the build copies exists, and the ignore file lets it in (and nothing bulky).
    let ignore = read("Dockerfile.dockerignore");
    let ignore: Vec<&str> = ignore.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    assert_eq!(ignore.first(), Some(&"*"), "the ignore file starts by leaving everything out (target/ is large)");
    for copy in build.iter().filter_map(|i| i.strip_prefix("COPY ")) {
        let words: Vec<&str> = copy.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(Path::new(ROOT).join(source).exists(), "COPY {source}: missing from the repository");
            assert!(
                ignore.iter().any(|l| l.strip_prefix('!').is_some_and(|allowed| {
                    let allowed = allowed.trim_end_matches('/');
                    allowed == *source || allowed.starts_with(&format!("{source}/"))
                })),
                "COPY {source}: not let in by deploy/Dockerfile.dockerignore"
            );
        }
    }
    assert!(runtime.iter().any(|i| i.starts_with("ENTRYPOINT ") && i.contains("chatkit-gateway")));
    assert_eq!(healthcheck_command()[0], "bash");
}

/// The image's HEALTHCHECK, run here against a real gateway: healthy when /readyz answers 200,
/// unhealthy when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_healthcheck_asks_readyz() {
    let app = spawn_app();
    let command = healthcheck_command();
    let check = |bind: String| {
        let mut child = Command::new(&command[0])
            .args(&command[1..])
            .env("CHATKIT_BIND", bind)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the healthcheck");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut output = String::new();
                child.stderr.take().unwrap().read_to_string(&mut output).unwrap();
                return (status.success(), output);
            }
            assert!(Instant::now() < deadline, "the healthcheck hung");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (healthy, output) = check(format!("0.0.0.0:{}", app.addr.port()));
    assert!(healthy, "the healthcheck failed against a ready gateway: {output}");
    let closed = free_port();
    let (healthy, _) = check(format!("0.0.0.0:{closed}"));
    assert!(!healthy, "the healthcheck passed with nothing listening");
    // And it reads the status line: a server answering 503 is unhealthy.
    let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        // Bounded: a healthcheck that never connects must not hang the test.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Err(error) => panic!("the healthcheck did not connect: {error}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").unwrap();
    });
    let (healthy, _) = check(format!("0.0.0.0:{port}"));
    assert!(!healthy, "the healthcheck passed on a 503");
    server.join().unwrap();
}
