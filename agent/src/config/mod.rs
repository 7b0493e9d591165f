//! `kiln-agent config`: the node's configuration, gathered from every channel, merged by
//! precedence, applied (the hostname) and written to `/run/kiln/config.toml`.
//!
//! Channels, highest precedence first unless `/usr/lib/kiln/agent.toml` says otherwise
//! ([`settings`]): the kernel command line ([`cmdline`]), `kiln.toml` on the boot disk's
//! ESP ([`esp`]), a NoCloud `cidata` volume ([`cidata`]), QEMU's fw_cfg ([`fw_cfg`]) and
//! the cloud's user-data ([`cloud`]). All speak the one schema in [`schema`]; per key, the
//! highest channel that sets it wins.
//!
//! A channel that fails (unreadable, malformed) prints an ERROR line and is ignored as a
//! whole, and the others go on: the node must come up and stay debuggable whatever a user
//! puts in a config. Console lines:
//!
//! ```text
//! kiln-config: esp: /dev/vda1:/kiln.toml: hostname=node-1
//! kiln-config: ERROR: cidata: /dev/vdb:kiln.toml: hostname: expected a string, got integer 5
//! kiln-config: hostname node-1 (from esp)
//! ```

pub mod blockdev;
pub mod cidata;
pub mod cloud;
pub mod cmdline;
pub mod esp;
pub mod fslabel;
pub mod fw_cfg;
pub mod media;
pub mod real;
pub mod schema;
pub mod settings;
pub mod ssh_key;

use std::collections::BTreeMap;
use std::io;
use std::process::ExitCode;
use std::time::Duration;

use kiln_contract::names;

use crate::sys::{Clock, Console, Exec, Files};
use blockdev::BlockSys;
use schema::{Hostname, NodeConfig, SchemaError};
use settings::{Channel, Settings, SETTINGS_PATH};

/// Where the merged configuration is written.
pub const CONFIG_OUT: &str = "/run/kiln/config.toml";
/// The machine-id the fallback hostname is derived from.
pub const MACHINE_ID: &str = "/etc/machine-id";
/// The kernel's hostname.
pub const KERNEL_HOSTNAME: &str = "/proc/sys/kernel/hostname";
/// How long the cloud channel may spend waiting for the metadata service.
pub const CLOUD_BUDGET: Duration = Duration::from_secs(30);

/// A channel that could not give its config: who, where, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelFailure {
    /// Channel name as printed (`cloud`, `ec2`, ...).
    pub channel: &'static str,
    /// Device, file or URL.
    pub place: String,
    /// What went wrong.
    pub message: String,
}

/// Everything `config` does to the system, so the logic runs against a fake in tests:
/// files (callers read config documents with [`Files::read_prefix`], at most one byte
/// over [`schema::MAX_CONFIG_BYTES`]), the clock, the console, programs (`modprobe`),
/// block devices ([`BlockSys`]), and the below.
pub trait ConfigSys: Files + Clock + Console + Exec + BlockSys {
    /// Mounts `dev` read-only, nosuid, nodev, noexec at `target` (created if missing).
    fn mount_ro(&mut self, dev: &str, target: &str, fstype: &str) -> Result<(), String>;
    /// Unmounts `target`.
    fn umount(&mut self, target: &str) -> Result<(), String>;
    /// The cloud's user-data (None off-cloud).
    fn cloud(&mut self) -> Result<Option<cloud::CloudUserData>, ChannelFailure>;
    /// Sets the kernel's hostname.
    fn set_hostname(&mut self, name: &str) -> io::Result<()>;
}

/// How many bytes of a config document are read: one past the limit tells "too large"
/// without reading a huge file into memory.
pub const READ_LIMIT: usize = schema::MAX_CONFIG_BYTES + 1;

/// Writes the merged config: its folder made if missing (an error names it), the file
/// replaced atomically and root-only (it holds the enrollment token).
fn write_config(sys: &mut dyn ConfigSys, path: &str, data: &[u8]) -> io::Result<()> {
    if let Some((dir, _)) = path.rsplit_once('/').filter(|(d, _)| !d.is_empty()) {
        sys.mkdir(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{dir}: {e}")))?;
    }
    sys.write_atomic(path, data, 0o600)
}

/// Where a piece of config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Channel name as printed: `cmdline`, `esp`, `cidata`, `fw_cfg`, or the cloud's
    /// provider `ec2`, `gce`, `azure`, `oracle`.
    pub channel: &'static str,
    /// Device, file or URL (`/dev/vda1:/kiln.toml`).
    pub place: String,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.place.is_empty() {
            f.write_str(self.channel)
        } else {
            write!(f, "{}: {}", self.channel, self.place)
        }
    }
}

/// What one channel gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Where.
    pub source: Source,
    /// Its config, or every problem found with it.
    pub result: Result<NodeConfig, Vec<String>>,
}

impl Finding {
    /// A failure with one message.
    pub fn error(channel: &'static str, place: impl Into<String>, message: String) -> Self {
        Finding {
            source: Source {
                channel,
                place: place.into(),
            },
            result: Err(vec![message]),
        }
    }

    /// Parses a config document's bytes.
    pub fn parse(channel: &'static str, place: impl Into<String>, bytes: &[u8]) -> Self {
        Self::from_result(channel, place, schema::parse_bytes(bytes))
    }

    /// Wraps a schema check's outcome.
    pub fn from_result(
        channel: &'static str,
        place: impl Into<String>,
        result: Result<NodeConfig, Vec<SchemaError>>,
    ) -> Self {
        Finding {
            source: Source {
                channel,
                place: place.into(),
            },
            result: result.map_err(|errs| errs.iter().map(ToString::to_string).collect()),
        }
    }

    /// The console lines for this finding.
    pub fn lines(&self) -> Vec<String> {
        match &self.result {
            Ok(c) => vec![format!("kiln-config: {}: {}", self.source, c.summary())],
            Err(errs) => errs
                .iter()
                .map(|e| format!("kiln-config: ERROR: {}: {e}", self.source))
                .collect(),
        }
    }
}

/// The merged configuration and where each key came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// The winning value of every key.
    pub config: NodeConfig,
    /// Key → the source that set it.
    pub sources: BTreeMap<&'static str, Source>,
}

/// Merges findings given in precedence order (highest first): per key, the first
/// channel that sets it wins; failed channels count for nothing.
pub fn merge(findings: &[Finding]) -> Merged {
    let mut m = Merged::default();
    for f in findings {
        let Ok(c) = &f.result else { continue };
        if m.config.schema.is_none() && c.schema.is_some() {
            m.config.schema = c.schema;
            m.sources.insert("schema", f.source.clone());
        }
        if m.config.hostname.is_none() && c.hostname.is_some() {
            m.config.hostname = c.hostname.clone();
            m.sources.insert("hostname", f.source.clone());
        }
        // The list is one value: the highest channel's list replaces the others.
        take(
            &mut m.sources,
            "ssh_authorized_keys",
            &mut m.config.ssh_authorized_keys,
            &c.ssh_authorized_keys,
            &f.source,
        );
        merge_enroll(&mut m, &c.enroll, &f.source);
        merge_update(&mut m, &c.update, &f.source);
    }
    m
}

fn merge_update(m: &mut Merged, u: &schema::UpdateConfig, source: &Source) {
    let have = &mut m.config.update;
    let sources = &mut m.sources;
    take(
        sources,
        "update.channel",
        &mut have.channel,
        &u.channel,
        source,
    );
    take(
        sources,
        "update.check_every",
        &mut have.check_every,
        &u.check_every,
        source,
    );
    take(
        sources,
        "update.window",
        &mut have.window,
        &u.window,
        source,
    );
    take(
        sources,
        "update.auto_reboot",
        &mut have.auto_reboot,
        &u.auto_reboot,
        source,
    );
}

/// Sets `have` to `offer` when nothing set it yet, and records where it came from.
fn take<T: Clone>(
    sources: &mut BTreeMap<&'static str, Source>,
    key: &'static str,
    have: &mut Option<T>,
    offer: &Option<T>,
    source: &Source,
) {
    if have.is_none() && offer.is_some() {
        *have = offer.clone();
        sources.insert(key, source.clone());
    }
}

fn merge_enroll(m: &mut Merged, e: &schema::EnrollConfig, source: &Source) {
    let have = &mut m.config.enroll;
    let sources = &mut m.sources;
    take(
        sources,
        "enroll.server",
        &mut have.server,
        &e.server,
        source,
    );
    take(sources, "enroll.token", &mut have.token, &e.token, source);
    take(
        sources,
        "enroll.endpoint",
        &mut have.endpoint,
        &e.endpoint,
        source,
    );
    take(
        sources,
        "enroll.listen_port",
        &mut have.listen_port,
        &e.listen_port,
        source,
    );
    take(sources, "enroll.mtu", &mut have.mtu, &e.mtu, source);
}

/// Whether [`render`] writes the token's secret (the root-only file) or hides it (text
/// for the console).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// The whole token.
    Reveal,
    /// `KLN1…::<id>.<secret>`.
    Hide,
}

/// The text of `/run/kiln/config.toml`: the merged keys, each with a comment naming its
/// source, so the file stays valid input for the schema.
pub fn render(merged: &Merged, hostname: &str, hostname_from: &Source, secrets: Secrets) -> String {
    let mut out = String::from(
        "# The node's configuration, merged by `kiln-agent config` from its channels.\n\
         # Each key says where it came from.\n",
    );
    let schema_value = merged.config.schema.unwrap_or(schema::SCHEMA_VERSION);
    match merged.sources.get("schema") {
        Some(s) => out.push_str(&format!("schema = {schema_value} # from {s}\n")),
        None => out.push_str(&format!("schema = {schema_value}\n")),
    }
    out.push_str(&format!(
        "hostname = {} # from {hostname_from}\n",
        toml::Value::String(hostname.to_string())
    ));
    if let Some(keys) = &merged.config.ssh_authorized_keys {
        let from = merged
            .sources
            .get("ssh_authorized_keys")
            .map(|s| format!(" # from {s}"))
            .unwrap_or_default();
        out.push_str(&format!("ssh_authorized_keys = [{from}\n"));
        for k in keys {
            out.push_str(&format!("  {},\n", toml::Value::String(k.line())));
        }
        out.push_str("]\n");
    }
    let e = &merged.config.enroll;
    if !e.is_empty() {
        out.push_str("\n[enroll]\n");
        let quoted = |s: String| toml::Value::String(s).to_string();
        let mut line = |key: &'static str, value: String| {
            out.push_str(&format!("{key} = {value}"));
            if let Some(s) = merged.sources.get(format!("enroll.{key}").as_str()) {
                out.push_str(&format!(" # from {s}"));
            }
            out.push('\n');
        };
        if let Some(s) = &e.server {
            line("server", quoted(s.to_string()));
        }
        if let Some(t) = &e.token {
            let text = match secrets {
                Secrets::Reveal => t.reveal(),
                Secrets::Hide => schema::redacted_token(t),
            };
            line("token", quoted(text));
        }
        if let Some(p) = &e.endpoint {
            line("endpoint", quoted(p.clone()));
        }
        if let Some(p) = e.listen_port {
            line("listen_port", p.to_string());
        }
        if let Some(m) = e.mtu {
            line("mtu", m.to_string());
        }
    }
    let u = &merged.config.update;
    if !u.is_empty() {
        out.push_str("\n[update]\n");
        let quoted = |s: String| toml::Value::String(s).to_string();
        let mut line = |key: &'static str, value: String| {
            out.push_str(&format!("{key} = {value}"));
            if let Some(s) = merged.sources.get(format!("update.{key}").as_str()) {
                out.push_str(&format!(" # from {s}"));
            }
            out.push('\n');
        };
        if let Some(c) = &u.channel {
            line("channel", quoted(c.clone()));
        }
        if let Some(s) = u.check_every {
            line(
                "check_every",
                quoted(kiln_contract::channel::format_duration(s)),
            );
        }
        if let Some(w) = &u.window {
            line("window", quoted(w.to_string()));
        }
        if let Some(r) = u.auto_reboot {
            line("auto_reboot", r.to_string());
        }
    }
    out
}

/// Reads the agent settings; problems are printed and the defaults used, so a broken
/// settings file does not cost the node its config.
pub fn load_settings(sys: &mut dyn ConfigSys) -> Settings {
    match sys.read_prefix(SETTINGS_PATH, READ_LIMIT) {
        Ok(bytes) => {
            let parsed = std::str::from_utf8(&bytes)
                .map_err(|e| format!("not UTF-8 (at byte {})", e.valid_up_to()))
                .and_then(settings::parse_settings);
            match parsed {
                Ok(s) => s,
                Err(e) => {
                    sys.say(&format!(
                        "kiln-config: ERROR: settings: {SETTINGS_PATH}: {e}; reading every \
                         channel"
                    ));
                    Settings::default()
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Settings::default(),
        Err(e) => {
            sys.say(&format!(
                "kiln-config: ERROR: settings: {SETTINGS_PATH}: {e}; reading every channel"
            ));
            Settings::default()
        }
    }
}

fn gather_cloud(sys: &mut dyn ConfigSys) -> Option<Finding> {
    match sys.cloud() {
        Ok(None) => None,
        Ok(Some(cloud::CloudUserData {
            text: None,
            provider,
            source,
        })) => {
            sys.say(&format!("kiln-config: {provider}: {source}: no user-data"));
            None
        }
        Ok(Some(cloud::CloudUserData {
            text: Some(text),
            provider,
            source,
        })) => Some(Finding::parse(provider, source, text.as_bytes())),
        Err(f) => Some(Finding {
            source: Source {
                channel: f.channel,
                place: f.place,
            },
            result: Err(vec![f.message]),
        }),
    }
}

/// Reads every channel of `settings` in precedence order.
pub fn gather(sys: &mut dyn ConfigSys, settings: &Settings) -> Vec<Finding> {
    // The boot disk is needed by two channels; look it up once.
    let mut boot: Option<Result<blockdev::BootDisk, String>> = None;
    let mut findings = Vec::new();
    for &channel in &settings.channels {
        match channel {
            Channel::Cmdline => findings.extend(cmdline::gather(sys)),
            Channel::Esp => {
                let b = boot.get_or_insert_with(|| blockdev::boot_disk(sys)).clone();
                findings.extend(esp::gather(sys, b.as_ref()));
            }
            Channel::Cidata => {
                let b = boot.get_or_insert_with(|| blockdev::boot_disk(sys)).clone();
                findings.extend(cidata::gather(sys, b.as_ref().ok()));
            }
            Channel::FwCfg => findings.extend(fw_cfg::gather(sys)),
            Channel::Cloud => findings.extend(gather_cloud(sys)),
        }
    }
    findings
}

fn machine_id_hostname(sys: &mut dyn ConfigSys) -> Result<String, String> {
    let bytes = sys
        .read_file(MACHINE_ID)
        .map_err(|e| format!("{MACHINE_ID}: {e}"))?;
    let id = String::from_utf8_lossy(&bytes).trim().to_string();
    if !crate::init::machine_id::valid_machine_id(&id) {
        return Err(format!(
            "{MACHINE_ID} does not hold a machine-id (32 lowercase hex digits)"
        ));
    }
    Ok(names::hostname_from_machine_id(&id))
}

/// Runs `config`: gathers, prints, merges and (unless `dry_run`) applies. False when the
/// node could not get a hostname or its config file: the unit then shows as failed,
/// while bad input alone never fails it.
pub fn run(sys: &mut dyn ConfigSys, dry_run: bool) -> bool {
    let settings = load_settings(sys);
    let findings = gather(sys, &settings);
    for f in &findings {
        for line in f.lines() {
            sys.say(&line);
        }
    }
    let merged = merge(&findings);
    let (hostname, from) = match &merged.config.hostname {
        Some(h) => (
            h.as_str().to_string(),
            merged.sources.get("hostname").cloned().unwrap_or(Source {
                channel: "config",
                place: String::new(),
            }),
        ),
        None => match machine_id_hostname(sys) {
            Ok(h) => (
                h,
                Source {
                    channel: "machine-id",
                    place: MACHINE_ID.to_string(),
                },
            ),
            Err(e) => {
                sys.say(&format!(
                    "kiln-config: ERROR: hostname: no channel set one and none can be \
                     derived: {e}"
                ));
                return false;
            }
        },
    };
    // The derived name is valid by construction; checking it anyway keeps the kernel
    // from ever getting something the schema would refuse.
    if let Err(why) = Hostname::parse(&hostname) {
        sys.say(&format!(
            "kiln-config: ERROR: hostname: {hostname:?}: {why}"
        ));
        return false;
    }
    if dry_run {
        let text = render(&merged, &hostname, &from, Secrets::Hide);
        sys.say(&format!(
            "kiln-config: hostname {hostname} (from {}) [dry run: not set]",
            from.channel
        ));
        sys.say(&format!("kiln-config: would write {CONFIG_OUT}:"));
        for line in text.lines() {
            sys.say(line);
        }
        return true;
    }
    let text = render(&merged, &hostname, &from, Secrets::Reveal);
    if let Err(e) = sys.set_hostname(names::kernel_hostname(&hostname)) {
        sys.say(&format!(
            "kiln-config: ERROR: hostname: {KERNEL_HOSTNAME}: cannot set {hostname:?}: {e}"
        ));
        return false;
    }
    sys.say(&format!(
        "kiln-config: hostname {hostname} (from {})",
        from.channel
    ));
    if let Err(e) = write_config(sys, CONFIG_OUT, text.as_bytes()) {
        sys.say(&format!("kiln-config: ERROR: writing {CONFIG_OUT}: {e}"));
        return false;
    }
    true
}

const CONFIG_USAGE: &str = "\
Usage: kiln-agent config [--dry-run]
  --dry-run   print what every channel gives and the merged result; set nothing and
              write nothing (the ESP and cidata volumes are still mounted read-only for
              a moment to read them)
";

/// `kiln-agent config`.
pub fn main(args: &[String]) -> ExitCode {
    let mut dry_run = false;
    for a in args {
        match a.as_str() {
            "--dry-run" => dry_run = true,
            "--help" | "-h" => {
                print!("{CONFIG_USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprint!("kiln-agent config: unknown argument {other:?}\n\n{CONFIG_USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let mut sys = crate::sys::real::RealSys::default();
    if run(&mut sys, dry_run) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod ssh_tests;
#[cfg(test)]
mod tests;
