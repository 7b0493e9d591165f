//! The client against a small HTTP/2 server thread speaking real frames over Unix sockets.
//! Server header blocks are fixed bytes from an independent HPACK encoder (python-hyper's
//! hpack, Huffman-coded and indexed the way Go's encoder does it).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::Duration;

use super::cri::{cri_version, CriVersion};
use super::proto::{get_varint, length_delimited_fields, put_varint};
use super::*;

pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `:status: 200`, `content-type: application/grpc` (incremental indexing, Huffman).
pub(crate) const RESPONSE_HEADERS: &str = "885f8b1d75d0620d263d4c4d6564";
/// `grpc-status: 0`, `grpc-message: ""` after RESPONSE_HEADERS on the same connection.
const OK_TRAILERS: &str = "40889acac8b21234da8f810740899acac8b5254207317f80";
/// Trailers-only: `:status: 200`, content-type, `grpc-status: 12`,
/// `grpc-message: unknown service runtime.v1.RuntimeService`.
pub(crate) const UNIMPLEMENTED: &str =
    "885f8b1d75d0620d263d4c4d656440889acac8b21234da8f8208bf40899acac8b\
     5254207317f9eb6aeb51fc54a20b677310aa596d4935255fb857db6d493525dc5b3b9885f";

/// A VersionResponse as containerd 1.6.20 in bookworm fills it.
fn version_response() -> Vec<u8> {
    version_response_of("containerd", "1.6.20~ds1")
}

/// A VersionResponse naming `runtime` at `version`.
fn version_response_of(runtime: &str, version: &str) -> Vec<u8> {
    let mut m = Vec::new();
    for (field, value) in [(1u8, "0.1.0"), (2, runtime), (3, version), (4, "v1")] {
        m.push(field << 3 | 2);
        m.push(value.len() as u8);
        m.extend_from_slice(value.as_bytes());
    }
    let mut framed = vec![0, 0, 0, 0, m.len() as u8];
    framed.extend(m);
    framed
}

pub(crate) struct Request {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// The client's SETTINGS: no push, a [`RECEIVE_WINDOW`] stream window.
const CLIENT_SETTINGS: [u8; 12] = [0, 2, 0, 0, 0, 0, 0, 4, 0, 0x10, 0, 0];

/// The server side up to the client's complete request and its SETTINGS ACK.
pub(crate) fn accept_call(s: &mut UnixStream) -> Request {
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface).unwrap();
    assert_eq!(&preface[..], PREFACE);
    // SETTINGS_MAX_CONCURRENT_STREAMS = 100.
    s.write_all(&encode_frame(
        frame_type::SETTINGS,
        0,
        0,
        &[0, 3, 0, 0, 0, 100],
    ))
    .unwrap();
    let mut decoder = Decoder::default();
    let (mut headers, mut body) = (Vec::new(), Vec::new());
    let (mut acked, mut ended, mut settings, mut window) = (false, false, false, false);
    while !(acked && ended) {
        let f = read_frame(s).unwrap().expect("client closed early");
        match f.ty {
            frame_type::SETTINGS if f.flags & flag::ACK != 0 => acked = true,
            frame_type::SETTINGS => {
                assert_eq!(f.payload, CLIENT_SETTINGS, "ENABLE_PUSH=0, window 1 MiB");
                settings = true;
            }
            frame_type::WINDOW_UPDATE => {
                assert_eq!(
                    (f.stream, settings),
                    (0, true),
                    "the connection's, after SETTINGS"
                );
                let grow =
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
                assert_eq!(grow as usize + INITIAL_WINDOW, RECEIVE_WINDOW);
                window = true;
            }
            frame_type::HEADERS => {
                assert!(
                    settings && window,
                    "SETTINGS and WINDOW_UPDATE must come first"
                );
                assert_eq!(f.stream, 1);
                assert_eq!(f.flags, flag::END_HEADERS);
                headers = decoder.decode(&f.payload).unwrap();
            }
            frame_type::DATA => {
                assert_eq!(f.stream, 1);
                assert!(f.payload.len() <= MAX_FRAME);
                body.extend(f.payload);
                ended = f.flags & flag::END_STREAM != 0;
            }
            t => panic!("unexpected frame type {t}"),
        }
    }
    Request { headers, body }
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    encode_frame(ty, flags, stream, payload)
}

/// Runs `client` on one end of a socket pair against a server thread on the other that
/// reads one call and answers it with `respond`; returns the request the server saw and
/// the client's result.
fn with_server<T>(
    respond: impl FnOnce(&mut UnixStream) + Send + 'static,
    client: impl FnOnce(&mut UnixStream) -> T,
) -> (Request, T) {
    let (mut c, server) = UnixStream::pair().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let server = thread::spawn(move || {
        let mut s = server;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req = accept_call(&mut s);
        respond(&mut s);
        req
    });
    let result = client(&mut c);
    drop(c);
    (server.join().unwrap(), result)
}

/// Runs `respond` as the server on one end of a socket pair and the client on the other.
fn call(respond: impl FnOnce(&mut UnixStream) + Send + 'static) -> Result<CriVersion, CallError> {
    let (req, result) = with_server(respond, cri_version);
    let expect: Vec<(String, String)> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/runtime.v1.RuntimeService/Version"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(req.headers, expect);
    // 5-byte gRPC prefix, then field 1 (version) = "v1".
    assert_eq!(req.body, [0, 0, 0, 0, 4, 0x0a, 2, b'v', b'1']);
    result
}

pub(crate) fn ok_response(s: &mut UnixStream) {
    respond_with(s, "containerd", "1.6.20~ds1");
}

/// A successful Version answer from `runtime` at `version`.
pub(crate) fn respond_with(s: &mut UnixStream, runtime: &str, version: &str) {
    let mut out = frame(
        frame_type::HEADERS,
        flag::END_HEADERS,
        1,
        &hex(RESPONSE_HEADERS),
    );
    out.extend(frame(
        frame_type::DATA,
        0,
        1,
        &version_response_of(runtime, version),
    ));
    out.extend(frame(
        frame_type::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &hex(OK_TRAILERS),
    ));
    s.write_all(&out).unwrap();
}

#[test]
fn version_call_succeeds() {
    let v = call(ok_response).unwrap();
    assert_eq!(
        v,
        CriVersion {
            version: "0.1.0".into(),
            runtime_name: "containerd".into(),
            runtime_version: "1.6.20~ds1".into(),
            runtime_api_version: "v1".into(),
        }
    );
}

#[test]
fn version_call_over_a_listening_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("containerd.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        accept_call(&mut s);
        ok_response(&mut s);
    });
    let mut client = UnixStream::connect(&path).unwrap();
    let v = cri_version(&mut client).unwrap();
    server.join().unwrap();
    assert_eq!(v.runtime_version, "1.6.20~ds1");
}

#[test]
fn continuation_padding_ping_and_window_updates_are_handled() {
    let (tx, rx) = std::sync::mpsc::channel();
    let v = call(move |s| {
        let block = hex(RESPONSE_HEADERS);
        // PADDED + PRIORITY HEADERS with the block split over a CONTINUATION.
        let mut first = vec![3u8];
        first.extend_from_slice(&[0, 0, 0, 0, 16]);
        first.extend_from_slice(&block[..4]);
        first.extend_from_slice(&[0, 0, 0]);
        let mut out = frame(frame_type::WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]);
        out.extend(frame(frame_type::PING, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8]));
        out.extend(frame(
            frame_type::HEADERS,
            flag::PADDED | flag::PRIORITY,
            1,
            &first,
        ));
        out.extend(frame(
            frame_type::CONTINUATION,
            flag::END_HEADERS,
            1,
            &block[4..],
        ));
        // The message in two DATA frames, the first padded.
        let msg = version_response();
        let mut padded = vec![2u8];
        padded.extend_from_slice(&msg[..7]);
        padded.extend_from_slice(&[0, 0]);
        out.extend(frame(frame_type::DATA, flag::PADDED, 1, &padded));
        out.extend(frame(frame_type::DATA, 0, 1, &msg[7..]));
        out.extend(frame(
            frame_type::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &hex(OK_TRAILERS),
        ));
        s.write_all(&out).unwrap();
        let pong = read_frame(s).unwrap().unwrap();
        tx.send(pong).unwrap();
    })
    .unwrap();
    assert_eq!(v.runtime_name, "containerd");
    let pong = rx.recv().unwrap();
    assert_eq!(pong.ty, frame_type::PING);
    assert_eq!(pong.flags, flag::ACK);
    assert_eq!(pong.payload, [1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn trailers_only_grpc_error_is_reported() {
    let err = call(|s| {
        s.write_all(&frame(
            frame_type::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &hex(UNIMPLEMENTED),
        ))
        .unwrap();
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "grpc-status 12 UNIMPLEMENTED: unknown service runtime.v1.RuntimeService"
    );
}

#[test]
fn goaway_is_reported_with_its_code_and_debug_data() {
    let err = call(|s| {
        let mut p = vec![0, 0, 0, 1, 0, 0, 0, 0xb];
        p.extend_from_slice(b"too_many_pings");
        s.write_all(&frame(frame_type::GOAWAY, 0, 0, &p)).unwrap();
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the server sent GOAWAY ENHANCE_YOUR_CALM (11): too_many_pings"
    );
}

#[test]
fn rst_stream_is_reported() {
    let err = call(|s| {
        s.write_all(&frame(frame_type::RST_STREAM, 0, 1, &[0, 0, 0, 7]))
            .unwrap();
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the server reset the call (RST_STREAM REFUSED_STREAM (7))"
    );
}

#[test]
fn early_close_http_status_and_oversized_frames_are_errors() {
    let err = call(|_| {}).unwrap_err();
    assert!(matches!(err, CallError::Closed), "{err}");

    // 0x8d is static entry 13, `:status: 404`.
    let err = call(|s| {
        s.write_all(&frame(
            frame_type::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &[0x8d],
        ))
        .unwrap();
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "HTTP status 404, not 200");

    let err = call(|s| {
        s.write_all(&[0x01, 0, 0, frame_type::DATA, 0, 0, 0, 0, 1])
            .unwrap();
    })
    .unwrap_err();
    assert!(err.to_string().contains("65536-byte frame"), "{err}");

    // A response without trailers but with END_STREAM on the DATA.
    let err = call(|s| {
        let mut out = frame(
            frame_type::HEADERS,
            flag::END_HEADERS,
            1,
            &hex(RESPONSE_HEADERS),
        );
        out.extend(frame(
            frame_type::DATA,
            flag::END_STREAM,
            1,
            &version_response(),
        ));
        s.write_all(&out).unwrap();
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "HTTP/2 protocol error: the call ended without grpc-status"
    );
}

#[test]
fn http1_server_is_named() {
    let (mut client, mut server) = UnixStream::pair().unwrap();
    server
        .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        .unwrap();
    let err = cri_version(&mut client).unwrap_err();
    assert_eq!(
        err.to_string(),
        "HTTP/2 protocol error: the server answered in HTTP/1.x, not HTTP/2"
    );
}

#[test]
fn frames_encode_as_rfc_9113_lays_them_out() {
    // SETTINGS ACK: length 0, type 4, flags 1, stream 0.
    assert_eq!(
        encode_frame(frame_type::SETTINGS, flag::ACK, 0, &[]),
        [0, 0, 0, 4, 1, 0, 0, 0, 0]
    );
    assert_eq!(
        encode_frame(frame_type::DATA, flag::END_STREAM, 0x8000_0003, b"ab"),
        [0, 0, 2, 0, 1, 0, 0, 0, 3, b'a', b'b']
    );
    // The reserved bit is ignored when reading.
    let f = read_frame(&mut &[0, 0, 1, 8, 0, 0x80, 0, 0, 5, 9][..])
        .unwrap()
        .unwrap();
    assert_eq!(
        f,
        Frame {
            ty: 8,
            flags: 0,
            stream: 5,
            payload: vec![9]
        }
    );
    assert!(read_frame(&mut &[][..]).unwrap().is_none());
    assert!(matches!(
        read_frame(&mut &[0, 0, 4, 0, 0, 0, 0, 0, 1, 1][..]),
        Err(CallError::Closed)
    ));
    let padded = Frame {
        ty: frame_type::DATA,
        flags: flag::PADDED,
        stream: 1,
        payload: vec![5, 1, 2],
    };
    assert!(frame_content(&padded).is_err());
}

#[test]
fn protobuf_matches_the_encoding_guide() {
    // protobuf.dev "Encoding": 150 is 96 01, 300 is ac 02.
    let mut out = Vec::new();
    put_varint(&mut out, 150);
    put_varint(&mut out, 300);
    assert_eq!(out, [0x96, 0x01, 0xac, 0x02]);
    let mut pos = 2;
    assert_eq!(get_varint(&out, &mut pos).unwrap(), 300);
    // Field 1 = varint 150 is skipped; field 2 = "testing" is kept.
    let msg = hex("089601 120774657374696e67 1d01020304 090102030405060708");
    let fields = length_delimited_fields(&msg).unwrap();
    assert_eq!(fields, vec![(2, &b"testing"[..])]);
    assert!(length_delimited_fields(&hex("1208 74")).is_err());
    assert!(length_delimited_fields(&hex("0b")).is_err());
    assert!(length_delimited_fields(&[0xff; 11]).is_err());
    // Unknown fields of a VersionResponse are skipped.
    let v = CriVersion::decode(&hex("2a0178 1a03312e36")).unwrap();
    assert_eq!(v.runtime_version, "1.6");
    assert_eq!(percent_decode("a%20b%zz%"), "a b%zz%");
}

/// A gRPC response body of `messages`, each length-prefixed.
pub(crate) fn grpc_body(messages: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.push(0);
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(m);
    }
    out
}

/// A whole successful response: headers, `body` in one DATA frame, OK trailers.
pub(crate) fn ok_with_body(s: &mut UnixStream, body: &[u8]) {
    let mut out = frame(
        frame_type::HEADERS,
        flag::END_HEADERS,
        1,
        &hex(RESPONSE_HEADERS),
    );
    out.extend(frame(frame_type::DATA, 0, 1, body));
    out.extend(frame(
        frame_type::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
        &hex(OK_TRAILERS),
    ));
    s.write_all(&out).unwrap();
}

/// Runs `super::call` against a server thread answering with `body`; returns the
/// request the server saw and the call's result.
fn stream_call(
    metadata: &[(&str, &str)],
    request: &[u8],
    body: Vec<u8>,
) -> (Request, Result<Vec<Vec<u8>>, CallError>) {
    with_server(
        move |s| ok_with_body(s, &body),
        |c| super::call(c, "/x.v1.Svc/M", metadata, request),
    )
}

#[test]
fn a_call_sends_metadata_and_returns_every_response_message() {
    let (req, got) = stream_call(
        &[
            ("containerd-namespace", "k8s.io"),
            ("containerd-lease", "l1"),
        ],
        b"\x0a\x01x",
        grpc_body(&[b"\x08\x02", b"", b"\x08\x02"]),
    );
    assert_eq!(
        got.unwrap(),
        vec![b"\x08\x02".to_vec(), vec![], b"\x08\x02".to_vec()]
    );
    let names: Vec<&str> = req.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            ":method",
            ":scheme",
            ":path",
            ":authority",
            "content-type",
            "te",
            "containerd-namespace",
            "containerd-lease"
        ]
    );
    assert_eq!(req.headers[2].1, "/x.v1.Svc/M");
    assert_eq!(req.headers[6].1, "k8s.io");
    assert_eq!(req.headers[7].1, "l1");
    assert_eq!(req.body, grpc_body(&[b"\x0a\x01x"]));
}

#[test]
fn a_request_goes_in_frames_of_at_most_max_frame_and_a_huge_one_is_refused() {
    let big = vec![7u8; 40_000];
    let (req, got) = stream_call(&[], &big, grpc_body(&[b""]));
    assert_eq!(got.unwrap(), vec![Vec::<u8>::new()]);
    assert_eq!(req.body, grpc_body(&[&big]));
    let frames = request_bytes("/p", &[], &big).unwrap();
    // Preface, SETTINGS, WINDOW_UPDATE, HEADERS, then three DATA frames.
    let mut r = &frames[PREFACE.len()..];
    let mut data = Vec::new();
    while let Some(f) = read_frame(&mut r).unwrap() {
        if f.ty == frame_type::DATA {
            data.push((f.payload.len(), f.flags));
        }
    }
    assert_eq!(
        data,
        [
            (MAX_FRAME, 0),
            (MAX_FRAME, 0),
            (40_005 - 2 * MAX_FRAME, flag::END_STREAM)
        ]
    );
    let err = request_bytes("/p", &[], &vec![0; INITIAL_WINDOW]).unwrap_err();
    assert!(matches!(err, CallError::RequestTooLarge(65_535)), "{err}");
}

#[test]
fn a_unary_call_wants_exactly_one_message_and_a_cut_message_is_an_error() {
    let (mut client, server) = UnixStream::pair().unwrap();
    let t = thread::spawn(move || {
        let mut s = server;
        accept_call(&mut s);
        ok_with_body(&mut s, &grpc_body(&[b"a", b"b"]));
    });
    let err = unary_call(&mut client, "/p", &[], b"").unwrap_err();
    t.join().unwrap();
    assert_eq!(err.to_string(), "the call answered 2 messages, not one");
    let err = split_messages(&[0, 0, 0, 0, 9, 1]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid response message: the prefix says 9 bytes, the body has 1"
    );
    assert!(split_messages(&[0, 0]).is_err());
    assert!(split_messages(&[1, 0, 0, 0, 0]).is_err());
}

#[test]
fn list_images_answers_decode_into_images() {
    let image = proto::Message::new()
        .string(1, "sha256:c0ffee")
        .repeated_string(2, "localhost/kiln/busybox:1.37")
        .repeated_string(2, "localhost/kiln/busybox:latest")
        .repeated_string(3, "localhost/kiln/busybox@sha256:abc")
        .varint(4, 1_234_567);
    let resp = proto::Message::new()
        .message(1, &image)
        .message(1, &proto::Message::new().string(1, "sha256:2"))
        .into_bytes();
    let images = cri::decode_list_images(&resp).unwrap();
    assert_eq!(
        images,
        [
            cri::CriImage {
                id: "sha256:c0ffee".into(),
                repo_tags: vec![
                    "localhost/kiln/busybox:1.37".into(),
                    "localhost/kiln/busybox:latest".into()
                ],
                repo_digests: vec!["localhost/kiln/busybox@sha256:abc".into()],
                size: 1_234_567,
            },
            cri::CriImage {
                id: "sha256:2".into(),
                ..Default::default()
            }
        ]
    );
    assert!(cri::list_images_request().is_empty());
}

#[test]
fn messages_written_field_by_field_read_back() {
    let m = proto::Message::new()
        .varint(1, 2)
        .string(2, "ref")
        .varint(3, 150)
        .string(4, "")
        .varint(5, 0)
        .map(7, [("a", "1"), ("b", "")])
        .message(8, &proto::Message::new())
        .into_bytes();
    let f = proto::fields(&m).unwrap();
    assert_eq!(proto::varint_field(&f, 1), 2);
    assert_eq!(proto::string_field(&f, 2), "ref");
    assert_eq!(proto::varint_field(&f, 3), 150);
    // proto3 defaults are left out.
    assert!(f.iter().all(|(n, _)| *n != 4 && *n != 5));
    assert_eq!(
        proto::map_field(&f, 7).unwrap(),
        [
            ("a".to_string(), "1".to_string()),
            ("b".to_string(), String::new())
        ]
    );
    assert_eq!(proto::bytes_field(&f, 8), Some(&[][..]));
    // The same bytes protoc would write: field 1 varint 2 is 08 02.
    assert_eq!(&m[..2], [0x08, 0x02]);
}
