//! A PostgreSQL store on sqlx: a connection pool, one statement per operation where possible.
//!
//! PostgreSQL runs concurrent writers itself, so unlike the SQLite store there is
//! no writer thread here: every call takes a pooled connection and runs its
//! statement. Scoping by user happens inside the statements (an item insert only
//! inserts when the user owns the thread, an attachment upsert only updates the
//! user's own row), so that no check-then-act race exists between two statements.
//!
//! Records are kept as JSON text rather than JSONB: JSONB rejects the `\u0000`
//! escape a string may legitimately contain, and nothing here queries inside a
//! record, so text round-trips every record exactly and costs no conversion.
//! Order is the `seq` column (insertion order), never `created_at`, because two
//! records may share a timestamp.

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};

use super::record::{effective_limit, fetch_limit, finish_listing, found, from_json, to_json, Window};
use super::{
    Entity, ListQuery, Listing, PageQuery, SessionRecord, Store, StoreError, StoreResult, UserId, SESSION_BY_SECRET,
};
use crate::protocol::{Attachment, Order, Page, ThreadItem, ThreadMetadata};

/// One step of the schema. A later version appends a step; steps never change
/// once released, because existing databases have already applied them.
struct Migration {
    version: i64,
    sql: &'static str,
}

/// The schema, in the order it is applied. Versions must increase.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: r#"
CREATE TABLE threads (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX threads_by_user ON threads (user_id, seq);

CREATE TABLE items (
    seq BIGSERIAL PRIMARY KEY,
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
    },
    // ChatKit sessions. The secret's hash is unique so that a secret finds one
    // session; the settings are JSON text like the records above.
    Migration {
        version: 2,
        sql: r#"
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    cancelled BOOLEAN NOT NULL DEFAULT FALSE,
    settings TEXT NOT NULL
);
"#,
    },
];

const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())";
const CURRENT_VERSION: &str = "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations";
const MIGRATION_APPLIED: &str = "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)";
const RECORD_MIGRATION: &str = "INSERT INTO schema_migrations (version) VALUES ($1)";

/// The advisory lock key that serializes migrators: two processes starting on a
/// fresh database would otherwise both create the same tables, and one would fail.
/// The value is arbitrary but fixed ("chatkit" in ASCII), so every build agrees on it.
const MIGRATION_LOCK: i64 = 0x63_68_61_74_6b_69_74;
const TAKE_MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

/// Connections the pool may open by default. Each request holds one only for
/// a statement, so a few dozen serve many concurrent requests without
/// exhausting the server's own connection limit (100 by default, shared by
/// every replica).
pub const DEFAULT_POOL_SIZE: u32 = 16;

/// A store in one PostgreSQL database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Where the database is, without any password, for `Debug` and errors.
    location: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("database", &self.location).finish_non_exhaustive()
    }
}

/// The URL with any password replaced, because a connection failure is logged
/// and credentials must not end up in logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

fn backend_error(err: sqlx::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Maps an insert's failure: a uniqueness violation is `Duplicate`, and a foreign
/// key violation means the thread was deleted between the statement's check and
/// its insert, so the thread is reported missing as it would be a moment later.
fn insert_error(err: sqlx::Error, entity: Entity, id: &str, thread_id: &str) -> StoreError {
    if let sqlx::Error::Database(database) = &err {
        if database.is_unique_violation() {
            return StoreError::Duplicate { entity, id: id.to_owned() };
        }
        if database.is_foreign_key_violation() {
            return StoreError::not_found(Entity::Thread, thread_id);
        }
    }
    backend_error(err)
}

/// A text column of a row, borrowed so that JSON is parsed without a copy.
fn text(row: &PgRow, index: usize) -> StoreResult<&str> {
    row.try_get(index).map_err(backend_error)
}

/// Turns `(id, json)` rows, fetched up to one beyond the page (see `fetch_limit`), into a page.
fn into_page<T: DeserializeOwned>(rows: &[PgRow], limit: usize) -> StoreResult<Page<T>> {
    let has_more = rows.len() > limit;
    // The row beyond the page is not returned: it only tells that more follow.
    let rows = &rows[..rows.len().min(limit)];
    let data = rows.iter().map(|row| from_json(text(row, 1)?)).collect::<StoreResult<Vec<T>>>()?;
    let after = match (has_more, rows.last()) {
        (true, Some(last)) => Some(text(last, 0)?.to_owned()),
        _ => None,
    };
    Ok(Page { data, has_more, after })
}

/// Turns an admin listing's rows, fetched in scan order up to one beyond the
/// page (see `fetch_limit`), into the listing.
fn into_listing<T>(
    rows: &[PgRow],
    limit: usize,
    window: Window<i64>,
    parse: impl Fn(&PgRow) -> StoreResult<T>,
) -> StoreResult<Listing<T>> {
    let has_more = rows.len() > limit;
    // The row beyond the page is not parsed: it only tells that more follow.
    let data = rows[..rows.len().min(limit)].iter().map(parse).collect::<StoreResult<Vec<T>>>()?;
    Ok(finish_listing(data, has_more, window.reverse))
}

/// Fails with `UnknownCursor` when a cursor was given but named no record of the listing.
fn known_cursor(cursor: Option<&String>, seq: Option<i64>) -> StoreResult<()> {
    match (cursor, seq) {
        (Some(cursor), None) => Err(StoreError::UnknownCursor(cursor.clone())),
        _ => Ok(()),
    }
}

/// A session from a row of the columns every session statement selects.
fn session_from_row(row: &PgRow) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        id: text(row, 0)?.to_owned(),
        secret_hash: text(row, 1)?.to_owned(),
        user: text(row, 2)?.to_owned(),
        created_at: row.try_get(3).map_err(backend_error)?,
        expires_at: row.try_get(4).map_err(backend_error)?,
        cancelled: row.try_get(5).map_err(backend_error)?,
        settings: from_json(text(row, 6)?)?,
    })
}

/// Brings the schema up to date, one migration per transaction.
///
/// Every transaction first takes the same advisory lock, so a second process
/// migrating at the same time waits and then finds the step already applied.
/// The lock is transaction-scoped, so a crashed migrator cannot leave it held.
async fn migrate(pool: &PgPool) -> StoreResult<()> {
    let mut conn = pool.acquire().await.map_err(backend_error)?;
    let mut tx = conn.begin().await.map_err(backend_error)?;
    sqlx::query(TAKE_MIGRATION_LOCK).bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(backend_error)?;
    sqlx::query(CREATE_MIGRATIONS_TABLE).execute(&mut *tx).await.map_err(backend_error)?;
    let current: i64 = sqlx::query_scalar(CURRENT_VERSION).fetch_one(&mut *tx).await.map_err(backend_error)?;
    tx.commit().await.map_err(backend_error)?;
    if current > PostgresStore::SCHEMA_VERSION {
        // An older build over a newer database: the schema only grows, so the
        // tables this build uses are still there.
        tracing::warn!(current, known = PostgresStore::SCHEMA_VERSION, "database schema is newer than this build");
    }
    for migration in MIGRATIONS.iter().filter(|migration| migration.version > current) {
        // A failed step rolls back when the transaction is dropped uncommitted,
        // leaving the database at the previous version.
        let mut tx = conn.begin().await.map_err(backend_error)?;
        sqlx::query(TAKE_MIGRATION_LOCK).bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(backend_error)?;
        // Another process may have applied the step while this one waited for the lock.
        let applied: bool = sqlx::query_scalar(MIGRATION_APPLIED)
            .bind(migration.version)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend_error)?;
        if !applied {
            sqlx::raw_sql(migration.sql)
                .execute(&mut *tx)
                .await
                .map_err(|err| StoreError::Backend(format!("schema migration {} failed: {err}", migration.version)))?;
            sqlx::query(RECORD_MIGRATION).bind(migration.version).execute(&mut *tx).await.map_err(backend_error)?;
        }
        tx.commit().await.map_err(backend_error)?;
    }
    Ok(())
}

impl PostgresStore {
    /// The schema version this build brings a database up to.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

    /// Connects to the database a `postgres://` or `postgresql://` URL names and
    /// brings its schema up to date.
    pub async fn open(url: &str) -> StoreResult<Self> {
        Self::open_with_pool(url, DEFAULT_POOL_SIZE).await
    }

    /// As `open`, with at most `pool_size` connections.
    pub async fn open_with_pool(url: &str, pool_size: u32) -> StoreResult<Self> {
        let location = redact(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Backend(format!("`{location}` is not a postgres:// URL")));
        }
        let options = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::Backend(format!("`{location}` is not a valid PostgreSQL URL: {err}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .connect_with(options)
            .await
            .map_err(|err| StoreError::Backend(format!("cannot connect to PostgreSQL at `{location}`: {err}")))?;
        migrate(&pool).await?;
        Ok(PostgresStore { pool, location })
    }

    /// The highest schema version applied to this database.
    pub async fn schema_version(&self) -> StoreResult<i64> {
        sqlx::query_scalar(CURRENT_VERSION).fetch_one(&self.pool).await.map_err(backend_error)
    }

    /// Closes the pool's connections once the calls in flight are done. Later
    /// calls on this store (or any clone) fail with a backend error.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs a statement that selects one JSON record, parsing it if there is one.
    async fn record<T: DeserializeOwned>(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> StoreResult<Option<T>> {
        match query.fetch_optional(&self.pool).await.map_err(backend_error)? {
            Some(row) => from_json(text(&row, 0)?).map(Some),
            None => Ok(None),
        }
    }

    /// Runs a statement that changes rows, giving how many it changed.
    async fn execute(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<u64, sqlx::Error> {
        Ok(query.execute(&self.pool).await?.rows_affected())
    }
}

const INSERT_THREAD: &str = "INSERT INTO threads (id, user_id, data) VALUES ($1, $2, $3)";
const LOAD_THREAD: &str = "SELECT data FROM threads WHERE id = $1 AND user_id = $2";
const FIND_THREAD: &str = "SELECT user_id, data FROM threads WHERE id = $1";
const UPDATE_THREAD: &str = "UPDATE threads SET data = $3 WHERE id = $1 AND user_id = $2";
const DELETE_THREAD: &str = "DELETE FROM threads WHERE id = $1 AND user_id = $2";
const THREAD_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = $1 AND user_id = $2)";

const THREADS_ASC: &str = "SELECT id, data FROM threads WHERE user_id = $1 ORDER BY seq ASC LIMIT $2";
const THREADS_DESC: &str = "SELECT id, data FROM threads WHERE user_id = $1 ORDER BY seq DESC LIMIT $2";
const THREADS_ASC_AFTER: &str = "SELECT id, data FROM threads WHERE user_id = $1 \
     AND seq > (SELECT seq FROM threads WHERE id = $3 AND user_id = $1) ORDER BY seq ASC LIMIT $2";
const THREADS_DESC_AFTER: &str = "SELECT id, data FROM threads WHERE user_id = $1 \
     AND seq < (SELECT seq FROM threads WHERE id = $3 AND user_id = $1) ORDER BY seq DESC LIMIT $2";

const ITEMS_ASC: &str = "SELECT id, data FROM items WHERE thread_id = $1 AND user_id = $2 ORDER BY seq ASC LIMIT $3";
const ITEMS_DESC: &str = "SELECT id, data FROM items WHERE thread_id = $1 AND user_id = $2 ORDER BY seq DESC LIMIT $3";
const ITEMS_ASC_AFTER: &str = "SELECT id, data FROM items WHERE thread_id = $1 AND user_id = $2 \
     AND seq > (SELECT seq FROM items WHERE thread_id = $1 AND id = $4 AND user_id = $2) ORDER BY seq ASC LIMIT $3";
const ITEMS_DESC_AFTER: &str = "SELECT id, data FROM items WHERE thread_id = $1 AND user_id = $2 \
     AND seq < (SELECT seq FROM items WHERE thread_id = $1 AND id = $4 AND user_id = $2) ORDER BY seq DESC LIMIT $3";
/// Tells apart why an item listing came back empty; a null cursor is never found.
const THREAD_AND_CURSOR_EXIST: &str = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = $1 AND user_id = $2), \
     EXISTS (SELECT 1 FROM items WHERE thread_id = $1 AND id = $3 AND user_id = $2)";

/// The positions of an admin thread listing's cursors (`$1` after, `$2` before):
/// null for a missing cursor, and for one that names no thread of the listing,
/// which with a user (`$3`) holds only that user's threads.
const THREAD_CURSORS: &str = "SELECT (SELECT seq FROM threads WHERE id = $1 AND ($3::TEXT IS NULL OR user_id = $3)), \
     (SELECT seq FROM threads WHERE id = $2 AND ($3::TEXT IS NULL OR user_id = $3))";
/// A window of every user's threads, scanned along the primary key.
const ALL_THREADS_UP: &str = "SELECT user_id, data FROM threads WHERE seq > $1 AND seq < $2 ORDER BY seq ASC LIMIT $3";
const ALL_THREADS_DOWN: &str =
    "SELECT user_id, data FROM threads WHERE seq > $1 AND seq < $2 ORDER BY seq DESC LIMIT $3";
/// A window of one user's threads, scanned along `threads_by_user`.
const USER_THREADS_UP: &str =
    "SELECT user_id, data FROM threads WHERE user_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq ASC LIMIT $4";
const USER_THREADS_DOWN: &str =
    "SELECT user_id, data FROM threads WHERE user_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq DESC LIMIT $4";
/// Whether the user owns the thread, and the positions of an admin item
/// listing's cursors (`$3` after, `$4` before) among its items.
const ITEM_CURSORS: &str = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = $1 AND user_id = $2), \
     (SELECT seq FROM items WHERE thread_id = $1 AND id = $3 AND user_id = $2), \
     (SELECT seq FROM items WHERE thread_id = $1 AND id = $4 AND user_id = $2)";
/// A window of a thread's items, scanned along `items_by_thread`.
const ITEMS_UP: &str = "SELECT data FROM items WHERE thread_id = $1 AND user_id = $2 \
     AND seq > $3 AND seq < $4 ORDER BY seq ASC LIMIT $5";
const ITEMS_DOWN: &str = "SELECT data FROM items WHERE thread_id = $1 AND user_id = $2 \
     AND seq > $3 AND seq < $4 ORDER BY seq DESC LIMIT $5";

const LOAD_ITEM: &str = "SELECT data FROM items WHERE thread_id = $1 AND id = $2 AND user_id = $3";
/// Appends an item, but only to a thread the user owns: no row is inserted otherwise.
const INSERT_ITEM: &str = "INSERT INTO items (id, thread_id, user_id, data) SELECT $1, $2, $3, $4 \
     WHERE EXISTS (SELECT 1 FROM threads WHERE id = $2 AND user_id = $3)";
/// As `INSERT_ITEM`, but an existing item is updated in place, keeping its `seq`.
const UPSERT_ITEM: &str = "INSERT INTO items (id, thread_id, user_id, data) SELECT $1, $2, $3, $4 \
     WHERE EXISTS (SELECT 1 FROM threads WHERE id = $2 AND user_id = $3) \
     ON CONFLICT (thread_id, id) DO UPDATE SET data = EXCLUDED.data";
const DELETE_ITEM: &str = "DELETE FROM items WHERE thread_id = $1 AND id = $2 AND user_id = $3";

/// Inserts or replaces an attachment, but never one another user owns.
const UPSERT_ATTACHMENT: &str = "INSERT INTO attachments (id, user_id, data) VALUES ($1, $2, $3) \
     ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data WHERE attachments.user_id = EXCLUDED.user_id";
const LOAD_ATTACHMENT: &str = "SELECT data FROM attachments WHERE id = $1 AND user_id = $2";
const DELETE_ATTACHMENT: &str = "DELETE FROM attachments WHERE id = $1 AND user_id = $2";

const INSERT_SESSION: &str = "INSERT INTO sessions \
     (id, secret_hash, user_id, created_at, expires_at, cancelled, settings) VALUES ($1, $2, $3, $4, $5, $6, $7)";
// Every statement that reads a session selects the columns in the order `session_from_row` reads them.
const LOAD_SESSION: &str = "SELECT id, secret_hash, user_id, created_at, expires_at, cancelled, settings \
     FROM sessions WHERE id = $1";
const FIND_SESSION: &str = "SELECT id, secret_hash, user_id, created_at, expires_at, cancelled, settings \
     FROM sessions WHERE secret_hash = $1";
const CANCEL_SESSION: &str = "UPDATE sessions SET cancelled = TRUE WHERE id = $1 \
     RETURNING id, secret_hash, user_id, created_at, expires_at, cancelled, settings";

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let query = sqlx::query(INSERT_THREAD).bind(&thread.id).bind(user.as_str()).bind(to_json(thread)?);
        self.execute(query).await.map_err(|err| insert_error(err, Entity::Thread, &thread.id, &thread.id))?;
        Ok(())
    }

    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata> {
        self.record(sqlx::query(LOAD_THREAD).bind(thread_id).bind(user.as_str()))
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Thread, thread_id))
    }

    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)> {
        let row = sqlx::query(FIND_THREAD).bind(thread_id).fetch_optional(&self.pool).await.map_err(backend_error)?;
        match row {
            Some(row) => Ok((UserId(text(&row, 0)?.to_owned()), from_json(text(&row, 1)?)?)),
            None => Err(StoreError::not_found(Entity::Thread, thread_id)),
        }
    }

    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let query = sqlx::query(UPDATE_THREAD).bind(&thread.id).bind(user.as_str()).bind(to_json(thread)?);
        found(self.execute(query).await.map_err(backend_error)? > 0, Entity::Thread, &thread.id)
    }

    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        // The items go with the thread through `ON DELETE CASCADE`.
        found(
            self.execute(sqlx::query(DELETE_THREAD).bind(thread_id).bind(user.as_str()))
                .await
                .map_err(backend_error)?
                > 0,
            Entity::Thread,
            thread_id,
        )
    }

    async fn load_threads(&self, user: &UserId, query: &PageQuery) -> StoreResult<Page<ThreadMetadata>> {
        let limit = effective_limit(query.limit);
        let statement = match (&query.after, query.order) {
            (None, Order::Asc) => THREADS_ASC,
            (None, Order::Desc) => THREADS_DESC,
            (Some(_), Order::Asc) => THREADS_ASC_AFTER,
            (Some(_), Order::Desc) => THREADS_DESC_AFTER,
        };
        let mut select = sqlx::query(statement).bind(user.as_str()).bind(fetch_limit(limit));
        if let Some(after) = &query.after {
            select = select.bind(after);
        }
        let rows = select.fetch_all(&self.pool).await.map_err(backend_error)?;
        let page = into_page(&rows, limit)?;
        if let (true, Some(after)) = (page.data.is_empty(), &query.after) {
            // An unknown cursor also yields no rows; only then is it worth a
            // second statement to tell it from the end of the listing.
            let known: bool = sqlx::query_scalar(THREAD_EXISTS)
                .bind(after)
                .bind(user.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(backend_error)?;
            if !known {
                return Err(StoreError::UnknownCursor(after.clone()));
            }
        }
        Ok(page)
    }

    async fn load_items(&self, user: &UserId, thread_id: &str, query: &PageQuery) -> StoreResult<Page<ThreadItem>> {
        let limit = effective_limit(query.limit);
        let statement = match (&query.after, query.order) {
            (None, Order::Asc) => ITEMS_ASC,
            (None, Order::Desc) => ITEMS_DESC,
            (Some(_), Order::Asc) => ITEMS_ASC_AFTER,
            (Some(_), Order::Desc) => ITEMS_DESC_AFTER,
        };
        let mut select = sqlx::query(statement).bind(thread_id).bind(user.as_str()).bind(fetch_limit(limit));
        if let Some(after) = &query.after {
            select = select.bind(after);
        }
        let rows = select.fetch_all(&self.pool).await.map_err(backend_error)?;
        let page = into_page(&rows, limit)?;
        if page.data.is_empty() {
            // No rows may mean an empty thread, the end of the listing, a missing or
            // foreign thread, or an unknown cursor; one more statement tells which.
            let (thread_known, cursor_known): (bool, bool) = sqlx::query_as(THREAD_AND_CURSOR_EXIST)
                .bind(thread_id)
                .bind(user.as_str())
                .bind(query.after.as_deref())
                .fetch_one(&self.pool)
                .await
                .map_err(backend_error)?;
            if !thread_known {
                return Err(StoreError::not_found(Entity::Thread, thread_id));
            }
            if let (Some(after), false) = (&query.after, cursor_known) {
                return Err(StoreError::UnknownCursor(after.clone()));
            }
        }
        Ok(page)
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        self.record(sqlx::query(LOAD_ITEM).bind(thread_id).bind(item_id).bind(user.as_str()))
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Item, item_id))
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let query =
            sqlx::query(INSERT_ITEM).bind(&item.id).bind(&item.thread_id).bind(user.as_str()).bind(to_json(item)?);
        found(
            self.execute(query).await.map_err(|err| insert_error(err, Entity::Item, &item.id, &item.thread_id))? > 0,
            Entity::Thread,
            &item.thread_id,
        )
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let query =
            sqlx::query(UPSERT_ITEM).bind(&item.id).bind(&item.thread_id).bind(user.as_str()).bind(to_json(item)?);
        found(
            self.execute(query).await.map_err(|err| insert_error(err, Entity::Item, &item.id, &item.thread_id))? > 0,
            Entity::Thread,
            &item.thread_id,
        )
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        let query = sqlx::query(DELETE_ITEM).bind(thread_id).bind(item_id).bind(user.as_str());
        found(self.execute(query).await.map_err(backend_error)? > 0, Entity::Item, item_id)
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        let query = sqlx::query(UPSERT_ATTACHMENT).bind(&attachment.id).bind(user.as_str()).bind(to_json(attachment)?);
        // No row changed: the id belongs to another user's attachment, which stays
        // untouched and is reported as missing so that its existence does not leak.
        found(self.execute(query).await.map_err(backend_error)? > 0, Entity::Attachment, &attachment.id)
    }

    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment> {
        self.record(sqlx::query(LOAD_ATTACHMENT).bind(attachment_id).bind(user.as_str()))
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Attachment, attachment_id))
    }

    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()> {
        let query = sqlx::query(DELETE_ATTACHMENT).bind(attachment_id).bind(user.as_str());
        found(self.execute(query).await.map_err(backend_error)? > 0, Entity::Attachment, attachment_id)
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let query = sqlx::query(INSERT_SESSION)
            .bind(&session.id)
            .bind(&session.secret_hash)
            .bind(&session.user)
            .bind(session.created_at)
            .bind(session.expires_at)
            .bind(session.cancelled)
            .bind(to_json(&session.settings)?);
        // A taken secret hash is reported under the new session's id, never as the hash.
        self.execute(query).await.map_err(|err| insert_error(err, Entity::Session, &session.id, &session.id))?;
        Ok(())
    }

    async fn load_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let row = sqlx::query(LOAD_SESSION).bind(session_id).fetch_optional(&self.pool).await.map_err(backend_error)?;
        row.as_ref().map(session_from_row).unwrap_or_else(|| Err(StoreError::not_found(Entity::Session, session_id)))
    }

    async fn find_session(&self, secret_hash: &str) -> StoreResult<SessionRecord> {
        let row =
            sqlx::query(FIND_SESSION).bind(secret_hash).fetch_optional(&self.pool).await.map_err(backend_error)?;
        row.as_ref()
            .map(session_from_row)
            .unwrap_or_else(|| Err(StoreError::not_found(Entity::Session, SESSION_BY_SECRET)))
    }

    async fn cancel_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let row =
            sqlx::query(CANCEL_SESSION).bind(session_id).fetch_optional(&self.pool).await.map_err(backend_error)?;
        row.as_ref().map(session_from_row).unwrap_or_else(|| Err(StoreError::not_found(Entity::Session, session_id)))
    }

    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Listing<(UserId, ThreadMetadata)>> {
        let limit = effective_limit(query.limit);
        let user = user.map(UserId::as_str);
        let (mut after_seq, mut before_seq) = (None, None);
        if query.after.is_some() || query.before.is_some() {
            (after_seq, before_seq) = sqlx::query_as(THREAD_CURSORS)
                .bind(query.after.as_deref())
                .bind(query.before.as_deref())
                .bind(user)
                .fetch_one(&self.pool)
                .await
                .map_err(backend_error)?;
            known_cursor(query.after.as_ref(), after_seq)?;
            known_cursor(query.before.as_ref(), before_seq)?;
        }
        let window = Window::new(query.order, after_seq, before_seq);
        let (low, high) = window.sql_bounds();
        let select = match (user, window.ascending) {
            (None, true) => sqlx::query(ALL_THREADS_UP),
            (None, false) => sqlx::query(ALL_THREADS_DOWN),
            (Some(user), true) => sqlx::query(USER_THREADS_UP).bind(user),
            (Some(user), false) => sqlx::query(USER_THREADS_DOWN).bind(user),
        };
        let rows =
            select.bind(low).bind(high).bind(fetch_limit(limit)).fetch_all(&self.pool).await.map_err(backend_error)?;
        into_listing(&rows, limit, window, |row| Ok((UserId(text(row, 0)?.to_owned()), from_json(text(row, 1)?)?)))
    }

    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Listing<ThreadItem>> {
        let limit = effective_limit(query.limit);
        let (mut after_seq, mut before_seq) = (None, None);
        let cursors = query.after.is_some() || query.before.is_some();
        if cursors {
            let thread_known: bool;
            (thread_known, after_seq, before_seq) = sqlx::query_as(ITEM_CURSORS)
                .bind(thread_id)
                .bind(user.as_str())
                .bind(query.after.as_deref())
                .bind(query.before.as_deref())
                .fetch_one(&self.pool)
                .await
                .map_err(backend_error)?;
            if !thread_known {
                return Err(StoreError::not_found(Entity::Thread, thread_id));
            }
            known_cursor(query.after.as_ref(), after_seq)?;
            known_cursor(query.before.as_ref(), before_seq)?;
        }
        let window = Window::new(query.order, after_seq, before_seq);
        let (low, high) = window.sql_bounds();
        let rows = sqlx::query(if window.ascending { ITEMS_UP } else { ITEMS_DOWN })
            .bind(thread_id)
            .bind(user.as_str())
            .bind(low)
            .bind(high)
            .bind(fetch_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend_error)?;
        let listing = into_listing(&rows, limit, window, |row| from_json(text(row, 0)?))?;
        if listing.data.is_empty() && !cursors {
            // Without cursors no rows may also mean a missing or foreign thread,
            // which only then is worth a second statement.
            let known: bool = sqlx::query_scalar(THREAD_EXISTS)
                .bind(thread_id)
                .bind(user.as_str())
                .fetch_one(&self.pool)
                .await
                .map_err(backend_error)?;
            if !known {
                return Err(StoreError::not_found(Entity::Thread, thread_id));
            }
        }
        Ok(listing)
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&self.pool).await.map_err(backend_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgresql://h/db"), "postgresql://h/db");
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
    }
}
