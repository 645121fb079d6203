//! Persistence of threads, items, attachments and ChatKit sessions behind one trait.
//!
//! Every call of the ChatKit side is scoped to a user: another user's thread,
//! item or attachment is indistinguishable from a missing one. The admin and
//! session calls (`find_thread`, `list_threads` without a user, the session
//! calls) act on records by id alone, for callers that have already decided who
//! may see them. Every listing takes one `ListQuery` and answers one `Page`,
//! whoever asks: the protocol's `threads.list` and `items.list`, or the REST API.
//!
//! Backends are same-shaped modules (`memory`, `sqlite`, `postgres`), and one
//! contract suite (`tests/integration/store_contract.rs`) runs against each. `paging` holds
//! the paging rules all of them share; `sql` the SQL the two SQL backends run,
//! written once for both dialects.

mod instrumented;
mod memory;
mod paging;
mod postgres;
mod sql;
mod sqlite;
mod writes;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::ids::UserId;
use crate::protocol::{Attachment, ListedThread, Order, Page, ThreadItem, ThreadMetadata};

pub use instrumented::Instrumented;
pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;
pub use writes::Writes;

/// Which record a `NotFound` is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Thread,
    Item,
    Attachment,
    Session,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::Thread => "thread",
            Entity::Item => "item",
            Entity::Attachment => "attachment",
            Entity::Session => "session",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist for this user (it may exist for another).
    #[error("{entity} `{id}` not found")]
    NotFound { entity: Entity, id: String },
    /// A pagination cursor names no record of the listing.
    #[error("cursor `{0}` names no record of this listing")]
    UnknownCursor(String),
    /// The thread was claimed by a newer job (another replica took it over): a write under an
    /// older fence is refused, so that a stale holder cannot interleave with the new one.
    #[error("thread `{thread_id}` was claimed by a newer job; this write under an older claim is refused")]
    Fenced { thread_id: String },
    /// A record with this id already exists.
    #[error("{entity} `{id}` already exists")]
    Duplicate { entity: Entity, id: String },
    /// The backend failed; the message is for logs, not for clients.
    #[error("store backend failed: {0}")]
    Backend(String),
}

/// A thread's fencing token. Each job that changes a thread claims a new one from the store
/// (`Store::claim_thread`, one higher than any before), and its writes carry it
/// (`Store::write_fenced`): the store refuses a write whose token is older than the thread's
/// newest, so a replica that lost the thread (paused past its lease, cut off from Redis) cannot
/// write over the one that took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence(pub i64);

/// A write to one thread that lands only while its fence is the thread's newest.
#[derive(Clone, Copy, Debug)]
pub enum FencedWrite<'a> {
    /// As `add_item`.
    AddItem(&'a ThreadItem),
    /// As `save_item`.
    SaveItem(&'a ThreadItem),
    /// As `delete_item`, by the item's id.
    DeleteItem(&'a str),
    /// As `save_thread`.
    SaveThread(&'a ThreadMetadata),
}

/// A record as raw JSON, for `recent_items_json`.
fn to_raw_json(item: &ThreadItem) -> StoreResult<Box<RawValue>> {
    serde_json::value::to_raw_value(item).map_err(|err| StoreError::Backend(format!("cannot serialize record: {err}")))
}

impl StoreError {
    pub fn not_found(entity: Entity, id: impl Into<String>) -> Self {
        StoreError::NotFound { entity, id: id.into() }
    }
}

/// A page request, for the protocol's listings and the REST API's alike: up to
/// `limit` records after `after` and/or before `before` (ids of records of the
/// same listing), in `order`.
///
/// The listing runs in creation order (`asc`) or newest first (`desc`), and the
/// cursors are read in that order, as OpenAI's list endpoints read them: `after`
/// keeps the records that follow its record, `before` those that precede its
/// record (the `limit` closest to it, still in listing order), and both keep
/// those strictly between. A cursor that names no record of the listing is
/// `UnknownCursor`; a zero limit means the protocol's default page size.
///
/// The answer is a `Page`: `has_more` tells whether records remain beyond the
/// page in the direction of travel (past its last record for `after` or no
/// cursor; before its first record for `before` alone), and `after` names the
/// page's last record when more follow it, as the protocol's cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub after: Option<String>,
    pub before: Option<String>,
    pub limit: usize,
    pub order: Order,
}

impl ListQuery {
    /// The first page of a listing.
    pub fn first(limit: usize, order: Order) -> Self {
        ListQuery { after: None, before: None, limit, order }
    }

    /// Whether the query names a record to start from.
    pub fn has_cursor(&self) -> bool {
        self.after.is_some() || self.before.is_some()
    }
}

/// A ChatKit session as stored. The client secret is never stored, only its hash.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    /// `cksess_…`.
    pub id: String,
    /// Hex SHA-256 of the client secret (computed by the caller).
    pub secret_hash: String,
    pub user: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    pub cancelled: bool,
    /// The session's other fields as the API answers them (workflow, configuration, rate limits); opaque here.
    pub settings: serde_json::Value,
}

/// The current time in Unix seconds, the creation time of attachments.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

/// The id a `NotFound` names when a session was looked up by its secret's hash,
/// which must not end up in errors or logs.
pub const SESSION_BY_SECRET: &str = "(by secret)";

pub type StoreResult<T> = Result<T, StoreError>;

/// The storage contract. Order of threads and of items within a thread is the
/// order they were created in (`asc`), or its reverse (`desc`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs and metrics, e.g. `sqlite`.
    fn backend(&self) -> &'static str;

    /// Inserts a new thread owned by `user`.
    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()>;
    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata>;
    /// Updates an existing thread's title, status and other metadata.
    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()>;
    /// Deletes a thread with all its items.
    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()>;
    /// A page of the threads of `user`, or of every user for `None`, with their owners.
    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Page<(UserId, ThreadMetadata)>>;
    /// The same page of `user`'s threads as `list_threads`, each as the JSON a client receives:
    /// for `threads.list`, which then need not parse and serialize every thread. This default
    /// converts `list_threads`; SQL backends write it from their stored text.
    async fn list_listed_threads(&self, user: &UserId, query: &ListQuery) -> StoreResult<Page<ListedThread>> {
        let page = self.list_threads(Some(user), query).await?;
        let data = page.data.iter().map(|(_, thread)| ListedThread::from_metadata(thread)).collect::<Result<_, _>>();
        let data = data.map_err(|err| StoreError::Backend(format!("cannot serialize record: {err}")))?;
        Ok(Page { data, has_more: page.has_more, after: page.after })
    }
    /// Finds a thread by id alone, with its owner: for admin operations, which
    /// act on a thread without acting as its user.
    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)>;

    /// A page of a thread's items, including hidden ones.
    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Page<ThreadItem>>;
    /// A thread's newest `count` items (hidden ones included), oldest first, as the JSON they are
    /// stored as: for callers that only forward them (the agent responder), which then need not
    /// parse and re-serialize them. This default serializes `list_items`; SQL backends hand over
    /// their stored text.
    async fn recent_items_json(&self, user: &UserId, thread_id: &str, count: usize) -> StoreResult<Vec<Box<RawValue>>> {
        let page = self.list_items(user, thread_id, &ListQuery::first(count, Order::Desc)).await?;
        let mut items = page.data.iter().map(to_raw_json).collect::<StoreResult<Vec<_>>>()?;
        items.reverse();
        Ok(items)
    }
    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem>;
    /// Appends a new item to its thread (`item.thread_id`).
    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()>;
    /// Replaces an item in place, keeping its position; appends it when new.
    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()>;
    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()>;

    /// Takes a new fencing token on a thread, by id alone (the thread's actor claims it for each
    /// job, whoever the thread belongs to): one higher than any claimed before.
    async fn claim_thread(&self, thread_id: &str) -> StoreResult<Fence>;
    /// Applies `write` to the user's thread only if `fence` is still its newest claim, in one
    /// statement; `StoreError::Fenced` when a newer claim exists. Otherwise as the unfenced write.
    async fn write_fenced(
        &self,
        user: &UserId,
        thread_id: &str,
        fence: Fence,
        write: FencedWrite<'_>,
    ) -> StoreResult<()>;

    /// Inserts or replaces an attachment. Its `thread_id` tells whether a message
    /// holds it; the first save's time is its creation time.
    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()>;
    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment>;
    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()>;
    /// The ids of the attachments bound to a thread (saved with its `thread_id`).
    async fn thread_attachments(&self, user: &UserId, thread_id: &str) -> StoreResult<Vec<String>>;
    /// Up to `limit` attachments no message holds, created before `before`
    /// (Unix seconds), oldest first, with their owners: uploads left to expire.
    async fn stale_uploads(&self, before: i64, limit: usize) -> StoreResult<Vec<(UserId, String)>>;
    /// Deletes an attachment only while no message holds it, telling whether it did:
    /// an upload attached while it was being expired stays.
    async fn expire_upload(&self, user: &UserId, attachment_id: &str) -> StoreResult<bool>;

    /// Stores bytes under a new name (the database blob backend); `false`, and
    /// nothing changed, when the name is taken.
    async fn put_blob(&self, name: &str, bytes: &[u8]) -> StoreResult<bool>;
    async fn get_blob(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Deletes a blob; a missing one is not an error.
    async fn delete_blob(&self, name: &str) -> StoreResult<()>;

    /// Stores a new session; `Duplicate` when its id or secret hash exists.
    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()>;
    async fn load_session(&self, session_id: &str) -> StoreResult<SessionRecord>;
    /// The session whose secret hashes to `secret_hash`. Its `NotFound` names
    /// the entity but never the hash (id `"(by secret)"`).
    async fn find_session(&self, secret_hash: &str) -> StoreResult<SessionRecord>;
    /// Marks a session cancelled (idempotent) and returns it.
    async fn cancel_session(&self, session_id: &str) -> StoreResult<SessionRecord>;
    /// Deletes at most `limit` sessions whose `expires_at` is at or before
    /// `expired_by` (Unix seconds), earliest first, and returns how many went:
    /// bounded work for the background sweeper, which calls it again while
    /// whole batches go.
    async fn delete_expired_sessions(&self, expired_by: i64, limit: usize) -> StoreResult<usize>;

    /// Checks that the backend answers, for readiness.
    async fn ping(&self) -> StoreResult<()>;
}

/// Opens the store a `DATABASE_URL` names: `postgres://…` (or `postgresql://…`),
/// `sqlite://path`, `sqlite::memory:` or `memory://`.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    open_with_pool(url, postgres::DEFAULT_POOL_SIZE).await
}

/// As `open`, with at most `pg_pool` connections for a PostgreSQL store.
pub async fn open_with_pool(url: &str, pg_pool: u32) -> StoreResult<Arc<dyn Store>> {
    if url == "memory://" || url == "memory" {
        return Ok(Arc::new(MemoryStore::new()));
    }
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::open_with_pool(url, pg_pool).await?));
    }
    Err(StoreError::Backend(format!(
        "unsupported DATABASE_URL `{url}`: expected postgres://<url>, sqlite://<path> or memory://"
    )))
}
