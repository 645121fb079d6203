//! Request ids and structured logs: `x-request-id` on every answer (JSON, streams, errors, probes),
//! an incoming id kept and a bad one replaced, `error.request_id` equal to the header, and a real
//! process logging JSON lines that carry the request id and no secret.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::process::GatewayProcess;
use crate::common::*;

/// The answer's `x-request-id`, which every answer must carry.
fn request_id_of(response: &reqwest::Response) -> String {
    let header = response.headers().get("x-request-id").unwrap_or_else(|| panic!("no x-request-id: {response:?}"));
    header.to_str().expect("an ASCII request id").to_string()
}

/// A fresh id as the gateway makes them: `req_` and 16 hex digits.
fn is_fresh(id: &str) -> bool {
    id.strip_prefix("req_").is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `POST /chatkit` as alice, with an incoming `x-request-id` when given.
async fn post(app: &TestApp, op: &str, params: Value, incoming: Option<&str>) -> reqwest::Response {
    let mut builder = app.client.post(app.url("/chatkit")).header("x-user-id", "alice").json(&request(op, params));
    if let Some(id) = incoming {
        builder = builder.header("x-request-id", id);
    }
    builder.send().await.expect("request sent")
}

#[tokio::test]
async fn every_answer_carries_a_request_id_and_errors_repeat_it() {
    let app = spawn_app();
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(is_fresh(&request_id_of(&health)), "{health:?}");

    let turn = post(&app, "threads.create", json!({"input": text_input("hi")}), None).await;
    assert_eq!(turn.headers()["content-type"], "text/event-stream");
    let turn_id = request_id_of(&turn);
    let events = parse_sse(&turn.text().await.unwrap());
    let thread_id = events[0]["thread"]["id"].as_str().unwrap().to_string();

    let listed = post(&app, "threads.list", json!({}), None).await;
    assert_eq!(listed.status(), 200);
    let listed_id = request_id_of(&listed);
    assert!(is_fresh(&turn_id) && is_fresh(&listed_id) && turn_id != listed_id, "{turn_id} {listed_id}");

    let viewer = app.client.get(app.url("/chatkit/events")).header("x-user-id", "alice").send().await.unwrap();
    assert_eq!(viewer.headers()["content-type"], "text/event-stream");
    assert!(is_fresh(&request_id_of(&viewer)));
    drop(viewer);

    // `error_of` checks that the body's `error.request_id` is the header's, for every error any test meets.
    let bad_json = app.post_raw(Some("alice"), "{not json").await;
    assert!(is_fresh(error_of(bad_json, 400).await["request_id"].as_str().unwrap()));
    error_of(post(&app, "threads.get_by_id", json!({"thread_id": "thr_missing"}), None).await, 404).await;
    error_of(app.client.get(app.url("/no/such/route")).send().await.unwrap(), 404).await;
    error_of(app.client.get(app.url("/v1/chatkit/threads/thr_missing")).send().await.unwrap(), 404).await;
    // The answer is the newest item, not a pending tool call: a conflict.
    let output = json!({"thread_id": thread_id, "result": {}});
    error_of(post(&app, "threads.add_client_tool_output", output, None).await, 409).await;
}

#[tokio::test]
async fn an_incoming_request_id_is_kept_and_a_bad_one_replaced() {
    let app = spawn_app();
    let kept = post(&app, "threads.list", json!({}), Some("lb-7f3a:trace/1")).await;
    assert_eq!(request_id_of(&kept), "lb-7f3a:trace/1");
    let longest = "a".repeat(200);
    assert_eq!(request_id_of(&post(&app, "threads.list", json!({}), Some(&longest)).await), longest);
    let missing = json!({"thread_id": "thr_missing"});
    let error = error_of(post(&app, "threads.get_by_id", missing.clone(), Some("client-42")).await, 404).await;
    assert_eq!(error["request_id"], "client-42");

    for bad in ["a".repeat(201), "two words".to_string(), String::new()] {
        let response = post(&app, "threads.get_by_id", missing.clone(), Some(&bad)).await;
        let replaced = request_id_of(&response);
        assert!(is_fresh(&replaced), "{bad:?} gave {replaced}");
        assert_eq!(error_of(response, 404).await["request_id"].as_str(), Some(replaced.as_str()));
    }
    let raw = app
        .client
        .post(app.url("/chatkit"))
        .header("x-user-id", "alice")
        .header("x-request-id", reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
        .json(&request("threads.list", json!({})))
        .send()
        .await
        .unwrap();
    assert!(is_fresh(&request_id_of(&raw)), "a non-ASCII id is replaced");
}

/// The secrets the JSON-log run uses; none may appear in any line.
const ADMIN_KEY: &str = "admin-key-json-logs-0f9e";

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_request_id_and_no_secret() {
    let mut gateway = GatewayProcess::start(&[
        ("CHATKIT_LOG_FORMAT", "json".into()),
        // Debug lines of the gateway too: they must keep secrets out as well.
        ("CHATKIT_LOG", "info,chatkit_gateway=debug".into()),
        ("DATABASE_URL", "sqlite://{dir}/chatkit.db".into()),
        ("CHATKIT_AUTH", "session".into()),
        ("CHATKIT_ADMIN_KEYS", ADMIN_KEY.into()),
    ]);
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap();
    let url = |path: &str| format!("{}{path}", gateway.base);
    let session: Value = client
        .post(url("/v1/chatkit/sessions"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"user": "alice", "workflow": {"id": "wf_logs"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = session["client_secret"].as_str().expect("a client secret").to_string();
    let chatkit = |op: &str, params: Value, id: &str| {
        client.post(url("/chatkit")).bearer_auth(&secret).header("x-request-id", id).json(&request(op, params)).send()
    };
    let turn = chatkit("threads.create", json!({"input": text_input("hello")}), "turn-1").await.unwrap();
    let events = parse_sse(&turn.text().await.unwrap());
    let thread_id = events[0]["thread"]["id"].as_str().unwrap().to_string();
    let again =
        chatkit("threads.add_user_message", json!({"thread_id": thread_id, "input": text_input("again")}), "turn-2");
    assert!(parse_sse(&again.await.unwrap().text().await.unwrap()).len() > 2);
    let missing = chatkit("threads.get_by_id", json!({"thread_id": "thr_missing"}), "error-1").await.unwrap();
    assert_eq!(error_of(missing, 404).await["request_id"], "error-1");

    gateway.signal("TERM");
    assert!(gateway.wait_exit(Duration::from_secs(20)).success());
    let lines = gateway.stdout_lines();
    let (mut answered, mut inside) = (Vec::new(), Vec::new());
    for line in &lines {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        for field in ["timestamp", "level", "target"] {
            assert!(parsed[field].is_string(), "no {field}: {line}");
        }
        assert!(!line.contains(&secret) && !line.contains("ck_secret_"), "a line carries a client secret: {line}");
        assert!(!line.contains(ADMIN_KEY), "a line carries the admin key: {line}");
        let spans = parsed["spans"].as_array().cloned().unwrap_or_default();
        if let Some(request) = spans.iter().find(|span| span["name"] == "http.request") {
            assert!(request["request_id"].is_string() && request["method"].is_string(), "{line}");
            if parsed["message"] == "answered" {
                answered.push((request["request_id"].clone(), request["op"].clone(), parsed["status"].clone()));
            } else {
                inside.push((parsed["message"].clone(), request["request_id"].clone()));
            }
        }
    }
    for expected in [
        (json!("turn-1"), json!("threads.create"), json!(200)),
        (json!("turn-2"), json!("threads.add_user_message"), json!(200)),
        (json!("error-1"), json!("threads.get_by_id"), json!(404)),
    ] {
        assert!(answered.contains(&expected), "no answered line for {expected:?} in {answered:?}");
    }
    // Lines the handlers log carry the request span as well, not only the middleware's own.
    assert!(inside.contains(&(json!("request"), json!("turn-1"))), "{inside:?}");
    assert!(inside.contains(&(json!("session created"), answered_id(&lines, "/v1/chatkit/sessions"))), "{inside:?}");
    assert!(lines.iter().any(|line| line.contains("SIGTERM")), "the shutdown is logged: {lines:?}");
}

/// The request id of the `answered` line of the request to `path`.
fn answered_id(lines: &[String], path: &str) -> Value {
    let line = lines
        .iter()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|line| line["message"] == "answered" && line["spans"][0]["path"] == path)
        .unwrap_or_else(|| panic!("no answer to {path}"));
    line["spans"][0]["request_id"].clone()
}
