//! The embedded backend: one SQLite file (WAL), one connection behind a mutex, write
//! transactions opened with BEGIN IMMEDIATE so that another process on the same file
//! (`kiln-enroll token create` next to a running server) waits instead of failing late.
//!
//! The file holds the CA's private key and the join tokens: it is made 0600 in a 0700
//! folder, and an existing file, WAL or shared-memory file, or folder that group or others
//! may read (or write) is refused with the `chmod` that fixes it.

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use super::codec::{
    self, RawCluster, RawNode, RawToken, CLUSTER_COLUMNS, NODE_COLUMNS, SCHEMA_V2, SCHEMA_VERSION,
    TOKEN_COLUMNS,
};
use super::ops::{self, Tx};
use super::{
    CaPem, Cluster, EnrollInput, EnrollOutcome, HeartbeatInput, NodeRecord, Pools, Store,
    StoreError, TokenRecord,
};

/// How long a transaction waits for another process's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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
    conn: Mutex<Connection>,
}

fn backend(db: &str, op: &str, e: &rusqlite::Error) -> StoreError {
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
        let conn = Connection::open(path).map_err(|e| backend(&db, "opening", &e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| backend(&db, "setting busy_timeout", &e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| backend(&db, "switching to WAL", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend {
                what: format!("{db}: journal mode is {mode:?}, WAL could not be set"),
                retry: false,
            });
        }
        let store = SqliteStore {
            db,
            conn: Mutex::new(conn),
        };
        store.write("migrating the schema", migrate)?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock left at most an uncommitted transaction, which
        // SQLite rolled back when it was dropped: the connection is still good.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run<T>(
        &self,
        op: &str,
        behavior: TransactionBehavior,
        f: impl FnOnce(&mut SqlTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(behavior)
            .map_err(|e| backend(&self.db, &format!("{op}: beginning"), &e))?;
        let out = f(&mut SqlTx {
            tx: &tx,
            db: &self.db,
        })?;
        tx.commit()
            .map_err(|e| backend(&self.db, &format!("{op}: committing"), &e))?;
        Ok(out)
    }

    fn write<T>(
        &self,
        op: &str,
        f: impl FnOnce(&mut SqlTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(op, TransactionBehavior::Immediate, f)
    }

    fn read<T>(
        &self,
        op: &str,
        f: impl FnOnce(&mut SqlTx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(op, TransactionBehavior::Deferred, f)
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
    tx.tx
        .execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(|e| backend(db, "creating table meta", &e))?;
    let found: Option<String> = tx
        .tx
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
        tx.tx
            .execute_batch(SCHEMA_V1)
            .map_err(|e| backend(db, "creating schema version 1", &e))?;
    }
    if found < 2 {
        // Adds a table only: version 1 rows stay as they are.
        tx.tx
            .execute_batch(SCHEMA_V2)
            .map_err(|e| backend(db, "migrating to schema version 2", &e))?;
    }
    tx.tx
        .execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| backend(db, "writing schema_version", &e))?;
    Ok(())
}

/// A transaction on the SQLite file.
struct SqlTx<'a> {
    tx: &'a Transaction<'a>,
    db: &'a str,
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawToken> {
    Ok(RawToken {
        id: r.get(0)?,
        secret_hash: r.get(1)?,
        created: r.get(2)?,
        expires: r.get(3)?,
        uses_total: r.get(4)?,
        uses_left: r.get(5)?,
        role: r.get(6)?,
        labels: r.get(7)?,
        revoked: r.get(8)?,
    })
}

fn node_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        name: r.get(0)?,
        public_key: r.get(1)?,
        credential_hash: r.get(2)?,
        token_id: r.get(3)?,
        address_v4: r.get(4)?,
        address_v6: r.get(5)?,
        arch: r.get(6)?,
        role: r.get(7)?,
        labels: r.get(8)?,
        enrolled: r.get(9)?,
        revoked: r.get(10)?,
        last_heartbeat: r.get(11)?,
        online: r.get(12)?,
        endpoints: r.get(13)?,
        public_endpoint: r.get(14)?,
        public_verified: r.get(15)?,
    })
}

impl SqlTx<'_> {
    fn err(&self, op: &str, e: &rusqlite::Error) -> StoreError {
        backend(self.db, op, e)
    }

    fn select_nodes(&self, filter: &str, arg: Option<&str>) -> Result<Vec<NodeRecord>, StoreError> {
        let op = "reading nodes";
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes {filter}");
        let mut stmt = self.tx.prepare(&sql).map_err(|e| self.err(op, &e))?;
        let rows = match arg {
            Some(a) => stmt.query_map(params![a], node_row),
            None => stmt.query_map([], node_row),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_name(out))
    }

    fn select_tokens(
        &self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let op = "reading tokens";
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens {filter}");
        let mut stmt = self.tx.prepare(&sql).map_err(|e| self.err(op, &e))?;
        let rows = match arg {
            Some(a) => stmt.query_map(params![a], token_row),
            None => stmt.query_map([], token_row),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_id(out))
    }
}

impl Tx for SqlTx<'_> {
    fn ca(&mut self) -> Result<Option<CaPem>, StoreError> {
        self.tx
            .query_row("SELECT cert_pem, key_pem FROM ca WHERE id = 1", [], |r| {
                Ok(CaPem {
                    cert_pem: r.get(0)?,
                    key_pem: r.get(1)?,
                })
            })
            .optional()
            .map_err(|e| self.err("reading the CA", &e))
    }

    fn insert_ca_if_absent(&mut self, ca: &CaPem) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO ca (id, cert_pem, key_pem) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO NOTHING",
                params![ca.cert_pem, ca.key_pem],
            )
            .map_err(|e| self.err("storing the CA", &e))?;
        Ok(())
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .select_tokens("WHERE id = ?1", Some(id))?
            .into_iter()
            .next())
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.select_tokens("", None)
    }

    fn insert_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        let r = RawToken::encode(t);
        self.tx
            .execute(
                &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    r.id,
                    r.secret_hash,
                    r.created,
                    r.expires,
                    r.uses_total,
                    r.uses_left,
                    r.role,
                    r.labels,
                    r.revoked
                ],
            )
            .map_err(|e| self.err(&format!("inserting token {}", t.id), &e))?;
        Ok(())
    }

    fn update_token(
        &mut self,
        id: &str,
        revoked: bool,
        uses_left: u32,
    ) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute(
                "UPDATE tokens SET revoked = ?2, uses_left = ?3 WHERE id = ?1",
                params![id, revoked, uses_left],
            )
            .map_err(|e| self.err(&format!("updating token {id}"), &e))?;
        Ok(n > 0)
    }

    fn nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError> {
        self.select_nodes("", None)
    }

    fn node(&mut self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .select_nodes("WHERE name = ?1", Some(name))?
            .into_iter()
            .next())
    }

    fn insert_node(&mut self, n: &NodeRecord) -> Result<(), StoreError> {
        let r = RawNode::encode(n);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, \
                     ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ),
                params![
                    r.name,
                    r.public_key,
                    r.credential_hash,
                    r.token_id,
                    r.address_v4,
                    r.address_v6,
                    r.arch,
                    r.role,
                    r.labels,
                    r.enrolled,
                    r.revoked,
                    r.last_heartbeat,
                    r.online,
                    r.endpoints,
                    r.public_endpoint,
                    r.public_verified
                ],
            )
            .map_err(|e| self.err(&format!("inserting node {}", n.name), &e))?;
        Ok(())
    }

    fn update_node(&mut self, n: &NodeRecord) -> Result<(), StoreError> {
        let r = RawNode::encode(n);
        self.tx
            .execute(
                "UPDATE nodes SET revoked = ?2, last_heartbeat = ?3, online = ?4, endpoints = ?5,
                 public_endpoint = ?6, public_verified = ?7 WHERE name = ?1",
                params![
                    r.name,
                    r.revoked,
                    r.last_heartbeat,
                    r.online,
                    r.endpoints,
                    r.public_endpoint,
                    r.public_verified
                ],
            )
            .map_err(|e| self.err(&format!("updating node {}", n.name), &e))?;
        Ok(())
    }

    fn version(&mut self) -> Result<u64, StoreError> {
        let text: String = self
            .tx
            .query_row(
                "SELECT value FROM meta WHERE key = 'peers_version'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err("reading peers_version", &e))?;
        codec::version_of(&text)
    }

    fn set_version(&mut self, v: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE meta SET value = ?1 WHERE key = 'peers_version'",
                params![v.to_string()],
            )
            .map_err(|e| self.err("writing peers_version", &e))?;
        Ok(())
    }

    fn cluster(&mut self) -> Result<Option<Cluster>, StoreError> {
        let raw = self
            .tx
            .query_row(
                &format!("SELECT {CLUSTER_COLUMNS} FROM cluster WHERE id = 1"),
                [],
                |r| {
                    Ok(RawCluster {
                        kind: r.get(0)?,
                        server_url: r.get(1)?,
                        init_node: r.get(2)?,
                        token: r.get(3)?,
                        agent_token: r.get(4)?,
                        endpoint: r.get(5)?,
                        ca_cert_hashes: r.get(6)?,
                        certificate_key: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err("reading the cluster", &e))?;
        raw.map(RawCluster::decode).transpose()
    }

    fn put_cluster(&mut self, c: &Cluster) -> Result<(), StoreError> {
        let r = RawCluster::encode(c);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO cluster (id, {CLUSTER_COLUMNS}) VALUES (1, ?1, ?2, ?3, ?4, ?5, \
                     ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, \
                     server_url = excluded.server_url, init_node = excluded.init_node, \
                     token = excluded.token, agent_token = excluded.agent_token, \
                     endpoint = excluded.endpoint, ca_cert_hashes = excluded.ca_cert_hashes, \
                     certificate_key = excluded.certificate_key"
                ),
                params![
                    r.kind,
                    r.server_url,
                    r.init_node,
                    r.token,
                    r.agent_token,
                    r.endpoint,
                    r.ca_cert_hashes,
                    r.certificate_key
                ],
            )
            .map_err(|e| self.err("storing the cluster", &e))?;
        Ok(())
    }

    fn delete_cluster(&mut self) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("DELETE FROM cluster", [])
            .map_err(|e| self.err("removing the cluster", &e))?;
        Ok(n > 0)
    }
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
        self.write("storing the CA", |tx| ops::store_ca(tx, &fresh))
    }

    fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.write("creating a token", |tx| tx.insert_token(t))
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read("reading a token", |tx| tx.token(id))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read("listing tokens", |tx| tx.tokens())
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.write("revoking a token", |tx| ops::revoke_token(tx, id))
    }

    fn enroll(&self, input: &EnrollInput, pools: &Pools) -> Result<EnrollOutcome, StoreError> {
        self.write("enrolling", |tx| ops::enroll(tx, input, pools))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read("listing nodes", |tx| tx.nodes())
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.read("reading a node", |tx| tx.node(name))
    }

    fn revoke_node(&self, name: &str) -> Result<bool, StoreError> {
        self.write("revoking a node", |tx| ops::revoke_node(tx, name))
    }

    fn heartbeat(
        &self,
        name: &str,
        hb: &HeartbeatInput,
        now: u64,
        fresh: u64,
    ) -> Result<(), StoreError> {
        self.write("recording a heartbeat", |tx| {
            ops::heartbeat(tx, name, hb, now, fresh)
        })
    }

    fn expire(&self, now: u64, ttl: u64) -> Result<usize, StoreError> {
        self.write("expiring silent nodes", |tx| ops::expire(tx, now, ttl))
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
        self.write("setting the cluster", |tx| ops::set_cluster(tx, c, replace))
    }

    fn clear_cluster(&self) -> Result<bool, StoreError> {
        self.write("removing the cluster", |tx| tx.delete_cluster())
    }

    fn claim_first_server(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        self.write("choosing the first server", |tx| {
            ops::claim_first_server(tx, name)
        })
    }
}
