//! Failed authentication attempts per source address: after `max` failures within a
//! minute, the address is refused with 429 until the oldest of them is a minute old.
//! Only failures count, so working nodes never use up anything.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;

/// The window failures are counted in.
pub const WINDOW_SECS: u64 = 60;
/// Default failures per window (`--max-failures`).
pub const DEFAULT_MAX_FAILURES: u32 = 20;
/// Addresses tracked at most; beyond it the stalest entries are dropped, so a flood from
/// many addresses cannot grow memory without bound.
const MAX_TRACKED: usize = 100_000;

/// Per-address failure counter.
pub struct RateLimiter {
    max: u32,
    failures: Mutex<BTreeMap<IpAddr, VecDeque<u64>>>,
}

impl RateLimiter {
    /// Allows `max` failures per minute per address (0 disables limiting).
    pub fn new(max: u32) -> RateLimiter {
        RateLimiter {
            max,
            failures: Mutex::new(BTreeMap::new()),
        }
    }

    /// Seconds the address must wait, or None when it may try now.
    pub fn blocked(&self, ip: IpAddr, now: u64) -> Option<u32> {
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
    pub fn failed(&self, ip: IpAddr, now: u64) {
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
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
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
}
