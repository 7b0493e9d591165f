//! `update apply` against a fake machine: a GPT disk in memory with two slots (A runs
//! version 1.0, B holds an older 0.9), an ESP with their UKIs, and bundles built with
//! the contract's encoder and a test key. Every refusal is checked for its message and
//! for leaving the disk and the ESP exactly as they were; every failure after the other
//! slot was emptied for its message, an untouched running slot and an `_empty` slot B;
//! and the order of the effects.

use std::io::{self, Read};
use std::time::Duration;

use kiln_contract::boot::{Slot, EMPTY_LABEL};
use kiln_contract::bundle::{self, BundleFacts, PartDigest, PartKind};
use kiln_contract::gpt::{attr, types, Entry, Guid};
use kiln_contract::signing::SecretKey;
use kiln_contract::verity::hex;
use kiln_contract::version::ImageVersion;
use sha2::{Digest, Sha256};

use super::cli::{parse_args, run};
use super::verify::fake_pe;
use super::*;
use crate::gpt::{self, GptEntry, RawTable};
use crate::sys::fake::FakeSys;
use crate::sys::forward;
use crate::update::fetch::{self as fetch_mod, FetchOptions};
use crate::update::slot::{self, hash_guids, running_arch};
use crate::update::state::{LastApply, State};
use crate::verity_tree::{build_tree, test_data};

const SS: u64 = 512;
const DEV: &str = "/dev/vda";
const SECTORS: u64 = 12_000;
const HASH_A: [u8; 32] = [0x11; 32];
const HASH_B: [u8; 32] = [0x22; 32];
const UKI_DIR_PATH: &str = "/efi/EFI/Linux";
const KEYS: &str = "/usr/lib/kiln/update-keys";
const SETTINGS: &str = "/usr/lib/kiln/agent.toml";
const STATE: &str = "/var/lib/kiln/update";

/// (first LBA, sectors) of each partition: ESP, root A, verity A, root B, verity B.
const PARTS: [(u64, u64); 5] = [
    (2048, 2048),
    (4096, 2048),
    (6144, 256),
    (6400, 2048),
    (8448, 256),
];

fn range(i: usize) -> std::ops::Range<usize> {
    let (first, n) = PARTS[i];
    (first * SS) as usize..((first + n) * SS) as usize
}

fn other_arch() -> &'static str {
    if running_arch() == "x86_64" {
        "arm64"
    } else {
        "x86_64"
    }
}

fn entries() -> Vec<GptEntry> {
    let arch = running_arch();
    let (ra, va) = hash_guids(&HASH_A);
    let (rb, vb) = hash_guids(&HASH_B);
    let e = |i: usize, t: Guid, g: Guid, name: String| GptEntry {
        index: i as u32,
        entry: Entry {
            type_guid: t,
            part_guid: g,
            first_lba: PARTS[i].0,
            last_lba: PARTS[i].0 + PARTS[i].1 - 1,
            attributes: if i == 0 { 0 } else { attr::READ_ONLY },
            name,
        },
    };
    vec![
        e(0, types::ESP, Guid::from_bytes([1; 16]), "esp".into()),
        e(1, slot::root_type(arch), ra, Slot::A.root_label(arch)),
        e(2, slot::verity_type(arch), va, Slot::A.verity_label(arch)),
        e(3, slot::root_type(arch), rb, Slot::B.root_label(arch)),
        e(4, slot::verity_type(arch), vb, Slot::B.verity_label(arch)),
    ]
}

/// The disk: the GPT, slot A filled with 0xAA, slot B with 0xBB.
fn disk() -> Vec<u8> {
    let mut d = slot_tests_disk(&entries());
    for i in [1, 2] {
        d[range(i)].fill(0xAA);
    }
    for i in [3, 4] {
        d[range(i)].fill(0xBB);
    }
    d
}

/// A GPT disk image of [`SECTORS`] with `entries` (both copies).
fn slot_tests_disk(entries: &[GptEntry]) -> Vec<u8> {
    use kiln_contract::crc32::crc32;
    use kiln_contract::gpt::{encode_array, Header, REVISION_1_0};
    let mut disk = vec![0u8; (SECTORS * SS) as usize];
    let used: Vec<(u32, &Entry)> = entries.iter().map(|e| (e.index, &e.entry)).collect();
    let array = encode_array(&used, 128, 128);
    let crc = crc32(&array);
    let last = SECTORS - 1;
    let h = |my: u64, alt: u64, ents: u64| Header {
        revision: REVISION_1_0,
        header_size: 92,
        my_lba: my,
        alternate_lba: alt,
        first_usable_lba: 34,
        last_usable_lba: last - 33,
        disk_guid: Guid::from_bytes([7; 16]),
        entries_lba: ents,
        num_entries: 128,
        entry_size: 128,
        entries_crc: crc,
    };
    disk[..512].copy_from_slice(&kiln_contract::gpt::protective_mbr(SECTORS));
    disk[512..1024].copy_from_slice(&h(1, last, 2).to_sector(512));
    disk[1024..1024 + array.len()].copy_from_slice(&array);
    let b = ((last - 32) * SS) as usize;
    disk[b..b + array.len()].copy_from_slice(&array);
    let l = (last * SS) as usize;
    disk[l..l + 512].copy_from_slice(&h(last, 1, last - 32).to_sector(512));
    disk
}

fn uki(hash: &[u8], version: &str) -> Vec<u8> {
    let cmdline = format!("console=ttyS0 kiln.roothash={} rw", hex(hash));
    let osrel = format!("ID=debian\nIMAGE_ID=homelab\nIMAGE_VERSION={version}\n");
    fake_pe(&[
        (".osrel", osrel.as_bytes()),
        (".cmdline", cmdline.as_bytes()),
    ])
}

fn key() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

/// What a test bundle is made of, each piece changeable.
#[derive(Clone)]
struct Spec {
    image: String,
    arch: String,
    version: String,
    root: Vec<u8>,
    verity: Vec<u8>,
    uki: Vec<u8>,
    root_hash: [u8; 32],
    key: SecretKey,
}

fn spec(version: &str) -> Spec {
    let root = test_data(200);
    let (verity, root_hash) = build_tree(&root, &[0x5a; 32]);
    Spec {
        image: "homelab".into(),
        arch: running_arch().into(),
        version: version.into(),
        uki: uki(&root_hash, version),
        root,
        verity,
        root_hash,
        key: key(),
    }
}

fn sha(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

fn build(s: &Spec) -> Vec<u8> {
    let facts = BundleFacts {
        image: s.image.clone(),
        arch: s.arch.clone(),
        version: s.version.clone(),
        root_hash: hex(&s.root_hash),
        kiln_version: "0.1.0".into(),
        lock_digest: "01".repeat(32),
    };
    let digest = |b: &[u8]| PartDigest {
        size: b.len() as u64,
        sha256: sha(b),
    };
    let m = bundle::plan(facts, [digest(&s.root), digest(&s.verity), digest(&s.uki)]).unwrap();
    let mut out = bundle::encode_header(&m, &s.key).unwrap();
    for (p, bytes) in m.parts.iter().zip([&s.root, &s.verity, &s.uki]) {
        out.resize(p.offset as usize, 0);
        out.extend_from_slice(bytes);
    }
    out
}

/// Offset of `kind`'s part in a bundle built from `s`.
fn part_offset(s: &Spec, kind: PartKind) -> usize {
    let header = build(s);
    let v = bundle::open_header(&header, &[s.key.public()]).unwrap();
    v.manifest.part(kind).unwrap().offset as usize
}

/// A bundle in memory, optionally failing or ending early.
struct MemStream {
    data: Vec<u8>,
    pos: usize,
    /// Reads fail once here.
    fail_at: Option<usize>,
    /// The stream ends here (claiming its full length).
    end_at: Option<usize>,
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut end = self.data.len().min(self.end_at.unwrap_or(usize::MAX));
        if let Some(f) = self.fail_at {
            if self.pos >= f {
                return Err(FetchError::Broken {
                    url: "http://test/b".into(),
                    offset: self.pos as u64,
                    total: self.data.len() as u64,
                    attempts: 5,
                    err: "connection reset".into(),
                }
                .into_io());
            }
            end = end.min(f);
        }
        let n = buf.len().min(end.saturating_sub(self.pos));
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl BundleStream for MemStream {
    fn total_len(&self) -> u64 {
        self.data.len() as u64
    }
    fn describe(&self) -> String {
        "bundle".into()
    }
}

/// What the fake saw when the first byte went into slot B's root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AtFirstWrite {
    names: Vec<String>,
    ukis: Vec<String>,
}

struct Fake {
    base: FakeSys,
    disk: Vec<u8>,
    bundle: Vec<u8>,
    fail_at: Option<usize>,
    end_at: Option<usize>,
    log: Vec<String>,
    first_write: Option<AtFirstWrite>,
    esp_free: u64,
    terminal: bool,
    /// Effects so far (disk writes and syncs, ESP writes, renames and syncs).
    effects: usize,
    /// The power goes at this effect: it is done by half (a write) or not at all,
    /// and every later one fails.
    cut_at: Option<usize>,
}

forward!(Fake => base: Files, Clock, Console, Exec);

impl Fake {
    fn new(bundle: Vec<u8>) -> Fake {
        let mut base = FakeSys::default();
        let k = key().public();
        base.files.insert(
            format!("{KEYS}/{}", k.id().file_name()),
            k.to_text().into_bytes(),
        );
        base.files.insert(
            SETTINGS.into(),
            b"[update]\nimage = \"homelab\"\nversion = \"1.0\"\n".to_vec(),
        );
        base.files.insert(
            "/proc/cmdline".into(),
            format!("console=ttyS0 kiln.roothash={}\n", hex(&HASH_A)).into_bytes(),
        );
        base.files
            .insert(format!("{UKI_DIR_PATH}/kiln-a.efi"), uki(&HASH_A, "1.0"));
        base.files
            .insert(format!("{UKI_DIR_PATH}/kiln-b.efi"), uki(&HASH_B, "0.9"));
        base.now = 1_765_000_000;
        Fake {
            base,
            disk: disk(),
            bundle,
            fail_at: None,
            end_at: None,
            log: Vec::new(),
            first_write: None,
            esp_free: 100 << 20,
            terminal: false,
            effects: 0,
            cut_at: None,
        }
    }

    fn ukis(&self) -> Vec<String> {
        self.base
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{UKI_DIR_PATH}/")))
            .map(str::to_string)
            .collect()
    }

    fn table(&self) -> RawTable {
        let disk = &self.disk;
        let mut read = |off: u64, len: usize| Ok(disk[off as usize..off as usize + len].to_vec());
        gpt::read_table(&mut read, SS, Some(SECTORS * SS)).unwrap()
    }

    /// Counts an effect: Err once the power is gone, with whether this is the effect
    /// the cut interrupts.
    fn power(&mut self) -> Result<(), bool> {
        self.effects += 1;
        match self.cut_at {
            Some(c) if self.effects == c => Err(true),
            Some(c) if self.effects > c => Err(false),
            _ => Ok(()),
        }
    }

    fn what(&self, offset: u64, len: usize) -> String {
        let end = offset as usize + len;
        for (i, name) in [
            (1, "root-a"),
            (2, "verity-a"),
            (3, "root-b"),
            (4, "verity-b"),
        ] {
            let r = range(i);
            if (offset as usize) < r.end && end > r.start {
                return name.to_string();
            }
        }
        "gpt".to_string()
    }
}

impl ApplySys for Fake {
    fn open_bundle(&mut self, source: &str) -> Result<Box<dyn BundleStream>, FetchError> {
        if fetch_mod::is_url(source) {
            let opts = FetchOptions {
                attempts: 2,
                backoff: crate::backoff::Backoff {
                    first: Duration::from_millis(1),
                    max: Duration::from_millis(1),
                },
                ..FetchOptions::default()
            };
            return fetch_mod::open(source, &opts);
        }
        if source != "bundle" {
            return Err(FetchError::Open {
                path: source.into(),
                err: io::Error::from(io::ErrorKind::NotFound),
            });
        }
        Ok(Box::new(MemStream {
            data: self.bundle.clone(),
            pos: 0,
            fail_at: self.fail_at,
            end_at: self.end_at,
        }))
    }
    fn disks(&mut self) -> Result<Vec<String>, String> {
        Ok(vec![DEV.into()])
    }
    fn disk_bytes(&mut self, _dev: &str) -> io::Result<u64> {
        Ok(self.disk.len() as u64)
    }
    fn sector_size(&mut self, _dev: &str) -> io::Result<u64> {
        Ok(SS)
    }
    fn read_at(&mut self, _dev: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.disk
            .get(offset as usize..offset as usize + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }
    fn write_at(&mut self, _dev: &str, offset: u64, data: &[u8]) -> io::Result<()> {
        if let Err(torn) = self.power() {
            if torn {
                let half = data.len() / 2;
                self.disk[offset as usize..offset as usize + half].copy_from_slice(&data[..half]);
            }
            return Err(cut());
        }
        let what = self.what(offset, data.len());
        if what == "root-b" && self.first_write.is_none() {
            let t = self.table();
            self.first_write = Some(AtFirstWrite {
                names: t.entries[3..].iter().map(|e| e.name.clone()).collect(),
                ukis: self.ukis(),
            });
        }
        if self.log.last() != Some(&format!("write {what}")) {
            self.log.push(format!("write {what}"));
        }
        self.disk[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn sync_disk(&mut self, _dev: &str) -> io::Result<()> {
        self.power().map_err(|_| cut())?;
        self.log.push("sync disk".into());
        Ok(())
    }
    fn esp_dir(&mut self) -> Result<String, String> {
        Ok("/efi".into())
    }
    fn free_bytes(&mut self, _dir: &str) -> io::Result<u64> {
        Ok(self.esp_free)
    }
    fn file_len(&mut self, path: &str) -> io::Result<u64> {
        self.base
            .files
            .get(path)
            .map(|f| f.len() as u64)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }
    fn write_synced(&mut self, path: &str, data: &[u8]) -> io::Result<()> {
        if let Err(torn) = self.power() {
            if torn {
                self.base
                    .files
                    .insert(path.into(), data[..data.len() / 2].to_vec());
            }
            return Err(cut());
        }
        self.log.push(format!("write {path}"));
        self.base.files.insert(path.into(), data.to_vec());
        Ok(())
    }
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        self.power().map_err(|_| cut())?;
        self.log.push(format!("rename {from} {to}"));
        let data = self
            .base
            .files
            .remove(from)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        self.base.files.insert(to.into(), data);
        Ok(())
    }
    fn sync_dir(&mut self, dir: &str) -> io::Result<()> {
        self.power().map_err(|_| cut())?;
        self.log.push(format!("sync {dir}"));
        Ok(())
    }
    fn is_terminal(&mut self) -> bool {
        self.terminal
    }
}

fn cut() -> io::Error {
    io::Error::other("the power is gone")
}

fn opts() -> Options {
    Options {
        source: "bundle".into(),
        reboot: false,
        allow_downgrade: false,
        force: false,
        tries: None,
    }
}

fn paths() -> Paths {
    Paths::default()
}

/// Runs apply; returns the exit code and the ERROR line (if any).
fn run_fake(f: &mut Fake, o: &Options) -> (u8, String) {
    let code = run(f, &paths(), o);
    let err = f
        .base
        .lines
        .iter()
        .find(|l| l.contains("ERROR"))
        .cloned()
        .unwrap_or_default();
    (code, err)
}

/// A refusal: exit 1, one ERROR line containing `want`, and nothing changed.
fn refused(mut f: Fake, o: &Options, want: &str) -> String {
    let disk = f.disk.clone();
    let files = f.base.files.clone();
    let (code, err) = run_fake(&mut f, o);
    assert_eq!(code, 1, "{:?}", f.base.lines);
    assert!(err.contains(want), "{err}");
    assert!(!err.contains('\n'));
    assert_eq!(
        f.base.lines.iter().filter(|l| l.contains("ERROR")).count(),
        1
    );
    assert!(f.disk == disk, "the disk changed on a refusal: {:?}", f.log);
    assert_eq!(f.base.files, files, "files changed on a refusal");
    assert!(f.log.is_empty(), "{:?}", f.log);
    err
}

/// A failure after slot B was emptied: exit 1, the message, slot A and the ESP's
/// slot A UKI as they were, slot B `_empty` without a UKI.
fn failed_after_start(mut f: Fake, o: &Options, want: &str) -> String {
    let before = f.disk.clone();
    let (code, err) = run_fake(&mut f, o);
    assert_eq!(code, 1, "{:?}", f.base.lines);
    assert!(err.contains(want), "{err}");
    assert!(
        err.ends_with(
            "(slot b is left empty; the running version is untouched and boots as before)"
        ),
        "{err}"
    );
    for i in [0, 1, 2] {
        assert!(
            f.disk[range(i)] == before[range(i)],
            "partition {i} changed"
        );
    }
    let t = f.table();
    assert_eq!(t.entries[..3], entries()[..3]);
    assert_eq!(t.entries[3].name, EMPTY_LABEL);
    assert_eq!(t.entries[4].name, EMPTY_LABEL);
    assert!(attr::has(t.entries[3].attributes, attr::NO_AUTO));
    assert_ne!(t.entries[3].part_guid, hash_guids(&HASH_B).0);
    assert_eq!(f.ukis(), ["kiln-a.efi"]);
    assert_eq!(
        f.base.files[&format!("{UKI_DIR_PATH}/kiln-a.efi")],
        uki(&HASH_A, "1.0")
    );
    err
}

#[test]
fn applies_a_bundle_to_the_other_slot_in_the_safe_order() {
    let s = spec("2.0");
    let mut f = Fake::new(build(&s));
    let before = f.disk.clone();
    let (code, err) = run_fake(&mut f, &opts());
    assert_eq!(code, 0, "{err} {:?}", f.base.lines);

    // The running slot and the ESP partition are untouched.
    for i in [0, 1, 2] {
        assert!(
            f.disk[range(i)] == before[range(i)],
            "partition {i} changed"
        );
    }
    // Slot B holds the root and its tree; the rest of the partition is as it was.
    let rb = range(3);
    assert!(f.disk[rb.start..rb.start + s.root.len()] == s.root[..]);
    assert!(f.disk[rb.start + s.root.len()..rb.end] == before[rb.start + s.root.len()..rb.end]);
    let vb = range(4);
    assert!(f.disk[vb.start..vb.start + s.verity.len()] == s.verity[..]);

    // Its entries name the slot and carry the new root hash's halves, read-only.
    let t = f.table();
    let (r, v) = hash_guids(&s.root_hash);
    let arch = running_arch();
    assert_eq!(t.entries[3].name, Slot::B.root_label(arch));
    assert_eq!(t.entries[4].name, Slot::B.verity_label(arch));
    assert_eq!((t.entries[3].part_guid, t.entries[4].part_guid), (r, v));
    assert_eq!(t.entries[3].attributes, attr::READ_ONLY);
    assert_eq!(t.entries[..3], entries()[..3]);
    let disk = &f.disk;
    let mut read = |off: u64, len: usize| Ok(disk[off as usize..off as usize + len].to_vec());
    let places = slot::copy_places(&t, SECTORS).unwrap();
    slot::check_both_copies(&mut read, SS, &places, &t.entries[3..5]).unwrap();

    // The UKI is on trial with 3 tries; the old slot B UKI and the temporary are gone.
    assert_eq!(f.ukis(), ["kiln-a.efi", "kiln-b+3.efi"]);
    assert_eq!(f.base.files[&format!("{UKI_DIR_PATH}/kiln-b+3.efi")], s.uki);

    // When the first byte went into the slot, its UKI was gone and its name _empty.
    assert_eq!(
        f.first_write,
        Some(AtFirstWrite {
            names: vec![EMPTY_LABEL.into(), EMPTY_LABEL.into()],
            ukis: vec!["kiln-a.efi".into()],
        })
    );
    // The order: GPT (empty), parts, sync, GPT (named), sync, UKI written, renamed last.
    let tmp = format!("{UKI_DIR_PATH}/kiln-b.efi.tmp");
    assert_eq!(
        f.log,
        [
            format!("sync {UKI_DIR_PATH}"),
            "write gpt".into(),
            "sync disk".into(),
            "write root-b".into(),
            "write verity-b".into(),
            "sync disk".into(),
            "write gpt".into(),
            "sync disk".into(),
            format!("write {tmp}"),
            format!("rename {tmp} {UKI_DIR_PATH}/kiln-b+3.efi"),
            format!("sync {UKI_DIR_PATH}"),
        ]
    );

    // The state remembers the apply; the summary says what was done.
    let state = State::load(&mut f.base, STATE).unwrap();
    assert_eq!(
        state.last_apply,
        Some(LastApply {
            version: "2.0".into(),
            from: "1.0".into(),
            when: 1_765_000_000
        })
    );
    let summary = f.base.lines.last().unwrap();
    assert!(
        summary.starts_with("kiln-update: applied version 2.0 (was 1.0) to slot b: "),
        "{summary}"
    );
    assert!(
        summary.contains("EFI/Linux/kiln-b+3.efi boots it next"),
        "{summary}"
    );
    // No progress lines off a terminal.
    assert!(
        !f.base.lines.iter().any(|l| l.contains('%')),
        "{:?}",
        f.base.lines
    );
}

#[test]
fn progress_on_a_terminal_tries_and_reboot() {
    let mut f = Fake::new(build(&spec("2.0")));
    f.terminal = true;
    f.base.commands.insert(
        "systemctl reboot".into(),
        crate::sys::CommandResult::exited(0, ""),
    );
    let o = Options {
        tries: Some(5),
        reboot: true,
        ..opts()
    };
    let (code, err) = run_fake(&mut f, &o);
    assert_eq!(code, 0, "{err}");
    assert!(f.ukis().contains(&"kiln-b+5.efi".to_string()));
    let pct: Vec<&String> = f.base.lines.iter().filter(|l| l.contains('%')).collect();
    assert!(
        pct.len() >= 2 && pct.last().unwrap().contains("100%"),
        "{pct:?}"
    );
    assert_eq!(f.base.ran, ["systemctl reboot"]);

    // agent.toml's tries when the command line has none.
    let mut f = Fake::new(build(&spec("2.0")));
    f.base.files.insert(
        SETTINGS.into(),
        b"[update]\nimage = \"homelab\"\nversion = \"1.0\"\ntries = 2\n".to_vec(),
    );
    assert_eq!(run_fake(&mut f, &opts()).0, 0);
    assert!(f.ukis().contains(&"kiln-b+2.efi".to_string()));
}

#[test]
fn a_fresh_image_with_an_empty_slot_b_gets_its_first_update() {
    let mut f = Fake::new(build(&spec("1.1")));
    let mut e = entries();
    for i in [3, 4] {
        e[i].entry.name = EMPTY_LABEL.into();
        e[i].entry.attributes |= attr::NO_AUTO;
        e[i].entry.part_guid = Guid::from_bytes([i as u8 + 0x40; 16]);
    }
    f.disk = slot_tests_disk(&e);
    f.base.files.remove(&format!("{UKI_DIR_PATH}/kiln-b.efi"));
    let (code, err) = run_fake(&mut f, &opts());
    assert_eq!(code, 0, "{err}");
    assert_eq!(f.ukis(), ["kiln-a.efi", "kiln-b+3.efi"]);
    assert_eq!(
        f.table().entries[3].name,
        Slot::B.root_label(running_arch())
    );
}

#[test]
fn running_from_slot_b_writes_slot_a() {
    let s = spec("2.0");
    let mut f = Fake::new(build(&s));
    f.base.files.insert(
        "/proc/cmdline".into(),
        format!("kiln.roothash={}", hex(&HASH_B)).into_bytes(),
    );
    f.base.files.insert(
        SETTINGS.into(),
        b"[update]\nimage = \"homelab\"\nversion = \"0.9\"\n".to_vec(),
    );
    let before = f.disk.clone();
    assert_eq!(run_fake(&mut f, &opts()).0, 0);
    assert!(f.disk[range(3)] == before[range(3)] && f.disk[range(4)] == before[range(4)]);
    assert_eq!(f.ukis(), ["kiln-a+3.efi", "kiln-b.efi"]);
    assert_eq!(f.table().entries[1].part_guid, hash_guids(&s.root_hash).0);
}

#[test]
fn refuses_a_bad_signature_and_an_unknown_key() {
    // A byte of the signed manifest changed.
    let mut b = build(&spec("2.0"));
    let at = b.windows(7).position(|w| w == b"homelab").unwrap();
    b[at] = b'H';
    let e = refused(Fake::new(b), &opts(), "signature does not verify");
    assert!(e.contains("download or copy it again"), "{e}");

    // Signed by a key the image does not trust.
    let mut s = spec("2.0");
    s.key = SecretKey::from_seed([9; 32]);
    let e = refused(
        Fake::new(build(&s)),
        &opts(),
        "which this node does not trust",
    );
    assert!(e.contains(&key().public().id().to_string()), "{e}");

    // No keys at all: refused before the bundle is opened.
    let mut f = Fake::new(build(&spec("2.0")));
    f.base.files.retain(|k, _| !k.starts_with(KEYS));
    let e = refused(f, &opts(), "this image trusts no update keys");
    assert!(e.contains("add [update] keys to its profile"), "{e}");

    // Not a bundle.
    refused(
        Fake::new(vec![0u8; 8192]),
        &opts(),
        "not a kiln update bundle",
    );
}

#[test]
fn refuses_another_arch_image_and_the_wrong_versions() {
    let mut s = spec("2.0");
    s.arch = other_arch().into();
    let e = refused(Fake::new(build(&s)), &opts(), "the bundle is for");
    assert!(
        e.contains(&format!("this node is {}", running_arch())),
        "{e}"
    );

    let mut s = spec("2.0");
    s.image = "k3s".into();
    refused(
        Fake::new(build(&s)),
        &opts(),
        "the bundle is of image \"k3s\", this node runs image \"homelab\"",
    );

    refused(
        Fake::new(build(&spec("0.5"))),
        &opts(),
        "the bundle's version 0.5 is older than the running 1.0: pass --allow-downgrade",
    );
    refused(
        Fake::new(build(&spec("1.0"))),
        &opts(),
        "the bundle's version 1.0 is the running version: nothing to do",
    );

    let rejected = |force: bool| {
        let mut f = Fake::new(build(&spec("2.0")));
        let mut st = State::default();
        st.reject(
            &ImageVersion::parse("2.0").unwrap(),
            "health check failed: preflight".into(),
            5,
        );
        st.save(&mut f.base, STATE).unwrap();
        (f, Options { force, ..opts() })
    };
    let (f, o) = rejected(false);
    refused(
        f,
        &o,
        "this node rolled back from version 2.0 (health check failed: preflight): pass --force",
    );
    let (mut f, o) = rejected(true);
    assert_eq!(run_fake(&mut f, &o).0, 0);
    assert!(f.base.has_line("--force: applying version 2.0"));
}

#[test]
fn refuses_a_slot_too_small_a_short_file_and_a_full_esp() {
    let mut s = spec("2.0");
    s.root = test_data(300);
    let (verity, hash) = build_tree(&s.root, &[1; 32]);
    s.verity = verity;
    s.root_hash = hash;
    s.uki = uki(&hash, "2.0");
    refused(
        Fake::new(build(&s)),
        &opts(),
        "slot too small: the bundle's root is 1228800 bytes (1.2 MiB), slot b holds 1048576 \
         (1.0 MiB); reflash with a larger [update] slot_size",
    );

    let mut b = build(&spec("2.0"));
    let full = b.len();
    b.truncate(full - 1000);
    refused(
        Fake::new(b),
        &opts(),
        &format!(
            "the bundle is {} bytes but its manifest says {full}: it is truncated",
            full - 1000
        ),
    );

    let mut f = Fake::new(build(&spec("2.0")));
    f.esp_free = 0;
    // The old slot B UKI that would be deleted does not make room for the new one.
    refused(f, &opts(), "the ESP has");
}

#[test]
fn refuses_an_image_without_updates_or_slots() {
    let mut f = Fake::new(build(&spec("2.0")));
    f.base.files.remove(SETTINGS);
    refused(f, &opts(), "has no [update] table");

    let mut f = Fake::new(build(&spec("2.0")));
    f.base.files.insert(
        "/proc/cmdline".into(),
        b"console=ttyS0 root=/dev/vda2".to_vec(),
    );
    refused(f, &opts(), "booted without kiln.roothash=");

    // A single-slot image (no slot B partitions).
    let mut f = Fake::new(build(&spec("2.0")));
    f.disk = slot_tests_disk(&entries()[..3]);
    refused(
        f,
        &opts(),
        "it was flashed with a single-slot image; reflash it once",
    );
}

#[test]
fn refuses_while_the_running_version_is_on_trial_unless_forced() {
    let on_trial = || {
        let mut f = Fake::new(build(&spec("2.0")));
        let a = f
            .base
            .files
            .remove(&format!("{UKI_DIR_PATH}/kiln-a.efi"))
            .unwrap();
        f.base
            .files
            .insert(format!("{UKI_DIR_PATH}/kiln-a+2-1.efi"), a);
        f
    };
    refused(
        on_trial(),
        &opts(),
        "the running version 1.0 is still on trial (EFI/Linux/kiln-a+2-1.efi)",
    );
    let mut f = on_trial();
    let o = Options {
        force: true,
        ..opts()
    };
    assert_eq!(run_fake(&mut f, &o).0, 0);
    assert_eq!(f.ukis(), ["kiln-a+2-1.efi", "kiln-b+3.efi"]);
}

#[test]
fn an_unreachable_url_is_one_line_and_changes_nothing() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = Options {
        source: format!("http://127.0.0.1:{port}/homelab.update"),
        ..opts()
    };
    let e = refused(Fake::new(Vec::new()), &o, "cannot reach http://127.0.0.1:");
    assert!(e.contains("check the URL"), "{e}");
    let o = Options {
        source: "/var/tmp/none.update".into(),
        ..opts()
    };
    refused(
        Fake::new(Vec::new()),
        &o,
        "cannot open the bundle /var/tmp/none.update",
    );
}

#[test]
fn a_changed_byte_in_any_part_is_named_and_leaves_the_slot_empty() {
    let s = spec("2.0");
    for (kind, name) in [
        (PartKind::Root, "root"),
        (PartKind::RootVerity, "root-verity"),
        (PartKind::Uki, "uki"),
    ] {
        let mut b = build(&s);
        let at = part_offset(&s, kind) + 100;
        b[at] ^= 0x40;
        let e = failed_after_start(
            Fake::new(b),
            &opts(),
            &format!("the bundle's {name} part has SHA-256"),
        );
        assert!(e.contains("download or copy it again"), "{e}");
    }
}

#[test]
fn a_download_that_breaks_or_ends_early_names_the_part() {
    let s = spec("2.0");
    let mut f = Fake::new(build(&s));
    f.fail_at = Some(part_offset(&s, PartKind::Root) + 300_000);
    let e = failed_after_start(
        f,
        &opts(),
        "reading the bundle's root part: the download of",
    );
    assert!(e.contains("broke after"), "{e}");

    let mut f = Fake::new(build(&s));
    let verity = part_offset(&s, PartKind::RootVerity);
    f.end_at = Some(verity + 5000);
    failed_after_start(
        f,
        &opts(),
        &format!(
            "the bundle ended after 5000 of the {} bytes of its root-verity part",
            s.verity.len()
        ),
    );
}

#[test]
fn a_signed_bundle_whose_tree_or_uki_does_not_match_is_refused_after_writing() {
    // The verity part of other data: its SHA-256 is signed, its tree is not the root's.
    let mut s = spec("2.0");
    let (other, _) = build_tree(&test_data(200)[4096..], &[0x5a; 32]);
    let mut tree = other;
    tree.resize(s.verity.len(), 0);
    // Same superblock (block count), another tree.
    tree[..4096].copy_from_slice(&s.verity[..4096]);
    s.verity = tree;
    failed_after_start(
        Fake::new(build(&s)),
        &opts(),
        "the written root-verity part differs from the hash tree of the written root",
    );

    // A manifest root hash that is not the root's tree.
    let mut s = spec("2.0");
    s.root_hash = [0x77; 32];
    s.uki = uki(&s.root_hash, "2.0");
    failed_after_start(
        Fake::new(build(&s)),
        &opts(),
        "but the signed manifest says 7777",
    );

    // A UKI whose command line names another root.
    let mut s = spec("2.0");
    s.uki = uki(&[0x33; 32], "2.0");
    failed_after_start(
        Fake::new(build(&s)),
        &opts(),
        "the UKI's command line has kiln.roothash=3333",
    );
}

#[test]
fn a_downgrade_keeps_the_running_version_as_the_fallback() {
    let mut f = Fake::new(build(&spec("0.9.5")));
    let o = Options {
        allow_downgrade: true,
        ..opts()
    };
    let (code, err) = run_fake(&mut f, &o);
    assert_eq!(code, 0, "{err}");
    assert_eq!(f.ukis(), ["kiln-a+0-0.efi", "kiln-b+3.efi"]);
    // The running UKI is renamed after the new one is in place.
    let n = f.log.len();
    assert_eq!(
        f.log[n - 4..],
        [
            format!("rename {UKI_DIR_PATH}/kiln-b.efi.tmp {UKI_DIR_PATH}/kiln-b+3.efi"),
            format!("sync {UKI_DIR_PATH}"),
            format!("rename {UKI_DIR_PATH}/kiln-a.efi {UKI_DIR_PATH}/kiln-a+0-0.efi"),
            format!("sync {UKI_DIR_PATH}"),
        ]
    );
    assert!(f
        .base
        .has_line("(a downgrade: the running version stays the fallback)"));

    // A later upgrade, still running that version, gives its UKI its plain name back.
    let mut f2 = Fake::new(build(&spec("3.0")));
    let a = f2
        .base
        .files
        .remove(&format!("{UKI_DIR_PATH}/kiln-a.efi"))
        .unwrap();
    f2.base
        .files
        .insert(format!("{UKI_DIR_PATH}/kiln-a+0-0.efi"), a);
    assert_eq!(run_fake(&mut f2, &opts()).0, 0);
    assert_eq!(f2.ukis(), ["kiln-a.efi", "kiln-b+3.efi"]);
}

#[test]
fn arguments() {
    let a = |w: &[&str]| parse_args(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let o = a(&["https://h/x.update", "--reboot", "--tries", "4", "--force"]).unwrap();
    assert_eq!(
        o,
        Options {
            source: "https://h/x.update".into(),
            reboot: true,
            allow_downgrade: false,
            force: true,
            tries: Some(4),
        }
    );
    assert_eq!(a(&["x", "--tries=2"]).unwrap().tries, Some(2));
    assert!(a(&["x", "--allow-downgrade"]).unwrap().allow_downgrade);
    assert!(a(&[]).unwrap_err().contains("no SOURCE"));
    assert!(a(&["x", "y"]).unwrap_err().contains("second one"));
    assert!(a(&["x", "--tries", "0"]).unwrap_err().contains("1 to 100"));
    assert!(a(&["x", "--bogus"]).unwrap_err().contains("unknown option"));
}

/// What the next boot would find after a power cut: a readable table, slot A and its
/// UKI as they were, and a slot B UKI only if slot B holds the root it names.
fn boots_the_old_or_the_new_version(f: &Fake, s: &Spec, before: &[u8], cut: usize) {
    let disk = &f.disk;
    let mut read = |off: u64, len: usize| Ok(disk[off as usize..off as usize + len].to_vec());
    let t = gpt::read_table(&mut read, SS, Some(SECTORS * SS))
        .unwrap_or_else(|e| panic!("cut at {cut}: no readable GPT: {e}"));
    assert_eq!(t.entries[..3], entries()[..3], "cut at {cut}");
    for i in [0, 1, 2] {
        assert!(
            f.disk[range(i)] == before[range(i)],
            "cut at {cut}: partition {i} changed"
        );
    }
    assert_eq!(
        f.base.files.get(&format!("{UKI_DIR_PATH}/kiln-a.efi")),
        Some(&uki(&HASH_A, "1.0")),
        "cut at {cut}"
    );
    for name in f.ukis() {
        if name == "kiln-a.efi" || !name.ends_with(".efi") {
            continue;
        }
        // Anything else systemd-boot could boot must be the new UKI over a whole slot.
        assert_eq!(name, "kiln-b+3.efi", "cut at {cut}");
        assert_eq!(
            f.base.files[&format!("{UKI_DIR_PATH}/{name}")],
            s.uki,
            "cut at {cut}"
        );
        assert_eq!(
            t.entries[3].part_guid,
            hash_guids(&s.root_hash).0,
            "cut at {cut}"
        );
        let rb = range(3);
        assert!(
            f.disk[rb.start..rb.start + s.root.len()] == s.root[..],
            "cut at {cut}"
        );
    }
}

#[test]
fn a_power_cut_at_any_effect_leaves_a_node_that_boots() {
    let s = spec("2.0");
    let mut whole = Fake::new(build(&s));
    assert_eq!(run_fake(&mut whole, &opts()).0, 0);
    let total = whole.effects;
    assert!(total > 10, "{total}");
    let mut installed = 0;
    for cut in 1..=total {
        let mut f = Fake::new(build(&s));
        f.cut_at = Some(cut);
        let before = f.disk.clone();
        let (code, err) = run_fake(&mut f, &opts());
        assert_eq!(code, 1, "cut at {cut}");
        assert!(err.contains("the power is gone"), "cut at {cut}: {err}");
        boots_the_old_or_the_new_version(&f, &s, &before, cut);
        installed += usize::from(f.ukis().contains(&"kiln-b+3.efi".to_string()));
    }
    // Only a cut at the very last effect (syncing the folder after the rename) finds
    // the new UKI in place.
    assert_eq!(installed, 1);
}
