//! The init sequence against a fake machine, and the block scan against a sysfs-like
//! directory holding a disk image made by sgdisk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::Duration;

use kiln_contract::gpt::{types, Guid};
use nix::errno::Errno;
use nix::mount::MsFlags;

use super::modules::ModuleError;
use super::real::RealInit;
use super::root::{scan_once, Scan};
use super::{run, InitSys};
use crate::cmdline::FailureAction;
use crate::gpt::native_root_type;
use crate::gpt::tests::build_image;
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::{forward, Cmd, CommandResult, Exec, Files};

const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const UUID: &str = "0a0b0c0d-1111-4222-8333-444455556666";

struct FakeDisk {
    name: String,
    image: Vec<u8>,
    /// Poll (list_block call, from 0) at which the disk shows up.
    disk_at: u32,
    /// Poll at which its partitions show up.
    parts_at: u32,
    /// (number, device name) of the partitions the kernel will add.
    parts: Vec<(u32, String)>,
}

/// Init's fake: the shared one (files, console, clock, random bytes) with an ordered
/// record of every effect, disks that appear over time, modules, mounts, the switch to
/// the system's init and a device-mapper driver.
#[derive(Default)]
struct Fake {
    base: FakeSys,
    actions: Vec<String>,
    module_errors: BTreeMap<String, ModuleError>,
    disks: Vec<FakeDisk>,
    polls: u32,
    in_root: BTreeSet<String>,
    exec_errors: BTreeMap<String, Errno>,
    mount_errors: BTreeMap<String, Errno>,
    halted: Option<FailureAction>,
    /// sysfs attributes beyond what the disks imply (`vda2/size`, `vda2/dev`), read first.
    sysfs: BTreeMap<String, String>,
    /// Contents of partitions by device name, read before the whole disks.
    dev_images: BTreeMap<String, Vec<u8>>,
    /// The device-mapper driver.
    dm: FakeDm,
    /// What BLKRRPART returns (Ok: the disk's partitions become its table's entries).
    reread_error: Option<Errno>,
    /// Results of programs by path; absent: exit 0, and mke2fs leaves an ext4 magic.
    program_results: BTreeMap<String, CommandResult>,
}

forward!(Fake => base: Clock, Console, Random);
fake_base!(Fake => base);

/// A device-mapper driver that records requests and serves `dm-0`.
#[derive(Default)]
struct FakeDm {
    /// Errors to return, by ioctl number (the request is still recorded).
    errors: BTreeMap<u8, Errno>,
    /// Bytes of the loaded table.
    size: u64,
    /// Resumed and not removed: /dev/dm-0 exists.
    live: bool,
    /// Byte offset of a data block that fails verification (EIO).
    bad_at: Option<u64>,
    /// How long reading the whole device takes.
    read_time: Duration,
}

impl Fake {
    /// A machine where everything works: one disk `vda` with an ESP and a root partition.
    fn good(cmdline: &str) -> Fake {
        let mut f = Fake::default();
        // The fake disk is no larger than its image, so there is no room for a var
        // partition: /var stays on a tmpfs unless a test's own options say otherwise.
        let cmdline = format!("kiln.var_fallback=tmpfs {cmdline}");
        f.files
            .insert("/proc/cmdline".into(), cmdline.as_bytes().to_vec());
        f.files.insert(
            "/etc/kiln/modules.load".into(),
            b"# order matters\nlib/modules/k/virtio_blk.ko\n\nlib/modules/k/ext4.ko\n".to_vec(),
        );
        f.module_errors.insert(
            "/lib/modules/k/ext4.ko".into(),
            ModuleError::Load(Errno::EEXIST),
        );
        f.disks.push(disk("vda", 0, 0, native_root_type()));
        for d in [
            "/sysroot/var",
            "/sysroot/tmp",
            "/sysroot/dev",
            "/sysroot/proc",
            "/sysroot/sys",
        ] {
            f.dirs.insert(d.into());
        }
        f.in_root.insert("/sbin/init".into());
        f
    }

    fn visible_parts(&self) -> Vec<(&FakeDisk, u32, &str)> {
        let now = self.polls.saturating_sub(1);
        self.disks
            .iter()
            .filter(|d| d.disk_at <= now && d.parts_at <= now)
            .flat_map(|d| d.parts.iter().map(move |(n, p)| (d, *n, p.as_str())))
            .collect()
    }

    fn visible_disk(&self, name: &str) -> Option<&FakeDisk> {
        let now = self.polls.saturating_sub(1);
        self.disks
            .iter()
            .find(|d| d.name == name && d.disk_at <= now)
    }

    fn fatal_line(&self) -> &str {
        self.lines
            .iter()
            .find(|l| l.starts_with("kiln-init: FATAL: "))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no FATAL line in {:#?}", self.lines))
    }
}

fn disk(name: &str, disk_at: u32, parts_at: u32, root_type: Guid) -> FakeDisk {
    let esp = ESP.parse::<Guid>().unwrap();
    let uuid = UUID.parse::<Guid>().unwrap();
    FakeDisk {
        name: name.into(),
        image: build_image(
            512,
            256,
            &[(0, esp, esp, "esp"), (1, root_type, uuid, "root")],
        ),
        disk_at,
        parts_at,
        parts: vec![(1, format!("{name}1")), (2, format!("{name}2"))],
    }
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

impl Files for Fake {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(not_found)
    }
    fn exists(&mut self, path: &str) -> bool {
        self.base.exists(path)
    }
    fn is_dir(&mut self, path: &str) -> bool {
        self.dirs.contains(path)
    }
    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        self.base.list_dir(path)
    }
    fn modified(&mut self, path: &str) -> Option<u64> {
        self.base.modified(path)
    }
    fn mkdir(&mut self, path: &str) -> io::Result<()> {
        self.dirs.insert(path.to_string());
        Ok(())
    }
    fn mkdir_private(&mut self, path: &str) -> io::Result<()> {
        self.mkdir(path)
    }
    fn write_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        self.actions.push(format!("write {path} {mode:o}"));
        self.files.insert(path.to_string(), data.to_vec());
        Ok(())
    }
    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.write_atomic(path, data, 0o600)
    }
    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        self.base.remove_file(path)
    }
}

impl Exec for Fake {
    fn run(&mut self, cmd: &Cmd<'_>) -> CommandResult {
        let env: Vec<String> = cmd
            .env
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        self.actions.push(format!(
            "run {} {} {}",
            env.join(" "),
            cmd.program,
            cmd.args.join(" ")
        ));
        if let Some(r) = self.program_results.get(cmd.program) {
            return r.clone();
        }
        if cmd.args.iter().any(|a| a.ends_with("/mke2fs")) {
            let dev = cmd
                .args
                .last()
                .unwrap()
                .trim_start_matches("/dev/")
                .to_string();
            let mut sb = vec![0u8; 4096];
            sb[1080..1082].copy_from_slice(&[0x53, 0xEF]);
            self.dev_images.insert(dev, sb);
        }
        CommandResult::exited(0, "")
    }
}

impl InitSys for Fake {
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        if let Some(e) = self.mount_errors.get(target) {
            return Err(*e);
        }
        self.actions.push(format!(
            "mount {source} {target} {} {:?} {}",
            fstype.unwrap_or("-"),
            flags,
            data.unwrap_or("-")
        ));
        Ok(())
    }
    fn umount_detach(&mut self, target: &str) -> Result<(), Errno> {
        self.actions.push(format!("umount {target}"));
        Ok(())
    }
    fn ensure_console(&mut self) {
        self.actions.push("console".into());
    }
    fn load_module(&mut self, path: &str) -> Result<(), ModuleError> {
        self.actions.push(format!("module {path}"));
        match self.module_errors.get(path) {
            Some(e) => Err(*e),
            None => Ok(()),
        }
    }
    fn list_block(&mut self) -> io::Result<Vec<String>> {
        self.polls += 1;
        let mut names: Vec<String> = self
            .disks
            .iter()
            .filter(|d| d.disk_at < self.polls)
            .map(|d| d.name.clone())
            .collect();
        names.extend(self.visible_parts().iter().map(|(_, _, p)| p.to_string()));
        // sysfs does not sort; the scan must not depend on the order.
        names.reverse();
        Ok(names)
    }
    fn read_sysfs_block(&mut self, rel: &str) -> io::Result<String> {
        if let Some(v) = self.sysfs.get(rel) {
            return Ok(v.clone());
        }
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            [dev, "partition"] | [_, dev, "partition"] => self
                .visible_parts()
                .iter()
                .find(|(d, _, p)| *p == *dev && (parts.len() == 2 || d.name == parts[0]))
                .map(|(_, n, _)| format!("{n}\n"))
                .ok_or_else(not_found),
            [disk, "size"] => self
                .visible_disk(disk)
                .map(|d| format!("{}\n", d.image.len() / 512))
                .ok_or_else(not_found),
            [disk, "queue", "logical_block_size"] => self
                .visible_disk(disk)
                .map(|_| "512\n".into())
                .ok_or_else(not_found),
            _ => Err(not_found()),
        }
    }
    fn read_dev(&mut self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        if name == "dm-0" && self.dm.live {
            let end = offset + len as u64;
            return match self.dm.bad_at {
                Some(bad) if (offset..end).contains(&bad) => Err(Errno::EIO.into()),
                _ if end > self.dm.size => Err(io::ErrorKind::UnexpectedEof.into()),
                _ => Ok(vec![0; len]),
            };
        }
        if let Some(img) = self.dev_images.get(name) {
            return img
                .get(offset as usize..offset as usize + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        let d = self.visible_disk(name).ok_or_else(not_found)?;
        d.image
            .get(offset as usize..offset as usize + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
    fn dev_exists(&mut self, name: &str) -> bool {
        if name == "dm-0" {
            return self.dm.live;
        }
        self.visible_parts().iter().any(|(_, _, p)| *p == name)
    }
    fn exists_in_root(&mut self, root: &str, path: &str) -> bool {
        assert_eq!(root, "/sysroot");
        self.in_root.contains(path)
    }
    fn remove_old_root(&mut self) -> Result<String, String> {
        self.actions.push("remove old root".into());
        Ok("3 files".into())
    }
    fn chdir(&mut self, path: &str) -> Result<(), Errno> {
        self.actions.push(format!("chdir {path}"));
        Ok(())
    }
    fn chroot(&mut self, path: &str) -> Result<(), Errno> {
        self.actions.push(format!("chroot {path}"));
        Ok(())
    }
    fn exec(&mut self, path: &str, argv: &[String]) -> Result<(), Errno> {
        self.actions.push(format!("exec {path} {argv:?}"));
        match self.exec_errors.get(path) {
            Some(e) => Err(*e),
            None => Ok(()),
        }
    }
    fn halt(&mut self, action: FailureAction) {
        self.halted = Some(action);
    }
    fn dm_ioctl(&mut self, nr: u8, buf: &mut [u8]) -> Result<(), Errno> {
        let req = crate::dm::decode_request(buf).unwrap();
        let action = match nr {
            crate::dm::DM_VERSION => "dm version".to_string(),
            crate::dm::DM_DEV_CREATE => format!("dm create {} {}", req.name, req.uuid),
            crate::dm::DM_TABLE_LOAD => {
                let t: Vec<String> = req
                    .targets
                    .iter()
                    .map(|t| format!("{} {} {} {}", t.start, t.sectors, t.kind, t.params))
                    .collect();
                format!("dm load {} flags={} {}", req.name, req.flags, t.join(" | "))
            }
            crate::dm::DM_DEV_SUSPEND => format!("dm resume {} flags={}", req.name, req.flags),
            crate::dm::DM_DEV_REMOVE => format!("dm remove {}", req.name),
            other => panic!("unexpected dm ioctl {other}"),
        };
        self.actions.push(action);
        if let Some(e) = self.dm.errors.get(&nr) {
            return Err(*e);
        }
        match nr {
            crate::dm::DM_VERSION => {
                for (i, v) in [4u32, 47, 0].iter().enumerate() {
                    buf[4 * i..4 * i + 4].copy_from_slice(&v.to_ne_bytes());
                }
            }
            // 253:0, as huge_encode_dev writes it.
            crate::dm::DM_DEV_CREATE => buf[40..48].copy_from_slice(&(253u64 << 8).to_ne_bytes()),
            crate::dm::DM_TABLE_LOAD => self.dm.size = req.targets[0].sectors * 512,
            crate::dm::DM_DEV_SUSPEND => self.dm.live = true,
            _ => self.dm.live = false,
        }
        Ok(())
    }
    fn read_dev_all(&mut self, name: &str) -> Result<u64, (u64, io::Error)> {
        self.actions.push(format!("read all {name}"));
        assert!(name == "dm-0" && self.dm.live, "reading {name}");
        let took = self.dm.read_time;
        self.elapsed += took;
        match self.dm.bad_at {
            // The failing read is the 1 MiB one holding the bad block.
            Some(bad) => Err((bad & !0xf_ffff, Errno::EIO.into())),
            None => Ok(self.dm.size),
        }
    }
    fn write_dev(&mut self, name: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        self.actions
            .push(format!("write {name} @{offset} +{}", data.len()));
        let d = self
            .disks
            .iter_mut()
            .find(|d| d.name == name)
            .ok_or_else(not_found)?;
        let end = offset as usize + data.len();
        if end > d.image.len() {
            return Err(io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        d.image[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn sync_dev(&mut self, name: &str) -> io::Result<()> {
        self.actions.push(format!("sync {name}"));
        Ok(())
    }
    fn reread_partitions(&mut self, disk: &str) -> Result<(), Errno> {
        self.actions.push(format!("reread {disk}"));
        if let Some(e) = self.reread_error {
            return Err(e);
        }
        let d = self.disks.iter_mut().find(|d| d.name == disk).unwrap();
        let image = &d.image;
        let mut read = |off: u64, len: usize| {
            image
                .get(off as usize..off as usize + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        };
        let gpt = crate::gpt::read_gpt(&mut read, 512, Some(image.len() as u64)).unwrap();
        d.parts = gpt
            .entries
            .iter()
            .map(|e| (e.number(), format!("{disk}{}", e.number())))
            .collect();
        Ok(())
    }
    fn resolve_in_root(&mut self, root: &str, path: &str) -> Option<String> {
        assert_eq!(root, "/sysroot");
        self.in_root
            .contains(path)
            .then(|| format!("/sysroot{path}"))
    }
}

fn run_fake(f: &mut Fake, args: &[&str]) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run(f, &args);
}

#[test]
fn boots_through_to_the_system_init() {
    let mut f = Fake::good("console=ttyS0 quiet");
    // The disk appears on the 4th scan, its partitions on the 6th.
    f.disks[0].disk_at = 3;
    f.disks[0].parts_at = 5;
    run_fake(&mut f, &["single"]);
    assert_eq!(f.halted, None, "{:#?}", f.lines);
    let flags = |s: &str| s.to_string();
    let want = vec![
        flags("mount proc /proc proc MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) -"),
        flags("mount sysfs /sys sysfs MsFlags(MS_NOSUID | MS_NODEV | MS_NOEXEC) -"),
        flags("mount devtmpfs /dev devtmpfs MsFlags(MS_NOSUID) mode=0755"),
        flags("console"),
        flags("module /lib/modules/k/virtio_blk.ko"),
        flags("module /lib/modules/k/ext4.ko"),
        flags("mount /dev/vda2 /sysroot ext4 MsFlags(MS_RDONLY) -"),
        flags("mount tmpfs /sysroot/tmp tmpfs MsFlags(MS_NOSUID | MS_NODEV) mode=1777"),
        flags("mount tmpfs /sysroot/var tmpfs MsFlags(0x0) mode=0755"),
        flags("mount /dev /sysroot/dev - MsFlags(MS_MOVE) -"),
        flags("mount /proc /sysroot/proc - MsFlags(MS_MOVE) -"),
        flags("mount /sys /sysroot/sys - MsFlags(MS_MOVE) -"),
        flags("remove old root"),
        flags("chdir /sysroot"),
        flags("mount . / - MsFlags(MS_MOVE) -"),
        flags("chroot ."),
        flags("chdir /"),
        flags("exec /sbin/init [\"/sbin/init\", \"single\"]"),
    ];
    assert_eq!(f.actions, want);
    assert_eq!(f.polls, 6);
    assert_eq!(f.elapsed, Duration::from_millis(500));
    let log = f.lines.join("\n");
    for line in [
        "kiln-init: mounted /proc, /sys and /dev",
        "kiln-init: modules: 1 loaded, 1 already present, 0 failed (of 2 in /etc/kiln/modules.load)",
        &format!(
            "kiln-init: root partition /dev/vda2 (partition 2 of vda, PARTUUID {UUID})"
        ),
        "kiln-init: mounted /dev/vda2 read-only on /sysroot",
        "kiln-init: switching to /sbin/init",
    ] {
        assert!(log.contains(line), "missing {line:?} in\n{log}");
    }
    assert!(
        f.lines.iter().all(|l| l.starts_with("kiln-init: ")),
        "{log}"
    );
}

#[test]
fn missing_root_times_out_with_a_full_explanation() {
    let mut f = Fake::good("kiln.rootwait=2");
    // Only a disk of the other architecture, plus a blank one.
    let other = if native_root_type() == types::ROOT_X86_64 {
        types::ROOT_ARM64
    } else {
        types::ROOT_X86_64
    };
    f.disks = vec![disk("vda", 0, 0, other)];
    f.disks.push(FakeDisk {
        name: "vdb".into(),
        image: vec![0; 512 * 64],
        disk_at: 0,
        parts_at: 0,
        parts: vec![],
    });
    f.module_errors.insert(
        "/lib/modules/k/virtio_blk.ko".into(),
        ModuleError::Open(Errno::ENOENT),
    );
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, Some(FailureAction::Halt));
    // One scan at 0 s and one every 100 ms up to and including 2 s.
    assert_eq!(f.polls, 21);
    let fatal = f.fatal_line();
    let wanted = native_root_type();
    for part in [
        "no GPT partition of type root-".to_string(),
        format!("({wanted}) appeared within 2 s"),
        "disks seen: vda (GPT, 2 partitions: esp, root-".to_string(),
        "vdb (no GPT)".to_string(),
        "modules that failed to load: /lib/modules/k/virtio_blk.ko (cannot open the file: \
         ENOENT"
            .to_string(),
    ] {
        assert!(fatal.contains(&part), "missing {part:?} in {fatal}");
    }
    assert_eq!(
        f.lines.last().map(String::as_str),
        Some("kiln-init: halting; the root filesystem could not be mounted")
    );
    assert!(
        f.actions.iter().all(|a| !a.contains("/sysroot")),
        "{:?}",
        f.actions
    );
}

#[test]
fn no_disks_at_all_points_at_the_driver() {
    let mut f = Fake::good("kiln.rootwait=0 kiln.on_failure=poweroff");
    f.disks.clear();
    run_fake(&mut f, &[]);
    assert_eq!(f.polls, 1);
    assert_eq!(f.halted, Some(FailureAction::Poweroff));
    let fatal = f.fatal_line();
    assert!(
        fatal.contains("disks seen: none (is the disk driver"),
        "{fatal}"
    );
    assert!(
        fatal.contains("all modules in /etc/kiln/modules.load loaded"),
        "{fatal}"
    );
    assert!(f
        .lines
        .iter()
        .any(|l| l == "kiln-init: powering off (kiln.on_failure=poweroff)"));
}

#[test]
fn explicit_root_type_and_bad_root_type() {
    let mut f = Fake::good(&format!("kiln.root_type={ESP}"));
    run_fake(&mut f, &[]);
    assert!(f
        .actions
        .contains(&"mount /dev/vda1 /sysroot ext4 MsFlags(MS_RDONLY) -".to_string()));

    let mut f = Fake::good("kiln.root_type=vda2 kiln.on_failure=reboot");
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, Some(FailureAction::Reboot));
    assert!(f
        .fatal_line()
        .contains("kiln.root_type: \"vda2\" is not a GUID"));
    assert!(
        f.actions.iter().all(|a| !a.starts_with("module")),
        "stopped before modules"
    );
}

#[test]
fn ext4_missing_is_explained() {
    let mut f = Fake::good("");
    f.mount_errors.insert("/sysroot".into(), Errno::ENODEV);
    run_fake(&mut f, &[]);
    let fatal = f.fatal_line();
    assert!(fatal.contains("mounting /dev/vda2 (PARTUUID"), "{fatal}");
    assert!(
        fatal.contains("ENODEV") && fatal.contains("ext4.ko"),
        "{fatal}"
    );
    assert_eq!(f.halted, Some(FailureAction::Halt));
}

#[test]
fn falls_back_through_init_candidates() {
    let mut f = Fake::good("");
    f.in_root = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd"]
        .into_iter()
        .map(String::from)
        .collect();
    f.exec_errors
        .insert("/usr/lib/systemd/systemd".into(), Errno::ENOEXEC);
    run_fake(&mut f, &["--", "x"]);
    assert_eq!(f.halted, None);
    let execs: Vec<&String> = f.actions.iter().filter(|a| a.starts_with("exec")).collect();
    assert_eq!(
        execs,
        [
            "exec /usr/lib/systemd/systemd [\"/usr/lib/systemd/systemd\", \"--\", \"x\"]",
            "exec /lib/systemd/systemd [\"/lib/systemd/systemd\", \"--\", \"x\"]"
        ]
    );
    assert!(f
        .lines
        .iter()
        .any(|l| l.contains("cannot execute /usr/lib/systemd/systemd: ENOEXEC")));

    let mut f = Fake::good("");
    f.in_root.clear();
    run_fake(&mut f, &[]);
    assert!(f
        .fatal_line()
        .contains("no init program in the root filesystem"));
    assert_eq!(
        f.lines.last().map(String::as_str),
        Some("kiln-init: halting; the system's init could not be started")
    );
    // It stopped before touching the mounts, so the console and /dev are still usable.
    assert!(!f.actions.iter().any(|a| a.contains("MS_MOVE")));
}

#[test]
fn missing_var_and_tmp_are_skipped() {
    let mut f = Fake::good("");
    f.dirs.remove("/sysroot/var");
    f.dirs.remove("/sysroot/tmp");
    run_fake(&mut f, &[]);
    assert_eq!(f.halted, None);
    assert!(!f.actions.iter().any(|a| a.starts_with("mount tmpfs")));
    assert!(f
        .lines
        .iter()
        .any(|l| l.contains("no /var in the root filesystem")));
}

/// The real block scan against a directory laid out like sysfs and /dev, with a disk
/// image partitioned by sgdisk (an independent GPT writer).
#[test]
fn real_scan_finds_the_root_in_an_sgdisk_image() {
    let t = tempfile::tempdir().unwrap();
    let sys = t.path().join("sys/class/block");
    let dev = t.path().join("dev");
    std::fs::create_dir_all(sys.join("vda/queue")).unwrap();
    std::fs::create_dir_all(sys.join("vda/vda3")).unwrap();
    std::fs::create_dir_all(&dev).unwrap();
    let img = dev.join("vda");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let root_type = native_root_type();
    let out = std::process::Command::new("sgdisk")
        .args([
            "-n", "1:0:+1M", "-t", "1:ef00", "-n", "2:0:+1M", "-n", "3:0:0",
        ])
        .args(["-t", &format!("3:{root_type}"), "-u", &format!("3:{UUID}")])
        .arg(&img)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(sys.join("vda/size"), format!("{}\n", (8 << 20) / 512)).unwrap();
    std::fs::write(sys.join("vda/queue/logical_block_size"), "512\n").unwrap();
    std::fs::write(sys.join("vda/vda3/partition"), "3\n").unwrap();
    // sysfs also lists the partition at the top level.
    std::fs::create_dir_all(sys.join("vda3")).unwrap();
    std::fs::write(sys.join("vda3/partition"), "3\n").unwrap();

    let mut real = RealInit::new(sys.clone(), dev.clone());
    // The partition node is not there yet: not found, and the disk summary says why.
    match scan_once(&mut real, &root_type) {
        Scan::NotYet(seen) => {
            assert_eq!(seen.len(), 1);
            assert!(
                seen[0].summary.contains("/dev/vda3 not created yet"),
                "{seen:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    std::fs::write(dev.join("vda3"), b"").unwrap();
    match scan_once(&mut real, &root_type) {
        Scan::Found { root, others } => {
            assert_eq!(root.device, "vda3");
            assert_eq!(root.disk, "vda");
            assert_eq!(root.number, 3);
            assert_eq!(root.part_uuid.to_string(), UUID);
            assert!(others.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

/// The dm-verity path of the boot, on a disk whose partitions carry a real hash tree.
mod verity_boot {
    use super::*;
    use crate::gpt::tests::build_image;
    use crate::init::verity::{root_part_uuid, verity_part_uuid, verity_type_for};
    use crate::verity_tree::{build_tree, test_data};
    use kiln_contract::verity::hex;

    const DATA_BLOCKS: u64 = 300;
    const SALT: [u8; 32] = [0x5a; 32];

    /// A machine whose vda holds an ESP, a root and its verity partition, and a command
    /// line with the tree's root hash. Returns the hash too.
    fn verity_fake(extra: &str) -> (Fake, [u8; 32]) {
        let (tree, hash) = build_tree(&test_data(DATA_BLOCKS as usize), &SALT);
        let mut f = Fake::good(&format!("kiln.roothash={} {extra}", hex(&hash)));
        let esp = ESP.parse::<Guid>().unwrap();
        let root_type = native_root_type();
        f.disks[0].image = build_image(
            512,
            256,
            &[
                (0, esp, esp, "esp"),
                (1, root_type, root_part_uuid(&hash), "root"),
                (
                    2,
                    verity_type_for(&root_type),
                    verity_part_uuid(&hash),
                    "verity",
                ),
            ],
        );
        f.disks[0].parts.push((3, "vda3".into()));
        let mut hash_dev = tree;
        hash_dev.resize(64 * 512, 0);
        f.dev_images.insert("vda3".into(), hash_dev);
        for (k, v) in [
            ("vda2/size", "2560\n"),
            ("vda2/dev", "254:2\n"),
            ("vda3/size", "64\n"),
            ("vda3/dev", "254:3\n"),
        ] {
            f.sysfs.insert(k.into(), v.into());
        }
        f.dm.read_time = Duration::from_millis(4200);
        (f, hash)
    }

    fn dm_actions(f: &Fake) -> Vec<&str> {
        f.actions
            .iter()
            .map(String::as_str)
            .filter(|a| a.starts_with("dm ") || a.starts_with("read all"))
            .collect()
    }

    #[test]
    fn mounts_the_root_through_dm_verity() {
        let (mut f, hash) = verity_fake("");
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, None, "{:#?}", f.lines);
        let h = hex(&hash);
        let load = format!(
            "dm load kiln-root flags=1 0 2400 verity 1 254:2 254:3 4096 4096 300 1 sha256 {h} {}",
            hex(&SALT)
        );
        assert_eq!(
            dm_actions(&f),
            [
                "dm version",
                &format!("dm create kiln-root KILN-VERITY-{}", &h[..32]),
                &load,
                "dm resume kiln-root flags=0",
                "read all dm-0",
            ]
        );
        // The verity device, not the partition, is what gets mounted, after the checks.
        let mount = f
            .actions
            .iter()
            .position(|a| a == "mount /dev/dm-0 /sysroot ext4 MsFlags(MS_RDONLY) -")
            .unwrap_or_else(|| panic!("{:#?}", f.actions));
        let read = f.actions.iter().position(|a| a == "read all dm-0").unwrap();
        assert!(read < mount);
        assert!(!f.actions.iter().any(|a| a.contains("/dev/vda2 /sysroot")));
        let log = f.lines.join("\n");
        for line in [
            format!(
                "kiln-init: root partition /dev/vda2 (partition 2 of vda, PARTUUID {})",
                root_part_uuid(&hash)
            ),
            format!(
                "kiln-init: verity: kiln.roothash={}..., hash partition /dev/vda3 (PARTUUID {})",
                &h[..12],
                verity_part_uuid(&hash)
            ),
            "kiln-init: verity: hash tree matches kiln.roothash= (4 hash blocks in 2 levels over \
             1.2 MiB of /dev/vda2)"
                .to_string(),
            "kiln-init: verity: /dev/dm-0 (kiln-root) maps /dev/vda2 through dm-verity with \
             the hashes on /dev/vda3"
                .to_string(),
            "kiln-init: verified 1.2 MiB of the root in 4.2 s".to_string(),
            "kiln-init: mounted /dev/dm-0 read-only on /sysroot".to_string(),
        ] {
            assert!(log.contains(&line), "missing {line:?} in\n{log}");
        }
        assert!(
            f.lines.iter().all(|l| l.starts_with("kiln-init: ")),
            "{log}"
        );
    }

    #[test]
    fn on_read_skips_the_full_read() {
        let (mut f, _) = verity_fake("kiln.verity_check=on-read kiln.debug");
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, None, "{:#?}", f.lines);
        assert!(!f.actions.iter().any(|a| a.starts_with("read all")));
        assert!(f
            .actions
            .contains(&"mount /dev/dm-0 /sysroot ext4 MsFlags(MS_RDONLY) -".to_string()));
        let log = f.lines.join("\n");
        assert!(
            log.contains("kiln.verity_check=on-read: not reading"),
            "{log}"
        );
        // kiln.debug shows the interface version and the table.
        assert!(log.contains("device-mapper interface 4.47.0"), "{log}");
        assert!(
            log.contains("table for 253:0: 0 2400 verity 1 254:2"),
            "{log}"
        );
    }

    #[test]
    fn a_changed_hash_partition_stops_the_boot() {
        let (mut f, hash) = verity_fake("");
        // One byte of level 0 (hash block 2, the first block of the lower level).
        f.dev_images.get_mut("vda3").unwrap()[2 * 4096 + 100] ^= 1;
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, Some(FailureAction::Halt));
        let fatal = f.fatal_line();
        for part in [
            "root verification failed: the verity partition /dev/vda3 (PARTUUID ".to_string(),
            format!("does not match kiln.roothash={}", hex(&hash)),
            "level 0 of 2 (0 is over the data), block 0 (hash block 2, byte offset 8192)"
                .to_string(),
            "but level 1 block 0 records".to_string(),
        ] {
            assert!(fatal.contains(&part), "missing {part:?} in {fatal}");
        }
        assert_eq!(
            f.lines.last().map(String::as_str),
            Some("kiln-init: halting; the root filesystem could not be mounted")
        );
        // Nothing reached the kernel and nothing was mounted.
        assert!(dm_actions(&f).is_empty(), "{:?}", f.actions);
        assert!(!f.actions.iter().any(|a| a.contains("/sysroot")));

        // A changed top block (hash block 1) no longer hashes to kiln.roothash= itself.
        let (mut f, _) = verity_fake("");
        f.dev_images.get_mut("vda3").unwrap()[4096] ^= 0x40;
        run_fake(&mut f, &[]);
        let fatal = f.fatal_line();
        assert!(fatal.contains("level 1 of 2"), "{fatal}");
        assert!(fatal.contains("but kiln.roothash= is"), "{fatal}");
    }

    #[test]
    fn a_changed_root_block_stops_the_full_check() {
        let (mut f, _) = verity_fake("kiln.on_failure=poweroff");
        f.dm.bad_at = Some(77 * 4096);
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, Some(FailureAction::Poweroff));
        let fatal = f.fatal_line();
        assert!(
            fatal.contains(
                "root verification failed: reading /dev/dm-0 (/dev/vda2 through dm-verity) \
                 failed with EIO (block at byte offset 315392 of the root partition does not \
                 match the hash tree; the root partition was changed)"
            ),
            "{fatal}"
        );
        // The half-made device is removed, the root never mounted.
        assert_eq!(dm_actions(&f).last(), Some(&"dm remove kiln-root"));
        assert!(!f.actions.iter().any(|a| a.contains("/sysroot")));
    }

    #[test]
    fn kernel_errors_get_a_hint_and_the_device_is_removed() {
        let (mut f, _) = verity_fake("");
        f.dm.errors.insert(crate::dm::DM_TABLE_LOAD, Errno::EINVAL);
        run_fake(&mut f, &[]);
        let fatal = f.fatal_line();
        assert!(
            fatal
                .contains("setting up dm-verity for the root: DM_TABLE_LOAD for kiln-root: EINVAL"),
            "{fatal}"
        );
        assert!(fatal.contains("dm-verity.ko"), "{fatal}");
        assert_eq!(dm_actions(&f).last(), Some(&"dm remove kiln-root"));
        assert_eq!(f.halted, Some(FailureAction::Halt));

        // Without dm-mod there is no control device: nothing to remove.
        let (mut f, _) = verity_fake("");
        f.dm.errors.insert(crate::dm::DM_VERSION, Errno::ENOENT);
        run_fake(&mut f, &[]);
        assert!(f.fatal_line().contains("no /dev/mapper/control"));
        assert_eq!(dm_actions(&f), ["dm version"]);
    }

    #[test]
    fn without_roothash_the_root_is_mounted_unverified() {
        let mut f = Fake::good("");
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, None);
        assert!(f.lines.contains(
            &"kiln-init: warning: no kiln.roothash= on the kernel command line: mounting /dev/vda2 \
              unverified (no dm-verity)"
                .to_string()
        ));
        assert!(dm_actions(&f).is_empty());
        assert!(f
            .actions
            .contains(&"mount /dev/vda2 /sysroot ext4 MsFlags(MS_RDONLY) -".to_string()));
    }

    #[test]
    fn a_missing_verity_partition_is_named() {
        let (mut f, hash) = verity_fake("");
        // The verity partition's PARTUUID belongs to some other hash.
        let esp = ESP.parse::<Guid>().unwrap();
        let other = UUID.parse::<Guid>().unwrap();
        let root_type = native_root_type();
        f.disks[0].image = build_image(
            512,
            256,
            &[
                (0, esp, esp, "esp"),
                (1, root_type, root_part_uuid(&hash), "root"),
                (2, verity_type_for(&root_type), other, "verity"),
            ],
        );
        run_fake(&mut f, &[]);
        let fatal = f.fatal_line();
        for part in [
            "no verity partition: there is no a partition of type root-".to_string(),
            format!(
                "with PARTUUID {} (the last half of kiln.roothash=) on vda",
                verity_part_uuid(&hash)
            ),
            format!("partitions of that type: partition 3 (PARTUUID {UUID})"),
        ] {
            assert!(fatal.contains(&part), "missing {part:?} in {fatal}");
        }
        assert!(dm_actions(&f).is_empty());
        assert_eq!(f.halted, Some(FailureAction::Halt));
    }

    #[test]
    fn the_root_must_carry_the_first_half_of_the_hash() {
        let (mut f, hash) = verity_fake("kiln.rootwait=0");
        let mut other = hash;
        other[3] ^= 0xff;
        f.files.insert(
            "/proc/cmdline".into(),
            format!("kiln.roothash={} kiln.rootwait=0", hex(&other)).into_bytes(),
        );
        run_fake(&mut f, &[]);
        let fatal = f.fatal_line();
        for part in [
            format!(
                "with PARTUUID {} (the first half of kiln.roothash=) appeared within 0 s",
                root_part_uuid(&other)
            ),
            format!(
                "partition 2 has PARTUUID {}, not {}",
                root_part_uuid(&hash),
                root_part_uuid(&other)
            ),
        ] {
            assert!(fatal.contains(&part), "missing {part:?} in {fatal}");
        }
    }
}

/// The var partition, the machine-id and the boot counter through whole boots of an
/// image written to a disk larger than itself.
mod var_boot {
    use super::*;
    use crate::gpt::read_table;

    /// A 4 MiB image on a 16 MiB disk.
    const IMAGE_SECTORS: u64 = 8192;
    const DISK_SECTORS: u64 = 32768;
    const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
    /// What the fake's random counter makes of the second 16 random bytes (the first
    /// 16 are the partition's GUID), with systemd's version 4 bits.
    const ID: &str = "101112131415461798191a1b1c1d1e1f";

    fn loader() -> &'static str {
        if cfg!(target_arch = "aarch64") {
            "/lib/ld-linux-aarch64.so.1"
        } else {
            "/lib64/ld-linux-x86-64.so.2"
        }
    }

    fn mke2fs_run() -> String {
        let triple = if cfg!(target_arch = "aarch64") {
            "aarch64-linux-gnu"
        } else {
            "x86_64-linux-gnu"
        };
        format!(
            "run MKE2FS_CONFIG=/sysroot/etc/mke2fs.conf /sysroot{} --library-path \
             /sysroot/usr/lib/{triple}:/sysroot/lib/{triple} /sysroot/usr/sbin/mke2fs -q -F \
             -t ext4 -L var -E lazy_itable_init=1,lazy_journal_init=1 /dev/vda4",
            loader()
        )
    }

    /// First boot: ESP, root and a third partition, then free space to the disk's end.
    fn first_boot(options: &str) -> Fake {
        let mut f = Fake::good(&format!("kiln.var_min=4M {options}"));
        let esp = ESP.parse::<Guid>().unwrap();
        let data = LINUX_DATA.parse::<Guid>().unwrap();
        let mut image = build_image(
            512,
            IMAGE_SECTORS,
            &[
                (0, esp, esp, "esp"),
                (1, native_root_type(), UUID.parse::<Guid>().unwrap(), "root"),
                (2, data, data, "root-verity"),
            ],
        );
        // The protective MBR covers the image, as the builder writes it.
        image[446 + 4] = 0xEE;
        image[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        image[446 + 12..446 + 16].copy_from_slice(&(IMAGE_SECTORS as u32 - 1).to_le_bytes());
        image[510..512].copy_from_slice(&[0x55, 0xAA]);
        image.resize(DISK_SECTORS as usize * 512, 0);
        f.disks[0].image = image;
        f.disks[0].parts.push((3, "vda3".into()));
        f.in_root.insert("/usr/sbin/mke2fs".into());
        f.in_root.insert(loader().into());
        f
    }

    /// The next boot of the machine `f` left behind.
    fn next_boot(f: &Fake, options: &str) -> Fake {
        let mut g = first_boot(options);
        g.disks[0].image = f.disks[0].image.clone();
        g.disks[0].parts = f.disks[0].parts.clone();
        g.dev_images = f.dev_images.clone();
        for (k, v) in &f.files {
            if k.starts_with("/sysroot/var/") {
                g.files.insert(k.clone(), v.clone());
            }
        }
        g
    }

    /// Actions from the root's discovery to the switch, without the root's own mounts.
    fn var_actions(f: &Fake) -> Vec<&str> {
        let start = f
            .actions
            .iter()
            .position(|a| a == "module /lib/modules/k/ext4.ko")
            .unwrap();
        let end = f
            .actions
            .iter()
            .position(|a| a.starts_with("mount /dev /sysroot/dev"))
            .unwrap();
        f.actions[start + 1..end]
            .iter()
            .map(String::as_str)
            .filter(|a| !a.contains(" /sysroot ") && !a.contains(" /sysroot/tmp "))
            .collect()
    }

    fn exec_line(f: &Fake) -> &str {
        f.actions
            .iter()
            .find(|a| a.starts_with("exec "))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no exec in {:#?}\n{:#?}", f.actions, f.lines))
    }

    fn assert_logged(f: &Fake, lines: &[&str]) {
        let log = f.lines.join("\n");
        for line in lines {
            assert!(log.contains(line), "missing {line:?} in\n{log}");
        }
        assert!(
            f.lines.iter().all(|l| l.starts_with("kiln-init: ")),
            "{log}"
        );
    }

    fn sgdisk(args: &[&str], image: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, image).unwrap();
        let out = std::process::Command::new("sgdisk")
            .args(args)
            .arg(&path)
            .output()
            .expect("sgdisk is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "sgdisk {args:?}: {out:?}");
        text
    }

    #[test]
    fn first_boot_creates_formats_and_mounts_var_and_keeps_a_machine_id() {
        let mut f = first_boot("kiln.var_fallback=halt");
        run_fake(&mut f, &["single"]);
        assert_eq!(f.halted, None, "{:#?}", f.lines);
        let last = DISK_SECTORS - 1;
        let mke2fs = mke2fs_run();
        let want = [
            // The new backup table at the disk's end, then the primary (with the
            // protective MBR's size), then the old backup header erased.
            format!("write vda @{} +16384", (last - 32) * 512),
            format!("write vda @{} +512", last * 512),
            "sync vda".to_string(),
            "write vda @0 +512".to_string(),
            "write vda @1024 +16384".to_string(),
            "write vda @512 +512".to_string(),
            "sync vda".to_string(),
            format!("write vda @{} +512", (IMAGE_SECTORS - 1) * 512),
            "sync vda".to_string(),
            "reread vda".to_string(),
            mke2fs,
            "mount /dev/vda4 /sysroot/var ext4 MsFlags(0x0) -".to_string(),
            "write /sysroot/var/lib/kiln/machine-id 444".to_string(),
            "write /sysroot/var/lib/kiln/boots 644".to_string(),
        ];
        assert_eq!(var_actions(&f), want);
        // The table is changed before the root is mounted.
        let reread = f.actions.iter().position(|a| a == "reread vda").unwrap();
        let root = f
            .actions
            .iter()
            .position(|a| a.starts_with("mount /dev/vda2 /sysroot "))
            .unwrap();
        assert!(reread < root);
        assert_eq!(
            exec_line(&f),
            format!("exec /sbin/init [\"/sbin/init\", \"single\", \"--machine-id={ID}\"]")
        );
        assert_eq!(
            f.files["/sysroot/var/lib/kiln/machine-id"],
            format!("{ID}\n").as_bytes()
        );
        assert_eq!(f.files["/sysroot/var/lib/kiln/boots"], b"1\n");
        assert!(f.dirs.contains("/sysroot/var/lib/kiln"));
        assert_logged(
            &f,
            &[
                &format!(
                    "kiln-init: var: creating partition 4 \"var\" on /dev/vda: sectors 2048-{} \
                     (14 MiB), PARTUUID 03020100-0504-4706-8809-0a0b0c0d0e0f",
                    DISK_SECTORS - 34
                ),
                "kiln-init: var: step 1 of 3 (new backup table): wrote backup GPT entry array, \
                 backup GPT header",
                "kiln-init: var: the kernel re-read /dev/vda's partitions",
                "kiln-init: var: formatting /dev/vda4 (14 MiB) as ext4",
                "kiln-init: mounted /dev/vda4 (ext4, 14 MiB) read-write on /sysroot/var",
                &format!("kiln-init: machine-id {ID} (new, saved in /var/lib/kiln/machine-id)"),
                "kiln-init: boot 1 of this /var",
            ],
        );
        // sgdisk, an independent reader, finds the table the boot wrote sound.
        let image = &f.disks[0].image;
        let v = sgdisk(&["-v"], image);
        assert!(v.contains("No problems found"), "{v}");
        let info = sgdisk(&["-i", "4"], image);
        for part in [
            "Partition GUID code: 4D21B016-B534-45C2-A9FB-5C16E091FD2D".to_string(),
            "Partition unique GUID: 03020100-0504-4706-8809-0A0B0C0D0E0F".to_string(),
            "First sector: 2048 ".to_string(),
            format!("Last sector: {} ", DISK_SECTORS - 34),
            "Partition name: 'var'".to_string(),
        ] {
            assert!(info.contains(&part), "missing {part:?} in\n{info}");
        }
    }

    #[test]
    fn second_boot_mounts_the_same_var_and_keeps_the_machine_id() {
        let mut f = first_boot("");
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, None, "{:#?}", f.lines);
        let table_after_first = f.disks[0].image.clone();

        let mut g = next_boot(&f, "");
        run_fake(&mut g, &[]);
        assert_eq!(g.halted, None, "{:#?}", g.lines);
        assert_eq!(
            var_actions(&g),
            [
                "mount /dev/vda4 /sysroot/var ext4 MsFlags(0x0) -",
                "write /sysroot/var/lib/kiln/boots 644",
            ]
        );
        assert!(g.disks[0].image == table_after_first, "the disk changed");
        assert_eq!(
            exec_line(&g),
            format!("exec /sbin/init [\"/sbin/init\", \"--machine-id={ID}\"]")
        );
        assert_eq!(g.files["/sysroot/var/lib/kiln/boots"], b"2\n");
        assert_logged(
            &g,
            &[
                "kiln-init: var partition /dev/vda4 (partition 4 of vda, 14 MiB, PARTUUID \
                 03020100-0504-4706-8809-0a0b0c0d0e0f)",
                &format!("kiln-init: machine-id {ID} (from /var/lib/kiln/machine-id)"),
                "kiln-init: boot 2 of this /var",
            ],
        );

        // A damaged id or counter is replaced, not trusted.
        let mut h = next_boot(&g, "");
        h.files.insert(
            "/sysroot/var/lib/kiln/machine-id".into(),
            b"00000000000000000000000000000000\n".to_vec(),
        );
        h.files
            .insert("/sysroot/var/lib/kiln/boots".into(), b"many\n".to_vec());
        h.random_next = 0x80;
        run_fake(&mut h, &[]);
        let id = "808182838485468788898a8b8c8d8e8f";
        assert_eq!(
            h.files["/sysroot/var/lib/kiln/machine-id"],
            format!("{id}\n").as_bytes()
        );
        assert_eq!(h.files["/sysroot/var/lib/kiln/boots"], b"1\n");
        assert!(exec_line(&h).contains(&format!("--machine-id={id}")));
        assert_logged(
            &h,
            &[
                "not a machine-id; making a new one",
                "does not hold a number",
            ],
        );
    }

    #[test]
    fn a_var_partition_without_ext4_is_formatted_again() {
        // Power lost after the table was written but before mke2fs finished.
        let mut f = first_boot("");
        run_fake(&mut f, &[]);
        let mut g = next_boot(&f, "");
        g.dev_images.clear();
        g.files.retain(|k, _| !k.starts_with("/sysroot/var/"));
        run_fake(&mut g, &[]);
        assert_eq!(g.halted, None, "{:#?}", g.lines);
        let actions = var_actions(&g);
        assert_eq!(actions[0], mke2fs_run());
        assert!(!actions.iter().any(|a| a.starts_with("write vda")));
        assert_logged(
            &g,
            &["kiln-init: var: /dev/vda4 holds no ext4 filesystem (an interrupted first boot?)"],
        );
        // An XFS filesystem in a var partition is not formatted over.
        let mut h = next_boot(&f, "kiln.var_fallback=halt");
        let mut xfs = vec![0u8; 4096];
        xfs[..4].copy_from_slice(b"XFSB");
        h.dev_images.insert("vda4".into(), xfs);
        run_fake(&mut h, &[]);
        assert_eq!(h.halted, Some(FailureAction::Halt));
        assert!(h.fatal_line().contains("holds a XFS filesystem, not ext4"));
        assert!(!h.actions.iter().any(|a| a.starts_with("run ")));
    }

    #[test]
    fn no_room_halts_by_default_and_says_what_to_do() {
        let mut f = first_boot("kiln.var_fallback=halt kiln.var_min=1G");
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, Some(FailureAction::Halt));
        let fatal = f.fatal_line();
        for part in [
            "no room for a var partition on /dev/vda (16 MiB): 14 MiB free after the last \
             partition, 1024 MiB needed (kiln.var_min)",
            // 1 MiB before var, 1 GiB of var and the backup GPT, in whole MiB.
            "write the image to a disk of at least 1075838976 bytes (1026 MiB)",
            "set disk.var_fallback = \"tmpfs\" in the profile",
        ] {
            assert!(fatal.contains(part), "missing {part:?} in {fatal}");
        }
        assert_eq!(
            f.lines.last().map(String::as_str),
            Some("kiln-init: halting; /var could not be set up on the var partition")
        );
        assert!(!f.actions.iter().any(|a| a.starts_with("write ")));
        assert!(!f.actions.iter().any(|a| a.contains("/sysroot")));
    }

    #[test]
    fn no_room_with_the_tmpfs_fallback_boots_with_a_transient_id() {
        let mut f = first_boot("kiln.var_fallback=tmpfs kiln.var_min=1G");
        run_fake(&mut f, &["single"]);
        assert_eq!(f.halted, None, "{:#?}", f.lines);
        assert_eq!(
            var_actions(&f),
            ["mount tmpfs /sysroot/var tmpfs MsFlags(0x0) mode=0755"]
        );
        assert_eq!(
            exec_line(&f),
            "exec /sbin/init [\"/sbin/init\", \"single\"]"
        );
        assert_logged(
            &f,
            &[
                "kiln-init: WARNING: no room for a var partition on /dev/vda (16 MiB): 14 MiB \
                 free after the last partition, 1024 MiB needed (kiln.var_min); /var stays on \
                 a tmpfs and its state is lost at every reboot (kiln.var_fallback=tmpfs)",
                "kiln-init: machine-id: /var is not persistent; systemd makes a transient \
                 machine-id",
            ],
        );
    }

    #[test]
    fn missing_or_failing_mke2fs_follows_the_fallback() {
        let mut f = first_boot("kiln.var_fallback=halt");
        f.in_root.remove("/usr/sbin/mke2fs");
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, Some(FailureAction::Halt));
        let fatal = f.fatal_line();
        assert!(
            fatal.contains("cannot format /dev/vda4: the root filesystem has no mke2fs")
                && fatal.contains("the profile must include e2fsprogs"),
            "{fatal}"
        );

        let mut f = first_boot("");
        f.in_root.remove("/usr/sbin/mke2fs");
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, None, "{:#?}", f.lines);
        assert!(f
            .actions
            .contains(&"mount tmpfs /sysroot/var tmpfs MsFlags(0x0) mode=0755".to_string()));
        assert!(!exec_line(&f).contains("--machine-id"));

        let mut f = first_boot("kiln.var_fallback=halt");
        f.program_results.insert(
            format!("/sysroot{}", loader()),
            CommandResult::exited(
                1,
                "mke2fs 1.47.0 (5-Feb-2023)\n/dev/vda4: Read-only file system\n",
            ),
        );
        run_fake(&mut f, &[]);
        let fatal = f.fatal_line();
        assert!(
            fatal.contains(
                "mke2fs failed on /dev/vda4 (exit status 1): mke2fs 1.47.0 (5-Feb-2023) | \
                 /dev/vda4: Read-only file system"
            ),
            "{fatal}"
        );
        assert!(!f.actions.iter().any(|a| a.contains(" /sysroot/var ")));
    }

    #[test]
    fn kernel_refusing_the_new_table_or_the_mount_follows_the_fallback() {
        let mut f = first_boot("kiln.var_fallback=halt");
        f.reread_error = Some(Errno::EBUSY);
        run_fake(&mut f, &[]);
        let fatal = f.fatal_line();
        assert!(
            fatal.contains("did not re-read the partition table (BLKRRPART: EBUSY")
                && fatal.contains("to fix: reboot: the next boot uses the new partition"),
            "{fatal}"
        );
        // The table itself was written: the next boot finds the partition.
        let t = read_table(
            &mut |o, l| Ok(f.disks[0].image[o as usize..o as usize + l].to_vec()),
            512,
            None,
        )
        .unwrap();
        assert_eq!(t.entries[3].type_guid, types::VAR);

        let mut f = first_boot("");
        f.mount_errors.insert("/sysroot/var".into(), Errno::EUCLEAN);
        run_fake(&mut f, &[]);
        assert_eq!(f.halted, Some(FailureAction::Halt));
        assert!(f
            .fatal_line()
            .contains("mounting tmpfs on /sysroot/var: EUCLEAN"));
        assert!(f
            .lines
            .iter()
            .any(|l| l.contains("WARNING: mounting /dev/vda4 as ext4 on /sysroot/var: EUCLEAN")));
    }
}

/// The verity path with RealInit on real files, up to the kernel: veritysetup makes the
/// hash partition, sgdisk the partition table; only the device-mapper is missing here.
mod verity_real {
    use super::*;
    use crate::cmdline;
    use crate::init::root::RootPartition;
    use crate::init::verity::{open_root, root_part_uuid, verity_part_uuid, verity_type_for};
    use crate::verity_tree::test_data;
    use std::fs;
    use std::process::Command;

    const SALT: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

    fn write(path: &std::path::Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn checks_a_veritysetup_tree_then_needs_the_device_mapper() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path().join("sys/class/block");
        let dev = t.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        // The root (vda1) and its hash partition (vda2) are files of their own here.
        fs::write(dev.join("vda1"), test_data(1000)).unwrap();
        let out = Command::new("veritysetup")
            .args(["format", "--salt", SALT])
            .arg(dev.join("vda1"))
            .arg(dev.join("vda2"))
            .output()
            .expect("veritysetup is installed");
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let hash_hex = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .map(str::trim)
            .unwrap()
            .to_string();
        let opts = cmdline::parse(&format!("kiln.roothash={hash_hex}"));
        let hash = opts.root_hash.unwrap();

        let disk = dev.join("vda");
        fs::File::create(&disk).unwrap().set_len(8 << 20).unwrap();
        let root_type = native_root_type();
        let out = Command::new("sgdisk")
            .args(["-n", "1:0:+2M", "-t", &format!("1:{root_type}")])
            .args(["-u", &format!("1:{}", root_part_uuid(&hash))])
            .args([
                "-n",
                "2:0:+1M",
                "-t",
                &format!("2:{}", verity_type_for(&root_type)),
            ])
            .args(["-u", &format!("2:{}", verity_part_uuid(&hash))])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let hash_len = fs::metadata(dev.join("vda2")).unwrap().len();
        write(&sys.join("vda/size"), &format!("{}\n", (8 << 20) / 512));
        write(&sys.join("vda/queue/logical_block_size"), "512\n");
        for (n, size) in [(1, 1000 * 4096 / 512), (2, hash_len / 512)] {
            write(
                &sys.join(format!("vda/vda{n}/partition")),
                &format!("{n}\n"),
            );
            write(&sys.join(format!("vda{n}/partition")), &format!("{n}\n"));
            write(&sys.join(format!("vda{n}/size")), &format!("{size}\n"));
            write(&sys.join(format!("vda{n}/dev")), &format!("254:{n}\n"));
        }
        let root = RootPartition {
            disk: "vda".into(),
            device: "vda1".into(),
            number: 1,
            part_uuid: root_part_uuid(&hash),
            from_backup: false,
        };
        let mut real = RealInit::new(sys.clone(), dev.clone());
        // The tree checks out; the next step needs /dev/mapper/control, which is absent.
        let f = open_root(&mut real, &opts, &root).unwrap_err();
        assert!(
            f.message.contains("DM_VERSION for kiln-root: ENOENT")
                && f.message.contains("no /dev/mapper/control"),
            "{}",
            f.message
        );

        // A regular file is not a control device: the ioctl itself reaches the kernel,
        // which refuses it.
        fs::create_dir_all(dev.join("mapper")).unwrap();
        fs::write(dev.join("mapper/control"), b"").unwrap();
        let f = open_root(&mut real, &opts, &root).unwrap_err();
        assert!(
            f.message.contains("DM_VERSION for kiln-root: ENOTTY"),
            "{}",
            f.message
        );

        // One changed byte in the lower level of veritysetup's tree.
        let mut tree = fs::read(dev.join("vda2")).unwrap();
        tree[2 * 4096 + 1234] ^= 0x10;
        fs::write(dev.join("vda2"), &tree).unwrap();
        let f = open_root(&mut real, &opts, &root).unwrap_err();
        assert!(
            f.message
                .contains("root verification failed: the verity partition /dev/vda2 (PARTUUID ")
                && f.message.contains("level 0 of 2"),
            "{}",
            f.message
        );
    }

    #[test]
    fn real_whole_device_read() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("dev");
        fs::create_dir_all(&dev).unwrap();
        // Not a multiple of the read size: the last read is short.
        fs::write(dev.join("dm-0"), vec![7u8; (5 << 20) / 2 + 4096]).unwrap();
        let mut real = RealInit::new(t.path().join("sys"), dev);
        assert_eq!(real.read_dev_all("dm-0").unwrap(), (5 << 20) / 2 + 4096);
        let (at, e) = real.read_dev_all("dm-1").unwrap_err();
        assert_eq!((at, e.kind()), (0, io::ErrorKind::NotFound));
    }
}

#[test]
fn a_driver_without_its_hardware_is_not_a_failure() {
    let mut sys = Fake::default();
    sys.module_errors
        .insert("/hv_vmbus.ko".into(), ModuleError::Load(Errno::ENODEV));
    sys.module_errors
        .insert("/bad.ko".into(), ModuleError::Load(Errno::ENOEXEC));
    let paths = ["/virtio.ko", "/hv_vmbus.ko", "/bad.ko"].map(String::from);
    let r = super::modules::load_all(&mut sys, &paths, false);
    assert_eq!((r.loaded, r.no_device), (1, 1));
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].0, "/bad.ko");
    assert!(
        !sys.lines.iter().any(|l| l.contains("hv_vmbus")),
        "{:?}",
        sys.lines
    );
}

/// A failed boot on trial reboots so systemd-boot counts the attempt.
mod trial;
