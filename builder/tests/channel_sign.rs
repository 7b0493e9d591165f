//! `kiln channel sign` through the real CLI, on a bundle made with the contract's
//! encoder. The document's signature is checked independently: Python takes the
//! signed bytes out of the JSON envelope by the format's description and makes a PEM
//! public key from the `.pub` file, and `openssl pkeyutl` verifies the signature.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln::keygen::{public_path, write_key_files};
use kiln_contract::bundle::{self, BundleFacts, PartDigest};
use kiln_contract::channel;
use kiln_contract::signing::SecretKey;
use sha2::{Digest, Sha256};

/// A fixed issue time (2027-01-15 08:00:00 UTC), as SOURCE_DATE_EPOCH.
const EPOCH: u64 = 1_800_000_000;

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn kiln(args: &[&str], dir: &Path) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .env_remove("KILN_UPDATE_KEY")
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string()))
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

/// A small bundle of three synthetic parts, laid out and signed by the contract.
fn write_bundle(dir: &Path, name: &str, key: &SecretKey, version: &str) -> PathBuf {
    let parts: [Vec<u8>; 3] = [vec![1u8; 10_000], vec![2u8; 5_000], vec![3u8; 7_777]];
    let digests = parts.clone().map(|p| PartDigest {
        size: p.len() as u64,
        sha256: format!("{:x}", Sha256::digest(&p)),
    });
    let facts = BundleFacts {
        image: "homelab".into(),
        arch: "x86_64".into(),
        version: version.into(),
        root_hash: "ab".repeat(32),
        kiln_version: "0.1.0".into(),
        lock_digest: "01".repeat(32),
    };
    let manifest = bundle::plan(facts, digests).unwrap();
    let mut data = bundle::encode_header(&manifest, key).unwrap();
    for (part, bytes) in manifest.parts.iter().zip(&parts) {
        data.resize(part.offset as usize, 0);
        data.extend_from_slice(bytes);
    }
    assert_eq!(data.len() as u64, bundle::total_size(&manifest));
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn setup() -> (tempfile::TempDir, SecretKey) {
    let d = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([0x51; 32]);
    write_key_files(&d.path().join("release.key"), &key, false).unwrap();
    std::fs::create_dir(d.path().join("out")).unwrap();
    (d, key)
}

/// Reads the envelope by the format's description, writes the signed message, the
/// signature and a PEM public key (from the `.pub` text) for openssl; prints the
/// document's fields.
const CHECKER: &str = r#"
import base64, hashlib, json, sys
doc_path, pub, outdir = sys.argv[1:]
env = json.load(open(doc_path))
assert sorted(env) == ["document", "format", "key_id", "signature"], sorted(env)
assert env["format"] == 1
document = env["document"].encode()
open(outdir + "/msg", "wb").write(b"kiln-update-channel-v1\0" + document)
sig = base64.b64decode(env["signature"], validate=True)
assert len(sig) == 64
open(outdir + "/sig", "wb").write(sig)
word, key_b64 = open(pub).read().split()[:2]
raw_key = base64.b64decode(key_b64, validate=True)
assert hashlib.sha256(raw_key).digest()[:8].hex() == env["key_id"], "key id"
der = bytes.fromhex("302a300506032b6570032100") + raw_key
pem = "-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(der).decode() + "\n-----END PUBLIC KEY-----\n"
open(outdir + "/pub.pem", "w").write(pem)
d = json.loads(document)
print(list(d))
print(d["image"], d["arch"], d["version"], d["url"], d["size"], d["issued"], d["expires"])
"#;

#[test]
fn sign_writes_a_document_openssl_verifies_beside_the_bundle() {
    let (d, key) = setup();
    let bundle = write_bundle(
        &d.path().join("out"),
        "homelab-x86_64.update",
        &key,
        "1.4.0",
    );
    let len = std::fs::metadata(&bundle).unwrap().len();
    let out = kiln(
        &[
            "channel",
            "sign",
            "--update-key",
            "release.key",
            "--bundle",
            "out/homelab-x86_64.update",
            "--url",
            "homelab-x86_64.update",
            "--expires",
            "7d",
        ],
        d.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc_path = d.path().join("out/homelab-x86_64.channel.json");
    assert!(
        stdout.starts_with("out/homelab-x86_64.channel.json: homelab x86_64 version 1.4.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expires 2027-01-22 08:00:00 UTC"),
        "{stdout}"
    );

    let check = tempfile::tempdir().unwrap();
    let py = run(Command::new("python3")
        .arg("-c")
        .arg(CHECKER)
        .arg(&doc_path)
        .arg(public_path(&d.path().join("release.key")))
        .arg(check.path()));
    let printed = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "python: {printed}{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines[0],
        "['image', 'arch', 'version', 'url', 'size', 'issued', 'expires']"
    );
    assert_eq!(
        lines[1],
        format!(
            "homelab x86_64 1.4.0 homelab-x86_64.update {len} {EPOCH} {}",
            EPOCH + 7 * 86_400
        )
    );
    support::assert_openssl_verifies(check.path());

    // kiln's reader agrees, and refuses it once expired.
    let text = std::fs::read_to_string(&doc_path).unwrap();
    let opened = channel::open(&text, &[key.public()], EPOCH + 60).unwrap();
    assert_eq!(opened.doc.size, len);
    assert!(matches!(
        channel::open(&text, &[key.public()], EPOCH + 7 * 86_400),
        Err(channel::ChannelError::Expired { .. })
    ));
    // Signing again gives the same bytes (a fixed SOURCE_DATE_EPOCH).
    let again = kiln(
        &[
            "channel",
            "sign",
            "--update-key",
            "release.key",
            "--bundle",
            "out/homelab-x86_64.update",
            "--url",
            "homelab-x86_64.update",
            "--expires",
            "7d",
            "--out",
            "again.json",
        ],
        d.path(),
    );
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(d.path().join("again.json")).unwrap(),
        text
    );
}

fn sign_args<'a>(bundle: &'a str, url: &'a str, expires: &'a str) -> Vec<&'a str> {
    vec![
        "channel",
        "sign",
        "--update-key",
        "release.key",
        "--bundle",
        bundle,
        "--url",
        url,
        "--expires",
        expires,
        "--out",
        "doc.json",
    ]
}

#[test]
fn bad_input_is_refused_in_one_line_and_writes_nothing() {
    let (d, key) = setup();
    write_bundle(d.path(), "good.update", &key, "1.4.0");
    write_bundle(
        d.path(),
        "other-key.update",
        &SecretKey::from_seed([0x52; 32]),
        "1.4.0",
    );
    let mut data = std::fs::read(d.path().join("good.update")).unwrap();
    data.truncate(data.len() - 1);
    std::fs::write(d.path().join("short.update"), data).unwrap();
    std::fs::write(d.path().join("not.update"), b"hello, world, this is not it").unwrap();

    let cases: [(&str, &str, &str, &str); 7] = [
        (
            "other-key.update",
            "x.update",
            "7d",
            "which this node does not trust",
        ),
        ("short.update", "x.update", "7d", "it is truncated"),
        ("not.update", "x.update", "7d", "not a kiln update bundle"),
        ("missing.update", "x.update", "7d", "opening the bundle"),
        (
            "good.update",
            "x.update",
            "91d",
            "valid for 1 minute to 90 days",
        ),
        (
            "good.update",
            "x.update",
            "soon",
            "valid for 1 minute to 90 days",
        ),
        (
            "good.update",
            "ftp://h/x.update",
            "7d",
            "channel document field url",
        ),
    ];
    for (bundle, url, expires, needle) in cases {
        let out = kiln(&sign_args(bundle, url, expires), d.path());
        let line = error_line(&out);
        assert!(line.contains(needle), "{bundle} {url} {expires}: {line}");
        assert!(!d.path().join("doc.json").exists(), "{line}");
    }
}
