//! The HTTPS client nodes (and tests) use to talk to kiln-enroll: one request per TLS
//! connection, the server pinned by the CA hash from the token (see [`crate::pin`]).
//!
//! Blocking std I/O, no async runtime: the agent is a small static binary and makes a
//! handful of calls a minute.

use std::fmt;
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{
    ClusterJoin, EnrollAnswer, EnrollAnswerV2, EnrollRequest, ErrorBody, HeartbeatAnswer,
    HeartbeatRequest, PeerDelta, PeerList, MAX_ANSWER_BODY, PATH_ENROLL, PATH_HEARTBEAT,
    PATH_PEERS,
};
use crate::http::{self, HttpError, Request};
use crate::pin::{self, PinMismatch, SERVER_NAME};

/// The header naming API revision 2 (peer-list deltas).
const REVISION_2: &[(&str, &str)] = &[(crate::api::API_HEADER, "2")];

/// The cluster join parameters of the calling node (`GET`, node auth, answers
/// [`ClusterJoin`]). Kept here next to the only client call that uses it; the server
/// routes the same constant.
pub const PATH_CLUSTER: &str = "/v1/cluster";

/// Port used when the URL names none.
pub const DEFAULT_PORT: u16 = 8443;
/// Connect, read and write timeout unless [`Client::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A node's credentials for node calls (`Authorization: Bearer <name>.<credential>`).
#[derive(Clone, PartialEq, Eq)]
pub struct NodeAuth {
    /// The node name the server gave.
    pub name: String,
    /// The node's own secret (sent in its [`EnrollRequest`]).
    pub credential: String,
}

impl fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the credential.
        write!(f, "NodeAuth({}.<credential>)", self.name)
    }
}

/// A client for one kiln-enroll server.
#[derive(Debug, Clone)]
pub struct Client {
    url: String,
    host: String,
    port: u16,
    pin: [u8; 32],
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

/// Why a call failed. Display is one line saying what failed and whether a retry can
/// help.
#[derive(Debug)]
pub enum ClientError {
    /// The server URL is unusable (the text names the URL and what is wrong).
    BadUrl(String),
    /// Name resolution or TCP connect failed.
    Connect {
        /// `host:port` as given in the URL.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// No presented certificate has the pinned CA hash: another server, or a man in the
    /// middle.
    PinMismatch {
        /// The pin (hex).
        expected: String,
        /// The SPKI hash (hex) of each presented certificate, leaf first.
        presented: Vec<String>,
    },
    /// The TLS handshake failed otherwise (the pinned CA did not issue the leaf, wrong
    /// name, alert from the server, ...).
    Tls(String),
    /// The server's certificate is expired or not valid yet by this machine's clock:
    /// retryable, since a clock that is not set yet gets set.
    CertTime(String),
    /// Sending or receiving failed, or timed out (the message names server and step).
    Io(io::Error),
    /// The answer is not well-formed HTTP/1.1.
    Http(String),
    /// The server refused with its error body.
    Refused {
        /// HTTP status.
        status: u16,
        /// The server's error body.
        body: ErrorBody,
    },
    /// The answer is not JSON of the expected type, or an error answer without an
    /// [`ErrorBody`].
    BadAnswer(String),
}

fn retry_note(retry: bool) -> &'static str {
    if retry {
        "retrying may help"
    } else {
        "retrying will not help"
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let note = retry_note(self.retryable());
        match self {
            ClientError::BadUrl(m) => write!(f, "bad server URL: {m} ({note})"),
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source} ({note})")
            }
            ClientError::PinMismatch {
                expected,
                presented,
            } => write!(
                f,
                "the server presented no certificate with the CA hash from the token \
                 ({expected}; presented: {}): it is not the server the token was made for, \
                 or someone is in the middle ({note}: check the token and the server URL)",
                presented.join(", ")
            ),
            ClientError::Tls(m) | ClientError::CertTime(m) => write!(f, "{m} ({note})"),
            ClientError::Io(e) => write!(f, "{e} ({note})"),
            ClientError::Http(m) => write!(f, "malformed HTTP answer: {m} ({note})"),
            ClientError::Refused { status, body } => {
                write!(
                    f,
                    "the server refused (HTTP {status}, {}): {}",
                    body.error, body.message
                )?;
                match body.retry_after_secs {
                    Some(s) if body.retry => write!(f, " (retry after {s} s)"),
                    _ => write!(f, " ({note})"),
                }
            }
            ClientError::BadAnswer(m) => write!(f, "unexpected answer: {m} ({note})"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } => Some(source),
            ClientError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl ClientError {
    /// Whether the same call may succeed later: network trouble and timeouts, and
    /// refusals the server marks as retryable (overload, database down). Not: a bad URL,
    /// the wrong server (pin, TLS), a definite refusal, or answers that make no sense.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::CertTime(_) => true,
            ClientError::Refused { body, .. } => body.retry,
            ClientError::BadUrl(_)
            | ClientError::PinMismatch { .. }
            | ClientError::Tls(_)
            | ClientError::Http(_)
            | ClientError::BadAnswer(_) => false,
        }
    }
}

/// `host` and `port` of an `https://host[:port][/]` URL.
fn parse_url(url: &str) -> Result<(String, u16), ClientError> {
    let fail = |why: &str| {
        ClientError::BadUrl(format!(
            "{url:?}: {why} (expected https://HOST[:PORT], port {DEFAULT_PORT} by default)"
        ))
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| fail("no scheme; it must start with https://"))?;
    if !scheme.eq_ignore_ascii_case("https") {
        return Err(fail(&format!("scheme {scheme:?} is not https")));
    }
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err(fail(&format!(
            "it has a path or query {path:?}; give the server's address only"
        )));
    }
    crate::authority::parse(authority, DEFAULT_PORT).map_err(|why| fail(&why))
}

/// An io::Error of the same kind whose message says where and when it happened.
fn context(err: io::Error, what: &str) -> io::Error {
    let text = match err.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: timed out"),
        _ => format!("{what}: {err}"),
    };
    io::Error::new(err.kind(), text)
}

/// What a certificate failure means for a kiln server, for people reading the console.
fn tls_hint(err: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => {
                " (the server's certificate is outside its validity: check this node's clock \
                 and the server's)"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                " (the server's certificate is not made out to kiln-enroll)"
            }
            C::BadSignature | C::UnknownIssuer => {
                " (the server's certificate was not issued by the CA the token pins)"
            }
            _ => "",
        },
        _ => "",
    }
}

/// Whether a TLS failure is about certificate times: a node whose clock is not set yet
/// (no RTC, NTP not synced) sees this, and it passes once the clock is right.
fn outside_validity(tls: &rustls::Error) -> bool {
    use rustls::CertificateError as C;
    matches!(
        tls,
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. }
        )
    )
}

/// A failed TLS step as a ClientError: pin mismatch, other TLS error, or plain I/O.
fn tls_error(err: io::Error, what: &str) -> ClientError {
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>());
    match inner {
        Some(tls) => match PinMismatch::find(tls) {
            Some(m) => ClientError::PinMismatch {
                expected: m.expected.clone(),
                presented: m.presented.clone(),
            },
            None if outside_validity(tls) => {
                ClientError::CertTime(format!("{what}: {tls}{}", tls_hint(tls)))
            }
            None => ClientError::Tls(format!("{what}: {tls}{}", tls_hint(tls))),
        },
        None => ClientError::Io(context(err, what)),
    }
}

impl Client {
    /// `url` is https://host:port (port default 8443; IPv6 as `[addr]`); the pin is the
    /// CA hash from the token. Nothing is resolved or connected yet.
    pub fn new(url: &str, pin: [u8; 32]) -> Result<Client, ClientError> {
        let (host, port) = parse_url(url)?;
        Ok(Client {
            url: url.to_string(),
            host,
            port,
            pin,
            config: pin::client_config(pin),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the connect, read and write timeout (default 30 s). Long polls add their
    /// wait time to it.
    pub fn with_timeout(self, t: Duration) -> Client {
        Client { timeout: t, ..self }
    }

    /// The URL this client was made with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pinned CA hash.
    pub fn pin(&self) -> [u8; 32] {
        self.pin
    }

    /// Asks to join with a token.
    pub fn enroll(&self, req: &EnrollRequest) -> Result<EnrollAnswer, ClientError> {
        self.call("POST", PATH_ENROLL, None, Some(req), self.timeout)
    }

    /// Asks to join with a token, in API revision 2: the answer carries the peer list's
    /// version instead of the list; fetch the list with [`Client::peer_changes`] from 0.
    /// A server that predates revision 2 ignores the header and answers revision 1,
    /// which does not decode as this (call [`Client::enroll`] then).
    pub fn enroll_v2(&self, req: &EnrollRequest) -> Result<EnrollAnswerV2, ClientError> {
        self.call_with(
            "POST",
            PATH_ENROLL,
            None,
            Some(req),
            self.timeout,
            REVISION_2,
        )
    }

    /// The changes to the peer list since version `since` (API revision 2), once there
    /// are any or after `wait_secs` (long poll): a [`PeerDelta`], which is the whole
    /// list when `since` is 0 or the node is too far behind. Apply it with
    /// [`PeerDelta::apply_to`].
    pub fn peer_changes(
        &self,
        auth: &NodeAuth,
        since: u64,
        wait_secs: u32,
    ) -> Result<PeerDelta, ClientError> {
        self.long_poll(auth, since, wait_secs, REVISION_2)
    }

    /// The peer list once its version is above `since`, or after `wait_secs` (long poll;
    /// the read timeout grows by `wait_secs`).
    pub fn peers(
        &self,
        auth: &NodeAuth,
        since: u64,
        wait_secs: u32,
    ) -> Result<PeerList, ClientError> {
        self.long_poll(auth, since, wait_secs, &[])
    }

    /// `GET /v1/peers?since=..&wait=..` with `headers` (the API revision); the read
    /// timeout grows by `wait_secs`, which the server may hold the answer for.
    fn long_poll<T: DeserializeOwned>(
        &self,
        auth: &NodeAuth,
        since: u64,
        wait_secs: u32,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let path = format!("{PATH_PEERS}?since={since}&wait={wait_secs}");
        let read_timeout = self
            .timeout
            .saturating_add(Duration::from_secs(u64::from(wait_secs)));
        self.call_with::<(), _>("GET", &path, Some(auth), None, read_timeout, headers)
    }

    /// Reports endpoints and observations.
    pub fn heartbeat(
        &self,
        auth: &NodeAuth,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatAnswer, ClientError> {
        self.call("POST", PATH_HEARTBEAT, Some(auth), Some(req), self.timeout)
    }

    /// The calling node's current cluster join parameters (role, labels and, once the
    /// server has a cluster, the join of that role). A node that enrolled before the
    /// cluster was set, or a k3s worker waiting for the first server, asks again later.
    pub fn cluster(&self, auth: &NodeAuth) -> Result<ClusterJoin, ClientError> {
        self.call::<(), _>("GET", PATH_CLUSTER, Some(auth), None, self.timeout)
    }

    /// `host:port` for messages and the Host header.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn connect(&self, read_timeout: Duration) -> Result<TcpStream, ClientError> {
        let addr = self.authority();
        let fail = |source| ClientError::Connect {
            addr: addr.clone(),
            source,
        };
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| fail(context(e, "resolving the host")))?
            .collect();
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            "the host name resolved to no addresses",
        );
        for a in &addrs {
            match TcpStream::connect_timeout(a, self.timeout) {
                Ok(s) => {
                    let set = |r: io::Result<()>| r.map_err(|e| fail(context(e, "socket setup")));
                    set(s.set_read_timeout(Some(read_timeout)))?;
                    set(s.set_write_timeout(Some(self.timeout)))?;
                    set(s.set_nodelay(true))?;
                    return Ok(s);
                }
                Err(e) => last = context(e, &format!("connecting to {a}")),
            }
        }
        Err(fail(last))
    }

    /// One request on a fresh connection; decodes a 2xx body as `T`, anything else as
    /// the server's [`ErrorBody`].
    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        auth: Option<&NodeAuth>,
        body: Option<&B>,
        read_timeout: Duration,
    ) -> Result<T, ClientError> {
        self.call_with(method, path, auth, body, read_timeout, &[])
    }

    /// [`Client::call`] with extra request headers.
    fn call_with<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        auth: Option<&NodeAuth>,
        body: Option<&B>,
        read_timeout: Duration,
        headers: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let what = format!("{method} {}{path}", self.url.trim_end_matches('/'));
        let body = body.map(serde_json::to_vec).transpose().map_err(|e| {
            ClientError::Http(format!("{what}: cannot encode the request body: {e}"))
        })?;
        let tcp = self.connect(read_timeout)?;
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| ClientError::Tls(format!("server name {SERVER_NAME}: {e}")))?;
        let conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| ClientError::Tls(format!("{what}: {e}")))?;
        let mut tls = StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|e| tls_error(e, &format!("{what}: TLS handshake")))?;
        }
        let authorization = auth.map(|a| format!("Bearer {}.{}", a.name, a.credential));
        let host = self.authority();
        let req = Request {
            method,
            path,
            host: &host,
            authorization: authorization.as_deref(),
            body: body.as_deref(),
        };
        http::write_request_with(&mut tls, &req, headers)
            .map_err(|e| tls_error(e, &format!("{what}: sending the request")))?;
        let answer = http::read_response(&mut BufReader::new(&mut tls), MAX_ANSWER_BODY).map_err(
            |e| match e {
                HttpError::Io(e) => tls_error(e, &format!("{what}: reading the answer")),
                HttpError::Malformed(m) => ClientError::Http(format!("{what}: {m}")),
            },
        )?;
        decode(&what, answer.status, &answer.body)
    }
}

/// The first 200 bytes of a body, for error messages.
fn excerpt(body: &[u8]) -> String {
    let cut = &body[..body.len().min(200)];
    let more = if body.len() > 200 { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

/// A 2xx body as `T`; any other status as the server's refusal.
fn decode<T: DeserializeOwned>(what: &str, status: u16, body: &[u8]) -> Result<T, ClientError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(body).map_err(|e| {
            ClientError::BadAnswer(format!(
                "{what}: HTTP {status} body is not a {}: {e}; body starts {}",
                short_type_name::<T>(),
                excerpt(body)
            ))
        });
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => Err(ClientError::Refused { status, body }),
        Err(_) => Err(ClientError::BadAnswer(format!(
            "{what}: HTTP {status} without a kiln error body; body starts {}",
            excerpt(body)
        ))),
    }
}

/// `PeerList` rather than `kiln_enroll_proto::api::PeerList`.
fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let ok = [
            ("https://enroll.example:9000", "enroll.example", 9000),
            ("https://10.0.2.100", "10.0.2.100", 8443),
            ("HTTPS://h/", "h", 8443),
            ("https://[::1]:8443/", "::1", 8443),
            ("https://[fd00::5]", "fd00::5", 8443),
        ];
        for (url, host, port) in ok {
            assert_eq!(parse_url(url).unwrap(), (host.to_string(), port), "{url}");
        }
    }

    #[test]
    fn says_what_is_wrong_with_which_url() {
        let bad = [
            ("http://h:1", "scheme \"http\" is not https"),
            ("h:1", "no scheme"),
            ("https://h:1/v1/enroll", "has a path"),
            ("https://h:1?x", "has a path or query"),
            ("https://u@h:1", "user information"),
            ("https://::1:8443", "must be in brackets"),
            ("https://[::1", "without `]`"),
            ("https://[zz]:1", "not an IPv6 address"),
            ("https://[::1]8443", "is not `:PORT`"),
            ("https://:1", "host is empty"),
            ("https://h:0", "port \"0\""),
            ("https://h:65536", "port \"65536\""),
            ("https://h:+1", "port \"+1\""),
            ("https://h a:1", "host contains ' '"),
        ];
        for (url, want) in bad {
            let e = Client::new(url, [0; 32]).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains(url), "{url}: {e}");
            assert!(e.contains("retrying will not help"), "{e}");
        }
    }

    #[test]
    fn error_answers_decode_as_refusals_or_bad_answers() {
        let body = serde_json::to_vec(&ErrorBody::new(
            crate::api::ErrorCode::TokenUsedUp,
            "token abc123 has no uses left",
        ))
        .unwrap();
        let e = decode::<PeerList>("GET x", 403, &body).unwrap_err();
        assert!(matches!(&e, ClientError::Refused { status: 403, body } if !body.retry));
        assert!(!e.retryable());
        assert!(e.to_string().contains("no uses left"), "{e}");
        let e = decode::<PeerList>("GET x", 502, &[b'x'; 300]).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, ClientError::BadAnswer(_)));
        assert!(
            text.contains("HTTP 502") && text.contains(&"x".repeat(200)),
            "{text}"
        );
        assert!(!text.contains(&"x".repeat(201)), "{text}");
        let e = decode::<PeerList>("GET x", 200, b"{}").unwrap_err();
        assert!(e.to_string().contains("not a PeerList"), "{e}");
    }

    #[test]
    fn retryable_follows_the_kind() {
        let io = || io::Error::new(io::ErrorKind::TimedOut, "t");
        assert!(ClientError::Io(io()).retryable());
        assert!(ClientError::Connect {
            addr: "a".into(),
            source: io()
        }
        .retryable());
        let unavailable = ErrorBody::new(crate::api::ErrorCode::Unavailable, "db");
        assert!(ClientError::Refused {
            status: 503,
            body: unavailable
        }
        .retryable());
        assert!(!ClientError::Tls("x".into()).retryable());
        assert!(!ClientError::PinMismatch {
            expected: "a".into(),
            presented: vec![]
        }
        .retryable());
        assert!(!ClientError::Http("x".into()).retryable());
    }

    #[test]
    fn auth_debug_hides_the_credential() {
        let a = NodeAuth {
            name: "n1".into(),
            credential: "secretsecret".into(),
        };
        assert!(!format!("{a:?}").contains("secret"));
    }
}
