//! The metrics the gateway exports, read from PromQL in the alert rules and the dashboard; promtool on the Prometheus files.

use super::*;

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
pub(super) fn panels(dashboard: &Value) -> Vec<&Value> {
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
