#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::config::ssh_key::tests::{ECDSA, ECDSA_FP, ED25519, ED25519_FP};
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::forward;

/// A machine whose `ssh-keygen` writes a key pair where `-f` says (the public key is
/// one of the real test keys, by type), unless told to fail.
#[derive(Default)]
struct Keygen {
    base: FakeSys,
    /// `-t` types whose keygen exits 1.
    fails: Vec<&'static str>,
}

fake_base!(Keygen => base);
forward!(Keygen => base: Files, Console);

impl Exec for Keygen {
    fn run(&mut self, cmd: &Cmd<'_>) -> CommandResult {
        let line = cmd.line();
        self.base.ran.push(line.clone());
        assert_eq!(cmd.program, SSH_KEYGEN, "{line}");
        let arg = |flag: &str| {
            let i = cmd.args.iter().position(|a| *a == flag).unwrap();
            cmd.args[i + 1].to_string()
        };
        let (kind, path) = (arg("-t"), arg("-f"));
        assert_eq!(arg("-N"), "", "host keys have no passphrase: {line}");
        if self.fails.contains(&kind.as_str()) {
            return CommandResult::Exited {
                code: Some(1),
                stdout: String::new(),
                stderr: "no entropy\n".into(),
            };
        }
        // Like ssh-keygen, refuse to run over an existing file (it would ask).
        assert!(!self.base.files.contains_key(&path), "{path} exists");
        let public = if kind == "ed25519" { ED25519 } else { ECDSA };
        let data = [
            (path.clone(), b"PRIVATE".to_vec()),
            (format!("{path}.pub"), format!("{public}\n").into_bytes()),
        ];
        self.base.files.extend(data);
        CommandResult::exited(0, "")
    }
}

const CONFIG: &str = "/run/kiln/config.toml";
const VAR_DISK: &str = "36 1 254:3 / /var rw,relatime - ext4 /dev/vda4 rw\n";
const VAR_TMPFS: &str = "36 1 0:30 / /var rw,relatime - tmpfs tmpfs rw,mode=755\n";

fn machine(mountinfo: &str, config: Option<&str>) -> Keygen {
    let mut m = Keygen::default();
    m.base.files.insert(
        MOUNTINFO.into(),
        format!("1 0 254:0 / / ro - ext4 /dev/dm-0 ro\n{mountinfo}").into_bytes(),
    );
    if let Some(c) = config {
        m.base.files.insert(CONFIG.into(), c.as_bytes().to_vec());
    }
    m
}

fn keys_config(lines: &[&str]) -> String {
    let quoted: Vec<String> = lines
        .iter()
        .map(|l| toml::Value::String((*l).to_string()).to_string())
        .collect();
    format!(
        "schema = 1\nhostname = \"n\"\nssh_authorized_keys = [{}]\n",
        quoted.join(", ")
    )
}

#[test]
fn first_boot_makes_host_keys_in_var_and_prints_their_fingerprints() {
    let mut m = machine(VAR_DISK, Some(&keys_config(&[ED25519])));
    assert!(run(&mut m, CONFIG));
    assert_eq!(
        m.base.ran,
        [
            "/usr/bin/ssh-keygen -q -t ed25519 -N  -C  -f /var/lib/kiln/ssh/.new_ssh_host_ed25519_key",
            "/usr/bin/ssh-keygen -q -t ecdsa -N  -C  -f /var/lib/kiln/ssh/.new_ssh_host_ecdsa_key",
        ]
    );
    assert_eq!(
        m.base.lines,
        [
            format!("kiln-ssh: host key ssh-ed25519 {ED25519_FP} (new)"),
            format!("kiln-ssh: host key ecdsa-sha2-nistp256 {ECDSA_FP} (new)"),
            format!("kiln-ssh: authorized key for root: ssh-ed25519 {ED25519_FP} alice@laptop"),
        ]
    );
    // The pair is in place, public key first, the private key root-only; no
    // temporary file is left.
    let writes: Vec<&str> = m.base.writes.iter().map(String::as_str).collect();
    assert_eq!(
        writes,
        [
            "/var/lib/kiln/ssh/ssh_host_ed25519_key.pub 644",
            "/var/lib/kiln/ssh/ssh_host_ed25519_key 600",
            "/var/lib/kiln/ssh/ssh_host_ecdsa_key.pub 644",
            "/var/lib/kiln/ssh/ssh_host_ecdsa_key 600",
            "/run/kiln/ssh/authorized_keys/root 600",
        ]
    );
    assert!(
        !m.base.files.keys().any(|p| p.contains(".new_")),
        "{:?}",
        m.base.files.keys()
    );
    assert_eq!(
        m.base.files["/run/kiln/ssh/authorized_keys/root"],
        format!("{ED25519}\n").into_bytes()
    );
}

#[test]
fn later_boots_keep_the_host_keys() {
    let mut m = machine(VAR_DISK, Some(&keys_config(&[ED25519, ECDSA])));
    assert!(run(&mut m, CONFIG));
    m.base.ran.clear();
    m.base.lines.clear();
    assert!(run(&mut m, CONFIG));
    assert!(m.base.ran.is_empty(), "{:?}", m.base.ran);
    assert_eq!(
        m.base.lines[0],
        format!("kiln-ssh: host key ssh-ed25519 {ED25519_FP} (kept)")
    );
    assert_eq!(
        m.base.lines[1],
        format!("kiln-ssh: host key ecdsa-sha2-nistp256 {ECDSA_FP} (kept)")
    );
    assert_eq!(
        m.base.files["/run/kiln/ssh/authorized_keys/root"],
        format!("{ED25519}\n{ECDSA}\n").into_bytes()
    );
}

#[test]
fn a_half_written_pair_is_made_anew() {
    for (private, public) in [
        (Some(""), Some(ED25519)),
        (Some("PRIVATE"), None),
        (None, Some(ED25519)),
        (Some("PRIVATE"), Some("garbage")),
    ] {
        let mut m = machine(VAR_DISK, None);
        let path = host_key_path("ed25519");
        if let Some(p) = private {
            m.base.files.insert(path.clone(), p.as_bytes().to_vec());
        }
        if let Some(p) = public {
            m.base
                .files
                .insert(format!("{path}.pub"), p.as_bytes().to_vec());
        }
        let (key, new) = ensure_host_key(&mut m, "ed25519").unwrap();
        assert!(new, "{private:?} {public:?}");
        assert_eq!(key.fingerprint(), ED25519_FP);
        assert_eq!(m.base.files[&path], b"PRIVATE");
    }
}

#[test]
fn without_keys_sshd_runs_and_the_console_says_no_key_opens_it() {
    for config in [
        None,
        Some("hostname = \"n\"\n"),
        Some("ssh_authorized_keys = []\n"),
    ] {
        let mut m = machine(VAR_DISK, config);
        assert!(run(&mut m, CONFIG));
        assert!(
            m.base
                .has_line("kiln-ssh: WARNING: no ssh_authorized_keys in the node config"),
            "{:?}",
            m.base.lines
        );
        assert_eq!(m.base.files["/run/kiln/ssh/authorized_keys/root"], b"");
    }
}

#[test]
fn a_tmpfs_var_is_said_on_the_console() {
    let mut m = machine(VAR_TMPFS, Some(&keys_config(&[ED25519])));
    assert!(run(&mut m, CONFIG));
    assert!(
        m.base.lines[0].starts_with("kiln-ssh: WARNING: /var is a tmpfs"),
        "{:?}",
        m.base.lines
    );
    let mut m = machine(VAR_DISK, Some(&keys_config(&[ED25519])));
    assert!(run(&mut m, CONFIG));
    assert!(!m.base.has_line("tmpfs"), "{:?}", m.base.lines);
}

#[test]
fn the_mount_covering_the_path_decides() {
    let root_only = "1 0 254:0 / / rw - tmpfs tmpfs rw\n";
    assert!(on_tmpfs(root_only, HOST_KEY_DIR));
    let var_lib = format!("{VAR_TMPFS}40 36 254:4 / /var/lib rw - ext4 /dev/vda5 rw\n");
    assert!(!on_tmpfs(&var_lib, HOST_KEY_DIR));
    assert!(on_tmpfs(VAR_TMPFS, HOST_KEY_DIR));
    // /variable is not /var.
    let other = "36 1 0:30 / /variable rw - tmpfs tmpfs rw\n";
    assert!(!on_tmpfs(other, HOST_KEY_DIR));
}

#[test]
fn one_failed_key_type_still_starts_sshd_and_none_does_not() {
    let mut m = machine(VAR_DISK, Some(&keys_config(&[ED25519])));
    m.fails = vec!["ecdsa"];
    assert!(run(&mut m, CONFIG));
    assert!(
        m.base
            .has_line("kiln-ssh: ERROR: host key ecdsa: /usr/bin/ssh-keygen"),
        "{:?}",
        m.base.lines
    );
    assert!(m.base.has_line("no entropy"), "{:?}", m.base.lines);
    let mut m = machine(VAR_DISK, Some(&keys_config(&[ED25519])));
    m.fails = vec!["ecdsa", "ed25519"];
    assert!(!run(&mut m, CONFIG));
    assert!(
        m.base
            .has_line("kiln-ssh: ERROR: no host key: sshd is not started"),
        "{:?}",
        m.base.lines
    );
    assert!(!m
        .base
        .files
        .contains_key("/run/kiln/ssh/authorized_keys/root"));
}

#[test]
fn an_unreadable_config_authorizes_no_key() {
    let mut m = machine(VAR_DISK, Some("ssh_authorized_keys = [\"nope\"]\n"));
    assert!(run(&mut m, CONFIG));
    assert!(m.base.has_line("kiln-ssh: ERROR: reading the node config: /run/kiln/config.toml: ssh_authorized_keys[0]"), "{:?}", m.base.lines);
    assert_eq!(m.base.files["/run/kiln/ssh/authorized_keys/root"], b"");
}

/// The shipped sshd configuration: keys only, and the paths this module writes.
#[test]
fn the_ssh_overlays_sshd_config_allows_keys_only_from_these_paths() {
    let text = include_str!("../../../overlays/ssh/root/etc/ssh/sshd_config");
    let settings: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap();
            (k.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    // sshd takes the first value of a keyword: each must be set once.
    let get = |k: &str| {
        let all: Vec<&String> = settings
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(all.len(), 1, "{k}: {all:?}");
        all[0].clone()
    };
    assert_eq!(get("passwordauthentication"), "no");
    assert_eq!(get("kbdinteractiveauthentication"), "no");
    assert_eq!(get("permitemptypasswords"), "no");
    assert_eq!(get("usepam"), "no");
    assert_eq!(get("permitrootlogin"), "prohibit-password");
    assert_eq!(
        get("authorizedkeysfile"),
        format!("{AUTHORIZED_KEYS_DIR}/%u")
    );
    let host_keys: Vec<&String> = settings
        .iter()
        .filter(|(n, _)| n == "hostkey")
        .map(|(_, v)| v)
        .collect();
    let made: Vec<String> = HOST_KEY_TYPES.iter().map(|k| host_key_path(k)).collect();
    assert_eq!(host_keys, made.iter().collect::<Vec<_>>());
    assert!(
        !settings.iter().any(|(n, _)| n == "include"),
        "no drop-in may loosen it"
    );
}
