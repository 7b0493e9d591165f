//! Boots the default image of each arch under TCG with UEFI firmware and
//! checks what a user would: the UKI booted, the root is read-only, systemd
//! reached multi-user with nothing failed, the serial getty is up, and
//! `uname -m` is right.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use kiln::arch::Arch;
use kiln_qemu_tests::{default_image, RunningVm};

/// TCG on 2 cores: x86_64 reaches login in ~20-30 s, arm64 takes longer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(480);

fn boots_to_multi_user(arch: Arch) {
    let built = default_image(arch).unwrap_or_else(|e| panic!("{e:#}"));
    let mut vm = RunningVm::start(kiln::qemu::Vm::new(arch, &built.image))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = vm
        .wait_for(&["kiln-report:", "login:"], BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"));
    eprintln!(
        "{arch}: report and login prompt {:.1} s after QEMU started",
        vm.elapsed()
    );
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
    // The root came through dm-verity, and the 512 MiB image has no room for
    // var: the profile allows a tmpfs, and the init said so.
    assert!(
        report.contains("root=/dev/dm-0") && report.contains("verity=on:dm-0:"),
        "{arch}: root not mounted through dm-verity: {report}"
    );
    assert!(report.contains("var=tmpfs"), "{arch}: {report}");
    assert!(
        text.contains("/var stays on a tmpfs") || text.contains("keeping /var on a tmpfs"),
        "{arch}: no word about /var on a tmpfs\n{tail}"
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
}

#[test]
fn x86_64_boots_to_multi_user_with_a_read_only_root() {
    boots_to_multi_user(Arch::X86_64);
}

#[test]
fn arm64_boots_to_multi_user_with_a_read_only_root() {
    boots_to_multi_user(Arch::Arm64);
}
