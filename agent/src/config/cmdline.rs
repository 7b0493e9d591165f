//! The kernel command line channel: `kiln.<key>=<value>` (`kiln.hostname=node-1`; dotted
//! for tables, `kiln.<table>.<key>=<value>`, e.g. `kiln.enroll.server=https://h:8443`).
//!
//! Values are strings, except the keys in [`INTEGER_KEYS`] and [`BOOL_KEYS`]. The kernel's quoting
//! (`kiln.hostname="node-1"`) is undone. The init's own options ([`INIT_KEYS`]) are not
//! config keys and are skipped. A key given twice keeps its last value, as the kernel
//! does for its own parameters, except the lists in [`LIST_KEYS`], where each word adds
//! one entry (`kiln.ssh_authorized_keys="ssh-ed25519 AAAA... you@laptop"`, once per key).

use kiln_contract::cmdline::{split, INIT_KEYS, PREFIX};

use super::schema::{self, SchemaError};
use super::Finding;

/// Where the kernel shows its command line.
pub const CMDLINE: &str = "/proc/cmdline";

/// Keys whose command line value is a number rather than a string.
pub const INTEGER_KEYS: &[&str] = &["schema", "enroll.listen_port", "enroll.mtu"];

/// Keys whose command line value is `true` or `false` rather than a string.
pub const BOOL_KEYS: &[&str] = &["update.auto_reboot"];

/// Keys whose command line words each add one string to a list.
pub const LIST_KEYS: &[&str] = &["ssh_authorized_keys"];

/// The config table the command line sets; None when it sets no config key.
pub fn table(cmdline: &str) -> Result<Option<toml::Table>, Vec<SchemaError>> {
    let mut table = toml::Table::new();
    let mut errors = Vec::new();
    let mut any = false;
    for (param, value) in split(cmdline) {
        if INIT_KEYS.contains(&param.as_str()) {
            continue;
        }
        let Some(key) = param.strip_prefix(PREFIX) else {
            continue;
        };
        any = true;
        let Some(value) = value else {
            errors.push(SchemaError::BadValue {
                key: key.to_string(),
                value: "(none)".to_string(),
                why: format!("needs a value: write kiln.{key}=VALUE"),
            });
            continue;
        };
        let path: Vec<&str> = key.split('.').collect();
        if path.iter().any(|p| p.is_empty()) {
            errors.push(SchemaError::UnknownKey {
                key: key.to_string(),
            });
            continue;
        }
        let value = if INTEGER_KEYS.contains(&key) {
            value
                .parse::<i64>()
                .map_or(toml::Value::String(value), toml::Value::Integer)
        } else if BOOL_KEYS.contains(&key) {
            // Anything else stays a string, which the schema refuses by name.
            match value.as_str() {
                "true" => toml::Value::Boolean(true),
                "false" => toml::Value::Boolean(false),
                _ => toml::Value::String(value),
            }
        } else if LIST_KEYS.contains(&key) {
            let mut list = match table.remove(key) {
                Some(toml::Value::Array(list)) => list,
                _ => Vec::new(),
            };
            list.push(toml::Value::String(value));
            toml::Value::Array(list)
        } else {
            toml::Value::String(value)
        };
        if let Err(e) = insert(&mut table, &path, value) {
            errors.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(any.then_some(table))
}

fn insert(table: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), SchemaError> {
    let (last, parents) = match path.split_last() {
        Some(x) => x,
        None => return Ok(()),
    };
    let mut t = table;
    for (i, p) in parents.iter().enumerate() {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = match entry {
            toml::Value::Table(inner) => inner,
            other => {
                return Err(SchemaError::BadValue {
                    key: path[..=i].join("."),
                    value: other.to_string(),
                    why: format!("is a value, so kiln.{} cannot be set", path.join(".")),
                })
            }
        };
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Reads the channel.
pub fn gather(sys: &mut dyn super::ConfigSys) -> Option<Finding> {
    let bytes = match sys.read_file(CMDLINE) {
        Ok(b) => b,
        Err(e) => return Some(Finding::error("cmdline", CMDLINE, e.to_string())),
    };
    let text = String::from_utf8_lossy(&bytes);
    match table(&text) {
        Ok(None) => None,
        Ok(Some(t)) => Some(Finding::from_result(
            "cmdline",
            CMDLINE,
            schema::from_table(t),
        )),
        Err(errs) => Some(Finding::from_result("cmdline", CMDLINE, Err(errs))),
    }
}
