//! A monotonic time type that works everywhere, including `wasm32-unknown-unknown` where
//! `std::time::Instant::now()` panics.
//!
//! The core never reads a clock. Drivers pick an origin (any fixed moment, e.g. when the client was
//! created) and pass the number of **milliseconds** elapsed since it as an [`Instant`].

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point on the driver's monotonic clock: milliseconds since an origin chosen by the driver.
///
/// Only differences between two `Instant`s from the same driver mean anything. Arithmetic saturates instead
/// of overflowing or panicking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The driver's origin (0 ms).
    pub const ZERO: Instant = Instant(0);

    /// An instant `millis` milliseconds after the driver's origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant(millis)
    }

    /// Milliseconds since the driver's origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The time elapsed from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// `d` in whole milliseconds, saturating at `u64::MAX`.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Instant {
    type Output = Instant;
    /// Adds a duration (truncated to whole milliseconds), saturating at the end of time.
    fn add(self, rhs: Duration) -> Instant {
        Instant(self.0.saturating_add(duration_millis(rhs)))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// The saturating difference, see [`Instant::saturating_duration_since`].
    fn sub(self, rhs: Instant) -> Duration {
        self.saturating_duration_since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(1_000);
        assert_eq!(t + Duration::from_millis(500), Instant::from_millis(1_500));
        assert_eq!(Instant::from_millis(10) - t, Duration::ZERO);
        assert_eq!(t - Instant::from_millis(10), Duration::from_millis(990));
        assert_eq!(
            Instant::from_millis(u64::MAX) + Duration::from_secs(1),
            Instant::from_millis(u64::MAX)
        );
        assert_eq!(
            Instant::ZERO + Duration::MAX,
            Instant::from_millis(u64::MAX)
        );
    }
}
