//! What the node remembers about its updates, in `state.json` under
//! [`boot::STATE_DIR`](kiln_contract::boot::STATE_DIR) on /var (which both slots share):
//!
//! ```json
//! {
//!   "rejected": [{"version": "1.3.0", "reason": "health check failed: ...", "when": 1765108800}],
//!   "trial": {"version": "1.3.0", "slot": "b", "started": 1765108000,
//!             "attempts": [{"boot_id": "0f3c...", "result": "failed", "reason": "..."}]},
//!   "last_apply": {"version": "1.3.0", "from": "1.2.0", "when": 1765107900},
//!   "health_failures": [{"version": "1.3.0", "reason": "preflight: ...", "when": 1765108700}]
//! }
//! ```
//!
//! - `rejected`: versions this node rolled back from; `update apply` refuses them
//!   without `--force` ([`is_rejected`]).
//! - `trial`: the version on trial and each boot's attempt at its health check.
//! - `last_apply`: written by `update apply`.
//! - `health_failures`: written by a failing health check just before it reboots, so
//!   the version that boots next can say why the new one failed.
//! - `last_check`: written by `update check` (the channel's document was read): when,
//!   what it found, and when the next check is due.
//!
//! Two versions of the agent read and write this file (the one that applied an update
//! and the one it applied), so every field has a default and unknown fields are kept
//! out of the way rather than refused: an older agent must read a newer one's file.
//! The file is replaced atomically (temporary file, fsync, rename, fsync of the folder).

use std::fmt;
use std::io;

use kiln_contract::boot::Slot;
use kiln_contract::version::ImageVersion;
use serde::{Deserialize, Serialize};

use crate::sys::Files;

/// The state file's name in its folder.
pub const FILE_NAME: &str = "state.json";
/// Most `rejected` entries kept (the oldest go first).
pub const MAX_REJECTED: usize = 64;
/// Most `health_failures` kept.
pub const MAX_HEALTH_FAILURES: usize = 16;
/// Most attempts kept in a trial.
pub const MAX_ATTEMPTS: usize = 16;

/// A version the node rolled back from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// The version.
    pub version: String,
    /// Why it was rejected, one line.
    pub reason: String,
    /// When the rollback was noticed (Unix seconds).
    pub when: u64,
}

/// One boot of a version on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// `checking` (the check ran and the boot ended before it finished: a crash, a
    /// hang or a power cut), `healthy` or `failed`.
    pub result: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Results an [`Attempt`] can have.
pub mod result {
    /// The health check is running.
    pub const CHECKING: &str = "checking";
    /// The version proved itself.
    pub const HEALTHY: &str = "healthy";
    /// The health check failed at its deadline.
    pub const FAILED: &str = "failed";
}

/// The version on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// Its version.
    pub version: String,
    /// The slot it runs from (`a` or `b`).
    pub slot: String,
    /// When its first attempt started (Unix seconds).
    pub started: u64,
    /// Each boot's attempt, oldest first.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

/// The last update applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastApply {
    /// The version written to the other slot.
    pub version: String,
    /// The version that was running.
    pub from: String,
    /// When (Unix seconds).
    pub when: u64,
}

/// A failed health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthFailure {
    /// The version that failed it.
    pub version: String,
    /// What was not healthy, one line.
    pub reason: String,
    /// When (Unix seconds).
    pub when: u64,
}

/// The last check of the update channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    /// When (Unix seconds).
    pub when: u64,
    /// What it found, one line.
    pub result: String,
    /// When the next check is due (Unix seconds): `when` plus `check_every`, or the
    /// opening of the maintenance window an update waits for.
    pub next: u64,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Versions this node rolled back from, oldest first.
    #[serde(default)]
    pub rejected: Vec<Rejected>,
    /// The version on trial, if any.
    #[serde(default)]
    pub trial: Option<Trial>,
    /// The last apply (written by `update apply`).
    #[serde(default)]
    pub last_apply: Option<LastApply>,
    /// Failed health checks, oldest first.
    #[serde(default)]
    pub health_failures: Vec<HealthFailure>,
    /// The last check of the update channel (absent in files of agents before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<LastCheck>,
}

/// Why the state could not be read or written.
#[derive(Debug)]
pub enum StateError {
    /// Reading or writing the file (or making its folder) failed.
    Io {
        /// The file or folder.
        path: String,
        /// The error.
        err: io::Error,
    },
    /// The file is not the state's JSON.
    Corrupt {
        /// The file.
        path: String,
        /// serde's message.
        why: String,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateError::Io { path, err } => write!(f, "{path}: {err}"),
            StateError::Corrupt { path, why } => write!(
                f,
                "{path}: not the update state's JSON ({why}); move it away to start over \
                 (the node then forgets which versions it rolled back from)"
            ),
        }
    }
}

/// The state file's path in `dir`.
pub fn path_in(dir: &str) -> String {
    format!("{}/{FILE_NAME}", dir.trim_end_matches('/'))
}

impl State {
    /// Reads `state.json` in `dir`; a missing file is the empty state.
    pub fn load<S: Files + ?Sized>(sys: &mut S, dir: &str) -> Result<State, StateError> {
        let path = path_in(dir);
        let bytes = match sys.read_file(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(err) => return Err(StateError::Io { path, err }),
        };
        serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path,
            why: e.to_string(),
        })
    }

    /// Writes `state.json` in `dir` (made if missing) atomically and durably.
    pub fn save<S: Files + ?Sized>(&self, sys: &mut S, dir: &str) -> Result<(), StateError> {
        sys.mkdir(dir).map_err(|err| StateError::Io {
            path: dir.to_string(),
            err,
        })?;
        let path = path_in(dir);
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        json.push(b'\n');
        sys.write_atomic(&path, &json, 0o644)
            .map_err(|err| StateError::Io { path, err })
    }

    /// Records a rollback from `version` (once: an entry already there is kept).
    pub fn reject(&mut self, version: &ImageVersion, reason: String, when: u64) {
        if is_rejected(self, version).is_some() {
            return;
        }
        self.rejected.push(Rejected {
            version: version.to_string(),
            reason,
            when,
        });
        let extra = self.rejected.len().saturating_sub(MAX_REJECTED);
        self.rejected.drain(..extra);
    }

    /// Records a failed health check.
    pub fn record_health_failure(&mut self, version: &str, reason: String, when: u64) {
        self.health_failures.push(HealthFailure {
            version: version.to_string(),
            reason,
            when,
        });
        let extra = self
            .health_failures
            .len()
            .saturating_sub(MAX_HEALTH_FAILURES);
        self.health_failures.drain(..extra);
    }

    /// The latest failed health check of `version`.
    pub fn last_health_failure(&self, version: &str) -> Option<&HealthFailure> {
        self.health_failures
            .iter()
            .rev()
            .find(|f| f.version == version)
    }

    /// The trial of `version` in `slot`, started now if there is none for them (a trial
    /// of another version or slot is replaced).
    pub fn trial_of(&mut self, version: &str, slot: Slot, now: u64) -> &mut Trial {
        let letter = slot.to_string();
        let trial = self
            .trial
            .take()
            .filter(|t| t.version == version && t.slot == letter)
            .unwrap_or_else(|| Trial {
                version: version.to_string(),
                slot: letter,
                started: now,
                attempts: Vec::new(),
            });
        self.trial.insert(trial)
    }
}

impl Trial {
    /// The attempt of boot `boot_id`, added as `checking` if it is not there yet.
    pub fn attempt(&mut self, boot_id: &str) -> &mut Attempt {
        if let Some(i) = self.attempts.iter().position(|a| a.boot_id == boot_id) {
            return &mut self.attempts[i];
        }
        self.attempts.push(Attempt {
            boot_id: boot_id.to_string(),
            result: result::CHECKING.to_string(),
            reason: None,
        });
        let extra = self.attempts.len().saturating_sub(MAX_ATTEMPTS);
        self.attempts.drain(..extra);
        let last = self.attempts.len().saturating_sub(1);
        &mut self.attempts[last]
    }
}

/// The rejection of `version`, if the node rolled back from it. `update apply` refuses
/// such a version unless `--force` is given.
pub fn is_rejected<'a>(state: &'a State, version: &ImageVersion) -> Option<&'a Rejected> {
    state
        .rejected
        .iter()
        .find(|r| ImageVersion::parse(&r.version).is_ok_and(|v| v == *version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use crate::sys::real::RealSys;

    fn v(s: &str) -> ImageVersion {
        ImageVersion::parse(s).unwrap()
    }

    fn sample() -> State {
        let mut s = State::default();
        s.reject(&v("1.3.0"), "health check failed: preflight".into(), 100);
        s.record_health_failure("1.3.0", "preflight: sysctl: ip_forward is 0".into(), 90);
        s.trial_of("1.4.0", Slot::B, 200).attempt("boot-1");
        s.last_apply = Some(LastApply {
            version: "1.4.0".into(),
            from: "1.2.0".into(),
            when: 150,
        });
        s
    }

    #[test]
    fn round_trips_and_a_missing_file_is_empty() {
        let mut f = FakeSys::default();
        assert_eq!(
            State::load(&mut f, "/var/lib/kiln/update").unwrap(),
            State::default()
        );
        let s = sample();
        s.save(&mut f, "/var/lib/kiln/update").unwrap();
        assert_eq!(f.writes, ["/var/lib/kiln/update/state.json 644"]);
        assert!(f.dirs.contains("/var/lib/kiln/update"));
        assert_eq!(State::load(&mut f, "/var/lib/kiln/update").unwrap(), s);
        let text = String::from_utf8(f.files["/var/lib/kiln/update/state.json"].clone()).unwrap();
        for key in [
            "\"rejected\"",
            "\"trial\"",
            "\"last_apply\"",
            "\"health_failures\"",
        ] {
            assert!(text.contains(key), "{key} in {text}");
        }
    }

    #[test]
    fn an_older_or_newer_agents_file_reads() {
        let mut f = FakeSys::default();
        // A newer agent's extra fields, an older agent's missing ones.
        f.files.insert(
            "/s/state.json".into(),
            br#"{"rejected":[{"version":"2.0","reason":"r","when":1,"by":"x"}],"future":true}"#
                .to_vec(),
        );
        let s = State::load(&mut f, "/s").unwrap();
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.trial, None);
        assert!(is_rejected(&s, &v("2.0")).is_some());
        assert!(
            is_rejected(&s, &v("2.0.0")).is_none(),
            "2.0.0 is another version"
        );

        f.files
            .insert("/s/state.json".into(), b"{not json".to_vec());
        let e = State::load(&mut f, "/s").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/s/state.json: not the update state's JSON"),
            "{e}"
        );
    }

    #[test]
    fn rejections_are_kept_once_and_lists_are_bounded() {
        let mut s = sample();
        s.reject(&v("1.3.0"), "again".into(), 500);
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.rejected[0].when, 100);
        for i in 0..100 {
            s.reject(&v(&format!("9.{i}")), "r".into(), i);
            s.record_health_failure("9", format!("r{i}"), i);
        }
        assert_eq!(s.rejected.len(), MAX_REJECTED);
        assert_eq!(s.health_failures.len(), MAX_HEALTH_FAILURES);
        assert_eq!(s.last_health_failure("9").unwrap().reason, "r99");
        assert!(
            s.last_health_failure("1.3.0").is_none(),
            "dropped as the oldest"
        );
    }

    #[test]
    fn a_trial_collects_one_attempt_per_boot() {
        let mut s = sample();
        let t = s.trial_of("1.4.0", Slot::B, 999);
        assert_eq!(t.started, 200, "same trial goes on");
        t.attempt("boot-1").result = result::FAILED.into();
        t.attempt("boot-2");
        assert_eq!(t.attempts.len(), 2);
        assert_eq!(t.attempts[0].result, "failed");
        assert_eq!(t.attempts[1].result, "checking");
        let t = s.trial_of("1.5.0", Slot::A, 1000);
        assert_eq!(
            (t.started, t.attempts.len()),
            (1000, 0),
            "a new version's trial"
        );
    }

    #[test]
    fn the_real_write_is_atomic_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("var/lib/kiln/update");
        let d = d.to_str().unwrap();
        let mut sys = RealSys::default();
        sample().save(&mut sys, d).unwrap();
        let mut again = sample();
        again.trial = None;
        again.save(&mut sys, d).unwrap();
        assert_eq!(State::load(&mut sys, d).unwrap(), again);
        let names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
