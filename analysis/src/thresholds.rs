//! Every number the judge compares against.

use serde::{Deserialize, Serialize};

/// Every threshold of the judge. The defaults are REFERENCE.md's
/// "Recommended defaults" for canary analysis. Missing fields take their
/// default when deserialised, so stored state from an older drover loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    /// H0: the canary's error rate is at most this many times the
    /// baseline's (2.0: "more than 2x the baseline" fails).
    pub error_ratio: f64,
    /// Significance per look (0.001: a Bonferroni bound of 5% over <= 50
    /// looks; looks on cumulative counts are strongly correlated, so the
    /// real overall rate is far lower, see BENCHMARKS.md).
    pub alpha_per_look: f64,
    /// The error test fails only with at least this many canary errors (5).
    pub min_canary_errors: u64,
    /// ... and a canary rate at least this much above the baseline's, as a
    /// fraction (0.001 = 0.1 percentage points).
    pub min_difference: f64,
    /// Absolute guard: a canary error rate at or above this (0.05) ...
    pub guard_error_rate: f64,
    /// ... over at least this many canary attempts (200) fails at once,
    /// whatever the baseline does.
    pub guard_min_requests: u64,
    /// Attempts each arm needs by the end of the bake for a pass (500);
    /// fewer is inconclusive, never a pass.
    pub min_requests: u64,
    /// Latency fails at canary >= this times the baseline (1.5) ...
    pub latency_ratio: f64,
    /// ... and at least this many ms above it (25) ...
    pub latency_min_delta_ms: f64,
    /// ... in this many consecutive looks with usable latency (3).
    pub latency_windows: u32,
    /// HAProxy's rtime is an average over a server's last 512..1,024
    /// responses, so a redeployed server's rtime mixes in the old
    /// release's until it has served this many responses since (1,536):
    /// only then does `Latency::from_rtime` count it.
    pub latency_min_responses: u64,
    /// A window's latency in an arm is usable only if it stands for at
    /// least this many responses (10; Kayenta's "at least 10 samples per
    /// arm").
    pub latency_min_samples: u64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds {
            error_ratio: 2.0,
            alpha_per_look: 0.001,
            min_canary_errors: 5,
            min_difference: 0.001,
            guard_error_rate: 0.05,
            guard_min_requests: 200,
            min_requests: 500,
            latency_ratio: 1.5,
            latency_min_delta_ms: 25.0,
            latency_windows: 3,
            latency_min_responses: 1_536,
            latency_min_samples: 10,
        }
    }
}

/// A threshold out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("canary analysis threshold {field} = {value} is out of range: expected {expected}")]
pub struct ThresholdError {
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl Thresholds {
    /// Check every threshold is in its range; a spec loader calls this so
    /// a bad value is refused before a rollout starts.
    pub fn validate(&self) -> Result<(), ThresholdError> {
        fn check(
            ok: bool,
            field: &'static str,
            value: impl ToString,
            expected: &'static str,
        ) -> Result<(), ThresholdError> {
            if ok {
                Ok(())
            } else {
                Err(ThresholdError {
                    field,
                    value: value.to_string(),
                    expected,
                })
            }
        }
        let t = self;
        check(
            t.error_ratio.is_finite() && t.error_ratio >= 1.0,
            "error_ratio",
            t.error_ratio,
            "a number >= 1 (2 means fail above twice the baseline's error rate)",
        )?;
        check(
            t.alpha_per_look > 0.0 && t.alpha_per_look < 1.0,
            "alpha_per_look",
            t.alpha_per_look,
            "a probability between 0 and 1, e.g. 0.001",
        )?;
        check(
            (0.0..1.0).contains(&t.min_difference),
            "min_difference",
            t.min_difference,
            "a fraction in [0, 1), e.g. 0.001 for 0.1 percentage points",
        )?;
        check(
            t.guard_error_rate > 0.0 && t.guard_error_rate <= 1.0,
            "guard_error_rate",
            t.guard_error_rate,
            "a fraction in (0, 1], e.g. 0.05 (1 effectively disables the guard)",
        )?;
        check(
            t.latency_ratio.is_finite() && t.latency_ratio >= 1.0,
            "latency_ratio",
            t.latency_ratio,
            "a number >= 1, e.g. 1.5 for 50% slower",
        )?;
        check(
            t.latency_min_delta_ms.is_finite() && t.latency_min_delta_ms >= 0.0,
            "latency_min_delta_ms",
            t.latency_min_delta_ms,
            "milliseconds >= 0, e.g. 25",
        )?;
        check(
            t.latency_windows >= 1,
            "latency_windows",
            t.latency_windows,
            "at least 1 window",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_recommended_ones_and_valid() {
        let t = Thresholds::default();
        assert_eq!(t.error_ratio, 2.0);
        assert_eq!(t.alpha_per_look, 0.001);
        assert_eq!(t.min_canary_errors, 5);
        assert_eq!(t.min_requests, 500);
        assert_eq!(t.latency_windows, 3);
        assert_eq!(t.latency_min_responses, 1_536);
        assert_eq!(t.validate(), Ok(()));
    }

    #[test]
    fn out_of_range_values_are_named() {
        let t = Thresholds {
            alpha_per_look: 0.0,
            ..Thresholds::default()
        };
        let err = t.validate().expect_err("alpha 0 is refused");
        assert_eq!(err.field, "alpha_per_look");
        assert!(err.to_string().contains("alpha_per_look = 0"), "{err}");
        let t = Thresholds {
            error_ratio: f64::NAN,
            ..Thresholds::default()
        };
        assert_eq!(t.validate().map_err(|e| e.field), Err("error_ratio"));
    }

    #[test]
    fn missing_fields_take_defaults() {
        let t: Thresholds = serde_json::from_str(r#"{"error_ratio": 3.0}"#).expect("parse");
        assert_eq!(t.error_ratio, 3.0);
        assert_eq!(t.min_requests, 500);
    }
}
