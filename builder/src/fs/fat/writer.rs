//! Writing a volume: clusters handed out in a fixed order, the allocation
//! table, and every region streamed to the sink in ascending order.

use std::io;

use kiln_contract::le::{put_u16, put_u32};
use mkext4::RegionSink;

use super::entries::{encode_dir, fat_datetime, Stamp};
use super::geometry::fat_geometry;
use super::names::check_label;
use super::sectors::{boot_sector, fsinfo_sector};
use super::tree::{bfs_order, build_tree, dir_path, Node};
use super::{
    EspFile, FatError, FatOptions, FatSummary, FatType, DIR_ENTRY, FAT32_BACKUP_BOOT_SECTOR,
    FAT32_FSINFO_SECTOR, MEDIA_FIXED, SECTOR,
};

/// Forwards regions to a sink in ascending order and fills every gap with a
/// zero region, so each byte of the volume is emitted exactly once.
struct Emitter<'s, S: RegionSink + ?Sized> {
    sink: &'s mut S,
    pos: u64,
}

impl<S: RegionSink + ?Sized> Emitter<'_, S> {
    fn zeros_to(&mut self, offset: u64) -> Result<(), FatError> {
        if offset > self.pos {
            self.sink
                .zeros(self.pos, offset - self.pos)
                .map_err(FatError::Write)?;
            self.pos = offset;
        }
        Ok(())
    }

    /// Emits `bytes` at `offset`, leaving trailing whole zero sectors to the
    /// gap filler so a sparse sink skips them.
    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FatError> {
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let keep = ((used as u64).div_ceil(SECTOR) * SECTOR).min(bytes.len() as u64) as usize;
        self.raw(offset, &bytes[..keep])
    }

    fn raw(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FatError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if offset < self.pos {
            return Err(FatError::Write(io::Error::other(format!(
                "internal error: region at byte {offset} emitted after byte {}",
                self.pos
            ))));
        }
        self.zeros_to(offset)?;
        self.sink.data(offset, bytes).map_err(FatError::Write)?;
        self.pos = offset + bytes.len() as u64;
        Ok(())
    }
}

/// Formats a FAT volume of `size` bytes holding `files` and streams it to
/// `sink`, covering every byte of `[0, size)` exactly once (zero regions as
/// [`RegionSink::zeros`]). Directories are created as the paths need them.
pub fn build_fat<S: RegionSink + ?Sized>(
    files: &[EspFile<'_>],
    size: u64,
    opts: &FatOptions,
    sink: &mut S,
) -> Result<FatSummary, FatError> {
    let g = fat_geometry(size, opts.fat_type)?;
    let label = if opts.label.is_empty() {
        None
    } else {
        Some(check_label(&opts.label)?)
    };
    let mut dirs = build_tree(files)?;
    let cs = g.cluster_size();
    let (date, time, tenth) = fat_datetime(opts.timestamp);
    let st = Stamp { date, time, tenth };

    let order = bfs_order(&dirs);
    let content: u64 = files.iter().map(|f| f.data.len() as u64).sum();
    let end = g.clusters as u64 + 2;
    let mut next: u64 = 2;
    let too_large = |file: String| FatError::ContentTooLarge {
        file,
        content,
        size,
        capacity: g.data_capacity(),
        cluster_size: cs,
        fat_type: g.fat_type,
    };
    for &d in &order {
        let bytes = (dirs[d].entry_count(d == 0, label.is_some()) * DIR_ENTRY) as u64;
        if d == 0 && g.fat_type == FatType::Fat16 {
            if bytes > (g.root_entries as usize * DIR_ENTRY) as u64 {
                return Err(FatError::RootDirFull {
                    needed: (bytes / DIR_ENTRY as u64) as usize,
                    max: g.root_entries,
                });
            }
            continue;
        }
        let n = bytes.div_ceil(cs).max(1);
        if next + n > end {
            return Err(too_large(dir_path(&dirs, d)));
        }
        dirs[d].first_cluster = next as u32;
        dirs[d].clusters = n as u32;
        next += n;
    }
    for &d in &order {
        for c in dirs[d].children.values_mut() {
            if let Node::File { data, path } = c.node {
                if u32::try_from(data.len()).is_err() {
                    return Err(FatError::BadPath {
                        path: path.to_string(),
                        why: format!("{} bytes is more than FAT's 4 GiB file limit", data.len()),
                    });
                }
                let n = (data.len() as u64).div_ceil(cs);
                if next + n > end {
                    return Err(too_large(path.to_string()));
                }
                if n > 0 {
                    c.first_cluster = next as u32;
                    c.clusters = n as u32;
                }
                next += n;
            }
        }
    }
    let used = (next - 2) as u32;

    // The allocation table: every run is contiguous, so each cluster points
    // to the next and the last holds end-of-chain.
    let entry_bytes = if g.fat_type == FatType::Fat32 { 4 } else { 2 };
    let mut fat = vec![0u8; g.fat_sectors as usize * SECTOR as usize];
    let mut set = |cluster: u32, value: u32| {
        let at = cluster as usize * entry_bytes;
        if entry_bytes == 4 {
            put_u32(&mut fat, at, value);
        } else {
            put_u16(&mut fat, at, value as u16);
        }
    };
    let eoc = if entry_bytes == 4 {
        0x0FFF_FFFF
    } else {
        0xFFFF
    };
    set(
        0,
        if entry_bytes == 4 {
            0x0FFF_FF00
        } else {
            0xFF00
        } | MEDIA_FIXED as u32,
    );
    set(1, eoc);
    let runs = dirs
        .iter()
        .map(|d| (d.first_cluster, d.clusters))
        .chain(
            dirs.iter()
                .flat_map(|d| d.children.values().map(|c| (c.first_cluster, c.clusters))),
        )
        .filter(|&(_, n)| n > 0);
    for (first, n) in runs {
        for c in first..first + n - 1 {
            set(c, c + 1);
        }
        set(first + n - 1, eoc);
    }

    let label_field = label.unwrap_or(*b"NO NAME    ");
    let boot = boot_sector(&g, opts, &label_field);
    let mut reserved = vec![0u8; g.reserved_sectors as usize * SECTOR as usize];
    reserved[..512].copy_from_slice(&boot);
    if g.fat_type == FatType::Fat32 {
        let free = g.clusters - used;
        let next_free = if free > 0 { used + 2 } else { 0xFFFF_FFFF };
        let info = fsinfo_sector(free, next_free);
        for (sector, bytes) in [
            (FAT32_FSINFO_SECTOR, &info),
            (FAT32_BACKUP_BOOT_SECTOR, &boot),
            (FAT32_BACKUP_BOOT_SECTOR + 1, &info),
        ] {
            let at = sector as usize * SECTOR as usize;
            reserved[at..at + 512].copy_from_slice(bytes);
        }
    }

    let mut out = Emitter { sink, pos: 0 };
    out.data(0, &reserved)?;
    out.data(g.fat_offset(0), &fat)?;
    out.data(g.fat_offset(1), &fat)?;
    if g.fat_type == FatType::Fat16 {
        let root = encode_dir(&dirs, 0, label.as_ref(), &st, 0);
        out.data(
            g.reserved_sectors as u64 * SECTOR + 2 * g.fat_sectors as u64 * SECTOR,
            &root,
        )?;
    }
    for &d in &order {
        if dirs[d].clusters > 0 {
            let cap = (dirs[d].clusters as u64 * cs) as usize;
            let bytes = encode_dir(&dirs, d, label.as_ref(), &st, cap);
            out.data(g.cluster_offset(dirs[d].first_cluster), &bytes)?;
        }
    }
    for &d in &order {
        for c in dirs[d].children.values() {
            if let Node::File { data, .. } = c.node {
                if c.clusters > 0 {
                    out.raw(g.cluster_offset(c.first_cluster), data)?;
                }
            }
        }
    }
    out.zeros_to(size)?;
    Ok(FatSummary {
        geometry: g,
        used_clusters: used,
    })
}

/// A sink that materializes the volume in memory.
pub(super) struct VecSink(pub(super) Vec<u8>);

impl RegionSink for VecSink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let at = offset as usize;
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn zeros(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// [`build_fat`] into memory: the whole volume as bytes. Meant for small
/// volumes and tests; stream larger ones into a partition window instead.
pub fn build_fat_vec(
    files: &[EspFile<'_>],
    size: u64,
    opts: &FatOptions,
) -> Result<Vec<u8>, FatError> {
    // Check the size before allocating it.
    fat_geometry(size, opts.fat_type)?;
    let mut sink = VecSink(vec![0u8; size as usize]);
    build_fat(files, size, opts, &mut sink)?;
    Ok(sink.0)
}
