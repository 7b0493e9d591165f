//! The `var` partition: found on the root's disk, or created on first boot in the free
//! space after the last partition (the image is usually written to a larger disk),
//! formatted with the root's own mke2fs and mounted read-write on /var. The machine-id
//! and a boot counter live on it, so the node keeps its identity across reboots while
//! / and /etc stay read-only.
//!
//! The partition table is changed before anything on the disk is opened (the kernel
//! refuses to re-read a table while a partition is in use), in steps that leave a valid
//! table after a power loss between any two of them; the next boot finishes the work.

use std::time::Duration;

use kiln_contract::gpt::{types, Guid};
use nix::mount::MsFlags;

use super::root::RootPartition;
use super::{fatal, say, Fatal, InitSys, Stage, SYSROOT};
use crate::cmdline::{InitOptions, VarFallback};
use crate::gpt::{
    plan_primary_repair, plan_var, read_table, DiskWrite, GptEntry, RawTable, VarGrowth, VarLayout,
};
use crate::sys::{Capture, Cmd, CommandResult};

/// How long to wait for the kernel to create the `var` partition's device node.
pub const NODE_WAIT: Duration = Duration::from_secs(10);
/// How often to look for it.
const NODE_POLL: Duration = Duration::from_millis(100);

/// Byte offset of the ext4 superblock's magic number (superblock at 1024, field at 56).
const EXT4_MAGIC_AT: u64 = 1080;

/// A partition to put /var on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarPartition {
    /// Whole disk, e.g. `vda`.
    pub disk: String,
    /// Partition device name, e.g. `vda4`.
    pub device: String,
    /// Partition number.
    pub number: u32,
    /// Size in bytes.
    pub bytes: u64,
    /// Created by this boot (so it is formatted whatever it holds).
    pub created: bool,
}

/// What [`mount`] will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarPlan {
    /// A tmpfs on /var.
    Tmpfs,
    /// The `var` partition.
    Partition(VarPartition),
}

/// What /var ended up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarMounted {
    /// The `var` partition (device name).
    Persistent(String),
    /// A tmpfs: nothing survives a reboot.
    Tmpfs,
    /// Nothing: the root has no /var directory.
    Missing,
}

/// A program to run: path, arguments and the complete environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCall {
    /// Path of the executable (here the root's dynamic loader).
    pub program: String,
    /// Arguments, without argv\[0\].
    pub args: Vec<String>,
    /// The whole environment.
    pub env: Vec<(String, String)>,
}

/// A problem with /var and what the user can do about it.
struct Problem {
    what: String,
    fix: String,
}

fn problem(what: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        what: what.into(),
        fix: fix.into(),
    }
}

/// Human size: `512 MiB`, `2.3 GiB`.
pub fn human_size(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    if bytes >= GIB {
        format!("{:.1} GiB", bytes as f64 / GIB as f64)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Follows `kiln.var_fallback`: a tmpfs with a loud warning, or a stop.
fn fall_back(sys: &mut dyn InitSys, opts: &InitOptions, p: Problem) -> Result<VarPlan, Fatal> {
    match opts.var_fallback {
        VarFallback::Tmpfs => {
            say(
                sys,
                &format!(
                    "WARNING: {}; /var stays on a tmpfs and its state is lost at every reboot \
                     (kiln.var_fallback=tmpfs)",
                    p.what
                ),
            );
            Ok(VarPlan::Tmpfs)
        }
        VarFallback::Halt => Err(fatal(
            Stage::Var,
            format!(
                "{}; to fix: {}, or set disk.var_fallback = \"tmpfs\" in the profile \
                 (kernel option kiln.var_fallback=tmpfs) to keep /var on a tmpfs and lose \
                 its state at every reboot",
                p.what, p.fix
            ),
        )),
    }
}

/// The disk's logical sector size and its size in those sectors, from sysfs.
fn geometry(sys: &mut dyn InitSys, disk: &str) -> Result<(u64, u64), Problem> {
    let read = |sys: &mut dyn InitSys, rel: &str| -> Result<u64, Problem> {
        let path = format!("/sys/class/block/{disk}/{rel}");
        let text = sys
            .read_sysfs_block(&format!("{disk}/{rel}"))
            .map_err(|e| problem(format!("cannot read {path}: {e}"), "check the disk driver"))?;
        text.trim().parse::<u64>().map_err(|_| {
            problem(
                format!("{path} holds {:?}, not a number", text.trim()),
                "check the disk driver",
            )
        })
    };
    // sysfs counts 512-byte units whatever the device's sector size.
    let units = read(sys, "size")?;
    let sector = read(sys, "queue/logical_block_size")?;
    if !(512..=65536).contains(&sector) || !sector.is_power_of_two() {
        return Err(problem(
            format!("/dev/{disk} reports a logical sector size of {sector} bytes"),
            "use a disk with 512-byte or 4 KiB sectors",
        ));
    }
    Ok((sector, units * 512 / sector))
}

fn read_disk_table(
    sys: &mut dyn InitSys,
    disk: &str,
    sector: u64,
    sectors: u64,
) -> Result<RawTable, Problem> {
    let mut read = |off: u64, len: usize| sys.read_dev(disk, off, len);
    read_table(&mut read, sector, Some(sectors * sector)).map_err(|e| {
        problem(
            format!("cannot read the partition table of /dev/{disk}: {e}"),
            "rewrite the image to the disk",
        )
    })
}

/// Carries out one step of a table change: every write, then one flush, so the step is
/// on the device before the next one starts.
pub fn write_step(
    sys: &mut dyn InitSys,
    disk: &str,
    step: &str,
    writes: &[DiskWrite],
) -> Result<(), String> {
    if writes.is_empty() {
        return Ok(());
    }
    for w in writes {
        sys.write_dev(disk, w.offset, &w.bytes).map_err(|e| {
            format!(
                "writing the {} ({} bytes at byte {}) to /dev/{disk}: {e}",
                w.what,
                w.bytes.len(),
                w.offset
            )
        })?;
    }
    sys.sync_dev(disk)
        .map_err(|e| format!("flushing /dev/{disk} after {step}: {e}"))?;
    let what: Vec<&str> = writes.iter().map(|w| w.what).collect();
    say(sys, &format!("var: {step}: wrote {}", what.join(", ")));
    Ok(())
}

/// Writes the three steps of [`VarGrowth`] in order.
pub fn write_growth(sys: &mut dyn InitSys, disk: &str, g: &VarGrowth) -> Result<(), String> {
    write_step(sys, disk, "step 1 of 3 (new backup table)", &g.backup)?;
    write_step(sys, disk, "step 2 of 3 (new primary table)", &g.primary)?;
    write_step(sys, disk, "step 3 of 3 (old backup header erased)", &g.wipe)
}

/// A random version-4 GUID (the partition's unique GUID).
fn random_guid(sys: &mut dyn InitSys) -> Result<Guid, String> {
    let mut b = [0u8; 16];
    sys.random(&mut b)
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    // On disk byte 7 is the high byte of the third field (the version), byte 8 the
    // variant.
    b[7] = (b[7] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(Guid::from_gpt_bytes(&b))
}

/// Finds partition `n`'s device node, waiting up to [`NODE_WAIT`] for the kernel.
fn wait_for_node(sys: &mut dyn InitSys, disk: &str, n: u32) -> Option<String> {
    let start = sys.elapsed();
    loop {
        for name in [format!("{disk}{n}"), format!("{disk}p{n}")] {
            let added = sys
                .read_sysfs_block(&format!("{disk}/{name}/partition"))
                .is_ok_and(|t| t.trim() == n.to_string());
            if added && sys.dev_exists(&name) {
                return Some(name);
            }
        }
        if sys.elapsed().saturating_sub(start) >= NODE_WAIT {
            return None;
        }
        sys.sleep(NODE_POLL);
    }
}

/// The plan for a `var` entry that is in the table (and so known to the kernel).
fn use_existing(
    sys: &mut dyn InitSys,
    disk: &str,
    sector: u64,
    e: &GptEntry,
    created: bool,
) -> Result<VarPlan, Problem> {
    let n = e.number();
    let Some(device) = wait_for_node(sys, disk, n) else {
        return Err(problem(
            format!(
                "partition {n} of /dev/{disk} (var) has no device node after {} s",
                NODE_WAIT.as_secs()
            ),
            "reboot (the kernel reads the new partition table at boot)",
        ));
    };
    let bytes = (e.last_lba + 1 - e.first_lba) * sector;
    if !created {
        say(
            sys,
            &format!(
                "var partition /dev/{device} (partition {n} of {disk}, {}, PARTUUID {})",
                human_size(bytes),
                e.part_guid
            ),
        );
    }
    Ok(VarPlan::Partition(VarPartition {
        disk: disk.to_string(),
        device,
        number: n,
        bytes,
        created,
    }))
}

/// The `var` entry of a disk's table, found or just added.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VarEntry {
    entry: GptEntry,
    /// Logical sector size of the disk.
    sector: u64,
    /// Added by this boot: the kernel does not know it yet.
    created: bool,
}

/// Reads the table of `disk` (repairing a damaged primary copy from the backup) and
/// adds a `var` partition if there is none.
fn ensure_table(
    sys: &mut dyn InitSys,
    opts: &InitOptions,
    disk: &str,
) -> Result<VarEntry, Problem> {
    let (sector, sectors) = geometry(sys, disk)?;
    let mut table = read_disk_table(sys, disk, sector, sectors)?;
    if table.from_backup {
        say(
            sys,
            &format!(
                "var: the primary GPT of /dev/{disk} is damaged (an interrupted first boot \
                 leaves it so); rewriting it from the backup"
            ),
        );
        let writes = plan_primary_repair(&table).map_err(|e| {
            problem(
                format!("cannot repair the primary GPT of /dev/{disk}: {e}"),
                "rewrite the image to the disk",
            )
        })?;
        write_step(sys, disk, "primary table repaired", &writes)
            .map_err(|e| problem(e, "check the disk"))?;
        table = read_disk_table(sys, disk, sector, sectors)?;
        if table.from_backup {
            return Err(problem(
                format!("the primary GPT of /dev/{disk} is still damaged after rewriting it"),
                "check the disk",
            ));
        }
    }
    if let Some(e) = table.entries.iter().find(|e| e.type_guid == types::VAR) {
        return Ok(VarEntry {
            entry: e.clone(),
            sector,
            created: false,
        });
    }
    let guid = random_guid(sys).map_err(|e| problem(e, "check the kernel's random device"))?;
    let layout = plan_var(&table, sectors, opts.var_min, guid).map_err(|e| {
        problem(
            format!("cannot add a var partition to /dev/{disk}: {e}"),
            "rewrite the image to the disk",
        )
    })?;
    match layout {
        VarLayout::Existing(entry) => Ok(VarEntry {
            entry,
            sector,
            created: false,
        }),
        VarLayout::NoRoom(n) if n.entries_full => Err(problem(
            format!(
                "no room for a var partition on /dev/{disk}: all {} partition entries are used",
                table.header.num_entries
            ),
            "remove a partition from the disk",
        )),
        VarLayout::NoRoom(n) => Err(problem(
            format!(
                "no room for a var partition on /dev/{disk} ({}): {} MiB free after the last \
                 partition, {} MiB needed (kiln.var_min)",
                human_size(sectors * sector),
                n.free_bytes >> 20,
                n.needed_bytes.div_ceil(1 << 20)
            ),
            format!(
                "write the image to a disk of at least {} bytes ({} MiB)",
                n.min_disk_bytes,
                n.min_disk_bytes >> 20
            ),
        )),
        VarLayout::Grow(g) => {
            let e = &g.entry;
            say(
                sys,
                &format!(
                    "var: creating partition {} \"var\" on /dev/{disk}: sectors {}-{} ({}), \
                     PARTUUID {}",
                    e.number(),
                    e.first_lba,
                    e.last_lba,
                    human_size((e.last_lba + 1 - e.first_lba) * sector),
                    e.part_guid
                ),
            );
            write_growth(sys, disk, &g).map_err(|why| {
                problem(
                    format!("creating the var partition failed: {why}"),
                    "check the disk",
                )
            })?;
            Ok(VarEntry {
                entry: g.entry,
                sector,
                created: true,
            })
        }
    }
}

fn try_prepare(sys: &mut dyn InitSys, opts: &InitOptions, disk: &str) -> Result<VarPlan, Problem> {
    let v = ensure_table(sys, opts, disk)?;
    if v.created {
        // Nothing on the disk is open yet (the root is neither mounted nor mapped), so
        // the kernel can drop and re-add all its partitions.
        sys.reread_partitions(disk).map_err(|e| {
            problem(
                format!(
                    "the var partition was added to /dev/{disk} but the kernel did not \
                     re-read the partition table (BLKRRPART: {e})"
                ),
                "reboot: the next boot uses the new partition",
            )
        })?;
        say(
            sys,
            &format!("var: the kernel re-read /dev/{disk}'s partitions"),
        );
    }
    use_existing(sys, disk, v.sector, &v.entry, v.created)
}

/// Decides (and, on first boot, creates) the `var` partition before anything on the
/// disk is opened.
pub(super) fn prepare(
    sys: &mut dyn InitSys,
    opts: &InitOptions,
    root: &RootPartition,
) -> Result<VarPlan, Fatal> {
    match try_prepare(sys, opts, &root.disk) {
        Ok(plan) => Ok(plan),
        Err(p) => fall_back(sys, opts, p),
    }
}

/// The loader and multiarch directory of the root's C library for this architecture.
fn loader_and_triple() -> (&'static str, &'static str) {
    if cfg!(target_arch = "aarch64") {
        ("/lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu")
    } else {
        ("/lib64/ld-linux-x86-64.so.2", "x86_64-linux-gnu")
    }
}

/// Builds the mke2fs command for `device`, started through the dynamic loader of the
/// root mounted at `root` (the initramfs has no C library of its own). Err says what
/// the root lacks.
pub fn mke2fs_call(sys: &mut dyn InitSys, root: &str, device: &str) -> Result<ProgramCall, String> {
    let base = root.trim_end_matches('/');
    let (loader, triple) = loader_and_triple();
    let candidates = ["/usr/sbin/mke2fs", "/sbin/mke2fs"];
    let Some(mke2fs) = candidates.iter().find_map(|p| sys.resolve_in_root(root, p)) else {
        return Err(format!(
            "the root filesystem has no mke2fs ({}): the profile must include e2fsprogs",
            candidates.join(", ")
        ));
    };
    let Some(loader_path) = sys.resolve_in_root(root, loader) else {
        return Err(format!(
            "the root filesystem has no dynamic loader {loader} to start mke2fs with: the \
             profile must include libc6"
        ));
    };
    let args = [
        "--library-path",
        &format!("{base}/usr/lib/{triple}:{base}/lib/{triple}"),
        &mke2fs,
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "var",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1",
        device,
    ];
    Ok(ProgramCall {
        program: loader_path,
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![(
            "MKE2FS_CONFIG".to_string(),
            format!("{base}/etc/mke2fs.conf"),
        )],
    })
}

/// Runs `call` to its end with exactly its environment, both of its outputs collected.
pub fn run_call(sys: &mut dyn InitSys, call: &ProgramCall) -> CommandResult {
    let args: Vec<&str> = call.args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = call
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    sys.run(
        &Cmd::new(&call.program, &args)
            .env(&env)
            .capture(Capture::Both),
    )
}

/// A filesystem other than ext4 at the start of the partition, which init must not
/// format over.
fn foreign_filesystem(sys: &mut dyn InitSys, device: &str) -> Option<&'static str> {
    if sys.read_dev(device, 0, 4).is_ok_and(|b| b == b"XFSB") {
        return Some("XFS");
    }
    if sys
        .read_dev(device, 0x1_0040, 8)
        .is_ok_and(|b| b == b"_BHRfS_M")
    {
        return Some("btrfs");
    }
    None
}

fn has_ext4(sys: &mut dyn InitSys, device: &str) -> bool {
    sys.read_dev(device, EXT4_MAGIC_AT, 2)
        .is_ok_and(|b| b == [0x53, 0xEF])
}

fn format(sys: &mut dyn InitSys, p: &VarPartition) -> Result<(), Problem> {
    let dev = format!("/dev/{}", p.device);
    let call = mke2fs_call(sys, SYSROOT, &dev).map_err(|why| {
        problem(
            format!("cannot format {dev}: {why}"),
            "add e2fsprogs to packages.include in the profile",
        )
    })?;
    say(
        sys,
        &format!(
            "var: formatting {dev} ({}) as ext4: {} {}",
            human_size(p.bytes),
            call.program,
            call.args.join(" ")
        ),
    );
    let start = sys.elapsed();
    let (code, output) = match run_call(sys, &call) {
        CommandResult::Exited {
            code,
            stdout,
            stderr,
        } => (code, stdout + &stderr),
        other => {
            let why = match other {
                CommandResult::Failed(why) => why,
                _ => "it did not finish".to_string(),
            };
            return Err(problem(
                format!("cannot start mke2fs: {why}"),
                "check that the root's libc6 and e2fsprogs match its architecture",
            ));
        }
    };
    if code != Some(0) {
        let tail: Vec<&str> = output.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(problem(
            format!(
                "mke2fs failed on {dev} ({}): {}",
                match code {
                    Some(c) => format!("exit status {c}"),
                    None => "killed by a signal".to_string(),
                },
                tail.join(" | ")
            ),
            "check the disk",
        ));
    }
    let took = sys.elapsed().saturating_sub(start);
    say(
        sys,
        &format!("var: formatted {dev} in {:.1} s", took.as_secs_f64()),
    );
    Ok(())
}

fn mount_partition(sys: &mut dyn InitSys, p: &VarPartition, target: &str) -> Result<(), Problem> {
    let dev = format!("/dev/{}", p.device);
    if p.created {
        format(sys, p)?;
    } else if !has_ext4(sys, &p.device) {
        if let Some(fs) = foreign_filesystem(sys, &p.device) {
            return Err(problem(
                format!("the var partition {dev} holds a {fs} filesystem, not ext4"),
                format!(
                    "move its data away and erase its first MiB (kiln then formats {dev} as ext4)"
                ),
            ));
        }
        say(
            sys,
            &format!("var: {dev} holds no ext4 filesystem (an interrupted first boot?)"),
        );
        format(sys, p)?;
    }
    // No nosuid/nodev: container images and snapshotters under /var/lib
    // (containerd, kubelet) need setuid binaries and device nodes to work.
    sys.mount(&dev, target, Some("ext4"), MsFlags::empty(), None)
        .map_err(|e| {
            problem(
                format!("mounting {dev} as ext4 on {target}: {e}"),
                "check the var partition with e2fsck",
            )
        })?;
    say(
        sys,
        &format!(
            "mounted {dev} (ext4, {}) read-write on {target}",
            human_size(p.bytes)
        ),
    );
    Ok(())
}

fn mount_tmpfs(sys: &mut dyn InitSys, target: &str) -> Result<VarMounted, Fatal> {
    sys.mount(
        "tmpfs",
        target,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(|e| fatal(Stage::Var, format!("mounting tmpfs on {target}: {e}")))?;
    say(sys, "mounted tmpfs on /var (mode=0755)");
    Ok(VarMounted::Tmpfs)
}

/// Mounts /var under [`SYSROOT`] as planned (formatting a new partition first).
pub(super) fn mount(
    sys: &mut dyn InitSys,
    opts: &InitOptions,
    plan: VarPlan,
) -> Result<VarMounted, Fatal> {
    let target = format!("{SYSROOT}/var");
    if !sys.is_dir(&target) {
        say(
            sys,
            "warning: no /var in the root filesystem; not mounting anything there",
        );
        return Ok(VarMounted::Missing);
    }
    let part = match plan {
        VarPlan::Tmpfs => return mount_tmpfs(sys, &target),
        VarPlan::Partition(p) => p,
    };
    match mount_partition(sys, &part, &target) {
        Ok(()) => Ok(VarMounted::Persistent(part.device)),
        Err(p) => {
            fall_back(sys, opts, p)?;
            mount_tmpfs(sys, &target)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::*;
    use crate::gpt::native_root_type;
    use crate::init::real::RealInit;

    const MIB: u64 = 1 << 20;

    /// A disk image partitioned by sgdisk like the builder lays images out (ESP, root,
    /// root-verity, 1 MiB aligned), written to a larger disk: `dev/vda` in a directory
    /// next to a sysfs-like `sys/class/block/vda`.
    struct Disk {
        dir: tempfile::TempDir,
        sys: RealInit,
    }

    impl Disk {
        fn new(image_mib: u64, disk_mib: u64) -> Disk {
            let dir = tempfile::tempdir().unwrap();
            let block = dir.path().join("sys/class/block");
            let dev = dir.path().join("dev");
            std::fs::create_dir_all(block.join("vda/queue")).unwrap();
            std::fs::create_dir_all(&dev).unwrap();
            let img = dev.join("vda");
            std::fs::File::create(&img)
                .unwrap()
                .set_len(image_mib * MIB)
                .unwrap();
            let root = native_root_type().to_string();
            sgdisk(
                &[
                    "-n",
                    "1:2048:+1M",
                    "-t",
                    "1:ef00",
                    "-c",
                    "1:esp",
                    "-n",
                    "2:0:+2M",
                    "-t",
                    &format!("2:{root}"),
                    "-c",
                    "2:root",
                    "-n",
                    "3:0:+1M",
                    "-t",
                    "3:8300",
                    "-c",
                    "3:root-verity",
                ],
                &img,
            );
            std::fs::File::options()
                .write(true)
                .open(&img)
                .unwrap()
                .set_len(disk_mib * MIB)
                .unwrap();
            std::fs::write(
                block.join("vda/size"),
                format!("{}\n", disk_mib * MIB / 512),
            )
            .unwrap();
            std::fs::write(block.join("vda/queue/logical_block_size"), "512\n").unwrap();
            let sys = RealInit::new(block, dev);
            Disk { dir, sys }
        }

        fn img(&self) -> PathBuf {
            self.dir.path().join("dev/vda")
        }

        fn bytes(&self) -> Vec<u8> {
            std::fs::read(self.img()).unwrap()
        }
    }

    fn sgdisk(args: &[&str], img: &Path) -> String {
        let out = Command::new("sgdisk")
            .args(args)
            .arg(img)
            .output()
            .expect("sgdisk is installed");
        assert!(out.status.success(), "sgdisk {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn opts(var_min: u64) -> InitOptions {
        InitOptions {
            var_min,
            ..InitOptions::default()
        }
    }

    fn ensure(d: &mut Disk) -> VarEntry {
        ensure_table(&mut d.sys, &opts(4 * MIB), "vda").unwrap_or_else(|p| panic!("{}", p.what))
    }

    /// What sgdisk must say about a disk of `disk_mib` with the var partition added.
    fn assert_sgdisk_finds_var(d: &Disk, disk_mib: u64) {
        let v = sgdisk(&["-v"], &d.img());
        assert!(v.contains("No problems found"), "{v}");
        let end = disk_mib * MIB / 512;
        let info = sgdisk(&["-i", "4"], &d.img());
        for part in [
            "Partition GUID code: 4D21B016-B534-45C2-A9FB-5C16E091FD2D".to_string(),
            // After ESP (1 MiB), root (2 MiB) and root-verity (1 MiB) from 1 MiB on.
            "First sector: 10240 ".to_string(),
            format!("Last sector: {} ", end - 34),
            "Partition name: 'var'".to_string(),
        ] {
            assert!(info.contains(&part), "missing {part:?} in\n{info}");
        }
    }

    #[test]
    fn grows_an_sgdisk_image_written_to_a_larger_disk() {
        let mut d = Disk::new(8, 64);
        let old_backup = (8 * MIB - 512) as usize;
        assert_eq!(&d.bytes()[old_backup..old_backup + 8], b"EFI PART");
        let v = ensure(&mut d);
        assert!(v.created);
        assert_eq!(v.entry.number(), 4);
        assert_eq!(v.sector, 512);
        assert_sgdisk_finds_var(&d, 64);
        // The old backup header is gone; the old backup array is left to mke2fs.
        assert!(d.bytes()[old_backup..old_backup + 512]
            .iter()
            .all(|&b| b == 0));
        // A second run finds the partition and changes nothing.
        let before = d.bytes();
        let again = ensure(&mut d);
        assert!(!again.created);
        assert_eq!(again.entry, v.entry);
        assert!(d.bytes() == before, "the second run changed the disk");
    }

    #[test]
    fn power_loss_between_steps_is_finished_by_the_next_boot() {
        // Lost after step 1: the old table is intact; the rerun does everything.
        let mut d = Disk::new(8, 64);
        let (sector, sectors) =
            geometry(&mut d.sys, "vda").unwrap_or_else(|p| panic!("{}", p.what));
        let table = read_disk_table(&mut d.sys, "vda", sector, sectors)
            .unwrap_or_else(|p| panic!("{}", p.what));
        let guid: Guid = "0a0b0c0d-1111-4222-8333-444455556666".parse().unwrap();
        let VarLayout::Grow(g) = plan_var(&table, sectors, 4 * MIB, guid).unwrap() else {
            panic!("no growth planned")
        };
        write_step(&mut d.sys, "vda", "step 1", &g.backup).unwrap();
        let p = sgdisk(&["-p"], &d.img());
        assert!(p.contains("root-verity") && !p.contains(" var"), "{p}");
        let v = ensure(&mut d);
        assert!(v.created);
        assert_sgdisk_finds_var(&d, 64);
        assert!(!ensure(&mut d).created);

        // Lost in the middle of step 2: the primary array is new, its header is not, so
        // the primary is damaged; the backup has the partition and repairs it.
        let mut d = Disk::new(8, 64);
        write_step(&mut d.sys, "vda", "step 1", &g.backup).unwrap();
        let array: Vec<DiskWrite> = g
            .primary
            .iter()
            .filter(|w| w.what == "primary GPT entry array")
            .cloned()
            .collect();
        write_step(&mut d.sys, "vda", "step 2, torn", &array).unwrap();
        let v = ensure(&mut d);
        assert!(!v.created, "the backup already has it: nothing to re-read");
        assert_eq!(v.entry.part_guid, guid);
        let before = d.bytes();
        assert!(!ensure(&mut d).created);
        assert!(d.bytes() == before);
        let v = sgdisk(&["-v"], &d.img());
        assert!(v.contains("No problems found"), "{v}");
    }

    #[test]
    fn a_disk_without_room_is_left_alone() {
        let mut d = Disk::new(8, 8);
        let before = d.bytes();
        let p = ensure_table(&mut d.sys, &opts(256 * MIB), "vda").unwrap_err();
        assert!(
            p.what
                .contains("2 MiB free after the last partition, 256 MiB needed"),
            "{}",
            p.what
        );
        assert!(
            p.fix.contains("at least 274726912 bytes (262 MiB)"),
            "{}",
            p.fix
        );
        assert!(d.bytes() == before);
    }

    /// The command line the init builds, run with the host's own loader and mke2fs on a
    /// file, makes a filesystem e2fsck accepts.
    #[test]
    fn the_mke2fs_command_makes_a_clean_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("vda4");
        std::fs::File::create(&part)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        let mut sys = RealInit::new(dir.path().join("sys"), dir.path().to_path_buf());
        let call = mke2fs_call(&mut sys, "/", &part.to_string_lossy()).unwrap();
        let (loader, triple) = loader_and_triple();
        assert!(
            call.program.ends_with(loader.rsplit('/').next().unwrap()),
            "{}",
            call.program
        );
        assert_eq!(call.args[0], "--library-path");
        assert_eq!(call.args[1], format!("/usr/lib/{triple}:/lib/{triple}"));
        assert_eq!(
            call.env,
            [("MKE2FS_CONFIG".to_string(), "/etc/mke2fs.conf".to_string())]
        );
        assert!(!has_ext4(&mut sys, "vda4"));
        let out = run_call(&mut sys, &call);
        assert!(out.success(), "{out:?}");
        assert!(has_ext4(&mut sys, "vda4"));
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(&part)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{fsck:?}");
        let dump = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&part)
            .output()
            .unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("Filesystem volume name:   var"), "{dump}");
        assert!(
            dump.contains("has_journal") && dump.contains("extent"),
            "{dump}"
        );

        // A root without mke2fs is reported as such.
        let empty = tempfile::tempdir().unwrap();
        let e = mke2fs_call(&mut sys, &empty.path().to_string_lossy(), "/dev/vda4").unwrap_err();
        assert!(e.contains("no mke2fs") && e.contains("e2fsprogs"), "{e}");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(14 * MIB + 1000), "14 MiB");
        assert_eq!(human_size(2_469_606_195), "2.3 GiB");
    }
}
