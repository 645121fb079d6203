//! A SQLite store on rusqlite: one writer thread that commits in groups, a few reader threads.
//!
//! SQLite has one writer at a time, and a commit costs far more than the
//! statement it commits. So one dedicated thread owns the only write connection:
//! it takes every write that queued up while it was busy, runs them all in one
//! transaction and commits once. Under load every write in flight shares a
//! commit; when idle a lone write commits at once, so nothing waits for a batch
//! to fill. Reads go to a few threads with read-only connections and run in
//! parallel under WAL, each seeing every write committed before it started.
//!
//! Copying the WAL back into the database file (a checkpoint) is the costliest
//! part of writing, because it syncs both files to disk. A checkpointer thread
//! with a connection of its own does it in the background while the writer goes
//! on committing; see `WRITER_AUTOCHECKPOINT` for the part left to the writer.
//!
//! Async callers only await a bounded queue and a reply, so no blocking SQLite
//! call runs on a runtime thread, and a full queue slows callers down instead of
//! growing without bound. Records are kept as JSON text: the caller serializes
//! what it writes, and a reader thread parses what it reads. Order is the `seq`
//! column (insertion order), never `created_at`, because two records may share
//! a timestamp.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{ffi, params, Connection, ErrorCode, OpenFlags, OptionalExtension, Params, Row};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};

use super::record::{effective_limit, fetch_limit, finish_listing, found, from_json, to_json, Window};
use super::{
    Entity, ListQuery, Listing, PageQuery, SessionRecord, Store, StoreError, StoreResult, UserId, SESSION_BY_SECRET,
};
use crate::protocol::{Attachment, Order, Page, ThreadItem, ThreadMetadata, DEFAULT_PAGE_SIZE};

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
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    cancelled INTEGER NOT NULL DEFAULT 0,
    settings TEXT NOT NULL
);
"#,
    },
];

const CREATE_MIGRATIONS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)";
const CURRENT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_migrations";

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader threads for a database file. Reads are short, so a few connections
/// keep the cores busy even while one of them waits on the disk.
const READERS: usize = 4;

/// Jobs that may wait in each queue. A caller that finds its queue full waits
/// for room, which slows the request side down to what the database sustains.
const QUEUE_CAPACITY: usize = 1024;

/// The most writes one transaction takes. A cap keeps the first writer of a
/// long queue from waiting for the whole queue to be executed before its commit.
const MAX_BATCH: usize = 256;

/// Prepared statements each connection keeps. All the statements this store
/// runs fit, including those of an in-memory database's single connection.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// How often, at most, the writer wakes the checkpointer while commits come in.
/// Each wake-up is one checkpoint: less often copies a page rewritten several
/// times only once, more often keeps the WAL short.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(20);

/// WAL pages (4 KiB by default) after which a commit runs a checkpoint on the
/// writer thread itself. The checkpointer copies pages back without stopping the
/// writer, but SQLite starts the WAL over only after a checkpoint that ends with
/// no newer commit in the WAL, and under steady writes only the writer can see
/// to that: without it the WAL grew by over 50 MB a second under load. By then
/// the checkpointer has copied all but the latest pages, so the writer's
/// checkpoint is mostly its two syncs, which stall every commit queued behind
/// it (20–40 ms here). SQLite's default of 1000 pages had the writer
/// checkpointing dozens of times a second, for some 70% of its time; 10,000
/// pages put the stalls at the turn p99 (40 ms at 5,000 turns/s); 40,000 pages
/// (a WAL of up to ~160 MB) makes them rare enough that the p99 is ~15 ms.
const WRITER_AUTOCHECKPOINT: i64 = 40_000;

/// What the caller of a job sees when the thread that should answer has gone.
const STOPPED: &str = "sqlite worker stopped";

/// A store in one SQLite database file (or one in-memory database).
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

/// What every clone of a store holds: the queues to its threads.
///
/// Dropping the last clone drops the senders, and each thread ends once it has
/// answered what is already queued; nothing waits for them, so a drop never blocks.
struct Shared {
    /// The writer thread's queue.
    writer: mpsc::Sender<Command>,
    /// The reader threads' queue; the writer's own for an in-memory database.
    readers: mpsc::Sender<Command>,
    /// How many threads take jobs from `readers` (none of their own for an in-memory database).
    reader_threads: usize,
    /// The threads, taken by `close` to join them.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Where the database is, for `Debug`.
    location: String,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("database", &self.shared.location)
            .field("reader_threads", &self.shared.reader_threads)
            .finish_non_exhaustive()
    }
}

/// What a connection thread is asked to do.
enum Command {
    Run(Box<dyn Job>),
    /// Ends the thread once the commands queued before it are answered.
    Stop,
}

/// Work for a connection thread, with a caller waiting for its result.
trait Job: Send {
    /// Runs the work on the thread's connection and keeps its result.
    fn run(&mut self, conn: &Connection);
    /// Replaces a success (or a result never computed) with an error, because
    /// the transaction that held the work did not commit.
    fn fail(&mut self, message: &str);
    /// Sends the kept result to the caller.
    fn answer(self: Box<Self>);
}

/// A closure to run on a connection and the channel its result goes back on.
struct Call<T, F> {
    work: Option<F>,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> StoreResult<T> + Send,
{
    fn run(&mut self, conn: &Connection) {
        if let Some(work) = self.work.take() {
            self.result = Some(work(conn));
        }
    }

    fn fail(&mut self, message: &str) {
        // A statement that failed changed nothing, so its own error stays true
        // whatever became of the transaction around it.
        if !matches!(self.result, Some(Err(_))) {
            self.result = Some(Err(StoreError::Backend(message.to_owned())));
        }
    }

    fn answer(self: Box<Self>) {
        let Call { result, reply, .. } = *self;
        let result = result.unwrap_or_else(|| Err(StoreError::Backend("a sqlite job was answered unrun".to_owned())));
        // The caller may have stopped waiting (its request was cancelled); the
        // work is done either way, so there is no one else to tell.
        let _ = reply.send(result);
    }
}

fn stopped() -> StoreError {
    StoreError::Backend(STOPPED.to_owned())
}

/// Queues `work` for a connection thread and waits for its result.
async fn call<T, F>(queue: &mpsc::Sender<Command>, work: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
{
    let (reply, answer) = oneshot::channel();
    let job = Box::new(Call { work: Some(work), result: None, reply });
    queue.send(Command::Run(job)).await.map_err(|_| stopped())?;
    // A closed reply channel means the thread ended (or died) with the job unanswered.
    answer.await.map_err(|_| stopped())?
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

/// The name to hand SQLite for a file path. The bundled SQLite reads a name that
/// starts with `file:` as a URI, so such a relative path is spelled `./file:…`
/// to keep meaning the file of that name.
fn database_path(path: &Path) -> PathBuf {
    if path.to_str().is_some_and(|text| text.starts_with("file:")) {
        Path::new(".").join(path)
    } else {
        path.to_path_buf()
    }
}

fn backend_error(err: rusqlite::Error) -> StoreError {
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

/// Whether an error is SQLite's "the file is locked" (`SQLITE_BUSY` or `SQLITE_LOCKED`).
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// A text column of a row, borrowed from SQLite's buffer so that JSON is parsed without a copy.
fn text<'row>(row: &'row Row<'_>, index: usize) -> StoreResult<&'row str> {
    row.get_ref(index)
        .map_err(backend_error)?
        .as_str()
        .map_err(|err| StoreError::Backend(format!("stored column is not text: {err}")))
}

/// Runs a cached statement that returns no rows, giving the number of rows it changed.
fn execute(conn: &Connection, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Runs a cached statement that returns one row of one column.
fn query_value<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str, params: impl Params) -> StoreResult<T> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.query_row(params, |row| row.get(0)))
        .map_err(backend_error)
}

/// Runs a cached statement that selects a JSON record, parsing it if there is one.
fn query_record<T: DeserializeOwned>(conn: &Connection, sql: &str, params: impl Params) -> StoreResult<Option<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(backend_error)?;
    let mut rows = statement.query(params).map_err(backend_error)?;
    match rows.next().map_err(backend_error)? {
        Some(row) => from_json(text(row, 0)?).map(Some),
        None => Ok(None),
    }
}

/// Runs a cached statement that selects `(id, json)` rows, up to one beyond the
/// page (see `fetch_limit`), and turns them into a page.
fn query_page<T: DeserializeOwned>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    limit: usize,
) -> StoreResult<Page<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(backend_error)?;
    let mut rows = statement.query(params).map_err(backend_error)?;
    let mut data = Vec::with_capacity(limit.min(DEFAULT_PAGE_SIZE));
    let mut last_id = None;
    while let Some(row) = rows.next().map_err(backend_error)? {
        if data.len() == limit {
            // The row beyond the page is not returned: it only tells that more follow.
            return Ok(Page { data, has_more: true, after: last_id });
        }
        data.push(from_json(text(row, 1)?)?);
        if data.len() == limit {
            last_id = Some(text(row, 0)?.to_owned());
        }
    }
    Ok(Page { data, has_more: false, after: None })
}

/// Runs a cached statement that selects an admin listing's rows in scan order,
/// up to one beyond the page (see `fetch_limit`), parsing each with `parse`.
fn query_listing<T>(
    conn: &Connection,
    sql: &str,
    params: impl Params,
    limit: usize,
    window: Window<i64>,
    parse: impl Fn(&Row<'_>) -> StoreResult<T>,
) -> StoreResult<Listing<T>> {
    let mut statement = conn.prepare_cached(sql).map_err(backend_error)?;
    let mut rows = statement.query(params).map_err(backend_error)?;
    let mut data = Vec::with_capacity(limit.min(DEFAULT_PAGE_SIZE));
    while let Some(row) = rows.next().map_err(backend_error)? {
        if data.len() == limit {
            // The row beyond the page is not parsed: it only tells that more follow.
            return Ok(finish_listing(data, true, window.reverse));
        }
        data.push(parse(row)?);
    }
    Ok(finish_listing(data, false, window.reverse))
}

/// A session from a row of the columns every session statement selects, in their order.
fn session_from_row(row: &Row<'_>) -> StoreResult<SessionRecord> {
    Ok(SessionRecord {
        id: text(row, 0)?.to_owned(),
        secret_hash: text(row, 1)?.to_owned(),
        user: text(row, 2)?.to_owned(),
        created_at: row.get(3).map_err(backend_error)?,
        expires_at: row.get(4).map_err(backend_error)?,
        cancelled: row.get(5).map_err(backend_error)?,
        settings: from_json(text(row, 6)?)?,
    })
}

/// Runs a cached statement that selects (or returns) at most one session.
fn query_session(conn: &Connection, sql: &str, params: impl Params) -> StoreResult<Option<SessionRecord>> {
    let mut statement = conn.prepare_cached(sql).map_err(backend_error)?;
    let mut rows = statement.query(params).map_err(backend_error)?;
    let session = match rows.next().map_err(backend_error)? {
        Some(row) => Some(session_from_row(row)?),
        None => None,
    };
    // Stepping to the end lets an `UPDATE … RETURNING` finish before its statement is reset.
    while rows.next().map_err(backend_error)?.is_some() {}
    Ok(session)
}

/// Fails with `UnknownCursor` when a cursor was given but named no record of the listing.
fn known_cursor(cursor: Option<String>, seq: Option<i64>) -> StoreResult<()> {
    match (cursor, seq) {
        (Some(cursor), None) => Err(StoreError::UnknownCursor(cursor)),
        _ => Ok(()),
    }
}

/// Settings every connection gets.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

const OPEN_FLAGS: OpenFlags = OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

/// Opens the write connection and brings the schema up to date; `None` is an in-memory database.
fn open_writer(file: Option<&Path>) -> StoreResult<Connection> {
    let conn = match file {
        None => {
            let conn = Connection::open_in_memory().map_err(backend_error)?;
            configure(&conn).map_err(backend_error)?;
            conn
        }
        Some(path) => {
            let cannot_open =
                |message: String| StoreError::Backend(format!("cannot open `{}`: {message}", path.display()));
            // The writer is opened first: it creates the file and switches it to WAL,
            // a setting the file keeps, so readers need not (and should not) change it.
            let conn = Connection::open_with_flags(database_path(path), OPEN_FLAGS | OpenFlags::SQLITE_OPEN_CREATE)
                .and_then(|conn| {
                    configure(&conn)?;
                    conn.pragma_update(None, "synchronous", "NORMAL")?;
                    // Checkpoints are the checkpointer thread's work; the writer
                    // only steps in as a backstop, see `WRITER_AUTOCHECKPOINT`.
                    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT)?;
                    Ok(conn)
                })
                .map_err(|err| cannot_open(err.to_string()))?;
            enable_wal(&conn).map_err(|err| match err {
                StoreError::Backend(message) => cannot_open(message),
                other => other,
            })?;
            conn
        }
    };
    migrate(&conn)?;
    Ok(conn)
}

/// Opens another connection on a file the writer has already set up: a reader
/// (`query_only`) or the checkpointer.
fn open_existing(path: &Path, query_only: bool) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(database_path(path), OPEN_FLAGS)
        .and_then(|conn| {
            configure(&conn)?;
            // The checkpointer's syncs follow this setting, as the writer's would.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            // `query_only` turns an accidental write on a reader into an error
            // instead of a second writer contending for the lock.
            conn.pragma_update(None, "query_only", query_only)?;
            Ok(conn)
        })
        .map_err(|err| StoreError::Backend(format!("cannot open `{}`: {err}", path.display())))?;
    Ok(conn)
}

/// Switches the database file to WAL, which it then keeps for good.
///
/// Changing the journal mode needs an exclusive lock that SQLite's busy timeout
/// does not wait for, so when two processes create the same file at once, one
/// of them retries here for as long as the busy timeout would have waited.
fn enable_wal(conn: &Connection) -> StoreResult<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(StoreError::Backend(format!("the database refused WAL journal mode (it is `{mode}`)")))
            }
            Err(err) if is_busy(&err) && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(err) => return Err(backend_error(err)),
        }
    }
}

/// Applies the migrations this database lacks, each in its own transaction.
///
/// These statements run once per open, so unlike the hot path they are not
/// kept in the statement cache.
fn migrate(conn: &Connection) -> StoreResult<()> {
    conn.execute_batch(CREATE_MIGRATIONS_TABLE).map_err(backend_error)?;
    let current: i64 = conn.query_row(CURRENT_VERSION, [], |row| row.get(0)).map_err(backend_error)?;
    if current > SqliteStore::SCHEMA_VERSION {
        // An older build over a newer database: the schema only grows, so the
        // tables this build uses are still there.
        tracing::warn!(current, known = SqliteStore::SCHEMA_VERSION, "database schema is newer than this build");
    }
    for migration in MIGRATIONS.iter().filter(|migration| migration.version > current) {
        // IMMEDIATE takes the write lock up front, so a second process opening the
        // same file waits here and then sees the version as applied.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend_error)?;
        match apply_migration(conn, migration).and_then(|()| conn.execute_batch("COMMIT").map_err(backend_error)) {
            Ok(()) => {}
            Err(err) => {
                if let Err(rollback) = conn.execute_batch("ROLLBACK") {
                    tracing::debug!(%rollback, "rolling back a failed migration failed");
                }
                return Err(err);
            }
        }
    }
    Ok(())
}

fn apply_migration(conn: &Connection, migration: &Migration) -> StoreResult<()> {
    let applied: Option<i64> = conn
        .query_row("SELECT version FROM schema_migrations WHERE version = ?1", [migration.version], |row| row.get(0))
        .optional()
        .map_err(backend_error)?;
    if applied.is_none() {
        conn.execute_batch(migration.sql)
            .map_err(|err| StoreError::Backend(format!("schema migration {} failed: {err}", migration.version)))?;
        conn.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
            [migration.version],
        )
        .map_err(backend_error)?;
    }
    Ok(())
}

/// The writer thread: opens the write connection, reports whether that worked,
/// then runs queued jobs in group commits until stopped.
fn run_writer(
    file: Option<PathBuf>,
    mut queue: mpsc::Receiver<Command>,
    checkpoints: Option<std::sync::mpsc::SyncSender<()>>,
    ready: oneshot::Sender<StoreResult<()>>,
) {
    let conn = match open_writer(file.as_deref()) {
        Ok(conn) => conn,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        // Whoever was opening the store gave up; nobody can send jobs.
        return;
    }
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    // Commits of the last interval before the writes stop are checkpointed with
    // the next write, or when the last connection closes; until then they are
    // safe in the WAL.
    let mut last_wake = Instant::now();
    // Waits for one job, then takes whatever else is already queued without
    // waiting: a busy queue yields big batches, an idle one a batch of one.
    while let Some(Command::Run(job)) = queue.blocking_recv() {
        batch.push(job);
        let mut stop = false;
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(Command::Run(job)) => batch.push(job),
                Ok(Command::Stop) => {
                    stop = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&conn, &mut batch);
        if let Some(checkpoints) = &checkpoints {
            if last_wake.elapsed() >= CHECKPOINT_INTERVAL {
                last_wake = Instant::now();
                // A full channel means a wake-up is already pending, and a closed
                // one that the checkpointer is gone; neither is worth waiting for.
                let _ = checkpoints.try_send(());
            }
        }
        if stop {
            break;
        }
    }
}

/// Runs a batch of jobs in one transaction, commits once, and only then answers them.
///
/// Each job is a single statement. When a statement fails (a uniqueness
/// violation, a missing thread), SQLite undoes just that statement and the
/// transaction goes on, so the error is that job's alone. The answers wait for
/// `COMMIT` because until then nothing is durable, nor visible to readers: a
/// caller told "saved" before the commit could read its record back as missing,
/// or lose it when the commit fails. If the commit fails, every job of the batch
/// gets the error. A job that ever needs several statements must wrap them in a
/// `SAVEPOINT` so that its failure undoes all of them and nothing else.
fn commit_batch(conn: &Connection, batch: &mut Vec<Box<dyn Job>>) {
    let mut settled = 0;
    while settled < batch.len() {
        settled += run_transaction(conn, &mut batch[settled..]);
    }
    for job in batch.drain(..) {
        job.answer();
    }
}

/// Runs jobs in one transaction and commits it, failing the jobs whose work did
/// not commit. Returns how many jobs it settled: all of them, unless SQLite
/// rolled the transaction back midway, and then those up to that point.
fn run_transaction(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> usize {
    if let Err(err) = execute(conn, "BEGIN IMMEDIATE", []) {
        let message = format!("cannot begin a transaction: {err}");
        jobs.iter_mut().for_each(|job| job.fail(&message));
        return jobs.len();
    }
    let mut ran = 0;
    for job in jobs.iter_mut() {
        job.run(conn);
        ran += 1;
        if conn.is_autocommit() {
            // Some errors (a full disk, an I/O error) make SQLite roll back the
            // whole transaction, not just the statement: what ran before in this
            // transaction is undone, and the jobs after go in a new one.
            let message = "the transaction was rolled back by a later statement's failure";
            jobs[..ran].iter_mut().for_each(|job| job.fail(message));
            return ran;
        }
    }
    if let Err(err) = execute(conn, "COMMIT", []) {
        let message = format!("cannot commit: {err}");
        tracing::error!(%err, jobs = jobs.len(), "a sqlite group commit failed");
        if !conn.is_autocommit() {
            if let Err(rollback) = execute(conn, "ROLLBACK", []) {
                tracing::error!(%rollback, "rolling back a failed group commit failed");
            }
        }
        jobs.iter_mut().for_each(|job| job.fail(&message));
    }
    jobs.len()
}

/// A reader thread: opens its connection, reports whether that worked, then
/// runs jobs from the shared queue one at a time until stopped.
fn run_reader(path: PathBuf, queue: Arc<Mutex<mpsc::Receiver<Command>>>, ready: oneshot::Sender<StoreResult<()>>) {
    let conn = match open_existing(&path, true) {
        Ok(conn) => conn,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    loop {
        // The lock is held while waiting, so one idle reader waits on the queue
        // and the others on the lock; it is released before the job runs.
        let command = queue.lock().unwrap_or_else(PoisonError::into_inner).blocking_recv();
        match command {
            Some(Command::Run(mut job)) => {
                job.run(&conn);
                job.answer();
            }
            Some(Command::Stop) | None => return,
        }
    }
}

/// The checkpointer thread: copies committed pages from the WAL back into the
/// database file whenever the writer reports new commits, so that this copying,
/// and the fsyncs that go with it, do not hold up the writer's commits.
fn run_checkpointer(path: PathBuf, wake: std::sync::mpsc::Receiver<()>, ready: oneshot::Sender<StoreResult<()>>) {
    let conn = match open_existing(&path, false) {
        Ok(conn) => conn,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    if ready.send(Ok(())).is_err() {
        return;
    }
    // The wake-ups end when the writer does, which drops its end of the channel.
    while wake.recv().is_ok() {
        // PASSIVE takes no lock the writer or the readers need and waits for none;
        // frames it may not copy yet, because some reader's snapshot predates
        // them, are left for the next round.
        if let Err(err) = query_value::<i64>(&conn, "PRAGMA wal_checkpoint(PASSIVE)", []) {
            tracing::warn!(%err, "a background sqlite checkpoint failed");
        }
    }
}

fn spawn_thread(name: String, body: impl FnOnce() + Send + 'static) -> StoreResult<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(body)
        .map_err(|err| StoreError::Backend(format!("cannot start a sqlite thread: {err}")))
}

/// Waits for a thread to report that its connection is open.
async fn wait_ready(ready: oneshot::Receiver<StoreResult<()>>) -> StoreResult<()> {
    ready.await.map_err(|_| stopped())?
}

impl SqliteStore {
    /// The schema version this build creates and expects.
    pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

    /// Opens (creating if missing) the database a URL names and brings its schema up to date.
    ///
    /// Accepts `sqlite://relative/path.db`, `sqlite:///abs/path.db` and `sqlite::memory:`.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        match parse_url(url)? {
            Location::Memory => Self::start(None).await,
            Location::File(path) => {
                let path = Path::new(path);
                if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent).await.map_err(|err| {
                        StoreError::Backend(format!("cannot create directory `{}`: {err}", parent.display()))
                    })?;
                }
                Self::start(Some(path.to_path_buf())).await
            }
        }
    }

    /// Starts the writer thread, which opens and migrates the database, then, for
    /// a file, the checkpointer and the readers. An error stops whatever was
    /// started: the channels' senders are dropped, and the threads end on their own.
    async fn start(file: Option<PathBuf>) -> StoreResult<SqliteStore> {
        let mut threads = Vec::new();
        let (writer, writer_queue) = mpsc::channel(QUEUE_CAPACITY);
        let (ready, writer_ready) = oneshot::channel();
        let writer_file = file.clone();
        let (checkpoints, wake) = std::sync::mpsc::sync_channel(1);
        // Only a file has a WAL to checkpoint.
        let checkpoints = file.is_some().then_some(checkpoints);
        threads.push(spawn_thread("sqlite-writer".to_owned(), move || {
            run_writer(writer_file, writer_queue, checkpoints, ready)
        })?);
        wait_ready(writer_ready).await?;
        if let Some(path) = file.clone() {
            let (ready, checkpointer_ready) = oneshot::channel();
            threads.push(spawn_thread("sqlite-checkpoint".to_owned(), move || run_checkpointer(path, wake, ready))?);
            wait_ready(checkpointer_ready).await?;
        }

        let (readers, reader_threads, location) = match file {
            // Every in-memory connection would be a database of its own, so the
            // writer's one connection serves the reads too.
            None => (writer.clone(), 0, "sqlite::memory:".to_owned()),
            Some(path) => {
                let (readers, reader_queue) = mpsc::channel(QUEUE_CAPACITY);
                let reader_queue = Arc::new(Mutex::new(reader_queue));
                let mut pending = Vec::with_capacity(READERS);
                for n in 0..READERS {
                    let (ready, reader_ready) = oneshot::channel();
                    let (queue, path) = (reader_queue.clone(), path.clone());
                    threads.push(spawn_thread(format!("sqlite-reader-{n}"), move || run_reader(path, queue, ready))?);
                    pending.push(reader_ready);
                }
                for reader_ready in pending {
                    wait_ready(reader_ready).await?;
                }
                (readers, READERS, path.display().to_string())
            }
        };
        let shared = Shared { writer, readers, reader_threads, threads: Mutex::new(threads), location };
        Ok(SqliteStore { shared: Arc::new(shared) })
    }

    /// Runs `work` on a read connection (the only connection, for an in-memory database).
    async fn read<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        call(&self.shared.readers, work).await
    }

    /// Runs `work` on the write connection, answering once its group commit is done.
    async fn write<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        call(&self.shared.writer, work).await
    }

    /// The highest schema version applied to this database.
    pub async fn schema_version(&self) -> StoreResult<i64> {
        self.read(|conn| query_value(conn, CURRENT_VERSION, [])).await
    }

    /// Stops the threads once they have answered every job queued so far, and
    /// waits for them to end, closing the connections. Later calls on this store
    /// (or any clone) fail with a backend error.
    pub async fn close(&self) {
        // A stop queues behind the jobs already sent, so those are still answered.
        // A send fails only when the thread has already gone.
        let _ = self.shared.writer.send(Command::Stop).await;
        for _ in 0..self.shared.reader_threads {
            if self.shared.readers.send(Command::Stop).await.is_err() {
                break;
            }
        }
        let threads = std::mem::take(&mut *self.shared.threads.lock().unwrap_or_else(PoisonError::into_inner));
        if threads.is_empty() {
            return;
        }
        // Joining blocks, so it happens off the runtime's threads.
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a sqlite thread panicked");
                }
            }
        })
        .await;
        if let Err(err) = joined {
            tracing::error!(%err, "could not wait for the sqlite threads to end");
        }
    }
}

const INSERT_THREAD: &str = "INSERT INTO threads (id, user_id, data) VALUES (?1, ?2, ?3)";
const LOAD_THREAD: &str = "SELECT data FROM threads WHERE id = ?1 AND user_id = ?2";
const FIND_THREAD: &str = "SELECT user_id, data FROM threads WHERE id = ?1";
const UPDATE_THREAD: &str = "UPDATE threads SET data = ?3 WHERE id = ?1 AND user_id = ?2";
const DELETE_THREAD: &str = "DELETE FROM threads WHERE id = ?1 AND user_id = ?2";
const THREAD_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2)";

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
/// Tells apart why an item listing came back empty.
const THREAD_AND_CURSOR_EXIST: &str = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2), \
     EXISTS (SELECT 1 FROM items WHERE thread_id = ?1 AND id = ?3 AND user_id = ?2)";

/// The positions of an admin thread listing's cursors (`?1` after, `?2` before):
/// null for a missing cursor, and for one that names no thread of the listing,
/// which with a user (`?3`) holds only that user's threads.
const THREAD_CURSORS: &str = "SELECT (SELECT seq FROM threads WHERE id = ?1 AND (?3 IS NULL OR user_id = ?3)), \
     (SELECT seq FROM threads WHERE id = ?2 AND (?3 IS NULL OR user_id = ?3))";
/// A window of every user's threads, scanned along the primary key.
const ALL_THREADS_UP: &str = "SELECT user_id, data FROM threads WHERE seq > ?1 AND seq < ?2 ORDER BY seq ASC LIMIT ?3";
const ALL_THREADS_DOWN: &str =
    "SELECT user_id, data FROM threads WHERE seq > ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";
/// A window of one user's threads, scanned along `threads_by_user`.
const USER_THREADS_UP: &str =
    "SELECT user_id, data FROM threads WHERE user_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq ASC LIMIT ?4";
const USER_THREADS_DOWN: &str =
    "SELECT user_id, data FROM threads WHERE user_id = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq DESC LIMIT ?4";
/// Whether the user owns the thread, and the positions of an admin item
/// listing's cursors (`?3` after, `?4` before) among its items.
const ITEM_CURSORS: &str = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2), \
     (SELECT seq FROM items WHERE thread_id = ?1 AND id = ?3 AND user_id = ?2), \
     (SELECT seq FROM items WHERE thread_id = ?1 AND id = ?4 AND user_id = ?2)";
/// A window of a thread's items, scanned along `items_by_thread`.
const ITEMS_UP: &str = "SELECT data FROM items WHERE thread_id = ?1 AND user_id = ?2 \
     AND seq > ?3 AND seq < ?4 ORDER BY seq ASC LIMIT ?5";
const ITEMS_DOWN: &str = "SELECT data FROM items WHERE thread_id = ?1 AND user_id = ?2 \
     AND seq > ?3 AND seq < ?4 ORDER BY seq DESC LIMIT ?5";

const LOAD_ITEM: &str = "SELECT data FROM items WHERE thread_id = ?1 AND id = ?2 AND user_id = ?3";
/// Appends an item, but only to a thread the user owns: no row is inserted otherwise.
const INSERT_ITEM: &str = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
     WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3)";
/// As `INSERT_ITEM`, but an existing item is updated in place, keeping its `seq`.
const UPSERT_ITEM: &str = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
     WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3) \
     ON CONFLICT (thread_id, id) DO UPDATE SET data = excluded.data";
const DELETE_ITEM: &str = "DELETE FROM items WHERE thread_id = ?1 AND id = ?2 AND user_id = ?3";

/// Inserts or replaces an attachment, but never one another user owns.
const UPSERT_ATTACHMENT: &str = "INSERT INTO attachments (id, user_id, data) VALUES (?1, ?2, ?3) \
     ON CONFLICT (id) DO UPDATE SET data = excluded.data WHERE attachments.user_id = excluded.user_id";
const LOAD_ATTACHMENT: &str = "SELECT data FROM attachments WHERE id = ?1 AND user_id = ?2";
const DELETE_ATTACHMENT: &str = "DELETE FROM attachments WHERE id = ?1 AND user_id = ?2";

const INSERT_SESSION: &str = "INSERT INTO sessions \
     (id, secret_hash, user_id, created_at, expires_at, cancelled, settings) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
// Every statement that reads a session selects the columns in the order `session_from_row` reads them.
const LOAD_SESSION: &str = "SELECT id, secret_hash, user_id, created_at, expires_at, cancelled, settings \
     FROM sessions WHERE id = ?1";
const FIND_SESSION: &str = "SELECT id, secret_hash, user_id, created_at, expires_at, cancelled, settings \
     FROM sessions WHERE secret_hash = ?1";
const CANCEL_SESSION: &str = "UPDATE sessions SET cancelled = 1 WHERE id = ?1 \
     RETURNING id, secret_hash, user_id, created_at, expires_at, cancelled, settings";

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        // Records are serialized here, on the caller's thread, so that the one
        // writer thread spends its time on SQLite alone.
        let (id, user, data) = (thread.id.clone(), user.0.clone(), to_json(thread)?);
        self.write(move |conn| {
            execute(conn, INSERT_THREAD, params![id, user, data])
                .map_err(|err| insert_error(err, Entity::Thread, &id))?;
            Ok(())
        })
        .await
    }

    async fn load_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<ThreadMetadata> {
        let (id, user) = (thread_id.to_owned(), user.0.clone());
        self.read(move |conn| {
            query_record(conn, LOAD_THREAD, params![id, user])?.ok_or_else(|| StoreError::not_found(Entity::Thread, id))
        })
        .await
    }

    async fn find_thread(&self, thread_id: &str) -> StoreResult<(UserId, ThreadMetadata)> {
        let id = thread_id.to_owned();
        self.read(move |conn| {
            let mut statement = conn.prepare_cached(FIND_THREAD).map_err(backend_error)?;
            let mut rows = statement.query(params![id]).map_err(backend_error)?;
            match rows.next().map_err(backend_error)? {
                Some(row) => Ok((UserId(text(row, 0)?.to_string()), from_json(text(row, 1)?)?)),
                None => Err(StoreError::not_found(Entity::Thread, id)),
            }
        })
        .await
    }

    async fn save_thread(&self, user: &UserId, thread: &ThreadMetadata) -> StoreResult<()> {
        let (id, user, data) = (thread.id.clone(), user.0.clone(), to_json(thread)?);
        self.write(move |conn| {
            found(execute(conn, UPDATE_THREAD, params![id, user, data]).map_err(backend_error)? > 0, Entity::Thread, id)
        })
        .await
    }

    async fn delete_thread(&self, user: &UserId, thread_id: &str) -> StoreResult<()> {
        let (id, user) = (thread_id.to_owned(), user.0.clone());
        // The items go with the thread through `ON DELETE CASCADE`.
        self.write(move |conn| {
            found(execute(conn, DELETE_THREAD, params![id, user]).map_err(backend_error)? > 0, Entity::Thread, id)
        })
        .await
    }

    async fn load_threads(&self, user: &UserId, query: &PageQuery) -> StoreResult<Page<ThreadMetadata>> {
        let limit = effective_limit(query.limit);
        let (user, after, order) = (user.0.clone(), query.after.clone(), query.order);
        self.read(move |conn| {
            let page = match (&after, order) {
                (None, Order::Asc) => query_page(conn, THREADS_ASC, params![user, fetch_limit(limit)], limit)?,
                (None, Order::Desc) => query_page(conn, THREADS_DESC, params![user, fetch_limit(limit)], limit)?,
                (Some(after), Order::Asc) => {
                    query_page(conn, THREADS_ASC_AFTER, params![user, fetch_limit(limit), after], limit)?
                }
                (Some(after), Order::Desc) => {
                    query_page(conn, THREADS_DESC_AFTER, params![user, fetch_limit(limit), after], limit)?
                }
            };
            if let (true, Some(after)) = (page.data.is_empty(), after) {
                // An unknown cursor also yields no rows; only then is it worth a
                // second statement to tell it from the end of the listing.
                let known: bool = query_value(conn, THREAD_EXISTS, params![after, user])?;
                if !known {
                    return Err(StoreError::UnknownCursor(after));
                }
            }
            Ok(page)
        })
        .await
    }

    async fn load_items(&self, user: &UserId, thread_id: &str, query: &PageQuery) -> StoreResult<Page<ThreadItem>> {
        let limit = effective_limit(query.limit);
        let (thread_id, user, after, order) = (thread_id.to_owned(), user.0.clone(), query.after.clone(), query.order);
        self.read(move |conn| {
            let page = match (&after, order) {
                (None, Order::Asc) => query_page(conn, ITEMS_ASC, params![thread_id, user, fetch_limit(limit)], limit)?,
                (None, Order::Desc) => {
                    query_page(conn, ITEMS_DESC, params![thread_id, user, fetch_limit(limit)], limit)?
                }
                (Some(after), Order::Asc) => {
                    query_page(conn, ITEMS_ASC_AFTER, params![thread_id, user, fetch_limit(limit), after], limit)?
                }
                (Some(after), Order::Desc) => {
                    query_page(conn, ITEMS_DESC_AFTER, params![thread_id, user, fetch_limit(limit), after], limit)?
                }
            };
            if page.data.is_empty() {
                // No rows may mean an empty thread, the end of the listing, a missing or
                // foreign thread, or an unknown cursor; one more statement tells which.
                let (thread_known, cursor_known): (bool, bool) = conn
                    .prepare_cached(THREAD_AND_CURSOR_EXIST)
                    .and_then(|mut statement| {
                        statement.query_row(params![thread_id, user, after], |row| Ok((row.get(0)?, row.get(1)?)))
                    })
                    .map_err(backend_error)?;
                if !thread_known {
                    return Err(StoreError::not_found(Entity::Thread, thread_id));
                }
                if let (Some(after), false) = (after, cursor_known) {
                    return Err(StoreError::UnknownCursor(after));
                }
            }
            Ok(page)
        })
        .await
    }

    async fn load_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<ThreadItem> {
        let (thread_id, id, user) = (thread_id.to_owned(), item_id.to_owned(), user.0.clone());
        self.read(move |conn| {
            query_record(conn, LOAD_ITEM, params![thread_id, id, user])?
                .ok_or_else(|| StoreError::not_found(Entity::Item, id))
        })
        .await
    }

    async fn add_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let (id, thread_id, user, data) = (item.id.clone(), item.thread_id.clone(), user.0.clone(), to_json(item)?);
        self.write(move |conn| {
            found(
                execute(conn, INSERT_ITEM, params![id, thread_id, user, data])
                    .map_err(|err| insert_error(err, Entity::Item, &id))?
                    > 0,
                Entity::Thread,
                thread_id,
            )
        })
        .await
    }

    async fn save_item(&self, user: &UserId, item: &ThreadItem) -> StoreResult<()> {
        let (id, thread_id, user, data) = (item.id.clone(), item.thread_id.clone(), user.0.clone(), to_json(item)?);
        self.write(move |conn| {
            found(
                execute(conn, UPSERT_ITEM, params![id, thread_id, user, data]).map_err(backend_error)? > 0,
                Entity::Thread,
                thread_id,
            )
        })
        .await
    }

    async fn delete_item(&self, user: &UserId, thread_id: &str, item_id: &str) -> StoreResult<()> {
        let (thread_id, id, user) = (thread_id.to_owned(), item_id.to_owned(), user.0.clone());
        self.write(move |conn| {
            found(
                execute(conn, DELETE_ITEM, params![thread_id, id, user]).map_err(backend_error)? > 0,
                Entity::Item,
                id,
            )
        })
        .await
    }

    async fn save_attachment(&self, user: &UserId, attachment: &Attachment) -> StoreResult<()> {
        let (id, user, data) = (attachment.id.clone(), user.0.clone(), to_json(attachment)?);
        self.write(move |conn| {
            // No row changed: the id belongs to another user's attachment, which stays
            // untouched and is reported as missing so that its existence does not leak.
            found(
                execute(conn, UPSERT_ATTACHMENT, params![id, user, data]).map_err(backend_error)? > 0,
                Entity::Attachment,
                id,
            )
        })
        .await
    }

    async fn load_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<Attachment> {
        let (id, user) = (attachment_id.to_owned(), user.0.clone());
        self.read(move |conn| {
            query_record(conn, LOAD_ATTACHMENT, params![id, user])?
                .ok_or_else(|| StoreError::not_found(Entity::Attachment, id))
        })
        .await
    }

    async fn delete_attachment(&self, user: &UserId, attachment_id: &str) -> StoreResult<()> {
        let (id, user) = (attachment_id.to_owned(), user.0.clone());
        self.write(move |conn| {
            found(
                execute(conn, DELETE_ATTACHMENT, params![id, user]).map_err(backend_error)? > 0,
                Entity::Attachment,
                id,
            )
        })
        .await
    }

    async fn create_session(&self, session: &SessionRecord) -> StoreResult<()> {
        let settings = to_json(&session.settings)?;
        let session = session.clone();
        self.write(move |conn| {
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
            execute(conn, INSERT_SESSION, row).map_err(|err| insert_error(err, Entity::Session, &session.id))?;
            Ok(())
        })
        .await
    }

    async fn load_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let id = session_id.to_owned();
        self.read(move |conn| {
            query_session(conn, LOAD_SESSION, params![id])?.ok_or_else(|| StoreError::not_found(Entity::Session, id))
        })
        .await
    }

    async fn find_session(&self, secret_hash: &str) -> StoreResult<SessionRecord> {
        let hash = secret_hash.to_owned();
        self.read(move |conn| {
            query_session(conn, FIND_SESSION, params![hash])?
                .ok_or_else(|| StoreError::not_found(Entity::Session, SESSION_BY_SECRET))
        })
        .await
    }

    async fn cancel_session(&self, session_id: &str) -> StoreResult<SessionRecord> {
        let id = session_id.to_owned();
        self.write(move |conn| {
            query_session(conn, CANCEL_SESSION, params![id])?.ok_or_else(|| StoreError::not_found(Entity::Session, id))
        })
        .await
    }

    async fn list_threads(
        &self,
        user: Option<&UserId>,
        query: &ListQuery,
    ) -> StoreResult<Listing<(UserId, ThreadMetadata)>> {
        let limit = effective_limit(query.limit);
        let (user, after, before, order) =
            (user.map(|user| user.0.clone()), query.after.clone(), query.before.clone(), query.order);
        self.read(move |conn| {
            let (mut after_seq, mut before_seq) = (None, None);
            if after.is_some() || before.is_some() {
                (after_seq, before_seq) = conn
                    .prepare_cached(THREAD_CURSORS)
                    .and_then(|mut statement| {
                        statement.query_row(params![after, before, user], |row| Ok((row.get(0)?, row.get(1)?)))
                    })
                    .map_err(backend_error)?;
                known_cursor(after, after_seq)?;
                known_cursor(before, before_seq)?;
            }
            let window = Window::new(order, after_seq, before_seq);
            let (low, high) = window.sql_bounds();
            let parse = |row: &Row<'_>| Ok((UserId(text(row, 0)?.to_owned()), from_json(text(row, 1)?)?));
            let fetch = fetch_limit(limit);
            match &user {
                None => {
                    let sql = if window.ascending { ALL_THREADS_UP } else { ALL_THREADS_DOWN };
                    query_listing(conn, sql, params![low, high, fetch], limit, window, parse)
                }
                Some(user) => {
                    let sql = if window.ascending { USER_THREADS_UP } else { USER_THREADS_DOWN };
                    query_listing(conn, sql, params![user, low, high, fetch], limit, window, parse)
                }
            }
        })
        .await
    }

    async fn list_items(&self, user: &UserId, thread_id: &str, query: &ListQuery) -> StoreResult<Listing<ThreadItem>> {
        let limit = effective_limit(query.limit);
        let (thread_id, user, after, before, order) =
            (thread_id.to_owned(), user.0.clone(), query.after.clone(), query.before.clone(), query.order);
        self.read(move |conn| {
            let (mut after_seq, mut before_seq) = (None, None);
            let cursors = after.is_some() || before.is_some();
            if cursors {
                let thread_known: bool;
                (thread_known, after_seq, before_seq) = conn
                    .prepare_cached(ITEM_CURSORS)
                    .and_then(|mut statement| {
                        statement.query_row(params![thread_id, user, after, before], |row| {
                            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                        })
                    })
                    .map_err(backend_error)?;
                if !thread_known {
                    return Err(StoreError::not_found(Entity::Thread, thread_id));
                }
                known_cursor(after, after_seq)?;
                known_cursor(before, before_seq)?;
            }
            let window = Window::new(order, after_seq, before_seq);
            let (low, high) = window.sql_bounds();
            let sql = if window.ascending { ITEMS_UP } else { ITEMS_DOWN };
            let listing = query_listing(
                conn,
                sql,
                params![thread_id, user, low, high, fetch_limit(limit)],
                limit,
                window,
                |row| from_json(text(row, 0)?),
            )?;
            // Without cursors no rows may also mean a missing or foreign thread,
            // which only then is worth a second statement.
            if listing.data.is_empty()
                && !cursors
                && !query_value::<bool>(conn, THREAD_EXISTS, params![thread_id, user])?
            {
                return Err(StoreError::not_found(Entity::Thread, thread_id));
            }
            Ok(listing)
        })
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read(|conn| query_value::<i64>(conn, "SELECT 1", [])).await?;
        Ok(())
    }
}
