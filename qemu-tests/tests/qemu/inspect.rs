//! `kiln inspect --verify` on the real default images: everything the image
//! and its manifest claim must recompute, and what inspect reports must
//! agree with independent tools (sgdisk, veritysetup, blkid). Every other
//! format the build published next to the raw image is verified too, and a
//! qcow2 made by qemu-img is read back through its conversion.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln::inspect::{inspect, InspectOptions, Kind, ManifestSource, Outcome, Report};
use kiln::output::manifest::Manifest;
use kiln::runner::HostRunner;
use kiln_qemu_tests::{check_tool, extract_range, image_with_all_formats};

fn verify(image: &std::path::Path, manifest: &std::path::Path) -> Report {
    let r = inspect(
        image,
        &InspectOptions {
            manifest: ManifestSource::Path(manifest.to_path_buf()),
            verify: true,
        },
        &HostRunner,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v = r.verification.as_ref().unwrap();
    assert!(
        r.problems.is_empty() && v.passed(),
        "{}: verification failed:\n{r}",
        image.display()
    );
    r
}

fn inspect_default_image(arch: Arch) {
    let built = image_with_all_formats(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let m = Manifest::read(&built.manifest).unwrap();
    let r = verify(&built.image, &built.manifest);
    let v = r.verification.as_ref().unwrap();
    assert!(v.manifest_skipped.is_none());
    // The checks that matter most ran and passed (not skipped).
    for what in [
        "verity hash tree rebuilt",
        "root hash vs the UKI command line",
        "root hash vs manifest verity.root_hash",
        "PARTUUID vs first half of the root hash",
        "PARTUUID vs second half of the root hash",
        "whole raw disk sha256",
        "raw file sha256 vs manifest",
        "primary GPT entry array CRC32",
        "backup GPT header CRC32",
    ] {
        let c = v
            .checks
            .iter()
            .find(|c| c.what.contains(what))
            .unwrap_or_else(|| panic!("{arch}: no check {what:?}:\n{v}"));
        assert!(matches!(c.outcome, Outcome::Ok { .. }), "{arch}: {c}");
    }

    // What inspect read agrees with the manifest...
    assert_eq!(r.arch, Some(arch));
    let uki = r.uki.as_ref().expect("UKI read from the ESP");
    assert_eq!(uki.roothash.as_deref(), Some(m.verity.root_hash.as_str()));
    assert_eq!(
        uki.kernel_release.as_deref(),
        Some(m.kernel.release.as_str())
    );
    assert!(
        uki.os.as_deref().unwrap_or("").contains("Debian"),
        "{uki:?}"
    );
    let mf = r.manifest.as_ref().unwrap();
    assert_eq!(mf.packages.len(), m.packages.len());
    assert!(mf.packages.iter().any(|p| p.name == "systemd"));

    // ...and with independent tools.
    let img = built.image.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for p in &r.gpt.partitions {
        let info = check_tool("sgdisk", &["-i", &p.number.to_string(), img])
            .unwrap()
            .to_lowercase();
        assert!(info.contains(&p.partuuid.to_string()), "{info}");
        assert!(info.contains(&p.type_guid.to_string()), "{info}");
    }
    let root = r.gpt.find(|k| matches!(k, Kind::Root(_))).unwrap();
    let hash = r.gpt.find(|k| matches!(k, Kind::RootVerity(_))).unwrap();
    let (data, tree) = (tmp.path().join("root"), tmp.path().join("hash"));
    extract_range(&built.image, root.offset, root.size, &data).unwrap();
    extract_range(&built.image, hash.offset, hash.size, &tree).unwrap();
    let dump = check_tool("veritysetup", &["dump", tree.to_str().unwrap()]).unwrap();
    let vs = r.verity.as_ref().unwrap();
    assert!(dump.contains(&vs.uuid.to_string()), "{dump}");
    assert!(dump.contains(&vs.salt), "{dump}");
    check_tool(
        "veritysetup",
        &[
            "verify",
            data.to_str().unwrap(),
            tree.to_str().unwrap(),
            uki.roothash.as_deref().unwrap(),
        ],
    )
    .unwrap();
    let fs = r.root_fs.as_ref().unwrap();
    let blkid = check_tool("blkid", &["-p", "-o", "export", data.to_str().unwrap()]).unwrap();
    assert!(blkid.contains(&format!("UUID={}\n", fs.uuid)), "{blkid}");

    // Every other published format verifies against the same manifest.
    let dir = built.image.parent().unwrap();
    for (format, out) in &m.outputs {
        if format == "raw" || format == "bmap" {
            continue;
        }
        let path = dir.join(&out.file);
        let r = verify(&path, &built.manifest);
        assert_eq!(r.format.name(), format);
    }
    // Without a published qcow2, one made here is read through qemu-img
    // and gives the same disk.
    if m.outputs.contains_key("qcow2") {
        return;
    }
    let qcow2 = tmp.path().join("disk.qcow2");
    check_tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            img,
            qcow2.to_str().unwrap(),
        ],
    )
    .unwrap();
    let r = verify(&qcow2, &built.manifest);
    assert!(
        r.notes.iter().any(|n| n.contains("qemu-img")),
        "{:?}",
        r.notes
    );
}

#[test]
fn inspect_verify_x86_64() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    inspect_default_image(Arch::X86_64);
}

#[test]
fn inspect_verify_arm64() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    inspect_default_image(Arch::Arm64);
}
