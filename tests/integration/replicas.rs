//! Three gateway replicas sharing one PostgreSQL database and one Redis: viewers,
//! turns, locks and cancels made on one replica as seen from the others, and
//! what happens while Redis is away.
//!
//! The tests run on a multi-threaded runtime: each replica's PostgreSQL pool
//! opens its first connections on the test's runtime, and the replicas' own
//! threads use them; a current-thread runtime would stop driving them whenever
//! the test thread blocks (restarting Redis, stopping a replica).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::gated::{rest_of, start_slow};
use crate::common::postgres::TestDatabase;
use crate::common::redis::RedisServer;
use crate::common::viewer::{rebuilt_text, Frame, Viewer};
use crate::common::*;
use chatkit_gateway::config::Config;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::ids::{new_id, IdKind};
use chatkit_gateway::protocol::{AssistantMessageContent, ItemBody, ItemUpdate, Order, ThreadItem, ThreadStreamEvent};
use chatkit_gateway::responder::{EventStream, RespondInput, Responder, TurnContext};
use chatkit_gateway::secret::Secret;
use chatkit_gateway::store::{ListQuery, PostgresStore};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// The message that makes the responder stop after `partial ` until the test opens the gate.
const SLOW: &str = "slow";
/// The pause between two deltas of an echoed answer, so that turns overlap in time.
const PAUSE: Duration = Duration::from_millis(3);

/// How many responses run at once over all replicas, and the most there ever were.
#[derive(Default)]
struct Overlap {
    running: AtomicUsize,
    most: AtomicUsize,
}

/// Counts one running response for as long as it lives.
struct Running(Arc<Overlap>);

impl Running {
    fn start(overlap: Arc<Overlap>) -> Running {
        let now = overlap.running.fetch_add(1, Ordering::SeqCst) + 1;
        overlap.most.fetch_max(now, Ordering::SeqCst);
        Running(overlap)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers `echo: <text>` one word per delta with a short pause between them.
/// `slow` streams `partial ` and then waits for a permit of the gate, shared by
/// all replicas, before it streams `rest`.
struct Paced {
    gate: Arc<Semaphore>,
    overlap: Arc<Overlap>,
}

#[async_trait::async_trait]
impl Responder for Paced {
    fn name(&self) -> &'static str {
        "paced"
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        let (gate, overlap) = (self.gate.clone(), self.overlap.clone());
        let text = match &input.item().body {
            ItemBody::UserMessage(message) => message.plain_text(),
            _ => String::new(),
        };
        Box::pin(async_stream::stream! {
            let _running = Running::start(overlap);
            let id = new_id(IdKind::Message);
            let empty = ThreadItem::new(id.clone(), turn.thread.id(), ItemBody::AssistantMessage { content: vec![] });
            yield Ok(ThreadStreamEvent::ItemAdded { item: empty.clone() });
            let parts: Vec<String> = if text == SLOW {
                vec!["partial ".into(), "rest".into()]
            } else {
                format!("echo: {text}").split_inclusive(' ').map(str::to_string).collect()
            };
            let mut full = String::new();
            for (index, part) in parts.into_iter().enumerate() {
                if text == SLOW && index == 1 {
                    if let Ok(permit) = gate.acquire().await {
                        permit.forget();
                    }
                } else if index > 0 {
                    tokio::time::sleep(PAUSE).await;
                }
                full.push_str(&part);
                let update = ItemUpdate::TextDelta { content_index: 0, delta: part };
                yield Ok(ThreadStreamEvent::ItemUpdated { item_id: id.clone(), update });
            }
            let mut done = empty;
            done.body = ItemBody::AssistantMessage { content: vec![AssistantMessageContent::text(full)] };
            yield Ok(ThreadStreamEvent::ItemDone { item: done });
        })
    }
}

/// Three replicas with one store each on one database, fanning out over one Redis.
/// Fields drop in order: the replicas stop before Redis and the database go.
struct Cluster {
    replicas: [TestApp; 3],
    gate: Arc<Semaphore>,
    overlap: Arc<Overlap>,
    redis: RedisServer,
    _database: TestDatabase,
}

/// Starts Redis, a database and three replicas, and waits until every replica is ready.
async fn cluster(tweak: fn(&mut Config)) -> Cluster {
    let redis = RedisServer::start();
    let database = TestDatabase::create().await;
    let gate = Arc::new(Semaphore::new(0));
    let overlap = Arc::new(Overlap::default());
    let mut replicas = Vec::new();
    // One after another: the first brings the schema up to date.
    for _ in 0..3 {
        let store = PostgresStore::open(&database.url).await.expect("store opens");
        let url = redis.url();
        replicas.push(spawn(Spawn {
            store: Some(Arc::new(store)),
            responder: Arc::new(Paced { gate: gate.clone(), overlap: overlap.clone() }),
            configure: Box::new(move |config| {
                config.fanout.redis_url = Some(Secret::new(url));
                tweak(config);
            }),
            record: false,
        }));
    }
    let replicas: [TestApp; 3] = replicas.try_into().unwrap_or_else(|_| unreachable!());
    for app in &replicas {
        eventually("the replica is connected to Redis", || async { readiness(app).await.0 == 200 }).await;
    }
    Cluster { replicas, gate, overlap, redis, _database: database }
}

/// `GET /readyz`: its status and body.
async fn readiness(app: &TestApp) -> (u16, Value) {
    let response = app.client.get(app.url("/readyz")).send().await.expect("readyz answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("readyz answers JSON"))
}

async fn rename(app: &TestApp, thread_id: &str, title: &str) {
    app.call("alice", "threads.update", json!({"thread_id": thread_id, "title": title})).await;
}

fn thread_events(app: &TestApp, thread_id: &str) -> String {
    app.url(&format!("/chatkit/threads/{thread_id}/events"))
}

/// Reads past item events of earlier turns to the next frame of `kind`; any
/// other frame (a `resync` above all) fails the test.
async fn next_of(viewer: &mut Viewer, kind: &str) -> Frame {
    loop {
        let frame = viewer.next().await;
        if frame.kind() == kind {
            return frame;
        }
        let earlier = frame.kind().starts_with("thread.item.") || frame.kind() == "thread.created";
        assert!(earlier, "unexpected frame while waiting for {kind}: {frame:?}");
    }
}

/// What two viewers must agree on: each frame's id, name and data.
fn summary(frames: &[Frame]) -> Vec<(Option<u64>, Option<String>, Value)> {
    frames.iter().map(|frame| (frame.id, frame.event.clone(), frame.data.clone())).collect()
}

/// Whether a frame is about the item `item_id`.
fn about(frame: &Frame, item_id: &str) -> bool {
    frame.data["item"]["id"] == item_id || frame.data["item_id"] == item_id
}

fn text_of(item: &Value) -> String {
    item["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn title_and_status_changes_on_one_replica_reach_viewers_on_the_others() {
    let cluster = cluster(|_| {}).await;
    let [a, b, c] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut viewers = vec![
        b.view_thread("alice", &tid).await,
        c.view_thread("alice", &tid).await,
        b.view_history("alice").await,
        c.view_history("alice").await,
    ];
    rename(a, &tid, "Renamed").await;
    let mut renamed_ids = Vec::new();
    for viewer in &mut viewers {
        let frame = next_of(viewer, "thread.updated").await;
        assert_eq!(frame.data["thread"]["id"], json!(tid));
        assert_eq!(frame.data["thread"]["title"], "Renamed", "{frame:?}");
        renamed_ids.push(frame.id.expect("an id"));
    }
    a.set_status(&tid, json!({"type": "locked", "reason": "Paused"})).await;
    for (viewer, renamed) in viewers.iter_mut().zip(renamed_ids) {
        let frame = viewer.next().await;
        assert_eq!(frame.kind(), "thread.updated", "{frame:?}");
        assert_eq!(frame.data["thread"]["status"], json!({"type": "locked", "reason": "Paused"}));
        assert_eq!(frame.data["thread"]["title"], "Renamed");
        assert_eq!(frame.id, Some(renamed + 1), "the next message of the topic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_on_other_replicas_see_the_whole_answer_of_a_turn() {
    let cluster = cluster(|_| {}).await;
    let [a, b, c] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut tabs = [b.view_thread("alice", &tid).await, c.view_thread("alice", &tid).await];
    let events = a.say("alice", &tid, "tell me about the replicas").await;
    let answer = events
        .iter()
        .find(|e| e["type"] == "thread.item.done" && e["item"]["type"] == "assistant_message")
        .expect("an answer")["item"]
        .clone();
    let answer_id = answer["id"].as_str().unwrap().to_string();
    let stored = c.items("alice", &tid).await;
    let persisted = stored.last().expect("items").clone();
    assert_eq!(persisted["id"], json!(answer_id));
    assert_eq!(text_of(&persisted), "echo: tell me about the replicas");
    let mut seen = Vec::new();
    for tab in &mut tabs {
        let frames = tab.until(|f| f.kind() == "thread.item.done" && about(f, &answer_id)).await;
        assert!(frames.iter().all(|f| f.event.is_none()), "no control frames: {frames:?}");
        let asked = frames.iter().find(|f| f.kind() == "thread.item.done" && f.data["item"]["type"] == "user_message");
        assert_eq!(asked.map(|f| text_of(&f.data["item"])).as_deref(), Some("tell me about the replicas"));
        let streamed = &frames[..frames.len() - 1];
        assert!(streamed.iter().filter(|f| f.kind() == "thread.item.updated").count() >= 4, "{frames:?}");
        assert_eq!(rebuilt_text(streamed, &answer_id), text_of(&persisted), "the deltas alone rebuild the answer");
        assert_eq!(rebuilt_text(&frames, &answer_id), text_of(&persisted));
        seen.push(frames.into_iter().filter(|f| about(f, &answer_id)).collect::<Vec<_>>());
    }
    assert_eq!(summary(&seen[0]), summary(&seen[1]), "both tabs saw the same messages with the same ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_messages_through_two_replicas_run_one_at_a_time() {
    let cluster = cluster(|_| {}).await;
    let [a, b, c] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "start").await;
    let sends = (0..6).map(|i| {
        let (app, name) = if i % 2 == 0 { (a, "a") } else { (b, "b") };
        let tid = &tid;
        async move {
            let text = format!("message {i} via {name}");
            let events = app.say("alice", tid, &text).await;
            (text, events)
        }
    });
    let results = futures_util::future::join_all(sends).await;
    for (text, events) in &results {
        assert!(!events.iter().any(|e| e["type"] == "error"), "{events:?}");
        assert_eq!(deltas(events), format!("echo: {text}"), "no deltas of two turns mix in one stream");
    }
    assert_eq!(cluster.overlap.most.load(Ordering::SeqCst), 1, "two responses ran at once");
    let items = c.items("alice", &tid).await;
    assert_eq!(items.len(), 2 + 2 * results.len(), "every turn stored its message and answer: {items:#?}");
    let mut stored = Vec::new();
    for pair in items[2..].chunks(2) {
        let asked = text_of(&pair[0]);
        assert_eq!(pair[0]["type"], "user_message", "{pair:?}");
        assert_eq!(pair[1]["type"], "assistant_message", "{pair:?}");
        assert_eq!(text_of(&pair[1]), format!("echo: {asked}"), "turns interleaved: {pair:?}");
        stored.push(asked);
    }
    stored.sort();
    let mut sent: Vec<String> = results.into_iter().map(|(text, _)| text).collect();
    sent.sort();
    assert_eq!(stored, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_made_on_one_replica_refuses_input_on_another() {
    let cluster = cluster(|_| {}).await;
    let [a, b, c] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    // B has served the thread already, so it has a live actor for it.
    assert_eq!(assistant_text(&b.say("alice", &tid, "before").await), "echo: before");
    let locked = a.set_status(&tid, json!({"type": "locked", "reason": "Under review"})).await;
    assert_eq!(locked["status"], json!({"type": "locked", "reason": "Under review"}));

    let refused = b.say("alice", &tid, "after the lock").await;
    assert!(refused_with(&refused, "Under review"), "{refused:?}");
    assert!(refused_with(&c.say("alice", &tid, "elsewhere").await, "Under review"));
    let texts: Vec<String> = c.items("alice", &tid).await.iter().map(text_of).collect();
    assert_eq!(texts, ["hello", "echo: hello", "before", "echo: before"], "nothing after the lock was stored");
    let thread = b.call("alice", "threads.get_by_id", json!({"thread_id": tid})).await;
    assert_eq!(thread["status"], json!({"type": "locked", "reason": "Under review"}));

    // Reopened on C, the thread takes input on B again.
    c.set_status(&tid, json!({"type": "active"})).await;
    assert_eq!(assistant_text(&b.say("alice", &tid, "again").await), "echo: again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_mid_turn_degrades_fanout_but_not_the_turn_and_it_recovers() {
    let mut cluster = cluster(|_| {}).await;
    let Cluster { replicas: [a, b, c], gate, redis, .. } = &mut cluster;
    let (a, b, c) = (&*a, &*b, &*c);
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut watcher = b.view_thread("alice", &tid).await;
    let running = start_slow(a, &tid).await;
    let streamed = watcher.until(|f| f.data["update"]["delta"] == "partial ").await;
    assert!(streamed.iter().all(|f| f.event.is_none()), "{streamed:?}");

    redis.kill();
    let frame = next_of(&mut watcher, "resync").await;
    assert_eq!((frame.kind(), &frame.data), ("resync", &json!({"reason": "fanout"})), "{frame:?}");
    for app in [a, b, c] {
        // Every replica loses Redis at once: each stays ready (its store answers), reporting the degraded fan-out.
        eventually("readyz reports the lost fan-out", || async {
            let (status, body) = readiness(app).await;
            status == 200 && body["status"] == "degraded" && body["fanout"]["state"] == "disconnected"
        })
        .await;
    }

    gate.add_permits(1);
    let rest = rest_of(running).await;
    assert!(rest.contains("partial rest") && !rest.contains("\"error\""), "the turn completed: {rest}");
    let items = c.items("alice", &tid).await;
    assert_eq!(text_of(items.last().unwrap()), "partial rest", "and persisted");

    redis.restart();
    let restarted = tokio::time::Instant::now();
    for app in [a, b, c] {
        eventually("fan-out is connected again", || async { readiness(app).await.1["status"] == "ready" }).await;
    }
    // Fan-out works again: a fresh change reaches the viewer that stayed
    // connected, after at most a `resync` for what it missed.
    rename(a, &tid, "After the outage").await;
    let deadline = restarted + Duration::from_secs(2);
    loop {
        let frame = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .expect("the rename reached the viewer within 2 s of the restart");
        match frame.kind() {
            "resync" => {}
            "thread.updated" => {
                assert_eq!(frame.data["thread"]["title"], "After the outage");
                break;
            }
            other => panic!("unexpected frame {other}: {frame:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_resuming_on_another_replica_gets_what_it_missed_or_a_resync() {
    const HISTORY: usize = 12;
    let cluster = cluster(|config| config.fanout.fanout_history = HISTORY).await;
    let [a, b, c] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut steady = a.view_thread("alice", &tid).await;
    let mut leaving = b.view_thread("alice", &tid).await;
    rename(a, &tid, "One").await;
    let last = next_of(&mut leaving, "thread.updated").await.id.expect("an id");
    assert_eq!(next_of(&mut steady, "thread.updated").await.id, Some(last), "one sequence for every replica");
    drop(leaving);

    // While it is away, a turn and a rename happen, all within the history.
    a.say("alice", &tid, "while away").await;
    rename(a, &tid, "Two").await;
    let missed = steady.until(|f| f.kind() == "thread.updated").await;
    assert!(missed.len() > 4 && missed.len() < HISTORY, "{missed:?}");
    let mut back = crate::common::viewer::open(&thread_events(c, &tid), "alice", Some(last)).await;
    let mut replayed = Vec::new();
    for _ in 0..missed.len() {
        replayed.push(back.next().await);
    }
    assert_eq!(summary(&replayed), summary(&missed), "every missed message, in order");
    let ids: Vec<u64> = replayed.iter().filter_map(|f| f.id).collect();
    assert_eq!(ids, (last + 1..=last + missed.len() as u64).collect::<Vec<_>>());
    // The resumed viewer is live again.
    rename(b, &tid, "Three").await;
    let live = back.next().await;
    assert_eq!((live.id, &live.data["thread"]["title"]), (Some(last + missed.len() as u64 + 1), &json!("Three")));

    // A long answer pushes `last` out of the history: that viewer must resync.
    let events = a.say("alice", &tid, "one two three four five six seven eight nine ten eleven twelve").await;
    let answer_id = events.iter().rev().find(|e| e["type"] == "thread.item.done").expect("an answer")["item"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Once the steady viewer has the whole answer, so has Redis's history.
    steady.until(|f| f.kind() == "thread.item.done" && about(f, &answer_id)).await;
    let mut stale = crate::common::viewer::open(&thread_events(b, &tid), "alice", Some(last)).await;
    let frame = stale.next().await;
    assert_eq!((frame.kind(), &frame.data), ("resync", &json!({"reason": "gap"})), "{frame:?}");
    assert!(frame.id.is_some_and(|head| head > last + HISTORY as u64), "resync names the head: {frame:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_joining_mid_turn_on_another_replica_renders_the_whole_answer() {
    let cluster = cluster(|_| {}).await;
    let [a, b, c] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    let running = start_slow(a, &tid).await;
    let mut late = b.view_thread("alice", &tid).await;
    cluster.gate.add_permits(1);
    assert!(rest_of(running).await.contains("partial rest"));
    let persisted = c.items("alice", &tid).await.last().expect("items").clone();
    let answer_id = persisted["id"].as_str().unwrap().to_string();
    assert_eq!(text_of(&persisted), "partial rest");

    let frames = late.until(|f| f.kind() == "thread.item.done" && about(f, &answer_id)).await;
    let about_answer: Vec<&Frame> = frames.iter().filter(|f| about(f, &answer_id)).collect();
    assert_eq!(about_answer[0].kind(), "thread.item.added", "the answer starts from its item: {frames:?}");
    assert!(frames.iter().all(|f| f.event.is_none()), "no control frames: {frames:?}");
    let streamed = &frames[..frames.len() - 1];
    assert_eq!(rebuilt_text(streamed, &answer_id), "partial rest", "the whole answer before its done: {frames:?}");
    assert_eq!(rebuilt_text(&frames, &answer_id), "partial rest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_another_replica_stops_the_turn_and_keeps_its_partial_answer() {
    let cluster = cluster(|_| {}).await;
    let [a, b, c] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    let running = start_slow(a, &tid).await;
    let (status, answer) = b.admin(&format!("/v1/chatkit/threads/{tid}/cancel"), json!({}), None).await;
    assert_eq!((status, answer), (200, json!({"id": tid, "cancelled": true})));
    // The gate stays shut: the stream can only end because the turn stopped.
    let rest = tokio::time::timeout(Duration::from_secs(10), rest_of(running)).await.expect("the stream ended");
    assert!(!rest.contains("rest"), "the turn stopped where it was: {rest}");

    let items = c.items("alice", &tid).await;
    let last = items.last().expect("items");
    assert_eq!((last["type"].as_str(), text_of(last).as_str()), (Some("assistant_message"), "partial "));
    let user = UserId("alice".into());
    let everything = c.store.list_items(&user, &tid, &ListQuery::first(100, Order::Asc)).await.unwrap();
    assert!(everything.data.iter().any(|item| item.kind() == "sdk_hidden_context"), "the cancellation is noted");
    // The lease went with the turn: another replica runs the next message.
    assert_eq!(assistant_text(&b.say("alice", &tid, "next").await), "echo: next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_as_redis_returns_reach_viewers_elsewhere_or_make_them_resync() {
    let mut cluster = cluster(|_| {}).await;
    let Cluster { replicas: [a, b, _], redis, .. } = &mut cluster;
    let (a, b) = (&*a, &*b);
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut watcher = b.view_thread("alice", &tid).await;
    redis.kill();
    let killed = tokio::time::Instant::now();
    let frame = next_of(&mut watcher, "resync").await;
    assert_eq!((frame.kind(), &frame.data), ("resync", &json!({"reason": "fanout"})), "{frame:?}");
    // Changes come to A while Redis is away, so A's command connection retries
    // with backoff on a schedule of its own: it starts later than the
    // subscriber connections', so it comes back after them.
    tokio::time::sleep_until(killed + Duration::from_millis(400)).await;
    let mut renames = 0;
    while killed.elapsed() < Duration::from_millis(2000) {
        rename(a, &tid, &format!("During {renames}")).await;
        renames += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.restart();
    // B is back: it tells its viewer to refetch what it missed.
    let frame = watcher.next().await;
    assert_eq!((frame.kind(), &frame.data), ("resync", &json!({"reason": "fanout"})), "{frame:?}");
    // From now on nothing may be lost silently: a change made on A reaches
    // B's viewer, or that viewer hears that it missed something. And once A
    // reports ready, what it publishes goes through.
    rename(a, &tid, "Back").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    eventually("A is ready", || async { readiness(a).await.0 == 200 }).await;
    rename(a, &tid, "Ready").await;
    let mut frames = Vec::new();
    while !frames.last().is_some_and(|f: &Frame| f.data["thread"]["title"] == "Ready") {
        let frame = tokio::time::timeout_at(deadline, watcher.next()).await;
        frames.push(frame.unwrap_or_else(|_| panic!("no `Ready` within 2 s, only {frames:?}")));
    }
    let back = frames.iter().any(|f| f.kind() == "thread.updated" && f.data["thread"]["title"] == "Back");
    let resync = frames.iter().any(|f| f.kind() == "resync");
    assert!(back || resync, "`Back` was lost without a resync: {frames:?}");
    assert!(frames.iter().all(|f| f.kind() == "resync" || f.kind() == "thread.updated"), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_outlives_a_redis_restart_keeps_its_lease_and_completes() {
    // Renewed every third of a second, the lease is renewed soon after Redis returns.
    let mut cluster = cluster(|config| config.fanout.lease_ttl_secs = 1).await;
    let Cluster { replicas: [a, _, c], gate, redis, .. } = &mut cluster;
    let (a, c) = (&*a, &*c);
    let (tid, _) = a.create_thread("alice", "hello").await;
    let running = start_slow(a, &tid).await;
    let lease = format!("{}:lease", chatkit_gateway::fanout::Topic::Thread(tid.clone()).channel());
    assert!(redis.exists(&lease), "the running turn holds the thread's lease");
    redis.kill();
    eventually("A notices that Redis is gone", || async { readiness(a).await.1["status"] == "degraded" }).await;
    // Redis comes back empty, without the lease: nobody else holds it, so the
    // turn takes it again rather than stop.
    redis.restart();
    let redis = &*redis;
    eventually("the running turn holds the lease again", || async { redis.exists(&lease) }).await;
    gate.add_permits(1);
    let rest = rest_of(running).await;
    assert!(rest.contains("partial rest"), "the turn completed: {rest}");
    assert_eq!(text_of(c.items("alice", &tid).await.last().unwrap()), "partial rest");
    eventually("the finished turn released the lease", || async { !redis.exists(&lease) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_pings_keep_a_quiet_subscriber_connection_up() {
    // Ten pings a second: a ping the subscriber mistook for a failure would
    // drop the connection and send every viewer `resync`.
    let cluster = cluster(|config| config.fanout.redis_ping_ms = 100).await;
    let [a, b, _] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut viewer = b.view_thread("alice", &tid).await;
    let quiet = viewer.next_within(Duration::from_millis(800)).await;
    assert!(quiet.is_none(), "nothing happened, so nothing is sent: {quiet:?}");
    assert_eq!(readiness(b).await.0, 200);
    rename(a, &tid, "Still connected").await;
    let frame = viewer.next().await;
    assert_eq!((frame.kind(), frame.data["thread"]["title"].clone()), ("thread.updated", json!("Still connected")));
}

/// A turn's messages reach a viewer on another replica in order under consecutive ids, however
/// the publisher batched them; and both forms a publication takes on the wire are read: a batch
/// of consecutive messages (this release) and a single message (every earlier release, which a
/// rolling upgrade runs beside this one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_single_publications_reach_viewers_in_order() {
    let cluster = cluster(|_| {}).await;
    let [a, b, _] = &cluster.replicas;
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut tab = b.view_thread("alice", &tid).await;
    a.say("alice", &tid, "one two three four five").await;
    let frames = tab.until(|f| f.kind() == "thread.item.done" && f.data["item"]["type"] == "assistant_message").await;
    let ids: Vec<u64> = frames.iter().filter_map(|f| f.id).collect();
    assert!(ids.len() >= 8 && ids.len() == frames.len(), "{frames:?}");
    assert_eq!(ids, (ids[0]..ids[0] + ids.len() as u64).collect::<Vec<_>>(), "consecutive ids, in order");

    let head = ids[ids.len() - 1];
    let channel = format!("ck:{{t:{tid}}}");
    let message = |title: &str| format!("1 e {}", json!({"type": "thread.updated", "thread": {"title": title}}));
    let single = format!("{} {}", head + 1, message("single"));
    assert_eq!(cluster.redis.command(&["PUBLISH", &channel, &single]), ":1", "one subscriber: b's");
    let (second, third) = (message("second"), message("third"));
    let batch = format!("B {} {}:{second} {}:{third}", head + 2, second.len(), third.len());
    cluster.redis.command(&["PUBLISH", &channel, &batch]);
    let mut received = Vec::new();
    for _ in 0..3 {
        let frame = tab.next().await;
        received.push((frame.id, frame.data["thread"]["title"].clone()));
    }
    assert_eq!(
        received,
        vec![(Some(head + 1), json!("single")), (Some(head + 2), json!("second")), (Some(head + 3), json!("third"))]
    );
}

/// A replica keeps a thread's lease for a moment after a job, for the thread's next message. When
/// that message goes to another replica instead, the waiting replica asks for the lease on the
/// control channel, the holder hears it (and its actor lets the lease go), and the waiter gets
/// the lease, with a higher fencing token, once it is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_waiting_for_a_lease_asks_its_holder_for_it() {
    use chatkit_gateway::fanout::{Backend, Coordination, FanoutSettings, Health, RedisFanout};
    let redis = RedisServer::start();
    let holder = RedisFanout::open(&redis.url(), FanoutSettings::default()).unwrap();
    let waiter = RedisFanout::open(&redis.url(), FanoutSettings::default()).unwrap();
    eventually("the holder's subscriber is up", || async { holder.health() == Health::Connected }).await;
    let mut asked = holder.lease_wanted();
    let lease = holder.lease("thr_wanted").await.expect("a lease");
    assert!(holder.still_held(&lease).await, "the holder's lease is its own");
    let waiting = tokio::spawn(async move { waiter.lease("thr_wanted").await.map(|granted| granted.token) });
    let wanted = tokio::time::timeout(Duration::from_secs(10), asked.recv()).await.expect("the waiter asked");
    assert_eq!(wanted.expect("a thread id"), "thr_wanted");
    let token = lease.token;
    drop(lease);
    let granted = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("granted").unwrap();
    assert!(granted.expect("the lease, once released") > token);
}

/// What a turn's responder has ready together (the echo's whole answer) is announced as one
/// publication on the thread's channel: the user's message, every event of the answer and the
/// new title, in the order the client got them, so that an echo turn costs one publish script call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turns_ready_events_reach_redis_as_one_publication() {
    let redis = RedisServer::start();
    let app = crate::common::redis::replicas_on(&redis.url(), 1, Spawn::default).remove(0);
    eventually("the replica is connected to Redis", || async { readiness(&app).await.0 == 200 }).await;
    let client = ::redis::Client::open(redis.url()).expect("a Redis URL");
    let mut pubsub = client.get_async_pubsub().await.expect("a subscriber connection");
    pubsub.psubscribe("ck:{t:*}").await.expect("subscribed to every thread's channel");
    let mut publications = pubsub.into_on_message();
    let on_thread = |events: &[Value]| -> Vec<String> {
        let announced =
            types(events).into_iter().filter(|kind| kind.starts_with("thread.item.") || *kind == "thread.updated");
        announced.map(String::from).collect()
    };

    let (tid, created) = app.create_thread("alice", "hello").await;
    let (channel, payload) = next_publication(&mut publications).await;
    assert_eq!(channel, format!("ck:{{t:{tid}}}"));
    assert_eq!(batch_types(&payload), on_thread(&created), "the first turn, titled, in one batch: {payload}");
    assert!(on_thread(&created).contains(&"thread.updated".to_string()), "{created:?}");

    let said = app.say("alice", &tid, "one two three").await;
    let (_, payload) = next_publication(&mut publications).await;
    assert_eq!(batch_types(&payload), on_thread(&said), "the next turn in one batch: {payload}");
    assert!(on_thread(&said).len() >= 4, "the user's message and the answer's events: {said:?}");
}

/// The channel and text of the next publication a subscriber gets, within 5 s.
async fn next_publication(
    publications: &mut (impl futures_util::Stream<Item = ::redis::Msg> + Unpin),
) -> (String, String) {
    use futures_util::StreamExt;
    let next = tokio::time::timeout(Duration::from_secs(5), publications.next()).await;
    let message = next.expect("a publication in time").expect("a message");
    (message.get_channel_name().to_string(), message.get_payload::<String>().expect("text"))
}

/// The event types of a batch publication, `B <first seq>` then ` <length>:<sent_at> <kind> <body>` each.
fn batch_types(payload: &str) -> Vec<String> {
    batch_bodies(payload).iter().map(|body| body["type"].as_str().unwrap_or("?").to_string()).collect()
}

/// The bodies of a batch publication, `B <first seq>` then ` <length>:<sent_at> <kind> <body>` each.
fn batch_bodies(payload: &str) -> Vec<Value> {
    let mut rest = payload.strip_prefix("B ").expect("a batch").split_once(' ').expect("messages").1;
    let mut bodies = Vec::new();
    while !rest.is_empty() {
        let (length, tail) = rest.split_once(':').expect("a length");
        let (message, after) = tail.split_at(length.parse().expect("a number"));
        bodies.push(serde_json::from_str(message.splitn(3, ' ').nth(2).expect("a body")).expect("JSON"));
        rest = after.strip_prefix(' ').unwrap_or(after);
    }
    bodies
}
