//! The sessions of the `/v1` API: a backend makes a session for its user and
//! hands the client secret to the browser; cancelling it ends it at once (its
//! secret stops working and its viewer streams close).

use actix_web::web::{self, Json};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::AdminKey;
use super::json::{V1Body, V1Json};
use super::KeyErrors;
use crate::http::{ApiError, State};
use crate::protocol::hosted::{ChatSession, ErrorResponse, SessionCreateParams};

/// The path parameter of the operations on one session.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct SessionPath {
    /// The session's id (`cksess_…`).
    session_id: String,
}

impl V1Body for SessionCreateParams {
    const WHAT: &'static str = "session request";
}

/// `POST /v1/chatkit/sessions`: a `chatkit.session` with its client secret.
#[utoipa::path(
    post,
    path = "/v1/chatkit/sessions",
    tag = "sessions",
    request_body = SessionCreateParams,
    responses(
        (status = 200, description = "The new session, with its client secret (only here).", body = ChatSession),
        (status = 400, description = "A bad field, or a workflow the workflows file does not name, named in the message.", body = ErrorResponse),
        KeyErrors,
    )
)]
pub(super) async fn create_session(
    _: AdminKey,
    V1Json(params): V1Json<SessionCreateParams>,
    state: web::Data<State>,
) -> Result<Json<ChatSession>, ApiError> {
    // Only a workflows file names workflows; an empty id is left to the session's own checks.
    let workflow = params.workflow.id.trim();
    if !workflow.is_empty() && !state.engine.serves_workflow(workflow) {
        return Err(ApiError::bad_request(format!(
            "unknown workflow `{workflow}`: the workflows file (CHATKIT_WORKFLOWS) has no entry for it"
        )));
    }
    Ok(Json(state.sessions.create(params).await?))
}

/// `POST /v1/chatkit/sessions/{session_id}/cancel`: ends a session at once.
#[utoipa::path(
    post,
    path = "/v1/chatkit/sessions/{session_id}/cancel",
    tag = "sessions",
    params(SessionPath),
    responses(
        (status = 200, description = "The session, cancelled, with an empty client secret.", body = ChatSession),
        (status = 404, description = "No session has this id.", body = ErrorResponse),
        KeyErrors,
    )
)]
pub(super) async fn cancel_session(
    _: AdminKey,
    path: web::Path<SessionPath>,
    state: web::Data<State>,
) -> Result<Json<ChatSession>, ApiError> {
    Ok(Json(state.sessions.cancel(&path.session_id).await?))
}
