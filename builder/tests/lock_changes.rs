//! `kiln lock` after a profile change, through the real binary and the real
//! archive: it writes the lock with the umask's mode, prints every package it
//! added, removed and changed, keeps every old pin the archive still serves
//! (an older version than the newest included), and says which pins it had to
//! move because the archive no longer serves them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::repo;

/// `kiln lock <profile>` under `umask`; stdout and stderr.
fn lock(profile: &Path, umask: &str) -> (String, String) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" lock \"$1\""))
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg(profile)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "kiln lock failed:\n{stderr}");
    (stdout, stderr)
}

/// (for_arch, name) → version of every entry of a lock file.
fn pins(lock: &Path) -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(lock).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    value["package"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_string();
            ((s("for_arch"), s("name")), s("version"))
        })
        .collect()
}

/// The lock text with the x86_64 entry of `name` given `version`.
fn set_version(text: &str, name: &str, version: &str) -> String {
    let blocks: Vec<String> = text
        .split("[[package]]")
        .map(|b| {
            if b.contains(&format!("\nname = \"{name}\"\n"))
                && b.contains("\nfor_arch = \"x86_64\"\n")
            {
                let line = b.lines().find(|l| l.starts_with("version = ")).unwrap();
                b.replace(line, &format!("version = \"{version}\""))
            } else {
                b.to_string()
            }
        })
        .collect();
    let out = blocks.join("[[package]]");
    assert_ne!(out, text, "no x86_64 entry for {name}");
    out
}

fn add_package(profile: &Path, name: &str) {
    let text = std::fs::read_to_string(profile).unwrap();
    let edited = text.replacen(
        "\"busybox-static\",",
        &format!("\"busybox-static\", \"{name}\","),
        1,
    );
    assert_ne!(edited, text);
    std::fs::write(profile, edited).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The package cache kiln uses here (as `kiln` finds it).
fn cache() -> PathBuf {
    std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("kiln"))
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kiln")
                })
        })
}

/// The version of `name` in the first base suite's amd64 index (not its
/// updates), from the apt lists `kiln lock` left in the cache.
fn base_suite_version(name: &str) -> String {
    let lists = cache().join("apt/x86_64/state/lists");
    let file = std::fs::read_dir(&lists)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.contains("_dists_trixie_main_binary-amd64_Packages")
        })
        .unwrap_or_else(|| panic!("no trixie amd64 index in {}", lists.display()));
    let text = if file.extension().is_some_and(|e| e == "lz4") {
        let out = Command::new("lz4").arg("-dc").arg(&file).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    } else {
        std::fs::read_to_string(&file).unwrap()
    };
    let stanza = text
        .split("\n\n")
        .find(|s| s.starts_with(&format!("Package: {name}\n")))
        .unwrap_or_else(|| panic!("{name} not in {}", file.display()));
    stanza
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap()
        .to_string()
}

#[test]
fn a_profile_change_moves_only_what_it_needs_and_says_what_changed() {
    let d = tempfile::tempdir().unwrap();
    support::copy_dir(&repo().join("overlays"), &d.path().join("overlays"));
    std::fs::create_dir_all(d.path().join("profiles")).unwrap();
    let profile = d.path().join("profiles/qemu.toml");
    let lock_file = d.path().join("profiles/qemu.lock");
    std::fs::copy(repo().join("profiles/qemu.toml"), &profile).unwrap();
    std::fs::copy(repo().join("profiles/qemu.lock"), &lock_file).unwrap();
    let before = pins(&lock_file);

    // One package added: it and what it needs are listed, every other pin stays
    // unless the archive no longer serves it, and the lock gets the umask's mode.
    add_package(&profile, "htop");
    let (stdout, stderr) = lock(&profile, "027");
    assert_eq!(mode(&lock_file), 0o640, "{stdout}");
    let after = pins(&lock_file);
    for arch in ["x86_64", "arm64"] {
        let htop = &after[&(arch.to_string(), "htop".to_string())];
        assert!(
            stdout.contains(&format!("  + htop {htop}\n")),
            "htop not listed:\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("changes for {arch}: ")),
            "{stdout}"
        );
    }
    for ((arch, name), old) in &before {
        let new = &after[&(arch.clone(), name.clone())];
        if new != old {
            assert!(
                stdout.contains(&format!("  ~ {name} {old} -> {new} ({old} no longer served)")),
                "{arch} {name} moved {old} -> {new} without the archive forcing it:\n{stdout}\n{stderr}"
            );
        }
    }

    // An older pin the archive still serves is kept (not moved to the newest);
    // a pin it no longer serves is moved, and said so.
    let old_runc = base_suite_version("runc");
    let newest_runc = &after[&("x86_64".to_string(), "runc".to_string())];
    assert_ne!(
        &old_runc, newest_runc,
        "runc has one version only: pick another package"
    );
    let text = std::fs::read_to_string(&lock_file).unwrap();
    let text = set_version(&text, "runc", &old_runc);
    let text = set_version(&text, "bash", "0.0-kiln-gone");
    std::fs::write(&lock_file, text).unwrap();
    add_package(&profile, "tree");
    let (stdout, _) = lock(&profile, "022");
    assert_eq!(mode(&lock_file), 0o644);
    let last = pins(&lock_file);
    assert_eq!(
        last[&("x86_64".to_string(), "runc".to_string())],
        old_runc,
        "{stdout}"
    );
    assert!(!stdout.contains("~ runc"), "{stdout}");
    let bash = &last[&("x86_64".to_string(), "bash".to_string())];
    assert!(
        stdout.contains(&format!(
            "  ~ bash 0.0-kiln-gone -> {bash} (0.0-kiln-gone no longer served)\n"
        )),
        "{stdout}"
    );
    assert!(stdout.contains("  + tree "), "{stdout}");
}
