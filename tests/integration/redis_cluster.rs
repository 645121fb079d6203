//! Replicas on a real Redis Cluster (three masters, three replicas): turns and
//! viewers across replicas over sharded pub/sub, leases and fences on the
//! thread's shard, and a master killed under load.

use std::time::Duration;

use crate::common::redis_cluster::RedisCluster;
use crate::common::viewer::Frame;
use crate::common::*;
use serde_json::{json, Value};

fn answer_of(events: &[Value]) -> Value {
    events
        .iter()
        .find(|e| e["type"] == "thread.item.done" && e["item"]["type"] == "assistant_message")
        .unwrap_or_else(|| panic!("an answer: {events:?}"))["item"]
        .clone()
}

fn text_of(item: &Value) -> String {
    item["content"][0]["text"].as_str().unwrap_or_default().to_string()
}

fn done_with(frame: &Frame, item_id: &str) -> bool {
    frame.kind() == "thread.item.done" && frame.data["item"]["id"] == item_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_on_one_replica_reach_viewers_on_the_others_through_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let replicas = cluster.replicas(3, Spawn::default);
    let [a, b, c] = &replicas[..] else { unreachable!() };
    // Several threads, so that their channels fall on several shards.
    let mut threads = Vec::new();
    for i in 0..6 {
        let (tid, _) = a.create_thread("alice", &format!("hello {i}")).await;
        threads.push(tid);
    }
    let mut history = c.view_history("alice").await;
    for tid in &threads {
        let mut tabs = [b.view_thread("alice", tid).await, c.view_thread("alice", tid).await];
        let text = format!("about {tid}");
        let answer = answer_of(&a.say("alice", tid, &text).await);
        let answer_id = answer["id"].as_str().unwrap().to_string();
        assert_eq!(text_of(&answer), format!("echo: {text}"));
        for tab in &mut tabs {
            let frames = tab.until(|f| done_with(f, &answer_id)).await;
            assert!(frames.iter().all(|f| f.event.is_none()), "no resync: {frames:?}");
            assert_eq!(text_of(&frames.last().unwrap().data["item"]), format!("echo: {text}"));
        }
        // The thread's lease was taken on its shard, and its fence counted there.
        assert_eq!(cluster.cli(&["exists", &format!("ck:{{t:{tid}}}:fence")]), "1");
        // A rename on the third replica reaches the history viewer.
        b.call("alice", "threads.update", json!({"thread_id": tid, "title": format!("T {tid}")})).await;
        let renamed = history.until(|f| f.kind() == "thread.updated" && f.data["thread"]["id"] == json!(tid)).await;
        assert!(renamed.iter().all(|f| f.event.is_none()), "no resync: {renamed:?}");
    }

    // Two replicas sending to one thread at once: the lease runs them one at a time.
    let tid = &threads[0];
    let sends = (0..4).map(|i| {
        let app = if i % 2 == 0 { a } else { b };
        async move {
            let text = format!("concurrent {i}");
            (text.clone(), app.say("alice", tid, &text).await)
        }
    });
    for (text, events) in futures_util::future::join_all(sends).await {
        assert!(!events.iter().any(|e| e["type"] == "error"), "{events:?}");
        assert_eq!(text_of(&answer_of(&events)), format!("echo: {text}"));
    }
    let items = c.items("alice", tid).await;
    for pair in items.chunks(2) {
        assert_eq!(text_of(&pair[1]), format!("echo: {}", text_of(&pair[0])), "turns interleaved: {pair:?}");
    }
    assert_eq!(items.len(), 2 + 2 + 2 * 4, "every turn stored its message and answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_fanout_resumes_with_a_resync_and_no_lost_turn() {
    let mut cluster = RedisCluster::start();
    let replicas = cluster.replicas(2, Spawn::default);
    let [a, b] = &replicas[..] else { unreachable!() };
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut viewer = b.view_thread("alice", &tid).await;
    let first = answer_of(&a.say("alice", &tid, "before").await);
    viewer.until(|f| done_with(f, first["id"].as_str().unwrap())).await;

    // Kill the master of the thread's shard while turns keep coming.
    let dead = cluster.master_of(&format!("ck:{{t:{tid}}}:seq"));
    cluster.kill(dead);
    let mut sent = vec!["before".to_string()];
    for i in 0..5 {
        let text = format!("during {i}");
        let events = a.say("alice", &tid, &text).await;
        assert_eq!(text_of(&answer_of(&events)), format!("echo: {text}"), "the turn ran: {events:?}");
        sent.push(text);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cluster.await_failover(dead);
    eventually("both replicas report fan-out again", || async {
        let mut ready = true;
        for app in [a, b] {
            let body: Value = app.client.get(app.url("/readyz")).send().await.unwrap().json().await.unwrap();
            ready &= body["status"] == "ready";
        }
        ready
    })
    .await;

    // The viewer learned it missed messages, and the next turn reaches it.
    let mut resynced = false;
    let mut delivered = false;
    let mut last_id = String::new();
    for attempt in 0..10 {
        let text = format!("after {attempt}");
        let answer = answer_of(&a.say("alice", &tid, &text).await);
        sent.push(text);
        last_id = answer["id"].as_str().unwrap().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut reached = false;
        while let Ok(frame) = tokio::time::timeout_at(deadline, viewer.next()).await {
            resynced |= frame.kind() == "resync";
            if done_with(&frame, &last_id) {
                reached = true;
                break;
            }
        }
        if reached {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "a turn after the failover reached the viewer on the other replica");
    assert!(resynced, "the viewer was told to resync for what it missed");
    let items = b.items("alice", &tid).await;
    let asked: Vec<String> = items.iter().filter(|i| i["type"] == "user_message").map(text_of).collect();
    assert_eq!(asked[1..], sent[..], "every turn was kept, in order");
    let last = items.last().unwrap();
    assert_eq!(last["id"], json!(last_id), "the delivered answer is the last one stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_whose_slot_moves_to_another_master_keeps_its_viewers_and_its_turns() {
    let cluster = RedisCluster::start();
    let replicas = cluster.replicas(2, Spawn::default);
    let [a, b] = &replicas[..] else { unreachable!() };
    let (tid, _) = a.create_thread("alice", "hello").await;
    let mut viewer = b.view_thread("alice", &tid).await;
    let first = answer_of(&a.say("alice", &tid, "before").await);
    viewer.until(|f| done_with(f, first["id"].as_str().unwrap())).await;
    let fence_key = format!("ck:{{t:{tid}}}:fence");
    let fence_before: u64 = cluster.cli(&["get", &fence_key]).parse().expect("a fence on the old shard");

    // Reshard the thread's slot: its channel, lease, fence and history all move, since they
    // share the thread's hash tag.
    let (from, to) = cluster.move_slot_of(&format!("ck:{{t:{tid}}}"));
    assert_ne!(from, to);

    // Turns keep running on the new shard, and their fences keep counting up from the moved one.
    // The first runs on the other replica, which must take the lease (a replica keeps it for a
    // thread's next message, without a new fence).
    let mut sent = vec!["before".to_string()];
    let mut delivered = false;
    for attempt in 0..10 {
        let text = format!("after the move {attempt}");
        let sender = if attempt == 0 { b } else { a };
        let events = sender.say("alice", &tid, &text).await;
        let answer = answer_of(&events);
        assert_eq!(text_of(&answer), format!("echo: {text}"), "the turn ran: {events:?}");
        sent.push(text);
        let answer_id = answer["id"].as_str().unwrap().to_string();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(frame) = tokio::time::timeout_at(deadline, viewer.next()).await {
            if done_with(&frame, &answer_id) {
                delivered = true;
                break;
            }
        }
        if delivered {
            break;
        }
    }
    assert!(delivered, "a turn after the slot moved reached the viewer on the other replica");
    let fence_after: u64 = cluster.cli(&["get", &fence_key]).parse().expect("a fence on the new shard");
    assert!(
        fence_after > fence_before,
        "the fence moved with the slot and kept counting: {fence_before} then {fence_after}"
    );
    let items = b.items("alice", &tid).await;
    let asked: Vec<String> = items.iter().filter(|i| i["type"] == "user_message").map(text_of).collect();
    assert_eq!(asked[1..], sent[..], "every turn was kept, in order");
}
