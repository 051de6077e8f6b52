//! Why a rollout waits ([`Block`]) and why it stopped ([`StopReason`]), as
//! the engine decides them. Their `Display` is the text operators have
//! always read (status, events, `wait_reason`); the wire carries both the
//! text and the typed value.
//!
//! Stored state written before these types held plain strings: such a
//! string reads back as the `Text` variant and shows as it was (see
//! [`text_compat`]).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use drover_model::Share;

use super::engine::{list, show};
use super::model::Millis;

/// Why nothing more starts right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    /// Taking another instance would push capacity under the floor.
    Floor {
        capacity: u32,
        floor: u32,
    },
    /// Drover already works on `max_unavailable` instances.
    MaxUnavailable {
        inflight: u32,
        max: u32,
    },
    /// The instance's spread group already has `max` unavailable.
    Spread {
        label: String,
        value: String,
        down: u32,
        max: u32,
    },
    Paused,
    /// Reachable instances not reported since a restore or reconnect.
    HealthReports {
        instances: u32,
    },
    /// What could start next is on these lost hosts.
    LostHosts {
        hosts: Vec<String>,
    },
    /// Stopping: in-flight instances finish their current steps first.
    Stopping {
        instances: u32,
    },
    /// Canary: the step's weights are being set.
    Weighting {
        step: u32,
        share: Share,
        instances: u32,
    },
    /// Canary: the step bakes while its analysis looks.
    Baking {
        step: u32,
        share: Share,
    },
    /// Canary: the step's analysis was inconclusive; held for a human.
    Inconclusive {
        step: u32,
        share: Share,
    },
    /// Canary: the configured weights are being put back.
    Unweighting {
        instances: u32,
    },
    /// Blue-green: `what` is under way on `instances` instance(s) (taking
    /// the idle color out of traffic, draining or stopping the old one,
    /// switching back).
    Colors {
        what: String,
        instances: u32,
    },
    /// Blue-green: the pre-traffic hook `name` runs against the idle color.
    Hook {
        name: String,
    },
    /// Blue-green: traffic switched; the old color `color` is drained and
    /// kept running until `until`, for an instant rollback.
    KeepingOld {
        color: String,
        until: Millis,
    },
    /// Stored by a coordinator before wait reasons were typed.
    Text(String),
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Block::Floor { capacity, floor } => {
                write!(f, "waiting: {capacity} healthy, floor {floor}")
            }
            Block::MaxUnavailable { inflight, max } => {
                write!(
                    f,
                    "waiting: {inflight} instances in progress, max_unavailable {max}"
                )
            }
            Block::Spread {
                label,
                value,
                down,
                max,
            } => write!(
                f,
                "waiting: {label}={value} has {down} unavailable, spread limit {max}"
            ),
            Block::Paused => f.write_str("paused by operator"),
            Block::HealthReports { instances } => {
                write!(f, "waiting for health reports from {instances} instance(s)")
            }
            Block::LostHosts { hosts } => write!(f, "waiting for lost hosts: {}", list(hosts)),
            Block::Stopping { instances } => write!(
                f,
                "stopping: waiting for {instances} instance(s) to finish their current steps"
            ),
            Block::Weighting {
                step,
                share,
                instances,
            } => write!(
                f,
                "traffic step {step} ({share}): setting weights on {instances} instance(s)"
            ),
            Block::Baking { step, share } => {
                write!(f, "traffic step {step} ({share}): baking, analysis running")
            }
            Block::Inconclusive { step, share } => write!(
                f,
                "traffic step {step} ({share}): analysis inconclusive, paused \
                 (promote, resume to bake again, or roll back)"
            ),
            Block::Unweighting { instances } => write!(
                f,
                "putting back the configured weight of {instances} instance(s)"
            ),
            Block::Colors { what, instances } => write!(f, "{what}: {instances} instance(s)"),
            Block::Hook { name } => write!(
                f,
                "running the pre-traffic hook `{name}` against the idle color; no traffic moved yet"
            ),
            Block::KeepingOld { color, .. } => write!(
                f,
                "traffic switched; keeping the old color ({color}) drained and running until keep-old \
                 ends (`drover rollout rollback` moves traffic back)"
            ),
            Block::Text(s) => f.write_str(s),
        }
    }
}

/// What a restore could not finish, for [`StopReason::Incomplete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfinished {
    /// A rollback left instances off their previous release.
    Rollback,
    /// An abort left instances failed on hosts that are there.
    Abort,
    /// An abort left instances on lost hosts as they were.
    HostLost,
    /// Weights drover set could not be put back.
    Weights,
}

/// Why a rollout stopped going forward, or why it ended other than
/// succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// More instances failed than `max_failures`; `who` as `id: fault`.
    FailureBudget {
        failed: u32,
        max: u32,
        who: Vec<String>,
    },
    /// More instances on lost hosts than `max_unreachable`.
    UnreachableBudget {
        unreachable: u32,
        max: u32,
        who: Vec<String>,
    },
    /// Nothing progressed for `progress_deadline`, waiting for `waiting`
    /// (`None`: instances still in progress).
    ProgressDeadline {
        after_ms: u64,
        waiting: Option<Block>,
    },
    OperatorAbort,
    OperatorRollback,
    /// Every instance finished, some failed within the budget.
    FailedWithinBudget {
        failed: Vec<String>,
    },
    /// A restore for `reason` ended with `problems` left.
    Incomplete {
        reason: Box<StopReason>,
        unfinished: Unfinished,
        problems: Vec<String>,
    },
    /// The runtime stopped the rollout: its state could not be stored or
    /// encoded; `why` is that error.
    Halted {
        why: String,
    },
    /// Canary: a look of step `step`'s analysis failed; `why` holds its
    /// numbers.
    AnalysisFailed {
        step: u32,
        share: Share,
        why: String,
    },
    /// Canary: step `step` had too little traffic to judge by
    /// `max_analysis`, and `on_inconclusive = fail`.
    Inconclusive {
        step: u32,
        share: Share,
        why: String,
    },
    /// Canary: weights could not be set (`id: why`).
    Weights {
        who: Vec<String>,
    },
    /// Everything else went well, but weights drover set could not be put
    /// back (`id: why`).
    WeightsNotRestored {
        who: Vec<String>,
    },
    /// Blue-green: why the switch could not go on or end cleanly, and the
    /// instances concerned (`id: why`).
    BlueGreen {
        why: String,
        who: Vec<String>,
    },
    /// Stored by a coordinator before stop reasons were typed.
    Text(String),
}

impl StopReason {
    pub fn progress_deadline(after: Duration, waiting: Option<Block>) -> StopReason {
        StopReason::ProgressDeadline {
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            waiting,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::FailureBudget { failed, max, who } => write!(
                f,
                "failure budget exceeded: {failed} failed, max_failures {max} ({})",
                list(who)
            ),
            StopReason::UnreachableBudget {
                unreachable,
                max,
                who,
            } => write!(
                f,
                "unreachable budget exceeded: {unreachable} on lost hosts, max_unreachable {max} ({})",
                list(who)
            ),
            StopReason::ProgressDeadline { after_ms, waiting } => {
                write!(
                    f,
                    "no progress for {}: ",
                    show(Duration::from_millis(*after_ms))
                )?;
                match waiting {
                    Some(b) => write!(f, "{b}"),
                    None => f.write_str("instances still in progress"),
                }
            }
            StopReason::OperatorAbort => f.write_str("aborted by operator"),
            StopReason::OperatorRollback => f.write_str("rollback requested by operator"),
            StopReason::FailedWithinBudget { failed } => write!(
                f,
                "{} instance(s) failed within the failure budget: {}",
                failed.len(),
                list(failed)
            ),
            StopReason::Incomplete {
                reason,
                unfinished,
                problems,
            } => {
                let what = match unfinished {
                    Unfinished::Rollback => "rollback incomplete",
                    Unfinished::Abort => "abort incomplete",
                    Unfinished::HostLost => "not restored, host lost",
                    Unfinished::Weights => "configured weights not put back",
                };
                write!(f, "{reason}; {what}: {}", list(problems))
            }
            StopReason::AnalysisFailed { step, share, why } => {
                write!(f, "canary analysis failed at step {step} ({share}): {why}")
            }
            StopReason::Inconclusive { step, share, why } => write!(
                f,
                "canary analysis inconclusive at step {step} ({share}) and on_inconclusive = fail: {why}"
            ),
            StopReason::Weights { who } => {
                write!(f, "weights could not be set: {}", list(who))
            }
            StopReason::WeightsNotRestored { who } => write!(
                f,
                "every instance updated, but configured weights not put back: {}",
                list(who)
            ),
            StopReason::BlueGreen { why, who } if who.is_empty() => f.write_str(why),
            StopReason::BlueGreen { why, who } => write!(f, "{why}: {}", list(who)),
            StopReason::Halted { why } | StopReason::Text(why) => f.write_str(why),
        }
    }
}

impl From<String> for Block {
    fn from(s: String) -> Block {
        Block::Text(s)
    }
}

impl From<String> for StopReason {
    fn from(s: String) -> StopReason {
        StopReason::Text(s)
    }
}

/// Serde for a reason field that older stored state holds as a plain
/// string: the typed form, or a string read as the `Text` variant.
pub(crate) mod text_compat {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Typed(T),
        Text(String),
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + From<String>,
    {
        Ok(match Either::<T>::deserialize(d)? {
            Either::Typed(t) => t,
            Either::Text(s) => T::from(s),
        })
    }

    /// The same for an `Option` (`null` is `None`).
    pub mod option {
        use super::*;

        pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
        where
            D: Deserializer<'de>,
            T: Deserialize<'de> + From<String>,
        {
            Ok(match Option::<Either<T>>::deserialize(d)? {
                None => None,
                Some(Either::Typed(t)) => Some(t),
                Some(Either::Text(s)) => Some(T::from(s)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Holder {
        #[serde(deserialize_with = "text_compat::deserialize")]
        reason: StopReason,
        #[serde(default, deserialize_with = "text_compat::option::deserialize")]
        wait: Option<Block>,
    }

    #[test]
    fn texts_are_what_operators_always_read() {
        let floor = Block::Floor {
            capacity: 7,
            floor: 8,
        };
        assert_eq!(floor.to_string(), "waiting: 7 healthy, floor 8");
        assert_eq!(
            Block::Spread {
                label: "zone".into(),
                value: "a".into(),
                down: 1,
                max: 1
            }
            .to_string(),
            "waiting: zone=a has 1 unavailable, spread limit 1"
        );
        let hosts: Vec<String> = (1..=7).map(|n| format!("h{n}")).collect();
        assert_eq!(
            Block::LostHosts { hosts }.to_string(),
            "waiting for lost hosts: h1, h2, h3, h4, h5 and 2 more"
        );
        let budget = StopReason::FailureBudget {
            failed: 2,
            max: 1,
            who: vec!["web@h1: verify failed: unhealthy".into()],
        };
        assert_eq!(
            budget.to_string(),
            "failure budget exceeded: 2 failed, max_failures 1 (web@h1: verify failed: unhealthy)"
        );
        assert_eq!(
            StopReason::progress_deadline(Duration::from_secs(600), Some(floor)).to_string(),
            "no progress for 10m: waiting: 7 healthy, floor 8"
        );
        let incomplete = StopReason::Incomplete {
            reason: Box::new(StopReason::OperatorAbort),
            unfinished: Unfinished::HostLost,
            problems: vec!["web@h2: host h2 lost".into()],
        };
        assert_eq!(
            incomplete.to_string(),
            "aborted by operator; not restored, host lost: web@h2: host h2 lost"
        );
    }

    #[test]
    fn old_strings_and_typed_values_both_read_back() {
        let old: Holder = serde_json::from_str(
            r#"{"reason":"aborted by operator","wait":"waiting: 1 healthy, floor 2"}"#,
        )
        .expect("old text");
        assert_eq!(old.reason, StopReason::Text("aborted by operator".into()));
        assert_eq!(
            old.wait,
            Some(Block::Text("waiting: 1 healthy, floor 2".into()))
        );
        assert_eq!(
            old.wait.as_ref().map(ToString::to_string).as_deref(),
            Some("waiting: 1 healthy, floor 2")
        );

        let new = Holder {
            reason: StopReason::progress_deadline(Duration::from_secs(60), Some(Block::Paused)),
            wait: Some(Block::Paused),
        };
        let text = serde_json::to_string(&new).expect("encode");
        assert_eq!(serde_json::from_str::<Holder>(&text).expect("decode"), new);
        let none: Holder =
            serde_json::from_str(r#"{"reason":"operator_abort","wait":null}"#).expect("null");
        assert_eq!(
            none,
            Holder {
                reason: StopReason::OperatorAbort,
                wait: None
            }
        );
    }
}
