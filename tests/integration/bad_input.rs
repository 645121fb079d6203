//! Malformed, unauthenticated, oversized and misdirected requests: each gets a JSON 4xx error, never a 5xx.

use crate::common::*;
use chatkit_gateway::protocol::Request;
use serde_json::{json, Value};

/// A small body limit, so oversized bodies stay small in tests.
const BODY_LIMIT: usize = 1024;

fn small_body_app() -> TestApp {
    spawn(Spawn { configure: Box::new(|config| config.server.max_body_bytes = BODY_LIMIT), ..Spawn::default() })
}

/// Posts a raw body as alice and checks the error; returns the `error` object.
async fn check_raw(app: &TestApp, body: &str, status: u16, code: &str) -> Value {
    let error = error_of(app.post_raw(Some("alice"), body.to_string()).await, status).await;
    assert_eq!(error["code"], code, "{body}: {error}");
    error
}

fn message(error: &Value) -> &str {
    error["message"].as_str().unwrap_or_default()
}

/// A valid `threads.create` body of at least `size` bytes.
fn padded_create(size: usize) -> String {
    let body = request("threads.create", json!({"input": text_input(&"x".repeat(size))})).to_string();
    assert!(body.len() > size);
    body
}

/// The server still answers a normal turn.
async fn check_still_serving(app: &TestApp) {
    let (_, events) = app.create_thread("alice", "still here").await;
    assert_eq!(assistant_text(&events), "echo: still here");
}

#[tokio::test]
async fn malformed_envelopes_are_400_with_a_reason() {
    let app = spawn_app();
    check_raw(&app, "{not json", 400, "invalid_json").await;
    check_raw(&app, "", 400, "invalid_json").await;
    check_raw(&app, r#"{"params": {}}"#, 400, "invalid_type").await;

    let unknown = check_raw(&app, r#"{"type": "threads.nope", "params": {}}"#, 400, "invalid_type").await;
    assert!(message(&unknown).contains("threads.nope"), "{unknown}");
    for op in Request::OPS {
        assert!(message(&unknown).contains(op), "the known ops are listed: {unknown}");
    }

    let missing = check_raw(&app, r#"{"type": "threads.list"}"#, 400, "invalid_params").await;
    assert!(message(&missing).contains("params"), "{missing}");
    // serde would read these positionally; the protocol only has objects.
    check_raw(&app, r#"["threads.list", {}]"#, 400, "invalid_json").await;
    check_raw(&app, r#"{"type": "threads.list", "params": []}"#, 400, "invalid_params").await;
    check_still_serving(&app).await;
}

#[tokio::test]
async fn invalid_params_name_the_offending_path() {
    let app = spawn_app();
    let mistyped = app.expect_error("alice", "threads.get_by_id", json!({"thread_id": 5}), 400).await;
    assert_eq!(mistyped["code"], "invalid_params");
    assert!(message(&mistyped).contains("params.thread_id"), "{mistyped}");

    let input = json!({"content": [{"type": "input_text", "text": "ok"}, {"type": "input_image", "url": "x"}]});
    let part = app.expect_error("alice", "threads.create", json!({"input": input}), 400).await;
    assert!(message(&part).contains("params.input.content[1]"), "{part}");

    let missing = app.expect_error("alice", "threads.add_user_message", json!({"input": text_input("x")}), 400).await;
    assert!(message(&missing).contains("thread_id"), "{missing}");
    // A refused create leaves no thread behind.
    assert_eq!(app.call("alice", "threads.list", json!({})).await, json!({"data": [], "has_more": false}));
    check_still_serving(&app).await;
}

#[tokio::test]
async fn a_request_without_a_user_is_401() {
    let app = spawn_app();
    let body = request("threads.list", json!({})).to_string();
    let error = error_of(app.post_raw(None, body.clone()).await, 401).await;
    assert!(message(&error).contains("x-user-id"), "{error}");
    let blank = app.client.post(app.url("/chatkit")).header("x-user-id", "  ").body(body).send().await.expect("sent");
    error_of(blank, 401).await;
    check_still_serving(&app).await;
}

#[tokio::test]
async fn an_oversized_body_is_413_with_or_without_content_length() {
    let app = small_body_app();
    let declared = error_of(app.post_raw(Some("alice"), padded_create(BODY_LIMIT)).await, 413).await;
    assert_eq!(declared["code"], "payload_too_large");

    // A streamed body has no Content-Length, so the limit must hold while reading.
    let chunks: Vec<Result<String, std::io::Error>> = padded_create(4 * BODY_LIMIT)
        .as_bytes()
        .chunks(256)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let error = error_of(app.post_raw(Some("alice"), streamed).await, 413).await;
    assert_eq!(error["code"], "payload_too_large");

    // A streamed body under the limit is read whole.
    let fits = padded_create(BODY_LIMIT / 2);
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(fits[..100].to_string()), Ok(fits[100..].to_string())];
    let response = app.post_raw(Some("alice"), reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(assistant_text(&parse_sse(&response.text().await.expect("body"))), format!("echo: {}", "x".repeat(512)));
    check_still_serving(&app).await;
}

#[tokio::test]
async fn a_streaming_op_on_an_unknown_thread_is_a_404_error_not_a_stream() {
    let app = spawn_app();
    let t = "thr_missing";
    let attempts = [
        ("threads.add_user_message", json!({"thread_id": t, "input": text_input("hi")})),
        ("threads.add_client_tool_output", json!({"thread_id": t, "result": {}})),
        ("threads.add_structured_input", json!({"thread_id": t, "item_id": "msg_x", "input": {}})),
        ("threads.retry_after_item", json!({"thread_id": t, "item_id": "msg_x"})),
        ("threads.custom_action", json!({"thread_id": t, "action": {"type": "x"}})),
    ];
    for (op, params) in attempts {
        let error = app.expect_error("alice", op, params, 404).await;
        assert!(message(&error).contains(t), "{op}: {error}");
    }
    check_still_serving(&app).await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_404() {
    let app = spawn_app();
    for (method, path) in [("GET", "/chatkit"), ("GET", "/nope"), ("POST", "/nope"), ("DELETE", "/chatkit")] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app.client.request(method.clone(), app.url(path)).send().await.expect("sent");
        let error = error_of(response, 404).await;
        assert!(message(&error).contains(path), "{method} {path}: {error}");
    }
    check_still_serving(&app).await;
}

#[tokio::test]
async fn no_bad_request_is_ever_a_server_error() {
    let app = small_body_app();
    let bodies = [
        "null".to_string(),
        "[]".to_string(),
        "42".to_string(),
        r#"{"type": 7, "params": {}}"#.to_string(),
        r#"{"type": "threads.list", "params": {"limit": "ten"}}"#.to_string(),
        r#"{"type": "threads.list", "params": {"order": "sideways"}}"#.to_string(),
        r#"{"type": "threads.list", "params": {"limit": 99999999999999999999}}"#.to_string(),
        r#"{"type": "items.feedback", "params": {"thread_id": "t", "item_ids": [], "kind": "meh"}}"#.to_string(),
        r#"{"type": "attachments.create", "params": {"name": "", "size": 1, "mime_type": "text/plain"}}"#.to_string(),
        r#"{"type": "input.transcribe", "params": {"audio_base64": "%%%", "mime_type": "audio/webm"}}"#.to_string(),
        "\u{feff}{}".to_string(),
        "\u{0}".to_string(),
        padded_create(BODY_LIMIT),
    ];
    for body in bodies {
        let response = app.post_raw(Some("alice"), body.clone()).await;
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{body:.80}: {status}");
        error_of(response, status).await;
    }
    check_still_serving(&app).await;
}
