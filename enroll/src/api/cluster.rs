//! `GET /v1/cluster`: the calling node's role, labels and the join parameters of its role
//! as they are now, so a node enrolled before the cluster was set (or a k3s worker
//! waiting for the first server) learns them by asking again. The enrollment answer
//! carries the same through [`join_of`].

use kiln_enroll_proto::api::{ClusterJoin, Join};

use super::{auth, Api, Failure};
use crate::http::{Request, Response};
use crate::store::{logic, Cluster, NodeRecord};

pub(super) fn handle(
    api: &Api,
    req: &Request,
    node: &mut Option<String>,
) -> Result<Response, Failure> {
    let me = auth::node(api, req)?;
    *node = Some(me.name.clone());
    let answer = ClusterJoin {
        role: me.role,
        labels: me.labels.clone(),
        join: join_of(api, &me)?,
    };
    Ok(Response::json(200, &answer))
}

/// The join parameters for `node`'s role, None without a cluster. A server node that
/// finds a k3s cluster without a first server becomes it here (one transaction, so of
/// several asking at once exactly one does).
pub(super) fn join_of(api: &Api, node: &NodeRecord) -> Result<Option<Join>, Failure> {
    let during = "reading the cluster";
    let Some(mut cluster) = api.store.cluster().map_err(|e| Failure::store(e, during))? else {
        return Ok(None);
    };
    if logic::takes_init(&cluster, node) {
        match api
            .store
            .claim_first_server(&node.name)
            .map_err(|e| Failure::store(e, "choosing the first server"))?
        {
            Some(c) => cluster = c,
            // Removed meanwhile.
            None => return Ok(None),
        }
    }
    let first = match &cluster {
        Cluster::K3s(k) if k.server_url.is_none() => match &k.init_node {
            Some(name) if *name == node.name => Some(node.clone()),
            Some(name) => api
                .store
                .node(name)
                .map_err(|e| Failure::store(e, during))?,
            None => None,
        },
        _ => None,
    };
    Ok(Some(logic::join_for(&cluster, node, first.as_ref())))
}
