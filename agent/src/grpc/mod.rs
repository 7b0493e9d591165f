//! A minimal gRPC client: one call per connection over HTTP/2 cleartext with prior
//! knowledge (RFC 9113 section 3.3), without an HTTP/2 or protobuf library in the
//! initramfs binary. It is enough for what the agent asks containerd: CRI's `Version`
//! (preflight) and `ListImages`, and the content, image and lease calls of
//! `kiln-agent images import`, each of which sends one request message and reads every
//! response message until the call ends (so a server-streaming or bidirectional method
//! works too when one request is all the client has to say).

pub mod cri;
pub mod hpack;
pub mod proto;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::io::{self, Read, Write};

use hpack::{Decoder, HpackError};

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 section 6).
pub mod frame_type {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// END_STREAM (DATA, HEADERS).
    pub const END_STREAM: u8 = 0x1;
    /// ACK (SETTINGS, PING).
    pub const ACK: u8 = 0x1;
    /// END_HEADERS (HEADERS, CONTINUATION).
    pub const END_HEADERS: u8 = 0x4;
    /// PADDED (DATA, HEADERS).
    pub const PADDED: u8 = 0x8;
    /// PRIORITY (HEADERS).
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS_MAX_FRAME_SIZE's initial value: we never announce a larger one, so a peer
/// must not send larger frames (and we send none larger either).
pub const MAX_FRAME: usize = 16_384;

/// The flow-control window both sides start with (RFC 9113 section 6.9.2): the most a
/// request may carry, since the client sends it before the server could widen it.
pub const INITIAL_WINDOW: usize = 65_535;

/// The receive window the client announces for its stream and the connection, which is
/// also the longest response accepted: the client never reads a response in parts, so it
/// never sends WINDOW_UPDATE after this one, and a server must not send more than this.
/// A CRI ListImages answer for a node's images, the largest response the agent asks
/// for, is tens of kilobytes.
pub const RECEIVE_WINDOW: usize = 1 << 20;

/// SETTINGS identifiers (RFC 9113 section 6.5.2).
pub mod setting {
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
}

/// The one stream the client opens.
const STREAM: u32 = 1;

/// One HTTP/2 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame type.
    pub ty: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier (reserved bit cleared).
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// Reading from or writing to the connection failed.
    Io(&'static str, io::Error),
    /// The server closed the connection before the call was complete.
    Closed,
    /// The server sent GOAWAY.
    GoAway {
        /// The HTTP/2 error code.
        code: u32,
        /// The debug data, if any.
        debug: String,
    },
    /// The server reset the call's stream.
    Reset(u32),
    /// The server broke the HTTP/2 or gRPC framing.
    Protocol(String),
    /// A header block could not be decoded.
    Hpack(HpackError),
    /// The HTTP status was not 200.
    HttpStatus(String),
    /// The call ended with a non-zero grpc-status.
    Grpc {
        /// The gRPC status code.
        code: u32,
        /// grpc-message (percent-decoded).
        message: String,
    },
    /// The response message is not a valid protobuf of the expected type.
    BadMessage(String),
    /// The request message is longer than the client can send without flow control.
    RequestTooLarge(usize),
    /// A unary call's response did not hold exactly one message.
    MessageCount(usize),
}

/// RFC 9113 section 7 error code names.
pub fn h2_error_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "unknown error code",
    }
}

/// gRPC status code names.
pub fn grpc_code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|c| NAMES.get(c))
        .copied()
        .unwrap_or("unknown code")
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(what, e) => write!(f, "{what}: {e}"),
            Self::Closed => write!(f, "the server closed the connection before answering"),
            Self::GoAway { code, debug } => {
                write!(
                    f,
                    "the server sent GOAWAY {} ({code})",
                    h2_error_name(*code)
                )?;
                if !debug.is_empty() {
                    write!(f, ": {debug}")?;
                }
                Ok(())
            }
            Self::Reset(code) => write!(
                f,
                "the server reset the call (RST_STREAM {} ({code}))",
                h2_error_name(*code)
            ),
            Self::Protocol(m) => write!(f, "HTTP/2 protocol error: {m}"),
            Self::Hpack(e) => write!(f, "{e}"),
            Self::HttpStatus(s) => write!(f, "HTTP status {s}, not 200"),
            Self::Grpc { code, message } => {
                write!(f, "grpc-status {code} {}", grpc_code_name(*code))?;
                if !message.is_empty() {
                    write!(f, ": {message}")?;
                }
                Ok(())
            }
            Self::BadMessage(m) => write!(f, "invalid response message: {m}"),
            Self::RequestTooLarge(n) => write!(
                f,
                "a {n}-byte request is longer than the {} bytes one call can send",
                INITIAL_WINDOW - 5
            ),
            Self::MessageCount(n) => {
                write!(f, "the call answered {n} messages, not one")
            }
        }
    }
}

impl std::error::Error for CallError {}

impl From<HpackError> for CallError {
    fn from(e: HpackError) -> Self {
        Self::Hpack(e)
    }
}

/// Serialises one frame.
pub fn encode_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame; a clean end of the connection before its header is `Ok(None)`.
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, CallError> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(CallError::Io("reading a frame", e)),
    }
    if head.starts_with(b"HTTP/1.") {
        return Err(CallError::Protocol(
            "the server answered in HTTP/1.x, not HTTP/2".into(),
        ));
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    if len > MAX_FRAME {
        return Err(CallError::Protocol(format!(
            "a {len}-byte frame exceeds the maximum frame size {MAX_FRAME}"
        )));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            CallError::Closed
        } else {
            CallError::Io("reading a frame", e)
        }
    })?;
    Ok(Some(Frame {
        ty: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }))
}

/// The payload of a DATA or HEADERS frame without its padding (and, for HEADERS, the
/// priority fields).
pub fn frame_content(frame: &Frame) -> Result<&[u8], CallError> {
    let mut p = &frame.payload[..];
    let mut pad = 0;
    if frame.flags & flag::PADDED != 0 {
        let (&n, rest) = p
            .split_first()
            .ok_or_else(|| CallError::Protocol("padded frame without a pad length".into()))?;
        pad = usize::from(n);
        p = rest;
    }
    if frame.ty == frame_type::HEADERS && frame.flags & flag::PRIORITY != 0 {
        p = p
            .get(5..)
            .ok_or_else(|| CallError::Protocol("HEADERS too short for its priority".into()))?;
    }
    let end = p
        .len()
        .checked_sub(pad)
        .ok_or_else(|| CallError::Protocol("padding longer than the frame".into()))?;
    Ok(&p[..end])
}

fn u32_at(p: &[u8], at: usize) -> Option<u32> {
    p.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Makes one unary gRPC call on a fresh connection: sends `request` (a serialised
/// protobuf message) to `path` with the gRPC metadata `metadata` (lowercase names) and
/// returns the one response message.
pub fn unary_call<S: Read + Write>(
    conn: &mut S,
    path: &str,
    metadata: &[(&str, &str)],
    request: &[u8],
) -> Result<Vec<u8>, CallError> {
    let mut messages = call(conn, path, metadata, request)?;
    match messages.len() {
        1 => Ok(messages.remove(0)),
        n => Err(CallError::MessageCount(n)),
    }
}

/// The bytes a client sends for one call: the connection preface, its SETTINGS (no
/// push, [`RECEIVE_WINDOW`] for the stream), the connection's WINDOW_UPDATE to the same
/// size, and the stream: HEADERS, then the length-prefixed message in DATA frames of at
/// most [`MAX_FRAME`] bytes, the last with END_STREAM.
pub fn request_bytes(
    path: &str,
    metadata: &[(&str, &str)],
    request: &[u8],
) -> Result<Vec<u8>, CallError> {
    if request.len() + 5 > INITIAL_WINDOW {
        return Err(CallError::RequestTooLarge(request.len()));
    }
    let mut out = PREFACE.to_vec();
    let mut settings = Vec::new();
    for (id, value) in [
        // We could not handle a pushed stream.
        (setting::ENABLE_PUSH, 0u32),
        (setting::INITIAL_WINDOW_SIZE, RECEIVE_WINDOW as u32),
    ] {
        settings.extend_from_slice(&id.to_be_bytes());
        settings.extend_from_slice(&value.to_be_bytes());
    }
    out.extend(encode_frame(frame_type::SETTINGS, 0, 0, &settings));
    // The connection's window is not a setting: it grows by WINDOW_UPDATE only.
    let grow = (RECEIVE_WINDOW - INITIAL_WINDOW) as u32;
    out.extend(encode_frame(
        frame_type::WINDOW_UPDATE,
        0,
        0,
        &grow.to_be_bytes(),
    ));
    let mut fields = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ];
    fields.extend_from_slice(metadata);
    let block = hpack::encode_literal_block(&fields);
    out.extend(encode_frame(
        frame_type::HEADERS,
        flag::END_HEADERS,
        STREAM,
        &block,
    ));
    // Length-prefixed message: not compressed, 4-byte big-endian length.
    let mut msg = vec![0u8];
    msg.extend_from_slice(&(request.len() as u32).to_be_bytes());
    msg.extend_from_slice(request);
    let mut chunks = msg.chunks(MAX_FRAME).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last { flag::END_STREAM } else { 0 };
        out.extend(encode_frame(frame_type::DATA, flags, STREAM, chunk));
    }
    Ok(out)
}

/// Makes one gRPC call on a fresh connection: sends `request` to `path` with the gRPC
/// metadata `metadata`, ends the request stream, and returns every response message
/// (none, one, or a stream's several) once the server ends the call with grpc-status 0.
pub fn call<S: Read + Write>(
    conn: &mut S,
    path: &str,
    metadata: &[(&str, &str)],
    request: &[u8],
) -> Result<Vec<Vec<u8>>, CallError> {
    let out = request_bytes(path, metadata, request)?;
    conn.write_all(&out)
        .and_then(|()| conn.flush())
        .map_err(|e| CallError::Io("sending the request", e))?;

    let mut decoder = Decoder::default();
    let mut blocks: Vec<Vec<(String, String)>> = Vec::new();
    // A header block still waiting for its CONTINUATION frames, and its END_STREAM flag.
    let mut pending: Option<(Vec<u8>, bool)> = None;
    let mut body = Vec::new();
    let mut ended = false;
    while !ended {
        let frame = read_frame(conn)?.ok_or(CallError::Closed)?;
        if let Some((block, end_stream)) = pending.as_mut() {
            if frame.ty != frame_type::CONTINUATION || frame.stream != STREAM {
                return Err(CallError::Protocol(format!(
                    "frame type {} inside a header block",
                    frame.ty
                )));
            }
            block.extend_from_slice(&frame.payload);
            if frame.flags & flag::END_HEADERS != 0 {
                ended = *end_stream;
                let fields = decoder.decode(block)?;
                blocks.push(fields);
                pending = None;
            }
            continue;
        }
        match frame.ty {
            frame_type::SETTINGS if frame.flags & flag::ACK == 0 => {
                conn.write_all(&encode_frame(frame_type::SETTINGS, flag::ACK, 0, &[]))
                    .map_err(|e| CallError::Io("acknowledging SETTINGS", e))?;
            }
            frame_type::PING if frame.flags & flag::ACK == 0 => {
                conn.write_all(&encode_frame(
                    frame_type::PING,
                    flag::ACK,
                    0,
                    &frame.payload,
                ))
                .map_err(|e| CallError::Io("answering PING", e))?;
            }
            frame_type::GOAWAY => {
                let code = u32_at(&frame.payload, 4).unwrap_or(0);
                let debug = frame
                    .payload
                    .get(8..)
                    .map(|d| String::from_utf8_lossy(d).into_owned())
                    .unwrap_or_default();
                return Err(CallError::GoAway { code, debug });
            }
            frame_type::RST_STREAM if frame.stream == STREAM => {
                return Err(CallError::Reset(u32_at(&frame.payload, 0).unwrap_or(0)));
            }
            frame_type::HEADERS if frame.stream == STREAM => {
                let content = frame_content(&frame)?.to_vec();
                let end_stream = frame.flags & flag::END_STREAM != 0;
                if frame.flags & flag::END_HEADERS != 0 {
                    blocks.push(decoder.decode(&content)?);
                    ended = end_stream;
                } else {
                    pending = Some((content, end_stream));
                }
            }
            frame_type::DATA if frame.stream == STREAM => {
                if blocks.is_empty() {
                    return Err(CallError::Protocol(
                        "DATA before the response headers".into(),
                    ));
                }
                body.extend_from_slice(frame_content(&frame)?);
                if body.len() > RECEIVE_WINDOW {
                    return Err(CallError::Protocol(format!(
                        "response longer than {RECEIVE_WINDOW} bytes"
                    )));
                }
                ended = frame.flags & flag::END_STREAM != 0;
            }
            // The request fits the initial windows, so the server's window updates do
            // not matter.
            frame_type::WINDOW_UPDATE => {}
            // Acknowledgements, priority and frames of other streams do not matter for one
            // call.
            _ => {}
        }
    }

    let headers = blocks
        .first()
        .ok_or_else(|| CallError::Protocol("the stream ended without headers".into()))?;
    match header(headers, ":status") {
        Some("200") => {}
        Some(s) => return Err(CallError::HttpStatus(s.to_string())),
        None => return Err(CallError::Protocol("response without :status".into())),
    }
    // Trailers-only responses carry grpc-status in the one header block.
    let trailers = blocks.last().unwrap_or(headers);
    let status = header(trailers, "grpc-status")
        .ok_or_else(|| CallError::Protocol("the call ended without grpc-status".into()))?;
    let code: u32 = status
        .parse()
        .map_err(|_| CallError::Protocol(format!("grpc-status {status:?} is not a number")))?;
    if code != 0 {
        return Err(CallError::Grpc {
            code,
            message: percent_decode(header(trailers, "grpc-message").unwrap_or("")),
        });
    }
    split_messages(&body)
}

/// The length-prefixed messages of a response body.
fn split_messages(mut body: &[u8]) -> Result<Vec<Vec<u8>>, CallError> {
    let mut messages = Vec::new();
    while !body.is_empty() {
        let (prefix, rest) = body.split_at_checked(5).ok_or_else(|| {
            CallError::BadMessage(format!("{} bytes, no gRPC message", body.len()))
        })?;
        if prefix[0] != 0 {
            return Err(CallError::BadMessage(
                "compressed, but no compression was offered".into(),
            ));
        }
        let len = u32_at(prefix, 1).unwrap_or(0) as usize;
        let message = rest.get(..len).ok_or_else(|| {
            CallError::BadMessage(format!(
                "the prefix says {len} bytes, the body has {}",
                rest.len()
            ))
        })?;
        messages.push(message.to_vec());
        body = &rest[len..];
    }
    Ok(messages)
}
