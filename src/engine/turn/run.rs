//! One running turn: each event is announced to viewers, sent to the client
//! and persisted (done, removed and replaced items; thread changes), with the
//! in-progress snapshot for viewers that join mid-turn, and the cancellation
//! and failure endings.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;

use super::{CancelSignal, TurnEvent, TurnOutcome, CANCELLED_CONTEXT};
use crate::engine::pending::PendingItems;
use crate::engine::{panic_message, Engine};
use crate::fanout::{SnapshotChange, Topic};
use crate::ids::UserId;
use crate::ids::{new_id, IdKind};
use crate::protocol::{ItemBody, Page, ThreadItem, ThreadStreamEvent};
use crate::responder::{EventStream, ResponderError, SharedThread};
use crate::store::{StoreError, StoreResult, Writes};
use crate::telemetry::metrics::METRICS;

/// A viewer joining mid-turn starts from a snapshot of the in-progress items.
/// It is refreshed with every item event while the items are small; past
/// this size, rewriting it per delta would make a long answer quadratic, so
/// it is refreshed after `SNAPSHOT_EVERY_UPDATES` updates or `SNAPSHOT_EVERY`,
/// and a joining viewer gets the updates since from the fan-out history.
const SNAPSHOT_EAGER_BYTES: usize = 32 * 1024;
const SNAPSHOT_EVERY_UPDATES: u32 = 16;
const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);

/// The state of one running turn.
pub(super) struct Run<'a> {
    engine: &'a Engine,
    pub(super) user: UserId,
    /// Fixed for the turn; kept here so that streaming events need not lock `thread`.
    thread_id: String,
    /// The thread's fan-out topic, built once for every event of the turn.
    topic: Topic,
    pub(super) thread: SharedThread,
    sink: mpsc::Sender<TurnEvent>,
    cancel: CancelSignal,
    pending: PendingItems,
    /// The thread version last persisted; a newer one means the responder changed it.
    saved_version: u64,
    snapshot: SnapshotState,
    /// When the turn started, for the time to its first responder event.
    started: Instant,
    first_event: bool,
    /// The turn's writes, under its job's fence.
    writes: Writes,
    /// Events persisted (where they persist) but not yet announced nor sent:
    /// the ones the responder had ready together, so that they reach the
    /// fan-out as one publication and the client as one chunk.
    outbox: Vec<Outgoing>,
}

/// An event waiting in the outbox, with its change to the snapshot.
struct Outgoing {
    event: TurnEvent,
    snapshot: SnapshotChange,
    /// False for what only viewers are told (how an abandoned turn left its items).
    to_client: bool,
}

/// The most events a turn holds back before it announces and sends them, so
/// that a responder with a long run of ready events still streams.
const OUTBOX_LIMIT: usize = 32;

/// When the in-progress snapshot was last published, and whether one is up.
struct SnapshotState {
    updates: u32,
    /// The size of the last snapshot.
    bytes: usize,
    at: Instant,
    live: bool,
}

enum Step {
    Event(ThreadStreamEvent),
    End,
    Fail(ThreadStreamEvent),
    ClientGone,
}

impl<'a> Run<'a> {
    pub(super) fn new(
        engine: &'a Engine,
        user: UserId,
        thread: SharedThread,
        sink: mpsc::Sender<TurnEvent>,
        cancel: CancelSignal,
        started: Instant,
        writes: Writes,
    ) -> Self {
        let (thread_id, saved_version) = (thread.id(), thread.version());
        Run {
            engine,
            user,
            topic: Topic::Thread(thread_id.clone()),
            thread_id,
            thread,
            sink,
            cancel,
            pending: PendingItems::default(),
            saved_version,
            snapshot: SnapshotState { updates: 0, bytes: 0, at: Instant::now(), live: false },
            started,
            first_event: false,
            writes,
            outbox: Vec::with_capacity(OUTBOX_LIMIT),
        }
    }

    /// Announces an event to live viewers and sends it to the client, after
    /// whatever the outbox holds; false when the client has gone. Viewers
    /// get it either way.
    async fn send(&mut self, event: ThreadStreamEvent) -> bool {
        self.hold(event);
        self.flush().await
    }

    /// Puts an event in the outbox, for the client and the viewers. The
    /// event is serialized once, for both.
    pub(super) fn hold(&mut self, event: ThreadStreamEvent) {
        let snapshot = self.snapshot_change(&event);
        self.outbox.push(Outgoing { event: TurnEvent::new(event), snapshot, to_client: true });
    }

    /// Announces what the outbox holds, in one publication per topic, then
    /// sends the client its part; false when the client has gone.
    pub(super) async fn flush(&mut self) -> bool {
        if self.outbox.is_empty() {
            return !self.sink.is_closed();
        }
        let mut outbox = std::mem::take(&mut self.outbox);
        let announced =
            outbox.iter_mut().map(|out| (&out.event, std::mem::replace(&mut out.snapshot, SnapshotChange::Keep)));
        self.engine.announce.turn_events(&self.user, &self.topic, announced).await;
        let mut open = true;
        for out in outbox.drain(..).filter(|out| out.to_client) {
            open = open && self.sink.send(out.event).await.is_ok();
        }
        // The emptied outbox keeps its capacity for the next round.
        self.outbox = outbox;
        open
    }

    /// What an item event does to the in-progress snapshot. While the thread
    /// has viewers on this replica (or the fan-out cannot tell), the snapshot
    /// follows the items. Without viewers it is only started, cleared and
    /// refreshed often enough that the fan-out history still reaches back to
    /// it: a viewer joining then gets that snapshot and the messages since,
    /// which come to the same items, at a fraction of the serializing.
    fn snapshot_change(&mut self, event: &ThreadStreamEvent) -> SnapshotChange {
        let changes_items = match event {
            ThreadStreamEvent::ItemAdded { .. }
            | ThreadStreamEvent::ItemDone { .. }
            | ThreadStreamEvent::ItemRemoved { .. }
            | ThreadStreamEvent::ItemReplaced { .. } => true,
            ThreadStreamEvent::ItemUpdated { .. } => false,
            _ => return SnapshotChange::Keep,
        };
        self.snapshot.updates += 1;
        if let Some(every) = self.engine.announce.unwatched_snapshot_every(&self.topic) {
            let due = !self.snapshot.live || self.snapshot.updates >= every;
            return match (self.pending.is_empty(), due) {
                (true, _) | (false, true) => self.snapshot_now(),
                (false, false) => SnapshotChange::Keep,
            };
        }
        if changes_items
            || self.snapshot.bytes < SNAPSHOT_EAGER_BYTES
            || self.snapshot.updates >= SNAPSHOT_EVERY_UPDATES
            || self.snapshot.at.elapsed() >= SNAPSHOT_EVERY
        {
            self.snapshot_now()
        } else {
            SnapshotChange::Keep
        }
    }

    /// The in-progress items as they stand, for viewers that join mid-turn.
    fn snapshot_now(&mut self) -> SnapshotChange {
        self.snapshot.updates = 0;
        self.snapshot.at = Instant::now();
        if self.pending.is_empty() {
            if std::mem::take(&mut self.snapshot.live) {
                SnapshotChange::Clear
            } else {
                SnapshotChange::Keep
            }
        } else {
            self.snapshot.live = true;
            match serde_json::to_string(self.pending.items()) {
                Ok(items) => {
                    self.snapshot.bytes = items.len();
                    SnapshotChange::Set(items)
                }
                Err(error) => {
                    tracing::error!(%error, "could not serialize in-progress items");
                    SnapshotChange::Clear
                }
            }
        }
    }

    /// Tells viewers how a turn that stopped early left its in-progress items:
    /// kept messages are done, the rest removed, as the store has them.
    /// `kept` says whether the non-empty messages were stored; when not, every item is removed.
    async fn announce_abandoned(&mut self, kept: bool) {
        let items = self.pending.items().to_vec();
        let kept: Vec<String> = match kept {
            true => self.pending.non_empty_messages().map(|item| item.id.clone()).collect(),
            false => Vec::new(),
        };
        let last = items.len().saturating_sub(1);
        for (index, item) in items.into_iter().enumerate() {
            let event = if kept.contains(&item.id) {
                ThreadStreamEvent::ItemDone { item }
            } else {
                ThreadStreamEvent::ItemRemoved { item_id: item.id }
            };
            let snapshot = if index == last { SnapshotChange::Clear } else { SnapshotChange::Keep };
            self.outbox.push(Outgoing { event: TurnEvent::new(event), snapshot, to_client: false });
        }
        self.snapshot.live = false;
        self.flush().await;
    }

    pub(super) async fn drive(&mut self, mut events: EventStream) -> TurnOutcome {
        let failure = loop {
            let step = match self.ready_now(&mut events) {
                Some(step) => step,
                None => {
                    // Nothing more is ready: what the outbox holds goes out before the turn waits.
                    if !self.flush().await {
                        drop(events);
                        return self.cancelled().await;
                    }
                    tokio::select! {
                        biased;
                        _ = self.sink.closed() => Step::ClientGone,
                        _ = self.cancel.cancelled() => Step::ClientGone,
                        next = AssertUnwindSafe(events.next()).catch_unwind() => step_of(next),
                    }
                }
            };
            let mut event = match step {
                Step::Event(event) => {
                    if !std::mem::replace(&mut self.first_event, true) {
                        let name = self.engine.responder.name();
                        let waited = self.started.elapsed().as_secs_f64();
                        METRICS.turn_first_event.with_label_values(&[name]).observe(waited);
                    }
                    event
                }
                Step::End => break None,
                Step::Fail(error) => break Some(error),
                Step::ClientGone => {
                    drop(events);
                    return self.cancelled().await;
                }
            };
            if let Err(error) = self.persist(&mut event).await {
                break Some(persist_failed(error));
            }
            let hidden = matches!(&event, ThreadStreamEvent::ItemDone { item } if item.is_hidden());
            if !hidden {
                self.hold(event);
            }
            if let Err(error) = self.sync_thread().await {
                break Some(persist_failed(error));
            }
        };
        if failure.is_none() {
            // A change the responder made at the very end (a title, say) goes out with the last events.
            if let Err(error) = self.sync_thread().await {
                tracing::error!(%error, "could not persist a thread change");
            }
        }
        let delivered = self.flush().await;
        let outcome = match failure {
            None if !delivered => {
                drop(events);
                return self.cancelled().await;
            }
            None => TurnOutcome::Completed,
            Some(error) => {
                // Keep what the user already saw streaming, so nothing shown is lost; unless the
                // thread was taken over, when nothing more of this turn may be written.
                let fenced = is_fenced(&error);
                let kept = match fenced {
                    true => false,
                    false => match self.keep_partial_messages().await {
                        Ok(()) => true,
                        Err(error) => {
                            tracing::error!(%error, "could not keep partial output of a failed turn");
                            false
                        }
                    },
                };
                self.announce_abandoned(kept).await;
                self.send(error).await;
                TurnOutcome::Failed
            }
        };
        if let Err(error) = self.sync_thread().await {
            tracing::error!(%error, "could not persist a thread change");
        }
        self.flush().await;
        outcome
    }

    /// The responder's next step if it is ready now, while the outbox has room:
    /// events that come together are persisted one by one, then announced and
    /// sent together.
    fn ready_now(&mut self, events: &mut EventStream) -> Option<Step> {
        if self.outbox.len() >= OUTBOX_LIMIT {
            return None;
        }
        AssertUnwindSafe(events.next()).catch_unwind().now_or_never().map(step_of)
    }

    /// Applies an event to the store as the reference does: done items are
    /// added, removed items deleted, replaced items saved.
    async fn persist(&mut self, event: &mut ThreadStreamEvent) -> StoreResult<()> {
        let store = &self.writes;
        match event {
            ThreadStreamEvent::ItemAdded { item } => {
                item.thread_id.clone_from(&self.thread_id);
                self.pending.add(item.clone());
            }
            ThreadStreamEvent::ItemUpdated { item_id, update } => self.pending.apply(item_id, update),
            ThreadStreamEvent::ItemDone { item } => {
                item.thread_id.clone_from(&self.thread_id);
                match store.add_item(&self.user, item).await {
                    Err(StoreError::Duplicate { .. }) => store.save_item(&self.user, item).await?,
                    other => other?,
                }
                self.pending.remove(&item.id);
            }
            ThreadStreamEvent::ItemRemoved { item_id } => {
                match store.delete_item(&self.user, &self.thread_id, item_id).await {
                    // Removing an item that was only streamed, never stored, is fine.
                    Err(StoreError::NotFound { .. }) | Ok(()) => {}
                    Err(other) => return Err(other),
                }
                self.pending.remove(item_id);
            }
            ThreadStreamEvent::ItemReplaced { item } => {
                item.thread_id.clone_from(&self.thread_id);
                store.save_item(&self.user, item).await?;
                self.pending.remove(&item.id);
            }
            _ => {}
        }
        Ok(())
    }

    /// Persists a thread the responder changed, and puts its announcement in the outbox.
    async fn sync_thread(&mut self) -> StoreResult<()> {
        let version = self.thread.version();
        if version == self.saved_version {
            return Ok(());
        }
        let snapshot = self.thread.snapshot();
        self.writes.save_thread(&self.user, &snapshot).await?;
        self.saved_version = version;
        self.hold(ThreadStreamEvent::ThreadUpdated { thread: snapshot.to_wire(Page::default()) });
        Ok(())
    }

    async fn keep_partial_messages(&self) -> StoreResult<()> {
        for item in self.pending.non_empty_messages() {
            self.writes.add_item(&self.user, item).await?;
        }
        Ok(())
    }

    /// The reference's cancellation semantics: keep non-empty pending
    /// assistant messages and note the cancellation for the next response.
    pub(super) async fn cancelled(&mut self) -> TurnOutcome {
        let thread_id = self.thread_id.clone();
        tracing::info!(%thread_id, "turn cancelled; keeping partial output");
        let note = ThreadItem::new(
            new_id(IdKind::SdkHiddenContext),
            thread_id,
            ItemBody::SdkHiddenContext { content: CANCELLED_CONTEXT.to_string() },
        );
        let result = async {
            self.keep_partial_messages().await?;
            self.writes.add_item(&self.user, &note).await?;
            self.sync_thread().await
        }
        .await;
        match result {
            Err(error @ StoreError::Fenced { .. }) => {
                // The turn stopped because another replica took the thread over (its lease was
                // lost): nothing of it was kept, and a client still listening is told to retry.
                let error = persist_failed(error);
                self.announce_abandoned(false).await;
                let _ = self.sink.send(TurnEvent::new(error)).await;
                return TurnOutcome::Failed;
            }
            Err(error) => tracing::error!(%error, "could not persist a cancelled turn"),
            Ok(_) => {}
        }
        self.announce_abandoned(true).await;
        TurnOutcome::Cancelled
    }
}

/// What the responder's stream gave, as a step of the turn; a panic in the responder fails it.
fn step_of(next: std::thread::Result<Option<Result<ThreadStreamEvent, ResponderError>>>) -> Step {
    match next {
        Ok(Some(Ok(event))) => Step::Event(event),
        Ok(None) => Step::End,
        Ok(Some(Err(error))) => Step::Fail(error_event(error)),
        Err(panic) => {
            tracing::error!(panic = %panic_message(&panic), "responder panicked during a turn");
            Step::Fail(ThreadStreamEvent::stream_error(true))
        }
    }
}

/// The error event that ends a turn whose write failed. A write refused by the thread's fence
/// means another replica took the thread over: the user may send again, and it will run there.
fn persist_failed(error: StoreError) -> ThreadStreamEvent {
    match error {
        StoreError::Fenced { thread_id } => {
            tracing::warn!(%thread_id, "a turn's write was refused: another replica took the thread over");
            METRICS.turns_fenced.inc();
            ThreadStreamEvent::custom_error(FENCED_MESSAGE, true)
        }
        other => {
            tracing::error!(error = %other, "could not persist a turn event");
            ThreadStreamEvent::stream_error(true)
        }
    }
}

/// Whether an error event is the one `persist_failed` makes for a refused (fenced) write.
fn is_fenced(event: &ThreadStreamEvent) -> bool {
    matches!(event, ThreadStreamEvent::Error(error) if error.message.as_deref() == Some(FENCED_MESSAGE))
}

/// What the user reads when another replica took the thread over during their turn.
pub const FENCED_MESSAGE: &str =
    "This conversation was taken over by another server while the answer was being written. Try again.";

fn error_event(error: ResponderError) -> ThreadStreamEvent {
    match error {
        ResponderError::Stream { code, allow_retry } => {
            ThreadStreamEvent::Error(crate::protocol::ErrorEvent { code, message: None, allow_retry })
        }
        ResponderError::Custom { message, allow_retry } => ThreadStreamEvent::custom_error(message, allow_retry),
        ResponderError::BadRequest(message) => ThreadStreamEvent::custom_error(message, false),
        ResponderError::Unsupported(op) => {
            ThreadStreamEvent::custom_error(format!("{op} is not supported by this gateway's responder"), false)
        }
        ResponderError::Internal(detail) => {
            tracing::error!(%detail, "responder failed during a turn");
            ThreadStreamEvent::stream_error(true)
        }
    }
}
