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
    /// A tree operation failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
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
