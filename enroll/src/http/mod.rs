//! The HTTP side of the API, on hyper: hyper reads the request body and writes answers;
//! this module holds the rules kiln-enroll adds on top.
//!
//! * [`head`] reads the request head before hyper sees it, under the connection's
//!   deadline, and answers a slow, oversized or malformed head itself with a JSON error
//!   (hyper would answer those with an empty body or not at all).
//! * [`check`] takes hyper's parsed head and refuses what the API never needs (chunked
//!   uploads, a body length given twice, a body above the limit) before a byte of the
//!   body is read, so the API sees a plain [`Request`].
//! * [`Response`] is a JSON answer; every answer closes the connection and carries the
//!   API revision header ([`API_HEADER`]).
//!
//! The rules are strict on purpose: the only clients are kiln's own agent, the tests and an
//! operator's curl, so anything unusual is refused with a message rather than guessed at.

use std::io;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use kiln_enroll_proto::api::{ErrorBody, ErrorCode, MAX_REQUEST_BODY};
use serde::Serialize;

pub mod head;

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 100;
/// Longest request target.
const MAX_TARGET: usize = 2048;

/// The header that carries the API revision: the server names its own on every answer;
/// a client may send the revision it understands (see [`API_REVISION`]).
pub const API_HEADER: &str = kiln_enroll_proto::api::API_HEADER;
/// The revision of the `/v1/` API this server speaks. Revision 1 is the API deployed
/// agents use. A later revision adds fields or endpoints, and the server sends what is
/// new only to clients whose request carries [`API_HEADER`] with that revision or higher:
/// the agents' answer types refuse unknown fields, so an old agent must keep getting
/// exactly the revision-1 answers. Revision 2 ([`kiln_enroll_proto::api::REVISION_DELTAS`])
/// answers `GET /v1/peers` with deltas and `POST /v1/enroll` without the list.
pub const API_REVISION: u32 = kiln_enroll_proto::api::REVISION_DELTAS;

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

/// A request as the API handlers see it.
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

    /// The API revision the client understands: what it sent in [`API_HEADER`] (capped
    /// at the server's), 1 when it sent none or something unreadable.
    pub fn api_revision(&self) -> u32 {
        self.header(API_HEADER)
            .and_then(|v| v.parse::<u32>().ok())
            .map_or(1, |r| r.clamp(1, API_REVISION))
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

fn malformed(what: impl Into<String>) -> HttpError {
    HttpError::Malformed(what.into())
}

/// Headers that must not appear twice (a second Content-Length or Host is a classic
/// request-smuggling and confusion vector).
const SINGLE: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "authorization",
    "host",
];

/// Checks hyper's parsed head against kiln-enroll's rules and returns the request (its
/// body still empty) and the body length to read. Nothing of the body has been read yet,
/// so an oversized body is refused without reading it.
pub fn check(
    parts: &hyper::http::request::Parts,
    limits: &Limits,
) -> Result<(Request, usize), HttpError> {
    let method = parts.method.as_str();
    if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed(format!(
            "method {:?} is not a method name",
            clip(method)
        )));
    }
    let target = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
    if parts.uri.scheme().is_some() || !target.starts_with('/') || target.len() > MAX_TARGET {
        return Err(malformed(format!(
            "request target {:?} is not a path of at most {MAX_TARGET} characters",
            clip(&parts.uri.to_string())
        )));
    }
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query().unwrap_or(""))?;
    let mut headers: Vec<(String, String)> = Vec::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let name = name.as_str();
        let value = value
            .to_str()
            .ok()
            .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
            .ok_or_else(|| {
                malformed(format!(
                    "header {name} contains control or non-ASCII characters"
                ))
            })?;
        if SINGLE.contains(&name) && headers.iter().any(|(n, _)| n == name) {
            return Err(malformed(format!("header {name} appears more than once")));
        }
        headers.push((name.to_string(), value.to_string()));
    }
    let req = Request {
        method: method.to_string(),
        path,
        query,
        headers,
        body: Vec::new(),
    };
    let length = body_length(&req, limits)?;
    Ok((req, length))
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
pub(crate) fn clip(text: &str) -> String {
    let mut out: String = text.chars().take(64).collect();
    if text.chars().nth(64).is_some() {
        out.push_str("...");
    }
    out
}

/// An answer: always JSON, always closing the connection.
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
    /// A 200 answer whose JSON body is already made (a shared peer list).
    pub fn raw_json(body: Vec<u8>) -> Response {
        Response {
            status: 200,
            body,
            retry_after: None,
        }
    }

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

    /// The header fields every answer carries, in order.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("content-type", "application/json".to_string()),
            ("cache-control", "no-store".to_string()),
            ("connection", "close".to_string()),
            (API_HEADER, API_REVISION.to_string()),
        ];
        if let Some(s) = self.retry_after {
            out.push(("retry-after", s.to_string()));
        }
        out
    }

    /// The answer for hyper to send.
    pub fn into_hyper(self) -> hyper::Response<Full<Bytes>> {
        let fields = self.fields();
        let mut resp = hyper::Response::new(Full::new(Bytes::from(self.body)));
        *resp.status_mut() = hyper::StatusCode::from_u16(self.status)
            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        let headers = resp.headers_mut();
        for (name, value) in fields {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        resp
    }

    /// The whole HTTP/1.1 answer as bytes, for the few answers sent before hyper has a
    /// request to answer (see [`head`]): the same fields hyper sends for the others.
    pub fn to_http1(&self) -> Vec<u8> {
        let reason = hyper::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Status");
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in self.fields() {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

#[cfg(test)]
mod tests;
