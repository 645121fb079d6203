//! The HTTP surface: routes, identity, body limits and response framing.
//!
//! Handlers parse, call the engine and frame its answers; they hold no protocol
//! logic. `error` is the only place that maps errors to status codes.

mod attachments;
mod chatkit;
mod cors;
mod error;
mod page;
mod request_id;
mod v1;
mod viewers;

use std::sync::Arc;

use actix_web::error::PayloadError;
use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use crate::engine::Engine;
use crate::fanout::Health;
use crate::ids::UserId;
use crate::sessions::{ActiveSession, AuthError, Sessions};
use crate::telemetry::metrics::METRICS;
use crate::thread::ThreadRegistry;

pub use cors::{middleware as cors_middleware, parse_base_path, parse_origin, Cors};
pub use error::ApiError;
pub use request_id::{middleware as request_id_middleware, RequestId, REQUEST_ID};
pub use v1::AdminAccess;
pub use viewers::heartbeat_ticks;

/// The longest user id accepted, in bytes.
const MAX_USER_ID_BYTES: usize = 256;

/// What handlers share.
pub struct State {
    pub engine: Arc<Engine>,
    pub threads: ThreadRegistry,
    pub admin: AdminAccess,
    pub user_header: HeaderName,
    pub max_body_bytes: usize,
    pub max_upload_bytes: usize,
    /// The replica's heartbeat clock: each tick sends a heartbeat comment on every viewer stream
    /// (`viewers::heartbeat_ticks`).
    pub heartbeats: tokio::sync::watch::Receiver<u64>,
    /// Turns true when the replica stops; viewer streams then close.
    pub closing: tokio::sync::watch::Receiver<bool>,
    pub auth: AuthMode,
    pub sessions: Arc<Sessions>,
}

/// Registers every route on an actix `App`, under `base_path` (`""` for the
/// root, else as [`parse_base_path`] writes it). Under a prefix the probes and
/// `/metrics` answer at the root as well, where orchestrators and scrapers
/// look for them without knowing the prefix.
pub fn routes(base_path: &str) -> impl Fn(&mut web::ServiceConfig) + Clone + 'static {
    let base_path = base_path.to_string();
    move |config| {
        if base_path.is_empty() {
            gateway_routes(config);
        } else {
            config
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
                .service(
                    web::scope(&base_path)
                        // The page's URLs are relative, so it must be loaded from `<prefix>/`.
                        .route("", web::get().to(page::to_folder))
                        .configure(gateway_routes),
                );
        }
        config.default_service(web::to(unknown_route));
    }
}

fn gateway_routes(config: &mut web::ServiceConfig) {
    config
        .route("/chatkit", web::post().to(chatkit::handle))
        .route("/chatkit/attachments/{id}/upload", web::post().to(attachments::upload))
        .route("/chatkit/attachments/{id}/upload", web::put().to(attachments::upload))
        .route("/chatkit/attachments/{id}/content", web::get().to(attachments::content))
        .configure(v1::routes)
        .route("/chatkit/threads/{thread_id}/events", web::get().to(viewers::thread_events))
        .route("/chatkit/events", web::get().to(viewers::history_events))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/", web::get().to(page::index))
        .route("/page/{name:.+}", web::get().to(page::page_asset))
        .route("/chatkit-live.js", web::get().to(page::live))
        .route("/agent/wire-schema.json", web::get().to(agent_wire_schema));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// `GET /metrics`: the Prometheus text exposition, with the gauges of current
/// state refreshed first.
async fn metrics(state: web::Data<State>) -> HttpResponse {
    METRICS.thread_actors.set(i64::try_from(state.threads.live_actors()).unwrap_or(i64::MAX));
    METRICS.mailbox_depth.set(i64::try_from(state.threads.queued()).unwrap_or(i64::MAX));
    let connected = matches!(state.engine.fanout_health(), Health::Connected | Health::Local);
    METRICS.redis_connected.set(i64::from(connected && state.engine.fanout_backend() == "redis"));
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(METRICS.render())
}

/// Ready when this replica can serve its own requests: the store answers and it
/// is not shutting down. A lost Redis connection is a degraded mode, named in
/// the body (and in `chatkit_redis_connected`), not unreadiness: every replica
/// loses Redis at once, and a load balancer that removed them all would turn a
/// Redis blip into a full outage.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    if *state.closing.borrow() {
        // Stopping: the load balancer should send new work elsewhere.
        return HttpResponse::ServiceUnavailable().json(serde_json::json!({"status": "stopping"}));
    }
    let store = match state.engine.ping_store().await {
        Ok(()) => serde_json::json!({"backend": state.engine.store_backend(), "state": "ok"}),
        Err(error) => {
            tracing::warn!(%error, "readiness: store unreachable");
            serde_json::json!({"backend": state.engine.store_backend(), "state": "unreachable"})
        }
    };
    let backend = state.engine.fanout_backend();
    let health = state.engine.fanout_health();
    let fanout_state = match &health {
        Health::Local => serde_json::json!({"backend": backend, "state": "local"}),
        Health::Connected => serde_json::json!({"backend": backend, "state": "connected"}),
        Health::Disconnected(why) => {
            serde_json::json!({"backend": backend, "state": "disconnected", "error": why})
        }
    };
    let ready = store["state"] == "ok";
    let status = match (ready, health.is_ready()) {
        (true, true) => "ready",
        (true, false) => "degraded",
        (false, _) => "unavailable",
    };
    let body = serde_json::json!({
        "status": status,
        "store": store,
        "fanout": fanout_state,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The JSON Schema of the requests the gateway sends to an agent backend, for integrators to check theirs against.
async fn agent_wire_schema() -> HttpResponse {
    HttpResponse::Ok().content_type("application/schema+json").body(crate::responder::AGENT_WIRE_SCHEMA)
}

async fn unknown_route(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(format!("no route for {} {}", request.method(), request.path())))
}

/// Who a request acts for.
pub(crate) struct Identity {
    pub user: UserId,
    /// The session whose client secret authenticated the request (session auth only).
    pub session: Option<Arc<ActiveSession>>,
}

/// Authenticates a request the configured way: its client secret, or the
/// trusted user header.
async fn identify(request: &HttpRequest, state: &State) -> Result<Identity, ApiError> {
    match state.auth {
        AuthMode::Header => Ok(Identity { user: user_of(request, state)?, session: None }),
        AuthMode::Session => {
            let secret = request
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|secret| !secret.is_empty())
                .ok_or(AuthError::Missing)?;
            let session = state.sessions.authenticate(secret).await?;
            Ok(Identity { user: session.user.clone(), session: Some(session) })
        }
    }
}

/// The user a request acts for, from the configured identity header.
fn user_of(request: &HttpRequest, state: &State) -> Result<UserId, ApiError> {
    let name = state.user_header.as_str();
    let value = request
        .headers()
        .get(&state.user_header)
        .ok_or_else(|| ApiError::unauthorized(format!("missing `{name}` header naming the user")))?;
    let user = value.to_str().map_err(|_| ApiError::bad_request(format!("`{name}` header is not valid text")))?.trim();
    if user.is_empty() {
        return Err(ApiError::unauthorized(format!("`{name}` header is empty")));
    }
    if user.len() > MAX_USER_ID_BYTES {
        return Err(ApiError::bad_request(format!("`{name}` header is longer than {MAX_USER_ID_BYTES} bytes")));
    }
    Ok(UserId(user.to_string()))
}

/// Reads a whole body, refusing with 413 as soon as it passes `limit`.
async fn read_body(
    request: &HttpRequest,
    mut payload: impl Stream<Item = Result<Bytes, PayloadError>> + Unpin,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::payload_too_large(format!("request body exceeds the limit of {limit} bytes"));
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Trust the user header (behind an authenticating proxy).
    Header,
    /// Client secrets of sessions.
    Session,
}
