//! `kiln channel sign`: the signed "latest" document of an update channel
//! ([`kiln_contract::channel`]) for one bundle.
//!
//! The document's image, arch and version come from the bundle's own header, read
//! and verified with the signing key's public half: a document can only point at a
//! bundle the same key signed, so nodes that accept the document also accept the
//! bundle it names. Its size is the bundle file's length, which must be what the
//! manifest says (a truncated copy is refused here rather than on every node).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use kiln_contract::bundle::{self, BundleError};
use kiln_contract::channel::{self, ChannelDoc, ChannelError, FILE_SUFFIX, MAX_VALIDITY};

use crate::keygen::UpdateKey;

/// What to sign.
#[derive(Debug, Clone)]
pub struct SignJob<'a> {
    /// The signing key (its public key must have signed the bundle).
    pub key: &'a UpdateKey,
    /// The bundle file.
    pub bundle: &'a Path,
    /// The URL the document gives for the bundle: absolute http(s), or relative to the
    /// document's URL.
    pub url: &'a str,
    /// How long the document is valid, in seconds.
    pub expires_in: u64,
    /// When it is issued (Unix seconds).
    pub issued: u64,
    /// Where to write it; None: `<image>-<arch>.channel.json` beside the bundle.
    pub out: Option<&'a Path>,
}

/// What [`sign`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The document file.
    pub path: PathBuf,
    /// What it says.
    pub doc: ChannelDoc,
}

impl std::fmt::Display for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} {} version {} at {} ({} bytes), expires {}; sign it again before then",
            self.path.display(),
            self.doc.image,
            self.doc.arch,
            self.doc.version,
            self.doc.url,
            self.doc.size,
            channel::utc(self.doc.expires)
        )
    }
}

/// Why a channel document could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Reading the bundle or writing the document failed.
    #[error("{}: {action}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What kiln was doing.
        action: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The bundle's header is refused (not a bundle, another key, damaged).
    #[error("{}: {source}", path.display())]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// Why.
        source: BundleError,
    },
    /// The bundle's length is not what its manifest says.
    #[error(
        "{}: the bundle is {have} bytes but its manifest says {want}: it is truncated or \
         has extra bytes; build or copy it again",
        path.display()
    )]
    Length {
        /// The bundle.
        path: PathBuf,
        /// Its length.
        have: u64,
        /// The manifest's.
        want: u64,
    },
    /// `--expires` out of range.
    #[error(
        "--expires {given}: a channel document is valid for 1 minute to 90 days; nodes \
         refuse it once it expires, so re-sign it on a schedule shorter than that"
    )]
    Expires {
        /// The value given, as text.
        given: String,
    },
    /// The document would be refused by nodes.
    #[error(transparent)]
    Document(#[from] ChannelError),
}

fn io_at<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> SignError + 'a {
    move |source| SignError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Checks an `--expires` duration (see [`channel::parse_duration`]): 1 minute to 90
/// days.
pub fn parse_expires(text: &str) -> Result<u64, SignError> {
    match channel::parse_duration(text) {
        Some(s) if (60..=MAX_VALIDITY).contains(&s) => Ok(s),
        _ => Err(SignError::Expires {
            given: text.to_string(),
        }),
    }
}

/// The document's default file name: `<image>-<arch>.channel.json`.
pub fn default_name(doc: &ChannelDoc) -> String {
    format!("{}-{}{FILE_SUFFIX}", doc.image, doc.arch)
}

/// Signs the document for `job.bundle` and writes it (atomically: a temporary file in
/// the same folder, synced, renamed).
pub fn sign(job: &SignJob<'_>) -> Result<Signed, SignError> {
    let path = job.bundle;
    let file = std::fs::File::open(path).map_err(io_at(path, "opening the bundle"))?;
    let len = file
        .metadata()
        .map_err(io_at(path, "reading the bundle's size"))?
        .len();
    let mut prefix = Vec::with_capacity(16);
    (&file)
        .take(16)
        .read_to_end(&mut prefix)
        .map_err(io_at(path, "reading the bundle"))?;
    let bundle_err = |source| SignError::Bundle {
        path: path.to_path_buf(),
        source,
    };
    let size = bundle::header_len_needed(&prefix).map_err(bundle_err)?;
    let mut header = prefix;
    (&file)
        .take((size - header.len()) as u64)
        .read_to_end(&mut header)
        .map_err(io_at(path, "reading the bundle"))?;
    let verified = bundle::open_header(&header, &[job.key.secret.public()]).map_err(bundle_err)?;
    let want = bundle::total_size(&verified.manifest);
    if len != want {
        return Err(SignError::Length {
            path: path.to_path_buf(),
            have: len,
            want,
        });
    }
    let m = verified.manifest;
    let doc = ChannelDoc {
        image: m.image,
        arch: m.arch,
        version: m.version,
        url: job.url.to_string(),
        size: len,
        issued: job.issued,
        expires: job.issued.saturating_add(job.expires_in),
    };
    let text = channel::encode(&doc, &job.key.secret)?;
    let out = match job.out {
        Some(p) => p.to_path_buf(),
        None => path
            .parent()
            .unwrap_or(Path::new("."))
            .join(default_name(&doc)),
    };
    write_atomic(&out, text.as_bytes())?;
    Ok(Signed { path: out, doc })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".kiln-channel-")
        .tempfile_in(dir)
        .map_err(io_at(dir, "creating a temporary file in"))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_at(path, "writing"))?;
    // A web server serves the document to anyone: it is public, like the bundle.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(io_at(path, "setting the mode of"))?;
    tmp.persist(path)
        .map(drop)
        .map_err(|e| io_at(path, "writing")(e.error))
}
