//! The real effects of kiln-cluster: `systemctl` and `journalctl`, `kubeadm`, files, the
//! clock and console, and kiln-enroll through the pinned client.

use std::fs::{self, DirBuilder};
use std::io::{self, Read, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_enroll_proto::api::ClusterJoin;
use kiln_enroll_proto::client::{Client, NodeAuth};

use super::run::{self, Env};
use super::{Clock, Exec, Files, Outcome, Remote, Systemd, UnitState, TAG};
use crate::config::settings::{self, SETTINGS_PATH};
use crate::overlay::real::{api_error, CALL_TIMEOUT};
use crate::overlay::ApiError;

fn command_line(argv: &[&str]) -> String {
    argv.join(" ")
}

/// Runs a command; Ok(stdout) on exit 0, else Err(one line: the command and stderr).
fn run_ok(argv: &[&str]) -> Result<String, String> {
    let (prog, args) = argv.split_first().ok_or("empty command")?;
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", command_line(argv)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{} exited with {}: {}",
            command_line(argv),
            out.status,
            err.trim().replace('\n', " ")
        ))
    }
}

/// systemd through `systemctl` and `journalctl`.
#[derive(Debug, Default)]
pub struct RealSystemd;

impl Systemd for RealSystemd {
    fn start(&mut self, unit: &str) -> Result<(), String> {
        // k3s units are Type=notify with no start timeout: waiting for the job would
        // block until k3s joined, and the supervisor wants to watch it meanwhile.
        run_ok(&["systemctl", "start", "--no-block", unit]).map(|_| ())
    }

    fn stop(&mut self, unit: &str) -> Result<(), String> {
        run_ok(&["systemctl", "stop", unit]).map(|_| ())
    }

    fn state(&mut self, unit: &str) -> UnitState {
        // `is-active` exits non-zero for every state but active; its output still names
        // the state.
        let out = Command::new("systemctl")
            .args(["is-active", unit])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        match out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()) {
            Ok(s) if s == "active" || s == "reloading" => UnitState::Active,
            Ok(s) if s == "activating" => UnitState::Activating,
            Ok(s) if s == "failed" => UnitState::Failed,
            _ => UnitState::Inactive,
        }
    }

    fn reset_failed(&mut self, unit: &str) -> Result<(), String> {
        run_ok(&["systemctl", "reset-failed", unit]).map(|_| ())
    }

    fn daemon_reload(&mut self) -> Result<(), String> {
        run_ok(&["systemctl", "daemon-reload"]).map(|_| ())
    }

    fn journal_tail(&mut self, unit: &str, since: u64, lines: u32) -> Vec<String> {
        let since = format!("--since=@{since}");
        let n = lines.to_string();
        let argv = [
            "journalctl",
            "-u",
            unit,
            &since,
            "-n",
            &n,
            "-o",
            "cat",
            "--no-pager",
        ];
        match run_ok(&argv) {
            Ok(text) => text.lines().map(str::to_string).collect(),
            Err(e) => vec![e],
        }
    }
}

/// Runs commands for real, standard error captured.
#[derive(Debug, Default)]
pub struct RealExec;

impl Exec for RealExec {
    fn run(&mut self, argv: &[&str]) -> Outcome {
        let Some((prog, args)) = argv.split_first() else {
            return Outcome {
                code: None,
                stderr: "empty command".to_string(),
            };
        };
        match Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
        {
            Ok(o) => Outcome {
                code: o.status.code(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => Outcome {
                code: None,
                stderr: format!("{}: {e}", command_line(argv)),
            },
        }
    }
}

/// Files below a root folder (`/` on a node, a temporary folder in tests).
#[derive(Debug, Clone)]
pub struct RealFiles {
    root: PathBuf,
}

impl RealFiles {
    /// Files below `root`: `/run/x` is `root/run/x`.
    pub fn new(root: impl Into<PathBuf>) -> RealFiles {
        RealFiles { root: root.into() }
    }

    fn at(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

impl Files for RealFiles {
    fn read(&mut self, path: &str) -> io::Result<Vec<u8>> {
        let p = self.at(path);
        fs::read(&p).map_err(|e| with_path(&p, e))
    }

    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        crate::overlay::real::write_private(&self.at(path), data)
    }

    fn remove(&mut self, path: &str) -> io::Result<()> {
        let p = self.at(path);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(with_path(&p, e)),
            _ => Ok(()),
        }
    }

    fn exists(&mut self, path: &str) -> bool {
        self.at(path).exists()
    }

    fn modified(&mut self, path: &str) -> Option<u64> {
        let t = fs::metadata(self.at(path)).ok()?.modified().ok()?;
        Some(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    }

    fn create_dir_private(&mut self, path: &str) -> io::Result<()> {
        let p = self.at(path);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(|e| with_path(&p, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).map_err(|e| with_path(&p, e))
    }
}

/// kiln-enroll through the pinned client (one per server and pin), and the resolver.
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

    fn resolve(&mut self, host: &str) -> Option<IpAddr> {
        let all: Vec<IpAddr> = (host, 0u16)
            .to_socket_addrs()
            .ok()?
            .map(|a| a.ip())
            .collect();
        all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
    }
}

/// The clock, /dev/urandom and stdout.
#[derive(Debug, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn jitter(&mut self) -> u8 {
        let mut b = [0u8; 1];
        match fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
            Ok(()) => b[0],
            // Without randomness the clock's nanoseconds still spread nodes apart.
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos().to_le_bytes()[0]),
        }
    }

    fn say(&mut self, line: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// `cluster run`: exit 0 joined or idle, 2 needs a person, 1 a restart may help.
pub fn run_supervisor() -> u8 {
    let mut clock = RealClock;
    let cluster = match fs::read(SETTINGS_PATH) {
        Ok(bytes) => {
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|e| format!("not UTF-8 (at byte {})", e.valid_up_to()))
                .and_then(settings::parse_settings);
            match parsed {
                Ok(s) => s.cluster,
                Err(e) => {
                    clock.say(&format!(
                        "{TAG}: ERROR: {SETTINGS_PATH}: {e}; the image's [cluster] settings \
                         are wrong: fix the profile and rebuild the image"
                    ));
                    return 2;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            clock.say(&format!("{TAG}: ERROR: {SETTINGS_PATH}: {e}"));
            return 1;
        }
    };
    let mut env = Env {
        systemd: &mut RealSystemd,
        exec: &mut RealExec,
        files: &mut RealFiles::new("/"),
        remote: &mut RealRemote::default(),
        clock: &mut clock,
    };
    run::supervise(&mut env, cluster.as_ref(), u32::MAX)
}

/// `cluster status`.
pub fn run_status() -> u8 {
    run::status(&mut RealFiles::new("/"), &mut RealClock)
}
