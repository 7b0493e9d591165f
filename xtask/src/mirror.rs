//! The suite builds from a mirror of the checkout at a fixed place in the cache.
//!
//! cargo decides what to recompile from file times, and rustc's incremental cache is tied
//! to the folder it compiled in. A fresh clone (CI makes one per run, each in its own
//! folder) gives every file a new time in a new folder, so even with a warm target folder
//! all of kiln's own crates would compile again (about 3 minutes here, plus the agent). The
//! mirror keeps one folder and copies only the files whose bytes or mode differ, so an
//! unchanged file keeps its old time and only what really changed is compiled again.
//!
//! The files mirrored are git's (tracked, plus untracked ones it does not ignore), or every
//! file but `target/` and `.git/` outside a git checkout. Files the checkout no longer has
//! are removed from the mirror. One suite at a time uses a mirror: the others wait.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A lock on the mirror, held while the suite runs from it.
pub struct Held {
    _lock: std::fs::File,
}

/// What a sync did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Files the mirror holds.
    pub files: usize,
    /// Files written because they were new or differed.
    pub written: usize,
    /// Files removed because the checkout no longer has them.
    pub removed: usize,
}

/// Takes the mirror's lock (waiting for another suite that holds it).
pub fn lock(mirror: &Path) -> anyhow::Result<Held> {
    let parent = mirror.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
    let path = mirror.with_extension("lock");
    let f = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
    if f.try_lock().is_err() {
        eprintln!(
            "xtask: another test suite is using {}; waiting for it",
            mirror.display()
        );
        f.lock()
            .with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(Held { _lock: f })
}

/// The checkout's files, relative to `root`: git's list when `root` is a checkout's top
/// folder, else every file under it but `target` and `.git`.
pub fn checkout_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    // Only a checkout's own top folder is asked. git answers for a folder inside another
    // checkout too, and when that checkout ignores the folder the answer is empty: the
    // suite's mirror sits beside the target folder, so with CARGO_TARGET_DIR inside a
    // clone the listing test below, compiled from the mirror, found no file.
    let git = root.join(".git").exists().then(|| {
        Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(root)
            .output()
    });
    let mut files: Vec<PathBuf> = match git {
        Some(Ok(out)) if out.status.success() => out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
            // A tracked file deleted in the working tree is not part of it.
            .filter(|p| root.join(p).symlink_metadata().is_ok())
            .collect(),
        _ => {
            let mut v = Vec::new();
            walk(root, root, &mut v)?;
            v
        }
    };
    files.sort();
    files.dedup();
    Ok(files)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let e = e.with_context(|| dir.display().to_string())?;
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if dir == root && matches!(rel.to_str(), Some("target" | ".git")) {
            continue;
        }
        if e.file_type()
            .with_context(|| path.display().to_string())?
            .is_dir()
        {
            walk(root, &path, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Makes `mirror` hold exactly `files` of `root`, touching only what differs.
pub fn sync(root: &Path, mirror: &Path, files: &[PathBuf]) -> anyhow::Result<Synced> {
    std::fs::create_dir_all(mirror).with_context(|| mirror.display().to_string())?;
    let mut done = Synced {
        files: files.len(),
        ..Synced::default()
    };
    for rel in files {
        if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
            bail!("{}: not a path inside the checkout", rel.display());
        }
        let from = root.join(rel);
        let to = mirror.join(rel);
        if copy_if_different(&from, &to)? {
            done.written += 1;
        }
    }
    let keep: BTreeSet<&PathBuf> = files.iter().collect();
    let mut present = Vec::new();
    walk(mirror, mirror, &mut present)?;
    for rel in present {
        if !keep.contains(&rel) {
            let p = mirror.join(&rel);
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            done.removed += 1;
        }
    }
    Ok(done)
}

/// Copies `from` to `to` unless `to` already has the same bytes (or link target) and
/// mode; true when it wrote.
fn copy_if_different(from: &Path, to: &Path) -> anyhow::Result<bool> {
    let meta = from
        .symlink_metadata()
        .with_context(|| from.display().to_string())?;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).with_context(|| from.display().to_string())?;
        if std::fs::read_link(to).ok().as_ref() == Some(&target) {
            return Ok(false);
        }
        let _ = std::fs::remove_file(to);
        std::os::unix::fs::symlink(&target, to).with_context(|| to.display().to_string())?;
        return Ok(true);
    }
    let bytes = std::fs::read(from).with_context(|| from.display().to_string())?;
    let mode = meta.permissions().mode() & 0o7777;
    if let Ok(old) = to.symlink_metadata() {
        if old.is_file()
            && old.permissions().mode() & 0o7777 == mode
            && std::fs::read(to).ok().as_deref() == Some(&bytes[..])
        {
            return Ok(false);
        }
        if old.is_dir() {
            std::fs::remove_dir_all(to).with_context(|| to.display().to_string())?;
        }
    }
    let tmp = to.with_file_name(format!(
        ".{}.xtask-tmp",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, &bytes).with_context(|| tmp.display().to_string())?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, to).with_context(|| to.display().to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mtime(p: &Path) -> std::time::SystemTime {
        std::fs::metadata(p).unwrap().modified().unwrap()
    }

    #[test]
    fn only_what_differs_is_written_and_what_is_gone_is_removed() {
        let d = std::env::temp_dir().join(format!("xtask-mirror-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (src, dst) = (d.join("src"), d.join("mirror"));
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("a/same.rs"), "fn a() {}").unwrap();
        std::fs::write(src.join("a/changed.rs"), "fn b() {}").unwrap();
        std::fs::write(src.join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("a/same.rs", src.join("link")).unwrap();
        let files: Vec<PathBuf> = ["a/changed.rs", "a/same.rs", "link", "run.sh"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let first = sync(&src, &dst, &files).unwrap();
        assert_eq!((first.files, first.written, first.removed), (4, 4, 0));
        assert_eq!(
            std::fs::metadata(dst.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            PathBuf::from("a/same.rs")
        );
        let kept = mtime(&dst.join("a/same.rs"));
        // A new checkout: every file has a new time, one has new bytes, one is gone.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(src.join("a/same.rs"), "fn a() {}").unwrap();
        std::fs::write(src.join("a/changed.rs"), "fn b() { 1; }").unwrap();
        let files: Vec<PathBuf> = ["a/changed.rs", "a/same.rs", "link"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let second = sync(&src, &dst, &files).unwrap();
        assert_eq!((second.written, second.removed), (1, 1));
        assert_eq!(
            mtime(&dst.join("a/same.rs")),
            kept,
            "an unchanged file keeps its time"
        );
        assert_eq!(
            std::fs::read_to_string(dst.join("a/changed.rs")).unwrap(),
            "fn b() { 1; }"
        );
        assert!(!dst.join("run.sh").exists());
        // A mode change alone is a change.
        std::fs::set_permissions(
            src.join("a/same.rs"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(sync(&src, &dst, &files).unwrap().written, 1);
        assert!(sync(&src, &dst, &[PathBuf::from("../x")]).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_folder_ignored_inside_another_checkout_is_walked() {
        let d = std::env::temp_dir().join(format!("xtask-nested-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let repo = d.as_path();
        let git = |args: &[&str]| {
            let ok = Command::new("git")
                .args(args)
                .current_dir(repo)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(repo.join(".gitignore"), "/mirror/\n").unwrap();
        let mirror = repo.join("mirror");
        std::fs::create_dir_all(mirror.join("src")).unwrap();
        std::fs::write(mirror.join("Cargo.toml"), "").unwrap();
        std::fs::write(mirror.join("src/lib.rs"), "").unwrap();
        std::fs::create_dir_all(mirror.join("target")).unwrap();
        std::fs::write(mirror.join("target/x"), "").unwrap();
        assert_eq!(
            checkout_files(&mirror).unwrap(),
            [PathBuf::from("Cargo.toml"), PathBuf::from("src/lib.rs")]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_checkout_lists_git_files_without_target() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let files = checkout_files(&root).unwrap();
        assert!(files.contains(&PathBuf::from("Cargo.toml")));
        assert!(files.contains(&PathBuf::from("xtask/src/mirror.rs")));
        assert!(!files
            .iter()
            .any(|f| f.starts_with("target") || f.starts_with(".git")));
    }
}
