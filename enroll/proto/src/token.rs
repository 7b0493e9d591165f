//! The join token: `KLN1<64 hex: sha256 of the CA's SubjectPublicKeyInfo>::<id>.<secret>`.
//!
//! The token carries the trust anchor, so a node needs nothing else to reach the server
//! safely (the kubeadm `--discovery-token-ca-cert-hash` idea in one string). The id names
//! the token in listings and logs; only the secret proves possession, and the server keeps
//! nothing but its sha256.

use std::fmt;

use sha2::{Digest, Sha256};

/// What every kiln token starts with (format version 1).
pub const PREFIX: &str = "KLN1";
/// Characters in a token id.
pub const ID_LEN: usize = 6;
/// Characters in a token secret.
pub const SECRET_LEN: usize = 32;
/// The characters ids and secrets are made of.
pub const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A parsed token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// sha256 of the CA certificate's DER SubjectPublicKeyInfo.
    pub ca_hash: [u8; 32],
    /// The token's public name.
    pub id: String,
    /// The secret half.
    pub secret: String,
}

/// Why a string is not a token. Never includes the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError(pub String);

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed token: {} (expected {PREFIX}<64 hex digits>::<6 characters a-z0-9>.<32 \
             characters a-z0-9>, as `kiln-enroll token create` prints it)",
            self.0
        )
    }
}

impl std::error::Error for TokenError {}

fn check_part(what: &str, text: &str, len: usize) -> Result<(), TokenError> {
    if text.len() != len {
        return Err(TokenError(format!(
            "the {what} has {} characters, not {len}",
            text.chars().count()
        )));
    }
    if let Some(c) = text.bytes().find(|b| !ALPHABET.contains(b)) {
        return Err(TokenError(format!(
            "the {what} contains {:?}; only a-z and 0-9 are allowed",
            char::from(c)
        )));
    }
    Ok(())
}

impl Token {
    /// Parses a token; surrounding whitespace (a pasted newline) is ignored.
    pub fn parse(text: &str) -> Result<Token, TokenError> {
        let text = text.trim();
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| TokenError(format!("it does not start with {PREFIX}")))?;
        let (hash, cred) = rest
            .split_once("::")
            .ok_or_else(|| TokenError("there is no `::` after the CA hash".to_string()))?;
        if hash.len() != 64 {
            return Err(TokenError(format!(
                "the CA hash has {} characters, not 64",
                hash.chars().count()
            )));
        }
        let ca_hash = hex32(hash)
            .ok_or_else(|| TokenError("the CA hash is not lowercase hex".to_string()))?;
        let (id, secret) = cred
            .split_once('.')
            .ok_or_else(|| TokenError("there is no `.` between id and secret".to_string()))?;
        check_part("id", id, ID_LEN)?;
        check_part("secret", secret, SECRET_LEN)?;
        Ok(Token {
            ca_hash,
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// Makes a token from 38 random bytes (6 for the id, 32 for the secret).
    pub fn from_random(ca_hash: [u8; 32], random: &[u8; ID_LEN + SECRET_LEN]) -> Token {
        let pick = |b: &u8| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]);
        Token {
            ca_hash,
            id: random[..ID_LEN].iter().map(pick).collect(),
            secret: random[ID_LEN..].iter().map(pick).collect(),
        }
    }

    /// The full token text (contains the secret: print only where the user asked for it).
    pub fn reveal(&self) -> String {
        format!(
            "{PREFIX}{}::{}.{}",
            to_hex(&self.ca_hash),
            self.id,
            self.secret
        )
    }

    /// sha256 of the secret: what the server stores.
    pub fn secret_hash(&self) -> [u8; 32] {
        secret_hash(&self.secret)
    }
}

/// sha256 of a token secret.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares two digests without an early exit, so timing tells nothing about how many
/// leading bytes matched.
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // black_box keeps the optimiser from turning the loop back into a short-circuit.
    std::hint::black_box(diff) == 0
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(
            f,
            "Token({PREFIX}{}::{}.<secret>)",
            to_hex(&self.ca_hash),
            self.id
        )
    }
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 lowercase hex digits.
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(bytes[2 * i])? << 4 | nibble(bytes[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        format!("KLN1{}::abc123.{}", "ab".repeat(32), "s".repeat(32))
    }

    #[test]
    fn parses_and_prints_back() {
        let t = Token::parse(&format!(" {}\n", sample())).unwrap();
        assert_eq!(t.ca_hash, [0xab; 32]);
        assert_eq!(t.id, "abc123");
        assert_eq!(t.reveal(), sample());
        assert!(!format!("{t:?}").contains("sss"));
    }

    #[test]
    fn refuses_each_malformation_with_its_reason() {
        let h = "ab".repeat(32);
        let s = "s".repeat(32);
        let cases = [
            (format!("KLN2{h}::abc123.{s}"), "does not start with KLN1"),
            (format!("KLN1{h}abc123.{s}"), "no `::`"),
            (
                format!("KLN1{}::abc123.{s}", &h[..62]),
                "62 characters, not 64",
            ),
            (
                format!("KLN1{}::abc123.{s}", "AB".repeat(32)),
                "not lowercase hex",
            ),
            (format!("KLN1{h}::abc123{s}"), "no `.`"),
            (format!("KLN1{h}::abc12.{s}"), "id has 5 characters"),
            (format!("KLN1{h}::abC123.{s}"), "id contains 'C'"),
            (format!("KLN1{h}::abc123.{}", &s[..31]), "secret has 31"),
            (
                format!("KLN1{h}::abc123.{}-", &s[..31]),
                "secret contains '-'",
            ),
        ];
        for (text, want) in cases {
            let err = Token::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains(&s), "secret leaked: {err}");
        }
    }

    #[test]
    fn random_tokens_parse_back() {
        let mut r = [0u8; 38];
        for (i, b) in r.iter_mut().enumerate() {
            *b = (i * 37 + 11) as u8;
        }
        let t = Token::from_random([7; 32], &r);
        assert_eq!(Token::parse(&t.reveal()).unwrap(), t);
    }

    #[test]
    fn digest_eq_compares_every_byte() {
        let a = [1u8; 32];
        let mut b = a;
        assert!(digest_eq(&a, &b));
        b[31] = 2;
        assert!(!digest_eq(&a, &b));
        b = a;
        b[0] = 0;
        assert!(!digest_eq(&a, &b));
    }
}
