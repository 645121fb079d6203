//! The mixed scenario: viewer streams on threads across replicas while writers send turns back to back, and the time
//! each user message takes to reach every viewer of its thread.
//!
//! Setup creates the threads (thread `t` owned by user `mixed-<t>`, through replica `t mod replicas`) and opens every
//! viewer stream before any turn is sent, since a fresh stream starts at the present. Then `--writers` writers each
//! send turns (`threads.add_user_message`, answered by an event stream that the echo responder fills) one after
//! another for `--duration`: the n-th turn of the run goes to thread `n mod threads`, through the replicas in turn.
//! Two writers may send to the same thread at once; its turns then queue in the thread's actor. The drain waits
//! `--drain` after the last turn's end before the viewers stop and the deliveries are counted.
//!
//! Every user message is a marker, `mixed k=<thread>.<turn> t=<send time in unix microseconds>`, naming its thread,
//! its place in that thread's book and the moment it was sent. The echo responder answers `echo: <the same text>`, so
//! a viewer recognizes both the user message's `thread.item.done` and the finished answer's, counts each once, and
//! times the user message from the send time its marker carries.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::MixedShape;
use crate::replicas::{
    check_fd_limit, cpu_seconds, in_parallel, lock, now_us, say, Pool, CREATE_CONCURRENCY, LOST_SAMPLES, MAX_SHARDS,
    PROGRESS_EVERY, SLOW_DELIVERY,
};
use crate::report::{FanoutStats, LossDetail, Lost, MixedReport, MixedShapeSummary, MixedTally, Second};
use crate::scenario::{user_input, Expect, Outcome};
use crate::viewers::{open_all, stop_all, Listener, ViewerProgress};

/// What every marker starts with.
const MARKER_PREFIX: &str = "mixed k=";

/// The text of turn `turn` of thread `thread`, sent at `sent_us`.
fn marker(thread: usize, turn: usize, sent_us: u64) -> String {
    format!("{MARKER_PREFIX}{thread}.{turn} t={sent_us}")
}

/// What a marker names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Mark {
    thread: usize,
    turn: usize,
    sent_us: u64,
}

/// The marker in `text`, wherever it starts (the echo answer puts `echo: ` before it).
fn find_marker(text: &str) -> Option<Mark> {
    let rest = &text[text.find(MARKER_PREFIX)? + MARKER_PREFIX.len()..];
    let (key, rest) = rest.split_once(" t=")?;
    let (thread, turn) = key.split_once('.')?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    Some(Mark { thread: thread.parse().ok()?, turn: turn.parse().ok()?, sent_us: rest[..digits].parse().ok()? })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Pending,
    Ok,
    Failed,
}

/// One turn as a writer sent it, and what the viewers of its thread made of it.
#[derive(Debug)]
struct Turn {
    /// The turn's number in the run.
    n: u64,
    /// The replica it was sent through.
    via: usize,
    sent_us: u64,
    answer: Answer,
    /// Viewers that received its user message, by the replica they watch through.
    delivered: Vec<u32>,
    /// Viewers that received its finished answer, by replica.
    answered: Vec<u32>,
    /// The longest fan-out latency of its user message, in microseconds.
    max_latency_us: u64,
    /// User-message deliveries that took `SLOW_DELIVERY` or longer.
    slow: u32,
}

/// One thread under load: its owner, its viewers and the turns sent to it, in the order their markers were made.
struct Thread {
    id: String,
    /// The owner, who alone may write to and view it.
    user: HeaderValue,
    /// Viewers of this thread whose stream opened, by the replica they watch through.
    viewers_open: Vec<AtomicU32>,
    turns: Mutex<Vec<Turn>>,
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
    /// User-message deliveries due from turns answered so far.
    expected: AtomicU64,
    /// User-message deliveries matched so far, of any turn.
    delivered: AtomicU64,
    /// Finished answers matched so far.
    answers: AtomicU64,
    resyncs: AtomicU64,
}

const PHASE_CREATE: u8 = 0;
const PHASE_OPEN: u8 = 1;
const PHASE_WRITE: u8 = 2;
const PHASE_DRAIN: u8 = 3;

/// What every task of the run shares.
struct Net {
    pool: Pool,
    /// When the writers started, in unix microseconds.
    writes_from_us: AtomicU64,
    progress: Progress,
    shards: Vec<Mutex<FanoutStats>>,
}

impl Net {
    fn shard(&self, index: usize) -> MutexGuard<'_, FanoutStats> {
        lock(&self.shards[index % self.shards.len()])
    }
}

/// Runs the whole scenario and reports it; an error means setup failed and nothing was measured.
pub async fn run(shape: MixedShape, user_header: HeaderName, timeout: Duration) -> Result<MixedReport, String> {
    check_fd_limit(shape.viewers)?;
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let shard_count = (shape.viewers.max(shape.writers) as usize).clamp(1, MAX_SHARDS);
    let net = Arc::new(Net {
        pool: Pool::new(&shape.replicas, user_header, timeout)?,
        writes_from_us: AtomicU64::new(0),
        progress: Progress::default(),
        shards: (0..shard_count).map(|_| Mutex::new(FanoutStats::default())).collect(),
    });
    let targets = net.pool.authorities();
    say(&format!(
        "chatkit-loadtest: mixed with {} viewers on {} threads over {} replicas ({}); {} writers for {:?}",
        shape.viewers,
        shape.threads,
        targets.len(),
        targets.join(", "),
        shape.writers,
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

    let (tally, detail) = count(&threads, net.pool.count(), net.writes_from_us.load(Ordering::Relaxed));
    let mut stats = FanoutStats::default();
    for shard in &net.shards {
        stats.merge(&lock(shard));
    }
    let loadtest_cpu = cpu_seconds().zip(cpu_before).map(|(after, before)| after - before);
    let summary = MixedShapeSummary {
        connections: net.pool.connections(),
        loadtest_cpu,
        wall_time: started.elapsed(),
        ..summary
    };
    Ok(MixedReport::new(summary, tally, stats, detail))
}

/// Setup, writes and drain; answers the threads with their books, and the shape of the phases.
async fn run_phases(
    net: &Arc<Net>,
    shape: &MixedShape,
    setup_deadline: Instant,
) -> Result<(Arc<Vec<Thread>>, MixedShapeSummary), String> {
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
        "chatkit-loadtest: {} viewers open ({} failed) after {:.2} s; writers start",
        net.progress.viewers.opened.load(Ordering::Relaxed),
        net.progress.viewers.open_failed.load(Ordering::Relaxed),
        open_time.as_secs_f64()
    ));

    net.progress.phase.store(PHASE_WRITE, Ordering::Relaxed);
    let write_time = write(net, &threads, shape).await;

    net.progress.phase.store(PHASE_DRAIN, Ordering::Relaxed);
    tokio::time::sleep(shape.drain).await;
    stop_all(viewers, &stop_tx).await;
    let summary = MixedShapeSummary {
        replicas: shape.replicas.len(),
        threads: shape.threads,
        viewers: shape.viewers,
        writers: shape.writers,
        duration: shape.duration,
        drain: shape.drain,
        open_time,
        write_time,
        connections: 0,
        loadtest_cpu: None,
        wall_time: Duration::ZERO,
    };
    Ok((threads, summary))
}

/// Creates the threads, thread `t` owned by user `mixed-<t>` and created through replica `t mod replicas`.
async fn create_threads(net: &Arc<Net>, count: u32) -> Result<Vec<Thread>, String> {
    let net = Arc::clone(net);
    in_parallel(count, CREATE_CONCURRENCY, move |index| {
        let net = Arc::clone(&net);
        async move {
            let user = HeaderValue::from_str(&format!("mixed-{index}")).map_err(|e| e.to_string())?;
            let replica = index as usize % net.pool.count();
            let id = net
                .pool
                .create_thread(replica, &user, &format!("mixed thread {index}"))
                .await
                .map_err(|e| format!("thread {index}: {e}"))?;
            net.progress.threads_created.fetch_add(1, Ordering::Relaxed);
            Ok(Thread {
                id,
                user,
                viewers_open: (0..net.pool.count()).map(|_| AtomicU32::new(0)).collect(),
                turns: Mutex::new(Vec::new()),
            })
        }
    })
    .await
}

/// Opens every viewer stream, at most `open_concurrency` at a time, and waits until each has opened or failed.
///
/// Viewer `v` watches thread `v mod threads`; the viewers of one thread take the replicas in turn, starting from the
/// thread's own number, so each thread is watched from every replica and the replicas carry equal shares.
async fn open_viewers(
    net: &Arc<Net>,
    threads: &Arc<Vec<Thread>>,
    shape: &MixedShape,
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
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    item: Option<Item<'a>>,
}

#[derive(Deserialize)]
struct Item<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    thread_id: Option<Cow<'a, str>>,
    #[serde(default)]
    content: Vec<Part>,
}

#[derive(Deserialize)]
struct Part {
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ResyncData {
    #[serde(default)]
    reason: Option<String>,
}

/// Which finished item of a turn a viewer received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Received {
    UserMessage,
    Answer,
}

impl Received {
    /// Its bit in a viewer's record of what it has seen of a turn.
    fn bit(self) -> u8 {
        match self {
            Received::UserMessage => 1,
            Received::Answer => 2,
        }
    }
}

/// One viewer: a stream on one thread, and the turns it has received.
struct Viewer {
    net: Arc<Net>,
    threads: Arc<Vec<Thread>>,
    index: usize,
    thread: usize,
    replica: usize,
    /// For each turn of its thread, the `Received` bits seen, to tell a second copy.
    seen: Vec<u8>,
}

impl Viewer {
    /// What a `data:` event says about the turns of this viewer's thread: which finished item of which turn, or
    /// `None` for any other event; an error names an event that looks like a turn's but matches none.
    fn classify(&self, data: &[u8]) -> Result<Option<(Received, Mark)>, &'static str> {
        let event: Event<'_> = serde_json::from_slice(data).map_err(|_| "stream_bad_event")?;
        let (received, item) = match (&*event.kind, event.item) {
            ("thread.item.done", Some(item)) if item.kind == "user_message" => (Received::UserMessage, item),
            ("thread.item.done", Some(item)) if item.kind == "assistant_message" => (Received::Answer, item),
            _ => return Ok(None),
        };
        let thread = &self.threads[self.thread];
        let mark = item.content.iter().filter_map(|part| part.text.as_deref()).find_map(find_marker);
        match mark {
            Some(mark) if mark.thread == self.thread && item.thread_id.as_deref().is_none_or(|id| id == thread.id) => {
                Ok(Some((received, mark)))
            }
            _ => Err("unmatched"),
        }
    }
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
        let (received, mark) = match self.classify(data) {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.net.shard(self.index).other_events += 1;
                return;
            }
            Err("unmatched") => {
                self.net.shard(self.index).unmatched += 1;
                return;
            }
            Err(key) => {
                let start: String = String::from_utf8_lossy(data).chars().take(200).collect();
                self.net.shard(self.index).record_named_error(key.to_string(), &start);
                return;
            }
        };
        let thread = &self.threads[self.thread];
        let latency_us = {
            let mut turns = lock(&thread.turns);
            let Some(turn) = turns.get_mut(mark.turn).filter(|turn| turn.sent_us == mark.sent_us) else {
                drop(turns);
                self.net.shard(self.index).unmatched += 1;
                return;
            };
            if self.seen.len() <= mark.turn {
                self.seen.resize(mark.turn + 1, 0);
            }
            if self.seen[mark.turn] & received.bit() != 0 {
                drop(turns);
                self.net.shard(self.index).duplicates += 1;
                return;
            }
            self.seen[mark.turn] |= received.bit();
            if received == Received::Answer {
                turn.answered[self.replica] += 1;
                drop(turns);
                self.net.progress.answers.fetch_add(1, Ordering::Relaxed);
                return;
            }
            turn.delivered[self.replica] += 1;
            let latency_us = received_us.saturating_sub(mark.sent_us);
            turn.max_latency_us = turn.max_latency_us.max(latency_us);
            if latency_us >= SLOW_DELIVERY.as_micros() as u64 {
                turn.slow += 1;
            }
            latency_us
        };
        self.net.progress.delivered.fetch_add(1, Ordering::Relaxed);
        self.net.shard(self.index).record_delivery(latency_us);
    }
}

/// Runs the writers for the run's duration and waits for their last turns; answers the time from their start to the
/// end of the last turn.
async fn write(net: &Arc<Net>, threads: &Arc<Vec<Thread>>, shape: &MixedShape) -> Duration {
    let start = Instant::now();
    let end = start + shape.duration;
    net.writes_from_us.store(now_us(), Ordering::Relaxed);
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for _ in 0..shape.writers {
        let (net, threads, next) = (Arc::clone(net), Arc::clone(threads), Arc::clone(&next));
        writers.spawn(async move {
            while Instant::now() < end {
                send_turn(&net, &threads, next.fetch_add(1, Ordering::Relaxed)).await;
            }
        });
    }
    while writers.join_next().await.is_some() {}
    start.elapsed()
}

/// Sends turn `n`: to thread `n mod threads`, through the replicas in turn, so that each thread hears from every
/// replica even when the replica count divides the thread count.
async fn send_turn(net: &Net, threads: &[Thread], n: u64) {
    let count = threads.len() as u64;
    let index = (n % count) as usize;
    let replica = ((n + n / count) % net.pool.count() as u64) as usize;
    let thread = &threads[index];
    let (slot, text) = {
        let mut turns = lock(&thread.turns);
        let slot = turns.len();
        let sent_us = now_us();
        turns.push(Turn {
            n,
            via: replica,
            sent_us,
            answer: Answer::Pending,
            delivered: vec![0; net.pool.count()],
            answered: vec![0; net.pool.count()],
            max_latency_us: 0,
            slow: 0,
        });
        (slot, marker(index, slot, sent_us))
    };
    let body = json!({
        "type": "threads.add_user_message",
        "params": {"thread_id": thread.id, "input": user_input(&text)},
    });
    net.progress.sent.fetch_add(1, Ordering::Relaxed);
    let outcome = net.pool.post(replica, "/chatkit", &thread.user, &body, Expect::Turn).await;
    let ok = matches!(outcome, Outcome::Ok { .. });
    lock(&thread.turns)[slot].answer = if ok { Answer::Ok } else { Answer::Failed };
    match outcome {
        Outcome::Ok { latency, first_event, .. } => {
            net.progress.answered_ok.fetch_add(1, Ordering::Relaxed);
            let viewers: u64 = thread.viewers_on().iter().map(|&count| u64::from(count)).sum();
            net.progress.expected.fetch_add(viewers, Ordering::Relaxed);
            net.shard(index).record_turn(latency, first_event);
        }
        Outcome::Failed(kind, detail) => {
            net.progress.answered_failed.fetch_add(1, Ordering::Relaxed);
            net.shard(index).record_error("turn", kind, &detail);
        }
        Outcome::Cut => {
            net.progress.answered_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Counts what the books say once every turn has ended and every viewer has stopped: deliveries expected and
/// received, where and when they were lost, and the slowest delivery of each second.
fn count(threads: &[Thread], replica_count: usize, writes_from_us: u64) -> (MixedTally, LossDetail) {
    let mut tally = MixedTally::default();
    let mut lost_by_replica = vec![0u64; replica_count];
    let mut lost = Vec::new();
    let mut timeline: Vec<Second> = Vec::new();
    for thread in threads {
        let viewers = thread.viewers_on();
        let total: u64 = viewers.iter().map(|&count| u64::from(count)).sum();
        tally.viewers_open += total;
        let turns = lock(&thread.turns);
        for turn in turns.iter() {
            let delivered: u64 = turn.delivered.iter().map(|&count| u64::from(count)).sum();
            let answered: u64 = turn.answered.iter().map(|&count| u64::from(count)).sum();
            let second = (turn.sent_us.saturating_sub(writes_from_us) / 1_000_000) as usize;
            while timeline.len() <= second {
                timeline.push(Second { second: timeline.len() as u64, ..Second::default() });
            }
            let slot = &mut timeline[second];
            tally.turns_sent += 1;
            slot.second_sent += 1;
            slot.second_deliveries += delivered;
            slot.second_slow += u64::from(turn.slow);
            if turn.max_latency_us > 0 {
                let max_ms = turn.max_latency_us as f64 / 1000.0;
                slot.second_max_ms = Some(slot.second_max_ms.map_or(max_ms, |seen: f64| seen.max(max_ms)));
            }
            match turn.answer {
                Answer::Ok => {
                    tally.turns_ok += 1;
                    tally.expected += total;
                    tally.received += delivered;
                    tally.answers_received += answered;
                    for (kind, got, sum) in
                        [("user_message", &turn.delivered, delivered), ("answer", &turn.answered, answered)]
                    {
                        if sum >= total {
                            continue;
                        }
                        slot.second_lost += total - sum;
                        let missing: Vec<u32> =
                            viewers.iter().zip(got).map(|(open, got)| open.saturating_sub(*got)).collect();
                        for (replica_sum, missed) in lost_by_replica.iter_mut().zip(&missing) {
                            *replica_sum += u64::from(*missed);
                        }
                        lost.push(Lost {
                            lost_n: turn.n,
                            lost_kind: kind,
                            lost_sent_us: turn.sent_us,
                            lost_via_replica: turn.via + 1,
                            lost_missing: missing,
                            lost_viewers: viewers.clone(),
                        });
                    }
                }
                // Every writer has finished, so an unanswered turn can only have been abandoned.
                Answer::Failed | Answer::Pending => {
                    tally.turns_failed += 1;
                    tally.received_for_failed += delivered;
                }
            }
        }
    }
    lost.sort_by_key(|lost| lost.lost_n);
    lost.truncate(LOST_SAMPLES);
    (tally, LossDetail { from_us: writes_from_us, lost_by_replica, lost, timeline })
}

/// Prints where the run stands once a second on stderr, on one line rewritten in place when stderr is a terminal.
async fn show_progress(net: Arc<Net>, shape: MixedShape) {
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
                    "{}: turns {} sent, {} ok, {} failed | user messages {}/{} due, answers {} | resyncs {} | \
                     streams ended {}",
                    if phase == PHASE_WRITE { "writing" } else { "draining" },
                    load(&p.sent),
                    load(&p.answered_ok),
                    load(&p.answered_failed),
                    load(&p.delivered),
                    load(&p.expected),
                    load(&p.answers),
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
    fn markers_name_their_turn_and_send_time_even_inside_the_echo() {
        let text = marker(12, 345, 1_764_000_000_123_456);
        assert_eq!(text, "mixed k=12.345 t=1764000000123456");
        let want = Mark { thread: 12, turn: 345, sent_us: 1_764_000_000_123_456 };
        assert_eq!(find_marker(&text), Some(want));
        assert_eq!(find_marker(&format!("echo: {text}")), Some(want));
        assert_eq!(find_marker("mixed thread 3"), None);
        assert_eq!(find_marker("mixed k=1 t=2"), None);
        assert_eq!(find_marker("mixed k=1.2 t=soon"), None);
    }

    fn viewer_of(thread: usize) -> Viewer {
        let net = Arc::new(Net {
            pool: Pool::new(&[], HeaderName::from_static("x-user-id"), Duration::from_secs(1)).unwrap(),
            writes_from_us: AtomicU64::new(0),
            progress: Progress::default(),
            shards: vec![Mutex::new(FanoutStats::default())],
        });
        let threads = (0..2)
            .map(|t| Thread {
                id: format!("thr_{t}"),
                user: HeaderValue::from_static("mixed-0"),
                viewers_open: vec![AtomicU32::new(0)],
                turns: Mutex::new(Vec::new()),
            })
            .collect();
        Viewer { net, threads: Arc::new(threads), index: 0, thread, replica: 0, seen: Vec::new() }
    }

    #[test]
    fn tells_user_messages_and_answers_of_its_thread_from_everything_else() {
        let viewer = viewer_of(1);
        let user = r#"{"type":"thread.item.done","item":{"id":"msg_1","thread_id":"thr_1","created_at":"2025-01-01T00:00:00Z",
            "type":"user_message","content":[{"type":"input_text","text":"mixed k=1.0 t=5"}],"attachments":[],"inference_options":{}}}"#;
        let mark = Mark { thread: 1, turn: 0, sent_us: 5 };
        assert_eq!(viewer.classify(user.as_bytes()), Ok(Some((Received::UserMessage, mark))));
        let answer = r#"{"type":"thread.item.done","item":{"id":"msg_2","thread_id":"thr_1","type":"assistant_message",
            "content":[{"type":"output_text","text":"echo: mixed k=1.0 t=5","annotations":[]}]}}"#;
        assert_eq!(viewer.classify(answer.as_bytes()), Ok(Some((Received::Answer, mark))));
        let delta = r#"{"type":"thread.item.updated","item_id":"msg_2","update":{"type":"assistant_message.content_part.text_delta","content_index":0,"delta":"ec"}}"#;
        assert_eq!(viewer.classify(delta.as_bytes()), Ok(None));
        let added = r#"{"type":"thread.item.added","item":{"id":"msg_2","thread_id":"thr_1","type":"assistant_message","content":[]}}"#;
        assert_eq!(viewer.classify(added.as_bytes()), Ok(None));
        let other_thread = user.replace("mixed k=1.0", "mixed k=0.0");
        assert_eq!(viewer.classify(other_thread.as_bytes()), Err("unmatched"));
        let wrong_id = user.replace("\"thread_id\":\"thr_1\"", "\"thread_id\":\"thr_0\"");
        assert_eq!(viewer.classify(wrong_id.as_bytes()), Err("unmatched"));
        assert_eq!(viewer.classify(b"not json"), Err("stream_bad_event"));
    }

    #[test]
    fn counts_each_delivery_once_and_every_miss() {
        let mut viewer = viewer_of(1);
        let thread = &viewer.threads[1];
        thread.viewers_open[0].store(2, Ordering::Relaxed);
        for (turn, sent_us) in [(0u64, 5u64), (1, 7)] {
            lock(&thread.turns).push(Turn {
                n: turn,
                via: 0,
                sent_us,
                answer: Answer::Ok,
                delivered: vec![0],
                answered: vec![0],
                max_latency_us: 0,
                slow: 0,
            });
        }
        let user = |turn: usize, sent_us: u64| {
            format!(
                r#"{{"type":"thread.item.done","item":{{"type":"user_message","content":[{{"type":"input_text","text":"{}"}}]}}}}"#,
                marker(1, turn, sent_us)
            )
        };
        viewer.observe(b"", user(0, 5).as_bytes(), 1005);
        viewer.observe(b"", user(0, 5).as_bytes(), 1006);
        viewer.observe(b"", user(1, 8).as_bytes(), 1007);
        viewer.observe(b"resync", br#"{"reason":"lagged"}"#, 1008);
        let threads = Arc::clone(&viewer.threads);
        let (tally, detail) = count(&threads, 1, 0);
        assert_eq!((tally.turns_sent, tally.turns_ok, tally.expected, tally.received), (2, 2, 4, 1));
        assert_eq!(tally.answers_received, 0);
        let stats = lock(&viewer.net.shards[0]);
        assert_eq!((stats.duplicates, stats.unmatched), (1, 1));
        assert_eq!(stats.resyncs.get("lagged"), Some(&1));
        assert_eq!(stats.fanout.len(), 1);
        assert_eq!(stats.fanout.max(), 1000);
        assert_eq!(detail.lost.len(), 4, "two turns, each short of its user message or its answer");
        assert_eq!(detail.lost_by_replica, vec![7]);
    }
}
