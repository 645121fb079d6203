//! Streaming operations: validate and write what precedes the first event
//! (`prepare`), then stream the response while persisting it (`run`, whose
//! per-event work lives in `run.rs`).

mod run;

use run::Run;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{stream, StreamExt};
use tokio::sync::{mpsc, Notify};

use super::{Caller, Engine, EngineError, EngineResult};
use crate::ids::UserId;
use crate::ids::{new_id, IdKind};
use crate::protocol::{
    Action, Attachment, ItemBody, Order, Page, Request, StreamOptions, StructuredInput, StructuredInputAnswer,
    StructuredInputRequest, StructuredInputStatus, StructuredInputSubmission, SubmissionStatus, ThreadItem,
    ThreadMetadata, ThreadStatus, ThreadStreamEvent, ToolCallStatus, UserMessage, UserMessageInput, DEFAULT_PAGE_SIZE,
};
use crate::responder::{EventStream, RespondInput, SharedThread};
use crate::store::{Entity, Fence, ListQuery, Writes};
use crate::telemetry::metrics::METRICS;

/// What the reference stores when a user cancels, so the next response does
/// not continue the cancelled one.
pub const CANCELLED_CONTEXT: &str = "The user cancelled the stream. Stop responding to the prior request.";

/// Cancels a running turn from outside its stream (another tab, an operator,
/// a status change with `cancel_running`). Cloning shares the signal.
#[derive(Clone, Debug, Default)]
pub struct CancelSignal(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    cancelled: AtomicBool,
    notify: Notify,
}

impl CancelSignal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Resolves once `cancel` has been called (at once if it already was).
    pub async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// The error event that refuses input on a thread that is not active, or
/// `None` when the thread takes input.
pub fn refusal(thread: &ThreadMetadata) -> Option<String> {
    match &thread.status {
        ThreadStatus::Active => None,
        ThreadStatus::Locked { reason } => Some(reason.clone().unwrap_or_else(|| "This thread is locked.".into())),
        ThreadStatus::Closed { reason } => Some(reason.clone().unwrap_or_else(|| "This thread is closed.".into())),
    }
}

/// A streaming request that passed validation and made its first writes.
pub struct PreparedTurn {
    user: UserId,
    thread: SharedThread,
    /// Who asked: their language and session, for the responder.
    caller: Caller,
    /// Events sent before `stream_options`: `thread.created` and the user message.
    prelude: Vec<ThreadStreamEvent>,
    work: Work,
    /// The fence of the job that runs the turn, which its writes carry.
    fence: Option<Fence>,
}

enum Work {
    /// Ask the responder to respond, first passing `first` through the pipeline.
    Respond { first: Option<Box<ThreadStreamEvent>>, input: RespondInput },
    /// Ask the responder to handle an action.
    Action { action: Action, sender: Option<ThreadItem> },
    /// The prelude is the whole answer (no `stream_options`, no responder).
    Nothing,
}

impl PreparedTurn {
    pub fn thread_id(&self) -> String {
        self.thread.id()
    }

    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// Passes who asked (language, session) to the responder.
    pub fn with_caller(mut self, caller: Caller) -> Self {
        self.caller = caller;
        self
    }

    /// Runs the turn under the fence its job claimed (a turn prepared before its thread existed
    /// runs under the fence claimed when it reaches the thread's actor).
    pub fn with_fence(mut self, fence: Option<Fence>) -> Self {
        self.fence = fence;
        self
    }
}

/// One event of a turn as its client receives it: the event and its JSON,
/// serialized once for both the client's stream and the thread's viewers.
#[derive(Clone, Debug)]
pub struct TurnEvent {
    pub event: ThreadStreamEvent,
    pub json: String,
}

impl TurnEvent {
    pub fn new(event: ThreadStreamEvent) -> Self {
        let json = serde_json::to_string(&event).unwrap_or_else(|error| {
            // Only a non-string map key could fail here; say so rather than send half an event.
            tracing::error!(%error, "could not serialize a stream event");
            r#"{"type":"error","code":"stream.error","allow_retry":true}"#.to_string()
        });
        TurnEvent { event, json }
    }
}

/// How a turn ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TurnOutcome {
    Completed,
    /// The responder or the store failed; the client got an `error` event.
    Failed,
    /// The client went away; partial output and a cancellation note were kept.
    Cancelled,
}

impl Engine {
    /// Validates a streaming request and makes the writes that precede its
    /// first event, under `fence` when the thread's actor claimed one. Errors
    /// here are answered with an HTTP status.
    pub async fn prepare(&self, user: &UserId, request: Request, fence: Option<Fence>) -> EngineResult<PreparedTurn> {
        let writes = self.writes(fence);
        let turn = |thread: ThreadMetadata, prelude, work| PreparedTurn {
            user: user.clone(),
            thread: SharedThread::new(thread),
            caller: Caller::default(),
            prelude,
            work,
            fence,
        };
        match request {
            Request::CreateThread(params) => {
                let attachments = self.resolve_attachments(user, &params.input).await?;
                let thread = ThreadMetadata::new(new_id(IdKind::Thread));
                self.store.create_thread(user, &thread).await?;
                let created = ThreadStreamEvent::ThreadCreated { thread: thread.to_wire(Page::default()) };
                let message = self.add_user_message(&writes, user, &thread, params.input, attachments).await?;
                let prelude = vec![created, ThreadStreamEvent::ItemDone { item: message.clone() }];
                Ok(turn(thread, prelude, Work::Respond { first: None, input: RespondInput::UserMessage(message) }))
            }
            Request::AddUserMessage(params) => {
                let thread = self.store.load_thread(user, &params.thread_id).await?;
                if let Some(reason) = refusal(&thread) {
                    // Refused input is answered with one error event and leaves no trace.
                    self.stats.refused(&thread.status);
                    return Ok(turn(thread, vec![ThreadStreamEvent::custom_error(reason, false)], Work::Nothing));
                }
                let attachments = self.resolve_attachments(user, &params.input).await?;
                let message = self.add_user_message(&writes, user, &thread, params.input, attachments).await?;
                let prelude = vec![ThreadStreamEvent::ItemDone { item: message.clone() }];
                Ok(turn(thread, prelude, Work::Respond { first: None, input: RespondInput::UserMessage(message) }))
            }
            Request::AddClientToolOutput(params) => {
                let thread = self.store.load_thread(user, &params.thread_id).await?;
                if let Some(reason) = refusal(&thread) {
                    // Refused input is answered with one error event and leaves no trace.
                    self.stats.refused(&thread.status);
                    return Ok(turn(thread, vec![ThreadStreamEvent::custom_error(reason, false)], Work::Nothing));
                }
                let newest = self.store.list_items(user, &thread.id, &ListQuery::first(1, Order::Desc)).await?;
                let mut call_item = match newest.data.into_iter().next() {
                    Some(item) if matches!(&item.body, ItemBody::ClientToolCall(c) if c.status == ToolCallStatus::Pending) => {
                        item
                    }
                    _ => {
                        return Err(EngineError::Conflict(format!(
                            "thread `{}` has no pending client tool call as its newest item",
                            thread.id
                        )))
                    }
                };
                if let ItemBody::ClientToolCall(call) = &mut call_item.body {
                    call.output = Some(params.result);
                    call.status = ToolCallStatus::Completed;
                }
                writes.save_item(user, &call_item).await?;
                // The client's stream gets no event for it, as in the reference; other tabs see the call complete.
                self.announce.item_replaced(&thread.id, &call_item).await;
                self.drop_dangling_tool_calls(&writes, user, &thread.id).await?;
                Ok(turn(
                    thread,
                    vec![],
                    Work::Respond { first: None, input: RespondInput::ClientToolOutput(call_item) },
                ))
            }
            Request::AddStructuredInput(params) => {
                let thread = self.store.load_thread(user, &params.thread_id).await?;
                if let Some(reason) = refusal(&thread) {
                    // Refused input is answered with one error event and leaves no trace.
                    self.stats.refused(&thread.status);
                    return Ok(turn(thread, vec![ThreadStreamEvent::custom_error(reason, false)], Work::Nothing));
                }
                let mut item = self.store.load_item(user, &thread.id, &params.item_id).await?;
                let ItemBody::StructuredInput(request) = &mut item.body else {
                    return Err(EngineError::BadRequest(format!(
                        "item `{}` is a {}, not a structured_input",
                        item.id,
                        item.kind()
                    )));
                };
                if request.status != StructuredInputStatus::Pending {
                    return Err(EngineError::Conflict(format!("structured input `{}` was already answered", item.id)));
                }
                apply_submission(request, &params.input);
                let replaced = ThreadStreamEvent::ItemReplaced { item: item.clone() };
                Ok(turn(
                    thread,
                    vec![],
                    Work::Respond { first: Some(Box::new(replaced)), input: RespondInput::StructuredInput(item) },
                ))
            }
            Request::RetryAfterItem(params) => {
                let thread = self.store.load_thread(user, &params.thread_id).await?;
                if let Some(reason) = refusal(&thread) {
                    // Refused input is answered with one error event and leaves no trace.
                    self.stats.refused(&thread.status);
                    return Ok(turn(thread, vec![ThreadStreamEvent::custom_error(reason, false)], Work::Nothing));
                }
                let (message, later) = self.items_after(user, &thread.id, &params.item_id).await?;
                if !matches!(message.body, ItemBody::UserMessage(_)) {
                    return Err(EngineError::BadRequest(format!(
                        "item `{}` is a {}, not a user_message",
                        message.id,
                        message.kind()
                    )));
                }
                // As in the reference, later items leave the store without
                // `thread.item.removed` events on the client's stream: the client
                // drops them itself. The thread's other tabs are told.
                let mut removed = Vec::with_capacity(later.len());
                for item in later {
                    writes.delete_item(user, &thread.id, &item.id).await?;
                    removed.push(item.id);
                }
                self.announce.items_removed(&thread.id, removed).await;
                Ok(turn(thread, vec![], Work::Respond { first: None, input: RespondInput::Retry(message) }))
            }
            Request::CustomAction(params) => {
                let thread = self.store.load_thread(user, &params.thread_id).await?;
                if let Some(reason) = refusal(&thread) {
                    // Refused input is answered with one error event and leaves no trace.
                    self.stats.refused(&thread.status);
                    return Ok(turn(thread, vec![ThreadStreamEvent::custom_error(reason, false)], Work::Nothing));
                }
                let sender = match &params.item_id {
                    Some(item_id) => Some(self.store.load_item(user, &thread.id, item_id).await?),
                    None => None,
                };
                if sender.as_ref().is_some_and(|item| !matches!(item.body, ItemBody::Widget { .. })) {
                    // The reference answers a non-widget sender with one error
                    // event and no stream options.
                    return Ok(turn(thread, vec![ThreadStreamEvent::stream_error(false)], Work::Nothing));
                }
                Ok(turn(thread, vec![], Work::Action { action: params.action, sender }))
            }
            other => Err(EngineError::BadRequest(format!("`{}` is not a streaming operation", other.op()))),
        }
    }

    async fn resolve_attachments(&self, user: &UserId, input: &UserMessageInput) -> EngineResult<Vec<Attachment>> {
        let mut attachments = Vec::with_capacity(input.attachments.len());
        for id in &input.attachments {
            attachments.push(self.store.load_attachment(user, id).await?);
        }
        Ok(attachments)
    }

    async fn add_user_message(
        &self,
        writes: &Writes,
        user: &UserId,
        thread: &ThreadMetadata,
        input: UserMessageInput,
        attachments: Vec<Attachment>,
    ) -> EngineResult<ThreadItem> {
        let mut bound = Vec::with_capacity(attachments.len());
        for mut attachment in attachments {
            attachment.thread_id = Some(thread.id.clone());
            self.store.save_attachment(user, &attachment).await?;
            bound.push(attachment.for_client());
        }
        let message = UserMessage {
            content: input.content,
            attachments: bound,
            quoted_text: input.quoted_text,
            inference_options: input.inference_options,
        };
        let item = ThreadItem::new(new_id(IdKind::Message), thread.id.clone(), ItemBody::UserMessage(message));
        writes.add_item(user, &item).await?;
        Ok(item)
    }

    /// Removes pending tool calls left among the newest items; there should be
    /// none, but a dangling one would confuse the next model call.
    async fn drop_dangling_tool_calls(&self, writes: &Writes, user: &UserId, thread_id: &str) -> EngineResult<()> {
        let recent = self.store.list_items(user, thread_id, &ListQuery::first(DEFAULT_PAGE_SIZE, Order::Desc)).await?;
        for item in recent.data {
            if matches!(&item.body, ItemBody::ClientToolCall(call) if call.status == ToolCallStatus::Pending) {
                tracing::warn!(thread_id, item_id = %item.id, "dropping a client tool call that never completed");
                writes.delete_item(user, thread_id, &item.id).await?;
            }
        }
        Ok(())
    }

    /// Finds `item_id` walking back from the newest item, with the items after it.
    async fn items_after(
        &self,
        user: &UserId,
        thread_id: &str,
        item_id: &str,
    ) -> EngineResult<(ThreadItem, Vec<ThreadItem>)> {
        let mut later = Vec::new();
        let mut query = ListQuery::first(DEFAULT_PAGE_SIZE, Order::Desc);
        loop {
            let page = self.store.list_items(user, thread_id, &query).await?;
            for item in page.data {
                if item.id == item_id {
                    return Ok((item, later));
                }
                later.push(item);
            }
            match page.after {
                Some(after) if page.has_more => query.after = Some(after),
                _ => return Err(EngineError::NotFound { entity: Entity::Item, id: item_id.to_string() }),
            }
        }
    }

    /// Streams a prepared turn into `sink`, persisting as it goes. Runs to the
    /// end even if the client leaves: then it keeps the partial output.
    pub async fn run(&self, turn: PreparedTurn, sink: mpsc::Sender<TurnEvent>, cancel: CancelSignal) -> TurnOutcome {
        let started = Instant::now();
        let outcome = self.run_inner(turn, sink, cancel, started).await;
        let label = match outcome {
            TurnOutcome::Completed => "completed",
            TurnOutcome::Failed => "failed",
            TurnOutcome::Cancelled => "cancelled",
        };
        METRICS.turn_duration.with_label_values(&[label]).observe(started.elapsed().as_secs_f64());
        outcome
    }

    async fn run_inner(
        &self,
        turn: PreparedTurn,
        sink: mpsc::Sender<TurnEvent>,
        cancel: CancelSignal,
        started: Instant,
    ) -> TurnOutcome {
        let PreparedTurn { user, thread, caller, prelude, work, fence } = turn;
        let writes = self.writes(fence);
        let mut run = Run::new(self, user, thread, sink, cancel, started, writes.clone());
        // The prelude waits in the outbox for the responder's first events, so that what is ready at
        // once goes out together.
        for event in prelude {
            run.hold(event);
        }
        let context = self.turn_context(&run.user, run.thread.clone(), caller, writes);
        let events: EventStream = match work {
            Work::Nothing => {
                return match run.flush().await {
                    true => TurnOutcome::Completed,
                    false => run.cancelled().await,
                }
            }
            Work::Respond { first, input } => {
                let response = self.responder.respond(context, input);
                match first {
                    Some(event) => Box::pin(stream::once(async { Ok(*event) }).chain(response)),
                    None => response,
                }
            }
            Work::Action { action, sender } => self.responder.action(context, action, sender),
        };
        run.hold(ThreadStreamEvent::StreamOptions { stream_options: StreamOptions { allow_cancel: true } });
        run.drive(events).await
    }
}

/// Records answers on a structured input item as the reference does: omitted,
/// empty or skipped answers become `skipped`, and a single-choice question
/// keeps only its first value.
fn apply_submission(request: &mut StructuredInputRequest, submission: &StructuredInputSubmission) {
    for input in &mut request.inputs {
        let answer = submission.answers.get(input.id());
        let recorded = match answer {
            Some(answer)
                if submission.status == SubmissionStatus::Answered && !answer.skipped && !answer.values.is_empty() =>
            {
                let mut values = answer.values.clone();
                if let StructuredInput::MultipleChoice { multiple: false, .. } = input {
                    values.truncate(1);
                }
                StructuredInputAnswer { values, skipped: false }
            }
            _ => StructuredInputAnswer { values: vec![], skipped: true },
        };
        match input {
            StructuredInput::MultipleChoice { answer, .. } | StructuredInput::Freeform { answer, .. } => {
                *answer = Some(recorded)
            }
        }
    }
    for unknown in submission.answers.keys().filter(|id| !request.inputs.iter().any(|input| input.id() == *id)) {
        tracing::warn!(question = %unknown, "ignoring an answer to an unknown question");
    }
    request.status = match submission.status {
        SubmissionStatus::Answered => StructuredInputStatus::Answered,
        SubmissionStatus::Skipped => StructuredInputStatus::Skipped,
    };
}
