//! The fanout scenario: viewer streams on many threads across replicas, a steady rate of thread updates, and the time
//! each update takes to reach every viewer of its thread.
//!
//! The run has three phases. Setup creates the threads (each owned by its own user and given a known title) and opens
//! every viewer stream, with bounded concurrency, before anything is sent, since a stream starts at the present. The
//! update phase sends `--rate` updates a second for `--duration`, each to the next thread and the next replica in
//! turn: title changes (`threads.update`) and status changes (lock, unlock) through the admin API, alternating. The
//! drain then waits `--drain` after the last answer before the viewers stop and the deliveries are counted.
//!
//! A `thread.updated` event carries the whole thread, not the change, so each viewer recognizes an update by the state
//! it leads to. Every title and every lock reason is a fresh marker, `fanout n=<update> t=<send time in unix
//! microseconds>`, and a thread's updates are sent one after another, alternating title and status, so no state
//! repeats: an unlock leads back to "active" but under a title no earlier state had with it. The updater writes each
//! update into its thread's book under that state before sending it; a viewer looks the state up, counts the delivery
//! once, and takes the send time from the marker the event carries (from the book for an unlock, whose event carries
//! no marker of its own).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::FanoutShape;
use crate::replicas::{
    check_fd_limit, in_parallel, lock, now_us, say, Pool, CREATE_CONCURRENCY, LOST_SAMPLES, MAX_SHARDS, PROGRESS_EVERY,
    SLOW_DELIVERY,
};
use crate::report::{FanoutReport, FanoutShapeSummary, FanoutStats, FanoutTally, LossDetail, Lost, Second};
use crate::scenario::{Expect, Outcome};
use crate::viewers::{open_all, stop_all, Listener, ViewerProgress};

/// Updates under way at once; the schedule waits for a free slot, and the wait shows as schedule lag.
const MAX_UPDATES_IN_FLIGHT: usize = 128;

/// The text of update `n` sent at `sent_us`, used as a title or as a lock reason.
fn marker(n: u64, sent_us: u64) -> String {
    format!("fanout n={n} t={sent_us}")
}

/// The send time a marker carries, if the text is one.
fn marker_time(text: &str) -> Option<u64> {
    let rest = text.strip_prefix("fanout n=")?;
    rest.split_once(" t=")?.1.parse().ok()
}

/// A thread's status as far as telling updates apart goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Status {
    Active,
    Locked(Option<String>),
    /// Any other status type, which this scenario never sets.
    Other(String),
}

/// What a thread looks like after an update: the key that viewers find the update by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct StateKey {
    title: Option<String>,
    status: Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpdateKind {
    Title,
    Lock,
    Unlock,
}

impl UpdateKind {
    fn name(self) -> &'static str {
        match self {
            UpdateKind::Title => "title",
            UpdateKind::Lock => "lock",
            UpdateKind::Unlock => "unlock",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Pending,
    Ok,
    Failed,
}

/// One update as the updater sent it, and what its viewers made of it.
#[derive(Debug)]
struct Sent {
    /// The update's number in the run, which its marker carries.
    n: u64,
    kind: UpdateKind,
    /// The replica it was sent through.
    via: usize,
    sent_us: u64,
    answer: Answer,
    /// Viewers that received it, by the replica they watch through.
    delivered: Vec<u32>,
    /// The longest fan-out latency of its deliveries, in microseconds.
    max_latency_us: u64,
    /// Deliveries that took `SLOW_DELIVERY` or longer.
    slow: u32,
}

/// What the updater believes a thread looks like, and every update sent to it, by the state it leads to.
#[derive(Debug)]
struct Book {
    title: String,
    locked: Option<String>,
    by_state: HashMap<StateKey, usize>,
    updates: Vec<Sent>,
}

impl Book {
    fn status(&self) -> Status {
        match &self.locked {
            Some(reason) => Status::Locked(Some(reason.clone())),
            None => Status::Active,
        }
    }
}

/// One thread under load: its owner, its viewers and its book.
struct Thread {
    id: String,
    /// The owner, who alone may view and rename it.
    user: HeaderValue,
    /// Viewers of this thread whose stream opened, by the replica they watch through.
    viewers_open: Vec<AtomicU32>,
    /// Held while an update of this thread is under way, so that its updates apply in the order they were made.
    in_order: tokio::sync::Mutex<()>,
    book: Mutex<Book>,
}

impl Thread {
    fn viewers_on(&self) -> Vec<u32> {
        self.viewers_open.iter().map(|count| count.load(Ordering::Relaxed)).collect()
    }
}

/// Where the run stands, for the progress line.
#[derive(Default)]
struct Progress {
    phase: AtomicU8,
    threads_created: AtomicU64,
    viewers: ViewerProgress,
    sent: AtomicU64,
    answered_ok: AtomicU64,
    answered_failed: AtomicU64,
    /// Deliveries due from updates answered so far.
    expected: AtomicU64,
    /// Deliveries matched so far, of any update.
    delivered: AtomicU64,
    resyncs: AtomicU64,
}

const PHASE_CREATE: u8 = 0;
const PHASE_OPEN: u8 = 1;
const PHASE_UPDATE: u8 = 2;
const PHASE_DRAIN: u8 = 3;

/// What every task of the run shares.
struct Net {
    pool: Pool,
    /// When the update phase began, in unix microseconds.
    updates_from_us: AtomicU64,
    progress: Progress,
    shards: Vec<Mutex<FanoutStats>>,
}

impl Net {
    fn shard(&self, index: usize) -> MutexGuard<'_, FanoutStats> {
        lock(&self.shards[index % self.shards.len()])
    }
}

/// Runs the whole scenario and reports it; an error means setup failed and nothing was measured.
pub async fn run(shape: FanoutShape, user_header: HeaderName, timeout: Duration) -> Result<FanoutReport, String> {
    check_fd_limit(shape.viewers)?;
    let shard_count = (shape.viewers as usize).clamp(1, MAX_SHARDS);
    let net = Arc::new(Net {
        pool: Pool::new(&shape.replicas, user_header, timeout)?,
        updates_from_us: AtomicU64::new(0),
        progress: Progress::default(),
        shards: (0..shard_count).map(|_| Mutex::new(FanoutStats::default())).collect(),
    });
    let targets = net.pool.authorities();
    say(&format!(
        "chatkit-loadtest: fanout with {} viewers on {} threads over {} replicas ({}); {} updates/s for {:?}",
        shape.viewers,
        shape.threads,
        targets.len(),
        targets.join(", "),
        shape.rate,
        shape.duration
    ));
    let setup_deadline = Instant::now() + shape.setup_timeout;
    let progress = tokio::spawn(show_progress(Arc::clone(&net), shape.clone()));
    let result = run_phases(&net, &shape, setup_deadline).await;
    progress.abort();
    if std::io::stderr().is_terminal() {
        // The table that follows starts on a clean line.
        eprint!("\r\x1b[2K");
    }
    let (threads, summary) = result?;

    let (tally, detail) = count(&threads, net.pool.count(), net.updates_from_us.load(Ordering::Relaxed));
    let mut stats = FanoutStats::default();
    for shard in &net.shards {
        stats.merge(&lock(shard));
    }
    let summary = FanoutShapeSummary { connections: net.pool.connections(), ..summary };
    Ok(FanoutReport::new(summary, tally, stats, detail))
}

/// Counts what the books say once every update has been answered and every viewer has stopped: deliveries expected
/// and received, where and when they were lost, and the slowest delivery of each second.
fn count(threads: &[Thread], replica_count: usize, updates_from_us: u64) -> (FanoutTally, LossDetail) {
    let mut tally = FanoutTally::default();
    let mut lost_by_replica = vec![0u64; replica_count];
    let mut lost_updates = Vec::new();
    let mut timeline: Vec<Second> = Vec::new();
    for thread in threads.iter() {
        let viewers = thread.viewers_on();
        let total: u64 = viewers.iter().map(|&count| u64::from(count)).sum();
        tally.viewers_open += total;
        let book = lock(&thread.book);
        for sent in &book.updates {
            let delivered: u64 = sent.delivered.iter().map(|&count| u64::from(count)).sum();
            let second = (sent.sent_us.saturating_sub(updates_from_us) / 1_000_000) as usize;
            while timeline.len() <= second {
                timeline.push(Second { second: timeline.len() as u64, ..Second::default() });
            }
            let slot = &mut timeline[second];
            tally.updates_sent += 1;
            slot.second_sent += 1;
            slot.second_deliveries += delivered;
            slot.second_slow += u64::from(sent.slow);
            if sent.max_latency_us > 0 {
                let max_ms = sent.max_latency_us as f64 / 1000.0;
                slot.second_max_ms = Some(slot.second_max_ms.map_or(max_ms, |seen: f64| seen.max(max_ms)));
            }
            match sent.answer {
                Answer::Ok => {
                    tally.updates_ok += 1;
                    tally.expected += total;
                    tally.received += delivered;
                    if delivered < total {
                        slot.second_lost += total - delivered;
                        let missing: Vec<u32> =
                            viewers.iter().zip(&sent.delivered).map(|(open, got)| open.saturating_sub(*got)).collect();
                        for (sum, missed) in lost_by_replica.iter_mut().zip(&missing) {
                            *sum += u64::from(*missed);
                        }
                        lost_updates.push(Lost {
                            lost_n: sent.n,
                            lost_kind: sent.kind.name(),
                            lost_sent_us: sent.sent_us,
                            lost_via_replica: sent.via + 1,
                            lost_missing: missing,
                            lost_viewers: viewers.clone(),
                        });
                    }
                }
                // Every update task has finished, so an unanswered one can only have been abandoned.
                Answer::Failed | Answer::Pending => {
                    tally.updates_failed += 1;
                    tally.received_for_failed += delivered;
                }
            }
        }
    }
    lost_updates.sort_by_key(|lost| lost.lost_n);
    lost_updates.truncate(LOST_SAMPLES);
    (tally, LossDetail { from_us: updates_from_us, lost_by_replica, lost: lost_updates, timeline })
}

/// Setup, updates and drain; answers the threads with their books, and the shape of the phases.
async fn run_phases(
    net: &Arc<Net>,
    shape: &FanoutShape,
    setup_deadline: Instant,
) -> Result<(Arc<Vec<Thread>>, FanoutShapeSummary), String> {
    let threads = match tokio::time::timeout_at(setup_deadline, create_threads(net, shape.threads)).await {
        Ok(threads) => Arc::new(threads?),
        Err(_) => return Err(format!("creating {} threads took longer than {:?}", shape.threads, shape.setup_timeout)),
    };

    net.progress.phase.store(PHASE_OPEN, Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let open_started = Instant::now();
    let (mut viewers, open_result) = open_viewers(net, &threads, shape, stop_rx, setup_deadline).await;
    let open_time = open_started.elapsed();
    if let Err(message) = open_result {
        stop_tx.send_replace(true);
        viewers.abort_all();
        return Err(message);
    }
    say(&format!(
        "chatkit-loadtest: {} viewers open ({} failed) after {:.2} s; sending updates",
        net.progress.viewers.opened.load(Ordering::Relaxed),
        net.progress.viewers.open_failed.load(Ordering::Relaxed),
        open_time.as_secs_f64()
    ));

    net.progress.phase.store(PHASE_UPDATE, Ordering::Relaxed);
    let (send_time, send_lag_max) = send_updates(net, &threads, shape).await;

    net.progress.phase.store(PHASE_DRAIN, Ordering::Relaxed);
    tokio::time::sleep(shape.drain).await;
    stop_all(viewers, &stop_tx).await;
    let summary = FanoutShapeSummary {
        replicas: shape.replicas.len(),
        threads: shape.threads,
        viewers: shape.viewers,
        rate: shape.rate,
        duration: shape.duration,
        drain: shape.drain,
        open_time,
        send_time,
        send_lag_max,
        connections: 0,
    };
    Ok((threads, summary))
}

/// Creates the threads, each owned by user `fanout-<n>` on replica `n mod replicas`, and renames each to a known title
/// so that the first lock of a thread leads to a state the updater can name.
async fn create_threads(net: &Arc<Net>, count: u32) -> Result<Vec<Thread>, String> {
    let net = Arc::clone(net);
    in_parallel(count, CREATE_CONCURRENCY, move |index| {
        let net = Arc::clone(&net);
        async move {
            let thread = create_thread(&net, index).await?;
            net.progress.threads_created.fetch_add(1, Ordering::Relaxed);
            Ok(thread)
        }
    })
    .await
}

async fn create_thread(net: &Net, index: u32) -> Result<Thread, String> {
    let replica = index as usize % net.pool.count();
    let user = HeaderValue::from_str(&format!("fanout-{index}")).map_err(|e| e.to_string())?;
    let id = net
        .pool
        .create_thread(replica, &user, &format!("fan-out thread {index}"))
        .await
        .map_err(|e| format!("thread {index}: {e}"))?;
    let title = format!("fanout thread {index}");
    let rename = json!({"type": "threads.update", "params": {"thread_id": id, "title": title}});
    if let Outcome::Failed(kind, detail) = net.pool.post(replica, "/chatkit", &user, &rename, Expect::Object).await {
        return Err(format!("threads.update for thread {index} failed ({}): {detail}", kind.key()));
    }
    Ok(Thread {
        id,
        user,
        viewers_open: (0..net.pool.count()).map(|_| AtomicU32::new(0)).collect(),
        in_order: tokio::sync::Mutex::new(()),
        book: Mutex::new(Book { title, locked: None, by_state: HashMap::new(), updates: Vec::new() }),
    })
}

/// Opens every viewer stream, at most `open_concurrency` at a time, and waits until each has opened or failed.
///
/// Viewer `v` watches thread `v mod threads`; the viewers of one thread take the replicas in turn, starting from the
/// thread's own number, so each thread is watched from every replica and the replicas carry equal shares.
async fn open_viewers(
    net: &Arc<Net>,
    threads: &Arc<Vec<Thread>>,
    shape: &FanoutShape,
    stop: watch::Receiver<bool>,
    deadline: Instant,
) -> (JoinSet<()>, Result<(), String>) {
    let thread_count = threads.len() as u32;
    let listeners = (0..shape.viewers)
        .map(|v| {
            let thread = (v % thread_count) as usize;
            Viewer {
                net: Arc::clone(net),
                threads: Arc::clone(threads),
                index: v as usize,
                thread,
                replica: (thread + (v / thread_count) as usize) % net.pool.count(),
                seen: Vec::new(),
            }
        })
        .collect();
    let (viewers, opened) = open_all(listeners, &net.progress.viewers, shape.open_concurrency, stop, deadline).await;
    if opened.is_ok() && net.progress.viewers.opened.load(Ordering::Relaxed) == 0 {
        let first = net.shards.iter().find_map(|shard| lock(shard).first_error.values().next().cloned());
        return (viewers, Err(format!("no viewer stream opened; first error: {}", first.unwrap_or_default())));
    }
    (viewers, opened)
}

/// The event fields a viewer reads; serde skips everything else.
#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    thread: Option<EventThread>,
}

#[derive(Deserialize)]
struct EventThread {
    id: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    status: Option<EventStatus>,
}

#[derive(Deserialize)]
struct EventStatus {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ResyncData {
    #[serde(default)]
    reason: Option<String>,
}

impl EventThread {
    fn state(&self) -> StateKey {
        let status = match &self.status {
            None => Status::Active,
            Some(status) if status.kind == "active" => Status::Active,
            Some(status) if status.kind == "locked" => Status::Locked(status.reason.clone()),
            Some(status) => Status::Other(status.kind.clone()),
        };
        StateKey { title: self.title.clone(), status }
    }
}

/// One viewer: a stream on one thread, and the updates it has received.
struct Viewer {
    net: Arc<Net>,
    threads: Arc<Vec<Thread>>,
    index: usize,
    thread: usize,
    replica: usize,
    /// Indices into its thread's book of the updates received, to tell a second copy.
    seen: Vec<usize>,
}

impl Listener for Viewer {
    fn pool(&self) -> &Pool {
        &self.net.pool
    }

    fn progress(&self) -> &ViewerProgress {
        &self.net.progress.viewers
    }

    fn target(&self) -> (usize, String, HeaderValue) {
        let thread = &self.threads[self.thread];
        (self.replica, format!("/chatkit/threads/{}/events", thread.id), thread.user.clone())
    }

    fn record_opened(&self) {
        self.threads[self.thread].viewers_open[self.replica].fetch_add(1, Ordering::Relaxed);
    }

    fn record_error(&self, key: String, detail: &str) {
        self.net.shard(self.index).record_named_error(key, detail);
    }

    /// Records one event of the stream.
    fn observe(&mut self, name: &[u8], data: &[u8], received_us: u64) {
        match name {
            b"" => {}
            b"resync" => {
                let reason = serde_json::from_slice::<ResyncData>(data).ok().and_then(|data| data.reason);
                self.net.progress.resyncs.fetch_add(1, Ordering::Relaxed);
                self.net.shard(self.index).record_resync(reason.as_deref().unwrap_or("unknown"));
                return;
            }
            _ => {
                self.net.shard(self.index).other_events += 1;
                return;
            }
        }
        let event: Event = match serde_json::from_slice(data) {
            Ok(event) => event,
            Err(e) => {
                self.net.shard(self.index).record_named_error("stream_bad_event".into(), &format!("{e}"));
                return;
            }
        };
        let updated = match event.thread {
            Some(thread) if event.kind == "thread.updated" => thread,
            _ => {
                self.net.shard(self.index).other_events += 1;
                return;
            }
        };
        let thread = &self.threads[self.thread];
        if updated.id != thread.id {
            self.net.shard(self.index).unmatched += 1;
            return;
        }
        let state = updated.state();
        let latency_us = {
            let mut book = lock(&thread.book);
            let Some(&update) = book.by_state.get(&state) else {
                drop(book);
                self.net.shard(self.index).unmatched += 1;
                return;
            };
            if self.seen.contains(&update) {
                drop(book);
                self.net.shard(self.index).duplicates += 1;
                return;
            }
            self.seen.push(update);
            let sent = &mut book.updates[update];
            sent.delivered[self.replica] += 1;
            // The send time comes from the event itself where the update put a marker in it.
            let carried = match (sent.kind, &state.status) {
                (UpdateKind::Title, _) => state.title.as_deref().and_then(marker_time),
                (UpdateKind::Lock, Status::Locked(Some(reason))) => marker_time(reason),
                _ => None,
            };
            let latency_us = received_us.saturating_sub(carried.unwrap_or(sent.sent_us));
            sent.max_latency_us = sent.max_latency_us.max(latency_us);
            if latency_us >= SLOW_DELIVERY.as_micros() as u64 {
                sent.slow += 1;
            }
            latency_us
        };
        self.net.progress.delivered.fetch_add(1, Ordering::Relaxed);
        self.net.shard(self.index).record_delivery(latency_us);
    }
}

/// Sends the updates on schedule and waits for every answer; answers the length of the send phase and the
/// largest lag behind the schedule.
async fn send_updates(net: &Arc<Net>, threads: &Arc<Vec<Thread>>, shape: &FanoutShape) -> (Duration, Duration) {
    let total = ((shape.rate * shape.duration.as_secs_f64()).floor() as u64).max(1);
    let permits = Arc::new(Semaphore::new(MAX_UPDATES_IN_FLIGHT));
    let mut updates = JoinSet::new();
    let start = Instant::now();
    net.updates_from_us.store(now_us(), Ordering::Relaxed);
    let mut lag_max = Duration::ZERO;
    let mut last_start = start;
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / shape.rate);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        last_start = Instant::now();
        lag_max = lag_max.max(last_start - due);
        let (net, threads) = (Arc::clone(net), Arc::clone(threads));
        updates.spawn(async move {
            update(&net, &threads, n).await;
            drop(permit);
        });
        // Finished tasks are reaped as the schedule goes, so the set stays small.
        while updates.try_join_next().is_some() {}
    }
    while updates.join_next().await.is_some() {}
    let send_time = (last_start - start) + Duration::from_secs_f64(1.0 / shape.rate);
    (send_time, lag_max)
}

/// Sends update `n`: to thread `n mod threads` through replica `n mod replicas`, a title change or a status change in
/// turn for that thread.
async fn update(net: &Net, threads: &[Thread], n: u64) {
    let count = threads.len() as u64;
    let index = (n % count) as usize;
    let round = n / count;
    let thread = &threads[index];
    let replica = (n % net.pool.count() as u64) as usize;
    let _in_order = thread.in_order.lock().await;
    let (update, kind, text) = {
        let mut book = lock(&thread.book);
        let sent_us = now_us();
        let text = marker(n, sent_us);
        let (kind, state) = if (index as u64 + round).is_multiple_of(2) {
            (UpdateKind::Title, StateKey { title: Some(text.clone()), status: book.status() })
        } else if book.locked.is_some() {
            (UpdateKind::Unlock, StateKey { title: Some(book.title.clone()), status: Status::Active })
        } else {
            (UpdateKind::Lock, StateKey { title: Some(book.title.clone()), status: Status::Locked(Some(text.clone())) })
        };
        let update = book.updates.len();
        let delivered = vec![0; net.pool.count()];
        book.updates.push(Sent {
            n,
            kind,
            via: replica,
            sent_us,
            answer: Answer::Pending,
            delivered,
            max_latency_us: 0,
            slow: 0,
        });
        if book.by_state.insert(state, update).is_some() {
            net.shard(index).record_named_error(
                "update_state_repeated".into(),
                "an update leads to a state an earlier one led to, so their deliveries cannot be told apart",
            );
        }
        (update, kind, text)
    };
    let (path, body) = match kind {
        UpdateKind::Title => (
            "/chatkit".to_string(),
            json!({"type": "threads.update", "params": {"thread_id": thread.id, "title": text}}),
        ),
        UpdateKind::Lock => (status_path(&thread.id), json!({"type": "locked", "reason": text})),
        UpdateKind::Unlock => (status_path(&thread.id), json!({"type": "active"})),
    };
    net.progress.sent.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let outcome = net.pool.post(replica, &path, &thread.user, &body, Expect::Object).await;
    let latency = started.elapsed();
    let ok = matches!(outcome, Outcome::Ok { .. });
    {
        let mut book = lock(&thread.book);
        book.updates[update].answer = if ok { Answer::Ok } else { Answer::Failed };
        // The updater's belief follows only answered changes; a failed one may or may not have applied.
        if ok {
            match kind {
                UpdateKind::Title => book.title = text,
                UpdateKind::Lock => book.locked = Some(text),
                UpdateKind::Unlock => book.locked = None,
            }
        }
    }
    match outcome {
        Outcome::Ok { .. } => {
            net.progress.answered_ok.fetch_add(1, Ordering::Relaxed);
            let viewers: u64 = thread.viewers_on().iter().map(|&count| u64::from(count)).sum();
            net.progress.expected.fetch_add(viewers, Ordering::Relaxed);
            net.shard(index).record_update(latency);
        }
        Outcome::Failed(kind, detail) => {
            net.progress.answered_failed.fetch_add(1, Ordering::Relaxed);
            net.shard(index).record_error("update", kind, &detail);
        }
        Outcome::Cut => {
            net.progress.answered_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn status_path(thread_id: &str) -> String {
    format!("/v1/chatkit/threads/{thread_id}/status")
}

/// Prints where the run stands once a second on stderr, on one line rewritten in place when stderr is a terminal.
async fn show_progress(net: Arc<Net>, shape: FanoutShape) {
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
                let _ = write!(line, "creating threads: {}/{}", load(&p.threads_created), shape.threads);
            }
            PHASE_OPEN => {
                let _ = write!(
                    line,
                    "opening viewers: {}/{} open, {} failed",
                    load(&p.viewers.opened),
                    shape.viewers,
                    load(&p.viewers.open_failed)
                );
            }
            phase => {
                let _ = write!(
                    line,
                    "{}: updates {} sent, {} ok, {} failed | deliveries {}/{} due | resyncs {} | streams ended {}",
                    if phase == PHASE_UPDATE { "updating" } else { "draining" },
                    load(&p.sent),
                    load(&p.answered_ok),
                    load(&p.answered_failed),
                    load(&p.delivered),
                    load(&p.expected),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_carry_their_send_time() {
        let text = marker(42, 1_764_000_000_123_456);
        assert_eq!(text, "fanout n=42 t=1764000000123456");
        assert_eq!(marker_time(&text), Some(1_764_000_000_123_456));
        assert_eq!(marker_time("fanout thread 3"), None);
        assert_eq!(marker_time("fanout n=1 t=soon"), None);
    }

    #[test]
    fn reads_the_state_an_event_shows() {
        let event: Event = serde_json::from_str(
            r#"{"type":"thread.updated","thread":{"id":"thr_1","title":"fanout n=1 t=2","created_at":"2025-01-01T00:00:00Z",
                "status":{"type":"locked","reason":"fanout n=3 t=4"},"metadata":{},"items":{"data":[],"has_more":false}}}"#,
        )
        .unwrap();
        let state = event.thread.unwrap().state();
        assert_eq!(state.title.as_deref(), Some("fanout n=1 t=2"));
        assert_eq!(state.status, Status::Locked(Some("fanout n=3 t=4".into())));
        let active: EventThread = serde_json::from_str(r#"{"id":"thr_1","status":{"type":"active"}}"#).unwrap();
        assert_eq!(active.state(), StateKey { title: None, status: Status::Active });
    }

    /// The states a thread goes through under strictly alternating title and status updates never repeat,
    /// whichever kind comes first, so every delivery names exactly one update.
    #[test]
    fn alternating_updates_never_repeat_a_state() {
        for first_is_title in [true, false] {
            let mut title = "fanout thread 0".to_string();
            let mut locked: Option<String> = None;
            let mut states = std::collections::HashSet::new();
            for n in 0..40u64 {
                let text = marker(n, n);
                if (n % 2 == 0) == first_is_title {
                    title = text;
                } else if locked.is_some() {
                    locked = None;
                } else {
                    locked = Some(text);
                }
                let status = locked.clone().map_or(Status::Active, |reason| Status::Locked(Some(reason)));
                assert!(states.insert(StateKey { title: Some(title.clone()), status }), "state repeated at {n}");
            }
        }
    }
}
