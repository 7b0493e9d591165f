//! The volume's directory tree, built from the file list: names checked,
//! case conflicts refused, short names assigned.

use std::collections::{BTreeMap, BTreeSet};

use super::names::{alias_short_name, check_component, exact_short_name};
use super::{EspFile, FatError};

/// What a directory entry names: a directory (its index in the tree) or a
/// file.
pub(super) enum Node<'a> {
    Dir(usize),
    File { data: &'a [u8], path: &'a str },
}

/// One entry of a directory, with its short name and, once allocated, its
/// clusters.
pub(super) struct Child<'a> {
    pub(super) name: &'a str,
    pub(super) node: Node<'a>,
    pub(super) short: [u8; 11],
    pub(super) long: bool,
    pub(super) first_cluster: u32,
    pub(super) clusters: u32,
}

/// A directory of the volume; index 0 is the root.
pub(super) struct Dir<'a> {
    /// Children keyed by upper-cased name, which is how FAT compares names.
    pub(super) children: BTreeMap<String, Child<'a>>,
    pub(super) parent: usize,
    pub(super) first_cluster: u32,
    pub(super) clusters: u32,
}

impl Dir<'_> {
    fn new(parent: usize) -> Self {
        Dir {
            children: BTreeMap::new(),
            parent,
            first_cluster: 0,
            clusters: 0,
        }
    }

    /// Directory entries this directory needs, long-name entries included.
    pub(super) fn entry_count(&self, is_root: bool, has_label: bool) -> usize {
        let own = if is_root { usize::from(has_label) } else { 2 };
        own + self
            .children
            .values()
            .map(|c| {
                1 + if c.long {
                    c.name.encode_utf16().count().div_ceil(13)
                } else {
                    0
                }
            })
            .sum::<usize>()
    }
}

/// The directories `files` need, with every name checked and every short
/// name assigned.
pub(super) fn build_tree<'a>(files: &[EspFile<'a>]) -> Result<Vec<Dir<'a>>, FatError> {
    let mut dirs = vec![Dir::new(0)];
    for f in files {
        let parts: Vec<&'a str> = f.path.split('/').collect();
        for c in &parts {
            check_component(f.path, c)?;
        }
        let conflict = |why: String| FatError::BadPath {
            path: f.path.to_string(),
            why,
        };
        let mut cur = 0usize;
        for (i, &name) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let key = name.to_uppercase();
            match dirs[cur].children.get(&key) {
                Some(existing) if existing.name != name => {
                    return Err(conflict(format!(
                        "{name:?} and {:?} differ only in case, and FAT names are case-insensitive",
                        existing.name
                    )));
                }
                Some(Child {
                    node: Node::Dir(d), ..
                }) if !last => cur = *d,
                Some(Child {
                    node: Node::Dir(_), ..
                }) => {
                    return Err(conflict("it is also a directory".into()));
                }
                Some(Child {
                    node: Node::File { path, .. },
                    ..
                }) => {
                    return Err(conflict(if last {
                        "listed twice".into()
                    } else {
                        format!("{path:?} is a file, not a directory")
                    }));
                }
                None => {
                    let node = if last {
                        Node::File {
                            data: f.data,
                            path: f.path,
                        }
                    } else {
                        dirs.push(Dir::new(cur));
                        Node::Dir(dirs.len() - 1)
                    };
                    let next = match node {
                        Node::Dir(d) => d,
                        Node::File { .. } => cur,
                    };
                    let child = Child {
                        name,
                        node,
                        short: [0; 11],
                        long: false,
                        first_cluster: 0,
                        clusters: 0,
                    };
                    dirs[cur].children.insert(key, child);
                    cur = next;
                }
            }
        }
    }
    // Short names: exact 8.3 names first, so generated aliases avoid them.
    for d in &mut dirs {
        let mut used = BTreeSet::new();
        for c in d.children.values_mut() {
            if let Some(s) = exact_short_name(c.name) {
                c.short = s;
                used.insert(s);
            } else {
                c.long = true;
            }
        }
        for c in d.children.values_mut().filter(|c| c.long) {
            c.short = alias_short_name(c.name, &used);
            used.insert(c.short);
        }
    }
    Ok(dirs)
}

/// Directories in breadth-first order over sorted names: the order clusters
/// are handed out and written in, independent of the input order.
pub(super) fn bfs_order(dirs: &[Dir<'_>]) -> Vec<usize> {
    let mut order = vec![0usize];
    let mut i = 0;
    while i < order.len() {
        for c in dirs[order[i]].children.values() {
            if let Node::Dir(d) = c.node {
                order.push(d);
            }
        }
        i += 1;
    }
    order
}

/// The path of directory `d` (`EFI/BOOT/`), for messages.
pub(super) fn dir_path(dirs: &[Dir<'_>], mut d: usize) -> String {
    let mut parts = Vec::new();
    while d != 0 {
        let parent = dirs[d].parent;
        if let Some(c) = dirs[parent]
            .children
            .values()
            .find(|c| matches!(c.node, Node::Dir(x) if x == d))
        {
            parts.push(c.name);
        }
        d = parent;
    }
    parts.reverse();
    parts.join("/") + "/"
}
