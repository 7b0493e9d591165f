//! The kernel command line: reading the `kiln.*` options init needs. The keys, the
//! kernel's word splitting and the values the builder writes are the contract's
//! ([`kiln_contract::cmdline`]); the options only users set live here. Everything else on
//! the line belongs to someone else and is ignored.

use std::time::Duration;

use kiln_contract::cmdline::{
    split, InitArgs, DEBUG, DEFAULT_VAR_MIN, ON_FAILURE, PREFIX, ROOT_HASH, ROOT_TYPE, ROOT_WAIT,
    VAR_FALLBACK, VERITY_CHECK,
};
use kiln_contract::gpt::Guid;

use crate::gpt::native_root_type;

// Init's modules name these through this module, as they did when they were defined here.
pub use kiln_contract::cmdline::{VarFallback, VerityCheck};

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
    /// `kiln.roothash=<64 hex digits>`: the dm-verity root hash of the root partition. When
    /// present the root is only ever mounted through dm-verity.
    pub root_hash: Option<[u8; 32]>,
    /// `kiln.verity_check=full|on-read`.
    pub verity_check: VerityCheck,
    /// `kiln.var_min=<size>` (bytes, or with a K/M/G/T suffix): the smallest `var`
    /// partition worth creating.
    pub var_min: u64,
    /// `kiln.var_fallback=halt|tmpfs`.
    pub var_fallback: VarFallback,
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
            root_hash: None,
            verity_check: VerityCheck::Full,
            var_min: DEFAULT_VAR_MIN,
            var_fallback: VarFallback::Halt,
            warnings: Vec::new(),
            errors: Vec::new(),
        }
    }
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
    // What the builder writes is read by the contract, so both spell it the same.
    let mut built = InitArgs::default();
    for (key, value) in split(cmdline) {
        let v = value.as_deref();
        match built.read(&key, v) {
            Ok(true) => continue,
            Ok(false) => {}
            // Booting an unverified root instead would defeat the point of the hash.
            Err(e) if e.key == ROOT_HASH => {
                opts.errors.push(format!("kernel command line option {e}"));
                continue;
            }
            Err(e) => {
                let then = match e.key {
                    VERITY_CHECK => "; checking everything",
                    VAR_FALLBACK => "; halting without room for var",
                    _ => "",
                };
                opts.warnings.push(format!("ignoring {e}{then}"));
                continue;
            }
        }
        match key.as_str() {
            DEBUG => match parse_bool(v) {
                Some(b) => opts.debug = b,
                None => opts.warnings.push(format!(
                    "ignoring kiln.debug={}: use kiln.debug, kiln.debug=1 or kiln.debug=0",
                    v.unwrap_or_default()
                )),
            },
            ROOT_TYPE => match v.unwrap_or_default().parse::<Guid>() {
                Ok(guid) => opts.root_type = guid,
                Err(e) => opts
                    .errors
                    .push(format!("kernel command line option kiln.root_type: {e}")),
            },
            ROOT_WAIT => match v.map(str::parse::<u64>) {
                Some(Ok(secs)) => opts.root_wait = Duration::from_secs(secs),
                _ => opts.warnings.push(format!(
                    "ignoring kiln.rootwait={}: expected whole seconds; waiting {} s",
                    v.unwrap_or_default(),
                    opts.root_wait.as_secs()
                )),
            },
            ON_FAILURE => match v {
                Some("halt") => opts.on_failure = FailureAction::Halt,
                Some("poweroff") => opts.on_failure = FailureAction::Poweroff,
                Some("reboot") => opts.on_failure = FailureAction::Reboot,
                _ => opts.warnings.push(format!(
                    "ignoring kiln.on_failure={}: expected halt, poweroff or reboot",
                    v.unwrap_or_default()
                )),
            },
            other if other.starts_with(PREFIX) && is_init_option_prefix(other) => {
                opts.warnings
                    .push(format!("unknown option {other} ignored"));
            }
            _ => {}
        }
    }
    opts.root_hash = built.root_hash;
    opts.verity_check = built.verity_check;
    opts.var_min = built.var_min;
    opts.var_fallback = built.var_fallback;
    opts
}

/// The agent reads other `kiln.*` options later in the boot; init only warns about
/// misspellings of its own.
fn is_init_option_prefix(key: &str) -> bool {
    [
        "kiln.root",
        "kiln.debug",
        "kiln.on_",
        "kiln.verity",
        "kiln.var",
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_contract::gpt::types::ROOT_ARM64;

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

    #[test]
    fn verity_and_var_options() {
        let hash = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let o = parse(&format!(
            "kiln.roothash={hash} kiln.verity_check=on-read kiln.var_min=2G kiln.var_fallback=tmpfs"
        ));
        assert!(o.errors.is_empty() && o.warnings.is_empty(), "{o:?}");
        let h = o.root_hash.unwrap();
        assert_eq!((h[0], h[15], h[31]), (0x00, 0xff, 0xff));
        assert_eq!(o.verity_check, VerityCheck::OnRead);
        assert_eq!(o.var_min, 2 << 30);
        assert_eq!(o.var_fallback, VarFallback::Tmpfs);
        let d = parse("");
        assert_eq!((d.root_hash, d.var_min), (None, DEFAULT_VAR_MIN));
        assert_eq!(d.var_fallback, VarFallback::Halt);
        // A short or non-hex hash stops the boot; a bad size or mode only warns.
        assert_eq!(parse("kiln.roothash=abcd").errors.len(), 1);
        assert_eq!(
            parse(&format!("kiln.roothash={}", "g".repeat(64)))
                .errors
                .len(),
            1
        );
        let w =
            parse("kiln.var_min=lots kiln.var_fallback=maybe kiln.verity_check=some kiln.varmin=1");
        assert_eq!(w.warnings.len(), 4, "{:?}", w.warnings);
    }
}
