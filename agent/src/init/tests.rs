//! The init sequence against a fake machine, and the block scan against a sysfs-like
//! directory holding a disk image made by sgdisk.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::modules::ModuleError;
use super::real::RealSys;
use super::root::{scan_once, Scan};
use super::{run, InitSys};
use crate::cmdline::FailureAction;
use crate::gpt::tests::build_image;
use crate::gpt::{native_root_type, Guid};

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

#[derive(Default)]
struct Fake {
    log: Vec<String>,
    actions: Vec<String>,
    files: BTreeMap<String, Vec<u8>>,
    module_errors: BTreeMap<String, ModuleError>,
    disks: Vec<FakeDisk>,
    polls: u32,
    clock: Duration,
    dirs: BTreeSet<String>,
    in_root: BTreeSet<String>,
    exec_errors: BTreeMap<String, Errno>,
    mount_errors: BTreeMap<String, Errno>,
    halted: Option<FailureAction>,
}

impl Fake {
    /// A machine where everything works: one disk `vda` with an ESP and a root partition.
    fn good(cmdline: &str) -> Fake {
        let mut f = Fake::default();
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
        self.log
            .iter()
            .find(|l| l.starts_with("kiln-init: FATAL: "))
            .map(String::as_str)
            .unwrap_or_else(|| panic!("no FATAL line in {:#?}", self.log))
    }
}

fn disk(name: &str, disk_at: u32, parts_at: u32, root_type: Guid) -> FakeDisk {
    let esp = Guid::parse(ESP).unwrap();
    let uuid = Guid::parse(UUID).unwrap();
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

impl InitSys for Fake {
    fn log(&mut self, line: &str) {
        self.log.push(line.to_string());
    }
    fn mkdir(&mut self, path: &str) -> io::Result<()> {
        self.dirs.insert(path.to_string());
        Ok(())
    }
    fn is_dir(&mut self, path: &str) -> bool {
        self.dirs.contains(path)
    }
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
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        self.files.get(path).cloned().ok_or_else(not_found)
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
        let d = self.visible_disk(name).ok_or_else(not_found)?;
        d.image
            .get(offset as usize..offset as usize + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
    fn dev_exists(&mut self, name: &str) -> bool {
        self.visible_parts().iter().any(|(_, _, p)| *p == name)
    }
    fn sleep(&mut self, d: Duration) {
        self.clock += d;
    }
    fn elapsed(&mut self) -> Duration {
        self.clock
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
    assert_eq!(f.halted, None, "{:#?}", f.log);
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
    assert_eq!(f.clock, Duration::from_millis(500));
    let log = f.log.join("\n");
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
    assert!(f.log.iter().all(|l| l.starts_with("kiln-init: ")), "{log}");
}

#[test]
fn missing_root_times_out_with_a_full_explanation() {
    let mut f = Fake::good("kiln.rootwait=2");
    // Only a disk of the other architecture, plus a blank one.
    let other = if native_root_type() == crate::gpt::ROOT_X86_64 {
        crate::gpt::ROOT_ARM64
    } else {
        crate::gpt::ROOT_X86_64
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
        f.log.last().map(String::as_str),
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
        .log
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
        .log
        .iter()
        .any(|l| l.contains("cannot execute /usr/lib/systemd/systemd: ENOEXEC")));

    let mut f = Fake::good("");
    f.in_root.clear();
    run_fake(&mut f, &[]);
    assert!(f
        .fatal_line()
        .contains("no init program in the root filesystem"));
    assert_eq!(
        f.log.last().map(String::as_str),
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
        .log
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

    let mut real = RealSys::new(sys.clone(), dev.clone());
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
