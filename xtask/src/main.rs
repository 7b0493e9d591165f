//! `xtask test`: the whole test suite as `make test` runs it.
//!
//! 1. The checkout is mirrored into the cache ([`mirror`]: only changed files are
//!    written, so a fresh clone does not recompile what did not change), then the agent
//!    and one `cargo test --profile suite --no-run` for the workspace are built there
//!    (timed together: the compile phase; `suite` is release code compiled
//!    incrementally, see Cargo.toml).
//! 2. The docs' checks ([`docs`]), then every test binary it made, run the way `cargo test`
//!    would (from its package folder), each timed: those that boot no VM side by side,
//!    `--jobs` at a time ([`pool`]), and beside them the QEMU binary's scenarios that share
//!    the machine, two at a time; then the QEMU scenarios that take the whole machine, one
//!    at a time and alone ([`WHOLE_MACHINE`]), with `--include-ignored` when
//!    `KILN_K3S_BINARY` is set (its k3s scenario is an ignored test otherwise).
//! 3. A summary: the compile time, every binary's time, and the slowest QEMU scenarios
//!    as the harness recorded them (`kiln_qemu_tests::timing`), then one closing line
//!    with the counts.
//!
//! A failing binary does not stop the others; the exit status is 1 if any failed.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

mod docs;
mod mirror;
mod pool;
mod report;

use report::{Counts, Ran};

const USAGE: &str = "usage: xtask test [--threads N] [--jobs J] [-- ARGS FOR EVERY TEST BINARY]\n\
       xtask docs [--check]\n\
\n\
Compiles the workspace's tests once (profile `suite`: release, incremental), runs every test binary with --test-threads=N\n\
(default 2), J of those that boot no VM at once (default 3; their output is printed whole as each ends) beside the QEMU\n\
scenarios that share the machine, then the whole-machine QEMU scenarios alone, and prints the compile time, each binary's\n\
time and the slowest QEMU scenarios.\n\
The QEMU scenarios' times go to $CARGO_TARGET_DIR/kiln-suite/times.tsv, the binaries' logs to kiln-suite/logs/.\n\
The suite also checks the docs: every relative link in README.md and docs/src resolves, and docs/src/reference/cli.md\n\
is what the programs' --help prints. `xtask docs` writes that page (`make docs`); `--check` only compares.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One test binary cargo built.
#[derive(Debug, Clone)]
pub(crate) struct TestBinary {
    /// `package target` (e.g. `kiln cli`, `kiln-agent lib`).
    label: String,
    /// The executable.
    exe: PathBuf,
    /// The package folder: tests run there, as under `cargo test`.
    dir: PathBuf,
    /// The QEMU binary (runs last, may include its ignored scenario).
    qemu: bool,
}

fn run(args: &[String]) -> anyhow::Result<bool> {
    let mut threads = "2".to_string();
    let mut jobs = "3".to_string();
    let mut extra = Vec::new();
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("test") => {}
        Some("docs") => {
            return match it.next().map(String::as_str) {
                None => docs_command(false),
                Some("--check") => docs_command(true),
                Some(other) => bail!("unknown argument {other:?}\n{USAGE}"),
            };
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(true);
        }
        _ => bail!("{USAGE}"),
    }
    while let Some(a) = it.next() {
        match a.as_str() {
            "--threads" => threads = it.next().context("--threads needs a number")?.clone(),
            "--jobs" => jobs = it.next().context("--jobs needs a number")?.clone(),
            "--" => extra.extend(it.by_ref().cloned()),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(true);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    threads
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("--threads {threads:?}: give a whole number above 0"))?;
    let jobs = jobs
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .with_context(|| format!("--jobs {jobs:?}: give a whole number above 0"))?;

    let started = Instant::now();
    let target = target_dir();
    let src = mirror_dir(&target);
    let _held = mirror::lock(&src)?;
    mirrored(&src)?;
    agent(&src, &target)?;
    let binaries = compile(&src, &target)?;
    let compile_secs = started.elapsed().as_secs_f64();
    let times = target.join("kiln-suite").join("times.tsv");
    std::fs::create_dir_all(times.parent().unwrap_or(&target))
        .with_context(|| format!("creating {}", target.join("kiln-suite").display()))?;
    std::fs::write(&times, "").with_context(|| times.display().to_string())?;

    let k3s = std::env::var_os("KILN_K3S_BINARY").is_some_and(|v| !v.is_empty());
    let suite = target.join("kiln-suite");
    let place = pool::Place {
        logs: suite.join("logs"),
        history: suite.join("binaries.tsv"),
        times: times.clone(),
    };
    let mut side_by_side = Vec::new();
    let mut ran = vec![docs_check(&target)];
    for b in &binaries {
        for (label, mut args) in passes(b, &threads, k3s) {
            args.extend(extra.iter().cloned());
            if b.qemu {
                continue;
            }
            side_by_side.push(pool::Job {
                binary: b.clone(),
                label,
                args,
            });
        }
    }
    // The QEMU scenarios that share the machine start at once, beside the other binaries:
    // neither keeps both cores busy all the time (the QEMU pass about 92 %, the others
    // about half), so together they finish sooner. The whole-machine scenarios, which
    // assert how soon a handshake comes, run after both, alone.
    let mut qemu_passes = Vec::new();
    for b in binaries.iter().filter(|b| b.qemu) {
        for (label, mut args) in passes(b, &threads, k3s) {
            args.extend(extra.iter().cloned());
            qemu_passes.push((b, label, args));
        }
    }
    let (shared, whole) = qemu_passes.split_at(qemu_passes.len().min(1));
    let (others, first) = std::thread::scope(|s| {
        let others = s.spawn(|| pool::run(jobs, side_by_side, &place, &mut std::io::stdout()));
        let first: anyhow::Result<Vec<Ran>> = shared
            .iter()
            .map(|(b, label, args)| run_binary(b, label, args, &times))
            .collect();
        let others = others
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the side-by-side runner panicked")));
        (others, first)
    });
    ran.extend(others?);
    ran.extend(first?);
    for (b, label, args) in whole {
        ran.push(run_binary(b, label, args, &times)?);
    }
    pool::write_history(&place.history, &ran)?;
    let scenarios = std::fs::read_to_string(&times).unwrap_or_default();
    let ok = report::print(
        &mut std::io::stdout().lock(),
        compile_secs,
        &ran,
        &scenarios,
        started.elapsed().as_secs_f64(),
    );
    Ok(ok)
}

/// Copies the checkout into the suite's mirror `src` (the caller holds its lock).
fn mirrored(src: &Path) -> anyhow::Result<()> {
    let files = mirror::checkout_files(&workspace())?;
    let synced = mirror::sync(&workspace(), src, &files)?;
    println!(
        "xtask: building in {} (the checkout's {} files; {} written, {} removed: see xtask/src/mirror.rs)",
        src.display(),
        synced.files,
        synced.written,
        synced.removed
    );
    Ok(())
}

/// The programs the CLI reference shows, as the suite builds them.
fn programs(target: &Path) -> docs::Programs {
    docs::Programs {
        kiln: target.join("suite").join("kiln"),
        enroll: target.join("suite").join("kiln-enroll"),
        agent: target
            .join(HOST_AGENT_TARGET)
            .join("agent")
            .join("kiln-agent"),
    }
}

/// The docs' checks as one entry of the suite: the links resolve and the CLI reference
/// is what the programs print.
fn docs_check(target: &Path) -> Ran {
    let started = Instant::now();
    println!(
        "\n==> docs: links in README.md and docs/src, {}",
        docs::CLI_PAGE
    );
    let mut failed = 0;
    match docs::check_links(&workspace()) {
        Ok(bad) if bad.is_empty() => println!("links: ok"),
        Ok(bad) => {
            failed += 1;
            for b in &bad {
                println!("links: {}: {} ({})", b.at, b.target, b.why);
            }
        }
        Err(e) => {
            failed += 1;
            println!("links: {e:#}");
        }
    }
    match docs::cli_page(&workspace(), &programs(target), false) {
        Ok(()) => println!("CLI reference: ok"),
        Err(e) => {
            failed += 1;
            println!("CLI reference: {e:#}");
        }
    }
    Ran {
        label: "docs (links, CLI reference)".into(),
        secs: started.elapsed().as_secs_f64(),
        passed: failed == 0,
        counts: Some(Counts {
            passed: 2 - failed,
            failed,
            ignored: 0,
        }),
    }
}

/// `xtask docs [--check]`: builds the programs (as the suite does) and writes, or checks,
/// the CLI reference; checks the links either way.
fn docs_command(check: bool) -> anyhow::Result<bool> {
    let target = target_dir();
    let src = mirror_dir(&target);
    let held = mirror::lock(&src)?;
    mirrored(&src)?;
    agent(&src, &target)?;
    let status = cargo_command()
        .args([
            "build",
            "--locked",
            "-q",
            "--profile",
            "suite",
            "-p",
            "kiln",
            "-p",
            "kiln-enroll",
        ])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&src)
        .status()
        .context("running cargo build -p kiln -p kiln-enroll")?;
    if !status.success() {
        bail!("building kiln and kiln-enroll failed ({status})");
    }
    drop(held);
    docs::cli_page(&workspace(), &programs(&target), !check)?;
    let bad = docs::check_links(&workspace())?;
    for b in &bad {
        println!("{}: {} ({})", b.at, b.target, b.why);
    }
    if !check {
        println!("xtask: wrote {}", docs::CLI_PAGE);
    }
    Ok(bad.is_empty())
}

/// The QEMU scenarios that take the whole machine (`kiln_qemu_tests::share::whole_machine`):
/// three or more VMs each. Run together with the others they wait, and one core idles,
/// until the other test thread's VMs are done; so they run in a pass of their own.
const WHOLE_MACHINE: &[&str] = &["overlay::", "cluster::"];

/// How a binary runs: (label, arguments) per pass. The QEMU binary runs twice: its other
/// scenarios on `threads` threads, then the whole-machine ones one at a time (and its
/// ignored k3s scenario when `k3s`).
fn passes(b: &TestBinary, threads: &str, k3s: bool) -> Vec<(String, Vec<String>)> {
    let threads_arg = format!("--test-threads={threads}");
    if !b.qemu {
        return vec![(b.label.clone(), vec![threads_arg])];
    }
    // The scenarios print how long their steps took (boot to report, enrollment, first
    // handshake): shown for passing scenarios too, so a slow one can be read in CI's log.
    let mut shared = vec![threads_arg, "--show-output".to_string()];
    for w in WHOLE_MACHINE {
        shared.extend(["--skip".to_string(), w.to_string()]);
    }
    let mut whole = vec!["--test-threads=1".to_string(), "--show-output".to_string()];
    if k3s {
        whole.push("--include-ignored".into());
    }
    whole.extend(WHOLE_MACHINE.iter().map(|w| w.to_string()));
    vec![
        (b.label.clone(), shared),
        (format!("{} ({})", b.label, WHOLE_MACHINE.join(" ")), whole),
    ]
}

/// The cargo target folder (`$CARGO_TARGET_DIR`, else `target` in the workspace).
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// The suite's mirror of the checkout: beside cargo's target folder, never inside it.
///
/// Cargo records the sources a crate was compiled from relative to the target folder
/// when they are inside it, and relative to the package otherwise; and kiln's crates get
/// the same output files whichever checkout they are built from. With the mirror inside
/// the target folder, a build from the checkout (`make agent`, `make image`) compared
/// the mirror's files, not its own, with the last build and could keep a binary built
/// from other sources (`make repro` caught an agent a suite run had left). Beside it, a
/// build checks the files of the checkout it builds. A mirror left inside by an older
/// kiln is removed, since cargo keeps reading it for every crate it compiled.
fn mirror_dir(target: &Path) -> PathBuf {
    let old = target.join("kiln-suite").join("src");
    if old.exists() {
        eprintln!(
            "xtask: removing the old source mirror {} (it now lives beside the target folder)",
            old.display()
        );
        if let Err(e) = std::fs::remove_dir_all(&old) {
            eprintln!("xtask: cannot remove {}: {e}", old.display());
        }
    }
    let name = target
        .file_name()
        .map_or_else(|| "target".into(), |n| n.to_string_lossy().into_owned());
    target.with_file_name(format!("{name}-suite-src"))
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// The variables `cargo run` sets for xtask itself (its package, its manifest folder in
/// this clone). Passed on to the cargo that builds the suite they would be read as the
/// build environment: build scripts that watch them (ring's watches CARGO_MANIFEST_DIR)
/// then ran again, and everything above them recompiled, whenever the clone's path
/// changed: 75-180 s of a warm run.
fn from_cargo_run(name: &str) -> bool {
    matches!(
        name,
        "CARGO_MANIFEST_DIR"
            | "CARGO_MANIFEST_PATH"
            | "CARGO_MANIFEST_LINKS"
            | "CARGO_CRATE_NAME"
            | "CARGO_BIN_NAME"
            | "CARGO_PRIMARY_PACKAGE"
            | "CARGO_RUSTC_CURRENT_DIR"
            | "OUT_DIR"
    ) || name.starts_with("CARGO_PKG_")
}

/// `cargo` without the variables of [`from_cargo_run`].
fn cargo_command() -> Command {
    without_cargo_run_env(Command::new(cargo()))
}

/// `c` without the variables of [`from_cargo_run`] (it runs cargo, or a script that does).
fn without_cargo_run_env(mut c: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(from_cargo_run) {
            c.env_remove(&name);
        }
    }
    c
}

/// The in-image agent for both arches (the images the QEMU tests build carry it), built
/// by the script `make agent` runs (`scripts/agent.sh`, from the mirror): the same
/// compiler flags, so the suite's agent has the bytes `make agent`'s has, and the two
/// do not rebuild each other's (they share the target folder and cargo's home).
fn agent(src: &Path, target: &Path) -> anyhow::Result<()> {
    let script = src.join("scripts").join("agent.sh");
    let status = without_cargo_run_env(Command::new("bash"))
        .arg(&script)
        .arg("-q")
        .env("CARGO", cargo())
        .env("CARGO_TARGET_DIR", target)
        .current_dir(src)
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("building the agent failed ({status})");
    }
    Ok(())
}

/// The agent target whose static binary runs on the host (for its --help); scripts/agent.sh
/// builds it with the arm64 one.
const HOST_AGENT_TARGET: &str = "x86_64-unknown-linux-musl";

/// `cargo test --no-run` for the workspace: the test binaries.
fn compile(src: &Path, target: &Path) -> anyhow::Result<Vec<TestBinary>> {
    let cargo = cargo();
    let mut child = cargo_command()
        .args([
            "test",
            "--locked",
            "--profile",
            "suite",
            "--workspace",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(src)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {cargo} test --no-run"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut binaries = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's messages")?;
        if let Some(b) = test_binary(&line) {
            binaries.push(b);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo test --no-run failed ({status})");
    }
    // The QEMU scenarios last: the quick checks fail first.
    binaries.sort_by(|a, b| (a.qemu, &a.label).cmp(&(b.qemu, &b.label)));
    Ok(binaries)
}

/// A `compiler-artifact` message for a test executable, as a [`TestBinary`].
fn test_binary(line: &str) -> Option<TestBinary> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
        return None;
    }
    let exe = PathBuf::from(v["executable"].as_str()?);
    let manifest = PathBuf::from(v["manifest_path"].as_str()?);
    let target = v["target"]["name"].as_str()?;
    let kind = v["target"]["kind"][0].as_str().unwrap_or("test");
    // The package name: the last path part of the package id's source, before `#`.
    let id = v["package_id"].as_str().unwrap_or_default();
    let package = manifest
        .parent()
        .and_then(|d| package_name(&d.join("Cargo.toml")))
        .unwrap_or_else(|| id.to_string());
    let what = match kind {
        "lib" => "lib".to_string(),
        "bin" => format!("bin {target}"),
        _ => target.to_string(),
    };
    Some(TestBinary {
        label: format!("{package} {what}"),
        exe,
        dir: manifest.parent()?.to_path_buf(),
        qemu: package == "kiln-qemu-tests" && target == "qemu",
    })
}

/// `name = "..."` of a Cargo.toml's `[package]`.
fn package_name(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let mut in_package = false;
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_package = l == "[package]";
        } else if in_package {
            if let Some(v) = l.strip_prefix("name") {
                return Some(
                    v.trim_start()
                        .strip_prefix('=')?
                        .trim()
                        .trim_matches('"')
                        .into(),
                );
            }
        }
    }
    None
}

/// Runs one test binary, passing its output through, and reads its `test result:` line.
fn run_binary(b: &TestBinary, label: &str, args: &[String], times: &Path) -> anyhow::Result<Ran> {
    println!("\n==> {label} ({} {})", b.exe.display(), args.join(" "));
    let _ = std::io::stdout().flush();
    let started = Instant::now();
    let mut child = Command::new(&b.exe)
        .args(args)
        .current_dir(&b.dir)
        .env("CARGO_MANIFEST_DIR", &b.dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .env("KILN_TEST_TIMES", times)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {}", b.exe.display()))?;
    let stdout = child.stdout.take().context("test stdout")?;
    let mut counts = None;
    let mut out = std::io::stdout();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading test output")?;
        if let Some(c) = Counts::parse(&line) {
            counts = Some(c);
        }
        // A closed stdout (`make test | head`) must not stop the suite.
        let _ = writeln!(out, "{line}");
    }
    let status = child.wait().context("waiting for the test binary")?;
    Ok(Ran {
        label: label.to_string(),
        secs: started.elapsed().as_secs_f64(),
        passed: status.success(),
        counts,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn test_executables_are_found_in_cargo_messages() {
        let manifest = workspace().join("builder/Cargo.toml");
        let line = serde_json::json!({
            "reason": "compiler-artifact",
            "package_id": "path+file:///w/builder#kiln@0.1.0",
            "manifest_path": manifest,
            "target": {"name": "cli", "kind": ["test"]},
            "profile": {"test": true},
            "executable": "/t/release/deps/cli-1234",
        })
        .to_string();
        let b = test_binary(&line).unwrap();
        assert_eq!(b.label, "kiln cli");
        assert_eq!(b.exe, PathBuf::from("/t/release/deps/cli-1234"));
        assert!(!b.qemu);
        // A library build (not a test) and other messages are not test binaries.
        let lib = line.replace("\"test\":true", "\"test\":false");
        assert!(test_binary(&lib).is_none());
        assert!(test_binary("{\"reason\":\"build-finished\",\"success\":true}").is_none());
        assert!(test_binary("not json").is_none());
    }

    #[test]
    fn the_qemu_binary_runs_its_whole_machine_scenarios_apart() {
        let mut b = TestBinary {
            label: "kiln-qemu-tests qemu".into(),
            exe: "/q".into(),
            dir: "/d".into(),
            qemu: true,
        };
        let p = passes(&b, "2", false);
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].1,
            [
                "--test-threads=2",
                "--show-output",
                "--skip",
                "overlay::",
                "--skip",
                "cluster::"
            ]
        );
        assert_eq!(
            p[1].1,
            [
                "--test-threads=1",
                "--show-output",
                "overlay::",
                "cluster::"
            ]
        );
        let with_k3s = passes(&b, "2", true);
        assert_eq!(
            with_k3s[1].1,
            [
                "--test-threads=1",
                "--show-output",
                "--include-ignored",
                "overlay::",
                "cluster::"
            ]
        );
        b.qemu = false;
        assert_eq!(
            passes(&b, "3", true),
            [(
                "kiln-qemu-tests qemu".to_string(),
                vec!["--test-threads=3".to_string()]
            )]
        );
    }

    #[test]
    fn the_suites_cargo_does_not_see_where_xtask_was_run_from() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "OUT_DIR",
        ] {
            assert!(from_cargo_run(name), "{name}");
        }
        for name in [
            "CARGO_TARGET_DIR",
            "CARGO_HOME",
            "CARGO_TERM_COLOR",
            "CARGO",
            "PATH",
        ] {
            assert!(!from_cargo_run(name), "{name}");
        }
        // Under `cargo test` this process has CARGO_MANIFEST_DIR: the command drops it.
        let c = cargo_command();
        assert!(c
            .get_envs()
            .any(|(k, v)| k == "CARGO_MANIFEST_DIR" && v.is_none()));
    }

    #[test]
    fn package_names_come_from_the_manifest() {
        assert_eq!(
            package_name(&workspace().join("qemu-tests/Cargo.toml")).as_deref(),
            Some("kiln-qemu-tests")
        );
        assert_eq!(
            package_name(&workspace().join("xtask/Cargo.toml")).as_deref(),
            Some("xtask")
        );
    }
}
