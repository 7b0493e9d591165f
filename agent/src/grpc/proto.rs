//! The protobuf wire format (protobuf.dev, "Encoding"), as far as the agent's messages
//! need it: varints, length-delimited fields (strings, bytes, nested messages, map
//! entries) and a reader that splits a message into its fields. Writers follow proto3:
//! a scalar field with its default value (0, "") is left out, as protoc's code does.

use super::CallError;

/// Wire type of varint fields (int64, uint64, bool, enums).
pub const VARINT: u64 = 0;
/// Wire type of 64-bit fixed fields.
pub const FIXED64: u64 = 1;
/// Wire type of length-delimited fields (strings, bytes, messages, map entries).
pub const LEN: u64 = 2;
/// Wire type of 32-bit fixed fields.
pub const FIXED32: u64 = 5;

/// Appends `value` as a protobuf varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a protobuf varint at `*pos`.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, CallError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*pos)
            .ok_or_else(|| CallError::BadMessage("truncated varint".into()))?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CallError::BadMessage("varint longer than 10 bytes".into()))
}

/// One field's value as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A varint.
    Varint(u64),
    /// A length-delimited field's bytes.
    Bytes(&'a [u8]),
    /// A fixed 64- or 32-bit field (nothing the agent reads has one).
    Fixed,
}

/// Decodes a protobuf message into its fields (number, value), in wire order.
pub fn fields(buf: &[u8]) -> Result<Vec<(u64, Value<'_>)>, CallError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = get_varint(buf, &mut pos)?;
        let number = key >> 3;
        let skip = match key & 7 {
            VARINT => {
                out.push((number, Value::Varint(get_varint(buf, &mut pos)?)));
                continue;
            }
            FIXED64 => 8,
            FIXED32 => 4,
            LEN => {
                let len = usize::try_from(get_varint(buf, &mut pos)?)
                    .map_err(|_| CallError::BadMessage("field length too large".into()))?;
                let end = pos
                    .checked_add(len)
                    .filter(|&e| e <= buf.len())
                    .ok_or_else(|| {
                        CallError::BadMessage(format!("field {number} is longer than the message"))
                    })?;
                out.push((number, Value::Bytes(&buf[pos..end])));
                pos = end;
                continue;
            }
            t => {
                return Err(CallError::BadMessage(format!(
                    "field {number} has unsupported wire type {t}"
                )))
            }
        };
        pos = pos
            .checked_add(skip)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| CallError::BadMessage("truncated fixed-size field".into()))?;
        out.push((number, Value::Fixed));
    }
    Ok(out)
}

/// Decodes a protobuf message into its length-delimited fields (number, bytes), skipping
/// the other wire types.
#[cfg(test)]
pub fn length_delimited_fields(buf: &[u8]) -> Result<Vec<(u64, &[u8])>, CallError> {
    Ok(fields(buf)?
        .into_iter()
        .filter_map(|(n, v)| match v {
            Value::Bytes(b) => Some((n, b)),
            _ => None,
        })
        .collect())
}

/// The last value of varint field `number` (proto3: a repeated scalar's last one wins),
/// 0 when absent.
pub fn varint_field(fields: &[(u64, Value<'_>)], number: u64) -> u64 {
    fields
        .iter()
        .rev()
        .find_map(|(n, v)| match v {
            Value::Varint(x) if *n == number => Some(*x),
            _ => None,
        })
        .unwrap_or(0)
}

/// The last value of string field `number` (lossily decoded), "" when absent.
pub fn string_field(fields: &[(u64, Value<'_>)], number: u64) -> String {
    bytes_field(fields, number)
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

/// The last value of length-delimited field `number`.
pub fn bytes_field<'a>(fields: &[(u64, Value<'a>)], number: u64) -> Option<&'a [u8]> {
    fields.iter().rev().find_map(|(n, v)| match v {
        Value::Bytes(b) if *n == number => Some(*b),
        _ => None,
    })
}

/// A message being written, field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message(Vec<u8>);

impl Message {
    /// An empty message.
    pub fn new() -> Message {
        Message::default()
    }

    fn key(&mut self, number: u64, wire: u64) {
        put_varint(&mut self.0, number << 3 | wire);
    }

    fn len_delimited(&mut self, number: u64, bytes: &[u8]) {
        self.key(number, LEN);
        put_varint(&mut self.0, bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A string field (left out when empty).
    pub fn string(mut self, number: u64, value: &str) -> Message {
        if !value.is_empty() {
            self.len_delimited(number, value.as_bytes());
        }
        self
    }

    /// One element of a repeated string field (written even when empty).
    pub fn repeated_string(mut self, number: u64, value: &str) -> Message {
        self.len_delimited(number, value.as_bytes());
        self
    }

    /// A varint field: uint64, int64 (two's complement, as protobuf does), an enum's
    /// number or a bool (left out when 0).
    pub fn varint(mut self, number: u64, value: u64) -> Message {
        if value != 0 {
            self.key(number, VARINT);
            put_varint(&mut self.0, value);
        }
        self
    }

    /// A nested message field (always written: a message field's presence is part of
    /// its meaning, e.g. an empty update mask).
    pub fn message(mut self, number: u64, value: &Message) -> Message {
        self.len_delimited(number, &value.0);
        self
    }

    /// A `map<string, string>` field: one entry message (key 1, value 2) per pair.
    pub fn map<'a>(
        mut self,
        number: u64,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Message {
        for (k, v) in pairs {
            let entry = Message::new().string(1, k).string(2, v);
            self.len_delimited(number, &entry.0);
        }
        self
    }

    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// The pairs of `map<string, string>` field `number` of a decoded message, in wire order
/// (the tests read back the maps the agent writes).
#[cfg(test)]
pub fn map_field(
    fields: &[(u64, Value<'_>)],
    number: u64,
) -> Result<Vec<(String, String)>, CallError> {
    let mut out = Vec::new();
    for (n, v) in fields {
        if let (true, Value::Bytes(entry)) = (*n == number, v) {
            let f = self::fields(entry)?;
            out.push((string_field(&f, 1), string_field(&f, 2)));
        }
    }
    Ok(out)
}
