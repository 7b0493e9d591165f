//! The in-memory file tree every image root is built in.
//!
//! Ownership, modes and device nodes come from package tar headers, overlays
//! and the profile, never from the host, which is what lets kiln build
//! rootless and host-independent. Paths are relative to the root, `/`-separated
//! and normalised (no leading `/`, no `.` or `..`); the root directory is `""`.

pub mod artifact;
pub mod cluster;
pub mod effects;
pub mod kmod;
pub mod node;
pub mod overlay;
pub mod sysusers;
pub mod units;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::image_path::BadPath;

/// What a node is, with the content that kind carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file and its bytes.
    File(Arc<[u8]>),
    /// A directory.
    Dir,
    /// A symbolic link and its target, as written (may be absolute).
    Symlink(String),
    /// A hard link to another regular file in the tree (normalised path).
    Hardlink(String),
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl Kind {
    /// A short name for messages.
    pub fn label(&self) -> &'static str {
        match self {
            Kind::File(_) => "file",
            Kind::Dir => "directory",
            Kind::Symlink(_) => "symlink",
            Kind::Hardlink(_) => "hardlink",
            Kind::CharDev { .. } => "char device",
            Kind::BlockDev { .. } => "block device",
            Kind::Fifo => "fifo",
        }
    }
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Kind and content.
    pub kind: Kind,
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch (clamped to the build epoch).
    pub mtime: i64,
    /// Extended attributes (e.g. `security.capability`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Who put it there: `pkg:NAME`, `overlay:NAME` or `kiln:STEP`.
    pub origin: String,
}

impl Node {
    /// A root-owned directory.
    pub fn dir(mode: u32, mtime: i64, origin: impl Into<String>) -> Node {
        Node {
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    /// A root-owned regular file.
    pub fn file(
        data: impl Into<Arc<[u8]>>,
        mode: u32,
        mtime: i64,
        origin: impl Into<String>,
    ) -> Node {
        Node {
            kind: Kind::File(data.into()),
            mode,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    /// A root-owned symlink.
    pub fn symlink(target: impl Into<String>, mtime: i64, origin: impl Into<String>) -> Node {
        Node {
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime,
            xattrs: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    /// Same content and metadata, ignoring where it came from and its mtime.
    pub fn same_content(&self, other: &Node) -> bool {
        self.kind == other.kind
            && self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.xattrs == other.xattrs
    }
}

/// Errors of tree operations.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// Two sources ship different content at one path.
    #[error(
        "{path}: {first} and {second} both ship it with different content; \
         say which wins with `[packages] prefer = {{ \"/{path}\" = \"PACKAGE\" }}` in the profile"
    )]
    Conflict {
        /// The path.
        path: String,
        /// Origin of the entry already there.
        first: String,
        /// Origin of the new entry.
        second: String,
    },
    /// A path that cannot be normalised (escapes the root, or is empty).
    #[error("{0:?}: not a valid path inside the image")]
    BadPath(String),
    /// An entry needs a directory where something else is.
    #[error("{path}: needed as a directory for {child}, but it is a {kind} from {origin}")]
    NotADirectory {
        /// The path.
        path: String,
        /// The entry that needs it.
        child: String,
        /// What is there instead.
        kind: &'static str,
        /// Who put it there.
        origin: String,
    },
    /// A path that is not in the tree.
    #[error("/{0}: not in the image tree")]
    NotFound(String),
    /// Symlinks nested too deep or in a loop.
    #[error("/{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
}

/// Normalises a path to the tree's form: no leading `/`, no `.`, no empty
/// components, `..` resolved. Fails if it climbs above the root.
pub fn normalize(path: &str) -> Result<String, TreeError> {
    crate::image_path::normalize(path).map_err(|BadPath(p)| TreeError::BadPath(p))
}

/// The parent of a normalised path (`""` for top-level entries).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// The last component of a normalised path.
pub fn file_name(path: &str) -> &str {
    match path.rfind('/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// An image root being assembled.
#[derive(Debug, Clone)]
pub struct FileTree {
    nodes: BTreeMap<String, Node>,
    /// The build epoch: new entries get it, older mtimes are kept, newer are clamped.
    epoch: i64,
}

impl FileTree {
    /// An empty tree holding only the root directory.
    pub fn new(epoch: i64) -> FileTree {
        let mut nodes = BTreeMap::new();
        nodes.insert(String::new(), Node::dir(0o755, epoch, "kiln:root"));
        FileTree { nodes, epoch }
    }

    /// The build epoch.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The entry at a normalised path.
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// The entry at a normalised path, mutable.
    pub fn get_mut(&mut self, path: &str) -> Option<&mut Node> {
        self.nodes.get_mut(path)
    }

    /// Whether the path exists (without following symlinks).
    pub fn contains(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    /// Number of entries, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is there.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// All entries in path order: every directory before its children.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node)> {
        self.nodes.iter()
    }

    /// Entries strictly below `dir` (all depths), in path order.
    pub fn descendants<'a>(
        &'a self,
        dir: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.nodes
            .range(prefix.clone()..)
            .skip_while(move |(k, _)| k.is_empty() && !prefix.is_empty())
            .take_while({
                let prefix = if dir.is_empty() {
                    String::new()
                } else {
                    format!("{dir}/")
                };
                move |(k, _)| k.starts_with(&prefix)
            })
            .filter(|(k, _)| !k.is_empty())
    }

    /// Direct children names of `dir`, sorted.
    pub fn children(&self, dir: &str) -> Vec<String> {
        self.descendants(dir)
            .filter(|(k, _)| parent(k) == dir)
            .map(|(k, _)| file_name(k).to_string())
            .collect()
    }

    /// Sum of regular file sizes (hard links counted once).
    pub fn data_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.kind {
                Kind::File(d) => d.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Creates missing parent directories of `path` (mode 0755, root-owned).
    pub fn ensure_parents(&mut self, path: &str, origin: &str) -> Result<(), TreeError> {
        let mut missing = Vec::new();
        let mut p = parent(path);
        loop {
            match self.nodes.get(p) {
                Some(n) if n.kind == Kind::Dir => break,
                Some(n) => {
                    return Err(TreeError::NotADirectory {
                        path: p.to_string(),
                        child: path.to_string(),
                        kind: n.kind.label(),
                        origin: n.origin.clone(),
                    })
                }
                None => missing.push(p.to_string()),
            }
            if p.is_empty() {
                break;
            }
            p = parent(p);
        }
        for m in missing {
            self.nodes.insert(m, Node::dir(0o755, self.epoch, origin));
        }
        Ok(())
    }

    /// Inserts an entry from a package or other source that must not silently
    /// replace different content. Identical content is accepted (the first
    /// origin is kept); two directories merge; otherwise it is a conflict,
    /// unless `wins` names the newcomer's origin as the one to keep.
    pub fn insert_checked(
        &mut self,
        path: &str,
        mut node: Node,
        wins: Option<&str>,
    ) -> Result<(), TreeError> {
        node.mtime = node.mtime.min(self.epoch);
        self.ensure_parents(path, &node.origin)?;
        match self.nodes.get(path) {
            None => {
                self.nodes.insert(path.to_string(), node);
                Ok(())
            }
            Some(old) if old.kind == Kind::Dir && node.kind == Kind::Dir => Ok(()),
            Some(old) if old.same_content(&node) => Ok(()),
            Some(old) => match wins {
                Some(w) if w == node.origin => {
                    self.remove_subtree(path);
                    self.nodes.insert(path.to_string(), node);
                    Ok(())
                }
                Some(w) if w == old.origin => Ok(()),
                _ => Err(TreeError::Conflict {
                    path: path.to_string(),
                    first: old.origin.clone(),
                    second: node.origin,
                }),
            },
        }
    }

    /// Inserts or replaces an entry (overlays and kiln's own fix-ups, which
    /// are meant to override package content). A directory replaced by a
    /// non-directory loses its children.
    pub fn insert(&mut self, path: &str, mut node: Node) -> Result<(), TreeError> {
        node.mtime = node.mtime.min(self.epoch);
        self.ensure_parents(path, &node.origin)?;
        if node.kind != Kind::Dir {
            self.remove_subtree(path);
        }
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    /// Removes an entry and everything below it. Returns how many went.
    pub fn remove_subtree(&mut self, path: &str) -> usize {
        let below: Vec<String> = self.descendants(path).map(|(k, _)| k.clone()).collect();
        let mut n = below.len();
        for k in below {
            self.nodes.remove(&k);
        }
        if !path.is_empty() && self.nodes.remove(path).is_some() {
            n += 1;
        }
        n
    }

    /// Removes every entry for which `keep` returns false (and everything
    /// below removed directories). Returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &Node) -> bool) -> usize {
        let drop: Vec<String> = self
            .nodes
            .iter()
            .filter(|(k, n)| !k.is_empty() && !keep(k, n))
            .map(|(k, _)| k.clone())
            .collect();
        drop.iter().map(|k| self.remove_subtree(k)).sum()
    }

    /// Follows symlinks (in every component) to the entry a path names, as
    /// the running system would. Returns the resolved normalised path.
    pub fn resolve(&self, path: &str) -> Result<String, TreeError> {
        let mut budget = 40;
        let mut done = String::new();
        let mut todo: Vec<String> = normalize(path)?
            .split('/')
            .filter(|s| !s.is_empty())
            .rev()
            .map(String::from)
            .collect();
        while let Some(comp) = todo.pop() {
            let cand = if done.is_empty() {
                comp.clone()
            } else {
                format!("{done}/{comp}")
            };
            match self.nodes.get(&cand).map(|n| &n.kind) {
                Some(Kind::Symlink(target)) => {
                    budget -= 1;
                    if budget == 0 {
                        return Err(TreeError::SymlinkLoop(path.to_string()));
                    }
                    let joined = if target.starts_with('/') {
                        target.clone()
                    } else {
                        format!("{done}/{target}")
                    };
                    let norm = normalize(&joined)?;
                    done = String::new();
                    for c in norm.split('/').filter(|s| !s.is_empty()).rev() {
                        todo.push(c.to_string());
                    }
                }
                Some(_) => done = cand,
                None => return Err(TreeError::NotFound(cand)),
            }
        }
        Ok(done)
    }

    /// The bytes of the regular file a path names, following symlinks and hard links.
    pub fn read(&self, path: &str) -> Result<Arc<[u8]>, TreeError> {
        let real = self.resolve(path)?;
        match self.nodes.get(&real).map(|n| &n.kind) {
            Some(Kind::File(d)) => Ok(d.clone()),
            Some(Kind::Hardlink(t)) => match self.nodes.get(t).map(|n| &n.kind) {
                Some(Kind::File(d)) => Ok(d.clone()),
                _ => Err(TreeError::NotFound(t.clone())),
            },
            _ => Err(TreeError::NotFound(real)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(data: &[u8], origin: &str) -> Node {
        Node::file(data.to_vec(), 0o644, 100, origin)
    }

    #[test]
    fn normalize_rejects_escape_and_cleans() {
        assert_eq!(normalize("/usr//bin/./x").unwrap(), "usr/bin/x");
        assert_eq!(normalize("./a/../b").unwrap(), "b");
        assert!(normalize("../etc").is_err());
    }

    #[test]
    fn conflicting_content_names_both_origins() {
        let mut t = FileTree::new(1000);
        t.insert_checked("etc/x", f(b"a", "pkg:one"), None).unwrap();
        t.insert_checked("etc/x", f(b"a", "pkg:two"), None).unwrap();
        let e = t
            .insert_checked("etc/x", f(b"b", "pkg:three"), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pkg:one") && e.contains("pkg:three") && e.contains("etc/x"),
            "{e}"
        );
        t.insert_checked("etc/x", f(b"b", "pkg:three"), Some("pkg:three"))
            .unwrap();
        assert_eq!(&*t.read("etc/x").unwrap(), b"b");
    }

    #[test]
    fn parents_are_created_and_mtimes_clamped() {
        let mut t = FileTree::new(50);
        t.insert("a/b/c", f(b"x", "test")).unwrap();
        assert_eq!(t.get("a/b").unwrap().kind, Kind::Dir);
        assert_eq!(t.get("a/b/c").unwrap().mtime, 50);
        assert_eq!(t.children("a"), vec!["b".to_string()]);
    }

    #[test]
    fn resolve_follows_relative_and_absolute_links() {
        let mut t = FileTree::new(50);
        t.insert("usr/bin/bash", f(b"elf", "p")).unwrap();
        t.insert("bin", Node::symlink("usr/bin", 0, "k")).unwrap();
        t.insert("usr/bin/sh", Node::symlink("/bin/bash", 0, "k"))
            .unwrap();
        assert_eq!(t.resolve("bin/sh").unwrap(), "usr/bin/bash");
        assert_eq!(&*t.read("/bin/sh").unwrap(), b"elf");
        t.insert("loop", Node::symlink("loop", 0, "k")).unwrap();
        assert!(matches!(t.resolve("loop"), Err(TreeError::SymlinkLoop(_))));
    }

    #[test]
    fn remove_subtree_and_descendants_do_not_touch_siblings() {
        let mut t = FileTree::new(50);
        t.insert("usr/lib/a", f(b"1", "p")).unwrap();
        t.insert("usr/lib-x/b", f(b"2", "p")).unwrap();
        assert_eq!(t.descendants("usr/lib").count(), 1);
        assert_eq!(t.remove_subtree("usr/lib"), 2);
        assert!(t.contains("usr/lib-x/b"));
    }
}
