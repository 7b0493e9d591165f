//! The kernel command line between the builder and kiln's init: the `kiln.*` keys init
//! reads, how the kernel splits the line into words, and the values the builder puts in
//! the UKI ([`InitArgs`]).
//!
//! The UKI's command line is measured and signed with the rest of the image, so the
//! builder's words must stay byte for byte what they were: [`InitArgs::to_words`] is the
//! one place that spells them.

/// The prefix of every kiln key on the command line.
pub const PREFIX: &str = "kiln.";

/// `kiln.roothash=<64 hex digits>`: the dm-verity root hash of the root partition.
pub const ROOT_HASH: &str = "kiln.roothash";
/// `kiln.root_type=<guid>`: the GPT type GUID of the root partition.
pub const ROOT_TYPE: &str = "kiln.root_type";
/// `kiln.rootwait=<seconds>`: how long init waits for the root partition.
pub const ROOT_WAIT: &str = "kiln.rootwait";
/// `kiln.on_failure=halt|poweroff|reboot`: what init does when it cannot go on.
pub const ON_FAILURE: &str = "kiln.on_failure";
/// `kiln.debug[=0|1]`: init logs every step.
pub const DEBUG: &str = "kiln.debug";
/// `kiln.verity_check=full|on-read` ([`VerityCheck`]).
pub const VERITY_CHECK: &str = "kiln.verity_check";
/// `kiln.var_min=<size>`: the smallest `var` partition worth creating ([`parse_size`]).
pub const VAR_MIN: &str = "kiln.var_min";
/// `kiln.var_fallback=halt|tmpfs` ([`VarFallback`]).
pub const VAR_FALLBACK: &str = "kiln.var_fallback";

/// The keys that belong to init; every other `kiln.*` key is node config.
pub const INIT_KEYS: [&str; 8] = [
    ROOT_HASH,
    ROOT_TYPE,
    ROOT_WAIT,
    ON_FAILURE,
    DEBUG,
    VERITY_CHECK,
    VAR_MIN,
    VAR_FALLBACK,
];

/// The keys the build computes and a user may not append: another value would
/// override what the build put there (the kernel's last occurrence wins).
pub const RESERVED_KEYS: [&str; 2] = [ROOT_HASH, ROOT_TYPE];

/// The smallest `var` partition init creates when the line does not say (256 MiB).
pub const DEFAULT_VAR_MIN: u64 = 256 << 20;

/// Splits a command line into `(key, value)` parameters the way the kernel does:
/// whitespace separates, double quotes group (and are removed), and `--` ends the
/// kernel's part (what follows is for init's argv).
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

/// How much of the verified root init checks before switching to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VerityCheck {
    /// Read every data block through dm-verity once before the switch, so a changed
    /// block anywhere stops the boot (`full`, the default).
    #[default]
    Full,
    /// Only check the hash partition; data blocks are checked when they are read
    /// (`on-read`).
    OnRead,
}

impl VerityCheck {
    /// The word after `kiln.verity_check=` (and in the profile's `[disk]`).
    pub fn word(self) -> &'static str {
        match self {
            VerityCheck::Full => "full",
            VerityCheck::OnRead => "on-read",
        }
    }

    /// The value spelled `word`.
    pub fn from_word(word: &str) -> Option<VerityCheck> {
        [VerityCheck::Full, VerityCheck::OnRead]
            .into_iter()
            .find(|v| v.word() == word)
    }
}

/// What init does when the disk has no room for the `var` partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum VarFallback {
    /// Stop the boot (`halt`, the default: state would silently be lost at every
    /// reboot).
    #[default]
    Halt,
    /// Keep /var on a tmpfs and say so (`tmpfs`).
    Tmpfs,
}

impl VarFallback {
    /// The word after `kiln.var_fallback=` (and in the profile's `[disk]`).
    pub fn word(self) -> &'static str {
        match self {
            VarFallback::Halt => "halt",
            VarFallback::Tmpfs => "tmpfs",
        }
    }

    /// The value spelled `word`.
    pub fn from_word(word: &str) -> Option<VarFallback> {
        [VarFallback::Halt, VarFallback::Tmpfs]
            .into_iter()
            .find(|v| v.word() == word)
    }
}

/// Parses a size: bytes, or a whole number with a binary K, M, G or T suffix
/// (`256M` = 256 MiB; `MiB`/`MB` spellings and any case are accepted the same).
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

/// Spells a size for the command line as the builder always has: the byte count in
/// decimal, which [`parse_size`] reads back exactly and never rounds.
pub fn format_size(bytes: u64) -> String {
    bytes.to_string()
}

/// Parses a root hash: 64 hex digits, either case.
pub fn parse_root_hash(text: &str) -> Option<[u8; 32]> {
    let b = text.as_bytes();
    if b.len() != 64 || !b.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        *o = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    Some(out)
}

fn hex_value(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    }
}

/// Spells a root hash for the command line: 64 lowercase hex digits.
pub fn format_root_hash(hash: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in hash {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// What the builder puts on the UKI's command line for init, and what init reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InitArgs {
    /// `kiln.roothash=`: the root is only ever mounted through dm-verity with it.
    pub root_hash: Option<[u8; 32]>,
    /// `kiln.verity_check=`.
    pub verity_check: VerityCheck,
    /// `kiln.var_min=`, in bytes.
    pub var_min: u64,
    /// `kiln.var_fallback=`.
    pub var_fallback: VarFallback,
}

impl Default for InitArgs {
    fn default() -> InitArgs {
        InitArgs {
            root_hash: None,
            verity_check: VerityCheck::default(),
            var_min: DEFAULT_VAR_MIN,
            var_fallback: VarFallback::default(),
        }
    }
}

/// A value init cannot use for one of [`InitArgs`]' keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}={value}: expected {expected}")]
pub struct BadInitArg {
    /// The key, e.g. `kiln.var_min`.
    pub key: &'static str,
    /// The value as given (empty when there was none).
    pub value: String,
    /// What the key takes.
    pub expected: &'static str,
}

impl InitArgs {
    /// The words, in the order the builder has always written them. The check mode and
    /// the fallback are only written when they are not init's default, the size always.
    pub fn to_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        if let Some(hash) = &self.root_hash {
            words.push(format!("{ROOT_HASH}={}", format_root_hash(hash)));
        }
        if self.verity_check != VerityCheck::Full {
            words.push(format!("{VERITY_CHECK}={}", self.verity_check.word()));
        }
        words.push(format!("{VAR_MIN}={}", format_size(self.var_min)));
        if self.var_fallback != VarFallback::Halt {
            words.push(format!("{VAR_FALLBACK}={}", self.var_fallback.word()));
        }
        words
    }

    /// Takes one parameter from [`split`]: `Ok(true)` when `key` is one of these and was
    /// set, `Ok(false)` when it is another key. A bad value changes nothing.
    pub fn read(&mut self, key: &str, value: Option<&str>) -> Result<bool, BadInitArg> {
        let v = value.unwrap_or_default();
        let bad = |key, expected| BadInitArg {
            key,
            value: v.to_string(),
            expected,
        };
        match key {
            ROOT_HASH => {
                let hash = parse_root_hash(v).ok_or_else(|| bad(ROOT_HASH, "64 hex digits"))?;
                self.root_hash = Some(hash);
            }
            VERITY_CHECK => {
                self.verity_check = VerityCheck::from_word(v)
                    .ok_or_else(|| bad(VERITY_CHECK, "full or on-read"))?;
            }
            VAR_MIN => {
                self.var_min =
                    parse_size(v).ok_or_else(|| bad(VAR_MIN, "a size such as 256M or 2G"))?;
            }
            VAR_FALLBACK => {
                self.var_fallback =
                    VarFallback::from_word(v).ok_or_else(|| bad(VAR_FALLBACK, "halt or tmpfs"))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Reads these keys from a whole command line, the last occurrence winning as with
    /// kernel parameters; other words are ignored. Stops at the first bad value.
    pub fn parse(cmdline: &str) -> Result<InitArgs, BadInitArg> {
        let mut args = InitArgs::default();
        for (key, value) in split(cmdline) {
            args.read(&key, value.as_deref())?;
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn words_are_the_ones_the_builder_always_wrote() {
        let hash: [u8; 32] = std::array::from_fn(|i| (i * 9) as u8);
        let hex = "0009121b242d363f48515a636c757e879099a2abb4bdc6cfd8e1eaf3fc050e17";
        let defaults = InitArgs {
            root_hash: Some(hash),
            ..InitArgs::default()
        };
        assert_eq!(
            defaults.to_words(),
            [
                format!("kiln.roothash={hex}"),
                "kiln.var_min=268435456".into()
            ]
        );
        let all = InitArgs {
            root_hash: Some(hash),
            verity_check: VerityCheck::OnRead,
            var_min: 1536 << 20,
            var_fallback: VarFallback::Tmpfs,
        };
        assert_eq!(
            all.to_words(),
            [
                format!("kiln.roothash={hex}"),
                "kiln.verity_check=on-read".into(),
                "kiln.var_min=1610612736".into(),
                "kiln.var_fallback=tmpfs".into(),
            ]
        );
        assert_eq!(
            InitArgs::default().to_words(),
            ["kiln.var_min=268435456".to_string()]
        );
    }

    #[test]
    fn what_is_written_is_read_back() {
        let hash: [u8; 32] = std::array::from_fn(|i| 255 - i as u8);
        for verity_check in [VerityCheck::Full, VerityCheck::OnRead] {
            for var_fallback in [VarFallback::Halt, VarFallback::Tmpfs] {
                for var_min in [16 << 20, DEFAULT_VAR_MIN, 3 << 30, 1234567] {
                    for root_hash in [None, Some(hash)] {
                        let x = InitArgs {
                            root_hash,
                            verity_check,
                            var_min,
                            var_fallback,
                        };
                        let line = format!("console=ttyS0 {} quiet", x.to_words().join(" "));
                        assert_eq!(InitArgs::parse(&line), Ok(x), "{line}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_values_change_nothing_and_say_what_was_expected() {
        let mut a = InitArgs::default();
        assert_eq!(a.read("kiln.var_min", Some("2G")), Ok(true));
        assert_eq!(a.read("kiln.hostname", Some("x")), Ok(false));
        let e = a.read("kiln.var_min", Some("lots")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "kiln.var_min=lots: expected a size such as 256M or 2G"
        );
        assert_eq!(a.var_min, 2 << 30);
        let e = a.read("kiln.roothash", None).unwrap_err();
        assert_eq!(e.to_string(), "kiln.roothash=: expected 64 hex digits");
        for (key, value) in [
            ("kiln.roothash", "abcd".to_string()),
            ("kiln.roothash", "g".repeat(64)),
            ("kiln.roothash", format!("+f{}", "0".repeat(62))),
            ("kiln.verity_check", "some".into()),
            ("kiln.var_fallback", "maybe".into()),
        ] {
            assert!(a.read(key, Some(&value)).is_err(), "{key}={value}");
        }
        assert_eq!(
            InitArgs::parse("kiln.var_fallback=tmpfs kiln.var_fallback=halt"),
            Ok(InitArgs::default())
        );
    }

    #[test]
    fn sizes_and_hashes() {
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("2g"), Some(2 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1TiB"), Some(1 << 40));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("1 parsec"), None);
        assert_eq!(parse_size(&format_size(u64::MAX)), Some(u64::MAX));
        let h = parse_root_hash("00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF")
            .unwrap();
        assert_eq!((h[0], h[15], h[31]), (0x00, 0xff, 0xff));
        assert_eq!(
            format_root_hash(&h),
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
        );
        assert_eq!(VerityCheck::from_word("on-read"), Some(VerityCheck::OnRead));
        assert_eq!(VarFallback::from_word("tmpfs"), Some(VarFallback::Tmpfs));
        assert_eq!(VerityCheck::from_word("On-Read"), None);
    }

    #[test]
    fn key_lists() {
        assert!(INIT_KEYS.iter().all(|k| k.starts_with(PREFIX)));
        assert!(RESERVED_KEYS.iter().all(|k| INIT_KEYS.contains(k)));
    }
}
