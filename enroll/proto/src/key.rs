//! WireGuard public keys on the wire: 32 bytes, standard base64 (44 characters), as `wg`
//! prints them.

use std::fmt;

use kiln_contract::base64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Curve25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 form; the error says what is wrong.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let bytes = base64::decode(text)
            .map_err(|e| format!("{text:?} is not base64 (wg's 44-character form): {e}"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!(
                "{text:?} decodes to {} bytes, a WireGuard key has 32",
                b.len()
            )
        })?;
        if arr == [0; 32] {
            return Err("the all-zero key is not a WireGuard public key".to_string());
        }
        Ok(PublicKey(arr))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_keys() {
        let k = PublicKey([9; 32]);
        let text = k.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(PublicKey::parse(&text).unwrap(), k);
        assert!(PublicKey::parse("AAAA").unwrap_err().contains("3 bytes"));
        assert!(PublicKey::parse("not base64!")
            .unwrap_err()
            .contains("not base64"));
        assert!(PublicKey::parse(&PublicKey([0; 32]).to_string())
            .unwrap_err()
            .contains("all-zero"));
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), k);
    }
}
