//! Standard base64 (RFC 4648 §4: `A-Z a-z 0-9 + /`, `=` padding).
//!
//! Two readers need it with different tolerance. WireGuard keys and the node's identity
//! file are written by kiln (or `wg`) in the canonical padded form, so [`decode`]
//! accepts exactly that and nothing looser. Cloud user-data (Azure, Oracle) comes back
//! as whatever the user's tooling produced, sometimes wrapped in lines and sometimes
//! without padding, so [`decode_lenient`] skips ASCII whitespace and takes padding as
//! optional. Both share one decoding loop so they cannot disagree on the bytes.

/// The 64 digits in value order.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Why the text is not base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base64Error {
    /// A byte outside the alphabet, at this offset of the input.
    #[error("byte {byte:#04x} at offset {offset} is not in the base64 alphabet")]
    BadByte {
        /// Offset in the input.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// The data ends in the middle of a byte (one spare base64 digit).
    #[error("the base64 text ends in the middle of a byte")]
    Truncated,
    /// Something other than `=` follows the padding.
    #[error("base64 data continues after '=' padding")]
    AfterPadding,
    /// Padded base64 comes in groups of four characters; this text does not.
    #[error("{len} characters of base64 are not whole groups of 4 (padding missing?)")]
    Unpadded {
        /// The text's length.
        len: usize,
    },
    /// More than two `=` at the end.
    #[error("base64 ends in {count} '=', at most 2 are allowed")]
    TooMuchPadding {
        /// How many there are.
        count: usize,
    },
}

/// Encodes `data`, padded with `=` to a multiple of four characters.
pub fn encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // A chunk of k bytes carries k + 1 digits; the rest of the group is padding.
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes canonical padded base64: whole groups of four characters, at most two `=`
/// and only at the end, no whitespace.
pub fn decode(text: impl AsRef<[u8]>) -> Result<Vec<u8>, Base64Error> {
    let text = text.as_ref();
    if text.len() % 4 != 0 {
        return Err(Base64Error::Unpadded { len: text.len() });
    }
    let count = text.iter().rev().take_while(|&&b| b == b'=').count();
    if count > 2 {
        return Err(Base64Error::TooMuchPadding { count });
    }
    decode_with(text, false)
}

/// Decodes base64 as people and cloud consoles hand it over: ASCII whitespace
/// (line breaks included) is skipped and trailing `=` padding is optional.
pub fn decode_lenient(text: impl AsRef<[u8]>) -> Result<Vec<u8>, Base64Error> {
    decode_with(text.as_ref(), true)
}

fn value(b: u8) -> Option<u32> {
    match b {
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

fn decode_with(text: &[u8], skip_whitespace: bool) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut digits = 0u32;
    let mut padded = false;
    for (offset, &byte) in text.iter().enumerate() {
        if skip_whitespace && byte.is_ascii_whitespace() {
            continue;
        }
        if byte == b'=' {
            padded = true;
            continue;
        }
        if padded {
            return Err(Base64Error::AfterPadding);
        }
        let v = value(byte).ok_or(Base64Error::BadByte { offset, byte })?;
        acc = (acc << 6) | v;
        digits += 1;
        if digits == 4 {
            out.extend_from_slice(&[(acc >> 16) as u8, (acc >> 8) as u8, acc as u8]);
            acc = 0;
            digits = 0;
        }
    }
    // Leftover digits carry 6 bits each: 2 make one byte, 3 make two; the spare low
    // bits are ignored, as every common decoder does.
    match digits {
        0 => {}
        1 => return Err(Base64Error::Truncated),
        2 => out.push((acc >> 4) as u8),
        _ => out.extend_from_slice(&[(acc >> 10) as u8, (acc >> 2) as u8]),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors of RFC 4648 §10.
    const VECTORS: [(&str, &str); 7] = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];

    #[test]
    fn rfc4648_vectors() {
        for (plain, enc) in VECTORS {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), plain.as_bytes(), "{enc}");
            assert_eq!(decode_lenient(enc).unwrap(), plain.as_bytes(), "{enc}");
        }
    }

    #[test]
    fn round_trips_every_length_and_byte() {
        for len in 0..70usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let text = encode(&data);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(decode(&text).unwrap(), data);
            assert_eq!(decode_lenient(&text).unwrap(), data);
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(encode(&all)).unwrap(), all);
        // 32-byte keys are 44 characters, as `wg` prints them.
        assert_eq!(encode(&[9u8; 32]).len(), 44);
    }

    #[test]
    fn strict_refuses_what_is_not_canonical() {
        for bad in [
            "Zg=",
            "Z===",
            "Zg==Zg==",
            "Zm9v!A==",
            "=Zm9",
            "Zm9v\nYmE=",
            "Zg",
            "ZZZZ====",
        ] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        assert_eq!(decode("Zg="), Err(Base64Error::Unpadded { len: 3 }));
        assert_eq!(
            decode("ZZZZ===="),
            Err(Base64Error::TooMuchPadding { count: 4 })
        );
        assert_eq!(decode("Zg==Zg=="), Err(Base64Error::AfterPadding));
        assert_eq!(
            decode("Zm9v!A=="),
            Err(Base64Error::BadByte {
                offset: 4,
                byte: b'!'
            })
        );
    }

    #[test]
    fn lenient_skips_whitespace_and_missing_padding() {
        assert_eq!(decode_lenient(b"Zm9v\nYmE\r\n").unwrap(), b"fooba");
        assert_eq!(decode_lenient(" Zm9v\tYmFy ").unwrap(), b"foobar");
        assert_eq!(decode_lenient("Zg").unwrap(), b"f");
        assert_eq!(decode_lenient(b"/+8=").unwrap(), [0xff, 0xef]);
    }

    #[test]
    fn lenient_rejects_garbage() {
        assert_eq!(
            decode_lenient(b"Zm9v!"),
            Err(Base64Error::BadByte {
                offset: 4,
                byte: b'!'
            })
        );
        assert_eq!(decode_lenient(b"Zm9vY"), Err(Base64Error::Truncated));
        assert_eq!(decode_lenient(b"Zg==Zg=="), Err(Base64Error::AfterPadding));
    }

    #[test]
    fn messages_say_what_is_wrong() {
        assert_eq!(
            Base64Error::BadByte {
                offset: 4,
                byte: b'!'
            }
            .to_string(),
            "byte 0x21 at offset 4 is not in the base64 alphabet"
        );
        assert_eq!(
            Base64Error::Truncated.to_string(),
            "the base64 text ends in the middle of a byte"
        );
    }
}
