//! A minimal HTTP/1.1 client for the link-local metadata services.
//!
//! Metadata servers speak plain HTTP on 169.254.169.254:80 and answer small documents, so a
//! full client (TLS, redirects, keep-alive, compression) would only add size to the static
//! agent. Every request is sent with `Connection: close`; the response body is delimited by
//! `Content-Length`, by `Transfer-Encoding: chunked`, or by the end of the connection.
//! Header and body sizes are capped so a misbehaving server cannot exhaust memory.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Largest response header block accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Largest response body accepted (user-data is capped at 16 KiB on EC2 and 256 KiB on
/// GCE; 1 MiB leaves room without letting a broken server fill memory).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One request to a metadata server.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET` or `PUT`.
    pub method: &'a str,
    /// Path and query, starting with `/`.
    pub path: &'a str,
    /// Extra header lines (name, value).
    pub headers: &'a [(&'a str, &'a str)],
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header lines as received (names keep their case; look them up with [`Response::header`]).
    pub headers: Vec<(String, String)>,
    /// The body, after de-chunking.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum HttpError {
    /// No connection could be made (no route yet, refused, connect timeout): the network may
    /// still be coming up, so the caller retries.
    Connect(io::Error),
    /// The connection was made but dropped or stalled before a full response arrived:
    /// also worth retrying.
    Interrupted(String),
    /// The server answered something that is not HTTP/1.x or breaks a limit: not retried.
    Malformed(String),
}

impl HttpError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Connect(_) | HttpError::Interrupted(_))
    }

    /// Whether the host has no route (or no address) to reach the server yet: the network
    /// is still being configured, as opposed to a server that does not answer.
    pub fn is_no_route(&self) -> bool {
        matches!(self, HttpError::Connect(e) if matches!(
            e.kind(),
            io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::HostUnreachable
                | io::ErrorKind::AddrNotAvailable
                | io::ErrorKind::NetworkDown
        ))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect(e) if self.is_no_route() => {
                write!(f, "cannot connect, no network route yet: {e}")
            }
            HttpError::Connect(e) => write!(f, "cannot connect: {e}"),
            HttpError::Interrupted(m) => write!(f, "{m}"),
            HttpError::Malformed(m) => write!(f, "bad response: {m}"),
        }
    }
}

/// What the provider flows need from the network; tests substitute a scripted server and
/// a virtual clock.
pub trait Http {
    /// Sends one request and reads the whole response. `timeout` bounds connecting and
    /// each read or write.
    fn send(&mut self, req: &Request<'_>, timeout: Duration) -> Result<Response, HttpError>;
    /// Waits between attempts.
    fn pause(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
    /// The current time (for the retry budget).
    fn now(&self) -> Instant {
        Instant::now()
    }
    /// `http://host` for messages, e.g. `http://169.254.169.254`.
    fn base_url(&self) -> String;
}

/// The real client: one TCP connection per request.
#[derive(Debug, Clone)]
pub struct TcpHttp {
    /// Where the metadata server listens.
    pub addr: SocketAddr,
}

impl TcpHttp {
    /// The link-local metadata address every supported cloud uses.
    pub fn metadata_service() -> TcpHttp {
        TcpHttp {
            addr: SocketAddr::from(([169, 254, 169, 254], 80)),
        }
    }
}

impl Http for TcpHttp {
    fn send(&mut self, req: &Request<'_>, timeout: Duration) -> Result<Response, HttpError> {
        let timeout = timeout.max(Duration::from_millis(10));
        let mut stream =
            TcpStream::connect_timeout(&self.addr, timeout).map_err(HttpError::Connect)?;
        let interrupted = |what: &str, e: io::Error| HttpError::Interrupted(format!("{what}: {e}"));
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| interrupted("setting socket timeouts", e))?;
        let host = if self.addr.port() == 80 {
            self.addr.ip().to_string()
        } else {
            self.addr.to_string()
        };
        stream
            .write_all(&encode_request(req, &host))
            .map_err(|e| interrupted("sending the request", e))?;
        read_response(&mut stream, MAX_HEADER_BYTES, MAX_BODY_BYTES)
    }

    fn base_url(&self) -> String {
        if self.addr.port() == 80 {
            format!("http://{}", self.addr.ip())
        } else {
            format!("http://{}", self.addr)
        }
    }
}

/// The request's bytes. PUT carries an explicit empty body (`Content-Length: 0`), which
/// EC2's token endpoint expects.
pub fn encode_request(req: &Request<'_>, host: &str) -> Vec<u8> {
    let mut s = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kiln-agent/{}\r\nAccept: */*\r\nConnection: close\r\n",
        req.method,
        req.path,
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in req.headers {
        s.push_str(name);
        s.push_str(": ");
        s.push_str(value);
        s.push_str("\r\n");
    }
    if req.method != "GET" {
        s.push_str("Content-Length: 0\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Reads one response from `r`, enforcing the header and body caps.
pub fn read_response<R: Read>(
    r: &mut R,
    max_header: usize,
    max_body: usize,
) -> Result<Response, HttpError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > max_header {
            return Err(HttpError::Malformed(format!(
                "response headers exceed {max_header} bytes"
            )));
        }
        let mut chunk = [0u8; 2048];
        let n = read_some(r, &mut chunk)?;
        if n == 0 {
            return Err(HttpError::Interrupted(if buf.is_empty() {
                "the connection closed without a response".to_string()
            } else {
                "the connection closed in the middle of the response headers".to_string()
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end > max_header {
        return Err(HttpError::Malformed(format!(
            "response headers exceed {max_header} bytes"
        )));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HttpError::Malformed("response headers are not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or(""))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| HttpError::Malformed(format!("header line without ':': {line:?}")))?;
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = buf[head_end + 4..].to_vec();
    let mut body = Prefixed {
        head: rest,
        pos: 0,
        inner: r,
    };
    let chunked = resp
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    resp.body = if chunked {
        read_chunked(&mut body, max_body)?
    } else if let Some(len) = resp.header("Content-Length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed(format!("Content-Length {len:?} is not a number")))?;
        if len > max_body {
            return Err(HttpError::Malformed(format!(
                "body of {len} bytes exceeds the {max_body}-byte limit"
            )));
        }
        let mut out = vec![0u8; len];
        read_exact(&mut body, &mut out)?;
        out
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        read_to_end_capped(&mut body, max_body)?
    };
    Ok(resp)
}

fn parse_status_line(line: &str) -> Result<u16, HttpError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed(format!(
            "status line {line:?} is not HTTP/1.x"
        )));
    }
    match code.parse::<u16>() {
        Ok(c) if (100..600).contains(&c) => Ok(c),
        _ => Err(HttpError::Malformed(format!(
            "status line {line:?} has no valid status code"
        ))),
    }
}

fn read_chunked<R: Read>(r: &mut R, max_body: usize) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    loop {
        let line = read_line(r)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailers end with an empty line.
            loop {
                if read_line(r)?.is_empty() {
                    return Ok(out);
                }
            }
        }
        if out.len().saturating_add(size) > max_body {
            return Err(HttpError::Malformed(format!(
                "chunked body exceeds the {max_body}-byte limit"
            )));
        }
        let start = out.len();
        out.resize(start + size, 0);
        read_exact(r, &mut out[start..])?;
        if !read_line(r)?.is_empty() {
            return Err(HttpError::Malformed(
                "chunk data not followed by CRLF".into(),
            ));
        }
    }
}

/// One CRLF-terminated line (without the CRLF), at most 1 KiB.
fn read_line<R: Read>(r: &mut R) -> Result<String, HttpError> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if read_some(r, &mut b)? == 0 {
            return Err(HttpError::Interrupted(
                "the connection closed inside a chunked body".into(),
            ));
        }
        if b[0] == b'\n' {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return String::from_utf8(line)
                .map_err(|_| HttpError::Malformed("chunk line is not UTF-8".into()));
        }
        line.push(b[0]);
        if line.len() > 1024 {
            return Err(HttpError::Malformed("chunk line longer than 1 KiB".into()));
        }
    }
}

fn read_exact<R: Read>(r: &mut R, out: &mut [u8]) -> Result<(), HttpError> {
    let mut filled = 0;
    while filled < out.len() {
        let n = read_some(r, &mut out[filled..])?;
        if n == 0 {
            return Err(HttpError::Interrupted(format!(
                "the connection closed after {filled} of {} body bytes",
                out.len()
            )));
        }
        filled += n;
    }
    Ok(())
}

fn read_to_end_capped<R: Read>(r: &mut R, max_body: usize) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = read_some(r, &mut chunk)?;
        if n == 0 {
            return Ok(out);
        }
        if out.len() + n > max_body {
            return Err(HttpError::Malformed(format!(
                "body exceeds the {max_body}-byte limit"
            )));
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, HttpError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HttpError::Interrupted(format!("reading the response: {e}"))),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Bytes already read past the headers, then the rest of the stream.
struct Prefixed<'a, R> {
    head: Vec<u8>,
    pos: usize,
    inner: &'a mut R,
}

impl<R: Read> Read for Prefixed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.pos);
            buf[..n].copy_from_slice(&self.head[self.pos..self.pos + n]);
            self.pos += n;
            return Ok(n);
        }
        self.inner.read(buf)
    }
}
