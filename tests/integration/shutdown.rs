//! Graceful shutdown of the real binary, answering through the model responder or an agent backend: SIGTERM
//! lets a streaming turn finish
//! (or cancels it past the grace period, keeping its partial answer), closes
//! viewer streams with a reconnect hint, and loses nothing that was accepted.

use std::time::Duration;

use crate::common::fake_openai::{self, FakeOpenAi, Reply, MODEL};
use crate::common::process::GatewayProcess;
use crate::common::viewer;
use crate::common::*;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::protocol::Order;
use chatkit_gateway::store::{ListQuery, SqliteStore, Store};
use serde_json::{json, Value};

/// A gateway process and the SQLite file it writes.
struct Gateway {
    process: GatewayProcess,
    db: std::path::PathBuf,
}

/// What answers the turns: the model responder or an agent backend, both played by the fake server.
#[derive(Clone, Copy)]
enum Upstream {
    Model,
    Agent,
}

impl Upstream {
    /// A reply that streams an assistant message in `parts`, pausing `delay` before each event after the first.
    fn answer(self, parts: &[&str], delay: Duration) -> Reply {
        let reply = match self {
            Upstream::Model => Reply::stream(fake_openai::text_chunks(MODEL, parts)),
            Upstream::Agent => Reply::stream(crate::agent::answer("msg_shutdown", parts)),
        };
        reply.delay(delay)
    }

    /// The environment that points the gateway at `fake` in this role.
    fn env(self, fake: &FakeOpenAi) -> Vec<(&'static str, String)> {
        match self {
            Upstream::Model => vec![
                ("OPENAI_BASE_URL", fake.base_url()),
                ("OPENAI_API_KEY", "sk-shutdown".into()),
                ("CHATKIT_MODEL", MODEL.into()),
                ("CHATKIT_TITLES", "false".into()),
            ],
            Upstream::Agent => vec![
                // The fake serves its scripted replies on the path the model client posts to.
                ("CHATKIT_AGENT_URL", format!("{}/chat/completions", fake.base_url())),
                ("CHATKIT_AGENT_SECRET", crate::agent::SECRET.into()),
            ],
        }
    }
}

/// Starts the test build of the binary on a free port, answering through `fake` as `upstream`.
fn start(fake: &FakeOpenAi, upstream: Upstream, grace_secs: u64) -> Gateway {
    let mut env = upstream.env(fake);
    env.push(("DATABASE_URL", "sqlite://{dir}/chatkit.db".into()));
    env.push(("CHATKIT_SHUTDOWN_GRACE_SECS", grace_secs.to_string()));
    let process = GatewayProcess::start(&env);
    let db = process.dir.path().join("chatkit.db");
    Gateway { process, db }
}

impl Gateway {
    fn terminate(&self) {
        self.process.signal("TERM");
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.process.wait_exit(limit)
    }

    async fn stored_assistant_text(&self, thread_id: &str) -> Vec<String> {
        let store = SqliteStore::open(&format!("sqlite://{}", self.db.display())).await.unwrap();
        let items = store.list_items(&UserId("alice".into()), thread_id, &ListQuery::first(100, Order::Asc)).await;
        items
            .unwrap()
            .data
            .into_iter()
            .filter_map(|item| {
                let value = serde_json::to_value(&item).unwrap();
                (value["type"] == "assistant_message")
                    .then(|| value["content"][0]["text"].as_str().unwrap().to_string())
            })
            .collect()
    }
}

/// Starts a turn and reads its stream until the first text delta; the rest is still to come.
async fn begin_turn(gateway: &Gateway) -> (reqwest::Response, String) {
    let params = json!({"input": text_input("tell me")});
    let mut response = gateway.process.post_chatkit("threads.create", params, &[]).await;
    let mut seen = String::new();
    while !seen.contains("text_delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.unwrap().unwrap().unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let created: Value = serde_json::from_str(seen.lines().next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    (response, created["thread"]["id"].as_str().unwrap().to_string())
}

async fn rest(mut response: reqwest::Response) -> String {
    let mut text = String::new();
    while let Ok(Ok(Some(chunk))) = tokio::time::timeout(Duration::from_secs(20), response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// SIGTERM while a turn streams: the turn finishes within the grace period, viewers are told to reconnect, the
/// process exits cleanly and the whole answer is stored.
async fn check_turn_finishes_on_sigterm(upstream: Upstream) {
    let fake = FakeOpenAi::start();
    fake.push(upstream.answer(&["one ", "two ", "three ", "four"], Duration::from_millis(250)));
    let mut gateway = start(&fake, upstream, 20);
    let mut history = viewer::open(&format!("{}/chatkit/events", gateway.process.base), "alice", None).await;
    let (turn, thread_id) = begin_turn(&gateway).await;
    gateway.terminate();
    let rest = rest(turn).await;
    assert!(rest.contains("thread.item.done") && rest.contains("one two three four"), "the turn finished: {rest}");
    let frames = history.rest().await;
    assert!(frames.iter().all(|f| f.event.is_none()), "no error or resync on shutdown: {frames:?}");
    assert_eq!(history.retry, Some(1000), "viewers are told to reconnect (elsewhere) after a second");
    let status = gateway.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert_eq!(gateway.stored_assistant_text(&thread_id).await, ["one two three four"]);
}

/// SIGTERM while a turn longer than the grace period streams: it is cancelled when the grace period ends, and its
/// partial answer is stored.
async fn check_long_turn_is_cancelled_on_sigterm(upstream: Upstream) {
    let fake = FakeOpenAi::start();
    let parts: Vec<String> = (0..40).map(|n| format!("w{n} ")).collect();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    fake.push(upstream.answer(&parts, Duration::from_millis(200)));
    let mut gateway = start(&fake, upstream, 1);
    let (turn, thread_id) = begin_turn(&gateway).await;
    gateway.terminate();
    let started = std::time::Instant::now();
    let rest = rest(turn).await;
    assert!(!rest.contains("w39"), "the turn did not run to its end: {rest}");
    let status = gateway.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "grace 1 s, then cancel and save");
    let stored = gateway.stored_assistant_text(&thread_id).await;
    assert_eq!(stored.len(), 1, "the partial answer is kept: {stored:?}");
    assert!(stored[0].starts_with("w0 w1 "), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_streaming_turn_finish_and_closes_viewers_with_a_retry_hint() {
    check_turn_finishes_on_sigterm(Upstream::Model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_longer_than_the_grace_period_is_cancelled_and_keeps_its_partial_answer() {
    check_long_turn_is_cancelled_on_sigterm(Upstream::Model).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_agent_turn_finish() {
    check_turn_finishes_on_sigterm(Upstream::Agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_turn_longer_than_the_grace_period_is_cancelled_and_keeps_its_partial_answer() {
    check_long_turn_is_cancelled_on_sigterm(Upstream::Agent).await;
}
