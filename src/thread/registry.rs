//! The registry of live thread actors and the facade HTTP code calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix::{Actor, Addr};
use dashmap::DashMap;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::actor::{ActorSetup, ActorWork, Envelope, Job, Roster, ThreadActor};
use crate::engine::{Caller, Engine, EngineError, EngineResult, JsonAnswer, TurnEvent};
use crate::fanout::Coordination;
use crate::ids::UserId;
use crate::protocol::{Request, Thread, ThreadStatus, ThreadStreamEvent};
use crate::telemetry::metrics::METRICS;

/// Events buffered between a turn and its client before the turn waits.
pub const STREAM_BUFFER: usize = 64;

/// How thread actors behave.
#[derive(Clone, Debug)]
pub struct ThreadSettings {
    /// Jobs that may wait behind the running one; more are refused as busy.
    pub queue_bound: usize,
    /// How long an actor lives without work.
    pub idle_timeout: Duration,
}

impl Default for ThreadSettings {
    fn default() -> Self {
        ThreadSettings { queue_bound: 16, idle_timeout: Duration::from_secs(300) }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ThreadStats {
    pub actors_started: AtomicU64,
    pub actors_stopped: AtomicU64,
    pub refused_busy: AtomicU64,
}

/// A live actor as the registry lists it.
#[derive(Clone)]
struct LiveActor {
    addr: Addr<ThreadActor>,
    work: Arc<ActorWork>,
    generation: u64,
}

/// What the registry's clones share and its actors reach through their [`Roster`].
struct RegistryState {
    /// The engine and coordination, also handed to every actor.
    setup: Arc<ActorSetup>,
    /// Jobs that may wait behind the running one.
    queue_bound: usize,
    actors: DashMap<String, LiveActor>,
    generations: AtomicU64,
    stats: ThreadStats,
}

impl Roster for RegistryState {
    fn remove_if_idle(&self, thread_id: &str, generation: u64) -> bool {
        self.actors
            .remove_if(thread_id, |_, actor| {
                actor.generation == generation && actor.work.queued.load(Ordering::SeqCst) == 0
            })
            .is_some()
            || self.actors.get(thread_id).is_none_or(|actor| actor.generation != generation)
    }

    fn actor_stopped(&self) {
        self.stats.actors_stopped.fetch_add(1, Ordering::Relaxed);
    }
}

/// The message a refused request gets instead of a turn.
const BUSY: &str = "This thread is busy with other messages; try again in a moment.";

/// What a caller learns when the actor stopped before running its job.
fn actor_gone() -> EngineError {
    EngineError::Unavailable("the thread's actor stopped before the request ran".into())
}

/// The facade over thread actors.
#[derive(Clone)]
pub struct ThreadRegistry {
    state: Arc<RegistryState>,
}

enum Submit {
    Queued,
    Busy,
}

impl ThreadRegistry {
    /// `coordination` gives the actors their threads' leases and carries
    /// cancel requests between replicas.
    pub fn new(engine: Arc<Engine>, coordination: Arc<dyn Coordination>, settings: ThreadSettings) -> Self {
        let setup = ActorSetup {
            engine,
            // With coordination between replicas, another replica may take a thread over (its lease
            // expired while this one was paused, or Redis was away): every job then claims a fence.
            fencing: coordination.name() != "local",
            coordination,
            idle_timeout: settings.idle_timeout,
            mailbox: settings.queue_bound + 8,
        };
        let state = Arc::new(RegistryState {
            setup: Arc::new(setup),
            queue_bound: settings.queue_bound,
            actors: DashMap::new(),
            generations: AtomicU64::new(0),
            stats: ThreadStats::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let requests = state.setup.coordination.cancel_requests();
            tokio::spawn(follow_cancel_requests(Arc::downgrade(&state), requests));
            let wanted = state.setup.coordination.lease_wanted();
            tokio::spawn(follow_lease_wanted(Arc::downgrade(&state), wanted));
        }
        ThreadRegistry { state }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.state.setup.engine
    }

    pub fn stats(&self) -> &ThreadStats {
        &self.state.stats
    }

    /// Actors alive now.
    pub fn live_actors(&self) -> usize {
        self.state.actors.len()
    }

    /// Turns running now on this replica.
    pub fn running_turns(&self) -> usize {
        self.state.actors.iter().filter(|actor| actor.work.is_running()).count()
    }

    /// Cancels every turn running on this replica (shutdown past its grace
    /// period); each keeps its partial output. Returns how many were cancelled.
    pub fn cancel_all(&self) -> usize {
        self.state.actors.iter().filter(|actor| actor.work.cancel_running()).count()
    }

    /// Jobs waiting in all queues now.
    pub fn queued(&self) -> usize {
        self.state.actors.iter().map(|actor| actor.work.queued.load(Ordering::Relaxed)).sum()
    }

    /// Starts a streaming operation in its thread's order. An error means the
    /// request was refused before its first event.
    /// `caller` (language, session) is passed to the responder.
    pub async fn turn(
        &self,
        user: UserId,
        request: Request,
        caller: Caller,
    ) -> EngineResult<mpsc::Receiver<TurnEvent>> {
        let (sink, events) = mpsc::channel(STREAM_BUFFER);
        let Some(thread_id) = request.thread_id().map(str::to_string) else {
            // A new thread: nothing can be queued on it yet, so it is prepared
            // here and only its run goes through the new thread's actor.
            let turn = self.engine().prepare(&user, request, None).await?.with_caller(caller);
            let thread_id = turn.thread_id();
            if let Submit::Busy = self.submit(&thread_id, Job::Run { turn, sink: sink.clone() }) {
                let _ = sink.try_send(TurnEvent::new(ThreadStreamEvent::custom_error(BUSY, true)));
            }
            return Ok(events);
        };
        let (started, accepted) = oneshot::channel();
        match self.submit(&thread_id, Job::Turn { user, request, caller, sink: sink.clone(), started }) {
            Submit::Busy => {
                let _ = sink.try_send(TurnEvent::new(ThreadStreamEvent::custom_error(BUSY, true)));
                Ok(events)
            }
            Submit::Queued => match accepted.await {
                Ok(result) => result.map(|()| events),
                Err(_) => Err(actor_gone()),
            },
        }
    }

    /// Runs a non-streaming operation that changes a thread in its order.
    pub async fn change(&self, user: UserId, request: Request, caller: Caller) -> EngineResult<JsonAnswer> {
        let Some(thread_id) = request.thread_id().map(str::to_string) else {
            return self.engine().answer(&user, request, &caller, None).await;
        };
        self.ask(&thread_id, |answer| Job::Json { user, request, caller, answer }).await
    }

    /// Changes a thread's status in the thread's order: by default after the
    /// running turn and anything queued before it; with `cancel_running`, the
    /// running turn is cancelled first (keeping its partial output).
    pub async fn set_status(
        &self,
        thread_id: &str,
        status: ThreadStatus,
        cancel_running: bool,
    ) -> EngineResult<Thread> {
        self.engine().thread_exists(thread_id).await?;
        if cancel_running {
            self.cancel(thread_id).await;
        }
        let job = |answer| Job::Status { thread_id: thread_id.to_string(), status, answer };
        let (_owner, thread) = self.ask(thread_id, job).await?;
        Ok(thread)
    }

    /// Cancels the turn running on a thread on this replica, if any; true when there was one.
    pub fn cancel_running(&self, thread_id: &str) -> bool {
        self.state.actors.get(thread_id).is_some_and(|actor| actor.work.cancel_running())
    }

    /// Cancels the thread's running turn on whichever replica runs it; true
    /// when one was running here or another replica holds the thread's lease.
    pub async fn cancel(&self, thread_id: &str) -> bool {
        let here = self.cancel_running(thread_id);
        let elsewhere = self.state.setup.coordination.request_cancel(thread_id).await;
        here || elsewhere
    }

    /// Queues a job that answers on a channel, and waits for its answer.
    async fn ask<T>(
        &self,
        thread_id: &str,
        job: impl FnOnce(oneshot::Sender<EngineResult<T>>) -> Job,
    ) -> EngineResult<T> {
        let (answer, answered) = oneshot::channel();
        match self.submit(thread_id, job(answer)) {
            Submit::Busy => Err(EngineError::Busy(BUSY.into())),
            Submit::Queued => answered.await.unwrap_or_else(|_| Err(actor_gone())),
        }
    }

    /// Queues a job on the thread's actor, starting one when there is none.
    fn submit(&self, thread_id: &str, mut job: Job) -> Submit {
        // A stopped actor can only be met in the moment it leaves the
        // registry; a second try then starts a fresh one.
        for _ in 0..3 {
            let actor = self.live_actor(thread_id);
            let waiting = actor.work.queued.fetch_add(1, Ordering::SeqCst);
            if waiting >= self.state.queue_bound {
                actor.work.queued.fetch_sub(1, Ordering::SeqCst);
                self.state.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
                METRICS.rejected.with_label_values(&["busy"]).inc();
                return Submit::Busy;
            }
            // The wait in the queue is a span of its own, ended when the job starts (below `info`: traces only).
            let queued = tracing::debug_span!("thread.queue", thread_id, queued_before = waiting as i64);
            match actor.addr.try_send(Envelope::new(job, queued)) {
                Ok(()) => return Submit::Queued,
                Err(error) => {
                    actor.work.queued.fetch_sub(1, Ordering::SeqCst);
                    self.state.actors.remove_if(thread_id, |_, current| current.generation == actor.generation);
                    job = error.into_inner().job;
                }
            }
        }
        self.state.stats.refused_busy.fetch_add(1, Ordering::Relaxed);
        METRICS.rejected.with_label_values(&["busy"]).inc();
        Submit::Busy
    }

    /// The thread's live actor, started if there is none.
    fn live_actor(&self, thread_id: &str) -> LiveActor {
        // The entry API holds the shard lock while an actor starts, so two
        // first requests for one thread can never start two actors.
        self.state
            .actors
            .entry(thread_id.to_string())
            .or_insert_with(|| {
                let generation = self.state.generations.fetch_add(1, Ordering::Relaxed);
                let work = Arc::new(ActorWork::default());
                let roster = Arc::downgrade(&self.state);
                let thread_actor =
                    ThreadActor::new(thread_id.to_string(), generation, work.clone(), roster, self.state.setup.clone());
                self.state.stats.actors_started.fetch_add(1, Ordering::Relaxed);
                LiveActor { addr: thread_actor.start(), work, generation }
            })
            .clone()
    }
}

/// Lets go of the leases other replicas wait for that an actor here keeps idle, for as long as the
/// registry lives.
async fn follow_lease_wanted(state: Weak<RegistryState>, mut wanted: broadcast::Receiver<String>) {
    loop {
        match wanted.recv().await {
            Ok(thread_id) => {
                let Some(registry) = state.upgrade() else { return };
                let work = registry.actors.get(&thread_id).map(|actor| actor.work.clone());
                if let Some(work) = work {
                    work.lease_wanted.notify_one();
                }
            }
            // A missed ask costs the asker at most the linger.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Carries out cancel requests sent by other replicas, for as long as the registry lives.
async fn follow_cancel_requests(state: Weak<RegistryState>, mut requests: broadcast::Receiver<String>) {
    loop {
        match requests.recv().await {
            Ok(thread_id) => {
                let Some(registry) = state.upgrade() else { return };
                let cancelled = registry.actors.get(&thread_id).is_some_and(|actor| actor.work.cancel_running());
                if cancelled {
                    tracing::info!(%thread_id, "cancelled a turn on another replica's request");
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "missed cancel requests from other replicas");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
