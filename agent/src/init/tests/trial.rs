//! The failure path of a boot on trial: systemd-boot booted the UKI with a boot counter,
//! so a boot that cannot continue reboots (after a pause to read the console) instead of
//! halting, and systemd-boot counts the attempt down and falls back in the end.

use std::time::Duration;

use nix::errno::Errno;

use super::{run_fake, Fake};
use crate::cmdline::FailureAction;
use crate::update::efivars::{encode, var_path, BOOT_COUNT_PATH, ENTRY_SELECTED};

/// A machine whose root cannot be found (no disks), booted by systemd-boot from `path`.
fn failing(boot_count_path: Option<&str>) -> Fake {
    let mut f = Fake::good("kiln.rootwait=0");
    f.disks.clear();
    f.dirs.insert("/sys/firmware/efi".into());
    f.files
        .insert(var_path("/sys", ENTRY_SELECTED), encode("kiln-b.efi"));
    if let Some(p) = boot_count_path {
        f.files.insert(var_path("/sys", BOOT_COUNT_PATH), encode(p));
    }
    f
}

#[test]
fn a_boot_on_trial_that_cannot_find_its_root_reboots_after_5_s() {
    let mut f = failing(Some("\\EFI\\Linux\\kiln-b+2-1.efi"));
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, Some(FailureAction::Reboot));
    assert_eq!(f.slept.last(), Some(&Duration::from_secs(5)));
    assert!(f.fatal_line().contains("no GPT partition of type"));
    assert_eq!(
        f.lines.last().map(String::as_str),
        Some(
            "kiln-init: the root filesystem could not be mounted; this boot is on trial \
             (attempt 1 of 3): rebooting in 5 s so that systemd-boot counts the attempt"
        )
    );
    assert!(
        !f.lines.iter().any(|l| l.contains("halting")),
        "{:#?}",
        f.lines
    );
}

#[test]
fn the_last_attempt_says_the_node_falls_back() {
    // kiln.on_failure=poweroff would leave the node off instead of falling back.
    let mut f = failing(Some("\\EFI\\Linux\\kiln-b+0-3.efi"));
    f.files.insert(
        "/proc/cmdline".into(),
        b"kiln.var_fallback=tmpfs kiln.rootwait=0 kiln.on_failure=poweroff".to_vec(),
    );
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, Some(FailureAction::Reboot));
    assert!(f.lines.last().unwrap().ends_with(
        "(attempt 3 of 3): rebooting in 5 s so that systemd-boot counts the attempt; it was \
         the last one: systemd-boot falls back to the previous version"
    ));
}

#[test]
fn a_boot_not_on_trial_halts_as_before() {
    let mut f = failing(None);
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, Some(FailureAction::Halt));
    assert_eq!(
        f.lines.last().map(String::as_str),
        Some("kiln-init: halting; the root filesystem could not be mounted")
    );
    assert!(f.slept.iter().all(|d| *d < Duration::from_secs(5)));
    // Off UEFI nothing is mounted for it either.
    let mut f = failing(None);
    f.dirs.remove("/sys/firmware/efi");
    f.files.retain(|p, _| !p.starts_with("/sys/firmware"));
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, Some(FailureAction::Halt));
    assert!(!f.actions.iter().any(|a| a.contains("efivarfs")));
}

#[test]
fn efivarfs_is_mounted_when_init_finds_it_empty() {
    let mut f = failing(None);
    f.files.retain(|p, _| !p.starts_with("/sys/firmware"));
    run_fake(&mut f, &[]);
    assert!(
        f.actions.contains(
            &"mount efivarfs /sys/firmware/efi/efivars efivarfs \
              MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) -"
                .to_string()
        ),
        "{:#?}",
        f.actions
    );
    assert_eq!(f.halted, Some(FailureAction::Halt));

    // Without efivarfs in the initramfs init cannot tell, says why, and halts.
    let mut f = failing(None);
    f.files.retain(|p, _| !p.starts_with("/sys/firmware"));
    f.mount_errors
        .insert("/sys/firmware/efi/efivars".into(), Errno::ENODEV);
    run_fake(&mut f, &[]);
    assert!(
        f.lines.iter().any(|l| l.starts_with(
            "kiln-init: cannot tell whether this boot is on trial: cannot mount efivarfs"
        ) && l.contains("efivarfs.ko")),
        "{:#?}",
        f.lines
    );
    assert_eq!(f.halted, Some(FailureAction::Halt));
}

#[test]
fn a_verity_failure_on_trial_reboots_too() {
    let mut f = failing(Some("\\EFI\\Linux\\kiln-a+1-2.efi"));
    f.disks = Fake::good("").disks;
    f.mount_errors.insert("/sysroot".into(), Errno::EINVAL);
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, Some(FailureAction::Reboot));
    assert!(f.lines.last().unwrap().contains("(attempt 2 of 3)"));
}
