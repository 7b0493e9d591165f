//! `GET /v1/peers?since=V&wait=S`: the peer list, at once when its version is above `V`,
//! else as soon as it changes or after `S` seconds (capped by the server's watch
//! timeout). A node revoked while it waits gets NodeRevoked, not the list.
//!
//! In two parts around the wait: [`start`] authenticates and decides whether to wait,
//! [`finish`] authenticates again and answers; the wait itself holds no thread.

use std::time::Duration;

use kiln_enroll_proto::api::MAX_WAIT_SECS;

use super::{auth, Api, Failure, Routed};
use crate::http::{Request, Response};
use crate::store::logic;

fn number<T: std::str::FromStr>(req: &Request, name: &str) -> Result<Option<T>, Failure> {
    req.param(name)
        .map(|v| {
            v.parse::<T>().map_err(|_| {
                Failure::bad_request(format!(
                    "query parameter {name}={:?} is not a non-negative integer",
                    v.chars().take(32).collect::<String>()
                ))
            })
        })
        .transpose()
}

/// Authenticates, and answers at once or asks to wait.
pub(super) fn start(
    api: &Api,
    req: &Request,
    node: &mut Option<String>,
) -> Result<Routed, Failure> {
    let me = auth::node(api, req)?;
    *node = Some(me.name.clone());
    let since: u64 = number(req, "since")?.unwrap_or(0);
    let wait: u32 = number(req, "wait")?.unwrap_or(0);
    let wait = wait.min(MAX_WAIT_SECS).min(api.settings.watch_timeout_secs);
    if wait > 0 {
        // Read the stored version first, so a notifier that has not seen a change made
        // elsewhere never makes a node wait for news that is already there.
        let version = api
            .notifier
            .poll(api.store.as_ref())
            .map_err(|e| Failure::store(e, "watching the peer list"))?;
        if version <= since {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
            return Ok(Routed::Wait { since, deadline });
        }
    }
    snapshot(api).map(Routed::Answer)
}

/// After the wait: the wait may have been ended by this very node's revocation.
pub(super) fn finish(
    api: &Api,
    req: &Request,
    node: &mut Option<String>,
) -> Result<Response, Failure> {
    let me = auth::node(api, req)?;
    *node = Some(me.name.clone());
    snapshot(api)
}

fn snapshot(api: &Api) -> Result<Response, Failure> {
    let (version, nodes) = api
        .store
        .snapshot()
        .map_err(|e| Failure::store(e, "reading the peer list"))?;
    Ok(Response::json(200, &logic::peer_list(version, &nodes)))
}
