//! Bounded exponential back-off with jitter, per object.

use rand::Rng;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Failure counts per object key.
#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

/// The first retry delay.
pub const BASE: Duration = Duration::from_millis(500);
/// The longest retry delay.
pub const MAX: Duration = Duration::from_secs(60);

impl Backoff {
    /// Records a failure and returns how long to wait: BASE·2ⁿ capped at MAX,
    /// scaled by a random factor in [0.5, 1.0] so many objects failing together
    /// do not retry in lockstep.
    pub fn next_delay(&self, key: &str) -> Duration {
        let attempt = {
            let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        jittered(delay_ceiling(attempt))
    }

    /// Forgets an object's failures after a success.
    pub fn reset(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

/// `ceiling` scaled by a random factor in [0.5, 1.0].
pub fn jittered(ceiling: Duration) -> Duration {
    ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The un-jittered delay for the n-th consecutive failure (n ≥ 1).
pub fn delay_ceiling(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(16);
    BASE.saturating_mul(1 << exp).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded() {
        assert_eq!(delay_ceiling(1), BASE);
        assert_eq!(delay_ceiling(2), BASE * 2);
        assert_eq!(delay_ceiling(40), MAX);
        let b = Backoff::default();
        for _ in 0..50 {
            let d = b.next_delay("x");
            assert!(d <= MAX && d >= BASE / 2, "{d:?}");
        }
        b.reset("x");
        assert!(b.next_delay("x") <= BASE);
    }
}
