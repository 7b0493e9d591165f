//! The initramfs archive: a newc (`070701`) cpio of a [`FileTree`].
//!
//! newc is the format the kernel's initramfs unpacker reads. Every entry is a
//! 110-byte ASCII header (13 eight-digit hex fields), the NUL-terminated name,
//! padding to 4 bytes, the data, padding to 4 bytes; a `TRAILER!!!` entry
//! ends the archive. Output depends only on the tree: entries in tree order
//! (parents first), inode numbers counted from 1 in that order, no host
//! metadata. Extended attributes are not carried: newc has no field for them.

use std::collections::BTreeMap;
use std::io::{self, Write};

use crate::tree::{parent, FileTree, Kind, Node};

/// Errors of writing a cpio archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// A hard link whose target is not a regular file of the tree.
    #[error(
        "/{path}: hard link to /{target}, which is not a regular file in the initramfs tree; \
         add the target or replace the link with a copy"
    )]
    DanglingHardlink {
        /// The link.
        path: String,
        /// What it points to.
        target: String,
    },
    /// A file too big for newc's 32-bit size field.
    #[error("/{path}: {size} bytes, but a newc cpio entry holds at most 4 GiB - 1; keep it out of the initramfs")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The output stream failed.
    #[error("writing the initramfs cpio at entry /{entry}: {source}")]
    Write {
        /// The entry being written (`TRAILER!!!` for the end).
        entry: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

const S_IFIFO: u32 = 0o010000;
const S_IFCHR: u32 = 0o020000;
const S_IFDIR: u32 = 0o040000;
const S_IFBLK: u32 = 0o060000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const TRAILER: &str = "TRAILER!!!";

/// A hard-link set: a regular file and every [`Kind::Hardlink`] to it.
struct LinkSet {
    ino: u32,
    members: u32,
    /// The member that carries the data: the last one in archive order, as
    /// newc writers do (the kernel and GNU cpio accept it there).
    data_holder: String,
}

/// What the writer needs to know about every entry before writing any.
struct Plan<'t> {
    /// Inode per path, for entries outside link sets.
    ino: BTreeMap<&'t str, u32>,
    /// Link sets by the path of their regular file.
    sets: BTreeMap<&'t str, LinkSet>,
    /// Number of subdirectories per directory.
    subdirs: BTreeMap<&'t str, u32>,
}

fn plan(tree: &FileTree) -> Result<Plan<'_>, CpioError> {
    // Which regular files have hard links to them.
    let mut targets = std::collections::BTreeSet::new();
    for (path, node) in tree.iter() {
        if let Kind::Hardlink(target) = &node.kind {
            if !matches!(tree.get(target).map(|n| &n.kind), Some(Kind::File(_))) {
                return Err(CpioError::DanglingHardlink {
                    path: path.clone(),
                    target: target.clone(),
                });
            }
            targets.insert(target.as_str());
        }
    }
    let mut next: u32 = 1;
    let mut ino = BTreeMap::new();
    let mut sets: BTreeMap<&str, LinkSet> = BTreeMap::new();
    let mut subdirs: BTreeMap<&str, u32> = BTreeMap::new();
    for (path, node) in tree.iter() {
        if node.kind == Kind::Dir && !path.is_empty() {
            *subdirs.entry(parent(path)).or_default() += 1;
        }
        let set_key = match &node.kind {
            Kind::Hardlink(target) => Some(target.as_str()),
            Kind::File(_) if targets.contains(path.as_str()) => Some(path.as_str()),
            _ => None,
        };
        let fresh = next;
        match set_key {
            Some(key) => {
                let set = sets.entry(key).or_insert_with(|| {
                    next += 1;
                    LinkSet {
                        ino: fresh,
                        members: 0,
                        data_holder: String::new(),
                    }
                });
                set.members += 1;
                set.data_holder = path.clone();
            }
            None => {
                ino.insert(path.as_str(), fresh);
                next += 1;
            }
        }
    }
    Ok(Plan { ino, sets, subdirs })
}

/// One newc header's fields.
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

/// Counts what goes out, so padding and the return value need no seeking.
struct Counted<'w, W: Write> {
    out: &'w mut W,
    written: u64,
}

impl<W: Write> Counted<'_, W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 3][..n])
    }

    fn entry(&mut self, name: &str, h: &Header, data: &[u8]) -> io::Result<()> {
        let namesize = name.len() + 1;
        let head = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.filesize,
            0,
            0,
            h.rdevmajor,
            h.rdevminor,
            namesize,
            0
        );
        self.put(head.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()
    }
}

/// newc's mtime is unsigned 32-bit: times before 1970 become 0 and times
/// after 2106 saturate, deterministically.
fn mtime32(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX)) as u32
}

/// Writes `tree` as a newc cpio archive to `out`, in tree order (every
/// directory before its children; the root as `.`). Hard links share an
/// inode number and the set's data rides on its last entry, as newc
/// requires. Returns the number of bytes written (a multiple of 4).
pub fn write_newc(tree: &FileTree, out: &mut impl Write) -> Result<u64, CpioError> {
    let plan = plan(tree)?;
    let mut w = Counted { out, written: 0 };
    for (path, node) in tree.iter() {
        // A link set's entries all describe the one inode: the target file's.
        let (meta, set_key): (&Node, Option<&str>) = match &node.kind {
            Kind::Hardlink(target) => match tree.get(target) {
                Some(file) => (file, Some(target.as_str())),
                None => {
                    return Err(CpioError::DanglingHardlink {
                        path: path.clone(),
                        target: target.clone(),
                    })
                }
            },
            Kind::File(_) if plan.sets.contains_key(path.as_str()) => (node, Some(path.as_str())),
            _ => (node, None),
        };
        let perm = meta.mode & 0o7777;
        let (kind_bits, data, rdev): (u32, &[u8], (u32, u32)) = match &meta.kind {
            Kind::File(d) => (S_IFREG, d, (0, 0)),
            Kind::Dir => (S_IFDIR, &[], (0, 0)),
            Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
            Kind::CharDev { major, minor } => (S_IFCHR, &[], (*major, *minor)),
            Kind::BlockDev { major, minor } => (S_IFBLK, &[], (*major, *minor)),
            Kind::Fifo => (S_IFIFO, &[], (0, 0)),
            // plan() checked that link targets are regular files.
            Kind::Hardlink(_) => (S_IFREG, &[], (0, 0)),
        };
        let (ino, nlink, data) = match set_key.and_then(|k| plan.sets.get(k)) {
            Some(set) => {
                let data = if set.data_holder == *path {
                    data
                } else {
                    &[][..]
                };
                (set.ino, set.members, data)
            }
            None => {
                let nlink = if node.kind == Kind::Dir {
                    2 + plan.subdirs.get(path.as_str()).copied().unwrap_or(0)
                } else {
                    1
                };
                (
                    plan.ino.get(path.as_str()).copied().unwrap_or(0),
                    nlink,
                    data,
                )
            }
        };
        let filesize = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            path: path.clone(),
            size: data.len() as u64,
        })?;
        let header = Header {
            ino,
            mode: kind_bits | perm,
            uid: meta.uid,
            gid: meta.gid,
            nlink,
            mtime: mtime32(meta.mtime),
            filesize,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
        };
        let name = if path.is_empty() { "." } else { path.as_str() };
        w.entry(name, &header, data)
            .map_err(|source| CpioError::Write {
                entry: path.clone(),
                source,
            })?;
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        filesize: 0,
        rdevmajor: 0,
        rdevminor: 0,
    };
    w.entry(TRAILER, &trailer, &[])
        .and_then(|()| w.out.flush())
        .map_err(|source| CpioError::Write {
            entry: TRAILER.to_string(),
            source,
        })?;
    Ok(w.written)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    use super::*;

    const T: i64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC

    /// One `cpio -itv` line: mode string, nlink, uid, gid, size (or
    /// `major,minor`), symlink target.
    type Listed = (String, String, String, String, String, Option<String>);

    fn node(kind: Kind, mode: u32, uid: u32, gid: u32) -> Node {
        Node {
            kind,
            mode,
            uid,
            gid,
            ..Node::dir(0, T, "test")
        }
    }

    fn file(data: &[u8], mode: u32) -> Node {
        Node::file(data.to_vec(), mode, T, "test")
    }

    /// Every kind of entry, with owners, special mode bits and a hard-link
    /// set whose file sits between its links in path order.
    fn sample() -> FileTree {
        let mut t = FileTree::new(T);
        let busybox: Vec<u8> = (0..1001u32).map(|i| (i * 31 + 7) as u8).collect();
        let entries: Vec<(&str, Node)> = vec![
            ("bin", node(Kind::Dir, 0o755, 0, 0)),
            ("bin/busybox", file(&busybox, 0o755)),
            ("bin/sh", Node::symlink("busybox", T, "test")),
            ("bin/su", file(b"setuid program\n", 0o4755)),
            (
                "bin/su2",
                node(Kind::Hardlink("bin/su".into()), 0o644, 0, 0),
            ),
            (
                "bin/a-su",
                node(Kind::Hardlink("bin/su".into()), 0o644, 0, 0),
            ),
            ("dev", node(Kind::Dir, 0o755, 0, 0)),
            (
                "dev/console",
                node(Kind::CharDev { major: 5, minor: 1 }, 0o600, 0, 5),
            ),
            (
                "dev/sda",
                node(Kind::BlockDev { major: 8, minor: 0 }, 0o660, 0, 6),
            ),
            ("dev/initctl", node(Kind::Fifo, 0o600, 0, 0)),
            (
                "etc/passwd",
                file(b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
            ),
            (
                "etc/shadow",
                Node {
                    gid: 42,
                    ..file(b"root:*:19000::::::\n", 0o640)
                },
            ),
            ("etc/empty", file(b"", 0o644)),
            ("home/user", node(Kind::Dir, 0o700, 1000, 1000)),
            (
                "home/user/.profile",
                Node {
                    uid: 1000,
                    gid: 1000,
                    ..file(b"PS1='$ '\n", 0o600)
                },
            ),
            ("tmp", node(Kind::Dir, 0o1777, 0, 0)),
            ("usr/lib/abs", Node::symlink("/etc/passwd", T, "test")),
        ];
        for (p, n) in entries {
            t.insert(p, n).unwrap();
        }
        t
    }

    fn archive(t: &FileTree) -> Vec<u8> {
        let mut buf = Vec::new();
        let n = write_newc(t, &mut buf).unwrap();
        assert_eq!(n, buf.len() as u64);
        buf
    }

    fn run_cpio(args: &[&str], input: &[u8], dir: &Path) -> String {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio is installed (package cpio)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "cpio {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn cpio_lists_every_entry_with_its_metadata() {
        let t = sample();
        let buf = archive(&t);
        let dir = tempfile::tempdir().unwrap();
        let listing = run_cpio(&["-itv", "--numeric-uid-gid", "--quiet"], &buf, dir.path());
        // name -> (mode string, nlink, uid, gid, size or "maj,min", link target)
        let mut seen: BTreeMap<String, Listed> = BTreeMap::new();
        let mut order = Vec::new();
        for line in listing.lines() {
            let tok: Vec<&str> = line.split_whitespace().collect();
            let dev = tok[0].starts_with('c') || tok[0].starts_with('b');
            let (size, rest) = if dev {
                (format!("{}{}", tok[4], tok[5]), &tok[6..])
            } else {
                (tok[4].to_string(), &tok[5..])
            };
            assert_eq!(&rest[..3], ["Nov", "14", "2023"], "{line}");
            let name = rest[3].to_string();
            let target = (rest.len() == 6 && rest[4] == "->").then(|| rest[5].to_string());
            order.push(name.clone());
            seen.insert(
                name,
                (
                    tok[0].into(),
                    tok[1].into(),
                    tok[2].into(),
                    tok[3].into(),
                    size,
                    target,
                ),
            );
        }
        let want = [
            (".", "drwxr-xr-x", "8", "0", "0", "0", None),
            ("bin", "drwxr-xr-x", "2", "0", "0", "0", None),
            ("bin/a-su", "-rwsr-xr-x", "3", "0", "0", "0", None),
            ("bin/busybox", "-rwxr-xr-x", "1", "0", "0", "1001", None),
            ("bin/sh", "lrwxrwxrwx", "1", "0", "0", "7", Some("busybox")),
            ("bin/su", "-rwsr-xr-x", "3", "0", "0", "0", None),
            ("bin/su2", "-rwsr-xr-x", "3", "0", "0", "15", None),
            ("dev", "drwxr-xr-x", "2", "0", "0", "0", None),
            ("dev/console", "crw-------", "1", "0", "5", "5,1", None),
            ("dev/initctl", "prw-------", "1", "0", "0", "0", None),
            ("dev/sda", "brw-rw----", "1", "0", "6", "8,0", None),
            ("etc", "drwxr-xr-x", "2", "0", "0", "0", None),
            ("etc/empty", "-rw-r--r--", "1", "0", "0", "0", None),
            ("etc/passwd", "-rw-r--r--", "1", "0", "0", "30", None),
            ("etc/shadow", "-rw-r-----", "1", "0", "42", "19", None),
            ("home", "drwxr-xr-x", "3", "0", "0", "0", None),
            ("home/user", "drwx------", "2", "1000", "1000", "0", None),
            (
                "home/user/.profile",
                "-rw-------",
                "1",
                "1000",
                "1000",
                "9",
                None,
            ),
            ("tmp", "drwxrwxrwt", "2", "0", "0", "0", None),
            ("usr", "drwxr-xr-x", "3", "0", "0", "0", None),
            ("usr/lib", "drwxr-xr-x", "2", "0", "0", "0", None),
            (
                "usr/lib/abs",
                "lrwxrwxrwx",
                "1",
                "0",
                "0",
                "11",
                Some("/etc/passwd"),
            ),
        ];
        assert_eq!(seen.len(), want.len(), "{listing}");
        for (name, mode, nlink, uid, gid, size, target) in want {
            let got = seen
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing from:\n{listing}"));
            let want = (
                mode.into(),
                nlink.into(),
                uid.into(),
                gid.into(),
                size.into(),
                target.map(String::from),
            );
            assert_eq!(got, &want, "{name}");
        }
        // Archive order is tree order: parents first.
        let tree_order: Vec<String> = t
            .iter()
            .map(|(p, _)| {
                if p.is_empty() {
                    ".".to_string()
                } else {
                    p.clone()
                }
            })
            .collect();
        assert_eq!(order, tree_order);
    }

    #[test]
    fn cpio_extracts_identical_files_links_and_modes() {
        let t = sample();
        let buf = archive(&t);
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        // Only root may create device nodes; without it, leave dev/ out.
        let args: &[&str] = if root {
            &["-id", "--quiet"]
        } else {
            &["-id", "--quiet", "-f", "dev/*"]
        };
        run_cpio(args, &buf, dir.path());
        let at = |p: &str| dir.path().join(p);
        for (path, n) in t.iter() {
            let meta = match std::fs::symlink_metadata(at(path)) {
                Ok(m) => m,
                Err(_) if !root && path.starts_with("dev/") => continue,
                Err(e) => panic!("{path}: {e}"),
            };
            match &n.kind {
                Kind::File(d) => assert_eq!(std::fs::read(at(path)).unwrap(), &d[..], "{path}"),
                Kind::Hardlink(target) => {
                    assert_eq!(std::fs::read(at(path)).unwrap(), &*t.read(target).unwrap())
                }
                Kind::Symlink(target) => {
                    assert_eq!(
                        std::fs::read_link(at(path)).unwrap().to_str().unwrap(),
                        target,
                        "{path}"
                    )
                }
                Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                    assert_eq!(
                        meta.rdev(),
                        (u64::from(*major) << 8) | u64::from(*minor),
                        "{path}"
                    )
                }
                Kind::Dir | Kind::Fifo => {}
            }
            if !matches!(n.kind, Kind::Symlink(_) | Kind::Hardlink(_)) {
                assert_eq!(meta.mode() & 0o7777, n.mode, "{path} mode");
            }
            if root && !path.is_empty() {
                assert_eq!((meta.uid(), meta.gid()), (n.uid, n.gid), "{path} owner");
            }
        }
        // The link set is one inode with three names.
        let inos: Vec<(u64, u64)> = ["bin/su", "bin/su2", "bin/a-su"]
            .iter()
            .map(|p| {
                std::fs::metadata(at(p))
                    .map(|m| (m.ino(), m.nlink()))
                    .unwrap()
            })
            .collect();
        assert!(
            inos.iter()
                .all(|&(ino, nlink)| ino == inos[0].0 && nlink == 3),
            "{inos:?}"
        );
    }

    #[test]
    fn two_writes_are_byte_identical_and_well_formed() {
        let t = sample();
        let a = archive(&t);
        assert_eq!(a, archive(&sample()));
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let trailer = a.windows(11).rposition(|w| w == b"TRAILER!!!\0").unwrap();
        assert!(a[trailer + 11..].iter().all(|&b| b == 0) && a.len() - trailer - 11 < 4);
        // Inode numbers: 1, 2, ... in tree order, one per inode.
        let mut inos = BTreeMap::new();
        let mut at = 0;
        while at < a.len() {
            let field = |i: usize| {
                u32::from_str_radix(
                    std::str::from_utf8(&a[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap(),
                    16,
                )
                .unwrap()
            };
            let (ino, size, namesize) = (field(0), field(6) as usize, field(11) as usize);
            let name = std::str::from_utf8(&a[at + 110..at + 110 + namesize - 1])
                .unwrap()
                .to_string();
            at = (at + 110 + namesize).div_ceil(4) * 4;
            at = (at + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            inos.insert(name, ino);
        }
        assert_eq!(at, a.len());
        assert_eq!(inos["."], 1);
        assert_eq!(inos["bin"], 2);
        assert_eq!(inos["bin/a-su"], 3);
        assert_eq!(inos["bin/su"], 3);
        assert_eq!(inos["bin/su2"], 3);
        assert_eq!(inos["bin/busybox"], 4);
        let mut distinct: Vec<u32> = inos.values().copied().collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct, (1..=(inos.len() as u32 - 2)).collect::<Vec<_>>());
    }

    #[test]
    fn dangling_hard_link_names_both_paths() {
        let mut t = FileTree::new(T);
        t.insert(
            "bin/x",
            node(Kind::Hardlink("bin/gone".into()), 0o755, 0, 0),
        )
        .unwrap();
        let e = write_newc(&t, &mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("/bin/x") && e.contains("/bin/gone"), "{e}");
    }

    #[test]
    fn write_failure_names_the_entry() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 < b.len() {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "no space"));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = write_newc(&sample(), &mut Full(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("entry /bin") && e.contains("no space"), "{e}");
    }
}
