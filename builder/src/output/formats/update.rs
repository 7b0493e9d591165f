//! `<stem>.update`: the signed A/B update bundle a node installs into its other
//! slot ([`kiln_contract::bundle`] owns the format; this writes it).
//!
//! Unlike the other formats it is not a form of the whole disk: it carries the
//! root filesystem (read from the raw image, exactly the filesystem's bytes), the
//! verity hash partition's bytes and the UKI, each as the build made it, behind a
//! header signed with the key `kiln build --update-key` names. The signature is
//! deterministic and the layout depends only on the parts, so the same build and
//! key give the same file.
//!
//! A bundle is only useful to nodes that trust its key, so a build refuses a key
//! the profile's `[update] keys` does not list before any work starts
//! ([`check_signer`]): the mistake would otherwise surface on a node, at apply time.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kiln_contract::bundle::{self, BundleError, BundleFacts, PartDigest, PartKind};
use kiln_contract::signing::{KeyId, PublicKey, SecretKey};
use kiln_contract::version::ImageVersion;
use sha2::{Digest, Sha256};

use super::{create_output, finish_output, for_zeros, io_at, FormatError};
use crate::output::digest::sha256_hex;
use crate::output::manifest::FileDigest;
use crate::profile::Profile;

/// Bytes of the root filesystem read and written at a time.
const COPY_CHUNK: usize = 1 << 20;

/// Why the `update` format cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The format was asked for without a key to sign with.
    #[error(
        "the update format needs the key that signs bundles: pass --update-key FILE (or set \
         KILN_UPDATE_KEY); make a key with `kiln keygen FILE` and list FILE.pub in the \
         profile's [update] keys"
    )]
    NoKey,
    /// The profile sets no version, so the bundle could never be newer than a node.
    #[error(
        "{}: the update format needs the profile's `version` (e.g. version = \"1.0\"): \
         without one the image is version {}, which no node takes as an update",
        profile.display(),
        crate::profile::DEFAULT_VERSION
    )]
    NoVersion {
        /// The profile file.
        profile: PathBuf,
    },
    /// The profile trusts no key, so its images would take no bundle at all.
    #[error(
        "{}: [update] keys is empty, so nodes built from this profile would accept no update \
         bundle; add the public key of {} (key {key_id}): [update] keys = [\"{}.pub\"]",
        profile.display(),
        key_path.display(),
        key_path.display()
    )]
    NoTrustedKeys {
        /// The profile file.
        profile: PathBuf,
        /// The signing key's file.
        key_path: PathBuf,
        /// Its id.
        key_id: KeyId,
    },
    /// The signing key is not one the profile's images trust.
    #[error(
        "{} is key {key_id}, which {}'s [update] keys does not list (it lists: {}): nodes \
         built from this profile would refuse bundles signed with it; sign with one of the \
         listed keys, or add {}.pub to [update] keys and roll that image out first",
        key_path.display(),
        profile.display(),
        trusted.iter().map(KeyId::to_string).collect::<Vec<_>>().join(", "),
        key_path.display()
    )]
    KeyNotTrusted {
        /// The profile file.
        profile: PathBuf,
        /// The signing key's file.
        key_path: PathBuf,
        /// Its id.
        key_id: KeyId,
        /// The ids the profile lists.
        trusted: Vec<KeyId>,
    },
    /// The bundle's manifest failed a check (a kiln bug or a bad value from the build).
    #[error("writing the update bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The root filesystem's range does not lie inside the raw image.
    #[error(
        "{}: the root filesystem at bytes {}..{} lies outside the {size}-byte image; this is \
         a kiln bug",
        raw.display(),
        range.start,
        range.end
    )]
    RootOutside {
        /// The raw image.
        raw: PathBuf,
        /// The range asked for.
        range: Range<u64>,
        /// The image's size.
        size: u64,
    },
}

/// What a profile says about updates that a bundle needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateSettings {
    /// The profile file (for messages).
    pub profile: PathBuf,
    /// The profile's `version`.
    pub version: ImageVersion,
    /// The public keys images built from the profile trust (`[update] keys`).
    pub keys: Vec<PublicKey>,
}

impl UpdateSettings {
    /// The settings of `profile`.
    pub fn of(profile: &Profile) -> UpdateSettings {
        UpdateSettings {
            profile: profile.path.clone(),
            version: profile.version.clone(),
            keys: profile.update.keys.clone(),
        }
    }
}

/// Checks, before a build does any work, that the update format can be written:
/// there is a key, the profile sets a version, and the profile trusts the key.
pub fn check_signer(
    settings: &UpdateSettings,
    key: Option<(&Path, &SecretKey)>,
) -> Result<(), UpdateError> {
    let (key_path, key) = key.ok_or(UpdateError::NoKey)?;
    let profile = settings.profile.clone();
    // A profile without `version` is "0"; so is one that says "0", which is no
    // more use as an update.
    if settings.version.as_str() == crate::profile::DEFAULT_VERSION {
        return Err(UpdateError::NoVersion { profile });
    }
    let key_id = key.public().id();
    if settings.keys.is_empty() {
        return Err(UpdateError::NoTrustedKeys {
            profile,
            key_path: key_path.to_path_buf(),
            key_id,
        });
    }
    if !settings.keys.contains(&key.public()) {
        return Err(UpdateError::KeyNotTrusted {
            profile,
            key_path: key_path.to_path_buf(),
            key_id,
            trusted: settings.keys.iter().map(PublicKey::id).collect(),
        });
    }
    Ok(())
}

/// Where a bundle's parts come from and where it goes.
#[derive(Debug)]
pub struct BundleJob<'a> {
    /// The raw image holding the root filesystem.
    pub raw: &'a Path,
    /// The root filesystem's bytes in `raw`: from the root partition's start, the
    /// filesystem's size (what the verity tree covers).
    pub root: Range<u64>,
    /// The verity partition's bytes (superblock and tree).
    pub verity: &'a [u8],
    /// The UKI.
    pub uki: &'a [u8],
    /// Everything else the manifest says.
    pub facts: BundleFacts,
    /// The signing key.
    pub key: &'a SecretKey,
    /// The bundle file to write.
    pub out: &'a Path,
}

/// Writes the bundle and returns its digest.
pub fn write(job: &BundleJob<'_>) -> Result<FileDigest, FormatError> {
    let raw = File::open(job.raw).map_err(io_at(job.raw, "opening the raw image"))?;
    let size = raw
        .metadata()
        .map_err(io_at(job.raw, "reading the raw image's size"))?
        .len();
    if job.root.start > job.root.end || job.root.end > size {
        return Err(UpdateError::RootOutside {
            raw: job.raw.to_path_buf(),
            range: job.root.clone(),
            size,
        }
        .into());
    }
    // The header comes first and holds every part's digest, so the root is read
    // twice: once to hash it, once to copy it.
    let mut root_hash = Sha256::new();
    copy_range(&raw, job.raw, job.root.clone(), |chunk| {
        root_hash.update(chunk);
        Ok(())
    })?;
    let parts = [
        PartDigest {
            size: job.root.end - job.root.start,
            sha256: hex::encode(root_hash.finalize()),
        },
        PartDigest {
            size: job.verity.len() as u64,
            sha256: sha256_hex(job.verity),
        },
        PartDigest {
            size: job.uki.len() as u64,
            sha256: sha256_hex(job.uki),
        },
    ];
    let manifest = bundle::plan(job.facts.clone(), parts).map_err(UpdateError::from)?;
    let header = bundle::encode_header(&manifest, job.key).map_err(UpdateError::from)?;

    let mut w = create_output(job.out)?;
    let write_err = |source| FormatError::Io {
        path: job.out.to_path_buf(),
        action: "writing",
        source,
    };
    w.write_all(&header).map_err(write_err)?;
    let mut at = header.len() as u64;
    for part in &manifest.parts {
        write_zeros(&mut w, part.offset - at).map_err(write_err)?;
        match part.kind {
            PartKind::Root => copy_range(&raw, job.raw, job.root.clone(), |chunk| {
                w.write_all(chunk).map_err(write_err)
            })?,
            PartKind::RootVerity => w.write_all(job.verity).map_err(write_err)?,
            PartKind::Uki => w.write_all(job.uki).map_err(write_err)?,
        }
        at = part.offset + part.size;
    }
    let digest = finish_output(job.out, w)?;
    debug_assert_eq!(digest.size, bundle::total_size(&manifest));
    Ok(digest)
}

/// Feeds the bytes of `range` of `file` to `f` in pieces of [`COPY_CHUNK`].
fn copy_range(
    file: &File,
    path: &Path,
    range: Range<u64>,
    mut f: impl FnMut(&[u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = range.start;
    while pos < range.end {
        let n = (range.end - pos).min(COPY_CHUNK as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(io_at(path, "reading the root filesystem from"))?;
        f(&buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

fn write_zeros(w: &mut impl Write, n: u64) -> std::io::Result<()> {
    let mut result = Ok(());
    for_zeros(n, |z| {
        if result.is_ok() {
            result = w.write_all(z);
        }
    });
    result
}
