//! The ESP as the updater sees it: mounted read-write at [`ESP_MOUNT`], with one Type #2
//! UKI per slot under [`UKI_DIR`], and what each UKI boots.
//!
//! - [`boot_device`]: the boot disk (the one holding `/`), its partition table and its
//!   ESP, found as the config channel finds them ([`crate::config::esp`]).
//! - [`mount_esp`]: mounts the ESP at `/efi` unless it is mounted there already
//!   (systemd-bless-boot and the updater find it there).
//! - [`list_ukis`]: the UKIs with kiln's names ([`UkiName`]), each with the version in
//!   its `.osrel` and the root hash on its `.cmdline`, read from the PE section table
//!   ([`pe_sections`]), and the slot it boots: the slot whose root partition's unique
//!   GUID is the first half of that root hash, else the file name's letter.
//! - [`running_root_hash`], [`slot_of_hash`]: which slot the running system came from.

use std::fmt;
use std::time::Duration;

use kiln_contract::boot::{Slot, UkiName, ESP_MOUNT, UKI_DIR};
use kiln_contract::le::{u16_at, u32_at};
use kiln_contract::version::ImageVersion;
use nix::errno::Errno;
use nix::mount::MsFlags;

use super::UpdateSys;
use crate::cmdline;
use crate::config::blockdev::{self, BootDisk};
use crate::config::esp::{esp_partition, read_disk_gpt};
use crate::gpt::{Gpt, GptEntry};
use crate::init::verity::root_part_uuid;
use crate::report::mountinfo::{parse_mountinfo, Mount};
use crate::sys::Files;

#[cfg(test)]
mod tests;

/// The mount table the ESP's mount is looked up in.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Bytes read first from a UKI: enough for the headers and section table of any stub.
const HEAD_BYTES: usize = 4096;
/// Most bytes read for the headers when the section table lies further in.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// `.osrel` and `.cmdline` must end within this many bytes of the file's start (kiln's
/// UKIs put them right after the stub, before the initrd and the kernel).
pub const MAX_SECTION_END: usize = 4 << 20;
/// Longest `.osrel` or `.cmdline` read.
const MAX_SECTION_BYTES: u32 = 64 * 1024;

/// Why the ESP or a UKI on it could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EspError {
    /// The boot disk, its partition table or its ESP could not be found.
    Disk(String),
    /// Mounting the ESP failed.
    Mount {
        /// The partition.
        dev: String,
        /// What failed.
        why: String,
    },
    /// Something else is mounted at `/efi`.
    Occupied {
        /// What is mounted there.
        source: String,
        /// Its filesystem type.
        fstype: String,
    },
    /// Listing the UKI folder failed.
    List {
        /// The folder.
        dir: String,
        /// The error.
        why: String,
    },
}

impl fmt::Display for EspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EspError::Disk(why) => write!(f, "finding the ESP: {why}"),
            EspError::Mount { dev, why } => write!(
                f,
                "mounting the ESP {dev} read-write (vfat) on {ESP_MOUNT}: {why}; check that \
                 the vfat module is in the image and that nothing holds it read-only"
            ),
            EspError::Occupied { source, fstype } => write!(
                f,
                "{ESP_MOUNT} holds {source} ({fstype}), not the boot disk's ESP: unmount it \
                 (umount {ESP_MOUNT}) so the updater and systemd-bless-boot find the ESP there"
            ),
            EspError::List { dir, why } => write!(f, "listing {dir}: {why}"),
        }
    }
}

/// Why a UKI's sections could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeError {
    /// Not an MZ/PE image, or its headers point outside the bytes.
    NotPe(&'static str),
    /// A wanted section ends too far into the file to read cheaply.
    TooFar {
        /// The section.
        section: &'static str,
        /// Where it ends.
        end: u64,
    },
    /// Reading the file failed.
    Read(String),
}

impl fmt::Display for PeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeError::NotPe(why) => write!(f, "not a PE/EFI image: {why}"),
            PeError::TooFar { section, end } => write!(
                f,
                "its {section} section ends at byte {end}, beyond the first {MAX_SECTION_END} \
                 bytes where kiln's UKIs keep it"
            ),
            PeError::Read(why) => write!(f, "reading it: {why}"),
        }
    }
}

/// One entry of a PE section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSection {
    /// The name (up to 8 bytes, NULs removed): `.osrel`, `.cmdline`, ...
    pub name: String,
    /// VirtualSize: the data's exact length.
    pub virtual_size: u32,
    /// SizeOfRawData: the data's length in the file, padded to FileAlignment.
    pub raw_size: u32,
    /// PointerToRawData: where the data starts in the file.
    pub raw_offset: u32,
}

impl PeSection {
    /// The data's byte range in the file: VirtualSize long (what the builder and
    /// systemd-stub use), but never more than is stored.
    pub fn data_range(&self) -> (u64, u64) {
        let len = match self.virtual_size {
            0 => self.raw_size,
            v => v.min(self.raw_size),
        };
        let start = u64::from(self.raw_offset);
        (start, start + u64::from(len))
    }
}

/// The header is further into the file than the bytes read so far.
const PE_BEYOND: &str = "the PE header lies beyond the bytes read";

/// Where the section table ends, from the first bytes of an image (the DOS header's
/// `e_lfanew`, the COFF header's NumberOfSections and SizeOfOptionalHeader).
fn table_end(head: &[u8]) -> Result<(usize, usize, usize), PeError> {
    if head.len() < 0x40 || &head[..2] != b"MZ" {
        return Err(PeError::NotPe("no MZ header"));
    }
    let pe = u32_at(head, 0x3c) as usize;
    if head.len() < pe + 24 {
        return Err(PeError::NotPe(PE_BEYOND));
    }
    if &head[pe..pe + 4] != b"PE\0\0" {
        return Err(PeError::NotPe("no PE signature at e_lfanew"));
    }
    let count = usize::from(u16_at(head, pe + 6));
    let optional = usize::from(u16_at(head, pe + 20));
    let table = pe + 24 + optional;
    Ok((table, count, table + 40 * count))
}

/// Reads the section table from the first bytes of a PE image (they must hold it).
pub fn pe_sections(head: &[u8]) -> Result<Vec<PeSection>, PeError> {
    let (table, count, end) = table_end(head)?;
    if head.len() < end {
        return Err(PeError::NotPe(
            "the section table lies beyond the bytes read",
        ));
    }
    Ok((0..count)
        .map(|i| {
            let s = &head[table + 40 * i..table + 40 * (i + 1)];
            let raw_name = &s[..8];
            let len = raw_name.iter().position(|&b| b == 0).unwrap_or(8);
            PeSection {
                name: String::from_utf8_lossy(&raw_name[..len]).into_owned(),
                virtual_size: u32_at(s, 8),
                raw_size: u32_at(s, 16),
                raw_offset: u32_at(s, 20),
            }
        })
        .collect())
}

/// A UKI's `.osrel` and `.cmdline` texts (empty when the section is absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UkiTexts {
    /// The os-release file.
    pub osrel: String,
    /// The kernel command line.
    pub cmdline: String,
}

/// Reads the `.osrel` and `.cmdline` sections of the UKI at `path`, reading only the
/// file's first bytes (the headers, then up to the end of those sections).
pub fn read_uki_texts<S: Files + ?Sized>(sys: &mut S, path: &str) -> Result<UkiTexts, PeError> {
    let read = |sys: &mut S, n: usize| {
        sys.read_prefix(path, n)
            .map_err(|e| PeError::Read(e.to_string()))
    };
    let mut head = read(sys, HEAD_BYTES)?;
    // The PE header's place, then the section table's end, may lie past what was read.
    for _ in 0..2 {
        let need = match table_end(&head) {
            Ok((_, _, end)) => end,
            Err(PeError::NotPe(PE_BEYOND)) => u32_at(&head, 0x3c) as usize + 24,
            Err(e) => return Err(e),
        };
        if need <= head.len() || head.len() < HEAD_BYTES || need > MAX_HEAD_BYTES {
            break;
        }
        head = read(sys, need)?;
    }
    let sections = pe_sections(&head)?;
    let wanted: [(&'static str, &str); 2] = [(".osrel", "osrel"), (".cmdline", "cmdline")];
    let mut ranges = Vec::new();
    for (name, _) in wanted {
        if let Some(s) = sections.iter().find(|s| s.name == name) {
            let (start, end) = s.data_range();
            let end = end.min(start + u64::from(MAX_SECTION_BYTES));
            if end > MAX_SECTION_END as u64 {
                return Err(PeError::TooFar { section: name, end });
            }
            ranges.push((name, start as usize, end as usize));
        }
    }
    let need = ranges.iter().map(|r| r.2).max().unwrap_or(0);
    let bytes = if need > head.len() {
        read(sys, need)?
    } else {
        head
    };
    let mut texts = UkiTexts::default();
    for (name, start, end) in ranges {
        let data = bytes.get(start..end.min(bytes.len())).unwrap_or_default();
        let text = String::from_utf8_lossy(data)
            .trim_end_matches('\0')
            .to_string();
        match name {
            ".osrel" => texts.osrel = text,
            _ => texts.cmdline = text,
        }
    }
    Ok(texts)
}

/// A field of an os-release text, unquoted (`IMAGE_VERSION="1.2"` → `1.2`).
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let unquoted = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(unquoted.replace("\\\"", "\"").replace("\\\\", "\\"))
    })
}

/// How a UKI's slot was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSource {
    /// By its root hash: a root partition of the slot has its first half as unique GUID.
    RootHash,
    /// By the file name's letter (no root partition matches its root hash, or the
    /// command line has none).
    FileName,
}

/// A UKI on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uki {
    /// The file name as the ESP spells it (`kiln-b+2-1.efi`).
    pub file: String,
    /// Its full path (`/efi/EFI/Linux/kiln-b+2-1.efi`).
    pub path: String,
    /// The name read: slot letter and boot counter.
    pub name: UkiName,
    /// The slot whose root it boots.
    pub slot: Slot,
    /// How [`Uki::slot`] was told.
    pub slot_source: SlotSource,
    /// `IMAGE_VERSION` of its `.osrel`, when it is a valid version.
    pub version: Option<ImageVersion>,
    /// The version text to show: `IMAGE_VERSION`, else `VERSION_ID` (an image built
    /// before kiln had versions carries Debian's), else None.
    pub version_text: Option<String>,
    /// `kiln.roothash=` of its `.cmdline`.
    pub root_hash: Option<[u8; 32]>,
    /// Why its sections could not be read (then version and hash are None).
    pub unreadable: Option<String>,
}

impl Uki {
    /// systemd-boot gave up on it: no tries left.
    pub fn is_bad(&self) -> bool {
        self.name.is_bad()
    }

    /// On trial with tries left.
    pub fn on_trial(&self) -> bool {
        self.name.tries.is_some_and(|t| t.left > 0)
    }

    /// The version for messages: the text, or `unknown version`.
    pub fn version_label(&self) -> String {
        self.version_text
            .clone()
            .unwrap_or_else(|| "unknown version".to_string())
    }
}

/// The slot whose root partition (by its GPT name for `arch`) has the first half of
/// `hash` as unique GUID.
pub fn slot_of_hash(entries: &[GptEntry], hash: &[u8; 32], arch: &str) -> Option<Slot> {
    let guid = root_part_uuid(hash);
    entries
        .iter()
        .find(|e| e.part_guid == guid)
        .and_then(|e| Slot::from_label(&e.name, arch))
}

/// The running system's root hash, from `kiln.roothash=` on /proc/cmdline.
pub fn running_root_hash<S: Files + ?Sized>(sys: &mut S) -> Option<[u8; 32]> {
    let text = sys.read_file("/proc/cmdline").ok()?;
    cmdline::parse(&String::from_utf8_lossy(&text)).root_hash
}

/// Reads one UKI: its name (None for files kiln did not name), sections and slot.
pub fn read_uki<S: Files + ?Sized>(
    sys: &mut S,
    dir: &str,
    file: &str,
    entries: &[GptEntry],
    arch: &str,
) -> Option<Uki> {
    let name = UkiName::parse(file)?;
    let path = format!("{}/{file}", dir.trim_end_matches('/'));
    let mut uki = Uki {
        file: file.to_string(),
        path,
        name,
        slot: name.slot,
        slot_source: SlotSource::FileName,
        version: None,
        version_text: None,
        root_hash: None,
        unreadable: None,
    };
    match read_uki_texts(sys, &uki.path) {
        Ok(t) => {
            let image_version = os_release_field(&t.osrel, "IMAGE_VERSION");
            uki.version = image_version
                .as_deref()
                .and_then(|v| ImageVersion::parse(v).ok());
            uki.version_text = image_version.or_else(|| os_release_field(&t.osrel, "VERSION_ID"));
            uki.root_hash = cmdline::parse(&t.cmdline).root_hash;
        }
        Err(e) => uki.unreadable = Some(e.to_string()),
    }
    if let Some(slot) = uki
        .root_hash
        .as_ref()
        .and_then(|h| slot_of_hash(entries, h, arch))
    {
        uki.slot = slot;
        uki.slot_source = SlotSource::RootHash;
    }
    Some(uki)
}

/// The UKIs kiln named in `<esp>/EFI/Linux`, sorted by file name; other files are left
/// out. A missing folder is an ESP without UKIs.
pub fn list_ukis<S: Files + ?Sized>(
    sys: &mut S,
    esp: &str,
    entries: &[GptEntry],
    arch: &str,
) -> Result<Vec<Uki>, EspError> {
    let dir = format!("{}/{UKI_DIR}", esp.trim_end_matches('/'));
    let mut names = match sys.list_dir(&dir) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(EspError::List {
                dir,
                why: e.to_string(),
            })
        }
    };
    names.sort();
    Ok(names
        .iter()
        .filter_map(|f| read_uki(sys, &dir, f, entries, arch))
        .collect())
}

/// The boot disk, its partition table and its ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootDevice {
    /// The disk holding `/` and its partitions.
    pub disk: BootDisk,
    /// Its partition table.
    pub gpt: Gpt,
    /// The ESP's device node (`/dev/vda1`).
    pub esp: String,
}

/// Finds the boot disk (through device-mapper from `/`), reads its partition table and
/// finds its ESP.
pub fn boot_device<S: UpdateSys + ?Sized>(sys: &mut S) -> Result<BootDevice, EspError> {
    let disk = blockdev::boot_disk(sys).map_err(EspError::Disk)?;
    let gpt = read_disk_gpt(sys, &disk.disk).map_err(EspError::Disk)?;
    let part = esp_partition(sys, &disk, &gpt).map_err(EspError::Disk)?;
    Ok(BootDevice {
        disk,
        gpt,
        esp: format!("/dev/{part}"),
    })
}

/// How the ESP came to be mounted at `/efi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// It was mounted there already (by an earlier run, or systemd's automount).
    Already,
    /// This call mounted it.
    Now,
}

/// The last mount at `at` (the one on top).
fn mount_at<S: Files + ?Sized>(sys: &mut S, at: &str) -> Option<Mount> {
    let text = sys.read_file(MOUNTINFO).ok()?;
    parse_mountinfo(&String::from_utf8_lossy(&text))
        .into_iter()
        .rfind(|m| m.mount_point == at)
}

/// How often [`mount_esp`] looks again after its mount(2) said EBUSY, and how long it
/// waits between looks (a few seconds in all).
const BUSY_TRIES: u32 = 20;
const BUSY_WAIT: Duration = Duration::from_millis(250);

/// Mounts the ESP `dev` read-write at [`ESP_MOUNT`] (vfat, root-only, no devices,
/// set-uid or programs), unless it is mounted there already. An automount there
/// (systemd-gpt-auto-generator's) is triggered and used; a read-only mount of it is
/// made read-write.
///
/// Another process may be mounting it at the same moment (kiln-update.service's
/// check beside an operator's `update status`, or systemd's automount): the one that
/// loses gets EBUSY from mount(2). So EBUSY means "look again": the mount table then
/// shows the other one's mount, which is used.
pub fn mount_esp<S: UpdateSys + ?Sized>(sys: &mut S, dev: &str) -> Result<Mounted, EspError> {
    let mut tries = 0;
    loop {
        match mount_esp_once(sys, dev) {
            Err(EspError::Mount { why, .. }) if why == BUSY && tries < BUSY_TRIES => {
                tries += 1;
                sys.sleep(BUSY_WAIT);
            }
            Err(EspError::Mount { dev, why }) if why == BUSY => {
                return Err(EspError::Mount {
                    dev,
                    why: format!(
                        "{why} (still, {:.0} s later: something else keeps it mounted elsewhere \
                         with other options)",
                        (BUSY_WAIT * BUSY_TRIES).as_secs_f64()
                    ),
                })
            }
            other => return other,
        }
    }
}

/// mount(2)'s EBUSY as [`mount_esp_once`] says it.
const BUSY: &str = "EBUSY: Device or resource busy";

fn mount_esp_once<S: UpdateSys + ?Sized>(sys: &mut S, dev: &str) -> Result<Mounted, EspError> {
    let mut current = mount_at(sys, ESP_MOUNT);
    if current.as_ref().is_some_and(|m| m.fstype == "autofs") {
        // Looking inside makes the kernel ask systemd to mount it.
        let _ = sys.list_dir(ESP_MOUNT);
        current = mount_at(sys, ESP_MOUNT);
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let fail = |why: String| EspError::Mount {
        dev: dev.to_string(),
        why,
    };
    match current {
        Some(m) if m.fstype == "vfat" && m.source == dev => {
            if m.read_only() {
                sys.mount(dev, ESP_MOUNT, None, flags | MsFlags::MS_REMOUNT, None)
                    .map_err(|e| fail(format!("it is mounted read-only; remounting: {e}")))?;
            }
            Ok(Mounted::Already)
        }
        Some(m) if m.fstype != "autofs" => Err(EspError::Occupied {
            source: m.source,
            fstype: m.fstype,
        }),
        _ => {
            sys.mkdir(ESP_MOUNT)
                .map_err(|e| fail(format!("creating {ESP_MOUNT}: {e}")))?;
            sys.mount(dev, ESP_MOUNT, Some("vfat"), flags, Some("umask=0077"))
                .map_err(|e| {
                    fail(match e {
                        Errno::ENODEV => "the kernel has no vfat driver (ENODEV)".to_string(),
                        Errno::EBUSY => BUSY.to_string(),
                        e => e.to_string(),
                    })
                })?;
            Ok(Mounted::Now)
        }
    }
}
