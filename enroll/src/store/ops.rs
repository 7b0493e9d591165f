//! Every store operation written once against [`Tx`], the few row reads and writes a
//! backend provides inside one of its transactions. The decisions come from [`logic`];
//! the nodes they need come from the writer's [`Registry`] (brought up to date by
//! [`sync`] at the start of each transaction), so a request reads and writes only the
//! rows it concerns.

use std::collections::{BTreeMap, BTreeSet};

use super::logic::{self, NodeIndex};
use super::registry::Registry;
use super::{
    CaPem, Cluster, EnrollInput, EnrollOutcome, HeartbeatInput, NodeRecord, Pools, StoreError,
    TokenRecord,
};

/// Row access inside one open transaction. Errors are already StoreErrors that name the
/// database and what was being done.
pub(crate) trait Tx {
    /// The stored CA, if any.
    fn ca(&mut self) -> Result<Option<CaPem>, StoreError>;
    /// Stores the CA unless one is there already.
    fn insert_ca_if_absent(&mut self, ca: &CaPem) -> Result<(), StoreError>;
    /// One token.
    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Every token.
    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Inserts a token.
    fn insert_token(&mut self, t: &TokenRecord) -> Result<(), StoreError>;
    /// Sets a token's `revoked` and `uses_left`; false when no row has that id.
    fn update_token(&mut self, id: &str, revoked: bool, uses_left: u32)
        -> Result<bool, StoreError>;
    /// Every node.
    fn nodes(&mut self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Every node whose peer entry changed after version `since` (all of them for 0),
    /// with the version it changed at; an indexed range read.
    fn nodes_changed_since(&mut self, since: u64) -> Result<Vec<(NodeRecord, u64)>, StoreError>;
    /// One node.
    fn node(&mut self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// Inserts a node whose peer entry changed at version `changed`.
    fn insert_node(&mut self, n: &NodeRecord, changed: u64) -> Result<(), StoreError>;
    /// Writes the changeable fields (revoked, online, endpoints, public_endpoint,
    /// public_verified; last_heartbeat only with `heartbeat`) of the node with `n.name`;
    /// `changed` when its peer entry changed.
    fn update_node(
        &mut self,
        n: &NodeRecord,
        changed: Option<u64>,
        heartbeat: bool,
    ) -> Result<(), StoreError>;
    /// Sets online = false and changed = `changed` on every online, unrevoked node whose
    /// last heartbeat (or enrollment, before the first heartbeat) is before `cutoff`
    /// (unix seconds), in one statement; their names, by name.
    fn expire_silent(&mut self, cutoff: u64, changed: u64) -> Result<Vec<String>, StoreError>;
    /// The peers version.
    fn version(&mut self) -> Result<u64, StoreError>;
    /// Stores a new peers version.
    fn set_version(&mut self, v: u64) -> Result<(), StoreError>;
    /// The cluster row, if any.
    fn cluster(&mut self) -> Result<Option<Cluster>, StoreError>;
    /// Inserts or overwrites the cluster row.
    fn put_cluster(&mut self, c: &Cluster) -> Result<(), StoreError>;
    /// Deletes the cluster row; false when there was none.
    fn delete_cluster(&mut self) -> Result<bool, StoreError>;
}

/// The writer's state that a write updates besides the rows: the registry, what the
/// open transaction changed (published to the feed when it commits), and the rows that
/// every write of a group touches, written once at the group's commit.
pub(crate) struct Work<'a> {
    /// The node index, current inside the open transaction.
    pub reg: &'a mut Registry,
    /// Names whose peer entry changed in the open transaction.
    pub touched: &'a mut BTreeSet<String>,
    /// The registry was reloaded whole: publish every node.
    pub full: &'a mut bool,
    /// Rows read or changed in the open transaction.
    pub pending: &'a mut Pending,
}

/// The rows many writes of one group share: the token they enroll with, the peers
/// version, the cluster. Read once per transaction and written once at its commit
/// ([`flush`]), instead of once per write: a hundred enrollments with one token make one
/// update of its row, not a hundred (on PostgreSQL each is a round trip and a dead tuple).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    /// Tokens as the transaction has them, and whether they are to be written.
    tokens: BTreeMap<String, (Option<TokenRecord>, bool)>,
    /// The peers version to write.
    version: Option<u64>,
    /// The cluster row as the transaction has it, once read.
    cluster: Option<Option<Cluster>>,
}

/// Writes what [`Pending`] holds; the group calls it right before its commit.
pub(crate) fn flush(tx: &mut dyn Tx, p: &mut Pending) -> Result<(), StoreError> {
    for (id, (token, dirty)) in &p.tokens {
        if let (Some(t), true) = (token, dirty) {
            tx.update_token(id, t.revoked, t.uses_left)?;
        }
    }
    if let Some(v) = p.version {
        tx.set_version(v)?;
    }
    *p = Pending::default();
    Ok(())
}

fn token(tx: &mut dyn Tx, w: &mut Work<'_>, id: &str) -> Result<Option<TokenRecord>, StoreError> {
    if let Some((t, _)) = w.pending.tokens.get(id) {
        return Ok(t.clone());
    }
    let t = tx.token(id)?;
    w.pending.tokens.insert(id.to_string(), (t.clone(), false));
    Ok(t)
}

fn set_token(w: &mut Work<'_>, t: TokenRecord) {
    w.pending.tokens.insert(t.id.clone(), (Some(t), true));
}

fn cluster(tx: &mut dyn Tx, w: &mut Work<'_>) -> Result<Option<Cluster>, StoreError> {
    if let Some(c) = &w.pending.cluster {
        return Ok(c.clone());
    }
    let c = tx.cluster()?;
    w.pending.cluster = Some(c.clone());
    Ok(c)
}

fn put_cluster(tx: &mut dyn Tx, w: &mut Work<'_>, c: &Cluster) -> Result<(), StoreError> {
    tx.put_cluster(c)?;
    w.pending.cluster = Some(Some(c.clone()));
    Ok(())
}

/// Brings the registry up to date with the database inside the open transaction: the
/// stored version, and when it moved, the rows changed since (all rows when the
/// registry is not loaded or the database went back in time).
pub(crate) fn sync(tx: &mut dyn Tx, w: &mut Work<'_>) -> Result<(), StoreError> {
    let v = tx.version()?;
    if !w.reg.valid() || v < w.reg.version {
        let rows = tx.nodes_changed_since(0)?;
        w.reg.load(v, rows);
        *w.full = true;
    } else if v > w.reg.version {
        for (n, changed) in tx.nodes_changed_since(w.reg.version)? {
            w.touched.insert(n.name.clone());
            w.reg.put(n, changed);
        }
        w.reg.version = v;
    }
    Ok(())
}

/// The next peers version (written at the commit, [`flush`]).
fn bump(w: &mut Work<'_>) -> u64 {
    let v = w.reg.version.saturating_add(1);
    w.pending.version = Some(v);
    w.reg.version = v;
    v
}

/// Records a node whose peer entry changed at `changed` in the registry and the touched set.
fn changed(w: &mut Work<'_>, n: NodeRecord, changed: u64) {
    w.touched.insert(n.name.clone());
    w.reg.put(n, changed);
}

/// Writes `generated` unless a CA is stored, then reads back whichever is stored.
pub(crate) fn store_ca(tx: &mut dyn Tx, generated: &CaPem) -> Result<CaPem, StoreError> {
    tx.insert_ca_if_absent(generated)?;
    tx.ca()?.ok_or_else(|| {
        StoreError::Corrupt("table ca: the CA just written cannot be read back".to_string())
    })
}

/// See [`super::Store::revoke_token`].
pub(crate) fn revoke_token(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    id: &str,
) -> Result<bool, StoreError> {
    match token(tx, w, id)? {
        Some(mut t) => {
            t.revoked = true;
            set_token(w, t);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// See [`super::Store::enroll`]: one indexed token read, registry lookups, one node
/// insert, one token update, the version, and the cluster row.
pub(crate) fn enroll(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    input: &EnrollInput,
    pools: &Pools,
) -> Result<EnrollOutcome, StoreError> {
    let token = token(tx, w, &input.token_id)?;
    let outcome =
        logic::decide_enroll(input, token.as_ref(), &*w.reg, pools).map_err(StoreError::Refused)?;
    if let (EnrollOutcome::New(node), Some(mut t)) = (&outcome, token) {
        let v = bump(w);
        tx.insert_node(node, v)?;
        t.uses_left = t.uses_left.saturating_sub(1);
        set_token(w, t);
        changed(w, node.clone(), v);
    }
    // In the same transaction as the node's record, so of servers enrolling at once
    // exactly one starts the cluster.
    claim(tx, w, outcome.node())?;
    Ok(outcome)
}

/// Makes `node` the k3s cluster's first server when it may be (see
/// [`logic::takes_init`]); the cluster as it is afterwards.
fn claim(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    node: &NodeRecord,
) -> Result<Option<Cluster>, StoreError> {
    let Some(mut cluster) = cluster(tx, w)? else {
        return Ok(None);
    };
    if logic::takes_init(&cluster, node) {
        if let Cluster::K3s(k) = &mut cluster {
            k.init_node = Some(node.name.clone());
        }
        put_cluster(tx, w, &cluster)?;
    }
    Ok(Some(cluster))
}

/// See [`super::Store::claim_first_server`].
pub(crate) fn claim_first_server(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    name: &str,
) -> Result<Option<Cluster>, StoreError> {
    match w.reg.get(name).cloned() {
        Some(node) => claim(tx, w, &node),
        None => cluster(tx, w),
    }
}

/// See [`super::Store::set_cluster`].
pub(crate) fn set_cluster(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    c: &Cluster,
    replace: bool,
) -> Result<bool, StoreError> {
    if cluster(tx, w)?.is_some() && !replace {
        return Ok(false);
    }
    put_cluster(tx, w, c)?;
    Ok(true)
}

/// See [`super::Store::clear_cluster`].
pub(crate) fn clear_cluster(tx: &mut dyn Tx, w: &mut Work<'_>) -> Result<bool, StoreError> {
    let removed = tx.delete_cluster()?;
    w.pending.cluster = Some(None);
    Ok(removed)
}

/// See [`super::Store::revoke_node`].
pub(crate) fn revoke_node(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    name: &str,
) -> Result<bool, StoreError> {
    let Some(mut node) = w.reg.get(name).cloned() else {
        return Ok(false);
    };
    if !node.revoked {
        node.revoked = true;
        let v = bump(w);
        tx.update_node(&node, Some(v), false)?;
        changed(w, node, v);
    }
    Ok(true)
}

/// See [`super::Store::heartbeat`]: the node and the nodes its observations name, looked
/// up by name and key; one row written (more only when a peer is proven public).
pub(crate) fn heartbeat(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    name: &str,
    hb: &HeartbeatInput,
    now: u64,
    fresh: u64,
) -> Result<(), StoreError> {
    let Some((before, before_changed)) = w.reg.get_changed(name).map(|(n, c)| (n.clone(), c))
    else {
        return Err(StoreError::Refused(super::Refusal::UnknownNode));
    };
    // Only a node whose key an observation names can be proven public by it: the
    // decision over these few is the decision over all nodes.
    let mut concerned = vec![before.clone()];
    for o in &hb.observations {
        if let Some(n) = w.reg.with_key(&o.public_key) {
            if !concerned.iter().any(|c| c.name == n.name) {
                concerned.push(n.clone());
            }
        }
    }
    let changes =
        logic::apply_heartbeat(name, hb, &concerned, now, fresh).map_err(StoreError::Refused)?;
    let v = if changes.bump { Some(bump(w)) } else { None };
    let own = v.filter(|_| logic::peer_entry(&before) != logic::peer_entry(&changes.node));
    tx.update_node(&changes.node, own, true)?;
    match own {
        Some(v) => changed(w, changes.node, v),
        None => w.reg.put(changes.node, before_changed),
    }
    for other in concerned
        .iter()
        .filter(|n| changes.verified.contains(&n.name))
    {
        let mut after = other.clone();
        after.public_verified = true;
        let moved = v.filter(|_| logic::peer_entry(other) != logic::peer_entry(&after));
        tx.update_node(&after, moved, false)?;
        match moved {
            Some(v) => changed(w, after, v),
            None => {
                let c = w.reg.get_changed(&after.name).map_or(0, |(_, c)| c);
                w.reg.put(after, c);
            }
        }
    }
    Ok(())
}

/// See [`super::Store::expire`]: the database picks the silent nodes (heartbeats may
/// have arrived through another replica) and marks them in one statement, so a site
/// going dark at once costs one write, not one per node.
pub(crate) fn expire(
    tx: &mut dyn Tx,
    w: &mut Work<'_>,
    now: u64,
    ttl: u64,
) -> Result<usize, StoreError> {
    let v = w.reg.version.saturating_add(1);
    let names = tx.expire_silent(now.saturating_sub(ttl), v)?;
    if names.is_empty() {
        return Ok(0);
    }
    bump(w);
    for name in &names {
        // The registry is exact in everything but last_heartbeat, which this leaves.
        let Some(mut node) = w.reg.get(name).cloned() else {
            w.reg.invalidate();
            return Err(StoreError::Corrupt(format!(
                "table nodes, row {name:?}: expired, but not in the writer's registry"
            )));
        };
        node.online = false;
        changed(w, node, v);
    }
    Ok(names.len())
}
