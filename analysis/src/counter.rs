//! Monotonic counters read repeatedly, with resets.

use serde::{Deserialize, Serialize};

/// A monotonic counter (HAProxy's `req_tot`, a Prometheus `_total`) read
/// again and again. A reading below the previous one means the source
/// reset (HAProxy restarted or `clear counters`, the process restarted);
/// the delta is then the new reading itself, as PromQL's `increase()` does.
///
/// ```
/// use drover_analysis::Counter;
/// let mut c = Counter::new(1_000);
/// assert_eq!(c.advance(1_040), 40);
/// assert_eq!(c.advance(15), 15); // reset: 15 since the restart
/// assert_eq!(c.total(), 55);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    last: u64,
    total: u64,
    resets: u32,
}

impl Counter {
    /// Start from a first reading; nothing has happened yet.
    pub fn new(first_reading: u64) -> Counter {
        Counter {
            last: first_reading,
            total: 0,
            resets: 0,
        }
    }

    /// Take a new reading; returns the growth since the last one.
    pub fn advance(&mut self, reading: u64) -> u64 {
        let delta = if reading >= self.last {
            reading - self.last
        } else {
            self.resets = self.resets.saturating_add(1);
            reading
        };
        self.last = reading;
        self.total = self.total.saturating_add(delta);
        delta
    }

    /// The sum of all deltas since `new`.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The last reading.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// How many resets `advance` has seen.
    pub fn resets(&self) -> u32 {
        self.resets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_summed() {
        let mut c = Counter::new(500);
        assert_eq!(c.total(), 0);
        assert_eq!(c.advance(500), 0);
        assert_eq!(c.advance(620), 120);
        assert_eq!(c.advance(700), 80);
        assert_eq!(c.total(), 200);
        assert_eq!(c.resets(), 0);
    }

    #[test]
    fn a_decrease_is_a_reset_and_counts_the_new_value() {
        // HAProxy restarted between two polls: it had served 30 requests
        // since, and the 40 before the restart that we never saw are lost,
        // as they are for PromQL.
        let mut c = Counter::new(10_000);
        assert_eq!(c.advance(10_100), 100);
        assert_eq!(c.advance(30), 30);
        assert_eq!(c.advance(90), 60);
        assert_eq!(c.total(), 190);
        assert_eq!(c.resets(), 1);
        // A reset to exactly zero is also a reset, with nothing since.
        assert_eq!(c.advance(0), 0);
        assert_eq!(c.resets(), 2);
        assert_eq!(c.last(), 0);
    }

    #[test]
    fn round_trips_through_serde() {
        let mut c = Counter::new(7);
        c.advance(3);
        let json = serde_json::to_string(&c).expect("serialise");
        let back: Counter = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, c);
    }
}
