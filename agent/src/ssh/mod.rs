//! `kiln-agent ssh` (kiln-ssh.service, in images built with the profile's
//! `[ssh] enable = true`): gets sshd's keys ready before `ssh.service` starts.
//!
//! - Host keys live in [`HOST_KEY_DIR`] on the persistent /var, since the root is
//!   read-only and replaced by every update: made on first boot with the server's own
//!   `ssh-keygen` and kept after, so clients see the same host across reboots and A/B
//!   updates. A pair left half-written (a power cut) is made anew. With /var on a tmpfs
//!   they are new at every boot, and the console says so.
//! - Their fingerprints are printed on the console, computed here from the public
//!   keys (SHA-256, as `ssh-keygen -l` shows them), so an operator can check the first
//!   connection against what the node printed.
//! - Root's authorized keys are the node config's `ssh_authorized_keys`, written at
//!   every boot to [`AUTHORIZED_KEYS_DIR`] on /run: a key removed from the config stops
//!   working at the next boot, and nothing is written to the read-only root.
//!
//! Console lines:
//!
//! ```text
//! kiln-ssh: host key ssh-ed25519 SHA256:uQ9... (new)
//! kiln-ssh: authorized key for root: ssh-ed25519 SHA256:Xr4... you@laptop
//! kiln-ssh: WARNING: no ssh_authorized_keys in the node config: sshd runs, but no key opens it; ...
//! kiln-ssh: WARNING: /var is a tmpfs: the host keys are new at every boot; ...
//! ```

use std::io;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::schema;
use crate::config::ssh_key::AuthorizedKey;
use crate::report::mountinfo::parse_mountinfo;
use crate::sys::{Cmd, CommandResult, Console, Exec, Files};

/// Where the host keys are kept (sshd_config's `HostKey`s name them).
pub const HOST_KEY_DIR: &str = "/var/lib/kiln/ssh";
/// The host key types made, with `ssh-keygen -t`'s name: Ed25519, which every OpenSSH
/// since 6.5 (2014) prefers, and ECDSA P-256 for clients without it. No RSA: making a
/// 3072-bit key takes seconds on small boards and emulated CPUs, for clients that
/// no longer exist.
pub const HOST_KEY_TYPES: &[&str] = &["ed25519", "ecdsa"];
/// Where root's (and any user's) authorized keys are written: sshd_config's
/// `AuthorizedKeysFile /run/kiln/ssh/authorized_keys/%u`.
pub const AUTHORIZED_KEYS_DIR: &str = "/run/kiln/ssh/authorized_keys";
/// The one user that logs in (with a key only: `PermitRootLogin prohibit-password`).
pub const USER: &str = "root";
/// The mount table, to tell a tmpfs /var.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// The server's key maker.
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
/// How long one key may take to make (an emulated CPU is slow).
const KEYGEN_TIMEOUT: Duration = Duration::from_secs(120);

/// What `ssh` does to the system.
pub trait SshSys: Files + Console + Exec {}
impl<T: Files + Console + Exec> SshSys for T {}

/// The private key's path for `ssh-keygen -t` type `kind`.
pub fn host_key_path(kind: &str) -> String {
    format!("{HOST_KEY_DIR}/ssh_host_{kind}_key")
}

/// Whether `path` is on a tmpfs, from the mount table's text: the longest mount point
/// that covers it decides.
pub fn on_tmpfs(mountinfo: &str, path: &str) -> bool {
    let covers = |p: &str| {
        let p = p.trim_end_matches('/');
        p.is_empty() || path == p || path.starts_with(&format!("{p}/"))
    };
    parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|m| covers(&m.mount_point))
        .max_by_key(|m| m.mount_point.len())
        .is_some_and(|m| m.fstype == "tmpfs")
}

/// The key in a public key file, when it holds a whole one.
fn read_public(sys: &mut dyn SshSys, path: &str) -> Option<AuthorizedKey> {
    let bytes = sys.read_file(path).ok()?;
    AuthorizedKey::parse(String::from_utf8_lossy(&bytes).trim()).ok()
}

/// Makes the `kind` host key pair unless a whole one is there; its public key and
/// whether it is new.
pub fn ensure_host_key(sys: &mut dyn SshSys, kind: &str) -> Result<(AuthorizedKey, bool), String> {
    let private = host_key_path(kind);
    let public = format!("{private}.pub");
    let whole = sys.read_file(&private).is_ok_and(|b| !b.is_empty());
    if whole {
        if let Some(key) = read_public(sys, &public) {
            return Ok((key, false));
        }
    }
    // ssh-keygen asks before overwriting, and a half pair is worthless: start clean.
    // It writes into a temporary name; the pair is then put in place public key first,
    // so a private key present means a whole pair.
    let tmp = format!("{HOST_KEY_DIR}/.new_ssh_host_{kind}_key");
    let tmp_pub = format!("{tmp}.pub");
    for p in [&private, &tmp, &tmp_pub] {
        sys.remove_file(p)
            .map_err(|e| format!("removing {p}: {e}"))?;
    }
    let args = ["-q", "-t", kind, "-N", "", "-C", "", "-f", tmp.as_str()];
    let cmd = Cmd::new(SSH_KEYGEN, &args)
        .timeout(KEYGEN_TIMEOUT)
        .capture(crate::sys::Capture::Both);
    match sys.run(&cmd) {
        CommandResult::Exited { code: Some(0), .. } => {}
        CommandResult::Exited { stderr, .. } => {
            return Err(format!("{} failed: {}", cmd.line(), stderr.trim()))
        }
        CommandResult::TimedOut => {
            return Err(format!(
                "{} did not finish within {} s",
                cmd.line(),
                KEYGEN_TIMEOUT.as_secs()
            ))
        }
        CommandResult::Failed(why) => return Err(why),
    }
    let read = |sys: &mut dyn SshSys, p: &str| sys.read_file(p).map_err(|e| format!("{p}: {e}"));
    let (priv_bytes, pub_bytes) = (read(sys, &tmp)?, read(sys, &tmp_pub)?);
    let key = AuthorizedKey::parse(String::from_utf8_lossy(&pub_bytes).trim())
        .map_err(|why| format!("{tmp_pub}: {why}"))?;
    sys.write_atomic(&public, &pub_bytes, 0o644)
        .map_err(|e| format!("writing {public}: {e}"))?;
    sys.write_atomic(&private, &priv_bytes, 0o600)
        .map_err(|e| format!("writing {private}: {e}"))?;
    for p in [&tmp, &tmp_pub] {
        sys.remove_file(p)
            .map_err(|e| format!("removing {p}: {e}"))?;
    }
    Ok((key, true))
}

/// The authorized keys from the merged node config at `config_path`: None when it
/// sets none (or there is no config file); an error when it cannot be read.
pub fn configured_keys(
    sys: &mut dyn SshSys,
    config_path: &str,
) -> Result<Option<Vec<AuthorizedKey>>, String> {
    let bytes = match sys.read_prefix(config_path, crate::config::READ_LIMIT) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{config_path}: {e}")),
    };
    let config = schema::parse_bytes(&bytes).map_err(|errs| {
        let words: Vec<String> = errs.iter().map(ToString::to_string).collect();
        format!("{config_path}: {}", words.join("; "))
    })?;
    Ok(config.ssh_authorized_keys)
}

/// The text of an `authorized_keys` file: one line per key.
pub fn authorized_keys_text(keys: &[AuthorizedKey]) -> String {
    keys.iter().map(|k| format!("{}\n", k.line())).collect()
}

/// Runs `ssh`: host keys, their fingerprints, root's authorized keys. False when sshd
/// must not start (no host key, or the authorized keys could not be written).
pub fn run(sys: &mut dyn SshSys, config_path: &str) -> bool {
    match sys.read_file(MOUNTINFO) {
        Ok(b) if on_tmpfs(&String::from_utf8_lossy(&b), HOST_KEY_DIR) => sys.say(
            "kiln-ssh: WARNING: /var is a tmpfs: the host keys are new at every boot, so \
             clients warn that the host key changed; give the node a disk with room for var",
        ),
        Ok(_) => {}
        Err(e) => sys.note(&format!("kiln-ssh: {MOUNTINFO}: {e}")),
    }
    if let Err(e) = sys.mkdir_private(HOST_KEY_DIR) {
        sys.say(&format!("kiln-ssh: ERROR: {HOST_KEY_DIR}: {e}"));
        return false;
    }
    let mut any_host_key = false;
    for kind in HOST_KEY_TYPES {
        match ensure_host_key(sys, kind) {
            Ok((key, new)) => {
                any_host_key = true;
                let age = if new { "new" } else { "kept" };
                sys.say(&format!(
                    "kiln-ssh: host key {} {} ({age})",
                    key.kind,
                    key.fingerprint()
                ));
            }
            Err(e) => sys.say(&format!("kiln-ssh: ERROR: host key {kind}: {e}")),
        }
    }
    if !any_host_key {
        sys.say("kiln-ssh: ERROR: no host key: sshd is not started");
        return false;
    }
    let keys = match configured_keys(sys, config_path) {
        Ok(k) => k.unwrap_or_default(),
        Err(e) => {
            sys.say(&format!(
                "kiln-ssh: ERROR: reading the node config: {e}; no key is authorized"
            ));
            Vec::new()
        }
    };
    let path = format!("{AUTHORIZED_KEYS_DIR}/{USER}");
    let written = sys
        .mkdir(AUTHORIZED_KEYS_DIR)
        .map_err(|e| format!("{AUTHORIZED_KEYS_DIR}: {e}"))
        .and_then(|()| {
            sys.write_atomic(&path, authorized_keys_text(&keys).as_bytes(), 0o600)
                .map_err(|e| format!("writing {path}: {e}"))
        });
    if let Err(e) = written {
        sys.say(&format!("kiln-ssh: ERROR: {e}: sshd is not started"));
        return false;
    }
    if keys.is_empty() {
        sys.say(
            "kiln-ssh: WARNING: no ssh_authorized_keys in the node config: sshd runs, but no \
             key opens it (and passwords never do); add ssh_authorized_keys = [\"ssh-ed25519 \
             AAAA... you@laptop\"] to kiln.toml on the ESP or another config channel",
        );
    }
    for k in &keys {
        let comment = if k.comment.is_empty() {
            String::new()
        } else {
            format!(" {}", k.comment)
        };
        sys.say(&format!(
            "kiln-ssh: authorized key for {USER}: {} {}{comment}",
            k.kind,
            k.fingerprint()
        ));
    }
    true
}

const SSH_USAGE: &str = "\
Usage: kiln-agent ssh
  Makes sshd's host keys in /var/lib/kiln/ssh unless they exist, prints their
  fingerprints, and writes root's authorized keys from the node config's
  ssh_authorized_keys to /run/kiln/ssh/authorized_keys/root.
";

/// `kiln-agent ssh`.
pub fn main(args: &[String]) -> ExitCode {
    if let Some(a) = args.first() {
        if a == "--help" || a == "-h" {
            print!("{SSH_USAGE}");
            return ExitCode::SUCCESS;
        }
        eprint!("kiln-agent ssh: unknown argument {a:?}\n\n{SSH_USAGE}");
        return ExitCode::from(2);
    }
    let mut sys = crate::sys::real::RealSys::default();
    if run(&mut sys, crate::config::CONFIG_OUT) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests;
