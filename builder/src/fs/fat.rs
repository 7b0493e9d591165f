//! A deterministic FAT16/FAT32 writer for the EFI System Partition.
//!
//! [`build_fat`] formats a volume of a given size and stores a fixed list of
//! files in it, streaming the result into a [`RegionSink`] (a partition
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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;

use mkext4::RegionSink;

const SECTOR: u64 = 512;
const DIR_ENTRY: usize = 32;
/// Root directory entries of a FAT16 volume (16 KiB, the common default).
const FAT16_ROOT_ENTRIES: u32 = 512;
/// Reserved sectors of a FAT32 volume: boot sector, FSInfo, their backups.
const FAT32_RESERVED: u32 = 32;
const FAT32_FSINFO_SECTOR: u16 = 1;
const FAT32_BACKUP_BOOT_SECTOR: u16 = 6;
/// Cluster counts that decide the FAT type (Microsoft's FAT specification).
const FAT16_MIN_CLUSTERS: u32 = 4085;
const FAT32_MIN_CLUSTERS: u32 = 65525;
const FAT32_MAX_CLUSTERS: u32 = 0x0FFF_FFF4;
/// Distance kept from the type-deciding cluster counts, because some drivers
/// count clusters slightly differently and would pick the other FAT type.
const CLUSTER_MARGIN: u32 = 16;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_LONG_NAME: u8 = 0x0F;
const MEDIA_FIXED: u8 = 0xF8;
/// Longest long file name, in UTF-16 units.
const LFN_MAX_UNITS: usize = 255;
/// Characters allowed in 8.3 names (besides A-Z and 0-9).
const SHORT_SPECIALS: &[u8] = b"!#$%&'()-@^_`{}~";

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

    fn fat_offset(&self, copy: u32) -> u64 {
        (self.reserved_sectors + copy * self.fat_sectors) as u64 * SECTOR
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_start_sector() as u64 * SECTOR + (cluster as u64 - 2) * self.cluster_size()
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

/// A FAT timestamp: (date, time, 10 ms units for the odd second).
fn fat_datetime(ts: i64) -> (u16, u16, u8) {
    let days = ts.div_euclid(86_400);
    let secs = ts.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (y, m, d, secs) = if y < 1980 {
        (1980, 1, 1, 0)
    } else if y > 2107 {
        (2107, 12, 31, 86_399)
    } else {
        (y, m, d, secs)
    };
    let (h, min, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = ((h as u16) << 11) | ((min as u16) << 5) | (s / 2) as u16;
    (date, time, ((s % 2) * 100) as u8)
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01
/// (Howard Hinnant's days-to-civil algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_SPECIALS.contains(&b)
}

/// The 11-byte short name if `name` already is an upper-case 8.3 name.
fn exact_short_name(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) => (b, e),
        None => (name, ""),
    };
    let ok = |s: &str, max: usize| s.len() <= max && s.bytes().all(is_short_char);
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) || (name.contains('.') && ext.is_empty()) {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(out)
}

/// A `NAME~N.EXT` alias for a long name, unique among `used`.
fn alias_short_name(name: &str, used: &BTreeSet<[u8; 11]>) -> [u8; 11] {
    let clean = |s: &str| -> Vec<u8> {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if u.is_ascii() && is_short_char(u as u8) {
                    u as u8
                } else {
                    b'_'
                }
            })
            .collect()
    };
    let trimmed = name.trim_start_matches('.');
    let (base, ext) = match trimmed.rfind('.') {
        Some(i) => (clean(&trimmed[..i]), clean(&trimmed[i + 1..])),
        None => (clean(trimmed), Vec::new()),
    };
    let base = if base.is_empty() { b"_".to_vec() } else { base };
    for n in 1u32.. {
        let tail = format!("~{n}");
        let keep = base.len().min(8usize.saturating_sub(tail.len()));
        if keep + tail.len() > 8 {
            break;
        }
        let mut out = [b' '; 11];
        out[..keep].copy_from_slice(&base[..keep]);
        out[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        let e = ext.len().min(3);
        out[8..8 + e].copy_from_slice(&ext[..e]);
        if !used.contains(&out) {
            return out;
        }
    }
    // Unreachable in practice: a directory holds at most 65,536 entries.
    [b'_'; 11]
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| {
        ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(b)
    })
}

fn check_component(path: &str, c: &str) -> Result<(), FatError> {
    let bad = |why: String| {
        Err(FatError::BadPath {
            path: path.to_string(),
            why,
        })
    };
    if c.is_empty() || c == "." || c == ".." {
        return bad(
            "use relative paths like EFI/BOOT/BOOTX64.EFI without empty, . or .. parts".into(),
        );
    }
    if let Some(ch) = c
        .chars()
        .find(|&ch| (ch as u32) < 0x20 || "\"*:<>?\\|".contains(ch))
    {
        return bad(format!("{ch:?} is not allowed in FAT names"));
    }
    if c.ends_with(' ') || c.ends_with('.') {
        return bad(format!("{c:?} ends with a space or dot, which FAT drops"));
    }
    if c.encode_utf16().count() > LFN_MAX_UNITS {
        return bad(format!("{c:?} is longer than FAT's 255 characters"));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<[u8; 11], FatError> {
    let bad = |why: &str| {
        Err(FatError::BadLabel {
            label: label.to_string(),
            why: why.into(),
        })
    };
    if label.len() > 11 {
        return bad("longer than 11 characters");
    }
    if label.starts_with(' ') {
        return bad("starts with a space");
    }
    if !label.bytes().all(|b| b == b' ' || is_short_char(b)) {
        return bad("use upper-case letters, digits, spaces and !#$%&'()-@^_`{}~ only");
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

enum Node<'a> {
    Dir(usize),
    File { data: &'a [u8], path: &'a str },
}

struct Child<'a> {
    name: &'a str,
    node: Node<'a>,
    short: [u8; 11],
    long: bool,
    first_cluster: u32,
    clusters: u32,
}

struct Dir<'a> {
    /// Children keyed by upper-cased name, which is how FAT compares names.
    children: BTreeMap<String, Child<'a>>,
    parent: usize,
    first_cluster: u32,
    clusters: u32,
}

impl Dir<'_> {
    fn new(parent: usize) -> Self {
        Dir {
            children: BTreeMap::new(),
            parent,
            first_cluster: 0,
            clusters: 0,
        }
    }

    /// Directory entries this directory needs, long-name entries included.
    fn entry_count(&self, is_root: bool, has_label: bool) -> usize {
        let own = if is_root { usize::from(has_label) } else { 2 };
        own + self
            .children
            .values()
            .map(|c| {
                1 + if c.long {
                    c.name.encode_utf16().count().div_ceil(13)
                } else {
                    0
                }
            })
            .sum::<usize>()
    }
}

fn build_tree<'a>(files: &[EspFile<'a>]) -> Result<Vec<Dir<'a>>, FatError> {
    let mut dirs = vec![Dir::new(0)];
    for f in files {
        let parts: Vec<&'a str> = f.path.split('/').collect();
        for c in &parts {
            check_component(f.path, c)?;
        }
        let conflict = |why: String| FatError::BadPath {
            path: f.path.to_string(),
            why,
        };
        let mut cur = 0usize;
        for (i, &name) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let key = name.to_uppercase();
            match dirs[cur].children.get(&key) {
                Some(existing) if existing.name != name => {
                    return Err(conflict(format!(
                        "{name:?} and {:?} differ only in case, and FAT names are case-insensitive",
                        existing.name
                    )));
                }
                Some(Child {
                    node: Node::Dir(d), ..
                }) if !last => cur = *d,
                Some(Child {
                    node: Node::Dir(_), ..
                }) => {
                    return Err(conflict("it is also a directory".into()));
                }
                Some(Child {
                    node: Node::File { path, .. },
                    ..
                }) => {
                    return Err(conflict(if last {
                        "listed twice".into()
                    } else {
                        format!("{path:?} is a file, not a directory")
                    }));
                }
                None => {
                    let node = if last {
                        Node::File {
                            data: f.data,
                            path: f.path,
                        }
                    } else {
                        dirs.push(Dir::new(cur));
                        Node::Dir(dirs.len() - 1)
                    };
                    let next = match node {
                        Node::Dir(d) => d,
                        Node::File { .. } => cur,
                    };
                    let child = Child {
                        name,
                        node,
                        short: [0; 11],
                        long: false,
                        first_cluster: 0,
                        clusters: 0,
                    };
                    dirs[cur].children.insert(key, child);
                    cur = next;
                }
            }
        }
    }
    // Short names: exact 8.3 names first, so generated aliases avoid them.
    for d in &mut dirs {
        let mut used = BTreeSet::new();
        for c in d.children.values_mut() {
            if let Some(s) = exact_short_name(c.name) {
                c.short = s;
                used.insert(s);
            } else {
                c.long = true;
            }
        }
        for c in d.children.values_mut().filter(|c| c.long) {
            c.short = alias_short_name(c.name, &used);
            used.insert(c.short);
        }
    }
    Ok(dirs)
}

/// Directories in breadth-first order over sorted names: the order clusters
/// are handed out and written in, independent of the input order.
fn bfs_order(dirs: &[Dir<'_>]) -> Vec<usize> {
    let mut order = vec![0usize];
    let mut i = 0;
    while i < order.len() {
        for c in dirs[order[i]].children.values() {
            if let Node::Dir(d) = c.node {
                order.push(d);
            }
        }
        i += 1;
    }
    order
}

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

struct Stamp {
    date: u16,
    time: u16,
    tenth: u8,
}

fn short_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, st: &Stamp) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0..11].copy_from_slice(name);
    e[11] = attr;
    e[13] = st.tenth;
    e[14..16].copy_from_slice(&st.time.to_le_bytes());
    e[16..18].copy_from_slice(&st.date.to_le_bytes());
    e[18..20].copy_from_slice(&st.date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&st.time.to_le_bytes());
    e[24..26].copy_from_slice(&st.date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// The long-name entries of `name`, in on-disk order (last part first).
fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    let n = units.len().div_ceil(13);
    if units.len() % 13 != 0 {
        units.push(0);
    }
    units.resize(n * 13, 0xFFFF);
    let sum = lfn_checksum(short);
    (0..n)
        .rev()
        .map(|i| {
            let mut e = [0u8; 32];
            e[0] = (i as u8 + 1) | if i + 1 == n { 0x40 } else { 0 };
            e[11] = ATTR_LONG_NAME;
            e[13] = sum;
            let part = &units[i * 13..i * 13 + 13];
            let slots = (1..11)
                .step_by(2)
                .chain((14..26).step_by(2))
                .chain((28..32).step_by(2));
            for (u, at) in part.iter().zip(slots) {
                e[at..at + 2].copy_from_slice(&u.to_le_bytes());
            }
            e
        })
        .collect()
}

fn encode_dir(
    dirs: &[Dir<'_>],
    idx: usize,
    label: Option<&[u8; 11]>,
    st: &Stamp,
    capacity: usize,
) -> Vec<u8> {
    let d = &dirs[idx];
    let mut out = Vec::with_capacity(capacity);
    if idx == 0 {
        if let Some(l) = label {
            out.extend_from_slice(&short_entry(l, ATTR_VOLUME_ID, 0, 0, st));
        }
    } else {
        let parent = if d.parent == 0 {
            0
        } else {
            dirs[d.parent].first_cluster
        };
        out.extend_from_slice(&short_entry(
            b".          ",
            ATTR_DIRECTORY,
            d.first_cluster,
            0,
            st,
        ));
        out.extend_from_slice(&short_entry(b"..         ", ATTR_DIRECTORY, parent, 0, st));
    }
    for c in d.children.values() {
        if c.long {
            for e in lfn_entries(c.name, &c.short) {
                out.extend_from_slice(&e);
            }
        }
        let (attr, cluster, size) = match c.node {
            Node::Dir(sub) => (ATTR_DIRECTORY, dirs[sub].first_cluster, 0),
            Node::File { data, .. } => (ATTR_ARCHIVE, c.first_cluster, data.len() as u32),
        };
        out.extend_from_slice(&short_entry(&c.short, attr, cluster, size, st));
    }
    out.resize(capacity.max(out.len()), 0);
    out
}

fn boot_sector(g: &FatGeometry, opts: &FatOptions, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    let fat32 = g.fat_type == FatType::Fat32;
    let boot_code_at: usize = if fat32 { 0x5A } else { 0x3E };
    b[0..3].copy_from_slice(&[0xEB, (boot_code_at - 2) as u8, 0x90]);
    b[3..11].copy_from_slice(b"MSWIN4.1");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = g.sectors_per_cluster as u8;
    b[14..16].copy_from_slice(&(g.reserved_sectors as u16).to_le_bytes());
    b[16] = 2;
    b[17..19].copy_from_slice(&(g.root_entries as u16).to_le_bytes());
    let small_total = if !fat32 && g.total_sectors < 0x10000 {
        g.total_sectors as u16
    } else {
        0
    };
    b[19..21].copy_from_slice(&small_total.to_le_bytes());
    b[21] = MEDIA_FIXED;
    let fat16_len = if fat32 { 0 } else { g.fat_sectors as u16 };
    b[22..24].copy_from_slice(&fat16_len.to_le_bytes());
    // CHS geometry is meaningless on GPT disks; 32 × 64 divides every
    // MiB-multiple size, which keeps mtools' geometry check quiet.
    b[24..26].copy_from_slice(&32u16.to_le_bytes());
    b[26..28].copy_from_slice(&64u16.to_le_bytes());
    b[28..32].copy_from_slice(&opts.hidden_sectors.to_le_bytes());
    let big_total = if small_total == 0 { g.total_sectors } else { 0 };
    b[32..36].copy_from_slice(&big_total.to_le_bytes());
    let ext = if fat32 {
        b[36..40].copy_from_slice(&g.fat_sectors.to_le_bytes());
        // 40..42 flags 0: both FATs mirrored; 42..44 version 0.0.
        b[44..48].copy_from_slice(&2u32.to_le_bytes());
        b[48..50].copy_from_slice(&FAT32_FSINFO_SECTOR.to_le_bytes());
        b[50..52].copy_from_slice(&FAT32_BACKUP_BOOT_SECTOR.to_le_bytes());
        64
    } else {
        36
    };
    b[ext] = 0x80; // drive number
    b[ext + 2] = 0x29; // extended boot signature: the next three fields exist
    b[ext + 3..ext + 7].copy_from_slice(&opts.serial.to_le_bytes());
    b[ext + 7..ext + 18].copy_from_slice(label);
    b[ext + 18..ext + 26].copy_from_slice(if fat32 { b"FAT32   " } else { b"FAT16   " });
    // Not bootable from BIOS: halt forever if something jumps here.
    b[boot_code_at..boot_code_at + 4].copy_from_slice(&[0xFA, 0xF4, 0xEB, 0xFD]);
    b[510] = 0x55;
    b[511] = 0xAA;
    b
}

fn fsinfo_sector(free: u32, next_free: u32) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    s[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    s[488..492].copy_from_slice(&free.to_le_bytes());
    s[492..496].copy_from_slice(&next_free.to_le_bytes());
    s[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    s
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
            fat[at..at + 4].copy_from_slice(&value.to_le_bytes());
        } else {
            fat[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
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

fn dir_path(dirs: &[Dir<'_>], mut d: usize) -> String {
    let mut parts = Vec::new();
    while d != 0 {
        let parent = dirs[d].parent;
        if let Some(c) = dirs[parent]
            .children
            .values()
            .find(|c| matches!(c.node, Node::Dir(x) if x == d))
        {
            parts.push(c.name);
        }
        d = parent;
    }
    parts.reverse();
    parts.join("/") + "/"
}

/// A sink that materializes the volume in memory.
struct VecSink(Vec<u8>);

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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
mod tests {
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    use mkext4::sink::{CheckingSink, FileSink};

    use super::*;

    const MIB: u64 = 1 << 20;
    /// 2023-11-14 22:13:21 UTC.
    const TS: i64 = 1_700_000_001;

    /// Deterministic pseudo-random bytes (xorshift), so no file is all zeros.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn opts() -> FatOptions {
        FatOptions::new("KILN-ESP", 0x1234_ABCD, TS)
    }

    fn run(cmd: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn fsck_clean(img: &Path) -> String {
        let (ok, text) = run("fsck.fat", &["-n", "-v", img.to_str().unwrap()]);
        assert!(ok, "fsck.fat -n failed:\n{text}");
        for bad in ["Fix", "fix", "differ", "Warning", "wrong", "Free cluster"] {
            assert!(!text.contains(bad), "fsck.fat complained ({bad}):\n{text}");
        }
        text
    }

    /// Reads every file back with mtools and compares it with the input.
    fn mtools_read_back(img: &Path, files: &[EspFile<'_>]) {
        let dir = tempfile::tempdir().unwrap();
        let img_s = img.to_str().unwrap();
        let (ok, listing) = run("mdir", &["-/", "-b", "-i", img_s, "::"]);
        assert!(ok, "mdir failed:\n{listing}");
        let mut listed: Vec<&str> = listing
            .lines()
            .filter(|l| !l.ends_with('/'))
            .map(|l| l.trim_start_matches("::/"))
            .collect();
        listed.sort();
        let mut expected: Vec<&str> = files.iter().map(|f| f.path).collect();
        expected.sort();
        assert_eq!(listed, expected, "mdir listing:\n{listing}");
        for (i, f) in files.iter().enumerate() {
            let out = dir.path().join(format!("f{i}"));
            let (ok, text) = run(
                "mcopy",
                &[
                    "-n",
                    "-i",
                    img_s,
                    &format!("::/{}", f.path),
                    out.to_str().unwrap(),
                ],
            );
            assert!(ok, "mcopy {} failed:\n{text}", f.path);
            let got = std::fs::read(&out).unwrap();
            assert!(
                got == f.data,
                "{} differs after mcopy ({} vs {} bytes)",
                f.path,
                got.len(),
                f.data.len()
            );
        }
    }

    fn sample_files(big: &[u8], small: &[u8]) -> Vec<(String, Vec<u8>)> {
        let _ = small;
        vec![
            ("EFI/BOOT/BOOTX64.EFI".to_string(), big.to_vec()),
            (
                "kiln.toml".to_string(),
                b"[enroll]\nurl = \"https://x\"\n".to_vec(),
            ),
            (
                "loader/entries/kiln-a-rather-long-entry-name.conf".to_string(),
                small.to_vec(),
            ),
            ("loader/loader.conf".to_string(), b"timeout 0\n".to_vec()),
            ("EMPTY.TXT".to_string(), Vec::new()),
            ("Mixed Case Dir/Readme.md".to_string(), b"hello".to_vec()),
            ("kiln.tomlx".to_string(), b"alias collision".to_vec()),
            (
                "EFI/Linux/kiln-1.0-\u{e9}t\u{e9}.efi".to_string(),
                noise(4096, 9),
            ),
        ]
    }

    fn as_esp(files: &[(String, Vec<u8>)]) -> Vec<EspFile<'_>> {
        files.iter().map(|(p, d)| EspFile::new(p, d)).collect()
    }

    #[test]
    fn fsck_and_mtools_accept_every_size_and_type() {
        let big = noise(3 * MIB as usize + 17, 1);
        let small = noise(70_000, 2);
        let owned = sample_files(&big, &small);
        let files = as_esp(&owned);
        let dir = tempfile::tempdir().unwrap();
        let cases: [(u64, Option<FatType>, FatType); 7] = [
            (32 * MIB, None, FatType::Fat16),
            (33 * MIB, None, FatType::Fat32),
            (64 * MIB, None, FatType::Fat32),
            (128 * MIB, None, FatType::Fat32),
            (1024 * MIB, None, FatType::Fat32),
            (128 * MIB, Some(FatType::Fat16), FatType::Fat16),
            (1024 * MIB, Some(FatType::Fat16), FatType::Fat16),
        ];
        for (size, forced, expect) in cases {
            let img = dir.path().join("esp.img");
            let mut o = opts();
            o.fat_type = forced;
            let mut sink = CheckingSink::new(FileSink::create(&img, size).unwrap());
            let summary = build_fat(&files, size, &o, &mut sink).unwrap();
            sink.finish(size).unwrap();
            let g = summary.geometry;
            assert_eq!(g.fat_type, expect, "size {size}");
            let text = fsck_clean(&img);
            let want = if expect == FatType::Fat32 {
                "32 bit entries"
            } else {
                "16 bit entries"
            };
            assert!(
                text.contains(want),
                "size {size}: fsck.fat -v says:\n{text}"
            );
            mtools_read_back(&img, &files);
            let (ok, info) = run("minfo", &["-i", img.to_str().unwrap(), "::"]);
            assert!(ok, "{info}");
            assert!(info.contains("KILN-ESP"), "{info}");
            assert!(
                info.to_lowercase().contains("1234abcd") || info.contains("1234-ABCD"),
                "{info}"
            );
        }
    }

    #[test]
    fn output_is_deterministic_and_independent_of_input_order() {
        let big = noise(MIB as usize, 3);
        let small = noise(5000, 4);
        let owned = sample_files(&big, &small);
        let files = as_esp(&owned);
        let a = build_fat_vec(&files, 40 * MIB, &opts()).unwrap();
        let b = build_fat_vec(&files, 40 * MIB, &opts()).unwrap();
        assert!(a == b);
        let mut reversed = files.clone();
        reversed.reverse();
        let c = build_fat_vec(&reversed, 40 * MIB, &opts()).unwrap();
        assert!(a == c);
        let mut o = opts();
        o.serial = 1;
        assert!(a != build_fat_vec(&files, 40 * MIB, &o).unwrap());
    }

    #[test]
    fn type_selection_boundary() {
        // The smallest FAT32 volume, searched sector by sector around 33 MiB.
        let mut first32 = None;
        for total in (32 * MIB / 512)..(34 * MIB / 512) {
            if fat_geometry(total * 512, None).unwrap().fat_type == FatType::Fat32 {
                first32 = Some(total);
                break;
            }
        }
        let first32 = first32.expect("FAT32 below 34 MiB");
        let g32 = fat_geometry(first32 * 512, None).unwrap();
        let g16 = fat_geometry((first32 - 1) * 512, None).unwrap();
        assert_eq!(g16.fat_type, FatType::Fat16);
        assert!(g32.clusters >= FAT32_MIN_CLUSTERS + CLUSTER_MARGIN);
        assert!(g16.clusters < FAT32_MIN_CLUSTERS);
        assert!(
            first32 * 512 > 32 * MIB && first32 * 512 <= 33 * MIB,
            "{first32}"
        );

        // Both sides of the boundary pass fsck.fat with the type they claim.
        let dir = tempfile::tempdir().unwrap();
        let data = noise(10_000, 5);
        let files = [EspFile::new("EFI/BOOT/BOOTAA64.EFI", &data)];
        for (total, want) in [(first32, "32 bit entries"), (first32 - 1, "16 bit entries")] {
            let img = dir.path().join("b.img");
            let bytes = build_fat_vec(&files, total * 512, &opts()).unwrap();
            std::fs::write(&img, bytes).unwrap();
            let text = fsck_clean(&img);
            assert!(text.contains(want), "{total}: {text}");
        }

        // Forcing FAT32 on a 32 MiB ESP fails with advice.
        let mut o = opts();
        o.fat_type = Some(FatType::Fat32);
        let msg = build_fat_vec(&files, 32 * MIB, &o).unwrap_err().to_string();
        assert!(
            msg.contains("disk.esp_size") && msg.contains("FAT32"),
            "{msg}"
        );
        // Too small for anything, and not a sector multiple.
        assert!(fat_geometry(MIB, None)
            .unwrap_err()
            .to_string()
            .contains("disk.esp_size"));
        assert!(fat_geometry(33 * MIB + 1, None).is_err());
        // Cluster sizes grow with the volume.
        assert_eq!(fat_geometry(128 * MIB, None).unwrap().cluster_size(), 1024);
        assert_eq!(fat_geometry(1024 * MIB, None).unwrap().cluster_size(), 4096);
    }

    #[test]
    fn too_big_content_names_file_and_sizes() {
        let big = vec![0x5au8; 34 * MIB as usize];
        let files = [
            EspFile::new("kiln.toml", b"x"),
            EspFile::new("EFI/BOOT/BOOTAA64.EFI", &big),
        ];
        let err = build_fat_vec(&files, 33 * MIB, &opts()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FatError::ContentTooLarge { .. }), "{msg}");
        assert!(msg.contains("EFI/BOOT/BOOTAA64.EFI"), "{msg}");
        assert!(msg.contains(&(34 * MIB + 1).to_string()), "{msg}");
        assert!(msg.contains(&(33 * MIB).to_string()), "{msg}");
        assert!(msg.contains("disk.esp_size"), "{msg}");
        // A file that fills the data area exactly fits (the root, EFI and
        // EFI/BOOT directories take one cluster each).
        let g = fat_geometry(33 * MIB, None).unwrap();
        let fill = vec![1u8; (g.data_capacity() - 3 * g.cluster_size()) as usize];
        let files = [EspFile::new("EFI/BOOT/BOOTAA64.EFI", &fill)];
        let summary = build_fat(
            &files,
            33 * MIB,
            &opts(),
            &mut CheckingSink::new(VecSink(vec![0; 33 * MIB as usize])),
        )
        .unwrap();
        assert_eq!(summary.used_clusters, g.clusters);
    }

    #[test]
    fn full_volume_and_large_uki_are_fast_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        let uki = noise(70 * MIB as usize + 333, 6);
        let files = [
            EspFile::new("EFI/BOOT/BOOTAA64.EFI", &uki),
            EspFile::new("kiln.toml", b""),
        ];
        let start = Instant::now();
        let mut sink = FileSink::create(&img, 128 * MIB).unwrap();
        build_fat(&files, 128 * MIB, &opts(), &mut sink).unwrap();
        drop(sink);
        let took = start.elapsed();
        assert!(took.as_secs_f64() < 5.0, "70 MB ESP took {took:?}");
        fsck_clean(&img);
        mtools_read_back(&img, &files);
    }

    #[test]
    fn names_and_labels_are_checked() {
        let d = b"x".as_slice();
        for (paths, expect) in [
            (vec!["/EFI/BOOT/X.EFI"], "relative"),
            (vec!["EFI//X.EFI"], "relative"),
            (vec!["EFI/../X.EFI"], "relative"),
            (vec!["a:b"], "not allowed"),
            (vec!["trailing."], "ends with"),
            (vec!["A.TXT", "A.TXT"], "listed twice"),
            (vec!["efi/a", "EFI/b"], "differ only in case"),
            (vec!["EFI", "EFI/X"], "is a file"),
            (vec!["EFI/X", "EFI"], "also a directory"),
        ] {
            let files: Vec<EspFile<'_>> = paths.iter().map(|p| EspFile::new(p, d)).collect();
            let msg = build_fat_vec(&files, 33 * MIB, &opts())
                .unwrap_err()
                .to_string();
            assert!(msg.contains(expect), "{paths:?}: {msg}");
        }
        for label in ["kiln", "TOO-LONG-LABEL", " X", "A.B"] {
            let mut o = opts();
            o.label = label.into();
            let msg = build_fat_vec(&[], 33 * MIB, &o).unwrap_err().to_string();
            assert!(msg.contains("label"), "{label}: {msg}");
        }
        // No label at all is fine.
        let mut o = opts();
        o.label.clear();
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("n.img");
        std::fs::write(
            &img,
            build_fat_vec(&[EspFile::new("A", d)], 33 * MIB, &o).unwrap(),
        )
        .unwrap();
        fsck_clean(&img);
    }

    #[test]
    fn fat16_root_directory_limit() {
        let names: Vec<String> = (0..600).map(|i| format!("F{i}.TXT")).collect();
        let files: Vec<EspFile<'_>> = names.iter().map(|n| EspFile::new(n, b"x")).collect();
        let msg = build_fat_vec(&files, 32 * MIB, &opts())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("root directory needs 601 entries"), "{msg}");
        // FAT32 grows its root directory instead, and many entries still check clean.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("many.img");
        std::fs::write(&img, build_fat_vec(&files, 33 * MIB, &opts()).unwrap()).unwrap();
        fsck_clean(&img);
        mtools_read_back(&img, &files);
    }

    #[test]
    fn timestamps_convert_and_clamp() {
        // 2023-11-14 22:13:21 UTC
        let (date, time, tenth) = fat_datetime(TS);
        assert_eq!(date, (43 << 9) | (11 << 5) | 14);
        assert_eq!(time, (22 << 11) | (13 << 5) | 10);
        assert_eq!(tenth, 100);
        assert_eq!(fat_datetime(0), ((1 << 5) | 1, 0, 0));
        assert_eq!(fat_datetime(-5), ((1 << 5) | 1, 0, 0));
        // 2000-02-29 (leap day) 00:00:00 UTC
        assert_eq!(fat_datetime(951_782_400).0, (20 << 9) | (2 << 5) | 29);
        assert_eq!(fat_datetime(i64::MAX / 2).0, (127 << 9) | (12 << 5) | 31);

        // mtools shows the stored time (FAT has no time zone).
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.img");
        std::fs::write(
            &img,
            build_fat_vec(&[EspFile::new("A.TXT", b"x")], 33 * MIB, &opts()).unwrap(),
        )
        .unwrap();
        let (ok, text) = run("mdir", &["-i", img.to_str().unwrap(), "::"]);
        assert!(ok, "{text}");
        assert!(
            text.contains("2023-11-14") && text.contains("22:13"),
            "{text}"
        );
    }

    #[test]
    fn short_names() {
        assert_eq!(&exact_short_name("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert_eq!(&exact_short_name("EFI").unwrap(), b"EFI        ");
        assert!(exact_short_name("kiln.toml").is_none());
        assert!(exact_short_name("Boot").is_none());
        assert!(exact_short_name("TOOLONGNAME").is_none());
        assert!(exact_short_name("A.B.C").is_none());
        assert!(exact_short_name("A.").is_none());
        let mut used = BTreeSet::new();
        let a = alias_short_name("kiln.toml", &used);
        assert_eq!(&a, b"KILN~1  TOM");
        used.insert(a);
        assert_eq!(&alias_short_name("kiln.tomlx", &used), b"KILN~2  TOM");
        assert_eq!(&alias_short_name(".hidden", &used), b"HIDDEN~1   ");
        assert_eq!(&alias_short_name("a b+c.conf", &used), b"AB_C~1  CON");
    }
}
