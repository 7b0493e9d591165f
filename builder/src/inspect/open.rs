//! Opening the input: its format comes from its bytes, and every format
//! becomes a raw disk (qcow2 through `qemu-img convert`, raw.zst and the GCE
//! tarball unpacked to a sparse temporary file, a fixed VHD minus its
//! footer).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{DiskFile, InspectError, VhdFooter};
use crate::plan::Guid;
use crate::profile::Format;
use crate::runner::{Cmd, Runner};

/// The opened input.
#[derive(Debug)]
pub(super) struct Opened {
    pub(super) disk: DiskFile,
    pub(super) format: Format,
    pub(super) file_size: u64,
    pub(super) vhd: Option<VhdFooter>,
    pub(super) notes: Vec<String>,
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
        let decoded = match ruzstd::decoding::StreamingDecoder::new(&mut *input) {
            Ok(mut frame) => copy_sparse_at(&mut frame, out, pos).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        pos = match decoded {
            Ok(end) => end,
            // The decoder's own text is a debug dump of its state; say what happened.
            Err(_) if input.fill_buf().map(|b| b.is_empty()).unwrap_or(true) => {
                return Err(format!(
                    "the file ends inside a zstd frame{}: it is truncated (an interrupted \
                     download or copy?); copy it again",
                    if pos > 0 {
                        format!(", after {} of disk", crate::profile::format_size(pos))
                    } else {
                        String::new()
                    }
                ))
            }
            Err(e) => {
                let short = e.split(['(', ':']).next().unwrap_or_default().trim();
                return Err(format!(
                    "corrupt zstd data after {} of disk ({short})",
                    crate::profile::format_size(pos)
                ));
            }
        };
    }
    out.set_len(pos).map_err(|e| e.to_string())?;
    Ok(pos)
}

/// A compressed image [`unpack_into`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packed {
    /// kiln's raw.zst: one or more zstd frames.
    RawZst,
    /// A GCE image: a gzip tarball holding `disk.raw`.
    Gce,
}

/// Why [`unpack_into`] failed, for the caller to name the file.
#[derive(Debug)]
pub(crate) enum UnpackError {
    /// The data is damaged or cut short: what is wrong.
    Damaged(String),
    /// A gzip tarball without `disk.raw`.
    NoDiskRaw,
}

/// Unpacks a raw.zst or a GCE tarball's `disk.raw` into `out`, leaving zero
/// blocks as holes; returns the raw disk's size. `inspect`, `flash` and `run`
/// read compressed images through this one function.
pub(crate) fn unpack_into(file: File, packed: Packed, out: &File) -> Result<u64, UnpackError> {
    let mut input = io::BufReader::new(file);
    match packed {
        Packed::RawZst => unzstd_sparse(&mut input, out).map_err(UnpackError::Damaged),
        Packed::Gce => {
            let damaged = |e: io::Error| UnpackError::Damaged(e.to_string());
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
            for entry in archive.entries().map_err(damaged)? {
                let mut entry = entry.map_err(damaged)?;
                if entry.path().is_ok_and(|p| p.as_os_str() == "disk.raw") {
                    return copy_sparse(&mut entry, out).map_err(damaged);
                }
            }
            Err(UnpackError::NoDiskRaw)
        }
    }
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
    let packed = if format == Format::RawZst {
        Packed::RawZst
    } else {
        Packed::Gce
    };
    match unpack_into(file, packed, &out) {
        Ok(_) => {}
        Err(UnpackError::Damaged(what)) => return Err(fail(what)),
        Err(UnpackError::NoDiskRaw) => {
            return Err(InspectError::NotAnImage {
                path: path.to_path_buf(),
                what: "a gzip tarball without `disk.raw`, so not a GCE image".into(),
            })
        }
    }
    drop(out);
    Ok((open_raw(path, &raw, None)?, dir))
}

/// Opens the image, detecting its format from its bytes (not its name).
pub(super) fn open(path: &Path, runner: &dyn Runner) -> Result<Opened, InspectError> {
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
