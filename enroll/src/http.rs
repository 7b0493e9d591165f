//! Just enough HTTP/1.1 for the API: one request per connection, read with hard limits
//! (head size, header count, body size checked against Content-Length before a byte of
//! the body is read), and JSON answers that always close the connection.
//!
//! The parser is strict on purpose: its only clients are kiln's own agent, the tests and
//! an operator's curl, so anything unusual (chunked uploads, folded headers, a body
//! length given twice) is refused with a message rather than guessed at.

use std::io::{self, Read, Write};

use kiln_enroll_proto::api::{ErrorBody, ErrorCode, MAX_REQUEST_BODY};
use serde::Serialize;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 100;
/// Longest request target.
const MAX_TARGET: usize = 2048;

/// Limits for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of request line plus headers.
    pub max_head: usize,
    /// Number of headers.
    pub max_headers: usize,
    /// Bytes of body.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: MAX_HEAD,
            max_headers: MAX_HEADERS,
            max_body: MAX_REQUEST_BODY,
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path without the query (`/v1/peers`).
    pub path: String,
    /// Query parameters in order (`since=3&wait=30`); names are unique.
    pub query: Vec<(String, String)>,
    /// Headers in order, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body (exactly Content-Length bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header of that (lowercase) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query parameter of that name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read. [`HttpError::status`] says what to answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before a whole request arrived (nothing to answer).
    #[error("the client closed the connection after {0} bytes, before the request was complete")]
    Closed(usize),
    /// The client was too slow.
    #[error("the request did not arrive in time (send the whole request at once)")]
    Timeout,
    /// Reading failed.
    #[error("reading the request: {0}")]
    Io(io::Error),
    /// Not well-formed HTTP/1.1.
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    /// Request line and headers are too long or too many.
    #[error("the request head is larger than {max} bytes or has more than {headers} headers")]
    HeadTooLarge {
        /// Byte limit.
        max: usize,
        /// Header count limit.
        headers: usize,
    },
    /// A body without Content-Length.
    #[error("{0}: send the body with a Content-Length header")]
    LengthRequired(String),
    /// The announced body is too large (nothing of it was read).
    #[error("the body has {length} bytes; the server reads at most {max}")]
    BodyTooLarge {
        /// Announced length.
        length: u64,
        /// The limit.
        max: usize,
    },
}

impl HttpError {
    /// The status to answer with, or None when the connection is gone.
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Closed(_) | HttpError::Io(_) => None,
            HttpError::Timeout => Some(408),
            HttpError::Malformed(_) => Some(400),
            HttpError::HeadTooLarge { .. } => Some(431),
            HttpError::LengthRequired(_) => Some(411),
            HttpError::BodyTooLarge { .. } => Some(413),
        }
    }

    /// The error answer, when there is someone to answer.
    pub fn response(&self) -> Option<Response> {
        let status = self.status()?;
        let code = match self {
            HttpError::HeadTooLarge { .. } | HttpError::BodyTooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        };
        let mut body = ErrorBody::new(code, self.to_string());
        // A slow request says nothing about the request itself: the same one may pass.
        body.retry = matches!(self, HttpError::Timeout);
        Some(Response::error(status, &body))
    }
}

fn io_error(e: io::Error) -> HttpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io(e),
    }
}

fn malformed(what: impl Into<String>) -> HttpError {
    HttpError::Malformed(what.into())
}

/// Reads one request. Stops reading as soon as the head is complete and the body length
/// is known; an oversized body is refused before any of it is read.
pub fn read_request<R: Read>(r: &mut R, limits: &Limits) -> Result<Request, HttpError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    // Where the search for the blank line resumes: just before the newest bytes, so a
    // terminator split across two reads is found.
    let mut from = 0;
    let head_end = loop {
        if let Some(i) = find(&buf[from..], b"\r\n\r\n") {
            break from + i;
        }
        from = buf.len().saturating_sub(3);
        if buf.len() >= limits.max_head {
            return Err(HttpError::HeadTooLarge {
                max: limits.max_head,
                headers: limits.max_headers,
            });
        }
        let want = chunk.len().min(limits.max_head + 4 - buf.len());
        let n = r.read(&mut chunk[..want]).map_err(io_error)?;
        if n == 0 {
            return Err(HttpError::Closed(buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > limits.max_head {
        return Err(HttpError::HeadTooLarge {
            max: limits.max_head,
            headers: limits.max_headers,
        });
    }
    let mut req = parse_head(&buf[..head_end], limits)?;
    let length = body_length(&req, limits)?;
    let mut body = buf.split_off(head_end + 4);
    // Bytes after the body would be a second request; one request per connection.
    body.truncate(length);
    if body.len() < length {
        let start = body.len();
        body.resize(length, 0);
        let mut got = start;
        while got < length {
            let n = r.read(&mut body[got..]).map_err(io_error)?;
            if n == 0 {
                return Err(HttpError::Closed(head_end + 4 + got));
            }
            got += n;
        }
    }
    req.body = body;
    Ok(req)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn parse_head(head: &[u8], limits: &Limits) -> Result<Request, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| {
        malformed("the request head is not text (is this TLS to a plain port, or binary data?)")
    })?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed(format!(
            "request line {:?} is not METHOD /path HTTP/1.1",
            clip(line)
        )));
    };
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed(format!(
            "method {:?} is not a method name",
            clip(method)
        )));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(malformed(format!(
            "version {:?} is not HTTP/1.1",
            clip(version)
        )));
    }
    if !target.starts_with('/') || target.len() > MAX_TARGET {
        return Err(malformed(format!(
            "request target {:?} is not a path of at most {MAX_TARGET} characters",
            clip(target)
        )));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(malformed(
            "the request target contains control or non-ASCII characters",
        ));
    }
    let (path, query_text) = target.split_once('?').unwrap_or((target, ""));
    let query = parse_query(query_text)?;
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if headers.len() >= limits.max_headers {
            return Err(HttpError::HeadTooLarge {
                max: limits.max_head,
                headers: limits.max_headers,
            });
        }
        if line.starts_with([' ', '\t']) {
            return Err(malformed("folded header lines are not accepted"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("header line {:?} has no ':'", clip(line))))?;
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(malformed(format!(
                "header name {:?} is not a token",
                clip(name)
            )));
        }
        let value = value.trim_matches([' ', '\t']);
        if !value
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return Err(malformed(format!(
                "header {name} contains control or non-ASCII characters"
            )));
        }
        let name = name.to_ascii_lowercase();
        let single = [
            "content-length",
            "transfer-encoding",
            "authorization",
            "host",
        ];
        if single.contains(&name.as_str()) && headers.iter().any(|(n, _)| *n == name) {
            return Err(malformed(format!("header {name} appears more than once")));
        }
        headers.push((name, value.to_string()));
    }
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        query,
        headers,
        body: Vec::new(),
    })
}

fn parse_query(text: &str) -> Result<Vec<(String, String)>, HttpError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if out.iter().any(|(n, _)| n == k) {
            return Err(malformed(format!(
                "query parameter {:?} appears twice",
                clip(k)
            )));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn body_length(req: &Request, limits: &Limits) -> Result<usize, HttpError> {
    let cl = req.header("content-length");
    if let Some(te) = req.header("transfer-encoding") {
        if cl.is_some() {
            return Err(malformed(
                "both Transfer-Encoding and Content-Length are present",
            ));
        }
        if te.to_ascii_lowercase().contains("chunked") {
            return Err(HttpError::LengthRequired(
                "chunked request bodies are not accepted".to_string(),
            ));
        }
        return Err(malformed(format!(
            "Transfer-Encoding {:?} is not supported",
            clip(te)
        )));
    }
    let Some(cl) = cl else {
        if req.method == "POST" || req.method == "PUT" || req.method == "PATCH" {
            return Err(HttpError::LengthRequired(format!(
                "{} without Content-Length",
                req.method
            )));
        }
        return Ok(0);
    };
    if cl.is_empty() || cl.len() > 19 || !cl.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed(format!(
            "Content-Length {:?} is not a number",
            clip(cl)
        )));
    }
    let length: u64 = cl
        .parse()
        .map_err(|_| malformed(format!("Content-Length {cl:?} is not a number")))?;
    match usize::try_from(length) {
        Ok(n) if n <= limits.max_body => Ok(n),
        _ => Err(HttpError::BodyTooLarge {
            length,
            max: limits.max_body,
        }),
    }
}

/// At most 64 characters of client text in a message, so a huge header cannot make a huge
/// log line or answer.
fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(64).collect();
    if text.chars().nth(64).is_some() {
        out.push_str("...");
    }
    out
}

/// An answer: always JSON, always `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u32>,
}

impl Response {
    /// A JSON answer.
    pub fn json<T: Serialize>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                body,
                retry_after: None,
            },
            Err(e) => Response::error(
                500,
                &ErrorBody::new(ErrorCode::Internal, format!("encoding the answer: {e}")),
            ),
        }
    }

    /// An error answer.
    pub fn error(status: u16, body: &ErrorBody) -> Response {
        Response {
            status,
            // An ErrorBody is plain strings and numbers: encoding cannot fail.
            body: serde_json::to_vec(body).unwrap_or_default(),
            retry_after: body.retry_after_secs,
        }
    }

    /// An error answer with the code's own status.
    pub fn from_error(body: &ErrorBody) -> Response {
        Response::error(body.error.status(), body)
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes the answer (head and body in one write, so it leaves in as few TLS records as
/// possible).
pub fn write_response<W: Write>(w: &mut W, resp: &Response) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    if let Some(s) = resp.retry_after {
        out.push_str(&format!("Retry-After: {s}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&resp.body);
    w.write_all(&bytes)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out the input in pieces of varying size, like a network does.
    struct Trickle<'a> {
        data: &'a [u8],
        pos: usize,
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            self.step = self.step % 7 + 1;
            Ok(n)
        }
    }

    fn parse(data: &[u8]) -> Result<Request, HttpError> {
        read_request(
            &mut Trickle {
                data,
                pos: 0,
                step: 3,
            },
            &Limits::default(),
        )
    }

    const GOOD: &[u8] = b"POST /v1/enroll?x=1 HTTP/1.1\r\nHost: kiln-enroll\r\n\
        Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";

    #[test]
    fn parses_a_request() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/v1/enroll");
        assert_eq!(r.param("x"), Some("1"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{\"a\":1}");
        let g =
            parse(b"GET /v1/peers?since=4&wait=30 HTTP/1.1\r\nAuthorization: Bearer a.b\r\n\r\n")
                .unwrap();
        assert_eq!(g.param("since"), Some("4"));
        assert_eq!(g.param("wait"), Some("30"));
        assert_eq!(g.header("authorization"), Some("Bearer a.b"));
        assert!(g.body.is_empty());
    }

    #[test]
    fn refuses_with_the_right_status_and_reason() {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"\x16\x03\x01\xff\x00\r\n\r\n", 400, "not text"),
            (b"GET / HTTP/1.1 x\r\n\r\n", 400, "request line"),
            (b"get / HTTP/1.1\r\n\r\n", 400, "method"),
            (b"GET / HTTP/2\r\n\r\n", 400, "version"),
            (b"GET x HTTP/1.1\r\n\r\n", 400, "request target"),
            (b"GET / HTTP/1.1\r\nA b\r\n\r\n", 400, "has no ':'"),
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400, "folded"),
            (b"GET /?a=1&a=2 HTTP/1.1\r\n\r\n", 400, "appears twice"),
            (b"POST / HTTP/1.1\r\n\r\n", 411, "Content-Length"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
                "chunked",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
                400,
                "more than once",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                400,
                "not a number",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
                413,
                "at most 65536",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
                "not a number",
            ),
        ];
        for (input, status, want) in cases {
            let err = parse(input).unwrap_err();
            let text = err.to_string();
            assert_eq!(err.status(), Some(*status), "{text}");
            assert!(
                text.contains(want),
                "{:?}: {text}",
                String::from_utf8_lossy(input)
            );
        }
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(HttpError::Closed(16))
        ));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(big.as_bytes()).unwrap_err().status(), Some(431));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(many.as_bytes()).unwrap_err().status(), Some(431));
    }

    #[test]
    fn an_oversized_body_is_refused_before_it_is_read() {
        // A reader that fails the test if anything past the head is read.
        struct HeadOnly(Vec<u8>, usize);
        impl Read for HeadOnly {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.1 >= self.0.len() {
                    panic!("the body was read");
                }
                let n = out.len().min(self.0.len() - self.1);
                out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let head = b"POST /v1/enroll HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n".to_vec();
        let err = read_request(&mut HeadOnly(head, 0), &Limits::default()).unwrap_err();
        assert_eq!(err.status(), Some(413));
    }

    #[test]
    fn writes_a_closing_json_answer() {
        let mut out = Vec::new();
        let mut body = ErrorBody::new(ErrorCode::RateLimited, "slow down");
        body.retry_after_secs = Some(12);
        write_response(&mut out, &Response::from_error(&body)).unwrap();
        let text = String::from_utf8(out).unwrap();
        let (head, json) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{head}"
        );
        assert!(head.contains("Connection: close"));
        assert!(head.contains("Retry-After: 12"));
        assert!(head.contains(&format!("Content-Length: {}", json.len())));
        let back: ErrorBody = serde_json::from_str(json).unwrap();
        assert_eq!(back, body);
    }

    /// xorshift64*: a fixed sequence, so a failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn fuzz_mutated_requests_never_panic_and_always_explain() {
        let seeds: [&[u8]; 4] = [
            GOOD,
            b"GET /v1/peers?since=4&wait=30 HTTP/1.1\r\nAuthorization: Bearer n.c\r\n\r\n",
            b"POST /v1/heartbeat HTTP/1.1\r\nContent-Length: 2\r\nAuthorization: Bearer n.c\r\n\r\n{}",
            b"GET / HTTP/1.0\r\n\r\n",
        ];
        let tokens: [&[u8]; 10] = [
            b"\r\n",
            b"\r\n\r\n",
            b":",
            b" ",
            b"Content-Length: 18446744073709551616\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Content-Length: 3\r\n",
            b"\0",
            b"\xff\xfe",
            b"?a=&b&&=",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut outcomes = [0usize; 2];
        for _ in 0..100_000 {
            let mut data = seeds[rng.below(seeds.len())].to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len() + 1);
                match rng.below(5) {
                    0 if !data.is_empty() => {
                        let i = at.min(data.len() - 1);
                        data[i] ^= 1 << rng.below(8);
                    }
                    1 => data.insert(at, rng.next() as u8),
                    2 => {
                        let end = (at + rng.below(16)).min(data.len());
                        data.drain(at..end);
                    }
                    3 => {
                        let t = tokens[rng.below(tokens.len())];
                        data.splice(at..at, t.iter().copied());
                    }
                    _ => {
                        let end = (at + rng.below(32)).min(data.len());
                        let copy = data[at..end].to_vec();
                        data.splice(at..at, copy);
                    }
                }
            }
            match parse(&data) {
                Ok(r) => {
                    outcomes[0] += 1;
                    assert!(r.path.starts_with('/'));
                    assert!(r.body.len() <= MAX_REQUEST_BODY);
                    let cl = r
                        .header("content-length")
                        .map(|v| v.parse::<usize>().unwrap());
                    assert_eq!(cl.unwrap_or(0), r.body.len());
                }
                Err(e) => {
                    outcomes[1] += 1;
                    assert!(!e.to_string().is_empty());
                    if let Some(resp) = e.response() {
                        assert!((400..500).contains(&resp.status), "{e}");
                        serde_json::from_slice::<ErrorBody>(&resp.body).unwrap();
                    }
                }
            }
        }
        // Both paths were exercised, not only the error one.
        assert!(outcomes[0] > 1000 && outcomes[1] > 1000, "{outcomes:?}");
    }
}
