#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

//! `kiln inspect` on the boot path and the slots: a disk whose UKI boots
//! slot B (as after an update), a missing systemd-boot or `loader.conf`, an
//! empty slot that could be auto-mounted, a single-slot image of an older
//! kiln, and manifests with and without the A/B fields. The fixture is
//! changed with the referee tools (sgdisk for the GPT, mtools for the ESP).

use std::os::unix::fs::FileExt;

use kiln_contract::boot::Slot;

use super::fixture::{build, edit_manifest, Fixture};
use super::tests::{assert_mismatch, assert_ok, check, failed_names, partition, tool, verify};
use super::*;
use crate::arch::Arch;
use crate::runner::HostRunner;

/// `mtools` on the fixture's ESP, in place.
fn mtool(f: &Fixture, program: &str, args: &[&str]) {
    let esp = partition(f, "esp");
    let image = format!("{}@@{}", f.image.display(), esp.offset);
    let mut all = vec!["-i", image.as_str()];
    all.extend_from_slice(args);
    tool(program, &all);
}

fn sgdisk(f: &Fixture, args: &[&str]) {
    let mut all = args.to_vec();
    all.push(f.image.to_str().unwrap());
    tool("sgdisk", &all);
}

/// Inspects without the manifest (which describes the image as built).
fn verify_alone(f: &Fixture) -> Report {
    inspect(
        &f.image,
        &InspectOptions {
            manifest: ManifestSource::Skip,
            verify: true,
        },
        &HostRunner,
    )
    .unwrap()
}

/// Copies partition `from`'s bytes into partition `to` (same sizes).
fn copy_partition(f: &Fixture, from: u32, to: u32) {
    let r = verify_alone(f);
    let find = |n: u32| r.gpt.partitions.iter().find(|p| p.number == n).unwrap();
    let (a, b) = (find(from), find(to));
    assert_eq!(a.size, b.size);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f.image)
        .unwrap();
    let mut buf = vec![0u8; a.size as usize];
    file.read_exact_at(&mut buf, a.offset).unwrap();
    file.write_all_at(&buf, b.offset).unwrap();
}

#[test]
fn the_slot_the_ukis_root_hash_selects_is_the_one_verified() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    // What an update leaves: the root in slot B with the hash's PARTUUIDs and
    // slot B's names, slot A emptied, the UKI named for slot B.
    copy_partition(&f, 2, 4);
    copy_partition(&f, 3, 5);
    let before = verify_alone(&f);
    let (root_uuid, verity_uuid) = (
        before.gpt.partitions[1].partuuid.to_string(),
        before.gpt.partitions[2].partuuid.to_string(),
    );
    sgdisk(
        &f,
        &[
            "-u",
            "2:11111111-2222-4333-8444-555555555555",
            "-u",
            "3:11111111-2222-4333-8444-666666666666",
            "-c",
            "2:_empty",
            "-c",
            "3:_empty",
            "-A",
            "2:set:63",
            "-A",
            "3:set:63",
        ],
    );
    sgdisk(
        &f,
        &[
            "-u",
            &format!("4:{root_uuid}"),
            "-u",
            &format!("5:{verity_uuid}"),
            "-c",
            "4:root-x86_64-b",
            "-c",
            "5:root-x86_64-b-verity",
            "-A",
            "4:clear:63",
            "-A",
            "5:clear:63",
        ],
    );
    mtool(
        &f,
        "mren",
        &["::/EFI/Linux/kiln-a.efi", "::/EFI/Linux/kiln-b+3.efi"],
    );

    let r = verify_alone(&f);
    assert!(r.ok(), "{r}");
    assert_eq!(r.active_slot, Some(Slot::B));
    assert_eq!(r.uki.as_ref().unwrap().path, "EFI/Linux/kiln-b+3.efi");
    assert_eq!(r.slots[0].state, SlotState::Empty);
    assert_eq!(r.slots[1].state, SlotState::Filled);
    assert_eq!(r.slots[1].uki.as_deref(), Some("EFI/Linux/kiln-b+3.efi"));
    assert_eq!(r.verity.as_ref().unwrap().partition, 5);
    assert_eq!(r.root_fs.as_ref().unwrap().partition, 4);
    assert_ok(
        &r,
        "verity hash tree rebuilt from partition 4 (root-x86_64-b)",
    );
    assert_ok(&r, "partition 4 (root-x86_64-b) PARTUUID vs first half");
    assert_ok(
        &r,
        "partition 5 (root-x86_64-b-verity) PARTUUID vs second half",
    );
    assert_ok(&r, "root hash vs the UKI command line");
    assert_ok(&r, "slot a (partitions 2 and 3)");
    let text = r.to_string();
    assert!(
        text.contains("b  partitions #4 + #5 (16 MiB root): booted by EFI/Linux/kiln-b+3.efi"),
        "{text}"
    );
}

#[test]
fn a_missing_boot_loader_or_loader_conf_is_named() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::Arm64);
    mtool(
        &f,
        "mdel",
        &["::/EFI/BOOT/BOOTAA64.EFI", "::/loader/loader.conf"],
    );
    let r = verify(&f.image);
    assert!(!r.ok());
    for needle in [
        "no boot loader at EFI/BOOT/BOOTAA64.EFI (kiln puts systemd-boot there)",
        "no loader/loader.conf",
    ] {
        assert!(
            r.problems.iter().any(|p| p.contains(needle)),
            "{needle}: {:?}",
            r.problems
        );
    }
    let failed = failed_names(&r);
    for what in [
        "systemd-boot on the ESP",
        "systemd-boot's loader.conf on the ESP",
        "ESP file EFI/BOOT/BOOTAA64.EFI sha256 vs manifest esp",
        "ESP file loader/loader.conf sha256 vs manifest esp",
    ] {
        assert!(failed.iter().any(|c| c == what), "{what}: {failed:?}");
    }
    // The UKI and the slot it boots are still verified.
    assert_ok(&r, "UKI in EFI/Linux/ selects a root slot");
    assert_ok(&r, "verity hash tree rebuilt");
}

#[test]
fn an_empty_slot_without_no_auto_fails_its_check() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    sgdisk(&f, &["-A", "5:clear:63"]);
    let r = verify(&f.image);
    let c = check(&r, "slot b (partitions 4 and 5)");
    assert!(
        c.describe().contains("without the no-auto attribute"),
        "{c}"
    );
    assert!(!r.verification.as_ref().unwrap().passed());
}

#[test]
fn a_single_slot_image_of_an_older_kiln_is_told_to_reflash() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    // The old layout's names, and its UKI where systemd-boot is now.
    sgdisk(&f, &["-c", "2:root-x86_64", "-c", "3:root-x86_64-verity"]);
    mtool(&f, "mdel", &["::/EFI/BOOT/BOOTX64.EFI"]);
    mtool(
        &f,
        "mmove",
        &["::/EFI/Linux/kiln-a.efi", "::/EFI/BOOT/BOOTX64.EFI"],
    );
    let r = verify_alone(&f);
    assert!(r.uki.is_none());
    let problems = r.problems.join("\n");
    assert!(problems.contains("no UKI in EFI/Linux/"), "{problems}");
    assert!(problems.contains("need a reflash"), "{problems}");
    assert!(
        problems.contains("slot a (partitions 2 and 3): named root-x86_64 and root-x86_64-verity"),
        "{problems}"
    );
    // Its root is still found and its tree rebuilt.
    assert_eq!(r.active_slot, Some(Slot::A));
    assert_ok(&r, "verity hash tree rebuilt from partition 2");
}

#[test]
fn the_version_and_esp_files_are_checked_against_the_manifest() {
    let d = tempfile::tempdir().unwrap();
    let f = build(d.path(), Arch::X86_64);
    edit_manifest(&f, |m| {
        m.version = Some("1.2.4".into());
        m.esp[2].sha256 = "00".repeat(32);
    });
    let r = verify(&f.image);
    assert_mismatch(&r, "UKI os-release IMAGE_VERSION vs manifest version");
    assert_mismatch(&r, "ESP file EFI/Linux/kiln-a.efi sha256 vs manifest esp");
    assert_ok(&r, "ESP file loader/loader.conf sha256 vs manifest esp");

    // A manifest of a kiln before A/B updates: no version, ESP files or
    // slots. It is read, and what it cannot say is skipped, not failed.
    edit_manifest(&f, |m| {
        m.version = None;
        m.esp.clear();
        for p in &mut m.disk.partitions {
            p.slot = None;
        }
    });
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&f.manifest_path).unwrap()).unwrap();
    assert!(json.get("version").is_none(), "{json}");
    assert!(
        json["disk"]["partitions"][1].get("slot").is_none(),
        "{json}"
    );
    let r = verify(&f.image);
    assert!(r.ok(), "{r}");
    for what in [
        "UKI os-release IMAGE_VERSION vs manifest version",
        "ESP files vs manifest esp",
    ] {
        let c = check(&r, what);
        assert!(matches!(c.outcome, Outcome::Skipped { .. }), "{c}");
    }
    assert!(r.to_string().contains("version     ? (not recorded"), "{r}");
    // The layout check then leaves the slot out.
    let c = check(&r, "partition 4 (_empty) entry vs manifest");
    assert!(!c.describe().contains("slot"), "{c}");
}
