//! The rollout spec between the wire and `drover-model`, in one place: the
//! CLI converts the spec it built and checked into the message, the
//! coordinator converts the message back and checks it again with the same
//! [`drover_model::RolloutSpec::check`].

use std::time::Duration;

use drover_model::{
    Amount, AnalysisSpec, LostHostPolicy, MetricsSource, Num, OnInconclusive, Release, RolloutSpec,
    Share, SpecError, Spread, Strategy,
};

use crate::v1 as pb;

impl From<Amount> for pb::Amount {
    fn from(a: Amount) -> pb::Amount {
        pb::Amount {
            amount: Some(match a {
                Amount::Count(n) => pb::amount::Amount::Count(n),
                Amount::Percent(p) => pb::amount::Amount::Percent(p),
            }),
        }
    }
}

impl From<&Spread> for pb::Spread {
    fn from(s: &Spread) -> pb::Spread {
        pb::Spread {
            label: s.label.clone(),
            max_unavailable: s.max_unavailable,
        }
    }
}

impl From<LostHostPolicy> for pb::LostHostPolicy {
    fn from(p: LostHostPolicy) -> pb::LostHostPolicy {
        match p {
            LostHostPolicy::Skip => pb::LostHostPolicy::Skip,
            LostHostPolicy::Wait => pb::LostHostPolicy::Wait,
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl From<&RolloutSpec> for pb::RolloutSpec {
    fn from(s: &RolloutSpec) -> pb::RolloutSpec {
        pb::RolloutSpec {
            service: s.service.clone(),
            selector: s.selector.clone(),
            target: Some(pb::Release {
                version: s.target.version.clone(),
                digest: s.target.digest.clone(),
            }),
            batches: s.batches.iter().map(|a| pb::Amount::from(*a)).collect(),
            max_unavailable: s.max_unavailable.map(pb::Amount::from),
            min_healthy: Some(s.min_healthy.into()),
            min_healthy_time_ms: ms(s.min_healthy_time),
            healthy_deadline_ms: ms(s.healthy_deadline),
            progress_deadline_ms: ms(s.progress_deadline),
            max_failures: Some(s.max_failures.into()),
            max_unreachable: Some(s.max_unreachable.into()),
            auto_rollback: s.auto_rollback,
            spread_by: s.spread_by.as_ref().map(pb::Spread::from),
            lost_hosts: pb::LostHostPolicy::from(s.lost_hosts) as i32,
            step_timeout_ms: ms(s.step_timeout),
            strategy: pb::Strategy::from(s.strategy) as i32,
            steps_basis_points: s.steps.iter().map(|s| s.basis_points()).collect(),
            bake_ms: s.bake.map_or(0, ms),
            keep_old_ms: s.keep_old.map_or(0, ms),
            pre_traffic_hook: s.pre_traffic_hook.clone().unwrap_or_default(),
            analysis: Some(pb::AnalysisSpec::from(&s.analysis)),
        }
    }
}

impl From<Strategy> for pb::Strategy {
    fn from(s: Strategy) -> pb::Strategy {
        match s {
            Strategy::Rolling => pb::Strategy::Rolling,
            Strategy::Canary => pb::Strategy::Canary,
            Strategy::BlueGreen => pb::Strategy::BlueGreen,
        }
    }
}

impl From<&AnalysisSpec> for pb::AnalysisSpec {
    fn from(a: &AnalysisSpec) -> pb::AnalysisSpec {
        pb::AnalysisSpec {
            interval_ms: ms(a.interval),
            warmup_ms: a.warmup.map_or(0, ms),
            max_analysis_ms: a.max_analysis.map_or(0, ms),
            on_inconclusive: match a.on_inconclusive {
                OnInconclusive::Pause => pb::OnInconclusive::Pause,
                OnInconclusive::Fail => pb::OnInconclusive::Fail,
                OnInconclusive::Pass => pb::OnInconclusive::Pass,
            } as i32,
            source: match a.source {
                MetricsSource::Auto => pb::MetricsSource::Auto,
                MetricsSource::Haproxy => pb::MetricsSource::Haproxy,
                MetricsSource::Metrics => pb::MetricsSource::Metrics,
            } as i32,
            error_ratio: a.error_ratio.get(),
            alpha: a.alpha.get(),
            min_canary_errors: a.min_canary_errors,
            min_difference: a.min_difference.get(),
            guard_error_rate: a.guard_error_rate.get(),
            guard_min_requests: a.guard_min_requests,
            min_requests: a.min_requests,
            latency_ratio: a.latency_ratio.get(),
            latency_min_delta_ms: ms(a.latency_min_delta),
            latency_windows: a.latency_windows,
        }
    }
}

fn num(field: &str, v: f64) -> Result<Num, SpecError> {
    Num::new(v).ok_or_else(|| SpecError::invalid(field, "a finite number", v))
}

fn optional_ms(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl TryFrom<&pb::AnalysisSpec> for AnalysisSpec {
    type Error = SpecError;

    fn try_from(a: &pb::AnalysisSpec) -> Result<AnalysisSpec, SpecError> {
        let on_inconclusive = match pb::OnInconclusive::try_from(a.on_inconclusive) {
            Ok(pb::OnInconclusive::Pause | pb::OnInconclusive::Unspecified) => {
                OnInconclusive::Pause
            }
            Ok(pb::OnInconclusive::Fail) => OnInconclusive::Fail,
            Ok(pb::OnInconclusive::Pass) => OnInconclusive::Pass,
            Err(_) => {
                return Err(SpecError::invalid(
                    "analysis.on_inconclusive",
                    "pause, fail or pass",
                    a.on_inconclusive,
                ));
            }
        };
        let source = match pb::MetricsSource::try_from(a.source) {
            Ok(pb::MetricsSource::Auto | pb::MetricsSource::Unspecified) => MetricsSource::Auto,
            Ok(pb::MetricsSource::Haproxy) => MetricsSource::Haproxy,
            Ok(pb::MetricsSource::Metrics) => MetricsSource::Metrics,
            Err(_) => {
                return Err(SpecError::invalid(
                    "analysis.source",
                    "auto, haproxy or metrics",
                    a.source,
                ));
            }
        };
        Ok(AnalysisSpec {
            interval: Duration::from_millis(a.interval_ms),
            warmup: optional_ms(a.warmup_ms),
            max_analysis: optional_ms(a.max_analysis_ms),
            on_inconclusive,
            source,
            error_ratio: num("analysis.error_ratio", a.error_ratio)?,
            alpha: num("analysis.alpha", a.alpha)?,
            min_canary_errors: a.min_canary_errors,
            min_difference: num("analysis.min_difference", a.min_difference)?,
            guard_error_rate: num("analysis.guard_error_rate", a.guard_error_rate)?,
            guard_min_requests: a.guard_min_requests,
            min_requests: a.min_requests,
            latency_ratio: num("analysis.latency_ratio", a.latency_ratio)?,
            latency_min_delta: Duration::from_millis(a.latency_min_delta_ms),
            latency_windows: a.latency_windows,
        })
    }
}

fn nothing(field: &str) -> SpecError {
    SpecError::invalid(field, "a count like 3 or a percentage like 25%", "nothing")
}

fn amount(field: &str, a: Option<&pb::Amount>) -> Result<Amount, SpecError> {
    match a.and_then(|a| a.amount) {
        Some(pb::amount::Amount::Count(n)) => Ok(Amount::Count(n)),
        Some(pb::amount::Amount::Percent(p)) => Ok(Amount::Percent(p)),
        None => Err(nothing(field)),
    }
}

impl TryFrom<&pb::RolloutSpec> for RolloutSpec {
    type Error = SpecError;

    /// Every field must be given; an unset amount or lost-host policy is
    /// named. The result is not checked yet: call
    /// [`RolloutSpec::check`] on it.
    fn try_from(s: &pb::RolloutSpec) -> Result<RolloutSpec, SpecError> {
        let target = s.target.as_ref().map_or_else(Release::default, |r| {
            Release::new(r.version.clone(), r.digest.clone())
        });
        let batches = (s.batches.iter().enumerate())
            .map(|(i, a)| amount(&format!("batches[{i}]"), Some(a)))
            .collect::<Result<Vec<_>, _>>()?;
        let max_unavailable = match &s.max_unavailable {
            None => None,
            Some(a) => Some(amount("max_unavailable", Some(a))?),
        };
        let lost_hosts = match pb::LostHostPolicy::try_from(s.lost_hosts) {
            Ok(pb::LostHostPolicy::Skip) => LostHostPolicy::Skip,
            Ok(pb::LostHostPolicy::Wait) => LostHostPolicy::Wait,
            Ok(pb::LostHostPolicy::Unspecified) | Err(_) => {
                return Err(SpecError::invalid(
                    "lost_hosts",
                    "\"skip\" or \"wait\"",
                    s.lost_hosts,
                ));
            }
        };
        Ok(RolloutSpec {
            service: s.service.clone(),
            selector: s.selector.clone(),
            target,
            batches,
            max_unavailable,
            min_healthy: amount("min_healthy", s.min_healthy.as_ref())?,
            min_healthy_time: Duration::from_millis(s.min_healthy_time_ms),
            healthy_deadline: Duration::from_millis(s.healthy_deadline_ms),
            progress_deadline: Duration::from_millis(s.progress_deadline_ms),
            max_failures: amount("max_failures", s.max_failures.as_ref())?,
            max_unreachable: amount("max_unreachable", s.max_unreachable.as_ref())?,
            auto_rollback: s.auto_rollback,
            spread_by: s.spread_by.as_ref().map(|sp| Spread {
                label: sp.label.clone(),
                max_unavailable: sp.max_unavailable,
            }),
            lost_hosts,
            step_timeout: Duration::from_millis(s.step_timeout_ms),
            strategy: match pb::Strategy::try_from(s.strategy) {
                Ok(pb::Strategy::Rolling | pb::Strategy::Unspecified) => Strategy::Rolling,
                Ok(pb::Strategy::Canary) => Strategy::Canary,
                Ok(pb::Strategy::BlueGreen) => Strategy::BlueGreen,
                Err(_) => {
                    return Err(SpecError::invalid(
                        "strategy",
                        "rolling, canary or blue-green",
                        s.strategy,
                    ));
                }
            },
            steps: s
                .steps_basis_points
                .iter()
                .map(|&bp| Share::from_basis_points(bp))
                .collect(),
            bake: optional_ms(s.bake_ms),
            keep_old: optional_ms(s.keep_old_ms),
            pre_traffic_hook: (!s.pre_traffic_hook.is_empty()).then(|| s.pre_traffic_hook.clone()),
            analysis: match &s.analysis {
                Some(a) => AnalysisSpec::try_from(a)?,
                None => AnalysisSpec::default(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> RolloutSpec {
        RolloutSpec {
            service: "web".into(),
            selector: "env=prod".into(),
            target: Release::new("v2", "ab".repeat(32)),
            batches: vec![Amount::Count(1), Amount::Percent(25), Amount::Percent(100)],
            max_unavailable: Some(Amount::Percent(20)),
            min_healthy: Amount::Count(8),
            min_healthy_time: Duration::ZERO,
            healthy_deadline: Duration::from_millis(60_500),
            progress_deadline: Duration::from_secs(600),
            max_failures: Amount::Percent(10),
            max_unreachable: Amount::Count(1),
            auto_rollback: true,
            spread_by: Some(Spread {
                label: "zone".into(),
                max_unavailable: 2,
            }),
            lost_hosts: LostHostPolicy::Skip,
            step_timeout: Duration::from_secs(90),
            ..RolloutSpec::default()
        }
    }

    fn canary() -> RolloutSpec {
        RolloutSpec {
            batches: vec![Amount::Count(1)],
            strategy: Strategy::Canary,
            steps: drover_model::strategy::parse_steps("0.5%,25%,100%").expect("steps"),
            bake: Some(Duration::from_secs(90)),
            analysis: AnalysisSpec {
                warmup: Some(Duration::from_secs(20)),
                on_inconclusive: OnInconclusive::Fail,
                source: MetricsSource::Metrics,
                error_ratio: Num::new(3.0).expect("finite"),
                latency_min_delta: Duration::from_millis(40),
                ..AnalysisSpec::default()
            },
            ..full()
        }
    }

    fn blue_green() -> RolloutSpec {
        RolloutSpec {
            batches: vec![Amount::Count(1)],
            strategy: Strategy::BlueGreen,
            keep_old: Some(Duration::from_secs(120)),
            pre_traffic_hook: Some("smoke".into()),
            ..full()
        }
    }

    #[test]
    fn a_spec_survives_the_wire() {
        for spec in [full(), RolloutSpec::default(), canary(), blue_green()] {
            let wire = pb::RolloutSpec::from(&spec);
            assert_eq!(RolloutSpec::try_from(&wire), Ok(spec));
        }
    }

    #[test]
    fn a_field_left_unset_is_named() {
        let mut wire = pb::RolloutSpec::from(&full());
        wire.min_healthy = None;
        let e = RolloutSpec::try_from(&wire).expect_err("no floor");
        assert_eq!(e.field(), Some("min_healthy"));

        let mut wire = pb::RolloutSpec::from(&full());
        wire.batches[1] = pb::Amount { amount: None };
        let e = RolloutSpec::try_from(&wire).expect_err("empty amount");
        assert_eq!(e.field(), Some("batches[1]"));

        let mut wire = pb::RolloutSpec::from(&full());
        wire.lost_hosts = pb::LostHostPolicy::Unspecified as i32;
        let e = RolloutSpec::try_from(&wire).expect_err("no policy");
        assert_eq!(e.field(), Some("lost_hosts"));

        // A CLI older than strategies sends neither: a rolling update with
        // the default analysis.
        let mut wire = pb::RolloutSpec::from(&full());
        wire.strategy = pb::Strategy::Unspecified as i32;
        wire.analysis = None;
        let spec = RolloutSpec::try_from(&wire).expect("old CLI");
        assert_eq!(spec.strategy, Strategy::Rolling);
        assert_eq!(spec.analysis, AnalysisSpec::default());
    }
}
