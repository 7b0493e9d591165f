//! Node labels given as `--label key=value`, checked with Kubernetes' label syntax so
//! that the kubelet accepts them when the node joins.

use std::collections::BTreeMap;

/// Why a label is refused (names the label and the rule).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--label {label:?}: {why}")]
pub struct LabelError {
    /// The label as given.
    pub label: String,
    /// The rule it breaks.
    pub why: String,
}

/// A name part or a value: at most 63 characters of `[A-Za-z0-9._-]`, starting and
/// ending alphanumeric.
fn name_ok(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A key prefix: a lowercase DNS subdomain of at most 253 characters.
fn prefix_ok(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Parses one `key=value`.
pub fn parse(text: &str) -> Result<(String, String), LabelError> {
    let err = |why: &str| LabelError {
        label: text.to_string(),
        why: why.to_string(),
    };
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| err("write it as key=value"))?;
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !prefix_ok(prefix) {
                return Err(err(
                    "the key's prefix (before '/') must be a lowercase DNS name such as \
                     example.org, at most 253 characters",
                ));
            }
            name
        }
        None => key,
    };
    if name.is_empty() || !name_ok(name) {
        return Err(err(
            "the key's name must be 1-63 characters of A-Z, a-z, 0-9, '-', '_', '.', \
             starting and ending with a letter or digit",
        ));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(err(
            "the value must be empty or 1-63 characters of A-Z, a-z, 0-9, '-', '_', '.', \
             starting and ending with a letter or digit",
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parses every `--label`; a key given twice is refused.
pub fn parse_all(texts: &[String]) -> Result<BTreeMap<String, String>, LabelError> {
    let mut out = BTreeMap::new();
    for t in texts {
        let (k, v) = parse(t)?;
        if out.insert(k.clone(), v).is_some() {
            return Err(LabelError {
                label: t.clone(),
                why: format!("key {k} is given more than once"),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_label_syntax() {
        for good in [
            "zone=a",
            "topology.kubernetes.io/zone=eu-1",
            "gpu=",
            "a.b_c-d=X.y_z-1",
            "example.org/x=y",
        ] {
            assert!(parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("zone", "key=value"),
            ("=v", "key's name"),
            ("-a=v", "key's name"),
            ("Example.org/x=y", "prefix"),
            ("a/=v", "key's name"),
            ("a=-v", "the value"),
            ("a=v v", "the value"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
        let long = format!("a={}", "v".repeat(64));
        assert!(parse(&long).is_err());
        let e = parse_all(&["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(e.to_string().contains("more than once"));
    }
}
