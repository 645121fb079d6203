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
//! on committing; see `connection::WRITER_AUTOCHECKPOINT` for the part left to
//! the writer.
//!
//! `worker.rs` runs the threads and their queues, `connection.rs` opens the
//! connections and migrates the schema, `store.rs` implements `Store` with the
//! SQL of `store::sql`. The caller serializes the records it writes, and a
//! reader thread parses what it reads.

mod connection;
mod store;
mod worker;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use super::sql::{Dialect, Statements, SCHEMA_VERSION};
use super::{StoreError, StoreResult};
use store::query_value;
use worker::Workers;

/// The store's SQL, rendered for SQLite once per process.
static SQL: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));

/// A store in one SQLite database file (or one in-memory database).
///
/// Every clone holds the same queues to the database's threads. Dropping the
/// last clone drops them, and each thread ends once it has answered what is
/// already queued; nothing waits for them, so a drop never blocks.
#[derive(Clone)]
pub struct SqliteStore {
    workers: Arc<Workers>,
    /// Where the database is, for `Debug`.
    location: Arc<str>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("database", &self.location)
            .field("reader_threads", &self.workers.reader_threads)
            .finish_non_exhaustive()
    }
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

impl SqliteStore {
    /// The schema version this build creates and expects.
    pub const SCHEMA_VERSION: i64 = SCHEMA_VERSION;

    /// Opens (creating if missing) the database a URL names and brings its schema up to date.
    ///
    /// Accepts `sqlite://relative/path.db`, `sqlite:///abs/path.db` and `sqlite::memory:`.
    pub async fn open(url: &str) -> StoreResult<SqliteStore> {
        let (workers, location) = match parse_url(url)? {
            Location::Memory => (Workers::start(None).await?, "sqlite::memory:".to_owned()),
            Location::File(path) => {
                let path = Path::new(path);
                if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent).await.map_err(|err| {
                        StoreError::Backend(format!("cannot create directory `{}`: {err}", parent.display()))
                    })?;
                }
                (Workers::start(Some(path.to_path_buf())).await?, path.display().to_string())
            }
        };
        Ok(SqliteStore { workers: Arc::new(workers), location: location.into() })
    }

    /// The highest schema version applied to this database.
    pub async fn schema_version(&self) -> StoreResult<i64> {
        self.workers.read(|conn| query_value(conn, &SQL.current_version, [])).await
    }

    /// Stops the threads once they have answered every job queued so far, and
    /// waits for them to end, closing the connections. Later calls on this store
    /// (or any clone) fail with a backend error.
    pub async fn close(&self) {
        self.workers.stop().await;
    }
}
