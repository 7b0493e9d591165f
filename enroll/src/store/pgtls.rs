//! TLS to PostgreSQL: when it is required, and the rustls connector the postgres client
//! uses.
//!
//! The rule ([`transport`]): a host that is this machine (a Unix socket, `localhost` or a
//! loopback address) is reached as the URL says, in clear text unless it says
//! `sslmode=require`. Any other host is reached over TLS, and `sslmode=prefer` (the
//! default) is made `require` so that a server or a man in the middle that declines TLS
//! cannot downgrade the connection; `sslmode=disable` to such a host is refused unless the
//! operator passes `--allow-plaintext-postgres`. The decision is made from the URL alone,
//! before any connection is attempted.
//!
//! The server's certificate is verified against the CA file (`--postgres-ca`, the system
//! bundle by default) and must be made out to the host name or address in the URL.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use postgres::config::{Host, SslMode};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::{Config, Socket};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How the connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Without TLS.
    Plain,
    /// TLS with a verified certificate (the config's sslmode says whether it is
    /// required).
    Tls,
}

/// Whether every host the config names is this machine: a Unix socket, `localhost`, or a
/// loopback address (and every `hostaddr`, which is where the connection then goes).
pub fn is_local(config: &Config) -> bool {
    let host_local = |h: &Host| match h {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    };
    config.get_hosts().iter().all(host_local)
        && config.get_hostaddrs().iter().all(|a| a.is_loopback())
}

/// Decides the transport for `config` and makes its sslmode match (see the module
/// documentation); `db` names the database in the refusal.
pub fn transport(
    config: &mut Config,
    allow_plaintext: bool,
    db: &str,
) -> Result<Transport, String> {
    let mode = config.get_ssl_mode();
    if is_local(config) {
        return Ok(match mode {
            SslMode::Require => Transport::Tls,
            _ => Transport::Plain,
        });
    }
    match mode {
        SslMode::Disable if allow_plaintext => {
            tracing::warn!(
                "{db}: connecting without TLS (sslmode=disable, --allow-plaintext-postgres): \
                 the CA key and the join tokens cross the network in clear text"
            );
            Ok(Transport::Plain)
        }
        SslMode::Disable => Err(format!(
            "{db}: sslmode=disable to a host that is not this machine is refused: the CA \
             key and the join tokens would cross the network in clear text. Remove \
             sslmode=disable (kiln-enroll then requires TLS and checks the server's \
             certificate against --postgres-ca), or pass --allow-plaintext-postgres if the \
             network in between is trusted"
        )),
        SslMode::Prefer if allow_plaintext => Ok(Transport::Tls),
        _ => {
            config.ssl_mode(SslMode::Require);
            Ok(Transport::Tls)
        }
    }
}

/// The rustls client configuration for PostgreSQL: the CAs of `ca_file`, ring, TLS 1.2
/// and 1.3, ALPN `postgresql` (what PostgreSQL 17 expects for direct TLS).
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let text = std::fs::read(ca_file).map_err(|e| {
        format!(
            "reading the PostgreSQL CA file {} (--postgres-ca): {e}",
            ca_file.display()
        )
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| {
            format!(
                "{} (--postgres-ca): not a PEM certificate file: {e}",
                ca_file.display()
            )
        })?;
        roots.add(cert).map_err(|e| {
            format!(
                "{} (--postgres-ca): a certificate rustls cannot use: {e}",
                ca_file.display()
            )
        })?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{} (--postgres-ca) holds no certificate: give the PEM file of the CA that signed \
             the PostgreSQL server's certificate",
            ca_file.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("setting up TLS for PostgreSQL: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// Makes verified TLS connections for the postgres client.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    /// A connector with this configuration ([`client_config`]).
    pub fn new(config: Arc<ClientConfig>) -> MakeRustls {
        MakeRustls { config }
    }
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        // The postgres client gives the host as written in the URL; an IPv6 literal may
        // still have its brackets.
        let host = domain.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("PostgreSQL host {domain:?} is not a name TLS can check: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One TLS connection about to be made.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let stream = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, socket)
                .await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point needs the certificate's signature hash, which would take
        // an X.509 parser; the certificate is verified instead, which is what binding
        // protects a SCRAM login against.
        ChannelBinding::none()
    }
}

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(url: &str, allow: bool) -> (Result<Transport, String>, SslMode) {
        let mut c: Config = url.parse().unwrap();
        let t = transport(&mut c, allow, "db");
        (t, c.get_ssl_mode())
    }

    #[test]
    fn local_hosts_follow_the_url_and_remote_ones_need_tls() {
        for local in [
            "postgres://u@127.0.0.1/k",
            "postgres://u@localhost:5433/k",
            "postgres://u@[::1]/k",
            "host=/run/postgresql user=u dbname=k",
        ] {
            assert_eq!(decide(local, false).0, Ok(Transport::Plain), "{local}");
        }
        assert_eq!(
            decide("postgres://u@127.0.0.1/k?sslmode=require", false).0,
            Ok(Transport::Tls)
        );
        let (t, mode) = decide("postgres://u@192.0.2.1/k", false);
        assert_eq!((t, mode), (Ok(Transport::Tls), SslMode::Require));
        let (t, _) = decide("postgres://u@db.example/k?sslmode=disable", false);
        let e = t.unwrap_err();
        assert!(
            e.contains("--allow-plaintext-postgres") && e.contains("refused"),
            "{e}"
        );
        assert_eq!(
            decide("postgres://u@db.example/k?sslmode=disable", true).0,
            Ok(Transport::Plain)
        );
        // A loopback hostaddr does not make a remote name local, nor the reverse.
        assert!(!is_local(
            &"host=db.example hostaddr=127.0.0.1 user=u".parse().unwrap()
        ));
        assert!(!is_local(
            &"host=localhost hostaddr=192.0.2.1 user=u".parse().unwrap()
        ));
    }

    #[test]
    fn the_ca_file_is_named_in_every_failure() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = client_config(&missing).unwrap_err();
        assert!(e.contains("nope.pem") && e.contains("--postgres-ca"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").unwrap();
        let e = client_config(&empty).unwrap_err();
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        assert!(client_config(&good).is_ok());
    }
}
