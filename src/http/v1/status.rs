//! Operator actions on a thread's turns: changing its status (lock, close,
//! reopen) and cancelling its running turn, both through the thread registry.

use actix_web::web::{self, Json};

use super::auth::AdminKey;
use super::json::{V1Body, V1Json};
use super::{KeyErrors, QueueFull, ThreadNotFound, ThreadPath};
use crate::http::{ApiError, State};
use crate::protocol::hosted::{ErrorResponse, ThreadCancelResponse, ThreadStatusChange};
use crate::protocol::Thread;

impl V1Body for ThreadStatusChange {
    const WHAT: &'static str =
        r#"status change (expected {"type": "active"|"locked"|"closed", "reason"?, "cancel_running"?})"#;
}

/// `POST /v1/chatkit/threads/{thread_id}/status`: locks, closes or reopens a
/// thread in the thread's order and announces `thread.updated`.
#[utoipa::path(
    post,
    path = "/v1/chatkit/threads/{thread_id}/status",
    tag = "threads",
    params(ThreadPath),
    request_body = ThreadStatusChange,
    responses(
        (status = 200, description = "The updated thread, as the ChatKit protocol sends it.", body = Thread),
        (status = 400, description = "A bad body.", body = ErrorResponse),
        KeyErrors,
        ThreadNotFound,
        QueueFull,
    )
)]
pub(super) async fn set_status(
    _: AdminKey,
    path: web::Path<ThreadPath>,
    V1Json(change): V1Json<ThreadStatusChange>,
    state: web::Data<State>,
) -> Result<Json<Thread>, ApiError> {
    let thread = state.threads.set_status(&path.thread_id, change.status.into(), change.cancel_running).await?;
    Ok(Json(thread))
}

/// `POST /v1/chatkit/threads/{thread_id}/cancel`: stops the thread's running
/// turn on whichever replica runs it, keeping its partial output.
#[utoipa::path(
    post,
    path = "/v1/chatkit/threads/{thread_id}/cancel",
    tag = "threads",
    params(ThreadPath),
    responses(
        (status = 200, description = "Whether a turn was running.", body = ThreadCancelResponse),
        KeyErrors,
        ThreadNotFound,
    )
)]
pub(super) async fn cancel_turn(
    _: AdminKey,
    path: web::Path<ThreadPath>,
    state: web::Data<State>,
) -> Result<Json<ThreadCancelResponse>, ApiError> {
    let thread_id = path.into_inner().thread_id;
    state.engine.thread_exists(&thread_id).await?;
    let cancelled = state.threads.cancel(&thread_id).await;
    Ok(Json(ThreadCancelResponse { id: thread_id, cancelled }))
}
