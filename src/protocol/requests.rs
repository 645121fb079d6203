//! Requests to `POST /chatkit`, parsed with errors that name the problem.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{value::RawValue, Map, Value};

use super::{InferenceOptions, ThreadItem, UserMessageContent};

/// Why a request body could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("request is missing `type`")]
    MissingType,
    #[error("unknown request type `{0}`; expected one of: {known}", known = Request::OPS.join(", "))]
    UnknownType(String),
    #[error("request `{0}` is missing `params`")]
    MissingParams(String),
    #[error("invalid params for `{op}`: {detail}")]
    InvalidParams { op: String, detail: String },
}

/// Sort order of a listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    #[default]
    Desc,
}

/// What a user typed, before attachment ids are resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserMessageInput {
    pub content: Vec<UserMessageContent>,
    /// Attachment ids. ChatKit.js always sends the list; a missing one means none.
    #[serde(default)]
    pub attachments: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quoted_text: Option<String>,
    #[serde(default)]
    pub inference_options: InferenceOptions,
}

/// A widget or client action: a type and an arbitrary payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub payload: Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedbackKind {
    Positive,
    Negative,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ThreadIdParams {
    pub thread_id: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CreateThreadParams {
    pub input: UserMessageInput,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub order: Order,
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ItemsListParams {
    pub thread_id: String,
    #[serde(flatten)]
    pub page: ListParams,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AddUserMessageParams {
    pub thread_id: String,
    pub input: UserMessageInput,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AddClientToolOutputParams {
    pub thread_id: String,
    pub result: Value,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct StructuredInputAnswerSubmission {
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub skipped: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubmissionStatus {
    #[default]
    Answered,
    Skipped,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct StructuredInputSubmission {
    #[serde(default)]
    pub status: SubmissionStatus,
    #[serde(default)]
    pub answers: std::collections::BTreeMap<String, StructuredInputAnswerSubmission>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AddStructuredInputParams {
    pub thread_id: String,
    pub item_id: String,
    pub input: StructuredInputSubmission,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CustomActionParams {
    pub thread_id: String,
    #[serde(default)]
    pub item_id: Option<String>,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ItemRefParams {
    pub thread_id: String,
    pub item_id: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FeedbackParams {
    pub thread_id: String,
    pub item_ids: Vec<String>,
    pub kind: FeedbackKind,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct AttachmentIdParams {
    pub attachment_id: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct CreateAttachmentParams {
    pub name: String,
    pub size: i64,
    pub mime_type: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TranscribeParams {
    pub audio_base64: String,
    pub mime_type: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct UpdateThreadParams {
    pub thread_id: String,
    pub title: String,
}

/// Every operation of the protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    // Streaming operations.
    CreateThread(CreateThreadParams),
    AddUserMessage(AddUserMessageParams),
    AddClientToolOutput(AddClientToolOutputParams),
    AddStructuredInput(AddStructuredInputParams),
    RetryAfterItem(ItemRefParams),
    CustomAction(CustomActionParams),
    // Operations answered with JSON.
    GetThread(ThreadIdParams),
    ListThreads(ListParams),
    ListItems(ItemsListParams),
    Feedback(FeedbackParams),
    CreateAttachment(CreateAttachmentParams),
    DeleteAttachment(AttachmentIdParams),
    UpdateThread(UpdateThreadParams),
    DeleteThread(ThreadIdParams),
    Transcribe(TranscribeParams),
    SyncCustomAction(CustomActionParams),
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    op: Option<String>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<Map<String, Value>>,
}

impl Request {
    /// The wire names of all operations, streaming ones first.
    pub const OPS: [&'static str; 16] = [
        "threads.create",
        "threads.add_user_message",
        "threads.add_client_tool_output",
        "threads.add_structured_input",
        "threads.retry_after_item",
        "threads.custom_action",
        "threads.get_by_id",
        "threads.list",
        "items.list",
        "items.feedback",
        "attachments.create",
        "attachments.delete",
        "threads.update",
        "threads.delete",
        "input.transcribe",
        "threads.sync_custom_action",
    ];

    /// Parses a request body. Unknown extra fields are ignored, as the reference does.
    pub fn parse(body: &[u8]) -> Result<Request, RequestError> {
        // serde reads structs from arrays too; the protocol only has objects.
        if !starts_with_brace(body) {
            return match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(e) => Err(RequestError::InvalidJson(e.to_string())),
                Ok(_) => Err(RequestError::NotAnObject),
            };
        }
        let envelope: Envelope<'_> =
            serde_json::from_slice(body).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
        let op = envelope.op.ok_or(RequestError::MissingType)?;
        if !Self::OPS.contains(&op.as_str()) {
            return Err(RequestError::UnknownType(op));
        }
        let params = envelope.params.ok_or_else(|| RequestError::MissingParams(op.clone()))?;
        let raw = params.get();
        if !starts_with_brace(raw.as_bytes()) {
            return Err(RequestError::InvalidParams { op, detail: "`params` must be a JSON object".into() });
        }
        Ok(match op.as_str() {
            "threads.create" => Request::CreateThread(parse_params(&op, raw)?),
            "threads.add_user_message" => Request::AddUserMessage(parse_params(&op, raw)?),
            "threads.add_client_tool_output" => Request::AddClientToolOutput(parse_params(&op, raw)?),
            "threads.add_structured_input" => Request::AddStructuredInput(parse_params(&op, raw)?),
            "threads.retry_after_item" => Request::RetryAfterItem(parse_params(&op, raw)?),
            "threads.custom_action" => Request::CustomAction(parse_params(&op, raw)?),
            "threads.get_by_id" => Request::GetThread(parse_params(&op, raw)?),
            "threads.list" => Request::ListThreads(parse_params(&op, raw)?),
            "items.list" => Request::ListItems(parse_params(&op, raw)?),
            "items.feedback" => Request::Feedback(parse_params(&op, raw)?),
            "attachments.create" => Request::CreateAttachment(parse_params(&op, raw)?),
            "attachments.delete" => Request::DeleteAttachment(parse_params(&op, raw)?),
            "threads.update" => Request::UpdateThread(parse_params(&op, raw)?),
            "threads.delete" => Request::DeleteThread(parse_params(&op, raw)?),
            "input.transcribe" => Request::Transcribe(parse_params(&op, raw)?),
            "threads.sync_custom_action" => Request::SyncCustomAction(parse_params(&op, raw)?),
            _ => unreachable!("every name in OPS has an arm"),
        })
    }

    /// The wire name of this operation.
    pub fn op(&self) -> &'static str {
        let index = match self {
            Request::CreateThread(_) => 0,
            Request::AddUserMessage(_) => 1,
            Request::AddClientToolOutput(_) => 2,
            Request::AddStructuredInput(_) => 3,
            Request::RetryAfterItem(_) => 4,
            Request::CustomAction(_) => 5,
            Request::GetThread(_) => 6,
            Request::ListThreads(_) => 7,
            Request::ListItems(_) => 8,
            Request::Feedback(_) => 9,
            Request::CreateAttachment(_) => 10,
            Request::DeleteAttachment(_) => 11,
            Request::UpdateThread(_) => 12,
            Request::DeleteThread(_) => 13,
            Request::Transcribe(_) => 14,
            Request::SyncCustomAction(_) => 15,
        };
        Self::OPS[index]
    }

    /// The thread an operation acts on, if it names one.
    pub fn thread_id(&self) -> Option<&str> {
        match self {
            Request::AddUserMessage(p) => Some(&p.thread_id),
            Request::AddClientToolOutput(p) => Some(&p.thread_id),
            Request::AddStructuredInput(p) => Some(&p.thread_id),
            Request::RetryAfterItem(p) => Some(&p.thread_id),
            Request::CustomAction(p) | Request::SyncCustomAction(p) => Some(&p.thread_id),
            Request::GetThread(p) | Request::DeleteThread(p) => Some(&p.thread_id),
            Request::ListItems(p) => Some(&p.thread_id),
            Request::Feedback(p) => Some(&p.thread_id),
            Request::UpdateThread(p) => Some(&p.thread_id),
            Request::CreateThread(_)
            | Request::ListThreads(_)
            | Request::CreateAttachment(_)
            | Request::DeleteAttachment(_)
            | Request::Transcribe(_) => None,
        }
    }

    /// Whether the operation changes a thread, and so must run in the thread's
    /// order (streaming ops, updates, deletes, sync actions).
    pub fn changes_thread(&self) -> bool {
        self.is_streaming()
            || matches!(self, Request::UpdateThread(_) | Request::DeleteThread(_) | Request::SyncCustomAction(_))
    }

    /// Whether the operation answers with a `text/event-stream`.
    pub fn is_streaming(&self) -> bool {
        matches!(
            self,
            Request::CreateThread(_)
                | Request::AddUserMessage(_)
                | Request::AddClientToolOutput(_)
                | Request::AddStructuredInput(_)
                | Request::RetryAfterItem(_)
                | Request::CustomAction(_)
        )
    }
}

fn starts_with_brace(text: &[u8]) -> bool {
    text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn parse_params<T: DeserializeOwned>(op: &str, raw: &str) -> Result<T, RequestError> {
    let mut de = serde_json::Deserializer::from_str(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde_json appends a position that means nothing to the caller, who
        // sent the whole body, not just `params`; the path says where instead.
        let mut message = inner.to_string();
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        let detail = if path == "." { message } else { format!("params.{path}: {message}") };
        RequestError::InvalidParams { op: op.to_string(), detail }
    })
}

/// The answer to `threads.sync_custom_action`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncCustomActionResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_item: Option<ThreadItem>,
}

/// The answer to `input.transcribe`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionResult {
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_create_with_defaults_and_extra_fields() {
        let body = br#"{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"hi"}]},"x":1},"metadata":{"a":1},"extra":true}"#;
        let Request::CreateThread(params) = Request::parse(body).unwrap() else { panic!("wrong op") };
        assert_eq!(params.input.attachments, Vec::<String>::new());
        assert_eq!(params.input.inference_options, InferenceOptions::default());
    }

    #[test]
    fn names_the_problem() {
        assert!(matches!(Request::parse(b"{"), Err(RequestError::InvalidJson(_))));
        assert_eq!(Request::parse(b"{\"params\":{}}"), Err(RequestError::MissingType));
        assert_eq!(
            Request::parse(b"{\"type\":\"threads.nope\",\"params\":{}}"),
            Err(RequestError::UnknownType("threads.nope".into()))
        );
        assert_eq!(
            Request::parse(b"{\"type\":\"threads.list\"}"),
            Err(RequestError::MissingParams("threads.list".into()))
        );
        let err = Request::parse(br#"{"type":"threads.get_by_id","params":{"thread_id":5}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid params for `threads.get_by_id`: params.thread_id: invalid type: integer `5`, expected a string"
        );
        let err = Request::parse(br#"{"type":"threads.create","params":{"input":{"content":[{"type":"bad"}]}}}"#)
            .unwrap_err();
        assert!(err.to_string().contains("params.input.content[0]"), "{err}");
        assert_eq!(Request::parse(br#"["threads.list", {}]"#), Err(RequestError::NotAnObject));
        let err = Request::parse(br#"{"type":"threads.list","params":[]}"#).unwrap_err();
        assert_eq!(err.to_string(), "invalid params for `threads.list`: `params` must be a JSON object");
        assert!(matches!(Request::parse(b"[1,"), Err(RequestError::InvalidJson(_))));
    }

    #[test]
    fn every_op_round_trips_its_name() {
        for op in Request::OPS {
            let body = format!(r#"{{"type":"{op}","params":{{}}}}"#);
            match Request::parse(body.as_bytes()) {
                Ok(request) => assert_eq!(request.op(), op),
                Err(RequestError::InvalidParams { op: named, .. }) => assert_eq!(named, op),
                Err(other) => panic!("{op}: {other}"),
            }
        }
    }
}
