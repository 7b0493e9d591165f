//! `kiln flash IMAGE TARGET`: puts an image on a disk (or into a file).
//!
//! One pass of decisions, then one of effects:
//! 1. [`target`] looks at the target and refuses the disk the host runs from,
//!    anything mounted, used as swap or held by device-mapper, a partition
//!    (unless `--force`), and a read-only device;
//! 2. [`source`] opens the image (raw, raw.zst with its block map, qcow2,
//!    fixed VHD) and knows which of its byte ranges hold data;
//! 3. [`esp`] turns `--config kiln.toml` into patches of the ESP;
//! 4. [`plan`] decides the regions and patches (the GPT backup moved to the
//!    end of a larger target) without touching anything;
//! 5. [`write`] checks the image against its block map (nothing is written if
//!    it differs), writes the regions, flushes, drops the target's cache and
//!    reads every region back to compare its SHA-256 with what was written.
//!
//! The ioctls live in [`sys`], behind [`sys::BlockOps`].

pub mod bmap;
pub mod esp;
pub mod plan;
pub mod source;
pub mod sys;
pub mod target;
pub mod write;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::build::Ui;
use crate::runner::{RunError, Runner};
use plan::{BackupGpt, ImageGpt, PlanError, PlanInput};
use source::{BmapChoice, ImageFormat};
use sys::BlockOps;
use target::{Refusal, TargetKind};

/// Why a flash failed. Every message names the file or device.
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    /// An I/O error.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// The file or device.
        path: PathBuf,
        /// What was being done (`reading`, `writing to`, ...).
        action: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The target does not exist.
    #[error(
        "{}: no such device or file (to write into an image file, make it first, e.g. \
         `truncate -s 8G {}`)", path.display(), path.display()
    )]
    NoTarget {
        /// The path.
        path: PathBuf,
    },
    /// The target is refused.
    #[error("{}: not written: {why}", path.display())]
    Refused {
        /// The target.
        path: PathBuf,
        /// Why.
        why: Refusal,
    },
    /// The target cannot take the image.
    #[error("{}: not written: {why}", path.display())]
    Unfit {
        /// The target.
        path: PathBuf,
        /// Why.
        why: PlanError,
    },
    /// The image is not one `kiln flash` writes.
    #[error("{}: not a disk image: {what}", path.display())]
    NotAnImage {
        /// The image.
        path: PathBuf,
        /// What it is instead.
        what: String,
    },
    /// A raw.zst without its block map.
    #[error(
        "{}: a raw.zst image is flashed with its block map, and there is none at {} \
         (name it with --bmap)", path.display(), bmap.display()
    )]
    NoBmap {
        /// The image.
        path: PathBuf,
        /// Where the map was looked for.
        bmap: PathBuf,
    },
    /// The block map cannot be read.
    #[error("{}: not a usable block map: {why}", path.display())]
    BadBmap {
        /// The map.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The image does not match its block map.
    #[error(
        "{}: does not match the block map {}: {why}; nothing was written (use the map \
         built with this image, or --no-bmap for a raw or qcow2 image)",
        path.display(), bmap.display()
    )]
    BmapMismatch {
        /// The image.
        path: PathBuf,
        /// The map.
        bmap: PathBuf,
        /// What differs.
        why: String,
    },
    /// `qemu-img convert` failed.
    #[error("{}: converting the qcow2 image: {source}", path.display())]
    Convert {
        /// The image.
        path: PathBuf,
        /// The failed command.
        source: RunError,
    },
    /// The config file is not a node config.
    #[error("{}: not a node config: {why}", path.display())]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The config could not be put on the ESP.
    #[error("{}: cannot put it on the image's ESP: {why}", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The read-back differs.
    #[error("{}: verification failed: {why}", path.display())]
    VerifyFailed {
        /// The target.
        path: PathBuf,
        /// What differs.
        why: String,
    },
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl FlashError {
    /// An I/O error at `path`.
    pub fn io(path: &Path, action: &'static str, source: io::Error) -> FlashError {
        FlashError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }
}

/// What to flash where.
#[derive(Debug, Clone, Default)]
pub struct FlashOptions {
    /// The image.
    pub image: PathBuf,
    /// The disk, partition or file to write.
    pub target: PathBuf,
    /// Which block map to use.
    pub bmap: BmapChoice,
    /// A node config to put on the ESP as `kiln.toml`.
    pub config: Option<PathBuf>,
    /// Write into a partition (not a whole disk).
    pub force: bool,
}

/// What a flash did.
#[derive(Debug, Clone)]
pub struct FlashReport {
    /// The image.
    pub image: PathBuf,
    /// Its format.
    pub format: ImageFormat,
    /// The raw disk's size.
    pub image_size: u64,
    /// The block map used.
    pub bmap: Option<PathBuf>,
    /// The target.
    pub target: PathBuf,
    /// Its size.
    pub target_size: u64,
    /// Bytes written.
    pub written: u64,
    /// Regions written (and read back).
    pub regions: usize,
    /// Writing and flushing.
    pub write_time: Duration,
    /// Reading back.
    pub verify_time: Duration,
    /// The backup GPT.
    pub backup: BackupGpt,
    /// Bytes of the config put on the ESP.
    pub config: Option<u64>,
    /// Notes (e.g. the kernel could not re-read the partition table).
    pub notes: Vec<String>,
}

/// Bytes as a person reads them.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl fmt::Display for FlashReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.write_time.as_secs_f64().max(1e-3);
        writeln!(
            f,
            "flashed {} ({}, {}{}) to {} ({})",
            self.image.display(),
            self.format.name(),
            human(self.image_size),
            self.bmap
                .as_ref()
                .map(|b| format!(", block map {}", b.display()))
                .unwrap_or_default(),
            self.target.display(),
            human(self.target_size)
        )?;
        writeln!(
            f,
            "wrote {} ({:.1}% of the image) in {:.1} s: {}/s",
            human(self.written),
            self.written as f64 * 100.0 / self.image_size.max(1) as f64,
            secs,
            human((self.written as f64 / secs) as u64)
        )?;
        match self.backup {
            BackupGpt::Kept => {}
            BackupGpt::Moved { from, to } => writeln!(
                f,
                "backup GPT moved from LBA {from} to LBA {to}, the end of the target; the node \
                 makes its var partition in the free space on first boot"
            )?,
        }
        if let Some(n) = self.config {
            writeln!(
                f,
                "node config: /{} on the ESP ({n} bytes)",
                esp::ESP_CONFIG
            )?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        write!(
            f,
            "verified: read back {} in {} regions from {}, sha256 matches what was written ({:.1} s)",
            human(self.written),
            self.regions,
            self.target.display(),
            self.verify_time.as_secs_f64()
        )
    }
}

/// Opens the target for writing: exclusively for a block device (the kernel
/// refuses while anything has it mounted or open exclusively).
fn open_target(path: &Path, block: bool) -> Result<File, FlashError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    if block {
        o.custom_flags(nix::libc::O_EXCL);
    }
    o.open(path).map_err(|source| match source.raw_os_error() {
        Some(nix::libc::EROFS) => FlashError::Refused {
            path: path.to_path_buf(),
            why: Refusal::ReadOnly,
        },
        Some(nix::libc::EACCES) | Some(nix::libc::EPERM) => FlashError::Refused {
            path: path.to_path_buf(),
            why: Refusal::Permission,
        },
        Some(nix::libc::EBUSY) => FlashError::Refused {
            path: path.to_path_buf(),
            why: Refusal::Held(
                "another program or a mount (the kernel refused exclusive access)".into(),
            ),
        },
        _ => FlashError::io(path, "opening", source),
    })
}

/// Flashes `opts.image` to `opts.target`. `runner` runs `qemu-img` and `mcopy`.
pub fn flash(opts: &FlashOptions, ui: &Ui, runner: &dyn Runner) -> Result<FlashReport, FlashError> {
    let tpath = &opts.target;
    let info = target::look(tpath).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => FlashError::NoTarget {
            path: tpath.clone(),
        },
        _ => FlashError::io(tpath, "looking at", source),
    })?;
    target::judge(&info, &target::host_view(), opts.force).map_err(|why| FlashError::Refused {
        path: tpath.clone(),
        why,
    })?;
    let image = source::open(&opts.image, &opts.bmap, runner)?;
    if info.kind == TargetKind::File {
        let (a, b) = (std::fs::metadata(&opts.image), std::fs::metadata(tpath));
        if let (Ok(a), Ok(b)) = (a, b) {
            if a.dev() == b.dev() && a.ino() == b.ino() {
                return Err(FlashError::Refused {
                    path: tpath.clone(),
                    why: Refusal::TheImage,
                });
            }
        }
    }
    let config = opts.config.as_deref().map(esp::read_config).transpose()?;
    let block = info.kind != TargetKind::File;
    let ops: &dyn BlockOps = if block {
        &sys::HostBlock
    } else {
        &sys::FileBlock
    };
    let out = open_target(tpath, block)?;
    if ops
        .read_only(&out)
        .map_err(|source| FlashError::io(tpath, "asking the read-only flag of", source))?
    {
        return Err(FlashError::Refused {
            path: tpath.clone(),
            why: Refusal::ReadOnly,
        });
    }
    let target_size = ops
        .size(&out)
        .map_err(|source| FlashError::io(tpath, "reading the size of", source))?;
    let sector = ops
        .logical_sector(&out)
        .map_err(|source| FlashError::io(tpath, "reading the sector size of", source))?;

    let not_image = |what: String| FlashError::NotAnImage {
        path: opts.image.clone(),
        what,
    };
    let head = image.head((4 << 20) + (64 << 10))?;
    let gpt = ImageGpt::read(&head).map_err(not_image)?;
    let mut extra = Vec::new();
    if let (Some(bytes), Some(cpath)) = (&config, &opts.config) {
        let Some(range) = gpt.esp() else {
            return Err(not_image(
                "it has no EFI system partition for --config".into(),
            ));
        };
        let esp_bytes = image.head(range.end)?;
        let esp_bytes = esp_bytes
            .get(range.start as usize..)
            .ok_or_else(|| not_image("its ESP lies past its end".into()))?;
        extra = esp::config_patches(cpath, bytes, &range, esp_bytes, runner)?;
    }
    let plan = plan::plan(PlanInput {
        image_size: image.size,
        ranges: &image.ranges,
        gpt: &gpt,
        target_size,
        target_sector: sector,
        extra,
    })
    .map_err(|why| match why {
        PlanError::Gpt(w) => not_image(w),
        why => FlashError::Unfit {
            path: tpath.clone(),
            why,
        },
    })?;

    if image.digests.is_some() || image.format == ImageFormat::RawZst {
        let pb = ui.bytes("checking the image");
        pb.set_length(image.mapped_bytes());
        write::check_image(&image, &pb)?;
        pb.finish_and_clear();
    }
    let pb = ui.bytes("writing");
    pb.set_length(plan.bytes());
    let written = write::write(&plan, &image, &out, tpath, &pb)?;
    pb.finish_and_clear();
    let pb = ui.bytes("verifying");
    pb.set_length(plan.bytes());
    let verify_time = write::verify(&plan, &written, &out, ops, tpath, &pb)?;
    pb.finish_and_clear();
    let mut notes = Vec::new();
    if block {
        match ops.reread_partitions(&out) {
            Ok(()) => {}
            // EINVAL: a device the kernel does not partition (a loop device without -P).
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => notes.push(format!(
                "the kernel does not scan {} for partitions (a loop device without -P?)",
                tpath.display()
            )),
            Err(e) => notes.push(format!(
                "the kernel did not re-read the partition table of {} ({e}); it will at the \
                 next boot or replug",
                tpath.display()
            )),
        }
    }
    Ok(FlashReport {
        image: opts.image.clone(),
        format: image.format,
        image_size: image.size,
        bmap: image.bmap.clone(),
        target: tpath.clone(),
        target_size,
        written: written.bytes,
        regions: plan.regions.len(),
        write_time: written.elapsed,
        verify_time,
        backup: plan.backup,
        config: config.map(|c| c.len() as u64),
        notes,
    })
}
