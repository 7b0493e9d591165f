//! The real `kiln-enroll` binary against what an attacker or a careless set-up brings:
//! trickled TLS handshakes and request heads, a flood of connections from one source,
//! bare-LF requests, out-of-range flags, a state file others can read, clear text to a
//! remote PostgreSQL, and an open-file limit below `--max-connections`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kiln_enroll::pgtest::TempPostgres;
use rustls::ClientConnection;

/// A TCP connection from `from` (another loopback address is another source).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    sock.connect(&to.into()).unwrap();
    sock.into()
}

fn tls_client(server: &Server) -> ClientConnection {
    let config = kiln_enroll_proto::pin::client_config(server.hash);
    let name = rustls_pki_types::ServerName::try_from("kiln-enroll").unwrap();
    ClientConnection::new(config, name).unwrap()
}

/// One attacking connection: either it sends a real ClientHello a byte at a time, or it
/// completes the handshake and then sends a request a byte (one TLS record) at a time.
struct Trickler {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    bytes: Vec<u8>,
    sent: usize,
    next: Instant,
    opened: Instant,
    closed: Option<Instant>,
}

impl Trickler {
    /// Reads whatever arrived; notes when the server closed the connection.
    fn poll_read(&mut self, now: Instant) {
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    self.closed = Some(now);
                    return;
                }
                Ok(n) => {
                    if let Some(tls) = self.tls.as_mut() {
                        let _ = tls.read_tls(&mut &buf[..n]);
                        let _ = tls.process_new_packets();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.closed = Some(now);
                    return;
                }
            }
        }
    }

    /// Sends the next byte when it is time.
    fn poll_write(&mut self, now: Instant) {
        if self.closed.is_some() || now < self.next || self.sent >= self.bytes.len() {
            return;
        }
        let byte = [self.bytes[self.sent]];
        let written = match self.tls.as_mut() {
            None => self.sock.write(&byte).map(|_| ()),
            Some(tls) => tls
                .writer()
                .write_all(&byte)
                .and_then(|()| tls.write_tls(&mut self.sock).map(|_| ())),
        };
        match written {
            Ok(()) => {
                self.sent += 1;
                self.next = now + Duration::from_secs(1);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => self.closed = Some(now),
        }
    }
}

/// 200 connections trickling a ClientHello and 200 trickling a request after the
/// handshake, all from 127.0.0.2, a byte a second: each is closed within the request
/// timeout plus a second, and enrollments from 127.0.0.1 meanwhile pass, each well under
/// a second.
#[test]
fn trickled_handshakes_and_heads_are_cut_off_while_others_enroll() {
    const EACH: usize = 200;
    const TIMEOUT: u64 = 2;
    let state = State::new(Backend::Sqlite);
    // The per-source cap is lifted so that every attacking connection is let in and must
    // be ended by the deadline (the cap's own test is below).
    let server = Server::start(
        &state,
        &[
            "--request-timeout",
            &TIMEOUT.to_string(),
            "--max-per-source",
            "1000",
        ],
    );
    let token = state.token(&["--ttl", "1h", "--uses", "1000"]);
    let hello = {
        let mut c = tls_client(&server);
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    };
    let mut attackers: Vec<Trickler> = Vec::with_capacity(2 * EACH);
    for _ in 0..EACH {
        let sock = connect_from("127.0.0.2", server.addr);
        sock.set_nonblocking(true).unwrap();
        attackers.push(Trickler {
            sock,
            tls: None,
            bytes: hello.clone(),
            sent: 0,
            next: Instant::now(),
            opened: Instant::now(),
            closed: None,
        });
    }
    let head = b"GET /v1/peers?since=0&wait=60 HTTP/1.1\r\nHost: kiln-enroll\r\n\
                 Authorization: Bearer somebody.0123456789abcdef0123456789abcdef\r\n\r\n";
    for _ in 0..EACH {
        let opened = Instant::now();
        let mut sock = connect_from("127.0.0.2", server.addr);
        let mut tls = tls_client(&server);
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).unwrap();
        }
        sock.set_nonblocking(true).unwrap();
        attackers.push(Trickler {
            sock,
            tls: Some(tls),
            bytes: head.to_vec(),
            sent: 0,
            next: Instant::now(),
            opened,
            closed: None,
        });
    }

    // Nodes enroll from 127.0.0.1 while the attack goes on.
    let attack_over = Arc::new(AtomicBool::new(false));
    let enrolling = {
        let client = server.client().with_timeout(Duration::from_secs(5));
        let token = token.clone();
        let over = attack_over.clone();
        std::thread::spawn(move || {
            let mut took = Vec::new();
            while !over.load(Ordering::SeqCst) && took.len() < 200 {
                let i = took.len();
                let started = Instant::now();
                let a = client
                    .enroll(&request(
                        &token,
                        &node_keys(&format!("n{i}")),
                        &format!("n{i}"),
                    ))
                    .unwrap_or_else(|e| panic!("enrollment {i} during the attack: {e}"));
                took.push(started.elapsed());
                assert_eq!(a.node.name, format!("n{i}"));
            }
            took
        })
    };

    let give_up = Instant::now() + Duration::from_secs(TIMEOUT + 30);
    while attackers.iter().any(|a| a.closed.is_none()) && Instant::now() < give_up {
        let now = Instant::now();
        for a in attackers.iter_mut().filter(|a| a.closed.is_none()) {
            a.poll_read(now);
            a.poll_write(now);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    attack_over.store(true, Ordering::SeqCst);
    let took = enrolling.join().unwrap();

    let limit = Duration::from_secs(TIMEOUT + 1);
    for (kind, group) in [
        ("ClientHello", &attackers[..EACH]),
        ("request", &attackers[EACH..]),
    ] {
        let lived: Vec<Duration> = group
            .iter()
            .map(|a| {
                a.closed
                    .map(|c| c - a.opened)
                    .unwrap_or_else(|| panic!("a trickled {kind} was still open after 30 s"))
            })
            .collect();
        let longest = lived.iter().max().unwrap();
        eprintln!(
            "trickled {kind}: {} connections, longest open {longest:?}, bytes sent at most {}",
            group.len(),
            group.iter().map(|a| a.sent).max().unwrap()
        );
        assert!(*longest <= limit, "a trickled {kind} stayed {longest:?}");
    }
    let slowest = took.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{} enrollments from 127.0.0.1 during the attack, slowest {slowest:?}",
        took.len()
    );
    assert!(took.len() >= 3, "only {} enrollments", took.len());
    assert!(slowest < Duration::from_millis(900), "{slowest:?}");
    // The attacking address itself is not punished afterwards.
    let mut s = raw_tls_from(&server, "127.0.0.2");
    s.write_all(b"GET /v1/nothing HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_answer(&mut s).0, 404);
}

fn raw_tls_from(server: &Server, from: &str) -> rustls::StreamOwned<ClientConnection, TcpStream> {
    let sock = connect_from(from, server.addr);
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    rustls::StreamOwned::new(tls_client(server), sock)
}

/// Beyond `--max-per-source` connections still in their handshake or request, a
/// source's next connection is closed before any TLS work; other sources are served.
#[test]
fn a_source_over_its_cap_is_closed_before_tls_and_others_are_served() {
    let state = State::new(Backend::Sqlite);
    let server = Server::start(&state, &["--max-per-source", "4"]);
    let held: Vec<TcpStream> = (0..4)
        .map(|_| connect_from("127.0.0.3", server.addr))
        .collect();
    // The server has accepted the four once a fifth is refused: try until then (the
    // accepts are asynchronous), each try a fresh connection sending a real ClientHello.
    let started = Instant::now();
    let refused = loop {
        let mut extra = connect_from("127.0.0.3", server.addr);
        extra
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut hello = Vec::new();
        tls_client(&server).write_tls(&mut hello).unwrap();
        let _ = extra.write_all(&hello);
        let mut buf = [0u8; 1024];
        match extra.read(&mut buf) {
            // Closed without a byte of TLS: no ServerHello was made.
            Ok(0) => break true,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            // Served (the accept of the first four was not done yet): try again.
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a fifth connection from 127.0.0.3 was never refused"
        );
    };
    assert!(refused);
    // Another source is served meanwhile.
    let token = state.token(&["--ttl", "1h", "--uses", "2"]);
    let a = server
        .client()
        .enroll(&request(&token, &node_keys("cap"), "cap"))
        .unwrap();
    assert_eq!(a.node.name, "cap");
    // When the held connections go, the source is served again.
    drop(held);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = raw_tls_from(&server, "127.0.0.3");
        let sent = s.write_all(b"GET /v1/nothing HTTP/1.1\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        if sent.is_ok() && out.starts_with(b"HTTP/1.1 404") {
            break;
        }
        assert!(Instant::now() < until, "127.0.0.3 was not served again");
    }
}

/// A request whose lines end in a bare LF gets its 400 at once, not after the timeout.
#[test]
fn a_bare_lf_request_gets_a_prompt_400() {
    let state = State::new(Backend::Sqlite);
    let server = Server::start(&state, &["--request-timeout", "10"]);
    let started = Instant::now();
    let (s, body) = raw_request(&server, b"GET /v1/peers HTTP/1.1\nHost: kiln-enroll\n\n");
    assert_eq!(s, 400, "{body}");
    assert!(body.contains("bare LF"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Every answer names the API revision.
    let mut t = raw_tls(&server);
    t.write_all(b"GET /v1/nothing HTTP/1.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = t.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.contains("\r\nkiln-enroll-api: 2\r\n"), "{text}");
}

/// Every numeric flag is bounded: a value out of range is refused by name, never a panic.
#[test]
fn out_of_range_flags_are_refused_with_the_range() {
    let state = State::new(Backend::Sqlite);
    let cases: &[(&[&str], &str)] = &[
        (
            &["serve", "--request-timeout", "18446744073709551615"],
            "1 to 300",
        ),
        (&["serve", "--request-timeout", "0"], "--request-timeout"),
        (&["serve", "--endpoint-ttl", "999999d"], "--endpoint-ttl"),
        (&["serve", "--max-connections", "0"], "--max-connections"),
        (
            &["serve", "--max-connections", "18446744073709551615"],
            "--max-connections",
        ),
        (&["serve", "--max-per-source", "0"], "--max-per-source"),
        (&["serve", "--max-failures", "4294967296"], "--max-failures"),
        (&["serve", "--watch-timeout", "121"], "1 to 120"),
        (&["serve", "--heartbeat", "0"], "--heartbeat"),
        (&["serve", "--keepalive", "99999"], "--keepalive"),
        (&["serve", "--mtu", "70000"], "--mtu"),
        (&["token", "create", "--ttl", "99999d"], "--ttl"),
        (&["token", "create", "--uses", "4294967295"], "--uses"),
    ];
    for (args, want) in cases {
        let out = state.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// A state file, WAL file or folder that others can read is refused with the fix.
#[test]
fn a_state_others_can_read_is_refused_with_the_chmod_that_fixes_it() {
    let state = State::new(Backend::Sqlite);
    state.token(&["--ttl", "1h"]);
    let path = std::path::PathBuf::from(state.url.strip_prefix("sqlite:").unwrap());
    let dir = path.parent().unwrap().to_path_buf();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&path), mode(&dir)), (0o600, 0o700));
    let set = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
    let refused = |fix: String| {
        for args in [
            &["token", "list"][..],
            &["serve", "--listen", "127.0.0.1:0"][..],
        ] {
            let (ok, err) = run_briefly(&state, args);
            assert!(!ok, "{args:?} accepted it");
            assert!(
                err.contains(&fix) && err.contains("open to group or others"),
                "{err}"
            );
        }
    };
    set(&path, 0o644);
    refused(format!("chmod 600 {}", path.display()));
    set(&path, 0o600);
    set(&dir, 0o755);
    refused(format!("chmod 700 {}", dir.display()));
    set(&dir, 0o711);
    // Traversable but not readable: fine.
    state.ok(&["token", "list"]);
    set(&dir, 0o700);
    std::fs::write(&wal, b"").unwrap();
    set(&wal, 0o640);
    refused(format!("chmod 600 {}", wal.display()));
    set(&wal, 0o600);
    state.ok(&["token", "list"]);
}

/// Runs `kiln-enroll --state URL ARGS` and gives it 30 s to exit (a `serve` that wrongly
/// starts is killed): whether it succeeded, and its stderr.
fn run_briefly(state: &State, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg("--state")
        .arg(&state.url)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status.is_some_and(|s| s.success()), err)
}

/// Clear text to a PostgreSQL host that is not this machine is refused before any
/// connection is tried (192.0.2.1 is TEST-NET-1: nothing answers there, and nothing is
/// sent there); so is TLS without a readable CA file.
#[test]
fn plaintext_or_unverifiable_postgres_to_a_remote_host_is_refused_before_connecting() {
    let run = |args: &[&str]| {
        let started = Instant::now();
        let out = Command::new(BIN).args(args).output().unwrap();
        (out, started.elapsed())
    };
    let (out, took) = run(&[
        "--state",
        "postgres://kiln:secret@192.0.2.1/kiln?sslmode=disable",
        "token",
        "list",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--allow-plaintext-postgres")
            && err.contains("192.0.2.1")
            && !err.contains("secret"),
        "{err}"
    );
    // The connect timeout is 10 s: an attempt would have taken it.
    assert!(took < Duration::from_secs(3), "{took:?}: {err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let (out, took) = run(&[
        "--state",
        "postgres://kiln@192.0.2.1/kiln",
        "--postgres-ca",
        missing.to_str().unwrap(),
        "token",
        "list",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("missing-ca.pem"), "{err}");
    assert!(took < Duration::from_secs(3), "{took:?}: {err}");
}

/// TLS to PostgreSQL with the server's certificate checked: the right CA connects, another
/// CA is refused.
#[test]
fn postgres_over_tls_checks_the_server_certificate() {
    let pg = TempPostgres::start_tls().unwrap();
    let plain = pg.database("kiln_tls").unwrap();
    let url = format!("{plain}?sslmode=require");
    let ca = pg.tls_ca().unwrap().to_str().unwrap().to_string();
    let cli = |ca: &str, args: &[&str]| {
        Command::new(BIN)
            .args(["--state", &url, "--postgres-ca", ca])
            .args(args)
            .output()
            .unwrap()
    };
    let out = cli(&ca, &["token", "create", "--ttl", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A CA that did not issue the certificate: refused, and the message says why.
    let other_dir = tempfile::tempdir().unwrap();
    let other = other_dir.path().join("other-ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["other".to_string()]).unwrap();
    std::fs::write(&other, cert.cert.pem()).unwrap();
    let out = cli(other.to_str().unwrap(), &["token", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another CA was accepted");
    assert!(err.to_ascii_lowercase().contains("certificate"), "{err}");
}

/// An open-file limit below --max-connections: the soft limit is raised to the hard one
/// and the connections are kept under it, with a warning that says how to raise it.
#[test]
fn the_open_file_limit_is_raised_and_connections_kept_under_it() {
    let state = State::new(Backend::Sqlite);
    let log = state.dir.path().join("prlimit.log");
    let mut child = Command::new("prlimit")
        .args(["--nofile=128:256", "--", BIN, "--state", &state.url])
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "1024",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        line.starts_with("kiln-enroll: listening on"),
        "{line}{text}"
    );
    assert!(text.contains("raised from 128 to 256"), "{text}");
    assert!(
        text.contains("--max-connections 1024") && text.contains("at most 192"),
        "{text}"
    );
}
