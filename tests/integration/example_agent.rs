//! The Python example agent of `examples/agent-python` (built on `openai-chatkit` 1.6.5) run as a real process
//! behind the real gateway: every feature it shows reaches the client through `POST /chatkit`, and every event
//! the client gets validates with the reference SDK's types.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::fake_openai::{FakeOpenAi, Reply, MODEL};
use crate::common::redis::RedisServer;
use crate::common::viewer::rebuilt_text;
use crate::common::*;
use chatkit_gateway::config::Config;
use chatkit_gateway::responder::{AgentResponder, Responder};
use chatkit_gateway::secret::Secret;
use serde_json::{json, Value};

/// The secret the agent verifies (the example key of the Standard Webhooks specification).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Bounds the agent's start: the Python imports take a few seconds on a busy machine.
const START: Duration = Duration::from_secs(30);

/// The example agent's process, killed on drop.
struct ExampleAgent {
    child: Child,
    url: String,
}

impl ExampleAgent {
    /// Starts the agent (deterministic, without a model) on a free port.
    async fn start() -> ExampleAgent {
        ExampleAgent::start_with(&[]).await
    }

    /// Starts the agent with `env` set on a free port, and waits (bounded) until it answers its health check.
    async fn start_with(env: &[(&str, String)]) -> ExampleAgent {
        let port = free_port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/agent-python/agent.py");
        let child = Command::new(venv_python())
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .envs(env.iter().cloned())
            .spawn()
            .expect("start the example agent");
        let mut agent = ExampleAgent { child, url: format!("http://127.0.0.1:{port}/agent") };
        let health = format!("http://127.0.0.1:{port}/healthz");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        let started = Instant::now();
        loop {
            if client.get(&health).send().await.is_ok_and(|response| response.status().is_success()) {
                return agent;
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!("the example agent exited at start with {status}");
            }
            assert!(started.elapsed() < START, "the example agent did not answer within {START:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ExampleAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent responder of a gateway whose agent backend is `agent`, signing with `secret`.
fn agent_responder(agent: &ExampleAgent, secret: &str) -> Arc<dyn Responder> {
    let mut config = Config::for_tests("unused".into());
    config.agent.agent_url = Some(agent.url.clone());
    config.agent.agent_secret = Some(Secret::new(secret));
    config.agent.agent_timeout_secs = 10;
    let settings = config.agent.settings().expect("valid agent settings").expect("an agent responder");
    Arc::new(AgentResponder::new(settings).expect("responder builds"))
}

/// A gateway recording what it sends, whose agent backend is `agent`, signing with `secret`.
fn gateway(agent: &ExampleAgent, secret: &str) -> TestApp {
    spawn(Spawn { responder: agent_responder(agent, secret), record: true, ..Spawn::default() })
}

/// The item a turn finished of `kind`.
fn done_item(events: &[Value], kind: &str) -> Value {
    events
        .iter()
        .find(|event| event["type"] == "thread.item.done" && event["item"]["type"] == kind)
        .map(|event| event["item"].clone())
        .unwrap_or_else(|| panic!("no {kind} item among {:?}", types(events)))
}

fn no_error(events: &[Value]) {
    assert!(!events.iter().any(|event| event["type"] == "error"), "{events:?}");
}

/// The counter value a widget shows (its `Text`, `Count: n`).
fn count(widget_item: &Value) -> &str {
    widget_item["widget"]["children"][1]["value"].as_str().expect("the counter's text")
}

#[tokio::test]
async fn the_example_agents_features_reach_the_client_and_validate() {
    let agent = ExampleAgent::start().await;
    let app = gateway(&agent, SECRET);

    let (tid, events) = app.create_thread("alice", "hello agent").await;
    no_error(&events);
    let streamed = deltas(&events);
    assert!(streamed.starts_with("You said: hello agent."), "{streamed}");
    let parts = events.iter().filter(|e| e["update"]["type"] == "assistant_message.content_part.text_delta").count();
    assert!(parts > 3, "the answer arrives in several deltas: {parts}");
    assert_eq!(assistant_text(&events), streamed);

    let widget = done_item(&app.say("alice", &tid, "/widget").await, "widget");
    assert_eq!(count(&widget), "Count: 0");
    let action = widget["widget"]["children"][2]["onClickAction"].clone();
    assert_eq!(action["type"], "counter.increment");
    let params = json!({"thread_id": tid, "item_id": widget["id"], "action": action});
    let answer = app.call("alice", "threads.sync_custom_action", params).await;
    assert_eq!(count(&answer["updated_item"]), "Count: 1", "{answer}");
    let next = answer["updated_item"]["widget"]["children"][2]["onClickAction"].clone();
    let params = json!({"thread_id": tid, "item_id": widget["id"], "action": next});
    let replaced = app.stream("alice", "threads.custom_action", params).await;
    no_error(&replaced);
    let replaced = replaced.iter().find(|e| e["type"] == "thread.item.replaced").expect("the widget is replaced");
    assert_eq!(count(&replaced["item"]), "Count: 2");

    let workflow = app.say("alice", &tid, "/workflow").await;
    no_error(&workflow);
    let added = workflow.iter().filter(|e| e["update"]["type"] == "workflow.task.added").count();
    assert_eq!(added, 2, "{:?}", types(&workflow));
    let tasks = done_item(&workflow, "workflow")["workflow"]["tasks"].clone();
    assert_eq!(tasks.as_array().map(Vec::len), Some(2), "{tasks}");
    assert!(tasks.as_array().unwrap().iter().all(|task| task["status_indicator"] == "complete"), "{tasks}");

    let call = done_item(&app.say("alice", &tid, "/tool").await, "client_tool_call");
    assert_eq!((&call["name"], &call["status"]), (&json!("get_time"), &json!("pending")));
    let output = json!({"thread_id": tid, "result": {"time": "12:00"}});
    let answered = app.stream("alice", "threads.add_client_tool_output", output).await;
    no_error(&answered);
    assert_eq!(assistant_text(&answered), r#"The client tool get_time answered {"time": "12:00"}."#);

    let titled = app.say("alice", &tid, "/title Counting with the agent").await;
    no_error(&titled);
    let updated = titled.iter().find(|e| e["type"] == "thread.updated").expect("the title change is announced");
    assert_eq!(updated["thread"]["title"], "Counting with the agent");
    let thread = app.call("alice", "threads.get_by_id", json!({"thread_id": tid})).await;
    assert_eq!(thread["title"], "Counting with the agent");

    let items = app.items("alice", &tid).await;
    let stored = items.iter().find(|item| item["type"] == "widget").expect("the widget is stored");
    assert_eq!(count(stored), "Count: 2", "the streamed action's replacement is persisted");
    assert_eq!(items[1]["content"][0]["text"].as_str(), Some(streamed.as_str()), "the first answer is persisted");
    let kinds: Vec<&str> = items.iter().filter_map(|item| item["type"].as_str()).collect();
    for kind in ["assistant_message", "widget", "workflow", "client_tool_call"] {
        assert!(kinds.contains(&kind), "no {kind} stored: {kinds:?}");
    }

    check_conformance(&app.transcript_lines());
}

#[tokio::test]
async fn the_example_agent_locks_the_thread_on_handoff() {
    let agent = ExampleAgent::start().await;
    let app = gateway(&agent, SECRET);
    let (tid, _) = app.create_thread("bob", "hi").await;
    // A retry reaches the agent as `respond` with the user's message again.
    let first = app.items("bob", &tid).await[0]["id"].clone();
    let retried = app.stream("bob", "threads.retry_after_item", json!({"thread_id": tid, "item_id": first})).await;
    no_error(&retried);
    assert!(deltas(&retried).starts_with("You said: hi."), "{retried:?}");
    let handoff = app.say("bob", &tid, "/handoff").await;
    no_error(&handoff);
    assert!(assistant_text(&handoff).contains("locked"), "{handoff:?}");
    let updated = handoff.iter().find(|e| e["type"] == "thread.updated").expect("the lock is announced");
    assert_eq!(updated["thread"]["status"], json!({"type": "locked", "reason": "Handed off to a human agent."}));
    let refused = app.say("bob", &tid, "are you there?").await;
    assert!(refused_with(&refused, "Handed off to a human agent."), "{refused:?}");
    check_conformance(&app.transcript_lines());
}

#[tokio::test]
async fn the_example_agent_refuses_a_wrong_signature_and_the_client_is_told() {
    let agent = ExampleAgent::start().await;
    let app = gateway(&agent, "whsec_d3JvbmcgZ2F0ZXdheSBzZWNyZXQgMDEyMzQ1Njc=");
    let (tid, events) = app.create_thread("carol", "hello").await;
    let last = events.last().expect("events");
    assert_eq!(last["type"], "error", "{events:?}");
    assert_eq!(last["allow_retry"], false, "{last}");
    assert!(last["message"].as_str().is_some_and(|m| m.contains("signature does not match")), "{last}");
    assert!(app.items("carol", &tid).await.iter().all(|item| item["type"] != "assistant_message"));
    // Unsigned, the agent answers 401 with a ChatKit-style error body.
    let unsigned = app.client.post(&agent.url).body("{}").send().await.expect("the agent answers");
    assert_eq!(unsigned.status().as_u16(), 401);
    let body: Value = unsigned.json().await.expect("a JSON error body");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("not signed")), "{body}");
    check_conformance(&app.transcript_lines());
}

#[tokio::test]
async fn with_a_model_url_the_example_agent_streams_the_models_answer() {
    let fake = FakeOpenAi::start();
    fake.push(Reply::text(MODEL, &["Hello ", "from ", "the model."]));
    let env = [("EXAMPLE_AGENT_MODEL_URL", fake.base_url()), ("EXAMPLE_AGENT_MODEL", MODEL.to_string())];
    let agent = ExampleAgent::start_with(&env).await;
    let app = gateway(&agent, SECRET);
    let (tid, events) = app.create_thread("dave", "hi model").await;
    no_error(&events);
    assert_eq!(deltas(&events), "Hello from the model.");
    assert_eq!(assistant_text(&events), "Hello from the model.");
    let asked = fake.chat_requests();
    assert_eq!(asked.len(), 1);
    let sent = asked[0].json.as_ref().expect("a JSON body").to_string();
    assert!(sent.contains("hi model"), "the thread's message reaches the model: {sent}");
    let items = app.items("dave", &tid).await;
    assert_eq!(items.last().expect("items")["content"][0]["text"], "Hello from the model.");
    check_conformance(&app.transcript_lines());
}

/// The agent's answer streams to a tab on another replica: two replicas share
/// a store and a test Redis, the turn runs on the first, the tab views the
/// thread on the second and sees the deltas as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_agents_answer_streams_to_a_viewer_on_another_replica() {
    let agent = ExampleAgent::start().await;
    let redis = RedisServer::start();
    let replicas = redis.replicas(2, || Spawn { responder: agent_responder(&agent, SECRET), ..Spawn::default() });
    let (one, two) = (&replicas[0], &replicas[1]);
    let (tid, created) = one.create_thread("alice", "first").await;
    no_error(&created);
    let mut tab = two.view_thread("alice", &tid).await;

    let events = one.say("alice", &tid, "across the replicas").await;
    no_error(&events);
    let answer = done_item(&events, "assistant_message");
    let answer_id = answer["id"].as_str().expect("an answer id").to_string();
    let frames = tab.until(|f| f.kind() == "thread.item.done" && f.data["item"]["id"] == json!(answer_id)).await;
    let deltas = frames.iter().filter(|f| f.data["update"]["type"] == "assistant_message.content_part.text_delta");
    assert!(deltas.count() > 3, "the other replica's tab sees the answer stream: {frames:?}");
    assert_eq!(rebuilt_text(&frames, &answer_id), assistant_text(&events));
    assert!(assistant_text(&events).starts_with("You said: across the replicas"), "{events:?}");
}
