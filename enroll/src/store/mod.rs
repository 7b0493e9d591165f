//! kiln-enroll's state: the CA, join tokens, the node registry and the peer list's version.
//!
//! Two backends behave the same because both run the decisions in [`logic`] inside one
//! database transaction: embedded SQLite (one server) and PostgreSQL (several replicas).
//! [`open`] picks the backend from the state URL and brings the schema up to date.
//!
//! The state holds the CA's private key and the join tokens, so both backends guard the
//! way to it: a SQLite file (or folder) that group or others can read is refused, and
//! PostgreSQL on another host is reached over TLS with a verified certificate unless the
//! operator explicitly allows clear text ([`PgOptions`], [`pgtls`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use kiln_enroll_proto::api::{ErrorCode, Observation, Role};
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::IpNet;

mod codec;
pub mod feed;
mod group;
pub mod logic;
mod ops;
mod pg_rows;
pub mod pgtls;
mod postgres;
mod registry;
mod sqlite;
mod sqlite_rows;

pub use feed::Feed;

/// Debian's bundle of the system's trusted CAs: what a PostgreSQL server certificate is
/// checked against unless `--postgres-ca` names another file.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How to reach PostgreSQL (SQLite ignores it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// PEM file with the CA certificate(s) a PostgreSQL server certificate must chain to.
    pub ca_file: PathBuf,
    /// Allow `sslmode=disable` to a host that is not this machine.
    pub allow_plaintext: bool,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            ca_file: PathBuf::from(SYSTEM_CA_BUNDLE),
            allow_plaintext: false,
        }
    }
}

/// The overlay CA as PEM text.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPem {
    /// The CA certificate.
    pub cert_pem: String,
    /// The CA's private key.
    pub key_pem: String,
}

impl fmt::Debug for CaPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never reach a log line.
        f.debug_struct("CaPem")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// A join token as stored (the secret itself is never stored, only its sha256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The token's public name (6 characters a-z0-9).
    pub id: String,
    /// sha256 of the secret.
    pub secret_hash: [u8; 32],
    /// Unix seconds of creation.
    pub created: u64,
    /// Unix seconds from which the token no longer enrolls.
    pub expires: u64,
    /// How many enrollments the token allowed when made.
    pub uses_total: u32,
    /// How many enrollments it still allows.
    pub uses_left: u32,
    /// The role nodes enrolled with it get.
    pub role: Role,
    /// Node labels nodes enrolled with it get.
    pub labels: BTreeMap<String, String>,
    /// Revoked tokens enroll nothing.
    pub revoked: bool,
}

/// An enrolled node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Unique node name.
    pub name: String,
    /// WireGuard public key (unique).
    pub public_key: PublicKey,
    /// sha256 of the node's credential.
    pub credential_hash: [u8; 32],
    /// The token it enrolled with.
    pub token_id: String,
    /// Overlay IPv4 address (unique, never reused).
    pub address_v4: IpAddr,
    /// Overlay IPv6 address (same host offset as the IPv4 one).
    pub address_v6: IpAddr,
    /// `x86_64` or `arm64`.
    pub arch: String,
    /// From the token.
    pub role: Role,
    /// From the token.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds of enrollment.
    pub enrolled: u64,
    /// Revoked nodes are left out of the peer list and refused.
    pub revoked: bool,
    /// Unix seconds of the last heartbeat.
    pub last_heartbeat: Option<u64>,
    /// Heartbeats (or the enrollment) arrived within the endpoint TTL.
    pub online: bool,
    /// The node's interface addresses with its WireGuard port.
    pub endpoints: Vec<SocketAddr>,
    /// The public `host:port` the node claims.
    pub public_endpoint: Option<String>,
    /// A peer's handshake came from exactly `public_endpoint`.
    pub public_verified: bool,
}

/// The Kubernetes cluster kiln-enroll hands join parameters out for (`kiln-enroll
/// cluster init`); at most one. Holds secrets: its Debug output leaves them out.
#[derive(Clone, PartialEq, Eq)]
pub enum Cluster {
    /// A k3s cluster.
    K3s(K3sCluster),
    /// A kubeadm cluster made outside kiln.
    Kubeadm(KubeadmCluster),
}

/// A k3s cluster as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct K3sCluster {
    /// The server every node joins, when the operator gave one (`--server-url`); None
    /// when the first server node to enroll starts the cluster.
    pub server_url: Option<String>,
    /// The node chosen to start the cluster (only without `server_url`); it keeps the
    /// role even when revoked later, so everyone else keeps its URL.
    pub init_node: Option<String>,
    /// The server token (servers join with it).
    pub token: String,
    /// The agent token (workers join with it; servers get it to admit them).
    pub agent_token: String,
}

/// A kubeadm cluster as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct KubeadmCluster {
    /// `host:port` of the API server.
    pub endpoint: String,
    /// The bootstrap token.
    pub token: String,
    /// `sha256:<hex>` pins of the cluster CA.
    pub ca_cert_hashes: Vec<String>,
    /// The control-plane certificate key; control-plane nodes only.
    pub certificate_key: Option<String>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Join secrets must never reach a log line.
        let secret = |s: &Option<String>| if s.is_some() { "<set>" } else { "<none>" };
        match self {
            Cluster::K3s(k) => f
                .debug_struct("K3s")
                .field("server_url", &k.server_url)
                .field("init_node", &k.init_node)
                .field("token", &"<set>")
                .field("agent_token", &"<set>")
                .finish(),
            Cluster::Kubeadm(k) => f
                .debug_struct("Kubeadm")
                .field("endpoint", &k.endpoint)
                .field("token", &"<set>")
                .field("ca_cert_hashes", &k.ca_cert_hashes)
                .field("certificate_key", &secret(&k.certificate_key))
                .finish(),
        }
    }
}

impl Cluster {
    /// `k3s` or `kubeadm`.
    pub fn kind(&self) -> &'static str {
        match self {
            Cluster::K3s(_) => "k3s",
            Cluster::Kubeadm(_) => "kubeadm",
        }
    }
}

/// The overlay's address pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    /// IPv4 pool (default 10.77.0.0/16).
    pub v4: IpNet,
    /// IPv6 pool (the ULA /48's subnet 0, a /64).
    pub v6: IpNet,
}

/// What an enrollment request brings, already validated and hashed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollInput {
    /// The token id from the token text.
    pub token_id: String,
    /// sha256 of the token secret from the token text.
    pub secret_hash: [u8; 32],
    /// The node's WireGuard public key.
    pub public_key: PublicKey,
    /// sha256 of the node's credential.
    pub credential_hash: [u8; 32],
    /// The hostname the node would like as its name.
    pub hostname: String,
    /// `x86_64` or `arm64`.
    pub arch: String,
    /// The node's interface addresses with its WireGuard port.
    pub endpoints: Vec<SocketAddr>,
    /// The public `host:port` it claims.
    pub public_endpoint: Option<String>,
    /// Unix seconds now.
    pub now: u64,
}

/// A successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollOutcome {
    /// A new node was recorded (the token lost one use).
    New(NodeRecord),
    /// The same node asked again (same key, credential and token): its record, unchanged.
    Existing(NodeRecord),
}

impl EnrollOutcome {
    /// The node either way.
    pub fn node(&self) -> &NodeRecord {
        match self {
            EnrollOutcome::New(n) | EnrollOutcome::Existing(n) => n,
        }
    }
}

/// A heartbeat's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatInput {
    /// Current interface addresses with the WireGuard port.
    pub endpoints: Vec<SocketAddr>,
    /// Current public endpoint claim.
    pub public_endpoint: Option<String>,
    /// The node's kernel's view of its peers.
    pub observations: Vec<Observation>,
}

/// Why the store said no to a request (not a failure: the request itself is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Unknown token id or wrong secret (deliberately the same).
    TokenInvalid,
    /// The token's time is up.
    TokenExpired,
    /// The token has no uses left.
    TokenUsedUp,
    /// The token was revoked.
    TokenRevoked,
    /// No free overlay address.
    PoolExhausted,
    /// The public key belongs to another enrollment.
    NodeConflict,
    /// The node was revoked.
    NodeRevoked,
    /// No node of that name.
    UnknownNode,
}

impl Refusal {
    /// The API error code that carries it (an unknown node is an authorization failure:
    /// the answer must not tell which names exist).
    pub fn code(self) -> ErrorCode {
        match self {
            Refusal::TokenInvalid => ErrorCode::TokenInvalid,
            Refusal::TokenExpired => ErrorCode::TokenExpired,
            Refusal::TokenUsedUp => ErrorCode::TokenUsedUp,
            Refusal::TokenRevoked => ErrorCode::TokenRevoked,
            Refusal::PoolExhausted => ErrorCode::PoolExhausted,
            Refusal::NodeConflict => ErrorCode::NodeConflict,
            Refusal::NodeRevoked => ErrorCode::NodeRevoked,
            Refusal::UnknownNode => ErrorCode::Unauthorized,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::TokenInvalid => {
                "the token is not valid (unknown id or wrong secret): check it was copied whole"
            }
            Refusal::TokenExpired => {
                "the token has expired: make a new one with `kiln-enroll token create`"
            }
            Refusal::TokenUsedUp => {
                "the token has no uses left: make a new one with `kiln-enroll token create`"
            }
            Refusal::TokenRevoked => {
                "the token was revoked: make a new one with `kiln-enroll token create`"
            }
            Refusal::PoolExhausted => {
                "no free overlay address is left in the pool (addresses of revoked nodes are \
                 never reused): start the server with a larger --pool-v4"
            }
            Refusal::NodeConflict => {
                "this WireGuard public key is already enrolled with another credential or \
                 token: a cloned disk? remove /var/lib/kiln on the clone and enroll again"
            }
            Refusal::NodeRevoked => {
                "this node was revoked: remove /var/lib/kiln on it and enroll again with a \
                 new token"
            }
            Refusal::UnknownNode => "no such node",
        })
    }
}

/// A store operation failed or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The request is refused for a reason the caller reports to the client.
    #[error("{0}")]
    Refused(Refusal),
    /// The database failed; `what` names the database (path, or host/db without password)
    /// and the operation.
    #[error("{what}{}", if *.retry { " (temporary: retry)" } else { "" })]
    Backend {
        /// What failed, where.
        what: String,
        /// Whether trying again later can succeed (connection lost, busy, serialization).
        retry: bool,
    },
    /// Stored data is not what kiln-enroll writes; the text names table, row and field.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether trying again later can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Backend { retry: true, .. })
    }
}

/// kiln-enroll's state. Every method is one transaction.
pub trait Store: Send + Sync {
    /// The CA, made by `generate` and stored on the very first call (race-safe across
    /// replicas: insert-if-absent, then read back whatever won).
    fn ca(&self, generate: &dyn Fn() -> Result<CaPem, String>) -> Result<CaPem, StoreError>;
    /// Stores a new token (an existing id is a Backend error: ids are random).
    fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError>;
    /// One token by id (one indexed read).
    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Every token, by id.
    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes a token; false when there is no such id.
    fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;
    /// One transaction: token check (secret hash compared in constant time; unknown id
    /// and wrong secret are both TokenInvalid), same node retrying (same public key, same
    /// credential hash, same token id) gets Existing without using the token again (even
    /// if it has expired or is used up since), other key owner → NodeConflict, revoked
    /// node → NodeRevoked; then revoked/expired/used-up; lowest free address (never reuse
    /// one of any node, revoked too; skip network and broadcast); exhausted pool refuses
    /// without using the token; unique name (hostname, else hostname-2, -3, ...);
    /// uses_left -= 1; peers version += 1.
    fn enroll(&self, input: &EnrollInput, pools: &Pools) -> Result<EnrollOutcome, StoreError>;
    /// Every node (revoked too), by name.
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// One node by name.
    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// Revokes a node (peers version += 1); false when there is no such name.
    fn revoke_node(&self, name: &str) -> Result<bool, StoreError>;
    /// Records endpoints and last_heartbeat=now, online=true; marks OTHER nodes
    /// public_verified when an observation shows a handshake within `fresh` seconds with
    /// them at exactly their claimed public_endpoint (resolved textual match of ip:port);
    /// version += 1 when anything a peer list shows changed. Unknown name → UnknownNode,
    /// revoked → NodeRevoked.
    fn heartbeat(
        &self,
        name: &str,
        hb: &HeartbeatInput,
        now: u64,
        fresh: u64,
    ) -> Result<(), StoreError>;
    /// Sets online=false for nodes whose last heartbeat (or enrollment) is older than
    /// `ttl`; version += 1 if any changed; returns how many.
    fn expire(&self, now: u64, ttl: u64) -> Result<usize, StoreError>;
    /// The version and every node (revoked too, by name), read in one transaction.
    fn snapshot(&self) -> Result<(u64, Vec<NodeRecord>), StoreError>;
    /// The peer list's version.
    fn peers_version(&self) -> Result<u64, StoreError>;
    /// The cluster, if one was set.
    fn cluster(&self) -> Result<Option<Cluster>, StoreError>;
    /// Sets the cluster; with a cluster already set, replaces it only when `replace`
    /// (and returns false otherwise, changing nothing). A replaced k3s cluster forgets
    /// its first server: the next server node to ask starts the new one.
    fn set_cluster(&self, c: &Cluster, replace: bool) -> Result<bool, StoreError>;
    /// Removes the cluster; false when none was set.
    fn clear_cluster(&self) -> Result<bool, StoreError>;
    /// One transaction: when the cluster is k3s without a server URL and without a first
    /// server, and `name` is an unrevoked server node, makes it the first server. Returns
    /// the cluster as it is afterwards (enrollment does the same inside its own
    /// transaction; this is for servers enrolled before the cluster was set).
    fn claim_first_server(&self, name: &str) -> Result<Option<Cluster>, StoreError>;
    /// The committed peer list in memory: what this process committed is in it at once,
    /// what others committed after [`Store::refresh`]. Empty until the first refresh.
    fn feed(&self) -> &Feed;
    /// Reads the stored version and brings the feed up to it (the first call loads
    /// every node; later ones read only the rows changed since the feed's version).
    /// Returns the stored version.
    fn refresh(&self) -> Result<u64, StoreError>;
    /// Background upkeep a serving process does about once a second, off the request
    /// path (SQLite: a passive WAL checkpoint, so no commit pays for one).
    fn housekeeping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// [`Store::refresh`] inside a read transaction that found version `v`; the feed was
/// `loaded` at version `have` before the transaction began (so `v >= have` unless the
/// database went back to an older state).
pub(crate) fn refresh_feed(
    feed: &Feed,
    tx: &mut dyn ops::Tx,
    loaded: bool,
    have: u64,
    v: u64,
) -> Result<u64, StoreError> {
    if !loaded || v < have {
        let rows = tx.nodes_changed_since(0)?;
        feed.replace(v, rows);
    } else if v > have {
        let rows = tx.nodes_changed_since(have)?;
        feed.apply(v, rows);
    }
    Ok(v)
}

/// Opens `sqlite:PATH` or `postgres://...` (`postgresql://...`) with the default
/// [`PgOptions`] and migrates the schema.
pub fn open(url: &str) -> Result<Box<dyn Store>, StoreError> {
    open_with(url, &PgOptions::default())
}

/// Opens `sqlite:PATH` or `postgres://...` (`postgresql://...`) and migrates the schema;
/// `pg` says how to reach PostgreSQL.
pub fn open_with(url: &str, pg: &PgOptions) -> Result<Box<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(StoreError::Backend {
                what:
                    "state URL \"sqlite:\" has no path: write sqlite:/var/lib/kiln-enroll/state.db"
                        .to_string(),
                retry: false,
            });
        }
        return Ok(Box::new(sqlite::SqliteStore::open(std::path::Path::new(
            path,
        ))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Box::new(postgres::PgStore::open(url, pg)?));
    }
    Err(StoreError::Backend {
        what: format!(
            "state URL {:?} is neither sqlite:PATH nor postgres://USER@HOST/DB \
             (set --state or KILN_ENROLL_STATE)",
            redact_url(url)
        ),
        retry: false,
    })
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth_end, _) = rest
        .char_indices()
        .find(|(_, c)| *c == '/' || *c == '?')
        .unwrap_or((rest.len(), ' '));
    let authority = &rest[..auth_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let query_free: &str = rest[auth_end..].split('?').next().unwrap_or("");
            format!("{scheme}://{user}@{host}{query_free}")
        }
        None => {
            let query_free: &str = rest[auth_end..].split('?').next().unwrap_or("");
            format!("{scheme}://{authority}{query_free}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_password_and_query() {
        assert_eq!(
            redact_url("postgres://kiln:hunter2@db.example:5432/kiln?password=x"),
            "postgres://kiln@db.example:5432/kiln"
        );
        assert_eq!(redact_url("postgresql://db/kiln"), "postgresql://db/kiln");
    }

    #[test]
    fn unknown_scheme_is_refused_with_the_forms() {
        let Err(e) = open("mysql://u:pw@h/db") else {
            panic!("opened mysql")
        };
        let text = e.to_string();
        assert!(text.contains("sqlite:PATH"), "{text}");
        assert!(!text.contains("pw"), "{text}");
        assert!(!e.retryable());
    }
}
