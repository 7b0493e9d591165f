//! The root filesystem: the [`FileTree`] written as ext4 by `mkext4` (pure
//! Rust, deterministic), with ownership, modes and device nodes from the
//! tree, never from the host.

use std::collections::HashMap;

use mkext4::{FsBuilder, InodeCount, InodeHandle, Meta, Options, RegionSink, SpecialKind, ROOT};

use crate::tree::{file_name, parent, FileTree, Kind, Node};

/// Errors of the ext4 step.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// mkext4 refused an entry.
    #[error("ext4: /{path}: {message}")]
    Entry {
        /// The tree path.
        path: String,
        /// mkext4's message.
        message: String,
    },
    /// The layout or the write failed.
    #[error("ext4: {0}")]
    Build(String),
    /// A hard link points at something that is not a regular file in the tree.
    #[error("ext4: /{path}: hard link to /{target}, which is not a regular file in the image")]
    DanglingHardlink {
        /// The link.
        path: String,
        /// Its target.
        target: String,
    },
}

/// Identity of the filesystem (all derived by the caller, never random).
#[derive(Debug, Clone)]
pub struct Ext4Options {
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Volume label (at most 16 bytes).
    pub label: String,
    /// Superblock and fs-owned inode timestamps.
    pub epoch: i64,
}

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct Ext4Summary {
    /// Size of the filesystem in bytes.
    pub size: u64,
    /// Bytes of file data.
    pub data_bytes: u64,
    /// Inodes in use (entries minus hard links).
    pub inodes: u64,
}

const BLOCK: u64 = 4096;

/// The smallest filesystem kiln writes (a quarter of it holds the journal).
const MIN_SIZE: u64 = 16 << 20;

/// The inode count the filesystem gets for this tree: the entries plus
/// headroom, so size estimates and the real layout agree.
fn inode_count(tree: &FileTree) -> u32 {
    let n = tree
        .iter()
        .filter(|(_, n)| !matches!(n.kind, Kind::Hardlink(_)))
        .count() as u64;
    (n + n / 8 + 64).min(u32::MAX as u64) as u32
}

/// A filesystem size (bytes, MiB-aligned) that holds the tree with a small
/// margin: blocks for data, directories and long symlinks, inode tables,
/// journal and per-group metadata. The root is read-only, so free space is
/// only waste; [`write()`] grows the size if the estimate falls short.
pub fn estimate_size(tree: &FileTree) -> u64 {
    let mut blocks: u64 = 0;
    let mut dir_bytes: HashMap<&str, u64> = HashMap::new();
    for (path, node) in tree.iter() {
        match &node.kind {
            Kind::File(d) => blocks += (d.len() as u64).div_ceil(BLOCK),
            Kind::Symlink(t) if t.len() >= 60 => blocks += 1,
            _ => {}
        }
        if !path.is_empty() {
            *dir_bytes.entry(parent(path)).or_default() +=
                8 + (file_name(path).len() as u64).next_multiple_of(4);
        }
    }
    let dirs = tree.iter().filter(|(_, n)| n.kind == Kind::Dir).count() as u64;
    blocks += dirs + dir_bytes.values().map(|b| b.div_ceil(BLOCK)).sum::<u64>();
    let inode_bytes = inode_count(tree) as u64 * 256;
    let journal = 1024 * BLOCK;
    let raw = blocks * BLOCK + inode_bytes + journal;
    // Group descriptors, bitmaps, extent index blocks and htree nodes.
    let total = raw + raw / 25 + (4 << 20);
    // The fixed 4 MiB journal may be at most a quarter of the filesystem.
    total.max(MIN_SIZE).next_multiple_of(1 << 20)
}

fn meta(n: &Node) -> Meta {
    Meta::new((n.mode & 0o7777) as u16, n.uid, n.gid, (n.mtime, 0))
}

/// Writes the tree as an ext4 filesystem of `size` bytes into `sink`
/// (offsets relative to the filesystem start).
pub fn write<S: RegionSink>(
    tree: &FileTree,
    size: u64,
    opts: &Ext4Options,
    sink: &mut S,
) -> Result<Ext4Summary, Ext4Error> {
    let mut o = Options::new(size, opts.uuid, opts.epoch);
    o.label = Some(opts.label.chars().take(16).collect());
    o.reserved_percent = 0;
    o.journal_blocks = Some(1024);
    o.inodes = InodeCount::Exact(inode_count(tree));
    let mut b = FsBuilder::new(o).map_err(|e| Ext4Error::Build(e.to_string()))?;
    let entry_err = |path: &str, e: mkext4::Error| Ext4Error::Entry {
        path: path.to_string(),
        message: e.to_string(),
    };

    let mut handles: HashMap<&str, InodeHandle> = HashMap::new();
    handles.insert("", ROOT);
    let mut fills: Vec<(InodeHandle, &[u8])> = Vec::new();
    let mut links: Vec<(&str, &str)> = Vec::new();
    let mut inodes = 0u64;
    for (path, node) in tree.iter() {
        if path.is_empty() {
            b.set_meta(ROOT, meta(node))
                .map_err(|e| entry_err(path, e))?;
            inodes += 1;
            continue;
        }
        let Some(&dir) = handles.get(parent(path)) else {
            return Err(Ext4Error::Entry {
                path: path.clone(),
                message: "parent directory missing from the tree".into(),
            });
        };
        let name = file_name(path);
        let m = meta(node);
        let h = match &node.kind {
            Kind::Dir => b.mkdir(dir, name, m),
            Kind::File(data) => {
                let h = b.file(dir, name, m, data.len() as u64);
                if let Ok(h) = h {
                    if !data.is_empty() {
                        fills.push((h, data));
                    }
                }
                h
            }
            Kind::Symlink(t) => b.symlink(dir, name, t, m),
            Kind::CharDev { major, minor } => b.mknod(
                dir,
                name,
                m,
                SpecialKind::Char {
                    major: *major,
                    minor: *minor,
                },
            ),
            Kind::BlockDev { major, minor } => b.mknod(
                dir,
                name,
                m,
                SpecialKind::Block {
                    major: *major,
                    minor: *minor,
                },
            ),
            Kind::Fifo => b.mknod(dir, name, m, SpecialKind::Fifo),
            Kind::Hardlink(t) => {
                links.push((path, t));
                continue;
            }
        }
        .map_err(|e| entry_err(path, e))?;
        for (k, v) in &node.xattrs {
            b.set_xattr(h, k, v).map_err(|e| entry_err(path, e))?;
        }
        handles.insert(path, h);
        inodes += 1;
    }
    // Hard links last: their target may sort after them.
    for (path, target) in links {
        let target_handle = match tree.get(target).map(|n| &n.kind) {
            Some(Kind::File(_)) => handles.get(target).copied(),
            _ => None,
        }
        .ok_or_else(|| Ext4Error::DanglingHardlink {
            path: path.to_string(),
            target: target.to_string(),
        })?;
        let dir = handles[parent(path)];
        b.hardlink(dir, file_name(path), target_handle)
            .map_err(|e| entry_err(path, e))?;
    }
    let layout = b.seal().map_err(|e| Ext4Error::Build(e.to_string()))?;
    let mut w = layout
        .writer(sink)
        .map_err(|e| Ext4Error::Build(e.to_string()))?;
    let mut data_bytes = 0;
    for (h, data) in fills {
        data_bytes += data.len() as u64;
        let mut r: &[u8] = data;
        w.fill(h, &mut r)
            .map_err(|e| Ext4Error::Build(e.to_string()))?;
    }
    w.finish().map_err(|e| Ext4Error::Build(e.to_string()))?;
    Ok(Ext4Summary {
        size,
        data_bytes,
        inodes,
    })
}

/// Whether a build error means the filesystem was too small (so a larger size may work).
pub fn is_out_of_space(e: &Ext4Error) -> bool {
    let msg = e.to_string();
    msg.contains("too small") || msg.contains("image full") || msg.contains("inodes needed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample_tree() -> FileTree {
        let mut t = FileTree::new(1_700_000_000);
        t.insert(
            "usr/bin/tool",
            Node::file(vec![0xAB; 10_000], 0o4755, 1, "t"),
        )
        .unwrap();
        t.insert(
            "usr/bin/tool2",
            Node {
                kind: Kind::Hardlink("usr/bin/tool".into()),
                ..Node::file(Vec::new(), 0o4755, 1, "t")
            },
        )
        .unwrap();
        t.insert(
            "usr/bin/a-link",
            Node {
                kind: Kind::Hardlink("usr/bin/tool".into()),
                ..Node::file(Vec::new(), 0o4755, 1, "t")
            },
        )
        .unwrap();
        t.insert(
            "etc/shadow",
            Node {
                uid: 0,
                gid: 42,
                ..Node::file(b"root:*:1::::::\n".to_vec(), 0o640, 1, "t")
            },
        )
        .unwrap();
        t.insert("bin", Node::symlink("usr/bin", 1, "t")).unwrap();
        t.insert(
            "etc/long",
            Node::symlink(format!("/{}", "x".repeat(100)), 1, "t"),
        )
        .unwrap();
        t.insert(
            "dev/console",
            Node {
                kind: Kind::CharDev { major: 5, minor: 1 },
                ..Node::file(Vec::new(), 0o600, 1, "t")
            },
        )
        .unwrap();
        t.insert("var/empty", Node::file(Vec::new(), 0o644, 1, "t"))
            .unwrap();
        for i in 0..300 {
            t.insert(
                &format!("usr/share/many/f{i:04}"),
                Node::file(format!("{i}").into_bytes(), 0o644, 1, "t"),
            )
            .unwrap();
        }
        t
    }

    fn build(t: &FileTree) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("root.ext4");
        let size = estimate_size(t);
        let mut sink = mkext4::sink::FileSink::create(&img, size).unwrap();
        let opts = Ext4Options {
            uuid: [7; 16],
            label: "root-x86_64".into(),
            epoch: 1_700_000_000,
        };
        let s = write(t, size, &opts, &mut sink).unwrap();
        assert_eq!(
            s.data_bytes,
            10_000
                + 15
                + (0..300)
                    .map(|i: i32| i.to_string().len() as u64)
                    .sum::<u64>()
        );
        drop(sink);
        (d, img)
    }

    #[test]
    fn e2fsck_accepts_it_and_debugfs_sees_owners_modes_and_links() {
        let t = sample_tree();
        let (_d, img) = build(&t);
        let out = Command::new("e2fsck")
            .args(["-fn"])
            .arg(&img)
            .output()
            .expect("e2fsck (e2fsprogs) is needed");
        assert!(
            out.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stat = |p: &str| {
            let o = Command::new("debugfs")
                .args(["-R", &format!("stat {p}")])
                .arg(&img)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let s = stat("/usr/bin/tool");
        assert!(s.contains("Mode:  04755"), "{s}");
        assert!(s.contains("Links: 3"), "{s}");
        let s = stat("/etc/shadow");
        assert!(
            s.contains("Group:    42") && s.contains("Mode:  0640"),
            "{s}"
        );
        let s = stat("/dev/console");
        assert!(
            s.contains("character special") && s.contains("5, 1")
                || s.contains("Device major/minor number: 05:01"),
            "{s}"
        );
    }

    #[test]
    fn same_tree_gives_same_bytes() {
        let t = sample_tree();
        let (_a, ia) = build(&t);
        let (_b, ib) = build(&t);
        assert_eq!(std::fs::read(ia).unwrap(), std::fs::read(ib).unwrap());
    }

    #[test]
    fn too_small_is_reported_as_out_of_space() {
        let mut t = FileTree::new(1);
        t.insert("big", Node::file(vec![1u8; 3 << 20], 0o644, 1, "t"))
            .unwrap();
        let mut sink = mkext4::sink::VecSink::default();
        let opts = Ext4Options {
            uuid: [1; 16],
            label: "x".into(),
            epoch: 1,
        };
        let e = write(&t, 6 << 20, &opts, &mut sink).unwrap_err();
        assert!(is_out_of_space(&e), "{e}");
    }
}
