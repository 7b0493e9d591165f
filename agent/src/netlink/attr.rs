//! Netlink framing shared by rtnetlink and generic netlink: the `nlmsghdr` header, the
//! `nlattr` TLVs (4-byte aligned, nestable) and `NLMSG_ERROR`/`NLMSG_DONE` payloads.
//!
//! Everything is host byte order, as the kernel writes it (netlink never leaves the host).

use std::fmt;

/// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct nlattr`: len u16, type u16.
pub(crate) const NLA_HDRLEN: usize = 4;

pub(crate) const NLM_F_REQUEST: u16 = 0x01;
/// Marks a multipart message (only the tests build one: the agent reads dumps to their
/// `NLMSG_DONE` whatever the flag says).
#[cfg(test)]
pub(crate) const NLM_F_MULTI: u16 = 0x02;
pub(crate) const NLM_F_ACK: u16 = 0x04;
/// Set by the kernel on a dump part when the table changed during the dump.
pub(crate) const NLM_F_DUMP_INTR: u16 = 0x10;
/// `NLM_F_ROOT | NLM_F_MATCH`.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;

pub(crate) const NLMSG_NOOP: u16 = 1;
pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLMSG_DONE: u16 = 3;
pub(crate) const NLMSG_OVERRUN: u16 = 4;

pub(crate) const NLA_F_NESTED: u16 = 1 << 15;
pub(crate) const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Rounds up to the 4-byte netlink alignment (`NLMSG_ALIGN`, `NLA_ALIGN`).
pub(crate) fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A kernel reply that does not have the shape the uapi headers promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub String);

impl DecodeError {
    pub fn new(msg: impl Into<String>) -> DecodeError {
        DecodeError(msg.into())
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request that cannot be encoded (a length that does not fit its u16/u32 field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodeError(pub String);

/// An open nested attribute: where its header starts.
#[derive(Debug, Clone, Copy)]
#[must_use = "a nest must be closed with end_nested"]
pub(crate) struct Nest(usize);

/// Builds one netlink message in place: header, family header, attributes.
#[derive(Debug, Clone)]
pub(crate) struct MsgBuilder {
    buf: Vec<u8>,
    /// Set when an attribute grew past u16::MAX; reported by `finish`.
    overflow: Option<String>,
}

impl MsgBuilder {
    /// Starts a message; seq and pid stay 0 until the socket stamps the sequence number.
    pub fn new(msg_type: u16, flags: u16) -> MsgBuilder {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&msg_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        MsgBuilder {
            buf,
            overflow: None,
        }
    }

    /// Appends a fixed family header (ifinfomsg, genlmsghdr, ...), padded.
    pub fn header(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        let to = align(self.buf.len());
        self.buf.resize(to, 0);
    }

    /// Current length in bytes (what `nlmsg_len` would say).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Rolls back to an earlier `len()` (used when a part does not fit a message).
    pub fn truncate(&mut self, len: usize) {
        self.buf.truncate(len);
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        let Ok(len16) = u16::try_from(len) else {
            self.overflow = Some(format!("attribute {ty} is {len} bytes, more than 65535"));
            return;
        };
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn attr_u8(&mut self, ty: u16, v: u8) {
        self.attr(ty, &[v]);
    }

    pub fn attr_u16(&mut self, ty: u16, v: u16) {
        self.attr(ty, &v.to_ne_bytes());
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) {
        self.attr(ty, &v.to_ne_bytes());
    }

    /// A NUL-terminated string (NLA_NUL_STRING / NLA_STRING both accept it).
    pub fn attr_str(&mut self, ty: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v);
    }

    /// Opens a nested attribute; NLA_F_NESTED is set because strict kernel validation
    /// requires it on newer attributes and every policy accepts it.
    pub fn begin_nested(&mut self, ty: u16) -> Nest {
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        Nest(at)
    }

    pub fn end_nested(&mut self, nest: Nest) {
        let len = self.buf.len() - nest.0;
        match u16::try_from(len) {
            Ok(len16) => self.buf[nest.0..nest.0 + 2].copy_from_slice(&len16.to_ne_bytes()),
            Err(_) => {
                self.overflow = Some(format!("nested attribute is {len} bytes, more than 65535"))
            }
        }
    }

    /// The finished message with `nlmsg_len` filled in (seq still 0).
    pub fn finish(mut self) -> Result<Vec<u8>, EncodeError> {
        if let Some(why) = self.overflow {
            return Err(EncodeError(why));
        }
        let len = u32::try_from(self.buf.len())
            .map_err(|_| EncodeError(format!("message is {} bytes", self.buf.len())))?;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        Ok(self.buf)
    }
}

/// Writes the sequence number into a finished message.
pub(crate) fn stamp_seq(msg: &mut [u8], seq: u32) {
    if msg.len() >= NLMSG_HDRLEN {
        msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    }
}

/// One message of a datagram from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NlMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    pub payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Splits a datagram into its messages, checking every length against the buffer.
pub(crate) fn parse_messages(buf: &[u8]) -> Result<Vec<NlMsg<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < NLMSG_HDRLEN {
            return Err(DecodeError::new(format!(
                "{} trailing bytes, too short for a message header",
                rest.len()
            )));
        }
        let len = u32_at(rest, 0).unwrap_or(0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(DecodeError::new(format!(
                "message length {len} outside 16..={}",
                rest.len()
            )));
        }
        out.push(NlMsg {
            ty: u16_at(rest, 4).unwrap_or(0),
            flags: u16_at(rest, 6).unwrap_or(0),
            seq: u32_at(rest, 8).unwrap_or(0),
            pid: u32_at(rest, 12).unwrap_or(0),
            payload: &rest[NLMSG_HDRLEN..len],
        });
        at += align(len).min(rest.len());
    }
    Ok(out)
}

/// The errno of an `NLMSG_ERROR` (0 = acknowledgement) or `NLMSG_DONE` payload
/// (`struct nlmsgerr` starts with `int error`; a dump's DONE carries the dump's result).
pub(crate) fn error_code(payload: &[u8]) -> Result<i32, DecodeError> {
    let b: [u8; 4] = payload
        .get(0..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| DecodeError::new("error message shorter than 4 bytes"))?;
    Ok(i32::from_ne_bytes(b))
}

/// One attribute: its type with the flag bits removed, and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attr<'a> {
    pub ty: u16,
    pub data: &'a [u8],
}

/// Splits a run of attributes, checking every length; trailing padding is allowed.
pub(crate) fn parse_attrs(buf: &[u8]) -> Result<Vec<Attr<'_>>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < NLA_HDRLEN {
            if rest.iter().all(|b| *b == 0) {
                break;
            }
            return Err(DecodeError::new(format!(
                "{} stray bytes after attributes",
                rest.len()
            )));
        }
        let len = u16_at(rest, 0).unwrap_or(0) as usize;
        let ty = u16_at(rest, 2).unwrap_or(0) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(DecodeError::new(format!(
                "attribute {ty} length {len} outside 4..={}",
                rest.len()
            )));
        }
        out.push(Attr {
            ty,
            data: &rest[NLA_HDRLEN..len],
        });
        at += align(len).min(rest.len());
    }
    Ok(out)
}

impl<'a> Attr<'a> {
    fn exact<const N: usize>(&self) -> Result<[u8; N], DecodeError> {
        self.data.try_into().map_err(|_| {
            DecodeError::new(format!(
                "attribute {} has {} bytes, expected {N}",
                self.ty,
                self.data.len()
            ))
        })
    }

    pub fn u8(&self) -> Result<u8, DecodeError> {
        Ok(self.exact::<1>()?[0])
    }

    pub fn u16(&self) -> Result<u16, DecodeError> {
        Ok(u16::from_ne_bytes(self.exact()?))
    }

    pub fn u32(&self) -> Result<u32, DecodeError> {
        Ok(u32::from_ne_bytes(self.exact()?))
    }

    pub fn u64(&self) -> Result<u64, DecodeError> {
        Ok(u64::from_ne_bytes(self.exact()?))
    }

    pub fn key(&self) -> Result<[u8; 32], DecodeError> {
        self.exact()
    }

    /// A string attribute, up to its first NUL.
    pub fn string(&self) -> Result<String, DecodeError> {
        let end = self
            .data
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.data.len());
        String::from_utf8(self.data[..end].to_vec())
            .map_err(|_| DecodeError::new(format!("attribute {} is not UTF-8", self.ty)))
    }

    pub fn nested(&self) -> Result<Vec<Attr<'a>>, DecodeError> {
        parse_attrs(self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_attrs_layout() {
        let mut b = MsgBuilder::new(18, NLM_F_REQUEST | NLM_F_ACK);
        b.header(&[1, 2, 3]);
        b.attr_str(3, "lo");
        let n = b.begin_nested(18);
        b.attr_u32(4, 1420);
        b.end_nested(n);
        let mut m = b.finish().unwrap();
        stamp_seq(&mut m, 7);
        let mut want = Vec::new();
        // nlmsghdr: len = 16 hdr + 4 (3 bytes padded) + 8 ("lo\0" + 4 hdr, padded) + 12 nest
        want.extend_from_slice(&40u32.to_ne_bytes());
        want.extend_from_slice(&18u16.to_ne_bytes());
        want.extend_from_slice(&5u16.to_ne_bytes());
        want.extend_from_slice(&7u32.to_ne_bytes());
        want.extend_from_slice(&0u32.to_ne_bytes());
        want.extend_from_slice(&[1, 2, 3, 0]);
        want.extend_from_slice(&7u16.to_ne_bytes());
        want.extend_from_slice(&3u16.to_ne_bytes());
        want.extend_from_slice(b"lo\0\0");
        want.extend_from_slice(&12u16.to_ne_bytes());
        want.extend_from_slice(&(18u16 | 0x8000).to_ne_bytes());
        want.extend_from_slice(&8u16.to_ne_bytes());
        want.extend_from_slice(&4u16.to_ne_bytes());
        want.extend_from_slice(&1420u32.to_ne_bytes());
        assert_eq!(m, want);
    }

    #[test]
    fn parse_round_trip_and_flags_stripped() {
        let mut b = MsgBuilder::new(16, 0);
        b.header(&[0; 16]);
        b.attr_u8(1, 9);
        let n = b.begin_nested(2);
        b.attr_u16(1, 0x1234);
        b.attr(2, &[]);
        b.end_nested(n);
        let m = b.finish().unwrap();
        let msgs = parse_messages(&m).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, 16);
        let attrs = parse_attrs(&msgs[0].payload[16..]).unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].u8().unwrap(), 9);
        assert_eq!(attrs[1].ty, 2, "NLA_F_NESTED is masked off");
        let inner = attrs[1].nested().unwrap();
        assert_eq!(inner[0].u16().unwrap(), 0x1234);
        assert_eq!(inner[1].data, &[] as &[u8]);
    }

    #[test]
    fn two_messages_in_one_datagram() {
        let mut d = MsgBuilder::new(NLMSG_DONE, NLM_F_MULTI);
        d.header(&0i32.to_ne_bytes());
        let mut e = MsgBuilder::new(NLMSG_ERROR, 0);
        e.header(&(-17i32).to_ne_bytes());
        let mut buf = d.finish().unwrap();
        buf.extend(e.finish().unwrap());
        let msgs = parse_messages(&buf).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(error_code(msgs[0].payload).unwrap(), 0);
        assert_eq!(error_code(msgs[1].payload).unwrap(), -17);
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert!(parse_messages(&[1, 2, 3]).is_err());
        let mut m = MsgBuilder::new(16, 0).finish().unwrap();
        m[0..4].copy_from_slice(&100u32.to_ne_bytes());
        assert!(parse_messages(&m).is_err());
        m[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse_messages(&m).is_err());
        // nla_len 2 (< header) and nla_len past the end
        assert!(parse_attrs(&[2, 0, 1, 0]).is_err());
        assert!(parse_attrs(&[9, 0, 1, 0, 0, 0]).is_err());
        assert!(parse_attrs(&[0, 1]).is_err());
        assert!(parse_attrs(&[0, 0]).unwrap().is_empty());
        assert!(error_code(&[0, 0]).is_err());
        let a = Attr {
            ty: 1,
            data: &[1, 2, 3],
        };
        assert!(a.u32().is_err() && a.u16().is_err() && a.u8().is_err() && a.key().is_err());
    }

    #[test]
    fn oversized_attribute_is_an_encode_error() {
        let mut b = MsgBuilder::new(16, 0);
        b.attr(1, &vec![0; 70_000]);
        assert!(b.finish().is_err());
        let mut b = MsgBuilder::new(16, 0);
        let n = b.begin_nested(1);
        for _ in 0..20 {
            b.attr(2, &[0; 4000]);
        }
        b.end_nested(n);
        assert!(b.finish().is_err());
    }
}
