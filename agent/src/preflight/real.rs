//! The running system behind [`PreflightSys`].

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{CommandResult, PreflightSys, Stream};
use crate::report::real::run_with_timeout;

/// Limit for one `--version` run of a tool.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for each read or write on the containerd socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

/// The running system.
#[derive(Debug)]
pub struct RealSys {
    start: Instant,
}

impl RealSys {
    /// Measures elapsed time from `start`.
    pub fn new(start: Instant) -> Self {
        Self { start }
    }
}

impl PreflightSys for RealSys {
    fn read_file(&mut self, path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn exists(&mut self, path: &str) -> bool {
        Path::new(path).exists()
    }

    fn connect(&mut self, path: &str) -> io::Result<Box<dyn Stream>> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        s.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        Ok(Box::new(s))
    }

    fn run(&mut self, program: &str, args: &[&str]) -> CommandResult {
        run_with_timeout(program, args, RUN_TIMEOUT)
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn elapsed(&mut self) -> Duration {
        self.start.elapsed()
    }

    fn say(&mut self, line: &str) {
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        // Each line should reach the console as it happens, not when the run ends.
        let _ = out.flush();
    }
}
