//! Enrollment throughput for `make bench`: the release `kiln-enroll` on SQLite or
//! PostgreSQL on this host's loopback, 1,000 simulated nodes enrolling through the
//! pinned client at a fixed concurrency, a floor of as many bare TLS handshakes with a
//! request the server answers 404 (what TLS and HTTP cost alone), and the watch
//! fan-out: every node long-polling the peer list at once, the time until all of them
//! saw one new enrollment.

use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln_enroll_proto::api::{EnrollRequest, PeerList, MAX_ANSWER_BODY, PATH_PEERS};
use kiln_enroll_proto::client::{Client, NodeAuth};
use kiln_enroll_proto::http::{self, Request};
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::pin::{self, SERVER_NAME};
use kiln_enroll_proto::token::{secret_hash, Token, ALPHABET};

use kiln_qemu_tests::enroll_server::{binary, parse_ready_line, Ready};

/// Per-call timeout of the bench's clients.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Latency figures of one batch of calls.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batch {
    /// Calls made.
    pub calls: usize,
    /// Wall time of the whole batch, seconds.
    pub wall_secs: f64,
    /// Calls per second over the wall time.
    pub per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
}

impl Batch {
    /// Figures from the wall time and every call's latency.
    pub fn from_latencies(wall: Duration, mut lat: Vec<Duration>) -> Batch {
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let pct = |p: usize| -> f64 {
            if lat.is_empty() {
                return f64::NAN;
            }
            // Nearest rank: the smallest value with at least p% at or below it.
            let rank = (lat.len() * p).div_ceil(100).max(1);
            ms(lat[rank - 1])
        };
        let wall_secs = wall.as_secs_f64();
        Batch {
            calls: lat.len(),
            wall_secs,
            per_sec: lat.len() as f64 / wall_secs,
            p50_ms: pct(50),
            p99_ms: pct(99),
        }
    }
}

/// The watch fan-out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FanOut {
    /// Nodes long-polling.
    pub watchers: usize,
    /// Seconds until every watcher had its connection open and request sent.
    pub setup_secs: f64,
    /// The new enrollment's own latency, milliseconds.
    pub trigger_ms: f64,
    /// From sending the new enrollment until the first watcher had the new list, ms.
    pub first_ms: f64,
    /// ... until half of them had it, ms.
    pub p50_ms: f64,
    /// ... until every watcher had it, ms.
    pub all_ms: f64,
    /// Peers in the list each watcher received.
    pub list_peers: usize,
}

/// One backend's figures.
#[derive(Debug, Clone)]
pub struct EnrollFigures {
    /// `SQLite` or `PostgreSQL 15`.
    pub backend: String,
    /// TLS handshake + GET of an unknown path (404), per connection.
    pub floor: Batch,
    /// Enrollments.
    pub enroll: Batch,
    /// Long-poll fan-out.
    pub fan_out: FanOut,
}

/// `kiln-enroll --state STATE serve` on 127.0.0.1:0, killed on drop.
struct Server {
    child: Child,
    ready: Ready,
    state: String,
    log: PathBuf,
}

impl Server {
    fn start(state: &str, dir: &Path) -> anyhow::Result<Server> {
        let bin = binary();
        if !bin.is_file() {
            bail!(
                "{}: no kiln-enroll binary; build it with `make enroll` \
                 (cargo build --release -p kiln-enroll)",
                bin.display()
            );
        }
        let log = dir.join("serve.stderr");
        let err = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        let mut child = Command::new(&bin)
            .arg("--state")
            .arg(state)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                // Room for every watcher at once, and a long poll that outlasts the
                // slowest handshake of the fan-out.
                "--max-connections",
                "4096",
                // Every simulated node connects from 127.0.0.1, and the fan-out opens
                // them all at once: real nodes come from their own addresses.
                "--max-per-source",
                "4096",
                "--watch-timeout",
                "120",
                "--request-timeout",
                "60",
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("kiln-enroll: no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Ok(Some(r)) = parse_ready_line(&line) {
                        sent = true;
                        let _ = tx.send(r);
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(ready) => Ok(Server {
                child,
                ready,
                state: state.to_string(),
                log,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "kiln-enroll --state {state} serve: no ready line within 60 s\n--- {} ---\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            }
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.ready.addr)
    }

    /// `token create --ttl 1h --uses N`.
    fn token(&self, uses: usize) -> anyhow::Result<Token> {
        let out = Command::new(binary())
            .arg("--state")
            .arg(&self.state)
            .args([
                "token",
                "create",
                "--ttl",
                "1h",
                "--uses",
                &uses.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .context("running kiln-enroll token create")?;
        if !out.status.success() {
            bail!(
                "kiln-enroll --state {} token create failed ({}): {}",
                self.state,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let token = Token::parse(&text).map_err(|e| anyhow::anyhow!("token create: {e}"))?;
        if hex(&token.ca_hash) != self.ready.ca_hash {
            bail!(
                "the token pins {} but the server's ready line says {}",
                hex(&token.ca_hash),
                self.ready.ca_hash
            );
        }
        Ok(token)
    }

    fn log(&self) -> String {
        kiln_qemu_tests::tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 20)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Simulated node `i`: its x25519 key (from sha256 of its index) and credential.
fn node(i: usize) -> (PublicKey, String) {
    let secret = x25519_dalek::StaticSecret::from(secret_hash(&format!("kiln-bench-node:{i}")));
    let public = x25519_dalek::PublicKey::from(&secret);
    let cred = secret_hash(&format!("kiln-bench-credential:{i}"))
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    (PublicKey(public.to_bytes()), cred)
}

fn enroll_request(token: &Token, i: usize) -> EnrollRequest {
    let (public_key, credential) = node(i);
    let lan = SocketAddr::from(([192, 168, (i / 250) as u8, (i % 250 + 2) as u8], 51820));
    EnrollRequest {
        token: token.reveal(),
        public_key,
        credential,
        hostname: format!("bench-{i:04}"),
        arch: "x86_64".to_string(),
        endpoints: vec![lan],
        public_endpoint: None,
        listen_port: 51820,
    }
}

/// Runs `calls` calls of `f` (given the call number) on `threads` threads; returns the
/// wall time and each call's latency, or the first failure.
fn hammer<F>(calls: usize, threads: usize, f: F) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize) -> anyhow::Result<()> + Sync,
{
    let next = AtomicUsize::new(0);
    let lat = Mutex::new(Vec::with_capacity(calls));
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    break;
                }
                if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                let t = Instant::now();
                match f(i) {
                    Ok(()) => {
                        if let Ok(mut l) = lat.lock() {
                            l.push(t.elapsed());
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e.context(format!("call {i}")));
                        }
                        break;
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let lat = lat
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a bench thread panicked"))?;
    Ok((wall, lat))
}

/// A TLS connection to the server, pinned like the real client, handshake done.
fn tls_connect(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, CALL_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_read_timeout(Some(CALL_TIMEOUT + Duration::from_secs(120)))?;
    tcp.set_write_timeout(Some(CALL_TIMEOUT))?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME)
        .map_err(|e| anyhow::anyhow!("server name {SERVER_NAME}: {e}"))?;
    let conn = rustls::ClientConnection::new(config.clone(), name)
        .map_err(|e| anyhow::anyhow!("TLS client for {addr}: {e}"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .with_context(|| format!("TLS handshake with {addr}"))?;
    }
    Ok(tls)
}

/// The floor: handshake, `GET /v1/bench-floor`, the server's 404.
fn floor_call(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> anyhow::Result<()> {
    let mut tls = tls_connect(addr, config)?;
    let host = addr.to_string();
    http::write_request(
        &mut tls,
        &Request {
            method: "GET",
            path: "/v1/bench-floor",
            host: &host,
            authorization: None,
            body: None,
        },
    )
    .context("sending GET /v1/bench-floor")?;
    let answer = http::read_response(&mut BufReader::new(&mut tls), MAX_ANSWER_BODY)
        .map_err(|e| anyhow::anyhow!("reading the answer to GET /v1/bench-floor: {e:?}"))?;
    if answer.status != 404 {
        bail!(
            "GET /v1/bench-floor answered {} instead of 404",
            answer.status
        );
    }
    Ok(())
}

/// Every watcher long-polls `/v1/peers?since=version`; once all requests are sent, one
/// more node enrolls; returns when every watcher has a list above `version`.
fn fan_out(
    server: &Server,
    pin_hash: [u8; 32],
    auths: &[NodeAuth],
    version: u64,
    trigger: &EnrollRequest,
) -> anyhow::Result<FanOut> {
    let addr = server.ready.addr;
    let config = pin::client_config(pin_hash);
    let n = auths.len();
    // Everyone connected and sent: the main thread then waits a moment for the server
    // to park the requests and triggers.
    let sent = Arc::new(Barrier::new(n + 1));
    let (tx, rx) = mpsc::channel::<anyhow::Result<(Instant, usize, u64)>>();
    let setup_start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for auth in auths {
        let auth = auth.clone();
        let config = config.clone();
        let sent = sent.clone();
        let tx = tx.clone();
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let r = (|| -> anyhow::Result<(Instant, usize, u64)> {
                    let connected = tls_connect(addr, &config).and_then(|mut tls| {
                        let bearer = format!("Bearer {}.{}", auth.name, auth.credential);
                        let path = format!("{PATH_PEERS}?since={version}&wait=120");
                        let host = addr.to_string();
                        http::write_request(
                            &mut tls,
                            &Request {
                                method: "GET",
                                path: &path,
                                host: &host,
                                authorization: Some(&bearer),
                                body: None,
                            },
                        )
                        .context("sending the long poll")?;
                        Ok(tls)
                    });
                    // Reach the barrier even on failure, so the main thread never hangs.
                    sent.wait();
                    let mut tls = connected?;
                    let answer =
                        http::read_response(&mut BufReader::new(&mut tls), MAX_ANSWER_BODY)
                            .map_err(|e| anyhow::anyhow!("reading the long poll: {e:?}"))?;
                    let got = Instant::now();
                    if answer.status != 200 {
                        bail!(
                            "long poll of {} answered {}: {}",
                            auth.name,
                            answer.status,
                            String::from_utf8_lossy(&answer.body)
                        );
                    }
                    let list: PeerList = serde_json::from_slice(&answer.body)
                        .context("the long poll's answer is not a PeerList")?;
                    Ok((got, list.peers.len(), list.version))
                })();
                let _ = tx.send(r);
            })
            .context("starting a watcher thread")?;
        handles.push(h);
    }
    drop(tx);
    sent.wait();
    let setup_secs = setup_start.elapsed().as_secs_f64();
    // Requests are parked within milliseconds of arriving; a second is plenty.
    std::thread::sleep(Duration::from_secs(1));
    let client = Client::new(&server.url(), pin_hash)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_timeout(CALL_TIMEOUT);
    let trigger_start = Instant::now();
    client
        .enroll(trigger)
        .map_err(|e| anyhow::anyhow!("the fan-out's new enrollment: {e}"))?;
    let trigger_ms = trigger_start.elapsed().as_secs_f64() * 1000.0;
    let mut seen = Vec::with_capacity(n);
    let mut list_peers = 0;
    for r in rx {
        let (got, peers, v) = r?;
        if v <= version {
            bail!("a watcher got list version {v}, not above {version}");
        }
        list_peers = peers;
        seen.push(got.saturating_duration_since(trigger_start));
    }
    for h in handles {
        let _ = h.join();
    }
    if seen.len() != n {
        bail!("{} of {n} watchers answered", seen.len());
    }
    seen.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(FanOut {
        watchers: n,
        setup_secs,
        trigger_ms,
        first_ms: ms(seen[0]),
        p50_ms: ms(seen[n / 2]),
        all_ms: ms(seen[n - 1]),
        list_peers,
    })
}

/// The whole measurement against one state URL (`sqlite:PATH`, `postgres://...`).
pub fn measure(
    backend: &str,
    state: &str,
    nodes: usize,
    concurrency: usize,
) -> anyhow::Result<EnrollFigures> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-enroll")
        .tempdir()
        .context("creating a scratch folder")?;
    let server = Server::start(state, dir.path())?;
    let with_log = |e: anyhow::Error| e.context(format!("{backend}: {}", server.log()));
    let token = server.token(nodes)?;
    let pin_hash = token.ca_hash;
    let config = pin::client_config(pin_hash);
    let addr = server.ready.addr;

    eprintln!("bench: enroll {backend}: floor, {nodes} TLS handshakes + 404");
    let (wall, lat) =
        hammer(nodes, concurrency, |_| floor_call(addr, &config)).map_err(with_log)?;
    let floor = Batch::from_latencies(wall, lat);

    eprintln!("bench: enroll {backend}: {nodes} enrollments, {concurrency} at once");
    let client = Client::new(&server.url(), pin_hash)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_timeout(CALL_TIMEOUT);
    let names: Vec<Mutex<Option<String>>> = (0..nodes).map(|_| Mutex::new(None)).collect();
    let (wall, lat) = hammer(nodes, concurrency, |i| {
        let a = client
            .enroll(&enroll_request(&token, i))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Ok(mut slot) = names[i].lock() {
            *slot = Some(a.node.name);
        }
        Ok(())
    })
    .map_err(with_log)?;
    let enroll = Batch::from_latencies(wall, lat);

    let mut auths = Vec::with_capacity(nodes);
    for (i, slot) in names.into_iter().enumerate() {
        let name = slot
            .into_inner()
            .ok()
            .flatten()
            .with_context(|| format!("node {i} has no name"))?;
        auths.push(NodeAuth {
            name,
            credential: node(i).1,
        });
    }
    let distinct: std::collections::BTreeSet<&str> =
        auths.iter().map(|a| a.name.as_str()).collect();
    if distinct.len() != nodes {
        bail!(
            "{backend}: {nodes} enrollments gave {} distinct names",
            distinct.len()
        );
    }
    let version = client
        .peers(&auths[0], 0, 0)
        .map_err(|e| anyhow::anyhow!("reading the peer list: {e}"))?;
    if version.peers.len() != nodes {
        bail!(
            "{backend}: the peer list has {} peers after {nodes} enrollments",
            version.peers.len()
        );
    }

    eprintln!("bench: enroll {backend}: {nodes} nodes long-polling, one more enrolls");
    let trigger_token = server.token(1)?;
    let fan = fan_out(
        &server,
        pin_hash,
        &auths,
        version.version,
        &enroll_request(&trigger_token, nodes),
    )
    .map_err(with_log)?;
    Ok(EnrollFigures {
        backend: backend.to_string(),
        floor,
        enroll,
        fan_out: fan,
    })
}

/// SQLite in a scratch folder.
pub fn measure_sqlite(nodes: usize, concurrency: usize) -> anyhow::Result<EnrollFigures> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-sqlite")
        .tempdir()
        .context("creating a scratch folder")?;
    // A folder kiln-enroll makes 0700: it refuses a state folder others can read.
    let state = format!(
        "sqlite:{}",
        dir.path().join("state").join("state.db").display()
    );
    measure("SQLite", &state, nodes, concurrency)
}

/// A throwaway PostgreSQL 15 ([`kiln_enroll::pgtest::TempPostgres`]).
pub fn measure_postgres(nodes: usize, concurrency: usize) -> anyhow::Result<EnrollFigures> {
    let pg = kiln_enroll::pgtest::TempPostgres::start()
        .map_err(|e| anyhow::anyhow!("PostgreSQL for the enrollment bench: {e}"))?;
    let url = pg
        .database("kiln_bench")
        .map_err(|e| anyhow::anyhow!("PostgreSQL for the enrollment bench: {e}"))?;
    measure("PostgreSQL 15", &url, nodes, concurrency)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let lat: Vec<Duration> = (1..=1000).rev().map(Duration::from_millis).collect();
        let b = Batch::from_latencies(Duration::from_secs(2), lat);
        assert_eq!(b.calls, 1000);
        assert_eq!(b.per_sec, 500.0);
        assert_eq!(b.p50_ms, 500.0);
        assert_eq!(b.p99_ms, 990.0);
        let one = Batch::from_latencies(Duration::from_secs(1), vec![Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }

    #[test]
    fn simulated_nodes_have_distinct_keys_and_valid_credentials() {
        let a = node(1);
        let b = node(2);
        assert_ne!(a.0, b.0);
        assert_eq!(a.1.len(), kiln_enroll_proto::api::CREDENTIAL_LEN);
        assert!(a.1.bytes().all(|c| ALPHABET.contains(&c)));
        assert_eq!(node(1), a);
    }
}
