//! `Store` on SQLite: each operation is one job for a connection thread, most
//! of them one cached statement.

use async_trait::async_trait;
use rusqlite::{ffi, params, Connection, Params, Row};
use serde_json::value::RawValue;

use super::{SqliteStore, SQL};
use crate::protocol::{Attachment, ListedThread, Page, ThreadItem, ThreadMetadata, DEFAULT_PAGE_SIZE};
use crate::store::paging::{effective_limit, finish_page, Listed, Window};
use crate::store::sql::{fetch_limit, found, raw_json, to_json, SqlRow};
use crate::store::{
    unix_now, Entity, Fence, FencedWrite, ListQuery, SessionRecord, Store, StoreError, StoreResult, UserId,
    SESSION_BY_SECRET,
};

pub(super) fn backend_error(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Whether an error is a uniqueness (or primary key) violation.
fn is_unique_violation(err: &rusqlite::Error) -> bool {
    err.sqlite_extended_error_code()
        .is_some_and(|code| code == ffi::SQLITE_CONSTRAINT_UNIQUE || code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// Maps an insert's failure, turning a uniqueness violation into `Duplicate`.
fn insert_error(err: rusqlite::Error, entity: Entity, id: &str) -> StoreError {
    if is_unique_violation(&err) {
        StoreError::Duplicate { entity, id: id.to_owned() }
    } else {
        backend_error(err)
    }
}

impl SqlRow for Row<'_> {
    fn text(&self, index: usize) -> StoreResult<&str> {
        self.get_ref(index)
            .map_err(backend_error)?
            .as_str()
            .map_err(|err| StoreError::Backend(format!("stored column is not text: {err}")))
    }

    fn integer(&self, index: usize) -> StoreResult<i64> {
        self.get(index).map_err(backend_error)
    }

    fn boolean(&self, index: usize) -> StoreResult<bool> {
        self.get(index).map_err(backend_error)
    }
}

/// Runs a cached statement that returns no rows, giving the number of rows it changed.
pub(super) fn execute(conn: &Connection, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Runs a cached statement that returns one row of one column.
pub(super) fn query_value<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
) -> StoreResult<T> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.query_row(params, |row| row.get(0)))
        .map_err(backend_error)
}

/// Runs a cached statement that selects (or returns) at most one row, read with `parse`.
fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    parse: impl Fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(backend_error)?;
    let mut rows = statement.query(params).map_err(backend_error)?;
    let found = match rows.next().map_err(backend_error)? {
        Some(row) => Some(parse(row)?),
        None => None,
    };
    // Stepping to the end lets an `UPDATE … RETURNING` finish before its statement is reset.
    while rows.next().map_err(backend_error)?.is_some() {}
    Ok(found)
}

/// Runs a cached statement that selects a window's rows in scan order, up to
/// one beyond the page (see `fetch_limit`), and turns them into the page.
fn query_page<T: Listed>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    limit: usize,
    window: &Window<i64>,
    parse: impl Fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Page<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(backend_error)?;
    let mut rows = statement.query(params).map_err(backend_error)?;
    let mut data = Vec::with_capacity(limit.min(DEFAULT_PAGE_SIZE));
    while let Some(row) = rows.next().map_err(backend_error)? {
        if data.len() == limit {
            // The row beyond the page is not parsed: it only tells that more follow.
            return Ok(finish_page(data, true, window));
        }
        data.push(parse(row)?);
    }
    Ok(finish_page(data, false, window))
}

impl SqliteStore {
    /// A page of threads (of `user`, or of everyone), each read from its row by `parse`.
    async fn threads_page<T: Listed + Send + 'static>(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
        parse: fn(&Row<'_>) -> StoreResult<T>,
    ) -> StoreResult<Page<T>> {
        let limit = effective_limit(query.limit);
        let (user, query) = (user.map(|user| user.0.clone()), query.clone());
        self.workers
            .read_small(move |conn| {
                let (mut after_seq, mut before_seq) = (None, None);
                if query.has_cursor() {
                    (after_seq, before_seq) = conn
                        .prepare_cached(&SQL.thread_cursors)
                        .and_then(|mut statement| {
                            let cursors = params![query.after, query.before, user];
                            statement.query_row(cursors, |row| Ok((row.get(0)?, row.get(1)?)))
                        })
                        .map_err(backend_error)?;
                }
                let window = Window::of(&query, after_seq, before_seq)?;
                let (low, high) = window.sql_bounds();
                let sql = SQL.threads_window(user.is_some(), window.ascending);
                let fetch = fetch_limit(limit);
                match &user {
                    None => query_page(conn, sql, params![low, high, fetch], limit, &window, parse),
                    Some(user) => query_page(conn, sql, params![user, low, high, fetch], limit, &window, parse),
                }
            })
            .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        // Records are serialized here, on the caller's thread, so that the one
        // writer thread spends its time on SQLite alone.
        let (id, user, data) = (thread.id.clone(), user.0.clone(), to_json(thread)?);
        self.workers
            .write(move |conn| {
                execute(conn, &SQL.insert_thread, params![id, user, data])
                    .map_err(|err| insert_error(err, Entity::Thread, &id))?;
                Ok(())
            })
            .await
    }

    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata> {
        let (id, user) = (thread_id.to_owned(), user.0.clone());
        self.workers
            .read_small(move |conn| {
                query_one(conn, &SQL.load_thread, params![id, user], |row| row.record(0))?
                    .ok_or_else(|| StoreError::not_found(Entity::Thread, id))
            })
            .await
    }

    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let (id, user, data) = (thread.id.clone(), user.0.clone(), to_json(thread)?);
        self.workers
            .write(move |conn| {
                let changed = execute(conn, &SQL.update_thread, params![id, user, data]).map_err(backend_error)?;
                found(changed > 0, Entity::Thread, id)
            })
            .await
    }

    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        let (id, user) = (thread_id.to_owned(), user.0.clone());
        // The items go with the thread through `ON DELETE CASCADE`.
        self.workers
            .write(move |conn| {
                let changed = execute(conn, &SQL.delete_thread, params![id, user]).map_err(backend_error)?;
                found(changed > 0, Entity::Thread, id)
            })
            .await
    }

    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Page<(UserId, ThreadMetadata)>> {
        self.threads_page(user, query, |row| row.owned_thread()).await
    }

    async fn list_listed_threads(&self, user: &UserId, query: &ListQuery) -> StoreResult<Page<ListedThread>> {
        self.threads_page(Some(user), query, |row| row.listed_thread()).await
    }

    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)> {
        let id = thread_id.to_owned();
        self.workers
            .read_small(move |conn| {
                query_one(conn, &SQL.find_thread, params![id], |row| row.owned_thread())?
                    .ok_or_else(|| StoreError::not_found(Entity::Thread, id))
            })
            .await
    }

    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Page<ThreadItem>> {
        let limit = effective_limit(query.limit);
        let (thread_id, user, query) = (thread_id.to_owned(), user.0.clone(), query.clone());
        self.workers
            .read(move |conn| {
                let (mut after_seq, mut before_seq) = (None, None);
                if query.has_cursor() {
                    let thread_known: bool;
                    (thread_known, after_seq, before_seq) = conn
                        .prepare_cached(&SQL.item_cursors)
                        .and_then(|mut statement| {
                            let cursors = params![thread_id, user, query.after, query.before];
                            statement.query_row(cursors, |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
                        })
                        .map_err(backend_error)?;
                    if !thread_known {
                        return Err(StoreError::not_found(Entity::Thread, thread_id));
                    }
                }
                let window = Window::of(&query, after_seq, before_seq)?;
                let (low, high) = window.sql_bounds();
                let sql = SQL.items_window(window.ascending);
                let bounds = params![thread_id, user, low, high, fetch_limit(limit)];
                let page = query_page(conn, sql, bounds, limit, &window, |row| row.record(0))?;
                // Without cursors no rows may also mean a missing or foreign thread,
                // which only then is worth a second statement.
                if page.data.is_empty()
                    && !query.has_cursor()
                    && !query_value::<bool>(conn, &SQL.thread_exists, params![thread_id, user])?
                {
                    return Err(StoreError::not_found(Entity::Thread, thread_id));
                }
                Ok(page)
            })
            .await
    }

    async fn recent_items_json(&self, user: &UserId, thread_id: &str, count: usize) -> StoreResult<Vec<Box<RawValue>>> {
        let (thread_id, user) = (thread_id.to_owned(), user.0.clone());
        let limit = i64::try_from(count).unwrap_or(i64::MAX);
        self.workers
            .read(move |conn| {
                let mut statement = conn.prepare_cached(SQL.items_window(false)).map_err(backend_error)?;
                let mut rows =
                    statement.query(params![thread_id, user, i64::MIN, i64::MAX, limit]).map_err(backend_error)?;
                let mut items = Vec::with_capacity(count.min(DEFAULT_PAGE_SIZE));
                while let Some(row) = rows.next().map_err(backend_error)? {
                    items.push(raw_json(row.text(0)?)?);
                }
                if items.is_empty() && !query_value::<bool>(conn, &SQL.thread_exists, params![thread_id, user])? {
                    return Err(StoreError::not_found(Entity::Thread, thread_id));
                }
                items.reverse();
                Ok(items)
            })
            .await
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        let (thread_id, id, user) = (thread_id.to_owned(), item_id.to_owned(), user.0.clone());
        self.workers
            .read_small(move |conn| {
                query_one(conn, &SQL.load_item, params![thread_id, id, user], |row| row.record(0))?
                    .ok_or_else(|| StoreError::not_found(Entity::Item, id))
            })
            .await
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let (id, thread_id, user, data) = (item.id.clone(), item.thread_id.clone(), user.0.clone(), to_json(item)?);
        self.workers
            .write(move |conn| {
                let changed = execute(conn, &SQL.insert_item, params![id, thread_id, user, data])
                    .map_err(|err| insert_error(err, Entity::Item, &id))?;
                found(changed > 0, Entity::Thread, thread_id)
            })
            .await
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let (id, thread_id, user, data) = (item.id.clone(), item.thread_id.clone(), user.0.clone(), to_json(item)?);
        self.workers
            .write(move |conn| {
                let changed =
                    execute(conn, &SQL.upsert_item, params![id, thread_id, user, data]).map_err(backend_error)?;
                found(changed > 0, Entity::Thread, thread_id)
            })
            .await
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        let (thread_id, id, user) = (thread_id.to_owned(), item_id.to_owned(), user.0.clone());
        self.workers
            .write(move |conn| {
                let changed = execute(conn, &SQL.delete_item, params![thread_id, id, user]).map_err(backend_error)?;
                found(changed > 0, Entity::Item, id)
            })
            .await
    }

    async fn claim_thread(&self, thread_id: &str) -> StoreResult<Fence> {
        let id = thread_id.to_owned();
        self.workers
            .write(move |conn| match query_one(conn, &SQL.claim_thread, params![id], |row| row.integer(0))? {
                Some(fence) => Ok(Fence(fence)),
                None => Err(StoreError::not_found(Entity::Thread, id)),
            })
            .await
    }

    async fn write_fenced(
        &self,
        user: &UserId,
        thread_id: &str,
        fence: Fence,
        write: FencedWrite<'_>,
    ) -> StoreResult<()> {
        let (thread_id, user) = (thread_id.to_owned(), user.0.clone());
        /// The three shapes of parameters the fenced statements take.
        enum Shape {
            Item { adds: bool },
            Delete,
            Thread,
        }
        // Serialized here, on the caller's thread, as the unfenced writes are.
        let (shape, id, data, missing) = match write {
            FencedWrite::AddItem(item) => (Shape::Item { adds: true }, item.id.clone(), to_json(item)?, Entity::Thread),
            FencedWrite::SaveItem(item) => {
                (Shape::Item { adds: false }, item.id.clone(), to_json(item)?, Entity::Thread)
            }
            FencedWrite::DeleteItem(item_id) => (Shape::Delete, item_id.to_owned(), String::new(), Entity::Item),
            FencedWrite::SaveThread(thread) => (Shape::Thread, thread.id.clone(), to_json(thread)?, Entity::Thread),
        };
        self.workers
            .write(move |conn| {
                let changed = match shape {
                    Shape::Item { adds } => {
                        let sql = if adds { &SQL.fenced_insert_item } else { &SQL.fenced_upsert_item };
                        execute(conn, sql, params![id, thread_id, user, data, fence.0]).map_err(|err| {
                            if adds {
                                insert_error(err, Entity::Item, &id)
                            } else {
                                backend_error(err)
                            }
                        })
                    }
                    Shape::Delete => execute(conn, &SQL.fenced_delete_item, params![thread_id, id, user, fence.0])
                        .map_err(backend_error),
                    Shape::Thread => execute(conn, &SQL.fenced_update_thread, params![thread_id, user, data, fence.0])
                        .map_err(backend_error),
                }?;
                if changed > 0 {
                    return Ok(());
                }
                // Nothing changed: a newer claim, a missing thread, or (for a delete) a missing item.
                match query_one(conn, &SQL.thread_fence, params![thread_id, user], |row| row.integer(0))? {
                    Some(newest) if newest > fence.0 => Err(StoreError::Fenced { thread_id }),
                    Some(_) => Err(StoreError::not_found(missing, id)),
                    None => Err(StoreError::not_found(Entity::Thread, thread_id)),
                }
            })
            .await
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        let (id, user, data) = (attachment.id.clone(), user.0.clone(), to_json(attachment)?);
        let (thread_id, now) = (attachment.thread_id.clone(), unix_now());
        self.workers
            .write(move |conn| {
                // No row changed: the id belongs to another user's attachment, which stays
                // untouched and is reported as missing so that its existence does not leak.
                let row = params![id, user, data, thread_id, now];
                let changed = execute(conn, &SQL.upsert_attachment, row).map_err(backend_error)?;
                found(changed > 0, Entity::Attachment, id)
            })
            .await
    }

    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment> {
        let (id, user) = (attachment_id.to_owned(), user.0.clone());
        self.workers
            .read(move |conn| {
                query_one(conn, &SQL.load_attachment, params![id, user], |row| row.record(0))?
                    .ok_or_else(|| StoreError::not_found(Entity::Attachment, id))
            })
            .await
    }

    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()> {
        let (id, user) = (attachment_id.to_owned(), user.0.clone());
        self.workers
            .write(move |conn| {
                let changed = execute(conn, &SQL.delete_attachment, params![id, user]).map_err(backend_error)?;
                found(changed > 0, Entity::Attachment, id)
            })
            .await
    }

    async fn thread_attachments(&self, user: &UserId, thread_id: &str) -> StoreResult<Vec<String>> {
        let (thread_id, user) = (thread_id.to_owned(), user.0.clone());
        self.workers
            .read(move |conn| {
                let mut statement = conn.prepare_cached(&SQL.thread_attachments).map_err(backend_error)?;
                let rows = statement.query_map(params![thread_id, user], |row| row.get(0)).map_err(backend_error)?;
                rows.collect::<rusqlite::Result<Vec<String>>>().map_err(backend_error)
            })
            .await
    }

    async fn stale_uploads(&self, before: i64, limit: usize) -> StoreResult<Vec<(UserId, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.workers
            .read(move |conn| {
                let mut statement = conn.prepare_cached(&SQL.stale_uploads).map_err(backend_error)?;
                let rows = statement
                    .query_map(params![before, limit], |row| Ok((UserId(row.get(0)?), row.get(1)?)))
                    .map_err(backend_error)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend_error)
            })
            .await
    }

    async fn expire_upload(&self, user: &UserId, attachment_id: &str) -> StoreResult<bool> {
        let (id, user) = (attachment_id.to_owned(), user.0.clone());
        self.workers
            .write(move |conn| Ok(execute(conn, &SQL.expire_upload, params![id, user]).map_err(backend_error)? > 0))
            .await
    }

    async fn put_blob(&self, name: &str, bytes: &[u8]) -> StoreResult<bool> {
        let (name, bytes) = (name.to_owned(), bytes.to_vec());
        self.workers
            .write(move |conn| Ok(execute(conn, &SQL.insert_blob, params![name, bytes]).map_err(backend_error)? > 0))
            .await
    }

    async fn get_blob(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let name = name.to_owned();
        self.workers
            .read(move |conn| query_one(conn, &SQL.load_blob, params![name], |row| row.get(0).map_err(backend_error)))
            .await
    }

    async fn delete_blob(&self, name: &str) -> StoreResult<()> {
        let name = name.to_owned();
        self.workers
            .write(move |conn| execute(conn, &SQL.delete_blob, params![name]).map(drop).map_err(backend_error))
            .await
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let settings = to_json(&session.settings)?;
        let session = session.clone();
        self.workers
            .write(move |conn| {
                let row = params![
                    session.id,
                    session.secret_hash,
                    session.user,
                    session.created_at,
                    session.expires_at,
                    session.cancelled,
                    settings
                ];
                // A taken secret hash is reported under the new session's id, never as the hash.
                execute(conn, &SQL.insert_session, row)
                    .map_err(|err| insert_error(err, Entity::Session, &session.id))?;
                Ok(())
            })
            .await
    }

    async fn load_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let id = session_id.to_owned();
        self.workers
            .read_small(move |conn| {
                query_one(conn, &SQL.load_session, params![id], |row| row.session())?
                    .ok_or_else(|| StoreError::not_found(Entity::Session, id))
            })
            .await
    }

    async fn find_session(&self, secret_hash: &str) -> StoreResult<SessionRecord> {
        let hash = secret_hash.to_owned();
        self.workers
            .read_small(move |conn| {
                query_one(conn, &SQL.find_session, params![hash], |row| row.session())?
                    .ok_or_else(|| StoreError::not_found(Entity::Session, SESSION_BY_SECRET))
            })
            .await
    }

    async fn cancel_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let id = session_id.to_owned();
        self.workers
            .write(move |conn| {
                query_one(conn, &SQL.cancel_session, params![id], |row| row.session())?
                    .ok_or_else(|| StoreError::not_found(Entity::Session, id))
            })
            .await
    }

    async fn delete_expired_sessions(&self, expired_by: i64, limit: usize) -> StoreResult<usize> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.workers
            .write(move |conn| {
                execute(conn, &SQL.delete_expired_sessions, params![expired_by, limit]).map_err(backend_error)
            })
            .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.workers.read(|conn| query_value::<i64>(conn, &SQL.ping, [])).await?;
        Ok(())
    }
}
