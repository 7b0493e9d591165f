//! Naming rules every program applies the same way: Kubernetes node labels.
//!
//! A profile's `[cluster] labels`, a token's `--label`s (kiln-enroll) and the labels
//! kiln-enroll hands a node with its join parameters all end up in the kubelet's
//! `--node-labels`, which refuses the whole flag, and so the join, for one bad label.
//! So all three are checked by these rules: the builder and kiln-enroll refuse a bad
//! label outright; the agent drops one that reaches it and says so.

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
}
