//! `[cluster]`: how a node made from this image joins Kubernetes. The
//! builder validates it and copies it into the agent's settings
//! (`/usr/lib/kiln/agent.toml`), where `kiln-cluster` reads it.

use kiln_contract::agent_config::{check_unique_kubelet_args, parse_kubelet_arg, ClusterTable};
use kiln_contract::names::{check_label_key, check_label_value};
use std::collections::BTreeMap;
use std::path::Path;

use super::{dto, ProfileError};

// The names are agent.toml's, so the enums are the contract's.
pub use kiln_contract::agent_config::{ClusterKind, Containerd, ImageRole, KubeadmApi};

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
    pub role: ImageRole,
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
    pub fn to_table(&self) -> ClusterTable {
        let (containerd, kubeadm_api) = match self.flavor {
            ClusterFlavor::K3s { containerd } => (Some(containerd), None),
            ClusterFlavor::Kubeadm { api } => (None, Some(api)),
        };
        ClusterTable {
            kind: self.kind(),
            role: Some(self.role),
            labels: Some(self.labels.clone()),
            kubelet_args: Some(self.kubelet_args.clone()),
            containerd,
            kubeadm_api,
        }
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

/// Validates `[cluster]` of the profile at `path`.
pub(super) fn validate(path: &Path, raw: &dto::ClusterFile) -> Result<Cluster, ProfileError> {
    let invalid = |field: &str, message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field: format!("cluster.{field}"),
        message,
    };
    let kind = ClusterKind::from_name(&raw.kind).ok_or_else(|| {
        invalid(
            "kind",
            format!("{:?}: expected \"k3s\" or \"kubeadm\"", raw.kind),
        )
    })?;
    let role = match raw.role.as_deref() {
        None => ImageRole::Any,
        Some(name) => ImageRole::from_name(name).ok_or_else(|| {
            invalid(
                "role",
                format!(
                    "{name:?}: expected \"any\" (the enrollment token decides), \"worker\" or \"server\""
                ),
            )
        })?,
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
                None => Containerd::Image,
                Some(name) => Containerd::from_name(name).ok_or_else(|| {
                    invalid(
                        "containerd",
                        format!(
                            "{name:?}: expected \"image\" (the image's containerd) or \"k3s\" (k3s's embedded one)"
                        ),
                    )
                })?,
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
                None => KubeadmApi::V1beta4,
                Some(name) => KubeadmApi::from_name(name).ok_or_else(|| {
                    invalid(
                        "kubeadm_api",
                        format!("{name:?}: expected \"v1beta3\" or \"v1beta4\""),
                    )
                })?,
            };
            ClusterFlavor::Kubeadm { api }
        }
    };
    for (k, v) in &raw.labels {
        check_label_key(k).map_err(|m| invalid(&format!("labels.{k:?}"), m))?;
        check_label_value(v).map_err(|m| invalid(&format!("labels.{k:?}"), m))?;
    }
    for (i, a) in raw.kubelet_args.iter().enumerate() {
        parse_kubelet_arg(a).map_err(|e| invalid(&format!("kubelet_args[{i}]"), e.to_string()))?;
    }
    // kubeadm v1beta3 passes kubelet arguments as a map, so the agent refuses a name given
    // twice; refuse it here rather than build an image whose join cannot start.
    if flavor
        == (ClusterFlavor::Kubeadm {
            api: KubeadmApi::V1beta3,
        })
    {
        let names = raw
            .kubelet_args
            .iter()
            .filter_map(|a| a.split_once('=').map(|(n, _)| n));
        check_unique_kubelet_args(names).map_err(|e| invalid("kubelet_args", e.to_string()))?;
    }
    Ok(Cluster {
        flavor,
        role,
        labels: raw.labels.clone(),
        kubelet_args: raw.kubelet_args.clone(),
    })
}
