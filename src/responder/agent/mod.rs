//! The agent backend responder: forwards every operation to the integrator's own service over
//! signed HTTP requests (wire format version 1, documented in README), and streams its ChatKit
//! events back to the engine.

mod breaker;
mod call;
mod events;
mod settings;

use std::sync::Arc;

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use rand::Rng;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{AudioInput, EventStream, RespondInput, Responder, ResponderError, TurnContext};
use crate::ids::UserId;
use crate::protocol::hosted::Workflow;
use crate::protocol::{
    Action, FeedbackKind, SyncCustomActionResponse, ThreadItem, ThreadStatus, Timestamp, TranscriptionResult,
};

use call::{Caller, Failure};
use events::Checker;
pub use settings::AgentSettings;

/// The version of the wire format, sent in every request body.
const WIRE_VERSION: u32 = 1;

/// The JSON Schema of the request bodies, which the gateway serves for integrators.
pub const WIRE_SCHEMA: &str = include_str!("wire-schema.json");

pub struct AgentResponder {
    caller: Arc<Caller>,
}

impl AgentResponder {
    pub fn new(settings: AgentSettings) -> Result<Self, String> {
        crate::tls::install_provider();
        Ok(AgentResponder { caller: Arc::new(Caller::new(settings)?) })
    }
}

/// A new request id, for the agent's logs.
fn request_id() -> String {
    format!("req_{:032x}", rand::rng().random::<u128>())
}

/// The fields every request body starts with.
fn envelope(op: &str, user: &UserId) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("version".into(), json!(WIRE_VERSION));
    body.insert("op".into(), json!(op));
    body.insert("request_id".into(), json!(request_id()));
    body.insert("user".into(), json!(user.as_str()));
    body
}

fn encode(body: Map<String, Value>) -> Bytes {
    // A map of JSON values always serializes.
    Bytes::from(serde_json::to_vec(&Value::Object(body)).unwrap_or_default())
}

/// The thread as a request body carries it.
#[derive(Serialize)]
struct ThreadView<'a> {
    id: &'a str,
    title: &'a Option<String>,
    status: &'a ThreadStatus,
    metadata: &'a Map<String, Value>,
    created_at: &'a Timestamp,
}

/// An operation's own fields, written after the common ones.
struct Fields<'a>(&'a [(&'a str, Value)]);

impl Serialize for Fields<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

/// The body of an operation on a thread, in the order of `envelope` and then the thread's part.
/// It is written straight from borrowed parts: the history items go out as the store holds
/// them, so a turn neither parses nor copies them into a JSON tree (this is the agent hop's hot path).
#[derive(Serialize)]
struct TurnBody<'a> {
    version: u32,
    op: &'a str,
    request_id: String,
    user: &'a str,
    locale: &'a Option<String>,
    thread: ThreadView<'a>,
    items: &'a [Box<RawValue>],
    workflow: Option<&'a Workflow>,
    #[serde(flatten)]
    fields: Fields<'a>,
}

/// The body of an operation on a thread: the envelope, the thread, its recent items, the locale
/// and the session's workflow, then the operation's own fields.
async fn turn_body(
    caller: &Caller,
    op: &str,
    turn: &TurnContext,
    fields: &[(&str, Value)],
) -> Result<Bytes, ResponderError> {
    let items = turn.recent_items_json(caller.settings().history_items).await?;
    let thread = turn.thread.snapshot();
    let body = TurnBody {
        version: WIRE_VERSION,
        op,
        request_id: request_id(),
        user: turn.user.as_str(),
        locale: &turn.locale,
        thread: ThreadView {
            id: &thread.id,
            title: &thread.title,
            status: &thread.status,
            metadata: &thread.metadata,
            created_at: &thread.created_at,
        },
        items: &items,
        workflow: turn.session.as_ref().map(|session| &session.settings.workflow),
        fields: Fields(fields),
    };
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ResponderError::Internal(format!("cannot encode the agent request: {e}")))
}

/// Streams a respond or action operation: the agent's events, checked, until its stream ends.
fn stream_op(
    caller: Arc<Caller>,
    turn: TurnContext,
    op: &'static str,
    fields: Vec<(&'static str, Value)>,
) -> EventStream {
    Box::pin(async_stream::try_stream! {
        let body = turn_body(&caller, op, &turn, &fields).await?;
        let (mut reader, first) = caller.open_stream(op, body).await.map_err(Failure::into_error)?;
        let mut checker = Checker::new(turn.thread.clone());
        let idle = caller.settings().timeout;
        let mut next = first;
        while let Some(data) = next.take() {
            if let Some(event) = checker.accept(&data)? {
                yield event;
            }
            // Nothing is retried from here on: the user has seen output.
            next = match tokio::time::timeout(idle, reader.next()).await {
                Err(_) => Err(Failure::Idle.into_error())?,
                Ok(result) => result.map_err(|failure| failure.mid_stream().into_error())?,
            };
        }
        checker.finish()?;
    })
}

fn input_kind(input: &RespondInput) -> &'static str {
    match input {
        RespondInput::UserMessage(_) => "user_message",
        RespondInput::Retry(_) => "retry",
        RespondInput::ClientToolOutput(_) => "client_tool_output",
        RespondInput::StructuredInput(_) => "structured_input",
    }
}

#[async_trait]
impl Responder for AgentResponder {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn respond(&self, turn: TurnContext, input: RespondInput) -> EventStream {
        let fields = vec![("input", json!(input_kind(&input))), ("item", json!(input.item()))];
        stream_op(self.caller.clone(), turn, "respond", fields)
    }

    fn action(&self, turn: TurnContext, action: Action, sender: Option<ThreadItem>) -> EventStream {
        let fields = vec![("action", json!(action)), ("sender", json!(sender))];
        stream_op(self.caller.clone(), turn, "action", fields)
    }

    async fn sync_action(
        &self,
        turn: TurnContext,
        action: Action,
        sender: Option<ThreadItem>,
    ) -> Result<SyncCustomActionResponse, ResponderError> {
        let fields = vec![("action", json!(action)), ("sender", json!(sender))];
        let body = turn_body(&self.caller, "sync_action", &turn, &fields).await?;
        let answer = self.caller.call_json("sync_action", body).await.map_err(Failure::into_error)?;
        let mut answer: SyncCustomActionResponse = match answer {
            Value::Null => SyncCustomActionResponse::default(),
            other => serde_json::from_value(other).map_err(|e| {
                Failure::Invalid(format!("the sync_action answer is not `{{\"updated_item\": ...}}` ({e})"))
                    .into_error()
            })?,
        };
        if let Some(item) = &mut answer.updated_item {
            // The updated item replaces the stored one, as the reference's handlers save it.
            item.thread_id = turn.thread.id();
            turn.writes
                .save_item(&turn.user, item)
                .await
                .map_err(|e| ResponderError::Internal(format!("cannot save the agent's updated item: {e}")))?;
        }
        Ok(answer)
    }

    async fn add_feedback(
        &self,
        user: &UserId,
        thread_id: &str,
        item_ids: &[String],
        kind: FeedbackKind,
    ) -> Result<(), ResponderError> {
        let mut body = envelope("feedback", user);
        body.insert("thread".into(), json!({"id": thread_id}));
        body.insert("item_ids".into(), json!(item_ids));
        body.insert("feedback".into(), json!(kind));
        self.caller.call_json("feedback", encode(body)).await.map_err(Failure::into_error)?;
        Ok(())
    }

    async fn transcribe(&self, user: &UserId, audio: AudioInput) -> Result<TranscriptionResult, ResponderError> {
        let mut body = envelope("transcribe", user);
        body.insert("audio".into(), json!({"mime_type": audio.mime_type, "data": STANDARD.encode(&audio.data)}));
        let answer = self.caller.call_json("transcribe", encode(body)).await.map_err(Failure::into_error)?;
        serde_json::from_value(answer).map_err(|e| {
            Failure::Invalid(format!("the transcribe answer is not `{{\"text\": ...}}` ({e})")).into_error()
        })
    }
}
