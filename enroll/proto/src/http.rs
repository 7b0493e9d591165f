//! The little HTTP/1.1 kiln's clients speak: write one request, read one answer.
//!
//! Two clients in the agent use it: the pinned TLS client of kiln-enroll ([`crate::client`])
//! and the plain-HTTP client of the cloud metadata services (EC2, GCE, Azure, Oracle).
//! Both send one request per connection with `Connection: close`, and the caller's socket
//! carries the timeouts.
//!
//! The answer comes from a server that may be hostile (before the pin is checked nothing
//! is sent, but a pinned server can still be buggy; anything on the link-local network can
//! answer for a metadata service), so the reader bounds everything: [`MAX_HEAD`] bytes of
//! status line and headers, [`MAX_HEADERS`] headers, a caller-given body limit, and it
//! names what was wrong in every error.

use std::fmt;
use std::io::{self, BufRead, Read, Write};

/// Most bytes of status line plus headers (and, separately, of chunked trailers). Answers
/// of kiln-enroll and of the metadata services have a few short headers; 16 KiB is what
/// common servers allow, so a larger head means something is wrong.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines in an answer (and trailer lines after a chunked body).
pub const MAX_HEADERS: usize = 100;

/// Why an answer could not be read.
#[derive(Debug)]
pub enum HttpError {
    /// Reading failed, or the connection closed before the answer was complete.
    Io(io::Error),
    /// The bytes are not a well-formed HTTP/1.x answer; the text says what is wrong.
    Malformed(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Io(e) => write!(f, "{e}"),
            HttpError::Malformed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HttpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HttpError::Io(e) => Some(e),
            HttpError::Malformed(_) => None,
        }
    }
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> HttpError {
        HttpError::Io(e)
    }
}

fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::Malformed(msg.into())
}

fn closed(what: &str) -> HttpError {
    HttpError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the server closed the connection in the middle of {what}"),
    ))
}

/// One request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET`, `POST`, `PUT`, ...
    pub method: &'a str,
    /// Path and query (`/v1/peers?since=3&wait=60`).
    pub path: &'a str,
    /// The `Host` header (`host:port`, IPv6 in brackets).
    pub host: &'a str,
    /// `Authorization` header value, if any.
    pub authorization: Option<&'a str>,
    /// JSON body, if any.
    pub body: Option<&'a [u8]>,
}

/// Headers the writer derives from the request itself; a caller giving them too would
/// send two framings or two hosts.
const WRITER_HEADERS: [&str; 4] = ["host", "connection", "content-length", "transfer-encoding"];

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Refuses text that would end a header line early (header injection).
fn check_header_text(what: &str, text: &str) -> io::Result<()> {
    if text.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(invalid(format!(
            "the request's {what} contains a line break or NUL: {text:?}"
        )));
    }
    Ok(())
}

/// Writes `req` in one go (one TLS record where it fits) with `Connection: close`.
pub fn write_request(w: &mut impl Write, req: &Request<'_>) -> io::Result<()> {
    write_request_with(w, req, &[])
}

/// [`write_request`] with extra header lines (name, value), e.g. a metadata service's
/// `Metadata-Flavor: Google`. A `User-Agent` or `Accept` among them replaces the default
/// (`kiln-enroll-proto/VERSION`, `application/json`); `Host`, `Connection`,
/// `Content-Length` and `Transfer-Encoding` are the writer's and refused.
///
/// `Content-Length` is sent with a body and for every method but GET and HEAD (0 without
/// a body): EC2's token endpoint wants it on its bodiless PUT.
pub fn write_request_with(
    w: &mut impl Write,
    req: &Request<'_>,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    check_header_text("method", req.method)?;
    check_header_text("path", req.path)?;
    check_header_text("host", req.host)?;
    if req.method.contains(' ') || req.path.contains(' ') {
        return Err(invalid(format!(
            "the request line {} {} contains a space",
            req.method, req.path
        )));
    }
    for (name, value) in headers {
        if name.is_empty() || !name.bytes().all(is_token_char) {
            return Err(invalid(format!(
                "the request's header name {name:?} is not an HTTP token"
            )));
        }
        if WRITER_HEADERS.iter().any(|w| name.eq_ignore_ascii_case(w)) {
            return Err(invalid(format!(
                "the request's header {name} is set by the writer, not the caller"
            )));
        }
        check_header_text(&format!("header {name}"), value)?;
    }
    let given = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, req.path, req.host
    );
    if !given("user-agent") {
        out.push_str(concat!(
            "User-Agent: kiln-enroll-proto/",
            env!("CARGO_PKG_VERSION"),
            "\r\n"
        ));
    }
    if !given("accept") {
        out.push_str("Accept: application/json\r\n");
    }
    out.push_str("Connection: close\r\n");
    if let Some(auth) = req.authorization {
        check_header_text("authorization", auth)?;
        out.push_str(&format!("Authorization: {auth}\r\n"));
    }
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = req.body.unwrap_or_default();
    if req.body.is_some() {
        out.push_str("Content-Type: application/json\r\n");
    }
    if req.body.is_some() || !matches!(req.method, "GET" | "HEAD") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    w.write_all(&bytes)?;
    w.flush()
}

/// One answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code (200..=599).
    pub status: u16,
    /// Reason phrase as sent (may be empty).
    pub reason: String,
    /// Headers in order, names as sent, values trimmed; look them up with
    /// [`Response::header`], since header names are case-insensitive.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the first header named `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Text of a line for an error message: at most 80 characters, escaped.
fn show(line: &[u8]) -> String {
    let cut = &line[..line.len().min(80)];
    let text = String::from_utf8_lossy(cut);
    let more = if line.len() > 80 { "..." } else { "" };
    format!("{text:?}{more}")
}

/// Reads one CRLF-terminated line of at most `max` bytes (CRLF included), without CRLF.
fn read_line(r: &mut impl BufRead, max: usize, what: &str) -> Result<Vec<u8>, HttpError> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::Io(e)),
        };
        if buf.is_empty() {
            return Err(closed(what));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            return Err(bad(format!("{what} is longer than {max} bytes")));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            break;
        }
    }
    line.pop(); // the LF
    if line.pop() != Some(b'\r') {
        return Err(bad(format!(
            "{what} {} ends in a bare LF instead of CRLF",
            show(&line)
        )));
    }
    Ok(line)
}

/// Whether `b` may appear in a header name (RFC 9110's `tchar`).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads header (or trailer) lines up to the empty line, within `budget` bytes.
fn read_fields(
    r: &mut impl BufRead,
    budget: &mut usize,
    what: &str,
) -> Result<Vec<(String, String)>, HttpError> {
    let mut fields = Vec::new();
    loop {
        if *budget == 0 {
            return Err(bad(format!("the {what} are longer than {MAX_HEAD} bytes")));
        }
        let line =
            read_line(r, *budget, &format!("a line of the {what}")).map_err(|e| match e {
                HttpError::Malformed(m) if m.contains("longer than") => {
                    bad(format!("the {what} are longer than {MAX_HEAD} bytes"))
                }
                other => other,
            })?;
        *budget -= line.len() + 2;
        if line.is_empty() {
            return Ok(fields);
        }
        if fields.len() == MAX_HEADERS {
            return Err(bad(format!("more than {MAX_HEADERS} {what}")));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(bad(format!(
                "folded line {} in the {what} (obsolete line folding is not accepted)",
                show(&line)
            )));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| bad(format!("line {} in the {what} has no colon", show(&line))))?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
            return Err(bad(format!(
                "line {} in the {what} has an invalid field name",
                show(&line)
            )));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(bad(format!(
                "field {} has a control character in its value",
                show(name)
            )));
        }
        let value = String::from_utf8_lossy(value)
            .trim_matches([' ', '\t'])
            .to_string();
        let name = String::from_utf8_lossy(name).into_owned();
        fields.push((name, value));
    }
}

/// Parses `HTTP/1.x SP 3DIGIT [SP reason]`.
fn parse_status_line(line: &[u8]) -> Result<(u16, String), HttpError> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or_else(|| {
            bad(format!(
                "status line {} does not start with HTTP/1.1 or HTTP/1.0",
                show(line)
            ))
        })?;
    let (code, reason) = match rest.get(3) {
        None => (rest, &[][..]),
        Some(b' ') => (&rest[..3], &rest[4..]),
        Some(_) => (rest, &[][..]),
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(bad(format!(
            "status line {} has no 3-digit status code",
            show(line)
        )));
    }
    let status = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(200..=599).contains(&status) {
        return Err(bad(format!(
            "status {status} in {} is not a final answer (expected 200..599)",
            show(line)
        )));
    }
    if reason
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err(bad(format!(
            "status line {} has a control character",
            show(line)
        )));
    }
    Ok((status, String::from_utf8_lossy(reason).into_owned()))
}

/// How the body is delimited.
enum Framing {
    None,
    Length(u64),
    Chunked,
    ToEof,
}

fn framing(status: u16, headers: &[(String, String)]) -> Result<Framing, HttpError> {
    let all = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let (te, cl) = (all("transfer-encoding"), all("content-length"));
    if status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    if !te.is_empty() {
        if !cl.is_empty() {
            return Err(bad(
                "the answer has both Transfer-Encoding and Content-Length",
            ));
        }
        if te.len() != 1 || !te[0].eq_ignore_ascii_case("chunked") {
            return Err(bad(format!(
                "Transfer-Encoding {:?} is not supported (only a single `chunked`)",
                te.join(", ")
            )));
        }
        return Ok(Framing::Chunked);
    }
    let Some(first) = cl.first() else {
        return Ok(Framing::ToEof);
    };
    if cl.iter().any(|v| v != first) {
        return Err(bad(format!(
            "conflicting Content-Length headers: {}",
            cl.join(", ")
        )));
    }
    if first.is_empty() || first.len() > 19 || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!(
            "Content-Length {first:?} is not a decimal number"
        )));
    }
    let n = first
        .parse::<u64>()
        .map_err(|e| bad(format!("Content-Length {first:?}: {e}")))?;
    Ok(Framing::Length(n))
}

fn too_big(len: u64, max: usize) -> HttpError {
    bad(format!(
        "the answer's body has {len} bytes or more, more than the {max} this client reads"
    ))
}

/// Reads exactly `n` bytes onto `body`.
fn read_exact_onto(
    r: &mut impl BufRead,
    body: &mut Vec<u8>,
    n: usize,
    what: &str,
) -> Result<(), HttpError> {
    let start = body.len();
    let got = r.take(n as u64).read_to_end(body)?;
    if got < n {
        body.truncate(start);
        return Err(closed(what));
    }
    Ok(())
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let size = match line.iter().position(|&b| b == b';') {
        Some(i) => &line[..i],
        None => line,
    };
    let size = size.strip_suffix(b" ").unwrap_or(size);
    if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad(format!(
            "chunk size line {} is not a hex number of 1 to 15 digits",
            show(line)
        )));
    }
    let text = String::from_utf8_lossy(size);
    u64::from_str_radix(&text, 16).map_err(|e| bad(format!("chunk size {text:?}: {e}")))
}

fn read_chunked(r: &mut impl BufRead, max_body: usize) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r, 1024, "a chunk size line")?;
        let size = parse_chunk_size(&line)?;
        if size == 0 {
            break;
        }
        let total = (body.len() as u64).saturating_add(size);
        if total > max_body as u64 {
            return Err(too_big(total, max_body));
        }
        // total <= max_body, so size fits usize.
        read_exact_onto(r, &mut body, size as usize, "a chunk")?;
        let end = read_line(r, 2, "the CRLF after a chunk").map_err(|e| match e {
            HttpError::Malformed(_) => bad("a chunk is longer than its size line says"),
            other => other,
        })?;
        if !end.is_empty() {
            return Err(bad("a chunk is longer than its size line says"));
        }
    }
    let mut budget = MAX_HEAD;
    read_fields(r, &mut budget, "trailer fields")?;
    Ok(body)
}

/// Reads one answer: status line, headers, and a body delimited by Content-Length,
/// chunked encoding, or the end of the connection, at most `max_body` bytes.
pub fn read_response(r: &mut impl BufRead, max_body: usize) -> Result<Response, HttpError> {
    let mut budget = MAX_HEAD;
    let status_line = read_line(r, budget, "the status line")?;
    budget -= status_line.len() + 2;
    let (status, reason) = parse_status_line(&status_line)?;
    let headers = read_fields(r, &mut budget, "header fields")?;
    let body = match framing(status, &headers)? {
        Framing::None => Vec::new(),
        Framing::Length(n) => {
            if n > max_body as u64 {
                return Err(too_big(n, max_body));
            }
            // Grow as bytes arrive: a claimed length alone allocates little.
            let mut body = Vec::with_capacity((n as usize).min(64 * 1024));
            read_exact_onto(r, &mut body, n as usize, "the body")?;
            body
        }
        Framing::Chunked => read_chunked(r, max_body)?,
        Framing::ToEof => {
            let mut body = Vec::new();
            let limit = max_body as u64 + 1;
            r.take(limit).read_to_end(&mut body)?;
            if body.len() > max_body {
                return Err(too_big(body.len() as u64, max_body));
            }
            body
        }
    };
    Ok(Response {
        status,
        reason,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Response, HttpError> {
        read_response(&mut io::BufReader::new(bytes), 1024)
    }

    fn err(bytes: &[u8]) -> String {
        parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn reads_content_length_chunked_and_eof_bodies() {
        let r =
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\nhelloEXTRA").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), &r.body[..]),
            (200, "OK", &b"hello"[..])
        );
        assert_eq!(r.header("x-a"), Some("b"));
        let r = parse(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abc0123456789");
        let r = parse(b"HTTP/1.0 404 \r\n\r\nto the end").unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"to the end"[..]));
        let r = parse(b"HTTP/1.1 204\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
    }

    #[test]
    fn names_each_malformation() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "in the middle of the status line"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "does not start with HTTP/1.1"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "no 3-digit status code"),
            (b"HTTP/1.1 100 Continue\r\n\r\n", "not a final answer"),
            (b"HTTP/1.1 200 OK\n\n", "bare LF"),
            (b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", "has no colon"),
            (
                b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
                "invalid field name",
            ),
            (b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", "folded line"),
            (b"HTTP/1.1 200 OK\r\nA: b\x01\r\n\r\n", "control character"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
                "more than the 1024",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "not a decimal number",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "in the middle of the body",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "not supported",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
                "both",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "not a hex number",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
                "not a hex number",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n",
                "more than the 1024",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "longer than its size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                "middle of a chunk size",
            ),
        ];
        for (bytes, want) in cases {
            let e = err(bytes);
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(bytes));
        }
        let huge = format!("HTTP/1.1 200 OK\r\nA: {}\r\n\r\n", "x".repeat(MAX_HEAD));
        assert!(err(huge.as_bytes()).contains(&format!("longer than {MAX_HEAD} bytes")));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(err(many.as_bytes()).contains("more than 100 header"));
        let eof_big = format!("HTTP/1.1 200 OK\r\n\r\n{}", "x".repeat(1025));
        assert!(err(eof_big.as_bytes()).contains("more than the 1024"));
    }

    #[test]
    fn writes_a_request_and_refuses_injection() {
        let mut out = Vec::new();
        let req = Request {
            method: "POST",
            path: "/v1/enroll",
            host: "[::1]:8443",
            authorization: Some("Bearer a.b"),
            body: Some(b"{}"),
        };
        write_request(&mut out, &req).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /v1/enroll HTTP/1.1\r\nHost: [::1]:8443\r\n"));
        assert!(text.contains("Authorization: Bearer a.b\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
        let bad = Request {
            authorization: Some("Bearer x\r\nEvil: 1"),
            ..req
        };
        let e = write_request(&mut Vec::new(), &bad).unwrap_err();
        assert!(
            e.to_string()
                .contains("authorization contains a line break"),
            "{e}"
        );
    }

    #[test]
    fn header_names_match_in_any_case() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nMetadata-Flavor: Google\r\ncontent-LENGTH: 2\r\n\r\nokEXTRA",
        )
        .unwrap();
        assert_eq!(r.body, b"ok");
        assert_eq!(r.headers[0].0, "Metadata-Flavor");
        for name in ["Metadata-Flavor", "metadata-flavor", "METADATA-FLAVOR"] {
            assert_eq!(r.header(name), Some("Google"), "{name}");
        }
        let e = err(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nCONTENT-LENGTH: 1\r\n\r\n");
        assert!(e.contains("both"), "{e}");
    }

    /// What the cloud metadata services send (GCE answers chunked, EC2 with a length,
    /// some close the connection to end the body).
    #[test]
    fn reads_metadata_service_answers() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n6\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nTrailer: x\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"Wikipedia in \r\n\r\nchunks.");
        let r = parse(b"HTTP/1.0 404 Not Found\r\n\r\nnothing here").unwrap();
        assert_eq!((r.status, r.reason.as_str()), (404, "Not Found"));
        assert_eq!(r.body, b"nothing here");
        let r = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
        // A head that fits 16 KiB but not the former 8 KiB.
        let big = format!(
            "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
            "a".repeat(12_000)
        );
        assert_eq!(
            parse(big.as_bytes()).unwrap().header("x-big").map(str::len),
            Some(12_000)
        );
        // A connection that ends early is an I/O error (worth a retry), not a malformation.
        for cut in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        ] {
            assert!(matches!(parse(cut), Err(HttpError::Io(_))), "{cut:?}");
        }
    }

    fn written(req: &Request<'_>, headers: &[(&str, &str)]) -> String {
        let mut out = Vec::new();
        write_request_with(&mut out, req, headers).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_extra_headers_and_a_bodiless_put() {
        let put = Request {
            method: "PUT",
            path: "/latest/api/token",
            host: "169.254.169.254",
            authorization: None,
            body: None,
        };
        let text = written(
            &put,
            &[
                ("User-Agent", "kiln-agent/1"),
                ("accept", "*/*"),
                ("X-aws-ec2-metadata-token-ttl-seconds", "21600"),
            ],
        );
        assert_eq!(
            text,
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\
             User-Agent: kiln-agent/1\r\naccept: */*\r\n\
             X-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n"
        );
        let get = Request {
            method: "GET",
            ..put
        };
        let text = written(&get, &[("Metadata-Flavor", "Google")]);
        assert!(
            text.contains("\r\nUser-Agent: kiln-enroll-proto/"),
            "{text}"
        );
        assert!(text.contains("\r\nAccept: application/json\r\n"), "{text}");
        assert!(
            text.ends_with("\r\nMetadata-Flavor: Google\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("Content-Length"), "{text}");
        let refused: &[(&str, &str, &str)] = &[
            (
                "X-Token",
                "a\r\nEvil: 1",
                "header X-Token contains a line break",
            ),
            ("Bad Name", "x", "not an HTTP token"),
            ("", "x", "not an HTTP token"),
            ("Evil:\r\nX", "x", "not an HTTP token"),
            ("content-length", "5", "set by the writer"),
            ("Host", "elsewhere", "set by the writer"),
        ];
        for (name, value, want) in refused {
            let e = write_request_with(&mut Vec::new(), &get, &[(name, value)]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(want), "{name:?}: {e}");
        }
    }
}
