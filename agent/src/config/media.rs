//! Reading a few files from the root folder of a removable-style volume (the ESP, a
//! cidata stick or CD): mount read-only, read, unmount.

use super::schema::MAX_CONFIG_BYTES;
use super::{ConfigSys, READ_LIMIT};
use crate::report::mountinfo::parse_mountinfo;

/// A file found on a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// The name as the volume spells it (`KILN.TOML`).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Where `dev` is already mounted, if anywhere: the kernel refuses a read-only mount of a
/// filesystem that is mounted read-write elsewhere (EBUSY), e.g. an ESP that systemd
/// mounted on /efi, and then that mount is read instead.
fn existing_mount(sys: &mut dyn ConfigSys, dev: &str) -> Option<String> {
    let text = sys.read_file("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&String::from_utf8_lossy(&text))
        .into_iter()
        .find(|m| m.source == dev)
        .map(|m| m.mount_point)
}

/// Mounts `dev` (`fstype`) read-only at `target` and reads, from its root folder, each
/// of `names` that exists (matched without regard to case), in the order of `names`.
/// The error names the device and what failed.
pub fn read_files(
    sys: &mut dyn ConfigSys,
    dev: &str,
    fstype: &str,
    target: &str,
    names: &[&str],
) -> Result<Vec<VolumeFile>, String> {
    let (dir, mounted) = match sys.mount_ro(dev, target, fstype) {
        Ok(()) => (target.to_string(), true),
        Err(e) => match existing_mount(sys, dev) {
            Some(dir) => (dir, false),
            None => return Err(format!("cannot mount it ({fstype}, read-only): {e}")),
        },
    };
    let result = read_root_files(sys, &dir, names);
    if mounted {
        if let Err(e) = sys.umount(target) {
            sys.say(&format!("kiln-config: note: unmounting {target}: {e}"));
        }
    }
    result
}

fn read_root_files(
    sys: &mut dyn ConfigSys,
    dir: &str,
    names: &[&str],
) -> Result<Vec<VolumeFile>, String> {
    let mut entries = sys
        .list_dir(dir)
        .map_err(|e| format!("listing its root folder: {e}"))?;
    entries.sort();
    let mut found = Vec::new();
    for want in names {
        let Some(name) = entries.iter().find(|e| e.eq_ignore_ascii_case(want)) else {
            continue;
        };
        let path = format!("{}/{name}", dir.trim_end_matches('/'));
        let bytes = sys
            .read_prefix(&path, READ_LIMIT)
            .map_err(|e| format!("reading {name}: {e}"))?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(format!(
                "{name} is larger than the {MAX_CONFIG_BYTES} bytes a config may have"
            ));
        }
        found.push(VolumeFile {
            name: name.clone(),
            bytes,
        });
    }
    Ok(found)
}
