//! A fake cloud metadata service for the QEMU tests of the agent's cloud channel.
//!
//! It listens on 127.0.0.1 (a free port) and follows each provider's documented protocol
//! closely enough that the agent's real client code is what gets tested:
//! - EC2 IMDSv2: `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds`
//!   (1-21600, else 400) and is refused with `X-Forwarded-For` (403); every GET needs
//!   `X-aws-ec2-metadata-token` with a token it handed out (else 401). User-data at
//!   `/latest/user-data` (404 without), identity under `/latest/meta-data/`.
//! - GCE: every request needs `Metadata-Flavor: Google` (else 403) and every answer
//!   carries it; user-data at `/computeMetadata/v1/instance/attributes/user-data`. Bodies
//!   are sent chunked, so the agent's chunked decoding runs in the boots too.
//! - Azure IMDS: every request needs `Metadata: true` (else 400) and an `api-version`
//!   query parameter (else 400); `/metadata/instance/compute/userData` answers the base64
//!   user-data (empty when there is none).
//! - Oracle IMDS v2: every request needs `Authorization: Bearer Oracle` (else 401);
//!   `/opc/v2/instance/metadata/user_data` answers base64 (404 without).
//!
//! Every request is recorded (method, path, headers) so tests can check, e.g., that the
//! token PUT came first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

/// Which cloud's metadata service to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Amazon EC2 (IMDSv2).
    Ec2,
    /// Google Compute Engine.
    Gce,
    /// Microsoft Azure IMDS.
    Azure,
    /// Oracle Cloud IMDS v2.
    Oracle,
}

impl Provider {
    /// The agent's channel name for this cloud (`ec2`, `gce`, `azure`, `oracle`).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Ec2 => "ec2",
            Provider::Gce => "gce",
            Provider::Azure => "azure",
            Provider::Oracle => "oracle",
        }
    }

    /// QEMU `-smbios` arguments that make the guest's DMI data name this cloud, with the
    /// values the agent's detection relies on (see agent/src/config/cloud/mod.rs).
    pub fn smbios_args(self) -> Vec<String> {
        let (t1, t3) = match self {
            Provider::Ec2 => (
                "type=1,manufacturer=Amazon EC2,product=m5.large,uuid=ec2e1916-9099-7caf-fd21-012345abcdef",
                "type=3,manufacturer=Amazon EC2,asset=i-0af01c0123456789a",
            ),
            Provider::Gce => (
                "type=1,manufacturer=Google,product=Google Compute Engine",
                "type=3,manufacturer=Google",
            ),
            Provider::Azure => (
                "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine",
                "type=3,manufacturer=Microsoft Corporation,asset=7783-7084-3265-9085-8269-3286-77",
            ),
            Provider::Oracle => (
                "type=1,manufacturer=QEMU,product=Standard PC",
                "type=3,manufacturer=QEMU,asset=OracleCloud.com",
            ),
        };
        vec!["-smbios".into(), t1.into(), "-smbios".into(), t3.into()]
    }
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `PUT`, ….
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Header lines as sent.
    pub headers: Vec<(String, String)>,
    /// The status the server answered.
    pub status: u16,
}

impl Recorded {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    provider: Provider,
    user_data: Option<String>,
    tokens: Vec<String>,
    log: Vec<Recorded>,
}

/// A running fake metadata server; stops when dropped.
pub struct MetadataServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetadataServer {
    /// Starts a server for `provider` holding `user_data` (given as plain text; Azure and
    /// Oracle serve it base64-encoded as they do).
    pub fn start(provider: Provider, user_data: Option<&str>) -> anyhow::Result<MetadataServer> {
        let listener =
            TcpListener::bind("127.0.0.1:0").context("binding the fake metadata server")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            provider,
            user_data: user_data.map(str::to_string),
            tokens: Vec::new(),
            log: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        Ok(MetadataServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().map(|s| s.log.clone()).unwrap_or_default()
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Options for the VM's user-mode NIC (`kiln::qemu::Vm::user_net_options`) that put it on
/// 169.254.169.0/24 and relay the guest's connections to 169.254.169.254:80 to
/// `127.0.0.1:port` through `relay` (the `kiln-tcp-relay` binary), one relay per
/// connection. slirp only forwards addresses inside its own network, hence the
/// link-local subnet; the host alias moves to 169.254.169.2 and DHCP starts at .15.
/// Verified with QEMU 10.0 on x86_64 (q35) and arm64 (virt).
pub fn nic_options(relay: &std::path::Path, port: u16) -> Vec<String> {
    vec![
        "net=169.254.169.0/24".into(),
        "host=169.254.169.2".into(),
        "dhcpstart=169.254.169.15".into(),
        format!(
            "guestfwd=tcp:169.254.169.254:80-cmd:{} 127.0.0.1:{port}",
            relay.display()
        ),
    ]
}

fn serve(mut conn: TcpStream, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Some((method, path, headers)) = read_request(&mut conn) else {
        return;
    };
    let reply = {
        let Ok(mut st) = state.lock() else { return };
        let reply = answer(&mut st, &method, &path, &headers);
        st.log.push(Recorded {
            method,
            path,
            headers,
            status: reply.status,
        });
        reply
    };
    let _ = conn.write_all(&reply.encode());
    let _ = conn.flush();
}

type Headers = Vec<(String, String)>;

fn read_request(conn: &mut TcpStream) -> Option<(String, String, Headers)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > 16 * 1024 {
            return None;
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((method, path, headers))
}

struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Reply {
    fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", "text/plain".into())],
            body: body.as_bytes().to_vec(),
            chunked: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Status",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("Connection: close\r\n");
        let mut bytes;
        if self.chunked {
            out.push_str("Transfer-Encoding: chunked\r\n\r\n");
            bytes = out.into_bytes();
            // Two chunks when there is enough body, to exercise reassembly.
            let mid = self.body.len() / 2;
            for part in [&self.body[..mid], &self.body[mid..]] {
                if !part.is_empty() {
                    bytes.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
                    bytes.extend_from_slice(part);
                    bytes.extend_from_slice(b"\r\n");
                }
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
            bytes = out.into_bytes();
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn answer(st: &mut State, method: &str, path: &str, headers: &Headers) -> Reply {
    match st.provider {
        Provider::Ec2 => ec2(st, method, path, headers),
        Provider::Gce => {
            let mut r = gce(st, method, path, headers);
            r.headers.push(("Metadata-Flavor", "Google".into()));
            r.headers.push(("Server", "Metadata Server for VM".into()));
            r.chunked = true;
            r
        }
        Provider::Azure => azure(st, method, path, headers),
        Provider::Oracle => oracle(st, method, path, headers),
    }
}

fn ec2(st: &mut State, method: &str, path: &str, headers: &Headers) -> Reply {
    if path == "/latest/api/token" {
        if method != "PUT" {
            return Reply::new(405, "");
        }
        if header(headers, "X-Forwarded-For").is_some() {
            return Reply::new(403, "");
        }
        let ttl = header(headers, "X-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.parse::<u32>().ok());
        return match ttl {
            Some(1..=21600) => {
                let token = format!("AQAEAFake-Token-{:04}==", st.tokens.len() + 1);
                st.tokens.push(token.clone());
                let mut r = Reply::new(200, &token);
                r.headers
                    .push(("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600".into()));
                r
            }
            _ => Reply::new(400, ""),
        };
    }
    let token_ok = header(headers, "X-aws-ec2-metadata-token")
        .is_some_and(|t| st.tokens.iter().any(|k| k == t));
    if !token_ok {
        return Reply::new(401, "");
    }
    if method != "GET" {
        return Reply::new(405, "");
    }
    match path {
        "/latest/user-data" => match &st.user_data {
            Some(u) => Reply::new(200, u),
            None => Reply::new(404, ""),
        },
        "/latest/meta-data/instance-id" => Reply::new(200, "i-0af01c0123456789a"),
        "/latest/meta-data/hostname" | "/latest/meta-data/local-hostname" => {
            Reply::new(200, "ip-169-254-169-15.ec2.internal")
        }
        "/latest/meta-data/" => Reply::new(200, "hostname\ninstance-id\nlocal-hostname"),
        _ => Reply::new(404, ""),
    }
}

fn gce(st: &State, method: &str, path: &str, headers: &Headers) -> Reply {
    if header(headers, "Metadata-Flavor") != Some("Google")
        || header(headers, "X-Forwarded-For").is_some()
    {
        return Reply::new(403, "Missing required header \"Metadata-Flavor\"");
    }
    if method != "GET" {
        return Reply::new(405, "");
    }
    match path {
        "/computeMetadata/v1/instance/attributes/user-data" => match &st.user_data {
            Some(u) => Reply::new(200, u),
            None => Reply::new(404, "Not Found"),
        },
        "/computeMetadata/v1/instance/id" => Reply::new(200, "4520031799277581759"),
        "/computeMetadata/v1/instance/hostname" => Reply::new(200, "gce-vm.c.project.internal"),
        _ => Reply::new(404, "Not Found"),
    }
}

fn azure(st: &State, method: &str, path: &str, headers: &Headers) -> Reply {
    let json = |status: u16, error: &str, message: &str| {
        let mut r = Reply::new(
            status,
            &format!("{{\"error\": \"{error}\", \"message\": \"{message}\"}}"),
        );
        r.headers[0].1 = "application/json; charset=utf-8".into();
        r
    };
    if header(headers, "Metadata") != Some("true") {
        return json(400, "Bad request", "Required metadata header not specified");
    }
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    if !query.split('&').any(|kv| kv.starts_with("api-version=")) {
        return json(
            400,
            "Bad request",
            "Required querystring parameter api-version is missing",
        );
    }
    if method != "GET" {
        return json(405, "Method not allowed", "Only GET is allowed");
    }
    match base {
        "/metadata/instance/compute/userData" => Reply::new(
            200,
            &st.user_data.as_deref().map(base64).unwrap_or_default(),
        ),
        "/metadata/instance/compute/vmId" => {
            Reply::new(200, "02aab8a4-74ef-476e-8182-f6d2ba4166a6")
        }
        "/metadata/instance/compute/name" => Reply::new(200, "azure-vm"),
        _ => json(404, "Not found", "The requested path is not found"),
    }
}

fn oracle(st: &State, method: &str, path: &str, headers: &Headers) -> Reply {
    if header(headers, "Authorization") != Some("Bearer Oracle") {
        return Reply::new(401, "{\"code\": \"NotAuthorized\"}");
    }
    if method != "GET" {
        return Reply::new(405, "");
    }
    match path {
        "/opc/v2/instance/metadata/user_data" => match &st.user_data {
            Some(u) => Reply::new(200, &base64(u)),
            None => Reply::new(404, "{\"code\": \"NotFound\"}"),
        },
        "/opc/v2/instance/id" => Reply::new(200, "ocid1.instance.oc1.phx.fake"),
        "/opc/v2/instance/hostname" => Reply::new(200, "oracle-vm"),
        _ => Reply::new(404, "{\"code\": \"NotFound\"}"),
    }
}

/// Standard base64 with padding, as the clouds serve user-data (the contract's encoder,
/// which the agent's decoder is tested against).
pub fn base64(text: &str) -> String {
    kiln_contract::base64::encode(text.as_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use std::process::Command;

    /// curl (an independent client): (status, body, response headers).
    fn curl(
        srv: &MetadataServer,
        method: &str,
        path: &str,
        headers: &[&str],
    ) -> (u16, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let hdr = dir.path().join("h");
        let mut c = Command::new("curl");
        c.args(["-s", "-X", method, "-o", "-", "-D"])
            .arg(&hdr)
            .args(["-w", "\n%{http_code}"]);
        for h in headers {
            c.args(["-H", h]);
        }
        c.arg(format!("http://{}{path}", srv.addr()));
        let out = c.output().expect("curl (apt package curl)");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        let headers = std::fs::read_to_string(&hdr).unwrap();
        (code.trim().parse().unwrap(), body.to_string(), headers)
    }

    #[test]
    fn ec2_needs_a_token_from_a_put_first() {
        let srv = MetadataServer::start(Provider::Ec2, Some("hostname = \"x\"\n")).unwrap();
        assert_eq!(curl(&srv, "GET", "/latest/user-data", &[]).0, 401);
        assert_eq!(
            curl(
                &srv,
                "GET",
                "/latest/user-data",
                &["X-aws-ec2-metadata-token: forged"]
            )
            .0,
            401
        );
        assert_eq!(curl(&srv, "PUT", "/latest/api/token", &[]).0, 400);
        let ttl = "X-aws-ec2-metadata-token-ttl-seconds: 21600";
        assert_eq!(
            curl(
                &srv,
                "PUT",
                "/latest/api/token",
                &[ttl, "X-Forwarded-For: 1.2.3.4"]
            )
            .0,
            403
        );
        let (code, token, _) = curl(&srv, "PUT", "/latest/api/token", &[ttl]);
        assert_eq!(code, 200);
        let auth = format!("X-aws-ec2-metadata-token: {token}");
        let (code, body, _) = curl(&srv, "GET", "/latest/user-data", &[&auth]);
        assert_eq!((code, body.as_str()), (200, "hostname = \"x\"\n"));
        let (code, body, _) = curl(&srv, "GET", "/latest/meta-data/instance-id", &[&auth]);
        assert_eq!((code, body.as_str()), (200, "i-0af01c0123456789a"));
        let log = srv.requests();
        assert_eq!(log.len(), 7);
        assert_eq!((log[4].method.as_str(), log[4].status), ("PUT", 200));
        assert_eq!(
            log[5].header("x-aws-ec2-metadata-token"),
            Some(token.as_str())
        );

        let empty = MetadataServer::start(Provider::Ec2, None).unwrap();
        let (_, token, _) = curl(&empty, "PUT", "/latest/api/token", &[ttl]);
        let auth = format!("X-aws-ec2-metadata-token: {token}");
        assert_eq!(curl(&empty, "GET", "/latest/user-data", &[&auth]).0, 404);
    }

    #[test]
    fn gce_needs_and_sends_metadata_flavor_and_answers_chunked() {
        let srv = MetadataServer::start(Provider::Gce, Some("hostname = \"g\"\n")).unwrap();
        let path = "/computeMetadata/v1/instance/attributes/user-data";
        let (code, _, h) = curl(&srv, "GET", path, &[]);
        assert_eq!(code, 403);
        assert!(h.contains("Metadata-Flavor: Google"), "{h}");
        let (code, body, h) = curl(&srv, "GET", path, &["Metadata-Flavor: Google"]);
        assert_eq!((code, body.as_str()), (200, "hostname = \"g\"\n"));
        assert!(h.contains("Transfer-Encoding: chunked"), "{h}");
        let (code, body, _) = curl(
            &srv,
            "GET",
            "/computeMetadata/v1/instance/id",
            &["Metadata-Flavor: Google"],
        );
        assert_eq!((code, body.as_str()), (200, "4520031799277581759"));
        let none = MetadataServer::start(Provider::Gce, None).unwrap();
        assert_eq!(
            curl(&none, "GET", path, &["Metadata-Flavor: Google"]).0,
            404
        );
    }

    #[test]
    fn azure_needs_the_metadata_header_and_api_version() {
        let srv = MetadataServer::start(Provider::Azure, Some("hostname = \"a\"\n")).unwrap();
        let path = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text";
        let (code, body, _) = curl(&srv, "GET", path, &[]);
        assert_eq!(code, 400);
        assert!(body.contains("metadata header"), "{body}");
        let (code, _, _) = curl(
            &srv,
            "GET",
            "/metadata/instance/compute/userData",
            &["Metadata: true"],
        );
        assert_eq!(code, 400);
        let (code, body, _) = curl(&srv, "GET", path, &["Metadata: true"]);
        assert_eq!((code, body.as_str()), (200, "aG9zdG5hbWUgPSAiYSIK"));
        let none = MetadataServer::start(Provider::Azure, None).unwrap();
        let (code, body, _) = curl(&none, "GET", path, &["Metadata: true"]);
        assert_eq!((code, body.as_str()), (200, ""));
    }

    #[test]
    fn oracle_needs_the_bearer_header() {
        let srv = MetadataServer::start(Provider::Oracle, Some("hostname = \"o\"\n")).unwrap();
        let path = "/opc/v2/instance/metadata/user_data";
        assert_eq!(curl(&srv, "GET", path, &[]).0, 401);
        assert_eq!(
            curl(&srv, "GET", path, &["Authorization: Bearer Other"]).0,
            401
        );
        let (code, body, _) = curl(&srv, "GET", path, &["Authorization: Bearer Oracle"]);
        assert_eq!((code, body.as_str()), (200, "aG9zdG5hbWUgPSAibyIK"));
        let none = MetadataServer::start(Provider::Oracle, None).unwrap();
        assert_eq!(
            curl(&none, "GET", path, &["Authorization: Bearer Oracle"]).0,
            404
        );
    }

    #[test]
    fn base64_matches_coreutils() {
        for s in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "hostname = \"node-1\"\n",
        ] {
            let mut child = Command::new("base64")
                .arg("-w0")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            assert_eq!(base64(s), String::from_utf8(out.stdout).unwrap(), "{s:?}");
        }
    }
}
