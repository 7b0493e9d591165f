//! The images the tests boot and check, built once per distinct set of inputs and kept
//! between runs in a cache outside the clone.
//!
//! A cache entry is keyed by everything the image is made of: the builder (its sources,
//! `Cargo.lock`, the workspace manifest and the Rust compiler, which together make the
//! code that runs the build), the agent binary for the arch, the profile and its lock,
//! the overlays, a replaced artifact's bytes, the build flags (arch, formats, debug shell,
//! appended command line), `SOURCE_DATE_EPOCH`, and `qemu-img`'s version when a qcow2 is
//! made. Any change gives another key and so another entry; an entry is only trusted
//! after every file in it hashes to the sha256 recorded when it was built, so a damaged
//! or half-written entry is found, removed and built again, never used.
//!
//! The cache lives in `$KILN_TEST_IMAGE_CACHE`, else `<kiln cache>/test-images` (the
//! package cache's folder, see `kiln --help`). Entries unused for a week are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use kiln::arch::Arch;
use kiln::output::manifest::{sha256_file as manifest_sha256_file, sha256_hex};

use crate::repo_root;

mod update;
pub use update::{
    update_hostname, update_image, update_test_key, update_test_key_pub, UpdateBuild,
};

/// A built image and its manifest.
#[derive(Debug, Clone)]
pub struct Built {
    /// The raw disk image.
    pub image: PathBuf,
    /// manifest.json beside it.
    pub manifest: PathBuf,
}

impl Built {
    /// The output beside the raw image whose name ends in `suffix`
    /// (`.qcow2`, `.vhd`, `.raw.zst`, `.raw.bmap`, `.gce.tar.gz`).
    pub fn output(&self, suffix: &str) -> PathBuf {
        let name = self
            .image
            .file_name()
            .map(|n| n.to_string_lossy().trim_end_matches(".raw").to_string())
            .unwrap_or_default();
        self.image.with_file_name(format!("{name}{suffix}"))
    }
}

/// One image the tests need: which profile, which arch, how it is built.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Spec {
    /// Profile path relative to the repository root.
    pub(crate) profile: String,
    pub(crate) arch: Arch,
    pub(crate) all_formats: bool,
    pub(crate) debug_shell: bool,
    pub(crate) append_cmdline: Vec<String>,
    /// A local file standing in for the profile's artifact of this name.
    pub(crate) artifact: Option<(String, PathBuf)>,
    /// One of the update tests' versions of profiles/qemu.toml.
    pub(crate) update: Option<UpdateBuild>,
}

type Slot = Arc<Mutex<Option<Built>>>;
static BUILDS: OnceLock<Mutex<BTreeMap<Spec, Slot>>> = OnceLock::new();

/// `profiles/qemu.toml` for `arch` with the debug shell on the serial
/// console (`kiln build --debug-shell`), `kiln.hostname=`[`cmdline_hostname`]
/// and `kiln.var_min=1T` (so /var stays on a tmpfs) on the kernel command line; raw only.
pub fn default_image(arch: Arch) -> anyhow::Result<Built> {
    build_once(Spec {
        profile: "profiles/qemu.toml".into(),
        arch,
        all_formats: false,
        debug_shell: true,
        // var_min beyond any disk: the image's free space would hold var, but the boots of
        // this image keep /var on a tmpfs, so the profile's fallback stays proven (var.rs
        // boots the plain image, which creates var).
        append_cmdline: vec![
            format!("kiln.hostname={}", cmdline_hostname(arch)),
            "kiln.var_min=1T".to_string(),
        ],
        artifact: None,
        update: None,
    })
}

/// The hostname [`default_image`] puts on its kernel command line:
/// `cmdline-x86-64` or `cmdline-arm64` (RFC 1123 labels have no `_`).
pub fn cmdline_hostname(arch: Arch) -> String {
    format!("cmdline-{}", arch.name().replace('_', "-"))
}

/// `profiles/qemu.toml` for `arch` as the profile says (no debug shell, no
/// extra command line) in every output format; the other formats sit beside the raw
/// image ([`Built::output`]).
pub fn image_with_all_formats(arch: Arch) -> anyhow::Result<Built> {
    build_once(Spec {
        profile: "profiles/qemu.toml".into(),
        arch,
        all_formats: true,
        debug_shell: false,
        append_cmdline: Vec::new(),
        artifact: None,
        update: None,
    })
}

/// Another profile (`profiles/homelab.toml`, `profiles/cloud.toml`, given
/// relative to the repository root) for `arch` as it says, raw only.
pub fn profile_image(profile: &str, arch: Arch) -> anyhow::Result<Built> {
    build_once(Spec {
        profile: profile.into(),
        arch,
        all_formats: false,
        debug_shell: false,
        append_cmdline: Vec::new(),
        artifact: None,
        update: None,
    })
}

/// `profiles/k3s.toml` for `arch` with the debug shell and `kiln.hostname=<hostname>`,
/// its k3s artifact taken from the local file `k3s` (pinned by that file's sha256: the
/// profile's own download is unreachable here), raw only.
pub fn k3s_image(arch: Arch, k3s: &Path, hostname: &str) -> anyhow::Result<Built> {
    build_once(Spec {
        profile: "profiles/k3s.toml".into(),
        arch,
        all_formats: false,
        debug_shell: true,
        append_cmdline: vec![format!("kiln.hostname={hostname}")],
        artifact: Some(("k3s".into(), k3s.to_path_buf())),
        update: None,
    })
}

pub(crate) fn build_once(spec: Spec) -> anyhow::Result<Built> {
    let slot = {
        let map = BUILDS.get_or_init(|| Mutex::new(BTreeMap::new()));
        let mut map = map
            .lock()
            .map_err(|_| anyhow::anyhow!("an earlier image build panicked"))?;
        map.entry(spec.clone()).or_default().clone()
    };
    // Only this image's slot is held while it builds: other images build at the same
    // time and finished ones are handed out at once.
    let mut slot = slot
        .lock()
        .map_err(|_| anyhow::anyhow!("an earlier build of {spec:?} panicked"))?;
    if let Some(b) = slot.as_ref() {
        return Ok(b.clone());
    }
    let key = key_text(&spec)?;
    let stem = Path::new(&spec.profile)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile".into());
    let name = format!("{stem}-{}", spec.arch.name());
    let dir = ImageCache::from_env()?.entry(&key, &name, |out| build(&spec, out))?;
    // Outputs are named after the profile's `name`.
    let base = format!(
        "{}-{}",
        kiln::profile::Profile::load(&repo_root().join(&spec.profile))?.name,
        spec.arch.name()
    );
    let b = Built {
        image: dir.join(format!("{base}.raw")),
        manifest: dir.join(format!("{base}.manifest.json")),
    };
    for p in [&b.image, &b.manifest] {
        if !p.is_file() {
            bail!("{}: the build of {name} did not write it", p.display());
        }
    }
    *slot = Some(b.clone());
    Ok(b)
}

/// Builds `spec` into `out` with the kiln library.
fn build(spec: &Spec, out: &Path) -> anyhow::Result<()> {
    let mut profile = kiln::profile::Profile::load(&repo_root().join(&spec.profile))?;
    if spec.debug_shell {
        profile.enable_debug_shell()?;
    }
    profile.append_cmdline(&spec.append_cmdline)?;
    if let Some(which) = spec.update {
        which.change(&mut profile)?;
    }
    if let Some((name, file)) = &spec.artifact {
        let sha = sha256_file(file)?;
        let mut replaced = 0;
        for a in profile
            .artifacts
            .iter_mut()
            .filter(|a| &a.name == name && a.applies_to(spec.arch))
        {
            a.source = kiln::profile::ArtifactSource::Path(file.clone());
            a.sha256 = sha.clone();
            replaced += 1;
        }
        if replaced != 1 {
            bail!(
                "{} has {replaced} {name} artifacts for {}, expected 1",
                spec.profile,
                spec.arch
            );
        }
    }
    let cache = kiln::fetch::Cache::from_env()?;
    let opts = kiln::build::BuildOptions {
        arches: vec![spec.arch],
        out: out.to_path_buf(),
        epoch: None,
        agent: kiln::build::AgentSource::from_env(),
        // Raw only unless every format is wanted: the VMs boot the raw image, whatever
        // the profile publishes (homelab: raw.zst).
        formats: Some(formats(spec)),
        update_key: match spec.update {
            Some(UpdateBuild::V1) | None => None,
            Some(_) => Some(kiln::keygen::UpdateKey::load(&update_test_key())?),
        },
    };
    let started = Instant::now();
    kiln::build::build(&profile, &cache, &opts, &kiln::build::Ui::new(true))
        .with_context(|| format!("building {} for {}", spec.profile, spec.arch))?;
    eprintln!(
        "built {} ({}) in {:.1} s",
        spec.profile,
        spec.arch,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn formats(spec: &Spec) -> Vec<kiln::profile::Format> {
    if matches!(spec.update, Some(u) if u != UpdateBuild::V1) {
        // The raw image too: the bundle's parts are checked against it.
        vec![kiln::profile::Format::Raw, kiln::profile::Format::Update]
    } else if spec.update == Some(UpdateBuild::V1) {
        // Raw for the overlay scenario's LAN pair; the update scenario's node boots the
        // qcow2, grown like a real disk.
        vec![kiln::profile::Format::Raw, kiln::profile::Format::Qcow2]
    } else if spec.all_formats {
        kiln::profile::Format::IMAGES.to_vec()
    } else {
        vec![kiln::profile::Format::Raw]
    }
}

/// Everything an image of `spec` is made of, as text (its sha256 names the entry).
fn key_text(spec: &Spec) -> anyhow::Result<String> {
    let root = repo_root();
    let profile = root.join(&spec.profile);
    let lock = profile.with_extension("lock");
    let agent = kiln::build::AgentSource::from_env().locate(spec.arch)?;
    let mut k = String::from("kiln test image, key version 1\n");
    k.push_str(&format!("builder {}\n", builder_identity()?));
    k.push_str(&format!("agent {}\n", sha256_file(&agent)?));
    k.push_str(&format!(
        "profile {} {}\n",
        spec.profile,
        sha256_file(&profile)?
    ));
    k.push_str(&format!("lock {}\n", sha256_file(&lock)?));
    k.push_str(&format!(
        "overlays {}\n",
        tree_digest(&root, &[Path::new("overlays")])?
    ));
    if let Some((name, file)) = &spec.artifact {
        k.push_str(&format!("artifact {name} {}\n", sha256_file(file)?));
    }
    if let Some(u) = spec.update {
        // The variants' changes are code in this file: its bytes are part of the key.
        k.push_str(&format!(
            "update {u:?} key {} recipe {}\n",
            sha256_file(&update_test_key())?,
            sha256_file(&root.join("qemu-tests/src/images/update.rs"))?
        ));
        k.push_str(&format!(
            "test overlays {}\n",
            tree_digest(&root, &[Path::new(update::TEST_OVERLAYS)])?
        ));
    }
    k.push_str(&format!(
        "arch {}\nformats {:?}\ndebug_shell {}\nappend_cmdline {:?}\n",
        spec.arch,
        formats(spec),
        spec.debug_shell,
        spec.append_cmdline
    ));
    k.push_str(&format!(
        "SOURCE_DATE_EPOCH {:?}\n",
        std::env::var("SOURCE_DATE_EPOCH").ok()
    ));
    if spec.all_formats {
        k.push_str(&format!("qemu-img {}\n", tool_version("qemu-img")?));
    }
    Ok(k)
}

/// The builder as source: what the kiln library in this test binary was compiled from.
fn builder_identity() -> anyhow::Result<String> {
    static ID: OnceLock<String> = OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let root = repo_root();
    let sources = tree_digest(
        &root,
        &[
            Path::new("Cargo.toml"),
            Path::new("Cargo.lock"),
            Path::new("builder/Cargo.toml"),
            Path::new("builder/src"),
        ],
    )?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let id = sha256_hex(format!("{sources}{}", tool_version_of(&rustc, "-vV")?).as_bytes());
    Ok(ID.get_or_init(|| id).clone())
}

fn tool_version(tool: &str) -> anyhow::Result<String> {
    tool_version_of(tool, "--version")
}

fn tool_version_of(tool: &str, flag: &str) -> anyhow::Result<String> {
    let out = Command::new(tool)
        .arg(flag)
        .output()
        .with_context(|| format!("running {tool} {flag}"))?;
    if !out.status.success() {
        bail!("{tool} {flag}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// sha256 over the files below `parts` (files or folders, relative to `root`): each
/// file's relative path, mode, and bytes or link target, in path order.
pub fn tree_digest(root: &Path, parts: &[&Path]) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    for p in parts {
        collect(&root.join(p), &mut files)?;
    }
    files.sort();
    let mut listing = Vec::new();
    for f in files {
        let rel = f.strip_prefix(root).unwrap_or(&f);
        let meta = std::fs::symlink_metadata(&f).with_context(|| f.display().to_string())?;
        listing.extend_from_slice(rel.to_string_lossy().as_bytes());
        listing.push(0);
        listing.extend_from_slice(&meta.permissions().mode().to_le_bytes());
        if meta.file_type().is_symlink() {
            let t = std::fs::read_link(&f).with_context(|| f.display().to_string())?;
            listing.extend_from_slice(t.to_string_lossy().as_bytes());
        } else {
            listing.extend_from_slice(sha256_file(&f)?.as_bytes());
        }
        listing.push(0);
    }
    Ok(sha256_hex(&listing))
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path).with_context(|| path.display().to_string())?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path).with_context(|| path.display().to_string())? {
            collect(&e.with_context(|| path.display().to_string())?.path(), out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// The sha256 of a file's bytes, as hex (kiln's own, with the path in its error).
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    manifest_sha256_file(path).with_context(|| format!("{}: hashing", path.display()))
}

/// The file in an entry that records its key and every file's sha256; written last.
const RECORD: &str = "entry.json";
/// Entries not used for this long are removed.
const UNUSED: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many entries are kept, the most recently used: a CI that runs many
/// commits a day made a new set per commit and kept 28 GB of them within the week.
/// A suite run uses about ten, so the ones it needs stay.
const KEEP: usize = 24;

/// A folder of built images, one sub-folder per key.
#[derive(Debug, Clone)]
pub struct ImageCache {
    root: PathBuf,
}

impl ImageCache {
    /// `$KILN_TEST_IMAGE_CACHE`, else `test-images` in kiln's package cache folder.
    pub fn from_env() -> anyhow::Result<ImageCache> {
        let root = match std::env::var_os("KILN_TEST_IMAGE_CACHE").filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => kiln::fetch::Cache::from_env()?.root().join("test-images"),
        };
        Ok(ImageCache::new(root))
    }

    /// A cache in `root`.
    pub fn new(root: PathBuf) -> ImageCache {
        ImageCache { root }
    }

    /// The folder holding what `build` writes for `key`: a verified earlier entry, or a
    /// new one that `build` fills (in a temporary folder, moved into place when done).
    /// `name` only makes the folder easier to find.
    pub fn entry(
        &self,
        key: &str,
        name: &str,
        build: impl FnOnce(&Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(&self.root).with_context(|| self.root.display().to_string())?;
        self.prune();
        let digest = sha256_hex(key.as_bytes());
        let dir = self.root.join(format!("{}-{name}", &digest[..16]));
        if dir.exists() {
            let started = Instant::now();
            match verify(&dir, key) {
                Ok(n) => {
                    eprintln!(
                        "image cache: using {} ({n} files verified in {:.1} s)",
                        dir.display(),
                        started.elapsed().as_secs_f64()
                    );
                    touch(&dir.join(RECORD));
                    return Ok(dir);
                }
                Err(why) => {
                    eprintln!(
                        "image cache: {}: {why:#}; removing it and building again",
                        dir.display()
                    );
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
            }
        }
        let tmp = self.root.join(format!(
            ".building-{}-{}-{}",
            &digest[..16],
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&tmp).with_context(|| tmp.display().to_string())?;
        let result = build(&tmp).and_then(|()| record(&tmp, key));
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => Ok(dir),
            // Another run filled the same entry meanwhile: use it once it checks out.
            Err(_) if verify(&dir, key).is_ok() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(dir)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                Err(e).with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))
            }
        }
    }

    /// Removes entries unused for [`UNUSED`], builds abandoned as long ago, and the
    /// least recently used entries beyond [`KEEP`].
    fn prune(&self) {
        let Ok(list) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut kept = Vec::new();
        for e in list.flatten() {
            let path = e.path();
            let building = e.file_name().to_string_lossy().starts_with(".building-");
            let stamp = if building {
                path.clone()
            } else {
                path.join(RECORD)
            };
            let used = std::fs::metadata(&stamp).and_then(|m| m.modified()).ok();
            let age = used.and_then(|t| SystemTime::now().duration_since(t).ok());
            if age.is_some_and(|a| a > UNUSED) {
                let _ = std::fs::remove_dir_all(&path);
            } else if let (false, Some(used)) = (building, used) {
                kept.push((used, path));
            }
        }
        kept.sort_by_key(|k| std::cmp::Reverse(k.0));
        for (_, path) in kept.into_iter().skip(KEEP) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Writes the entry's record: its key and the sha256 of every file in it.
fn record(dir: &Path, key: &str) -> anyhow::Result<()> {
    let mut files = BTreeMap::new();
    for e in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let e = e.with_context(|| dir.display().to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        files.insert(name, sha256_file(&e.path())?);
    }
    if files.is_empty() {
        bail!("{}: the build wrote nothing", dir.display());
    }
    let text = serde_json::to_string_pretty(&serde_json::json!({ "key": key, "files": files }))?;
    let path = dir.join(RECORD);
    std::fs::write(&path, text).with_context(|| path.display().to_string())
}

/// Checks an entry against its record: the same key, the same files, every sha256
/// right. Ok(number of files).
fn verify(dir: &Path, key: &str) -> anyhow::Result<usize> {
    let path = dir.join(RECORD);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: no record (an interrupted build?)", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    if v["key"].as_str() != Some(key) {
        bail!("{}: recorded for other inputs", path.display());
    }
    let files = v["files"]
        .as_object()
        .with_context(|| format!("{}: no file list", path.display()))?;
    let mut present: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != RECORD)
        .collect();
    present.sort();
    let listed: Vec<String> = files.keys().cloned().collect();
    if present != listed {
        bail!("holds {present:?}, its record lists {listed:?}");
    }
    // Both cores: the raw images are most of the bytes.
    let jobs: Vec<(String, String)> = files
        .iter()
        .map(|(n, s)| (n.clone(), s.as_str().unwrap_or_default().to_string()))
        .collect();
    let results: Vec<anyhow::Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .chunks(jobs.len().div_ceil(2).max(1))
            .map(|chunk| {
                s.spawn(move || -> anyhow::Result<()> {
                    for (name, want) in chunk {
                        let got = sha256_file(&dir.join(name))?;
                        if &got != want {
                            bail!("{name} has sha256 {got}, recorded {want}");
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("hashing panicked")))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::cell::Cell;

    fn write_outputs(out: &Path, body: &[u8]) -> anyhow::Result<()> {
        std::fs::write(out.join("n-x86_64.raw"), body)?;
        std::fs::write(out.join("n-x86_64.manifest.json"), b"{}")?;
        Ok(())
    }

    #[test]
    fn only_the_most_recently_used_entries_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("c");
        let now = SystemTime::now();
        // KEEP + 6 entries, entry i last used i minutes ago; one a week and a day old.
        for i in 0..KEEP + 6 {
            let dir = root.join(format!("e{i:02}"));
            std::fs::create_dir_all(&dir).unwrap();
            let rec = std::fs::File::create(dir.join(RECORD)).unwrap();
            rec.set_modified(now - Duration::from_secs(60 * i as u64))
                .unwrap();
        }
        let old = root.join("old");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::File::create(old.join(RECORD))
            .unwrap()
            .set_modified(now - UNUSED - Duration::from_secs(86_400))
            .unwrap();
        ImageCache::new(root.clone()).prune();
        let mut left: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let want: Vec<String> = (0..KEEP).map(|i| format!("e{i:02}")).collect();
        assert_eq!(left, want);
    }

    #[test]
    fn an_entry_is_built_once_and_reused_while_it_checks_out() {
        let d = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(d.path().join("c"));
        let builds = Cell::new(0);
        let build = |out: &Path| {
            builds.set(builds.get() + 1);
            write_outputs(out, b"disk one")
        };
        let a = cache.entry("key 1", "n", build).unwrap();
        let b = cache
            .entry("key 1", "n", |out: &Path| {
                builds.set(builds.get() + 1);
                write_outputs(out, b"disk one")
            })
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(builds.get(), 1);
        assert_eq!(std::fs::read(a.join("n-x86_64.raw")).unwrap(), b"disk one");
        // Other inputs: another entry, built anew.
        let c = cache
            .entry("key 2", "n", |out: &Path| write_outputs(out, b"disk two"))
            .unwrap();
        assert_ne!(a, c);
        assert_eq!(std::fs::read(c.join("n-x86_64.raw")).unwrap(), b"disk two");
    }

    #[test]
    fn damaged_stale_and_unfinished_entries_are_built_again() {
        let d = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(d.path().join("c"));
        let dir = cache
            .entry("k", "n", |out: &Path| write_outputs(out, b"good bytes"))
            .unwrap();
        let rebuilt = |cache: &ImageCache| {
            let n = Cell::new(0);
            let dir = cache
                .entry("k", "n", |out: &Path| {
                    n.set(n.get() + 1);
                    write_outputs(out, b"good bytes")
                })
                .unwrap();
            assert_eq!(
                std::fs::read(dir.join("n-x86_64.raw")).unwrap(),
                b"good bytes"
            );
            n.get()
        };
        // One changed byte (same size): found by its sha256, never used.
        std::fs::write(dir.join("n-x86_64.raw"), b"good bytez").unwrap();
        assert_eq!(rebuilt(&cache), 1);
        // A file gone.
        std::fs::remove_file(dir.join("n-x86_64.manifest.json")).unwrap();
        assert_eq!(rebuilt(&cache), 1);
        // A file more than recorded.
        std::fs::write(dir.join("stray"), b"x").unwrap();
        assert_eq!(rebuilt(&cache), 1);
        // A record for other inputs under this name (stale).
        let rec = dir.join(RECORD);
        let text = std::fs::read_to_string(&rec)
            .unwrap()
            .replace("\"k\"", "\"old\"");
        std::fs::write(&rec, text).unwrap();
        assert_eq!(rebuilt(&cache), 1);
        // No record: a build that was cut off before it finished.
        std::fs::remove_file(&rec).unwrap();
        assert_eq!(rebuilt(&cache), 1);
        // And a sound entry is used as it is.
        assert_eq!(rebuilt(&cache), 0);
    }

    #[test]
    fn a_failed_build_leaves_no_entry() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("c");
        let cache = ImageCache::new(root.clone());
        let err = cache
            .entry("k", "n", |out: &Path| {
                std::fs::write(out.join("half.raw"), b"x")?;
                bail!("the build broke")
            })
            .unwrap_err();
        assert!(format!("{err:#}").contains("the build broke"), "{err:#}");
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
    }

    #[test]
    fn tree_digest_sees_content_mode_and_names() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("a")).unwrap();
        std::fs::write(t.join("a/f"), b"1").unwrap();
        let parts = [Path::new("t")];
        let first = tree_digest(d.path(), &parts).unwrap();
        assert_eq!(first, tree_digest(d.path(), &parts).unwrap());
        std::fs::write(t.join("a/f"), b"2").unwrap();
        let second = tree_digest(d.path(), &parts).unwrap();
        assert_ne!(first, second);
        std::fs::set_permissions(t.join("a/f"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let third = tree_digest(d.path(), &parts).unwrap();
        assert_ne!(second, third);
        std::fs::rename(t.join("a/f"), t.join("a/g")).unwrap();
        assert_ne!(third, tree_digest(d.path(), &parts).unwrap());
    }
}
