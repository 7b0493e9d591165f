//! `kiln-agent overlay`: the node's side of the WireGuard overlay.
//!
//! - [`identity`]: the WireGuard key and node credential, made and persisted before any
//!   network I/O, tied to the machine they were made on (a cloned disk is refused).
//! - [`state`]: what kiln-enroll answered (`enrollment.json`) and the last peer list
//!   (`peers.json`), so the mesh comes back after a reboot while the server is down.
//! - [`plan`]: pure: peers + kernel state → the path to each peer and the WireGuard
//!   changes that get there (direct, passive, LAN probe, relay).
//! - [`run`]: the daemon (`overlay run`), written against the traits below so tests drive
//!   it with fakes; [`settings`]: what it runs with; [`enroll`]: enrolling (also the
//!   one-shot `overlay enroll`); [`mesh`]: the running mesh, kiln0 and heartbeats;
//!   [`replan`]: kiln0 kept in step with the plan; [`status`]: `overlay status`.
//! - [`real`]: the real interface addresses and kiln-enroll client (files, the clock, the
//!   console and the resolver are [`crate::sys::real::RealSys`]'s).
//! - [`bench`](self::bench): `overlay bench-apply`, the time to put a large peer list into the kernel
//!   (`make bench`).

pub mod bench;
pub mod enroll;
pub mod identity;
pub mod mesh;
pub mod plan;
pub mod real;
pub mod replan;
pub mod run;
pub mod settings;
pub mod state;
pub mod status;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use kiln_enroll_proto::api::{
    EnrollAnswer, EnrollRequest, ErrorBody, HeartbeatAnswer, HeartbeatRequest, PeerList,
};
use kiln_enroll_proto::client::NodeAuth;

use crate::sys::{Clock, Console, Files, Random, Resolve};

/// The overlay's WireGuard interface.
pub const IFNAME: &str = "kiln0";
/// Where the node keeps its overlay state.
pub const STATE_DIR: &str = "/var/lib/kiln";
/// The node's key and credential.
pub const IDENTITY_PATH: &str = "/var/lib/kiln/identity.json";
/// kiln-enroll's answer.
pub const ENROLLMENT_PATH: &str = "/var/lib/kiln/enrollment.json";
/// The last peer list.
pub const PEERS_PATH: &str = "/var/lib/kiln/peers.json";
/// What the running daemon last did (MTU, path per peer), for `overlay status`.
pub const STATUS_PATH: &str = "/run/kiln/overlay.json";
/// The merged node config.
pub const CONFIG_PATH: &str = crate::config::CONFIG_OUT;
/// The machine-id the identity is tied to.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";
/// The DMI product UUID the identity is tied to (absent on machines without DMI).
pub const PRODUCT_UUID_PATH: &str = "/sys/class/dmi/id/product_uuid";
/// The WireGuard port when the config names none.
pub const DEFAULT_LISTEN_PORT: u16 = 51820;

/// Everything the overlay does to the system apart from networking ([`crate::netlink::Net`])
/// and kiln-enroll ([`Api`]): its state files, the clock, the console, random bytes for
/// its key, credential and backoff, name resolution (public endpoints, the server), and
/// the below.
pub trait OverlaySys: Files + Clock + Console + Random + Resolve {
    /// Waits up to `d` for the watch thread's next event: the daemon applies a new peer
    /// list the moment it arrives, not at its next tick. None when the time ran out (or
    /// the watch thread is gone).
    fn next_event(&mut self, events: &Receiver<run::Event>, d: Duration) -> Option<run::Event>;
    /// Every interface address: (interface name, address).
    fn interface_addrs(&mut self) -> io::Result<Vec<(String, IpAddr)>>;
    /// Sends one small UDP datagram to `to` (an overlay address). WireGuard starts a
    /// handshake when it has a packet for a peer without a session; a changed endpoint
    /// alone does not, and after 90 s of unanswered attempts the kernel stops trying
    /// until something is sent.
    fn kick(&mut self, to: IpAddr) -> io::Result<()>;
}

/// Why a call to kiln-enroll failed, in the terms the overlay acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The server answered with an error body.
    Refused(ErrorBody),
    /// No certificate of the server has the token's CA hash.
    PinMismatch {
        /// The token's CA hash (hex).
        expected: String,
        /// The SPKI hash of each certificate the server presented (hex).
        presented: Vec<String>,
    },
    /// Anything else (connect, TLS, HTTP, a malformed answer).
    Other {
        /// One line: what failed.
        message: String,
        /// Whether trying again later can succeed.
        retry: bool,
    },
}

impl ApiError {
    /// Whether trying again later can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::Refused(b) => b.retry || b.error.retryable(),
            ApiError::PinMismatch { .. } => false,
            ApiError::Other { retry, .. } => *retry,
        }
    }

    /// Whether the server says this node was revoked.
    pub fn is_revoked(&self) -> bool {
        matches!(self, ApiError::Refused(b) if b.error == kiln_enroll_proto::api::ErrorCode::NodeRevoked)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Refused(b) => write!(f, "refused ({}): {}", b.error, b.message),
            ApiError::PinMismatch {
                expected,
                presented,
            } => write!(
                f,
                "the server's certificate does not match the token's CA hash (possible man \
                 in the middle): the token pins {expected}, the server presented [{}]",
                presented.join(", ")
            ),
            ApiError::Other { message, .. } => f.write_str(message),
        }
    }
}

/// kiln-enroll's API, as the overlay uses it.
pub trait Api: Send + Sync {
    /// `POST /v1/enroll`.
    fn enroll(&self, req: &EnrollRequest) -> Result<EnrollAnswer, ApiError>;
    /// `GET /v1/peers` (long poll).
    fn peers(&self, auth: &NodeAuth, since: u64, wait_secs: u32) -> Result<PeerList, ApiError>;
    /// `POST /v1/heartbeat`.
    fn heartbeat(
        &self,
        auth: &NodeAuth,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatAnswer, ApiError>;
}

/// A failure that ends the command, with its exit code (2: do not restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fatal {
    /// 1: may work when tried again (the unit restarts); 2: needs a person.
    pub code: u8,
    /// The console line(s), without the `kiln-overlay: ERROR: ` prefix.
    pub message: String,
}

impl Fatal {
    /// A failure a restart may cure.
    pub fn retry(message: impl Into<String>) -> Fatal {
        Fatal {
            code: 1,
            message: message.into(),
        }
    }

    /// A failure that needs a person.
    pub fn stop(message: impl Into<String>) -> Fatal {
        Fatal {
            code: 2,
            message: message.into(),
        }
    }
}

/// Prefix of every console line.
pub const TAG: &str = "kiln-overlay";

/// Prints one console line.
fn say(sys: &mut dyn OverlaySys, text: &str) {
    sys.say(&format!("{TAG}: {text}"));
}

/// Prints one ERROR line.
fn error(sys: &mut dyn OverlaySys, text: &str) {
    sys.say(&format!("{TAG}: ERROR: {text}"));
}

const OVERLAY_USAGE: &str = "\
Usage:
  kiln-agent overlay run        the daemon (kiln-overlay.service): read [enroll] from
                                /run/kiln/config.toml, enroll (or bring the mesh up from
                                /var/lib/kiln at once), keep WireGuard interface kiln0
                                in step with the peer list; exit 2 when the server
                                refuses, the disk is a clone, or the node was revoked
  kiln-agent overlay enroll --server URL --token TOKEN [--endpoint HOST:PORT]
                                one enrollment attempt, no interface changes; exit 0
                                enrolled, 2 refused (or certificate pin mismatch), 1
                                any other error
  kiln-agent overlay status     the node, its addresses and MTU, and every peer: overlay
                                address, path, endpoint, last handshake
  kiln-agent overlay bench-apply --peers N [--wg-conf FILE]
                                benchmark (make bench): N synthetic peers through the
                                list check, the plan and one netlink set on interface
                                kilnbench0 (left down), read back; prints
                                `kiln-bench-apply: peers=N plan_ms=.. apply_ms=..
                                readback_ms=..`; --wg-conf also writes the same
                                device as a `wg setconf` file
";

/// `kiln-agent overlay ...`.
pub fn main(args: &[String]) -> ExitCode {
    let code = match args.first().map(String::as_str) {
        Some("run") if args.len() == 1 => real::run_daemon(),
        Some("enroll") => match settings::parse_enroll_args(&args[1..]) {
            Ok(a) => real::run_enroll(&a),
            Err(e) => {
                eprint!("kiln-agent overlay enroll: {e}\n\n{OVERLAY_USAGE}");
                2
            }
        },
        Some("status") if args.len() == 1 => real::run_status(),
        Some("bench-apply") => bench::main(&args[1..]),
        Some("--help" | "-h" | "help") => {
            print!("{OVERLAY_USAGE}");
            0
        }
        _ => {
            eprint!("kiln-agent overlay: unknown arguments {args:?}\n\n{OVERLAY_USAGE}");
            2
        }
    };
    ExitCode::from(code)
}
