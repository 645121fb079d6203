//! Wire types of the hosted ChatKit service's REST API (`/v1/chatkit/...`), as
//! the `openai` Python SDK's `types/beta/chatkit` describes them: sessions,
//! threads and thread items, with the conversions from the ChatKit protocol's
//! types. Their `ToSchema` derives make the `/v1/openapi.json` document.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{
    Annotation, AttachmentKind, ItemBody, Order, Source, StructuredInput, Task, ThreadItem, ThreadMetadata,
    ThreadStatus, ToolCallStatus, UserMessageContent,
};

/// How long a session lives when `expires_after` is not given, in seconds.
pub const DEFAULT_SESSION_SECONDS: i64 = 600;
/// The per-minute request limit when `rate_limits` is not given.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 10;
/// The largest upload the hosted service allows, in megabytes.
pub const MAX_FILE_SIZE_MB: u32 = 512;
const MAX_SESSION_SECONDS: i64 = 30 * 24 * 3600;
const MAX_STATE_KEY_CHARS: usize = 64;

/// `POST /v1/chatkit/sessions`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCreateParams {
    pub user: String,
    pub workflow: WorkflowParam,
    #[serde(default)]
    pub chatkit_configuration: ConfigurationParam,
    #[serde(default)]
    pub expires_after: Option<ExpiresAfter>,
    #[serde(default)]
    pub rate_limits: Option<RateLimitsParam>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowParam {
    pub id: String,
    #[serde(default)]
    #[schema(value_type = Option<HashMap<String, Value>>)]
    pub state_variables: Option<Map<String, Value>>,
    #[serde(default)]
    pub tracing: Option<Toggle>,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Toggle {
    pub enabled: bool,
}

#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigurationParam {
    #[serde(default)]
    pub automatic_thread_titling: Option<Toggle>,
    #[serde(default)]
    pub file_upload: Option<FileUploadParam>,
    #[serde(default)]
    pub history: Option<HistoryParam>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileUploadParam {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub max_file_size: Option<u32>,
    #[serde(default)]
    pub max_files: Option<u32>,
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryParam {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub recent_threads: Option<u32>,
}

/// `expires_after`: seconds from creation, as a number or as the API's
/// `{"anchor": "created_at", "seconds": n}`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExpiresAfter {
    Seconds(i64),
    Anchored { anchor: String, seconds: i64 },
}

#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsParam {
    pub max_requests_per_1_minute: u32,
}

/// A session's settings as resolved and answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSettings {
    pub chatkit_configuration: Configuration,
    pub rate_limits: RateLimits,
    pub workflow: Workflow,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionChatKitConfiguration)]
pub struct Configuration {
    pub automatic_thread_titling: Toggle,
    pub file_upload: FileUpload,
    pub history: History,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionFileUpload)]
pub struct FileUpload {
    pub enabled: bool,
    pub max_file_size: Option<u32>,
    pub max_files: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionHistory)]
pub struct History {
    pub enabled: bool,
    pub recent_threads: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatSessionRateLimits)]
pub struct RateLimits {
    pub max_requests_per_1_minute: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = ChatKitWorkflow)]
pub struct Workflow {
    pub id: String,
    #[schema(value_type = Option<HashMap<String, Value>>)]
    pub state_variables: Option<Map<String, Value>>,
    pub tracing: Toggle,
    pub version: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = ChatSessionStatus)]
pub enum SessionStatus {
    Active,
    Expired,
    Cancelled,
}

/// `chatkit.session`, as answered by create and cancel.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatSession {
    pub id: String,
    /// Always `chatkit.session`.
    #[schema(value_type = SessionObject)]
    pub object: &'static str,
    pub client_secret: String,
    pub expires_at: i64,
    pub max_requests_per_1_minute: u32,
    pub rate_limits: RateLimits,
    pub status: SessionStatus,
    pub user: String,
    pub workflow: Workflow,
    pub chatkit_configuration: Configuration,
}

impl SessionCreateParams {
    /// Checks the parameters and resolves defaults: the settings and the
    /// lifetime in seconds. Errors name the offending field.
    pub fn resolve(self) -> Result<(String, SessionSettings, i64), String> {
        let user = self.user.trim().to_string();
        if user.is_empty() || user.len() > 256 {
            return Err("`user` must be 1 to 256 bytes".into());
        }
        if self.workflow.id.trim().is_empty() {
            return Err("`workflow.id` must not be empty".into());
        }
        if let Some(variables) = &self.workflow.state_variables {
            for (key, value) in variables {
                if key.chars().count() > MAX_STATE_KEY_CHARS {
                    return Err(format!("`workflow.state_variables` key `{key}` is longer than 64 characters"));
                }
                if !(value.is_string() || value.is_boolean() || value.is_number()) {
                    return Err(format!("`workflow.state_variables.{key}` must be a string, a boolean or a number"));
                }
            }
        }
        let seconds = match self.expires_after {
            None => DEFAULT_SESSION_SECONDS,
            Some(ExpiresAfter::Seconds(seconds)) => seconds,
            Some(ExpiresAfter::Anchored { anchor, seconds }) => {
                if anchor != "created_at" {
                    return Err(format!("`expires_after.anchor` must be `created_at`, got `{anchor}`"));
                }
                seconds
            }
        };
        if !(1..=MAX_SESSION_SECONDS).contains(&seconds) {
            return Err(format!("`expires_after` must be 1 to {MAX_SESSION_SECONDS} seconds, got {seconds}"));
        }
        let limit = self.rate_limits.map_or(DEFAULT_REQUESTS_PER_MINUTE, |r| r.max_requests_per_1_minute);
        if limit == 0 {
            return Err("`rate_limits.max_requests_per_1_minute` must be at least 1".into());
        }
        let configuration = self.chatkit_configuration;
        let upload = configuration.file_upload;
        let max_file_size = upload.as_ref().and_then(|u| u.max_file_size);
        if let Some(size) = max_file_size {
            if !(1..=MAX_FILE_SIZE_MB).contains(&size) {
                return Err(format!(
                    "`chatkit_configuration.file_upload.max_file_size` must be 1 to {MAX_FILE_SIZE_MB} (MB)"
                ));
            }
        }
        let settings = SessionSettings {
            chatkit_configuration: Configuration {
                automatic_thread_titling: configuration.automatic_thread_titling.unwrap_or(Toggle { enabled: true }),
                file_upload: FileUpload {
                    enabled: upload.as_ref().and_then(|u| u.enabled).unwrap_or(false),
                    max_file_size: Some(max_file_size.unwrap_or(MAX_FILE_SIZE_MB)),
                    max_files: Some(upload.as_ref().and_then(|u| u.max_files).unwrap_or(10)),
                },
                history: History {
                    enabled: configuration.history.as_ref().and_then(|h| h.enabled).unwrap_or(true),
                    recent_threads: configuration.history.as_ref().and_then(|h| h.recent_threads),
                },
            },
            rate_limits: RateLimits { max_requests_per_1_minute: limit },
            workflow: Workflow {
                id: self.workflow.id,
                state_variables: Some(self.workflow.state_variables.unwrap_or_default()),
                tracing: self.workflow.tracing.unwrap_or(Toggle { enabled: true }),
                version: self.workflow.version,
            },
        };
        Ok((user, settings, seconds))
    }
}

// ---------------------------------------------------------------------------
// The threads API: `/v1/chatkit/threads`, `…/{thread_id}` and `…/{thread_id}/items`.

/// The default page size of the threads API's listings.
pub const DEFAULT_LIST_LIMIT: usize = 20;
/// The largest page size the threads API's listings accept.
pub const MAX_LIST_LIMIT: usize = 100;

/// Declares a one-value enum that serializes as a fixed string and documents
/// itself as that one value, for the `object` and `type` fields of the hosted types.
///
/// The value is taken as a raw token (`tt`), not as a `literal` fragment: the
/// schema derive does not see through the group a `literal` fragment becomes,
/// and would document the variant's Rust name instead.
macro_rules! hosted_tag {
    ($(#[$meta:meta])* $name:ident, $value:tt) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
        pub enum $name {
            #[default]
            #[serde(rename = $value)]
            Tag,
        }
    };
}

hosted_tag!(
    /// Always `chatkit.session`.
    SessionObject,
    "chatkit.session"
);
hosted_tag!(
    /// Always `chatkit.thread`.
    ThreadObject,
    "chatkit.thread"
);
hosted_tag!(
    /// Always `chatkit.thread_item`.
    ThreadItemObject,
    "chatkit.thread_item"
);
hosted_tag!(
    /// Always `chatkit.thread.deleted`.
    ThreadDeletedObject,
    "chatkit.thread.deleted"
);
hosted_tag!(
    /// Always `list`.
    ListObject,
    "list"
);
hosted_tag!(
    /// Always `output_text`.
    OutputTextType,
    "output_text"
);
hosted_tag!(
    /// Always `url`.
    UrlSourceType,
    "url"
);
hosted_tag!(
    /// Always `file`.
    FileSourceType,
    "file"
);

/// The sort order of a listing, by creation time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SortOrder {
    /// Oldest first.
    Asc,
    /// Newest first.
    #[default]
    Desc,
}

impl SortOrder {
    /// Reads a query parameter's value: `asc` or `desc`, nothing else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "asc" => Some(SortOrder::Asc),
            "desc" => Some(SortOrder::Desc),
            _ => None,
        }
    }
}

impl From<SortOrder> for Order {
    fn from(order: SortOrder) -> Self {
        match order {
            SortOrder::Asc => Order::Asc,
            SortOrder::Desc => Order::Desc,
        }
    }
}

/// The query parameters of `GET /v1/chatkit/threads/{thread_id}/items`.
#[derive(Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemListParams {
    /// List the records that follow this record id in the listing's order.
    pub after: Option<String>,
    /// List the records that precede this record id in the listing's order (the `limit` closest to it).
    pub before: Option<String>,
    /// How many records to answer, 1 to 100; default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `asc` (oldest first) or `desc` (newest first); default `desc`.
    #[param(inline)]
    pub order: Option<SortOrder>,
}

/// The query parameters of `GET /v1/chatkit/threads`: those of every listing and `user`.
#[derive(Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThreadListParams {
    /// List the threads that follow this thread id in the listing's order.
    pub after: Option<String>,
    /// List the threads that precede this thread id in the listing's order (the `limit` closest to it).
    pub before: Option<String>,
    /// How many threads to answer, 1 to 100; default 20.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
    /// `asc` (oldest first) or `desc` (newest first); default `desc`.
    #[param(inline)]
    pub order: Option<SortOrder>,
    /// Only the threads of this user; default every user's.
    pub user: Option<String>,
}

/// A thread's lifecycle status; `reason` is `null` when none was given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
#[schema(as = ChatKitThreadStatus)]
pub enum HostedThreadStatus {
    /// The thread takes new input.
    Active,
    /// The thread refuses new input, with the reason shown to its user.
    Locked {
        #[serde(default)]
        reason: Option<String>,
    },
    /// The thread is closed, with the reason shown to its user.
    Closed {
        #[serde(default)]
        reason: Option<String>,
    },
}

impl From<&ThreadStatus> for HostedThreadStatus {
    fn from(status: &ThreadStatus) -> Self {
        match status {
            ThreadStatus::Active => HostedThreadStatus::Active,
            ThreadStatus::Locked { reason } => HostedThreadStatus::Locked { reason: reason.clone() },
            ThreadStatus::Closed { reason } => HostedThreadStatus::Closed { reason: reason.clone() },
        }
    }
}

/// `chatkit.thread`: a thread, its owner and its status.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitThread {
    pub id: String,
    pub object: ThreadObject,
    /// Unix seconds.
    pub created_at: i64,
    pub status: HostedThreadStatus,
    pub title: Option<String>,
    /// The user who owns the thread.
    pub user: String,
    /// Only in `GET /v1/chatkit/threads/{thread_id}` (a gateway extension): the
    /// first page of the thread's items, as `GET …/items` answers it by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub items: Option<ChatKitThreadItemList>,
}

impl ChatKitThread {
    pub fn new(user: &str, thread: &ThreadMetadata) -> Self {
        ChatKitThread {
            id: thread.id.clone(),
            object: ThreadObject::Tag,
            created_at: thread.created_at.unix_seconds(),
            status: HostedThreadStatus::from(&thread.status),
            title: thread.title.clone(),
            user: user.to_string(),
            items: None,
        }
    }
}

/// A page of threads: `object: "list"` with the ids of its first and last thread.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitThreadList {
    pub object: ListObject,
    pub data: Vec<ChatKitThread>,
    /// The id of the first thread of the page; `null` when it is empty.
    pub first_id: Option<String>,
    /// The id of the last thread of the page, the `after` of the next page; `null` when it is empty.
    pub last_id: Option<String>,
    /// Whether threads remain beyond the page in the direction of travel.
    pub has_more: bool,
}

impl ChatKitThreadList {
    pub fn new(data: Vec<ChatKitThread>, has_more: bool) -> Self {
        let first_id = data.first().map(|thread| thread.id.clone());
        let last_id = data.last().map(|thread| thread.id.clone());
        ChatKitThreadList { object: ListObject::Tag, data, first_id, last_id, has_more }
    }
}

/// A page of thread items: `object: "list"` with the ids of its first and last item.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChatKitThreadItemList {
    pub object: ListObject,
    pub data: Vec<ChatKitThreadItem>,
    /// The id of the first item of the page; `null` when it is empty.
    pub first_id: Option<String>,
    /// The id of the last item of the page, the `after` of the next page; `null` when it is empty.
    pub last_id: Option<String>,
    /// Whether items remain beyond the page in the direction of travel.
    pub has_more: bool,
}

impl ChatKitThreadItemList {
    pub fn new(data: Vec<ChatKitThreadItem>, has_more: bool) -> Self {
        let first_id = data.first().map(|item| item.id().to_string());
        let last_id = data.last().map(|item| item.id().to_string());
        ChatKitThreadItemList { object: ListObject::Tag, data, first_id, last_id, has_more }
    }
}

/// `chatkit.thread.deleted`: the answer to a deletion.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ThreadDeleteResponse {
    pub id: String,
    pub object: ThreadDeletedObject,
    pub deleted: bool,
}

impl ThreadDeleteResponse {
    pub fn new(id: String) -> Self {
        ThreadDeleteResponse { id, object: ThreadDeletedObject::Tag, deleted: true }
    }
}

/// The body of `POST /v1/chatkit/threads/{thread_id}/status`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct ThreadStatusChange {
    #[serde(flatten)]
    pub status: HostedThreadStatus,
    /// Cancel the running turn first (its partial output is kept) instead of waiting for it.
    #[serde(default)]
    pub cancel_running: bool,
}

/// The answer of `POST /v1/chatkit/threads/{thread_id}/cancel`.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ThreadCancelResponse {
    pub id: String,
    /// Whether a turn was running (on any replica) and was told to stop.
    pub cancelled: bool,
}

/// Every error answer of the gateway.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorObject,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// What went wrong, naming the offending parameter or field.
    pub message: String,
    /// The error family, e.g. `invalid_request_error`, `not_found_error`, `authentication_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// A stable code, e.g. `invalid_request`, `not_found`, `unauthorized`.
    pub code: String,
}

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

fn hosted_attachment(attachment: &super::Attachment) -> ChatKitAttachment {
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

/// The ChatKit protocol's thread (with a page of protocol items), as the
/// status endpoint answers it; documented by hand because the protocol types
/// describe the `/chatkit` wire format, not this API's.
impl utoipa::PartialSchema for super::Thread {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let any_object = || ObjectBuilder::new().schema_type(Type::Object);
        let items = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "data",
                ArrayBuilder::new().items(any_object().description(Some("A ChatKit protocol `ThreadItem`."))),
            )
            .property("has_more", ObjectBuilder::new().schema_type(Type::Boolean))
            .property("after", string())
            .required("data")
            .required("has_more");
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("A thread as the ChatKit protocol (`POST /chatkit`) sends it, with a page of its items."))
            .property("id", string())
            .property("title", string())
            .property("created_at", string().description(Some("ISO 8601 in UTC, without an offset.")))
            .property("status", utoipa::openapi::Ref::from_schema_name(<HostedThreadStatus as ToSchema>::name()))
            .property("allowed_image_domains", ArrayBuilder::new().items(string()))
            .property("metadata", any_object())
            .property("items", items)
            .required("id")
            .required("created_at")
            .required("status")
            .required("items")
            .into()
    }
}

impl ToSchema for super::Thread {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ChatKitProtocolThread")
    }

    fn schemas(schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
        schemas.push((
            <HostedThreadStatus as ToSchema>::name().into_owned(),
            <HostedThreadStatus as utoipa::PartialSchema>::schema(),
        ));
        <HostedThreadStatus as ToSchema>::schemas(schemas);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn resolve(body: Value) -> Result<(String, SessionSettings, i64), String> {
        serde_json::from_value::<SessionCreateParams>(body).map_err(|e| e.to_string())?.resolve()
    }

    #[test]
    fn defaults_follow_the_hosted_service() {
        let (user, settings, seconds) = resolve(json!({"user": "u1", "workflow": {"id": "wf_1"}})).unwrap();
        assert_eq!((user.as_str(), seconds), ("u1", 600));
        assert_eq!(settings.rate_limits.max_requests_per_1_minute, 10);
        let configuration = serde_json::to_value(&settings.chatkit_configuration).unwrap();
        assert_eq!(
            configuration,
            json!({"automatic_thread_titling": {"enabled": true},
                   "file_upload": {"enabled": false, "max_file_size": 512, "max_files": 10},
                   "history": {"enabled": true, "recent_threads": null}})
        );
        assert_eq!(
            serde_json::to_value(&settings.workflow).unwrap(),
            json!({"id": "wf_1", "state_variables": {}, "tracing": {"enabled": true}, "version": null})
        );
    }

    #[test]
    fn expiry_takes_both_shapes_and_bad_fields_are_named() {
        assert_eq!(resolve(json!({"user": "u", "workflow": {"id": "w"}, "expires_after": 5})).unwrap().2, 5);
        let anchored =
            json!({"user": "u", "workflow": {"id": "w"}, "expires_after": {"anchor": "created_at", "seconds": 9}});
        assert_eq!(resolve(anchored).unwrap().2, 9);
        for (body, needle) in [
            (json!({"user": "", "workflow": {"id": "w"}}), "`user`"),
            (json!({"user": "u", "workflow": {"id": " "}}), "workflow.id"),
            (json!({"user": "u", "workflow": {"id": "w"}, "expires_after": 0}), "expires_after"),
            (json!({"user": "u", "workflow": {"id": "w"}, "expires_after": {"anchor": "now", "seconds": 3}}), "anchor"),
            (
                json!({"user": "u", "workflow": {"id": "w"}, "rate_limits": {"max_requests_per_1_minute": 0}}),
                "rate_limits",
            ),
            (json!({"user": "u", "workflow": {"id": "w", "state_variables": {"k": [1]}}}), "state_variables.k"),
            (
                json!({"user": "u", "workflow": {"id": "w"}, "chatkit_configuration": {"file_upload": {"max_file_size": 600}}}),
                "max_file_size",
            ),
            (json!({"user": "u", "workflow": {"id": "w"}, "surprise": 1}), "surprise"),
            (json!({"workflow": {"id": "w"}}), "user"),
        ] {
            let error = resolve(body.clone()).unwrap_err();
            assert!(error.contains(needle), "{body}: {error}");
        }
    }
}
