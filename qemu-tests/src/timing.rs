//! How long each QEMU scenario took, for the slowest-tests list `make test` prints.
//!
//! libtest's own per-test timing is unstable, so each scenario holds a [`Scenario`] for its
//! whole run; when it ends (passed or failed) one line goes to the file named by
//! `$KILN_TEST_TIMES` (the suite runner sets it): `name<TAB>seconds<TAB>ok|FAILED`, plus
//! the seconds spent waiting for other tests' VMs (`share`), which are not the
//! scenario's own. The suite runner (`xtask test`) reads it.

use std::io::Write;
use std::time::{Duration, Instant};

/// The environment variable naming the file scenario times are appended to.
pub const TIMES_ENV: &str = "KILN_TEST_TIMES";

/// A running scenario; its time is written when it is dropped.
pub struct Scenario {
    name: String,
    started: Instant,
}

impl Scenario {
    /// Starts timing the scenario running on this thread: libtest names each test's
    /// thread after the test.
    pub fn start() -> Scenario {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed scenario")
            .to_string();
        crate::share::reset_waited();
        Scenario {
            name,
            started: Instant::now(),
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let Some(path) = std::env::var_os(TIMES_ENV).filter(|v| !v.is_empty()) else {
            return;
        };
        let line = format_line(
            &self.name,
            self.started.elapsed(),
            crate::share::waited(),
            !std::thread::panicking(),
        );
        // One write of a whole line to a file opened for appending: lines of scenarios
        // ending at the same time do not mix.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

fn format_line(name: &str, took: Duration, waited: Duration, ok: bool) -> String {
    format!(
        "{name}\t{:.1}\t{}\t{:.1}\n",
        took.as_secs_f64(),
        if ok { "ok" } else { "FAILED" },
        waited.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn lines_have_the_format_the_runner_reads() {
        let l = format_line(
            "boot::x86_64",
            Duration::from_millis(61_250),
            Duration::from_secs(3),
            false,
        );
        // xtask's report reads exactly this.
        assert_eq!(l, "boot::x86_64\t61.2\tFAILED\t3.0\n");
    }

    #[test]
    fn a_scenario_is_named_after_its_test() {
        let s = Scenario::start();
        assert_eq!(s.name, "timing::tests::a_scenario_is_named_after_its_test");
        // Not a scenario: nothing goes to the suite's times file.
        std::mem::forget(s);
    }
}
