//! `[cluster]`: how a node made from this image joins Kubernetes. The
//! builder validates it and copies it into the agent's settings
//! (`/usr/lib/kiln/agent.toml`), where `kiln-cluster` reads it.

use kiln_contract::agent_config::{check_unique_kubelet_args, parse_kubelet_arg, ClusterTable};
use kiln_contract::names::{check_label_key, check_label_value};
use std::collections::BTreeMap;
use std::path::Path;

use super::{dto, Artifact, ArtifactSource, ProfileError};
use crate::arch::Arch;
pub use kiln_contract::kubernetes::KubeVersion;

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
    /// The cluster's Kubernetes version: the pinned artifacts' release where their URLs
    /// name it, else the profile's `kubernetes`.
    pub kubernetes: KubeVersion,
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
            kubernetes: Some(self.kubernetes),
        }
    }

    /// Whether the node runs the image's own containerd (kubeadm always does; k3s with
    /// `containerd = "image"`), which must then be in the image.
    pub fn uses_image_containerd(&self) -> bool {
        match self.flavor {
            ClusterFlavor::K3s { containerd } => containerd == Containerd::Image,
            ClusterFlavor::Kubeadm { .. } => true,
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
        programs(self.kind())
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

/// Validates `[cluster]` of the profile at `path`; `artifacts` are the profile's
/// (validated) `[[artifact]]`s, whose release URLs give the Kubernetes version.
pub(super) fn validate(
    path: &Path,
    raw: &dto::ClusterFile,
    artifacts: &[Artifact],
) -> Result<Cluster, ProfileError> {
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
    let kubernetes = kubernetes_version(path, kind, raw.kubernetes.as_deref(), artifacts)?;
    Ok(Cluster {
        flavor,
        role,
        labels: raw.labels.clone(),
        kubelet_args: raw.kubelet_args.clone(),
        kubernetes,
    })
}

/// The programs a cluster of `kind` runs, as tree paths; their release is the cluster's
/// Kubernetes release.
fn programs(kind: ClusterKind) -> &'static [&'static str] {
    match kind {
        ClusterKind::K3s => &["usr/bin/k3s"],
        ClusterKind::Kubeadm => &["usr/bin/kubeadm", "usr/bin/kubelet"],
    }
}

/// The Kubernetes release a download URL names in one of its path segments: k3s's
/// `.../releases/download/v1.36.4%2Bk3s1/k3s`, dl.k8s.io's `.../release/v1.35.0/bin/...`.
/// `Ok(None)` when no segment is a release (`vMAJOR.MINOR.PATCH`, suffix allowed); an
/// error when two segments name different ones.
pub fn release_in_url(url: &str) -> Result<Option<KubeVersion>, String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let mut found: Option<KubeVersion> = None;
    // The first segment is the host.
    for segment in path.split('/').skip(1) {
        // k3s's tags have a `+`, which URLs carry percent-encoded.
        let segment = segment.replace("%2B", "+").replace("%2b", "+");
        if !segment
            .strip_prefix('v')
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        {
            continue;
        }
        let Ok(v) = KubeVersion::parse(&segment) else {
            continue;
        };
        if v.patch.is_none() {
            continue;
        }
        match found {
            Some(f) if f != v => {
                return Err(format!(
                    "{url:?} names two releases, v{f} and v{v}: use the release's own URL"
                ))
            }
            _ => found = Some(v),
        }
    }
    Ok(found)
}

/// `name` or `name, arch`, as the messages here name an artifact (in parentheses).
fn artifact_label(a: &Artifact) -> String {
    match a.arch {
        Some(arch) => format!("{}, {arch}", a.name),
        None => a.name.clone(),
    }
}

/// The cluster's Kubernetes version: read from the release URLs of the k3s or
/// kubelet/kubeadm artifacts, checked against `stated` (the profile's `kubernetes`), or
/// `stated` alone when no such URL names a release (`path` artifacts carry none).
fn kubernetes_version(
    path: &Path,
    kind: ClusterKind,
    stated: Option<&str>,
    artifacts: &[Artifact],
) -> Result<KubeVersion, ProfileError> {
    let invalid = |message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field: "cluster.kubernetes".into(),
        message,
    };
    let stated = stated
        .map(|s| KubeVersion::parse(s).map_err(|e| invalid(e.to_string())))
        .transpose()?;
    let programs = programs(kind);
    // (version, index, artifact, url) of the first artifact whose URL names a release.
    let mut derived: Option<(KubeVersion, usize, &Artifact, &str)> = None;
    for (index, a) in artifacts.iter().enumerate() {
        let ArtifactSource::Url(url) = &a.source else {
            continue;
        };
        if !programs.contains(&a.dest.as_str()) {
            continue;
        }
        let bad = |message: String| ProfileError::Artifact {
            path: path.to_path_buf(),
            index,
            name: a.name.clone(),
            field: "url".into(),
            message,
        };
        let Some(v) = release_in_url(url).map_err(bad)? else {
            continue;
        };
        match derived {
            None => derived = Some((v, index, a, url)),
            // Every arch's k3s, and a node's kubelet and kubeadm, are one release.
            Some((first, j, other, _)) if first != v => {
                return Err(bad(format!(
                    "names Kubernetes {v}, but artifact[{j}] ({}) names {first}: pin every \
                     {} artifact to one Kubernetes release",
                    artifact_label(other),
                    programs
                        .iter()
                        .map(|p| format!("/{p}"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )));
            }
            Some(_) => {}
        }
    }
    match (stated, derived) {
        (Some(s), Some((d, index, a, url))) if !s.agrees_with(&d) => Err(invalid(format!(
            "\"{s}\" disagrees with Kubernetes {d}, which artifact[{index}] ({}) pins by its \
             URL {url}; state \"{d}\" (or a prefix of it, \"{}.{}\"), or drop `kubernetes` \
             and let the artifacts decide",
            artifact_label(a),
            d.major,
            d.minor
        ))),
        // The artifact's release is the more precise of the two.
        (_, Some((d, ..))) => Ok(d),
        (Some(s), None) => Ok(s),
        (None, None) => Err(invalid(format!(
            "not set, and no [[artifact]] for {} comes from a release URL it could be read \
             from (a `path` artifact carries no version): state the cluster's version, e.g. \
             kubernetes = \"{}\"; preflight checks containerd against it",
            programs
                .iter()
                .map(|p| format!("/{p}"))
                .collect::<Vec<_>>()
                .join(" or "),
            match kind {
                ClusterKind::K3s => "1.36",
                ClusterKind::Kubeadm => "1.34",
            }
        ))),
    }
}

/// The Debian package that ships containerd (and containerd.service).
const CONTAINERD_PACKAGE: &str = "containerd";

/// What the profile installs, for [`check_runtime`].
pub(super) struct Installs<'a> {
    /// `[packages] include`.
    pub include: &'a [String],
    /// `[packages.arch.<arch>] include`.
    pub arch_include: &'a BTreeMap<Arch, Vec<String>>,
    /// The profile's arches.
    pub arches: &'a [Arch],
}

impl Installs<'_> {
    /// Whether every arch's image gets `package` by name.
    fn every_arch(&self, package: &str) -> bool {
        self.include.iter().any(|p| p == package)
            || self.arches.iter().all(|a| {
                self.arch_include
                    .get(a)
                    .is_some_and(|l| l.iter().any(|p| p == package))
            })
    }

    /// The field that names `package`, if any list does.
    fn named_at(&self, package: &str) -> Option<String> {
        if let Some(i) = self.include.iter().position(|p| p == package) {
            return Some(format!("packages.include[{i}]"));
        }
        self.arch_include.iter().find_map(|(a, l)| {
            l.iter()
                .position(|p| p == package)
                .map(|i| format!("packages.arch.{a}.include[{i}]"))
        })
    }
}

/// Checks that the container runtime the profile's units and `[cluster]` use is the one
/// it installs: containerd.service and kiln-images.service need Debian's containerd, and
/// so does a cluster on the image's containerd; a k3s cluster on k3s's embedded
/// containerd must not install Debian's as well.
///
/// A package that arrives only as another's dependency does not count: a profile that
/// relies on containerd names it.
pub(super) fn check_runtime(
    path: &Path,
    cluster: Option<&Cluster>,
    installs: &Installs<'_>,
    enable: &[String],
) -> Result<(), ProfileError> {
    let invalid = |field: String, message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field,
        message,
    };
    let has_containerd = installs.every_arch(CONTAINERD_PACKAGE);
    let k3s_embedded = cluster.is_some_and(|c| !c.uses_image_containerd());
    if k3s_embedded {
        // A second containerd would be dead weight with its own socket, which crictl,
        // ctr and an operator would find first; refused rather than warned about, as a
        // warning is easy to miss in a build log and the fix is one line.
        if let Some(field) = installs.named_at(CONTAINERD_PACKAGE) {
            return Err(invalid(
                field,
                "\"containerd\": [cluster] containerd = \"k3s\" runs k3s's embedded \
                 containerd, so Debian's would be a second, unused runtime: remove \
                 \"containerd\" (and \"runc\", which k3s embeds too) from [packages] and \
                 containerd.service from [systemd] enable (`k3s ctr` and `k3s crictl` reach \
                 k3s's), or set containerd = \"image\" to run k3s on Debian's"
                    .into(),
            ));
        }
    }
    let enabled = |unit: &str| enable.iter().position(|u| u == unit);
    if has_containerd {
        // kiln runs no maintainer scripts: a unit runs only when the profile enables it.
        if cluster.is_some_and(Cluster::uses_image_containerd)
            && enabled("containerd.service").is_none()
        {
            return Err(invalid(
                "systemd.enable".into(),
                "[cluster] runs the kubelet on the image's containerd, but \
                 \"containerd.service\" is not enabled: add it to [systemd] enable"
                    .into(),
            ));
        }
        return Ok(());
    }
    if let Some(i) = enabled("containerd.service") {
        let fix = if k3s_embedded {
            "remove it: with [cluster] containerd = \"k3s\" k3s starts its own containerd"
        } else {
            "add \"containerd\" (and \"runc\") to [packages] include, or remove the unit"
        };
        return Err(invalid(
            format!("systemd.enable[{i}]"),
            format!(
                "\"containerd.service\" is enabled, but no [packages] include names the \
                 \"containerd\" package that ships it: {fix}"
            ),
        ));
    }
    if let Some(i) = enabled("kiln-images.service") {
        let fix = if k3s_embedded {
            "remove it from [systemd] enable: with [cluster] containerd = \"k3s\" kiln \
             hands the images to k3s, which imports them from \
             /var/lib/rancher/k3s/agent/images each time its containerd starts"
        } else {
            "add \"containerd\" (and \"runc\") to [packages] include, or remove the unit"
        };
        return Err(invalid(
            format!("systemd.enable[{i}]"),
            format!(
                "\"kiln-images.service\" imports the [[container_image]]s into the image's \
                 containerd (it requires containerd.service), but no [packages] include names \
                 \"containerd\": {fix}"
            ),
        ));
    }
    match cluster {
        Some(c) if c.uses_image_containerd() => {
            let (field, what) = match c.kind() {
                ClusterKind::K3s => (
                    "cluster.containerd",
                    "[cluster] containerd = \"image\" (the default) runs k3s on the image's \
                     containerd",
                ),
                ClusterKind::Kubeadm => (
                    "cluster.kind",
                    "[cluster] kind = \"kubeadm\" runs the kubelet on the image's containerd",
                ),
            };
            let or = match c.kind() {
                ClusterKind::K3s => ", or set containerd = \"k3s\" to use k3s's embedded one",
                ClusterKind::Kubeadm => "",
            };
            Err(invalid(
                field.into(),
                format!(
                    "{what}, but no [packages] include names \"containerd\": add \
                     \"containerd\" and \"runc\" to [packages] include and \
                     \"containerd.service\" to [systemd] enable{or}"
                ),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
