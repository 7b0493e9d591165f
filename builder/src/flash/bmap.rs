//! Reading a bmaptool block map (format 1.x or 2.0, the one kiln writes beside
//! `<stem>.raw.zst` as `<stem>.raw.bmap`): the image size and the mapped byte
//! ranges, with the SHA-256 of each range when the file has them.

use std::ops::Range;

use sha2::{Digest, Sha256};

/// A parsed block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Size of the image it describes, in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Mapped byte ranges, sorted and disjoint, the last clamped to the image size.
    pub ranges: Vec<Range<u64>>,
    /// SHA-256 of each range's bytes (same order), when the map carries them.
    pub digests: Option<Vec<[u8; 32]>>,
}

fn tag<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    Some(text[start..end].trim())
}

fn number(text: &str, name: &str) -> Result<u64, String> {
    let v = tag(text, name).ok_or_else(|| format!("no <{name}> element"))?;
    v.parse()
        .map_err(|_| format!("<{name}> holds {v:?}, not a number"))
}

/// Parses a block map. Checks its own checksum (`BmapFileChecksum`), that the
/// ranges are sorted, disjoint and inside the image, and that the mapped block
/// count matches.
pub fn parse(text: &str) -> Result<Bmap, String> {
    if !text.contains("<bmap") {
        return Err("no <bmap> element: not a bmaptool block map".into());
    }
    let image_size = number(text, "ImageSize")?;
    let block_size = number(text, "BlockSize")?;
    if block_size == 0 || block_size % 512 != 0 {
        return Err(format!("block size {block_size} is not a multiple of 512"));
    }
    let sha256 = match tag(text, "ChecksumType") {
        Some("sha256") => true,
        None => false,
        Some(other) => return Err(format!("checksum type {other:?} (kiln reads sha256)")),
    };
    if let Some(sum) = tag(text, "BmapFileChecksum").filter(|_| sha256) {
        let zeros = "0".repeat(sum.len());
        let computed = hex::encode(Sha256::digest(text.replacen(sum, &zeros, 1).as_bytes()));
        if computed != sum {
            return Err(format!(
                "its own checksum is {sum} but the file hashes to {computed}: it was edited or \
                 damaged"
            ));
        }
    }
    let blocks = image_size.div_ceil(block_size);
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut digests = Vec::new();
    let mut mapped = 0;
    let mut rest = text;
    while let Some(at) = rest.find("<Range") {
        rest = &rest[at..];
        let head_end = rest.find('>').ok_or("an unterminated <Range>")?;
        let head = &rest[..head_end];
        let body_end = rest.find("</Range>").ok_or("a <Range> without </Range>")?;
        let body = rest[head_end + 1..body_end].trim();
        let (first, last) = match body.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (body, body),
        };
        let bad = || format!("range {body:?} is not FIRST-LAST");
        let first: u64 = first.parse().map_err(|_| bad())?;
        let last: u64 = last.parse().map_err(|_| bad())?;
        if last < first || last >= blocks {
            return Err(format!(
                "range {first}-{last} is outside the image's {blocks} blocks"
            ));
        }
        let start = first * block_size;
        if ranges.last().is_some_and(|r| r.end > start) {
            return Err(format!(
                "range {first}-{last} overlaps or is not after the one before it"
            ));
        }
        ranges.push(start..((last + 1) * block_size).min(image_size));
        mapped += last - first + 1;
        if let Some(q) = head.find("chksum=\"") {
            let v = &head[q + 8..];
            let v = &v[..v.find('"').ok_or("an unterminated chksum")?];
            let mut d = [0u8; 32];
            hex::decode_to_slice(v, &mut d)
                .map_err(|_| format!("range {first}-{last}: chksum {v:?} is not a sha256"))?;
            digests.push(d);
        }
        rest = &rest[body_end..];
    }
    if let Some(Ok(count)) = tag(text, "MappedBlocksCount").map(str::parse::<u64>) {
        if count != mapped {
            return Err(format!(
                "it says {count} mapped blocks but its ranges hold {mapped}"
            ));
        }
    }
    let digests = if sha256 && digests.len() == ranges.len() {
        Some(digests)
    } else if sha256 && !digests.is_empty() {
        return Err("some ranges have a chksum and some do not".into());
    } else {
        None
    };
    Ok(Bmap {
        image_size,
        block_size,
        ranges,
        digests,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample(edit: impl Fn(String) -> String) -> String {
        let mut x = String::from(
            "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n<ImageSize> 10000 </ImageSize>\n\
             <BlockSize> 4096 </BlockSize>\n<BlocksCount> 3 </BlocksCount>\n\
             <MappedBlocksCount> 2 </MappedBlocksCount>\n<ChecksumType> sha256 </ChecksumType>\n\
             <BmapFileChecksum> 0000000000000000000000000000000000000000000000000000000000000000 </BmapFileChecksum>\n\
             <BlockMap>\n",
        );
        x.push_str(&format!(
            "<Range chksum=\"{}\"> 0 </Range>\n<Range chksum=\"{}\"> 2 </Range>\n",
            "a".repeat(64),
            "b".repeat(64)
        ));
        x.push_str("</BlockMap>\n</bmap>\n");
        let x = edit(x);
        let sum = hex::encode(Sha256::digest(x.as_bytes()));
        x.replacen(&"0".repeat(64), &sum, 1)
    }

    #[test]
    fn reads_ranges_and_digests() {
        let b = parse(&sample(|x| x)).unwrap();
        assert_eq!(b.image_size, 10000);
        assert_eq!(b.ranges, vec![0..4096, 8192..10000]);
        assert_eq!(b.digests.unwrap()[1], [0xbb; 32]);
    }

    #[test]
    fn refuses_edits_overlaps_and_bad_counts() {
        let mut edited = sample(|x| x);
        edited = edited.replacen("> 2 </Range>", "> 1 </Range>", 1);
        assert!(parse(&edited).unwrap_err().contains("checksum"));
        let over = sample(|x| x.replace("> 2 </Range>", "> 0 </Range>"));
        assert!(parse(&over).unwrap_err().contains("overlaps"));
        let outside = sample(|x| x.replace("> 2 </Range>", "> 3 </Range>"));
        assert!(parse(&outside).unwrap_err().contains("outside"));
        let count = sample(|x| x.replace("<MappedBlocksCount> 2", "<MappedBlocksCount> 5"));
        assert!(parse(&count).unwrap_err().contains("mapped blocks"));
        assert!(parse("hello").unwrap_err().contains("not a bmaptool"));
    }
}
