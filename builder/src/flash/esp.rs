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
    text.parse::<toml::Table>()
        .map_err(|e| bad(format!("it is not TOML: {}", e.message())))?;
    Ok(bytes)
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
