//! The ed25519 keys that sign update bundles, and their text forms.
//!
//! `kiln keygen` writes a secret key file and a `.pub` file next to it; a profile's
//! `[update] keys` names `.pub` files, the builder copies them into the image under
//! [`crate::boot::KEYS_DIR`] as `<key id>.pub`, and the agent trusts exactly those.
//! Both files are one line of text, so people can paste, diff and review them:
//!
//! ```text
//! kiln-update-ed25519 <standard base64 of the 32-byte public key>[ comment]
//! kiln-update-ed25519-secret <standard base64 of the 32-byte ed25519 seed>
//! ```
//!
//! A key's id ([`KeyId`]) is the first 8 bytes of the SHA-256 of its 32 public bytes;
//! a bundle names the id of the key that signed it so a node with several trusted keys
//! knows which one to try. The id is a hint, never trusted by itself: the signature
//! still has to verify with the key the id picks.
//!
//! Signing and verifying use ring's Ed25519 (RFC 8032, deterministic: the same key and
//! message always give the same signature, which keeps bundles reproducible). Making a
//! new key needs randomness, which is I/O, so it lives in the builder
//! ([`SecretKey::from_seed`] takes the 32 random bytes).

use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

use crate::base64;

/// The first word of a public key's text form.
pub const PUBLIC_PREFIX: &str = "kiln-update-ed25519";
/// The first word of a secret key's text form.
pub const SECRET_PREFIX: &str = "kiln-update-ed25519-secret";
/// Bytes of an ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a key's text was refused. Each message says what is wrong with the text; the
/// caller adds the file's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing but white space.
    #[error("the key text is empty; expected one line \"{expected} <base64>\"")]
    Empty {
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// A secret key where a public key belongs, or the other way round.
    #[error(
        "this is a {found} key where a {wanted} key is needed; {hint}",
        found = if *.found_secret { "secret" } else { "public" },
        wanted = if *.found_secret { "public" } else { "secret" },
        hint = if *.found_secret {
            "give the .pub file next to it (the secret key must stay with whoever signs bundles)"
        } else {
            "give the secret key file `kiln keygen` wrote (the one without .pub)"
        }
    )]
    WrongKind {
        /// True when a secret key was given where a public one was wanted.
        found_secret: bool,
    },
    /// The first word is not a kiln update key's.
    #[error(
        "the text starts with {found:?}, not {expected:?}: not a kiln update key \
         (make one with `kiln keygen FILE`)"
    )]
    WrongPrefix {
        /// The first word (at most 40 characters of it).
        found: String,
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// More than one line of text.
    #[error("the key text has more than one line; a kiln key file is exactly one line")]
    MultipleLines,
    /// The key is not canonical padded base64.
    #[error("the key is not valid base64: {0}")]
    Base64(#[from] base64::Base64Error),
    /// Base64 that decodes, but not as kiln writes it (ignored bits set).
    #[error(
        "the key's base64 is not in canonical form; copy the line exactly as `kiln keygen` wrote it"
    )]
    NotCanonical,
    /// The key has the wrong number of bytes.
    #[error("the key is {len} bytes long; an ed25519 key is 32 bytes (44 base64 characters)")]
    Length {
        /// Bytes decoded.
        len: usize,
    },
    /// A secret key file with something after the key.
    #[error("a secret key line has nothing after the key; found extra text")]
    TrailingText,
}

/// The id of a public key: the first 8 bytes of the SHA-256 of its 32 bytes. Shown as
/// 16 lowercase hex digits; a node stores each trusted key as `<id>.pub`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    /// Parses 16 hex digits (either case), as [`fmt::Display`] writes them.
    pub fn parse(text: &str) -> Option<KeyId> {
        let b = text.as_bytes();
        if b.len() != 16 || !b.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut out = [0u8; 8];
        for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
            let s = std::str::from_utf8(pair).ok()?;
            *o = u8::from_str_radix(s, 16).ok()?;
        }
        Some(KeyId(out))
    }

    /// The file name a node keeps this key under in [`crate::boot::KEYS_DIR`].
    pub fn file_name(&self) -> String {
        format!("{self}.pub")
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// An ed25519 public key that update bundles can be checked with.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key of these 32 bytes. Any 32 bytes are accepted here; bytes that are not
    /// a point on the curve simply never verify a signature.
    pub fn from_bytes(bytes: [u8; 32]) -> PublicKey {
        PublicKey(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        let digest = Sha256::digest(self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// Reads the text form `kiln-update-ed25519 <base64>[ comment]`, with or without
    /// the final newline.
    pub fn parse_text(text: &str) -> Result<PublicKey, KeyError> {
        let (b64, _comment) = split_line(text, PUBLIC_PREFIX)?;
        Ok(PublicKey(decode_key(b64)?))
    }

    /// The text form, one line ending in a newline, without a comment.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX} {}\n", base64::encode(&self.0))
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

/// An ed25519 secret key (its 32-byte seed), for signing update bundles.
///
/// `Debug` shows only the public key's id, so the seed never lands in a log.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    seed: [u8; 32],
    public: PublicKey,
}

impl SecretKey {
    /// The key of this seed (32 random bytes for a new key; RFC 8032's private key).
    pub fn from_seed(seed: [u8; 32]) -> SecretKey {
        let public = PublicKey(public_of(&seed));
        SecretKey { seed, public }
    }

    /// The 32-byte seed (what the secret key file holds).
    pub fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// Reads the text form `kiln-update-ed25519-secret <base64>`, with or without the
    /// final newline.
    pub fn parse_text(text: &str) -> Result<SecretKey, KeyError> {
        let (b64, rest) = split_line(text, SECRET_PREFIX)?;
        if rest.is_some() {
            return Err(KeyError::TrailingText);
        }
        Ok(SecretKey::from_seed(decode_key(b64)?))
    }

    /// The text form, one line ending in a newline.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX} {}\n", base64::encode(&self.seed))
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The signature of `msg` (deterministic: the same key and message give the same
    /// bytes).
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(key_pair(&self.seed).sign(msg).as_ref());
        out
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}, seed hidden)", self.public.id())
    }
}

fn key_pair(seed: &[u8; 32]) -> Ed25519KeyPair {
    // ring refuses a seed only for its length, and this one is 32 bytes by type.
    Ed25519KeyPair::from_seed_unchecked(seed).expect("a 32-byte ed25519 seed is always accepted")
}

fn public_of(seed: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(key_pair(seed).public_key().as_ref());
    out
}

/// Splits a key line into its base64 word and the rest after it (a comment), after
/// checking the prefix word. A secret key offered as a public one (and the other way
/// round) gets its own error, as that is the likely mix-up.
fn split_line<'a>(
    text: &'a str,
    expected: &'static str,
) -> Result<(&'a str, Option<&'a str>), KeyError> {
    let line = text
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(text);
    if line.contains('\n') {
        return Err(KeyError::MultipleLines);
    }
    let line = line.trim();
    if line.is_empty() {
        return Err(KeyError::Empty { expected });
    }
    let (prefix, rest) = line.split_once(' ').unwrap_or((line, ""));
    if prefix != expected {
        return Err(match (prefix, expected) {
            (SECRET_PREFIX, PUBLIC_PREFIX) => KeyError::WrongKind { found_secret: true },
            (PUBLIC_PREFIX, SECRET_PREFIX) => KeyError::WrongKind {
                found_secret: false,
            },
            _ => KeyError::WrongPrefix {
                found: prefix.chars().take(40).collect(),
                expected,
            },
        });
    }
    let rest = rest.trim_start();
    let (b64, comment) = match rest.split_once(char::is_whitespace) {
        Some((k, c)) => (k, Some(c.trim()).filter(|c| !c.is_empty())),
        None => (rest, None),
    };
    Ok((b64, comment))
}

fn decode_key(b64: &str) -> Result<[u8; 32], KeyError> {
    let bytes = base64::decode(b64)?;
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length { len: bytes.len() })?;
    // One key, one spelling: the decoder ignores the spare low bits of the last digit.
    if base64::encode(&key) != b64 {
        return Err(KeyError::NotCanonical);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 §7.1, test 2: a one-byte message.
    const RFC_SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    const RFC_PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const RFC_SIG: &str = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
                           085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn rfc8032_vector_signs_and_verifies() {
        let key = SecretKey::from_seed(unhex(RFC_SEED));
        assert_eq!(key.public().as_bytes(), &unhex::<32>(RFC_PUBLIC));
        let sig = key.sign(&[0x72]);
        assert_eq!(sig, unhex::<64>(RFC_SIG));
        assert!(key.public().verify(&[0x72], &sig));
        assert!(!key.public().verify(&[0x73], &sig));
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!key.public().verify(&[0x72], &bad));
        let other = SecretKey::from_seed([7; 32]);
        assert!(!other.public().verify(&[0x72], &sig));
    }

    #[test]
    fn text_forms_round_trip_with_comments() {
        let key = SecretKey::from_seed([42; 32]);
        let secret = key.to_text();
        assert!(secret.starts_with("kiln-update-ed25519-secret "));
        assert!(secret.ends_with('\n'));
        assert_eq!(SecretKey::parse_text(&secret).unwrap(), key);
        let public = key.public().to_text();
        assert_eq!(public.lines().count(), 1);
        assert_eq!(PublicKey::parse_text(&public).unwrap(), key.public());
        let without_newline = public.trim_end();
        assert_eq!(
            PublicKey::parse_text(without_newline).unwrap(),
            key.public()
        );
        let commented = format!("{without_newline} release signing key 2026\r\n");
        assert_eq!(PublicKey::parse_text(&commented).unwrap(), key.public());
    }

    #[test]
    fn key_id_is_the_sha256_prefix_in_hex() {
        let key = PublicKey::from_bytes(unhex(RFC_PUBLIC));
        let digest = Sha256::digest(key.as_bytes());
        let want: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key.id().to_string(), want);
        assert_eq!(key.id().to_string().len(), 16);
        assert_eq!(KeyId::parse(&want), Some(key.id()));
        assert_eq!(KeyId::parse(&want.to_uppercase()), Some(key.id()));
        assert_eq!(KeyId::parse(&want[..15]), None);
        assert_eq!(KeyId::parse("zz00000000000000"), None);
        assert_eq!(key.id().file_name(), format!("{want}.pub"));
    }

    #[test]
    fn bad_texts_say_what_is_wrong() {
        let key = SecretKey::from_seed([1; 32]);
        let public = key.public().to_text();
        let b64 = public.split(' ').nth(1).unwrap().trim().to_string();
        assert_eq!(
            PublicKey::parse_text(&key.to_text()),
            Err(KeyError::WrongKind { found_secret: true })
        );
        assert_eq!(
            SecretKey::parse_text(&public),
            Err(KeyError::WrongKind {
                found_secret: false
            })
        );
        assert!(matches!(
            PublicKey::parse_text(&format!("ssh-ed25519 {b64}")),
            Err(KeyError::WrongPrefix { .. })
        ));
        assert_eq!(
            PublicKey::parse_text(" \n"),
            Err(KeyError::Empty {
                expected: PUBLIC_PREFIX
            })
        );
        assert_eq!(
            PublicKey::parse_text(&format!("{public}{public}")),
            Err(KeyError::MultipleLines)
        );
        assert_eq!(
            PublicKey::parse_text("kiln-update-ed25519 AAAA"),
            Err(KeyError::Length { len: 3 })
        );
        assert!(matches!(
            PublicKey::parse_text("kiln-update-ed25519 AA!A"),
            Err(KeyError::Base64(_))
        ));
        // 32 bytes are 43 digits and '='; the 43rd digit's two low bits are spare, and
        // the decoder ignores them: flipping one spells the same key another way.
        const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut sloppy = b64.clone().into_bytes();
        let v = DIGITS.iter().position(|&d| d == sloppy[42]).unwrap();
        sloppy[42] = DIGITS[v ^ 1];
        let sloppy = String::from_utf8(sloppy).unwrap();
        assert_eq!(base64::decode(&sloppy).unwrap(), key.public().as_bytes());
        assert_eq!(
            PublicKey::parse_text(&format!("kiln-update-ed25519 {sloppy}")),
            Err(KeyError::NotCanonical)
        );
        assert_eq!(
            SecretKey::parse_text(&format!("{} extra", key.to_text().trim_end())),
            Err(KeyError::TrailingText)
        );
        let msg = KeyError::WrongKind { found_secret: true }.to_string();
        assert!(msg.contains(".pub"), "{msg}");
    }

    #[test]
    fn debug_never_shows_the_seed() {
        let key = SecretKey::from_seed([0xab; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("171, 171"), "{shown}");
        assert!(!shown.contains(&base64::encode(key.seed())), "{shown}");
        assert!(shown.contains(&key.public().id().to_string()), "{shown}");
    }
}
