//! Writes a [`DiskPlan`] as a GPT disk image file, and reads GPTs back.
//!
//! [`create_image`] makes a sparse file of the planned size holding the
//! protective MBR, the primary GPT (header at LBA 1, entries from LBA 2) and
//! the backup GPT (entries, then the header in the last sector). Partition
//! contents then go in through [`ImageFile::write_partition`] (a reader) or a
//! [`PartitionWindow`] (positioned writes, also a [`mkext4::RegionSink`] so
//! the ext4 and FAT writers stream straight into the image). Zero regions are
//! never written: a fresh image file is sparse and already reads as zeros.
//!
//! [`read_gpt`] validates a disk's GPT (signatures, both header CRCs, both
//! entry array CRCs) and lists its partitions.

mod reader;

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kiln_contract::crc32::crc32;
use kiln_contract::gpt::{
    encode_array, parse_entries, protective_mbr, Entry, GptError, Header, HEADER_SIZE,
    MBR_PROTECTIVE_TYPE, MIN_ENTRY_SIZE, NAME_MAX_UNITS, REVISION_1_0,
};

use crate::plan::{DiskPlan, Guid, PartitionRole, PlannedPartition};

pub use reader::WindowReader;

const SECTOR: u64 = 512;
/// Copy buffer for [`ImageFile::write_partition`].
const COPY_CHUNK: usize = 4 << 20;
/// Block size of [`ImageFile::mapped_blocks`] (bmaptool's block size).
pub const MAP_BLOCK_SIZE: u64 = 4096;

/// Errors of writing or reading disk images.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// An I/O operation on the image failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// What kiln was doing.
        action: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Reading partition content from the caller's reader failed.
    #[error("reading the content of partition `{name}` for {}: {source}", path.display())]
    Source {
        /// The image file.
        path: PathBuf,
        /// The partition name.
        name: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The plan has no partition of that role.
    #[error("the disk plan of {} has no {role} partition", path.display())]
    NotPlanned {
        /// The image file.
        path: PathBuf,
        /// The missing role.
        role: PartitionRole,
    },
    /// Content is longer than its partition.
    #[error(
        "{len} bytes of content do not fit partition `{name}` ({size} bytes) in {}; \
         the partition is sized by the plan, so re-plan with the final content size \
         (for the ESP: raise `disk.esp_size` in the profile)",
        path.display()
    )]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// The partition name.
        name: String,
        /// Bytes of content offered (at least).
        len: u64,
        /// Bytes the partition holds.
        size: u64,
    },
    /// The plan contradicts itself (a bug in the caller, not in a profile).
    #[error("inconsistent disk plan: {0}")]
    BadPlan(String),
    /// The file does not hold a valid GPT.
    #[error("{}: not a valid GPT disk: {what}", path.display())]
    BadGpt {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// One used entry of a GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    /// 1-based entry number (what `sgdisk -i N` takes).
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID.
    pub unique_guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Attribute bits (see [`crate::plan::attr`]).
    pub attributes: u64,
    /// Partition name.
    pub name: String,
}

/// A validated GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptTable {
    /// Disk GUID.
    pub disk_guid: Guid,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA (inclusive).
    pub last_usable_lba: u64,
    /// LBA of the backup header.
    pub backup_lba: u64,
    /// Used entries, in entry order.
    pub partitions: Vec<PartitionEntry>,
}

/// An image file whose partition table has been written.
#[derive(Debug)]
pub struct ImageFile {
    path: PathBuf,
    file: File,
    plan: DiskPlan,
    written: Mutex<WrittenBlocks>,
}

/// The blocks of an image that kiln wrote, so the output formats know what
/// to copy without asking the host filesystem where its holes are (that
/// varies with the filesystem; this does not). Zero bytes that were written
/// count: flashing over old data must overwrite them.
#[derive(Debug, Default)]
struct WrittenBlocks {
    /// Half-open block ranges; unsorted between compactions.
    ranges: Vec<Range<u64>>,
    /// Length after the last compaction, to compact only when it doubled.
    compacted_len: usize,
}

impl WrittenBlocks {
    fn record(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / MAP_BLOCK_SIZE;
        let end = offset.saturating_add(len).div_ceil(MAP_BLOCK_SIZE);
        // Writers mostly go forward, so most writes extend the last range.
        if let Some(last) = self.ranges.last_mut() {
            if first <= last.end && end >= last.start {
                last.start = last.start.min(first);
                last.end = last.end.max(end);
                return;
            }
        }
        self.ranges.push(first..end);
        if self.ranges.len() >= 1024 && self.ranges.len() > 2 * self.compacted_len {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        self.ranges = merged;
        self.compacted_len = self.ranges.len();
    }
}

fn record_write(written: &Mutex<WrittenBlocks>, offset: u64, len: u64) {
    // A panic elsewhere cannot leave the list half-updated: take it anyway.
    written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(offset, len);
}

/// A partition's byte range in an image file, for positioned writes.
///
/// Offsets passed to it are relative to the start of the partition; writes
/// past its end are refused. As a [`mkext4::RegionSink`] it writes data
/// regions and skips zero regions, relying on the fresh image being sparse.
#[derive(Debug, Clone, Copy)]
pub struct PartitionWindow<'a> {
    file: &'a File,
    path: &'a Path,
    part: &'a PlannedPartition,
    written: &'a Mutex<WrittenBlocks>,
}

impl PartitionWindow<'_> {
    /// The image file, for reading. Write through [`PartitionWindow::write_at`]
    /// only: writes made directly on the file are not in
    /// [`ImageFile::mapped_blocks`], so the compressed outputs would lose them
    /// (the output writers refuse such an image).
    pub fn file(&self) -> &File {
        self.file
    }

    /// The partition being written.
    pub fn partition(&self) -> &PlannedPartition {
        self.part
    }

    /// Byte offset of the partition in the image.
    pub fn offset(&self) -> u64 {
        self.part.offset()
    }

    /// Size of the partition in bytes.
    pub fn len(&self) -> u64 {
        self.part.size()
    }

    /// Whether the partition is empty (never true for a planned partition).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check_range(&self, pos: u64, len: u64) -> Result<(), DiskError> {
        match pos.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(DiskError::TooLarge {
                path: self.path.to_path_buf(),
                name: self.part.name.clone(),
                len: pos.saturating_add(len),
                size: self.len(),
            }),
        }
    }

    /// Writes `bytes` at `pos` bytes into the partition.
    pub fn write_at(&self, pos: u64, bytes: &[u8]) -> Result<(), DiskError> {
        self.check_range(pos, bytes.len() as u64)?;
        self.file
            .write_all_at(bytes, self.offset() + pos)
            .map_err(|source| DiskError::Io {
                path: self.path.to_path_buf(),
                action: "writing partition content",
                source,
            })?;
        record_write(self.written, self.offset() + pos, bytes.len() as u64);
        Ok(())
    }
}

fn to_io(e: DiskError) -> io::Error {
    match e {
        DiskError::Io {
            source,
            path,
            action,
        } => io::Error::new(
            source.kind(),
            format!("{}: {action}: {source}", path.display()),
        ),
        other => io::Error::other(other.to_string()),
    }
}

impl mkext4::RegionSink for PartitionWindow<'_> {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.write_at(offset, bytes).map_err(to_io)
    }

    fn zeros(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // The image was created sparse and each partition is written once,
        // so these bytes already read as zero.
        self.check_range(offset, len).map_err(to_io)
    }
}

impl ImageFile {
    /// The image file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plan the image was created from.
    pub fn plan(&self) -> &DiskPlan {
        &self.plan
    }

    /// The open image file, for reading. Writes must go through the image's
    /// own methods so that [`ImageFile::mapped_blocks`] knows about them.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The byte window of the partition with `role`.
    pub fn window(&self, role: PartitionRole) -> Result<PartitionWindow<'_>, DiskError> {
        let part = self
            .plan
            .partition(role)
            .ok_or_else(|| DiskError::NotPlanned {
                path: self.path.clone(),
                role,
            })?;
        Ok(PartitionWindow {
            file: &self.file,
            path: &self.path,
            part,
            written: &self.written,
        })
    }

    /// Copies everything `reader` yields to the start of the partition with
    /// `role` and returns the number of bytes written. Content longer than
    /// the partition is refused with both sizes named; the rest of a shorter
    /// partition stays zero.
    pub fn write_partition(
        &self,
        role: PartitionRole,
        mut reader: impl Read,
    ) -> Result<u64, DiskError> {
        let window = self.window(role)?;
        let source_err = |source| DiskError::Source {
            path: self.path.clone(),
            name: window.part.name.clone(),
            source,
        };
        let mut buf = vec![0u8; COPY_CHUNK];
        let mut pos = 0u64;
        loop {
            let n = read_full(&mut reader, &mut buf).map_err(source_err)?;
            if n == 0 {
                return Ok(pos);
            }
            if pos + n as u64 > window.len() {
                // Count the rest so the error names the real content size.
                let rest = io::copy(&mut reader, &mut io::sink()).map_err(source_err)?;
                return Err(DiskError::TooLarge {
                    path: self.path.clone(),
                    name: window.part.name.clone(),
                    len: pos + n as u64 + rest,
                    size: window.len(),
                });
            }
            window.write_at(pos, &buf[..n])?;
            pos += n as u64;
        }
    }

    /// The blocks of [`MAP_BLOCK_SIZE`] bytes written so far (partition
    /// tables and partition contents, zeros included when they were written
    /// rather than skipped), as sorted, merged, half-open block ranges. Every
    /// block outside them reads as zero.
    pub fn mapped_blocks(&self) -> Vec<Range<u64>> {
        let mut w = self.written.lock().unwrap_or_else(|e| e.into_inner());
        w.compact();
        w.ranges.clone()
    }

    /// Flushes the image to stable storage and closes it.
    pub fn finish(self) -> Result<(), DiskError> {
        self.file.sync_all().map_err(|source| DiskError::Io {
            path: self.path,
            action: "syncing the image",
            source,
        })
    }
}

/// Fills `buf` as far as the reader allows; returns fewer bytes only at EOF.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The partition table structures of a plan, encoded.
struct GptBytes {
    mbr: [u8; 512],
    primary_header: Vec<u8>,
    backup_header: Vec<u8>,
    entries: Vec<u8>,
}

fn check_plan(plan: &DiskPlan) -> Result<(), DiskError> {
    let bad = |m: String| Err(DiskError::BadPlan(m));
    if plan.sector_size != SECTOR {
        return bad(format!(
            "sector size {} (kiln writes 512-byte sectors)",
            plan.sector_size
        ));
    }
    if plan.total_size % SECTOR != 0 {
        return bad(format!(
            "disk size {} is not a whole number of sectors",
            plan.total_size
        ));
    }
    if plan.entry_size < MIN_ENTRY_SIZE || plan.entry_size % 8 != 0 {
        return bad(format!("GPT entry size {}", plan.entry_size));
    }
    if plan.partitions.len() > plan.entry_count as usize {
        return bad(format!(
            "{} partitions but only {} GPT entries",
            plan.partitions.len(),
            plan.entry_count
        ));
    }
    let array_sectors = entry_array_sectors(plan);
    if plan.first_usable_lba < 2 + array_sectors
        || plan.total_sectors() < plan.last_usable_lba + 2 + array_sectors
        || plan.first_usable_lba > plan.last_usable_lba
    {
        return bad(format!(
            "usable LBAs {}..={} leave no room for the GPT on a {}-sector disk",
            plan.first_usable_lba,
            plan.last_usable_lba,
            plan.total_sectors()
        ));
    }
    let mut prev_last: Option<u64> = None;
    for p in &plan.partitions {
        if p.first_lba < plan.first_usable_lba
            || p.last_lba > plan.last_usable_lba
            || p.last_lba < p.first_lba
            || prev_last.is_some_and(|l| p.first_lba <= l)
        {
            return bad(format!(
                "partition `{}` at LBAs {}..={} is outside {}..={} or overlaps its predecessor",
                p.name, p.first_lba, p.last_lba, plan.first_usable_lba, plan.last_usable_lba
            ));
        }
        if p.name.encode_utf16().count() > NAME_MAX_UNITS {
            return bad(format!(
                "partition name {:?} is longer than 36 UTF-16 units",
                p.name
            ));
        }
        prev_last = Some(p.last_lba);
    }
    Ok(())
}

fn entry_array_sectors(plan: &DiskPlan) -> u64 {
    (plan.entry_count as u64 * plan.entry_size as u64).div_ceil(SECTOR)
}

/// The plan's partitions as GPT entries, entry 1 first, padded with unused
/// entries to whole sectors.
fn encode_entries(plan: &DiskPlan) -> Vec<u8> {
    let entries: Vec<Entry> = plan
        .partitions
        .iter()
        .map(|p| Entry {
            type_guid: p.type_guid,
            part_guid: p.unique_guid,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            attributes: p.attributes,
            name: p.name.clone(),
        })
        .collect();
    let used: Vec<(u32, &Entry)> = (0..).zip(&entries).collect();
    let mut out = encode_array(&used, plan.entry_count, plan.entry_size);
    out.resize(entry_array_sectors(plan) as usize * SECTOR as usize, 0);
    out
}

/// The plan's GPT header for the copy at `my_lba`.
fn header(
    plan: &DiskPlan,
    my_lba: u64,
    alternate_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Header {
    Header {
        revision: REVISION_1_0,
        header_size: HEADER_SIZE,
        my_lba,
        alternate_lba,
        first_usable_lba: plan.first_usable_lba,
        last_usable_lba: plan.last_usable_lba,
        disk_guid: plan.disk_guid,
        entries_lba,
        num_entries: plan.entry_count,
        entry_size: plan.entry_size,
        entries_crc,
    }
}

fn encode_gpt(plan: &DiskPlan) -> Result<GptBytes, DiskError> {
    check_plan(plan)?;
    let entries = encode_entries(plan);
    let entries_crc = crc32(&entries[..plan.entry_count as usize * plan.entry_size as usize]);
    let last = plan.total_sectors() - 1;
    let backup_entries_lba = last - entry_array_sectors(plan);
    let sector = SECTOR as usize;
    Ok(GptBytes {
        mbr: protective_mbr(plan.total_sectors()),
        primary_header: header(plan, 1, last, 2, entries_crc).to_sector(sector),
        backup_header: header(plan, last, 1, backup_entries_lba, entries_crc).to_sector(sector),
        entries,
    })
}

/// Creates (or truncates) `path` as a sparse file of the planned size and
/// writes the protective MBR and both GPTs. Partition contents are written
/// afterwards through the returned [`ImageFile`].
pub fn create_image(path: &Path, plan: &DiskPlan) -> Result<ImageFile, DiskError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|source| DiskError::Io {
            path: path.to_path_buf(),
            action: "creating the image file",
            source,
        })?;
    file.set_len(plan.total_size)
        .map_err(|source| DiskError::Io {
            path: path.to_path_buf(),
            action: "setting the image size",
            source,
        })?;
    let image = ImageFile {
        path: path.to_path_buf(),
        file,
        plan: plan.clone(),
        written: Mutex::new(WrittenBlocks::default()),
    };
    image.write_table()?;
    Ok(image)
}

impl ImageFile {
    /// Writes the protective MBR and both GPTs from the plan.
    fn write_table(&self) -> Result<(), DiskError> {
        let plan = &self.plan;
        let gpt = encode_gpt(plan)?;
        let last = plan.total_sectors() - 1;
        let backup_entries = (last - entry_array_sectors(plan)) * SECTOR;
        let writes: [(u64, &[u8]); 5] = [
            (0, &gpt.mbr),
            (SECTOR, &gpt.primary_header),
            (2 * SECTOR, &gpt.entries),
            (backup_entries, &gpt.entries),
            (last * SECTOR, &gpt.backup_header),
        ];
        for (offset, bytes) in writes {
            self.file
                .write_all_at(bytes, offset)
                .map_err(|source| DiskError::Io {
                    path: self.path.clone(),
                    action: "writing the partition table",
                    source,
                })?;
            record_write(&self.written, offset, bytes.len() as u64);
        }
        Ok(())
    }

    /// Derives the root and root-verity partition GUIDs from the verity root
    /// hash ([`DiskPlan::apply_root_hash`]) and rewrites the partition table.
    /// The hash is only known once the root is written, hence after creation.
    pub fn apply_root_hash(&mut self, root_hash: &[u8; 32]) -> Result<(), DiskError> {
        self.plan.apply_root_hash(root_hash);
        self.write_table()
    }
}

/// A problem with the `which` (`primary`, `backup`) copy of the GPT. The
/// contract's reasons read "header CRC32 is ...", "entry array CRC32 is ...":
/// the copy's name goes in front.
fn problem(which: &str, e: GptError) -> String {
    match e {
        GptError::NoSignature => format!("{which} header has no \"EFI PART\" signature"),
        GptError::Damaged(why) => format!("{which} {why}"),
    }
}

/// Reads and validates the GPT of the disk image at `path`: the protective
/// MBR, both headers (signature, CRC, where they say they are) and both
/// entry arrays (CRC). Returns the used entries.
pub fn read_gpt(path: &Path) -> Result<GptTable, DiskError> {
    let bad = |what: String| DiskError::BadGpt {
        path: path.to_path_buf(),
        what,
    };
    let io_err = |source| DiskError::Io {
        path: path.to_path_buf(),
        action: "reading the partition table",
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    let total_sectors = len / SECTOR;
    if total_sectors < 3 {
        return Err(bad(format!("the file is only {len} bytes")));
    }
    let read_at = |offset: u64, n: u64| -> Result<Vec<u8>, DiskError> {
        if offset.checked_add(n).is_none_or(|end| end > len) {
            return Err(bad(format!(
                "a table at byte {offset} ({n} bytes) lies past the end of the {len}-byte file"
            )));
        }
        let mut buf = vec![0u8; n as usize];
        file.read_exact_at(&mut buf, offset).map_err(io_err)?;
        Ok(buf)
    };

    let mbr = read_at(0, SECTOR)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Err(bad("sector 0 has no MBR boot signature 55 AA".into()));
    }
    if !(0..4).any(|i| mbr[446 + 16 * i + 4] == MBR_PROTECTIVE_TYPE) {
        return Err(bad("the MBR has no protective (type EE) partition".into()));
    }

    let primary =
        Header::parse(&read_at(SECTOR, SECTOR)?, 1).map_err(|e| bad(problem("primary", e)))?;
    let array_len = primary.array_bytes();
    let entries = read_at(primary.entries_lba.saturating_mul(SECTOR), array_len)?;
    let used = parse_entries(&primary, &entries).map_err(|e| bad(problem("primary", e)))?;

    let backup_lba = primary.alternate_lba;
    let backup = Header::parse(
        &read_at(backup_lba.saturating_mul(SECTOR), SECTOR)?,
        backup_lba,
    )
    .map_err(|e| bad(problem("backup", e)))?;
    if backup.alternate_lba != 1 {
        return Err(bad(format!(
            "backup header at LBA {backup_lba} says it is at LBA {} with its alternate at {}",
            backup.my_lba, backup.alternate_lba
        )));
    }
    if (
        backup.num_entries,
        backup.entry_size,
        backup.entries_crc,
        backup.disk_guid,
    ) != (
        primary.num_entries,
        primary.entry_size,
        primary.entries_crc,
        primary.disk_guid,
    ) {
        return Err(bad(
            "the backup header does not match the primary header".into()
        ));
    }
    let backup_entries = read_at(backup.entries_lba.saturating_mul(SECTOR), array_len)?;
    parse_entries(&backup, &backup_entries).map_err(|e| bad(problem("backup", e)))?;

    let partitions = used
        .into_iter()
        .map(|(index, e)| PartitionEntry {
            number: index + 1,
            type_guid: e.type_guid,
            unique_guid: e.part_guid,
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            attributes: e.attributes,
            name: e.name,
        })
        .collect();
    Ok(GptTable {
        disk_guid: primary.disk_guid,
        first_usable_lba: primary.first_usable_lba,
        last_usable_lba: primary.last_usable_lba,
        backup_lba,
        partitions,
    })
}

#[cfg(test)]
mod tests;
