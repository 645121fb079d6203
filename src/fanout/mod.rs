//! Fan-out of thread and history events to live viewers, on this replica and
//! on every other one, plus the cross-replica coordination turns need (the
//! per-thread lease and cancel requests).
//!
//! Two backends sit behind the [`Fanout`] trait: `local` (in-process only, the
//! single-node default) and `redis` (pub/sub between replicas). Both number
//! each topic's messages with a monotonic sequence, keep a bounded history for
//! viewers that reconnect, and hand messages to local viewers through the
//! shared [`Hub`]. The module knows nothing of HTTP or actors: it carries
//! opaque JSON bodies that the engine writes and the HTTP layer frames.

pub mod hub;
mod local;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{broadcast, Notify};

pub use hub::{Delivery, Hub, Subscription};
pub use local::LocalFanout;
pub use redis::RedisFanout;

use crate::ids::UserId;

/// What a viewer subscribes to: one thread, or one user's thread history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    Thread(String),
    User(UserId),
}

impl Topic {
    /// `thread` or `user`, for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Topic::Thread(_) => "thread",
            Topic::User(_) => "user",
        }
    }

    /// The channel name, also the prefix of the topic's Redis keys. The braces
    /// are a Redis Cluster hash tag, so a topic's keys share one slot.
    pub fn channel(&self) -> String {
        match self {
            Topic::Thread(id) => format!("ck:{{t:{id}}}"),
            Topic::User(user) => format!("ck:{{u:{}}}", user.0),
        }
    }
}

/// What kind of message a body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A ChatKit `ThreadStreamEvent` as JSON.
    Event,
    /// `{"thread_id": ...}`: the thread was deleted.
    Deleted,
}

impl Kind {
    fn tag(self) -> char {
        match self {
            Kind::Event => 'e',
            Kind::Deleted => 'd',
        }
    }

    fn from_tag(tag: &str) -> Option<Kind> {
        match tag {
            "e" => Some(Kind::Event),
            "d" => Some(Kind::Deleted),
            _ => None,
        }
    }
}

/// A published message with its place in its topic's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamped {
    pub seq: u64,
    /// When the publisher sent it, in microseconds since the Unix epoch, so
    /// that a receiver can measure fan-out latency.
    pub sent_at_us: u64,
    pub kind: Kind,
    pub body: String,
}

impl Stamped {
    /// The text carried between replicas: `<seq> <sent_at_us> <kind> <body>`.
    #[cfg(test)]
    fn encode(&self) -> String {
        format!("{} {}", self.seq, unsequenced(self.sent_at_us, self.kind, &self.body))
    }

    fn decode(text: &str) -> Option<Stamped> {
        let mut parts = text.splitn(4, ' ');
        let seq = parts.next()?.parse().ok()?;
        let sent_at_us = parts.next()?.parse().ok()?;
        let kind = Kind::from_tag(parts.next()?)?;
        let body = parts.next()?.to_string();
        Some(Stamped { seq, sent_at_us, kind, body })
    }
}

/// A message before its topic numbered it.
fn unsequenced(sent_at_us: u64, kind: Kind, body: &str) -> String {
    format!("{sent_at_us} {} {body}", kind.tag())
}

/// How a publication changes its thread's snapshot of in-progress items,
/// which a viewer joining mid-turn starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotChange {
    Keep,
    /// The JSON array of the turn's in-progress items, as of this message.
    Set(String),
    Clear,
}

/// The in-progress items of a thread's running turn, as of message `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: u64,
    pub items: String,
}

/// What a joining viewer needs to start from.
#[derive(Clone, Debug, Default)]
pub struct CatchUp {
    /// The newest sequence number of the topic (0 when it has none yet).
    pub head: u64,
    pub snapshot: Option<Snapshot>,
    /// The bounded history, oldest first (empty when not asked for).
    pub history: Vec<Stamped>,
}

impl CatchUp {
    /// The messages after `after`, or `None` when history no longer reaches
    /// back that far (the viewer must resync).
    pub fn since(&self, after: u64) -> Option<Vec<Stamped>> {
        let head = self.history.last().map_or(self.head, |last| last.seq.max(self.head));
        if after == head {
            return Some(Vec::new());
        }
        if after > head {
            // An id from before a reset of the sequence, or from another stream.
            return None;
        }
        let first = self.history.first()?;
        if first.seq > after + 1 {
            return None;
        }
        Some(self.history.iter().filter(|message| message.seq > after).cloned().collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    #[error("invalid fan-out configuration: {0}")]
    Config(String),
    #[error("fan-out backend unavailable: {0}")]
    Unavailable(String),
    /// Another replica holds the thread's lease beyond the wait limit.
    #[error("the thread is busy on another replica")]
    LeaseBusy,
}

/// Whether fan-out to other replicas works now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// In-process fan-out: nothing can be down.
    Local,
    Connected,
    /// Redis is unreachable; the gateway reconnects with backoff.
    Disconnected(String),
}

impl Health {
    pub fn is_ready(&self) -> bool {
        !matches!(self, Health::Disconnected(_))
    }
}

/// The right to run messages of one thread, held by one replica at a time.
/// Dropping it releases the lease.
pub struct Lease {
    /// The fencing token: grows with every grant of this thread's lease.
    pub token: u64,
    lost: Arc<Notify>,
    lost_flag: Arc<std::sync::atomic::AtomicBool>,
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Lease {
    /// A lease that needs no coordination (the in-process backend).
    pub fn local() -> Lease {
        Lease { token: 0, lost: Arc::new(Notify::new()), lost_flag: Default::default(), release: None }
    }

    /// Resolves if the lease is lost while held (it expired and another
    /// replica took it); the holder must then stop its turn.
    pub async fn lost(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.lost.notified();
            if self.lost_flag.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// Settings shared by both backends.
#[derive(Clone, Debug)]
pub struct FanoutSettings {
    /// Messages kept per topic for viewers that reconnect.
    pub history: usize,
    /// Messages buffered per local viewer; one that falls further behind is
    /// sent `resync` and closed.
    pub viewer_buffer: usize,
    /// How long a topic's history and sequence outlive its last message.
    pub history_ttl: Duration,
    /// How long a lease lives unless renewed; the holder renews it at a third.
    pub lease_ttl: Duration,
    /// How long a replica waits for a lease another replica holds.
    pub lease_wait: Duration,
    /// How often the Redis subscriber connection is checked with a ping.
    pub ping_every: Duration,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        FanoutSettings {
            history: 256,
            viewer_buffer: 256,
            history_ttl: Duration::from_secs(600),
            lease_ttl: Duration::from_secs(10),
            lease_wait: Duration::from_secs(30),
            ping_every: Duration::from_secs(5),
        }
    }
}

/// Fan-out and coordination between replicas.
#[async_trait]
pub trait Fanout: Send + Sync + 'static {
    /// `local` or `redis`, for logs and health reports.
    fn name(&self) -> &'static str;

    /// Publishes a message to every viewer of `topic`, on every replica.
    /// Never fails the caller: the store is the source of truth, and a
    /// message that cannot be carried is made up for by a `resync`.
    async fn publish(&self, topic: &Topic, kind: Kind, body: String, snapshot: SnapshotChange);

    /// Joins `topic` on this replica; messages published after this returns
    /// reach the subscription.
    async fn subscribe(&self, topic: &Topic) -> Subscription;

    /// Where a joining viewer starts: the topic's head and snapshot, and its
    /// history when `after` (the viewer's `Last-Event-ID`) is given or a
    /// snapshot exists; a fresh viewer with nothing to replay needs none.
    async fn catch_up(&self, topic: &Topic, after: Option<u64>) -> Result<CatchUp, FanoutError>;

    /// Takes the thread's lease, waiting while another replica holds it.
    /// Without coordination (in-process, or Redis unreachable) it grants at once.
    async fn lease(&self, thread_id: &str) -> Result<Lease, FanoutError>;

    /// Asks every other replica to cancel the thread's running turn; true
    /// when another replica holds the thread's lease, i.e. runs something.
    async fn request_cancel(&self, thread_id: &str) -> bool;

    /// Thread ids whose running turn another replica asked to cancel.
    fn cancel_requests(&self) -> broadcast::Receiver<String>;

    /// Adds one to a counter shared by every replica and returns its new
    /// value; the counter disappears `ttl` after it was created. With Redis
    /// unreachable it counts on this replica alone.
    async fn incr(&self, key: &str, ttl: Duration) -> u64;

    /// Tells every replica that a client session ended (cancelled), so that
    /// its open viewer streams close.
    async fn end_session(&self, session_id: &str);

    /// Ids of sessions that ended, from any replica.
    fn session_ends(&self) -> broadcast::Receiver<String>;

    fn health(&self) -> Health;
}

/// Opens the backend the configuration names: Redis with a URL, else in-process.
pub fn open(redis_url: Option<&str>, settings: FanoutSettings) -> Result<Arc<dyn Fanout>, FanoutError> {
    match redis_url {
        Some(url) => Ok(Arc::new(RedisFanout::open(url, settings)?)),
        None => Ok(Arc::new(LocalFanout::new(settings))),
    }
}

/// Counters kept on this replica: the in-process backend's, and the Redis
/// backend's while Redis is away.
#[derive(Default)]
struct LocalCounters {
    counters: dashmap::DashMap<String, (u64, std::time::Instant)>,
}

impl LocalCounters {
    fn incr(&self, key: &str, ttl: Duration) -> u64 {
        let now = std::time::Instant::now();
        if self.counters.len() > 10_000 {
            // Bounded: expired counters go whenever the map grows large.
            self.counters.retain(|_, (_, expires)| *expires > now);
        }
        let mut entry = self.counters.entry(key.to_string()).or_insert((0, now + ttl));
        if entry.1 <= now {
            *entry = (0, now + ttl);
        }
        entry.0 += 1;
        entry.0
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// Where a topic's sequence starts when it has none: the current time in
/// milliseconds, times 1000. A sequence that restarts (Redis lost its data,
/// a replica restarted) so starts above anything it handed out before, as
/// long as a topic averaged under 1000 messages per millisecond; ids stay
/// below 2^53, so JavaScript reads them exactly.
fn sequence_base() -> u64 {
    now_us() / 1000 * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64) -> Stamped {
        Stamped { seq, sent_at_us: 7, kind: Kind::Event, body: format!("{{\"n\":{seq}}}") }
    }

    #[test]
    fn messages_survive_the_trip_between_replicas() {
        let deleted =
            Stamped { seq: 1_764_000_000_000_001, sent_at_us: 9, kind: Kind::Deleted, body: "{\"a\": \"b c\"}".into() };
        for original in [message(3), deleted] {
            assert_eq!(Stamped::decode(&original.encode()), Some(original));
        }
        assert_eq!(Stamped::decode("12 x e {}"), None);
        assert_eq!(Stamped::decode("12 5 z {}"), None);
    }

    #[test]
    fn catch_up_fills_gaps_it_can_and_reports_the_rest() {
        let catch_up = CatchUp { head: 10, snapshot: None, history: (6..=10).map(message).collect() };
        let seqs = |after| catch_up.since(after).map(|m| m.iter().map(|m| m.seq).collect::<Vec<_>>());
        assert_eq!(seqs(10), Some(vec![]), "nothing missed");
        assert_eq!(seqs(7), Some(vec![8, 9, 10]));
        assert_eq!(seqs(5), Some(vec![6, 7, 8, 9, 10]), "history reaches back just far enough");
        assert_eq!(seqs(4), None, "message 5 is gone: resync");
        assert_eq!(seqs(11), None, "an id from the future: resync");
        let empty = CatchUp { head: 10, snapshot: None, history: vec![] };
        assert_eq!(empty.since(10).map(|m| m.len()), Some(0));
        assert!(empty.since(9).is_none());
    }

    #[test]
    fn channels_keep_a_topic_in_one_cluster_slot() {
        assert_eq!(Topic::Thread("thr_1".into()).channel(), "ck:{t:thr_1}");
        assert_eq!(Topic::User(UserId("ann".into())).channel(), "ck:{u:ann}");
    }
}
