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

/// The `show stat` counters of one HAProxy server the judge needs, as read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxyReading {
    pub req_tot: u64,
    pub hrsp_5xx: u64,
    /// Failed responses (read errors, timeouts): HAProxy answers these
    /// with its own 502/504, which are not in the server's `hrsp_5xx`.
    pub eresp: u64,
    /// Failed connections.
    pub econ: u64,
}

/// One server's attempts and errors since the analysis began, from
/// repeated `show stat` readings: attempts = Δ(req_tot + eresp + econ),
/// errors = Δ(hrsp_5xx + eresp + econ). The four counters belong to one
/// HAProxy server object and reset together, so any of them going down
/// means all did: the whole reading then counts as growth since the reset
/// (a field that merely came back to its old value is not missed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCounters {
    last: HaproxyReading,
    attempts: u64,
    errors: u64,
    resets: u32,
}

impl ServerCounters {
    /// Start from the reading taken when the analysis began.
    pub fn new(first: &HaproxyReading) -> ServerCounters {
        ServerCounters {
            last: *first,
            attempts: 0,
            errors: 0,
            resets: 0,
        }
    }

    /// Take a new reading.
    pub fn advance(&mut self, reading: &HaproxyReading) {
        let last = self.last;
        let reset = reading.req_tot < last.req_tot
            || reading.hrsp_5xx < last.hrsp_5xx
            || reading.eresp < last.eresp
            || reading.econ < last.econ;
        let base = if reset {
            self.resets = self.resets.saturating_add(1);
            HaproxyReading::default()
        } else {
            last
        };
        let (req, hrsp, eresp, econ) = (
            reading.req_tot - base.req_tot,
            reading.hrsp_5xx - base.hrsp_5xx,
            reading.eresp - base.eresp,
            reading.econ - base.econ,
        );
        self.attempts = self
            .attempts
            .saturating_add(req)
            .saturating_add(eresp)
            .saturating_add(econ);
        self.errors = self
            .errors
            .saturating_add(hrsp)
            .saturating_add(eresp)
            .saturating_add(econ);
        self.last = *reading;
    }

    /// Δ(req_tot + eresp + econ) since `new`.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// Δ(hrsp_5xx + eresp + econ) since `new`.
    pub fn errors(&self) -> u64 {
        self.errors
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
    fn server_counters_sum_the_fields_and_survive_a_haproxy_restart() {
        let reading = |req_tot, hrsp_5xx, eresp, econ| HaproxyReading {
            req_tot,
            hrsp_5xx,
            eresp,
            econ,
        };
        let mut s = ServerCounters::new(&reading(10_000, 40, 3, 1));
        s.advance(&reading(10_500, 45, 5, 1));
        // 500 answered + 2 failed responses; 5 5xx + 2 failed responses.
        assert_eq!((s.attempts(), s.errors()), (502, 7));
        // HAProxy restarted (2.6 keeps no counters across it): everything
        // since counts, nothing is lost or negative.
        // econ is back at 1 by chance: one new failed connection since the
        // restart, not zero.
        s.advance(&reading(200, 4, 0, 1));
        assert_eq!((s.attempts(), s.errors()), (703, 12));
        assert_eq!(s.resets(), 1);
        s.advance(&reading(300, 4, 0, 1));
        assert_eq!((s.attempts(), s.errors()), (803, 12));
        let json = serde_json::to_string(&s).expect("serialise");
        assert_eq!(
            serde_json::from_str::<ServerCounters>(&json).expect("deserialise"),
            s
        );
    }

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
