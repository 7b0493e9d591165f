//! The running mesh: what the daemon knows (enrollment, peer list, paths, probes), kiln0
//! brought up with its key, addresses and MTU, heartbeats, and the node taken off the
//! overlay when kiln-enroll revokes it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use kiln_enroll_proto::api::{HeartbeatRequest, Observation, Peer, PeerList};
use kiln_enroll_proto::client::NodeAuth;
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::IpNet;
use kiln_enroll_proto::validate;

use super::enroll::own_endpoints;
use super::identity::Identity;
use super::plan::{Path, Probe};
use super::replan::replan;
use super::run::INITIATE_SECS;
use super::settings::Settings;
use super::state::{self, Enrollment, StatusFile};
use super::{error, say, Api, ApiError, Fatal, OverlaySys, ENROLLMENT_PATH, IFNAME, PEERS_PATH};
use crate::config::schema::ServerUrl;
use crate::netlink::{mss_clamp_rules, Net, PeerOp, Prefix, WgDevice};

/// WireGuard's overhead on the underlying path (IPv6 outer header).
pub const WG_OVERHEAD: u32 = 80;

/// Everything the running mesh knows.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// Our key and credential.
    pub id: Identity,
    /// The enrollment.
    pub enrollment: Enrollment,
    /// The latest peer list.
    pub list: PeerList,
    /// Its usable peers.
    pub checked: Vec<Peer>,
    /// Our public endpoint claim.
    pub public_claim: Option<String>,
    /// WireGuard port.
    pub listen_port: u16,
    /// The MTU set on kiln0.
    pub mtu: u32,
    /// Our endpoints (interface addresses with the port).
    pub endpoints: Vec<SocketAddr>,
    /// Probe bookkeeping.
    pub probes: BTreeMap<PublicKey, Probe>,
    /// The last printed path of every peer.
    pub paths: BTreeMap<String, Path>,
    /// Resolved public endpoint names: text → (address, when resolved).
    pub resolved: BTreeMap<String, (Option<SocketAddr>, u64)>,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u32,
    /// When the next heartbeat is due.
    pub next_heartbeat: u64,
    /// The last kiln-enroll problem printed (printed again only when it changes).
    pub trouble: Option<String>,
    /// Peers the last heartbeat reported a handshake with.
    pub reported: BTreeSet<[u8; 32]>,
    /// Direct peers without a handshake yet: (path first seen, last initiation), unix s.
    pub initiating: BTreeMap<PublicKey, (u64, u64)>,
    /// Peers whose first handshake was printed.
    pub greeted: BTreeSet<[u8; 32]>,
    /// When each peer was added to this node's mesh (unix s): at kiln0's start for the
    /// peers it came up with, else when its peer list arrived.
    pub added: BTreeMap<[u8; 32], u64>,
}

impl Mesh {
    /// What `overlay status` and kiln-cluster read: the MTU and each peer's path.
    pub fn status(&self) -> StatusFile {
        StatusFile {
            mtu: self.mtu,
            paths: self
                .paths
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        }
    }
}

impl Mesh {
    /// A mesh from an enrollment and a peer list.
    pub fn new(id: Identity, enrollment: Enrollment, s: &Settings) -> Mesh {
        let heartbeat_secs = enrollment.answer.heartbeat_secs;
        Mesh {
            id,
            list: PeerList {
                version: 0,
                peers: Vec::new(),
            },
            enrollment,
            checked: Vec::new(),
            public_claim: s.endpoint.clone(),
            listen_port: s.listen_port,
            mtu: 0,
            endpoints: Vec::new(),
            probes: BTreeMap::new(),
            paths: BTreeMap::new(),
            resolved: BTreeMap::new(),
            heartbeat_secs,
            next_heartbeat: 0,
            trouble: None,
            reported: BTreeSet::new(),
            initiating: BTreeMap::new(),
            greeted: BTreeSet::new(),
            added: BTreeMap::new(),
        }
    }

    /// The node's auth for kiln-enroll.
    pub fn auth(&self) -> NodeAuth {
        NodeAuth {
            name: self.enrollment.answer.node.name.clone(),
            credential: self.id.credential.clone(),
        }
    }

    /// Whether a direct peer is still being asked for its first handshake at `now` (the
    /// daemon then wakes every [`super::run::INITIATE_EVERY`] instead of every
    /// [`super::run::TICK`]).
    pub fn still_initiating(&self, now: u64) -> bool {
        self.initiating
            .values()
            .any(|(since, _)| now.saturating_sub(*since) <= INITIATE_SECS)
    }

    pub(super) fn pools(&self) -> [IpNet; 2] {
        let n = &self.enrollment.answer.network;
        [n.pool_v4, n.pool_v6]
    }
}

/// Takes a peer list: checks it (each dropped entry prints one ERROR line), keeps the
/// usable peers, and persists it when `persist`.
pub fn accept_peers(sys: &mut dyn OverlaySys, mesh: &mut Mesh, list: PeerList, persist: bool) {
    let a = &mesh.enrollment.answer;
    let checked = validate::peers(&list, &mesh.id.public_key, &a.node, &a.network);
    for d in &checked.dropped {
        error(
            sys,
            &format!("peer list version {}: {d}; left out", list.version),
        );
    }
    if persist {
        if let Err(f) = state::save_peers(sys, &list) {
            error(sys, &f.message);
        }
    }
    mesh.checked = checked.peers;
    mesh.list = list;
}

/// The MTU for kiln0: the configured override, else the smaller of the server's and the
/// path to the server minus WireGuard's overhead (never below 1280).
pub fn choose_mtu(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    server: &ServerUrl,
    server_mtu: u16,
    config_mtu: Option<u16>,
) -> u32 {
    if let Some(m) = config_mtu {
        return u32::from(m);
    }
    let server_mtu = u32::from(server_mtu);
    let dest = match server.host.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => sys
            .resolve(&server.host, server.port)
            .ok()
            .and_then(|v| v.first().map(SocketAddr::ip)),
    };
    let path = dest.map(|ip| net.path_mtu(ip).map_err(|e| e.to_string()));
    let min = u32::from(validate::MIN_MTU);
    match path {
        Some(Ok((_, m))) => server_mtu.min(m.saturating_sub(WG_OVERHEAD)).max(min),
        Some(Err(e)) => {
            say(
                sys,
                &format!(
                    "path MTU to {} unknown ({e}); using {server_mtu}",
                    server.host
                ),
            );
            server_mtu
        }
        None => {
            say(
                sys,
                &format!(
                    "cannot resolve {} for the path MTU; using {server_mtu}",
                    server.host
                ),
            );
            server_mtu
        }
    }
}

fn wg_fail(e: impl std::fmt::Display) -> Fatal {
    Fatal::retry(format!("{IFNAME}: {e}"))
}

/// Creates and configures kiln0 (key, port, addresses, MTU, no ICMP redirects, MSS
/// clamp), then sets the peers.
pub fn bring_up(sys: &mut dyn OverlaySys, net: &mut dyn Net, mesh: &mut Mesh) -> Result<(), Fatal> {
    let node = mesh.enrollment.answer.node.clone();
    net.ensure_wireguard(IFNAME).map_err(wg_fail)?;
    net.set_wireguard(IFNAME, &mesh.id.private_key, mesh.listen_port, &[])
        .map_err(wg_fail)?;
    let addrs = [node.address_v4, node.address_v6].map(|a| Prefix {
        addr: a.addr,
        len: a.len,
    });
    net.replace_addresses(IFNAME, &addrs).map_err(wg_fail)?;
    net.set_mtu_up(IFNAME, mesh.mtu).map_err(wg_fail)?;
    // A relay forwards between peers on the same interface; redirects would tell them to
    // talk directly, which is exactly what does not work.
    for key in [
        format!("net/ipv4/conf/{IFNAME}/send_redirects"),
        "net/ipv4/conf/all/send_redirects".to_string(),
    ] {
        if let Err(e) = net.sysctl(&key, "0") {
            error(sys, &format!("sysctl {key}=0: {e}"));
        }
    }
    if let Err(e) = net.apply_nft(&mss_clamp_rules(IFNAME)) {
        error(sys, &format!("TCP MSS clamp on {IFNAME}: {e}"));
    }
    mesh.endpoints = own_endpoints(sys, mesh.listen_port, &mesh.pools());
    replan(sys, net, mesh).map_err(Fatal::retry)?;
    // The status file also tells kiln-cluster that kiln0 is up; replan writes it only
    // when a path changed, which a node without peers never sees.
    state::save_status(sys, &mesh.status())
}

/// What the kernel knows about each peer, for the heartbeat.
pub fn observations(device: &WgDevice) -> Vec<Observation> {
    device
        .peers
        .iter()
        .map(|p| Observation {
            public_key: PublicKey(p.public_key),
            endpoint: p.endpoint,
            last_handshake: p.last_handshake,
        })
        .collect()
}

/// One heartbeat.
pub fn heartbeat(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    api: &dyn Api,
    mesh: &mut Mesh,
) -> Result<(), ApiError> {
    mesh.endpoints = own_endpoints(sys, mesh.listen_port, &mesh.pools());
    let obs = net
        .wireguard(IFNAME)
        .map(|d| observations(&d))
        .unwrap_or_default();
    mesh.reported = obs
        .iter()
        .filter(|o| o.last_handshake.is_some())
        .map(|o| o.public_key.0)
        .collect();
    let req = HeartbeatRequest {
        endpoints: mesh.endpoints.clone(),
        public_endpoint: mesh.public_claim.clone(),
        observations: obs,
    };
    let now = sys.now();
    let r = api.heartbeat(&mesh.auth(), &req);
    match &r {
        Ok(a) => {
            mesh.heartbeat_secs = a.heartbeat_secs.clamp(1, 3600);
            mesh.next_heartbeat = now + u64::from(mesh.heartbeat_secs);
        }
        Err(_) => {
            // Sooner than a full period, so a server that comes back hears from us soon.
            mesh.next_heartbeat = now + u64::from(mesh.heartbeat_secs.min(10));
        }
    }
    r.map(|_| ())
}

/// Takes the node off the overlay after the server revoked it: every peer and address
/// removed from kiln0, the enrollment forgotten. Exit code 2.
pub fn revoke(sys: &mut dyn OverlaySys, net: &mut dyn Net, mesh: &Mesh, why: &str) -> u8 {
    let peers: Vec<PeerOp> = net
        .wireguard(IFNAME)
        .map(|d| {
            d.peers
                .iter()
                .map(|p| PeerOp::Remove(p.public_key))
                .collect()
        })
        .unwrap_or_default();
    if let Err(e) = net.set_wireguard(IFNAME, &mesh.id.private_key, mesh.listen_port, &peers) {
        error(sys, &format!("removing peers from {IFNAME}: {e}"));
    }
    if let Err(e) = net.replace_addresses(IFNAME, &[]) {
        error(sys, &format!("removing addresses from {IFNAME}: {e}"));
    }
    for path in [ENROLLMENT_PATH, PEERS_PATH] {
        if let Err(e) = sys.remove_file(path) {
            error(sys, &format!("removing {path}: {e}"));
        }
    }
    error(
        sys,
        &format!(
            "this node was revoked by kiln-enroll ({why}); {IFNAME} has no peers or \
             addresses now. To join again, delete {} and enroll with a new token",
            super::STATE_DIR
        ),
    );
    2
}
