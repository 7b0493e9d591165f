//! The overlay daemon (`overlay run`), against [`OverlaySys`], [`Net`] and [`Api`] so tests
//! use fakes; its parts are [`super::settings`], [`super::enroll`], [`super::mesh`] and
//! [`super::replan`].
//!
//! Daemon order: config → identity (persisted before any network I/O) → either the
//! cached enrollment (the mesh comes up at once, even with kiln-enroll down) or a new
//! enrollment (retried with backoff while the server cannot answer) → kiln0 up → a loop
//! that takes peer lists from the watch thread as they arrive, heartbeats, and re-plans
//! every 2 s and on every new list.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use kiln_enroll_proto::api::PeerList;
use kiln_enroll_proto::client::NodeAuth;

use super::enroll::{check_answer, enroll_with_retry, keep};
use super::identity;
use super::mesh::{accept_peers, bring_up, choose_mtu, heartbeat, revoke, Mesh};
use super::replan::replan;
use super::settings::Settings;
use super::state;
use super::{error, say, Api, Fatal, OverlaySys, ENROLLMENT_PATH};
use crate::backoff::Backoff;
use crate::config::schema::ServerUrl;
use crate::netlink::Net;

/// Seconds between re-plans (probe windows are counted in these steps).
pub const TICK: Duration = Duration::from_secs(2);
/// For this long after a direct path appears, a peer that has not answered is asked again
/// every [`INITIATE_EVERY`] (see [`super::replan`]); after that the kernel's own retries
/// carry on.
pub const INITIATE_SECS: u64 = 30;
/// How often a direct peer that has not answered yet is asked again (the loop wakes this
/// often while there is one).
pub const INITIATE_EVERY: Duration = Duration::from_secs(1);
/// How long one peer-list long poll waits.
pub const WATCH_WAIT_SECS: u32 = 30;
/// Retry delays: doubling from 2 s to 60 s, plus up to a quarter of jitter.
pub const BACKOFF: Backoff = Backoff::secs(2, 60);

/// Makes a client for a server URL and CA pin.
pub type MakeApi<'a> = &'a dyn Fn(&str, [u8; 32]) -> Result<Arc<dyn Api>, String>;

/// What the watch thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new peer list.
    Peers(PeerList),
    /// The server says this node is revoked.
    Revoked(String),
    /// A poll failed (it is retried).
    Trouble(String),
}

/// The watch loop (its own thread): long-polls the peer list and sends every new version;
/// ends when the receiver is gone or the node is revoked.
pub fn watch(
    api: Arc<dyn Api>,
    auth: NodeAuth,
    mut since: u64,
    tx: Sender<Event>,
    sleep: fn(Duration),
) {
    let mut attempt = 0u32;
    loop {
        match api.peers(&auth, since, WATCH_WAIT_SECS) {
            Ok(list) => {
                attempt = 0;
                if list.version != since {
                    since = list.version;
                    if tx.send(Event::Peers(list)).is_err() {
                        return;
                    }
                }
            }
            Err(e) if e.is_revoked() => {
                let _ = tx.send(Event::Revoked(e.to_string()));
                return;
            }
            Err(e) => {
                if tx.send(Event::Trouble(e.to_string())).is_err() {
                    return;
                }
                sleep(BACKOFF.delay(attempt, 128));
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn trouble(sys: &mut dyn OverlaySys, mesh: &mut Mesh, what: Option<String>) {
    match (&mesh.trouble, &what) {
        (None, Some(w)) => say(
            sys,
            &format!("kiln-enroll unreachable: {w} (the mesh keeps running)"),
        ),
        (Some(_), None) => say(sys, "kiln-enroll reachable again"),
        _ => {}
    }
    mesh.trouble = what;
}

/// One pass of the daemon loop: `first` and any further events, a heartbeat when due, a
/// re-plan. Some(exit code) when the daemon must end.
pub fn tick(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    api: &dyn Api,
    mesh: &mut Mesh,
    first: Option<Event>,
    events: &Receiver<Event>,
) -> Option<u8> {
    for ev in first
        .into_iter()
        .chain(std::iter::from_fn(|| events.try_recv().ok()))
    {
        match ev {
            Event::Peers(list) => {
                trouble(sys, mesh, None);
                accept_peers(sys, mesh, list, true);
            }
            Event::Revoked(why) => return Some(revoke(sys, net, mesh, &why)),
            // Heartbeats say whether the server is there; a failed poll alone is noise.
            Event::Trouble(_) => {}
        }
    }
    if sys.now() >= mesh.next_heartbeat {
        match heartbeat(sys, net, api, mesh) {
            Ok(()) => trouble(sys, mesh, None),
            Err(e) if e.is_revoked() => return Some(revoke(sys, net, mesh, &e.to_string())),
            Err(e) => trouble(sys, mesh, Some(e.to_string())),
        }
    }
    if let Err(e) = replan(sys, net, mesh) {
        error(sys, &format!("applying the peer list: {e}"));
    }
    None
}

fn summary(mesh: &Mesh) -> String {
    let n = &mesh.enrollment.answer.node;
    format!(
        "{} {} {} mtu {} ({} peers)",
        n.name,
        n.address_v4.addr,
        n.address_v6.addr,
        mesh.mtu,
        mesh.checked.len()
    )
}

/// The daemon after config: identity, enrollment (cached or new), kiln0, the loop.
/// `spawn_watch` starts the watch thread; it gets the receiver's sender.
pub fn daemon(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    make_api: MakeApi<'_>,
    s: &Settings,
    spawn_watch: &dyn Fn(Arc<dyn Api>, NodeAuth, u64, Sender<Event>),
) -> u8 {
    match daemon_inner(sys, net, make_api, s, spawn_watch) {
        Ok(code) => code,
        Err(f) => {
            for line in f.message.lines() {
                error(sys, line);
            }
            f.code
        }
    }
}

fn daemon_inner(
    sys: &mut dyn OverlaySys,
    net: &mut dyn Net,
    make_api: MakeApi<'_>,
    s: &Settings,
    spawn_watch: &dyn Fn(Arc<dyn Api>, NodeAuth, u64, Sender<Event>),
) -> Result<u8, Fatal> {
    let id = identity::load_or_create(sys)?;
    let cached = state::load_enrollment(sys)?;
    let from_cache = cached.is_some();
    let (enrollment, api) = match cached {
        Some(e) => {
            if e.server != s.server.to_string() || e.ca_hash != s.token.ca_hash {
                say(
                    sys,
                    &format!(
                        "note: this node enrolled with {} earlier and keeps using it; the \
                         config now names {} (delete {ENROLLMENT_PATH} to enroll there)",
                        e.server, s.server
                    ),
                );
            }
            let api = make_api(&e.server, e.ca_hash).map_err(Fatal::stop)?;
            (e, api)
        }
        None => {
            let url = s.server.to_string();
            let api = make_api(&url, s.token.ca_hash).map_err(Fatal::stop)?;
            let answer = enroll_with_retry(sys, api.as_ref(), &id, s)?;
            (keep(sys, url, s.token.ca_hash, answer)?, api)
        }
    };
    if from_cache {
        check_answer(&enrollment.answer)?;
    }
    let mut mesh = Mesh::new(id, enrollment, s);
    let list = if from_cache {
        match state::load_peers(sys) {
            Ok(Some(l)) => l,
            Ok(None) => mesh.enrollment.answer.peers.clone(),
            Err(e) => {
                error(sys, &format!("{e}; using the peers of the enrollment"));
                mesh.enrollment.answer.peers.clone()
            }
        }
    } else {
        mesh.enrollment.answer.peers.clone()
    };
    accept_peers(sys, &mut mesh, list, false);
    let server = ServerUrl::parse(&mesh.enrollment.server).unwrap_or_else(|_| s.server.clone());
    mesh.mtu = choose_mtu(sys, net, &server, mesh.enrollment.answer.network.mtu, s.mtu);
    bring_up(sys, net, &mut mesh)?;
    if from_cache {
        match heartbeat(sys, net, api.as_ref(), &mut mesh) {
            Ok(()) => say(sys, &format!("mesh up from cache as {}", summary(&mesh))),
            Err(e) if e.is_revoked() => return Ok(revoke(sys, net, &mesh, &e.to_string())),
            Err(e) => {
                say(
                    sys,
                    &format!(
                        "mesh up from cache as {} (kiln-enroll unreachable: {e})",
                        summary(&mesh)
                    ),
                );
                mesh.trouble = Some(e.to_string());
            }
        }
    } else {
        say(sys, &format!("enrolled as {}", summary(&mesh)));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_watch(api.clone(), mesh.auth(), mesh.list.version, tx);
    let mut event = None;
    loop {
        if let Some(code) = tick(sys, net, api.as_ref(), &mut mesh, event.take(), &rx) {
            return Ok(code);
        }
        // A new peer list is applied the moment it arrives: a peer that just enrolled is
        // already sending its first handshake initiation.
        let wait = if mesh.still_initiating(sys.now()) {
            INITIATE_EVERY
        } else {
            TICK
        };
        event = sys.next_event(&rx, wait);
    }
}
