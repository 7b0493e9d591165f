//! The layout of a volume: FAT type, cluster size, reserved area and FAT
//! size for a given byte size.

use super::{FatError, FatType, DIR_ENTRY, SECTOR};

/// Root directory entries of a FAT16 volume (16 KiB, the common default).
const FAT16_ROOT_ENTRIES: u32 = 512;
/// Reserved sectors of a FAT32 volume: boot sector, FSInfo, their backups.
const FAT32_RESERVED: u32 = 32;
/// Cluster counts that decide the FAT type (Microsoft's FAT specification).
const FAT16_MIN_CLUSTERS: u32 = 4085;
pub(super) const FAT32_MIN_CLUSTERS: u32 = 65525;
const FAT32_MAX_CLUSTERS: u32 = 0x0FFF_FFF4;
/// Distance kept from the type-deciding cluster counts, because some drivers
/// count clusters slightly differently and would pick the other FAT type.
pub(super) const CLUSTER_MARGIN: u32 = 16;

/// The on-disk geometry of a FAT volume (all counts in 512-byte sectors
/// unless named otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatGeometry {
    /// FAT16 or FAT32.
    pub fat_type: FatType,
    /// Sectors in the volume.
    pub total_sectors: u32,
    /// Sectors per cluster.
    pub sectors_per_cluster: u32,
    /// Sectors before the first FAT (boot sector and friends).
    pub reserved_sectors: u32,
    /// Sectors per FAT copy (there are two).
    pub fat_sectors: u32,
    /// Entries of the fixed FAT16 root directory (0 on FAT32).
    pub root_entries: u32,
    /// Data clusters (numbered from 2).
    pub clusters: u32,
}

impl FatGeometry {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        self.sectors_per_cluster as u64 * SECTOR
    }

    fn root_dir_sectors(&self) -> u32 {
        self.root_entries * DIR_ENTRY as u32 / SECTOR as u32
    }

    /// First sector of the data area (cluster 2).
    pub fn data_start_sector(&self) -> u32 {
        self.reserved_sectors + 2 * self.fat_sectors + self.root_dir_sectors()
    }

    /// Bytes all clusters together hold.
    pub fn data_capacity(&self) -> u64 {
        self.clusters as u64 * self.cluster_size()
    }

    /// Byte offset of FAT copy `copy` (0 or 1).
    pub(super) fn fat_offset(&self, copy: u32) -> u64 {
        (self.reserved_sectors + copy * self.fat_sectors) as u64 * SECTOR
    }

    /// Byte offset of data cluster `cluster` (from 2).
    pub(super) fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start_sector() as u64 * SECTOR + (cluster as u64 - 2) * self.cluster_size()
    }
}

fn geometry_for(fat_type: FatType, total: u32, spc: u32) -> Option<FatGeometry> {
    let (entry_bytes, base_reserved, root_entries) = match fat_type {
        FatType::Fat16 => (2u64, 1u32, FAT16_ROOT_ENTRIES),
        FatType::Fat32 => (4u64, FAT32_RESERVED, 0),
    };
    let root_sectors = root_entries * DIR_ENTRY as u32 / SECTOR as u32;
    let mut fat_sectors: u32 = 1;
    loop {
        // Pad the reserved area so clusters start on a cluster boundary,
        // which keeps cluster I/O aligned on flash and 4K-sector disks.
        let meta = base_reserved + 2 * fat_sectors + root_sectors;
        let reserved = base_reserved + (spc - meta % spc) % spc;
        let data_start = reserved + 2 * fat_sectors + root_sectors;
        if data_start >= total {
            return None;
        }
        let clusters = (total - data_start) / spc;
        let needed = ((clusters as u64 + 2) * entry_bytes).div_ceil(SECTOR);
        if needed <= fat_sectors as u64 {
            return Some(FatGeometry {
                fat_type,
                total_sectors: total,
                sectors_per_cluster: spc,
                reserved_sectors: reserved,
                fat_sectors,
                root_entries,
                clusters,
            });
        }
        fat_sectors = u32::try_from(needed).ok()?;
    }
}

fn valid_count(fat_type: FatType, clusters: u32) -> bool {
    match fat_type {
        FatType::Fat16 => (FAT16_MIN_CLUSTERS + CLUSTER_MARGIN
            ..=FAT32_MIN_CLUSTERS - 1 - CLUSTER_MARGIN)
            .contains(&clusters),
        FatType::Fat32 => {
            (FAT32_MIN_CLUSTERS + CLUSTER_MARGIN..=FAT32_MAX_CLUSTERS).contains(&clusters)
        }
    }
}

fn try_type(fat_type: FatType, total: u32) -> Option<FatGeometry> {
    let size = total as u64 * SECTOR;
    match fat_type {
        // Largest cluster (capped like Microsoft's format tables) that still
        // leaves FAT32 enough clusters: fewer FAT entries to follow.
        FatType::Fat32 => {
            let cap = match size {
                s if s <= 8 << 30 => 8,
                s if s <= 16 << 30 => 16,
                s if s <= 32 << 30 => 32,
                _ => 64,
            };
            [64u32, 32, 16, 8, 4, 2, 1]
                .into_iter()
                .filter(|&spc| spc <= cap)
                .filter_map(|spc| geometry_for(fat_type, total, spc))
                .find(|g| valid_count(fat_type, g.clusters))
        }
        // Smallest cluster that keeps the count in FAT16's range; clusters
        // above 32 KiB are not read by every driver.
        FatType::Fat16 => [1u32, 2, 4, 8, 16, 32, 64]
            .into_iter()
            .filter_map(|spc| geometry_for(fat_type, total, spc))
            .find(|g| valid_count(fat_type, g.clusters)),
    }
}

/// Chooses the geometry of a volume of `size` bytes: the forced type, or
/// FAT32 when it fits and FAT16 otherwise.
pub fn fat_geometry(size: u64, fat_type: Option<FatType>) -> Result<FatGeometry, FatError> {
    let what = fat_type.map_or("FAT".to_string(), |t| t.to_string());
    let bad = |why: String, fix| FatError::BadSize {
        size,
        what: what.clone(),
        why,
        fix,
    };
    if size % SECTOR != 0 {
        return Err(bad(
            "it is not a whole number of 512-byte sectors".into(),
            "a MiB multiple",
        ));
    }
    let total = u32::try_from(size / SECTOR)
        .map_err(|_| bad("FAT32 volumes end at 2 TiB".into(), "at most 1GiB"))?;
    let found = match fat_type {
        Some(t) => try_type(t, total),
        None => try_type(FatType::Fat32, total).or_else(|| try_type(FatType::Fat16, total)),
    };
    found.ok_or_else(|| match fat_type {
        Some(FatType::Fat32) => bad(
            format!("FAT32 needs more than {FAT32_MIN_CLUSTERS} clusters"),
            "at least 33MiB",
        ),
        Some(FatType::Fat16) if size > 1 << 30 => bad(
            "FAT16 cannot address it with 32 KiB clusters".into(),
            "at most 1GiB",
        ),
        _ => bad(
            format!("it needs more than {FAT16_MIN_CLUSTERS} clusters"),
            "at least 33MiB",
        ),
    })
}
