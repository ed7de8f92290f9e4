//! Retry delays and rate-limited warnings, each written once for every retry loop: the
//! election's grants and campaigns (in the pure machine), the connect loop and the keep-alive
//! stream.
//!
//! Neither reads a clock: the caller passes `now`, so the machine stays pure and both are
//! unit-tested exactly.

use std::time::Duration;

use tokio::time::Instant;

/// How often a repeated failure is logged at `warn`; the rest go to `debug`.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Exponential backoff from `base`, capped at `cap`, with "equal jitter" (half fixed, half
/// random), so replicas that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Consecutive failures; reset by a success.
    failures: u32,
    /// xorshift64 state; seeded by the caller so tests are deterministic.
    rng: u64,
}

impl Backoff {
    #[must_use]
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap,
            failures: 0,
            rng: seed | 1,
        }
    }

    /// A backoff seeded from the standard library's per-process random keys, for I/O loops
    /// that need no reproducible jitter.
    #[must_use]
    pub fn unseeded(base: Duration, cap: Duration) -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Self::new(base, cap, hasher.finish())
    }

    /// The delay before the next retry; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let full = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = full / 2;
        half + half.mul_f64(self.next_unit())
    }

    /// A success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A number in [0, 1) from xorshift64.
    fn next_unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Rate-limits a repeated warning: the first of a run is due, then at most one per
/// [`WARN_EVERY`], carrying the count of those suppressed in between.
#[derive(Debug, Default)]
pub struct WarnLimit {
    last_warn: Option<Instant>,
    suppressed: u64,
}

impl WarnLimit {
    /// `Some(suppressed since the last warning)` when a warning is due at `now`; `None` when
    /// this one should go to `debug`.
    pub fn due(&mut self, now: Instant) -> Option<u64> {
        if self
            .last_warn
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            self.last_warn = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_and_are_capped() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        let mut b = Backoff::new(base, cap, 42);
        let first = b.next_delay();
        assert!(first >= base / 2 && first < base, "{first:?}");
        let second = b.next_delay();
        assert!(second >= base && second < base * 2, "{second:?}");
        for _ in 0..3 {
            assert!(b.next_delay() < cap);
        }
        // From 100 ms doubling, the cap is reached by the fifth failure.
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= cap / 2 && d < cap, "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() < base);
    }

    #[test]
    fn a_warning_is_due_once_per_period_with_the_count_suppressed() {
        let mut limit = WarnLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.due(t0), Some(0));
        assert_eq!(limit.due(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.due(t0 + Duration::from_secs(2)), None);
        assert_eq!(limit.due(t0 + WARN_EVERY), Some(2));
    }
}
