//! Running the `kiln` binary under test and reading what it said.

use std::process::{Command, Output};

/// Runs the `kiln` binary this test crate was built with.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .unwrap()
}

/// Its stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Its stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts kiln did not panic.
pub fn assert_no_panic(o: &Output) {
    let e = stderr(o);
    assert!(!e.contains("panicked"), "kiln panicked:\n{e}");
}

/// Asserts exit status 1, no panic and exactly one `kiln: error:` line, which
/// contains every needle; returns that line.
pub fn assert_fails(o: &Output, needles: &[&str]) -> String {
    assert_no_panic(o);
    let e = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stderr:\n{e}\nstdout:\n{}",
        stdout(o)
    );
    let lines: Vec<&str> = e
        .lines()
        .filter(|l| l.starts_with("kiln: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "want one error line in:\n{e}");
    for n in needles {
        assert!(lines[0].contains(n), "error line lacks {n:?}: {}", lines[0]);
    }
    lines[0].to_string()
}
