//! Enrollment throughput for `make bench`: the release `kiln-enroll` on SQLite or
//! PostgreSQL on this host's loopback, simulated nodes enrolling through the pinned
//! client at a fixed concurrency in bands of 1,000 (so the figures show how the rate
//! changes as the registry grows to 10,000), against a floor of bare TLS handshakes with
//! a request the server answers 404 (what TLS and HTTP cost alone); then what an agent
//! that predates API revision 2 costs (the whole list in its answer), the heartbeats of
//! every node at the fleet's rate with the server's CPU time, and the watch fan-out:
//! every node long-polling for deltas at once, the time until all of them saw one new
//! enrollment ([`load`]).

use std::fmt::Write as _;
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kiln_enroll_proto::api::{EnrollRequest, MAX_ANSWER_BODY};
use kiln_enroll_proto::client::{Client, NodeAuth};
use kiln_enroll_proto::http::{self, Request};
use kiln_enroll_proto::key::PublicKey;
use kiln_enroll_proto::pin::{self, SERVER_NAME};
use kiln_enroll_proto::token::{secret_hash, Token, ALPHABET};

use kiln_qemu_tests::enroll_server::{binary, parse_ready_line, Ready};

#[path = "bench_enroll_load.rs"]
mod load;
pub use load::{FanOut, Heartbeats};

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

/// One backend's figures.
#[derive(Debug, Clone)]
pub struct EnrollFigures {
    /// `SQLite` or `PostgreSQL 15`.
    pub backend: String,
    /// TLS handshake + GET of an unknown path (404), per connection.
    pub floor: Batch,
    /// The server's CPU time per floor call, ms.
    pub floor_cpu_ms: f64,
    /// Enrollments (API revision 2), by band: nodes enrolled before the band, figures.
    pub bands: Vec<(usize, Batch)>,
    /// All enrollments together.
    pub enroll: Batch,
    /// Enrollments of agents that predate revision 2 (the whole list in each answer),
    /// once every band is enrolled.
    pub old_agents: Batch,
    /// Bytes of the whole peer list at the end, and the median ms of fetching it.
    pub full_list: (usize, f64),
    /// Every node heartbeating at the fleet's rate.
    pub heartbeats: Heartbeats,
    /// Long-poll fan-out.
    pub fan_out: FanOut,
}

/// Seconds between a simulated node's heartbeats.
pub fn load_heartbeat_secs() -> u64 {
    load::HEARTBEAT_SECS
}

/// Nodes per band of the enrollment figures.
pub const BAND: usize = 1000;
/// Enrollments of old agents measured at the end.
const OLD_AGENTS: usize = 100;

/// `kiln-enroll --state STATE serve` on 127.0.0.1:0, killed on drop.
struct Server {
    child: Child,
    ready: Ready,
    state: String,
    log: PathBuf,
}

/// Connections the bench's server allows (and per source: every simulated node comes
/// from 127.0.0.1): every watcher at once, and some room.
const MAX_CONNECTIONS: &str = "16000";

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
                MAX_CONNECTIONS,
                // Every simulated node connects from 127.0.0.1, and the fan-out opens
                // them all at once: real nodes come from their own addresses.
                "--max-per-source",
                MAX_CONNECTIONS,
                "--watch-timeout",
                "120",
                "--request-timeout",
                "60",
                // The bench's nodes stay online through its minutes: an expiry sweep in
                // the middle would change every list and end the long polls early.
                "--endpoint-ttl",
                "86400",
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

    fn pid(&self) -> u32 {
        self.child.id()
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

/// The whole measurement against one state URL (`sqlite:PATH`, `postgres://...`):
/// `nodes` enrollments in bands of [`BAND`].
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
    let token = server.token(nodes + OLD_AGENTS)?;
    let pin_hash = token.ca_hash;
    let config = pin::client_config(pin_hash);
    let addr = server.ready.addr;

    let floor_calls = 2 * BAND;
    eprintln!("bench: enroll {backend}: floor, {floor_calls} TLS handshakes + 404");
    let cpu_before = load::cpu_time(server.pid())?;
    let (wall, lat) =
        hammer(floor_calls, concurrency, |_| floor_call(addr, &config)).map_err(with_log)?;
    let floor_cpu = load::cpu_time(server.pid())?.saturating_sub(cpu_before);
    let floor_cpu_ms = floor_cpu.as_secs_f64() * 1000.0 / floor_calls as f64;
    let floor = Batch::from_latencies(wall, lat);

    // Made before the clock starts: the keys take an x25519 multiplication each.
    let requests: Vec<EnrollRequest> = (0..nodes + OLD_AGENTS)
        .map(|i| enroll_request(&token, i))
        .collect();
    eprintln!("bench: enroll {backend}: {nodes} enrollments, {concurrency} at once");
    let client = Client::new(&server.url(), pin_hash)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_timeout(CALL_TIMEOUT);
    let names: Vec<Mutex<Option<String>>> = (0..nodes).map(|_| Mutex::new(None)).collect();
    let mut bands = Vec::new();
    let mut all_lat = Vec::with_capacity(nodes);
    let mut all_wall = Duration::ZERO;
    let mut base = 0;
    while base < nodes {
        let n = BAND.min(nodes - base);
        let (wall, lat) = hammer(n, concurrency, |i| {
            let i = base + i;
            let a = client
                .enroll_v2(&requests[i])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Ok(mut slot) = names[i].lock() {
                *slot = Some(a.node.name);
            }
            Ok(())
        })
        .map_err(with_log)?;
        all_wall += wall;
        all_lat.extend_from_slice(&lat);
        let b = Batch::from_latencies(wall, lat);
        eprintln!(
            "bench: enroll {backend}: {base}..{}: {:.0}/s p50 {:.1} p99 {:.1} ms",
            base + n,
            b.per_sec,
            b.p50_ms,
            b.p99_ms
        );
        bands.push((base, b));
        base += n;
    }
    let enroll = Batch::from_latencies(all_wall, all_lat);

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

    eprintln!("bench: enroll {backend}: {OLD_AGENTS} enrollments of revision-1 agents");
    let (wall, lat) = hammer(OLD_AGENTS, concurrency, |i| {
        let a = client
            .enroll(&requests[nodes + i])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if a.peers.peers.len() < nodes {
            bail!("an old agent's answer has {} peers", a.peers.peers.len());
        }
        Ok(())
    })
    .map_err(with_log)?;
    let old_agents = Batch::from_latencies(wall, lat);

    // The whole list, as a revision-1 agent's long poll gets it.
    let mut fetches = Vec::new();
    let mut list_bytes = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let list = client
            .peers(&auths[0], 0, 0)
            .map_err(|e| anyhow::anyhow!("reading the peer list: {e}"))?;
        fetches.push(t.elapsed());
        if list.peers.len() != nodes + OLD_AGENTS {
            bail!(
                "{backend}: the peer list has {} peers after {} enrollments",
                list.peers.len(),
                nodes + OLD_AGENTS
            );
        }
        list_bytes = serde_json::to_vec(&list).map(|b| b.len()).unwrap_or(0);
    }
    fetches.sort();
    let full_list = (
        list_bytes,
        fetches[fetches.len() / 2].as_secs_f64() * 1000.0,
    );
    eprintln!("bench: enroll {backend}: {nodes} nodes heartbeating every 30 s");
    let heartbeats = load::heartbeats(
        &server.url(),
        pin_hash,
        server.pid(),
        &auths,
        &requests[..nodes],
    )
    .map_err(with_log)?;

    eprintln!("bench: enroll {backend}: {nodes} nodes long-polling, one more enrolls");
    let version = client
        .peer_changes(&auths[0], 0, 0)
        .map_err(|e| anyhow::anyhow!("reading the peer list: {e}"))?
        .version;
    let trigger_token = server.token(1)?;
    let fan = load::fan_out(
        addr,
        &server.url(),
        pin_hash,
        &auths,
        version,
        &enroll_request(&trigger_token, nodes + OLD_AGENTS),
    )
    .map_err(with_log)?;
    Ok(EnrollFigures {
        backend: backend.to_string(),
        floor,
        floor_cpu_ms,
        bands,
        enroll,
        old_agents,
        full_list,
        heartbeats,
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

/// The `## Enrollment` section for `make bench`: throughput on both backends as the
/// registry grows to `nodes`, `concurrency` clients at once, with the TLS floor, old
/// agents, heartbeats and the watch fan-out.
pub fn section(md: &mut String, nodes: usize, concurrency: usize) -> anyhow::Result<()> {
    let show = |f: EnrollFigures| {
        // At once: the second backend failing must not lose the first one's figures.
        eprintln!("bench: {f:?}");
        f
    };
    let figs = [
        show(measure_sqlite(nodes, concurrency)?),
        show(measure_postgres(nodes, concurrency)?),
    ];
    let band = BAND;
    writeln!(md, "\n## Enrollment (kiln-enroll on loopback)\n")?;
    writeln!(
        md,
        "The release `kiln-enroll` on this machine's loopback, one token with enough uses, \
         {nodes} simulated nodes (distinct x25519 keys) enrolling through the pinned \
         client (`kiln_enroll_proto::client`, API revision 2: the answer carries the peer \
         list's version, not the list), {concurrency} at once, one TLS connection per call, \
         in bands of {band}. The floor: {} TLS handshakes with the same pin, each followed \
         by a GET of an unknown path that the same server answers 404, at the same \
         concurrency, before the first band. Clients and server share the machine's cores. \
         Targets: enrollments/s at least 0.5x the floor's rate, p99 at most 2x the floor's.\n",
        2 * band
    )?;
    writeln!(md, "| backend | floor: TLS + 404 | floor p50 / p99 | nodes before the band | enrollments | enroll p50 / p99 | rate / floor rate | p99 / floor p99 |")?;
    writeln!(md, "|---|---|---|---|---|---|---|---|")?;
    for f in &figs {
        let all = (usize::MAX, f.enroll);
        let picked = [0, 1, 4, 9]
            .into_iter()
            .filter_map(|i| f.bands.get(i))
            .chain(std::iter::once(&all));
        for (from, b) in picked {
            let from = if *from == usize::MAX {
                format!("all {}", f.enroll.calls)
            } else {
                format!("{from}")
            };
            writeln!(
                md,
                "| {} | {:.0} /s | {:.1} / {:.1} ms | {from} | {:.0} /s ({:.1} s) | {:.1} / {:.1} ms | {:.2}x | {:.2}x |",
                f.backend,
                f.floor.per_sec,
                f.floor.p50_ms,
                f.floor.p99_ms,
                b.per_sec,
                b.wall_secs,
                b.p50_ms,
                b.p99_ms,
                b.per_sec / f.floor.per_sec,
                b.p99_ms / f.floor.p99_ms
            )?;
        }
    }
    writeln!(md, "\n### Agents that predate deltas, and the whole list\n")?;
    writeln!(
        md,
        "After the bands, 100 enrollments through the revision-1 call (no API header: what \
         deployed agents send), whose answer carries the whole list, {concurrency} at once; \
         and the whole list as a revision-1 long poll gets it (the median of 5 fetches, \
         parsed by the client).\n"
    )?;
    writeln!(
        md,
        "| backend | revision-1 enrollments | p50 / p99 | whole list | fetch |"
    )?;
    writeln!(md, "|---|---|---|---|---|")?;
    for f in &figs {
        writeln!(
            md,
            "| {} | {:.0} /s | {:.1} / {:.1} ms | {:.1} MiB | {:.0} ms |",
            f.backend,
            f.old_agents.per_sec,
            f.old_agents.p50_ms,
            f.old_agents.p99_ms,
            f.full_list.0 as f64 / (1024.0 * 1024.0),
            f.full_list.1
        )?;
    }
    writeln!(md, "\n### Heartbeats\n")?;
    writeln!(
        md,
        "The {nodes} nodes heartbeat every {} s (spread evenly, 8 observations each) \
         for 15 s, each call on a new TLS connection from a new client (no session resumed: \
         a full handshake every time, the worst case). The server's CPU time (user + \
         system, all threads, from /proc) over the run's wall time; target: under 25% of \
         one core. For scale: the server's CPU time per floor call (TLS handshake and a 404) \
         at the heartbeats' rate.\n",
        load_heartbeat_secs()
    )?;
    writeln!(
        md,
        "| backend | nodes | heartbeats/s | p50 / p99 | server CPU | floor calls at that rate |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for f in &figs {
        let h = &f.heartbeats;
        writeln!(
            md,
            "| {} | {} | {:.0} | {:.1} / {:.1} ms | {:.1}% of one core | {:.1}% ({:.2} ms each) |",
            f.backend,
            h.nodes,
            h.batch.per_sec,
            h.batch.p50_ms,
            h.batch.p99_ms,
            h.server_core_share * 100.0,
            f.floor_cpu_ms * h.per_sec / 10.0,
            f.floor_cpu_ms
        )?;
    }
    writeln!(md, "\n### Watch fan-out\n")?;
    writeln!(
        md,
        "The {nodes} enrolled nodes each long-poll `/v1/peers` with the current \
         version in API revision 2 (deltas); once every request is sent (and a second has \
         passed), one more node enrolls. Times from sending that enrollment until the \
         watchers had the delta ({} peer, parsed as JSON by each client, one thread per \
         watcher). Target: all within 1 s.\n",
        figs.first().map(|f| f.fan_out.delta_peers).unwrap_or(0)
    )?;
    writeln!(
        md,
        "| backend | watchers | connect + send all | new enrollment | first watcher | half | all |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|")?;
    for f in &figs {
        let w = &f.fan_out;
        writeln!(
            md,
            "| {} | {} | {:.1} s | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            f.backend, w.watchers, w.setup_secs, w.trigger_ms, w.first_ms, w.p50_ms, w.all_ms
        )?;
    }
    Ok(())
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
