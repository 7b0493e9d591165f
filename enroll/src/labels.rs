//! Node labels given as `--label key=value`, checked with Kubernetes' label syntax
//! (`kiln_contract::names`, the rules the builder and the agent apply too) so that the
//! kubelet accepts them when the node joins.

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

/// Parses one `key=value`.
pub fn parse(text: &str) -> Result<(String, String), LabelError> {
    let err = |why: &str| LabelError {
        label: text.to_string(),
        why: why.to_string(),
    };
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| err("write it as key=value"))?;
    kiln_contract::names::check_label(key, value).map_err(|why| err(&why))?;
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
            ("=v", "the name \"\""),
            ("-a=v", "the name \"-a\""),
            ("Example.org/x=y", "prefix"),
            ("a/=v", "the name \"\""),
            ("a=-v", "value \"-v\""),
            ("a=v v", "value \"v v\""),
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
