//! Guards the judge's rule against regressions on seeded simulated
//! streams (the full figures are in BENCHMARKS.md, from
//! `examples/judge_quality.rs`). A few hundred analyses: fast, and no
//! timing.

use drover_analysis::Thresholds;
use drover_analysis::quality::{FixedRule, Scenario, Summary, run};

const SEED: u64 = 20_261_204;
const ANALYSES: u64 = 300;

fn judge(s: &Scenario, t: &Thresholds) -> Summary {
    run(s, t, &FixedRule::default(), SEED, ANALYSES).0
}

#[test]
fn identical_versions_are_rarely_rolled_back() {
    // 10% canary share, 0.5% errors in both arms, 30 min at 100 requests/s.
    let s = judge(&Scenario::new(0.10, 0.005, 0.005), &Thresholds::default());
    assert!(
        s.rollback_rate() <= 0.01,
        "the judge rolled back {} of {} good canaries",
        s.rolled_back,
        s.analyses
    );
    assert_eq!(s.inconclusive, 0, "100 requests/s for 30 min is plenty");
}

#[test]
fn five_percent_errors_against_half_a_percent_are_caught_within_5000_canary_requests() {
    let s = judge(&Scenario::new(0.10, 0.05, 0.005), &Thresholds::default());
    assert!(
        s.caught_within(5_000) >= 0.80,
        "only {:.1}% caught within 5,000 canary requests",
        s.caught_within(5_000) * 100.0
    );
}

/// The checks above have teeth: a naive rule (any significant excess over
/// the baseline at 5% per look, no floors, no guard) rolls back good
/// canaries far more often, and a blunt one (only the guard) misses 2%
/// errors entirely.
#[test]
fn broken_rules_fail_the_same_checks() {
    let naive = Thresholds {
        error_ratio: 1.0,
        alpha_per_look: 0.05,
        min_canary_errors: 0,
        min_difference: 0.0,
        ..Thresholds::default()
    };
    let s = judge(&Scenario::new(0.10, 0.005, 0.005), &naive);
    assert!(
        s.rollback_rate() > 0.01,
        "naive rule: {} of {}",
        s.rolled_back,
        s.analyses
    );

    let guard_only = Thresholds {
        alpha_per_look: 1e-300,
        ..Thresholds::default()
    };
    let s = judge(&Scenario::new(0.10, 0.02, 0.005), &guard_only);
    assert!(
        s.caught_within(5_000) < 0.80,
        "guard only: {:.1}%",
        s.caught_within(5_000) * 100.0
    );
}
