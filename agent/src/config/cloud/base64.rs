//! Standard base64 (RFC 4648 §4) decoding for Azure and Oracle user-data.
//!
//! Both services hand back the user-data exactly as it was given to them, base64-encoded,
//! sometimes wrapped in lines; whitespace is skipped and trailing `=` padding is optional.

use std::fmt;

/// Why the text is not base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base64Error {
    /// A byte outside the alphabet, at this offset of the input.
    BadByte {
        /// Offset in the input.
        offset: usize,
        /// The byte.
        byte: u8,
    },
    /// The data ends in the middle of a byte (one spare base64 digit).
    Truncated,
    /// Something other than `=` follows the padding.
    AfterPadding,
}

impl fmt::Display for Base64Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base64Error::BadByte { offset, byte } => write!(
                f,
                "byte {byte:#04x} at offset {offset} is not in the base64 alphabet"
            ),
            Base64Error::Truncated => write!(f, "the base64 text ends in the middle of a byte"),
            Base64Error::AfterPadding => write!(f, "base64 data continues after '=' padding"),
        }
    }
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

/// Decodes `text`, skipping ASCII whitespace.
pub fn decode(text: &[u8]) -> Result<Vec<u8>, Base64Error> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut digits = 0u32;
    let mut padded = false;
    for (offset, &byte) in text.iter().enumerate() {
        if byte.is_ascii_whitespace() {
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

    #[test]
    fn decodes_rfc4648_vectors() {
        // The test vectors of RFC 4648 §10.
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(decode(enc.as_bytes()).unwrap(), plain.as_bytes(), "{enc}");
        }
    }

    #[test]
    fn skips_whitespace_and_missing_padding() {
        assert_eq!(decode(b"Zm9v\nYmE\r\n").unwrap(), b"fooba");
        assert_eq!(decode(b"/+8=").unwrap(), [0xff, 0xef]);
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            decode(b"Zm9v!"),
            Err(Base64Error::BadByte {
                offset: 4,
                byte: b'!'
            })
        );
        assert_eq!(decode(b"Zm9vY"), Err(Base64Error::Truncated));
        assert_eq!(decode(b"Zg==Zg=="), Err(Base64Error::AfterPadding));
    }
}
