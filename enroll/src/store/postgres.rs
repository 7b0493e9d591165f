//! The replicated backend: PostgreSQL through a small pool of blocking clients for reads
//! and one writer connection whose transactions are grouped ([`super::group`]). Every
//! write transaction first takes one transaction-scoped advisory lock, so writes from all
//! replicas run one at a time (an enrollment picks the lowest free address and a unique
//! name from the registry it brought up to date under the lock: without the lock two
//! replicas could pick the same one). Serialization failures, deadlocks and lost
//! connections are retried a few times. To a host that is not this machine the
//! connection is TLS with a verified certificate ([`super::pgtls`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::{Client, Config, IsolationLevel, NoTls, Transaction};

use super::codec::{self, SCHEMA_V2, SCHEMA_V3, SCHEMA_VERSION};
use super::feed::Feed;
use super::group::{Conn, Group};
use super::ops::{self, Tx, Work};
use super::pg_rows::PgTx;
use super::pgtls::{self, MakeRustls, Transport};
use super::{
    CaPem, Cluster, EnrollInput, EnrollOutcome, HeartbeatInput, NodeRecord, PgOptions, Pools,
    Store, StoreError, TokenRecord,
};

/// Read connections one process keeps at most, besides its one writer (PostgreSQL allows
/// 100 by default, shared by every replica).
const MAX_CLIENTS: usize = 7;
/// Tries per operation when the failure is temporary.
const ATTEMPTS: u32 = 5;
/// How long an operation waits for a free connection.
const POOL_WAIT: Duration = Duration::from_secs(30);
/// How long connecting may take when the URL does not say.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The advisory lock all writers take ("kilnenrl").
const WRITE_LOCK: i64 = 0x6b69_6c6e_656e_726c;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS ca (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    uses_total BIGINT NOT NULL,
    uses_left BIGINT NOT NULL,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    revoked BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    public_key BYTEA NOT NULL UNIQUE,
    credential_hash BYTEA NOT NULL,
    token_id TEXT NOT NULL,
    address_v4 TEXT NOT NULL UNIQUE,
    address_v6 TEXT NOT NULL UNIQUE,
    arch TEXT NOT NULL,
    role TEXT NOT NULL,
    labels TEXT NOT NULL,
    enrolled BIGINT NOT NULL,
    revoked BOOLEAN NOT NULL,
    last_heartbeat BIGINT,
    online BOOLEAN NOT NULL,
    endpoints TEXT NOT NULL,
    public_endpoint TEXT,
    public_verified BOOLEAN NOT NULL
);
INSERT INTO meta (key, value) VALUES ('peers_version', '0') ON CONFLICT (key) DO NOTHING;
";

struct Pool {
    idle: Vec<Client>,
    open: usize,
}

/// The PostgreSQL store.
pub(crate) struct PgStore {
    config: Config,
    /// The TLS connector, when the connection is TLS.
    tls: Option<MakeRustls>,
    /// `postgres database USER@HOST:PORT/DB`, for messages (never the password).
    db: String,
    pool: Mutex<Pool>,
    freed: Condvar,
    group: Group<PgWriter>,
    feed: Feed,
}

/// The writer connection (connected on first use, and again after it was lost).
struct PgWriter {
    config: Config,
    tls: Option<MakeRustls>,
    db: String,
    client: Option<Client>,
}

impl PgWriter {
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let client = match &self.tls {
                Some(tls) => self.config.connect(tls.clone()),
                None => self.config.connect(NoTls),
            }
            .map_err(|e| backend(&self.db, "connecting the writer", &e))?;
            self.client = Some(client);
        }
        self.client.as_mut().ok_or_else(|| StoreError::Backend {
            what: format!("{}: the writer has no connection", self.db),
            retry: true,
        })
    }
}

impl Conn for PgWriter {
    fn begin(&mut self) -> Result<(), StoreError> {
        let db = self.db.clone();
        let client = self.client()?;
        let begun = client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
            .map_err(|e| backend(&db, "beginning a write", &e))
            .and_then(|()| {
                client
                    .execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                    .map_err(|e| backend(&db, "taking the write lock", &e))
            });
        if let Err(e) = begun {
            self.rollback();
            return Err(e);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let db = self.db.clone();
        self.client()?
            .batch_execute("COMMIT")
            .map_err(|e| backend(&db, "committing", &e))
    }

    fn rollback(&mut self) {
        if let Some(c) = self.client.as_mut() {
            if let Err(e) = c.batch_execute("ROLLBACK") {
                tracing::debug!("{}: rolling back: {e}", self.db);
                // A connection that cannot roll back is of no further use.
                self.client = None;
            }
        }
    }

    fn tx(&mut self) -> Result<Box<dyn Tx + '_>, StoreError> {
        let PgWriter { client, db, .. } = self;
        match client.as_mut() {
            Some(c) => Ok(Box::new(PgTx { tx: c, db })),
            None => Err(StoreError::Backend {
                what: format!("{db}: the writer lost its connection"),
                retry: true,
            }),
        }
    }
}

/// A pooled client; goes back to the pool on drop unless its connection broke.
struct Lease<'a> {
    store: &'a PgStore,
    client: Option<Client>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut pool = self.store.lock();
        match self.client.take() {
            Some(c) if !c.is_closed() => pool.idle.push(c),
            _ => pool.open = pool.open.saturating_sub(1),
        }
        self.store.freed.notify_one();
    }
}

pub(super) fn backend(db: &str, op: &str, e: &postgres::Error) -> StoreError {
    let retry = match e.code() {
        Some(code) => [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
        ]
        .contains(code),
        // No SQL state: the connection failed, closed or timed out.
        None => true,
    };
    // The postgres error's own text is only its kind ("error performing TLS handshake"):
    // the reason is in its sources.
    let mut what = format!("{db}: {op}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        what.push_str(&format!(": {s}"));
        source = s.source();
    }
    StoreError::Backend { what, retry }
}

fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = config.get_user().unwrap_or("");
    let dbname = config.get_dbname().unwrap_or(user);
    format!(
        "postgres database {user}@{}/{dbname}",
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        }
    )
}

impl PgStore {
    /// Parses the URL, decides on TLS (refusing clear text to another host before any
    /// connection is tried), connects once (so a wrong URL fails at start) and migrates.
    pub(crate) fn open(url: &str, pg: &PgOptions) -> Result<PgStore, StoreError> {
        let mut config: Config = url.parse().map_err(|e| StoreError::Backend {
            what: format!(
                "state URL {}: {e} (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DB)",
                super::redact_url(url)
            ),
            retry: false,
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let db = describe(&config);
        let refuse = |what: String| StoreError::Backend { what, retry: false };
        let tls = match pgtls::transport(&mut config, pg.allow_plaintext, &db).map_err(refuse)? {
            Transport::Plain => None,
            Transport::Tls => Some(MakeRustls::new(
                pgtls::client_config(&pg.ca_file).map_err(|e| refuse(format!("{db}: {e}")))?,
            )),
        };
        let store = PgStore {
            group: Group::new(PgWriter {
                config: config.clone(),
                tls: tls.clone(),
                db: db.clone(),
                client: None,
            }),
            feed: Feed::new(),
            db,
            tls,
            config,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        store.run("migrating the schema", true, &migrate)?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Pool> {
        // The pool's bookkeeping stays consistent at every await point, so a panic
        // elsewhere while holding the lock leaves nothing half-done.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease(&self) -> Result<Lease<'_>, StoreError> {
        let mut pool = self.lock();
        loop {
            if let Some(c) = pool.idle.pop() {
                if c.is_closed() {
                    pool.open = pool.open.saturating_sub(1);
                    continue;
                }
                return Ok(Lease {
                    store: self,
                    client: Some(c),
                });
            }
            if pool.open < MAX_CLIENTS {
                pool.open += 1;
                drop(pool);
                // From here the slot is ours: the Lease gives it back, also on failure.
                let mut lease = Lease {
                    store: self,
                    client: None,
                };
                let client = match &self.tls {
                    Some(tls) => self.config.connect(tls.clone()),
                    None => self.config.connect(NoTls),
                }
                .map_err(|e| backend(&self.db, "connecting", &e))?;
                lease.client = Some(client);
                return Ok(lease);
            }
            let (guard, waited) = self
                .freed
                .wait_timeout(pool, POOL_WAIT)
                .unwrap_or_else(|p| p.into_inner());
            pool = guard;
            if waited.timed_out() && pool.idle.is_empty() && pool.open >= MAX_CLIENTS {
                return Err(StoreError::Backend {
                    what: format!(
                        "{}: all {MAX_CLIENTS} connections stayed busy for {}s",
                        self.db,
                        POOL_WAIT.as_secs()
                    ),
                    retry: true,
                });
            }
        }
    }

    fn run<T>(
        &self,
        op: &str,
        write: bool,
        f: &dyn Fn(&mut PgTx<'_, Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            // Not getting a connection at all is not retried here: connecting already
            // waited its timeout, and the caller decides when to try again. Retried are
            // failures on a connection (a pooled one the server closed, serialization).
            let mut lease = self.lease()?;
            match self.once(&mut lease, op, write, f) {
                Err(e) if e.retryable() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "retrying");
                    std::thread::sleep(Duration::from_millis(25 * u64::from(attempt)));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn once<T>(
        &self,
        lease: &mut Lease<'_>,
        op: &str,
        write: bool,
        f: &dyn Fn(&mut PgTx<'_, Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Some(client) = lease.client.as_mut() else {
            return Err(StoreError::Backend {
                what: format!("{}: {op}: no connection", self.db),
                retry: true,
            });
        };
        // Reads see one snapshot (snapshot() reads the version and the nodes); writes
        // run one at a time under the lock and read the latest committed rows.
        let level = if write {
            IsolationLevel::ReadCommitted
        } else {
            IsolationLevel::RepeatableRead
        };
        let mut tx = client
            .build_transaction()
            .isolation_level(level)
            .read_only(!write)
            .start()
            .map_err(|e| backend(&self.db, &format!("{op}: beginning"), &e))?;
        if write {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                .map_err(|e| backend(&self.db, &format!("{op}: taking the write lock"), &e))?;
        }
        let out = f(&mut PgTx {
            tx: &mut tx,
            db: &self.db,
        })?;
        tx.commit()
            .map_err(|e| backend(&self.db, &format!("{op}: committing"), &e))?;
        Ok(out)
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
        f: &dyn Fn(&mut PgTx<'_, Transaction<'_>>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(op, false, f)
    }

    /// A read of one statement: no transaction around it (one round trip, not three).
    fn read_one<T>(
        &self,
        f: &dyn Fn(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 1;
        loop {
            let mut lease = self.lease()?;
            let r = match lease.client.as_mut() {
                Some(c) => f(&mut PgTx {
                    tx: c,
                    db: &self.db,
                }),
                None => Err(StoreError::Backend {
                    what: format!("{}: no connection", self.db),
                    retry: true,
                }),
            };
            match r {
                Err(e) if e.retryable() && attempt < ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "retrying");
                    std::thread::sleep(Duration::from_millis(25 * u64::from(attempt)));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

fn migrate(tx: &mut PgTx<'_, Transaction<'_>>) -> Result<(), StoreError> {
    let db = tx.db;
    tx.tx
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        )
        .map_err(|e| backend(db, "creating table meta", &e))?;
    let found: Option<String> = tx
        .tx
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .map_err(|e| backend(db, "reading schema_version", &e))?
        .map(|r| r.try_get(0))
        .transpose()
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
            .batch_execute(SCHEMA_V1)
            .map_err(|e| backend(db, "creating schema version 1", &e))?;
    }
    if found < 2 {
        // Adds a table only: version 1 rows stay as they are.
        tx.tx
            .batch_execute(SCHEMA_V2)
            .map_err(|e| backend(db, "migrating to schema version 2", &e))?;
    }
    if found < 3 {
        // Adds a column and its index; every existing row counts as changed now.
        tx.tx
            .batch_execute(SCHEMA_V3)
            .map_err(|e| backend(db, "migrating to schema version 3", &e))?;
    }
    tx.tx
        .execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| backend(db, "writing schema_version", &e))?;
    Ok(())
}

impl Store for PgStore {
    fn ca(&self, generate: &dyn Fn() -> Result<CaPem, String>) -> Result<CaPem, StoreError> {
        if let Some(ca) = self.read("reading the CA", &|tx| tx.ca())? {
            return Ok(ca);
        }
        // Generated outside the transaction; if another replica stored one meanwhile,
        // the insert does nothing and both read back the same CA.
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
        self.read_one(&|tx| tx.token(id))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read_one(&|tx| tx.tokens())
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.write(&|tx, w| ops::revoke_token(tx, w, id))
    }

    fn enroll(&self, input: &EnrollInput, pools: &Pools) -> Result<EnrollOutcome, StoreError> {
        self.write(&|tx, w| ops::enroll(tx, w, input, pools))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read_one(&|tx| tx.nodes())
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.read_one(&|tx| tx.node(name))
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
        self.read("reading the peer list", &|tx| {
            Ok((tx.version()?, tx.nodes()?))
        })
    }

    fn peers_version(&self) -> Result<u64, StoreError> {
        self.read_one(&|tx| tx.version())
    }

    fn cluster(&self) -> Result<Option<Cluster>, StoreError> {
        self.read_one(&|tx| tx.cluster())
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

    fn refresh(&self) -> Result<u64, StoreError> {
        let feed = &self.feed;
        let (loaded, have) = (feed.loaded(), feed.version());
        self.read("reading the peer list's changes", &|tx| {
            let v = tx.version()?;
            super::refresh_feed(feed, tx, loaded, have, v)
        })
    }
}
