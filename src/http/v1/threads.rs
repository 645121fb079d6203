//! Threads of every user in the `/v1` API: list them with OpenAI-style cursors,
//! get one with its first page of items, list its items, delete it.
//!
//! Reads go through the engine, which answers the hosted shapes; deletion runs
//! in the thread's actor, like every other change to a thread.

use actix_web::web::{self, Json};
use actix_web::HttpRequest;

use super::auth::AdminKey;
use super::{KeyErrors, QueueFull, ThreadNotFound, ThreadPath};
use crate::engine::Caller;
use crate::http::{ApiError, State};
use crate::ids::UserId;
use crate::protocol::hosted::{
    ChatKitThread, ChatKitThreadItemList, ChatKitThreadList, ErrorResponse, ListingParams, ThreadDeleteResponse,
    UserFilter,
};
use crate::protocol::{Request, ThreadIdParams};

/// `GET /v1/chatkit/threads`: a page of threads, of every user or of `user`.
#[utoipa::path(
    get,
    path = "/v1/chatkit/threads",
    tag = "threads",
    params(ListingParams, UserFilter),
    responses(
        (status = 200, description = "A page of threads.", body = ChatKitThreadList),
        (status = 400, description = "A bad parameter, named in the message.", body = ErrorResponse),
        KeyErrors,
    )
)]
pub(super) async fn list_threads(
    _: AdminKey,
    request: HttpRequest,
    state: web::Data<State>,
) -> Result<Json<ChatKitThreadList>, ApiError> {
    let (params, filter) = listing(&request, true)?;
    let user = filter.user.map(UserId);
    Ok(Json(state.engine.list_all_threads(user.as_ref(), &params).await?))
}

/// `GET /v1/chatkit/threads/{thread_id}`: the thread with its first page of
/// items, as `GET …/items` answers it without parameters.
#[utoipa::path(
    get,
    path = "/v1/chatkit/threads/{thread_id}",
    tag = "threads",
    params(ThreadPath),
    responses(
        (status = 200, description = "The thread; `items`: its 20 newest items, newest first.", body = ChatKitThread),
        KeyErrors,
        ThreadNotFound,
    )
)]
pub(super) async fn get_thread(
    _: AdminKey,
    path: web::Path<ThreadPath>,
    state: web::Data<State>,
) -> Result<Json<ChatKitThread>, ApiError> {
    Ok(Json(state.engine.hosted_thread(&path.thread_id).await?))
}

/// `DELETE /v1/chatkit/threads/{thread_id}`: deletes the thread with its items
/// in the thread's order (after the running turn and what is queued before it)
/// and announces `thread.deleted` to its viewers and its owner's history.
#[utoipa::path(
    delete,
    path = "/v1/chatkit/threads/{thread_id}",
    tag = "threads",
    params(ThreadPath),
    responses(
        (status = 200, description = "The thread is deleted.", body = ThreadDeleteResponse),
        KeyErrors,
        ThreadNotFound,
        QueueFull,
    )
)]
pub(super) async fn delete_thread(
    _: AdminKey,
    path: web::Path<ThreadPath>,
    state: web::Data<State>,
) -> Result<Json<ThreadDeleteResponse>, ApiError> {
    let thread_id = path.into_inner().thread_id;
    let owner = state.engine.thread_owner(&thread_id).await?;
    let delete = Request::DeleteThread(ThreadIdParams { thread_id: thread_id.clone() });
    state.threads.change(owner, delete, Caller::default()).await?;
    Ok(Json(ThreadDeleteResponse::new(thread_id)))
}

/// `GET /v1/chatkit/threads/{thread_id}/items`: a page of the thread's items.
#[utoipa::path(
    get,
    path = "/v1/chatkit/threads/{thread_id}/items",
    tag = "threads",
    params(ThreadPath, ListingParams),
    responses(
        (status = 200, description = "A page of the thread's items.", body = ChatKitThreadItemList),
        (status = 400, description = "A bad parameter, named in the message.", body = ErrorResponse),
        KeyErrors,
        ThreadNotFound,
    )
)]
pub(super) async fn list_items(
    _: AdminKey,
    request: HttpRequest,
    path: web::Path<ThreadPath>,
    state: web::Data<State>,
) -> Result<Json<ChatKitThreadItemList>, ApiError> {
    let (params, _) = listing(&request, false)?;
    Ok(Json(state.engine.hosted_items(&path.thread_id, &params).await?))
}

/// The listing parameters of a request, and for threads the `user` filter;
/// see [`ListingParams::from_query`] for what is refused.
fn listing(request: &HttpRequest, with_user: bool) -> Result<(ListingParams, UserFilter), ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?
        .into_inner();
    ListingParams::from_query(pairs, with_user).map_err(ApiError::bad_request)
}
