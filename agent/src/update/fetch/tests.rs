//! The download against a local HTTP server (std's TcpListener in a thread) that drops
//! connections, ignores ranges, changes the file, redirects, and over TLS.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::*;

/// How the test server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Honors ranges (206).
    Ranges,
    /// Answers 200 with the whole file to every request.
    IgnoreRanges,
    /// Answers ranges, but claims another total size after the first connection.
    Changed,
    /// Answers without Content-Length (body to the end of the connection).
    NoLength,
    /// Answers 404.
    NotFound,
    /// Redirects `/bundle` to `/real/bundle`, then serves with ranges.
    Redirect,
}

/// The requests a server saw: (path, Range header).
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Serves `data` on 127.0.0.1; the first connection's body stops after `drop_after`
/// bytes (when given) and the connection closes.
fn serve(data: Vec<u8>, mode: Mode, drop_after: Option<usize>) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let (path, range) = read_request(&conn);
            log.lock().unwrap().push((path.clone(), range.clone()));
            let cut = if first { drop_after } else { None };
            let changed = mode == Mode::Changed && !first;
            first = false;
            answer(conn, &data, mode, &path, range, cut, changed);
        }
    });
    (port, seen)
}

fn read_request(conn: &TcpStream) -> (String, Option<String>) {
    let mut reader = BufReader::new(conn);
    let mut path = String::new();
    let mut range = None;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    if let Some(p) = line.split(' ').nth(1) {
        path = p.to_string();
    }
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    (path, range)
}

fn answer(
    mut conn: TcpStream,
    data: &[u8],
    mode: Mode,
    path: &str,
    range: Option<String>,
    cut: Option<usize>,
    changed: bool,
) {
    let total = data.len();
    let head = match mode {
        Mode::NotFound => {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        Mode::Redirect if path == "/bundle" => {
            let _ = conn.write_all(
                b"HTTP/1.1 302 Found\r\nLocation: /real/bundle\r\nContent-Length: 0\r\n\r\n",
            );
            return;
        }
        Mode::NoLength => {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let _ = conn.write_all(data);
            return;
        }
        _ => match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) if mode != Mode::IgnoreRanges => {
                let start: usize = r.trim_end_matches('-').parse().unwrap();
                let claimed = if changed { total + 1 } else { total };
                (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {start}-{}/{claimed}\r\n\r\n",
                        total - start,
                        total - 1
                    ),
                    start,
                )
            }
            _ => (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n"),
                0,
            ),
        },
    };
    let (head, start) = head;
    let body = &data[start..];
    let body = match cut {
        Some(n) => &body[..n.min(body.len())],
        None => body,
    };
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn fast() -> FetchOptions {
    FetchOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        attempts: 3,
        backoff: Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(5),
        },
        ca_file: "/nonexistent".into(),
    }
}

fn open_url(url: &str, opts: &FetchOptions) -> Result<HttpStream<TcpConnector>, FetchError> {
    HttpStream::open(
        url,
        Url::parse(url).unwrap(),
        TcpConnector::new(opts.clone()),
        opts,
    )
}

/// Reads the whole stream in 64 KiB reads, calling `after_first` after the first one.
fn read_all(s: &mut dyn BundleStream, commit_after_first: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if commit_after_first {
            s.committed();
        }
    }
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let bundle = data(1_000_000);
    let (port, seen) = serve(bundle.clone(), Mode::Ranges, Some(300_001));
    let url = format!("http://127.0.0.1:{port}/bundle");
    let mut s = open_url(&url, &fast()).unwrap();
    assert_eq!(s.total_len(), 1_000_000);
    let got = read_all(&mut s, true).unwrap();
    assert!(got == bundle, "the bytes differ");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            ("/bundle".to_string(), None),
            ("/bundle".to_string(), Some("bytes=300001-".to_string()))
        ]
    );
    let notes = s.take_notes();
    assert!(
        notes.len() == 1 && notes[0].contains("broke after 300001 of 1000000 bytes"),
        "{notes:?}"
    );
}

#[test]
fn a_server_ignoring_ranges_is_reread_only_before_anything_was_written() {
    let bundle = data(200_000);
    let (port, _) = serve(bundle.clone(), Mode::IgnoreRanges, Some(70_000));
    let url = format!("http://127.0.0.1:{port}/b");
    let mut s = open_url(&url, &fast()).unwrap();
    let got = read_all(&mut s, false).unwrap();
    assert!(got == bundle, "the bytes differ");
    assert!(s
        .take_notes()
        .iter()
        .any(|n| n.contains("ignores range requests")));

    let (port, _) = serve(bundle, Mode::IgnoreRanges, Some(70_000));
    let url = format!("http://127.0.0.1:{port}/b");
    let mut s = open_url(&url, &fast()).unwrap();
    let e = read_all(&mut s, true).unwrap_err();
    let e = FetchError::from_io(&e).unwrap();
    assert!(
        matches!(e, FetchError::NoRanges { offset: 70_000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("supports Range requests"), "{e}");
}

#[test]
fn a_file_that_changed_on_the_server_stops_the_download() {
    let (port, _) = serve(data(100_000), Mode::Changed, Some(1000));
    let url = format!("http://127.0.0.1:{port}/b");
    let mut s = open_url(&url, &fast()).unwrap();
    let e = read_all(&mut s, true).unwrap_err();
    let e = FetchError::from_io(&e).unwrap();
    assert!(e.to_string().contains("changed during the download"), "{e}");
}

#[test]
fn a_download_that_keeps_breaking_fails_with_the_offset() {
    // Every connection after the first is refused: the listener is gone.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        read_request(&conn);
        answer(conn, &data(5000), Mode::Ranges, "/", None, Some(100), false);
        // Dropping the listener refuses the rest.
    });
    let url = format!("http://127.0.0.1:{port}/b");
    let mut s = open_url(&url, &fast()).unwrap();
    let e = read_all(&mut s, true).unwrap_err();
    let e = FetchError::from_io(&e).unwrap();
    assert!(
        matches!(
            e,
            FetchError::Broken {
                offset: 100,
                total: 5000,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        e.to_string().contains("broke after 100 of 5000 bytes"),
        "{e}"
    );
}

#[test]
fn an_unreachable_url_is_one_line_after_a_few_attempts() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/homelab-x86_64.update");
    let e = open_url(&url, &fast()).err().unwrap();
    let text = e.to_string();
    assert!(
        matches!(e, FetchError::Unreachable { attempts: 3, .. }),
        "{text}"
    );
    assert!(
        text.starts_with(&format!(
            "cannot reach {url}: connecting to 127.0.0.1:{port}"
        )),
        "{text}"
    );
    assert!(text.contains("check the URL"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    let e = Url::parse("http://no-such-host.invalid/b")
        .map(|u| HttpStream::open("x", u, TcpConnector::new(fast()), &fast()));
    assert!(matches!(e, Ok(Err(FetchError::Unreachable { .. }))));
}

#[test]
fn answers_without_length_or_success_are_refused_by_name() {
    let (port, _) = serve(data(10), Mode::NoLength, None);
    let e = open_url(&format!("http://127.0.0.1:{port}/b"), &fast())
        .err()
        .unwrap();
    assert!(e.to_string().contains("no Content-Length"), "{e}");
    let (port, _) = serve(data(10), Mode::NotFound, None);
    let url = format!("http://127.0.0.1:{port}/b");
    let e = open_url(&url, &fast()).err().unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "{url} answered HTTP 404 Not Found (check the URL and that the server offers the \
             bundle)"
        )
    );
}

#[test]
fn redirects_are_followed_and_resumes_use_the_target() {
    let bundle = data(50_000);
    let (port, seen) = serve(bundle.clone(), Mode::Redirect, None);
    let url = format!("http://127.0.0.1:{port}/bundle");
    let mut s = open_url(&url, &fast()).unwrap();
    assert_eq!(s.url().path, "/real/bundle");
    assert!(read_all(&mut s, true).unwrap() == bundle);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn urls_parse_and_bad_ones_say_why() {
    let u = Url::parse("https://updates.example/x/homelab.update?sig=1#frag").unwrap();
    assert_eq!(
        (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
        (
            Scheme::Https,
            "updates.example",
            443,
            "/x/homelab.update?sig=1"
        )
    );
    assert_eq!(u.text(), "https://updates.example/x/homelab.update?sig=1");
    let u = Url::parse("http://[::1]:8080").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("::1", 8080, "/")
    );
    assert_eq!(u.authority(), "[::1]:8080");
    for (bad, why) in [
        ("ftp://h/x", "only http:// and https://"),
        ("http://h:0/x", "port \"0\""),
        ("http://u@h/x", "user information"),
        ("http:///x", "host is empty"),
        ("http://h/a b", "percent-encode"),
    ] {
        let e = Url::parse(bad).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert!(is_url("https://h/x") && !is_url("/var/tmp/x.update"));
    let e = open("/nonexistent/x.update", &fast()).err().unwrap();
    assert!(
        e.to_string()
            .starts_with("cannot open the bundle /nonexistent/x.update: No such file"),
        "{e}"
    );
    assert_eq!(parse_content_range("bytes 10-99/100"), Some((10, 99, 100)));
    assert_eq!(parse_content_range("bytes 10-100/100"), None);
    assert_eq!(parse_content_range("bytes */100"), None);
}

/// A CA, and a leaf for `localhost` it signed: (CA PEM, leaf chain, leaf key).
fn tls_identity(
    cn: &str,
) -> (
    String,
    Vec<rustls_pki_types::CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, cn);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (
        ca_cert.pem(),
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// Serves `data` over TLS, once per connection, the first connection cut after
/// `drop_after` bytes of body.
fn serve_tls(
    data: Vec<u8>,
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    drop_after: usize,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    thread::spawn(move || {
        let mut first = true;
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { return };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut reader = BufReader::new(&mut tls);
            let mut range = None;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().trim_end_matches('-').parse::<usize>().unwrap());
                }
            }
            drop(reader);
            let total = data.len();
            let (head, start) = match range {
                Some(s) => (
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                         Content-Range: bytes {s}-{}/{total}\r\n\r\n",
                        total - s,
                        total - 1
                    ),
                    s,
                ),
                None => (
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n"),
                    0,
                ),
            };
            let end = if first { start + drop_after } else { total };
            first = false;
            let _ = tls.write_all(head.as_bytes());
            let _ = tls.write_all(&data[start..end.min(total)]);
            let _ = tls.flush();
        }
    });
    port
}

#[test]
fn https_is_verified_against_the_ca_bundle_and_resumes_too() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, chain, key) = tls_identity("kiln test CA");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let bundle = data(400_000);
    let port = serve_tls(bundle.clone(), chain, key, 123_457);
    let opts = FetchOptions {
        ca_file: ca_file.to_string_lossy().into_owned(),
        ..fast()
    };
    let url = format!("https://localhost:{port}/bundle");
    let mut s = open_url(&url, &opts).unwrap();
    assert!(read_all(&mut s, true).unwrap() == bundle);
    assert!(s.take_notes()[0].contains("after 123457"));

    // Another CA in the bundle: the server is not trusted.
    let (_, chain, key) = tls_identity("another CA");
    let port2 = serve_tls(data(10), chain, key, 10);
    let e = open_url(&format!("https://localhost:{port2}/bundle"), &opts)
        .err()
        .unwrap();
    let text = e.to_string();
    assert!(matches!(e, FetchError::Tls { .. }), "{text}");
    assert!(
        text.contains("UnknownIssuer") || text.contains("issuer"),
        "{text}"
    );
    assert!(text.contains(CA_BUNDLE), "{text}");

    // No CA bundle at all.
    let opts = FetchOptions {
        ca_file: dir.path().join("none").to_string_lossy().into_owned(),
        ..fast()
    };
    let e = open_url(&url, &opts).err().unwrap();
    assert!(e.to_string().contains("ca-certificates package"), "{e}");
}
