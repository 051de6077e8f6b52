//! Percentiles of latency samples, as the JSON figures print them.

use serde_json::{Value, json};

/// Samples in microseconds; summarised in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    us: Vec<u64>,
}

impl Samples {
    pub fn push(&mut self, us: u64) {
        self.us.push(us);
    }

    pub fn len(&self) -> usize {
        self.us.len()
    }

    pub fn is_empty(&self) -> bool {
        self.us.is_empty()
    }

    pub fn extend(&mut self, other: Samples) {
        self.us.extend(other.us);
    }

    /// The `q` quantile (0.0-1.0) in milliseconds, nearest rank.
    pub fn quantile_ms(&mut self, q: f64) -> Option<f64> {
        if self.us.is_empty() {
            return None;
        }
        self.us.sort_unstable();
        let rank = ((q * self.us.len() as f64).ceil() as usize).clamp(1, self.us.len());
        Some(self.us[rank - 1] as f64 / 1000.0)
    }

    /// `{"count", "p50", "p90", "p99", "max"}` in milliseconds, `null`s when
    /// empty.
    pub fn summary(&mut self) -> Value {
        let count = self.us.len();
        let mut q = |x| self.quantile_ms(x).map(round3);
        json!({
            "count": count,
            "p50": q(0.50),
            "p90": q(0.90),
            "p99": q(0.99),
            "max": q(1.0),
        })
    }
}

/// Three decimals are plenty for milliseconds, seconds and cores.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let mut s = Samples::default();
        for v in 1..=100 {
            s.push(v * 1000);
        }
        assert_eq!(s.quantile_ms(0.5), Some(50.0));
        assert_eq!(s.quantile_ms(0.99), Some(99.0));
        assert_eq!(s.quantile_ms(1.0), Some(100.0));
        assert_eq!(Samples::default().quantile_ms(0.5), None);
    }
}
