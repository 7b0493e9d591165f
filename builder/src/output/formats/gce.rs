//! `<stem>.gce.tar.gz`: what Google Compute Engine imports as a custom
//! image, a gzip'd GNU tar archive holding one file, `disk.raw`.
//!
//! The tar member has a fixed header (mode 0644, owner 0/0 `root`, mtime =
//! the build epoch); the gzip header has no name and mtime 0. The deflate
//! stream is one gzip member made of independent pieces: data is cut into
//! [`super::CHUNK`]s, each deflated on its own (ending with a sync flush, so
//! the next piece starts on a byte boundary) on every core; runs of zeros
//! are written here directly as deflate blocks that repeat a zero byte
//! (2 bits per 258 bytes), since a disk image is mostly unwritten space.

use std::io::{self, Write};
use std::path::Path;

use flate2::write::DeflateEncoder;
use flate2::Compression;

use super::{
    create_output, finish_output, io_at, run_pipeline, Encoder, FormatError, Seen, Segment, Source,
    MERGE_GAP, ZEROS,
};
use crate::output::manifest::FileDigest;

/// Deflate level of data pieces: fast, since the image is mostly
/// compressed kernel, initramfs and binaries anyway. Not 1: the backend's
/// level-1 fast path left some sync-flushed pieces short (a 4 MiB piece of
/// one x86_64 image inflated to 533 bytes less, so the gzip stream broke);
/// level 2 encodes every piece of that image and the others whole.
const LEVEL: u32 = 2;
const TAR_BLOCK: u64 = 512;
/// GNU tar pads archives to whole records of 20 blocks.
const TAR_RECORD: u64 = 20 * TAR_BLOCK;
/// gzip header: deflate, no flags (no name), mtime 0, no extra flags, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
/// An empty final deflate block (fixed Huffman, end-of-block only).
const FINAL_BLOCK: [u8; 2] = [0x03, 0x00];
/// Zero bytes per hand-made deflate block.
const ZERO_BLOCK: u64 = 4 << 20;

/// The tar header of `disk.raw`.
fn tar_header(size: u64, epoch: i64) -> io::Result<Vec<u8>> {
    let mut h = tar::Header::new_gnu();
    h.set_path("disk.raw")?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_username("root")?;
    h.set_groupname("root")?;
    h.set_mtime(u64::try_from(epoch).unwrap_or(0));
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h.as_bytes().to_vec())
}

/// Writes the archive; returns its digest.
pub(crate) fn write(
    src: &Source<'_>,
    out_path: &Path,
    epoch: i64,
    report: &dyn Fn(u64),
) -> Result<FileDigest, FormatError> {
    let header = tar_header(src.size, epoch).map_err(io_at(out_path, "making the tar header"))?;
    let total = (TAR_BLOCK + src.size.next_multiple_of(TAR_BLOCK) + 2 * TAR_BLOCK)
        .next_multiple_of(TAR_RECORD);
    let mut segments = vec![Segment::Mem(header)];
    segments.extend(src.segments(MERGE_GAP));
    segments.push(Segment::Zeros(total - TAR_BLOCK - src.size));

    let mut out = create_output(out_path)?;
    out.write_all(&GZIP_HEADER)
        .map_err(io_at(out_path, "writing"))?;
    let mut crc = crc32fast::Hasher::new();
    run_pipeline(
        src,
        segments,
        &Deflate(Compression::new(LEVEL)),
        &mut out,
        out_path,
        &mut |seen| match seen {
            Seen::Data(_, bytes) => crc.update(bytes),
            Seen::Zeros(n) => crc_add_zeros(&mut crc, n),
        },
        &|done| report(done.saturating_sub(TAR_BLOCK)),
    )?;
    let mut trailer = FINAL_BLOCK.to_vec();
    trailer.extend_from_slice(&crc.finalize().to_le_bytes());
    // ISIZE is the length modulo 2^32.
    trailer.extend_from_slice(&(total as u32).to_le_bytes());
    out.write_all(&trailer)
        .map_err(io_at(out_path, "writing"))?;
    finish_output(out_path, out)
}

/// Extends `crc` by `n` zero bytes without feeding them all: CRCs of
/// concatenations combine, so the CRC of 4 KiB of zeros is doubled up to
/// the powers of two that make up `n`.
fn crc_add_zeros(crc: &mut crc32fast::Hasher, n: u64) {
    const UNIT: u64 = 4096;
    let mut power = crc32fast::Hasher::new();
    power.update(&ZEROS[..UNIT as usize]);
    let mut zeros = crc32fast::Hasher::new();
    let mut units = n / UNIT;
    while units > 0 {
        if units & 1 == 1 {
            zeros.combine(&power);
        }
        let p = power.clone();
        power.combine(&p);
        units >>= 1;
    }
    zeros.update(&ZEROS[..(n % UNIT) as usize]);
    crc.combine(&zeros);
}

struct Deflate(Compression);

impl Encoder for Deflate {
    fn data(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        deflate_piece(bytes, self.0)
    }

    fn zeros(&self, len: u64, out: &mut dyn Write) -> io::Result<()> {
        write_zero_blocks(len, out)
    }
}

/// Raw deflate of `bytes` as non-final blocks ending on a byte boundary
/// (a sync flush), with no reference to anything before it.
///
/// flate2's writer does the flush: its loop runs the compressor until a call
/// adds no output.
fn deflate_piece(bytes: &[u8], level: Compression) -> io::Result<Vec<u8>> {
    let mut e = DeflateEncoder::new(Vec::with_capacity(bytes.len() / 2 + 4096), level);
    e.write_all(bytes)?;
    e.flush()?;
    // Taken before the encoder is dropped: dropping it finishes the stream (a final
    // block), which must not be part of a piece.
    Ok(std::mem::take(e.get_mut()))
}

/// Deflate's bit order: values least significant bit first, Huffman codes
/// most significant bit first.
struct Bits {
    buf: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, count: u32) {
        debug_assert!(count <= 32);
        self.acc |= value << self.n;
        self.n += count;
        while self.n >= 8 {
            self.buf.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn code(&mut self, code: u32, len: u32) {
        let reversed = code.reverse_bits() >> (32 - len);
        self.put(u64::from(reversed), len);
    }

    fn zero_bits(&mut self, mut count: u64) {
        while count > 0 {
            let k = count.min(32) as u32;
            self.put(0, k);
            count -= u64::from(k);
        }
    }

    fn align(&mut self) {
        if self.n > 0 {
            self.put(0, 8 - self.n);
        }
    }
}

/// Code-length code order of the dynamic block header (RFC 1951 3.2.7).
const CL_ORDER: [usize; 18] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1];

/// Writes `len` zero bytes as deflate blocks, ending with an empty stored
/// block so the stream is byte-aligned afterwards.
///
/// Each block is a dynamic-Huffman block with three literal/length
/// symbols: literal 0 (code `10`), end of block (`11`) and length 258
/// (`0`); and two distance codes (`0` = distance 1, `1` unused, so the tree
/// is complete). It starts with one literal zero, then copies of 258 bytes
/// from distance 1, then literal zeros for the remainder.
pub(crate) fn write_zero_blocks(len: u64, out: &mut dyn Write) -> io::Result<()> {
    let mut b = Bits {
        buf: Vec::with_capacity(64 << 10),
        acc: 0,
        n: 0,
    };
    let mut left = len;
    while left > 0 {
        let n = left.min(ZERO_BLOCK);
        left -= n;
        b.put(0, 1); // not the final block
        b.put(2, 2); // dynamic Huffman
        b.put(286 - 257, 5); // HLIT: literal/length codes 0..=285
        b.put(2 - 1, 5); // HDIST: distance codes 0..=1
        b.put(18 - 4, 4); // HCLEN: code-length codes up to symbol 1 in CL_ORDER
        for sym in CL_ORDER {
            let len = match sym {
                18 => 1,
                1 | 2 => 2,
                _ => 0,
            };
            b.put(len, 3);
        }
        // Code-length codes: 18 -> `0`, 1 -> `10`, 2 -> `11`.
        b.code(0b11, 2); // literal 0: length 2
        b.code(0, 1);
        b.put(138 - 11, 7); // literals 1..=138: unused
        b.code(0, 1);
        b.put(117 - 11, 7); // literals 139..=255: unused
        b.code(0b11, 2); // 256 (end of block): length 2
        b.code(0, 1);
        b.put(28 - 11, 7); // lengths 257..=284: unused
        b.code(0b10, 2); // 285 (length 258): length 1
        b.code(0b10, 2); // distance 0: length 1
        b.code(0b10, 2); // distance 1: length 1
        b.code(0b10, 2); // literal 0
        let copies = (n - 1) / 258;
        b.zero_bits(2 * copies); // length 258 (`0`), distance 1 (`0`)
        for _ in 0..(n - 1) % 258 {
            b.code(0b10, 2);
        }
        b.code(0b11, 2); // end of block
        if b.buf.len() >= 60 << 10 {
            out.write_all(&b.buf)?;
            b.buf.clear();
        }
    }
    // An empty stored block: re-aligns to a byte boundary.
    b.put(0, 3);
    b.align();
    b.buf.extend_from_slice(&[0x00, 0x00, 0xff, 0xff]);
    out.write_all(&b.buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(stream: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(stream)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn zero_blocks_and_data_pieces_inflate() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 251) as u8).collect();
        for zeros in [1u64, 2, 258, 259, 260, 1000, ZERO_BLOCK + 3] {
            let mut s = deflate_piece(&data, Compression::new(LEVEL)).unwrap();
            write_zero_blocks(zeros, &mut s).unwrap();
            s.extend(deflate_piece(b"end", Compression::new(LEVEL)).unwrap());
            s.extend_from_slice(&FINAL_BLOCK);
            let mut want = data.clone();
            want.extend(std::iter::repeat_n(0u8, zeros as usize));
            want.extend(b"end");
            assert_eq!(inflate(&s), want, "{zeros} zeros");
        }
    }

    #[test]
    fn crc_of_zero_runs_matches_feeding_them() {
        for n in [0u64, 1, 4095, 4096, 4097, 3 * 4096 + 5, 10_000_000] {
            let mut fast = crc32fast::Hasher::new();
            fast.update(b"prefix");
            crc_add_zeros(&mut fast, n);
            let mut slow = crc32fast::Hasher::new();
            slow.update(b"prefix");
            slow.update(&vec![0u8; n as usize]);
            assert_eq!(fast.finalize(), slow.finalize(), "{n} zeros");
        }
    }

    #[test]
    fn zero_blocks_are_small() {
        let mut s = Vec::new();
        write_zero_blocks(1 << 30, &mut s).unwrap();
        assert!(s.len() < 1_100_000, "{} bytes for 1 GiB of zeros", s.len());
    }
}
