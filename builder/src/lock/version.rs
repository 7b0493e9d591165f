//! Debian version comparison (`dpkg --compare-versions` semantics).
//!
//! A version is `[epoch:]upstream[-revision]`. Epochs compare numerically;
//! upstream and revision compare by alternating runs of non-digits (where `~`
//! sorts before everything, even the end of the string, and letters sort
//! before other characters) and digits (compared as numbers).

use std::cmp::Ordering;

/// A version relation operator as written in Depends fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// `<<`: strictly earlier.
    Lt,
    /// `<=` (also the obsolete `<`).
    Le,
    /// `=`: exactly.
    Eq,
    /// `>=` (also the obsolete `>`).
    Ge,
    /// `>>`: strictly later.
    Gt,
}

impl Op {
    /// Parses an operator token.
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "<<" => Some(Op::Lt),
            "<=" | "<" => Some(Op::Le),
            "=" => Some(Op::Eq),
            ">=" | ">" => Some(Op::Ge),
            ">>" => Some(Op::Gt),
            _ => None,
        }
    }

    /// The canonical token.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<<",
            Op::Le => "<=",
            Op::Eq => "=",
            Op::Ge => ">=",
            Op::Gt => ">>",
        }
    }

    /// Whether `have OP want` holds.
    pub fn holds(self, have: &str, want: &str) -> bool {
        let c = compare(have, want);
        match self {
            Op::Lt => c == Ordering::Less,
            Op::Le => c != Ordering::Greater,
            Op::Eq => c == Ordering::Equal,
            Op::Ge => c != Ordering::Less,
            Op::Gt => c == Ordering::Greater,
        }
    }
}

/// Splits a version into (epoch digits, upstream, revision). A missing epoch
/// is "0"; a missing revision is "" (which dpkg treats like "0").
fn split(v: &str) -> (&str, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => (e, rest),
        _ => ("0", v),
    };
    let (upstream, revision) = match rest.rfind('-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    (epoch, upstream, revision)
}

/// Compares two digit strings as numbers of any length.
fn cmp_digits(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Sort weight of one byte in a non-digit run; `None` is the end of the run.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// Compares upstream or revision parts.
fn cmp_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        // Non-digit run, compared byte by byte with dpkg's weights.
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ca = a.get(i).copied().filter(|c| !c.is_ascii_digit());
            let cb = b.get(j).copied().filter(|c| !c.is_ascii_digit());
            let (wa, wb) = (weight(ca), weight(cb));
            if wa != wb {
                return wa.cmp(&wb);
            }
            if ca.is_some() {
                i += 1;
            }
            if cb.is_some() {
                j += 1;
            }
        }
        // Digit run, compared as a number.
        let si = i;
        while i < a.len() && a[i].is_ascii_digit() {
            i += 1;
        }
        let sj = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        // Both slices are ASCII digits, so from_utf8 cannot fail; fall back to
        // empty (zero) defensively rather than panic.
        let da = std::str::from_utf8(&a[si..i]).unwrap_or("");
        let db = std::str::from_utf8(&b[sj..j]).unwrap_or("");
        let c = cmp_digits(da, db);
        if c != Ordering::Equal {
            return c;
        }
    }
    Ordering::Equal
}

/// Compares two Debian versions the way `dpkg --compare-versions` does.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    cmp_digits(ea, eb)
        .then_with(|| cmp_part(ua, ub))
        .then_with(|| cmp_part(ra, rb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Cmd, HostRunner, Runner};

    /// Pairs chosen to hit every rule: epochs, `~` before the end, letters
    /// before punctuation, leading zeros, missing and empty revisions.
    const CASES: &[(&str, &str)] = &[
        ("1.0", "1.0"),
        ("1.0", "1.00"),
        ("1.0", "1.0-0"),
        ("1.0-1", "1.0-2"),
        ("1.0~rc1", "1.0"),
        ("1.0~rc1", "1.0~rc2"),
        ("1.0~~", "1.0~"),
        ("1.0~", "1.0"),
        ("1.0", "1.0a"),
        ("1.0a", "1.0+"),
        ("1.0+", "1.0."),
        ("1.0.", "1.0~"),
        ("1.0-1.", "1.0-1a"),
        ("1:0.1", "2.0"),
        ("0:2.0", "2.0"),
        ("10:1", "9:999"),
        ("1.2.3", "1.2.10"),
        ("1.002", "1.2"),
        ("1.0-1ubuntu1", "1.0-1"),
        ("2.36-9+deb12u7", "2.36-9+deb12u10"),
        ("6.1.0-37", "6.1.0-37~bpo"),
        ("5.2.15-2+b2", "5.2.15-2"),
        ("1.1.5+ds1-1+deb12u1", "1.1.5+ds1-1+b1"),
        ("252.38-1~deb12u1", "252.39-1~deb12u1"),
        ("7.0", "7.0-1~bpo12+1"),
        ("a", "b"),
        ("1.0-a-1", "1.0-a"),
        ("99999999999999999999", "99999999999999999998"),
        ("1.0~beta", "1.0~alpha"),
        ("1:1.35.0-4+b3", "1.36.0"),
        ("0.0", "0"),
        ("1.0+dfsg", "1.0-1"),
    ];

    fn dpkg_says(a: &str, op: &str, b: &str) -> bool {
        match HostRunner.run(&Cmd::new("dpkg").args(["--compare-versions", a, op, b])) {
            Ok(_) => true,
            Err(crate::runner::RunError::Failed { .. }) => false,
            Err(e) => panic!("dpkg must be installed for this test: {e}"),
        }
    }

    #[test]
    fn matches_dpkg_on_a_table_of_cases() {
        for (a, b) in CASES {
            let ours = compare(a, b);
            let expected = if dpkg_says(a, "lt", b) {
                Ordering::Less
            } else if dpkg_says(a, "eq", b) {
                Ordering::Equal
            } else {
                assert!(dpkg_says(a, "gt", b), "dpkg gave no order for {a} vs {b}");
                Ordering::Greater
            };
            assert_eq!(ours, expected, "compare({a:?}, {b:?})");
            assert_eq!(compare(b, a), expected.reverse(), "compare({b:?}, {a:?})");
        }
    }

    #[test]
    fn operators_follow_the_comparison() {
        assert!(Op::Lt.holds("1.0~rc1", "1.0"));
        assert!(!Op::Lt.holds("1.0", "1.0"));
        assert!(Op::Le.holds("1.0", "1.0-0"));
        assert!(Op::Eq.holds("0:1.0", "1.0"));
        assert!(Op::Ge.holds("1:0", "9"));
        assert!(Op::Gt.holds("1.0a", "1.0"));
        assert_eq!(Op::parse("<"), Some(Op::Le));
        assert_eq!(Op::parse(">"), Some(Op::Ge));
        assert_eq!(Op::parse("=>"), None);
    }
}
