//! Keeping kiln0 in step with the plan: each peer's path from the peer list and the
//! kernel's view, the WireGuard changes that get there, the first handshakes started at
//! once, and the status file for `overlay status`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::validate;

use super::mesh::Mesh;
use super::plan::{self, Path, PROBE_WINDOW_SECS};
use super::run::{INITIATE_EVERY, INITIATE_SECS};
use super::state;
use super::{error, say, OverlaySys, IFNAME, TAG};
use crate::netlink::{Net, PeerOp, WgDevice};
use crate::sys::prefer_ipv4;

/// How long a resolved public endpoint name is used before resolving it again.
pub const RESOLVE_TTL_SECS: u64 = 300;

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
                let a = validate::parse_host_port(&text)
                    .ok()
                    .and_then(|(h, p)| prefer_ipv4(&sys.resolve(&h, p).ok()?));
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
        if let Err(f) = state::save_status(sys, &mesh.status()) {
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
