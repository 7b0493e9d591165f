//! `kiln-agent update boot` (kiln-update.service, at every boot): the boot side of an
//! update.
//!
//! 1. Mounts the ESP at `/efi`, where systemd-bless-boot (pulled in by its generator on a
//!    boot with a counter, run after boot-complete.target) renames the booted UKI.
//! 2. Notices a rollback: a UKI of the other slot that systemd-boot gave up on (no tries
//!    left) whose version is newer than the running one. The version goes into the
//!    state's `rejected` list (`update apply` refuses it without `--force`) with the
//!    reason its own health check recorded, and one console line says what happened:
//!
//!    ```text
//!    kiln-update: ROLLED BACK from 1.3.0 to 1.2.0: health check failed: preflight: sysctl: ...; 1.3.0 will not be applied again automatically (kiln-agent update apply --force to retry)
//!    ```
//! 3. On a boot on trial (systemd-boot set `LoaderBootCountPath`), waits until the node
//!    is healthy ([`Probe`]: preflight, the overlay, the cluster), at most
//!    `health_timeout_secs`. Healthy: exit 0, boot-complete.target is reached and
//!    systemd-bless-boot marks the UKI good. Not healthy at the deadline: the reason is
//!    recorded for the version that boots next, and exit 1 makes the unit's
//!    `FailureAction=reboot` reboot the node, so systemd-boot counts the try down and
//!    falls back once the tries run out.
//!
//! A boot that is not on trial always exits 0: the unit reboots the node when it fails,
//! and nothing but a failed health check may do that.

use std::process::ExitCode;
use std::time::Duration;

use kiln_contract::agent_config::{HealthCheck, DEFAULT_HEALTH_TIMEOUT_SECS};
use kiln_contract::boot::{Slot, UkiName, ESP_MOUNT, STATE_DIR, UKI_DIR};
use kiln_contract::version::ImageVersion;
use nix::mount::MsFlags;

use super::efivars::{self, LoaderVars, TrialBoot};
use super::esp::{self, Uki};
use super::state::{self, State, StateError};
use super::{image_settings, running_version, ImageSettings, UpdateSys, TAG};
use crate::cluster::{Phase, StatusFile as ClusterStatus, STATUS_PATH as CLUSTER_STATUS};
use crate::config::schema;
use crate::preflight::{self, Check, PreflightSys};
use crate::sys::real::RealSys;
use crate::sys::Files;

#[cfg(test)]
mod tests;

/// How often the health checks run while waiting.
pub const POLL: Duration = Duration::from_secs(5);
/// Least time between two "waiting for" lines.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(60);
/// systemd-bless-boot: when the image lacks it, `update boot` marks the UKI good itself.
pub const BLESS_BOOT: &str = "/usr/lib/systemd/systemd-bless-boot";
/// The kernel's id of this boot.
pub const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
/// Where kiln-config writes the merged node config (its `[enroll]` turns on the
/// overlay check).
pub const NODE_CONFIG: &str = crate::config::CONFIG_OUT;
/// Where the overlay's interface shows when it exists.
pub const OVERLAY_IFACE: &str = "/sys/class/net/kiln0";

/// Runs one health check now.
pub trait Probe {
    /// Ok with what was seen when the check passes, Err with why it does not (yet).
    fn check(&mut self, check: HealthCheck) -> Result<String, String>;
}

/// The checks: agent.toml's `[update] health`, else preflight, plus the overlay when the
/// node has `[enroll]` config and the cluster when the image has `[cluster]`.
pub fn health_checks(settings: &ImageSettings, enroll: bool) -> Vec<HealthCheck> {
    if let Some(list) = settings.update.as_ref().and_then(|u| u.health.clone()) {
        return list;
    }
    let mut checks = vec![HealthCheck::Preflight];
    if enroll {
        checks.push(HealthCheck::Overlay);
    }
    if settings.cluster {
        checks.push(HealthCheck::Cluster);
    }
    checks
}

/// The time a new version has to become healthy.
pub fn health_timeout(settings: &ImageSettings) -> Duration {
    Duration::from_secs(
        settings
            .update
            .as_ref()
            .and_then(|u| u.health_timeout_secs)
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT_SECS),
    )
}

/// Whether the merged node config has `[enroll]` settings.
pub fn has_enroll_config<S: Files + ?Sized>(sys: &mut S) -> bool {
    sys.read_file(NODE_CONFIG)
        .ok()
        .and_then(|b| schema::parse_bytes(&b).ok())
        .is_some_and(|c| !c.enroll.is_empty())
}

/// Every preflight check of `checks`, as `kiln-agent preflight` runs them (without its
/// report lines): the failing ones, `name: why`, joined by `; `.
pub fn preflight_verdict(sys: &mut dyn PreflightSys, checks: &[Check]) -> Result<String, String> {
    let failed: Vec<String> = checks
        .iter()
        .filter_map(|c| match (c.run)(sys) {
            preflight::Outcome::Fail(why) => Some(format!("{}: {why}", c.name)),
            _ => None,
        })
        .collect();
    if failed.is_empty() {
        Ok(format!("{} checks passed", checks.len()))
    } else {
        Err(failed.join("; "))
    }
}

/// The overlay is up as `overlay status` sees it: enrolled, the daemon brought kiln0 up
/// this boot (its status file under /run), and the interface exists.
pub fn overlay_verdict<S: Files + ?Sized>(sys: &mut S) -> Result<String, String> {
    match crate::overlay::state::load_enrollment(sys) {
        Ok(Some(e)) => {
            if !sys.exists(crate::overlay::STATUS_PATH) {
                return Err(format!(
                    "kiln-overlay has not brought kiln0 up this boot (no {})",
                    crate::overlay::STATUS_PATH
                ));
            }
            if !sys.exists(OVERLAY_IFACE) {
                return Err("interface kiln0 does not exist".to_string());
            }
            Ok(format!("kiln0 up as {}", e.answer.node.address_v4))
        }
        Ok(None) => Err(format!(
            "not enrolled yet (no {})",
            crate::overlay::ENROLLMENT_PATH
        )),
        Err(f) => Err(f.message),
    }
}

/// The cluster is joined as `cluster status` sees it.
pub fn cluster_verdict<S: Files + ?Sized>(sys: &mut S) -> Result<String, String> {
    let bytes = sys.read_file(CLUSTER_STATUS).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("kiln-cluster has not run this boot (no {CLUSTER_STATUS})")
        } else {
            format!("{CLUSTER_STATUS}: {e}")
        }
    })?;
    let st: ClusterStatus =
        serde_json::from_slice(&bytes).map_err(|e| format!("{CLUSTER_STATUS}: {e}"))?;
    if st.phase == Phase::Joined {
        return Ok(format!("joined ({})", st.kind.as_deref().unwrap_or("-")));
    }
    let mut why = format!("not joined: phase {}", st.phase.name());
    if let Some(e) = &st.last_error {
        why.push_str(&format!(" (last error: {e})"));
    }
    Err(why)
}

/// The checks of the running system.
pub struct RealProbe {
    /// The machine.
    pub sys: RealSys,
}

impl Probe for RealProbe {
    fn check(&mut self, check: HealthCheck) -> Result<String, String> {
        match check {
            HealthCheck::Preflight => preflight_verdict(&mut self.sys, preflight::CHECKS),
            HealthCheck::Overlay => overlay_verdict(&mut self.sys),
            HealthCheck::Cluster => cluster_verdict(&mut self.sys),
        }
    }
}

/// A rollback noticed at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// The version that was given up on.
    pub version: ImageVersion,
    /// Boots it was given.
    pub boots: u32,
}

/// The versions systemd-boot gave up on and fell back from: UKIs of the other slot with
/// no tries left after at least one (`+0-N`, N > 0; `update apply --allow-downgrade`
/// sets a newer version aside as `+0-0` without trying it), newer than the running
/// version, not rejected yet.
pub fn find_rollbacks(
    ukis: &[Uki],
    running_slot: Slot,
    running: &ImageVersion,
    state: &State,
) -> Vec<Rollback> {
    ukis.iter()
        .filter(|u| u.slot != running_slot && u.is_bad())
        .filter(|u| u.name.tries.is_some_and(|t| t.done > 0))
        .filter_map(|u| {
            let version = u.version.clone()?;
            (version > *running && state::is_rejected(state, &version).is_none()).then(|| {
                Rollback {
                    boots: u.name.tries.map_or(0, |t| t.done),
                    version,
                }
            })
        })
        .collect()
}

/// Where the kernel shows what the first watchdog saw at boot (watchdog(4) flags).
const WATCHDOG_BOOTSTATUS: &str = "/sys/class/watchdog/watchdog0/bootstatus";
/// `WDIOF_CARDRESET`: the watchdog's timeout reset the machine last time.
const WDIOF_CARDRESET: u32 = 0x20;

/// Whether the last reset was the hardware watchdog's (no watchdog, or one that cannot
/// tell: false).
pub fn watchdog_reset<S: Files + ?Sized>(sys: &mut S) -> bool {
    sys.read_prefix(WATCHDOG_BOOTSTATUS, 32)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|flags| flags & WDIOF_CARDRESET != 0)
}

/// Why a version the node fell back from failed: its last recorded health check
/// failure, else what is left (it never got far enough to record one); a watchdog
/// reset right before this boot says the last try hung.
pub fn rollback_reason(state: &State, r: &Rollback, watchdog_reset: bool) -> String {
    let boots = format!("{} boot{}", r.boots, if r.boots == 1 { "" } else { "s" });
    match state.last_health_failure(r.version.as_str()) {
        Some(f) => format!("health check failed: {}", f.reason),
        None if watchdog_reset => format!(
            "did not reach a healthy state in {boots}: the last one hung and the hardware \
             watchdog reset the machine"
        ),
        None => {
            format!("did not reach a healthy state in {boots} (kernel panic, hang, or no root)")
        }
    }
}

fn say(sys: &mut dyn UpdateSys, text: &str) {
    sys.say(&format!("{TAG}: {text}"));
}

fn save(sys: &mut dyn UpdateSys, state: &State) {
    if let Err(e) = state.save(sys, STATE_DIR) {
        say(sys, &format!("ERROR: saving the update state: {e}"));
    }
}

/// Loads the state; a damaged file is moved aside (`state.json.damaged`) with an ERROR
/// line and the node goes on with an empty state rather than failing its boot.
fn load_state(sys: &mut dyn UpdateSys) -> State {
    match State::load(sys, STATE_DIR) {
        Ok(s) => s,
        Err(e @ StateError::Corrupt { .. }) => {
            let path = state::path_in(STATE_DIR);
            let aside = format!("{path}.damaged");
            let moved = match sys.rename(&path, &aside) {
                Ok(()) => format!("moved to {aside}"),
                Err(e) => format!("could not move it aside: {e}"),
            };
            say(sys, &format!("ERROR: {e}; {moved}; starting over"));
            State::default()
        }
        Err(e) => {
            say(sys, &format!("ERROR: {e}; going on without it"));
            State::default()
        }
    }
}

/// What `update boot` found out about this boot before deciding anything.
#[derive(Debug, Clone, Default)]
pub struct BootFacts {
    /// systemd-boot's variables.
    pub vars: LoaderVars,
    /// The running slot (by the root hash, else the booted entry's name).
    pub slot: Option<Slot>,
    /// The running version's text.
    pub version: Option<String>,
    /// The UKIs on the ESP (empty when it could not be mounted).
    pub ukis: Vec<Uki>,
    /// Whether the ESP is mounted at /efi.
    pub esp_mounted: bool,
    /// Whether the hardware watchdog reset the machine before this boot (the
    /// previous boot hung).
    pub watchdog_reset: bool,
    /// What could not be found out, one line each.
    pub errors: Vec<String>,
}

/// Gathers [`BootFacts`]: efivarfs (mounted when needed), the boot disk, the ESP
/// (mounted), its UKIs and the running slot. Problems go to [`BootFacts::errors`]; none
/// is fatal.
pub fn gather<S: UpdateSys + ?Sized>(sys: &mut S, settings: &ImageSettings) -> BootFacts {
    let mut facts = BootFacts {
        version: running_version(sys, settings),
        watchdog_reset: watchdog_reset(sys),
        ..BootFacts::default()
    };
    let efivarfs = |s: &mut S, target: &str| {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        s.mount("efivarfs", target, Some("efivarfs"), flags, None)
    };
    match efivars::read(sys, "/sys", efivarfs) {
        Ok(v) => facts.vars = v,
        Err(e) => facts.errors.push(e.to_string()),
    }
    let running_hash = esp::running_root_hash(sys);
    match esp::boot_device(sys) {
        Ok(dev) => {
            let arch = super::slot::running_arch();
            facts.slot = running_hash.and_then(|h| esp::slot_of_hash(&dev.gpt.entries, &h, arch));
            match esp::mount_esp(sys, &dev.esp) {
                Ok(_) => {
                    facts.esp_mounted = true;
                    match esp::list_ukis(sys, ESP_MOUNT, &dev.gpt.entries, arch) {
                        Ok(u) => facts.ukis = u,
                        Err(e) => facts.errors.push(e.to_string()),
                    }
                }
                Err(e) => facts.errors.push(e.to_string()),
            }
        }
        Err(e) => facts.errors.push(e.to_string()),
    }
    if facts.slot.is_none() {
        facts.slot = facts.vars.selected_uki().map(|u| u.slot);
    }
    facts
}

/// Records and announces each rollback; returns the versions rejected now.
pub fn notice_rollbacks(sys: &mut dyn UpdateSys, facts: &BootFacts, state: &mut State) -> usize {
    let (Some(slot), Some(text)) = (facts.slot, facts.version.as_deref()) else {
        return 0;
    };
    let Ok(running) = ImageVersion::parse(text) else {
        return 0;
    };
    let found = find_rollbacks(&facts.ukis, slot, &running, state);
    let now = sys.now();
    for r in &found {
        let reason = rollback_reason(state, r, facts.watchdog_reset);
        say(
            sys,
            &format!(
                "ROLLED BACK from {v} to {running}: {reason}; {v} will not be applied again \
                 automatically (kiln-agent update apply --force to retry)",
                v = r.version
            ),
        );
        state.reject(&r.version, reason, now);
        if state
            .trial
            .as_ref()
            .is_some_and(|t| t.version == r.version.as_str())
        {
            state.trial = None;
        }
    }
    found.len()
}

/// How the health gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed after this long.
    Healthy(Duration),
    /// The deadline passed; why, per failing check.
    Failed(String),
}

/// Runs `checks` every [`POLL`] until all pass or `timeout` has passed since the first
/// run, with a progress line every [`PROGRESS_EVERY`].
pub fn wait_healthy(
    sys: &mut dyn UpdateSys,
    probe: &mut dyn Probe,
    checks: &[HealthCheck],
    timeout: Duration,
) -> Verdict {
    let start = sys.elapsed();
    let mut last_line = start;
    loop {
        let failing: Vec<String> = checks
            .iter()
            .filter_map(|c| probe.check(*c).err().map(|why| format!("{c}: {why}")))
            .collect();
        let waited = sys.elapsed().saturating_sub(start);
        if failing.is_empty() {
            return Verdict::Healthy(waited);
        }
        if waited >= timeout {
            return Verdict::Failed(failing.join("; "));
        }
        if sys.elapsed().saturating_sub(last_line) >= PROGRESS_EVERY {
            say(
                sys,
                &format!(
                    "waiting for health ({} s of {} s): {}",
                    waited.as_secs(),
                    timeout.as_secs(),
                    failing.join("; ")
                ),
            );
            last_line = sys.elapsed();
        }
        sys.sleep(POLL.min(timeout - waited));
    }
}

/// Marks the booted UKI good by renaming it without its counter, for an image without
/// systemd-bless-boot (which otherwise does it after boot-complete.target).
fn bless_without_systemd(sys: &mut dyn UpdateSys, facts: &BootFacts, trial: &TrialBoot) {
    if sys.exists(BLESS_BOOT) || !facts.esp_mounted {
        return;
    }
    let Some(file) = facts.vars.booted_file() else {
        return;
    };
    let dir = format!("{ESP_MOUNT}/{UKI_DIR}");
    let good = UkiName {
        slot: trial.uki.slot,
        tries: None,
    };
    let (from, to) = (
        format!("{dir}/{file}"),
        format!("{dir}/{}", good.file_name()),
    );
    match sys.rename(&from, &to) {
        Ok(()) => say(
            sys,
            &format!("renamed {from} to {to} ({BLESS_BOOT} is not in the image)"),
        ),
        Err(e) => say(sys, &format!("ERROR: marking the UKI good: {e}")),
    }
}

/// The health gate of a boot on trial; returns the exit code (0 healthy, 1 not).
fn gate(
    sys: &mut dyn UpdateSys,
    probe: &mut dyn Probe,
    facts: &BootFacts,
    trial: TrialBoot,
    settings: &ImageSettings,
    state: &mut State,
) -> u8 {
    let version = facts
        .version
        .clone()
        .unwrap_or_else(|| "unknown".to_string());
    if facts.slot.is_some_and(|s| s != trial.uki.slot) {
        say(
            sys,
            &format!(
                "warning: systemd-boot booted {} (slot {}), but the root runs from slot {}",
                facts.vars.booted_file().unwrap_or("?"),
                trial.uki.slot,
                facts.slot.map_or('?', Slot::letter)
            ),
        );
    }
    let enroll = has_enroll_config(sys);
    let checks = health_checks(settings, enroll);
    let timeout = health_timeout(settings);
    let boot_id = sys
        .read_file(BOOT_ID)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string());
    let now = sys.now();
    state
        .trial_of(&version, trial.uki.slot, now)
        .attempt(&boot_id);
    save(sys, state);
    let names: Vec<&str> = checks.iter().map(|c| c.name()).collect();
    say(
        sys,
        &format!(
            "{version} is on trial (attempt {} of {}): waiting up to {} s for it to be \
             healthy: {}",
            trial.attempt(),
            trial.attempts(),
            timeout.as_secs(),
            names.join(", ")
        ),
    );
    let verdict = wait_healthy(sys, probe, &checks, timeout);
    let attempt = state
        .trial_of(&version, trial.uki.slot, now)
        .attempt(&boot_id);
    match verdict {
        Verdict::Healthy(after) => {
            attempt.result = state::result::HEALTHY.to_string();
            state.trial = None;
            save(sys, state);
            say(
                sys,
                &format!(
                    "{version} is healthy after {} s; marking it good",
                    after.as_secs()
                ),
            );
            bless_without_systemd(sys, facts, &trial);
            0
        }
        Verdict::Failed(why) => {
            attempt.result = state::result::FAILED.to_string();
            attempt.reason = Some(why.clone());
            let now = sys.now();
            state.record_health_failure(&version, why.clone(), now);
            save(sys, state);
            let then = if trial.last() {
                "; that was its last try: systemd-boot falls back to the previous version"
            } else {
                ""
            };
            say(
                sys,
                &format!(
                    "{version} FAILED its health check: {why}; rebooting (attempt {} of {}{then})",
                    trial.attempt(),
                    trial.attempts()
                ),
            );
            1
        }
    }
}

/// `update boot` against `sys` and `probe`; returns the exit code.
pub fn boot(sys: &mut dyn UpdateSys, probe: &mut dyn Probe) -> u8 {
    let settings = image_settings(sys).unwrap_or_else(|e| {
        say(
            sys,
            &format!("ERROR: {e}; using the default update settings"),
        );
        ImageSettings::default()
    });
    let facts = gather(sys, &settings);
    for e in &facts.errors {
        say(sys, &format!("ERROR: {e}"));
    }
    let mut state = load_state(sys);
    if notice_rollbacks(sys, &facts, &mut state) > 0 {
        save(sys, &state);
    }
    match facts.vars.trial() {
        Some(trial) => gate(sys, probe, &facts, trial, &settings, &mut state),
        None => {
            let version = facts.version.as_deref().unwrap_or("unknown version");
            let slot = facts
                .slot
                .map_or("an unknown slot".to_string(), |s| format!("slot {s}"));
            say(sys, &format!("running {version} from {slot}; not on trial"));
            0
        }
    }
}

/// `kiln-agent update boot`.
pub fn main() -> ExitCode {
    let mut sys = RealSys::default();
    let mut probe = RealProbe {
        sys: RealSys::default(),
    };
    ExitCode::from(boot(&mut sys, &mut probe))
}
