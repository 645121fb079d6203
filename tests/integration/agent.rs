//! The agent backend end to end: the whole gateway on loopback, its `AgentResponder` pointed at the fake HTTP
//! server of `crate::common::fake_openai` playing the integrator's agent (scripted ChatKit event streams and
//! errors, every request recorded with its headers and raw body), driven through `POST /chatkit`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::fake_openai::{FakeOpenAi, Reply};
use crate::common::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chatkit_gateway::config::Config;
use chatkit_gateway::responder::{AgentResponder, AgentSettings};
use chatkit_gateway::secret::Secret;
use serde_json::{json, Value};

/// The signing secret every test configures (the example key of the Standard Webhooks specification).
pub(crate) const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Bounds every wait on the fake agent.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// A gateway whose responder is an `AgentResponder` posting to `fake`. The fake is dropped first, so that no turn
/// can keep the gateway's shutdown waiting on an agent call.
struct Agent {
    fake: FakeOpenAi,
    app: TestApp,
}

fn start() -> Agent {
    start_at(None, |_| {})
}

/// Starts a fake agent and a gateway answering through it, or through `url` when given; `tune` changes the
/// responder's settings.
fn start_at(url: Option<String>, tune: impl FnOnce(&mut AgentSettings)) -> Agent {
    let fake = FakeOpenAi::start();
    let mut config = Config::for_tests("unused".into());
    config.agent.agent_url = Some(url.unwrap_or_else(|| format!("{}/chat/completions", fake.base_url())));
    config.agent.agent_secret = Some(Secret::new(SECRET));
    config.agent.agent_timeout_secs = 5;
    let mut settings = config.agent.settings().expect("valid agent settings").expect("an agent responder");
    settings.retry_backoff = Duration::from_millis(20);
    tune(&mut settings);
    let responder = AgentResponder::new(settings).expect("responder builds");
    let app = spawn(Spawn { responder: Arc::new(responder), ..Spawn::default() });
    Agent { fake, app }
}

impl Agent {
    /// `chatkit_agent_breaker_open` and `chatkit_agent_breaker_opens_total` of the agent labelled
    /// `breaker_opens_test`, as `/metrics` shows them.
    async fn breaker_metrics(&self) -> (u64, u64) {
        let metrics = self.app.client.get(self.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let value = |name: &str| {
            let prefix = format!("{name}{{agent=\"breaker_opens_test\"}} ");
            let line = metrics.lines().find_map(|line| line.strip_prefix(&prefix));
            line.unwrap_or_else(|| panic!("no {prefix} in {metrics}")).parse::<u64>().unwrap()
        };
        (value("chatkit_agent_breaker_open"), value("chatkit_agent_breaker_opens_total"))
    }

    /// The JSON bodies the agent received, in order.
    fn bodies(&self) -> Vec<Value> {
        self.fake.requests().into_iter().map(|request| request.json.expect("a JSON body")).collect()
    }
}

/// An assistant message the agent starts.
fn added(id: &str) -> Value {
    json!({"type": "thread.item.added", "item": {
        "id": id, "thread_id": "thr_agent", "created_at": "2026-01-01T00:00:00", "type": "assistant_message",
        "content": [{"type": "output_text", "text": "", "annotations": []}]
    }})
}

fn delta(id: &str, text: &str) -> Value {
    json!({"type": "thread.item.updated", "item_id": id,
        "update": {"type": "assistant_message.content_part.text_delta", "content_index": 0, "delta": text}})
}

fn done(id: &str, text: &str) -> Value {
    json!({"type": "thread.item.done", "item": {
        "id": id, "thread_id": "thr_agent", "created_at": "2026-01-01T00:00:00", "type": "assistant_message",
        "content": [{"type": "output_text", "text": text, "annotations": []}]
    }})
}

/// A whole answer streamed in parts, as `openai-chatkit`'s `respond()` yields it.
pub(crate) fn answer(id: &str, parts: &[&str]) -> Vec<Value> {
    let mut events = vec![added(id)];
    events.extend(parts.iter().map(|part| delta(id, part)));
    events.push(done(id, &parts.concat()));
    events
}

/// The one error event of a failed turn, which must end it and mention `needle`.
fn turn_error(events: &[Value], needle: &str) -> Value {
    assert_eq!(events.iter().filter(|event| event["type"] == "error").count(), 1, "one error event: {events:?}");
    let last = events.last().expect("events").clone();
    assert_eq!(last["type"], "error", "the error ends the turn: {events:?}");
    assert!(last["message"].as_str().is_some_and(|message| message.contains(needle)), "{last} lacks `{needle}`");
    last
}

#[tokio::test]
async fn a_turn_streams_the_agents_answer_and_the_request_carries_the_thread() {
    let a = start();
    a.fake.push(Reply::stream(answer("msg_a1", &["Hello ", "from ", "the agent."])));
    a.fake.push(Reply::stream(answer("msg_a2", &["Again."])));
    let (thread_id, events) = a.app.create_thread("alice", "hi agent").await;
    assert_eq!(deltas(&events), "Hello from the agent.");
    assert_eq!(assistant_text(&events), "Hello from the agent.");
    assert!(!events.iter().any(|event| event["type"] == "error"), "{events:?}");
    a.app.say("alice", &thread_id, "second").await;

    let items = a.app.items("alice", &thread_id).await;
    let kinds: Vec<&str> = items.iter().map(|item| item["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["user_message", "assistant_message", "user_message", "assistant_message"]);
    assert_eq!((&items[1]["id"], &items[1]["content"][0]["text"]), (&json!("msg_a1"), &json!("Hello from the agent.")));

    let bodies = a.bodies();
    assert_eq!(bodies.len(), 2);
    let first = &bodies[0];
    assert_eq!((&first["version"], &first["op"], &first["user"]), (&json!(1), &json!("respond"), &json!("alice")));
    assert_eq!((&first["input"], &first["item"]["type"]), (&json!("user_message"), &json!("user_message")));
    assert_eq!(first["thread"]["id"], thread_id.as_str());
    assert_eq!(first["thread"]["status"]["type"], "active");
    assert!(first["request_id"].as_str().is_some_and(|id| id.starts_with("req_")), "{first}");
    let second = &bodies[1];
    let recent: Vec<&Value> = second["items"].as_array().unwrap().iter().map(|item| &item["id"]).collect();
    let stored: Vec<&Value> = items[..3].iter().map(|item| &item["id"]).collect();
    assert_eq!(recent, stored, "recent items, oldest first, up to the new message");
    assert_eq!(second["item"]["id"], items[2]["id"]);
    assert_ne!(first["request_id"], second["request_id"]);
}

#[tokio::test]
async fn every_request_is_signed_as_standard_webhooks_specifies() {
    let a = start();
    a.fake.push(Reply::stream(answer("msg_a1", &["Signed."])));
    a.fake.push(Reply::stream(answer("msg_a2", &["Signed again."])));
    let (thread_id, _) = a.app.create_thread("alice", "hi").await;
    a.app.say("alice", &thread_id, "again").await;
    // The key and the signed content are rebuilt here from the specification, not from the gateway's code.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &STANDARD.decode(&SECRET["whsec_".len()..]).unwrap());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let requests = a.fake.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        let id = request.header("webhook-id").expect("webhook-id");
        let timestamp = request.header("webhook-timestamp").expect("webhook-timestamp");
        assert!(now.abs_diff(timestamp.parse::<u64>().unwrap()) < 60, "a current timestamp: {timestamp}");
        let signature = request.header("webhook-signature").expect("webhook-signature");
        let encoded = signature.strip_prefix("v1,").expect("a v1 signature");
        let mut signed = format!("{id}.{timestamp}.").into_bytes();
        signed.extend_from_slice(&request.body);
        ring::hmac::verify(&key, &signed, &STANDARD.decode(encoded).unwrap()).expect("the signature verifies");
        let mut tampered = signed.clone();
        tampered.push(b' ');
        assert!(ring::hmac::verify(&key, &tampered, &STANDARD.decode(encoded).unwrap()).is_err());
    }
    assert_ne!(requests[0].header("webhook-id"), requests[1].header("webhook-id"), "a new id per request");
}

#[tokio::test]
async fn the_agent_renames_and_locks_the_thread_and_the_next_input_is_refused() {
    let a = start();
    let mut events = answer("msg_a1", &["A person will take over."]);
    events.push(json!({"type": "thread.updated", "thread": {
        "title": "Handed to a person", "status": {"type": "locked", "reason": "A person takes over"}
    }}));
    a.fake.push(Reply::stream(events));
    let (thread_id, events) = a.app.create_thread("alice", "I want a human").await;
    let updated = events.iter().rfind(|event| event["type"] == "thread.updated").expect("thread.updated");
    assert_eq!(updated["thread"]["title"], "Handed to a person");
    assert_eq!(updated["thread"]["status"]["type"], "locked");
    let thread = a.app.call("alice", "threads.get_by_id", json!({"thread_id": thread_id})).await;
    assert_eq!((&thread["title"], &thread["status"]["type"]), (&json!("Handed to a person"), &json!("locked")));
    let refused = a.app.say("alice", &thread_id, "hello?").await;
    assert_eq!(types(&refused), ["error"], "{refused:?}");
    assert_eq!(a.fake.requests().len(), 1, "a locked thread's input never reaches the agent");
}

#[tokio::test]
async fn an_unknown_event_ends_the_turn_with_an_error_keeping_earlier_output() {
    let a = start();
    let mut events = vec![added("msg_a1"), delta("msg_a1", "Partial")];
    events.push(json!({"type": "mystery.event", "data": 1}));
    events.push(delta("msg_a1", " never shown"));
    a.fake.push(Reply::stream(events));
    let (thread_id, events) = a.app.create_thread("alice", "hi").await;
    assert_eq!(deltas(&events), "Partial");
    let error = turn_error(&events, "mystery.event");
    assert_eq!(error["allow_retry"], false);
    let items = a.app.items("alice", &thread_id).await;
    assert_eq!(items[1]["content"][0]["text"], "Partial", "{items:?}");
}

#[tokio::test]
async fn an_update_for_an_item_not_in_progress_is_refused() {
    let a = start();
    a.fake.push(Reply::stream(vec![delta("msg_nowhere", "x")]));
    let (_, events) = a.app.create_thread("alice", "hi").await;
    turn_error(&events, "msg_nowhere");
}

#[tokio::test]
async fn an_agent_that_is_down_gets_two_retries_then_a_retryable_error() {
    let port = free_port();
    let a = start_at(Some(format!("http://127.0.0.1:{port}/agent")), |_| {});
    let started = Instant::now();
    let (thread_id, events) = a.app.create_thread("alice", "anyone?").await;
    assert!(started.elapsed() < Duration::from_secs(10), "bounded: {:?}", started.elapsed());
    let error = turn_error(&events, "Could not reach the agent");
    assert_eq!(error["allow_retry"], true);
    assert_eq!(a.app.items("alice", &thread_id).await.len(), 1, "only the user's message");
}

#[tokio::test]
async fn an_agent_refusal_reaches_the_client_with_its_message() {
    let a = start();
    a.fake.push(Reply::error(403, "Your plan does not include this agent."));
    let (_, events) = a.app.create_thread("alice", "hi").await;
    let error = turn_error(&events, "Your plan");
    assert_eq!(
        (&error["message"], &error["allow_retry"]),
        (&json!("Your plan does not include this agent."), &json!(false))
    );
    assert_eq!(a.fake.requests().len(), 1, "a refusal is not retried");
}

#[tokio::test]
async fn an_agent_error_then_success_is_retried() {
    let a = start();
    a.fake.push(Reply::error(500, "boom")).push(Reply::error(429, "slow down"));
    a.fake.push(Reply::stream(answer("msg_a1", &["Third time lucky."])));
    let (_, events) = a.app.create_thread("alice", "hi").await;
    assert_eq!(assistant_text(&events), "Third time lucky.");
    assert!(!events.iter().any(|event| event["type"] == "error"), "{events:?}");
    let requests = a.fake.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].body, requests[2].body, "the same body is retried");
    assert_ne!(requests[0].header("webhook-id"), requests[2].header("webhook-id"));
}

#[tokio::test]
async fn five_hundreds_past_the_retries_end_with_a_retryable_error() {
    let a = start();
    for _ in 0..3 {
        a.fake.push(Reply::error(503, "down for maintenance"));
    }
    let (_, events) = a.app.create_thread("alice", "hi").await;
    let error = turn_error(&events, "HTTP 503");
    assert_eq!(error["allow_retry"], true);
    assert_eq!(a.fake.requests().len(), 3, "one call and two retries");
}

#[tokio::test]
async fn a_stream_cut_midway_keeps_the_partial_answer() {
    let a = start();
    a.fake.push(Reply::stream(answer("msg_a1", &["Half an ", "answer", " and more"])).cut_after(3));
    let (thread_id, events) = a.app.create_thread("alice", "hi").await;
    assert_eq!(deltas(&events), "Half an answer");
    let error = turn_error(&events, "cut off");
    assert_eq!(error["allow_retry"], true);
    let items = a.app.items("alice", &thread_id).await;
    assert_eq!((items.len(), &items[1]["content"][0]["text"]), (2, &json!("Half an answer")), "{items:?}");
    assert_eq!(a.fake.requests().len(), 1, "nothing is retried once the answer began");
}

#[tokio::test]
async fn an_agent_that_goes_silent_midway_times_out_and_is_hung_up_on() {
    let a = start_at(None, |settings| settings.timeout = Duration::from_millis(400));
    // The fake sends the first event at once and waits 3 s before each further one.
    a.fake.push(Reply::stream(answer("msg_a1", &["Too", " late"])).delay(Duration::from_secs(3)));
    let started = Instant::now();
    let (thread_id, events) = a.app.create_thread("alice", "hi").await;
    assert!(started.elapsed() < Duration::from_secs(3), "the idle timeout, not the agent, ended the turn");
    let expected = ["thread.created", "thread.item.done", "stream_options", "thread.item.added", "error"];
    assert_eq!(types(&events), expected, "{events:?}");
    let error = turn_error(&events, "stopped answering");
    assert_eq!(error["allow_retry"], true);
    assert_eq!(a.app.items("alice", &thread_id).await.len(), 1, "an empty message is not kept");
    assert!(a.fake.wait_stream_closed(0, WAIT).await.is_some(), "the gateway hung up on the silent agent");
}

#[tokio::test]
async fn a_client_that_disconnects_drops_the_agent_request() {
    let a = start();
    a.fake.push(
        Reply::stream(answer("msg_a1", &["slow ", "answer ", "never ", "finished"])).delay(Duration::from_secs(2)),
    );
    let body = request("threads.create", json!({"input": text_input("hi")})).to_string();
    let mut response = a.app.post_raw(Some("alice"), body).await;
    // Read until the agent's first delta, then hang up.
    let mut seen = String::new();
    while !seen.contains("text_delta") {
        let chunk = tokio::time::timeout(WAIT, response.chunk()).await.expect("a chunk in time").expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on")));
    }
    let hung_up = Instant::now();
    drop(response);
    let closed = a.fake.wait_stream_closed(0, WAIT).await.expect("the agent's stream was closed");
    let after = closed.saturating_duration_since(hung_up);
    assert!(after < Duration::from_millis(100), "the agent's stream closed {after:?} after the client left");
    let thread_id = seen.split("\"id\":\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().to_string();
    eventually("the partial answer is kept", || async {
        let items = a.app.items("alice", &thread_id).await;
        items.iter().any(|item| item["type"] == "assistant_message" && item["content"][0]["text"] == "slow ")
    })
    .await;
}

#[tokio::test]
async fn a_sync_action_round_trips_and_the_updated_widget_is_stored() {
    let a = start();
    let widget = |text: &str| json!({"type": "Card", "children": [{"type": "Text", "id": "counter", "value": text}]});
    let widget_item = |text: &str| {
        json!({"id": "wdg_1", "thread_id": "thr_agent", "created_at": "2026-01-01T00:00:00",
        "type": "widget", "widget": widget(text)})
    };
    a.fake.push(Reply::stream(vec![json!({"type": "thread.item.done", "item": widget_item("count: 0")})]));
    a.fake.push(Reply::json(200, json!({"updated_item": widget_item("count: 1")})));
    let (thread_id, _) = a.app.create_thread("alice", "a counter please").await;
    let action = json!({"type": "counter.increment", "payload": {"by": 1}});
    let params = json!({"thread_id": thread_id, "item_id": "wdg_1", "action": action});
    let answer = a.app.call("alice", "threads.sync_custom_action", params).await;
    assert_eq!(answer["updated_item"]["widget"]["children"][0]["value"], "count: 1", "{answer}");
    let body = a.bodies().pop().unwrap();
    assert_eq!(
        (&body["op"], &body["action"], &body["sender"]["id"]),
        (&json!("sync_action"), &action, &json!("wdg_1"))
    );
    assert_eq!(body["thread"]["id"], thread_id.as_str());
    let items = a.app.items("alice", &thread_id).await;
    let stored = items.iter().find(|item| item["id"] == "wdg_1").expect("the widget is kept");
    assert_eq!(stored["widget"]["children"][0]["value"], "count: 1");
}

#[tokio::test]
async fn feedback_reaches_the_agent() {
    let a = start();
    a.fake.push(Reply::stream(answer("msg_a1", &["Rate me."])));
    a.fake.push(Reply::json(200, json!({})));
    let (thread_id, _) = a.app.create_thread("alice", "hi").await;
    let params = json!({"thread_id": thread_id, "item_ids": ["msg_a1"], "kind": "positive"});
    a.app.call("alice", "items.feedback", params).await;
    let body = a.bodies().pop().unwrap();
    assert_eq!(
        (&body["op"], &body["feedback"], &body["item_ids"]),
        (&json!("feedback"), &json!("positive"), &json!(["msg_a1"]))
    );
    assert_eq!((&body["thread"]["id"], &body["user"]), (&json!(thread_id), &json!("alice")));
}

#[tokio::test]
async fn a_streamed_action_reaches_the_agent_with_its_sender() {
    let a = start();
    let widget = json!({"id": "wdg_1", "thread_id": "thr_agent", "created_at": "2026-01-01T00:00:00",
        "type": "widget", "widget": {"type": "Card", "children": []}});
    a.fake.push(Reply::stream(vec![json!({"type": "thread.item.done", "item": widget})]));
    a.fake.push(Reply::stream(answer("msg_a1", &["Action ", "done."])));
    let (thread_id, _) = a.app.create_thread("alice", "a card please").await;
    let action = json!({"type": "card.open", "payload": {"n": 3}});
    let params = json!({"thread_id": thread_id, "item_id": "wdg_1", "action": action});
    let events = a.app.stream("alice", "threads.custom_action", params).await;
    assert_eq!(deltas(&events), "Action done.");
    let body = a.bodies().pop().unwrap();
    assert_eq!((&body["op"], &body["action"], &body["sender"]["type"]), (&json!("action"), &action, &json!("widget")));
    let items = a.app.items("alice", &thread_id).await;
    assert_eq!(items.last().unwrap()["content"][0]["text"], "Action done.");
}

#[tokio::test]
async fn dictation_is_transcribed_by_the_agent() {
    let a = start();
    a.fake.push(Reply::json(200, json!({"text": "bonjour"})));
    let audio = b"fake webm bytes".to_vec();
    let params = json!({"audio_base64": STANDARD.encode(&audio), "mime_type": "audio/webm;codecs=opus"});
    assert_eq!(a.app.call("alice", "input.transcribe", params.clone()).await, json!({"text": "bonjour"}));
    let body = a.bodies().pop().unwrap();
    assert_eq!((&body["op"], &body["user"]), (&json!("transcribe"), &json!("alice")));
    assert_eq!(body["audio"]["mime_type"], "audio/webm;codecs=opus");
    assert_eq!(STANDARD.decode(body["audio"]["data"].as_str().unwrap()).unwrap(), audio);
    // An answer without `text` is the agent's fault: a clear error, never a 5xx.
    a.fake.push(Reply::json(200, json!({"words": []})));
    let (status, error) = a.app.try_call("alice", "input.transcribe", params).await;
    assert!(status.is_client_error(), "{status}: {error}");
    assert!(error.to_string().contains("text"), "{error}");
}

#[tokio::test]
async fn an_event_that_is_not_json_ends_the_turn_with_an_error() {
    let a = start();
    let frames = vec![added("msg_a1").to_string(), delta("msg_a1", "So far").to_string(), "{not json".to_string()];
    a.fake.push(Reply::stream_frames(frames));
    let (thread_id, events) = a.app.create_thread("alice", "hi").await;
    turn_error(&events, "not JSON");
    assert_eq!(a.app.items("alice", &thread_id).await[1]["content"][0]["text"], "So far");
}

#[tokio::test]
async fn a_model_and_an_agent_together_are_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().join("data"));
    config.model.name = Some("some-model".into());
    config.model.openai_base_url = "http://127.0.0.1:9/v1".into();
    config.agent.agent_url = Some("http://127.0.0.1:9/agent".into());
    config.agent.agent_secret = Some(Secret::new(SECRET));
    let error = match chatkit_gateway::app::App::build(config).await {
        Ok(_) => panic!("a model and an agent together must be refused"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("CHATKIT_AGENT_URL") && error.contains("CHATKIT_MODEL"), "{error}");
}

#[tokio::test]
async fn every_request_body_matches_the_served_json_schema() {
    let a = start();
    let widget = json!({"id": "wdg_1", "thread_id": "thr_agent", "created_at": "2026-01-01T00:00:00",
        "type": "widget", "widget": {"type": "Card", "children": []}});
    a.fake.push(Reply::stream(vec![json!({"type": "thread.item.done", "item": widget})]));
    a.fake.push(Reply::stream(answer("msg_a1", &["Acted."])));
    a.fake.push(Reply::json(200, json!({})));
    a.fake.push(Reply::json(200, json!({})));
    a.fake.push(Reply::json(200, json!({"text": "hi"})));
    let (thread_id, _) = a.app.create_thread("alice", "hi").await;
    let action = json!({"thread_id": thread_id, "item_id": "wdg_1", "action": {"type": "a"}});
    a.app.stream("alice", "threads.custom_action", action.clone()).await;
    a.app.call("alice", "threads.sync_custom_action", action).await;
    let feedback = json!({"thread_id": thread_id, "item_ids": ["msg_a1"], "kind": "negative"});
    a.app.call("alice", "items.feedback", feedback).await;
    let audio = json!({"audio_base64": STANDARD.encode(b"x"), "mime_type": "audio/ogg"});
    a.app.call("alice", "input.transcribe", audio).await;
    let mut bodies = a.bodies();
    let ops: Vec<&str> = bodies.iter().map(|body| body["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["respond", "action", "sync_action", "feedback", "transcribe"]);
    // A body without its triggering item must fail, so that the check is known to check.
    let mut broken = bodies[0].clone();
    broken.as_object_mut().unwrap().remove("item");
    bodies.push(broken);

    let response = a.app.client.get(a.app.url("/agent/wire-schema.json")).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "application/schema+json");
    let schema: Value = response.json().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.json"), schema.to_string()).unwrap();
    std::fs::write(dir.path().join("bodies.json"), Value::Array(bodies).to_string()).unwrap();
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1])); jsonschema.Draft202012Validator.check_schema(schema)\n\
        validator = jsonschema.Draft202012Validator(schema)\n\
        print(json.dumps([validator.is_valid(body) for body in json.load(open(sys.argv[2]))]))";
    let output = std::process::Command::new(venv_python())
        .args(["-c", script])
        .arg(dir.path().join("schema.json"))
        .arg(dir.path().join("bodies.json"))
        .output()
        .expect("python runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let valid: Vec<bool> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(valid, [true, true, true, true, true, false]);
}

#[tokio::test]
async fn another_tab_sees_the_agents_answer_and_its_title() {
    let a = start();
    a.fake.push(Reply::stream(answer("msg_a1", &["First."])));
    let mut second = answer("msg_a2", &["Bonjour ", "Paris", "!"]);
    second.push(json!({"type": "thread.updated", "thread": {"title": "Greetings From Paris"}}));
    a.fake.push(Reply::stream(second));
    let (thread_id, _) = a.app.create_thread("alice", "hi").await;
    let mut tab = a.app.view_thread("alice", &thread_id).await;
    let mut history = a.app.view_history("alice").await;
    a.app.say("alice", &thread_id, "Say hello to Paris").await;
    let frames = tab.until(|frame| frame.kind() == "thread.updated").await;
    assert_eq!(crate::common::viewer::rebuilt_text(&frames, "msg_a2"), "Bonjour Paris!");
    assert!(frames.iter().any(|frame| frame.kind() == "thread.item.updated"), "the answer streamed to the tab");
    assert_eq!(frames.last().unwrap().data["thread"]["title"], "Greetings From Paris");
    let seen = history.until(|frame| frame.kind() == "thread.updated").await;
    assert_eq!(seen.last().unwrap().data["thread"]["title"], "Greetings From Paris");
}

#[tokio::test]
async fn an_item_without_an_id_is_refused() {
    let a = start();
    a.fake.push(Reply::stream(answer("", &["Nameless."])));
    let (thread_id, events) = a.app.create_thread("alice", "hi").await;
    turn_error(&events, "empty id");
    assert_eq!(a.app.items("alice", &thread_id).await.len(), 1, "nothing of the agent's is stored");
}

#[tokio::test]
async fn json_operations_report_agent_faults_with_the_agents_words_and_never_a_500() {
    let a = start();
    a.fake.push(Reply::stream(answer("msg_a1", &["Rate me."])));
    let (thread_id, _) = a.app.create_thread("alice", "hi").await;
    let feedback = json!({"thread_id": thread_id, "item_ids": ["msg_a1"], "kind": "positive"});
    a.fake.push(Reply::error(422, "Feedback is closed for this thread."));
    let (status, body) = a.app.try_call("alice", "items.feedback", feedback.clone()).await;
    assert_eq!(status.as_u16(), 400, "{body}");
    assert_eq!(body["error"]["message"], "Feedback is closed for this thread.");
    // A failing agent is retried, then reported as a failed dependency (a 4xx, never a 5xx), with what failed.
    for _ in 0..3 {
        a.fake.push(Reply::error(500, "boom"));
    }
    let (status, body) = a.app.try_call("alice", "items.feedback", feedback).await;
    assert_eq!(status.as_u16(), 424, "{body}");
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("HTTP 500"), "{body}");
    assert_eq!(a.fake.requests().len(), 1 + 1 + 3);
}

#[tokio::test]
async fn a_failing_agent_opens_the_breaker_then_a_trial_after_the_cool_down_closes_it() {
    let a = start_at(None, |settings| {
        settings.retries = 0;
        settings.breaker_threshold = 2;
        settings.breaker_cooldown = Duration::from_millis(600);
        // Its own label, since the metrics are process-wide.
        settings.name = "breaker_opens_test".into();
    });
    // Each failure takes the agent 200 ms, so a refusal that takes less never reached it.
    for _ in 0..2 {
        a.fake.push(Reply::error(503, "down").after(Duration::from_millis(200)));
    }
    let (thread_id, events) = a.app.create_thread("alice", "one").await;
    turn_error(&events, "HTTP 503");
    turn_error(&a.app.say("alice", &thread_id, "two").await, "HTTP 503");
    assert_eq!(a.fake.requests().len(), 2);

    assert_eq!(a.breaker_metrics().await, (1, 1), "open, and counted");
    for text in ["three", "four"] {
        let started = Instant::now();
        let error = turn_error(&a.app.say("alice", &thread_id, text).await, "failing repeatedly");
        assert!(started.elapsed() < Duration::from_millis(150), "fails fast: {:?}", started.elapsed());
        assert_eq!(error["allow_retry"], true);
    }
    assert_eq!(a.fake.requests().len(), 2, "an open breaker does not call the agent");

    // Back up after the cool-down: the trial call goes through and closes the breaker.
    tokio::time::sleep(Duration::from_millis(700)).await;
    a.fake.push(Reply::stream(answer("msg_b1", &["Back."])));
    a.fake.push(Reply::stream(answer("msg_b2", &["Still here."])));
    assert_eq!(assistant_text(&a.app.say("alice", &thread_id, "five").await), "Back.");
    assert_eq!(assistant_text(&a.app.say("alice", &thread_id, "six").await), "Still here.");
    assert_eq!(a.fake.requests().len(), 4);
    assert_eq!(a.breaker_metrics().await, (0, 1), "closed");
}

#[tokio::test]
async fn a_failed_trial_opens_the_breaker_again_and_refusals_do_not_open_it() {
    let a = start_at(None, |settings| {
        settings.retries = 0;
        settings.breaker_threshold = 1;
        settings.breaker_cooldown = Duration::from_millis(300);
    });
    // A 4xx means the agent is up: it never opens the breaker.
    for _ in 0..3 {
        a.fake.push(Reply::error(400, "Bad input."));
    }
    let (thread_id, events) = a.app.create_thread("alice", "one").await;
    turn_error(&events, "Bad input.");
    for text in ["two", "three"] {
        turn_error(&a.app.say("alice", &thread_id, text).await, "Bad input.");
    }
    assert_eq!(a.fake.requests().len(), 3);
    a.fake.push(Reply::error(500, "boom"));
    turn_error(&a.app.say("alice", &thread_id, "four").await, "HTTP 500");
    turn_error(&a.app.say("alice", &thread_id, "five").await, "failing repeatedly");
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.fake.push(Reply::error(502, "still down"));
    turn_error(&a.app.say("alice", &thread_id, "six").await, "HTTP 502");
    turn_error(&a.app.say("alice", &thread_id, "seven").await, "failing repeatedly");
    assert_eq!(a.fake.requests().len(), 5, "one trial call per cool-down");
}

#[tokio::test]
async fn an_agent_that_is_down_costs_a_fast_error_once_the_breaker_opens() {
    let port = free_port();
    let a = start_at(Some(format!("http://127.0.0.1:{port}/agent")), |settings| {
        settings.breaker_threshold = 2;
    });
    let (thread_id, events) = a.app.create_thread("alice", "one").await;
    turn_error(&events, "Could not reach the agent. Try again");
    turn_error(&a.app.say("alice", &thread_id, "two").await, "Could not reach the agent. Try again");
    // The default breaker cool-down (10 s) outlasts the rest of the test.
    let started = Instant::now();
    let error = turn_error(&a.app.say("alice", &thread_id, "three").await, "failing repeatedly");
    assert!(started.elapsed() < Duration::from_millis(100), "no retries and backoff: {:?}", started.elapsed());
    assert_eq!(error["allow_retry"], true);
}
