//! The store's decisions as pure functions, so that SQLite and PostgreSQL decide alike:
//! each backend reads what a decision needs inside its transaction, calls these, and
//! writes back what they return.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use kiln_contract::names;
use kiln_enroll_proto::api::{
    host_routes, Join, K3sJoin, KubeadmJoin, Observation, Peer, PeerList, Role,
};
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::{host_offset, nth_host, IpNet};
use kiln_enroll_proto::token::digest_eq;

use super::{
    Cluster, EnrollInput, EnrollOutcome, HeartbeatInput, NodeRecord, Pools, Refusal, TokenRecord,
};

/// The port of the k3s supervisor and API server on the first server.
pub const K3S_PORT: u16 = 6443;

/// Whether `node` becomes the first server of `cluster`: a k3s cluster the operator gave
/// no server URL, with no first server yet, and an unrevoked server node.
pub fn takes_init(cluster: &Cluster, node: &NodeRecord) -> bool {
    matches!(cluster, Cluster::K3s(k) if k.server_url.is_none() && k.init_node.is_none())
        && node.role == Role::Server
        && !node.revoked
}

/// `https://<v4>:6443` of a first server.
pub fn k3s_url(first: &NodeRecord) -> String {
    format!("https://{}:{K3S_PORT}", first.address_v4)
}

/// What `node` is told to join with: only what its role needs. `first` is the k3s
/// cluster's first server (`init_node`), when there is one; a revoked first server still
/// gives its URL, since the cluster it started lives on in the other servers and the
/// operator decides when to point nodes elsewhere (`cluster init --replace`).
///
/// - k3s worker: the agent token and the server URL (None while no server exists).
/// - k3s server: the server token and the agent token; `init` for the first server,
///   else the server URL.
/// - kubeadm: endpoint, token and CA hashes; the certificate key to servers only.
pub fn join_for(cluster: &Cluster, node: &NodeRecord, first: Option<&NodeRecord>) -> Join {
    match cluster {
        Cluster::K3s(k) => {
            let init = k.server_url.is_none() && k.init_node.as_deref() == Some(&node.name);
            let server_url = match (&k.server_url, init) {
                (Some(url), _) => Some(url.clone()),
                (None, true) => None,
                (None, false) => first.map(k3s_url),
            };
            let (token, agent_token) = match node.role {
                Role::Worker => (k.agent_token.clone(), None),
                Role::Server => (k.token.clone(), Some(k.agent_token.clone())),
            };
            Join::K3s(K3sJoin {
                server_url,
                init,
                token,
                agent_token,
            })
        }
        Cluster::Kubeadm(k) => Join::Kubeadm(KubeadmJoin {
            api_server_endpoint: k.endpoint.clone(),
            token: k.token.clone(),
            ca_cert_hashes: k.ca_cert_hashes.clone(),
            certificate_key: match node.role {
                Role::Worker => None,
                Role::Server => k.certificate_key.clone(),
            },
        }),
    }
}

/// The lookups an enrollment decision needs: by key, by name, and the lowest free
/// address. A slice of every node answers them by scanning (the tests); the writer's
/// registry ([`super::registry`]) by index.
pub trait NodeIndex {
    /// The node with this WireGuard key, revoked or not.
    fn with_key(&self, key: &PublicKey) -> Option<&NodeRecord>;
    /// Whether a node (revoked or not) has this name.
    fn has_name(&self, name: &str) -> bool;
    /// The lowest free address pair, as [`free_address`] defines it.
    fn free_address(&self, pools: &Pools) -> Option<(IpAddr, IpAddr)>;
}

impl NodeIndex for [NodeRecord] {
    fn with_key(&self, key: &PublicKey) -> Option<&NodeRecord> {
        self.iter().find(|n| n.public_key == *key)
    }
    fn has_name(&self, name: &str) -> bool {
        self.iter().any(|n| n.name == name)
    }
    fn free_address(&self, pools: &Pools) -> Option<(IpAddr, IpAddr)> {
        free_address(pools, self)
    }
}

impl NodeIndex for Vec<NodeRecord> {
    fn with_key(&self, key: &PublicKey) -> Option<&NodeRecord> {
        self.as_slice().with_key(key)
    }
    fn has_name(&self, name: &str) -> bool {
        self.as_slice().has_name(name)
    }
    fn free_address(&self, pools: &Pools) -> Option<(IpAddr, IpAddr)> {
        free_address(pools, self)
    }
}

impl<const N: usize> NodeIndex for [NodeRecord; N] {
    fn with_key(&self, key: &PublicKey) -> Option<&NodeRecord> {
        self.as_slice().with_key(key)
    }
    fn has_name(&self, name: &str) -> bool {
        self.as_slice().has_name(name)
    }
    fn free_address(&self, pools: &Pools) -> Option<(IpAddr, IpAddr)> {
        free_address(pools, self)
    }
}

/// Decides an enrollment. `token` is the stored token with `input.token_id` (None when
/// there is none), `nodes` every node, revoked ones too. `New` carries the record to
/// insert; the caller then takes one use off the token and bumps the peers version.
/// `Existing` and refusals change nothing.
pub fn decide_enroll(
    input: &EnrollInput,
    token: Option<&TokenRecord>,
    nodes: &(impl NodeIndex + ?Sized),
    pools: &Pools,
) -> Result<EnrollOutcome, Refusal> {
    // Unknown id and wrong secret answer alike so the answer does not tell which ids
    // exist. The comparison runs even for an unknown id to keep the timing alike.
    let stored = token.map_or([0u8; 32], |t| t.secret_hash);
    let secret_ok = digest_eq(&stored, &input.secret_hash);
    let token = match token {
        Some(t) if secret_ok => t,
        _ => return Err(Refusal::TokenInvalid),
    };
    if let Some(node) = nodes.with_key(&input.public_key) {
        if node.revoked {
            return Err(Refusal::NodeRevoked);
        }
        let same = digest_eq(&node.credential_hash, &input.credential_hash)
            && node.token_id == input.token_id;
        return if same {
            Ok(EnrollOutcome::Existing(node.clone()))
        } else {
            Err(Refusal::NodeConflict)
        };
    }
    check_token_usable(token, input.now)?;
    let (address_v4, address_v6) = nodes.free_address(pools).ok_or(Refusal::PoolExhausted)?;
    let name = unique_name_with(&input.hostname, &|n| nodes.has_name(n));
    Ok(EnrollOutcome::New(NodeRecord {
        name,
        public_key: input.public_key,
        credential_hash: input.credential_hash,
        token_id: token.id.clone(),
        address_v4,
        address_v6,
        arch: input.arch.clone(),
        role: token.role,
        labels: token.labels.clone(),
        enrolled: input.now,
        revoked: false,
        last_heartbeat: None,
        // Enrolling is a sign of life: peers may try the node until the TTL says otherwise.
        online: true,
        endpoints: input.endpoints.clone(),
        public_endpoint: input.public_endpoint.clone(),
        public_verified: false,
    }))
}

/// Whether a (secret-checked) token may enroll one more node now: revoked, then expired,
/// then used up.
pub fn check_token_usable(token: &TokenRecord, now: u64) -> Result<(), Refusal> {
    if token.revoked {
        return Err(Refusal::TokenRevoked);
    }
    if now >= token.expires {
        return Err(Refusal::TokenExpired);
    }
    if token.uses_left == 0 {
        return Err(Refusal::TokenUsedUp);
    }
    Ok(())
}

/// The lowest host offset of the IPv4 pool that no node (revoked ones included) holds,
/// as IPv4 and IPv6 addresses (the same offset in both pools). Offset 0 (the network)
/// and the last one (broadcast) are never handed out; None when the pool is full.
pub fn free_address(pools: &Pools, nodes: &[NodeRecord]) -> Option<(IpAddr, IpAddr)> {
    let v4 = pools.v4.network();
    let v6 = pools.v6.network();
    let host_bits = 32u32.checked_sub(u32::from(v4.len))?;
    // A /31 or /32 has no address besides network and broadcast.
    if host_bits < 2 {
        return None;
    }
    let last = (1u128 << host_bits) - 2;
    let mut taken = BTreeSet::new();
    for n in nodes {
        taken.extend(host_offset(&v4, n.address_v4));
        // A node whose v6 address sits at an offset (say from a pool change) blocks it too.
        taken.extend(host_offset(&v6, n.address_v6));
    }
    let offset = (1..=last).find(|o| !taken.contains(o))?;
    Some((nth_host(&v4, offset)?, nth_host(&v6, offset)?))
}

/// A name from `hostname` that none of `taken` has: the hostname made into a node name
/// ([`names::to_node_name`]), else `hostname-2`, `hostname-3`, ... (the hostname
/// shortened so the whole stays within [`names::MAX_NODE_NAME_LEN`]).
pub fn unique_name<'a>(hostname: &str, taken: impl IntoIterator<Item = &'a str>) -> String {
    let taken: BTreeSet<&str> = taken.into_iter().collect();
    unique_name_with(hostname, &|n| taken.contains(n))
}

/// [`unique_name`] asking `taken` whether a name is in use.
pub fn unique_name_with(hostname: &str, taken: &dyn Fn(&str) -> bool) -> String {
    let base = names::to_node_name(hostname);
    if !taken(base.as_str()) {
        return base;
    }
    let mut n: u64 = 2;
    loop {
        let suffix = format!("-{n}");
        let stem = names::shorten_node_name(&base, names::MAX_NODE_NAME_LEN - suffix.len());
        let stem = if stem.is_empty() { "node" } else { stem };
        let name = format!("{stem}{suffix}");
        if !taken(name.as_str()) {
            return name;
        }
        n += 1;
    }
}

/// One node's entry in the peer list; None for revoked nodes. Offline nodes keep their
/// key and addresses but show no endpoints and are not public.
pub fn peer_entry(node: &NodeRecord) -> Option<Peer> {
    if node.revoked {
        return None;
    }
    let online = node.online;
    let public_endpoint = if online {
        node.public_endpoint.clone()
    } else {
        None
    };
    Some(Peer {
        name: node.name.clone(),
        public_key: node.public_key,
        allowed_ips: host_routes(node.address_v4, node.address_v6),
        endpoints: if online {
            node.endpoints.clone()
        } else {
            Vec::new()
        },
        public: online && node.public_verified && public_endpoint.is_some(),
        public_endpoint,
        online,
    })
}

/// The peer list every node gets: unrevoked nodes in the order given (by name).
pub fn peer_list(version: u64, nodes: &[NodeRecord]) -> PeerList {
    PeerList {
        version,
        peers: nodes.iter().filter_map(peer_entry).collect(),
    }
}

/// What a heartbeat changes, as decided by [`apply_heartbeat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatChanges {
    /// The reporting node after the heartbeat.
    pub node: NodeRecord,
    /// Names of other nodes that the heartbeat proved public (their flag was false).
    pub verified: Vec<String>,
    /// Whether any peer list entry changed (the caller bumps the version).
    pub bump: bool,
}

/// Applies a heartbeat of `name` to the nodes (all of them, revoked too): the node's
/// endpoints and claim, `last_heartbeat = now`, `online`; other nodes whose claimed
/// public endpoint matches an observation with a handshake at most `fresh` seconds old
/// become `public_verified`. A node that changes its claim loses its own verification
/// until a peer reaches it at the new one.
pub fn apply_heartbeat(
    name: &str,
    hb: &HeartbeatInput,
    nodes: &[NodeRecord],
    now: u64,
    fresh: u64,
) -> Result<HeartbeatChanges, Refusal> {
    let before = nodes
        .iter()
        .find(|n| n.name == name)
        .ok_or(Refusal::UnknownNode)?;
    if before.revoked {
        return Err(Refusal::NodeRevoked);
    }
    let mut node = before.clone();
    if node.public_endpoint != hb.public_endpoint {
        node.public_verified = false;
    }
    node.endpoints = hb.endpoints.clone();
    node.public_endpoint = hb.public_endpoint.clone();
    node.last_heartbeat = Some(now);
    node.online = true;
    let mut bump = peer_entry(before) != peer_entry(&node);

    let mut verified = Vec::new();
    for other in nodes.iter().filter(|n| n.name != name && !n.revoked) {
        if other.public_verified {
            continue;
        }
        if hb.observations.iter().any(|o| {
            proves_public(
                o,
                other.public_key,
                other.public_endpoint.as_deref(),
                now,
                fresh,
            )
        }) {
            let mut after = other.clone();
            after.public_verified = true;
            bump |= peer_entry(other) != peer_entry(&after);
            verified.push(other.name.clone());
        }
    }
    Ok(HeartbeatChanges {
        node,
        verified,
        bump,
    })
}

/// Whether an observation shows a recent handshake with `key` coming from exactly the
/// `claim` it makes (an `ip:port` literal; hostnames are not resolved, so a hostname
/// claim is never verified this way).
pub fn proves_public(
    o: &Observation,
    key: PublicKey,
    claim: Option<&str>,
    now: u64,
    fresh: u64,
) -> bool {
    if o.public_key != key {
        return false;
    }
    let (Some(seen), Some(at), Some(claim)) = (o.endpoint, o.last_handshake, claim) else {
        return false;
    };
    // A handshake time ahead of ours (clock skew) counts as fresh.
    if now.saturating_sub(at) > fresh {
        return false;
    }
    let Ok(claimed) = claim.parse::<SocketAddr>() else {
        return false;
    };
    canonical(claimed) == canonical(seen)
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// Names of online, unrevoked nodes whose last heartbeat (or enrollment, before the
/// first heartbeat) is more than `ttl` seconds before `now`.
pub fn expired(nodes: &[NodeRecord], now: u64, ttl: u64) -> Vec<String> {
    nodes
        .iter()
        .filter(|n| n.online && !n.revoked)
        .filter(|n| now.saturating_sub(n.last_heartbeat.unwrap_or(n.enrolled)) > ttl)
        .map(|n| n.name.clone())
        .collect()
}

/// The IPv6 pool of an overlay: subnet 0 of its ULA /48, as a /64.
pub fn v6_pool(ula48: IpNet) -> IpNet {
    IpNet {
        addr: ula48.network().addr,
        len: 64,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kiln_enroll_proto::api::Role;

    use super::*;

    fn pools(v4: &str) -> Pools {
        Pools {
            v4: v4.parse().unwrap(),
            v6: "fd01:2:3::/64".parse().unwrap(),
        }
    }

    fn token(uses: u32) -> TokenRecord {
        TokenRecord {
            id: "abc123".into(),
            secret_hash: [7; 32],
            created: 100,
            expires: 1000,
            uses_total: uses,
            uses_left: uses,
            role: Role::Worker,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            revoked: false,
        }
    }

    fn input(key: u8, host: &str) -> EnrollInput {
        EnrollInput {
            token_id: "abc123".into(),
            secret_hash: [7; 32],
            public_key: PublicKey([key; 32]),
            credential_hash: [key; 32],
            hostname: host.into(),
            arch: "x86_64".into(),
            endpoints: vec!["192.168.1.5:51820".parse().unwrap()],
            public_endpoint: None,
            now: 500,
        }
    }

    fn enroll_all(n: u8, p: &Pools) -> Vec<NodeRecord> {
        let t = token(1000);
        let mut nodes = Vec::new();
        for k in 1..=n {
            match decide_enroll(&input(k, "host"), Some(&t), &nodes, p).unwrap() {
                EnrollOutcome::New(r) => nodes.push(r),
                other => panic!("{other:?}"),
            }
        }
        nodes
    }

    #[test]
    fn token_checks_follow_the_contract_order() {
        let p = pools("10.77.0.0/16");
        let t = token(1);
        assert_eq!(
            decide_enroll(&input(1, "a"), None, &[], &p),
            Err(Refusal::TokenInvalid)
        );
        let mut wrong = input(1, "a");
        wrong.secret_hash = [8; 32];
        assert_eq!(
            decide_enroll(&wrong, Some(&t), &[], &p),
            Err(Refusal::TokenInvalid)
        );
        // Revoked wins over expired wins over used up.
        let mut bad = t.clone();
        bad.revoked = true;
        bad.uses_left = 0;
        let mut late = input(1, "a");
        late.now = 1000;
        assert_eq!(
            decide_enroll(&late, Some(&bad), &[], &p),
            Err(Refusal::TokenRevoked)
        );
        bad.revoked = false;
        assert_eq!(
            decide_enroll(&late, Some(&bad), &[], &p),
            Err(Refusal::TokenExpired)
        );
        assert_eq!(
            decide_enroll(&input(1, "a"), Some(&bad), &[], &p),
            Err(Refusal::TokenUsedUp)
        );
        // A wrong secret is refused even when the key is already enrolled.
        let nodes = enroll_all(1, &p);
        let mut retry_wrong = input(1, "host");
        retry_wrong.secret_hash = [9; 32];
        assert_eq!(
            decide_enroll(&retry_wrong, Some(&t), &nodes, &p),
            Err(Refusal::TokenInvalid)
        );
    }

    #[test]
    fn retry_is_existing_even_with_a_used_up_token_and_others_conflict() {
        let p = pools("10.77.0.0/16");
        let mut nodes = enroll_all(1, &p);
        let mut t = token(1);
        t.uses_left = 0;
        let mut late = input(1, "renamed");
        late.now = 5000;
        let got = decide_enroll(&late, Some(&t), &nodes, &p).unwrap();
        assert_eq!(got, EnrollOutcome::Existing(nodes[0].clone()));
        let mut other_cred = input(1, "host");
        other_cred.credential_hash = [99; 32];
        t.uses_left = 1;
        assert_eq!(
            decide_enroll(&other_cred, Some(&t), &nodes, &p),
            Err(Refusal::NodeConflict)
        );
        nodes[0].revoked = true;
        assert_eq!(
            decide_enroll(&input(1, "host"), Some(&t), &nodes, &p),
            Err(Refusal::NodeRevoked)
        );
    }

    #[test]
    fn addresses_are_lowest_free_never_reused_and_v6_follows() {
        let p = pools("10.77.0.0/16");
        let mut nodes = enroll_all(3, &p);
        let v4: Vec<String> = nodes.iter().map(|n| n.address_v4.to_string()).collect();
        assert_eq!(v4, ["10.77.0.1", "10.77.0.2", "10.77.0.3"]);
        assert_eq!(nodes[2].address_v6.to_string(), "fd01:2:3::3");
        // A revoked node keeps its address; a hole left by a deleted row is filled first.
        nodes[1].revoked = true;
        nodes.remove(0);
        let (a4, a6) = free_address(&p, &nodes).unwrap();
        assert_eq!(
            (a4.to_string(), a6.to_string()),
            ("10.77.0.1".into(), "fd01:2:3::1".into())
        );
    }

    #[test]
    fn small_pools_skip_network_and_broadcast_and_run_out() {
        let p = pools("192.168.9.4/30");
        let nodes = enroll_all(2, &p);
        let v4: Vec<String> = nodes.iter().map(|n| n.address_v4.to_string()).collect();
        assert_eq!(v4, ["192.168.9.5", "192.168.9.6"]);
        assert_eq!(
            decide_enroll(&input(9, "x"), Some(&token(5)), &nodes, &p),
            Err(Refusal::PoolExhausted)
        );
        assert_eq!(free_address(&pools("10.0.0.0/31"), &[]), None);
        assert_eq!(free_address(&pools("10.0.0.1/32"), &[]), None);
    }

    #[test]
    fn names_are_unique_sanitised_and_short() {
        assert_eq!(unique_name("web", ["web", "web-2"]), "web-3");
        assert_eq!(unique_name("Web_01.lan", []), "web-01-lan");
        assert_eq!(unique_name("--", []), "node");
        let long = "a".repeat(70);
        let first = unique_name(&long, []);
        assert_eq!(first.len(), names::MAX_NODE_NAME_LEN);
        let second = unique_name(&long, [first.as_str()]);
        assert_eq!(second.len(), names::MAX_NODE_NAME_LEN);
        assert!(second.ends_with("a-2"), "{second}");
        let nodes = enroll_all(3, &pools("10.77.0.0/16"));
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["host", "host-2", "host-3"]);
    }

    #[test]
    fn unique_names_pass_the_node_name_check() {
        // Suffixed names are made here, not in the contract, so they are checked here.
        let long = "x".repeat(63);
        for host in ["web", "-", "Web_01.lan", long.as_str(), "a-b-c-d-e-f-g-h"] {
            let mut taken: Vec<String> = Vec::new();
            for _ in 0..12 {
                let name = unique_name(host, taken.iter().map(String::as_str));
                assert_eq!(names::check_node_name(&name), Ok(()), "{host}: {name}");
                assert!(!taken.contains(&name), "{host}: {name}");
                taken.push(name);
            }
        }
    }

    #[test]
    fn peer_list_hides_revoked_and_silences_offline() {
        let mut nodes = enroll_all(3, &pools("10.77.0.0/16"));
        nodes[0].revoked = true;
        nodes[1].online = false;
        nodes[1].public_endpoint = Some("203.0.113.1:51820".into());
        nodes[1].public_verified = true;
        nodes[2].public_endpoint = Some("203.0.113.2:51820".into());
        nodes[2].public_verified = true;
        let list = peer_list(4, &nodes);
        assert_eq!(list.version, 4);
        let names: Vec<&str> = list.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["host-2", "host-3"]);
        let off = &list.peers[0];
        assert!(off.endpoints.is_empty() && off.public_endpoint.is_none());
        assert!(!off.public && !off.online);
        let on = &list.peers[1];
        assert!(on.public && on.online);
        assert_eq!(on.endpoints, nodes[2].endpoints);
        assert_eq!(
            on.allowed_ips,
            vec![
                "10.77.0.3/32".parse().unwrap(),
                "fd01:2:3::3/128".parse().unwrap()
            ]
        );
    }

    #[test]
    fn heartbeat_verifies_only_exact_fresh_matches() {
        let mut nodes = enroll_all(3, &pools("10.77.0.0/16"));
        nodes[1].public_endpoint = Some("203.0.113.7:51820".into());
        nodes[2].public_endpoint = Some("gw.example:51820".into());
        let obs = |key: u8, ep: &str, at: u64| Observation {
            public_key: PublicKey([key; 32]),
            endpoint: Some(ep.parse().unwrap()),
            last_handshake: Some(at),
        };
        let endpoints = nodes[0].endpoints.clone();
        let hb = |observations| HeartbeatInput {
            endpoints: endpoints.clone(),
            public_endpoint: None,
            observations,
        };
        // Stale handshake, wrong port, hostname claim: nothing verified.
        let ch = apply_heartbeat(
            "host",
            &hb(vec![
                obs(2, "203.0.113.7:51820", 800),
                obs(2, "203.0.113.7:51821", 990),
                obs(3, "198.51.100.1:51820", 990),
            ]),
            &nodes,
            1000,
            120,
        )
        .unwrap();
        assert!(ch.verified.is_empty());
        assert_eq!(ch.node.last_heartbeat, Some(1000));
        // Same endpoints and claim as at enrollment: no peer list change.
        assert!(!ch.bump);
        // IPv4-mapped form of the claimed address counts.
        let ch = apply_heartbeat(
            "host",
            &hb(vec![obs(2, "[::ffff:203.0.113.7]:51820", 990)]),
            &nodes,
            1000,
            120,
        )
        .unwrap();
        assert_eq!(ch.verified, ["host-2"]);
        assert!(ch.bump);
        // A node never verifies itself.
        nodes[0].public_endpoint = Some("203.0.113.9:51820".into());
        let mut own = hb(vec![obs(1, "203.0.113.9:51820", 990)]);
        own.public_endpoint = nodes[0].public_endpoint.clone();
        let ch = apply_heartbeat("host", &own, &nodes, 1000, 120).unwrap();
        assert!(ch.verified.is_empty());
        assert_eq!(
            apply_heartbeat("nope", &own, &nodes, 1000, 120),
            Err(Refusal::UnknownNode)
        );
        nodes[0].revoked = true;
        assert_eq!(
            apply_heartbeat("host", &own, &nodes, 1000, 120),
            Err(Refusal::NodeRevoked)
        );
    }

    #[test]
    fn changing_the_claim_drops_verification_and_bumps() {
        let mut nodes = enroll_all(1, &pools("10.77.0.0/16"));
        nodes[0].public_endpoint = Some("203.0.113.7:51820".into());
        nodes[0].public_verified = true;
        let hb = HeartbeatInput {
            endpoints: vec![],
            public_endpoint: Some("203.0.113.8:51820".into()),
            observations: vec![],
        };
        let ch = apply_heartbeat("host", &hb, &nodes, 600, 120).unwrap();
        assert!(!ch.node.public_verified);
        assert!(ch.bump);
    }

    #[test]
    fn expiry_uses_last_heartbeat_or_enrollment() {
        let mut nodes = enroll_all(3, &pools("10.77.0.0/16"));
        // Enrolled at 500.
        nodes[1].last_heartbeat = Some(650);
        nodes[2].online = false;
        assert!(expired(&nodes, 590, 90).is_empty());
        assert_eq!(expired(&nodes, 591, 90), ["host"]);
        assert_eq!(expired(&nodes, 741, 90), ["host", "host-2"]);
    }

    #[test]
    fn v6_pool_is_subnet_zero() {
        let ula: IpNet = "fd12:3456:789a::/48".parse().unwrap();
        assert_eq!(v6_pool(ula).to_string(), "fd12:3456:789a::/64");
    }

    fn k3s(url: Option<&str>, init: Option<&str>) -> Cluster {
        Cluster::K3s(super::super::K3sCluster {
            server_url: url.map(str::to_string),
            init_node: init.map(str::to_string),
            token: "server-tok".into(),
            agent_token: "agent-tok".into(),
        })
    }

    fn role(mut n: NodeRecord, r: Role) -> NodeRecord {
        n.role = r;
        n
    }

    #[test]
    fn k3s_joins_give_each_role_only_what_it_needs() {
        let nodes = enroll_all(3, &pools("10.77.0.0/16"));
        let worker = role(nodes[0].clone(), Role::Worker);
        let first = role(nodes[1].clone(), Role::Server);
        let second = role(nodes[2].clone(), Role::Server);
        let none = k3s(None, None);
        assert!(takes_init(&none, &first) && !takes_init(&none, &worker));
        let mut revoked = first.clone();
        revoked.revoked = true;
        assert!(!takes_init(&none, &revoked));
        assert!(!takes_init(&k3s(Some("https://k:6443"), None), &first));
        assert!(!takes_init(&k3s(None, Some("host-2")), &second));
        // A worker before any server: no URL, the agent token only.
        assert_eq!(
            join_for(&none, &worker, None),
            Join::K3s(K3sJoin {
                server_url: None,
                init: false,
                token: "agent-tok".into(),
                agent_token: None,
            })
        );
        let c = k3s(None, Some("host-2"));
        assert_eq!(
            join_for(&c, &first, Some(&first)),
            Join::K3s(K3sJoin {
                server_url: None,
                init: true,
                token: "server-tok".into(),
                agent_token: Some("agent-tok".into()),
            })
        );
        let url = Some("https://10.77.0.2:6443".to_string());
        let Join::K3s(w) = join_for(&c, &worker, Some(&first)) else {
            panic!()
        };
        assert_eq!(
            (w.server_url.clone(), w.init, w.agent_token),
            (url.clone(), false, None)
        );
        let Join::K3s(s2) = join_for(&c, &second, Some(&first)) else {
            panic!()
        };
        assert_eq!(
            (s2.server_url, s2.init, s2.token.as_str()),
            (url, false, "server-tok")
        );
        // With an operator URL nobody starts the cluster.
        let Join::K3s(s) = join_for(&k3s(Some("https://k.example:6443"), None), &first, None)
        else {
            panic!()
        };
        assert_eq!(
            (s.server_url.as_deref(), s.init),
            (Some("https://k.example:6443"), false)
        );
    }

    #[test]
    fn kubeadm_certificate_key_goes_to_servers_only() {
        let nodes = enroll_all(1, &pools("10.77.0.0/16"));
        let c = Cluster::Kubeadm(super::super::KubeadmCluster {
            endpoint: "10.77.0.1:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32))],
            certificate_key: Some("cd".repeat(32)),
        });
        let Join::Kubeadm(w) = join_for(&c, &role(nodes[0].clone(), Role::Worker), None) else {
            panic!()
        };
        assert_eq!(w.certificate_key, None);
        assert_eq!(w.ca_cert_hashes.len(), 1);
        let Join::Kubeadm(s) = join_for(&c, &role(nodes[0].clone(), Role::Server), None) else {
            panic!()
        };
        assert_eq!(s.certificate_key, Some("cd".repeat(32)));
    }
}
