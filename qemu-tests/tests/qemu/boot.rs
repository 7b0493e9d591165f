//! What a user checks on a node's first boot, run on the first boot of the update
//! scenario's node (profiles/qemu.toml as 1.0.0, on its grown qcow2 disk: see
//! update.rs), so the suite boots no machine just for them: the UKI booted, the root is
//! read-only and came through dm-verity, systemd reached multi-user with nothing failed,
//! `uname -m` is right, the node took its hostname from the kernel command line over
//! the fw_cfg and cidata channels (which it read too), preflight passed, and in the
//! debug shell on the serial console: the hostname, the container image that
//! kiln-images.service (`kiln-agent images import`) imported into containerd as
//! containerd's CRI (so the kubelet) lists it, and `kiln-agent preflight` passing
//! again. The image has no `ctr`: that a container runs from an image the agent
//! imported is checked on the host, against the same containerd packages, by
//! builder/tests/oci.rs (`images_unit_verifies_and_imports_every_listed_archive` for
//! containerd 1.7, `images_import_into_containerd_2` for 2.1).
//!
//! The default test image (whose `kiln.var_min=1T` keeps /var on a tmpfs) boots in the
//! other scenarios: bad_input.rs checks its tmpfs /var.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::path::Path;
use std::time::Duration;

use kiln::arch::Arch;
use kiln_qemu_tests::{cidata_vfat, fw_cfg_config, repo_root, report_fields, RunningVm};

use crate::{assert_channel_read, assert_hostname_from, PREFLIGHT_TIMEOUT};

/// The hostnames the config drives of [`add_config_drives`] offer (the command line's
/// must win over both).
const CIDATA_HOST: &str = "cidata-x";
const FW_CFG_HOST: &str = "fwcfg-x";

/// The reference of the first `[[container_image]]` of profiles/qemu.toml.
fn container_ref() -> String {
    let path = repo_root().join("profiles/qemu.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    let first = v
        .get("container_image")
        .and_then(|c| c.as_array())
        .and_then(|a| a.first())
        .unwrap_or_else(|| panic!("{}: no [[container_image]]", path.display()));
    ["ref", "reference", "name"]
        .iter()
        .find_map(|k| first.get(*k).and_then(|r| r.as_str()))
        .unwrap_or_else(|| panic!("{}: [[container_image]] without a ref", path.display()))
        .to_string()
}

/// Gives `vm` a cidata volume and a fw_cfg config, each naming a hostname of its own.
pub fn add_config_drives(vm: &mut kiln::qemu::Vm, dir: &Path) {
    let cidata = format!("hostname = \"{CIDATA_HOST}\"\n");
    vm.drives
        .push(cidata_vfat(dir, &[("kiln.toml", cidata.as_bytes())]).unwrap());
    let fw_cfg = format!("hostname = \"{FW_CFG_HOST}\"\n");
    vm.fw_cfg
        .push(fw_cfg_config(dir, fw_cfg.as_bytes()).unwrap());
}

/// Waits for the first boot's report and checks what a user would (see the module
/// documentation); `host` is the hostname on the image's command line, `var` the
/// report's `var` field the disk must give. Needs the drives of [`add_config_drives`]
/// and the debug shell.
pub fn check_first_boot(vm: &mut RunningVm, arch: Arch, host: &str, var: &str) {
    vm.wait_for(&["kiln-preflight: passed"], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    let preflight_secs = vm.elapsed();
    eprintln!("{arch}: QEMU start to `kiln-preflight: passed`: {preflight_secs:.1} s");
    let text = vm
        .wait_for(&["kiln-report:"], PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!("{arch}: report {:.1} s after QEMU started", vm.elapsed());
    let tail = kiln_qemu_tests::tail(&text, 40);

    // The initramfs init found the root by its type GUID and handed over.
    assert!(
        text.contains("kiln-init: switching"),
        "{arch}: init did not switch root\n{tail}"
    );
    let report = text
        .lines()
        .find(|l| l.contains("kiln-report:"))
        .unwrap_or_default();
    // uname -m inside the guest.
    assert!(
        report.contains(&format!("arch={}", arch.uname_machine())),
        "{arch}: {report}"
    );
    // systemd-stub sets StubInfo: only a UKI boot has it.
    assert!(
        report.contains("stub=\"systemd-stub"),
        "{arch}: not booted through the UKI: {report}"
    );
    assert!(
        report.contains("root_mode=ro"),
        "{arch}: root is not read-only: {report}"
    );
    assert!(
        report.contains("root=/dev/dm-0") && report.contains("verity=on:dm-0:"),
        "{arch}: root not mounted through dm-verity: {report}"
    );
    assert!(
        report.contains("failed=0"),
        "{arch}: failed units: {report}\n{tail}"
    );
    // The report runs after multi-user.target and waits for the boot to
    // finish: `running` means the default target was reached, nothing failed.
    assert!(
        report.contains("state=running"),
        "{arch}: system not running: {report}\n{tail}"
    );
    assert!(
        text.contains("default target multi-user.target"),
        "{arch}: default target is not multi-user\n{tail}"
    );
    let fields = report_fields(&text).unwrap();
    assert_eq!(
        fields.get("var").map(String::as_str),
        Some(var),
        "{arch}: {report}\n{tail}"
    );

    // Config channels: the command line wins, fw_cfg and cidata were read.
    assert_hostname_from(&text, host, "cmdline", arch.name());
    assert_channel_read(&text, "cmdline", host, arch.name());
    assert_channel_read(&text, "fw_cfg", FW_CFG_HOST, arch.name());
    assert_channel_read(&text, "cidata", CIDATA_HOST, arch.name());
    assert!(
        !text.contains("kiln-config: ERROR"),
        "{arch}: {:#?}",
        kiln_qemu_tests::lines_with(&text, "kiln-config:")
    );
    assert_eq!(
        fields.get("hostname").map(String::as_str),
        Some(host),
        "{arch}: {report}"
    );
    assert!(
        !text.contains("kiln-preflight: [FAIL]") && !text.contains("kiln-preflight: FAILED"),
        "{arch}: {:#?}",
        kiln_qemu_tests::lines_with(&text, "kiln-preflight:")
    );

    // The debug shell on the serial console.
    let t = Duration::from_secs(120);
    vm.wait_for_shell(PREFLIGHT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    // No `hostname` binary in the image: uname -n reads the same kernel field.
    let name = vm
        .run("uname -n", t)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    assert_eq!(name.trim(), host, "{arch}: `uname -n` printed {name:?}");
    let reference = container_ref();
    vm.wait_for(
        &[&format!("kiln-images: imported {reference}")],
        PREFLIGHT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    // containerd's CRI learns of a new image from containerd's events, a moment
    // after the import: ask until it lists it.
    let listed = |images: &str| {
        images
            .lines()
            .any(|l| l.split_whitespace().next() == Some(reference.as_str()))
    };
    let mut images = String::new();
    for _ in 0..12 {
        images = vm
            .run("kiln-agent images list", t)
            .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
        if listed(&images) {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    assert!(
        listed(&images),
        "{arch}: {reference} not in containerd's CRI; `kiln-agent images list`:\n{images}"
    );
    let (status, out) = vm
        .run_status("kiln-agent preflight", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    assert_eq!(status, 0, "{arch}: kiln-agent preflight:\n{out}");
    assert!(out.contains("kiln-preflight: passed"), "{arch}:\n{out}");
    eprintln!(
        "{arch}: first-boot checks done {:.1} s after QEMU started (preflight passed at {preflight_secs:.1} s)",
        vm.elapsed()
    );
}
