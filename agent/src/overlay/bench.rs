//! `kiln-agent overlay bench-apply --peers N [--wg-conf FILE]`: how long the overlay takes
//! to put an N-peer list into the kernel, for `make bench` (BENCHMARKS.md).
//!
//! The peers are synthetic and deterministic (keys from sha256 of their index, overlay
//! addresses counted up from 10.77.0.2, public endpoints in 198.18.0.0/15, the range set
//! aside for benchmarks), and they go through the daemon's own steps: the list check
//! (`validate::peers`), [`plan::plan`], one [`Net::set_wireguard`], then a read back
//! that must show every peer. The interface is `kilnbench0`, never kiln0, and it is
//! never brought up, so no packet leaves for those endpoints; it stays afterwards for
//! `wg show kilnbench0`. `--wg-conf` writes the same device as a `wg setconf` file: the
//! floor the bench measures against.

use crate::flags::Flags;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kiln_enroll_proto::api::{NodeInfo, Peer, PeerList};
use kiln_enroll_proto::base64;
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::{nth_host, ula_prefix, IpNet};
use kiln_enroll_proto::validate;
use sha2::{Digest, Sha256};

use super::identity::public_of;
use super::plan;
use crate::netlink::{Net, PeerOp, Prefix, RealNet, WgDevice, WgPeer};

/// The interface the benchmark configures.
pub const BENCH_IFNAME: &str = "kilnbench0";
/// Most peers: the /16 pool minus network, broadcast and this node's own address.
pub const MAX_PEERS: usize = 65_533;
/// Persistent keepalive of the synthetic overlay (the server's default).
const KEEPALIVE: u16 = 25;

/// What `bench-apply` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchArgs {
    /// How many peers.
    pub peers: usize,
    /// Where to write the `wg setconf` file, if anywhere.
    pub wg_conf: Option<String>,
}

/// Reads `--peers N [--wg-conf FILE]` (also `--flag=value`).
pub fn parse_args(args: &[String]) -> Result<BenchArgs, String> {
    let mut peers = None;
    let mut wg_conf = None;
    let mut flags = Flags::new(args);
    while let Some((flag, inline)) = flags.next_flag() {
        let mut value = || flags.value(flag, inline.clone());
        match flag {
            "--peers" => {
                let v = value()?;
                let n = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PEERS).contains(n))
                    .ok_or_else(|| format!("--peers {v:?} is not a number 1-{MAX_PEERS}"))?;
                peers = Some(n);
            }
            "--wg-conf" => {
                let v = value()?;
                if v.is_empty() {
                    return Err("--wg-conf needs a file path".to_string());
                }
                wg_conf = Some(v);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(BenchArgs {
        peers: peers.ok_or("--peers N is required")?,
        wg_conf,
    })
}

/// A synthetic overlay: this node and a peer list as kiln-enroll would send it.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// This node's WireGuard private key.
    pub private_key: [u8; 32],
    /// This node (10.77.0.1).
    pub me: NodeInfo,
    /// The overlay's settings.
    pub network: kiln_enroll_proto::api::Network,
    /// The peers.
    pub list: PeerList,
}

fn key_material(label: &str) -> [u8; 32] {
    Sha256::digest(label.as_bytes()).into()
}

fn host(net: &IpNet, offset: u128) -> Result<IpAddr, String> {
    nth_host(net, offset).ok_or_else(|| format!("host {offset} does not fit in {net}"))
}

/// `n` peers: peer i (from 0) is `bench-{i}`, key from sha256("kiln-bench-peer:{i}"),
/// addresses at host offset i + 2 of the pools, public at 198.18.0.0/15 + i + 1, port
/// 51820, online.
pub fn synthetic(n: usize) -> Result<Synthetic, String> {
    if !(1..=MAX_PEERS).contains(&n) {
        return Err(format!("{n} peers: use 1-{MAX_PEERS}"));
    }
    let pool_v4 = IpNet {
        addr: IpAddr::V4(Ipv4Addr::new(10, 77, 0, 0)),
        len: 16,
    };
    // The ULA /48 of an all-zero CA hash, subnet 0.
    let pool_v6 = IpNet {
        len: 64,
        ..ula_prefix(&[0; 32])
    };
    let me = NodeInfo {
        name: "bench-self".to_string(),
        address_v4: IpNet {
            addr: host(&pool_v4, 1)?,
            len: 16,
        },
        address_v6: IpNet {
            addr: host(&pool_v6, 1)?,
            len: 64,
        },
    };
    let endpoints = IpNet {
        addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)),
        len: 15,
    };
    let mut peers = Vec::with_capacity(n);
    for i in 0..n {
        let offset = i as u128 + 2;
        let endpoint = SocketAddr::new(host(&endpoints, i as u128 + 1)?, 51820);
        peers.push(Peer {
            name: format!("bench-{i:05}"),
            public_key: public_of(&key_material(&format!("kiln-bench-peer:{i}"))),
            allowed_ips: vec![
                IpNet::host(host(&pool_v4, offset)?),
                IpNet::host(host(&pool_v6, offset)?),
            ],
            endpoints: Vec::new(),
            public_endpoint: Some(endpoint.to_string()),
            public: true,
            online: true,
        });
    }
    Ok(Synthetic {
        private_key: key_material("kiln-bench-self"),
        me,
        network: kiln_enroll_proto::api::Network {
            pool_v4,
            pool_v6,
            mtu: 1420,
            keepalive_secs: KEEPALIVE,
        },
        list: PeerList { version: 1, peers },
    })
}

/// What the daemon does with a new list before touching the kernel: check it, resolve
/// the public endpoints (all literal here), plan against the device.
pub fn plan_for(s: &Synthetic, device: &WgDevice, now: u64) -> Result<plan::Plan, String> {
    let own_key = public_of(&s.private_key);
    let checked = validate::peers(&s.list, &own_key, &s.me, &s.network);
    if let Some(d) = checked.dropped.first() {
        return Err(format!(
            "the synthetic list has {} bad entries, the first: {d}",
            checked.dropped.len()
        ));
    }
    let resolved: BTreeMap<String, SocketAddr> = checked
        .peers
        .iter()
        .filter_map(|p| {
            let text = p.public_endpoint.clone()?;
            let addr = text.parse().ok()?;
            Some((text, addr))
        })
        .collect();
    Ok(plan::plan(&plan::Inputs {
        peers: &checked.peers,
        own_addrs: &[],
        public_claim: false,
        keepalive: s.network.keepalive_secs,
        resolved: &resolved,
        device,
        probes: &BTreeMap::new(),
        now,
        probe_window: plan::PROBE_WINDOW_SECS,
    }))
}

fn prefixes(ips: &[Prefix]) -> String {
    let mut v = ips.to_vec();
    v.sort();
    v.iter()
        .map(Prefix::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The device as a `wg setconf` file (no ListenPort: the kernel picks one, as for
/// [`BENCH_IFNAME`]).
pub fn wg_conf(private_key: &[u8; 32], desired: &BTreeMap<PublicKey, WgPeer>) -> String {
    let mut out = format!(
        "[Interface]\nPrivateKey = {}\n",
        base64::encode(private_key)
    );
    for p in desired.values() {
        out.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
            base64::encode(&p.public_key),
            prefixes(&p.allowed_ips)
        ));
        if let Some(e) = p.endpoint {
            out.push_str(&format!("Endpoint = {e}\n"));
        }
        if p.keepalive != 0 {
            out.push_str(&format!("PersistentKeepalive = {}\n", p.keepalive));
        }
    }
    out
}

/// Whether the kernel's device holds exactly the desired peers (keys, allowed IPs,
/// endpoints, keepalive); the error names the first differences.
pub fn check_readback(
    device: &WgDevice,
    desired: &BTreeMap<PublicKey, WgPeer>,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if device.peers.len() != desired.len() {
        problems.push(format!(
            "{} peers instead of {}",
            device.peers.len(),
            desired.len()
        ));
    }
    for (key, want) in desired {
        let Some(have) = device.peers.iter().find(|p| p.public_key == key.0) else {
            problems.push(format!("peer {key} missing"));
            continue;
        };
        if prefixes(&have.allowed_ips) != prefixes(&want.allowed_ips) {
            problems.push(format!(
                "peer {key}: allowed IPs {} instead of {}",
                prefixes(&have.allowed_ips),
                prefixes(&want.allowed_ips)
            ));
        }
        if have.endpoint != want.endpoint {
            problems.push(format!(
                "peer {key}: endpoint {:?} instead of {:?}",
                have.endpoint, want.endpoint
            ));
        }
        if have.keepalive != want.keepalive {
            problems.push(format!(
                "peer {key}: keepalive {} instead of {}",
                have.keepalive, want.keepalive
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let more = problems.len().saturating_sub(5);
    problems.truncate(5);
    let mut text = format!("{BENCH_IFNAME} reads back wrong: {}", problems.join("; "));
    if more > 0 {
        text.push_str(&format!(" (and {more} more)"));
    }
    Err(text)
}

/// The three timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// List check and plan.
    pub plan: Duration,
    /// The WireGuard set (every message of it).
    pub apply: Duration,
    /// Reading the device back and comparing.
    pub readback: Duration,
}

/// `kiln-bench-apply: peers=N plan_ms=… apply_ms=… readback_ms=…`.
pub fn report_line(peers: usize, t: &Timings) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "kiln-bench-apply: peers={peers} plan_ms={:.1} apply_ms={:.1} readback_ms={:.1}",
        ms(t.plan),
        ms(t.apply),
        ms(t.readback)
    )
}

/// Creates [`BENCH_IFNAME`] (emptied first if an earlier run left peers), then times the
/// plan, the apply and the read back. Returns the timings and the `wg setconf` text.
pub fn run(net: &mut dyn Net, s: &Synthetic, now: u64) -> Result<(Timings, String), String> {
    let fail = |e: crate::netlink::NetError| format!("{BENCH_IFNAME}: {e}");
    net.ensure_wireguard(BENCH_IFNAME).map_err(fail)?;
    let before = net.wireguard(BENCH_IFNAME).map_err(fail)?;
    if !before.peers.is_empty() {
        let clear: Vec<PeerOp> = before
            .peers
            .iter()
            .map(|p| PeerOp::Remove(p.public_key))
            .collect();
        net.set_wireguard(BENCH_IFNAME, &s.private_key, 0, &clear)
            .map_err(fail)?;
    }
    let device = net.wireguard(BENCH_IFNAME).map_err(fail)?;

    let t0 = Instant::now();
    let p = plan_for(s, &device, now)?;
    let t1 = Instant::now();
    net.set_wireguard(BENCH_IFNAME, &s.private_key, 0, &p.ops)
        .map_err(fail)?;
    let t2 = Instant::now();
    let after = net.wireguard(BENCH_IFNAME).map_err(fail)?;
    check_readback(&after, &p.desired)?;
    let t3 = Instant::now();
    let timings = Timings {
        plan: t1 - t0,
        apply: t2 - t1,
        readback: t3 - t2,
    };
    Ok((timings, wg_conf(&s.private_key, &p.desired)))
}

const USAGE: &str = "kiln-agent overlay bench-apply --peers N [--wg-conf FILE]";

/// `kiln-agent overlay bench-apply ...`: 0 done, 1 failed, 2 bad arguments.
pub fn main(args: &[String]) -> u8 {
    let a = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kiln-agent overlay bench-apply: {e}\nusage: {USAGE}");
            return 2;
        }
    };
    let result = synthetic(a.peers).and_then(|s| {
        let mut net = RealNet::new().map_err(|e| format!("netlink: {e}"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        run(&mut net, &s, now)
    });
    match result {
        Ok((t, conf)) => {
            if let Some(path) = &a.wg_conf {
                if let Err(e) = std::fs::write(path, conf) {
                    eprintln!("kiln-agent overlay bench-apply: writing {path}: {e}");
                    return 1;
                }
            }
            println!("{}", report_line(a.peers, &t));
            0
        }
        Err(e) => {
            eprintln!("kiln-agent overlay bench-apply: ERROR: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::WgPeerState;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn arguments() {
        assert_eq!(
            parse_args(&args(&["--peers", "1000", "--wg-conf=/tmp/x.conf"])).unwrap(),
            BenchArgs {
                peers: 1000,
                wg_conf: Some("/tmp/x.conf".into())
            }
        );
        for (bad, want) in [
            (vec![], "--peers N is required"),
            (vec!["--peers", "0"], "1-65533"),
            (vec!["--peers", "65534"], "1-65533"),
            (vec!["--peers"], "needs a value"),
            (vec!["--peers", "3", "--x"], "unknown argument \"--x\""),
        ] {
            let e = parse_args(&args(&bad)).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_synthetic_list_passes_the_daemons_check_and_is_deterministic() {
        let s = synthetic(300).unwrap();
        assert_eq!(s.list.peers.len(), 300);
        let again = synthetic(300).unwrap();
        assert_eq!(s.list, again.list);
        let own = public_of(&s.private_key);
        let checked = validate::peers(&s.list, &own, &s.me, &s.network);
        assert!(checked.dropped.is_empty(), "{:?}", checked.dropped);
        assert_eq!(checked.peers.len(), 300);
        let last = &s.list.peers[299];
        assert_eq!(last.allowed_ips[0].to_string(), "10.77.1.45/32");
        assert_eq!(last.public_endpoint.as_deref(), Some("198.18.1.44:51820"));
        // Peer MAX_PEERS - 1 would be host 10.77.255.254; one more is the broadcast.
        assert!(synthetic(MAX_PEERS + 1).is_err());
        assert!(synthetic(0).is_err());
    }

    fn empty_device() -> WgDevice {
        WgDevice {
            ifindex: 7,
            public_key: None,
            listen_port: 0,
            peers: Vec::new(),
        }
    }

    fn as_kernel(desired: &BTreeMap<PublicKey, WgPeer>) -> WgDevice {
        WgDevice {
            peers: desired
                .values()
                .map(|p| WgPeerState {
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.iter().rev().copied().collect(),
                    last_handshake: None,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    keepalive: p.keepalive,
                })
                .collect(),
            ..empty_device()
        }
    }

    #[test]
    fn every_peer_is_direct_to_its_endpoint_and_the_read_back_check_catches_differences() {
        let s = synthetic(50).unwrap();
        let p = plan_for(&s, &empty_device(), 1_000).unwrap();
        assert_eq!(p.ops.len(), 50);
        assert!(p
            .status
            .iter()
            .all(|st| matches!(st.path, plan::Path::Direct(_))));
        // Order of allowed IPs does not matter; the set does.
        let mut kernel = as_kernel(&p.desired);
        check_readback(&kernel, &p.desired).unwrap();
        kernel.peers[3].keepalive = 0;
        kernel.peers.pop();
        let e = check_readback(&kernel, &p.desired).unwrap_err();
        assert!(
            e.contains("49 peers instead of 50")
                && e.contains("missing")
                && e.contains("keepalive 0"),
            "{e}"
        );
        // Planned against the full device, nothing is left to do.
        assert!(plan_for(&s, &as_kernel(&p.desired), 1_000)
            .unwrap()
            .ops
            .is_empty());
    }

    #[test]
    fn the_wg_conf_matches_what_wg_reads() {
        let s = synthetic(2).unwrap();
        let p = plan_for(&s, &empty_device(), 1).unwrap();
        let conf = wg_conf(&s.private_key, &p.desired);
        assert!(conf.starts_with("[Interface]\nPrivateKey = "), "{conf}");
        assert_eq!(conf.matches("[Peer]").count(), 2);
        assert!(conf.contains("Endpoint = 198.18.0.1:51820\n"), "{conf}");
        assert!(conf.contains("PersistentKeepalive = 25\n"), "{conf}");
        assert!(conf.contains("AllowedIPs = 10.77.0.2/32, fd"), "{conf}");
        // The independent referee: `wg pubkey` derives the same public key as the list.
        let Ok(mut child) = std::process::Command::new("wg")
            .arg("pubkey")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return; // wireguard-tools not installed here
        };
        use std::io::Write;
        let peer_private = key_material("kiln-bench-peer:0");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(base64::encode(&peer_private).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let from_wg = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            from_wg.trim(),
            base64::encode(&s.list.peers[0].public_key.0)
        );
    }
}
