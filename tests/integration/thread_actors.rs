//! Thread actors: one turn at a time per thread, a bounded queue, idle actors stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::protocol::ItemBody;
use chatkit_gateway::responder::{EchoResponder, EventStream, RespondInput, Responder, TurnContext};
use chatkit_gateway::store::{MemoryStore, Store};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

/// Echo, slowed down so that turns overlap in time; panics on `boom`.
struct SlowEcho(Duration);

#[async_trait::async_trait]
impl Responder for SlowEcho {
    fn name(&self) -> &'static str {
        "slow-echo"
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        if let ItemBody::UserMessage(message) = &input.item().body {
            if message.plain_text() == "boom" {
                return Box::pin(stream::once(async { panic!("boom") }));
            }
        }
        let pause = self.0;
        Box::pin(EchoResponder::new().respond(turn, input).then(move |event| async move {
            tokio::time::sleep(pause).await;
            event
        }))
    }
}

fn spawn_slow(pause: Duration, queue_bound: usize) -> TestApp {
    spawn(Spawn {
        responder: Arc::new(SlowEcho(pause)),
        configure: Box::new(move |config| config.threads.thread_queue_bound = queue_bound),
        ..Default::default()
    })
}

/// Sends `count` messages to one thread at once; returns each message's text and events.
async fn flood(app: &TestApp, thread_id: &str, count: usize) -> Vec<(String, Vec<Value>)> {
    let sends = (0..count).map(|i| async move {
        let text = format!("message {i}");
        let events = app.say("alice", thread_id, &text).await;
        (text, events)
    });
    futures_util::future::join_all(sends).await
}

/// Asserts that stored items after the first turn come in (user, its echo) pairs.
fn check_contiguous(items: &[Value]) -> Vec<String> {
    let mut texts = Vec::new();
    for pair in items[2..].chunks(2) {
        let asked = pair[0]["content"][0]["text"].as_str().expect("a user message");
        assert_eq!(pair[1]["type"], "assistant_message", "{pair:?}");
        assert_eq!(pair[1]["content"][0]["text"], format!("echo: {asked}"), "turns interleaved: {pair:?}");
        texts.push(asked.to_string());
    }
    texts
}

#[tokio::test]
async fn concurrent_messages_on_one_thread_run_one_at_a_time() {
    let app = spawn_slow(Duration::from_millis(1), 64);
    let (tid, _) = app.create_thread("alice", "start").await;
    let results = flood(&app, &tid, 50).await;
    for (text, events) in &results {
        assert_eq!(deltas(events), format!("echo: {text}"), "no deltas of two turns mix in one stream");
        assert!(!events.iter().any(|e| e["type"] == "error"), "{events:?}");
    }
    let items = app.items("alice", &tid).await;
    assert_eq!(items.len(), 2 + 100, "every turn persisted two items");
    let mut texts = check_contiguous(&items);
    texts.sort();
    let mut sent: Vec<String> = results.into_iter().map(|(text, _)| text).collect();
    sent.sort();
    assert_eq!(texts, sent);
}

#[tokio::test]
async fn past_the_queue_bound_messages_are_refused_and_leave_no_trace() {
    let app = spawn_slow(Duration::from_millis(20), 16);
    let (tid, _) = app.create_thread("alice", "start").await;
    let results = flood(&app, &tid, 50).await;
    let (refused, accepted): (Vec<_>, Vec<_>) =
        results.into_iter().partition(|(_, events)| events.first().is_some_and(|e| e["type"] == "error"));
    assert!(!refused.is_empty(), "a 50-message burst overflows a queue of 16");
    for (_, events) in &refused {
        assert_eq!(events.len(), 1, "a refusal is a single event: {events:?}");
        assert_eq!(events[0]["allow_retry"], true);
        assert!(events[0]["message"].as_str().unwrap().contains("busy"), "{events:?}");
    }
    let items = app.items("alice", &tid).await;
    let stored = check_contiguous(&items);
    assert_eq!(stored.len(), accepted.len());
    for (text, _) in &refused {
        assert!(!stored.contains(text), "a refused message was stored: {text}");
    }
    assert_eq!(app.threads.stats().refused_busy.load(Ordering::Relaxed), refused.len() as u64);
    // The refusals left the thread itself as it was.
    let title = app.call("alice", "threads.get_by_id", json!({"thread_id": tid})).await["title"].clone();
    assert_eq!(title, "start");
}

#[tokio::test]
async fn concurrent_first_requests_start_one_actor() {
    let store = Arc::new(MemoryStore::new());
    // Room for every rename, so that none is refused as busy.
    let app = spawn(Spawn {
        store: Some(store.clone()),
        configure: Box::new(|config| config.threads.thread_queue_bound = 64),
        ..Default::default()
    });
    let thread = chatkit_gateway::protocol::ThreadMetadata::new("thr_contended".into());
    store.create_thread(&UserId("alice".into()), &thread).await.unwrap();
    let renames = (0..32).map(|i| {
        let app = &app;
        async move {
            app.call("alice", "threads.update", json!({"thread_id": "thr_contended", "title": format!("t{i}")})).await
        }
    });
    futures_util::future::join_all(renames).await;
    assert_eq!(app.threads.stats().actors_started.load(Ordering::Relaxed), 1);
    assert_eq!(app.threads.live_actors(), 1);
}

#[tokio::test]
async fn idle_actors_stop_and_leave_the_registry() {
    let store = Arc::new(MemoryStore::new());
    let app = spawn(Spawn {
        store: Some(store.clone()),
        configure: Box::new(|config| config.threads.thread_idle_secs = 1),
        ..Default::default()
    });
    let user = UserId("alice".into());
    let mut ids = Vec::new();
    for _ in 0..10_000 {
        let thread = chatkit_gateway::protocol::ThreadMetadata::new(chatkit_gateway::ids::new_id(
            chatkit_gateway::ids::IdKind::Thread,
        ));
        store.create_thread(&user, &thread).await.unwrap();
        ids.push(thread.id);
    }
    // Each rename is a change, so it starts the thread's actor.
    stream::iter(ids.iter())
        .for_each_concurrent(32, |id| {
            let app = &app;
            async move {
                app.call("alice", "threads.update", json!({"thread_id": id, "title": "touched"})).await;
            }
        })
        .await;
    let stats = app.threads.stats();
    assert_eq!(stats.actors_started.load(Ordering::Relaxed), 10_000);
    eventually("every idle actor stopped", || async {
        app.threads.live_actors() == 0 && stats.actors_stopped.load(Ordering::Relaxed) == 10_000
    })
    .await;
    // A thread touched again gets a fresh actor.
    app.call("alice", "threads.update", json!({"thread_id": ids[0], "title": "again"})).await;
    assert_eq!(app.threads.live_actors(), 1);
}

#[tokio::test]
async fn a_panicking_turn_does_not_kill_the_thread_or_others() {
    let app = spawn_slow(Duration::from_millis(0), 16);
    let (tid, _) = app.create_thread("alice", "start").await;
    let failed = app.say("alice", &tid, "boom").await;
    assert_eq!(failed.last().unwrap(), &json!({"type": "error", "code": "stream.error", "allow_retry": true}));
    assert_eq!(assistant_text(&app.say("alice", &tid, "after").await), "echo: after");
    let (_, other) = app.create_thread("alice", "other thread").await;
    assert_eq!(assistant_text(&other), "echo: other thread");
}
