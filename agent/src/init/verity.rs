//! dm-verity for the root partition.
//!
//! With `kiln.roothash=` on the command line the root is only ever mounted through a
//! dm-verity device: the hash partition is found next to the root by its type and by
//! PARTUUID (the builder sets the root's PARTUUID to the first 16 bytes of the root hash
//! and the hash partition's to the last 16), its hash tree is checked in userspace
//! against the root hash, the kernel device is created, and (by default) every data
//! block is read once through it so that a changed root stops the boot here with a
//! clear message instead of failing reads later.

use std::io;
use std::time::Duration;

use kiln_contract::gpt::types::{ROOT_ARM64, ROOT_VERITY_ARM64, ROOT_VERITY_X86_64, ROOT_X86_64};
use kiln_contract::gpt::Guid;
use kiln_contract::verity::{check_tree, hex, Geometry, Superblock, BLOCK, SUPERBLOCK_SIZE};
use nix::errno::Errno;

use super::root::{describe_type, disk_gpt, partition_node, PartNode, RootPartition};
use super::{fatal, say, Fatal, InitSys, Stage};
use crate::cmdline::{InitOptions, VerityCheck};
use crate::dm::{
    self, Request, Target, DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_READONLY_FLAG,
    DM_TABLE_LOAD, DM_VERSION,
};

/// Name of the device-mapper device over the root.
pub const DM_NAME: &str = "kiln-root";
/// Prefix of its device-mapper uuid; the first 32 hex digits of the root hash follow,
/// so `report` (and anyone with `dmsetup info`) can tell which root is running.
pub const DM_UUID_PREFIX: &str = "KILN-VERITY-";
/// Size of one read while checking the whole root; also the window searched for the
/// exact bad block after a read fails.
pub const FULL_CHECK_READ: usize = 1 << 20;
/// How long to wait for a node in /dev (devtmpfs normally has it at once).
const NODE_WAIT: Duration = Duration::from_secs(5);
/// Poll interval while waiting for a node.
const NODE_POLL: Duration = Duration::from_millis(50);
/// Sectors per verity block.
const SECTORS_PER_BLOCK: u64 = BLOCK / 512;

/// A GUID whose textual form is the hex of `bytes` (the builder's convention for the
/// PARTUUIDs it derives from the root hash).
fn guid_from_text_order(b: &[u8]) -> Guid {
    let mut text_order = [0u8; 16];
    text_order.copy_from_slice(b);
    Guid::from_bytes(text_order)
}

/// The root partition's PARTUUID for a root hash: its first 16 bytes.
pub fn root_part_uuid(root_hash: &[u8; 32]) -> Guid {
    guid_from_text_order(&root_hash[..16])
}

/// The verity partition's PARTUUID for a root hash: its last 16 bytes.
pub fn verity_part_uuid(root_hash: &[u8; 32]) -> Guid {
    guid_from_text_order(&root_hash[16..])
}

/// The verity partition type that goes with a root partition type: the other arch's for
/// the other arch's root (`kiln.root_type=`), else this arch's.
pub fn verity_type_for(root_type: &Guid) -> Guid {
    if *root_type == ROOT_ARM64 {
        ROOT_VERITY_ARM64
    } else if *root_type == ROOT_X86_64 {
        ROOT_VERITY_X86_64
    } else if cfg!(target_arch = "aarch64") {
        ROOT_VERITY_ARM64
    } else {
        ROOT_VERITY_X86_64
    }
}

fn fail(message: String) -> Fatal {
    fatal(Stage::BeforeRoot, message)
}

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / f64::from(1u32 << 20);
    if m >= 10.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{m:.1} MiB")
    }
}

/// Returns the device to mount as the root: the dm-verity device when `kiln.roothash=` is
/// given, else the root partition itself.
pub(super) fn open_root(
    sys: &mut dyn InitSys,
    opts: &InitOptions,
    root: &RootPartition,
) -> Result<String, Fatal> {
    let Some(hash) = opts.root_hash else {
        say(
            sys,
            &format!(
                "warning: no kiln.roothash= on the kernel command line: mounting /dev/{} \
                 unverified (no dm-verity)",
                root.device
            ),
        );
        return Ok(format!("/dev/{}", root.device));
    };
    let hash_hex = hex(&hash);
    let verity = find_verity_partition(sys, opts, root, &hash)?;
    let vuuid = verity_part_uuid(&hash);
    say(
        sys,
        &format!(
            "verity: kiln.roothash={}..., hash partition /dev/{verity} (PARTUUID {vuuid})",
            &hash_hex[..12]
        ),
    );
    let where_ = format!("the verity partition /dev/{verity} (PARTUUID {vuuid})");

    let head = sys
        .read_dev(&verity, 0, SUPERBLOCK_SIZE)
        .map_err(|e| fail(format!("reading the superblock of {where_}: {e}")))?;
    let sb = Superblock::parse(&head).map_err(|e| fail(format!("{where_}: {e}")))?;
    let data_bytes = sb.data_blocks.saturating_mul(BLOCK);
    let root_bytes = sysfs_size(sys, &root.device)?;
    if data_bytes > root_bytes {
        return Err(fail(format!(
            "{where_} covers {} data blocks ({data_bytes} bytes) but the root partition \
             /dev/{} is only {root_bytes} bytes; the partitions do not belong together",
            sb.data_blocks, root.device
        )));
    }
    let geometry = Geometry::new(sb.data_blocks);
    let tree_bytes = geometry.hash_blocks() * BLOCK;
    let verity_bytes = sysfs_size(sys, &verity)?;
    if tree_bytes > verity_bytes {
        return Err(fail(format!(
            "{where_} is {verity_bytes} bytes but its hash tree for {} data blocks needs \
             {tree_bytes}; the partition is truncated",
            sb.data_blocks
        )));
    }
    let tree = sys
        .read_dev(&verity, 0, tree_bytes as usize)
        .map_err(|e| fail(format!("reading the hash tree from {where_}: {e}")))?;
    check_tree(&sb, &tree, &hash).map_err(|m| {
        fail(format!(
            "root verification failed: {where_} does not match kiln.roothash={hash_hex}: {m}; \
             the hash partition was changed or belongs to another build"
        ))
    })?;
    say(
        sys,
        &format!(
            "verity: hash tree matches kiln.roothash= ({} hash blocks in {} levels over {} of \
             /dev/{})",
            geometry.hash_blocks() - 1,
            geometry.level_blocks.len(),
            mib(data_bytes),
            root.device
        ),
    );

    let params = format!(
        "1 {} {} {BLOCK} {BLOCK} {} 1 sha256 {hash_hex} {}",
        dev_numbers(sys, &root.device)?,
        dev_numbers(sys, &verity)?,
        sb.data_blocks,
        if sb.salt.is_empty() {
            "-".to_string()
        } else {
            hex(&sb.salt)
        }
    );
    let table = Target {
        start: 0,
        sectors: sb.data_blocks * SECTORS_PER_BLOCK,
        kind: "verity".to_string(),
        params,
    };
    let dm_dev = create_device(sys, opts, &hash_hex, table)?;
    say(
        sys,
        &format!(
            "verity: /dev/{dm_dev} ({DM_NAME}) maps /dev/{} through dm-verity with the \
             hashes on /dev/{verity}",
            root.device
        ),
    );
    match opts.verity_check {
        VerityCheck::Full => {
            if let Err(f) = full_check(sys, &dm_dev, data_bytes, &root.device) {
                remove_device(sys);
                return Err(f);
            }
        }
        VerityCheck::OnRead => say(
            sys,
            "verity: kiln.verity_check=on-read: not reading the root ahead; each block is \
             checked when it is first read",
        ),
    }
    Ok(format!("/dev/{dm_dev}"))
}

/// Finds the verity partition for `hash` on the root's disk.
fn find_verity_partition(
    sys: &mut dyn InitSys,
    opts: &InitOptions,
    root: &RootPartition,
    hash: &[u8; 32],
) -> Result<String, Fatal> {
    let vtype = verity_type_for(&opts.root_type);
    let vuuid = verity_part_uuid(hash);
    let wanted = format!(
        "a partition of type {} with PARTUUID {vuuid} (the last half of kiln.roothash=) on {}",
        describe_type(&vtype),
        root.disk
    );
    let gpt = disk_gpt(sys, &root.disk).map_err(|e| {
        fail(format!(
            "looking for {wanted}: reading its partition table: {e}"
        ))
    })?;
    let Some(entry) = gpt
        .entries
        .iter()
        .find(|e| e.type_guid == vtype && e.part_guid == vuuid)
    else {
        let others: Vec<String> = gpt
            .entries
            .iter()
            .filter(|e| e.type_guid == vtype)
            .map(|e| format!("partition {} (PARTUUID {})", e.number(), e.part_guid))
            .collect();
        return Err(fail(format!(
            "no verity partition: there is no {wanted}; partitions of that type: {}; the \
             image's hash partition does not belong to this kiln.roothash=",
            if others.is_empty() {
                "none".to_string()
            } else {
                others.join(", ")
            }
        )));
    };
    let n = entry.number();
    let start = sys.elapsed();
    loop {
        let node = partition_node(sys, &root.disk, n);
        if let PartNode::Ready(device) = node {
            return Ok(device);
        }
        if sys.elapsed().saturating_sub(start) >= NODE_WAIT {
            let why = match node {
                PartNode::NoNode(d) => format!("/dev/{d} does not exist"),
                _ => "the kernel has not added it".to_string(),
            };
            return Err(fail(format!(
                "verity partition {n} of {} (PARTUUID {vuuid}) is in the partition table but \
                 {why} after {} s",
                root.disk,
                NODE_WAIT.as_secs()
            )));
        }
        sys.sleep(NODE_POLL);
    }
}

/// Size in bytes of /dev/`dev` from sysfs (which counts 512-byte sectors).
fn sysfs_size(sys: &mut dyn InitSys, dev: &str) -> Result<u64, Fatal> {
    let rel = format!("{dev}/size");
    let text = sys
        .read_sysfs_block(&rel)
        .map_err(|e| fail(format!("reading /sys/class/block/{rel}: {e}")))?;
    text.trim()
        .parse::<u64>()
        .map(|s| s.saturating_mul(512))
        .map_err(|_| {
            fail(format!(
                "/sys/class/block/{rel} holds {:?}, not a sector count",
                text.trim()
            ))
        })
}

/// `major:minor` of /dev/`dev` from sysfs, as the verity table wants it.
fn dev_numbers(sys: &mut dyn InitSys, dev: &str) -> Result<String, Fatal> {
    let rel = format!("{dev}/dev");
    let text = sys
        .read_sysfs_block(&rel)
        .map_err(|e| fail(format!("reading /sys/class/block/{rel}: {e}")))?;
    let t = text.trim();
    match t.split_once(':') {
        Some((a, b)) if a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok() => Ok(t.to_string()),
        _ => Err(fail(format!(
            "/sys/class/block/{rel} holds {t:?}, not major:minor"
        ))),
    }
}

/// What to add to a device-mapper error to make it actionable.
fn dm_hint(nr: u8, e: Errno) -> &'static str {
    match (nr, e) {
        (_, Errno::ENOENT) => {
            " (there is no /dev/mapper/control: the device-mapper driver is not loaded; \
             dm-mod.ko must be in /etc/kiln/modules.load)"
        }
        (_, Errno::ENXIO | Errno::ENODEV) => {
            " (device-mapper is not available: dm-mod.ko and dm-verity.ko must be in \
             /etc/kiln/modules.load)"
        }
        (DM_TABLE_LOAD, Errno::EINVAL) => {
            " (the kernel rejected the verity table: most likely dm-verity.ko, with dm-bufio.ko, \
             is missing from /etc/kiln/modules.load; otherwise the kernel log line \
             \"device-mapper: table: ...\" says why)"
        }
        (DM_DEV_CREATE, Errno::EBUSY) => {
            " (a device-mapper device with this name or uuid already exists)"
        }
        (_, Errno::EINVAL) => {
            " (the kernel refused the request; dm-mod.ko and dm-verity.ko must be in \
             /etc/kiln/modules.load, and the kernel log says more)"
        }
        _ => "",
    }
}

fn command_name(nr: u8) -> &'static str {
    match nr {
        DM_VERSION => "DM_VERSION",
        DM_DEV_CREATE => "DM_DEV_CREATE",
        DM_DEV_REMOVE => "DM_DEV_REMOVE",
        DM_DEV_SUSPEND => "DM_DEV_SUSPEND (resume)",
        DM_TABLE_LOAD => "DM_TABLE_LOAD",
        _ => "device-mapper ioctl",
    }
}

/// Sends one request; returns the kernel's reply or a message naming the command, the
/// error and a hint.
fn dm_call(sys: &mut dyn InitSys, nr: u8, req: &Request) -> Result<dm::Reply, String> {
    let what = command_name(nr);
    let mut buf = req
        .encode()
        .map_err(|e| format!("{what} for {DM_NAME}: {e}"))?;
    sys.dm_ioctl(nr, &mut buf)
        .map_err(|e| format!("{what} for {DM_NAME}: {e}{}", dm_hint(nr, e)))?;
    dm::decode(&buf).map_err(|e| format!("{what} for {DM_NAME}: {e}"))
}

/// Creates, loads and resumes the verity device; returns its /dev name (`dm-0`). On a
/// failure after the create the device is removed again.
fn create_device(
    sys: &mut dyn InitSys,
    opts: &InitOptions,
    hash_hex: &str,
    table: Target,
) -> Result<String, Fatal> {
    let setup = |m: String| fail(format!("setting up dm-verity for the root: {m}"));
    let version = dm_call(sys, DM_VERSION, &Request::named(DM_NAME)).map_err(setup)?;
    if opts.debug {
        let [a, b, c] = version.version;
        say(sys, &format!("verity: device-mapper interface {a}.{b}.{c}"));
    }
    let create = Request {
        name: DM_NAME.to_string(),
        uuid: format!("{DM_UUID_PREFIX}{}", &hash_hex[..32]),
        flags: 0,
        targets: Vec::new(),
    };
    let created = dm_call(sys, DM_DEV_CREATE, &create).map_err(setup)?;
    let (major, minor) = dm::dev_numbers(created.dev);
    let load = Request {
        name: DM_NAME.to_string(),
        uuid: String::new(),
        flags: DM_READONLY_FLAG,
        targets: vec![table.clone()],
    };
    if opts.debug {
        say(
            sys,
            &format!(
                "verity: table for {major}:{minor}: {} {} {} {}",
                table.start, table.sectors, table.kind, table.params
            ),
        );
    }
    let result = dm_call(sys, DM_TABLE_LOAD, &load)
        .and_then(|_| dm_call(sys, DM_DEV_SUSPEND, &Request::named(DM_NAME)))
        .map_err(setup)
        .and_then(|_| wait_for_node(sys, minor));
    if result.is_err() {
        remove_device(sys);
    }
    result
}

/// Waits for devtmpfs to show /dev/dm-`minor`.
fn wait_for_node(sys: &mut dyn InitSys, minor: u32) -> Result<String, Fatal> {
    let name = format!("dm-{minor}");
    let start = sys.elapsed();
    while !sys.dev_exists(&name) {
        if sys.elapsed().saturating_sub(start) >= NODE_WAIT {
            return Err(fail(format!(
                "the dm-verity device {DM_NAME} was created but /dev/{name} did not appear \
                 within {} s (is /dev a devtmpfs?)",
                NODE_WAIT.as_secs()
            )));
        }
        sys.sleep(NODE_POLL);
    }
    Ok(name)
}

/// Best effort: the boot is failing anyway, this only avoids leaving a half-made device.
fn remove_device(sys: &mut dyn InitSys) {
    if let Err(m) = dm_call(sys, DM_DEV_REMOVE, &Request::named(DM_NAME)) {
        say(sys, &format!("warning: removing {DM_NAME}: {m}"));
    }
}

/// Reads every block of the root through dm-verity, which checks each against the tree.
fn full_check(
    sys: &mut dyn InitSys,
    dm_dev: &str,
    data_bytes: u64,
    part: &str,
) -> Result<(), Fatal> {
    say(
        sys,
        &format!(
            "verity: reading all {} of the root through /dev/{dm_dev} to check every block \
             (kiln.verity_check=on-read skips this)",
            mib(data_bytes)
        ),
    );
    let start = sys.elapsed();
    match sys.read_dev_all(dm_dev) {
        Ok(n) if n == data_bytes => {
            let took = sys.elapsed().saturating_sub(start);
            say(
                sys,
                &format!(
                    "verified {} of the root in {:.1} s",
                    mib(data_bytes),
                    took.as_secs_f64()
                ),
            );
            Ok(())
        }
        Ok(n) => Err(fail(format!(
            "reading /dev/{dm_dev}: it ends after {n} bytes but the verity superblock covers \
             {data_bytes}"
        ))),
        Err((offset, e)) if e.raw_os_error() == Some(Errno::EIO as i32) => {
            let place = match first_bad_block(sys, dm_dev, offset, data_bytes) {
                Some(at) => format!("block at byte offset {at} of the root partition"),
                None => format!(
                    "a block in bytes {offset}..{} of the root partition",
                    offset + FULL_CHECK_READ as u64
                ),
            };
            Err(fail(format!(
                "root verification failed: reading /dev/{dm_dev} (/dev/{part} through \
                 dm-verity) failed with EIO ({place} does not match the hash tree; the root \
                 partition was changed)"
            )))
        }
        Err((offset, e)) => Err(fail(format!(
            "reading /dev/{dm_dev} (/dev/{part} through dm-verity) at byte offset {offset}: {e}"
        ))),
    }
}

/// After a big read failed at `offset`, reads block by block to find the bad one.
fn first_bad_block(sys: &mut dyn InitSys, dev: &str, offset: u64, end: u64) -> Option<u64> {
    let stop = end.min(offset + FULL_CHECK_READ as u64);
    let mut at = offset;
    while at < stop {
        match sys.read_dev(dev, at, BLOCK as usize) {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => return Some(at),
            _ => at += BLOCK,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{native_root_type, read_gpt};
    use kiln_contract::gpt::types::ESP;

    const HASH: &str = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";

    fn hash() -> [u8; 32] {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = u8::from_str_radix(&HASH[2 * i..2 * i + 2], 16).unwrap();
        }
        h
    }

    #[test]
    fn partuuids_are_the_hash_halves_as_text() {
        assert_eq!(
            root_part_uuid(&hash()).to_string(),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert_eq!(
            verity_part_uuid(&hash()).to_string(),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
        assert_eq!(
            ROOT_VERITY_X86_64.to_string(),
            "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"
        );
        assert_eq!(
            ROOT_VERITY_ARM64.to_string(),
            "df3300ce-d69f-4c92-978c-9bfb0f38d820"
        );
        assert_eq!(verity_type_for(&ROOT_ARM64), ROOT_VERITY_ARM64);
        assert_eq!(verity_type_for(&ROOT_X86_64), ROOT_VERITY_X86_64);
        // Any other root type (kiln.root_type=) gets this arch's verity type.
        let native = verity_type_for(&native_root_type());
        assert_eq!(verity_type_for(&ESP), native);
    }

    /// sgdisk (an independent GPT writer) sets the PARTUUIDs as text, as the builder's
    /// plan does from the hash; reading them back must give the hash halves.
    #[test]
    fn partuuids_written_by_sgdisk_match_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let h = hash();
        let root_text = format!(
            "{}-{}-{}-{}-{}",
            &HASH[0..8],
            &HASH[8..12],
            &HASH[12..16],
            &HASH[16..20],
            &HASH[20..32]
        );
        let verity_text = format!(
            "{}-{}-{}-{}-{}",
            &HASH[32..40],
            &HASH[40..44],
            &HASH[44..48],
            &HASH[48..52],
            &HASH[52..64]
        );
        let out = std::process::Command::new("sgdisk")
            .args(["-n", "1:0:+2M", "-t", &format!("1:{ROOT_X86_64}")])
            .args(["-u", &format!("1:{root_text}")])
            .args(["-n", "2:0:+1M", "-t", &format!("2:{ROOT_VERITY_X86_64}")])
            .args(["-u", &format!("2:{verity_text}")])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let bytes = std::fs::read(&img).unwrap();
        let mut read = |off: u64, len: usize| -> io::Result<Vec<u8>> {
            Ok(bytes[off as usize..off as usize + len].to_vec())
        };
        let gpt = read_gpt(&mut read, 512, Some(bytes.len() as u64)).unwrap();
        assert_eq!(gpt.entries[0].part_guid, root_part_uuid(&h));
        assert_eq!(gpt.entries[1].part_guid, verity_part_uuid(&h));
        assert_eq!(gpt.entries[1].type_guid, ROOT_VERITY_X86_64);
        // On disk the first three fields are little-endian: 33 22 11 00 55 44 77 66.
        let at = 1024 + 16;
        assert_eq!(
            &bytes[at..at + 8],
            &[0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66]
        );
        assert_eq!(&bytes[at + 8..at + 16], &h[8..16]);
    }

    #[test]
    fn hints_name_the_missing_modules() {
        assert!(dm_hint(DM_VERSION, Errno::ENOENT).contains("dm-mod.ko"));
        assert!(dm_hint(DM_TABLE_LOAD, Errno::EINVAL).contains("dm-verity.ko"));
        assert!(dm_hint(DM_DEV_CREATE, Errno::ENXIO).contains("dm-mod.ko"));
        assert!(dm_hint(DM_DEV_CREATE, Errno::EBUSY).contains("already exists"));
        assert_eq!(dm_hint(DM_DEV_CREATE, Errno::ENOMEM), "");
        assert_eq!(mib(230 << 20), "230 MiB");
        assert_eq!(mib(300 * 4096), "1.2 MiB");
    }
}
