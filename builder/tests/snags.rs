//! The snags a new user hit (issue 18), through the real binary: closed pipes,
//! colour, where overlays and agents are found, the build summary and its package
//! count, truncated and mismatched inputs, error lines, and the output folder.
//!
//! Two builds of the default profile (x86_64) are shared by the tests of this
//! file, each made once: one from an installed layout (`make install`'s) with
//! its standard output closed, one from inside the profile folder with its log
//! pipe closed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly on purpose.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use support::{copy_dir, repo};

fn kiln_in(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args).current_dir(dir);
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` with the read end of its standard output (or error) closed
/// before it writes anything; returns its status and the other stream.
fn with_closed(cmd: &mut Command, closed_stdout: bool) -> (Option<i32>, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if closed_stdout {
        drop(child.stdout.take());
    } else {
        drop(child.stderr.take());
    }
    let out = child.wait_with_output().unwrap();
    let other = if closed_stdout {
        &out.stderr
    } else {
        &out.stdout
    };
    (out.status.code(), text(other))
}

/// Asserts a failure whose stderr has one `kiln: error:` line holding every
/// needle, no Rust debug text and no repeated cause; returns the line.
fn one_error_line(out: &Output, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "expected failure:\n{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("kiln: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    for n in needles {
        assert!(line.contains(n), "error line lacks {n:?}: {line}");
    }
    for debug in ["Error {", "kind:", "BlockContentReadError", "panicked"] {
        assert!(!line.contains(debug), "debug text in: {line}");
    }
    assert!(
        line.matches("(os error").count() <= 1,
        "a cause said twice: {line}"
    );
    line.to_string()
}

/// A temp folder with `profiles/qemu.{toml,lock}` and `overlays/` of the checkout.
fn checkout_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("overlays"), &d.path().join("overlays"));
    std::fs::create_dir_all(d.path().join("profiles")).unwrap();
    for f in ["qemu.toml", "qemu.lock"] {
        std::fs::copy(
            repo().join("profiles").join(f),
            d.path().join("profiles").join(f),
        )
        .unwrap();
    }
    d
}

/// Build B: from inside the profile folder (`cd profiles && kiln build qemu.toml`),
/// raw and raw.zst, with the log pipe (stderr) closed; its summary on stdout.
struct FromProfileFolder {
    dir: tempfile::TempDir,
    status: Option<i32>,
    summary: String,
}

impl FromProfileFolder {
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
}

fn from_profile_folder() -> &'static FromProfileFolder {
    static BUILT: OnceLock<FromProfileFolder> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = checkout_copy();
        let (status, summary) = with_closed(
            &mut kiln_in(
                &dir.path().join("profiles"),
                &[
                    "build",
                    "qemu.toml",
                    "--arch",
                    "x86_64",
                    "--out",
                    "../out",
                    "--format",
                    "raw,raw.zst",
                ],
            ),
            false,
        );
        FromProfileFolder {
            dir,
            status,
            summary,
        }
    })
}

#[test]
fn a_build_whose_log_pipe_closes_finishes_from_the_profile_folder() {
    let b = from_profile_folder();
    assert_eq!(b.status, Some(0), "summary:\n{}", b.summary);
    let raw = b.out().join("qemu-x86_64.raw");
    let verify = kiln_in(b.dir.path(), &["inspect", "--verify", "-q"])
        .arg(&raw)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stderr));
}

#[test]
fn the_summary_lists_every_file_written_and_the_one_package_count() {
    let b = from_profile_folder();
    let mut written: Vec<String> = std::fs::read_dir(b.out())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "qemu-x86_64.manifest.json",
            "qemu-x86_64.raw",
            "qemu-x86_64.raw.bmap",
            "qemu-x86_64.raw.zst"
        ]
    );
    for name in &written {
        assert!(
            b.summary
                .lines()
                .any(|l| l.trim_start().starts_with("../out/")
                    && l.contains(name.as_str())
                    && l.contains(" (")),
            "{name} not in the summary:\n{}",
            b.summary
        );
    }
    // The build, the manifest and `kiln inspect` count the same packages.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(b.out().join("qemu-x86_64.manifest.json")).unwrap(),
    )
    .unwrap();
    let n = manifest["packages"].as_array().unwrap().len();
    assert!(
        b.summary.contains(&format!(", {n} packages)")),
        "manifest has {n} packages; summary:\n{}",
        b.summary
    );
    let inspect = kiln_in(b.dir.path(), &["inspect"])
        .arg(b.out().join("qemu-x86_64.raw"))
        .output()
        .unwrap();
    let shown = text(&inspect.stdout);
    assert!(
        shown.contains(&format!("  packages    {n} (")),
        "inspect does not say {n} packages:\n{shown}"
    );
}

#[test]
fn a_closed_stdout_ends_inspect_quietly() {
    let b = from_profile_folder();
    let (status, stderr) = with_closed(
        kiln_in(b.dir.path(), &["inspect", "--packages"]).arg(b.out().join("qemu-x86_64.raw")),
        true,
    );
    assert!(
        matches!(status, Some(0) | Some(141)),
        "status {status:?}:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_truncated_raw_zst_is_one_clear_line() {
    let b = from_profile_folder();
    let zst = std::fs::read(b.out().join("qemu-x86_64.raw.zst")).unwrap();
    let cut = b.dir.path().join("cut.raw.zst");
    std::fs::write(&cut, &zst[..zst.len() * 2 / 3]).unwrap();
    let out = kiln_in(b.dir.path(), &["inspect"])
        .arg(&cut)
        .output()
        .unwrap();
    one_error_line(&out, &["cut.raw.zst", "truncated"]);
}

#[test]
fn a_manifest_of_another_image_is_refused() {
    let b = from_profile_folder();
    let text_of = std::fs::read_to_string(b.out().join("qemu-x86_64.manifest.json")).unwrap();
    let raw = b.out().join("qemu-x86_64.raw");
    let mut m: serde_json::Value = serde_json::from_str(&text_of).unwrap();
    m["arch"] = "arm64".into();
    let other_arch = b.dir.path().join("arm64.manifest.json");
    std::fs::write(&other_arch, m.to_string()).unwrap();
    let out = kiln_in(b.dir.path(), &["inspect", "--manifest"])
        .arg(&other_arch)
        .arg(&raw)
        .output()
        .unwrap();
    one_error_line(&out, &["arm64.manifest.json", "qemu-arm64", "x86_64 image"]);

    let mut m: serde_json::Value = serde_json::from_str(&text_of).unwrap();
    m["disk"]["guid"] = "00000000-1111-2222-3333-444444444444".into();
    let other_build = b.dir.path().join("other.manifest.json");
    std::fs::write(&other_build, m.to_string()).unwrap();
    for verify in [false, true] {
        let mut c = kiln_in(b.dir.path(), &["inspect", "--manifest"]);
        c.arg(&other_build).arg(&raw);
        if verify {
            c.arg("--verify");
        }
        let out = c.output().unwrap();
        one_error_line(&out, &["other.manifest.json", "disk GUID", "another image"]);
    }
}

/// Build A: `kiln` in `<prefix>/bin` beside the agents, overlays and profiles
/// `make install` puts in `<prefix>/lib/kiln` and `<prefix>/share/kiln`, from a
/// profile in a folder with no overlays beside it, with stdout closed.
#[test]
fn an_installed_kiln_finds_its_agents_and_overlays_and_ends_quietly_on_a_closed_pipe() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("prefix");
    std::fs::create_dir_all(prefix.join("bin")).unwrap();
    let kiln = prefix.join("bin/kiln");
    std::fs::copy(env!("CARGO_BIN_EXE_kiln"), &kiln).unwrap();
    let agent = kiln::build::AgentSource::from_env()
        .locate(kiln::Arch::X86_64)
        .unwrap();
    let agent_dir = prefix.join("lib/kiln/x86_64-unknown-linux-musl");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::copy(&agent, agent_dir.join("kiln-agent")).unwrap();
    let shared = prefix.join("share/kiln/overlays");
    copy_dir(&repo().join("overlays"), &shared);
    // An overlay only the installed folder has: found there, or the build fails.
    std::fs::create_dir_all(shared.join("site/root/etc")).unwrap();
    std::fs::write(shared.join("site/overlay.toml"), "schema = 1\n").unwrap();
    std::fs::write(shared.join("site/root/etc/kiln-site"), "installed\n").unwrap();

    let work = d.path().join("mine");
    std::fs::create_dir_all(&work).unwrap();
    let profile = std::fs::read_to_string(repo().join("profiles/qemu.toml"))
        .unwrap()
        .replace(
            "overlays = [\"base\", \"qemu\"]",
            "overlays = [\"base\", \"qemu\", \"site\"]",
        );
    assert!(profile.contains("\"site\""));
    std::fs::write(work.join("qemu.toml"), profile).unwrap();
    std::fs::copy(repo().join("profiles/qemu.lock"), work.join("qemu.lock")).unwrap();

    let mut cmd = Command::new(&kiln);
    cmd.args(["build", "qemu.toml", "--arch", "x86_64", "--out", "out"])
        .current_dir(&work)
        .env_remove("KILN_AGENT_X86_64")
        .env_remove("KILN_OVERLAYS");
    let (status, stderr) = with_closed(&mut cmd, true);
    assert!(
        matches!(status, Some(0) | Some(141)),
        "status {status:?}:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (root, _) = support::Root::open_checked(&work.join("out"), "qemu-x86_64");
    assert_eq!(root.debugfs("cat /etc/kiln-site"), "installed\n");
}

#[test]
fn colour_only_on_a_terminal_that_shows_it() {
    // A file with zstd's magic makes kiln log an INFO line, then fail: quick.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x.raw.zst"), b"\x28\xb5\x2f\xfdgarbage").unwrap();
    let kiln = env!("CARGO_BIN_EXE_kiln");
    // `script` gives kiln a terminal as its stderr.
    let on_tty = |env: &str| {
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("env {env} {kiln} inspect x.raw.zst"),
                "/dev/null",
            ])
            .current_dir(d.path())
            .env_remove("NO_COLOR")
            .output()
            .unwrap();
        text(&out.stdout)
    };
    let coloured = on_tty("TERM=xterm");
    assert!(
        coloured.contains("INFO") && coloured.contains('\x1b'),
        "no colour on a terminal: {coloured:?}"
    );
    for env in ["TERM=dumb", "TERM=xterm NO_COLOR=1"] {
        let plain = on_tty(env);
        assert!(
            plain.contains("INFO") && !plain.contains('\x1b'),
            "{env}: {plain:?}"
        );
    }
    // A pipe is no terminal.
    let piped = kiln_in(d.path(), &["inspect", "x.raw.zst"])
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let log = text(&piped.stderr);
    assert!(log.contains("INFO") && !log.contains('\x1b'), "{log:?}");
}

/// Replaces the value of the `[disk]` table's `size = ` line of `profile`.
fn set_disk_size(profile: &Path, value: &str) {
    let t = std::fs::read_to_string(profile).unwrap();
    let disk = t.find("\n[disk]\n").unwrap();
    let at = disk + t[disk..].find("\nsize = ").unwrap();
    let end = at + 1 + t[at + 1..].find('\n').unwrap();
    std::fs::write(
        profile,
        format!("{}\nsize = {value}{}", &t[..at], &t[end..]),
    )
    .unwrap();
}

#[test]
fn a_wrong_type_names_the_key_path() {
    let d = checkout_copy();
    set_disk_size(&d.path().join("profiles/qemu.toml"), "512");
    let out = kiln_in(d.path(), &["build", "profiles/qemu.toml", "--out", "out"])
        .output()
        .unwrap();
    let line = one_error_line(
        &out,
        &[
            "qemu.toml",
            "disk.size: invalid type: integer `512`",
            "line ",
        ],
    );
    assert!(!line.contains("TOML parse error"), "{line}");
    assert!(!d.path().join("out").exists());
}

#[test]
fn io_errors_are_said_once_with_their_path() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (&["build", "nosuch.toml"], "nosuch.toml"),
        (&["inspect", "nosuch.raw"], "nosuch.raw"),
        (&["keygen", "no/such/dir/k"], "no/such/dir"),
        (
            &["channel", "sign", "--update-key", "nokey", "--bundle", "b"],
            "nokey",
        ),
    ];
    for (args, path) in cases {
        let mut c = kiln_in(d.path(), args);
        if args[0] == "channel" {
            c.args(["--url", "x", "--expires", "1d"]);
        }
        let out = c.env_remove("KILN_UPDATE_KEY").output().unwrap();
        let line = one_error_line(&out, &[path]);
        assert_eq!(
            line.matches("No such file or directory").count(),
            1,
            "{args:?}: {line}"
        );
    }
}

#[test]
fn out_naming_a_file_is_said_and_failed_builds_leave_no_out_folder() {
    let d = checkout_copy();
    std::fs::write(d.path().join("afile"), b"").unwrap();
    let out = kiln_in(
        d.path(),
        &[
            "build",
            "profiles/qemu.toml",
            "--arch",
            "x86_64",
            "--out",
            "afile",
        ],
    )
    .output()
    .unwrap();
    one_error_line(
        &out,
        &["afile", "--out names an existing file, not a folder"],
    );

    // A build that fails after it made its output folder (the disk is planned once
    // the root is built: too small here) removes the folders it made.
    set_disk_size(&d.path().join("profiles/qemu.toml"), "\"600MiB\"");
    let out = kiln_in(
        d.path(),
        &[
            "build",
            "profiles/qemu.toml",
            "--arch",
            "x86_64",
            "--out",
            "new/out",
        ],
    )
    .output()
    .unwrap();
    one_error_line(&out, &["disk.size"]);
    assert!(
        !d.path().join("new").exists(),
        "an empty output folder was left"
    );
}

#[test]
fn completions_man_pages_and_the_version_with_its_commit() {
    let d = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _kiln"),
        ("zsh", "#compdef kiln"),
        ("fish", "complete -c kiln"),
    ] {
        let out = kiln_in(d.path(), &["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains(marker) && script.contains("inspect"),
            "{shell}: {script}"
        );
    }
    let bash = kiln_in(d.path(), &["completions", "bash"])
        .output()
        .unwrap();
    std::fs::write(d.path().join("kiln.bash"), &bash.stdout).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(d.path().join("kiln.bash"))
        .status()
        .unwrap();
    assert!(syntax.success());

    let page = kiln_in(d.path(), &["man"]).output().unwrap();
    let page = text(&page.stdout);
    assert!(
        page.contains(".TH kiln 1") && page.contains("build"),
        "{page}"
    );
    let out = kiln_in(d.path(), &["man", "--out", "man1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in [
        "kiln.1",
        "kiln-build.1",
        "kiln-lock.1",
        "kiln-channel-sign.1",
    ] {
        let p = d.path().join("man1").join(name);
        assert!(
            std::fs::read_to_string(&p).unwrap().contains(".TH "),
            "{name}"
        );
    }

    let out = kiln_in(d.path(), &["--version"]).output().unwrap();
    let version = text(&out.stdout);
    let inner = version
        .trim()
        .strip_prefix(&format!("kiln {} (", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version:?}"));
    assert!(
        inner == "unknown commit"
            || (inner.len() == 12 && inner.chars().all(|c| c.is_ascii_hexdigit())),
        "{version:?}"
    );
}
