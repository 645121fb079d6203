//! Responses API stream events as ChatKit events, mapped as the reference's `stream_agent_response`
//! maps the Agents SDK's raw response events: message items with their content parts, text deltas
//! and annotations; reasoning summaries as `thought` tasks of a `reasoning` workflow, closed with its
//! duration when the answer starts; generated images with their partial images; hosted tool calls
//! (which the reference does not show) as tasks of a workflow while they run. Events are read as
//! JSON, so a type this gateway does not know is skipped instead of failing the turn.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::{Map, Value};

use super::Failure;
use crate::ids::{new_id, IdKind};
use crate::protocol::{
    Annotation, AssistantMessageContent, ClientToolCall, FileSource, GeneratedImage, ItemBody, ItemUpdate, Source,
    SourceBase, StatusIndicator, Task, ThreadItem, ThreadStreamEvent, Timestamp, ToolCallStatus, UrlSource, Workflow,
    WorkflowKind, WorkflowSummary,
};
use crate::responder::ResponderError;
use crate::telemetry::metrics::METRICS;

/// A function call the model made, as `response.output_item.done` reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionCall {
    pub call_id: String,
    pub name: String,
    /// The arguments as the model wrote them: JSON text.
    pub arguments: String,
}

/// An assistant message being streamed: the gateway's id for the upstream item, and its parts.
struct OpenMessage {
    id: String,
    created_at: Timestamp,
    parts: Vec<AssistantMessageContent>,
}

/// The workflow item being streamed.
struct OpenWorkflow {
    id: String,
    created_at: Timestamp,
    started: Instant,
    workflow: Workflow,
}

/// The reasoning summary streaming into a thought task, as the reference tracks it.
struct StreamingThought {
    item_id: String,
    summary_index: u64,
    task_index: usize,
}

/// The generated image item being streamed.
struct OpenImage {
    id: String,
    created_at: Timestamp,
    image: Option<GeneratedImage>,
}

/// Turns one response's stream into ChatKit events, event by event.
pub struct ResponseTranslator {
    thread_id: String,
    /// The image generation tool's `partial_images`, to turn a partial image's index into progress.
    partial_images: Option<u64>,
    messages: HashMap<String, OpenMessage>,
    /// Annotations shown so far per (upstream item, content part): the reference counts the ones it
    /// could convert, so that a dropped annotation leaves no gap in the indexes.
    annotation_counts: HashMap<(String, usize), usize>,
    workflow: Option<OpenWorkflow>,
    thought: Option<StreamingThought>,
    image: Option<OpenImage>,
    /// Hosted tool calls shown as tasks: upstream item id to the task's index in the open workflow.
    tool_tasks: HashMap<String, usize>,
    calls: Vec<FunctionCall>,
    completed: bool,
    /// Whether the model refused: the reference stores the refusal as the answer, then fails the turn (the Agents
    /// SDK raises on a refusal), so the client gets a retryable `stream.error` after it.
    refused: bool,
    usage: Option<(u64, u64)>,
    text: String,
}

/// What the end of a completed response adds, the answer's text (for the title) and the function
/// calls the model made, which the turn loop hands to the client or (later) runs itself.
pub struct Finished {
    pub events: Vec<ThreadStreamEvent>,
    pub text: String,
    pub calls: Vec<FunctionCall>,
    /// Whether the answer was a refusal, which ends the turn with `refusal_error` once it is stored.
    pub refused: bool,
}

/// How a turn whose answer was a refusal ends, as in the reference.
pub fn refusal_error() -> ResponderError {
    failed("refusal", "the model refused")
}

fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn index_of(value: &Value) -> usize {
    value.as_u64().and_then(|index| usize::try_from(index).ok()).unwrap_or(0)
}

fn update(item_id: &str, update: ItemUpdate) -> ThreadStreamEvent {
    ThreadStreamEvent::ItemUpdated { item_id: item_id.to_string(), update }
}

/// The reference's failure answer: a `stream.error` that may be retried. `kind` labels the error metric.
fn failed(kind: &str, detail: &str) -> ResponderError {
    METRICS.model_errors.with_label_values(&[kind]).inc();
    tracing::warn!(%detail, kind, "the model's response did not complete");
    ResponderError::Stream { code: "stream.error".into(), allow_retry: true }
}

/// A Responses annotation as a ChatKit annotation, as the reference's `ResponseStreamConverter`
/// builds it: URL citations point at their URL with their end index; file citations (with their
/// `index`) and container file citations (with their end index) at the file by name, and are dropped
/// without one. Other annotation types are dropped.
pub fn convert_annotation(raw: &Value) -> Option<Annotation> {
    let file = |filename: &Value, index: &Value| {
        let filename = filename.as_str().filter(|name| !name.is_empty())?;
        Some(Annotation {
            kind: Default::default(),
            source: Source::File(FileSource {
                kind: Default::default(),
                base: SourceBase { title: filename.to_string(), ..Default::default() },
                filename: filename.to_string(),
            }),
            index: index.as_i64(),
        })
    };
    match raw["type"].as_str()? {
        "url_citation" => {
            let url = raw["url"].as_str()?.to_string();
            Some(Annotation {
                kind: Default::default(),
                source: Source::Url(UrlSource {
                    kind: Default::default(),
                    base: SourceBase { title: text_of(&raw["title"]), ..Default::default() },
                    url,
                    attribution: None,
                }),
                index: raw["end_index"].as_i64(),
            })
        }
        "file_citation" => file(&raw["filename"], &raw["index"]),
        "container_file_citation" => file(&raw["filename"], &raw["end_index"]),
        _ => None,
    }
}

/// An output content part as a ChatKit content part: text with its annotations, a refusal as text.
fn convert_content(part: &Value) -> Option<AssistantMessageContent> {
    match part["type"].as_str()? {
        "output_text" => {
            let annotations = part["annotations"].as_array().into_iter().flatten().filter_map(convert_annotation);
            Some(AssistantMessageContent {
                annotations: annotations.collect(),
                ..AssistantMessageContent::text(text_of(&part["text"]))
            })
        }
        "refusal" => Some(AssistantMessageContent::text(text_of(&part["refusal"]))),
        _ => None,
    }
}

/// The hosted tool calls shown as tasks, by output item type. Image generation is not among them: the
/// reference shows it as the generated image item itself.
fn is_hosted_call(kind: &str) -> bool {
    matches!(kind, "web_search_call" | "file_search_call" | "code_interpreter_call")
}

/// The task that shows a hosted tool call; `item` is the output item when it is known.
fn hosted_task(kind: &str, item: Option<&Value>, done: bool) -> Task {
    let status_indicator = if done { StatusIndicator::Complete } else { StatusIndicator::Loading };
    let item = item.unwrap_or(&Value::Null);
    match kind {
        "web_search_call" => {
            let query = item["action"]["query"].as_str().filter(|q| !q.is_empty()).map(str::to_string);
            let sources = item["action"]["sources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|source| {
                    let url = source["url"].as_str()?;
                    Some(UrlSource {
                        kind: Default::default(),
                        base: SourceBase { title: url.to_string(), ..Default::default() },
                        url: url.to_string(),
                        attribution: None,
                    })
                })
                .collect();
            Task::WebSearch {
                status_indicator,
                title: Some(if done { "Searched the web" } else { "Searching the web" }.to_string()),
                title_query: query.clone(),
                queries: query.into_iter().collect(),
                sources,
            }
        }
        "file_search_call" => {
            let sources = item["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|result| {
                    let filename = result["filename"].as_str().filter(|name| !name.is_empty())?;
                    Some(FileSource {
                        kind: Default::default(),
                        base: SourceBase { title: filename.to_string(), ..Default::default() },
                        filename: filename.to_string(),
                    })
                })
                .collect();
            Task::File {
                status_indicator,
                title: Some(if done { "Searched files" } else { "Searching files" }.to_string()),
                sources,
            }
        }
        _ => Task::Custom {
            status_indicator,
            title: Some(if done { "Ran code" } else { "Running code" }.to_string()),
            icon: None,
            content: item["code"].as_str().filter(|code| !code.is_empty()).map(str::to_string),
        },
    }
}

impl ResponseTranslator {
    pub fn new(thread_id: String, partial_images: Option<u64>) -> Self {
        ResponseTranslator {
            thread_id,
            partial_images,
            messages: HashMap::new(),
            annotation_counts: HashMap::new(),
            workflow: None,
            thought: None,
            image: None,
            tool_tasks: HashMap::new(),
            calls: Vec::new(),
            completed: false,
            refused: false,
            usage: None,
            text: String::new(),
        }
    }

    /// (input, output) tokens, once `response.completed` reported them.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage
    }

    /// Maps one stream event; unknown types map to nothing.
    pub fn event(&mut self, event: &Value) -> Result<Vec<ThreadStreamEvent>, ResponderError> {
        let mut out = Vec::new();
        let kind = event["type"].as_str().unwrap_or_default();
        let item_id = event["item_id"].as_str().unwrap_or_default();
        match kind {
            "response.output_item.added" => self.item_added(&event["item"], &mut out),
            "response.output_item.done" => self.item_done(&event["item"], &mut out),
            "response.content_part.added" => {
                if let Some(content) = convert_content(&event["part"]) {
                    let content_index = index_of(&event["content_index"]);
                    let message = self.message(item_id, &mut out);
                    set_part(&mut message.parts, content_index, content.clone());
                    let id = message.id.clone();
                    out.push(update(&id, ItemUpdate::ContentPartAdded { content_index, content }));
                }
            }
            // The reference ignores refusal deltas and shows the refusal with the finished item; streamed
            // like text here, so that the user sees it arrive.
            "response.output_text.delta" | "response.refusal.delta" => {
                let content_index = index_of(&event["content_index"]);
                let delta = text_of(&event["delta"]);
                let message = self.message(item_id, &mut out);
                part(&mut message.parts, content_index).text.push_str(&delta);
                let id = message.id.clone();
                out.push(update(&id, ItemUpdate::TextDelta { content_index, delta }));
            }
            "response.output_text.done" | "response.refusal.done" => {
                self.refused |= kind == "response.refusal.done";
                let content_index = index_of(&event["content_index"]);
                let field = if kind == "response.output_text.done" { "text" } else { "refusal" };
                let message = self.message(item_id, &mut out);
                let content = part(&mut message.parts, content_index);
                content.text = text_of(&event[field]);
                let content = content.clone();
                let id = message.id.clone();
                out.push(update(&id, ItemUpdate::ContentPartDone { content_index, content }));
            }
            "response.output_text.annotation.added" => {
                if let Some(annotation) = convert_annotation(&event["annotation"]) {
                    let content_index = index_of(&event["content_index"]);
                    let count = self.annotation_counts.entry((item_id.to_string(), content_index)).or_default();
                    let annotation_index = *count;
                    *count += 1;
                    let message = self.message(item_id, &mut out);
                    part(&mut message.parts, content_index).annotations.push(annotation.clone());
                    let id = message.id.clone();
                    out.push(update(&id, ItemUpdate::AnnotationAdded { content_index, annotation_index, annotation }));
                }
            }
            "response.reasoning_summary_text.delta" => self.thought_delta(event, &mut out),
            "response.reasoning_summary_text.done" => self.thought_done(event, &mut out),
            "response.image_generation_call.partial_image" => {
                let Some(open) = self.image.as_mut() else { return Ok(out) };
                let image = GeneratedImage { id: item_id.to_string(), url: png_url(&event["partial_image_b64"]) };
                let index = event["partial_image_index"].as_u64().unwrap_or(0);
                let progress = match self.partial_images {
                    Some(total) if total > 0 => (index as f64 / total as f64).min(1.0),
                    _ => 0.0,
                };
                open.image = Some(image.clone());
                out.push(update(&open.id, ItemUpdate::GeneratedImageUpdated { image, progress: Some(progress) }));
            }
            "response.web_search_call.in_progress"
            | "response.file_search_call.in_progress"
            | "response.code_interpreter_call.in_progress" => {
                // Shown already when its output item was added; this covers a stream that skipped that.
                if !self.tool_tasks.contains_key(item_id) {
                    let call = kind.trim_start_matches("response.").trim_end_matches(".in_progress");
                    self.add_tool_task(item_id, hosted_task(call, None, false), &mut out);
                }
            }
            "response.completed" => {
                self.completed = true;
                let usage = &event["response"]["usage"];
                if let (Some(input), Some(output)) = (usage["input_tokens"].as_u64(), usage["output_tokens"].as_u64()) {
                    self.usage = Some((input, output));
                }
            }
            "response.failed" => {
                return Err(failed("failed", event["response"]["error"]["message"].as_str().unwrap_or("no message")))
            }
            "response.incomplete" => {
                let reason = event["response"]["incomplete_details"]["reason"].as_str().unwrap_or("no reason");
                return Err(failed("incomplete", reason));
            }
            "error" => return Err(failed("failed", event["message"].as_str().unwrap_or("no message"))),
            other => tracing::trace!(event = other, "Responses event not shown"),
        }
        Ok(out)
    }

    /// The open message of upstream item `item_id`, started (with its `thread.item.added`) if the
    /// stream skipped `response.output_item.added`.
    fn message(&mut self, item_id: &str, out: &mut Vec<ThreadStreamEvent>) -> &mut OpenMessage {
        if !self.messages.contains_key(item_id) {
            self.start_message(item_id, Vec::new(), out);
        }
        self.messages.get_mut(item_id).expect("started above")
    }

    fn start_message(&mut self, item_id: &str, parts: Vec<AssistantMessageContent>, out: &mut Vec<ThreadStreamEvent>) {
        // The answer starts: the reasoning (or tool work) before it is over.
        self.end_workflow(out);
        // The gateway's own id rather than the upstream one (the reference reuses it): ids stay unique in the
        // store whatever the upstream server sends.
        let body = ItemBody::AssistantMessage { content: parts.clone() };
        let item = ThreadItem::new(new_id(IdKind::Message), self.thread_id.clone(), body);
        self.messages
            .insert(item_id.to_string(), OpenMessage { id: item.id.clone(), created_at: item.created_at, parts });
        out.push(ThreadStreamEvent::ItemAdded { item });
    }

    fn item_added(&mut self, item: &Value, out: &mut Vec<ThreadStreamEvent>) {
        let kind = item["type"].as_str().unwrap_or_default();
        let item_id = item["id"].as_str().unwrap_or_default();
        match kind {
            "reasoning" if self.workflow.is_none() => {
                let workflow =
                    Workflow { kind: WorkflowKind::Reasoning, tasks: Vec::new(), summary: None, expanded: false };
                self.open_workflow(workflow, out);
            }
            "message" => {
                let parts = item["content"].as_array().into_iter().flatten().filter_map(convert_content).collect();
                self.start_message(item_id, parts, out);
            }
            "image_generation_call" => {
                let item = ThreadItem::new(
                    new_id(IdKind::Message),
                    self.thread_id.clone(),
                    ItemBody::GeneratedImage { image: None },
                );
                self.image = Some(OpenImage { id: item.id.clone(), created_at: item.created_at, image: None });
                out.push(ThreadStreamEvent::ItemAdded { item });
            }
            _ if is_hosted_call(kind) => self.add_tool_task(item_id, hosted_task(kind, Some(item), false), out),
            _ => {}
        }
    }

    fn item_done(&mut self, item: &Value, out: &mut Vec<ThreadStreamEvent>) {
        let kind = item["type"].as_str().unwrap_or_default();
        let item_id = item["id"].as_str().unwrap_or_default();
        match kind {
            "message" => {
                let Some(mut message) = self.messages.remove(item_id) else { return };
                let parts: Vec<AssistantMessageContent> =
                    item["content"].as_array().into_iter().flatten().filter_map(convert_content).collect();
                if !parts.is_empty() {
                    message.parts = parts;
                }
                self.close_message(message, out);
            }
            "function_call" => self.calls.push(FunctionCall {
                call_id: text_of(&item["call_id"]),
                name: text_of(&item["name"]),
                arguments: text_of(&item["arguments"]),
            }),
            "image_generation_call" => {
                // Without a result (a failed generation) the item stays as it is, as in the reference.
                let Some(result) = item["result"].as_str().filter(|result| !result.is_empty()) else { return };
                let Some(open) = self.image.take() else { return };
                let image = GeneratedImage { id: item_id.to_string(), url: png_url(&Value::from(result)) };
                let body = ItemBody::GeneratedImage { image: Some(image) };
                out.push(ThreadStreamEvent::ItemDone { item: self.item(open.id, open.created_at, body) });
            }
            _ if is_hosted_call(kind) => {
                if let Some(&task_index) = self.tool_tasks.get(item_id) {
                    self.update_task(task_index, hosted_task(kind, Some(item), true), out);
                }
            }
            _ => {}
        }
    }

    fn close_message(&mut self, message: OpenMessage, out: &mut Vec<ThreadStreamEvent>) {
        for part in &message.parts {
            self.text.push_str(&part.text);
        }
        let body = ItemBody::AssistantMessage { content: message.parts };
        out.push(ThreadStreamEvent::ItemDone { item: self.item(message.id, message.created_at, body) });
    }

    /// The first summary streams into a thought as it arrives; later ones come whole with their `done`.
    fn thought_delta(&mut self, event: &Value, out: &mut Vec<ThreadStreamEvent>) {
        let Some(open) = self.workflow.as_mut() else { return };
        let item_id = event["item_id"].as_str().unwrap_or_default();
        let summary_index = event["summary_index"].as_u64().unwrap_or(0);
        let delta = text_of(&event["delta"]);
        if open.workflow.kind == WorkflowKind::Reasoning && open.workflow.tasks.is_empty() {
            let task = Task::Thought { status_indicator: StatusIndicator::None, title: None, content: delta };
            open.workflow.tasks.push(task.clone());
            self.thought = Some(StreamingThought { item_id: item_id.to_string(), summary_index, task_index: 0 });
            out.push(update(&open.id, ItemUpdate::WorkflowTaskAdded { task_index: 0, task }));
        } else if let Some(thought) =
            self.thought.as_ref().filter(|t| t.item_id == item_id && t.summary_index == summary_index)
        {
            if let Some(task @ Task::Thought { .. }) = open.workflow.tasks.get_mut(thought.task_index) {
                if let Task::Thought { content, .. } = task {
                    content.push_str(&delta);
                }
                let task = task.clone();
                out.push(update(&open.id, ItemUpdate::WorkflowTaskUpdated { task_index: thought.task_index, task }));
            }
        }
    }

    fn thought_done(&mut self, event: &Value, out: &mut Vec<ThreadStreamEvent>) {
        let Some(open) = self.workflow.as_mut() else { return };
        let item_id = event["item_id"].as_str().unwrap_or_default();
        let summary_index = event["summary_index"].as_u64().unwrap_or(0);
        let text = text_of(&event["text"]);
        let streaming = self.thought.take_if(|t| t.item_id == item_id && t.summary_index == summary_index);
        match streaming.and_then(|t| open.workflow.tasks.get_mut(t.task_index).map(|task| (t.task_index, task))) {
            Some((task_index, task)) => {
                *task = Task::Thought { status_indicator: StatusIndicator::None, title: None, content: text };
                let task = task.clone();
                out.push(update(&open.id, ItemUpdate::WorkflowTaskUpdated { task_index, task }));
            }
            None => {
                let task = Task::Thought { status_indicator: StatusIndicator::None, title: None, content: text };
                open.workflow.tasks.push(task.clone());
                let task_index = open.workflow.tasks.len() - 1;
                out.push(update(&open.id, ItemUpdate::WorkflowTaskAdded { task_index, task }));
            }
        }
    }

    /// Adds a task to the open workflow, or opens a `custom` one with it, as the reference's
    /// `add_workflow_task` does (a custom workflow is added with its first task).
    fn add_tool_task(&mut self, item_id: &str, task: Task, out: &mut Vec<ThreadStreamEvent>) {
        match self.workflow.as_mut() {
            Some(open) => {
                open.workflow.tasks.push(task.clone());
                let task_index = open.workflow.tasks.len() - 1;
                self.tool_tasks.insert(item_id.to_string(), task_index);
                out.push(update(&open.id, ItemUpdate::WorkflowTaskAdded { task_index, task }));
            }
            None => {
                let workflow =
                    Workflow { kind: WorkflowKind::Custom, tasks: vec![task], summary: None, expanded: false };
                self.open_workflow(workflow, out);
                self.tool_tasks.insert(item_id.to_string(), 0);
            }
        }
    }

    fn open_workflow(&mut self, workflow: Workflow, out: &mut Vec<ThreadStreamEvent>) {
        let body = ItemBody::Workflow { workflow: workflow.clone() };
        let item = ThreadItem::new(new_id(IdKind::Workflow), self.thread_id.clone(), body);
        let (id, created_at) = (item.id.clone(), item.created_at);
        out.push(ThreadStreamEvent::ItemAdded { item });
        self.workflow = Some(OpenWorkflow { id, created_at, started: Instant::now(), workflow });
    }

    /// An item of this thread, keeping the time it was added.
    fn item(&self, id: String, created_at: Timestamp, body: ItemBody) -> ThreadItem {
        ThreadItem { id, thread_id: self.thread_id.clone(), created_at, body }
    }

    fn update_task(&mut self, task_index: usize, task: Task, out: &mut Vec<ThreadStreamEvent>) {
        let Some(open) = self.workflow.as_mut() else { return };
        let Some(slot) = open.workflow.tasks.get_mut(task_index) else { return };
        *slot = task.clone();
        out.push(update(&open.id, ItemUpdate::WorkflowTaskUpdated { task_index, task }));
    }

    /// Closes the open workflow with its duration, collapsed, as the reference's `end_workflow` does.
    fn end_workflow(&mut self, out: &mut Vec<ThreadStreamEvent>) {
        let Some(mut open) = self.workflow.take() else { return };
        self.thought = None;
        self.tool_tasks.clear();
        if open.workflow.summary.is_none() {
            let duration = i64::try_from(open.started.elapsed().as_secs()).unwrap_or(i64::MAX);
            open.workflow.summary = Some(WorkflowSummary::Duration { duration });
        }
        open.workflow.expanded = false;
        let body = ItemBody::Workflow { workflow: open.workflow };
        out.push(ThreadStreamEvent::ItemDone { item: self.item(open.id, open.created_at, body) });
    }

    /// Closes what is still open once the stream ended; a stream that ended before
    /// `response.completed` was cut off.
    pub fn finish(mut self, model: &str) -> Result<Finished, ResponderError> {
        if !self.completed {
            return Err(Failure::Broken("the stream ended before `response.completed`".into()).into_error(model));
        }
        let mut events = Vec::new();
        let open: Vec<OpenMessage> = self.messages.drain().map(|(_, message)| message).collect();
        for message in open {
            self.close_message(message, &mut events);
        }
        // The reference stores a workflow still open at the end so that the next turn continues it;
        // here it is closed, so that every item of a finished turn is done.
        self.end_workflow(&mut events);
        Ok(Finished { events, text: self.text, calls: self.calls, refused: self.refused })
    }
}

/// The pending client tool call item that ends a turn, as the chat path makes it.
pub fn client_tool_call(thread_id: &str, call: FunctionCall) -> Result<ThreadStreamEvent, ResponderError> {
    let arguments: Map<String, Value> = match call.arguments.trim() {
        "" => Map::new(),
        raw => serde_json::from_str(raw).map_err(|e| ResponderError::Custom {
            message: format!("The model called `{}` with arguments that are not a JSON object ({e}).", call.name),
            allow_retry: true,
        })?,
    };
    let call_id = if call.call_id.is_empty() { new_id(IdKind::ToolCall) } else { call.call_id };
    let body = ItemBody::ClientToolCall(ClientToolCall {
        status: ToolCallStatus::Pending,
        call_id,
        name: call.name,
        arguments,
        output: None,
    });
    Ok(ThreadStreamEvent::ItemDone { item: ThreadItem::new(new_id(IdKind::ToolCall), thread_id.to_string(), body) })
}

/// The reference's `base64_image_to_url`: a PNG `data:` URL.
fn png_url(base64: &Value) -> String {
    format!("data:image/png;base64,{}", base64.as_str().unwrap_or_default())
}

/// The part at `index`, made (empty) with any before it if the stream skipped their `added` events.
fn part(parts: &mut Vec<AssistantMessageContent>, index: usize) -> &mut AssistantMessageContent {
    if parts.len() <= index {
        parts.resize_with(index + 1, || AssistantMessageContent::text(""));
    }
    &mut parts[index]
}

fn set_part(parts: &mut Vec<AssistantMessageContent>, index: usize, content: AssistantMessageContent) {
    *part(parts, index) = content;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Runs events through a translator; the events out as JSON, and what `finish` made.
    fn run(events: &[Value], partial_images: Option<u64>) -> (Vec<Value>, Result<Finished, ResponderError>) {
        let mut translator = ResponseTranslator::new("thr_1".into(), partial_images);
        let mut out = Vec::new();
        for event in events {
            for mapped in translator.event(event).unwrap() {
                out.push(serde_json::to_value(&mapped).unwrap());
            }
        }
        (out, translator.finish("m"))
    }

    fn kinds(events: &[Value]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e["update"]["type"].as_str() {
                Some(update) => update.to_string(),
                None => format!("{}:{}", e["type"].as_str().unwrap(), e["item"]["type"].as_str().unwrap_or("")),
            })
            .collect()
    }

    fn json_of(events: &[ThreadStreamEvent]) -> Vec<Value> {
        events.iter().map(|event| serde_json::to_value(event).unwrap()).collect()
    }

    fn completed() -> Value {
        json!({"type": "response.completed", "response": {"usage": {"input_tokens": 7, "output_tokens": 3}}})
    }

    #[test]
    fn text_and_citations_map_as_the_reference_maps_them() {
        let (events, finished) = run(
            &[
                json!({"type": "response.created", "response": {}}),
                json!({"type": "response.output_item.added", "item": {"type": "message", "id": "msg_up", "content": []}}),
                json!({"type": "response.content_part.added", "item_id": "msg_up", "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}),
                json!({"type": "response.output_text.delta", "item_id": "msg_up", "content_index": 0, "delta": "Rust"}),
                json!({"type": "response.output_text.annotation.added", "item_id": "msg_up", "content_index": 0, "annotation_index": 0,
                       "annotation": {"type": "file_citation", "file_id": "f", "filename": "", "index": 2}}),
                json!({"type": "response.output_text.annotation.added", "item_id": "msg_up", "content_index": 0, "annotation_index": 1,
                       "annotation": {"type": "url_citation", "url": "https://r.example", "title": "R", "start_index": 0, "end_index": 4}}),
                json!({"type": "response.output_text.annotation.added", "item_id": "msg_up", "content_index": 0, "annotation_index": 2,
                       "annotation": {"type": "container_file_citation", "container_id": "c", "file_id": "f", "filename": "out.csv", "start_index": 0, "end_index": 3}}),
                json!({"type": "response.some_future_event", "whatever": 1}),
                json!({"type": "response.output_text.done", "item_id": "msg_up", "content_index": 0, "text": "Rust"}),
                json!({"type": "response.output_item.done", "item": {"type": "message", "id": "msg_up", "content": [
                    {"type": "output_text", "text": "Rust", "annotations": [
                        {"type": "url_citation", "url": "https://r.example", "title": "R", "start_index": 0, "end_index": 4},
                        {"type": "file_citation", "file_id": "f", "filename": "notes.md", "index": 1}]}]}}),
                completed(),
            ],
            None,
        );
        assert_eq!(
            kinds(&events),
            [
                "thread.item.added:assistant_message",
                "assistant_message.content_part.added",
                "assistant_message.content_part.text_delta",
                "assistant_message.content_part.annotation_added",
                "assistant_message.content_part.annotation_added",
                "assistant_message.content_part.done",
                "thread.item.done:assistant_message",
            ]
        );
        assert_ne!(events[0]["item"]["id"], "msg_up", "the gateway's own id");
        assert_eq!(events[3]["update"]["annotation_index"], 0, "the dropped file citation leaves no gap");
        assert_eq!(
            events[3]["update"]["annotation"]["source"],
            json!({"type": "url", "title": "R", "url": "https://r.example"})
        );
        assert_eq!(events[3]["update"]["annotation"]["index"], 4);
        assert_eq!(events[4]["update"]["annotation_index"], 1);
        assert_eq!(events[4]["update"]["annotation"]["source"]["filename"], "out.csv");
        let done = &events[6]["item"]["content"][0];
        assert_eq!(
            done["annotations"][1]["source"],
            json!({"type": "file", "title": "notes.md", "filename": "notes.md"})
        );
        assert_eq!(done["annotations"][1]["index"], 1, "a file citation's own `index`");
        let finished = finished.unwrap();
        assert_eq!((finished.text.as_str(), finished.calls.len()), ("Rust", 0));
    }

    #[test]
    fn reasoning_streams_its_first_thought_and_closes_when_the_answer_starts() {
        let summary = |kind: &str, index: u64, field: &str, text: &str| json!({"type": kind, "item_id": "rs_1", "output_index": 0, "summary_index": index, field: text});
        let (events, finished) = run(
            &[
                json!({"type": "response.output_item.added", "item": {"type": "reasoning", "id": "rs_1", "summary": []}}),
                summary("response.reasoning_summary_text.delta", 0, "delta", "Think"),
                summary("response.reasoning_summary_text.delta", 0, "delta", "ing"),
                summary("response.reasoning_summary_text.done", 0, "text", "Thinking"),
                summary("response.reasoning_summary_text.delta", 1, "delta", "More"),
                summary("response.reasoning_summary_text.done", 1, "text", "More thought"),
                json!({"type": "response.output_item.added", "item": {"type": "message", "id": "m", "content": []}}),
                json!({"type": "response.output_text.delta", "item_id": "m", "content_index": 0, "delta": "Hi"}),
                completed(),
            ],
            None,
        );
        assert_eq!(
            kinds(&events),
            [
                "thread.item.added:workflow",
                "workflow.task.added",
                "workflow.task.updated",
                "workflow.task.updated",
                "workflow.task.added",
                "thread.item.done:workflow",
                "thread.item.added:assistant_message",
                "assistant_message.content_part.text_delta",
            ]
        );
        assert_eq!(events[0]["item"]["workflow"]["type"], "reasoning");
        assert_eq!(
            events[2]["update"]["task"],
            json!({"type": "thought", "status_indicator": "none", "content": "Thinking"})
        );
        assert_eq!(events[4]["update"]["task_index"], 1);
        let workflow = &events[5]["item"]["workflow"];
        assert_eq!(workflow["tasks"][1]["content"], "More thought");
        assert_eq!((workflow["summary"]["duration"].as_i64(), &workflow["expanded"]), (Some(0), &json!(false)));
        let closing = kinds(&json_of(&finished.unwrap().events));
        assert_eq!(closing, ["thread.item.done:assistant_message"], "a message left open is closed at the end");
    }

    #[test]
    fn image_generation_and_hosted_tools_show_as_tasks_and_an_image() {
        let (events, finished) = run(
            &[
                json!({"type": "response.output_item.added", "item": {"type": "web_search_call", "id": "ws_1", "status": "in_progress"}}),
                json!({"type": "response.web_search_call.in_progress", "item_id": "ws_1"}),
                json!({"type": "response.web_search_call.searching", "item_id": "ws_1"}),
                json!({"type": "response.web_search_call.completed", "item_id": "ws_1"}),
                json!({"type": "response.output_item.done", "item": {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "rust 2026"}}}),
                json!({"type": "response.output_item.added", "item": {"type": "image_generation_call", "id": "ig_1", "status": "in_progress"}}),
                json!({"type": "response.image_generation_call.partial_image", "item_id": "ig_1", "partial_image_index": 0, "partial_image_b64": "AAA"}),
                json!({"type": "response.image_generation_call.partial_image", "item_id": "ig_1", "partial_image_index": 1, "partial_image_b64": "BBB"}),
                json!({"type": "response.output_item.done", "item": {"type": "image_generation_call", "id": "ig_1", "status": "completed", "result": "CCC"}}),
                json!({"type": "response.output_item.done", "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_time", "arguments": "{}"}}),
                completed(),
            ],
            Some(2),
        );
        assert_eq!(
            kinds(&events),
            [
                "thread.item.added:workflow",
                "workflow.task.updated",
                "thread.item.added:generated_image",
                "generated_image.updated",
                "generated_image.updated",
                "thread.item.done:generated_image",
            ]
        );
        let search = &events[0]["item"]["workflow"];
        assert_eq!((&search["type"], &search["tasks"][0]["type"]), (&json!("custom"), &json!("web_search")));
        assert_eq!(search["tasks"][0]["status_indicator"], "loading");
        assert_eq!(events[1]["update"]["task"]["queries"], json!(["rust 2026"]));
        assert_eq!(events[1]["update"]["task"]["status_indicator"], "complete");
        assert_eq!(events[3]["update"]["image"], json!({"id": "ig_1", "url": "data:image/png;base64,AAA"}));
        assert_eq!(
            (events[3]["update"]["progress"].as_f64(), events[4]["update"]["progress"].as_f64()),
            (Some(0.0), Some(0.5))
        );
        assert_eq!(events[5]["item"]["image"]["url"], "data:image/png;base64,CCC");
        let finished = finished.unwrap();
        assert_eq!(kinds(&json_of(&finished.events)), ["thread.item.done:workflow"]);
        assert_eq!(
            finished.calls,
            [FunctionCall { call_id: "call_1".into(), name: "get_time".into(), arguments: "{}".into() }]
        );
    }

    #[test]
    fn file_searches_and_code_join_an_open_reasoning_workflow_as_tasks() {
        let (events, _) = run(
            &[
                json!({"type": "response.output_item.added", "item": {"type": "reasoning", "id": "rs_1", "summary": []}}),
                json!({"type": "response.file_search_call.in_progress", "item_id": "fs_1"}),
                json!({"type": "response.output_item.done", "item": {"type": "file_search_call", "id": "fs_1", "status": "completed",
                       "queries": ["q"], "results": [{"file_id": "f", "filename": "faq.md", "score": 0.9, "text": "…"}]}}),
                json!({"type": "response.output_item.added", "item": {"type": "code_interpreter_call", "id": "ci_1", "status": "in_progress", "code": ""}}),
                json!({"type": "response.output_item.done", "item": {"type": "code_interpreter_call", "id": "ci_1", "status": "completed", "code": "print(1)"}}),
                completed(),
            ],
            None,
        );
        assert_eq!(
            kinds(&events),
            [
                "thread.item.added:workflow",
                "workflow.task.added",
                "workflow.task.updated",
                "workflow.task.added",
                "workflow.task.updated"
            ]
        );
        assert_eq!(
            events[2]["update"]["task"],
            json!({"type": "file", "status_indicator": "complete", "title": "Searched files",
                   "sources": [{"type": "file", "title": "faq.md", "filename": "faq.md"}]})
        );
        assert_eq!(events[3]["update"]["task_index"], 1);
        assert_eq!(
            events[4]["update"]["task"],
            json!({"type": "custom", "status_indicator": "complete", "title": "Ran code", "content": "print(1)"})
        );
    }

    #[test]
    fn failed_incomplete_and_cut_responses_are_stream_errors() {
        for event in [
            json!({"type": "response.failed", "response": {"error": {"code": "server_error", "message": "boom"}}}),
            json!({"type": "response.incomplete", "response": {"incomplete_details": {"reason": "max_output_tokens"}}}),
            json!({"type": "error", "code": "x", "message": "bad", "param": null}),
        ] {
            let mut translator = ResponseTranslator::new("thr_1".into(), None);
            let error = translator.event(&event).unwrap_err();
            assert!(
                matches!(&error, ResponderError::Stream { code, allow_retry: true } if code == "stream.error"),
                "{error:?}"
            );
        }
        let (_, finished) = run(&[json!({"type": "response.created", "response": {}})], None);
        assert!(matches!(finished, Err(ResponderError::Custom { allow_retry: true, .. })));
    }
}
