//! Failed authentication attempts per [`Source`] (an IPv4 address or an IPv6 /64): after
//! `max` failures within a minute, the source's failing requests are answered 429 until
//! the oldest failure is a minute old.
//!
//! Only failures count, and the limit never refuses a request whose secret checks out:
//! the API checks the token or the node credential first and asks the limiter only about
//! requests that failed. So one broken or hostile client behind a shared NAT slows down
//! the wrong guesses from that NAT, never the nodes and tokens that are right.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use crate::source::Source;

/// The window failures are counted in.
pub const WINDOW_SECS: u64 = 60;
/// Default failures per window (`--max-failures`).
pub const DEFAULT_MAX_FAILURES: u32 = 20;
/// Sources tracked at most; beyond it the stalest entries are dropped, so a flood from
/// many addresses cannot grow memory without bound.
const MAX_TRACKED: usize = 100_000;

/// Per-source failure counter.
pub struct RateLimiter {
    max: u32,
    failures: Mutex<BTreeMap<Source, VecDeque<u64>>>,
}

impl RateLimiter {
    /// Allows `max` failures per minute per source (0 disables limiting).
    pub fn new(max: u32) -> RateLimiter {
        RateLimiter {
            max,
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// Seconds the source must wait before a failing request is answered as usual again,
    /// or None when it is not blocked.
    pub fn blocked(&self, ip: Source, now: u64) -> Option<u32> {
        if self.max == 0 {
            return None;
        }
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let q = map.get_mut(&ip)?;
        prune(q, now);
        if q.len() < self.max as usize {
            return None;
        }
        let oldest = q.front().copied().unwrap_or(now);
        let wait = (oldest + WINDOW_SECS).saturating_sub(now).max(1);
        Some(u32::try_from(wait).unwrap_or(u32::MAX))
    }

    /// Counts a failed attempt.
    pub fn failed(&self, ip: Source, now: u64) {
        if self.max == 0 {
            return;
        }
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            map.retain(|_, q| {
                prune(q, now);
                !q.is_empty()
            });
            if map.len() >= MAX_TRACKED {
                // Still full of fresh entries: forget the first one rather than grow.
                if let Some(k) = map.keys().next().copied() {
                    map.remove(&k);
                }
            }
        }
        let q = map.entry(ip).or_default();
        prune(q, now);
        q.push_back(now);
        // Older entries than `max` cannot matter for the decision.
        while q.len() > self.max as usize {
            q.pop_front();
        }
    }
}

fn prune(q: &mut VecDeque<u64>, now: u64) {
    while q.front().is_some_and(|t| t + WINDOW_SECS <= now) {
        q.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_until_the_window_passes() {
        let rl = RateLimiter::new(3);
        let a = source("192.0.2.1");
        let b = source("192.0.2.2");
        rl.failed(a, 100);
        rl.failed(a, 110);
        assert_eq!(rl.blocked(a, 110), None);
        rl.failed(a, 120);
        assert_eq!(rl.blocked(a, 120), Some(40));
        assert_eq!(rl.blocked(b, 120), None);
        assert_eq!(rl.blocked(a, 159), Some(1));
        // The first failure left the window: one more try is allowed.
        assert_eq!(rl.blocked(a, 160), None);
        rl.failed(a, 160);
        assert_eq!(rl.blocked(a, 160), Some(10));
        assert_eq!(RateLimiter::new(0).blocked(a, 0), None);
    }

    fn source(text: &str) -> Source {
        Source::from(text.parse::<std::net::IpAddr>().unwrap())
    }

    #[test]
    fn an_ipv6_client_cannot_escape_by_rotating_its_64() {
        let rl = RateLimiter::new(2);
        rl.failed(source("2001:db8:5:6::1"), 100);
        rl.failed(source("2001:db8:5:6::2"), 100);
        assert!(rl.blocked(source("2001:db8:5:6:ffff::3"), 100).is_some());
        assert_eq!(rl.blocked(source("2001:db8:5:7::1"), 100), None);
    }
}
