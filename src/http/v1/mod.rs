//! The `/v1` API: operator endpoints in the hosted ChatKit service's shapes,
//! guarded by the admin key (`auth`): sessions (`sessions`), threads of every
//! user (`threads`), status changes and cancellation (`status`); and its
//! OpenAPI document at `/v1/openapi.json`.
//!
//! The document is made by `utoipa` from the path attributes of the handlers
//! that serve each operation, and from the wire types of `protocol::hosted`
//! that those handlers take (`V1Json`) and answer, so the documented contract
//! is the served one.

mod auth;
mod json;
mod sessions;
mod status;
mod threads;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use super::{ApiError, State};
use crate::protocol::hosted::ErrorResponse;

pub use auth::AdminAccess;

/// Registers the routes of the `/v1` API.
pub(super) fn routes(config: &mut web::ServiceConfig) {
    config
        .route("/v1/chatkit/sessions", web::post().to(sessions::create_session))
        .route("/v1/chatkit/sessions/{session_id}/cancel", web::post().to(sessions::cancel_session))
        .route("/v1/openapi.json", web::get().to(openapi))
        .route("/v1/chatkit/threads", web::get().to(threads::list_threads))
        .route("/v1/chatkit/threads/{thread_id}", web::get().to(threads::get_thread))
        .route("/v1/chatkit/threads/{thread_id}", web::delete().to(threads::delete_thread))
        .route("/v1/chatkit/threads/{thread_id}/items", web::get().to(threads::list_items))
        .route("/v1/chatkit/threads/{thread_id}/status", web::post().to(status::set_status))
        .route("/v1/chatkit/threads/{thread_id}/cancel", web::post().to(status::cancel_turn));
}

/// The shared state, for extractors (handlers take it as `web::Data<State>`).
fn state_of(request: &HttpRequest) -> Result<&State, ApiError> {
    request.app_data::<web::Data<State>>().map(|state| state.get_ref()).ok_or_else(|| {
        tracing::error!("the app has no shared state");
        ApiError::internal()
    })
}

/// The path parameter of the operations on one thread.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
struct ThreadPath {
    /// The thread's id.
    thread_id: String,
}

/// Declares error answers that several operations document: a type to list
/// in their `responses(...)`, for each status its description, each with an
/// `ErrorResponse` body. The types are never built; only `utoipa` reads them.
macro_rules! error_answers {
    ($($(#[$meta:meta])* $name:ident { $($status:literal => $description:literal),+ $(,)? })+) => {$(
        $(#[$meta])*
        struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                BTreeMap::from([$(error_answer($status, $description)),+])
            }
        }
    )+};
}

error_answers! {
    /// The answers of every operation behind the admin key when the key is refused.
    KeyErrors {
        401 => "No or an unknown admin key.",
        403 => "The admin API is disabled.",
    }
    /// The answer of every operation on a thread named by an unknown id.
    ThreadNotFound { 404 => "No thread has this id." }
    /// The answer of every operation that queues on a thread whose queue is full.
    QueueFull { 429 => "The thread's queue is full." }
}

/// One documented error answer: its status, and its description with an `ErrorResponse` body.
fn error_answer(status: u16, description: &str) -> (String, RefOr<Response>) {
    let body = ContentBuilder::new().schema(Some(Ref::from_schema_name(ErrorResponse::name()))).build();
    (
        status.to_string(),
        ResponseBuilder::new().description(description).content("application/json", body).build().into(),
    )
}

/// `GET /v1/openapi.json`: the OpenAPI document of the `/v1` API (no key needed).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object))
)]
async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI_JSON.as_str())
}

/// The OpenAPI document, made once from the derives and path attributes.
static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| {
    // The document is plain data (strings, maps, numbers): serializing it cannot fail.
    ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes")
});

#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatkit-gateway /v1 API",
        description = "The /v1 API of chatkit-gateway, in the hosted ChatKit service's shapes. \
                       Every operation but this document needs `Authorization: Bearer <key>` with a key \
                       of `CHATKIT_ADMIN_KEYS`."
    ),
    paths(
        sessions::create_session,
        sessions::cancel_session,
        threads::list_threads,
        threads::get_thread,
        threads::delete_thread,
        threads::list_items,
        status::set_status,
        status::cancel_turn,
        openapi,
    ),
    components(schemas(ErrorResponse)),
    modifiers(&AdminKeyScheme),
    security(("admin_key" = [])),
    tags(
        (name = "sessions", description = "ChatKit sessions and their client secrets."),
        (name = "threads", description = "Threads and their items, across users."),
        (name = "meta", description = "This document."),
    )
)]
struct ApiDoc;

/// Declares the bearer scheme that every operation's `security` names.
struct AdminKeyScheme;

impl Modify for AdminKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("A key of `CHATKIT_ADMIN_KEYS`."))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("admin_key", SecurityScheme::Http(scheme));
    }
}
