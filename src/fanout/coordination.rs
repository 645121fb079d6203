//! Coordination between replicas beside the message bus: the per-thread
//! [`Lease`], cancel requests, shared counters and session ends, behind the
//! [`Coordination`] trait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::sync::{broadcast, Notify};

use super::{Backend, FanoutError};

/// The right to run messages of one thread, held by one replica at a time.
/// Dropping it releases the lease.
pub struct Lease {
    /// The fencing token: grows with every grant of this thread's lease.
    pub token: u64,
    pub(super) lost: Arc<Notify>,
    pub(super) lost_flag: Arc<AtomicBool>,
    pub(super) release: Option<Box<dyn FnOnce() + Send>>,
}

impl Lease {
    /// A lease that needs no coordination (the in-process backend).
    pub fn local() -> Lease {
        Lease { token: 0, lost: Arc::new(Notify::new()), lost_flag: Default::default(), release: None }
    }

    /// Resolves if the lease is lost while held (it expired and another
    /// replica took it); the holder must then stop its turn.
    pub async fn lost(&self) {
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

/// What replicas agree on beside the messages they carry.
#[async_trait]
pub trait Coordination: Backend {
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
}

/// Counters kept on this replica: the in-process backend's, and the Redis
/// backend's while Redis is away.
#[derive(Default)]
pub(super) struct LocalCounters {
    counters: DashMap<String, (u64, Instant)>,
}

impl LocalCounters {
    pub(super) fn incr(&self, key: &str, ttl: Duration) -> u64 {
        let now = Instant::now();
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
