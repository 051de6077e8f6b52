//! Prometheus classic histograms: deltas between scrapes, merging across
//! instances, and `histogram_quantile`'s interpolation.

use serde::{Deserialize, Serialize};

/// One cumulative bucket: how many observations were `<= le`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Upper bound, in the histogram's unit (seconds for Prometheus
    /// latency histograms). The last bucket's is `f64::INFINITY`; it is
    /// stored as the string `"+Inf"`, as Prometheus writes it, because JSON
    /// has no infinity.
    #[serde(with = "le_serde")]
    pub le: f64,
    /// Observations `<= le`, cumulative.
    pub count: u64,
}

/// A classic Prometheus histogram as exposed (`_bucket{le=..}`, `_sum`,
/// `_count`), or the delta of two scrapes of one, or such deltas merged
/// over instances.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// Cumulative buckets, ascending `le`, `+Inf` last.
    pub buckets: Vec<Bucket>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations (equal to the `+Inf` bucket's count).
    pub count: u64,
}

impl Histogram {
    /// The q-quantile (0 <= q <= 1), interpolated linearly inside its
    /// bucket exactly as PromQL's `histogram_quantile` does for classic
    /// histograms (`promql/quantile.go` `bucketQuantile`):
    /// - buckets are sorted by `le`, equal bounds merged, and counts forced
    ///   monotonic;
    /// - a quantile in the `+Inf` bucket is the second highest bound;
    /// - the lowest bucket starts at 0 when its bound is positive, and a
    ///   quantile in a lowest bucket with bound <= 0 is that bound.
    ///
    /// `None` where Prometheus gives NaN or an infinity: no observations,
    /// fewer than two buckets, no `+Inf` bucket, or q outside [0, 1].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let mut buckets: Vec<(f64, f64)> = self
            .buckets
            .iter()
            .filter(|b| !b.le.is_nan())
            .map(|b| (b.le, b.count as f64))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        match buckets.last() {
            Some((le, _)) if *le == f64::INFINITY => {}
            _ => return None,
        }
        // Merge equal bounds.
        let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
        for (le, count) in buckets {
            match merged.last_mut() {
                Some(last) if last.0 == le => last.1 += count,
                _ => merged.push((le, count)),
            }
        }
        // Force monotonic counts (the envelope), as Prometheus does.
        let mut max = 0.0_f64;
        for b in &mut merged {
            max = max.max(b.1);
            b.1 = max;
        }
        if merged.len() < 2 {
            return None;
        }
        let observations = merged[merged.len() - 1].1;
        if observations == 0.0 {
            return None;
        }
        let mut rank = q * observations;
        let last = merged.len() - 1;
        let b = merged[..last]
            .iter()
            .position(|(_, count)| *count >= rank)
            .unwrap_or(last);
        if b == last {
            return Some(merged[last - 1].0);
        }
        if b == 0 && merged[0].0 <= 0.0 {
            return Some(merged[0].0);
        }
        let end = merged[b].0;
        let mut count = merged[b].1;
        let mut start = 0.0;
        if b > 0 {
            start = merged[b - 1].0;
            count -= merged[b - 1].1;
            rank -= merged[b - 1].1;
        }
        // 0/0 when q = 0 and the lowest bucket is empty: NaN in Prometheus.
        Some(start + (end - start) * (rank / count)).filter(|v| !v.is_nan())
    }

    /// The mean observation (`sum / count`), `None` without observations.
    pub fn mean(&self) -> Option<f64> {
        let mean = self.sum / self.count as f64;
        (self.count > 0 && mean.is_finite()).then_some(mean)
    }

    /// What happened between an `earlier` scrape and this one: per-bucket
    /// differences. If any bucket or the count went down, or the bucket
    /// bounds changed, the process restarted in between and this scrape
    /// is itself the delta (as PromQL's `increase()` treats a reset).
    pub fn delta(&self, earlier: &Histogram) -> Histogram {
        let same_layout = self.buckets.len() == earlier.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .all(|(a, b)| a.le == b.le);
        let grew = self.count >= earlier.count
            && self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .all(|(a, b)| a.count >= b.count);
        if !same_layout || !grew {
            return self.clone();
        }
        Histogram {
            buckets: self
                .buckets
                .iter()
                .zip(&earlier.buckets)
                .map(|(a, b)| Bucket {
                    le: a.le,
                    count: a.count - b.count,
                })
                .collect(),
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// Add another histogram (another instance's delta) into this one, as
    /// `sum by (le)` does. With different bucket bounds the result has the
    /// union of the bounds, each histogram counting at a bound what it
    /// counted at its own highest bound not above it: exact for the bounds
    /// both share, a lower bound for the others.
    pub fn merge(&mut self, other: &Histogram) {
        if other.buckets.is_empty() && other.count == 0 {
            return;
        }
        if self.buckets.is_empty() && self.count == 0 {
            *self = other.clone();
            return;
        }
        let same_layout = self.buckets.len() == other.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&other.buckets)
                .all(|(a, b)| a.le == b.le);
        if same_layout {
            for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
                a.count = a.count.saturating_add(b.count);
            }
        } else {
            let mut bounds: Vec<f64> = self
                .buckets
                .iter()
                .chain(&other.buckets)
                .map(|b| b.le)
                .filter(|le| !le.is_nan())
                .collect();
            bounds.sort_by(f64::total_cmp);
            bounds.dedup();
            let at = |h: &Histogram, le: f64| -> u64 {
                h.buckets
                    .iter()
                    .filter(|b| b.le <= le)
                    .map(|b| b.count)
                    .max()
                    .unwrap_or(0)
            };
            self.buckets = bounds
                .into_iter()
                .map(|le| Bucket {
                    le,
                    count: at(self, le).saturating_add(at(other, le)),
                })
                .collect();
        }
        self.sum += other.sum;
        self.count = self.count.saturating_add(other.count);
    }
}

/// `le` as a JSON number, or `"+Inf"`/`"-Inf"`/`"NaN"` where JSON has none.
mod le_serde {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(le: &f64, s: S) -> Result<S::Ok, S::Error> {
        if le.is_finite() {
            s.serialize_f64(*le)
        } else if le.is_nan() {
            s.serialize_str("NaN")
        } else if *le > 0.0 {
            s.serialize_str("+Inf")
        } else {
            s.serialize_str("-Inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        struct Le;
        impl Visitor<'_> for Le {
            type Value = f64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a bucket bound: a number or \"+Inf\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
                Ok(v)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
                Ok(v as f64)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
                match v {
                    "+Inf" | "Inf" | "inf" | "+inf" => Ok(f64::INFINITY),
                    "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
                    "NaN" => Ok(f64::NAN),
                    other => other.parse().map_err(|_| {
                        E::custom(format!(
                            "bucket bound {other:?} is not a number or \"+Inf\""
                        ))
                    }),
                }
            }
        }
        d.deserialize_any(Le)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(bounds: &[(f64, u64)]) -> Histogram {
        let buckets: Vec<Bucket> = bounds
            .iter()
            .map(|&(le, count)| Bucket { le, count })
            .collect();
        let count = buckets.last().map_or(0, |b| b.count);
        Histogram {
            buckets,
            sum: 0.0,
            count,
        }
    }

    const INF: f64 = f64::INFINITY;

    fn approx(got: Option<f64>, want: f64) {
        let got = got.expect("a quantile");
        assert!((got - want).abs() < 1e-12, "got {got}, want {want}");
    }

    // Expected values below are what Prometheus's histogram_quantile gives
    // for the same buckets (worked by hand from promql/quantile.go, and the
    // cases of promql/promqltest/testdata/histograms.test where they apply).

    #[test]
    fn interpolates_linearly_inside_the_bucket() {
        // 0.1:10, 0.2:30, 0.4:40, +Inf:40
        let h = hist(&[(0.1, 10), (0.2, 30), (0.4, 40), (INF, 40)]);
        // rank 20 falls in (0.1, 0.2] at (20-10)/(30-10) = 1/2
        approx(h.quantile(0.5), 0.15);
        // rank 36 falls in (0.2, 0.4] at (36-30)/(40-30) = 0.6
        approx(h.quantile(0.9), 0.2 + 0.2 * 0.6);
        // rank 40 is reached in (0.2, 0.4]: its upper bound
        approx(h.quantile(1.0), 0.4);
    }

    #[test]
    fn lowest_bucket_starts_at_zero_when_its_bound_is_positive() {
        let h = hist(&[(0.1, 10), (0.2, 20), (INF, 20)]);
        // rank 5 in [0, 0.1]
        approx(h.quantile(0.25), 0.05);
        // q = 0: rank 0, found in the lowest bucket, interpolated to 0
        approx(h.quantile(0.0), 0.0);
    }

    #[test]
    fn lowest_bucket_with_a_bound_at_or_below_zero_gives_that_bound() {
        let h = hist(&[(-1.0, 10), (0.5, 20), (INF, 20)]);
        approx(h.quantile(0.25), -1.0);
        let h = hist(&[(0.0, 10), (0.5, 20), (INF, 20)]);
        approx(h.quantile(0.25), 0.0);
        // Above it, interpolation from that bound: rank 15 in (0, 0.5]
        approx(h.quantile(0.75), 0.25);
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_is_the_second_highest_bound() {
        let h = hist(&[(0.1, 5), (0.2, 8), (INF, 10)]);
        // rank 9 > 8: in the +Inf bucket
        approx(h.quantile(0.9), 0.2);
        approx(h.quantile(1.0), 0.2);
    }

    #[test]
    fn no_answer_where_prometheus_gives_nan_or_infinity() {
        assert_eq!(
            hist(&[(0.1, 0), (INF, 0)]).quantile(0.5),
            None,
            "no observations"
        );
        assert_eq!(hist(&[(INF, 10)]).quantile(0.5), None, "a single bucket");
        assert_eq!(
            hist(&[(0.1, 3), (0.2, 10)]).quantile(0.5),
            None,
            "no +Inf bucket"
        );
        let h = hist(&[(0.1, 3), (INF, 10)]);
        assert_eq!(h.quantile(-0.1), None);
        assert_eq!(h.quantile(1.1), None);
        assert_eq!(h.quantile(f64::NAN), None);
    }

    #[test]
    fn unsorted_duplicate_and_non_monotonic_buckets_are_fixed_as_prometheus_does() {
        // Out of order, 0.2 twice (coalesced to 20), and 0.4 below 0.2's
        // count (forced up to 20).
        let h = hist(&[(INF, 40), (0.2, 12), (0.1, 10), (0.4, 15), (0.2, 8)]);
        // merged: 0.1:10, 0.2:20, 0.4:20, +Inf:40; rank 15 in (0.1, 0.2]
        approx(h.quantile(15.0 / 40.0), 0.15);
        // rank 20 is first reached at 0.2
        approx(h.quantile(0.5), 0.2);
        // rank 30: in +Inf
        approx(h.quantile(0.75), 0.4);
    }

    #[test]
    fn delta_subtracts_per_bucket_and_treats_a_decrease_as_a_reset() {
        let mut before = hist(&[(0.1, 10), (0.5, 15), (INF, 16)]);
        before.sum = 2.0;
        let mut after = hist(&[(0.1, 30), (0.5, 45), (INF, 50)]);
        after.sum = 7.5;
        let d = after.delta(&before);
        assert_eq!(
            d.buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![20, 30, 34]
        );
        assert_eq!(d.count, 34);
        assert!((d.sum - 5.5).abs() < 1e-12);
        approx(d.mean(), 5.5 / 34.0);

        // The process restarted: fewer observations in a bucket.
        let mut restarted = hist(&[(0.1, 3), (0.5, 4), (INF, 4)]);
        restarted.sum = 0.9;
        assert_eq!(restarted.delta(&after), restarted);
        // New bucket bounds after a redeploy: a reset too.
        let relaid = hist(&[(0.2, 40), (INF, 60)]);
        assert_eq!(relaid.delta(&after), relaid);
    }

    #[test]
    fn merge_adds_same_bounds_and_lower_bounds_different_ones() {
        let mut a = hist(&[(0.1, 10), (0.5, 15), (INF, 16)]);
        a.sum = 1.0;
        let mut b = hist(&[(0.1, 1), (0.5, 5), (INF, 9)]);
        b.sum = 2.0;
        a.merge(&b);
        assert_eq!(
            a.buckets.iter().map(|b| b.count).collect::<Vec<_>>(),
            vec![11, 20, 25]
        );
        assert_eq!(a.count, 25);
        assert!((a.sum - 3.0).abs() < 1e-12);

        let mut empty = Histogram::default();
        empty.merge(&b);
        assert_eq!(empty, b);

        let mut c = hist(&[(0.2, 4), (INF, 6)]);
        c.merge(&b);
        let got: Vec<(f64, u64)> = c.buckets.iter().map(|b| (b.le, b.count)).collect();
        // 0.1: 0 + 1; 0.2: 4 + 1; 0.5: 4 + 5; +Inf: 6 + 9
        assert_eq!(got, vec![(0.1, 1), (0.2, 5), (0.5, 9), (INF, 15)]);
        assert_eq!(c.count, 15);
    }

    #[test]
    fn infinity_survives_json() {
        let h = hist(&[(0.25, 3), (INF, 4)]);
        let json = serde_json::to_string(&h).expect("serialise");
        assert!(json.contains("\"+Inf\""), "{json}");
        let back: Histogram = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, h);
    }
}
