//! Every store operation written once against [`Tx`], the few row reads and writes a
//! backend provides inside one of its transactions. The decisions come from [`logic`].

use super::logic;
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
    /// One node.
    fn node(&mut self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    /// Inserts a node.
    fn insert_node(&mut self, n: &NodeRecord) -> Result<(), StoreError>;
    /// Writes the changeable fields (revoked, last_heartbeat, online, endpoints,
    /// public_endpoint, public_verified) of the node with `n.name`.
    fn update_node(&mut self, n: &NodeRecord) -> Result<(), StoreError>;
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

fn bump(tx: &mut dyn Tx) -> Result<u64, StoreError> {
    let v = tx.version()?.saturating_add(1);
    tx.set_version(v)?;
    Ok(v)
}

/// Writes `generated` unless a CA is stored, then reads back whichever is stored.
pub(crate) fn store_ca(tx: &mut dyn Tx, generated: &CaPem) -> Result<CaPem, StoreError> {
    tx.insert_ca_if_absent(generated)?;
    tx.ca()?.ok_or_else(|| {
        StoreError::Corrupt("table ca: the CA just written cannot be read back".to_string())
    })
}

/// See [`super::Store::revoke_token`].
pub(crate) fn revoke_token(tx: &mut dyn Tx, id: &str) -> Result<bool, StoreError> {
    match tx.token(id)? {
        Some(t) => tx.update_token(id, true, t.uses_left),
        None => Ok(false),
    }
}

/// See [`super::Store::enroll`].
pub(crate) fn enroll(
    tx: &mut dyn Tx,
    input: &EnrollInput,
    pools: &Pools,
) -> Result<EnrollOutcome, StoreError> {
    let token = tx.token(&input.token_id)?;
    let nodes = tx.nodes()?;
    let outcome =
        logic::decide_enroll(input, token.as_ref(), &nodes, pools).map_err(StoreError::Refused)?;
    if let (EnrollOutcome::New(node), Some(t)) = (&outcome, &token) {
        tx.insert_node(node)?;
        tx.update_token(&t.id, t.revoked, t.uses_left.saturating_sub(1))?;
        bump(tx)?;
    }
    // In the same transaction as the node's record, so of servers enrolling at once
    // exactly one starts the cluster.
    claim(tx, outcome.node())?;
    Ok(outcome)
}

/// Makes `node` the k3s cluster's first server when it may be (see
/// [`logic::takes_init`]); the cluster as it is afterwards.
fn claim(tx: &mut dyn Tx, node: &NodeRecord) -> Result<Option<Cluster>, StoreError> {
    let Some(mut cluster) = tx.cluster()? else {
        return Ok(None);
    };
    if logic::takes_init(&cluster, node) {
        if let Cluster::K3s(k) = &mut cluster {
            k.init_node = Some(node.name.clone());
        }
        tx.put_cluster(&cluster)?;
    }
    Ok(Some(cluster))
}

/// See [`super::Store::claim_first_server`].
pub(crate) fn claim_first_server(
    tx: &mut dyn Tx,
    name: &str,
) -> Result<Option<Cluster>, StoreError> {
    match tx.node(name)? {
        Some(node) => claim(tx, &node),
        None => tx.cluster(),
    }
}

/// See [`super::Store::set_cluster`].
pub(crate) fn set_cluster(tx: &mut dyn Tx, c: &Cluster, replace: bool) -> Result<bool, StoreError> {
    if tx.cluster()?.is_some() && !replace {
        return Ok(false);
    }
    tx.put_cluster(c)?;
    Ok(true)
}

/// See [`super::Store::revoke_node`].
pub(crate) fn revoke_node(tx: &mut dyn Tx, name: &str) -> Result<bool, StoreError> {
    let Some(mut node) = tx.node(name)? else {
        return Ok(false);
    };
    if !node.revoked {
        node.revoked = true;
        tx.update_node(&node)?;
        bump(tx)?;
    }
    Ok(true)
}

/// See [`super::Store::heartbeat`].
pub(crate) fn heartbeat(
    tx: &mut dyn Tx,
    name: &str,
    hb: &HeartbeatInput,
    now: u64,
    fresh: u64,
) -> Result<(), StoreError> {
    let nodes = tx.nodes()?;
    let changes =
        logic::apply_heartbeat(name, hb, &nodes, now, fresh).map_err(StoreError::Refused)?;
    tx.update_node(&changes.node)?;
    for other in nodes.iter().filter(|n| changes.verified.contains(&n.name)) {
        let mut other = other.clone();
        other.public_verified = true;
        tx.update_node(&other)?;
    }
    if changes.bump {
        bump(tx)?;
    }
    Ok(())
}

/// See [`super::Store::expire`].
pub(crate) fn expire(tx: &mut dyn Tx, now: u64, ttl: u64) -> Result<usize, StoreError> {
    let nodes = tx.nodes()?;
    let names = logic::expired(&nodes, now, ttl);
    for node in nodes.iter().filter(|n| names.contains(&n.name)) {
        let mut node = node.clone();
        node.online = false;
        tx.update_node(&node)?;
    }
    if !names.is_empty() {
        bump(tx)?;
    }
    Ok(names.len())
}
