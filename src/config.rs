//! Configuration: one typed struct, read from flags and the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::fanout::FanoutSettings;
use crate::thread::ThreadSettings;

/// chatkit-gateway: a realtime server for the OpenAI ChatKit protocol.
///
/// Every flag can also be set through the environment variable named with it.
/// With no settings at all it runs on an embedded SQLite database with the
/// built-in echo responder: no network, no API key.
#[derive(Clone, Debug, Parser)]
#[command(name = "chatkit-gateway", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "CHATKIT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Where threads, items and attachments are stored: `sqlite://<path>` (created
    /// with its schema on start), `postgres://user@host/db` (schema migrated on
    /// start; for several replicas) or `memory://` (lost on exit; for tests).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/chatkit.db")]
    pub database_url: String,

    /// Directory for attachment bytes and other local files.
    #[arg(long, env = "CHATKIT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Request header that names the user. Until client-secret sessions exist,
    /// deploy behind a proxy that sets it; requests without it get 401.
    #[arg(long, env = "CHATKIT_USER_HEADER", default_value = "x-user-id")]
    pub user_header: String,

    /// Largest request body accepted on `POST /chatkit`, in bytes; larger gets 413.
    #[arg(long, env = "CHATKIT_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest attachment accepted by `attachments.create` and its upload, in bytes.
    #[arg(long, env = "CHATKIT_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_upload_bytes: u64,

    /// Base URL clients reach the gateway at, used in attachment upload and
    /// preview links. Defaults to `http://<bind>`.
    #[arg(long, env = "CHATKIT_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// HTTP worker threads. Defaults to the number of CPU cores.
    #[arg(long, env = "CHATKIT_WORKERS")]
    pub workers: Option<usize>,

    /// Seconds to let running requests finish after SIGTERM before stopping.
    #[arg(long, env = "CHATKIT_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Messages that may wait behind a thread's running turn; more get a busy error.
    #[arg(long, env = "CHATKIT_THREAD_QUEUE_BOUND", default_value_t = 16)]
    pub thread_queue_bound: usize,

    /// Seconds a thread's actor lives without work before it stops.
    #[arg(long, env = "CHATKIT_THREAD_IDLE_SECS", default_value_t = 300)]
    pub thread_idle_secs: u64,

    /// Keys that open the admin API under `/v1/` (`Authorization: Bearer <key>`),
    /// comma-separated. Without keys the admin API is open on a loopback bind
    /// and refused (403) on any other.
    #[arg(long, env = "CHATKIT_ADMIN_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub admin_keys: Vec<Secret>,

    /// Redis for fan-out and coordination between replicas
    /// (`redis://[:password@]host:port[/db]`). Without it, fan-out is
    /// in-process only: right for one replica.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,

    /// Seconds between heartbeat comments on idle viewer streams, so proxies keep them open.
    #[arg(long, env = "CHATKIT_HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,

    /// Messages kept per thread and per user for viewers that reconnect with `Last-Event-ID`.
    #[arg(long, env = "CHATKIT_FANOUT_HISTORY", default_value_t = 256)]
    pub fanout_history: usize,

    /// Messages buffered per viewer; a viewer further behind gets `resync` and is closed.
    #[arg(long, env = "CHATKIT_VIEWER_BUFFER", default_value_t = 256)]
    pub viewer_buffer: usize,

    /// Seconds a replica's lease on a thread lives unless renewed (with Redis).
    #[arg(long, env = "CHATKIT_LEASE_TTL_SECS", default_value_t = 10)]
    pub lease_ttl_secs: u64,

    /// Seconds a replica waits for a thread's lease held elsewhere before refusing as busy.
    #[arg(long, env = "CHATKIT_LEASE_WAIT_SECS", default_value_t = 30)]
    pub lease_wait_secs: u64,

    /// Milliseconds between pings that check the Redis subscriber connection.
    #[arg(long, env = "CHATKIT_REDIS_PING_MS", default_value_t = 5000)]
    pub redis_ping_ms: u64,

    /// Connections in the PostgreSQL pool (with a `postgres://` store).
    #[arg(long, env = "CHATKIT_PG_POOL", default_value_t = 16)]
    pub pg_pool: u32,

    /// Log filter, in `tracing` syntax (e.g. `info`, `chatkit_gateway=debug`).
    #[arg(long, env = "CHATKIT_LOG", default_value = "info")]
    pub log: String,
}

impl Config {
    /// The settings a test or an embedding program starts from: loopback on a
    /// free port, in-memory store, no environment read.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: "memory://".into(),
            data_dir,
            user_header: "x-user-id".into(),
            max_body_bytes: 8 * 1024 * 1024,
            max_upload_bytes: 20 * 1024 * 1024,
            public_url: None,
            workers: Some(2),
            shutdown_grace_secs: 5,
            thread_queue_bound: 16,
            thread_idle_secs: 300,
            admin_keys: Vec::new(),
            redis_url: None,
            heartbeat_secs: 15,
            fanout_history: 256,
            viewer_buffer: 256,
            lease_ttl_secs: 10,
            lease_wait_secs: 30,
            redis_ping_ms: 5000,
            pg_pool: 4,
            log: "warn".into(),
        }
    }

    pub fn thread_settings(&self) -> ThreadSettings {
        ThreadSettings {
            queue_bound: self.thread_queue_bound.max(1),
            idle_timeout: Duration::from_secs(self.thread_idle_secs.max(1)),
        }
    }

    pub fn fanout_settings(&self) -> FanoutSettings {
        FanoutSettings {
            history: self.fanout_history.max(1),
            viewer_buffer: self.viewer_buffer.max(1),
            lease_ttl: Duration::from_secs(self.lease_ttl_secs.max(1)),
            lease_wait: Duration::from_secs(self.lease_wait_secs),
            ping_every: Duration::from_millis(self.redis_ping_ms.max(10)),
            ..FanoutSettings::default()
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// A secret value: compared, never printed. `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that must use it (e.g. to connect).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares without an early exit, so timing does not reveal a prefix.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.is_empty() {
            return Err("a key must not be empty".into());
        }
        Ok(Secret(value.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_nothing() {
        let config = Config::try_parse_from(["chatkit-gateway"]).unwrap();
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database_url, "sqlite://data/chatkit.db");
        assert_eq!(config.user_header, "x-user-id");
    }

    #[test]
    fn admin_keys_never_print() {
        let config = Config::try_parse_from(["chatkit-gateway", "--admin-keys", "k1,k2"]).unwrap();
        assert_eq!(config.admin_keys.len(), 2);
        assert!(config.admin_keys[1].matches("k2") && !config.admin_keys[1].matches("k1"));
        let printed = format!("{config:?}");
        assert!(!printed.contains("k1") && printed.contains("***"), "{printed}");
    }

    #[test]
    fn flags_are_parsed() {
        let config =
            Config::try_parse_from(["chatkit-gateway", "--bind", "0.0.0.0:9000", "--max-body-bytes", "10"]).unwrap();
        assert_eq!(config.bind.port(), 9000);
        assert_eq!(config.max_body_bytes, 10);
        assert!(Config::try_parse_from(["chatkit-gateway", "--bind", "nowhere"]).is_err());
    }
}
