//! A scripted machine for tests: files in memory, a clock that only moves when slept,
//! recorded console lines, counted random bytes, scripted programs and host names. Each
//! mode's fake keeps one as its base, forwards the capabilities it does not need to change
//! ([`crate::sys::forward!`]) and derefs to it ([`fake_base!`]), so tests read
//! `fake.lines` or `fake.files` whatever the mode.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Clock, Cmd, CommandResult, Console, Exec, Files, Random, Resolve};

/// The scripted machine.
#[derive(Debug, Default)]
pub struct FakeSys {
    /// Files by path.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Folders (also implied by the files under them).
    pub dirs: BTreeSet<String>,
    /// Modification times of written files (the clock's `now` when written).
    pub mtimes: BTreeMap<String, u64>,
    /// Every write: `path` (private) or `path mode` (atomic, octal).
    pub writes: Vec<String>,
    /// Where writes are also logged as `write <path>`, in order with what other fakes log.
    pub shared_log: Option<Arc<Mutex<Vec<String>>>>,
    /// Lines said on the console.
    pub lines: Vec<String>,
    /// Diagnostic lines.
    pub notes: Vec<String>,
    /// Unix seconds; sleeping adds whole seconds.
    pub now: u64,
    /// The monotonic clock; sleeping adds to it.
    pub elapsed: Duration,
    /// Every sleep.
    pub slept: Vec<Duration>,
    /// The next random byte (each one counts up).
    pub random_next: u8,
    /// Results by command line (`program args...`), else by program.
    pub commands: BTreeMap<String, CommandResult>,
    /// The result of a program without a script; None: `Failed("<line>: not found")`.
    pub unscripted: Option<CommandResult>,
    /// Every command line run.
    pub ran: Vec<String>,
    /// The timeout of every run.
    pub timeouts: Vec<Option<Duration>>,
    /// Host names and their addresses.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

impl FakeSys {
    /// A machine holding `files`.
    pub fn with_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> FakeSys {
        FakeSys {
            files: files
                .into_iter()
                .map(|(p, b)| (p.to_string(), b.to_vec()))
                .collect(),
            ..FakeSys::default()
        }
    }

    /// Whether a console line contains `needle`.
    pub fn has_line(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    fn wrote(&mut self, path: &str, data: &[u8], what: String) {
        self.writes.push(what);
        if let Some(log) = &self.shared_log {
            if let Ok(mut log) = log.lock() {
                log.push(format!("write {path}"));
            }
        }
        self.files.insert(path.to_string(), data.to_vec());
        self.mtimes.insert(path.to_string(), self.now);
    }

    fn under(&self, path: &str) -> impl Iterator<Item = &str> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.files
            .keys()
            .chain(&self.dirs)
            .filter_map(move |p| p.strip_prefix(prefix.as_str()))
            .map(|rest| rest.split('/').next().unwrap_or(rest))
    }
}

impl Files for FakeSys {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(not_found)
    }
    fn exists(&mut self, path: &str) -> bool {
        self.files.contains_key(path) || self.is_dir(path)
    }
    fn is_dir(&mut self, path: &str) -> bool {
        self.dirs.contains(path) || self.under(path).next().is_some()
    }
    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        if !self.is_dir(path) {
            return Err(not_found());
        }
        let names: BTreeSet<&str> = self.under(path).collect();
        Ok(names.into_iter().map(str::to_string).collect())
    }
    fn modified(&mut self, path: &str) -> Option<u64> {
        self.files
            .contains_key(path)
            .then(|| self.mtimes.get(path).copied().unwrap_or(0))
    }
    fn mkdir(&mut self, path: &str) -> io::Result<()> {
        self.dirs.insert(path.to_string());
        Ok(())
    }
    fn mkdir_private(&mut self, path: &str) -> io::Result<()> {
        self.mkdir(path)
    }
    fn write_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        self.wrote(path, data, format!("{path} {mode:o}"));
        Ok(())
    }
    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.wrote(path, data, path.to_string());
        Ok(())
    }
    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        self.files.remove(path);
        Ok(())
    }
}

impl Clock for FakeSys {
    fn now(&mut self) -> u64 {
        self.now
    }
    fn elapsed(&mut self) -> Duration {
        self.elapsed
    }
    fn sleep(&mut self, d: Duration) {
        self.slept.push(d);
        self.elapsed += d;
        self.now += d.as_secs();
    }
}

impl Console for FakeSys {
    fn say(&mut self, line: &str) {
        self.lines.push(line.to_string());
    }
    fn note(&mut self, line: &str) {
        self.notes.push(line.to_string());
    }
}

impl Random for FakeSys {
    fn random(&mut self, buf: &mut [u8]) -> io::Result<()> {
        for b in buf {
            *b = self.random_next;
            self.random_next = self.random_next.wrapping_add(1);
        }
        Ok(())
    }
}

impl Resolve for FakeSys {
    fn resolve(&mut self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let addrs = self.hosts.get(host).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{host}: no such host"))
        })?;
        Ok(addrs.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }
}

impl Exec for FakeSys {
    fn run(&mut self, cmd: &Cmd<'_>) -> CommandResult {
        let line = cmd.line();
        self.ran.push(line.clone());
        self.timeouts.push(cmd.timeout);
        self.commands
            .get(&line)
            .or_else(|| self.commands.get(cmd.program))
            .or(self.unscripted.as_ref())
            .cloned()
            .unwrap_or_else(|| CommandResult::Failed(format!("{line}: not found")))
    }
}

/// `Deref` and `DerefMut` from a mode's fake `$ty` to its [`FakeSys`] field `$field`.
macro_rules! fake_base {
    ($ty:ty => $field:ident) => {
        impl std::ops::Deref for $ty {
            type Target = $crate::sys::fake::FakeSys;
            fn deref(&self) -> &Self::Target {
                &self.$field
            }
        }
        impl std::ops::DerefMut for $ty {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.$field
            }
        }
    };
}
pub(crate) use fake_base;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_are_implied_by_their_files() {
        let mut f = FakeSys::with_files([("/sys/class/block/vda/size", &b"8\n"[..])]);
        f.mkdir("/sys/class/block/vdb").unwrap();
        assert!(f.exists("/sys/class/block") && f.is_dir("/sys/class/block/vda"));
        assert!(!f.is_dir("/sys/class/block/vda/size"));
        assert_eq!(f.list_dir("/sys/class/block").unwrap(), ["vda", "vdb"]);
        assert!(f.list_dir("/nope").is_err());
    }

    #[test]
    fn programs_answer_by_line_then_by_name() {
        let mut f = FakeSys::default();
        f.commands
            .insert("nft --version".into(), CommandResult::exited(0, "v1\n"));
        f.commands
            .insert("nft".into(), CommandResult::exited(1, ""));
        assert!(f.run(&Cmd::new("nft", &["--version"])).success());
        assert!(!f.run(&Cmd::new("nft", &["-f", "-"])).success());
        assert!(matches!(
            f.run(&Cmd::new("x", &[])),
            CommandResult::Failed(_)
        ));
        assert_eq!(f.ran, ["nft --version", "nft -f -", "x"]);
    }
}
