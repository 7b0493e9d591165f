//! The real `kiln-enroll` server for the overlay tests: its own state in a
//! temporary folder, listening on a free port of the host's loopback (the
//! guests reach it through [`crate::net::HostServices`]), stopped and
//! started again on the same port with the same state, killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};

/// How long the server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the server's ready line says:
/// `kiln-enroll: listening on https://ADDR ca-hash <hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// The address the server bound.
    pub addr: SocketAddr,
    /// The CA's SPKI sha256, 64 lowercase hex digits (the token's pin).
    pub ca_hash: String,
}

/// Reads the ready line; `None` for any other line (the server may log
/// before it), an error for a ready line that is malformed.
pub fn parse_ready_line(line: &str) -> anyhow::Result<Option<Ready>> {
    let Some(rest) = line.trim_end().strip_prefix("kiln-enroll: listening on ") else {
        return Ok(None);
    };
    let mut words = rest.split(' ');
    let (Some(url), Some("ca-hash"), Some(hash), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        bail!("ready line {line:?}: expected `kiln-enroll: listening on https://ADDR ca-hash HEX`");
    };
    let addr = url
        .strip_prefix("https://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .with_context(|| format!("ready line {line:?}: {url:?} is not https://IP:PORT"))?;
    if hash.len() != 64
        || !hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("ready line {line:?}: ca-hash {hash:?} is not 64 lowercase hex digits");
    }
    Ok(Some(Ready {
        addr,
        ca_hash: hash.to_string(),
    }))
}

/// The `kiln-enroll` binary the tests use: the one built with them, beside the
/// `deps/` folder the running test binary is in (`target/<profile>/kiln-enroll`; `make
/// test` builds it), else `target/release/kiln-enroll` (under `CARGO_TARGET_DIR` if set),
/// as `cargo build --release -p kiln-enroll` makes it.
pub fn binary() -> PathBuf {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        let profile_dir = exe.parent()?.parent()?;
        Some(profile_dir.join("kiln-enroll")).filter(|p| p.is_file())
    });
    beside.unwrap_or_else(|| crate::target_dir().join("release").join("kiln-enroll"))
}

/// A running (or stopped) `kiln-enroll serve` with its own state.
pub struct EnrollServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    state: String,
    serve_args: Vec<String>,
    child: Option<Child>,
    ready: Ready,
}

impl EnrollServer {
    /// Starts `kiln-enroll --state sqlite:<tempdir>/state.db serve --listen
    /// 127.0.0.1:0 <serve_args>` (e.g. `["--heartbeat", "5"]`) and waits for
    /// its ready line.
    pub fn launch(serve_args: &[&str]) -> anyhow::Result<EnrollServer> {
        let bin = binary();
        if !bin.is_file() {
            bail!(
                "{}: no kiln-enroll binary; build it with `cargo build --release -p kiln-enroll`",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("kiln-enroll-test")
            .tempdir()
            .context("creating the enroll server's state folder")?;
        // A folder kiln-enroll makes 0700: it refuses a state folder others can read.
        let state = format!(
            "sqlite:{}",
            dir.path().join("state").join("state.db").display()
        );
        let serve_args: Vec<String> = serve_args.iter().map(|s| s.to_string()).collect();
        let (child, ready) = spawn(&bin, &state, "127.0.0.1:0", &serve_args, dir.path())?;
        Ok(EnrollServer {
            bin,
            dir,
            state,
            serve_args,
            child: Some(child),
            ready,
        })
    }

    /// The host port the server listens on (the same after [`EnrollServer::start`]).
    pub fn port(&self) -> u16 {
        self.ready.addr.port()
    }

    /// The CA's SPKI hash from the ready line.
    pub fn ca_hash(&self) -> &str {
        &self.ready.ca_hash
    }

    /// The server's URL on the host (`https://127.0.0.1:PORT`).
    pub fn host_url(&self) -> String {
        format!("https://{}", self.ready.addr)
    }

    /// The `--state` value (`sqlite:PATH`).
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The folder with the state and the server's logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills the server; the state stays for [`EnrollServer::start`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // Already exited is fine: the point is that it is not running.
            let _ = child.kill();
            child.wait().context("waiting for kiln-enroll to exit")?;
        }
        Ok(())
    }

    /// Starts the server again with the same state and arguments on the
    /// same port (the guests' forwards point there). Does nothing if it runs.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.stop()?;
        let listen = self.ready.addr.to_string();
        let (child, ready) = spawn(
            &self.bin,
            &self.state,
            &listen,
            &self.serve_args,
            self.dir.path(),
        )?;
        if ready.ca_hash != self.ready.ca_hash {
            bail!(
                "kiln-enroll restarted with CA hash {} instead of {} (same state {})",
                ready.ca_hash,
                self.ready.ca_hash,
                self.state
            );
        }
        self.child = Some(child);
        self.ready = ready;
        Ok(())
    }

    /// Runs `kiln-enroll --state STATE <args>` and returns its stdout; a
    /// failure carries the command and both outputs.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.bin.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "kiln-enroll --state {} {} failed ({}):\n{stdout}\n{}",
                self.state,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// A new join token: `token create <args>` (e.g. `["--ttl", "1h",
    /// "--uses", "1"]`), checked to have the token's shape and this
    /// server's CA pin.
    pub fn token(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["token", "create"];
        full.extend_from_slice(args);
        let out = self.cli(&full)?;
        let token = out.trim();
        let pinned = format!("KLN1{}::", self.ready.ca_hash);
        if !token.starts_with(&pinned) || token.lines().count() != 1 {
            bail!("`token create` printed {out:?}, not one token starting with {pinned}");
        }
        Ok(token.to_string())
    }

    /// `node list --json` as printed.
    pub fn nodes_json(&self) -> anyhow::Result<String> {
        self.cli(&["node", "list", "--json"])
    }

    /// What the server printed on stderr so far (for failure messages).
    pub fn log(&self) -> String {
        let p = self.dir.path().join("serve.stderr");
        std::fs::read_to_string(&p).unwrap_or_default()
    }
}

impl Drop for EnrollServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Starts `serve` and waits for the ready line. stderr goes to
/// `dir/serve.stderr` (appended across restarts); stdout after the ready
/// line is drained so the server never blocks on it.
fn spawn(
    bin: &Path,
    state: &str,
    listen: &str,
    serve_args: &[String],
    dir: &Path,
) -> anyhow::Result<(Child, Ready)> {
    let err_path = dir.join("serve.stderr");
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&err_path)
        .with_context(|| err_path.display().to_string())?;
    let mut child = Command::new(bin)
        .arg("--state")
        .arg(state)
        .args(["serve", "--listen", listen])
        .args(serve_args)
        // A log file read in failure messages: no terminal colours.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let Some(stdout) = child.stdout.take() else {
        bail!("kiln-enroll: no stdout pipe");
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let mut sent = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if !sent {
                        match parse_ready_line(&line) {
                            Ok(None) => {}
                            other => {
                                sent = true;
                                let _ = tx.send(other);
                            }
                        }
                    }
                }
            }
        }
        // Drain anything non-UTF-8 too, until the server exits.
        let _ = reader.read_to_end(&mut Vec::new());
    });
    let fail = |child: &mut Child, why: String| -> anyhow::Error {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&err_path).unwrap_or_default();
        anyhow::anyhow!(
            "kiln-enroll --state {state} serve --listen {listen} {}: {why}\n--- {} ---\n{log}",
            serve_args.join(" "),
            err_path.display()
        )
    };
    match rx.recv_timeout(READY_TIMEOUT) {
        Ok(Ok(Some(ready))) => Ok((child, ready)),
        Ok(Ok(None)) => Err(fail(&mut child, "no ready line".into())),
        Ok(Err(e)) => Err(fail(&mut child, format!("{e:#}"))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(fail(
            &mut child,
            format!("no ready line within {READY_TIMEOUT:?}"),
        )),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = child
                .wait()
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            Err(fail(
                &mut child,
                format!("exited ({status}) before printing its ready line"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn the_ready_line_gives_address_and_hash() {
        let r = parse_ready_line(&format!(
            "kiln-enroll: listening on https://127.0.0.1:40123 ca-hash {HASH}\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(r.addr, "127.0.0.1:40123".parse().unwrap());
        assert_eq!(r.ca_hash, HASH);
        let v6 = parse_ready_line(&format!(
            "kiln-enroll: listening on https://[::1]:8443 ca-hash {HASH}"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(v6.addr.port(), 8443);
    }

    #[test]
    fn other_lines_are_not_the_ready_line() {
        assert_eq!(
            parse_ready_line("kiln-enroll: opened sqlite:/x").unwrap(),
            None
        );
        assert_eq!(parse_ready_line("").unwrap(), None);
    }

    #[test]
    fn a_malformed_ready_line_says_what_is_wrong() {
        let cases = [
            (
                format!("kiln-enroll: listening on http://127.0.0.1:1 ca-hash {HASH}"),
                "https://IP:PORT",
            ),
            (
                format!("kiln-enroll: listening on https://localhost:1 ca-hash {HASH}"),
                "https://IP:PORT",
            ),
            (
                format!(
                    "kiln-enroll: listening on https://127.0.0.1:1 ca-hash {}",
                    HASH.to_uppercase()
                ),
                "64 lowercase hex",
            ),
            (
                "kiln-enroll: listening on https://127.0.0.1:1 ca-hash abc".to_string(),
                "64 lowercase hex",
            ),
            (
                "kiln-enroll: listening on https://127.0.0.1:1".to_string(),
                "expected",
            ),
            (
                format!("kiln-enroll: listening on https://127.0.0.1:1 ca-hash {HASH} x"),
                "expected",
            ),
        ];
        for (line, want) in cases {
            let err = format!("{:#}", parse_ready_line(&line).unwrap_err());
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    #[test]
    fn launching_without_the_binary_names_it_and_the_build_command() {
        if binary().is_file() {
            return; // Built: nothing to check here; the overlay tests use it.
        }
        let err = EnrollServer::launch(&[]).err().unwrap().to_string();
        assert!(err.contains(&binary().display().to_string()), "{err}");
        assert!(
            err.contains("cargo build --release -p kiln-enroll"),
            "{err}"
        );
    }

    /// A stand-in server (a shell script speaking the ready-line protocol)
    /// exercises start, restart on the same port, the CLI and drop.
    #[test]
    fn spawn_reads_the_ready_line_of_a_stand_in() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-enroll");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho starting >&2\necho 'kiln-enroll: debug line'\n\
                 echo \"kiln-enroll: listening on https://127.0.0.1:40999 ca-hash {HASH}\"\n\
                 echo \"args: $*\"\nexec sleep 60\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (mut child, ready) = spawn(
            &script,
            "sqlite:/x/state.db",
            "127.0.0.1:0",
            &["--heartbeat".into(), "5".into()],
            dir.path(),
        )
        .unwrap();
        assert_eq!(ready.addr.port(), 40999);
        assert_eq!(ready.ca_hash, HASH);
        assert_eq!(child.try_wait().unwrap(), None);
        child.kill().unwrap();
        child.wait().unwrap();
        let log = std::fs::read_to_string(dir.path().join("serve.stderr")).unwrap();
        assert_eq!(log, "starting\n");

        std::fs::write(&script, "#!/bin/sh\necho 'oops' >&2\nexit 3\n").unwrap();
        let err = format!(
            "{:#}",
            spawn(&script, "sqlite:/x", "127.0.0.1:0", &[], dir.path()).unwrap_err()
        );
        assert!(err.contains("exited") && err.contains("oops"), "{err}");
    }
}
