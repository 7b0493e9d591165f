//! The image-side agent settings the builder writes from the profile's `[agent]` and
//! `[cluster]` sections (`/usr/lib/kiln/agent.toml`). The file's schema, its names and
//! the kubelet argument rules are the contract's ([`kiln_contract::agent_config`], which
//! shows an example); this module turns the file into the agent's settings, with the
//! defaults filled in.
//!
//! A missing file means all five channels in that order and no cluster.

use std::collections::BTreeMap;

use kiln_contract::agent_config::{
    check_unique_kubelet_args, parse_kubelet_arg, ClusterTable, SettingsFile, SCHEMA,
};
// The rest of the agent names these through this module, as it did when they were
// defined here.
pub use kiln_contract::agent_config::{
    Channel, ClusterKind, Containerd, ImageRole, KubeVersion, KubeadmApi, ALL_CHANNELS,
};

/// Where the builder puts the settings.
pub const SETTINGS_PATH: &str = kiln_contract::agent_config::PATH;

/// The agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Channels to read, highest precedence first.
    pub channels: Vec<Channel>,
    /// How the node joins Kubernetes; None: it does not (kiln-cluster idles).
    pub cluster: Option<ClusterSettings>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            channels: ALL_CHANNELS.to_vec(),
            cluster: None,
        }
    }
}

/// The `[cluster]` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    /// k3s or kubeadm.
    pub kind: ClusterKind,
    /// What the image may be.
    pub role: ImageRole,
    /// Node labels of the image (the token's labels win on a clash).
    pub labels: BTreeMap<String, String>,
    /// Extra kubelet arguments as (name, value), in the profile's order.
    pub kubelet_args: Vec<(String, String)>,
    /// Which containerd k3s uses (kubeadm always uses the image's).
    pub containerd: Containerd,
    /// kubeadm's configuration API version (unused for k3s).
    pub kubeadm_api: KubeadmApi,
    /// The cluster's Kubernetes version (None in images built before kiln wrote it:
    /// preflight then checks no runtime version).
    pub kubernetes: Option<KubeVersion>,
}

impl ClusterSettings {
    /// Whether the kubelet runs on k3s's embedded containerd rather than the image's.
    pub fn k3s_containerd(&self) -> bool {
        self.kind == ClusterKind::K3s && self.containerd == Containerd::K3s
    }
}

fn parse_cluster(table: ClusterTable) -> Result<ClusterSettings, String> {
    let kind = table.kind;
    let role = table.role.unwrap_or(ImageRole::Any);
    let labels = table.labels.unwrap_or_default();
    for (k, v) in &labels {
        if let Err(why) = kiln_contract::names::check_label(k, v) {
            return Err(format!("cluster.labels: {why}"));
        }
    }
    let mut kubelet_args = Vec::new();
    for arg in table.kubelet_args.unwrap_or_default() {
        let (name, value) =
            parse_kubelet_arg(&arg).map_err(|e| format!("cluster.kubelet_args: {e}"))?;
        kubelet_args.push((name.to_string(), value.to_string()));
    }
    let containerd = match (kind, table.containerd) {
        (_, None | Some(Containerd::Image)) => Containerd::Image,
        (ClusterKind::K3s, Some(Containerd::K3s)) => Containerd::K3s,
        (ClusterKind::Kubeadm, Some(Containerd::K3s)) => {
            return Err(
                "cluster.containerd = \"k3s\" needs kind = \"k3s\"; kubeadm always uses the \
                 image's containerd (remove containerd or set it to \"image\")"
                    .to_string(),
            )
        }
    };
    let kubeadm_api = match (kind, table.kubeadm_api) {
        (_, None) => KubeadmApi::V1beta4,
        (ClusterKind::K3s, Some(_)) => {
            return Err("cluster.kubeadm_api is for kind = \"kubeadm\" only; remove it".to_string())
        }
        (ClusterKind::Kubeadm, Some(api)) => api,
    };
    if kind == ClusterKind::Kubeadm && kubeadm_api == KubeadmApi::V1beta3 {
        check_unique_kubelet_args(kubelet_args.iter().map(|(n, _)| n.as_str()))
            .map_err(|e| format!("cluster.kubelet_args: {e}"))?;
    }
    Ok(ClusterSettings {
        kind,
        role,
        labels,
        kubelet_args,
        containerd,
        kubeadm_api,
        kubernetes: table.kubernetes,
    })
}

/// Parses the settings file's text; the error says what is wrong (the caller names the
/// file).
pub fn parse_settings(text: &str) -> Result<Settings, String> {
    let file: SettingsFile = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
    if let Some(v) = file.schema.filter(|v| *v != SCHEMA) {
        return Err(format!(
            "schema = {v}: this agent understands schema {SCHEMA} only"
        ));
    }
    let cluster = file.cluster.map(parse_cluster).transpose()?;
    let Some(list) = file.channels else {
        return Ok(Settings {
            cluster,
            ..Settings::default()
        });
    };
    let mut channels = Vec::new();
    for c in list {
        if channels.contains(&c) {
            return Err(format!("channels: {:?} is listed twice", c.name()));
        }
        channels.push(c);
    }
    Ok(Settings { channels, cluster })
}
