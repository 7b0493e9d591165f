//! Reading a GPT (UEFI spec, chapter 5) straight from a disk's bytes.
//!
//! The initramfs has no udev and no blkid, so init finds its root partition by reading
//! the partition table itself. Only what finding partitions needs is parsed, and every
//! field that sizes a read is bounded so a corrupt disk cannot make init allocate wildly.

use std::fmt;
use std::io;

use crate::crc32::crc32;

/// A GUID in the byte order GPT stores it: the first three fields little-endian
/// ("mixed-endian"), the last eight bytes as written.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid([u8; 16]);

/// Discoverable Partitions Specification: root partition type for x86-64.
pub const ROOT_X86_64: Guid = Guid::from_fields(
    0x4f68_bce3,
    0xe8cd,
    0x4db1,
    [0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09],
);

/// Discoverable Partitions Specification: root partition type for 64-bit ARM.
pub const ROOT_ARM64: Guid = Guid::from_fields(
    0xb921_b045,
    0x1df0,
    0x41c3,
    [0xaf, 0x44, 0x4c, 0x6f, 0x28, 0x0d, 0x3f, 0xae],
);

/// Discoverable Partitions Specification: root verity partition type for x86-64.
pub const ROOT_VERITY_X86_64: Guid = Guid::from_fields(
    0x2c73_57ed,
    0xebd2,
    0x46d9,
    [0xae, 0xc1, 0x23, 0xd4, 0x37, 0xec, 0x2b, 0xf5],
);

/// Discoverable Partitions Specification: root verity partition type for 64-bit ARM.
pub const ROOT_VERITY_ARM64: Guid = Guid::from_fields(
    0xdf33_00ce,
    0xd69f,
    0x4c92,
    [0x97, 0x8c, 0x9b, 0xfb, 0x0f, 0x38, 0xd8, 0x20],
);

/// The EFI system partition type, C12A7328-F81F-11D2-BA4B-00A0C93EC93B.
pub const ESP_TYPE: Guid = Guid::from_fields(
    0xc12a_7328,
    0xf81f,
    0x11d2,
    [0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b],
);

/// Discoverable Partitions Specification: variable data partition, mounted on /var.
pub const VAR_TYPE: Guid = Guid::from_fields(
    0x4d21_b016,
    0xb534,
    0x45c2,
    [0xa9, 0xfb, 0x5c, 0x16, 0xe0, 0x91, 0xfd, 0x2d],
);

/// The root partition type of the architecture this binary was built for.
pub fn native_root_type() -> Guid {
    if cfg!(target_arch = "aarch64") {
        ROOT_ARM64
    } else {
        ROOT_X86_64
    }
}

/// Why a GUID string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuidParseError(pub String);

impl fmt::Display for GuidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a GUID (expected 8-4-4-4-12 hex digits, e.g. \
             4f68bce3-e8cd-4db1-96e7-fbcaf984b709)",
            self.0
        )
    }
}

impl Guid {
    /// A GUID from its 16 bytes as found on disk.
    pub const fn from_disk_bytes(bytes: [u8; 16]) -> Self {
        Guid(bytes)
    }

    /// A GUID from its textual fields (`d1-d2-d3-d4[0..2]-d4[2..8]`).
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// The 16 bytes in on-disk order.
    pub fn disk_bytes(&self) -> [u8; 16] {
        self.0
    }

    /// True for the all-zero GUID, which marks an unused partition entry.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// Parses the usual `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` form, any case.
    pub fn parse(text: &str) -> Result<Self, GuidParseError> {
        let err = || GuidParseError(text.to_string());
        let groups: Vec<&str> = text.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != lens.len()
            || groups
                .iter()
                .zip(lens)
                .any(|(g, l)| g.len() != l || !g.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(err());
        }
        let hex: String = groups.concat();
        let mut text_order = [0u8; 16];
        for (i, byte) in text_order.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        let t = text_order;
        Ok(Guid::from_fields(
            u32::from_be_bytes([t[0], t[1], t[2], t[3]]),
            u16::from_be_bytes([t[4], t[5]]),
            u16::from_be_bytes([t[6], t[7]]),
            [t[8], t[9], t[10], t[11], t[12], t[13], t[14], t[15]],
        ))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        for byte in &b[10..] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Attribute bit 63 in the Discoverable Partitions Specification: "do not mount
/// automatically".
pub const ATTR_NO_AUTO: u64 = 1 << 63;

/// One used entry of the partition entry array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// Position in the entry array, from 0. The kernel names the partition `index + 1`.
    pub index: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID (the PARTUUID).
    pub part_guid: Guid,
    /// First LBA of the partition.
    pub first_lba: u64,
    /// Last LBA of the partition (inclusive).
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
    /// Partition name (UTF-16LE on disk, up to 36 code units).
    pub name: String,
}

impl GptEntry {
    /// The partition number the kernel gives this entry (`vda2` for index 1).
    pub fn number(&self) -> u32 {
        self.index + 1
    }
}

/// A validated partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    /// Disk GUID from the header.
    pub disk_guid: Guid,
    /// The used entries (non-nil type), in array order.
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
    /// No "EFI PART" signature: the disk is not GPT-partitioned (or is blank).
    NoSignature,
    /// The header is present but unusable.
    BadHeader(String),
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::Io { what, err } => write!(f, "reading the {what}: {err}"),
            GptError::NoSignature => write!(f, "no GPT"),
            GptError::BadHeader(why) => write!(f, "damaged GPT: {why}"),
        }
    }
}

/// Size of the header fields the CRC covers in revision 1.0.
const HEADER_MIN: usize = 92;
/// Upper bound on the entry array we are willing to read (the usual one is 16 KiB).
const MAX_ARRAY_BYTES: u64 = 4 << 20;

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Guid(a)
}

/// The header fields the reader uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptHeader {
    /// Bytes of the header the CRC covers (92 in revision 1.0).
    pub header_size: u32,
    /// LBA of this header (1 for the primary).
    pub my_lba: u64,
    /// LBA of the other copy.
    pub alternate_lba: u64,
    /// First LBA a partition may use.
    pub first_usable_lba: u64,
    /// Last LBA a partition may use.
    pub last_usable_lba: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// LBA where the entry array starts.
    pub entries_lba: u64,
    /// Number of entries in the array.
    pub num_entries: u32,
    /// Size of one entry in bytes.
    pub entry_size: u32,
    /// CRC32 of the whole array.
    pub entries_crc: u32,
}

impl GptHeader {
    /// Bytes of the entry array.
    pub fn array_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }
}

/// Parses and checks one header sector found at `lba`.
pub fn parse_header(sector: &[u8], lba: u64) -> Result<GptHeader, GptError> {
    if sector.len() < HEADER_MIN || &sector[0..8] != b"EFI PART" {
        return Err(GptError::NoSignature);
    }
    let bad = |why: String| Err(GptError::BadHeader(why));
    let size = le_u32(sector, 12) as usize;
    if size < HEADER_MIN || size > sector.len() {
        return bad(format!(
            "header size {size} is outside 92..={}",
            sector.len()
        ));
    }
    let stored = le_u32(sector, 16);
    let mut copy = sector[..size].to_vec();
    copy[16..20].fill(0);
    let computed = crc32(&copy);
    if stored != computed {
        return bad(format!(
            "header CRC32 is {stored:#010x} but the header hashes to {computed:#010x}"
        ));
    }
    let header = GptHeader {
        header_size: size as u32,
        my_lba: le_u64(sector, 24),
        alternate_lba: le_u64(sector, 32),
        first_usable_lba: le_u64(sector, 40),
        last_usable_lba: le_u64(sector, 48),
        disk_guid: guid_at(sector, 56),
        entries_lba: le_u64(sector, 72),
        num_entries: le_u32(sector, 80),
        entry_size: le_u32(sector, 84),
        entries_crc: le_u32(sector, 88),
    };
    if header.my_lba != lba {
        return bad(format!(
            "header at LBA {lba} says it is at LBA {}",
            header.my_lba
        ));
    }
    if header.entry_size < 128 || header.entry_size % 8 != 0 {
        return bad(format!(
            "partition entry size {} is invalid",
            header.entry_size
        ));
    }
    if header.array_bytes() > MAX_ARRAY_BYTES {
        return bad(format!(
            "{} entries of {} bytes is more than the {MAX_ARRAY_BYTES}-byte limit",
            header.num_entries, header.entry_size
        ));
    }
    Ok(header)
}

/// Checks the entry array against the header's CRC and returns the used entries.
pub fn parse_entries(header: &GptHeader, array: &[u8]) -> Result<Vec<GptEntry>, GptError> {
    let len = header.array_bytes() as usize;
    if array.len() < len {
        return Err(GptError::BadHeader(format!(
            "partition entry array is {} bytes, expected {len}",
            array.len()
        )));
    }
    let array = &array[..len];
    let computed = crc32(array);
    if computed != header.entries_crc {
        return Err(GptError::BadHeader(format!(
            "entry array CRC32 is {:#010x} but the array hashes to {computed:#010x}",
            header.entries_crc
        )));
    }
    let mut out = Vec::new();
    for (index, raw) in array.chunks_exact(header.entry_size as usize).enumerate() {
        let type_guid = guid_at(raw, 0);
        if type_guid.is_nil() {
            continue;
        }
        let units: Vec<u16> = raw[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(GptEntry {
            index: index as u32,
            type_guid,
            part_guid: guid_at(raw, 16),
            first_lba: le_u64(raw, 32),
            last_lba: le_u64(raw, 40),
            attributes: le_u64(raw, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
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
    pub header: GptHeader,
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
    let header = parse_header(&sector, lba)?;
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
/// usable LBA and entry geometry; the given position fields; reserved bytes zeroed and
/// the CRC recomputed.
fn encode_header(
    table: &RawTable,
    my_lba: u64,
    alternate_lba: u64,
    last_usable_lba: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let size = table.header.header_size as usize;
    let mut h = table.header_sector.clone();
    h[24..32].copy_from_slice(&my_lba.to_le_bytes());
    h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
    h[48..56].copy_from_slice(&last_usable_lba.to_le_bytes());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    h[size..].fill(0);
    h[16..20].fill(0);
    let crc = crc32(&h[..size]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The on-disk form of one entry, `entry_size` bytes long (the name is cut at GPT's
/// 36 UTF-16 code units).
pub fn encode_entry(entry: &GptEntry, entry_size: usize) -> Vec<u8> {
    let mut e = vec![0u8; entry_size.max(128)];
    e[0..16].copy_from_slice(&entry.type_guid.disk_bytes());
    e[16..32].copy_from_slice(&entry.part_guid.disk_bytes());
    e[32..40].copy_from_slice(&entry.first_lba.to_le_bytes());
    e[40..48].copy_from_slice(&entry.last_lba.to_le_bytes());
    e[48..56].copy_from_slice(&entry.attributes.to_le_bytes());
    for (i, unit) in entry.name.encode_utf16().take(36).enumerate() {
        e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
    }
    e
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
    if mbr.len() < 512 || mbr[510..512] != [0x55, 0xAA] || mbr[446 + 4] != 0xEE {
        return None;
    }
    if mbr[462..510].iter().any(|&b| b != 0) {
        return None;
    }
    let size = u32::try_from(disk_sectors - 1).unwrap_or(u32::MAX);
    if le_u32(mbr, 446 + 12) == size {
        return None;
    }
    let mut out = mbr.clone();
    out[446 + 12..446 + 16].copy_from_slice(&size.to_le_bytes());
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
    if let Some(e) = table.entries.iter().find(|e| e.type_guid == VAR_TYPE) {
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
        type_guid: VAR_TYPE,
        part_guid,
        first_lba: first,
        last_lba: last_usable,
        attributes: 0,
        name: VAR_NAME.to_string(),
    };
    let size = h.entry_size as usize;
    let mut array = table.array.clone();
    let at = index as usize * size;
    array[at..at + size].copy_from_slice(&encode_entry(&entry, size));
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
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal valid GPT image in memory (primary and backup).
    pub(crate) fn build_image(
        sector: usize,
        total_sectors: u64,
        parts: &[(u32, Guid, Guid, &str)],
    ) -> Vec<u8> {
        let mut img = vec![0u8; sector * total_sectors as usize];
        let num_entries = 128u32;
        let entry_size = 128u32;
        let array_len = (num_entries * entry_size) as usize;
        let mut array = vec![0u8; array_len];
        for (index, ty, uuid, name) in parts {
            let e = &mut array[*index as usize * 128..][..128];
            e[0..16].copy_from_slice(&ty.disk_bytes());
            e[16..32].copy_from_slice(&uuid.disk_bytes());
            e[32..40].copy_from_slice(&(100u64 + u64::from(*index) * 10).to_le_bytes());
            e[40..48].copy_from_slice(&(109u64 + u64::from(*index) * 10).to_le_bytes());
            for (i, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
            }
        }
        let array_sectors = array_len.div_ceil(sector) as u64;
        let write_header = |img: &mut Vec<u8>, my: u64, alt: u64, entries_lba: u64| {
            let mut h = vec![0u8; 92];
            h[0..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&my.to_le_bytes());
            h[32..40].copy_from_slice(&alt.to_le_bytes());
            h[40..48].copy_from_slice(&(2 + array_sectors).to_le_bytes());
            h[48..56].copy_from_slice(&(total_sectors - 2 - array_sectors).to_le_bytes());
            h[56..72].copy_from_slice(
                &Guid::parse("11111111-2222-3333-4444-555555555555")
                    .unwrap()
                    .disk_bytes(),
            );
            h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
            h[80..84].copy_from_slice(&num_entries.to_le_bytes());
            h[84..88].copy_from_slice(&entry_size.to_le_bytes());
            h[88..92].copy_from_slice(&crc32(&array).to_le_bytes());
            let c = crc32(&h);
            h[16..20].copy_from_slice(&c.to_le_bytes());
            let at = my as usize * sector;
            img[at..at + 92].copy_from_slice(&h);
            let at = entries_lba as usize * sector;
            img[at..at + array_len].copy_from_slice(&array);
        };
        let last = total_sectors - 1;
        write_header(&mut img, 1, last, 2);
        write_header(&mut img, last, 1, last - array_sectors);
        img
    }

    fn reader(img: &[u8]) -> impl FnMut(u64, usize) -> io::Result<Vec<u8>> + '_ {
        move |off, len| {
            let off = off as usize;
            img.get(off..off + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        }
    }

    #[test]
    fn guid_text_round_trips_through_mixed_endian_bytes() {
        let g = Guid::parse("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709").unwrap();
        assert_eq!(g, ROOT_X86_64);
        // On disk the first three fields are little-endian, the rest as written.
        assert_eq!(
            g.disk_bytes(),
            [
                0xe3, 0xbc, 0x68, 0x4f, 0xcd, 0xe8, 0xb1, 0x4d, 0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84,
                0xb7, 0x09
            ]
        );
        assert_eq!(g.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        assert_eq!(
            ROOT_ARM64.to_string(),
            "b921b045-1df0-41c3-af44-4c6f280d3fae"
        );
        assert!(Guid::from_disk_bytes([0; 16]).is_nil());
    }

    #[test]
    fn guid_parse_rejects_malformed_text() {
        for bad in [
            "",
            "4f68bce3e8cd4db196e7fbcaf984b709",
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b70",
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b7090",
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b70g",
            "4f68bce3-e8cd-4db1-96e7fbcaf984b709-",
            "+f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        ] {
            assert!(Guid::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = Guid::parse("nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\" is not a GUID"), "{e}");
    }

    #[test]
    fn parses_a_built_table() {
        let uuid = Guid::parse("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        let esp = Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap();
        let img = build_image(
            512,
            256,
            &[(0, esp, esp, "esp"), (2, ROOT_X86_64, uuid, "root")],
        );
        let gpt = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
        assert!(!gpt.from_backup);
        assert_eq!(gpt.entries.len(), 2);
        let root = &gpt.entries[1];
        assert_eq!(root.index, 2);
        assert_eq!(root.number(), 3);
        assert_eq!(root.type_guid, ROOT_X86_64);
        assert_eq!(root.part_guid, uuid);
        assert_eq!(root.name, "root");
        assert_eq!((root.first_lba, root.last_lba), (120, 129));
    }

    #[test]
    fn falls_back_to_the_backup_header_and_reports_bad_crcs() {
        let uuid = Guid::parse("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        let mut img = build_image(512, 256, &[(0, ROOT_ARM64, uuid, "root")]);
        // Flip a byte of the primary header's disk GUID: its CRC no longer matches.
        img[512 + 60] ^= 0xff;
        let header = parse_header(&img[512..1024], 1).unwrap_err().to_string();
        assert!(header.contains("header CRC32"), "{header}");
        let gpt = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
        assert!(gpt.from_backup);
        assert_eq!(gpt.entries[0].part_guid, uuid);
        // Without the disk size there is no backup to go to.
        let err = read_gpt(&mut reader(&img), 512, None).unwrap_err();
        assert!(matches!(err, GptError::BadHeader(_)), "{err}");

        // A damaged entry array is caught by its own CRC.
        let mut img = build_image(512, 256, &[(0, ROOT_ARM64, uuid, "root")]);
        img[2 * 512 + 20] ^= 1;
        let h = parse_header(&img[512..1024], 1).unwrap();
        let e = parse_entries(&h, &img[1024..1024 + 16384])
            .unwrap_err()
            .to_string();
        assert!(e.contains("entry array CRC32"), "{e}");
    }

    #[test]
    fn a_blank_disk_has_no_gpt() {
        let img = vec![0u8; 512 * 64];
        let err = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap_err();
        assert!(matches!(err, GptError::NoSignature));
        let short = vec![0u8; 100];
        let err = read_gpt(&mut reader(&short), 512, None).unwrap_err();
        assert!(err.to_string().contains("reading the GPT header"), "{err}");
    }

    #[test]
    fn header_limits_are_enforced() {
        let img = build_image(512, 256, &[]);
        let mut h = img[512..1024].to_vec();
        h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
        h[16..20].fill(0);
        let c = crc32(&h[..92]);
        h[16..20].copy_from_slice(&c.to_le_bytes());
        let e = parse_header(&h, 1).unwrap_err().to_string();
        assert!(e.contains("limit"), "{e}");
        let e = parse_header(&img[512..1024], 7).unwrap_err().to_string();
        assert!(e.contains("says it is at LBA 1"), "{e}");
    }

    /// An independent writer: sgdisk makes the table, our reader must agree with it.
    #[test]
    fn reads_a_table_written_by_sgdisk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let part_uuid = "6a3b1c2d-1111-4222-8333-944455556666";
        let status = std::process::Command::new("sgdisk")
            .arg("-n")
            .arg("1:0:+2M")
            .arg("-t")
            .arg("1:ef00")
            .arg("-n")
            .arg("2:0:+4M")
            .arg("-t")
            .arg("2:b921b045-1df0-41c3-af44-4c6f280d3fae")
            .arg("-n")
            .arg("3:0:0")
            .arg("-t")
            .arg(format!("3:{ROOT_X86_64}"))
            .arg("-u")
            .arg(format!("3:{part_uuid}"))
            .arg("-c")
            .arg("3:root-x86-64")
            .arg(&path)
            .output()
            .expect("sgdisk is installed");
        assert!(status.status.success(), "{status:?}");
        let img = std::fs::read(&path).unwrap();
        let gpt = read_gpt(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
        assert_eq!(gpt.entries.len(), 3);
        let root = gpt
            .entries
            .iter()
            .find(|e| e.type_guid == ROOT_X86_64)
            .unwrap();
        assert_eq!(root.index, 2);
        assert_eq!(root.number(), 3);
        assert_eq!(root.part_guid.to_string(), part_uuid);
        assert_eq!(root.name, "root-x86-64");
        assert_eq!(gpt.entries[1].type_guid, ROOT_ARM64);
        // And the backup copy sgdisk wrote is read the same way.
        let mut damaged = img.clone();
        damaged[512..1024].fill(0xaa);
        let backup = read_gpt(&mut reader(&damaged), 512, Some(img.len() as u64)).unwrap();
        assert!(backup.from_backup);
        assert_eq!(backup.entries, gpt.entries);
    }

    fn esp() -> Guid {
        Guid::parse("c12a7328-f81f-11d2-ba4b-00a0c93ec93b").unwrap()
    }

    fn var_guid() -> Guid {
        Guid::parse("9a8b7c6d-1234-4321-8abc-0123456789ab").unwrap()
    }

    /// An image laid out like the builder's (ESP, root, root-verity) written to a disk of
    /// `disk_sectors`: the image's backup GPT is at its old end, zeros after it.
    fn written_to_bigger_disk(image_sectors: u64, disk_sectors: u64) -> Vec<u8> {
        let uuid = Guid::parse("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        let mut img = build_image(
            512,
            image_sectors,
            &[
                (0, esp(), esp(), "esp"),
                (1, ROOT_X86_64, uuid, "root-x86-64"),
                (2, ROOT_ARM64, uuid, "root-x86-64-verity"),
            ],
        );
        // A protective MBR covering the image, as the builder writes it.
        img[446 + 4] = 0xEE;
        img[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        img[446 + 12..446 + 16].copy_from_slice(&((image_sectors - 1) as u32).to_le_bytes());
        img[510] = 0x55;
        img[511] = 0xAA;
        img.resize(disk_sectors as usize * 512, 0);
        img
    }

    fn table_of(img: &[u8]) -> RawTable {
        read_table(&mut reader(img), 512, Some(img.len() as u64)).unwrap()
    }

    fn apply(img: &mut [u8], writes: &[DiskWrite]) {
        for w in writes {
            img[w.offset as usize..][..w.bytes.len()].copy_from_slice(&w.bytes);
        }
    }

    fn grow(img: &[u8], min: u64) -> VarGrowth {
        match plan_var(&table_of(img), img.len() as u64 / 512, min, var_guid()).unwrap() {
            VarLayout::Grow(g) => g,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plans_var_in_the_space_after_the_last_partition() {
        // A 4 MiB image on a 16 MiB disk.
        let mut img = written_to_bigger_disk(8192, 32768);
        let g = grow(&img, 1 << 20);
        assert_eq!(g.entry.index, 3);
        assert_eq!(g.entry.number(), 4);
        assert_eq!(g.entry.type_guid, VAR_TYPE);
        assert_eq!(g.entry.part_guid, var_guid());
        assert_eq!(g.entry.name, "var");
        // The parts end at LBA 129: the next MiB boundary; up to the disk end - 34.
        assert_eq!((g.entry.first_lba, g.entry.last_lba), (2048, 32768 - 34));
        assert_eq!(g.last_lba, 32767);
        let offsets = |w: &[DiskWrite]| w.iter().map(|w| (w.what, w.offset)).collect::<Vec<_>>();
        assert_eq!(
            offsets(&g.backup),
            [
                ("backup GPT entry array", (32767 - 32) * 512),
                ("backup GPT header", 32767 * 512)
            ]
        );
        assert_eq!(
            offsets(&g.primary),
            [
                ("protective MBR", 0),
                ("primary GPT entry array", 1024),
                ("primary GPT header", 512)
            ]
        );
        assert_eq!(
            offsets(&g.wipe),
            [("zeros over the old backup GPT header", 8191 * 512)]
        );

        for step in [&g.backup, &g.primary, &g.wipe] {
            apply(&mut img, step);
        }
        let t = table_of(&img);
        assert!(!t.from_backup);
        assert_eq!(t.entries.len(), 4);
        assert_eq!(t.entries[3], g.entry);
        assert_eq!(t.header.alternate_lba, 32767);
        assert_eq!(t.header.last_usable_lba, 32768 - 34);
        assert_eq!(t.header.first_usable_lba, 34);
        assert_eq!(le_u32(&img, 446 + 12), 32767);
        assert!(img[8191 * 512..8192 * 512].iter().all(|&b| b == 0));
        // The new backup is complete on its own.
        let mut no_primary = img.clone();
        no_primary[512..1024].fill(0);
        let b = table_of(&no_primary);
        assert!(b.from_backup);
        assert_eq!(b.entries, t.entries);
        assert_eq!((b.header.my_lba, b.header.alternate_lba), (32767, 1));
        assert_eq!(b.header.entries_lba, 32767 - 32);
        // Done once: the next boot finds it and writes nothing.
        let again = plan_var(&t, 32768, 1 << 20, var_guid()).unwrap();
        assert_eq!(again, VarLayout::Existing(g.entry));
    }

    #[test]
    fn power_loss_after_any_step_leaves_a_valid_table_and_the_rerun_finishes() {
        let fresh = written_to_bigger_disk(8192, 32768);
        let g = grow(&fresh, 1 << 20);

        // After step 1: the old primary and its old backup are untouched.
        let mut img = fresh.clone();
        apply(&mut img, &g.backup);
        let t = table_of(&img);
        assert!(!t.from_backup);
        assert_eq!(t.entries.len(), 3);
        assert_eq!(t.header.alternate_lba, 8191);
        let mut only_old_backup = img.clone();
        only_old_backup[512..1024].fill(0);
        let old = read_table(&mut reader(&only_old_backup), 512, Some(8192 * 512)).unwrap();
        assert_eq!(old.entries.len(), 3);
        // The rerun plans the same partition and ends like an uninterrupted run.
        let g2 = grow(&img, 1 << 20);
        assert_eq!(g2.entry, g.entry);
        for step in [&g2.backup, &g2.primary, &g2.wipe] {
            apply(&mut img, step);
        }
        let mut clean = fresh.clone();
        for step in [&g.backup, &g.primary, &g.wipe] {
            apply(&mut clean, step);
        }
        assert!(img == clean, "rerun after step 1 differs from a clean run");

        // Torn step 2: the new primary array is there, its header is not. The primary no
        // longer matches its CRC; the backup at the disk's end has the var partition.
        let mut img = fresh.clone();
        apply(&mut img, &g.backup);
        apply(&mut img, &g.primary[..2]);
        let t = table_of(&img);
        assert!(t.from_backup);
        assert_eq!(t.entries.len(), 4);
        let repair = plan_primary_repair(&t).unwrap();
        apply(&mut img, &repair);
        let t = table_of(&img);
        assert!(!t.from_backup);
        assert_eq!(t.entries[3], g.entry);
        assert_eq!(t.header.alternate_lba, 32767);
        assert_eq!(plan_primary_repair(&t).unwrap(), vec![]);
        assert!(matches!(
            plan_var(&t, 32768, 1 << 20, var_guid()).unwrap(),
            VarLayout::Existing(_)
        ));

        // After step 2, before step 3: complete; the stale header is unreachable.
        let mut img = fresh.clone();
        apply(&mut img, &g.backup);
        apply(&mut img, &g.primary);
        let t = table_of(&img);
        assert!(!t.from_backup && t.entries.len() == 4);
    }

    #[test]
    fn an_image_with_free_space_grows_without_a_bigger_disk() {
        // A 4 MiB image on a disk of exactly that size: 2 MiB free inside the image.
        let mut img = written_to_bigger_disk(8192, 8192);
        let g = grow(&img, 1 << 20);
        assert_eq!((g.entry.first_lba, g.entry.last_lba), (2048, 8192 - 34));
        // The backup is rewritten in place; there is no old one elsewhere to wipe, and
        // the protective MBR already covers the disk.
        assert!(g.wipe.is_empty());
        assert_eq!(g.primary.len(), 2);
        for step in [&g.backup, &g.primary] {
            apply(&mut img, step);
        }
        assert_eq!(table_of(&img).entries.len(), 4);
    }

    #[test]
    fn no_room_says_how_big_the_disk_must_be() {
        let img = written_to_bigger_disk(8192, 8192);
        let t = table_of(&img);
        match plan_var(&t, 8192, 256 << 20, var_guid()).unwrap() {
            VarLayout::NoRoom(n) => {
                assert_eq!(n.free_bytes, (8192 - 34 - 2048 + 1) * 512);
                assert_eq!(n.needed_bytes, 256 << 20);
                // 1 MiB before var, 256 MiB of var, the backup GPT: 258 MiB.
                assert_eq!(n.min_disk_bytes, 258 << 20);
                assert!(!n.entries_full);
            }
            other => panic!("{other:?}"),
        }
        // No space at all after the last partition (and var_min 0 still needs 1 MiB).
        let img = written_to_bigger_disk(2048, 2048);
        match plan_var(&table_of(&img), 2048, 0, var_guid()).unwrap() {
            VarLayout::NoRoom(n) => {
                assert_eq!(n.free_bytes, 0);
                assert_eq!(n.needed_bytes, 1 << 20);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_entry_array_and_a_too_small_disk_are_refused() {
        let names: Vec<String> = (0..128).map(|i| format!("p{i}")).collect();
        let parts: Vec<(u32, Guid, Guid, &str)> = (0..128u32)
            .map(|i| (i, esp(), esp(), names[i as usize].as_str()))
            .collect();
        let mut img = build_image(512, 4096, &parts);
        img.resize(65536 * 512, 0);
        match plan_var(&table_of(&img), 65536, 1 << 20, var_guid()).unwrap() {
            VarLayout::NoRoom(n) => assert!(n.entries_full),
            other => panic!("{other:?}"),
        }

        // A table whose partitions reach past the disk's end.
        let img = written_to_bigger_disk(8192, 8192);
        let e = plan_var(&table_of(&img), 150, 0, var_guid()).unwrap_err();
        assert!(e.0.contains("smaller than the image"), "{e}");
        let e = plan_var(&table_of(&img), 40, 0, var_guid()).unwrap_err();
        assert!(e.0.contains("too few for a GPT"), "{e}");
    }

    #[test]
    fn an_existing_var_partition_is_used_as_is() {
        let mut img = written_to_bigger_disk(8192, 32768);
        let g = grow(&img, 1 << 20);
        for step in [&g.backup, &g.primary, &g.wipe] {
            apply(&mut img, step);
        }
        // Even on a disk that grew again, and with a huge minimum.
        img.resize(65536 * 512, 0);
        let t = read_table(&mut reader(&img), 512, Some(img.len() as u64)).unwrap();
        assert_eq!(
            plan_var(&t, 65536, 1 << 40, var_guid()).unwrap(),
            VarLayout::Existing(g.entry)
        );
    }

    #[test]
    fn four_k_sectors_align_to_a_mebibyte_too() {
        let uuid = Guid::parse("01234567-89ab-cdef-0123-456789abcdef").unwrap();
        let mut img = build_image(4096, 1024, &[(0, ROOT_X86_64, uuid, "root")]);
        img.resize(4096 * 4096, 0);
        let t = read_table(&mut reader(&img), 4096, Some(img.len() as u64)).unwrap();
        let VarLayout::Grow(g) = plan_var(&t, 4096, 1 << 20, var_guid()).unwrap() else {
            panic!()
        };
        // 128 entries of 128 bytes are 4 sectors of 4 KiB; 256 sectors per MiB.
        assert_eq!((g.entry.first_lba, g.entry.last_lba), (256, 4096 - 6));
        for step in [&g.backup, &g.primary, &g.wipe] {
            for w in step {
                img[w.offset as usize..][..w.bytes.len()].copy_from_slice(&w.bytes);
            }
        }
        let t = read_table(&mut reader(&img), 4096, Some(img.len() as u64)).unwrap();
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.header.alternate_lba, 4095);
    }

    #[test]
    fn entries_encode_like_the_reader_reads_them() {
        let e = GptEntry {
            index: 5,
            type_guid: VAR_TYPE,
            part_guid: var_guid(),
            first_lba: 2048,
            last_lba: 4095,
            attributes: ATTR_NO_AUTO,
            name: "a-very-long-partition-name-that-is-cut-at-36".to_string(),
        };
        let raw = encode_entry(&e, 128);
        assert_eq!(raw.len(), 128);
        assert_eq!(VAR_TYPE.to_string(), "4d21b016-b534-45c2-a9fb-5c16e091fd2d");
        let mut array = vec![0u8; 128 * 8];
        array[5 * 128..6 * 128].copy_from_slice(&raw);
        let h = GptHeader {
            header_size: 92,
            my_lba: 1,
            alternate_lba: 9,
            first_usable_lba: 34,
            last_usable_lba: 5000,
            disk_guid: var_guid(),
            entries_lba: 2,
            num_entries: 8,
            entry_size: 128,
            entries_crc: crc32(&array),
        };
        let back = parse_entries(&h, &array).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].name, "a-very-long-partition-name-that-is-c");
        assert_eq!(
            GptEntry {
                name: e.name[..36].to_string(),
                ..e
            },
            back[0]
        );
    }
}
