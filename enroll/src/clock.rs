//! Wall-clock time as unix seconds, behind a trait so tests can move time.

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Unix seconds now.
    fn now(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            // A clock before 1970 is broken; 0 makes every token look expired, which is
            // the safe direction.
            .unwrap_or(0)
    }
}
