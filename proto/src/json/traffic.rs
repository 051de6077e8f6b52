//! Canary and blue-green traffic: where a rollout's traffic steps are (the
//! rollout's `traffic`), the steps a plan forecasts (`traffic_steps`), and
//! every look of the analysis (`drover rollout analysis ID -o json`).

use std::time::Duration;

use serde::Serialize;

use super::reason::share_text;
use super::{known, non_empty, rfc3339_ms};
use crate::v1::{
    AnalysisArm, AnalysisLook, PlannedTrafficStep, RolloutAnalysis, RolloutTraffic, Strategy,
    TrafficStepResult, rollout_traffic,
};

/// The strategy as the spec and `--strategy` spell it (`blue-green`), so a
/// script can hand it back to `drover rollout start`.
pub fn strategy_word(raw: i32) -> &'static str {
    match known::<Strategy>(raw) {
        Strategy::Unspecified | Strategy::Rolling => "rolling",
        Strategy::Canary => "canary",
        Strategy::BlueGreen => "blue-green",
    }
}

/// The stage of a traffic step in snake_case (`baking`); `None` when the
/// coordinator did not say (or said something this build does not know).
pub fn stage_word(raw: i32) -> Option<&'static str> {
    use rollout_traffic::Stage;
    match known::<Stage>(raw) {
        Stage::Unspecified => None,
        Stage::Updating => Some("updating"),
        Stage::Weighting => Some("weighting"),
        Stage::Baking => Some("baking"),
        Stage::Held => Some("held"),
        Stage::Passed => Some("passed"),
        Stage::Isolating => Some("isolating"),
        Stage::Hook => Some("hook"),
        Stage::Switched => Some("switched"),
        Stage::Retiring => Some("retiring"),
        Stage::Retired => Some("retired"),
    }
}

/// A duration in milliseconds as humantime writes it (`30m`, `1m 30s`).
fn duration_text(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// Where a canary's (or blue-green's) traffic steps are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficJson {
    pub strategy: String,
    /// Every step's share, `"5%"`.
    pub steps: Vec<String>,
    /// 1-based step in progress (or the last one reached).
    pub step: u32,
    /// updating | weighting | baking | held | passed; blue-green also
    /// isolating | hook | switched | retiring | retired.
    pub stage: Option<String>,
    /// While baking: when counting began and when the bake ends.
    pub counting_from: Option<String>,
    pub counting_from_ms: Option<i64>,
    pub bake_ends_at: Option<String>,
    pub bake_ends_at_ms: Option<i64>,
    /// Looks taken in the current step.
    pub looks: u32,
    /// The last look's one-line verdict.
    pub last_look: Option<String>,
    /// How each finished step ended.
    pub results: Vec<TrafficResultJson>,
    /// Blue-green: the color that served at start (the old one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_color: Option<String>,
    /// Blue-green: when keep-old ends, while the old color is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_old_until: Option<String>,
}

impl From<&RolloutTraffic> for TrafficJson {
    fn from(t: &RolloutTraffic) -> Self {
        let RolloutTraffic {
            strategy,
            steps_basis_points,
            step,
            stage,
            counting_from_ms,
            bake_ends_at_ms,
            looks,
            last_look,
            results,
            active_color,
            keep_old_until_ms,
        } = t;
        let ms = |v: i64| (v > 0).then_some(v);
        TrafficJson {
            strategy: strategy_word(*strategy).to_string(),
            steps: steps_basis_points
                .iter()
                .map(|bp| share_text(*bp))
                .collect(),
            step: *step,
            stage: stage_word(*stage).map(String::from),
            counting_from: rfc3339_ms(*counting_from_ms),
            counting_from_ms: ms(*counting_from_ms),
            bake_ends_at: rfc3339_ms(*bake_ends_at_ms),
            bake_ends_at_ms: ms(*bake_ends_at_ms),
            looks: *looks,
            last_look: non_empty(last_look),
            results: results.iter().map(TrafficResultJson::from).collect(),
            active_color: non_empty(active_color),
            keep_old_until: rfc3339_ms(*keep_old_until_ms),
        }
    }
}

/// How one traffic step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficResultJson {
    pub step: u32,
    pub share: String,
    /// passed | promoted | passed_inconclusive.
    pub verdict: String,
    pub at: Option<String>,
    pub at_ms: i64,
    pub reason: Option<String>,
}

impl From<&TrafficStepResult> for TrafficResultJson {
    fn from(r: &TrafficStepResult) -> Self {
        let TrafficStepResult {
            step,
            share_basis_points,
            verdict,
            at_ms,
            reason,
        } = r;
        TrafficResultJson {
            step: *step,
            share: share_text(*share_basis_points),
            verdict: verdict.clone(),
            at: rfc3339_ms(*at_ms),
            at_ms: *at_ms,
            reason: non_empty(reason),
        }
    }
}

/// One traffic step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficStepJson {
    pub number: u32,
    pub share: String,
    /// Instances on the new release during the step, at `new_weight`;
    /// the rest stay on the old release at `old_weight`.
    pub updated: u32,
    pub new_weight: u32,
    pub old_weight: u32,
    /// How long the step is watched, `"30m"`, and in milliseconds.
    pub bake: String,
    pub bake_ms: u64,
}

impl From<&PlannedTrafficStep> for TrafficStepJson {
    fn from(s: &PlannedTrafficStep) -> Self {
        let PlannedTrafficStep {
            number,
            share_basis_points,
            updated,
            new_weight,
            old_weight,
            bake_ms,
        } = s;
        TrafficStepJson {
            number: *number,
            share: share_text(*share_basis_points),
            updated: *updated,
            new_weight: *new_weight,
            old_weight: *old_weight,
            bake: duration_text(*bake_ms),
            bake_ms: *bake_ms,
        }
    }
}

/// Every look of a rollout's analysis, as `drover rollout analysis ID -o
/// json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisJson {
    pub id: String,
    pub looks: Vec<AnalysisLookJson>,
}

impl From<&RolloutAnalysis> for AnalysisJson {
    fn from(a: &RolloutAnalysis) -> Self {
        let RolloutAnalysis { id, looks } = a;
        AnalysisJson {
            id: id.clone(),
            looks: looks.iter().map(AnalysisLookJson::from).collect(),
        }
    }
}

/// One look of a step's analysis: both arms' numbers, the test's p-value
/// and the verdict, with the whole stored judgement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnalysisLookJson {
    pub step: u32,
    pub share: String,
    pub look: u32,
    pub at: Option<String>,
    pub at_ms: i64,
    /// haproxy | metrics.
    pub source: String,
    pub canary_instances: u32,
    pub baseline_instances: u32,
    pub canary: ArmJson,
    pub baseline: ArmJson,
    /// P(X >= canary errors) under "no worse than error_ratio times the
    /// baseline"; `null` when an arm had no traffic.
    pub p_value: Option<f64>,
    /// pass | fail | inconclusive | continue.
    pub verdict: String,
    pub reason: Option<String>,
    /// The step's final look (the bake or max_analysis ended).
    pub last: bool,
    /// Every number of both tests, as the coordinator stored them; `null`
    /// when the coordinator sent none or it is not JSON.
    pub judgement: serde_json::Value,
}

impl From<&AnalysisLook> for AnalysisLookJson {
    fn from(l: &AnalysisLook) -> Self {
        let AnalysisLook {
            step,
            share_basis_points,
            look,
            at_ms,
            source,
            canary_instances,
            baseline_instances,
            canary,
            baseline,
            p_value,
            verdict,
            reason,
            last,
            judgement_json,
        } = l;
        AnalysisLookJson {
            step: *step,
            share: share_text(*share_basis_points),
            look: *look,
            at: rfc3339_ms(*at_ms),
            at_ms: *at_ms,
            source: source.clone(),
            canary_instances: *canary_instances,
            baseline_instances: *baseline_instances,
            canary: ArmJson::of(canary.as_ref()),
            baseline: ArmJson::of(baseline.as_ref()),
            p_value: p_value.filter(|p| p.is_finite()),
            verdict: verdict.clone(),
            reason: non_empty(reason),
            last: *last,
            judgement: serde_json::from_str(judgement_json).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// One arm of a look: requests (attempts), errors and latency in the
/// look's window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmJson {
    pub attempts: u64,
    pub errors: u64,
    /// HAProxy's rtime mean, or the histogram's p90; `null` when not
    /// usable.
    pub latency_ms: Option<f64>,
}

impl ArmJson {
    /// Zeros when the coordinator sent no arm.
    pub fn of(a: Option<&AnalysisArm>) -> ArmJson {
        let AnalysisArm {
            attempts,
            errors,
            latency_ms,
        } = a.cloned().unwrap_or_default();
        ArmJson {
            attempts,
            errors,
            // JSON has no NaN or infinity.
            latency_ms: latency_ms.filter(|v| v.is_finite()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::testing::{NOW, to_value};
    use serde_json::json;

    fn baking() -> RolloutTraffic {
        let mut t = RolloutTraffic {
            steps_basis_points: vec![500, 2500, 5000, 10_000],
            step: 2,
            counting_from_ms: NOW - 60_000,
            bake_ends_at_ms: NOW + 720_000,
            looks: 3,
            last_look: "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass".into(),
            results: vec![TrafficStepResult {
                step: 1,
                share_basis_points: 500,
                verdict: "passed".into(),
                at_ms: NOW - 120_000,
                reason: "30 looks, errors canary 2/1,204 vs baseline 21/22,980".into(),
            }],
            ..RolloutTraffic::default()
        };
        t.set_strategy(Strategy::Canary);
        t.set_stage(rollout_traffic::Stage::Baking);
        t
    }

    #[test]
    fn a_baking_canary_shows_its_steps_times_and_results() {
        assert_eq!(
            to_value(&TrafficJson::from(&baking())),
            json!({
                "strategy": "canary",
                "steps": ["5%", "25%", "50%", "100%"],
                "step": 2,
                "stage": "baking",
                "counting_from": "2026-09-21T14:12:20Z",
                "counting_from_ms": NOW - 60_000,
                "bake_ends_at": "2026-09-21T14:25:20Z",
                "bake_ends_at_ms": NOW + 720_000,
                "looks": 3,
                "last_look": "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass",
                "results": [{
                    "step": 1,
                    "share": "5%",
                    "verdict": "passed",
                    "at": "2026-09-21T14:11:20Z",
                    "at_ms": NOW - 120_000,
                    "reason": "30 looks, errors canary 2/1,204 vs baseline 21/22,980",
                }],
            })
        );
    }

    #[test]
    fn stages_and_strategies_have_their_words() {
        use rollout_traffic::Stage;
        let words: Vec<_> = [
            Stage::Updating,
            Stage::Weighting,
            Stage::Baking,
            Stage::Held,
            Stage::Passed,
        ]
        .into_iter()
        .map(|s| stage_word(s as i32))
        .collect();
        assert_eq!(
            words,
            ["updating", "weighting", "baking", "held", "passed"].map(Some)
        );
        // Every stage the proto has is named.
        for raw in 1..=20 {
            assert_eq!(Stage::try_from(raw).is_ok(), stage_word(raw).is_some());
        }
        assert_eq!(strategy_word(Strategy::BlueGreen as i32), "blue-green");
        assert_eq!(strategy_word(99), "rolling");
        // Not baking: no times.
        let mut t = baking();
        t.set_stage(rollout_traffic::Stage::Updating);
        t.counting_from_ms = 0;
        t.bake_ends_at_ms = 0;
        t.last_look.clear();
        let v = to_value(&TrafficJson::from(&t));
        assert_eq!(v["stage"], "updating");
        for k in [
            "counting_from",
            "counting_from_ms",
            "bake_ends_at",
            "bake_ends_at_ms",
            "last_look",
        ] {
            assert!(v[k].is_null(), "{k}: {v}");
        }
    }

    #[test]
    fn a_planned_step_shows_its_share_weights_and_bake() {
        let s = PlannedTrafficStep {
            number: 1,
            share_basis_points: 50,
            updated: 1,
            new_weight: 16,
            old_weight: 100,
            bake_ms: 90_000,
        };
        assert_eq!(
            to_value(&TrafficStepJson::from(&s)),
            json!({"number": 1, "share": "0.5%", "updated": 1, "new_weight": 16,
                   "old_weight": 100, "bake": "1m 30s", "bake_ms": 90_000})
        );
    }

    fn look() -> AnalysisLook {
        AnalysisLook {
            step: 1,
            share_basis_points: 500,
            look: 4,
            at_ms: NOW,
            source: "haproxy".into(),
            canary_instances: 1,
            baseline_instances: 5,
            canary: Some(AnalysisArm {
                attempts: 612,
                errors: 3,
                latency_ms: Some(41.5),
            }),
            baseline: Some(AnalysisArm {
                attempts: 2390,
                errors: 9,
                latency_ms: None,
            }),
            p_value: Some(0.62),
            verdict: "continue".into(),
            reason: "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%)".into(),
            last: false,
            judgement_json: r#"{"errors":{"p_value":0.62,"alpha":0.001},"latency":null}"#.into(),
        }
    }

    #[test]
    fn a_look_embeds_its_judgement_as_json() {
        let a = RolloutAnalysis {
            id: "web-7".into(),
            looks: vec![look()],
        };
        assert_eq!(
            to_value(&AnalysisJson::from(&a)),
            json!({
                "id": "web-7",
                "looks": [{
                    "step": 1,
                    "share": "5%",
                    "look": 4,
                    "at": "2026-09-21T14:13:20Z",
                    "at_ms": NOW,
                    "source": "haproxy",
                    "canary_instances": 1,
                    "baseline_instances": 5,
                    "canary": {"attempts": 612, "errors": 3, "latency_ms": 41.5},
                    "baseline": {"attempts": 2390, "errors": 9, "latency_ms": null},
                    "p_value": 0.62,
                    "verdict": "continue",
                    "reason": "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%)",
                    "last": false,
                    "judgement": {"errors": {"p_value": 0.62, "alpha": 0.001}, "latency": null},
                }],
            })
        );
        // What is not JSON, or missing, is null; so are numbers JSON
        // cannot carry.
        let mut l = look();
        l.judgement_json = "p=0.62".into();
        l.p_value = Some(f64::NAN);
        l.canary = None;
        let v = to_value(&AnalysisLookJson::from(&l));
        assert!(v["judgement"].is_null() && v["p_value"].is_null(), "{v}");
        assert_eq!(
            v["canary"],
            json!({"attempts": 0, "errors": 0, "latency_ms": null})
        );
        l.judgement_json.clear();
        assert!(to_value(&AnalysisLookJson::from(&l))["judgement"].is_null());
    }
}
