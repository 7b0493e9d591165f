//! The update channel's "latest" document: which version of an image a node following
//! the channel should run, and where its bundle is. `kiln channel sign` writes it;
//! `kiln-agent update check` reads it.
//!
//! It is signed with the same ed25519 keys as update bundles, in a small JSON envelope
//! (text, so any web server or object store serves it as it is):
//!
//! ```json
//! {"format":1,"key_id":"<16 hex>","signature":"<base64 of 64 bytes>",
//!  "document":"{\"image\":\"homelab\",\"arch\":\"x86_64\",\"version\":\"1.4.0\",...}"}
//! ```
//!
//! The signature covers `b"kiln-update-channel-v1\0"` followed by the bytes of the
//! `document` string, so the signed bytes are exactly the bytes the reader parses: no
//! canonical JSON form is needed. [`open`] checks the signature before it parses the
//! document, so an attacker's document never reaches the parser.
//!
//! Every document expires ([`ChannelDoc::expires`], at most [`MAX_VALIDITY`] after it
//! was issued): an old document (one that names a version with a known hole) cannot be
//! replayed to a node for long, and a publisher whose signing stopped (a frozen
//! channel) is noticed, because its nodes refuse the stale document loudly.

use serde::{Deserialize, Serialize};

use crate::base64;
use crate::bundle::ARCHES;
use crate::civil::DateTime;
use crate::signing::{KeyId, PublicKey, SecretKey, SIGNATURE_LEN};
use crate::version::ImageVersion;

/// The envelope's `format`.
pub const FORMAT: u32 = 1;
/// What the signature covers, before the document: it names the purpose, so a
/// signature made with the same key for a bundle can never pass for a document's.
pub const SIGNING_DOMAIN: &[u8] = b"kiln-update-channel-v1\0";
/// The longest document text a reader accepts (a real one is under 1 KiB).
pub const MAX_TEXT: usize = 64 * 1024;
/// How far in the future `issued` may lie (clocks disagree a little).
pub const CLOCK_SKEW: u64 = 5 * 60;
/// The longest a document may be valid: a replayed document is refused after this.
pub const MAX_VALIDITY: u64 = 90 * 86_400;
/// The file name suffix `kiln channel sign` gives the document.
pub const FILE_SUFFIX: &str = ".channel.json";

/// The signed document: the latest version of one image for one arch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelDoc {
    /// The image name (the profile's `name`).
    pub image: String,
    /// `x86_64` or `arm64`.
    pub arch: String,
    /// The version the bundle holds ([`ImageVersion`] grammar).
    pub version: String,
    /// The bundle: an absolute `http://` or `https://` URL, or a path relative to the
    /// document's own URL (see [`resolve_url`]).
    pub url: String,
    /// The bundle's length in bytes.
    pub size: u64,
    /// When the document was signed (Unix seconds).
    pub issued: u64,
    /// When it stops being accepted (Unix seconds).
    pub expires: u64,
}

impl ChannelDoc {
    /// The document as it is signed: compact JSON, fields in struct order.
    pub fn to_json(&self) -> String {
        // Strings and integers only: serde_json cannot fail on them.
        serde_json::to_string(self).expect("a channel document is strings and integers")
    }
}

/// A document whose signature verified and whose fields and times passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedDoc {
    /// The document.
    pub doc: ChannelDoc,
    /// Its version, parsed.
    pub version: ImageVersion,
    /// The trusted key that signed it.
    pub key_id: KeyId,
}

/// The envelope on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    format: u32,
    key_id: String,
    signature: String,
    document: String,
}

/// Why a channel document (or one about to be signed) is refused. Every message is one
/// line that says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// More than [`MAX_TEXT`] bytes.
    #[error(
        "the channel document is {len} bytes, more than the {MAX_TEXT} a channel document \
         may have: point the channel at the <name>-<arch>.channel.json that `kiln channel \
         sign` writes, not at the bundle"
    )]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not the envelope's JSON.
    #[error(
        "not a kiln channel document ({0}); point the channel at the \
         <name>-<arch>.channel.json that `kiln channel sign` writes"
    )]
    NotADocument(String),
    /// Another envelope format.
    #[error(
        "the channel document has format {found}, but this kiln reads only format {FORMAT}; \
         sign it with a kiln that matches the node's"
    )]
    Unsupported {
        /// The envelope's format.
        found: u32,
    },
    /// The key id or signature field is not what a signer writes.
    #[error("the channel document's {field} is {why}: the file is damaged; publish it again")]
    Malformed {
        /// `key_id` or `signature`.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No trusted key has the document's key id.
    #[error(
        "channel document signed by key {key_id}, which this node does not trust (it trusts: \
         {}); sign it with one of those keys (`kiln channel sign --update-key`)",
        list_ids(trusted)
    )]
    UnknownKey {
        /// The envelope's key id.
        key_id: KeyId,
        /// The ids of the keys the caller trusts.
        trusted: Vec<KeyId>,
    },
    /// The signature does not verify.
    #[error(
        "the channel document's signature does not verify with trusted key {key_id}: it was \
         changed after it was signed or is damaged; sign and publish it again"
    )]
    BadSignature {
        /// The key tried.
        key_id: KeyId,
    },
    /// The signed document is not one this kiln reads.
    #[error(
        "the channel document is signed but not readable by this kiln ({0}); sign it with a \
         kiln that matches the node's"
    )]
    Document(String),
    /// A field of the document is wrong.
    #[error("channel document field {field}: {message}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Issued further in the future than clocks can disagree.
    #[error(
        "the channel document was issued at {}, after this node's time {} (by more than \
         {CLOCK_SKEW} s): check the node's clock (timesyncd) and the signer's",
        utc(*issued), utc(*now)
    )]
    NotYetIssued {
        /// `issued`.
        issued: u64,
        /// The reader's time.
        now: u64,
    },
    /// The document has expired.
    #[error(
        "the channel document expired at {} (now {}): the publisher must re-sign it (`kiln \
         channel sign`) and publish it again; an expired document is refused so that an old \
         document cannot be replayed and a frozen one is noticed",
        utc(*expired_at), utc(*now)
    )]
    Expired {
        /// `expires`.
        expired_at: u64,
        /// The reader's time.
        now: u64,
    },
    /// Valid for longer than [`MAX_VALIDITY`], or expiring before it was issued.
    #[error(
        "the channel document is valid from {} to {}: it must expire after it is issued and \
         at most 90 days later; sign it again with a shorter --expires",
        utc(*issued), utc(*expires)
    )]
    Validity {
        /// `issued`.
        issued: u64,
        /// `expires`.
        expires: u64,
    },
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let t = DateTime::from_unix_u64(secs);
    format!("{} {} UTC", t.date_string(), t.time_string())
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

fn invalid(field: &'static str, message: impl Into<String>) -> ChannelError {
    ChannelError::Invalid {
        field,
        message: message.into(),
    }
}

/// What the signature covers: [`SIGNING_DOMAIN`] followed by the document's bytes.
pub fn signed_message(document: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + document.len());
    msg.extend_from_slice(SIGNING_DOMAIN);
    msg.extend_from_slice(document);
    msg
}

/// The signed document text for `doc`: the envelope as pretty JSON with a final
/// newline. The fields are checked as a reader would (apart from the clock), so kiln
/// never signs a document a node would refuse for its contents.
pub fn encode(doc: &ChannelDoc, key: &SecretKey) -> Result<String, ChannelError> {
    check_fields(doc)?;
    check_validity(doc)?;
    let document = doc.to_json();
    let envelope = Envelope {
        format: FORMAT,
        key_id: key.public().id().to_string(),
        signature: base64::encode(&key.sign(&signed_message(document.as_bytes()))),
        document,
    };
    let mut text =
        serde_json::to_string_pretty(&envelope).expect("an envelope is strings and integers");
    text.push('\n');
    Ok(text)
}

/// Checks a channel document's text: its size and envelope, the signature with the key
/// among `trusted` whose id it names (before the document is parsed), then the
/// document's fields (see [`check_fields`]) and its times against `now` (Unix seconds):
/// issued at most [`CLOCK_SKEW`] ahead, not expired, valid for at most [`MAX_VALIDITY`].
pub fn open(text: &str, trusted: &[PublicKey], now: u64) -> Result<VerifiedDoc, ChannelError> {
    if text.len() > MAX_TEXT {
        return Err(ChannelError::TooLarge { len: text.len() });
    }
    let envelope: Envelope =
        serde_json::from_str(text).map_err(|e| ChannelError::NotADocument(e.to_string()))?;
    if envelope.format != FORMAT {
        return Err(ChannelError::Unsupported {
            found: envelope.format,
        });
    }
    let key_id = KeyId::parse(&envelope.key_id).ok_or(ChannelError::Malformed {
        field: "key_id",
        why: "not 16 hex digits",
    })?;
    let sig: [u8; SIGNATURE_LEN] = base64::decode(&envelope.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(ChannelError::Malformed {
            field: "signature",
            why: "not the base64 of 64 bytes",
        })?;
    let candidates: Vec<&PublicKey> = trusted.iter().filter(|k| k.id() == key_id).collect();
    if candidates.is_empty() {
        return Err(ChannelError::UnknownKey {
            key_id,
            trusted: trusted.iter().map(PublicKey::id).collect(),
        });
    }
    let msg = signed_message(envelope.document.as_bytes());
    if !candidates.iter().any(|k| k.verify(&msg, &sig)) {
        return Err(ChannelError::BadSignature { key_id });
    }
    let doc: ChannelDoc = serde_json::from_str(&envelope.document)
        .map_err(|e| ChannelError::Document(e.to_string()))?;
    let version = check_fields(&doc)?;
    if doc.issued > now.saturating_add(CLOCK_SKEW) {
        return Err(ChannelError::NotYetIssued {
            issued: doc.issued,
            now,
        });
    }
    if doc.expires <= now {
        return Err(ChannelError::Expired {
            expired_at: doc.expires,
            now,
        });
    }
    check_validity(&doc)?;
    Ok(VerifiedDoc {
        doc,
        version,
        key_id,
    })
}

fn check_validity(doc: &ChannelDoc) -> Result<(), ChannelError> {
    if doc.expires <= doc.issued || doc.expires - doc.issued > MAX_VALIDITY {
        return Err(ChannelError::Validity {
            issued: doc.issued,
            expires: doc.expires,
        });
    }
    Ok(())
}

/// The checks of a document's fields that do not need a clock: an image name, a known
/// arch, a version of the [`ImageVersion`] grammar (returned parsed), a bundle URL
/// [`check_url`] accepts and a non-zero size.
pub fn check_fields(doc: &ChannelDoc) -> Result<ImageVersion, ChannelError> {
    if doc.image.is_empty() || doc.image.chars().any(|c| c.is_control() || c == ' ') {
        return Err(invalid(
            "image",
            format!("{:?} is not an image name", doc.image),
        ));
    }
    if !ARCHES.contains(&doc.arch.as_str()) {
        return Err(invalid(
            "arch",
            format!("{:?} is not one of {}", doc.arch, ARCHES.join(", ")),
        ));
    }
    let version =
        ImageVersion::parse(&doc.version).map_err(|e| invalid("version", e.to_string()))?;
    check_url(&doc.url).map_err(|why| invalid("url", why))?;
    if doc.size == 0 {
        return Err(invalid("size", "is 0; a bundle is never empty"));
    }
    Ok(version)
}

/// Checks a bundle URL as a document may carry it: an absolute `http://` or `https://`
/// URL, or a relative reference without a scheme (`homelab-x86_64.update`,
/// `v1.4/homelab-x86_64.update`, `/updates/homelab-x86_64.update`); no spaces or
/// control characters (percent-encode them), no `//host` without a scheme.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("is empty".to_string());
    }
    if let Some(c) = url.chars().find(|c| c.is_control() || *c == ' ') {
        return Err(format!("{url:?} contains {c:?}; percent-encode it"));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
            return Err(format!(
                "{url:?}: only http:// and https:// URLs, or a path relative to the channel \
                 document's URL"
            ));
        }
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("{url:?} has no host"));
        }
        return Ok(());
    }
    if url.starts_with("//") {
        return Err(format!(
            "{url:?}: write the scheme (https://HOST/...) or a path relative to the channel \
             document's URL"
        ));
    }
    Ok(())
}

/// The bundle's URL: `url` itself when it is absolute, else `url` resolved against
/// `base`, the URL the document was read from (`/path` from the server's root, anything
/// else from the document's folder). A `base` without `://` is a local path, and a
/// relative `url` is then a path beside it.
pub fn resolve_url(base: &str, url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    let base = base.split(['?', '#']).next().unwrap_or(base);
    if let Some(path) = url.strip_prefix('/') {
        if let Some((scheme, rest)) = base.split_once("://") {
            let authority = rest.split('/').next().unwrap_or(rest);
            return format!("{scheme}://{authority}/{path}");
        }
        return url.to_string();
    }
    let dir = match base.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{base}/"),
        _ => match base.rfind('/') {
            Some(i) => base[..=i].to_string(),
            None => String::new(),
        },
    };
    format!("{dir}{url}")
}

/// A duration as kiln's options and config write it: a whole number followed by `s`,
/// `m` or `min`, `h` or `d` (`90s`, `10min`, `6h`, `7d`); seconds, or None.
pub fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    let n: u64 = n.parse().ok()?;
    let unit_secs = match unit.trim_start() {
        "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit_secs)
}

/// A duration in the largest unit that divides it (`6h`, `10min`, `90s`).
pub fn format_duration(secs: u64) -> String {
    match secs {
        0 => "0s".to_string(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}min", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests;
