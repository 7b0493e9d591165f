//! Reading and changing a disk's GPT from init.
//!
//! The initramfs has no udev and no blkid, so init finds its root partition by reading
//! the partition table itself, and adds the `var` partition on first boot by rewriting
//! it. The on-disk format (headers, entries, GUIDs, CRCs and the bounds that keep a
//! corrupt disk from making init allocate wildly) is `kiln_contract::gpt`, shared with
//! the builder; this module adds what only the agent does: reading through a device with
//! a fallback to the backup copy, and planning safe rewrites.

use std::fmt;
use std::io;
use std::ops::Deref;

use kiln_contract::crc32::crc32;
use kiln_contract::gpt::{self as contract, types, Entry, Guid, Header, MBR_PROTECTIVE_TYPE};
use kiln_contract::le::{put_u32, u32_at};

/// The root partition type of the architecture this binary was built for.
pub fn native_root_type() -> Guid {
    if cfg!(target_arch = "aarch64") {
        types::ROOT_ARM64
    } else {
        types::ROOT_X86_64
    }
}

/// One used entry of the partition entry array, with its position in the array.
///
/// It dereferences to the entry, so `e.type_guid` reads like a field: the position is
/// all the agent adds (it names the kernel's partition device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// Position in the entry array, from 0. The kernel names the partition `index + 1`.
    pub index: u32,
    /// The entry as stored.
    pub entry: Entry,
}

impl GptEntry {
    /// The partition number the kernel gives this entry (`vda2` for index 1).
    pub fn number(&self) -> u32 {
        self.index + 1
    }
}

impl Deref for GptEntry {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.entry
    }
}

/// A validated partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID from the header.
    pub disk_guid: Guid,
    /// The used entries (non-zero type), in array order.
    pub entries: Vec<GptEntry>,
    /// True when the primary header was damaged and the backup one was used.
    pub from_backup: bool,
}

/// Why no partition table could be read.
#[derive(Debug)]
pub enum GptError {
    /// Reading the device failed.
    Io {
        /// What was being read.
        what: &'static str,
        /// The error.
        err: io::Error,
    },
    /// The bytes are not a usable table: no signature, or a damaged header or array.
    Format(contract::GptError),
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::Io { what, err } => write!(f, "reading the {what}: {err}"),
            GptError::Format(e) => e.fmt(f),
        }
    }
}

impl From<contract::GptError> for GptError {
    fn from(e: contract::GptError) -> GptError {
        GptError::Format(e)
    }
}

/// Checks the entry array against the header's CRC and returns the used entries.
pub fn parse_entries(header: &Header, array: &[u8]) -> Result<Vec<GptEntry>, GptError> {
    Ok(contract::parse_entries(header, array)?
        .into_iter()
        .map(|(index, entry)| GptEntry { index, entry })
        .collect())
}

/// Reads the partition table of a disk through `read_at(offset, len)`.
///
/// `disk_bytes` (when known) lets a damaged primary header fall back to the backup at
/// the last LBA, as firmware does.
pub fn read_gpt(
    read_at: &mut dyn FnMut(u64, usize) -> io::Result<Vec<u8>>,
    sector_size: u64,
    disk_bytes: Option<u64>,
) -> Result<Gpt, GptError> {
    let table = read_table(read_at, sector_size, disk_bytes)?;
    Ok(Gpt {
        disk_guid: table.header.disk_guid,
        entries: table.entries,
        from_backup: table.from_backup,
    })
}

/// A partition table as read from the disk, with the raw bytes needed to rewrite it
/// without losing anything this reader does not interpret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTable {
    /// Bytes per logical sector.
    pub sector_size: u64,
    /// Sector 0 (the protective MBR).
    pub mbr: Vec<u8>,
    /// The header copy that was used.
    pub header: Header,
    /// That header's whole sector.
    pub header_sector: Vec<u8>,
    /// The entry array, exactly `header.array_bytes()` long.
    pub array: Vec<u8>,
    /// The used entries.
    pub entries: Vec<GptEntry>,
    /// True when the primary header or array was damaged and the backup was used.
    pub from_backup: bool,
}

/// Reads the partition table with its raw bytes: the primary copy, or the backup at the
/// last LBA (when `disk_bytes` is known) if the primary is damaged.
pub fn read_table(
    read_at: &mut dyn FnMut(u64, usize) -> io::Result<Vec<u8>>,
    sector_size: u64,
    disk_bytes: Option<u64>,
) -> Result<RawTable, GptError> {
    let primary_err = match read_copy(read_at, sector_size, 1) {
        Ok(table) => return Ok(table),
        Err(e) => e,
    };
    let last_lba = match disk_bytes {
        Some(bytes) if bytes / sector_size > 2 => bytes / sector_size - 1,
        _ => return Err(primary_err),
    };
    match read_copy(read_at, sector_size, last_lba) {
        Ok(table) => Ok(RawTable {
            from_backup: true,
            ..table
        }),
        // The primary's error is the informative one: a blank disk has neither.
        Err(_) => Err(primary_err),
    }
}

fn read_copy(
    read_at: &mut dyn FnMut(u64, usize) -> io::Result<Vec<u8>>,
    sector_size: u64,
    lba: u64,
) -> Result<RawTable, GptError> {
    let sector = read_at(lba * sector_size, sector_size as usize).map_err(|err| GptError::Io {
        what: "GPT header",
        err,
    })?;
    let header = Header::parse(&sector, lba)?;
    let mut array = read_at(
        header.entries_lba.saturating_mul(sector_size),
        header.array_bytes() as usize,
    )
    .map_err(|err| GptError::Io {
        what: "GPT partition entry array",
        err,
    })?;
    let entries = parse_entries(&header, &array)?;
    array.truncate(header.array_bytes() as usize);
    let mbr = read_at(0, sector_size as usize).map_err(|err| GptError::Io {
        what: "protective MBR",
        err,
    })?;
    Ok(RawTable {
        sector_size,
        mbr,
        header,
        header_sector: sector,
        array,
        entries,
        from_backup: false,
    })
}

/// Every partition init creates starts on a multiple of this many bytes, as the builder
/// lays out the image's own partitions.
pub const PARTITION_ALIGNMENT: u64 = 1 << 20;

/// Name of the partition init creates.
pub const VAR_NAME: &str = "var";

/// Bytes written at a byte offset of the whole disk, as one step of a table change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskWrite {
    /// What the bytes are, for the log.
    pub what: &'static str,
    /// Byte offset on the disk.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Adding the `var` partition: the new entry and the writes, in the order that keeps a
/// valid table after a power loss between any two steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarGrowth {
    /// The new entry.
    pub entry: GptEntry,
    /// Step 1: the new backup entry array and backup header at the end of the disk.
    /// The old primary still points at the old, untouched backup, so a power loss
    /// after this step leaves the old table valid and the next boot starts again.
    pub backup: Vec<DiskWrite>,
    /// Step 2: the protective MBR's size (if it changes), the primary entry array and
    /// the primary header, which now points at the new backup.
    pub primary: Vec<DiskWrite>,
    /// Step 3: the old backup header zeroed, so no stale table can be found later.
    pub wipe: Vec<DiskWrite>,
    /// The disk's last LBA, where the new backup header goes.
    pub last_lba: u64,
}

/// Why no `var` partition can be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    /// Bytes free after the last partition (from the next 1 MiB boundary).
    pub free_bytes: u64,
    /// Bytes a `var` partition needs at least.
    pub needed_bytes: u64,
    /// The smallest disk (whole MiB) that would have room.
    pub min_disk_bytes: u64,
    /// True when every entry of the partition array is taken (size is not the problem).
    pub entries_full: bool,
}

/// What [`plan_var`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarLayout {
    /// A `var` partition exists: the first entry of the DPS var type.
    Existing(GptEntry),
    /// None exists and there is room: how to add it.
    Grow(VarGrowth),
    /// None exists and there is no room.
    NoRoom(NoRoom),
}

/// The table cannot be changed safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowError(pub String);

impl fmt::Display for GrowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn sectors_of(table: &RawTable, bytes: u64) -> u64 {
    bytes.div_ceil(table.sector_size)
}

/// One header sector from the copy that was read: same revision, disk GUID, first
/// usable LBA and entry geometry; the given position fields; the bytes after the
/// header zeroed and the CRC recomputed. It is written over the sector that was read so
/// that a later revision's fields (bytes 92 to the header size) survive.
fn encode_header(
    table: &RawTable,
    my_lba: u64,
    alternate_lba: u64,
    last_usable_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let header = Header {
        my_lba,
        alternate_lba,
        last_usable_lba,
        entries_lba,
        entries_crc,
        ..table.header.clone()
    };
    let mut sector = table.header_sector.clone();
    header.write_into(&mut sector);
    sector
}

/// The entry array padded with zeros to whole sectors.
fn padded(table: &RawTable, array: &[u8]) -> Vec<u8> {
    let mut out = array.to_vec();
    out.resize(
        (sectors_of(table, array.len() as u64) * table.sector_size) as usize,
        0,
    );
    out
}

/// The protective MBR with its size field covering `disk_sectors`, if it is a plain
/// protective MBR (one 0xEE entry) whose size differs. Hybrid MBRs are left alone.
fn updated_mbr(table: &RawTable, disk_sectors: u64) -> Option<Vec<u8>> {
    let mbr = &table.mbr;
    if mbr.len() < 512 || mbr[510..512] != [0x55, 0xAA] || mbr[446 + 4] != MBR_PROTECTIVE_TYPE {
        return None;
    }
    if mbr[462..510].iter().any(|&b| b != 0) {
        return None;
    }
    let size = contract::mbr_sectors(disk_sectors);
    if u32_at(mbr, 446 + 12) == size {
        return None;
    }
    let mut out = mbr.clone();
    put_u32(&mut out, 446 + 12, size);
    Some(out)
}

/// Decides where the `var` partition is, or how to add it, on a disk of `disk_sectors`
/// logical sectors (its size now, which is usually larger than the image written to
/// it). Pure: the caller reads the table, supplies the new partition's unique GUID and
/// carries out the writes.
///
/// A new partition starts at the first 1 MiB boundary after the last partition and
/// ends at the new last usable LBA (the disk's last LBA minus the backup array and
/// header); it takes the first free entry. It must be at least `min_bytes` (and at
/// least 1 MiB) long.
pub fn plan_var(
    table: &RawTable,
    disk_sectors: u64,
    min_bytes: u64,
    part_guid: Guid,
) -> Result<VarLayout, GrowError> {
    if let Some(e) = table.entries.iter().find(|e| e.type_guid == types::VAR) {
        return Ok(VarLayout::Existing(e.clone()));
    }
    let h = &table.header;
    let ss = table.sector_size;
    let array_sectors = sectors_of(table, h.array_bytes());
    let geometry = |why: String| GrowError(why);
    // The disk must hold the primary array, at least one usable sector and the backup.
    if disk_sectors < 2 * array_sectors + 4 {
        return Err(geometry(format!(
            "the disk has only {disk_sectors} sectors, too few for a GPT"
        )));
    }
    let last_lba = disk_sectors - 1;
    let last_usable = last_lba - array_sectors - 1;
    let primary_entries_lba = if table.from_backup { 2 } else { h.entries_lba };
    if h.first_usable_lba < primary_entries_lba + array_sectors || h.first_usable_lba > last_usable
    {
        return Err(geometry(format!(
            "first usable LBA {} does not fit between the primary entry array (LBA {} to {}) \
             and the new last usable LBA {last_usable}",
            h.first_usable_lba,
            primary_entries_lba,
            primary_entries_lba + array_sectors - 1
        )));
    }
    if let Some(e) = table.entries.iter().find(|e| e.last_lba > last_usable) {
        return Err(geometry(format!(
            "partition {} ({}) ends at LBA {} but the disk's last usable LBA is {last_usable}: \
             the disk is smaller than the image written to it",
            e.number(),
            e.name,
            e.last_lba
        )));
    }
    let used_end = table.entries.iter().map(|e| e.last_lba).max();
    let align = (PARTITION_ALIGNMENT / ss).max(1);
    let after = used_end.map_or(h.first_usable_lba, |l| l + 1);
    let first = after.max(h.first_usable_lba).div_ceil(align) * align;
    let free_bytes = if first <= last_usable {
        (last_usable - first + 1) * ss
    } else {
        0
    };
    let needed_bytes = min_bytes.max(PARTITION_ALIGNMENT);
    let slot = (0..h.num_entries).find(|i| !table.entries.iter().any(|e| e.index == *i));
    if free_bytes < needed_bytes || slot.is_none() {
        let disk_end = (first + needed_bytes.div_ceil(ss) + array_sectors + 1) * ss;
        return Ok(VarLayout::NoRoom(NoRoom {
            free_bytes,
            needed_bytes,
            min_disk_bytes: disk_end.div_ceil(PARTITION_ALIGNMENT) * PARTITION_ALIGNMENT,
            entries_full: slot.is_none(),
        }));
    }
    let Some(index) = slot else {
        return Err(geometry("no free partition entry".to_string()));
    };
    let entry = GptEntry {
        index,
        entry: Entry {
            type_guid: types::VAR,
            part_guid,
            first_lba: first,
            last_lba: last_usable,
            attributes: 0,
            name: VAR_NAME.to_string(),
        },
    };
    let size = h.entry_size as usize;
    let mut array = table.array.clone();
    let at = index as usize * size;
    // The whole slot, so nothing a previous user left past byte 128 stays.
    array[at..at + size].copy_from_slice(&entry.to_bytes(size));
    let crc = crc32(&array);
    let array = padded(table, &array);
    let backup_entries_lba = last_lba - array_sectors;
    let backup = vec![
        DiskWrite {
            what: "backup GPT entry array",
            offset: backup_entries_lba * ss,
            bytes: array.clone(),
        },
        DiskWrite {
            what: "backup GPT header",
            offset: last_lba * ss,
            bytes: encode_header(table, last_lba, 1, last_usable, backup_entries_lba, crc),
        },
    ];
    let mut primary = Vec::new();
    if let Some(mbr) = updated_mbr(table, disk_sectors) {
        primary.push(DiskWrite {
            what: "protective MBR",
            offset: 0,
            bytes: mbr,
        });
    }
    primary.push(DiskWrite {
        what: "primary GPT entry array",
        offset: primary_entries_lba * ss,
        bytes: array,
    });
    primary.push(DiskWrite {
        what: "primary GPT header",
        offset: ss,
        bytes: encode_header(table, 1, last_lba, last_usable, primary_entries_lba, crc),
    });
    // The old backup header: beyond every partition, so nothing but the new `var`
    // partition (or free space) can be there.
    let old_backup = if table.from_backup {
        h.my_lba
    } else {
        h.alternate_lba
    };
    let mut wipe = Vec::new();
    if old_backup != last_lba
        && old_backup < backup_entries_lba
        && old_backup > used_end.unwrap_or(0)
        && old_backup >= h.first_usable_lba
    {
        wipe.push(DiskWrite {
            what: "zeros over the old backup GPT header",
            offset: old_backup * ss,
            bytes: vec![0u8; ss as usize],
        });
    }
    Ok(VarLayout::Grow(VarGrowth {
        entry,
        backup,
        primary,
        wipe,
        last_lba,
    }))
}

/// Rewrites a damaged primary copy (entry array at LBA 2, header at LBA 1) from a table
/// that was read from the backup. Empty when the table came from the primary.
pub fn plan_primary_repair(table: &RawTable) -> Result<Vec<DiskWrite>, GrowError> {
    if !table.from_backup {
        return Ok(Vec::new());
    }
    let h = &table.header;
    let array_sectors = sectors_of(table, h.array_bytes());
    if h.first_usable_lba < 2 + array_sectors {
        return Err(GrowError(format!(
            "the backup header's first usable LBA {} leaves no room for a primary entry array \
             at LBA 2",
            h.first_usable_lba
        )));
    }
    let crc = crc32(&table.array);
    Ok(vec![
        DiskWrite {
            what: "primary GPT entry array",
            offset: 2 * table.sector_size,
            bytes: padded(table, &table.array),
        },
        DiskWrite {
            what: "primary GPT header",
            offset: table.sector_size,
            bytes: encode_header(table, 1, h.my_lba, h.last_usable_lba, 2, crc),
        },
    ])
}

#[cfg(test)]
pub(crate) mod tests;
