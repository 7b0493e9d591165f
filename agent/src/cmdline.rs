//! The kernel command line: splitting it like the kernel does and reading the `kiln.*`
//! options init needs. Everything else on the line belongs to someone else and is ignored.

use std::time::Duration;

use crate::gpt::{native_root_type, Guid};

/// What init does when it cannot continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureAction {
    /// Stay up forever (PID 1 must not exit), leaving the message on the console.
    Halt,
    /// Power the machine off.
    Poweroff,
    /// Reboot.
    Reboot,
}

/// The `kiln.*` options, with their defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// `kiln.debug`: log every step in detail.
    pub debug: bool,
    /// `kiln.root_type=<guid>`: the GPT type GUID of the root partition.
    pub root_type: Guid,
    /// `kiln.rootwait=<seconds>`: how long to wait for the root partition.
    pub root_wait: Duration,
    /// `kiln.on_failure=halt|poweroff|reboot`.
    pub on_failure: FailureAction,
    /// Problems with options that were ignored in favour of the default, to log.
    pub warnings: Vec<String>,
    /// Options whose value cannot be used and that have no safe default: init stops.
    pub errors: Vec<String>,
}

/// Default wait for the root partition.
pub const DEFAULT_ROOT_WAIT: Duration = Duration::from_secs(30);

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            debug: false,
            root_type: native_root_type(),
            root_wait: DEFAULT_ROOT_WAIT,
            on_failure: FailureAction::Halt,
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }
}

/// Splits a command line into `(key, value)` parameters the way the kernel does:
/// whitespace separates, double quotes group (and are removed), and `--` ends the kernel's
/// part (what follows is for init's argv).
pub fn split(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    let mut chars = cmdline.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut word = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() && !quoted {
                break;
            }
            chars.next();
            if c == '"' {
                quoted = !quoted;
            } else {
                word.push(c);
            }
        }
        if word == "--" {
            break;
        }
        match word.split_once('=') {
            Some((k, v)) => params.push((k.to_string(), Some(v.to_string()))),
            None => params.push((word, None)),
        }
    }
    params
}

fn parse_bool(v: Option<&str>) -> Option<bool> {
    match v {
        None => Some(true),
        Some("1" | "y" | "yes" | "true" | "on") => Some(true),
        Some("0" | "n" | "no" | "false" | "off") => Some(false),
        Some(_) => None,
    }
}

/// Reads the `kiln.*` options from a command line. The last occurrence of an option wins,
/// as with kernel parameters. An unusable `kiln.root_type` goes to `errors` (guessing
/// could mount the wrong root); other bad values fall back to the default with a warning.
pub fn parse(cmdline: &str) -> InitOptions {
    let mut opts = InitOptions::default();
    for (key, value) in split(cmdline) {
        let v = value.as_deref();
        match key.as_str() {
            "kiln.debug" => match parse_bool(v) {
                Some(b) => opts.debug = b,
                None => opts.warnings.push(format!(
                    "ignoring kiln.debug={}: use kiln.debug, kiln.debug=1 or kiln.debug=0",
                    v.unwrap_or_default()
                )),
            },
            "kiln.root_type" => match Guid::parse(v.unwrap_or_default()) {
                Ok(guid) => opts.root_type = guid,
                Err(e) => opts
                    .errors
                    .push(format!("kernel command line option kiln.root_type: {e}")),
            },
            "kiln.rootwait" => match v.map(str::parse::<u64>) {
                Some(Ok(secs)) => opts.root_wait = Duration::from_secs(secs),
                _ => opts.warnings.push(format!(
                    "ignoring kiln.rootwait={}: expected whole seconds; waiting {} s",
                    v.unwrap_or_default(),
                    opts.root_wait.as_secs()
                )),
            },
            "kiln.on_failure" => match v {
                Some("halt") => opts.on_failure = FailureAction::Halt,
                Some("poweroff") => opts.on_failure = FailureAction::Poweroff,
                Some("reboot") => opts.on_failure = FailureAction::Reboot,
                _ => opts.warnings.push(format!(
                    "ignoring kiln.on_failure={}: expected halt, poweroff or reboot",
                    v.unwrap_or_default()
                )),
            },
            other if other.starts_with("kiln.") && is_init_option_prefix(other) => {
                opts.warnings
                    .push(format!("unknown option {other} ignored"));
            }
            _ => {}
        }
    }
    opts
}

/// The agent reads other `kiln.*` options later in the boot; init only warns about
/// misspellings of its own.
fn is_init_option_prefix(key: &str) -> bool {
    ["kiln.root", "kiln.debug", "kiln.on_"]
        .iter()
        .any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::ROOT_ARM64;

    #[test]
    fn split_handles_quotes_and_double_dash() {
        let p = split(
            "BOOT_IMAGE=/vmlinuz  ro quiet\tfoo=\"a b\" \"bar=c d\" console=ttyS0,115200 -- kiln.debug",
        );
        let want: Vec<(String, Option<String>)> = vec![
            ("BOOT_IMAGE".into(), Some("/vmlinuz".into())),
            ("ro".into(), None),
            ("quiet".into(), None),
            ("foo".into(), Some("a b".into())),
            ("bar".into(), Some("c d".into())),
            ("console".into(), Some("ttyS0,115200".into())),
        ];
        assert_eq!(p, want);
        assert!(split("  \n").is_empty());
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let o = parse("console=ttyS0 root=/dev/sda1 rw init=/bin/sh\n");
        assert_eq!(o, InitOptions::default());
        assert_eq!(o.root_wait, Duration::from_secs(30));
        assert_eq!(o.on_failure, FailureAction::Halt);
        assert!(!o.debug);
    }

    #[test]
    fn reads_kiln_options_last_one_wins() {
        let o = parse(
            "kiln.debug kiln.rootwait=5 kiln.rootwait=7 kiln.on_failure=poweroff \
             kiln.root_type=B921B045-1DF0-41C3-AF44-4C6F280D3FAE kiln.on_failure=reboot",
        );
        assert!(o.debug);
        assert_eq!(o.root_wait, Duration::from_secs(7));
        assert_eq!(o.on_failure, FailureAction::Reboot);
        assert_eq!(o.root_type, ROOT_ARM64);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert!(!parse("kiln.debug=0").debug);
    }

    #[test]
    fn bad_values_warn_or_fail() {
        let o =
            parse("kiln.rootwait=soon kiln.on_failure=explode kiln.debug=maybe kiln.rootwiat=3");
        assert_eq!(o.root_wait, DEFAULT_ROOT_WAIT);
        assert_eq!(o.on_failure, FailureAction::Halt);
        assert_eq!(o.warnings.len(), 4, "{:?}", o.warnings);
        assert!(o.warnings[0].contains("kiln.rootwait=soon"));
        assert!(o.warnings[3].contains("kiln.rootwiat"));
        // Options for the later agent are not init's business.
        assert!(parse("kiln.token=abc").warnings.is_empty());
        let o = parse("kiln.root_type=root kiln.on_failure=poweroff");
        assert_eq!(o.errors.len(), 1);
        assert!(o.errors[0].contains("kiln.root_type") && o.errors[0].contains("\"root\""));
        // The failure action is still honoured when another option is unusable.
        assert_eq!(o.on_failure, FailureAction::Poweroff);
    }
}
