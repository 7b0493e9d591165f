//! The real overlay effects of its own: interface addresses (getifaddrs), the handshake
//! kick, the watch thread, and kiln-enroll through the pinned client (files,
//! /dev/urandom, the clock, the console and the resolver are [`RealSys`]'s).

use std::io;
use std::net::IpAddr;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use kiln_enroll_proto::api::{
    EnrollAnswer, EnrollRequest, HeartbeatAnswer, HeartbeatRequest, PeerList,
};
use kiln_enroll_proto::client::{Client, ClientError, NodeAuth};

use super::run::{self, Event};
use super::settings::{self, EnrollArgs, Settings};
use super::{enroll, status};
use super::{Api, ApiError, OverlaySys, TAG};
use crate::netlink::{Net, RealNet};
use crate::sys::real::RealSys;
use crate::sys::Console;

/// Timeout for enroll and heartbeat calls.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Timeout for the long poll (longer than its wait).
pub const POLL_TIMEOUT: Duration = Duration::from_secs(run::WATCH_WAIT_SECS as u64 + 20);

impl OverlaySys for RealSys {
    fn next_event(&mut self, events: &Receiver<Event>, d: Duration) -> Option<Event> {
        events.recv_timeout(d).ok()
    }

    fn interface_addrs(&mut self) -> io::Result<Vec<(String, IpAddr)>> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        let mut out = Vec::new();
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push((a.interface_name, ip));
        }
        Ok(out)
    }

    fn kick(&mut self, to: IpAddr) -> io::Result<()> {
        let any: IpAddr = match to {
            IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        // Port 9 is the discard service: nothing answers, the datagram only has to leave.
        std::net::UdpSocket::bind((any, 0))?.send_to(b"kiln", (to, 9))?;
        Ok(())
    }
}

/// A client error in the overlay's terms (retryable or not, the server's body kept).
pub(crate) fn api_error(e: ClientError) -> ApiError {
    let retry = e.retryable();
    match e {
        ClientError::Refused { body, .. } => ApiError::Refused(body),
        ClientError::PinMismatch {
            expected,
            presented,
        } => ApiError::PinMismatch {
            expected,
            presented,
        },
        other => ApiError::Other {
            message: other.to_string(),
            retry,
        },
    }
}

/// kiln-enroll through the pinned client.
#[derive(Debug)]
pub struct RealApi {
    call: Client,
    poll: Client,
}

impl RealApi {
    /// A client for `url`, trusting only the CA with SPKI hash `pin`.
    pub fn new(url: &str, pin: [u8; 32]) -> Result<RealApi, String> {
        let c = Client::new(url, pin).map_err(|e| format!("server {url}: {e}"))?;
        Ok(RealApi {
            call: c.clone().with_timeout(CALL_TIMEOUT),
            poll: c.with_timeout(POLL_TIMEOUT),
        })
    }
}

impl Api for RealApi {
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollAnswer, ApiError> {
        self.call.enroll(req).map_err(api_error)
    }

    fn peers(&self, auth: &NodeAuth, since: u64, wait_secs: u32) -> Result<PeerList, ApiError> {
        self.poll.peers(auth, since, wait_secs).map_err(api_error)
    }

    fn heartbeat(
        &self,
        auth: &NodeAuth,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatAnswer, ApiError> {
        self.call.heartbeat(auth, req).map_err(api_error)
    }
}

fn make_api(url: &str, pin: [u8; 32]) -> Result<Arc<dyn Api>, String> {
    Ok(Arc::new(RealApi::new(url, pin)?))
}

fn spawn_watch(api: Arc<dyn Api>, auth: NodeAuth, since: u64, tx: std::sync::mpsc::Sender<Event>) {
    let spawned = std::thread::Builder::new()
        .name("kiln-overlay-watch".into())
        .spawn(move || run::watch(api, auth, since, tx, std::thread::sleep));
    if let Err(e) = spawned {
        // Without the watch the mesh still runs from heartbeats' view; say so.
        println!("{TAG}: ERROR: cannot start the peer-list watch thread: {e}");
    }
}

fn net() -> Result<RealNet, String> {
    RealNet::new().map_err(|e| format!("netlink: {e}"))
}

/// `overlay run`.
pub fn run_daemon() -> u8 {
    let mut sys = RealSys::default();
    let s: Settings = match settings::load_settings(&mut sys) {
        Ok(Some(s)) => s,
        Ok(None) => {
            sys.say(&format!("{TAG}: no [enroll] config, nothing to do"));
            return 0;
        }
        Err(f) => {
            sys.say(&format!("{TAG}: ERROR: {}", f.message));
            return f.code;
        }
    };
    let mut n = match net() {
        Ok(n) => n,
        Err(e) => {
            sys.say(&format!("{TAG}: ERROR: {e}"));
            return 1;
        }
    };
    run::daemon(&mut sys, &mut n, &make_api, &s, &spawn_watch)
}

/// `overlay enroll`.
pub fn run_enroll(a: &EnrollArgs) -> u8 {
    enroll::enroll_once(&mut RealSys::default(), &make_api, a)
}

/// `overlay status`.
pub fn run_status() -> u8 {
    let mut sys = RealSys::default();
    match net() {
        Ok(mut n) => status::status(&mut sys, &mut n as &mut dyn Net),
        Err(e) => {
            sys.say(&format!("{TAG}: ERROR: {e}"));
            1
        }
    }
}
