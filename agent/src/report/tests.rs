use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::forward;

fn efi_var(s: &str) -> Vec<u8> {
    // Attributes: NV|BS|RT as systemd-stub sets them.
    let mut v = 0x0000_0006u32.to_le_bytes().to_vec();
    for u in s.encode_utf16() {
        v.extend_from_slice(&u.to_le_bytes());
    }
    v.extend_from_slice(&[0, 0]);
    v
}

/// The report's fake: the shared one, plus statvfs sizes and write-probe answers.
#[derive(Default)]
struct Fake {
    base: FakeSys,
    /// statvfs sizes by mount point.
    fs_sizes: BTreeMap<String, u64>,
    /// What creating a file in a folder gives; absent: it works.
    write_errors: BTreeMap<String, nix::errno::Errno>,
}

forward!(Fake => base: Files, Console, Exec);
fake_base!(Fake => base);

impl ReportSys for Fake {
    fn uname(&mut self) -> (String, String) {
        ("x86_64".into(), "6.1.0-28-amd64".into())
    }
    fn fs_size(&mut self, path: &str) -> Option<u64> {
        self.fs_sizes.get(path).copied()
    }
    fn try_create(&mut self, dir: &str) -> Result<(), nix::errno::Errno> {
        self.write_errors.get(dir).map_or(Ok(()), |e| Err(*e))
    }
}

const ID: &str = "0123456789abcdef0123456789abcdef";

const MOUNTINFO: &str = "\
1 0 0:1 / / rw - rootfs rootfs rw
25 1 254:2 / / ro,relatime shared:1 - ext4 /dev/vda2 ro
31 25 0:27 / /var rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
";

fn exited(stdout: &str, success: bool) -> CommandResult {
    CommandResult::exited(if success { 0 } else { 1 }, stdout)
}

fn healthy_system() -> Fake {
    let mut f = Fake::default();
    f.files
        .insert("/proc/self/mountinfo".into(), MOUNTINFO.as_bytes().to_vec());
    f.files
        .insert(STUB_INFO.into(), efi_var("systemd-stub 252.33-1~deb12u1"));
    f.commands.insert(
        "systemctl is-system-running --wait".into(),
        exited("running\n", true),
    );
    f.commands.insert(
        "systemctl list-units --failed --plain --no-legend".into(),
        exited("", true),
    );
    for dir in ["/usr", "/etc"] {
        f.write_errors.insert(dir.into(), nix::errno::Errno::EROFS);
    }
    f.files
        .insert("/etc/machine-id".into(), format!("{ID}\n").into_bytes());
    f.files.insert(HOSTNAME_FILE.into(), b"node-1\n".to_vec());
    f
}

#[test]
fn decodes_stub_info() {
    assert_eq!(
        decode_efi_string(&efi_var("systemd-stub 252.x")).as_deref(),
        Some("systemd-stub 252.x")
    );
    // No terminator, an odd trailing byte: still decoded up to what is there.
    let mut v = efi_var("abc");
    v.truncate(v.len() - 2);
    v.push(0x41);
    assert_eq!(decode_efi_string(&v).as_deref(), Some("abc"));
    assert_eq!(decode_efi_string(&[6, 0, 0]), None);
    assert_eq!(decode_efi_string(&[6, 0, 0, 0, 0, 0]), None);
}

#[test]
fn parses_failed_units() {
    let out = "foo.service loaded failed failed Foo daemon\n\
               ● bar.mount   loaded failed failed /bar\n\n";
    assert_eq!(parse_failed_units(out), ["foo.service", "bar.mount"]);
    assert!(parse_failed_units("").is_empty());
}

#[test]
fn healthy_line_and_exit() {
    let mut f = healthy_system();
    let r = collect(&mut f, Duration::from_secs(120));
    assert_eq!(
        r.line(),
        format!(
            "kiln-report: arch=x86_64 kernel=6.1.0-28-amd64 hostname=node-1 root=/dev/vda2 root_mode=ro \
             usr_write=EROFS var=tmpfs machine_id={ID} boots=none \
             stub=\"systemd-stub 252.33-1~deb12u1\" state=running failed=0 verity=off"
        )
    );
    assert!(r.healthy());
    assert_eq!(f.timeouts[0], Some(Duration::from_secs(120)));
    assert!(f.notes.is_empty(), "{:?}", f.notes);
}

#[test]
fn degraded_rw_and_missing_pieces() {
    let mut f = healthy_system();
    f.files.remove(STUB_INFO);
    f.files.insert(
        "/proc/self/mountinfo".into(),
        b"25 1 254:2 / / rw - ext4 /dev/vda2 rw\n40 25 254:4 / /var rw - ext4 /dev/vda4 rw\n"
            .to_vec(),
    );
    f.fs_sizes.insert("/var".into(), 2_469_606_195);
    f.files
        .insert("/var/lib/kiln/boots".into(), b"2\n".to_vec());
    f.commands.insert(
        "systemctl is-system-running --wait".into(),
        exited("degraded\n", false),
    );
    f.commands.insert(
        "systemctl list-units --failed --plain --no-legend".into(),
        exited(
            "foo.service loaded failed failed Foo\nbar.service loaded failed failed Bar\n",
            true,
        ),
    );
    let r = collect(&mut f, Duration::from_secs(5));
    assert_eq!(
        r.line(),
        format!(
            "kiln-report: arch=x86_64 kernel=6.1.0-28-amd64 hostname=node-1 root=/dev/vda2 root_mode=rw \
             usr_write=EROFS var=/dev/vda4 var_size=2.3G machine_id={ID} boots=2 stub=none \
             state=degraded failed=2(foo.service,bar.service) verity=off"
        )
    );
    assert!(!r.healthy());
}

#[test]
fn running_but_writable_root_is_unhealthy() {
    let mut f = healthy_system();
    f.files.insert(
        "/proc/self/mountinfo".into(),
        b"25 1 254:2 / / rw - ext4 /dev/vda2 rw\n".to_vec(),
    );
    let r = collect(&mut f, Duration::from_secs(5));
    assert_eq!(r.state, "running");
    assert!(!r.healthy());
    assert!(r.line().contains(" var=none "), "{}", r.line());
}

#[test]
fn timeout_and_no_systemctl() {
    let mut f = healthy_system();
    f.commands.insert(
        "systemctl is-system-running --wait".into(),
        CommandResult::TimedOut,
    );
    f.commands
        .remove("systemctl list-units --failed --plain --no-legend");
    // Without mountinfo the fallback /proc/mounts is used.
    f.files.remove("/proc/self/mountinfo");
    f.files.insert(
        "/proc/mounts".into(),
        b"/dev/vda2 / ext4 ro,relatime 0 0\n".to_vec(),
    );
    let r = collect(&mut f, Duration::from_secs(7));
    let line = r.line();
    assert!(line.contains(" root=/dev/vda2 root_mode=ro "), "{line}");
    assert!(
        line.ends_with(" state=timeout failed=unknown verity=off"),
        "{line}"
    );
    assert!(!r.healthy());
    assert!(
        f.notes.iter().any(|n| n.contains("within 7 s")),
        "{:?}",
        f.notes
    );

    let mut f = Fake::default();
    let r = collect(&mut f, Duration::from_secs(7));
    assert_eq!(
        r.line(),
        "kiln-report: arch=x86_64 kernel=6.1.0-28-amd64 hostname=unknown root=unknown root_mode=unknown \
         usr_write=writable var=none machine_id=none boots=none stub=none state=unknown \
         failed=unknown verity=unknown"
    );
}

#[test]
fn odd_values_are_quoted() {
    let mut f = healthy_system();
    f.files
        .insert(STUB_INFO.into(), efi_var("stub \"v2\" \\ x"));
    let r = collect(&mut f, Duration::from_secs(1));
    assert!(
        r.line().contains(r#" stub="stub \"v2\" \\ x" "#),
        "{}",
        r.line()
    );
}

#[test]
fn verity_root_is_reported_from_sysfs() {
    let mut f = healthy_system();
    f.files.insert(
        "/proc/self/mountinfo".into(),
        b"25 1 253:0 / / ro,relatime shared:1 - ext4 /dev/dm-0 ro\n".to_vec(),
    );
    f.files.insert(
        "/sys/block/dm-0/dm/uuid".into(),
        b"KILN-VERITY-0123456789ABcdef0123456789abcdef\n".to_vec(),
    );
    let r = collect(&mut f, Duration::from_secs(5));
    assert_eq!(
        r.verity,
        Verity::On {
            dev: "dm-0".into(),
            hash_prefix: "0123456789ab".into()
        }
    );
    assert!(
        r.line().contains(" root=/dev/dm-0 root_mode=ro ")
            && r.line().ends_with(" failed=0 verity=on:dm-0:0123456789ab"),
        "{}",
        r.line()
    );
    assert!(r.healthy());

    // Someone else's device-mapper device is not kiln's verity.
    f.files.insert(
        "/sys/block/dm-0/dm/uuid".into(),
        b"CRYPT-LUKS2-abc\n".to_vec(),
    );
    let r = collect(&mut f, Duration::from_secs(5));
    assert_eq!(r.verity, Verity::Off);
    assert!(
        f.notes.iter().any(|n| n.contains("not kiln's verity")),
        "{:?}",
        f.notes
    );

    // No sysfs entry: unknown, with a note naming the path.
    f.files.remove("/sys/block/dm-0/dm/uuid");
    let r = collect(&mut f, Duration::from_secs(5));
    assert_eq!(r.verity, Verity::Unknown);
    assert!(r.line().ends_with(" verity=unknown"), "{}", r.line());
    assert!(
        f.notes
            .iter()
            .any(|n| n.contains("/sys/block/dm-0/dm/uuid")),
        "{:?}",
        f.notes
    );
}

#[test]
fn a_writable_usr_or_etc_is_unhealthy_and_named() {
    let mut f = healthy_system();
    f.write_errors.remove("/etc");
    let r = collect(&mut f, Duration::from_secs(5));
    assert_eq!(r.usr_write, "/usr:EROFS,/etc:writable");
    assert!(
        r.line()
            .contains(" usr_write=/usr:EROFS,/etc:writable var="),
        "{}",
        r.line()
    );
    assert!(!r.healthy());
    assert!(
        f.notes.iter().any(|n| n.contains("/etc is writable")),
        "{:?}",
        f.notes
    );

    // Refused, but not because the filesystem is read-only: not the healthy outcome.
    let mut f = healthy_system();
    for dir in ["/usr", "/etc"] {
        f.write_errors.insert(dir.into(), nix::errno::Errno::EACCES);
    }
    let r = collect(&mut f, Duration::from_secs(5));
    assert_eq!(r.usr_write, "EACCES");
    assert!(!r.healthy());
}

#[test]
fn persistent_var_size_machine_id_and_boots() {
    let mut f = healthy_system();
    f.files.insert(
        "/proc/self/mountinfo".into(),
        b"25 1 254:2 / / ro - ext4 /dev/vda2 ro\n\
          40 25 254:4 / /var rw,nosuid,nodev - ext4 /dev/vda4 rw\n"
            .to_vec(),
    );
    f.fs_sizes.insert("/var".into(), 300 << 20);
    f.files
        .insert("/var/lib/kiln/boots".into(), b"17\n".to_vec());
    let r = collect(&mut f, Duration::from_secs(5));
    assert!(
        r.line().contains(&format!(
            " var=/dev/vda4 var_size=300M machine_id={ID} boots=17 stub="
        )),
        "{}",
        r.line()
    );
    assert!(r.healthy());
    // Without statvfs the size is unknown; an empty machine-id is none.
    f.fs_sizes.clear();
    f.files.insert("/etc/machine-id".into(), Vec::new());
    let line = collect(&mut f, Duration::from_secs(5)).line();
    assert!(
        line.contains(" var=/dev/vda4 var_size=unknown machine_id=none boots=17 "),
        "{line}"
    );
    assert_eq!(short_size(2_469_606_195), "2.3G");
    assert_eq!(short_size(512 << 20), "512M");
}
