//! Running an image's own programs on the build host, for the tests that
//! check a built root with the tools it ships.
//!
//! The host can be older than the image (a bookworm host building trixie
//! images): its `systemd-analyze` does not know newer unit keys, and newer
//! binaries need a newer C library. So the tests run the image's programs
//! with the image's own dynamic loader and libraries, or, for programs that
//! re-execute themselves (runc), in a chroot of the image's files.

#![allow(dead_code)] // Each test crate uses the part it needs.

pub mod cli;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Copies the folder `from` to `to`, links as links.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &dst);
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), dst).unwrap();
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// Runs `cmd`; fails the test with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// debugfs on an image's root partition.
pub struct Root {
    /// The e2fsprogs device name: `<raw>?offset=<bytes>`.
    pub dev: String,
}

impl Root {
    /// The root of the ext4 at byte `offset` of `raw`.
    pub fn at(raw: &Path, offset: u64) -> Root {
        Root {
            dev: format!("{}?offset={offset}", raw.display()),
        }
    }

    /// The root of `<out>/<stem>.raw`, built with its manifest `<stem>.manifest.json`
    /// beside it (returned too), after e2fsck found its ext4 clean.
    pub fn open_checked(out: &Path, stem: &str) -> (Root, serde_json::Value) {
        let text = std::fs::read_to_string(out.join(format!("{stem}.manifest.json"))).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        let root = Root::at(&out.join(format!("{stem}.raw")), root_offset(&manifest));
        let fsck = Command::new("e2fsck")
            .args(["-fn", &root.dev])
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck {}: {}",
            root.dev,
            String::from_utf8_lossy(&fsck.stdout)
        );
        (root, manifest)
    }

    /// What debugfs prints for `request`.
    pub fn debugfs(&self, request: &str) -> String {
        let out = run(Command::new("debugfs").args(["-R", request, &self.dev]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// debugfs `stat` of `path`, which must exist.
    pub fn stat(&self, path: &str) -> String {
        let s = self.debugfs(&format!("stat {path}"));
        assert!(!s.is_empty(), "{path} is not in the image");
        s
    }

    /// The bytes of `path`, dumped to `to`.
    pub fn dump(&self, path: &str, to: &Path) -> Vec<u8> {
        self.debugfs(&format!("dump -p {path} {}", to.display()));
        std::fs::read(to).unwrap_or_else(|e| panic!("{path} not dumped: {e}"))
    }
}

/// The byte offset of the root partition, from a build manifest.
pub fn root_offset(manifest: &serde_json::Value) -> u64 {
    manifest["disk"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "root")
        .unwrap()["offset"]
        .as_u64()
        .unwrap()
}

/// The x86_64 dynamic loader and library folders inside a Debian root.
const LOADER: &str = "usr/lib64/ld-linux-x86-64.so.2";
const LIBS: &[&str] = &[
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu/systemd",
];

/// A command that runs `program` (a path inside `root`, e.g. `usr/bin/ctr`)
/// through `root`'s x86_64 dynamic loader with `root`'s libraries.
/// `root` holds an unpacked x86_64 Debian root (or packages unpacked with
/// dpkg-deb, including libc6).
pub fn image_command(root: &Path, program: &str) -> Command {
    let loader = root.join(LOADER);
    assert!(
        loader.is_file(),
        "{} missing: is {} an unpacked x86_64 root with libc6?",
        loader.display(),
        root.display()
    );
    let libs: Vec<String> = LIBS
        .iter()
        .map(|l| root.join(l).display().to_string())
        .collect();
    let mut c = Command::new(loader);
    c.arg("--library-path")
        .arg(libs.join(":"))
        .arg(root.join(program.trim_start_matches('/')));
    c
}

/// `systemd-analyze verify` of `units` under `root` (an unpacked image
/// root), with the systemd of `tools` (an unpacked x86_64 root of the same
/// image or of its x86_64 sibling): its output must be empty and its status 0.
pub fn verify_units(tools: &Path, root: &Path, units: &[&str]) {
    let out = image_command(tools, "usr/bin/systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify (the image's systemd) of {units:?}:\n{text}"
    );
}

/// Unpacks the whole root filesystem of `raw` (the ext4 at byte `offset`)
/// into `to` with debugfs: about 250 MiB and a second for a default image.
pub fn dump_root(raw: &Path, offset: u64, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    let dev = format!("{}?offset={offset}", raw.display());
    let out = Command::new("debugfs")
        .args(["-R", &format!("rdump / {}", to.display()), &dev])
        .output()
        .unwrap();
    assert!(
        out.status.success() && to.join("usr/lib").is_dir(),
        "debugfs rdump of {dev} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    to.to_path_buf()
}

/// openssl checks the ed25519 signature `<dir>/sig` of `<dir>/msg` with the
/// PEM public key `<dir>/pub.pem`, and refuses `msg` with one byte changed
/// (so the referee can say no).
pub fn assert_openssl_verifies(dir: &Path) {
    let verify = |msg: &str| {
        Command::new("openssl")
            .args(["pkeyutl", "-verify", "-pubin", "-inkey"])
            .arg(dir.join("pub.pem"))
            .arg("-rawin")
            .arg("-in")
            .arg(dir.join(msg))
            .arg("-sigfile")
            .arg(dir.join("sig"))
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl: {e}"))
    };
    let ok = verify("msg");
    assert!(
        ok.status.success(),
        "openssl refused the signature: {}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let mut msg = std::fs::read(dir.join("msg")).unwrap();
    let at = msg.len() / 2;
    msg[at] ^= 1;
    std::fs::write(dir.join("msg.bad"), msg).unwrap();
    assert!(
        !verify("msg.bad").status.success(),
        "openssl accepted a message one byte off"
    );
}

/// The image's mapped blocks as the builder hands them to the format writers: every
/// 4 KiB block that is not all zero, as ranges of block numbers.
pub fn mapped_blocks(bytes: &[u8]) -> Vec<std::ops::Range<u64>> {
    let mut mapped: Vec<std::ops::Range<u64>> = Vec::new();
    for (i, b) in bytes.chunks(4096).enumerate() {
        if b.iter().any(|&x| x != 0) {
            let i = i as u64;
            match mapped.last_mut() {
                Some(r) if r.end == i => r.end = i + 1,
                _ => mapped.push(i..i + 1),
            }
        }
    }
    mapped
}
