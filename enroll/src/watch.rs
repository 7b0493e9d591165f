//! Wakes long polls when the peer list's version grows. Writes made by this process
//! report the new version at once ([`Notifier::observe`]); writes made elsewhere (another
//! replica on the same PostgreSQL, or `kiln-enroll node revoke`) are picked up by one
//! poller that reads the stored version every second ([`Notifier::poll`]), so a thousand
//! waiting nodes cost one database read per second, not a thousand.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// How often the poller re-reads the stored version.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The highest peer-list version seen, with a condition variable for waiters.
#[derive(Default)]
pub struct Notifier {
    version: Mutex<u64>,
    cv: Condvar,
}

impl Notifier {
    /// A notifier that has seen version 0.
    pub fn new() -> Notifier {
        Notifier::default()
    }

    /// The peer list is at `version` (or later): wake waiters if that is news.
    pub fn observe(&self, version: u64) {
        let mut v = self.version.lock().unwrap_or_else(|p| p.into_inner());
        if version > *v {
            *v = version;
            self.cv.notify_all();
        }
    }

    /// Reads the stored version and reports it (the poller's step, and what a local
    /// write calls after it committed).
    pub fn poll(&self, store: &dyn Store) -> Result<u64, StoreError> {
        let version = store.peers_version()?;
        self.observe(version);
        Ok(version)
    }

    /// The highest version seen.
    pub fn version(&self) -> u64 {
        *self.version.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a version above `since` is seen or `deadline` passes; returns the
    /// highest version seen. Reads the store once first, so a stale notifier never makes
    /// a node wait for a change that already happened.
    pub fn wait_beyond(
        &self,
        store: &dyn Store,
        since: u64,
        deadline: Instant,
    ) -> Result<u64, StoreError> {
        self.poll(store)?;
        let mut v = self.version.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            if *v > since || now >= deadline {
                return Ok(*v);
            }
            v = self
                .cv
                .wait_timeout(v, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn observe_wakes_a_waiter_and_old_news_does_not() {
        let n = Arc::new(Notifier::new());
        n.observe(5);
        n.observe(3);
        assert_eq!(n.version(), 5);
        let waiter = {
            let n = n.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut v = n.version.lock().unwrap();
                while *v <= 5 {
                    v = n.cv.wait_timeout(v, Duration::from_secs(10)).unwrap().0;
                }
                (*v, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        n.observe(6);
        let (v, took) = waiter.join().unwrap();
        assert_eq!(v, 6);
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
