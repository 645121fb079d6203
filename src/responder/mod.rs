//! The responder extension point: what answers a turn, an action or a dictation.
//!
//! The roles match the reference `ChatKitServer` methods (`respond`, `action`,
//! `sync_action`, `add_feedback`, `transcribe`). The engine persists what a
//! responder streams; a responder only produces events. Backends are
//! same-shaped files: `echo` (built in, no network), `openai` (OpenAI's
//! Responses API, or any OpenAI-compatible Chat Completions server) and `agent` (the integrator's own
//! service over signed HTTP); `router` picks one of them by the session's workflow.
//! `mcp` holds the server tools (MCP) a model responder offers and runs.

mod agent;
mod echo;
pub mod mcp;
mod openai;
mod router;
mod showcase;

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use serde_json::value::RawValue;

use crate::blobs::BlobStore;
use crate::ids::UserId;
use crate::protocol::{
    Action, FeedbackKind, Order, SyncCustomActionResponse, ThreadItem, ThreadMetadata, ThreadStatus, ThreadStreamEvent,
    TranscriptionResult,
};
use crate::sessions::ActiveSession;
use crate::store::{ListQuery, Store, Writes};

pub use agent::{AgentResponder, AgentSettings, WIRE_SCHEMA as AGENT_WIRE_SCHEMA};
pub use echo::EchoResponder;
pub use mcp::{McpRegistry, McpSettings, McpTools};
pub use openai::{
    map_recorded_stream, parse_hosted_tools, ClientTool, ModelApi, ModelSettings, OpenAiResponder, DICTATION_TYPES,
    REASONING_SUMMARIES,
};
pub use router::{WorkflowDefaults, WorkflowRouter};

/// The events of a response, in order; an `Err` ends the response with an error event.
pub type EventStream = BoxStream<'static, Result<ThreadStreamEvent, ResponderError>>;

#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    /// A failure with a well-known code (`stream.error`) that clients localize.
    #[error("stream error `{code}`")]
    Stream { code: String, allow_retry: bool },
    /// A failure with a message meant for the user.
    #[error("{message}")]
    Custom { message: String, allow_retry: bool },
    /// The caller asked for something this responder cannot do with that input.
    #[error("{0}")]
    BadRequest(String),
    /// The responder does not implement this operation at all.
    #[error("{0} is not supported by this responder")]
    Unsupported(&'static str),
    /// Anything else; logged, and shown to clients only as a generic failure.
    #[error("responder failed: {0}")]
    Internal(String),
}

/// What triggered a response.
#[derive(Clone, Debug)]
pub enum RespondInput {
    /// A new user message (already persisted).
    UserMessage(ThreadItem),
    /// `threads.retry_after_item`: answer this earlier user message again.
    Retry(ThreadItem),
    /// `threads.add_client_tool_output`: this tool call now has its output.
    ClientToolOutput(ThreadItem),
    /// `threads.add_structured_input`: this structured input item was answered.
    StructuredInput(ThreadItem),
}

impl RespondInput {
    pub fn item(&self) -> &ThreadItem {
        match self {
            RespondInput::UserMessage(item)
            | RespondInput::Retry(item)
            | RespondInput::ClientToolOutput(item)
            | RespondInput::StructuredInput(item) => item,
        }
    }
}

/// The thread a turn runs on, shared between the engine and the responder.
///
/// A responder may change the title or status while it responds, as the
/// reference allows; the engine notices the change after each event, persists
/// it and emits `thread.updated`.
#[derive(Clone, Debug)]
pub struct SharedThread(Arc<Mutex<Versioned>>);

#[derive(Debug)]
struct Versioned {
    thread: ThreadMetadata,
    version: u64,
}

impl SharedThread {
    pub fn new(thread: ThreadMetadata) -> Self {
        SharedThread(Arc::new(Mutex::new(Versioned { thread, version: 0 })))
    }

    fn lock(&self) -> MutexGuard<'_, Versioned> {
        // A poisoned lock only means a responder panicked mid-update; the data
        // is a plain struct and stays usable.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn snapshot(&self) -> ThreadMetadata {
        self.lock().thread.clone()
    }

    pub fn id(&self) -> String {
        self.lock().thread.id.clone()
    }

    /// A counter that grows with every change.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    pub fn title(&self) -> Option<String> {
        self.lock().thread.title.clone()
    }

    pub fn status(&self) -> ThreadStatus {
        self.lock().thread.status.clone()
    }

    /// Changes the thread; a change that leaves it equal does not count.
    pub fn update(&self, change: impl FnOnce(&mut ThreadMetadata)) {
        let mut guard = self.lock();
        let before = guard.thread.clone();
        change(&mut guard.thread);
        if guard.thread != before {
            guard.version += 1;
        }
    }

    pub fn set_title(&self, title: impl Into<String>) {
        let title = title.into();
        self.update(|thread| thread.title = Some(title));
    }

    pub fn set_status(&self, status: ThreadStatus) {
        self.update(|thread| thread.status = status);
    }
}

/// What a responder gets for a turn or an action.
#[derive(Clone)]
pub struct TurnContext {
    pub user: UserId,
    pub thread: SharedThread,
    /// The store, for reading history. Calls must pass `user`.
    pub store: Arc<dyn Store>,
    /// Writes to this thread of what a responder saves itself (e.g. a widget updated by a sync
    /// action), under the job's fence. Calls must pass `user`.
    pub writes: Writes,
    /// The user's preferred language, from the request's `Accept-Language`
    /// (its first tag, e.g. `fr-FR`), when it named one.
    pub locale: Option<String>,
    /// The client session the request came with, when sessions authenticate:
    /// its settings (titling, workflow state variables) apply to the turn.
    pub session: Option<Arc<ActiveSession>>,
    /// Where attachment bytes are kept, for a responder that hands them on.
    pub blobs: Arc<dyn BlobStore>,
}

impl TurnContext {
    /// An uploaded attachment's bytes, `None` when there are none (not uploaded,
    /// or expired). A failing blob store is an internal error.
    pub async fn attachment_bytes(&self, attachment_id: &str) -> Result<Option<Bytes>, ResponderError> {
        match self.blobs.get(&crate::blobs::attachment_name(attachment_id)).await {
            Ok(bytes) => Ok(bytes),
            Err(crate::blobs::BlobError::InvalidName(_)) => Ok(None),
            Err(err) => Err(ResponderError::Internal(format!("cannot read attachment `{attachment_id}`: {err}"))),
        }
    }

    /// The thread's newest `count` items (at least one), oldest first, hidden context included.
    pub async fn recent_items(&self, count: usize) -> Result<Vec<ThreadItem>, ResponderError> {
        let query = ListQuery::first(count.max(1), Order::Desc);
        let page = self
            .store
            .list_items(&self.user, &self.thread.id(), &query)
            .await
            .map_err(|e| ResponderError::Internal(format!("cannot load the thread's items: {e}")))?;
        let mut items = page.data;
        items.reverse();
        Ok(items)
    }

    /// The same items as the JSON they are stored as, for a responder that only forwards them.
    pub async fn recent_items_json(&self, count: usize) -> Result<Vec<Box<RawValue>>, ResponderError> {
        self.store
            .recent_items_json(&self.user, &self.thread.id(), count.max(1))
            .await
            .map_err(|e| ResponderError::Internal(format!("cannot load the thread's items: {e}")))
    }
}

/// Recorded speech to transcribe.
#[derive(Clone, Debug)]
pub struct AudioInput {
    pub data: Bytes,
    /// The raw MIME type, e.g. `audio/webm;codecs=opus`.
    pub mime_type: String,
}

impl AudioInput {
    /// The media type without parameters, e.g. `audio/webm`.
    pub fn media_type(&self) -> &str {
        self.mime_type.split(';').next().unwrap_or_default().trim()
    }
}

/// Produces the assistant's side of a conversation.
#[async_trait]
pub trait Responder: Send + Sync + 'static {
    /// A short name for logs and metrics, e.g. `echo`.
    fn name(&self) -> &'static str;

    /// Whether sessions of workflow `id` may be created: only a workflows file names the
    /// workflows it serves, so every other responder serves them all.
    fn serves_workflow(&self, id: &str) -> bool {
        let _ = id;
        true
    }

    /// The responder that answers the operations of `session` that carry no `TurnContext`
    /// (feedback, dictation): a router's pick by the session's workflow; `None` for this one.
    fn for_session(&self, session: Option<&ActiveSession>) -> Option<Arc<dyn Responder>> {
        let _ = session;
        None
    }

    /// Streams the response to a user message, a tool output, a structured
    /// input or a retry.
    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream;

    /// Streams the response to a widget or client action (`threads.custom_action`).
    fn action(&self, turn: TurnContext, action: Action, sender: Option<ThreadItem>) -> EventStream {
        let _ = (turn, action, sender);
        Box::pin(stream::once(async { Err(ResponderError::Unsupported("threads.custom_action")) }))
    }

    /// Answers an action with at most one updated item (`threads.sync_custom_action`).
    async fn sync_action(
        &self,
        turn: TurnContext,
        action: Action,
        sender: Option<ThreadItem>,
    ) -> Result<SyncCustomActionResponse, ResponderError> {
        let _ = (turn, action, sender);
        Err(ResponderError::Unsupported("threads.sync_custom_action"))
    }

    /// Records feedback on items; the default accepts and forgets it, as the reference does.
    async fn add_feedback(
        &self,
        user: &UserId,
        thread_id: &str,
        item_ids: &[String],
        kind: FeedbackKind,
    ) -> Result<(), ResponderError> {
        let _ = (user, thread_id, item_ids, kind);
        Ok(())
    }

    /// Turns speech into composer text (`input.transcribe`).
    async fn transcribe(&self, user: &UserId, audio: AudioInput) -> Result<TranscriptionResult, ResponderError> {
        let _ = (user, audio);
        Err(ResponderError::Unsupported("input.transcribe"))
    }
}
