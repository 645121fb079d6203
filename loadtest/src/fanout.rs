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
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::cli::{FanoutShape, Spread};
use crate::multi::{self, Answer, Load, Losses, Net, Progress, Sent, Thread, Viewer};
use crate::replicas::{lock, now_us};
use crate::report::{FanoutReport, FanoutShapeSummary, FanoutTally, LossDetail};
use crate::scenario::{Expect, Outcome};

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

/// One update as the updater sent it, and what its viewers made of it.
#[derive(Debug)]
struct Update {
    sent: Sent,
    kind: UpdateKind,
}

/// What the updater believes a thread looks like, and every update sent to it, by the state it leads to.
#[derive(Debug)]
pub struct Book {
    title: String,
    locked: Option<String>,
    by_state: HashMap<StateKey, usize>,
    updates: Vec<Update>,
}

impl Book {
    fn status(&self) -> Status {
        match &self.locked {
            Some(reason) => Status::Locked(Some(reason.clone())),
            None => Status::Active,
        }
    }
}

/// Runs the whole scenario and reports it; an error means setup failed and nothing was measured.
pub async fn run(shape: FanoutShape, user_header: HeaderName, timeout: Duration) -> Result<FanoutReport, String> {
    let finished = multi::run(&shape, user_header, timeout).await?;
    let net = &finished.net;
    let (tally, detail) = count(&finished.threads, net.pool.count(), net.sends_from_us.load(Ordering::Relaxed));
    let (send_time, send_lag_max) = finished.send_phase;
    let summary = FanoutShapeSummary {
        spread: finished.summary,
        rate: shape.rate,
        send_time,
        send_lag_max,
        server_cpu: finished.server_cpu,
    };
    Ok(FanoutReport::new(summary, tally, finished.stats, detail))
}

impl Load for FanoutShape {
    const NAME: &'static str = "fanout";
    const SENDING: &'static str = "updating";
    const SENDS: &'static str = "updates";
    const START: &'static str = "sending updates";

    type Book = Book;
    /// Indices into its thread's book of the updates received.
    type Seen = Vec<usize>;
    /// The length of the send phase, and the largest lag behind the schedule.
    type SendPhase = (Duration, Duration);

    fn spread(&self) -> &Spread {
        &self.spread
    }

    fn send_phase(&self) -> String {
        format!("{} updates/s for {:?}", self.rate, self.spread.duration)
    }

    /// Renames the thread to a known title, so that its first lock leads to a state the updater can name.
    async fn prepare(net: &Net, index: u32, replica: usize, user: &HeaderValue, id: &str) -> Result<Book, String> {
        let title = format!("fanout thread {index}");
        let rename = json!({"type": "threads.update", "params": {"thread_id": id, "title": title}});
        if let Outcome::Failed(kind, detail) = net.pool.post(replica, "/chatkit", user, &rename, Expect::Object).await {
            return Err(format!("threads.update for thread {index} failed ({}): {detail}", kind.key()));
        }
        Ok(Book { title, locked: None, by_state: HashMap::new(), updates: Vec::new() })
    }

    async fn send(&self, net: &Arc<Net>, threads: &Arc<Vec<Thread<Book>>>) -> (Duration, Duration) {
        send_updates(net, threads, self.rate, self.spread.duration).await
    }

    fn observe(viewer: &mut Viewer<Self>, data: &[u8], received_us: u64) {
        let event: Event = match serde_json::from_slice(data) {
            Ok(event) => event,
            Err(e) => {
                viewer.shard().record_named_error("stream_bad_event".into(), &format!("{e}"));
                return;
            }
        };
        let updated = match event.thread {
            Some(thread) if event.kind == "thread.updated" => thread,
            _ => {
                viewer.shard().other_events += 1;
                return;
            }
        };
        // The field, not `watched()`, so that `seen` can be borrowed beside it.
        let thread = &viewer.threads[viewer.thread];
        if updated.id != thread.id {
            viewer.shard().unmatched += 1;
            return;
        }
        let state = updated.state();
        let latency_us = {
            let mut book = lock(&thread.book);
            let Some(&index) = book.by_state.get(&state) else {
                drop(book);
                viewer.shard().unmatched += 1;
                return;
            };
            if viewer.seen.contains(&index) {
                drop(book);
                viewer.shard().duplicates += 1;
                return;
            }
            viewer.seen.push(index);
            let update = &mut book.updates[index];
            // The send time comes from the event itself where the update put a marker in it.
            let carried = match (update.kind, &state.status) {
                (UpdateKind::Title, _) => state.title.as_deref().and_then(marker_time),
                (UpdateKind::Lock, Status::Locked(Some(reason))) => marker_time(reason),
                _ => None,
            };
            let latency_us = received_us.saturating_sub(carried.unwrap_or(update.sent.sent_us));
            update.sent.deliver(viewer.replica, latency_us);
            latency_us
        };
        viewer.record_delivery(latency_us);
    }

    fn deliveries(p: &Progress) -> String {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        format!("deliveries {}/{} due", load(&p.delivered), load(&p.expected))
    }
}

/// Counts what the books say once every update has been answered and every viewer has stopped: deliveries expected
/// and received, where and when they were lost, and the slowest delivery of each second.
fn count(threads: &[Thread<Book>], replica_count: usize, updates_from_us: u64) -> (FanoutTally, LossDetail) {
    let mut tally = FanoutTally::default();
    let mut losses = Losses::new(replica_count, updates_from_us);
    for thread in threads {
        let viewers = thread.viewers_on();
        let total = thread.viewers_total();
        tally.viewers_open += total;
        for update in &lock(&thread.book).updates {
            let delivered = losses.enter(&update.sent);
            tally.updates_sent += 1;
            match update.sent.answer {
                Answer::Ok => {
                    tally.updates_ok += 1;
                    tally.expected += total;
                    tally.received += losses.check(&update.sent, update.kind.name(), &viewers, &update.sent.delivered);
                }
                // Every update task has finished, so an unanswered one can only have been abandoned.
                Answer::Failed | Answer::Pending => {
                    tally.updates_failed += 1;
                    tally.received_for_failed += delivered;
                }
            }
        }
    }
    (tally, losses.finish())
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

/// Sends `rate` updates a second for `duration` and waits for every answer; answers the length of the send phase and
/// the largest lag behind the schedule.
async fn send_updates(
    net: &Arc<Net>,
    threads: &Arc<Vec<Thread<Book>>>,
    rate: f64,
    duration: Duration,
) -> (Duration, Duration) {
    let total = ((rate * duration.as_secs_f64()).floor() as u64).max(1);
    let permits = Arc::new(Semaphore::new(MAX_UPDATES_IN_FLIGHT));
    // A thread's lock is held while an update of it is under way, so that its updates apply in the order they were
    // made.
    let in_order: Arc<Vec<tokio::sync::Mutex<()>>> = Arc::new(threads.iter().map(|_| Default::default()).collect());
    let mut updates = JoinSet::new();
    let start = Instant::now();
    let mut lag_max = Duration::ZERO;
    let mut last_start = start;
    for n in 0..total {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due).await;
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { break };
        last_start = Instant::now();
        lag_max = lag_max.max(last_start - due);
        let (net, threads, in_order) = (Arc::clone(net), Arc::clone(threads), Arc::clone(&in_order));
        updates.spawn(async move {
            update(&net, &threads, &in_order, n).await;
            drop(permit);
        });
        // Finished tasks are reaped as the schedule goes, so the set stays small.
        while updates.try_join_next().is_some() {}
    }
    while updates.join_next().await.is_some() {}
    let send_time = (last_start - start) + Duration::from_secs_f64(1.0 / rate);
    (send_time, lag_max)
}

/// Sends update `n`: to thread `n mod threads` through replica `n mod replicas`, a title change or a status change in
/// turn for that thread.
async fn update(net: &Net, threads: &[Thread<Book>], in_order: &[tokio::sync::Mutex<()>], n: u64) {
    let count = threads.len() as u64;
    let index = (n % count) as usize;
    let round = n / count;
    let thread = &threads[index];
    let replica = (n % net.pool.count() as u64) as usize;
    let _in_order = in_order[index].lock().await;
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
        book.updates.push(Update { sent: Sent::new(n, replica, sent_us, net.pool.count()), kind });
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
    let outcome = net.pool.post(replica, &path, &thread.user, &body, Expect::Object).await;
    let answer = net.record_answer(index, thread.viewers_total(), outcome, "update");
    let mut book = lock(&thread.book);
    book.updates[update].sent.answer = answer;
    // The updater's belief follows only answered changes; a failed one may or may not have applied.
    if answer == Answer::Ok {
        match kind {
            UpdateKind::Title => book.title = text,
            UpdateKind::Lock => book.locked = Some(text),
            UpdateKind::Unlock => book.locked = None,
        }
    }
}

fn status_path(thread_id: &str) -> String {
    format!("/v1/chatkit/threads/{thread_id}/status")
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
