//! Reproducibility: the same profile, lock and kiln give byte-identical
//! images, manifests and every output format when built twice in different
//! output, cache and temp folders, under different umasks, at different
//! times. Both builds run the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// sha256 of every file in `dir`, by name.
fn digests(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            hex::encode(Sha256::digest(&bytes)),
        );
    }
    out
}

/// `kiln build` of the default profile for `arch` with every format, under
/// `umask`, with its own TMPDIR and the given cache.
fn build(
    arch: &str,
    formats: &str,
    work: &Path,
    cache: &Path,
    umask: &str,
) -> BTreeMap<String, String> {
    let out = work.join("out");
    let tmp = work.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let profile = repo().join("profiles/qemu.toml");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["-q", "--cache"])
        .arg(cache)
        .arg("build")
        .arg(&profile)
        .args(["--arch", arch, "--format", formats, "--out"])
        .arg(&out)
        .env("TMPDIR", &tmp)
        .env_remove("SOURCE_DATE_EPOCH")
        .status()
        .unwrap();
    assert!(status.success(), "kiln build --arch {arch} failed");
    digests(&out)
}

fn reproducible(arch: &str, formats: &str, want: &[&str]) {
    let cache = kiln::fetch::Cache::from_env().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = build(arch, formats, a.path(), cache.root(), "022");
    // A second cache folder with the same verified packages (hard links:
    // the cache is content-addressed, and this keeps the test offline).
    let cache_b = b.path().join("cache");
    std::fs::create_dir_all(&cache_b).unwrap();
    let cp = Command::new("cp")
        .arg("-al")
        .arg(cache.root().join("sha256"))
        .arg(&cache_b)
        .status()
        .unwrap();
    assert!(cp.success(), "cp -al of the package cache failed");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build(arch, formats, b.path(), &cache_b, "077");
    let names: Vec<&String> = first.keys().collect();
    for want in want.iter().chain(&[".raw", ".manifest.json"]) {
        assert!(
            names.iter().any(|n| n.ends_with(want)),
            "{arch}: no *{want} output among {names:?}"
        );
    }
    assert_eq!(
        first, second,
        "{arch}: outputs differ between the two builds"
    );
}

#[test]
fn x86_64_builds_are_byte_identical() {
    reproducible(
        "x86_64",
        "raw,raw.zst,qcow2,vhd,gce",
        &[".raw.zst", ".raw.bmap", ".qcow2", ".vhd", ".gce.tar.gz"],
    );
}

#[test]
fn arm64_builds_are_byte_identical() {
    // The format writers are the same code for both arches and x86_64 runs
    // them all; `make repro` builds every format of both twice.
    reproducible("arm64", "raw,qcow2", &[".qcow2"]);
}
