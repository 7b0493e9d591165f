//! The real effects of kiln-cluster that are its own: `systemctl` and `journalctl`, and
//! kiln-enroll through the pinned client (files, the clock, the console and kubeadm are
//! [`RealSys`]'s).

use std::io;

use kiln_enroll_proto::api::ClusterJoin;
use kiln_enroll_proto::client::{Client, NodeAuth};

use super::run::{self, Env};
use super::{Remote, Systemd, UnitState, TAG};
use crate::config::settings::{self, SETTINGS_PATH};
use crate::overlay::real::{api_error, CALL_TIMEOUT};
use crate::overlay::ApiError;
use crate::sys::real::RealSys;
use crate::sys::{run_command, Capture, Cmd, CommandResult, Console, Files};

/// Runs a command; Ok(stdout) on exit 0, else Err(one line: the command and stderr).
fn run_ok(program: &str, args: &[&str]) -> Result<String, String> {
    let cmd = Cmd::new(program, args).capture(Capture::Both);
    match run_command(&cmd) {
        CommandResult::Exited {
            code: Some(0),
            stdout,
            ..
        } => Ok(stdout),
        CommandResult::Exited { code, stderr, .. } => Err(format!(
            "{} exited with {}: {}",
            cmd.line(),
            code.map_or("a signal".to_string(), |c| format!("exit status: {c}")),
            stderr.trim().replace('\n', " ")
        )),
        CommandResult::TimedOut => Err(format!("{} timed out", cmd.line())),
        CommandResult::Failed(why) => Err(why),
    }
}

/// systemd through `systemctl` and `journalctl`.
#[derive(Debug, Default)]
pub struct RealSystemd;

impl Systemd for RealSystemd {
    fn start(&mut self, unit: &str) -> Result<(), String> {
        // k3s units are Type=notify with no start timeout: waiting for the job would
        // block until k3s joined, and the supervisor wants to watch it meanwhile.
        run_ok("systemctl", &["start", "--no-block", unit]).map(|_| ())
    }

    fn stop(&mut self, unit: &str) -> Result<(), String> {
        run_ok("systemctl", &["stop", unit]).map(|_| ())
    }

    fn state(&mut self, unit: &str) -> UnitState {
        // `is-active` exits non-zero for every state but active; its output still names
        // the state.
        let out = run_command(&Cmd::new("systemctl", &["is-active", unit]).capture(Capture::Both));
        let CommandResult::Exited { stdout, .. } = out else {
            return UnitState::Inactive;
        };
        match stdout.trim() {
            "active" | "reloading" => UnitState::Active,
            "activating" => UnitState::Activating,
            "failed" => UnitState::Failed,
            _ => UnitState::Inactive,
        }
    }

    fn reset_failed(&mut self, unit: &str) -> Result<(), String> {
        run_ok("systemctl", &["reset-failed", unit]).map(|_| ())
    }

    fn daemon_reload(&mut self) -> Result<(), String> {
        run_ok("systemctl", &["daemon-reload"]).map(|_| ())
    }

    fn journal_tail(&mut self, unit: &str, since: u64, lines: u32) -> Vec<String> {
        let since = format!("--since=@{since}");
        let n = lines.to_string();
        let args = ["-u", unit, &since, "-n", &n, "-o", "cat", "--no-pager"];
        match run_ok("journalctl", &args) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) => vec![e],
        }
    }
}

/// kiln-enroll through the pinned client (one per server and pin).
#[derive(Debug, Default)]
pub struct RealRemote {
    client: Option<(String, [u8; 32], Client)>,
}

impl Remote for RealRemote {
    fn cluster(
        &mut self,
        server: &str,
        ca_hash: [u8; 32],
        auth: &NodeAuth,
    ) -> Result<ClusterJoin, ApiError> {
        let fresh = !matches!(&self.client, Some((s, h, _)) if s == server && *h == ca_hash);
        if fresh {
            let c = Client::new(server, ca_hash).map_err(|e| ApiError::Other {
                message: format!("server {server}: {e}"),
                retry: false,
            })?;
            self.client = Some((server.to_string(), ca_hash, c.with_timeout(CALL_TIMEOUT)));
        }
        match &self.client {
            Some((_, _, c)) => c.cluster(auth).map_err(api_error),
            None => Err(ApiError::Other {
                message: "no client".to_string(),
                retry: true,
            }),
        }
    }
}

/// `cluster run`: exit 0 joined or idle, 2 needs a person, 1 a restart may help.
pub fn run_supervisor() -> u8 {
    let mut sys = RealSys::default();
    let cluster = match sys.read_file(SETTINGS_PATH) {
        Ok(bytes) => {
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|e| format!("not UTF-8 (at byte {})", e.valid_up_to()))
                .and_then(settings::parse_settings);
            match parsed {
                Ok(s) => s.cluster,
                Err(e) => {
                    sys.say(&format!(
                        "{TAG}: ERROR: {SETTINGS_PATH}: {e}; the image's [cluster] settings \
                         are wrong: fix the profile and rebuild the image"
                    ));
                    return 2;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            sys.say(&format!("{TAG}: ERROR: {SETTINGS_PATH}: {e}"));
            return 1;
        }
    };
    let mut env = Env {
        systemd: &mut RealSystemd,
        remote: &mut RealRemote::default(),
        sys: &mut sys,
    };
    run::supervise(&mut env, cluster.as_ref(), u32::MAX)
}

/// `cluster status`.
pub fn run_status() -> u8 {
    run::status(&mut RealSys::default())
}
