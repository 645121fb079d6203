//! Thread items and everything they contain: messages, attachments, sources,
//! annotations, workflows, tasks, structured inputs and widgets.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{literal_tag, Timestamp};

/// One entry of a thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadItem {
    pub id: String,
    pub thread_id: String,
    pub created_at: Timestamp,
    #[serde(flatten)]
    pub body: ItemBody,
}

impl ThreadItem {
    pub fn new(id: String, thread_id: String, body: ItemBody) -> Self {
        ThreadItem { id, thread_id, created_at: Timestamp::now(), body }
    }

    /// Hidden context is kept for the model and never sent to a client.
    pub fn is_hidden(&self) -> bool {
        matches!(self.body, ItemBody::HiddenContext { .. } | ItemBody::SdkHiddenContext { .. })
    }

    /// The wire name of this item's type, e.g. `assistant_message`.
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }
}

/// The type-specific part of a thread item, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ItemBody {
    #[serde(rename = "user_message")]
    UserMessage(UserMessage),
    #[serde(rename = "assistant_message")]
    AssistantMessage { content: Vec<AssistantMessageContent> },
    #[serde(rename = "client_tool_call")]
    ClientToolCall(ClientToolCall),
    #[serde(rename = "widget")]
    Widget {
        /// Widgets stay opaque JSON: the gateway stores and forwards them.
        widget: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copy_text: Option<String>,
    },
    #[serde(rename = "generated_image")]
    GeneratedImage {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<GeneratedImage>,
    },
    #[serde(rename = "structured_input")]
    StructuredInput(StructuredInputRequest),
    #[serde(rename = "workflow")]
    Workflow { workflow: Workflow },
    #[serde(rename = "task")]
    Task { task: Task },
    #[serde(rename = "hidden_context_item")]
    HiddenContext { content: Value },
    #[serde(rename = "sdk_hidden_context")]
    SdkHiddenContext { content: String },
    #[serde(rename = "end_of_turn")]
    EndOfTurn {},
}

impl ItemBody {
    pub fn kind(&self) -> &'static str {
        match self {
            ItemBody::UserMessage(_) => "user_message",
            ItemBody::AssistantMessage { .. } => "assistant_message",
            ItemBody::ClientToolCall(_) => "client_tool_call",
            ItemBody::Widget { .. } => "widget",
            ItemBody::GeneratedImage { .. } => "generated_image",
            ItemBody::StructuredInput(_) => "structured_input",
            ItemBody::Workflow { .. } => "workflow",
            ItemBody::Task { .. } => "task",
            ItemBody::HiddenContext { .. } => "hidden_context_item",
            ItemBody::SdkHiddenContext { .. } => "sdk_hidden_context",
            ItemBody::EndOfTurn {} => "end_of_turn",
        }
    }
}

/// A message the user sent, with its resolved attachments.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserMessage {
    pub content: Vec<UserMessageContent>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted_text: Option<String>,
    #[serde(default)]
    pub inference_options: InferenceOptions,
}

impl UserMessage {
    /// The message's text as a reader sees it: text parts and tag labels, in order.
    pub fn plain_text(&self) -> String {
        self.content
            .iter()
            .map(|part| match part {
                UserMessageContent::InputText { text } => text.as_str(),
                UserMessageContent::InputTag { text, .. } => text.as_str(),
            })
            .collect()
    }
}

/// One part of a user message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum UserMessageContent {
    #[serde(rename = "input_text")]
    InputText { text: String },
    #[serde(rename = "input_tag")]
    InputTag {
        id: String,
        text: String,
        data: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default)]
        interactive: bool,
    },
}

/// Model and tool choices made in the composer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InferenceOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolChoice {
    pub id: String,
}

literal_tag!(OutputTextTag, "output_text");
literal_tag!(AnnotationTag, "annotation");

/// Assistant output text with its annotations.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessageContent {
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    pub text: String,
    #[serde(rename = "type", default)]
    pub kind: OutputTextTag,
}

impl AssistantMessageContent {
    pub fn text(text: impl Into<String>) -> Self {
        AssistantMessageContent { annotations: Vec::new(), text: text.into(), kind: OutputTextTag::Tag }
    }
}

/// A reference to supporting context attached to assistant output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    #[serde(rename = "type", default)]
    pub kind: AnnotationTag,
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
}

/// A client tool call and, once the client answered, its output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClientToolCall {
    #[serde(default)]
    pub status: ToolCallStatus,
    pub call_id: String,
    pub name: String,
    pub arguments: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolCallStatus {
    #[default]
    Pending,
    Completed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GeneratedImage {
    pub id: String,
    pub url: String,
}

/// A request for answers to one or more questions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructuredInputRequest {
    #[serde(default)]
    pub status: StructuredInputStatus,
    pub inputs: Vec<StructuredInput>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StructuredInputStatus {
    #[default]
    Pending,
    Answered,
    Skipped,
}

/// One question of a structured input item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum StructuredInput {
    #[serde(rename = "multiple_choice")]
    MultipleChoice {
        id: String,
        question: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<StructuredInputAnswer>,
        options: Vec<StructuredInputOption>,
        #[serde(default)]
        multiple: bool,
    },
    #[serde(rename = "freeform")]
    Freeform {
        id: String,
        question: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<StructuredInputAnswer>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
}

impl StructuredInput {
    pub fn id(&self) -> &str {
        match self {
            StructuredInput::MultipleChoice { id, .. } | StructuredInput::Freeform { id, .. } => id,
        }
    }

    pub fn answer(&self) -> Option<&StructuredInputAnswer> {
        match self {
            StructuredInput::MultipleChoice { answer, .. } | StructuredInput::Freeform { answer, .. } => {
                answer.as_ref()
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StructuredInputOption {
    pub value: String,
}

/// The answer recorded for one question.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StructuredInputAnswer {
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub skipped: bool,
}

/// A workflow shown as a collapsible list of tasks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    #[serde(rename = "type")]
    pub kind: WorkflowKind,
    pub tasks: Vec<Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<WorkflowSummary>,
    #[serde(default)]
    pub expanded: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkflowKind {
    Custom,
    Reasoning,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkflowSummary {
    Custom {
        title: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        icon: Option<String>,
    },
    Duration {
        /// Seconds.
        duration: i64,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusIndicator {
    #[default]
    None,
    Loading,
    Complete,
}

/// One task of a workflow, or a task item on its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Task {
    #[serde(rename = "custom")]
    Custom {
        #[serde(default)]
        status_indicator: StatusIndicator,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        icon: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<String>,
    },
    #[serde(rename = "web_search")]
    WebSearch {
        #[serde(default)]
        status_indicator: StatusIndicator,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title_query: Option<String>,
        #[serde(default)]
        queries: Vec<String>,
        #[serde(default)]
        sources: Vec<UrlSource>,
    },
    #[serde(rename = "thought")]
    Thought {
        #[serde(default)]
        status_indicator: StatusIndicator,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        content: String,
    },
    #[serde(rename = "file")]
    File {
        #[serde(default)]
        status_indicator: StatusIndicator,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        #[serde(default)]
        sources: Vec<FileSource>,
    },
    #[serde(rename = "image")]
    Image {
        #[serde(default)]
        status_indicator: StatusIndicator,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
    },
}

/// Fields every source has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceBase {
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

literal_tag!(UrlTag, "url");
literal_tag!(FileTag, "file");
literal_tag!(EntityTag, "entity");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UrlSource {
    #[serde(rename = "type", default)]
    pub kind: UrlTag,
    #[serde(flatten)]
    pub base: SourceBase,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileSource {
    #[serde(rename = "type", default)]
    pub kind: FileTag,
    #[serde(flatten)]
    pub base: SourceBase,
    pub filename: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntitySource {
    #[serde(rename = "type", default)]
    pub kind: EntityTag,
    #[serde(flatten)]
    pub base: SourceBase,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_label: Option<String>,
    #[serde(default)]
    pub interactive: bool,
    #[serde(default)]
    pub data: Map<String, Value>,
    /// Deprecated and ignored by clients; kept so that a stored value survives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// Where an annotation points. Each variant carries its own `type` tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Source {
    Url(UrlSource),
    File(FileSource),
    Entity(EntitySource),
}

/// A file the user attached, as registered by `attachments.create`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub name: String,
    pub mime_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_descriptor: Option<UploadDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// Integration-only data; the store keeps it, clients never see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub kind: AttachmentKind,
}

impl Attachment {
    /// The attachment as sent to a client: integration metadata withheld.
    pub fn for_client(&self) -> Attachment {
        Attachment { metadata: None, ..self.clone() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum AttachmentKind {
    #[serde(rename = "file")]
    File {},
    #[serde(rename = "image")]
    Image { preview_url: String },
}

/// Where and how a client uploads an attachment's bytes in a two-phase upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadDescriptor {
    pub url: String,
    pub method: UploadMethod,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UploadMethod {
    #[serde(rename = "POST")]
    Post,
    #[serde(rename = "PUT")]
    Put,
}
