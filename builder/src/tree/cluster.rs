//! What `[cluster]` changes in the root besides agent.toml: the
//! distribution's /etc folder becomes a link into the writable /var, and
//! the units and programs `kiln-cluster` starts must be there.

use std::path::{Path, PathBuf};

use super::{FileTree, Kind, Node, TreeError};
use crate::profile::Cluster;

/// Where unit files may be, in the order systemd prefers them.
const UNIT_DIRS: [&str; 2] = ["etc/systemd/system", "usr/lib/systemd/system"];

/// `[cluster]` cannot be honoured with this root.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A unit or program the join needs is not in the image.
    #[error(
        "{profile}: [cluster] kind = \"{kind}\" needs {what} in the image, but it is not there; {hint}"
    )]
    Missing {
        /// The profile.
        profile: PathBuf,
        /// `k3s` or `kubeadm`.
        kind: &'static str,
        /// The missing file.
        what: String,
        /// How to add it.
        hint: String,
    },
    /// Files are in the /etc folder that becomes a link into /var.
    #[error(
        "{profile}: [cluster] kind = \"{kind}\" turns /{dir} into a link to {target} (the root \
         is read-only), but {origin} ships /{file} under it, which would be hidden; leave it out \
         with `[packages] exclude_paths = [\"/{dir}/**\"]` or remove it from the overlay"
    )]
    Shadowed {
        /// The profile.
        profile: PathBuf,
        /// `k3s` or `kubeadm`.
        kind: &'static str,
        /// The folder, tree form.
        dir: &'static str,
        /// The link target.
        target: &'static str,
        /// A file under it.
        file: String,
        /// Who shipped that file.
        origin: String,
    },
    /// The image's containerd does not support the cluster's Kubernetes version: the
    /// node would pass the build and fail its preflight.
    #[error(
        "{profile}: [cluster] runs the image's containerd {version} (from {lock}): {source}; \
         take a containerd that does from another suite ([debian] extra_suites and \
         [packages.from], see profiles/kubeadm.toml), or pin an older Kubernetes release"
    )]
    Runtime {
        /// The profile.
        profile: PathBuf,
        /// The lock the containerd package comes from.
        lock: PathBuf,
        /// The locked package version.
        version: String,
        /// What containerd's matrix says.
        source: kiln_contract::kubernetes::Unsupported,
    },
    /// The locked containerd's version cannot be read.
    #[error("{lock}: containerd {version}: {source}")]
    RuntimeVersion {
        /// The lock.
        lock: PathBuf,
        /// The locked package version.
        version: String,
        /// Why it does not parse.
        source: kiln_contract::kubernetes::VersionError,
    },
    /// A tree operation failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
}

/// Checks, before anything is built, that the containerd `version` the lock pins (when
/// the cluster runs the image's containerd) supports the cluster's Kubernetes version,
/// by containerd's matrix: the check `kiln-agent preflight` repeats on the node.
pub fn check_runtime(
    cluster: &Cluster,
    version: Option<&str>,
    profile: &Path,
    lock: &Path,
) -> Result<(), ClusterError> {
    use kiln_contract::kubernetes::{check, ContainerdVersion};
    let Some(version) = version.filter(|_| cluster.uses_image_containerd()) else {
        return Ok(());
    };
    let parsed =
        ContainerdVersion::parse(version).map_err(|source| ClusterError::RuntimeVersion {
            lock: lock.to_path_buf(),
            version: version.to_string(),
            source,
        })?;
    check(cluster.kubernetes, parsed).map_err(|source| ClusterError::Runtime {
        profile: profile.to_path_buf(),
        lock: lock.to_path_buf(),
        version: version.to_string(),
        source,
    })?;
    Ok(())
}

/// Makes the /etc link of `cluster`'s kind and checks that its units and
/// programs are in `tree`. `profile` is named in errors. Run it after the
/// overlays and artifacts, before units are enabled.
pub fn apply(tree: &mut FileTree, cluster: &Cluster, profile: &Path) -> Result<(), ClusterError> {
    let kind = cluster.kind().name();
    let (dir, target) = cluster.etc_link();
    // Empty directories (e.g. made by an overlay's parents) may go; files
    // would vanish from the running node, which a person must decide about.
    let below = tree
        .descendants(dir)
        .find(|(_, n)| n.kind != Kind::Dir)
        .map(|(p, n)| (p.clone(), n.origin.clone()));
    let itself = tree
        .get(dir)
        .filter(|n| n.kind != Kind::Dir && n.kind != Kind::Symlink(target.to_string()))
        .map(|n| (dir.to_string(), n.origin.clone()));
    if let Some((file, origin)) = below.or(itself) {
        return Err(ClusterError::Shadowed {
            profile: profile.to_path_buf(),
            kind,
            dir,
            target,
            file,
            origin,
        });
    }
    let epoch = tree.epoch();
    tree.insert(dir, Node::symlink(target, epoch, "kiln:cluster"))?;

    let missing = |what: String, hint: String| ClusterError::Missing {
        profile: profile.to_path_buf(),
        kind,
        what,
        hint,
    };
    for unit in cluster.required_units() {
        let found = UNIT_DIRS
            .iter()
            .any(|d| tree.read(&format!("{d}/{unit}")).is_ok());
        if !found {
            return Err(missing(
                format!("the unit {unit}"),
                format!(
                    "add the \"{kind}\" overlay to `overlays` (it ships /usr/lib/systemd/system/{unit})"
                ),
            ));
        }
    }
    for prog in cluster.required_programs() {
        if tree.read(prog).is_err() {
            return Err(missing(
                format!("/{prog}"),
                format!("add an [[artifact]] with dest = \"/{prog}\" (see profiles/k3s.toml)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{ClusterFlavor, Containerd, ImageRole, KubeadmApi};

    fn cluster(flavor: ClusterFlavor) -> Cluster {
        Cluster {
            flavor,
            role: ImageRole::Any,
            labels: Default::default(),
            kubelet_args: vec![],
            kubernetes: "1.36".parse().unwrap(),
        }
    }

    fn k3s() -> Cluster {
        cluster(ClusterFlavor::K3s {
            containerd: Containerd::Image,
        })
    }

    fn file(t: &mut FileTree, p: &str) {
        t.insert(p, Node::file(b"x".to_vec(), 0o755, 1, "overlay:k3s"))
            .unwrap();
    }

    #[test]
    fn the_locked_containerd_must_support_the_clusters_kubernetes() {
        let (p, l) = (Path::new("p.toml"), Path::new("p.lock"));
        let kubeadm = |v: &str| {
            let mut c = cluster(ClusterFlavor::Kubeadm {
                api: KubeadmApi::V1beta4,
            });
            c.kubernetes = v.parse().unwrap();
            c
        };
        // trixie's 1.7.24 is listed for 1.33, not for 1.34 (1.7.28+).
        check_runtime(&kubeadm("1.33.5"), Some("1.7.24~ds1-10"), p, l).unwrap();
        let err = check_runtime(&kubeadm("1.34.2"), Some("1.7.24~ds1-10"), p, l)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("p.toml: [cluster] runs the image's containerd 1.7.24~ds1-10 (from p.lock): containerd 1.7.24 does not support Kubernetes 1.34.2"), "{err}");
        assert!(
            err.contains("1.7.28") && err.contains("[packages.from]"),
            "{err}"
        );
        // forky's 2.1.9 is.
        check_runtime(&kubeadm("1.34.2"), Some("2.1.9+ds1-5"), p, l).unwrap();
        // k3s with its own containerd, or no containerd at all: nothing to check here.
        let own = cluster(ClusterFlavor::K3s {
            containerd: Containerd::K3s,
        });
        check_runtime(&own, Some("1.6.20~ds1-1"), p, l).unwrap();
        check_runtime(&kubeadm("1.34.2"), None, p, l).unwrap();
        let bad = check_runtime(&kubeadm("1.34.2"), Some("banana"), p, l).unwrap_err();
        assert!(
            bad.to_string().starts_with("p.lock: containerd banana: "),
            "{bad}"
        );
    }

    #[test]
    fn k3s_links_etc_rancher_when_units_and_binary_are_there() {
        let mut t = FileTree::new(9);
        file(&mut t, "usr/lib/systemd/system/k3s-agent.service");
        file(&mut t, "usr/lib/systemd/system/k3s-server.service");
        file(&mut t, "usr/bin/k3s");
        t.insert("etc/rancher", Node::dir(0o755, 1, "overlay:x"))
            .unwrap();
        apply(&mut t, &k3s(), Path::new("p.toml")).unwrap();
        let n = t.get("etc/rancher").unwrap();
        assert_eq!(n.kind, Kind::Symlink("/var/lib/rancher/etc".into()));
        assert_eq!((n.uid, n.mtime), (0, 9));
        // Idempotent.
        apply(&mut t, &k3s(), Path::new("p.toml")).unwrap();
    }

    #[test]
    fn missing_units_name_the_overlay_and_missing_binary_the_artifact() {
        let mut t = FileTree::new(9);
        let e = apply(&mut t, &k3s(), Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("p.toml:")
                && e.contains("k3s-agent.service")
                && e.contains("\"k3s\" overlay"),
            "{e}"
        );
        file(&mut t, "usr/lib/systemd/system/k3s-agent.service");
        file(&mut t, "usr/lib/systemd/system/k3s-server.service");
        let e = apply(&mut t, &k3s(), Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/usr/bin/k3s") && e.contains("[[artifact]]"),
            "{e}"
        );

        let kubeadm = cluster(ClusterFlavor::Kubeadm {
            api: KubeadmApi::V1beta4,
        });
        let e = apply(&mut t, &kubeadm, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kubelet.service") && e.contains("\"kubeadm\" overlay"),
            "{e}"
        );
    }

    #[test]
    fn files_under_the_linked_folder_are_refused() {
        let mut t = FileTree::new(9);
        t.insert(
            "etc/kubernetes/manifests/x.yaml",
            Node::file(b"x".to_vec(), 0o644, 1, "pkg:kubelet"),
        )
        .unwrap();
        let kubeadm = cluster(ClusterFlavor::Kubeadm {
            api: KubeadmApi::V1beta3,
        });
        let e = apply(&mut t, &kubeadm, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pkg:kubelet")
                && e.contains("etc/kubernetes/manifests/x.yaml")
                && e.contains("exclude_paths"),
            "{e}"
        );
    }
}
