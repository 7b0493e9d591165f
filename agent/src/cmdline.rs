//! The kernel command line: splitting it like the kernel does and reading the `kiln.*`
//! options init needs. Everything else on the line belongs to someone else and is ignored.

use std::time::Duration;

use kiln_contract::gpt::Guid;

use crate::gpt::native_root_type;

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

/// How much of the verified root init checks before switching to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerityCheck {
    /// Read every data block through dm-verity once before the switch, so a changed
    /// block anywhere stops the boot (`kiln.verity_check=full`, the default).
    Full,
    /// Only check the hash partition; data blocks are checked when they are read
    /// (`kiln.verity_check=on-read`).
    OnRead,
}

/// What init does when there is no room for the `var` partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarFallback {
    /// Stop the boot (the default: state would silently be lost at every reboot).
    Halt,
    /// Keep /var on a tmpfs and say so (`kiln.var_fallback=tmpfs`).
    Tmpfs,
}

/// Default smallest `var` partition init creates (256 MiB).
pub const DEFAULT_VAR_MIN: u64 = 256 << 20;

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

/// Parses a size: bytes, or a whole number with a binary K, M, G or T suffix
/// (`256M` = 256 MiB; `MiB`/`MB` spellings are accepted the same).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().ok()?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
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
            "kiln.root_type" => match v.unwrap_or_default().parse::<Guid>() {
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
            "kiln.roothash" => match v.and_then(parse_hash) {
                Some(h) => opts.root_hash = Some(h),
                // Booting an unverified root instead would defeat the point of the hash.
                None => opts.errors.push(format!(
                    "kernel command line option kiln.roothash={}: expected 64 hex digits",
                    v.unwrap_or_default()
                )),
            },
            "kiln.verity_check" => match v {
                Some("full") => opts.verity_check = VerityCheck::Full,
                Some("on-read") => opts.verity_check = VerityCheck::OnRead,
                _ => opts.warnings.push(format!(
                    "ignoring kiln.verity_check={}: expected full or on-read; checking everything",
                    v.unwrap_or_default()
                )),
            },
            "kiln.var_min" => match v.and_then(parse_size) {
                Some(n) => opts.var_min = n,
                None => opts.warnings.push(format!(
                    "ignoring kiln.var_min={}: expected a size such as 256M or 2G",
                    v.unwrap_or_default()
                )),
            },
            "kiln.var_fallback" => match v {
                Some("halt") => opts.var_fallback = VarFallback::Halt,
                Some("tmpfs") => opts.var_fallback = VarFallback::Tmpfs,
                _ => opts.warnings.push(format!(
                    "ignoring kiln.var_fallback={}: expected halt or tmpfs; halting without room for var",
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
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1TiB"), Some(1 << 40));
        assert_eq!(parse_size("99999999999T"), None);
    }
}
