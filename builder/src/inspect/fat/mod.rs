//! A small read-only FAT12/16/32 reader, enough to list an ESP and read the
//! UKI back out of it: the BIOS parameter block, cluster chains, 8.3 and
//! VFAT long names, subdirectories.
//!
//! It is written against the on-disk format, not against kiln's writer
//! ([`crate::fs::fat`]), so it reads volumes made by `mkfs.fat` and mtools
//! too; the tests check it on both. Every count read from the volume is
//! bounded by the volume's size before it is used, so a corrupt volume gives
//! an error, never a huge allocation or an endless loop.

use std::io;

use kiln_contract::le::{u16_at, u32_at};
use serde::Serialize;

const DIR_ENTRY: usize = 32;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_LONG_NAME_MASK: u8 = 0x3F;
/// Deleted entry marker.
const DELETED: u8 = 0xE5;
/// Directories deeper than this are treated as corruption (a loop).
const MAX_DEPTH: usize = 32;
/// More entries than this in one walk are treated as corruption.
const MAX_ENTRIES: usize = 100_000;

/// Random access to the bytes of a volume (a partition of a disk image, or
/// memory in tests).
pub trait Medium {
    /// Bytes the volume holds.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Medium for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Why a FAT volume could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FatReadError {
    /// Reading the medium failed.
    #[error("reading {len} bytes at byte {offset} of the volume: {source}")]
    Io {
        /// Offset in the volume.
        offset: u64,
        /// Bytes wanted.
        len: usize,
        /// The I/O error.
        source: io::Error,
    },
    /// The boot sector is not a FAT boot sector.
    #[error("not a FAT volume: {0}")]
    NotFat(String),
    /// The structures contradict each other.
    #[error("corrupt FAT volume: {0}")]
    Corrupt(String),
    /// No file or folder at that path.
    #[error("no `{0}` on the FAT volume")]
    NotFound(String),
}

/// The FAT variant, decided by the cluster count as the specification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FatKind {
    /// Fewer than 4085 clusters.
    #[serde(rename = "FAT12")]
    Fat12,
    /// Fewer than 65525 clusters.
    #[serde(rename = "FAT16")]
    Fat16,
    /// 65525 clusters or more.
    #[serde(rename = "FAT32")]
    Fat32,
}

impl std::fmt::Display for FatKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FatKind::Fat12 => "FAT12",
            FatKind::Fat16 => "FAT16",
            FatKind::Fat32 => "FAT32",
        })
    }
}

/// One file or folder found on a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FatEntry {
    /// `/`-separated path from the root, no leading slash (long names where
    /// the volume has them).
    pub path: String,
    /// The 8.3 name as stored (`BOOTX64.EFI`).
    pub short_name: String,
    /// Whether this is a folder.
    pub is_dir: bool,
    /// File size in bytes (0 for folders).
    pub size: u64,
    /// First cluster (0 for an empty file).
    #[serde(skip)]
    first_cluster: u32,
}

/// Where a directory's entries live.
#[derive(Debug, Clone, Copy)]
enum DirLoc {
    /// The fixed root directory area of FAT12/16.
    FixedRoot,
    /// A cluster chain.
    Chain(u32),
}

/// An opened FAT volume: its geometry and its first FAT.
#[derive(Debug, Clone)]
pub struct FatVolume {
    /// FAT12, FAT16 or FAT32.
    pub kind: FatKind,
    /// Bytes per sector.
    pub bytes_per_sector: u32,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Data clusters (numbered from 2).
    pub clusters: u32,
    /// Bytes the volume says it covers.
    pub volume_size: u64,
    /// Volume serial number (from the extended boot sector, if present).
    pub serial: Option<u32>,
    /// Volume label: the root directory's label entry, else the boot sector's.
    pub label: Option<String>,
    root_dir_offset: u64,
    root_entries: u32,
    data_offset: u64,
    root_cluster: u32,
    fat: Vec<u8>,
}

fn read(m: &(impl Medium + ?Sized), offset: u64, len: usize) -> Result<Vec<u8>, FatReadError> {
    let mut buf = vec![0u8; len];
    m.read_at(offset, &mut buf)
        .map_err(|source| FatReadError::Io {
            offset,
            len,
            source,
        })?;
    Ok(buf)
}

/// A label or name field: trailing spaces and NULs cut, bytes above ASCII
/// shown as Latin-1 (the OEM code page is unknown, and these are rare on an ESP).
fn field_text(b: &[u8]) -> String {
    let s: String = b.iter().map(|&c| c as char).collect();
    s.trim_end_matches([' ', '\0']).to_string()
}

/// The checksum of an 8.3 name that ties long-name entries to it.
fn lfn_checksum(short: &[u8]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &c| sum.rotate_right(1).wrapping_add(c))
}

/// The 8.3 name as a display string, honouring the lower-case flags Windows
/// NT sets in byte 12 for names like `readme.txt`.
fn short_name(e: &[u8]) -> String {
    let mut base = e[0..8].to_vec();
    if base[0] == 0x05 {
        base[0] = DELETED;
    }
    let mut base = field_text(&base);
    let mut ext = field_text(&e[8..11]);
    if e[12] & 0x08 != 0 {
        base = base.to_ascii_lowercase();
    }
    if e[12] & 0x10 != 0 {
        ext = ext.to_ascii_lowercase();
    }
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

impl FatVolume {
    /// Reads the boot sector and the first FAT of the volume on `m`.
    pub fn open(m: &(impl Medium + ?Sized)) -> Result<FatVolume, FatReadError> {
        let not_fat = |s: String| FatReadError::NotFat(s);
        if m.size() < 512 {
            return Err(not_fat(format!(
                "the volume is {} bytes, smaller than a boot sector",
                m.size()
            )));
        }
        let bs = read(m, 0, 512)?;
        if bs[510..512] != [0x55, 0xAA] {
            return Err(not_fat("the boot sector has no 55 AA signature".into()));
        }
        if !matches!(bs[0], 0xEB | 0xE9) {
            return Err(not_fat(format!(
                "the boot sector starts with {:#04x}, not a jump instruction",
                bs[0]
            )));
        }
        let bps = u32::from(u16_at(&bs, 11));
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(not_fat(format!("{bps} bytes per sector")));
        }
        let spc = u32::from(bs[13]);
        if spc == 0 || !spc.is_power_of_two() {
            return Err(not_fat(format!("{spc} sectors per cluster")));
        }
        let reserved = u32::from(u16_at(&bs, 14));
        let fats = u32::from(bs[16]);
        let root_entries = u32::from(u16_at(&bs, 17));
        let total = match u16_at(&bs, 19) {
            0 => u32_at(&bs, 32),
            n => u32::from(n),
        };
        let fat_sectors = match u16_at(&bs, 22) {
            0 => u32_at(&bs, 36),
            n => u32::from(n),
        };
        if reserved == 0 || fats == 0 || total == 0 || fat_sectors == 0 {
            return Err(not_fat(format!(
                "reserved sectors {reserved}, FATs {fats}, total sectors {total}, \
                 sectors per FAT {fat_sectors}: none may be 0"
            )));
        }
        let corrupt = |s: String| FatReadError::Corrupt(s);
        let volume_size = u64::from(total) * u64::from(bps);
        if volume_size > m.size() {
            return Err(corrupt(format!(
                "the boot sector says the volume is {volume_size} bytes, but its partition \
                 holds only {} bytes",
                m.size()
            )));
        }
        let root_dir_sectors = (root_entries * DIR_ENTRY as u32).div_ceil(bps);
        let data_start = u64::from(reserved)
            + u64::from(fats) * u64::from(fat_sectors)
            + u64::from(root_dir_sectors);
        if data_start >= u64::from(total) {
            return Err(corrupt(format!(
                "the data area would start at sector {data_start}, past the volume's {total} sectors"
            )));
        }
        let clusters = ((u64::from(total) - data_start) / u64::from(spc)) as u32;
        let kind = if clusters < 4085 {
            FatKind::Fat12
        } else if clusters < 65525 {
            FatKind::Fat16
        } else {
            FatKind::Fat32
        };
        if kind == FatKind::Fat32 && root_entries != 0 {
            return Err(corrupt(format!(
                "{clusters} clusters make it FAT32, but it has a fixed root directory of \
                 {root_entries} entries"
            )));
        }
        if kind != FatKind::Fat32 && root_entries == 0 {
            return Err(corrupt(format!(
                "{clusters} clusters make it {kind}, but it has no root directory entries"
            )));
        }
        // Only the entries of real clusters are read: the FAT may be longer.
        let fat_bytes = match kind {
            FatKind::Fat12 => ((clusters as usize + 2) * 3).div_ceil(2),
            FatKind::Fat16 => (clusters as usize + 2) * 2,
            FatKind::Fat32 => (clusters as usize + 2) * 4,
        };
        if fat_bytes as u64 > u64::from(fat_sectors) * u64::from(bps) {
            return Err(corrupt(format!(
                "a FAT of {fat_sectors} sectors cannot hold {clusters} clusters"
            )));
        }
        let fat = read(m, u64::from(reserved) * u64::from(bps), fat_bytes)?;
        let (ext_at, root_cluster) = match kind {
            FatKind::Fat32 => (64, u32_at(&bs, 44)),
            _ => (36, 0),
        };
        let (serial, boot_label) = if bs[ext_at + 2] == 0x29 {
            (
                Some(u32_at(&bs, ext_at + 3)),
                Some(field_text(&bs[ext_at + 7..ext_at + 18])).filter(|l| l != "NO NAME"),
            )
        } else {
            (None, None)
        };
        let mut vol = FatVolume {
            kind,
            bytes_per_sector: bps,
            cluster_size: spc * bps,
            clusters,
            volume_size,
            serial,
            label: boot_label,
            root_dir_offset: (u64::from(reserved) + u64::from(fats) * u64::from(fat_sectors))
                * u64::from(bps),
            root_entries,
            data_offset: data_start * u64::from(bps),
            root_cluster,
            fat,
        };
        if kind == FatKind::Fat32 && !vol.is_data_cluster(root_cluster) {
            return Err(corrupt(format!(
                "the root directory cluster {root_cluster} is not a data cluster (2..={})",
                clusters + 1
            )));
        }
        let root = vol.read_dir_raw(m, vol.root())?;
        if let Some(label) = root
            .chunks_exact(DIR_ENTRY)
            .take_while(|e| e[0] != 0)
            .find(|e| e[0] != DELETED && e[11] & ATTR_LONG_NAME_MASK == ATTR_VOLUME_ID)
        {
            vol.label = Some(field_text(&label[0..11]));
        }
        Ok(vol)
    }

    fn root(&self) -> DirLoc {
        match self.kind {
            FatKind::Fat32 => DirLoc::Chain(self.root_cluster),
            _ => DirLoc::FixedRoot,
        }
    }

    fn is_data_cluster(&self, c: u32) -> bool {
        (2..self.clusters + 2).contains(&c)
    }

    /// The FAT entry of cluster `c`: `Ok(Some(next))`, `Ok(None)` at the end
    /// of a chain, an error for free, bad or out-of-range links.
    fn next(&self, c: u32) -> Result<Option<u32>, FatReadError> {
        let (v, eoc, bad) = match self.kind {
            FatKind::Fat12 => {
                let at = c as usize + c as usize / 2;
                let w = u16_at(&self.fat, at);
                let v = if c & 1 == 1 { w >> 4 } else { w & 0x0FFF };
                (u32::from(v), 0xFF8, 0xFF7)
            }
            FatKind::Fat16 => (u32::from(u16_at(&self.fat, 2 * c as usize)), 0xFFF8, 0xFFF7),
            FatKind::Fat32 => (
                u32_at(&self.fat, 4 * c as usize) & 0x0FFF_FFFF,
                0x0FFF_FFF8,
                0x0FFF_FFF7,
            ),
        };
        if v >= eoc {
            Ok(None)
        } else if v == bad {
            Err(FatReadError::Corrupt(format!(
                "cluster {c} of a chain is marked bad"
            )))
        } else if self.is_data_cluster(v) {
            Ok(Some(v))
        } else {
            Err(FatReadError::Corrupt(format!(
                "cluster {c} links to {v:#x}, which is not a data cluster (2..={})",
                self.clusters + 1
            )))
        }
    }

    /// The clusters of the chain starting at `first`, in order.
    fn chain(&self, first: u32) -> Result<Vec<u32>, FatReadError> {
        if !self.is_data_cluster(first) {
            return Err(FatReadError::Corrupt(format!(
                "a chain starts at cluster {first}, which is not a data cluster (2..={})",
                self.clusters + 1
            )));
        }
        let mut out = vec![first];
        let mut c = first;
        while let Some(n) = self.next(c)? {
            if out.len() >= self.clusters as usize {
                return Err(FatReadError::Corrupt(format!(
                    "the chain starting at cluster {first} is longer than the volume: it loops"
                )));
            }
            out.push(n);
            c = n;
        }
        Ok(out)
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + u64::from(c - 2) * u64::from(self.cluster_size)
    }

    /// Reads `len` bytes of the chain at `first` (all of it for `None`).
    fn read_chain(
        &self,
        m: &(impl Medium + ?Sized),
        first: u32,
        len: Option<u64>,
    ) -> Result<Vec<u8>, FatReadError> {
        let chain = self.chain(first)?;
        let capacity = chain.len() as u64 * u64::from(self.cluster_size);
        let len = len.unwrap_or(capacity);
        if len > capacity {
            return Err(FatReadError::Corrupt(format!(
                "a {len}-byte file has only {} clusters ({capacity} bytes) in its chain",
                chain.len()
            )));
        }
        let mut out = Vec::with_capacity(len as usize);
        // Runs of consecutive clusters are read in one go (kiln writes each
        // file contiguously, so a UKI is one read).
        let mut i = 0;
        while (out.len() as u64) < len {
            let mut j = i + 1;
            while j < chain.len() && chain[j] == chain[j - 1] + 1 {
                j += 1;
            }
            let run = (j - i) as u64 * u64::from(self.cluster_size);
            let want = run.min(len - out.len() as u64) as usize;
            out.extend_from_slice(&read(m, self.cluster_offset(chain[i]), want)?);
            i = j;
        }
        Ok(out)
    }

    fn read_dir_raw(
        &self,
        m: &(impl Medium + ?Sized),
        loc: DirLoc,
    ) -> Result<Vec<u8>, FatReadError> {
        match loc {
            DirLoc::FixedRoot => read(
                m,
                self.root_dir_offset,
                self.root_entries as usize * DIR_ENTRY,
            ),
            DirLoc::Chain(c) => self.read_chain(m, c, None),
        }
    }

    /// The entries of one directory, `.` and `..`, deleted entries and the
    /// volume label left out.
    fn read_dir(
        &self,
        m: &(impl Medium + ?Sized),
        loc: DirLoc,
        prefix: &str,
    ) -> Result<Vec<FatEntry>, FatReadError> {
        let raw = self.read_dir_raw(m, loc)?;
        let mut out = Vec::new();
        // Long-name pieces seen since the last short entry: (checksum, units by order).
        let mut lfn: Option<(u8, Vec<Option<[u16; 13]>>)> = None;
        for e in raw.chunks_exact(DIR_ENTRY) {
            if e[0] == 0 {
                break;
            }
            if e[0] == DELETED {
                lfn = None;
                continue;
            }
            let attr = e[11];
            if attr & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME {
                let order = usize::from(e[0] & 0x1F);
                if order == 0 {
                    lfn = None;
                    continue;
                }
                let mut units = [0u16; 13];
                for (k, at) in (1..11)
                    .step_by(2)
                    .chain((14..26).step_by(2))
                    .chain((28..32).step_by(2))
                    .enumerate()
                {
                    units[k] = u16_at(e, at);
                }
                if e[0] & 0x40 != 0 {
                    lfn = Some((e[13], vec![None; order]));
                }
                match &mut lfn {
                    Some((sum, parts)) if *sum == e[13] && order <= parts.len() => {
                        parts[order - 1] = Some(units);
                    }
                    _ => lfn = None,
                }
                continue;
            }
            let pieces = lfn.take();
            if attr & ATTR_VOLUME_ID != 0 {
                continue;
            }
            let short = short_name(e);
            if short == "." || short == ".." {
                continue;
            }
            let long = pieces.and_then(|(sum, parts)| {
                if sum != lfn_checksum(&e[0..11]) {
                    return None;
                }
                let mut units = Vec::new();
                for p in parts {
                    units.extend_from_slice(&p?);
                }
                let end = units
                    .iter()
                    .position(|&u| u == 0 || u == 0xFFFF)
                    .unwrap_or(units.len());
                String::from_utf16(&units[..end]).ok()
            });
            let name = long.unwrap_or_else(|| short.clone());
            let is_dir = attr & ATTR_DIRECTORY != 0;
            let first_cluster = match self.kind {
                FatKind::Fat32 => u32::from(u16_at(e, 20)) << 16 | u32::from(u16_at(e, 26)),
                _ => u32::from(u16_at(e, 26)),
            };
            out.push(FatEntry {
                path: if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                },
                short_name: short,
                is_dir,
                size: if is_dir { 0 } else { u64::from(u32_at(e, 28)) },
                first_cluster,
            });
        }
        Ok(out)
    }

    /// Every file and folder on the volume, depth first, in directory order.
    pub fn walk(&self, m: &(impl Medium + ?Sized)) -> Result<Vec<FatEntry>, FatReadError> {
        let mut out = Vec::new();
        self.walk_into(m, self.root(), "", 0, &mut out)?;
        Ok(out)
    }

    fn walk_into(
        &self,
        m: &(impl Medium + ?Sized),
        loc: DirLoc,
        prefix: &str,
        depth: usize,
        out: &mut Vec<FatEntry>,
    ) -> Result<(), FatReadError> {
        if depth > MAX_DEPTH {
            return Err(FatReadError::Corrupt(format!(
                "folders nest deeper than {MAX_DEPTH} levels at `{prefix}`: a directory loop"
            )));
        }
        for e in self.read_dir(m, loc, prefix)? {
            if out.len() >= MAX_ENTRIES {
                return Err(FatReadError::Corrupt(format!(
                    "more than {MAX_ENTRIES} entries: a directory loop?"
                )));
            }
            let sub = (e.is_dir && e.first_cluster != 0).then(|| (e.first_cluster, e.path.clone()));
            out.push(e);
            if let Some((c, path)) = sub {
                self.walk_into(m, DirLoc::Chain(c), &path, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// Finds the entry at `path` (`/`-separated; each component matches its
    /// long or 8.3 name, case-insensitively, as FAT does).
    pub fn find(&self, m: &(impl Medium + ?Sized), path: &str) -> Result<FatEntry, FatReadError> {
        let mut loc = self.root();
        let mut prefix = String::new();
        let mut found: Option<FatEntry> = None;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if let Some(f) = &found {
                if !f.is_dir || f.first_cluster == 0 {
                    return Err(FatReadError::NotFound(path.to_string()));
                }
                loc = DirLoc::Chain(f.first_cluster);
                prefix = f.path.clone();
            }
            let entries = self.read_dir(m, loc, &prefix)?;
            let e = entries
                .into_iter()
                .find(|e| {
                    let name = e.path.rsplit('/').next().unwrap_or(&e.path);
                    name.eq_ignore_ascii_case(part) || e.short_name.eq_ignore_ascii_case(part)
                })
                .ok_or_else(|| FatReadError::NotFound(path.to_string()))?;
            found = Some(e);
        }
        found.ok_or_else(|| FatReadError::NotFound(path.to_string()))
    }

    /// The bytes of a file entry.
    pub fn read_entry(
        &self,
        m: &(impl Medium + ?Sized),
        e: &FatEntry,
    ) -> Result<Vec<u8>, FatReadError> {
        if e.is_dir {
            return Err(FatReadError::NotFound(format!(
                "{} (a folder, not a file)",
                e.path
            )));
        }
        if e.size == 0 {
            return Ok(Vec::new());
        }
        self.read_chain(m, e.first_cluster, Some(e.size))
    }

    /// The bytes of the file at `path`.
    pub fn read_file(
        &self,
        m: &(impl Medium + ?Sized),
        path: &str,
    ) -> Result<Vec<u8>, FatReadError> {
        let e = self.find(m, path)?;
        self.read_entry(m, &e)
    }
}

#[cfg(test)]
mod tests;
