//! The committed peer list in memory, for everything that serves it: each node's entry
//! is serialized once when it changes, the whole list once per version (and shared by
//! every request for that version), and a delta since a version once per (since,
//! version) pair, so ten thousand long polls woken by one change cost one small
//! serialization, not ten thousand full ones.
//!
//! It changes only after a commit: the writer publishes what its transaction changed
//! ([`Feed::apply`]), and [`super::Store::refresh`] reads what other processes or
//! replicas changed (the rows whose `changed` version is newer). Waiters are woken
//! through the [`Notifier`] after the new version is in place, so a woken waiter always
//! finds the change it was woken for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use kiln_enroll_proto::api::Peer;

use super::logic;
use super::NodeRecord;
use crate::watch::Notifier;

/// Deltas kept per version (one per distinct `since` asked for); beyond it, older ones
/// are dropped and made again when asked.
const MAX_CACHED_DELTAS: usize = 64;

/// One node as the feed holds it.
#[derive(Debug)]
struct Entry {
    /// The version its peer entry last changed at.
    changed: u64,
    /// The record (for checks after a long poll's wait).
    node: Arc<NodeRecord>,
    /// Its peer-list entry as JSON; None for a revoked node.
    json: Option<Arc<[u8]>>,
}

#[derive(Debug, Default)]
struct State {
    loaded: bool,
    version: u64,
    entries: BTreeMap<String, Entry>,
    /// (changed, name) of every entry: the changes since a version are a range.
    by_change: BTreeSet<(u64, String)>,
    /// Unrevoked entries.
    live: usize,
    /// The revision-1 list at `version`.
    list: Option<Arc<Vec<u8>>>,
    /// The revision-2 full form at `version`.
    full: Option<Arc<Vec<u8>>>,
    /// Revision-2 deltas to `version`, by `since`.
    deltas: HashMap<u64, Arc<Vec<u8>>>,
}

/// The committed peer list; see the module documentation.
pub struct Feed {
    state: Mutex<State>,
    notifier: Arc<Notifier>,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed::new()
    }
}

/// Why a revision-2 answer is the full list rather than a delta.
fn too_far_behind(since: u64, version: u64, changes: usize, live: usize) -> bool {
    // 0 is "I have nothing"; a version above ours means the node talked to another
    // state (a restored backup): either way only the whole list is right. When most
    // peers changed, the whole list is about as small and simpler to apply.
    since == 0 || since > version || changes.saturating_mul(2) > live.max(1)
}

impl Feed {
    /// An empty feed, not loaded yet.
    pub fn new() -> Feed {
        Feed {
            state: Mutex::new(State::default()),
            notifier: Arc::new(Notifier::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below leaves the state whole before it can panic (only
        // allocation can), so a poisoned lock still guards consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes long polls when the version grows.
    pub fn notifier(&self) -> Arc<Notifier> {
        self.notifier.clone()
    }

    /// Whether it holds the list (after the first [`Feed::load`]).
    pub fn loaded(&self) -> bool {
        self.lock().loaded
    }

    /// The version it holds.
    pub fn version(&self) -> u64 {
        self.lock().version
    }

    /// Replaces everything with `rows` at `version` (unless it holds a newer version).
    pub fn load(&self, version: u64, rows: Vec<(NodeRecord, u64)>) {
        {
            let s = self.lock();
            if s.loaded && version < s.version {
                return;
            }
        }
        self.replace(version, rows);
    }

    /// Replaces everything with `rows` at `version`, whatever it held (the first load, or
    /// a database that went back to an older version).
    pub fn replace(&self, version: u64, rows: Vec<(NodeRecord, u64)>) {
        {
            let mut s = self.lock();
            *s = State::default();
            for (n, changed) in rows {
                put(&mut s, n, changed);
            }
            s.version = version;
            s.loaded = true;
        }
        self.notifier.observe(version);
    }

    /// Applies the rows a commit (or another process) changed, now at `version`.
    /// Ignored when not loaded (the first load reads everything) or when `version` is
    /// not newer than what it holds (a slower reader raced a local commit).
    pub fn apply(&self, version: u64, rows: Vec<(NodeRecord, u64)>) {
        {
            let mut s = self.lock();
            if !s.loaded || version <= s.version {
                return;
            }
            for (n, changed) in rows {
                put(&mut s, n, changed);
            }
            s.version = version;
            s.list = None;
            s.full = None;
            s.deltas.clear();
        }
        self.notifier.observe(version);
    }

    /// The node as last committed, if the feed knows it.
    pub fn node(&self, name: &str) -> Option<Arc<NodeRecord>> {
        self.lock().entries.get(name).map(|e| e.node.clone())
    }

    /// The revision-1 peer list (a `PeerList`) at the current version, as JSON.
    pub fn list(&self) -> (u64, Arc<Vec<u8>>) {
        let mut s = self.lock();
        let version = s.version;
        if let Some(l) = &s.list {
            return (version, l.clone());
        }
        let mut out = format!("{{\"version\":{version},\"peers\":").into_bytes();
        peers_array(&mut out, s.entries.values());
        out.push(b'}');
        let l = Arc::new(out);
        s.list = Some(l.clone());
        (version, l)
    }

    /// The revision-2 answer for a node at version `since` (a `PeerDelta`), as JSON:
    /// the changes since then, or the whole list when it is too far behind.
    pub fn changes(&self, since: u64) -> (u64, Arc<Vec<u8>>) {
        let mut s = self.lock();
        let version = s.version;
        if let Some(d) = s.deltas.get(&since) {
            return (version, d.clone());
        }
        let changed: Vec<&str> = s
            .by_change
            .range((since.saturating_add(1), String::new())..)
            .map(|(_, name)| name.as_str())
            .collect();
        if too_far_behind(since, version, changed.len(), s.live) {
            if let Some(f) = &s.full {
                return (version, f.clone());
            }
            let mut out = format!("{{\"version\":{version},\"since\":null,\"peers\":").into_bytes();
            peers_array(&mut out, s.entries.values());
            out.extend_from_slice(b",\"removed\":[]}");
            let f = Arc::new(out);
            s.full = Some(f.clone());
            return (version, f);
        }
        // By name, like the full list.
        let changed: BTreeSet<&str> = changed.into_iter().collect();
        let entries: Vec<&Entry> = changed.iter().filter_map(|n| s.entries.get(*n)).collect();
        let mut out = format!("{{\"version\":{version},\"since\":{since},\"peers\":").into_bytes();
        peers_array(&mut out, entries.iter().copied());
        out.extend_from_slice(b",\"removed\":");
        let removed: Vec<&str> = entries
            .iter()
            .filter(|e| e.json.is_none())
            .map(|e| e.node.name.as_str())
            .collect();
        // Names are node names (a-z, 0-9, '-'): encoding cannot fail.
        out.extend_from_slice(&serde_json::to_vec(&removed).unwrap_or_else(|_| b"[]".to_vec()));
        out.push(b'}');
        let d = Arc::new(out);
        if s.deltas.len() >= MAX_CACHED_DELTAS {
            s.deltas.clear();
        }
        s.deltas.insert(since, d.clone());
        (version, d)
    }
}

/// `[entry,entry,...]` of the unrevoked entries given.
fn peers_array<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = &'a Entry>) {
    out.push(b'[');
    let mut first = true;
    for json in entries.filter_map(|e| e.json.as_ref()) {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(json);
    }
    out.push(b']');
}

fn peer_json(p: &Peer) -> Arc<[u8]> {
    // A Peer is strings, numbers and addresses: encoding cannot fail.
    Arc::from(serde_json::to_vec(p).unwrap_or_default())
}

fn put(s: &mut State, n: NodeRecord, changed: u64) {
    let json = logic::peer_entry(&n).map(|p| peer_json(&p));
    if let Some(old) = s.entries.get(&n.name) {
        let key = (old.changed, n.name.clone());
        let was_live = old.json.is_some();
        s.by_change.remove(&key);
        if was_live {
            s.live -= 1;
        }
    }
    if json.is_some() {
        s.live += 1;
    }
    s.by_change.insert((changed, n.name.clone()));
    s.entries.insert(
        n.name.clone(),
        Entry {
            changed,
            node: Arc::new(n),
            json,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_enroll_proto::api::{PeerDelta, PeerList, Role};
    use kiln_enroll_proto::key::PublicKey;

    fn node(i: u8) -> NodeRecord {
        NodeRecord {
            name: format!("n{i}"),
            public_key: PublicKey([i; 32]),
            credential_hash: [i; 32],
            token_id: "t".into(),
            address_v4: format!("10.77.0.{i}").parse().unwrap(),
            address_v6: format!("fd01::{i}").parse().unwrap(),
            arch: "x86_64".into(),
            role: Role::Worker,
            labels: Default::default(),
            enrolled: 1,
            revoked: false,
            last_heartbeat: None,
            online: true,
            endpoints: vec![format!("192.168.0.{i}:51820").parse().unwrap()],
            public_endpoint: None,
            public_verified: false,
        }
    }

    #[test]
    fn the_list_is_what_serde_makes_and_deltas_hold_exactly_the_changes() {
        let f = Feed::new();
        let nodes: Vec<NodeRecord> = (1..=6).map(node).collect();
        f.load(6, nodes.iter().cloned().zip(1..=6).collect());
        let (v, list) = f.list();
        assert_eq!(v, 6);
        let want = PeerList {
            version: 6,
            peers: nodes.iter().filter_map(logic::peer_entry).collect(),
        };
        assert_eq!(*list, serde_json::to_vec(&want).unwrap());
        // n2 changes, n3 is revoked: a node at 6 gets exactly those two.
        let mut n2 = node(2);
        n2.online = false;
        let mut n3 = node(3);
        n3.revoked = true;
        f.apply(8, vec![(n2.clone(), 7), (n3, 8)]);
        let d: PeerDelta = serde_json::from_slice(&f.changes(6).1).unwrap();
        assert_eq!(d.version, 8);
        assert_eq!(d.since, Some(6));
        assert_eq!(d.peers, vec![logic::peer_entry(&n2).unwrap()]);
        assert_eq!(d.removed, vec!["n3".to_string()]);
        let d: PeerDelta = serde_json::from_slice(&f.changes(7).1).unwrap();
        assert!(d.peers.is_empty() && d.removed == ["n3"]);
        // Up to date: nothing.
        let d: PeerDelta = serde_json::from_slice(&f.changes(8).1).unwrap();
        assert!(d.peers.is_empty() && d.removed.is_empty() && d.since == Some(8));
        // From nothing, from the future, or when most peers changed: the whole list.
        for since in [0, 9, 2] {
            let d: PeerDelta = serde_json::from_slice(&f.changes(since).1).unwrap();
            assert_eq!(d.since, None, "{since}");
            assert_eq!(d.peers.len(), 5, "{since}");
        }
        // An older version never goes back.
        f.apply(7, vec![(node(2), 7)]);
        assert_eq!(f.version(), 8);
        assert!(!f.node("n2").unwrap().online);
    }
}
