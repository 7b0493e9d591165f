//! `ssh_authorized_keys` in the node config: a list of OpenSSH public key lines, each
//! checked by [`kiln_contract::ssh_key`] (the same check `kiln flash --config` makes), with
//! problems reported per entry in the schema's words.

#[cfg(test)]
use kiln_contract::ssh_key::MAX_LINE;
pub use kiln_contract::ssh_key::{shown, AuthorizedKey, KEY, MAX_KEYS};

use super::schema::SchemaError;

/// Checks the value of `ssh_authorized_keys`: a list of strings, each a key line.
/// Each problem names the entry by index and shows it.
pub fn check_list(value: &toml::Value) -> Result<Vec<AuthorizedKey>, Vec<SchemaError>> {
    let toml::Value::Array(items) = value else {
        return Err(vec![SchemaError::WrongType {
            key: KEY.to_string(),
            expected: "a list of public key lines, e.g. [\"ssh-ed25519 AAAA... you@laptop\"]",
            got_type: value.type_str(),
            got: value.to_string(),
        }]);
    };
    if items.len() > MAX_KEYS {
        return Err(vec![SchemaError::BadValue {
            key: KEY.to_string(),
            value: format!("({} entries)", items.len()),
            why: format!("more than the {MAX_KEYS} keys a config may list"),
        }]);
    }
    let mut keys = Vec::new();
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = format!("{KEY}[{i}]");
        match item {
            toml::Value::String(s) => match AuthorizedKey::parse(s) {
                Ok(k) => keys.push(k),
                Err(why) => errors.push(SchemaError::BadValue {
                    key,
                    value: shown(s),
                    why,
                }),
            },
            v => errors.push(SchemaError::WrongType {
                key,
                expected: "a string (one public key line)",
                got_type: v.type_str(),
                got: v.to_string(),
            }),
        }
    }
    if errors.is_empty() {
        Ok(keys)
    } else {
        Err(errors)
    }
}

/// Validates the DTO's list (the table check above has run; this is the final gate).
pub fn validate_list(lines: &[String]) -> Result<Vec<AuthorizedKey>, SchemaError> {
    let value = toml::Value::Array(lines.iter().cloned().map(toml::Value::String).collect());
    check_list(&value).map_err(|mut errors| errors.remove(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A real key line (`ssh-keygen -t ed25519 -C alice@laptop`) and what
    /// `ssh-keygen -lf` says its fingerprint is.
    pub const ED25519: &str = "ssh-ed25519 \
        AAAAC3NzaC1lZDI1NTE5AAAAIHMsjRSweIpHvgMa2kaO4k+xKQ/cY3L4TLcVYlHtLKEJ alice@laptop";
    pub const ED25519_FP: &str = "SHA256:BX2nMhEV34buFIegSGApQZDSGEbaXiJKchNYFBuSeLE";
    /// The same for an ECDSA key without a comment.
    pub const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzd\
        HAyNTYAAABBBJVhvznYYWRo/Xvr12wQBwITzSiOSI1UQy4vy7dBzJV0K0jP+Hl20KiYBx5omcwolpMLP8/C8R\
        JnCAnk0N1fAok=";
    pub const ECDSA_FP: &str = "SHA256:+Ic1MSD8VgLMnuQCn4S6vjgGak6ZPxDdQj0BHGsoe0E";

    #[test]
    fn real_keys_parse_with_ssh_keygens_fingerprints() {
        let k = AuthorizedKey::parse(ED25519).unwrap();
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment, "alice@laptop");
        assert_eq!(k.fingerprint(), ED25519_FP);
        assert_eq!(k.line(), ED25519);
        let k = AuthorizedKey::parse(&format!("  {ECDSA}  ")).unwrap();
        assert_eq!(
            (k.kind.as_str(), k.comment.as_str()),
            ("ecdsa-sha2-nistp256", "")
        );
        assert_eq!(k.fingerprint(), ECDSA_FP);
        assert_eq!(k.line(), ECDSA);
    }

    #[test]
    fn a_comment_keeps_its_words_and_tabs_separate_fields() {
        let line = ED25519.replace(" alice@laptop", "\talice  at work");
        let k = AuthorizedKey::parse(&line).unwrap();
        assert_eq!(k.comment, "alice at work");
    }

    fn why(line: &str) -> String {
        AuthorizedKey::parse(line).unwrap_err()
    }

    #[test]
    fn lines_that_are_not_keys_say_why() {
        assert!(why("").starts_with("empty"), "{}", why(""));
        assert!(why("   ").starts_with("empty"));
        let e = why("hello world");
        assert!(e.contains("\"hello\" is not an SSH public key type"), "{e}");
        let e = why("ssh-ed25519");
        assert!(e.contains("no key data"), "{e}");
        let e = why("ssh-ed25519 not-base64!");
        assert!(e.starts_with("the key data is not base64"), "{e}");
        // Base64 of something that is not a key blob.
        let e = why("ssh-ed25519 aGVsbG8gd29ybGQ=");
        assert!(e.contains("not an SSH public key"), "{e}");
        // An ed25519 blob presented as RSA.
        let data = ED25519.split_whitespace().nth(1).unwrap();
        let e = why(&format!("ssh-rsa {data}"));
        assert!(
            e.contains("is a \"ssh-ed25519\" key, not \"ssh-rsa\""),
            "{e}"
        );
        let e = why("ssh-dss AAAAB3NzaC1kc3M=");
        assert!(e.contains("not an SSH public key type"), "{e}");
    }

    #[test]
    fn options_and_control_characters_are_refused() {
        for line in [
            format!("from=\"10.0.0.0/8\" {ED25519}"),
            format!("command=\"/bin/true\",no-pty {ED25519}"),
            format!("restrict {ED25519}"),
        ] {
            assert!(
                why(&line).contains("options are not supported"),
                "{line}: {}",
                why(&line)
            );
        }
        // A newline would smuggle a second, unchecked line into authorized_keys.
        let e = why(&format!("{ED25519}\nssh-rsa AAAA"));
        assert!(e.contains("'\\n' is not allowed"), "{e}");
        let e = why(&format!("{ED25519}\u{1b}[2J"));
        assert!(e.contains("not allowed"), "{e}");
        let long = format!("{ED25519} {}", "x".repeat(MAX_LINE));
        assert!(why(&long).contains("longer than"), "{}", why(&long));
    }

    #[test]
    fn the_list_check_names_each_bad_entry_and_keeps_none() {
        let value: toml::Value =
            toml::from_str::<toml::Table>(&format!("k = [{:?}, \"ssh-ed25519 AAAA\", 5]", ED25519))
                .unwrap()
                .remove("k")
                .unwrap();
        let errs = check_list(&value).unwrap_err();
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:#?}");
        assert!(
            text[0].starts_with("ssh_authorized_keys[1]: \"ssh-ed25519 AAAA\": the key data"),
            "{}",
            text[0]
        );
        assert_eq!(
            text[1],
            "ssh_authorized_keys[2]: expected a string (one public key line), got integer 5"
        );
        let e = check_list(&toml::Value::String(ED25519.into())).unwrap_err();
        assert!(
            e[0].to_string()
                .starts_with("ssh_authorized_keys: expected a list"),
            "{}",
            e[0]
        );
        let ok = check_list(&toml::Value::Array(vec![toml::Value::String(
            ED25519.into(),
        )]));
        assert_eq!(ok.unwrap().len(), 1);
    }

    #[test]
    fn long_entries_are_cut_short_in_messages() {
        assert_eq!(shown("abc"), "\"abc\"");
        let s = shown(&"y".repeat(200));
        assert_eq!(s.chars().count(), 60 + 3, "{s}");
        assert!(s.ends_with("…\""), "{s}");
    }
}
