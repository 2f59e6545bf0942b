//! Reconnection delays: exponential backoff with full jitter.

use core::time::Duration;

use rand::Rng;

/// How the client waits between connection attempts.
///
/// The n-th consecutive failed attempt (n ≥ 1) is followed by a delay drawn uniformly from
/// `[0, min(max_delay, base_delay × 2^(n−1))]` ("full jitter"), so that clients that lost the same server spread
/// their attempts instead of arriving together. The count of failures resets once a connection has stayed up
/// for `stable_after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The ceiling of the first delay. Default 2 s.
    pub base_delay: Duration,
    /// The largest ceiling any delay can have. Default 30 s.
    pub max_delay: Duration,
    /// How long a connection must stay up before the failure count resets. Default 30 s.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

impl ReconnectPolicy {
    /// The ceiling of the delay after `failures` consecutive failures (`failures` ≥ 1; 0 is treated as 1).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(31);
        let factor = 1u32 << exponent;
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// A delay after `failures` consecutive failures, drawn with full jitter from `rng`.
    pub fn delay<R: Rng + ?Sized>(&self, failures: u32, rng: &mut R) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(failures).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.random_range(0..=ceiling_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = ReconnectPolicy::default();
        let ms = |n| p.ceiling(n).as_millis();
        assert_eq!(
            [
                ms(0),
                ms(1),
                ms(2),
                ms(3),
                ms(4),
                ms(5),
                ms(60),
                ms(u32::MAX)
            ],
            [2_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]
        );
    }

    #[test]
    fn delays_stay_within_bounds_and_spread() {
        let p = ReconnectPolicy::default();
        let mut rng = SmallRng::seed_from_u64(7);
        for failures in 1..12 {
            let ceiling = p.ceiling(failures);
            let mut buckets = [0u32; 10];
            for _ in 0..2_000 {
                let d = p.delay(failures, &mut rng);
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                let bucket = (d.as_millis() * 10 / (ceiling.as_millis() + 1)) as usize;
                buckets[bucket] += 1;
            }
            // Uniform over the window: each tenth holds about 200 of 2000; none is empty or crowded.
            for count in buckets {
                assert!((120..=280).contains(&count), "{failures}: {buckets:?}");
            }
        }
    }
}
