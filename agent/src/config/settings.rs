//! The image-side agent settings the builder writes from the profile's `[agent]` section
//! (`/usr/lib/kiln/agent.toml`):
//!
//! ```toml
//! schema = 1
//! channels = ["cmdline", "esp", "cidata", "fw_cfg", "cloud"]   # precedence, highest first
//!
//! [cluster]                     # optional: join Kubernetes (kiln-cluster.service)
//! kind = "k3s"                  # "k3s" | "kubeadm"
//! role = "any"                  # "any" (the token decides) | "worker" | "server"
//! labels = { "kiln.dev/pool" = "edge" }
//! kubelet_args = ["max-pods=110"]
//! containerd = "image"          # k3s only: "image" | "k3s"
//! kubeadm_api = "v1beta4"       # kubeadm only: "v1beta3" | "v1beta4"
//! ```
//!
//! A missing file means all five channels in that order and no cluster.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// Where the builder puts the settings.
pub const SETTINGS_PATH: &str = "/usr/lib/kiln/agent.toml";

/// A configuration channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    /// `kiln.*` on the kernel command line.
    Cmdline,
    /// `kiln.toml` on the boot disk's EFI system partition.
    Esp,
    /// A NoCloud volume labelled `cidata`.
    Cidata,
    /// QEMU's fw_cfg item `opt/kiln/config`.
    FwCfg,
    /// The cloud provider's user-data (detected from DMI).
    Cloud,
}

/// Every channel in the default precedence, highest first.
pub const ALL_CHANNELS: [Channel; 5] = [
    Channel::Cmdline,
    Channel::Esp,
    Channel::Cidata,
    Channel::FwCfg,
    Channel::Cloud,
];

impl Channel {
    /// The name used in agent.toml and on the console.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Cmdline => "cmdline",
            Channel::Esp => "esp",
            Channel::Cidata => "cidata",
            Channel::FwCfg => "fw_cfg",
            Channel::Cloud => "cloud",
        }
    }

    /// The channel called `name`.
    pub fn from_name(name: &str) -> Option<Channel> {
        ALL_CHANNELS.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsDto {
    schema: Option<i64>,
    channels: Option<Vec<String>>,
    cluster: Option<ClusterDto>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterDto {
    kind: String,
    role: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    kubelet_args: Option<Vec<String>>,
    containerd: Option<String>,
    kubeadm_api: Option<String>,
}

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

/// The Kubernetes distribution the image joins with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClusterKind {
    /// k3s (`k3s agent` / `k3s server`).
    K3s,
    /// kubeadm (`kubeadm join`) with the image's kubelet.
    Kubeadm,
}

impl ClusterKind {
    /// The name in agent.toml and on the console.
    pub fn name(self) -> &'static str {
        match self {
            ClusterKind::K3s => "k3s",
            ClusterKind::Kubeadm => "kubeadm",
        }
    }
}

/// What the image may be in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ImageRole {
    /// Whatever the node's token says.
    Any,
    /// Workers only: a server token is refused.
    Worker,
    /// Servers only: a worker token is refused.
    Server,
}

impl ImageRole {
    /// The name in agent.toml.
    pub fn name(self) -> &'static str {
        match self {
            ImageRole::Any => "any",
            ImageRole::Worker => "worker",
            ImageRole::Server => "server",
        }
    }
}

/// Which containerd k3s uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Containerd {
    /// The image's own containerd (its socket is given to k3s).
    Image,
    /// The containerd k3s embeds.
    K3s,
}

/// The kubeadm configuration API version the image's kubeadm reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KubeadmApi {
    /// `kubeadm.k8s.io/v1beta3` (kubeletExtraArgs is a map).
    V1beta3,
    /// `kubeadm.k8s.io/v1beta4` (kubeletExtraArgs is a list of name/value).
    V1beta4,
}

impl KubeadmApi {
    /// `v1beta3` or `v1beta4`.
    pub fn name(self) -> &'static str {
        match self {
            KubeadmApi::V1beta3 => "v1beta3",
            KubeadmApi::V1beta4 => "v1beta4",
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
}

/// Kubelet arguments kiln-cluster sets itself; a profile may not set them.
pub const RESERVED_KUBELET_ARGS: &[&str] = &["node-ip", "node-labels"];

fn parse_cluster(dto: ClusterDto) -> Result<ClusterSettings, String> {
    let kind = match dto.kind.as_str() {
        "k3s" => ClusterKind::K3s,
        "kubeadm" => ClusterKind::Kubeadm,
        other => {
            return Err(format!(
                "cluster.kind = {other:?}: must be \"k3s\" or \"kubeadm\""
            ))
        }
    };
    let role = match dto.role.as_deref() {
        None | Some("any") => ImageRole::Any,
        Some("worker") => ImageRole::Worker,
        Some("server") => ImageRole::Server,
        Some(other) => {
            return Err(format!(
                "cluster.role = {other:?}: must be \"any\" (the token decides), \"worker\" or \
                 \"server\""
            ))
        }
    };
    let labels = dto.labels.unwrap_or_default();
    for (k, v) in &labels {
        if let Err(why) = kiln_contract::names::check_label(k, v) {
            return Err(format!("cluster.labels: {why}"));
        }
    }
    let mut kubelet_args = Vec::new();
    for arg in dto.kubelet_args.unwrap_or_default() {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(format!(
                "cluster.kubelet_args: {arg:?} is not \"name=value\" (e.g. \"max-pods=110\", \
                 without the leading --)"
            ));
        };
        let bad = |c: char| c == '=' || c.is_whitespace() || c.is_control();
        if name.is_empty() || name.starts_with('-') || name.chars().any(bad) {
            return Err(format!(
                "cluster.kubelet_args: {arg:?}: the name {name:?} must be a kubelet flag name \
                 without the leading -- (e.g. \"max-pods=110\")"
            ));
        }
        if value.chars().any(char::is_control) {
            return Err(format!(
                "cluster.kubelet_args: {arg:?}: the value has control characters"
            ));
        }
        if RESERVED_KUBELET_ARGS.contains(&name) {
            return Err(format!(
                "cluster.kubelet_args: {arg:?}: kiln-cluster sets {name} itself (node-ip is the \
                 overlay address, node-labels come from cluster.labels and the token); remove it"
            ));
        }
        kubelet_args.push((name.to_string(), value.to_string()));
    }
    let containerd = match (kind, dto.containerd.as_deref()) {
        (_, None | Some("image")) => Containerd::Image,
        (ClusterKind::K3s, Some("k3s")) => Containerd::K3s,
        (ClusterKind::Kubeadm, Some("k3s")) => {
            return Err(
                "cluster.containerd = \"k3s\" needs kind = \"k3s\"; kubeadm always uses the \
                 image's containerd (remove containerd or set it to \"image\")"
                    .to_string(),
            )
        }
        (_, Some(other)) => {
            return Err(format!(
                "cluster.containerd = {other:?}: must be \"image\" (the image's containerd) or \
                 \"k3s\" (k3s's own)"
            ))
        }
    };
    let kubeadm_api = match (kind, dto.kubeadm_api.as_deref()) {
        (_, None) => KubeadmApi::V1beta4,
        (ClusterKind::K3s, Some(_)) => {
            return Err("cluster.kubeadm_api is for kind = \"kubeadm\" only; remove it".to_string())
        }
        (ClusterKind::Kubeadm, Some("v1beta3")) => KubeadmApi::V1beta3,
        (ClusterKind::Kubeadm, Some("v1beta4")) => KubeadmApi::V1beta4,
        (ClusterKind::Kubeadm, Some(other)) => {
            return Err(format!(
                "cluster.kubeadm_api = {other:?}: must be \"v1beta3\" (kubeadm before 1.31) or \
                 \"v1beta4\""
            ))
        }
    };
    if kind == ClusterKind::Kubeadm && kubeadm_api == KubeadmApi::V1beta3 {
        // v1beta3's kubeletExtraArgs is a map: a repeated name would silently lose values.
        for (i, (name, _)) in kubelet_args.iter().enumerate() {
            if kubelet_args[..i].iter().any(|(n, _)| n == name) {
                return Err(format!(
                    "cluster.kubelet_args: {name} is given twice; kubeadm_api = \"v1beta3\" \
                     takes each name once (use v1beta4 for repeated flags)"
                ));
            }
        }
    }
    Ok(ClusterSettings {
        kind,
        role,
        labels,
        kubelet_args,
        containerd,
        kubeadm_api,
    })
}

/// Parses the settings file's text; the error says what is wrong (the caller names the
/// file).
pub fn parse_settings(text: &str) -> Result<Settings, String> {
    let dto: SettingsDto = toml::from_str(text).map_err(|e| e.message().trim().to_string())?;
    if let Some(v) = dto.schema.filter(|v| *v != 1) {
        return Err(format!(
            "schema = {v}: this agent understands schema 1 only"
        ));
    }
    let cluster = dto.cluster.map(parse_cluster).transpose()?;
    let Some(names) = dto.channels else {
        return Ok(Settings {
            cluster,
            ..Settings::default()
        });
    };
    let mut channels = Vec::new();
    for name in &names {
        let Some(c) = Channel::from_name(name) else {
            let known: Vec<&str> = ALL_CHANNELS.iter().map(|c| c.name()).collect();
            return Err(format!(
                "channels: unknown channel {name:?} (known: {})",
                known.join(", ")
            ));
        };
        if channels.contains(&c) {
            return Err(format!("channels: {name:?} is listed twice"));
        }
        channels.push(c);
    }
    Ok(Settings { channels, cluster })
}
