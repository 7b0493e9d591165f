//! The initramfs the UKI carries (`.initrd`): the agent as /init, a console
//! node, and the boot modules with the order the init loads them in. It is
//! built from the finished root, so its modules are the root's own files.

use std::borrow::Cow;
use std::sync::Arc;

use crate::fs::cpio::{self, CpioError};
use crate::tree::kmod::{module_bytes, plain_module_path, KmodError, ModuleSelection};
use crate::tree::{FileTree, Kind, Node, TreeError};

/// Errors while building the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A boot module could not be read from the root, or a path clashed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The archive could not be written.
    #[error(transparent)]
    Cpio(#[from] CpioError),
    /// A compressed boot module could not be decompressed.
    #[error(transparent)]
    Module(#[from] KmodError),
}

/// The initramfs, as the newc cpio archive the kernel unpacks.
#[derive(Debug, Clone)]
pub struct Initramfs {
    /// The archive.
    pub cpio: Vec<u8>,
}

/// Builds the initramfs: `agent` as /init and the boot modules of
/// `modules`, read from `root`; every time stamp is `epoch`.
pub fn build(
    root: &FileTree,
    agent: &Arc<[u8]>,
    modules: &ModuleSelection,
    epoch: i64,
) -> Result<Initramfs, InitramfsError> {
    let tree = initramfs_tree(root, agent, modules, epoch)?;
    let mut cpio = Vec::new();
    cpio::write_newc(&tree, &mut cpio)?;
    Ok(Initramfs { cpio })
}

fn initramfs_tree(
    root: &FileTree,
    agent: &Arc<[u8]>,
    modules: &ModuleSelection,
    epoch: i64,
) -> Result<FileTree, InitramfsError> {
    let mut t = FileTree::new(epoch);
    let o = "kiln:initramfs";
    for d in ["dev", "proc", "sys", "sysroot", "run", "tmp", "etc/kiln"] {
        t.insert(d, Node::dir(0o755, epoch, o))?;
    }
    t.insert(
        "dev/console",
        Node {
            kind: Kind::CharDev { major: 5, minor: 1 },
            ..Node::file(Vec::new(), 0o600, epoch, o)
        },
    )?;
    t.insert("init", Node::file(agent.clone(), 0o755, epoch, o))?;
    let mut load = String::from("# Kernel modules the init loads, in dependency order.\n");
    for m in &modules.boot {
        // Root paths are usr/lib/modules/...; the initramfs has no /usr merge to care about.
        // The init loads modules with finit_module as they are: a compressed module of
        // the root goes in plain.
        let src = &m.path;
        let plain = plain_module_path(src);
        let dst = plain.strip_prefix("usr/").unwrap_or(plain).to_string();
        let file = root.read(src)?;
        let data: Arc<[u8]> = match module_bytes(src, &file)? {
            Cow::Borrowed(_) => file.clone(),
            Cow::Owned(elf) => Arc::from(elf),
        };
        t.insert(&dst, Node::file(data, 0o644, epoch, o))?;
        load.push_str(&dst);
        load.push('\n');
    }
    t.insert(
        "etc/kiln/modules.load",
        Node::file(load.into_bytes(), 0o644, epoch, o),
    )?;
    Ok(t)
}
