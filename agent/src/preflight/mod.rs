//! `kiln-agent preflight`: a kubeadm-style check of the node's Kubernetes prerequisites.
//!
//! One console line per check, then a summary:
//!
//! ```text
//! kiln-preflight: [PASS] swap: off
//! kiln-preflight: [FAIL] clock: not synchronized (no NTP answer yet)
//! kiln-preflight: [WARN] var: /var is a tmpfs: images and kubelet state are lost at reboot
//! kiln-preflight: FAILED (1 of 12 checks)
//! ```
//!
//! WARN is for what kubeadm only warns about: it does not fail the run. SKIP is for a check
//! that has nothing to look at yet by design (k3s's embedded containerd before kiln-cluster
//! starts k3s): it does not fail the run either, and says when it applies. With `--wait N` the
//! failing checks are retried until they pass or N seconds have passed, because at boot
//! containerd, the network and the clock come up while preflight already runs.

pub mod checks;
pub mod real;
pub mod runtime;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

pub use crate::sys::CommandResult;
use crate::sys::{Clock, Console, Exec, Files};

/// A connection to a Unix socket.
pub trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Everything preflight reads from the system, so the checks can run against a fake:
/// files, programs (each tool's `--version`), the clock for `--wait`, the console, and
/// containerd's socket.
pub trait PreflightSys: Files + Clock + Console + Exec {
    /// Connects to the Unix socket at `path` (with read and write timeouts).
    fn connect(&mut self, path: &str) -> io::Result<Box<dyn Stream>>;
}

/// A check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; the detail says what was found.
    Pass(String),
    /// Kubernetes would not work (or kubeadm would refuse); the reason says why.
    Fail(String),
    /// Works, but worth knowing.
    Warn(String),
    /// Not applicable now; the reason says why and when it is.
    Skip(String),
}

impl Outcome {
    /// Whether this verdict fails the run.
    pub fn failed(&self) -> bool {
        matches!(self, Self::Fail(_))
    }
}

/// One check: a short name for the console and the function that runs it.
#[derive(Clone, Copy)]
pub struct Check {
    /// Name on the console (`[PASS] <name>: ...`).
    pub name: &'static str,
    /// Runs the check.
    pub run: fn(&mut dyn PreflightSys) -> Outcome,
}

/// Every check, in report order.
pub const CHECKS: &[Check] = &[
    Check {
        name: "modules",
        run: checks::modules,
    },
    Check {
        name: "sysctl",
        run: checks::sysctls,
    },
    Check {
        name: "swap",
        run: checks::swap,
    },
    Check {
        name: "tools",
        run: checks::tools,
    },
    Check {
        name: "cgroup",
        run: checks::cgroup,
    },
    Check {
        name: "containerd-config",
        run: runtime::containerd_config,
    },
    Check {
        name: "containerd",
        run: runtime::containerd_cri,
    },
    Check {
        name: "clock",
        run: checks::clock,
    },
    Check {
        name: "route",
        run: checks::default_route,
    },
    Check {
        name: "hostname",
        run: checks::hostname,
    },
    Check {
        name: "var",
        run: checks::var,
    },
    Check {
        name: "kubelet-port",
        run: checks::kubelet_port,
    },
];

/// Pause between retries of failing checks with `--wait`.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Least time between two "waiting for" lines.
pub const WAITING_LINE_EVERY: Duration = Duration::from_secs(15);

/// Console line for one result.
pub fn line(name: &str, outcome: &Outcome) -> String {
    let (tag, text) = match outcome {
        Outcome::Pass(t) => ("PASS", t),
        Outcome::Fail(t) => ("FAIL", t),
        Outcome::Warn(t) => ("WARN", t),
        Outcome::Skip(t) => ("SKIP", t),
    };
    format!("kiln-preflight: [{tag}] {name}: {text}")
}

/// Runs `checks`, retrying the failing ones for up to `wait`, prints the report through
/// `sys.say` and returns whether every check passed (WARN and SKIP count as passed).
pub fn run(sys: &mut dyn PreflightSys, checks: &[Check], wait: Duration) -> bool {
    let start = sys.elapsed();
    let mut results: Vec<Outcome> = checks.iter().map(|c| (c.run)(sys)).collect();
    let mut last_line: Option<Duration> = None;
    loop {
        let failing: Vec<&str> = checks
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.failed())
            .map(|(c, _)| c.name)
            .collect();
        let now = sys.elapsed();
        if failing.is_empty() || now.saturating_sub(start) >= wait {
            break;
        }
        if last_line.is_none_or(|t| now.saturating_sub(t) >= WAITING_LINE_EVERY) {
            sys.say(&format!(
                "kiln-preflight: waiting for: {}",
                failing.join(", ")
            ));
            last_line = Some(now);
        }
        sys.sleep(RETRY_EVERY.min(wait.saturating_sub(now.saturating_sub(start))));
        for (check, result) in checks.iter().zip(results.iter_mut()) {
            if result.failed() {
                *result = (check.run)(sys);
            }
        }
    }
    for (check, result) in checks.iter().zip(&results) {
        sys.say(&line(check.name, result));
    }
    let failed = results.iter().filter(|r| r.failed()).count();
    let skipped = results
        .iter()
        .filter(|r| matches!(r, Outcome::Skip(_)))
        .count();
    if failed == 0 && skipped > 0 {
        sys.say(&format!(
            "kiln-preflight: passed ({} checks, {skipped} skipped)",
            results.len()
        ));
    } else if failed == 0 {
        sys.say(&format!(
            "kiln-preflight: passed ({} checks)",
            results.len()
        ));
    } else {
        sys.say(&format!(
            "kiln-preflight: FAILED ({failed} of {} checks)",
            results.len()
        ));
    }
    failed == 0
}

/// Parses `[--wait SECONDS]` (also `--wait=SECONDS`).
pub fn parse_args(args: &[String]) -> Result<Duration, String> {
    let mut wait = Duration::ZERO;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let value = match arg.as_str() {
            "--wait" => rest.next().map(String::as_str),
            a => match a.strip_prefix("--wait=") {
                Some(v) => Some(v),
                None => return Err(format!("unknown argument {a:?}")),
            },
        };
        wait = value
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs)
            .ok_or("--wait needs a whole number of seconds")?;
    }
    Ok(wait)
}

/// `kiln-agent preflight`.
pub fn main(args: &[String]) -> ExitCode {
    let wait = match parse_args(args) {
        Ok(w) => w,
        Err(e) => {
            let _ = writeln!(
                io::stderr(),
                "kiln-agent preflight: {e}\nusage: kiln-agent preflight [--wait SECONDS]"
            );
            return ExitCode::from(2);
        }
    };
    let mut sys = crate::sys::real::RealSys::default();
    if run(&mut sys, CHECKS, wait) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
