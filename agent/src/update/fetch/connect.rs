//! Connections for a download: TCP with connect, read and write timeouts, and for https
//! a rustls client (ring) that trusts the image's CA bundle. Behind [`Connector`] so the
//! download's retry logic is tested with connections that break on purpose.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::{FetchOptions, Scheme, Url};

/// A connection that carries one request and its answer.
pub trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// Resolving or connecting failed: worth another attempt.
    Network(String),
    /// TLS failed: another attempt gives the same answer.
    Tls(String),
    /// The CA bundle cannot be used.
    CaBundle(String),
}

/// Makes connections, and waits between attempts.
pub trait Connector {
    /// A connection to the URL's server (TLS for https), timeouts set.
    fn connect(&mut self, url: &Url) -> Result<Box<dyn Conn>, ConnectError>;
    /// Waits before the next attempt.
    fn sleep(&mut self, d: Duration);
}

/// The real connector: TCP with timeouts, rustls for https.
pub struct TcpConnector {
    opts: FetchOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl TcpConnector {
    /// A connector with these timeouts and CA bundle.
    pub fn new(opts: FetchOptions) -> TcpConnector {
        TcpConnector { opts, tls: None }
    }

    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
        if let Some(c) = &self.tls {
            return Ok(c.clone());
        }
        let config = tls_config(&self.opts.ca_file)?;
        self.tls = Some(config.clone());
        Ok(config)
    }
}

/// A rustls client configuration (ring, the safe default protocol versions) that trusts
/// the CA certificates in the PEM file `ca_file`.
pub fn tls_config(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let pem = std::fs::read(ca_file).map_err(|e| ConnectError::CaBundle(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| ConnectError::CaBundle(format!("bad PEM: {e}")))?;
        // A certificate the parser cannot use is skipped, as every TLS client does
        // with system bundles.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(ConnectError::CaBundle("no usable certificates".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The text of an I/O error, with "timed out" for both timeout kinds.
pub(super) fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => e.to_string(),
    }
}

/// The rustls error inside an I/O error from a TLS stream, if any.
pub(super) fn tls_inner(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

impl Connector for TcpConnector {
    fn connect(&mut self, url: &Url) -> Result<Box<dyn Conn>, ConnectError> {
        let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
            .to_socket_addrs()
            .map_err(|e| ConnectError::Network(format!("resolving {}: {}", url.host, io_text(&e))))?
            .collect();
        let mut last = format!("{} resolved to no addresses", url.host);
        let mut tcp = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, self.opts.connect_timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("connecting to {a}: {}", io_text(&e)),
            }
        }
        let tcp = tcp.ok_or(ConnectError::Network(last))?;
        let setup = |r: io::Result<()>| {
            r.map_err(|e| ConnectError::Network(format!("socket setup: {}", io_text(&e))))
        };
        setup(tcp.set_read_timeout(Some(self.opts.read_timeout)))?;
        setup(tcp.set_write_timeout(Some(self.opts.read_timeout)))?;
        if url.scheme == Scheme::Http {
            return Ok(Box::new(tcp));
        }
        let config = self.tls_config()?;
        let name = ServerName::try_from(url.host.clone())
            .map_err(|e| ConnectError::Tls(format!("server name {}: {e}", url.host)))?;
        let conn =
            ClientConnection::new(config, name).map_err(|e| ConnectError::Tls(e.to_string()))?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                return Err(match tls_inner(&e) {
                    Some(t) => ConnectError::Tls(t.to_string()),
                    None => ConnectError::Network(format!("TLS handshake: {}", io_text(&e))),
                });
            }
        }
        Ok(Box::new(tls))
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}
