//! A responder that pauses mid-turn until the test lets it go, and the admin
//! API calls the tests around it make.

use std::sync::Arc;

use chatkit_gateway::ids::{new_id, IdKind};
use chatkit_gateway::protocol::{AssistantMessageContent, ItemBody, ItemUpdate, ThreadItem, ThreadStreamEvent};
use chatkit_gateway::responder::{EventStream, RespondInput, Responder, TurnContext};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::{request, spawn, text_input, Spawn, TestApp};

/// Streams `partial ` at once; the rest only once the test adds a permit.
/// Messages other than `slow` are echoed at once.
pub struct Gated(pub Arc<Semaphore>);

#[async_trait::async_trait]
impl Responder for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        let gate = self.0.clone();
        let text = match &input.item().body {
            ItemBody::UserMessage(message) => message.plain_text(),
            _ => String::new(),
        };
        Box::pin(async_stream::stream! {
            let id = new_id(IdKind::Message);
            let empty = ThreadItem::new(id.clone(), turn.thread.id(), ItemBody::AssistantMessage { content: vec![] });
            yield Ok(ThreadStreamEvent::ItemAdded { item: empty.clone() });
            let delta = |delta: &str| ThreadStreamEvent::ItemUpdated {
                item_id: id.clone(),
                update: ItemUpdate::TextDelta { content_index: 0, delta: delta.into() },
            };
            if text == "lock me" {
                // A responder may change the status mid-turn, as the reference allows.
                turn.thread.set_status(chatkit_gateway::protocol::ThreadStatus::Locked { reason: Some("Locked by the assistant".into()) });
            }
            let full = if text == "slow" {
                yield Ok(delta("partial "));
                let _permit = gate.acquire().await;
                yield Ok(delta("rest"));
                "partial rest".to_string()
            } else {
                yield Ok(delta(&format!("echo: {text}")));
                format!("echo: {text}")
            };
            let mut done = empty;
            done.body = ItemBody::AssistantMessage { content: vec![AssistantMessageContent::text(full)] };
            yield Ok(ThreadStreamEvent::ItemDone { item: done });
        })
    }
}

pub fn spawn_gated(
    configure: impl FnOnce(&mut chatkit_gateway::config::Config) + Send + 'static,
) -> (TestApp, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let app =
        spawn(Spawn { responder: Arc::new(Gated(gate.clone())), configure: Box::new(configure), ..Default::default() });
    (app, gate)
}

impl TestApp {
    pub async fn admin(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self.client.post(self.url(path)).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("admin answers JSON"))
    }

    pub async fn set_status(&self, thread_id: &str, body: Value) -> Value {
        let (status, answer) = self.admin(&format!("/v1/chatkit/threads/{thread_id}/status"), body, None).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }
}

/// Starts `slow` on a thread and reads its stream until the first delta; the
/// returned response still holds the rest of the stream.
pub async fn start_slow(app: &TestApp, thread_id: &str) -> reqwest::Response {
    let body = request("threads.add_user_message", json!({"thread_id": thread_id, "input": text_input("slow")}));
    let mut response = app.post_raw(Some("alice"), body.to_string()).await;
    let mut seen = String::new();
    while !seen.contains("partial ") {
        let chunk = response.chunk().await.expect("stream readable").expect("stream open until the delta");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    response
}

pub async fn rest_of(mut response: reqwest::Response) -> String {
    let mut rest = String::new();
    while let Some(chunk) = response.chunk().await.expect("stream readable") {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    rest
}
