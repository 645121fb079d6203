//! Persistence of threads, items and attachments behind one trait.
//!
//! Every call is scoped to a user: another user's thread, item or attachment is
//! indistinguishable from a missing one. Backends are same-shaped files
//! (`memory`, `sqlite`, `postgres`) and one contract suite
//! (`tests/store_contract.rs`) runs against each.

mod memory;
mod postgres;
mod record;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::protocol::{Attachment, Order, Page, ThreadItem, ThreadMetadata};

pub use memory::MemoryStore;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Who a request acts for. Stores scope every read and write by it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub String);

impl UserId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which record a `NotFound` is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Thread,
    Item,
    Attachment,
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Entity::Thread => "thread",
            Entity::Item => "item",
            Entity::Attachment => "attachment",
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
    /// A record with this id already exists.
    #[error("{entity} `{id}` already exists")]
    Duplicate { entity: Entity, id: String },
    /// The backend failed; the message is for logs, not for clients.
    #[error("store backend failed: {0}")]
    Backend(String),
}

impl StoreError {
    pub fn not_found(entity: Entity, id: impl Into<String>) -> Self {
        StoreError::NotFound { entity, id: id.into() }
    }
}

/// A page request: up to `limit` records after the cursor, in `order`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageQuery {
    pub after: Option<String>,
    pub limit: usize,
    pub order: Order,
}

impl PageQuery {
    pub fn first(limit: usize, order: Order) -> Self {
        PageQuery { after: None, limit, order }
    }
}

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
    async fn load_threads(&self, user: &UserId, query: &PageQuery) -> StoreResult<Page<ThreadMetadata>>;
    /// Finds a thread by id alone, with its owner: for admin operations, which
    /// act on a thread without acting as its user.
    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)>;

    async fn load_items(&self, user: &UserId, thread_id: &str, query: &PageQuery) -> StoreResult<Page<ThreadItem>>;
    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem>;
    /// Appends a new item to its thread (`item.thread_id`).
    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()>;
    /// Replaces an item in place, keeping its position; appends it when new.
    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()>;
    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()>;

    /// Inserts or replaces an attachment.
    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()>;
    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment>;
    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()>;

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
