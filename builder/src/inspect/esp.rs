//! The ESP and what boots from it: the FAT volume's files, systemd-boot and
//! its `loader.conf`, and the UKIs under `EFI/Linux` with their sections,
//! kernel release, OS, version and command line.

use kiln_contract::boot::{UkiName, LOADER_CONF, UKI_DIR};

use super::{
    fat, part_label, text, DiskFile, EspReport, InspectError, PartitionInfo, SectionInfo, UkiReport,
};
use crate::arch::Arch;

/// `PRETTY_NAME` from os-release text.
fn pretty_name(osrel: &str) -> Option<String> {
    osrel_field(osrel, "PRETTY_NAME")
}

/// A field of os-release text, unquoted.
fn osrel_field(osrel: &str, key: &str) -> Option<String> {
    osrel.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix('=')?.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.to_string())
    })
}

/// The root hash a kernel command line carries: the `kiln.roothash=` value
/// (kiln's init), else the `roothash=` value (systemd's generator).
pub fn roothash_of(cmdline: &str) -> Option<String> {
    use kiln_contract::cmdline::{split, ROOT_HASH};
    // Read as the agent reads it: the kernel's word splitting, the last occurrence wins.
    let words = split(cmdline);
    let last = |key: &str| {
        words
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.clone())
    };
    last(ROOT_HASH).or_else(|| last("roothash"))
}

fn uki_report(path: &str, bytes: &[u8]) -> Result<UkiReport, crate::uki::UkiError> {
    let summary = crate::uki::summary(bytes)?;
    let sections = crate::uki::inspect(bytes)?
        .into_iter()
        .map(|s| SectionInfo {
            name: s.name,
            size: u64::from(s.virtual_size),
        })
        .collect();
    let section = |n| -> Result<Option<String>, crate::uki::UkiError> {
        Ok(crate::uki::section_data(bytes, n)?.map(text))
    };
    let cmdline = section(".cmdline")?;
    let osrel = section(".osrel")?;
    Ok(UkiReport {
        path: path.to_string(),
        size: bytes.len() as u64,
        machine: match summary.machine {
            0x8664 => "x86_64".into(),
            0xaa64 => "arm64".into(),
            m => format!("{m:#06x}"),
        },
        sections,
        kernel_release: section(".uname")?,
        os: osrel.as_deref().and_then(pretty_name),
        version: osrel
            .as_deref()
            .and_then(|o| osrel_field(o, "IMAGE_VERSION")),
        roothash: cmdline.as_deref().and_then(roothash_of),
        cmdline,
    })
}

/// Where systemd-boot is on an ESP of `arch` (either arch's path when the
/// arch is unknown).
fn boot_paths(arch: Option<Arch>) -> Vec<String> {
    match arch {
        Some(a) => vec![a.efi_boot_path()],
        None => Arch::ALL.iter().map(|a| a.efi_boot_path()).collect(),
    }
}

/// The UKI files kiln names under [`UKI_DIR`], the one `kiln inspect` reads
/// first: a UKI systemd-boot still boots before one it gave up on, slot A
/// before slot B.
fn uki_entries(files: &[fat::FatEntry]) -> Vec<(UkiName, &fat::FatEntry)> {
    let mut found: Vec<(UkiName, &fat::FatEntry)> = files
        .iter()
        .filter(|e| !e.is_dir)
        .filter_map(|e| {
            let (dir, name) = e.path.rsplit_once('/')?;
            if !dir.eq_ignore_ascii_case(UKI_DIR) {
                return None;
            }
            Some((UkiName::parse(name)?, e))
        })
        .collect();
    found.sort_by_key(|(n, e)| (n.is_bad(), n.slot, e.path.clone()));
    found
}

/// What [`read_esp`] found.
pub(super) struct EspRead {
    /// The volume and its files, if it could be opened.
    pub esp: Option<EspReport>,
    /// The UKIs under `EFI/Linux`, the one to verify first.
    pub ukis: Vec<UkiReport>,
}

/// Reads the ESP, systemd-boot's files and the UKIs on it; problems are
/// pushed, not returned.
pub(super) fn read_esp(
    disk: &DiskFile,
    p: &PartitionInfo,
    arch: Option<Arch>,
    problems: &mut Vec<String>,
) -> Result<EspRead, InspectError> {
    let part = disk.part(p)?;
    let vol = match fat::FatVolume::open(&part) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("{} (ESP): {e}", part_label(p)));
            return Ok(EspRead {
                esp: None,
                ukis: Vec::new(),
            });
        }
    };
    let files = match vol.walk(&part) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("{} (ESP): listing its files: {e}", part_label(p)));
            Vec::new()
        }
    };
    let file = |path: &str| {
        files
            .iter()
            .find(|e| !e.is_dir && e.path.eq_ignore_ascii_case(path))
    };
    let boot_paths = boot_paths(arch);
    let systemd_boot = boot_paths
        .iter()
        .find_map(|b| file(b))
        .map(|e| e.path.clone());
    if systemd_boot.is_none() {
        problems.push(format!(
            "{} (ESP): no boot loader at {} (kiln puts systemd-boot there)",
            part_label(p),
            boot_paths.join(" or ")
        ));
    }
    let loader_conf = match file(LOADER_CONF) {
        None => {
            problems.push(format!(
                "{} (ESP): no {LOADER_CONF} (systemd-boot's settings)",
                part_label(p)
            ));
            None
        }
        Some(e) => match vol.read_entry(&part, e) {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(err) => {
                problems.push(format!(
                    "{} (ESP): reading {}: {err}",
                    part_label(p),
                    e.path
                ));
                None
            }
        },
    };
    let entries = uki_entries(&files);
    if entries.is_empty() {
        problems.push(format!(
            "{} (ESP): no UKI in {UKI_DIR}/ (kiln-a.efi, kiln-b.efi, with or without a \
             +N boot counter); images of kilns before A/B updates keep theirs at {} and \
             need a reflash",
            part_label(p),
            boot_paths.join(" or ")
        ));
    }
    let mut ukis = Vec::new();
    for (_, entry) in entries {
        match vol.read_entry(&part, entry) {
            Ok(bytes) => match uki_report(&entry.path, &bytes) {
                Ok(u) => ukis.push(u),
                Err(e) => {
                    problems.push(format!("{} (ESP): {}: {e}", part_label(p), entry.path));
                }
            },
            Err(e) => problems.push(format!(
                "{} (ESP): reading {}: {e}",
                part_label(p),
                entry.path
            )),
        }
    }
    let esp = EspReport {
        partition: p.number,
        fat: vol.kind,
        label: vol.label.clone(),
        serial: vol
            .serial
            .map(|s| format!("{:04X}-{:04X}", s >> 16, s & 0xFFFF)),
        cluster_size: vol.cluster_size,
        systemd_boot,
        loader_conf,
        files,
    };
    Ok(EspRead {
        esp: Some(esp),
        ukis,
    })
}
