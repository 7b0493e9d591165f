//! The one place kiln starts external programs. Every command is logged and
//! its stderr kept, so a failure says exactly what ran and what it printed.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A command to run: program, arguments and extra environment.
#[derive(Debug, Clone, Default)]
pub struct Cmd {
    /// Program name or path.
    pub program: OsString,
    /// Arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory, if not inherited.
    pub cwd: Option<PathBuf>,
}

impl Cmd {
    /// A command for `program`.
    pub fn new(program: impl Into<OsString>) -> Cmd {
        Cmd {
            program: program.into(),
            ..Cmd::default()
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, a: impl Into<OsString>) -> Cmd {
        self.args.push(a.into());
        self
    }

    /// Adds several arguments.
    pub fn args<I, A>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Cmd {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs in `dir`.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Cmd {
        self.cwd = Some(dir.into());
        self
    }

    /// The command line as a person would type it (for logs and errors).
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            let a = a.to_string_lossy();
            if a.contains(' ') || a.is_empty() {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(&a);
            }
        }
        s
    }
}

/// What a finished command produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

/// A command that could not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started (usually: not installed).
    #[error("cannot run `{cmd}`: {source} (is it installed? `make deps` installs kiln's tools)")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit status text.
        status: String,
        /// The tail of what it printed on stderr.
        stderr: String,
    },
}

/// Runs external programs. The real implementation is [`HostRunner`]; tests
/// of logic that only needs a command's result can pass their own.
pub trait Runner: Send + Sync {
    /// Runs `cmd` to completion, capturing stdout and stderr. Non-zero exit
    /// is an error carrying the command line and stderr.
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError>;
}

/// Runs programs on the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostRunner;

impl Runner for HostRunner {
    fn run(&self, cmd: &Cmd) -> Result<Output, RunError> {
        let line = cmd.display();
        tracing::debug!(cmd = %line, "run");
        let mut c = Command::new(&cmd.program);
        c.args(&cmd.args).stdin(Stdio::null());
        for (k, v) in &cmd.env {
            c.env(k, v);
        }
        if let Some(dir) = &cmd.cwd {
            c.current_dir(dir);
        }
        let out = c.output().map_err(|source| RunError::Spawn {
            cmd: line.clone(),
            source,
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(RunError::Failed {
                cmd: line,
                status: out.status.to_string(),
                stderr: tail.join("\n"),
            });
        }
        Ok(Output {
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keeps_command_and_stderr() {
        let err = HostRunner
            .run(&Cmd::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sh -c"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(msg.contains('3'), "{msg}");
    }

    #[test]
    fn missing_program_says_so() {
        let err = HostRunner
            .run(&Cmd::new("kiln-no-such-program"))
            .unwrap_err();
        assert!(matches!(err, RunError::Spawn { .. }), "{err}");
    }
}
