//! Why a rollout waits and why it stopped, typed: the `wait` and `stop`
//! objects next to the `wait_reason` and `reason` texts.

use serde::Serialize;

use super::known;
use crate::v1::{RolloutStop, RolloutWait, rollout_stop, rollout_wait};

/// Why a rollout waits (`RolloutWait`): `kind` is the enum's name in
/// snake_case, with only the fields that kind uses. `other`: only the
/// rollout's `wait_reason` text says why (stored by an older coordinator,
/// sent by one that does not type it yet, or a kind this build does not
/// know).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitJson {
    /// Another instance down would put capacity under the floor.
    Floor {
        capacity: u32,
        floor: u32,
    },
    /// Drover already works on `max` (max_unavailable) instances.
    MaxUnavailable {
        in_progress: u32,
        max: u32,
    },
    /// The next instance's spread group `label=value` is at its limit.
    Spread {
        label: String,
        value: String,
        down: u32,
        max: u32,
    },
    Paused,
    /// Reports awaited after a restart or reconnect.
    HealthReports {
        instances: u32,
    },
    /// What could start next is on these lost hosts.
    LostHosts {
        hosts: Vec<String>,
    },
    /// Stopping; in-flight instances finish first.
    Stopping {
        instances: u32,
    },
    /// Canary: setting the weights of traffic step `step` (1-based), whose
    /// share is `share` (`"5%"`), on `instances` instances.
    Weighting {
        step: u32,
        share: String,
        instances: u32,
    },
    /// Canary: the step bakes while its analysis looks.
    Baking {
        step: u32,
        share: String,
    },
    /// Canary: the step's analysis was inconclusive; paused for a human to
    /// promote, resume (look again) or roll back.
    Inconclusive {
        step: u32,
        share: String,
    },
    /// Canary: putting the configured weights back on `instances` instances.
    Unweighting {
        instances: u32,
    },
    /// Blue-green: `what` is under way on `instances` instances.
    Colors {
        what: String,
        instances: u32,
    },
    /// Blue-green: the pre-traffic hook `hook` runs against the idle color.
    Hook {
        hook: String,
    },
    /// Blue-green: the old color `color` is kept drained and running until
    /// `until` (keep-old); `drover rollout rollback` moves the traffic back.
    KeepingOld {
        color: String,
        until: Option<String>,
        until_ms: i64,
    },
    Other,
}

/// A share of traffic as people write it: `"5%"`, `"0.5%"`.
pub(super) fn share_text(basis_points: u32) -> String {
    drover_model::Share::from_basis_points(basis_points).to_string()
}

impl From<&RolloutWait> for WaitJson {
    fn from(w: &RolloutWait) -> Self {
        use rollout_wait::Kind;
        let RolloutWait {
            kind,
            capacity,
            floor,
            in_progress,
            max,
            label,
            value,
            down,
            instances,
            hosts,
            step,
            share_basis_points,
            until_ms,
        } = w;
        let (capacity, floor, in_progress, max, down, instances, step) = (
            *capacity,
            *floor,
            *in_progress,
            *max,
            *down,
            *instances,
            *step,
        );
        let share = || share_text(*share_basis_points);
        match known(*kind) {
            Kind::Floor => WaitJson::Floor { capacity, floor },
            Kind::MaxUnavailable => WaitJson::MaxUnavailable { in_progress, max },
            Kind::Spread => WaitJson::Spread {
                label: label.clone(),
                value: value.clone(),
                down,
                max,
            },
            Kind::Paused => WaitJson::Paused,
            Kind::HealthReports => WaitJson::HealthReports { instances },
            Kind::LostHosts => WaitJson::LostHosts {
                hosts: hosts.clone(),
            },
            Kind::Stopping => WaitJson::Stopping { instances },
            Kind::Weighting => WaitJson::Weighting {
                step,
                share: share(),
                instances,
            },
            Kind::Baking => WaitJson::Baking {
                step,
                share: share(),
            },
            Kind::Inconclusive => WaitJson::Inconclusive {
                step,
                share: share(),
            },
            Kind::Unweighting => WaitJson::Unweighting { instances },
            Kind::Colors => WaitJson::Colors {
                what: label.clone(),
                instances,
            },
            Kind::Hook => WaitJson::Hook {
                hook: label.clone(),
            },
            Kind::KeepingOld => WaitJson::KeepingOld {
                color: label.clone(),
                until: super::rfc3339_ms(*until_ms),
                until_ms: *until_ms,
            },
            Kind::Other | Kind::Unspecified => WaitJson::Other,
        }
    }
}

/// Why a rollout stopped going forward or ended other than succeeded
/// (`RolloutStop`): `kind` with the fields it uses, plus `unfinished` and
/// `problems` when the restore that followed ended incomplete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopJson {
    #[serde(flatten)]
    pub why: StopKindJson,
    /// What the restore could not finish; absent when it finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished: Option<UnfinishedJson>,
    /// The instances the restore left, as `id: why`; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// `RolloutStop.Kind` in snake_case, with the fields it uses. `other`: only
/// the rollout's `reason` text says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopKindJson {
    /// More failed than max_failures (`max`); `instances` as `id: what happened`.
    FailureBudget {
        count: u32,
        max: u32,
        instances: Vec<String>,
    },
    /// More on lost hosts than max_unreachable.
    UnreachableBudget {
        count: u32,
        max: u32,
        instances: Vec<String>,
    },
    /// Nothing progressed for `after_ms`, waiting for `waiting` (`null`:
    /// for instances in progress).
    ProgressDeadline {
        after_ms: u64,
        waiting: Option<WaitJson>,
    },
    OperatorAbort,
    OperatorRollback,
    /// Every instance finished, some failed within the budget.
    FailedWithinBudget {
        instances: Vec<String>,
    },
    /// The coordinator could not store the rollout's state.
    Halted,
    /// Canary: a look of the analysis failed at traffic step `step`
    /// (`share` of the traffic); `why` holds its numbers.
    AnalysisFailed {
        step: u32,
        share: String,
        why: String,
    },
    /// Canary: too little traffic to judge by max_analysis, and
    /// on_inconclusive = fail.
    Inconclusive {
        step: u32,
        share: String,
        why: String,
    },
    /// Canary: weights could not be set on these instances (`id: why`).
    Weights {
        instances: Vec<String>,
    },
    /// Every instance updated, but the weights of these were not put back.
    WeightsNotRestored {
        instances: Vec<String>,
    },
    /// Blue-green: the switch could not go on or end cleanly (`why`); the
    /// instances concerned as `id: why`.
    BlueGreen {
        why: String,
        instances: Vec<String>,
    },
    Other,
}

/// `RolloutStop.Unfinished` in snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnfinishedJson {
    Rollback,
    Abort,
    HostLost,
    /// Weights drover set could not be put back.
    Weights,
}

impl From<&RolloutStop> for StopJson {
    fn from(s: &RolloutStop) -> Self {
        use rollout_stop::{Kind, Unfinished};
        let RolloutStop {
            kind,
            count,
            max,
            instances,
            after_ms,
            waiting,
            unfinished,
            problems,
            step,
            share_basis_points,
            why,
        } = s;
        let (count, max, step) = (*count, *max, *step);
        let share = || share_text(*share_basis_points);
        let why = match known(*kind) {
            Kind::FailureBudget => StopKindJson::FailureBudget {
                count,
                max,
                instances: instances.clone(),
            },
            Kind::UnreachableBudget => StopKindJson::UnreachableBudget {
                count,
                max,
                instances: instances.clone(),
            },
            Kind::ProgressDeadline => StopKindJson::ProgressDeadline {
                after_ms: *after_ms,
                waiting: waiting.as_ref().map(WaitJson::from),
            },
            Kind::OperatorAbort => StopKindJson::OperatorAbort,
            Kind::OperatorRollback => StopKindJson::OperatorRollback,
            Kind::FailedWithinBudget => StopKindJson::FailedWithinBudget {
                instances: instances.clone(),
            },
            Kind::Halted => StopKindJson::Halted,
            Kind::AnalysisFailed => StopKindJson::AnalysisFailed {
                step,
                share: share(),
                why: why.clone(),
            },
            Kind::Inconclusive => StopKindJson::Inconclusive {
                step,
                share: share(),
                why: why.clone(),
            },
            Kind::Weights => StopKindJson::Weights {
                instances: instances.clone(),
            },
            Kind::WeightsNotRestored => StopKindJson::WeightsNotRestored {
                instances: instances.clone(),
            },
            Kind::BlueGreen => StopKindJson::BlueGreen {
                why: why.clone(),
                instances: instances.clone(),
            },
            Kind::Other | Kind::Unspecified => StopKindJson::Other,
        };
        StopJson {
            why,
            unfinished: match known(*unfinished) {
                Unfinished::Unspecified => None,
                Unfinished::Rollback => Some(UnfinishedJson::Rollback),
                Unfinished::Abort => Some(UnfinishedJson::Abort),
                Unfinished::HostLost => Some(UnfinishedJson::HostLost),
                Unfinished::Weights => Some(UnfinishedJson::Weights),
            },
            problems: problems.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::testing::{floor_wait, to_value};
    use serde_json::json;

    /// The word the proto gives a value: `KIND_LOST_HOSTS` ->
    /// `lost_hosts`, `UNFINISHED_HOST_LOST` -> `host_lost`.
    fn proto_word(name: &str) -> String {
        let word = ["KIND_", "UNFINISHED_"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name);
        word.to_lowercase()
    }

    #[test]
    fn every_wait_kind_is_named_after_its_enum_and_carries_only_its_fields() {
        use rollout_wait::Kind;
        let expected: [(Kind, &[&str]); 15] = [
            (Kind::Floor, &["capacity", "floor"]),
            (Kind::MaxUnavailable, &["in_progress", "max"]),
            (Kind::Spread, &["label", "value", "down", "max"]),
            (Kind::Paused, &[]),
            (Kind::HealthReports, &["instances"]),
            (Kind::LostHosts, &["hosts"]),
            (Kind::Stopping, &["instances"]),
            (Kind::Other, &[]),
            (Kind::Weighting, &["step", "share", "instances"]),
            (Kind::Baking, &["step", "share"]),
            (Kind::Inconclusive, &["step", "share"]),
            (Kind::Unweighting, &["instances"]),
            (Kind::Colors, &["what", "instances"]),
            (Kind::Hook, &["hook"]),
            (Kind::KeepingOld, &["color", "until", "until_ms"]),
        ];
        // Every kind the proto has is listed above.
        let listed: Vec<i32> = expected.iter().map(|(k, _)| *k as i32).collect();
        for raw in 1..=20 {
            assert_eq!(
                Kind::try_from(raw).is_ok(),
                listed.contains(&raw),
                "wait kind {raw}"
            );
        }
        for (kind, fields) in expected {
            let w = RolloutWait {
                kind: kind as i32,
                capacity: 1,
                floor: 2,
                in_progress: 3,
                max: 4,
                label: "zone".into(),
                value: "a".into(),
                down: 5,
                instances: 6,
                hosts: vec!["h2".into()],
                step: 2,
                share_basis_points: 50,
                until_ms: 1_700_000_000_000,
            };
            let v = to_value(&WaitJson::from(&w));
            assert_eq!(v["kind"], proto_word(kind.as_str_name()), "{v}");
            let mut keys: Vec<&str> = v
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            let mut want = fields.to_vec();
            want.push("kind");
            want.sort_unstable();
            assert_eq!(keys, want, "{v}");
            let wire = json!({"capacity": 1, "floor": 2, "in_progress": 3, "max": 4,
                "label": "zone", "value": "a", "down": 5, "instances": 6, "hosts": ["h2"],
                "step": 2, "share": "0.5%", "what": "zone", "hook": "zone", "color": "zone",
                "until_ms": 1_700_000_000_000_i64, "until": "2023-11-14T22:13:20Z"});
            for f in fields {
                assert_eq!(v[f], wire[f], "{} carries {f}", kind.as_str_name());
            }
        }
        let v = to_value(&WaitJson::from(&RolloutWait {
            kind: Kind::LostHosts as i32,
            hosts: vec!["h2".into(), "h4".into()],
            ..RolloutWait::default()
        }));
        assert_eq!(v, json!({"kind": "lost_hosts", "hosts": ["h2", "h4"]}));
        let v = to_value(&WaitJson::from(&RolloutWait {
            kind: Kind::Baking as i32,
            step: 2,
            share_basis_points: 2500,
            ..RolloutWait::default()
        }));
        assert_eq!(v, json!({"kind": "baking", "step": 2, "share": "25%"}));
    }

    #[test]
    fn every_stop_kind_is_named_after_its_enum_and_carries_only_its_fields() {
        use rollout_stop::Kind;
        let expected: [(Kind, &[&str]); 13] = [
            (Kind::BlueGreen, &["why", "instances"]),
            (Kind::FailureBudget, &["count", "max", "instances"]),
            (Kind::UnreachableBudget, &["count", "max", "instances"]),
            (Kind::ProgressDeadline, &["after_ms", "waiting"]),
            (Kind::OperatorAbort, &[]),
            (Kind::OperatorRollback, &[]),
            (Kind::FailedWithinBudget, &["instances"]),
            (Kind::Halted, &[]),
            (Kind::Other, &[]),
            (Kind::AnalysisFailed, &["step", "share", "why"]),
            (Kind::Inconclusive, &["step", "share", "why"]),
            (Kind::Weights, &["instances"]),
            (Kind::WeightsNotRestored, &["instances"]),
        ];
        let listed: Vec<i32> = expected.iter().map(|(k, _)| *k as i32).collect();
        for raw in 1..=20 {
            assert_eq!(
                Kind::try_from(raw).is_ok(),
                listed.contains(&raw),
                "stop kind {raw}"
            );
        }
        for (kind, fields) in expected {
            let s = RolloutStop {
                kind: kind as i32,
                count: 2,
                max: 1,
                instances: vec!["web@h1: failed".into()],
                after_ms: 600_000,
                waiting: Some(floor_wait()),
                unfinished: 0,
                problems: Vec::new(),
                step: 1,
                share_basis_points: 500,
                why: "errors 9/100 vs 1/900".into(),
            };
            let v = to_value(&StopJson::from(&s));
            assert_eq!(v["kind"], proto_word(kind.as_str_name()), "{v}");
            let mut keys: Vec<&str> = v
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            let mut want = fields.to_vec();
            want.push("kind");
            want.sort_unstable();
            assert_eq!(keys, want, "{v}");
        }
        let mut deadline = RolloutStop {
            after_ms: 600_000,
            ..RolloutStop::default()
        };
        deadline.set_kind(Kind::ProgressDeadline);
        assert_eq!(
            to_value(&StopJson::from(&deadline)),
            json!({"kind": "progress_deadline", "after_ms": 600_000, "waiting": null})
        );
        deadline.waiting = Some(floor_wait());
        assert_eq!(
            to_value(&StopJson::from(&deadline))["waiting"],
            json!({"kind": "floor", "capacity": 3, "floor": 4})
        );
        // An incomplete restore says what it could not finish.
        for (u, word) in [
            (rollout_stop::Unfinished::Rollback, "rollback"),
            (rollout_stop::Unfinished::Abort, "abort"),
            (rollout_stop::Unfinished::HostLost, "host_lost"),
            (rollout_stop::Unfinished::Weights, "weights"),
        ] {
            let mut s = RolloutStop {
                problems: vec!["web@h2: host lost".into()],
                ..RolloutStop::default()
            };
            s.set_kind(Kind::OperatorAbort);
            s.set_unfinished(u);
            assert_eq!(proto_word(u.as_str_name()), word);
            assert_eq!(
                to_value(&StopJson::from(&s)),
                json!({"kind": "operator_abort", "unfinished": word, "problems": ["web@h2: host lost"]})
            );
        }
        // A failed analysis says where and why, with the share as people
        // write it.
        let mut failed = RolloutStop {
            step: 1,
            share_basis_points: 500,
            why: "errors canary 9/180 (5.00%) vs baseline 2/3,400 (0.06%): p=1.2e-9".into(),
            ..RolloutStop::default()
        };
        failed.set_kind(Kind::AnalysisFailed);
        assert_eq!(
            to_value(&StopJson::from(&failed)),
            json!({"kind": "analysis_failed", "step": 1, "share": "5%",
                   "why": "errors canary 9/180 (5.00%) vs baseline 2/3,400 (0.06%): p=1.2e-9"})
        );
        // Weights that could not be put back after a rollback.
        let mut s = RolloutStop {
            problems: vec!["web@h1: haproxy /run/lb2.sock: connection refused".into()],
            ..RolloutStop::default()
        };
        s.set_kind(Kind::OperatorRollback);
        s.set_unfinished(rollout_stop::Unfinished::Weights);
        assert_eq!(
            to_value(&StopJson::from(&s)),
            json!({"kind": "operator_rollback", "unfinished": "weights",
                   "problems": ["web@h1: haproxy /run/lb2.sock: connection refused"]})
        );
    }
}
