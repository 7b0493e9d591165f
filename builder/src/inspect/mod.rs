//! `kiln inspect`: reads an image back and says what is in it, and with
//! `--verify` recomputes everything that can be recomputed and compares.
//!
//! [`inspect`] opens the image (raw; qcow2 through `qemu-img convert`;
//! fixed VHD by dropping its footer; raw.zst and the GCE tarball by
//! decompressing to a temporary file), reads the GPT ([`gpt`]), lists the
//! ESP with kiln's own FAT reader ([`fat`]), reads the UKI's sections, the
//! verity superblock and the ext4 superblock, and the manifest published
//! next to the image, and which root slot the UKI boots ([`slots`]). The
//! result is a [`Report`]: plain data (serialisable
//! for `--json`) with a human [`std::fmt::Display`]. [`verify`] adds one
//! [`Check`] per recomputed fact.
//!
//! Things that cannot be read (a corrupt ESP, a missing UKI) do not stop the
//! report: they are listed in [`Report::problems`]. Only an input that is not
//! a kiln-readable disk at all (missing, not a GPT disk, truncated, a broken
//! table without `--verify`, an unreadable manifest) is an [`InspectError`].
//!
//! One job per file: `open` detects the input's format and gives a raw disk
//! (`disk`), `esp`, `slots`, `superblock` and `manifest` read their parts of
//! the report, `report` holds its data, `show` its text form, and [`verify`]
//! the checks (`verify_boot` those of the ESP and the slots).

mod disk;
mod error;
mod esp;
pub mod fat;
pub mod gpt;
mod manifest;
pub(crate) mod open;
mod report;
mod show;
mod slots;
mod superblock;
pub mod verify;
mod verify_boot;

use std::io::Read;
use std::path::{Path, PathBuf};

use esp::read_esp;
use manifest::summarize;
use open::open;

use crate::runner::Runner;

pub(crate) use disk::{sha256_reader, DiskFile};
pub use error::InspectError;
pub use esp::roothash_of;
pub use fat::{FatEntry, FatKind};
pub use gpt::{GptReport, Kind, PartitionInfo};
pub use manifest::{manifest_beside, read_manifest};
pub use report::{
    EspReport, Ext4Superblock, ManifestSummary, PackageLine, Report, SectionInfo, SuiteCount,
    UkiReport, VeritySuperblock, VhdFooter,
};
pub use slots::{SlotReport, SlotState};
pub use superblock::{parse_ext4_superblock, parse_verity_superblock};
pub use verify::{Check, Labelled, Outcome, Verification};

/// Which manifest to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ManifestSource {
    /// `<profile>-<arch>.manifest.json` next to the image, if it exists
    /// (see [`manifest_beside`]).
    #[default]
    Beside,
    /// This file; it must exist.
    Path(PathBuf),
    /// None: manifest facts and checks are left out.
    Skip,
}

/// What [`inspect`] does.
#[derive(Debug, Clone, Default)]
pub struct InspectOptions {
    /// The manifest to read.
    pub manifest: ManifestSource,
    /// Recompute and compare ([`Report::verification`]).
    pub verify: bool,
}

/// Inspects the image at `image`. `runner` runs `qemu-img` for qcow2 input.
pub fn inspect(
    image: &Path,
    opts: &InspectOptions,
    runner: &dyn Runner,
) -> Result<Report, InspectError> {
    let opened = open(image, runner)?;
    let disk = &opened.disk;
    let gpt = gpt::read(disk)?;
    if !opts.verify {
        let vhd = opened.vhd.as_ref().map(VhdFooter::check);
        if let Some(c) = vhd.iter().chain(&gpt.checks).find(|c| !c.passed()) {
            return Err(InspectError::Corrupt {
                path: image.to_path_buf(),
                what: c.describe(),
            });
        }
    }

    let (manifest, manifest_note) = match &opts.manifest {
        ManifestSource::Path(p) => (Some((p.clone(), read_manifest(p)?)), None),
        ManifestSource::Beside => {
            let p = manifest_beside(image);
            if p.exists() {
                (Some((p.clone(), read_manifest(&p)?)), None)
            } else {
                (
                    None,
                    Some(format!(
                        "no manifest at {} (pass --manifest PATH to name one)",
                        p.display()
                    )),
                )
            }
        }
        ManifestSource::Skip => (None, Some("--no-manifest was given".to_string())),
    };

    let mut problems = Vec::new();
    let arch = gpt.partitions.iter().find_map(|p| match p.kind {
        Kind::Root(a) => Some(a),
        _ => None,
    });
    if let Some((path, m)) = &manifest {
        manifest::check_belongs(path, m, &gpt.disk_guid.to_string(), arch)?;
    }
    let read = match gpt.find(|k| k == Kind::Esp) {
        Some(p) => read_esp(disk, p, arch, &mut problems)?,
        None => {
            problems.push("no EFI System Partition in the GPT".into());
            esp::EspRead {
                esp: None,
                ukis: Vec::new(),
            }
        }
    };
    let esp = read.esp;
    let mut ukis = read.ukis.into_iter();
    let uki = ukis.next();
    let other_ukis: Vec<UkiReport> = ukis.collect();
    let all_ukis: Vec<&UkiReport> = uki.iter().chain(&other_ukis).collect();
    let slots = slots::read(&gpt, arch, &all_ukis, &mut problems);
    let active_slot = slots::active(&slots, uki.as_ref());
    let (root_part, verity_part) = slots::active_partitions(&gpt, &slots, active_slot);
    let verity = match verity_part {
        Some(p) => {
            let mut sb = vec![0u8; 512.min(p.size as usize)];
            disk.part(p)?
                .reader(512)
                .read_exact(&mut sb)
                .map_err(disk.io("reading the disk"))?;
            parse_verity_superblock(p.number, &sb)
                .map_err(|e| problems.push(format!("{}: {e}", part_label(p))))
                .ok()
        }
        None => {
            problems.push("no root-verity partition in the GPT".into());
            None
        }
    };
    let root_fs = match root_part {
        Some(p) if p.size >= 2048 => {
            let sb = disk.read_vec(p.offset + 1024, 1024)?;
            let parsed = parse_ext4_superblock(p.number, &sb)
                .map_err(|e| problems.push(format!("{}: {e}", part_label(p))))
                .ok();
            if let Some(fs) = parsed.as_ref().filter(|fs| fs.size > p.size) {
                problems.push(format!(
                    "{}: the ext4 filesystem says it is {} bytes, larger than its {}-byte \
                     partition",
                    part_label(p),
                    fs.size,
                    p.size
                ));
            }
            parsed
        }
        Some(p) => {
            problems.push(format!(
                "{}: {} bytes, too small for ext4",
                part_label(p),
                p.size
            ));
            None
        }
        None => {
            problems.push("no root partition (x86_64 or arm64 type) in the GPT".into());
            None
        }
    };

    let mut report = Report {
        image: image.to_path_buf(),
        format: opened.format,
        file_size: opened.file_size,
        disk_size: disk.len,
        vhd: opened.vhd.clone(),
        gpt,
        arch,
        esp,
        uki,
        other_ukis,
        slots,
        active_slot,
        verity,
        root_fs,
        manifest: manifest.as_ref().map(|(p, m)| summarize(p, m)),
        manifest_note,
        verification: None,
        notes: opened.notes.clone(),
        problems,
    };
    if opts.verify {
        let v = verify::run(&verify::Inputs {
            image,
            disk,
            report: &report,
            manifest: manifest.as_ref().map(|(_, m)| m),
        });
        report.verification = Some(v);
    }
    Ok(report)
}

/// `partition N (name)`, how problems name a partition.
pub(super) fn part_label(p: &PartitionInfo) -> String {
    format!("partition {} ({})", p.number, p.name)
}

/// A fixed-size or section text field without its NUL, newline or space
/// padding.
pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches(['\0', '\n', ' '])
        .to_string()
}

#[cfg(test)]
mod fixture;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_boot;
#[cfg(test)]
mod tests_formats;
