//! The path to every peer and the WireGuard changes that get there. Pure: the daemon
//! gathers the inputs (checked peers, the kernel's device, resolved endpoints, the clock)
//! and applies the output.
//!
//! Rules, per peer (by name):
//! 1. It claims a public endpoint (resolved outside): direct to it.
//! 2. Else we claim one ourselves: passive. It comes to us; no endpoint is set, so the
//!    endpoint the kernel learns from its packets (behind its NAT) is never clobbered.
//! 3. Else its LAN endpoints (minus any with one of our own addresses: every node behind
//!    a QEMU or home NAT may have the same private address) are probed one at a time for
//!    a window; a handshake inside the window makes the path direct, and it stays direct
//!    while handshakes keep coming. When every candidate failed once, the peer goes
//!    through the relay: the first peer by name that is `public && online`. The relay's
//!    allowed IPs then carry the relayed peer's addresses, so the relayed peer's own
//!    entry is removed (allowed IPs must not overlap). Without a relay probing goes on,
//!    round-robin.
//!
//! The output is the smallest list of [`PeerOp`]s that turns the kernel's device into the
//! desired one: nothing when nothing changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use kiln_enroll_proto::api::Peer;
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::IpNet;

use crate::netlink::{PeerOp, Prefix, WgDevice, WgPeer, WgPeerState};

/// How long one LAN endpoint is given to complete a handshake.
pub const PROBE_WINDOW_SECS: u64 = 20;
/// A handshake younger than this means the path works (WireGuard's REJECT_AFTER_TIME:
/// a working session re-handshakes every 2 minutes).
pub const HANDSHAKE_FRESH_SECS: u64 = 180;

/// How this node reaches a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// Straight to this endpoint.
    Direct(SocketAddr),
    /// We are public: the peer comes to us; the kernel learns its endpoint.
    Passive,
    /// Trying this LAN endpoint since this time (unix seconds).
    Probing(SocketAddr, u64),
    /// Through this relay peer.
    Relay(String),
    /// No way yet (no endpoint to try, no relay).
    Unreachable,
}

impl Path {
    /// Whether two paths are the same route (a probe's start time aside).
    pub fn same_route(&self, other: &Path) -> bool {
        match (self, other) {
            (Path::Probing(a, _), Path::Probing(b, _)) => a == b,
            _ => self == other,
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Direct(e) => write!(f, "direct {e}"),
            Path::Passive => f.write_str("passive"),
            Path::Probing(e, _) => write!(f, "probing {e}"),
            Path::Relay(r) => write!(f, "via {r}"),
            Path::Unreachable => f.write_str("unreachable"),
        }
    }
}

/// Where a LAN probe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a handshake at the current candidate; `failed` candidates of this
    /// round have had their window.
    Trying {
        /// Windows that ran out this round.
        failed: usize,
    },
    /// A handshake came: the current candidate works.
    Direct,
    /// Every candidate failed; through the relay.
    Relayed,
}

/// Per-peer probe bookkeeping, carried from one plan to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The LAN endpoints being tried (a change starts over).
    pub candidates: Vec<SocketAddr>,
    /// The current one.
    pub index: usize,
    /// When the current stage began.
    pub since: u64,
    /// Where it stands.
    pub stage: Stage,
}

/// What the plan looks at.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    /// The checked peers (`validate::peers`), ourselves left out.
    pub peers: &'a [Peer],
    /// This node's own interface addresses.
    pub own_addrs: &'a [IpAddr],
    /// Whether this node claims a public endpoint.
    pub public_claim: bool,
    /// The overlay's persistent keepalive (used unless we are public).
    pub keepalive: u16,
    /// Public endpoint text → its address (names resolved by the caller; a claim that
    /// did not resolve is absent).
    pub resolved: &'a BTreeMap<String, SocketAddr>,
    /// The kernel's device now.
    pub device: &'a WgDevice,
    /// The previous plan's bookkeeping.
    pub probes: &'a BTreeMap<PublicKey, Probe>,
    /// Unix seconds.
    pub now: u64,
    /// Seconds per LAN candidate.
    pub probe_window: u64,
}

/// One peer's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Its key.
    pub key: PublicKey,
    /// How we reach it.
    pub path: Path,
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Every peer's path, by name.
    pub status: Vec<PeerStatus>,
    /// Bookkeeping for the next plan.
    pub probes: BTreeMap<PublicKey, Probe>,
    /// The peers the device should have.
    pub desired: BTreeMap<PublicKey, WgPeer>,
    /// The changes: removals first, then upserts, each by key.
    pub ops: Vec<PeerOp>,
}

fn prefix(n: &IpNet) -> Prefix {
    Prefix {
        addr: n.addr,
        len: n.len,
    }
}

fn kernel_peer<'a>(device: &'a WgDevice, key: &PublicKey) -> Option<&'a WgPeerState> {
    device.peers.iter().find(|p| p.public_key == key.0)
}

fn fresh(hs: Option<u64>, now: u64) -> bool {
    hs.is_some_and(|h| now.saturating_sub(h) <= HANDSHAKE_FRESH_SECS)
}

/// The path to a peer without a usable public endpoint while we are not public.
fn lan_path(
    cands: Vec<SocketAddr>,
    kernel: Option<&WgPeerState>,
    prev: Option<&Probe>,
    relay: Option<&str>,
    i: &Inputs<'_>,
) -> (Path, Option<Probe>) {
    let now = i.now;
    if cands.is_empty() {
        return (
            relay.map_or(Path::Unreachable, |r| Path::Relay(r.to_string())),
            None,
        );
    }
    let hs = kernel.and_then(|k| k.last_handshake);
    let start = |index: usize, failed: usize| Probe {
        candidates: cands.clone(),
        index: index % cands.len(),
        since: now,
        stage: Stage::Trying { failed },
    };
    let prev = prev.filter(|p| p.candidates == cands && p.index < cands.len());
    let probe = match prev {
        None => start(0, 0),
        Some(p) => match p.stage {
            Stage::Trying { failed } => {
                if hs.is_some_and(|h| h >= p.since) {
                    Probe {
                        stage: Stage::Direct,
                        since: now,
                        ..p.clone()
                    }
                } else if now < p.since.saturating_add(i.probe_window) {
                    p.clone()
                } else if failed + 1 >= cands.len() && relay.is_some() {
                    Probe {
                        stage: Stage::Relayed,
                        since: now,
                        ..p.clone()
                    }
                } else {
                    start(p.index + 1, (failed + 1) % cands.len().max(1))
                }
            }
            Stage::Direct => {
                if fresh(hs, now) {
                    p.clone()
                } else {
                    start(p.index, 0)
                }
            }
            Stage::Relayed => {
                if relay.is_some() {
                    p.clone()
                } else {
                    start(0, 0)
                }
            }
        },
    };
    let at = probe.candidates[probe.index];
    let path = match probe.stage {
        Stage::Trying { .. } => Path::Probing(at, probe.since),
        // The kernel's endpoint is where the handshake really came from.
        Stage::Direct => Path::Direct(kernel.and_then(|k| k.endpoint).unwrap_or(at)),
        Stage::Relayed => Path::Relay(relay.unwrap_or_default().to_string()),
    };
    (path, Some(probe))
}

/// Computes the plan.
pub fn plan(i: &Inputs<'_>) -> Plan {
    let by_name: BTreeMap<&str, &Peer> = i.peers.iter().map(|p| (p.name.as_str(), p)).collect();
    let resolved = |p: &Peer| -> Option<SocketAddr> {
        p.public_endpoint
            .as_ref()
            .and_then(|e| i.resolved.get(e).copied())
    };
    let relay: Option<&str> = if i.public_claim {
        None
    } else {
        by_name
            .values()
            .find(|p| p.public && p.online && resolved(p).is_some())
            .map(|p| p.name.as_str())
    };
    let own: BTreeSet<IpAddr> = i.own_addrs.iter().copied().collect();

    let mut status = Vec::new();
    let mut probes = BTreeMap::new();
    for p in by_name.values() {
        let kernel = kernel_peer(i.device, &p.public_key);
        let path = if let Some(e) = resolved(p) {
            Path::Direct(e)
        } else if i.public_claim {
            Path::Passive
        } else {
            let cands: Vec<SocketAddr> = p
                .endpoints
                .iter()
                .filter(|e| !own.contains(&e.ip()))
                .copied()
                .collect();
            let (path, probe) = lan_path(cands, kernel, i.probes.get(&p.public_key), relay, i);
            if let Some(pr) = probe {
                probes.insert(p.public_key, pr);
            }
            path
        };
        status.push(PeerStatus {
            name: p.name.clone(),
            key: p.public_key,
            path,
        });
    }

    let keepalive = if i.public_claim { 0 } else { i.keepalive };
    let mut desired: BTreeMap<PublicKey, WgPeer> = BTreeMap::new();
    let mut relayed_ips: Vec<Prefix> = Vec::new();
    for s in &status {
        let Some(p) = by_name.get(s.name.as_str()) else {
            continue;
        };
        let ips: Vec<Prefix> = p.allowed_ips.iter().map(prefix).collect();
        let endpoint = match &s.path {
            Path::Direct(e) | Path::Probing(e, _) => Some(*e),
            Path::Passive | Path::Unreachable => None,
            Path::Relay(_) => {
                relayed_ips.extend(ips);
                continue;
            }
        };
        desired.insert(
            p.public_key,
            WgPeer {
                public_key: p.public_key.0,
                endpoint,
                allowed_ips: ips,
                keepalive,
            },
        );
    }
    if let Some(r) = relay.and_then(|r| by_name.get(r)) {
        if let Some(entry) = desired.get_mut(&r.public_key) {
            entry.allowed_ips.extend(relayed_ips);
        }
    }
    let ops = diff(i.device, &desired, i.now);
    Plan {
        status,
        probes,
        desired,
        ops,
    }
}

fn sorted(ips: &[Prefix]) -> Vec<Prefix> {
    let mut v = ips.to_vec();
    v.sort();
    v.dedup();
    v
}

/// The operations that turn `device` into `desired`. An endpoint is only set where the
/// kernel has none or the peer's last handshake is stale: a working endpoint (perhaps
/// one the kernel learned from a roaming peer) is never overwritten.
pub fn diff(device: &WgDevice, desired: &BTreeMap<PublicKey, WgPeer>, now: u64) -> Vec<PeerOp> {
    let mut removes: Vec<[u8; 32]> = device
        .peers
        .iter()
        .filter(|k| !desired.contains_key(&PublicKey(k.public_key)))
        .map(|k| k.public_key)
        .collect();
    removes.sort();
    let mut ops: Vec<PeerOp> = removes.into_iter().map(PeerOp::Remove).collect();
    for (key, want) in desired {
        let Some(have) = kernel_peer(device, key) else {
            ops.push(PeerOp::Upsert(want.clone()));
            continue;
        };
        let set_endpoint = want.endpoint.is_some()
            && have.endpoint != want.endpoint
            && !fresh(have.last_handshake, now);
        let changed = sorted(&have.allowed_ips) != sorted(&want.allowed_ips)
            || have.keepalive != want.keepalive
            || set_endpoint;
        if changed {
            ops.push(PeerOp::Upsert(WgPeer {
                endpoint: if set_endpoint { want.endpoint } else { None },
                ..want.clone()
            }));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> PublicKey {
        PublicKey([n; 32])
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn peer(name: &str, n: u8) -> Peer {
        Peer {
            name: name.into(),
            public_key: key(n),
            allowed_ips: vec![
                format!("10.77.0.{n}/32").parse().unwrap(),
                format!("fd00::{n}/128").parse().unwrap(),
            ],
            endpoints: vec![],
            public_endpoint: None,
            public: false,
            online: true,
        }
    }

    fn public(name: &str, n: u8, ep: &str) -> Peer {
        Peer {
            public_endpoint: Some(ep.into()),
            public: true,
            ..peer(name, n)
        }
    }

    fn lan(name: &str, n: u8, eps: &[&str]) -> Peer {
        Peer {
            endpoints: eps.iter().map(|e| sa(e)).collect(),
            ..peer(name, n)
        }
    }

    fn ips(n: u8) -> Vec<Prefix> {
        vec![
            format!("10.77.0.{n}/32").parse().unwrap(),
            format!("fd00::{n}/128").parse().unwrap(),
        ]
    }

    struct World {
        peers: Vec<Peer>,
        own: Vec<IpAddr>,
        public_claim: bool,
        resolved: BTreeMap<String, SocketAddr>,
        device: WgDevice,
        probes: BTreeMap<PublicKey, Probe>,
        now: u64,
    }

    impl World {
        fn new(peers: Vec<Peer>) -> World {
            let resolved = peers
                .iter()
                .filter_map(|p| p.public_endpoint.clone())
                .filter_map(|e| e.parse().ok().map(|a| (e, a)))
                .collect();
            World {
                peers,
                own: vec!["10.0.2.15".parse().unwrap()],
                public_claim: false,
                resolved,
                device: WgDevice {
                    ifindex: 7,
                    public_key: Some([1; 32]),
                    listen_port: 51820,
                    peers: vec![],
                },
                probes: BTreeMap::new(),
                now: 1000,
            }
        }

        fn plan(&self) -> Plan {
            plan(&Inputs {
                peers: &self.peers,
                own_addrs: &self.own,
                public_claim: self.public_claim,
                keepalive: 25,
                resolved: &self.resolved,
                device: &self.device,
                probes: &self.probes,
                now: self.now,
                probe_window: PROBE_WINDOW_SECS,
            })
        }

        /// Plans and applies the ops to the fake device the way the kernel would.
        fn step(&mut self) -> Plan {
            let p = self.plan();
            apply(&mut self.device, &p.ops);
            self.probes = p.probes.clone();
            p
        }

        fn handshake(&mut self, n: u8, from: Option<&str>) {
            let now = self.now;
            let k = self
                .device
                .peers
                .iter_mut()
                .find(|p| p.public_key == [n; 32])
                .unwrap();
            k.last_handshake = Some(now);
            if let Some(f) = from {
                k.endpoint = Some(sa(f));
            }
        }
    }

    fn path_of(p: &Plan, name: &str) -> Path {
        p.status
            .iter()
            .find(|s| s.name == name)
            .unwrap()
            .path
            .clone()
    }

    /// What WG_CMD_SET_DEVICE does with the ops (the kernel's semantics: an allowed IP
    /// moves to the last peer that claims it).
    fn apply(dev: &mut WgDevice, ops: &[PeerOp]) {
        for op in ops {
            match op {
                PeerOp::Remove(k) => dev.peers.retain(|p| &p.public_key != k),
                PeerOp::Upsert(w) => {
                    for other in dev.peers.iter_mut() {
                        if other.public_key != w.public_key {
                            other.allowed_ips.retain(|ip| !w.allowed_ips.contains(ip));
                        }
                    }
                    match dev.peers.iter_mut().find(|p| p.public_key == w.public_key) {
                        Some(p) => {
                            p.allowed_ips = w.allowed_ips.clone();
                            p.keepalive = w.keepalive;
                            if w.endpoint.is_some() {
                                p.endpoint = w.endpoint;
                            }
                        }
                        None => dev.peers.push(WgPeerState {
                            public_key: w.public_key,
                            endpoint: w.endpoint,
                            allowed_ips: w.allowed_ips.clone(),
                            last_handshake: None,
                            rx_bytes: 0,
                            tx_bytes: 0,
                            keepalive: w.keepalive,
                        }),
                    }
                }
            }
        }
    }

    fn no_overlaps(dev: &WgDevice) {
        let mut seen = BTreeSet::new();
        for p in &dev.peers {
            for ip in &p.allowed_ips {
                assert!(seen.insert(*ip), "{ip} on two peers: {dev:?}");
            }
        }
    }

    #[test]
    fn public_peers_are_direct_and_nothing_churns() {
        let mut w = World::new(vec![public("r", 2, "198.51.100.2:51820"), peer("x", 3)]);
        let p = w.step();
        assert_eq!(path_of(&p, "r"), Path::Direct(sa("198.51.100.2:51820")));
        assert_eq!(path_of(&p, "x"), Path::Relay("r".into()));
        assert_eq!(p.ops.len(), 1);
        let PeerOp::Upsert(r) = &p.ops[0] else {
            panic!("{:?}", p.ops)
        };
        assert_eq!(r.endpoint, Some(sa("198.51.100.2:51820")));
        assert_eq!(r.keepalive, 25);
        assert_eq!(sorted(&r.allowed_ips), sorted(&[ips(2), ips(3)].concat()));
        w.now += 2;
        assert_eq!(w.step().ops, vec![], "a second plan changes nothing");
        // A working endpoint the kernel learned is kept.
        w.handshake(2, Some("198.51.100.2:40000"));
        w.now += 2;
        assert_eq!(w.step().ops, vec![]);
    }

    #[test]
    fn a_public_node_is_passive_and_sends_no_keepalives() {
        let mut w = World::new(vec![
            lan("a", 3, &["192.168.1.3:51820"]),
            public("b", 4, "203.0.113.4:51820"),
        ]);
        w.public_claim = true;
        let p = w.step();
        assert_eq!(path_of(&p, "a"), Path::Passive);
        assert_eq!(path_of(&p, "b"), Path::Direct(sa("203.0.113.4:51820")));
        for op in &p.ops {
            let PeerOp::Upsert(u) = op else { panic!() };
            assert_eq!(u.keepalive, 0);
            if u.public_key == [3; 32] {
                assert_eq!(u.endpoint, None, "never an endpoint for a passive peer");
                assert_eq!(u.allowed_ips, ips(3));
            }
        }
        // The peer comes in from behind its NAT; the plan leaves that alone.
        w.handshake(3, Some("198.51.100.9:61000"));
        w.now += 300;
        assert_eq!(w.step().ops, vec![]);
        assert_eq!(w.device.peers[0].endpoint, Some(sa("198.51.100.9:61000")));
    }

    #[test]
    fn lan_probe_goes_direct_on_handshake_and_stays_while_fresh() {
        let mut w = World::new(vec![lan(
            "b",
            3,
            &["10.0.2.15:51820", "192.168.1.3:51820", "192.168.2.3:51820"],
        )]);
        let p = w.step();
        // Our own address is skipped: every QEMU NAT guest is 10.0.2.15.
        assert_eq!(
            path_of(&p, "b"),
            Path::Probing(sa("192.168.1.3:51820"), 1000)
        );
        assert_eq!(w.device.peers[0].endpoint, Some(sa("192.168.1.3:51820")));
        assert_eq!(w.device.peers[0].keepalive, 25);
        w.now += 5;
        assert_eq!(w.step().ops, vec![], "inside the window nothing changes");
        w.handshake(3, None);
        w.now += 1;
        let p = w.step();
        assert_eq!(path_of(&p, "b"), Path::Direct(sa("192.168.1.3:51820")));
        assert_eq!(p.ops, vec![]);
        // Handshakes keep coming: stays direct long after the window.
        for _ in 0..10 {
            w.now += 100;
            w.handshake(3, None);
            assert_eq!(
                path_of(&w.step(), "b"),
                Path::Direct(sa("192.168.1.3:51820"))
            );
        }
        // They stop: probing starts over at the same candidate.
        w.now += HANDSHAKE_FRESH_SECS + 1;
        let p = w.step();
        assert_eq!(
            path_of(&p, "b"),
            Path::Probing(sa("192.168.1.3:51820"), w.now)
        );
    }

    #[test]
    fn an_old_handshake_does_not_end_a_probe() {
        let mut w = World::new(vec![lan("b", 3, &["192.168.1.3:51820"])]);
        w.step();
        w.device.peers[0].last_handshake = Some(900);
        w.now += 3;
        assert!(matches!(path_of(&w.step(), "b"), Path::Probing(..)));
    }

    #[test]
    fn failed_probes_fall_back_to_the_first_public_online_relay() {
        let mut w = World::new(vec![
            public("z-relay", 9, "203.0.113.9:51820"),
            public("m-relay", 5, "203.0.113.5:51820"),
            Peer {
                online: false,
                ..public("a-offline", 2, "203.0.113.2:51820")
            },
            lan("b", 3, &["192.168.1.3:51820", "192.168.2.3:51820"]),
        ]);
        w.step();
        w.now += PROBE_WINDOW_SECS;
        let p = w.step();
        assert_eq!(
            path_of(&p, "b"),
            Path::Probing(sa("192.168.2.3:51820"), w.now)
        );
        assert_eq!(
            w.device
                .peers
                .iter()
                .find(|k| k.public_key == [3; 32])
                .unwrap()
                .endpoint,
            Some(sa("192.168.2.3:51820"))
        );
        w.now += PROBE_WINDOW_SECS;
        let p = w.step();
        assert_eq!(path_of(&p, "b"), Path::Relay("m-relay".into()));
        assert!(p.ops.contains(&PeerOp::Remove([3; 32])), "{:?}", p.ops);
        let relay = w
            .device
            .peers
            .iter()
            .find(|k| k.public_key == [5; 32])
            .unwrap();
        assert_eq!(
            sorted(&relay.allowed_ips),
            sorted(&[ips(5), ips(3)].concat())
        );
        assert!(w.device.peers.iter().all(|k| k.public_key != [3; 32]));
        no_overlaps(&w.device);
        // Relayed is stable.
        w.now += 600;
        assert_eq!(w.step().ops, vec![]);
        // The relay goes offline: the next one takes over.
        w.peers[1].online = false;
        let p = w.step();
        assert_eq!(path_of(&p, "b"), Path::Relay("z-relay".into()));
        let relay = w
            .device
            .peers
            .iter()
            .find(|k| k.public_key == [9; 32])
            .unwrap();
        assert_eq!(
            sorted(&relay.allowed_ips),
            sorted(&[ips(9), ips(3)].concat())
        );
        let old = w
            .device
            .peers
            .iter()
            .find(|k| k.public_key == [5; 32])
            .unwrap();
        assert_eq!(old.allowed_ips, ips(5));
        no_overlaps(&w.device);
    }

    #[test]
    fn without_a_relay_probing_goes_round_robin() {
        let mut w = World::new(vec![lan("b", 3, &["192.168.1.3:1", "192.168.2.3:2"])]);
        let mut seen = Vec::new();
        for _ in 0..5 {
            let p = w.step();
            let Path::Probing(e, _) = path_of(&p, "b") else {
                panic!()
            };
            seen.push(e.port());
            w.now += PROBE_WINDOW_SECS;
        }
        assert_eq!(seen, [1, 2, 1, 2, 1]);
    }

    #[test]
    fn peers_without_any_endpoint() {
        let w = World::new(vec![peer("b", 3)]);
        let p = w.plan();
        assert_eq!(path_of(&p, "b"), Path::Unreachable);
        // Still configured (it may reach us), without an endpoint.
        let PeerOp::Upsert(u) = &p.ops[0] else {
            panic!()
        };
        assert_eq!((u.endpoint, u.allowed_ips.clone()), (None, ips(3)));
        let w = World::new(vec![peer("b", 3), public("r", 4, "203.0.113.4:1")]);
        assert_eq!(path_of(&w.plan(), "b"), Path::Relay("r".into()));
    }

    #[test]
    fn new_candidates_start_a_new_probe_even_when_relayed() {
        let mut w = World::new(vec![
            public("r", 4, "203.0.113.4:1"),
            lan("b", 3, &["192.168.1.3:1"]),
        ]);
        w.step();
        w.now += PROBE_WINDOW_SECS;
        assert_eq!(path_of(&w.step(), "b"), Path::Relay("r".into()));
        w.peers[1].endpoints = vec![sa("192.168.7.3:1")];
        w.now += 1;
        let p = w.step();
        assert_eq!(path_of(&p, "b"), Path::Probing(sa("192.168.7.3:1"), w.now));
        let relay = w
            .device
            .peers
            .iter()
            .find(|k| k.public_key == [4; 32])
            .unwrap();
        assert_eq!(
            relay.allowed_ips,
            ips(4),
            "the relay gives the addresses back"
        );
        no_overlaps(&w.device);
    }

    #[test]
    fn revoked_peers_are_removed() {
        let mut w = World::new(vec![public("r", 4, "203.0.113.4:1"), peer("b", 3)]);
        w.step();
        w.peers.retain(|p| p.name != "r");
        let p = w.step();
        assert_eq!(p.ops[0], PeerOp::Remove([4; 32]));
        assert_eq!(path_of(&p, "b"), Path::Unreachable);
        w.peers.clear();
        let p = w.step();
        assert_eq!(p.ops, vec![PeerOp::Remove([3; 32])]);
        assert!(w.device.peers.is_empty());
    }

    #[test]
    fn unresolved_public_claims_are_treated_like_lan_peers() {
        let mut w = World::new(vec![Peer {
            endpoints: vec![sa("192.168.1.3:1")],
            ..public("b", 3, "b.example.org:51820")
        }]);
        w.resolved.clear();
        assert!(matches!(path_of(&w.plan(), "b"), Path::Probing(..)));
        w.resolved
            .insert("b.example.org:51820".into(), sa("203.0.113.3:51820"));
        assert_eq!(
            path_of(&w.plan(), "b"),
            Path::Direct(sa("203.0.113.3:51820"))
        );
    }

    #[test]
    fn keepalive_and_allowed_ip_changes_are_upserts_without_endpoint_churn() {
        let mut w = World::new(vec![public("r", 4, "203.0.113.4:1")]);
        w.step();
        w.handshake(4, None);
        w.device.peers[0].keepalive = 0;
        let p = w.step();
        let PeerOp::Upsert(u) = &p.ops[0] else {
            panic!()
        };
        assert_eq!((u.keepalive, u.endpoint), (25, None));
        // Stale handshake and a different kernel endpoint: the claim is set again.
        w.device.peers[0].endpoint = Some(sa("192.0.2.1:9"));
        w.now += HANDSHAKE_FRESH_SECS + 1;
        let p = w.step();
        let PeerOp::Upsert(u) = &p.ops[0] else {
            panic!()
        };
        assert_eq!(u.endpoint, Some(sa("203.0.113.4:1")));
    }

    #[test]
    fn paths_print_and_compare() {
        assert_eq!(
            Path::Direct(sa("192.0.2.1:5")).to_string(),
            "direct 192.0.2.1:5"
        );
        assert_eq!(Path::Relay("r".into()).to_string(), "via r");
        assert_eq!(Path::Passive.to_string(), "passive");
        assert!(
            Path::Probing(sa("192.0.2.1:5"), 1).same_route(&Path::Probing(sa("192.0.2.1:5"), 9))
        );
        assert!(!Path::Probing(sa("192.0.2.1:5"), 1).same_route(&Path::Direct(sa("192.0.2.1:5"))));
    }
}
