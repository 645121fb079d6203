//! The frame the multi-replica scenarios (fanout and mixed) run in: the threads under load and their viewer streams,
//! the phases around a scenario's own send phase (create the threads, open every viewer, send, drain, stop), the
//! progress line, and the counting of what was sent into losses and a timeline.
//!
//! A scenario implements `Load`: what it keeps per thread, how its viewers read an event, and how it sends.

use std::fmt::Write as _;
use std::future::Future;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::Spread;
use crate::replicas::{
    check_fd_limit, in_parallel, lock, now_us, say, Pool, CREATE_CONCURRENCY, LOST_SAMPLES, MAX_SHARDS, PROGRESS_EVERY,
    SLOW_DELIVERY,
};
use crate::report::{FanoutStats, LossDetail, Lost, Second, SpreadSummary};
use crate::scenario::Outcome;
use crate::viewers::{open_all, stop_all, Listener, ViewerProgress};

/// What a scenario brings to the frame.
pub trait Load: Send + Sync + Sized + 'static {
    /// The scenario's name as `--scenario` takes it; thread `t` belongs to user `<NAME>-<t>`.
    const NAME: &'static str;
    /// What the progress line calls the send phase and what it sends: `updating` and `updates`.
    const SENDING: &'static str;
    const SENDS: &'static str;
    /// What the frame says starts once every viewer is open: `sending updates`.
    const START: &'static str;

    /// What the scenario keeps on each thread: its book of what it sent there.
    type Book: Send + 'static;
    /// What each viewer keeps of what it has received, to tell a second copy.
    type Seen: Default + Send + 'static;
    /// What the send phase answers, for the scenario's summary.
    type SendPhase;

    /// The part of the run's shape the frame reads.
    fn spread(&self) -> &Spread;
    /// How many tasks record results at once, which sets the number of result shards.
    fn recorders(&self) -> u32 {
        self.spread().viewers
    }
    /// The send phase in words, for the opening line: `200 updates/s for 15s`.
    fn send_phase(&self) -> String;
    /// Readies thread `index`, just created through `replica` by `user` as `id`, and answers its book.
    fn prepare(
        net: &Net,
        index: u32,
        replica: usize,
        user: &HeaderValue,
        id: &str,
    ) -> impl Future<Output = Result<Self::Book, String>> + Send;
    /// Sends the load and waits for every answer.
    fn send(&self, net: &Arc<Net>, threads: &Arc<Vec<Thread<Self::Book>>>) -> impl Future<Output = Self::SendPhase>;
    /// Records a plain `data:` event of a viewer's stream; the frame counts resyncs and other named events itself.
    fn observe(viewer: &mut Viewer<Self>, data: &[u8], received_us: u64);
    /// The delivery counts the progress line shows during the send phase and the drain.
    fn deliveries(progress: &Progress) -> String;
    /// Called once when a viewer's stream is over, to keep what the scenario checks after the run.
    fn finish(_viewer: &mut Viewer<Self>) {}
}

/// Whether a request of the send phase was answered, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Pending,
    Ok,
    Failed,
}

/// One update or turn as it was sent, and how it reached the viewers of its thread.
#[derive(Debug)]
pub struct Sent {
    /// Its number in the run.
    pub n: u64,
    /// The replica it was sent through.
    pub via: usize,
    pub sent_us: u64,
    pub answer: Answer,
    /// Viewers that received it, by the replica they watch through.
    pub delivered: Vec<u32>,
    /// The longest fan-out latency of its deliveries, in microseconds.
    pub max_latency_us: u64,
    /// Deliveries that took `SLOW_DELIVERY` or longer.
    pub slow: u32,
}

impl Sent {
    pub fn new(n: u64, via: usize, sent_us: u64, replicas: usize) -> Self {
        Sent { n, via, sent_us, answer: Answer::Pending, delivered: vec![0; replicas], max_latency_us: 0, slow: 0 }
    }

    /// Counts its receipt by a viewer on `replica`, `latency_us` after it was sent.
    pub fn deliver(&mut self, replica: usize, latency_us: u64) {
        self.delivered[replica] += 1;
        self.max_latency_us = self.max_latency_us.max(latency_us);
        if latency_us >= SLOW_DELIVERY.as_micros() as u64 {
            self.slow += 1;
        }
    }
}

/// One thread under load: its owner, its viewers and the scenario's book of it.
pub struct Thread<B> {
    pub id: String,
    /// The owner, who alone may write to and view it.
    pub user: HeaderValue,
    /// Viewers of this thread whose stream opened, by the replica they watch through.
    pub viewers_open: Vec<AtomicU32>,
    pub book: Mutex<B>,
}

impl<B> Thread<B> {
    pub fn new(id: String, user: HeaderValue, replicas: usize, book: B) -> Self {
        Thread { id, user, viewers_open: (0..replicas).map(|_| AtomicU32::new(0)).collect(), book: Mutex::new(book) }
    }

    /// Its open viewers, by replica.
    pub fn viewers_on(&self) -> Vec<u32> {
        self.viewers_open.iter().map(|count| count.load(Ordering::Relaxed)).collect()
    }

    /// Its open viewers, on every replica together.
    pub fn viewers_total(&self) -> u64 {
        self.viewers_open.iter().map(|count| u64::from(count.load(Ordering::Relaxed))).sum()
    }
}

/// Where the run stands, for the progress line.
#[derive(Default)]
pub struct Progress {
    phase: AtomicU8,
    threads_created: AtomicU64,
    pub viewers: ViewerProgress,
    pub sent: AtomicU64,
    pub answered_ok: AtomicU64,
    pub answered_failed: AtomicU64,
    /// Deliveries due from what was answered so far.
    pub expected: AtomicU64,
    /// Deliveries matched so far, of anything sent.
    pub delivered: AtomicU64,
    /// Mixed only: finished answers matched so far.
    pub answers: AtomicU64,
    pub resyncs: AtomicU64,
}

const PHASE_CREATE: u8 = 0;
const PHASE_OPEN: u8 = 1;
const PHASE_SEND: u8 = 2;
const PHASE_DRAIN: u8 = 3;

/// What every task of the run shares.
pub struct Net {
    pub pool: Pool,
    /// When the send phase began, in unix microseconds.
    pub sends_from_us: AtomicU64,
    pub progress: Progress,
    shards: Vec<Mutex<FanoutStats>>,
    /// What each viewer had received when its stream was over, kept by the scenarios that check it after the run.
    pub viewer_ends: Mutex<Vec<ViewerEnd>>,
}

/// What one viewer had received of its thread when its stream was over.
#[derive(Debug)]
pub struct ViewerEnd {
    pub thread: usize,
    pub replica: usize,
    /// The scenario's record of what it received, per message of its thread's book.
    pub seen: Vec<u8>,
    /// See `Viewer::last_cut_us`.
    pub last_cut_us: u64,
}

impl Net {
    pub fn new(pool: Pool, recorders: u32) -> Self {
        let shard_count = (recorders as usize).clamp(1, MAX_SHARDS);
        Net {
            pool,
            sends_from_us: AtomicU64::new(0),
            progress: Progress::default(),
            shards: (0..shard_count).map(|_| Mutex::new(FanoutStats::default())).collect(),
            viewer_ends: Mutex::new(Vec::new()),
        }
    }

    /// The result shard that recorder `index` (a viewer, a thread's sender) records into.
    pub fn shard(&self, index: usize) -> MutexGuard<'_, FanoutStats> {
        lock(&self.shards[index % self.shards.len()])
    }

    /// Counts the answer to what was sent to thread `index`, which has `viewers` open viewers: a success, timed, makes
    /// each of them due a delivery; a failure counts under `<what>_<kind>`, such as `update_http_500`.
    pub fn record_answer(&self, index: usize, viewers: u64, outcome: Outcome, what: &str) -> Answer {
        match outcome {
            Outcome::Ok { latency, first_event, .. } => {
                self.progress.answered_ok.fetch_add(1, Ordering::Relaxed);
                self.progress.expected.fetch_add(viewers, Ordering::Relaxed);
                self.shard(index).record_answered(latency, first_event);
                Answer::Ok
            }
            Outcome::Failed(kind, detail) => {
                self.progress.answered_failed.fetch_add(1, Ordering::Relaxed);
                self.shard(index).record_error(what, kind, &detail);
                Answer::Failed
            }
            // The run ended while it was under way, so it counts as failed and no error explains it.
            Outcome::Cut => {
                self.progress.answered_failed.fetch_add(1, Ordering::Relaxed);
                Answer::Failed
            }
        }
    }

    /// Every shard's results together.
    fn stats(&self) -> FanoutStats {
        let mut stats = FanoutStats::default();
        for shard in &self.shards {
            stats.merge(&lock(shard));
        }
        stats
    }
}

/// A finished run: its threads with their books, and what was measured on the way.
pub struct Finished<L: Load> {
    pub net: Arc<Net>,
    pub threads: Arc<Vec<Thread<L::Book>>>,
    pub summary: SpreadSummary,
    pub send_phase: L::SendPhase,
    pub stats: FanoutStats,
    /// CPU seconds the `--server-pid` processes used from the first send to the end of the drain.
    pub server_cpu: Option<f64>,
}

/// Runs the whole scenario; an error means setup failed and nothing was measured.
pub async fn run<L: Load>(load: &L, user_header: HeaderName, timeout: Duration) -> Result<Finished<L>, String> {
    let spread = load.spread();
    check_fd_limit(spread.viewers)?;
    let net = Arc::new(Net::new(Pool::new(&spread.replicas, user_header, timeout)?, load.recorders()));
    let targets = net.pool.authorities();
    say(&format!(
        "chatkit-loadtest: {} with {} viewers on {} threads over {} replicas ({}); {}",
        L::NAME,
        spread.viewers,
        spread.threads,
        targets.len(),
        targets.join(", "),
        load.send_phase()
    ));
    let setup_deadline = Instant::now() + spread.setup_timeout;
    let progress = tokio::spawn(show_progress::<L>(Arc::clone(&net), spread.threads, spread.viewers));
    let result = run_phases(load, &net, setup_deadline).await;
    progress.abort();
    if std::io::stderr().is_terminal() {
        // The table that follows starts on a clean line.
        eprint!("\r\x1b[2K");
    }
    let (threads, open_time, send_phase, server_cpu) = result?;
    let summary = SpreadSummary {
        replicas: spread.replicas.len(),
        threads: spread.threads,
        viewers: spread.viewers,
        duration: spread.duration,
        drain: spread.drain,
        open_time,
        connections: net.pool.connections(),
    };
    let stats = net.stats();
    if server_cpu.is_none() && !spread.server_pids.is_empty() {
        say("chatkit-loadtest: a --server-pid process was not there to read its CPU time");
    }
    Ok(Finished { net, threads, summary, send_phase, stats, server_cpu })
}

type Phases<L> = (Arc<Vec<Thread<<L as Load>::Book>>>, Duration, <L as Load>::SendPhase, Option<f64>);

/// Setup, send phase and drain; answers the threads with their books, the time the viewers took to open, what the
/// send phase answered, and the CPU time of the `--server-pid` processes over the send phase and the drain.
async fn run_phases<L: Load>(load: &L, net: &Arc<Net>, setup_deadline: Instant) -> Result<Phases<L>, String> {
    let spread = load.spread();
    let threads = match tokio::time::timeout_at(setup_deadline, create_threads::<L>(net, spread.threads)).await {
        Ok(threads) => Arc::new(threads?),
        Err(_) => {
            return Err(format!("creating {} threads took longer than {:?}", spread.threads, spread.setup_timeout))
        }
    };

    net.progress.phase.store(PHASE_OPEN, Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let open_started = Instant::now();
    let (mut viewers, open_result) = open_viewers::<L>(net, &threads, spread, stop_rx, setup_deadline).await;
    let open_time = open_started.elapsed();
    if let Err(message) = open_result {
        stop_tx.send_replace(true);
        viewers.abort_all();
        return Err(message);
    }
    say(&format!(
        "chatkit-loadtest: {} viewers open ({} failed) after {:.2} s; {}",
        net.progress.viewers.opened.load(Ordering::Relaxed),
        net.progress.viewers.open_failed.load(Ordering::Relaxed),
        open_time.as_secs_f64(),
        L::START
    ));

    net.progress.phase.store(PHASE_SEND, Ordering::Relaxed);
    net.sends_from_us.store(now_us(), Ordering::Relaxed);
    // Nothing but the load and its deliveries runs in this window: every viewer is open and none has stopped.
    let cpu_from = server_cpu(&spread.server_pids);
    let send_phase = load.send(net, &threads).await;

    net.progress.phase.store(PHASE_DRAIN, Ordering::Relaxed);
    tokio::time::sleep(spread.drain).await;
    let cpu = cpu_from.zip(server_cpu(&spread.server_pids)).map(|(from, to)| to - from);
    stop_all(viewers, &stop_tx).await;
    Ok((threads, open_time, send_phase, cpu))
}

/// The CPU seconds the processes `pids` have used so far; `None` without any or when one is gone.
fn server_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    crate::replicas::cpu_seconds_of(pids)
}

/// Creates the threads, thread `t` owned by user `<NAME>-<t>` and created through replica `t mod replicas`, and lets
/// the scenario ready each.
async fn create_threads<L: Load>(net: &Arc<Net>, count: u32) -> Result<Vec<Thread<L::Book>>, String> {
    let net = Arc::clone(net);
    in_parallel(count, CREATE_CONCURRENCY, move |index| {
        let net = Arc::clone(&net);
        async move {
            let user = HeaderValue::from_str(&format!("{}-{index}", L::NAME)).map_err(|e| e.to_string())?;
            let replica = index as usize % net.pool.count();
            let id = net
                .pool
                .create_thread(replica, &user, &format!("{} thread {index}", L::NAME))
                .await
                .map_err(|e| format!("thread {index}: {e}"))?;
            let book = L::prepare(&net, index, replica, &user, &id).await?;
            net.progress.threads_created.fetch_add(1, Ordering::Relaxed);
            Ok(Thread::new(id, user, net.pool.count(), book))
        }
    })
    .await
}

/// Opens every viewer stream, at most `open_concurrency` at a time, and waits until each has opened or failed.
///
/// Viewer `v` watches thread `v mod threads`; the viewers of one thread take the replicas in turn, starting from the
/// thread's own number, so each thread is watched from every replica and the replicas carry equal shares.
async fn open_viewers<L: Load>(
    net: &Arc<Net>,
    threads: &Arc<Vec<Thread<L::Book>>>,
    spread: &Spread,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) -> (JoinSet<()>, Result<(), String>) {
    let thread_count = threads.len() as u32;
    let listeners = (0..spread.viewers)
        .map(|v| {
            let thread = (v % thread_count) as usize;
            Viewer::<L> {
                net: Arc::clone(net),
                threads: Arc::clone(threads),
                index: v as usize,
                thread,
                replica: (thread + (v / thread_count) as usize) % net.pool.count(),
                seen: L::Seen::default(),
                last_cut_us: 0,
            }
        })
        .collect();
    let (viewers, opened) = open_all(listeners, &net.progress.viewers, spread.open_concurrency, stop, deadline).await;
    if opened.is_ok() && net.progress.viewers.opened.load(Ordering::Relaxed) == 0 {
        let first = net.shards.iter().find_map(|shard| lock(shard).first_error.values().next().cloned());
        return (viewers, Err(format!("no viewer stream opened; first error: {}", first.unwrap_or_default())));
    }
    (viewers, opened)
}

/// One viewer: a stream on one thread, and what it has received.
pub struct Viewer<L: Load> {
    pub net: Arc<Net>,
    pub threads: Arc<Vec<Thread<L::Book>>>,
    pub index: usize,
    pub thread: usize,
    pub replica: usize,
    pub seen: L::Seen,
    /// When it last received `event: resync`, in unix microseconds (0 if never); `u64::MAX` once its stream ended
    /// before the run did. A viewer missed nothing it need account for when every message it lacks was sent before
    /// this moment.
    pub last_cut_us: u64,
}

impl<L: Load> Viewer<L> {
    /// The thread it watches.
    pub fn watched(&self) -> &Thread<L::Book> {
        &self.threads[self.thread]
    }

    /// The result shard it records into.
    pub fn shard(&self) -> MutexGuard<'_, FanoutStats> {
        self.net.shard(self.index)
    }

    /// Counts a delivery, `latency_us` after its send.
    pub fn record_delivery(&self, latency_us: u64) {
        self.net.progress.delivered.fetch_add(1, Ordering::Relaxed);
        self.shard().record_delivery(latency_us);
    }
}

/// The data of an `event: resync`.
#[derive(Deserialize)]
struct ResyncData {
    #[serde(default)]
    reason: Option<String>,
}

impl<L: Load> Listener for Viewer<L> {
    fn pool(&self) -> &Pool {
        &self.net.pool
    }

    fn progress(&self) -> &ViewerProgress {
        &self.net.progress.viewers
    }

    fn target(&self) -> (usize, String, HeaderValue) {
        let thread = self.watched();
        (self.replica, format!("/chatkit/threads/{}/events", thread.id), thread.user.clone())
    }

    fn record_opened(&self) {
        self.watched().viewers_open[self.replica].fetch_add(1, Ordering::Relaxed);
    }

    fn record_error(&self, key: String, detail: &str) {
        self.shard().record_named_error(key, detail);
    }

    fn observe(&mut self, name: &[u8], data: &[u8], received_us: u64) {
        match name {
            b"" => L::observe(self, data, received_us),
            b"resync" => {
                let reason = serde_json::from_slice::<ResyncData>(data).ok().and_then(|data| data.reason);
                self.net.progress.resyncs.fetch_add(1, Ordering::Relaxed);
                self.last_cut_us = self.last_cut_us.max(received_us);
                self.shard().record_resync(reason.as_deref().unwrap_or("unknown"));
            }
            _ => self.shard().other_events += 1,
        }
    }

    fn finish(&mut self, ended: bool) {
        if ended {
            self.last_cut_us = u64::MAX;
        }
        L::finish(self);
    }
}

/// Where and when deliveries were lost, counted from the books once every send has been answered and every viewer
/// has stopped.
pub struct Losses(LossDetail);

impl Losses {
    /// Counts for `replicas` replicas and a send phase that began at `from_us`, in unix microseconds.
    pub fn new(replicas: usize, from_us: u64) -> Self {
        Losses(LossDetail { from_us, lost_by_replica: vec![0; replicas], ..LossDetail::default() })
    }

    /// The second of the send phase that `sent` went out in, added to the timeline as needed.
    fn second(&mut self, sent: &Sent) -> &mut Second {
        let timeline = &mut self.0.timeline;
        let second = (sent.sent_us.saturating_sub(self.0.from_us) / 1_000_000) as usize;
        while timeline.len() <= second {
            timeline.push(Second { second: timeline.len() as u64, ..Second::default() });
        }
        &mut timeline[second]
    }

    /// Enters `sent` in the timeline; answers how many viewers received it.
    pub fn enter(&mut self, sent: &Sent) -> u64 {
        let delivered: u64 = sent.delivered.iter().map(|&count| u64::from(count)).sum();
        let slot = self.second(sent);
        slot.second_sent += 1;
        slot.second_deliveries += delivered;
        slot.second_slow += u64::from(sent.slow);
        if sent.max_latency_us > 0 {
            let max_ms = sent.max_latency_us as f64 / 1000.0;
            slot.second_max_ms = Some(slot.second_max_ms.map_or(max_ms, |seen: f64| seen.max(max_ms)));
        }
        delivered
    }

    /// Counts the viewers (by replica) that should have received `what` of `sent` but are not among `got` (by
    /// replica); answers how many did receive it.
    pub fn check(&mut self, sent: &Sent, what: &'static str, viewers: &[u32], got: &[u32]) -> u64 {
        let received: u64 = got.iter().map(|&count| u64::from(count)).sum();
        let expected: u64 = viewers.iter().map(|&count| u64::from(count)).sum();
        if received < expected {
            self.second(sent).second_lost += expected - received;
            let missing: Vec<u32> = viewers.iter().zip(got).map(|(open, got)| open.saturating_sub(*got)).collect();
            for (sum, missed) in self.0.lost_by_replica.iter_mut().zip(&missing) {
                *sum += u64::from(*missed);
            }
            self.0.lost.push(Lost {
                lost_n: sent.n,
                lost_kind: what,
                lost_sent_us: sent.sent_us,
                lost_via_replica: sent.via + 1,
                lost_missing: missing,
                lost_viewers: viewers.to_vec(),
            });
        }
        received
    }

    /// The losses, the first `LOST_SAMPLES` of them one by one in the order they were sent.
    pub fn finish(mut self) -> LossDetail {
        self.0.lost.sort_by_key(|lost| lost.lost_n);
        self.0.lost.truncate(LOST_SAMPLES);
        self.0
    }
}

/// Prints where the run stands once a second on stderr, on one line rewritten in place when stderr is a terminal.
async fn show_progress<L: Load>(net: Arc<Net>, threads: u32, viewers: u32) {
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let p = &net.progress;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut line = format!("[{:>6.1}s] ", started.elapsed().as_secs_f64());
        match p.phase.load(Ordering::Relaxed) {
            PHASE_CREATE => {
                let _ = write!(line, "creating threads: {}/{threads}", load(&p.threads_created));
            }
            PHASE_OPEN => {
                let _ = write!(
                    line,
                    "opening viewers: {}/{viewers} open, {} failed",
                    load(&p.viewers.opened),
                    load(&p.viewers.open_failed)
                );
            }
            phase => {
                let _ = write!(
                    line,
                    "{}: {} {} sent, {} ok, {} failed | {} | resyncs {} | streams ended {}",
                    if phase == PHASE_SEND { L::SENDING } else { "draining" },
                    L::SENDS,
                    load(&p.sent),
                    load(&p.answered_ok),
                    load(&p.answered_failed),
                    L::deliveries(p),
                    load(&p.resyncs),
                    load(&p.viewers.streams_ended)
                );
            }
        }
        if terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
