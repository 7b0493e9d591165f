//! `make bench`, part `zst`: the `raw.zst` encoder on the default profile's
//! x86_64 image.
//!
//! Two tables. The first is kiln itself: warm builds with `--format raw.zst`
//! at several `[output] zstd_level`s, the file's size and the formats step's
//! time, each level built twice to show the bytes repeat. The second holds
//! the choices behind the encoder, measured on the same image's data (the
//! ranges its bmap lists, cut as kiln cuts them) with every core: kiln's
//! earlier encoder (ruzstd's fastest level in 4 MiB frames), and libzstd by
//! level, frame size and long-distance matching. It counts data frames only;
//! the zero runs between them add a few KiB whatever the encoder.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use kiln::output::manifest::Manifest;
use kiln::profile::{Format, Profile, ZstdLevel};

/// Levels kiln builds the image at.
const LEVELS: [u8; 5] = [1, 3, 6, 9, 19];
/// Levels of the encoder choices (19 takes minutes per row, and its
/// kiln row shows it).
const CHOICE_LEVELS: [i32; 4] = [1, 3, 6, 9];
/// Gaps between mapped ranges shorter than this are compressed with the data
/// around them (as kiln's `MERGE_GAP`).
const MERGE_GAP: u64 = 1 << 20;
const MIB: usize = 1 << 20;

/// One kiln build.
#[derive(Debug)]
pub struct LevelRow {
    level: u8,
    bytes: u64,
    step_secs: f64,
    repeats: bool,
}

/// One encoder choice.
#[derive(Debug)]
pub struct ChoiceRow {
    what: String,
    bytes: u64,
    secs: f64,
}

/// Everything the section shows.
#[derive(Debug)]
pub struct ZstFigures {
    suite: String,
    data_bytes: u64,
    workers: usize,
    levels: Vec<LevelRow>,
    choices: Vec<ChoiceRow>,
}

/// The bench's build of the x86_64 image: profile, output folder, formats.
pub type Build<'a> =
    &'a dyn Fn(&Profile, &Path, Vec<Format>) -> anyhow::Result<kiln::build::BuildReport>;

/// Builds and measures.
pub fn measure(profile: &Profile, build: Build<'_>) -> anyhow::Result<ZstFigures> {
    let work = tempfile::tempdir()?;
    let mut levels = Vec::new();
    let mut image = None;
    for level in LEVELS {
        let mut p = profile.clone();
        p.zstd_level = ZstdLevel::new(level.into()).context("level out of range")?;
        let mut shas = Vec::new();
        let mut best = f64::INFINITY;
        let mut bytes = 0;
        for i in 0..2 {
            eprintln!("bench: raw.zst: level {level}, build {}", i + 1);
            let out = work.path().join(format!("l{level}-{i}"));
            let formats = if image.is_none() {
                vec![Format::Raw, Format::RawZst]
            } else {
                vec![Format::RawZst]
            };
            let r = build(&p, &out, formats)?;
            let m = Manifest::read(&r.manifest).map_err(anyhow::Error::msg)?;
            let zst = m
                .outputs
                .get("raw.zst")
                .context("no raw.zst in the manifest")?;
            shas.push(zst.sha256.clone());
            bytes = zst.size;
            let step = r.timings.iter().find(|(s, _)| s == "formats");
            best = best.min(step.map_or(f64::NAN, |(_, t)| *t));
            if image.is_none() {
                let bmap = out.join(zst.file.replace(".raw.zst", ".raw.bmap"));
                image = Some((r.image.clone(), bmap, out));
            }
        }
        levels.push(LevelRow {
            level,
            bytes,
            step_secs: best,
            repeats: shas[0] == shas[1],
        });
    }
    let (raw, bmap, _keep) = image.context("no image was built")?;
    let data = std::fs::read(&raw).with_context(|| raw.display().to_string())?;
    let text = std::fs::read_to_string(&bmap).with_context(|| bmap.display().to_string())?;
    let ranges = data_ranges(&text)?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    let mut choices = Vec::new();
    let mut row = |what: String, frame: usize, enc: &(dyn Fn(&[u8]) -> usize + Sync)| {
        eprintln!("bench: raw.zst: {what}");
        let pieces = pieces(&data, &ranges, frame);
        let t = Instant::now();
        let bytes = encode_all(&pieces, workers, enc);
        choices.push(ChoiceRow {
            what,
            bytes,
            secs: t.elapsed().as_secs_f64(),
        });
    };
    row(
        "ruzstd 0.8 `Fastest`, 4 MiB frames (kiln before)".into(),
        4 * MIB,
        &|b| {
            let mut out = Vec::new();
            ruzstd::encoding::compress(b, &mut out, ruzstd::encoding::CompressionLevel::Fastest);
            out.len()
        },
    );
    for level in CHOICE_LEVELS {
        for (frame, long) in [(4, false), (128, false), (128, true)] {
            let what = format!(
                "libzstd {level}, {frame} MiB frames{}",
                if long { ", long-distance matching" } else { "" }
            );
            row(what, frame * MIB, &|b| libzstd(b, level, long, frame * MIB));
        }
    }
    let default = ZstdLevel::DEFAULT.get();
    for frame in [16, 32, 64] {
        let what = format!("libzstd {default}, {frame} MiB frames, long-distance matching");
        row(what, frame * MIB, &|b| {
            libzstd(b, default, true, frame * MIB)
        });
    }
    Ok(ZstFigures {
        suite: profile.debian.suites.first().cloned().unwrap_or_default(),
        data_bytes: ranges.iter().map(|r| r.end - r.start).sum(),
        workers,
        levels,
        choices,
    })
}

/// The mapped byte ranges a bmap lists, with short gaps merged as kiln does.
fn data_ranges(bmap: &str) -> anyhow::Result<Vec<Range<u64>>> {
    let field = |tag: &str| -> anyhow::Result<u64> {
        let open = format!("<{tag}>");
        let v = bmap
            .split(&open)
            .nth(1)
            .and_then(|r| r.split('<').next())
            .with_context(|| format!("bmap: no {open}"))?;
        Ok(v.trim().parse()?)
    };
    let block = field("BlockSize")?;
    let mut out: Vec<Range<u64>> = Vec::new();
    for part in bmap.split("<Range").skip(1) {
        let body = part
            .split('>')
            .nth(1)
            .and_then(|r| r.split('<').next())
            .context("bmap: bad <Range>")?
            .trim();
        let (a, b) = body.split_once('-').unwrap_or((body, body));
        let r = a.trim().parse::<u64>()? * block..(b.trim().parse::<u64>()? + 1) * block;
        match out.last_mut() {
            Some(last) if r.start - last.end < MERGE_GAP => last.end = r.end,
            _ => out.push(r),
        }
    }
    Ok(out)
}

/// The data cut into `frame`-sized pieces from the start of each range.
fn pieces<'a>(data: &'a [u8], ranges: &[Range<u64>], frame: usize) -> Vec<&'a [u8]> {
    ranges
        .iter()
        .flat_map(|r| data[r.start as usize..(r.end as usize).min(data.len())].chunks(frame))
        .collect()
}

/// Compresses every piece on `workers` threads; returns the compressed bytes.
fn encode_all(pieces: &[&[u8]], workers: usize, enc: &(dyn Fn(&[u8]) -> usize + Sync)) -> u64 {
    let next = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some(p) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) {
                    total.fetch_add(enc(p), Ordering::Relaxed);
                }
            });
        }
    });
    total.into_inner() as u64
}

/// One libzstd frame, as kiln's encoder makes it but with these choices.
fn libzstd(bytes: &[u8], level: i32, long: bool, frame: usize) -> usize {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level).expect("a zstd context");
    let mut params = vec![CParameter::ChecksumFlag(true)];
    if long {
        params.push(CParameter::EnableLongDistanceMatching(true));
        params.push(CParameter::WindowLog(frame.trailing_zeros()));
    }
    for p in params {
        c.set_parameter(p).expect("a valid zstd parameter");
    }
    c.compress(bytes).expect("zstd compresses").len()
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

/// The BENCHMARKS.md section; `machine` says where it was measured (the
/// part can run alone, on another machine than the rest of the file).
pub fn section(md: &mut String, f: &ZstFigures, machine: &str) -> std::fmt::Result {
    writeln!(md, "## raw.zst encoder\n")?;
    writeln!(md, "Machine: {machine}\n")?;
    writeln!(
        md,
        "The default profile's x86_64 image (Debian {}, {} of data in its bmap's ranges). kiln \
         compresses it with libzstd in independent 128 MiB frames with long-distance \
         matching, one frame per core, at `[output] zstd_level` (default {}). Warm builds \
         with `--format raw.zst`, each level twice (best time shown):\n",
        f.suite,
        mib(f.data_bytes),
        ZstdLevel::DEFAULT
    )?;
    writeln!(md, "| level | raw.zst | formats step | two builds |")?;
    writeln!(md, "|---|---|---|---|")?;
    for r in &f.levels {
        let default = if r.level as i32 == ZstdLevel::DEFAULT.get() {
            " (default)"
        } else {
            ""
        };
        writeln!(
            md,
            "| {}{default} | {} | {:.1} s | {} |",
            r.level,
            mib(r.bytes),
            r.step_secs,
            if r.repeats { "same bytes" } else { "DIFFERENT" }
        )?;
    }
    writeln!(
        md,
        "\nThe choices, on the same data cut the same way, {} threads, data frames only:\n",
        f.workers
    )?;
    writeln!(md, "| encoder | bytes | time |")?;
    writeln!(md, "|---|---|---|")?;
    for c in &f.choices {
        writeln!(md, "| {} | {} | {:.2} s |", c.what, mib(c.bytes), c.secs)?;
    }
    writeln!(
        md,
        "\nLong-distance matching finds repeats only within a frame, so larger frames are \
         smaller files; 128 MiB is the largest window that `zstd -d` (and so bmaptool) \
         accepts without `--long`."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmap_ranges_are_read_and_short_gaps_merged() {
        let bmap = "<BlockSize> 4096 </BlockSize>\n\
            <Range chksum=\"a\"> 0-4 </Range>\n\
            <Range chksum=\"b\"> 256 </Range>\n\
            <Range chksum=\"c\"> 1000-1001 </Range>\n";
        assert_eq!(
            data_ranges(bmap).unwrap(),
            vec![0..257 * 4096, 1000 * 4096..1002 * 4096]
        );
    }
}
