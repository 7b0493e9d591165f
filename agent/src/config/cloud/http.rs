//! The metadata services' transport: plain HTTP/1.1 to the link-local address.
//!
//! Metadata servers speak plain HTTP on 169.254.169.254:80 and answer small documents, so a
//! full client (TLS, redirects, keep-alive, compression) would only add size to the static
//! agent. The request writer and the response reader are `kiln_enroll_proto::http`'s, the
//! same code the enrollment client runs inside TLS: one request per connection with
//! `Connection: close`, a body delimited by `Content-Length`, `Transfer-Encoding: chunked`
//! or the end of the connection, and head and body sizes capped so a misbehaving server
//! cannot exhaust memory. This module adds the TCP connection with its timeouts and sorts
//! failures into the ones worth retrying and the ones that are not.

use std::fmt;
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kiln_enroll_proto::http as wire;

use crate::sys::real::RealSys;
use crate::sys::{forward, Clock};

/// A complete response (names as sent; look headers up with [`Response::header`], which
/// ignores case).
pub use wire::Response;

/// Largest response body accepted (user-data is capped at 16 KiB on EC2 and 256 KiB on
/// GCE; 1 MiB leaves room without letting a broken server fill memory).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Sent instead of the wire module's default, so metadata service logs name the agent.
const USER_AGENT: &str = concat!("kiln-agent/", env!("CARGO_PKG_VERSION"));

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
    /// The request itself cannot be written (a header value with a line break): a bug on
    /// this side, not retried.
    Request(io::Error),
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
            HttpError::Request(e) => write!(f, "cannot send the request: {e}"),
        }
    }
}

/// What the provider flows need from the network, with the clock their retries wait on
/// and count their budget with; tests substitute a scripted server and a virtual clock.
pub trait Http: Clock {
    /// Sends one request and reads the whole response. `timeout` bounds connecting and
    /// each read or write.
    fn send(&mut self, req: &Request<'_>, timeout: Duration) -> Result<Response, HttpError>;
    /// `http://host` for messages, e.g. `http://169.254.169.254`.
    fn base_url(&self) -> String;
}

/// The real client: one TCP connection per request.
#[derive(Debug, Clone)]
pub struct TcpHttp {
    /// Where the metadata server listens.
    pub addr: SocketAddr,
    clock: RealSys,
}

forward!(TcpHttp => clock: Clock);

impl TcpHttp {
    /// A client of the server at `addr`.
    pub fn new(addr: SocketAddr) -> TcpHttp {
        TcpHttp {
            addr,
            clock: RealSys::default(),
        }
    }

    /// The link-local metadata address every supported cloud uses.
    pub fn metadata_service() -> TcpHttp {
        TcpHttp::new(SocketAddr::from(([169, 254, 169, 254], 80)))
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
        let mut headers = vec![("User-Agent", USER_AGENT), ("Accept", "*/*")];
        headers.extend_from_slice(req.headers);
        let head = wire::Request {
            method: req.method,
            path: req.path,
            host: &host,
            authorization: None,
            body: None,
        };
        wire::write_request_with(&mut stream, &head, &headers).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidInput {
                HttpError::Request(e)
            } else {
                interrupted("sending the request", e)
            }
        })?;
        wire::read_response(&mut BufReader::new(&mut stream), MAX_BODY_BYTES).map_err(|e| match e {
            wire::HttpError::Io(e) => interrupted("reading the response", e),
            wire::HttpError::Malformed(m) => HttpError::Malformed(m),
        })
    }

    fn base_url(&self) -> String {
        if self.addr.port() == 80 {
            format!("http://{}", self.addr.ip())
        } else {
            format!("http://{}", self.addr)
        }
    }
}
