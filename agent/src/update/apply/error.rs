//! What an apply ends with: the error that stopped it (one line saying what is wrong and
//! what to do), or what it applied.

use std::fmt;
use std::io;
use std::time::Duration;

use kiln_contract::boot::{Slot, UKI_DIR};
use kiln_contract::bundle::{BundleError, PartKind};

use super::verify;
use crate::update::fetch::FetchError;
use crate::update::slot::SlotError;

/// How a part failed while it was streamed.
#[derive(Debug)]
pub enum PartFailure {
    /// The bundle ended inside it.
    Truncated {
        /// Bytes of the part read.
        got: u64,
        /// Bytes it has.
        want: u64,
    },
    /// Reading the bundle failed (a download that could not be resumed).
    Read(String),
    /// Its SHA-256 is not the signed one.
    Digest {
        /// What its bytes hash to.
        actual: String,
        /// What the manifest says.
        signed: String,
    },
    /// Writing it to its partition failed.
    Write {
        /// The device.
        dev: String,
        /// The error.
        err: io::Error,
    },
}

/// Why an apply failed. Each message is one line: what is wrong and what to do.
#[derive(Debug)]
pub enum ApplyError {
    /// The bundle could not be opened or downloaded.
    Fetch(FetchError),
    /// Reading the bundle's header failed otherwise.
    Read(String),
    /// The header is not a bundle's, or its signature or manifest is refused.
    Bundle(BundleError),
    /// The image trusts no keys.
    NoKeys {
        /// The keys' folder.
        dir: String,
    },
    /// agent.toml is missing, unreadable or has no `[update]`.
    Settings(String),
    /// The bundle is for another architecture.
    WrongArch {
        /// The bundle's.
        bundle: String,
        /// This node's.
        node: String,
    },
    /// The bundle is of another image.
    WrongImage {
        /// The bundle's.
        bundle: String,
        /// This node's.
        node: String,
    },
    /// The bundle is older than the running version.
    Older {
        /// The bundle's.
        bundle: String,
        /// The running one.
        running: String,
    },
    /// The bundle is the running version.
    Running {
        /// The version.
        version: String,
    },
    /// The node rolled back from this version.
    Rejected {
        /// The version.
        version: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The file's length is not what the manifest says.
    Length {
        /// Bytes the source has.
        have: u64,
        /// Bytes the manifest says.
        want: u64,
    },
    /// The running system has no root hash on its command line.
    NoRootHash,
    /// The disk or its slots cannot be found or read.
    Disk(String),
    /// The slots cannot be told apart.
    Slots(SlotError),
    /// A part is larger than its partition in the other slot.
    TooSmall {
        /// The part.
        part: PartKind,
        /// Its bytes.
        size: u64,
        /// The slot.
        slot: Slot,
        /// The partition's bytes.
        holds: u64,
    },
    /// The running version is on trial itself.
    OnTrial {
        /// Its UKI's file name.
        file: String,
        /// Its version.
        version: String,
    },
    /// The ESP cannot be used.
    Esp(String),
    /// The ESP has too little room for the UKI.
    EspFull {
        /// Bytes free (counting the UKIs that will be deleted).
        free: u64,
        /// Bytes needed.
        need: u64,
    },
    /// A part failed while it was streamed.
    Part {
        /// The part.
        part: PartKind,
        /// How.
        failure: PartFailure,
    },
    /// The written slot does not hold the signed root.
    Tree(verify::TreeError),
    /// The UKI does not boot the bundle's root.
    Uki(verify::UkiError),
    /// Rewriting the GPT failed.
    Gpt(String),
    /// Installing the UKI failed.
    Install(String),
    /// A failure after the other slot was emptied: it stays empty.
    SlotLeftEmpty {
        /// The slot.
        slot: Slot,
        /// The failure.
        cause: Box<ApplyError>,
    },
}

/// Bytes as MiB with one decimal, for messages.
pub(super) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApplyError::Fetch(e) => e.fmt(f),
            ApplyError::Read(e) => write!(f, "reading the bundle: {e}"),
            ApplyError::Bundle(e) => e.fmt(f),
            ApplyError::NoKeys { dir } => write!(
                f,
                "this image trusts no update keys (no *.pub in {dir}): add [update] keys to its \
                 profile, rebuild and reflash it"
            ),
            ApplyError::Settings(m) => f.write_str(m),
            ApplyError::WrongArch { bundle, node } => write!(
                f,
                "the bundle is for {bundle}, this node is {node}: use the {node} bundle \
                 (<name>-{node}.update)"
            ),
            ApplyError::WrongImage { bundle, node } => write!(
                f,
                "the bundle is of image {bundle:?}, this node runs image {node:?}: use a bundle \
                 built from this node's profile"
            ),
            ApplyError::Older { bundle, running } => write!(
                f,
                "the bundle's version {bundle} is older than the running {running}: pass \
                 --allow-downgrade to install it anyway"
            ),
            ApplyError::Running { version } => write!(
                f,
                "the bundle's version {version} is the running version: nothing to do"
            ),
            ApplyError::Rejected { version, reason } => write!(
                f,
                "this node rolled back from version {version} ({reason}): pass --force to apply \
                 it again"
            ),
            ApplyError::Length { have, want } if have < want => write!(
                f,
                "the bundle is {have} bytes but its manifest says {want}: it is truncated; \
                 download or copy it again"
            ),
            ApplyError::Length { have, want } => write!(
                f,
                "the bundle is {have} bytes but its manifest says {want}: there are bytes after \
                 its last part, so it is not the file kiln wrote; download or copy it again"
            ),
            ApplyError::NoRootHash => f.write_str(
                "the running system was booted without kiln.roothash= on its command line, so \
                 its slot is unknown: updates need an A/B image booted through its UKI",
            ),
            ApplyError::Disk(m) | ApplyError::Esp(m) | ApplyError::Gpt(m) => f.write_str(m),
            ApplyError::Install(m) => write!(f, "installing the UKI: {m}"),
            ApplyError::Slots(e) => e.fmt(f),
            ApplyError::TooSmall {
                part,
                size,
                slot,
                holds,
            } => {
                let what = match part {
                    PartKind::RootVerity => "root-verity",
                    _ => "root",
                };
                write!(
                    f,
                    "slot too small: the bundle's {what} is {size} bytes ({}), slot {slot} holds \
                     {holds} ({}); reflash with a larger [update] slot_size",
                    mib(*size),
                    mib(*holds)
                )
            }
            ApplyError::OnTrial { file, version } => write!(
                f,
                "the running version {version} is still on trial ({UKI_DIR}/{file}): writing \
                 the other slot now would remove its fallback; wait until it is marked good \
                 (kiln-agent update status), or pass --force"
            ),
            ApplyError::EspFull { free, need } => write!(
                f,
                "the ESP has {free} bytes free for the new UKI, which needs {need}: remove \
                 files kiln did not put there (EFI/Linux holds only kiln-a and kiln-b UKIs)"
            ),
            ApplyError::Part { part, failure } => match failure {
                PartFailure::Truncated { got, want } => write!(
                    f,
                    "the bundle ended after {got} of the {want} bytes of its {part} part: it is \
                     truncated; download or copy it again"
                ),
                PartFailure::Read(e) => write!(f, "reading the bundle's {part} part: {e}"),
                PartFailure::Digest { actual, signed } => write!(
                    f,
                    "the bundle's {part} part has SHA-256 {actual}, not the signed {signed}: \
                     the bundle was changed or damaged; download or copy it again"
                ),
                PartFailure::Write { dev, err } => write!(
                    f,
                    "writing the bundle's {part} part to {dev}: {err}; check the disk (dmesg)"
                ),
            },
            ApplyError::Tree(e) => write!(f, "{e}: the slot does not hold the signed root"),
            ApplyError::Uki(e) => write!(f, "{e}: the bundle was built wrongly; rebuild it"),
            ApplyError::SlotLeftEmpty { slot, cause } => write!(
                f,
                "{cause} (slot {slot} is left empty; the running version is untouched and \
                 boots as before)"
            ),
        }
    }
}

impl std::error::Error for ApplyError {}

/// What was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The new version.
    pub version: String,
    /// The version that was running.
    pub from: String,
    /// The slot written.
    pub slot: Slot,
    /// The UKI's file name.
    pub uki: String,
    /// Bytes of the bundle's parts written.
    pub bytes: u64,
    /// How long it took.
    pub took: Duration,
    /// Whether it is a downgrade.
    pub downgrade: bool,
}

impl Applied {
    /// The summary line.
    pub fn summary(&self) -> String {
        let secs = self.took.as_secs_f64().max(0.001);
        format!(
            "applied version {} (was {}) to slot {}: {} in {:.1} s ({:.1} MiB/s); {UKI_DIR}/{} \
             boots it next{}",
            self.version,
            self.from,
            self.slot,
            mib(self.bytes),
            secs,
            self.bytes as f64 / f64::from(1u32 << 20) / secs,
            self.uki,
            if self.downgrade {
                " (a downgrade: the running version stays the fallback)"
            } else {
                ""
            }
        )
    }
}
