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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::chaos::{self, StoreCheck};
use crate::cli::{MixedShape, Spread};
use crate::multi::{self, Answer, Load, Losses, Net, Progress, Sent, Thread, Viewer, ViewerEnd};
use crate::replicas::{cpu_seconds, lock, now_us};
use crate::report::ErrorKind;
use crate::report::{LossDetail, MixedReport, MixedShapeSummary, MixedTally};
use crate::scenario::{user_input, Expect, Outcome};

/// What every marker starts with.
pub(crate) const MARKER_PREFIX: &str = "mixed k=";

/// The text of turn `turn` of thread `thread`, sent at `sent_us`.
pub(crate) fn marker(thread: usize, turn: usize, sent_us: u64) -> String {
    format!("{MARKER_PREFIX}{thread}.{turn} t={sent_us}")
}

/// What a marker names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) thread: usize,
    pub(crate) turn: usize,
    pub(crate) sent_us: u64,
}

/// The marker in `text`, wherever it starts (the echo answer puts `echo: ` before it).
pub(crate) fn find_marker(text: &str) -> Option<Mark> {
    let rest = &text[text.find(MARKER_PREFIX)? + MARKER_PREFIX.len()..];
    let (key, rest) = rest.split_once(" t=")?;
    let (thread, turn) = key.split_once('.')?;
    let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    Some(Mark { thread: thread.parse().ok()?, turn: turn.parse().ok()?, sent_us: rest[..digits].parse().ok()? })
}

/// One turn as a writer sent it, and what the viewers of its thread made of it.
#[derive(Debug)]
pub struct Turn {
    /// Its user message: when it was sent, and which viewers received it.
    pub(crate) sent: Sent,
    /// Viewers that received its finished answer, by replica.
    answered: Vec<u32>,
    /// When its answer ended, in unix microseconds (0 while it runs).
    pub(crate) ended_us: u64,
    /// Whether it failed with an `error` event that allows a retry (the turn was refused, not broken).
    pub(crate) retryable: bool,
}

impl Turn {
    /// A turn of one replica as the store check's tests need it: sent at `sent_us`, ended at `ended_us`.
    #[cfg(test)]
    pub(crate) fn answered(n: u64, sent_us: u64, answer: Answer, ended_us: u64, retryable: bool) -> Self {
        let mut sent = Sent::new(n, 0, sent_us, 1);
        sent.answer = answer;
        Turn { sent, answered: vec![0], ended_us, retryable }
    }
}

/// Runs the whole scenario and reports it; an error means setup failed and nothing was measured.
pub async fn run(
    shape: MixedShape,
    user_header: HeaderName,
    timeout: Duration,
) -> Result<(MixedReport, Option<StoreCheck>), String> {
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let finished = multi::run(&shape, user_header, timeout).await?;
    let net = &finished.net;
    let (tally, detail) = count(&finished.threads, net.pool.count(), net.sends_from_us.load(Ordering::Relaxed));
    let summary = MixedShapeSummary {
        spread: finished.summary,
        writers: shape.writers,
        write_time: finished.send_phase,
        loadtest_cpu: cpu_seconds().zip(cpu_before).map(|(after, before)| after - before),
        wall_time: started.elapsed(),
    };
    let viewer_ends = std::mem::take(&mut *lock(&net.viewer_ends));
    let checked = match &shape.check_store {
        Some(url) => Some(chaos::check(url, &finished.threads, &viewer_ends).await?),
        None => None,
    };
    Ok((MixedReport::new(summary, tally, finished.stats, detail), checked))
}

impl Load for MixedShape {
    const NAME: &'static str = "mixed";
    const SENDING: &'static str = "writing";
    const SENDS: &'static str = "turns";
    const START: &'static str = "writers start";

    /// The turns sent to the thread, in the order their markers were made.
    type Book = Vec<Turn>;
    /// For each turn of its thread, the `Received` bits seen.
    type Seen = Vec<u8>;
    /// From the writers' start to the end of the last turn.
    type SendPhase = Duration;

    fn spread(&self) -> &Spread {
        &self.spread
    }

    fn recorders(&self) -> u32 {
        self.spread.viewers.max(self.writers)
    }

    fn send_phase(&self) -> String {
        format!("{} writers for {:?}", self.writers, self.spread.duration)
    }

    /// A new thread needs nothing more: its turns go to it as it is.
    async fn prepare(_: &Net, _: u32, _: usize, _: &HeaderValue, _: &str) -> Result<Vec<Turn>, String> {
        Ok(Vec::new())
    }

    async fn send(&self, net: &Arc<Net>, threads: &Arc<Vec<Thread<Vec<Turn>>>>) -> Duration {
        write(net, threads, self).await
    }

    fn observe(viewer: &mut Viewer<Self>, data: &[u8], received_us: u64) {
        let (received, mark) = match viewer.classify(data) {
            Ok(Some(found)) => found,
            Ok(None) => {
                viewer.shard().other_events += 1;
                return;
            }
            Err("unmatched") => {
                viewer.shard().unmatched += 1;
                return;
            }
            Err(key) => {
                let start: String = String::from_utf8_lossy(data).chars().take(200).collect();
                viewer.shard().record_named_error(key.to_string(), &start);
                return;
            }
        };
        let latency_us = {
            // The field, not `watched()`, so that `seen` can be borrowed beside it.
            let mut turns = lock(&viewer.threads[viewer.thread].book);
            let Some(turn) = turns.get_mut(mark.turn).filter(|turn| turn.sent.sent_us == mark.sent_us) else {
                drop(turns);
                viewer.shard().unmatched += 1;
                return;
            };
            if viewer.seen.len() <= mark.turn {
                viewer.seen.resize(mark.turn + 1, 0);
            }
            if viewer.seen[mark.turn] & received.bit() != 0 {
                drop(turns);
                viewer.shard().duplicates += 1;
                return;
            }
            viewer.seen[mark.turn] |= received.bit();
            if received == Received::Answer {
                turn.answered[viewer.replica] += 1;
                drop(turns);
                viewer.net.progress.answers.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let latency_us = received_us.saturating_sub(mark.sent_us);
            turn.sent.deliver(viewer.replica, latency_us);
            latency_us
        };
        viewer.record_delivery(latency_us);
    }

    fn finish(viewer: &mut Viewer<Self>) {
        let end = ViewerEnd {
            thread: viewer.thread,
            replica: viewer.replica,
            seen: std::mem::take(&mut viewer.seen),
            last_cut_us: viewer.last_cut_us,
        };
        lock(&viewer.net.viewer_ends).push(end);
    }

    fn deliveries(p: &Progress) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!("user messages {}/{} due, answers {}", load(&p.delivered), load(&p.expected), load(&p.answers))
    }
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

impl Viewer<MixedShape> {
    /// What a `data:` event says about the turns of this viewer's thread: which finished item of which turn, or
    /// `None` for any other event; an error names an event that looks like a turn's but matches none.
    fn classify(&self, data: &[u8]) -> Result<Option<(Received, Mark)>, &'static str> {
        let event: Event<'_> = serde_json::from_slice(data).map_err(|_| "stream_bad_event")?;
        let (received, item) = match (&*event.kind, event.item) {
            ("thread.item.done", Some(item)) if item.kind == "user_message" => (Received::UserMessage, item),
            ("thread.item.done", Some(item)) if item.kind == "assistant_message" => (Received::Answer, item),
            _ => return Ok(None),
        };
        let thread = self.watched();
        let mark = item.content.iter().filter_map(|part| part.text.as_deref()).find_map(find_marker);
        match mark {
            Some(mark) if mark.thread == self.thread && item.thread_id.as_deref().is_none_or(|id| id == thread.id) => {
                Ok(Some((received, mark)))
            }
            _ => Err("unmatched"),
        }
    }
}

/// Runs the writers for the run's duration and waits for their last turns; answers the time from their start to the
/// end of the last turn.
async fn write(net: &Arc<Net>, threads: &Arc<Vec<Thread<Vec<Turn>>>>, shape: &MixedShape) -> Duration {
    let start = Instant::now();
    let end = start + shape.spread.duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for writer in 0..shape.writers {
        let (net, threads, next) = (Arc::clone(net), Arc::clone(threads), Arc::clone(&next));
        let pinned = shape.pin_writers.then(|| writer as usize % net.pool.count());
        writers.spawn(async move {
            while Instant::now() < end {
                let answer = send_turn(&net, &threads, next.fetch_add(1, Ordering::Relaxed), pinned).await;
                // A client whose turn failed (its replica killed, say) waits a moment before the next, as a real
                // one would, rather than spinning on refused connections.
                if answer != Answer::Ok {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        });
    }
    while writers.join_next().await.is_some() {}
    start.elapsed()
}

/// How long a writer waits after a failed turn before it sends the next.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Sends turn `n`: to thread `n mod threads`, through the `pinned` replica or else through the replicas in turn, so
/// that each thread hears from every replica even when the replica count divides the thread count. Answers how it
/// ended.
async fn send_turn(net: &Net, threads: &[Thread<Vec<Turn>>], n: u64, pinned: Option<usize>) -> Answer {
    let count = threads.len() as u64;
    let index = (n % count) as usize;
    let replica = pinned.unwrap_or(((n + n / count) % net.pool.count() as u64) as usize);
    let thread = &threads[index];
    let (slot, text) = {
        let mut turns = lock(&thread.book);
        let slot = turns.len();
        let sent_us = now_us();
        let replicas = net.pool.count();
        let sent = Sent::new(n, replica, sent_us, replicas);
        turns.push(Turn { sent, answered: vec![0; replicas], ended_us: 0, retryable: false });
        (slot, marker(index, slot, sent_us))
    };
    let body = json!({
        "type": "threads.add_user_message",
        "params": {"thread_id": thread.id, "input": user_input(&text)},
    });
    net.progress.sent.fetch_add(1, Ordering::Relaxed);
    let outcome = net.pool.post(replica, "/chatkit", &thread.user, &body, Expect::Turn).await;
    let retryable = matches!(outcome, Outcome::Failed(ErrorKind::Retryable, _));
    let answer = net.record_answer(index, thread.viewers_total(), outcome, "turn");
    let mut turns = lock(&thread.book);
    let turn = &mut turns[slot];
    (turn.sent.answer, turn.ended_us, turn.retryable) = (answer, now_us(), retryable);
    answer
}

/// Counts what the books say once every turn has ended and every viewer has stopped: deliveries expected and
/// received, where and when they were lost, and the slowest delivery of each second.
fn count(threads: &[Thread<Vec<Turn>>], replica_count: usize, writes_from_us: u64) -> (MixedTally, LossDetail) {
    let mut tally = MixedTally::default();
    let mut losses = Losses::new(replica_count, writes_from_us);
    for thread in threads {
        let viewers = thread.viewers_on();
        let total = thread.viewers_total();
        tally.viewers_open += total;
        for turn in lock(&thread.book).iter() {
            let delivered = losses.enter(&turn.sent);
            tally.turns_sent += 1;
            match turn.sent.answer {
                Answer::Ok => {
                    tally.turns_ok += 1;
                    tally.expected += total;
                    tally.received += losses.check(&turn.sent, "user_message", &viewers, &turn.sent.delivered);
                    tally.answers_received += losses.check(&turn.sent, "answer", &viewers, &turn.answered);
                }
                // Every writer has finished, so an unanswered turn can only have been abandoned.
                Answer::Failed | Answer::Pending => {
                    tally.turns_failed += 1;
                    tally.received_for_failed += delivered;
                }
            }
        }
    }
    (tally, losses.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicas::Pool;
    use crate::viewers::Listener;

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

    fn viewer_of(thread: usize) -> Viewer<MixedShape> {
        let pool = Pool::new(&[], HeaderName::from_static("x-user-id"), Duration::from_secs(1)).unwrap();
        let net = Arc::new(Net::new(pool, 1));
        let threads = (0..2)
            .map(|t| Thread::new(format!("thr_{t}"), HeaderValue::from_static("mixed-0"), 1, Vec::new()))
            .collect();
        Viewer { net, threads: Arc::new(threads), index: 0, thread, replica: 0, seen: Vec::new(), last_cut_us: 0 }
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
            let mut sent = Sent::new(turn, 0, sent_us, 1);
            sent.answer = Answer::Ok;
            lock(&thread.book).push(Turn { sent, answered: vec![0], ended_us: 0, retryable: false });
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
        let stats = viewer.shard();
        assert_eq!((stats.duplicates, stats.unmatched), (1, 1));
        assert_eq!(stats.resyncs.get("lagged"), Some(&1));
        assert_eq!(stats.fanout.len(), 1);
        assert_eq!(stats.fanout.max(), 1000);
        assert_eq!(detail.lost.len(), 4, "two turns, each short of its user message or its answer");
        assert_eq!(detail.lost_by_replica, vec![7]);
    }
}
