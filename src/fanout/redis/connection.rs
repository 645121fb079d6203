//! The Redis connections' shared status and the command connections, which
//! reopen on demand with backoff after a failure.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError};

use crate::fanout::FanoutError;
use crate::telemetry::metrics::METRICS;

pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause between reconnection attempts.
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest pause between reconnection attempts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_millis(800);

/// Connection status, shared by the tasks and read by health checks.
#[derive(Default)]
pub(super) struct ConnectionStatus {
    pub subscribed: AtomicBool,
    pub last_error: Mutex<String>,
    pub reconnects: AtomicU64,
    pub dropped_publications: AtomicU64,
}

impl ConnectionStatus {
    pub fn down(&self, why: impl std::fmt::Display) {
        METRICS.redis_connected.set(0);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
        self.subscribed.store(false, Ordering::SeqCst);
    }
}

/// A multiplexed command connection, reopened on demand after a failure.
pub(super) struct CommandConnection {
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// No reconnection attempt before this instant, so a dead Redis costs
    /// callers nothing between attempts.
    next_try: Mutex<Instant>,
    backoff: Mutex<Duration>,
}

impl CommandConnection {
    pub fn new(client: &redis::Client) -> Arc<CommandConnection> {
        Arc::new(CommandConnection {
            client: client.clone(),
            conn: tokio::sync::Mutex::new(None),
            next_try: Mutex::new(Instant::now()),
            backoff: Mutex::new(MIN_BACKOFF),
        })
    }

    pub async fn get(&self) -> Result<MultiplexedConnection, FanoutError> {
        let mut conn = self.conn.lock().await;
        if let Some(conn) = conn.as_ref() {
            return Ok(conn.clone());
        }
        {
            let next_try = self.next_try.lock().unwrap_or_else(|p| p.into_inner());
            if Instant::now() < *next_try {
                return Err(FanoutError::Unavailable("Redis is unreachable; retrying shortly".into()));
            }
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        match self.client.get_multiplexed_async_connection_with_config(&config).await {
            Ok(fresh) => {
                *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) = MIN_BACKOFF;
                *conn = Some(fresh.clone());
                Ok(fresh)
            }
            Err(error) => {
                let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
                *self.next_try.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now() + *backoff;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
                Err(unavailable(&error))
            }
        }
    }

    /// Redis answers again (the subscriber connection just came back): the
    /// next call connects at once rather than wait out its backoff, and on a
    /// fresh connection, since the old one most likely died with the other.
    /// Without this, `/readyz` could report ready while publications are
    /// still dropped and leases not taken.
    pub fn retry_now(&self) {
        *self.next_try.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        *self.backoff.lock().unwrap_or_else(|p| p.into_inner()) = MIN_BACKOFF;
        // A caller holding the lock is connecting now, so there is nothing stale to forget.
        if let Ok(mut conn) = self.conn.try_lock() {
            *conn = None;
        }
    }

    /// Forgets the connection after a failure that may have broken it.
    pub async fn failed(&self, error: &RedisError) {
        if error.is_io_error() || error.is_connection_dropped() || error.is_timeout() || error.is_unrecoverable_error()
        {
            *self.conn.lock().await = None;
        }
    }

    /// A command's result as the caller reports it: a failure first forgets
    /// the connection when it may have broken it.
    pub async fn checked<T>(&self, result: Result<T, RedisError>) -> Result<T, FanoutError> {
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                self.failed(&error).await;
                Err(unavailable(&error))
            }
        }
    }
}

pub(super) fn unavailable(error: &RedisError) -> FanoutError {
    FanoutError::Unavailable(format!("Redis: {error}"))
}
