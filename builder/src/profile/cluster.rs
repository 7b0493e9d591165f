//! `[cluster]`: how a node made from this image joins Kubernetes. The
//! builder validates it and copies it into the agent's settings
//! (`/usr/lib/kiln/agent.toml`), where `kiln-cluster` reads it.

use kiln_contract::names::{check_label_key, check_label_value};
use std::collections::BTreeMap;
use std::path::Path;

use super::{dto, ProfileError};

/// The Kubernetes distribution the node joins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClusterKind {
    /// k3s (`/usr/bin/k3s`, units `k3s-agent`/`k3s-server`).
    K3s,
    /// kubeadm (`/usr/bin/kubeadm`, `kubelet`, unit `kubelet`).
    Kubeadm,
}

impl ClusterKind {
    /// The name used in profiles and agent.toml.
    pub fn name(self) -> &'static str {
        match self {
            ClusterKind::K3s => "k3s",
            ClusterKind::Kubeadm => "kubeadm",
        }
    }
}

/// What nodes of this image may become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClusterRole {
    /// Whatever the enrollment token says.
    Any,
    /// Only workers.
    Worker,
    /// Only control-plane servers.
    Server,
}

impl ClusterRole {
    /// The name used in profiles and agent.toml.
    pub fn name(self) -> &'static str {
        match self {
            ClusterRole::Any => "any",
            ClusterRole::Worker => "worker",
            ClusterRole::Server => "server",
        }
    }
}

/// Which containerd k3s talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Containerd {
    /// The image's own containerd (`unix:///run/containerd/containerd.sock`).
    Image,
    /// The containerd embedded in k3s.
    K3s,
}

impl Containerd {
    /// The name used in profiles and agent.toml.
    pub fn name(self) -> &'static str {
        match self {
            Containerd::Image => "image",
            Containerd::K3s => "k3s",
        }
    }
}

/// The kubeadm configuration API version the join file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KubeadmApi {
    /// `kubeadm.k8s.io/v1beta3`.
    V1beta3,
    /// `kubeadm.k8s.io/v1beta4`.
    V1beta4,
}

impl KubeadmApi {
    /// The name used in profiles and agent.toml.
    pub fn name(self) -> &'static str {
        match self {
            KubeadmApi::V1beta3 => "v1beta3",
            KubeadmApi::V1beta4 => "v1beta4",
        }
    }
}

/// Distribution-specific settings; each only exists for its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFlavor {
    /// `kind = "k3s"` and its containerd choice (default: the image's).
    K3s {
        /// Which containerd k3s uses.
        containerd: Containerd,
    },
    /// `kind = "kubeadm"` and its config API (default: v1beta4).
    Kubeadm {
        /// The kubeadm config API version.
        api: KubeadmApi,
    },
}

/// A validated `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// k3s or kubeadm, with their own settings.
    pub flavor: ClusterFlavor,
    /// What nodes of this image may become.
    pub role: ClusterRole,
    /// Node labels (the token's win on a clash).
    pub labels: BTreeMap<String, String>,
    /// Extra kubelet arguments, `key=value`.
    pub kubelet_args: Vec<String>,
}

impl Cluster {
    /// k3s or kubeadm.
    pub fn kind(&self) -> ClusterKind {
        match self.flavor {
            ClusterFlavor::K3s { .. } => ClusterKind::K3s,
            ClusterFlavor::Kubeadm { .. } => ClusterKind::Kubeadm,
        }
    }

    /// The `[cluster]` table of agent.toml. Defaults are written out, so
    /// the agent reads the values the builder validated, not its own guesses.
    pub fn to_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{} = {}", s(k), s(v)))
            .collect();
        let args: Vec<String> = self.kubelet_args.iter().map(|a| s(a)).collect();
        let mut out = format!(
            "[cluster]\nkind = {}\nrole = {}\nlabels = {{ {} }}\nkubelet_args = [{}]\n",
            s(self.kind().name()),
            s(self.role.name()),
            labels.join(", "),
            args.join(", ")
        );
        match self.flavor {
            ClusterFlavor::K3s { containerd } => {
                out.push_str(&format!("containerd = {}\n", s(containerd.name())));
            }
            ClusterFlavor::Kubeadm { api } => {
                out.push_str(&format!("kubeadm_api = {}\n", s(api.name())));
            }
        }
        out
    }

    /// Root-relative units that must be in the image for this kind.
    pub fn required_units(&self) -> &'static [&'static str] {
        match self.kind() {
            ClusterKind::K3s => &["k3s-agent.service", "k3s-server.service"],
            ClusterKind::Kubeadm => &["kubelet.service"],
        }
    }

    /// Programs the units and `kiln-cluster` run, as root-relative paths.
    pub fn required_programs(&self) -> &'static [&'static str] {
        match self.kind() {
            ClusterKind::K3s => &["usr/bin/k3s"],
            ClusterKind::Kubeadm => &["usr/bin/kubeadm", "usr/bin/kubelet"],
        }
    }

    /// The read-only /etc folder the distribution writes to, and the link
    /// target on the writable /var that replaces it.
    pub fn etc_link(&self) -> (&'static str, &'static str) {
        match self.kind() {
            ClusterKind::K3s => ("etc/rancher", "/var/lib/rancher/etc"),
            ClusterKind::Kubeadm => ("etc/kubernetes", "/var/lib/kubernetes/etc"),
        }
    }
}

/// kubelet flags kiln-cluster sets on the node; the agent refuses them in
/// agent.toml, so the build refuses them first.
const RESERVED_KUBELET_ARGS: [&str; 2] = ["node-ip", "node-labels"];

/// Validates `[cluster]` of the profile at `path`.
pub(super) fn validate(path: &Path, raw: &dto::ClusterFile) -> Result<Cluster, ProfileError> {
    let invalid = |field: &str, message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field: format!("cluster.{field}"),
        message,
    };
    let kind = match raw.kind.as_str() {
        "k3s" => ClusterKind::K3s,
        "kubeadm" => ClusterKind::Kubeadm,
        other => {
            return Err(invalid(
                "kind",
                format!("{other:?}: expected \"k3s\" or \"kubeadm\""),
            ))
        }
    };
    let role = match raw.role.as_deref() {
        None | Some("any") => ClusterRole::Any,
        Some("worker") => ClusterRole::Worker,
        Some("server") => ClusterRole::Server,
        Some(other) => {
            return Err(invalid(
                "role",
                format!(
                    "{other:?}: expected \"any\" (the enrollment token decides), \"worker\" or \"server\""
                ),
            ))
        }
    };
    let flavor = match kind {
        ClusterKind::K3s => {
            if raw.kubeadm_api.is_some() {
                return Err(invalid(
                    "kubeadm_api",
                    "only applies to kind = \"kubeadm\"; remove it for k3s".into(),
                ));
            }
            let containerd = match raw.containerd.as_deref() {
                None | Some("image") => Containerd::Image,
                Some("k3s") => Containerd::K3s,
                Some(other) => {
                    return Err(invalid(
                        "containerd",
                        format!(
                            "{other:?}: expected \"image\" (the image's containerd) or \"k3s\" (k3s's embedded one)"
                        ),
                    ))
                }
            };
            ClusterFlavor::K3s { containerd }
        }
        ClusterKind::Kubeadm => {
            if raw.containerd.is_some() {
                return Err(invalid(
                    "containerd",
                    "only applies to kind = \"k3s\"; kubeadm always uses the image's containerd"
                        .into(),
                ));
            }
            let api = match raw.kubeadm_api.as_deref() {
                None | Some("v1beta4") => KubeadmApi::V1beta4,
                Some("v1beta3") => KubeadmApi::V1beta3,
                Some(other) => {
                    return Err(invalid(
                        "kubeadm_api",
                        format!("{other:?}: expected \"v1beta3\" or \"v1beta4\""),
                    ))
                }
            };
            ClusterFlavor::Kubeadm { api }
        }
    };
    for (k, v) in &raw.labels {
        check_label_key(k).map_err(|m| invalid(&format!("labels.{k:?}"), m))?;
        check_label_value(v).map_err(|m| invalid(&format!("labels.{k:?}"), m))?;
    }
    for (i, a) in raw.kubelet_args.iter().enumerate() {
        check_kubelet_arg(a).map_err(|m| invalid(&format!("kubelet_args[{i}]"), m))?;
    }
    Ok(Cluster {
        flavor,
        role,
        labels: raw.labels.clone(),
        kubelet_args: raw.kubelet_args.clone(),
    })
}

/// A kubelet argument `key=value` (the flag without its dashes).
fn check_kubelet_arg(a: &str) -> Result<(), String> {
    let Some((key, value)) = a.split_once('=') else {
        return Err(format!(
            "{a:?}: write it as \"key=value\", the kubelet flag without `--`, e.g. \"max-pods=110\""
        ));
    };
    if key.is_empty()
        || key.starts_with('-')
        || !key
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    {
        return Err(format!(
            "{a:?}: the key {key:?} must be lowercase letters, digits and '-' (a kubelet \
             flag without `--`, e.g. \"max-pods\")"
        ));
    }
    if RESERVED_KUBELET_ARGS.contains(&key) {
        return Err(format!(
            "{a:?}: kiln-cluster sets {key} itself (node-ip is the overlay address, \
             node-labels come from `labels` and the token); remove it"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "{a:?}: the value has control characters; one argument per entry"
        ));
    }
    Ok(())
}
