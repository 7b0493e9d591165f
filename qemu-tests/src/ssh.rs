//! Logging in to a node over SSH with the host's OpenSSH client, the way an operator
//! does: through a QEMU user-network port forward to the guest's port 22, with keys
//! made in a temporary folder and a known_hosts file of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A client key pair and the files one login session uses.
#[derive(Debug)]
pub struct Client {
    dir: PathBuf,
}

/// How long one connection attempt may take to be set up (TCG guests are slow).
const CONNECT_TIMEOUT_SECS: u32 = 30;

impl Client {
    /// Makes two ed25519 key pairs in `dir`: `good` (to authorize) and `wrong` (never
    /// authorized).
    pub fn new(dir: &Path) -> anyhow::Result<Client> {
        for name in ["good", "wrong"] {
            let path = dir.join(name);
            let comment = format!("kiln-test-{name}");
            let file = crate::path_str(&path)?;
            crate::check_tool(
                "ssh-keygen",
                &["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", file],
            )?;
        }
        Ok(Client {
            dir: dir.to_path_buf(),
        })
    }

    /// The public key line of `name` (`good` or `wrong`).
    pub fn public_key(&self, name: &str) -> anyhow::Result<String> {
        let path = self.dir.join(format!("{name}.pub"));
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Ok(text.trim().to_string())
    }

    /// The known_hosts file the sessions fill (`StrictHostKeyChecking=accept-new`).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// Runs `command` as root on 127.0.0.1:`port` with key `name`, non-interactively.
    pub fn run(&self, port: u16, name: &str, command: &str) -> anyhow::Result<Output> {
        Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=accept-new"])
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            .args(["-o", "PasswordAuthentication=no"])
            .arg("-o")
            .arg(format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"))
            .args(["-F", "/dev/null", "-i"])
            .arg(self.dir.join(name))
            .args(["-p", &port.to_string(), "root@127.0.0.1", command])
            .output()
            .context("running ssh (package openssh-client)")
    }

    /// Retries [`Client::run`] until sshd answers (the port forward accepts before the
    /// guest listens, so early attempts end in a reset), then gives its output. Any
    /// answer from sshd, a refusal included, ends the wait.
    pub fn run_when_up(
        &self,
        port: u16,
        name: &str,
        command: &str,
        timeout: Duration,
    ) -> anyhow::Result<Output> {
        let start = Instant::now();
        loop {
            let out = self.run(port, name, command)?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            // ssh exits 255 for its own errors; a connection sshd never took shows as
            // a reset or close before the banner.
            let not_up = out.status.code() == Some(255)
                && (stderr.contains("Connection reset")
                    || stderr.contains("Connection closed")
                    || stderr.contains("Connection refused")
                    || stderr.contains("banner exchange")
                    || stderr.contains("timed out"));
            if !not_up {
                return Ok(out);
            }
            if start.elapsed() > timeout {
                bail!(
                    "sshd on 127.0.0.1:{port} did not answer within {} s: {}",
                    timeout.as_secs(),
                    stderr.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The host key fingerprints the client saw, by key type (`ssh-ed25519`), as the
    /// host's own `ssh-keygen -l` computes them (an independent referee of the node's).
    pub fn seen_host_keys(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let path = self.known_hosts();
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let mut seen = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.split_whitespace().skip(1);
            let (Some(kind), Some(_)) = (words.next(), words.next()) else {
                bail!("{}: not a known_hosts line: {line:?}", path.display());
            };
            let one = self.dir.join("one_key.pub");
            std::fs::write(
                &one,
                format!("{}\n", line.split_once(' ').map_or(line, |x| x.1)),
            )
            .with_context(|| one.display().to_string())?;
            let listed = crate::check_tool(
                "ssh-keygen",
                &["-l", "-E", "sha256", "-f", crate::path_str(&one)?],
            )?;
            let Some(fp) = listed.split_whitespace().nth(1) else {
                bail!(
                    "ssh-keygen -l {}: no fingerprint in {listed:?}",
                    one.display()
                );
            };
            seen.insert(kind.to_string(), fp.to_string());
        }
        Ok(seen)
    }
}

/// The host key fingerprints a node printed (`kiln-ssh: host key TYPE SHA256:... (new)`),
/// by key type.
pub fn console_host_keys(console: &str) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for line in console.lines() {
        let Some((_, rest)) = line.split_once("kiln-ssh: host key ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        if let (Some(kind), Some(fp)) = (words.next(), words.next()) {
            keys.insert(kind.to_string(), fp.to_string());
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_console_host_keys_are_read_by_type() {
        let c = "x\r\n[  OK  ] y\nkiln-ssh: host key ssh-ed25519 SHA256:abc (new)\r\n\
                 kiln-ssh: host key ecdsa-sha2-nistp256 SHA256:def (kept)\n";
        let keys = console_host_keys(c);
        assert_eq!(keys["ssh-ed25519"], "SHA256:abc");
        assert_eq!(keys["ecdsa-sha2-nistp256"], "SHA256:def");
        assert_eq!(keys.len(), 2);
    }
}
