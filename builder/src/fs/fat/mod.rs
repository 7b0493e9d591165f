//! A deterministic FAT16/FAT32 writer for the EFI System Partition.
//!
//! [`build_fat`] formats a volume of a given size and stores a fixed list of
//! files in it, streaming the result into a [`RegionSink`](mkext4::RegionSink) (a partition
//! window of the disk image, or memory). Everything that usually varies
//! between two `mkfs.fat` runs comes in through [`FatOptions`]: volume label,
//! serial number and the one timestamp used for every entry. Directory
//! entries are sorted by name and clusters are handed out in a fixed order
//! (directories breadth-first, then files breadth-first), each file
//! contiguous, so the same input always gives the same bytes.
//!
//! FAT32 is preferred because UEFI asks for it on fixed disks; FAT16 is used
//! when the volume is too small for the 65,525 clusters FAT32 requires (below
//! about 33 MiB). Long names get VFAT long-name entries plus a generated 8.3
//! alias; names that already are upper-case 8.3 get a short entry only.
//!
//! One job per file: `geometry` plans the layout, `names` makes and checks
//! names, `tree` lays the files out as directories, `entries` encodes
//! directory entries, `sectors` the boot and FSInfo sectors, and `writer`
//! allocates clusters and streams the volume.

mod entries;
mod geometry;
mod names;
mod sectors;
mod tree;
mod writer;

use std::fmt;
use std::io;

pub use geometry::{fat_geometry, FatGeometry};
pub use writer::{build_fat, build_fat_vec};

/// Bytes per sector.
const SECTOR: u64 = 512;
/// Bytes per directory entry.
const DIR_ENTRY: usize = 32;
/// The sector of FAT32's FSInfo; its backup sits right after the backup
/// boot sector.
const FAT32_FSINFO_SECTOR: u16 = 1;
/// The sector of FAT32's backup boot sector.
const FAT32_BACKUP_BOOT_SECTOR: u16 = 6;
/// Media descriptor of a fixed disk.
const MEDIA_FIXED: u8 = 0xF8;

/// One file to put on the ESP.
#[derive(Debug, Clone, Copy)]
pub struct EspFile<'a> {
    /// `/`-separated path inside the volume, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: &'a str,
    /// The file's bytes.
    pub data: &'a [u8],
}

impl<'a> EspFile<'a> {
    /// A file at `path` with content `data`.
    pub fn new(path: &'a str, data: &'a [u8]) -> EspFile<'a> {
        EspFile { path, data }
    }
}

/// The FAT variant of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FatType {
    /// 16-bit FAT: up to 65,524 clusters.
    Fat16,
    /// 32-bit FAT: at least 65,525 clusters.
    Fat32,
}

impl fmt::Display for FatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

/// Everything about a FAT volume that is not its size or its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// Volume label: up to 11 characters of upper-case letters, digits,
    /// spaces and `!#$%&'()-@^_`{}~`; empty for none.
    pub label: String,
    /// Volume serial number (derive it from the build inputs).
    pub serial: u32,
    /// Seconds since the Unix epoch (UTC) for every timestamp; clamped to
    /// FAT's 1980-01-01..2107-12-31 range.
    pub timestamp: i64,
    /// Force a FAT type; `None` picks FAT32 when the size allows, else FAT16.
    pub fat_type: Option<FatType>,
    /// The partition's first LBA, recorded in the boot sector for legacy
    /// boot code; UEFI and Linux ignore it.
    pub hidden_sectors: u32,
}

impl FatOptions {
    /// Options with a label, serial and timestamp; FAT type chosen by size.
    pub fn new(label: impl Into<String>, serial: u32, timestamp: i64) -> FatOptions {
        FatOptions {
            label: label.into(),
            serial,
            timestamp,
            fat_type: None,
            hidden_sectors: 0,
        }
    }
}

/// What [`build_fat`] made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatSummary {
    /// The volume's geometry.
    pub geometry: FatGeometry,
    /// Clusters holding files and directories.
    pub used_clusters: u32,
}

/// Why an ESP could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    /// The files do not fit the volume.
    #[error(
        "the ESP content does not fit: `{file}` does not fit in the {size}-byte ESP \
         ({fat_type}, {capacity} bytes of {cluster_size}-byte clusters); the files total \
         {content} bytes; raise `disk.esp_size` in the profile"
    )]
    ContentTooLarge {
        /// The first file (or directory) that found no room.
        file: String,
        /// Bytes of all files together.
        content: u64,
        /// The partition size.
        size: u64,
        /// Bytes the volume's clusters hold.
        capacity: u64,
        /// Cluster size in bytes.
        cluster_size: u64,
        /// FAT type of the volume.
        fat_type: FatType,
    },
    /// No FAT layout fits the size.
    #[error("an ESP of {size} bytes cannot hold a {what} file system: {why}; set `disk.esp_size` in the profile to {fix}")]
    BadSize {
        /// The partition size.
        size: u64,
        /// "FAT" or the forced type.
        what: String,
        /// Why.
        why: String,
        /// A size that works.
        fix: &'static str,
    },
    /// A file path cannot be stored on FAT.
    #[error("ESP file path {path:?}: {why}")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// The volume label cannot be stored on FAT.
    #[error("ESP volume label {label:?}: {why}")]
    BadLabel {
        /// The label as given.
        label: String,
        /// What is wrong with it.
        why: String,
    },
    /// The fixed FAT16 root directory has no room for all entries.
    #[error(
        "the ESP root directory needs {needed} entries but FAT16 has room for {max}; put \
         the files in subdirectories or use a larger `disk.esp_size` (FAT32 from 33MiB)"
    )]
    RootDirFull {
        /// Entries needed (long-name entries included).
        needed: usize,
        /// Entries available.
        max: u32,
    },
    /// The sink failed.
    #[error("writing the ESP file system: {0}")]
    Write(#[source] io::Error),
}

#[cfg(test)]
mod tests;
