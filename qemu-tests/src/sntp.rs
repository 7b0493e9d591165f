//! SNTP for the guests' timesyncd: the server lives in the builder library
//! (`kiln::qemu::sntp`, which `kiln run` uses too); this is the harness's
//! process-wide instance.
//!
//! The QEMU profile points timesyncd at 10.0.2.2, which QEMU's user-mode
//! network delivers to the host's 127.0.0.1:123. The guests' preflight waits
//! for a synced clock, so every boot that waits for `kiln-preflight: passed`
//! needs a server there.

use std::net::SocketAddr;
use std::sync::OnceLock;

pub use kiln::qemu::sntp::{answer, SntpServer, HOST_NTP_ADDR as GUEST_NTP_ADDR};
use kiln::qemu::sntp::{serve_for_guests, GuestNtp};

static SERVER: OnceLock<Result<Option<SntpServer>, String>> = OnceLock::new();

/// The process-wide server on 127.0.0.1:123, started on first use (or one
/// that already answers there, such as a `kiln run` or another test process).
/// An error says why the boots that need it cannot pass: port 123 needs root
/// (or CAP_NET_BIND_SERVICE) and must be free.
pub fn ensure_server() -> anyhow::Result<SocketAddr> {
    let state = SERVER.get_or_init(|| match serve_for_guests() {
        GuestNtp::Serving(s) => Ok(Some(s)),
        GuestNtp::AlreadyServed => Ok(None),
        GuestNtp::Unavailable(e) => Err(e.to_string()),
    });
    match state {
        Ok(Some(s)) => Ok(s.addr()),
        Ok(None) => Ok(GUEST_NTP_ADDR.parse()?),
        Err(e) => anyhow::bail!(
            "cannot serve SNTP on {GUEST_NTP_ADDR}: {e}. The guests' timesyncd syncs from \
             10.0.2.2:123, which QEMU's user network delivers to the host's 127.0.0.1:123, \
             and the node's preflight waits for a synced clock: run the tests as root (or \
             give the test binary CAP_NET_BIND_SERVICE) with nothing else on UDP port 123"
        ),
    }
}
