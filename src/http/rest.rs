//! The REST threads API under `/v1/chatkit/threads`, behind the admin keys, and
//! the OpenAPI document of the whole `/v1` API at `/v1/openapi.json`.
//!
//! Answers take the hosted ChatKit service's shapes (`protocol::hosted`): list
//! objects with `first_id`, `last_id` and `has_more`, `chatkit.thread` and
//! `chatkit.thread_item` objects. Listings read the store directly; deletion
//! runs in the thread's actor, like every other change to a thread.

use std::collections::VecDeque;
use std::sync::LazyLock;

use actix_web::{web, HttpRequest, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{ApiError, State};
use crate::engine::{Caller, EngineError};
use crate::ids::UserId;
use crate::protocol::hosted::{
    ChatKitThread, ChatKitThreadItem, ChatKitThreadItemList, ChatKitThreadList, ErrorResponse, ItemListParams,
    SortOrder, ThreadDeleteResponse, ThreadListParams, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT,
};
use crate::protocol::{Order, Request, ThreadIdParams};
use crate::store::{ListQuery, Store, StoreError};

/// `GET /v1/chatkit/threads`: a page of threads, of every user or of `user`.
#[utoipa::path(
    get,
    path = "/v1/chatkit/threads",
    tag = "threads",
    params(ThreadListParams),
    responses(
        (status = 200, description = "A page of threads.", body = ChatKitThreadList),
        (status = 400, description = "A bad parameter, named in the message.", body = ErrorResponse),
        (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
        (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
    )
)]
pub async fn list_threads(request: HttpRequest, state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let params = parse_list_params(&request, true)?;
    let user = params.user.clone().map(UserId);
    let query = list_query(&params);
    let listing =
        state.engine.store().list_threads(user.as_ref(), &query).await.map_err(|e| listing_error(e, &query))?;
    let threads = listing.data.iter().map(|(owner, thread)| ChatKitThread::new(owner.as_str(), thread)).collect();
    Ok(HttpResponse::Ok().json(ChatKitThreadList::new(threads, listing.has_more)))
}

/// `GET /v1/chatkit/threads/{thread_id}`: the thread with its first page of
/// items, as `GET …/items` answers it without parameters.
#[utoipa::path(
    get,
    path = "/v1/chatkit/threads/{thread_id}",
    tag = "threads",
    params(("thread_id" = String, Path, description = "The thread's id.")),
    responses(
        (status = 200, description = "The thread; `items`: its 20 newest items, newest first.", body = ChatKitThread),
        (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
        (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
        (status = 404, description = "No thread has this id.", body = ErrorResponse),
    )
)]
pub async fn get_thread(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let thread_id = path.into_inner();
    let store = state.engine.store();
    let (owner, thread) = store.find_thread(&thread_id).await.map_err(EngineError::from)?;
    let first_page = ListQuery::first(DEFAULT_LIST_LIMIT, Order::Desc);
    let items = item_page(store.as_ref(), &owner, &thread_id, &first_page).await?;
    let thread = ChatKitThread { items: Some(items), ..ChatKitThread::new(owner.as_str(), &thread) };
    Ok(HttpResponse::Ok().json(thread))
}

/// `DELETE /v1/chatkit/threads/{thread_id}`: deletes the thread with its items
/// in the thread's order (after the running turn and what is queued before it)
/// and announces `thread.deleted` to its viewers and its owner's history.
#[utoipa::path(
    delete,
    path = "/v1/chatkit/threads/{thread_id}",
    tag = "threads",
    params(("thread_id" = String, Path, description = "The thread's id.")),
    responses(
        (status = 200, description = "The thread is deleted.", body = ThreadDeleteResponse),
        (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
        (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
        (status = 404, description = "No thread has this id.", body = ErrorResponse),
        (status = 429, description = "The thread's queue is full.", body = ErrorResponse),
    )
)]
pub async fn delete_thread(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let thread_id = path.into_inner();
    let (owner, _) = state.engine.store().find_thread(&thread_id).await.map_err(EngineError::from)?;
    let delete = Request::DeleteThread(ThreadIdParams { thread_id: thread_id.clone() });
    state.threads.change(owner, delete, Caller::default()).await?;
    Ok(HttpResponse::Ok().json(ThreadDeleteResponse::new(thread_id)))
}

/// `GET /v1/chatkit/threads/{thread_id}/items`: a page of the thread's items.
#[utoipa::path(
    get,
    path = "/v1/chatkit/threads/{thread_id}/items",
    tag = "threads",
    params(("thread_id" = String, Path, description = "The thread's id."), ItemListParams),
    responses(
        (status = 200, description = "A page of the thread's items.", body = ChatKitThreadItemList),
        (status = 400, description = "A bad parameter, named in the message.", body = ErrorResponse),
        (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
        (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
        (status = 404, description = "No thread has this id.", body = ErrorResponse),
    )
)]
pub async fn list_items(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<State>,
) -> Result<HttpResponse, ApiError> {
    state.admin.check(&request)?;
    let params = parse_list_params(&request, false)?;
    let thread_id = path.into_inner();
    let store = state.engine.store();
    let (owner, _) = store.find_thread(&thread_id).await.map_err(EngineError::from)?;
    let page = item_page(store.as_ref(), &owner, &thread_id, &list_query(&params)).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// `GET /v1/openapi.json`: the OpenAPI document of the `/v1` API (no key needed).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    security(()),
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object))
)]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(OPENAPI_JSON.as_str())
}

/// A page of a thread's items in the hosted shapes. Items without a hosted
/// shape (hidden context, end-of-turn markers) are skipped and the store is
/// read on past them, so that `limit` and `has_more` count shown items only.
async fn item_page(
    store: &dyn Store,
    owner: &UserId,
    thread_id: &str,
    query: &ListQuery,
) -> Result<ChatKitThreadItemList, ApiError> {
    let limit = query.limit;
    // With `before` alone the page grows towards the start of the listing.
    let backward = query.before.is_some() && query.after.is_none();
    let mut shown = VecDeque::with_capacity(limit + 1);
    let mut next = query.clone();
    loop {
        // One item more than the page holds tells whether more follow.
        next.limit = limit + 1 - shown.len();
        let page = store.list_items(owner, thread_id, &next).await.map_err(|e| listing_error(e, query))?;
        let (Some(first), Some(last)) = (page.data.first(), page.data.last()) else { break };
        let (first_id, last_id) = (first.id.clone(), last.id.clone());
        let mapped = page.data.iter().filter_map(ChatKitThreadItem::from_item);
        if backward {
            mapped.rev().for_each(|item| shown.push_front(item));
        } else {
            shown.extend(mapped);
        }
        if shown.len() > limit || !page.has_more {
            break;
        }
        if backward {
            next.before = Some(first_id);
        } else {
            next.after = Some(last_id);
        }
    }
    let has_more = shown.len() > limit;
    if has_more {
        if backward {
            shown.pop_front();
        } else {
            shown.pop_back();
        }
    }
    Ok(ChatKitThreadItemList::new(shown.into(), has_more))
}

/// The listing parameters of a request: `after`, `before`, `limit`, `order`
/// and, for threads, `user`. Anything else, or a parameter given twice, is a
/// 400 that names it.
fn parse_list_params(request: &HttpRequest, with_user: bool) -> Result<ThreadListParams, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(request.query_string())
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))?
        .into_inner();
    let mut params = ThreadListParams::default();
    for (name, value) in pairs {
        let twice = || ApiError::bad_request(format!("query parameter `{name}` is given more than once"));
        let not_empty = |value: String| {
            if value.is_empty() {
                Err(ApiError::bad_request(format!("`{name}` must not be empty")))
            } else {
                Ok(value)
            }
        };
        match name.as_str() {
            "after" if params.after.is_some() => return Err(twice()),
            "after" => params.after = Some(not_empty(value)?),
            "before" if params.before.is_some() => return Err(twice()),
            "before" => params.before = Some(not_empty(value)?),
            "limit" if params.limit.is_some() => return Err(twice()),
            "limit" => {
                let limit = value.trim().parse::<u32>().ok().filter(|n| (1..=MAX_LIST_LIMIT as u32).contains(n));
                params.limit = Some(limit.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "`limit` must be an integer from 1 to {MAX_LIST_LIMIT}, got `{value}`"
                    ))
                })?);
            }
            "order" if params.order.is_some() => return Err(twice()),
            "order" => {
                params.order =
                    Some(SortOrder::parse(&value).ok_or_else(|| {
                        ApiError::bad_request(format!("`order` must be `asc` or `desc`, got `{value}`"))
                    })?);
            }
            "user" if with_user && params.user.is_some() => return Err(twice()),
            "user" if with_user => params.user = Some(not_empty(value)?),
            _ => {
                let known = if with_user {
                    "`after`, `before`, `limit`, `order`, `user`"
                } else {
                    "`after`, `before`, `limit`, `order`"
                };
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter `{name}`; this endpoint takes {known}"
                )));
            }
        }
    }
    Ok(params)
}

fn list_query(params: &ThreadListParams) -> ListQuery {
    ListQuery {
        after: params.after.clone(),
        before: params.before.clone(),
        limit: params.limit.map_or(DEFAULT_LIST_LIMIT, |limit| limit as usize),
        order: params.order.unwrap_or_default().into(),
    }
}

/// A listing's store error; an unknown cursor names the parameter that carried it.
fn listing_error(error: StoreError, query: &ListQuery) -> ApiError {
    match error {
        StoreError::UnknownCursor(id) => {
            let parameter = if query.after.as_deref() == Some(id.as_str()) { "after" } else { "before" };
            ApiError::bad_request(format!("`{parameter}` names `{id}`, which is not part of this listing"))
        }
        other => EngineError::from(other).into(),
    }
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
        description = "The admin REST API of chatkit-gateway, in the hosted ChatKit service's shapes. \
                       Every operation but this document needs `Authorization: Bearer <key>` with a key \
                       of `CHATKIT_ADMIN_KEYS`."
    ),
    paths(
        documented::create_session,
        documented::cancel_session,
        list_threads,
        get_thread,
        delete_thread,
        list_items,
        documented::set_status,
        documented::cancel_turn,
        openapi,
    ),
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

/// Path definitions of the `/v1` handlers that live in `sessions` and `admin`:
/// `utoipa` reads the attributes; the functions themselves never run.
#[allow(dead_code)]
mod documented {
    use crate::protocol::hosted::{
        ChatSession, ErrorResponse, SessionCreateParams, ThreadCancelResponse, ThreadStatusChange,
    };
    use crate::protocol::Thread;

    /// `POST /v1/chatkit/sessions`: a `chatkit.session` with its client secret.
    #[utoipa::path(
        post,
        path = "/v1/chatkit/sessions",
        tag = "sessions",
        request_body = SessionCreateParams,
        responses(
            (status = 200, description = "The new session, with its client secret (only here).", body = ChatSession),
            (status = 400, description = "A bad field, named in the message.", body = ErrorResponse),
            (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
            (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
        )
    )]
    fn create_session() {}

    /// `POST /v1/chatkit/sessions/{session_id}/cancel`: ends a session at once.
    #[utoipa::path(
        post,
        path = "/v1/chatkit/sessions/{session_id}/cancel",
        tag = "sessions",
        params(("session_id" = String, Path, description = "The session's id (`cksess_…`).")),
        responses(
            (status = 200, description = "The session, cancelled, with an empty client secret.", body = ChatSession),
            (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
            (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
            (status = 404, description = "No session has this id.", body = ErrorResponse),
        )
    )]
    fn cancel_session() {}

    /// `POST /v1/chatkit/threads/{thread_id}/status`: locks, closes or reopens a
    /// thread in the thread's order and announces `thread.updated`.
    #[utoipa::path(
        post,
        path = "/v1/chatkit/threads/{thread_id}/status",
        tag = "threads",
        params(("thread_id" = String, Path, description = "The thread's id.")),
        request_body = ThreadStatusChange,
        responses(
            (status = 200, description = "The updated thread, as the ChatKit protocol sends it.", body = Thread),
            (status = 400, description = "A bad body.", body = ErrorResponse),
            (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
            (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
            (status = 404, description = "No thread has this id.", body = ErrorResponse),
            (status = 429, description = "The thread's queue is full.", body = ErrorResponse),
        )
    )]
    fn set_status() {}

    /// `POST /v1/chatkit/threads/{thread_id}/cancel`: stops the thread's running
    /// turn on whichever replica runs it, keeping its partial output.
    #[utoipa::path(
        post,
        path = "/v1/chatkit/threads/{thread_id}/cancel",
        tag = "threads",
        params(("thread_id" = String, Path, description = "The thread's id.")),
        responses(
            (status = 200, description = "Whether a turn was running.", body = ThreadCancelResponse),
            (status = 401, description = "No or an unknown admin key.", body = ErrorResponse),
            (status = 403, description = "The admin API is disabled.", body = ErrorResponse),
            (status = 404, description = "No thread has this id.", body = ErrorResponse),
        )
    )]
    fn cancel_turn() {}
}
