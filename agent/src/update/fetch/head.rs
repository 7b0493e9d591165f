//! The head of an answer (status line and headers) and the `Content-Range` of a resumed
//! one.
//!
//! kiln-enroll-proto's `http::read_response` has a head parser too, but it is not used
//! here because it reads differently: it wants CRLF line ends (this one also takes a
//! bare LF), refuses header names that are not RFC 9110 tokens, folded lines and control
//! characters (this one takes them, trimming names and values), keeps the reason phrase
//! untrimmed, and words its errors otherwise. Switching would change which answers a
//! download accepts. The limits are shared: [`MAX_HEAD`] and `MAX_HEADERS` are proto's.

use std::io::{self, BufRead, Read};

use super::{wire, MAX_HEAD};

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Headers (name, value), values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first header named `name`, any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one line (without its CRLF or LF) within `budget` bytes.
fn read_head_line(r: &mut impl BufRead, budget: &mut usize) -> io::Result<String> {
    let mut line = Vec::new();
    let limit = (*budget as u64).saturating_add(1);
    r.take(limit).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(if line.len() as u64 >= limit {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the response head is longer than {MAX_HEAD} bytes"),
            )
        } else {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed in the middle of the response head",
            )
        });
    }
    *budget = budget.saturating_sub(line.len());
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Reads a response's status line and headers (at most [`MAX_HEAD`] bytes). I/O errors
/// keep their kind; a head that is not HTTP/1.x is `InvalidData`.
pub fn read_head(r: &mut impl BufRead) -> io::Result<Head> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut budget = MAX_HEAD;
    let status_line = read_head_line(r, &mut budget)?;
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .ok_or_else(|| {
            invalid(format!(
                "the answer does not start with HTTP/1.x: {:?}",
                status_line.chars().take(40).collect::<String>()
            ))
        })?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = match code.parse::<u16>() {
        Ok(s) if code.len() == 3 && (200..600).contains(&s) => s,
        _ => return Err(invalid(format!("bad status line {status_line:?}"))),
    };
    let mut headers = Vec::new();
    loop {
        let line = read_head_line(r, &mut budget)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| invalid(format!("header line {line:?} has no colon")))?;
        if headers.len() >= wire::MAX_HEADERS {
            return Err(invalid(format!(
                "more than {} header lines",
                wire::MAX_HEADERS
            )));
        }
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Head {
        status,
        reason: reason.trim().to_string(),
        headers,
    })
}

/// `Content-Range: bytes START-END/TOTAL` as (start, end, total).
pub fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let num = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end, total) = (num(start)?, num(end)?, num(total)?);
    (start <= end && end < total).then_some((start, end, total))
}
