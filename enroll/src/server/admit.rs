//! Which connections get served, decided the moment they are accepted, before any TLS
//! work: at most `--max-connections` at once, and at most `--max-per-source` from one
//! [`Source`] that are still in the TLS handshake or sending their request.
//!
//! The per-source cap counts only that first phase because it is the one a client can
//! stretch without credentials (trickling a handshake or a head), while a long poll
//! holds its connection legitimately: every node of a site behind one NAT keeps one open,
//! and those must not count against the site. A refused connection is closed at once,
//! which costs no handshake; the agent sees a network error and retries later.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::source::Source;

/// Default of `--max-per-source`.
pub const DEFAULT_MAX_PER_SOURCE: usize = 32;

/// The counts behind both caps.
pub struct Admission {
    max_total: usize,
    max_pending: usize,
    state: Mutex<State>,
    refused_total: AtomicU64,
    refused_source: AtomicU64,
}

#[derive(Default)]
struct State {
    total: usize,
    pending: HashMap<Source, usize>,
}

/// Why a connection was closed unserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--max-connections` are open.
    Total,
    /// The source has `--max-per-source` connections that have not sent their request.
    Source,
}

/// Connections refused since the last [`Admission::take_refused`]: over the total cap,
/// over a per-source cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefusedCounts {
    /// Over `--max-connections`.
    pub total: u64,
    /// Over `--max-per-source`.
    pub source: u64,
}

impl Admission {
    /// Caps of `max_total` connections and `max_pending` not-yet-requested ones per
    /// source.
    pub fn new(max_total: usize, max_pending: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_pending,
            state: Mutex::new(State::default()),
            refused_total: AtomicU64::new(0),
            refused_source: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Counts only: every update is a single step, so a poisoned lock holds whole ones.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A ticket for a connection from `ip`, or why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let source = Source::from(ip);
        let mut state = self.lock();
        if state.total >= self.max_total {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let pending = state.pending.entry(source).or_insert(0);
        if *pending >= self.max_pending {
            self.refused_source.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Source);
        }
        *pending += 1;
        state.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
            pending: AtomicBool::new(true),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    /// The refusals counted since the last call (for a periodic log line instead of one
    /// line per refused connection during a flood).
    pub fn take_refused(&self) -> RefusedCounts {
        RefusedCounts {
            total: self.refused_total.swap(0, Ordering::Relaxed),
            source: self.refused_source.swap(0, Ordering::Relaxed),
        }
    }

    fn release_pending(&self, state: &mut State, source: Source) {
        if let Some(n) = state.pending.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.pending.remove(&source);
            }
        }
    }
}

/// One admitted connection; gives its places back when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    source: Source,
    pending: AtomicBool,
}

impl Ticket {
    /// The whole request has arrived: the connection no longer counts against its
    /// source's cap (it still counts against the total).
    pub fn request_arrived(&self) {
        if self.pending.swap(false, Ordering::SeqCst) {
            let mut state = self.admission.lock();
            self.admission.release_pending(&mut state, self.source);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.total = state.total.saturating_sub(1);
        if self.pending.swap(false, Ordering::SeqCst) {
            self.admission.release_pending(&mut state, self.source);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn caps_pending_per_source_and_open_in_total() {
        let a = Admission::new(5, 2);
        let t1 = a.admit(ip("192.0.2.1")).unwrap();
        let t2 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.admit(ip("192.0.2.1")).err(), Some(Refused::Source));
        // The same /64 is the same source; another address is not.
        let v6 = a.admit(ip("2001:db8::1")).unwrap();
        let _v6b = a.admit(ip("2001:db8::2")).unwrap();
        assert_eq!(a.admit(ip("2001:db8::3")).err(), Some(Refused::Source));
        // A request that arrived frees its source's place, not its total place.
        t1.request_arrived();
        t1.request_arrived();
        let t3 = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.open(), 5);
        assert_eq!(a.admit(ip("198.51.100.1")).err(), Some(Refused::Total));
        drop((t1, t2, t3, v6));
        assert_eq!(a.open(), 1);
        assert!(a.lock().pending.len() == 1, "emptied sources are forgotten");
        assert_eq!(
            a.take_refused(),
            RefusedCounts {
                total: 1,
                source: 2
            }
        );
        assert_eq!(a.take_refused(), RefusedCounts::default());
    }
}
