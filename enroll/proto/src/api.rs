//! Request and answer bodies, paths and error codes of kiln-enroll's HTTP API (version 1).
//!
//! ```text
//! POST /v1/enroll     EnrollRequest            -> 200 EnrollAnswer
//! GET  /v1/peers?since=V&wait=S  (node auth)   -> 200 PeerList (at once when the list's
//!                                                 version > V, else when it changes or
//!                                                 after S seconds, at most MAX_WAIT_SECS)
//! POST /v1/heartbeat  HeartbeatRequest (auth)  -> 200 HeartbeatAnswer
//! any error                                    -> 4xx/5xx ErrorBody
//! ```
//!
//! Revisions: a client names the revision it understands in the [`API_HEADER`] request
//! header; without it the server answers revision 1, exactly as deployed agents expect
//! (their answer types refuse unknown fields). Revision 2 ([`REVISION_DELTAS`]) changes
//! two answers: `GET /v1/peers` answers a [`PeerDelta`] (the changes since `since`, or
//! the whole list when the node is too far behind), and `POST /v1/enroll` answers an
//! [`EnrollAnswerV2`] that carries the list's version instead of the list (the node then
//! fetches it with `GET /v1/peers?since=0`).
//!
//! Node auth is `Authorization: Bearer <node name>.<credential>`: the credential is a
//! secret the node made itself before enrolling and sent (over the pinned TLS) in its
//! [`EnrollRequest`]; the server keeps its sha256 only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::key::PublicKey;
use crate::net::IpNet;

/// Enrollment.
pub const PATH_ENROLL: &str = "/v1/enroll";
/// The peer list (long poll).
pub const PATH_PEERS: &str = "/v1/peers";
/// Heartbeats.
pub const PATH_HEARTBEAT: &str = "/v1/heartbeat";
/// The header that names the API revision: a client sends the revision it understands,
/// the server names its own on every answer.
pub const API_HEADER: &str = "kiln-enroll-api";
/// The revision that brought peer-list deltas ([`PeerDelta`], [`EnrollAnswerV2`]).
pub const REVISION_DELTAS: u32 = 2;
/// Largest request body the server reads.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest answer body a node reads (a 1,000-peer list is about 400 KiB).
pub const MAX_ANSWER_BODY: usize = 16 * 1024 * 1024;
/// Longest long poll a server holds.
pub const MAX_WAIT_SECS: u32 = 120;
/// Characters of a node credential (a-z0-9, like token secrets).
pub const CREDENTIAL_LEN: usize = 32;

/// What a node is for in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Runs workloads (k3s agent, kubeadm worker).
    Worker,
    /// Runs the control plane (k3s server, kubeadm control-plane).
    Server,
}

impl Role {
    /// `worker` or `server`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Server => "server",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "worker" => Ok(Role::Worker),
            "server" => Ok(Role::Server),
            _ => Err(format!("role {s:?} is not one of: worker, server")),
        }
    }
}

/// A node asks to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The whole token text.
    pub token: String,
    /// The node's WireGuard public key (the private key never leaves the node).
    pub public_key: PublicKey,
    /// The node's own secret for later calls ([`CREDENTIAL_LEN`] characters a-z0-9).
    pub credential: String,
    /// The hostname the node would like as its node name.
    pub hostname: String,
    /// `x86_64` or `arm64`.
    pub arch: String,
    /// Addresses of the node's own interfaces with its WireGuard port: where peers on
    /// the same network can reach it directly.
    pub endpoints: Vec<SocketAddr>,
    /// `host:port` the node says the outside can reach its WireGuard port at (a public
    /// IP, or a port forwarded to it); counted as public once a peer reached it there.
    pub public_endpoint: Option<String>,
    /// The node's WireGuard listen port.
    pub listen_port: u16,
}

/// What an enrolled node gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollAnswer {
    /// The node itself.
    pub node: NodeInfo,
    /// The overlay's settings.
    pub network: Network,
    /// Every other node at the time of enrollment.
    pub peers: PeerList,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u32,
    /// What the node needs to join the cluster.
    pub cluster: ClusterJoin,
}

/// What an enrolled node gets from revision 2 on: [`EnrollAnswer`] with the peer list's
/// version instead of the list, which the node fetches next (`GET /v1/peers?since=0`
/// answers the whole list, then deltas from there). At thousands of nodes the list is
/// megabytes; sending it with every enrollment would make enrolling as slow as that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollAnswerV2 {
    /// The node itself.
    pub node: NodeInfo,
    /// The overlay's settings.
    pub network: Network,
    /// The peer list's version right after the enrollment (the list includes the node).
    pub peers_version: u64,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u32,
    /// What the node needs to join the cluster.
    pub cluster: ClusterJoin,
}

/// The node as the server recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeInfo {
    /// Unique node name (the hostname, or the hostname with a suffix when taken).
    pub name: String,
    /// Overlay IPv4 address with the pool's prefix length (`10.77.0.5/16`).
    pub address_v4: IpNet,
    /// Overlay IPv6 ULA address with its prefix length (`fdxx:xxxx:xxxx::5/64`).
    pub address_v6: IpNet,
}

/// Settings every node of the overlay shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The IPv4 pool (`10.77.0.0/16`).
    pub pool_v4: IpNet,
    /// The IPv6 pool (`fdxx:xxxx:xxxx::/64`).
    pub pool_v6: IpNet,
    /// Largest overlay MTU the server allows; nodes take the smaller of this and their
    /// path MTU minus WireGuard's 80 bytes.
    pub mtu: u16,
    /// Persistent keepalive, seconds, for nodes that are not public.
    pub keepalive_secs: u16,
}

/// The list of peers, with a version that grows with every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerList {
    /// Changes whenever any peer's entry changes.
    pub version: u64,
    /// Every enrolled, unrevoked node, the asking node included (it skips itself).
    pub peers: Vec<Peer>,
}

/// Revision 2's answer to `GET /v1/peers?since=V`: what changed since version `V`.
/// Applied to the list a node holds at `since`, it gives the list at `version`; with
/// `since` None it is the whole list (the node was at version 0, at a version the server
/// never had, or so far behind that most peers changed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerDelta {
    /// The list's version after applying.
    pub version: u64,
    /// The version this delta starts from; None when `peers` is the whole list.
    pub since: Option<u64>,
    /// Peers added or changed since `since` (every peer when `since` is None), by name.
    pub peers: Vec<Peer>,
    /// Names of peers to drop (revoked since `since`), by name. A name the node does
    /// not hold (added and revoked within the delta) is dropped by doing nothing.
    pub removed: Vec<String>,
}

impl PeerDelta {
    /// Applies the delta to `list` (which must be at `since` unless `since` is None):
    /// the list at `version`, peers by name.
    pub fn apply_to(self, list: &mut PeerList) {
        if self.since.is_none() {
            list.peers.clear();
        }
        {
            let gone: std::collections::BTreeSet<&str> = self
                .peers
                .iter()
                .map(|p| p.name.as_str())
                .chain(self.removed.iter().map(String::as_str))
                .collect();
            list.peers.retain(|p| !gone.contains(p.name.as_str()));
        }
        list.peers.extend(self.peers);
        list.peers.sort_by(|a, b| a.name.cmp(&b.name));
        list.version = self.version;
    }
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// WireGuard public key.
    pub public_key: PublicKey,
    /// What to route to this peer: its overlay addresses as /32 and /128.
    pub allowed_ips: Vec<IpNet>,
    /// Its own interface addresses with its port (direct paths on a shared network);
    /// empty when its heartbeats stopped.
    pub endpoints: Vec<SocketAddr>,
    /// The public `host:port` it claims; None when it claims none or went silent.
    pub public_endpoint: Option<String>,
    /// A peer reached it at `public_endpoint`: it can relay for nodes behind NAT.
    pub public: bool,
    /// Heartbeats arrive (within the server's endpoint TTL).
    pub online: bool,
}

/// What a node needs to join the Kubernetes cluster: its role, its labels and, when
/// kiln-enroll has been given a cluster (`kiln-enroll cluster init`), the join parameters
/// of that role and nothing more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterJoin {
    /// The role the token grants.
    pub role: Role,
    /// Node labels from the token.
    pub labels: BTreeMap<String, String>,
    /// The cluster's join parameters for this role; None when kiln-enroll has no cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
}

/// Join parameters of one cluster kind. They carry secrets: a node keeps them in memory
/// and in root-only files under /run, never on its disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Join {
    /// k3s: agents (role worker) and servers (role server).
    K3s(K3sJoin),
    /// kubeadm: workers, and control-plane nodes when a certificate key was given.
    Kubeadm(KubeadmJoin),
}

/// k3s join parameters.
///
/// - worker: `server_url` (None while no server node exists yet: wait and ask again),
///   `init` false, `token` = the cluster's agent token, `agent_token` None.
/// - first server: `server_url` None, `init` true (it starts the cluster),
///   `token` = the server token, `agent_token` = the agent token (k3s `--agent-token`).
/// - further servers: `server_url` = the first server, `init` false, both tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sJoin {
    /// `https://ADDR:6443` of a server to join; None for the first server or while none exists.
    pub server_url: Option<String>,
    /// This node initializes the cluster (`cluster-init`).
    pub init: bool,
    /// The token this node joins with (`token-file`).
    pub token: String,
    /// The token agents join with; given to servers only (`agent-token-file`).
    pub agent_token: Option<String>,
}

/// kubeadm join parameters (a `JoinConfiguration`'s discovery and control plane parts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeadmJoin {
    /// `host:port` of the API server.
    pub api_server_endpoint: String,
    /// Bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`.
    pub token: String,
    /// `sha256:<64 hex>` pins of the cluster CA's public key.
    pub ca_cert_hashes: Vec<String>,
    /// Key that decrypts the uploaded control-plane certificates; servers only, and only
    /// when kiln-enroll was given one.
    pub certificate_key: Option<String>,
}

/// A node's periodic report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Current interface addresses with the WireGuard port.
    pub endpoints: Vec<SocketAddr>,
    /// Current public endpoint claim.
    pub public_endpoint: Option<String>,
    /// What the node's kernel knows about its peers.
    pub observations: Vec<Observation>,
}

/// The kernel's view of one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    /// The peer.
    pub public_key: PublicKey,
    /// Where its packets come from / go to now.
    pub endpoint: Option<SocketAddr>,
    /// Unix seconds of the last handshake.
    pub last_handshake: Option<u64>,
}

/// The server's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatAnswer {
    /// Seconds until the next heartbeat.
    pub heartbeat_secs: u32,
    /// The peer list's current version (a node whose watch is behind fetches it).
    pub peers_version: u64,
}

/// Why a request failed. The same code and message for an unknown token id and a wrong
/// secret, so the answer does not tell which ids exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed (the message says which field).
    BadRequest,
    /// Unknown token id or wrong secret.
    TokenInvalid,
    /// The token's time is up.
    TokenExpired,
    /// The token has no uses left.
    TokenUsedUp,
    /// The token was revoked.
    TokenRevoked,
    /// The token's CA hash is not this server's CA.
    TokenWrongServer,
    /// No free overlay address.
    PoolExhausted,
    /// The node was revoked.
    NodeRevoked,
    /// The public key belongs to another enrollment.
    NodeConflict,
    /// Missing or wrong node credentials.
    Unauthorized,
    /// Too many failed attempts; retry after `retry_after_secs`.
    RateLimited,
    /// The body is larger than the server reads.
    TooLarge,
    /// No such path.
    NotFound,
    /// The path exists, the method does not.
    MethodNotAllowed,
    /// The server cannot serve now (database down); retry.
    Unavailable,
    /// A bug or an unexpected failure on the server; retry.
    Internal,
}

impl ErrorCode {
    /// Whether retrying the same request later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }

    /// The HTTP status that carries it.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::TokenInvalid | ErrorCode::Unauthorized => 401,
            ErrorCode::TokenExpired
            | ErrorCode::TokenUsedUp
            | ErrorCode::TokenRevoked
            | ErrorCode::TokenWrongServer
            | ErrorCode::NodeRevoked => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::NodeConflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::PoolExhausted | ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Machine-readable reason.
    pub error: ErrorCode,
    /// For people: what went wrong and what to do.
    pub message: String,
    /// Whether the same request can succeed later.
    pub retry: bool,
    /// When to retry, for [`ErrorCode::RateLimited`].
    pub retry_after_secs: Option<u32>,
}

impl ErrorBody {
    /// An error body; `retry` follows the code.
    pub fn new(error: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error,
            message: message.into(),
            retry: error.retryable(),
            retry_after_secs: None,
        }
    }
}

/// A peer's overlay addresses as allowed IPs (/32 and /128).
pub fn host_routes(v4: IpAddr, v6: IpAddr) -> Vec<IpNet> {
    vec![IpNet::host(v4), IpNet::host(v6)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<HeartbeatAnswer>(
            r#"{"heartbeat_secs":30,"peers_version":1,"extra":1}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `extra`"), "{err}");
    }

    #[test]
    fn error_codes_are_snake_case_and_retry_follows_the_code() {
        assert_eq!(ErrorCode::TokenUsedUp.to_string(), "token_used_up");
        let b = ErrorBody::new(ErrorCode::Unavailable, "db down");
        assert!(b.retry);
        assert!(!ErrorBody::new(ErrorCode::TokenExpired, "x").retry);
        assert_eq!(ErrorCode::RateLimited.status(), 429);
    }
}
