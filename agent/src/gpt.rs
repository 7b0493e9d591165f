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
    #[cfg(test)]
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
    #[cfg(test)]
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
    /// LBA of this header (1 for the primary).
    pub my_lba: u64,
    /// LBA of the other copy.
    pub alternate_lba: u64,
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
        my_lba: le_u64(sector, 24),
        alternate_lba: le_u64(sector, 32),
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
    let primary = read_copy(read_at, sector_size, 1);
    let primary_err = match primary {
        Ok((disk_guid, entries)) => {
            return Ok(Gpt {
                disk_guid,
                entries,
                from_backup: false,
            })
        }
        Err(e) => e,
    };
    let last_lba = match disk_bytes {
        Some(bytes) if bytes / sector_size > 2 => bytes / sector_size - 1,
        _ => return Err(primary_err),
    };
    match read_copy(read_at, sector_size, last_lba) {
        Ok((disk_guid, entries)) => Ok(Gpt {
            disk_guid,
            entries,
            from_backup: true,
        }),
        // The primary's error is the informative one: a blank disk has neither.
        Err(_) => Err(primary_err),
    }
}

fn read_copy(
    read_at: &mut dyn FnMut(u64, usize) -> io::Result<Vec<u8>>,
    sector_size: u64,
    lba: u64,
) -> Result<(Guid, Vec<GptEntry>), GptError> {
    let sector = read_at(lba * sector_size, sector_size as usize).map_err(|err| GptError::Io {
        what: "GPT header",
        err,
    })?;
    let header = parse_header(&sector, lba)?;
    let array = read_at(
        header.entries_lba.saturating_mul(sector_size),
        header.array_bytes() as usize,
    )
    .map_err(|err| GptError::Io {
        what: "GPT partition entry array",
        err,
    })?;
    let entries = parse_entries(&header, &array)?;
    Ok((header.disk_guid, entries))
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
}
