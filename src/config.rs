//! Configuration: one typed struct in sections, read from flags and the environment.
//!
//! Each setting's default is written once, on its flag; `Config::defaults()`
//! reads them without the environment, and the tests start from it.
//!
//! It runs past 600 lines because every setting of the gateway lives here, each
//! with the doc comment `--help` prints; splitting the sections into files would
//! only scatter the one list operators read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

use crate::blobs::{BlobLocation, S3Options};
use crate::fanout::FanoutSettings;
use crate::http::AuthMode;
use crate::responder::{parse_hosted_tools, AgentSettings, McpSettings, ModelApi, ModelSettings, REASONING_SUMMARIES};
use crate::secret::Secret;
use crate::sessions::{CacheSettings, SweepSettings};
use crate::telemetry::{LogFormat, SamplerKind, TraceSettings};
use crate::thread::ThreadSettings;

/// The model used when an API key is set and `CHATKIT_MODEL` is not.
pub const DEFAULT_MODEL: &str = "gpt-4.1-mini";

/// chatkit-gateway: a realtime server for the OpenAI ChatKit protocol.
///
/// Every flag can also be set through the environment variable named with it.
/// With no settings at all it runs on an embedded SQLite database with the
/// built-in echo responder: no network, no API key.
#[derive(Clone, Debug, Parser)]
#[command(name = "chatkit-gateway", version, about, long_about = None)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub access: AccessConfig,
    #[command(flatten)]
    pub threads: ThreadConfig,
    #[command(flatten)]
    pub fanout: FanoutConfig,
    #[command(flatten)]
    pub model: ModelConfig,
    #[command(flatten)]
    pub web: WebConfig,
    #[command(flatten)]
    pub agent: AgentConfig,
    #[command(flatten)]
    pub tracing: TracingConfig,
}

/// The HTTP server: where it listens, how it treats connections, how it stops.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerConfig {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, env = "CHATKIT_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Base URL clients reach the gateway at, used in attachment upload and
    /// preview links. Defaults to `http://<bind>`.
    #[arg(long, env = "CHATKIT_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// HTTP worker threads. Defaults to the number of CPU cores.
    #[arg(long, env = "CHATKIT_WORKERS")]
    pub workers: Option<usize>,

    /// Largest request body accepted on `POST /chatkit`, in bytes; larger gets 413.
    #[arg(long, env = "CHATKIT_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds an idle keep-alive connection stays open. Keep it above the idle
    /// timeout of the load balancer in front (60 s on most), so that the gateway
    /// never closes a connection the balancer is about to reuse.
    #[arg(long, env = "CHATKIT_KEEP_ALIVE_SECS", default_value_t = 75)]
    pub keep_alive_secs: u64,

    /// Seconds running turns get to finish after SIGTERM or Ctrl-C; turns still
    /// running then are cancelled, keeping their partial output.
    #[arg(long, env = "CHATKIT_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    /// Log filter, in `tracing` syntax (e.g. `info`, `chatkit_gateway=debug`).
    #[arg(long, env = "CHATKIT_LOG", default_value = "info")]
    pub log: String,

    /// How log lines are written to stdout: `text` (human-readable) or `json`
    /// (one object per line with the request span's `request_id`, for collectors).
    #[arg(long, env = "CHATKIT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Traces, under OpenTelemetry's own variable names, so that a deployment sets them as for any service.
/// The exporter reads its headers (`OTEL_EXPORTER_OTLP_HEADERS`, often an API key), timeout and compression from
/// the environment itself: they are not settings here, and so are never printed.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Tracing")]
pub struct TracingConfig {
    /// Where to export traces over OTLP/HTTP (protobuf), e.g. `http://otel-collector:4318`, to which
    /// `/v1/traces` is added. Unset (the default), nothing is traced and trace context is neither continued
    /// nor passed on.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_endpoint: Option<String>,

    /// The full URL to export traces to, taken as it is; wins over `--otel-endpoint`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otel_traces_endpoint: Option<String>,

    /// The OTLP protocol. Only `http/protobuf` is built in; anything else is refused at start.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "http/protobuf", value_parser = ["http/protobuf"])]
    pub otel_protocol: String,

    /// The `service.name` of the spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "chatkit-gateway")]
    pub otel_service_name: String,

    /// The `service.instance.id` of the spans, which tells the replicas apart in a trace. Defaults to the host
    /// name, which is the container's id under Docker and the pod's name under Kubernetes; a
    /// `service.instance.id` in `OTEL_RESOURCE_ATTRIBUTES` wins.
    #[arg(long, env = "HOSTNAME")]
    pub otel_instance_id: Option<String>,

    /// Which traces are kept. The default follows the caller's decision, and keeps every trace that starts here.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_enum, default_value = "parentbased_always_on")]
    pub otel_sampler: SamplerKind,

    /// The ratio of traces kept by the `traceidratio` samplers, from 0 to 1.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", default_value_t = 1.0, value_parser = sampling_ratio)]
    pub otel_sampler_arg: f64,

    /// Turns traces off whatever else is set.
    #[arg(long, env = "OTEL_SDK_DISABLED")]
    pub otel_sdk_disabled: bool,
}

impl TracingConfig {
    /// The settings `telemetry` starts traces with.
    pub fn settings(&self) -> TraceSettings {
        let endpoint = match (&self.otel_traces_endpoint, &self.otel_endpoint) {
            _ if self.otel_sdk_disabled => None,
            (Some(full), _) if !full.trim().is_empty() => Some(full.trim().to_string()),
            (_, Some(base)) if !base.trim().is_empty() => {
                Some(format!("{}/v1/traces", base.trim().trim_end_matches('/')))
            }
            _ => None,
        };
        TraceSettings {
            endpoint,
            service_name: self.otel_service_name.clone(),
            instance_id: self.otel_instance_id.clone().filter(|id| !id.trim().is_empty()),
            sampler: self.otel_sampler,
            ratio: self.otel_sampler_arg,
        }
    }
}

/// A sampling ratio: a number from 0 to 1.
fn sampling_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("expected a ratio from 0 to 1, got {text:?}")),
    }
}

/// Where threads, items, sessions and attachments are kept.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Storage")]
pub struct StorageConfig {
    /// Where threads, items and attachments are stored: `sqlite://<path>` (created
    /// with its schema on start), `postgres://user@host/db` (schema migrated on
    /// start; for several replicas) or `memory://` (lost on exit; for tests).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://data/chatkit.db")]
    pub database_url: String,

    /// Directory for attachment bytes and other local files.
    #[arg(long, env = "CHATKIT_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Connections in the PostgreSQL pool (with a `postgres://` store).
    #[arg(long, env = "CHATKIT_PG_POOL", default_value_t = 16)]
    pub pg_pool: u32,

    /// Largest attachment accepted by `attachments.create` and its upload, in bytes.
    #[arg(long, env = "CHATKIT_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub max_upload_bytes: u64,

    /// Where attachment bytes are kept: `s3://bucket/prefix` (S3-compatible
    /// storage; credentials, region and endpoint from the AWS variables),
    /// `database` (the store's database), a directory (`file:///path` or a path)
    /// or `memory://`. Default: `database` with a PostgreSQL store, else the data directory.
    #[arg(long, env = "CHATKIT_BLOB_URL")]
    pub blob_url: Option<String>,

    /// Seconds an upload no message holds is kept before it expires (record and bytes).
    #[arg(long, env = "CHATKIT_UPLOAD_TTL_SECS", default_value_t = 24 * 60 * 60)]
    pub upload_ttl_secs: u64,

    /// Seconds between two passes of the sweeper that deletes expired uploads
    /// (each pass deletes at most 100).
    #[arg(long, env = "CHATKIT_UPLOAD_SWEEP_SECS", default_value_t = 60)]
    pub upload_sweep_secs: u64,

    /// Region of the S3 bucket (with an `s3://` blob URL).
    #[arg(long = "s3-region", env = "AWS_REGION")]
    pub s3_region: Option<String>,

    /// S3-compatible endpoint other than AWS's, e.g. `http://127.0.0.1:9000`.
    #[arg(long = "s3-endpoint", env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,

    /// Allow a plain-HTTP S3 endpoint.
    #[arg(long = "s3-allow-http", env = "AWS_ALLOW_HTTP", default_value_t = false)]
    pub s3_allow_http: bool,

    /// S3 access key id.
    #[arg(long = "s3-access-key-id", env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<Secret>,

    /// S3 secret access key.
    #[arg(long = "s3-secret-access-key", env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<Secret>,
}

impl StorageConfig {
    /// Where attachment bytes go: `CHATKIT_BLOB_URL`, else the store's database
    /// for PostgreSQL (shared by the replicas), else the data directory.
    pub fn blob_location(&self, store_backend: &str) -> Result<BlobLocation, String> {
        match &self.blob_url {
            Some(url) => BlobLocation::parse(url),
            None if store_backend == "postgres" => Ok(BlobLocation::Database),
            None => Ok(BlobLocation::Directory(self.data_dir.clone())),
        }
    }

    pub fn s3_options(&self) -> S3Options {
        S3Options {
            region: self.s3_region.clone(),
            endpoint: self.s3_endpoint.clone(),
            allow_http: self.s3_allow_http,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
        }
    }

    pub fn upload_ttl(&self) -> Duration {
        Duration::from_secs(self.upload_ttl_secs)
    }

    pub fn upload_sweep(&self) -> Duration {
        Duration::from_secs(self.upload_sweep_secs.max(1))
    }
}

/// Who may call: how users are identified, and the keys of the `/v1` API.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Access")]
pub struct AccessConfig {
    /// How `/chatkit` and the viewer streams learn the user: `session`
    /// (`Authorization: Bearer <client_secret>` of a session made through
    /// `POST /v1/chatkit/sessions`) or `header` (trust `CHATKIT_USER_HEADER`,
    /// set by an authenticating proxy). Default: `header` on a loopback bind,
    /// else `session`.
    #[arg(long, env = "CHATKIT_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// Request header that names the user with `CHATKIT_AUTH=header`; requests
    /// without it get 401. Deploy behind a proxy that sets it.
    #[arg(long, env = "CHATKIT_USER_HEADER", default_value = "x-user-id")]
    pub user_header: String,

    /// Keys that open the `/v1` API (`Authorization: Bearer <key>`),
    /// comma-separated. Without keys the `/v1` API is open on a loopback bind
    /// and refused (403) on any other.
    #[arg(long, env = "CHATKIT_ADMIN_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub admin_keys: Vec<Secret>,

    /// Seconds between passes of the background sweeper that deletes expired
    /// sessions from the store (every replica runs one); 0 turns it off.
    #[arg(long, env = "CHATKIT_SESSION_SWEEP_SECS", default_value_t = 60)]
    pub session_sweep_secs: u64,

    /// Expired sessions one sweeper pass deletes at most; a full batch is
    /// followed by another pass a second later.
    #[arg(long, env = "CHATKIT_SESSION_SWEEP_BATCH", default_value_t = 500)]
    pub session_sweep_batch: usize,

    /// Seconds an expired session is kept before the sweeper deletes it, so
    /// that its secret is still answered `session_expired` meanwhile (then
    /// `invalid_client_secret`).
    #[arg(long, env = "CHATKIT_SESSION_KEEP_EXPIRED_SECS", default_value_t = 3600)]
    pub session_keep_expired_secs: u64,

    /// Sessions each replica keeps in its cache of authenticated client
    /// secrets (no store read per request); 0 turns the cache off.
    #[arg(long, env = "CHATKIT_SESSION_CACHE", default_value_t = 10_000)]
    pub session_cache: usize,

    /// Seconds a cached session is used before the store is read again: the
    /// longest a cancel stays unseen on another replica when the cancelling
    /// replica could not reach Redis (otherwise a cancel reaches every cache
    /// at once through the session-ended notice).
    #[arg(long, env = "CHATKIT_SESSION_CACHE_SECS", default_value_t = 30)]
    pub session_cache_secs: u64,
}

impl AccessConfig {
    /// The settings of the expired-session sweeper; `None` when it is off.
    pub fn sweep(&self) -> Option<SweepSettings> {
        (self.session_sweep_secs > 0).then(|| SweepSettings {
            every: Duration::from_secs(self.session_sweep_secs),
            batch: self.session_sweep_batch.max(1),
            keep_expired: Duration::from_secs(self.session_keep_expired_secs),
        })
    }

    /// The settings of the session cache.
    pub fn session_cache(&self) -> CacheSettings {
        CacheSettings { capacity: self.session_cache, max_age: Duration::from_secs(self.session_cache_secs) }
    }
}

/// The thread actors.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Thread actors")]
pub struct ThreadConfig {
    /// Messages that may wait behind a thread's running turn; more get a busy error.
    #[arg(long, env = "CHATKIT_THREAD_QUEUE_BOUND", default_value_t = 16)]
    pub thread_queue_bound: usize,

    /// Seconds a thread's actor lives without work before it stops.
    #[arg(long, env = "CHATKIT_THREAD_IDLE_SECS", default_value_t = 300)]
    pub thread_idle_secs: u64,
}

/// Fan-out to viewers and coordination between replicas.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Fan-out and replicas")]
pub struct FanoutConfig {
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
}

/// The model responder (or the built-in echo responder).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelConfig {
    /// The model that answers: `echo` (built in, no network) or a model of the
    /// OpenAI-compatible server at `OPENAI_BASE_URL`. Default: `gpt-4.1-mini`
    /// when `OPENAI_API_KEY` is set, else `echo`.
    #[arg(long = "model", env = "CHATKIT_MODEL")]
    pub name: Option<String>,

    /// Models a user message may pick with `inference_options.model`, comma-separated
    /// (the default model is always allowed).
    #[arg(long, env = "CHATKIT_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Key for the model service; never logged.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<Secret>,

    /// The OpenAI-compatible API root, e.g. `http://127.0.0.1:11434/v1` for Ollama.
    #[arg(long, env = "OPENAI_BASE_URL", default_value = "https://api.openai.com/v1")]
    pub openai_base_url: String,

    /// The system prompt of every model call.
    #[arg(long, env = "CHATKIT_SYSTEM_PROMPT", default_value = "You are a helpful assistant.")]
    pub system_prompt: String,

    /// How many of a thread's newest items the model sees.
    #[arg(long, env = "CHATKIT_HISTORY_ITEMS", default_value_t = 40)]
    pub history_items: usize,

    /// Generate a 3 to 6 word title after a thread's first turn (`true` or `false`).
    #[arg(long, env = "CHATKIT_TITLES", default_value_t = true, action = clap::ArgAction::Set)]
    pub titles: bool,

    /// The model that writes titles; defaults to the default model.
    #[arg(long, env = "CHATKIT_TITLE_MODEL")]
    pub title_model: Option<String>,

    /// Client tools offered to the model: a JSON array of `{"name", "description",
    /// "parameters"}`, or `@path` to a file holding one.
    #[arg(long, env = "CHATKIT_CLIENT_TOOLS")]
    pub client_tools: Option<String>,

    /// Seconds to wait for the model: for its answer to start, and between two chunks.
    #[arg(long, env = "CHATKIT_MODEL_TIMEOUT_SECS", default_value_t = 60)]
    pub model_timeout_secs: u64,

    /// Retries of a connection failure before the model's first token.
    #[arg(long, env = "CHATKIT_MODEL_RETRIES", default_value_t = 2)]
    pub model_retries: u32,

    /// The model that transcribes dictation (`input.transcribe`).
    #[arg(long, env = "CHATKIT_TRANSCRIBE_MODEL", default_value = "gpt-4o-mini-transcribe")]
    pub transcribe_model: String,

    /// The API turns go through: `responses` (OpenAI's Responses API: hosted tools, reasoning
    /// summaries, generated images) or `chat` (Chat Completions, which OpenAI-compatible servers
    /// speak). Default: `responses` when `OPENAI_BASE_URL` is OpenAI's, else `chat`.
    #[arg(long, env = "CHATKIT_MODEL_API")]
    pub model_api: Option<String>,

    /// Hosted tools (Responses API): a JSON array of tool objects as the Responses API takes
    /// them (`web_search`, `file_search` with `vector_store_ids`, `code_interpreter`,
    /// `image_generation`), or `@path` to a file holding one.
    #[arg(long, env = "CHATKIT_HOSTED_TOOLS")]
    pub hosted_tools: Option<String>,

    /// Reasoning summaries asked of reasoning models (Responses API): `auto`, `concise` or
    /// `detailed`; unset asks for none (other models refuse the parameter).
    #[arg(long, env = "CHATKIT_REASONING_SUMMARY")]
    pub reasoning_summary: Option<String>,

    /// MCP servers whose tools the model may call (streamable HTTP): a JSON array of `{"name", "url",
    /// "headers", "tools"}`, or `@path` to a file holding one. Header values are secrets, never logged.
    #[arg(long, env = "CHATKIT_MCP_SERVERS", hide_env_values = true)]
    // Held as a secret, because the headers in it are: `Debug` of the config never shows it.
    pub mcp_servers: Option<Secret>,

    /// Seconds one MCP tool call may take; past it the model is told the call timed out.
    #[arg(long, env = "CHATKIT_MCP_TOOL_TIMEOUT_SECS", default_value_t = 30)]
    pub mcp_tool_timeout_secs: u64,

    /// Rounds of MCP tool calls one turn may run; then the model must answer without tools.
    #[arg(long, env = "CHATKIT_MCP_MAX_TOOL_ROUNDS", default_value_t = 8)]
    pub mcp_max_tool_rounds: u32,
}

/// Browser pages on other origins, and serving under a path prefix.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Web")]
pub struct WebConfig {
    /// Origins whose pages may call `POST /chatkit`, the viewer streams and the
    /// attachment routes (CORS), comma-separated exact origins
    /// (`https://app.example.com,http://localhost:3000`). Unset: none; the
    /// page, the probes and the `/v1` API are never opened.
    #[arg(long, env = "CHATKIT_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Path prefix every route is served under, behind a proxy that forwards it
    /// (e.g. `/chat`: `/chat/chatkit`, `/chat/` the page). `/healthz`,
    /// `/readyz` and `/metrics` answer at the root as well.
    #[arg(long, env = "CHATKIT_BASE_PATH", default_value = "")]
    pub base_path: String,
}

/// An agent backend: the integrator's own service answers every operation over HTTP.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "Agent backend")]
pub struct AgentConfig {
    /// URL of an agent backend (see "Your own agent behind the gateway" in README);
    /// when set, it answers every operation instead of the model or echo responder.
    #[arg(long, env = "CHATKIT_AGENT_URL")]
    pub agent_url: Option<String>,

    /// The Standard Webhooks secret (`whsec_<base64>`) that signs every request to
    /// the agent; required with `CHATKIT_AGENT_URL`, never logged.
    #[arg(long, env = "CHATKIT_AGENT_SECRET", hide_env_values = true)]
    pub agent_secret: Option<Secret>,

    /// How many of a thread's newest items each agent request carries, oldest first.
    #[arg(long, env = "CHATKIT_AGENT_HISTORY_ITEMS", default_value_t = 20)]
    pub agent_history_items: usize,

    /// Seconds to wait for the agent: for its first event, and between two events.
    #[arg(long, env = "CHATKIT_AGENT_TIMEOUT_SECS", default_value_t = 30)]
    pub agent_timeout_secs: u64,

    /// A TOML file mapping sessions' `workflow.id` to the agent, model or echo
    /// responder that answers them (see "Workflows pick responders" in README);
    /// reloaded on SIGHUP.
    #[arg(long, env = "CHATKIT_WORKFLOWS")]
    pub workflows: Option<PathBuf>,
}

impl Config {
    /// Every setting at its default, without reading the environment: what an
    /// embedding program starts from.
    pub fn defaults() -> Self {
        let command = Config::command().mut_args(|arg| arg.env(None::<&'static str>));
        let matches = command.try_get_matches_from(["chatkit-gateway"]).expect("every default parses");
        Config::from_arg_matches(&matches).expect("the defaults parse")
    }

    /// The settings a test starts from: the defaults, on loopback port 0 with an
    /// in-memory store, two workers, a short shutdown grace and quiet logs.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        let mut config = Config::defaults();
        config.server.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.workers = Some(2);
        config.server.shutdown_grace_secs = 5;
        config.server.log = "warn".into();
        config.storage.database_url = "memory://".into();
        config.storage.data_dir = data_dir;
        config.storage.pg_pool = 4;
        config
    }
}

impl ServerConfig {
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs.max(1))
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

impl ThreadConfig {
    pub fn settings(&self) -> ThreadSettings {
        ThreadSettings {
            queue_bound: self.thread_queue_bound.max(1),
            idle_timeout: Duration::from_secs(self.thread_idle_secs.max(1)),
        }
    }
}

impl FanoutConfig {
    pub fn settings(&self) -> FanoutSettings {
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
}

impl WebConfig {
    /// The allowed origins, checked and written as browsers send them; empty entries are skipped.
    pub fn origins(&self) -> Result<Vec<String>, String> {
        let mut origins: Vec<String> = Vec::new();
        for entry in self.allowed_origins.iter().filter(|entry| !entry.trim().is_empty()) {
            let origin = crate::http::parse_origin(entry)?;
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        Ok(origins)
    }

    /// The base path, `""` for the root.
    pub fn base(&self) -> Result<String, String> {
        crate::http::parse_base_path(&self.base_path)
    }
}

impl ModelConfig {
    /// The model responder's settings, or `None` for the built-in echo responder.
    pub fn settings(&self) -> Result<Option<ModelSettings>, String> {
        let model = match (self.name.as_deref().map(str::trim), &self.openai_api_key) {
            (Some("echo"), _) | (None, None) => return Ok(None),
            (Some(""), _) => return Err("CHATKIT_MODEL is empty".into()),
            (Some(model), _) => model.to_string(),
            (None, Some(_)) => DEFAULT_MODEL.to_string(),
        };
        let on_openai = self.openai_base_url.contains("api.openai.com");
        if self.openai_api_key.is_none() && on_openai {
            return Err(format!(
                "CHATKIT_MODEL is `{model}` but OPENAI_API_KEY is not set; set it, or point OPENAI_BASE_URL at a server that needs no key"
            ));
        }
        let mut allowed = vec![model.clone()];
        for extra in self.models.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
            if !allowed.iter().any(|m| m == extra) {
                allowed.push(extra.to_string());
            }
        }
        let client_tools = match &self.client_tools {
            Some(spec) if !spec.trim().is_empty() => ModelSettings::parse_client_tools(spec)?,
            _ => Vec::new(),
        };
        let api = match self.model_api.as_deref().map(str::trim).filter(|api| !api.is_empty()) {
            Some(api) => ModelApi::parse(api)?,
            None if on_openai => ModelApi::Responses,
            None => ModelApi::Chat,
        };
        let hosted_tools = match &self.hosted_tools {
            Some(spec) if !spec.trim().is_empty() => parse_hosted_tools(spec)?,
            _ => Vec::new(),
        };
        if !hosted_tools.is_empty() && api == ModelApi::Chat {
            return Err("CHATKIT_HOSTED_TOOLS needs the Responses API; CHATKIT_MODEL_API is `chat`".into());
        }
        let reasoning_summary = match self.reasoning_summary.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(level) if REASONING_SUMMARIES.contains(&level) => Some(level.to_string()),
            Some(other) => {
                return Err(format!(
                    "CHATKIT_REASONING_SUMMARY must be one of {}; got `{other}`",
                    REASONING_SUMMARIES.join(", ")
                ))
            }
        };
        Ok(Some(ModelSettings {
            api,
            hosted_tools,
            reasoning_summary,
            api_key: self.openai_api_key.clone(),
            base_url: self.openai_base_url.clone(),
            title_model: self.title_model.clone().unwrap_or_else(|| model.clone()),
            default_model: model,
            allowed_models: allowed,
            system_prompt: self.system_prompt.clone(),
            history_items: self.history_items.max(1),
            titles: self.titles,
            client_tools,
            timeout: Duration::from_secs(self.model_timeout_secs.max(1)),
            retries: self.model_retries,
            retry_backoff: Duration::from_millis(200),
            transcribe_model: self.transcribe_model.clone(),
        }))
    }
}

impl ModelConfig {
    /// The MCP servers and the tool loop's limits, or `None` when no server is configured.
    pub fn mcp_settings(&self) -> Result<Option<McpSettings>, String> {
        let servers = match &self.mcp_servers {
            Some(spec) => McpSettings::parse_servers(spec.expose()).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        if servers.is_empty() {
            return Ok(None);
        }
        if self.mcp_max_tool_rounds == 0 {
            return Err("CHATKIT_MCP_MAX_TOOL_ROUNDS must be at least 1".into());
        }
        let settings = McpSettings {
            servers,
            tool_timeout: Duration::from_secs(self.mcp_tool_timeout_secs.max(1)),
            max_tool_rounds: self.mcp_max_tool_rounds,
            reconnect_backoff: Duration::from_secs(1),
        };
        if let Some(spec) = self.client_tools.as_deref().filter(|spec| !spec.trim().is_empty()) {
            let tools = ModelSettings::parse_client_tools(spec)?;
            settings.check_client_tools(tools.iter().map(|tool| tool.name.as_str())).map_err(|e| e.to_string())?;
        }
        Ok(Some(settings))
    }
}

impl AgentConfig {
    /// The agent backend's settings, or `None` when no agent URL is set.
    pub fn settings(&self) -> Result<Option<AgentSettings>, String> {
        let Some(url) = self.agent_url.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("CHATKIT_AGENT_URL must be an http:// or https:// URL; got `{url}`"));
        }
        let Some(secret) = &self.agent_secret else {
            return Err("CHATKIT_AGENT_URL is set but CHATKIT_AGENT_SECRET is not: every request to the agent is signed with it (a `whsec_<base64>` secret)".into());
        };
        let timeout = Duration::from_secs(self.agent_timeout_secs.max(1));
        AgentSettings::new(url.to_string(), secret, self.agent_history_items.max(1), timeout).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_nothing() {
        let config = Config::try_parse_from(["chatkit-gateway"]).unwrap();
        assert_eq!(config.server.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.storage.database_url, "sqlite://data/chatkit.db");
        assert_eq!(config.access.user_header, "x-user-id");
    }

    #[test]
    fn mcp_servers_are_parsed_and_their_headers_never_print() {
        let servers =
            r#"[{"name": "math", "url": "http://127.0.0.1:9/mcp", "headers": {"Authorization": "Bearer hdr-s3cr3t"}}]"#;
        let config = Config::try_parse_from(["chatkit-gateway", "--mcp-servers", servers]).unwrap();
        assert!(!format!("{config:?}").contains("hdr-s3cr3t"));
        let settings = config.model.mcp_settings().unwrap().unwrap();
        assert!(!format!("{settings:?}").contains("hdr-s3cr3t"));
        assert_eq!((settings.servers[0].name.as_str(), settings.max_tool_rounds), ("math", 8));
        assert!(Config::try_parse_from(["chatkit-gateway"]).unwrap().model.mcp_settings().unwrap().is_none());
        let rounds = ["chatkit-gateway", "--mcp-servers", servers, "--mcp-max-tool-rounds", "0"];
        let error = Config::try_parse_from(rounds).unwrap().model.mcp_settings().unwrap_err();
        assert!(error.contains("CHATKIT_MCP_MAX_TOOL_ROUNDS"), "{error}");
        let clash = ["chatkit-gateway", "--mcp-servers", servers, "--client-tools", r#"[{"name": "math__add"}]"#];
        let error = Config::try_parse_from(clash).unwrap().model.mcp_settings().unwrap_err();
        assert!(error.contains("math__add"), "{error}");
    }

    #[test]
    fn admin_keys_never_print() {
        let config = Config::try_parse_from(["chatkit-gateway", "--admin-keys", "k1,k2"]).unwrap();
        assert_eq!(config.access.admin_keys.len(), 2);
        assert!(config.access.admin_keys[1].matches("k2") && !config.access.admin_keys[1].matches("k1"));
        let printed = format!("{config:?}");
        assert!(!printed.contains("k1") && printed.contains("***"), "{printed}");
    }

    #[test]
    fn the_model_responder_is_chosen_by_model_and_key() {
        let parse = |args: &[&str]| {
            let mut all = vec!["chatkit-gateway"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().model.settings()
        };
        assert!(parse(&[]).unwrap().is_none(), "no key, no model: echo");
        assert!(parse(&["--model", "echo", "--openai-api-key", "k"]).unwrap().is_none());
        let with_key = parse(&["--openai-api-key", "sk-1"]).unwrap().unwrap();
        assert_eq!((with_key.default_model.as_str(), with_key.allowed_models.len()), (DEFAULT_MODEL, 1));
        let error = parse(&["--model", "gpt-x"]).unwrap_err();
        assert!(error.contains("OPENAI_API_KEY"), "{error}");
        let local =
            parse(&["--model", "llama3", "--openai-base-url", "http://127.0.0.1:11434/v1", "--models", "a,llama3,b"]);
        let local = local.unwrap().unwrap();
        assert_eq!(local.allowed_models, ["llama3", "a", "b"]);
        assert_eq!((with_key.api, local.api), (ModelApi::Responses, ModelApi::Chat), "the API follows the base URL");
        let local_responses = parse(&["--model", "m", "--openai-base-url", "http://h/v1", "--model-api", "responses"]);
        assert_eq!(local_responses.unwrap().unwrap().api, ModelApi::Responses);
        let error =
            parse(&["--openai-api-key", "k", "--model-api", "chat", "--hosted-tools", r#"[{"type": "web_search"}]"#])
                .unwrap_err();
        assert!(error.contains("CHATKIT_HOSTED_TOOLS") && error.contains("chat"), "{error}");
        let error = parse(&["--openai-api-key", "k", "--hosted-tools", r#"[{"type": "mind_reading"}]"#]).unwrap_err();
        assert!(error.contains("`mind_reading`"), "{error}");
        let error = parse(&["--openai-api-key", "k", "--reasoning-summary", "long"]).unwrap_err();
        assert!(error.contains("CHATKIT_REASONING_SUMMARY"), "{error}");
        assert_eq!(local.title_model, "llama3");
        assert!(parse(&["--model", "m", "--openai-api-key", "k", "--client-tools", "[{\"name\": \"x y\"}]"]).is_err());
        let printed = format!("{:?}", Config::try_parse_from(["c", "--openai-api-key", "sk-secret"]).unwrap());
        assert!(!printed.contains("sk-secret"), "{printed}");
    }

    #[test]
    fn the_agent_backend_needs_a_url_and_a_signing_secret() {
        let parse = |args: &[&str]| {
            let mut all = vec!["chatkit-gateway"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().agent.settings()
        };
        assert!(parse(&[]).unwrap().is_none());
        let error = parse(&["--agent-url", "http://127.0.0.1:9/agent"]).unwrap_err();
        assert!(error.contains("CHATKIT_AGENT_SECRET"), "{error}");
        let error = parse(&["--agent-url", "http://a/", "--agent-secret", "nope"]).unwrap_err();
        assert!(error.contains("whsec_"), "{error}");
        let error = parse(&["--agent-url", "ftp://a/", "--agent-secret", "whsec_MDEy"]).unwrap_err();
        assert!(error.contains("http://"), "{error}");
        let ok = parse(&["--agent-url", "http://a/", "--agent-secret", "whsec_MDEy"]).unwrap().unwrap();
        assert_eq!((ok.history_items, ok.timeout), (20, Duration::from_secs(30)));
        let printed = format!("{ok:?} {:?}", Config::try_parse_from(["c", "--agent-secret", "whsec_MDEy"]).unwrap());
        assert!(!printed.contains("MDEy"), "{printed}");
    }

    #[test]
    fn flags_are_parsed() {
        let config =
            Config::try_parse_from(["chatkit-gateway", "--bind", "0.0.0.0:9000", "--max-body-bytes", "10"]).unwrap();
        assert_eq!(config.server.bind.port(), 9000);
        assert_eq!(config.server.max_body_bytes, 10);
        assert!(Config::try_parse_from(["chatkit-gateway", "--bind", "nowhere"]).is_err());
    }

    #[test]
    fn traces_are_exported_only_to_an_endpoint_and_the_sampler_is_checked() {
        let parsed = |args: &[&str]| Config::try_parse_from([&["c"], args].concat()).map(|c| c.tracing.settings());
        assert_eq!(Config::defaults().tracing.settings().endpoint, None, "off by default");
        let base = parsed(&["--otel-endpoint", "http://collector:4318/"]).unwrap();
        assert_eq!(base.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!((base.service_name.as_str(), base.sampler), ("chatkit-gateway", SamplerKind::ParentBasedAlwaysOn));
        let full = parsed(&["--otel-endpoint", "http://a:4318", "--otel-traces-endpoint", "http://b/traces"]).unwrap();
        assert_eq!(full.endpoint.as_deref(), Some("http://b/traces"), "the traces endpoint wins, as it is");
        let disabled = parsed(&["--otel-endpoint", "http://a:4318", "--otel-sdk-disabled"]).unwrap();
        assert_eq!(disabled.endpoint, None);
        let ratio = parsed(&["--otel-sampler", "parentbased_traceidratio", "--otel-sampler-arg", "0.25"]).unwrap();
        assert_eq!((ratio.sampler, ratio.ratio), (SamplerKind::ParentBasedTraceIdRatio, 0.25));
        let error = parsed(&["--otel-sampler-arg", "1.5"]).unwrap_err().to_string();
        assert!(error.contains("1.5") && error.contains("from 0 to 1"), "{error}");
        let error = parsed(&["--otel-sampler", "sometimes"]).unwrap_err().to_string();
        assert!(error.contains("sometimes") && error.contains("parentbased_traceidratio"), "{error}");
        let error = parsed(&["--otel-protocol", "grpc"]).unwrap_err().to_string();
        assert!(error.contains("grpc") && error.contains("http/protobuf"), "{error}");
    }

    #[test]
    fn log_formats_are_text_or_json() {
        assert_eq!(Config::defaults().server.log_format, LogFormat::Text);
        let json = Config::try_parse_from(["chatkit-gateway", "--log-format", "json"]).unwrap();
        assert_eq!(json.server.log_format, LogFormat::Json);
        let error = Config::try_parse_from(["chatkit-gateway", "--log-format", "xml"]).unwrap_err().to_string();
        assert!(error.contains("xml") && error.contains("text") && error.contains("json"), "{error}");
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        let defaults = Config::defaults();
        assert_eq!(defaults.server.keep_alive_secs, 75);
        assert_eq!(defaults.threads.thread_queue_bound, 16);
        assert_eq!(defaults.fanout.redis_ping_ms, 5000);
        assert_eq!(defaults.model.transcribe_model, "gpt-4o-mini-transcribe");
        let for_tests = Config::for_tests("d".into());
        assert_eq!((for_tests.server.bind.port(), for_tests.storage.database_url.as_str()), (0, "memory://"));
        assert_eq!(for_tests.fanout.viewer_buffer, defaults.fanout.viewer_buffer);
        assert_eq!((defaults.web.base().unwrap().as_str(), defaults.web.origins().unwrap().len()), ("", 0));
    }

    #[test]
    fn web_settings_are_checked() {
        let web = |args: &[&str]| {
            let mut all = vec!["chatkit-gateway"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().web
        };
        let config = web(&["--allowed-origins", "https://A.example,,http://localhost:3000,https://a.example:443"]);
        assert_eq!(config.origins().unwrap(), ["https://a.example", "http://localhost:3000"]);
        let error = web(&["--allowed-origins", "https://a.example/app"]).origins().unwrap_err();
        assert!(error.contains("https://a.example/app"), "{error}");
        assert_eq!(web(&["--base-path", "chat/"]).base().unwrap(), "/chat");
        assert!(web(&["--base-path", "/a b"]).base().is_err());
    }
}
