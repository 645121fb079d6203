//! Thread items in the `/v1` API: `chatkit.thread_item` in each of its
//! shapes, and the conversion from the protocol's items, which maps the item
//! types the hosted union lacks to their nearest shapes.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{FileSourceType, OutputTextType, ThreadItemObject, UrlSourceType};
use crate::protocol::{
    Annotation, Attachment, AttachmentKind, ItemBody, Source, StructuredInput, Task, ThreadItem, ToolCallStatus,
    UserMessageContent,
};

/// One item of a thread in the hosted API's shapes, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type")]
pub enum ChatKitThreadItem {
    #[serde(rename = "chatkit.user_message")]
    UserMessage(ChatKitUserMessageItem),
    #[serde(rename = "chatkit.assistant_message")]
    AssistantMessage(ChatKitAssistantMessageItem),
    #[serde(rename = "chatkit.widget")]
    Widget(ChatKitWidgetItem),
    #[serde(rename = "chatkit.client_tool_call")]
    ClientToolCall(ChatKitClientToolCall),
    #[serde(rename = "chatkit.task")]
    Task(ChatKitTask),
    #[serde(rename = "chatkit.task_group")]
    TaskGroup(ChatKitTaskGroup),
}

/// `chatkit.user_message`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitUserMessageItem {
    pub id: String,
    pub object: ThreadItemObject,
    /// Unix seconds.
    pub created_at: i64,
    pub thread_id: String,
    pub content: Vec<ChatKitUserContent>,
    pub attachments: Vec<ChatKitAttachment>,
    /// `null` when the message chose neither a model nor a tool.
    pub inference_options: Option<ChatKitInferenceOptions>,
}

/// One part of a user message: its text, or the text it quotes.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type")]
pub enum ChatKitUserContent {
    #[serde(rename = "input_text")]
    InputText { text: String },
    #[serde(rename = "quoted_text")]
    QuotedText { text: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitAttachment {
    pub id: String,
    pub mime_type: String,
    pub name: String,
    /// Images only; `null` for files.
    pub preview_url: Option<String>,
    #[serde(rename = "type")]
    pub kind: ChatKitAttachmentType,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatKitAttachmentType {
    Image,
    File,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitInferenceOptions {
    pub model: Option<String>,
    pub tool_choice: Option<ChatKitToolChoice>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitToolChoice {
    pub id: String,
}

/// `chatkit.assistant_message`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitAssistantMessageItem {
    pub id: String,
    pub object: ThreadItemObject,
    /// Unix seconds.
    pub created_at: i64,
    pub thread_id: String,
    pub content: Vec<ChatKitResponseOutputText>,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitResponseOutputText {
    pub annotations: Vec<ChatKitAnnotation>,
    pub text: String,
    #[serde(rename = "type")]
    pub kind: OutputTextType,
}

/// A citation of a file or a URL.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type")]
pub enum ChatKitAnnotation {
    #[serde(rename = "file")]
    File { source: ChatKitFileSource },
    #[serde(rename = "url")]
    Url { source: ChatKitUrlSource },
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitFileSource {
    pub filename: String,
    #[serde(rename = "type")]
    pub kind: FileSourceType,
}

#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitUrlSource {
    #[serde(rename = "type")]
    pub kind: UrlSourceType,
    pub url: String,
}

/// `chatkit.widget`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitWidgetItem {
    pub id: String,
    pub object: ThreadItemObject,
    /// Unix seconds.
    pub created_at: i64,
    pub thread_id: String,
    /// The widget tree, JSON-encoded.
    pub widget: String,
}

/// `chatkit.client_tool_call`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitClientToolCall {
    pub id: String,
    pub object: ThreadItemObject,
    /// Unix seconds.
    pub created_at: i64,
    pub thread_id: String,
    /// The call's arguments, JSON-encoded.
    pub arguments: String,
    pub call_id: String,
    pub name: String,
    /// The client's output, JSON-encoded; `null` until the client answered.
    pub output: Option<String>,
    pub status: ChatKitToolCallStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatKitToolCallStatus {
    InProgress,
    Completed,
}

/// The two kinds of task the hosted API knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatKitTaskType {
    Custom,
    Thought,
}

/// `chatkit.task`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitTask {
    pub id: String,
    pub object: ThreadItemObject,
    /// Unix seconds.
    pub created_at: i64,
    pub thread_id: String,
    pub heading: Option<String>,
    pub summary: Option<String>,
    pub task_type: ChatKitTaskType,
}

/// `chatkit.task_group`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitTaskGroup {
    pub id: String,
    pub object: ThreadItemObject,
    /// Unix seconds.
    pub created_at: i64,
    pub thread_id: String,
    pub tasks: Vec<ChatKitTaskGroupTask>,
}

/// One task of a `chatkit.task_group`.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitTaskGroupTask {
    pub heading: Option<String>,
    pub summary: Option<String>,
    #[serde(rename = "type")]
    pub kind: ChatKitTaskType,
}

impl ChatKitThreadItem {
    pub fn id(&self) -> &str {
        match self {
            ChatKitThreadItem::UserMessage(item) => &item.id,
            ChatKitThreadItem::AssistantMessage(item) => &item.id,
            ChatKitThreadItem::Widget(item) => &item.id,
            ChatKitThreadItem::ClientToolCall(item) => &item.id,
            ChatKitThreadItem::Task(item) => &item.id,
            ChatKitThreadItem::TaskGroup(item) => &item.id,
        }
    }

    /// The item in the hosted API's shapes, or `None` for the items it does not
    /// show: hidden context (never sent to clients) and end-of-turn markers.
    ///
    /// Types the hosted union lacks take the nearest shape: a generated image
    /// becomes an assistant message with the image as Markdown and a URL
    /// annotation (a task while it is still generating), a workflow a task
    /// group, a structured input a task group with one task per question (the
    /// answer as its summary), and tasks other than thoughts custom tasks.
    pub fn from_item(item: &ThreadItem) -> Option<Self> {
        let id = item.id.clone();
        let object = ThreadItemObject::Tag;
        let created_at = item.created_at.unix_seconds();
        let thread_id = item.thread_id.clone();
        Some(match &item.body {
            ItemBody::UserMessage(message) => {
                let quoted =
                    message.quoted_text.iter().map(|text| ChatKitUserContent::QuotedText { text: text.clone() });
                let typed = message.content.iter().map(|part| match part {
                    UserMessageContent::InputText { text } | UserMessageContent::InputTag { text, .. } => {
                        ChatKitUserContent::InputText { text: text.clone() }
                    }
                });
                let options = &message.inference_options;
                let inference_options =
                    (options.model.is_some() || options.tool_choice.is_some()).then(|| ChatKitInferenceOptions {
                        model: options.model.clone(),
                        tool_choice: options
                            .tool_choice
                            .as_ref()
                            .map(|choice| ChatKitToolChoice { id: choice.id.clone() }),
                    });
                ChatKitThreadItem::UserMessage(ChatKitUserMessageItem {
                    id,
                    object,
                    created_at,
                    thread_id,
                    content: quoted.chain(typed).collect(),
                    attachments: message.attachments.iter().map(hosted_attachment).collect(),
                    inference_options,
                })
            }
            ItemBody::AssistantMessage { content } => {
                let content = content
                    .iter()
                    .map(|part| ChatKitResponseOutputText {
                        annotations: part.annotations.iter().filter_map(hosted_annotation).collect(),
                        text: part.text.clone(),
                        kind: OutputTextType::Tag,
                    })
                    .collect();
                ChatKitThreadItem::AssistantMessage(ChatKitAssistantMessageItem {
                    id,
                    object,
                    created_at,
                    thread_id,
                    content,
                })
            }
            ItemBody::Widget { widget, .. } => ChatKitThreadItem::Widget(ChatKitWidgetItem {
                id,
                object,
                created_at,
                thread_id,
                widget: widget.to_string(),
            }),
            ItemBody::ClientToolCall(call) => ChatKitThreadItem::ClientToolCall(ChatKitClientToolCall {
                id,
                object,
                created_at,
                thread_id,
                arguments: Value::Object(call.arguments.clone()).to_string(),
                call_id: call.call_id.clone(),
                name: call.name.clone(),
                output: call.output.as_ref().map(Value::to_string),
                status: match call.status {
                    ToolCallStatus::Pending => ChatKitToolCallStatus::InProgress,
                    ToolCallStatus::Completed => ChatKitToolCallStatus::Completed,
                },
            }),
            ItemBody::GeneratedImage { image: Some(image) } => {
                ChatKitThreadItem::AssistantMessage(ChatKitAssistantMessageItem {
                    id,
                    object,
                    created_at,
                    thread_id,
                    content: vec![ChatKitResponseOutputText {
                        annotations: vec![ChatKitAnnotation::Url {
                            source: ChatKitUrlSource { kind: UrlSourceType::Tag, url: image.url.clone() },
                        }],
                        text: format!("![Generated image]({})", image.url),
                        kind: OutputTextType::Tag,
                    }],
                })
            }
            ItemBody::GeneratedImage { image: None } => ChatKitThreadItem::Task(ChatKitTask {
                id,
                object,
                created_at,
                thread_id,
                heading: Some("Generating image".to_string()),
                summary: None,
                task_type: ChatKitTaskType::Custom,
            }),
            ItemBody::Task { task } => {
                let (kind, heading, summary) = hosted_task(task);
                ChatKitThreadItem::Task(ChatKitTask {
                    id,
                    object,
                    created_at,
                    thread_id,
                    heading,
                    summary,
                    task_type: kind,
                })
            }
            ItemBody::Workflow { workflow } => ChatKitThreadItem::TaskGroup(ChatKitTaskGroup {
                id,
                object,
                created_at,
                thread_id,
                tasks: workflow
                    .tasks
                    .iter()
                    .map(|task| {
                        let (kind, heading, summary) = hosted_task(task);
                        ChatKitTaskGroupTask { heading, summary, kind }
                    })
                    .collect(),
            }),
            ItemBody::StructuredInput(request) => ChatKitThreadItem::TaskGroup(ChatKitTaskGroup {
                id,
                object,
                created_at,
                thread_id,
                tasks: request.inputs.iter().map(hosted_question).collect(),
            }),
            ItemBody::HiddenContext { .. } | ItemBody::SdkHiddenContext { .. } | ItemBody::EndOfTurn {} => return None,
        })
    }
}

fn hosted_attachment(attachment: &Attachment) -> ChatKitAttachment {
    let (kind, preview_url) = match &attachment.kind {
        AttachmentKind::File {} => (ChatKitAttachmentType::File, None),
        AttachmentKind::Image { preview_url } => (ChatKitAttachmentType::Image, Some(preview_url.clone())),
    };
    ChatKitAttachment {
        id: attachment.id.clone(),
        mime_type: attachment.mime_type.clone(),
        name: attachment.name.clone(),
        preview_url,
        kind,
    }
}

/// A URL or file citation; entity citations have no hosted shape and are left out.
fn hosted_annotation(annotation: &Annotation) -> Option<ChatKitAnnotation> {
    match &annotation.source {
        Source::Url(source) => Some(ChatKitAnnotation::Url {
            source: ChatKitUrlSource { kind: UrlSourceType::Tag, url: source.url.clone() },
        }),
        Source::File(source) => Some(ChatKitAnnotation::File {
            source: ChatKitFileSource { filename: source.filename.clone(), kind: FileSourceType::Tag },
        }),
        Source::Entity(_) => None,
    }
}

/// A task's hosted kind, heading and summary: thoughts stay thoughts, every
/// other kind becomes a custom task whose summary lists what it carried.
fn hosted_task(task: &Task) -> (ChatKitTaskType, Option<String>, Option<String>) {
    let lines = |lines: Vec<String>| (!lines.is_empty()).then(|| lines.join("\n"));
    match task {
        Task::Custom { title, content, .. } => (ChatKitTaskType::Custom, title.clone(), content.clone()),
        Task::Thought { title, content, .. } => (ChatKitTaskType::Thought, title.clone(), Some(content.clone())),
        Task::WebSearch { title, title_query, queries, sources, .. } => {
            let sources = sources.iter().map(|source| format!("{} ({})", source.base.title, source.url));
            (
                ChatKitTaskType::Custom,
                title.clone().or_else(|| title_query.clone()),
                lines(queries.iter().cloned().chain(sources).collect()),
            )
        }
        Task::File { title, sources, .. } => (
            ChatKitTaskType::Custom,
            title.clone(),
            lines(sources.iter().map(|source| source.filename.clone()).collect()),
        ),
        Task::Image { title, .. } => (ChatKitTaskType::Custom, title.clone(), None),
    }
}

/// One question of a structured input as a custom task: the question as its
/// heading, the answer (values, `(skipped)`, or `null` while pending) as its summary.
fn hosted_question(input: &StructuredInput) -> ChatKitTaskGroupTask {
    let question = match input {
        StructuredInput::MultipleChoice { question, .. } | StructuredInput::Freeform { question, .. } => question,
    };
    let summary =
        input.answer().map(|answer| if answer.skipped { "(skipped)".to_string() } else { answer.values.join(", ") });
    ChatKitTaskGroupTask { heading: Some(question.clone()), summary, kind: ChatKitTaskType::Custom }
}
