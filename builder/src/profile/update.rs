//! `[update]`: how images built from a profile take A/B updates: the public keys a
//! bundle must be signed with, the size of each root slot, and how a new version
//! proves itself (boot tries, health checks and their time limit).
//!
//! ```toml
//! [update]
//! keys = ["keys/update.pub"]      # relative to the profile's folder
//! slot_size = "1GiB"              # default: the root's size x 1.5, rounded up to 64 MiB
//! tries = 3                       # 1 to 9
//! health_timeout = "10min"        # 30s to 24h
//! health = ["preflight", "overlay", "cluster"]
//! ```

use std::path::{Path, PathBuf};

use kiln_contract::agent_config::{HealthCheck, UpdateTable, DEFAULT_HEALTH_TIMEOUT_SECS};
use kiln_contract::boot::DEFAULT_TRIES;
use kiln_contract::signing::PublicKey;
use kiln_contract::version::ImageVersion;

use super::dto::UpdateFile;
use super::{format_size, parse_size, ProfileError};

/// The fewest boot attempts a new version can get.
pub const MIN_TRIES: u32 = 1;
/// The most boot attempts a new version can get (one digit in the UKI's file name).
pub const MAX_TRIES: u32 = 9;
/// The shortest health time limit: a node needs that long to reach its checks.
pub const MIN_HEALTH_TIMEOUT_SECS: u64 = 30;
/// The longest health time limit: a day (a version on trial is not yet safe).
pub const MAX_HEALTH_TIMEOUT_SECS: u64 = 24 * 3600;
/// The smallest root slot: what the smallest disk's root leaves room for.
pub const MIN_SLOT_SIZE: u64 = 64 << 20;

/// A validated `[update]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdatePolicy {
    /// Keys an update bundle may be signed with, in profile order; empty: the image
    /// accepts no bundles.
    pub keys: Vec<PublicKey>,
    /// Bytes of each root slot; `None`: sized from the root when the disk is planned.
    pub slot_size: Option<u64>,
    /// Boot attempts a newly installed version gets before systemd-boot falls back.
    pub tries: u32,
    /// Seconds a new version has to become healthy after boot.
    pub health_timeout_secs: u64,
    /// What "healthy" means; `None`: the agent's default (preflight, plus the overlay
    /// and the cluster where the node has them).
    pub health: Option<Vec<HealthCheck>>,
}

impl Default for UpdatePolicy {
    fn default() -> UpdatePolicy {
        UpdatePolicy {
            keys: Vec::new(),
            slot_size: None,
            tries: DEFAULT_TRIES,
            health_timeout_secs: DEFAULT_HEALTH_TIMEOUT_SECS,
            health: None,
        }
    }
}

impl UpdatePolicy {
    /// agent.toml's `[update]` table for the image `image` at `version`, every value
    /// spelled out so the file shows what the node does.
    pub fn to_table(&self, image: &str, version: &ImageVersion) -> UpdateTable {
        UpdateTable {
            image: image.to_string(),
            version: version.to_string(),
            tries: Some(self.tries),
            health_timeout_secs: Some(self.health_timeout_secs),
            health: self.health.clone(),
        }
    }
}

/// Validates `[update]`. Key files are read relative to the profile's folder;
/// `has_cluster` says whether the profile has a `[cluster]` (the "cluster" check needs it).
pub(super) fn validate(
    path: &Path,
    raw: &UpdateFile,
    has_cluster: bool,
) -> Result<UpdatePolicy, ProfileError> {
    let invalid = |field: &str, message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field: field.to_string(),
        message,
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let mut keys: Vec<(PublicKey, PathBuf)> = Vec::new();
    for (i, name) in raw.keys.iter().enumerate() {
        let field = format!("update.keys[{i}]");
        if name.trim().is_empty() {
            return Err(invalid(
                &field,
                "empty: give a public key file `kiln keygen` wrote (NAME.pub)".into(),
            ));
        }
        let file = base.join(name);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            invalid(
                &field,
                format!(
                    "{}: cannot read the public key: {e}; make one with `kiln keygen` \
                     and give its .pub file, relative to the profile's folder",
                    file.display()
                ),
            )
        })?;
        let key = PublicKey::parse_text(&text)
            .map_err(|e| invalid(&field, format!("{}: {e}", file.display())))?;
        if let Some((j, (_, other))) = keys
            .iter()
            .enumerate()
            .find(|(_, (k, _))| k.id() == key.id())
        {
            return Err(invalid(
                &field,
                format!(
                    "{}: key {} is already listed as update.keys[{j}] ({}); list each key once",
                    file.display(),
                    key.id(),
                    other.display()
                ),
            ));
        }
        keys.push((key, file));
    }

    let slot_size = match &raw.slot_size {
        None => None,
        Some(s) => {
            let n = parse_size(s).map_err(|m| invalid("update.slot_size", m))?;
            if n < MIN_SLOT_SIZE || n % (1 << 20) != 0 {
                return Err(invalid(
                    "update.slot_size",
                    format!(
                        "{s:?} ({}): use whole MiB, at least {}; or leave it out to size \
                         the slots from the root",
                        format_size(n),
                        format_size(MIN_SLOT_SIZE)
                    ),
                ));
            }
            Some(n)
        }
    };

    let tries = match &raw.tries {
        None => DEFAULT_TRIES,
        Some(v) => v
            .as_integer()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (MIN_TRIES..=MAX_TRIES).contains(n))
            .ok_or_else(|| {
                invalid(
                    "update.tries",
                    format!(
                        "{v}: use {MIN_TRIES} to {MAX_TRIES} boot attempts (default {DEFAULT_TRIES})"
                    ),
                )
            })?,
    };

    let health_timeout_secs = match &raw.health_timeout {
        None => DEFAULT_HEALTH_TIMEOUT_SECS,
        Some(v) => {
            let secs = v
                .as_str()
                .ok_or_else(|| {
                    format!("{v}: give a duration with its unit, e.g. \"10min\" or \"90s\"")
                })
                .and_then(parse_duration)
                .map_err(|m| invalid("update.health_timeout", m))?;
            if !(MIN_HEALTH_TIMEOUT_SECS..=MAX_HEALTH_TIMEOUT_SECS).contains(&secs) {
                return Err(invalid(
                    "update.health_timeout",
                    format!(
                        "{v} is {secs} s: use 30s to 24h (default {}min)",
                        DEFAULT_HEALTH_TIMEOUT_SECS / 60
                    ),
                ));
            }
            secs
        }
    };

    let health = match &raw.health {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(invalid(
                "update.health",
                format!(
                    "empty: list what a healthy node must pass ({}), or leave `health` out \
                     for the default",
                    HealthCheck::names()
                ),
            ))
        }
        Some(list) => {
            let mut checks = Vec::new();
            for (i, name) in list.iter().enumerate() {
                let field = format!("update.health[{i}]");
                let Some(check) = HealthCheck::from_name(name) else {
                    return Err(invalid(
                        &field,
                        format!(
                            "unknown health check {name:?}; known: {}",
                            HealthCheck::names()
                        ),
                    ));
                };
                if checks.contains(&check) {
                    return Err(invalid(
                        &field,
                        format!("{name:?} is listed twice; list each check once"),
                    ));
                }
                if check == HealthCheck::Cluster && !has_cluster {
                    return Err(invalid(
                        &field,
                        "\"cluster\" needs a [cluster] section: this image joins no \
                         cluster; remove it or add [cluster]"
                            .into(),
                    ));
                }
                checks.push(check);
            }
            Some(checks)
        }
    };

    Ok(UpdatePolicy {
        keys: keys.into_iter().map(|(k, _)| k).collect(),
        slot_size,
        tries,
        health_timeout_secs,
        health,
    })
}

/// Parses a duration: a whole number and a unit, `s`/`sec`, `m`/`min` or `h`
/// (e.g. "90s", "10min", "2h"). Returns seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a duration like \"10min\", \"90s\" or \"1h\"");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "s" | "sec" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "" => {
            return Err(format!(
                "{text:?} has no unit; write e.g. \"{n}s\" or \"{n}min\""
            ))
        }
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("10min"), Ok(600));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration(" 2h "), Ok(7200));
        assert_eq!(parse_duration("45 sec"), Ok(45));
        assert!(parse_duration("600").unwrap_err().contains("no unit"));
        for bad in [
            "",
            "min",
            "1.5h",
            "10 parsecs",
            "-5s",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
