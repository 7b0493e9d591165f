//! The image side of `kiln flash`: its format (from its bytes), its size, the
//! byte ranges that hold data, and a forward reader of its raw bytes.
//!
//! - raw: read in place; ranges from the block map beside it, else the whole
//!   image (nothing else says which zero blocks matter: a dm-verity root
//!   needs every one of them, over whatever the disk held before).
//! - raw.zst: decompressed as it streams (libzstd); the block map beside it
//!   (`<stem>.raw.bmap`) is required, since the stream alone does not say
//!   which zeros matter.
//! - qcow2: converted to a sparse temporary raw file by `qemu-img convert`,
//!   then as raw.
//! - fixed VHD: the raw disk before its 512-byte footer.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::bmap::{self, Bmap};
use super::FlashError;
use crate::inspect::open::{unpack_into, Packed, UnpackError};
use crate::runner::{Cmd, Runner};

/// The formats `kiln flash` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A raw disk.
    Raw,
    /// zstd-compressed raw disk.
    RawZst,
    /// qcow2.
    Qcow2,
    /// Fixed VHD (raw plus a footer).
    Vhd,
    /// GCE's tar.gz with `disk.raw` inside (`kiln run` boots it; not flashed).
    Gce,
}

impl ImageFormat {
    /// The name as `kiln build --format` spells it.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::RawZst => "raw.zst",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Gce => "gce",
        }
    }
}

/// Which block map to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BmapChoice {
    /// `<stem>.raw.bmap` beside the image, if it exists (required for raw.zst).
    #[default]
    Beside,
    /// This file.
    Path(PathBuf),
    /// None: write the image's allocated extents.
    Ignore,
}

/// Where the raw bytes come from.
#[derive(Debug)]
enum Data {
    /// A raw file (the image, a VHD's disk part, or a converted qcow2).
    File(PathBuf),
    /// A zstd stream.
    Zst(PathBuf),
}

/// An opened image.
#[derive(Debug)]
pub struct Image {
    /// The path given.
    pub path: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// Size of the raw disk in bytes.
    pub size: u64,
    /// Byte ranges that must be written, sorted and disjoint.
    pub ranges: Vec<Range<u64>>,
    /// SHA-256 per range, from the block map.
    pub digests: Option<Vec<[u8; 32]>>,
    /// The block map used, if any.
    pub bmap: Option<PathBuf>,
    data: Data,
    _temp: Option<tempfile::TempDir>,
}

/// Reads an image's raw bytes front to back.
pub trait ImageRead {
    /// Fills `buf` with the bytes at `offset` (zeros past the image's end).
    /// Offsets must not go backwards for streamed formats.
    fn read_forward(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Reads to the end and returns the raw disk's size.
    fn total_size(&mut self) -> io::Result<u64>;
}

struct RawRead {
    file: File,
    len: u64,
}

impl ImageRead for RawRead {
    fn read_forward(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = (self.len.saturating_sub(offset)).min(buf.len() as u64) as usize;
        self.file.read_exact_at(&mut buf[..n], offset)?;
        buf[n..].fill(0);
        Ok(())
    }

    fn total_size(&mut self) -> io::Result<u64> {
        Ok(self.len)
    }
}

struct ZstRead {
    dec: zstd::stream::read::Decoder<'static, BufReader<File>>,
    pos: u64,
    ended: bool,
}

impl ZstRead {
    /// Reads up to `buf.len()` bytes; fewer only at the end of the stream.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() && !self.ended {
            match self.dec.read(&mut buf[got..]) {
                Ok(0) => self.ended = true,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    fn skip_to(&mut self, offset: u64) -> io::Result<()> {
        if offset < self.pos {
            return Err(io::Error::other(format!(
                "read at byte {offset} after byte {}: a zstd stream reads forward only",
                self.pos
            )));
        }
        let mut scratch = vec![0u8; 1 << 20];
        while self.pos < offset && !self.ended {
            let n = ((offset - self.pos) as usize).min(scratch.len());
            self.fill(&mut scratch[..n])?;
        }
        Ok(())
    }
}

impl ImageRead for ZstRead {
    fn read_forward(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.skip_to(offset)?;
        let n = if self.pos == offset {
            self.fill(buf)?
        } else {
            0
        };
        buf[n..].fill(0);
        Ok(())
    }

    fn total_size(&mut self) -> io::Result<u64> {
        self.skip_to(u64::MAX)?;
        Ok(self.pos)
    }
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const GZIP_MAGIC: [u8; 2] = [0x1F, 0x8B];
const VHD_COOKIE: &[u8; 8] = b"conectix";

/// `<stem>.raw.bmap` for `<stem>.raw.zst`, `<stem>.raw`, `<stem>.qcow2` or `<stem>.vhd`.
pub fn bmap_beside(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = [".raw.zst", ".raw", ".qcow2", ".vhd", ".img"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(&name);
    image.with_file_name(format!("{stem}.raw.bmap"))
}

/// The format of the image at `path`, from its bytes (not its name), and the
/// file's size.
pub fn detect(path: &Path) -> Result<(ImageFormat, u64), FlashError> {
    let meta = std::fs::metadata(path).map_err(|source| FlashError::io(path, "opening", source))?;
    if !meta.is_file() {
        return Err(FlashError::NotAnImage {
            path: path.to_path_buf(),
            what: "it is not a regular file".into(),
        });
    }
    let file = File::open(path).map_err(|source| FlashError::io(path, "opening", source))?;
    Ok((sniff(path, &file, meta.len())?, meta.len()))
}

/// Sniffs the format from the first and last 512 bytes.
fn sniff(path: &Path, file: &File, size: u64) -> Result<ImageFormat, FlashError> {
    let not = |what: &str| FlashError::NotAnImage {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    let mut head = vec![0u8; size.min(512) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|source| FlashError::io(path, "reading", source))?;
    if head.starts_with(QCOW2_MAGIC) {
        return Ok(ImageFormat::Qcow2);
    }
    if head.starts_with(&ZSTD_MAGIC) {
        return Ok(ImageFormat::RawZst);
    }
    if head.starts_with(&GZIP_MAGIC) {
        return Ok(ImageFormat::Gce);
    }
    if head.starts_with(b"<?xml") || head.starts_with(b"<bmap") {
        return Err(not(
            "it is an XML file (a block map?); name the image it describes",
        ));
    }
    if size >= 1024 {
        let mut tail = [0u8; 512];
        file.read_exact_at(&mut tail, size - 512)
            .map_err(|source| FlashError::io(path, "reading", source))?;
        if tail.starts_with(VHD_COOKIE) {
            return Ok(ImageFormat::Vhd);
        }
    }
    // A raw disk must start with a protective MBR and a GPT header.
    let mut lba1 = [0u8; 8];
    if size < 1024 || file.read_exact_at(&mut lba1, 512).is_err() || &lba1 != b"EFI PART" {
        return Err(not(
            "it is neither a GPT disk (no `EFI PART` at byte 512) nor raw.zst, qcow2 or VHD",
        ));
    }
    Ok(ImageFormat::Raw)
}

fn read_bmap(path: &Path) -> Result<Bmap, FlashError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| FlashError::io(path, "reading the block map", source))?;
    bmap::parse(&text).map_err(|why| FlashError::BadBmap {
        path: path.to_path_buf(),
        why,
    })
}

/// Opens `path`, detecting its format; `runner` runs `qemu-img` for qcow2.
pub fn open(path: &Path, choice: &BmapChoice, runner: &dyn Runner) -> Result<Image, FlashError> {
    let (format, file_len) = detect(path)?;
    let bmap_path = match choice {
        BmapChoice::Path(p) => Some(p.clone()),
        BmapChoice::Beside => Some(bmap_beside(path)).filter(|p| p.is_file()),
        BmapChoice::Ignore => None,
    };
    let bmap = bmap_path.as_deref().map(read_bmap).transpose()?;
    let mut temp = None;
    let (data, size) = match format {
        ImageFormat::Raw => (Data::File(path.to_path_buf()), file_len),
        ImageFormat::Vhd => (Data::File(path.to_path_buf()), file_len - 512),
        ImageFormat::Gce => {
            return Err(FlashError::NotAnImage {
                path: path.to_path_buf(),
                what: "it is a GCE tarball (for uploading); flash the raw, raw.zst or qcow2 \
                       image instead"
                    .into(),
            })
        }
        ImageFormat::RawZst => {
            let Some(b) = &bmap else {
                return Err(FlashError::NoBmap {
                    path: path.to_path_buf(),
                    bmap: bmap_beside(path),
                });
            };
            (Data::Zst(path.to_path_buf()), b.image_size)
        }
        ImageFormat::Qcow2 => {
            let dir = tempfile::Builder::new()
                .prefix("kiln-flash-")
                .tempdir()
                .map_err(|source| {
                    FlashError::io(&std::env::temp_dir(), "creating a folder in", source)
                })?;
            let raw = dir.path().join("disk.raw");
            let cmd = Cmd::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(path)
                .arg(&raw);
            runner.run(&cmd).map_err(|source| FlashError::Convert {
                path: path.to_path_buf(),
                source,
            })?;
            let len = std::fs::metadata(&raw)
                .map_err(|source| FlashError::io(&raw, "reading the size of", source))?
                .len();
            temp = Some(dir);
            (Data::File(raw), len)
        }
    };
    let (ranges, digests) = match &bmap {
        Some(b) => {
            if b.image_size != size {
                return Err(FlashError::BmapMismatch {
                    path: path.to_path_buf(),
                    bmap: bmap_path.clone().unwrap_or_default(),
                    why: format!(
                        "the map is for a {}-byte image, this one is {size} bytes",
                        b.image_size
                    ),
                });
            }
            (b.ranges.clone(), b.digests.clone())
        }
        // Without a map nothing says which zero blocks the image needs (a
        // dm-verity root needs all of them), so every byte is written.
        None => (std::iter::once(0..size).collect(), None),
    };
    Ok(Image {
        path: path.to_path_buf(),
        format,
        size,
        ranges,
        digests,
        bmap: bmap.is_some().then_some(bmap_path).flatten(),
        data,
        _temp: temp,
    })
}

/// Unpacks a raw.zst or GCE image into `out` (sparse); returns the raw
/// disk's size.
pub fn unpack(path: &Path, format: ImageFormat, out: &File) -> Result<u64, FlashError> {
    let packed = match format {
        ImageFormat::RawZst => Packed::RawZst,
        ImageFormat::Gce => Packed::Gce,
        other => {
            return Err(FlashError::Internal(format!(
                "unpack called for a {} image",
                other.name()
            )))
        }
    };
    let file = File::open(path).map_err(|source| FlashError::io(path, "opening", source))?;
    unpack_into(file, packed, out).map_err(|e| FlashError::NotAnImage {
        path: path.to_path_buf(),
        what: match e {
            UnpackError::Damaged(what) => format!("it cannot be unpacked: {what}"),
            UnpackError::NoDiskRaw => {
                "a gzip tarball without `disk.raw`, so not a GCE image".into()
            }
        },
    })
}

impl Image {
    /// A fresh reader from the image's first byte.
    pub fn reader(&self) -> Result<Box<dyn ImageRead>, FlashError> {
        match &self.data {
            Data::File(p) => {
                let file = File::open(p).map_err(|source| FlashError::io(p, "opening", source))?;
                Ok(Box::new(RawRead {
                    file,
                    len: self.size,
                }))
            }
            Data::Zst(p) => {
                let file = File::open(p).map_err(|source| FlashError::io(p, "opening", source))?;
                let dec = zstd::stream::read::Decoder::new(file)
                    .map_err(|source| FlashError::io(p, "starting to decompress", source))?;
                Ok(Box::new(ZstRead {
                    dec,
                    pos: 0,
                    ended: false,
                }))
            }
        }
    }

    /// The first `len` bytes of the raw disk.
    pub fn head(&self, len: u64) -> Result<Vec<u8>, FlashError> {
        let mut buf = vec![0u8; len.min(self.size) as usize];
        self.reader()?
            .read_forward(0, &mut buf)
            .map_err(|source| FlashError::io(&self.path, "reading", source))?;
        Ok(buf)
    }

    /// Bytes that will be read from the image (the mapped ranges).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bmap_is_looked_up_by_stem() {
        for name in ["a.raw.zst", "a.raw", "a.qcow2", "a.vhd"] {
            assert_eq!(
                bmap_beside(Path::new("/o").join(name).as_path()),
                Path::new("/o/a.raw.bmap")
            );
        }
    }
}
