//! First boot on a bigger disk: the init grows the partition table, creates
//! and formats `var` up to the end of the disk, and /var plus the machine-id
//! survive a reboot. The root stays read-only. The plain image (no hostname
//! on its command line) takes its hostname from a cidata volume on the
//! first boot and from fw_cfg on the second.
//!
//! The disk is the build's qcow2 output, grown with `qemu-img resize` the way a
//! cloud or a homelab user grows it: so these boots also prove the qcow2 format
//! boots on both arches (every other boot test uses the raw image).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln_qemu_tests::{
    check_tool, cidata_vfat, copy_image, fw_cfg_config, image_with_all_formats, report_fields,
    RunningVm,
};

use crate::{assert_hostname_from, BOOT_TIMEOUT};

const GROW: u64 = 2 << 30;
const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";

fn boot(
    mut vm: kiln::qemu::Vm,
    hostname_line: &str,
) -> (String, std::collections::BTreeMap<String, String>) {
    let arch = vm.arch;
    vm.snapshot = false;
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-report:", hostname_line], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!("{arch}: report {:.1} s after QEMU started", vm.elapsed());
    let fields = report_fields(&text).unwrap();
    // Dropping the VM kills QEMU: a power cut. The agent syncs what it writes.
    (text, fields)
}

fn qcow2_vm(arch: Arch, image: &std::path::Path) -> kiln::qemu::Vm {
    let mut vm = kiln::qemu::Vm::new(arch, image);
    vm.disk_format = "qcow2".into();
    vm
}

fn var_persists(arch: Arch) {
    // The plain profile: the debug image's command line hostname would win.
    let built = image_with_all_formats(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let image = copy_image(&built.output(".qcow2"), dir.path()).unwrap();
    let size = std::fs::metadata(&built.image).unwrap().len() + GROW;
    let qcow2 = image.display().to_string();
    check_tool(
        "qemu-img",
        &["resize", "-f", "qcow2", &qcow2, &size.to_string()],
    )
    .unwrap();
    // sgdisk reads raw disks only: it checks a raw copy of the qcow2 after each boot.
    let raw = dir.path().join("after-boot.raw");
    let img = raw.display().to_string();
    let to_raw = || {
        check_tool(
            "qemu-img",
            &["convert", "-f", "qcow2", "-O", "raw", &qcow2, &img],
        )
        .unwrap()
    };

    let mut vm = qcow2_vm(arch, &image);
    vm.drives
        .push(cidata_vfat(dir.path(), &[("kiln.toml", b"hostname = \"cidata-var\"\n")]).unwrap());
    let (text, first) = boot(vm, "kiln-config: hostname cidata-var");
    let tail = kiln_qemu_tests::tail(&text, 40);
    assert_hostname_from(&text, "cidata-var", "cidata", &format!("{arch} first boot"));
    assert_eq!(
        first.get("hostname").map(String::as_str),
        Some("cidata-var"),
        "{arch}: {first:?}"
    );
    assert_eq!(
        first.get("var").map(String::as_str),
        Some("/dev/vda6"),
        "{arch}: {first:?}\n{tail}"
    );
    assert_eq!(
        first.get("boots").map(String::as_str),
        Some("1"),
        "{arch}: {first:?}"
    );
    let id = first.get("machine_id").cloned().unwrap_or_default();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{arch}: {first:?}"
    );
    assert_eq!(
        first.get("usr_write").map(String::as_str),
        Some("EROFS"),
        "{arch}: {first:?}"
    );
    assert_eq!(
        first.get("root_mode").map(String::as_str),
        Some("ro"),
        "{arch}: {first:?}"
    );

    // sgdisk reads the table the node wrote: both headers valid, the backup
    // moved to the end, `var` reaching the last usable sector.
    to_raw();
    let verify = check_tool("sgdisk", &["-v", &img]).unwrap();
    assert!(
        verify.contains("No problems found"),
        "{arch}: sgdisk -v:\n{verify}"
    );
    let info = check_tool("sgdisk", &["-i", "6", &img]).unwrap();
    assert!(
        info.contains(VAR_TYPE),
        "{arch}: partition 6 is not var:\n{info}"
    );
    let last_usable = size / 512 - 34;
    assert!(
        info.contains(&format!("Last sector: {last_usable} ")),
        "{arch}: var does not end at sector {last_usable}:\n{info}"
    );

    let mut vm = qcow2_vm(arch, &image);
    vm.fw_cfg
        .push(fw_cfg_config(dir.path(), b"hostname = \"fwcfg-var\"\n").unwrap());
    let (text, second) = boot(vm, "kiln-config: hostname fwcfg-var");
    let tail = kiln_qemu_tests::tail(&text, 40);
    assert_hostname_from(&text, "fwcfg-var", "fw_cfg", &format!("{arch} second boot"));
    assert_eq!(
        second.get("hostname").map(String::as_str),
        Some("fwcfg-var"),
        "{arch}: {second:?}"
    );
    assert_eq!(
        second.get("var").map(String::as_str),
        Some("/dev/vda6"),
        "{arch}: {second:?}\n{tail}"
    );
    assert_eq!(
        second.get("boots").map(String::as_str),
        Some("2"),
        "{arch}: /var lost its data: {second:?}"
    );
    assert_eq!(
        second.get("machine_id"),
        Some(&id),
        "{arch}: machine-id changed"
    );
    assert_eq!(
        second.get("failed").map(String::as_str),
        Some("0"),
        "{arch}: {second:?}\n{tail}"
    );
}

#[test]
fn x86_64_qcow2_grown_creates_var_on_first_boot_and_keeps_it() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    var_persists(Arch::X86_64);
}

#[test]
fn arm64_qcow2_grown_creates_var_on_first_boot_and_keeps_it() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    var_persists(Arch::Arm64);
}
