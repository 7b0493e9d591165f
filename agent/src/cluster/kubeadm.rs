//! kubeadm's `JoinConfiguration` (`/run/kiln/kubeadm/join.yaml`) in the API version the
//! image's kubeadm reads (`kubeadm.k8s.io/v1beta3` or `v1beta4`), from the image's
//! `[cluster]` settings, kiln-enroll's join parameters and the node's overlay facts.
//! Pure: the supervisor writes what this returns.
//!
//! The two versions differ, for what is written here, only in `kubeletExtraArgs`: a
//! map of name → value in v1beta3, a list of `{name, value}` in v1beta4.

use std::collections::BTreeMap;

use kiln_enroll_proto::api::{KubeadmJoin, Role};

use super::yaml::{self, map_of, s, Node};
use super::{NodeFacts, CONTAINERD_SOCKET};
use crate::config::settings::{ClusterSettings, KubeadmApi};

/// The API server port a control-plane node binds.
pub const BIND_PORT: u64 = 6443;

/// The kubelet's extra arguments in order: `node-ip` (the overlay address),
/// `node-labels` (when there are labels), then the image's `kubelet_args`.
pub fn kubelet_args(
    settings: &ClusterSettings,
    labels: &BTreeMap<String, String>,
    node: &NodeFacts,
) -> Vec<(String, String)> {
    let mut out = vec![("node-ip".to_string(), node.address_v4.to_string())];
    if !labels.is_empty() {
        let joined: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(("node-labels".to_string(), joined.join(",")));
    }
    out.extend(settings.kubelet_args.iter().cloned());
    out
}

/// The `JoinConfiguration` for a node of `role` with `labels` (image and token merged).
pub fn join_config(
    settings: &ClusterSettings,
    role: Role,
    labels: &BTreeMap<String, String>,
    join: &KubeadmJoin,
    node: &NodeFacts,
) -> String {
    let args = kubelet_args(settings, labels, node);
    let extra = match settings.kubeadm_api {
        KubeadmApi::V1beta3 => Node::Map(args.into_iter().map(|(k, v)| (k, s(v))).collect()),
        KubeadmApi::V1beta4 => Node::List(
            args.into_iter()
                .map(|(k, v)| map_of(vec![("name", s(k)), ("value", s(v))]))
                .collect(),
        ),
    };
    let hashes = join.ca_cert_hashes.iter().map(s).collect();
    let mut root = vec![
        (
            "apiVersion",
            s(format!("kubeadm.k8s.io/{}", settings.kubeadm_api.name())),
        ),
        ("kind", s("JoinConfiguration")),
        (
            "discovery",
            map_of(vec![
                (
                    "bootstrapToken",
                    map_of(vec![
                        ("apiServerEndpoint", s(&join.api_server_endpoint)),
                        ("token", s(&join.token)),
                        ("caCertHashes", Node::List(hashes)),
                    ]),
                ),
                ("tlsBootstrapToken", s(&join.token)),
            ]),
        ),
        (
            "nodeRegistration",
            map_of(vec![
                ("name", s(&node.name)),
                ("criSocket", s(CONTAINERD_SOCKET)),
                ("kubeletExtraArgs", extra),
            ]),
        ),
    ];
    if role == Role::Server {
        let mut cp = vec![(
            "localAPIEndpoint",
            map_of(vec![
                ("advertiseAddress", s(node.address_v4.to_string())),
                ("bindPort", Node::Int(BIND_PORT)),
            ]),
        )];
        if let Some(k) = &join.certificate_key {
            cp.push(("certificateKey", s(k)));
        }
        root.push(("controlPlane", map_of(cp)));
    }
    yaml::document(&map_of(root))
}
