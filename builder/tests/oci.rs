//! OCI image archives built from the real busybox-static package of the
//! default profile's lock, checked by independent tools: `tar -tvf`,
//! `sha256sum` of every blob, `skopeo inspect oci-archive:` and
//! `umoci unpack`, whose rootfs then runs busybox on this machine; and
//! imported by the real `kiln-agent images import` into a real containerd
//! (1.7 from the default lock, 2.1 from the kubeadm profile's), where `ctr`
//! runs it. The packages come from the kiln cache (downloaded and verified
//! against the lock if missing).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::arch::Arch;
use kiln::fetch::{Cache, FetchContext, Fetched, HttpDownloader};
use kiln::lock::{Lockfile, Sources};
use kiln::oci::{self, ImageSpec, OciArchive, PackageSource};
use kiln::profile::Profile;
use kiln::tree::{FileTree, Kind};
use kiln::unpack::{self, Glob, InsertRules};

const EPOCH: i64 = 1_700_000_000;
/// The tag follows the busybox version of the lock (it only names the image).
const REF: &str = "localhost/kiln/busybox:1.37";
const TAG: &str = "1.37";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {shown} ({e}): run scripts/deps.sh (Debian packages skopeo, umoci, tar)")
    });
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The default profile's locked packages named `names` for `arch`,
/// verified in the cache (downloaded if missing).
fn locked(arch: Arch, names: &[&str]) -> Vec<Fetched> {
    locked_in("qemu", arch, names)
}

/// The packages named `names` for `arch` of profile `profile`'s lock,
/// verified in the cache (downloaded if missing).
fn locked_in(profile: &str, arch: Arch, names: &[&str]) -> Vec<Fetched> {
    let lock_path = repo().join(format!("profiles/{profile}.lock"));
    let profile = repo().join(format!("profiles/{profile}.toml"));
    let lock = Lockfile::read(&lock_path).unwrap();
    let cache = Cache::from_env().unwrap();
    let sources = Sources::from_host().unwrap();
    let downloader = HttpDownloader::new();
    let pb = indicatif::ProgressBar::hidden();
    let ctx = FetchContext {
        cache: &cache,
        sources: &sources,
        downloader: &downloader,
        profile: &profile,
        progress: &pb,
    };
    let out: Vec<Fetched> = lock
        .packages_for(arch, None)
        .filter(|p| names.contains(&p.name.as_str()))
        .map(|p| Fetched {
            package: p.clone(),
            path: ctx.fetch(p).unwrap(),
        })
        .collect();
    assert_eq!(
        out.len(),
        names.len(),
        "{names:?} not all in {}",
        lock_path.display()
    );
    out
}

/// The lock's busybox-static for `arch`.
fn fetched(arch: Arch) -> Vec<Fetched> {
    locked(arch, &["busybox-static"])
}

fn busybox_spec() -> ImageSpec {
    let toml = format!(
        r#"
ref = "{REF}"
packages = ["busybox-static"]
cmd = ["/bin/busybox", "echo", "ok"]
env = {{ GREETING = "hello" }}
workdir = "/"
"#
    );
    let file: kiln::profile::dto::ContainerImageFile = toml::from_str(&toml).unwrap();
    oci::validate_images(&[file]).unwrap().remove(0)
}

fn rules() -> InsertRules {
    InsertRules {
        exclude: vec![Glob::new("usr/share/doc/**"), Glob::new("usr/share/man/**")],
        prefer: Default::default(),
    }
}

/// Builds the busybox image for `arch` into a fresh root; returns the root and the archive.
fn build(arch: Arch) -> (FileTree, OciArchive) {
    let fetched = fetched(arch);
    let mut root = FileTree::new(EPOCH);
    let mut built = oci::add_to_root(
        &mut root,
        &[busybox_spec()],
        PackageSource {
            fetched: &fetched,
            profile: Path::new("profiles/qemu.toml"),
            lock: Path::new("profiles/qemu.lock"),
        },
        &rules(),
        arch,
        EPOCH,
    )
    .unwrap();
    (root, built.remove(0))
}

#[test]
fn busybox_archive_passes_tar_sha256sum_skopeo_and_umoci() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, a) = build(Arch::X86_64);

    // In the root: the archive and the list the unit reads.
    let name = format!("localhost_kiln_busybox_{TAG}.oci.tar");
    let in_root = root.read(&format!("{}/{name}", oci::IMAGES_DIR)).unwrap();
    assert_eq!(&*in_root, &a.bytes[..]);
    assert_eq!(
        &*root.read(oci::LIST_FILE).unwrap(),
        format!("{name} {REF}\n").as_bytes()
    );
    let node = root.get(&format!("{}/{name}", oci::IMAGES_DIR)).unwrap();
    assert_eq!((node.mode, node.uid, node.gid), (0o644, 0, 0));
    assert!(matches!(node.kind, Kind::File(_)));

    // Same inputs, same bytes.
    assert_eq!(build(Arch::X86_64).1.bytes, a.bytes, "rebuild differs");

    let file = tmp.path().join(&name);
    std::fs::write(&file, &a.bytes).unwrap();

    // tar lists the layout with fixed owners and times.
    let listing = run(Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvf"])
        .arg(&file));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 7, "{listing}");
    for l in &lines {
        assert!(l.contains(" 0/0 "), "owner: {l}");
        assert!(l.contains("2023-11-14 22:13:20"), "time: {l}");
    }
    let paths: Vec<&str> = lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(paths[0], "blobs/");
    assert_eq!(paths[1], "blobs/sha256/");
    assert_eq!(&paths[5..], ["index.json", "oci-layout"]);

    // Every blob's sha256 (by coreutils) is its name.
    let layout = tmp.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(&layout));
    let sums = run(Command::new("sh")
        .arg("-c")
        .arg("cd blobs/sha256 && sha256sum *")
        .current_dir(&layout));
    let mut n = 0;
    for l in sums.lines() {
        let (sum, name) = l.split_once("  ").unwrap();
        assert_eq!(sum, name, "blob content does not match its name");
        n += 1;
    }
    assert_eq!(n, 3);

    // The layer lists /bin as merged-usr link and busybox from the package.
    let layer_blob = layout
        .join("blobs/sha256")
        .join(a.layer.digest.trim_start_matches("sha256:"));
    let layer_list = run(Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(&layer_blob));
    assert!(
        layer_list.lines().any(|l| l.ends_with(" bin -> usr/bin")),
        "{layer_list}"
    );
    assert!(
        layer_list
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x 0/0") && l.ends_with(" usr/bin/busybox")),
        "{layer_list}"
    );
    // exclude_paths drop the files (empty folders stay, as in the root).
    assert!(
        !layer_list
            .lines()
            .any(|l| l.starts_with('-') && l.contains("usr/share/doc/")),
        "{layer_list}"
    );

    // skopeo reads the archive like a registry client would.
    let inspect = run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", file.display())));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Digest"], a.manifest.digest.as_str());
    assert_eq!(v["Layers"][0], a.layer.digest.as_str());
    assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
    let config = run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", file.display())));
    let c: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(
        c["config"]["Cmd"],
        serde_json::json!(["/bin/busybox", "echo", "ok"])
    );
    assert_eq!(c["rootfs"]["diff_ids"][0], a.diff_id.as_str());

    // umoci finds the tag, checks the digests and unpacks a runnable bundle.
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{TAG}", layout.display()))
        .arg(&bundle));
    let rt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        rt["process"]["args"],
        serde_json::json!(["/bin/busybox", "echo", "ok"])
    );
    let env = rt["process"]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e == "GREETING=hello"), "{env:?}");
    let rootfs = bundle.join("rootfs");
    let out = run(Command::new(rootfs.join("bin/busybox")).args(["echo", "ok"]));
    assert_eq!(out, "ok\n");
    // The applet a container's `sh -c` needs.
    let out = run(Command::new(rootfs.join("bin/busybox")).args(["sh", "-c", "echo from-sh"]));
    assert_eq!(out, "from-sh\n");
}

#[test]
fn arm64_archive_is_arm64_for_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, a) = build(Arch::Arm64);
    let file = tmp.path().join("bb.oci.tar");
    std::fs::write(&file, &a.bytes).unwrap();
    let inspect = run(Command::new("skopeo")
        .args(["--override-arch", "arm64", "inspect"])
        .arg(format!("oci-archive:{}", file.display())));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Architecture"], "arm64");
    assert_eq!(v["Digest"], a.manifest.digest.as_str());
    // The arm64 busybox really is an aarch64 ELF.
    let layer_blob = a.layer.digest.trim_start_matches("sha256:").to_string();
    let dir = tmp.path().join("x");
    std::fs::create_dir(&dir).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&file)
        .arg("-C")
        .arg(&dir));
    let rootfs = dir.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(dir.join("blobs/sha256").join(layer_blob))
        .arg("-C")
        .arg(&rootfs));
    let elf = std::fs::read(rootfs.join("usr/bin/busybox")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([elf[18], elf[19]]),
        183,
        "e_machine EM_AARCH64"
    );
}

#[test]
fn package_missing_from_the_lock_is_named() {
    let fetched = fetched(Arch::X86_64);
    let mut spec = busybox_spec();
    spec.packages = vec!["busybox-static".into(), "hello".into()];
    let mut root = FileTree::new(EPOCH);
    let e = oci::add_to_root(
        &mut root,
        &[spec],
        PackageSource {
            fetched: &fetched,
            profile: Path::new("profiles/qemu.toml"),
            lock: Path::new("profiles/qemu.lock"),
        },
        &rules(),
        Arch::X86_64,
        EPOCH,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("package \"hello\" is not in the lock profiles/qemu.lock for x86_64"),
        "{e}"
    );
    assert!(e.contains("kiln lock profiles/qemu.toml"), "{e}");
    assert!(
        root.get(oci::LIST_FILE).is_none(),
        "nothing written on error"
    );
}

#[test]
fn bad_entries_in_a_profile_name_the_field() {
    let shipped = std::fs::read_to_string(repo().join("profiles/qemu.toml")).unwrap();
    // The shipped profile without its own image (its last table), so the one
    // below is container_image[0].
    let base = match shipped.find("\n[[container_image]]") {
        Some(at) => {
            let rest = &shipped[at + 1..];
            assert!(
                !rest
                    .lines()
                    .skip(1)
                    .any(|l| l.starts_with('[') && !l.starts_with("[[container_image]]")),
                "profiles/qemu.toml: [[container_image]] is expected to be the last table"
            );
            shipped[..=at].to_string()
        }
        None => shipped,
    };
    let overlays = repo().join("overlays");
    let good = format!(
        "{base}\n[[container_image]]\nref = \"{REF}\"\npackages = [\"busybox-static\"]\n\
         cmd = [\"/bin/busybox\", \"sh\"]\n"
    );
    let p = Profile::parse(Path::new("qemu.toml"), &good, &overlays).unwrap();
    assert_eq!(p.container_images.len(), 1);
    assert_eq!(p.container_images[0].reference.to_string(), REF);
    for (bad, field) in [
        (
            good.replace(REF, &format!("busybox:{TAG}")),
            "container_image[0].ref",
        ),
        (
            good.replace(REF, "localhost/kiln/busybox"),
            "container_image[0].ref",
        ),
        (
            good.replace("[\"busybox-static\"]", "[]"),
            "container_image[0].packages",
        ),
    ] {
        let e = Profile::parse(Path::new("qemu.toml"), &bad, &overlays)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("qemu.toml: field `") && e.contains(field),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }
    let e = Profile::parse(
        Path::new("qemu.toml"),
        &good.replace("cmd = ", "command = "),
        &overlays,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("command"), "unknown field named: {e}");
}

#[test]
fn layer_entries_keep_package_modes() {
    let fetched = fetched(Arch::X86_64);
    let deb = unpack::read_deb(&fetched[0].path, "busybox-static").unwrap();
    let layer = oci::layer_tree(vec![deb], &rules(), EPOCH).unwrap();
    let bb = layer.get("usr/bin/busybox").unwrap();
    assert_eq!((bb.mode, bb.uid, bb.gid, bb.mtime), (0o755, 0, 0, EPOCH));
}

/// The agent the unit runs, the static x86_64 build (`make agent`), which
/// runs on this machine too.
fn agent() -> PathBuf {
    kiln::build::AgentSource::from_env()
        .locate(Arch::X86_64)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn images_unit_verifies_and_imports_every_listed_archive() {
    let unit_path = repo().join("overlays/base/root/usr/lib/systemd/system/kiln-images.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for want in [
        "After=containerd.service",
        "Requires=containerd.service",
        "Type=oneshot",
        "StandardOutput=journal+console",
        "WantedBy=multi-user.target",
        "ExecStart=/usr/bin/kiln-agent images import",
        &format!("ConditionPathExists=/{}", oci::LIST_FILE),
    ] {
        assert!(unit.lines().any(|l| l == want), "{want} missing");
    }

    // systemd's own parser accepts the unit (with the agent where this
    // machine has it: verify wants the program to exist).
    let tmp = tempfile::tempdir().unwrap();
    let units = tmp.path().join("units");
    std::fs::create_dir(&units).unwrap();
    let agent = agent();
    std::fs::write(
        units.join("kiln-images.service"),
        unit.replace("/usr/bin/kiln-agent", agent.to_str().unwrap()),
    )
    .unwrap();
    std::fs::write(
        units.join("containerd.service"),
        "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    run(Command::new("systemd-analyze")
        .args(["verify", "./kiln-images.service"])
        .current_dir(&units));

    import_and_run("qemu", tmp.path());
}

/// The same import into containerd 2.1 (forky's, profiles/kubeadm.toml).
#[test]
fn images_import_into_containerd_2() {
    let tmp = tempfile::tempdir().unwrap();
    import_and_run("kubeadm", tmp.path());
}

/// `kiln-agent images import` with the real agent against a real containerd
/// from `profile`'s lock, in `dir`: the busybox archive is imported into
/// k8s.io, labelled for containerd's garbage collector (which then keeps it),
/// listed by containerd's CRI (`kiln-agent images list`, what the QEMU boot
/// test asks in the image) and runs; a broken archive is reported by name and
/// fails the import without stopping the others; a second import (the next
/// boot) succeeds and leaves one image.
fn import_and_run(profile: &str, dir: &Path) {
    let (root, a) = build(Arch::X86_64);
    let images = dir.join("images");
    std::fs::create_dir(&images).unwrap();
    for (path, node) in root.descendants(oci::IMAGES_DIR) {
        if let Kind::File(data) = &node.kind {
            std::fs::write(images.join(kiln::tree::file_name(path)), data).unwrap();
        }
    }
    let good = std::fs::read_to_string(images.join("images.list")).unwrap();
    let list = images.join("images.list");
    std::fs::write(
        &list,
        format!("broken.oci.tar localhost/kiln/broken:1\n{good}"),
    )
    .unwrap();
    let broken = images.join("broken.oci.tar");
    std::fs::write(&broken, b"not a tar file").unwrap();

    let ctrd = Containerd::start(profile, dir);
    let import = || {
        let out = Command::new(agent())
            .args(["images", "import", "--list"])
            .arg(&list)
            .arg("--socket")
            .arg(&ctrd.socket)
            .arg("--root")
            .arg(dir.join("root"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (code, stdout, stderr) = import();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert_eq!(lines.len(), 2, "{stdout}{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "kiln-images: ERROR: localhost/kiln/broken:1: {}: not a valid tar archive",
            broken.display()
        )),
        "{stdout}"
    );
    assert_eq!(lines[1], format!("kiln-images: imported {REF}"), "{stdout}");
    // The blobs went into containerd's content store folder, read-only as
    // containerd keeps its own.
    let blob = dir
        .join("root/io.containerd.content.v1.content/blobs/sha256")
        .join(a.layer.digest.trim_start_matches("sha256:"));
    let meta = std::fs::metadata(&blob).unwrap();
    assert_eq!(meta.len(), a.layer.size);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o444
    );

    let ctr = |args: &[&str]| run(ctrd.command("ctr").args(["-n", "k8s.io"]).args(args));
    // One image; containerd's CRI names it by its ID (the config's digest) too,
    // as it does every image in k8s.io.
    let names = || {
        let listed = ctr(&["images", "ls", "-q"]);
        let names: Vec<String> = listed
            .lines()
            .filter(|l| *l != a.config.digest)
            .map(String::from)
            .collect();
        assert_eq!(names, [REF], "{listed}");
    };
    names();
    // The image is this archive's manifest, as `ctr images import` names it.
    let long = ctr(&["images", "ls"]);
    assert!(long.contains(&a.manifest.digest), "{long}");
    // The manifest holds its config and layer for the garbage collector.
    let content = ctr(&["content", "ls"]);
    let manifest_line = content
        .lines()
        .find(|l| l.starts_with(&a.manifest.digest))
        .unwrap_or_else(|| panic!("manifest not in k8s.io:\n{content}"));
    for label in [
        format!("containerd.io/gc.ref.content.config={}", a.config.digest),
        format!("containerd.io/gc.ref.content.l.0={}", a.layer.digest),
    ] {
        assert!(manifest_line.contains(&label), "{label}: {manifest_line}");
    }
    // The import's lease is gone.
    let leases = ctr(&["leases", "ls", "-q"]);
    assert_eq!(leases.trim(), "", "{leases}");
    // So containerd's garbage collector decides: it keeps what the image refers
    // to, in the namespace and on disk, and takes a blob nothing refers to
    // (`images rm --sync` runs a collection and waits for it).
    run(ctrd
        .command("sh")
        .args(["-c", "printf stray | ctr -n k8s.io content ingest stray"]));
    ctr(&["images", "tag", REF, "localhost/kiln/gc:1"]);
    ctr(&["images", "rm", "--sync", "localhost/kiln/gc:1"]);
    let content = ctr(&["content", "ls", "-q"]);
    let blobs = dir.join("root/io.containerd.content.v1.content/blobs/sha256");
    for d in [&a.manifest.digest, &a.config.digest, &a.layer.digest] {
        assert!(content.lines().any(|l| l == d), "{d} collected:\n{content}");
        assert!(blobs.join(d.trim_start_matches("sha256:")).is_file(), "{d}");
    }
    let stray = oci::digest(b"stray");
    assert!(
        !content.contains(&stray),
        "the collector did not run:\n{content}"
    );
    assert!(!blobs.join(stray.trim_start_matches("sha256:")).exists());

    // containerd's CRI, what the kubelet asks, has it under its name and ID
    // (it learns of the image from containerd's events: ask until it lists it).
    let want = format!("{REF} {} ", a.config.digest);
    let mut cri = String::new();
    for _ in 0..50 {
        cri = run(Command::new(agent())
            .args(["images", "list", "--socket"])
            .arg(&ctrd.socket));
        if cri.lines().any(|l| l.starts_with(&want)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(cri.lines().any(|l| l.starts_with(&want)), "{cri}");

    // It runs: ctr unpacks it first, as the CRI does. (The container names
    // differ per test: the two tests' containerds share the host's cgroups,
    // which ctr names after namespace and container.)
    let marker = run(ctrd
        .command("ctr")
        .args(["-n", "k8s.io", "run", "--rm"])
        .args(ctrd.fifo_dir())
        .args([REF, &format!("{profile}-t1")])
        .args(["/bin/busybox", "sh", "-c", "echo marker-$(uname -m)"]));
    assert_eq!(marker, "marker-x86_64\n");

    // The next boot imports the same archive again.
    std::fs::write(&list, &good).unwrap();
    let (code, stdout, stderr) = import();
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(stdout, format!("kiln-images: imported {REF}\n"), "{stderr}");
    names();
    // The image's own Cmd.
    let ok = run(ctrd
        .command("ctr")
        .args(["-n", "k8s.io", "run", "--rm"])
        .args(ctrd.fifo_dir())
        .args([REF, &format!("{profile}-t2")]));
    assert_eq!(ok, "ok\n");
}

/// A containerd from a profile's locked containerd and runc packages
/// (unpacked with dpkg-deb), with its state in a temp folder (its root
/// `<dir>/root`, its socket `<dir>/c.sock`); stopped on drop.
///
/// containerd, its shim and runc run in a chroot of those packages and the
/// C library they link (in a private mount namespace with /proc, /sys, /dev
/// and the temp folder bound in): the image's runc can need a newer C
/// library than the build host's, and it re-executes itself for `runc
/// init`, so the dynamic-loader trick the other tests use does not work for
/// it. ctr runs on the host and talks to the socket in the temp folder.
struct Containerd {
    child: std::process::Child,
    path: String,
    socket: PathBuf,
}

impl Containerd {
    fn start(profile: &str, dir: &Path) -> Containerd {
        let sysroot = dir.join("sysroot");
        for f in locked_in(
            profile,
            Arch::X86_64,
            &["containerd", "runc", "libc6", "libseccomp2"],
        ) {
            run(Command::new("dpkg-deb")
                .arg("-x")
                .arg(&f.path)
                .arg(&sysroot));
        }
        let inside = sysroot.join(dir.strip_prefix("/").unwrap());
        for d in ["proc", "sys", "dev", "run", "tmp"] {
            std::fs::create_dir_all(sysroot.join(d)).unwrap();
        }
        // Merged /usr's top-level links (base-files makes them in an image):
        // the loader programs name is /lib64/ld-linux-x86-64.so.2.
        for l in ["bin", "sbin", "lib", "lib64"] {
            if !sysroot.join(l).exists() {
                std::os::unix::fs::symlink(format!("usr/{l}"), sysroot.join(l)).unwrap();
            }
        }
        std::fs::create_dir_all(&inside).unwrap();
        let socket = dir.join("c.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\naddress = \"{1}\"\n",
                dir.display(),
                socket.display()
            ),
        )
        .unwrap();
        let path = format!(
            "{0}/usr/bin:{0}/usr/sbin:{1}",
            sysroot.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let script = format!(
            "set -e; mount --bind '{r}' '{r}'; \
             for d in proc sys dev; do mount --rbind /$d '{r}/'$d; done; \
             mount --bind '{d}' '{i}'; \
             exec chroot '{r}' /usr/bin/containerd --config '{c}'",
            r = sysroot.display(),
            d = dir.display(),
            i = inside.display(),
            c = config.display(),
        );
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        // The sysroot is bound onto itself so that its / is a mount point,
        // which runc needs to set the container's mount propagation.
        // unshare execs (no --fork), so the child is containerd itself.
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(&script)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            child,
            path,
            socket,
        };
        for _ in 0..100 {
            if c.command("ctr")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default();
        panic!(
            "containerd did not answer within 20 s (it needs root, mount namespaces and overlayfs):\n{log}"
        );
    }

    /// `ctr run`'s option for its stdio fifos: in the temp folder, the same
    /// path for ctr on the host and the shim in the chroot.
    fn fifo_dir(&self) -> [String; 2] {
        let dir = self.socket.with_file_name("fifo");
        ["--fifo-dir".into(), dir.display().to_string()]
    }

    /// A command that finds ctr and runc and talks to this containerd.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("PATH", &self.path)
            .env("CONTAINERD_ADDRESS", &self.socket);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
