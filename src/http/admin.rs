//! The admin API under `/v1/`: operator actions on threads, behind bearer keys.

use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{read_body, ApiError, State};
use crate::protocol::ThreadStatus;
use crate::secret::Secret;

/// Who may call the admin API.
#[derive(Clone, Debug)]
pub enum AdminAccess {
    /// Any caller: only when no key is configured and the gateway binds loopback.
    Open,
    /// Callers presenting one of these keys as a bearer token.
    Keys(Vec<Secret>),
    /// Nobody: no key configured on a non-loopback bind.
    Disabled,
}

impl AdminAccess {
    pub(super) fn check(&self, request: &HttpRequest) -> Result<(), ApiError> {
        match self {
            AdminAccess::Open => Ok(()),
            AdminAccess::Disabled => Err(ApiError::new(
                actix_web::http::StatusCode::FORBIDDEN,
                "admin_disabled",
                "the admin API is disabled: set CHATKIT_ADMIN_KEYS to enable it",
            )),
            AdminAccess::Keys(keys) => {
                let token = request
                    .headers()
                    .get(AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .ok_or_else(|| ApiError::unauthorized("the admin API needs `Authorization: Bearer <key>`"))?;
                if keys.iter().any(|key| key.matches(token.trim())) {
                    Ok(())
                } else {
                    Err(ApiError::unauthorized("unknown admin key"))
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct StatusChange {
    #[serde(flatten)]
    status: ThreadStatus,
    #[serde(default)]
    cancel_running: bool,
}

/// `POST /v1/chatkit/threads/{thread_id}/status`: answers the updated thread.
pub async fn set_status(
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let body = read_body(&request, payload, state.max_body_bytes).await?;
    let change: StatusChange = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid status change (expected {{\"type\": \"active\"|\"locked\"|\"closed\", \"reason\"?, \"cancel_running\"?}}): {e}"
        ))
    })?;
    let thread = state.threads.set_status(&path.into_inner(), change.status, change.cancel_running).await?;
    Ok(HttpResponse::Ok().json(thread))
}

/// `POST /v1/chatkit/threads/{thread_id}/cancel`: stops the running turn, if any.
pub async fn cancel(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let thread_id = path.into_inner();
    state.engine.thread_exists(&thread_id).await?;
    let cancelled = state.threads.cancel(&thread_id).await;
    Ok(HttpResponse::Ok().json(json!({"id": thread_id, "cancelled": cancelled})))
}
