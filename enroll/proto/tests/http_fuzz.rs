//! Deterministic randomized test of the answer parser: mutated answers never panic,
//! parse the same however the bytes arrive, never exceed the body limit, and the valid
//! answers they come from keep parsing to what they say.

#![allow(clippy::unwrap_used, missing_docs)]

use std::io::{BufReader, Read};

use kiln_enroll_proto::http::{read_response, HttpError, Response, MAX_HEAD, MAX_HEADERS};

const MAX_BODY: usize = 4096;
const ITERATIONS: usize = 100_000;

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid answers and the status and body each must parse to.
fn corpus() -> Vec<(Vec<u8>, u16, Vec<u8>)> {
    let json = br#"{"version":3,"peers":[]}"#.to_vec();
    let mut out = vec![
        (
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                json.len()
            )
            .into_bytes(),
            200,
            json.clone(),
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ver\r\n13;ext=1\r\nsion\":3,\"peers\":[]}\r\n0\r\nX-Trailer: t\r\n\r\n"
                .to_vec(),
            200,
            json.clone(),
        ),
        (
            b"HTTP/1.0 503 Service Unavailable\r\nServer: x\r\n\r\n".to_vec(),
            503,
            br#"{"error":"unavailable"}"#.to_vec(),
        ),
        (b"HTTP/1.1 204 No Content\r\nA: b\r\n\r\n".to_vec(), 204, vec![]),
    ];
    // The Content-Length and the EOF-delimited ones carry their body after the head.
    for i in [0, 2] {
        let body = out[i].2.clone();
        out[i].0.extend_from_slice(&body);
    }
    // A body the length of the limit, the most headers allowed, and a head of exactly
    // MAX_HEAD bytes (the first header's value fills it up).
    let big = vec![b'x'; MAX_BODY];
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for i in 0..MAX_HEADERS - 1 {
        head.push_str(&format!("H{i}: v\r\n"));
    }
    head.push_str(&format!("Content-Length: {MAX_BODY}\r\n\r\n"));
    let fill = MAX_HEAD - head.len();
    head.insert_str("HTTP/1.1 200 OK\r\nH0: v".len(), &"v".repeat(fill));
    assert_eq!(head.len(), MAX_HEAD);
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&big);
    out.push((bytes, 200, big));
    out
}

/// A reader that hands out at most a few bytes per call, to move every boundary.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn parse_whole(bytes: &[u8]) -> Result<Response, HttpError> {
    read_response(&mut BufReader::new(bytes), MAX_BODY)
}

fn parse_trickled(bytes: &[u8], step: usize, cap: usize) -> Result<Response, HttpError> {
    let mut r = BufReader::with_capacity(cap, Trickle { data: bytes, step });
    read_response(&mut r, MAX_BODY)
}

fn outcome(r: &Result<Response, HttpError>) -> Result<&Response, String> {
    r.as_ref().map_err(|e| e.to_string())
}

/// Replaces the first run of decimal or hex digits after `pos` with `with`.
fn replace_number(data: &mut Vec<u8>, pos: usize, with: &[u8]) {
    let start = match data[pos..].iter().position(u8::is_ascii_hexdigit) {
        Some(i) => pos + i,
        None => return,
    };
    let end = data[start..]
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .map_or(data.len(), |i| start + i);
    data.splice(start..end, with.iter().copied());
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    const NUMBERS: &[&[u8]] = &[
        b"0",
        b"18446744073709551615",
        b"18446744073709551616",
        b"99999999999999999999999",
        b"fffffffffffffff",
        b"ffffffffffffffff",
        b"-1",
        b"4097",
        b"4096",
        b"1000",
        b"",
        b" ",
        b"0x10",
        b"+5",
    ];
    const SNIPPETS: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"\r",
        b"\r\n\r\n",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b" folded\r\n",
        b":",
        b";",
        b"\0",
        b"\xff\xfe",
        b"0\r\n\r\n",
    ];
    if data.is_empty() {
        data.push(rng.next() as u8);
        return;
    }
    let pos = rng.below(data.len());
    match rng.below(8) {
        0 => data[pos] ^= 1 << rng.below(8),
        1 => data.insert(pos, rng.next() as u8),
        2 => {
            data.remove(pos);
        }
        3 => data.truncate(pos),
        4 => replace_number(data, pos, NUMBERS[rng.below(NUMBERS.len())]),
        5 => {
            let s = SNIPPETS[rng.below(SNIPPETS.len())];
            data.splice(pos..pos, s.iter().copied());
        }
        6 => {
            // Repeat a slice: duplicate headers, chunks, huge lines.
            let end = (pos + 1 + rng.below(64)).min(data.len());
            let piece = data[pos..end].to_vec();
            let times = 1 + rng.below(200);
            let repeated = piece.repeat(times);
            data.splice(pos..pos, repeated);
        }
        _ => data[pos] = rng.next() as u8,
    }
}

#[test]
fn valid_answers_parse_however_the_bytes_arrive() {
    for (bytes, status, body) in corpus() {
        for step in 1..=9 {
            for cap in [1, 2, 7, 64, 8192] {
                let r = parse_trickled(&bytes, step, cap).unwrap();
                assert_eq!((r.status, &r.body), (status, &body));
            }
        }
    }
}

#[test]
fn mutated_answers_never_panic_and_parse_the_same_in_pieces() {
    let corpus = corpus();
    let mut rng = Rng(0x6b69_6c6e_2d68_7474);
    let (mut ok, mut err) = (0usize, 0usize);
    for i in 0..ITERATIONS {
        // The last answer (100 headers, a full head, a body at the limit) is big and slow
        // in a debug build: one pick in sixteen.
        let last = corpus.len() - 1;
        let pick = if rng.below(16) == 0 {
            last
        } else {
            rng.below(last)
        };
        let (base, status, body) = &corpus[pick];
        let mut data = base.clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut data);
        }
        let whole = parse_whole(&data);
        // Tiny buffers are slow in a debug build: one iteration in eight uses them.
        let (step, cap) = if i % 8 == 0 {
            (1 + rng.below(13), 1 + rng.below(32))
        } else {
            (64 + rng.below(1024), 8192)
        };
        let pieces = parse_trickled(&data, step, cap);
        assert_eq!(
            outcome(&whole),
            outcome(&pieces),
            "iteration {i}: buffering changed the result for {:?}",
            String::from_utf8_lossy(&data)
        );
        match whole {
            Ok(r) => {
                ok += 1;
                assert!(r.body.len() <= MAX_BODY, "iteration {i}");
                assert!(r.headers.len() <= MAX_HEADERS, "iteration {i}");
                assert!((200..=599).contains(&r.status), "iteration {i}");
            }
            Err(e) => {
                err += 1;
                assert!(!e.to_string().is_empty(), "iteration {i}");
            }
        }
        // The unmutated answer still parses to what it says, every so often.
        if i % 1000 == 0 {
            let r = parse_whole(base).unwrap();
            assert_eq!((r.status, &r.body), (*status, body));
        }
    }
    // Both sides were exercised: the mutations are neither all fatal nor all harmless.
    assert!(
        ok > ITERATIONS / 50 && err > ITERATIONS / 50,
        "ok {ok} err {err}"
    );
}
