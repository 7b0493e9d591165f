//! Naming rules every program applies the same way: host names, node names and
//! Kubernetes node labels.
//!
//! Host names: the agent sets the kernel's host name from its config (or, without one,
//! from the machine-id) and its preflight checks it; both use [`check_hostname`],
//! [`kernel_hostname`] and [`hostname_from_machine_id`].
//!
//! Node names: a node enrolls with kiln-enroll under one DNS label, which names it in the
//! overlay and in Kubernetes. The agent asks for [`node_name_from_hostname`] of its host
//! name, the server refuses what fails [`check_node_name`] and makes names unique from
//! [`to_node_name`]; every name either side makes passes the check, so they cannot
//! disagree.
//!
//! Labels: a profile's `[cluster] labels`, a token's `--label`s (kiln-enroll) and the
//! labels kiln-enroll hands a node with its join parameters all end up in the kubelet's
//! `--node-labels`, which refuses the whole flag, and so the join, for one bad label.
//! So all three are checked by these rules: the builder and kiln-enroll refuse a bad
//! label outright; the agent drops one that reaches it and says so.

use sha2::{Digest, Sha256};

/// Longest host name (RFC 1123), in characters.
pub const MAX_HOSTNAME_LEN: usize = 253;

/// Longest label of a host name, and so longest node name (a DNS label, which is also
/// what Kubernetes accepts for a name everywhere).
pub const MAX_LABEL_LEN: usize = 63;

/// Longest node name kiln-enroll gives or accepts: one DNS label.
pub const MAX_NODE_NAME_LEN: usize = MAX_LABEL_LEN;

/// The kernel keeps at most this many bytes of host name (`__NEW_UTS_LEN`).
pub const KERNEL_HOSTNAME_MAX: usize = 64;

/// Why a text is not an RFC 1123 host name. The messages complete a sentence about the
/// name ("hostname \"x\" ..."); callers with other wording match on the variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameProblem {
    /// Longer than [`MAX_HOSTNAME_LEN`].
    #[error("{len} characters, more than 253")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A leading, trailing or doubled `.` (or nothing at all).
    #[error("has an empty label")]
    EmptyLabel,
    /// A label longer than [`MAX_LABEL_LEN`].
    #[error("label {label:?} is longer than 63 characters")]
    LabelTooLong {
        /// The label.
        label: String,
    },
    /// A label with something other than ASCII letters, digits and `-`.
    #[error("label {label:?} has characters other than letters, digits and '-'")]
    BadCharacter {
        /// The label.
        label: String,
        /// The first character that is not allowed.
        character: char,
    },
    /// A label that starts or ends with `-`.
    #[error("label {label:?} starts or ends with '-'")]
    EdgeHyphen {
        /// The label.
        label: String,
    },
}

/// Checks an RFC 1123 host name: at most 253 characters of dot-separated labels, each
/// 1 to 63 ASCII letters, digits and inner `-`. Upper case is allowed (host names are
/// case-insensitive); the first problem found is returned.
pub fn check_hostname(name: &str) -> Result<(), HostnameProblem> {
    if name.len() > MAX_HOSTNAME_LEN {
        return Err(HostnameProblem::TooLong { len: name.len() });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostnameProblem::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostnameProblem::LabelTooLong {
                label: label.to_string(),
            });
        }
        if let Some(character) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(HostnameProblem::BadCharacter {
                label: label.to_string(),
                character,
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostnameProblem::EdgeHyphen {
                label: label.to_string(),
            });
        }
    }
    Ok(())
}

/// The first label of a host name (all of it when it has no dot).
pub fn first_label(hostname: &str) -> &str {
    hostname.split('.').next().unwrap_or(hostname)
}

/// What the kernel gets for host name `name`: all of it if it fits in
/// [`KERNEL_HOSTNAME_MAX`] bytes, else its first label (as systemd-hostnamed does for
/// long FQDNs).
pub fn kernel_hostname(name: &str) -> &str {
    if name.len() <= KERNEL_HOSTNAME_MAX {
        name
    } else {
        first_label(name)
    }
}

/// The fallback host name of a machine without a configured one: `kiln-` and 8 hex
/// digits of a hash of its machine-id, so the name is stable per machine without
/// revealing the id itself. It is also a valid node name.
pub fn hostname_from_machine_id(machine_id: &str) -> String {
    let digest = Sha256::digest(format!("kiln-hostname:{machine_id}").as_bytes());
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("kiln-{hex}")
}

/// Why a text is not a node name. The messages are the reason alone; callers say
/// which name and what a node name is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeNameProblem {
    /// Empty or longer than [`MAX_NODE_NAME_LEN`].
    #[error("wrong length")]
    Length {
        /// Its length in bytes.
        len: usize,
    },
    /// Upper-case letters (Kubernetes names are lowercase).
    #[error("contains uppercase letters")]
    Uppercase,
    /// Something other than `a-z`, `0-9` and `-`.
    #[error("contains characters other than a-z, 0-9 and '-'")]
    BadCharacter,
    /// Starts or ends with `-`.
    #[error("starts or ends with '-'")]
    EdgeHyphen,
}

/// Checks a node name: one DNS label in lowercase, 1 to 63 characters of `a-z`, `0-9`
/// and `-`, not starting or ending with `-`.
pub fn check_node_name(name: &str) -> Result<(), NodeNameProblem> {
    if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
        return Err(NodeNameProblem::Length { len: name.len() });
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(NodeNameProblem::Uppercase);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(NodeNameProblem::BadCharacter);
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NodeNameProblem::EdgeHyphen);
    }
    Ok(())
}

/// Any text made into a node name: lowercase, characters other than `a-z`, `0-9` and
/// `-` turned into `-`, no leading or trailing `-`, at most [`MAX_NODE_NAME_LEN`];
/// `node` when nothing is left. A valid node name comes back unchanged.
pub fn to_node_name(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = shorten_node_name(mapped.trim_matches('-'), MAX_NODE_NAME_LEN);
    if trimmed.is_empty() {
        "node".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The node name a host asks kiln-enroll for: the first label of its host name (a node
/// name is one DNS label), made into a node name by [`to_node_name`]. For a valid
/// host name that is its first label in lowercase.
pub fn node_name_from_hostname(hostname: &str) -> String {
    to_node_name(first_label(hostname))
}

/// `name` (made of ASCII only, as node names are) cut to at most `len` bytes, without
/// the `-` the cut may leave at its end; room for a suffix such as `-2`. An empty result
/// means nothing of `name` fits.
pub fn shorten_node_name(name: &str, len: usize) -> &str {
    // Cut at a character boundary so non-ASCII input shortens instead of panicking.
    let mut end = name.len().min(len);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches('-')
}

/// A label name (the part after an optional `prefix/`) or a non-empty value: 1 to 63
/// characters of `[A-Za-z0-9._-]`, starting and ending with a letter or digit.
pub fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
}

/// A DNS subdomain (RFC 1123) as label prefixes use it: at most 253 characters, dot-
/// separated parts of 1 to 63 lowercase letters, digits and `-` that start and end with
/// a letter or digit.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first().is_some_and(|c| *c != b'-')
                && b.last().is_some_and(|c| *c != b'-')
        })
}

/// Checks a label key, `[prefix/]name`; the error names the key and the rule.
pub fn check_label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(format!(
                "key {k:?}: the prefix {p:?} must be a DNS subdomain (lowercase letters, \
                 digits, '-' and '.', e.g. \"kiln.dev\"), at most 253 characters"
            ));
        }
    }
    if !is_label_name(name) {
        return Err(format!(
            "key {k:?}: the name {name:?} must be 1-63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or like a label name; the error names the value.
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || is_label_name(v) {
        Ok(())
    } else {
        Err(format!(
            "value {v:?} must be empty or 1-63 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

/// Checks `key=value` as a node label.
pub fn check_label(k: &str, v: &str) -> Result<(), String> {
    check_label_key(k)?;
    check_label_value(v).map_err(|why| format!("label {k:?}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_label_syntax() {
        for (k, v) in [
            ("zone", "a"),
            ("topology.kubernetes.io/zone", "eu-1"),
            ("gpu", ""),
            ("a.b_c-d", "X.y_z-1"),
            ("kiln.dev/pool", "edge"),
        ] {
            assert_eq!(check_label(k, v), Ok(()), "{k}={v}");
        }
        let long = "v".repeat(64);
        let long_prefix = format!("{}/x", "a.".repeat(127));
        for (k, v, why) in [
            ("", "v", "the name \"\""),
            ("-a", "v", "the name \"-a\""),
            ("Example.org/x", "y", "the prefix \"Example.org\""),
            ("a/", "v", "the name \"\""),
            ("a", "-v", "value \"-v\""),
            ("a", "v v", "value \"v v\""),
            ("a", "v,b=c", "value \"v,b=c\""),
            ("a=b", "v", "the name \"a=b\""),
            ("a", long.as_str(), "value"),
            (long_prefix.as_str(), "v", "prefix"),
            ("a/b/c", "v", "the name \"b/c\""),
        ] {
            let e = check_label(k, v).unwrap_err();
            assert!(e.contains(why), "{k}={v}: {e}");
        }
    }

    #[test]
    fn hostnames_follow_rfc_1123() {
        for ok in [
            "a",
            "node-1",
            "Node-1.Example",
            "0.1.2.3",
            &"a".repeat(63),
            &format!("{}a", "a.".repeat(126)),
        ] {
            assert_eq!(check_hostname(ok), Ok(()), "{ok}");
        }
        let cases: [(&str, &str); 8] = [
            ("a..b", "has an empty label"),
            ("", "has an empty label"),
            ("a.", "has an empty label"),
            (&"a.".repeat(127), "254 characters, more than 253"),
            (
                &"b".repeat(64),
                "label \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\" is \
                 longer than 63 characters",
            ),
            (
                "node_1",
                "label \"node_1\" has characters other than letters, digits and '-'",
            ),
            ("x.-a.b", "label \"-a\" starts or ends with '-'"),
            ("a-", "label \"a-\" starts or ends with '-'"),
        ];
        for (bad, why) in cases {
            assert_eq!(check_hostname(bad).unwrap_err().to_string(), why, "{bad}");
        }
        assert_eq!(
            check_hostname("ok.bäd"),
            Err(HostnameProblem::BadCharacter {
                label: "bäd".into(),
                character: 'ä'
            })
        );
    }

    #[test]
    fn the_kernel_gets_the_first_label_of_a_long_name() {
        assert_eq!(kernel_hostname("short.example"), "short.example");
        let fits = format!("{}.{}", "a".repeat(31), "b".repeat(32));
        assert_eq!(kernel_hostname(&fits), fits);
        let long = format!("{}.{}", "a".repeat(40), "b".repeat(40));
        assert_eq!(kernel_hostname(&long), "a".repeat(40));
        assert_eq!(first_label("a.b.c"), "a");
        assert_eq!(first_label("abc"), "abc");
    }

    #[test]
    fn machine_id_hostname_is_a_stable_hash() {
        // printf 'kiln-hostname:0123456789abcdef0123456789abcdef' | sha256sum
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(hostname_from_machine_id(id), "kiln-4cab029c");
        assert!(!hostname_from_machine_id(id).contains(&id[..8]));
        assert_eq!(check_node_name(&hostname_from_machine_id(id)), Ok(()));
        assert_eq!(check_hostname(&hostname_from_machine_id("")), Ok(()));
    }

    #[test]
    fn node_names_are_one_lowercase_label() {
        for ok in ["a", "node-1", "0", &"a".repeat(63)] {
            assert_eq!(check_node_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("Node1", NodeNameProblem::Uppercase),
            ("a_b", NodeNameProblem::BadCharacter),
            ("a.b", NodeNameProblem::BadCharacter),
            ("-a", NodeNameProblem::EdgeHyphen),
            ("a-", NodeNameProblem::EdgeHyphen),
            (&"a".repeat(64), NodeNameProblem::Length { len: 64 }),
            ("", NodeNameProblem::Length { len: 0 }),
        ] {
            assert_eq!(check_node_name(bad), Err(why), "{bad}");
        }
        assert_eq!(
            NodeNameProblem::BadCharacter.to_string(),
            "contains characters other than a-z, 0-9 and '-'"
        );
    }

    #[test]
    fn hostnames_make_node_names() {
        assert_eq!(to_node_name("Web_01.lan"), "web-01-lan");
        assert_eq!(to_node_name("--"), "node");
        assert_eq!(to_node_name(""), "node");
        assert_eq!(to_node_name("héllo"), "h-llo");
        assert_eq!(to_node_name(&"a".repeat(70)), "a".repeat(63));
        assert_eq!(
            to_node_name(&format!("{}-b", "a".repeat(62))),
            "a".repeat(62)
        );
        assert_eq!(node_name_from_hostname("node-1.example.org"), "node-1");
        assert_eq!(node_name_from_hostname("Web_01.lan"), "web-01");
        assert_eq!(node_name_from_hostname("(none)"), "none");
        assert_eq!(node_name_from_hostname(".x"), "node");
        assert_eq!(shorten_node_name("abc-def", 4), "abc");
        assert_eq!(shorten_node_name("abc", 10), "abc");
        assert_eq!(shorten_node_name("ab\u{e9}", 3), "ab");
    }

    /// A small deterministic generator (xorshift) for many odd inputs without a
    /// dependency.
    fn odd_names(count: usize) -> Vec<String> {
        const PIECES: &[&str] = &[
            "a",
            "Z",
            "0",
            "9",
            "-",
            "--",
            ".",
            "_",
            " ",
            "é",
            "ß",
            "\u{1f600}",
            "\0",
            "node",
            "WEB",
            "x.y",
            "-.-",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let len = (next() % 90) as usize;
                (0..len)
                    .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn every_made_node_name_passes_the_check() {
        // What the agent asks for and what the server makes of any hostname must both
        // be names the server accepts, and made names must not change when made again.
        let mut inputs = odd_names(20_000);
        inputs.extend(["", "-", ".", "(none)", "localhost"].map(String::from));
        inputs.push("a".repeat(300));
        inputs.push(format!("{}.{}", "b-".repeat(40), "c".repeat(70)));
        for text in &inputs {
            for made in [to_node_name(text), node_name_from_hostname(text)] {
                assert_eq!(check_node_name(&made), Ok(()), "{text:?} -> {made:?}");
                assert_eq!(to_node_name(&made), made, "{text:?}");
                assert_eq!(check_hostname(&made), Ok(()), "{text:?} -> {made:?}");
            }
            for len in [1, 2, 5, 60, 61, 63] {
                let made = to_node_name(text);
                let short = shorten_node_name(&made, len);
                assert!(short.len() <= len, "{text:?}");
                assert!(
                    short.is_empty() || check_node_name(short).is_ok(),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn a_valid_hostname_keeps_its_first_label_as_node_name() {
        // For names that pass the host name check, the agent's node name is the
        // first label lowercased, as it was before the name was sanitised.
        let mut valid = 0;
        for text in odd_names(20_000) {
            if check_hostname(&text).is_ok() {
                valid += 1;
                let want = first_label(&text).to_ascii_lowercase();
                assert_eq!(node_name_from_hostname(&text), want, "{text:?}");
            }
        }
        assert!(valid > 100, "only {valid} valid host names generated");
        assert_eq!(node_name_from_hostname("Node-1.Example"), "node-1");
    }
}
