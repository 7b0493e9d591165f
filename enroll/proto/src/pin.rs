//! Pinned TLS: trust exactly the CA whose SubjectPublicKeyInfo hash the token carries.
//!
//! The server presents `[leaf, CA]`. A chain is accepted only when one of its certificates
//! has the pinned SPKI hash; the leaf is then verified by rustls's WebPKI verifier against
//! a root store that holds that one CA and nothing else, for the fixed name
//! [`SERVER_NAME`]. The system trust store is never consulted, and the host in the URL
//! plays no part in the check (it only says where to connect).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::token::to_hex;

/// The name every kiln-enroll leaf certificate carries (SAN DNS) and the client checks.
pub const SERVER_NAME: &str = "kiln-enroll";

/// Why a certificate's DER could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinError(pub String);

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed certificate DER: {}", self.0)
    }
}

impl std::error::Error for PinError {}

/// No certificate of the presented chain has the pinned SPKI hash. The verifier hands
/// this to rustls inside `CertificateError::Other`; [`PinMismatch::find`] gets it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    /// The pinned hash (hex).
    pub expected: String,
    /// The SPKI hash (hex) of each presented certificate, leaf first; a certificate
    /// whose DER could not be read shows as `unreadable (<why>)`.
    pub presented: Vec<String>,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no presented certificate has the pinned CA hash {} (presented: {})",
            self.expected,
            self.presented.join(", ")
        )
    }
}

impl std::error::Error for PinMismatch {}

impl PinMismatch {
    /// The pin mismatch inside a rustls error, if that is what the error is.
    pub fn find(err: &rustls::Error) -> Option<&PinMismatch> {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<PinMismatch>()
            }
            _ => None,
        }
    }
}

/// One DER element: the whole element and its contents.
struct Tlv<'a> {
    whole: &'a [u8],
    contents: &'a [u8],
}

/// Reads the DER element at the start of `input`; returns it and what follows.
fn read_tlv<'a>(input: &'a [u8], what: &str) -> Result<(Tlv<'a>, &'a [u8]), PinError> {
    let err = |why: &str| PinError(format!("{what}: {why}"));
    let (&tag, rest) = input
        .split_first()
        .ok_or_else(|| err("missing (input ends)"))?;
    if tag & 0x1f == 0x1f {
        // Certificates use only single-byte tags up to the SPKI.
        return Err(err("multi-byte tag"));
    }
    let (&first, mut rest) = rest.split_first().ok_or_else(|| err("length missing"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 {
            return Err(err("indefinite length (not DER)"));
        }
        if count > 4 {
            return Err(err("length longer than 4 bytes"));
        }
        if rest.len() < count {
            return Err(err("length bytes truncated"));
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return Err(err(&format!(
            "says {len} bytes of contents but only {} follow",
            rest.len()
        )));
    }
    let header = input.len() - rest.len();
    let (contents, after) = rest.split_at(len);
    let whole = &input[..header + len];
    Ok((Tlv { whole, contents }, after))
}

/// Reads the element at the start of `input` and checks its tag.
fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(Tlv<'a>, &'a [u8]), PinError> {
    // The tag first: "not a certificate at all" reads better than a length complaint.
    if let Some(&found) = input.first() {
        if found != tag {
            return Err(PinError(format!(
                "{what}: tag 0x{found:02x}, expected 0x{tag:02x}"
            )));
        }
    }
    read_tlv(input, what)
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0; // [0] EXPLICIT, constructed

/// The DER SubjectPublicKeyInfo element of a certificate (tag and length included).
pub fn spki_der(cert_der: &[u8]) -> Result<&[u8], PinError> {
    let (cert, trailing) = expect(cert_der, SEQUENCE, "Certificate")?;
    if !trailing.is_empty() {
        return Err(PinError(format!(
            "{} bytes after the Certificate",
            trailing.len()
        )));
    }
    let (tbs, _) = expect(cert.contents, SEQUENCE, "tbsCertificate")?;
    let mut rest = tbs.contents;
    if rest.first() == Some(&VERSION) {
        rest = read_tlv(rest, "version")?.1;
    }
    rest = expect(rest, INTEGER, "serialNumber")?.1;
    rest = expect(rest, SEQUENCE, "signature algorithm")?.1;
    rest = expect(rest, SEQUENCE, "issuer")?.1;
    rest = expect(rest, SEQUENCE, "validity")?.1;
    rest = expect(rest, SEQUENCE, "subject")?.1;
    let (spki, _) = expect(rest, SEQUENCE, "subjectPublicKeyInfo")?;
    Ok(spki.whole)
}

/// sha256 of the certificate's DER SubjectPublicKeyInfo.
pub fn spki_hash(cert_der: &[u8]) -> Result<[u8; 32], PinError> {
    Ok(Sha256::digest(spki_der(cert_der)?).into())
}

/// The ring provider every kiln client uses (the agent is built without aws-lc).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls client config that trusts only the CA with this SPKI hash (see the module
/// documentation). Connect with [`SERVER_NAME`] as the server name; the verifier checks
/// that name whatever the connection was given.
pub fn client_config(pin: [u8; 32]) -> Arc<rustls::ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier {
        pin,
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // The ring provider ships suites for both default versions: this cannot fail
        // at run time (a test builds the config).
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts a chain when it holds the pinned CA and the leaf verifies against it.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

fn other(err: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity).chain(intermediates);
        let mut presented = Vec::new();
        let mut ca = None;
        for cert in chain {
            match spki_hash(cert) {
                Ok(hash) => {
                    if hash == self.pin && ca.is_none() {
                        ca = Some(cert);
                    }
                    presented.push(to_hex(&hash));
                }
                Err(e) => presented.push(format!("unreadable ({e})")),
            }
        }
        let Some(ca) = ca else {
            return Err(other(PinMismatch {
                expected: to_hex(&self.pin),
                presented,
            }));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("pinned CA verifier: {e}")))?;
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| rustls::Error::General(format!("server name {SERVER_NAME}: {e}")))?;
        // No intermediates: the leaf must be issued by the pinned CA itself, so a chain
        // cannot smuggle in a sub-CA of its own.
        webpki.verify_server_cert(end_entity, &[], &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal, hand-built certificate-shaped DER (not a real certificate).
    fn fake_cert(with_version: bool) -> (Vec<u8>, Vec<u8>) {
        let spki = vec![0x30, 0x05, 0x30, 0x00, 0x03, 0x01, 0x00];
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend([0xa0, 0x03, 0x02, 0x01, 0x02]);
        }
        tbs.extend([0x02, 0x01, 0x01]); // serial
        tbs.extend([0x30, 0x00]); // algorithm
        tbs.extend([0x30, 0x00]); // issuer
        tbs.extend([0x30, 0x00]); // validity
        tbs.extend([0x30, 0x00]); // subject
        tbs.extend(&spki);
        let mut tbs_tlv = vec![0x30, tbs.len() as u8];
        tbs_tlv.extend(tbs);
        let mut inner = tbs_tlv;
        inner.extend([0x30, 0x00, 0x03, 0x01, 0x00]);
        let mut cert = vec![0x30, 0x81, inner.len() as u8];
        cert.extend(inner);
        (cert, spki)
    }

    #[test]
    fn finds_the_spki_with_and_without_version() {
        for v in [true, false] {
            let (cert, spki) = fake_cert(v);
            assert_eq!(spki_der(&cert).unwrap(), &spki[..]);
            assert_eq!(
                spki_hash(&cert).unwrap(),
                <[u8; 32]>::from(Sha256::digest(&spki))
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let (cert, _) = fake_cert(true);
        for n in 0..cert.len() {
            assert!(spki_hash(&cert[..n]).is_err(), "prefix {n}");
        }
        let mut long = cert.clone();
        long.push(0);
        assert!(spki_hash(&long)
            .unwrap_err()
            .0
            .contains("after the Certificate"));
        assert!(spki_hash(&[0x30, 0x80])
            .unwrap_err()
            .0
            .contains("indefinite"));
        assert!(spki_hash(&[0x30, 0x85, 1, 1, 1, 1, 1])
            .unwrap_err()
            .0
            .contains("longer than 4"));
        assert!(spki_hash(b"garbage").unwrap_err().0.contains("tag 0x67"));
    }

    #[test]
    fn flipped_bytes_never_panic() {
        let (cert, _) = fake_cert(true);
        for i in 0..cert.len() {
            for bit in 0..8 {
                let mut c = cert.clone();
                c[i] ^= 1 << bit;
                let _ = spki_hash(&c);
            }
        }
    }
}
