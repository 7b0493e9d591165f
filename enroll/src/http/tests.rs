use super::head::read_head;
use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Hands out the input in pieces of varying size, like a network does.
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    step: usize,
}

impl tokio::io::AsyncRead for Trickle {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let n = self
            .step
            .min(out.remaining())
            .min(self.data.len() - self.pos);
        let pos = self.pos;
        out.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        self.step = self.step % 7 + 1;
        std::task::Poll::Ready(Ok(()))
    }
}

/// read_head, then what hyper would parse, then [`check`]: the request or the refusal.
fn parse(data: &[u8]) -> Result<Request, HttpError> {
    let mut t = Trickle {
        data: data.to_vec(),
        pos: 0,
        step: 3,
    };
    let limits = Limits::default();
    let mut bytes = rt().block_on(read_head(&mut t, &limits))?;
    // What hyper would go on reading: the rest of the input.
    bytes.extend_from_slice(&t.data[t.pos..]);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut raw = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(end)) = raw.parse(&bytes) else {
        panic!("read_head passed a head httparse refuses: {data:?}");
    };
    let mut b = hyper::Request::builder()
        .method(raw.method.unwrap())
        .uri(raw.path.unwrap());
    for h in raw.headers.iter() {
        b = b.header(h.name, h.value);
    }
    let (parts, ()) = b
        .body(())
        .map_err(|e| malformed(e.to_string()))?
        .into_parts();
    let (mut req, length) = check(&parts, &limits)?;
    let body = &bytes[end..];
    if body.len() < length {
        return Err(HttpError::Closed(bytes.len()));
    }
    req.body = body[..length].to_vec();
    Ok(req)
}

const GOOD: &[u8] = b"POST /v1/enroll?x=1 HTTP/1.1\r\nHost: kiln-enroll\r\n\
    Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}";

#[test]
fn parses_a_request() {
    let r = parse(GOOD).unwrap();
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/v1/enroll");
    assert_eq!(r.param("x"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, b"{\"a\":1}");
    assert_eq!(r.api_revision(), 1);
    let g = parse(
        b"GET /v1/peers?since=4&wait=30 HTTP/1.1\r\nAuthorization: Bearer a.b\r\n\
          Kiln-Enroll-Api: 7\r\n\r\n",
    )
    .unwrap();
    assert_eq!(g.param("since"), Some("4"));
    assert_eq!(g.param("wait"), Some("30"));
    assert_eq!(g.header("authorization"), Some("Bearer a.b"));
    assert!(g.body.is_empty());
    // A client newer than the server gets the server's revision.
    assert_eq!(g.api_revision(), API_REVISION);
}

#[test]
fn refuses_with_the_right_status_and_reason() {
    let cases: &[(&[u8], u16, &str)] = &[
        (b"\x16\x03\x01\xff\x00\r\n\r\n", 400, "not text"),
        (
            b"\x00\x01garbage\xff\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        (b"GET / HTTP/1.1 x\r\n\r\n", 400, "malformed"),
        (b"get / HTTP/1.1\r\n\r\n", 400, "method"),
        (b"GET / HTTP/2\r\n\r\n", 400, "version"),
        (b"GET x HTTP/1.1\r\n\r\n", 400, "request target"),
        (b"GET http://h/ HTTP/1.1\r\n\r\n", 400, "request target"),
        (b"GET / HTTP/1.1\r\nA b\r\n\r\n", 400, "header name"),
        (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400, "malformed"),
        (b"GET / HTTP/1.1\nHost: x\n\n", 400, "bare LF"),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 400, "bare LF"),
        (b"GET /?a=1&a=2 HTTP/1.1\r\n\r\n", 400, "appears twice"),
        (b"POST / HTTP/1.1\r\n\r\n", 411, "Content-Length"),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            411,
            "chunked",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            400,
            "more than once",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            400,
            "not a number",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
            413,
            "at most 65536",
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            400,
            "not a number",
        ),
    ];
    for (input, status, want) in cases {
        let err = parse(input).unwrap_err();
        let text = err.to_string();
        assert_eq!(
            err.status(),
            Some(*status),
            "{:?}: {text}",
            String::from_utf8_lossy(input)
        );
        assert!(
            text.contains(want),
            "{:?}: {text}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\n"),
        Err(HttpError::Closed(16))
    ));
    let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(parse(big.as_bytes()).unwrap_err().status(), Some(431));
    let many: String = (0..=MAX_HEADERS).map(|i| format!("H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(parse(many.as_bytes()).unwrap_err().status(), Some(431));
}

#[test]
fn an_oversized_body_is_refused_before_it_is_read() {
    // The head alone: check must refuse without any body byte having arrived.
    let err = parse(b"POST /v1/enroll HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n").unwrap_err();
    assert_eq!(err.status(), Some(413));
}

#[test]
fn writes_a_closing_json_answer_with_the_api_revision() {
    let mut body = ErrorBody::new(ErrorCode::RateLimited, "slow down");
    body.retry_after_secs = Some(12);
    let resp = Response::from_error(&body);
    let text = String::from_utf8(resp.to_http1()).unwrap();
    let (head, json) = text.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{head}"
    );
    assert!(head.contains("connection: close"));
    assert!(head.contains("retry-after: 12"));
    assert!(head.contains(&format!("{API_HEADER}: {API_REVISION}")));
    assert!(head.contains(&format!("content-length: {}", json.len())));
    let back: ErrorBody = serde_json::from_str(json).unwrap();
    assert_eq!(back, body);
    // hyper's answers carry the same fields.
    let h = resp.into_hyper();
    assert_eq!(h.status(), 429);
    for (name, value) in [
        ("content-type", "application/json"),
        ("connection", "close"),
        ("retry-after", "12"),
        (API_HEADER, "2"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(h.headers()[name], value, "{name}");
    }
}

/// xorshift64*: a fixed sequence, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn fuzz_mutated_requests_never_panic_and_always_explain() {
    let seeds: [&[u8]; 4] = [
        GOOD,
        b"GET /v1/peers?since=4&wait=30 HTTP/1.1\r\nAuthorization: Bearer n.c\r\n\r\n",
        b"POST /v1/heartbeat HTTP/1.1\r\nContent-Length: 2\r\nAuthorization: Bearer n.c\r\n\r\n{}",
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    let tokens: [&[u8]; 10] = [
        b"\r\n",
        b"\r\n\r\n",
        b":",
        b" ",
        b"Content-Length: 18446744073709551616\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Length: 3\r\n",
        b"\0",
        b"\xff\xfe",
        b"?a=&b&&=",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = [0usize; 2];
    for _ in 0..20_000 {
        let mut data = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(data.len() + 1);
            match rng.below(5) {
                0 if !data.is_empty() => {
                    let i = at.min(data.len() - 1);
                    data[i] ^= 1 << rng.below(8);
                }
                1 => data.insert(at, rng.next() as u8),
                2 => {
                    let end = (at + rng.below(16)).min(data.len());
                    data.drain(at..end);
                }
                3 => {
                    let t = tokens[rng.below(tokens.len())];
                    data.splice(at..at, t.iter().copied());
                }
                _ => {
                    let end = (at + rng.below(32)).min(data.len());
                    let copy = data[at..end].to_vec();
                    data.splice(at..at, copy);
                }
            }
        }
        match parse(&data) {
            Ok(r) => {
                outcomes[0] += 1;
                assert!(r.path.starts_with('/'));
                assert!(r.body.len() <= MAX_REQUEST_BODY);
                let cl = r
                    .header("content-length")
                    .map(|v| v.parse::<usize>().unwrap());
                assert_eq!(cl.unwrap_or(0), r.body.len());
            }
            Err(e) => {
                outcomes[1] += 1;
                assert!(!e.to_string().is_empty());
                if let Some(resp) = e.response() {
                    assert!((400..500).contains(&resp.status), "{e}");
                    serde_json::from_slice::<ErrorBody>(&resp.body).unwrap();
                }
            }
        }
    }
    // Both paths were exercised, not only the error one.
    assert!(outcomes[0] > 500 && outcomes[1] > 500, "{outcomes:?}");
}
