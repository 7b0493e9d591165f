//! The HTTP API: routes a request to its handler and turns every outcome, refusals
//! included, into a JSON answer. Handlers work over the [`Store`], a [`Clock`] and the
//! [`Notifier`] they are given, so tests can drive them without a network.
//!
//! ```text
//! POST /v1/enroll     enroll.rs      token in the body
//! GET  /v1/peers      peers.rs       node auth, long poll
//! POST /v1/heartbeat  heartbeat.rs   node auth
//! GET  /v1/cluster    cluster.rs     node auth
//! ```
//!
//! The store blocks (SQLite, the postgres client), so handlers run on tokio's blocking
//! threads; only the wait of a long poll is async ([`Notifier::wait_beyond`]), so waiting
//! nodes hold no thread.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use kiln_enroll_proto::api::{ErrorBody, ErrorCode, PATH_ENROLL, PATH_HEARTBEAT, PATH_PEERS};
use kiln_enroll_proto::client::PATH_CLUSTER;

use crate::clock::Clock;
use crate::http::{Request, Response};
use crate::ratelimit::RateLimiter;
use crate::source::Source;
use crate::store::{Pools, Refusal, Store, StoreError};
use crate::watch::Notifier;

mod auth;
mod cluster;
mod enroll;
mod heartbeat;
mod peers;

/// Most endpoints a node may report.
pub const MAX_ENDPOINTS: usize = 16;
/// Most peer observations in one heartbeat.
pub const MAX_OBSERVATIONS: usize = 4096;
/// A handshake younger than this proves a path (WireGuard re-handshakes every 2 minutes
/// while traffic flows, so a live path always has one within 3).
pub const HANDSHAKE_FRESH_SECS: u64 = 180;

/// What the server tells nodes and how it serves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// sha256 of the CA's SPKI: tokens made for another server carry another one.
    pub ca_hash: [u8; 32],
    /// Overlay address pools.
    pub pools: Pools,
    /// Largest overlay MTU.
    pub mtu: u16,
    /// Persistent keepalive for nodes that are not public.
    pub keepalive_secs: u16,
    /// Seconds between heartbeats.
    pub heartbeat_secs: u32,
    /// Longest long poll (never above [`kiln_enroll_proto::api::MAX_WAIT_SECS`]).
    pub watch_timeout_secs: u32,
}

/// The request handlers with everything they use.
pub struct Api {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    notifier: Arc<Notifier>,
    limiter: RateLimiter,
    settings: Settings,
}

/// What the network side asks of the API: one answer per request. [`Api`] is the real
/// one; tests of the HTTP layer give it a stub.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`, which came from `from`.
    fn handle(
        self: Arc<Self>,
        req: Request,
        from: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Handled> + Send>>;
}

/// A handled request: the answer, and the node it came from when it authenticated (for
/// the request log).
#[derive(Debug)]
pub struct Handled {
    /// The answer.
    pub response: Response,
    /// The node name, once known.
    pub node: Option<String>,
}

/// A refused request: the answer, and whether it counts as a failed attempt to
/// authenticate (those are rate limited).
#[derive(Debug)]
pub(crate) struct Failure {
    body: ErrorBody,
    auth: bool,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            body: ErrorBody::new(code, message),
            auth: matches!(
                code,
                ErrorCode::TokenInvalid | ErrorCode::Unauthorized | ErrorCode::TokenWrongServer
            ),
        }
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::BadRequest, message)
    }

    /// A store failure that is not a refusal: logged in full here, answered without the
    /// database's name (that is the operator's business, not the client's).
    fn store(e: StoreError, during: &str) -> Failure {
        match e {
            StoreError::Refused(r) => Failure::new(r.code(), r.to_string()),
            StoreError::Backend { ref what, retry } => {
                tracing::error!("{during}: {what}");
                if retry {
                    Failure::new(
                        ErrorCode::Unavailable,
                        format!("{during}: kiln-enroll's database is unavailable; retry shortly"),
                    )
                } else {
                    Failure::new(
                        ErrorCode::Internal,
                        format!("{during}: kiln-enroll's database failed (see the server log)"),
                    )
                }
            }
            StoreError::Corrupt(_) => {
                tracing::error!("{during}: {e}");
                Failure::new(
                    ErrorCode::Internal,
                    format!("{during}: kiln-enroll's state is damaged (see the server log)"),
                )
            }
        }
    }
}

/// A refusal's answer with the token's id in it, so an operator reading a node's console
/// knows which token to replace.
fn token_refusal(r: Refusal, token_id: &str, pools: &Pools) -> Failure {
    let msg = match r {
        Refusal::TokenInvalid => format!(
            "token {token_id} is not valid (unknown id or wrong secret): check that the whole \
             token was copied, or create a new one with `kiln-enroll token create`"
        ),
        Refusal::TokenExpired => format!(
            "token {token_id} has expired: create a new one with `kiln-enroll token create \
             --ttl 1h`"
        ),
        Refusal::TokenUsedUp => format!(
            "token {token_id} has no uses left: create a new one with `kiln-enroll token \
             create` (or one with more `--uses`)"
        ),
        Refusal::TokenRevoked => format!(
            "token {token_id} was revoked: create a new one with `kiln-enroll token create`"
        ),
        Refusal::PoolExhausted => format!(
            "the overlay pool {} has no free address left (addresses of revoked nodes are \
             never reused): restart kiln-enroll with a larger --pool-v4; token {token_id} was \
             not used",
            pools.v4
        ),
        other => other.to_string(),
    };
    Failure::new(r.code(), msg)
}

impl Api {
    /// Handlers over this store, clock and notifier; `max_failures` failed
    /// authentications per minute per source (an IPv4 address or an IPv6 /64) before
    /// its failing requests get 429.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        notifier: Arc<Notifier>,
        settings: Settings,
        max_failures: u32,
    ) -> Api {
        Api {
            store,
            clock,
            notifier,
            limiter: RateLimiter::new(max_failures),
            settings,
        }
    }

    /// The settings nodes are told.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Answers one request from `from`: the handler runs on a blocking thread; a long
    /// poll's wait in between is async.
    pub async fn answer(self: Arc<Self>, req: Request, from: IpAddr) -> Handled {
        let req = Arc::new(req);
        let first = self.clone().blocking(req.clone(), from, Stage::Route).await;
        match first {
            Step::Done(handled) => handled,
            Step::Wait { watch, deadline } => {
                self.notifier.wait_beyond(watch.since, deadline).await;
                // From memory, on this task: woken waiters need no thread and no row.
                let response = match peers::after_wait(&self, &watch) {
                    Ok(r) => r,
                    Err(f) => Response::from_error(&f.body),
                };
                Handled {
                    response,
                    node: Some(watch.node),
                }
            }
        }
    }

    /// Runs one stage of a request on tokio's blocking threads.
    async fn blocking(self: Arc<Self>, req: Arc<Request>, from: IpAddr, stage: Stage) -> Step {
        let run = tokio::task::spawn_blocking(move || self.run(&req, from, stage)).await;
        match run {
            Ok(step) => step,
            Err(e) => {
                // A panicking handler is a bug: the client gets a 500, the log the reason.
                tracing::error!("a request handler failed: {e}");
                Step::Done(Handled {
                    response: internal("the server failed while answering (see its log)"),
                    node: None,
                })
            }
        }
    }

    fn run(&self, req: &Request, from: IpAddr, stage: Stage) -> Step {
        let source = Source::from(from);
        let mut node = None;
        let result = match stage {
            Stage::Route => self.route(req, source, &mut node),
        };
        let response = match result {
            Ok(Routed::Answer(r)) => r,
            Ok(Routed::Wait { watch, deadline }) => return Step::Wait { watch, deadline },
            Err(f) => {
                let now = self.clock.now();
                let mut body = f.body;
                if f.auth {
                    // Only failures count; a blocked source's failures are answered 429
                    // and keep counting, so a source that keeps failing stays blocked.
                    if let Some(wait) = self.limiter.blocked(source, now) {
                        body = limited(wait);
                    }
                    self.limiter.failed(source, now);
                }
                Response::from_error(&body)
            }
        };
        Step::Done(Handled { response, node })
    }

    fn route(
        &self,
        req: &Request,
        from: Source,
        node: &mut Option<String>,
    ) -> Result<Routed, Failure> {
        let known = [
            (PATH_ENROLL, "POST"),
            (PATH_PEERS, "GET"),
            (PATH_HEARTBEAT, "POST"),
            (PATH_CLUSTER, "GET"),
        ];
        let Some((path, method)) = known.iter().find(|(p, _)| *p == req.path) else {
            return Err(Failure::new(
                ErrorCode::NotFound,
                format!(
                    "no such path {:?}: kiln-enroll serves {PATH_ENROLL}, {PATH_PEERS}, \
                     {PATH_HEARTBEAT} and {PATH_CLUSTER}",
                    req.path
                ),
            ));
        };
        if req.method != *method {
            return Err(Failure::new(
                ErrorCode::MethodNotAllowed,
                format!("{path} takes {method}, not {}", req.method),
            ));
        }
        match *path {
            PATH_ENROLL => enroll::handle(self, req, from, node).map(Routed::Answer),
            PATH_PEERS => peers::start(self, req, node),
            PATH_CLUSTER => cluster::handle(self, req, node).map(Routed::Answer),
            _ => heartbeat::handle(self, req, node).map(Routed::Answer),
        }
    }
}

impl Handler for Api {
    fn handle(
        self: Arc<Self>,
        req: Request,
        from: IpAddr,
    ) -> Pin<Box<dyn Future<Output = Handled> + Send>> {
        Box::pin(self.answer(req, from))
    }
}

/// Which part of a request runs on a blocking thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Everything up to the answer, or up to a long poll's wait (after which
    /// [`peers::after_wait`] answers from memory).
    Route,
}

/// Where a stage ended.
enum Step {
    /// Answered.
    Done(Handled),
    /// A long poll waits for a version above `watch.since` until `deadline`.
    Wait {
        watch: peers::Watch,
        deadline: tokio::time::Instant,
    },
}

/// What a handler decided.
pub(crate) enum Routed {
    /// The answer.
    Answer(Response),
    /// Wait for a version above `watch.since` until `deadline`, then answer with
    /// [`peers::after_wait`].
    Wait {
        watch: peers::Watch,
        deadline: tokio::time::Instant,
    },
}

fn internal(message: &str) -> Response {
    Response::from_error(&ErrorBody::new(ErrorCode::Internal, message))
}

fn limited(wait: u32) -> ErrorBody {
    let mut body = ErrorBody::new(
        ErrorCode::RateLimited,
        format!(
            "too many failed attempts from this address (or its IPv6 /64): wait {wait} s \
             before trying again (a valid token or node credential is not limited)"
        ),
    );
    body.retry_after_secs = Some(wait);
    body
}

/// Parses a JSON body into its DTO (unknown fields refused), naming the body in errors.
fn json_body<T: serde::de::DeserializeOwned>(req: &Request, what: &str) -> Result<T, Failure> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Failure::bad_request(format!("the body is not a valid {what}: {e}")))
}
