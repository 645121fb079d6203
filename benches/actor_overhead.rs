//! What the thread-actor path adds to a turn: the same echo turn run directly
//! on the engine and through `ThreadRegistry`, alternating, on an in-memory store.
//!
//! Run with `cargo bench --bench actor_overhead`; it prints p50 and p99 of both
//! paths and of their difference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatkit_gateway::blobs::DirBlobs;
use chatkit_gateway::engine::{CancelSignal, Engine, EngineSettings, TurnEvent};
use chatkit_gateway::fanout::{self, FanoutSettings};
use chatkit_gateway::ids::UserId;
use chatkit_gateway::protocol::{Request, ThreadStreamEvent};
use chatkit_gateway::responder::EchoResponder;
use chatkit_gateway::sessions::Sessions;
use chatkit_gateway::store::{MemoryStore, Store};
use chatkit_gateway::thread::{ThreadRegistry, ThreadSettings};
use tokio::sync::mpsc;

const TURNS: usize = 20_000;

fn request(body: String) -> Request {
    Request::parse(body.as_bytes()).expect("a valid request")
}

fn message(thread_id: &str, text: &str) -> Request {
    request(format!(
        r#"{{"type":"threads.add_user_message","params":{{"thread_id":"{thread_id}","input":{{"content":[{{"type":"input_text","text":"{text}"}}]}}}}}}"#
    ))
}

async fn drain(mut events: mpsc::Receiver<TurnEvent>) -> usize {
    let mut count = 0;
    while events.recv().await.is_some() {
        count += 1;
    }
    count
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let data = std::env::temp_dir().join(format!("chatkit-bench-{}", std::process::id()));
    let files = Arc::new(DirBlobs::new(data.clone()));
    actix::System::new().block_on(async move {
        let settings = EngineSettings { public_url: "http://127.0.0.1".into(), max_upload_bytes: 1 << 20 };
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let fanout = fanout::open(None, FanoutSettings::default()).expect("in-process fan-out");
        let sessions = Arc::new(Sessions::new(store.clone(), fanout.coordination.clone()));
        let engine =
            Arc::new(Engine::new(store, Arc::new(EchoResponder::new()), fanout.bus, sessions, files, settings));
        let threads = ThreadRegistry::new(engine.clone(), fanout.coordination, ThreadSettings::default());
        let user = UserId("bench".into());
        let create = request(
            r#"{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"hi"}]}}}"#.into(),
        );
        let turn = engine.prepare(&user, create, None).await.expect("create");
        let (direct_thread, actor_thread) = (turn.thread_id(), {
            let events = threads.turn(user.clone(), request(
                r#"{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"hi"}]}}}"#.into(),
            ), Default::default()).await.expect("create");
            let mut events = events;
            let Some(ThreadStreamEvent::ThreadCreated { thread }) = events.recv().await.map(|e| e.event) else {
                panic!("no thread")
            };
            drain(events).await;
            thread.id
        });
        let (sink, events) = mpsc::channel(64);
        engine.run(turn, sink, CancelSignal::new()).await;
        drain(events).await;

        let (mut direct, mut actor) = (Vec::with_capacity(TURNS), Vec::with_capacity(TURNS));
        for i in 0..TURNS {
            // Alternating keeps drift (store growth, CPU frequency) out of the difference.
            let started = Instant::now();
            let turn = engine.prepare(&user, message(&direct_thread, "ping"), None).await.expect("prepare");
            let (sink, events) = mpsc::channel(64);
            let runner = engine.clone();
            tokio::spawn(async move { runner.run(turn, sink, CancelSignal::new()).await });
            assert!(drain(events).await > 5);
            direct.push(started.elapsed());

            let started = Instant::now();
            let events = threads.turn(user.clone(), message(&actor_thread, "ping"), Default::default()).await.expect("turn");
            assert!(drain(events).await > 5, "turn {i} streamed");
            actor.push(started.elapsed());
        }
        direct.sort();
        actor.sort();
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        println!("turns per path: {TURNS} (echo responder, in-memory store, one thread each)");
        for (name, sorted) in [("direct", &direct), ("actor", &actor)] {
            println!(
                "{name:>7}: p50 {:7.1} us   p99 {:7.1} us",
                micros(percentile(sorted, 0.5)),
                micros(percentile(sorted, 0.99))
            );
        }
        println!(
            "  added: p50 {:7.1} us   p99 {:7.1} us",
            micros(percentile(&actor, 0.5)) - micros(percentile(&direct, 0.5)),
            micros(percentile(&actor, 0.99)) - micros(percentile(&direct, 0.99))
        );
    });
    let _ = std::fs::remove_dir_all(data);
}
