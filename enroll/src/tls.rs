//! The TLS side of the server: rustls with ring, presenting the chain [leaf, CA] so that a
//! node, which knows only the CA's SPKI hash from its token, finds the CA in the chain,
//! checks its hash and verifies the leaf against it.

use std::sync::Arc;

use rustls::ServerConfig;

use crate::ca::{Ca, Leaf};

/// rustls refused the certificate or key (a bug: both come from [`crate::ca`]).
#[derive(Debug, thiserror::Error)]
#[error("setting up TLS with the issued certificate: {0}")]
pub struct TlsError(String);

/// A server configuration presenting `leaf` followed by the CA certificate.
pub fn server_config(ca: &Ca, leaf: Leaf) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert, ca.cert().clone()], leaf.key)
        .map_err(|e| TlsError(e.to_string()))?;
    Ok(Arc::new(config))
}
