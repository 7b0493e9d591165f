//! `POST /v1/heartbeat`: a node's current endpoints and what its kernel sees of its peers.
//! Keeps the node online, and lets the store mark peers public that were reached at the
//! address they claim.

use kiln_enroll_proto::api::{HeartbeatAnswer, HeartbeatRequest};
use kiln_enroll_proto::validate::parse_host_port;

use super::{auth, json_body, Api, Failure, HANDSHAKE_FRESH_SECS, MAX_ENDPOINTS, MAX_OBSERVATIONS};
use crate::http::{Request, Response};
use crate::store::HeartbeatInput;

pub(super) fn handle(
    api: &Api,
    req: &Request,
    node: &mut Option<String>,
) -> Result<Response, Failure> {
    let me = auth::node(api, req)?;
    *node = Some(me.name.clone());
    let body: HeartbeatRequest = json_body(req, "heartbeat")?;
    if body.endpoints.len() > MAX_ENDPOINTS {
        return Err(Failure::bad_request(format!(
            "field endpoints: {} entries, at most {MAX_ENDPOINTS} are accepted",
            body.endpoints.len()
        )));
    }
    if body.observations.len() > MAX_OBSERVATIONS {
        return Err(Failure::bad_request(format!(
            "field observations: {} entries, at most {MAX_OBSERVATIONS} are accepted",
            body.observations.len()
        )));
    }
    if let Some(e) = &body.public_endpoint {
        parse_host_port(e).map_err(|why| {
            Failure::bad_request(format!(
                "field public_endpoint {:?}: {why}",
                e.chars().take(64).collect::<String>()
            ))
        })?;
    }
    let input = HeartbeatInput {
        endpoints: body.endpoints,
        public_endpoint: body.public_endpoint,
        observations: body.observations,
    };
    api.store
        .heartbeat(&me.name, &input, api.clock.now(), HANDSHAKE_FRESH_SECS)
        .map_err(|e| Failure::store(e, "recording the heartbeat"))?;
    // The store bumps the version only when a peer list shows a change; waiters wake
    // only then. The feed holds this process's commits at once and other replicas'
    // within the poller's second: no database read per heartbeat.
    let peers_version = api.store.feed().version();
    Ok(Response::json(
        200,
        &HeartbeatAnswer {
            heartbeat_secs: api.settings.heartbeat_secs,
            peers_version,
        },
    ))
}
