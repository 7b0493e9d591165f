//! The cluster commands' own logic: reading and checking what `kiln-enroll cluster init`
//! is given (errors name the flag or file), generating k3s tokens, and what `cluster
//! show` prints. Secrets never leave through here: `show` prints `<set>` in their place.

use std::io::Read;
use std::path::Path;

use kiln_enroll_proto::token::to_hex;
use kiln_enroll_proto::validate::{self, parse_host_port};
use serde::Serialize;

use crate::random;
use crate::store::{logic, Cluster, NodeRecord};

/// Random bytes in a generated k3s token (48 hex characters).
pub const GENERATED_TOKEN_BYTES: usize = 24;

/// A checked cluster input that failed: the flag or file and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct InputError {
    /// `--flag` or `--flag PATH`.
    pub what: String,
    /// What is wrong and what to do.
    pub why: String,
}

fn input_error(what: impl Into<String>, why: impl Into<String>) -> InputError {
    InputError {
        what: what.into(),
        why: why.into(),
    }
}

/// A new random k3s token from the OS (48 hex characters).
pub fn generate_token() -> Result<String, InputError> {
    let bytes = random::bytes::<GENERATED_TOKEN_BYTES>()
        .map_err(|e| input_error("generating a token", e.to_string()))?;
    Ok(to_hex(&bytes))
}

/// Reads a secret from `path` (given with `flag`): the whole file, surrounding blanks
/// and line breaks trimmed, then checked with `check`. The error names flag and file
/// but never the secret.
pub fn read_secret_file(
    flag: &str,
    path: &Path,
    check: fn(&str) -> Result<(), String>,
) -> Result<String, InputError> {
    let what = format!("{flag} {}", path.display());
    let mut text = String::new();
    std::fs::File::open(path)
        // A token is short; a huge file is a wrong path, not a token.
        .map(|f| f.take(16 * 1024))
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| {
            input_error(
                &what,
                format!("cannot read it ({e}): give a file holding just the token"),
            )
        })?;
    let secret = text.trim();
    check(secret).map_err(|why| {
        input_error(
            &what,
            format!("the token in it {why} (the file must hold just the token)"),
        )
    })?;
    Ok(secret.to_string())
}

/// `--server-url`: `https://HOST:PORT`.
pub fn parse_server_url(text: &str) -> Result<String, String> {
    validate::https_url(text)?;
    Ok(text.trim_end_matches('/').to_string())
}

/// `--endpoint`: `HOST:PORT` of the API server.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    parse_host_port(text).map_err(|why| format!("{why} (write HOST:PORT, e.g. 10.77.0.1:6443)"))?;
    Ok(text.to_string())
}

/// `--ca-cert-hash`: `sha256:` and 64 hex digits, kept lowercase.
pub fn parse_ca_cert_hash(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    validate::ca_cert_hash(&lower)?;
    Ok(lower)
}

/// `--certificate-key` and `--token` are checked here, not by the argument parser, so
/// that a bad secret is not echoed back in the error. Kept lowercase (both are
/// lowercase by definition, hex digits in any case).
pub fn check_flag_secret(
    flag: &str,
    text: &str,
    check: fn(&str) -> Result<(), String>,
) -> Result<String, InputError> {
    check(text).map_err(|why| input_error(flag, format!("the value {why}")))?;
    Ok(text.to_ascii_lowercase())
}

/// What `cluster show` prints (`--json` prints it as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterShow {
    /// `k3s` or `kubeadm`.
    pub kind: &'static str,
    /// k3s: the URL nodes join (given, or the first server's); None while no server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
    /// k3s: where the URL comes from: `--server-url`, `first-server` or `none-yet`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_url_source: Option<&'static str>,
    /// k3s: the node that started the cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_server: Option<String>,
    /// k3s: whether that node has been revoked since (its URL is still handed out).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub first_server_revoked: bool,
    /// kubeadm: the API server endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// kubeadm: the CA pins.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ca_cert_hashes: Vec<String>,
    /// Always `<set>`: the token itself is never shown.
    pub token: &'static str,
    /// k3s: always `<set>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<&'static str>,
    /// kubeadm: `<set>` or `not set`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<&'static str>,
}

const SET: &str = "<set>";

/// The view of `cluster`; `first` is its first server's record when it has one.
pub fn show(cluster: &Cluster, first: Option<&NodeRecord>) -> ClusterShow {
    let mut out = ClusterShow {
        kind: cluster.kind(),
        server_url: None,
        server_url_source: None,
        first_server: None,
        first_server_revoked: false,
        endpoint: None,
        ca_cert_hashes: Vec::new(),
        token: SET,
        agent_token: None,
        certificate_key: None,
    };
    match cluster {
        Cluster::K3s(k) => {
            out.agent_token = Some(SET);
            out.first_server = k.init_node.clone();
            out.first_server_revoked = first.is_some_and(|n| n.revoked);
            (out.server_url, out.server_url_source) = match (&k.server_url, first) {
                (Some(url), _) => (Some(url.clone()), Some("--server-url")),
                (None, Some(n)) => (Some(logic::k3s_url(n)), Some("first-server")),
                (None, None) => (None, Some("none-yet")),
            };
        }
        Cluster::Kubeadm(k) => {
            out.endpoint = Some(k.endpoint.clone());
            out.ca_cert_hashes = k.ca_cert_hashes.clone();
            out.certificate_key = Some(if k.certificate_key.is_some() {
                SET
            } else {
                "not set"
            });
        }
    }
    out
}

/// `cluster show` as aligned text lines.
pub fn show_text(s: &ClusterShow) -> String {
    let mut rows: Vec<(&str, String)> = vec![("kind", s.kind.to_string())];
    if s.kind == "k3s" {
        let url = match (s.server_url.as_deref(), s.server_url_source) {
            (Some(u), Some("--server-url")) => format!("{u} (given with --server-url)"),
            (Some(u), _) => format!(
                "{u} (first server {}{})",
                s.first_server.as_deref().unwrap_or("?"),
                if s.first_server_revoked {
                    ", revoked since: its URL is still handed out"
                } else {
                    ""
                }
            ),
            (None, _) => "none yet: the first server node to enroll starts the cluster".into(),
        };
        rows.push(("server url", url));
        rows.push(("token", s.token.to_string()));
        rows.push(("agent token", SET.to_string()));
    } else {
        rows.push(("endpoint", s.endpoint.clone().unwrap_or_default()));
        for h in &s.ca_cert_hashes {
            rows.push(("ca cert hash", h.clone()));
        }
        rows.push(("token", s.token.to_string()));
        let key = match s.certificate_key {
            Some(SET) => SET.to_string(),
            _ => "not set (only workers can join)".to_string(),
        };
        rows.push(("certificate key", key));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:width$}  {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{K3sCluster, KubeadmCluster};

    #[test]
    fn show_never_carries_secrets() {
        let k = Cluster::K3s(K3sCluster {
            server_url: None,
            init_node: None,
            token: "SERVERSECRET".into(),
            agent_token: "AGENTSECRET".into(),
        });
        let s = show(&k, None);
        let text = show_text(&s) + &serde_json::to_string(&s).unwrap();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("none yet"), "{text}");
        let c = Cluster::Kubeadm(KubeadmCluster {
            endpoint: "10.77.0.1:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32))],
            certificate_key: Some("cd".repeat(32)),
        });
        let s = show(&c, None);
        let text = show_text(&s) + &serde_json::to_string(&s).unwrap();
        assert!(!text.contains("0123456789abcdef") && !text.contains(&"cd".repeat(32)));
        assert!(text.contains(&"ab".repeat(32)), "{text}");
    }

    #[test]
    fn secret_files_are_trimmed_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "  s3cret-Token\n\n").unwrap();
        assert_eq!(
            read_secret_file("--token-file", &good, validate::secret).unwrap(),
            "s3cret-Token"
        );
        let spaced = dir.path().join("spaced");
        std::fs::write(&spaced, "two words\n").unwrap();
        let e = read_secret_file("--token-file", &spaced, validate::secret).unwrap_err();
        assert!(e
            .to_string()
            .starts_with(&format!("--token-file {}", spaced.display())));
        assert!(!e.to_string().contains("two words"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = read_secret_file("--agent-token-file", &empty, validate::secret).unwrap_err();
        assert!(e.to_string().contains("is empty"), "{e}");
        let e = read_secret_file("--token-file", &dir.path().join("nope"), validate::secret)
            .unwrap_err();
        assert!(e.to_string().contains("cannot read it"), "{e}");
        let t = generate_token().unwrap();
        assert_eq!(t.len(), 48);
        assert_ne!(t, generate_token().unwrap());
    }
}
