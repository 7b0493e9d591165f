//! The writer's in-memory index of the node table, so that an enrollment or a heartbeat
//! looks nodes up by key, name and address instead of reading and decoding every row.
//!
//! It is only ever used inside a write transaction (under the backend's write lock), and
//! it is brought up to date at the start of each one: the stored peers version is read
//! and, when another process or replica wrote meanwhile, only the rows whose `changed`
//! version is newer are read (an indexed range). Every change that a peer list shows
//! bumps the version, so a row can be stale only in `last_heartbeat`, which no decision
//! made here reads (expiry asks the database).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::net::nth_host;

use super::logic::NodeIndex;
use super::{NodeRecord, Pools};

/// Every node (revoked too) with the version its peer entry last changed at.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// The peers version the registry reflects.
    pub version: u64,
    /// False until loaded, and after anything that may have left it out of step.
    valid: bool,
    nodes: BTreeMap<String, (NodeRecord, u64)>,
    by_key: HashMap<PublicKey, String>,
    v4: HashSet<IpAddr>,
    v6: HashSet<IpAddr>,
    /// Pools and an offset below which every address is taken: addresses are never
    /// freed (rows are never deleted), so the search for the lowest free one resumes here.
    low: Cell<Option<(Pools, u128)>>,
}

impl Registry {
    /// Whether it can be trusted.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// Forgets everything: the next use reloads it.
    pub fn invalidate(&mut self) {
        *self = Registry::default();
    }

    /// Replaces the content with every node at `version`.
    pub fn load(&mut self, version: u64, rows: Vec<(NodeRecord, u64)>) {
        self.invalidate();
        for (n, changed) in rows {
            self.put(n, changed);
        }
        self.version = version;
        self.valid = true;
    }

    /// Inserts or replaces one node.
    pub fn put(&mut self, n: NodeRecord, changed: u64) {
        self.by_key.insert(n.public_key, n.name.clone());
        self.v4.insert(n.address_v4);
        self.v6.insert(n.address_v6);
        self.nodes.insert(n.name.clone(), (n, changed));
    }

    /// One node by name.
    pub fn get(&self, name: &str) -> Option<&NodeRecord> {
        self.nodes.get(name).map(|(n, _)| n)
    }

    /// One node with the version it last changed at.
    pub fn get_changed(&self, name: &str) -> Option<(&NodeRecord, u64)> {
        self.nodes.get(name).map(|(n, c)| (n, *c))
    }

    /// Every node with its version, by name.
    pub fn all(&self) -> impl Iterator<Item = (&NodeRecord, u64)> {
        self.nodes.values().map(|(n, c)| (n, *c))
    }
}

impl NodeIndex for Registry {
    fn with_key(&self, key: &PublicKey) -> Option<&NodeRecord> {
        self.by_key.get(key).and_then(|name| self.get(name))
    }

    fn has_name(&self, name: &str) -> bool {
        self.nodes.contains_key(name)
    }

    fn free_address(&self, pools: &Pools) -> Option<(IpAddr, IpAddr)> {
        let v4 = pools.v4.network();
        let v6 = pools.v6.network();
        let host_bits = 32u32.checked_sub(u32::from(v4.len))?;
        // A /31 or /32 has no address besides network and broadcast.
        if host_bits < 2 {
            return None;
        }
        let last = (1u128 << host_bits) - 2;
        let mut offset = match self.low.get() {
            Some((p, o)) if p == *pools => o,
            _ => 1,
        };
        while offset <= last {
            let (a4, a6) = (nth_host(&v4, offset)?, nth_host(&v6, offset)?);
            if !self.v4.contains(&a4) && !self.v6.contains(&a6) {
                self.low.set(Some((*pools, offset)));
                return Some((a4, a6));
            }
            offset += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::logic;
    use kiln_enroll_proto::api::Role;
    use std::collections::BTreeMap;

    fn node(i: u8, v4: &str, v6: &str) -> NodeRecord {
        NodeRecord {
            name: format!("n{i}"),
            public_key: PublicKey([i; 32]),
            credential_hash: [i; 32],
            token_id: "t".into(),
            address_v4: v4.parse().unwrap(),
            address_v6: v6.parse().unwrap(),
            arch: "x86_64".into(),
            role: Role::Worker,
            labels: BTreeMap::new(),
            enrolled: 1,
            revoked: false,
            last_heartbeat: None,
            online: true,
            endpoints: vec![],
            public_endpoint: None,
            public_verified: false,
        }
    }

    #[test]
    fn free_addresses_match_the_scan_and_skip_taken_ones() {
        let pools = Pools {
            v4: "10.77.0.0/16".parse().unwrap(),
            v6: "fd01:2:3::/64".parse().unwrap(),
        };
        let nodes = vec![
            node(1, "10.77.0.1", "fd01:2:3::1"),
            node(2, "10.77.0.3", "fd01:2:3::2"),
        ];
        let mut r = Registry::default();
        r.load(5, nodes.iter().cloned().map(|n| (n, 5)).collect());
        assert_eq!(r.free_address(&pools), logic::free_address(&pools, &nodes));
        let (a4, _) = r.free_address(&pools).unwrap();
        assert_eq!(a4.to_string(), "10.77.0.4");
        r.put(node(3, "10.77.0.4", "fd01:2:3::4"), 6);
        assert_eq!(r.free_address(&pools).unwrap().0.to_string(), "10.77.0.5");
        assert_eq!(r.with_key(&PublicKey([2; 32])).unwrap().name, "n2");
        assert!(r.has_name("n3") && !r.has_name("n4"));
    }
}
