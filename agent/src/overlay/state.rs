//! The overlay's state files under /var/lib/kiln: kiln-enroll's answer
//! (`enrollment.json`) and the last peer list (`peers.json`), and the daemon's status
//! for `overlay status` (`/run/kiln/overlay.json`). All JSON, written with
//! [`Files::write_private`] (atomic, durable, root-only).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use kiln_enroll_proto::api::{EnrollAnswer, PeerList};
use kiln_enroll_proto::client::NodeAuth;
use kiln_enroll_proto::token::{hex32, to_hex};
use serde::{Deserialize, Serialize};

use super::{Fatal, ENROLLMENT_PATH, IDENTITY_PATH, PEERS_PATH, STATE_DIR, STATUS_PATH};
use crate::sys::Files;

/// What enrolling gave, with where from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The server URL (`https://host:port`).
    pub server: String,
    /// The CA pin (sha256 of the CA's SPKI).
    pub ca_hash: [u8; 32],
    /// The answer.
    pub answer: EnrollAnswer,
}

/// The file form of [`Enrollment`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentFile {
    /// Format version (1).
    pub version: u32,
    /// The server URL.
    pub server: String,
    /// The CA pin, hex.
    pub ca_hash: String,
    /// The answer as the server sent it.
    pub answer: EnrollAnswer,
}

/// The daemon's last view, for `overlay status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusFile {
    /// The interface MTU it set.
    pub mtu: u32,
    /// Peer name → its path (`direct 192.0.2.1:51820`, `via relay-1`, `passive`, ...).
    pub paths: BTreeMap<String, String>,
}

/// Reads a JSON file; None when it does not exist.
fn read_json<T: for<'de> Deserialize<'de>, S: Files + ?Sized>(
    sys: &mut S,
    path: &str,
) -> Result<Option<T>, String> {
    match sys.read_file(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{path}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{path}: {e}")),
    }
}

fn write_json<T: Serialize, S: Files + ?Sized>(
    sys: &mut S,
    path: &str,
    v: &T,
) -> Result<(), Fatal> {
    let mut bytes =
        serde_json::to_vec_pretty(v).map_err(|e| Fatal::retry(format!("encoding {path}: {e}")))?;
    bytes.push(b'\n');
    sys.write_private(path, &bytes)
        .map_err(|e| Fatal::retry(format!("writing {path}: {e}")))
}

/// Loads `enrollment.json`; None when the node has not enrolled.
pub fn load_enrollment<S: Files + ?Sized>(sys: &mut S) -> Result<Option<Enrollment>, Fatal> {
    let damaged = |why: String| {
        Fatal::stop(format!(
            "{why}; the file is damaged: delete {ENROLLMENT_PATH} to enroll again with the \
             same key (or {STATE_DIR} to enroll as a new node)"
        ))
    };
    let Some(f) = read_json::<EnrollmentFile, S>(sys, ENROLLMENT_PATH).map_err(damaged)? else {
        return Ok(None);
    };
    if f.version != 1 {
        return Err(damaged(format!(
            "{ENROLLMENT_PATH}: version {} is not 1",
            f.version
        )));
    }
    let ca_hash = hex32(&f.ca_hash)
        .ok_or_else(|| damaged(format!("{ENROLLMENT_PATH}: ca_hash is not 64 hex digits")))?;
    Ok(Some(Enrollment {
        server: f.server,
        ca_hash,
        answer: f.answer,
    }))
}

/// The answer as it may be stored: without the cluster's join parameters, which carry
/// the cluster's tokens (kiln-cluster asks `GET /v1/cluster` for them at every start and
/// keeps them under /run only, so they never reach the disk).
pub fn scrubbed(answer: &EnrollAnswer) -> EnrollAnswer {
    let mut a = answer.clone();
    a.cluster.join = None;
    a
}

/// Writes `enrollment.json` (its answer [`scrubbed`]).
pub fn save_enrollment<S: Files + ?Sized>(sys: &mut S, e: &Enrollment) -> Result<(), Fatal> {
    let f = EnrollmentFile {
        version: 1,
        server: e.server.clone(),
        ca_hash: to_hex(&e.ca_hash),
        answer: scrubbed(&e.answer),
    };
    write_json(sys, ENROLLMENT_PATH, &f)
}

/// What kiln-cluster needs to know about the node from the overlay's state.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node name kiln-enroll gave (also the Kubernetes node name).
    pub name: String,
    /// The node's overlay IPv4 address (kiln0).
    pub address_v4: Ipv4Addr,
    /// kiln-enroll's URL.
    pub server: String,
    /// kiln-enroll's CA pin.
    pub ca_hash: [u8; 32],
    /// The node's credential for kiln-enroll calls.
    pub auth: NodeAuth,
    /// The node's public `host:port`, only when a peer reached it there (the server
    /// marks it public in the peer list); None for a node behind NAT.
    pub public_endpoint: Option<String>,
}

impl std::fmt::Debug for NodeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The credential stays out of every log (NodeAuth's Debug hides it too).
        write!(
            f,
            "NodeView({} {} server {} public {:?})",
            self.name, self.address_v4, self.server, self.public_endpoint
        )
    }
}

/// Reads the node's view from the overlay's files: `enrollment.json`, `identity.json` and
/// `peers.json` (for whether the node is public). None while the node has not enrolled;
/// an error names the damaged file.
pub fn node_view<S: Files + ?Sized>(sys: &mut S) -> Result<Option<NodeView>, String> {
    let enrollment: EnrollmentFile = match sys.read_file(ENROLLMENT_PATH) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{ENROLLMENT_PATH}: {e}"))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{ENROLLMENT_PATH}: {e}")),
    };
    let ca_hash = hex32(&enrollment.ca_hash)
        .ok_or_else(|| format!("{ENROLLMENT_PATH}: ca_hash is not 64 hex digits"))?;
    let id = match sys.read_file(IDENTITY_PATH) {
        Ok(b) => super::identity::parse(&b).map_err(|e| format!("{IDENTITY_PATH}: {e}"))?,
        Err(e) => return Err(format!("{IDENTITY_PATH}: {e}")),
    };
    let node = &enrollment.answer.node;
    let IpAddr::V4(address_v4) = node.address_v4.addr else {
        return Err(format!(
            "{ENROLLMENT_PATH}: node.address_v4 {} is not IPv4",
            node.address_v4
        ));
    };
    // The newest list says best whether a peer has reached us; the enrollment's list is
    // the fallback before the first one was stored.
    let list: PeerList = match sys.read_file(PEERS_PATH) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or(enrollment.answer.peers.clone()),
        Err(_) => enrollment.answer.peers.clone(),
    };
    let public_endpoint = list
        .peers
        .iter()
        .find(|p| p.name == node.name && p.public)
        .and_then(|p| p.public_endpoint.clone());
    Ok(Some(NodeView {
        name: node.name.clone(),
        address_v4,
        server: enrollment.server,
        ca_hash,
        auth: NodeAuth {
            name: node.name.clone(),
            credential: id.credential,
        },
        public_endpoint,
    }))
}

/// Loads `peers.json`; a missing or unreadable file gives None (the enrollment's own
/// list is the fallback), with the reason for an unreadable one.
pub fn load_peers<S: Files + ?Sized>(sys: &mut S) -> Result<Option<PeerList>, String> {
    read_json(sys, PEERS_PATH)
}

/// Writes `peers.json`.
pub fn save_peers<S: Files + ?Sized>(sys: &mut S, list: &PeerList) -> Result<(), Fatal> {
    write_json(sys, PEERS_PATH, list)
}

/// Writes the daemon's status.
pub fn save_status<S: Files + ?Sized>(sys: &mut S, s: &StatusFile) -> Result<(), Fatal> {
    write_json(sys, STATUS_PATH, s)
}

/// Reads the daemon's status (None when it is not running or never wrote one).
pub fn load_status<S: Files + ?Sized>(sys: &mut S) -> Result<Option<StatusFile>, String> {
    read_json(sys, STATUS_PATH)
}
