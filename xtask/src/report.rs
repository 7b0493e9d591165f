//! The suite's summary: where the time went and what passed.

use std::io::Write;

/// The counts of one binary's `test result:` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// Ignored tests (those that cannot run here, each with its reason).
    pub ignored: u64,
}

impl Counts {
    /// Reads `test result: ok. 3 passed; 1 failed; 2 ignored; ...`.
    pub fn parse(line: &str) -> Option<Counts> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let mut c = Counts::default();
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (n, what) = match words.as_slice() {
                [_, n, what] if n.parse::<u64>().is_ok() => (*n, *what),
                [n, what, ..] => (*n, *what),
                _ => continue,
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => c.passed = n,
                "failed" => c.failed = n,
                "ignored" => c.ignored = n,
                _ => {}
            }
        }
        Some(c)
    }
}

/// One test binary that ran.
#[derive(Debug, Clone)]
pub struct Ran {
    /// `package target`.
    pub label: String,
    /// Wall time.
    pub secs: f64,
    /// Exit status 0.
    pub passed: bool,
    /// Its `test result:` line, if it printed one.
    pub counts: Option<Counts>,
}

/// How many of the slowest scenarios are listed.
const SLOWEST: usize = 15;

/// Prints the summary; true when everything passed.
pub fn print(
    out: &mut dyn Write,
    compile_secs: f64,
    ran: &[Ran],
    scenarios: &str,
    total: f64,
) -> bool {
    let mut lines = Vec::new();
    lines.push(String::new());
    lines.push("==> suite summary".to_string());
    lines.push(format!(
        "{:<44} {:>8.1} s",
        "compile (mirror, agent, cargo test --no-run)", compile_secs
    ));
    let mut by_time: Vec<&Ran> = ran.iter().collect();
    by_time.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    lines.push("test binaries, slowest first:".to_string());
    let mut sum = Counts::default();
    let mut broken = Vec::new();
    for r in &by_time {
        let c = r.counts.unwrap_or_default();
        sum.passed += c.passed;
        sum.failed += c.failed;
        sum.ignored += c.ignored;
        let state = if r.passed { "" } else { "  FAILED" };
        lines.push(format!(
            "  {:<42} {:>8.1} s  {:>4} passed, {} ignored{state}",
            r.label, r.secs, c.passed, c.ignored
        ));
        if !r.passed {
            broken.push(r.label.clone());
        }
    }
    let mut rows: Vec<(String, f64, bool, f64)> =
        scenarios.lines().filter_map(parse_scenario).collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    if !rows.is_empty() {
        lines.push(format!("slowest QEMU scenarios ({} timed):", rows.len()));
        for (name, secs, ok, waited) in rows.iter().take(SLOWEST) {
            let wait = if *waited >= 1.0 {
                format!(" (of which {waited:.0} s waiting for other tests' VMs)")
            } else {
                String::new()
            };
            let state = if *ok { "" } else { "  FAILED" };
            lines.push(format!("  {name:<70} {secs:>7.1} s{wait}{state}"));
        }
    }
    lines.push(format!("{:<44} {:>8.1} s", "total", total));
    // A binary that died without a result line failed without counting its tests.
    let failed_binaries = broken.len() as u64;
    let failed = sum.failed.max(failed_binaries);
    if !broken.is_empty() {
        lines.push(format!("failed: {}", broken.join(", ")));
    }
    lines.push(format!(
        "suite: {} passed, {} failed, {} skipped",
        sum.passed, failed, sum.ignored
    ));
    for l in lines {
        let _ = writeln!(out, "{l}");
    }
    let _ = out.flush();
    broken.is_empty()
}

/// One line of the scenario times file that `kiln_qemu_tests::timing` writes:
/// `name<TAB>seconds<TAB>ok|FAILED<TAB>seconds waited`.
fn parse_scenario(line: &str) -> Option<(String, f64, bool, f64)> {
    let mut f = line.split('\t');
    let name = f.next()?.to_string();
    let secs = f.next()?.parse().ok()?;
    let ok = f.next()? == "ok";
    let waited = f.next().and_then(|w| w.parse().ok()).unwrap_or(0.0);
    Some((name, secs, ok, waited))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn result_lines_are_counted() {
        assert_eq!(
            Counts::parse("test result: ok. 212 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 20.03s"),
            Some(Counts { passed: 212, failed: 0, ignored: 1 })
        );
        assert_eq!(
            Counts::parse("test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s"),
            Some(Counts { passed: 3, failed: 2, ignored: 0 })
        );
        assert_eq!(Counts::parse("running 3 tests"), None);
    }

    #[test]
    fn the_summary_lists_the_slowest_first_and_counts_a_silent_failure() {
        let ran = vec![
            Ran {
                label: "kiln lib".into(),
                secs: 20.0,
                passed: true,
                counts: Some(Counts {
                    passed: 200,
                    failed: 0,
                    ignored: 0,
                }),
            },
            Ran {
                label: "kiln-qemu-tests qemu".into(),
                secs: 700.0,
                passed: true,
                counts: Some(Counts {
                    passed: 26,
                    failed: 0,
                    ignored: 1,
                }),
            },
            Ran {
                label: "kiln cli".into(),
                secs: 5.0,
                passed: false,
                counts: None,
            },
        ];
        let times = "boot::x86_64\t60.0\tok\t0.0\noverlay::nat\t300.5\tok\t42.0\nverity::a\t20.0\tFAILED\t0.0\n";
        let mut out = Vec::new();
        assert!(!print(&mut out, 300.0, &ran, times, 1100.0));
        let text = String::from_utf8(out).unwrap();
        let qemu = text.find("kiln-qemu-tests qemu").unwrap();
        let lib = text.find("kiln lib").unwrap();
        assert!(qemu < lib, "{text}");
        let nat = text.find("overlay::nat").unwrap();
        assert!(nat < text.find("boot::x86_64").unwrap(), "{text}");
        assert!(
            text.contains("(of which 42 s waiting for other tests' VMs)"),
            "{text}"
        );
        assert!(text.contains("verity::a"), "{text}");
        assert!(text.contains("failed: kiln cli"), "{text}");
        assert!(
            text.ends_with("suite: 226 passed, 1 failed, 1 skipped\n"),
            "{text}"
        );
    }
}
