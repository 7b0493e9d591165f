//! Test harness: the real `kiln-enroll` binary on a temporary state (SQLite file or a
//! throwaway PostgreSQL), clients made with the pinned client from the proto crate, and
//! WireGuard keys made with x25519-dalek.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use kiln_enroll::pgtest::TempPostgres;
use kiln_enroll_proto::api::{EnrollRequest, ErrorBody};
use kiln_enroll_proto::client::{Client, ClientError};
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::token::hex32;
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_kiln-enroll");

/// Which database the state lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A state URL and what keeps it alive.
pub struct State {
    pub url: String,
    pub dir: tempfile::TempDir,
    pg: Option<Arc<TempPostgres>>,
}

impl State {
    pub fn new(backend: Backend) -> State {
        let dir = tempfile::Builder::new()
            .prefix("kiln-enroll-it")
            .tempdir()
            .unwrap();
        match backend {
            Backend::Sqlite => State {
                // In a folder kiln-enroll makes (0700): it refuses a state folder others
                // can read, and tempfile's folders are 0755.
                url: format!(
                    "sqlite:{}",
                    dir.path().join("state").join("state.db").display()
                ),
                dir,
                pg: None,
            },
            Backend::Postgres => {
                // Fail, never skip: the suite must prove both backends.
                let pg = TempPostgres::start()
                    .unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e}"));
                let url = pg.database("kiln").unwrap();
                State {
                    url,
                    dir,
                    pg: Some(Arc::new(pg)),
                }
            }
        }
    }

    /// Another, independent state on the same backend (a second server).
    pub fn sibling(&self, name: &str) -> State {
        let dir = tempfile::Builder::new()
            .prefix("kiln-enroll-it")
            .tempdir()
            .unwrap();
        match &self.pg {
            None => State {
                // In a folder kiln-enroll makes (0700): it refuses a state folder others
                // can read, and tempfile's folders are 0755.
                url: format!(
                    "sqlite:{}",
                    dir.path().join("state").join("state.db").display()
                ),
                dir,
                pg: None,
            },
            Some(pg) => State {
                url: pg.database(name).unwrap(),
                dir,
                pg: Some(pg.clone()),
            },
        }
    }

    /// Runs `kiln-enroll --state URL ARGS...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--state")
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "kiln-enroll {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `token create ARGS` → the token text.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "create"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        let t = out.trim().to_string();
        assert!(t.starts_with("KLN1") && !t.contains('\n'), "{out:?}");
        t
    }

    pub fn nodes(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["node", "list", "--json"])).unwrap()
    }

    pub fn tokens(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["token", "list", "--json"])).unwrap()
    }
}

/// A running `kiln-enroll serve`; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub hash: [u8; 32],
    pub log: std::path::PathBuf,
}

impl Server {
    pub fn start(state: &State, args: &[&str]) -> Server {
        Server::start_at(state, "127.0.0.1:0", args)
    }

    pub fn start_at(state: &State, listen: &str, args: &[&str]) -> Server {
        let log = state.dir.path().join(format!(
            "server-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut child = Command::new(BIN)
            .arg("--state")
            .arg(&state.url)
            .args(["serve", "--listen", listen])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "no ready line; server log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let rest = line
            .strip_prefix("kiln-enroll: listening on https://")
            .unwrap_or_else(|| panic!("ready line {line:?}"));
        let (addr, hash) = rest.split_once(" ca-hash ").unwrap();
        Server {
            child,
            addr: addr.parse().unwrap(),
            hash: hex32(hash).unwrap(),
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url(), self.hash)
            .unwrap()
            .with_timeout(Duration::from_secs(30))
    }

    /// SIGKILL, as a power cut or the OOM killer would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node's key pair and credential, made from a seed so failures reproduce.
pub struct NodeKeys {
    pub public: PublicKey,
    pub credential: String,
}

pub fn node_keys(seed: &str) -> NodeKeys {
    let bytes: [u8; 32] = Sha256::digest(format!("key:{seed}")).into();
    let secret = x25519_dalek::StaticSecret::from(bytes);
    let public = x25519_dalek::PublicKey::from(&secret).to_bytes();
    let c: [u8; 32] = Sha256::digest(format!("cred:{seed}")).into();
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
    NodeKeys {
        public: PublicKey(public),
        credential: c
            .iter()
            .map(|b| char::from(alphabet[usize::from(*b) % 36]))
            .collect(),
    }
}

pub fn request(token: &str, keys: &NodeKeys, hostname: &str) -> EnrollRequest {
    EnrollRequest {
        token: token.to_string(),
        public_key: keys.public,
        credential: keys.credential.clone(),
        hostname: hostname.to_string(),
        arch: "x86_64".to_string(),
        endpoints: vec!["192.168.7.2:51820".parse().unwrap()],
        public_endpoint: None,
        listen_port: 51820,
    }
}

/// The server's refusal, or a panic naming what came instead.
pub fn refusal<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, ErrorBody) {
    match r {
        Err(ClientError::Refused { status, body }) => (status, body),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A raw TLS connection to the server (pinned like a node), for requests the client
/// would never send.
pub fn raw_tls(server: &Server) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = kiln_enroll_proto::pin::client_config(server.hash);
    let name = rustls_pki_types::ServerName::try_from("kiln-enroll").unwrap();
    let conn = rustls::ClientConnection::new(config, name).unwrap();
    let sock = TcpStream::connect(server.addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Sends raw bytes over pinned TLS; the status line and body of the answer.
pub fn raw_request(server: &Server, bytes: &[u8]) -> (u16, String) {
    let mut s = raw_tls(server);
    s.write_all(bytes).unwrap();
    s.flush().unwrap();
    read_answer(&mut s)
}

pub fn read_answer(s: &mut impl Read) -> (u16, String) {
    let mut out = Vec::new();
    // The server closes after the answer; a missing close_notify is not the test's concern.
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    (status, body)
}
