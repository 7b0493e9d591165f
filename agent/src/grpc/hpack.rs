//! HPACK (RFC 7541), as far as one gRPC call needs: the request's header block is encoded
//! with literal fields (no Huffman, no dynamic table), and the server's blocks are decoded
//! in full (indexed fields, the dynamic table, Huffman strings), because servers such as
//! containerd's gRPC use all of them for the response headers and trailers.

use std::collections::VecDeque;
use std::fmt;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HpackError {
    /// The block ended inside a field.
    Truncated,
    /// An integer does not fit (or has a needlessly long encoding).
    IntegerOverflow,
    /// An index that is neither in the static nor in the dynamic table.
    BadIndex(usize),
    /// A Huffman string with an EOS symbol or invalid padding.
    BadHuffman,
    /// A dynamic table size update above the limit we announced.
    TableSizeTooLarge(usize),
}

impl fmt::Display for HpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "HPACK header block ends inside a field"),
            Self::IntegerOverflow => write!(f, "HPACK integer too large"),
            Self::BadIndex(i) => write!(f, "HPACK index {i} is not in the header table"),
            Self::BadHuffman => write!(f, "invalid HPACK Huffman string"),
            Self::TableSizeTooLarge(s) => {
                write!(
                    f,
                    "HPACK table size update to {s} exceeds the limit {DEFAULT_TABLE_SIZE}"
                )
            }
        }
    }
}

/// SETTINGS_HEADER_TABLE_SIZE's initial value; we never announce another.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Code length in bits of each symbol (0..=255, then EOS = 256) of the HPACK Huffman code
/// (RFC 7541 Appendix B). The code is canonical (codes of one length are consecutive in
/// symbol order, shorter codes come first), so the lengths define every code.
const HUFFMAN_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_CODE_LEN: usize = 30;

/// Decodes a Huffman-coded string (RFC 7541 section 5.2): canonical decoding, one bit at a
/// time, which is slow but small, and the strings here are a few dozen bytes.
pub fn huffman_decode(input: &[u8]) -> Result<Vec<u8>, HpackError> {
    // Per length: how many codes, and the symbols sorted by (length, symbol).
    let mut count = [0u16; MAX_CODE_LEN + 1];
    for &len in &HUFFMAN_LENGTHS {
        count[usize::from(len)] += 1;
    }
    let mut symbols: Vec<u16> = (0..=EOS).collect();
    symbols.sort_by_key(|&s| (HUFFMAN_LENGTHS[usize::from(s)], s));

    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    // Decoding state: the code read so far, its first code and index at this length.
    let (mut code, mut first, mut index, mut len) = (0u32, 0u32, 0u32, 0usize);
    let mut ones = true;
    for byte in input {
        for shift in (0..8).rev() {
            let bit = u32::from((byte >> shift) & 1);
            code |= bit;
            ones &= bit == 1;
            len += 1;
            let n = u32::from(count[len]);
            if code < first + n {
                let sym = symbols[(index + code - first) as usize];
                if sym == EOS {
                    return Err(HpackError::BadHuffman);
                }
                out.push(sym as u8);
                (code, first, index, len) = (0, 0, 0, 0);
                ones = true;
                continue;
            }
            if len == MAX_CODE_LEN {
                return Err(HpackError::BadHuffman);
            }
            index += n;
            first = (first + n) << 1;
            code <<= 1;
        }
    }
    // Padding is a prefix of EOS (all ones) and shorter than a byte.
    if len > 7 || !ones {
        return Err(HpackError::BadHuffman);
    }
    Ok(out)
}

/// Appends `value` as an HPACK integer with an `n`-bit prefix; `flags` fills the prefix
/// byte's high bits.
pub fn encode_int(out: &mut Vec<u8>, flags: u8, n: u32, value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// Reads an HPACK integer with an `n`-bit prefix at `*pos`.
pub fn decode_int(buf: &[u8], pos: &mut usize, n: u32) -> Result<usize, HpackError> {
    let max = (1usize << n) - 1;
    let first = *buf.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        // Header sizes here are tiny; anything past 28 bits is garbage.
        if shift > 21 {
            return Err(HpackError::IntegerOverflow);
        }
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
}

/// Appends a string literal without Huffman coding.
fn encode_str(out: &mut Vec<u8>, s: &str) {
    encode_int(out, 0, 7, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn decode_str(buf: &[u8], pos: &mut usize) -> Result<String, HpackError> {
    let huffman = buf.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = decode_int(buf, pos, 7)?;
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = buf.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    let bytes = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Encodes `fields` as literal header fields without indexing (RFC 7541 section 6.2.2),
/// naming a static table entry where one has the name, without Huffman coding.
pub fn encode_literal_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        match STATIC_TABLE.iter().position(|(n, _)| n == name) {
            Some(i) => encode_int(&mut out, 0x00, 4, i + 1),
            None => {
                out.push(0x00);
                encode_str(&mut out, name);
            }
        }
        encode_str(&mut out, value);
    }
    out
}

/// A header block decoder: one per connection, as the dynamic table lives across blocks.
#[derive(Debug)]
pub struct Decoder {
    /// Newest entry first.
    table: VecDeque<(String, String)>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::with_table_size(DEFAULT_TABLE_SIZE)
    }
}

impl Decoder {
    /// A decoder whose dynamic table starts with room for `max_size` octets.
    pub fn with_table_size(max_size: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max_size,
        }
    }

    fn entry(&self, index: usize) -> Result<(String, String), HpackError> {
        if index == 0 {
            return Err(HpackError::BadIndex(0));
        }
        if let Some((n, v)) = STATIC_TABLE.get(index - 1) {
            return Ok(((*n).to_string(), (*v).to_string()));
        }
        self.table
            .get(index - 1 - STATIC_TABLE.len())
            .cloned()
            .ok_or(HpackError::BadIndex(index))
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            match self.table.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, name: &str, value: &str) {
        let entry_size = name.len() + value.len() + 32;
        if entry_size > self.max_size {
            // RFC 7541 section 4.4: a too-large entry empties the table.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max_size - entry_size);
        self.table.push_front((name.to_string(), value.to_string()));
        self.size += entry_size;
    }

    /// Decodes one complete header block into (name, value) pairs.
    pub fn decode(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut fields = Vec::new();
        let mut pos = 0;
        while let Some(&b) = block.get(pos) {
            if b & 0x80 != 0 {
                let index = decode_int(block, &mut pos, 7)?;
                fields.push(self.entry(index)?);
            } else if b & 0xe0 == 0x20 {
                let size = decode_int(block, &mut pos, 5)?;
                if size > DEFAULT_TABLE_SIZE {
                    return Err(HpackError::TableSizeTooLarge(size));
                }
                self.max_size = size;
                self.evict_to(size);
            } else {
                // 01xxxxxx: with incremental indexing (6-bit index); 0000xxxx without
                // indexing and 0001xxxx never indexed (4-bit index).
                let indexing = b & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let index = decode_int(block, &mut pos, prefix)?;
                let name = if index == 0 {
                    decode_str(block, &mut pos)?
                } else {
                    self.entry(index)?.0
                };
                let value = decode_str(block, &mut pos)?;
                if indexing {
                    self.insert(&name, &value);
                }
                fields.push((name, value));
            }
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn integers_match_rfc_7541_c1() {
        let mut out = Vec::new();
        encode_int(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        encode_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        out.clear();
        encode_int(&mut out, 0, 8, 42);
        assert_eq!(out, [0x2a]);
        let mut pos = 0;
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0x9a], &mut pos, 5),
            Err(HpackError::Truncated)
        );
        let mut pos = 0;
        assert_eq!(
            decode_int(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos, 5),
            Err(HpackError::IntegerOverflow)
        );
    }

    #[test]
    fn literal_without_indexing_matches_rfc_7541_c22() {
        assert_eq!(
            encode_literal_block(&[(":path", "/sample/path")]),
            hex("040c 2f73 616d 706c 652f 7061 7468")
        );
        // A name outside the static table is sent as a literal name.
        assert_eq!(
            encode_literal_block(&[("te", "trailers")]),
            hex("0002 7465 0874 7261 696c 6572 73")
        );
        // content-type is static index 31: the 4-bit prefix overflows.
        assert_eq!(
            encode_literal_block(&[("content-type", "x")])[..2],
            [0x0f, 0x10]
        );
    }

    #[test]
    fn decodes_our_own_request_block() {
        let fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/runtime.v1.RuntimeService/Version"),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let block = encode_literal_block(&fields);
        let mut d = Decoder::default();
        assert_eq!(d.decode(&block).unwrap(), pairs(&fields));
        // Literals without indexing leave the dynamic table empty.
        assert!(d.table.is_empty());
    }

    #[test]
    fn requests_without_huffman_match_rfc_7541_c3() {
        let mut d = Decoder::default();
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(
            d.decode(&hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"))
                .unwrap(),
            pairs(&base)
        );
        assert_eq!(d.size, 57);
        let mut second = base.to_vec();
        second.push(("cache-control", "no-cache"));
        assert_eq!(
            d.decode(&hex("8286 84be 5808 6e6f 2d63 6163 6865"))
                .unwrap(),
            pairs(&second)
        );
        assert_eq!(d.size, 110);
        assert_eq!(
            d.decode(&hex(
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"
            ))
            .unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
        assert_eq!(d.size, 164);
    }

    #[test]
    fn requests_with_huffman_match_rfc_7541_c4() {
        let mut d = Decoder::default();
        assert_eq!(
            d.decode(&hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"))
                .unwrap()[3],
            (":authority".to_string(), "www.example.com".to_string())
        );
        assert_eq!(
            d.decode(&hex("8286 84be 5886 a8eb 1064 9cbf")).unwrap()[4],
            ("cache-control".to_string(), "no-cache".to_string())
        );
        assert_eq!(
            d.decode(&hex(
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"
            ))
            .unwrap()[4],
            ("custom-key".to_string(), "custom-value".to_string())
        );
    }

    #[test]
    fn responses_with_huffman_and_eviction_match_rfc_7541_c6() {
        let mut d = Decoder::with_table_size(256);
        let first = pairs(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("location", "https://www.example.com"),
        ]);
        assert_eq!(
            d.decode(&hex(
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 \
                 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"
            ))
            .unwrap(),
            first
        );
        assert_eq!(d.size, 222);
        let mut second = first.clone();
        second[0].1 = "307".to_string();
        assert_eq!(d.decode(&hex("4883 640e ffc1 c0bf")).unwrap(), second);
        assert_eq!(d.size, 222);
        let third = d
            .decode(&hex(
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b \
                 d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 \
                 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ))
            .unwrap();
        assert_eq!(
            third,
            pairs(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                ),
            ])
        );
        assert_eq!(d.size, 215);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut d = Decoder::default();
        assert_eq!(d.decode(&[0xff, 0x00]), Err(HpackError::BadIndex(127)));
        assert_eq!(d.decode(&[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(d.decode(&[0x04, 0x05, b'a']), Err(HpackError::Truncated));
        // 31 + 0x62 + (0x1f << 7) = 4097.
        assert_eq!(
            d.decode(&[0x3f, 0xe2, 0x1f]),
            Err(HpackError::TableSizeTooLarge(4097))
        );
        assert_eq!(d.decode(&[0x3f, 0xe1, 0x1f]), Ok(Vec::new()));
        // Padding longer than 7 bits, and padding with a zero bit.
        assert_eq!(huffman_decode(&[0xff]), Err(HpackError::BadHuffman));
        assert_eq!(huffman_decode(&[0x00]), Err(HpackError::BadHuffman));
        // Four bytes of ones reach the 30-bit EOS code.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(HpackError::BadHuffman)
        );
        // "0" is the 5-bit code 00000, padded with three one bits.
        assert_eq!(huffman_decode(&[0x07]).unwrap(), b"0");
    }
}
