//! The published forms of a finished raw disk image: the raw file itself,
//! `raw.zst` with a bmaptool block map, qcow2, a fixed VHD and a GCE import
//! tarball.
//!
//! Every writer reads the raw image from the staging folder and writes its
//! file next to it; nothing is written elsewhere and nothing is printed
//! (progress goes through [`OutputJob::progress`]). Memory stays fixed:
//! images are streamed in pieces of a fixed size ([`CHUNK`], or a 128 MiB
//! frame for `raw.zst`), never loaded whole.
//!
//! The writers know which blocks hold data from the list of blocks the disk
//! writer recorded ([`crate::disk::ImageFile::mapped_blocks`]), not from the
//! host filesystem's holes, so the outputs are the same bytes on every
//! machine. Before relying on that list, [`write_outputs`] checks that every
//! block outside it really reads as zero, so a write that escaped the record
//! fails the build instead of vanishing from the compressed outputs.
//!
//! Compressed outputs are cut into independent pieces at fixed offsets and
//! compressed on every core; runs of zeros are encoded directly instead of
//! being fed through the compressor. Neither choice depends on the machine,
//! so the bytes are reproducible.

mod bmap;
mod gce;
mod qcow2;
pub mod update;
mod vhd;
mod zst;

use std::fs::File;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::disk::MAP_BLOCK_SIZE;
use crate::output::digest::sha256_file;
use crate::output::manifest::FileDigest;
use crate::profile::{Format, ZstdLevel};
use crate::runner::{RunError, Runner};

pub use vhd::{chs_geometry, vhd_footer, VHD_ALIGN};

/// Bytes read and compressed as one independent piece (unless the encoder
/// says otherwise: [`Encoder::piece_size`]).
pub const CHUNK: usize = 4 << 20;
/// Gaps between mapped ranges shorter than this are compressed with the data
/// around them instead of being encoded as a separate zero run.
const MERGE_GAP: u64 = 1 << 20;
/// Most worker threads a compressor uses (the output does not depend on it).
const MAX_WORKERS: usize = 8;

/// Errors while writing output formats.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or writing a file failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What kiln was doing.
        action: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// An external converter failed.
    #[error("writing the {format} output: {source}")]
    Run {
        /// The format being written.
        format: Format,
        /// What went wrong.
        source: RunError,
    },
    /// The job itself is inconsistent (a bug in the caller, not in a profile).
    #[error("output job for {}: {what}", raw.display())]
    BadJob {
        /// The raw image.
        raw: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The raw image has data outside the blocks the disk writer recorded.
    #[error(
        "{}: byte {offset} is not zero but lies outside the blocks kiln recorded as \
         written; the compressed outputs would lose it. This is a kiln bug: every \
         write into the image must go through disk::ImageFile / PartitionWindow",
        raw.display()
    )]
    Unrecorded {
        /// The raw image.
        raw: PathBuf,
        /// The first such byte.
        offset: u64,
    },
    /// The `update` format's key, profile settings or bundle.
    #[error(transparent)]
    Update(#[from] update::UpdateError),
    /// The image is too large for the format.
    #[error("{}: {size} bytes is too large for the {format} format (at most {max})", raw.display())]
    TooLarge {
        /// The raw image.
        raw: PathBuf,
        /// The format.
        format: Format,
        /// The image size.
        size: u64,
        /// The format's limit.
        max: u64,
    },
}

/// How far one writer has got, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The format being written.
    pub format: Format,
    /// Bytes of the raw image processed so far.
    pub done: u64,
    /// Bytes of the raw image in all.
    pub total: u64,
}

/// What to write, from which raw image, into which folder.
pub struct OutputJob<'a> {
    /// The finished raw image (in `dir`).
    pub raw: &'a Path,
    /// The staging folder; every output is written here and nowhere else.
    pub dir: &'a Path,
    /// File name stem of every output (`<profile>-<arch>`).
    pub stem: &'a str,
    /// Formats wanted; duplicates are ignored and the order does not matter.
    pub formats: &'a [Format],
    /// The zstd level of `raw.zst`.
    pub zstd_level: ZstdLevel,
    /// Blocks of [`MAP_BLOCK_SIZE`] bytes that were written, as sorted,
    /// disjoint, half-open block ranges ([`crate::disk::ImageFile::mapped_blocks`]).
    pub mapped: &'a [Range<u64>],
    /// Clamp time (seconds since 1970) for timestamps inside outputs.
    pub epoch: i64,
    /// Seed for identifiers inside outputs (the VHD unique id).
    pub seed: [u8; 32],
    /// Runs `qemu-img`.
    pub runner: &'a dyn Runner,
    /// SHA-256 of the raw image if the caller already has it (saves a pass).
    pub raw_sha256: Option<&'a str>,
    /// Called as each writer advances.
    pub progress: Option<&'a (dyn Fn(Progress) + Sync)>,
}

impl std::fmt::Debug for OutputJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputJob")
            .field("raw", &self.raw)
            .field("dir", &self.dir)
            .field("stem", &self.stem)
            .field("formats", &self.formats)
            .field("zstd_level", &self.zstd_level)
            .field("mapped", &self.mapped.len())
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// One file to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The format it belongs to.
    pub format: Format,
    /// Its key in the manifest's `outputs` map: the format name, or `bmap`
    /// for the block map that goes with `raw.zst`.
    pub key: String,
    /// File name (in the staging folder), size and SHA-256.
    pub digest: FileDigest,
}

/// The file name of each output for `stem` (the raw image is `<stem>.raw`).
pub fn file_names(format: Format, stem: &str) -> Vec<(&'static str, String)> {
    match format {
        Format::Raw => vec![("raw", format!("{stem}.raw"))],
        // bmaptool finds `<stem>.raw.bmap` next to `<stem>.raw.zst` by itself.
        Format::RawZst => vec![
            ("raw.zst", format!("{stem}.raw.zst")),
            ("bmap", format!("{stem}.raw.bmap")),
        ],
        Format::Qcow2 => vec![("qcow2", format!("{stem}.qcow2"))],
        Format::Vhd => vec![("vhd", format!("{stem}.vhd"))],
        Format::Gce => vec![("gce", format!("{stem}.gce.tar.gz"))],
        Format::Update => vec![("update", format!("{stem}.update"))],
    }
}

/// What [`write_outputs`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outputs {
    /// Size and SHA-256 of the raw image, published or not (for the
    /// manifest's disk digest): [`OutputJob::raw_sha256`] if given, else
    /// taken from the VHD pass when there is one, else hashed.
    pub raw: FileDigest,
    /// Files to publish, in [`Format::ALL`] order; the raw image is among
    /// them only if `raw` is wanted.
    pub files: Vec<Output>,
}

/// Writes every wanted format of the raw image into the staging folder and
/// returns the files to publish with their digests. [`Format::Update`] is not
/// a form of the raw image (it is made from the image's parts, with a key:
/// [`update::write`]) and is skipped here.
pub fn write_outputs(job: &OutputJob<'_>) -> Result<Outputs, FormatError> {
    let bad = |what: String| FormatError::BadJob {
        raw: job.raw.to_path_buf(),
        what,
    };
    if job.stem.is_empty() || job.stem.contains('/') || job.stem.starts_with('.') {
        return Err(bad(format!(
            "file stem {:?} is not a plain file name",
            job.stem
        )));
    }
    let raw_name = format!("{}.raw", job.stem);
    if job.raw != job.dir.join(&raw_name) {
        return Err(bad(format!(
            "the raw image must be {raw_name} in the staging folder {}",
            job.dir.display()
        )));
    }
    let file = File::open(job.raw).map_err(io_at(job.raw, "opening the raw image"))?;
    let size = file
        .metadata()
        .map_err(io_at(job.raw, "reading the raw image's size"))?
        .len();
    if size == 0 {
        return Err(bad("the raw image is empty".into()));
    }
    let mapped = mapped_bytes(job.mapped, size).map_err(bad)?;
    let wanted: Vec<Format> = Format::IMAGES
        .into_iter()
        .filter(|f| job.formats.contains(f))
        .collect();
    let src = Source {
        file: &file,
        path: job.raw,
        size,
        mapped: &mapped,
    };
    if wanted
        .iter()
        .any(|f| matches!(f, Format::RawZst | Format::Vhd | Format::Gce))
    {
        src.check_unmapped_zero()?;
    }

    let mut files = Vec::new();
    let mut raw_sha = job.raw_sha256.map(str::to_string);
    for format in wanted {
        let names = file_names(format, job.stem);
        let report = |done: u64| {
            if let Some(p) = job.progress {
                p(Progress {
                    format,
                    done: done.min(size),
                    total: size,
                });
            }
        };
        report(0);
        let mut digests: Vec<FileDigest> = Vec::new();
        match format {
            // Published last (below), once a writer may have hashed it for free.
            Format::Raw => {}
            Format::RawZst => {
                let zst_path = job.dir.join(&names[0].1);
                let bmap_path = job.dir.join(&names[1].1);
                let (zst, bmap) = zst::write(&src, job.zstd_level, &zst_path, &bmap_path, &report)?;
                digests.push(zst);
                digests.push(bmap);
            }
            Format::Qcow2 => {
                let out = job.dir.join(&names[0].1);
                digests.push(qcow2::write(job.runner, job.raw, &out)?);
            }
            Format::Vhd => {
                let out = job.dir.join(&names[0].1);
                let (d, raw_digest) = vhd::write(&src, &out, job.epoch, &job.seed, &report)?;
                raw_sha.get_or_insert(raw_digest);
                digests.push(d);
            }
            Format::Gce => {
                let out = job.dir.join(&names[0].1);
                digests.push(gce::write(&src, &out, job.epoch, &report)?);
            }
            // Not in `wanted`: see this function's documentation.
            Format::Update => {}
        }
        report(size);
        for ((key, _), digest) in names.iter().zip(digests) {
            files.push(Output {
                format,
                key: key.to_string(),
                digest,
            });
        }
    }
    let sha256 = match raw_sha {
        Some(s) => s,
        None => sha256_file(job.raw).map_err(io_at(job.raw, "hashing the raw image"))?,
    };
    let raw = FileDigest {
        file: raw_name,
        size,
        sha256,
    };
    if job.formats.contains(&Format::Raw) {
        files.insert(
            0,
            Output {
                format: Format::Raw,
                key: Format::Raw.name().to_string(),
                digest: raw.clone(),
            },
        );
    }
    Ok(Outputs { raw, files })
}

fn io_at<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> FormatError + 'a {
    move |source| FormatError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Mapped block ranges as byte ranges clamped to the image size; checks that
/// they are sorted, disjoint, non-empty and inside the image.
fn mapped_bytes(blocks: &[Range<u64>], size: u64) -> Result<Vec<Range<u64>>, String> {
    let count = size.div_ceil(MAP_BLOCK_SIZE);
    let mut prev_end = None;
    let mut out: Vec<Range<u64>> = Vec::with_capacity(blocks.len());
    for r in blocks {
        if r.start >= r.end || r.end > count || prev_end.is_some_and(|e| r.start < e) {
            return Err(format!(
                "mapped block range {}..{} is empty, overlaps or is not after the previous \
                 one, or lies past the image's {count} blocks",
                r.start, r.end
            ));
        }
        prev_end = Some(r.end);
        let bytes = r.start * MAP_BLOCK_SIZE..(r.end * MAP_BLOCK_SIZE).min(size);
        match out.last_mut() {
            Some(last) if last.end == bytes.start => last.end = bytes.end,
            _ => out.push(bytes),
        }
    }
    Ok(out)
}

/// A piece of the byte stream a writer produces, before compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Bytes of the raw image.
    File(Range<u64>),
    /// Zero bytes.
    Zeros(u64),
    /// Bytes from memory (a tar header).
    Mem(Vec<u8>),
}

/// The raw image with its mapped byte ranges.
pub(crate) struct Source<'a> {
    file: &'a File,
    path: &'a Path,
    size: u64,
    /// Sorted, disjoint byte ranges that may hold data.
    mapped: &'a [Range<u64>],
}

impl Source<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), FormatError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(io_at(self.path, "reading the raw image"))
    }

    /// The whole image as data and zero segments: mapped ranges are data,
    /// gaps between them shorter than `merge_gap` too.
    fn segments(&self, merge_gap: u64) -> Vec<Segment> {
        let mut data: Vec<Range<u64>> = Vec::new();
        for r in self.mapped {
            match data.last_mut() {
                Some(last) if r.start - last.end < merge_gap => last.end = r.end,
                _ => data.push(r.clone()),
            }
        }
        let mut out = Vec::new();
        let mut at = 0;
        for r in data {
            if r.start > at {
                out.push(Segment::Zeros(r.start - at));
            }
            out.push(Segment::File(r.clone()));
            at = r.end;
        }
        if at < self.size {
            out.push(Segment::Zeros(self.size - at));
        }
        out
    }

    /// Fails if any byte outside the mapped ranges is not zero.
    fn check_unmapped_zero(&self) -> Result<(), FormatError> {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0;
        let end = self.size..self.size;
        for r in self.mapped.iter().chain([&end]) {
            let mut pos = at;
            while pos < r.start {
                let n = (r.start - pos).min(buf.len() as u64) as usize;
                self.read_at(&mut buf[..n], pos)?;
                if let Some(i) = (!is_zero(&buf[..n]))
                    .then(|| buf[..n].iter().position(|&b| b != 0))
                    .flatten()
                {
                    return Err(FormatError::Unrecorded {
                        raw: self.path.to_path_buf(),
                        offset: pos + i as u64,
                    });
                }
                pos += n as u64;
            }
            at = r.end;
        }
        Ok(())
    }
}

/// Whether every byte is zero (compares against [`ZEROS`] with `memcmp`,
/// which is fast even in unoptimized builds).
pub(crate) fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// A compressor that works on independent pieces.
pub(crate) trait Encoder: Sync {
    /// Bytes of the image in one piece; a fixed number, so that pieces start
    /// at the same offsets on every machine.
    fn piece_size(&self) -> usize {
        CHUNK
    }
    /// Pieces compressed at once: one per core, at most [`MAX_WORKERS`]. The
    /// output must not depend on it (tests pin it to show that).
    fn workers(&self) -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, MAX_WORKERS)
    }
    /// Compresses one piece of data as an independent unit (runs on a worker).
    fn data(&self, bytes: &[u8]) -> io::Result<Vec<u8>>;
    /// Writes `len` zero bytes in compressed form (runs in order).
    fn zeros(&self, len: u64, out: &mut dyn Write) -> io::Result<()>;
}

/// What the pipeline shows its observer, in stream order.
pub(crate) enum Seen<'a> {
    /// Bytes; `Some(offset)` when they come from the raw image.
    Data(Option<u64>, &'a [u8]),
    /// That many zero bytes.
    Zeros(u64),
}

enum Item {
    Data {
        file_offset: Option<u64>,
        bytes: Vec<u8>,
        zero: bool,
    },
    Zeros(u64),
}

/// Streams `segments` through `enc` into `out`: reads pieces of
/// [`Encoder::piece_size`], compresses [`Encoder::workers`] of them at once,
/// writes the results in order. `observe` sees every uncompressed byte in
/// order (for checksums); `report` gets the uncompressed bytes done so far.
pub(crate) fn run_pipeline(
    src: &Source<'_>,
    segments: Vec<Segment>,
    enc: &dyn Encoder,
    out: &mut dyn Write,
    out_path: &Path,
    observe: &mut dyn FnMut(Seen<'_>),
    report: &dyn Fn(u64),
) -> Result<(), FormatError> {
    let workers = enc.workers().max(1);
    let piece = enc.piece_size();
    let write_err = io_at(out_path, "writing");
    let mut batch: Vec<Item> = Vec::new();
    let mut data_in_batch = 0;
    let mut done = 0u64;
    let mut flush = |batch: &mut Vec<Item>, observe: &mut dyn FnMut(Seen<'_>)| {
        let encoded: Vec<io::Result<Vec<u8>>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|item| match item {
                    Item::Data {
                        bytes, zero: false, ..
                    } => Some(
                        std::thread::Builder::new()
                            .name("kiln-compress".into())
                            .spawn_scoped(s, move || enc.data(bytes)),
                    ),
                    _ => None,
                })
                .collect();
            // Checksums run here while the workers compress.
            for item in batch.iter() {
                match item {
                    Item::Data {
                        file_offset, bytes, ..
                    } => observe(Seen::Data(*file_offset, bytes)),
                    Item::Zeros(n) => observe(Seen::Zeros(*n)),
                }
            }
            handles
                .into_iter()
                .map(|h| match h {
                    Some(Ok(h)) => h
                        .join()
                        .unwrap_or_else(|_| Err(io::Error::other("a compression thread panicked"))),
                    Some(Err(e)) => Err(e),
                    None => Ok(Vec::new()),
                })
                .collect()
        });
        for (item, enc_bytes) in batch.iter().zip(encoded) {
            let enc_bytes = enc_bytes.map_err(io_at(out_path, "compressing"))?;
            match item {
                Item::Data { zero: false, .. } => out.write_all(&enc_bytes),
                Item::Data {
                    bytes, zero: true, ..
                } => enc.zeros(bytes.len() as u64, out),
                Item::Zeros(n) => enc.zeros(*n, out),
            }
            .map_err(io_at(out_path, "writing"))?;
            done += match item {
                Item::Data { bytes, .. } => bytes.len() as u64,
                Item::Zeros(n) => *n,
            };
        }
        batch.clear();
        report(done);
        Ok::<(), FormatError>(())
    };
    for seg in segments {
        match seg {
            Segment::Zeros(0) => {}
            Segment::Zeros(n) => batch.push(Item::Zeros(n)),
            Segment::Mem(bytes) => {
                for p in bytes.chunks(piece) {
                    batch.push(Item::Data {
                        file_offset: None,
                        zero: is_zero(p),
                        bytes: p.to_vec(),
                    });
                    data_in_batch += 1;
                }
            }
            Segment::File(range) => {
                let mut pos = range.start;
                while pos < range.end {
                    let n = (range.end - pos).min(piece as u64) as usize;
                    let mut bytes = vec![0u8; n];
                    src.read_at(&mut bytes, pos)?;
                    batch.push(Item::Data {
                        file_offset: Some(pos),
                        zero: is_zero(&bytes),
                        bytes,
                    });
                    pos += n as u64;
                    data_in_batch += 1;
                    if data_in_batch == workers {
                        flush(&mut batch, observe)?;
                        data_in_batch = 0;
                    }
                }
            }
        }
    }
    flush(&mut batch, observe)?;
    out.flush().map_err(write_err)?;
    Ok(())
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the byte count and the hex SHA-256.
    pub(crate) fn finish(self) -> (W, u64, String) {
        (self.inner, self.len, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Creates an output file, hashing what is written through the returned
/// buffered writer.
pub(crate) fn create_output(
    path: &Path,
) -> Result<HashingWriter<io::BufWriter<File>>, FormatError> {
    let f = File::create(path).map_err(io_at(path, "creating"))?;
    Ok(HashingWriter::new(io::BufWriter::with_capacity(1 << 20, f)))
}

/// Finishes a file made by [`create_output`]: flushes it and returns its digest.
pub(crate) fn finish_output(
    path: &Path,
    w: HashingWriter<io::BufWriter<File>>,
) -> Result<FileDigest, FormatError> {
    let (buf, size, sha256) = w.finish();
    let f = buf
        .into_inner()
        .map_err(|e| io_at(path, "writing")(e.into_error()))?;
    f.sync_all().map_err(io_at(path, "syncing"))?;
    Ok(FileDigest {
        file: file_name(path),
        size,
        sha256,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A static block of zeros to hash or write zero runs from.
pub(crate) static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// Feeds `n` zero bytes to `f` in [`ZEROS`]-sized slices.
pub(crate) fn for_zeros(mut n: u64, mut f: impl FnMut(&[u8])) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        f(&ZEROS[..k]);
        n -= k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_bytes_are_clamped_merged_and_checked() {
        let size = 10 * MAP_BLOCK_SIZE + 100;
        let m = mapped_bytes(&[0..2, 2..3, 5..6, 10..11], size).unwrap();
        assert_eq!(
            m,
            vec![
                0..3 * MAP_BLOCK_SIZE,
                5 * MAP_BLOCK_SIZE..6 * MAP_BLOCK_SIZE,
                10 * MAP_BLOCK_SIZE..size
            ]
        );
        assert!(mapped_bytes(&[0..2, 1..3], size).is_err());
        assert!(mapped_bytes(&[0..1, 3..3], size).is_err());
        assert!(mapped_bytes(&[0..1, 10..12], size).is_err());
        assert!(mapped_bytes(&[4..5, 0..1], size).is_err());
    }

    #[test]
    fn segments_cover_the_image_and_merge_short_gaps() {
        let f = tempfile::tempfile().unwrap();
        let mapped = [0..4096, 8192..12288, 5 << 20..6 << 20];
        let src = Source {
            file: &f,
            path: Path::new("x"),
            size: 8 << 20,
            mapped: &mapped,
        };
        assert_eq!(
            src.segments(MERGE_GAP),
            vec![
                Segment::File(0..12288),
                Segment::Zeros((5 << 20) - 12288),
                Segment::File(5 << 20..6 << 20),
                Segment::Zeros(2 << 20),
            ]
        );
        assert_eq!(
            src.segments(0),
            vec![
                Segment::File(0..4096),
                Segment::Zeros(4096),
                Segment::File(8192..12288),
                Segment::Zeros((5 << 20) - 12288),
                Segment::File(5 << 20..6 << 20),
                Segment::Zeros(2 << 20),
            ]
        );
    }

    /// Passes bytes through unchanged, so the output shows the order.
    struct Identity;

    impl Encoder for Identity {
        fn data(&self, bytes: &[u8]) -> io::Result<Vec<u8>> {
            Ok(bytes.to_vec())
        }

        fn zeros(&self, len: u64, out: &mut dyn Write) -> io::Result<()> {
            for_zeros(len, |z| out.write_all(z).unwrap());
            Ok(())
        }
    }

    #[test]
    fn pipeline_keeps_order_across_chunks_and_segments() {
        let mut f = tempfile::tempfile().unwrap();
        let size = 3 * CHUNK as u64 + 5 * MAP_BLOCK_SIZE;
        let content: Vec<u8> = (0..size).map(|i| (i % 253) as u8 | 1).collect();
        f.write_all(&content).unwrap();
        let mapped = [0..size / 2, size / 2..size];
        let src = Source {
            file: &f,
            path: Path::new("x"),
            size,
            mapped: &mapped,
        };
        let segments = vec![
            Segment::Mem(b"head".to_vec()),
            Segment::File(100..size - 100),
            Segment::Zeros(7),
            Segment::File(0..10),
        ];
        let mut want = b"head".to_vec();
        want.extend_from_slice(&content[100..(size - 100) as usize]);
        want.extend([0u8; 7]);
        want.extend_from_slice(&content[..10]);
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut offsets = Vec::new();
        let reports = std::cell::RefCell::new(Vec::new());
        run_pipeline(
            &src,
            segments,
            &Identity,
            &mut out,
            Path::new("out"),
            &mut |s| match s {
                Seen::Data(off, b) => {
                    offsets.push(off);
                    seen.extend_from_slice(b);
                }
                Seen::Zeros(n) => seen.extend(std::iter::repeat_n(0u8, n as usize)),
            },
            &|done| reports.borrow_mut().push(done),
        )
        .unwrap();
        assert_eq!(out, want);
        assert_eq!(seen, want);
        // The file range came in CHUNK pieces at their own offsets.
        assert_eq!(offsets[..3], [None, Some(100), Some(100 + CHUNK as u64)]);
        assert_eq!(reports.borrow().last(), Some(&(want.len() as u64)));
    }

    #[test]
    fn is_zero_finds_a_single_byte() {
        let mut b = vec![0u8; 200_000];
        assert!(is_zero(&b));
        b[199_999] = 1;
        assert!(!is_zero(&b));
    }
}
