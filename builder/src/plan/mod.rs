//! The disk layout of an image, computed without touching anything.
//!
//! [`plan_disk`] turns sizes and a seed into a [`DiskPlan`]: which partitions
//! exist, where each one starts and ends, and every GUID. Writers
//! ([`crate::disk`], [`crate::fs`]) carry the plan out; keeping this pure lets
//! the layout be tested, printed in the manifest and reasoned about before a
//! single byte is written.
//!
//! Layout rules: 512-byte sectors, a protective MBR, a primary GPT header at
//! LBA 1 with 128 entries of 128 bytes behind it, the first usable LBA at 2048
//! (1 MiB), every partition starting on a 1 MiB boundary and rounded up to
//! whole MiB (content may be shorter than its partition), and the backup
//! entry array and header in the last 33 sectors. Space after the last partition is
//! left free on purpose: the node grows its `var` partition into it.

pub mod seed;

use std::fmt;

use kiln_contract::gpt::{types, NAME_MAX_UNITS};
use serde::{Deserialize, Serialize};

use crate::arch::Arch;
use crate::profile::format_size;

pub use seed::ImageSeed;

// The GPT format lives in the contract crate; these re-exports keep the
// builder's `crate::plan::Guid` and `crate::plan::attr` paths.
pub use kiln_contract::gpt::{attr, Guid, GuidParseError};

/// Bytes per logical sector of every image kiln writes.
pub const SECTOR_SIZE: u64 = 512;
/// Every partition starts on a multiple of this many bytes (1 MiB), which is
/// aligned for 4K-sector disks, SSD erase blocks and cloud block devices.
pub const PARTITION_ALIGNMENT: u64 = 1 << 20;
/// Number of entries in the GPT partition entry array.
pub const GPT_ENTRY_COUNT: u32 = 128;
/// Size of one GPT partition entry in bytes.
pub const GPT_ENTRY_SIZE: u32 = 128;
/// Sectors taken by one copy of the entry array (128 × 128 bytes = 32 sectors).
pub const GPT_ENTRY_ARRAY_SECTORS: u64 =
    (GPT_ENTRY_COUNT as u64 * GPT_ENTRY_SIZE as u64).div_ceil(SECTOR_SIZE);
/// First LBA a partition may use (1 MiB into the disk).
pub const FIRST_USABLE_LBA: u64 = PARTITION_ALIGNMENT / SECTOR_SIZE;
/// Sectors at the end of the disk that hold the backup GPT (entries + header).
const BACKUP_GPT_SECTORS: u64 = GPT_ENTRY_ARRAY_SECTORS + 1;

/// Serde for [`Guid`] fields in their text form (`c12a7328-f81f-...`). The
/// contract crate, which owns [`Guid`], stays free of serde (the static agent
/// does not need it), so the builder's plan and reports name this module on
/// each GUID field: `#[serde(with = "crate::plan::guid_text")]`.
pub(crate) mod guid_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Guid;

    /// Writes the GUID as its 8-4-4-4-12 text.
    pub fn serialize<S: Serializer>(g: &Guid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(g)
    }

    /// Reads the GUID from its 8-4-4-4-12 text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Guid, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionRole {
    /// The EFI System Partition (FAT) holding the UKI and `kiln.toml`.
    Esp,
    /// The read-only root file system (ext4).
    Root,
    /// The dm-verity hash tree of the root.
    RootVerity,
}

impl PartitionRole {
    /// The GPT partition name of this role on `arch` (`esp`, `root-x86_64`,
    /// `root-x86_64-verity`).
    pub fn label(self, arch: Arch) -> String {
        match self {
            PartitionRole::Esp => "esp".to_string(),
            PartitionRole::Root => format!("root-{arch}"),
            PartitionRole::RootVerity => format!("root-{arch}-verity"),
        }
    }
}

impl fmt::Display for PartitionRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionRole::Esp => "esp",
            PartitionRole::Root => "root",
            PartitionRole::RootVerity => "root-verity",
        })
    }
}

/// An inclusive range of sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbaRange {
    /// First sector.
    pub first: u64,
    /// Last sector (inclusive, as in GPT).
    pub last: u64,
}

impl LbaRange {
    /// Number of sectors.
    pub fn sectors(&self) -> u64 {
        self.last + 1 - self.first
    }

    /// Byte offset of the first sector.
    pub fn offset(&self) -> u64 {
        self.first * SECTOR_SIZE
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        self.sectors() * SECTOR_SIZE
    }
}

/// Everything the planner needs; all sizes are in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanInput {
    /// Target architecture (picks the root type GUIDs and labels).
    pub arch: Arch,
    /// Whole disk size (`disk.size` in the profile).
    pub disk_size: u64,
    /// ESP size (`disk.esp_size` in the profile).
    pub esp_size: u64,
    /// Size of the root file system image.
    pub root_size: u64,
    /// Size of the root verity hash tree; 0 plans no verity partition.
    pub root_verity_size: u64,
    /// Seed for every GUID, derived by the caller from the profile and lock.
    pub seed: [u8; 32],
    /// Leave room for a second root (+ verity) pair right after the first,
    /// so A/B updates can be added without repartitioning.
    pub reserve_ab: bool,
}

/// One planned partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedPartition {
    /// What the partition holds.
    pub role: PartitionRole,
    /// GPT partition name.
    pub name: String,
    /// Partition type GUID.
    #[serde(with = "guid_text")]
    pub type_guid: Guid,
    /// Unique partition GUID.
    #[serde(with = "guid_text")]
    pub unique_guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// GPT attribute bits (see [`attr`]).
    pub attributes: u64,
}

impl PlannedPartition {
    /// The sectors the partition covers.
    pub fn range(&self) -> LbaRange {
        LbaRange {
            first: self.first_lba,
            last: self.last_lba,
        }
    }

    /// Byte offset of the partition in the image.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR_SIZE
    }

    /// Size of the partition in bytes.
    pub fn size(&self) -> u64 {
        self.range().size()
    }
}

/// The complete layout of one disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPlan {
    /// Target architecture.
    pub arch: Arch,
    /// Bytes per sector (always [`SECTOR_SIZE`]).
    pub sector_size: u64,
    /// Image size in bytes.
    pub total_size: u64,
    /// GPT disk GUID.
    #[serde(with = "guid_text")]
    pub disk_guid: Guid,
    /// First LBA partitions may use.
    pub first_usable_lba: u64,
    /// Last LBA partitions may use (inclusive).
    pub last_usable_lba: u64,
    /// Entries in the GPT entry array.
    pub entry_count: u32,
    /// Bytes per GPT entry.
    pub entry_size: u32,
    /// Partitions in on-disk order (entry 1 first).
    pub partitions: Vec<PlannedPartition>,
    /// Space kept free for a second root (+ verity) pair, if asked for.
    pub ab_reserve: Option<LbaRange>,
}

impl DiskPlan {
    /// Number of sectors of the image.
    pub fn total_sectors(&self) -> u64 {
        self.total_size / self.sector_size
    }

    /// LBA of the backup GPT header (the last sector).
    pub fn backup_header_lba(&self) -> u64 {
        self.total_sectors() - 1
    }

    /// LBA of the backup entry array (just before the backup header).
    pub fn backup_entries_lba(&self) -> u64 {
        self.backup_header_lba() - GPT_ENTRY_ARRAY_SECTORS
    }

    /// The partition with `role`, if planned.
    pub fn partition(&self, role: PartitionRole) -> Option<&PlannedPartition> {
        self.partitions.iter().find(|p| p.role == role)
    }

    /// The free space after the last partition (and the A/B reserve),
    /// starting on a 1 MiB boundary: where the node creates `var`.
    pub fn free_range(&self) -> Option<LbaRange> {
        let used_end = self
            .partitions
            .iter()
            .map(|p| p.last_lba)
            .chain(self.ab_reserve.map(|r| r.last))
            .max()
            .unwrap_or(self.first_usable_lba);
        let first = align_lba(used_end + 1);
        (first <= self.last_usable_lba).then_some(LbaRange {
            first,
            last: self.last_usable_lba,
        })
    }

    /// Sets the root and root-verity partition GUIDs from the verity root
    /// hash, as the Discoverable Partitions Specification recommends: the
    /// first 128 bits for the root, the last 128 bits for the verity
    /// partition. That lets the initramfs match them to the hash on the
    /// kernel command line. Does nothing to partitions that are not planned.
    pub fn apply_root_hash(&mut self, root_hash: &[u8; 32]) {
        let mut first = [0u8; 16];
        let mut last = [0u8; 16];
        first.copy_from_slice(&root_hash[..16]);
        last.copy_from_slice(&root_hash[16..]);
        for p in &mut self.partitions {
            match p.role {
                PartitionRole::Root => p.unique_guid = Guid::from_bytes(first),
                PartitionRole::RootVerity => p.unique_guid = Guid::from_bytes(last),
                PartitionRole::Esp => {}
            }
        }
    }
}

/// Why a disk cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The content does not fit the disk.
    #[error(
        "disk too small: the partitions need {needed} bytes ({}: {breakdown}) but `disk.size` \
         in the profile is {given} bytes ({}); set `disk.size` to at least {} MiB",
        format_size(*needed), format_size(*given), needed.div_ceil(1 << 20)
    )]
    DiskTooSmall {
        /// Bytes the layout needs, GPT structures included.
        needed: u64,
        /// Bytes the profile gives.
        given: u64,
        /// Human summary of what takes the space.
        breakdown: String,
    },
    /// The disk size is not a whole number of sectors.
    #[error(
        "`disk.size` in the profile is {0} bytes, not a multiple of 512-byte sectors; \
         use a size like \"2GiB\""
    )]
    UnalignedDiskSize(u64),
    /// A partition that must exist has size 0.
    #[error("{what} is 0 bytes; {fix}")]
    EmptyPartition {
        /// Which size.
        what: &'static str,
        /// What to do about it.
        fix: &'static str,
    },
    /// A partition name does not fit GPT's 36 UTF-16 units.
    #[error("partition name {0:?} is longer than GPT's 36 UTF-16 code units")]
    NameTooLong(String),
}

/// Rounds a sector number up to the next partition alignment boundary.
fn align_lba(lba: u64) -> u64 {
    let step = PARTITION_ALIGNMENT / SECTOR_SIZE;
    lba.div_ceil(step) * step
}

fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR_SIZE)
}

/// Computes the partition layout and GUIDs of a disk. Pure: no I/O, no clock,
/// no randomness; the same input always gives the same plan.
pub fn plan_disk(input: &PlanInput) -> Result<DiskPlan, PlanError> {
    if input.disk_size % SECTOR_SIZE != 0 {
        return Err(PlanError::UnalignedDiskSize(input.disk_size));
    }
    if input.esp_size == 0 {
        return Err(PlanError::EmptyPartition {
            what: "`disk.esp_size` in the profile",
            fix: "set it to at least 33MiB (128MiB is a good default)",
        });
    }
    if input.root_size == 0 {
        return Err(PlanError::EmptyPartition {
            what: "the root file system",
            fix: "the root image must be built before the disk is planned",
        });
    }
    let arch = input.arch;
    let root_type = arch.root_type_guid();
    let verity_type = arch.root_verity_type_guid();

    let mut wanted = vec![
        (PartitionRole::Esp, types::ESP, input.esp_size, 0),
        (
            PartitionRole::Root,
            root_type,
            input.root_size,
            attr::READ_ONLY,
        ),
    ];
    if input.root_verity_size > 0 {
        wanted.push((
            PartitionRole::RootVerity,
            verity_type,
            input.root_verity_size,
            attr::READ_ONLY,
        ));
    }

    let mut partitions = Vec::with_capacity(wanted.len());
    let mut next = FIRST_USABLE_LBA;
    for (role, type_guid, bytes, attributes) in wanted {
        let name = role.label(arch);
        if name.encode_utf16().count() > NAME_MAX_UNITS {
            return Err(PlanError::NameTooLong(name));
        }
        // Ends are rounded up to the alignment too: the slack is under 1 MiB,
        // and whole-MiB partitions are what partitioning tools expect.
        let first_lba = align_lba(next);
        let last_lba = align_lba(first_lba + sectors_for(bytes)) - 1;
        next = last_lba + 1;
        let unique_guid = Guid::derive(&input.seed, &format!("gpt-partition:{name}"));
        partitions.push(PlannedPartition {
            role,
            name,
            type_guid,
            unique_guid,
            first_lba,
            last_lba,
            attributes,
        });
    }

    let ab_reserve = if input.reserve_ab {
        // The pair spans from the root's first sector to the last sector of
        // the pair; a second copy at an aligned start keeps the same
        // internal offsets, so it is aligned the same way.
        let pair_first = partitions
            .iter()
            .find(|p| p.role == PartitionRole::Root)
            .map_or(next, |p| p.first_lba);
        let span = next - pair_first;
        let first = align_lba(next);
        next = first + span;
        Some(LbaRange {
            first,
            last: next - 1,
        })
    } else {
        None
    };

    let total_sectors = input.disk_size / SECTOR_SIZE;
    let needed_sectors = next + BACKUP_GPT_SECTORS;
    if needed_sectors > total_sectors {
        let mut breakdown = format!(
            "ESP {}, root {}",
            format_size(input.esp_size),
            format_size(input.root_size)
        );
        if input.root_verity_size > 0 {
            breakdown.push_str(&format!(
                ", root verity {}",
                format_size(input.root_verity_size)
            ));
        }
        if let Some(r) = ab_reserve {
            breakdown.push_str(&format!(", A/B reserve {}", format_size(r.size())));
        }
        breakdown.push_str(", GPT and 1 MiB alignment");
        return Err(PlanError::DiskTooSmall {
            needed: needed_sectors * SECTOR_SIZE,
            given: input.disk_size,
            breakdown,
        });
    }

    Ok(DiskPlan {
        arch,
        sector_size: SECTOR_SIZE,
        total_size: input.disk_size,
        disk_guid: Guid::derive(&input.seed, "gpt-disk"),
        first_usable_lba: FIRST_USABLE_LBA,
        last_usable_lba: total_sectors - BACKUP_GPT_SECTORS - 1,
        entry_count: GPT_ENTRY_COUNT,
        entry_size: GPT_ENTRY_SIZE,
        partitions,
        ab_reserve,
    })
}

#[cfg(test)]
mod tests;
