//! The cache of authenticated sessions, by the SHA-256 of their secret, so
//! that a request in session mode costs no store read and no settings parse.
//!
//! A cached session is trusted only while no "session ended" notice can have
//! been missed: every entry carries the notice epoch of `Coordination` it was
//! read under (which changes when the Redis subscriber reconnects, and is
//! absent while it is down, when nothing is cached or served from the cache),
//! notices are applied before every lookup, a lagging notice receiver clears
//! the whole cache, and no entry outlives `max_age` (which bounds how long a
//! cancel that its replica could not publish stays unseen elsewhere). A
//! session's own expiry is checked on every hit. The cache holds at most
//! `capacity` entries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::IntCounter;
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::ActiveSession;
use crate::telemetry::metrics::METRICS;

/// The SHA-256 of a client secret.
pub(super) type SecretHash = [u8; 32];

/// How many sessions are kept and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSettings {
    /// Sessions kept at most; 0 turns the cache off.
    pub capacity: usize,
    /// The longest an entry is served before the store is read again.
    pub max_age: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings { capacity: 10_000, max_age: Duration::from_secs(30) }
    }
}

struct Entry {
    session: Arc<ActiveSession>,
    /// The notice epoch the session was read under.
    epoch: u64,
    /// Unix seconds after which the store is read again.
    fresh_until: i64,
}

/// What a lookup found.
pub(super) enum Lookup {
    Hit(Arc<ActiveSession>),
    /// Not cached (or no longer trusted): read the store, then `fill` with this ticket.
    Miss(FillTicket),
}

/// What a fill must know of the moment its store read began.
pub(super) struct FillTicket {
    /// `None` while notices may be missed: nothing is cached then.
    epoch: Option<u64>,
    /// The invalidation count before the store read.
    invalidations: u64,
}

pub(super) struct SessionCache {
    entries: DashMap<SecretHash, Entry>,
    settings: CacheSettings,
    /// The session-ended notices of every replica, applied before each lookup.
    notices: Mutex<broadcast::Receiver<String>>,
    /// Grows with every invalidation, so that a fill whose store read raced one is undone.
    invalidations: AtomicU64,
    hits: IntCounter,
    misses: IntCounter,
}

impl SessionCache {
    pub(super) fn new(settings: CacheSettings, notices: broadcast::Receiver<String>) -> Self {
        SessionCache {
            entries: DashMap::new(),
            settings,
            notices: Mutex::new(notices),
            invalidations: AtomicU64::new(0),
            hits: METRICS.session_cache.with_label_values(&["hit"]),
            misses: METRICS.session_cache.with_label_values(&["miss"]),
        }
    }

    /// The cached session of `key` if it can still be trusted under `epoch`
    /// (the current notice epoch) at `now` (Unix seconds); a miss carries
    /// what `fill` needs. An expired session is a hit: the caller refuses it.
    pub(super) fn lookup(&self, key: &SecretHash, epoch: Option<u64>, now: i64) -> Lookup {
        self.apply_notices();
        let ticket = FillTicket { epoch, invalidations: self.invalidations.load(Ordering::SeqCst) };
        if self.settings.capacity == 0 {
            return Lookup::Miss(ticket);
        }
        let Some(epoch) = epoch else {
            self.misses.inc();
            return Lookup::Miss(ticket);
        };
        if let Some(entry) = self.entries.get(key) {
            if entry.epoch == epoch && entry.fresh_until > now {
                self.hits.inc();
                return Lookup::Hit(entry.session.clone());
            }
            drop(entry);
            self.entries.remove(key);
        }
        self.misses.inc();
        Lookup::Miss(ticket)
    }

    /// Keeps a session just read from the store, unless an invalidation came
    /// meanwhile or notices could be missed when the read began.
    pub(super) fn fill(&self, key: SecretHash, session: Arc<ActiveSession>, ticket: FillTicket, now: i64) {
        let Some(epoch) = ticket.epoch else { return };
        if self.settings.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.settings.capacity {
            self.evict(now);
        }
        let max_age = i64::try_from(self.settings.max_age.as_secs()).unwrap_or(i64::MAX);
        let fresh_until = now.saturating_add(max_age).min(session.expires_at);
        self.entries.insert(key, Entry { session, epoch, fresh_until });
        // An invalidation after the store read began may have run before this
        // insert and missed it: undo the insert. One after this check sees it.
        if self.invalidations.load(Ordering::SeqCst) != ticket.invalidations {
            self.entries.remove(&key);
        }
    }

    /// Forgets the session everywhere in the cache; it is read from the store next time.
    pub(super) fn invalidate(&self, session_id: &str) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.entries.retain(|_, entry| entry.session.id != session_id);
    }

    /// Sessions cached now.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Applies the notices that arrived since the last lookup; a receiver that
    /// lagged behind lost some, so everything goes.
    fn apply_notices(&self) {
        let mut notices = self.notices.lock().unwrap_or_else(|poison| poison.into_inner());
        loop {
            match notices.try_recv() {
                Ok(session_id) => self.invalidate(&session_id),
                Err(TryRecvError::Lagged(_)) => self.clear(),
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    fn clear(&self) {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    /// Makes room for one entry: the stale ones go, and if none was, one
    /// arbitrary entry (random replacement: no bookkeeping on the hit path).
    fn evict(&self, now: i64) {
        self.entries.retain(|_, entry| entry.fresh_until > now);
        if self.entries.len() >= self.settings.capacity {
            let victim = self.entries.iter().next().map(|entry| *entry.key());
            if let Some(victim) = victim {
                self.entries.remove(&victim);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::UserId;

    fn session(id: &str, expires_at: i64) -> Arc<ActiveSession> {
        Arc::new(ActiveSession {
            id: id.to_string(),
            user: UserId("u".into()),
            expires_at,
            settings: serde_json::from_value::<crate::protocol::hosted::SessionCreateParams>(
                serde_json::json!({"user": "u", "workflow": {"id": "w"}}),
            )
            .unwrap()
            .resolve()
            .unwrap()
            .1,
        })
    }

    fn cache(capacity: usize) -> (SessionCache, broadcast::Sender<String>) {
        let (notices, receiver) = broadcast::channel(4);
        (SessionCache::new(CacheSettings { capacity, max_age: Duration::from_secs(30) }, receiver), notices)
    }

    fn miss(lookup: Lookup) -> FillTicket {
        match lookup {
            Lookup::Miss(ticket) => ticket,
            Lookup::Hit(session) => panic!("unexpected hit of {}", session.id),
        }
    }

    fn is_hit(lookup: Lookup) -> bool {
        matches!(lookup, Lookup::Hit(_))
    }

    #[test]
    fn a_filled_session_is_a_hit_under_its_epoch_and_before_its_max_age() {
        let (cache, _notices) = cache(10);
        let ticket = miss(cache.lookup(&[1; 32], Some(3), 1_000));
        cache.fill([1; 32], session("a", 5_000), ticket, 1_000);
        assert!(is_hit(cache.lookup(&[1; 32], Some(3), 1_029)));
        assert!(!is_hit(cache.lookup(&[1; 32], Some(4), 1_001)), "another epoch: notices may have been missed");
        let ticket = miss(cache.lookup(&[1; 32], Some(4), 1_001));
        cache.fill([1; 32], session("a", 5_000), ticket, 1_001);
        assert!(!is_hit(cache.lookup(&[1; 32], None, 1_002)), "nothing is served while notices may be missed");
        assert!(!is_hit(cache.lookup(&[1; 32], Some(4), 1_031)), "past its max age the store is read again");
    }

    #[test]
    fn nothing_is_cached_while_notices_may_be_missed() {
        let (cache, _notices) = cache(10);
        let ticket = miss(cache.lookup(&[1; 32], None, 1_000));
        cache.fill([1; 32], session("a", 5_000), ticket, 1_000);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_notice_or_a_lag_forgets_sessions() {
        let (cache, notices) = cache(10);
        for (key, id) in [(1u8, "a"), (2, "b")] {
            let ticket = miss(cache.lookup(&[key; 32], Some(0), 1_000));
            cache.fill([key; 32], session(id, 5_000), ticket, 1_000);
        }
        notices.send("a".into()).unwrap();
        assert!(!is_hit(cache.lookup(&[1; 32], Some(0), 1_000)), "the ended session is gone");
        assert!(is_hit(cache.lookup(&[2; 32], Some(0), 1_000)), "the other stays");
        for n in 0..6 {
            notices.send(format!("other-{n}")).unwrap();
        }
        assert!(!is_hit(cache.lookup(&[2; 32], Some(0), 1_000)), "a lagging receiver may have lost its notice");
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_undone() {
        let (cache, _notices) = cache(10);
        let ticket = miss(cache.lookup(&[1; 32], Some(0), 1_000));
        // The session is cancelled while its store read is under way.
        cache.invalidate("a");
        cache.fill([1; 32], session("a", 5_000), ticket, 1_000);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let (cache, _notices) = cache(3);
        for key in 0..20u8 {
            let ticket = miss(cache.lookup(&[key; 32], Some(0), 1_000));
            cache.fill([key; 32], session(&format!("s{key}"), 5_000), ticket, 1_000);
            assert!(cache.len() <= 3, "{} entries", cache.len());
        }
        assert!(is_hit(cache.lookup(&[19; 32], Some(0), 1_000)), "the newest is kept");
        let (off, _notices) = self::cache(0);
        let ticket = miss(off.lookup(&[1; 32], Some(0), 1_000));
        off.fill([1; 32], session("a", 5_000), ticket, 1_000);
        assert_eq!(off.len(), 0, "capacity 0 turns the cache off");
    }
}
