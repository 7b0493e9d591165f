//! `kiln-agent update apply SOURCE [--reboot] [--allow-downgrade] [--force] [--tries N]`:
//! checks a signed update bundle, writes it into the slot that is not running, and
//! installs its UKI on trial.
//!
//! The order is what makes a power loss at any moment harmless: the node must always
//! boot the version it ran before, and the running slot is never written.
//!
//! 1. Read-only checks. The bundle's header is read and its signature checked against
//!    the keys in the verified root ([`KEYS_DIR`]) before anything in it is looked at;
//!    then the arch, the image name, the version (older: `--allow-downgrade`; the
//!    running one: nothing to do; one the node rolled back from: `--force`), the
//!    bundle's length, the running and the other slot (by the root hash on the kernel
//!    command line), the other slot's partition sizes, the ESP's free space, and that
//!    the running version is not itself on trial (`--force`). A refusal here changes
//!    nothing at all.
//! 2. The other slot's UKIs are deleted from the ESP (and the folder synced): from here
//!    on nothing can boot that slot, whatever it holds.
//! 3. The other slot's GPT entries become `_empty` with the no-auto attribute and GUIDs
//!    of no root hash, in both GPT copies (backup first, so one copy is always whole).
//! 4. The root and verity parts stream into the slot's partitions while they are hashed
//!    (the UKI part into memory); each part's SHA-256 must be the signed one. Then the
//!    disk is synced.
//! 5. The dm-verity tree is recomputed from the root as it reads back from the disk: its
//!    root hash must be the signed one and the written verity part must be that tree;
//!    the UKI's command line must carry that root hash.
//! 6. The slot's GPT entries get its names and the root hash's halves as GUIDs (what
//!    init looks for), in both copies, read back to check.
//! 7. The UKI is written as `kiln-<slot>.efi.tmp`, synced, renamed to its boot-counted
//!    name (`kiln-b+3.efi`) and the folder synced: only now can systemd-boot see it.
//!
//! A failure in steps 2 to 6 leaves the slot `_empty` and its UKI gone; the running
//! version is untouched and boots as before. Running the apply again starts over.
//!
//! Downgrades: systemd-boot boots the entry with the highest `IMAGE_VERSION` first, so
//! an older version installed next to the running one would never be tried. With
//! `--allow-downgrade` the running slot's UKI is renamed to the boot counter `+0-0`
//! after the new UKI is in place: a "bad" entry, which systemd-boot sorts after every
//! other but still boots when nothing else is left. The older version is tried first
//! and the running one stays the fallback. (A later apply of a newer version gives a
//! running UKI named so its plain name back, so it is not sorted last again.)
//!
//! The parts: [`cli`] (help, arguments, exit status), [`checks`] (step 1, which ends in a
//! plan), [`write`] (steps 2 to 7), [`error`] (each refusal's and failure's message),
//! [`verify`] (the dm-verity tree and the UKI's command line), [`real`] (the machine
//! behind [`ApplySys`]).

mod checks;
mod cli;
mod error;
#[cfg(test)]
mod loop_tests;
pub mod real;
#[cfg(test)]
mod tests;
pub mod verify;
mod write;

use std::io;

use kiln_contract::boot::{KEYS_DIR, STATE_DIR};

pub(crate) use checks::load_keys;
pub use cli::{main, run, Options};
pub use error::{Applied, ApplyError, PartFailure};

use super::fetch::{BundleStream, FetchError};
use crate::sys::{Clock, Console, Exec, Files};

/// Bytes read and written at a time.
pub const CHUNK: usize = 1 << 20;
/// The largest UKI accepted (it is held in memory until it is written to the ESP).
pub const MAX_UKI: u64 = 512 << 20;
/// Room kept free on the ESP beyond the new UKI (FAT clusters, the temporary name).
pub const ESP_SLACK: u64 = 1 << 20;
/// Printed before every line.
const PREFIX: &str = "kiln-update";

/// Where the node keeps what apply reads (the real paths, or a test's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// The trusted keys' folder.
    pub keys_dir: String,
    /// agent.toml.
    pub agent_toml: String,
    /// The kernel command line.
    pub cmdline: String,
    /// The update state's folder.
    pub state_dir: String,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            keys_dir: KEYS_DIR.to_string(),
            agent_toml: kiln_contract::agent_config::PATH.to_string(),
            cmdline: "/proc/cmdline".to_string(),
            state_dir: STATE_DIR.to_string(),
        }
    }
}

/// What apply does to the machine beyond files, the clock, the console and programs.
pub trait ApplySys: Files + Clock + Console + Exec {
    /// Opens the bundle at `source` (a path or URL).
    fn open_bundle(&mut self, source: &str) -> Result<Box<dyn BundleStream>, FetchError>;
    /// The disks that may hold the running root (device paths, `/dev/vda`).
    fn disks(&mut self) -> Result<Vec<String>, String>;
    /// A disk's size in bytes.
    fn disk_bytes(&mut self, dev: &str) -> io::Result<u64>;
    /// A disk's logical sector size.
    fn sector_size(&mut self, dev: &str) -> io::Result<u64>;
    /// Reads `len` bytes at `offset` of a disk.
    fn read_at(&mut self, dev: &str, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Writes `data` at `offset` of a disk.
    fn write_at(&mut self, dev: &str, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Flushes a disk's writes to the device (fsync).
    fn sync_disk(&mut self, dev: &str) -> io::Result<()>;
    /// The ESP's mount point, mounted read-write if it was not (`/efi`).
    fn esp_dir(&mut self) -> Result<String, String>;
    /// Bytes free on the file system of `dir`.
    fn free_bytes(&mut self, dir: &str) -> io::Result<u64>;
    /// A file's length.
    fn file_len(&mut self, path: &str) -> io::Result<u64>;
    /// Creates or replaces `path` with `data` and fsyncs it.
    fn write_synced(&mut self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Renames a file (same folder).
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// fsyncs a folder, making renames and removals in it durable.
    fn sync_dir(&mut self, dir: &str) -> io::Result<()>;
    /// Whether stdout is a terminal (progress lines are for people).
    fn is_terminal(&mut self) -> bool;
}

/// Applies the bundle at `opts.source`; see the module documentation for the order.
pub fn apply(sys: &mut dyn ApplySys, paths: &Paths, opts: &Options) -> Result<Applied, ApplyError> {
    let start = sys.elapsed();
    let plan = checks::check(sys, paths, opts)?;
    write::write(sys, paths, plan, start)
}

/// Prints one line with the [`PREFIX`].
fn say(sys: &mut dyn ApplySys, line: &str) {
    sys.say(&format!("{PREFIX}: {line}"));
}

/// Reads exactly `buf.len()` bytes unless the stream ends first; returns the count.
fn read_full(stream: &mut dyn BundleStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match stream.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
