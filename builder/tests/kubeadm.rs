//! profiles/kubeadm.toml end to end: the real binary builds it (x86_64 only) with local
//! stand-ins for the kubelet and kubeadm (dl.k8s.io is unreachable from the machines kiln
//! is tested on, as builder/tests/artifact.rs does for k3s): the profile's text is kept,
//! each `url = ...` becomes a `path` pinned to its stand-in's sha256, and `kubernetes`
//! is stated, since a local file names no release. Independent tools then check the
//! root: e2fsck the ext4, debugfs the files, links and units. The test also checks that
//! the containerd the lock pins (from forky) supports the profile's Kubernetes version by
//! containerd's own matrix, the one `kiln-agent preflight` checks on the node.
//!
//! The image's own programs check what the host's are too old for: its systemd (257)
//! verifies the units, and its containerd (2.x, from forky) reads the base overlay's
//! containerd config with the settings the kubelet needs.
//!
//! The packages come from the shared kiln cache, like the other tests; the lock is
//! profiles/kubeadm.lock.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::path::PathBuf;
use std::process::Command;

use kiln_contract::kubernetes::{self, ContainerdVersion, KubeVersion, Support};
use sha2::{Digest, Sha256};

mod support;
use support::{copy_dir, repo, root_offset, Root};

/// The release profiles/kubeadm.toml pins.
const RELEASE: &str = "1.34.2";

/// A stand-in for `name` on `arch`: a script followed by bytes that make it big enough
/// for extents and unlike any package file or other stand-in.
fn stand_in(name: &str, arch: &str) -> Vec<u8> {
    let mut v = format!("#!/bin/sh\necho 'fake {name}' \"$@\"\nexit 0\n").into_bytes();
    let mut h = Sha256::digest(format!("kiln fake {name} {arch}"));
    while v.len() < 200_000 {
        v.extend_from_slice(&h);
        h = Sha256::digest(h);
    }
    v
}

/// profiles/kubeadm.toml, its lock and the repository's overlays in a temp folder, with
/// every artifact's `url` replaced by a local stand-in and its pin by the stand-in's
/// sha256, and `kubernetes` stated. Returns the folder, the profile and the stand-ins
/// (file name → bytes).
fn fixture() -> (tempfile::TempDir, PathBuf, Vec<(String, Vec<u8>)>) {
    let d = tempfile::tempdir().unwrap();
    let profiles = d.path().join("profiles");
    std::fs::create_dir_all(profiles.join("bin")).unwrap();
    let mut text = std::fs::read_to_string(repo().join("profiles/kubeadm.toml")).unwrap();
    let mut stand_ins = Vec::new();
    for (arch, deb_arch) in [("x86_64", "amd64"), ("arm64", "arm64")] {
        for name in ["kubelet", "kubeadm"] {
            let url = format!("https://dl.k8s.io/release/v{RELEASE}/bin/linux/{deb_arch}/{name}");
            let line = format!("url = \"{url}\"\nsha256 = \"");
            let at = text
                .find(&line)
                .unwrap_or_else(|| panic!("profiles/kubeadm.toml has no {url}"));
            let pin_at = at + line.len();
            let old_pin = text[pin_at..pin_at + 64].to_string();
            let file = format!("{name}-{deb_arch}");
            let data = stand_in(name, arch);
            let sha = hex::encode(Sha256::digest(&data));
            std::fs::write(profiles.join("bin").join(&file), &data).unwrap();
            text = text.replacen(
                &format!("{line}{old_pin}"),
                &format!("path = \"bin/{file}\"\nsha256 = \"{sha}"),
                1,
            );
            stand_ins.push((file, data));
        }
    }
    assert!(
        !text.lines().any(|l| l.starts_with("url = ")),
        "an artifact kept its URL:\n{text}"
    );
    let cluster = "[cluster]\nkind = \"kubeadm\"\n";
    assert!(text.contains(cluster), "profiles/kubeadm.toml changed");
    let text = text.replacen(
        cluster,
        &format!("{cluster}kubernetes = \"{RELEASE}\"\n"),
        1,
    );
    let profile = profiles.join("kubeadm.toml");
    std::fs::write(&profile, text).unwrap();
    // The lock decides the packages; the artifacts and [cluster] are not its inputs.
    let lock = repo().join("profiles/kubeadm.lock");
    std::fs::copy(&lock, profiles.join("kubeadm.lock"))
        .unwrap_or_else(|e| panic!("{}: {e}", lock.display()));
    copy_dir(&repo().join("overlays"), &d.path().join("overlays"));
    (d, profile, stand_ins)
}

/// The version the lock pins for `package` on x86_64.
fn locked_version(lock: &str, package: &str) -> String {
    let lock: toml::Value = toml::from_str(lock).unwrap();
    lock["package"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(package) && p["arch"].as_str() == Some("amd64"))
        .and_then(|p| p["version"].as_str())
        .unwrap_or_else(|| panic!("{package} is not in the lock for amd64"))
        .to_string()
}

#[test]
fn kubeadm_profile_builds_with_stand_ins_and_a_containerd_its_kubernetes_supports() {
    let (d, profile, stand_ins) = fixture();

    // The runtime the lock pins supports the Kubernetes release the profile pins.
    let lock = std::fs::read_to_string(profile.with_extension("lock")).unwrap();
    let containerd = locked_version(&lock, "containerd");
    let version = ContainerdVersion::parse(&containerd).unwrap();
    let kube = KubeVersion::parse(RELEASE).unwrap();
    assert!(
        matches!(kubernetes::check(kube, version), Ok(Support::Listed(_))),
        "the lock's containerd {containerd}: {:?}",
        kubernetes::check(kube, version)
    );

    let out = d.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("build")
        .arg(&profile)
        .args(["--arch", "x86_64", "--format", "raw", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (root, manifest) = Root::open_checked(&out, "kubeadm-x86_64");
    let offset = root_offset(&manifest);

    // The x86_64 stand-ins at their dests, executable, and nothing of arm64's.
    let stage = tempfile::tempdir().unwrap();
    for (file, data) in &stand_ins {
        let name = file.split('-').next().unwrap();
        if !file.ends_with("-amd64") {
            continue;
        }
        let dest = format!("/usr/bin/{name}");
        assert!(
            root.dump(&dest, &stage.path().join(file)) == *data,
            "{dest} differs from {file}"
        );
        let stat = root.stat(&dest);
        assert!(stat.contains("Mode:  0755"), "{stat}");
        let c = &manifest["components"][format!("artifact:{name}")];
        assert_eq!(
            c["sha256"].as_str(),
            Some(hex::encode(Sha256::digest(data)).as_str()),
            "{c}"
        );
    }

    // kubeadm writes under /etc/kubernetes: a link into the writable /var.
    let link = root.stat("/etc/kubernetes");
    assert!(
        link.contains("Type: symlink") && link.contains("\"/var/lib/kubernetes/etc\""),
        "{link}"
    );
    // The kubelet unit and its kubeadm drop-in, and the image's containerd, enabled.
    root.stat("/usr/lib/systemd/system/kubelet.service");
    root.stat("/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf");
    root.stat("/usr/bin/containerd");
    root.stat("/usr/sbin/runc");
    let wants = root.debugfs("ls -l /etc/systemd/system/multi-user.target.wants");
    for unit in [
        "containerd.service",
        "kiln-cluster.service",
        "kiln-preflight.service",
    ] {
        assert!(wants.contains(unit), "{unit} is not enabled:\n{wants}");
    }
    assert!(
        !wants.contains("kubelet.service"),
        "kiln-cluster starts the kubelet:\n{wants}"
    );

    // agent.toml carries the cluster and its version for preflight.
    let agent = root.dump("/usr/lib/kiln/agent.toml", &stage.path().join("agent.toml"));
    let agent: toml::Value = toml::from_str(&String::from_utf8(agent).unwrap()).unwrap();
    let cluster = &agent["cluster"];
    assert_eq!(cluster["kind"].as_str(), Some("kubeadm"), "{agent}");
    assert_eq!(cluster["kubeadm_api"].as_str(), Some("v1beta4"));
    assert_eq!(cluster["kubernetes"].as_str(), Some(RELEASE));
    assert!(cluster.get("containerd").is_none(), "{agent}");

    // The manifest names containerd as the lock pins it, from forky.
    let pkg = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "containerd")
        .unwrap();
    assert_eq!(pkg["version"].as_str(), Some(containerd.as_str()));
    assert_eq!(pkg["suite"].as_str(), Some("forky"));

    // The image's systemd verifies the units over the image's whole root.
    let sysroot = support::dump_root(
        &out.join("kubeadm-x86_64.raw"),
        offset,
        &stage.path().join("root"),
    );
    support::verify_units(
        &sysroot,
        &sysroot,
        &[
            "kubelet.service",
            "containerd.service",
            "kiln-cluster.service",
            "kiln-preflight.service",
        ],
    );

    // containerd 2.x reads the base overlay's config (written in version 2, which it
    // migrates) and ends up with what the kubelet needs: CRI on, the systemd cgroup
    // driver for runc, overlayfs, CNI where installers put it.
    let dump = support::image_command(&sysroot, "usr/bin/containerd")
        .arg("--config")
        .arg(sysroot.join("etc/containerd/config.toml"))
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "containerd config dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let eff: toml::Value = toml::from_str(&String::from_utf8_lossy(&dump.stdout)).unwrap();
    assert_eq!(eff["version"].as_integer(), Some(3), "{eff}");
    assert_eq!(
        eff["grpc"]["address"].as_str(),
        Some("/run/containerd/containerd.sock")
    );
    let disabled = eff["disabled_plugins"].as_array().unwrap();
    assert!(
        !disabled
            .iter()
            .any(|p| p.as_str().unwrap_or_default().contains("cri")),
        "CRI is disabled: {disabled:?}"
    );
    let runtime = &eff["plugins"]["io.containerd.cri.v1.runtime"];
    assert_eq!(
        runtime["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true),
        "{runtime}"
    );
    assert_eq!(
        runtime["containerd"]["runtimes"]["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    // containerd 2.x keeps a list of plugin folders.
    assert_eq!(
        runtime["cni"]["bin_dirs"].as_array().map(|a| a.as_slice()),
        Some(&[toml::Value::from("/opt/cni/bin")][..]),
        "{runtime}"
    );
    assert_eq!(runtime["cni"]["conf_dir"].as_str(), Some("/etc/cni/net.d"));
    let images = &eff["plugins"]["io.containerd.cri.v1.images"];
    assert_eq!(
        images["snapshotter"].as_str(),
        Some("overlayfs"),
        "{images}"
    );
}
