//! GPT (UEFI specification, chapter 5) as kiln writes and reads it: GUIDs, the
//! partition type GUIDs kiln uses, the header, the entries and the protective MBR.
//!
//! Everything here is bytes in, bytes out. Readers bound every field that sizes a read
//! ([`MAX_ARRAY_BYTES`]) so a damaged disk cannot make the agent's init allocate
//! wildly; writers produce exactly what `sgdisk -v` and the kernel accept.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::crc32::crc32;
use crate::le::{put_u32, put_u64, u16_at, u32_at, u64_at};

/// "EFI PART": the first bytes of a GPT header.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Header revision 1.0, the only one there is.
pub const REVISION_1_0: u32 = 0x0001_0000;
/// Bytes of a revision 1.0 header (the part its CRC covers).
pub const HEADER_SIZE: u32 = 92;
/// The smallest entry size the specification allows (and the one everybody uses).
pub const MIN_ENTRY_SIZE: u32 = 128;
/// Longest partition name, in UTF-16 code units (72 bytes at entry offset 56).
pub const NAME_MAX_UNITS: usize = 36;
/// The largest entry array a reader accepts (the usual one is 16 KiB).
pub const MAX_ARRAY_BYTES: u64 = 4 << 20;
/// The partition type byte of a protective MBR's one entry.
pub const MBR_PROTECTIVE_TYPE: u8 = 0xEE;

/// A GUID, kept in its textual byte order (`00112233-4455-...` is
/// `[0x00, 0x11, 0x22, 0x33, 0x44, 0x55, ...]`).
///
/// GPT stores the first three fields little-endian ("mixed-endian"): use
/// [`Guid::to_gpt_bytes`] and [`Guid::from_gpt_bytes`] for the on-disk form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Guid([u8; 16]);

impl Guid {
    /// The all-zero GUID, which marks an unused partition entry.
    pub const ZERO: Guid = Guid([0; 16]);

    /// A GUID from its 128-bit value as written (`0xc12a7328_f81f_...`).
    pub const fn from_u128(v: u128) -> Guid {
        Guid(v.to_be_bytes())
    }

    /// A GUID from its bytes in textual order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// The bytes in textual order.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Whether this is the all-zero GUID.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The mixed-endian form GPT (and EFI in general) stores on disk.
    pub const fn to_gpt_bytes(&self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// Reads the mixed-endian on-disk form.
    pub const fn from_gpt_bytes(raw: &[u8; 16]) -> Guid {
        // The swap is its own inverse.
        Guid(Guid(*raw).to_gpt_bytes())
    }

    /// The GUID stored at byte `at` of `b` (mixed-endian, as GPT stores them).
    pub fn gpt_at(b: &[u8], at: usize) -> Guid {
        let mut raw = [0u8; 16];
        raw.copy_from_slice(&b[at..at + 16]);
        Guid::from_gpt_bytes(&raw)
    }

    /// A version-4 / variant-1 GUID derived from `seed` and a domain string, so that the
    /// same inputs always give the same GUID and different roles never collide.
    pub fn derive(seed: &[u8; 32], domain: &str) -> Guid {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(domain.as_bytes());
        let digest = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }
}

impl From<[u8; 16]> for Guid {
    fn from(b: [u8; 16]) -> Guid {
        Guid(b)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// A string that is not a GUID in 8-4-4-4-12 hex form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a GUID: expected 8-4-4-4-12 hex digits like c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
)]
pub struct GuidParseError(pub String);

impl FromStr for Guid {
    type Err = GuidParseError;

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, any case.
    fn from_str(s: &str) -> Result<Guid, GuidParseError> {
        let err = || GuidParseError(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] || !groups.concat().bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        let hex: String = groups.concat();
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *out = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(Guid(b))
    }
}

/// Partition type GUIDs: UEFI's, and the Discoverable Partitions Specification's
/// (which is how kiln's init and systemd find the root, its verity and `var`).
pub mod types {
    use super::Guid;

    /// The EFI System Partition.
    pub const ESP: Guid = Guid::from_u128(0xc12a7328_f81f_11d2_ba4b_00a0c93ec93b);
    /// DPS: root partition, x86-64.
    pub const ROOT_X86_64: Guid = Guid::from_u128(0x4f68bce3_e8cd_4db1_96e7_fbcaf984b709);
    /// DPS: root partition, 64-bit ARM.
    pub const ROOT_ARM64: Guid = Guid::from_u128(0xb921b045_1df0_41c3_af44_4c6f280d3fae);
    /// DPS: root verity (hash tree) partition, x86-64.
    pub const ROOT_VERITY_X86_64: Guid = Guid::from_u128(0x2c7357ed_ebd2_46d9_aec1_23d437ec2bf5);
    /// DPS: root verity (hash tree) partition, 64-bit ARM.
    pub const ROOT_VERITY_ARM64: Guid = Guid::from_u128(0xdf3300ce_d69f_4c92_978c_9bfb0f38d820);
    /// DPS: variable data, mounted on /var.
    pub const VAR: Guid = Guid::from_u128(0x4d21b016_b534_45c2_a9fb_5c16e091fd2d);
    /// Generic Linux file system data.
    pub const LINUX_DATA: Guid = Guid::from_u128(0x0fc63daf_8483_4772_8e79_3d69d8477de4);
    /// Linux swap.
    pub const SWAP: Guid = Guid::from_u128(0x0657fd6d_a4ab_43c4_84e5_0933c84b4f4f);
    /// DPS: extended boot loader partition (XBOOTLDR).
    pub const XBOOTLDR: Guid = Guid::from_u128(0xbc13c2ff_59e6_4262_a352_b275fd6f7172);
    /// A BIOS boot partition (GRUB's core image on GPT).
    pub const BIOS_BOOT: Guid = Guid::from_u128(0x21686148_6449_6e6f_744e_656564454649);

    /// Every type above: the GUID, a short identifier (as the DPS names them) and a
    /// name for people.
    pub const KNOWN: [(Guid, &str, &str); 10] = [
        (ESP, "esp", "EFI System"),
        (ROOT_X86_64, "root-x86-64", "Linux root (x86-64)"),
        (ROOT_ARM64, "root-arm64", "Linux root (ARM64)"),
        (
            ROOT_VERITY_X86_64,
            "root-x86-64-verity",
            "Linux root verity (x86-64)",
        ),
        (
            ROOT_VERITY_ARM64,
            "root-arm64-verity",
            "Linux root verity (ARM64)",
        ),
        (VAR, "var", "Linux variable data (/var)"),
        (LINUX_DATA, "linux-generic", "Linux filesystem data"),
        (SWAP, "swap", "Linux swap"),
        (XBOOTLDR, "xbootldr", "Linux extended boot (XBOOTLDR)"),
        (BIOS_BOOT, "bios-boot", "BIOS boot"),
    ];

    /// The short identifier of a known type (`root-x86-64`), if it is one.
    pub fn short_name(g: &Guid) -> Option<&'static str> {
        KNOWN.iter().find(|(k, _, _)| k == g).map(|(_, s, _)| *s)
    }

    /// The name of a known type for people (`Linux root (x86-64)`), if it is one.
    pub fn name(g: &Guid) -> Option<&'static str> {
        KNOWN.iter().find(|(k, _, _)| k == g).map(|(_, _, n)| *n)
    }
}

/// Partition attribute bits (UEFI specification and the Discoverable Partitions
/// Specification).
pub mod attr {
    /// Platform-required partition: tools must not delete it (UEFI bit 0).
    pub const REQUIRED_PARTITION: u64 = 1 << 0;
    /// Firmware must not produce a block I/O protocol for it (UEFI bit 1).
    pub const NO_BLOCK_IO_PROTOCOL: u64 = 1 << 1;
    /// Legacy BIOS bootable (UEFI bit 2).
    pub const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
    /// DPS: grow the file system to the partition size on mount (bit 59).
    pub const GROWFS: u64 = 1 << 59;
    /// DPS: mount read-only (bit 60).
    pub const READ_ONLY: u64 = 1 << 60;
    /// DPS: do not mount automatically (bit 63).
    pub const NO_AUTO: u64 = 1 << 63;

    /// Whether every bit of `flag` is set in `attributes`.
    pub fn has(attributes: u64, flag: u64) -> bool {
        attributes & flag == flag
    }
}

/// Why a header or entry array is not one to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GptError {
    /// No "EFI PART" signature: the disk is not GPT-partitioned (or is blank).
    #[error("no GPT")]
    NoSignature,
    /// The header or the array is present but unusable.
    #[error("damaged GPT: {0}")]
    Damaged(String),
}

/// A GPT header's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header revision ([`REVISION_1_0`]).
    pub revision: u32,
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

/// A header's stored CRC and the one its bytes hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderCrc {
    /// The CRC field.
    pub stored: u32,
    /// CRC-32 of the header's `header_size` bytes with the CRC field zeroed.
    pub computed: u32,
}

impl HeaderCrc {
    /// Whether they agree.
    pub fn matches(&self) -> bool {
        self.stored == self.computed
    }
}

impl Header {
    /// Bytes of the entry array.
    pub fn array_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// Reads a header's fields and its CRC without judging them (what `kiln inspect`
    /// reports). Fails only when there is no signature or the header size cannot be
    /// hashed within `sector`.
    pub fn decode(sector: &[u8]) -> Result<(Header, HeaderCrc), GptError> {
        if sector.len() < HEADER_SIZE as usize || &sector[0..8] != SIGNATURE {
            return Err(GptError::NoSignature);
        }
        let size = u32_at(sector, 12);
        if size < HEADER_SIZE || size as usize > sector.len() {
            return Err(GptError::Damaged(format!(
                "header size {size} is outside {HEADER_SIZE}..={}",
                sector.len()
            )));
        }
        let mut copy = sector[..size as usize].to_vec();
        copy[16..20].fill(0);
        let crc = HeaderCrc {
            stored: u32_at(sector, 16),
            computed: crc32(&copy),
        };
        let header = Header {
            revision: u32_at(sector, 8),
            header_size: size,
            my_lba: u64_at(sector, 24),
            alternate_lba: u64_at(sector, 32),
            first_usable_lba: u64_at(sector, 40),
            last_usable_lba: u64_at(sector, 48),
            disk_guid: Guid::gpt_at(sector, 56),
            entries_lba: u64_at(sector, 72),
            num_entries: u32_at(sector, 80),
            entry_size: u32_at(sector, 84),
            entries_crc: u32_at(sector, 88),
        };
        Ok((header, crc))
    }

    /// Reads and checks the header sector found at `lba`: signature, CRC, its own LBA,
    /// a valid entry size and an entry array of at most [`MAX_ARRAY_BYTES`].
    pub fn parse(sector: &[u8], lba: u64) -> Result<Header, GptError> {
        let (header, crc) = Header::decode(sector)?;
        let bad = |why: String| Err(GptError::Damaged(why));
        if !crc.matches() {
            return bad(format!(
                "header CRC32 is {:#010x} but the header hashes to {:#010x}",
                crc.stored, crc.computed
            ));
        }
        if header.my_lba != lba {
            return bad(format!(
                "header at LBA {lba} says it is at LBA {}",
                header.my_lba
            ));
        }
        header.check_shape()?;
        Ok(header)
    }

    /// Checks the entry geometry a reader sizes its reads by: an entry size of at least
    /// [`MIN_ENTRY_SIZE`] and a multiple of 8, an array of at most [`MAX_ARRAY_BYTES`].
    pub fn check_shape(&self) -> Result<(), GptError> {
        if self.entry_size < MIN_ENTRY_SIZE || self.entry_size % 8 != 0 {
            return Err(GptError::Damaged(format!(
                "partition entry size {} is invalid",
                self.entry_size
            )));
        }
        if self.array_bytes() > MAX_ARRAY_BYTES {
            return Err(GptError::Damaged(format!(
                "{} entries of {} bytes is more than the {MAX_ARRAY_BYTES}-byte limit",
                self.num_entries, self.entry_size
            )));
        }
        Ok(())
    }

    /// Writes this header into `sector` (a whole sector): the fields, zeros after
    /// `header_size`, and the CRC. Bytes 92..`header_size` (a later revision's fields)
    /// are left as `sector` holds them.
    pub fn write_into(&self, sector: &mut [u8]) {
        let size = self.header_size as usize;
        sector[0..8].copy_from_slice(SIGNATURE);
        put_u32(sector, 8, self.revision);
        put_u32(sector, 12, self.header_size);
        put_u32(sector, 16, 0);
        put_u32(sector, 20, 0);
        put_u64(sector, 24, self.my_lba);
        put_u64(sector, 32, self.alternate_lba);
        put_u64(sector, 40, self.first_usable_lba);
        put_u64(sector, 48, self.last_usable_lba);
        sector[56..72].copy_from_slice(&self.disk_guid.to_gpt_bytes());
        put_u64(sector, 72, self.entries_lba);
        put_u32(sector, 80, self.num_entries);
        put_u32(sector, 84, self.entry_size);
        put_u32(sector, 88, self.entries_crc);
        sector[size..].fill(0);
        let crc = crc32(&sector[..size]);
        put_u32(sector, 16, crc);
    }

    /// This header as a whole sector of `sector_size` bytes.
    pub fn to_sector(&self, sector_size: usize) -> Vec<u8> {
        let mut s = vec![0u8; sector_size];
        self.write_into(&mut s);
        s
    }
}

/// One used entry of the partition entry array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID (the PARTUUID).
    pub part_guid: Guid,
    /// First LBA of the partition.
    pub first_lba: u64,
    /// Last LBA of the partition (inclusive).
    pub last_lba: u64,
    /// Attribute bits ([`attr`]).
    pub attributes: u64,
    /// Partition name (UTF-16LE on disk, up to [`NAME_MAX_UNITS`] code units).
    pub name: String,
}

impl Entry {
    /// Reads one entry (at least 128 bytes); `None` for an unused one (zero type).
    pub fn decode(raw: &[u8]) -> Option<Entry> {
        let type_guid = Guid::gpt_at(raw, 0);
        if type_guid.is_zero() {
            return None;
        }
        let units: Vec<u16> = (0..NAME_MAX_UNITS)
            .map(|i| u16_at(raw, 56 + 2 * i))
            .take_while(|&u| u != 0)
            .collect();
        Some(Entry {
            type_guid,
            part_guid: Guid::gpt_at(raw, 16),
            first_lba: u64_at(raw, 32),
            last_lba: u64_at(raw, 40),
            attributes: u64_at(raw, 48),
            name: String::from_utf16_lossy(&units),
        })
    }

    /// Writes this entry into `out` (at least 128 bytes, zeroed by the caller beyond
    /// what is written); the name is cut at [`NAME_MAX_UNITS`] code units.
    pub fn write_into(&self, out: &mut [u8]) {
        out[0..16].copy_from_slice(&self.type_guid.to_gpt_bytes());
        out[16..32].copy_from_slice(&self.part_guid.to_gpt_bytes());
        put_u64(out, 32, self.first_lba);
        put_u64(out, 40, self.last_lba);
        put_u64(out, 48, self.attributes);
        out[56..128].fill(0);
        for (i, unit) in self.name.encode_utf16().take(NAME_MAX_UNITS).enumerate() {
            out[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }

    /// This entry as `entry_size` bytes (at least 128).
    pub fn to_bytes(&self, entry_size: usize) -> Vec<u8> {
        let mut e = vec![0u8; entry_size.max(MIN_ENTRY_SIZE as usize)];
        self.write_into(&mut e);
        e
    }
}

/// The used entries of `array` (entries of `entry_size` bytes), each with its index
/// in the array (the kernel names a partition `index + 1`).
pub fn entries(array: &[u8], entry_size: u32) -> Vec<(u32, Entry)> {
    let size = (entry_size as usize).max(MIN_ENTRY_SIZE as usize);
    array
        .chunks_exact(size)
        .enumerate()
        .filter_map(|(i, raw)| Some((i as u32, Entry::decode(raw)?)))
        .collect()
}

/// Checks `array` against the header (its length and CRC) and returns the used
/// entries with their indices.
pub fn parse_entries(header: &Header, array: &[u8]) -> Result<Vec<(u32, Entry)>, GptError> {
    let len = header.array_bytes() as usize;
    let Some(array) = array.get(..len) else {
        return Err(GptError::Damaged(format!(
            "partition entry array is {} bytes, expected {len}",
            array.len()
        )));
    };
    let computed = crc32(array);
    if computed != header.entries_crc {
        return Err(GptError::Damaged(format!(
            "entry array CRC32 is {:#010x} but the array hashes to {computed:#010x}",
            header.entries_crc
        )));
    }
    Ok(entries(array, header.entry_size))
}

/// An entry array of `count` entries of `entry_size` bytes holding `used` at the given
/// indices (the rest zero).
pub fn encode_array(used: &[(u32, &Entry)], count: u32, entry_size: u32) -> Vec<u8> {
    let size = entry_size as usize;
    let mut out = vec![0u8; count as usize * size];
    for (index, e) in used {
        let at = *index as usize * size;
        if let Some(slot) = out.get_mut(at..at + size) {
            e.write_into(slot);
        }
    }
    out
}

/// A protective MBR for a disk of `total_sectors`: one 0xEE entry from LBA 1 covering
/// the disk (or as much of it as 32 bits can say).
pub fn protective_mbr(total_sectors: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let e = &mut mbr[446..462];
    e[0] = 0x00; // not bootable
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = MBR_PROTECTIVE_TYPE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]); // CHS past the addressable range
    put_u32(e, 8, 1);
    put_u32(e, 12, mbr_sectors(total_sectors));
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    mbr
}

/// The size a protective MBR records for a disk of `total_sectors`: all but sector 0,
/// capped at what 32 bits hold.
pub fn mbr_sectors(total_sectors: u64) -> u32 {
    u32::try_from(total_sectors.saturating_sub(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
