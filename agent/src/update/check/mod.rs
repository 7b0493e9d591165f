//! `kiln-agent update check [--now] [--channel URL]`: follow an update channel.
//!
//! kiln-update-check.timer runs it about once an hour (with jitter); it does its work
//! only when the last check is older than the node config's `[update] check_every`
//! (or `--now`), so nodes spread their requests over the interval. Each run:
//!
//! 1. reads the node config (`/run/kiln/config.toml`, kiln-config's merge): without
//!    `[update] channel` (and no `--channel`) there is nothing to do;
//! 2. downloads the channel's signed document (at most 64 KiB) and opens it with the
//!    image's trusted update keys, the same keys `update apply` checks bundles with:
//!    signature first, then the fields and the expiry;
//! 3. refuses a document for another image or arch; does nothing when its version is
//!    not newer than the running one, is one this node rolled back from (never applied
//!    again by itself), or is already applied and waits for a reboot;
//! 4. otherwise, inside the maintenance window (or without one, or with `--now`),
//!    applies the bundle in-process (as `update apply URL` would, and with its checks)
//!    and reboots when `auto_reboot` is on; outside the window it says when the window
//!    opens and makes that the next check's time.
//!
//! A check that read a document is recorded in the update state (`last_check`); one
//! that failed (unreachable, expired, bad signature) is not, so the next tick of the
//! timer tries again and says the problem again.

pub mod window;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{self, Read};
use std::process::ExitCode;

use kiln_contract::agent_config::{SettingsFile, UpdateTable};
use kiln_contract::channel::{self, utc, ChannelError, MAX_TEXT};
use kiln_contract::version::ImageVersion;

use super::apply::{self, ApplyError, Options as ApplyOptions, Paths};
use super::fetch::{self, FetchOptions};
use super::slot;
use super::state::{self, LastCheck, State};
use crate::config::schema::{self, UpdateConfig};
use crate::config::CONFIG_OUT;
use crate::flags::Flags;
use crate::sys::{Clock, Console, Files};
use window::Window;

/// Printed before every line.
const PREFIX: &str = "kiln-update";

/// The command's help.
pub const USAGE: &str = "\
kiln-agent update check [--now] [--channel URL]
  Follow the update channel of the node config's [update] table: download its signed
  document, and when it names a newer version of this image, apply it (as `update
  apply` does) inside the maintenance window and reboot into it (auto_reboot).
  kiln-update-check.timer runs this about once an hour; it checks only when the last
  check is older than [update] check_every (default 6h). Versions this node rolled
  back from are never applied by it.
  --now            check now, and apply at once, whatever check_every and the window say
  --channel URL    use this channel document (an http(s) URL or a file) instead of
                   [update] channel
  Exit 0 when up to date, waiting for the window, applied, or no channel is set; 1
  when the document is refused or the apply failed; 2 on bad arguments.
";

/// The command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckOptions {
    /// Ignore `check_every` and the window.
    pub now: bool,
    /// Use this document instead of the config's channel.
    pub channel: Option<String>,
}

/// What a check does to the machine beyond files, the clock and the console.
pub trait CheckSys: Files + Clock + Console {
    /// The channel document at `source` (an http(s) URL or a file), at most
    /// [`MAX_TEXT`] bytes; the error names the source and what to do.
    fn fetch_document(&mut self, source: &str) -> Result<Vec<u8>, String>;
    /// Applies a bundle as `update apply` does, printing its lines (and reboots when
    /// `opts.reboot`); the exit status.
    fn apply(&mut self, paths: &Paths, opts: &ApplyOptions) -> u8;
}

/// Why a check failed. Each message is one line: what is wrong and what to do.
#[derive(Debug)]
pub enum CheckError {
    /// The node config or agent.toml cannot be read.
    Settings(String),
    /// The image's update keys cannot be loaded.
    Keys(ApplyError),
    /// The document could not be downloaded.
    Fetch(String),
    /// The document is refused.
    Document {
        /// Where it came from.
        source: String,
        /// Why.
        err: ChannelError,
    },
    /// The document is for another image or arch.
    Mismatch {
        /// `image` or `arch`.
        what: &'static str,
        /// The document's.
        doc: String,
        /// This node's.
        node: String,
        /// Where it came from.
        source: String,
    },
    /// The update state cannot be read or written.
    State(String),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Settings(m) | CheckError::Fetch(m) | CheckError::State(m) => f.write_str(m),
            CheckError::Keys(e) => write!(f, "{e}"),
            CheckError::Document { source, err } => write!(f, "{source}: {err}"),
            CheckError::Mismatch {
                what,
                doc,
                node,
                source,
            } => write!(
                f,
                "{source} is the channel of {what} {doc:?}, this node's {what} is {node:?}: \
                 point [update] channel at the {node} document"
            ),
        }
    }
}

/// How a check ended (other than with an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No channel configured.
    NotConfigured,
    /// The last check is recent.
    NotDue {
        /// When the last check was.
        last: u64,
        /// When the next is due.
        next: u64,
    },
    /// The channel offers nothing newer.
    UpToDate {
        /// The document's version.
        offered: String,
        /// The running one.
        running: String,
    },
    /// The channel offers a version this node rolled back from.
    Rejected {
        /// The version.
        version: String,
        /// Why it was rejected.
        reason: String,
        /// The bundle's URL.
        url: String,
    },
    /// The offered version is applied already and boots at the next reboot.
    Pending {
        /// The version.
        version: String,
    },
    /// A newer version waits for the maintenance window.
    Waiting {
        /// The version.
        version: String,
        /// The running one.
        running: String,
        /// The window.
        window: Window,
        /// When it opens.
        opens: u64,
    },
    /// The bundle was applied (or the apply failed: `code` is not 0).
    Applied {
        /// The version.
        version: String,
        /// The apply's exit status.
        code: u8,
        /// Whether the apply was to reboot.
        reboot: bool,
    },
}

impl Outcome {
    /// The line to print (without the prefix), and whether it is a console line
    /// (`say`) rather than a diagnostic one (`note`, the journal only in the unit).
    pub fn line(&self) -> Option<(String, bool)> {
        Some(match self {
            Outcome::NotConfigured => (
                "no update channel configured (node config [update] channel); nothing to check"
                    .to_string(),
                false,
            ),
            Outcome::NotDue { last, next } => (
                format!(
                    "last checked at {}; the next check is due at {} (--now checks at once)",
                    utc(*last),
                    utc(*next)
                ),
                false,
            ),
            Outcome::UpToDate { offered, running } if offered == running => (
                format!("up to date: the channel offers {offered}, which this node runs"),
                true,
            ),
            Outcome::UpToDate { offered, running } => (
                format!(
                    "up to date: the channel offers {offered}, older than the running \
                     {running}; not applied (`kiln-agent update apply --allow-downgrade` \
                     does that)"
                ),
                true,
            ),
            Outcome::Rejected {
                version,
                reason,
                url,
            } => (
                format!(
                    "{version} rolled back on this node ({reason}); not applied \
                     automatically (`kiln-agent update apply --force {url}` tries it again)"
                ),
                true,
            ),
            Outcome::Pending { version } => (
                format!("{version} is applied already and boots at the next reboot"),
                true,
            ),
            Outcome::Waiting {
                version,
                running,
                window,
                opens,
            } => (
                format!(
                    "{version} is available (running {running}); the maintenance window \
                     {window} UTC opens at {}: applying it then",
                    utc(*opens)
                ),
                true,
            ),
            Outcome::Applied {
                version,
                code: 0,
                reboot: false,
            } => (
                format!("auto_reboot is off: reboot to start {version}"),
                true,
            ),
            Outcome::Applied { .. } => return None,
        })
    }
}

/// The node config's `[update]`; a missing config file is a node without one.
fn node_update<S: CheckSys + ?Sized>(sys: &mut S, path: &str) -> Result<UpdateConfig, CheckError> {
    match sys.read_file(path) {
        Ok(bytes) => schema::parse_bytes(&bytes)
            .map(|c| c.update)
            .map_err(|errs| {
                let errs: Vec<String> = errs.iter().map(ToString::to_string).collect();
                CheckError::Settings(format!(
                    "{path}: {}; fix the config channel that set it and run kiln-agent config",
                    errs.join("; ")
                ))
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(UpdateConfig::default()),
        Err(e) => Err(CheckError::Settings(format!("reading {path}: {e}"))),
    }
}

/// agent.toml's `[update]`: the image's name and version.
fn image_update<S: CheckSys + ?Sized>(sys: &mut S, path: &str) -> Result<UpdateTable, CheckError> {
    let none = || {
        CheckError::Settings(format!(
            "{path} has no [update] table (the image's name and version): the image was built \
             without A/B updates; reflash it with an image whose profile has [update]"
        ))
    };
    let text = match sys.read_file(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(none()),
        Err(e) => return Err(CheckError::Settings(format!("reading {path}: {e}"))),
    };
    let file: SettingsFile = toml::from_str(&String::from_utf8_lossy(&text))
        .map_err(|e| CheckError::Settings(format!("{path}: {}", e.message().trim())))?;
    file.update.ok_or_else(none)
}

fn state_err(e: state::StateError) -> CheckError {
    CheckError::State(format!("the update state: {e}"))
}

/// Runs one check: see the module documentation for the order.
pub fn check<S: CheckSys + ?Sized>(
    sys: &mut S,
    paths: &Paths,
    node_config: &str,
    opts: &CheckOptions,
) -> Result<Outcome, CheckError> {
    let config = node_update(sys, node_config)?;
    let Some(source) = opts.channel.clone().or_else(|| config.channel.clone()) else {
        return Ok(Outcome::NotConfigured);
    };
    let now = sys.now();
    let mut state = State::load(sys, &paths.state_dir).map_err(state_err)?;
    if let Some(last) = state.last_check.as_ref().filter(|_| !opts.now) {
        // A clock set back (a last check "in the future") must not stop checks.
        if now < last.next && last.when <= now {
            return Ok(Outcome::NotDue {
                last: last.when,
                next: last.next,
            });
        }
    }

    let image = image_update(sys, &paths.agent_toml)?;
    let running = ImageVersion::parse(&image.version).map_err(|e| {
        CheckError::Settings(format!("{}: [update] version: {e}", paths.agent_toml))
    })?;
    let keys = apply::load_keys(sys, &paths.keys_dir).map_err(CheckError::Keys)?;
    let bytes = sys.fetch_document(&source).map_err(CheckError::Fetch)?;
    let text = String::from_utf8_lossy(&bytes);
    let opened = channel::open(&text, &keys, now).map_err(|err| CheckError::Document {
        source: source.clone(),
        err,
    })?;
    let doc = &opened.doc;
    let arch = slot::running_arch();
    for (what, theirs, ours) in [
        ("image", &doc.image, image.image.as_str()),
        ("arch", &doc.arch, arch),
    ] {
        if theirs != ours {
            return Err(CheckError::Mismatch {
                what,
                doc: theirs.clone(),
                node: ours.to_string(),
                source,
            });
        }
    }
    let url = channel::resolve_url(&source, &doc.url);
    let offered = opened.version;
    let outcome = if offered <= running {
        Outcome::UpToDate {
            offered: offered.to_string(),
            running: running.to_string(),
        }
    } else if let Some(r) = state::is_rejected(&state, &offered) {
        Outcome::Rejected {
            version: r.version.clone(),
            reason: r.reason.clone(),
            url: url.clone(),
        }
    } else if state
        .last_apply
        .as_ref()
        .is_some_and(|a| a.version == offered.as_str() && a.from == running.as_str())
    {
        Outcome::Pending {
            version: offered.to_string(),
        }
    } else {
        match config.window.filter(|w| !opts.now && !w.contains(now)) {
            Some(window) => Outcome::Waiting {
                version: offered.to_string(),
                running: running.to_string(),
                window,
                opens: window.next_opening(now),
            },
            None => {
                // Recorded before the apply, which can take minutes and reboots.
                let due = now + config.check_every_secs();
                record(&mut state, now, format!("applying {offered}"), due);
                state.save(sys, &paths.state_dir).map_err(state_err)?;
                sys.say(&format!(
                    "{PREFIX}: applying {offered} (running {running}) from {url}, offered by \
                     {source} (signed by {}, expires {})",
                    opened.key_id,
                    utc(doc.expires)
                ));
                let reboot = config.reboots();
                let code = sys.apply(
                    paths,
                    &ApplyOptions {
                        source: url,
                        reboot,
                        allow_downgrade: false,
                        force: false,
                        tries: None,
                    },
                );
                if code != 0 {
                    // Try again at the next tick rather than a whole interval later:
                    // the window may close before then.
                    let mut state = State::load(sys, &paths.state_dir).map_err(state_err)?;
                    record(&mut state, now, format!("applying {offered} failed"), now);
                    state.save(sys, &paths.state_dir).map_err(state_err)?;
                }
                return Ok(Outcome::Applied {
                    version: offered.to_string(),
                    code,
                    reboot,
                });
            }
        }
    };
    let next = match &outcome {
        Outcome::Waiting { opens, .. } => *opens,
        _ => now + config.check_every_secs(),
    };
    let result = outcome.line().map(|(l, _)| l).unwrap_or_default();
    record(&mut state, now, result, next);
    state.save(sys, &paths.state_dir).map_err(state_err)?;
    Ok(outcome)
}

fn record(state: &mut State, when: u64, result: String, next: u64) {
    state.last_check = Some(LastCheck { when, result, next });
}

/// Checks and reports: one line per outcome; 0, or 1 after an `ERROR:` line (or the
/// apply's exit status).
pub fn run<S: CheckSys + ?Sized>(
    sys: &mut S,
    paths: &Paths,
    node_config: &str,
    opts: &CheckOptions,
) -> u8 {
    match check(sys, paths, node_config, opts) {
        Ok(Outcome::Applied { code, .. }) if code != 0 => code,
        Ok(outcome) => {
            if let Some((line, console)) = outcome.line() {
                let line = format!("{PREFIX}: {line}");
                if console {
                    sys.say(&line);
                } else {
                    sys.note(&line);
                }
            }
            0
        }
        Err(e) => {
            sys.say(&format!("{PREFIX}: ERROR: {e}"));
            1
        }
    }
}

/// Reads the arguments after `check`.
pub fn parse_args(args: &[String]) -> Result<CheckOptions, String> {
    let mut opts = CheckOptions::default();
    let mut flags = Flags::new(args);
    while let Some((flag, inline)) = flags.next_flag() {
        match flag {
            "--now" => opts.now = true,
            "--channel" => opts.channel = Some(flags.value(flag, inline)?),
            f => return Err(format!("unknown argument {f:?}")),
        }
    }
    Ok(opts)
}

/// The machine: files, the clock and the console of [`apply::real::RealApply`], its
/// downloader for the document, and its apply.
struct RealCheck {
    apply: apply::real::RealApply,
}

crate::sys::forward!(RealCheck => apply: Files, Clock, Console);

impl CheckSys for RealCheck {
    fn fetch_document(&mut self, source: &str) -> Result<Vec<u8>, String> {
        let opts = FetchOptions {
            attempts: 3,
            ..FetchOptions::default()
        };
        let mut stream = fetch::open(source, &opts).map_err(|e| e.to_string())?;
        let too_large = |len: u64| {
            format!(
                "{source} is {len} bytes, more than the {MAX_TEXT} a channel document may \
                 have: point [update] channel at the .channel.json that `kiln channel sign` \
                 writes, not at the bundle"
            )
        };
        if stream.total_len() > MAX_TEXT as u64 {
            return Err(too_large(stream.total_len()));
        }
        let mut bytes = Vec::new();
        stream
            .as_mut()
            .take(MAX_TEXT as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the channel document {source}: {e}"))?;
        if bytes.len() > MAX_TEXT {
            return Err(too_large(bytes.len() as u64));
        }
        Ok(bytes)
    }

    fn apply(&mut self, paths: &Paths, opts: &ApplyOptions) -> u8 {
        apply::run(&mut self.apply, paths, opts)
    }
}

/// `update check`.
pub fn main(args: &[String]) -> ExitCode {
    let opts = match super::parse_or_usage("check", USAGE, args, parse_args) {
        Ok(o) => o,
        Err(code) => return code,
    };
    let mut sys = RealCheck {
        apply: apply::real::RealApply::new(),
    };
    ExitCode::from(run(&mut sys, &Paths::default(), CONFIG_OUT, &opts))
}
