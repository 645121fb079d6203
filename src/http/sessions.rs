//! The sessions API under `/v1/chatkit/sessions`, behind the admin keys: a
//! backend makes a session for its user and hands the client secret to the browser.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{read_body, ApiError, State};
use crate::protocol::hosted::SessionCreateParams;

/// `POST /v1/chatkit/sessions`: answers a `chatkit.session` with its client secret.
pub async fn create(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let body = read_body(&request, payload, state.max_body_bytes).await?;
    let params: SessionCreateParams =
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid session request: {e}")))?;
    let session = state.sessions.create(params).await?;
    Ok(HttpResponse::Ok().json(session))
}

/// `POST /v1/chatkit/sessions/{session_id}/cancel`: the session with status
/// `cancelled`; its secret stops working at once and its viewer streams close.
pub async fn cancel(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let session = state.sessions.cancel(&path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(session))
}
