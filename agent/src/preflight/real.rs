//! The running system behind [`PreflightSys`]: containerd's socket (files, programs, the
//! clock and the console are [`RealSys`]'s own).

use std::io;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::{PreflightSys, Stream};
use crate::sys::real::RealSys;

/// Limit for each read or write on the containerd socket.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

impl PreflightSys for RealSys {
    fn connect(&mut self, path: &str) -> io::Result<Box<dyn Stream>> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        s.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        Ok(Box::new(s))
    }
}
