//! Running a program for real: the one implementation behind [`super::Exec`].

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Capture, Cmd, CommandResult};

/// How often a program with a timeout is checked for exit.
const POLL: Duration = Duration::from_millis(50);

/// Reads a pipe to its end on a thread, so a chatty program cannot block on a full pipe
/// while the other one (or the timeout) is waited for.
fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<Vec<u8>>> {
    pipe.map(|mut p| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

fn text(reader: Option<JoinHandle<Vec<u8>>>) -> String {
    reader
        .and_then(|r| r.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Runs `cmd`: stdin on /dev/null, the streams of its [`Capture`] collected and the others
/// inherited, killed after its timeout.
pub fn run_command(cmd: &Cmd<'_>) -> CommandResult {
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::inherit() };
    let mut c = Command::new(cmd.program);
    c.args(cmd.args)
        .stdin(Stdio::null())
        .stdout(piped(cmd.capture != Capture::Stderr))
        .stderr(piped(cmd.capture != Capture::Stdout));
    if let Some(env) = cmd.env {
        c.env_clear().envs(env.iter().copied());
    }
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => return CommandResult::Failed(format!("{}: {e}", cmd.program)),
    };
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        let polled = match cmd.timeout {
            None => child.wait().map(Some),
            Some(_) => child.try_wait(),
        };
        match polled {
            Ok(Some(status)) => break status,
            Ok(None) if cmd.timeout.is_some_and(|t| start.elapsed() >= t) => {
                let _ = child.kill();
                let _ = child.wait();
                // A grandchild could keep a pipe open, so the readers are not joined.
                return CommandResult::TimedOut;
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return CommandResult::Failed(format!("waiting for {}: {e}", cmd.program));
            }
        }
    };
    CommandResult::Exited {
        code: status.code(),
        stdout: text(stdout),
        stderr: text(stderr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_captures_stdout() {
        let r = run_command(
            &Cmd::new("sh", &["-c", "echo degraded; exit 1"]).timeout(Duration::from_secs(10)),
        );
        assert_eq!(
            r,
            CommandResult::Exited {
                code: Some(1),
                stdout: "degraded\n".into(),
                stderr: String::new(),
            }
        );
    }

    #[test]
    fn captures_stderr_and_sets_the_environment() {
        let r = run_command(
            &Cmd::new("/bin/sh", &["-c", "echo \"$KILN_X\" >&2; echo out"])
                .env(&[("KILN_X", "only")])
                .capture(Capture::Both),
        );
        assert_eq!(
            r,
            CommandResult::Exited {
                code: Some(0),
                stdout: "out\n".into(),
                stderr: "only\n".into(),
            }
        );
    }

    #[test]
    fn kills_on_timeout() {
        let start = Instant::now();
        let r = run_command(&Cmd::new("sleep", &["30"]).timeout(Duration::from_millis(300)));
        assert_eq!(r, CommandResult::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_is_a_failure() {
        let r = run_command(&Cmd::new("/nonexistent/systemctl", &[]));
        assert!(matches!(r, CommandResult::Failed(ref m) if m.contains("/nonexistent/systemctl")));
    }
}
