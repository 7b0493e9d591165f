//! Reading a volume's label straight from its bytes, for the filesystems a NoCloud
//! `cidata` volume may use: FAT (12/16/32) and ISO 9660.
//!
//! The node has no blkid, and mounting every device just to look at its label would be
//! slow and noisy, so the superblocks are read directly:
//! - FAT: the BIOS parameter block's volume label (offset 0x2B for FAT12/16, 0x47 for
//!   FAT32, present when the extended boot signature is 0x29), and the volume-label entry
//!   of the root directory (what Windows changes when a user relabels the stick).
//! - ISO 9660 (ECMA-119 §8.4): the primary volume descriptor at byte 32768, volume
//!   identifier at +40, 32 bytes padded with spaces.

use std::io;

use kiln_contract::le::{u16_at, u32_at};

/// A filesystem the cidata channel can mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// FAT12/16/32.
    Vfat,
    /// ISO 9660 (CD-ROM images).
    Iso9660,
}

impl FsKind {
    /// The kernel's name for the filesystem type, for mount(2).
    pub fn fstype(self) -> &'static str {
        match self {
            FsKind::Vfat => "vfat",
            FsKind::Iso9660 => "iso9660",
        }
    }
}

/// What was found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The filesystem.
    pub kind: FsKind,
    /// Its labels, trimmed (FAT can carry two that disagree; ISO 9660 has one).
    pub labels: Vec<String>,
}

impl Volume {
    /// True when a label is `cidata` in any case (NoCloud accepts `cidata` and `CIDATA`).
    pub fn is_cidata(&self) -> bool {
        self.labels.iter().any(|l| l.eq_ignore_ascii_case("cidata"))
    }
}

/// Reads `len` bytes at `offset` of the device.
pub type ReadAt<'a> = dyn FnMut(u64, usize) -> io::Result<Vec<u8>> + 'a;

/// Byte offset of the ISO 9660 primary volume descriptor (sector 16 of 2048 bytes).
pub const ISO_PVD_OFFSET: u64 = 16 * 2048;

/// Largest root directory region read when looking for a FAT volume-label entry.
const MAX_ROOT_DIR_READ: usize = 64 * 1024;

fn label_text(raw: &[u8]) -> Option<String> {
    let text: String = raw.iter().map(|&b| char::from(b)).collect();
    let text = text.trim_end_matches([' ', '\0']).to_string();
    // mkfs.fat writes "NO NAME" for an unlabelled volume.
    (!text.is_empty() && text != "NO NAME").then_some(text)
}

/// Probes the device: FAT first (one sector), then ISO 9660. None: neither.
pub fn probe(read: &mut ReadAt<'_>) -> Option<Volume> {
    if let Ok(boot) = read(0, 512) {
        if let Some(v) = probe_fat(&boot, read) {
            return Some(v);
        }
    }
    let pvd = read(ISO_PVD_OFFSET, 2048).ok()?;
    probe_iso(&pvd)
}

/// Reads a primary volume descriptor.
pub fn probe_iso(pvd: &[u8]) -> Option<Volume> {
    if pvd.len() < 72 || pvd[0] != 1 || &pvd[1..6] != b"CD001" || pvd[6] != 1 {
        return None;
    }
    Some(Volume {
        kind: FsKind::Iso9660,
        labels: label_text(&pvd[40..72]).into_iter().collect(),
    })
}

/// Reads a FAT boot sector and, through `read`, the root directory's label entry.
pub fn probe_fat(boot: &[u8], read: &mut ReadAt<'_>) -> Option<Volume> {
    if boot.len() < 512 || !matches!(boot[0], 0xEB | 0xE9) {
        return None;
    }
    let bytes_per_sector = u64::from(u16_at(boot, 0x0B));
    let per_cluster = u64::from(boot[0x0D]);
    let reserved = u64::from(u16_at(boot, 0x0E));
    let fats = u64::from(boot[0x10]);
    let root_entries = u64::from(u16_at(boot, 0x11));
    let fat16_size = u64::from(u16_at(boot, 0x16));
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        || !per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
    {
        return None;
    }
    let fat32 = fat16_size == 0;
    let (sig_at, label_at, fat_size) = if fat32 {
        (0x42, 0x47, u64::from(u32_at(boot, 0x24)))
    } else {
        (0x26, 0x2B, fat16_size)
    };
    if fat_size == 0 {
        return None;
    }
    let mut labels = Vec::new();
    if boot[sig_at] == 0x29 {
        labels.extend(label_text(&boot[label_at..label_at + 11]));
    }
    let fat_end = (reserved + fats * fat_size) * bytes_per_sector;
    let (root_at, root_len) = if fat32 {
        let cluster = u64::from(u32_at(boot, 0x2C));
        let cluster_bytes = per_cluster * bytes_per_sector;
        (
            fat_end + cluster.saturating_sub(2) * cluster_bytes,
            cluster_bytes,
        )
    } else {
        (fat_end, root_entries * 32)
    };
    let root_len = (root_len as usize).min(MAX_ROOT_DIR_READ);
    if let Ok(dir) = read(root_at, root_len) {
        if let Some(l) = root_dir_label(&dir) {
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
    }
    Some(Volume {
        kind: FsKind::Vfat,
        labels,
    })
}

/// The volume-label entry of a FAT directory: attribute 0x08 without the long-name bits.
pub fn root_dir_label(dir: &[u8]) -> Option<String> {
    for entry in dir.chunks_exact(32) {
        match entry[0] {
            0x00 => return None,
            0xE5 => continue,
            _ => {}
        }
        let attr = entry[11];
        if attr & 0x08 != 0 && attr & 0x0F != 0x0F {
            return label_text(&entry[..11]);
        }
    }
    None
}
