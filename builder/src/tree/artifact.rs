//! Places `[[artifact]]` files in the root: the pinned bytes at `dest`,
//! owned by root, with the profile's mode and the build epoch as mtime so
//! the image does not depend on when or where the file was downloaded.

use std::sync::Arc;

use super::{FileTree, Node, TreeError};
use crate::profile::Artifact;

/// An artifact could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// Something (a package file, an overlay file, another artifact) is
    /// already at the artifact's dest.
    #[error(
        "artifact {artifact}: /{dest} is already in the image from {origin} (a {kind}); \
         kiln does not pick a winner: change the artifact's dest, or leave the other one out \
         (for a package file: `[packages] exclude_paths = [\"/{dest}\"]`; for an overlay \
         file: remove it from the overlay)"
    )]
    Clash {
        /// The artifact's name.
        artifact: String,
        /// The dest path (tree form).
        dest: String,
        /// Who put the entry there.
        origin: String,
        /// What the entry is.
        kind: &'static str,
    },
    /// A parent of dest is not a directory (e.g. a usr-merge symlink).
    #[error("artifact {artifact}: {error}; give a dest whose folders are real directories (e.g. /usr/bin, not /bin)")]
    Tree {
        /// The artifact's name.
        artifact: String,
        /// The tree's error (shown in the message, not chained).
        error: TreeError,
    },
}

/// The `origin` recorded for an artifact's entries.
pub fn origin(artifact: &Artifact) -> String {
    format!("artifact {}", artifact.name)
}

/// Puts `data` (the verified bytes of `artifact`) at its dest; missing
/// parent directories are created (0755, root). An entry already at dest
/// is an error naming both, unless it has exactly the same content and mode.
pub fn place(tree: &mut FileTree, artifact: &Artifact, data: Arc<[u8]>) -> Result<(), PlaceError> {
    let origin = origin(artifact);
    let node = Node::file(data, artifact.mode, tree.epoch(), origin.clone());
    if let Some(old) = tree.get(&artifact.dest) {
        if old.same_content(&node) {
            return Ok(());
        }
        return Err(PlaceError::Clash {
            artifact: artifact.name.clone(),
            dest: artifact.dest.clone(),
            origin: old.origin.clone(),
            kind: old.kind.label(),
        });
    }
    let tree_err = |error| PlaceError::Tree {
        artifact: artifact.name.clone(),
        error,
    };
    tree.ensure_parents(&artifact.dest, &origin)
        .map_err(tree_err)?;
    tree.insert(&artifact.dest, node).map_err(tree_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ArtifactSource;
    use crate::tree::Kind;

    fn k3s() -> Artifact {
        Artifact {
            name: "k3s".into(),
            source: ArtifactSource::Url("https://example.test/k3s".into()),
            sha256: "0".repeat(64),
            dest: "usr/local/bin/k3s".into(),
            mode: 0o755,
            arch: None,
        }
    }

    #[test]
    fn placed_with_mode_root_owner_epoch_mtime_and_parents() {
        let mut t = FileTree::new(1234);
        place(&mut t, &k3s(), Arc::from(&b"ELF"[..])).unwrap();
        let n = t.get("usr/local/bin/k3s").unwrap();
        assert_eq!(n.kind, Kind::File(Arc::from(&b"ELF"[..])));
        assert_eq!((n.mode, n.uid, n.gid, n.mtime), (0o755, 0, 0, 1234));
        assert_eq!(n.origin, "artifact k3s");
        let parent = t.get("usr/local/bin").unwrap();
        assert_eq!(
            (parent.kind.clone(), parent.mode, parent.mtime),
            (Kind::Dir, 0o755, 1234)
        );
    }

    #[test]
    fn clash_with_a_package_file_names_both() {
        let mut t = FileTree::new(1);
        t.insert(
            "usr/local/bin/k3s",
            Node::file(b"old".to_vec(), 0o755, 1, "pkg:k3s-deb"),
        )
        .unwrap();
        let e = place(&mut t, &k3s(), Arc::from(&b"new"[..]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("artifact k3s")
                && e.contains("pkg:k3s-deb")
                && e.contains("/usr/local/bin/k3s"),
            "{e}"
        );
        assert!(e.contains("exclude_paths"), "{e}");
        // The same bytes and mode are not a clash.
        place(&mut t, &k3s(), Arc::from(&b"old"[..])).unwrap();
    }

    #[test]
    fn a_symlinked_parent_is_refused_with_advice() {
        let mut t = FileTree::new(1);
        t.insert("usr/local", Node::symlink("/opt", 1, "pkg:x"))
            .unwrap();
        let e = place(&mut t, &k3s(), Arc::from(&b"x"[..]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("artifact k3s") && e.contains("usr/local"), "{e}");
    }
}
