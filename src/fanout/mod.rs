//! Fan-out of thread and history events to live viewers, on this replica and
//! on every other one, plus the cross-replica coordination turns and sessions
//! need.
//!
//! Two traits split the work: a [`Bus`] carries numbered messages to viewers
//! (publish, subscribe, catch up), and [`Coordination`] is what replicas agree
//! on beside them (per-thread leases, cancel requests, shared counters,
//! session ends). Both backends implement both: `local` (in-process only, the
//! single-node default) and `redis` (between replicas); [`open`] returns the
//! configured one as a [`Fanout`], so each user holds only the trait it needs.
//! Both backends number each topic's messages with a monotonic sequence, keep
//! a bounded history for viewers that reconnect, and hand messages to local
//! viewers through the shared [`Hub`]. The module knows nothing of HTTP or
//! actors: it carries opaque JSON bodies that the engine writes and the HTTP
//! layer frames.

mod bus;
mod coordination;
pub mod hub;
mod local;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use bus::{Bus, CatchUp, MessageKind, Outgoing, SequencedMessage, Snapshot, SnapshotChange, Topic};
pub use coordination::{Coordination, Lease};
pub use hub::{Delivery, Hub, Subscription};
pub use local::LocalFanout;
pub use redis::RedisFanout;

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

/// What a backend reports through either of its traits: the bus and the
/// coordination of one backend share its connection, so they share its health.
pub trait Backend: Send + Sync + 'static {
    /// `local` or `redis`, for logs and health reports.
    fn name(&self) -> &'static str;

    fn health(&self) -> Health;
}

/// The configured backend, through its two traits.
#[derive(Clone)]
pub struct Fanout {
    pub bus: Arc<dyn Bus>,
    pub coordination: Arc<dyn Coordination>,
}

impl Fanout {
    pub fn new<B: Bus + Coordination>(backend: Arc<B>) -> Self {
        Fanout { bus: backend.clone(), coordination: backend }
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

/// Opens the backend the configuration names: Redis with a URL, else in-process.
pub fn open(redis_url: Option<&str>, settings: FanoutSettings) -> Result<Fanout, FanoutError> {
    match redis_url {
        Some(url) => Ok(Fanout::new(Arc::new(RedisFanout::open(url, settings)?))),
        None => Ok(Fanout::new(Arc::new(LocalFanout::new(settings)))),
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
