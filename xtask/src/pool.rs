//! The test binaries that boot no VM, run side by side.
//!
//! Most of them leave a core idle for much of their time: the enrollment server's tests
//! wait on sockets and timeouts, the agent's on its retry timers, the big-image format
//! test compresses on one thread while `bmaptool` and `tar` check it. Run one after the
//! other they took over four minutes on a 2-core machine and kept it busy about half that
//! time. Here `jobs` of them run at once, the longest first (by the times of the last run,
//! kept in `kiln-suite/binaries.tsv`), each binary's output captured to a log file and
//! printed whole when it ends, so the log still reads one binary at a time.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Context;

use crate::report::{Counts, Ran};
use crate::TestBinary;

/// One binary to run: what, under which label, with which arguments.
pub struct Job {
    /// The binary.
    pub binary: TestBinary,
    /// Its label in the log and the summary.
    pub label: String,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Where the binaries' logs and last times live.
pub struct Place {
    /// `kiln-suite/logs`: one `<label>.log` per binary, rewritten each run.
    pub logs: PathBuf,
    /// `kiln-suite/binaries.tsv`: `label<TAB>seconds` of the last run.
    pub history: PathBuf,
    /// The QEMU harness's times file (`KILN_TEST_TIMES`), passed on to every binary.
    pub times: PathBuf,
}

/// Runs `work` with at most `jobs` binaries at once, longest first, writing each one's
/// output to `out` as one block when it ends; returns what ran, in the order they ended.
pub fn run(
    jobs: usize,
    work: Vec<Job>,
    place: &Place,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Vec<Ran>> {
    std::fs::create_dir_all(&place.logs)
        .with_context(|| format!("creating {}", place.logs.display()))?;
    let last = read_history(&place.history);
    let queue = Mutex::new(VecDeque::from(longest_first(work, &last)));
    let done = Mutex::new(Vec::new());
    let failure = Mutex::new(None);
    let out = Mutex::new(out);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let Some(job) = queue.lock().map(|mut q| q.pop_front()).ok().flatten() else {
                    return;
                };
                match run_captured(&job, place) {
                    Ok((r, block)) => {
                        if let Ok(mut o) = out.lock() {
                            // A closed stdout (`make test | head`) must not stop the suite.
                            let _ = o.write_all(block.as_bytes());
                            let _ = o.flush();
                        }
                        if let Ok(mut d) = done.lock() {
                            d.push(r);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(done.into_inner().unwrap_or_default())
}

/// Records every binary's time for the next run's ordering.
pub fn write_history(path: &Path, ran: &[Ran]) -> anyhow::Result<()> {
    let mut text = String::new();
    for r in ran {
        text.push_str(&format!("{}\t{:.1}\n", r.label, r.secs));
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn read_history(path: &Path) -> BTreeMap<String, f64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (label, secs) = l.rsplit_once('\t')?;
            Some((label.to_string(), secs.parse().ok()?))
        })
        .collect()
}

/// The order to start them in: binaries never timed first (they may be long), then the
/// slowest of the last run first, so the long ones do not start last and run alone.
fn longest_first(mut work: Vec<Job>, last: &BTreeMap<String, f64>) -> Vec<Job> {
    let key = |j: &Job| last.get(&j.label).copied().unwrap_or(f64::INFINITY);
    work.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then_with(|| a.label.cmp(&b.label))
    });
    work
}

/// Runs one binary with its output (stdout and stderr, in the order written) going to its
/// log file; returns what ran and the log under a header, to be printed as one block.
fn run_captured(job: &Job, place: &Place) -> anyhow::Result<(Ran, String)> {
    let log_path = place
        .logs
        .join(format!("{}.log", job.label.replace([' ', '/'], "_")));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let err = log
        .try_clone()
        .with_context(|| format!("sharing {}", log_path.display()))?;
    let started = Instant::now();
    let status = Command::new(&job.binary.exe)
        .args(&job.args)
        .current_dir(&job.binary.dir)
        .env("CARGO_MANIFEST_DIR", &job.binary.dir)
        .env("CARGO_TARGET_DIR", crate::target_dir())
        .env("KILN_TEST_TIMES", &place.times)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .status()
        .with_context(|| format!("running {}", job.binary.exe.display()))?;
    let secs = started.elapsed().as_secs_f64();
    let text =
        std::fs::read(&log_path).with_context(|| format!("reading {}", log_path.display()))?;
    let text = String::from_utf8_lossy(&text);
    let counts = text.lines().filter_map(Counts::parse).next_back();
    let block = format!(
        "\n==> {} ({} {}) {secs:.1} s, log {}\n{text}",
        job.label,
        job.binary.exe.display(),
        job.args.join(" "),
        log_path.display()
    );
    let ran = Ran {
        label: job.label.clone(),
        secs,
        passed: status.success(),
        counts,
    };
    Ok((ran, block))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn job(label: &str, exe: &str, args: &[&str]) -> Job {
        Job {
            binary: TestBinary {
                label: label.into(),
                exe: exe.into(),
                dir: std::env::temp_dir(),
                qemu: false,
            },
            label: label.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn untimed_binaries_start_first_then_the_slowest() {
        let last = BTreeMap::from([("a".to_string(), 5.0), ("b".to_string(), 50.0)]);
        let order: Vec<String> = longest_first(
            vec![job("a", "x", &[]), job("b", "x", &[]), job("new", "x", &[])],
            &last,
        )
        .into_iter()
        .map(|j| j.label)
        .collect();
        assert_eq!(order, ["new", "b", "a"]);
    }

    #[test]
    fn binaries_run_side_by_side_and_their_counts_and_status_are_read() {
        let d = tempfile_dir();
        let place = Place {
            logs: d.join("logs"),
            history: d.join("binaries.tsv"),
            times: d.join("times.tsv"),
        };
        // Two that each wait for the other's file: they finish only if they overlap.
        let a = d.join("a");
        let b = d.join("b");
        let wait_for = |mine: &Path, other: &Path, result: &str| {
            format!(
                "touch {m}; n=0; while [ ! -e {o} ] && [ $n -lt 200 ]; do sleep 0.05; n=$((n+1)); done; \
                 [ -e {o} ] || exit 3; echo 'test result: {result}'; echo to-stderr >&2",
                m = mine.display(),
                o = other.display()
            )
        };
        let ok = wait_for(&a, &b, "ok. 2 passed; 0 failed; 1 ignored; 0 measured");
        let bad = wait_for(&b, &a, "FAILED. 1 passed; 1 failed; 0 ignored; 0 measured");
        let mut printed = Vec::new();
        let ran = run(
            2,
            vec![
                job("one", "sh", &["-c", &ok]),
                job("two", "sh", &["-c", &bad]),
            ],
            &place,
            &mut printed,
        )
        .unwrap();
        // Each binary's output is one block under its header.
        let printed = String::from_utf8(printed).unwrap();
        for label in ["one", "two"] {
            let at = printed.find(&format!("==> {label} (sh -c")).unwrap();
            let block = &printed[at..];
            let block = block[4..]
                .find("\n==> ")
                .map_or(block, |end| &block[..end + 4]);
            assert!(block.contains("test result: "), "{printed}");
            assert!(block.contains("to-stderr"), "{printed}");
        }
        let by: BTreeMap<&str, &Ran> = ran.iter().map(|r| (r.label.as_str(), r)).collect();
        assert!(by["one"].passed, "{ran:?}");
        assert_eq!(
            by["one"].counts,
            Some(Counts {
                passed: 2,
                failed: 0,
                ignored: 1
            })
        );
        assert_eq!(by["two"].counts.map(|c| c.failed), Some(1));
        let log = std::fs::read_to_string(place.logs.join("one.log")).unwrap();
        assert!(log.contains("to-stderr"), "{log}");
        write_history(&place.history, &ran).unwrap();
        let back = read_history(&place.history);
        assert_eq!(back.len(), 2);
        assert!(back["one"] >= 0.0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-pool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
