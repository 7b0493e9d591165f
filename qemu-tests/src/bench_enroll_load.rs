//! The fleet's steady load on kiln-enroll for `make bench` (part of [`super`]): every
//! node heartbeating at its interval, with the server's CPU time read from /proc, and
//! every node long-polling for deltas while one more node enrolls.

use std::io::BufReader;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use kiln_enroll_proto::api::{
    EnrollRequest, HeartbeatRequest, Observation, PeerDelta, API_HEADER, MAX_ANSWER_BODY,
    PATH_PEERS, REVISION_DELTAS,
};
use kiln_enroll_proto::client::{Client, NodeAuth};
use kiln_enroll_proto::http::{self, Request};
use kiln_enroll_proto::pin;

use super::{tls_connect, Batch, CALL_TIMEOUT};

/// Seconds between a node's heartbeats (the server's default).
pub const HEARTBEAT_SECS: u64 = 30;
/// How long the heartbeat load runs.
const HEARTBEAT_RUN: Duration = Duration::from_secs(15);
/// Threads sending heartbeats (each call waits for its turn in the schedule).
const HEARTBEAT_THREADS: usize = 16;
/// Observations per heartbeat (what a node reports of the peers it talks to).
const OBSERVATIONS: usize = 8;
/// Watchers connecting at once while the fan-out is set up (more would only overflow
/// the listen queue and wait for SYN retries).
const CONNECTING: usize = 64;

/// Every node heartbeating at [`HEARTBEAT_SECS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heartbeats {
    /// Nodes.
    pub nodes: usize,
    /// Heartbeats per second (nodes / interval).
    pub per_sec: f64,
    /// Latencies of the calls (each a new TLS connection, no session resumed).
    pub batch: Batch,
    /// The server's CPU time over the run divided by the run's wall time: the share of
    /// one core.
    pub server_core_share: f64,
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
    /// From sending the new enrollment until the first watcher had the delta, ms.
    pub first_ms: f64,
    /// ... until half of them had it, ms.
    pub p50_ms: f64,
    /// ... until every watcher had it, ms.
    pub all_ms: f64,
    /// Peers in the delta each watcher received.
    pub delta_peers: usize,
}

/// The CPU time (user + system, every thread) of process `pid` so far, from /proc.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no ')' in {text:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize, name: &str| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: field {name} is missing or not a number"))
    };
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    let total = ticks(11, "utime")? + ticks(12, "stime")?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(100)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every node of `auths` heartbeats once per [`HEARTBEAT_SECS`], spread evenly, for
/// [`HEARTBEAT_RUN`]; each call on a new TLS connection with a new client (no session
/// to resume: what it costs at worst). `enrolled[i]` is what node `i` enrolled with
/// (its key and endpoints).
pub fn heartbeats(
    url: &str,
    pin_hash: [u8; 32],
    pid: u32,
    auths: &[NodeAuth],
    enrolled: &[EnrollRequest],
) -> anyhow::Result<Heartbeats> {
    let n = auths.len();
    let per_sec = n as f64 / HEARTBEAT_SECS as f64;
    let calls = (per_sec * HEARTBEAT_RUN.as_secs_f64()) as usize;
    let gap = Duration::from_secs_f64(1.0 / per_sec);
    let next = AtomicUsize::new(0);
    let lat = Mutex::new(Vec::with_capacity(calls));
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let cpu_before = cpu_time(pid)?;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..HEARTBEAT_THREADS {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= calls || failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                    break;
                }
                let due = start + gap * u32::try_from(k).unwrap_or(u32::MAX);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let i = k % n;
                let now = unix_now();
                let req = HeartbeatRequest {
                    endpoints: enrolled[i].endpoints.clone(),
                    public_endpoint: None,
                    observations: (1..=OBSERVATIONS)
                        .map(|d| {
                            let j = (i + d) % n;
                            Observation {
                                public_key: enrolled[j].public_key,
                                endpoint: enrolled[j].endpoints.first().copied(),
                                last_handshake: Some(now),
                            }
                        })
                        .collect(),
                };
                let t = Instant::now();
                let r = Client::new(url, pin_hash)
                    .map(|c| c.with_timeout(CALL_TIMEOUT))
                    .and_then(|c| c.heartbeat(&auths[i], &req));
                match r {
                    Ok(_) => {
                        if let Ok(mut l) = lat.lock() {
                            l.push(t.elapsed());
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(anyhow::anyhow!("heartbeat {k}: {e}"));
                        }
                        break;
                    }
                }
            });
        }
    });
    let wall = start.elapsed();
    let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    let lat = lat
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a heartbeat thread panicked"))?;
    Ok(Heartbeats {
        nodes: n,
        per_sec,
        batch: Batch::from_latencies(wall, lat),
        server_core_share: cpu.as_secs_f64() / wall.as_secs_f64(),
    })
}

/// Every watcher long-polls `/v1/peers?since=version` in API revision 2 (deltas); once
/// all requests are sent, one more node enrolls; returns when every watcher has a delta
/// above `version`.
pub fn fan_out(
    addr: SocketAddr,
    url: &str,
    pin_hash: [u8; 32],
    auths: &[NodeAuth],
    version: u64,
    trigger: &EnrollRequest,
) -> anyhow::Result<FanOut> {
    let config = pin::client_config(pin_hash);
    let n = auths.len();
    let (sent_tx, sent_rx) = mpsc::channel::<()>();
    let (tx, rx) = mpsc::channel::<anyhow::Result<(Instant, usize, u64)>>();
    let setup_start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let revision = REVISION_DELTAS.to_string();
    for (k, auth) in auths.iter().enumerate() {
        if k >= CONNECTING {
            // One connection done (or failed) before the next starts.
            let _ = sent_rx.recv();
        }
        let auth = auth.clone();
        let config = config.clone();
        let sent = sent_tx.clone();
        let tx = tx.clone();
        let revision = revision.clone();
        let h = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let r = (|| -> anyhow::Result<(Instant, usize, u64)> {
                    let connected = tls_connect(addr, &config).and_then(|mut tls| {
                        let bearer = format!("Bearer {}.{}", auth.name, auth.credential);
                        let path = format!("{PATH_PEERS}?since={version}&wait=120");
                        let host = addr.to_string();
                        http::write_request_with(
                            &mut tls,
                            &Request {
                                method: "GET",
                                path: &path,
                                host: &host,
                                authorization: Some(&bearer),
                                body: None,
                            },
                            &[(API_HEADER, &revision)],
                        )
                        .context("sending the long poll")?;
                        Ok(tls)
                    });
                    // Signal even on failure, so the main thread never hangs.
                    let _ = sent.send(());
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
                    let delta: PeerDelta = serde_json::from_slice(&answer.body)
                        .context("the long poll's answer is not a PeerDelta")?;
                    if delta.since != Some(version) {
                        bail!(
                            "a watcher got a delta from {:?}, not {version}",
                            delta.since
                        );
                    }
                    Ok((got, delta.peers.len(), delta.version))
                })();
                let _ = tx.send(r);
            })
            .context("starting a watcher thread")?;
        handles.push(h);
    }
    drop(tx);
    drop(sent_tx);
    // The signals of the last CONNECTING connections (each thread keeps its sender
    // while it waits, so this counts rather than waiting for the channel to close).
    for _ in 0..n.min(CONNECTING) {
        let _ = sent_rx.recv();
    }
    let setup_secs = setup_start.elapsed().as_secs_f64();
    // Requests are parked within milliseconds of arriving; a second is plenty.
    std::thread::sleep(Duration::from_secs(1));
    let client = Client::new(url, pin_hash)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_timeout(CALL_TIMEOUT);
    let trigger_start = Instant::now();
    client
        .enroll_v2(trigger)
        .map_err(|e| anyhow::anyhow!("the fan-out's new enrollment: {e}"))?;
    let trigger_ms = trigger_start.elapsed().as_secs_f64() * 1000.0;
    let mut seen = Vec::with_capacity(n);
    let mut delta_peers = 0;
    for r in rx {
        let (got, peers, v) = r?;
        if v <= version {
            bail!("a watcher got list version {v}, not above {version}");
        }
        delta_peers = peers;
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
        delta_peers,
    })
}
