//! `[output]`: which files a build publishes, and how hard `raw.zst` is
//! compressed.

use std::path::Path;

use super::{dto, ProfileError};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// Raw disk image (`.raw`).
    Raw,
    /// zstd-compressed raw image plus a bmaptool block map (`.raw.zst`, `.bmap`).
    RawZst,
    /// qcow2 (`.qcow2`), written by `qemu-img convert`.
    Qcow2,
    /// Fixed VHD for Azure (`.vhd`): the raw disk plus a 512-byte footer.
    Vhd,
    /// Google Compute Engine import tarball (`.gce.tar.gz` holding `disk.raw`).
    Gce,
    /// Signed A/B update bundle (`.update`): the root filesystem, its verity
    /// partition and the UKI behind a signed manifest. Needs the signing key
    /// (`kiln build --update-key`).
    Update,
}

impl Format {
    /// Every format, in the order outputs are written.
    pub const ALL: [Format; 6] = [
        Format::Raw,
        Format::RawZst,
        Format::Qcow2,
        Format::Vhd,
        Format::Gce,
        Format::Update,
    ];

    /// The forms of the whole disk image: every format but [`Format::Update`],
    /// which carries the image's parts and needs a signing key.
    pub const IMAGES: [Format; 5] = [
        Format::Raw,
        Format::RawZst,
        Format::Qcow2,
        Format::Vhd,
        Format::Gce,
    ];

    /// Parses a format name as written in profiles and on the command line.
    pub fn parse(s: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s)
    }

    /// The name used in profiles, `--format` and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::RawZst => "raw.zst",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Gce => "gce",
            Format::Update => "update",
        }
    }

    /// The supported names, for messages.
    pub fn names() -> String {
        Format::ALL.map(Format::name).join(", ")
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The zstd level `raw.zst` is written with (`[output] zstd_level`).
///
/// Only the level decides the compressed bytes (with the zstd library
/// version kiln is built with), so the same profile gives the same file on
/// every machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZstdLevel(u8);

impl ZstdLevel {
    /// The fastest level.
    pub const MIN: u8 = 1;
    /// The smallest output kiln offers. zstd's "ultra" levels 20-22 are left
    /// out: their point is a larger window, which kiln already gives every
    /// level (a whole frame), and their tables cost far more memory per worker.
    pub const MAX: u8 = 19;
    /// The level when a profile names none: on the default image, a file
    /// 40 % smaller than kiln's earlier encoder (ruzstd) made in no more time,
    /// and the lowest level that keeps it under 80 MiB. Level 9 saves another
    /// 2.4 % in 60 % more time, level 19 13 % in 30 times the time
    /// (BENCHMARKS.md, "raw.zst encoder").
    pub const DEFAULT: ZstdLevel = ZstdLevel(6);

    /// The level `n`, if it lies in [`Self::MIN`]..=[`Self::MAX`].
    pub fn new(n: i64) -> Option<ZstdLevel> {
        u8::try_from(n)
            .ok()
            .filter(|n| (Self::MIN..=Self::MAX).contains(n))
            .map(ZstdLevel)
    }

    /// The level as libzstd takes it.
    pub fn get(self) -> i32 {
        i32::from(self.0)
    }
}

impl Default for ZstdLevel {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl std::fmt::Display for ZstdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A validated `[output]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Output {
    /// Formats without duplicates, in the profile's order (default: raw).
    pub formats: Vec<Format>,
    /// The `raw.zst` level.
    pub zstd_level: ZstdLevel,
}

pub(super) fn validate(path: &Path, raw: dto::OutputFile) -> Result<Output, ProfileError> {
    let invalid = |field: String, message: String| ProfileError::Invalid {
        path: path.to_path_buf(),
        field,
        message,
    };
    let mut formats = Vec::new();
    let names = if raw.formats.is_empty() {
        vec!["raw".to_string()]
    } else {
        raw.formats
    };
    for (i, f) in names.iter().enumerate() {
        let fmt = Format::parse(f).ok_or_else(|| {
            invalid(
                format!("output.formats[{i}]"),
                format!("unknown format {f:?}; supported: {}", Format::names()),
            )
        })?;
        if !formats.contains(&fmt) {
            formats.push(fmt);
        }
    }
    let zstd_level = match raw.zstd_level {
        None => ZstdLevel::DEFAULT,
        Some(v) => v.as_integer().and_then(ZstdLevel::new).ok_or_else(|| {
            let what = match v.as_integer() {
                Some(n) => format!("{n} is out of range"),
                None => format!("{v} is not a whole number"),
            };
            invalid(
                "output.zstd_level".into(),
                format!(
                    "{what}: use {} (fastest) to {} (smallest file); without it \
                         kiln uses {}",
                    ZstdLevel::MIN,
                    ZstdLevel::MAX,
                    ZstdLevel::DEFAULT
                ),
            )
        })?,
    };
    Ok(Output {
        formats,
        zstd_level,
    })
}
