//! "The canary's error rate is more than r times the baseline's": the exact
//! conditional test of a Poisson rate ratio, with practical floors and an
//! absolute guard.

use serde::{Deserialize, Serialize};

use crate::binomial::binomial_upper_tail;
use crate::format;
use crate::{Arm, Thresholds};

/// What the error test found, for machines; `ErrorTest::why` says it for
/// humans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorFinding {
    /// The canary arm had no attempts: nothing to judge.
    NoCanaryTraffic,
    /// The baseline arm had no attempts: no comparison; only the guard can
    /// fail.
    NoBaselineTraffic,
    /// No evidence the canary's rate exceeds r times the baseline's.
    WithinRatio,
    /// Significant, but fewer canary errors than `min_canary_errors`.
    TooFewCanaryErrors,
    /// Significant, but the rates differ by less than `min_difference`.
    DifferenceTooSmall,
    /// Significant with both floors met: fail.
    ExceedsRatio,
    /// The canary's own error rate reached the absolute guard: fail.
    Guard,
}

/// The error test's numbers at one look.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorTest {
    /// P(X >= e_c), X ~ Binomial(e_c + e_b, pi0): the chance of this many
    /// canary errors or more if the canary's rate were exactly r times the
    /// baseline's. `None` when an arm had no attempts.
    pub p_value: Option<f64>,
    /// The canary's expected share of all errors under H0:
    /// r·n_c / (r·n_c + n_b); 0 without canary traffic, 1 without baseline
    /// traffic.
    pub pi0: f64,
    /// e_c / n_c (0 without canary attempts).
    pub canary_rate: f64,
    /// e_b / n_b (0 without baseline attempts).
    pub baseline_rate: f64,
    /// The absolute guard tripped.
    pub guard_tripped: bool,
    /// The test fails the canary (guard, or significant with both floors).
    pub fails: bool,
    pub finding: ErrorFinding,
    /// One clause a human reads.
    pub why: String,
}

/// The exact conditional test of the Poisson rate ratio, H0: canary rate
/// <= r · baseline rate (r = `error_ratio`). Given e = e_c + e_b errors,
/// e_c ~ Binomial(e, pi0) with pi0 = r·n_c/(r·n_c + n_b); this is R's
/// `poisson.test(c(e_c, e_b), T = c(n_c, n_b), r = r, alternative =
/// "greater")`. It never divides by the baseline's rate, so a baseline with
/// no errors is judged like any other.
///
/// It fails when p < `alpha_per_look` and e_c >= `min_canary_errors` and
/// the canary's rate is at least `min_difference` above the baseline's; or
/// at once when the canary's own rate is >= `guard_error_rate` over at
/// least `guard_min_requests` attempts. Errors beyond an arm's attempts
/// (counters read across a reset) are capped at its attempts.
pub fn error_test(canary: &Arm, baseline: &Arm, t: &Thresholds) -> ErrorTest {
    let (n_c, n_b) = (canary.attempts, baseline.attempts);
    let e_c = canary.errors.min(n_c);
    let e_b = baseline.errors.min(n_b);
    let canary_rate = if n_c > 0 {
        e_c as f64 / n_c as f64
    } else {
        0.0
    };
    let baseline_rate = if n_b > 0 {
        e_b as f64 / n_b as f64
    } else {
        0.0
    };
    let r = t.error_ratio;
    let pi0 = if n_c == 0 {
        0.0
    } else if n_b == 0 {
        1.0
    } else {
        r * n_c as f64 / (r * n_c as f64 + n_b as f64)
    };
    let guard_tripped =
        n_c > 0 && n_c >= t.guard_min_requests && e_c as f64 >= t.guard_error_rate * n_c as f64;
    let p_value = (n_c > 0 && n_b > 0).then(|| binomial_upper_tail(e_c + e_b, e_c, pi0));

    let ratio = format::plain(r);
    let alpha = format::plain(t.alpha_per_look);
    let (finding, clause) = match p_value {
        None if n_c == 0 => (
            ErrorFinding::NoCanaryTraffic,
            "no canary traffic yet".to_string(),
        ),
        None => (
            ErrorFinding::NoBaselineTraffic,
            "no baseline traffic to compare with: only the absolute guard applies".to_string(),
        ),
        Some(p) if p >= t.alpha_per_look => (
            ErrorFinding::WithinRatio,
            format!(
                "p={} >= {alpha}: no evidence of more than {ratio}x the baseline's rate",
                format::p_value(p)
            ),
        ),
        Some(p) if e_c < t.min_canary_errors => (
            ErrorFinding::TooFewCanaryErrors,
            format!(
                "p={} < {alpha} but only {e_c} canary errors (fails from {})",
                format::p_value(p),
                t.min_canary_errors
            ),
        ),
        Some(p) if canary_rate - baseline_rate < t.min_difference => (
            ErrorFinding::DifferenceTooSmall,
            format!(
                "p={} < {alpha} but the rates differ by {} points (fails from {})",
                format::p_value(p),
                format::points(canary_rate - baseline_rate),
                format::points(t.min_difference)
            ),
        ),
        Some(p) => (
            ErrorFinding::ExceedsRatio,
            format!(
                "p={} < {alpha} that it is at most {ratio}x the baseline's rate: fail",
                format::p_value(p)
            ),
        ),
    };
    let (finding, why) = if guard_tripped {
        (
            ErrorFinding::Guard,
            format!(
                "canary error rate {} >= the {} guard over {} requests (>= {}): fail whatever the baseline; {clause}",
                format::percent(canary_rate),
                format::percent(t.guard_error_rate),
                format::count(n_c),
                format::count(t.guard_min_requests),
            ),
        )
    } else {
        (finding, clause)
    };
    let fails = matches!(finding, ErrorFinding::Guard | ErrorFinding::ExceedsRatio);
    ErrorTest {
        p_value,
        pi0,
        canary_rate,
        baseline_rate,
        guard_tripped,
        fails,
        finding,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(attempts: u64, errors: u64) -> Arm {
        Arm {
            attempts,
            errors,
            latency: None,
        }
    }

    /// REFERENCE.md's thresholds for its computed facts: alpha 0.01, no
    /// practical floors, no guard.
    fn reference_rule() -> Thresholds {
        Thresholds {
            alpha_per_look: 0.01,
            min_canary_errors: 0,
            min_difference: 0.0,
            guard_error_rate: 1.0,
            guard_min_requests: u64::MAX,
            ..Thresholds::default()
        }
    }

    /// The smallest number of canary errors (baseline errors 0) that fails.
    fn first_failing(n_c: u64, n_b: u64, t: &Thresholds) -> u64 {
        (0..=n_c)
            .find(|&e| error_test(&arm(n_c, e), &arm(n_b, 0), t).fails)
            .expect("some count fails")
    }

    #[test]
    fn zero_baseline_errors_fail_at_12_under_equal_traffic_and_5_at_a_quarter() {
        let t = reference_rule();
        // Equal traffic: pi0 = 2/3, P(X >= e | X ~ Bin(e, 2/3)) = (2/3)^e,
        // first below 0.01 at e = 12 ((2/3)^11 = 0.0116, (2/3)^12 = 0.0077).
        assert_eq!(first_failing(10_000, 10_000, &t), 12);
        // Canary gets 1/4 of the baseline's traffic: pi0 = 2/6 = 1/3,
        // (1/3)^4 = 0.0123, (1/3)^5 = 0.0041.
        assert_eq!(first_failing(2_500, 10_000, &t), 5);
        // And it is a number, not NaN, with the baseline at zero errors.
        let test = error_test(&arm(2_500, 5), &arm(10_000, 0), &t);
        let p = test.p_value.expect("a p-value");
        assert!((p - (1.0_f64 / 3.0).powi(5)).abs() < 1e-15, "p = {p}");
        assert_eq!(test.baseline_rate, 0.0);
        assert_eq!(test.finding, ErrorFinding::ExceedsRatio);
    }

    // R: poisson.test(c(e_c, e_b), T = c(n_c, n_b), r = 2, alternative =
    // "greater")$p.value, which is binom.test(e_c, e_c + e_b, pi0,
    // alternative = "greater"), i.e. pbinom(e_c - 1, e, pi0, lower = FALSE).
    // The expected values were computed exactly (rational arithmetic in
    // mpmath at 60 digits), which is what R returns to double precision.
    #[test]
    fn agrees_with_r_poisson_test() {
        let t = Thresholds::default();
        let cases = [
            // (e_c, n_c, e_b, n_b, p)
            (31, 612, 4, 2_390, 2.8341991688718564e-11),
            (10, 1_000, 20, 10_000, 0.01970628376896778),
            (3, 100, 1, 100, 0.5925925925925926),
            (50, 5_000, 90, 45_000, 6.662714689502635e-07),
            (7, 700, 0, 6_300, 6.568423913353046e-06),
        ];
        for (e_c, n_c, e_b, n_b, want) in cases {
            let got = error_test(&arm(n_c, e_c), &arm(n_b, e_b), &t)
                .p_value
                .expect("a p-value");
            let rel = ((got - want) / want).abs();
            assert!(
                rel < 1e-12,
                "poisson.test(c({e_c},{e_b}), T=c({n_c},{n_b}), r=2): got {got:e}, R {want:e}"
            );
        }
    }

    #[test]
    fn practical_floors_hold_back_a_significant_result() {
        let t = Thresholds::default();
        // 4 canary errors against none: p = 4.0e-9, but fewer than 5 errors.
        let test = error_test(&arm(200, 4), &arm(50_000, 0), &t);
        assert!(test.p_value.expect("p") < t.alpha_per_look, "{test:?}");
        assert_eq!(test.finding, ErrorFinding::TooFewCanaryErrors);
        assert!(!test.fails);
        // Significant over huge counts but only 0.05 points apart.
        let test = error_test(&arm(2_000_000, 1_200), &arm(2_000_000, 200), &t);
        assert!(test.p_value.expect("p") < t.alpha_per_look, "{test:?}");
        assert_eq!(test.finding, ErrorFinding::DifferenceTooSmall);
        assert!(!test.fails);
    }

    #[test]
    fn the_guard_fails_at_once_whatever_the_baseline() {
        let t = Thresholds::default();
        assert_eq!(t.guard_min_requests, 200);
        // 5% over 200 canary requests, the baseline just as bad.
        let test = error_test(&arm(200, 10), &arm(1_000, 50), &t);
        assert!(test.guard_tripped && test.fails, "{test:?}");
        assert_eq!(test.finding, ErrorFinding::Guard);
        assert!(test.why.contains("guard"), "{}", test.why);
        // Below 200 requests the guard waits.
        let test = error_test(&arm(199, 10), &arm(1_000, 50), &t);
        assert!(!test.guard_tripped && !test.fails, "{test:?}");
        // No baseline traffic at all: the comparison cannot fail, the guard can.
        let test = error_test(&arm(50, 10), &arm(0, 0), &t);
        assert_eq!(test.finding, ErrorFinding::NoBaselineTraffic);
        assert_eq!(test.p_value, None);
        assert!(!test.fails);
        let test = error_test(&arm(200, 10), &arm(0, 0), &t);
        assert!(test.fails && test.guard_tripped, "{test:?}");
    }

    #[test]
    fn empty_arms_never_give_nan_or_a_failure() {
        let t = Thresholds::default();
        for (c, b) in [
            (arm(0, 0), arm(0, 0)),
            (arm(0, 0), arm(500, 3)),
            (arm(500, 0), arm(0, 0)),
        ] {
            let test = error_test(&c, &b, &t);
            assert!(!test.fails, "{test:?}");
            assert!(
                test.pi0.is_finite()
                    && test.canary_rate.is_finite()
                    && test.baseline_rate.is_finite()
            );
            assert_eq!(test.p_value, None);
            let json = serde_json::to_string(&test).expect("serialise");
            let back: ErrorTest = serde_json::from_str(&json).expect("deserialise");
            assert_eq!(back, test);
        }
        // Both arms without errors: p = 1, nothing to see.
        let test = error_test(&arm(500, 0), &arm(5_000, 0), &t);
        assert_eq!(test.p_value, Some(1.0));
        assert_eq!(test.finding, ErrorFinding::WithinRatio);
    }

    #[test]
    fn errors_beyond_attempts_are_capped() {
        let t = Thresholds::default();
        let test = error_test(&arm(10, 50), &arm(1_000, 1), &t);
        assert_eq!(test.canary_rate, 1.0);
    }
}
