//! Enrolling with kiln-enroll: the request (key, credential, the node's own endpoints),
//! the daemon's retries while the server cannot answer, the check of the answer, and the
//! one-shot `overlay enroll`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kiln_enroll_proto::api::{EnrollAnswer, EnrollRequest};
use kiln_enroll_proto::net::IpNet;
use kiln_enroll_proto::validate;

use super::identity::{self, Identity};
use super::run::{MakeApi, BACKOFF};
use super::settings::{kernel_hostname, load_settings, EnrollArgs, Settings};
use super::state::{self, Enrollment};
use super::{error, say, Api, ApiError, Fatal, OverlaySys, IFNAME};

/// Interface name prefixes whose addresses are never offered as endpoints (containers,
/// bridges and CNI plumbing, loopback).
pub const SKIP_IFACES: &[&str] = &["veth", "cni", "flannel", "docker", "kube", "br-", "lo"];

fn link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// The node's endpoints: its own interface addresses with the WireGuard port; not
/// loopback, link-local, multicast, the overlay itself or container plumbing.
pub fn local_endpoints(addrs: &[(String, IpAddr)], port: u16, pools: &[IpNet]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .filter(|(name, _)| name != IFNAME && !SKIP_IFACES.iter().any(|p| name.starts_with(p)))
        .map(|(_, ip)| *ip)
        .filter(|ip| {
            !ip.is_loopback()
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && !link_local(ip)
                && !pools.iter().any(|p| p.contains(*ip))
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out
}

pub(super) fn own_endpoints(
    sys: &mut dyn OverlaySys,
    port: u16,
    pools: &[IpNet],
) -> Vec<SocketAddr> {
    match sys.interface_addrs() {
        Ok(a) => local_endpoints(&a, port, pools),
        Err(e) => {
            error(sys, &format!("listing interface addresses: {e}"));
            Vec::new()
        }
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "aarch64" => "arm64",
        a => a,
    }
}

/// The enrollment request.
pub fn enroll_request(id: &Identity, s: &Settings, endpoints: Vec<SocketAddr>) -> EnrollRequest {
    EnrollRequest {
        token: s.token.reveal(),
        public_key: id.public_key,
        credential: id.credential.clone(),
        hostname: s.hostname.clone(),
        arch: arch().to_string(),
        endpoints,
        public_endpoint: s.endpoint.clone(),
        listen_port: s.listen_port,
    }
}

/// What to print and the exit code for an enrollment that will not succeed by retrying.
pub fn refusal(e: &ApiError) -> Fatal {
    match e {
        ApiError::Refused(b) => {
            Fatal::stop(format!("enrollment refused ({}): {}", b.error, b.message))
        }
        ApiError::PinMismatch { .. } => Fatal::stop(e.to_string()),
        ApiError::Other { message, .. } => Fatal::stop(format!("enrollment failed: {message}")),
    }
}

/// Enrolls, retrying what can be retried.
pub fn enroll_with_retry(
    sys: &mut dyn OverlaySys,
    api: &dyn Api,
    id: &Identity,
    s: &Settings,
) -> Result<EnrollAnswer, Fatal> {
    let mut attempt = 0u32;
    loop {
        let req = enroll_request(id, s, own_endpoints(sys, s.listen_port, &[]));
        match api.enroll(&req) {
            Ok(a) => return Ok(a),
            Err(e) if !e.retryable() => return Err(refusal(&e)),
            Err(e) => {
                let mut d = BACKOFF.delay(attempt, sys.jitter());
                if let ApiError::Refused(b) = &e {
                    if let Some(after) = b.retry_after_secs {
                        d = d.max(Duration::from_secs(u64::from(after)));
                    }
                }
                say(
                    sys,
                    &format!(
                        "enrollment with {} failed: {e}; retrying in {} s",
                        s.server,
                        d.as_secs()
                    ),
                );
                sys.sleep(d);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// Checks a fresh answer and stores it with the server it came from (the enrollment and
/// the first peer list), so later runs use it instead of enrolling again.
pub fn keep(
    sys: &mut dyn OverlaySys,
    server: String,
    ca_hash: [u8; 32],
    answer: EnrollAnswer,
) -> Result<Enrollment, Fatal> {
    check_answer(&answer)?;
    let e = Enrollment {
        server,
        ca_hash,
        answer,
    };
    state::save_enrollment(sys, &e)?;
    state::save_peers(sys, &e.answer.peers)?;
    Ok(e)
}

/// Checks an answer before anything of it is used.
pub fn check_answer(a: &EnrollAnswer) -> Result<(), Fatal> {
    validate::answer(a).map_err(|errs| {
        Fatal::stop(format!(
            "kiln-enroll's answer is unusable, nothing was configured: {}",
            errs.join("; ")
        ))
    })
}

/// `overlay enroll`: one attempt; exit 0 enrolled, 2 refused, 1 other error. On success
/// the enrollment is stored, so `overlay run` uses it.
pub fn enroll_once(sys: &mut dyn OverlaySys, make_api: MakeApi<'_>, a: &EnrollArgs) -> u8 {
    let hostname = match load_settings(sys) {
        Ok(Some(s)) => s.hostname,
        _ => kiln_contract::names::node_name_from_hostname(&kernel_hostname(sys)),
    };
    let s = Settings {
        server: a.server.clone(),
        token: a.token.clone(),
        endpoint: a.endpoint.clone(),
        listen_port: a.listen_port,
        mtu: None,
        hostname,
    };
    let result = (|| -> Result<Enrollment, Fatal> {
        let id = identity::load_or_create(sys)?;
        let url = s.server.to_string();
        let api = make_api(&url, s.token.ca_hash).map_err(Fatal::retry)?;
        let req = enroll_request(&id, &s, own_endpoints(sys, s.listen_port, &[]));
        let answer = match api.enroll(&req) {
            Ok(a) => a,
            Err(e @ (ApiError::Refused(_) | ApiError::PinMismatch { .. })) if !e.retryable() => {
                return Err(refusal(&e))
            }
            Err(e) => return Err(Fatal::retry(format!("enrollment failed: {e}"))),
        };
        keep(sys, url, s.token.ca_hash, answer)
    })();
    match result {
        Ok(e) => {
            let n = &e.answer.node;
            say(
                sys,
                &format!(
                    "enrolled as {} {} {} ({} peers, server {})",
                    n.name,
                    n.address_v4.addr,
                    n.address_v6.addr,
                    e.answer.peers.peers.len().saturating_sub(1),
                    e.server
                ),
            );
            0
        }
        Err(f) => {
            error(sys, &f.message);
            f.code
        }
    }
}
