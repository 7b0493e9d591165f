//! The published formats hold the same disk: each is checked by an
//! independent tool against the raw image. (A qcow2 output boots in the A/B update
//! scenario: see var.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln_qemu_tests::{check_tool, image_with_all_formats};

fn same_disk(arch: Arch) {
    let built = image_with_all_formats(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let raw = built.image.display().to_string();
    let qcow2 = built.output(".qcow2").display().to_string();
    let vhd = built.output(".vhd").display().to_string();
    check_tool("qemu-img", &["check", "-f", "qcow2", &qcow2]).unwrap();
    // `qemu-img compare` reads both through QEMU's block layer: same guest
    // bytes, independent of kiln's readers.
    check_tool(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", &qcow2, &raw],
    )
    .unwrap();
    check_tool(
        "qemu-img",
        &["compare", "-f", "vpc", "-F", "raw", &vhd, &raw],
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copied = dir.path().join("flashed.raw");
    check_tool(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            &built.output(".raw.bmap").display().to_string(),
            &built.output(".raw.zst").display().to_string(),
            &copied.display().to_string(),
        ],
    )
    .unwrap();
    check_tool("cmp", &[&raw, &copied.display().to_string()]).unwrap();
    let listing = check_tool(
        "tar",
        &["-tzvf", &built.output(".gce.tar.gz").display().to_string()],
    )
    .unwrap();
    let members: Vec<&str> = listing.lines().collect();
    assert_eq!(members.len(), 1, "{arch}: gce tarball holds {listing}");
    assert!(members[0].ends_with(" disk.raw"), "{arch}: {listing}");
}

#[test]
fn x86_64_formats_hold_the_same_disk() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    same_disk(Arch::X86_64);
}

#[test]
fn arm64_formats_hold_the_same_disk() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    same_disk(Arch::Arm64);
}
