//! k3s's config file (`/run/kiln/k3s/config.yaml`) and token files, from the image's
//! `[cluster]` settings, kiln-enroll's join parameters and the node's overlay facts.
//! Pure: the supervisor writes what these return.
//!
//! k3s reads a config file whose keys are its long flag names; list flags take YAML
//! lists. kiln-cluster gives k3s the overlay as the node's network: `node-ip` and
//! `flannel-iface` are kiln0's, so pod traffic between nodes rides the WireGuard mesh.

use std::collections::BTreeMap;

use kiln_enroll_proto::api::{K3sJoin, Role};

use super::yaml::{self, map_of, s, Node};
use super::{NodeFacts, CONTAINERD_SOCKET, K3S_AGENT_TOKEN, K3S_CONFIG, K3S_TOKEN};
use crate::config::settings::{ClusterSettings, Containerd};
use crate::overlay::IFNAME;

/// The systemd unit that runs k3s for `role`.
pub fn unit(role: Role) -> &'static str {
    match role {
        Role::Worker => "k3s-agent.service",
        Role::Server => "k3s-server.service",
    }
}

/// `config.yaml` for a node of `role` with `labels` (image and token merged).
pub fn config(
    settings: &ClusterSettings,
    role: Role,
    labels: &BTreeMap<String, String>,
    join: &K3sJoin,
    node: &NodeFacts,
) -> String {
    let v4 = node.address_v4.to_string();
    let mut e: Vec<(&str, Node)> = Vec::new();
    if let Some(url) = &join.server_url {
        e.push(("server", s(url)));
    }
    e.push(("token-file", s(K3S_TOKEN)));
    if role == Role::Server {
        if join.agent_token.is_some() {
            e.push(("agent-token-file", s(K3S_AGENT_TOKEN)));
        }
        if join.init {
            e.push(("cluster-init", Node::Bool(true)));
        }
    }
    e.push(("node-name", s(&node.name)));
    e.push(("node-ip", s(&v4)));
    if let Some(ip) = node.external_ip {
        e.push(("node-external-ip", s(ip.to_string())));
    }
    if role == Role::Server {
        e.push(("advertise-address", s(&v4)));
        e.push(("tls-san", Node::List(vec![s(&v4), s(&node.name)])));
    }
    e.push(("flannel-iface", s(IFNAME)));
    if !labels.is_empty() {
        let l = labels.iter().map(|(k, v)| s(format!("{k}={v}"))).collect();
        e.push(("node-label", Node::List(l)));
    }
    if !settings.kubelet_args.is_empty() {
        let a = settings
            .kubelet_args
            .iter()
            .map(|(k, v)| s(format!("{k}={v}")))
            .collect();
        e.push(("kubelet-arg", Node::List(a)));
    }
    if settings.containerd == Containerd::Image {
        e.push(("container-runtime-endpoint", s(CONTAINERD_SOCKET)));
    }
    yaml::document(&map_of(e))
}

/// Every file k3s needs, as (path, contents): the config and the token(s). All hold or
/// point at secrets; the supervisor writes them root-only and deletes the tokens once
/// the node joined.
pub fn files(
    settings: &ClusterSettings,
    role: Role,
    labels: &BTreeMap<String, String>,
    join: &K3sJoin,
    node: &NodeFacts,
) -> Vec<(&'static str, Vec<u8>)> {
    let mut out = vec![
        (
            K3S_CONFIG,
            config(settings, role, labels, join, node).into_bytes(),
        ),
        (K3S_TOKEN, join.token.clone().into_bytes()),
    ];
    if let (Role::Server, Some(t)) = (role, &join.agent_token) {
        out.push((K3S_AGENT_TOKEN, t.clone().into_bytes()));
    }
    out
}
