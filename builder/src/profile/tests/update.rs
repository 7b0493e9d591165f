//! `version` and `[update]`: parsing, defaults and every refusal.

use super::*;
use kiln_contract::agent_config::{HealthCheck, DEFAULT_HEALTH_TIMEOUT_SECS};
use kiln_contract::boot::DEFAULT_TRIES;
use kiln_contract::signing::{PublicKey, SecretKey};

fn key(seed: u8) -> PublicKey {
    SecretKey::from_seed([seed; 32]).public()
}

/// MINIMAL with `top` lines before `[debian]` and `update` as its `[update]` table.
fn with_update(top: &str, update: &str) -> String {
    MINIMAL.replace("[debian]", &format!("{top}\n[debian]")) + &format!("[update]\n{update}\n")
}

/// Parses `text` as `<dir>/p.toml`, so key files are read from `dir`.
fn parse_in(dir: &Path, text: &str) -> Result<Profile, ProfileError> {
    Profile::parse(&dir.join("p.toml"), text, &overlays_dir())
}

fn update_err(update: &str) -> String {
    parse(&with_update("", update)).unwrap_err().to_string()
}

#[test]
fn version_defaults_to_0_and_is_checked_with_the_hyphen_advice() {
    let p = parse(MINIMAL).unwrap();
    assert_eq!(p.version.as_str(), DEFAULT_VERSION);
    assert!(p.version < ImageVersion::parse("0.1").unwrap());
    let p = parse(&with_update("version = \"2026.12.7\"", "")).unwrap();
    assert_eq!(p.version.as_str(), "2026.12.7");
    let e = parse(&with_update("version = \"2.0-rc1\"", ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("test.toml: field `version`: ")
            && e.contains("\"2.0~rc1\"")
            && e.contains("systemd-boot"),
        "{e}"
    );
    for bad in ["\"v1\"", "\"\"", "\"1..2\""] {
        let e = parse(&with_update(&format!("version = {bad}"), ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("field `version`") && e.contains(bad), "{e}");
    }
    for (number, quoted) in [("1", "\"1\""), ("1.4", "\"1.4\"")] {
        let e = parse(&with_update(&format!("version = {number}"), ""))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml: field `version`: ")
                && e.ends_with(&format!("version = {quoted}")),
            "{e}"
        );
    }
}

#[test]
fn update_defaults_without_the_section() {
    let p = parse(MINIMAL).unwrap();
    assert_eq!(
        p.update,
        UpdatePolicy {
            keys: vec![],
            slot_size: None,
            tries: DEFAULT_TRIES,
            health_timeout_secs: DEFAULT_HEALTH_TIMEOUT_SECS,
            health: None,
        }
    );
    assert_eq!(p.update, UpdatePolicy::default());
    assert_eq!(parse(&with_update("", "")).unwrap().update, p.update);
}

#[test]
fn update_settings_validate_into_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/a.pub"), key(1).to_text()).unwrap();
    // A comment after the key and no final newline are fine.
    let b = key(2).to_text();
    std::fs::write(
        dir.path().join("b.pub"),
        format!("{} ops@example", b.trim()),
    )
    .unwrap();
    let p = parse_in(
        dir.path(),
        &with_update(
            "version = \"1.4.0\"",
            "keys = [\"keys/a.pub\", \"b.pub\"]\nslot_size = \"1GiB\"\ntries = 5\n\
             health_timeout = \"90s\"\nhealth = [\"overlay\", \"preflight\"]",
        ),
    )
    .unwrap();
    assert_eq!(
        p.update,
        UpdatePolicy {
            keys: vec![key(1), key(2)],
            slot_size: Some(1 << 30),
            tries: 5,
            health_timeout_secs: 90,
            health: Some(vec![HealthCheck::Overlay, HealthCheck::Preflight]),
        }
    );
    for (timeout, secs) in [("30s", 30), ("10min", 600), ("24h", 86400), ("2h", 7200)] {
        let p = parse(&with_update("", &format!("health_timeout = \"{timeout}\""))).unwrap();
        assert_eq!(p.update.health_timeout_secs, secs, "{timeout}");
    }
    for tries in [1, 9] {
        let p = parse(&with_update("", &format!("tries = {tries}"))).unwrap();
        assert_eq!(p.update.tries, tries);
    }
}

#[test]
fn key_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.pub"), key(1).to_text()).unwrap();
    std::fs::write(dir.path().join("again.pub"), key(1).to_text()).unwrap();
    std::fs::write(dir.path().join("garbage.pub"), "ssh-ed25519 AAAA\n").unwrap();
    std::fs::write(
        dir.path().join("secret"),
        SecretKey::from_seed([1; 32]).to_text(),
    )
    .unwrap();
    let err = |keys: &str| {
        parse_in(dir.path(), &with_update("", &format!("keys = {keys}")))
            .unwrap_err()
            .to_string()
    };
    let p = dir.path().display().to_string();

    let e = err("[\"a.pub\", \"missing.pub\"]");
    assert!(
        e.starts_with(&format!(
            "{p}/p.toml: field `update.keys[1]`: {p}/missing.pub: cannot read"
        )) && e.contains("kiln keygen"),
        "{e}"
    );
    let e = err("[\"garbage.pub\"]");
    assert!(
        e.starts_with(&format!(
            "{p}/p.toml: field `update.keys[0]`: {p}/garbage.pub: "
        )),
        "{e}"
    );
    let e = err("[\"secret\"]");
    assert!(
        e.contains("update.keys[0]") && e.contains("secret key where a public key"),
        "{e}"
    );
    let e = err("[\"a.pub\", \"again.pub\"]");
    assert!(
        e.contains("field `update.keys[1]`")
            && e.contains(&key(1).id().to_string())
            && e.contains("update.keys[0]")
            && e.contains("a.pub")
            && e.contains("list each key once"),
        "{e}"
    );
    let e = err("[\"\"]");
    assert!(e.contains("update.keys[0]") && e.contains("empty"), "{e}");
}

#[test]
fn tries_slot_size_and_timeout_are_checked_against_their_ranges() {
    for bad in ["0", "10", "-1", "\"3\"", "2.5"] {
        let e = update_err(&format!("tries = {bad}"));
        assert!(
            e.starts_with("test.toml: field `update.tries`: ")
                && e.contains(bad)
                && e.contains("use 1 to 9"),
            "{e}"
        );
    }
    for (bad, needle) in [
        ("\"29s\"", "use 30s to 24h"),
        ("\"25h\"", "use 30s to 24h"),
        ("\"0min\"", "use 30s to 24h"),
        ("\"600\"", "no unit"),
        ("600", "with its unit"),
        ("\"ten minutes\"", "not a duration"),
        ("\"10 fortnights\"", "not a duration"),
    ] {
        let e = update_err(&format!("health_timeout = {bad}"));
        assert!(
            e.starts_with("test.toml: field `update.health_timeout`: ") && e.contains(needle),
            "{bad}: {e}"
        );
    }
    for (bad, needle) in [
        ("\"1 furlong\"", "unknown unit"),
        ("\"32MiB\"", "at least 64 MiB"),
        ("\"100000K\"", "whole MiB"),
    ] {
        let e = update_err(&format!("slot_size = {bad}"));
        assert!(
            e.starts_with("test.toml: field `update.slot_size`: ") && e.contains(needle),
            "{bad}: {e}"
        );
    }
}

#[test]
fn health_checks_are_named_and_cluster_needs_a_cluster() {
    for (list, field, needle) in [
        (
            "[\"preflight\", \"vibes\"]",
            "update.health[1]",
            "unknown health check \"vibes\"",
        ),
        (
            "[\"overlay\", \"overlay\"]",
            "update.health[1]",
            "listed twice",
        ),
        ("[]", "update.health", "empty"),
        (
            "[\"cluster\"]",
            "update.health[0]",
            "needs a [cluster] section",
        ),
    ] {
        let e = update_err(&format!("health = {list}"));
        assert!(
            e.starts_with(&format!("test.toml: field `{field}`: ")) && e.contains(needle),
            "{list}: {e}"
        );
    }
    assert!(update_err("health = [\"vibes\"]").contains("preflight, overlay, cluster"));
    let text = format!(
        "{MINIMAL}{RUNTIME}\n[cluster]\nkind = \"k3s\"\nkubernetes = \"1.36\"\n\
         [update]\nhealth = [\"preflight\", \"cluster\"]\n"
    );
    assert_eq!(
        parse(&text).unwrap().update.health,
        Some(vec![HealthCheck::Preflight, HealthCheck::Cluster])
    );
}

#[test]
fn unknown_update_fields_are_refused() {
    let e = update_err("tires = 3");
    assert!(
        e.starts_with("test.toml:") && e.contains("tires") && !e.contains('\n'),
        "{e}"
    );
}

/// Every profile in profiles/, by file name.
fn every_shipped_profile() -> Vec<(String, Profile)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    names
        .iter()
        .map(|p| (p.display().to_string(), Profile::load(p).unwrap()))
        .collect()
}

#[test]
fn every_shipped_profile_is_versioned_and_ready_for_updates() {
    for (file, p) in every_shipped_profile() {
        assert_eq!(p.version.as_str(), "1.0.0", "{file}");
        assert!(
            p.systemd.enable.iter().any(|u| u == "kiln-update.service"),
            "{file}: kiln-update.service is not enabled"
        );
        assert!(
            p.systemd
                .enable
                .iter()
                .any(|u| u == "kiln-update-check.timer"),
            "{file}: kiln-update-check.timer is not enabled"
        );
        // The agent reads EFI variables (boot counting) through efivarfs.
        assert!(
            p.kernel.module_sets.iter().any(|s| s == "efi"),
            "{file}: no efi module set"
        );
        if ["qemu", "homelab"].contains(&p.name.as_str()) {
            assert!(
                p.kernel.module_sets.iter().any(|s| s == "watchdog"),
                "{file}: no watchdog module set"
            );
        }
    }
}
