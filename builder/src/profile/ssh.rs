//! `[ssh]`: an SSH server for operators.
//!
//! ```toml
//! [ssh]
//! enable = true   # default false
//! ```
//!
//! The switch is sugar over what a profile could list itself, so everything it adds is
//! checked, locked and built like the rest: the server package joins
//! `[packages] include` (and so the lock), the `ssh` overlay (the sshd configuration
//! without passwords, `kiln-ssh.service` and the ordering of `ssh.service` after it)
//! joins `overlays`, and both units join `[systemd] enable`. Off, nothing is added, so
//! an image without `[ssh]` is byte for byte what it was.
//!
//! OpenSSH rather than dropbear: it is what operators' tools and habits expect
//! (`ssh-keygen`, sftp, certificates, `sshd -T`), and its `ssh-keygen` makes the host
//! keys at boot; the cost is measured in the profile guide
//! (docs/src/guide/profiles.md).

use super::dto::ProfileFile;

/// The server package.
pub const SERVER_PACKAGE: &str = "openssh-server";
/// The overlay with the server's configuration and units.
pub const OVERLAY: &str = "ssh";
/// The units the switch enables: the agent's key step, then the server.
pub const UNITS: &[&str] = &["kiln-ssh.service", "ssh.service"];

/// Adds what `[ssh] enable = true` means to the file's own lists, each once and after
/// what the file lists; does nothing when the switch is off.
pub fn apply(raw: &mut ProfileFile) {
    if !raw.ssh.enable {
        return;
    }
    push_once(&mut raw.packages.include, SERVER_PACKAGE);
    push_once(&mut raw.overlays, OVERLAY);
    for unit in UNITS {
        push_once(&mut raw.systemd.enable, unit);
    }
}

fn push_once(list: &mut Vec<String>, item: &str) {
    if !list.iter().any(|i| i == item) {
        list.push(item.to_string());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::profile::dto::from_toml;

    const BASE: &str = r#"
schema = 1
name = "t"
arches = ["x86_64"]
overlays = ["base"]
[debian]
suites = ["trixie"]
[packages]
include = ["systemd"]
[kernel]
modules = []
[kernel.package]
x86_64 = "linux-image-amd64"
[systemd]
enable = ["containerd.service"]
[disk]
size = "1GiB"
"#;

    #[test]
    fn off_by_default_adds_nothing() {
        let mut raw = from_toml(BASE).unwrap();
        apply(&mut raw);
        assert_eq!(raw.packages.include, ["systemd"]);
        assert_eq!(raw.overlays, ["base"]);
        assert_eq!(raw.systemd.enable, ["containerd.service"]);
        let mut raw = from_toml(&format!("{BASE}[ssh]\nenable = false\n")).unwrap();
        apply(&mut raw);
        assert_eq!(raw.packages.include, ["systemd"]);
    }

    #[test]
    fn on_adds_the_server_overlay_and_units_once() {
        let text = BASE.replace("\"base\"]", "\"base\", \"ssh\"]") + "[ssh]\nenable = true\n";
        let mut raw = from_toml(&text).unwrap();
        apply(&mut raw);
        apply(&mut raw);
        assert_eq!(raw.packages.include, ["systemd", "openssh-server"]);
        assert_eq!(raw.overlays, ["base", "ssh"]);
        assert_eq!(
            raw.systemd.enable,
            ["containerd.service", "kiln-ssh.service", "ssh.service"]
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_named() {
        let e = from_toml(&format!("{BASE}[ssh]\nenabled = true\n")).unwrap_err();
        assert!(e.contains("ssh") && e.contains("enabled"), "{e}");
        let e = from_toml(&format!("{BASE}[ssh]\nenable = \"yes\"\n")).unwrap_err();
        assert!(e.starts_with("ssh.enable:"), "{e}");
    }

    #[test]
    fn the_shipped_profiles_set_the_switch_as_documented() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
        let read = |name: &str| {
            let text = std::fs::read_to_string(root.join(name)).unwrap();
            from_toml(&text).unwrap().ssh.enable
        };
        // The default image stays as small as it was; homelab users expect SSH.
        assert!(!read("qemu.toml"));
        assert!(read("homelab.toml"));
    }
}
