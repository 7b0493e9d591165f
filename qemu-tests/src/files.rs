//! A static HTTP/1.1 file server for the update tests: the guests download update
//! bundles and channel documents from the host (10.0.2.2 through QEMU's user network,
//! which reaches the host's 127.0.0.1).
//!
//! It answers `GET` and `HEAD` for the files it was given, honours one `Range:
//! bytes=N-` or `bytes=N-M` (206 with `Content-Range`, 416 past the end), and can cut
//! the body of the next answer after a number of bytes ([`FileServer::cut_next_after`])
//! so a test sees the agent resume a broken download. Every request line and its
//! `Range` header are recorded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET` or `HEAD` (or whatever was sent).
    pub method: String,
    /// The request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct State {
    files: BTreeMap<String, PathBuf>,
    cut_after: Option<(String, u64)>,
    seen: Vec<Seen>,
}

/// The server; it runs until the process ends (its threads hold the listener).
#[derive(Debug, Clone)]
pub struct FileServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FileServer {
    /// Listens on 127.0.0.1 at a free port.
    pub fn start() -> anyhow::Result<FileServer> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the file server")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::Builder::new()
            .name("file-server".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let st = shared.clone();
                    std::thread::spawn(move || serve(conn, &st));
                }
            })
            .context("starting the file server")?;
        Ok(FileServer { addr, state })
    }

    /// Serves `file` at `/name`.
    pub fn add(&self, name: &str, file: PathBuf) {
        self.lock().files.insert(format!("/{name}"), file);
    }

    /// The next answer with a body for `/name` stops after `bytes` bytes of it and
    /// closes the connection, as a dropped download does.
    pub fn cut_next_after(&self, name: &str, bytes: u64) {
        self.lock().cut_after = Some((format!("/{name}"), bytes));
    }

    /// The URL of `/name` as a guest behind QEMU's user network sees it.
    pub fn guest_url(&self, name: &str) -> String {
        format!("http://10.0.2.2:{}/{name}", self.addr.port())
    }

    /// Where it listens on the host.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut out = write_half;
    // Keep-alive: answer requests on this connection until the client closes it.
    while let Some((method, path, range)) = read_head(&mut reader) {
        let file = state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .files
            .get(&path)
            .cloned();
        let answer = answer(&method, file, range.as_deref());
        let cut = if answer.body_len > 0 && method == "GET" {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            match st.cut_after.take() {
                Some((p, bytes)) if p == path => Some(bytes),
                other => {
                    st.cut_after = other;
                    None
                }
            }
        } else {
            None
        };
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .seen
            .push(Seen {
                method: method.clone(),
                path,
                range,
                status: answer.status,
            });
        if send(&mut out, &method, answer, cut).is_err() || cut.is_some() {
            return;
        }
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> Option<(String, String, Option<String>)> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut words = line.split_whitespace();
    let method = words.next()?.to_string();
    let path = words.next()?.to_string();
    let mut range = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
        }
    }
    Some((method, path, range))
}

struct Answer {
    status: u16,
    headers: Vec<String>,
    file: Option<PathBuf>,
    start: u64,
    body_len: u64,
}

fn answer(method: &str, file: Option<PathBuf>, range: Option<&str>) -> Answer {
    let plain = |status: u16| Answer {
        status,
        headers: vec!["Content-Length: 0".into()],
        file: None,
        start: 0,
        body_len: 0,
    };
    if method != "GET" && method != "HEAD" {
        return plain(405);
    }
    let Some(file) = file else {
        return plain(404);
    };
    let Ok(total) = std::fs::metadata(&file).map(|m| m.len()) else {
        return plain(404);
    };
    let (status, start, end) = match range.map(parse_range) {
        None => (200, 0, total),
        Some(Some((s, e))) if s < total => (206, s, e.map_or(total, |e| (e + 1).min(total))),
        Some(Some(_)) => {
            let mut a = plain(416);
            a.headers.push(format!("Content-Range: bytes */{total}"));
            return a;
        }
        Some(None) => return plain(400),
    };
    let mut headers = vec![
        format!("Content-Length: {}", end - start),
        "Accept-Ranges: bytes".into(),
        "Content-Type: application/octet-stream".into(),
    ];
    if status == 206 {
        headers.push(format!("Content-Range: bytes {start}-{}/{total}", end - 1));
    }
    Answer {
        status,
        headers,
        file: Some(file),
        start,
        body_len: end - start,
    }
}

/// `bytes=N-` or `bytes=N-M`.
fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let spec = v.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let start = a.parse().ok()?;
    let end = if b.is_empty() {
        None
    } else {
        Some(b.parse().ok().filter(|e| *e >= start)?)
    };
    Some((start, end))
}

fn send(out: &mut TcpStream, method: &str, a: Answer, cut: Option<u64>) -> std::io::Result<()> {
    let reason = match a.status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Range Not Satisfiable",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", a.status);
    for h in &a.headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return out.flush();
    }
    if let Some(path) = a.file {
        let mut f = std::fs::File::open(&path)?;
        f.seek(SeekFrom::Start(a.start))?;
        let len = cut.map_or(a.body_len, |c| c.min(a.body_len));
        std::io::copy(&mut f.take(len), out)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, path: &str, range: Option<&str>) -> (String, Vec<u8>) {
        let mut c = TcpStream::connect(addr).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        if let Some(r) = range {
            req.push_str(&format!("Range: {r}\r\n"));
        }
        req.push_str("\r\n");
        c.write_all(req.as_bytes()).unwrap();
        let mut all = Vec::new();
        // A keep-alive server leaves the connection open: read the head, then the length.
        let mut reader = BufReader::new(c);
        let mut head = String::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            head.push_str(&l);
            if l == "\r\n" || l.is_empty() {
                break;
            }
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        all.resize(len, 0);
        let mut n = 0;
        while n < len {
            match reader.read(&mut all[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        all.truncate(n);
        (head, all)
    }

    #[test]
    fn serves_ranges_and_cuts_a_body_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("b");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&f, &data).unwrap();
        let s = FileServer::start().unwrap();
        s.add("b.update", f);
        let (head, body) = get(s.addr(), "/b.update", None);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, data);
        let (head, body) = get(s.addr(), "/b.update", Some("bytes=9000-"));
        assert!(
            head.contains("Content-Range: bytes 9000-9999/10000"),
            "{head}"
        );
        assert_eq!(body, &data[9000..]);
        let (head, _) = get(s.addr(), "/b.update", Some("bytes=10000-"));
        assert!(head.starts_with("HTTP/1.1 416"), "{head}");
        assert!(get(s.addr(), "/nothing", None)
            .0
            .starts_with("HTTP/1.1 404"));
        s.cut_next_after("other", 1);
        assert_eq!(
            get(s.addr(), "/b.update", None).1,
            data,
            "only /other is cut"
        );
        s.cut_next_after("b.update", 1234);
        let (head, body) = get(s.addr(), "/b.update", None);
        assert!(head.contains("Content-Length: 10000"), "{head}");
        assert_eq!(body, &data[..1234], "the cut body stops early");
        let seen = s.seen();
        assert_eq!(seen.len(), 6);
        assert_eq!(seen[1].range.as_deref(), Some("bytes=9000-"));
        assert_eq!(
            s.guest_url("b.update"),
            format!("http://10.0.2.2:{}/b.update", s.addr().port())
        );
    }
}
