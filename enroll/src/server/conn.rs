//! One connection, from the accepted socket to the closed one:
//!
//! 1. the TLS handshake, 2. the request head ([`crate::http::head`]) and 3. the body each
//!    finish before one deadline, `--request-timeout` after the accept; each step is one
//!    tokio timeout around the whole step, so trickled bytes cannot stretch it;
//! 4. hyper serves the one request (`Connection: close`) through the [`Handler`];
//!    a long poll may wait up to the watch timeout after its request arrived;
//! 5. the answer must be read at a pace that makes progress within the request timeout;
//! 6. after an error answer the rest of the client's upload is read for a moment, so the
//!    client sees the answer instead of a reset.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::admit::Ticket;
use super::write_timeout::WriteTimeout;
use super::Options;
use crate::api::Handler;
use crate::http::head::{read_head, Rewind};
use crate::http::{self, HttpError, Limits, Response};

/// How long an answered-with-error connection is read from before closing, so the client
/// can read the error instead of seeing a reset while it still sends its body. Short: a
/// refused client holds its connection no longer than this past its answer.
const LINGER: Duration = Duration::from_millis(500);
/// Most bytes read after an error answer.
const LINGER_BYTES: usize = 64 * 1024;
/// Room beyond the request deadline, the long poll and the answer for a store that is
/// slow to answer (SQLite's busy timeout, PostgreSQL's pool wait); only a backstop.
const STORE_SLACK: Duration = Duration::from_secs(60);

type Stream = WriteTimeout<TlsStream<TcpStream>>;

/// What every connection shares.
pub(super) struct Shared {
    /// TLS with the server certificate.
    pub acceptor: TlsAcceptor,
    /// Answers requests.
    pub handler: Arc<dyn Handler>,
    /// Timeouts.
    pub options: Options,
    /// Request limits.
    pub limits: Limits,
}

/// What the request log line says, filled in as the request goes.
#[derive(Debug, Default)]
struct Outcome {
    line: Option<String>,
    status: Option<u16>,
    node: Option<String>,
    /// The answer was sent before the request body was read in full.
    unread_body: bool,
}

/// Serves one accepted connection to its end.
pub(super) async fn serve(tcp: TcpStream, peer: SocketAddr, ticket: Ticket, shared: Arc<Shared>) {
    let start = Instant::now();
    let timeout_len = shared.options.request_timeout;
    let deadline = start + timeout_len;
    let _ = tcp.set_nodelay(true);
    let tls = match timeout_at(deadline, shared.acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            // Not TLS, a client that gave up on our certificate, or a port scan.
            tracing::debug!("{peer}: TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(
                "{peer}: TLS handshake not done within {} s: closed",
                timeout_len.as_secs()
            );
            return;
        }
    };
    let mut stream = WriteTimeout::new(tls, timeout_len);
    let head = match timeout_at(deadline, read_head(&mut stream, &shared.limits)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout),
    };
    let prefix = match head {
        Ok(p) => p,
        Err(e) => {
            let Some(resp) = e.response() else {
                tracing::debug!("{peer}: {e}");
                return;
            };
            let status = resp.status;
            answer_early(&mut stream, &resp).await;
            linger(&mut stream).await;
            log(peer, start, "- -", Some(status), None);
            return;
        }
    };
    let ticket = Arc::new(ticket);
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let service = {
        let shared = shared.clone();
        let outcome = outcome.clone();
        hyper::service::service_fn(move |req| {
            request(
                req,
                peer,
                deadline,
                shared.clone(),
                ticket.clone(),
                outcome.clone(),
            )
        })
    };
    let io = TokioIo::new(Rewind::new(prefix, stream));
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .half_close(false)
        .max_buf_size(shared.limits.max_head + shared.limits.max_body + 8192)
        .header_read_timeout(None)
        .serve_connection(io, service)
        .without_shutdown();
    let cap = timeout_len * 2 + shared.options.watch_timeout + STORE_SLACK;
    let served = timeout(cap, conn).await;
    let o = std::mem::take(&mut *lock(&outcome));
    match served {
        Ok(Ok(parts)) => {
            let mut stream = parts.io.into_inner().into_inner();
            let _ = stream.shutdown().await;
            if o.unread_body {
                linger(&mut stream).await;
            }
        }
        Ok(Err(e)) => tracing::debug!("{peer}: {e}"),
        Err(_) => tracing::warn!(
            "{peer}: the connection was still open after {} s: closed",
            cap.as_secs()
        ),
    }
    let line = o.line.as_deref().unwrap_or("- -");
    log(peer, start, line, o.status, o.node.as_deref());
}

fn lock(o: &Mutex<Outcome>) -> std::sync::MutexGuard<'_, Outcome> {
    // Plain data: a panic elsewhere cannot leave it half-written.
    o.lock().unwrap_or_else(|p| p.into_inner())
}

fn log(peer: SocketAddr, start: Instant, line: &str, status: Option<u16>, node: Option<&str>) {
    let status = status.map_or_else(|| "-".to_string(), |s| s.to_string());
    tracing::info!(
        "{peer} {line} {status} {}ms {}",
        start.elapsed().as_millis(),
        node.unwrap_or("-")
    );
}

/// hyper's service for the one request: the checks of [`http::check`], the body within
/// the deadline, then the handler.
async fn request(
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
    deadline: Instant,
    shared: Arc<Shared>,
    ticket: Arc<Ticket>,
    outcome: Arc<Mutex<Outcome>>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    lock(&outcome).line = Some(format!(
        "{} {}",
        http::clip(parts.method.as_str()),
        http::clip(parts.uri.path())
    ));
    let refuse = |e: HttpError, unread_body: bool| {
        let resp = e.response().unwrap_or_else(|| {
            // Only a lost connection has no answer; hyper will fail to send this one.
            Response::error(
                400,
                &kiln_enroll_proto::api::ErrorBody::new(
                    kiln_enroll_proto::api::ErrorCode::BadRequest,
                    e.to_string(),
                ),
            )
        });
        let mut o = lock(&outcome);
        o.status = Some(resp.status);
        o.unread_body = unread_body;
        Ok(resp.into_hyper())
    };
    let (mut request, length) = match http::check(&parts, &shared.limits) {
        Ok(r) => r,
        Err(e) => return refuse(e, true),
    };
    if length > 0 {
        match timeout_at(deadline, body.collect()).await {
            Err(_) => return refuse(HttpError::Timeout, true),
            Ok(Err(e)) => {
                return refuse(
                    HttpError::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        e.to_string(),
                    )),
                    false,
                )
            }
            Ok(Ok(c)) => request.body = c.to_bytes().to_vec(),
        }
    }
    ticket.request_arrived();
    let handled = shared.handler.clone().handle(request, peer.ip()).await;
    let mut o = lock(&outcome);
    o.status = Some(handled.response.status);
    o.node = handled.node;
    Ok(handled.response.into_hyper())
}

/// Sends an answer hyper never saw a request for, then closes the sending side.
async fn answer_early(stream: &mut Stream, resp: &Response) {
    let bytes = resp.to_http1();
    let sent = async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    if let Err(e) = sent.await {
        tracing::debug!("sending an error answer: {e}");
    }
}

/// Reads and discards what the client still sends, for at most [`LINGER`]: closing a
/// socket with unread data makes the kernel send a reset, which can destroy the answer
/// before the client reads it.
async fn linger(stream: &mut Stream) {
    let mut buf = [0u8; 8192];
    let mut total = 0;
    let drain = async {
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}
