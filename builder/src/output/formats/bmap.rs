//! bmaptool's block map, format version 2.0: which 4096-byte blocks of the
//! image hold data, with a SHA-256 per range, so `bmaptool copy` writes only
//! those blocks and checks each one.
//!
//! The file checksum (`BmapFileChecksum`) is the SHA-256 of the whole file
//! with that field's value written as 64 ASCII `0`s; bmaptool checks it by
//! putting the zeros back in place of the first occurrence of the value.

use std::fmt::Write as _;
use std::ops::Range;

use sha2::{Digest, Sha256};

use crate::disk::MAP_BLOCK_SIZE;

const CHECKSUM_PLACEHOLDER: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Computes the SHA-256 of each mapped byte range from the image bytes as
/// they stream past in order.
pub(crate) struct RangeHasher<'a> {
    ranges: &'a [Range<u64>],
    next: usize,
    current: Sha256,
    digests: Vec<String>,
}

impl<'a> RangeHasher<'a> {
    /// Hashes `ranges` (sorted, disjoint byte ranges of the image).
    pub(crate) fn new(ranges: &'a [Range<u64>]) -> Self {
        RangeHasher {
            ranges,
            next: 0,
            current: Sha256::new(),
            digests: Vec::with_capacity(ranges.len()),
        }
    }

    /// Takes the image bytes at `offset`; every mapped byte must pass
    /// through here exactly once, in order (other bytes are ignored).
    pub(crate) fn update(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        while let Some(r) = self.ranges.get(self.next) {
            if r.start >= end {
                return;
            }
            let from = r.start.max(offset);
            let to = r.end.min(end);
            if from < to {
                self.current
                    .update(&bytes[(from - offset) as usize..(to - offset) as usize]);
            }
            if r.end > end {
                return;
            }
            let done = std::mem::take(&mut self.current);
            self.digests.push(hex::encode(done.finalize()));
            self.next += 1;
        }
    }

    /// The digests, one per range, or `None` if some range was not seen whole.
    pub(crate) fn finish(self) -> Option<Vec<String>> {
        (self.digests.len() == self.ranges.len()).then_some(self.digests)
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    let mut scaled = bytes as f64;
    while scaled >= 1024.0 && unit + 1 < UNITS.len() {
        scaled /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{scaled:.1} {}", UNITS[unit])
    }
}

/// The bmap file for an image of `size` bytes whose mapped byte ranges are
/// `ranges` (block-aligned except where the image ends) with `digests`.
pub(crate) fn render(size: u64, ranges: &[Range<u64>], digests: &[String]) -> String {
    let blocks = size.div_ceil(MAP_BLOCK_SIZE);
    let block_ranges: Vec<(u64, u64)> = ranges
        .iter()
        .map(|r| (r.start / MAP_BLOCK_SIZE, r.end.div_ceil(MAP_BLOCK_SIZE) - 1))
        .collect();
    let mapped: u64 = block_ranges.iter().map(|(a, b)| b - a + 1).sum();
    // Tenths of a percent, rounded down.
    let permille = (mapped * 1000).checked_div(blocks).unwrap_or(0);
    let mut x = String::new();
    let _ = write!(
        x,
        r#"<?xml version="1.0" ?>
<!-- Block map written by kiln {version}: the {bs}-byte blocks of the image
     that hold data. `bmaptool copy IMAGE.raw.zst /dev/sdX` writes only
     these blocks (checking each range against its sha256) instead of the
     whole disk. -->
<bmap version="2.0">
    <!-- Image size in bytes: {size_h} -->
    <ImageSize> {size} </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> {bs} </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> {blocks} </BlocksCount>

    <!-- Count of mapped blocks: {mapped_h} or {pct_int}.{pct_frac}% -->
    <MappedBlocksCount> {mapped} </MappedBlocksCount>

    <!-- Type of checksum used in this file -->
    <ChecksumType> sha256 </ChecksumType>

    <!-- The checksum of this file, computed with this value set to 64 zeros -->
    <BmapFileChecksum> {placeholder} </BmapFileChecksum>

    <!-- Mapped blocks: first-last (inclusive) or a single block, with the
         sha256 of the range's bytes -->
    <BlockMap>
"#,
        version = env!("CARGO_PKG_VERSION"),
        bs = MAP_BLOCK_SIZE,
        size_h = human(size),
        mapped_h = human(mapped * MAP_BLOCK_SIZE),
        pct_int = permille / 10,
        pct_frac = permille % 10,
        placeholder = CHECKSUM_PLACEHOLDER,
    );
    for ((first, last), digest) in block_ranges.iter().zip(digests) {
        if first == last {
            let _ = writeln!(x, "        <Range chksum=\"{digest}\"> {first} </Range>");
        } else {
            let _ = writeln!(
                x,
                "        <Range chksum=\"{digest}\"> {first}-{last} </Range>"
            );
        }
    }
    x.push_str("    </BlockMap>\n</bmap>\n");
    let checksum = hex::encode(Sha256::digest(x.as_bytes()));
    x.replacen(CHECKSUM_PLACEHOLDER, &checksum, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_hasher_splits_and_joins_pieces() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let ranges = [0..4096u64, 8192..16384, 16384..20_000];
        let mut h = RangeHasher::new(&ranges);
        // Pieces that cut through ranges and skip the unmapped gap.
        h.update(0, &data[0..3000]);
        h.update(3000, &data[3000..9000]);
        h.update(9000, &data[9000..20_000]);
        let got = h.finish().unwrap();
        let want: Vec<String> = ranges
            .iter()
            .map(|r| hex::encode(Sha256::digest(&data[r.start as usize..r.end as usize])))
            .collect();
        assert_eq!(got, want);

        let mut partial = RangeHasher::new(&ranges);
        partial.update(0, &data[0..10_000]);
        assert!(partial.finish().is_none());
    }

    #[test]
    fn file_checksum_is_over_the_zeroed_field() {
        let x = render(
            3 * 4096,
            &[0..4096, 8192..12288],
            &["a".repeat(64), "b".repeat(64)],
        );
        let start = x.find("<BmapFileChecksum> ").unwrap() + "<BmapFileChecksum> ".len();
        let sum = &x[start..start + 64];
        let zeroed = x.replacen(sum, CHECKSUM_PLACEHOLDER, 1);
        assert_eq!(hex::encode(Sha256::digest(zeroed.as_bytes())), sum);
        assert!(x.contains("<MappedBlocksCount> 2 </MappedBlocksCount>"));
        assert!(x.contains("> 0 </Range>") && x.contains("> 2 </Range>"));
        assert!(x.contains("or 66.6%"), "{x}");
    }
}
