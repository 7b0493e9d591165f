//! Reading an image archive: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/<hex>`) in a tar file, as the builder writes it (builder/src/oci) and as
//! `ctr images import` reads it. Everything is checked before containerd sees any of it:
//! every blob's sha256 against its name, and every blob the image needs (its manifest,
//! config and layers) against the size in its descriptor. Pure: it works on the archive's
//! bytes, which the caller reads.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The annotation containerd's importer names an image by (the builder writes it).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// OCI image manifest.
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's schema 2 manifest, which containerd treats like an OCI one.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The tar block size.
const BLOCK: usize = 512;

/// What is wrong with an archive (the caller names the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    /// The tar structure is broken.
    Tar(String),
    /// A file the layout needs is not in the archive.
    Missing(&'static str),
    /// A JSON file of the layout does not parse.
    Json {
        /// Which file (`index.json`, `oci-layout`, a manifest's blob).
        file: String,
        /// serde_json's message.
        message: String,
    },
    /// `oci-layout` names a version other than 1.0.0.
    LayoutVersion(String),
    /// A descriptor's digest is not `sha256:` and 64 lowercase hex digits.
    BadDigest(String),
    /// A blob under `blobs/sha256/` hashes to something other than its name.
    BlobDigest {
        /// The blob's path.
        path: String,
        /// `sha256:` of its bytes.
        actual: String,
    },
    /// A blob a descriptor names is not in the archive.
    BlobMissing(String),
    /// A blob's size differs from its descriptor's.
    BlobSize {
        /// The blob's digest.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// The blob's.
        actual: u64,
    },
    /// `index.json` lists no manifest for the reference.
    NoManifest {
        /// The reference looked for.
        reference: String,
        /// How many manifests the index has.
        count: usize,
    },
    /// The index names something other than an image manifest.
    MediaType {
        /// The descriptor's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

impl fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tar(m) => write!(f, "not a valid tar archive: {m}"),
            Self::Missing(file) => write!(f, "no {file} in the archive (not an OCI image layout)"),
            Self::Json { file, message } => write!(f, "{file}: {message}"),
            Self::LayoutVersion(v) => {
                write!(f, "oci-layout: imageLayoutVersion {v:?}, not \"1.0.0\"")
            }
            Self::BadDigest(d) => write!(f, "digest {d:?} is not sha256: and 64 hex digits"),
            Self::BlobDigest { path, actual } => {
                write!(
                    f,
                    "{path}: its sha256 is {actual}, not its name (corrupted)"
                )
            }
            Self::BlobMissing(d) => write!(f, "blob {d} is not in the archive"),
            Self::BlobSize {
                digest,
                expected,
                actual,
            } => write!(
                f,
                "blob {digest} has {actual} bytes, its descriptor says {expected}"
            ),
            Self::NoManifest { reference, count } => write!(
                f,
                "index.json has {count} manifests and none is named {reference:?} (annotation \
                 {ANNOTATION_IMAGE_NAME})"
            ),
            Self::MediaType { digest, media_type } => write!(
                f,
                "index.json entry {digest} is a {media_type:?}, not an image manifest"
            ),
        }
    }
}

impl std::error::Error for ArchiveError {}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations (the index's entries carry the image's name).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The 64 hex digits of a `sha256:` digest.
    pub fn hex(&self) -> Result<&str, ArchiveError> {
        sha256_hex(&self.digest)
    }
}

/// The 64 hex digits of `sha256:<hex>`, if that is what `digest` is.
pub fn sha256_hex(digest: &str) -> Result<&str, ArchiveError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| ArchiveError::BadDigest(digest.to_string()))
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

#[derive(Deserialize)]
struct OciLayout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

/// A blob to hand to containerd, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob<'a> {
    /// Its descriptor.
    pub desc: Descriptor,
    /// Its bytes.
    pub data: &'a [u8],
}

/// The image an archive holds for one reference, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image<'a> {
    /// The manifest's descriptor as `index.json` lists it: the image's target.
    pub target: Descriptor,
    /// The manifest's blob.
    pub manifest: Blob<'a>,
    /// The config's blob.
    pub config: Blob<'a>,
    /// The layers' blobs, in order.
    pub layers: Vec<Blob<'a>>,
}

impl<'a> Image<'a> {
    /// Every blob once, the manifest last: containerd takes them in this order, so the
    /// manifest only becomes visible when what it names is there.
    pub fn blobs(&self) -> Vec<&Blob<'a>> {
        let mut out: Vec<&Blob<'a>> = Vec::new();
        for b in self.layers.iter().chain([&self.config, &self.manifest]) {
            if !out.iter().any(|o| o.desc.digest == b.desc.digest) {
                out.push(b);
            }
        }
        out
    }
}

/// The regular files of a tar archive, by path (`./` and `/` prefixes dropped; a later
/// entry replaces an earlier one, as extracting would). Directories, links and other
/// entries are left out: an OCI layout's files are regular files.
pub fn tar_files(bytes: &[u8]) -> Result<BTreeMap<String, &[u8]>, ArchiveError> {
    let mut files = BTreeMap::new();
    let mut pos = 0;
    // A GNU long name or a pax path for the next entry.
    let mut next_name: Option<String> = None;
    loop {
        let Some(header) = bytes.get(pos..pos + BLOCK) else {
            if pos == bytes.len() && pos > 0 {
                // Ended without the two zero blocks: tolerated, as tar does.
                return Ok(files);
            }
            return Err(ArchiveError::Tar(format!(
                "{} bytes left at byte {pos}, less than a {BLOCK}-byte header",
                bytes.len() - pos
            )));
        };
        if header.iter().all(|&b| b == 0) {
            return Ok(files);
        }
        let stored = octal(&header[148..156])
            .ok_or_else(|| ArchiveError::Tar(format!("header at byte {pos}: no checksum")))?;
        let sum: u64 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != sum {
            return Err(ArchiveError::Tar(format!(
                "header at byte {pos}: checksum {stored}, the header sums to {sum}"
            )));
        }
        let size = size_field(&header[124..136])
            .ok_or_else(|| ArchiveError::Tar(format!("header at byte {pos}: unreadable size")))?;
        let start = pos + BLOCK;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                ArchiveError::Tar(format!(
                    "entry at byte {pos}: {size} bytes of data, the archive ends first"
                ))
            })?;
        let data = &bytes[start..end];
        pos = start + size_in_blocks(end - start);
        let typeflag = header[156];
        match typeflag {
            b'L' => {
                next_name = Some(cstr(data));
                continue;
            }
            b'x' => {
                if let Some(p) = pax_path(data) {
                    next_name = Some(p);
                }
                continue;
            }
            _ => {}
        }
        let name = next_name.take().unwrap_or_else(|| header_name(header));
        if typeflag == b'0' || typeflag == 0 {
            files.insert(clean(&name), data);
        }
    }
}

fn size_in_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK) * BLOCK
}

/// The name of a ustar (prefix + name) or GNU/v7 (name) header.
fn header_name(header: &[u8]) -> String {
    let name = cstr(&header[..100]);
    // POSIX ustar ("ustar\0") has a prefix field; GNU's magic ("ustar  ") uses those
    // bytes for other things.
    if &header[257..263] == b"ustar\0" {
        let prefix = cstr(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

fn clean(name: &str) -> String {
    let mut n = name;
    loop {
        if let Some(rest) = n.strip_prefix("./") {
            n = rest;
        } else if let Some(rest) = n.strip_prefix('/') {
            n = rest;
        } else {
            return n.to_string();
        }
    }
}

/// The bytes before the first NUL, lossily decoded.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// An octal field (spaces and NULs around it allowed).
fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return None;
    }
    u64::from_str_radix(digits, 8).ok()
}

/// The size field: octal, or GNU's base-256 for large sizes (high bit of the first byte).
fn size_field(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    octal(field)
}

/// The `path` record of a pax extended header (`<len> path=<value>\n` records).
fn pax_path(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|record| {
        let (_, kv) = record.split_once(' ')?;
        kv.strip_prefix("path=").map(str::to_string)
    })
}

fn json<'de, T: Deserialize<'de>>(file: &str, bytes: &'de [u8]) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::Json {
        file: file.to_string(),
        message: e.to_string(),
    })
}

/// The blob `desc` names, checked against the descriptor's size (its digest was checked
/// with every blob's).
fn blob<'a>(
    files: &BTreeMap<String, &'a [u8]>,
    desc: &Descriptor,
) -> Result<Blob<'a>, ArchiveError> {
    let hex = desc.hex()?;
    let data = *files
        .get(&format!("blobs/sha256/{hex}"))
        .ok_or_else(|| ArchiveError::BlobMissing(desc.digest.clone()))?;
    if data.len() as u64 != desc.size {
        return Err(ArchiveError::BlobSize {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: data.len() as u64,
        });
    }
    Ok(Blob {
        desc: desc.clone(),
        data,
    })
}

/// Reads and checks the archive `bytes` and returns the image it holds for `reference`:
/// the index entry named `reference` by [`ANNOTATION_IMAGE_NAME`], or the only entry.
pub fn read<'a>(bytes: &'a [u8], reference: &str) -> Result<Image<'a>, ArchiveError> {
    let files = tar_files(bytes)?;
    let layout: OciLayout = json(
        "oci-layout",
        files
            .get("oci-layout")
            .ok_or(ArchiveError::Missing("oci-layout"))?,
    )?;
    if layout.version != "1.0.0" {
        return Err(ArchiveError::LayoutVersion(layout.version));
    }
    // Every blob, referenced or not, must be what its name says.
    for (path, data) in &files {
        if let Some(name) = path.strip_prefix("blobs/sha256/") {
            let actual = sha256(data);
            if actual.strip_prefix("sha256:") != Some(name) {
                return Err(ArchiveError::BlobDigest {
                    path: path.clone(),
                    actual,
                });
            }
        }
    }
    let index: Index = json(
        "index.json",
        files
            .get("index.json")
            .ok_or(ArchiveError::Missing("index.json"))?,
    )?;
    let named = index.manifests.iter().find(|m| {
        m.annotations
            .get(ANNOTATION_IMAGE_NAME)
            .is_some_and(|n| n == reference)
    });
    let target = match (named, index.manifests.as_slice()) {
        (Some(m), _) | (None, [m]) => m.clone(),
        (None, all) => {
            return Err(ArchiveError::NoManifest {
                reference: reference.to_string(),
                count: all.len(),
            })
        }
    };
    if target.media_type != MEDIA_MANIFEST && target.media_type != MEDIA_DOCKER_MANIFEST {
        return Err(ArchiveError::MediaType {
            digest: target.digest.clone(),
            media_type: target.media_type.clone(),
        });
    }
    let manifest = blob(&files, &target)?;
    let parsed: Manifest = json(&format!("manifest {}", target.digest), manifest.data)?;
    let config = blob(&files, &parsed.config)?;
    let layers = parsed
        .layers
        .iter()
        .map(|l| blob(&files, l))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Image {
        target,
        manifest,
        config,
        layers,
    })
}
