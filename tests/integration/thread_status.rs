//! Locked and closed threads refuse input with one error event and persist nothing.

use crate::common::*;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::protocol::ThreadStatus;
use serde_json::{json, Value};

async fn set_status(app: &TestApp, user: &str, thread_id: &str, status: ThreadStatus) {
    let user = UserId(user.into());
    let mut thread = app.store.load_thread(&user, thread_id).await.unwrap();
    thread.status = status;
    app.store.save_thread(&user, &thread).await.unwrap();
}

/// Asserts a turn stream that is exactly one refusal carrying `message`.
fn check_refused(events: &[Value], message: &str) {
    assert_eq!(types(events), ["error"], "{events:?}");
    assert_eq!(events[0], json!({"type": "error", "code": "custom", "message": message, "allow_retry": false}));
}

#[tokio::test]
async fn a_locked_thread_refuses_every_input_and_keeps_nothing() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "first").await;
    let tool = app.say("alice", &tid, "/tool").await;
    let user_item = tool[0]["item"]["id"].clone();
    let before = app.items("alice", &tid).await;
    let reason = "Support is reviewing this conversation.";
    set_status(&app, "alice", &tid, ThreadStatus::Locked { reason: Some(reason.into()) }).await;

    check_refused(&app.say("alice", &tid, "hello?").await, reason);
    let action = json!({"type": "counter.increment"});
    for (op, params) in [
        ("threads.retry_after_item", json!({"thread_id": tid, "item_id": user_item})),
        ("threads.add_client_tool_output", json!({"thread_id": tid, "result": {"time": "now"}})),
        ("threads.custom_action", json!({"thread_id": tid, "action": action})),
    ] {
        check_refused(&app.stream("alice", op, params).await, reason);
    }
    app.check_error("alice", "threads.sync_custom_action", json!({"thread_id": tid, "action": action}), 409, reason)
        .await;
    assert_eq!(app.items("alice", &tid).await, before, "nothing was persisted");
    let stats = app.engine_stats();
    assert_eq!(stats.0, 5, "five refusals counted as locked");

    // Re-opened, the thread takes input again.
    set_status(&app, "alice", &tid, ThreadStatus::Active).await;
    assert_eq!(assistant_text(&app.say("alice", &tid, "back").await), "echo: back");
}

#[tokio::test]
async fn a_closed_thread_refuses_with_its_reason_or_a_default() {
    let app = spawn_app();
    let (tid, _) = app.create_thread("alice", "first").await;
    set_status(&app, "alice", &tid, ThreadStatus::Closed { reason: Some("Resolved by support.".into()) }).await;
    check_refused(&app.say("alice", &tid, "more").await, "Resolved by support.");
    set_status(&app, "alice", &tid, ThreadStatus::Closed { reason: None }).await;
    check_refused(&app.say("alice", &tid, "more").await, "This thread is closed.");
    set_status(&app, "alice", &tid, ThreadStatus::Locked { reason: None }).await;
    check_refused(&app.say("alice", &tid, "more").await, "This thread is locked.");
    assert_eq!(app.items("alice", &tid).await.len(), 2, "only the first turn is stored");
    // Reads still work on a closed thread.
    let thread = app.call("alice", "threads.get_by_id", json!({"thread_id": tid})).await;
    assert_eq!(thread["status"], json!({"type": "locked"}));
}
