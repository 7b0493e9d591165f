//! `overlay status`: the node and each peer, from the state files and the kernel.

use kiln_enroll_proto::api::Peer;

use super::state;
use super::{error, OverlaySys, ENROLLMENT_PATH, IFNAME, TAG};
use crate::netlink::Net;

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
