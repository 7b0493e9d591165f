//! The running system behind [`ImagesSys`]: containerd's socket (files, the clock and
//! the console are [`RealSys`]'s own).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::ImagesSys;
use crate::grpc::{self, CallError};
use crate::sys::real::RealSys;

/// Limit for each read or write on the socket: containerd answers these calls in
/// milliseconds, but a node emulated without KVM is slow while it boots.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(60);

impl ImagesSys for RealSys {
    fn grpc(
        &mut self,
        socket: &str,
        path: &str,
        metadata: &[(&str, &str)],
        request: &[u8],
    ) -> Result<Vec<Vec<u8>>, CallError> {
        let mut conn = UnixStream::connect(socket).map_err(|e| CallError::Io("connecting", e))?;
        conn.set_read_timeout(Some(SOCKET_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(SOCKET_TIMEOUT)))
            .map_err(|e| CallError::Io("setting the socket's timeouts", e))?;
        grpc::call(&mut conn, path, metadata, request)
    }
}
