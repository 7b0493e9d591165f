//! Images for k3s's embedded containerd.
//!
//! With `[cluster] kind = "k3s"` and `containerd = "k3s"` the node has no containerd of its
//! own for `kiln-images.service` to import into (the profile must not enable that unit,
//! see `profile::cluster`). k3s imports every image archive it finds in its airgap folder,
//! [`K3S_IMAGES_DIR`], into its containerd's `k8s.io` namespace each time that containerd
//! starts, before its kubelet runs, and again when a file there changes. So the build
//! links the archives (which stay in the read-only root, under [`IMAGES_DIR`]) into that
//! folder with a tmpfiles.d file, [`K3S_LINKS_FILE`], which systemd applies at every boot:
//! k3s is started much later, by kiln-cluster once the node has enrolled, so the links are
//! there whenever it starts.
//!
//! Why not `kiln-images.service` on k3s's socket: that unit would have to wait for k3s,
//! which starts after enrollment (minutes, or hours for a node enrolled later), so a
//! bounded wait can give up too early and a long one holds the boot's multi-user.target;
//! and an import racing k3s's own start can come after the kubelet has already tried to
//! run a pod with the image. k3s's import has neither problem.

use super::{OciArchive, OciError, IMAGES_DIR};
use crate::tree::{FileTree, Node};
use kiln_contract::agent_config::{self, ClusterKind, Containerd, SettingsFile};

/// k3s's airgap folder: its `agent/images` under its data dir (the default
/// `/var/lib/rancher/k3s`).
pub const K3S_IMAGES_DIR: &str = "/var/lib/rancher/k3s/agent/images";

/// The tmpfiles.d file that links the archives into [`K3S_IMAGES_DIR`].
pub const K3S_LINKS_FILE: &str = "usr/lib/tmpfiles.d/kiln-k3s-images.conf";

/// Whether the root's agent.toml (written from the profile earlier in the tree stage) says
/// the node runs k3s on its embedded containerd.
pub fn k3s_imports(root: &FileTree) -> bool {
    let path = agent_config::PATH.trim_start_matches('/');
    // The build writes agent.toml from validated types before the images; a root without
    // one (a test's bare tree) has no cluster.
    let Ok(bytes) = root.read(path) else {
        return false;
    };
    let file: Option<SettingsFile> = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| toml::from_str(t).ok());
    file.and_then(|f| f.cluster).is_some_and(|c| {
        c.kind == ClusterKind::K3s && c.containerd.unwrap_or(Containerd::Image) == Containerd::K3s
    })
}

/// The text of [`K3S_LINKS_FILE`] for archives named `files` (under [`IMAGES_DIR`]).
pub fn k3s_links(files: &[String]) -> String {
    let mut text = String::from(
        "# Written by kiln: [cluster] containerd = \"k3s\". k3s imports the archives in its\n\
         # airgap folder into its containerd (namespace k8s.io) each time that containerd\n\
         # starts; the archives stay in the read-only root.\n",
    );
    text.push_str(&format!("d {K3S_IMAGES_DIR} 0755 root root -\n"));
    for f in files {
        // L+ replaces what an earlier image left at the same name.
        text.push_str(&format!(
            "L+ {K3S_IMAGES_DIR}/{f} - - - - /{IMAGES_DIR}/{f}\n"
        ));
    }
    text
}

/// Writes [`K3S_LINKS_FILE`] for `built` into `root` when [`k3s_imports`] says k3s imports
/// the images; returns whether it did.
pub fn hand_to_k3s(
    root: &mut FileTree,
    built: &[OciArchive],
    epoch: i64,
) -> Result<bool, OciError> {
    if built.is_empty() || !k3s_imports(root) {
        return Ok(false);
    }
    let mut files: Vec<String> = built.iter().map(|a| a.reference.file_name()).collect();
    files.sort();
    root.insert(
        K3S_LINKS_FILE,
        Node::file(k3s_links(&files).into_bytes(), 0o644, epoch, "kiln:oci"),
    )
    .map_err(|source| OciError::Tree {
        reference: K3S_LINKS_FILE.to_string(),
        source: Box::new(source),
    })?;
    Ok(true)
}
