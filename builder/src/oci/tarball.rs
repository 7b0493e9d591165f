//! Deterministic tar writing: every header field comes from the tree (or is
//! fixed), entries go in path order, and no host state (user names, umask,
//! clock) reaches the bytes.

use std::collections::BTreeSet;
use std::io;

use crate::tree::{FileTree, Kind, Node};

/// A GNU tar header with the node's metadata and no user or group names.
fn header(node: &Node, entry: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(entry);
    h.set_mode(node.mode & 0o7777);
    h.set_uid(u64::from(node.uid));
    h.set_gid(u64::from(node.gid));
    h.set_mtime(u64::try_from(node.mtime).unwrap_or(0));
    h.set_size(size);
    h
}

/// Writes `tree` as a tar stream (parents before children, paths relative,
/// directories with a trailing `/`). A hard link whose target comes later in
/// path order is stored as a copy of the target's bytes, because extracting
/// a link to a file not yet written fails.
pub fn write_tree<W: io::Write>(tree: &FileTree, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    let mut written: BTreeSet<&str> = BTreeSet::new();
    for (path, node) in tree.iter() {
        if path.is_empty() {
            continue;
        }
        match &node.kind {
            Kind::Dir => {
                let mut h = header(node, tar::EntryType::Directory, 0);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Kind::File(data) => {
                let mut h = header(node, tar::EntryType::Regular, data.len() as u64);
                b.append_data(&mut h, path, &data[..])?;
            }
            Kind::Symlink(target) => {
                let mut h = header(node, tar::EntryType::Symlink, 0);
                b.append_link(&mut h, path, target)?;
            }
            Kind::Hardlink(target) if written.contains(target.as_str()) => {
                let mut h = header(node, tar::EntryType::Link, 0);
                b.append_link(&mut h, path, target)?;
            }
            Kind::Hardlink(target) => {
                let data = tree.read(target).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("/{path}: {e}"))
                })?;
                let mut h = header(node, tar::EntryType::Regular, data.len() as u64);
                b.append_data(&mut h, path, &data[..])?;
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                let et = if matches!(node.kind, Kind::CharDev { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                };
                let mut h = header(node, et, 0);
                h.set_device_major(*major)?;
                h.set_device_minor(*minor)?;
                b.append_data(&mut h, path, io::empty())?;
            }
            Kind::Fifo => {
                let mut h = header(node, tar::EntryType::Fifo, 0);
                b.append_data(&mut h, path, io::empty())?;
            }
        }
        written.insert(path.as_str());
    }
    b.into_inner()
}
