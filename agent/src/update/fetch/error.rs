//! Why a bundle cannot be read: one error type for files and downloads, whose messages
//! name the source and what to do. It travels through [`std::io::Read`] inside an
//! [`io::Error`] ([`FetchError::into_io`], [`FetchError::from_io`]).

use std::fmt;
use std::io;

use super::CA_BUNDLE;

/// Why a bundle cannot be read. Each message names the source and what to do.
#[derive(Debug)]
pub enum FetchError {
    /// The source is a URL of a scheme kiln does not download, or a malformed URL.
    BadUrl(String),
    /// A local file that cannot be opened or is not a regular file.
    Open {
        /// The path as given.
        path: String,
        /// Why.
        err: io::Error,
    },
    /// No connection could be made, after every attempt.
    Unreachable {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        err: String,
    },
    /// The TLS handshake failed (an untrusted or wrong certificate, an alert).
    Tls {
        /// The URL.
        url: String,
        /// rustls's reason.
        err: String,
    },
    /// The image's CA bundle is missing or unreadable.
    CaBundle {
        /// Its path.
        path: String,
        /// Why.
        err: String,
    },
    /// The server answered with a status other than success.
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
    },
    /// The answer is not HTTP kiln can read, or lacks what a download needs.
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        what: String,
    },
    /// The file on the server is not the one the download started with.
    Changed {
        /// The URL.
        url: String,
        /// What changed.
        what: String,
    },
    /// The server ignores range requests and bytes were already written.
    NoRanges {
        /// The URL.
        url: String,
        /// Bytes read before the break.
        offset: u64,
    },
    /// The download broke and every attempt to resume it failed.
    Broken {
        /// The URL.
        url: String,
        /// Bytes read before the break.
        offset: u64,
        /// Bytes the bundle has.
        total: u64,
        /// Attempts made in a row.
        attempts: u32,
        /// The last failure.
        err: String,
    },
    /// Reading a local file failed, or it is shorter than it was.
    Read {
        /// The path.
        path: String,
        /// Why.
        err: io::Error,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::BadUrl(m) => f.write_str(m),
            FetchError::Open { path, err } => write!(
                f,
                "cannot open the bundle {path}: {err} (give a readable file, or an http:// \
                 or https:// URL)"
            ),
            FetchError::Unreachable { url, attempts, err } => write!(
                f,
                "cannot reach {url}: {err} ({attempts} attempts; check the URL, the server \
                 and this node's network)"
            ),
            FetchError::Tls { url, err } => write!(
                f,
                "TLS with {url} failed: {err} (the server's certificate must chain to a CA in \
                 {CA_BUNDLE} and name the host of the URL)"
            ),
            FetchError::CaBundle { path, err } => write!(
                f,
                "cannot use the CA certificates in {path}: {err} (the image needs the \
                 ca-certificates package for https sources; use an http:// URL or a local \
                 file otherwise)"
            ),
            FetchError::Status {
                url,
                status,
                reason,
            } => write!(
                f,
                "{url} answered HTTP {status}{}{} (check the URL and that the server offers \
                 the bundle)",
                if reason.is_empty() { "" } else { " " },
                reason
            ),
            FetchError::Protocol { url, what } => write!(f, "{url}: {what}"),
            FetchError::Changed { url, what } => write!(
                f,
                "{url} changed during the download: {what} (run the apply again once the \
                 server's file is final)"
            ),
            FetchError::NoRanges { url, offset } => write!(
                f,
                "the download of {url} broke after {offset} bytes and the server ignores range \
                 requests, so it cannot be resumed (run the apply again, or serve the bundle \
                 from a server that supports Range requests)"
            ),
            FetchError::Broken {
                url,
                offset,
                total,
                attempts,
                err,
            } => write!(
                f,
                "the download of {url} broke after {offset} of {total} bytes and {attempts} \
                 attempts to resume it failed: {err} (run the apply again when the network is \
                 stable)"
            ),
            FetchError::Read { path, err } => write!(f, "reading the bundle {path}: {err}"),
        }
    }
}

impl std::error::Error for FetchError {}

impl FetchError {
    /// As an io::Error, to travel through [`Read`]; [`FetchError::from_io`] gets it back.
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The FetchError inside an io::Error from a [`BundleStream`], if it carries one.
    pub fn from_io(e: &io::Error) -> Option<&FetchError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<FetchError>())
    }
}
