//! The raw disk being read: bounds-checked reads, partition ranges and
//! hashes over them.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::{fat, InspectError, PartitionInfo};

/// The raw disk being inspected: the image itself, or a temporary raw copy
/// of a converted one. Messages always name the user's file.
#[derive(Debug)]
pub(crate) struct DiskFile {
    /// The user's file (for messages).
    pub(crate) name: PathBuf,
    pub(super) file: File,
    /// Bytes of raw disk (a VHD's footer excluded).
    pub(crate) len: u64,
}

impl DiskFile {
    /// Maps an I/O error to one naming the user's file and `action`.
    pub(super) fn io(&self, action: &'static str) -> impl FnOnce(io::Error) -> InspectError + '_ {
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

/// SHA-256 of everything `r` yields, lowercase hex.
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
