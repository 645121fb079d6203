//! The compose file: three replicas on PostgreSQL and Redis behind nginx.

use super::*;

fn compose() -> &'static Value {
    yaml("docker-compose.yml")
}

fn service(name: &str) -> &'static Value {
    let service = &compose()["services"][name];
    assert!(service.is_object(), "docker-compose.yml has no service {name}");
    service
}

/// The gateway replicas: the services named `gateway-N`.
pub(super) fn gateway_services() -> Vec<String> {
    let services = compose()["services"].as_object().expect("services");
    services.keys().filter(|name| name.starts_with("gateway-")).cloned().collect()
}

/// The port the gateway replicas listen on in compose (from their CHATKIT_BIND).
pub(super) fn gateway_port() -> u16 {
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
