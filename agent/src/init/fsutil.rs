//! Filesystem helpers for switching root: looking up a path as it will be seen after
//! chroot, and emptying the initramfs.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Symlink hops allowed before giving up (the kernel's limit is 40 too).
const MAX_LINKS: usize = 40;

/// Resolves `path` as if `root` were `/`: absolute symlinks (Debian's `/sbin/init ->
/// /lib/systemd/systemd`) are followed inside `root`, and `..` never leaves it. Returns
/// the host path of the final file, or None if it does not exist or loops.
pub fn resolve_in_root(root: &Path, path: &str) -> Option<PathBuf> {
    // Components still to walk, in reverse so the next one is at the end.
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(comp) = todo.pop() {
        match comp.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let host = done
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&comp);
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > MAX_LINKS {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                done.clear();
            }
            todo.extend(components(&target).into_iter().rev());
        } else {
            done.push(comp);
        }
    }
    Some(done.iter().fold(root.to_path_buf(), |p, c| p.join(c)))
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".to_string()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// What emptying a tree did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RemoveStats {
    /// Files, links and device nodes removed.
    pub files: u64,
    /// Directories removed.
    pub dirs: u64,
    /// Entries left behind because of a different filesystem (mount points).
    pub skipped_mounts: u64,
    /// Entries that could not be removed, with the first error.
    pub errors: u64,
    /// The first error, for the log.
    pub first_error: Option<String>,
}

/// Deletes everything under `dir` that is on device `dev`, without following symlinks
/// or crossing into other filesystems (the new root is mounted under the old one).
/// `dir` itself stays. Best effort: errors are counted, not fatal.
pub fn remove_tree_on_dev(dir: &Path, dev: u64, stats: &mut RemoveStats) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            note_error(stats, dir, &e);
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                note_error(stats, dir, &e);
                continue;
            }
        };
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => {
                note_error(stats, &path, &e);
                continue;
            }
        };
        if meta.dev() != dev {
            stats.skipped_mounts += 1;
            continue;
        }
        if meta.is_dir() {
            remove_tree_on_dev(&path, dev, stats);
            match fs::remove_dir(&path) {
                Ok(()) => stats.dirs += 1,
                Err(e) => note_error(stats, &path, &e),
            }
        } else {
            match fs::remove_file(&path) {
                Ok(()) => stats.files += 1,
                Err(e) => note_error(stats, &path, &e),
            }
        }
    }
}

fn note_error(stats: &mut RemoveStats, path: &Path, e: &io::Error) {
    stats.errors += 1;
    if stats.first_error.is_none() {
        stats.first_error = Some(format!("{}: {e}", path.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolves_debian_init_links_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("usr/sbin")).unwrap();
        fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
        fs::write(r.join("usr/lib/systemd/systemd"), b"elf").unwrap();
        // merged /usr: relative directory links; systemd-sysv: an absolute file link.
        symlink("usr/sbin", r.join("sbin")).unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("/lib/systemd/systemd", r.join("usr/sbin/init")).unwrap();
        let want = r.join("usr/lib/systemd/systemd");
        assert_eq!(resolve_in_root(r, "/sbin/init"), Some(want.clone()));
        assert_eq!(
            resolve_in_root(r, "/lib/systemd/systemd"),
            Some(want.clone())
        );
        assert_eq!(
            resolve_in_root(r, "/../../../usr/./lib/systemd/systemd"),
            Some(want)
        );
        // A plain lookup from outside the root would follow the absolute link to the host.
        assert_eq!(resolve_in_root(r, "/usr/lib/systemd/systemd-missing"), None);
        symlink("/nowhere", r.join("dangling")).unwrap();
        assert_eq!(resolve_in_root(r, "/dangling"), None);
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("/loop1", r.join("loop2")).unwrap();
        assert_eq!(resolve_in_root(r, "/loop1"), None);
    }

    #[test]
    fn removes_the_tree_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"x").unwrap();
        let r = t.path().join("initramfs");
        fs::create_dir_all(r.join("lib/modules/6.1/kernel")).unwrap();
        fs::write(r.join("lib/modules/6.1/kernel/ext4.ko"), b"ko").unwrap();
        fs::write(r.join("init"), b"elf").unwrap();
        symlink(outside.path(), r.join("link-to-outside")).unwrap();
        let dev = fs::symlink_metadata(&r).unwrap().dev();

        // A different device number stands for a mount point: nothing is touched.
        let mut stats = RemoveStats::default();
        remove_tree_on_dev(&r, dev.wrapping_add(1), &mut stats);
        assert_eq!(stats.skipped_mounts, 3);
        assert!(r.join("init").exists());

        let mut stats = RemoveStats::default();
        remove_tree_on_dev(&r, dev, &mut stats);
        assert_eq!(stats.errors, 0, "{:?}", stats.first_error);
        assert_eq!((stats.files, stats.dirs), (3, 4));
        assert_eq!(fs::read_dir(&r).unwrap().count(), 0);
        assert!(outside.path().join("keep").exists());
    }
}
