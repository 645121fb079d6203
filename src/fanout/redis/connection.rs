//! The Redis connections' shared status and the command connections, which
//! reopen on demand with backoff after a failure, to one Redis server or to a
//! Redis Cluster (whose connection follows slot moves and failovers itself).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};

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
    /// Times control messages (session ends) may have been lost: raised
    /// before `subscribed` turns true after a loss, and on a cluster's push overflow.
    pub notice_losses: AtomicU64,
    pub dropped_publications: AtomicU64,
}

impl ConnectionStatus {
    pub fn down(&self, why: impl std::fmt::Display) {
        METRICS.redis_connected.set(0);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = why.to_string();
        self.subscribed.store(false, Ordering::SeqCst);
    }
}

/// Where Redis is: one server, or the nodes of a Redis Cluster to learn its shards from.
#[derive(Clone)]
pub(super) enum RedisClient {
    Single(redis::Client),
    /// The client for commands, and the seed nodes the subscriber builds its own client from.
    Cluster {
        commands: Box<ClusterClient>,
        nodes: Vec<String>,
    },
}

impl RedisClient {
    /// Whether this is a Redis Cluster, whose topic channels are sharded.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisClient::Cluster { .. })
    }

    async fn connect(&self) -> Result<AnyConnection, RedisError> {
        match self {
            RedisClient::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                Ok(AnyConnection::Single(client.get_multiplexed_async_connection_with_config(&config).await?))
            }
            RedisClient::Cluster { commands, .. } => Ok(AnyConnection::Cluster(commands.get_async_connection().await?)),
        }
    }
}

/// A command connection to one server or to a cluster; commands run on it
/// alike, and the cluster's are routed to the shard of their keys.
#[derive(Clone)]
pub(super) enum AnyConnection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConnection::Single(conn) => conn.req_packed_command(cmd),
            AnyConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConnection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            AnyConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConnection::Single(conn) => conn.get_db(),
            AnyConnection::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A multiplexed command connection, reopened on demand after a failure.
pub(super) struct CommandConnection {
    client: RedisClient,
    conn: tokio::sync::Mutex<Option<AnyConnection>>,
    /// No reconnection attempt before this instant, so a dead Redis costs
    /// callers nothing between attempts.
    next_try: Mutex<Instant>,
    backoff: Mutex<Duration>,
}

impl CommandConnection {
    pub fn new(client: &RedisClient) -> Arc<CommandConnection> {
        Arc::new(CommandConnection {
            client: client.clone(),
            conn: tokio::sync::Mutex::new(None),
            next_try: Mutex::new(Instant::now()),
            backoff: Mutex::new(MIN_BACKOFF),
        })
    }

    pub async fn get(&self) -> Result<AnyConnection, FanoutError> {
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
        match self.client.connect().await {
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
