//! The built-in `echo` responder: no network, every item type, for demos and tests.

use async_stream::stream;
use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::showcase::showcase;
use super::{AudioInput, EventStream, RespondInput, Responder, ResponderError, TurnContext};
use crate::ids::UserId;
use crate::ids::{new_id, IdKind};
use crate::protocol::{
    Action, AssistantMessageContent, ClientToolCall, ItemBody, ItemUpdate, StructuredInput, StructuredInputOption,
    StructuredInputRequest, StructuredInputStatus, SyncCustomActionResponse, ThreadItem, ThreadStreamEvent,
    ToolCallStatus, TranscriptionResult,
};

/// How many characters of the first message become the thread's title.
const TITLE_CHARS: usize = 40;

/// The text of the counter widget's `Text` component, by count.
fn counter_text(count: i64) -> String {
    format!("count: {count}")
}

/// Answers every message with `echo: <text>` and a few commands with other item
/// types: `/widget` (a counter card), `/gallery` (a widget per component
/// family, from `gallery.json`), `/tool` (a pending client tool call),
/// `/ask` (a pending structured input), and the turn content of `showcase.rs`
/// (`/markdown`, `/cite`, `/workflow`, `/image`).
#[derive(Clone, Debug, Default)]
pub struct EchoResponder;

impl EchoResponder {
    pub fn new() -> Self {
        EchoResponder
    }
}

#[async_trait]
impl Responder for EchoResponder {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        let thread_id = turn.thread.id();
        Box::pin(stream! {
            match &input {
                RespondInput::UserMessage(item) | RespondInput::Retry(item) => {
                    let text = match &item.body {
                        ItemBody::UserMessage(message) => message.plain_text(),
                        _ => String::new(),
                    };
                    match text.trim() {
                        "/widget" => yield Ok(done(widget_item(&thread_id, 0))),
                        "/gallery" => {
                            for item in gallery_items(&thread_id) {
                                yield Ok(done(item));
                            }
                        }
                        "/tool" => yield Ok(done(tool_call_item(&thread_id))),
                        "/ask" => yield Ok(done(structured_input_item(&thread_id))),
                        command => {
                            let shown = showcase(command, &thread_id);
                            let events = shown.unwrap_or_else(|| assistant_message(&thread_id, &format!("echo: {text}")));
                            for event in events {
                                yield Ok(event);
                            }
                        }
                    }
                    // The title is set after the last item, so `thread.updated` follows it.
                    let title: String = text.trim().chars().take(TITLE_CHARS).collect();
                    // A session may turn automatic titling off.
                    let titling = turn
                        .session
                        .as_ref()
                        .is_none_or(|s| s.settings.chatkit_configuration.automatic_thread_titling.enabled);
                    if titling && turn.thread.title().is_none() && !title.is_empty() {
                        turn.thread.set_title(title);
                    }
                }
                RespondInput::ClientToolOutput(item) => {
                    let output = match &item.body {
                        ItemBody::ClientToolCall(call) => call.output.clone().unwrap_or(Value::Null),
                        _ => Value::Null,
                    };
                    for event in assistant_message(&thread_id, &format!("tool output: {}", sorted_json(&output))) {
                        yield Ok(event);
                    }
                }
                RespondInput::StructuredInput(item) => {
                    let text = match &item.body {
                        ItemBody::StructuredInput(request) => describe_answers(request),
                        _ => String::new(),
                    };
                    for event in assistant_message(&thread_id, &format!("answers: {text}")) {
                        yield Ok(event);
                    }
                }
            }
        })
    }

    fn action(&self, turn: TurnContext, action: Action, _sender: Option<ThreadItem>) -> EventStream {
        let text = format!("action: {} {}", action.kind, sorted_json(&action.payload));
        let events = assistant_message(&turn.thread.id(), &text);
        Box::pin(futures_util::stream::iter(events.into_iter().map(Ok)))
    }

    async fn sync_action(
        &self,
        turn: TurnContext,
        action: Action,
        sender: Option<ThreadItem>,
    ) -> Result<SyncCustomActionResponse, ResponderError> {
        if action.kind != "counter.increment" {
            return Err(ResponderError::BadRequest(format!(
                "the echo responder handles only the `counter.increment` action, not `{}`",
                action.kind
            )));
        }
        let sender = sender.ok_or_else(|| {
            ResponderError::BadRequest("`counter.increment` needs `item_id` naming the counter widget".into())
        })?;
        let count = counter_value(&sender)
            .ok_or_else(|| ResponderError::BadRequest(format!("item `{}` is not an echo counter widget", sender.id)))?;
        let mut updated = widget_item(&sender.thread_id, count + 1);
        updated.id = sender.id.clone();
        updated.created_at = sender.created_at;
        turn.writes.save_item(&turn.user, &updated).await.map_err(|e| ResponderError::Internal(e.to_string()))?;
        Ok(SyncCustomActionResponse { updated_item: Some(updated) })
    }

    async fn transcribe(&self, _user: &UserId, audio: AudioInput) -> Result<TranscriptionResult, ResponderError> {
        Ok(TranscriptionResult { text: format!("transcribed {} bytes of {}", audio.data.len(), audio.media_type()) })
    }
}

fn done(item: ThreadItem) -> ThreadStreamEvent {
    ThreadStreamEvent::ItemDone { item }
}

/// The events of one streamed assistant message: added, part added, at least
/// three deltas, part done, item done — the order a model responder produces.
pub fn assistant_message(thread_id: &str, text: &str) -> Vec<ThreadStreamEvent> {
    let item_id = new_id(IdKind::Message);
    let empty = ThreadItem::new(item_id.clone(), thread_id.to_string(), ItemBody::AssistantMessage { content: vec![] });
    let mut events = vec![
        ThreadStreamEvent::ItemAdded { item: empty.clone() },
        ThreadStreamEvent::ItemUpdated {
            item_id: item_id.clone(),
            update: ItemUpdate::ContentPartAdded { content_index: 0, content: AssistantMessageContent::text("") },
        },
    ];
    for delta in chunks(text, 3) {
        events.push(ThreadStreamEvent::ItemUpdated {
            item_id: item_id.clone(),
            update: ItemUpdate::TextDelta { content_index: 0, delta },
        });
    }
    let content = AssistantMessageContent::text(text);
    events.push(ThreadStreamEvent::ItemUpdated {
        item_id: item_id.clone(),
        update: ItemUpdate::ContentPartDone { content_index: 0, content: content.clone() },
    });
    let mut finished = empty;
    finished.body = ItemBody::AssistantMessage { content: vec![content] };
    events.push(ThreadStreamEvent::ItemDone { item: finished });
    events
}

/// Splits text into at least `min` pieces (fewer only when it has fewer
/// characters), about 16 characters each, never inside a character.
fn chunks(text: &str, min: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let count = (chars.len() / 16).clamp(min, 64).min(chars.len().max(1));
    let size = chars.len().div_ceil(count).max(1);
    let mut pieces: Vec<String> = chars.chunks(size).map(|piece| piece.iter().collect()).collect();
    while pieces.len() < min {
        // Only reached for texts shorter than `min` characters.
        pieces.push(String::new());
    }
    pieces
}

fn widget_item(thread_id: &str, count: i64) -> ThreadItem {
    // The defaults of ActionConfig are written out because the reference
    // re-serializes widgets with them.
    let widget = json!({
        "type": "Card",
        "children": [
            {"type": "Text", "id": "counter", "value": counter_text(count)},
            // Not streamed: the page increments through `threads.sync_custom_action`, whose
            // answer replaces the widget in place (and is announced to the thread's other tabs).
            {"type": "Button", "label": "Increment", "onClickAction": {
                "type": "counter.increment", "handler": "server", "loadingBehavior": "auto", "streaming": false
            }}
        ]
    });
    let body = ItemBody::Widget { widget, copy_text: Some(counter_text(count)) };
    ThreadItem::new(new_id(IdKind::Message), thread_id.to_string(), body)
}

/// The widget gallery: one widget root per component family of openai-chatkit's
/// `widgets.py`, with a title each. `tests/conformance/check_widget_gallery.py`
/// checks them against the reference's types; the chat page's browser tests
/// render them (`tests/browser/widgets-harness.mjs` also renders its
/// `degraded` entries, which only the renderer sees).
const GALLERY: &str = include_str!("gallery.json");

/// The gallery as widget items, in order; `copy_text` is each entry's title.
fn gallery_items(thread_id: &str) -> Vec<ThreadItem> {
    let gallery: Value = serde_json::from_str(GALLERY).unwrap_or_default();
    let entries = gallery["gallery"].as_array().cloned().unwrap_or_default();
    entries
        .into_iter()
        .map(|entry| {
            let copy_text = entry["title"].as_str().map(str::to_string);
            let body = ItemBody::Widget { widget: entry["widget"].clone(), copy_text };
            ThreadItem::new(new_id(IdKind::Message), thread_id.to_string(), body)
        })
        .collect()
}

/// Reads the count back from a counter widget item.
fn counter_value(item: &ThreadItem) -> Option<i64> {
    let ItemBody::Widget { widget, .. } = &item.body else { return None };
    widget["children"].as_array()?.iter().find(|child| child["id"] == "counter")?["value"]
        .as_str()?
        .strip_prefix("count: ")?
        .parse()
        .ok()
}

fn tool_call_item(thread_id: &str) -> ThreadItem {
    let mut arguments = Map::new();
    arguments.insert("tz".into(), Value::String("UTC".into()));
    let call = ClientToolCall {
        status: ToolCallStatus::Pending,
        call_id: new_id(IdKind::ToolCall),
        name: "get_time".into(),
        arguments,
        output: None,
    };
    ThreadItem::new(new_id(IdKind::ToolCall), thread_id.to_string(), ItemBody::ClientToolCall(call))
}

fn structured_input_item(thread_id: &str) -> ThreadItem {
    let request = StructuredInputRequest {
        status: StructuredInputStatus::Pending,
        inputs: vec![
            StructuredInput::MultipleChoice {
                id: "color".into(),
                question: "Which color?".into(),
                answer: None,
                options: ["red", "blue"].map(|value| StructuredInputOption { value: value.into() }).to_vec(),
                multiple: false,
            },
            StructuredInput::Freeform { id: "why".into(), question: "Why?".into(), answer: None, description: None },
        ],
    };
    ThreadItem::new(new_id(IdKind::Message), thread_id.to_string(), ItemBody::StructuredInput(request))
}

/// `color=red; why=because`, with `skipped` for a skipped question.
fn describe_answers(request: &StructuredInputRequest) -> String {
    request
        .inputs
        .iter()
        .map(|input| {
            let value = match input.answer() {
                Some(answer) if !answer.skipped => answer.values.join(","),
                _ => "skipped".to_string(),
            };
            format!("{}={value}", input.id())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Compact JSON with object keys sorted at every depth.
pub fn sorted_json(value: &Value) -> String {
    fn sort(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sort(v))).collect())
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_make_at_least_three_pieces_that_join_back() {
        for text in ["echo: a", "echo: ", "x", "", &"long text ".repeat(40)] {
            let pieces = chunks(text, 3);
            assert!(pieces.len() >= 3, "{text:?}");
            assert_eq!(pieces.concat(), text);
        }
        assert!(chunks("héllo wörld ✓", 3).iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn sorted_json_sorts_nested_keys() {
        let value = json!({"b": 1, "a": {"d": [{"z": 1, "y": 2}], "c": null}});
        assert_eq!(sorted_json(&value), r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#);
    }

    #[test]
    fn the_gallery_has_a_widget_root_per_family() {
        let items = gallery_items("thr_1");
        assert!(items.len() >= 12, "{}", items.len());
        for item in items {
            let ItemBody::Widget { widget, copy_text } = &item.body else { panic!("a widget") };
            assert!(["Card", "ListView", "Basic"].contains(&widget["type"].as_str().unwrap_or("")), "{widget}");
            assert!(copy_text.as_deref().is_some_and(|text| !text.is_empty()));
        }
    }

    #[test]
    fn counter_round_trips() {
        assert_eq!(counter_value(&widget_item("thr_1", 41)), Some(41));
    }
}
