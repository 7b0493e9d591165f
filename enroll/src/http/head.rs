//! The request head, read before hyper sees the connection.
//!
//! The server wraps [`read_head`] in one tokio timeout for the whole head (not per read),
//! so a client that trickles bytes cannot stretch it. Reading the head here also lets a
//! refused head get a JSON answer that says what is wrong: a head that never ends (408), a
//! head above [`super::MAX_HEAD`] bytes or [`super::MAX_HEADERS`] headers (431), a line
//! that ends in a bare LF or anything else httparse (hyper's own parser) refuses (400).
//! What passes goes to hyper unchanged, with whatever part of the body came along.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::{clip, malformed, HttpError, Limits};

/// Reads until the blank line that ends the head; returns every byte read (the head and
/// any body bytes sent with it). Refuses a head over the limits, a bare LF and what
/// httparse cannot parse; a peer that closes early is [`HttpError::Closed`].
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<Vec<u8>, HttpError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let too_large = || HttpError::HeadTooLarge {
        max: limits.max_head,
        headers: limits.max_headers,
    };
    // Where the search for the blank line resumes: just before the newest bytes, so an
    // end split across two reads is found.
    let mut from = 0;
    let end = loop {
        if let Some(end) = head_end(&buf, from) {
            break end;
        }
        from = buf.len().saturating_sub(2);
        if buf.len() >= limits.max_head {
            return Err(too_large());
        }
        let want = chunk.len().min(limits.max_head + 4 - buf.len());
        let n = r.read(&mut chunk[..want]).await.map_err(io_error)?;
        if n == 0 {
            return Err(HttpError::Closed(buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if end > limits.max_head + 4 {
        return Err(too_large());
    }
    check_syntax(&buf[..end], limits)?;
    Ok(buf)
}

fn io_error(e: std::io::Error) -> HttpError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HttpError::Timeout,
        _ => HttpError::Io(e),
    }
}

/// The index just past the head's blank line, searching from `from`. A bare LF counts as
/// a line end here, so a bare-LF head is found (and refused) at once instead of waiting
/// for a CRLF that never comes.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// What httparse says about the head, plus the bare-LF rule (httparse, like many parsers,
/// accepts a bare LF; kiln's clients never send one, so it is refused).
fn check_syntax(head: &[u8], limits: &Limits) -> Result<(), HttpError> {
    let first_line = || {
        let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
        clip(&String::from_utf8_lossy(line))
    };
    if head
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
    {
        return Err(malformed(
            "a line of the request head ends in a bare LF: end every line with CRLF",
        ));
    }
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => Ok(()),
        Ok(_) => Err(malformed(format!(
            "the request head starting {:?} does not end where its blank line is",
            first_line()
        ))),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::HeadTooLarge {
            max: limits.max_head,
            headers: limits.max_headers,
        }),
        Err(httparse::Error::Token) if !head.is_ascii() => Err(malformed(format!(
            "the request head is not text (is this TLS to a plain port, or binary data?): \
             it starts {:?}",
            first_line()
        ))),
        Err(e) => Err(malformed(format!(
            "{e} in the request head starting {:?}",
            first_line()
        ))),
    }
}

/// Hands hyper the bytes [`read_head`] already read, then the rest of the stream; writes go
/// straight to the stream.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    /// `prefix` is read first, then `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The stream (unread prefix bytes are dropped).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let rest = &self.prefix[self.pos..];
            let n = rest.len().min(out.remaining());
            out.put_slice(&rest[..n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
