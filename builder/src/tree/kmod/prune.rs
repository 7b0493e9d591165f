//! Removes the modules the selection left out.

use std::collections::BTreeSet;

use super::select::ModuleSelection;
use super::{is_module_path, KmodError};
use crate::tree::{parent, FileTree, Kind};

/// What [`prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Module files removed.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
}

/// Removes every module file (`.ko`, compressed or not) under `lib/modules/<kver>` that is not selected, and
/// the directories that become empty.
pub fn prune(tree: &mut FileTree, selection: &ModuleSelection) -> Result<Pruned, KmodError> {
    let keep: BTreeSet<&str> = selection.all.iter().map(|m| m.path.as_str()).collect();
    let mut removed = Pruned::default();
    let drop: Vec<(String, u64)> = tree
        .descendants(&selection.dir)
        .filter(|(p, _)| is_module_path(p) && !keep.contains(p.as_str()))
        .map(|(p, n)| {
            let size = match &n.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            };
            (p.clone(), size)
        })
        .collect();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for (p, size) in drop {
        tree.remove_subtree(&p);
        removed.files += 1;
        removed.bytes += size;
        dirs.insert(parent(&p).to_string());
    }
    // Deepest first, so a parent sees its children gone.
    let kernel_dir = format!("{}/kernel", selection.dir);
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        let mut d = d;
        while d.starts_with(&kernel_dir) && d != kernel_dir && tree.children(&d).is_empty() {
            tree.remove_subtree(&d);
            d = parent(&d).to_string();
        }
    }
    tracing::debug!(
        files = removed.files,
        bytes = removed.bytes,
        "pruned kernel modules"
    );
    Ok(removed)
}
