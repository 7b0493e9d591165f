//! `kiln inspect`: reads an image back and says what is in it, and with
//! `--verify` recomputes everything that can be recomputed and compares.
//!
//! [`inspect`] opens the image (raw; qcow2 through `qemu-img convert`;
//! fixed VHD by dropping its footer; raw.zst and the GCE tarball by
//! decompressing to a temporary file), reads the GPT ([`gpt`]), lists the
//! ESP with kiln's own FAT reader ([`fat`]), reads the UKI's sections, the
//! verity superblock and the ext4 superblock, and the manifest published
//! next to the image. The result is a [`Report`]: plain data (serialisable
//! for `--json`) with a human [`fmt::Display`]. [`verify`] adds one
//! [`Check`] per recomputed fact.
//!
//! Things that cannot be read (a corrupt ESP, a missing UKI) do not stop the
//! report: they are listed in [`Report::problems`]. Only an input that is not
//! a kiln-readable disk at all (missing, not a GPT disk, truncated, a broken
//! table without `--verify`, an unreadable manifest) is an [`InspectError`].

pub mod fat;
pub mod gpt;
pub mod verify;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_contract::le::{u16_at, u32_at};
use kiln_contract::verity::Superblock;
use serde::{Serialize, Serializer};

use crate::arch::Arch;
use crate::output::manifest::{self, Manifest};
use crate::plan::{guid_text, Guid};
use crate::profile::{format_size, Format};
use crate::runner::{Cmd, RunError, Runner};

pub use fat::{FatEntry, FatKind};
pub use gpt::{GptReport, Kind, PartitionInfo};
pub use verify::{Check, Labelled, Outcome, Verification};

/// Why an image could not be inspected at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A file could not be read.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What kiln was doing.
        action: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not a disk image kiln can read.
    #[error("{}: not a disk image: {what}", path.display())]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// Why not.
        what: String,
    },
    /// The file is shorter than its own structures say.
    #[error("{}: truncated image: {what}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// A structure's checksum or layout is wrong.
    #[error(
        "{}: corrupt image: {what}; `kiln inspect --verify {}` lists every check",
        path.display(),
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first failed check.
        what: String,
    },
    /// A kind of image kiln does not read.
    #[error("{}: unsupported image: {what}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What and why.
        what: String,
    },
    /// `qemu-img` could not convert a qcow2 image.
    #[error("{}: converting the qcow2 image to raw: {source}", path.display())]
    Convert {
        /// The image.
        path: PathBuf,
        /// The command's failure.
        source: RunError,
    },
    /// A compressed image could not be unpacked.
    #[error("{}: unpacking the {format} image: {what}", path.display())]
    Decompress {
        /// The image.
        path: PathBuf,
        /// `raw.zst` or `gce`.
        format: &'static str,
        /// What went wrong.
        what: String,
    },
    /// The manifest is missing (when named), unreadable or not a manifest.
    #[error("{}: {what}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
}

/// Which manifest to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ManifestSource {
    /// `<profile>-<arch>.manifest.json` next to the image, if it exists
    /// (see [`manifest_beside`]).
    #[default]
    Beside,
    /// This file; it must exist.
    Path(PathBuf),
    /// None: manifest facts and checks are left out.
    Skip,
}

/// What [`inspect`] does.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// The manifest to read.
    pub manifest: ManifestSource,
    /// Recompute and compare ([`Report::verification`]).
    pub verify: bool,
}

/// The footer of a fixed VHD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VhdFooter {
    /// Disk type (2: fixed).
    pub disk_type: u32,
    /// Size of the disk the footer describes.
    pub current_size: u64,
    /// The VHD's unique id.
    #[serde(with = "guid_text")]
    pub unique_id: Guid,
    /// Checksum as stored.
    pub checksum: u32,
    /// Checksum computed from the footer's bytes.
    pub computed_checksum: u32,
}

impl VhdFooter {
    /// The footer's checksum as a check.
    pub fn check(&self) -> Check {
        Check::compare(
            "VHD footer checksum",
            ("footer says", format!("{:#010x}", self.checksum)),
            ("computed", format!("{:#010x}", self.computed_checksum)),
        )
    }
}

/// The ESP's FAT volume and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EspReport {
    /// GPT entry number.
    pub partition: u32,
    /// FAT12/16/32.
    pub fat: FatKind,
    /// Volume label.
    pub label: Option<String>,
    /// Volume serial (`XXXX-XXXX`, as `blkid` shows it).
    pub serial: Option<String>,
    /// Bytes per cluster.
    pub cluster_size: u32,
    /// Every file and folder.
    pub files: Vec<FatEntry>,
}

/// One section of the UKI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SectionInfo {
    /// Section name.
    pub name: String,
    /// Bytes of content (virtual size).
    pub size: u64,
}

/// The Unified Kernel Image found on the ESP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UkiReport {
    /// Path on the ESP.
    pub path: String,
    /// File size.
    pub size: u64,
    /// PE machine (`x86_64`, `arm64` or the hex value).
    pub machine: String,
    /// Sections in header order.
    pub sections: Vec<SectionInfo>,
    /// `.uname`: the kernel release.
    pub kernel_release: Option<String>,
    /// `PRETTY_NAME` from `.osrel`.
    pub os: Option<String>,
    /// `.cmdline`: the kernel command line.
    pub cmdline: Option<String>,
    /// The root hash on the command line: `kiln.roothash=` (what kiln's
    /// init reads), else `roothash=` (what systemd's generator reads).
    pub roothash: Option<String>,
}

/// The dm-verity superblock at the start of the hash partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VeritySuperblock {
    /// GPT entry number of the hash partition.
    pub partition: u32,
    /// Format version (1).
    pub version: u32,
    /// Hash type (1: normal).
    pub hash_type: u32,
    /// Superblock UUID.
    #[serde(with = "guid_text")]
    pub uuid: Guid,
    /// Hash algorithm.
    pub algorithm: String,
    /// Data block size.
    pub data_block_size: u32,
    /// Hash block size.
    pub hash_block_size: u32,
    /// Data blocks covered.
    pub data_blocks: u64,
    /// Salt, hex.
    pub salt: String,
}

/// The few ext4 superblock fields worth showing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ext4Superblock {
    /// GPT entry number.
    pub partition: u32,
    /// Volume label.
    pub label: String,
    /// Filesystem UUID.
    #[serde(with = "guid_text")]
    pub uuid: Guid,
    /// Block size.
    pub block_size: u64,
    /// Blocks.
    pub blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Filesystem size in bytes.
    pub size: u64,
    /// Inodes.
    pub inodes: u32,
    /// Free inodes.
    pub free_inodes: u32,
}

/// One package, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PackageLine {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Debian arch.
    pub arch: String,
    /// `root`, `kernel` or `boot`.
    pub role: String,
}

/// What the manifest says about how the image was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestSummary {
    /// The manifest file.
    pub path: PathBuf,
    /// kiln version that built the image.
    pub kiln_version: String,
    /// Image (profile) name.
    pub name: String,
    /// Arch.
    pub arch: String,
    /// Profile file name.
    pub profile: String,
    /// Build epoch (seconds since 1970).
    pub epoch: i64,
    /// Kernel package.
    pub kernel_package: String,
    /// Kernel package version.
    pub kernel_version: String,
    /// Kernel release.
    pub kernel_release: String,
    /// Every package.
    pub packages: Vec<PackageLine>,
}

/// Everything `kiln inspect` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The file inspected.
    pub image: PathBuf,
    /// Its format.
    #[serde(serialize_with = "format_name")]
    pub format: Format,
    /// Size of the file.
    pub file_size: u64,
    /// Size of the raw disk inside it.
    pub disk_size: u64,
    /// The VHD footer, for VHD input.
    pub vhd: Option<VhdFooter>,
    /// The partition table.
    pub gpt: GptReport,
    /// The arch, from the root partition's type.
    pub arch: Option<Arch>,
    /// The ESP.
    pub esp: Option<EspReport>,
    /// The UKI on the ESP.
    pub uki: Option<UkiReport>,
    /// The verity superblock.
    pub verity: Option<VeritySuperblock>,
    /// The root filesystem's superblock.
    pub root_fs: Option<Ext4Superblock>,
    /// The manifest, if one was read.
    pub manifest: Option<ManifestSummary>,
    /// Why no manifest was read.
    pub manifest_note: Option<String>,
    /// The checks, with `--verify`.
    pub verification: Option<Verification>,
    /// How the image was read (conversions).
    pub notes: Vec<String>,
    /// Parts of the image that could not be read, each naming the part.
    pub problems: Vec<String>,
}

fn format_name<S: Serializer>(f: &Format, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(f.name())
}

impl Report {
    /// Whether everything could be read and, with `--verify`, every check passed.
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.verification.as_ref().is_none_or(|v| v.passed())
    }

    /// The report with every package listed.
    pub fn with_packages(&self) -> impl fmt::Display + '_ {
        Shown {
            report: self,
            packages: true,
        }
    }
}

/// The manifest's path for an image: `qemu-x86_64.raw` (or `.raw.zst`,
/// `.qcow2`, `.vhd`, `.gce.tar.gz`) → `qemu-x86_64.manifest.json` in the
/// same folder.
pub fn manifest_beside(image: &Path) -> PathBuf {
    const SUFFIXES: [&str; 5] = [".gce.tar.gz", ".raw.zst", ".raw", ".qcow2", ".vhd"];
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .map(str::to_string)
        .or_else(|| image.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or(name);
    image.with_file_name(format!("{stem}.manifest.json"))
}

/// The raw disk being inspected: the image itself, or a temporary raw copy
/// of a converted one. Messages always name the user's file.
#[derive(Debug)]
pub(crate) struct DiskFile {
    /// The user's file (for messages).
    pub(crate) name: PathBuf,
    file: File,
    /// Bytes of raw disk (a VHD's footer excluded).
    pub(crate) len: u64,
}

impl DiskFile {
    fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> InspectError + '_ {
        move |source| InspectError::Io {
            path: self.name.clone(),
            action,
            source,
        }
    }

    /// Fills `buf` from `offset`; reading past the disk's end is a truncation.
    pub(crate) fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), InspectError> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(InspectError::Truncated {
                path: self.name.clone(),
                what: format!(
                    "bytes {offset}..{} are needed but the disk is only {} bytes",
                    offset.saturating_add(buf.len() as u64),
                    self.len
                ),
            });
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(self.io("reading the disk"))
    }

    /// `len` bytes from `offset`.
    pub(crate) fn read_vec(&self, offset: u64, len: usize) -> Result<Vec<u8>, InspectError> {
        let mut buf = vec![0u8; len];
        self.read_into(offset, &mut buf)?;
        Ok(buf)
    }

    /// A partition's byte range; one that runs past the disk is a truncation.
    pub(crate) fn part(&self, p: &PartitionInfo) -> Result<Part<'_>, InspectError> {
        if p.offset
            .checked_add(p.size)
            .is_none_or(|end| end > self.len)
        {
            return Err(InspectError::Truncated {
                path: self.name.clone(),
                what: format!(
                    "partition {} ({}) spans bytes {}..{} but the disk is only {} bytes",
                    p.number,
                    p.name,
                    p.offset,
                    p.offset.saturating_add(p.size),
                    self.len
                ),
            });
        }
        Ok(Part {
            disk: self,
            offset: p.offset,
            len: p.size,
        })
    }

    /// SHA-256 of `len` bytes from `offset`, lowercase hex.
    pub(crate) fn sha256(&self, offset: u64, len: u64) -> Result<String, InspectError> {
        let mut r = self.part_range(offset, len)?.reader(len);
        sha256_reader(&mut r).map_err(self.io("reading the disk"))
    }

    fn part_range(&self, offset: u64, len: u64) -> Result<Part<'_>, InspectError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(InspectError::Truncated {
                path: self.name.clone(),
                what: format!(
                    "bytes {offset}..{} lie past its end ({} bytes)",
                    offset.saturating_add(len),
                    self.len
                ),
            });
        }
        Ok(Part {
            disk: self,
            offset,
            len,
        })
    }
}

/// A byte range of the disk (a partition).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part<'a> {
    disk: &'a DiskFile,
    offset: u64,
    len: u64,
}

impl fat::Medium for Part<'_> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read past the partition's {} bytes", self.len),
            ));
        }
        self.disk.file.read_exact_at(buf, self.offset + offset)
    }
}

impl<'a> Part<'a> {
    /// A reader over the first `len` bytes of the range.
    pub(crate) fn reader(&self, len: u64) -> PartReader<'a> {
        PartReader {
            part: *self,
            pos: 0,
            end: len.min(self.len),
        }
    }
}

/// Sequential reads over a [`Part`].
#[derive(Debug)]
pub(crate) struct PartReader<'a> {
    part: Part<'a>,
    pos: u64,
    end: u64,
}

impl Read for PartReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        fat::Medium::read_at(&self.part, self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

pub(crate) fn sha256_reader(r: &mut impl Read) -> io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

/// The opened input.
#[derive(Debug)]
struct Opened {
    disk: DiskFile,
    format: Format,
    file_size: u64,
    vhd: Option<VhdFooter>,
    notes: Vec<String>,
    /// Holds the temporary raw disk of a converted image.
    _temp: Option<tempfile::TempDir>,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];
const VHD_COOKIE: &[u8; 8] = b"conectix";
const VHD_FIXED: u32 = 2;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_vhd_footer(f: &[u8]) -> VhdFooter {
    let mut size = [0u8; 8];
    size.copy_from_slice(&f[48..56]);
    let computed = !f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |s, (_, &b)| s.wrapping_add(u32::from(b)));
    let mut id = [0u8; 16];
    id.copy_from_slice(&f[68..84]);
    VhdFooter {
        disk_type: be32(f, 60),
        current_size: u64::from_be_bytes(size),
        unique_id: Guid::from_bytes(id),
        checksum: be32(f, 64),
        computed_checksum: computed,
    }
}

/// Copies `r` into `out`, skipping all-zero 4 KiB blocks so the copy of a
/// mostly empty disk stays sparse; returns the bytes copied.
fn copy_sparse(r: &mut impl Read, out: &File) -> io::Result<u64> {
    let end = copy_sparse_at(r, out, 0)?;
    out.set_len(end)?;
    Ok(end)
}

/// Writes what `r` yields into `out` from byte `pos` on, leaving zero blocks
/// as holes; returns the end position.
fn copy_sparse_at(r: &mut impl Read, out: &File, mut pos: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        for (i, block) in buf[..filled].chunks(4096).enumerate() {
            if block.iter().any(|&b| b != 0) {
                out.write_all_at(block, pos + (i * 4096) as u64)?;
            }
        }
        pos += filled as u64;
    }
    Ok(pos)
}

/// Decompresses a zstd stream of one or more concatenated frames (kiln's
/// raw.zst is one frame per piece, which `zstd -d` reads the same way).
fn unzstd_sparse(input: &mut impl io::BufRead, out: &File) -> Result<u64, String> {
    let mut pos = 0u64;
    loop {
        if input.fill_buf().map_err(|e| e.to_string())?.is_empty() {
            break;
        }
        let mut frame =
            ruzstd::decoding::StreamingDecoder::new(&mut *input).map_err(|e| e.to_string())?;
        pos = copy_sparse_at(&mut frame, out, pos).map_err(|e| e.to_string())?;
    }
    out.set_len(pos).map_err(|e| e.to_string())?;
    Ok(pos)
}

/// A temporary folder and the raw disk file in it.
fn temp_raw() -> Result<(tempfile::TempDir, PathBuf), InspectError> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-inspect-")
        .tempdir()
        .map_err(|source| InspectError::Io {
            path: std::env::temp_dir(),
            action: "creating a temporary folder for the raw disk",
            source,
        })?;
    let raw = dir.path().join("disk.raw");
    Ok((dir, raw))
}

fn open_raw(name: &Path, raw: &Path, len: Option<u64>) -> Result<DiskFile, InspectError> {
    let io = |action| {
        move |source| InspectError::Io {
            path: raw.to_path_buf(),
            action,
            source,
        }
    };
    let file = File::open(raw).map_err(io("opening the raw disk"))?;
    let len = match len {
        Some(l) => l,
        None => file
            .metadata()
            .map_err(io("reading the raw disk's size"))?
            .len(),
    };
    Ok(DiskFile {
        name: name.to_path_buf(),
        file,
        len,
    })
}

/// Unpacks a compressed image into a sparse temporary raw disk.
fn unpack(
    path: &Path,
    file: File,
    format: Format,
) -> Result<(DiskFile, tempfile::TempDir), InspectError> {
    let fmt_name = if format == Format::Gce {
        "gce"
    } else {
        "raw.zst"
    };
    let fail = |what: String| InspectError::Decompress {
        path: path.to_path_buf(),
        format: fmt_name,
        what,
    };
    let (dir, raw) = temp_raw()?;
    let out = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&raw)
        .map_err(|source| InspectError::Io {
            path: raw.clone(),
            action: "creating the temporary raw disk",
            source,
        })?;
    let mut input = io::BufReader::new(file);
    if format == Format::RawZst {
        unzstd_sparse(&mut input, &out).map_err(fail)?;
    } else {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
        let mut found = false;
        for entry in archive.entries().map_err(|e| fail(e.to_string()))? {
            let mut entry = entry.map_err(|e| fail(e.to_string()))?;
            let is_disk = entry
                .path()
                .map(|p| p.as_os_str() == "disk.raw")
                .unwrap_or(false);
            if is_disk {
                copy_sparse(&mut entry, &out).map_err(|e| fail(e.to_string()))?;
                found = true;
                break;
            }
        }
        if !found {
            return Err(InspectError::NotAnImage {
                path: path.to_path_buf(),
                what: "a gzip tarball without `disk.raw`, so not a GCE image".into(),
            });
        }
    }
    drop(out);
    Ok((open_raw(path, &raw, None)?, dir))
}

/// Opens the image, detecting its format from its bytes (not its name).
fn open(path: &Path, runner: &dyn Runner) -> Result<Opened, InspectError> {
    let io = |action| {
        move |source| InspectError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    };
    let meta = std::fs::metadata(path).map_err(io("opening the image"))?;
    if meta.is_dir() {
        return Err(InspectError::NotAnImage {
            path: path.to_path_buf(),
            what: "it is a folder".into(),
        });
    }
    let file = File::open(path).map_err(io("opening the image"))?;
    let size = meta.len();
    let mut head = vec![0u8; size.min(512) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(io("reading the image"))?;
    let tail = if size >= 1024 {
        let mut t = vec![0u8; 512];
        file.read_exact_at(&mut t, size - 512)
            .map_err(io("reading the image"))?;
        Some(t)
    } else {
        None
    };
    let mut notes = Vec::new();
    let opened = |disk, format, vhd, notes, temp| Opened {
        disk,
        format,
        file_size: size,
        vhd,
        notes,
        _temp: temp,
    };

    if head.starts_with(QCOW2_MAGIC) {
        let (dir, raw) = temp_raw()?;
        tracing::info!(
            "{}: qcow2 image; converting it to a temporary raw disk with qemu-img",
            path.display()
        );
        let cmd = Cmd::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(path)
            .arg(&raw);
        runner.run(&cmd).map_err(|source| InspectError::Convert {
            path: path.to_path_buf(),
            source,
        })?;
        notes.push(
            "qcow2: read through a temporary raw copy made by `qemu-img convert -f qcow2 -O raw`"
                .to_string(),
        );
        let disk = open_raw(path, &raw, None)?;
        return Ok(opened(disk, Format::Qcow2, None, notes, Some(dir)));
    }
    if head.starts_with(&ZSTD_MAGIC) || head.starts_with(&GZIP_MAGIC) {
        let format = if head.starts_with(&ZSTD_MAGIC) {
            Format::RawZst
        } else {
            Format::Gce
        };
        tracing::info!(
            "{}: {} image; unpacking it to a temporary raw disk",
            path.display(),
            format.name()
        );
        let (disk, dir) = unpack(path, file, format)?;
        notes.push(format!(
            "{}: read through a temporary unpacked raw copy",
            format.name()
        ));
        return Ok(opened(disk, format, None, notes, Some(dir)));
    }
    if head.starts_with(VHD_COOKIE) {
        return Err(InspectError::Unsupported {
            path: path.to_path_buf(),
            what: "a dynamic or differencing VHD (footer copy at its start); kiln writes and \
                   reads fixed VHDs only (convert with `qemu-img convert -O raw`)"
                .into(),
        });
    }
    if head.starts_with(b"<?xml") {
        // bmaptool puts a long comment before the <bmap> element.
        let mut start = vec![0u8; size.min(64 << 10) as usize];
        file.read_exact_at(&mut start, 0)
            .map_err(io("reading the image"))?;
        let what = if String::from_utf8_lossy(&start).contains("<bmap") {
            "it is a bmap block map; inspect the .raw.zst or .raw image it describes"
        } else {
            "it is an XML file"
        };
        return Err(InspectError::NotAnImage {
            path: path.to_path_buf(),
            what: what.into(),
        });
    }
    if let Some(t) = tail.filter(|t| t.starts_with(VHD_COOKIE)) {
        let footer = parse_vhd_footer(&t);
        if footer.disk_type != VHD_FIXED {
            return Err(InspectError::Unsupported {
                path: path.to_path_buf(),
                what: format!(
                    "a VHD of disk type {} (2 is fixed); kiln reads fixed VHDs only",
                    footer.disk_type
                ),
            });
        }
        let disk_len = size - 512;
        if footer.current_size > disk_len {
            return Err(InspectError::Truncated {
                path: path.to_path_buf(),
                what: format!(
                    "its VHD footer says the disk is {} bytes, but only {disk_len} bytes precede \
                     the footer",
                    footer.current_size
                ),
            });
        }
        notes.push("fixed VHD: the raw disk is everything before the 512-byte footer".into());
        let disk = DiskFile {
            name: path.to_path_buf(),
            file,
            len: disk_len,
        };
        return Ok(opened(disk, Format::Vhd, Some(footer), notes, None));
    }
    let disk = DiskFile {
        name: path.to_path_buf(),
        file,
        len: size,
    };
    Ok(opened(disk, Format::Raw, None, notes, None))
}

/// Reads and checks a manifest file.
pub fn read_manifest(path: &Path) -> Result<Manifest, InspectError> {
    let fail = |what: String| InspectError::Manifest {
        path: path.to_path_buf(),
        what,
    };
    let text = std::fs::read(path).map_err(|source| InspectError::Io {
        path: path.to_path_buf(),
        action: "reading the manifest",
        source,
    })?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| fail(format!("not a kiln manifest: not JSON: {e}")))?;
    let schema = value
        .get("schema")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| fail("not a kiln manifest: no numeric `schema` field".into()))?;
    if schema != u64::from(manifest::SCHEMA) {
        return Err(fail(format!(
            "manifest schema {schema}, but this kiln reads schema {}; rebuild the image with \
             this kiln, or pass --no-manifest to inspect the image alone",
            manifest::SCHEMA
        )));
    }
    serde_json::from_value(value).map_err(|e| fail(format!("not a kiln manifest: {e}")))
}

fn summarize(path: &Path, m: &Manifest) -> ManifestSummary {
    ManifestSummary {
        path: path.to_path_buf(),
        kiln_version: m.kiln_version.clone(),
        name: m.name.clone(),
        arch: m.arch.clone(),
        profile: m.profile.file.clone(),
        epoch: m.epoch,
        kernel_package: m.kernel.package.clone(),
        kernel_version: m.kernel.version.clone(),
        kernel_release: m.kernel.release.clone(),
        packages: m
            .packages
            .iter()
            .map(|p| PackageLine {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
                role: p.role.clone(),
            })
            .collect(),
    }
}

fn part_label(p: &PartitionInfo) -> String {
    format!("partition {} ({})", p.number, p.name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', '\n', ' '])
        .to_string()
}

/// `PRETTY_NAME` from os-release text.
fn pretty_name(osrel: &str) -> Option<String> {
    osrel.lines().find_map(|l| {
        let v = l.strip_prefix("PRETTY_NAME=")?.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.to_string())
    })
}

/// The root hash a kernel command line carries: the `kiln.roothash=` value
/// (kiln's init), else the `roothash=` value (systemd's generator).
pub fn roothash_of(cmdline: &str) -> Option<String> {
    let value = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    value("kiln.roothash=").or_else(|| value("roothash="))
}

fn uki_report(path: &str, bytes: &[u8]) -> Result<UkiReport, crate::uki::UkiError> {
    let summary = crate::uki::summary(bytes)?;
    let sections = crate::uki::inspect(bytes)?
        .into_iter()
        .map(|s| SectionInfo {
            name: s.name,
            size: u64::from(s.virtual_size),
        })
        .collect();
    let section = |n| -> Result<Option<String>, crate::uki::UkiError> {
        Ok(crate::uki::section_data(bytes, n)?.map(text))
    };
    let cmdline = section(".cmdline")?;
    Ok(UkiReport {
        path: path.to_string(),
        size: bytes.len() as u64,
        machine: match summary.machine {
            0x8664 => "x86_64".into(),
            0xaa64 => "arm64".into(),
            m => format!("{m:#06x}"),
        },
        sections,
        kernel_release: section(".uname")?,
        os: section(".osrel")?.as_deref().and_then(pretty_name),
        roothash: cmdline.as_deref().and_then(roothash_of),
        cmdline,
    })
}

/// Reads the ESP and the UKI on it; problems are pushed, not returned.
fn read_esp(
    disk: &DiskFile,
    p: &PartitionInfo,
    arch: Option<Arch>,
    problems: &mut Vec<String>,
) -> Result<(Option<EspReport>, Option<UkiReport>), InspectError> {
    let part = disk.part(p)?;
    let vol = match fat::FatVolume::open(&part) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("{} (ESP): {e}", part_label(p)));
            return Ok((None, None));
        }
    };
    let files = match vol.walk(&part) {
        Ok(f) => f,
        Err(e) => {
            problems.push(format!("{} (ESP): listing its files: {e}", part_label(p)));
            Vec::new()
        }
    };
    let esp = EspReport {
        partition: p.number,
        fat: vol.kind,
        label: vol.label.clone(),
        serial: vol
            .serial
            .map(|s| format!("{:04X}-{:04X}", s >> 16, s & 0xFFFF)),
        cluster_size: vol.cluster_size,
        files,
    };
    let wanted: Vec<String> = match arch {
        Some(a) => vec![format!("EFI/BOOT/{}", a.efi_boot_file())],
        None => Arch::ALL
            .iter()
            .map(|a| format!("EFI/BOOT/{}", a.efi_boot_file()))
            .collect(),
    };
    let entry = esp
        .files
        .iter()
        .find(|e| !e.is_dir && wanted.iter().any(|w| w.eq_ignore_ascii_case(&e.path)));
    let Some(entry) = entry else {
        problems.push(format!(
            "{} (ESP): no UKI at {}",
            part_label(p),
            wanted.join(" or ")
        ));
        return Ok((Some(esp), None));
    };
    let uki = match vol.read_entry(&part, entry) {
        Ok(bytes) => match uki_report(&entry.path, &bytes) {
            Ok(u) => Some(u),
            Err(e) => {
                problems.push(format!("{} (ESP): {}: {e}", part_label(p), entry.path));
                None
            }
        },
        Err(e) => {
            problems.push(format!(
                "{} (ESP): reading {}: {e}",
                part_label(p),
                entry.path
            ));
            None
        }
    };
    Ok((Some(esp), uki))
}

/// Reads the superblock at the start of a verity hash device (the first 512
/// bytes) as it is, for the report: values kiln does not write are shown, and
/// judged by `--verify`.
pub fn parse_verity_superblock(partition: u32, sb: &[u8]) -> Result<VeritySuperblock, String> {
    let sb = Superblock::decode(sb).map_err(|e| e.to_string())?;
    Ok(VeritySuperblock {
        partition,
        version: sb.version,
        hash_type: sb.hash_type,
        uuid: Guid::from_bytes(sb.uuid),
        algorithm: sb.algorithm,
        data_block_size: sb.data_block_size,
        hash_block_size: sb.hash_block_size,
        data_blocks: sb.data_blocks,
        salt: hex::encode(&sb.salt),
    })
}

const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_INCOMPAT_64BIT: u32 = 0x80;

/// Parses an ext4 superblock (the 1024 bytes at byte 1024 of the filesystem).
pub fn parse_ext4_superblock(partition: u32, sb: &[u8]) -> Result<Ext4Superblock, String> {
    if sb.len() < 1024 {
        return Err(format!(
            "{} bytes, too short for an ext4 superblock",
            sb.len()
        ));
    }
    let magic = u16_at(sb, 0x38);
    if magic != EXT4_MAGIC {
        return Err(format!(
            "no ext4 superblock (magic {magic:#06x} at byte 1080, expected 0xef53)"
        ));
    }
    let log = u32_at(sb, 0x18);
    if log > 6 {
        return Err(format!("block size 1024 << {log} is out of range"));
    }
    let block_size = 1024u64 << log;
    let wide = u32_at(sb, 0x60) & EXT4_INCOMPAT_64BIT != 0;
    let hi = |at| {
        if wide {
            u64::from(u32_at(sb, at)) << 32
        } else {
            0
        }
    };
    let blocks = u64::from(u32_at(sb, 0x04)) | hi(0x150);
    let free_blocks = u64::from(u32_at(sb, 0x0C)) | hi(0x158);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[0x68..0x78]);
    Ok(Ext4Superblock {
        partition,
        label: text(&sb[0x78..0x88]),
        uuid: Guid::from_bytes(uuid),
        block_size,
        blocks,
        free_blocks,
        size: blocks.saturating_mul(block_size),
        inodes: u32_at(sb, 0x00),
        free_inodes: u32_at(sb, 0x10),
    })
}

/// Inspects the image at `image`. `runner` runs `qemu-img` for qcow2 input.
pub fn inspect(
    image: &Path,
    opts: &InspectOptions,
    runner: &dyn Runner,
) -> Result<Report, InspectError> {
    let opened = open(image, runner)?;
    let disk = &opened.disk;
    let gpt = gpt::read(disk)?;
    if !opts.verify {
        let vhd = opened.vhd.as_ref().map(VhdFooter::check);
        if let Some(c) = vhd.iter().chain(&gpt.checks).find(|c| !c.passed()) {
            return Err(InspectError::Corrupt {
                path: image.to_path_buf(),
                what: c.describe(),
            });
        }
    }

    let (manifest, manifest_note) = match &opts.manifest {
        ManifestSource::Path(p) => (Some((p.clone(), read_manifest(p)?)), None),
        ManifestSource::Beside => {
            let p = manifest_beside(image);
            if p.exists() {
                (Some((p.clone(), read_manifest(&p)?)), None)
            } else {
                (
                    None,
                    Some(format!(
                        "no manifest at {} (pass --manifest PATH to name one)",
                        p.display()
                    )),
                )
            }
        }
        ManifestSource::Skip => (None, Some("--no-manifest was given".to_string())),
    };

    let mut problems = Vec::new();
    let arch = gpt.partitions.iter().find_map(|p| match p.kind {
        Kind::Root(a) => Some(a),
        _ => None,
    });
    let (esp, uki) = match gpt.find(|k| k == Kind::Esp) {
        Some(p) => read_esp(disk, p, arch, &mut problems)?,
        None => {
            problems.push("no EFI System Partition in the GPT".into());
            (None, None)
        }
    };
    let verity = match gpt.find(|k| matches!(k, Kind::RootVerity(_))) {
        Some(p) => {
            let mut sb = vec![0u8; 512.min(p.size as usize)];
            disk.part(p)?
                .reader(512)
                .read_exact(&mut sb)
                .map_err(disk.io("reading the disk"))?;
            parse_verity_superblock(p.number, &sb)
                .map_err(|e| problems.push(format!("{}: {e}", part_label(p))))
                .ok()
        }
        None => {
            problems.push("no root-verity partition in the GPT".into());
            None
        }
    };
    let root_fs = match gpt.find(|k| matches!(k, Kind::Root(_))) {
        Some(p) if p.size >= 2048 => {
            let sb = disk.read_vec(p.offset + 1024, 1024)?;
            let parsed = parse_ext4_superblock(p.number, &sb)
                .map_err(|e| problems.push(format!("{}: {e}", part_label(p))))
                .ok();
            if let Some(fs) = parsed.as_ref().filter(|fs| fs.size > p.size) {
                problems.push(format!(
                    "{}: the ext4 filesystem says it is {} bytes, larger than its {}-byte \
                     partition",
                    part_label(p),
                    fs.size,
                    p.size
                ));
            }
            parsed
        }
        Some(p) => {
            problems.push(format!(
                "{}: {} bytes, too small for ext4",
                part_label(p),
                p.size
            ));
            None
        }
        None => {
            problems.push("no root partition (x86_64 or arm64 type) in the GPT".into());
            None
        }
    };

    let mut report = Report {
        image: image.to_path_buf(),
        format: opened.format,
        file_size: opened.file_size,
        disk_size: disk.len,
        vhd: opened.vhd.clone(),
        gpt,
        arch,
        esp,
        uki,
        verity,
        root_fs,
        manifest: manifest.as_ref().map(|(p, m)| summarize(p, m)),
        manifest_note,
        verification: None,
        notes: opened.notes.clone(),
        problems,
    };
    if opts.verify {
        let v = verify::run(&verify::Inputs {
            image,
            disk,
            report: &report,
            manifest: manifest.as_ref().map(|(_, m)| m),
        });
        report.verification = Some(v);
    }
    Ok(report)
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since 1970 (proleptic Gregorian).
fn utc(secs: i64) -> String {
    // One civil-date conversion for the whole crate: the OCI writer's.
    let iso = crate::oci::rfc3339(secs);
    format!("{} UTC", iso.trim_end_matches('Z').replacen('T', " ", 1))
}

struct Shown<'a> {
    report: &'a Report,
    packages: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Shown {
            report: self,
            packages: false,
        }
        .fmt(f)
    }
}

fn size_text(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{} ({n} bytes)", format_size(n))
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        writeln!(f, "image {}", r.image.display())?;
        writeln!(
            f,
            "  format      {}, {}",
            r.format.name(),
            size_text(r.file_size)
        )?;
        writeln!(
            f,
            "  disk        {}, {} sectors of 512 bytes{}",
            size_text(r.disk_size),
            r.disk_size / 512,
            r.arch.map(|a| format!(", {a}")).unwrap_or_default()
        )?;
        if let Some(v) = &r.vhd {
            writeln!(
                f,
                "  vhd footer  fixed disk of {} bytes, id {}, checksum {:#010x}",
                v.current_size, v.unique_id, v.checksum
            )?;
        }
        for n in &r.notes {
            writeln!(f, "  note        {n}")?;
        }

        let g = &r.gpt;
        writeln!(f)?;
        writeln!(
            f,
            "partition table (GPT, read from the {} header)",
            g.source
        )?;
        writeln!(f, "  disk GUID   {}", g.disk_guid)?;
        let failed = g.checks.iter().filter(|c| !c.passed()).count();
        writeln!(
            f,
            "  headers     LBA 1 and LBA {}, {} entries of {} bytes; {}",
            g.backup_lba,
            g.entry_count,
            g.entry_size,
            if failed == 0 {
                "both headers and entry arrays intact (CRC32 ok)".to_string()
            } else {
                format!("{failed} structural check(s) FAILED (see verification)")
            }
        )?;
        for p in &g.partitions {
            writeln!(
                f,
                "  #{:<2} {:<22} {} ({})",
                p.number, p.name, p.type_name, p.type_guid
            )?;
            let attrs = if p.attribute_names.is_empty() {
                String::new()
            } else {
                format!(", {}", p.attribute_names.join(" "))
            };
            writeln!(
                f,
                "      PARTUUID {}, LBAs {}..={}, {}{attrs}",
                p.partuuid,
                p.first_lba,
                p.last_lba,
                format_size(p.size)
            )?;
        }

        if let Some(e) = &r.esp {
            writeln!(f)?;
            writeln!(
                f,
                "ESP (partition {}): {}, label {}, serial {}, {}-byte clusters",
                e.partition,
                e.fat,
                e.label.as_deref().unwrap_or("(none)"),
                e.serial.as_deref().unwrap_or("(none)"),
                e.cluster_size
            )?;
            for file in &e.files {
                if file.is_dir {
                    writeln!(f, "  {}/", file.path)?;
                } else {
                    writeln!(f, "  {:<40} {}", file.path, format_size(file.size))?;
                }
            }
        }

        if let Some(u) = &r.uki {
            writeln!(f)?;
            writeln!(f, "UKI {} ({}, {})", u.path, format_size(u.size), u.machine)?;
            let none = "(missing)";
            writeln!(
                f,
                "  kernel      {}",
                u.kernel_release.as_deref().unwrap_or(none)
            )?;
            writeln!(f, "  os          {}", u.os.as_deref().unwrap_or(none))?;
            writeln!(f, "  cmdline     {}", u.cmdline.as_deref().unwrap_or(none))?;
            writeln!(f, "  roothash    {}", u.roothash.as_deref().unwrap_or(none))?;
            let sections: Vec<String> = u
                .sections
                .iter()
                .map(|s| format!("{} {}", s.name, format_size(s.size)))
                .collect();
            writeln!(f, "  sections    {}", sections.join(", "))?;
        }

        if let Some(v) = &r.verity {
            writeln!(f)?;
            writeln!(
                f,
                "verity superblock (partition {}): format {}, {}, {}-byte data and {}-byte hash blocks",
                v.partition, v.version, v.algorithm, v.data_block_size, v.hash_block_size
            )?;
            writeln!(
                f,
                "  data        {} blocks ({})",
                v.data_blocks,
                format_size(v.data_blocks.saturating_mul(u64::from(v.data_block_size)))
            )?;
            writeln!(f, "  salt        {}", v.salt)?;
            writeln!(f, "  uuid        {}", v.uuid)?;
        }

        if let Some(e) = &r.root_fs {
            writeln!(f)?;
            writeln!(
                f,
                "root filesystem (partition {}): ext4, label \"{}\"",
                e.partition, e.label
            )?;
            writeln!(f, "  UUID        {}", e.uuid)?;
            writeln!(
                f,
                "  size        {} ({} blocks of {} bytes)",
                format_size(e.size),
                e.blocks,
                e.block_size
            )?;
            writeln!(
                f,
                "  free        {} ({} blocks); {} of {} inodes free",
                format_size(e.free_blocks.saturating_mul(e.block_size)),
                e.free_blocks,
                e.free_inodes,
                e.inodes
            )?;
        }

        writeln!(f)?;
        match (&r.manifest, &r.manifest_note) {
            (Some(m), _) => {
                writeln!(f, "manifest {}", m.path.display())?;
                writeln!(
                    f,
                    "  built by    kiln {} from profile {} (image `{}`, {})",
                    m.kiln_version, m.profile, m.name, m.arch
                )?;
                writeln!(f, "  epoch       {} ({})", m.epoch, utc(m.epoch))?;
                writeln!(
                    f,
                    "  kernel      {} {} ({})",
                    m.kernel_package, m.kernel_version, m.kernel_release
                )?;
                if self.packages {
                    writeln!(f, "  packages    {}", m.packages.len())?;
                    for p in &m.packages {
                        writeln!(
                            f,
                            "    {:<36} {} ({}, {})",
                            p.name, p.version, p.arch, p.role
                        )?;
                    }
                } else {
                    writeln!(
                        f,
                        "  packages    {} (`kiln inspect --packages` lists them)",
                        m.packages.len()
                    )?;
                }
            }
            (None, note) => writeln!(
                f,
                "manifest    none: {}",
                note.as_deref().unwrap_or("not read")
            )?,
        }

        if let Some(v) = &r.verification {
            writeln!(f)?;
            write!(f, "{v}")?;
        }
        if !r.problems.is_empty() {
            writeln!(f)?;
            writeln!(f, "problems")?;
            for p in &r.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod tests;
