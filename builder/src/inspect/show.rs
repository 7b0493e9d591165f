//! The report as text for people (`kiln inspect` without `--json`).

use std::fmt;

use super::{Report, SlotState};
use crate::profile::format_size;

impl Report {
    /// The report with every package listed.
    pub fn with_packages(&self) -> impl fmt::Display + '_ {
        Shown {
            report: self,
            packages: true,
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since 1970 (proleptic Gregorian).
pub(super) fn utc(secs: i64) -> String {
    // One civil-date conversion for the whole crate: the OCI writer's.
    let iso = crate::oci::rfc3339(secs);
    format!("{} UTC", iso.trim_end_matches('Z').replacen('T', " ", 1))
}

/// The text form, with or without the package list.
struct Shown<'a> {
    report: &'a Report,
    packages: bool,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Shown {
            report: self,
            packages: false,
        }
        .fmt(f)
    }
}

fn size_text(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else {
        format!("{} ({n} bytes)", format_size(n))
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.report;
        writeln!(f, "image {}", r.image.display())?;
        writeln!(
            f,
            "  format      {}, {}",
            r.format.name(),
            size_text(r.file_size)
        )?;
        writeln!(
            f,
            "  disk        {}, {} sectors of 512 bytes{}",
            size_text(r.disk_size),
            r.disk_size / 512,
            r.arch.map(|a| format!(", {a}")).unwrap_or_default()
        )?;
        if let Some(v) = &r.vhd {
            writeln!(
                f,
                "  vhd footer  fixed disk of {} bytes, id {}, checksum {:#010x}",
                v.current_size, v.unique_id, v.checksum
            )?;
        }
        for n in &r.notes {
            writeln!(f, "  note        {n}")?;
        }

        let g = &r.gpt;
        writeln!(f)?;
        writeln!(
            f,
            "partition table (GPT, read from the {} header)",
            g.source
        )?;
        writeln!(f, "  disk GUID   {}", g.disk_guid)?;
        let failed = g.checks.iter().filter(|c| !c.passed()).count();
        writeln!(
            f,
            "  headers     LBA 1 and LBA {}, {} entries of {} bytes; {}",
            g.backup_lba,
            g.entry_count,
            g.entry_size,
            if failed == 0 {
                "both headers and entry arrays intact (CRC32 ok)".to_string()
            } else {
                format!("{failed} structural check(s) FAILED (see verification)")
            }
        )?;
        for p in &g.partitions {
            writeln!(
                f,
                "  #{:<2} {:<22} {} ({})",
                p.number, p.name, p.type_name, p.type_guid
            )?;
            let attrs = if p.attribute_names.is_empty() {
                String::new()
            } else {
                format!(", {}", p.attribute_names.join(" "))
            };
            writeln!(
                f,
                "      PARTUUID {}, LBAs {}..={}, {}{attrs}",
                p.partuuid,
                p.first_lba,
                p.last_lba,
                format_size(p.size)
            )?;
        }

        if !r.slots.is_empty() {
            writeln!(f)?;
            writeln!(f, "root slots (a UKI's root hash selects its slot)")?;
            for s in &r.slots {
                let num = |n: Option<u32>| n.map_or("?".into(), |n| format!("#{n}"));
                let what = match (s.state, &s.uki) {
                    (SlotState::Empty, _) => "empty".to_string(),
                    (_, Some(uki)) => format!("booted by {uki}"),
                    (SlotState::Filled, None) => "holds a root no UKI boots".to_string(),
                    (SlotState::Unexpected, None) => "unexpected names (see problems)".into(),
                };
                let active = if Some(s.slot) == r.active_slot {
                    " (shown below)"
                } else {
                    ""
                };
                writeln!(
                    f,
                    "  {}  partitions {} + {} ({} root): {what}{active}",
                    s.slot,
                    num(s.root),
                    num(s.verity),
                    format_size(s.size)
                )?;
            }
        }

        if let Some(e) = &r.esp {
            writeln!(f)?;
            writeln!(
                f,
                "ESP (partition {}): {}, label {}, serial {}, {}-byte clusters",
                e.partition,
                e.fat,
                e.label.as_deref().unwrap_or("(none)"),
                e.serial.as_deref().unwrap_or("(none)"),
                e.cluster_size
            )?;
            for file in &e.files {
                if file.is_dir {
                    writeln!(f, "  {}/", file.path)?;
                } else {
                    writeln!(f, "  {:<40} {}", file.path, format_size(file.size))?;
                }
            }
        }

        if let Some(u) = &r.uki {
            writeln!(f)?;
            writeln!(f, "UKI {} ({}, {})", u.path, format_size(u.size), u.machine)?;
            let none = "(missing)";
            writeln!(
                f,
                "  kernel      {}",
                u.kernel_release.as_deref().unwrap_or(none)
            )?;
            writeln!(f, "  os          {}", u.os.as_deref().unwrap_or(none))?;
            writeln!(f, "  version     {}", u.version.as_deref().unwrap_or(none))?;
            writeln!(f, "  cmdline     {}", u.cmdline.as_deref().unwrap_or(none))?;
            writeln!(f, "  roothash    {}", u.roothash.as_deref().unwrap_or(none))?;
            let sections: Vec<String> = u
                .sections
                .iter()
                .map(|s| format!("{} {}", s.name, format_size(s.size)))
                .collect();
            writeln!(f, "  sections    {}", sections.join(", "))?;
            for o in &r.other_ukis {
                writeln!(
                    f,
                    "  also        {} ({}, version {})",
                    o.path,
                    o.kernel_release.as_deref().unwrap_or(none),
                    o.version.as_deref().unwrap_or(none)
                )?;
            }
        }

        if let Some(v) = &r.verity {
            writeln!(f)?;
            writeln!(
                f,
                "verity superblock (partition {}): format {}, {}, {}-byte data and {}-byte hash blocks",
                v.partition, v.version, v.algorithm, v.data_block_size, v.hash_block_size
            )?;
            writeln!(
                f,
                "  data        {} blocks ({})",
                v.data_blocks,
                format_size(v.data_blocks.saturating_mul(u64::from(v.data_block_size)))
            )?;
            writeln!(f, "  salt        {}", v.salt)?;
            writeln!(f, "  uuid        {}", v.uuid)?;
        }

        if let Some(e) = &r.root_fs {
            writeln!(f)?;
            writeln!(
                f,
                "root filesystem (partition {}): ext4, label \"{}\"",
                e.partition, e.label
            )?;
            writeln!(f, "  UUID        {}", e.uuid)?;
            writeln!(
                f,
                "  size        {} ({} blocks of {} bytes)",
                format_size(e.size),
                e.blocks,
                e.block_size
            )?;
            writeln!(
                f,
                "  free        {} ({} blocks); {} of {} inodes free",
                format_size(e.free_blocks.saturating_mul(e.block_size)),
                e.free_blocks,
                e.free_inodes,
                e.inodes
            )?;
        }

        writeln!(f)?;
        match (&r.manifest, &r.manifest_note) {
            (Some(m), _) => {
                writeln!(f, "manifest {}", m.path.display())?;
                writeln!(
                    f,
                    "  built by    kiln {} from profile {} (image `{}`, {})",
                    m.kiln_version, m.profile, m.name, m.arch
                )?;
                writeln!(
                    f,
                    "  version     {}",
                    m.version
                        .as_deref()
                        .unwrap_or("? (not recorded: a manifest of a kiln before A/B updates)")
                )?;
                writeln!(
                    f,
                    "  agent       built by rustc {}",
                    m.rustc
                        .as_deref()
                        .unwrap_or("? (not recorded: a manifest of an older kiln)")
                )?;
                writeln!(f, "  epoch       {} ({})", m.epoch, utc(m.epoch))?;
                writeln!(
                    f,
                    "  kernel      {} {} ({})",
                    m.kernel_package, m.kernel_version, m.kernel_release
                )?;
                let by_suite: Vec<String> = m
                    .suites
                    .iter()
                    .map(|c| format!("{} from {}", c.packages, c.suite))
                    .collect();
                let by_suite = by_suite.join(", ");
                if self.packages {
                    if by_suite.is_empty() {
                        writeln!(f, "  packages    {}", m.packages.len())?;
                    } else {
                        writeln!(f, "  packages    {} ({by_suite})", m.packages.len())?;
                    }
                    for p in &m.packages {
                        // The suite only where the manifest records it.
                        let suite = if p.suite.is_empty() {
                            String::new()
                        } else {
                            format!(", {}", p.suite)
                        };
                        writeln!(
                            f,
                            "    {:<36} {} ({}, {}{suite})",
                            p.name, p.version, p.arch, p.role
                        )?;
                    }
                } else {
                    let sep = if by_suite.is_empty() { "" } else { "; " };
                    writeln!(
                        f,
                        "  packages    {} ({by_suite}{sep}`kiln inspect --packages` lists them)",
                        m.packages.len()
                    )?;
                }
            }
            (None, note) => writeln!(
                f,
                "manifest    none: {}",
                note.as_deref().unwrap_or("not read")
            )?,
        }

        if let Some(v) = &r.verification {
            writeln!(f)?;
            write!(f, "{v}")?;
        }
        if !r.problems.is_empty() {
            writeln!(f)?;
            writeln!(f, "problems")?;
            for p in &r.problems {
                writeln!(f, "  - {p}")?;
            }
        }
        Ok(())
    }
}
