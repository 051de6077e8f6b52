//! The judge of one step: looks at cumulative arms, keeps the small state
//! repeated looks need, and gives a verdict.

use serde::{Deserialize, Serialize};

use crate::errors::{ErrorTest, error_test};
use crate::format;
use crate::latency::{self, Latency, LatencyTest, Streaks};
use crate::thresholds::Thresholds;

/// What one arm did over the analysis so far. Canary = instances on the
/// new release, baseline = those still on the old one. Counts are
/// cumulative since the analysis began; the caller turns per-server
/// cumulative counters into deltas with `Counter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// Δ(req_tot + eresp + econ).
    pub attempts: u64,
    /// Δ(hrsp_5xx + eresp + econ).
    pub errors: u64,
    /// The last window's latency; `None`: nothing usable this window.
    pub latency: Option<Latency>,
}

impl Arm {
    /// An arm with counts and no latency.
    pub fn new(attempts: u64, errors: u64) -> Arm {
        Arm {
            attempts,
            errors,
            latency: None,
        }
    }

    /// This arm without a latency that has a NaN or infinite number in it
    /// (unusable, and it would make the stored judgement unreadable).
    fn storable(&self) -> Arm {
        Arm {
            attempts: self.attempts,
            errors: self.errors,
            latency: self.latency.clone().filter(Latency::is_finite),
        }
    }

    fn describe(&self) -> String {
        let rate = if self.attempts > 0 {
            format!(
                " ({})",
                format::percent(self.errors.min(self.attempts) as f64 / self.attempts as f64)
            )
        } else {
            String::new()
        };
        format!(
            "{}/{}{rate}",
            format::count(self.errors),
            format::count(self.attempts)
        )
    }
}

/// One look at the arms: the coordinator looks every analysis interval
/// (e.g. 10 s) with cumulative arms since the step's analysis began, and
/// the latency of the last window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Look {
    /// When, in ms since the epoch (or any clock the caller keeps
    /// monotonic); a look at or before the last one judged is not counted
    /// again for the latency rule.
    pub at_ms: i64,
    pub canary: Arm,
    pub baseline: Arm,
}

/// The verdict at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The bake is over and the evidence suffices: move on. Only `finish`
    /// gives it.
    Pass,
    /// Roll back: the error test, the guard or sustained latency failed.
    /// Once failed, an analysis stays failed.
    Fail,
    /// The bake is over but an arm lacked `min_requests`: never a pass.
    /// Only `finish` gives it.
    Inconclusive,
    /// Nothing decided at this look: keep baking.
    Continue,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Continue => "continue",
        }
    }
}

/// A verdict with the numbers it was drawn from, for storing and showing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub at_ms: i64,
    pub verdict: Verdict,
    /// The numbers judged.
    pub canary: Arm,
    pub baseline: Arm,
    pub errors: ErrorTest,
    pub latency: LatencyTest,
    /// Which look of the analysis this was (1 for the first).
    pub look: u32,
    /// One line a human reads in `drover rollout analysis`.
    pub reason: String,
}

/// The first failure, kept so an analysis stays failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub at_ms: i64,
    pub look: u32,
    pub reason: String,
}

/// The judge of one step. Its state is small and serialisable: the
/// coordinator persists it with every verdict and restores it after a
/// restart, and the next look continues where the last one left off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub thresholds: Thresholds,
    looks: u32,
    last_at_ms: Option<i64>,
    streaks: Streaks,
    failed: Option<Failure>,
}

impl Analysis {
    pub fn new(thresholds: Thresholds) -> Analysis {
        Analysis {
            thresholds,
            looks: 0,
            last_at_ms: None,
            streaks: Streaks::default(),
            failed: None,
        }
    }

    /// Looks judged so far (repeats of the same `at_ms` not counted).
    pub fn looks(&self) -> u32 {
        self.looks
    }

    /// The first failure, if the analysis failed.
    pub fn failed(&self) -> Option<&Failure> {
        self.failed.as_ref()
    }

    /// Judge cumulative counts at one look: `Fail` as soon as the error
    /// test, the guard or the sustained latency rule fails (and from then
    /// on); otherwise `Continue`.
    pub fn look(&mut self, look: &Look) -> Judgement {
        let look = &Look {
            at_ms: look.at_ms,
            canary: look.canary.storable(),
            baseline: look.baseline.storable(),
        };
        let t = &self.thresholds;
        let fresh = self.last_at_ms.is_none_or(|last| look.at_ms > last);
        if fresh {
            self.looks = self.looks.saturating_add(1);
            self.last_at_ms = Some(look.at_ms);
        }
        let errors = error_test(&look.canary, &look.baseline, t);
        let latency = latency::judge(
            look.canary.latency.as_ref(),
            look.baseline.latency.as_ref(),
            &mut self.streaks,
            fresh,
            t,
        );
        let summary = format!(
            "errors: canary {} vs baseline {}, {}; latency: {}",
            look.canary.describe(),
            look.baseline.describe(),
            errors.why,
            latency.why
        );
        let fails_now = errors.fails || latency.fails;
        let (verdict, reason) = match (&self.failed, fails_now) {
            (Some(first), now) if first.at_ms != look.at_ms || !now => (
                Verdict::Fail,
                format!(
                    "fail (since look {}: {}); {summary}",
                    first.look, first.reason
                ),
            ),
            (_, true) => {
                let what = match (errors.guard_tripped, errors.fails, latency.fails) {
                    (true, _, _) => "the canary's error rate hit the absolute guard",
                    (_, true, true) => "errors above the baseline's and sustained slower responses",
                    (_, true, false) => "errors above the baseline's",
                    _ => "responses slower than the baseline's, sustained",
                };
                (Verdict::Fail, format!("fail ({what}): {summary}"))
            }
            _ => (Verdict::Continue, format!("continue: {summary}")),
        };
        if verdict == Verdict::Fail && self.failed.is_none() {
            self.failed = Some(Failure {
                at_ms: look.at_ms,
                look: self.looks,
                reason: reason.clone(),
            });
        }
        Judgement {
            at_ms: look.at_ms,
            verdict,
            canary: look.canary.clone(),
            baseline: look.baseline.clone(),
            errors,
            latency,
            look: self.looks,
            reason,
        }
    }

    /// The bake ended (or `max_analysis` ran out): judge this last look,
    /// then `Pass` when both arms reached `min_requests` and nothing
    /// failed, `Inconclusive` (naming the arm and its shortfall) when an arm
    /// lacked requests. Call it instead of `look` for the last look; called
    /// after `look` with the same `at_ms` it does not count that window's
    /// latency twice.
    pub fn finish(&mut self, look: &Look) -> Judgement {
        let mut judgement = self.look(look);
        if judgement.verdict == Verdict::Fail {
            return judgement;
        }
        let min = self.thresholds.min_requests;
        let short: Vec<String> = [("canary", &look.canary), ("baseline", &look.baseline)]
            .into_iter()
            .filter(|(_, arm)| arm.attempts < min)
            .map(|(name, arm)| {
                format!(
                    "the {name} had {} of the {} requests needed ({} short)",
                    format::count(arm.attempts),
                    format::count(min),
                    format::count(min - arm.attempts)
                )
            })
            .collect();
        let summary = judgement
            .reason
            .strip_prefix("continue: ")
            .unwrap_or(&judgement.reason)
            .to_string();
        judgement.verdict = if short.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Inconclusive
        };
        judgement.reason = if short.is_empty() {
            format!("{}: {summary}", judgement.verdict.word())
        } else {
            format!(
                "{} ({}): {summary}",
                judgement.verdict.word(),
                short.join(", ")
            )
        };
        judgement
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(at_ms: i64, canary: Arm, baseline: Arm) -> Look {
        Look {
            at_ms,
            canary,
            baseline,
        }
    }

    fn with_latency(mut arm: Arm, ms: f64) -> Arm {
        arm.latency = Some(Latency::Mean {
            ms,
            responses: 1_000,
        });
        arm
    }

    #[test]
    fn a_bad_canary_fails_at_the_look_the_evidence_arrives_and_stays_failed() {
        let mut a = Analysis::new(Thresholds::default());
        let j = a.look(&look(10_000, Arm::new(60, 1), Arm::new(540, 2)));
        assert_eq!(j.verdict, Verdict::Continue, "{}", j.reason);
        // 4.1%: under the 5% guard, but far above twice the baseline's.
        let j = a.look(&look(20_000, Arm::new(612, 25), Arm::new(2_390, 4)));
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert!(j.errors.fails && !j.errors.guard_tripped, "{:?}", j.errors);
        assert!(
            j.reason.starts_with("fail (errors above the baseline's): errors: canary 25/612 (4.1%) vs baseline 4/2,390 (0.17%), p=8.6e-9 < 0.001"),
            "{}",
            j.reason
        );
        assert_eq!(j.look, 2);
        // A later look with harmless numbers does not undo it.
        let j = a.look(&look(30_000, Arm::new(1_000, 31), Arm::new(100_000, 300)));
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert!(j.reason.contains("since look 2"), "{}", j.reason);
        let j = a.finish(&look(40_000, Arm::new(1_000, 31), Arm::new(100_000, 300)));
        assert_eq!(j.verdict, Verdict::Fail);
    }

    #[test]
    fn a_good_canary_passes_only_at_finish_with_enough_requests() {
        let mut a = Analysis::new(Thresholds::default());
        let j = a.look(&look(10_000, Arm::new(600, 3), Arm::new(5_400, 25)));
        assert_eq!(j.verdict, Verdict::Continue);
        let j = a.finish(&look(20_000, Arm::new(1_200, 6), Arm::new(10_800, 50)));
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        assert!(
            j.reason.starts_with("pass: errors: canary 6/1,200 (0.50%)"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn too_little_traffic_is_inconclusive_and_names_the_arm() {
        let mut a = Analysis::new(Thresholds::default());
        let j = a.finish(&look(10_000, Arm::new(312, 0), Arm::new(4_000, 3)));
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(
            j.reason.starts_with(
                "inconclusive (the canary had 312 of the 500 requests needed (188 short))"
            ),
            "{}",
            j.reason
        );
        let mut a = Analysis::new(Thresholds::default());
        let j = a.finish(&look(10_000, Arm::new(0, 0), Arm::new(0, 0)));
        assert_eq!(j.verdict, Verdict::Inconclusive);
        assert!(
            j.reason.contains("the canary had 0") && j.reason.contains("the baseline had 0"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn zero_baseline_errors_never_pass_by_division() {
        // Kayenta's blind spot: the baseline has no errors, the canary has
        // plenty. A ratio would be NaN or infinite; the test just fails it.
        let mut a = Analysis::new(Thresholds::default());
        let j = a.look(&look(10_000, Arm::new(90, 4), Arm::new(5_000, 0)));
        assert_eq!(
            j.verdict,
            Verdict::Continue,
            "4 errors are under the floor of 5: {}",
            j.reason
        );
        let j = a.look(&look(20_000, Arm::new(180, 8), Arm::new(10_000, 0)));
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        let json = serde_json::to_string(&j).expect("serialise");
        assert!(
            !json.contains("NaN") && !json.contains("null,\"pi0\""),
            "{json}"
        );
    }

    #[test]
    fn sustained_latency_fails_and_a_repeated_look_is_not_counted_twice() {
        let mut a = Analysis::new(Thresholds::default());
        let arms = |at| {
            look(
                at,
                with_latency(Arm::new(1_000, 0), 140.0),
                with_latency(Arm::new(9_000, 0), 80.0),
            )
        };
        assert_eq!(a.look(&arms(10_000)).verdict, Verdict::Continue);
        let j = a.look(&arms(20_000));
        assert_eq!(j.latency.consecutive_over, 2);
        // The coordinator retries the same look after a restart.
        let j = a.look(&arms(20_000));
        assert_eq!(j.verdict, Verdict::Continue, "{}", j.reason);
        assert_eq!(j.latency.consecutive_over, 2);
        assert_eq!(a.looks(), 2);
        let j = a.look(&arms(30_000));
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert!(
            j.reason.starts_with("fail (responses slower"),
            "{}",
            j.reason
        );
        assert!(
            j.reason.contains(
                "mean canary 140 ms vs baseline 80.0 ms (1.75x, +60.0 ms), 3/3 windows over"
            ),
            "{}",
            j.reason
        );
    }

    /// Issue 11, "done when" 3: +100 ms is rolled back, +10 ms is not.
    #[test]
    fn plus_100_ms_fails_in_three_windows_and_plus_10_ms_never() {
        let run = |extra_ms: f64| {
            let mut a = Analysis::new(Thresholds::default());
            let mut verdicts = Vec::new();
            for i in 1..=180_i64 {
                let n = i as u64 * 100;
                let j = a.look(&look(
                    i * 10_000,
                    with_latency(Arm::new(n, 0), 20.0 + extra_ms),
                    with_latency(Arm::new(9 * n, 0), 20.0),
                ));
                verdicts.push(j.verdict);
                if j.verdict == Verdict::Fail {
                    break;
                }
            }
            verdicts
        };
        let slow = run(100.0);
        assert_eq!(
            slow,
            vec![Verdict::Continue, Verdict::Continue, Verdict::Fail]
        );
        let fine = run(10.0);
        assert_eq!(fine.len(), 180);
        assert!(fine.iter().all(|v| *v == Verdict::Continue));
    }

    #[test]
    fn a_nan_latency_is_unusable_and_the_judgement_still_stores() {
        let mut a = Analysis::new(Thresholds::default());
        let j = a.look(&look(
            10_000,
            with_latency(Arm::new(600, 0), f64::NAN),
            with_latency(Arm::new(5_400, 0), 80.0),
        ));
        assert_eq!(j.latency.finding, crate::LatencyFinding::NoData);
        assert_eq!(j.canary.latency, None);
        let json = serde_json::to_string(&j).expect("serialise");
        let back: Judgement = serde_json::from_str(&json).expect("a stored judgement reads back");
        assert_eq!(back.reason, j.reason);
    }

    #[test]
    fn state_survives_a_serde_round_trip_mid_analysis() {
        let mut a = Analysis::new(Thresholds {
            min_requests: 1_000,
            ..Thresholds::default()
        });
        let arms = |at, n| {
            look(
                at,
                with_latency(Arm::new(n, 0), 140.0),
                with_latency(Arm::new(9 * n, 0), 80.0),
            )
        };
        a.look(&arms(10_000, 300));
        a.look(&arms(20_000, 600));
        // The coordinator persisted the judge here and restarted.
        let json = serde_json::to_string(&a).expect("serialise");
        let mut restored: Analysis = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(restored, a);
        assert_eq!(restored.looks(), 2);
        // The third window over, judged by the restored judge, fails:
        // the two windows before the restart still count.
        let j = restored.look(&arms(30_000, 900));
        assert_eq!(j.verdict, Verdict::Fail, "{}", j.reason);
        assert_eq!(j.look, 3);
        // serde_json without its float_roundtrip feature may change the
        // last digit of a float in a stored judgement; what it says does
        // not change.
        let again: Judgement = serde_json::from_str(&serde_json::to_string(&j).expect("serialise"))
            .expect("deserialise");
        assert_eq!(
            (again.verdict, &again.reason, again.look),
            (j.verdict, &j.reason, j.look)
        );
    }
}
