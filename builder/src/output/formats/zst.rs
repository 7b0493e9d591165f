//! `<stem>.raw.zst` and its block map `<stem>.raw.bmap`.
//!
//! The zstd file is a sequence of frames (the format allows any number;
//! `zstd -d` and bmaptool read them as one stream). Data is cut into
//! [`FRAME`]-sized pieces, each compressed as its own frame by libzstd (the
//! `zstd` crate, which builds the library from the source it pins, so every
//! machine runs the same encoder) at the profile's level, with long-distance
//! matching and a content checksum, on every core. Runs of zeros (the
//! unwritten bulk of a disk image) become frames of RLE blocks written here
//! directly: 4 bytes per 128 KiB instead of a trip through the compressor.
//!
//! Each frame is made by a fresh single-threaded compressor from its piece
//! and the level alone, and pieces start at fixed offsets of the image, so
//! the file is the same whatever the number of cores.

use std::io::{self, Write};
use std::path::Path;

use zstd::bulk::Compressor;
use zstd::zstd_safe::CParameter;

use super::{
    bmap, create_output, finish_output, io_at, run_pipeline, Encoder, FormatError, Seen, Source,
    MERGE_GAP,
};
use crate::output::manifest::FileDigest;
use crate::profile::ZstdLevel;

/// Bytes of the image in one data frame. Long-distance matching only finds
/// repeats inside a frame, and an image's repeats can lie tens of MiB apart,
/// so larger frames make smaller files: on the default image, 128 MiB frames
/// are 7-9 % smaller than 32 MiB ones in the same time (BENCHMARKS.md,
/// "raw.zst encoder"). 128 MiB is the largest window that `zstd -d`, and so
/// bmaptool, decodes without `--long`. The price is memory: each worker
/// holds its piece and its output.
pub(crate) const FRAME: usize = 128 << 20;
/// log2 of [`FRAME`]: the window, set explicitly so that no change of
/// libzstd's defaults can make a frame need more memory to decode.
const FRAME_LOG: u32 = FRAME.trailing_zeros();

const MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();
/// Frame header descriptor: no content size, not single-segment, no
/// checksum, no dictionary.
const ZERO_FRAME_DESCRIPTOR: u8 = 0x00;
/// Window descriptor for a 128 KiB window (exponent 7: 2^(10+7)).
const ZERO_FRAME_WINDOW: u8 = 7 << 3;
/// Largest block a 128 KiB window allows.
const MAX_BLOCK: u64 = 128 << 10;
const BLOCK_TYPE_RLE: u32 = 1;

/// The libzstd encoder at one level.
pub(crate) struct Zstd {
    level: ZstdLevel,
}

impl Zstd {
    pub(crate) fn new(level: ZstdLevel) -> Self {
        Zstd { level }
    }

    /// A compressor set up for one frame. Every parameter that shapes the
    /// bytes is set here, so a frame depends on its piece and the level only.
    /// It runs on the calling thread: the crate is built without zstd's
    /// worker threads (the pipeline already compresses a frame per core).
    fn compressor(&self) -> io::Result<Compressor<'static>> {
        let mut c = Compressor::new(self.level.get())?;
        for p in [
            CParameter::ChecksumFlag(true),
            CParameter::ContentSizeFlag(true),
            CParameter::EnableLongDistanceMatching(true),
            CParameter::WindowLog(FRAME_LOG),
        ] {
            c.set_parameter(p)?;
        }
        Ok(c)
    }
}

impl Encoder for Zstd {
    fn piece_size(&self) -> usize {
        FRAME
    }

    fn data(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
        self.compressor()?.compress(bytes)
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
    level: ZstdLevel,
    zst_path: &Path,
    bmap_path: &Path,
    report: &dyn Fn(u64),
) -> Result<(FileDigest, FileDigest), FormatError> {
    let mut out = create_output(zst_path)?;
    let mut hasher = bmap::RangeHasher::new(src.mapped);
    run_pipeline(
        src,
        src.segments(MERGE_GAP),
        &Zstd::new(level),
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

    /// Decodes with ruzstd, a decoder written apart from libzstd.
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
        let z = Zstd::new(ZstdLevel::DEFAULT);
        let mut f = z.data(&data).unwrap();
        write_zero_frame(5000, &mut f).unwrap();
        f.extend(z.data(b"tail").unwrap());
        let mut want = data.clone();
        want.extend(vec![0u8; 5000]);
        want.extend(b"tail");
        assert_eq!(decode(&f), want);
    }

    #[test]
    fn a_frame_depends_on_its_bytes_and_level_only() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{} ", i % 977).into_bytes())
            .collect();
        let low = ZstdLevel::new(1).unwrap();
        let high = ZstdLevel::new(19).unwrap();
        let once = Zstd::new(low).data(&text).unwrap();
        // The same piece on other threads at once gives the same frame.
        let many: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Zstd::new(low).data(&text).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(many.iter().all(|f| *f == once));
        let small = Zstd::new(high).data(&text).unwrap();
        assert!(small.len() < once.len(), "{} {}", small.len(), once.len());
        for f in [&once, &small] {
            assert_eq!(decode(f), text);
        }
        // Checksum and content size are in the frame header descriptor.
        assert_eq!(once[4] & 0x04, 0x04, "content checksum flag");
    }

    /// [`Zstd`] with small pieces and a fixed number of workers.
    struct Pinned {
        inner: Zstd,
        workers: usize,
    }

    impl Encoder for Pinned {
        fn piece_size(&self) -> usize {
            256 << 10
        }
        fn workers(&self) -> usize {
            self.workers
        }
        fn data(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
            self.inner.data(bytes)
        }
        fn zeros(&self, len: u64, out: &mut dyn Write) -> io::Result<()> {
            self.inner.zeros(len, out)
        }
    }

    #[test]
    fn the_stream_is_the_same_whatever_the_worker_count() {
        use std::io::Seek;
        // Text, a zero run inside the data, pseudo-random bytes, then a gap.
        let mut image: Vec<u8> = (0..60_000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        image.resize(image.len() + (300 << 10), 0);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..(400 << 10) / 8 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            image.extend_from_slice(&x.to_le_bytes());
        }
        let data_end = image.len() as u64;
        image.resize(image.len() + (3 << 20), 0);
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&image).unwrap();
        f.rewind().unwrap();
        let mapped = 0..data_end;
        let src = Source {
            file: &f,
            path: Path::new("x.raw"),
            size: image.len() as u64,
            mapped: std::slice::from_ref(&mapped),
        };
        let streams: Vec<Vec<u8>> = [1, 2, 3, 8]
            .into_iter()
            .map(|workers| {
                let enc = Pinned {
                    inner: Zstd::new(ZstdLevel::new(3).unwrap()),
                    workers,
                };
                let mut out = Vec::new();
                let segments = src.segments(MERGE_GAP);
                run_pipeline(
                    &src,
                    segments,
                    &enc,
                    &mut out,
                    Path::new("o"),
                    &mut |_| {},
                    &|_| {},
                )
                .unwrap();
                out
            })
            .collect();
        assert!(streams.iter().all(|s| *s == streams[0]));
        assert_eq!(decode(&streams[0]), image);
        // Several frames: the pieces really were compressed apart.
        let frames = streams[0].windows(4).filter(|w| *w == MAGIC).count();
        assert!(frames >= 5, "{frames} frames");
    }
}
