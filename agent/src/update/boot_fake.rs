//! A node for the boot side's tests: the shared fake machine plus a GPT boot disk with
//! an ESP and two root slots (through a device-mapper device, as dm-verity shows it),
//! systemd-boot's variables, mounts that show in the mount table, renames, and UKIs
//! with the section layout the builder writes.

use std::collections::BTreeMap;
use std::io;

use kiln_contract::boot::{Slot, ESP_MOUNT, UKI_DIR};
use kiln_contract::cmdline::format_root_hash;
use kiln_contract::gpt::{types, Guid};
use kiln_contract::le::{put_u16, put_u32};
use nix::errno::Errno;
use nix::mount::MsFlags;

use super::efivars;
use super::slot::running_arch;
use super::UpdateSys;
use crate::config::blockdev::BlockSys;
use crate::gpt::tests::build_image;
use crate::init::verity::{root_part_uuid, verity_part_uuid};
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::forward;

/// The node.
#[derive(Debug, Default)]
pub struct FakeBoot {
    /// Files, clock, console.
    pub base: FakeSys,
    /// Device nodes' bytes (`/dev/vda`).
    pub devs: BTreeMap<String, Vec<u8>>,
    /// The root filesystem's device number.
    pub root: (u64, u64),
    /// Every mount: `source target fstype flags data`.
    pub mounts: Vec<String>,
    /// mount(2) errors by target.
    pub mount_errors: BTreeMap<String, Errno>,
    /// Mounts another process makes at a target just before this one's first mount
    /// there (`fstype source`): that mount(2) then fails with EBUSY.
    pub mounted_by_another: BTreeMap<String, String>,
    /// Every rename: `from -> to`.
    pub renames: Vec<String>,
}

forward!(FakeBoot => base: Files, Clock, Console);
fake_base!(FakeBoot => base);

impl BlockSys for FakeBoot {
    fn read_dev(&mut self, dev: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let d = self
            .devs
            .get(dev)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        d.get(offset as usize..offset as usize + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn root_dev(&mut self) -> io::Result<(u64, u64)> {
        Ok(self.root)
    }
}

impl UpdateSys for FakeBoot {
    fn mount(
        &mut self,
        source: &str,
        target: &str,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> Result<(), Errno> {
        self.mounts.push(format!(
            "{source} {target} {} {flags:?} {}",
            fstype.unwrap_or("-"),
            data.unwrap_or("-")
        ));
        if let Some(e) = self.mount_errors.get(target) {
            return Err(*e);
        }
        if let Some(other) = self.mounted_by_another.remove(target) {
            let line = format!("91 1 0:98 / {target} rw,nosuid,nodev,noexec - {other} rw\n");
            self.files
                .entry("/proc/self/mountinfo".into())
                .or_default()
                .extend_from_slice(line.as_bytes());
            return Err(Errno::EBUSY);
        }
        if let Some(fs) = fstype {
            let line = format!("90 1 0:99 / {target} rw,nosuid,nodev,noexec - {fs} {source} rw\n");
            self.files
                .entry("/proc/self/mountinfo".into())
                .or_default()
                .extend_from_slice(line.as_bytes());
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.renames.push(format!("{from} -> {to}"));
        let bytes = self
            .files
            .remove(from)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{from}: gone")))?;
        self.files.insert(to.to_string(), bytes);
        Ok(())
    }
}

/// The root hash of the image in `slot` (distinct halves, so the GUIDs differ).
pub fn hash(slot: Slot) -> [u8; 32] {
    let (a, b) = match slot {
        Slot::A => (0xa1, 0xa2),
        Slot::B => (0xb1, 0xb2),
    };
    let mut h = [a; 32];
    h[16..].fill(b);
    h
}

/// A UKI's bytes as the builder lays them out: DOS and PE headers, a `.text` section
/// standing for the stub, then `.osrel`, `.cmdline` and `.linux`, each at a
/// FileAlignment (0x200) boundary with its exact length as VirtualSize.
pub fn uki_bytes(osrel: &str, cmdline: &str) -> Vec<u8> {
    let sections: [(&[u8; 8], Vec<u8>); 4] = [
        (b".text\0\0\0", vec![0xc3; 0x300]),
        (b".osrel\0\0", osrel.as_bytes().to_vec()),
        (b".cmdline", cmdline.as_bytes().to_vec()),
        (b".linux\0\0", vec![0x4d; 0x1000]),
    ];
    let mut b = vec![0u8; 0x400];
    b[..2].copy_from_slice(b"MZ");
    put_u32(&mut b, 0x3c, 0x80);
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    put_u16(&mut b, 0x84, 0x8664);
    put_u16(&mut b, 0x86, sections.len() as u16);
    let optional = 240;
    put_u16(&mut b, 0x94, optional);
    let table = 0x98 + usize::from(optional);
    for (i, (name, data)) in sections.iter().enumerate() {
        let at = b.len().next_multiple_of(0x200);
        let s = table + 40 * i;
        b[s..s + 8].copy_from_slice(&name[..]);
        put_u32(&mut b, s + 8, data.len() as u32);
        put_u32(&mut b, s + 12, 0x1000 * (i as u32 + 1));
        put_u32(&mut b, s + 16, data.len().next_multiple_of(0x200) as u32);
        put_u32(&mut b, s + 20, at as u32);
        b.resize(at, 0);
        b.extend_from_slice(data);
        b.resize(b.len().next_multiple_of(0x200), 0);
    }
    b
}

/// The `.osrel` of a version.
pub fn osrel(version: &str) -> String {
    format!("ID=debian\nVERSION_ID=\"13\"\nIMAGE_ID=qemu\nIMAGE_VERSION=\"{version}\"\n")
}

/// The `.cmdline` of the image in `slot`.
pub fn cmdline(slot: Slot) -> String {
    format!(
        "console=ttyS0 kiln.roothash={} kiln.var_min=268435456",
        format_root_hash(&hash(slot))
    )
}

impl FakeBoot {
    /// A node running `version` from `running`: the disk `vda` with the ESP (vda1), slot
    /// A (vda2, vda3) and slot B (vda4, vda5), the root on dm-0 over the running slot's
    /// partitions, efivarfs with `LoaderEntrySelected`, and agent.toml with `[update]`.
    pub fn node(running: Slot, version: &str) -> FakeBoot {
        let arch = running_arch();
        let root_type = crate::gpt::native_root_type();
        let verity_type = crate::init::verity::verity_type_for(&root_type);
        let guid = |s: &str| s.parse::<Guid>().unwrap();
        let mut parts = vec![(
            0,
            types::ESP,
            guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            "esp".to_string(),
        )];
        for (i, slot) in Slot::ALL.into_iter().enumerate() {
            let h = hash(slot);
            let i = 1 + 2 * i as u32;
            parts.push((i, root_type, root_part_uuid(&h), slot.root_label(arch)));
            parts.push((
                i + 1,
                verity_type,
                verity_part_uuid(&h),
                slot.verity_label(arch),
            ));
        }
        let table: Vec<(u32, Guid, Guid, &str)> = parts
            .iter()
            .map(|(i, t, g, n)| (*i, *t, *g, n.as_str()))
            .collect();
        let image = build_image(512, 256, &table);
        let mut f = FakeBoot {
            root: (254, 0),
            ..FakeBoot::default()
        };
        let sys = "/sys/class/block";
        let put = |f: &mut FakeBoot, path: String, text: &str| {
            f.files.insert(path, text.as_bytes().to_vec());
        };
        put(&mut f, format!("{sys}/vda/dev"), "253:0\n");
        put(
            &mut f,
            format!("{sys}/vda/size"),
            &format!("{}\n", image.len() / 512),
        );
        put(
            &mut f,
            format!("{sys}/vda/queue/logical_block_size"),
            "512\n",
        );
        for n in 1..=5 {
            put(&mut f, format!("{sys}/vda{n}/partition"), &format!("{n}\n"));
            put(
                &mut f,
                format!("{sys}/vda/vda{n}/partition"),
                &format!("{n}\n"),
            );
        }
        let (data, hash_part) = match running {
            Slot::A => ("vda2", "vda3"),
            Slot::B => ("vda4", "vda5"),
        };
        put(&mut f, format!("{sys}/dm-0/dev"), "254:0\n");
        put(&mut f, format!("{sys}/dm-0/slaves/{data}"), "");
        put(&mut f, format!("{sys}/dm-0/slaves/{hash_part}"), "");
        f.devs.insert("/dev/vda".into(), image);
        put(
            &mut f,
            "/proc/cmdline".into(),
            &format!("{}\n", cmdline(running)),
        );
        put(
            &mut f,
            "/proc/self/mountinfo".into(),
            "22 1 254:0 / / ro,relatime - ext4 /dev/mapper/root ro\n",
        );
        put(&mut f, "/proc/sys/kernel/random/boot_id".into(), "boot-1\n");
        f.dirs.insert("/sys/firmware/efi".into());
        f.set_var(
            efivars::ENTRY_SELECTED,
            &format!("kiln-{}.efi", running.letter()),
        );
        put(
            &mut f,
            kiln_contract::agent_config::PATH.into(),
            &format!("schema = 1\n[update]\nimage = \"qemu\"\nversion = \"{version}\"\n"),
        );
        f.add_uki(&format!("kiln-{}.efi", running.letter()), version, running);
        f.now = 1_765_000_000;
        f
    }

    /// Sets one of systemd-boot's variables.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.files
            .insert(efivars::var_path("/sys", name), efivars::encode(value));
    }

    /// Boots the UKI `file` on trial: `LoaderBootCountPath` names it.
    pub fn on_trial(&mut self, file: &str) {
        self.set_var(efivars::BOOT_COUNT_PATH, &format!("\\EFI\\Linux\\{file}"));
    }

    /// Puts a UKI of `version` booting `slot`'s root on the ESP as `file`.
    pub fn add_uki(&mut self, file: &str, version: &str, slot: Slot) {
        self.files.insert(
            format!("{ESP_MOUNT}/{UKI_DIR}/{file}"),
            uki_bytes(&osrel(version), &cmdline(slot)),
        );
    }

    /// The UKI files on the ESP.
    pub fn uki_files(&self) -> Vec<String> {
        let dir = format!("{ESP_MOUNT}/{UKI_DIR}/");
        self.files
            .keys()
            .filter_map(|p| p.strip_prefix(dir.as_str()))
            .map(str::to_string)
            .collect()
    }
}
