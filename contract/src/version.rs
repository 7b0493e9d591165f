//! Image versions: what a profile's `version` may say and how two versions order.
//!
//! The order must be the one systemd-boot uses to pick the default boot entry (it
//! sorts Type #2 UKIs by the `IMAGE_VERSION` of their `.osrel`, newest first, with
//! `strverscmp_improved`), or the agent's "newer" and the boot loader's "newer" could
//! disagree. The grammar is therefore kept to the part where both agree and a reader
//! expects the result: dot-separated numbers (`1`, `1.4`, `2026.12.7`, a CI build
//! number), optionally followed by `~` and a pre-release tag (`2.0~rc1`), which sorts
//! before the release it leads to. Semver's `-rc1` is refused with that advice: to
//! systemd-boot, `2.0-rc1` would be newer than `2.0`.

use std::cmp::Ordering;
use std::fmt;

/// Longest version accepted (it lands in os-release, file names and GPT labels' neighbours).
pub const MAX_LEN: usize = 64;

/// A checked image version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageVersion {
    text: String,
    numbers: Vec<u64>,
    /// The part after `~`, split at dots.
    pre: Option<Vec<String>>,
}

/// Why a version string is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// Empty, too long, or not of the accepted grammar.
    #[error(
        "version {0:?} is not dot-separated numbers with an optional ~pre-release tag \
         (e.g. \"1.4.0\", \"2026.12.7\", \"42\" or \"2.0~rc1\"; at most {MAX_LEN} characters)"
    )]
    Invalid(String),
    /// Semver-style pre-release, which systemd-boot would order after the release.
    #[error(
        "version {0:?} uses '-' for a pre-release; write {1:?} instead: systemd-boot orders \
         versions with strverscmp, where \"2.0-rc1\" is newer than \"2.0\" but \"2.0~rc1\" is older"
    )]
    Hyphen(String, String),
}

impl ImageVersion {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<ImageVersion, VersionError> {
        let invalid = || VersionError::Invalid(text.to_string());
        if text.is_empty() || text.len() > MAX_LEN {
            return Err(invalid());
        }
        if let Some((release, pre)) = text.split_once('-') {
            if parse_numbers(release).is_some() && !pre.is_empty() {
                return Err(VersionError::Hyphen(
                    text.to_string(),
                    format!("{release}~{pre}"),
                ));
            }
            return Err(invalid());
        }
        let (release, pre) = match text.split_once('~') {
            Some((r, p)) => (r, Some(p)),
            None => (text, None),
        };
        let numbers = parse_numbers(release).ok_or_else(invalid)?;
        let pre = match pre {
            None => None,
            Some(p) => {
                let parts: Vec<String> = p.split('.').map(str::to_string).collect();
                let ok = parts
                    .iter()
                    .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()));
                if !ok {
                    return Err(invalid());
                }
                Some(parts)
            }
        };
        Ok(ImageVersion {
            text: text.to_string(),
            numbers,
            pre,
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn parse_numbers(s: &str) -> Option<Vec<u64>> {
    s.split('.')
        .map(|n| {
            // Leading zeros would compare equal numerically but differ as text.
            let plain = !n.is_empty() && (n == "0" || !n.starts_with('0'));
            if plain && n.bytes().all(|b| b.is_ascii_digit()) {
                n.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

/// Splits a word into runs of digits and of other characters (`rc10` → `rc`, `10`).
fn runs(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let b = s.as_bytes();
    for i in 1..=b.len() {
        if i == b.len() || b[i].is_ascii_digit() != b[i - 1].is_ascii_digit() {
            out.push(&s[start..i]);
            start = i;
        }
    }
    out
}

/// One pre-release word against another as strverscmp does: runs of digits
/// numerically and before letters, runs of letters by bytes (`rc2` < `rc10`).
fn cmp_word(a: &str, b: &str) -> Ordering {
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let num = |s: &str| {
            s.parse::<u64>()
                .ok()
                .filter(|_| s.bytes().all(|c| c.is_ascii_digit()))
        };
        let o = match (num(x), num(y)) {
            (Some(p), Some(q)) => p.cmp(&q),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len())
}

impl Ord for ImageVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        for (a, b) in self.numbers.iter().zip(&other.numbers) {
            match a.cmp(b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        // More components is newer ("1.0.1" > "1.0", and "1.0.0" > "1.0", as in
        // strverscmp_improved); then a pre-release is older than no tag.
        self.numbers
            .len()
            .cmp(&other.numbers.len())
            .then_with(|| match (&self.pre, &other.pre) {
                (None, None) => Ordering::Equal,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => {
                    for (x, y) in a.iter().zip(b) {
                        match cmp_word(x, y) {
                            Ordering::Equal => {}
                            o => return o,
                        }
                    }
                    a.len().cmp(&b.len())
                }
            })
    }
}

impl PartialOrd for ImageVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ImageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> ImageVersion {
        ImageVersion::parse(s).unwrap()
    }

    #[test]
    fn orders_like_systemd_boot_within_the_grammar() {
        let sorted = [
            "1",
            "1.0",
            "1.0.0",
            "1.2",
            "1.10",
            "2.0~alpha",
            "2.0~rc1",
            "2.0~rc2",
            "2.0~rc10",
            "2.0",
            "2.0.1",
            "10",
            "2026.12.7",
        ];
        for w in sorted.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
            assert!(v(w[1]) > v(w[0]), "{} > {}", w[1], w[0]);
        }
        assert_eq!(v("3.1").cmp(&v("3.1")), Ordering::Equal);
        assert!(v("2.0~2") < v("2.0~a"), "numbers sort before words");
    }

    #[test]
    fn refuses_what_systemd_boot_would_order_differently() {
        let e = ImageVersion::parse("2.0-rc1").unwrap_err();
        assert!(e.to_string().contains("\"2.0~rc1\""), "{e}");
        for bad in [
            "",
            "v1",
            "1..2",
            "1.",
            ".1",
            "01",
            "1.02",
            "1 2",
            "1~",
            "1~rc.",
            "1~r-c",
            "1+b",
            &"9".repeat(65),
        ] {
            assert!(ImageVersion::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(v("0.10.0").as_str(), "0.10.0");
    }
}
