//! The thread actor and the jobs it runs.
//!
//! The actor knows its registry only as a [`Roster`], which the registry
//! implements, so this module imports nothing of the registry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::{
    Actor, ActorContext, ActorFutureExt, AsyncContext, AtomicResponse, Context, Handler, Message, SpawnHandle,
    WrapFuture,
};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::Instrument;

use crate::engine::{Caller, CancelSignal, Engine, EngineError, EngineResult, JsonAnswer, PreparedTurn, TurnEvent};
use crate::fanout::{Coordination, Lease};
use crate::ids::UserId;
use crate::protocol::{Request, Thread, ThreadStatus, ThreadStreamEvent};
use crate::store::Fence;

/// What a thread's actor is asked to do.
pub(super) enum Job {
    /// Prepare and run a streaming request; `started` learns whether it was
    /// accepted before the first event.
    Turn {
        user: UserId,
        request: Request,
        caller: Caller,
        sink: mpsc::Sender<TurnEvent>,
        started: oneshot::Sender<EngineResult<()>>,
    },
    /// Run a turn prepared outside the actor (a new thread's first turn).
    Run { turn: PreparedTurn, sink: mpsc::Sender<TurnEvent> },
    /// An operator's status change.
    Status { thread_id: String, status: ThreadStatus, answer: oneshot::Sender<EngineResult<(UserId, Thread)>> },
    /// A non-streaming request that changes the thread.
    Json { user: UserId, request: Request, caller: Caller, answer: oneshot::Sender<EngineResult<JsonAnswer>> },
}

/// A job and the span it was submitted in (an HTTP request's, with its request id), so that
/// what the job logs, a whole turn included, carries the request's fields though it runs in the actor;
/// and the span of its wait in the queue, a child of that one, which ends when the job starts.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Envelope {
    pub job: Job,
    submitted: tracing::Span,
    queued: tracing::Span,
}

impl Envelope {
    /// A job submitted in the current span, whose wait is `queued`.
    pub fn new(job: Job, queued: tracing::Span) -> Envelope {
        Envelope { job, submitted: tracing::Span::current(), queued }
    }
}

/// An actor's work as its registry sees it without sending a message: the
/// jobs queued and the turn running.
#[derive(Debug, Default)]
pub(super) struct ActorWork {
    /// Jobs sent but not yet started: the queue the bound applies to.
    pub queued: AtomicUsize,
    /// The running turn's cancel signal, so a cancel need not queue behind it.
    pub running: Mutex<Option<CancelSignal>>,
    /// Told when another replica waits for the thread's lease, which the actor then stops keeping.
    pub lease_wanted: Notify,
}

impl ActorWork {
    pub fn cancel_running(&self) -> bool {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.as_ref() {
            Some(signal) => {
                signal.cancel();
                true
            }
            None => false,
        }
    }

    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn set_running(&self, signal: Option<CancelSignal>) {
        *self.running.lock().unwrap_or_else(|p| p.into_inner()) = signal;
    }
}

/// The registry an actor is listed in, as the actor sees it.
pub(super) trait Roster: Send + Sync {
    /// Removes the actor's entry if it is still that actor's and has nothing
    /// queued; true when the actor is no longer listed and may stop.
    fn remove_if_idle(&self, thread_id: &str, generation: u64) -> bool;

    /// Counts an actor that stopped.
    fn actor_stopped(&self);
}

/// What every actor of one registry runs with.
pub(super) struct ActorSetup {
    pub engine: Arc<Engine>,
    /// Where the thread's lease comes from.
    pub coordination: Arc<dyn Coordination>,
    /// Whether each job claims a fence on its thread, which its writes then carry: with
    /// coordination between replicas, where a replica may lose a thread it is still writing.
    pub fencing: bool,
    /// How long an actor lives without work.
    pub idle_timeout: Duration,
    /// The mailbox's capacity, above the registry's queue bound.
    pub mailbox: usize,
}

/// How long an actor keeps its thread's lease (and the fence claimed with it) after a job, so
/// that a thread's next message, which usually follows within milliseconds, runs without taking
/// them again (a Redis script and a PostgreSQL write saved per job). Another replica that wants
/// the thread meanwhile waits this long at most.
const LEASE_LINGER: Duration = Duration::from_millis(200);

/// A lease kept between jobs, with the fence its first job claimed.
pub(super) struct KeptLease {
    lease: Lease,
    fence: Option<Fence>,
}

pub(super) struct ThreadActor {
    thread_id: String,
    /// Tells this actor's entry from a later one of the same thread.
    generation: u64,
    work: Arc<ActorWork>,
    /// Weak, so that actors never keep a dropped registry alive.
    roster: Weak<dyn Roster>,
    setup: Arc<ActorSetup>,
    idle_timer: Option<SpawnHandle>,
    /// The lease kept since the last job, and the timer that lets it go.
    kept: Option<KeptLease>,
    linger_timer: Option<SpawnHandle>,
}

impl ThreadActor {
    pub fn new(
        thread_id: String,
        generation: u64,
        work: Arc<ActorWork>,
        roster: Weak<dyn Roster>,
        setup: Arc<ActorSetup>,
    ) -> Self {
        ThreadActor { thread_id, generation, work, roster, setup, idle_timer: None, kept: None, linger_timer: None }
    }

    /// Stops the actor after `idle_timeout` without work. It leaves the
    /// registry first, and only if nothing was queued meanwhile, so a request
    /// never lands on a stopped actor without noticing.
    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        self.idle_timer = Some(ctx.run_later(self.setup.idle_timeout, |actor, ctx| {
            let removed = match actor.roster.upgrade() {
                Some(roster) => roster.remove_if_idle(&actor.thread_id, actor.generation),
                None => true,
            };
            if removed {
                ctx.stop();
            } else {
                actor.arm_idle_timer(ctx);
            }
        }));
    }
}

impl Actor for ThreadActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // The registry enforces the real bound; the mailbox only needs room for it.
        ctx.set_mailbox_capacity(self.setup.mailbox);
        self.arm_idle_timer(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(roster) = self.roster.upgrade() {
            roster.actor_stopped();
        }
    }
}

impl Handler<Envelope> for ThreadActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, Envelope { job, submitted, queued }: Envelope, ctx: &mut Context<Self>) -> Self::Result {
        drop(queued);
        // The job's run, under the request's span; the thread's lease is taken or kept inside it.
        let span =
            tracing::debug_span!(parent: &submitted, "thread.run", thread_id = %self.thread_id, job = job.kind());
        self.work.queued.fetch_sub(1, Ordering::SeqCst);
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        if let Some(timer) = self.linger_timer.take() {
            ctx.cancel_future(timer);
        }
        let kept = self.kept.take();
        let running =
            run_job(self.setup.clone(), self.work.clone(), self.thread_id.clone(), job, kept).instrument(span);
        // The request's span lives as long as the job, a turn's whole stream included.
        let running = running.instrument(submitted);
        // AtomicResponse keeps the mailbox closed until the job is done: this
        // is what makes a thread's operations run one at a time.
        AtomicResponse::new(Box::pin(running.into_actor(self).map(|kept, actor, ctx| {
            if kept.is_some() {
                actor.kept = kept;
                // Dropping the kept lease releases it: after the linger, or as soon as another
                // replica asks for it (a permit left from an earlier ask only lets it go early).
                let work = actor.work.clone();
                let linger = async move {
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_LINGER) => {}
                        _ = work.lease_wanted.notified() => {}
                    }
                };
                actor.linger_timer = Some(ctx.spawn(linger.into_actor(actor).map(|(), actor, _| actor.kept = None)));
            }
            actor.arm_idle_timer(ctx)
        })))
    }
}

/// Runs one job under the thread's lease: the one `kept` from the previous job when it is still
/// this replica's, else a new one. Answers the lease to keep for the next job, if any.
async fn run_job(
    setup: Arc<ActorSetup>,
    work: Arc<ActorWork>,
    thread_id: String,
    job: Job,
    kept: Option<KeptLease>,
) -> Option<KeptLease> {
    let engine = &setup.engine;
    let reused = match kept {
        // Still held: nobody else ran a job on the thread since, so the fence claimed with it
        // is still the newest and the thread as stored is as this replica left it.
        Some(kept) if setup.coordination.still_held(&kept.lease).await => Some(kept),
        // Lost, or Redis cannot tell: dropping it releases it if it is still ours.
        _ => None,
    };
    let (lease, fence) = match reused {
        Some(KeptLease { lease, fence }) => (lease, fence),
        None => match take_lease(&setup, engine, &thread_id).await {
            Ok(taken) => taken,
            Err(error) => {
                job.refuse(error);
                return None;
            }
        },
    };
    match job {
        Job::Turn { user, request, caller, sink, started } => {
            match engine.prepare_for(&user, request, &caller, fence).await {
                Err(error) => {
                    let _ = started.send(Err(error));
                }
                Ok(turn) => {
                    let turn = turn.with_caller(caller);
                    // Run even if the caller is gone: its input is already stored,
                    // and the closed sink makes the run keep it as a cancelled turn.
                    let _ = started.send(Ok(()));
                    run_turn(engine, &work, turn, sink, &lease).await;
                }
            }
        }
        Job::Run { turn, sink } => run_turn(engine, &work, turn.with_fence(fence), sink, &lease).await,
        Job::Status { thread_id, status, answer } => {
            let _ = answer.send(engine.set_status(&thread_id, status, fence).await);
        }
        Job::Json { user, request, caller, answer } => {
            let _ = answer.send(engine.answer(&user, request, &caller, fence).await);
        }
    }
    // Kept only with the fence it goes with: a job on a thread that did not exist claimed none.
    let keep = lease.keepable() && (fence.is_some() || !setup.fencing);
    keep.then_some(KeptLease { lease, fence })
}

/// Takes the thread's lease and, when fencing, claims a fence after it.
async fn take_lease(
    setup: &ActorSetup,
    engine: &Engine,
    thread_id: &str,
) -> Result<(Lease, Option<Fence>), EngineError> {
    // With several replicas, the lease keeps this thread's messages one at a
    // time across all of them. Everything below reads the thread after it is
    // taken, so a status committed by another replica is honoured.
    let lease = match setup.coordination.lease(thread_id).instrument(tracing::debug_span!("thread.lease")).await {
        Ok(lease) => lease,
        Err(error) => {
            tracing::warn!(%thread_id, %error, "refusing a job: the thread's lease is held elsewhere");
            return Err(EngineError::Busy(format!("{error}; try again in a moment")));
        }
    };
    // Claimed after the lease: a replica that lost the lease (paused past it, or without Redis)
    // and still runs a job on this thread is refused its next write from here on.
    let fence = match setup.fencing {
        false => None,
        true => match engine.claim(thread_id).await {
            Ok(fence) => fence,
            Err(error) => {
                tracing::warn!(%thread_id, %error, "refusing a job: cannot claim the thread");
                return Err(error);
            }
        },
    };
    Ok((lease, fence))
}

async fn run_turn(engine: &Engine, work: &ActorWork, turn: PreparedTurn, sink: mpsc::Sender<TurnEvent>, lease: &Lease) {
    let cancel = CancelSignal::new();
    work.set_running(Some(cancel.clone()));
    let run = engine.run(turn, sink, cancel.clone());
    tokio::pin!(run);
    tokio::select! {
        _ = &mut run => {}
        _ = lease.lost() => {
            // Another replica may now run this thread: stop, keeping what streamed.
            cancel.cancel();
            run.await;
        }
    }
    work.set_running(None);
}

impl Job {
    /// What kind of job this is, for its span.
    fn kind(&self) -> &'static str {
        match self {
            Job::Turn { .. } => "turn",
            Job::Run { .. } => "run",
            Job::Status { .. } => "status",
            Job::Json { .. } => "json",
        }
    }

    /// Answers a job that will not run with `error`.
    fn refuse(self, error: EngineError) {
        match self {
            Job::Turn { started, .. } => {
                let _ = started.send(Err(error));
            }
            Job::Run { sink, .. } => {
                let _ = sink.try_send(TurnEvent::new(ThreadStreamEvent::custom_error(error.to_string(), true)));
            }
            Job::Status { answer, .. } => {
                let _ = answer.send(Err(error));
            }
            Job::Json { answer, .. } => {
                let _ = answer.send(Err(error));
            }
        }
    }
}
