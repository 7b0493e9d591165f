//! The checks a node makes on what a server tells it, before any of it reaches the
//! kernel: a confused or hostile server must not be able to route the node's own
//! addresses, the whole Internet (`0.0.0.0/0`) or another peer's addresses somewhere else.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::api::{
    EnrollAnswer, Join, K3sJoin, KubeadmJoin, Network, NodeInfo, Peer, PeerList, Role,
};
use crate::key::PublicKey;
use crate::net::IpNet;

/// Smallest overlay MTU a node accepts (IPv6 needs 1280).
pub const MIN_MTU: u16 = 1280;

/// Checks the parts of an answer that the whole overlay stands on; any problem refuses the
/// answer. Peers are checked separately by [`peers`].
pub fn answer(a: &EnrollAnswer) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    network(&a.network, &mut errs);
    node(&a.node, &a.network, &mut errs);
    if a.heartbeat_secs == 0 || a.heartbeat_secs > 3600 {
        errs.push(format!(
            "heartbeat_secs {} is outside 1..=3600",
            a.heartbeat_secs
        ));
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn network(n: &Network, errs: &mut Vec<String>) {
    if !n.pool_v4.addr.is_ipv4() || n.pool_v4.len < 8 || n.pool_v4.len > 30 {
        errs.push(format!(
            "network.pool_v4 {} is not an IPv4 prefix between /8 and /30",
            n.pool_v4
        ));
    }
    if n.pool_v6.addr.is_ipv4() || n.pool_v6.len < 48 || n.pool_v6.len > 120 {
        errs.push(format!(
            "network.pool_v6 {} is not an IPv6 prefix between /48 and /120",
            n.pool_v6
        ));
    }
    if n.mtu < MIN_MTU || n.mtu > 9000 {
        errs.push(format!("network.mtu {} is outside {MIN_MTU}..=9000", n.mtu));
    }
    if n.keepalive_secs > 3600 {
        errs.push(format!(
            "network.keepalive_secs {} is longer than an hour",
            n.keepalive_secs
        ));
    }
}

fn node(me: &NodeInfo, n: &Network, errs: &mut Vec<String>) {
    if !n.pool_v4.contains(me.address_v4.addr) || me.address_v4.len != n.pool_v4.len {
        errs.push(format!(
            "node.address_v4 {} is not an address of the pool {}",
            me.address_v4, n.pool_v4
        ));
    }
    if !n.pool_v6.contains(me.address_v6.addr) || me.address_v6.len != n.pool_v6.len {
        errs.push(format!(
            "node.address_v6 {} is not an address of the pool {}",
            me.address_v6, n.pool_v6
        ));
    }
    for a in [me.address_v4, me.address_v6] {
        if a.network().addr == a.addr {
            errs.push(format!("node address {a} is its network's own address"));
        }
    }
    if me.name.is_empty() || me.name.len() > 63 {
        errs.push(format!("node.name {:?} is not 1-63 characters", me.name));
    }
}

/// A peer list with the entries a node can use, and one message per entry it dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedPeers {
    /// Usable peers (the node itself left out), in the server's order.
    pub peers: Vec<Peer>,
    /// Why each dropped entry was dropped (names the peer and the field).
    pub dropped: Vec<String>,
}

/// Keeps the peers a node may configure: allowed IPs inside the pools, not a default
/// route, not the node's own addresses, not claimed by an earlier peer; a public key
/// that is not the node's own and not seen before. A bad entry is dropped with a message,
/// not the whole list, so one broken record cannot cut a node off from the rest.
pub fn peers(list: &PeerList, own_key: &PublicKey, me: &NodeInfo, net: &Network) -> CheckedPeers {
    let mut out = CheckedPeers {
        peers: Vec::new(),
        dropped: Vec::new(),
    };
    let own: [IpNet; 2] = [
        IpNet::host(me.address_v4.addr),
        IpNet::host(me.address_v6.addr),
    ];
    let mut keys: BTreeSet<PublicKey> = BTreeSet::new();
    let mut taken: Vec<IpNet> = Vec::new();
    for p in &list.peers {
        if &p.public_key == own_key {
            continue;
        }
        match check_peer(p, &own, &taken, &keys, net) {
            Ok(()) => {
                keys.insert(p.public_key);
                taken.extend(p.allowed_ips.iter().copied());
                out.peers.push(p.clone());
            }
            Err(why) => out
                .dropped
                .push(format!("peer {:?} ({}): {why}", p.name, p.public_key)),
        }
    }
    out
}

fn check_peer(
    p: &Peer,
    own: &[IpNet; 2],
    taken: &[IpNet],
    keys: &BTreeSet<PublicKey>,
    net: &Network,
) -> Result<(), String> {
    if keys.contains(&p.public_key) {
        return Err("public_key appears twice in the list".to_string());
    }
    if p.allowed_ips.is_empty() {
        return Err("allowed_ips is empty".to_string());
    }
    for ip in &p.allowed_ips {
        if ip.is_default() {
            return Err(format!(
                "allowed_ips contains the default route {ip}: refused (it would send all \
                 traffic to this peer)"
            ));
        }
        let pool = if ip.addr.is_ipv4() {
            net.pool_v4
        } else {
            net.pool_v6
        };
        if !pool.contains(ip.addr) || ip.len < pool.len {
            return Err(format!(
                "allowed_ips {ip} is not inside the overlay pool {pool}"
            ));
        }
        if let Some(o) = own.iter().find(|o| o.overlaps(ip)) {
            return Err(format!(
                "allowed_ips {ip} overlaps this node's own address {}",
                o.addr
            ));
        }
        if let Some(t) = taken.iter().find(|t| t.overlaps(ip)) {
            return Err(format!("allowed_ips {ip} overlaps {t} of an earlier peer"));
        }
    }
    if let Some(e) = &p.public_endpoint {
        parse_host_port(e).map_err(|why| format!("public_endpoint {e:?}: {why}"))?;
    }
    Ok(())
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals); the host is not resolved here.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or("an IPv6 endpoint is written [address]:port")?;
        h.parse::<IpAddr>()
            .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
        (h, p)
    } else {
        text.rsplit_once(':').ok_or("missing :port")?
    };
    if host.is_empty() || host.len() > 253 {
        return Err("the host is empty or longer than 253 characters".to_string());
    }
    if !host.starts_with(|c: char| c.is_ascii_alphanumeric())
        || host
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':')))
    {
        return Err(format!("{host:?} is not a hostname or IP address"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port {port:?} is not a number 1-65535"))?;
    if port == 0 {
        return Err("port 0 is not a port a peer can send to".to_string());
    }
    Ok((host.to_string(), port))
}

/// Longest join secret (k3s token, agent token) accepted.
pub const MAX_SECRET_LEN: usize = 512;

/// A join parameter a node refuses: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinError {
    /// The field, as named in the JSON (`k3s.server_url`, `kubeadm.token`, ...).
    pub field: &'static str,
    /// What is wrong with it (never the secret itself).
    pub message: String,
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cluster join parameter {}: {} (fix `kiln-enroll cluster init` on the server)",
            self.field, self.message
        )
    }
}

impl std::error::Error for JoinError {}

/// Checks join parameters before a node writes any of them into a k3s or kubeadm config:
/// the URL is `https://host:port`, secrets are printable without blanks, kubeadm's token,
/// CA hashes and certificate key have their formats, and the shape fits `role` (a worker
/// never starts a cluster, never gets the agent token or a certificate key; a server
/// always gets the agent token).
pub fn validate_join(join: &Join, role: Role) -> Result<(), JoinError> {
    match join {
        Join::K3s(k) => k3s(k, role),
        Join::Kubeadm(k) => kubeadm(k, role),
    }
}

fn bad(field: &'static str, message: impl Into<String>) -> JoinError {
    JoinError {
        field,
        message: message.into(),
    }
}

fn k3s(k: &K3sJoin, role: Role) -> Result<(), JoinError> {
    if let Some(url) = &k.server_url {
        https_url(url).map_err(|m| bad("k3s.server_url", m))?;
    }
    secret(&k.token).map_err(|m| bad("k3s.token", m))?;
    if let Some(a) = &k.agent_token {
        secret(a).map_err(|m| bad("k3s.agent_token", m))?;
    }
    if k.init && k.server_url.is_some() {
        return Err(bad(
            "k3s.init",
            "true together with a server_url: a node either starts the cluster or joins one",
        ));
    }
    match role {
        Role::Worker => {
            if k.init {
                return Err(bad(
                    "k3s.init",
                    "true for a worker: only servers start a cluster",
                ));
            }
            if k.agent_token.is_some() {
                return Err(bad(
                    "k3s.agent_token",
                    "given to a worker: only servers need it",
                ));
            }
        }
        Role::Server => {
            if k.agent_token.is_none() {
                return Err(bad(
                    "k3s.agent_token",
                    "missing for a server (k3s servers need it to admit agents)",
                ));
            }
        }
    }
    Ok(())
}

fn kubeadm(k: &KubeadmJoin, role: Role) -> Result<(), JoinError> {
    parse_host_port(&k.api_server_endpoint).map_err(|m| {
        bad(
            "kubeadm.api_server_endpoint",
            format!("{:?}: {m}", clip(&k.api_server_endpoint)),
        )
    })?;
    kubeadm_token(&k.token).map_err(|m| bad("kubeadm.token", m))?;
    if k.ca_cert_hashes.is_empty() {
        return Err(bad(
            "kubeadm.ca_cert_hashes",
            "empty: kubeadm needs at least one pin of the cluster CA",
        ));
    }
    for h in &k.ca_cert_hashes {
        ca_cert_hash(h).map_err(|m| bad("kubeadm.ca_cert_hashes", m))?;
    }
    if let Some(c) = &k.certificate_key {
        if role == Role::Worker {
            return Err(bad(
                "kubeadm.certificate_key",
                "given to a worker: only control-plane nodes need it",
            ));
        }
        certificate_key(c).map_err(|m| bad("kubeadm.certificate_key", m))?;
    }
    Ok(())
}

fn clip(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A k3s server URL: `https://host:port` (IPv6 as `[addr]`), nothing after the port
/// but an optional `/`.
pub fn https_url(url: &str) -> Result<(), String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        format!(
            "{:?} does not start with https:// (write https://HOST:6443)",
            clip(url)
        )
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{:?} has a path, query or user part: write just https://HOST:PORT",
            clip(url)
        ));
    }
    parse_host_port(rest).map_err(|m| format!("{:?}: {m} (write https://HOST:PORT)", clip(url)))?;
    Ok(())
}

/// A join secret (k3s token or agent token): 1 to [`MAX_SECRET_LEN`] printable ASCII
/// characters without spaces (it is written into YAML and token files verbatim).
pub fn secret(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("is empty".to_string());
    }
    if text.len() > MAX_SECRET_LEN {
        return Err(format!(
            "is {} characters long, at most {MAX_SECRET_LEN} are accepted",
            text.len()
        ));
    }
    if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
        // The secret is not repeated in the message; the offending character is.
        return Err(format!(
            "contains {c:?}: only printable ASCII without spaces or line breaks is accepted"
        ));
    }
    Ok(())
}

/// A kubeadm bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn kubeadm_token(text: &str) -> Result<(), String> {
    let ok = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    match text.split_once('.') {
        Some((id, secret)) if ok(id, 6) && ok(secret, 16) => Ok(()),
        _ => Err(
            "is not a kubeadm bootstrap token: 6 characters a-z0-9, '.', 16 characters a-z0-9 \
             (as `kubeadm token create` prints, e.g. abcdef.0123456789abcdef)"
                .to_string(),
        ),
    }
}

fn hex64(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A CA public key pin: `sha256:` and 64 hex digits.
pub fn ca_cert_hash(text: &str) -> Result<(), String> {
    match text.strip_prefix("sha256:") {
        Some(h) if hex64(h) => Ok(()),
        _ => Err(format!(
            "{:?} is not sha256:<64 hex digits> (as `kubeadm token create --print-join-command` \
             prints after --discovery-token-ca-cert-hash)",
            clip(text)
        )),
    }
}

/// A kubeadm certificate key: 64 hex digits (a 32-byte AES key).
pub fn certificate_key(text: &str) -> Result<(), String> {
    if hex64(text) {
        Ok(())
    } else {
        Err(format!(
            "is not 64 hex digits ({} characters; `kubeadm init phase upload-certs \
             --upload-certs` prints one)",
            text.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ClusterJoin, Role};

    fn net() -> Network {
        Network {
            pool_v4: "10.77.0.0/16".parse().unwrap(),
            pool_v6: "fd00:1:2::/64".parse().unwrap(),
            mtu: 1420,
            keepalive_secs: 25,
        }
    }

    fn me() -> NodeInfo {
        NodeInfo {
            name: "a".into(),
            address_v4: "10.77.0.1/16".parse().unwrap(),
            address_v6: "fd00:1:2::1/64".parse().unwrap(),
        }
    }

    fn peer(name: &str, key: u8, ips: &[&str]) -> Peer {
        Peer {
            name: name.into(),
            public_key: PublicKey([key; 32]),
            allowed_ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            endpoints: vec![],
            public_endpoint: None,
            public: false,
            online: true,
        }
    }

    #[test]
    fn drops_bad_peers_and_keeps_good_ones() {
        let list = PeerList {
            version: 3,
            peers: vec![
                peer("self", 1, &["10.77.0.1/32"]),
                peer("b", 2, &["10.77.0.2/32", "fd00:1:2::2/128"]),
                peer("all", 3, &["0.0.0.0/0"]),
                peer("steal", 4, &["10.77.0.1/32"]),
                peer("dup", 5, &["10.77.0.2/32"]),
                peer("outside", 6, &["192.168.1.0/24"]),
                peer("wide", 7, &["10.0.0.0/8"]),
                peer("b-again", 2, &["10.77.0.9/32"]),
                peer("none", 8, &[]),
                peer("c", 9, &["10.77.0.3/32"]),
            ],
        };
        let got = peers(&list, &PublicKey([1; 32]), &me(), &net());
        let names: Vec<&str> = got.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        let why = got.dropped.join("\n");
        for want in [
            "\"all\"",
            "default route 0.0.0.0/0",
            "\"steal\"",
            "own address 10.77.0.1",
            "\"dup\"",
            "earlier peer",
            "\"outside\"",
            "not inside the overlay pool",
            "\"wide\"",
            "appears twice",
            "allowed_ips is empty",
        ] {
            assert!(why.contains(want), "missing {want:?} in:\n{why}");
        }
        assert_eq!(got.dropped.len(), 7);
    }

    #[test]
    fn answer_checks_pools_addresses_and_mtu() {
        let mut a = EnrollAnswer {
            node: me(),
            network: net(),
            peers: PeerList {
                version: 1,
                peers: vec![],
            },
            heartbeat_secs: 30,
            cluster: ClusterJoin {
                role: Role::Worker,
                labels: Default::default(),
                join: None,
            },
        };
        assert_eq!(answer(&a), Ok(()));
        a.node.address_v4 = "10.78.0.1/16".parse().unwrap();
        a.network.mtu = 500;
        a.heartbeat_secs = 0;
        let errs = answer(&a).unwrap_err().join("\n");
        assert!(errs.contains("node.address_v4 10.78.0.1/16"), "{errs}");
        assert!(errs.contains("network.mtu 500"), "{errs}");
        assert!(errs.contains("heartbeat_secs 0"), "{errs}");
    }

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("10.0.2.2:40000").unwrap(),
            ("10.0.2.2".into(), 40000)
        );
        assert_eq!(
            parse_host_port("[fd00::1]:51820").unwrap(),
            ("fd00::1".into(), 51820)
        );
        assert_eq!(
            parse_host_port("node.example.org:1").unwrap().0,
            "node.example.org"
        );
        for bad in ["x", "h:0", "h:70000", "[fd00::1:5", ":5", "a b:5", "-x:5"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }

    fn k3s_join(url: Option<&str>, init: bool, agent: Option<&str>) -> Join {
        Join::K3s(K3sJoin {
            server_url: url.map(str::to_string),
            init,
            token: "t0ken-Secret_1".into(),
            agent_token: agent.map(str::to_string),
        })
    }

    fn kubeadm_join(key: Option<&str>) -> KubeadmJoin {
        KubeadmJoin {
            api_server_endpoint: "10.77.0.1:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![format!("sha256:{}", "a1".repeat(32))],
            certificate_key: key.map(str::to_string),
        }
    }

    fn field(j: &Join, role: Role) -> &'static str {
        validate_join(j, role).unwrap_err().field
    }

    #[test]
    fn k3s_joins_fit_their_role() {
        let url = Some("https://10.77.0.1:6443");
        assert_eq!(
            validate_join(&k3s_join(url, false, None), Role::Worker),
            Ok(())
        );
        // A worker before any server exists: no URL, it waits.
        assert_eq!(
            validate_join(&k3s_join(None, false, None), Role::Worker),
            Ok(())
        );
        assert_eq!(
            validate_join(&k3s_join(None, true, Some("a")), Role::Server),
            Ok(())
        );
        assert_eq!(
            validate_join(&k3s_join(url, false, Some("a")), Role::Server),
            Ok(())
        );
        assert_eq!(
            validate_join(
                &k3s_join(Some("https://[fd00::1]:6443/"), false, None),
                Role::Worker
            ),
            Ok(())
        );
        assert_eq!(field(&k3s_join(None, true, None), Role::Worker), "k3s.init");
        assert_eq!(
            field(&k3s_join(url, true, Some("a")), Role::Server),
            "k3s.init"
        );
        assert_eq!(
            field(&k3s_join(url, false, Some("a")), Role::Worker),
            "k3s.agent_token"
        );
        assert_eq!(
            field(&k3s_join(url, false, None), Role::Server),
            "k3s.agent_token"
        );
        for bad_url in [
            "http://10.77.0.1:6443",
            "https://10.77.0.1",
            "https://10.77.0.1:6443/path",
            "https://u@10.77.0.1:6443",
            "https://:6443",
            "https://10.77.0.1:0",
        ] {
            assert_eq!(
                field(&k3s_join(Some(bad_url), false, None), Role::Worker),
                "k3s.server_url",
                "{bad_url}"
            );
        }
        for bad_token in [
            "",
            "a b",
            "a\nb",
            "tab\t",
            "\u{e9}t\u{e9}",
            &"x".repeat(513),
        ] {
            let Join::K3s(mut k) = k3s_join(url, false, None) else {
                unreachable!()
            };
            k.token = bad_token.to_string();
            let e = validate_join(&Join::K3s(k), Role::Worker).unwrap_err();
            assert_eq!(e.field, "k3s.token", "{bad_token:?}");
            if bad_token.len() > 3 && bad_token.len() < 100 {
                assert!(!e.to_string().contains(bad_token), "{e}");
            }
        }
    }

    #[test]
    fn kubeadm_joins_check_formats_and_keep_the_key_from_workers() {
        let key = "0f".repeat(32);
        assert_eq!(
            validate_join(&Join::Kubeadm(kubeadm_join(None)), Role::Worker),
            Ok(())
        );
        assert_eq!(
            validate_join(&Join::Kubeadm(kubeadm_join(Some(&key))), Role::Server),
            Ok(())
        );
        assert_eq!(
            field(&Join::Kubeadm(kubeadm_join(Some(&key))), Role::Worker),
            "kubeadm.certificate_key"
        );
        assert_eq!(
            field(&Join::Kubeadm(kubeadm_join(Some("abc"))), Role::Server),
            "kubeadm.certificate_key"
        );
        type Edit = fn(&mut KubeadmJoin);
        let cases: [(Edit, &str); 7] = [
            (
                |k| k.api_server_endpoint = "10.77.0.1".into(),
                "kubeadm.api_server_endpoint",
            ),
            (
                |k| k.token = "abcdef0123456789abcdef".into(),
                "kubeadm.token",
            ),
            (
                |k| k.token = "ABCDEF.0123456789abcdef".into(),
                "kubeadm.token",
            ),
            (
                |k| k.token = "abcde.0123456789abcdefg".into(),
                "kubeadm.token",
            ),
            (|k| k.ca_cert_hashes.clear(), "kubeadm.ca_cert_hashes"),
            (
                |k| k.ca_cert_hashes.push("sha1:abcd".into()),
                "kubeadm.ca_cert_hashes",
            ),
            (
                |k| k.ca_cert_hashes = vec![format!("sha256:{}", "g".repeat(64))],
                "kubeadm.ca_cert_hashes",
            ),
        ];
        for (edit, want) in cases {
            let mut k = kubeadm_join(None);
            edit(&mut k);
            assert_eq!(field(&Join::Kubeadm(k), Role::Worker), want);
        }
    }
}
