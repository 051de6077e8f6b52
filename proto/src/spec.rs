//! The rollout spec between the wire and `drover-model`, in one place: the
//! CLI converts the spec it built and checked into the message, the
//! coordinator converts the message back and checks it again with the same
//! [`drover_model::RolloutSpec::check`].

use std::time::Duration;

use drover_model::{Amount, LostHostPolicy, Release, RolloutSpec, SpecError, Spread};

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
        }
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
        }
    }

    #[test]
    fn a_spec_survives_the_wire() {
        for spec in [full(), RolloutSpec::default()] {
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
    }
}
