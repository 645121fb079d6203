//! The application: wires config, store, responder and HTTP server together.
//!
//! `main` and the tests build the same `App`; tests bind port 0.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpServer};

use crate::blobs;
use crate::config::Config;
use crate::engine::{Engine, EngineSettings};
use crate::fanout::{self, FanoutError};
use crate::http::AuthMode;
use crate::http::{self, AdminAccess, ApiError};
use crate::responder::{
    AgentResponder, EchoResponder, McpRegistry, OpenAiResponder, Responder, WorkflowDefaults, WorkflowRouter,
};
use crate::sessions::Sessions;
use crate::store::{self, Instrumented, Store, StoreError};
use crate::thread::ThreadRegistry;

/// Seconds connections get to finish once the turns are drained.
const CONNECTION_DRAIN_SECS: u64 = 5;
/// How long cancelled turns get to save their partial output at shutdown.
const CANCEL_SAVE: Duration = Duration::from_secs(5);

/// Lets running turns finish within `grace`, then cancels the rest with the
/// cancellation semantics (partial output kept) and waits for them to save it.
async fn drain_turns(threads: &ThreadRegistry, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let poll = Duration::from_millis(50);
    while threads.running_turns() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(poll).await;
    }
    let left = threads.running_turns();
    if left == 0 {
        return;
    }
    tracing::warn!(turns = left, "grace period over: cancelling running turns, keeping their partial output");
    threads.cancel_all();
    let saved_by = tokio::time::Instant::now() + CANCEL_SAVE;
    while threads.running_turns() > 0 && tokio::time::Instant::now() < saved_by {
        tokio::time::sleep(poll).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot start fan-out: {0}")]
    Fanout(#[from] FanoutError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
}

pub struct App {
    server: actix_web::dev::Server,
    /// Tells viewer streams the replica is stopping, so they close with a
    /// reconnect hint instead of holding the shutdown for the grace period.
    closing: tokio::sync::watch::Sender<bool>,
    /// How long running turns get to finish at shutdown before they are cancelled.
    grace: std::time::Duration,
    addr: SocketAddr,
    engine: Arc<Engine>,
    threads: ThreadRegistry,
    /// How long uploads no message holds are kept, and how often the sweeper
    /// that expires them runs (while the app serves).
    sweep: (Duration, Duration),
}

/// Expires uploads no message holds, one bounded pass every `every`, until the
/// app stops. A failed pass is logged and the next one tries again.
async fn sweep_uploads(engine: Arc<Engine>, ttl: Duration, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match engine.sweep_uploads(ttl).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "expired uploads no message holds"),
            Err(err) => tracing::warn!(error = %err, "expiring uploads failed; trying again at the next pass"),
        }
    }
}

impl App {
    /// Opens the store, binds the listener and prepares the server. Must run
    /// inside an actix system (`#[actix_web::main]` or `System::new()`).
    pub async fn build(config: Config) -> Result<App, AppError> {
        let user_header = HeaderName::try_from(config.access.user_header.as_str())
            .map_err(|_| AppError::Config(format!("`{}` is not a valid header name", config.access.user_header)))?;
        std::fs::create_dir_all(&config.storage.data_dir)?;
        let store: Arc<dyn Store> = store::open_with_pool(&config.storage.database_url, config.storage.pg_pool).await?;
        let model = config.model.settings().map_err(AppError::Config)?;
        let agent = config.agent.settings().map_err(AppError::Config)?;
        // MCP servers serve model responders only; a server that is down is retried in the background.
        let mcp = match config.model.mcp_settings().map_err(AppError::Config)? {
            Some(settings) if model.is_some() => {
                tracing::info!(servers = ?settings.servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), "MCP servers");
                Some(McpRegistry::start(settings).await)
            }
            Some(_) => {
                tracing::warn!("CHATKIT_MCP_SERVERS is set but no model is configured (CHATKIT_MODEL or OPENAI_API_KEY); the MCP servers are not used");
                None
            }
            None => None,
        };
        let responder: Arc<dyn Responder> = match (model.clone(), agent) {
            (Some(_), Some(_)) => {
                return Err(AppError::Config(
                    "both a model (CHATKIT_MODEL or OPENAI_API_KEY) and an agent backend (CHATKIT_AGENT_URL) are set; set only one".into(),
                ))
            }
            (None, None) => Arc::new(EchoResponder::new()),
            (Some(settings), None) => {
                tracing::info!(model = %settings.default_model, base_url = %settings.base_url, "model responder");
                let tools = mcp.as_ref().map(|registry| registry.view(None)).transpose().map_err(|e| AppError::Config(e.to_string()))?;
                Arc::new(OpenAiResponder::with_mcp(settings, tools).map_err(AppError::Config)?)
            }
            (None, Some(settings)) => {
                tracing::info!(url = %settings.url, "agent backend responder");
                Arc::new(AgentResponder::new(settings).map_err(AppError::Config)?)
            }
        };
        let responder = match &config.agent.workflows {
            None => responder,
            Some(path) => {
                let defaults = WorkflowDefaults {
                    responder,
                    model,
                    mcp,
                    agent_history_items: config.agent.agent_history_items.max(1),
                    agent_timeout: Duration::from_secs(config.agent.agent_timeout_secs.max(1)),
                };
                let router = Arc::new(WorkflowRouter::load(path.clone(), defaults).map_err(AppError::Config)?);
                tracing::info!(path = %path.display(), "workflows file: responders picked by workflow; SIGHUP reloads it");
                let reloading = router.clone();
                // The error of a bad file is logged by `reload`, which keeps the previous routes.
                actix_web::rt::spawn(crate::shutdown::on_hangup(move || {
                    let _ = reloading.reload();
                }));
                router
            }
        };
        Self::build_with(config, user_header, store, responder)
    }

    /// Builds the app around a given store and responder, for embedding and tests.
    pub fn build_with(
        config: Config,
        user_header: HeaderName,
        store: Arc<dyn Store>,
        responder: Arc<dyn Responder>,
    ) -> Result<App, AppError> {
        let base_path = config.web.base().map_err(AppError::Config)?;
        let cors = web::Data::new(http::Cors::new(
            config.web.origins().map_err(AppError::Config)?,
            &user_header,
            base_path.clone(),
        ));
        let listener = TcpListener::bind(config.server.bind)?;
        let addr = listener.local_addr()?;
        // An explicit public URL is the full external root; the default one
        // is this listener, under the base path.
        let public_url = config.server.public_url.clone().unwrap_or_else(|| format!("http://{addr}{base_path}"));
        let store_backend = store.backend();
        let store = Instrumented::wrap(store);
        let blob_location = config.storage.blob_location(store_backend).map_err(AppError::Config)?;
        let blobs = blobs::open(&blob_location, store.clone(), &config.storage.s3_options())
            .map_err(|err| AppError::Config(err.to_string()))?;
        let blob_backend = blobs.backend();
        let responder_name = responder.name();
        let fanout = fanout::open(config.fanout.redis_url.as_ref().map(|url| url.expose()), config.fanout.settings())?;
        let fanout_name = fanout.bus.name();
        let sessions = Arc::new(
            Sessions::new(store.clone(), fanout.coordination.clone()).with_cache(config.access.session_cache()),
        );
        if let Some(sweep) = config.access.sweep() {
            sessions.start_sweeper(sweep);
        }
        let engine = Arc::new(Engine::new(
            store,
            responder,
            fanout.bus,
            sessions.clone(),
            blobs,
            EngineSettings { public_url, max_upload_bytes: config.storage.max_upload_bytes },
        ));
        let threads = ThreadRegistry::new(engine.clone(), fanout.coordination, config.threads.settings());
        let admin = if !config.access.admin_keys.is_empty() {
            AdminAccess::Keys(config.access.admin_keys.clone())
        } else if addr.ip().is_loopback() {
            tracing::warn!("the /v1 API is open: no CHATKIT_ADMIN_KEYS and a loopback bind");
            AdminAccess::Open
        } else {
            tracing::warn!("the /v1 API is disabled (403): set CHATKIT_ADMIN_KEYS to enable it");
            AdminAccess::Disabled
        };
        let closing = tokio::sync::watch::channel(false).0;
        let auth =
            config.access.auth.unwrap_or(if addr.ip().is_loopback() { AuthMode::Header } else { AuthMode::Session });
        if auth == AuthMode::Header && !addr.ip().is_loopback() {
            tracing::warn!(
                "CHATKIT_AUTH=header on a non-loopback bind: deploy only behind a proxy that sets the user header"
            );
        }
        let state = web::Data::new(http::State {
            engine: engine.clone(),
            threads: threads.clone(),
            admin,
            user_header,
            max_body_bytes: config.server.max_body_bytes,
            max_upload_bytes: usize::try_from(config.storage.max_upload_bytes).unwrap_or(usize::MAX),
            heartbeats: http::heartbeat_ticks(config.fanout.heartbeat()),
            closing: closing.subscribe(),
            auth,
            sessions,
        });
        let routes = http::routes(&base_path);
        let mut server =
            HttpServer::new(move || {
                actix_web::App::new()
                    .wrap(actix_web::middleware::from_fn(http::cors_middleware))
                    // Wrapped last, so outermost: CORS refusals and every other answer carry the request id too.
                    .wrap(actix_web::middleware::from_fn(http::request_id_middleware))
                    .app_data(state.clone())
                    .app_data(cors.clone())
                    .app_data(web::QueryConfig::default().error_handler(|error, _| {
                        ApiError::bad_request(format!("invalid query string: {error}")).into()
                    }))
                    .configure(routes.clone())
            })
            // Turn streams are many small writes; without this, Nagle's
            // algorithm and the client's delayed ACKs add ~40 ms to every turn.
            .tcp_nodelay(true)
            .disable_signals()
            // A client that closes its connection mid-stream must cancel the
            // turn. With half-closed connections allowed (actix's default) the
            // server takes that EOF for a half-close and keeps a silent stream
            // open forever, so the turn never learns the client has gone.
            .h1_allow_half_closed(false)
            // Turns are drained before the server stops (see `run_until`); what
            // is left then is short-lived requests.
            .shutdown_timeout(CONNECTION_DRAIN_SECS)
            // Idle keep-alive connections outlive the load balancer's own idle
            // timeout, so the balancer never reuses one the gateway is closing.
            .keep_alive(config.server.keep_alive());
        if let Some(workers) = config.server.workers {
            server = server.workers(workers.max(1));
        }
        let server = server.listen(listener)?.run();
        let sweep = (config.storage.upload_ttl(), config.storage.upload_sweep());
        tracing::info!(
            %addr,
            store = store_backend,
            blobs = blob_backend,
            responder = responder_name,
            fanout = fanout_name,
            "listening"
        );
        Ok(App { server, closing, grace: config.server.shutdown_grace(), addr, engine, threads, sweep })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn threads(&self) -> &ThreadRegistry {
        &self.threads
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets running
    /// requests finish within the configured grace period.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        let (ttl, every) = self.sweep;
        let _sweeper = AbortOnDrop(actix_web::rt::spawn(sweep_uploads(self.engine.clone(), ttl, every)));
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result,
            _ = shutdown => {
                tracing::info!(grace = ?self.grace, "stopping: no new connections; letting running turns finish");
                // Not ready from now on, and viewer streams (which never end on
                // their own) close with a hint to reconnect elsewhere.
                self.closing.send_replace(true);
                let drain = async {
                    handle.pause().await;
                    drain_turns(&self.threads, self.grace).await;
                    handle.stop(true).await;
                };
                // The server future itself carries out pause and stop, so it
                // must be polled while they are awaited.
                let ((), result) = tokio::join!(drain, &mut server);
                result
            }
        }
    }
}

/// Stops a background task when the app stops serving.
struct AbortOnDrop(actix_web::rt::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
