//! Reads a GPT for `kiln inspect`: unlike [`crate::disk::read_gpt`], which
//! stops at the first problem, this records every structural check (both
//! headers, both entry arrays, where they sit, whether they agree) so
//! `--verify` can print one line per check, and falls back to the backup
//! header when the primary is damaged, as firmware does.

use serde::Serialize;

use kiln_contract::crc32::crc32;
use kiln_contract::gpt::{self, types, GptError, HeaderCrc};

use super::verify::Check;
use super::{DiskFile, InspectError};
use crate::arch::Arch;
use crate::plan::{attr, guid_text, Guid};

const SECTOR: u64 = 512;

/// The name of a partition type GUID for people (`unknown` if kiln does not
/// know it).
pub fn type_name(g: &Guid) -> &'static str {
    types::name(g).unwrap_or("unknown")
}

/// What a partition is, as far as `kiln inspect` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// EFI System Partition.
    Esp,
    /// A root partition of this arch.
    Root(Arch),
    /// The dm-verity hash partition of a root of this arch.
    RootVerity(Arch),
    /// Anything else.
    Other,
}

impl Kind {
    fn of(g: &Guid) -> Kind {
        if *g == types::ESP {
            return Kind::Esp;
        }
        for arch in Arch::ALL {
            if arch.root_type_guid() == *g {
                return Kind::Root(arch);
            }
            if arch.root_verity_type_guid() == *g {
                return Kind::RootVerity(arch);
            }
        }
        Kind::Other
    }
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionInfo {
    /// 1-based entry number.
    pub number: u32,
    /// GPT partition name.
    pub name: String,
    /// What kiln takes it for.
    pub kind: Kind,
    /// Type GUID.
    #[serde(with = "guid_text")]
    pub type_guid: Guid,
    /// Human name of the type.
    pub type_name: &'static str,
    /// Unique partition GUID.
    #[serde(with = "guid_text")]
    pub partuuid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Byte offset in the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Names of the attribute bits that are set.
    pub attribute_names: Vec<&'static str>,
}

/// The partition table of a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GptReport {
    /// Disk GUID.
    #[serde(with = "guid_text")]
    pub disk_guid: Guid,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA (inclusive).
    pub last_usable_lba: u64,
    /// LBA of the backup header.
    pub backup_lba: u64,
    /// Entries in the array.
    pub entry_count: u32,
    /// Bytes per entry.
    pub entry_size: u32,
    /// Which header the partitions were read from (`primary`, or `backup`
    /// when the primary is damaged).
    pub source: &'static str,
    /// Used entries, in entry order.
    pub partitions: Vec<PartitionInfo>,
    /// Every structural check, passed or not.
    pub checks: Vec<Check>,
}

/// A decoded header; its CRC may or may not match.
#[derive(Debug, Clone)]
struct Header {
    /// Its fields.
    h: gpt::Header,
    /// Its stored and computed CRC.
    crc: HeaderCrc,
}

impl Header {
    fn crc_ok(&self) -> bool {
        self.crc.matches()
    }

    fn array_len(&self) -> u64 {
        self.h.array_bytes()
    }

    /// The fields both headers must agree on, for messages.
    fn shared(&self) -> String {
        let h = &self.h;
        format!(
            "disk {}, usable LBAs {}..={}, {} entries of {} bytes, entry CRC32 {:#010x}",
            h.disk_guid,
            h.first_usable_lba,
            h.last_usable_lba,
            h.num_entries,
            h.entry_size,
            h.entries_crc
        )
    }
}

/// Decodes a header sector. Errors only when it cannot be a header at all
/// (no signature, impossible sizes); a wrong CRC is for the caller to judge.
fn parse_header(s: &[u8]) -> Result<Header, String> {
    let why = |e: GptError| match e {
        GptError::NoSignature => "no \"EFI PART\" signature".to_string(),
        GptError::Damaged(why) => why,
    };
    let (h, crc) = gpt::Header::decode(s).map_err(why)?;
    h.check_shape().map_err(why)?;
    Ok(Header { h, crc })
}

fn crc_check(what: &str, stored: u32, computed: u32, stored_in: &str) -> Check {
    if stored == computed {
        Check::ok(what, format!("{computed:#010x}"))
    } else {
        Check::mismatch(
            what,
            (stored_in, format!("{stored:#010x}")),
            ("computed from its bytes", format!("{computed:#010x}")),
        )
    }
}

/// An entry array read from the disk, or why it could not be.
type Array = Result<Vec<u8>, String>;

fn read_array(disk: &DiskFile, h: &Header) -> Array {
    let offset =
        h.h.entries_lba
            .checked_mul(SECTOR)
            .filter(|o| {
                o.checked_add(h.array_len())
                    .is_some_and(|end| end <= disk.len)
            })
            .ok_or_else(|| {
                format!(
                    "the entry array at LBA {} ({} bytes) lies past the end of the {}-byte disk",
                    h.h.entries_lba,
                    h.array_len(),
                    disk.len
                )
            })?;
    disk.read_vec(offset, h.array_len() as usize)
        .map_err(|e| e.to_string())
}

fn array_check(what: &str, h: Option<&Header>, array: Option<&Array>) -> Check {
    match (h, array) {
        (Some(h), Some(Ok(a))) => crc_check(what, h.h.entries_crc, crc32(a), "header says"),
        (_, Some(Err(e))) => Check::failed(what, e.clone()),
        _ => Check::failed(what, "its header is unusable".into()),
    }
}

fn entries(array: &[u8], entry_size: u32) -> Vec<PartitionInfo> {
    let mut out = Vec::new();
    for (i, e) in gpt::entries(array, entry_size) {
        let (first_lba, last_lba, attributes) = (e.first_lba, e.last_lba, e.attributes);
        let attribute_names = [
            (attr::REQUIRED_PARTITION, "required"),
            (attr::NO_BLOCK_IO_PROTOCOL, "no-block-io"),
            (attr::LEGACY_BIOS_BOOTABLE, "legacy-bios-bootable"),
            (attr::GROWFS, "growfs"),
            (attr::READ_ONLY, "read-only"),
            (attr::NO_AUTO, "no-auto"),
        ]
        .into_iter()
        .filter(|(bit, _)| attr::has(attributes, *bit))
        .map(|(_, n)| n)
        .collect();
        out.push(PartitionInfo {
            number: i + 1,
            name: e.name,
            kind: Kind::of(&e.type_guid),
            type_guid: e.type_guid,
            type_name: type_name(&e.type_guid),
            partuuid: e.part_guid,
            first_lba,
            last_lba,
            offset: first_lba.saturating_mul(SECTOR),
            size: last_lba
                .checked_sub(first_lba)
                .map_or(0, |n| n.saturating_add(1).saturating_mul(SECTOR)),
            attributes,
            attribute_names,
        });
    }
    out
}

/// Every partition lies in the usable range, ends after it starts and
/// overlaps no other.
fn layout_check(h: &Header, parts: &[PartitionInfo]) -> Check {
    let what = "partitions inside the usable LBAs, none overlapping";
    let mut problems = Vec::new();
    for p in parts {
        if p.last_lba < p.first_lba {
            problems.push(format!(
                "partition {} ends (LBA {}) before it starts (LBA {})",
                p.number, p.last_lba, p.first_lba
            ));
        } else if p.first_lba < h.h.first_usable_lba || p.last_lba > h.h.last_usable_lba {
            problems.push(format!(
                "partition {} (LBAs {}..={}) is outside the usable LBAs {}..={}",
                p.number, p.first_lba, p.last_lba, h.h.first_usable_lba, h.h.last_usable_lba
            ));
        }
    }
    for (i, a) in parts.iter().enumerate() {
        for b in &parts[i + 1..] {
            if a.first_lba <= b.last_lba && b.first_lba <= a.last_lba {
                problems.push(format!("partitions {} and {} overlap", a.number, b.number));
            }
        }
    }
    if problems.is_empty() {
        Check::ok(what, format!("{} partitions", parts.len()))
    } else {
        Check::failed(what, problems.join("; "))
    }
}

/// Reads and checks the GPT of `disk`. Errors only when no usable header
/// exists (not a GPT disk, both headers broken) or the disk is shorter than
/// its own table says; every other problem is a failed check in the report.
pub(super) fn read(disk: &DiskFile) -> Result<GptReport, InspectError> {
    let path = disk.name.clone();
    let sectors = disk.len / SECTOR;
    if sectors < 3 {
        return Err(InspectError::NotAnImage {
            path,
            what: format!("it is only {} bytes, too small for a GPT disk", disk.len),
        });
    }
    let mbr = disk.read_vec(0, SECTOR as usize)?;
    let mbr_sig = mbr[510..512] == [0x55, 0xAA];
    let protective = mbr_sig && (0..4).any(|i| mbr[446 + 16 * i + 4] == gpt::MBR_PROTECTIVE_TYPE);
    let primary = parse_header(&disk.read_vec(SECTOR, SECTOR as usize)?);

    // The backup's place comes from a trustworthy primary, else the last sector.
    let backup_lba = match &primary {
        Ok(h) if h.crc_ok() => h.h.alternate_lba,
        _ => sectors - 1,
    };
    if backup_lba >= sectors {
        return Err(InspectError::Truncated {
            path,
            what: format!(
                "its GPT puts the backup header at LBA {backup_lba}, so the disk is {} bytes, \
                 but only {} bytes are there (an interrupted download or copy?)",
                (backup_lba + 1) * SECTOR,
                disk.len
            ),
        });
    }
    let backup = parse_header(&disk.read_vec(backup_lba * SECTOR, SECTOR as usize)?);

    let usable = |h: &Result<Header, String>| h.as_ref().ok().filter(|h| h.crc_ok()).cloned();
    let (main, source) = match (usable(&primary), usable(&backup)) {
        (Some(h), _) => (h, "primary"),
        (None, Some(h)) => (h, "backup"),
        (None, None) => {
            let why = |h: &Result<Header, String>| match h {
                Ok(h) => format!(
                    "CRC32 {:#010x} but its bytes give {:#010x}",
                    h.crc.stored, h.crc.computed
                ),
                Err(e) => e.clone(),
            };
            return Err(match (&primary, mbr_sig) {
                (Err(_), false) => InspectError::NotAnImage {
                    path,
                    what: "no partition table: no MBR boot signature at byte 510 and no GPT \
                           header (\"EFI PART\") at byte 512"
                        .into(),
                },
                (Err(_), true) if backup.is_err() => InspectError::NotAnImage {
                    path,
                    what: "it has an MBR but no GPT header (\"EFI PART\") at byte 512; kiln \
                           images are GPT disks"
                        .into(),
                },
                _ => InspectError::Corrupt {
                    path,
                    what: format!(
                        "no intact GPT header: primary: {}; backup (LBA {backup_lba}): {}",
                        why(&primary),
                        why(&backup)
                    ),
                },
            });
        }
    };

    let p_array = primary.as_ref().ok().map(|h| read_array(disk, h));
    let b_array = backup.as_ref().ok().map(|h| read_array(disk, h));
    if let Some(Err(e)) = if source == "primary" {
        &p_array
    } else {
        &b_array
    } {
        return Err(InspectError::Truncated {
            path,
            what: e.clone(),
        });
    }

    let mut checks = Vec::new();
    checks.push(if protective {
        Check::ok(
            "protective MBR",
            "type EE partition, 55 AA signature".into(),
        )
    } else if mbr_sig {
        Check::failed("protective MBR", "the MBR has no type EE partition".into())
    } else {
        Check::failed("protective MBR", "no 55 AA signature in sector 0".into())
    });
    let header_check = |what: &str, h: &Result<Header, String>, lba: u64| match h {
        Ok(h) => {
            let c = crc_check(what, h.crc.stored, h.crc.computed, "header says");
            if c.passed() && h.h.my_lba != lba {
                Check::mismatch(
                    what,
                    ("its place", format!("LBA {lba}")),
                    ("it says it is at", format!("LBA {}", h.h.my_lba)),
                )
            } else {
                c
            }
        }
        Err(e) => Check::failed(what, e.clone()),
    };
    checks.push(header_check("primary GPT header CRC32", &primary, 1));
    checks.push(array_check(
        "primary GPT entry array CRC32",
        primary.as_ref().ok(),
        p_array.as_ref(),
    ));
    checks.push(header_check(
        &format!("backup GPT header CRC32 (LBA {backup_lba})"),
        &backup,
        backup_lba,
    ));
    checks.push(array_check(
        "backup GPT entry array CRC32",
        backup.as_ref().ok(),
        b_array.as_ref(),
    ));
    let agree = "backup GPT agrees with the primary";
    checks.push(match (&primary, &backup, &p_array, &b_array) {
        (Ok(p), Ok(b), Some(Ok(pa)), Some(Ok(ba))) => {
            if p.shared() != b.shared() {
                Check::mismatch(agree, ("primary", p.shared()), ("backup", b.shared()))
            } else if b.h.alternate_lba != 1 {
                Check::mismatch(
                    agree,
                    ("primary is at", "LBA 1".into()),
                    ("backup points to", format!("LBA {}", b.h.alternate_lba)),
                )
            } else if pa != ba {
                Check::failed(agree, "the two entry arrays differ".into())
            } else {
                Check::ok(agree, "same disk GUID, geometry and entries".into())
            }
        }
        _ => Check::failed(agree, "one of the two tables is unusable".into()),
    });
    let last = sectors - 1;
    checks.push(if backup_lba == last {
        Check::ok(
            "backup GPT header in the last sector",
            format!("LBA {last}"),
        )
    } else {
        Check::mismatch(
            "backup GPT header in the last sector",
            ("last sector", format!("LBA {last}")),
            ("backup header", format!("LBA {backup_lba}")),
        )
    });

    // Entries from the chosen header's array if intact, else the other's.
    let intact = |h: &Result<Header, String>, a: &Option<Array>| match (h, a) {
        (Ok(h), Some(Ok(a))) if crc32(a) == h.h.entries_crc => Some(a.clone()),
        _ => None,
    };
    let (first, second) = if source == "primary" {
        (intact(&primary, &p_array), intact(&backup, &b_array))
    } else {
        (intact(&backup, &b_array), intact(&primary, &p_array))
    };
    let own = if source == "primary" {
        &p_array
    } else {
        &b_array
    };
    let array = first
        .or(second)
        .or_else(|| own.as_ref().and_then(|a| a.as_ref().ok().cloned()))
        .unwrap_or_default();
    let partitions = entries(&array, main.h.entry_size);
    checks.push(layout_check(&main, &partitions));

    Ok(GptReport {
        disk_guid: main.h.disk_guid,
        first_usable_lba: main.h.first_usable_lba,
        last_usable_lba: main.h.last_usable_lba,
        backup_lba,
        entry_count: main.h.num_entries,
        entry_size: main.h.entry_size,
        source,
        partitions,
        checks,
    })
}

impl GptReport {
    /// The first partition of a kind.
    pub fn find(&self, pred: impl Fn(Kind) -> bool) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| pred(p.kind))
    }

    /// Whether every structural check passed.
    pub fn intact(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }
}
