//! Coordination between replicas beside the message bus: the per-thread
//! [`Lease`], cancel requests, shared counters, sliding-window rate limits and
//! session ends, behind the [`Coordination`] trait.

use std::collections::VecDeque;
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
    pub(super) release: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// A lease held in Redis: its key and the value that names this holder, so that a later
    /// job can check it is still this replica's (see `Coordination::still_held`).
    pub(super) held: Option<(String, String)>,
}

impl Lease {
    /// A lease that needs no coordination (the in-process backend).
    pub fn local() -> Lease {
        Lease { token: 0, lost: Arc::new(Notify::new()), lost_flag: Default::default(), release: None, held: None }
    }

    /// Whether the lease may be kept for the thread's next job: it is held in Redis (a lease
    /// granted without coordination is not), and it was not lost.
    pub fn keepable(&self) -> bool {
        self.held.is_some() && !self.lost_flag.load(Ordering::SeqCst)
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

    /// Whether a lease kept since an earlier job is still this replica's, so that the next job
    /// may run under it (and under the fence claimed with it) without taking it again.
    async fn still_held(&self, lease: &Lease) -> bool;

    /// Asks every other replica to cancel the thread's running turn; true
    /// when another replica holds the thread's lease, i.e. runs something.
    async fn request_cancel(&self, thread_id: &str) -> bool;

    /// Thread ids whose lease another replica waits for: a replica keeping one idle lets it go.
    fn lease_wanted(&self) -> broadcast::Receiver<String>;

    /// Thread ids whose running turn another replica asked to cancel.
    fn cancel_requests(&self) -> broadcast::Receiver<String>;

    /// Adds one to a counter shared by every replica and returns its new
    /// value; the counter disappears `ttl` after it was created. With Redis
    /// unreachable it counts on this replica alone.
    async fn incr(&self, key: &str, ttl: Duration) -> u64;

    /// Admits one event of `key` under a sliding window shared by every
    /// replica: at most `limit` admitted events in any `window`, the event
    /// counted at `now_ms` (Unix milliseconds, the caller's clock, so that
    /// tests can move it). An admitted event is counted; a refused one is not,
    /// and gets the time until the oldest counted event leaves the window.
    /// `key` names what is limited (`session:<id>`); the Redis backend makes it
    /// the hash tag of its key, so that a Redis Cluster keeps it on one shard.
    /// With Redis unreachable it counts on this replica alone.
    async fn admit_window(&self, key: &str, limit: u32, window: Duration, now_ms: i64) -> Result<(), Duration>;

    /// Tells every replica that a client session ended (cancelled), so that
    /// its open viewer streams close.
    async fn end_session(&self, session_id: &str);

    /// Ids of sessions that ended, from any replica.
    fn session_ends(&self) -> broadcast::Receiver<String>;

    /// `Some(epoch)` while `session_ends` receives the end of every session
    /// that ends on any replica, the epoch changing whenever some may have
    /// been missed since (the Redis subscriber reconnected, or lost pushes);
    /// `None` while some may be missed (the subscriber is down). What is
    /// cached about sessions holds only within one epoch.
    fn session_ends_epoch(&self) -> Option<u64>;
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

/// Sliding windows kept on this replica: the in-process backend's, and the
/// Redis backend's while Redis is away. Each holds the times of its admitted
/// events, at most `limit` of them.
#[derive(Default)]
pub(super) struct LocalWindows {
    windows: DashMap<String, VecDeque<i64>>,
}

impl LocalWindows {
    pub(super) fn admit(&self, key: &str, limit: u32, window: Duration, now_ms: i64) -> Result<(), Duration> {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let floor = now_ms.saturating_sub(window_ms);
        if self.windows.len() > 10_000 {
            // Bounded: windows whose every event has left go whenever the map grows large.
            self.windows.retain(|_, times| times.back().is_some_and(|newest| *newest > floor));
        }
        let mut times = self.windows.entry(key.to_string()).or_default();
        // An event at `floor` or earlier is a whole window old: it no longer counts.
        while times.front().is_some_and(|oldest| *oldest <= floor) {
            times.pop_front();
        }
        if times.len() < limit as usize {
            times.push_back(now_ms);
            return Ok(());
        }
        let oldest = times.iter().copied().min().unwrap_or(now_ms);
        Err(Duration::from_millis(u64::try_from(oldest.saturating_add(window_ms) - now_ms).unwrap_or(0).max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst straddling a minute boundary: the fixed per-minute windows this
    /// replaced let the limit through on each side of it.
    #[test]
    fn a_window_admits_the_limit_in_any_window_length() {
        let windows = LocalWindows::default();
        let minute = Duration::from_secs(60);
        let admitted =
            |key: &str, from: i64| (0..5).filter(|n| windows.admit(key, 3, minute, from + n).is_ok()).count();
        assert_eq!(admitted("session:a", 59_500), 3);
        assert_eq!(admitted("session:a", 60_500), 0, "one second later, past the minute's boundary");
        assert_eq!(windows.admit("session:a", 3, minute, 119_000), Err(Duration::from_millis(500)));
        assert_eq!(admitted("session:a", 119_500), 3, "a whole window after the first burst");
        assert_eq!(admitted("session:b", 60_500), 3, "another key has its own window");
    }
}
