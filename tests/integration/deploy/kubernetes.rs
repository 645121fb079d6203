//! The Kubernetes manifests: schemas, kustomization, probes, grace periods and the objects that point at the deployment.

use super::*;

/// Every Kubernetes object under deploy/k8s/, with the file it is in.
fn k8s_objects() -> Vec<(&'static str, &'static Value)> {
    yaml_files()
        .iter()
        .filter(|(path, _)| path.starts_with("k8s/") && !path.ends_with("kustomization.yaml"))
        .flat_map(|(path, documents)| documents.iter().map(move |document| (path.as_str(), document)))
        .collect()
}

/// The one object of `kind` applied by kustomization.yaml.
pub(super) fn k8s_object(kind: &str) -> &'static Value {
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
