//! `[[artifact]]` and `[cluster]` end to end: the real binary builds a
//! small variant of profiles/qemu.toml (x86_64 only) with a local `path`
//! artifact standing in for k3s, `[cluster] kind = "k3s"` and the k3s
//! overlay; independent tools then check the root it wrote: debugfs reads
//! the file, its mode, mtime and links, e2fsck checks the ext4 and
//! systemd-analyze verifies the k3s units against the image's own systemd.
//! The packages come from the shared kiln cache, like the other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

mod support;
use support::{copy_dir, repo, root_offset, Root};

/// A stand-in for the k3s binary: a script followed by bytes that make it
/// big enough for extents (not inline data) and unlike any package file.
fn fake_k3s() -> Vec<u8> {
    let mut v = b"#!/bin/sh\necho 'fake k3s' \"$@\"\nexit 0\n".to_vec();
    let mut h = Sha256::digest(b"kiln fake k3s");
    while v.len() < 300_000 {
        v.extend_from_slice(&h);
        h = Sha256::digest(h);
    }
    v
}

/// The test profile: profiles/qemu.toml (built for x86_64 only; its arches
/// stay, so the copied lock is current) with the k3s overlay,
/// a `path` artifact at /usr/bin/k3s pinned to `sha256`, and `[cluster]`.
/// The lock is the default profile's (same packages), the overlays the
/// repository's. Returns the temp folder and the profile path.
fn fixture(sha256: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let profiles = d.path().join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let text = std::fs::read_to_string(repo().join("profiles/qemu.toml")).unwrap();
    let overlays = "overlays = [\"base\", \"qemu\"]";
    assert!(text.contains(overlays), "profiles/qemu.toml changed");
    let text = text
        .replace("name = \"qemu\"", "name = \"k3stest\"")
        .replace(overlays, "overlays = [\"base\", \"qemu\", \"k3s\"]");
    let text = format!(
        "{text}
[[artifact]]
name = \"k3s\"
path = \"bin/k3s\"
sha256 = \"{sha256}\"
dest = \"/usr/bin/k3s\"
mode = \"0755\"

[cluster]
kind = \"k3s\"
kubernetes = \"1.33\"
labels = {{ \"kiln.dev/pool\" = \"edge\" }}
kubelet_args = [\"max-pods=110\"]
"
    );
    let profile = profiles.join("k3stest.toml");
    std::fs::write(&profile, text).unwrap();
    std::fs::create_dir_all(profiles.join("bin")).unwrap();
    std::fs::write(profiles.join("bin/k3s"), fake_k3s()).unwrap();
    // Same packages as the default profile, so its lock is current for this one.
    std::fs::copy(
        repo().join("profiles/qemu.lock"),
        profiles.join("k3stest.lock"),
    )
    .unwrap();
    copy_dir(&repo().join("overlays"), &d.path().join("overlays"));
    (d, profile)
}

fn build(profile: &Path, out: &Path) -> Output {
    let start = std::time::Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("build")
        .arg(profile)
        .args(["--arch", "x86_64", "--format", "raw", "--out"])
        .arg(out)
        .output()
        .unwrap();
    eprintln!("build took {:.1} s", start.elapsed().as_secs_f64());
    o
}

#[test]
fn k3s_artifact_and_cluster_reach_the_image_and_a_wrong_pin_leaves_nothing() {
    let data = fake_k3s();
    let sha = hex::encode(Sha256::digest(&data));
    let (d, profile) = fixture(&sha);
    let out = d.path().join("out");
    let o = build(&profile, &out);
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let (root, manifest) = Root::open_checked(&out, "k3stest-x86_64");
    let offset = root_offset(&manifest);
    let epoch = manifest["epoch"].as_i64().unwrap();
    let c = &manifest["components"]["artifact:k3s"];
    assert_eq!(c["sha256"].as_str(), Some(sha.as_str()), "{c}");
    assert_eq!(c["size"].as_u64(), Some(data.len() as u64));

    // The artifact: bytes, mode, owner and the build epoch as mtime.
    let stage = tempfile::tempdir().unwrap();
    assert!(
        root.dump("/usr/bin/k3s", &stage.path().join("k3s")) == data,
        "/usr/bin/k3s differs from the artifact"
    );
    let stat = root.stat("/usr/bin/k3s");
    assert!(stat.contains("Type: regular"), "{stat}");
    assert!(stat.contains("Mode:  0755"), "{stat}");
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");
    let mtime = stat
        .lines()
        .find_map(|l| l.trim().strip_prefix("mtime: 0x"))
        .and_then(|l| l.split(':').next())
        .map(|h| i64::from_str_radix(h, 16).unwrap())
        .unwrap_or_else(|| panic!("no mtime in:\n{stat}"));
    assert_eq!(mtime, epoch, "{stat}");

    // /etc is read-only: k3s's /etc/rancher is a link into /var.
    let link = root.stat("/etc/rancher");
    assert!(
        link.contains("Type: symlink") && link.contains("\"/var/lib/rancher/etc\""),
        "{link}"
    );

    // The agent's settings carry [cluster].
    let agent_toml = root.dump("/usr/lib/kiln/agent.toml", &stage.path().join("agent.toml"));
    let agent: toml::Value = toml::from_str(&String::from_utf8(agent_toml).unwrap()).unwrap();
    let cluster = &agent["cluster"];
    assert_eq!(cluster["kind"].as_str(), Some("k3s"), "{agent}");
    assert_eq!(cluster["role"].as_str(), Some("any"));
    assert_eq!(cluster["containerd"].as_str(), Some("image"));
    assert_eq!(cluster["labels"]["kiln.dev/pool"].as_str(), Some("edge"));
    assert_eq!(
        cluster["kubelet_args"].as_array().unwrap()[0].as_str(),
        Some("max-pods=110")
    );

    // The units, byte for byte the overlay's, verified by the image's own
    // systemd over the image's whole root (k3s and modprobe in place).
    let s = support::dump_root(
        &out.join("k3stest-x86_64.raw"),
        offset,
        &stage.path().join("root"),
    );
    for unit in ["k3s-agent.service", "k3s-server.service"] {
        let path = format!("usr/lib/systemd/system/{unit}");
        assert_eq!(
            std::fs::read(s.join(&path)).unwrap(),
            std::fs::read(repo().join("overlays/k3s/root").join(&path)).unwrap(),
            "{unit}"
        );
    }
    support::verify_units(&s, &s, &["k3s-agent.service", "k3s-server.service"]);

    // The same build with a wrong pin: the message, and nothing at the
    // output path.
    let wrong = "0".repeat(64);
    std::fs::write(
        &profile,
        std::fs::read_to_string(&profile)
            .unwrap()
            .replace(&sha, &wrong),
    )
    .unwrap();
    let out2 = d.path().join("out2");
    let o = build(&profile, &out2);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "built despite the wrong pin:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("kiln: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    let src = profile.parent().unwrap().join("bin/k3s");
    for needle in [
        "artifact k3s (x86_64)".to_string(),
        src.display().to_string(),
        format!("has sha256 {sha}, the profile pins {wrong}; nothing was cached"),
    ] {
        assert!(line.contains(&needle), "{needle:?} not in: {line}");
    }
    let left: Vec<_> = std::fs::read_dir(&out2)
        .map(|r| r.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "output folder not empty: {left:?}");
    assert!(!kiln::fetch::Cache::from_env()
        .unwrap()
        .artifact_path(&wrong)
        .exists());
}
