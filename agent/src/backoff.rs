//! The one retry delay of the agent's loops (enrollment, the peer-list watch, the cluster
//! join, the metadata services): doubling from a first delay up to a longest one, plus up
//! to a quarter more from a random byte, so nodes that failed together do not retry
//! together.

use std::time::Duration;

/// A first and a longest delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub first: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Backoff {
    /// Whole seconds, as most loops count them.
    pub const fn secs(first: u64, max: u64) -> Backoff {
        Backoff {
            first: Duration::from_secs(first),
            max: Duration::from_secs(max),
        }
    }

    /// The delay before retry number `attempt` (0-based): `first` doubled `attempt` times,
    /// at most `max`, plus `jitter`/255 of a quarter of that (millisecond precision).
    pub fn delay(&self, attempt: u32, jitter: u8) -> Duration {
        let base = self
            .first
            .saturating_mul(1 << attempt.min(20))
            .min(self.max);
        let ms = base.as_millis() as u64;
        Duration::from_millis(ms + ms * u64::from(jitter) / 1020)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_to_the_cap_with_at_most_a_quarter_of_jitter() {
        let b = Backoff {
            first: Duration::from_millis(250),
            max: Duration::from_secs(2),
        };
        let ms: Vec<u128> = (0..6).map(|a| b.delay(a, 0).as_millis()).collect();
        assert_eq!(ms, [250, 500, 1000, 2000, 2000, 2000]);
        assert_eq!(b.delay(0, 255), Duration::from_millis(312));
        assert_eq!(b.delay(u32::MAX, 255), Duration::from_millis(2500));
        let s = Backoff::secs(10, 600);
        assert_eq!(s.delay(99, 0), Duration::from_secs(600));
        assert_eq!(
            s.delay(1, 128),
            Duration::from_millis(20_000 + 20_000 * 128 / 1020)
        );
    }
}
