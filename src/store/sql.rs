//! The SQL the two SQL backends run, written once: every statement and every
//! schema migration, rendered for SQLite or PostgreSQL by `Dialect`, plus the
//! record and row helpers both backends share.
//!
//! The SQL is written in SQLite's spelling (`?1` parameters) with a marker in
//! braces wherever PostgreSQL spells something differently; `SPELLINGS` names
//! every such difference. It holds `?` and `{` nowhere else, not even in a
//! string literal. Each backend renders `Statements` once per process, into a
//! static, so that its statements live as long as its statement cache.
//!
//! Records are kept as JSON text, in both backends: JSONB would reject the
//! `\u0000` escape a string may legitimately contain, and nothing queries inside
//! a record. Order is the `seq` column (insertion order), never `created_at`,
//! because two records may share a timestamp.

use serde::{de::DeserializeOwned, Serialize};

use super::{Entity, SessionRecord, StoreError, StoreResult, UserId};
use crate::protocol::{ListedThread, ThreadMetadata};

/// The SQL dialects the store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

/// Every difference between the dialects besides parameters (`?1` in SQLite,
/// `$1` in PostgreSQL): a marker of the shared SQL, then its SQLite and its
/// PostgreSQL spelling. The types are those the released schemas were created
/// with, so that a database made by any build keeps matching.
const SPELLINGS: &[(&str, &str, &str)] = &[
    // The insertion order: in SQLite a rowid alias that never reuses a deleted
    // row's number, in PostgreSQL a sequence.
    ("{SERIAL}", "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    // A 64-bit integer; SQLite's INTEGER is 64-bit (and `INTEGER PRIMARY KEY` a rowid alias).
    ("{BIGINT}", "INTEGER", "BIGINT"),
    // SQLite has no boolean type: it keeps 0 and 1.
    ("{BOOLEAN}", "INTEGER", "BOOLEAN"),
    ("{FALSE}", "0", "FALSE"),
    ("{TRUE}", "1", "TRUE"),
    // When a migration was applied: ISO 8601 text in SQLite, a timestamp in PostgreSQL.
    ("{APPLIED_AT}", "TEXT NOT NULL", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
    ("{NOW}", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')", "now()"),
    // Bytes: SQLite's BLOB, PostgreSQL's BYTEA.
    ("{BYTES}", "BLOB", "BYTEA"),
];

impl Dialect {
    /// The shared SQL in this dialect. A marker missing from `SPELLINGS` is a
    /// mistake in this file, which the unit tests below catch by rendering all
    /// of it.
    pub(super) fn render(self, sql: &str) -> String {
        let mut rendered = String::with_capacity(sql.len() + 16);
        let mut rest = sql;
        while let Some(at) = rest.find(['?', '{']) {
            rendered.push_str(&rest[..at]);
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix('?') {
                rendered.push(match self {
                    Dialect::Sqlite => '?',
                    Dialect::Postgres => '$',
                });
                rest = after;
                continue;
            }
            let end = rest.find('}').map_or(rest.len(), |end| end + 1);
            let (marker, after) = rest.split_at(end);
            let spelling = SPELLINGS.iter().find(|(known, _, _)| *known == marker);
            let Some((_, sqlite, postgres)) = spelling else { panic!("unknown SQL marker `{marker}`") };
            rendered.push_str(match self {
                Dialect::Sqlite => sqlite,
                Dialect::Postgres => postgres,
            });
            rest = after;
        }
        rendered.push_str(rest);
        rendered
    }
}

/// One step of the schema. A later version appends a step; steps never change
/// once released, because existing databases have already applied them.
pub(super) struct Migration {
    pub version: i64,
    sql: &'static str,
}

impl Migration {
    /// The step's statements in `dialect`, to run as one batch.
    pub(super) fn sql(&self, dialect: Dialect) -> String {
        dialect.render(self.sql)
    }
}

/// The schema, in the order it is applied. Versions must increase. Rendered,
/// each step is byte for byte what earlier builds of either backend ran (and
/// SQLite keeps that text in `sqlite_master`), so the text is never reformatted.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: r#"
CREATE TABLE threads (
    seq {SERIAL},
    id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX threads_by_user ON threads (user_id, seq);

CREATE TABLE items (
    seq {SERIAL},
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
    created_at {BIGINT} NOT NULL,
    expires_at {BIGINT} NOT NULL,
    cancelled {BOOLEAN} NOT NULL DEFAULT {FALSE},
    settings TEXT NOT NULL
);
"#,
    },
    // Fencing tokens: each job that changes a thread claims the next one, and the store refuses
    // writes under an older one.
    Migration {
        version: 3,
        sql: r#"
ALTER TABLE threads ADD COLUMN fence {BIGINT} NOT NULL DEFAULT 0;
"#,
    },
    // Attachment bytes in the database (the blob store of a PostgreSQL
    // deployment), and the columns that find a thread's attachments and the
    // uploads never attached to a message. Rows from before this step have
    // neither: they are left to their thread's deletion by id, and never expire.
    Migration {
        version: 4,
        sql: r#"
CREATE TABLE blobs (
    name TEXT PRIMARY KEY,
    data {BYTES} NOT NULL
);
ALTER TABLE attachments ADD COLUMN thread_id TEXT;
ALTER TABLE attachments ADD COLUMN created_at {BIGINT};
CREATE INDEX attachments_by_thread ON attachments (thread_id, user_id);
CREATE INDEX attachments_unattached ON attachments (created_at) WHERE thread_id IS NULL;
"#,
    },
    // Expired sessions are deleted in the background, oldest expiry first:
    // the index lets each pass find its batch without a scan.
    Migration {
        version: 5,
        sql: r#"
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
"#,
    },
];

/// The schema version this build brings a database up to.
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The migrations a database at version `current` lacks, in order. A database
/// newer than this build is logged, and left as it is: the schema only grows,
/// so the tables this build uses are still there.
pub(super) fn pending_migrations(current: i64) -> impl Iterator<Item = &'static Migration> {
    if current > SCHEMA_VERSION {
        tracing::warn!(current, known = SCHEMA_VERSION, "database schema is newer than this build");
    }
    MIGRATIONS.iter().filter(move |migration| migration.version > current)
}

/// The columns every statement that reads a session selects, in the order
/// `SqlRow::session` reads them.
macro_rules! session_columns {
    () => {
        "id, secret_hash, user_id, created_at, expires_at, cancelled, settings"
    };
}

/// Declares `Statements`, with one field per statement, from their shared SQL.
macro_rules! statements {
    ($($(#[doc = $doc:literal])* $name:ident = $sql:expr;)+) => {
        /// Every statement of the SQL backends, rendered for one dialect.
        pub(super) struct Statements {
            $($(#[doc = $doc])* pub $name: String,)+
        }

        impl Statements {
            pub(super) fn new(dialect: Dialect) -> Statements {
                Statements { $($name: dialect.render($sql),)+ }
            }

            #[cfg(test)]
            fn all(&self) -> Vec<&str> {
                vec![$(self.$name.as_str(),)+]
            }
        }
    };
}

statements! {
    create_migrations_table = "CREATE TABLE IF NOT EXISTS schema_migrations \
        (version {BIGINT} PRIMARY KEY, applied_at {APPLIED_AT})";
    current_version = "SELECT CAST(COALESCE(MAX(version), 0) AS {BIGINT}) FROM schema_migrations";
    migration_applied = "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)";
    record_migration = "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, {NOW})";
    ping = "SELECT 1";

    insert_thread = "INSERT INTO threads (id, user_id, data) VALUES (?1, ?2, ?3)";
    load_thread = "SELECT data FROM threads WHERE id = ?1 AND user_id = ?2";
    find_thread = "SELECT user_id, data FROM threads WHERE id = ?1";
    update_thread = "UPDATE threads SET data = ?3 WHERE id = ?1 AND user_id = ?2";
    delete_thread = "DELETE FROM threads WHERE id = ?1 AND user_id = ?2";
    thread_exists = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2)";

    /// The positions of a thread listing's cursors (`?1` after, `?2` before):
    /// null for a missing cursor, and for one that names no thread of the
    /// listing, which with a user (`?3`) holds only that user's threads. The
    /// cast gives `?3` a type, which PostgreSQL cannot infer from `IS NULL`.
    thread_cursors = "SELECT (SELECT seq FROM threads WHERE id = ?1 AND (CAST(?3 AS TEXT) IS NULL OR user_id = ?3)), \
        (SELECT seq FROM threads WHERE id = ?2 AND (CAST(?3 AS TEXT) IS NULL OR user_id = ?3))";
    /// A window of every user's threads, scanned along the primary key.
    all_threads_up = "SELECT user_id, data FROM threads WHERE seq > ?1 AND seq < ?2 ORDER BY seq ASC LIMIT ?3";
    all_threads_down = "SELECT user_id, data FROM threads WHERE seq > ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";
    /// A window of one user's threads, scanned along `threads_by_user`.
    user_threads_up = "SELECT user_id, data FROM threads WHERE user_id = ?1 AND seq > ?2 AND seq < ?3 \
        ORDER BY seq ASC LIMIT ?4";
    user_threads_down = "SELECT user_id, data FROM threads WHERE user_id = ?1 AND seq > ?2 AND seq < ?3 \
        ORDER BY seq DESC LIMIT ?4";
    /// Whether the user owns the thread, and the positions of an item
    /// listing's cursors (`?3` after, `?4` before) among its items.
    item_cursors = "SELECT EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?2), \
        (SELECT seq FROM items WHERE thread_id = ?1 AND id = ?3 AND user_id = ?2), \
        (SELECT seq FROM items WHERE thread_id = ?1 AND id = ?4 AND user_id = ?2)";
    /// A window of a thread's items, scanned along `items_by_thread`.
    items_up = "SELECT data FROM items WHERE thread_id = ?1 AND user_id = ?2 \
        AND seq > ?3 AND seq < ?4 ORDER BY seq ASC LIMIT ?5";
    items_down = "SELECT data FROM items WHERE thread_id = ?1 AND user_id = ?2 \
        AND seq > ?3 AND seq < ?4 ORDER BY seq DESC LIMIT ?5";
    /// A thread's newest items, newest first, for `recent_items_json`.
    recent_items = "SELECT data FROM items WHERE thread_id = ?1 AND user_id = ?2 \
        ORDER BY seq DESC LIMIT ?3";

    load_item = "SELECT data FROM items WHERE thread_id = ?1 AND id = ?2 AND user_id = ?3";
    /// Appends an item, but only to a thread the user owns: no row is inserted otherwise.
    insert_item = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
        WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3)";
    /// As `insert_item`, but an existing item is updated in place, keeping its `seq`.
    upsert_item = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
        WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3) \
        ON CONFLICT (thread_id, id) DO UPDATE SET data = excluded.data";
    delete_item = "DELETE FROM items WHERE thread_id = ?1 AND id = ?2 AND user_id = ?3";

    /// The next fencing token of a thread, by id alone.
    claim_thread = "UPDATE threads SET fence = fence + 1 WHERE id = ?1 RETURNING fence";
    /// A thread's newest fencing token, to tell a refused fenced write from a missing thread.
    thread_fence = "SELECT fence FROM threads WHERE id = ?1 AND user_id = ?2";
    /// The fenced writes: as their unfenced namesakes, but only while `fence` is at most the
    /// given token (it is never lower than a token claimed, so: while no newer claim exists).
    fenced_insert_item = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
        WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3 AND fence <= ?5)";
    fenced_upsert_item = "INSERT INTO items (id, thread_id, user_id, data) SELECT ?1, ?2, ?3, ?4 \
        WHERE EXISTS (SELECT 1 FROM threads WHERE id = ?2 AND user_id = ?3 AND fence <= ?5) \
        ON CONFLICT (thread_id, id) DO UPDATE SET data = excluded.data";
    fenced_delete_item = "DELETE FROM items WHERE thread_id = ?1 AND id = ?2 AND user_id = ?3 \
        AND EXISTS (SELECT 1 FROM threads WHERE id = ?1 AND user_id = ?3 AND fence <= ?4)";
    fenced_update_thread = "UPDATE threads SET data = ?3 WHERE id = ?1 AND user_id = ?2 AND fence <= ?4";

    /// Inserts or replaces an attachment, but never one another user owns. Its
    /// creation time (`?5`, Unix seconds) is the first save's.
    upsert_attachment = "INSERT INTO attachments (id, user_id, data, thread_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
        ON CONFLICT (id) DO UPDATE SET data = excluded.data, thread_id = excluded.thread_id \
        WHERE attachments.user_id = excluded.user_id";
    /// The attachments bound to a thread's messages.
    thread_attachments = "SELECT id FROM attachments WHERE thread_id = ?1 AND user_id = ?2";
    /// Uploads never attached to a message, created before `?1`, oldest first, at most `?2`.
    stale_uploads = "SELECT user_id, id FROM attachments WHERE thread_id IS NULL AND created_at < ?1 \
        ORDER BY created_at LIMIT ?2";
    /// Deletes an upload only while no message holds it.
    expire_upload = "DELETE FROM attachments WHERE id = ?1 AND user_id = ?2 AND thread_id IS NULL";
    load_attachment = "SELECT data FROM attachments WHERE id = ?1 AND user_id = ?2";
    delete_attachment = "DELETE FROM attachments WHERE id = ?1 AND user_id = ?2";

    /// Stores a blob under a new name; a taken name changes no row.
    insert_blob = "INSERT INTO blobs (name, data) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING";
    load_blob = "SELECT data FROM blobs WHERE name = ?1";
    delete_blob = "DELETE FROM blobs WHERE name = ?1";

    insert_session = "INSERT INTO sessions (id, secret_hash, user_id, created_at, expires_at, cancelled, settings) \
        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
    load_session = concat!("SELECT ", session_columns!(), " FROM sessions WHERE id = ?1");
    find_session = concat!("SELECT ", session_columns!(), " FROM sessions WHERE secret_hash = ?1");
    cancel_session = concat!("UPDATE sessions SET cancelled = {TRUE} WHERE id = ?1 RETURNING ", session_columns!());
    /// Deletes at most `?2` sessions that expired at or before `?1`, the
    /// earliest expiries first, found along `sessions_by_expiry`.
    delete_expired_sessions = "DELETE FROM sessions WHERE id IN \
        (SELECT id FROM sessions WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";
}

impl Statements {
    /// The statement that scans a window of threads: of every user's or of
    /// one's, up or down the sequence.
    pub(super) fn threads_window(&self, one_user: bool, ascending: bool) -> &str {
        match (one_user, ascending) {
            (false, true) => &self.all_threads_up,
            (false, false) => &self.all_threads_down,
            (true, true) => &self.user_threads_up,
            (true, false) => &self.user_threads_down,
        }
    }

    /// The statement that scans a window of a thread's items, up or down the sequence.
    pub(super) fn items_window(&self, ascending: bool) -> &str {
        if ascending {
            &self.items_up
        } else {
            &self.items_down
        }
    }
}

pub(super) fn to_json<T: Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|err| StoreError::Backend(format!("cannot serialize record: {err}")))
}

pub(super) fn from_json<T: DeserializeOwned>(text: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|err| StoreError::Backend(format!("stored record does not parse: {err}")))
}

/// A stored JSON record as it is, checked to be JSON but not parsed into a type.
pub(super) fn raw_json(text: &str) -> StoreResult<Box<serde_json::value::RawValue>> {
    serde_json::value::RawValue::from_string(text.to_owned())
        .map_err(|err| StoreError::Backend(format!("stored record is not JSON: {err}")))
}

/// The SQL `LIMIT` that fetches one row beyond the page, which tells whether more follow.
pub(super) fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX)
}

/// A statement that changed no row found nothing to change: the record is
/// missing, or belongs to another user, which must look the same.
pub(super) fn found(changed: bool, entity: Entity, id: impl Into<String>) -> StoreResult<()> {
    if changed {
        Ok(())
    } else {
        Err(StoreError::not_found(entity, id))
    }
}

/// A result row of either backend, read by column index. Text is borrowed from
/// the driver's buffer, so that JSON is parsed without a copy.
pub(super) trait SqlRow {
    fn text(&self, index: usize) -> StoreResult<&str>;
    fn integer(&self, index: usize) -> StoreResult<i64>;
    fn boolean(&self, index: usize) -> StoreResult<bool>;

    /// A JSON record column, parsed.
    fn record<T: DeserializeOwned>(&self, index: usize) -> StoreResult<T> {
        from_json(self.text(index)?)
    }

    /// A thread with its owner, from `user_id, data` columns.
    fn owned_thread(&self) -> StoreResult<(UserId, ThreadMetadata)> {
        Ok((UserId(self.text(0)?.to_owned()), self.record(1)?))
    }

    /// A thread as a listing shows it, from the same `user_id, data` columns.
    fn listed_thread(&self) -> StoreResult<ListedThread> {
        ListedThread::from_stored(self.text(1)?)
            .map_err(|err| StoreError::Backend(format!("stored record does not parse: {err}")))
    }

    /// A session, from the columns of `session_columns!`.
    fn session(&self) -> StoreResult<SessionRecord> {
        Ok(SessionRecord {
            id: self.text(0)?.to_owned(),
            secret_hash: self.text(1)?.to_owned(),
            user: self.text(2)?.to_owned(),
            created_at: self.integer(3)?,
            expires_at: self.integer(4)?,
            cancelled: self.boolean(5)?,
            settings: self.record(6)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{Dialect, Statements, MIGRATIONS};

    /// Renders every statement and migration in both dialects, so that a
    /// marker missing from `SPELLINGS` fails here rather than at a store's open.
    fn rendered(dialect: Dialect) -> Vec<String> {
        let statements = Statements::new(dialect);
        let mut all: Vec<String> = statements.all().into_iter().map(str::to_owned).collect();
        all.extend(MIGRATIONS.iter().map(|migration| migration.sql(dialect)));
        all
    }

    #[test]
    fn every_marker_has_a_spelling() {
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            for sql in rendered(dialect) {
                assert!(!sql.contains(['{', '}']), "{dialect:?} leaves a marker in `{sql}`");
            }
        }
        for sql in rendered(Dialect::Postgres) {
            assert!(!sql.contains('?'), "PostgreSQL gets a `?` parameter in `{sql}`");
        }
    }

    #[test]
    fn parameters_and_types_follow_the_dialect() {
        let sqlite = Statements::new(Dialect::Sqlite);
        let postgres = Statements::new(Dialect::Postgres);
        assert_eq!(sqlite.update_thread, "UPDATE threads SET data = ?3 WHERE id = ?1 AND user_id = ?2");
        assert_eq!(postgres.update_thread, "UPDATE threads SET data = $3 WHERE id = $1 AND user_id = $2");
        assert_eq!(
            postgres.create_migrations_table,
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        );
        assert_eq!(
            sqlite.create_migrations_table,
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        );
        assert!(MIGRATIONS[0].sql(Dialect::Sqlite).contains("seq INTEGER PRIMARY KEY AUTOINCREMENT,"));
        assert!(MIGRATIONS[0].sql(Dialect::Postgres).contains("seq BIGSERIAL PRIMARY KEY,"));
    }

    #[test]
    #[should_panic(expected = "unknown SQL marker `{NOPE}`")]
    fn an_unknown_marker_is_a_mistake() {
        Dialect::Postgres.render("SELECT {NOPE}");
    }
}
