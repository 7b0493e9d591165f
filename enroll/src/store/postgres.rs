//! The replicated backend: PostgreSQL through a small pool of blocking clients. Every
//! write transaction first takes one transaction-scoped advisory lock, so writes from all
//! replicas run one at a time (enrollment reads every node to pick an address and a name:
//! without the lock two replicas could pick the same one). Serialization failures,
//! deadlocks and lost connections are retried a few times. To a host that is not this
//! machine the connection is TLS with a verified certificate ([`super::pgtls`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::{Client, Config, IsolationLevel, NoTls, Transaction};

use super::codec::{
    self, RawCluster, RawNode, RawToken, CLUSTER_COLUMNS, NODE_COLUMNS, SCHEMA_V2, SCHEMA_VERSION,
    TOKEN_COLUMNS,
};
use super::ops::{self, Tx};
use super::pgtls::{self, MakeRustls, Transport};
use super::{
    CaPem, Cluster, EnrollInput, EnrollOutcome, HeartbeatInput, NodeRecord, PgOptions, Pools,
    Store, StoreError, TokenRecord,
};

/// Connections one process keeps at most (PostgreSQL allows 100 by default, shared by
/// every replica).
const MAX_CLIENTS: usize = 8;
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

fn backend(db: &str, op: &str, e: &postgres::Error) -> StoreError {
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
            db,
            tls,
            config,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        store.write("migrating the schema", &migrate)?;
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
        f: &dyn Fn(&mut PgTx<'_, '_>) -> Result<T, StoreError>,
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
        f: &dyn Fn(&mut PgTx<'_, '_>) -> Result<T, StoreError>,
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
        op: &str,
        f: &dyn Fn(&mut PgTx<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(op, true, f)
    }

    fn read<T>(
        &self,
        op: &str,
        f: &dyn Fn(&mut PgTx<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(op, false, f)
    }
}

fn migrate(tx: &mut PgTx<'_, '_>) -> Result<(), StoreError> {
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
    tx.tx
        .execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&SCHEMA_VERSION.to_string()],
        )
        .map_err(|e| backend(db, "writing schema_version", &e))?;
    Ok(())
}

/// A transaction on the database.
struct PgTx<'a, 'c> {
    tx: &'a mut Transaction<'c>,
    db: &'a str,
}

fn token_row(r: &postgres::Row) -> Result<RawToken, postgres::Error> {
    Ok(RawToken {
        id: r.try_get(0)?,
        secret_hash: r.try_get(1)?,
        created: r.try_get(2)?,
        expires: r.try_get(3)?,
        uses_total: r.try_get(4)?,
        uses_left: r.try_get(5)?,
        role: r.try_get(6)?,
        labels: r.try_get(7)?,
        revoked: r.try_get(8)?,
    })
}

fn node_row(r: &postgres::Row) -> Result<RawNode, postgres::Error> {
    Ok(RawNode {
        name: r.try_get(0)?,
        public_key: r.try_get(1)?,
        credential_hash: r.try_get(2)?,
        token_id: r.try_get(3)?,
        address_v4: r.try_get(4)?,
        address_v6: r.try_get(5)?,
        arch: r.try_get(6)?,
        role: r.try_get(7)?,
        labels: r.try_get(8)?,
        enrolled: r.try_get(9)?,
        revoked: r.try_get(10)?,
        last_heartbeat: r.try_get(11)?,
        online: r.try_get(12)?,
        endpoints: r.try_get(13)?,
        public_endpoint: r.try_get(14)?,
        public_verified: r.try_get(15)?,
    })
}

impl PgTx<'_, '_> {
    fn err(&self, op: &str, e: &postgres::Error) -> StoreError {
        backend(self.db, op, e)
    }

    fn select_nodes(
        &mut self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<NodeRecord>, StoreError> {
        let op = "reading nodes";
        let sql = format!("SELECT {NODE_COLUMNS} FROM nodes {filter}");
        let rows = match arg {
            Some(a) => self.tx.query(&sql, &[&a]),
            None => self.tx.query(&sql, &[]),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in &rows {
            out.push(node_row(row).map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_name(out))
    }

    fn select_tokens(
        &mut self,
        filter: &str,
        arg: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let op = "reading tokens";
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens {filter}");
        let rows = match arg {
            Some(a) => self.tx.query(&sql, &[&a]),
            None => self.tx.query(&sql, &[]),
        }
        .map_err(|e| self.err(op, &e))?;
        let mut out = Vec::new();
        for row in &rows {
            out.push(token_row(row).map_err(|e| self.err(op, &e))?.decode()?);
        }
        Ok(codec::by_id(out))
    }
}

impl Tx for PgTx<'_, '_> {
    fn ca(&mut self) -> Result<Option<CaPem>, StoreError> {
        let op = "reading the CA";
        let row = self
            .tx
            .query_opt("SELECT cert_pem, key_pem FROM ca WHERE id = 1", &[])
            .map_err(|e| self.err(op, &e))?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some(CaPem {
                cert_pem: r.try_get(0).map_err(|e| self.err(op, &e))?,
                key_pem: r.try_get(1).map_err(|e| self.err(op, &e))?,
            })),
        }
    }

    fn insert_ca_if_absent(&mut self, ca: &CaPem) -> Result<(), StoreError> {
        self.tx
            .execute(
                "INSERT INTO ca (id, cert_pem, key_pem) VALUES (1, $1, $2)
                 ON CONFLICT (id) DO NOTHING",
                &[&ca.cert_pem, &ca.key_pem],
            )
            .map_err(|e| self.err("storing the CA", &e))?;
        Ok(())
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self
            .select_tokens("WHERE id = $1", Some(id))?
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
                &format!(
                    "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    &r.id,
                    &r.secret_hash,
                    &r.created,
                    &r.expires,
                    &r.uses_total,
                    &r.uses_left,
                    &r.role,
                    &r.labels,
                    &r.revoked,
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
                "UPDATE tokens SET revoked = $2, uses_left = $3 WHERE id = $1",
                &[&id, &revoked, &i64::from(uses_left)],
            )
            .map_err(|e| self.err(&format!("updating token {id}"), &e))?;
        Ok(n > 0)
    }

    fn nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError> {
        self.select_nodes("", None)
    }

    fn node(&mut self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self
            .select_nodes("WHERE name = $1", Some(name))?
            .into_iter()
            .next())
    }

    fn insert_node(&mut self, n: &NodeRecord) -> Result<(), StoreError> {
        let r = RawNode::encode(n);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
                     $9, $10, $11, $12, $13, $14, $15, $16)"
                ),
                &[
                    &r.name,
                    &r.public_key,
                    &r.credential_hash,
                    &r.token_id,
                    &r.address_v4,
                    &r.address_v6,
                    &r.arch,
                    &r.role,
                    &r.labels,
                    &r.enrolled,
                    &r.revoked,
                    &r.last_heartbeat,
                    &r.online,
                    &r.endpoints,
                    &r.public_endpoint,
                    &r.public_verified,
                ],
            )
            .map_err(|e| self.err(&format!("inserting node {}", n.name), &e))?;
        Ok(())
    }

    fn update_node(&mut self, n: &NodeRecord) -> Result<(), StoreError> {
        let r = RawNode::encode(n);
        self.tx
            .execute(
                "UPDATE nodes SET revoked = $2, last_heartbeat = $3, online = $4, endpoints = $5,
                 public_endpoint = $6, public_verified = $7 WHERE name = $1",
                &[
                    &r.name,
                    &r.revoked,
                    &r.last_heartbeat,
                    &r.online,
                    &r.endpoints,
                    &r.public_endpoint,
                    &r.public_verified,
                ],
            )
            .map_err(|e| self.err(&format!("updating node {}", n.name), &e))?;
        Ok(())
    }

    fn version(&mut self) -> Result<u64, StoreError> {
        let op = "reading peers_version";
        let row = self
            .tx
            .query_one("SELECT value FROM meta WHERE key = 'peers_version'", &[])
            .map_err(|e| self.err(op, &e))?;
        let text: String = row.try_get(0).map_err(|e| self.err(op, &e))?;
        codec::version_of(&text)
    }

    fn set_version(&mut self, v: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "UPDATE meta SET value = $1 WHERE key = 'peers_version'",
                &[&v.to_string()],
            )
            .map_err(|e| self.err("writing peers_version", &e))?;
        Ok(())
    }

    fn cluster(&mut self) -> Result<Option<Cluster>, StoreError> {
        let op = "reading the cluster";
        let row = self
            .tx
            .query_opt(
                &format!("SELECT {CLUSTER_COLUMNS} FROM cluster WHERE id = 1"),
                &[],
            )
            .map_err(|e| self.err(op, &e))?;
        let Some(r) = row else {
            return Ok(None);
        };
        let raw = (|| -> Result<RawCluster, postgres::Error> {
            Ok(RawCluster {
                kind: r.try_get(0)?,
                server_url: r.try_get(1)?,
                init_node: r.try_get(2)?,
                token: r.try_get(3)?,
                agent_token: r.try_get(4)?,
                endpoint: r.try_get(5)?,
                ca_cert_hashes: r.try_get(6)?,
                certificate_key: r.try_get(7)?,
            })
        })()
        .map_err(|e| self.err(op, &e))?;
        raw.decode().map(Some)
    }

    fn put_cluster(&mut self, c: &Cluster) -> Result<(), StoreError> {
        let r = RawCluster::encode(c);
        self.tx
            .execute(
                &format!(
                    "INSERT INTO cluster (id, {CLUSTER_COLUMNS}) VALUES (1, $1, $2, $3, $4, $5, \
                     $6, $7, $8) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, \
                     server_url = excluded.server_url, init_node = excluded.init_node, \
                     token = excluded.token, agent_token = excluded.agent_token, \
                     endpoint = excluded.endpoint, ca_cert_hashes = excluded.ca_cert_hashes, \
                     certificate_key = excluded.certificate_key"
                ),
                &[
                    &r.kind,
                    &r.server_url,
                    &r.init_node,
                    &r.token,
                    &r.agent_token,
                    &r.endpoint,
                    &r.ca_cert_hashes,
                    &r.certificate_key,
                ],
            )
            .map_err(|e| self.err("storing the cluster", &e))?;
        Ok(())
    }

    fn delete_cluster(&mut self) -> Result<bool, StoreError> {
        let n = self
            .tx
            .execute("DELETE FROM cluster", &[])
            .map_err(|e| self.err("removing the cluster", &e))?;
        Ok(n > 0)
    }
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
        self.write("storing the CA", &|tx| ops::store_ca(tx, &fresh))
    }

    fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.write("creating a token", &|tx| tx.insert_token(t))
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.read("reading a token", &|tx| tx.token(id))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.read("listing tokens", &|tx| tx.tokens())
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.write("revoking a token", &|tx| ops::revoke_token(tx, id))
    }

    fn enroll(&self, input: &EnrollInput, pools: &Pools) -> Result<EnrollOutcome, StoreError> {
        self.write("enrolling", &|tx| ops::enroll(tx, input, pools))
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.read("listing nodes", &|tx| tx.nodes())
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.read("reading a node", &|tx| tx.node(name))
    }

    fn revoke_node(&self, name: &str) -> Result<bool, StoreError> {
        self.write("revoking a node", &|tx| ops::revoke_node(tx, name))
    }

    fn heartbeat(
        &self,
        name: &str,
        hb: &HeartbeatInput,
        now: u64,
        fresh: u64,
    ) -> Result<(), StoreError> {
        self.write("recording a heartbeat", &|tx| {
            ops::heartbeat(tx, name, hb, now, fresh)
        })
    }

    fn expire(&self, now: u64, ttl: u64) -> Result<usize, StoreError> {
        self.write("expiring silent nodes", &|tx| ops::expire(tx, now, ttl))
    }

    fn snapshot(&self) -> Result<(u64, Vec<NodeRecord>), StoreError> {
        self.read("reading the peer list", &|tx| {
            Ok((tx.version()?, tx.nodes()?))
        })
    }

    fn peers_version(&self) -> Result<u64, StoreError> {
        self.read("reading peers_version", &|tx| tx.version())
    }

    fn cluster(&self) -> Result<Option<Cluster>, StoreError> {
        self.read("reading the cluster", &|tx| tx.cluster())
    }

    fn set_cluster(&self, c: &Cluster, replace: bool) -> Result<bool, StoreError> {
        self.write("setting the cluster", &|tx| {
            ops::set_cluster(tx, c, replace)
        })
    }

    fn clear_cluster(&self) -> Result<bool, StoreError> {
        self.write("removing the cluster", &|tx| tx.delete_cluster())
    }

    fn claim_first_server(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        self.write("choosing the first server", &|tx| {
            ops::claim_first_server(tx, name)
        })
    }
}
