//! Traces in the deployment: the compose replicas export to Tempo, Grafana reads it, and the dashboard's latency
//! panels link to searches that find the gateway's spans.

use super::*;
use chatkit_gateway::config::Config;
use clap::Parser;

/// The source of the gateway, all of it: where span names and attributes are defined.
fn gateway_source() -> String {
    let mut text = String::new();
    let mut stack = vec![Path::new(ROOT).join("src")];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    text
}

/// A compose value such as `${NAME:-default}` as compose fills it in when `NAME` is unset.
fn with_defaults(text: &str) -> String {
    match text.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) {
        Some(inner) => inner.split_once(":-").map(|(_, default)| default.to_string()).unwrap_or_default(),
        None => text.to_string(),
    }
}

/// `%XX` escapes decoded; Grafana's `${...}` variables stay as written.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).expect("a UTF-8 link")
}

/// The port a `host:port` or `http://host:port` address names.
fn port_of(address: &str) -> u16 {
    let rest = address.rsplit_once(':').map(|(_, port)| port).unwrap_or_else(|| panic!("no port in {address}"));
    rest.trim_end_matches('/').parse().unwrap_or_else(|_| panic!("no port in {address}"))
}

#[test]
fn the_replicas_export_traces_to_the_compose_tempo_with_settings_the_gateway_accepts() {
    let compose = yaml("docker-compose.yml");
    let tempo = &compose["services"]["tempo"];
    assert!(str_of(&tempo["image"], "tempo image").starts_with("grafana/tempo:"), "a Tempo service");
    let config_file = tempo["command"]
        .as_array()
        .and_then(|args| args.iter().find_map(|arg| arg.as_str()?.strip_prefix("-config.file=")))
        .expect("Tempo is started with -config.file");
    let mounted: Vec<&str> = tempo["volumes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(mounted.contains(&format!("./tempo/tempo.yaml:{config_file}:ro").as_str()), "{mounted:?}");
    let config = yaml("tempo/tempo.yaml");
    let receiver = str_of(&config["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"], "OTLP HTTP");
    let otlp_port = port_of(receiver);
    let exposed: Vec<String> = tempo["expose"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().into()).collect();
    assert!(exposed.contains(&otlp_port.to_string()), "Tempo exposes its OTLP port {otlp_port}: {exposed:?}");

    for name in gateway_services() {
        let env = &compose["services"][&name]["environment"];
        let endpoint = str_of(&env["OTEL_EXPORTER_OTLP_ENDPOINT"], "OTEL_EXPORTER_OTLP_ENDPOINT");
        assert_eq!(endpoint, format!("http://tempo:{otlp_port}"), "{name} exports to the compose Tempo");
        // What the replica is given, parsed as the gateway parses it.
        let value = |key: &str| with_defaults(str_of(&env[key], key));
        let args = [
            "chatkit-gateway",
            "--otel-endpoint",
            endpoint,
            "--otel-service-name",
            &value("OTEL_SERVICE_NAME"),
            "--otel-sampler",
            &value("OTEL_TRACES_SAMPLER"),
            "--otel-sampler-arg",
            &value("OTEL_TRACES_SAMPLER_ARG"),
            "--log-format",
            &value("CHATKIT_LOG_FORMAT"),
        ];
        let parsed = Config::try_parse_from(args).unwrap_or_else(|e| panic!("{name}'s settings are refused: {e}"));
        assert_eq!(parsed.tracing.settings().endpoint, Some(format!("{endpoint}/v1/traces")));
    }
    let configmap = &k8s_object("ConfigMap")["data"];
    let args = [
        "chatkit-gateway",
        "--otel-endpoint",
        str_of(&configmap["OTEL_EXPORTER_OTLP_ENDPOINT"], "the ConfigMap's endpoint"),
        "--otel-sampler",
        str_of(&configmap["OTEL_TRACES_SAMPLER"], "the ConfigMap's sampler"),
        "--otel-sampler-arg",
        str_of(&configmap["OTEL_TRACES_SAMPLER_ARG"], "the ConfigMap's ratio"),
    ];
    Config::try_parse_from(args).unwrap_or_else(|e| panic!("the ConfigMap's trace settings are refused: {e}"));

    let datasource = &yaml("grafana/provisioning/datasources/tempo.yml")["datasources"][0];
    assert_eq!(datasource["type"], "tempo");
    let http_port = config["server"]["http_listen_port"].as_u64().expect("Tempo's HTTP port");
    assert_eq!(datasource["url"], format!("http://tempo:{http_port}"), "Grafana reads the compose Tempo");
    let grafana_needs: Vec<&Value> = compose["services"]["grafana"]["depends_on"].as_array().unwrap().iter().collect();
    assert!(grafana_needs.contains(&&json!("tempo")), "Grafana starts after Tempo");
}

#[test]
fn every_latency_panel_links_to_a_tempo_search_for_spans_the_gateway_makes() {
    let compose = yaml("docker-compose.yml");
    let service = with_defaults(str_of(&compose["services"]["gateway-1"]["environment"]["OTEL_SERVICE_NAME"], "name"));
    let tempo_uid = str_of(&yaml("grafana/provisioning/datasources/tempo.yml")["datasources"][0]["uid"], "uid");
    let source = gateway_source();
    let text = std::fs::read_to_string(deploy_dir().join("grafana/dashboards/chatkit-gateway.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut linked = 0;
    for panel in panels(&dashboard) {
        let title = str_of(&panel["title"], "title");
        let exprs: Vec<&str> = panel["targets"].as_array().unwrap().iter().filter_map(|t| t["expr"].as_str()).collect();
        if !exprs.iter().any(|expr| expr.contains("histogram_quantile")) {
            continue;
        }
        let links = panel["fieldConfig"]["defaults"]["links"].as_array();
        let link = links.and_then(|links| links.first()).unwrap_or_else(|| panic!("{title}: no link to traces"));
        let url = str_of(&link["url"], "link url");
        let panes = url
            .strip_prefix("/explore?")
            .and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("panes=")).map(percent_decoded));
        let panes: Value =
            serde_json::from_str(&panes.unwrap_or_else(|| panic!("{title}: not an Explore link: {url}")))
                .unwrap_or_else(|e| panic!("{title}: the link's panes are not JSON ({e}): {url}"));
        let pane = panes.as_object().and_then(|panes| panes.values().next()).expect("one pane");
        let query = &pane["queries"][0];
        assert_eq!(
            (&query["datasource"]["uid"], &query["queryType"]),
            (&json!(tempo_uid), &json!("traceql")),
            "{title}"
        );
        assert_eq!((&pane["range"]["from"], &pane["range"]["to"]), (&json!("${__from}"), &json!("${__to}")), "{title}");
        let traceql = str_of(&query["query"], "TraceQL");
        assert!(traceql.contains(&format!("resource.service.name=\"{service}\"")), "{title}: {traceql}");
        // Every span name and span attribute the search names is one the gateway's code writes.
        for part in traceql.trim_matches(['{', '}']).split("&&").map(str::trim) {
            if let Some(name) = part.strip_prefix("name=").map(|n| n.trim_matches('"')) {
                let made = source.contains(&format!("\"{name}\"")) || source.contains(&format!("\"{name} "));
                assert!(made, "{title}: the gateway makes no span named {name}");
            } else if let Some(attribute) = part.strip_prefix("span.") {
                let key = attribute.split(['=', '>', '<', '!', ' ']).next().unwrap();
                let written = source.contains(&format!("{key} =")) || source.contains(&format!("\"{key}\""));
                assert!(written, "{title}: the gateway's spans have no attribute {key}");
            }
        }
        linked += 1;
    }
    assert!(linked >= 5, "the latency panels link to traces ({linked})");
}
