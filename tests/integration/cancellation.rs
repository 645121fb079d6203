//! A client that leaves mid-turn: the partial answer and a hidden cancellation note are kept, the note never shown.

use std::sync::Arc;

use crate::common::scripted::{ScriptedResponder, Step};
use crate::common::*;
use chatkit_gateway::ids::UserId;
use chatkit_gateway::protocol::{ItemBody, Order, ThreadItem};
use chatkit_gateway::store::{ListQuery, MemoryStore, Store};
use serde_json::{json, Value};

/// Everything stored for a thread, hidden items included, oldest first.
async fn stored_items(store: &MemoryStore, thread_id: &str) -> Vec<ThreadItem> {
    let query = ListQuery::first(100, Order::Asc);
    store.list_items(&UserId("alice".into()), thread_id, &query).await.expect("thread is stored").data
}

fn stored_text(item: &ThreadItem) -> Option<String> {
    match &item.body {
        ItemBody::AssistantMessage { content } => Some(content.iter().map(|part| part.text.as_str()).collect()),
        _ => None,
    }
}

fn client_view(items: &[Value]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|item| {
            (item["type"].as_str().unwrap_or("?").into(), item["content"][0]["text"].as_str().unwrap_or("").into())
        })
        .collect()
}

#[tokio::test]
async fn a_cancelled_turn_keeps_the_partial_answer_and_a_hidden_note() {
    let store = Arc::new(MemoryStore::new());
    let responder =
        ScriptedResponder::new(vec![Step::Added, Step::Delta("partial "), Step::Delta("answer"), Step::Hang]);
    let app = spawn(Spawn { responder: Arc::new(responder), store: Some(store.clone()), ..Spawn::default() });

    let body = request("threads.create", json!({"input": text_input("tell me")})).to_string();
    let mut response = app.post_raw(Some("alice"), body).await;
    assert_eq!(response.status(), 200);
    // Read frame by frame until the second delta is complete, as a browser would render it.
    let mut received = Vec::new();
    let events = loop {
        let chunk = response.chunk().await.expect("stream readable").expect("stream ended before the second delta");
        received.extend_from_slice(&chunk);
        let text = String::from_utf8_lossy(&received);
        if let Some(end) = text.rfind("\n\n") {
            let events = parse_sse(&text[..end + 2]);
            if events.iter().any(|e| e["update"]["delta"] == "answer") {
                break events;
            }
        }
    };
    let thread_id = events[0]["thread"]["id"].as_str().expect("thread.created first").to_string();
    // The client cancels by going away.
    drop(response);

    eventually("the cancelled turn is stored", || async {
        stored_items(&store, &thread_id).await.iter().any(|item| matches!(item.body, ItemBody::SdkHiddenContext { .. }))
    })
    .await;
    let stored = stored_items(&store, &thread_id).await;
    let kinds: Vec<&str> = stored.iter().map(ThreadItem::kind).collect();
    assert_eq!(kinds, ["user_message", "assistant_message", "sdk_hidden_context"]);
    assert_eq!(stored_text(&stored[1]).as_deref(), Some("partial answer"));
    let ItemBody::SdkHiddenContext { content } = &stored[2].body else { unreachable!("checked by kind") };
    // The reference's wording, so that a model reading the thread stops continuing the cancelled answer.
    assert_eq!(content, "The user cancelled the stream. Stop responding to the prior request.");

    // Clients see the partial answer but never the note.
    let expected =
        [("user_message".to_string(), "tell me".to_string()), ("assistant_message".into(), "partial answer".into())];
    assert_eq!(client_view(&app.items("alice", &thread_id).await), expected);
    let thread = app.call("alice", "threads.get_by_id", json!({"thread_id": thread_id})).await;
    assert_eq!(client_view(thread["items"]["data"].as_array().expect("items")), expected);
}
