//! `<stem>.raw.zst` and its block map `<stem>.raw.bmap`.
//!
//! The zstd file is a sequence of frames (the format allows any number;
//! `zstd -d` and bmaptool read them as one stream). Data is cut into
//! [`super::CHUNK`]-sized pieces, each compressed as its own frame by ruzstd
//! (pure Rust, `Fastest`, with a content checksum) on every core. Runs of
//! zeros (the unwritten bulk of a disk image) become frames of RLE blocks
//! written here directly: 4 bytes per 128 KiB instead of a trip through the
//! compressor.

use std::io::{self, Write};
use std::path::Path;

use ruzstd::encoding::{compress, CompressionLevel};

use super::{
    bmap, create_output, finish_output, io_at, run_pipeline, Encoder, FormatError, Seen, Source,
    MERGE_GAP,
};
use crate::output::manifest::FileDigest;

const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
/// Frame header descriptor: no content size, not single-segment, no
/// checksum, no dictionary.
const ZERO_FRAME_DESCRIPTOR: u8 = 0x00;
/// Window descriptor for a 128 KiB window (exponent 7: 2^(10+7)).
const ZERO_FRAME_WINDOW: u8 = 7 << 3;
/// Largest block a 128 KiB window allows.
const MAX_BLOCK: u64 = 128 << 10;
const BLOCK_TYPE_RLE: u32 = 1;

struct Zstd;

impl Encoder for Zstd {
    fn data(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(bytes.len() / 2);
        // Both ends are in memory, so ruzstd's internal unwraps on I/O cannot fire.
        compress(bytes, &mut out, CompressionLevel::Fastest);
        Ok(out)
    }

    fn zeros(&self, len: u64, out: &mut dyn Write) -> io::Result<()> {
        write_zero_frame(len, out)
    }
}

/// One frame that decodes to `len` zero bytes: RLE blocks of at most 128 KiB.
pub(crate) fn write_zero_frame(len: u64, out: &mut dyn Write) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(64 << 10);
    buf.extend_from_slice(&MAGIC);
    buf.push(ZERO_FRAME_DESCRIPTOR);
    buf.push(ZERO_FRAME_WINDOW);
    let mut left = len;
    while left > 0 {
        let n = left.min(MAX_BLOCK);
        left -= n;
        let last = u32::from(left == 0);
        // n <= 2^17 fits the 21-bit size field.
        let header = last | (BLOCK_TYPE_RLE << 1) | ((n as u32) << 3);
        buf.extend_from_slice(&header.to_le_bytes()[..3]);
        buf.push(0);
        if buf.len() >= (64 << 10) - 8 {
            out.write_all(&buf)?;
            buf.clear();
        }
    }
    out.write_all(&buf)
}

/// Writes `zst_path` and `bmap_path`; returns their digests.
pub(crate) fn write(
    src: &Source<'_>,
    zst_path: &Path,
    bmap_path: &Path,
    report: &dyn Fn(u64),
) -> Result<(FileDigest, FileDigest), FormatError> {
    let mut out = create_output(zst_path)?;
    let mut hasher = bmap::RangeHasher::new(src.mapped);
    run_pipeline(
        src,
        src.segments(MERGE_GAP),
        &Zstd,
        &mut out,
        zst_path,
        &mut |seen| {
            if let Seen::Data(Some(offset), bytes) = seen {
                hasher.update(offset, bytes);
            }
        },
        report,
    )?;
    let zst = finish_output(zst_path, out)?;
    let digests = hasher.finish().ok_or_else(|| FormatError::BadJob {
        raw: src.path.to_path_buf(),
        what: "a mapped range was not read whole while compressing".into(),
    })?;
    let text = bmap::render(src.size, src.mapped, &digests);
    let mut b = create_output(bmap_path)?;
    b.write_all(text.as_bytes())
        .map_err(io_at(bmap_path, "writing"))?;
    let bmap = finish_output(bmap_path, b)?;
    Ok((zst, bmap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decode(frames: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = frames;
        while !rest.is_empty() {
            let mut dec = ruzstd::decoding::StreamingDecoder::new(&mut rest).unwrap();
            dec.read_to_end(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn zero_frames_decode_to_zeros() {
        for len in [1u64, 4096, MAX_BLOCK, MAX_BLOCK + 1, 3 * MAX_BLOCK + 17] {
            let mut f = Vec::new();
            write_zero_frame(len, &mut f).unwrap();
            assert_eq!(decode(&f), vec![0u8; len as usize], "len {len}");
        }
    }

    #[test]
    fn data_and_zero_frames_concatenate() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut f = Zstd.data(&data).unwrap();
        write_zero_frame(5000, &mut f).unwrap();
        f.extend(Zstd.data(b"tail").unwrap());
        let mut want = data.clone();
        want.extend(vec![0u8; 5000]);
        want.extend(b"tail");
        assert_eq!(decode(&f), want);
    }
}
