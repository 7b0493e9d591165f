//! The `kiln` binary against bad input: every case must fail with one clear
//! line naming the file, field or package, exit non-zero, and leave nothing
//! at the output path. These run the real binary, the real archive and the
//! real package cache.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// A copy of the default profile, its lock and the overlays in a temp
/// folder, with `edit` applied to the profile text.
fn fixture(edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("profiles")).unwrap();
    let text = std::fs::read_to_string(repo().join("profiles/qemu.toml")).unwrap();
    let profile = d.path().join("profiles/qemu.toml");
    std::fs::write(&profile, edit(text)).unwrap();
    std::fs::copy(
        repo().join("profiles/qemu.lock"),
        d.path().join("profiles/qemu.lock"),
    )
    .unwrap();
    copy_dir(&repo().join("overlays"), &d.path().join("overlays"));
    (d, profile)
}

/// The profile text with its `[agent] channels` line replaced (the profile
/// must have exactly one such line).
fn with_channels(text: &str, list: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("channels = "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "profiles/qemu.toml: channels lines {lines:?}"
    );
    text.replace(lines[0], &format!("channels = {list}"))
}

fn kiln(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Asserts failure with a one-line error containing every `needle`.
fn assert_fails(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("kiln: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"));
    for n in needles {
        assert!(line.contains(n), "error line lacks {n:?}: {line}");
    }
    line.to_string()
}

fn assert_nothing_written(out_dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(out_dir)
        .map(|r| r.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "output folder not empty: {left:?}");
}

fn build(profile: &Path, out: &Path, envs: &[(&str, &str)]) -> Output {
    kiln(
        &[
            "build",
            profile.to_str().unwrap(),
            "--arch",
            "x86_64",
            "--out",
            out.to_str().unwrap(),
        ],
        envs,
    )
}

#[test]
fn unknown_profile_field_is_named() {
    let (d, p) = fixture(|t| t.replace("[disk]\n", "[disk]\nsizee = \"1GiB\"\n"));
    let out = d.path().join("out");
    assert_fails(&build(&p, &out, &[]), &["qemu.toml", "sizee"]);
    assert_nothing_written(&out);
}

#[test]
fn bad_toml_is_named() {
    let (d, p) = fixture(|t| t.replace("schema = 1", "schema = = 1"));
    let out = d.path().join("out");
    assert_fails(&build(&p, &out, &[]), &["qemu.toml"]);
    assert_nothing_written(&out);
}

#[test]
fn unknown_module_set_is_named() {
    let (d, p) = fixture(|t| t.replace("\"virtio\",", "\"virtio\", \"flux-capacitor\","));
    let out = d.path().join("out");
    assert_fails(
        &build(&p, &out, &[]),
        &["qemu.toml", "kernel.modules", "flux-capacitor"],
    );
    assert_nothing_written(&out);
}

#[test]
fn unknown_package_is_named_by_lock_and_no_lock_is_written() {
    let (d, p) = fixture(|t| {
        t.replace(
            "\"busybox-static\",",
            "\"busybox-static\", \"kiln-no-such-package\",",
        )
    });
    std::fs::remove_file(d.path().join("profiles/qemu.lock")).unwrap();
    let cache = d.path().join("cache");
    let out = kiln(
        &[
            "lock",
            p.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ],
        &[],
    );
    assert_fails(&out, &["kiln-no-such-package"]);
    assert!(
        !d.path().join("profiles/qemu.lock").exists(),
        "a lock was written despite the error"
    );
    // The log went to a pipe, as it would to a file: plain text, no colour codes.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("INFO") && !log.contains('\x1b'), "{log:?}");
}

#[test]
fn package_missing_from_the_lock_is_named_with_the_fix() {
    let (d, p) = fixture(|t| t.replace("\"busybox-static\",", "\"busybox-static\", \"htop\","));
    let out = d.path().join("out");
    assert_fails(&build(&p, &out, &[]), &["htop", "kiln lock --update"]);
    assert_nothing_written(&out);
}

#[test]
fn missing_template_variable_names_template_and_variable() {
    let (d, p) = fixture(|t| t.replace("overlays = [\"base\"", "overlays = [\"base\", \"bad\""));
    let bad = d.path().join("overlays/bad");
    std::fs::create_dir_all(bad.join("root/etc")).unwrap();
    std::fs::write(bad.join("overlay.toml"), "schema = 1\n").unwrap();
    std::fs::write(bad.join("root/etc/greeting.j2"), "hello {{ user_name }}\n").unwrap();
    let out = d.path().join("out");
    assert_fails(&build(&p, &out, &[]), &["greeting.j2", "user_name"]);
    assert_nothing_written(&out);
}

/// The profile text with the `size = ...` line of its `[disk]` table replaced.
fn with_disk_size(text: &str, size: &str) -> String {
    let disk = text.find("\n[disk]\n").expect("a [disk] table");
    let at = disk + text[disk..].find("\nsize = ").expect("a disk size");
    let end = at + 1 + text[at + 1..].find('\n').unwrap();
    format!("{}\nsize = \"{size}\"{}", &text[..at], &text[end..])
}

/// The profile text with `line` in its `[update]` table (added if missing).
fn with_update(text: &str, line: &str) -> String {
    match text.find("\n[update]\n") {
        Some(at) => format!("{}\n[update]\n{line}\n{}", &text[..at], &text[at + 10..]),
        None => format!("{text}\n[update]\n{line}\n"),
    }
}

#[test]
fn disk_too_small_for_the_content_names_the_field() {
    let (d, p) = fixture(|t| with_disk_size(&t, "600MiB"));
    let out = d.path().join("out");
    // The ESP and two root slots do not fit; the message says how much does.
    let line = assert_fails(
        &build(&p, &out, &[]),
        &["disk.size", "2 root slots", "at least"],
    );
    assert!(line.contains("disk.var_min_size"), "{line}");
    assert_nothing_written(&out);
}

#[test]
fn slot_and_esp_sizes_too_small_name_their_fields_and_the_size_needed() {
    let (d, p) = fixture(|t| with_update(&t, "slot_size = \"64MiB\""));
    let out = d.path().join("out");
    assert_fails(
        &build(&p, &out, &[]),
        &[
            "`[update] slot_size`",
            "64 MiB",
            "the root file system needs",
            "at least",
        ],
    );
    assert_nothing_written(&out);

    // Room for one UKI but not for the second an update writes beside it.
    let (d, p) = fixture(|t| t.replace("esp_size = \"128MiB\"", "esp_size = \"40MiB\""));
    let out = d.path().join("out");
    assert_fails(
        &build(&p, &out, &[]),
        &["`disk.esp_size`", "two UKIs", "plus 10%", "at least"],
    );
    assert_nothing_written(&out);
}

#[test]
fn corrupt_cached_deb_is_removed_and_never_used() {
    let (d, p) = fixture(|t| t);
    // Warm the shared cache, then give this build a private cache of links to it.
    let fetch = kiln(&["fetch", p.to_str().unwrap(), "--arch", "x86_64"], &[]);
    assert!(
        fetch.status.success(),
        "{}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    let lock = std::fs::read_to_string(d.path().join("profiles/qemu.lock")).unwrap();
    let bash_sha = lock
        .split("[[package]]")
        .find(|s| s.contains("name = \"bash\"") && s.contains("for_arch = \"x86_64\""))
        .and_then(|s| s.lines().find(|l| l.starts_with("sha256")))
        .map(|l| l.split('"').nth(1).unwrap().to_string())
        .unwrap();
    let shared = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("kiln"))
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/kiln")
                })
        });
    let cache = d.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let st = Command::new("cp")
        .arg("-al")
        .arg(shared.join("sha256"))
        .arg(cache.join("sha256"))
        .status()
        .unwrap();
    assert!(st.success());
    let victim = cache
        .join("sha256")
        .join(&bash_sha[..2])
        .join(format!("{bash_sha}.deb"));
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();

    // The mirror is unreachable, so the damaged file cannot be replaced.
    let sources = d.path().join("unreachable.sources");
    std::fs::write(
        &sources,
        "Types: deb\nURIs: http://127.0.0.1:9/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://127.0.0.1:9/debian-security\nSuites: bookworm-security\nComponents: main\n",
    )
    .unwrap();
    let out = d.path().join("out");
    let r = build(
        &p,
        &out,
        &[
            ("KILN_CACHE", cache.to_str().unwrap()),
            ("KILN_APT_SOURCES", sources.to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_fails(&r, &["bash"]);
    assert!(
        stderr.contains(&bash_sha[..12]) || stderr.contains("bash"),
        "{stderr}"
    );
    assert!(!victim.exists(), "the damaged file is still in the cache");
    assert_nothing_written(&out);
}

#[test]
fn help_lists_every_command() {
    let out = kiln(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["lock", "fetch", "build", "run"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
    let out = kiln(&["build", "--help"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--arch",
        "--out",
        "--cache",
        "--quiet",
        "--verbose",
        "SOURCE_DATE_EPOCH",
    ] {
        assert!(text.contains(flag), "build --help lacks {flag}:\n{text}");
    }
}

#[test]
fn ctrl_c_during_the_disk_write_leaves_nothing_at_the_output_path() {
    let (d, p) = fixture(|t| t);
    let out = d.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "build",
            p.to_str().unwrap(),
            "--arch",
            "x86_64",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The staging folder appears when the disk image starts being written.
    let start = std::time::Instant::now();
    let staging = loop {
        let found = std::fs::read_dir(&out).ok().and_then(|mut r| {
            r.find_map(|e| {
                e.ok().filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(".kiln-staging-")
                })
            })
        });
        if let Some(e) = found {
            break e.path();
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "build ended before it started writing"
        );
        assert!(
            start.elapsed().as_secs() < 300,
            "no staging folder after 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out_status = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out_status.stderr);
    assert_eq!(out_status.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!staging.exists(), "staging folder left behind");
    // The output folder the build made goes too.
    assert!(!out.exists(), "output folder left behind");
}

#[test]
fn unknown_output_format_is_named_with_the_supported_ones() {
    let (d, p) = fixture(|t| t);
    let out = d.path().join("out");
    for (arg, bad) in [
        ("floppy", "\"floppy\""),
        ("raw,vhd,floppy", "\"floppy\""),
        ("raw.zst,,vhd", "\"\""),
    ] {
        let o = kiln(
            &[
                "build",
                p.to_str().unwrap(),
                "--arch",
                "x86_64",
                "--out",
                out.to_str().unwrap(),
                "--format",
                arg,
            ],
            &[],
        );
        assert_fails(
            &o,
            &[
                "--format",
                bad,
                "unknown output format",
                "raw, raw.zst, qcow2, vhd, gce",
            ],
        );
    }
    assert_nothing_written(&out);
    let help = kiln(&["build", "--help"], &[]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--format <NAME>"), "{text}");
}

#[test]
fn debug_shell_is_refused_for_a_profile_with_the_cloud_channel() {
    // The qemu profile with the cloud channel added.
    let (d, p) =
        fixture(|t| with_channels(&t, r#"["cmdline", "esp", "cidata", "fw_cfg", "cloud"]"#));
    let out = d.path().join("out");
    let r = kiln(
        &[
            "build",
            p.to_str().unwrap(),
            "--arch",
            "x86_64",
            "--out",
            out.to_str().unwrap(),
            "--debug-shell",
        ],
        &[],
    );
    assert_fails(
        &r,
        &[
            "qemu.toml",
            "--debug-shell",
            "\"cloud\"",
            "[agent] channels",
        ],
    );
    assert_nothing_written(&out);
    // The same refusal for the shipped cloud profile.
    let r = kiln(
        &[
            "build",
            repo().join("profiles/cloud.toml").to_str().unwrap(),
            "--arch",
            "x86_64",
            "--out",
            out.to_str().unwrap(),
            "--debug-shell",
        ],
        &[],
    );
    assert_fails(&r, &["cloud.toml", "--debug-shell"]);
    assert_nothing_written(&out);
}

#[test]
fn bad_agent_channels_and_appended_cmdline_are_named() {
    let (d, p) = fixture(|t| with_channels(&t, r#"["cmdline", "smoke-signals"]"#));
    let out = d.path().join("out");
    assert_fails(
        &build(&p, &out, &[]),
        &["qemu.toml", "agent.channels[1]", "smoke-signals"],
    );
    let (d, p) = fixture(|t| t);
    let r = kiln(
        &[
            "build",
            p.to_str().unwrap(),
            "--arch",
            "x86_64",
            "--out",
            out.to_str().unwrap(),
            "--append-cmdline",
            "kiln.roothash=00",
        ],
        &[],
    );
    assert_fails(&r, &["--append-cmdline", "kiln.roothash"]);
    assert_nothing_written(&out);
    drop(d);
    let help = kiln(&["build", "--help"], &[]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--debug-shell") && text.contains("--append-cmdline <WORDS>"),
        "{text}"
    );
}
