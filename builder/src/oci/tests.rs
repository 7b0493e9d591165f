#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use super::*;
use crate::profile::dto::ContainerImageFile;
use crate::tree::Kind;
use crate::unpack::Deb;

const EPOCH: i64 = 1_700_000_000;

fn node(kind: Kind, mode: u32) -> Node {
    Node {
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_800_000_000,
        xattrs: BTreeMap::new(),
        origin: "pkg:demo".into(),
    }
}

fn demo_deb() -> Deb {
    Deb {
        package: "demo".into(),
        control: BTreeMap::new(),
        entries: vec![
            ("usr".into(), node(Kind::Dir, 0o755)),
            ("usr/bin".into(), node(Kind::Dir, 0o755)),
            (
                "usr/bin/tool".into(),
                node(Kind::File(Arc::from(&b"#!/bin/sh\necho hi\n"[..])), 0o755),
            ),
            (
                "usr/bin/alias".into(),
                node(Kind::Hardlink("usr/bin/tool".into()), 0o755),
            ),
            (
                "usr/share/doc/demo/copyright".into(),
                node(Kind::File(Arc::from(&b"free"[..])), 0o644),
            ),
            (
                "usr/bin/sh".into(),
                node(Kind::Symlink("tool".into()), 0o777),
            ),
        ],
    }
}

fn spec(reference: &str) -> ImageSpec {
    let file = ContainerImageFile {
        reference: reference.into(),
        packages: vec!["demo".into()],
        cmd: Some(vec!["/bin/tool".into(), "x".into()]),
        entrypoint: None,
        env: BTreeMap::from([("LANG".into(), "C.UTF-8".into())]),
        workdir: Some("/".into()),
    };
    validate_images(&[file]).unwrap().remove(0)
}

fn rules() -> InsertRules {
    InsertRules {
        exclude: vec![unpack::Glob::new("usr/share/doc/**")],
        prefer: BTreeMap::new(),
    }
}

/// The archive's members as (path, bytes).
fn members(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(archive).entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(path, data);
    }
    out
}

#[test]
fn refs_parse_and_name_files() {
    let r = ImageRef::parse("localhost/kiln/busybox:1.35").unwrap();
    assert_eq!(r.repository, "localhost/kiln/busybox");
    assert_eq!(r.tag, "1.35");
    assert_eq!(r.to_string(), "localhost/kiln/busybox:1.35");
    assert_eq!(r.file_name(), "localhost_kiln_busybox_1.35.oci.tar");
    let r = ImageRef::parse("registry.example.com:5000/a/b-c:v1.0_x").unwrap();
    assert_eq!(r.repository, "registry.example.com:5000/a/b-c");
    assert_eq!(r.tag, "v1.0_x");
    for bad in [
        "busybox:1.35",                    // no domain: CRI would look under docker.io
        "localhost/kiln/busybox",          // no tag
        "localhost:5000/kiln/busybox",     // port, but no tag
        "localhost/Kiln/busybox:1",        // uppercase path
        "localhost/kiln/busybox:",         // empty tag
        "localhost/kiln/busybox:-x",       // tag starts with '-'
        "localhost/kiln/busybox@sha256:0", // digest
        "localhost//busybox:1",            // empty component
        "localhost/kiln/busy box:1",
        "",
    ] {
        let e = ImageRef::parse(bad).unwrap_err();
        assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
    }
}

#[test]
fn specs_are_validated_with_field_names() {
    let good = ContainerImageFile {
        reference: "localhost/kiln/busybox:1.35".into(),
        packages: vec!["busybox-static".into()],
        ..Default::default()
    };
    let specs = validate_images(std::slice::from_ref(&good)).unwrap();
    assert_eq!(specs[0].env_list(), vec![format!("PATH={DEFAULT_PATH}")]);
    let cases: Vec<(ContainerImageFile, &str)> = vec![
        (
            ContainerImageFile {
                reference: "busybox".into(),
                ..good.clone()
            },
            "container_image[0].ref",
        ),
        (
            ContainerImageFile {
                packages: vec![],
                ..good.clone()
            },
            "container_image[0].packages",
        ),
        (
            ContainerImageFile {
                packages: vec!["Busybox".into()],
                ..good.clone()
            },
            "container_image[0].packages[0]",
        ),
        (
            ContainerImageFile {
                cmd: Some(vec![]),
                ..good.clone()
            },
            "container_image[0].cmd",
        ),
        (
            ContainerImageFile {
                entrypoint: Some(vec![String::new()]),
                ..good.clone()
            },
            "container_image[0].entrypoint",
        ),
        (
            ContainerImageFile {
                env: BTreeMap::from([("A=B".into(), "x".into())]),
                ..good.clone()
            },
            "container_image[0].env.A=B",
        ),
        (
            ContainerImageFile {
                workdir: Some("tmp".into()),
                ..good.clone()
            },
            "container_image[0].workdir",
        ),
    ];
    for (file, field) in cases {
        let e = validate_images(&[file]).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }
    let e = validate_images(&[good.clone(), good]).unwrap_err();
    assert_eq!(e.field, "container_image[1].ref");
    assert!(e.message.contains("same reference"), "{e}");
}

#[test]
fn rfc3339_matches_known_dates() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
}

#[test]
fn layer_follows_merged_usr_and_rules() {
    let layer = layer_tree(vec![demo_deb()], &rules(), EPOCH).unwrap();
    assert!(matches!(&layer.get("bin").unwrap().kind, Kind::Symlink(t) if t == "usr/bin"));
    assert!(layer.get("usr/share/doc/demo/copyright").is_none());
    assert_eq!(layer.get("usr/bin/tool").unwrap().mtime, EPOCH);
    assert_eq!(&*layer.read("bin/sh").unwrap(), b"#!/bin/sh\necho hi\n");
}

#[test]
fn archive_is_a_valid_layout_with_matching_digests() {
    let layer = layer_tree(vec![demo_deb()], &rules(), EPOCH).unwrap();
    let s = spec("localhost/kiln/demo:1");
    let a = build_archive(&s, &layer, Arch::Arm64, EPOCH).unwrap();
    let m = members(&a.bytes);
    let names: Vec<&str> = m.keys().map(String::as_str).collect();
    let blob = |d: &Descriptor| format!("blobs/sha256/{}", d.digest.trim_start_matches("sha256:"));
    let mut want = vec![
        "blobs/".to_string(),
        "blobs/sha256/".to_string(),
        blob(&a.manifest),
        blob(&a.config),
        blob(&a.layer),
        "index.json".into(),
        "oci-layout".into(),
    ];
    want.sort();
    assert_eq!(names, want);
    for (path, data) in &m {
        if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(digest(data), format!("sha256:{hex}"), "{path}");
        }
    }
    assert_eq!(m["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index: serde_json::Value = serde_json::from_slice(&m["index.json"]).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["mediaType"], media::INDEX);
    let md = &index["manifests"][0];
    assert_eq!(md["mediaType"], media::MANIFEST);
    assert_eq!(md["digest"], a.manifest.digest.as_str());
    assert_eq!(md["size"], m[&blob(&a.manifest)].len());
    assert_eq!(md["platform"]["architecture"], "arm64");
    assert_eq!(md["platform"]["os"], "linux");
    assert_eq!(
        md["annotations"]["io.containerd.image.name"],
        "localhost/kiln/demo:1"
    );
    assert_eq!(md["annotations"]["org.opencontainers.image.ref.name"], "1");

    let manifest: serde_json::Value = serde_json::from_slice(&m[&blob(&a.manifest)]).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["config"]["digest"], a.config.digest.as_str());
    assert_eq!(manifest["config"]["mediaType"], media::CONFIG);
    assert_eq!(manifest["layers"][0]["digest"], a.layer.digest.as_str());
    assert_eq!(manifest["layers"][0]["mediaType"], media::LAYER_GZIP);
    assert_eq!(manifest["layers"][0]["size"], m[&blob(&a.layer)].len());

    let config: serde_json::Value = serde_json::from_slice(&m[&blob(&a.config)]).unwrap();
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["LANG=C.UTF-8", format!("PATH={DEFAULT_PATH}")])
    );
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["/bin/tool", "x"])
    );
    assert!(config["config"].get("Entrypoint").is_none());
    assert_eq!(config["config"]["WorkingDir"], "/");
    assert_eq!(config["rootfs"]["type"], "layers");

    // The layer: gzip without name or time whose content hashes to the diff_id.
    let gz = &m[&blob(&a.layer)];
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(gz[3], 0, "no FNAME/FEXTRA/FCOMMENT flags");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime 0");
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut tar_bytes)
        .unwrap();
    assert_eq!(digest(&tar_bytes), a.diff_id);
    assert_eq!(config["rootfs"]["diff_ids"][0], a.diff_id.as_str());
    let layer_members = members(&tar_bytes);
    assert_eq!(layer_members["usr/bin/tool"], b"#!/bin/sh\necho hi\n");
    assert!(layer_members.contains_key("bin"));
    assert!(!layer_members.keys().any(|k| k.contains("doc")));
}

#[test]
fn archives_are_deterministic_and_depend_on_inputs() {
    let build = |reference: &str, arch: Arch, epoch: i64| {
        let layer = layer_tree(vec![demo_deb()], &rules(), epoch).unwrap();
        build_archive(&spec(reference), &layer, arch, epoch)
            .unwrap()
            .bytes
    };
    let a = build("localhost/kiln/demo:1", Arch::X86_64, EPOCH);
    assert_eq!(a, build("localhost/kiln/demo:1", Arch::X86_64, EPOCH));
    assert_ne!(a, build("localhost/kiln/demo:2", Arch::X86_64, EPOCH));
    assert_ne!(a, build("localhost/kiln/demo:1", Arch::Arm64, EPOCH));
    assert_ne!(a, build("localhost/kiln/demo:1", Arch::X86_64, EPOCH - 1));
}

#[test]
fn hardlinks_before_their_target_become_copies() {
    let layer = layer_tree(vec![demo_deb()], &rules(), EPOCH).unwrap();
    let bytes = write_tree(&layer, Vec::new()).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut seen = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.mtime().unwrap(), EPOCH as u64);
        assert_eq!(h.username().unwrap(), Some(""));
        seen.insert(
            e.path().unwrap().to_string_lossy().into_owned(),
            (h.entry_type(), h.mode().unwrap()),
        );
    }
    // "usr/bin/alias" sorts before its target "usr/bin/tool".
    assert_eq!(seen["usr/bin/alias"], (tar::EntryType::Regular, 0o755));
    assert_eq!(seen["usr/bin/sh"].0, tar::EntryType::Symlink);
    assert_eq!(seen["usr/"], (tar::EntryType::Directory, 0o755));
}

#[test]
fn missing_package_names_package_lock_and_fix() {
    let mut root = FileTree::new(EPOCH);
    let e = add_to_root(
        &mut root,
        &[spec("localhost/kiln/demo:1")],
        PackageSource {
            fetched: &[],
            profile: Path::new("profiles/p.toml"),
            lock: Path::new("profiles/p.lock"),
        },
        &rules(),
        Arch::X86_64,
        EPOCH,
    )
    .unwrap_err();
    let msg = e.to_string();
    for want in [
        "profiles/p.toml",
        "profiles/p.lock",
        "\"demo\"",
        "x86_64",
        "kiln lock",
        "localhost/kiln/demo:1",
    ] {
        assert!(msg.contains(want), "{want} missing in: {msg}");
    }
    assert!(root.is_empty() || root.get(IMAGES_DIR).is_none());
}

/// A root whose agent.toml has the profile's `[cluster]` (`None`: no cluster).
fn root_with_cluster(cluster: Option<&str>) -> FileTree {
    let mut text = String::from(
        "schema = 1\nname = \"t\"\narches = [\"x86_64\"]\n[debian]\nsuites = [\"trixie\"]\n\
         [kernel]\nmodules = [\"virtio\"]\n[kernel.package]\nx86_64 = \"linux-image-amd64\"\n\
         [disk]\nsize = \"1GiB\"\n[packages]\ninclude = [\"containerd\"]\n\
         [systemd]\nenable = [\"containerd.service\"]\n",
    );
    if let Some(c) = cluster {
        text.push_str(&format!("[cluster]\nkubernetes = \"1.36\"\n{c}\n"));
    }
    let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays");
    let profile = crate::profile::Profile::parse(Path::new("t.toml"), &text, &overlays).unwrap();
    let mut root = FileTree::new(EPOCH);
    crate::tree::node::apply(&mut root, &profile.agent, false).unwrap();
    root
}

#[test]
fn k3s_imports_only_for_k3s_on_its_embedded_containerd() {
    // The runtime check refuses Debian's containerd next to k3s's: build the root by hand.
    let mut root = FileTree::new(EPOCH);
    let agent = crate::profile::Agent {
        channels: kiln_contract::agent_config::ALL_CHANNELS.to_vec(),
        cluster: Some(crate::profile::Cluster {
            flavor: crate::profile::ClusterFlavor::K3s {
                containerd: crate::profile::Containerd::K3s,
            },
            role: crate::profile::ImageRole::Any,
            labels: BTreeMap::new(),
            kubelet_args: vec![],
            kubernetes: "1.36.4".parse().unwrap(),
        }),
    };
    crate::tree::node::apply(&mut root, &agent, false).unwrap();
    assert!(k3s::k3s_imports(&root));
    for cluster in [
        None,
        Some("kind = \"k3s\""),
        Some("kind = \"k3s\"\ncontainerd = \"image\""),
        Some("kind = \"kubeadm\""),
    ] {
        assert!(
            !k3s::k3s_imports(&root_with_cluster(cluster)),
            "{cluster:?}"
        );
    }
    assert!(!k3s::k3s_imports(&FileTree::new(EPOCH)));

    // Images are linked into k3s's airgap folder; without images nothing is written.
    let layer = layer_tree(vec![demo_deb()], &rules(), EPOCH).unwrap();
    let built: Vec<OciArchive> = ["localhost/kiln/b:1", "localhost/kiln/a:2"]
        .iter()
        .map(|r| build_archive(&spec(r), &layer, Arch::X86_64, EPOCH).unwrap())
        .collect();
    assert!(!k3s::hand_to_k3s(&mut root, &[], EPOCH).unwrap());
    assert!(root.get(k3s::K3S_LINKS_FILE).is_none());
    assert!(k3s::hand_to_k3s(&mut root, &built, EPOCH).unwrap());
    let text = String::from_utf8(root.read(k3s::K3S_LINKS_FILE).unwrap().to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "d /var/lib/rancher/k3s/agent/images 0755 root root -",
            "L+ /var/lib/rancher/k3s/agent/images/localhost_kiln_a_2.oci.tar - - - - \
             /usr/share/kiln/images/localhost_kiln_a_2.oci.tar",
            "L+ /var/lib/rancher/k3s/agent/images/localhost_kiln_b_1.oci.tar - - - - \
             /usr/share/kiln/images/localhost_kiln_b_1.oci.tar",
        ]
    );
    let node = root.get(k3s::K3S_LINKS_FILE).unwrap();
    assert_eq!((node.mode, node.mtime), (0o644, EPOCH));
    let mut other = root_with_cluster(Some("kind = \"k3s\""));
    assert!(!k3s::hand_to_k3s(&mut other, &built, EPOCH).unwrap());
}

/// systemd's own tmpfiles reads the file and makes the links k3s reads.
#[test]
fn systemd_tmpfiles_makes_the_links_k3s_imports_from() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("kiln-k3s-images.conf");
    std::fs::write(
        &conf,
        k3s::k3s_links(&["localhost_kiln_a_2.oci.tar".into()]),
    )
    .unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join(IMAGES_DIR)).unwrap();
    let out = std::process::Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", root.display()))
        .arg(&conf)
        .output()
        .expect("systemd-tmpfiles (package systemd) runs");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = root.join("var/lib/rancher/k3s/agent/images/localhost_kiln_a_2.oci.tar");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new("/usr/share/kiln/images/localhost_kiln_a_2.oci.tar")
    );
}
