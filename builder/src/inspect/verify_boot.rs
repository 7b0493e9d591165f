//! The `--verify` checks of the boot path and the slots: systemd-boot and its
//! `loader.conf` on the ESP, a UKI under `EFI/Linux` that selects a slot, an
//! empty slot that nothing boots or auto-mounts, and, with a manifest, the
//! ESP's files and the image version.

use kiln_contract::boot::{LOADER_CONF, UKI_DIR};

use super::verify::Check;
use super::{fat, sha256_reader, DiskFile, Kind, Report, SlotState};
use crate::output::manifest::Manifest;
use crate::plan::attr;

/// Reads a file off the image's ESP.
fn read_esp_file(disk: &DiskFile, r: &Report, path: &str) -> Result<Vec<u8>, String> {
    let p = r
        .gpt
        .find(|k| k == Kind::Esp)
        .ok_or_else(|| "the image has no ESP".to_string())?;
    let part = disk.part(p).map_err(|e| e.to_string())?;
    let vol = fat::FatVolume::open(&part).map_err(|e| format!("the ESP: {e}"))?;
    let entry = vol.find(&part, path).map_err(|e| format!("{path}: {e}"))?;
    vol.read_entry(&part, &entry)
        .map_err(|e| format!("reading {path}: {e}"))
}

/// What the image proves by itself about its boot path and slots.
pub(super) fn boot_checks(r: &Report, disk: &DiskFile) -> Vec<Check> {
    let mut checks = Vec::new();
    let esp = r.esp.as_ref();

    let what = "systemd-boot on the ESP";
    checks.push(match esp.and_then(|e| e.systemd_boot.as_deref()) {
        None => Check::failed(
            what,
            match r.arch {
                Some(a) => format!("no {}", a.efi_boot_path()),
                None => "no EFI/BOOT/BOOTX64.EFI or EFI/BOOT/BOOTAA64.EFI".into(),
            },
        ),
        Some(path) => match read_esp_file(disk, r, path) {
            Err(e) => Check::failed(what, e),
            Ok(bytes) => match crate::uki::summary(&bytes) {
                Err(e) => Check::failed(what, format!("{path} is not an EFI program: {e}")),
                Ok(pe) => {
                    let machine = match pe.machine {
                        0x8664 => Some(crate::arch::Arch::X86_64),
                        0xaa64 => Some(crate::arch::Arch::Arm64),
                        _ => None,
                    };
                    match (r.arch, machine) {
                        (Some(a), Some(m)) if a != m => Check::mismatch(
                            what,
                            ("root partition type", a.name().to_string()),
                            (path, format!("an {} program", m.name())),
                        ),
                        _ => Check::ok(
                            what,
                            format!(
                                "{path}, {} bytes, {}",
                                bytes.len(),
                                machine.map_or("unknown machine", |m| m.name())
                            ),
                        ),
                    }
                }
            },
        },
    });

    let what = "systemd-boot's loader.conf on the ESP";
    checks.push(match esp.and_then(|e| e.loader_conf.as_deref()) {
        None => Check::failed(what, format!("no {LOADER_CONF}")),
        Some(text) => {
            let settings: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            Check::ok(what, format!("{LOADER_CONF}: {}", settings.join(", ")))
        }
    });

    let what = format!("UKI in {UKI_DIR}/ selects a root slot by its root hash");
    checks.push(match (&r.uki, r.active_slot) {
        (None, _) => Check::failed(&what, format!("no readable UKI in {UKI_DIR}/")),
        (Some(u), Some(slot))
            if r.slots
                .iter()
                .any(|s| s.slot == slot && s.uki.as_deref() == Some(u.path.as_str())) =>
        {
            Check::ok(&what, format!("{} boots slot {slot}", u.path))
        }
        (Some(u), _) => Check::failed(
            &what,
            format!(
                "no slot's root and verity PARTUUIDs are the halves of {}'s root hash {}",
                u.path,
                u.roothash.as_deref().unwrap_or("(none)")
            ),
        ),
    });

    for s in r.slots.iter().filter(|s| Some(s.slot) != r.active_slot) {
        let what = format!(
            "slot {} (partitions {} and {})",
            s.slot,
            num(s.root),
            num(s.verity)
        );
        checks.push(match s.state {
            SlotState::Empty => {
                let no_auto = [s.root, s.verity].iter().all(|n| {
                    r.gpt
                        .partitions
                        .iter()
                        .find(|p| Some(p.number) == *n)
                        .is_some_and(|p| attr::has(p.attributes, attr::NO_AUTO))
                });
                if no_auto {
                    Check::ok(&what, "empty, no-auto".into())
                } else {
                    Check::failed(
                        &what,
                        "empty, but without the no-auto attribute (bit 63) on both \
                         partitions, so a discovering tool may pick it"
                            .into(),
                    )
                }
            }
            _ => Check::skipped(
                &what,
                format!(
                    "holds a root{}; only the slot the first UKI boots is rebuilt",
                    s.uki
                        .as_deref()
                        .map(|u| format!(" booted by {u}"))
                        .unwrap_or_default()
                ),
            ),
        });
    }
    checks
}

fn num(n: Option<u32>) -> String {
    n.map_or("?".into(), |n| n.to_string())
}

/// What needs the manifest: every ESP file it lists, and the image version.
pub(super) fn manifest_checks(r: &Report, m: &Manifest, disk: &DiskFile) -> Vec<Check> {
    let mf = "manifest";
    let mut checks = Vec::new();
    if m.esp.is_empty() {
        checks.push(Check::skipped(
            "ESP files vs manifest esp",
            "the manifest lists no ESP files (a kiln before A/B updates wrote it)".into(),
        ));
    }
    for f in &m.esp {
        let what = format!("ESP file {} sha256 vs manifest esp", f.file);
        checks.push(match read_esp_file(disk, r, &f.file) {
            Err(e) => Check::failed(&what, e),
            Ok(bytes) => Check::compare(
                &what,
                (
                    mf,
                    format!("{} bytes, {}", f.size, f.sha256.to_ascii_lowercase()),
                ),
                (
                    "ESP",
                    format!(
                        "{} bytes, {}",
                        bytes.len(),
                        sha256_reader(&mut &bytes[..]).unwrap_or_default()
                    ),
                ),
            ),
        });
    }
    let what = "UKI os-release IMAGE_VERSION vs manifest version";
    checks.push(match (&m.version, r.uki.as_ref().map(|u| &u.version)) {
        (None, _) => Check::skipped(
            what,
            "the manifest has no version (a kiln before A/B updates wrote it)".into(),
        ),
        (Some(_), None) => Check::failed(what, "no readable UKI".into()),
        (Some(_), Some(None)) => {
            Check::skipped(what, "the UKI's os-release has no IMAGE_VERSION".into())
        }
        (Some(v), Some(Some(u))) => Check::compare(what, (mf, v.clone()), ("UKI", u.clone())),
    });
    checks
}
