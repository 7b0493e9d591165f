#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::fslabel::{self, FsKind};
use super::schema::{parse_bytes, parse_text, Hostname};
use super::settings::{parse_settings, Channel};
use super::*;
use crate::sys::fake::{fake_base, FakeSys};
use crate::sys::{forward, Cmd, CommandResult};

// ---------------------------------------------------------------------------------------
// Fixtures made by the real tools.

fn tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{program} is needed for this test and could not be run ({e}); install it \
             with scripts/deps.sh (packages dosfstools, mtools, gdisk, xorriso)"
            )
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A FAT image of `kib` KiB made by mkfs.fat, with `files` copied in by mcopy.
fn fat_image(
    dir: &Path,
    name: &str,
    mkfs_args: &[&str],
    kib: u32,
    files: &[(&str, &[u8])],
) -> PathBuf {
    let img = dir.join(name);
    let _ = fs::remove_file(&img);
    let kib = kib.to_string();
    let mut args = vec!["-C", p(&img)];
    args.extend_from_slice(mkfs_args);
    args.push(&kib);
    tool("mkfs.fat", &args);
    for (fname, bytes) in files {
        let src = dir.join(format!("src-{fname}"));
        fs::write(&src, bytes).unwrap();
        tool("mcopy", &["-i", p(&img), p(&src), &format!("::{fname}")]);
    }
    img
}

/// An ISO 9660 image with Rock Ridge made by xorriso.
fn iso_image(dir: &Path, name: &str, label: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let tree = dir.join(format!("{name}.d"));
    fs::create_dir_all(&tree).unwrap();
    for (fname, bytes) in files {
        fs::write(tree.join(fname), bytes).unwrap();
    }
    let img = dir.join(name);
    tool(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-r",
            "-J",
            "-V",
            label,
            "-o",
            p(&img),
            p(&tree),
        ],
    );
    img
}

/// A GPT disk image made by sgdisk: partition 1 an ESP (1 MiB in), 2 a root, 3 a var.
fn gpt_image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.img");
    fs::File::create(&img).unwrap().set_len(16 << 20).unwrap();
    tool(
        "sgdisk",
        &[
            "-n",
            "1:2048:+4M",
            "-t",
            "1:EF00",
            "-n",
            "2:0:+4M",
            "-t",
            "2:4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
            "-n",
            "3:0:+2M",
            "-t",
            "3:4d21b016-b534-45c2-a9fb-5c16e0916d2d",
            p(&img),
        ],
    );
    img
}

// ---------------------------------------------------------------------------------------
// The fake system.

/// A device's bytes: a window of an image file.
#[derive(Clone)]
struct DevImage {
    file: PathBuf,
    offset: u64,
}

/// Config's fake: the shared one (files, console, clock) with folder listings, block
/// devices backed by image files, mounts that extract a volume's files, `modprobe`, the
/// cloud and the hostname.
#[derive(Default)]
struct Fake {
    base: FakeSys,
    /// Folder listings (sysfs).
    listings: BTreeMap<String, Vec<String>>,
    /// Successive answers for listing /sys/class/block (the last one repeats).
    block_lists: VecDeque<Vec<String>>,
    devs: BTreeMap<String, DevImage>,
    root: (u64, u64),
    /// Mount target → the folder its files were extracted to.
    mounted: BTreeMap<String, PathBuf>,
    mounts: Vec<String>,
    umounts: Vec<String>,
    mount_error: Option<String>,
    modprobed: Vec<String>,
    /// Files that appear once `modprobe` ran.
    after_modprobe: Vec<(String, Vec<u8>)>,
    cloud: Option<Result<Option<cloud::CloudUserData>, ChannelFailure>>,
    cloud_calls: u32,
    hostname: Option<String>,
    hostname_error: bool,
    written: BTreeMap<String, Vec<u8>>,
    scratch: Option<tempfile::TempDir>,
}

forward!(Fake => base: Clock, Console);
fake_base!(Fake => base);

impl Fake {
    fn new() -> Self {
        let mut f = Fake::default();
        f.files.insert(
            "/proc/cmdline".into(),
            b"console=ttyS0 kiln.roothash=00ff kiln.debug quiet\n".to_vec(),
        );
        f.files.insert(
            MACHINE_ID.into(),
            b"0123456789abcdef0123456789abcdef\n".to_vec(),
        );
        f.listings.insert(blockdev::SYS_BLOCK.into(), Vec::new());
        f.scratch = Some(tempfile::tempdir().unwrap());
        f
    }

    fn scratch(&self) -> &Path {
        self.scratch.as_ref().unwrap().path()
    }

    /// Adds a block device to sysfs: `part` = (disk, number) for partitions.
    fn block(&mut self, name: &str, number: &str, sectors: u64, part: Option<(&str, u32)>) {
        let base = format!("{}/{name}", blockdev::SYS_BLOCK);
        self.files
            .insert(format!("{base}/dev"), format!("{number}\n").into());
        self.files
            .insert(format!("{base}/size"), format!("{sectors}\n").into());
        if let Some((disk, n)) = part {
            self.files
                .insert(format!("{base}/partition"), format!("{n}\n").into());
            self.files.insert(
                format!("{}/{disk}/{name}/partition", blockdev::SYS_BLOCK),
                format!("{n}\n").into(),
            );
        }
        self.listings
            .get_mut(blockdev::SYS_BLOCK)
            .unwrap()
            .push(name.to_string());
    }

    fn dev(&mut self, name: &str, file: &Path, offset: u64) {
        self.devs.insert(
            format!("/dev/{name}"),
            DevImage {
                file: file.to_path_buf(),
                offset,
            },
        );
    }

    /// A boot disk vda (from `gpt`) with its root behind dm-0, as init leaves it.
    fn boot_disk(&mut self, gpt: &Path) {
        self.block("vda", "254:0", 32768, None);
        self.block("vda1", "254:1", 8192, Some(("vda", 1)));
        self.block("vda2", "254:2", 8192, Some(("vda", 2)));
        self.block("vda3", "254:3", 4096, Some(("vda", 3)));
        self.block("dm-0", "253:0", 8000, None);
        self.listings.insert(
            "/sys/class/block/dm-0/slaves".into(),
            vec!["vda3".into(), "vda2".into()],
        );
        self.root = (253, 0);
        self.dev("vda", gpt, 0);
        self.dev("vda1", gpt, 2048 * 512);
    }

    fn under_mount(&self, path: &str) -> Option<PathBuf> {
        self.mounted.iter().find_map(|(target, dir)| {
            if path == target {
                Some(dir.clone())
            } else {
                path.strip_prefix(&format!("{target}/"))
                    .map(|rest| dir.join(rest))
            }
        })
    }

    fn lines_with(&self, needle: &str) -> Vec<&String> {
        self.lines.iter().filter(|l| l.contains(needle)).collect()
    }
}

impl Files for Fake {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        if let Some(real) = self.under_mount(path) {
            return fs::read(real);
        }
        self.base.read_file(path)
    }

    fn exists(&mut self, path: &str) -> bool {
        let prefix = format!("{path}/");
        self.files.contains_key(path)
            || self.listings.contains_key(path)
            || self.files.keys().any(|k| k.starts_with(&prefix))
    }

    fn is_dir(&mut self, path: &str) -> bool {
        self.listings.contains_key(path)
    }

    fn list_dir(&mut self, path: &str) -> io::Result<Vec<String>> {
        if let Some(real) = self.under_mount(path) {
            return Ok(fs::read_dir(real)?
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect());
        }
        if path == blockdev::SYS_BLOCK && !self.block_lists.is_empty() {
            let next = if self.block_lists.len() > 1 {
                self.block_lists.pop_front().unwrap()
            } else {
                self.block_lists[0].clone()
            };
            return Ok(next);
        }
        self.listings
            .get(path)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn modified(&mut self, path: &str) -> Option<u64> {
        self.base.modified(path)
    }

    fn mkdir(&mut self, path: &str) -> io::Result<()> {
        self.base.mkdir(path)
    }

    fn mkdir_private(&mut self, path: &str) -> io::Result<()> {
        self.base.mkdir_private(path)
    }

    fn write_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        assert_eq!(mode, 0o600, "the merged config is root-only");
        self.written.insert(path.to_string(), data.to_vec());
        Ok(())
    }

    fn write_private(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        self.write_atomic(path, data, 0o600)
    }

    fn remove_file(&mut self, path: &str) -> io::Result<()> {
        self.base.remove_file(path)
    }
}

/// `modprobe` is the one program config runs.
impl Exec for Fake {
    fn run(&mut self, cmd: &Cmd<'_>) -> CommandResult {
        assert_eq!((cmd.program, cmd.args.first()), ("modprobe", Some(&"-q")));
        self.modprobed.push(cmd.args[1].to_string());
        for (path, bytes) in std::mem::take(&mut self.after_modprobe) {
            self.files.insert(path, bytes);
        }
        CommandResult::exited(0, "")
    }
}

impl BlockSys for Fake {
    fn read_dev(&mut self, dev: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let d = self
            .devs
            .get(dev)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        let mut buf = vec![0u8; len];
        fs::File::open(&d.file)?.read_exact_at(&mut buf, d.offset + offset)?;
        Ok(buf)
    }

    fn root_dev(&mut self) -> io::Result<(u64, u64)> {
        Ok(self.root)
    }
}

impl ConfigSys for Fake {
    /// "Mounts" by extracting the volume's files with the real tools, so the channel code
    /// reads what a kernel mount would show.
    fn mount_ro(&mut self, dev: &str, target: &str, fstype: &str) -> Result<(), String> {
        self.mounts.push(format!("{dev} {target} {fstype}"));
        if let Some(e) = &self.mount_error {
            return Err(e.clone());
        }
        let d = self.devs.get(dev).cloned().ok_or("no such device")?;
        let out = self.scratch().join(format!("mnt{}", self.mounts.len()));
        fs::create_dir_all(&out).unwrap();
        match fstype {
            "vfat" => {
                let img = format!("{}@@{}", p(&d.file), d.offset);
                let names = tool("mdir", &["-i", &img, "-b", "-a", "::/"]);
                for name in String::from_utf8(names).unwrap().lines() {
                    let name = name.trim_start_matches("::/").trim_end_matches('/');
                    if name.is_empty() {
                        continue;
                    }
                    let bytes = tool("mcopy", &["-n", "-i", &img, &format!("::/{name}"), "-"]);
                    fs::write(out.join(name), bytes).unwrap();
                }
            }
            "iso9660" => {
                tool(
                    "xorriso",
                    &[
                        "-osirrox",
                        "on",
                        "-indev",
                        p(&d.file),
                        "-extract",
                        "/",
                        p(&out),
                    ],
                );
            }
            other => return Err(format!("unknown filesystem type {other}")),
        }
        self.mounted.insert(target.to_string(), out);
        Ok(())
    }

    fn umount(&mut self, target: &str) -> Result<(), String> {
        self.umounts.push(target.to_string());
        self.mounted
            .remove(target)
            .map(|_| ())
            .ok_or_else(|| "not mounted".to_string())
    }

    fn cloud(&mut self) -> Result<Option<cloud::CloudUserData>, ChannelFailure> {
        self.cloud_calls += 1;
        self.cloud.clone().unwrap_or(Ok(None))
    }

    fn set_hostname(&mut self, name: &str) -> io::Result<()> {
        if self.hostname_error {
            return Err(io::Error::from(io::ErrorKind::PermissionDenied));
        }
        self.hostname = Some(name.to_string());
        Ok(())
    }
}

fn errors_of(text: &str) -> Vec<String> {
    parse_text(text)
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Schema.

#[test]
fn schema_accepts_the_documented_form() {
    let c = parse_text("schema = 1\nhostname = \"Node-1\"\n").unwrap();
    assert_eq!(c.schema, Some(1));
    assert_eq!(c.hostname.unwrap().as_str(), "node-1");
    assert_eq!(parse_text("").unwrap(), NodeConfig::default());
    let c = parse_bytes(b"#kiln-config\r\nhostname = \"a.b\"\n").unwrap();
    assert_eq!(c.hostname.unwrap().as_str(), "a.b");
    let c = parse_bytes("\u{feff}hostname = \"x\"".as_bytes()).unwrap();
    assert_eq!(c.hostname.unwrap().as_str(), "x");
}

#[test]
fn schema_errors_name_key_and_value() {
    assert_eq!(
        errors_of("hostnme = \"x\""),
        ["unknown key \"hostnme\" (known: schema, hostname, ssh_authorized_keys, enroll, update)"]
    );
    assert_eq!(
        errors_of("hostname = 5"),
        ["hostname: expected a string, got integer 5"]
    );
    assert_eq!(
        errors_of("schema = \"1\""),
        ["schema: expected an integer, got string \"1\""]
    );
    let e = errors_of("schema = 2");
    assert!(
        e[0].starts_with("schema: 2: this agent understands schema 1 only"),
        "{e:?}"
    );
    let e = errors_of("[hostname]\nx = 1");
    assert!(
        e[0].starts_with("hostname: expected a string, got table"),
        "{e:?}"
    );
    // Every problem of a document at once, in key order.
    assert_eq!(
        errors_of("zone = 1\nhostname = true\n"),
        [
            "hostname: expected a string, got boolean true",
            "unknown key \"zone\" (known: schema, hostname, ssh_authorized_keys, enroll, update)"
        ]
    );
    let e = errors_of("hostname = \"a\"\nhostname = \"b\"\n");
    assert!(
        e[0].starts_with("not valid TOML at line 2, column 1: "),
        "{e:?}"
    );
    let e = errors_of("hostname = \"bad_name\"");
    assert_eq!(
        e,
        ["hostname: \"bad_name\": '_' is not allowed (only letters a-z, digits 0-9 and '-')"]
    );
}

#[test]
fn schema_refuses_bytes_that_are_not_text() {
    let e = parse_bytes(b"hostname = \"a\xffb\"").unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "not UTF-8 text (byte 0xff at offset 13); the config must be a UTF-8 TOML document"
    );
    let big = vec![b'#'; schema::MAX_CONFIG_BYTES + 1];
    assert!(parse_bytes(&big).unwrap_err()[0]
        .to_string()
        .contains("more than"));
}

#[test]
fn hostnames_follow_rfc_1123() {
    for good in ["a", "node-1", "1", "a.b.c", "x9-y", &"a".repeat(63)] {
        assert!(Hostname::parse(good).is_ok(), "{good}");
    }
    let label = "a".repeat(63);
    let long = [label.as_str(); 4].join(".");
    assert_eq!(long.len(), 255);
    for (bad, why) in [
        ("", "empty"),
        ("-a", "starts or ends with '-'"),
        ("a-", "starts or ends with '-'"),
        ("a..b", "empty label"),
        ("a.", "empty label"),
        ("a b", "' ' is not allowed"),
        ("né", "'é' is not allowed"),
        (&"a".repeat(64), "more than the 63"),
        (&long, "longer than the 253"),
    ] {
        let e = Hostname::parse(bad).unwrap_err();
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Settings, command line, merge.

#[test]
fn settings_pick_and_order_channels() {
    assert_eq!(
        parse_settings("schema = 1\nchannels = [\"fw_cfg\", \"cmdline\"]")
            .unwrap()
            .channels,
        [Channel::FwCfg, Channel::Cmdline]
    );
    assert_eq!(parse_settings("").unwrap(), Settings::default());
    let e = parse_settings("channels = [\"usb\"]").unwrap_err();
    assert!(
        e.contains("unknown channel \"usb\" (known: cmdline, esp, cidata, fw_cfg, cloud)"),
        "{e}"
    );
    assert!(parse_settings("channels = [\"esp\", \"esp\"]")
        .unwrap_err()
        .contains("twice"));
    assert!(parse_settings("chanels = []").is_err());
}

#[test]
fn settings_read_the_text_the_builder_writes() {
    use super::settings::{ClusterKind, ClusterSettings, Containerd, ImageRole, KubeadmApi};
    // kiln's agent.toml for profiles/k3s.toml, serialized from the contract's types.
    let k3s = "# Written by kiln from the profile's [agent] and [cluster] sections.\n\
               schema = 1\n\
               channels = [\"cmdline\", \"esp\", \"cidata\", \"fw_cfg\"]\n\
               \n\
               [cluster]\n\
               kind = \"k3s\"\n\
               role = \"any\"\n\
               kubelet_args = []\n\
               containerd = \"k3s\"\n\
               kubernetes = \"1.36.4\"\n\
               \n\
               [cluster.labels]\n";
    assert_eq!(
        parse_settings(k3s).unwrap(),
        Settings {
            channels: vec![
                Channel::Cmdline,
                Channel::Esp,
                Channel::Cidata,
                Channel::FwCfg
            ],
            cluster: Some(ClusterSettings {
                kind: ClusterKind::K3s,
                role: ImageRole::Any,
                labels: BTreeMap::new(),
                kubelet_args: Vec::new(),
                containerd: Containerd::K3s,
                kubeadm_api: KubeadmApi::V1beta4,
                kubernetes: Some("1.36.4".parse().unwrap()),
            }),
        }
    );
    let kubeadm = "schema = 1\n\
                   channels = [\"esp\"]\n\
                   \n\
                   [cluster]\n\
                   kind = \"kubeadm\"\n\
                   role = \"worker\"\n\
                   kubelet_args = [\"max-pods=110\"]\n\
                   kubeadm_api = \"v1beta3\"\n\
                   \n\
                   [cluster.labels]\n\
                   \"kiln.dev/pool\" = \"edge\"\n";
    let c = parse_settings(kubeadm).unwrap().cluster.unwrap();
    assert_eq!(
        (c.kind, c.role, c.containerd, c.kubeadm_api),
        (
            ClusterKind::Kubeadm,
            ImageRole::Worker,
            Containerd::Image,
            KubeadmApi::V1beta3
        )
    );
    assert_eq!(c.labels["kiln.dev/pool"], "edge");
    assert_eq!(c.kubelet_args, [("max-pods".into(), "110".into())]);
    // Written before kiln knew the cluster's version: none, and preflight checks none.
    assert_eq!(c.kubernetes, None);
    // The old writer's inline spelling reads the same.
    let old = "schema = 1\n\
               channels = [\"esp\"]\n\
               [cluster]\n\
               kind = \"kubeadm\"\n\
               role = \"worker\"\n\
               labels = { \"kiln.dev/pool\" = \"edge\" }\n\
               kubelet_args = [\"max-pods=110\"]\n\
               kubeadm_api = \"v1beta3\"\n";
    assert_eq!(
        parse_settings(old).unwrap(),
        parse_settings(kubeadm).unwrap()
    );
}

#[test]
fn cmdline_gives_kiln_keys_only() {
    let t = cmdline::table("console=ttyS0 kiln.roothash=ab kiln.debug kiln.hostname=\"n-1\" kiln.schema=1 -- kiln.hostname=x")
        .unwrap()
        .unwrap();
    assert_eq!(t.get("hostname").unwrap().as_str(), Some("n-1"));
    assert_eq!(t.get("schema").unwrap().as_integer(), Some(1));
    assert!(
        cmdline::table("console=ttyS0 kiln.rootwait=5 kiln.var_min=1G")
            .unwrap()
            .is_none()
    );
    // The last of a repeated key wins, as for the kernel's own parameters.
    let t = cmdline::table("kiln.hostname=a kiln.hostname=b")
        .unwrap()
        .unwrap();
    assert_eq!(t.get("hostname").unwrap().as_str(), Some("b"));
    // An all-digit hostname stays a string.
    let c = schema::from_table(cmdline::table("kiln.hostname=42").unwrap().unwrap()).unwrap();
    assert_eq!(c.hostname.unwrap().as_str(), "42");
    let e = cmdline::table("kiln.hostname").unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "hostname: (none): needs a value: write kiln.hostname=VALUE"
    );
    let e = schema::from_table(cmdline::table("kiln.hostnme=a").unwrap().unwrap()).unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "unknown key \"hostnme\" (known: schema, hostname, ssh_authorized_keys, enroll, update)"
    );
    let e = cmdline::table("kiln.a=1 kiln.a.b=2").unwrap_err();
    assert!(e[0].to_string().contains("cannot be set"), "{e:?}");
}

fn found(channel: &'static str, text: &str) -> Finding {
    Finding::parse(channel, format!("{channel}-place"), text.as_bytes())
}

#[test]
fn merge_is_per_key_by_precedence() {
    let findings = vec![
        found("cmdline", "schema = 1"),
        found("esp", "hostname = 5"),
        found("cidata", "hostname = \"from-cidata\""),
        found("fw_cfg", "hostname = \"from-fw-cfg\"\nschema = 1"),
    ];
    let m = merge(&findings);
    assert_eq!(m.config.hostname.unwrap().as_str(), "from-cidata");
    assert_eq!(m.sources["hostname"].channel, "cidata");
    assert_eq!(m.sources["schema"].channel, "cmdline");
    assert_eq!(merge(&[]).config, NodeConfig::default());
}

#[test]
fn machine_id_hostname_matches_sha256sum() {
    // The rule lives in kiln_contract::names (tested there against a fixed digest); this
    // keeps sha256sum as the referee for the name the agent sets.
    let id = "0123456789abcdef0123456789abcdef";
    let out = tool(
        "sh",
        &["-c", &format!("printf 'kiln-hostname:{id}' | sha256sum")],
    );
    let hex = String::from_utf8(out).unwrap();
    assert_eq!(
        names::hostname_from_machine_id(id),
        format!("kiln-{}", &hex[..8])
    );
}

// ---------------------------------------------------------------------------------------
// Labels on real filesystems.

#[test]
fn reads_labels_of_real_fat_and_iso_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let read = |img: &Path| {
        let bytes = fs::read(img).unwrap();
        fslabel::probe(&mut |off, len| {
            bytes
                .get(off as usize..off as usize + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        })
    };
    for (name, args, kib) in [
        ("fat12.img", &["-n", "CIDATA"][..], 1024),
        ("fat16.img", &["-F", "16", "-n", "cidata"][..], 20 * 1024),
        (
            "fat32.img",
            &["-F", "32", "-s", "1", "-n", "CIDATA"][..],
            40 * 1024,
        ),
    ] {
        let img = fat_image(dir.path(), name, args, kib, &[("kiln.toml", b"x")]);
        let v = read(&img).unwrap();
        assert_eq!(v.kind, FsKind::Vfat, "{name}");
        assert!(v.is_cidata(), "{name}: {v:?}");
        assert!(
            v.labels.iter().all(|l| l.eq_ignore_ascii_case("cidata")),
            "{v:?}"
        );
    }
    // Only the root folder's label entry says cidata (as after relabelling in Windows).
    let img = fat_image(dir.path(), "root-label.img", &["-n", "CIDATA"], 1024, &[]);
    let mut bytes = fs::read(&img).unwrap();
    bytes[0x2B..0x2B + 11].copy_from_slice(b"NO NAME    ");
    fs::write(&img, &bytes).unwrap();
    assert_eq!(read(&img).unwrap().labels, ["CIDATA"]);
    let img = fat_image(dir.path(), "other.img", &["-n", "DATA"], 1024, &[]);
    assert!(!read(&img).unwrap().is_cidata());
    let img = fat_image(dir.path(), "nolabel.img", &[], 1024, &[]);
    assert!(read(&img).unwrap().labels.is_empty());

    let iso = iso_image(dir.path(), "ci.iso", "cidata", &[("kiln.toml", b"x")]);
    let v = read(&iso).unwrap();
    assert_eq!(
        (v.kind, v.labels.clone()),
        (FsKind::Iso9660, vec!["cidata".to_string()])
    );
    let iso = iso_image(dir.path(), "other.iso", "CONFIG", &[]);
    assert!(!read(&iso).unwrap().is_cidata());
    // A GPT disk is neither.
    assert_eq!(read(&gpt_image(dir.path())), None);
    assert_eq!(fslabel::probe(&mut |_, len| Ok(vec![0; len])), None);
}

// ---------------------------------------------------------------------------------------
// Channels against the fake system with real images.

#[test]
fn boot_disk_is_found_through_device_mapper_and_directly() {
    let mut f = Fake::new();
    let gpt = gpt_image(f.scratch());
    f.boot_disk(&gpt);
    f.block("vdb", "254:16", 2048, None);
    let b = blockdev::boot_disk(&mut f).unwrap();
    assert_eq!(b.disk, "vda");
    assert_eq!(b.partitions, ["vda1", "vda2", "vda3"]);
    f.root = (254, 2);
    assert_eq!(blockdev::boot_disk(&mut f).unwrap(), b);
    f.root = (9, 9);
    let e = blockdev::boot_disk(&mut f).unwrap_err();
    assert!(e.contains("root filesystem's number 9:9"), "{e}");
}

fn esp_world(files: &[(&str, &[u8])]) -> Fake {
    let mut f = Fake::new();
    let gpt = gpt_image(f.scratch());
    // Put a real FAT filesystem into partition 1.
    let fat = fat_image(f.scratch(), "esp.fat", &["-n", "ESP"], 4096, files);
    let bytes = fs::read(&fat).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&gpt)
        .unwrap()
        .write_all_at(&bytes, 2048 * 512)
        .unwrap();
    f.boot_disk(&gpt);
    f
}

#[test]
fn esp_file_is_read_in_any_case_and_unmounted() {
    let mut f = esp_world(&[("KILN.TOML", b"hostname = \"from-esp\"\n")]);
    let boot = blockdev::boot_disk(&mut f).unwrap();
    assert_eq!(esp::find_esp(&mut f, &boot).unwrap(), "vda1");
    let finding = esp::gather(&mut f, Ok(&boot)).unwrap();
    assert_eq!(
        finding.lines(),
        ["kiln-config: esp: /dev/vda1:/KILN.TOML: hostname=from-esp"]
    );
    assert_eq!(f.mounts, ["/dev/vda1 /run/kiln/esp vfat"]);
    assert_eq!(f.umounts, ["/run/kiln/esp"]);
    assert!(f.mounted.is_empty());

    // No file: nothing, and no error.
    let mut f = esp_world(&[("other.txt", b"x")]);
    let boot = blockdev::boot_disk(&mut f).unwrap();
    assert_eq!(esp::gather(&mut f, Ok(&boot)), None);
}

#[test]
fn esp_problems_are_errors_that_say_where() {
    let mut f = esp_world(&[("kiln.toml", b"hostnme = \"x\"\n")]);
    let boot = blockdev::boot_disk(&mut f).unwrap();
    assert_eq!(
        esp::gather(&mut f, Ok(&boot)).unwrap().lines(),
        ["kiln-config: ERROR: esp: /dev/vda1:/kiln.toml: unknown key \"hostnme\" (known: schema, hostname, ssh_authorized_keys, enroll, update)"]
    );
    // A mount the kernel refuses, with the ESP mounted nowhere else.
    f.mount_error = Some("mount /dev/vda1 on /run/kiln/esp: EBUSY".into());
    let lines = esp::gather(&mut f, Ok(&boot)).unwrap().lines();
    assert_eq!(
        lines,
        ["kiln-config: ERROR: esp: /dev/vda1: cannot mount it (vfat, read-only): mount /dev/vda1 on /run/kiln/esp: EBUSY"]
    );
    // Already mounted read-write elsewhere: that mount is read instead.
    let elsewhere = f.scratch().join("efi");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::write(elsewhere.join("kiln.toml"), "hostname = \"via-efi\"").unwrap();
    f.mounted.insert("/efi".into(), elsewhere);
    f.files.insert(
        "/proc/self/mountinfo".into(),
        b"40 25 254:1 / /efi rw,relatime - vfat /dev/vda1 rw\n".to_vec(),
    );
    let lines = esp::gather(&mut f, Ok(&boot)).unwrap().lines();
    assert_eq!(
        lines,
        ["kiln-config: esp: /dev/vda1:/kiln.toml: hostname=via-efi"]
    );

    // A disk without an ESP.
    let mut f = Fake::new();
    let img = f.scratch().join("noesp.img");
    fs::File::create(&img).unwrap().set_len(8 << 20).unwrap();
    tool("sgdisk", &["-n", "1:2048:+2M", "-t", "1:8300", p(&img)]);
    f.boot_disk(&img);
    let boot = blockdev::boot_disk(&mut f).unwrap();
    assert_eq!(
        esp::gather(&mut f, Ok(&boot)).unwrap().lines(),
        ["kiln-config: ERROR: esp: /dev/vda: no EFI system partition in the partition table"]
    );
}

fn cidata_world() -> Fake {
    let mut f = Fake::new();
    let gpt = gpt_image(f.scratch());
    f.boot_disk(&gpt);
    f
}

#[test]
fn cidata_on_vfat_and_iso_and_never_on_the_boot_disk() {
    let mut f = cidata_world();
    let fat = fat_image(
        f.scratch(),
        "ci.fat",
        &["-n", "CIDATA"],
        1024,
        &[("kiln.toml", b"hostname = \"from-fat\"")],
    );
    f.block("vdb", "254:16", 2048, None);
    f.dev("vdb", &fat, 0);
    // A cidata volume on the boot disk's own partition is not looked at.
    let decoy = fat_image(
        f.scratch(),
        "decoy.fat",
        &["-n", "CIDATA"],
        1024,
        &[("kiln.toml", b"hostname = \"decoy\"")],
    );
    f.dev("vda3", &decoy, 0);
    let boot = blockdev::boot_disk(&mut f).unwrap();
    let finding = cidata::gather(&mut f, Some(&boot)).unwrap();
    assert_eq!(
        finding.lines(),
        ["kiln-config: cidata: /dev/vdb:kiln.toml: hostname=from-fat"]
    );
    assert_eq!(f.mounts, ["/dev/vdb /run/kiln/cidata vfat"]);

    let mut f = cidata_world();
    let iso = iso_image(
        f.scratch(),
        "ci.iso",
        "cidata",
        &[("user-data", b"#kiln-config\nhostname = \"from-iso\"\n")],
    );
    f.block("sr0", "11:0", 1000, None);
    f.dev("sr0", &iso, 0);
    // An empty drive and a loop device are skipped without reading them.
    f.block("sr1", "11:1", 0, None);
    f.block("loop0", "7:0", 2048, None);
    let boot = blockdev::boot_disk(&mut f).unwrap();
    let finding = cidata::gather(&mut f, Some(&boot)).unwrap();
    assert_eq!(
        finding.lines(),
        ["kiln-config: cidata: /dev/sr0:user-data: hostname=from-iso"]
    );
    assert_eq!(f.mounts, ["/dev/sr0 /run/kiln/cidata iso9660"]);

    // No cidata volume at all: nothing.
    let mut f = cidata_world();
    let boot = blockdev::boot_disk(&mut f).unwrap();
    assert_eq!(cidata::gather(&mut f, Some(&boot)), None);
}

#[test]
fn cidata_without_kiln_config_says_what_it_looked_for() {
    let mut f = cidata_world();
    let fat = fat_image(
        f.scratch(),
        "ci.fat",
        &["-n", "CIDATA"],
        1024,
        &[("meta-data", b"instance-id: x")],
    );
    f.block("vdb", "254:16", 2048, None);
    f.dev("vdb", &fat, 0);
    let lines = cidata::gather(&mut f, None).unwrap().lines();
    assert_eq!(
        lines,
        [
            "kiln-config: ERROR: cidata: /dev/vdb: the cidata volume has no kiln.toml and no \
          user-data (looked for kiln.toml, and user-data starting with \"#kiln-config\", in \
          its root folder)"
        ]
    );

    let mut f = cidata_world();
    let fat = fat_image(
        f.scratch(),
        "ci.fat",
        &["-n", "CIDATA"],
        1024,
        &[("user-data", b"#cloud-config\nhostname: x\n")],
    );
    f.block("vdb", "254:16", 2048, None);
    f.dev("vdb", &fat, 0);
    let lines = cidata::gather(&mut f, None).unwrap().lines();
    assert!(lines[0].starts_with("kiln-config: ERROR: cidata: /dev/vdb:user-data: user-data does not start with a \"#kiln-config\" line"), "{lines:?}");

    let mut f = cidata_world();
    let fat = fat_image(
        f.scratch(),
        "ci.fat",
        &["-n", "CIDATA"],
        1024,
        &[("kiln.toml", b"hostname = 5\n")],
    );
    f.block("vdb", "254:16", 2048, None);
    f.dev("vdb", &fat, 0);
    assert_eq!(
        cidata::gather(&mut f, None).unwrap().lines(),
        ["kiln-config: ERROR: cidata: /dev/vdb:kiln.toml: hostname: expected a string, got integer 5"]
    );
}

#[test]
fn settling_waits_for_quiet_and_gives_up_after_five_seconds() {
    let mut f = Fake::new();
    let a = vec!["vda".to_string()];
    let b = vec!["vda".to_string(), "vdb".to_string()];
    f.block_lists = VecDeque::from([a.clone(), a.clone(), b.clone()]);
    assert_eq!(blockdev::settle(&mut f).unwrap(), b);
    // Changed after two polls, then quiet for a second.
    assert_eq!(f.elapsed, Duration::from_millis(250 * 2 + 1000));

    let mut f = Fake::new();
    f.block_lists = (0..100).map(|i| vec![format!("sd{i}")]).collect();
    blockdev::settle(&mut f).unwrap();
    assert_eq!(f.elapsed, blockdev::SETTLE_MAX);
}

#[test]
fn fw_cfg_loads_its_module_and_refuses_binary_blobs() {
    let mut f = Fake::new();
    f.after_modprobe = vec![(fw_cfg::FW_CFG_RAW.into(), b"\x00\x9f\x92\x96".to_vec())];
    assert_eq!(
        fw_cfg::gather(&mut f).unwrap().lines(),
        [
            "kiln-config: ERROR: fw_cfg: opt/kiln/config: not UTF-8 text (byte 0x9f at offset 1); \
          the config must be a UTF-8 TOML document"
        ]
    );
    assert_eq!(f.modprobed, ["qemu_fw_cfg"]);
    f.files.insert(
        fw_cfg::FW_CFG_RAW.into(),
        b"hostname = \"from-fw-cfg\"".to_vec(),
    );
    assert_eq!(
        fw_cfg::gather(&mut f).unwrap().lines(),
        ["kiln-config: fw_cfg: opt/kiln/config: hostname=from-fw-cfg"]
    );
    assert_eq!(f.modprobed.len(), 1, "loaded once the folder exists");
    f.files.remove(fw_cfg::FW_CFG_RAW);
    assert_eq!(fw_cfg::gather(&mut f), None);
    // No fw_cfg device at all (a cloud VM): nothing.
    let mut f = Fake::new();
    assert_eq!(fw_cfg::gather(&mut f), None);
    assert_eq!(f.modprobed, ["qemu_fw_cfg"]);
}

// ---------------------------------------------------------------------------------------
// The whole run.

fn everything_world() -> Fake {
    let mut f = esp_world(&[("kiln.toml", b"hostname = \"from-esp\"\n")]);
    let fat = fat_image(
        f.scratch(),
        "ci.fat",
        &["-n", "CIDATA"],
        1024,
        &[("kiln.toml", b"hostname = \"from-cidata\"\n")],
    );
    f.block("vdb", "254:16", 2048, None);
    f.dev("vdb", &fat, 0);
    f.listings.insert(fw_cfg::FW_CFG_DIR.into(), Vec::new());
    f.files.insert(
        fw_cfg::FW_CFG_RAW.into(),
        b"hostname = \"from-fw-cfg\"".to_vec(),
    );
    f.cloud = Some(Ok(Some(cloud::CloudUserData {
        provider: "ec2",
        source: "http://169.254.169.254/latest/user-data".into(),
        text: Some("#kiln-config\nhostname = \"from-ec2\"\n".into()),
    })));
    f
}

#[test]
fn run_prints_every_channel_and_the_winner() {
    let mut f = everything_world();
    f.files.insert(
        "/proc/cmdline".into(),
        b"console=ttyS0 kiln.debug kiln.hostname=from-cmdline\n".to_vec(),
    );
    assert!(run(&mut f, false));
    assert_eq!(
        f.lines,
        [
            "kiln-config: cmdline: /proc/cmdline: hostname=from-cmdline",
            "kiln-config: esp: /dev/vda1:/kiln.toml: hostname=from-esp",
            "kiln-config: cidata: /dev/vdb:kiln.toml: hostname=from-cidata",
            "kiln-config: fw_cfg: opt/kiln/config: hostname=from-fw-cfg",
            "kiln-config: ec2: http://169.254.169.254/latest/user-data: hostname=from-ec2",
            "kiln-config: hostname from-cmdline (from cmdline)",
        ]
    );
    assert_eq!(f.hostname.as_deref(), Some("from-cmdline"));
    let written = String::from_utf8(f.written[CONFIG_OUT].clone()).unwrap();
    assert!(
        written.contains("hostname = \"from-cmdline\" # from cmdline: /proc/cmdline\n"),
        "{written}"
    );
    // The file is valid input for the schema itself.
    assert_eq!(
        parse_text(&written).unwrap().hostname.unwrap().as_str(),
        "from-cmdline"
    );

    // Each channel wins when the ones above it say nothing.
    for (drop, winner) in [
        ("cmdline", "esp"),
        ("esp", "cidata"),
        ("cidata", "fw_cfg"),
        ("fw_cfg", "ec2"),
    ] {
        let mut f = everything_world();
        let settings: Vec<&str> = ["cmdline", "esp", "cidata", "fw_cfg", "cloud"]
            .into_iter()
            .skip_while(|c| *c != drop)
            .skip(1)
            .collect();
        f.files.insert(
            settings::SETTINGS_PATH.into(),
            format!("schema = 1\nchannels = {settings:?}\n").into_bytes(),
        );
        assert!(run(&mut f, false));
        assert_eq!(
            f.lines.last().unwrap(),
            &format!(
                "kiln-config: hostname from-{} (from {winner})",
                winner.replace('_', "-")
            )
        );
    }
}

#[test]
fn broken_channels_do_not_stop_the_others() {
    let mut f = everything_world();
    f.files
        .insert("/proc/cmdline".into(), b"kiln.hostnme=x\n".to_vec());
    f.files
        .insert(fw_cfg::FW_CFG_RAW.into(), b"\xff\xfe".to_vec());
    f.cloud = Some(Err(ChannelFailure {
        channel: "ec2",
        place: "http://169.254.169.254/latest/api/token".into(),
        message: "no answer from the metadata service".into(),
    }));
    let esp_bad = esp_world(&[("kiln.toml", b"hostname = 5")]);
    // Reuse the ESP disk with the bad file in the full world.
    f.devs = esp_bad.devs.clone();
    let fat = fat_image(
        f.scratch(),
        "ci2.fat",
        &["-n", "CIDATA"],
        1024,
        &[("kiln.toml", b"hostname = \"from-cidata\"\n")],
    );
    f.dev("vdb", &fat, 0);
    assert!(run(&mut f, false));
    assert_eq!(
        f.lines,
        [
            "kiln-config: ERROR: cmdline: /proc/cmdline: unknown key \"hostnme\" (known: schema, hostname, ssh_authorized_keys, enroll, update)",
            "kiln-config: ERROR: esp: /dev/vda1:/kiln.toml: hostname: expected a string, got integer 5",
            "kiln-config: cidata: /dev/vdb:kiln.toml: hostname=from-cidata",
            "kiln-config: ERROR: fw_cfg: opt/kiln/config: not UTF-8 text (byte 0xff at offset 0); the config must be a UTF-8 TOML document",
            "kiln-config: ERROR: ec2: http://169.254.169.254/latest/api/token: no answer from the metadata service",
            "kiln-config: hostname from-cidata (from cidata)",
        ]
    );
}

#[test]
fn without_config_the_hostname_comes_from_the_machine_id() {
    let mut f = Fake::new();
    f.root = (9, 9);
    f.files.insert(
        settings::SETTINGS_PATH.into(),
        b"channels = [\"cmdline\", \"fw_cfg\"]".to_vec(),
    );
    assert!(run(&mut f, false));
    let expected = names::hostname_from_machine_id("0123456789abcdef0123456789abcdef");
    assert_eq!(
        f.lines,
        [format!(
            "kiln-config: hostname {expected} (from machine-id)"
        )]
    );
    assert_eq!(f.hostname.as_deref(), Some(expected.as_str()));
    assert_eq!(f.cloud_calls, 0, "cloud is not listed, so not asked");
    let written = String::from_utf8(f.written[CONFIG_OUT].clone()).unwrap();
    assert!(written.contains(&format!(
        "hostname = \"{expected}\" # from machine-id: /etc/machine-id"
    )));
    assert!(
        !written.contains("0123456789abcdef"),
        "the raw machine-id stays private"
    );

    // Neither config nor a machine-id: the one failure.
    let mut f = Fake::new();
    f.files.insert(
        settings::SETTINGS_PATH.into(),
        b"channels = [\"cmdline\"]".to_vec(),
    );
    f.files
        .insert(MACHINE_ID.into(), b"uninitialized\n".to_vec());
    assert!(!run(&mut f, false));
    assert!(
        f.lines[0].starts_with("kiln-config: ERROR: hostname: no channel set one"),
        "{:?}",
        f.lines
    );
    assert!(f.written.is_empty() && f.hostname.is_none());
}

#[test]
fn dry_run_changes_nothing_and_bad_settings_fall_back_to_all_channels() {
    let mut f = everything_world();
    f.files.insert(
        settings::SETTINGS_PATH.into(),
        b"channels = [\"usb\"]".to_vec(),
    );
    assert!(run(&mut f, true));
    assert!(f.lines[0].starts_with("kiln-config: ERROR: settings: /usr/lib/kiln/agent.toml: channels: unknown channel \"usb\""), "{:?}", f.lines);
    assert_eq!(f.cloud_calls, 1);
    assert!(
        f.lines
            .iter()
            .any(|l| l == "kiln-config: hostname from-esp (from esp) [dry run: not set]"),
        "{:?}",
        f.lines
    );
    assert!(
        f.lines
            .iter()
            .any(|l| l == "hostname = \"from-esp\" # from esp: /dev/vda1:/kiln.toml"),
        "{:?}",
        f.lines
    );
    assert!(f.hostname.is_none() && f.written.is_empty());
    assert!(f.mounted.is_empty());
}

#[test]
fn failing_to_set_the_hostname_fails_the_run() {
    let mut f = Fake::new();
    f.files
        .insert("/proc/cmdline".into(), b"kiln.hostname=n1".to_vec());
    f.files.insert(
        settings::SETTINGS_PATH.into(),
        b"channels = [\"cmdline\"]".to_vec(),
    );
    f.hostname_error = true;
    assert!(!run(&mut f, false));
    assert_eq!(f.lines_with("ERROR").len(), 1);
    assert!(
        f.lines[1].contains("/proc/sys/kernel/hostname: cannot set \"n1\""),
        "{:?}",
        f.lines
    );
}

#[test]
fn real_config_write_makes_its_folder_and_replaces_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/kiln/config.toml");
    let p = path.to_str().unwrap();
    let mut sys = crate::sys::real::RealSys::default();
    write_config(&mut sys, p, b"a = 1\n").unwrap();
    write_config(&mut sys, p, b"b = 2\n").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"b = 2\n");
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    let e = write_config(&mut sys, "/proc/nonexistent/x/y", b"").unwrap_err();
    assert!(e.to_string().contains("/proc/nonexistent/x"), "{e}");
}

// ---------------------------------------------------------------------------------------
// [enroll].

const SECRET: &str = "s3cr3ts3cr3ts3cr3ts3cr3ts3cr3t00";

fn token() -> String {
    format!("KLN1{}::abc123.{SECRET}", "ab".repeat(32))
}

#[test]
fn enroll_table_is_accepted_in_toml_and_on_the_command_line() {
    let text = format!(
        "[enroll]\nserver = \"https://enroll.example.org\"\ntoken = \"{}\"\nendpoint = \"203.0.113.7:51820\"\nlisten_port = 51821\nmtu = 1380\n",
        token()
    );
    let c = parse_text(&text).unwrap();
    let e = &c.enroll;
    assert_eq!(
        e.server.as_ref().unwrap().to_string(),
        "https://enroll.example.org:8443"
    );
    assert_eq!(e.token.as_ref().unwrap().id, "abc123");
    assert_eq!(e.endpoint.as_deref(), Some("203.0.113.7:51820"));
    assert_eq!((e.listen_port, e.mtu), (Some(51821), Some(1380)));
    let summary = c.summary();
    assert_eq!(
        summary,
        "enroll.server=https://enroll.example.org:8443 enroll.token=KLN1…::abc123.<secret> \
         enroll.endpoint=203.0.113.7:51820 enroll.listen_port=51821 enroll.mtu=1380"
    );

    let line = format!(
        "console=ttyS0 kiln.enroll.server=https://[fd00::1]:9443 kiln.enroll.token={} \
         kiln.enroll.listen_port=4000 kiln.enroll.mtu=1300",
        token()
    );
    let c = schema::from_table(cmdline::table(&line).unwrap().unwrap()).unwrap();
    assert_eq!(
        c.enroll.server.unwrap().to_string(),
        "https://[fd00::1]:9443"
    );
    assert_eq!(
        (c.enroll.listen_port, c.enroll.mtu),
        (Some(4000), Some(1300))
    );
    assert_eq!(c.enroll.token.unwrap().reveal(), token());
}

#[test]
fn enroll_errors_name_the_key_and_never_the_secret() {
    let t = token();
    let cases: Vec<(String, &str)> = vec![
        (
            "[enroll]\nserver = \"http://h:8443\"".into(),
            "enroll.server: \"http://h:8443\": must start with https://",
        ),
        (
            "[enroll]\nserver = \"https://h:8443/v1\"".into(),
            "enroll.server: \"https://h:8443/v1\": '/' is not allowed",
        ),
        (
            "[enroll]\nserver = \"https://h:0\"".into(),
            "enroll.server: \"https://h:0\": port 0",
        ),
        (
            "[enroll]\nserver = \"https://fd00::1\"".into(),
            "enroll.server: \"https://fd00::1\":",
        ),
        (
            "[enroll]\nserver = 5".into(),
            "enroll.server: expected a string, got integer 5",
        ),
        (
            format!("[enroll]\ntoken = \"{}\"", t.replace("abc123", "ABC123")),
            "enroll.token: \"<109 characters, hidden>\": malformed token: the id contains 'A'",
        ),
        (
            format!("[enroll]\ntoken = \"{}x\"", t),
            "enroll.token: \"<110 characters, hidden>\": malformed token: the secret has 33 characters",
        ),
        (
            format!("[enroll]\ntoken = [\"{t}\"]"),
            "enroll.token: expected a string, got array (hidden)",
        ),
        (
            "[enroll]\nendpoint = \"203.0.113.7\"".into(),
            "enroll.endpoint: \"203.0.113.7\": missing :port",
        ),
        (
            "[enroll]\nendpoint = \"a b:5\"".into(),
            "enroll.endpoint: \"a b:5\": \"a b\" is not a hostname",
        ),
        (
            "[enroll]\nlisten_port = 0".into(),
            "enroll.listen_port: 0: a UDP port must be 1-65535",
        ),
        (
            "[enroll]\nlisten_port = 65536".into(),
            "enroll.listen_port: 65536: a UDP port must be 1-65535",
        ),
        (
            "[enroll]\nlisten_port = \"51820\"".into(),
            "enroll.listen_port: expected an integer, got string \"51820\"",
        ),
        (
            "[enroll]\nmtu = 1279".into(),
            "enroll.mtu: 1279: an MTU must be 1280-9000",
        ),
        (
            "[enroll]\nmtu = 9001".into(),
            "enroll.mtu: 9001: an MTU must be 1280-9000",
        ),
        (
            "[enroll]\ntokn = 1".into(),
            "unknown key \"enroll.tokn\" (known in [enroll]: server, token, endpoint, listen_port, mtu)",
        ),
        (
            "enroll = \"x\"".into(),
            "enroll: expected a table ([enroll]), got string \"x\"",
        ),
    ];
    for (text, want) in cases {
        let errs = errors_of(&text);
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "{text:?}: want {want:?}, got {errs:?}"
        );
        for e in &errs {
            assert!(
                !e.contains(SECRET) && !e.contains(&SECRET[..20]),
                "secret in {e}"
            );
        }
    }
    // Command line: a port that is not a number stays text and is refused by type.
    let e = schema::from_table(
        cmdline::table("kiln.enroll.listen_port=abc")
            .unwrap()
            .unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "enroll.listen_port: expected an integer, got string \"abc\""
    );
    let e = schema::from_table(
        cmdline::table(&format!("kiln.enroll.token={}", t.replace("::", ":")))
            .unwrap()
            .unwrap(),
    )
    .unwrap_err();
    assert!(!e[0].to_string().contains(SECRET), "{}", e[0]);
}

#[test]
fn enroll_keys_merge_one_by_one_and_the_file_keeps_the_secret_only() {
    let t = token();
    let findings = vec![
        found("cmdline", "[enroll]\nmtu = 1300"),
        found(
            "esp",
            &format!("hostname = \"n1\"\n[enroll]\nserver = \"https://a\"\ntoken = \"{t}\""),
        ),
        found(
            "cidata",
            "[enroll]\nserver = \"https://b\"\nlisten_port = 4000",
        ),
    ];
    let lines: Vec<String> = findings.iter().flat_map(Finding::lines).collect();
    assert!(
        lines.iter().any(|l| l
            == "kiln-config: esp: esp-place: hostname=n1 enroll.server=https://a:8443 \
                enroll.token=KLN1…::abc123.<secret>"),
        "{lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains(SECRET)));
    let m = merge(&findings);
    let e = &m.config.enroll;
    assert_eq!(e.server.as_ref().unwrap().host, "a");
    assert_eq!((e.mtu, e.listen_port), (Some(1300), Some(4000)));
    assert_eq!(m.sources["enroll.mtu"].channel, "cmdline");
    assert_eq!(m.sources["enroll.server"].channel, "esp");
    assert_eq!(m.sources["enroll.listen_port"].channel, "cidata");
    let from = Source {
        channel: "esp",
        place: "esp-place".into(),
    };
    let file = render(&m, "n1", &from, Secrets::Reveal);
    assert!(
        file.contains(&format!("token = \"{t}\" # from esp: esp-place\n")),
        "{file}"
    );
    assert!(
        file.contains("mtu = 1300 # from cmdline: cmdline-place\n"),
        "{file}"
    );
    // The written file is valid input and gives the same settings back.
    assert_eq!(parse_text(&file).unwrap().enroll, m.config.enroll);
    let shown = render(&m, "n1", &from, Secrets::Hide);
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(
        shown.contains("token = \"KLN1…::abc123.<secret>\""),
        "{shown}"
    );
}

#[test]
fn dry_run_never_prints_the_token_secret() {
    let mut f = Fake::new();
    f.files.insert(
        "/proc/cmdline".into(),
        format!(
            "kiln.hostname=n1 kiln.enroll.server=https://h kiln.enroll.token={}",
            token()
        )
        .into_bytes(),
    );
    f.files.insert(
        settings::SETTINGS_PATH.into(),
        b"channels = [\"cmdline\"]".to_vec(),
    );
    assert!(run(&mut f, true));
    assert!(f.lines.iter().all(|l| !l.contains(SECRET)), "{:?}", f.lines);
    assert!(
        f.lines
            .iter()
            .any(|l| l == "token = \"KLN1…::abc123.<secret>\" # from cmdline: /proc/cmdline"),
        "{:?}",
        f.lines
    );
    let mut f2 = Fake::new();
    f2.files = f.files.clone();
    assert!(run(&mut f2, false));
    let written = String::from_utf8(f2.written[CONFIG_OUT].clone()).unwrap();
    assert!(
        written.contains(&token()),
        "the root-only file keeps the token"
    );
    assert!(
        f2.lines.iter().all(|l| !l.contains(SECRET)),
        "{:?}",
        f2.lines
    );
}

// ---------------------------------------------------------------------------------------
// The [update] table.

#[test]
fn update_table_accepts_the_documented_form_and_defaults() {
    let c = parse_text(
        "[update]\nchannel = \"https://h.example/c/homelab-x86_64.channel.json\"\n\
         check_every = \"12h\"\nwindow = \"Sat 02:00-04:00\"\nauto_reboot = false\n",
    )
    .unwrap();
    let u = &c.update;
    assert_eq!(
        u.channel.as_deref(),
        Some("https://h.example/c/homelab-x86_64.channel.json")
    );
    assert_eq!(u.check_every_secs(), 12 * 3600);
    assert_eq!(u.window.unwrap().to_string(), "Sat 02:00-04:00");
    assert!(!u.reboots());
    assert_eq!(
        c.summary(),
        "update.channel=https://h.example/c/homelab-x86_64.channel.json \
         update.check_every=12h update.window=\"Sat 02:00-04:00\" update.auto_reboot=false"
    );
    let c = parse_text("[update]\nchannel = \"http://10.0.2.2:8000/c.json\"\n").unwrap();
    assert_eq!(c.update.check_every_secs(), schema::DEFAULT_CHECK_EVERY);
    assert!(c.update.reboots());
    assert_eq!(c.update.window, None);
}

#[test]
fn update_table_errors_name_the_key() {
    for (text, want) in [
        (
            "[update]\nchanel = \"https://h/c.json\"",
            "unknown key \"update.chanel\" (known in [update]: channel, check_every, window, auto_reboot)",
        ),
        (
            "[update]\nchannel = \"ftp://h/c.json\"",
            "update.channel: \"ftp://h/c.json\": must be the http:// or https:// URL",
        ),
        ("[update]\nchannel = \"https://\"", "update.channel: \"https://\": bad URL"),
        ("[update]\nchannel = 5", "update.channel: expected a string, got integer 5"),
        (
            "[update]\ncheck_every = \"5min\"",
            "update.check_every: \"5min\": must be from 10min to 7d",
        ),
        (
            "[update]\ncheck_every = \"often\"",
            "update.check_every: \"often\": is not a duration",
        ),
        (
            "[update]\ncheck_every = 3600",
            "update.check_every: expected a string, got integer 3600",
        ),
        (
            "[update]\nwindow = \"Caturday 02:00-04:00\"",
            "update.window: \"Caturday 02:00-04:00\": \"Caturday\" is not a day",
        ),
        (
            "[update]\nwindow = \"daily 02:00-02:30\"",
            "update.window: \"daily 02:00-02:30\": 02:00-02:30 is 30 minutes",
        ),
        (
            "[update]\nauto_reboot = \"yes\"",
            "update.auto_reboot: expected a boolean, got string \"yes\"",
        ),
        ("update = \"x\"", "update: expected a table ([update]), got string \"x\""),
    ] {
        let e = errors_of(text);
        assert!(e[0].starts_with(want), "{text:?}: {e:?}");
    }
}

#[test]
fn update_keys_come_from_the_command_line_and_merge_per_key() {
    let t = cmdline::table(
        "kiln.update.channel=http://10.0.2.2:8000/c.json kiln.update.auto_reboot=false \
         kiln.update.window=\"daily 03:00-05:00\"",
    )
    .unwrap()
    .unwrap();
    let c = schema::from_table(t).unwrap();
    assert_eq!(
        c.update.channel.as_deref(),
        Some("http://10.0.2.2:8000/c.json")
    );
    assert_eq!(c.update.auto_reboot, Some(false));
    assert_eq!(c.update.window.unwrap().to_string(), "daily 03:00-05:00");
    let e = schema::from_table(
        cmdline::table("kiln.update.auto_reboot=no")
            .unwrap()
            .unwrap(),
    )
    .unwrap_err();
    assert_eq!(
        e[0].to_string(),
        "update.auto_reboot: expected a boolean, got string \"no\""
    );

    let findings = vec![
        found("cmdline", "[update]\nchannel = \"https://a/c.json\""),
        found(
            "esp",
            "[update]\nchannel = \"https://b/c.json\"\ncheck_every = \"1d\"",
        ),
        found(
            "fw_cfg",
            "[update]\nwindow = \"Sun 01:00-03:00\"\nauto_reboot = false",
        ),
    ];
    let m = merge(&findings);
    assert_eq!(m.config.update.channel.as_deref(), Some("https://a/c.json"));
    assert_eq!(m.sources["update.channel"].channel, "cmdline");
    assert_eq!(m.sources["update.check_every"].channel, "esp");
    assert_eq!(m.sources["update.window"].channel, "fw_cfg");
    let from = Source {
        channel: "esp",
        place: "p".into(),
    };
    let file = render(&m, "n1", &from, Secrets::Reveal);
    assert!(
        file.contains("[update]\nchannel = \"https://a/c.json\" # from cmdline: cmdline-place\n"),
        "{file}"
    );
    assert!(file.contains("check_every = \"1d\" # from esp"), "{file}");
    // The written file is valid input and gives the same settings back.
    assert_eq!(parse_text(&file).unwrap().update, m.config.update);
}
