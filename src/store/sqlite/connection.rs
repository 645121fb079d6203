//! Opening the SQLite store's connections: the settings each gets, WAL, and
//! bringing the schema up to date.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::store::backend_error;
use super::SQL;
use crate::store::sql::{pending_migrations, Dialect, Migration};
use crate::store::{StoreError, StoreResult};

/// How long a connection waits for a lock held by another process before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements each connection keeps. All the statements this store
/// runs fit, including those of an in-memory database's single connection.
const STATEMENT_CACHE_CAPACITY: usize = 64;

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

/// Whether an error is SQLite's "the file is locked" (`SQLITE_BUSY` or `SQLITE_LOCKED`).
fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(err.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// Settings every connection gets.
fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    // The query planner stability guarantee: a statement keeps the plan it was prepared with,
    // whatever values are bound. Without it SQLite (built with STAT4, as rusqlite's bundled copy
    // is) looks at bound values while planning (`LIMIT ?`, `user_id = ?`), which marks the
    // statement to be compiled again each time they are bound: a parse and a plan on every
    // execution of a cached statement. Our statements' plans never depend on the values.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

const OPEN_FLAGS: OpenFlags = OpenFlags::SQLITE_OPEN_READ_WRITE.union(OpenFlags::SQLITE_OPEN_NO_MUTEX);

/// Opens the write connection and brings the schema up to date; `None` is an in-memory database.
pub(super) fn open_writer(file: Option<&Path>) -> StoreResult<Connection> {
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
pub(super) fn open_existing(path: &Path, query_only: bool) -> StoreResult<Connection> {
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
    conn.execute_batch(&SQL.create_migrations_table).map_err(backend_error)?;
    let current: i64 = conn.query_row(&SQL.current_version, [], |row| row.get(0)).map_err(backend_error)?;
    for migration in pending_migrations(current) {
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
    let applied: bool =
        conn.query_row(&SQL.migration_applied, [migration.version], |row| row.get(0)).map_err(backend_error)?;
    if !applied {
        conn.execute_batch(&migration.sql(Dialect::Sqlite))
            .map_err(|err| StoreError::Backend(format!("schema migration {} failed: {err}", migration.version)))?;
        conn.execute(&SQL.record_migration, [migration.version]).map_err(backend_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the planner's stability guarantee a cached statement runs again without being compiled
    /// again, whatever is bound; without it, binding new values to `LIMIT ?` recompiles it each time.
    #[test]
    fn cached_statements_are_not_compiled_again_for_new_bindings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qpsg.db");
        drop(open_writer(Some(&path)).unwrap());
        let reader = open_existing(&path, true).unwrap();
        assert!(reader.db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG).unwrap());
        let sql = "SELECT data FROM items WHERE thread_id = ?1 AND user_id = ?2 ORDER BY seq DESC LIMIT ?3";
        let recompiled = |conn: &Connection| {
            for limit in 1..=3 {
                let mut statement = conn.prepare_cached(sql).unwrap();
                statement.query(rusqlite::params!["thr_1", "alice", limit]).unwrap().next().unwrap();
            }
            let statement = conn.prepare_cached(sql).unwrap();
            statement.get_status(rusqlite::StatementStatus::RePrepare)
        };
        assert_eq!(recompiled(&reader), 0);
        // The same statement on a connection without the guarantee: what the setting prevents.
        reader.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, false).unwrap();
        reader.flush_prepared_statement_cache();
        assert!(recompiled(&reader) > 0, "SQLite no longer recompiles for new bindings; the setting may go");
    }
}
