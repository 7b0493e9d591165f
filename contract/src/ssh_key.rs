//! OpenSSH public key lines (`ssh_authorized_keys` in the node config), checked the same
//! way by the agent, before anything reaches sshd, and by `kiln flash --config`, before
//! anything is written.
//!
//! A line is `TYPE BASE64 [COMMENT]`, as `ssh-keygen` writes it to `id_*.pub`. It is
//! checked the way sshd would read it, so a line that passes is one sshd accepts:
//! a known key type, base64 whose decoded blob names the same type, and a comment
//! without control characters (a newline in a value would otherwise add a second,
//! unchecked line to `authorized_keys`). `authorized_keys` options (`from="..."`,
//! `command="..."`, `restrict`) are refused rather than passed through: kiln installs
//! keys for plain logins only, and an option sshd reads differently from what the user
//! meant would widen access silently.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::base64;

/// The node config's key that lists them.
pub const KEY: &str = "ssh_authorized_keys";

/// The key types sshd accepts in `authorized_keys` (OpenSSH 10), plain and FIDO
/// (`sk-`). DSA is gone from OpenSSH 10.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Longest line accepted: an RSA 16384-bit key is ~2,800 characters.
pub const MAX_LINE: usize = 8192;

/// Most keys one config may list.
pub const MAX_KEYS: usize = 256;

/// A checked public key line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizedKey {
    /// The key type (`ssh-ed25519`).
    pub kind: String,
    /// The decoded key blob.
    pub blob: Vec<u8>,
    /// The comment (may be empty).
    pub comment: String,
}

impl AuthorizedKey {
    /// Checks one line; the error says what is wrong and what a key line looks like.
    pub fn parse(line: &str) -> Result<AuthorizedKey, String> {
        if line.len() > MAX_LINE {
            return Err(format!(
                "{} characters is longer than the {MAX_LINE} a key line may have",
                line.len()
            ));
        }
        if let Some(c) = line.chars().find(|c| c.is_control() && *c != '\t') {
            return Err(format!(
                "{c:?} is not allowed: one key per entry, on one line"
            ));
        }
        let mut words = line.split_whitespace();
        let Some(kind) = words.next() else {
            return Err("empty: give a public key line such as the contents of \
                        ~/.ssh/id_ed25519.pub"
                .to_string());
        };
        if !KEY_TYPES.contains(&kind) {
            let hint = if kind.contains('=') || kind.contains(',') || kind == "restrict" {
                "authorized_keys options are not supported: give the key alone, \
                 `TYPE BASE64 [COMMENT]`"
                    .to_string()
            } else {
                format!(
                    "{kind:?} is not an SSH public key type (known: {}); give a line \
                     such as the contents of ~/.ssh/id_ed25519.pub",
                    KEY_TYPES.join(", ")
                )
            };
            return Err(hint);
        }
        let Some(data) = words.next() else {
            return Err(format!("no key data after {kind:?}"));
        };
        let blob = base64::decode(data).map_err(|e| format!("the key data is not base64: {e}"))?;
        match blob_kind(&blob) {
            Some(inner) if inner == kind.as_bytes() => {}
            Some(inner) => {
                return Err(format!(
                    "the key data is a {:?} key, not {kind:?}",
                    String::from_utf8_lossy(inner)
                ))
            }
            None => return Err("the key data is not an SSH public key".to_string()),
        }
        Ok(AuthorizedKey {
            kind: kind.to_string(),
            blob,
            comment: words.collect::<Vec<_>>().join(" "),
        })
    }

    /// The line as written to `authorized_keys`: `TYPE BASE64[ COMMENT]`.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.kind, base64::encode(&self.blob));
        if !self.comment.is_empty() {
            s.push(' ');
            s.push_str(&self.comment);
        }
        s
    }

    /// The key's fingerprint as `ssh-keygen -l` shows it: `SHA256:` and the unpadded
    /// base64 of the blob's SHA-256.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.blob)
    }
}

impl fmt::Display for AuthorizedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.line())
    }
}

/// `SHA256:<unpadded base64>` of a key blob, as OpenSSH prints fingerprints.
pub fn fingerprint(blob: &[u8]) -> String {
    let digest = Sha256::digest(blob);
    let text = base64::encode(&digest);
    format!("SHA256:{}", text.trim_end_matches('='))
}

/// The type name a key blob starts with (an SSH string: 4-byte big-endian length,
/// then the name), when it has one.
fn blob_kind(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4usize.checked_add(len)?)?;
    // Something must follow the name: a key is more than its type.
    (blob.len() > 4 + len).then_some(name)
}

/// How an entry is shown in a message: quoted, and cut short when long (a key is
/// public, but a 700-character line would drown the message).
pub fn shown(entry: &str) -> String {
    const KEEP: usize = 60;
    if entry.chars().count() <= KEEP {
        format!("{entry:?}")
    } else {
        let head: String = entry.chars().take(KEEP).collect();
        format!("{:?}", format!("{head}…"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_real_key_reads_back_with_ssh_keygens_fingerprint() {
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHMsjRSweIpHvgMa2kaO4k+xKQ/cY3L4TLcVYlHtLKEJ \
                    alice@laptop";
        let k = AuthorizedKey::parse(line).unwrap();
        assert_eq!(k.line(), line);
        assert_eq!(
            k.fingerprint(),
            "SHA256:BX2nMhEV34buFIegSGApQZDSGEbaXiJKchNYFBuSeLE"
        );
        assert!(AuthorizedKey::parse("ssh-ed25519 AAAA!").is_err());
    }
}
