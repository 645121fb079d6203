//! What the engine makes of a responder that fails, panics or changes the thread mid-turn.

use std::sync::Arc;

use crate::common::scripted::{ScriptedResponder, Step};
use crate::common::*;
use serde_json::{json, Value};

fn scripted_app(steps: Vec<Step>) -> TestApp {
    spawn(Spawn { responder: Arc::new(ScriptedResponder::new(steps)), ..Spawn::default() })
}

/// Starts a thread and checks that its turn streamed a partial delta, then ended with `error`.
async fn check_failed_turn(app: &TestApp, error: Value) -> String {
    let (thread_id, events) = app.create_thread("alice", "go").await;
    let kinds = types(&events);
    assert_eq!(kinds[2..], ["stream_options", "thread.item.added", "thread.item.updated", "error"], "{events:?}");
    assert_eq!(events.last(), Some(&error));
    thread_id
}

/// Checks that the text streamed before a failure is stored and shown.
async fn check_partial_kept(app: &TestApp, thread_id: &str, text: &str) {
    let items = app.items("alice", thread_id).await;
    assert_eq!(items.len(), 2, "{items:?}");
    assert_eq!((&items[1]["type"], &items[1]["content"][0]["text"]), (&json!("assistant_message"), &json!(text)));
}

#[tokio::test]
async fn a_panicking_responder_ends_the_stream_with_a_retryable_error() {
    let app = scripted_app(vec![Step::Added, Step::Delta("partial "), Step::Panic]);
    let error = json!({"type": "error", "code": "stream.error", "allow_retry": true});
    let thread_id = check_failed_turn(&app, error.clone()).await;
    check_partial_kept(&app, &thread_id, "partial ").await;
    // The panic took down neither the worker nor the server: the next turn runs the same way.
    let again = app.say("alice", &thread_id, "again").await;
    assert_eq!(again.last(), Some(&error));
    assert_eq!(app.call("alice", "threads.list", json!({})).await["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_custom_responder_error_reaches_the_client_with_its_message() {
    let fail = Step::Fail { message: "The model is over quota.", allow_retry: false };
    let app = scripted_app(vec![Step::Added, Step::Delta("half an answer"), fail]);
    let error = json!({"type": "error", "code": "custom", "message": "The model is over quota.", "allow_retry": false});
    let thread_id = check_failed_turn(&app, error).await;
    check_partial_kept(&app, &thread_id, "half an answer").await;
}

#[tokio::test]
async fn a_title_set_mid_turn_is_announced_after_the_next_event_and_stored() {
    let steps = vec![Step::Added, Step::SetTitle("Named by the model"), Step::Delta("hello"), Step::Done];
    let app = scripted_app(steps);
    let (thread_id, events) = app.create_thread("alice", "hi").await;
    // The change is noticed after the event the responder produced next (the delta), not at the end.
    let expected = [
        "thread.created",
        "thread.item.done",
        "stream_options",
        "thread.item.added",
        "thread.item.updated",
        "thread.updated",
        "thread.item.done",
    ];
    assert_eq!(types(&events), expected);
    let updated = &events[5]["thread"];
    assert_eq!((&updated["id"], &updated["title"]), (&json!(thread_id), &json!("Named by the model")));
    assert_eq!(updated["items"], json!({"data": [], "has_more": false}));
    let thread = app.call("alice", "threads.get_by_id", json!({"thread_id": thread_id})).await;
    assert_eq!(thread["title"], "Named by the model");
    assert_eq!(assistant_text(&events), "hello");
}
