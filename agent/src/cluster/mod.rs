//! `kiln-agent cluster`: kiln-cluster, the node's Kubernetes join (k3s or kubeadm).
//!
//! - [`k3s`], [`kubeadm`]: pure renderers of the files k3s and kubeadm read, from the
//!   image's `[cluster]` settings, kiln-enroll's join parameters and the node's facts.
//! - [`yaml`]: the small emitter they write with.
//! - [`run`]: the supervisor (`cluster run`) and `cluster status`, written against the
//!   traits below so tests drive them with fakes (k3s and kubeadm cannot run in a test).
//! - [`real`]: systemd and kiln-enroll for real (files, the clock, the console and
//!   kubeadm are [`crate::sys::real::RealSys`]'s).
//!
//! The join parameters carry the cluster's tokens: they live in memory and in root-only
//! files under /run/kiln, and the token files are deleted once the node has joined.

pub mod k3s;
pub mod kubeadm;
pub mod real;
pub mod run;
pub mod yaml;

#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

use kiln_enroll_proto::api::ClusterJoin;
use kiln_enroll_proto::client::NodeAuth;
use serde::{Deserialize, Serialize};

use crate::overlay::ApiError;
use crate::sys::{Clock, Console, Exec, Files, Random, Resolve};

/// Prefix of every console line.
pub const TAG: &str = "kiln-cluster";
/// What kiln-cluster is doing, for `cluster status`.
pub const STATUS_PATH: &str = "/run/kiln/cluster.json";
/// k3s's config file.
pub const K3S_CONFIG: &str = "/run/kiln/k3s/config.yaml";
/// The token k3s joins with.
pub const K3S_TOKEN: &str = "/run/kiln/k3s/token";
/// The token a k3s server gives agents.
pub const K3S_AGENT_TOKEN: &str = "/run/kiln/k3s/agent-token";
/// Written by k3s when its kubelet got its client certificate from a server: the sign
/// that the node joined.
pub const K3S_KUBELET_CERT: &str = "/var/lib/rancher/k3s/agent/client-kubelet.crt";
/// Where /etc/rancher points (the image's /etc is read-only).
pub const RANCHER_ETC: &str = "/var/lib/rancher/etc";
/// kubeadm's JoinConfiguration.
pub const KUBEADM_CONFIG: &str = "/run/kiln/kubeadm/join.yaml";
/// Written by `kubeadm join`: the node has joined.
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// Where /etc/kubernetes points.
pub const KUBERNETES_ETC: &str = "/var/lib/kubernetes/etc";
/// The kubelet's unit (kubeadm).
pub const KUBELET_UNIT: &str = "kubelet.service";
/// The image's containerd socket.
pub const CONTAINERD_SOCKET: &str = "unix:///run/containerd/containerd.sock";
/// Folder of runtime unit drop-ins (`<unit>.d/` below it).
pub const RUNTIME_UNITS: &str = "/run/systemd/system";
/// The drop-in that makes systemd restart a joined kubeadm node's kubelet.
pub const RESTART_DROPIN: &str = "50-kiln-restart.conf";
/// The drop-in's text.
pub const RESTART_DROPIN_TEXT: &str = "\
# Written by kiln-cluster once the node joined: from now on systemd restarts the kubelet.
[Service]
Restart=always
RestartSec=5s
";

/// The node's facts the renderers use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node name (kiln-enroll's, also the Kubernetes node name).
    pub name: String,
    /// The overlay IPv4 address (kiln0): the node's IP in the cluster.
    pub address_v4: Ipv4Addr,
    /// The node's public IP, only when it is public (a peer reached its claimed public
    /// endpoint); None behind NAT.
    pub external_ip: Option<IpAddr>,
}

/// Where the supervisor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No `[cluster]` in the image settings.
    Idle,
    /// kiln0 is not up yet.
    WaitingOverlay,
    /// A k3s worker waits for the first server (or kiln-enroll has no cluster yet).
    WaitingServer,
    /// Asking kiln-enroll or joining.
    Joining,
    /// The node joined.
    Joined,
    /// The last join failed; retrying.
    Failed,
}

impl Phase {
    /// The name in the status file and on the console.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::WaitingOverlay => "waiting-overlay",
            Phase::WaitingServer => "waiting-server",
            Phase::Joining => "joining",
            Phase::Joined => "joined",
            Phase::Failed => "failed",
        }
    }
}

/// `/run/kiln/cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusFile {
    /// `k3s` or `kubeadm` (None when idle).
    pub kind: Option<String>,
    /// `worker` or `server` once the token's role is known, else the image's
    /// (`any`, `worker`, `server`).
    pub role: Option<String>,
    /// Where the supervisor is.
    pub phase: Phase,
    /// The last failure, one line (never a secret).
    pub last_error: Option<String>,
    /// Seconds until the next try, when waiting for one.
    pub next_retry_secs: Option<u64>,
    /// Unix seconds when this phase began.
    pub since: u64,
}

/// State of a systemd unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// Running (for Type=notify: it said it is ready).
    Active,
    /// Starting (k3s stays here while it cannot reach a server or is refused).
    Activating,
    /// Failed (exited with an error).
    Failed,
    /// Stopped, or any other state.
    Inactive,
}

/// systemd, as kiln-cluster uses it.
pub trait Systemd {
    /// Starts a unit without waiting for it (`systemctl start --no-block`).
    fn start(&mut self, unit: &str) -> Result<(), String>;
    /// Stops a unit.
    fn stop(&mut self, unit: &str) -> Result<(), String>;
    /// The unit's state.
    fn state(&mut self, unit: &str) -> UnitState;
    /// Forgets a unit's failed state, so it can be started again.
    fn reset_failed(&mut self, unit: &str) -> Result<(), String>;
    /// Reloads unit files and drop-ins.
    fn daemon_reload(&mut self) -> Result<(), String>;
    /// The unit's last `lines` journal lines logged at or after Unix second `since`,
    /// oldest first (earlier attempts' lines would tell an old story).
    fn journal_tail(&mut self, unit: &str, since: u64, lines: u32) -> Vec<String>;
}

/// kiln-enroll, as kiln-cluster uses it.
pub trait Remote {
    /// `GET /v1/cluster` at `server`, pinned to `ca_hash`.
    fn cluster(
        &mut self,
        server: &str,
        ca_hash: [u8; 32],
        auth: &NodeAuth,
    ) -> Result<ClusterJoin, ApiError>;
}

/// Everything else kiln-cluster does to the machine: files under /run/kiln and
/// /var/lib, the clock, the console, random bytes for its backoff, programs (`kubeadm`)
/// and name resolution (the node's public name).
pub trait ClusterSys: Files + Clock + Console + Random + Exec + Resolve {}

impl<T: Files + Clock + Console + Random + Exec + Resolve + ?Sized> ClusterSys for T {}

const CLUSTER_USAGE: &str = "\
Usage:
  kiln-agent cluster run        the supervisor (kiln-cluster.service): with [cluster] in
                                /usr/lib/kiln/agent.toml, wait for the overlay (kiln0),
                                ask kiln-enroll for the join parameters (GET
                                /v1/cluster), write /run/kiln/k3s/config.yaml and the
                                token files (k3s) or /run/kiln/kubeadm/join.yaml
                                (kubeadm), start k3s-agent/k3s-server or run `kubeadm
                                join`, retry failed joins with backoff, and once joined
                                delete the token files and let systemd restart the
                                unit; without [cluster] it prints one line and exits 0;
                                exit 2 when the image's role or kind does not fit the
                                token's, or the settings are wrong
  kiln-agent cluster status     what the supervisor is doing (/run/kiln/cluster.json):
                                kind, role, phase (idle, waiting-overlay,
                                waiting-server, joining, joined, failed), the last error
                                and when it tries next
";

/// `kiln-agent cluster ...`.
pub fn main(args: &[String]) -> ExitCode {
    let code = match args.first().map(String::as_str) {
        Some("run") if args.len() == 1 => real::run_supervisor(),
        Some("status") if args.len() == 1 => real::run_status(),
        Some("--help" | "-h" | "help") => {
            print!("{CLUSTER_USAGE}");
            0
        }
        _ => {
            eprint!("kiln-agent cluster: unknown arguments {args:?}\n\n{CLUSTER_USAGE}");
            2
        }
    };
    ExitCode::from(code)
}
