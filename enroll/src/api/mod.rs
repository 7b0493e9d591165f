//! The HTTP API: routes a parsed request to its handler and turns every outcome, refusals
//! included, into a JSON answer. Handlers work over the [`Store`], a [`Clock`] and the
//! [`Notifier`] they are given, so tests can drive them without a network.
//!
//! ```text
//! POST /v1/enroll     enroll.rs      token in the body
//! GET  /v1/peers      peers.rs       node auth, long poll
//! POST /v1/heartbeat  heartbeat.rs   node auth
//! GET  /v1/cluster    cluster.rs     node auth
//! ```

use std::net::IpAddr;
use std::sync::Arc;

use kiln_enroll_proto::api::{ErrorBody, ErrorCode, PATH_ENROLL, PATH_HEARTBEAT, PATH_PEERS};
use kiln_enroll_proto::client::PATH_CLUSTER;

use crate::clock::Clock;
use crate::http::{Request, Response};
use crate::ratelimit::RateLimiter;
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
    /// authentications per minute per address before 429.
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

    /// Answers one request from `from`.
    pub fn handle(&self, req: &Request, from: IpAddr) -> Handled {
        let mut node = None;
        let result = self.route(req, from, &mut node);
        let response = match result {
            Ok(r) => r,
            Err(f) => {
                let now = self.clock.now();
                let mut body = f.body;
                if f.auth {
                    if let Some(wait) = self.limiter.blocked(from, now) {
                        body = limited(wait);
                    } else {
                        self.limiter.failed(from, now);
                    }
                }
                Response::from_error(&body)
            }
        };
        Handled { response, node }
    }

    fn route(
        &self,
        req: &Request,
        from: IpAddr,
        node: &mut Option<String>,
    ) -> Result<Response, Failure> {
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
            PATH_ENROLL => {
                // Checked before the token, so a blocked address learns nothing more.
                if let Some(wait) = self.limiter.blocked(from, self.clock.now()) {
                    return Ok(Response::from_error(&limited(wait)));
                }
                enroll::handle(self, req, node)
            }
            PATH_PEERS => peers::handle(self, req, node),
            PATH_CLUSTER => cluster::handle(self, req, node),
            _ => heartbeat::handle(self, req, node),
        }
    }
}

fn limited(wait: u32) -> ErrorBody {
    let mut body = ErrorBody::new(
        ErrorCode::RateLimited,
        format!("too many failed attempts from this address: wait {wait} s before trying again"),
    );
    body.retry_after_secs = Some(wait);
    body
}

/// Parses a JSON body into its DTO (unknown fields refused), naming the body in errors.
fn json_body<T: serde::de::DeserializeOwned>(req: &Request, what: &str) -> Result<T, Failure> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Failure::bad_request(format!("the body is not a valid {what}: {e}")))
}
