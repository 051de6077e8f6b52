//! What the rollouts add to the coordinator's metrics: rollouts running
//! and ended by strategy, step durations, and each running rollout's own
//! series (capacity against the floor, the canary analysis's latest look),
//! which exist while it runs and go when it ends, so they never number
//! more than the running rollouts.

use std::time::Duration;

use drover_analysis::Verdict;
use drover_model::Strategy;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::FloatGauge;
use crate::rollout::traffic::StepJudgement;
use crate::rollout::{CommandKind, CommandOutcome, Outcome};

type StepHistograms = Family<StepLabels, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StrategyLabel {
    strategy: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    strategy: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
    outcome: String,
}

/// One running rollout: the series that go when it ends.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    rollout: String,
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ArmLabels {
    rollout: String,
    service: String,
    arm: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    rollout: String,
    service: String,
    arm: String,
    statistic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    rollout: String,
    service: String,
    verdict: String,
}

const STRATEGIES: [Strategy; 3] = [Strategy::Rolling, Strategy::Canary, Strategy::BlueGreen];
/// The label values of a rollout's end.
const ROLLOUT_OUTCOMES: [&str; 4] = ["succeeded", "failed", "rolled_back", "aborted"];
const ARMS: [&str; 2] = ["canary", "baseline"];
const LATENCY_STATISTICS: [&str; 3] = ["mean", "p50", "p90"];
const VERDICTS: [Verdict; 4] = [
    Verdict::Continue,
    Verdict::Pass,
    Verdict::Fail,
    Verdict::Inconclusive,
];

/// `blue_green`, not `blue-green`: label values in snake case like the rest.
fn strategy_label(s: Strategy) -> String {
    match s {
        Strategy::Rolling => "rolling",
        Strategy::Canary => "canary",
        Strategy::BlueGreen => "blue_green",
    }
    .to_string()
}

/// The step label of a command: its kind in snake case.
fn step_label(kind: &CommandKind) -> &'static str {
    match kind {
        CommandKind::Stage { .. } => "stage",
        CommandKind::Drain => "drain",
        CommandKind::Stop => "stop",
        CommandKind::Deploy { .. } => "deploy",
        CommandKind::Start => "start",
        CommandKind::Verify { .. } => "verify",
        CommandKind::Undrain => "undrain",
        CommandKind::SetWeight { .. } => "set_weight",
    }
}

fn command_outcome_label(o: &CommandOutcome) -> &'static str {
    match o {
        CommandOutcome::Ok => "succeeded",
        CommandOutcome::Failed(_) => "failed",
        CommandOutcome::TimedOut => "timed_out",
    }
}

/// How a rollout ended, as a label; `None` (not ended) counts as failed:
/// only a halted rollout ends without an outcome of the engine's.
fn rollout_outcome_label(o: Option<&Outcome>) -> &'static str {
    match o {
        Some(Outcome::Succeeded) => "succeeded",
        Some(Outcome::Failed { .. }) | None => "failed",
        Some(Outcome::RolledBack { .. }) => "rolled_back",
        Some(Outcome::Aborted { .. }) => "aborted",
    }
}

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Continue => "continue",
        Verdict::Pass => "pass",
        Verdict::Fail => "fail",
        Verdict::Inconclusive => "inconclusive",
    }
}

/// Step durations from 50 ms to about 14 minutes (doubling).
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

/// What the rollouts add to the coordinator's metrics. A rollout's own
/// series (capacity, floor, canary numbers) exist while it runs and go
/// when it ends, so they never hold more than the running rollouts.
pub(super) struct RolloutMetrics {
    running: Family<StrategyLabel, Gauge>,
    ended: Family<EndedLabels, Counter>,
    step_seconds: StepHistograms,
    capacity: Family<RolloutLabels, Gauge>,
    floor: Family<RolloutLabels, Gauge>,
    canary_error_ratio: Family<ArmLabels, FloatGauge>,
    canary_requests: Family<ArmLabels, Gauge>,
    canary_latency: Family<LatencyLabels, FloatGauge>,
    canary_verdict: Family<VerdictLabels, Gauge>,
    canary_share: Family<RolloutLabels, FloatGauge>,
    canary_step: Family<RolloutLabels, Gauge>,
}

impl RolloutMetrics {
    pub(super) fn register(registry: &mut Registry) -> RolloutMetrics {
        let m = RolloutMetrics {
            running: Family::default(),
            ended: Family::default(),
            step_seconds: Family::new_with_constructor(step_histogram),
            capacity: Family::default(),
            floor: Family::default(),
            canary_error_ratio: Family::default(),
            canary_requests: Family::default(),
            canary_latency: Family::default(),
            canary_verdict: Family::default(),
            canary_share: Family::default(),
            canary_step: Family::default(),
        };
        registry.register(
            "rollouts_running",
            "Rollouts running now (paused and stopping included), by strategy",
            m.running.clone(),
        );
        registry.register(
            "rollouts_ended",
            "Rollouts that reached their end, by strategy and outcome (succeeded, failed, rolled_back, aborted)",
            m.ended.clone(),
        );
        registry.register(
            "rollout_step_duration_seconds",
            "How long an instance step took, from the command's first send to the agent's result, by step and outcome",
            m.step_seconds.clone(),
        );
        registry.register(
            "rollout_capacity_instances",
            "A running rollout's target instances healthy and in service now",
            m.capacity.clone(),
        );
        registry.register(
            "rollout_floor_instances",
            "A running rollout's floor: the capacity drover never takes it under (min_healthy)",
            m.floor.clone(),
        );
        registry.register(
            "canary_error_ratio",
            "A running canary's error ratio per arm (canary, baseline) at the analysis's latest look, cumulative over the step",
            m.canary_error_ratio.clone(),
        );
        registry.register(
            "canary_requests",
            "Requests per arm counted by a running canary's analysis at its latest look, cumulative over the step",
            m.canary_requests.clone(),
        );
        registry.register(
            "canary_latency_seconds",
            "A running canary's latency per arm at the latest look (mean, or p50 and p90 from the instances' histograms)",
            m.canary_latency.clone(),
        );
        registry.register(
            "canary_verdict",
            "1 for the verdict of a running canary's latest look, 0 for the others",
            m.canary_verdict.clone(),
        );
        registry.register(
            "canary_traffic_share_ratio",
            "The share of traffic a running canary's current step gives the new release",
            m.canary_share.clone(),
        );
        registry.register(
            "canary_step",
            "A running canary's current traffic step (1-based)",
            m.canary_step.clone(),
        );
        for s in STRATEGIES {
            let strategy = strategy_label(s);
            m.running
                .get_or_create(&StrategyLabel {
                    strategy: strategy.clone(),
                })
                .get();
            for outcome in ROLLOUT_OUTCOMES {
                m.ended
                    .get_or_create(&EndedLabels {
                        strategy: strategy.clone(),
                        outcome: outcome.to_string(),
                    })
                    .get();
            }
        }
        m
    }

    fn forget(&self, rollout: &str, service: &str) {
        let r = RolloutLabels {
            rollout: rollout.to_string(),
            service: service.to_string(),
        };
        self.capacity.remove(&r);
        self.floor.remove(&r);
        self.canary_share.remove(&r);
        self.canary_step.remove(&r);
        for arm in ARMS {
            let a = ArmLabels {
                rollout: rollout.to_string(),
                service: service.to_string(),
                arm: arm.to_string(),
            };
            self.canary_error_ratio.remove(&a);
            self.canary_requests.remove(&a);
            for statistic in LATENCY_STATISTICS {
                self.canary_latency.remove(&LatencyLabels {
                    rollout: rollout.to_string(),
                    service: service.to_string(),
                    arm: arm.to_string(),
                    statistic: statistic.to_string(),
                });
            }
        }
        for v in VERDICTS {
            self.canary_verdict.remove(&VerdictLabels {
                rollout: rollout.to_string(),
                service: service.to_string(),
                verdict: verdict_label(v).to_string(),
            });
        }
    }

    /// A rollout of `strategy` runs (started, or resumed after a restart).
    pub(super) fn running(&self, strategy: Strategy) {
        (self.running)
            .get_or_create(&StrategyLabel {
                strategy: strategy_label(strategy),
            })
            .inc();
    }

    /// A rollout's task ended (finished, halted, or the coordinator is
    /// stopping): it no longer runs here, and its own series go.
    pub(super) fn stopped(&self, strategy: Strategy, rollout: &str, service: &str) {
        (self.running)
            .get_or_create(&StrategyLabel {
                strategy: strategy_label(strategy),
            })
            .dec();
        self.forget(rollout, service);
    }

    /// A rollout reached its end with `outcome` (`None`: halted, counted
    /// as failed).
    pub(super) fn ended(&self, strategy: Strategy, outcome: Option<&Outcome>) {
        (self.ended)
            .get_or_create(&EndedLabels {
                strategy: strategy_label(strategy),
                outcome: rollout_outcome_label(outcome).to_string(),
            })
            .inc();
    }

    /// A running rollout's capacity and floor, as its status says now.
    pub(super) fn capacity(&self, rollout: &str, service: &str, capacity: u32, floor: u32) {
        let r = RolloutLabels {
            rollout: rollout.to_string(),
            service: service.to_string(),
        };
        self.capacity.get_or_create(&r).set(i64::from(capacity));
        self.floor.get_or_create(&r).set(i64::from(floor));
    }

    /// An agent answered a command of `kind` that was first sent `took` ago.
    pub(super) fn step(&self, kind: &CommandKind, outcome: &CommandOutcome, took: Duration) {
        (self.step_seconds)
            .get_or_create(&StepLabels {
                step: step_label(kind).to_string(),
                outcome: command_outcome_label(outcome).to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// A canary's (or blue-green's) analysis looked: its numbers per arm
    /// and its verdict replace the last look's.
    pub(super) fn canary_look(&self, rollout: &str, service: &str, j: &StepJudgement) {
        let m = self;
        let r = RolloutLabels {
            rollout: rollout.to_string(),
            service: service.to_string(),
        };
        m.canary_share.get_or_create(&r).set(j.share.fraction());
        m.canary_step.get_or_create(&r).set(i64::from(j.step));
        let judged = &j.judgement;
        let latency = &judged.latency;
        // Quantiles when both arms had histograms, else the mean judged.
        let stats: [(&str, Option<(f64, f64)>); 3] = match (&latency.p50, &latency.p90) {
            (Some(p50), Some(p90)) => [
                ("mean", None),
                ("p50", Some((p50.canary_ms, p50.baseline_ms))),
                ("p90", Some((p90.canary_ms, p90.baseline_ms))),
            ],
            _ => [
                ("mean", latency.canary_ms.zip(latency.baseline_ms)),
                ("p50", None),
                ("p90", None),
            ],
        };
        for (arm, numbers, rate) in [
            ("canary", &judged.canary, judged.errors.canary_rate),
            ("baseline", &judged.baseline, judged.errors.baseline_rate),
        ] {
            let a = ArmLabels {
                rollout: rollout.to_string(),
                service: service.to_string(),
                arm: arm.to_string(),
            };
            m.canary_error_ratio.get_or_create(&a).set(rate);
            m.canary_requests
                .get_or_create(&a)
                .set(i64::try_from(numbers.attempts).unwrap_or(i64::MAX));
            for (statistic, ms) in stats {
                let l = LatencyLabels {
                    rollout: rollout.to_string(),
                    service: service.to_string(),
                    arm: arm.to_string(),
                    statistic: statistic.to_string(),
                };
                let ms = ms.map(|(c, b)| if arm == "canary" { c } else { b });
                match ms.filter(|v| v.is_finite()) {
                    Some(ms) => {
                        m.canary_latency.get_or_create(&l).set(ms / 1000.0);
                    }
                    None => {
                        m.canary_latency.remove(&l);
                    }
                }
            }
        }
        for v in VERDICTS {
            m.canary_verdict
                .get_or_create(&VerdictLabels {
                    rollout: rollout.to_string(),
                    service: service.to_string(),
                    verdict: verdict_label(v).to_string(),
                })
                .set(i64::from(v == judged.verdict));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    fn look(canary: (u64, u64, f64), baseline: (u64, u64, f64)) -> StepJudgement {
        let arm = |(attempts, errors, ms): (u64, u64, f64)| drover_analysis::Arm {
            attempts,
            errors,
            latency: Some(drover_analysis::Latency::Mean {
                ms,
                responses: attempts,
            }),
        };
        let mut analysis = drover_analysis::Analysis::new(drover_analysis::Thresholds::default());
        let judgement = analysis.look(&drover_analysis::Look {
            at_ms: 1_000,
            canary: arm(canary),
            baseline: arm(baseline),
        });
        StepJudgement {
            step: 2,
            share: drover_model::Share::percent(25),
            look: 1,
            source: drover_model::MetricsSource::Haproxy,
            canary_instances: 1,
            baseline_instances: 3,
            last: false,
            judgement,
        }
    }

    #[test]
    fn a_canary_look_shows_both_arms_and_goes_with_its_rollout() {
        let m = Metrics::new();
        m.canary_look("web-1", "web", &look((200, 10, 30.0), (600, 6, 20.0)));
        let text = m.encode();
        let arm = |name: &str, arm: &str| {
            value(
                &text,
                &format!("{name}{{rollout=\"web-1\",service=\"web\",arm=\"{arm}\"}}"),
            )
        };
        assert_eq!(
            arm("drover_canary_error_ratio", "canary"),
            Some(0.05),
            "{text}"
        );
        assert_eq!(
            arm("drover_canary_error_ratio", "baseline"),
            Some(0.01),
            "{text}"
        );
        assert_eq!(
            arm("drover_canary_requests", "canary"),
            Some(200.0),
            "{text}"
        );
        assert_eq!(
            arm("drover_canary_requests", "baseline"),
            Some(600.0),
            "{text}"
        );
        let latency = |arm: &str| {
            value(
                &text,
                &format!(
                    "drover_canary_latency_seconds{{rollout=\"web-1\",service=\"web\",arm=\"{arm}\",statistic=\"mean\"}}"
                ),
            )
        };
        assert_eq!(latency("canary"), Some(0.03), "{text}");
        assert_eq!(latency("baseline"), Some(0.02), "{text}");
        assert_eq!(
            value(
                &text,
                "drover_canary_traffic_share_ratio{rollout=\"web-1\",service=\"web\"}"
            ),
            Some(0.25)
        );
        let verdicts: Vec<&str> = (text.lines())
            .filter(|l| l.starts_with("drover_canary_verdict{") && l.ends_with(" 1"))
            .collect();
        assert_eq!(verdicts.len(), 1, "one verdict at a time: {verdicts:?}");
        m.rollout_stopped(Strategy::Canary, "web-1", "web");
        let text = m.encode();
        assert!(
            !text.contains("rollout=\"web-1\""),
            "a rollout's series go with it:\n{text}"
        );
    }
}
