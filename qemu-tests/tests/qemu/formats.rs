//! The published formats hold the same disk: each is checked by an
//! independent tool against the raw image, and the qcow2 boots. The plain
//! image has no hostname anywhere, so the node names itself from its
//! machine-id.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln_qemu_tests::{check_tool, image_with_all_formats, report_fields, RunningVm};

use crate::{config_hostname, BOOT_TIMEOUT};

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

fn qcow2_boots(arch: Arch) {
    let built = image_with_all_formats(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = kiln::qemu::Vm::new(arch, built.output(".qcow2"));
    vm.disk_format = "qcow2".into();
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-report:", "(from machine-id)"], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: qcow2 report {:.1} s after QEMU started",
        vm.elapsed()
    );
    let fields = report_fields(&text).unwrap();
    assert_eq!(
        fields.get("state").map(String::as_str),
        Some("running"),
        "{arch}: {fields:?}"
    );
    assert_eq!(
        fields.get("failed").map(String::as_str),
        Some("0"),
        "{arch}: {fields:?}"
    );
    let (name, channel) = config_hostname(&text).unwrap_or_default();
    assert_eq!(channel, "machine-id", "{arch}: {name} from {channel}");
    let hex = name.strip_prefix("kiln-").unwrap_or_default();
    assert!(
        hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{arch}: hostname {name:?} is not kiln-<8 hex>"
    );
    assert_eq!(fields.get("hostname"), Some(&name), "{arch}: {fields:?}");
}

#[test]
fn x86_64_formats_hold_the_same_disk() {
    same_disk(Arch::X86_64);
}

#[test]
fn arm64_formats_hold_the_same_disk() {
    same_disk(Arch::Arm64);
}

#[test]
fn x86_64_qcow2_boots() {
    qcow2_boots(Arch::X86_64);
}

#[test]
fn arm64_qcow2_boots() {
    qcow2_boots(Arch::Arm64);
}
