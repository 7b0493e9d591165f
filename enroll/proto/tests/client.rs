//! The pinned client against a real rustls server on loopback, with test CAs from rcgen,
//! and `spki_hash` against openssl as the referee.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use kiln_enroll_proto::api::{
    ClusterJoin, EnrollAnswer, EnrollRequest, ErrorBody, ErrorCode, HeartbeatAnswer,
    HeartbeatRequest, Join, K3sJoin, Network, NodeInfo, PeerList, Role,
};
use kiln_enroll_proto::client::{Client, ClientError, NodeAuth};
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::pin::{spki_hash, SERVER_NAME};
use kiln_enroll_proto::token::to_hex;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA: its certificate and the issuer that signs leaves.
struct Ca {
    cert: CertificateDer<'static>,
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p
}

fn make_ca_with(cn: &str, alg: &'static SignatureAlgorithm) -> Ca {
    let key = KeyPair::generate_for(alg).unwrap();
    let params = ca_params(cn);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn make_ca(cn: &str) -> Ca {
    make_ca_with(cn, &rcgen::PKCS_ECDSA_P256_SHA256)
}

/// A server identity: chain and key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn leaf(ca: &Ca, sans: &[&str], expired: bool) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "leaf");
    if expired {
        p.not_before = date_time_ymd(2001, 1, 1);
        p.not_after = date_time_ymd(2002, 1, 1);
    }
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().clone(), key)
}

fn identity(chain: Vec<CertificateDer<'static>>, key: &KeyPair) -> Identity {
    Identity {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

/// The kiln shape: [leaf (SAN kiln-enroll), CA].
fn good_identity(ca: &Ca) -> Identity {
    let (cert, key) = leaf(ca, &[SERVER_NAME], false);
    identity(vec![cert, ca.cert.clone()], &key)
}

fn pin_of(ca: &Ca) -> [u8; 32] {
    spki_hash(&ca.cert).unwrap()
}

/// Serves one TLS connection: reads one request, writes `answer` raw, closes. The
/// handle yields the request (head and body) or None when the handshake failed.
fn serve(id: Identity, answer: Vec<u8>) -> (SocketAddr, JoinHandle<Option<String>>) {
    serve_at("127.0.0.1:0", id, answer)
}

fn serve_at(bind: &str, id: Identity, answer: Vec<u8>) -> (SocketAddr, JoinHandle<Option<String>>) {
    let listener = TcpListener::bind(bind).unwrap();
    let addr = listener.local_addr().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(id.chain, id.key)
        .unwrap();
    let config = Arc::new(config);
    let handle = thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut reader = BufReader::new(&mut tls);
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        drop(reader);
        tls.write_all(&answer).unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
        Some(head + &String::from_utf8(body).unwrap())
    });
    (addr, handle)
}

fn http_answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn url(addr: SocketAddr) -> String {
    format!("https://127.0.0.1:{}", addr.port())
}

fn key(b: u8) -> PublicKey {
    PublicKey([b; 32])
}

fn enroll_request() -> EnrollRequest {
    EnrollRequest {
        token: format!("KLN1{}::abc123.{}", "ab".repeat(32), "s".repeat(32)),
        public_key: key(1),
        credential: "c".repeat(32),
        hostname: "node-a".into(),
        arch: "x86_64".into(),
        endpoints: vec!["192.168.1.5:51820".parse().unwrap()],
        public_endpoint: None,
        listen_port: 51820,
    }
}

fn enroll_answer() -> EnrollAnswer {
    EnrollAnswer {
        node: NodeInfo {
            name: "node-a".into(),
            address_v4: "10.77.0.1/16".parse().unwrap(),
            address_v6: "fd12:3456:789a::1/64".parse().unwrap(),
        },
        network: Network {
            pool_v4: "10.77.0.0/16".parse().unwrap(),
            pool_v6: "fd12:3456:789a::/64".parse().unwrap(),
            mtu: 1420,
            keepalive_secs: 25,
        },
        peers: PeerList {
            version: 1,
            peers: vec![],
        },
        heartbeat_secs: 30,
        cluster: ClusterJoin {
            role: Role::Worker,
            labels: BTreeMap::new(),
            join: None,
        },
    }
}

/// Enrolls against a server with `id`, pinning `pin`; returns the error.
fn enroll_err(id: Identity, pin: [u8; 32]) -> ClientError {
    let body = serde_json::to_string(&enroll_answer()).unwrap();
    let (addr, handle) = serve(id, http_answer("200 OK", &body));
    let err = Client::new(&url(addr), pin)
        .unwrap()
        .with_timeout(Duration::from_secs(10))
        .enroll(&enroll_request())
        .unwrap_err();
    assert!(handle.join().unwrap().is_none(), "the server saw a request");
    err
}

#[test]
fn the_right_pin_enrolls_and_the_request_is_what_was_sent() {
    let ca = make_ca("kiln test CA");
    let want = enroll_answer();
    let (addr, handle) = serve(
        good_identity(&ca),
        http_answer("200 OK", &serde_json::to_string(&want).unwrap()),
    );
    // `localhost`: the URL host is where to connect, not the name checked.
    let client = Client::new(&format!("https://localhost:{}/", addr.port()), pin_of(&ca)).unwrap();
    let got = client.enroll(&enroll_request()).unwrap();
    assert_eq!(got, want);
    let req = handle.join().unwrap().unwrap();
    assert!(req.starts_with("POST /v1/enroll HTTP/1.1\r\n"), "{req}");
    assert!(
        req.contains(&format!("Host: localhost:{}\r\n", addr.port())),
        "{req}"
    );
    assert!(req.contains("Connection: close\r\n"), "{req}");
    assert!(!req.to_ascii_lowercase().contains("authorization"), "{req}");
    let body = req.split("\r\n\r\n").nth(1).unwrap();
    let sent: EnrollRequest = serde_json::from_str(body).unwrap();
    assert_eq!(sent, enroll_request());
}

#[test]
fn node_calls_carry_bearer_auth_and_the_long_poll_query() {
    let ca = make_ca("kiln test CA");
    let auth = NodeAuth {
        name: "node-a".into(),
        credential: "x".repeat(32),
    };
    let peers = PeerList {
        version: 7,
        peers: vec![],
    };
    let (addr, handle) = serve(
        good_identity(&ca),
        http_answer("200 OK", &serde_json::to_string(&peers).unwrap()),
    );
    let client = Client::new(&url(addr), pin_of(&ca)).unwrap();
    assert_eq!(client.peers(&auth, 6, 0).unwrap(), peers);
    let req = handle.join().unwrap().unwrap();
    assert!(
        req.starts_with("GET /v1/peers?since=6&wait=0 HTTP/1.1\r\n"),
        "{req}"
    );
    let bearer = format!("Authorization: Bearer node-a.{}\r\n", "x".repeat(32));
    assert!(req.contains(&bearer), "{req}");

    let hb_answer = HeartbeatAnswer {
        heartbeat_secs: 30,
        peers_version: 7,
    };
    let (addr, handle) = serve(
        good_identity(&ca),
        http_answer("200 OK", &serde_json::to_string(&hb_answer).unwrap()),
    );
    let hb = HeartbeatRequest {
        endpoints: vec!["10.0.0.2:51820".parse().unwrap()],
        public_endpoint: Some("203.0.113.9:51820".into()),
        observations: vec![],
    };
    let client = Client::new(&url(addr), pin_of(&ca)).unwrap();
    assert_eq!(client.heartbeat(&auth, &hb).unwrap(), hb_answer);
    let req = handle.join().unwrap().unwrap();
    assert!(req.starts_with("POST /v1/heartbeat HTTP/1.1\r\n"), "{req}");
    assert!(req.contains(&bearer), "{req}");
    let sent: HeartbeatRequest =
        serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(sent, hb);
}

#[test]
fn the_cluster_call_is_an_authenticated_get_and_decodes_the_join() {
    let ca = make_ca("kiln test CA");
    let auth = NodeAuth {
        name: "node-s".into(),
        credential: "y".repeat(32),
    };
    let want = ClusterJoin {
        role: Role::Server,
        labels: BTreeMap::from([("kiln.dev/pool".to_string(), "edge".to_string())]),
        join: Some(Join::K3s(K3sJoin {
            server_url: Some("https://10.77.0.1:6443".into()),
            init: false,
            token: "server-secret".into(),
            agent_token: Some("agent-secret".into()),
        })),
    };
    let (addr, handle) = serve(
        good_identity(&ca),
        http_answer("200 OK", &serde_json::to_string(&want).unwrap()),
    );
    let client = Client::new(&url(addr), pin_of(&ca)).unwrap();
    assert_eq!(client.cluster(&auth).unwrap(), want);
    let req = handle.join().unwrap().unwrap();
    assert!(req.starts_with("GET /v1/cluster HTTP/1.1\r\n"), "{req}");
    let bearer = format!("Authorization: Bearer node-s.{}\r\n", "y".repeat(32));
    assert!(req.contains(&bearer), "{req}");
    assert!(req.ends_with("\r\n\r\n"), "a GET carries no body: {req:?}");

    // No cluster yet: `join` is left out of the JSON and decodes as None.
    let (addr, handle) = serve(
        good_identity(&ca),
        http_answer("200 OK", r#"{"role":"worker","labels":{}}"#),
    );
    let got = Client::new(&url(addr), pin_of(&ca))
        .unwrap()
        .cluster(&auth)
        .unwrap();
    handle.join().unwrap().unwrap();
    assert_eq!((got.role, got.join), (Role::Worker, None));

    // A revoked node's refusal comes back as the server's error body.
    let eb = ErrorBody::new(ErrorCode::NodeRevoked, "node node-s was revoked");
    let (addr, handle) = serve(
        good_identity(&ca),
        http_answer("403 Forbidden", &serde_json::to_string(&eb).unwrap()),
    );
    let err = Client::new(&url(addr), pin_of(&ca))
        .unwrap()
        .cluster(&auth)
        .unwrap_err();
    handle.join().unwrap().unwrap();
    assert!(
        matches!(&err, ClientError::Refused { status: 403, body } if *body == eb),
        "{err:?}"
    );
    assert!(!err.retryable());
}

#[test]
fn ipv6_literal_urls_connect() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here; skipping");
        return;
    }
    let ca = make_ca("kiln test CA");
    let hb_answer = HeartbeatAnswer {
        heartbeat_secs: 30,
        peers_version: 1,
    };
    let (addr, handle) = serve_at(
        "[::1]:0",
        good_identity(&ca),
        http_answer("200 OK", &serde_json::to_string(&hb_answer).unwrap()),
    );
    let auth = NodeAuth {
        name: "n".into(),
        credential: "c".into(),
    };
    let hb = HeartbeatRequest {
        endpoints: vec![],
        public_endpoint: None,
        observations: vec![],
    };
    let got = Client::new(&format!("https://[::1]:{}", addr.port()), pin_of(&ca))
        .unwrap()
        .heartbeat(&auth, &hb)
        .unwrap();
    assert_eq!(got, hb_answer);
    let req = handle.join().unwrap().unwrap();
    assert!(
        req.contains(&format!("Host: [::1]:{}\r\n", addr.port())),
        "{req}"
    );
}

#[test]
fn a_server_with_another_ca_is_a_pin_mismatch() {
    let real = make_ca("kiln test CA");
    let mitm = make_ca("kiln test CA");
    let id = good_identity(&mitm);
    let presented: Vec<String> = id
        .chain
        .iter()
        .map(|c| to_hex(&spki_hash(c).unwrap()))
        .collect();
    let err = enroll_err(id, pin_of(&real));
    match &err {
        ClientError::PinMismatch {
            expected,
            presented: got,
        } => {
            assert_eq!(*expected, to_hex(&pin_of(&real)));
            assert_eq!(*got, presented);
        }
        other => panic!("expected PinMismatch, got {other:?}"),
    }
    assert!(!err.retryable());
    let text = err.to_string();
    assert!(
        text.contains(&to_hex(&pin_of(&real))) && text.contains("not the server"),
        "{text}"
    );
}

#[test]
fn a_leaf_without_the_kiln_enroll_name_fails() {
    let ca = make_ca("kiln test CA");
    let (cert, key) = leaf(&ca, &["enroll.example.com"], false);
    let err = enroll_err(identity(vec![cert, ca.cert.clone()], &key), pin_of(&ca));
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    assert!(!err.retryable());
    let text = err.to_string();
    assert!(text.contains("not valid for name"), "{text}");
    assert!(text.contains("not made out to kiln-enroll"), "{text}");
}

#[test]
fn a_leaf_from_another_key_with_the_pinned_ca_as_intermediate_fails() {
    let ca = make_ca("kiln test CA");
    // Same name as the real CA, another key: only the signature can tell them apart.
    let rogue = make_ca("kiln test CA");
    let (cert, key) = leaf(&rogue, &[SERVER_NAME], false);
    let err = enroll_err(identity(vec![cert, ca.cert.clone()], &key), pin_of(&ca));
    assert!(matches!(err, ClientError::Tls(_)), "{err:?}");
    // And with the rogue CA in the chain as well: the leaf still is not the pinned CA's.
    let (cert, key) = leaf(&rogue, &[SERVER_NAME], false);
    let err2 = enroll_err(
        identity(vec![cert, rogue.cert.clone(), ca.cert.clone()], &key),
        pin_of(&ca),
    );
    assert!(matches!(err2, ClientError::Tls(_)), "{err2:?}");
    for e in [err, err2] {
        let t = e.to_string().to_ascii_lowercase();
        assert!(
            t.contains("badsignature") || t.contains("unknownissuer"),
            "{t}"
        );
        assert!(t.contains("not issued by the ca the token pins"), "{t}");
    }
}

#[test]
fn an_expired_leaf_fails_and_may_be_retried_once_the_clock_is_right() {
    let ca = make_ca("kiln test CA");
    let (cert, key) = leaf(&ca, &[SERVER_NAME], true);
    let err = enroll_err(identity(vec![cert, ca.cert.clone()], &key), pin_of(&ca));
    assert!(matches!(err, ClientError::CertTime(_)), "{err:?}");
    assert!(err.retryable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("expired") && text.contains("outside its validity"),
        "{text}"
    );
}

#[test]
fn error_bodies_are_decoded() {
    let ca = make_ca("kiln test CA");
    for (code, message) in [
        (ErrorCode::TokenUsedUp, "token abc123 has no uses left"),
        (ErrorCode::Unavailable, "database down"),
    ] {
        let mut eb = ErrorBody::new(code, message);
        if code == ErrorCode::Unavailable {
            eb.retry_after_secs = Some(5);
        }
        let status = format!("{} X", code.status());
        let (addr, handle) = serve(
            good_identity(&ca),
            http_answer(&status, &serde_json::to_string(&eb).unwrap()),
        );
        let err = Client::new(&url(addr), pin_of(&ca))
            .unwrap()
            .enroll(&enroll_request())
            .unwrap_err();
        handle.join().unwrap().unwrap();
        match &err {
            ClientError::Refused { status, body } => {
                assert_eq!(*status, code.status());
                assert_eq!(*body, eb);
            }
            other => panic!("expected Refused, got {other:?}"),
        }
        assert_eq!(err.retryable(), code.retryable());
        assert!(err.to_string().contains(message), "{err}");
    }
}

#[test]
fn garbage_answers_are_bad_answers_or_http_errors() {
    let ca = make_ca("kiln test CA");
    let long_html = format!("<html>{}</html>", "proxy error ".repeat(40));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (http_answer("200 OK", "not json"), "BadAnswer"),
        (
            http_answer("200 OK", r#"{"version":1,"peers":[],"x":1}"#),
            "BadAnswer",
        ),
        (http_answer("502 Bad Gateway", &long_html), "BadAnswer"),
        (b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(), "Http"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n".to_vec(),
            "Http",
        ),
    ];
    for (answer, want) in cases {
        let (addr, handle) = serve(good_identity(&ca), answer.clone());
        let err = Client::new(&url(addr), pin_of(&ca))
            .unwrap()
            .enroll(&enroll_request())
            .unwrap_err();
        handle.join().unwrap().unwrap();
        let kind = match &err {
            ClientError::BadAnswer(_) => "BadAnswer",
            ClientError::Http(_) => "Http",
            _ => "other",
        };
        assert_eq!(kind, want, "{}: {err}", String::from_utf8_lossy(&answer));
        assert!(!err.retryable());
        let text = err.to_string();
        assert!(text.contains("POST https://127.0.0.1"), "{text}");
        if answer.starts_with(b"HTTP/1.1 502") {
            assert!(
                text.contains("HTTP 502") && text.contains("proxy error"),
                "{text}"
            );
            assert!(text.len() < 500, "the excerpt is not cut: {text}");
        }
    }
}

#[test]
fn a_silent_server_times_out_and_is_retryable() {
    let ca = make_ca("kiln test CA");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let start = Instant::now();
    let err = Client::new(&url(addr), pin_of(&ca))
        .unwrap()
        .with_timeout(Duration::from_millis(500))
        .enroll(&enroll_request())
        .unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(err, ClientError::Io(_)), "{err:?}");
    assert!(err.retryable());
    assert!(err.to_string().contains("timed out"), "{err}");
    hold.join().unwrap();
}

#[test]
fn nothing_listening_is_a_retryable_connect_error() {
    let ca = make_ca("kiln test CA");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = Client::new(&format!("https://127.0.0.1:{port}"), pin_of(&ca))
        .unwrap()
        .enroll(&enroll_request())
        .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    assert!(err.retryable());
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// `openssl x509 -pubkey -noout -in ca.pem | openssl pkey -pubin -outform der | sha256sum`
fn openssl_spki_hash(pem_path: &std::path::Path) -> String {
    let script = format!(
        "set -e -o pipefail; openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | sha256sum",
        pem_path.display()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash must be installed to run openssl");
    assert!(
        out.status.success(),
        "openssl failed (is the `openssl` package installed? apt-get install openssl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_string()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    kiln_enroll_proto::base64::decode(&b64).unwrap()
}

#[test]
fn spki_hash_equals_openssls() {
    let which = Command::new("openssl").arg("version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "this test needs openssl as the referee: apt-get install openssl"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut pems = Vec::new();
    for (name, alg) in [
        ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
        ("ed25519", &rcgen::PKCS_ED25519),
    ] {
        pems.push((name.to_string(), make_ca_with(name, alg).pem));
    }
    // An RSA certificate made by openssl itself: another writer, another key type.
    let rsa_pem = dir.path().join("rsa.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rsa",
        ])
        .arg("-keyout")
        .arg(dir.path().join("rsa.key"))
        .arg("-out")
        .arg(&rsa_pem)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pems.push(("rsa".into(), std::fs::read_to_string(&rsa_pem).unwrap()));
    for (name, pem) in pems {
        let path = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&path, &pem).unwrap();
        let ours = to_hex(&spki_hash(&pem_to_der(&pem)).unwrap());
        assert_eq!(ours, openssl_spki_hash(&path), "{name}");
    }
}
