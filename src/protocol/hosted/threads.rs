//! Threads in the `/v1` API: `chatkit.thread` with its status, the status
//! change an operator posts, the answers to deletion and cancellation, and the
//! schema of the protocol's thread that the status endpoint answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ChatKitThreadItemList, ThreadDeletedObject, ThreadObject};
use crate::protocol::{Thread, ThreadMetadata, ThreadStatus};

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

impl From<HostedThreadStatus> for ThreadStatus {
    fn from(status: HostedThreadStatus) -> Self {
        match status {
            HostedThreadStatus::Active => ThreadStatus::Active,
            HostedThreadStatus::Locked { reason } => ThreadStatus::Locked { reason },
            HostedThreadStatus::Closed { reason } => ThreadStatus::Closed { reason },
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

    pub fn id(&self) -> &str {
        &self.id
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

/// The ChatKit protocol's thread (with a page of protocol items), as the
/// status endpoint answers it; documented by hand because the protocol types
/// describe the `/chatkit` wire format, not this API's.
impl utoipa::PartialSchema for Thread {
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

impl ToSchema for Thread {
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
