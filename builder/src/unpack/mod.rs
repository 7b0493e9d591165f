//! Unpacks Debian packages into the in-memory [`FileTree`].
//!
//! A `.deb` is an `ar` archive holding `debian-binary`, `control.tar.*` and
//! `data.tar.*` (xz, zstd, gzip or plain). Modes, owners, links and device
//! nodes come from the tar headers, so no root and no host state is needed.
//! Paths are mapped onto merged `/usr` as they are read.

mod glob;

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use glob::Glob;

use crate::tree::{normalize, FileTree, Kind, Node, TreeError};

/// Errors while reading a package.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The file could not be opened or read.
    #[error("{path}: cannot read package: {source}")]
    Io {
        /// The .deb path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The archive is not a valid .deb (truncated, corrupt, or not a .deb).
    #[error("{path} ({package}): corrupt or truncated package: {message}; delete it from the cache and run `kiln fetch` again")]
    Corrupt {
        /// The .deb path.
        path: PathBuf,
        /// Package name.
        package: String,
        /// What was wrong.
        message: String,
    },
    /// The package's files clash with the tree.
    #[error("{package}: {source}")]
    Tree {
        /// Package name.
        package: String,
        /// The clash.
        source: TreeError,
    },
}

/// The parsed content of one package, ready to be inserted.
#[derive(Debug)]
pub struct Deb {
    /// Package name.
    pub package: String,
    /// Control fields of the package (`Package`, `Version`, ...).
    pub control: BTreeMap<String, String>,
    /// Data entries, paths normalised and mapped onto merged /usr.
    pub entries: Vec<(String, Node)>,
}

/// The top-level folders that merged /usr turns into links to `usr/<name>`.
const MERGED: [&str; 6] = ["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Whether a package entry is one of merged /usr's own top-level links (`bin` →
/// `usr/bin`), which packages of Debian 13 and later ship themselves (base-files). The
/// tree makes those links for every root (`tree::effects::merged_usr_links`), so the
/// package's copy is dropped rather than mapped onto `usr/bin`, where the folder is.
pub fn is_merged_usr_link(path: &str, kind: &Kind) -> bool {
    let Kind::Symlink(target) = kind else {
        return false;
    };
    let target = target.trim_start_matches('/').trim_end_matches('/');
    MERGED.contains(&path) && target.strip_prefix("usr/") == Some(path)
}

/// Maps a path of a non-merged package onto merged /usr (`bin/x` → `usr/bin/x`).
pub fn merge_usr(path: &str) -> String {
    let (first, rest) = match path.split_once('/') {
        Some((f, r)) => (f, Some(r)),
        None => (path, None),
    };
    if MERGED.contains(&first) {
        match rest {
            Some(r) => format!("usr/{first}/{r}"),
            None => format!("usr/{first}"),
        }
    } else {
        path.to_string()
    }
}

/// Reads a .deb completely: control fields and every data entry.
pub fn read_deb(path: &Path, package: &str) -> Result<Deb, UnpackError> {
    let corrupt = |message: String| UnpackError::Corrupt {
        path: path.to_path_buf(),
        package: package.to_string(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut ar = ar::Archive::new(BufReader::with_capacity(1 << 20, file));
    let mut control = None;
    let mut entries = None;
    let mut saw_magic = false;
    while let Some(member) = ar.next_entry() {
        let member = member.map_err(|e| corrupt(format!("ar: {e}")))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if name == "debian-binary" {
            saw_magic = true;
        } else if let Some(comp) = name.strip_prefix("control.tar") {
            let tar = decompressor(comp, member).map_err(|m| corrupt(format!("{name}: {m}")))?;
            control = Some(read_control(tar).map_err(|e| corrupt(format!("{name}: {e}")))?);
        } else if let Some(comp) = name.strip_prefix("data.tar") {
            let tar = decompressor(comp, member).map_err(|m| corrupt(format!("{name}: {m}")))?;
            entries = Some(read_data(tar, package).map_err(|e| corrupt(format!("{name}: {e}")))?);
        }
    }
    if !saw_magic {
        return Err(corrupt(
            "no debian-binary member: not a Debian package".into(),
        ));
    }
    let control = control.ok_or_else(|| corrupt("no control.tar member".into()))?;
    let entries = entries.ok_or_else(|| corrupt("no data.tar member".into()))?;
    Ok(Deb {
        package: package.to_string(),
        control,
        entries,
    })
}

fn decompressor<'a>(suffix: &str, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>, String> {
    Ok(match suffix {
        "" => Box::new(r),
        ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        ".gz" => Box::new(flate2::read::GzDecoder::new(r)),
        ".zst" => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(r).map_err(|e| format!("zstd: {e}"))?)
        }
        other => return Err(format!("unsupported compression {other:?}")),
    })
}

fn read_control(r: impl Read) -> io::Result<BTreeMap<String, String>> {
    let mut ar = tar::Archive::new(r);
    for e in ar.entries()? {
        let mut e = e?;
        let p = e.path()?.to_string_lossy().into_owned();
        if normalize(&p).ok().as_deref() == Some("control") {
            let mut text = String::new();
            e.read_to_string(&mut text)?;
            return Ok(parse_control(&text));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "no control file",
    ))
}

/// Parses one deb822 stanza (continuation lines are joined with newlines).
pub fn parse_control(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(k) = &last {
                if let Some(v) = out.get_mut(k) {
                    let v: &mut String = v;
                    v.push('\n');
                    v.push_str(line.trim());
                }
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.insert(k.trim().to_string(), v.trim().to_string());
            last = Some(k.trim().to_string());
        }
    }
    out
}

fn read_data(r: impl Read, package: &str) -> io::Result<Vec<(String, Node)>> {
    let origin = format!("pkg:{package}");
    let mut ar = tar::Archive::new(r);
    let mut out = Vec::new();
    for e in ar.entries()? {
        let mut e = e?;
        let raw_path = e.path()?.to_string_lossy().into_owned();
        let plain = match normalize(&raw_path) {
            Ok(p) if p.is_empty() => continue,
            Ok(p) => p,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{raw_path:?} escapes the root"),
                ))
            }
        };
        let h = e.header();
        let mode = h.mode()? & 0o7777;
        let uid = h.uid()? as u32;
        let gid = h.gid()? as u32;
        let mtime = h.mtime()? as i64;
        let et = h.entry_type();
        let link = || -> io::Result<String> {
            e_link(h).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{raw_path}: link without target"),
                )
            })
        };
        let kind = match et {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(link()?),
            tar::EntryType::Link => {
                let t = normalize(&link()?).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "bad hardlink target")
                })?;
                Kind::Hardlink(merge_usr(&t))
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = h.device_major()?.unwrap_or(0);
                let minor = h.device_minor()?.unwrap_or(0);
                if et == tar::EntryType::Char {
                    Kind::CharDev { major, minor }
                } else {
                    Kind::BlockDev { major, minor }
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(h.size()? as usize);
                e.read_to_end(&mut data)?;
                Kind::File(Arc::from(data))
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{raw_path}: unsupported tar entry type {other:?}"),
                ))
            }
        };
        if is_merged_usr_link(&plain, &kind) {
            continue;
        }
        let path = merge_usr(&plain);
        let node = Node {
            kind,
            mode,
            uid,
            gid,
            mtime,
            xattrs: BTreeMap::new(),
            origin: origin.clone(),
        };
        out.push((path, node));
    }
    Ok(out)
}

fn e_link(h: &tar::Header) -> Option<String> {
    h.link_name()
        .ok()
        .flatten()
        .map(|p| p.to_string_lossy().into_owned())
}

/// What to leave out and who wins conflicts while inserting packages.
#[derive(Debug, Default)]
pub struct InsertRules {
    /// Paths matching any of these are skipped.
    pub exclude: Vec<Glob>,
    /// Path → package that wins a content conflict there.
    pub prefer: BTreeMap<String, String>,
}

/// Counts of what one package put into the tree.
#[derive(Debug, Default, Clone, Copy)]
pub struct InsertStats {
    /// Entries inserted.
    pub entries: usize,
    /// Entries skipped by `exclude_paths`.
    pub excluded: usize,
    /// Bytes of regular file data inserted.
    pub bytes: u64,
}

/// Inserts a package's entries into the tree, refusing silent overwrites.
pub fn insert_deb(
    tree: &mut FileTree,
    deb: Deb,
    rules: &InsertRules,
) -> Result<InsertStats, UnpackError> {
    let mut stats = InsertStats::default();
    let origin = format!("pkg:{}", deb.package);
    let excluded = |p: &str| rules.exclude.iter().any(|g| g.matches(p));
    for (path, node) in deb.entries {
        // A hard link to an excluded file would dangle: it goes with its target.
        let link_target_gone = matches!(&node.kind, Kind::Hardlink(t) if excluded(t));
        if node.kind != Kind::Dir && (excluded(&path) || link_target_gone) {
            stats.excluded += 1;
            continue;
        }
        if let Kind::File(d) = &node.kind {
            stats.bytes += d.len() as u64;
        }
        let wins = rules.prefer.get(&path).map(|p| format!("pkg:{p}"));
        let wins = wins
            .as_deref()
            .filter(|w| *w == origin || tree.get(&path).is_some_and(|n| n.origin == *w));
        tree.insert_checked(&path, node, wins)
            .map_err(|source| UnpackError::Tree {
                package: deb.package.clone(),
                source,
            })?;
        stats.entries += 1;
    }
    Ok(stats)
}

/// Reads several packages on all cores, returning them in input order.
pub fn read_debs_parallel(
    items: &[(String, PathBuf)],
    progress: &indicatif::ProgressBar,
) -> Result<Vec<Deb>, UnpackError> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(8);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<Result<Deb, UnpackError>>>> =
        items.iter().map(|_| std::sync::Mutex::new(None)).collect();
    // Largest packages first so one huge kernel .deb does not finish last alone.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse(std::fs::metadata(&items[i].1).map(|m| m.len()).unwrap_or(0))
    });
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(&i) = order.get(k) else { break };
                let (name, path) = &items[i];
                let r = read_deb(path, name);
                progress.inc(1);
                if let Ok(mut slot) = slots[i].lock() {
                    *slot = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    for (slot, (name, path)) in slots.into_iter().zip(items) {
        let r = slot.into_inner().ok().flatten().unwrap_or_else(|| {
            Err(UnpackError::Corrupt {
                path: path.clone(),
                package: name.clone(),
                message: "reader thread failed".into(),
            })
        });
        out.push(r?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
