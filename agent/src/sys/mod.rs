//! The agent's small capability traits: what every mode does to the machine, declared
//! once, so each mode's own trait only adds what is truly its own and the tests share one
//! fake.
//!
//! The capabilities:
//!
//! - [`Files`]: `read_file`, `read_prefix`, `exists`, `is_dir`, `list_dir`, `modified`,
//!   `mkdir`, `mkdir_private`, `write_atomic`, `write_private`, `remove_file`.
//! - [`Clock`]: `now` (Unix seconds), `elapsed` (monotonic), `sleep`.
//! - [`Console`]: `say` (a line on stdout, the console) and `note` (a diagnostic line on
//!   stderr, the journal).
//! - [`Random`]: `random` (the kernel's random bytes) and `jitter` (one byte to spread
//!   retries).
//! - [`Exec`]: `run` a program ([`Cmd`] → [`CommandResult`]).
//! - [`Resolve`]: `resolve` a host name ([`prefer_ipv4`] picks one address).
//!
//! Each mode's trait is these plus what only it does:
//!
//! - `init` ([`crate::init::InitSys`]): Files, Clock, Console, Random, Exec; mounts,
//!   modules, block devices, device-mapper, the switch to the system's init.
//! - `config` ([`crate::config::ConfigSys`]): Files, Clock, Console, Exec; devices,
//!   mounts, the hostname, the cloud's user-data.
//! - `report` ([`crate::report::ReportSys`]): Files, Console, Exec; uname, statvfs, the
//!   write probe.
//! - `preflight` ([`crate::preflight::PreflightSys`]): Files, Clock, Console, Exec;
//!   containerd's socket.
//! - `images` ([`crate::images::ImagesSys`]): Files, Clock, Console; gRPC calls on
//!   containerd's socket.
//! - `overlay` ([`crate::overlay::OverlaySys`]): Files, Clock, Console, Random, Resolve;
//!   the watch thread's events, interface addresses, the handshake kick.
//! - `cluster` ([`crate::cluster::ClusterSys`]): Files, Clock, Console, Random, Exec,
//!   Resolve and nothing else.
//!
//! Specific to one mode and kept as their own traits: kiln-enroll
//! ([`crate::overlay::Api`], [`crate::cluster::Remote`]), systemd
//! ([`crate::cluster::Systemd`]), the kernel's networking ([`crate::netlink::Net`]) and the
//! metadata services' HTTP ([`crate::config::cloud::http::Http`], which needs a
//! [`Clock`] for its retries).
//!
//! [`real::RealSys`] is the machine; `fake::FakeSys` (tests) is a scripted one that the
//! modes' fakes build on. Errors are std's, without the path (callers name what they were
//! doing), unless a method says otherwise.

mod exec;
#[cfg(test)]
pub mod fake;
pub mod real;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use exec::run_command;

/// Files, at absolute paths.
pub trait Files {
    /// Reads a whole file.
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>>;
    /// Reads at most `max` bytes from the start of a file: enough to tell a file is too
    /// large without reading all of it.
    fn read_prefix(&mut self, path: &str, max: usize) -> io::Result<Vec<u8>> {
        let mut bytes = self.read_file(path)?;
        bytes.truncate(max);
        Ok(bytes)
    }
    /// Whether a path exists (following symlinks).
    fn exists(&mut self, path: &str) -> bool;
    /// Whether a path is a folder (following symlinks).
    fn is_dir(&mut self, path: &str) -> bool;
    /// The names in a folder.
    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>>;
    /// A file's modification time, Unix seconds; None when it does not exist.
    fn modified(&mut self, path: &str) -> Option<u64>;
    /// Creates a folder and its parents (existing is fine).
    fn mkdir(&mut self, path: &str) -> io::Result<()>;
    /// Creates a folder and its parents, root-only (0700, also when it existed).
    fn mkdir_private(&mut self, path: &str) -> io::Result<()>;
    /// Replaces the file at `path` (its folder must exist) with `data`, mode `mode`, so
    /// that a power loss leaves the old or the new content: a temporary file, fsync,
    /// rename, fsync of the folder.
    fn write_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()>;
    /// Writes a root-only file atomically and durably: folder 0700, temporary file 0600,
    /// fsync, rename, fsync of the folder. Errors name the file or folder that failed.
    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Removes a file (gone already is fine). Errors name the file.
    fn remove_file(&mut self, path: &str) -> io::Result<()>;
}

/// Time.
pub trait Clock {
    /// Unix seconds.
    fn now(&mut self) -> u64;
    /// Monotonic time since an arbitrary start (callers only take differences).
    fn elapsed(&mut self) -> Duration;
    /// Waits.
    fn sleep(&mut self, d: Duration);
}

/// The console.
pub trait Console {
    /// Prints one line on stdout, at once (the console, or the unit's journal).
    fn say(&mut self, line: &str);
    /// Prints one diagnostic line on stderr, kept off stdout where stdout is a result.
    fn note(&mut self, line: &str);
}

/// The kernel's randomness.
pub trait Random {
    /// Fills `buf` from /dev/urandom (which never blocks, as early boot needs).
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// A random byte, to spread the retries of many nodes apart; without randomness the
    /// clock's nanoseconds still spread them.
    fn jitter(&mut self) -> u8 {
        let mut b = [0u8; 1];
        match self.random(&mut b) {
            Ok(()) => b[0],
            Err(_) => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u8),
        }
    }
}

/// Running programs.
pub trait Exec {
    /// Runs `cmd` (stdin on /dev/null) and waits for it, or kills it after its timeout.
    fn run(&mut self, cmd: &Cmd<'_>) -> CommandResult;
}

/// Name resolution.
pub trait Resolve {
    /// The addresses of `host` (a name or an address) with `port`.
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>>;
}

/// The first IPv4 address of `addrs`, else the first one: IPv4 is what works on most
/// networks a node is on.
pub fn prefer_ipv4(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

/// Which of a program's output streams [`Exec::run`] collects; the others go where the
/// agent's own go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Standard output (its errors reach the journal).
    Stdout,
    /// Standard error (its progress reaches the journal).
    Stderr,
    /// Both.
    Both,
}

/// A program to run.
#[derive(Debug, Clone, Copy)]
pub struct Cmd<'a> {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: &'a str,
    /// Its arguments, without argv\[0\].
    pub args: &'a [&'a str],
    /// Some: exactly this environment; None: the agent's.
    pub env: Option<&'a [(&'a str, &'a str)]>,
    /// Killed after this long; None: waited for however long it takes.
    pub timeout: Option<Duration>,
    /// What is collected.
    pub capture: Capture,
}

impl<'a> Cmd<'a> {
    /// `program args` with the agent's environment, no timeout, stdout collected.
    pub fn new(program: &'a str, args: &'a [&'a str]) -> Cmd<'a> {
        Cmd {
            program,
            args,
            env: None,
            timeout: None,
            capture: Capture::Stdout,
        }
    }

    /// The same, killed after `d`.
    pub fn timeout(self, d: Duration) -> Cmd<'a> {
        Cmd {
            timeout: Some(d),
            ..self
        }
    }

    /// The same, with exactly the environment `env`.
    pub fn env(self, env: &'a [(&'a str, &'a str)]) -> Cmd<'a> {
        Cmd {
            env: Some(env),
            ..self
        }
    }

    /// The same, collecting `capture`.
    pub fn capture(self, capture: Capture) -> Cmd<'a> {
        Cmd { capture, ..self }
    }

    /// `program args...`, for messages.
    pub fn line(&self) -> String {
        let mut s = self.program.to_string();
        for a in self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    /// It ran to its end.
    Exited {
        /// Its exit code; None when a signal ended it.
        code: Option<i32>,
        /// What it printed on stdout, if collected (lossily decoded).
        stdout: String,
        /// What it printed on stderr, if collected (lossily decoded).
        stderr: String,
    },
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It could not be started (or waited for): `program: error`.
    Failed(String),
}

#[cfg(test)]
impl CommandResult {
    /// An exit with `code` and `stdout` (nothing on stderr).
    pub fn exited(code: i32, stdout: &str) -> CommandResult {
        CommandResult::Exited {
            code: Some(code),
            stdout: stdout.to_string(),
            stderr: String::new(),
        }
    }

    /// Whether it exited with status 0.
    pub fn success(&self) -> bool {
        matches!(self, CommandResult::Exited { code: Some(0), .. })
    }
}

/// Implements capability traits for `$ty` by forwarding to its field `$field`:
/// `forward!(Wrapper => inner: Files, Clock, Console, Random, Exec);`.
macro_rules! forward {
    ($ty:ty => $field:ident: $($cap:ident),+ $(,)?) => {
        $( $crate::sys::forward!(@$cap $ty, $field); )+
    };
    (@Files $ty:ty, $f:ident) => {
        impl $crate::sys::Files for $ty {
            fn read_file(&mut self, path: &str) -> std::io::Result<Vec<u8>> {
                self.$f.read_file(path)
            }
            fn read_prefix(&mut self, path: &str, max: usize) -> std::io::Result<Vec<u8>> {
                self.$f.read_prefix(path, max)
            }
            fn exists(&mut self, path: &str) -> bool {
                self.$f.exists(path)
            }
            fn is_dir(&mut self, path: &str) -> bool {
                self.$f.is_dir(path)
            }
            fn list_dir(&mut self, path: &str) -> std::io::Result<Vec<String>> {
                self.$f.list_dir(path)
            }
            fn modified(&mut self, path: &str) -> Option<u64> {
                self.$f.modified(path)
            }
            fn mkdir(&mut self, path: &str) -> std::io::Result<()> {
                self.$f.mkdir(path)
            }
            fn mkdir_private(&mut self, path: &str) -> std::io::Result<()> {
                self.$f.mkdir_private(path)
            }
            fn write_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
                self.$f.write_atomic(path, data, mode)
            }
            fn write_private(&mut self, path: &str, data: &[u8]) -> std::io::Result<()> {
                self.$f.write_private(path, data)
            }
            fn remove_file(&mut self, path: &str) -> std::io::Result<()> {
                self.$f.remove_file(path)
            }
        }
    };
    (@Clock $ty:ty, $f:ident) => {
        impl $crate::sys::Clock for $ty {
            fn now(&mut self) -> u64 {
                self.$f.now()
            }
            fn elapsed(&mut self) -> std::time::Duration {
                self.$f.elapsed()
            }
            fn sleep(&mut self, d: std::time::Duration) {
                self.$f.sleep(d)
            }
        }
    };
    (@Console $ty:ty, $f:ident) => {
        impl $crate::sys::Console for $ty {
            fn say(&mut self, line: &str) {
                self.$f.say(line)
            }
            fn note(&mut self, line: &str) {
                self.$f.note(line)
            }
        }
    };
    (@Random $ty:ty, $f:ident) => {
        impl $crate::sys::Random for $ty {
            fn random(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
                self.$f.random(buf)
            }
            fn jitter(&mut self) -> u8 {
                self.$f.jitter()
            }
        }
    };
    (@Resolve $ty:ty, $f:ident) => {
        impl $crate::sys::Resolve for $ty {
            fn resolve(
                &mut self,
                host: &str,
                port: u16,
            ) -> std::io::Result<Vec<std::net::SocketAddr>> {
                self.$f.resolve(host, port)
            }
        }
    };
    (@Exec $ty:ty, $f:ident) => {
        impl $crate::sys::Exec for $ty {
            fn run(&mut self, cmd: &$crate::sys::Cmd<'_>) -> $crate::sys::CommandResult {
                self.$f.run(cmd)
            }
        }
    };
}
pub(crate) use forward;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_names_program_and_arguments() {
        let c = Cmd::new("kubeadm", &["join", "--config", "x.yaml"])
            .timeout(Duration::from_secs(3))
            .capture(Capture::Stderr);
        assert_eq!(c.line(), "kubeadm join --config x.yaml");
        assert_eq!(c.timeout, Some(Duration::from_secs(3)));
        assert!(CommandResult::exited(0, "").success());
        assert!(!CommandResult::exited(1, "").success());
        assert!(!CommandResult::TimedOut.success());
    }
}
