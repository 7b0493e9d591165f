//! Where a bundle comes from: a local file, or an `http://` / `https://` URL read as one
//! stream of known length.
//!
//! A download that breaks in the middle (a dropped connection, a read that times out)
//! reconnects and asks for the rest with `Range: bytes=N-`; the answer must be `206` with
//! a `Content-Range` that starts at `N` and names the same total, or the file changed on
//! the server and the apply stops. A server that ignores ranges (`200` again) is read
//! from its start again, skipping what was already read, but only while nothing from the
//! stream has been written to disk ([`BundleStream::committed`]); after that the apply
//! stops with the advice to serve the bundle from a server that supports ranges.
//! Consecutive failures without progress are retried a few times with backoff; connect
//! and read timeouts bound every step.
//!
//! HTTPS verifies the server against the image's CA bundle ([`CA_BUNDLE`]) with rustls
//! and ring, the TLS stack the agent already carries for kiln-enroll; the request writer
//! is kiln-enroll-proto's. Redirects (`301`, `302`, `303`, `307`, `308`) are followed up
//! to [`MAX_REDIRECTS`] times, never from https to http.
//!
//! The parts: [`error`] (what went wrong, said once for every source), [`file`] (a local
//! bundle), [`url`] (parsing an http(s) URL), [`connect`] (TCP with timeouts, and the
//! TLS setup), [`head`] (the answer's status line and headers), [`http`] (the download
//! that resumes).

mod connect;
mod error;
mod file;
mod head;
mod http;
#[cfg(test)]
mod tests;
mod url;

use std::io::Read;
use std::time::Duration;

pub use connect::{Conn, ConnectError, Connector, TcpConnector};
pub use error::FetchError;
pub use file::FileStream;
pub use head::{parse_content_range, read_head, Head};
pub use http::HttpStream;
pub use url::{Scheme, Url};

use crate::backoff::Backoff;
use kiln_enroll_proto::http as wire;

/// The CA certificates an https source is verified against (Debian's ca-certificates,
/// in the verified root).
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Redirects followed at most.
pub const MAX_REDIRECTS: u32 = 5;
/// Bytes of status line and headers accepted.
pub const MAX_HEAD: usize = wire::MAX_HEAD;

/// A bundle as a stream of bytes of known length.
pub trait BundleStream: Read {
    /// Bytes the whole stream has.
    fn total_len(&self) -> u64;
    /// What it is read from (the path, or the URL as given), for messages.
    fn describe(&self) -> String;
    /// Called once bytes read from this stream have been written to disk: from then on
    /// the stream cannot be restarted from its beginning.
    fn committed(&mut self) {}
    /// Lines worth showing since the last call (a broken connection being resumed).
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// Timeouts and retries of a download.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Bound on each TCP connect.
    pub connect_timeout: Duration,
    /// Bound on each read and write once connected.
    pub read_timeout: Duration,
    /// Attempts in a row without progress before the download fails (the first
    /// connection counts as one).
    pub attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// The PEM file of trusted CA certificates for https.
    pub ca_file: String,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            attempts: 5,
            backoff: Backoff::secs(1, 30),
            ca_file: CA_BUNDLE.to_string(),
        }
    }
}

/// Whether `source` names a URL rather than a path.
pub fn is_url(source: &str) -> bool {
    source.contains("://")
}

/// Opens `source`: a URL (`http://`, `https://`) through [`TcpConnector`], anything else
/// as a local file.
pub fn open(source: &str, opts: &FetchOptions) -> Result<Box<dyn BundleStream>, FetchError> {
    if is_url(source) {
        let url = Url::parse(source)?;
        let stream = HttpStream::open(source, url, TcpConnector::new(opts.clone()), opts)?;
        Ok(Box::new(stream))
    } else {
        Ok(Box::new(FileStream::open(source)?))
    }
}
