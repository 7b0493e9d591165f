use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use super::http::{Http, HttpError, Request, Response, TcpHttp};
use super::*;
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::forward;

/// A scripted metadata server with a virtual clock: the provider flows run without a
/// network or real sleeps.
type Logged = (String, String, Vec<(String, String)>);

struct Script {
    answers: VecDeque<Result<Response, HttpError>>,
    log: Vec<Logged>,
    /// The virtual clock (its `elapsed`).
    base: FakeSys,
}

forward!(Script => base: Clock);
fake_base!(Script => base);

impl Script {
    fn new(answers: Vec<Result<Response, HttpError>>) -> Script {
        Script {
            answers: answers.into(),
            log: Vec::new(),
            base: FakeSys::default(),
        }
    }
}

impl Http for Script {
    fn send(&mut self, req: &Request<'_>, _timeout: Duration) -> Result<Response, HttpError> {
        self.log.push((
            req.method.to_string(),
            req.path.to_string(),
            req.headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        ));
        self.answers.pop_front().unwrap_or_else(|| {
            Err(HttpError::Connect(
                std::io::ErrorKind::ConnectionRefused.into(),
            ))
        })
    }
    fn base_url(&self) -> String {
        "http://169.254.169.254".into()
    }
}

fn ok(status: u16, body: &str) -> Result<Response, HttpError> {
    Ok(Response {
        status,
        reason: String::new(),
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    })
}

fn google(status: u16, body: &str) -> Result<Response, HttpError> {
    Ok(Response {
        status,
        reason: String::new(),
        // Go's net/http (GCE's server) sends canonical case; the check must not depend on it.
        headers: vec![("metadata-flavor".into(), "Google".into())],
        body: body.as_bytes().to_vec(),
    })
}

fn no_media() -> Result<Option<azure_media::Found>, String> {
    Ok(None)
}

fn run(
    p: Provider,
    answers: Vec<Result<Response, HttpError>>,
) -> (Result<CloudUserData, CloudError>, Script) {
    let mut s = Script::new(answers);
    let r = fetch_from(p, &mut s, Duration::from_secs(30), &mut no_media);
    (r, s)
}

const TOML: &str = "#kiln-config\nhostname = \"n1\"\n";
const TOML_B64: &str = "I2tpbG4tY29uZmlnCmhvc3RuYW1lID0gIm4xIgo=";

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn detects_each_cloud_from_dmi() {
    let dmi = |f: &dyn Fn(&mut Dmi)| {
        let mut d = Dmi::default();
        f(&mut d);
        detect(&d)
    };
    assert_eq!(dmi(&|_| {}), None);
    assert_eq!(dmi(&|d| d.sys_vendor = "QEMU".into()), None);
    assert_eq!(
        dmi(&|d| d.sys_vendor = "Amazon EC2".into()),
        Some(Provider::Ec2)
    );
    assert_eq!(
        dmi(&|d| d.bios_vendor = "Amazon EC2".into()),
        Some(Provider::Ec2)
    );
    assert_eq!(
        dmi(&|d| d.product_uuid = "EC2E1916-9099-7CAF-FD21-012345ABCDEF".into()),
        Some(Provider::Ec2)
    );
    assert_eq!(
        dmi(&|d| d.product_uuid = "ec2e1916-9099-7caf-fd21-012345abcdef".into()),
        Some(Provider::Ec2)
    );
    // AWS's little-endian example.
    assert_eq!(
        dmi(&|d| d.product_uuid = "45E12AEC-DCD1-B213-94ED-012345ABCDEF".into()),
        Some(Provider::Ec2)
    );
    assert_eq!(
        dmi(&|d| d.product_uuid = "12345678-DCD1-B213-94ED-012345ABCDEF".into()),
        None
    );
    assert_eq!(
        dmi(&|d| d.product_name = "Google Compute Engine".into()),
        Some(Provider::Gce)
    );
    assert_eq!(
        dmi(&|d| d.sys_vendor = "Google".into()),
        Some(Provider::Gce)
    );
    assert_eq!(
        dmi(&|d| d.chassis_asset_tag = AZURE_ASSET_TAG.into()),
        Some(Provider::Azure)
    );
    assert_eq!(
        dmi(&|d| {
            d.sys_vendor = "Microsoft Corporation".into();
            d.product_name = "Virtual Machine".into();
        }),
        Some(Provider::Azure)
    );
    assert_eq!(
        dmi(&|d| d.sys_vendor = "Microsoft Corporation".into()),
        None
    );
    assert_eq!(
        dmi(&|d| d.chassis_asset_tag = "OracleCloud.com".into()),
        Some(Provider::Oracle)
    );
}

#[test]
fn reads_dmi_files_and_ignores_missing_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sys_vendor"), "Amazon EC2\n").unwrap();
    std::fs::write(dir.path().join("chassis_asset_tag"), " \n").unwrap();
    let d = Dmi::read(dir.path());
    assert_eq!(d.sys_vendor, "Amazon EC2");
    assert_eq!(d.chassis_asset_tag, "");
    assert_eq!(d.product_name, "");
    assert_eq!(detect(&d), Some(Provider::Ec2));
}

#[test]
fn no_cloud_in_dmi_means_no_network() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sys_vendor"), "QEMU\n").unwrap();
    // Returns at once: with a cloud it would try 169.254.169.254 for the whole budget.
    let t = Instant::now();
    assert_eq!(fetch(dir.path(), Duration::from_secs(60)).unwrap(), None);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn ec2_puts_for_a_token_then_gets_user_data_with_it() {
    let (r, s) = run(Provider::Ec2, vec![ok(200, "TOKEN-abc\n"), ok(200, TOML)]);
    let r = r.unwrap();
    assert_eq!(r.provider, "ec2");
    assert_eq!(r.source, "http://169.254.169.254/latest/user-data");
    assert_eq!(r.text.as_deref(), Some(TOML));
    assert_eq!(s.log.len(), 2);
    assert_eq!(
        (s.log[0].0.as_str(), s.log[0].1.as_str()),
        ("PUT", "/latest/api/token")
    );
    assert_eq!(
        header(&s.log[0].2, "X-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    assert_eq!(
        (s.log[1].0.as_str(), s.log[1].1.as_str()),
        ("GET", "/latest/user-data")
    );
    assert_eq!(
        header(&s.log[1].2, "X-aws-ec2-metadata-token"),
        Some("TOKEN-abc")
    );
}

#[test]
fn ec2_without_user_data_is_none_and_a_rejected_token_is_an_error() {
    let (r, _) = run(Provider::Ec2, vec![ok(200, "T"), ok(404, "")]);
    assert_eq!(r.unwrap().text, None);
    let (r, _) = run(Provider::Ec2, vec![ok(200, "T"), ok(401, "")]);
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("HTTP 401") && e.contains("token was rejected"),
        "{e}"
    );
    assert!(e.contains("/latest/user-data"), "{e}");
    let (r, _) = run(Provider::Ec2, vec![ok(403, "")]);
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("/latest/api/token") && e.contains("turned off"),
        "{e}"
    );
}

#[test]
fn gce_sends_and_checks_the_metadata_flavor() {
    let (r, s) = run(Provider::Gce, vec![google(200, TOML)]);
    assert_eq!(r.unwrap().text.as_deref(), Some(TOML));
    assert_eq!(
        s.log[0].1,
        "/computeMetadata/v1/instance/attributes/user-data"
    );
    assert_eq!(header(&s.log[0].2, "Metadata-Flavor"), Some("Google"));
    let (r, _) = run(Provider::Gce, vec![google(404, "")]);
    assert_eq!(r.unwrap().text, None);
    let (r, _) = run(Provider::Gce, vec![ok(200, TOML)]);
    let e = r.unwrap_err();
    assert!(matches!(e.kind, CloudErrorKind::NotGoogle), "{e}");
}

#[test]
fn azure_decodes_user_data_and_falls_back_to_custom_data() {
    let (r, s) = run(Provider::Azure, vec![ok(200, TOML_B64)]);
    assert_eq!(r.unwrap().text.as_deref(), Some(TOML));
    assert_eq!(
        s.log[0].1,
        "/metadata/instance/compute/userData?api-version=2021-01-01&format=text"
    );
    assert_eq!(header(&s.log[0].2, "Metadata"), Some("true"));

    let mut s = Script::new(vec![ok(200, "")]);
    let mut media = || Ok(Some(("/dev/sr0:ovf-env.xml".to_string(), TOML.to_string())));
    let r = fetch_from(Provider::Azure, &mut s, Duration::from_secs(5), &mut media).unwrap();
    assert_eq!(r.source, "/dev/sr0:ovf-env.xml");
    assert_eq!(r.text.as_deref(), Some(TOML));

    let (r, _) = run(Provider::Azure, vec![ok(200, "")]);
    assert_eq!(r.unwrap().text, None);
    let (r, _) = run(Provider::Azure, vec![ok(200, "!!!")]);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("not base64"), "{e}");
    let (r, _) = run(Provider::Azure, vec![ok(400, "")]);
    assert!(r.unwrap_err().to_string().contains("HTTP 400"));
}

#[test]
fn oracle_sends_the_bearer_header_and_decodes() {
    let (r, s) = run(Provider::Oracle, vec![ok(200, TOML_B64)]);
    assert_eq!(r.unwrap().text.as_deref(), Some(TOML));
    assert_eq!(s.log[0].1, "/opc/v2/instance/metadata/user_data");
    assert_eq!(header(&s.log[0].2, "Authorization"), Some("Bearer Oracle"));
    let (r, _) = run(Provider::Oracle, vec![ok(404, "")]);
    assert_eq!(r.unwrap().text, None);
    // Base64 of bytes that are not UTF-8.
    let (r, _) = run(Provider::Oracle, vec![ok(200, "//79")]);
    assert!(r.unwrap_err().to_string().contains("not UTF-8"));
}

#[test]
fn retries_while_the_network_comes_up() {
    let refused = || {
        Err(HttpError::Connect(
            std::io::ErrorKind::ConnectionRefused.into(),
        ))
    };
    let (r, s) = run(
        Provider::Oracle,
        vec![
            refused(),
            refused(),
            Err(HttpError::Interrupted(
                "the connection closed without a response".into(),
            )),
            ok(503, ""),
            ok(200, TOML_B64),
        ],
    );
    assert_eq!(r.unwrap().text.as_deref(), Some(TOML));
    assert_eq!(s.log.len(), 5);
    // Backoff 0.25 + 0.5 + 1 + 2 s.
    assert_eq!(s.elapsed, Duration::from_millis(3750));
}

#[test]
fn gives_up_when_the_budget_is_spent_and_says_where() {
    let (r, s) = run(Provider::Ec2, vec![]);
    let e = r.unwrap_err();
    assert_eq!(e.provider, "ec2");
    assert_eq!(e.source, "http://169.254.169.254/latest/api/token");
    assert!(s.elapsed <= Duration::from_secs(30), "{:?}", s.elapsed);
    assert!(s.elapsed >= Duration::from_secs(28), "{:?}", s.elapsed);
    let text = e.to_string();
    assert!(text.contains("refused"), "{text}");
    assert!(
        text.contains("the node goes on without cloud config"),
        "{text}"
    );
    match e.kind {
        CloudErrorKind::GaveUp { attempts, .. } => assert!(attempts > 10, "{attempts}"),
        k => panic!("{k}"),
    }
}

#[test]
fn malformed_answers_are_not_retried() {
    let (r, s) = run(
        Provider::Gce,
        vec![Err(HttpError::Malformed(
            "status line \"SSH-2.0\" is not HTTP/1.x".into(),
        ))],
    );
    assert!(r.unwrap_err().to_string().contains("bad response"));
    assert_eq!(s.log.len(), 1);
}

// --- the real client, over a socket (the parser's own tests are in
// kiln_enroll_proto::http) ---

/// Serves one connection: records the request, answers `answer`.
fn one_shot(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut b).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&b[..n]);
        }
        c.write_all(answer).unwrap();
        req
    });
    (addr, h)
}

#[test]
fn tcp_client_speaks_http_1_1_over_a_socket() {
    let (addr, h) =
        one_shot(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    let mut c = TcpHttp::new(addr);
    let r = c
        .send(
            &Request {
                method: "PUT",
                path: "/latest/api/token",
                headers: &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
            },
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(r.body, b"abc");
    let req = String::from_utf8(h.join().unwrap()).unwrap();
    assert!(
        req.starts_with("PUT /latest/api/token HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
    assert!(
        req.contains("\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n"),
        "{req}"
    );
    assert!(req.contains("\r\nContent-Length: 0\r\n"), "{req}");
    assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    // The agent's own User-Agent and Accept, once each, not the wire module's defaults.
    assert_eq!(req.matches("User-Agent:").count(), 1, "{req}");
    assert!(req.contains("\r\nUser-Agent: kiln-agent/"), "{req}");
    assert_eq!(req.matches("Accept:").count(), 1, "{req}");
    assert!(req.contains("\r\nAccept: */*\r\n"), "{req}");
}

#[test]
fn tcp_client_sorts_failures_into_retried_and_not() {
    let get = Request {
        method: "GET",
        path: "/",
        headers: &[],
    };
    let send = |answer: &'static [u8]| {
        let (addr, h) = one_shot(answer);
        let r = TcpHttp::new(addr).send(&get, Duration::from_secs(5));
        h.join().unwrap();
        r
    };
    // Not HTTP, or over a limit: the server is wrong, asking again will not help.
    for answer in [
        &b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n",
    ] {
        let e = send(answer).unwrap_err();
        assert!(
            matches!(e, HttpError::Malformed(_)) && !e.is_transient(),
            "{e}"
        );
    }
    // Closed early: the connection broke, so the flows retry.
    for answer in [
        &b""[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let e = send(answer).unwrap_err();
        assert!(
            matches!(e, HttpError::Interrupted(_)) && e.is_transient(),
            "{e}"
        );
    }
    // A header value that would inject a line is refused before anything is sent.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = Request {
        headers: &[("X-aws-ec2-metadata-token", "t\r\nX-Forwarded-For: 1")],
        ..get
    };
    let e = TcpHttp::new(l.local_addr().unwrap())
        .send(&bad, Duration::from_secs(5))
        .unwrap_err();
    assert!(
        matches!(e, HttpError::Request(_)) && !e.is_transient(),
        "{e}"
    );
}

#[test]
fn tcp_client_times_out_on_a_silent_server_and_retries_refusals() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut c = TcpHttp::new(addr);
    let req = Request {
        method: "GET",
        path: "/",
        headers: &[],
    };
    // Accepted (backlog) but never answered.
    let t = Instant::now();
    let e = c.send(&req, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, HttpError::Interrupted(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    drop(l);
    let e = c.send(&req, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, HttpError::Connect(_)), "{e}");
    // The whole flow over a closed port: GaveUp after the budget, naming the URL.
    let t = Instant::now();
    let e = fetch_from(Provider::Gce, &mut c, Duration::from_secs(1), &mut no_media).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(
        e.source,
        format!("http://{addr}/computeMetadata/v1/instance/attributes/user-data")
    );
    assert!(matches!(e.kind, CloudErrorKind::GaveUp { .. }), "{e}");
}

#[test]
fn waits_longer_than_the_budget_for_a_route_then_gives_the_server_a_grace_period() {
    let unreachable = || {
        Err(HttpError::Connect(
            std::io::ErrorKind::NetworkUnreachable.into(),
        ))
    };
    // DHCP takes ~60 s: far over the 30 s budget, still within NETWORK_WAIT.
    let mut answers: Vec<_> = (0..32).map(|_| unreachable()).collect();
    answers.push(ok(404, ""));
    let (r, s) = run(Provider::Oracle, answers);
    assert_eq!(r.unwrap().text, None);
    assert!(s.elapsed > Duration::from_secs(55), "{:?}", s.elapsed);

    // The route appears late, then the server only drops connections: a grace period
    // after the network came up, not the rest of NETWORK_WAIT.
    let mut answers: Vec<_> = (0..32).map(|_| unreachable()).collect();
    answers.extend((0..100).map(|_| Err(HttpError::Interrupted("closed".into()))));
    let (r, s) = run(Provider::Oracle, answers);
    assert!(matches!(r.unwrap_err().kind, CloudErrorKind::GaveUp { .. }));
    assert!(s.elapsed < Duration::from_secs(80), "{:?}", s.elapsed);

    // Never a route: gives up after NETWORK_WAIT and says why.
    let answers: Vec<_> = (0..1000).map(|_| unreachable()).collect();
    let (r, s) = run(Provider::Oracle, answers);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("no network route yet"), "{e}");
    assert!(s.elapsed <= NETWORK_WAIT && s.elapsed > NETWORK_WAIT - Duration::from_secs(3));
}
