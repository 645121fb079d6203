//! Client sessions: short-lived secrets that let a browser act as one user,
//! with the settings and request rate the backend gave that user, as the
//! hosted ChatKit service's sessions do.
//!
//! Secrets are random and stored only as SHA-256 hashes. Sessions live in the
//! store, so every replica knows them; rate-limit counters and "session ended"
//! notices go through the fan-out, so they hold across replicas too. Sessions
//! that authenticated are cached by secret hash (`cache.rs`), invalidated by
//! those notices. A background sweeper deletes expired sessions from the store
//! in bounded batches. This module knows nothing of HTTP.

mod cache;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore;

use crate::fanout::Coordination;
use crate::ids::UserId;
use crate::ids::{new_id, IdKind};
use crate::protocol::hosted::{ChatSession, SessionCreateParams, SessionSettings, SessionStatus};
use crate::store::{SessionRecord, Store, StoreError};

pub use self::cache::CacheSettings;
use self::cache::{Lookup, SecretHash, SessionCache};

/// The prefix of every client secret, so that one is recognizable in a leak scan.
pub const SECRET_PREFIX: &str = "ck_secret_";

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    BadRequest(String),
    #[error("session `{0}` not found")]
    NotFound(String),
    #[error("store failed: {0}")]
    Store(StoreError),
}

/// Why a client secret was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `Authorization: Bearer <client_secret>`")]
    Missing,
    #[error("unknown client secret")]
    Unknown,
    #[error("the session of this client secret has expired")]
    Expired,
    #[error("the session of this client secret was cancelled")]
    Cancelled,
    #[error("sessions cannot be checked right now")]
    Unavailable,
}

/// A session that authenticated a request.
#[derive(Clone, Debug)]
pub struct ActiveSession {
    pub id: String,
    pub user: UserId,
    /// Unix seconds.
    pub expires_at: i64,
    pub settings: SessionSettings,
}

impl ActiveSession {
    /// Seconds until it expires, at least zero.
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.expires_at - unix_now()).unwrap_or(0))
    }
}

/// Whether a request may go ahead under its session's rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Over the limit; the seconds (rounded up) until the oldest request of the
    /// last minute is a minute old, when one more may go.
    Limited {
        retry_after: u64,
    },
}

/// The time rate limits count with, in Unix milliseconds: the system clock,
/// or one a test moves.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The window `max_requests_per_1_minute` counts in.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// How the background sweeper deletes expired sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepSettings {
    /// Between passes.
    pub every: Duration,
    /// Sessions one pass deletes at most, so that no pass holds the store long.
    pub batch: usize,
    /// How long an expired session is kept first, so that its secret is still
    /// answered "expired" rather than "unknown" for a while.
    pub keep_expired: Duration,
}

/// The pause before the next pass when a pass deleted a whole batch, so that
/// a backlog drains soon without one pass doing unbounded work.
const BACKLOG_PAUSE: Duration = Duration::from_secs(1);

pub struct Sessions {
    store: Arc<dyn Store>,
    /// Carries rate-limit windows and session ends between replicas.
    coordination: Arc<dyn Coordination>,
    clock: Clock,
    /// Sessions that authenticated, by the hash of their secret.
    cache: SessionCache,
}

impl Sessions {
    /// Sessions with the default cache.
    pub fn new(store: Arc<dyn Store>, coordination: Arc<dyn Coordination>) -> Self {
        let cache = SessionCache::new(CacheSettings::default(), coordination.session_ends());
        Sessions { store, coordination, clock: Arc::new(|| chrono::Utc::now().timestamp_millis()), cache }
    }

    /// The same, with these cache settings.
    pub fn with_cache(mut self, settings: CacheSettings) -> Self {
        self.cache = SessionCache::new(settings, self.coordination.session_ends());
        self
    }

    /// Sessions in the cache now (tests check that it stays bounded).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The same, with rate limits counted on `clock` (tests move it across a minute).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub async fn create(&self, params: SessionCreateParams) -> Result<ChatSession, SessionError> {
        let (user, settings, seconds) = params.resolve().map_err(SessionError::BadRequest)?;
        let secret = new_secret();
        let created_at = unix_now();
        let record = SessionRecord {
            id: new_id(IdKind::Session),
            secret_hash: hash_secret(&secret),
            user,
            created_at,
            expires_at: created_at + seconds,
            cancelled: false,
            settings: serde_json::to_value(&settings).map_err(|e| SessionError::BadRequest(e.to_string()))?,
        };
        self.store.create_session(&record).await.map_err(SessionError::Store)?;
        tracing::info!(session = %record.id, user = %record.user, expires_at = record.expires_at, "session created");
        Ok(answer(&record, settings, secret))
    }

    /// Cancels a session; its secret stops working at once, on every replica.
    pub async fn cancel(&self, session_id: &str) -> Result<ChatSession, SessionError> {
        let record = self.store.cancel_session(session_id).await.map_err(|error| match error {
            StoreError::NotFound { .. } => SessionError::NotFound(session_id.to_string()),
            other => SessionError::Store(other),
        })?;
        // This replica's cache forgets it at once; the others' on the notice.
        self.cache.invalidate(session_id);
        self.coordination.end_session(session_id).await;
        tracing::info!(session = %record.id, "session cancelled");
        let settings = settings_of(&record).map_err(SessionError::BadRequest)?;
        // The secret is not kept, so it cannot be answered again.
        Ok(answer(&record, settings, String::new()))
    }

    /// The session a client secret belongs to, if it is still good: from the
    /// cache while no notice of its end can have been missed, else from the store.
    pub async fn authenticate(&self, secret: &str) -> Result<Arc<ActiveSession>, AuthError> {
        if !secret.starts_with(SECRET_PREFIX) {
            return Err(AuthError::Unknown);
        }
        let key = digest_secret(secret);
        let now = unix_now();
        // Read before the store, so that a notice missed during the read shows as a new epoch.
        let epoch = self.coordination.session_ends_epoch();
        let ticket = match self.cache.lookup(&key, epoch, now) {
            Lookup::Hit(session) if session.expires_at <= now => return Err(AuthError::Expired),
            Lookup::Hit(session) => return Ok(session),
            Lookup::Miss(ticket) => ticket,
        };
        let record = match self.store.find_session(&hex(&key)).await {
            Ok(record) => record,
            Err(StoreError::NotFound { .. }) => return Err(AuthError::Unknown),
            Err(error) => {
                tracing::error!(%error, "cannot look up a session");
                return Err(AuthError::Unavailable);
            }
        };
        if record.cancelled {
            return Err(AuthError::Cancelled);
        }
        if record.expires_at <= now {
            return Err(AuthError::Expired);
        }
        let settings = settings_of(&record).map_err(|error| {
            tracing::error!(%error, session = %record.id, "a stored session has unreadable settings");
            AuthError::Unavailable
        })?;
        let session = Arc::new(ActiveSession {
            id: record.id,
            user: UserId(record.user),
            expires_at: record.expires_at,
            settings,
        });
        self.cache.fill(key, session.clone(), ticket, now);
        Ok(session)
    }

    /// Counts a request against the session's limit, across replicas: at most
    /// `max_requests_per_1_minute` requests in any 60 seconds (a sliding
    /// window, so no burst gets twice the limit through around a clock
    /// minute's boundary). A refused request is not counted.
    pub async fn admit(&self, session: &ActiveSession) -> Admission {
        let limit = session.settings.rate_limits.max_requests_per_1_minute;
        let key = format!("session:{}", session.id);
        match self.coordination.admit_window(&key, limit, RATE_WINDOW, (self.clock)()).await {
            Ok(()) => Admission::Allowed,
            Err(wait) => Admission::Limited { retry_after: wait.as_millis().div_ceil(1000).max(1) as u64 },
        }
    }

    /// Deletes up to `batch` sessions that expired `keep_expired` or longer
    /// ago; returns how many went.
    pub async fn sweep(&self, settings: &SweepSettings) -> Result<usize, StoreError> {
        let kept = i64::try_from(settings.keep_expired.as_secs()).unwrap_or(i64::MAX);
        let expired_by = ((self.clock)() / 1000).saturating_sub(kept);
        self.store.delete_expired_sessions(expired_by, settings.batch).await
    }

    /// Runs `sweep` in the background, every `settings.every` (sooner while
    /// whole batches go), for as long as these sessions live.
    pub fn start_sweeper(self: &Arc<Self>, settings: SweepSettings) {
        let sessions = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut pause = settings.every;
            loop {
                tokio::time::sleep(pause).await;
                let Some(sessions) = sessions.upgrade() else { return };
                pause = match sessions.sweep(&settings).await {
                    Ok(deleted) => {
                        if deleted > 0 {
                            tracing::info!(deleted, "expired sessions deleted");
                        }
                        if deleted >= settings.batch {
                            BACKLOG_PAUSE.min(settings.every)
                        } else {
                            settings.every
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot delete expired sessions; trying again next pass");
                        settings.every
                    }
                };
            }
        });
    }

    /// Ids of sessions cancelled on any replica, for closing their streams.
    pub fn ended(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.coordination.session_ends()
    }

    /// Counts one upload against the session's `max_files`, across replicas; false past it.
    pub async fn admit_upload(&self, session: &ActiveSession) -> bool {
        let Some(max_files) = session.settings.chatkit_configuration.file_upload.max_files else { return true };
        let ttl = session.remaining() + Duration::from_secs(60);
        self.coordination.incr(&format!("files:{}", session.id), ttl).await <= u64::from(max_files)
    }
}

fn settings_of(record: &SessionRecord) -> Result<SessionSettings, String> {
    serde_json::from_value(record.settings.clone()).map_err(|e| format!("stored session settings: {e}"))
}

fn answer(record: &SessionRecord, settings: SessionSettings, client_secret: String) -> ChatSession {
    let status = if record.cancelled {
        SessionStatus::Cancelled
    } else if record.expires_at <= unix_now() {
        SessionStatus::Expired
    } else {
        SessionStatus::Active
    };
    ChatSession {
        id: record.id.clone(),
        object: "chatkit.session",
        client_secret,
        expires_at: record.expires_at,
        max_requests_per_1_minute: settings.rate_limits.max_requests_per_1_minute,
        rate_limits: settings.rate_limits,
        status,
        user: record.user.clone(),
        workflow: settings.workflow,
        chatkit_configuration: settings.chatkit_configuration,
    }
}

/// 32 random bytes, URL-safe: 256 bits that cannot be guessed.
fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Hex SHA-256: what the store keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex(&digest_secret(secret))
}

/// The SHA-256 of a secret, the cache's key.
fn digest_secret(secret: &str) -> SecretHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 43, "{a}");
        assert_eq!(hash_secret("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_ne!(hash_secret(&a), hash_secret(&b));
    }
}
