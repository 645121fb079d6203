//! Shared integration-test helpers: spawn the real app on a loopback port and talk to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header::HeaderName;
use chatkit_gateway::app::App;
use chatkit_gateway::config::Config;
use chatkit_gateway::engine::Engine;
use chatkit_gateway::responder::{EchoResponder, Responder};
use chatkit_gateway::store::{MemoryStore, Store};
use chatkit_gateway::thread::ThreadRegistry;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Bounds every request a test makes, so a hang fails the test instead of stalling CI.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A running gateway on 127.0.0.1 with its own data directory, stopped on drop.
pub struct TestApp {
    pub base: String,
    pub addr: SocketAddr,
    pub store: Arc<dyn Store>,
    pub engine: Arc<Engine>,
    pub threads: ThreadRegistry,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<()>>,
    transcript: Option<Arc<Mutex<Vec<Value>>>>,
    _dir: tempfile::TempDir,
}

/// How to build a test app; every field has a sensible default.
pub struct Spawn {
    pub store: Option<Arc<dyn Store>>,
    pub responder: Arc<dyn Responder>,
    pub configure: Box<dyn FnOnce(&mut Config) + Send>,
    pub record: bool,
}

impl Default for Spawn {
    fn default() -> Self {
        Spawn { store: None, responder: Arc::new(EchoResponder::new()), configure: Box::new(|_| {}), record: false }
    }
}

/// The default app: in-memory store, echo responder.
pub fn spawn_app() -> TestApp {
    spawn(Spawn::default())
}

pub fn spawn(options: Spawn) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::for_tests(dir.path().join("data"));
    (options.configure)(&mut config);
    let store: Arc<dyn Store> = options.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
    let responder = options.responder;
    let app_store = store.clone();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // The app runs in its own thread with its own actix system, as `main` runs it.
    let server = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let header = HeaderName::try_from(config.access.user_header.as_str()).expect("header name");
            std::fs::create_dir_all(&config.storage.data_dir).expect("data dir");
            let app = App::build_with(config, header, app_store, responder).expect("app builds");
            addr_tx.send((app.local_addr(), app.engine().clone(), app.threads().clone())).expect("report address");
            app.run_until(async {
                let _ = stop_rx.await;
            })
            .await
            .expect("app runs");
        })
    });
    let (addr, engine, threads) = addr_rx.recv_timeout(Duration::from_secs(20)).expect("app started");
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().expect("client");
    TestApp {
        // Connect over loopback even when the app binds every interface.
        base: format!("http://127.0.0.1:{}", addr.port()),
        addr,
        store,
        engine,
        threads,
        client,
        stop: Some(stop_tx),
        server: Some(server),
        transcript: options.record.then(Default::default),
        _dir: dir,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

/// A request body for `POST /chatkit`.
pub fn request(op: &str, params: Value) -> Value {
    json!({"type": op, "params": params})
}

/// A user message input with one text part, as ChatKit.js sends it.
pub fn text_input(text: &str) -> Value {
    json!({"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": {}})
}

/// Parses a turn stream: only `data:` frames separated by blank lines are allowed.
pub fn parse_sse(body: &str) -> Vec<Value> {
    let mut events = Vec::new();
    for frame in body.split("\n\n").filter(|frame| !frame.is_empty()) {
        let data = frame.strip_prefix("data: ").unwrap_or_else(|| panic!("frame is not a lone data line: {frame:?}"));
        assert!(!data.contains('\n'), "frame has more than one line: {frame:?}");
        events.push(serde_json::from_str(data).unwrap_or_else(|e| panic!("bad event JSON {data:?}: {e}")));
    }
    events
}

/// The `type` of each event, for order checks.
pub fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|event| event["type"].as_str().unwrap_or("?")).collect()
}

/// The first item of type `kind` a turn finished (`thread.item.done`).
pub fn find_item<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == "thread.item.done" && e["item"]["type"] == kind)
        .map(|e| &e["item"])
        .unwrap_or_else(|| panic!("no {kind} item among {:?}", types(events)))
}

impl TestApp {
    /// Refusals counted so far: (locked, closed).
    pub fn engine_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.engine.stats();
        (stats.refused_locked.load(Relaxed), stats.refused_closed.load(Relaxed))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a raw body as `user` (no header when `None`).
    pub async fn post_raw(&self, user: Option<&str>, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let mut builder = self.client.post(self.url("/chatkit")).header("content-type", "application/json").body(body);
        if let Some(user) = user {
            builder = builder.header("x-user-id", user);
        }
        builder.send().await.expect("request sent")
    }

    fn record(&self, op: &str, kind: &str, body: &Value) {
        if let Some(transcript) = &self.transcript {
            transcript.lock().unwrap().push(json!({"op": op, "kind": kind, "body": body}));
        }
    }

    /// Every response and event recorded so far, one JSON object per line.
    pub fn transcript_lines(&self) -> String {
        let transcript = self.transcript.as_ref().expect("app was spawned with record: true");
        transcript.lock().unwrap().iter().map(|line| format!("{line}\n")).collect()
    }

    /// Calls an operation and returns its status and JSON body, whatever they are.
    pub async fn try_call(&self, user: &str, op: &str, params: Value) -> (StatusCode, Value) {
        let response = self.post_raw(Some(user), request(op, params).to_string()).await;
        let status = response.status();
        let text = response.text().await.expect("body");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{op}: body is not JSON ({e}): {text}"));
        if status == StatusCode::OK {
            self.record(op, "response", &body);
        }
        (status, body)
    }

    /// Calls a JSON operation that must succeed.
    pub async fn call(&self, user: &str, op: &str, params: Value) -> Value {
        let (status, body) = self.try_call(user, op, params).await;
        assert_eq!(status, StatusCode::OK, "{op} failed: {body}");
        body
    }

    /// Calls a streaming operation that must answer 200 with an event stream.
    pub async fn stream(&self, user: &str, op: &str, params: Value) -> Vec<Value> {
        let response = self.post_raw(Some(user), request(op, params).to_string()).await;
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        let text = response.text().await.expect("body");
        assert_eq!(status, StatusCode::OK, "{op} failed: {text}");
        assert_eq!(content_type.as_deref(), Some("text/event-stream"), "{op}");
        let events = parse_sse(&text);
        for event in &events {
            self.record(op, "event", event);
        }
        events
    }

    /// Creates a thread with one message; returns its id and the turn's events.
    pub async fn create_thread(&self, user: &str, text: &str) -> (String, Vec<Value>) {
        let events = self.stream(user, "threads.create", json!({"input": text_input(text)})).await;
        let id = events[0]["thread"]["id"].as_str().expect("thread.created comes first").to_string();
        (id, events)
    }

    /// Starts a thread whose first message uses every kind of user input: text,
    /// a tag, an uploaded image attachment, a quote and inference options.
    /// Answers the `threads.create` stream.
    pub async fn create_rich_thread(&self, user: &str) -> Vec<Value> {
        let image = self
            .call(user, "attachments.create", json!({"name": "cat.png", "size": 3, "mime_type": "image/png"}))
            .await;
        let upload_url = image["upload_descriptor"]["url"].as_str().expect("upload url");
        let uploaded = self.client.put(upload_url).body(vec![1u8, 2, 3]).send().await.expect("upload");
        assert!(uploaded.status().is_success(), "the upload answered {}", uploaded.status());
        let input = json!({
            "content": [
                {"type": "input_text", "text": "Look at this "},
                {"type": "input_tag", "id": "t1", "text": "@cat", "data": {"k": "v"}, "interactive": true}
            ],
            "attachments": [image["id"]],
            "quoted_text": "a quote",
            "inference_options": {"model": "echo", "tool_choice": {"id": "search"}}
        });
        self.stream(user, "threads.create", json!({"input": input})).await
    }

    /// Sends a user message to a thread; returns the turn's events.
    pub async fn say(&self, user: &str, thread_id: &str, text: &str) -> Vec<Value> {
        self.stream(user, "threads.add_user_message", json!({"thread_id": thread_id, "input": text_input(text)})).await
    }

    /// All items of a thread as a client sees them, oldest first (every page).
    pub async fn items(&self, user: &str, thread_id: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut after = Value::Null;
        loop {
            let params = json!({"thread_id": thread_id, "order": "asc", "limit": 100, "after": after});
            let page = self.call(user, "items.list", params).await;
            items.extend(page["data"].as_array().expect("data").iter().cloned());
            if page["has_more"] != true {
                return items;
            }
            after = page["after"].clone();
        }
    }

    /// Asserts an error answer: its status, and that its message mentions `needle`.
    pub async fn check_error(&self, user: &str, op: &str, params: Value, status: u16, needle: &str) {
        let (got, body) = self.try_call(user, op, params).await;
        assert_eq!(got.as_u16(), status, "{op}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("{op}: no error message: {body}"));
        assert!(message.contains(needle), "{op}: `{message}` does not mention `{needle}`");
    }
}

/// The text of the last assistant message among events.
pub fn assistant_text(events: &[Value]) -> String {
    events
        .iter()
        .rev()
        .find(|e| e["type"] == "thread.item.done" && e["item"]["type"] == "assistant_message")
        .map(|e| e["item"]["content"][0]["text"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no assistant message among {:?}", types(events)))
}

/// The text a turn streamed, from its text deltas alone.
pub fn deltas(events: &[Value]) -> String {
    events
        .iter()
        .filter(|e| e["update"]["type"] == "assistant_message.content_part.text_delta")
        .map(|e| e["update"]["delta"].as_str().unwrap_or_default())
        .collect()
}

/// Whether a turn was refused with exactly one error event carrying `reason`.
pub fn refused_with(events: &[Value], reason: &str) -> bool {
    events.len() == 1 && events[0]["type"] == "error" && events[0]["message"] == reason
}

/// The test venv's python (openai-chatkit, the `openai` SDK, PyYAML, kubernetes-validate);
/// `scripts/provision.sh` (run by `scripts/test.sh`) makes it, or `CHATKIT_CONFORMANCE_PYTHON` names another.
pub fn venv_python() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("CHATKIT_CONFORMANCE_PYTHON") {
        return std::path::PathBuf::from(path);
    }
    let default = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-conformance/bin/python");
    assert!(
        default.exists(),
        "no test venv Python: run `bash scripts/test.sh` (it creates {}) or set CHATKIT_CONFORMANCE_PYTHON",
        default.display()
    );
    default
}

/// Runs the reference validator (`tests/conformance/validate.py`, openai-chatkit's own types) on a
/// transcript of JSON lines; fails unless every line passes, and answers its report.
pub fn check_conformance(transcript: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("transcript.jsonl");
    std::fs::write(&path, transcript).expect("write the transcript");
    let validator = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/validate.py");
    let output =
        std::process::Command::new(venv_python()).arg(&validator).arg(&path).output().expect("run the validator");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("{report}");
    assert!(output.status.success(), "the reference types reject what the server sent:\n{report}");
    assert!(report.contains(" passed, 0 failed"), "{report}");
    report
}

/// Waits (bounded) until `check` holds, polling.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

// ---------------------------------------------------------------------------
// Helpers for the per-op, bad-input and responder tests.

pub mod fake_openai;
pub mod gated;
pub mod mcp;
pub mod moto;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod redis;
pub mod redis_cluster;
pub mod scripted;
pub mod viewer;

impl TestApp {
    /// Opens the viewer stream of a thread as `user`.
    pub async fn view_thread(&self, user: &str, thread_id: &str) -> viewer::Viewer {
        viewer::open(&self.url(&format!("/chatkit/threads/{thread_id}/events")), user, None).await
    }

    /// Opens `user`'s history stream.
    pub async fn view_history(&self, user: &str) -> viewer::Viewer {
        viewer::open(&self.url("/chatkit/events"), user, None).await
    }
}

/// Asserts the documented error body: `{"error": {"message", "type", "code"}}`, three strings and nothing else.
pub fn check_error_body(body: &Value) {
    let error = body["error"].as_object().unwrap_or_else(|| panic!("not an error body: {body}"));
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "extra keys beside `error`: {body}");
    let mut keys: Vec<&str> = error.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "request_id", "type"], "error keys: {body}");
    assert!(error.values().all(|v| v.as_str().is_some_and(|s| !s.is_empty())), "error fields must be text: {body}");
}

/// Asserts that a response is a JSON error with `status` and the documented shape; returns the `error` object.
pub async fn error_of(response: reqwest::Response, status: u16) -> Value {
    let got = response.status().as_u16();
    let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap_or("?").to_string());
    let request_id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap_or("?").to_string());
    let text = response.text().await.expect("error body");
    assert_eq!(got, status, "unexpected status; body: {text}");
    assert_eq!(content_type.as_deref(), Some("application/json"), "an error must be JSON, not a stream: {text}");
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    check_error_body(&body);
    // Every error answer names its request the same way in the header and the body.
    assert_eq!(body["error"]["request_id"].as_str(), request_id.as_deref(), "request ids differ: {text}");
    body["error"].clone()
}

impl TestApp {
    /// Calls an operation that must fail with `status` and a well-formed JSON error; returns the `error` object.
    pub async fn expect_error(&self, user: &str, op: &str, params: Value, status: u16) -> Value {
        let response = self.post_raw(Some(user), request(op, params).to_string()).await;
        let error = error_of(response, status).await;
        assert!(!error["message"].as_str().unwrap_or_default().is_empty(), "{op}: empty message");
        error
    }

    /// Calls an operation and returns its status and raw body text, for exact-body checks such as `{}`.
    pub async fn call_text(&self, user: &str, op: &str, params: Value) -> (StatusCode, String) {
        let response = self.post_raw(Some(user), request(op, params).to_string()).await;
        let status = response.status();
        (status, response.text().await.expect("body"))
    }
}

/// The variable that tells a child process which test it runs alone.
const ALONE: &str = "CHATKIT_TEST_ALONE";

/// For a test that needs the process to itself (it reads process-wide state
/// that other tests move): in the test program's own run, re-runs this program
/// with only `test` selected and checks that it ran and passed, then answers
/// false; in that child, answers true, and the caller runs the test's body.
pub fn alone(test: &str) -> bool {
    if std::env::var(ALONE).is_ok_and(|name| name == test) {
        return true;
    }
    let program = std::env::current_exe().expect("the test program's path");
    let output = std::process::Command::new(program)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ALONE, test)
        .output()
        .expect("run the test in a process of its own");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "`{test}` failed in its own process:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "`{test}` did not run in its own process:\n{stdout}");
    false
}

/// Ports handed out by [`free_port`]: below Linux's ephemeral range, so no
/// outgoing connection takes one between the check and its use, and clear of
/// the well-known ports (6379, 5432) that real servers here listen on.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port that nothing listens on now, for a server a test starts
/// itself (a `redis-server`, nginx) or for a connection that must be refused.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = TEST_PORTS.start + rand::random::<u16>() % (TEST_PORTS.end - TEST_PORTS.start);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}
