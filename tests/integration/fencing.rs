//! Fenced writes across real replica processes: a replica paused (SIGSTOP) past its thread lease
//! while another takes the thread and runs a turn is refused its next write when it resumes
//! (SIGCONT); its client gets a retryable `error` event, and the thread holds the second turn,
//! not an interleaving. The same with Redis stopped during the pause, when leases are granted
//! without Redis and only the store's fence keeps the replicas apart.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::fake_openai::{self, FakeOpenAi, Reply, MODEL};
use crate::common::postgres::TestDatabase;
use crate::common::process::GatewayProcess;
use crate::common::redis::RedisServer;
use crate::common::*;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::protocol::{ItemBody, Order};
use chatkit_gateway::store::{ListQuery, PostgresStore, Store};

/// What the user of a turn taken over reads.
const TAKEN_OVER: &str = "taken over by another server";

/// Two replica processes sharing a PostgreSQL database and a private Redis, answering through `fake`, with leases
/// of one second so that a pause outlives one.
fn replica(fake: &FakeOpenAi, database: &TestDatabase, redis: &RedisServer) -> GatewayProcess {
    GatewayProcess::start(&[
        ("DATABASE_URL", database.url.clone()),
        ("REDIS_URL", redis.url()),
        ("CHATKIT_LEASE_TTL_SECS", "1".into()),
        ("OPENAI_BASE_URL", fake.base_url()),
        ("OPENAI_API_KEY", "sk-fencing".into()),
        ("CHATKIT_MODEL", MODEL.into()),
        ("CHATKIT_TITLES", "false".into()),
    ])
}

/// Posts a streaming request to a replica as alice.
async fn post(replica: &GatewayProcess, op: &str, params: Value) -> reqwest::Response {
    replica.post_chatkit(op, params, &[]).await
}

/// Reads a response's stream until `until` shows in it, or to its end (bounded).
async fn read_until(response: &mut reqwest::Response, until: Option<&str>) -> String {
    let mut seen = String::new();
    loop {
        if until.is_some_and(|needle| seen.contains(needle)) {
            return seen;
        }
        match tokio::time::timeout(Duration::from_secs(20), response.chunk()).await {
            Ok(Ok(Some(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(_) => return seen,
            Err(_) => panic!("the stream stalled; so far: {seen}"),
        }
    }
}

/// The thread's items as stored, each as its kind and text.
async fn stored(database: &TestDatabase, thread_id: &str) -> Vec<(String, String)> {
    let store = PostgresStore::open(&database.url).await.unwrap();
    let page = store.list_items(&UserId("alice".into()), thread_id, &ListQuery::first(100, Order::Asc)).await;
    let items = page.unwrap().data.into_iter().map(|item| {
        let value = serde_json::to_value(&item).unwrap();
        let text = match &item.body {
            ItemBody::SdkHiddenContext { content } => content.clone(),
            _ => value["content"][0]["text"].as_str().unwrap_or_default().to_string(),
        };
        (item.kind().to_string(), text)
    });
    let items = items.collect();
    store.close().await;
    items
}

async fn check_a_paused_replica_is_fenced_out(stop_redis: bool) {
    let fake = FakeOpenAi::start();
    let database = TestDatabase::create().await;
    let mut redis = RedisServer::start();
    let (a, b) = (replica(&fake, &database, &redis), replica(&fake, &database, &redis));

    fake.push(Reply::stream(fake_openai::text_chunks(MODEL, &["Hello ", "there."])));
    let mut created = post(&a, "threads.create", json!({"input": text_input("hi")})).await;
    let events = parse_sse(&read_until(&mut created, None).await);
    let thread_id = events[0]["thread"]["id"].as_str().expect("a thread id").to_string();

    // A's slow turn streams its first words, then A is paused past its lease.
    let slow: Vec<String> = (0..12).map(|n| format!("a{n} ")).collect();
    let slow: Vec<&str> = slow.iter().map(String::as_str).collect();
    fake.push(Reply::stream(fake_openai::text_chunks(MODEL, &slow)).delay(Duration::from_millis(300)));
    let params = |text: &str| json!({"thread_id": thread_id, "input": text_input(text)});
    let mut first = post(&a, "threads.add_user_message", params("slow one")).await;
    read_until(&mut first, Some("text_delta")).await;
    a.signal("STOP");
    if stop_redis {
        redis.kill();
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // B takes the thread over and answers in full.
    fake.push(Reply::stream(fake_openai::text_chunks(MODEL, &["B's ", "answer."])));
    let mut second = post(&b, "threads.add_user_message", params("second")).await;
    let second = read_until(&mut second, None).await;
    assert!(second.contains("thread.item.done") && second.contains("B's answer."), "B answered: {second}");
    assert!(!second.contains("\"type\":\"error\""), "{second}");

    // A resumes: its next write is refused, and its client is told to try again.
    a.signal("CONT");
    let rest = read_until(&mut first, None).await;
    let events = parse_sse(&rest);
    let error = events.iter().find(|event| event["type"] == "error").unwrap_or_else(|| panic!("an error: {rest}"));
    assert!(error["message"].as_str().unwrap().contains(TAKEN_OVER), "{error}");
    assert_eq!(error["allow_retry"], true, "{error}");

    let kinds_and_texts = stored(&database, &thread_id).await;
    let expected = [
        ("user_message", "hi"),
        ("assistant_message", "Hello there."),
        ("user_message", "slow one"),
        ("user_message", "second"),
        ("assistant_message", "B's answer."),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect();
    assert_eq!(kinds_and_texts, expected, "B's turn whole, nothing of A's after the take-over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_is_refused_its_next_write() {
    check_a_paused_replica_is_fenced_out(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_store_fence_still_refuses_the_paused_replica() {
    check_a_paused_replica_is_fenced_out(true).await;
}

/// A replica keeps a thread's lease (and the fence claimed with it) for a moment after a turn, for
/// the thread's next message. Paused past that lease while another replica takes the thread over,
/// it must not run its next turn under the lease it kept: it takes the thread again, and the turn
/// completes after the other replica's, instead of being refused as taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_kept_between_turns_and_lost_in_a_pause_is_taken_again() {
    let fake = FakeOpenAi::start();
    let database = TestDatabase::create().await;
    let redis = RedisServer::start();
    let (a, b) = (replica(&fake, &database, &redis), replica(&fake, &database, &redis));

    fake.push(Reply::stream(fake_openai::text_chunks(MODEL, &["First."])));
    let mut created = post(&a, "threads.create", json!({"input": text_input("hi")})).await;
    let events = parse_sse(&read_until(&mut created, None).await);
    let thread_id = events[0]["thread"]["id"].as_str().expect("a thread id").to_string();
    let params = |text: &str| json!({"thread_id": thread_id, "input": text_input(text)});

    // A's turn ends and A is paused at once, holding the lease it keeps for the next message.
    a.signal("STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    fake.push(Reply::stream(fake_openai::text_chunks(MODEL, &["B's ", "answer."])));
    let mut second = post(&b, "threads.add_user_message", params("second")).await;
    let second = read_until(&mut second, None).await;
    assert!(second.contains("B's answer.") && !second.contains("\"type\":\"error\""), "{second}");

    a.signal("CONT");
    fake.push(Reply::stream(fake_openai::text_chunks(MODEL, &["A ", "again."])));
    let mut third = post(&a, "threads.add_user_message", params("third")).await;
    let third = read_until(&mut third, None).await;
    assert!(third.contains("A again.") && !third.contains("\"type\":\"error\""), "A took the thread again: {third}");

    let expected = [
        ("user_message", "hi"),
        ("assistant_message", "First."),
        ("user_message", "second"),
        ("assistant_message", "B's answer."),
        ("user_message", "third"),
        ("assistant_message", "A again."),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(k, t)| (k.to_string(), t.to_string())).collect();
    assert_eq!(stored(&database, &thread_id).await, expected);
}
