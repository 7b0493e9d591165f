//! The machine-id and the boot counter, kept on the persistent /var so the node keeps
//! its identity across reboots while /etc stays read-only.
//!
//! systemd 252's PID 1 takes `--machine-id=`: it then ignores what /etc/machine-id holds
//! and, /etc being read-only, writes the id to /run/machine-id and bind-mounts it over
//! /etc/machine-id. The image must ship /etc/machine-id as an existing, empty file:
//! missing on a read-only /etc stops systemd ("System cannot boot: Missing
//! /etc/machine-id"), and `uninitialized` would make every boot a first boot.

use super::var::VarMounted;
use super::{say, Fatal, InitSys, SYSROOT};

/// Where the machine-id is kept, relative to the root.
pub const MACHINE_ID_FILE: &str = "/var/lib/kiln/machine-id";
/// The boot counter, relative to the root.
pub const BOOTS_FILE: &str = "/var/lib/kiln/boots";

/// Formats 16 random bytes as a machine-id: 32 lowercase hex digits with the version 4
/// and variant bits set, as systemd makes them.
pub fn format_machine_id(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// True for 32 lowercase hex digits, not all zero (what systemd accepts as an id).
pub fn valid_machine_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        && id.bytes().any(|c| c != b'0')
}

fn read_machine_id(sys: &mut dyn InitSys, path: &str) -> Option<String> {
    match sys.read_file(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let id = text.trim_end_matches('\n');
            if valid_machine_id(id) {
                return Some(id.to_string());
            }
            say(
                sys,
                &format!("warning: {path} holds {id:?}, not a machine-id; making a new one"),
            );
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            say(
                sys,
                &format!("warning: cannot read {path}: {e}; making a new machine-id"),
            );
            None
        }
    }
}

/// Counts this boot in [`BOOTS_FILE`]; returns the new count.
fn count_boot(sys: &mut dyn InitSys) -> Result<u64, String> {
    let path = format!("{SYSROOT}{BOOTS_FILE}");
    let before = match sys.read_file(&path) {
        Ok(bytes) => match String::from_utf8_lossy(&bytes).trim().parse::<u64>() {
            Ok(n) => n,
            Err(_) => {
                say(
                    sys,
                    &format!("warning: {path} does not hold a number; counting from 0"),
                );
                0
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("reading {path}: {e}")),
    };
    let n = before.saturating_add(1);
    sys.write_atomic(&path, format!("{n}\n").as_bytes(), 0o644)
        .map_err(|e| format!("writing {path}: {e}"))?;
    Ok(n)
}

/// Arguments for the system's init: `--machine-id=` from /var when /var is persistent
/// (created there on first boot), nothing otherwise (systemd then makes a transient one).
/// Also counts the boot. Problems only warn: the boot goes on with a transient id.
pub(super) fn machine_id(sys: &mut dyn InitSys, var: &VarMounted) -> Result<Vec<String>, Fatal> {
    if !matches!(var, VarMounted::Persistent(_)) {
        say(
            sys,
            "machine-id: /var is not persistent; systemd makes a transient machine-id and \
             boots are not counted",
        );
        return Ok(Vec::new());
    }
    let dir = format!("{SYSROOT}/var/lib/kiln");
    if let Err(e) = sys.mkdir(&dir) {
        say(
            sys,
            &format!("warning: cannot create {dir}: {e}; the machine-id is transient"),
        );
        return Ok(Vec::new());
    }
    let path = format!("{SYSROOT}{MACHINE_ID_FILE}");
    let id = match read_machine_id(sys, &path) {
        Some(id) => {
            say(sys, &format!("machine-id {id} (from {MACHINE_ID_FILE})"));
            id
        }
        None => {
            let mut b = [0u8; 16];
            if let Err(e) = sys.random(&mut b) {
                say(
                    sys,
                    &format!("warning: reading /dev/urandom: {e}; the machine-id is transient"),
                );
                return Ok(Vec::new());
            }
            let id = format_machine_id(b);
            if let Err(e) = sys.write_atomic(&path, format!("{id}\n").as_bytes(), 0o444) {
                say(
                    sys,
                    &format!("warning: writing {path}: {e}; the machine-id is transient"),
                );
                return Ok(Vec::new());
            }
            say(
                sys,
                &format!("machine-id {id} (new, saved in {MACHINE_ID_FILE})"),
            );
            id
        }
    };
    match count_boot(sys) {
        Ok(n) => say(sys, &format!("boot {n} of this /var ({BOOTS_FILE})")),
        Err(e) => say(sys, &format!("warning: boots not counted: {e}")),
    }
    Ok(vec![format!("--machine-id={id}")])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ids_look_like_systemds() {
        let id = format_machine_id([0xff; 16]);
        assert_eq!(id, "ffffffffffff4fffbfffffffffffffff");
        assert!(valid_machine_id(&id));
        let id = format_machine_id([0; 16]);
        assert_eq!(id, "00000000000040008000000000000000");
        assert!(valid_machine_id(&id));
        for bad in [
            "",
            "00000000000000000000000000000000",
            "ABCDEF00000040008000000000000000",
            "0000000000004000800000000000000",
            "0000000000004000800000000000000g",
            "00000000-0000-4000-8000-000000000000",
        ] {
            assert!(!valid_machine_id(bad), "{bad:?} accepted");
        }
    }
}
