//! `GET /v1/peers?since=V&wait=S`: the peer list, at once when its version is above `V`,
//! else as soon as it changes or after `S` seconds (capped by the server's watch
//! timeout). A node revoked while it waits gets NodeRevoked, not the list.
//!
//! Revision 1 (no [`crate::http::API_HEADER`], what deployed agents send) answers the
//! whole `PeerList`; revision 2 answers a `PeerDelta`: the changes since `V`, or the
//! whole list when the node is too far behind (see [`crate::store::feed`]). Both come
//! from the store's feed, serialized once per version and shared by every node asking.
//!
//! In two parts around the wait: [`start`] authenticates and decides whether to wait (on
//! a blocking thread: it reads the database), [`after_wait`] answers from memory on the
//! async side, so ten thousand woken waiters hold no thread and read no row.

use std::time::Duration;

use kiln_enroll_proto::api::{ErrorCode, MAX_WAIT_SECS, REVISION_DELTAS};

use super::{auth, Api, Failure, Routed};
use crate::http::{Request, Response};

/// What a waiting long poll needs to answer after its wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watch {
    /// The node asking.
    pub node: String,
    /// The version it has.
    pub since: u64,
    /// The API revision it understands.
    pub revision: u32,
}

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
    // Read the stored version first (and what changed since the feed's), so a change
    // made elsewhere is never missed and a node never waits for news already there.
    let version = api
        .notifier
        .poll(api.store.as_ref())
        .map_err(|e| Failure::store(e, "reading the peer list"))?;
    let watch = Watch {
        node: me.name,
        since,
        revision: req.api_revision(),
    };
    if wait > 0 && version <= since {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
        return Ok(Routed::Wait { watch, deadline });
    }
    Ok(Routed::Answer(answer(api, &watch)))
}

/// After the wait, from memory: the wait may have been ended by this very node's
/// revocation, which the feed holds by the time the waiter wakes.
pub(super) fn after_wait(api: &Api, watch: &Watch) -> Result<Response, Failure> {
    if api
        .store
        .feed()
        .node(&watch.node)
        .is_some_and(|n| n.revoked)
    {
        return Err(Failure::new(
            ErrorCode::NodeRevoked,
            format!(
                "node {} was revoked: it is no longer part of the overlay; to bring it back, \
                 remove /var/lib/kiln on it and enroll with a new token",
                watch.node
            ),
        ));
    }
    Ok(answer(api, watch))
}

fn answer(api: &Api, watch: &Watch) -> Response {
    let feed = api.store.feed();
    let (_, body) = if watch.revision >= REVISION_DELTAS {
        feed.changes(watch.since)
    } else {
        feed.list()
    };
    Response::raw_json(body.as_ref().clone())
}
