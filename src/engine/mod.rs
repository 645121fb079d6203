//! The processing pipeline: every protocol operation with the reference semantics.
//!
//! The engine works with protocol types, the store and the responder; it knows
//! nothing of HTTP. Streaming operations are split in two: `prepare` validates
//! and makes the writes that come before the first event (so a bad request is
//! answered with an error status, not a broken stream), and `run` streams the
//! response into a bounded channel, persisting as it goes.

mod admin;
mod announce;
mod attachments;
mod pending;
mod turn;

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use futures_util::FutureExt;

use crate::blobs::BlobStore;
use crate::fanout::{Bus, CatchUp, FanoutError, Health, Subscription, Topic};
use crate::ids::UserId;
use crate::protocol::{
    Attachment, ItemBody, ListParams, ListedThread, Order, Page, Request, SyncCustomActionResponse, Thread, ThreadItem,
    ThreadMetadata, ThreadStatus, TranscriptionResult, DEFAULT_PAGE_SIZE,
};
use crate::responder::{AudioInput, Responder, ResponderError, SharedThread, TurnContext};
use crate::sessions::{ActiveSession, Sessions};
use crate::store::{Entity, Fence, ListQuery, Store, StoreError, Writes};
use crate::telemetry::metrics::METRICS;

pub use announce::Announcer;
pub use attachments::{AttachmentContent, Upload, SWEEP_BATCH};
pub use turn::{refusal, CancelSignal, PreparedTurn, TurnEvent, TurnOutcome};

/// Who is asking, beyond the user: what the responder and the session rules need.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The first tag of the request's `Accept-Language`.
    pub locale: Option<String>,
    /// The client session, when sessions authenticate requests.
    pub session: Option<Arc<ActiveSession>>,
}

/// The largest page a listing may ask for.
pub const MAX_PAGE_SIZE: usize = 100;

/// What went wrong in an operation, in terms the HTTP layer maps to statuses.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{entity} `{id}` not found")]
    NotFound { entity: Entity, id: String },
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but the thread is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The caller's session does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unsupported(String),
    /// The thread's queue is full; the request was not queued.
    #[error("{0}")]
    Busy(String),
    /// The request could not be carried out now; nothing was written.
    #[error("{0}")]
    Unavailable(String),
    /// What answers the gateway's requests (the integrator's agent, the model service) failed
    /// in a way that may pass: down, busy or too slow. The message says which, for the user.
    #[error("{0}")]
    UpstreamFailed(String),
    #[error("store failed: {0}")]
    Store(StoreError),
    /// The blob store failed (a name taken is a `Conflict` instead).
    #[error("blob store failed: {0}")]
    Blobs(crate::blobs::BlobError),
    #[error("responder failed: {0}")]
    Responder(String),
}

impl From<StoreError> for EngineError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { entity, id } => EngineError::NotFound { entity, id },
            StoreError::UnknownCursor(id) => {
                EngineError::BadRequest(format!("`after` names `{id}`, which is not part of this listing"))
            }
            StoreError::Fenced { thread_id } => EngineError::Busy(format!(
                "thread `{thread_id}` was taken over by another replica while this request ran; try again"
            )),
            other => EngineError::Store(other),
        }
    }
}

impl From<ResponderError> for EngineError {
    fn from(error: ResponderError) -> Self {
        match error {
            ResponderError::BadRequest(message) => EngineError::BadRequest(message),
            // A retryable failure (an agent or model service down, rate limited) is neither a
            // bad request nor the gateway's own failure.
            ResponderError::Custom { message, allow_retry: true } => EngineError::UpstreamFailed(message),
            ResponderError::Custom { message, .. } => EngineError::BadRequest(message),
            ResponderError::Unsupported(op) => {
                EngineError::Unsupported(format!("{op} is not supported by this gateway's responder"))
            }
            other => EngineError::Responder(other.to_string()),
        }
    }
}

pub type EngineResult<T> = Result<T, EngineError>;

/// Settings the engine needs from the configuration.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// The base URL clients reach this gateway at, for upload and preview links.
    pub public_url: String,
    /// The largest attachment `attachments.create` accepts, in bytes.
    pub max_upload_bytes: u64,
}

/// The answer to a non-streaming operation, ready to serialize.
#[derive(Debug)]
pub enum JsonAnswer {
    Thread(Thread),
    Threads(Page<ListedThread>),
    Items(Page<ThreadItem>),
    Attachment(Attachment),
    Transcription(TranscriptionResult),
    SyncAction(SyncCustomActionResponse),
    /// `{}`: feedback and deletions answer an empty object.
    Empty,
}

/// Counters of what the engine refused, for metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub refused_locked: AtomicU64,
    pub refused_closed: AtomicU64,
}

impl EngineStats {
    fn refused(&self, status: &ThreadStatus) {
        let (counter, reason) = match status {
            ThreadStatus::Locked { .. } => (&self.refused_locked, "locked"),
            ThreadStatus::Closed { .. } => (&self.refused_closed, "closed"),
            ThreadStatus::Active => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        METRICS.rejected.with_label_values(&[reason]).inc();
    }
}

pub struct Engine {
    stats: EngineStats,
    store: Arc<dyn Store>,
    responder: Arc<dyn Responder>,
    /// Attachment bytes.
    blobs: Arc<dyn BlobStore>,
    settings: EngineSettings,
    /// Carries the announcements and the viewers' subscriptions.
    bus: Arc<dyn Bus>,
    announce: Announcer,
    /// Counts uploads against the caller's session.
    sessions: Arc<Sessions>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        responder: Arc<dyn Responder>,
        bus: Arc<dyn Bus>,
        sessions: Arc<Sessions>,
        blobs: Arc<dyn BlobStore>,
        settings: EngineSettings,
    ) -> Self {
        let announce = Announcer::new(bus.clone());
        Engine { stats: EngineStats::default(), store, responder, blobs, settings, bus, announce, sessions }
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The responder of the caller's session, for the operations without a `TurnContext`.
    fn responder_for(&self, caller: &Caller) -> Arc<dyn Responder> {
        self.responder.for_session(caller.session.as_deref()).unwrap_or_else(|| self.responder.clone())
    }

    /// Whether sessions of workflow `id` may be created (see `Responder::serves_workflow`).
    pub fn serves_workflow(&self, id: &str) -> bool {
        self.responder.serves_workflow(id)
    }

    /// The writes of a job on a thread, under `fence` when its actor claimed one.
    fn writes(&self, fence: Option<Fence>) -> Writes {
        Writes::new(self.store.clone(), fence)
    }

    /// Claims a new fence on a thread for the job about to run on it (see `Store::claim_thread`);
    /// `None` for a thread that does not exist (yet): nothing else can write it.
    pub async fn claim(&self, thread_id: &str) -> EngineResult<Option<Fence>> {
        match self.store.claim_thread(thread_id).await {
            Ok(fence) => Ok(Some(fence)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    fn turn_context(&self, user: &UserId, thread: SharedThread, caller: Caller, writes: Writes) -> TurnContext {
        TurnContext {
            user: user.clone(),
            thread,
            store: self.store.clone(),
            writes,
            locale: caller.locale,
            session: caller.session,
            blobs: self.blobs.clone(),
        }
    }

    /// Answers an operation that responds with JSON. Streaming operations are
    /// refused here; they go through `prepare` and `run`.
    ///
    /// `fence` is the fence the thread's actor claimed for this job, if any; the writes carry it.
    pub async fn answer(
        &self,
        user: &UserId,
        request: Request,
        caller: &Caller,
        fence: Option<Fence>,
    ) -> EngineResult<JsonAnswer> {
        let writes = self.writes(fence);
        if let Some(thread_id) = request.thread_id() {
            self.check_recent(user, thread_id, caller).await?;
        }
        match request {
            Request::GetThread(params) => Ok(JsonAnswer::Thread(self.full_thread(user, &params.thread_id).await?)),
            Request::ListThreads(params) => {
                let query = page_query(&params)?;
                let history = caller.session.as_ref().map(|s| &s.settings.chatkit_configuration.history);
                if history.is_some_and(|history| !history.enabled) {
                    // The session's history is off: the user sees no earlier threads.
                    return Ok(JsonAnswer::Threads(Page::default()));
                }
                if let Some(recent) = self.recent_threads(user, caller).await? {
                    return Ok(JsonAnswer::Threads(page_of_recent(recent, &query)?));
                }
                Ok(JsonAnswer::Threads(self.store.list_listed_threads(user, &query).await?))
            }
            Request::ListItems(params) => {
                let query = page_query(&params.page)?;
                let mut page = self.store.list_items(user, &params.thread_id, &query).await?;
                page.data.retain(|item| !item.is_hidden());
                Ok(JsonAnswer::Items(page))
            }
            Request::Feedback(params) => {
                self.store.load_thread(user, &params.thread_id).await?;
                let responder = self.responder_for(caller);
                guarded(responder.add_feedback(user, &params.thread_id, &params.item_ids, params.kind)).await?;
                Ok(JsonAnswer::Empty)
            }
            Request::CreateAttachment(params) => {
                Ok(JsonAnswer::Attachment(self.create_attachment(user, params, caller).await?))
            }
            Request::DeleteAttachment(params) => {
                self.delete_attachment(user, &params.attachment_id).await?;
                Ok(JsonAnswer::Empty)
            }
            Request::UpdateThread(params) => {
                let mut thread = self.store.load_thread(user, &params.thread_id).await?;
                thread.title = Some(params.title);
                writes.save_thread(user, &thread).await?;
                let thread = thread.to_wire(Page::default());
                self.announce.thread_updated(user, &thread).await;
                Ok(JsonAnswer::Thread(thread))
            }
            Request::DeleteThread(params) => {
                // The attachments are found before the thread goes, and deleted after,
                // so that a failure in between leaves no message without its bytes.
                let attachments = self.store.thread_attachments(user, &params.thread_id).await?;
                self.store.delete_thread(user, &params.thread_id).await?;
                self.delete_thread_attachments(user, &attachments).await?;
                self.announce.thread_deleted(user, &params.thread_id).await;
                Ok(JsonAnswer::Empty)
            }
            Request::Transcribe(params) => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(params.audio_base64.trim())
                    .map_err(|e| EngineError::BadRequest(format!("params.audio_base64 is not valid base64: {e}")))?;
                let audio = AudioInput { data: data.into(), mime_type: params.mime_type };
                Ok(JsonAnswer::Transcription(guarded(self.responder_for(caller).transcribe(user, audio)).await?))
            }
            Request::SyncCustomAction(params) => {
                let stored = self.store.load_thread(user, &params.thread_id).await?;
                if let Some(reason) = refusal(&stored) {
                    self.stats.refused(&stored.status);
                    return Err(EngineError::Conflict(reason));
                }
                let thread = SharedThread::new(stored);
                let sender = match &params.item_id {
                    Some(item_id) => Some(self.store.load_item(user, &params.thread_id, item_id).await?),
                    None => None,
                };
                if let Some(item) = &sender {
                    if !matches!(item.body, ItemBody::Widget { .. }) {
                        return Err(EngineError::BadRequest(format!(
                            "threads.sync_custom_action needs a widget sender item; `{}` is a {}",
                            item.id,
                            item.kind()
                        )));
                    }
                }
                let before = thread.version();
                let turn = self.turn_context(user, thread.clone(), caller.clone(), writes.clone());
                let answer = guarded(self.responder.sync_action(turn, params.action, sender)).await?;
                if thread.version() != before {
                    let snapshot = thread.snapshot();
                    writes.save_thread(user, &snapshot).await?;
                    self.announce.thread_updated(user, &snapshot.to_wire(Page::default())).await;
                }
                // The caller's tab swaps the answer in itself; the thread's other tabs learn of it here.
                if let Some(item) = &answer.updated_item {
                    self.announce.item_replaced(&params.thread_id, item).await;
                }
                Ok(JsonAnswer::SyncAction(answer))
            }
            streaming => Err(EngineError::BadRequest(format!("`{}` is a streaming operation", streaming.op()))),
        }
    }

    /// As `prepare`, for a caller whose session may limit which threads it
    /// reaches (`history.recent_threads`).
    pub async fn prepare_for(
        &self,
        user: &UserId,
        request: Request,
        caller: &Caller,
        fence: Option<Fence>,
    ) -> EngineResult<PreparedTurn> {
        if let Some(thread_id) = request.thread_id() {
            self.check_recent(user, thread_id, caller).await?;
        }
        self.prepare(user, request, fence).await
    }

    /// The user's threads a session's `history.recent_threads` leaves it,
    /// newest first; `None` when the caller's session sets no such limit.
    async fn recent_threads(&self, user: &UserId, caller: &Caller) -> EngineResult<Option<Vec<ThreadMetadata>>> {
        let history = caller.session.as_ref().map(|s| &s.settings.chatkit_configuration.history);
        let Some(count) = history.and_then(|history| history.recent_threads) else { return Ok(None) };
        if count == 0 {
            return Ok(Some(Vec::new()));
        }
        let newest = ListQuery::first(count as usize, Order::Desc);
        Ok(Some(self.store.list_threads(Some(user), &newest).await?.data.into_iter().map(|(_, t)| t).collect()))
    }

    /// A thread beyond the session's `recent_threads` newest is as missing as
    /// another user's: the hosted API gives such a session access to those only.
    async fn check_recent(&self, user: &UserId, thread_id: &str, caller: &Caller) -> EngineResult<()> {
        match self.recent_threads(user, caller).await? {
            Some(recent) if !recent.iter().any(|thread| thread.id == thread_id) => {
                Err(StoreError::not_found(Entity::Thread, thread_id).into())
            }
            _ => Ok(()),
        }
    }

    /// Changes a thread's status on behalf of an operator (no user scope).
    /// Returns the owner too, so that the change can be announced to them.
    pub async fn set_status(
        &self,
        thread_id: &str,
        status: ThreadStatus,
        fence: Option<Fence>,
    ) -> EngineResult<(UserId, Thread)> {
        let (owner, mut thread) = self.store.find_thread(thread_id).await?;
        thread.status = status;
        self.writes(fence).save_thread(&owner, &thread).await?;
        let thread = thread.to_wire(Page::default());
        self.announce.thread_updated(&owner, &thread).await;
        Ok((owner, thread))
    }

    /// Checks that `user` may view a thread: 404 for a thread of another user.
    pub async fn check_viewer(&self, user: &UserId, thread_id: &str) -> EngineResult<()> {
        self.store.load_thread(user, thread_id).await.map(|_| ()).map_err(EngineError::from)
    }

    /// Joins `topic` as a viewer whose `Last-Event-ID` is `after`. It
    /// subscribes before it catches up, so that a message published in
    /// between is in one or both (the viewer skips the second copy), never in
    /// neither.
    pub async fn watch(&self, topic: &Topic, after: Option<u64>) -> (Subscription, Result<CatchUp, FanoutError>) {
        let subscription = self.bus.subscribe(topic).await;
        let catch_up = self.bus.catch_up(topic, after).await;
        (subscription, catch_up)
    }

    /// The fan-out backend's name (`local` or `redis`), for health reports and metrics.
    pub fn fanout_backend(&self) -> &'static str {
        self.bus.name()
    }

    /// Whether fan-out to other replicas works now, for readiness.
    pub fn fanout_health(&self) -> Health {
        self.bus.health()
    }

    /// Checks that a thread exists, for operator endpoints.
    pub async fn thread_exists(&self, thread_id: &str) -> EngineResult<()> {
        self.store.find_thread(thread_id).await.map(|_| ()).map_err(EngineError::from)
    }

    /// A thread with its first page of items, oldest first, as `threads.get_by_id` answers.
    pub async fn full_thread(&self, user: &UserId, thread_id: &str) -> EngineResult<Thread> {
        let thread = self.store.load_thread(user, thread_id).await?;
        let items = self.store.list_items(user, thread_id, &ListQuery::first(DEFAULT_PAGE_SIZE, Order::Asc)).await?;
        Ok(thread.to_wire(items))
    }
}

/// Turns listing parameters into a store query: a missing or zero limit means
/// the default page size, as in the reference.
/// A page of `threads.list` read from the session's recent threads (newest
/// first) rather than the store, with the store's paging rules: `after` keeps
/// what follows its thread in the listing's order, and names the page's last
/// thread when more follow.
fn page_of_recent(mut recent: Vec<ThreadMetadata>, query: &ListQuery) -> EngineResult<Page<ListedThread>> {
    if matches!(query.order, Order::Asc) {
        recent.reverse();
    }
    let start = match &query.after {
        None => 0,
        Some(after) => match recent.iter().position(|thread| &thread.id == after) {
            Some(at) => at + 1,
            None => return Err(StoreError::UnknownCursor(after.clone()).into()),
        },
    };
    let rest = &recent[start..];
    let has_more = rest.len() > query.limit;
    let data = rest.iter().take(query.limit).map(ListedThread::from_metadata).collect::<Result<Vec<_>, _>>();
    let data = data.map_err(|error| StoreError::Backend(format!("cannot serialize a thread: {error}")))?;
    let after = if has_more { data.last().map(|thread| thread.id.clone()) } else { None };
    Ok(Page { data, has_more, after })
}

fn page_query(params: &ListParams) -> EngineResult<ListQuery> {
    let limit = match params.limit {
        None | Some(0) => DEFAULT_PAGE_SIZE,
        Some(n) if n < 0 => return Err(EngineError::BadRequest(format!("params.limit must not be negative, got {n}"))),
        Some(n) => usize::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
    };
    Ok(ListQuery { after: params.after.clone(), before: None, limit, order: params.order })
}

/// Runs a responder call so that a panic inside it becomes an error, not a
/// dropped connection.
async fn guarded<T>(call: impl std::future::Future<Output = Result<T, ResponderError>>) -> Result<T, ResponderError> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => Err(ResponderError::Internal(format!("responder panicked: {}", panic_message(&panic)))),
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "unknown panic".to_string()
    }
}
