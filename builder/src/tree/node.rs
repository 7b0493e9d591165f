//! Node files that come from the profile and the build's options rather
//! than from an overlay: the agent's settings, the debug shell, and what A/B
//! updates need in the root (the image's name and version in os-release, the
//! trusted update keys, the ESP's mount point).

use kiln_contract::boot::{ESP_MOUNT, KEYS_DIR};
use kiln_contract::signing::PublicKey;
use kiln_contract::version::ImageVersion;

use super::{FileTree, Kind, Node, TreeError};
use crate::profile::{Agent, Profile};

/// Where the agent's settings go, as the tree names paths (no leading `/`).
pub fn agent_toml_path() -> &'static str {
    kiln_contract::agent_config::PATH.trim_start_matches('/')
}

/// The getty drop-ins of the debug shell. Empty `ExecStart=` clears the
/// packaged command first (systemd appends otherwise); agetty's
/// `--autologin root` runs `login -f root`, which skips authentication.
pub const DEBUG_SHELL_DROPINS: [(&str, &str); 2] = [
    (
        "etc/systemd/system/serial-getty@.service.d/kiln-debug-shell.conf",
        "# kiln build --debug-shell: root on the serial console without a password.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM\n",
    ),
    (
        "etc/systemd/system/getty@.service.d/kiln-debug-shell.conf",
        "# kiln build --debug-shell: root on the virtual consoles without a password.\n\
         [Service]\n\
         ExecStart=\n\
         ExecStart=-/sbin/agetty --autologin root --noclear - $TERM\n",
    ),
];

/// Writes `/usr/lib/kiln/agent.toml` from `agent` alone (no `[update]` table) and,
/// with `debug_shell`, the getty autologin drop-ins: for roots built by hand in tests.
/// A build uses [`apply_profile`].
pub fn apply(tree: &mut FileTree, agent: &Agent, debug_shell: bool) -> Result<(), TreeError> {
    write_settings(tree, agent.to_toml(), debug_shell)
}

/// Everything the profile puts into the root itself: agent.toml with its `[update]`
/// table, the debug shell when asked for, `IMAGE_ID`/`IMAGE_VERSION` in os-release,
/// the trusted update keys and the ESP's mount point. Runs after the overlays, so
/// the os-release it stamps is the one the image ships (and the UKI's `.osrel`).
pub fn apply_profile(tree: &mut FileTree, profile: &Profile) -> Result<(), TreeError> {
    write_settings(tree, profile.agent_toml(), profile.extras.debug_shell)?;
    stamp_os_release(tree, &profile.name, &profile.version)?;
    write_update_keys(tree, &profile.update.keys)?;
    add_esp_mount(tree)
}

fn write_settings(
    tree: &mut FileTree,
    agent_toml: String,
    debug_shell: bool,
) -> Result<(), TreeError> {
    let epoch = tree.epoch();
    tree.insert(
        agent_toml_path(),
        Node::file(agent_toml.into_bytes(), 0o644, epoch, "kiln:agent"),
    )?;
    if debug_shell {
        for (path, text) in DEBUG_SHELL_DROPINS {
            tree.insert(
                path,
                Node::file(text.as_bytes().to_vec(), 0o644, epoch, "kiln:debug-shell"),
            )?;
        }
    }
    Ok(())
}

/// The os-release files of a root: `/usr/lib/os-release` and whatever
/// `/etc/os-release` is (Debian's is a symlink to the first).
const OS_RELEASE: [&str; 2] = ["usr/lib/os-release", "etc/os-release"];

/// Sets `IMAGE_ID=<image>` and `IMAGE_VERSION=<version>` in the root's os-release,
/// replacing any such lines already there. systemd-boot sorts the UKIs by the
/// `IMAGE_VERSION` of their `.osrel` (made from this file), so the newest version
/// boots first; `IMAGE_ID` tells tools which image a node runs. The file keeps its
/// mode and owner. An error when the root has no os-release (every Debian root has:
/// base-files ships it).
pub fn stamp_os_release(
    tree: &mut FileTree,
    image: &str,
    version: &ImageVersion,
) -> Result<(), TreeError> {
    let mut files: Vec<String> = Vec::new();
    for path in OS_RELEASE {
        let real = match tree.resolve(path) {
            Ok(real) => real,
            Err(TreeError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        // A hard link shares its data with its target: edit the target.
        let real = match tree.get(&real).map(|n| &n.kind) {
            Some(Kind::Hardlink(target)) => target.clone(),
            _ => real,
        };
        if !files.contains(&real) {
            files.push(real);
        }
    }
    if files.is_empty() {
        return Err(TreeError::NotFound(OS_RELEASE[0].to_string()));
    }
    for real in files {
        let text = tree.read(&real)?;
        let stamped = stamped_os_release(&String::from_utf8_lossy(&text), image, version);
        let Some(node) = tree.get_mut(&real) else {
            return Err(TreeError::NotFound(real));
        };
        node.kind = Kind::File(stamped.into_bytes().into());
        node.origin = "kiln:os-release".into();
    }
    Ok(())
}

/// os-release text with the image's two lines at the end instead of any it had.
fn stamped_os_release(text: &str, image: &str, version: &ImageVersion) -> String {
    let mut out: String = text
        .lines()
        .filter(|l| {
            let key = l.trim_start().split('=').next().unwrap_or_default();
            key != "IMAGE_ID" && key != "IMAGE_VERSION"
        })
        .flat_map(|l| [l, "\n"])
        .collect();
    // The profile name and the version grammar need no quoting in os-release.
    out.push_str(&format!("IMAGE_ID={image}\nIMAGE_VERSION={version}\n"));
    out
}

/// Writes each trusted key to [`KEYS_DIR`] as `<key id>.pub` in its text form. The
/// folder is made even with no keys, so the agent finds it and can say the image
/// trusts none.
pub fn write_update_keys(tree: &mut FileTree, keys: &[PublicKey]) -> Result<(), TreeError> {
    let epoch = tree.epoch();
    let dir = keys_dir_path();
    tree.insert(dir, Node::dir(0o755, epoch, "kiln:update-keys"))?;
    for key in keys {
        tree.insert(
            &format!("{dir}/{}", key.id().file_name()),
            Node::file(key.to_text().into_bytes(), 0o644, epoch, "kiln:update-keys"),
        )?;
    }
    Ok(())
}

/// Where the update keys go, as the tree names paths (no leading `/`).
pub fn keys_dir_path() -> &'static str {
    KEYS_DIR.trim_start_matches('/')
}

/// Makes the empty folder the node mounts its ESP on ([`ESP_MOUNT`]): the root is
/// read-only at boot, so the mount point must already be in the image.
pub fn add_esp_mount(tree: &mut FileTree) -> Result<(), TreeError> {
    let epoch = tree.epoch();
    tree.insert(
        ESP_MOUNT.trim_start_matches('/'),
        Node::dir(0o755, epoch, "kiln:esp-mount"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Channel;
    use kiln_contract::agent_config::{HealthCheck, SettingsFile, UpdateTable};

    #[test]
    fn agent_settings_always_debug_shell_only_when_asked() {
        let agent = Agent {
            channels: vec![Channel::Esp, Channel::Cmdline],
            cluster: None,
        };
        let mut t = FileTree::new(7);
        apply(&mut t, &agent, false).unwrap();
        assert_eq!(agent_toml_path(), "usr/lib/kiln/agent.toml");
        let text = String::from_utf8(t.read(agent_toml_path()).unwrap().to_vec()).unwrap();
        assert!(text.contains("channels = [\"esp\", \"cmdline\"]"), "{text}");
        assert_eq!(t.get(agent_toml_path()).unwrap().mode, 0o644);
        assert!(!t.contains(DEBUG_SHELL_DROPINS[0].0));
        apply(&mut t, &agent, true).unwrap();
        for (path, _) in DEBUG_SHELL_DROPINS {
            let text = String::from_utf8(t.read(path).unwrap().to_vec()).unwrap();
            assert!(text.contains("--autologin root"), "{text}");
            // The reset must come before the new command.
            let reset = text.find("ExecStart=\n").unwrap();
            assert!(reset < text.find("ExecStart=-").unwrap());
        }
    }

    /// A root as Debian's base-files leaves it: os-release in /usr/lib, a symlink in /etc.
    fn debian_root() -> FileTree {
        let mut t = FileTree::new(7);
        let text = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\nIMAGE_VERSION=old\n";
        t.insert(
            "usr/lib/os-release",
            Node::file(text.as_bytes().to_vec(), 0o644, 7, "pkg:base-files"),
        )
        .unwrap();
        t.insert(
            "etc/os-release",
            Node::symlink("../usr/lib/os-release", 7, "pkg:base-files"),
        )
        .unwrap();
        t
    }

    fn key(seed: u8) -> PublicKey {
        kiln_contract::signing::SecretKey::from_seed([seed; 32]).public()
    }

    /// A profile in a temporary folder with `keys` as key files under keys/.
    fn profile(dir: &std::path::Path, keys: &[PublicKey], update: &str) -> Profile {
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let mut names = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            std::fs::write(dir.join(format!("keys/k{i}.pub")), k.to_text()).unwrap();
            names.push(format!("\"keys/k{i}.pub\""));
        }
        let text = format!(
            "schema = 1\nname = \"edge\"\nversion = \"2.1~rc1\"\narches = [\"x86_64\"]\n\
             [debian]\nsuites = [\"trixie\"]\n[kernel]\nmodules = [\"virtio\"]\n\
             [kernel.package]\nx86_64 = \"linux-image-amd64\"\n[disk]\nsize = \"1GiB\"\n\
             [agent]\nchannels = [\"esp\"]\n[update]\nkeys = [{}]\n{update}\n",
            names.join(", ")
        );
        let path = dir.join("edge.toml");
        std::fs::write(&path, text).unwrap();
        Profile::load(&path).unwrap()
    }

    #[test]
    fn the_profile_stamps_os_release_and_adds_keys_esp_mount_and_update_settings() {
        let dir = tempfile::tempdir().unwrap();
        let keys = [key(1), key(2)];
        let p = profile(
            dir.path(),
            &keys,
            "tries = 2\nhealth_timeout = \"5min\"\nhealth = [\"preflight\", \"overlay\"]",
        );
        let mut t = debian_root();
        apply_profile(&mut t, &p).unwrap();

        // os-release: the old IMAGE_VERSION replaced, both lines last, through the symlink.
        let want = "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\n\
                    IMAGE_ID=edge\nIMAGE_VERSION=2.1~rc1\n";
        assert_eq!(&*t.read("etc/os-release").unwrap(), want.as_bytes());
        assert_eq!(
            t.get("etc/os-release").unwrap().kind,
            Kind::Symlink("../usr/lib/os-release".into())
        );
        assert_eq!(t.get("usr/lib/os-release").unwrap().mode, 0o644);

        // The keys, by id, in their text form.
        assert_eq!(keys_dir_path(), "usr/lib/kiln/update-keys");
        assert_eq!(t.get(keys_dir_path()).unwrap().mode, 0o755);
        let mut files = t.children(keys_dir_path());
        files.sort();
        let mut want: Vec<String> = keys.iter().map(|k| k.id().file_name()).collect();
        want.sort();
        assert_eq!(files, want);
        for k in &keys {
            let path = format!("{}/{}.pub", keys_dir_path(), k.id());
            let text = String::from_utf8(t.read(&path).unwrap().to_vec()).unwrap();
            assert_eq!(PublicKey::parse_text(&text).unwrap(), *k);
            assert_eq!(t.get(&path).unwrap().mode, 0o644);
        }

        // The ESP's mount point: an empty folder.
        let efi = t.get("efi").unwrap();
        assert_eq!((&efi.kind, efi.mode), (&Kind::Dir, 0o755));
        assert!(t.children("efi").is_empty());

        // agent.toml's [update] reads back through the contract's types.
        let text = String::from_utf8(t.read(agent_toml_path()).unwrap().to_vec()).unwrap();
        let file: SettingsFile = toml::from_str(&text).unwrap();
        assert_eq!(
            file.update,
            Some(UpdateTable {
                image: "edge".into(),
                version: "2.1~rc1".into(),
                tries: Some(2),
                health_timeout_secs: Some(300),
                health: Some(vec![HealthCheck::Preflight, HealthCheck::Overlay]),
            })
        );
        assert_eq!(file.channels, Some(vec![Channel::Esp]));
        let again: SettingsFile = toml::from_str(&toml::to_string(&file).unwrap()).unwrap();
        assert_eq!(again, file);
        assert!(!t.contains(DEBUG_SHELL_DROPINS[0].0));
    }

    #[test]
    fn without_keys_the_folder_is_empty_and_the_defaults_are_spelled_out() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(dir.path(), &[], "");
        let mut t = debian_root();
        apply_profile(&mut t, &p).unwrap();
        assert_eq!(t.get(keys_dir_path()).unwrap().kind, Kind::Dir);
        assert!(t.children(keys_dir_path()).is_empty());
        let text = String::from_utf8(t.read(agent_toml_path()).unwrap().to_vec()).unwrap();
        let file: SettingsFile = toml::from_str(&text).unwrap();
        let update = file.update.unwrap();
        assert_eq!(update.tries, Some(kiln_contract::boot::DEFAULT_TRIES));
        assert_eq!(
            update.health_timeout_secs,
            Some(kiln_contract::agent_config::DEFAULT_HEALTH_TIMEOUT_SECS)
        );
        assert_eq!(update.health, None);
    }

    #[test]
    fn os_release_files_are_each_stamped_once_and_must_exist() {
        let v = ImageVersion::parse("7").unwrap();
        // A plain /etc/os-release next to /usr/lib's: both stamped.
        let mut t = debian_root();
        t.insert(
            "etc/os-release",
            Node::file(b"ID=debian\nIMAGE_ID=x\n".to_vec(), 0o644, 7, "overlay:o"),
        )
        .unwrap();
        stamp_os_release(&mut t, "n", &v).unwrap();
        assert_eq!(
            &*t.read("etc/os-release").unwrap(),
            b"ID=debian\nIMAGE_ID=n\nIMAGE_VERSION=7\n"
        );
        let lib = String::from_utf8(t.read("usr/lib/os-release").unwrap().to_vec()).unwrap();
        assert!(
            lib.ends_with("ID=debian\nIMAGE_ID=n\nIMAGE_VERSION=7\n"),
            "{lib}"
        );
        // Stamping again changes nothing (no duplicate lines).
        let before = t.read("usr/lib/os-release").unwrap();
        stamp_os_release(&mut t, "n", &v).unwrap();
        assert_eq!(t.read("usr/lib/os-release").unwrap(), before);
        // A file without a final newline keeps its last line whole.
        assert_eq!(
            stamped_os_release("ID=debian", "n", &v),
            "ID=debian\nIMAGE_ID=n\nIMAGE_VERSION=7\n"
        );
        let e = stamp_os_release(&mut FileTree::new(7), "n", &v).unwrap_err();
        assert!(e.to_string().contains("usr/lib/os-release"), "{e}");
    }
}
