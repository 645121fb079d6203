//! A PostgreSQL store on sqlx: a connection pool, one statement per operation where possible.
//!
//! PostgreSQL runs concurrent writers itself, so unlike the SQLite store there is
//! no writer thread here: every call takes a pooled connection and runs its
//! statement, from `store::sql` like the SQLite store's. Scoping by user happens
//! inside the statements (an item insert only inserts when the user owns the
//! thread, an attachment upsert only updates the user's own row), so that no
//! check-then-act race exists between two statements.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use async_trait::async_trait;
use serde_json::value::RawValue;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row};

use super::paging::{effective_limit, finish_page, Listed, Window};
use super::sql::{
    fetch_limit, found, pending_migrations, raw_json, to_json, Dialect, SqlRow, Statements, SCHEMA_VERSION,
};
use super::{
    Entity, Fence, FencedWrite, ListQuery, SessionRecord, Store, StoreError, StoreResult, UserId, SESSION_BY_SECRET,
};
use crate::protocol::{Attachment, ListedThread, Page, ThreadItem, ThreadMetadata};

/// The store's SQL, rendered for PostgreSQL once per process.
static SQL: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Postgres));

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

impl SqlRow for PgRow {
    fn text(&self, index: usize) -> StoreResult<&str> {
        self.try_get(index).map_err(backend_error)
    }

    fn integer(&self, index: usize) -> StoreResult<i64> {
        self.try_get(index).map_err(backend_error)
    }

    fn boolean(&self, index: usize) -> StoreResult<bool> {
        self.try_get(index).map_err(backend_error)
    }
}

/// Turns a window's rows, fetched in scan order up to one beyond the page (see
/// `fetch_limit`), into the page.
fn into_page<T: Listed>(
    rows: &[PgRow],
    limit: usize,
    window: &Window<i64>,
    parse: impl Fn(&PgRow) -> StoreResult<T>,
) -> StoreResult<Page<T>> {
    let has_more = rows.len() > limit;
    // The row beyond the page is not parsed: it only tells that more follow.
    let data = rows[..rows.len().min(limit)].iter().map(parse).collect::<StoreResult<Vec<T>>>()?;
    Ok(finish_page(data, has_more, window))
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
    sqlx::query(&SQL.create_migrations_table).execute(&mut *tx).await.map_err(backend_error)?;
    let current: i64 = sqlx::query_scalar(&SQL.current_version).fetch_one(&mut *tx).await.map_err(backend_error)?;
    tx.commit().await.map_err(backend_error)?;
    for migration in pending_migrations(current) {
        // A failed step rolls back when the transaction is dropped uncommitted,
        // leaving the database at the previous version.
        let mut tx = conn.begin().await.map_err(backend_error)?;
        sqlx::query(TAKE_MIGRATION_LOCK).bind(MIGRATION_LOCK).execute(&mut *tx).await.map_err(backend_error)?;
        // Another process may have applied the step while this one waited for the lock.
        let applied: bool = sqlx::query_scalar(&SQL.migration_applied)
            .bind(migration.version)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend_error)?;
        if !applied {
            sqlx::raw_sql(&migration.sql(Dialect::Postgres))
                .execute(&mut *tx)
                .await
                .map_err(|err| StoreError::Backend(format!("schema migration {} failed: {err}", migration.version)))?;
            sqlx::query(&SQL.record_migration)
                .bind(migration.version)
                .execute(&mut *tx)
                .await
                .map_err(backend_error)?;
        }
        tx.commit().await.map_err(backend_error)?;
    }
    Ok(())
}

/// A statement with its parameters bound.
type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

impl PostgresStore {
    /// A page of threads (of `user`, or of everyone), each read from its row by `parse`.
    async fn threads_page<T: Listed>(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
        parse: fn(&PgRow) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let limit = effective_limit(query.limit);
        let user = user.map(UserId::as_str);
        let (mut after_seq, mut before_seq) = (None, None);
        if query.has_cursor() {
            (after_seq, before_seq) = sqlx::query_as(&SQL.thread_cursors)
                .bind(query.after.as_deref())
                .bind(query.before.as_deref())
                .bind(user)
                .fetch_one(&self.pool)
                .await
                .map_err(backend_error)?;
        }
        let window = Window::of(query, after_seq, before_seq)?;
        let (low, high) = window.sql_bounds();
        let mut select = sqlx::query(SQL.threads_window(user.is_some(), window.ascending));
        if let Some(user) = user {
            select = select.bind(user);
        }
        let rows =
            select.bind(low).bind(high).bind(fetch_limit(limit)).fetch_all(&self.pool).await.map_err(backend_error)?;
        into_page(&rows, limit, &window, parse)
    }

    /// The schema version this build brings a database up to.
    pub const SCHEMA_VERSION: i64 = SCHEMA_VERSION;

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
        sqlx::query_scalar(&SQL.current_version).fetch_one(&self.pool).await.map_err(backend_error)
    }

    /// Closes the pool's connections once the calls in flight are done. Later
    /// calls on this store (or any clone) fail with a backend error.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs a statement that selects (or returns) at most one row, read with `parse`.
    async fn one<T>(&self, query: Query<'_>, parse: impl Fn(&PgRow) -> StoreResult<T>) -> StoreResult<Option<T>> {
        query.fetch_optional(&self.pool).await.map_err(backend_error)?.as_ref().map(parse).transpose()
    }

    /// Runs a statement that changes rows, telling whether it changed any.
    async fn changed(&self, query: Query<'_>) -> Result<bool, sqlx::Error> {
        Ok(query.execute(&self.pool).await?.rows_affected() > 0)
    }

    /// `NotFound` unless the user owns the thread: for a read that found no rows.
    async fn thread_known(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        let known: bool = sqlx::query_scalar(&SQL.thread_exists)
            .bind(thread_id)
            .bind(user.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(backend_error)?;
        found(known, Entity::Thread, thread_id)
    }

    /// Appends an item with `insert_item`, or writes it with `upsert_item`:
    /// both insert only into a thread the user owns.
    async fn write_item(&self, sql: &'static str, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let query = sqlx::query(sql).bind(&item.id).bind(&item.thread_id).bind(user.as_str()).bind(to_json(item)?);
        let changed =
            self.changed(query).await.map_err(|err| insert_error(err, Entity::Item, &item.id, &item.thread_id))?;
        found(changed, Entity::Thread, &item.thread_id)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let query = sqlx::query(&SQL.insert_thread).bind(&thread.id).bind(user.as_str()).bind(to_json(thread)?);
        self.changed(query).await.map_err(|err| insert_error(err, Entity::Thread, &thread.id, &thread.id))?;
        Ok(())
    }

    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata> {
        let query = sqlx::query(&SQL.load_thread).bind(thread_id).bind(user.as_str());
        self.one(query, |row| row.record(0)).await?.ok_or_else(|| StoreError::not_found(Entity::Thread, thread_id))
    }

    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let query = sqlx::query(&SQL.update_thread).bind(&thread.id).bind(user.as_str()).bind(to_json(thread)?);
        found(self.changed(query).await.map_err(backend_error)?, Entity::Thread, &thread.id)
    }

    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        // The items go with the thread through `ON DELETE CASCADE`.
        let query = sqlx::query(&SQL.delete_thread).bind(thread_id).bind(user.as_str());
        found(self.changed(query).await.map_err(backend_error)?, Entity::Thread, thread_id)
    }

    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Page<(UserId, ThreadMetadata)>> {
        self.threads_page(user, query, SqlRow::owned_thread).await
    }

    async fn list_listed_threads(&self, user: &UserId, query: &ListQuery) -> StoreResult<Page<ListedThread>> {
        self.threads_page(Some(user), query, SqlRow::listed_thread).await
    }

    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)> {
        let query = sqlx::query(&SQL.find_thread).bind(thread_id);
        self.one(query, SqlRow::owned_thread).await?.ok_or_else(|| StoreError::not_found(Entity::Thread, thread_id))
    }

    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Page<ThreadItem>> {
        let limit = effective_limit(query.limit);
        let (mut after_seq, mut before_seq) = (None, None);
        if query.has_cursor() {
            let thread_known: bool;
            (thread_known, after_seq, before_seq) = sqlx::query_as(&SQL.item_cursors)
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
        }
        let window = Window::of(query, after_seq, before_seq)?;
        let (low, high) = window.sql_bounds();
        let rows = sqlx::query(SQL.items_window(window.ascending))
            .bind(thread_id)
            .bind(user.as_str())
            .bind(low)
            .bind(high)
            .bind(fetch_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(backend_error)?;
        let page = into_page(&rows, limit, &window, |row| row.record(0))?;
        if page.data.is_empty() && !query.has_cursor() {
            // Without cursors no rows may also mean a missing or foreign thread,
            // which only then is worth a second statement.
            self.thread_known(user, thread_id).await?;
        }
        Ok(page)
    }

    async fn recent_items_json(&self, user: &UserId, thread_id: &str, count: usize) -> StoreResult<Vec<Box<RawValue>>> {
        let rows = sqlx::query(&SQL.recent_items)
            .bind(thread_id)
            .bind(user.as_str())
            .bind(i64::try_from(count).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(backend_error)?;
        let mut items = rows.iter().map(|row| raw_json(row.text(0)?)).collect::<StoreResult<Vec<_>>>()?;
        if items.is_empty() {
            self.thread_known(user, thread_id).await?;
        }
        items.reverse();
        Ok(items)
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        let query = sqlx::query(&SQL.load_item).bind(thread_id).bind(item_id).bind(user.as_str());
        self.one(query, |row| row.record(0)).await?.ok_or_else(|| StoreError::not_found(Entity::Item, item_id))
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        self.write_item(&SQL.insert_item, user, item).await
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        self.write_item(&SQL.upsert_item, user, item).await
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        let query = sqlx::query(&SQL.delete_item).bind(thread_id).bind(item_id).bind(user.as_str());
        found(self.changed(query).await.map_err(backend_error)?, Entity::Item, item_id)
    }

    async fn claim_thread(&self, thread_id: &str) -> StoreResult<Fence> {
        let query = sqlx::query(&SQL.claim_thread).bind(thread_id);
        let fence = self.one(query, |row| row.integer(0)).await?;
        fence.map(Fence).ok_or_else(|| StoreError::not_found(Entity::Thread, thread_id))
    }

    async fn write_fenced(
        &self,
        user: &UserId,
        thread_id: &str,
        fence: Fence,
        write: FencedWrite<'_>,
    ) -> StoreResult<()> {
        let (query, missing, id) = match write {
            FencedWrite::AddItem(item) | FencedWrite::SaveItem(item) => {
                let sql = match write {
                    FencedWrite::AddItem(_) => &SQL.fenced_insert_item,
                    _ => &SQL.fenced_upsert_item,
                };
                let query = sqlx::query(sql).bind(&item.id).bind(thread_id).bind(user.as_str()).bind(to_json(item)?);
                (query.bind(fence.0), Entity::Thread, item.id.as_str())
            }
            FencedWrite::DeleteItem(item_id) => {
                let query = sqlx::query(&SQL.fenced_delete_item).bind(thread_id).bind(item_id).bind(user.as_str());
                (query.bind(fence.0), Entity::Item, item_id)
            }
            FencedWrite::SaveThread(thread) => {
                let query =
                    sqlx::query(&SQL.fenced_update_thread).bind(thread_id).bind(user.as_str()).bind(to_json(thread)?);
                (query.bind(fence.0), Entity::Thread, thread.id.as_str())
            }
        };
        let changed = self.changed(query).await.map_err(|err| insert_error(err, Entity::Item, id, thread_id))?;
        if changed {
            return Ok(());
        }
        // Nothing changed: a newer claim, a missing thread, or (for a delete) a missing item.
        let newest = self.one(sqlx::query(&SQL.thread_fence).bind(thread_id).bind(user.as_str()), |row| row.integer(0));
        match newest.await? {
            Some(newest) if newest > fence.0 => Err(StoreError::Fenced { thread_id: thread_id.to_owned() }),
            Some(_) => Err(StoreError::not_found(missing, id)),
            None => Err(StoreError::not_found(Entity::Thread, thread_id)),
        }
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        let query = sqlx::query(&SQL.upsert_attachment)
            .bind(&attachment.id)
            .bind(user.as_str())
            .bind(to_json(attachment)?)
            .bind(attachment.thread_id.as_deref())
            .bind(super::unix_now());
        // No row changed: the id belongs to another user's attachment, which stays
        // untouched and is reported as missing so that its existence does not leak.
        found(self.changed(query).await.map_err(backend_error)?, Entity::Attachment, &attachment.id)
    }

    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment> {
        let query = sqlx::query(&SQL.load_attachment).bind(attachment_id).bind(user.as_str());
        self.one(query, |row| row.record(0))
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Attachment, attachment_id))
    }

    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()> {
        let query = sqlx::query(&SQL.delete_attachment).bind(attachment_id).bind(user.as_str());
        found(self.changed(query).await.map_err(backend_error)?, Entity::Attachment, attachment_id)
    }

    async fn thread_attachments(&self, user: &UserId, thread_id: &str) -> StoreResult<Vec<String>> {
        let query = sqlx::query_scalar(&SQL.thread_attachments).bind(thread_id).bind(user.as_str());
        query.fetch_all(&self.pool).await.map_err(backend_error)
    }

    async fn stale_uploads(&self, before: i64, limit: usize) -> StoreResult<Vec<(UserId, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = sqlx::query_as::<_, (String, String)>(&SQL.stale_uploads).bind(before).bind(limit);
        let rows = query.fetch_all(&self.pool).await.map_err(backend_error)?;
        Ok(rows.into_iter().map(|(user, id)| (UserId(user), id)).collect())
    }

    async fn expire_upload(&self, user: &UserId, attachment_id: &str) -> StoreResult<bool> {
        let query = sqlx::query(&SQL.expire_upload).bind(attachment_id).bind(user.as_str());
        self.changed(query).await.map_err(backend_error)
    }

    async fn put_blob(&self, name: &str, bytes: &[u8]) -> StoreResult<bool> {
        self.changed(sqlx::query(&SQL.insert_blob).bind(name).bind(bytes)).await.map_err(backend_error)
    }

    async fn get_blob(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let query = sqlx::query_scalar(&SQL.load_blob).bind(name);
        query.fetch_optional(&self.pool).await.map_err(backend_error)
    }

    async fn delete_blob(&self, name: &str) -> StoreResult<()> {
        self.changed(sqlx::query(&SQL.delete_blob).bind(name)).await.map(drop).map_err(backend_error)
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let query = sqlx::query(&SQL.insert_session)
            .bind(&session.id)
            .bind(&session.secret_hash)
            .bind(&session.user)
            .bind(session.created_at)
            .bind(session.expires_at)
            .bind(session.cancelled)
            .bind(to_json(&session.settings)?);
        // A taken secret hash is reported under the new session's id, never as the hash.
        self.changed(query).await.map_err(|err| insert_error(err, Entity::Session, &session.id, &session.id))?;
        Ok(())
    }

    async fn load_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let query = sqlx::query(&SQL.load_session).bind(session_id);
        self.one(query, SqlRow::session).await?.ok_or_else(|| StoreError::not_found(Entity::Session, session_id))
    }

    async fn find_session(&self, secret_hash: &str) -> StoreResult<SessionRecord> {
        let query = sqlx::query(&SQL.find_session).bind(secret_hash);
        self.one(query, SqlRow::session).await?.ok_or_else(|| StoreError::not_found(Entity::Session, SESSION_BY_SECRET))
    }

    async fn cancel_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let query = sqlx::query(&SQL.cancel_session).bind(session_id);
        self.one(query, SqlRow::session).await?.ok_or_else(|| StoreError::not_found(Entity::Session, session_id))
    }

    async fn delete_expired_sessions(&self, expired_by: i64, limit: usize) -> StoreResult<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let query = sqlx::query(&SQL.delete_expired_sessions).bind(expired_by).bind(limit);
        let deleted = query.execute(&self.pool).await.map_err(backend_error)?.rows_affected();
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    async fn ping(&self) -> StoreResult<()> {
        let _: i32 = sqlx::query_scalar(&SQL.ping).fetch_one(&self.pool).await.map_err(backend_error)?;
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
