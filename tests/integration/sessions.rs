//! Client sessions: secrets that authenticate `/chatkit` and the viewer
//! streams, their expiry and cancellation, their settings and rate limits.

use std::io::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::common::redis::RedisServer;
use crate::common::viewer::{self, Viewer};
use crate::common::*;
use chatkit_gateway::config::Config;
use chatkit_gateway::fanout::{Coordination, FanoutSettings, LocalFanout, RedisFanout};
use chatkit_gateway::http::AuthMode;
use chatkit_gateway::responder::{EventStream, RespondInput, Responder, TurnContext};
use chatkit_gateway::secret::Secret;
use chatkit_gateway::sessions::{Admission, Sessions};
use serde_json::{json, Value};

/// Everything the gateway logs in this test binary, to check that no secret leaks.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn capture_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| Capture)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
}

pub(crate) fn session_auth(config: &mut Config) {
    config.access.auth = Some(AuthMode::Session);
}

pub(crate) fn spawn_sessions() -> TestApp {
    capture_logs();
    spawn(Spawn { configure: Box::new(session_auth), ..Default::default() })
}

/// `POST /v1/chatkit/sessions`; the status and the answer.
async fn try_create(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.client.post(app.url("/v1/chatkit/sessions")).json(&body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

pub(crate) async fn create(app: &TestApp, body: Value) -> Value {
    let (status, session) = try_create(app, body).await;
    assert_eq!(status, 200, "{session}");
    session
}

pub(crate) async fn session_for(app: &TestApp, user: &str) -> (String, String) {
    let session = create(app, json!({"user": user, "workflow": {"id": "wf_test"}})).await;
    (session["id"].as_str().unwrap().to_string(), session["client_secret"].as_str().unwrap().to_string())
}

/// `POST /chatkit` with a client secret: status, `Retry-After`, body text.
pub(crate) async fn call_with(app: &TestApp, secret: &str, op: &str, params: Value) -> (u16, Option<String>, String) {
    let response = app
        .client
        .post(app.url("/chatkit"))
        .bearer_auth(secret)
        .header("content-type", "application/json")
        .body(request(op, params).to_string())
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, response.text().await.expect("body"))
}

pub(crate) async fn list_threads(app: &TestApp, secret: &str) -> Vec<String> {
    let (status, _, body) = call_with(app, secret, "threads.list", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    page["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect()
}

async fn new_thread(app: &TestApp, secret: &str, text: &str) -> String {
    let (status, _, body) = call_with(app, secret, "threads.create", json!({"input": text_input(text)})).await;
    assert_eq!(status, 200, "{body}");
    parse_sse(&body)[0]["thread"]["id"].as_str().unwrap().to_string()
}

pub(crate) fn error_code(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    check_error_body(&value);
    value["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_session_answers_as_the_hosted_service_and_its_secret_acts_as_its_user() {
    let app = spawn_sessions();
    let session =
        create(&app, json!({"user": "alice", "workflow": {"id": "wf_1", "state_variables": {"plan": "pro"}}})).await;
    assert_eq!(session["object"], "chatkit.session");
    assert_eq!(session["status"], "active");
    assert_eq!(session["user"], "alice");
    assert_eq!(session["max_requests_per_1_minute"], 10);
    assert_eq!(session["rate_limits"], json!({"max_requests_per_1_minute": 10}));
    assert_eq!(session["workflow"]["state_variables"], json!({"plan": "pro"}));
    assert_eq!(session["chatkit_configuration"]["file_upload"]["enabled"], false);
    let now = chrono::Utc::now().timestamp();
    let expires_at = session["expires_at"].as_i64().unwrap();
    assert!((now + 590..=now + 601).contains(&expires_at), "ten minutes: {expires_at} vs {now}");
    let secret = session["client_secret"].as_str().unwrap();
    assert!(secret.starts_with("ck_secret_") && secret.len() > 40);

    let thread = new_thread(&app, secret, "hello").await;
    assert_eq!(list_threads(&app, secret).await, std::slice::from_ref(&thread));
    let owner = app.store.find_thread(&thread).await.unwrap().0;
    assert_eq!(owner.as_str(), "alice", "the session's user owns what its secret creates");
    let (_, bob) = session_for(&app, "bob").await;
    assert!(list_threads(&app, &bob).await.is_empty(), "another user's session sees none of it");
    // The backend sees it in the REST list for that user, and not for another.
    for (user, expected) in [("alice", vec![thread.clone()]), ("bob", vec![])] {
        let listed = app.client.get(app.url(&format!("/v1/chatkit/threads?user={user}"))).send().await.unwrap();
        let listed: Value = listed.json().await.unwrap();
        let ids: Vec<String> =
            listed["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, expected, "REST list for {user}");
    }

    // Without a secret, or with the user header alone, nothing is served.
    let (status, _, body) = call_with(&app, "", "threads.list", json!({})).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "missing_client_secret"));
    let header_only = app.post_raw(Some("alice"), request("threads.list", json!({})).to_string()).await;
    assert_eq!(header_only.status().as_u16(), 401);
    let (status, _, body) = call_with(&app, "ck_secret_guess", "threads.list", json!({})).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "invalid_client_secret"));
}

#[tokio::test]
async fn bad_session_requests_are_named_and_the_admin_key_guards_them() {
    let app = spawn_sessions();
    for (body, needle) in [
        (json!({"workflow": {"id": "w"}}), "user"),
        (json!({"user": "u", "workflow": {"id": "w"}, "expires_after": -5}), "expires_after"),
        (json!({"user": "u", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 0}}), "rate_limits"),
        (json!({"user": "u", "workflow": {}}), "id"),
    ] {
        let (status, answer) = try_create(&app, body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        check_error_body(&answer);
        assert!(answer["error"]["message"].as_str().unwrap().contains(needle), "{body}: {answer}");
    }
    let unknown = app.client.post(app.url("/v1/chatkit/sessions/cksess_nope/cancel")).send().await.unwrap();
    error_of(unknown, 404).await;

    let keyed = spawn(Spawn {
        configure: Box::new(|c| {
            session_auth(c);
            c.access.admin_keys = vec![Secret::new("admin-key")];
        }),
        ..Default::default()
    });
    let body = json!({"user": "u", "workflow": {"id": "w"}});
    let refused = keyed.client.post(keyed.url("/v1/chatkit/sessions")).json(&body).send().await.unwrap();
    error_of(refused, 401).await;
    let allowed = keyed.client.post(keyed.url("/v1/chatkit/sessions")).bearer_auth("admin-key").json(&body);
    assert_eq!(allowed.send().await.unwrap().status().as_u16(), 200);
}

#[tokio::test]
async fn an_expired_secret_gets_401_saying_so() {
    let app = spawn_sessions();
    let session = create(&app, json!({"user": "alice", "workflow": {"id": "w"}, "expires_after": 1})).await;
    let secret = session["client_secret"].as_str().unwrap();
    assert!(list_threads(&app, secret).await.is_empty());
    let mut viewer = open_history(&app, secret).await;
    let ended = viewer.until(|f| f.event.as_deref() == Some("session.ended")).await;
    assert_eq!(ended.last().unwrap().data["reason"], "expired", "the stream closes when its session expires");
    assert!(viewer.rest().await.is_empty());
    let (status, _, body) = call_with(&app, secret, "threads.list", json!({})).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "session_expired"));
    assert!(body.contains("expired"), "{body}");
}

pub(crate) async fn open_history(app: &TestApp, secret: &str) -> Viewer {
    let (status, viewer) = viewer::try_open_with_secret(&app.url("/chatkit/events"), secret).await;
    assert_eq!(status, 200);
    viewer.unwrap()
}

#[tokio::test]
async fn cancelling_a_session_refuses_its_secret_and_closes_its_streams() {
    let app = spawn_sessions();
    let (id, secret) = session_for(&app, "alice").await;
    let thread = new_thread(&app, &secret, "hello").await;
    let (status, thread_viewer) =
        viewer::try_open_with_secret(&app.url(&format!("/chatkit/threads/{thread}/events")), &secret).await;
    assert_eq!(status, 200);
    let mut thread_viewer = thread_viewer.unwrap();
    let mut history = open_history(&app, &secret).await;
    let (_, other) = session_for(&app, "alice").await;
    let mut unrelated = open_history(&app, &other).await;

    let cancelled = app.client.post(app.url(&format!("/v1/chatkit/sessions/{id}/cancel"))).send().await.unwrap();
    assert_eq!(cancelled.status().as_u16(), 200);
    let cancelled: Value = cancelled.json().await.unwrap();
    assert_eq!((cancelled["id"].as_str(), cancelled["status"].as_str()), (Some(id.as_str()), Some("cancelled")));
    assert!(!cancelled.to_string().contains(&secret));

    for viewer in [&mut thread_viewer, &mut history] {
        let last = viewer.until(|f| f.event.as_deref() == Some("session.ended")).await;
        assert_eq!(last.last().unwrap().data["reason"], "cancelled");
        assert!(viewer.rest().await.is_empty(), "then the stream ends");
    }
    assert!(unrelated.next_within(Duration::from_millis(300)).await.is_none() && !unrelated.ended, "others stay");
    let (status, _, body) = call_with(&app, &secret, "threads.list", json!({})).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "session_cancelled"));
    let (status, _) = viewer::try_open_with_secret(&app.url("/chatkit/events"), &secret).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn past_the_rate_limit_requests_get_429_and_write_nothing() {
    let app = spawn_sessions();
    let session = create(
        &app,
        json!({"user": "alice", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 3}}),
    )
    .await;
    assert_eq!(session["max_requests_per_1_minute"], 3);
    let secret = session["client_secret"].as_str().unwrap();
    let first = new_thread(&app, secret, "one").await;
    let second = new_thread(&app, secret, "two").await;
    let third = new_thread(&app, secret, "three").await;
    let (status, retry_after, body) =
        call_with(&app, secret, "threads.create", json!({"input": text_input("four")})).await;
    assert_eq!((status, error_code(&body).as_str()), (429, "rate_limit_exceeded"), "{body}");
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    let alice = chatkit_gateway::ids::UserId("alice".into());
    let query = chatkit_gateway::store::ListQuery::first(100, chatkit_gateway::protocol::Order::Asc);
    let stored: Vec<String> =
        app.store.list_threads(Some(&alice), &query).await.unwrap().data.into_iter().map(|(_, t)| t.id).collect();
    assert_eq!(stored, [first, second, third], "the refused request wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds_across_replicas() {
    capture_logs();
    let redis = RedisServer::start();
    let replicas = redis.replicas(2, || Spawn { configure: Box::new(session_auth), ..Default::default() });
    let [a, b] = &replicas[..] else { unreachable!("two replicas") };
    let session =
        create(a, json!({"user": "alice", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 4}}))
            .await;
    let secret = session["client_secret"].as_str().unwrap();
    let mut statuses = Vec::new();
    for n in 0..6 {
        let app = if n % 2 == 0 { a } else { b };
        statuses.push(call_with(app, secret, "threads.list", json!({})).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429], "four in all, wherever they land");
}

#[tokio::test]
async fn expired_sessions_are_deleted_in_the_background() {
    capture_logs();
    let app = spawn(Spawn {
        configure: Box::new(|config| {
            session_auth(config);
            config.access.session_sweep_secs = 1;
            config.access.session_keep_expired_secs = 0;
        }),
        ..Default::default()
    });
    let short = create(&app, json!({"user": "alice", "workflow": {"id": "w"}, "expires_after": 1})).await;
    let (long_id, long_secret) = session_for(&app, "bob").await;
    let short_id = short["id"].as_str().unwrap().to_string();
    assert!(app.store.load_session(&short_id).await.is_ok());
    // Bounded polling: the session expires after a second, and a pass runs every second.
    let mut deleted = false;
    for _ in 0..200 {
        if app.store.load_session(&short_id).await.is_err() {
            deleted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(deleted, "the expired session was deleted from the store");
    let (status, _, body) = call_with(&app, short["client_secret"].as_str().unwrap(), "threads.list", json!({})).await;
    assert_eq!((status, error_code(&body).as_str()), (401, "invalid_client_secret"), "a deleted session is unknown");
    assert!(app.store.load_session(&long_id).await.is_ok(), "a live session stays");
    assert_eq!(call_with(&app, &long_secret, "threads.list", json!({})).await.0, 200);
}

/// `replicas` share one session's rate limit (4 a minute) on a clock the test
/// moves: a burst straddling a minute's boundary, as the fixed per-minute
/// windows this replaced would have let through twice, gets the limit once;
/// a whole minute after the first request, requests go again.
async fn check_sliding_window(replicas: &[Arc<dyn Coordination>]) {
    let store: Arc<dyn chatkit_gateway::store::Store> = Arc::new(chatkit_gateway::store::MemoryStore::new());
    let now = Arc::new(AtomicI64::new(1_800_000_000_000 + 59_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let sessions: Vec<Sessions> = replicas
        .iter()
        .map(|coordination| Sessions::new(store.clone(), coordination.clone()).with_clock(clock.clone()))
        .collect();
    let params = json!({"user": "alice", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 4}});
    let created = sessions[0].create(serde_json::from_value(params).unwrap()).await.unwrap();
    let session = sessions[0].authenticate(&created.client_secret).await.unwrap();
    // A burst of 10 over two seconds, across the boundary at 1_800_000_060_000, on every replica in turn.
    let mut admitted = Vec::new();
    for n in 0..10usize {
        now.fetch_add(200, Ordering::SeqCst);
        admitted.push(sessions[n % sessions.len()].admit(&session).await);
    }
    let allowed = admitted.iter().filter(|a| **a == Admission::Allowed).count();
    assert_eq!(allowed, 4, "the limit once across the minute's boundary: {admitted:?}");
    assert_eq!(admitted[9], Admission::Limited { retry_after: 59 }, "the first request leaves the window 58.2 s on");
    // 59.9 s after the first request: still limited; at 60 s one more goes.
    now.store(1_800_000_000_000 + 59_200 + 59_900, Ordering::SeqCst);
    assert_eq!(sessions[0].admit(&session).await, Admission::Limited { retry_after: 1 });
    now.fetch_add(100, Ordering::SeqCst);
    assert_eq!(sessions[sessions.len() - 1].admit(&session).await, Admission::Allowed);
    assert!(matches!(sessions[0].admit(&session).await, Admission::Limited { .. }));
}

#[tokio::test]
async fn the_rate_limit_is_a_sliding_window_in_process() {
    let local: Arc<dyn Coordination> = Arc::new(LocalFanout::new(FanoutSettings::default()));
    check_sliding_window(&[local]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_a_sliding_window_across_replicas_on_redis() {
    let redis = RedisServer::start();
    let replica =
        || -> Arc<dyn Coordination> { Arc::new(RedisFanout::open(&redis.url(), FanoutSettings::default()).unwrap()) };
    check_sliding_window(&[replica(), replica()]).await;
    // The window lives in Redis, under a key whose hash tag names the session.
    let keys = redis.command(&["KEYS", "ck:window:{session:cksess_*}"]);
    assert_eq!(keys, "*1", "one window key, in Redis: {keys}");
}

/// Answers with what the turn's session carried: its workflow state variables.
struct Reflect;

#[async_trait::async_trait]
impl Responder for Reflect {
    fn name(&self) -> &'static str {
        "reflect"
    }

    fn respond(&self, turn: TurnContext, _input: RespondInput) -> EventStream {
        let variables = turn.session.as_ref().and_then(|s| s.settings.workflow.state_variables.clone());
        let text = serde_json::to_string(&variables).unwrap();
        let thread_id = turn.thread.id();
        Box::pin(futures_util::stream::iter(
            crate::common::scripted::message_events(&thread_id, &text).into_iter().map(Ok),
        ))
    }
}

#[tokio::test]
async fn session_settings_shape_what_the_user_gets() {
    capture_logs();
    let app = spawn(Spawn { responder: Arc::new(Reflect), configure: Box::new(session_auth), ..Default::default() });
    let session = create(
        &app,
        json!({
            "user": "alice",
            "workflow": {"id": "w", "state_variables": {"tier": "gold", "beta": true}},
            "chatkit_configuration": {"history": {"enabled": false}, "file_upload": {"enabled": true, "max_file_size": 1, "max_files": 1}},
        }),
    )
    .await;
    let secret = session["client_secret"].as_str().unwrap();
    let (_, _, body) = call_with(&app, secret, "threads.create", json!({"input": text_input("hi")})).await;
    assert_eq!(
        assistant_text(&parse_sse(&body)),
        r#"{"beta":true,"tier":"gold"}"#,
        "state variables reach the responder"
    );
    assert!(list_threads(&app, secret).await.is_empty(), "history off: an empty page");

    let attach = |size: u64| json!({"name": "a.txt", "size": size, "mime_type": "text/plain"});
    let (status, _, body) = call_with(&app, secret, "attachments.create", attach(2 * 1024 * 1024)).await;
    assert_eq!(status, 413, "over the session's 1 MB: {body}");
    let (status, _, body) = call_with(&app, secret, "attachments.create", attach(10)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = call_with(&app, secret, "attachments.create", attach(10)).await;
    assert_eq!((status, error_code(&body).as_str()), (403, "forbidden"), "one file at most: {body}");

    let (_, plain) = session_for(&app, "bob").await;
    let (status, _, body) = call_with(&app, &plain, "attachments.create", attach(10)).await;
    assert_eq!(status, 403, "uploads are off unless the session enables them: {body}");
    assert!(body.contains("disabled"), "{body}");
}

/// One page of `threads.list`: ids, `has_more`, `after`.
async fn page_with(app: &TestApp, secret: &str, params: Value) -> (Vec<String>, bool, Option<String>) {
    let (status, _, body) = call_with(app, secret, "threads.list", params).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let ids = page["data"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    (ids, page["has_more"].as_bool().unwrap(), page["after"].as_str().map(str::to_string))
}

/// `history.recent_threads`: the session reaches only the user's newest
/// threads, in `threads.list` and in every operation on a thread.
#[tokio::test]
async fn recent_threads_limits_what_the_session_reaches() {
    let app = spawn_sessions();
    let (_, all) = session_for(&app, "alice").await;
    let oldest = new_thread(&app, &all, "one").await;
    let middle = new_thread(&app, &all, "two").await;
    let newest = new_thread(&app, &all, "three").await;
    let limited = create(
        &app,
        json!({"user": "alice", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 100},
               "chatkit_configuration": {"history": {"recent_threads": 2}}}),
    )
    .await;
    assert_eq!(limited["chatkit_configuration"]["history"], json!({"enabled": true, "recent_threads": 2}));
    let secret = limited["client_secret"].as_str().unwrap();
    assert_eq!(
        page_with(&app, secret, json!({"order": "desc"})).await,
        (vec![newest.clone(), middle.clone()], false, None)
    );
    assert_eq!(
        page_with(&app, secret, json!({"order": "asc"})).await,
        (vec![middle.clone(), newest.clone()], false, None)
    );
    assert_eq!(
        page_with(&app, secret, json!({"order": "desc", "limit": 1})).await,
        (vec![newest.clone()], true, Some(newest.clone()))
    );
    assert_eq!(
        page_with(&app, secret, json!({"order": "desc", "limit": 1, "after": newest})).await,
        (vec![middle.clone()], false, None)
    );
    let (status, _, body) = call_with(&app, secret, "threads.list", json!({"after": oldest})).await;
    assert_eq!(status, 400, "an older thread is no cursor of this listing: {body}");
    // The older thread is out of reach, as another user's would be; the recent ones are not.
    for (op, params) in [
        ("threads.get_by_id", json!({"thread_id": oldest})),
        ("items.list", json!({"thread_id": oldest})),
        ("threads.add_user_message", json!({"thread_id": oldest, "input": text_input("again")})),
        ("threads.update", json!({"thread_id": oldest, "title": "renamed"})),
    ] {
        let (status, _, body) = call_with(&app, secret, op, params).await;
        assert_eq!(status, 404, "{op}: {body}");
    }
    assert_eq!(call_with(&app, secret, "threads.get_by_id", json!({"thread_id": middle})).await.0, 200);
    // A new thread is the newest: it pushes the middle one out.
    let fourth = new_thread(&app, secret, "four").await;
    assert_eq!(page_with(&app, secret, json!({"order": "desc"})).await.0, [fourth.clone(), newest.clone()]);
    assert_eq!(call_with(&app, secret, "items.list", json!({"thread_id": middle})).await.0, 404);
    assert_eq!(list_threads(&app, &all).await.len(), 4, "a session without the limit sees every thread");
}

#[tokio::test]
async fn titling_can_be_turned_off_per_session() {
    let app = spawn_sessions();
    let off = create(&app, json!({"user": "a", "workflow": {"id": "w"}, "chatkit_configuration": {"automatic_thread_titling": {"enabled": false}}})).await;
    let on = create(&app, json!({"user": "b", "workflow": {"id": "w"}})).await;
    for (session, titled) in [(off, false), (on, true)] {
        let secret = session["client_secret"].as_str().unwrap();
        let thread = new_thread(&app, secret, "a title please").await;
        let (_, _, body) = call_with(&app, secret, "threads.get_by_id", json!({"thread_id": thread})).await;
        let thread: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(thread.get("title").is_some_and(|t| !t.is_null()), titled, "{thread}");
    }
}

#[tokio::test]
async fn no_response_or_log_line_carries_a_secret() {
    let app = spawn_sessions();
    let (id, secret) = session_for(&app, "alice").await;
    let thread = new_thread(&app, &secret, "hello").await;
    let (_, _, listed) = call_with(&app, &secret, "threads.list", json!({})).await;
    let (_, _, fetched) = call_with(&app, &secret, "threads.get_by_id", json!({"thread_id": thread})).await;
    let cancelled = app.client.post(app.url(&format!("/v1/chatkit/sessions/{id}/cancel"))).send().await.unwrap();
    let cancelled = cancelled.text().await.unwrap();
    let (_, _, refused) = call_with(&app, &secret, "threads.list", json!({})).await;
    for body in [&listed, &fetched, &cancelled, &refused] {
        assert!(!body.contains(&secret), "a response carries the secret: {body}");
    }
    let logs = logs();
    assert!(logs.contains(&id), "the session is logged by id: the capture works");
    assert!(!logs.contains(&secret), "a log line carries the secret");
    assert!(!logs.contains("ck_secret_"), "no secret of any session is logged");
}

#[tokio::test]
async fn off_loopback_sessions_are_the_default() {
    let app =
        spawn(Spawn { configure: Box::new(|c| c.server.bind = "0.0.0.0:0".parse().unwrap()), ..Default::default() });
    let header_only = app.post_raw(Some("alice"), request("threads.list", json!({})).to_string()).await;
    let error = error_of(header_only, 401).await;
    assert_eq!(error["code"], "missing_client_secret", "the user header is not trusted off loopback");
}
