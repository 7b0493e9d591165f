//! The server's own certificate authority: made once (on the first start, or the first
//! `token create`/`ca hash`), kept in the state through [`Store::ca`] so every replica
//! presents the same trust anchor, and a fresh leaf certificate issued at every start.
//!
//! Nodes pin the CA by the sha256 of its SubjectPublicKeyInfo (carried in every token), so
//! the leaf can change freely: it only has to chain to that CA under the fixed name
//! [`SERVER_NAME`].

use std::time::Duration;

use kiln_contract::names::check_hostname;
use kiln_enroll_proto::pin::{spki_hash, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::store::{CaPem, Store, StoreError};

/// Common name of the CA certificate.
pub const CA_COMMON_NAME: &str = "kiln-enroll CA";
/// How long the CA is valid: ten years (tokens pin it, so replacing it means new tokens).
pub const CA_VALIDITY_SECS: u64 = 10 * 365 * 24 * 3600;
/// How long a leaf is valid: one year (a new one is issued at every start anyway).
pub const LEAF_VALIDITY_SECS: u64 = 365 * 24 * 3600;
/// Certificates start an hour in the past so a node whose clock lags a little accepts them.
const BACKDATE_SECS: u64 = 3600;

/// Why the CA could not be made, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The state could not be read or written.
    #[error("reading or creating the CA in the state: {0}")]
    Store(#[from] StoreError),
    /// The CA stored in the state is unusable.
    #[error(
        "the CA stored in the state is unusable: {0}; the state was damaged or edited by hand \
         (restore it from a backup: a new CA would invalidate every token and node)"
    )]
    Stored(String),
    /// A name given with `--san` cannot go into a certificate.
    #[error("--san {name:?}: {why} (give a DNS name such as enroll.example.org or an IP address)")]
    BadSan {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        why: String,
    },
    /// Certificate generation failed (a bug or a broken crypto library).
    #[error("issuing a certificate: {0}")]
    Issue(String),
}

/// The CA, ready to issue leaves.
pub struct Ca {
    cert: CertificateDer<'static>,
    key: KeyPair,
    hash: [u8; 32],
}

/// A server certificate and its private key.
pub struct Leaf {
    /// DER of the leaf certificate.
    pub cert: CertificateDer<'static>,
    /// Its private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

/// The CA's subject and usage: the same parameters make the CA and, later, the issuer
/// that signs leaves (the issuer name in a leaf must match the CA's subject exactly).
fn ca_params(now: u64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(
        &mut p,
        now.saturating_sub(BACKDATE_SECS),
        now.saturating_add(CA_VALIDITY_SECS),
    );
    p
}

/// Sets a certificate's validity from unix seconds (rcgen's date type is only reachable
/// through its epoch helper, so it is never named here).
fn set_validity(p: &mut CertificateParams, from: u64, until: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    p.not_before = epoch + Duration::from_secs(from);
    p.not_after = epoch + Duration::from_secs(until);
}

/// Makes a new CA (ECDSA P-256, CN "kiln-enroll CA", ten years) as PEM.
pub fn generate(now: u64) -> Result<CaPem, String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating the CA key: {e}"))?;
    let cert = ca_params(now)
        .self_signed(&key)
        .map_err(|e| format!("self-signing the CA certificate: {e}"))?;
    Ok(CaPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Ca {
    /// The state's CA, made and stored first if there is none (every replica ends up with
    /// the one that was stored first).
    pub fn load(store: &dyn Store, now: u64) -> Result<Ca, CaError> {
        let pem = store.ca(&|| generate(now))?;
        Ca::from_pem(&pem)
    }

    /// Parses a stored CA and checks that its key belongs to its certificate.
    pub fn from_pem(pem: &CaPem) -> Result<Ca, CaError> {
        let cert = CertificateDer::from_pem_slice(pem.cert_pem.as_bytes())
            .map_err(|e| CaError::Stored(format!("the certificate is not PEM: {e}")))?;
        let key = KeyPair::from_pem(&pem.key_pem)
            .map_err(|e| CaError::Stored(format!("the private key is not PEM PKCS#8: {e}")))?;
        let hash = spki_hash(&cert)
            .map_err(|e| CaError::Stored(format!("the certificate does not parse: {e}")))?;
        let key_hash: [u8; 32] = Sha256::digest(key.subject_public_key_info()).into();
        if key_hash != hash {
            return Err(CaError::Stored(
                "the private key does not belong to the certificate".to_string(),
            ));
        }
        Ok(Ca { cert, key, hash })
    }

    /// sha256 of the CA certificate's DER SubjectPublicKeyInfo: what tokens carry.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// The CA certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Issues a server leaf for `kiln-enroll`, `localhost`, `127.0.0.1` and `extra_sans`
    /// (each an IP address or a DNS name), valid for a year from an hour ago.
    pub fn issue_leaf(&self, extra_sans: &[String], now: u64) -> Result<Leaf, CaError> {
        let mut sans = vec![
            SanType::DnsName(ia5(SERVER_NAME)?),
            SanType::DnsName(ia5("localhost")?),
            SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])),
        ];
        for name in extra_sans {
            let san = san(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, SERVER_NAME);
        p.distinguished_name = dn;
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        set_validity(
            &mut p,
            now.saturating_sub(BACKDATE_SECS),
            now.saturating_add(LEAF_VALIDITY_SECS),
        );
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Issue(format!("generating the leaf key: {e}")))?;
        let issuer = Issuer::new(ca_params(now), &self.key);
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| CaError::Issue(format!("signing the leaf: {e}")))?;
        Ok(Leaf {
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

fn ia5(name: &str) -> Result<rcgen::string::Ia5String, CaError> {
    rcgen::string::Ia5String::try_from(name).map_err(|e| CaError::BadSan {
        name: name.to_string(),
        why: e.to_string(),
    })
}

/// One `--san`: an IP address, or a DNS name (an RFC 1123 host name, optionally with a
/// leading `*.`).
fn san(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // The host name rules the agent applies to its own name (kiln_contract::names);
    // a certificate may also cover every name one level down (`*.`).
    let host = name.strip_prefix("*.").unwrap_or(name);
    check_hostname(host).map_err(|problem| CaError::BadSan {
        name: name.to_string(),
        why: format!("not a DNS name: {problem}"),
    })?;
    Ok(SanType::DnsName(ia5(&name.to_ascii_lowercase())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const NOW: u64 = 1_750_000_000;

    fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("openssl must be installed (the independent referee)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl {args:?} failed");
        out.stdout
    }

    fn to_pem(der: &[u8]) -> Vec<u8> {
        openssl(&["x509", "-inform", "der", "-outform", "pem"], der)
    }

    #[test]
    fn ca_hash_matches_openssl() {
        let pem = generate(NOW).unwrap();
        let ca = Ca::from_pem(&pem).unwrap();
        let pubkey = openssl(&["x509", "-pubkey", "-noout"], pem.cert_pem.as_bytes());
        let der = openssl(&["pkey", "-pubin", "-outform", "der"], &pubkey);
        let want: [u8; 32] = Sha256::digest(&der).into();
        assert_eq!(ca.hash(), want);
        let text = String::from_utf8(openssl(
            &[
                "x509",
                "-noout",
                "-subject",
                "-ext",
                "basicConstraints,keyUsage",
            ],
            pem.cert_pem.as_bytes(),
        ))
        .unwrap();
        assert!(
            text.contains("CN = kiln-enroll CA") || text.contains("CN=kiln-enroll CA"),
            "{text}"
        );
        assert!(text.contains("CA:TRUE"), "{text}");
        assert!(text.contains("Certificate Sign"), "{text}");
    }

    #[test]
    fn leaf_verifies_against_the_ca_with_openssl() {
        let ca = Ca::from_pem(&generate(NOW).unwrap()).unwrap();
        let sans = vec!["10.0.2.100".to_string(), "Enroll.Example.org".to_string()];
        let leaf = ca.issue_leaf(&sans, NOW).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        let leaf_path = dir.path().join("leaf.pem");
        std::fs::write(&ca_path, to_pem(ca.cert())).unwrap();
        std::fs::write(&leaf_path, to_pem(&leaf.cert)).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-attime", &NOW.to_string(), "-CAfile"])
            .arg(&ca_path)
            .args(["-verify_hostname", SERVER_NAME])
            .arg(&leaf_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(
            Command::new("openssl")
                .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
                .arg(&leaf_path)
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for want in [
            "DNS:kiln-enroll",
            "DNS:localhost",
            "IP Address:127.0.0.1",
            "IP Address:10.0.2.100",
            "DNS:enroll.example.org",
        ] {
            assert!(text.contains(want), "{want} missing in {text}");
        }
        // Past the year the leaf is no longer valid.
        let late = (NOW + LEAF_VALIDITY_SECS + 2 * 3600).to_string();
        let out = Command::new("openssl")
            .args(["verify", "-attime", &late, "-CAfile"])
            .arg(&ca_path)
            .arg(&leaf_path)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }

    #[test]
    fn a_stored_ca_with_a_foreign_key_is_refused() {
        let a = generate(NOW).unwrap();
        let b = generate(NOW).unwrap();
        let mixed = CaPem {
            cert_pem: a.cert_pem,
            key_pem: b.key_pem.clone(),
        };
        let err = Ca::from_pem(&mixed).err().unwrap().to_string();
        assert!(err.contains("does not belong"), "{err}");
        let broken = CaPem {
            cert_pem: "junk".into(),
            key_pem: b.key_pem,
        };
        assert!(Ca::from_pem(&broken)
            .err()
            .unwrap()
            .to_string()
            .contains("not PEM"));
    }

    #[test]
    fn bad_sans_are_refused_with_the_name() {
        let ca = Ca::from_pem(&generate(NOW).unwrap()).unwrap();
        for bad in ["", "a b", "-x.org", "x..org", "ü.org"] {
            let err = ca
                .issue_leaf(&[bad.to_string()], NOW)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(&format!("--san {bad:?}")), "{err}");
        }
    }
}
