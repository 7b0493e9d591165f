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
//!
//! The partitions, in order: the ESP, then two root slots (A and B) of a root
//! partition and its verity partition each, all four sized for the largest root an
//! update may bring (`[update] slot_size`). Slot A holds the image's root; slot B
//! starts empty (GPT name `_empty`, no-auto) and is written by the first update.
//! Reserving it in the image rather than on first boot keeps the node from ever
//! repartitioning around its root: only `var`, at the end, is made on the node.
//! [`esp`] checks that the ESP holds systemd-boot and two UKIs.

pub mod esp;
pub mod seed;

use std::fmt;

use kiln_contract::boot::{Slot, EMPTY_LABEL};
use kiln_contract::gpt::{types, NAME_MAX_UNITS};
use kiln_contract::verity;
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
/// Default root slots are rounded up to this (64 MiB), so a root that grows by a
/// few files between versions keeps the same layout.
pub const SLOT_ROUNDING: u64 = 64 << 20;

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

/// Serde for the [`PlannedPartition::slot`] field as its letter (`"a"`, `"b"`),
/// absent for partitions outside the slots. [`Slot`] lives in the serde-free
/// contract crate, like [`Guid`].
pub(crate) mod slot_text {
    use kiln_contract::boot::Slot;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the slot's letter, or nothing.
    pub fn serialize<S: Serializer>(slot: &Option<Slot>, s: S) -> Result<S::Ok, S::Error> {
        match slot {
            Some(slot) => s.serialize_some(&slot.letter()),
            None => s.serialize_none(),
        }
    }

    /// Reads `"a"` or `"b"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Slot>, D::Error> {
        match Option::<String>::deserialize(d)?.as_deref() {
            None => Ok(None),
            Some("a") => Ok(Some(Slot::A)),
            Some("b") => Ok(Some(Slot::B)),
            Some(other) => Err(serde::de::Error::custom(format!(
                "slot {other:?} is neither \"a\" nor \"b\""
            ))),
        }
    }
}

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionRole {
    /// The EFI System Partition (FAT) holding systemd-boot, the UKIs and `kiln.toml`.
    Esp,
    /// A root slot's read-only root file system (ext4).
    Root,
    /// The dm-verity hash tree of a root slot's root.
    RootVerity,
}

impl PartitionRole {
    /// The GPT partition name of this role on `arch` when it holds a root of
    /// `slot` (`esp`, `root-x86_64-a`, `root-x86_64-a-verity`); an empty slot's
    /// partitions are named [`EMPTY_LABEL`] instead.
    pub fn label(self, arch: Arch, slot: Slot) -> String {
        match self {
            PartitionRole::Esp => "esp".to_string(),
            PartitionRole::Root => slot.root_label(arch.name()),
            PartitionRole::RootVerity => slot.verity_label(arch.name()),
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
    /// Size of the root file system image (what slot A holds).
    pub root_size: u64,
    /// Bytes of each root slot (`[update] slot_size`); `None` sizes the slots
    /// from the root ([`default_slot_size`]).
    pub slot_size: Option<u64>,
    /// `disk.var_min_size`: named in the message of a disk too small, since a
    /// disk of image size needs that much more for `var`.
    pub var_min_size: u64,
    /// Seed for every GUID, derived by the caller from the profile and lock.
    pub seed: [u8; 32],
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
    /// The root slot the partition belongs to; `None` for the ESP.
    #[serde(default, with = "slot_text", skip_serializing_if = "Option::is_none")]
    pub slot: Option<Slot>,
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
    /// Bytes of each root slot's root partition.
    pub slot_size: u64,
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

    /// The partition with `role`, if planned; for the slot roles, slot A's (the
    /// one the build writes).
    pub fn partition(&self, role: PartitionRole) -> Option<&PlannedPartition> {
        self.partitions
            .iter()
            .find(|p| p.role == role && p.slot.is_none_or(|s| s == Slot::A))
    }

    /// The partition with `role` in `slot`.
    pub fn slot_partition(&self, role: PartitionRole, slot: Slot) -> Option<&PlannedPartition> {
        self.partitions
            .iter()
            .find(|p| p.role == role && p.slot == Some(slot))
    }

    /// The free space after the last partition, starting on a 1 MiB
    /// boundary: where the node creates `var`.
    pub fn free_range(&self) -> Option<LbaRange> {
        let used_end = self
            .partitions
            .iter()
            .map(|p| p.last_lba)
            .max()
            .unwrap_or(self.first_usable_lba);
        let first = align_lba(used_end + 1);
        (first <= self.last_usable_lba).then_some(LbaRange {
            first,
            last: self.last_usable_lba,
        })
    }

    /// Sets slot A's root and root-verity partition GUIDs from the verity root
    /// hash, as the Discoverable Partitions Specification recommends: the
    /// first 128 bits for the root, the last 128 bits for the verity
    /// partition. That lets the initramfs match them to the hash on the
    /// kernel command line, and is how a UKI's hash selects its slot. Slot B,
    /// empty, keeps its seeded GUIDs.
    pub fn apply_root_hash(&mut self, root_hash: &[u8; 32]) {
        let mut first = [0u8; 16];
        let mut last = [0u8; 16];
        first.copy_from_slice(&root_hash[..16]);
        last.copy_from_slice(&root_hash[16..]);
        for p in self
            .partitions
            .iter_mut()
            .filter(|p| p.slot == Some(Slot::A))
        {
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
         in the profile is {given} bytes ({}); set `disk.size` to at least {} MiB ({} MiB so \
         that the image booted on a disk of its own size also has the {} of \
         `disk.var_min_size` for var)",
        format_size(*needed), format_size(*given), needed.div_ceil(1 << 20),
        (needed + var_min).div_ceil(1 << 20), format_size(*var_min)
    )]
    DiskTooSmall {
        /// Bytes the layout needs, GPT structures included.
        needed: u64,
        /// Bytes the profile gives.
        given: u64,
        /// Human summary of what takes the space.
        breakdown: String,
        /// `disk.var_min_size`, for the size that also holds var.
        var_min: u64,
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
    /// The profile's slot size cannot hold the root.
    #[error(
        "`[update] slot_size` in the profile is {} ({slot_size} bytes), but the root file \
         system needs {} ({root_size} bytes); set `[update] slot_size` to at least {} MiB, \
         or remove it to size the slots from the root",
        format_size(*slot_size), format_size(*root_size), root_size.div_ceil(1 << 20)
    )]
    SlotTooSmall {
        /// `[update] slot_size`.
        slot_size: u64,
        /// Bytes of the root file system.
        root_size: u64,
    },
    /// The ESP cannot hold systemd-boot and two UKIs ([`esp::check_esp`]).
    #[error(
        "`disk.esp_size` in the profile is {} ({esp_size} bytes), but the ESP must hold \
         systemd-boot ({}), loader.conf and two UKIs of {} plus {}% each (the booted one, \
         and the one an update writes beside it); set `disk.esp_size` to at least {} MiB",
        format_size(*esp_size), format_size(*systemd_boot), format_size(*uki),
        esp::UKI_GROWTH_PERCENT, needed.div_ceil(1 << 20)
    )]
    EspTooSmall {
        /// `disk.esp_size`.
        esp_size: u64,
        /// The smallest ESP (a whole number of MiB) that holds it all.
        needed: u64,
        /// Bytes of systemd-boot.
        systemd_boot: u64,
        /// Bytes of the UKI.
        uki: u64,
    },
}

/// Rounds a sector number up to the next partition alignment boundary.
fn align_lba(lba: u64) -> u64 {
    let step = PARTITION_ALIGNMENT / SECTOR_SIZE;
    lba.div_ceil(step) * step
}

fn sectors_for(bytes: u64) -> u64 {
    bytes.div_ceil(SECTOR_SIZE)
}

/// The slot size of a profile without `[update] slot_size`: the root with half
/// again as much room to grow, rounded up to [`SLOT_ROUNDING`].
pub fn default_slot_size(root_size: u64) -> u64 {
    (root_size.saturating_mul(3) / 2)
        .div_ceil(SLOT_ROUNDING)
        .max(1)
        .saturating_mul(SLOT_ROUNDING)
}

/// Bytes of the verity partition of a slot whose root partition is `slot_size`
/// bytes: the superblock and every level of the tree over a root filling the
/// whole slot, so any root an update writes there has room for its tree.
pub fn verity_size_for(slot_size: u64) -> u64 {
    verity::Geometry::new(slot_size.div_ceil(verity::BLOCK).max(1)).hash_bytes()
}

/// One partition as [`plan_disk`] lays them out.
struct Wanted {
    role: PartitionRole,
    slot: Option<Slot>,
    name: String,
    type_guid: Guid,
    bytes: u64,
    attributes: u64,
    /// Domain of the seeded unique GUID: the filled slot's name, so slot B's
    /// partitions, both named `_empty`, still get GUIDs of their own.
    guid_domain: String,
}

/// The ESP and both slots, in disk order.
fn wanted(input: &PlanInput, slot_size: u64) -> Vec<Wanted> {
    let arch = input.arch;
    let mut out = vec![Wanted {
        role: PartitionRole::Esp,
        slot: None,
        name: "esp".into(),
        type_guid: types::ESP,
        bytes: input.esp_size,
        attributes: 0,
        guid_domain: "esp".into(),
    }];
    let verity_size = verity_size_for(slot_size);
    for slot in Slot::ALL {
        // An empty slot must never be picked by a DPS auto-discovery (no-auto),
        // and nothing may mount it writable (read-only, like the filled one).
        let (attributes, filled) = match slot {
            Slot::A => (attr::READ_ONLY, true),
            Slot::B => (attr::READ_ONLY | attr::NO_AUTO, false),
        };
        for (role, type_guid, bytes) in [
            (PartitionRole::Root, arch.root_type_guid(), slot_size),
            (
                PartitionRole::RootVerity,
                arch.root_verity_type_guid(),
                verity_size,
            ),
        ] {
            let label = role.label(arch, slot);
            out.push(Wanted {
                role,
                slot: Some(slot),
                name: if filled {
                    label.clone()
                } else {
                    EMPTY_LABEL.to_string()
                },
                type_guid,
                bytes,
                attributes,
                guid_domain: label,
            });
        }
    }
    out
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
    if input.slot_size == Some(0) {
        return Err(PlanError::EmptyPartition {
            what: "`[update] slot_size` in the profile",
            fix: "set it to the largest root the image may be updated to, or remove it",
        });
    }
    // Partitions are whole MiB, so an explicit size is too.
    let slot_size = match input.slot_size {
        Some(s) => {
            let s = s.next_multiple_of(PARTITION_ALIGNMENT);
            if input.root_size > s {
                return Err(PlanError::SlotTooSmall {
                    slot_size: s,
                    root_size: input.root_size,
                });
            }
            s
        }
        None => default_slot_size(input.root_size),
    };

    let mut partitions = Vec::new();
    let mut next = FIRST_USABLE_LBA;
    for w in wanted(input, slot_size) {
        if w.name.encode_utf16().count() > NAME_MAX_UNITS {
            return Err(PlanError::NameTooLong(w.name));
        }
        // Ends are rounded up to the alignment too: the slack is under 1 MiB,
        // and whole-MiB partitions are what partitioning tools expect.
        let first_lba = align_lba(next);
        let last_lba = align_lba(first_lba + sectors_for(w.bytes)) - 1;
        next = last_lba + 1;
        partitions.push(PlannedPartition {
            role: w.role,
            name: w.name,
            type_guid: w.type_guid,
            unique_guid: Guid::derive(&input.seed, &format!("gpt-partition:{}", w.guid_domain)),
            first_lba,
            last_lba,
            attributes: w.attributes,
            slot: w.slot,
        });
    }

    let total_sectors = input.disk_size / SECTOR_SIZE;
    let needed_sectors = next + BACKUP_GPT_SECTORS;
    if needed_sectors > total_sectors {
        let breakdown = format!(
            "ESP {}, 2 root slots of {}, 2 verity partitions of {}, GPT and 1 MiB alignment",
            format_size(input.esp_size),
            format_size(slot_size),
            format_size(verity_size_for(slot_size)),
        );
        return Err(PlanError::DiskTooSmall {
            needed: needed_sectors * SECTOR_SIZE,
            given: input.disk_size,
            breakdown,
            var_min: input.var_min_size,
        });
    }

    Ok(DiskPlan {
        arch: input.arch,
        sector_size: SECTOR_SIZE,
        total_size: input.disk_size,
        disk_guid: Guid::derive(&input.seed, "gpt-disk"),
        first_usable_lba: FIRST_USABLE_LBA,
        last_usable_lba: total_sectors - BACKUP_GPT_SECTORS - 1,
        entry_count: GPT_ENTRY_COUNT,
        entry_size: GPT_ENTRY_SIZE,
        partitions,
        slot_size,
    })
}

#[cfg(test)]
mod tests;
