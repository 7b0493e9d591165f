//! The `update` format and `kiln keygen`, checked by independent tools: Python
//! reads the bundle's header, manifest and parts by the format's description
//! (not through kiln's reader) and compares every part with what went in;
//! `openssl pkeyutl` verifies the signature with the public key from the
//! `.pub` file. The `kiln` binary is run for keygen and for the build's key
//! checks, which must fail before any work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::keygen::{public_path, write_key_files};
use kiln::output::formats::update::{self, BundleJob, UpdateError, UpdateSettings};
use kiln::output::formats::FormatError;
use kiln_contract::bundle::{self, BundleFacts};
use kiln_contract::signing::SecretKey;
use kiln_contract::version::ImageVersion;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Pseudo-random bytes (xorshift).
fn noise(len: usize, mut x: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn facts() -> BundleFacts {
    BundleFacts {
        image: "homelab".into(),
        arch: "arm64".into(),
        version: "1.4.0".into(),
        root_hash: "ab".repeat(32),
        kiln_version: "0.1.0".into(),
        lock_digest: "01".repeat(32),
    }
}

/// Synthetic parts: a "raw image" with the root filesystem's bytes at an offset
/// (lengths chosen off the 4096 grid, so padding is exercised), verity and UKI.
struct Parts {
    dir: tempfile::TempDir,
    raw: PathBuf,
    root: std::ops::Range<u64>,
    verity: Vec<u8>,
    uki: Vec<u8>,
}

fn parts() -> Parts {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("img.raw");
    let mut image = noise(3 << 20, 1);
    let root = (1 << 20)..(1 << 20) + 1_234_567;
    // Mark the range's ends so a bundle holding the wrong range cannot match.
    image[root.start as usize] = 0x5a;
    image[root.end as usize - 1] = 0xa5;
    std::fs::write(&raw, &image).unwrap();
    let verity = noise(45_001, 2);
    let uki = noise(70_003, 3);
    std::fs::write(dir.path().join("verity"), &verity).unwrap();
    std::fs::write(dir.path().join("uki"), &uki).unwrap();
    Parts {
        dir,
        raw,
        root,
        verity,
        uki,
    }
}

fn write_bundle(p: &Parts, key: &SecretKey, name: &str) -> PathBuf {
    let out = p.dir.path().join(name);
    let digest = update::write(&BundleJob {
        raw: &p.raw,
        root: p.root.clone(),
        verity: &p.verity,
        uki: &p.uki,
        facts: facts(),
        key,
        out: &out,
    })
    .unwrap();
    assert_eq!(digest.file, name);
    assert_eq!(digest.size, std::fs::metadata(&out).unwrap().len());
    out
}

/// Reads a bundle the way the format describes it, with nothing from kiln:
/// checks the padding, that each part's bytes are the given input's and hash to
/// the manifest's sha256, and that the file ends after the last part; writes the
/// signed message, the signature and a PEM public key (from the `.pub` text) for
/// openssl. Prints "ok" and exits 0, or says what differs and exits 1.
const CHECKER: &str = r#"
import base64, hashlib, json, struct, sys
bundle, raw, root_start, root_end, verity, uki, pub, outdir = sys.argv[1:]
data = open(bundle, "rb").read()
assert data[:8] == b"KILNUPD1", "magic"
header_size, manifest_len = struct.unpack("<II", data[8:16])
assert header_size % 4096 == 0, "header size"
manifest = data[88:88 + manifest_len]
assert data[88 + manifest_len:header_size] == bytes(header_size - 88 - manifest_len), "padding"
m = json.loads(manifest)
assert list(m) == ["format", "image", "arch", "version", "root_hash", "kiln_version",
                   "lock_digest", "header_size", "parts"], list(m)
assert m["header_size"] == header_size
raw_data = open(raw, "rb").read()
want = {
    "root": raw_data[int(root_start):int(root_end)],
    "root-verity": open(verity, "rb").read(),
    "uki": open(uki, "rb").read(),
}
assert [p["kind"] for p in m["parts"]] == ["root", "root-verity", "uki"]
end = header_size
for p in m["parts"]:
    off, size = p["offset"], p["size"]
    assert off % 4096 == 0 and off >= end, ("placement", p["kind"])
    assert data[end:off] == bytes(off - end), ("gap not zero", p["kind"])
    part = data[off:off + size]
    if part != want[p["kind"]]:
        print("part differs from its input:", p["kind"]); sys.exit(1)
    if hashlib.sha256(part).hexdigest() != p["sha256"]:
        print("sha256 differs:", p["kind"]); sys.exit(1)
    end = off + size
if len(data) != end:
    print("file does not end after the last part"); sys.exit(1)
open(outdir + "/msg", "wb").write(b"kiln-update-bundle-v1\0" + manifest)
open(outdir + "/sig", "wb").write(data[24:88])
word, key_b64 = open(pub).read().split()[:2]
assert word == "kiln-update-ed25519"
raw_key = base64.b64decode(key_b64, validate=True)
assert len(raw_key) == 32
assert hashlib.sha256(raw_key).digest()[:8] == data[16:24], "key id"
der = bytes.fromhex("302a300506032b6570032100") + raw_key
pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der).decode() + "\n-----END PUBLIC KEY-----\n"
open(outdir + "/pub.pem", "w").write(pem)
print("ok")
"#;

fn check_with_python(p: &Parts, bundle: &Path, public: &Path, outdir: &Path) -> Output {
    run(Command::new("python3")
        .arg("-c")
        .arg(CHECKER)
        .arg(bundle)
        .arg(&p.raw)
        .arg(p.root.start.to_string())
        .arg(p.root.end.to_string())
        .arg(p.dir.path().join("verity"))
        .arg(p.dir.path().join("uki"))
        .arg(public)
        .arg(outdir))
}

#[test]
fn bundle_parts_and_signature_pass_python_and_openssl() {
    let p = parts();
    let key_path = p.dir.path().join("signing.key");
    let key = SecretKey::from_seed([0x11; 32]);
    write_key_files(&key_path, &key, false).unwrap();
    let bundle = write_bundle(&p, &key, "homelab-arm64.update");
    let check = tempfile::tempdir().unwrap();
    let out = check_with_python(&p, &bundle, &public_path(&key_path), check.path());
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "python: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    support::assert_openssl_verifies(check.path());
    // And kiln's own reader agrees with the key it was signed with.
    let data = std::fs::read(&bundle).unwrap();
    let header = bundle::open_header(&data, &[key.public()]).unwrap();
    assert_eq!(header.version, ImageVersion::parse("1.4.0").unwrap());
    assert_eq!(bundle::total_size(&header.manifest), data.len() as u64);
}

#[test]
fn a_changed_part_byte_is_caught_by_the_checker() {
    let p = parts();
    let key_path = p.dir.path().join("k");
    let key = SecretKey::from_seed([0x22; 32]);
    write_key_files(&key_path, &key, false).unwrap();
    let bundle = write_bundle(&p, &key, "b.update");
    let mut data = std::fs::read(&bundle).unwrap();
    let at = data.len() - 10;
    data[at] ^= 0x40;
    std::fs::write(&bundle, data).unwrap();
    let check = tempfile::tempdir().unwrap();
    let out = check_with_python(&p, &bundle, &public_path(&key_path), check.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("uki"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_same_inputs_give_the_same_bundle() {
    let p = parts();
    let key = SecretKey::from_seed([0x33; 32]);
    let a = std::fs::read(write_bundle(&p, &key, "a.update")).unwrap();
    let b = std::fs::read(write_bundle(&p, &key, "b.update")).unwrap();
    assert!(a == b, "two bundles of the same inputs differ");
    // Another key: another signature and key id, the same layout and parts.
    let c = std::fs::read(write_bundle(
        &p,
        &SecretKey::from_seed([0x34; 32]),
        "c.update",
    ))
    .unwrap();
    assert_eq!(a.len(), c.len());
    assert_ne!(a[16..88], c[16..88]);
    assert_eq!(a[88..], c[88..]);
}

#[test]
fn a_root_range_outside_the_image_is_refused() {
    let p = parts();
    let out = p.dir.path().join("x.update");
    let err = update::write(&BundleJob {
        raw: &p.raw,
        root: (2 << 20)..(4 << 20),
        verity: &p.verity,
        uki: &p.uki,
        facts: facts(),
        key: &SecretKey::from_seed([1; 32]),
        out: &out,
    })
    .unwrap_err();
    assert!(
        matches!(err, FormatError::Update(UpdateError::RootOutside { .. })),
        "{err}"
    );
    assert!(!out.exists());
}

fn settings(version: &str, keys: &[&SecretKey]) -> UpdateSettings {
    UpdateSettings {
        profile: PathBuf::from("profiles/homelab.toml"),
        version: ImageVersion::parse(version).unwrap(),
        keys: keys.iter().map(|k| k.public()).collect(),
    }
}

#[test]
fn the_signer_must_be_given_and_trusted() {
    let a = SecretKey::from_seed([0xa; 32]);
    let b = SecretKey::from_seed([0xb; 32]);
    let path = Path::new("keys/release.key");
    assert!(update::check_signer(&settings("1.0", &[&b, &a]), Some((path, &a))).is_ok());
    let no_key = update::check_signer(&settings("1.0", &[&a]), None).unwrap_err();
    assert!(matches!(no_key, UpdateError::NoKey));
    assert!(no_key.to_string().contains("--update-key"), "{no_key}");
    let no_version = update::check_signer(&settings("0", &[&a]), Some((path, &a))).unwrap_err();
    assert!(
        matches!(no_version, UpdateError::NoVersion { .. }),
        "{no_version}"
    );
    assert!(
        no_version.to_string().contains("version = "),
        "{no_version}"
    );
    let none = update::check_signer(&settings("1.0", &[]), Some((path, &a))).unwrap_err();
    let msg = none.to_string();
    assert!(
        msg.contains("[update] keys") && msg.contains("keys/release.key.pub"),
        "{msg}"
    );
    let wrong = update::check_signer(&settings("1.0", &[&b]), Some((path, &a))).unwrap_err();
    let msg = wrong.to_string();
    for needle in [
        a.public().id().to_string(),
        b.public().id().to_string(),
        "[update] keys".to_string(),
        "profiles/homelab.toml".to_string(),
    ] {
        assert!(msg.contains(&needle), "{needle:?} missing: {msg}");
    }
    assert!(!msg.contains('\n'), "{msg}");
}

fn kiln(args: &[&str], dir: &Path) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_remove("KILN_UPDATE_KEY"))
}

fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure:\n{stderr}");
    stderr
        .lines()
        .find(|l| l.starts_with("kiln: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
        .to_string()
}

#[test]
fn keygen_writes_the_pair_and_says_what_to_put_in_the_profile() {
    let d = tempfile::tempdir().unwrap();
    let out = kiln(&["keygen", "release.key"], d.path());
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = kiln::keygen::UpdateKey::load(&d.path().join("release.key")).unwrap();
    let id = key.secret.public().id().to_string();
    assert!(stdout.contains(&id), "{stdout}");
    assert!(stdout.contains("keys = [\"release.key.pub\"]"), "{stdout}");
    assert_eq!(
        kiln::keygen::read_public(&d.path().join("release.key.pub")).unwrap(),
        key.secret.public()
    );
    let again = kiln(&["keygen", "release.key"], d.path());
    assert!(error_line(&again).contains("--force"));
    assert_eq!(
        kiln::keygen::UpdateKey::load(&d.path().join("release.key"))
            .unwrap()
            .secret,
        key.secret
    );
    let forced = kiln(&["keygen", "release.key", "--force"], d.path());
    assert!(forced.status.success());
    let new = kiln::keygen::UpdateKey::load(&d.path().join("release.key")).unwrap();
    assert_ne!(new.secret, key.secret);
}

/// A copy of profiles/qemu.toml and its lock in `dir`, trusting `trusted.pub`.
fn profile_trusting(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("profiles/qemu.toml")).unwrap();
    let profile = dir.join("profiles/qemu.toml");
    std::fs::create_dir_all(profile.parent().unwrap()).unwrap();
    // A table header starts a line; "[update]" also appears inside comments.
    let text = if text.contains("\n[update]\n") {
        text.replacen("\n[update]\n", "\n[update]\nkeys = [\"trusted.pub\"]\n", 1)
    } else {
        format!("{text}\n[update]\nkeys = [\"trusted.pub\"]\n")
    };
    std::fs::write(&profile, text).unwrap();
    std::fs::copy(
        repo().join("profiles/qemu.lock"),
        dir.join("profiles/qemu.lock"),
    )
    .unwrap();
    std::os::unix::fs::symlink(repo().join("overlays"), dir.join("overlays")).unwrap();
    write_key_files(
        &dir.join("profiles/trusted"),
        &SecretKey::from_seed([0x71; 32]),
        false,
    )
    .unwrap();
    profile
}

#[test]
fn build_refuses_a_missing_or_untrusted_key_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let profile = profile_trusting(d.path());
    let profile = profile.to_str().unwrap();
    let out_dir = d.path().join("out");
    let out = out_dir.to_str().unwrap();
    // An empty cache: a build that got as far as fetching would fail differently.
    let cache = d.path().join("cache");
    let cache = cache.to_str().unwrap();
    let args = ["--cache", cache, "build", profile, "--arch", "x86_64"];
    let no_key = kiln(
        &[&args[..], &["--format", "raw,update", "--out", out]].concat(),
        d.path(),
    );
    assert!(error_line(&no_key).contains("--update-key"));
    let other = SecretKey::from_seed([0x72; 32]);
    write_key_files(&d.path().join("other.key"), &other, false).unwrap();
    let untrusted = kiln(
        &[
            &args[..],
            &[
                "--format",
                "update",
                "--update-key",
                "other.key",
                "--out",
                out,
            ],
        ]
        .concat(),
        d.path(),
    );
    let line = error_line(&untrusted);
    let trusted = SecretKey::from_seed([0x71; 32]).public().id().to_string();
    for needle in [
        other.public().id().to_string(),
        trusted,
        "[update] keys".into(),
    ] {
        assert!(line.contains(&needle), "{needle:?} missing: {line}");
    }
    assert!(!out_dir.exists(), "the build wrote into {out}");
    assert!(
        !d.path().join("cache").exists(),
        "the build touched the cache"
    );
}
