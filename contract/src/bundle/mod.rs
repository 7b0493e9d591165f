//! The signed update bundle: one file with a new image's root filesystem, its
//! dm-verity hash partition and its UKI, behind a signed header that says what they
//! are. `kiln build --format update` writes it; `kiln-agent update apply` reads it.
//!
//! ```text
//! offset 0   magic b"KILNUPD1"
//!        8   u32 LE header_size: the whole header with its padding, a multiple of 4096
//!       12   u32 LE manifest_len
//!       16   [u8; 8]  id of the signing key (a hint to pick the key; not trusted)
//!       24   [u8; 64] ed25519 signature over b"kiln-update-bundle-v1\0" ++ manifest
//!       88   manifest: manifest_len bytes of compact JSON (BundleManifest)
//!            zero padding up to header_size
//!            the parts at the offsets the manifest gives: root, root-verity, uki,
//!            each 4096-aligned, zeros between; the file ends right after the last part
//! ```
//!
//! The signature covers the manifest, and the manifest covers everything else: the
//! header size, each part's offset, size and SHA-256, the version, arch and root hash.
//! A reader therefore needs only the header to decide whether to trust a bundle, and
//! [`open_header`] checks the signature before it parses a byte of JSON, so an
//! attacker's manifest never reaches the parser. The padding is not signed, so it must
//! be zeros: then no byte of the header can change without the bundle being refused.
//!
//! Writing: the builder hashes the three parts, [`plan`] lays them out (which fixes
//! the header size, see there), [`encode_header`] signs the manifest, and the builder
//! writes the header followed by the parts at the manifest's offsets, zero-padded to
//! 4096 between them. Ed25519 signatures are deterministic and the JSON has a fixed
//! field order and no white space, so the same parts and key give the same bytes.

use serde::{Deserialize, Serialize};

use crate::le::{put_u32, u32_at};
use crate::signing::{KeyId, PublicKey, SecretKey, SIGNATURE_LEN};
use crate::version::{ImageVersion, VersionError};

#[cfg(test)]
mod tests;

/// The first 8 bytes of every bundle; the last digit is the header format.
pub const MAGIC: &[u8; 8] = b"KILNUPD1";
/// Bytes before the manifest: magic, two sizes, key id, signature.
pub const FIXED_HEADER: usize = 88;
/// The longest manifest a reader accepts (a real one is under 1 KiB).
pub const MAX_MANIFEST: u32 = 64 * 1024;
/// Alignment of the header size and of every part's offset (a block and a page, so
/// the agent can write parts to a block device straight from the file).
pub const ALIGN: u64 = 4096;
/// The largest header: the fixed part and the longest manifest, rounded up.
pub const MAX_HEADER: usize =
    (FIXED_HEADER + MAX_MANIFEST as usize).next_multiple_of(ALIGN as usize);
/// What the signature covers, before the manifest: it names the purpose, so a
/// signature made with the same key for anything else can never pass for a bundle's.
pub const SIGNING_DOMAIN: &[u8] = b"kiln-update-bundle-v1\0";
/// The manifest's `format`.
pub const FORMAT: u32 = 1;
/// The arch names a manifest may carry (kiln's: the builder's `Arch::name`).
pub const ARCHES: [&str; 2] = ["x86_64", "arm64"];

/// The bundle's manifest: what the image is and where its parts lie. Serialized as
/// compact JSON in field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The image name (the profile's `name`): a node takes only its own image's bundles.
    pub image: String,
    /// `x86_64` or `arm64`.
    pub arch: String,
    /// The image version ([`ImageVersion`] grammar).
    pub version: String,
    /// The dm-verity root hash of the root part: 64 lowercase hex digits.
    pub root_hash: String,
    /// The kiln version that built the image.
    pub kiln_version: String,
    /// SHA-256 of the profile's lock file the image was built from, lowercase hex.
    pub lock_digest: String,
    /// Bytes of the header, padding included; the first part starts here or later.
    pub header_size: u64,
    /// The parts, always root, root-verity, uki, in file order.
    pub parts: Vec<BundlePart>,
}

/// One part of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePart {
    /// What it is.
    pub kind: PartKind,
    /// Where it starts in the file (a multiple of [`ALIGN`]).
    pub offset: u64,
    /// Its length in bytes (not padded).
    pub size: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

/// The kinds of part, in the order a bundle holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartKind {
    /// The root filesystem image: exactly the bytes the builder writes at the start of
    /// the root partition (the filesystem's size, not the partition's).
    Root,
    /// The dm-verity hash partition's bytes: superblock and hash tree.
    RootVerity,
    /// The Unified Kernel Image, whose command line carries the root hash.
    Uki,
}

impl PartKind {
    /// Every kind, in bundle order.
    pub const ALL: [PartKind; 3] = [PartKind::Root, PartKind::RootVerity, PartKind::Uki];

    /// The name in the manifest: `root`, `root-verity`, `uki`.
    pub fn name(self) -> &'static str {
        match self {
            PartKind::Root => "root",
            PartKind::RootVerity => "root-verity",
            PartKind::Uki => "uki",
        }
    }
}

impl std::fmt::Display for PartKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl BundleManifest {
    /// The part of `kind` (every checked manifest has all three).
    pub fn part(&self, kind: PartKind) -> Option<&BundlePart> {
        self.parts.iter().find(|p| p.kind == kind)
    }

    /// The manifest as the header carries it: compact JSON, fields in struct order.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and integers only: serde_json cannot fail on them.
        serde_json::to_vec(self).expect("a bundle manifest is strings and integers")
    }
}

/// A header whose signature verified with a trusted key and whose manifest passed
/// every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHeader {
    /// The manifest.
    pub manifest: BundleManifest,
    /// Its version, parsed.
    pub version: ImageVersion,
    /// The trusted key that signed it.
    pub key_id: KeyId,
    /// Bytes of the header; the parts follow.
    pub header_size: u64,
}

/// Why a bundle (or a manifest about to be signed) is refused. Every message is one
/// line that says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The data ends inside the header.
    #[error(
        "the update bundle ends after {have} bytes, inside its {need}-byte header: the file \
         is truncated; download or copy it again"
    )]
    Truncated {
        /// Bytes available.
        have: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The magic is not kiln's.
    #[error(
        "not a kiln update bundle (it does not start with \"KILNUPD1\"); give the \
         <name>-<arch>.update file that `kiln build --format update` writes"
    )]
    NotABundle,
    /// A kiln bundle of another header format.
    #[error(
        "this update bundle has header format {found:?}, but this kiln reads only format \"1\"; \
         update the node with a bundle built by a matching kiln"
    )]
    Unsupported {
        /// The magic's last character.
        found: char,
    },
    /// The header size field is impossible.
    #[error(
        "the bundle header says it is {header_size} bytes, which is not a multiple of 4096 \
         from 4096 to {MAX_HEADER}: the file is damaged; download or copy it again"
    )]
    BadHeaderSize {
        /// The field's value.
        header_size: u32,
    },
    /// The manifest length field is impossible.
    #[error(
        "the bundle header says its manifest is {manifest_len} bytes, which does not fit a \
         {header_size}-byte header (1 to {MAX_MANIFEST} bytes after the first 88): the file \
         is damaged; download or copy it again"
    )]
    BadManifestLen {
        /// The field's value.
        manifest_len: u32,
        /// The header size field.
        header_size: u32,
    },
    /// The header's padding holds something other than zeros.
    #[error(
        "byte {offset} of the update bundle's header padding is not zero: the header was \
         changed after signing or is damaged; download or copy the bundle again"
    )]
    NonZeroPadding {
        /// Offset in the file.
        offset: usize,
    },
    /// No trusted key has the id the header names.
    #[error(
        "update bundle signed by key {key_id}, which this node does not trust (it trusts: {}); \
         sign with one of those keys or build an image that trusts the new key first",
        list_ids(trusted)
    )]
    UnknownKey {
        /// The id in the header.
        key_id: KeyId,
        /// The ids of the keys the caller trusts.
        trusted: Vec<KeyId>,
    },
    /// The signature does not verify.
    #[error(
        "the update bundle's signature does not verify with trusted key {key_id}: the bundle \
         was changed after it was signed or is damaged; download or copy it again, or rebuild it"
    )]
    BadSignature {
        /// The key tried.
        key_id: KeyId,
    },
    /// The signed manifest is not a manifest this kiln reads.
    #[error(
        "the update bundle's manifest is signed but not readable by this kiln ({0}); build \
         the bundle with a kiln that matches the node's"
    )]
    Manifest(String),
    /// A manifest field is wrong.
    #[error("update bundle manifest field {field}: {message}")]
    Invalid {
        /// The field, e.g. `parts[1].offset`.
        field: String,
        /// What is wrong and what to do.
        message: String,
    },
}

fn list_ids(ids: &[KeyId]) -> String {
    if ids.is_empty() {
        return "no key at all".to_string();
    }
    ids.iter()
        .map(KeyId::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> BundleError {
    BundleError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// What a manifest says about the image, apart from the layout [`plan`] works out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFacts {
    /// The image name (the profile's `name`).
    pub image: String,
    /// `x86_64` or `arm64`.
    pub arch: String,
    /// The image version.
    pub version: String,
    /// The root hash, 64 lowercase hex digits.
    pub root_hash: String,
    /// The kiln version that built it.
    pub kiln_version: String,
    /// SHA-256 of the lock file, lowercase hex.
    pub lock_digest: String,
}

/// A part's length and SHA-256 (lowercase hex), before it has a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDigest {
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// The manifest of a bundle of these parts (root, root-verity, uki): the header size
/// and each part's offset, then every check a reader makes.
///
/// The header size depends on the manifest's length, and the manifest holds the
/// offsets, which depend on the header size: the layout starts with a 4096-byte header
/// and grows it to fit the manifest until it does. That settles at once in practice (a
/// manifest is under 1 KiB), and since the manifest can only get longer as the offsets
/// grow, the loop ends; the result is the smallest header that fits.
pub fn plan(facts: BundleFacts, parts: [PartDigest; 3]) -> Result<BundleManifest, BundleError> {
    let mut header_size = ALIGN;
    loop {
        let mut at = header_size;
        let mut placed = Vec::with_capacity(3);
        for (kind, part) in PartKind::ALL.into_iter().zip(&parts) {
            placed.push(BundlePart {
                kind,
                offset: at,
                size: part.size,
                sha256: part.sha256.clone(),
            });
            at = at
                .checked_add(part.size)
                .and_then(|end| end.checked_next_multiple_of(ALIGN))
                .ok_or_else(|| invalid(format!("parts[{}].size", kind), "too large"))?;
        }
        let manifest = BundleManifest {
            format: FORMAT,
            image: facts.image.clone(),
            arch: facts.arch.clone(),
            version: facts.version.clone(),
            root_hash: facts.root_hash.clone(),
            kiln_version: facts.kiln_version.clone(),
            lock_digest: facts.lock_digest.clone(),
            header_size,
            parts: placed,
        };
        let len = manifest.to_json().len();
        if len > MAX_MANIFEST as usize {
            return Err(invalid(
                "(whole manifest)",
                format!("{len} bytes of JSON, more than the {MAX_MANIFEST} a reader accepts"),
            ));
        }
        let needed = (FIXED_HEADER + len).next_multiple_of(ALIGN as usize) as u64;
        if needed <= header_size {
            check_manifest(&manifest)?;
            return Ok(manifest);
        }
        header_size = needed;
    }
}

/// The header of a bundle with this manifest, signed with `key`: exactly
/// `manifest.header_size` bytes. The manifest is checked as a reader would first, so
/// kiln never signs a bundle a node would refuse for its manifest.
pub fn encode_header(manifest: &BundleManifest, key: &SecretKey) -> Result<Vec<u8>, BundleError> {
    check_manifest(manifest)?;
    let json = manifest.to_json();
    let header_size = manifest.header_size as usize;
    if FIXED_HEADER + json.len() > header_size {
        return Err(invalid(
            "header_size",
            format!(
                "{header_size} bytes cannot hold the fixed header and a {}-byte manifest; \
                 lay the bundle out with bundle::plan",
                json.len()
            ),
        ));
    }
    Ok(seal(&json, key, header_size))
}

/// The header bytes for `json` signed by `key`, padded to `header_size`; no checks
/// (the tests build damaged headers with it).
fn seal(json: &[u8], key: &SecretKey, header_size: usize) -> Vec<u8> {
    let mut out = vec![0u8; header_size.max(FIXED_HEADER + json.len())];
    out[..8].copy_from_slice(MAGIC);
    put_u32(&mut out, 8, header_size as u32);
    put_u32(&mut out, 12, json.len() as u32);
    out[16..24].copy_from_slice(&key.public().id().0);
    out[24..FIXED_HEADER].copy_from_slice(&key.sign(&signed_message(json)));
    out[FIXED_HEADER..FIXED_HEADER + json.len()].copy_from_slice(json);
    out
}

/// What the signature covers: [`SIGNING_DOMAIN`] followed by the manifest bytes.
pub fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + manifest.len());
    msg.extend_from_slice(SIGNING_DOMAIN);
    msg.extend_from_slice(manifest);
    msg
}

/// How many bytes the whole header is, from the first 16 bytes of a file (more are
/// ignored): read that many, then call [`open_header`]. Refuses what is not a bundle,
/// another header format and sizes no kiln writes, so a reader never allocates more
/// than [`MAX_HEADER`] for a header.
pub fn header_len_needed(prefix: &[u8]) -> Result<usize, BundleError> {
    let head = &prefix[..prefix.len().min(8)];
    if head != &MAGIC[..head.len()] {
        return Err(if head.len() == 8 && head[..7] == MAGIC[..7] {
            BundleError::Unsupported {
                found: char::from(head[7]),
            }
        } else {
            BundleError::NotABundle
        });
    }
    if prefix.len() < 16 {
        return Err(BundleError::Truncated {
            have: prefix.len(),
            need: 16,
        });
    }
    let header_size = u32_at(prefix, 8);
    let manifest_len = u32_at(prefix, 12);
    let size = header_size as usize;
    if size < ALIGN as usize || size % ALIGN as usize != 0 || size > MAX_HEADER {
        return Err(BundleError::BadHeaderSize { header_size });
    }
    if manifest_len == 0
        || manifest_len > MAX_MANIFEST
        || FIXED_HEADER + manifest_len as usize > size
    {
        return Err(BundleError::BadManifestLen {
            manifest_len,
            header_size,
        });
    }
    Ok(size)
}

/// Checks a bundle's header (at least [`header_len_needed`] bytes from the start of
/// the file; more are ignored): the signature with the key among `trusted` whose id
/// the header names, before the manifest is parsed; then the manifest (see
/// [`check_manifest`]) and that it agrees with the header's size.
pub fn open_header(header: &[u8], trusted: &[PublicKey]) -> Result<VerifiedHeader, BundleError> {
    let size = header_len_needed(header)?;
    if header.len() < size {
        return Err(BundleError::Truncated {
            have: header.len(),
            need: size,
        });
    }
    let header = &header[..size];
    let manifest_end = FIXED_HEADER + u32_at(header, 12) as usize;
    if let Some(i) = header[manifest_end..].iter().position(|&b| b != 0) {
        return Err(BundleError::NonZeroPadding {
            offset: manifest_end + i,
        });
    }
    let mut key_id = KeyId([0; 8]);
    key_id.0.copy_from_slice(&header[16..24]);
    let mut sig = [0u8; SIGNATURE_LEN];
    sig.copy_from_slice(&header[24..FIXED_HEADER]);
    let json = &header[FIXED_HEADER..manifest_end];
    let candidates: Vec<&PublicKey> = trusted.iter().filter(|k| k.id() == key_id).collect();
    if candidates.is_empty() {
        return Err(BundleError::UnknownKey {
            key_id,
            trusted: trusted.iter().map(PublicKey::id).collect(),
        });
    }
    let msg = signed_message(json);
    if !candidates.iter().any(|k| k.verify(&msg, &sig)) {
        return Err(BundleError::BadSignature { key_id });
    }
    let manifest: BundleManifest =
        serde_json::from_slice(json).map_err(|e| BundleError::Manifest(e.to_string()))?;
    let version = check_manifest(&manifest)?;
    if manifest.header_size != size as u64 {
        return Err(invalid(
            "header_size",
            format!(
                "{} disagrees with the header's size field {size}: the bundle was assembled \
                 wrongly; rebuild it",
                manifest.header_size
            ),
        ));
    }
    Ok(VerifiedHeader {
        manifest,
        version,
        key_id,
        header_size: size as u64,
    })
}

/// The bundle file's length: the end of its last part.
pub fn total_size(manifest: &BundleManifest) -> u64 {
    manifest
        .parts
        .last()
        .map_or(manifest.header_size, |p| p.offset.saturating_add(p.size))
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Every check of a manifest's fields: the format, a known arch, a version of the
/// [`ImageVersion`] grammar (returned parsed), hashes as 64 lowercase hex digits, a
/// header size kiln could write, and the three parts in order, each non-empty,
/// 4096-aligned, after the header and after the part before it.
pub fn check_manifest(m: &BundleManifest) -> Result<ImageVersion, BundleError> {
    if m.format != FORMAT {
        return Err(invalid(
            "format",
            format!(
                "{} is not {FORMAT}, the only bundle format this kiln reads; build the bundle \
                 with a kiln that matches the node's",
                m.format
            ),
        ));
    }
    if m.image.is_empty() || m.image.chars().any(char::is_control) {
        return Err(invalid(
            "image",
            format!("{:?} is not an image name", m.image),
        ));
    }
    if !ARCHES.contains(&m.arch.as_str()) {
        return Err(invalid(
            "arch",
            format!("{:?} is not one of {}", m.arch, ARCHES.join(", ")),
        ));
    }
    let version = ImageVersion::parse(&m.version)
        .map_err(|e: VersionError| invalid("version", e.to_string()))?;
    for (field, value) in [("root_hash", &m.root_hash), ("lock_digest", &m.lock_digest)] {
        if !is_lower_hex(value, 64) {
            return Err(invalid(
                field,
                format!("{value:?} is not 64 lowercase hex digits"),
            ));
        }
    }
    if m.kiln_version.is_empty() {
        return Err(invalid("kiln_version", "is empty"));
    }
    let hs = m.header_size;
    if hs < ALIGN || hs % ALIGN != 0 || hs > MAX_HEADER as u64 {
        return Err(invalid(
            "header_size",
            format!("{hs} is not a multiple of {ALIGN} from {ALIGN} to {MAX_HEADER}"),
        ));
    }
    let kinds: Vec<PartKind> = m.parts.iter().map(|p| p.kind).collect();
    if kinds != PartKind::ALL {
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        return Err(invalid(
            "parts",
            format!(
                "the parts are [{}]; a bundle holds exactly root, root-verity, uki in that order",
                names.join(", ")
            ),
        ));
    }
    let mut free_from = hs;
    for (i, p) in m.parts.iter().enumerate() {
        let field = |name: &str| format!("parts[{i}].{name}");
        if p.size == 0 {
            return Err(invalid(
                field("size"),
                format!("the {} part is empty", p.kind),
            ));
        }
        if p.offset % ALIGN != 0 {
            return Err(invalid(
                field("offset"),
                format!("{} is not a multiple of {ALIGN}", p.offset),
            ));
        }
        if p.offset < free_from {
            return Err(invalid(
                field("offset"),
                format!(
                    "the {} part starts at {}, before byte {free_from} where the {} ends",
                    p.kind,
                    p.offset,
                    if i == 0 { "header" } else { "part before it" }
                ),
            ));
        }
        free_from = p
            .offset
            .checked_add(p.size)
            .ok_or_else(|| invalid(field("size"), format!("{} runs past 2^64", p.size)))?;
        if !is_lower_hex(&p.sha256, 64) {
            return Err(invalid(
                field("sha256"),
                format!("{:?} is not 64 lowercase hex digits", p.sha256),
            ));
        }
    }
    Ok(version)
}
