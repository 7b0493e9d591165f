//! Wakes long polls when the peer list's version grows. The store's [`crate::store::Feed`]
//! reports each new version once the list at that version is in place: at once for
//! writes made by this process, and for writes made elsewhere (another replica on the
//! same PostgreSQL, or `kiln-enroll node revoke`) when one poller refreshes the feed
//! every second ([`Notifier::poll`]), so a thousand waiting nodes cost one database read
//! per second, not a thousand. Woken waiters answer from the feed's shared answers.
//!
//! A long poll waits as a tokio task ([`Notifier::wait_beyond`]), not a thread: a waiting
//! node costs a few hundred bytes of memory.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{Store, StoreError};

/// How often the poller re-reads the stored version.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The highest peer-list version seen; waiters subscribe to it.
pub struct Notifier {
    version: watch::Sender<u64>,
}

impl Default for Notifier {
    fn default() -> Notifier {
        Notifier::new()
    }
}

impl Notifier {
    /// A notifier that has seen version 0.
    pub fn new() -> Notifier {
        Notifier {
            version: watch::Sender::new(0),
        }
    }

    /// The peer list is at `version` (or later): wake waiters if that is news.
    pub fn observe(&self, version: u64) {
        self.version.send_if_modified(|seen| {
            if version > *seen {
                *seen = version;
                true
            } else {
                false
            }
        });
    }

    /// Brings the store's feed up to the stored version and reports it (the poller's
    /// step). Blocks on the store.
    pub fn poll(&self, store: &dyn Store) -> Result<u64, StoreError> {
        let version = store.refresh()?;
        self.observe(version);
        Ok(version)
    }

    /// The highest version seen.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Waits until a version above `since` is seen or `deadline` passes; returns the
    /// highest version seen. The caller reads the store once first ([`Notifier::poll`]),
    /// so a stale notifier never makes a node wait for a change that already happened.
    pub async fn wait_beyond(&self, since: u64, deadline: Instant) -> u64 {
        let mut rx = self.version.subscribe();
        // Either outcome is fine: a change, or the deadline with the version as it is.
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|v| *v > since)).await;
        self.version()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn observe_wakes_a_waiter_and_old_news_does_not() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let n = Arc::new(Notifier::new());
            n.observe(5);
            n.observe(3);
            assert_eq!(n.version(), 5);
            let waiter = {
                let n = n.clone();
                tokio::spawn(async move {
                    let start = Instant::now();
                    let v = n
                        .wait_beyond(5, Instant::now() + Duration::from_secs(10))
                        .await;
                    (v, start.elapsed())
                })
            };
            // Old news wakes nobody: the waiter is still waiting after it.
            n.observe(4);
            tokio::task::yield_now().await;
            assert!(!waiter.is_finished());
            n.observe(6);
            let (v, took) = waiter.await.unwrap();
            assert_eq!(v, 6);
            assert!(took < Duration::from_secs(5), "{took:?}");
            // A deadline in the past returns at once with the version seen.
            assert_eq!(n.wait_beyond(6, Instant::now()).await, 6);
        });
    }
}
