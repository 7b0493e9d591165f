//! `kiln inspect` through the real binary: a good image, damaged images and
//! bad files. Every failure must be one `kiln: error:` line naming the file
//! and what is wrong, with a non-zero exit and never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::path::Path;

// The fixture is shared with the library's unit tests and names the
// library's modules through `crate::`.
pub use kiln::{arch, disk, fs, output, plan, tree, uki};
#[path = "../src/inspect/fixture.rs"]
mod fixture;
mod support;

use support::cli::{assert_fails, assert_no_panic, kiln, stderr, stdout};

use kiln::arch::Arch;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_good_image_inspects_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture::build(d.path(), Arch::X86_64);
    let img = s(&f.image);

    let o = kiln(&["inspect", img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for needle in [
        "format      raw",
        "#3  root-x86_64-a-verity",
        "#4  _empty",
        "EFI/BOOT/BOOTX64.EFI",
        "UKI EFI/Linux/kiln-a.efi",
        "b  partitions #4 + #5 (16 MiB root): empty",
        "version     1.2.3",
        &format!("roothash    {}", f.root_hash),
        "kernel      6.1.0-99-test",
        "packages    3 (",
        "test-x86_64.manifest.json",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    assert!(!text.contains("verification"), "{text}");

    let o = kiln(&["inspect", "--verify", "--packages", img]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains(", 0 failed"), "{text}");
    assert!(text.contains("zlib1g"), "{text}");
    assert!(!text.contains("MISMATCH"), "{text}");

    let o = kiln(&["inspect", "--verify", "--json", img]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["uki"]["roothash"], f.root_hash.as_str());
    let checks = v["verification"]["checks"].as_array().unwrap();
    assert!(checks.len() > 20, "{checks:?}");
    assert!(checks.iter().all(|c| c["status"] == "ok"), "{checks:?}");

    // -q prints nothing on success.
    let o = kiln(&["-q", "inspect", "--verify", img]);
    assert!(o.status.success() && o.stdout.is_empty(), "{}", stdout(&o));
}

#[test]
fn verify_reports_each_difference_and_fails() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture::build(d.path(), Arch::Arm64);
    let root = f
        .manifest
        .disk
        .partitions
        .iter()
        .find(|p| p.role == "root")
        .unwrap()
        .clone();
    fixture::flip_byte(&f.image, root.offset + 300_000);
    let o = kiln(&["inspect", "--verify", s(&f.image)]);
    let line = assert_fails(&o, &[s(&f.image), "checks failed", "verity hash tree"]);
    assert!(line.contains("root hash vs the UKI command line"), "{line}");
    let text = stdout(&o);
    assert!(
        text.contains("MISMATCH  verity hash tree rebuilt"),
        "{text}"
    );
    assert!(
        text.contains("MISMATCH  partition 2 (root-arm64-a) sha256"),
        "{text}"
    );
    assert!(
        text.contains("ok        primary GPT header CRC32"),
        "{text}"
    );
    // The manifest sha256 and the image's are both shown.
    assert!(
        text.contains(&format!("manifest: {}", root.sha256)),
        "{text}"
    );
    // Plain inspect does not hash, so it still succeeds.
    assert!(kiln(&["inspect", s(&f.image)]).status.success());
}

#[test]
fn a_corrupt_gpt_is_an_error_and_verify_shows_it() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture::build(d.path(), Arch::X86_64);
    fixture::flip_byte(&f.image, 512 + 70);
    let o = kiln(&["inspect", s(&f.image)]);
    assert_fails(
        &o,
        &[
            s(&f.image),
            "corrupt image",
            "primary GPT header CRC32",
            "--verify",
        ],
    );
    let o = kiln(&["inspect", "--verify", s(&f.image)]);
    assert_fails(&o, &["primary GPT header CRC32"]);
    let text = stdout(&o);
    assert!(
        text.contains("MISMATCH  primary GPT header CRC32"),
        "{text}"
    );
    assert!(text.contains("read from the backup header"), "{text}");
    assert!(text.contains("ok        backup GPT header CRC32"), "{text}");
}

#[test]
fn bad_files_are_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture::build(d.path(), Arch::X86_64);

    let cut = d.path().join("cut.raw");
    let bytes = std::fs::read(&f.image).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &kiln(&["inspect", s(&cut)]),
        &["cut.raw", "truncated image"],
    );
    assert_fails(
        &kiln(&["inspect", "--verify", s(&cut)]),
        &["cut.raw", "truncated image"],
    );

    let missing = d.path().join("missing.raw");
    assert_fails(
        &kiln(&["inspect", s(&missing)]),
        &["missing.raw", "No such file"],
    );

    let text = d.path().join("README.md");
    std::fs::write(&text, "# not an image\n".repeat(100)).unwrap();
    assert_fails(
        &kiln(&["inspect", s(&text)]),
        &["README.md", "not a disk image"],
    );

    let noise = d.path().join("noise.raw");
    let garbage: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    std::fs::write(&noise, garbage).unwrap();
    assert_fails(
        &kiln(&["inspect", "--verify", s(&noise)]),
        &["noise.raw", "not a disk image"],
    );

    let empty = d.path().join("empty.qcow2");
    std::fs::write(&empty, b"").unwrap();
    assert_fails(
        &kiln(&["inspect", s(&empty)]),
        &["empty.qcow2", "not a disk image"],
    );

    let fake_qcow2 = d.path().join("fake.qcow2");
    let mut b = b"QFI\xfb".to_vec();
    b.resize(8192, 0x41);
    std::fs::write(&fake_qcow2, b).unwrap();
    assert_fails(
        &kiln(&["inspect", s(&fake_qcow2)]),
        &["fake.qcow2", "qemu-img"],
    );

    assert_fails(&kiln(&["inspect", s(d.path())]), &["folder"]);
}

#[test]
fn manifests_unreadable_missing_and_skipped() {
    let d = tempfile::tempdir().unwrap();
    let f = fixture::build(d.path(), Arch::X86_64);
    let img = s(&f.image);

    std::fs::write(&f.manifest_path, "{\"schema\": 2,").unwrap();
    assert_fails(
        &kiln(&["inspect", img]),
        &["test-x86_64.manifest.json", "not a kiln manifest"],
    );
    std::fs::write(&f.manifest_path, "{\"schema\": 1}").unwrap();
    assert_fails(
        &kiln(&["inspect", "--verify", img]),
        &["test-x86_64.manifest.json", "schema 1", "--no-manifest"],
    );
    let gone = d.path().join("gone.manifest.json");
    assert_fails(
        &kiln(&["inspect", "--manifest", s(&gone), img]),
        &["gone.manifest.json", "reading the manifest"],
    );
    assert_fails(
        &kiln(&["inspect", "--manifest", s(d.path()), img]),
        &["reading the manifest"],
    );

    // --no-manifest: the image's own checks pass; the skip is said on both streams.
    let o = kiln(&["inspect", "--verify", "--no-manifest", img]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("manifest checks SKIPPED: --no-manifest"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("manifest checks skipped"),
        "{}",
        stderr(&o)
    );

    // No manifest beside the image: the same, naming where it looked.
    std::fs::remove_file(&f.manifest_path).unwrap();
    let o = kiln(&["inspect", "--verify", img]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("SKIPPED: no manifest at")
            && stdout(&o).contains("test-x86_64.manifest.json"),
        "{}",
        stdout(&o)
    );

    // Contradictory flags are a usage error.
    let o = kiln(&["inspect", "--no-manifest", "--manifest", "x.json", img]);
    assert_no_panic(&o);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
