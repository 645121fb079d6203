//! A SQLite store: one writer connection, a pool of readers, records kept as JSON text.
//!
//! Every write goes through a pool of exactly one connection, so writers queue in
//! the process instead of fighting over SQLite's lock (no `SQLITE_BUSY`); reads
//! use a separate pool and run in parallel under WAL. Each operation is one
//! statement on its hot path, prepared once per connection by sqlx's statement
//! cache. Order is the `seq` column (insertion order), never `created_at`,
//! because two records may share a timestamp.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

use super::{Entity, PageQuery, Store, StoreError, StoreResult, UserId};
use crate::protocol::{Attachment, Order, Page, ThreadItem, ThreadMetadata, DEFAULT_PAGE_SIZE};

/// One step of the schema. A later version appends a step; steps never change
/// once released, because existing databases have already applied them.
struct Migration {
    version: i64,
    sql: &'static str,
}

/// The schema, in the order it is applied. Versions must increase.
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: r#"
CREATE TABLE threads (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX threads_by_user ON threads (user_id, seq);

CREATE TABLE items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    thread_id TEXT NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL,
    UNIQUE (thread_id, id)
);
CREATE INDEX items_by_thread ON items (thread_id, seq);

CREATE TABLE attachments (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL
);
"#,
}];

const CREATE_MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)";

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A store in one SQLite database file (or one in-memory database).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// Exactly one connection: all writes are serialized here.
    write: SqlitePool,
    /// Several connections for reads; the same pool as `write` for an in-memory database.
    read: SqlitePool,
}

/// Where a URL says the database lives.
enum Location<'a> {
    Memory,
    File(&'a str),
}

fn parse_url(url: &str) -> StoreResult<Location<'_>> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::Backend(format!("`{url}` is not a sqlite: URL")))?;
    if rest == ":memory:" {
        return Ok(Location::Memory);
    }
    if rest.is_empty() {
        return Err(StoreError::Backend(format!("`{url}` names no database file")));
    }
    if rest.contains('?') {
        // Connection parameters would silently override the journal and sync
        // settings this store depends on, so they are refused rather than ignored.
        return Err(StoreError::Backend(format!("`{url}`: query parameters are not supported in a sqlite URL")));
    }
    Ok(Location::File(rest))
}

fn backend_error(err: sqlx::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Maps an insert's failure, turning a uniqueness violation into `Duplicate`.
fn insert_error(err: sqlx::Error, entity: Entity, id: &str) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Duplicate { entity, id: id.to_owned() },
        _ => backend_error(err),
    }
}

fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|err| StoreError::Backend(format!("cannot serialize record: {err}")))
}

fn from_json<T: DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|err| StoreError::Backend(format!("stored record does not parse: {err}")))
}

/// A zero limit would give an empty page that can never advance, so it means
/// the protocol's default page size, as it does on the wire.
fn effective_limit(limit: usize) -> usize {
    if limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        limit
    }
}

/// The SQL `LIMIT` that fetches one row beyond the page, which tells whether more follow.
fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

/// Turns fetched `(id, json)` rows (up to one beyond the page) into a page.
fn build_page<T: DeserializeOwned>(mut rows: Vec<(String, String)>, limit: usize) -> StoreResult<Page<T>> {
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let after = if has_more { rows.last().map(|(id, _)| id.clone()) } else { None };
    let data = rows.iter().map(|(_, json)| from_json(json)).collect::<StoreResult<Vec<T>>>()?;
    Ok(Page { data, has_more, after })
}

impl SqliteStore {
    /// The schema version this build creates and expects.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

    /// Opens (creating if missing) the database a URL names and brings its schema up to date.
    ///
    /// Accepts `sqlite://relative/path.db`, `sqlite:///abs/path.db` and `sqlite::memory:`.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let store = match parse_url(url)? {
            Location::Memory => Self::open_memory().await?,
            Location::File(path) => Self::open_file(Path::new(path)).await?,
        };
        migrate(&store.write).await?;
        Ok(store)
    }

    async fn open_memory() -> StoreResult<SqliteStore> {
        // Each in-memory connection would be a database of its own, so one
        // connection serves reads and writes, and it is never recycled: closing
        // it would drop the data.
        let options = SqliteConnectOptions::from_str("sqlite::memory:")
            .map_err(backend_error)?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(backend_error)?;
        Ok(SqliteStore { write: pool.clone(), read: pool })
    }

    async fn open_file(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|err| StoreError::Backend(format!("cannot create directory `{}`: {err}", parent.display())))?;
        }
        let base = SqliteConnectOptions::new()
            .filename(path)
            .foreign_keys(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT);

        // The writer is opened first: it creates the file and switches it to WAL,
        // a setting the file keeps, so readers need not (and should not) change it.
        let write_options = base.clone().create_if_missing(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(write_options)
            .await
            .map_err(|err| StoreError::Backend(format!("cannot open `{}`: {err}", path.display())))?;
        enable_wal(&write).await.map_err(|err| match err {
            StoreError::Backend(message) => StoreError::Backend(format!("cannot open `{}`: {message}", path.display())),
            other => other,
        })?;

        // `query_only` turns an accidental write on a reader into an error instead
        // of a second writer contending for the lock.
        let read_options = base.pragma("query_only", "ON");
        let readers = std::thread::available_parallelism().map_or(4, |n| n.get()).clamp(2, 8);
        let read = SqlitePoolOptions::new()
            .max_connections(u32::try_from(readers).unwrap_or(4))
            .connect_lazy_with(read_options);
        Ok(SqliteStore { write, read })
    }

    /// The highest schema version applied to this database.
    pub async fn schema_version(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            .fetch_one(&self.read)
            .await
            .map_err(backend_error)
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// Whether an error is SQLite's "the file is locked" (`SQLITE_BUSY` or `SQLITE_LOCKED`, extended or not).
fn is_busy(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Switches the database file to WAL, which it then keeps for good.
///
/// Changing the journal mode needs an exclusive lock that SQLite's busy timeout
/// does not wait for, so when two processes create the same file at once, one
/// of them retries here for as long as the busy timeout would have waited.
async fn enable_wal(pool: &SqlitePool) -> StoreResult<()> {
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL").fetch_one(pool).await {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(StoreError::Backend(format!("the database refused WAL journal mode (it is `{mode}`)")))
            }
            Err(err) if is_busy(&err) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => return Err(backend_error(err)),
        }
    }
}

/// Applies the migrations this database lacks, each in its own transaction.
async fn migrate(pool: &SqlitePool) -> StoreResult<()> {
    sqlx::raw_sql(CREATE_MIGRATIONS_TABLE).execute(pool).await.map_err(backend_error)?;
    let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        .fetch_one(pool)
        .await
        .map_err(backend_error)?;
    if current > SqliteStore::SCHEMA_VERSION {
        // An older build over a newer database: the schema only grows, so the
        // tables this build uses are still there.
        tracing::warn!(current, known = SqliteStore::SCHEMA_VERSION, "database schema is newer than this build");
    }
    for migration in MIGRATIONS.iter().filter(|migration| migration.version > current) {
        // IMMEDIATE takes the write lock up front, so a second process opening the
        // same file waits here and then sees the version as applied.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend_error)?;
        let applied: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?1")
            .bind(migration.version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend_error)?;
        if applied.is_none() {
            sqlx::raw_sql(migration.sql)
                .execute(&mut *tx)
                .await
                .map_err(|err| StoreError::Backend(format!("schema migration {} failed: {err}", migration.version)))?;
            sqlx::query(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            )
            .bind(migration.version)
            .execute(&mut *tx)
            .await
            .map_err(backend_error)?;
        }
        tx.commit().await.map_err(backend_error)?;
    }
    Ok(())
}

const THREADS_ASC: &str = "SELECT id, data FROM threads WHERE user_id = ?1 ORDER BY seq ASC LIMIT ?2";
const THREADS_DESC: &str = "SELECT id, data FROM threads WHERE user_id = ?1 ORDER BY seq DESC LIMIT ?2";
const THREADS_ASC_AFTER: &str = "SELECT id, data FROM threads WHERE user_id = ?1 \
     AND seq > (SELECT seq FROM threads WHERE id = ?3 AND user_id = ?1) ORDER BY seq ASC LIMIT ?2";
const THREADS_DESC_AFTER: &str = "SELECT id, data FROM threads WHERE user_id = ?1 \
     AND seq < (SELECT seq FROM threads WHERE id = ?3 AND user_id = ?1) ORDER BY seq DESC LIMIT ?2";

const ITEMS_ASC: &str = "SELECT id, data FROM items WHERE thread_id = ?1 AND user_id = ?2 ORDER BY seq ASC LIMIT ?3";
const ITEMS_DESC: &str = "SELECT id, data FROM items WHERE thread_id = ?1 AND user_id = ?2 ORDER BY seq DESC LIMIT ?3";
const ITEMS_ASC_AFTER: &str = "SELECT id, data FROM items WHERE thread_id = ?1 AND user_id = ?2 \
     AND seq > (SELECT seq FROM items WHERE thread_id = ?1 AND id = ?4 AND user_id = ?2) ORDER BY seq ASC LIMIT ?3";
const ITEMS_DESC_AFTER: &str = "SELECT id, data FROM items WHERE thread_id = ?1 AND user_id = ?2 \
     AND seq < (SELECT seq FROM items WHERE thread_id = ?1 AND id = ?4 AND user_id = ?2) ORDER BY seq DESC LIMIT ?3";

/// Appends an item, but only to a thread the user owns: no row is inserted otherwise.
const INSERT_ITEM: &str = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
     WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3)";
/// As `INSERT_ITEM`, but an existing item is updated in place, keeping its `seq`.
const UPSERT_ITEM: &str = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
     WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3) \
     ON CONFLICT (thread_id, id) DO UPDATE SET data = excluded.data";
/// Inserts or replaces an attachment, but never one another user owns.
const UPSERT_ATTACHMENT: &str = "INSERT INTO attachments (id, user_id, data) VALUES (?1, ?2, ?3) \
     ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE attachments.user_id = excluded.user_id";

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let data = to_json(thread)?;
        sqlx::query("INSERT INTO threads (id, user_id, data) VALUES (?1, ?2, ?3)")
            .bind(thread.id.as_str())
            .bind(user.as_str())
            .bind(data)
            .execute(&self.write)
            .await
            .map_err(|err| insert_error(err, Entity::Thread, &thread.id))?;
        Ok(())
    }

    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata> {
        let data: Option<String> = sqlx::query_scalar("SELECT data FROM threads WHERE id = ?1 AND user_id = ?2")
            .bind(thread_id)
            .bind(user.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(backend_error)?;
        match data {
            Some(data) => from_json(&data),
            None => Err(StoreError::not_found(Entity::Thread, thread_id)),
        }
    }

    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let data = to_json(thread)?;
        let done = sqlx::query("UPDATE threads SET data = ?3 WHERE id = ?1 AND user_id = ?2")
            .bind(thread.id.as_str())
            .bind(user.as_str())
            .bind(data)
            .execute(&self.write)
            .await
            .map_err(backend_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Thread, &thread.id));
        }
        Ok(())
    }

    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        // The items go with the thread through `ON DELETE CASCADE`.
        let done = sqlx::query("DELETE FROM threads WHERE id = ?1 AND user_id = ?2")
            .bind(thread_id)
            .bind(user.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Thread, thread_id));
        }
        Ok(())
    }

    async fn load_threads(&self, user: &UserId, query: &PageQuery) -> StoreResult<Page<ThreadMetadata>> {
        let limit = effective_limit(query.limit);
        let sql = match (query.order, query.after.is_some()) {
            (Order::Asc, false) => THREADS_ASC,
            (Order::Desc, false) => THREADS_DESC,
            (Order::Asc, true) => THREADS_ASC_AFTER,
            (Order::Desc, true) => THREADS_DESC_AFTER,
        };
        let mut statement = sqlx::query_as::<_, (String, String)>(sql).bind(user.as_str()).bind(fetch_limit(limit));
        if let Some(after) = &query.after {
            statement = statement.bind(after.as_str());
        }
        let rows = statement.fetch_all(&self.read).await.map_err(backend_error)?;
        if rows.is_empty() {
            if let Some(after) = &query.after {
                // An unknown cursor also yields no rows; only then is it worth a
                // second statement to tell it from the end of the listing.
                let known: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2)")
                        .bind(after.as_str())
                        .bind(user.as_str())
                        .fetch_one(&self.read)
                        .await
                        .map_err(backend_error)?;
                if !known {
                    return Err(StoreError::UnknownCursor(after.clone()));
                }
            }
        }
        build_page(rows, limit)
    }

    async fn load_items(&self, user: &UserId, thread_id: &str, query: &PageQuery) -> StoreResult<Page<ThreadItem>> {
        let limit = effective_limit(query.limit);
        let sql = match (query.order, query.after.is_some()) {
            (Order::Asc, false) => ITEMS_ASC,
            (Order::Desc, false) => ITEMS_DESC,
            (Order::Asc, true) => ITEMS_ASC_AFTER,
            (Order::Desc, true) => ITEMS_DESC_AFTER,
        };
        let mut statement =
            sqlx::query_as::<_, (String, String)>(sql).bind(thread_id).bind(user.as_str()).bind(fetch_limit(limit));
        if let Some(after) = &query.after {
            statement = statement.bind(after.as_str());
        }
        let rows = statement.fetch_all(&self.read).await.map_err(backend_error)?;
        if rows.is_empty() {
            // No rows may mean an empty thread, the end of the listing, a missing or
            // foreign thread, or an unknown cursor; one more statement tells which.
            let (thread_known, cursor_known): (bool, bool) = sqlx::query_as(
                "SELECT EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2), \
                 EXISTS (SELECT 1 FROM items WHERE thread_id = ?1 AND id = ?3 AND user_id = ?2)",
            )
            .bind(thread_id)
            .bind(user.as_str())
            .bind(query.after.as_deref())
            .fetch_one(&self.read)
            .await
            .map_err(backend_error)?;
            if !thread_known {
                return Err(StoreError::not_found(Entity::Thread, thread_id));
            }
            if let (Some(after), false) = (&query.after, cursor_known) {
                return Err(StoreError::UnknownCursor(after.clone()));
            }
        }
        build_page(rows, limit)
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        let data: Option<String> =
            sqlx::query_scalar("SELECT data FROM items WHERE thread_id = ?1 AND id = ?2 AND user_id = ?3")
                .bind(thread_id)
                .bind(item_id)
                .bind(user.as_str())
                .fetch_optional(&self.read)
                .await
                .map_err(backend_error)?;
        match data {
            Some(data) => from_json(&data),
            None => Err(StoreError::not_found(Entity::Item, item_id)),
        }
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let data = to_json(item)?;
        let done = sqlx::query(INSERT_ITEM)
            .bind(item.id.as_str())
            .bind(item.thread_id.as_str())
            .bind(user.as_str())
            .bind(data)
            .execute(&self.write)
            .await
            .map_err(|err| insert_error(err, Entity::Item, &item.id))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Thread, &item.thread_id));
        }
        Ok(())
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let data = to_json(item)?;
        let done = sqlx::query(UPSERT_ITEM)
            .bind(item.id.as_str())
            .bind(item.thread_id.as_str())
            .bind(user.as_str())
            .bind(data)
            .execute(&self.write)
            .await
            .map_err(backend_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Thread, &item.thread_id));
        }
        Ok(())
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM items WHERE thread_id = ?1 AND id = ?2 AND user_id = ?3")
            .bind(thread_id)
            .bind(item_id)
            .bind(user.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Item, item_id));
        }
        Ok(())
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        let data = to_json(attachment)?;
        let done = sqlx::query(UPSERT_ATTACHMENT)
            .bind(attachment.id.as_str())
            .bind(user.as_str())
            .bind(data)
            .execute(&self.write)
            .await
            .map_err(backend_error)?;
        if done.rows_affected() == 0 {
            // The id belongs to another user's attachment, which stays untouched and
            // is reported as missing so that its existence does not leak.
            return Err(StoreError::not_found(Entity::Attachment, &attachment.id));
        }
        Ok(())
    }

    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment> {
        let data: Option<String> = sqlx::query_scalar("SELECT data FROM attachments WHERE id = ?1 AND user_id = ?2")
            .bind(attachment_id)
            .bind(user.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(backend_error)?;
        match data {
            Some(data) => from_json(&data),
            None => Err(StoreError::not_found(Entity::Attachment, attachment_id)),
        }
    }

    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM attachments WHERE id = ?1 AND user_id = ?2")
            .bind(attachment_id)
            .bind(user.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_error)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Attachment, attachment_id));
        }
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.read).await.map_err(backend_error)?;
        Ok(())
    }
}
