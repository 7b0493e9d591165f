//! The ESP and the UKI on it: the FAT volume's files, and the UKI's
//! sections, kernel release, OS and command line.

use super::{
    fat, part_label, text, DiskFile, EspReport, InspectError, PartitionInfo, SectionInfo, UkiReport,
};
use crate::arch::Arch;

/// `PRETTY_NAME` from os-release text.
fn pretty_name(osrel: &str) -> Option<String> {
    osrel.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?.trim();
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
        os: section(".osrel")?.as_deref().and_then(pretty_name),
        roothash: cmdline.as_deref().and_then(roothash_of),
        cmdline,
    })
}

/// Reads the ESP and the UKI on it; problems are pushed, not returned.
pub(super) fn read_esp(
    disk: &DiskFile,
    p: &PartitionInfo,
    arch: Option<Arch>,
    problems: &mut Vec<String>,
) -> Result<(Option<EspReport>, Option<UkiReport>), InspectError> {
    let part = disk.part(p)?;
    let vol = match fat::FatVolume::open(&part) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("{} (ESP): {e}", part_label(p)));
            return Ok((None, None));
        }
    };
    let files = match vol.walk(&part) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("{} (ESP): listing its files: {e}", part_label(p)));
            Vec::new()
        }
    };
    let esp = EspReport {
        partition: p.number,
        fat: vol.kind,
        label: vol.label.clone(),
        serial: vol
            .serial
            .map(|s| format!("{:04X}-{:04X}", s >> 16, s & 0xFFFF)),
        cluster_size: vol.cluster_size,
        files,
    };
    let wanted: Vec<String> = match arch {
        Some(a) => vec![format!("EFI/BOOT/{}", a.efi_boot_file())],
        None => Arch::ALL
            .iter()
            .map(|a| format!("EFI/BOOT/{}", a.efi_boot_file()))
            .collect(),
    };
    let entry = esp
        .files
        .iter()
        .find(|e| !e.is_dir && wanted.iter().any(|w| w.eq_ignore_ascii_case(&e.path)));
    let Some(entry) = entry else {
        problems.push(format!(
            "{} (ESP): no UKI at {}",
            part_label(p),
            wanted.join(" or ")
        ));
        return Ok((Some(esp), None));
    };
    let uki = match vol.read_entry(&part, entry) {
        Ok(bytes) => match uki_report(&entry.path, &bytes) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("{} (ESP): {}: {e}", part_label(p), entry.path));
                None
            }
        },
        Err(e) => {
            problems.push(format!(
                "{} (ESP): reading {}: {e}",
                part_label(p),
                entry.path
            ));
            None
        }
    };
    Ok((Some(esp), uki))
}
