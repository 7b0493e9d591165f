//! The network side: accepts TCP connections, gives each its own thread (up to a bound;
//! beyond it a quick 503), runs TLS and one HTTP request per connection through the
//! [`Api`], and keeps two chores going in the background: reading the peer list's version
//! for waiting long polls, and expiring the endpoints of nodes whose heartbeats stopped.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_enroll_proto::api::{ErrorBody, ErrorCode};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use crate::api::Api;
use crate::clock::Clock;
use crate::http::{read_request, write_response, Limits, Response};
use crate::store::Store;
use crate::watch::{Notifier, POLL_INTERVAL};

/// Default bound on connection threads (long polls hold one each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Stack of a connection thread: TLS and JSON need little; a thousand long polls should
/// not reserve gigabytes.
const CONNECTION_STACK: usize = 512 * 1024;
/// How long the answer to a refused (overflow) connection may take.
const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answered-with-error connection is drained before closing, so the client
/// can read the error instead of seeing a reset while it still sends its body.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes drained after an error answer.
const LINGER_BYTES: usize = 1024 * 1024;

/// How the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Connection threads at most.
    pub max_connections: usize,
    /// Time for the TLS handshake plus the whole request to arrive.
    pub request_timeout: Duration,
    /// Seconds without heartbeat after which a node's endpoints expire.
    pub endpoint_ttl: u64,
}

/// Everything a running server uses.
pub struct Server {
    /// The listening socket (already bound: the ready line names its address).
    pub listener: TcpListener,
    /// TLS configuration.
    pub tls: Arc<ServerConfig>,
    /// Request handlers.
    pub api: Arc<Api>,
    /// The state (for the background chores).
    pub store: Arc<dyn Store>,
    /// Wakes long polls.
    pub notifier: Arc<Notifier>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Limits and timeouts.
    pub options: Options,
}

/// Counts live connection threads; the count drops when the guard does, panic or not.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Server {
    /// Serves until the process ends. Returns only if the listener fails for good.
    pub fn run(self) -> io::Result<()> {
        self.start_background();
        let active = Arc::new(AtomicUsize::new(0));
        let overflow = start_overflow(self.tls.clone());
        for conn in self.listener.incoming() {
            let sock = match conn {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let Ok(peer) = sock.peer_addr() else { continue };
            if active.fetch_add(1, Ordering::SeqCst) >= self.options.max_connections {
                active.fetch_sub(1, Ordering::SeqCst);
                match overflow.try_send(sock) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                        tracing::warn!("{peer}: dropped: too many connections");
                    }
                }
                continue;
            }
            let slot = Slot(active.clone());
            let tls = self.tls.clone();
            let api = self.api.clone();
            let timeout = self.options.request_timeout;
            let spawned = std::thread::Builder::new()
                .name("kiln-enroll-conn".into())
                .stack_size(CONNECTION_STACK)
                .spawn(move || {
                    let _slot = slot;
                    serve(sock, peer, tls, &api, timeout);
                });
            if let Err(e) = spawned {
                tracing::warn!("{peer}: no thread for the connection: {e}");
            }
        }
        Ok(())
    }

    /// The version poller (every second) and the endpoint sweeper.
    fn start_background(&self) {
        let store = self.store.clone();
        let notifier = self.notifier.clone();
        let clock = self.clock.clone();
        let ttl = self.options.endpoint_ttl;
        // Sweep a few times per TTL so a node goes offline at most a third late.
        let sweep_every = Duration::from_secs((ttl / 3).clamp(1, 5));
        let spawned = std::thread::Builder::new()
            .name("kiln-enroll-chores".into())
            .spawn(move || {
                let mut last_sweep = Instant::now();
                loop {
                    std::thread::sleep(POLL_INTERVAL);
                    if last_sweep.elapsed() >= sweep_every {
                        last_sweep = Instant::now();
                        match store.expire(clock.now(), ttl) {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                "{n} node(s) went offline (no heartbeat for {ttl} s)"
                            ),
                            Err(e) => tracing::warn!("expiring endpoints: {e}"),
                        }
                    }
                    if let Err(e) = notifier.poll(store.as_ref()) {
                        tracing::warn!("reading the peer list version: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the background thread: {e}");
        }
    }
}

/// One thread answers connections beyond the bound with 503, one at a time and quickly;
/// when it is behind too, connections are dropped.
fn start_overflow(tls: Arc<ServerConfig>) -> SyncSender<TcpStream> {
    let (tx, rx) = sync_channel::<TcpStream>(64);
    let spawned = std::thread::Builder::new()
        .name("kiln-enroll-overflow".into())
        .spawn(move || {
            for sock in rx {
                let body = ErrorBody::new(
                    ErrorCode::Unavailable,
                    "kiln-enroll has too many connections open: retry in a few seconds",
                );
                let Ok(peer) = sock.peer_addr() else { continue };
                answer_only(sock, peer, tls.clone(), &Response::from_error(&body));
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the overflow thread: {e}");
    }
    tx
}

/// Reads through the TLS stream with one deadline for everything (handshake included),
/// so a client that trickles bytes cannot hold a thread longer than the timeout.
struct Deadline<'a> {
    stream: &'a mut StreamOwned<ServerConnection, TcpStream>,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.sock.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

fn serve(sock: TcpStream, peer: SocketAddr, tls: Arc<ServerConfig>, api: &Api, timeout: Duration) {
    let start = Instant::now();
    let _ = sock.set_nodelay(true);
    let _ = sock.set_write_timeout(Some(timeout));
    let conn = match ServerConnection::new(tls) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{peer}: TLS setup: {e}");
            return;
        }
    };
    let mut stream = StreamOwned::new(conn, sock);
    let read = read_request(
        &mut Deadline {
            stream: &mut stream,
            until: start + timeout,
        },
        &Limits::default(),
    );
    let (line, response, node, linger) = match read {
        Ok(req) => {
            let handled = api.handle(&req, peer.ip());
            (
                format!("{} {}", req.method, req.path),
                Some(handled.response),
                handled.node,
                false,
            )
        }
        Err(e) => {
            if stream.conn.is_handshaking() {
                // Not TLS, a client that gave up on our certificate, or a port scan.
                tracing::debug!("{peer}: TLS handshake failed: {e}");
                return;
            }
            ("- -".to_string(), e.response(), None, true)
        }
    };
    let status = match &response {
        Some(resp) => {
            let written = write_response(&mut stream, resp).and_then(|()| {
                stream.conn.send_close_notify();
                stream.conn.complete_io(&mut stream.sock).map(|_| ())
            });
            if let Err(e) = written {
                tracing::debug!("{peer}: writing the answer: {e}");
            }
            resp.status.to_string()
        }
        None => "-".to_string(),
    };
    if linger {
        drain(&mut stream.sock);
    }
    let _ = stream.sock.shutdown(Shutdown::Both);
    tracing::info!(
        "{peer} {line} {status} {}ms {}",
        start.elapsed().as_millis(),
        node.as_deref().unwrap_or("-")
    );
}

/// Answers without looking at the request beyond reading its head (the 503 path).
fn answer_only(sock: TcpStream, peer: SocketAddr, tls: Arc<ServerConfig>, resp: &Response) {
    let _ = sock.set_write_timeout(Some(OVERFLOW_TIMEOUT));
    let Ok(conn) = ServerConnection::new(tls) else {
        return;
    };
    let mut stream = StreamOwned::new(conn, sock);
    let head = read_request(
        &mut Deadline {
            stream: &mut stream,
            until: Instant::now() + OVERFLOW_TIMEOUT,
        },
        &Limits {
            max_body: 0,
            ..Limits::default()
        },
    );
    if stream.conn.is_handshaking() {
        return;
    }
    let _ = head;
    if write_response(&mut stream, resp).is_ok() {
        stream.conn.send_close_notify();
        let _ = stream.conn.complete_io(&mut stream.sock);
    }
    drain(&mut stream.sock);
    let _ = stream.sock.shutdown(Shutdown::Both);
    tracing::info!("{peer} refused: too many connections");
}

/// Half-closes and discards what the client still sends for a moment: closing a socket
/// with unread data makes the kernel send a reset, which can destroy the error answer
/// before the client reads it.
fn drain(sock: &mut TcpStream) {
    let _ = sock.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}
