//! The overlay daemon (`overlay run`), one-shot enrollment (`overlay enroll`) and
//! `overlay status`, against [`OverlaySys`], [`Net`] and [`Api`] so tests use fakes.
//!
//! Daemon order: config → identity (persisted before any network I/O) → either the
//! cached enrollment (the mesh comes up at once, even with kiln-enroll down) or a new
//! enrollment (retried with backoff while the server cannot answer) → kiln0 up → a loop
//! that takes peer lists from the watch thread as they arrive, heartbeats, and re-plans
//! every 2 s and on every new list.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use kiln_enroll_proto::api::{
    EnrollAnswer, EnrollRequest, HeartbeatRequest, Observation, Peer, PeerList,
};
use kiln_enroll_proto::client::NodeAuth;
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::IpNet;
use kiln_enroll_proto::token::Token;
use kiln_enroll_proto::validate;

use super::identity::{self, Identity};
use super::plan::{self, Path, Probe, PROBE_WINDOW_SECS};
use super::state::{self, Enrollment, StatusFile};
use super::{
    Api, ApiError, Fatal, OverlaySys, CONFIG_PATH, DEFAULT_LISTEN_PORT, ENROLLMENT_PATH, IFNAME,
    PEERS_PATH, TAG,
};
use crate::config::schema::{self, ServerUrl};
use crate::netlink::{mss_clamp_rules, Net, PeerOp, Prefix, WgDevice};

/// Seconds between re-plans (probe windows are counted in these steps).
pub const TICK: Duration = Duration::from_secs(2);
/// For this long after a direct path appears, a peer that has not answered is asked again
/// every [`INITIATE_EVERY`] (see [`initiate`]); after that the kernel's own retries carry on.
pub const INITIATE_SECS: u64 = 30;
/// How often a direct peer that has not answered yet is asked again (the loop wakes this
/// often while there is one).
pub const INITIATE_EVERY: Duration = Duration::from_secs(1);
/// How long one peer-list long poll waits.
pub const WATCH_WAIT_SECS: u32 = 30;
/// First and longest retry delay.
pub const BACKOFF: (u64, u64) = (2, 60);
/// WireGuard's overhead on the underlying path (IPv6 outer header).
pub const WG_OVERHEAD: u32 = 80;
/// How long a resolved public endpoint name is used before resolving it again.
pub const RESOLVE_TTL_SECS: u64 = 300;
/// Interface name prefixes whose addresses are never offered as endpoints (containers,
/// bridges and CNI plumbing, loopback).
pub const SKIP_IFACES: &[&str] = &["veth", "cni", "flannel", "docker", "kube", "br-", "lo"];

/// Makes a client for a server URL and CA pin.
pub type MakeApi<'a> = &'a dyn Fn(&str, [u8; 32]) -> Result<Arc<dyn Api>, String>;

/// The `[enroll]` settings the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// kiln-enroll.
    pub server: ServerUrl,
    /// The join token.
    pub token: Token,
    /// The public endpoint this node claims.
    pub endpoint: Option<String>,
    /// WireGuard port.
    pub listen_port: u16,
    /// MTU override.
    pub mtu: Option<u16>,
    /// The name the node asks for.
    pub hostname: String,
}

fn say(sys: &mut dyn OverlaySys, text: &str) {
    sys.say(&format!("{TAG}: {text}"));
}

fn error(sys: &mut dyn OverlaySys, text: &str) {
    sys.say(&format!("{TAG}: ERROR: {text}"));
}

/// The first label of a hostname (a node name is one DNS label).
fn node_name(hostname: &str) -> String {
    hostname.split('.').next().unwrap_or(hostname).to_string()
}

fn kernel_hostname(sys: &mut dyn OverlaySys) -> String {
    sys.read_file(crate::config::KERNEL_HOSTNAME)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

/// Reads `[enroll]` from the merged config; None when there is none.
pub fn load_settings(sys: &mut dyn OverlaySys) -> Result<Option<Settings>, Fatal> {
    let bytes = match sys.read_file(CONFIG_PATH) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Fatal::retry(format!("{CONFIG_PATH}: {e}"))),
    };
    let cfg = schema::parse_bytes(&bytes).map_err(|errs| {
        let why: Vec<String> = errs.iter().map(ToString::to_string).collect();
        Fatal::stop(format!("{CONFIG_PATH}: {}", why.join("; ")))
    })?;
    let e = cfg.enroll;
    if e.is_empty() {
        return Ok(None);
    }
    let (Some(server), Some(token)) = (e.server, e.token) else {
        return Err(Fatal::stop(format!(
            "{CONFIG_PATH}: [enroll] needs both server and token (set enroll.server and \
             enroll.token in any config channel, e.g. kiln.enroll.server=https://HOST:8443 \
             kiln.enroll.token=KLN1... on the kernel command line)"
        )));
    };
    let hostname = match cfg.hostname {
        Some(h) => h.as_str().to_string(),
        None => kernel_hostname(sys),
    };
    Ok(Some(Settings {
        server,
        token,
        endpoint: e.endpoint,
        listen_port: e.listen_port.unwrap_or(DEFAULT_LISTEN_PORT),
        mtu: e.mtu,
        hostname: node_name(&hostname),
    }))
}

fn link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The node's endpoints: its own interface addresses with the WireGuard port; not
/// loopback, link-local, multicast, the overlay itself or container plumbing.
pub fn local_endpoints(addrs: &[(String, IpAddr)], port: u16, pools: &[IpNet]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .filter(|(name, _)| name != IFNAME && !SKIP_IFACES.iter().any(|p| name.starts_with(p)))
        .map(|(_, ip)| *ip)
        .filter(|ip| {
            !ip.is_loopback()
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && !link_local(ip)
                && !pools.iter().any(|p| p.contains(*ip))
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn own_endpoints(sys: &mut dyn OverlaySys, port: u16, pools: &[IpNet]) -> Vec<SocketAddr> {
    match sys.interface_addrs() {
        Ok(a) => local_endpoints(&a, port, pools),
        Err(e) => {
            error(sys, &format!("listing interface addresses: {e}"));
            Vec::new()
        }
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        a => a,
    }
}

/// The enrollment request.
pub fn enroll_request(id: &Identity, s: &Settings, endpoints: Vec<SocketAddr>) -> EnrollRequest {
    EnrollRequest {
        token: s.token.reveal(),
        public_key: id.public_key,
        credential: id.credential.clone(),
        hostname: s.hostname.clone(),
        arch: arch().to_string(),
        endpoints,
        public_endpoint: s.endpoint.clone(),
        listen_port: s.listen_port,
    }
}

/// What to print and the exit code for an enrollment that will not succeed by retrying.
pub fn refusal(e: &ApiError) -> Fatal {
    match e {
        ApiError::Refused(b) => {
            Fatal::stop(format!("enrollment refused ({}): {}", b.error, b.message))
        }
        ApiError::PinMismatch { .. } => Fatal::stop(e.to_string()),
        ApiError::Other { message, .. } => Fatal::stop(format!("enrollment failed: {message}")),
    }
}

/// Delay before retry number `attempt` (0-based): doubling from 2 s to 60 s, plus up to
/// a quarter more from `jitter` (0-255), so a fleet rebooting together spreads out.
pub fn backoff(attempt: u32, jitter: u8) -> Duration {
    let base = BACKOFF
        .0
        .saturating_mul(1u64 << attempt.min(6))
        .min(BACKOFF.1);
    Duration::from_millis(base * 1000 + base * 250 * u64::from(jitter) / 255)
}

/// Enrolls, retrying what can be retried.
pub fn enroll_with_retry(
    sys: &mut dyn OverlaySys,
    api: &dyn Api,
    id: &Identity,
    s: &Settings,
) -> Result<EnrollAnswer, Fatal> {
    let mut attempt = 0u32;
    loop {
        let req = enroll_request(id, s, own_endpoints(sys, s.listen_port, &[]));
        match api.enroll(&req) {
            Ok(a) => return Ok(a),
            Err(e) if !e.retryable() => return Err(refusal(&e)),
            Err(e) => {
                let mut j = [0u8; 1];
                let _ = sys.random(&mut j);
                let mut d = backoff(attempt, j[0]);
                if let ApiError::Refused(b) = &e {
                    if let Some(after) = b.retry_after_secs {
                        d = d.max(Duration::from_secs(u64::from(after)));
                    }
                }
                say(
                    sys,
                    &format!(
                        "enrollment with {} failed: {e}; retrying in {} s",
                        s.server,
                        d.as_secs()
                    ),
                );
                sys.sleep(d);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Checks an answer before anything of it is used.
pub fn check_answer(a: &EnrollAnswer) -> Result<(), Fatal> {
    validate::answer(a).map_err(|errs| {
        Fatal::stop(format!(
            "kiln-enroll's answer is unusable, nothing was configured: {}",
            errs.join("; ")
        ))
    })
}

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
    pub reported: std::collections::BTreeSet<[u8; 32]>,
    /// Direct peers without a handshake yet: (path first seen, last initiation), unix s.
    pub initiating: BTreeMap<PublicKey, (u64, u64)>,
    /// Peers whose first handshake was printed.
    pub greeted: std::collections::BTreeSet<[u8; 32]>,
    /// When each peer was added to this node's mesh (unix s): at kiln0's start for the
    /// peers it came up with, else when its peer list arrived.
    pub added: BTreeMap<[u8; 32], u64>,
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
            reported: std::collections::BTreeSet::new(),
            initiating: BTreeMap::new(),
            greeted: std::collections::BTreeSet::new(),
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
    /// daemon then wakes every [`INITIATE_EVERY`] instead of every [`TICK`]).
    pub fn still_initiating(&self, now: u64) -> bool {
        self.initiating
            .values()
            .any(|(since, _)| now.saturating_sub(*since) <= INITIATE_SECS)
    }

    fn pools(&self) -> [IpNet; 2] {
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
    let status = StatusFile {
        mtu: mesh.mtu,
        paths: mesh
            .paths
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    };
    state::save_status(sys, &status)
}

fn resolve_public(
    sys: &mut dyn OverlaySys,
    mesh: &mut Mesh,
    now: u64,
) -> BTreeMap<String, SocketAddr> {
    let mut out = BTreeMap::new();
    let claims: Vec<String> = mesh
        .checked
        .iter()
        .filter_map(|p| p.public_endpoint.clone())
        .collect();
    for text in claims {
        if let Ok(a) = text.parse::<SocketAddr>() {
            out.insert(text, a);
            continue;
        }
        let cached = mesh
            .resolved
            .get(&text)
            .filter(|(_, at)| now.saturating_sub(*at) < RESOLVE_TTL_SECS)
            .map(|(a, _)| *a);
        let addr = match cached {
            Some(a) => a,
            None => {
                let a = validate::parse_host_port(&text).ok().and_then(|(h, p)| {
                    let all = sys.resolve(&h, p).ok()?;
                    all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
                });
                mesh.resolved.insert(text.clone(), (a, now));
                a
            }
        };
        if let Some(a) = addr {
            out.insert(text, a);
        }
    }
    out
}

/// Plans against the kernel's device, applies the changes, prints changed paths and
/// writes the status file.
pub fn replan(sys: &mut dyn OverlaySys, net: &mut dyn Net, mesh: &mut Mesh) -> Result<(), String> {
    let device = net.wireguard(IFNAME).map_err(|e| e.to_string())?;
    let now = sys.now();
    // A first handshake with a peer is news for the server (it is how a public node gets
    // verified and becomes a relay): tell it at once rather than at the next period.
    let news = device
        .peers
        .iter()
        .any(|p| p.last_handshake.is_some() && !mesh.reported.contains(&p.public_key));
    if news && mesh.trouble.is_none() {
        mesh.next_heartbeat = mesh.next_heartbeat.min(now);
    }
    let resolved = resolve_public(sys, mesh, now);
    let own: Vec<IpAddr> = mesh.endpoints.iter().map(SocketAddr::ip).collect();
    let p = plan::plan(&plan::Inputs {
        peers: &mesh.checked,
        own_addrs: &own,
        public_claim: mesh.public_claim.is_some(),
        keepalive: mesh.enrollment.answer.network.keepalive_secs,
        resolved: &resolved,
        device: &device,
        probes: &mesh.probes,
        now,
        probe_window: PROBE_WINDOW_SECS,
    });
    if !p.ops.is_empty() {
        net.set_wireguard(IFNAME, &mesh.id.private_key, mesh.listen_port, &p.ops)
            .map_err(|e| format!("{IFNAME}: {e}"))?;
    }
    let added = std::mem::take(&mut mesh.added);
    mesh.added = mesh
        .checked
        .iter()
        .map(|p| {
            (
                p.public_key.0,
                added.get(&p.public_key.0).copied().unwrap_or(now),
            )
        })
        .collect();
    initiate(sys, net, mesh, &device, &p.status, &p.desired, now)?;
    greet(sys, mesh, &device);
    mesh.probes = p.probes;
    let mut changed = false;
    let mut paths = BTreeMap::new();
    for s in p.status {
        let old = mesh.paths.get(&s.name);
        // Every probe window (a new start time, even at the same endpoint) gets a kick.
        let new_window = matches!(s.path, Path::Probing(..)) && old != Some(&s.path);
        if !old.is_some_and(|o| o.same_route(&s.path)) {
            say(sys, &format!("peer {} {}", s.name, s.path));
            changed = true;
        }
        if new_window {
            kick(sys, mesh, &s.name);
        }
        paths.insert(s.name, s.path);
    }
    for gone in mesh.paths.keys().filter(|k| !paths.contains_key(*k)) {
        sys.say(&format!("{TAG}: peer {gone} removed"));
        changed = true;
    }
    mesh.paths = paths;
    if changed || mesh.mtu == 0 {
        let status = StatusFile {
            mtu: mesh.mtu,
            paths: mesh
                .paths
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        };
        if let Err(f) = state::save_status(sys, &status) {
            error(sys, &f.message);
        }
    }
    Ok(())
}

/// Starts this node's handshakes with its direct peers at once, and again every
/// [`INITIATE_EVERY`] until one completes (for [`INITIATE_SECS`]).
///
/// A peer that enrolled a moment ago is often faster than the peer-list update that tells
/// the others about it: its first handshake initiation reaches a node that does not know
/// its key yet and is dropped. The kernel would retry only after REKEY_TIMEOUT (5 s) and
/// sends nothing at all until there is traffic or a keepalive is due; so a peer without a
/// handshake is re-created (a new kernel peer may initiate at once) and kicked.
fn initiate(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    mesh: &mut Mesh,
    device: &WgDevice,
    status: &[plan::PeerStatus],
    desired: &BTreeMap<PublicKey, crate::netlink::WgPeer>,
    now: u64,
) -> Result<(), String> {
    let every = INITIATE_EVERY.as_secs();
    let mut still = BTreeMap::new();
    let mut again = Vec::new();
    let mut kicks = Vec::new();
    for s in status.iter().filter(|s| matches!(s.path, Path::Direct(_))) {
        let answered = device
            .peers
            .iter()
            .any(|k| k.public_key == s.key.0 && k.last_handshake.is_some());
        if answered {
            continue;
        }
        let entry = match mesh.initiating.get(&s.key) {
            None => {
                kicks.push(s.name.clone());
                (now, now)
            }
            Some(&(since, last))
                if now.saturating_sub(since) <= INITIATE_SECS
                    && now.saturating_sub(last) >= every =>
            {
                if let Some(peer) = desired.get(&s.key) {
                    again.push(PeerOp::Remove(peer.public_key));
                    again.push(PeerOp::Upsert(peer.clone()));
                }
                kicks.push(s.name.clone());
                (since, now)
            }
            Some(&e) => e,
        };
        still.insert(s.key, entry);
    }
    mesh.initiating = still;
    if !again.is_empty() {
        net.set_wireguard(IFNAME, &mesh.id.private_key, mesh.listen_port, &again)
            .map_err(|e| format!("{IFNAME}: {e}"))?;
    }
    for name in kicks {
        kick(sys, mesh, &name);
    }
    Ok(())
}

/// Prints each peer's first handshake, with how long after the peer was added it came.
fn greet(sys: &mut dyn OverlaySys, mesh: &mut Mesh, device: &WgDevice) {
    for k in &device.peers {
        let Some(at) = k.last_handshake else { continue };
        if !mesh.greeted.insert(k.public_key) {
            continue;
        }
        let Some(name) = mesh
            .checked
            .iter()
            .find(|p| p.public_key.0 == k.public_key)
            .map(|p| p.name.clone())
        else {
            continue;
        };
        let when = match mesh.added.get(&k.public_key) {
            Some(added) => format!(", {} s after it was added", at.saturating_sub(*added)),
            None => String::new(),
        };
        say(sys, &format!("peer {name} first handshake{when}"));
    }
}

/// Starts a handshake with peer `name` at the endpoint just set, by sending a datagram to
/// its overlay IPv4 address. A failure only delays the probe to the next window.
fn kick(sys: &mut dyn OverlaySys, mesh: &Mesh, name: &str) {
    let to = mesh
        .checked
        .iter()
        .find(|p| p.name == name)
        .and_then(|p| p.allowed_ips.iter().find(|n| n.addr.is_ipv4()))
        .map(|n| n.addr);
    if let Some(to) = to {
        // No route yet or a full socket buffer: the next probe window kicks again.
        let _ = sys.kick(to);
    }
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

/// What the watch thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new peer list.
    Peers(PeerList),
    /// The server says this node is revoked.
    Revoked(String),
    /// A poll failed (it is retried).
    Trouble(String),
}

/// The watch loop (its own thread): long-polls the peer list and sends every new version;
/// ends when the receiver is gone or the node is revoked.
pub fn watch(
    api: Arc<dyn Api>,
    auth: NodeAuth,
    mut since: u64,
    tx: Sender<Event>,
    sleep: fn(Duration),
) {
    let mut attempt = 0u32;
    loop {
        match api.peers(&auth, since, WATCH_WAIT_SECS) {
            Ok(list) => {
                attempt = 0;
                if list.version != since {
                    since = list.version;
                    if tx.send(Event::Peers(list)).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.is_revoked() => {
                let _ = tx.send(Event::Revoked(e.to_string()));
                return;
            }
            Err(e) => {
                if tx.send(Event::Trouble(e.to_string())).is_err() {
                    return;
                }
                sleep(backoff(attempt, 128));
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn trouble(sys: &mut dyn OverlaySys, mesh: &mut Mesh, what: Option<String>) {
    match (&mesh.trouble, &what) {
        (None, Some(w)) => say(
            sys,
            &format!("kiln-enroll unreachable: {w} (the mesh keeps running)"),
        ),
        (Some(_), None) => say(sys, "kiln-enroll reachable again"),
        _ => {}
    }
    mesh.trouble = what;
}

/// One pass of the daemon loop: `first` and any further events, a heartbeat when due, a
/// re-plan. Some(exit code) when the daemon must end.
pub fn tick(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    api: &dyn Api,
    mesh: &mut Mesh,
    first: Option<Event>,
    events: &Receiver<Event>,
) -> Option<u8> {
    for ev in first
        .into_iter()
        .chain(std::iter::from_fn(|| events.try_recv().ok()))
    {
        match ev {
            Event::Peers(list) => {
                trouble(sys, mesh, None);
                accept_peers(sys, mesh, list, true);
            }
            Event::Revoked(why) => return Some(revoke(sys, net, mesh, &why)),
            // Heartbeats say whether the server is there; a failed poll alone is noise.
            Event::Trouble(_) => {}
        }
    }
    if sys.now() >= mesh.next_heartbeat {
        match heartbeat(sys, net, api, mesh) {
            Ok(()) => trouble(sys, mesh, None),
            Err(e) if e.is_revoked() => return Some(revoke(sys, net, mesh, &e.to_string())),
            Err(e) => trouble(sys, mesh, Some(e.to_string())),
        }
    }
    if let Err(e) = replan(sys, net, mesh) {
        error(sys, &format!("applying the peer list: {e}"));
    }
    None
}

fn summary(mesh: &Mesh) -> String {
    let n = &mesh.enrollment.answer.node;
    format!(
        "{} {} {} mtu {} ({} peers)",
        n.name,
        n.address_v4.addr,
        n.address_v6.addr,
        mesh.mtu,
        mesh.checked.len()
    )
}

/// The daemon after config: identity, enrollment (cached or new), kiln0, the loop.
/// `spawn_watch` starts the watch thread; it gets the receiver's sender.
pub fn daemon(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    make_api: MakeApi<'_>,
    s: &Settings,
    spawn_watch: &dyn Fn(Arc<dyn Api>, NodeAuth, u64, Sender<Event>),
) -> u8 {
    match daemon_inner(sys, net, make_api, s, spawn_watch) {
        Ok(code) => code,
        Err(f) => {
            for line in f.message.lines() {
                error(sys, line);
            }
            f.code
        }
    }
}

fn daemon_inner(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    make_api: MakeApi<'_>,
    s: &Settings,
    spawn_watch: &dyn Fn(Arc<dyn Api>, NodeAuth, u64, Sender<Event>),
) -> Result<u8, Fatal> {
    let id = identity::load_or_create(sys)?;
    let cached = state::load_enrollment(sys)?;
    let from_cache = cached.is_some();
    let (enrollment, api) = match cached {
        Some(e) => {
            if e.server != s.server.to_string() || e.ca_hash != s.token.ca_hash {
                say(
                    sys,
                    &format!(
                        "note: this node enrolled with {} earlier and keeps using it; the \
                         config now names {} (delete {ENROLLMENT_PATH} to enroll there)",
                        e.server, s.server
                    ),
                );
            }
            let api = make_api(&e.server, e.ca_hash).map_err(Fatal::stop)?;
            (e, api)
        }
        None => {
            let url = s.server.to_string();
            let api = make_api(&url, s.token.ca_hash).map_err(Fatal::stop)?;
            let answer = enroll_with_retry(sys, api.as_ref(), &id, s)?;
            check_answer(&answer)?;
            let e = Enrollment {
                server: url,
                ca_hash: s.token.ca_hash,
                answer,
            };
            state::save_enrollment(sys, &e)?;
            state::save_peers(sys, &e.answer.peers)?;
            (e, api)
        }
    };
    if from_cache {
        check_answer(&enrollment.answer)?;
    }
    let mut mesh = Mesh::new(id, enrollment, s);
    let list = if from_cache {
        match state::load_peers(sys) {
            Ok(Some(l)) => l,
            Ok(None) => mesh.enrollment.answer.peers.clone(),
            Err(e) => {
                error(sys, &format!("{e}; using the peers of the enrollment"));
                mesh.enrollment.answer.peers.clone()
            }
        }
    } else {
        mesh.enrollment.answer.peers.clone()
    };
    accept_peers(sys, &mut mesh, list, false);
    let server = ServerUrl::parse(&mesh.enrollment.server).unwrap_or_else(|_| s.server.clone());
    mesh.mtu = choose_mtu(sys, net, &server, mesh.enrollment.answer.network.mtu, s.mtu);
    bring_up(sys, net, &mut mesh)?;
    if from_cache {
        match heartbeat(sys, net, api.as_ref(), &mut mesh) {
            Ok(()) => say(sys, &format!("mesh up from cache as {}", summary(&mesh))),
            Err(e) if e.is_revoked() => return Ok(revoke(sys, net, &mesh, &e.to_string())),
            Err(e) => {
                say(
                    sys,
                    &format!(
                        "mesh up from cache as {} (kiln-enroll unreachable: {e})",
                        summary(&mesh)
                    ),
                );
                mesh.trouble = Some(e.to_string());
            }
        }
    } else {
        say(sys, &format!("enrolled as {}", summary(&mesh)));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_watch(api.clone(), mesh.auth(), mesh.list.version, tx);
    let mut event = None;
    loop {
        if let Some(code) = tick(sys, net, api.as_ref(), &mut mesh, event.take(), &rx) {
            return Ok(code);
        }
        // A new peer list is applied the moment it arrives: a peer that just enrolled is
        // already sending its first handshake initiation.
        let wait = if mesh.still_initiating(sys.now()) {
            INITIATE_EVERY
        } else {
            TICK
        };
        event = sys.next_event(&rx, wait);
    }
}

/// `overlay enroll` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollArgs {
    /// `--server`.
    pub server: ServerUrl,
    /// `--token`.
    pub token: Token,
    /// `--endpoint`.
    pub endpoint: Option<String>,
    /// `--listen-port`.
    pub listen_port: u16,
}

/// Parses `overlay enroll` arguments.
pub fn parse_enroll_args(args: &[String]) -> Result<EnrollArgs, String> {
    let mut server = None;
    let mut token = None;
    let mut endpoint = None;
    let mut listen_port = DEFAULT_LISTEN_PORT;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "--server" => {
                let v = value()?;
                server = Some(ServerUrl::parse(&v).map_err(|e| format!("--server {v:?}: {e}"))?);
            }
            "--token" => {
                token = Some(Token::parse(&value()?).map_err(|e| format!("--token: {e}"))?);
            }
            "--endpoint" => {
                let v = value()?;
                validate::parse_host_port(&v).map_err(|e| format!("--endpoint {v:?}: {e}"))?;
                endpoint = Some(v);
            }
            "--listen-port" => {
                let v = value()?;
                listen_port = v
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("--listen-port {v:?} is not a port 1-65535"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(EnrollArgs {
        server: server.ok_or("--server URL is required")?,
        token: token.ok_or("--token TOKEN is required")?,
        endpoint,
        listen_port,
    })
}

/// `overlay enroll`: one attempt; exit 0 enrolled, 2 refused, 1 other error. On success
/// the enrollment is stored, so `overlay run` uses it.
pub fn enroll_once(sys: &mut dyn OverlaySys, make_api: MakeApi<'_>, a: &EnrollArgs) -> u8 {
    let hostname = match load_settings(sys) {
        Ok(Some(s)) => s.hostname,
        _ => node_name(&kernel_hostname(sys)),
    };
    let s = Settings {
        server: a.server.clone(),
        token: a.token.clone(),
        endpoint: a.endpoint.clone(),
        listen_port: a.listen_port,
        mtu: None,
        hostname,
    };
    let result = (|| -> Result<Enrollment, Fatal> {
        let id = identity::load_or_create(sys)?;
        let url = s.server.to_string();
        let api = make_api(&url, s.token.ca_hash).map_err(Fatal::retry)?;
        let req = enroll_request(&id, &s, own_endpoints(sys, s.listen_port, &[]));
        let answer = match api.enroll(&req) {
            Ok(a) => a,
            Err(e @ (ApiError::Refused(_) | ApiError::PinMismatch { .. })) if !e.retryable() => {
                return Err(refusal(&e))
            }
            Err(e) => return Err(Fatal::retry(format!("enrollment failed: {e}"))),
        };
        check_answer(&answer)?;
        let e = Enrollment {
            server: url,
            ca_hash: s.token.ca_hash,
            answer,
        };
        state::save_enrollment(sys, &e)?;
        state::save_peers(sys, &e.answer.peers)?;
        Ok(e)
    })();
    match result {
        Ok(e) => {
            let n = &e.answer.node;
            say(
                sys,
                &format!(
                    "enrolled as {} {} {} ({} peers, server {})",
                    n.name,
                    n.address_v4.addr,
                    n.address_v6.addr,
                    e.answer.peers.peers.len().saturating_sub(1),
                    e.server
                ),
            );
            0
        }
        Err(f) => {
            error(sys, &f.message);
            f.code
        }
    }
}

fn age(now: u64, t: Option<u64>) -> String {
    match t {
        Some(t) => format!("{}s ago", now.saturating_sub(t)),
        None => "never".to_string(),
    }
}

/// `overlay status`: the node and each peer, from the state files and the kernel.
pub fn status(sys: &mut dyn OverlaySys, net: &mut dyn Net) -> u8 {
    let e = match state::load_enrollment(sys) {
        Ok(Some(e)) => e,
        Ok(None) => {
            sys.say(&format!(
                "{TAG}: not enrolled ({ENROLLMENT_PATH} does not exist)"
            ));
            return 1;
        }
        Err(f) => {
            error(sys, &f.message);
            return 1;
        }
    };
    let list = match state::load_peers(sys) {
        Ok(Some(l)) => l,
        _ => e.answer.peers.clone(),
    };
    let st = state::load_status(sys).ok().flatten();
    let dev = net.wireguard(IFNAME);
    let n = &e.answer.node;
    let mtu = st
        .as_ref()
        .map_or("unknown (daemon not running)".to_string(), |s| {
            s.mtu.to_string()
        });
    sys.say(&format!(
        "node {} {} {} mtu {} server {} peers-version {}",
        n.name, n.address_v4, n.address_v6, mtu, e.server, list.version
    ));
    let dev = match dev {
        Ok(d) => Some(d),
        Err(err) => {
            sys.say(&format!("{IFNAME}: {err}"));
            None
        }
    };
    let now = sys.now();
    let mut peers: Vec<&Peer> = list.peers.iter().filter(|p| p.name != n.name).collect();
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    for p in peers {
        let addr = p
            .allowed_ips
            .iter()
            .find(|a| a.addr.is_ipv4())
            .map_or("-".to_string(), |a| a.addr.to_string());
        let path = st
            .as_ref()
            .and_then(|s| s.paths.get(&p.name).cloned())
            .unwrap_or_else(|| "-".to_string());
        let k = dev
            .as_ref()
            .and_then(|d| d.peers.iter().find(|k| k.public_key == p.public_key.0));
        let endpoint = k
            .and_then(|k| k.endpoint)
            .map_or("-".to_string(), |e| e.to_string());
        let hs = age(now, k.and_then(|k| k.last_handshake));
        sys.say(&format!(
            "peer {} {addr} {path} endpoint {endpoint} handshake {hs}",
            p.name
        ));
    }
    0
}
