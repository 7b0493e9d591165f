//! Rows as both databases hold them (plain integers, text, bytes) and their conversion
//! to and from the domain records, so the two backends store the same things the same way.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use kiln_enroll_proto::api::Role;
use kiln_enroll_proto::key::PublicKey;

use super::{Cluster, K3sCluster, KubeadmCluster, NodeRecord, StoreError, TokenRecord};

/// The schema version this build writes and reads. 1: ca, tokens, nodes, meta.
/// 2: adds the `cluster` table (one row at most). 3: adds `nodes.changed`, the peers
/// version at which the node's peer-list entry last changed, with an index: peer-list
/// deltas, and replicas catching up, read only the rows changed since a version.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// Version 3's addition, the same text for both databases. Rows that exist already are
/// marked as changed at the current version: a watcher that is older gets them all.
pub(crate) const SCHEMA_V3: &str = "
ALTER TABLE nodes ADD COLUMN changed BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS nodes_changed ON nodes (changed);
UPDATE nodes SET changed = CAST((SELECT value FROM meta WHERE key = 'peers_version') AS BIGINT);
";

/// Version 2's addition, the same text for both databases (TEXT columns only).
pub(crate) const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS cluster (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kind TEXT NOT NULL,
    server_url TEXT,
    init_node TEXT,
    token TEXT NOT NULL,
    agent_token TEXT,
    endpoint TEXT,
    ca_cert_hashes TEXT NOT NULL,
    certificate_key TEXT
);
";

/// Cluster columns, in [`RawCluster`] order.
pub(crate) const CLUSTER_COLUMNS: &str =
    "kind, server_url, init_node, token, agent_token, endpoint, ca_cert_hashes, certificate_key";

/// The cluster row (`id` is always 1). Columns the kind does not use are NULL.
pub(crate) struct RawCluster {
    pub kind: String,
    pub server_url: Option<String>,
    pub init_node: Option<String>,
    pub token: String,
    pub agent_token: Option<String>,
    pub endpoint: Option<String>,
    /// A JSON list of strings (empty for k3s).
    pub ca_cert_hashes: String,
    pub certificate_key: Option<String>,
}

impl RawCluster {
    /// The row of a record.
    pub(crate) fn encode(c: &Cluster) -> RawCluster {
        match c {
            Cluster::K3s(k) => RawCluster {
                kind: "k3s".to_string(),
                server_url: k.server_url.clone(),
                init_node: k.init_node.clone(),
                token: k.token.clone(),
                agent_token: Some(k.agent_token.clone()),
                endpoint: None,
                ca_cert_hashes: "[]".to_string(),
                certificate_key: None,
            },
            Cluster::Kubeadm(k) => RawCluster {
                kind: "kubeadm".to_string(),
                server_url: None,
                init_node: None,
                token: k.token.clone(),
                agent_token: None,
                endpoint: Some(k.endpoint.clone()),
                ca_cert_hashes: serde_json::to_string(&k.ca_cert_hashes)
                    .unwrap_or_else(|_| "[]".to_string()),
                certificate_key: k.certificate_key.clone(),
            },
        }
    }

    /// The record of a row; Corrupt names the field.
    pub(crate) fn decode(self) -> Result<Cluster, StoreError> {
        let missing = |field: &str| corrupt("cluster", "1", field, "NULL, but the kind needs it");
        match self.kind.as_str() {
            "k3s" => Ok(Cluster::K3s(K3sCluster {
                server_url: self.server_url,
                init_node: self.init_node,
                token: self.token,
                agent_token: self.agent_token.ok_or_else(|| missing("agent_token"))?,
            })),
            "kubeadm" => Ok(Cluster::Kubeadm(KubeadmCluster {
                endpoint: self.endpoint.ok_or_else(|| missing("endpoint"))?,
                token: self.token,
                ca_cert_hashes: serde_json::from_str(&self.ca_cert_hashes)
                    .map_err(|e| corrupt("cluster", "1", "ca_cert_hashes", e))?,
                certificate_key: self.certificate_key,
            })),
            other => Err(corrupt(
                "cluster",
                "1",
                "kind",
                format!("{other:?} is not k3s or kubeadm"),
            )),
        }
    }
}

/// Token columns, in [`RawToken`] order.
pub(crate) const TOKEN_COLUMNS: &str =
    "id, secret_hash, created, expires, uses_total, uses_left, role, labels, revoked";

/// Node columns, in [`RawNode`] order.
pub(crate) const NODE_COLUMNS: &str = "name, public_key, credential_hash, token_id, \
     address_v4, address_v6, arch, role, labels, enrolled, revoked, last_heartbeat, online, \
     endpoints, public_endpoint, public_verified";

/// A token row.
pub(crate) struct RawToken {
    pub id: String,
    pub secret_hash: Vec<u8>,
    pub created: i64,
    pub expires: i64,
    pub uses_total: i64,
    pub uses_left: i64,
    pub role: String,
    pub labels: String,
    pub revoked: bool,
}

/// A node row.
pub(crate) struct RawNode {
    pub name: String,
    pub public_key: Vec<u8>,
    pub credential_hash: Vec<u8>,
    pub token_id: String,
    pub address_v4: String,
    pub address_v6: String,
    pub arch: String,
    pub role: String,
    pub labels: String,
    pub enrolled: i64,
    pub revoked: bool,
    pub last_heartbeat: Option<i64>,
    pub online: bool,
    pub endpoints: String,
    pub public_endpoint: Option<String>,
    pub public_verified: bool,
}

/// Unix seconds as the databases' signed 64-bit integers (saturating: no real time is
/// near the limit, and a saturated far future still reads back as "not expired").
pub(crate) fn to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn corrupt(table: &str, row: &str, field: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("table {table}, row {row:?}, field {field}: {why}"))
}

fn unsigned(table: &str, row: &str, field: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(table, row, field, format!("negative value {v}")))
}

fn u32_of(table: &str, row: &str, field: &str, v: i64) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| corrupt(table, row, field, format!("{v} is out of range")))
}

fn hash(table: &str, row: &str, field: &str, v: &[u8]) -> Result<[u8; 32], StoreError> {
    v.try_into()
        .map_err(|_| corrupt(table, row, field, format!("{} bytes, not 32", v.len())))
}

fn role(table: &str, row: &str, v: &str) -> Result<Role, StoreError> {
    v.parse().map_err(|e| corrupt(table, row, "role", e))
}

fn labels(table: &str, row: &str, v: &str) -> Result<BTreeMap<String, String>, StoreError> {
    serde_json::from_str(v).map_err(|e| corrupt(table, row, "labels", e))
}

/// Labels as stored (a JSON object; BTreeMap keeps it in key order).
pub(crate) fn labels_text(l: &BTreeMap<String, String>) -> String {
    serde_json::to_string(l).unwrap_or_else(|_| "{}".to_string())
}

/// Endpoints as stored (a JSON list of `ip:port` strings).
pub(crate) fn endpoints_text(e: &[SocketAddr]) -> String {
    serde_json::to_string(e).unwrap_or_else(|_| "[]".to_string())
}

impl RawToken {
    /// The row of a record.
    pub(crate) fn encode(t: &TokenRecord) -> RawToken {
        RawToken {
            id: t.id.clone(),
            secret_hash: t.secret_hash.to_vec(),
            created: to_db(t.created),
            expires: to_db(t.expires),
            uses_total: i64::from(t.uses_total),
            uses_left: i64::from(t.uses_left),
            role: t.role.as_str().to_string(),
            labels: labels_text(&t.labels),
            revoked: t.revoked,
        }
    }

    /// The record of a row; Corrupt names the field.
    pub(crate) fn decode(self) -> Result<TokenRecord, StoreError> {
        let (t, r) = ("tokens", self.id.as_str());
        Ok(TokenRecord {
            secret_hash: hash(t, r, "secret_hash", &self.secret_hash)?,
            created: unsigned(t, r, "created", self.created)?,
            expires: unsigned(t, r, "expires", self.expires)?,
            uses_total: u32_of(t, r, "uses_total", self.uses_total)?,
            uses_left: u32_of(t, r, "uses_left", self.uses_left)?,
            role: role(t, r, &self.role)?,
            labels: labels(t, r, &self.labels)?,
            revoked: self.revoked,
            id: self.id,
        })
    }
}

impl RawNode {
    /// The row of a record.
    pub(crate) fn encode(n: &NodeRecord) -> RawNode {
        RawNode {
            name: n.name.clone(),
            public_key: n.public_key.0.to_vec(),
            credential_hash: n.credential_hash.to_vec(),
            token_id: n.token_id.clone(),
            address_v4: n.address_v4.to_string(),
            address_v6: n.address_v6.to_string(),
            arch: n.arch.clone(),
            role: n.role.as_str().to_string(),
            labels: labels_text(&n.labels),
            enrolled: to_db(n.enrolled),
            revoked: n.revoked,
            last_heartbeat: n.last_heartbeat.map(to_db),
            online: n.online,
            endpoints: endpoints_text(&n.endpoints),
            public_endpoint: n.public_endpoint.clone(),
            public_verified: n.public_verified,
        }
    }

    /// The record of a row; Corrupt names the field.
    pub(crate) fn decode(self) -> Result<NodeRecord, StoreError> {
        let (t, r) = ("nodes", self.name.as_str());
        let ip = |field: &str, v: &str| {
            v.parse::<IpAddr>()
                .map_err(|_| corrupt(t, r, field, format!("{v:?} is not an IP address")))
        };
        Ok(NodeRecord {
            public_key: PublicKey(hash(t, r, "public_key", &self.public_key)?),
            credential_hash: hash(t, r, "credential_hash", &self.credential_hash)?,
            address_v4: ip("address_v4", &self.address_v4)?,
            address_v6: ip("address_v6", &self.address_v6)?,
            role: role(t, r, &self.role)?,
            labels: labels(t, r, &self.labels)?,
            enrolled: unsigned(t, r, "enrolled", self.enrolled)?,
            last_heartbeat: self
                .last_heartbeat
                .map(|v| unsigned(t, r, "last_heartbeat", v))
                .transpose()?,
            endpoints: serde_json::from_str(&self.endpoints)
                .map_err(|e| corrupt(t, r, "endpoints", e))?,
            token_id: self.token_id,
            arch: self.arch,
            revoked: self.revoked,
            online: self.online,
            public_endpoint: self.public_endpoint,
            public_verified: self.public_verified,
            name: self.name,
        })
    }
}

/// A version as the databases' signed 64-bit integers.
pub(crate) fn version_to_db(v: u64) -> i64 {
    to_db(v)
}

/// A stored `nodes.changed`; Corrupt names the row.
pub(crate) fn changed_of(name: &str, v: i64) -> Result<u64, StoreError> {
    unsigned("nodes", name, "changed", v)
}

/// Sorts nodes by name in byte order (the databases' collations differ).
pub(crate) fn by_name(mut nodes: Vec<NodeRecord>) -> Vec<NodeRecord> {
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// Sorts tokens by id in byte order.
pub(crate) fn by_id(mut tokens: Vec<TokenRecord>) -> Vec<TokenRecord> {
    tokens.sort_by(|a, b| a.id.cmp(&b.id));
    tokens
}

/// A stored peers version.
pub(crate) fn version_of(text: &str) -> Result<u64, StoreError> {
    text.parse().map_err(|_| {
        StoreError::Corrupt(format!(
            "table meta, row \"peers_version\", field value: {text:?} is not a number"
        ))
    })
}

/// Refuses a database written by a newer kiln-enroll.
pub(crate) fn check_schema(db: &str, found: i64) -> Result<(), StoreError> {
    if found > SCHEMA_VERSION {
        return Err(StoreError::Backend {
            what: format!(
                "{db}: schema version {found} is newer than this kiln-enroll knows \
                 ({SCHEMA_VERSION}): run the newer kiln-enroll"
            ),
            retry: false,
        });
    }
    Ok(())
}
