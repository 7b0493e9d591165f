//! The network side: hyper's HTTP/1.1 server on a tokio runtime, TLS through
//! tokio-rustls. Each accepted connection is admitted or closed at once ([`admit`]), then
//! served as one task ([`conn`]) through the [`Api`]; store calls run on tokio's blocking
//! threads. One background thread keeps two chores going: reading the peer list's version
//! for waiting long polls, and expiring the endpoints of nodes whose heartbeats stopped.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;

use crate::api::Api;
use crate::clock::Clock;
use crate::http::Limits;
use crate::store::Store;
use crate::watch::{Notifier, POLL_INTERVAL};

pub mod admit;
mod conn;
pub mod write_timeout;

pub use admit::DEFAULT_MAX_PER_SOURCE;

/// Default bound on open connections (long polls hold one each).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Threads that run store calls at most; more requests wait their turn (SQLite runs one
/// transaction at a time anyway, PostgreSQL has a pool of 8 connections).
const BLOCKING_THREADS: usize = 32;
/// How often refused connections are summed up in the log.
const REFUSED_LOG_EVERY: Duration = Duration::from_secs(10);

/// How the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Connections open at most.
    pub max_connections: usize,
    /// Connections per source (IPv4 address, IPv6 /64) that are still in the TLS
    /// handshake or sending their request.
    pub max_per_source: usize,
    /// Time for the TLS handshake plus the whole request to arrive; also how long an
    /// answer may wait for the client to read it.
    pub request_timeout: Duration,
    /// Longest long poll.
    pub watch_timeout: Duration,
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

impl Server {
    /// Serves until the process ends. Returns only if the runtime cannot start or the
    /// listener cannot be used.
    pub fn run(self) -> io::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_io()
            .enable_time()
            .thread_name("kiln-enroll")
            .max_blocking_threads(BLOCKING_THREADS)
            .build()
            .map_err(|e| io::Error::new(e.kind(), format!("starting the tokio runtime: {e}")))?;
        let admission =
            admit::Admission::new(self.options.max_connections, self.options.max_per_source);
        self.start_background(admission.clone());
        let shared = Arc::new(conn::Shared {
            acceptor: tokio_rustls::TlsAcceptor::from(self.tls),
            handler: self.api,
            options: self.options,
            limits: Limits::default(),
        });
        let listener = self.listener;
        runtime.block_on(accept_loop(listener, admission, shared))
    }

    /// The version poller (every second), the endpoint sweeper and the refusal summary.
    fn start_background(&self, admission: Arc<admit::Admission>) {
        let store = self.store.clone();
        let notifier = self.notifier.clone();
        let clock = self.clock.clone();
        let ttl = self.options.endpoint_ttl;
        let (max_total, max_source) = (self.options.max_connections, self.options.max_per_source);
        // Sweep a few times per TTL so a node goes offline at most a third late.
        let sweep_every = Duration::from_secs((ttl / 3).clamp(1, 5));
        let spawned = std::thread::Builder::new()
            .name("kiln-enroll-chores".into())
            .spawn(move || {
                let mut last_sweep = Instant::now();
                let mut last_refused = Instant::now();
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
                    if last_refused.elapsed() >= REFUSED_LOG_EVERY {
                        last_refused = Instant::now();
                        let r = admission.take_refused();
                        if r.total + r.source > 0 {
                            tracing::warn!(
                                "closed unserved in the last {} s: {} connection(s) beyond \
                                 --max-connections {max_total}, {} beyond --max-per-source \
                                 {max_source} (connections still in the handshake or \
                                 request from one address or IPv6 /64)",
                                REFUSED_LOG_EVERY.as_secs(),
                                r.total,
                                r.source
                            );
                        }
                    }
                    if let Err(e) = notifier.poll(store.as_ref()) {
                        tracing::warn!("reading the peer list version: {e}");
                    }
                    if let Err(e) = store.housekeeping() {
                        tracing::warn!("{e}");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the background thread: {e}");
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    admission: Arc<admit::Admission>,
    shared: Arc<conn::Shared>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut last_warning: Option<Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning, and
                // say so at most once a second.
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!("accepting a connection: {e} ({} open)", admission.open());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match admission.admit(peer.ip()) {
            // Dropping the socket closes it: no TLS work for a refused connection.
            Err(_) => drop(tcp),
            Ok(ticket) => {
                tokio::spawn(conn::serve(tcp, peer, ticket, shared.clone()));
            }
        }
    }
}
