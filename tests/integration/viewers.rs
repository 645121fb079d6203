//! Viewer streams on one replica (in-process fan-out): what a second tab sees.

use std::time::Duration;

use crate::common::gated::*;
use crate::common::viewer::{self, rebuilt_text, Frame};
use crate::common::*;
use serde_json::{json, Value};

fn thread_events(app: &TestApp, thread_id: &str) -> String {
    app.url(&format!("/chatkit/threads/{thread_id}/events"))
}

async fn rename(app: &TestApp, user: &str, thread_id: &str, title: &str) {
    app.call(user, "threads.update", json!({"thread_id": thread_id, "title": title})).await;
}

fn ids(frames: &[Frame]) -> Vec<u64> {
    frames.iter().map(|frame| frame.id.expect("every message has an id")).collect()
}

#[tokio::test]
async fn a_rename_reaches_the_thread_and_history_streams_with_rising_ids() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "hello").await;
    let mut thread = app.view_thread("alice", &tid).await;
    let mut history = app.view_history("alice").await;
    rename(&app, "alice", &tid, "First").await;
    rename(&app, "alice", &tid, "Second").await;
    for viewer in [&mut thread, &mut history] {
        let frames = [viewer.next().await, viewer.next().await];
        assert_eq!(frames.iter().map(Frame::kind).collect::<Vec<_>>(), ["thread.updated", "thread.updated"]);
        assert_eq!(frames[0].data["thread"]["title"], "First");
        assert_eq!(frames[1].data["thread"]["title"], "Second");
        assert_eq!(frames[1].data["thread"]["id"], json!(tid));
        let ids = ids(&frames);
        assert_eq!(ids[1], ids[0] + 1, "ids follow each other: {ids:?}");
    }
}

/// A widget changed by a synchronous action (the echo counter's Increment) is stored and
/// replaced in every other tab: the thread's viewers get `thread.item.replaced` with the new state.
#[tokio::test]
async fn a_widget_a_sync_action_changes_is_replaced_in_other_tabs() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "hello").await;
    let events = app.say("alice", &tid, "/widget").await;
    let widget = find_item(&events, "widget").clone();
    let increment = &widget["widget"]["children"][1]["onClickAction"];
    assert_eq!(increment["streaming"], json!(false), "the page increments through the sync path");
    let mut tab = app.view_thread("alice", &tid).await;
    let action = json!({"type": "counter.increment", "payload": {}});
    let answer = app
        .call(
            "alice",
            "threads.sync_custom_action",
            json!({"thread_id": tid, "item_id": widget["id"], "action": action}),
        )
        .await;
    assert_eq!(answer["updated_item"]["widget"]["children"][0]["value"], "count: 1");
    let frame = tab.next().await;
    assert_eq!(frame.kind(), "thread.item.replaced");
    assert_eq!(frame.data["item"], answer["updated_item"], "the other tab gets the answer's item");
    let stored = app.items("alice", &tid).await;
    assert!(stored
        .iter()
        .any(|item| item["id"] == widget["id"] && item["widget"]["children"][0]["value"] == "count: 1"));
}

/// What other tabs learn that the client's own stream does not carry (as in the reference): a
/// retry's removal of the answer after the retried message, and a client tool call completed.
#[tokio::test]
async fn other_tabs_see_a_retry_drop_the_old_answer_and_a_tool_call_complete() {
    let app = spawn_app();
    let (tid, created) = app.create_thread("alice", "hello").await;
    let user_message = find_item(&created, "user_message")["id"].clone();
    let old_answer = find_item(&created, "assistant_message")["id"].clone();
    let mut tab = app.view_thread("alice", &tid).await;
    let retried =
        app.stream("alice", "threads.retry_after_item", json!({"thread_id": tid, "item_id": user_message})).await;
    assert!(!types(&retried).contains(&"thread.item.removed"), "the client's own stream is as the reference's");
    let frame = tab.next().await;
    assert_eq!((frame.kind(), &frame.data["item_id"]), ("thread.item.removed", &old_answer));

    app.say("alice", &tid, "/tool").await;
    let frames = tab.until(|f| f.kind() == "thread.item.done" && f.data["item"]["type"] == "client_tool_call").await;
    let call_id = frames.last().unwrap().data["item"]["id"].clone();
    app.stream("alice", "threads.add_client_tool_output", json!({"thread_id": tid, "result": {"time": "12:00"}})).await;
    let frames = tab.until(|f| f.kind() == "thread.item.replaced").await;
    let completed = &frames.last().unwrap().data["item"];
    assert_eq!((&completed["id"], &completed["status"]), (&call_id, &json!("completed")));
    assert_eq!(completed["output"], json!({"time": "12:00"}));
}

#[tokio::test]
async fn another_tab_sees_the_whole_turn_as_it_streams() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "hello").await;
    let mut tab = app.view_thread("alice", &tid).await;
    let events = app.say("alice", &tid, "how are you").await;
    let answer = assistant_text(&events);
    let frames = tab.until(|f| f.kind() == "thread.item.done" && f.data["item"]["type"] == "assistant_message").await;
    let kinds: Vec<&str> = frames.iter().map(Frame::kind).collect();
    assert_eq!(kinds[0], "thread.item.done", "the user's message first: {kinds:?}");
    assert_eq!(frames[0].data["item"]["type"], "user_message");
    assert!(kinds.contains(&"thread.item.added") && kinds.contains(&"thread.item.updated"), "{kinds:?}");
    assert!(!kinds.contains(&"stream_options"), "turn-private events stay private: {kinds:?}");
    let item_id = frames.last().unwrap().data["item"]["id"].as_str().unwrap().to_string();
    assert_eq!(rebuilt_text(&frames, &item_id), answer);
    let stored = app.items("alice", &tid).await;
    assert_eq!(stored.last().unwrap()["id"], json!(item_id), "the tab saw the stored item");
}

#[tokio::test]
async fn a_tab_opened_mid_turn_starts_from_the_answer_so_far() {
    let (app, gate) = spawn_gated(|_| {});
    let (tid, _) = app.create_thread("alice", "hello").await;
    let running = start_slow(&app, &tid).await;
    let mut late = app.view_thread("alice", &tid).await;
    let first = late.next().await;
    assert_eq!(first.kind(), "thread.item.added", "{first:?}");
    let item_id = first.data["item"]["id"].as_str().unwrap().to_string();
    // Nobody viewed the thread when the answer started, so the tab gets the item as it was last snapshotted and the
    // updates since, which come to the content so far.
    let mut frames = vec![first];
    while rebuilt_text(&frames, &item_id) != "partial " {
        let next = late.next_within(Duration::from_millis(300)).await.expect("the catch-up reaches the content so far");
        assert_eq!(next.data["item_id"], json!(item_id), "only the answer so far: {next:?}");
        frames.push(next);
    }
    gate.add_permits(1);
    rest_of(running).await;
    frames.extend(late.until(|f| f.kind() == "thread.item.done").await);
    assert_eq!(rebuilt_text(&frames, &item_id), "partial rest");
    assert_eq!(frames.last().unwrap().data["item"]["content"][0]["text"], "partial rest");
    let ids = ids(&frames);
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "in sequence order: {ids:?}");
}

#[tokio::test]
async fn a_reconnecting_viewer_gets_what_it_missed_or_a_resync() {
    let app = spawn(Spawn { configure: Box::new(|c| c.fanout.fanout_history = 4), ..Default::default() });
    let (tid, _) = app.create_thread("alice", "hello").await;
    let url = thread_events(&app, &tid);
    let mut first = viewer::open(&url, "alice", None).await;
    rename(&app, "alice", &tid, "seen").await;
    let seen = first.next().await.id.unwrap();
    drop(first);

    rename(&app, "alice", &tid, "missed 1").await;
    rename(&app, "alice", &tid, "missed 2").await;
    let mut back = viewer::open(&url, "alice", Some(seen)).await;
    let missed = [back.next().await, back.next().await];
    assert_eq!(missed[0].data["thread"]["title"], "missed 1");
    assert_eq!(missed[1].data["thread"]["title"], "missed 2");
    assert_eq!(ids(&missed), [seen + 1, seen + 2]);
    rename(&app, "alice", &tid, "live").await;
    let live = back.next().await;
    assert_eq!((live.id, live.data["thread"]["title"].clone()), (Some(seen + 3), json!("live")), "then live");
    drop(back);

    // Five more changes overflow a history of four: the gap cannot be filled.
    for n in 0..5 {
        rename(&app, "alice", &tid, &format!("lost {n}")).await;
    }
    let mut late = viewer::open(&url, "alice", Some(seen + 3)).await;
    let resync = late.next().await;
    assert_eq!((resync.event.as_deref(), resync.data["reason"].clone()), (Some("resync"), json!("gap")));
    assert_eq!(resync.id, Some(seen + 8), "resync carries the newest id, to resume from after refetching");
    let mut again = viewer::open(&url, "alice", Some(seen + 8)).await;
    assert!(again.next_within(Duration::from_millis(300)).await.is_none(), "nothing missed since the resync");
}

#[tokio::test]
async fn deleting_a_thread_ends_its_stream_and_tells_the_history() {
    let app = spawn_app();
    let mut history = app.view_history("alice").await;
    let (tid, _) = app.create_thread("alice", "hello").await;
    let created = history.next().await;
    assert_eq!((created.kind(), created.data["thread"]["id"].clone()), ("thread.created", json!(tid)));
    let mut thread = app.view_thread("alice", &tid).await;
    app.call("alice", "threads.delete", json!({"thread_id": tid})).await;
    for viewer in [&mut thread, &mut history] {
        let deleted = viewer.until(|f| f.event.as_deref() == Some("thread.deleted")).await;
        assert_eq!(deleted.last().unwrap().data, json!({"thread_id": tid}));
    }
    assert!(thread.rest().await.is_empty(), "the thread stream ends after the deletion");
    assert!(history.next_within(Duration::from_millis(200)).await.is_none() && !history.ended, "history stays open");
}

#[tokio::test]
async fn idle_streams_get_heartbeat_comments() {
    let app = spawn(Spawn { configure: Box::new(|c| c.fanout.heartbeat_secs = 1), ..Default::default() });
    let mut history = app.view_history("alice").await;
    assert!(history.next_within(Duration::from_millis(2500)).await.is_none());
    assert!(history.heartbeats >= 2, "{} heartbeats in 2.5 s at one per second", history.heartbeats);
}

#[tokio::test]
async fn viewers_see_only_their_own_threads_and_bad_ids_are_named() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "hello").await;
    let url = thread_events(&app, &tid);
    let (status, _) = viewer::try_open(&url, "mallory", None).await;
    assert_eq!(status, 404, "another user's thread does not exist for them");
    let unknown = app.client.get(app.url("/chatkit/threads/thr_nope/events")).header("x-user-id", "alice");
    let error = error_of(unknown.send().await.unwrap(), 404).await;
    assert!(error["message"].as_str().unwrap().contains("thr_nope"), "{error}");
    let anonymous = app.client.get(&url).send().await.unwrap();
    error_of(anonymous, 401).await;
    let bad = app.client.get(&url).header("x-user-id", "alice").header("last-event-id", "yesterday");
    let error = error_of(bad.send().await.unwrap(), 400).await;
    assert!(error["message"].as_str().unwrap().contains("Last-Event-ID"), "{error}");

    // Another user's changes never reach alice's history.
    let mut history = app.view_history("alice").await;
    app.create_thread("bob", "hi").await;
    assert!(history.next_within(Duration::from_millis(300)).await.is_none());
}

#[tokio::test]
async fn a_viewer_that_falls_behind_gets_resync_and_is_closed() {
    let app = spawn(Spawn { configure: Box::new(|c| c.fanout.viewer_buffer = 4), ..Default::default() });
    let (tid, _) = app.create_thread("alice", "hello").await;
    let mut slow = app.view_thread("alice", &tid).await;
    let mut fast = app.view_thread("alice", &tid).await;
    // Big titles fill the socket buffers, so the slow viewer's stream stops
    // being read and its four-message buffer overflows.
    let big = "x".repeat(256 * 1024);
    let mut fast_seen = 0;
    for n in 0..64 {
        rename(&app, "alice", &tid, &format!("{n} {big}")).await;
        // The fast viewer keeps up and sees every change.
        let frame = fast.next().await;
        assert!(frame.data["thread"]["title"].as_str().unwrap().starts_with(&format!("{n} ")));
        fast_seen += 1;
    }
    assert_eq!(fast_seen, 64);
    let frames = slow.rest().await;
    let last = frames.last().expect("some frames");
    assert_eq!((last.event.as_deref(), last.data["reason"].clone()), (Some("resync"), json!("lagged")));
    assert!(frames.len() < 64, "the slow viewer did not get everything: {}", frames.len());
    let titles: Vec<&Value> = frames.iter().filter(|f| f.event.is_none()).map(|f| &f.data["thread"]["title"]).collect();
    for (n, title) in titles.iter().enumerate() {
        assert!(title.as_str().unwrap().starts_with(&format!("{n} ")), "what it got came in order");
    }
}
