//! The embedded backend: one SQLite file (WAL), a writer connection whose transactions
//! are grouped ([`super::group`]) and opened with BEGIN IMMEDIATE so that another process
//! on the same file (`kiln-enroll token create` next to a running server) waits instead
//! of failing late, and a reader connection (WAL lets it read the last commit while a
//! group is open, and it never sees a group's uncommitted writes).
//!
//! The file holds the CA's private key and the join tokens: it is made 0600 in a 0700
//! folder, and an existing file, WAL or shared-memory file, or folder that group or others
//! may read (or write) is refused with the `chmod` that fixes it.

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::codec::{self, SCHEMA_V2, SCHEMA_V3, SCHEMA_VERSION};
use super::feed::Feed;
use super::group::{Conn, Group};
use super::ops::{self, Tx, Work};
use super::sqlite_rows::SqlTx;
use super::{
    CaPem, Cluster, EnrollInput, EnrollOutcome, HeartbeatInput, NodeRecord, Pools, Store,
    StoreError, TokenRecord,
};

/// How long a transaction waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// WAL pages after which a commit checkpoints by itself. A serving process checkpoints
/// every second off the request path ([`Store::housekeeping`]), so only a process that
/// does not (the CLI) ever reaches this; SQLite's default of 1,000 made every few
/// hundred grouped commits wait for a checkpoint and its fsync.
const AUTO_CHECKPOINT_PAGES: u32 = 20_000;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    uses_total INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    revoked INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    public_key BLOB NOT NULL UNIQUE,
    credential_hash BLOB NOT NULL,
    token_id TEXT NOT NULL,
    address_v4 TEXT NOT NULL UNIQUE,
    address_v6 TEXT NOT NULL UNIQUE,
    arch TEXT NOT NULL,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    enrolled INTEGER NOT NULL,
    revoked INTEGER NOT NULL,
    last_heartbeat INTEGER,
    online INTEGER NOT NULL,
    endpoints TEXT NOT NULL,
    public_endpoint TEXT,
    public_verified INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('peers_version', '0');
";

/// The SQLite store.
pub(crate) struct SqliteStore {
    /// `sqlite database PATH`, for messages.
    db: String,
    reader: Mutex<Connection>,
    pub(super) group: Group<SqlWriter>,
    feed: Feed,
    /// The file, for the checkpoint connection.
    path: PathBuf,
    /// Opened on the first [`Store::housekeeping`].
    checkpointer: Mutex<Option<Connection>>,
}

/// The writer connection.
pub(super) struct SqlWriter {
    conn: Connection,
    db: String,
}

impl Conn for SqlWriter {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| backend(&self.db, "beginning a write", &e))
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| backend(&self.db, "committing", &e))
    }

    fn rollback(&mut self) {
        if let Err(e) = self.conn.execute_batch("ROLLBACK") {
            tracing::debug!("{}: rolling back: {e}", self.db);
        }
    }

    fn tx(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        Ok(Box::new(SqlTx {
            conn: &self.conn,
            db: &self.db,
        }))
    }
}

fn connect(db: &str, path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(|e| backend(db, "opening", &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| backend(db, "setting busy_timeout", &e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| backend(db, "switching to WAL", &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Backend {
            what: format!("{db}: journal mode is {mode:?}, WAL could not be set"),
            retry: false,
        });
    }
    Ok(conn)
}

pub(super) fn backend(db: &str, op: &str, e: &rusqlite::Error) -> StoreError {
    let retry = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    StoreError::Backend {
        what: format!("{db}: {op}: {e}"),
        retry,
    }
}

impl SqliteStore {
    /// Opens (creating with mode 0600, its folder 0700) and migrates the database.
    pub(crate) fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let db = format!("sqlite database {}", path.display());
        let io = |op: &str, e: std::io::Error| StoreError::Backend {
            what: format!("{db}: {op}: {e}"),
            retry: false,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io(&format!("creating folder {}", dir.display()), e))?;
        }
        // Before anything is created in a folder others can read.
        check_private(path)?;
        // Creating the file ourselves is the only way to give it 0600 from the start;
        // SQLite then gives its -wal and -shm files the same mode.
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("creating the file", e)),
        }
        let writer = connect(&db, path)?;
        writer
            .pragma_update(None, "wal_autocheckpoint", AUTO_CHECKPOINT_PAGES)
            .map_err(|e| backend(&db, "setting wal_autocheckpoint", &e))?;
        // Migrated before the reader opens, so the reader never sees an old schema.
        writer
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| backend(&db, "migrating the schema: beginning", &e))?;
        let migrated = migrate(&mut SqlTx {
            conn: &writer,
            db: &db,
        });
        match migrated {
            Ok(()) => writer
                .execute_batch("COMMIT")
                .map_err(|e| backend(&db, "migrating the schema: committing", &e))?,
            Err(e) => {
                let _ = writer.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        let reader = connect(&db, path)?;
        Ok(SqliteStore {
            group: Group::new(SqlWriter {
                conn: writer,
                db: db.clone(),
            }),
            reader: Mutex::new(reader),
            feed: Feed::new(),
            path: path.to_path_buf(),
            checkpointer: Mutex::new(None),
            db,
        })
    }

    fn write<T>(
        &self,
        f: &dyn Fn(&mut dyn Tx, &mut Work<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.group.write(&self.feed, f)
    }

    fn read<T>(
        &self,
        op: &str,
        f: impl FnOnce(&mut SqlTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock left at most an open read transaction, which
        // SQLite rolled back when it was dropped: the connection is still good.
        let mut conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .map_err(|e| backend(&self.db, &format!("{op}: beginning"), &e))?;
        let out = f(&mut SqlTx {
            conn: &tx,
            db: &self.db,
        })?;
        tx.commit()
            .map_err(|e| backend(&self.db, &format!("{op}: committing"), &e))?;
        Ok(out)
    }
}

/// Refuses a state file, WAL or shared-memory file that group or others have any access
/// to, or a folder they may read or write, naming the path and the `chmod` that fixes it.
/// (A folder others may only traverse, mode 0711, is fine: they cannot list or replace
/// the files.)
fn check_private(path: &Path) -> Result<(), StoreError> {
    let refuse = |what: &str, p: &Path, mode: u32, fix: &str| StoreError::Backend {
        what: format!(
            "{what} {} is open to group or others (mode {:04o}): it holds kiln-enroll's CA \
             private key and join tokens; run `{fix} {}` (kiln-enroll makes new files 0600 \
             and folders 0700; under systemd, set StateDirectoryMode=0700)",
            p.display(),
            mode & 0o7777,
            p.display()
        ),
        retry: false,
    };
    let mode_of = |p: &Path| -> Result<Option<u32>, StoreError> {
        match std::fs::metadata(p) {
            Ok(m) => Ok(Some(m.mode())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Backend {
                what: format!("reading the permissions of {}: {e}", p.display()),
                retry: false,
            }),
        }
    };
    let with_suffix = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let files = [
        ("the state file", path.to_path_buf()),
        ("the state's WAL file", with_suffix("-wal")),
        ("the state's shared-memory file", with_suffix("-shm")),
    ];
    for (what, file) in &files {
        if let Some(mode) = mode_of(file)? {
            if mode & 0o077 != 0 {
                return Err(refuse(what, file, mode, "chmod 600"));
            }
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Some(mode) = mode_of(dir)? {
        if mode & 0o066 != 0 {
            return Err(refuse("the state's folder", dir, mode, "chmod 700"));
        }
    }
    Ok(())
}

fn migrate(tx: &mut SqlTx<'_>) -> Result<(), StoreError> {
    let db = tx.db;
    tx.conn
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(|e| backend(db, "creating table meta", &e))?;
    let found: Option<String> = tx
        .conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| backend(db, "reading schema_version", &e))?;
    let found = match found {
        None => 0,
        Some(text) => text.parse::<i64>().map_err(|_| {
            StoreError::Corrupt(format!(
                "{db}: table meta, row \"schema_version\": {text:?} is not a number"
            ))
        })?,
    };
    codec::check_schema(db, found)?;
    if found < 1 {
        tx.conn
            .execute_batch(SCHEMA_V1)
            .map_err(|e| backend(db, "creating schema version 1", &e))?;
    }
    if found < 2 {
        // Adds a table only: version 1 rows stay as they are.
        tx.conn
            .execute_batch(SCHEMA_V2)
            .map_err(|e| backend(db, "migrating to schema version 2", &e))?;
    }
    if found < 3 {
        // Adds a column and its index; every existing row counts as changed now.
        tx.conn
            .execute_batch(SCHEMA_V3)
            .map_err(|e| backend(db, "migrating to schema version 3", &e))?;
    }
    tx.conn
        .execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| backend(db, "writing schema_version", &e))?;
    Ok(())
}

impl Store for SqliteStore {
    fn ca(&self, generate: &dyn Fn() -> Result<CaPem, String>) -> Result<CaPem, StoreError> {
        if let Some(ca) = self.read("reading the CA", |tx| tx.ca())? {
            return Ok(ca);
        }
        // Generated outside the transaction: key generation should not hold the lock.
        let fresh = generate().map_err(|e| StoreError::Backend {
            what: format!("{}: making the CA: {e}", self.db),
            retry: false,
        })?;
        self.write(&|tx, _| ops::store_ca(tx, &fresh))
    }

    fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.write(&|tx, _| tx.insert_token(t))
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read("reading a token", |tx| tx.token(id))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read("listing tokens", |tx| tx.tokens())
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.write(&|tx, w| ops::revoke_token(tx, w, id))
    }

    fn enroll(&self, input: &EnrollInput, pools: &Pools) -> Result<EnrollOutcome, StoreError> {
        self.write(&|tx, w| ops::enroll(tx, w, input, pools))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read("listing nodes", |tx| tx.nodes())
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.read("reading a node", |tx| tx.node(name))
    }

    fn revoke_node(&self, name: &str) -> Result<bool, StoreError> {
        self.write(&|tx, w| ops::revoke_node(tx, w, name))
    }

    fn heartbeat(
        &self,
        name: &str,
        hb: &HeartbeatInput,
        now: u64,
        fresh: u64,
    ) -> Result<(), StoreError> {
        self.write(&|tx, w| ops::heartbeat(tx, w, name, hb, now, fresh))
    }

    fn expire(&self, now: u64, ttl: u64) -> Result<usize, StoreError> {
        self.write(&|tx, w| ops::expire(tx, w, now, ttl))
    }

    fn snapshot(&self) -> Result<(u64, Vec<NodeRecord>), StoreError> {
        self.read("reading the peer list", |tx| {
            Ok((tx.version()?, tx.nodes()?))
        })
    }

    fn peers_version(&self) -> Result<u64, StoreError> {
        self.read("reading peers_version", |tx| tx.version())
    }

    fn cluster(&self) -> Result<Option<Cluster>, StoreError> {
        self.read("reading the cluster", |tx| tx.cluster())
    }

    fn set_cluster(&self, c: &Cluster, replace: bool) -> Result<bool, StoreError> {
        self.write(&|tx, w| ops::set_cluster(tx, w, c, replace))
    }

    fn clear_cluster(&self) -> Result<bool, StoreError> {
        self.write(&|tx, w| ops::clear_cluster(tx, w))
    }

    fn claim_first_server(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        self.write(&|tx, w| ops::claim_first_server(tx, w, name))
    }

    fn feed(&self) -> &Feed {
        &self.feed
    }

    fn housekeeping(&self) -> Result<(), StoreError> {
        let mut slot = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        let conn = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(connect(&self.db, &self.path)?),
        };
        // PASSIVE: copies what no reader still needs, never waits for the writer.
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .map_err(|e| backend(&self.db, "checkpointing the WAL", &e))
    }

    fn refresh(&self) -> Result<u64, StoreError> {
        let feed = &self.feed;
        let (loaded, have) = (feed.loaded(), feed.version());
        self.read("reading the peer list's changes", |tx| {
            let v = tx.version()?;
            super::refresh_feed(feed, tx, loaded, have, v)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::store::{Store, TokenRecord};
    use kiln_enroll_proto::api::Role;

    fn token(id: &str) -> TokenRecord {
        TokenRecord {
            id: id.to_string(),
            secret_hash: [1; 32],
            created: 1,
            expires: 2,
            uses_total: 1,
            uses_left: 1,
            role: Role::Worker,
            labels: Default::default(),
            revoked: false,
        }
    }

    /// A write that finds another one waiting leaves the transaction to it: two writes,
    /// one commit, and both are stored.
    #[test]
    fn writes_that_arrive_together_share_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("state").join("s.db")).unwrap();
        let before = store.group.commits.load(Ordering::SeqCst);
        let (inside, entered) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                store.write(&|tx, _| {
                    // Hold the group until the second write waits for it.
                    let _ = inside.send(());
                    while store.group.waiting.load(Ordering::SeqCst) == 0 {
                        std::thread::yield_now();
                    }
                    tx.insert_token(&token("first1"))
                })
            });
            entered.recv().unwrap();
            let second = s.spawn(|| store.create_token(&token("second")));
            first.join().unwrap().unwrap();
            second.join().unwrap().unwrap();
        });
        assert_eq!(store.group.commits.load(Ordering::SeqCst) - before, 1);
        let ids: Vec<String> = store.tokens().unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["first1", "second"]);
    }
}
