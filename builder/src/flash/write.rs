//! Carrying out a [`Plan`]: checking the image against its block map before
//! anything is written, writing the regions with the patches laid over, and
//! reading them back from the target to compare.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use sha2::{Digest, Sha256};

use super::plan::{Patch, Plan};
use super::source::{Image, ImageRead};
use super::sys::BlockOps;
use super::FlashError;

/// Bytes moved per read or write.
const CHUNK: u64 = 4 << 20;

/// What [`write`] did.
#[derive(Debug, Clone)]
pub struct Written {
    /// SHA-256 of each region as written.
    pub digests: Vec<[u8; 32]>,
    /// Bytes written.
    pub bytes: u64,
    /// Time spent writing, the final flush included.
    pub elapsed: Duration,
}

/// Calls `f(offset, bytes)` for every chunk of `range` read from `src`.
fn each_chunk(
    src: &mut dyn ImageRead,
    range: &Range<u64>,
    buf: &mut Vec<u8>,
    mut f: impl FnMut(u64, &mut [u8]) -> Result<(), FlashError>,
    path: &Path,
) -> Result<(), FlashError> {
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(CHUNK) as usize;
        buf.resize(n, 0);
        src.read_forward(at, &mut buf[..n])
            .map_err(|source| FlashError::io(path, "reading", source))?;
        f(at, &mut buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Checks every range of the image against its block map's SHA-256 and the
/// image's size against the map's, reading the image once. Nothing is written.
pub fn check_image(image: &Image, progress: &ProgressBar) -> Result<(), FlashError> {
    let mut src = image.reader()?;
    let mut buf = Vec::new();
    if let Some(digests) = &image.digests {
        for (i, (range, want)) in image.ranges.iter().zip(digests).enumerate() {
            let mut h = Sha256::new();
            each_chunk(
                &mut *src,
                range,
                &mut buf,
                |_, b| {
                    h.update(&*b);
                    progress.inc(b.len() as u64);
                    Ok(())
                },
                &image.path,
            )?;
            if h.finalize().as_slice() != want {
                return Err(FlashError::BmapMismatch {
                    path: image.path.clone(),
                    bmap: image.bmap.clone().unwrap_or_default(),
                    why: format!(
                        "range {} of {} (bytes {}..{}) has another sha256 than the map says",
                        i + 1,
                        image.ranges.len(),
                        range.start,
                        range.end
                    ),
                });
            }
        }
    }
    let total = src
        .total_size()
        .map_err(|source| FlashError::io(&image.path, "reading", source))?;
    if total != image.size {
        return Err(FlashError::BmapMismatch {
            path: image.path.clone(),
            bmap: image.bmap.clone().unwrap_or_default(),
            why: format!(
                "the map is for a {}-byte image, this one unpacks to {total} bytes",
                image.size
            ),
        });
    }
    Ok(())
}

/// Lays the patches that touch `[at, at + b.len())` over `b`.
fn overlay(patches: &[Patch], at: u64, b: &mut [u8]) {
    let end = at + b.len() as u64;
    for p in patches {
        let e = p.extent();
        let from = e.start.max(at);
        let to = e.end.min(end);
        if from < to {
            b[(from - at) as usize..(to - at) as usize]
                .copy_from_slice(&p.bytes[(from - e.start) as usize..(to - e.start) as usize]);
        }
    }
}

/// Writes the plan's regions to `out` and flushes them to the device.
pub fn write(
    plan: &Plan,
    image: &Image,
    out: &File,
    target: &Path,
    progress: &ProgressBar,
) -> Result<Written, FlashError> {
    let start = Instant::now();
    let mut src = image.reader()?;
    let mut buf = Vec::new();
    let mut digests = Vec::with_capacity(plan.regions.len());
    for region in &plan.regions {
        let mut h = Sha256::new();
        each_chunk(
            &mut *src,
            region,
            &mut buf,
            |at, b| {
                overlay(&plan.patches, at, b);
                h.update(&*b);
                out.write_all_at(b, at)
                    .map_err(|source| FlashError::io(target, "writing to", source))?;
                progress.inc(b.len() as u64);
                Ok(())
            },
            &image.path,
        )?;
        digests.push(h.finalize().into());
    }
    out.sync_all()
        .map_err(|source| FlashError::io(target, "flushing", source))?;
    Ok(Written {
        digests,
        bytes: plan.bytes(),
        elapsed: start.elapsed(),
    })
}

/// Reads every region back from the target (its cache dropped first) and
/// compares it with what was written. Returns the time it took.
pub fn verify(
    plan: &Plan,
    written: &Written,
    out: &File,
    ops: &dyn BlockOps,
    target: &Path,
    progress: &ProgressBar,
) -> Result<Duration, FlashError> {
    let start = Instant::now();
    ops.drop_cache(out)
        .map_err(|source| FlashError::io(target, "dropping the cache of", source))?;
    let mut buf = vec![0u8; CHUNK as usize];
    for (i, (region, want)) in plan.regions.iter().zip(&written.digests).enumerate() {
        let mut h = Sha256::new();
        let mut at = region.start;
        while at < region.end {
            let n = (region.end - at).min(CHUNK) as usize;
            out.read_exact_at(&mut buf[..n], at)
                .map_err(|source| FlashError::io(target, "reading back", source))?;
            h.update(&buf[..n]);
            progress.inc(n as u64);
            at += n as u64;
        }
        if h.finalize().as_slice() != want {
            return Err(FlashError::VerifyFailed {
                path: target.to_path_buf(),
                why: format!(
                    "region {} of {} (bytes {}..{}) reads back different from what was \
                     written",
                    i + 1,
                    plan.regions.len(),
                    region.start,
                    region.end
                ),
            });
        }
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_land_where_they_belong() {
        let p = vec![
            Patch {
                what: "a",
                offset: 2,
                bytes: vec![1, 1, 1],
            },
            Patch {
                what: "b",
                offset: 9,
                bytes: vec![2, 2],
            },
        ];
        let mut b = vec![0u8; 8];
        overlay(&p, 3, &mut b);
        assert_eq!(b, [1, 1, 0, 0, 0, 0, 2, 2]);
    }
}
