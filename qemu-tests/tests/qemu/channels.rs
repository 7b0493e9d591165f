//! The homelab image takes its hostname from the highest-precedence
//! channel that has one: the ESP's kiln.toml (what a user edits after
//! flashing) over a NoCloud cidata ISO and fw_cfg; without it, the cidata
//! volume over fw_cfg.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use kiln::arch::Arch;
use kiln_qemu_tests::{cidata_iso, fw_cfg_config, profile_image, set_esp_file, RunningVm};

use crate::{assert_channel_read, assert_hostname_from, BOOT_TIMEOUT};

const HOMELAB: &str = "profiles/homelab.toml";

#[test]
fn x86_64_homelab_hostname_from_the_esp_over_cidata_and_fw_cfg() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let arch = Arch::X86_64;
    let built = profile_image(HOMELAB, arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let image = set_esp_file(
        &built.image,
        &built.manifest,
        dir.path(),
        "kiln.toml",
        b"# written after flashing\nhostname = \"esp-x\"\n",
    )
    .unwrap();
    let mut vm = kiln::qemu::Vm::new(arch, &image);
    vm.drives.push(
        cidata_iso(
            dir.path(),
            &[("kiln.toml", b"hostname = \"cidata-iso-x\"\n")],
        )
        .unwrap(),
    );
    vm.fw_cfg
        .push(fw_cfg_config(dir.path(), b"hostname = \"fwcfg-x\"\n").unwrap());
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-config: hostname "], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: hostname set {:.1} s after QEMU started",
        vm.elapsed()
    );
    assert_hostname_from(&text, "esp-x", "esp", "x86_64 homelab");
    assert_channel_read(&text, "esp", "esp-x", "x86_64 homelab");
    assert_channel_read(&text, "cidata", "cidata-iso-x", "x86_64 homelab");
    assert_channel_read(&text, "fw_cfg", "fwcfg-x", "x86_64 homelab");
}

#[test]
fn arm64_homelab_hostname_from_a_cidata_iso_over_fw_cfg() {
    let _timed = kiln_qemu_tests::timing::Scenario::start();
    let arch = Arch::Arm64;
    let built = profile_image(HOMELAB, arch).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let mut vm = kiln::qemu::Vm::new(arch, &built.image);
    vm.drives
        .push(cidata_iso(dir.path(), &[("kiln.toml", b"hostname=\"cidata-iso\"\n")]).unwrap());
    vm.fw_cfg
        .push(fw_cfg_config(dir.path(), b"hostname = \"fwcfg-a\"\n").unwrap());
    let mut vm = RunningVm::start(vm).unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-config: hostname "], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: hostname set {:.1} s after QEMU started",
        vm.elapsed()
    );
    assert_hostname_from(&text, "cidata-iso", "cidata", "arm64 homelab");
    assert_channel_read(&text, "cidata", "cidata-iso", "arm64 homelab");
    assert_channel_read(&text, "fw_cfg", "fwcfg-a", "arm64 homelab");
}
