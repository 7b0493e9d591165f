//! Secret randomness for token ids and secrets, straight from the kernel.

use std::io::{self, Read};

const SOURCE: &str = "/dev/urandom";

/// `N` random bytes from /dev/urandom; the error names the device.
pub fn bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    std::fs::File::open(SOURCE)
        .and_then(|mut f| f.read_exact(&mut out))
        .map_err(|e| io::Error::new(e.kind(), format!("reading {SOURCE}: {e}")))?;
    Ok(out)
}
