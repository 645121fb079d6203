//! Chat Completions chunks as ChatKit events: an assistant message added,
//! its content part, one text delta per chunk, annotations, the part done
//! and the message done; client tool calls become pending tool call items, and
//! server (MCP) tool calls are handed back for the responder's tool loop to run.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::settings::ModelSettings;
use super::Failure;
use crate::ids::{new_id, IdKind};
use crate::protocol::{
    Annotation, AssistantMessageContent, ClientToolCall, ItemBody, ItemUpdate, Source, SourceBase, ThreadItem,
    ThreadStreamEvent, ToolCallStatus, UrlSource,
};
use crate::responder::ResponderError;

/// One `chat.completion.chunk`, keeping only what the gateway uses.
#[derive(Debug, Default, Deserialize)]
pub struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    /// Some servers report a failure inside the stream.
    #[serde(default)]
    error: Option<Value>,
    /// Token counts, in the last chunk when `include_usage` was asked for.
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Debug, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl Chunk {
    /// (prompt, completion) tokens, when the chunk reports them.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage.as_ref().map(|usage| (usage.prompt_tokens, usage.completion_tokens))
    }
}

#[derive(Debug, Default, Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Vec<ToolCallDelta>,
    #[serde(default)]
    annotations: Vec<AnnotationDelta>,
}

#[derive(Debug, Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AnnotationDelta {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    url_citation: Option<UrlCitation>,
}

#[derive(Debug, Deserialize)]
struct UrlCitation {
    url: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    end_index: Option<i64>,
}

#[derive(Debug, Default)]
struct PendingCall {
    id: String,
    name: String,
    arguments: String,
}

/// The message being streamed.
struct Message {
    id: String,
    text: String,
    annotations: Vec<Annotation>,
}

/// Turns a completion stream into ChatKit events, chunk by chunk.
pub struct Translator {
    thread_id: String,
    settings: ModelSettings,
    message: Option<Message>,
    calls: BTreeMap<usize, PendingCall>,
    finish_reason: Option<String>,
}

/// What the end of a completed stream adds, and the answer's text (for the title).
pub struct Finished {
    pub events: Vec<ThreadStreamEvent>,
    pub text: String,
    /// Calls of server (MCP) tools, which the gateway runs before asking the model again.
    pub server_calls: Vec<ModelCall>,
    /// The other calls of a round that called server tools: not run, and the model is told so.
    pub skipped_calls: Vec<ModelCall>,
}

/// One function call the model made, as the next request repeats it.
#[derive(Clone, Debug)]
pub struct ModelCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them: a JSON object as text.
    pub arguments: String,
}

impl ModelCall {
    /// The call as it appears in the assistant message's `tool_calls`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }
}

impl Translator {
    pub fn new(thread_id: String, settings: ModelSettings) -> Self {
        Translator { thread_id, settings, message: None, calls: BTreeMap::new(), finish_reason: None }
    }

    pub fn chunk(&mut self, chunk: Chunk) -> Result<Vec<ThreadStreamEvent>, ResponderError> {
        if let Some(error) = chunk.error {
            let message = error["message"].as_str().unwrap_or("unknown error").to_string();
            tracing::warn!(%message, "the model service reported an error mid-stream");
            return Err(ResponderError::Custom {
                message: format!("The model service failed while answering: {message}"),
                allow_retry: true,
            });
        }
        let mut events = Vec::new();
        // Only the first choice is shown; the gateway never asks for more.
        for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
            let text = [choice.delta.content, choice.delta.refusal].into_iter().flatten().collect::<String>();
            if !text.is_empty() {
                self.start_message(&mut events);
                let message = self.message.as_mut().expect("started");
                message.text.push_str(&text);
                events.push(update(&message.id, ItemUpdate::TextDelta { content_index: 0, delta: text }));
            }
            for annotation in choice.delta.annotations {
                let Some(citation) = annotation.url_citation.filter(|_| annotation.kind == "url_citation") else {
                    continue;
                };
                self.start_message(&mut events);
                let message = self.message.as_mut().expect("started");
                let annotation = Annotation {
                    kind: Default::default(),
                    source: Source::Url(UrlSource {
                        kind: Default::default(),
                        base: SourceBase {
                            title: citation.title.unwrap_or_else(|| citation.url.clone()),
                            description: None,
                            timestamp: None,
                            group: None,
                        },
                        url: citation.url,
                        attribution: None,
                    }),
                    index: citation.end_index,
                };
                let annotation_index = message.annotations.len();
                message.annotations.push(annotation.clone());
                events.push(update(
                    &message.id,
                    ItemUpdate::AnnotationAdded { content_index: 0, annotation_index, annotation },
                ));
            }
            for call in choice.delta.tool_calls {
                let pending = self.calls.entry(call.index).or_default();
                if let Some(id) = call.id {
                    pending.id = id;
                }
                if let Some(function) = call.function {
                    if let Some(name) = function.name {
                        pending.name.push_str(&name);
                    }
                    if let Some(arguments) = function.arguments {
                        pending.arguments.push_str(&arguments);
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(events)
    }

    fn start_message(&mut self, events: &mut Vec<ThreadStreamEvent>) {
        if self.message.is_some() {
            return;
        }
        let id = new_id(IdKind::Message);
        let empty = ThreadItem::new(id.clone(), self.thread_id.clone(), ItemBody::AssistantMessage { content: vec![] });
        events.push(ThreadStreamEvent::ItemAdded { item: empty });
        events.push(update(
            &id,
            ItemUpdate::ContentPartAdded { content_index: 0, content: AssistantMessageContent::text("") },
        ));
        self.message = Some(Message { id, text: String::new(), annotations: Vec::new() });
    }

    /// Closes the answer once the stream ended; a stream that ended without
    /// a finish reason was cut off. `server_tool` tells the calls the gateway runs itself (MCP tools).
    pub fn finish(self, model: &str, server_tool: impl Fn(&str) -> bool) -> Result<Finished, ResponderError> {
        if self.finish_reason.is_none() {
            return Err(Failure::Broken("the stream ended without a finish reason".into()).into_error(model));
        }
        let mut events = Vec::new();
        let mut text = String::new();
        if let Some(message) = self.message {
            let content = AssistantMessageContent {
                annotations: message.annotations,
                text: message.text,
                kind: Default::default(),
            };
            events
                .push(update(&message.id, ItemUpdate::ContentPartDone { content_index: 0, content: content.clone() }));
            text = content.text.clone();
            let body = ItemBody::AssistantMessage { content: vec![content] };
            events
                .push(ThreadStreamEvent::ItemDone { item: ThreadItem::new(message.id, self.thread_id.clone(), body) });
        }
        let calls: Vec<PendingCall> = self
            .calls
            .into_values()
            .map(|mut call| {
                if call.id.is_empty() {
                    call.id = new_id(IdKind::ToolCall);
                }
                call
            })
            .collect();
        if calls.iter().any(|call| server_tool(&call.name)) {
            // The gateway runs the server tools and asks again; a client tool called in the same round
            // would end the turn before the server tools' results reach the model, so it is not run.
            let (server_calls, skipped_calls): (Vec<ModelCall>, Vec<ModelCall>) = calls
                .into_iter()
                .map(|call| ModelCall { id: call.id, name: call.name, arguments: call.arguments })
                .partition(|call| server_tool(&call.name));
            return Ok(Finished { events, text, server_calls, skipped_calls });
        }
        // A turn ends with one pending call, as in the reference: the client answers the newest pending
        // call, so a second call of the same turn would take the first one's output and the first would
        // be dropped unanswered. The model sees the one call and its output, and may call again.
        let mut calls = calls.into_iter();
        let first = calls.next();
        let extra: Vec<String> = calls.map(|call| call.name).collect();
        if !extra.is_empty() {
            tracing::warn!(?extra, "the model called several client tools at once; only the first goes to the client");
        }
        if let Some(call) = first {
            if self.settings.tool(&call.name).is_none() {
                return Err(ResponderError::Custom {
                    message: format!("The model called a tool this gateway does not offer: `{}`.", call.name),
                    allow_retry: true,
                });
            }
            let arguments: Map<String, Value> = match call.arguments.trim() {
                "" => Map::new(),
                raw => serde_json::from_str(raw).map_err(|e| ResponderError::Custom {
                    message: format!(
                        "The model called `{}` with arguments that are not a JSON object ({e}).",
                        call.name
                    ),
                    allow_retry: true,
                })?,
            };
            let body = ItemBody::ClientToolCall(ClientToolCall {
                status: ToolCallStatus::Pending,
                call_id: call.id,
                name: call.name,
                arguments,
                output: None,
            });
            // The turn ends with the pending call; the client answers it with
            // `threads.add_client_tool_output`, and the model continues then.
            events.push(ThreadStreamEvent::ItemDone {
                item: ThreadItem::new(new_id(IdKind::ToolCall), self.thread_id.clone(), body),
            });
        }
        Ok(Finished { events, text, server_calls: Vec::new(), skipped_calls: Vec::new() })
    }
}

fn update(item_id: &str, update: ItemUpdate) -> ThreadStreamEvent {
    ThreadStreamEvent::ItemUpdated { item_id: item_id.to_string(), update }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::responder::openai::settings::ClientTool;

    fn settings() -> ModelSettings {
        ModelSettings {
            api_key: None,
            base_url: "http://127.0.0.1:9/v1".into(),
            default_model: "m".into(),
            allowed_models: vec!["m".into()],
            system_prompt: "s".into(),
            history_items: 10,
            titles: false,
            title_model: "m".into(),
            client_tools: vec![ClientTool {
                name: "get_time".into(),
                description: String::new(),
                parameters: json!({}),
            }],
            timeout: Duration::from_secs(1),
            retries: 0,
            retry_backoff: Duration::from_millis(1),
            transcribe_model: "t".into(),
            api: crate::responder::ModelApi::Chat,
            hosted_tools: Vec::new(),
            reasoning_summary: None,
        }
    }

    fn chunk(value: Value) -> Chunk {
        serde_json::from_value(value).unwrap()
    }

    fn kinds(events: &[ThreadStreamEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                let v = serde_json::to_value(e).unwrap();
                match v["update"]["type"].as_str() {
                    Some(update) => update.to_string(),
                    None => v["type"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    }

    #[test]
    fn text_streams_as_the_reference_streams_it() {
        let mut t = Translator::new("thr_1".into(), settings());
        let mut events = t.chunk(chunk(json!({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))).unwrap();
        assert!(events.is_empty(), "no message before there is text");
        events.extend(t.chunk(chunk(json!({"choices": [{"delta": {"content": "Hel"}}]}))).unwrap());
        events.extend(t.chunk(chunk(json!({"choices": [{"delta": {"content": "lo", "annotations": [
            {"type": "url_citation", "url_citation": {"url": "https://a.example", "title": "A", "start_index": 0, "end_index": 5}}
        ]}}]}))).unwrap());
        events.extend(t.chunk(chunk(json!({"choices": [{"delta": {}, "finish_reason": "stop"}]}))).unwrap());
        let finished = t.finish("m", |_| false).unwrap();
        events.extend(finished.events);
        assert_eq!(
            kinds(&events),
            [
                "thread.item.added",
                "assistant_message.content_part.added",
                "assistant_message.content_part.text_delta",
                "assistant_message.content_part.text_delta",
                "assistant_message.content_part.annotation_added",
                "assistant_message.content_part.done",
                "thread.item.done"
            ]
        );
        assert_eq!(finished.text, "Hello");
        let done = serde_json::to_value(events.last().unwrap()).unwrap();
        assert_eq!(done["item"]["content"][0]["text"], "Hello");
        assert_eq!(done["item"]["content"][0]["annotations"][0]["source"]["url"], "https://a.example");
        assert_eq!(done["item"]["content"][0]["annotations"][0]["index"], 5);
        assert_eq!(done["item"]["thread_id"], "thr_1");
    }

    #[test]
    fn tool_calls_split_across_chunks_become_one_pending_call() {
        let mut t = Translator::new("thr_1".into(), settings());
        for delta in [
            json!({"tool_calls": [{"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_time", "arguments": ""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"tz\""}}]}),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ": \"UTC\"}"}}]}),
        ] {
            assert!(t.chunk(chunk(json!({"choices": [{"delta": delta}]}))).unwrap().is_empty());
        }
        t.chunk(chunk(json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}))).unwrap();
        let events = t.finish("m", |_| false).unwrap().events;
        let call = serde_json::to_value(&events[0]).unwrap();
        assert_eq!(call["type"], "thread.item.done");
        assert_eq!(call["item"]["type"], "client_tool_call");
        assert_eq!(call["item"]["status"], "pending");
        assert_eq!(call["item"]["call_id"], "call_9");
        assert_eq!(call["item"]["arguments"], json!({"tz": "UTC"}));
    }

    #[test]
    fn server_tool_calls_are_kept_for_the_gateway_to_run() {
        let mut t = Translator::new("thr_1".into(), settings());
        let delta = json!({"content": "Let me check.", "tool_calls": [
            {"index": 0, "id": "c1", "function": {"name": "math__add", "arguments": "{\"a\": 1}"}},
            {"index": 1, "function": {"name": "get_time", "arguments": "{}"}},
            {"index": 2, "id": "c3", "function": {"name": "math__sub", "arguments": ""}}
        ]});
        t.chunk(chunk(json!({"choices": [{"delta": delta, "finish_reason": "tool_calls"}]}))).unwrap();
        let finished = t.finish("m", |name| name.starts_with("math__")).unwrap();
        let names: Vec<&str> = finished.server_calls.iter().map(|call| call.name.as_str()).collect();
        assert_eq!(names, ["math__add", "math__sub"]);
        assert_eq!(finished.server_calls[0].to_json()["function"]["arguments"], "{\"a\": 1}");
        // A client tool called with server tools is not run, and no pending call item ends the turn.
        assert_eq!(finished.skipped_calls.len(), 1);
        assert!(finished.skipped_calls[0].id.starts_with("tc_"), "a missing id is made up");
        assert_eq!(finished.text, "Let me check.");
        assert!(!kinds(&finished.events).is_empty());
        assert!(finished.events.iter().all(|e| !serde_json::to_string(e).unwrap().contains("client_tool_call")));
    }

    #[test]
    fn cut_streams_unknown_tools_and_bad_arguments_are_errors() {
        let mut cut = Translator::new("thr_1".into(), settings());
        cut.chunk(chunk(json!({"choices": [{"delta": {"content": "Hel"}}]}))).unwrap();
        let error = cut.finish("m", |_| false).err().unwrap();
        assert!(matches!(error, ResponderError::Custom { allow_retry: true, .. }), "{error:?}");
        for (name, arguments, needle) in [("rm_rf", "{}", "does not offer"), ("get_time", "{nope", "not a JSON object")]
        {
            let mut t = Translator::new("thr_1".into(), settings());
            let delta =
                json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": name, "arguments": arguments}}]});
            t.chunk(chunk(json!({"choices": [{"delta": delta, "finish_reason": "tool_calls"}]}))).unwrap();
            let error = t.finish("m", |_| false).err().unwrap().to_string();
            assert!(error.contains(needle), "{error}");
        }
        let mut failing = Translator::new("thr_1".into(), settings());
        let error = failing.chunk(chunk(json!({"error": {"message": "overloaded"}}))).unwrap_err();
        assert!(error.to_string().contains("overloaded"));
    }
}
