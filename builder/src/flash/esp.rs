//! `kiln flash --config kiln.toml`: the node's config file on the flashed ESP,
//! where the agent's `esp` channel reads it (`/kiln.toml` in the ESP's root).
//!
//! The file goes into a temporary copy of the image's ESP with mtools'
//! `mcopy` (the FAT referee the project's tests already use), and the sectors
//! that changed become patches of the plan: the target is written once, the
//! config is covered by the read-back check, and a config that does not fit or
//! is not TOML stops the flash before anything is written.

use std::ops::Range;
use std::path::Path;

use super::plan::Patch;
use super::FlashError;
use kiln_contract::ssh_key;

use crate::inspect::fat::FatVolume;
use crate::runner::{Cmd, Runner};

/// Where the agent looks for the config on the ESP.
pub const ESP_CONFIG: &str = "kiln.toml";

/// Reads and checks the config file: UTF-8 TOML.
pub fn read_config(path: &Path) -> Result<Vec<u8>, FlashError> {
    let bytes =
        std::fs::read(path).map_err(|source| FlashError::io(path, "reading the config", source))?;
    let bad = |why: String| FlashError::BadConfig {
        path: path.to_path_buf(),
        why,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("it is not UTF-8 text".into()))?;
    let table = text
        .parse::<toml::Table>()
        .map_err(|e| bad(format!("it is not TOML: {}", e.message())))?;
    if let Some(keys) = table.get(ssh_key::KEY) {
        check_ssh_keys(keys).map_err(bad)?;
    }
    Ok(bytes)
}

/// Checks `ssh_authorized_keys` as the node will (the contract's check), so a line that
/// is not a key stops the flash before anything is written rather than costing the
/// node its whole config file at boot. The first bad entry is named.
fn check_ssh_keys(value: &toml::Value) -> Result<(), String> {
    let key = ssh_key::KEY;
    let toml::Value::Array(items) = value else {
        return Err(format!(
            "{key}: expected a list of public key lines, got {} {value}",
            value.type_str()
        ));
    };
    for (i, item) in items.iter().enumerate() {
        let toml::Value::String(line) = item else {
            return Err(format!(
                "{key}[{i}]: expected a string (one public key line), got {} {item}",
                item.type_str()
            ));
        };
        ssh_key::AuthorizedKey::parse(line)
            .map_err(|why| format!("{key}[{i}]: {}: {why}", ssh_key::shown(line)))?;
    }
    Ok(())
}

/// Sector runs where `new` differs from `old`, as patches at `base`.
fn changed_sectors(old: &[u8], new: &[u8], base: u64) -> Vec<Patch> {
    let mut out: Vec<Patch> = Vec::new();
    let mut last_end = None;
    for (i, (a, b)) in old.chunks(512).zip(new.chunks(512)).enumerate() {
        if a == b {
            continue;
        }
        let at = base + (i * 512) as u64;
        match out.last_mut() {
            Some(p) if last_end == Some(at) => p.bytes.extend_from_slice(b),
            _ => out.push(Patch {
                what: "the node config on the ESP",
                offset: at,
                bytes: b.to_vec(),
            }),
        }
        last_end = Some(at + b.len() as u64);
    }
    out
}

/// The patches that put `config` (bytes of `config_path`) at `/kiln.toml` on
/// the ESP occupying `esp` (target bytes) whose image bytes are `esp_bytes`.
pub fn config_patches(
    config_path: &Path,
    config: &[u8],
    esp: &Range<u64>,
    esp_bytes: &[u8],
    runner: &dyn Runner,
) -> Result<Vec<Patch>, FlashError> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-flash-esp-")
        .tempdir()
        .map_err(|source| FlashError::io(&std::env::temp_dir(), "creating a folder in", source))?;
    let img = dir.path().join("esp.img");
    std::fs::write(&img, esp_bytes).map_err(|source| FlashError::io(&img, "writing", source))?;
    let staged = dir.path().join(ESP_CONFIG);
    std::fs::write(&staged, config).map_err(|source| FlashError::io(&staged, "writing", source))?;
    let cmd = Cmd::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-D", "o", "-i"])
        .arg(&img)
        .arg(&staged)
        .arg(format!("::/{ESP_CONFIG}"));
    runner.run(&cmd).map_err(|source| FlashError::Config {
        path: config_path.to_path_buf(),
        why: source.to_string(),
    })?;
    let new = std::fs::read(&img).map_err(|source| FlashError::io(&img, "reading", source))?;
    // Our own FAT reader must find the file the agent will look for.
    let back = FatVolume::open(new.as_slice())
        .and_then(|v| v.read_file(new.as_slice(), ESP_CONFIG))
        .map_err(|e| FlashError::Config {
            path: config_path.to_path_buf(),
            why: format!("the ESP with it does not read back: {e}"),
        })?;
    if back != config {
        return Err(FlashError::Config {
            path: config_path.to_path_buf(),
            why: "the ESP with it reads back other bytes".into(),
        });
    }
    Ok(changed_sectors(esp_bytes, &new, esp.start))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn changed_sectors_join_into_runs() {
        let old = vec![0u8; 512 * 6];
        let mut new = old.clone();
        new[512] = 1;
        new[1024 + 5] = 2;
        new[512 * 5] = 3;
        let p = changed_sectors(&old, &new, 1 << 20);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].offset, p[0].bytes.len()), ((1 << 20) + 512, 1024));
        assert_eq!((p[1].offset, p[1].bytes.len()), ((1 << 20) + 2560, 512));
    }

    #[test]
    fn a_key_line_that_is_not_a_key_is_refused_with_its_entry() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kiln.toml");
        let good =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHMsjRSweIpHvgMa2kaO4k+xKQ/cY3L4TLcVYlHtLKEJ a";
        std::fs::write(&p, format!("ssh_authorized_keys = [\"{good}\"]\n")).unwrap();
        read_config(&p).unwrap();
        std::fs::write(
            &p,
            format!("ssh_authorized_keys = [\"{good}\", \"ssh-ed25519 AAAA!\"]\n"),
        )
        .unwrap();
        let e = read_config(&p).unwrap_err().to_string();
        assert!(
            e.contains("kiln.toml: not a node config: ssh_authorized_keys[1]: \"ssh-ed25519 AAAA!\": the key data is not base64"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
        std::fs::write(&p, "ssh_authorized_keys = \"ssh-ed25519 AAAA\"\n").unwrap();
        let e = read_config(&p).unwrap_err().to_string();
        assert!(e.contains("ssh_authorized_keys: expected a list"), "{e}");
    }

    #[test]
    fn config_must_be_toml() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kiln.toml");
        std::fs::write(&p, "hostname = \"n1\"\n").unwrap();
        assert!(read_config(&p).is_ok());
        std::fs::write(&p, "hostname = \n").unwrap();
        let e = read_config(&p).unwrap_err().to_string();
        assert!(e.contains("kiln.toml") && e.contains("not TOML"), "{e}");
    }
}
