//! `kiln inspect --verify`: recomputes what can be recomputed and compares
//! it with what the image and its manifest claim, one [`Check`] per fact.
//!
//! What the image proves by itself: both GPT headers and entry arrays
//! (CRC32), the VHD footer checksum, the dm-verity hash tree of the slot the
//! UKI boots (rebuilt from its root partition with the superblock's salt and
//! UUID and compared byte for byte with its hash partition), the root hash
//! against `kiln.roothash=` on the UKI command line, the slot's root /
//! root-verity PARTUUIDs against the two halves of the root hash, and the
//! boot path (`verify_boot`: systemd-boot, `loader.conf`, the UKI under
//! `EFI/Linux`, the empty slot). What needs the manifest: every sha256 (each
//! partition, the whole raw disk, the file itself, each ESP file), the
//! layout with its slots, the kernel, the version and the verity parameters
//! it records.

use std::fmt;
use std::path::Path;

use serde::Serialize;

use super::{sha256_reader, DiskFile, PartitionInfo, Report};
use crate::fs::verity::{self, VerityParams};
use crate::output::manifest::Manifest;
use crate::plan::Guid;

/// One side of a comparison: where the value comes from, and the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Labelled {
    /// Where the value comes from (`manifest`, `computed`, ...).
    pub source: String,
    /// The value.
    pub value: String,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// The values agree.
    Ok {
        /// The value both sides have.
        value: String,
    },
    /// The values differ.
    Mismatch {
        /// The reference side.
        expected: Labelled,
        /// The side being checked.
        found: Labelled,
    },
    /// The check could not be made because something is missing or broken.
    Failed {
        /// What is missing or broken.
        reason: String,
    },
    /// The check does not apply (e.g. no manifest).
    Skipped {
        /// Why.
        reason: String,
    },
}

/// One verified fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// How it went.
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Check {
    /// A passed check.
    pub fn ok(what: &str, value: String) -> Check {
        Check {
            what: what.to_string(),
            outcome: Outcome::Ok { value },
        }
    }

    /// A mismatch between two labelled values.
    pub fn mismatch(what: &str, expected: (&str, String), found: (&str, String)) -> Check {
        Check {
            what: what.to_string(),
            outcome: Outcome::Mismatch {
                expected: Labelled {
                    source: expected.0.to_string(),
                    value: expected.1,
                },
                found: Labelled {
                    source: found.0.to_string(),
                    value: found.1,
                },
            },
        }
    }

    /// Ok when both values are equal, else a mismatch.
    pub fn compare(what: &str, expected: (&str, String), found: (&str, String)) -> Check {
        if expected.1 == found.1 {
            Check::ok(what, found.1)
        } else {
            Check::mismatch(what, expected, found)
        }
    }

    /// A check that could not be made.
    pub fn failed(what: &str, reason: String) -> Check {
        Check {
            what: what.to_string(),
            outcome: Outcome::Failed { reason },
        }
    }

    /// A check that does not apply.
    pub fn skipped(what: &str, reason: String) -> Check {
        Check {
            what: what.to_string(),
            outcome: Outcome::Skipped { reason },
        }
    }

    /// Whether the check passed or did not apply.
    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Ok { .. } | Outcome::Skipped { .. })
    }

    /// One line: what, and how it went.
    pub fn describe(&self) -> String {
        match &self.outcome {
            Outcome::Ok { value } => format!("{}: {value}", self.what),
            Outcome::Mismatch { expected, found } => format!(
                "{}: {} {}, {} {}",
                self.what, expected.source, expected.value, found.source, found.value
            ),
            Outcome::Failed { reason } | Outcome::Skipped { reason } => {
                format!("{}: {reason}", self.what)
            }
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Ok { value } => write!(f, "ok        {}: {value}", self.what),
            Outcome::Mismatch { expected, found } => {
                let w = expected.source.len().max(found.source.len()) + 1;
                write!(
                    f,
                    "MISMATCH  {}\n            {:<w$} {}\n            {:<w$} {}",
                    self.what,
                    format!("{}:", expected.source),
                    expected.value,
                    format!("{}:", found.source),
                    found.value
                )
            }
            Outcome::Failed { reason } => write!(f, "FAILED    {}: {reason}", self.what),
            Outcome::Skipped { reason } => write!(f, "skipped   {}: {reason}", self.what),
        }
    }
}

/// Every check of one `--verify` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// The checks, in the order they were made.
    pub checks: Vec<Check>,
    /// Why the manifest checks were skipped, if they were.
    pub manifest_skipped: Option<String>,
}

impl Verification {
    /// Whether no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(Check::passed)
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed())
    }
}

impl fmt::Display for Verification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verification")?;
        for c in &self.checks {
            writeln!(f, "  {c}")?;
        }
        let failed = self.failures().count();
        let ok = self
            .checks
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Ok { .. }))
            .count();
        write!(f, "  result: {ok} ok, {failed} failed")?;
        if let Some(why) = &self.manifest_skipped {
            write!(f, "; manifest checks SKIPPED: {why}")?;
        }
        writeln!(f)
    }
}

/// What [`run`] works from.
pub(super) struct Inputs<'a> {
    /// The user's file.
    pub image: &'a Path,
    /// The raw disk.
    pub disk: &'a DiskFile,
    /// What was read so far.
    pub report: &'a Report,
    /// The manifest, if any.
    pub manifest: Option<&'a Manifest>,
}

/// The recomputed hash tree and how it compares with the hash partition.
struct Tree {
    root_hash: [u8; 32],
    hash_size: u64,
    check: Check,
}

fn hex_lower(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

/// Rebuilds the verity tree from the root partition and compares it with
/// the hash partition.
fn recompute_tree(
    disk: &DiskFile,
    report: &Report,
    root: &PartitionInfo,
    hash: &PartitionInfo,
) -> Result<Tree, String> {
    let sb = report.verity.as_ref().ok_or_else(|| {
        format!(
            "partition {} has no readable verity superblock",
            hash.number
        )
    })?;
    let block = verity::BLOCK;
    if sb.version != 1
        || sb.hash_type != 1
        || sb.algorithm != "sha256"
        || u64::from(sb.data_block_size) != block
        || u64::from(sb.hash_block_size) != block
        || sb.salt.len() != 64
    {
        return Err(format!(
            "the superblock describes format {} type {}, {}, {}/{}-byte blocks, a {}-byte salt; \
             kiln recomputes only format 1 type 1 sha256 trees with 4096-byte blocks and a \
             32-byte salt",
            sb.version,
            sb.hash_type,
            sb.algorithm,
            sb.data_block_size,
            sb.hash_block_size,
            sb.salt.len() / 2
        ));
    }
    let data_bytes = sb
        .data_blocks
        .checked_mul(block)
        .filter(|&b| b > 0 && b <= root.size)
        .ok_or_else(|| {
            format!(
                "the superblock covers {} data blocks of {block} bytes, but partition {} ({}) \
                 holds {} bytes",
                sb.data_blocks, root.number, root.name, root.size
            )
        })?;
    let mut salt = [0u8; 32];
    hex::decode_to_slice(&sb.salt, &mut salt).map_err(|e| format!("salt: {e}"))?;
    let params = VerityParams {
        salt,
        uuid: *sb.uuid.as_bytes(),
    };
    let part = disk.part(root).map_err(|e| e.to_string())?;
    let tree = verity::build(&mut part.reader(data_bytes), data_bytes, &params)
        .map_err(|e| format!("reading partition {} ({}): {e}", root.number, root.name))?;
    let n = tree.hash_device.len() as u64;
    let what = format!(
        "verity hash tree rebuilt from partition {} ({}) vs partition {} ({})",
        root.number, root.name, hash.number, hash.name
    );
    let check = if n > hash.size {
        Check::failed(
            &what,
            format!(
                "the tree is {n} bytes but partition {} holds only {} bytes",
                hash.number, hash.size
            ),
        )
    } else {
        let stored = disk
            .read_vec(hash.offset, n as usize)
            .map_err(|e| e.to_string())?;
        match stored
            .iter()
            .zip(&tree.hash_device)
            .position(|(a, b)| a != b)
        {
            None => Check::ok(&what, format!("{n} bytes identical")),
            Some(at) => {
                let sha = |b: &[u8]| sha256_reader(&mut &b[..]).unwrap_or_default();
                Check::mismatch(
                    &what,
                    (
                        "rebuilt",
                        format!("{n} bytes, sha256 {}", sha(&tree.hash_device)),
                    ),
                    (
                        &format!("partition {}", hash.number),
                        format!(
                            "sha256 {}, first difference at byte {at} (hash block {})",
                            sha(&stored),
                            at as u64 / block
                        ),
                    ),
                )
            }
        }
    };
    Ok(Tree {
        root_hash: tree.root_hash,
        hash_size: n,
        check,
    })
}

/// Hashes needed for the manifest checks.
struct Hashes {
    disk: Result<String, String>,
    file: Option<Result<String, String>>,
    partitions: Vec<Result<String, String>>,
}

fn file_sha256(path: &Path) -> Result<String, String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    sha256_reader(&mut f).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs every check.
pub(super) fn run(inp: &Inputs<'_>) -> Verification {
    let r = inp.report;
    let disk = inp.disk;
    let mut checks = Vec::new();
    if let Some(v) = &r.vhd {
        checks.push(v.check());
    }
    checks.extend(r.gpt.checks.iter().cloned());

    // The slot the UKI boots; with no slot to go by, the first root and verity.
    let (root, hash) = r.active_partitions();
    let want_file = inp.manifest.is_some()
        && r.format != crate::profile::Format::Raw
        && inp
            .manifest
            .is_some_and(|m| m.outputs.contains_key(r.format.name()));

    // The whole disk streams on its own thread while this one hashes the
    // partitions and rebuilds the tree: two cores, two streams.
    let (hashes, tree) = std::thread::scope(|s| {
        let whole = s.spawn(|| {
            let d = disk.sha256(0, disk.len).map_err(|e| e.to_string());
            let f = want_file.then(|| file_sha256(inp.image));
            (d, f)
        });
        let partitions: Vec<Result<String, String>> = if inp.manifest.is_some() {
            r.gpt
                .partitions
                .iter()
                .map(|p| disk.sha256(p.offset, p.size).map_err(|e| e.to_string()))
                .collect()
        } else {
            Vec::new()
        };
        let tree = match (root, hash) {
            (Some(root), Some(hash)) => Some(recompute_tree(disk, r, root, hash)),
            _ => None,
        };
        let (d, f) = whole
            .join()
            .unwrap_or_else(|_| (Err("the hashing thread panicked".into()), None));
        (
            Hashes {
                disk: d,
                file: f,
                partitions,
            },
            tree,
        )
    });

    // What the image proves by itself.
    let roothash_what = "root hash vs the UKI command line (kiln.roothash=)";
    let tree_what = "verity hash tree";
    match (&tree, root, hash) {
        (Some(Ok(t)), Some(root), Some(hash)) => {
            checks.push(t.check.clone());
            let computed = hex::encode(t.root_hash);
            checks.push(match r.uki.as_ref().and_then(|u| u.roothash.as_deref()) {
                Some(on_cmdline) => Check::compare(
                    roothash_what,
                    ("rebuilt tree", computed.clone()),
                    ("command line", hex_lower(on_cmdline)),
                ),
                None => Check::failed(
                    roothash_what,
                    match &r.uki {
                        Some(_) => format!(
                            "the UKI command line has no kiln.roothash= or roothash= (the tree gives {computed})"
                        ),
                        None => format!("no readable UKI (the tree gives {computed})"),
                    },
                ),
            });
            let mut first = [0u8; 16];
            let mut last = [0u8; 16];
            first.copy_from_slice(&t.root_hash[..16]);
            last.copy_from_slice(&t.root_hash[16..]);
            checks.push(Check::compare(
                &format!(
                    "partition {} ({}) PARTUUID vs first half of the root hash",
                    root.number, root.name
                ),
                ("root hash", Guid::from_bytes(first).to_string()),
                ("PARTUUID", root.partuuid.to_string()),
            ));
            checks.push(Check::compare(
                &format!(
                    "partition {} ({}) PARTUUID vs second half of the root hash",
                    hash.number, hash.name
                ),
                ("root hash", Guid::from_bytes(last).to_string()),
                ("PARTUUID", hash.partuuid.to_string()),
            ));
        }
        (Some(Err(e)), _, _) => {
            checks.push(Check::failed(tree_what, e.clone()));
            checks.push(Check::failed(
                roothash_what,
                "no rebuilt tree to compare with".into(),
            ));
        }
        _ => {
            let why = if root.is_none() {
                "the image has no root partition"
            } else {
                "the image has no root-verity partition"
            };
            checks.push(Check::failed(tree_what, why.into()));
            checks.push(Check::failed(roothash_what, why.into()));
        }
    }
    if let (Some(v), Some(fs)) = (&r.verity, &r.root_fs) {
        checks.push(Check::compare(
            "verity data covers the whole root filesystem",
            ("ext4 size", format!("{} bytes", fs.size)),
            (
                "verity data",
                format!(
                    "{} bytes",
                    v.data_blocks.saturating_mul(u64::from(v.data_block_size))
                ),
            ),
        ));
    }
    checks.extend(super::verify_boot::boot_checks(r, disk));

    // What needs the manifest.
    let manifest_skipped = match inp.manifest {
        None => {
            let why = r
                .manifest_note
                .clone()
                .unwrap_or_else(|| "no manifest".into());
            checks.push(Check::skipped(
                "manifest checks (sha256 of the disk, partitions and file; layout; kernel; verity parameters)",
                why.clone(),
            ));
            Some(why)
        }
        Some(m) => {
            manifest_checks(
                &mut checks,
                r,
                m,
                &hashes,
                tree.as_ref().and_then(|t| t.as_ref().ok()),
                disk,
            );
            None
        }
    };
    Verification {
        checks,
        manifest_skipped,
    }
}

fn manifest_checks(
    checks: &mut Vec<Check>,
    r: &Report,
    m: &Manifest,
    h: &Hashes,
    tree: Option<&Tree>,
    disk: &DiskFile,
) {
    let mf = "manifest";
    if let Some(arch) = r.arch {
        checks.push(Check::compare(
            "arch vs manifest",
            (mf, m.arch.clone()),
            ("root partition type", arch.name().to_string()),
        ));
    }
    checks.push(Check::compare(
        "disk size vs manifest disk.size",
        (mf, m.disk.size.to_string()),
        ("image", disk.len.to_string()),
    ));
    checks.push(Check::compare(
        "GPT disk GUID vs manifest disk.guid",
        (mf, hex_lower(&m.disk.guid)),
        ("image", r.gpt.disk_guid.to_string()),
    ));
    let parts = &r.gpt.partitions;
    if parts.len() != m.disk.partitions.len() {
        checks.push(Check::mismatch(
            "partition count vs manifest",
            (mf, m.disk.partitions.len().to_string()),
            ("image", parts.len().to_string()),
        ));
    }
    for (i, mp) in m.disk.partitions.iter().enumerate() {
        let what = format!("partition {} ({}) entry vs manifest", i + 1, mp.label);
        let Some(p) = parts.get(i) else {
            checks.push(Check::failed(
                &what,
                "the image has no such partition".into(),
            ));
            continue;
        };
        let layout = |label: &str, ty: &str, uuid: &str, offset: u64, size: u64| {
            format!(
                "name {label}, type {}, PARTUUID {}, bytes {offset}+{size}",
                hex_lower(ty),
                hex_lower(uuid)
            )
        };
        // The slot only where the manifest records one (kilns before A/B did not).
        let slot = |s: Option<String>| s.map(|s| format!(", slot {s}")).unwrap_or_default();
        let image_slot = mp.slot.as_ref().and_then(|_| {
            r.slots
                .iter()
                .find(|s| s.root == Some(p.number) || s.verity == Some(p.number))
                .map(|s| s.slot.to_string())
        });
        checks.push(Check::compare(
            &what,
            (
                mf,
                layout(&mp.label, &mp.type_guid, &mp.uuid, mp.offset, mp.size)
                    + &slot(mp.slot.clone()),
            ),
            (
                "image",
                layout(
                    &p.name,
                    &p.type_guid.to_string(),
                    &p.partuuid.to_string(),
                    p.offset,
                    p.size,
                ) + &slot(image_slot),
            ),
        ));
        let what = format!("partition {} ({}) sha256 vs manifest", p.number, p.name);
        checks.push(match h.partitions.get(i) {
            Some(Ok(sha)) => {
                Check::compare(&what, (mf, hex_lower(&mp.sha256)), ("image", sha.clone()))
            }
            Some(Err(e)) => Check::failed(&what, e.clone()),
            None => Check::failed(&what, "not hashed".into()),
        });
    }
    let what = "whole raw disk sha256 vs manifest disk.sha256";
    checks.push(match &h.disk {
        Ok(sha) => Check::compare(
            what,
            (mf, hex_lower(&m.disk.sha256)),
            ("image", sha.clone()),
        ),
        Err(e) => Check::failed(what, e.clone()),
    });
    let fmt = r.format.name();
    let what = format!("{fmt} file sha256 vs manifest outputs.\"{fmt}\"");
    checks.push(match m.outputs.get(fmt) {
        None => Check::skipped(&what, format!("the manifest lists no `{fmt}` output")),
        Some(out) => {
            let sha = if r.format == crate::profile::Format::Raw {
                Some(&h.disk)
            } else {
                h.file.as_ref()
            };
            match sha {
                Some(Ok(sha)) => Check::compare(
                    &what,
                    (
                        mf,
                        format!("{} bytes, {}", out.size, hex_lower(&out.sha256)),
                    ),
                    ("file", format!("{} bytes, {sha}", r.file_size)),
                ),
                Some(Err(e)) => Check::failed(&what, e.clone()),
                None => Check::failed(&what, "not hashed".into()),
            }
        }
    });

    match &r.uki {
        Some(u) => {
            checks.push(Check::compare(
                "UKI command line vs manifest kernel.cmdline",
                (mf, m.kernel.cmdline.clone()),
                ("UKI .cmdline", u.cmdline.clone().unwrap_or_default()),
            ));
            checks.push(Check::compare(
                "UKI kernel release vs manifest kernel.release",
                (mf, m.kernel.release.clone()),
                ("UKI .uname", u.kernel_release.clone().unwrap_or_default()),
            ));
        }
        None => checks.push(Check::failed(
            "UKI vs manifest kernel",
            "no readable UKI on the ESP".into(),
        )),
    }
    checks.extend(super::verify_boot::manifest_checks(r, m, disk));

    let v = &m.verity;
    match &r.verity {
        Some(sb) => {
            let params = |alg: &str, d: u64, hb: u64, n: u64, salt: &str, uuid: &str| {
                format!(
                    "{alg}, {d}/{hb}-byte blocks, {n} data blocks, salt {}, uuid {}",
                    hex_lower(salt),
                    hex_lower(uuid)
                )
            };
            checks.push(Check::compare(
                "verity superblock vs manifest verity",
                (
                    mf,
                    params(
                        &v.algorithm,
                        v.data_block_size,
                        v.hash_block_size,
                        v.data_blocks,
                        &v.salt,
                        &v.uuid,
                    ),
                ),
                (
                    "superblock",
                    params(
                        &sb.algorithm,
                        u64::from(sb.data_block_size),
                        u64::from(sb.hash_block_size),
                        sb.data_blocks,
                        &sb.salt,
                        &sb.uuid.to_string(),
                    ),
                ),
            ));
        }
        None => checks.push(Check::failed(
            "verity superblock vs manifest verity",
            "no readable verity superblock".into(),
        )),
    }
    match tree {
        Some(t) => {
            checks.push(Check::compare(
                "root hash vs manifest verity.root_hash",
                (mf, hex_lower(&v.root_hash)),
                ("rebuilt tree", hex::encode(t.root_hash)),
            ));
            checks.push(Check::compare(
                "hash tree size vs manifest verity.hash_size",
                (mf, v.hash_size.to_string()),
                ("rebuilt tree", t.hash_size.to_string()),
            ));
        }
        None => checks.push(Check::failed(
            "root hash vs manifest verity.root_hash",
            "no rebuilt tree to compare with".into(),
        )),
    }
}
