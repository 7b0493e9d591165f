//! `kiln-agent update status [--json]`: where the node stands with its updates.
//!
//! ```text
//! running: 1.2.0 in slot a (kiln-a.efi)
//! other slot b: 1.3.0, on trial: 2 of 3 tries left (kiln-b+2-1.efi)
//! pending: 1.3.0 in slot b boots at the next reboot
//! last apply: 1.3.0 over 1.2.0 at 2026-12-07 10:00:00 UTC
//! rejected: 1.1.0 at 2026-12-01 08:12:40 UTC: health check failed: preflight: ...
//! last health failure: 1.1.0 at 2026-12-01 08:02:11 UTC: preflight: ...
//! ```
//!
//! `--json` prints one object ([`Report`], `schema` 1) whose fields are kept stable:
//! new ones may be added, none renamed or removed. Always exit 0 (a usage error: 2).

use std::process::ExitCode;

use kiln_contract::boot::{Slot, STATE_DIR};
use kiln_contract::civil::DateTime;
use kiln_contract::version::ImageVersion;
use serde::Serialize;

use super::esp::Uki;
use super::health::{gather, BootFacts};
use super::state::{HealthFailure, LastApply, Rejected, State, Trial};
use super::{image_settings, ImageSettings, UpdateSys};
use crate::sys::real::RealSys;

/// The JSON schema version of [`Report`].
pub const SCHEMA: u32 = 1;

/// The running version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Running {
    /// Its version (None: the image has none).
    pub version: Option<String>,
    /// Its slot, `a` or `b` (None: unknown, e.g. a single-slot image).
    pub slot: Option<String>,
    /// Its UKI's file name on the ESP.
    pub uki: Option<String>,
    /// Whether this boot is on trial (not yet marked good).
    pub on_trial: bool,
}

/// The slot that is not running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Other {
    /// `a` or `b`.
    pub slot: String,
    /// `empty` (no UKI boots it), `good`, `trial` (tries left), `bad` (none left) or
    /// `demoted` (set aside untried by a downgrade: booted only when nothing else is).
    pub state: String,
    /// Its version, when it has a UKI.
    pub version: Option<String>,
    /// Its UKI's file name.
    pub uki: Option<String>,
    /// Boot attempts left (on trial or bad).
    pub tries_left: Option<u32>,
    /// Boot attempts made (on trial or bad).
    pub tries_done: Option<u32>,
}

/// An update waiting for the next reboot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pending {
    /// Its version.
    pub version: String,
    /// Its slot.
    pub slot: String,
    /// Attempts it has left.
    pub tries_left: u32,
}

/// Everything `update status` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The running version.
    pub running: Running,
    /// The other slot (None when the running slot is unknown).
    pub other: Option<Other>,
    /// A newer version on trial in the other slot.
    pub pending: Option<Pending>,
    /// The last apply.
    pub last_apply: Option<LastApply>,
    /// Versions this node rolled back from (never applied again without `--force`).
    pub rejected: Vec<Rejected>,
    /// The latest failed health check.
    pub last_health_failure: Option<HealthFailure>,
    /// The version on trial and its attempts.
    pub trial: Option<Trial>,
    /// What could not be found out.
    pub errors: Vec<String>,
}

fn slot_state(u: &Uki) -> &'static str {
    match u.name.tries {
        None => "good",
        Some(t) if t.left > 0 => "trial",
        // `update apply --allow-downgrade` sets the newer version aside untried.
        Some(t) if t.done == 0 => "demoted",
        Some(_) => "bad",
    }
}

/// The UKI of `slot`: the one on trial, else the good one, else a bad one.
fn uki_of(ukis: &[Uki], slot: Slot) -> Option<&Uki> {
    let of_slot = || ukis.iter().filter(move |u| u.slot == slot);
    of_slot()
        .find(|u| u.on_trial())
        .or_else(|| of_slot().find(|u| u.name.tries.is_none()))
        .or_else(|| of_slot().next())
}

/// Builds the report from what `update boot` gathers and the state.
pub fn report(facts: &BootFacts, state: &State) -> Report {
    let running_uki = facts.slot.and_then(|s| uki_of(&facts.ukis, s));
    let running = Running {
        version: facts.version.clone(),
        slot: facts.slot.map(|s| s.to_string()),
        uki: facts
            .vars
            .booted_file()
            .map(str::to_string)
            .or_else(|| running_uki.map(|u| u.file.clone())),
        on_trial: facts.vars.trial().is_some(),
    };
    let other = facts.slot.map(|s| {
        let o = s.other();
        match uki_of(&facts.ukis, o) {
            Some(u) => Other {
                slot: o.to_string(),
                state: slot_state(u).to_string(),
                version: u.version_text.clone(),
                uki: Some(u.file.clone()),
                tries_left: u.name.tries.map(|t| t.left),
                tries_done: u.name.tries.map(|t| t.done),
            },
            None => Other {
                slot: o.to_string(),
                state: "empty".to_string(),
                version: None,
                uki: None,
                tries_left: None,
                tries_done: None,
            },
        }
    });
    let running_version = facts
        .version
        .as_deref()
        .and_then(|v| ImageVersion::parse(v).ok());
    let pending = facts
        .slot
        .and_then(|s| uki_of(&facts.ukis, s.other()))
        .filter(|u| u.on_trial())
        .filter(|u| match (&u.version, &running_version) {
            (Some(new), Some(old)) => new > old,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .map(|u| Pending {
            version: u.version_label(),
            slot: u.slot.to_string(),
            tries_left: u.name.tries.map_or(0, |t| t.left),
        });
    Report {
        schema: SCHEMA,
        running,
        other,
        pending,
        last_apply: state.last_apply.clone(),
        rejected: state.rejected.clone(),
        last_health_failure: state.health_failures.last().cloned(),
        trial: state.trial.clone(),
        errors: facts.errors.clone(),
    }
}

fn when(secs: u64) -> String {
    let t = DateTime::from_unix_u64(secs);
    format!("{} {} UTC", t.date_string(), t.time_string())
}

/// The report as lines for people.
pub fn lines(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let version = r.running.version.as_deref().unwrap_or("unknown version");
    let mut line = match &r.running.slot {
        Some(s) => format!("running: {version} in slot {s}"),
        None => format!(
            "running: {version} (slot unknown: a single-slot image takes no updates; reflash \
             it once with an A/B image)"
        ),
    };
    if let Some(u) = &r.running.uki {
        line.push_str(&format!(" ({u})"));
    }
    if r.running.on_trial {
        line.push_str(", on trial: not marked good yet");
    }
    out.push(line);
    if let Some(o) = &r.other {
        let what = o.version.as_deref().unwrap_or("unknown version");
        let tries = |left: u32, done: u32| format!("{left} of {} tries left", left + done);
        let text = match (o.state.as_str(), o.tries_left, o.tries_done) {
            ("empty", ..) => "empty".to_string(),
            ("good", ..) => format!("{what}, good"),
            ("trial", Some(l), Some(d)) => format!("{what}, on trial: {}", tries(l, d)),
            ("demoted", ..) => {
                format!("{what}, set aside by a downgrade (booted only when nothing else boots)")
            }
            (_, _, d) => format!(
                "{what}, bad: systemd-boot gave up on it after {} boots",
                d.unwrap_or(0)
            ),
        };
        let file = o
            .uki
            .as_deref()
            .map_or(String::new(), |u| format!(" ({u})"));
        out.push(format!("other slot {}: {text}{file}", o.slot));
    }
    match &r.pending {
        Some(p) => out.push(format!(
            "pending: {} in slot {} boots at the next reboot",
            p.version, p.slot
        )),
        None => out.push("pending: none".to_string()),
    }
    if let Some(a) = &r.last_apply {
        out.push(format!(
            "last apply: {} over {} at {}",
            a.version,
            a.from,
            when(a.when)
        ));
    }
    for j in &r.rejected {
        out.push(format!(
            "rejected: {} at {}: {}",
            j.version,
            when(j.when),
            j.reason
        ));
    }
    if let Some(f) = &r.last_health_failure {
        out.push(format!(
            "last health failure: {} at {}: {}",
            f.version,
            when(f.when),
            f.reason
        ));
    }
    for e in &r.errors {
        out.push(format!("error: {e}"));
    }
    out
}

/// `update status` against `sys`: prints the report (lines, or JSON).
pub fn status<S: UpdateSys + ?Sized>(sys: &mut S, json: bool) -> u8 {
    let mut errors = Vec::new();
    let settings = image_settings(sys).unwrap_or_else(|e| {
        errors.push(e);
        ImageSettings::default()
    });
    let mut facts = gather(sys, &settings);
    facts.errors.splice(0..0, errors);
    let state = State::load(sys, STATE_DIR).unwrap_or_else(|e| {
        facts.errors.push(e.to_string());
        State::default()
    });
    let r = report(&facts, &state);
    if json {
        match serde_json::to_string_pretty(&r) {
            Ok(text) => sys.say(&text),
            Err(e) => sys.say(&format!("{{\"errors\": [\"encoding the report: {e}\"]}}")),
        }
    } else {
        for l in lines(&r) {
            sys.say(&l);
        }
    }
    0
}

/// `kiln-agent update status [--json]`.
pub fn main(args: &[String]) -> ExitCode {
    let json = match args {
        [] => false,
        [a] if a == "--json" => true,
        _ => {
            eprintln!(
                "kiln-agent update status: unknown arguments {args:?}\nusage: kiln-agent \
                 update status [--json]"
            );
            return ExitCode::from(2);
        }
    };
    ExitCode::from(status(&mut RealSys::default(), json))
}

#[cfg(test)]
mod tests;
