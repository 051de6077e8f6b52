//! Rollouts (`drover rollout status|list|watch|start|<action>`) and plans
//! (`drover rollout start --dry-run`).

use serde::Serialize;

use super::{
    StopJson, StopKindJson, TrafficJson, TrafficStepJson, WaitJson, non_empty, rfc3339_ms,
};
use crate::v1::{
    PlannedBatch, PlannedSkip, PlannedWave, Release, Rollout, RolloutCounts, RolloutEvent,
    RolloutInstance, RolloutPlan,
};

/// `{"version","digest"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleaseJson {
    pub version: String,
    pub digest: String,
}

impl ReleaseJson {
    /// Empty strings when there is no release.
    pub fn of(r: Option<&Release>) -> ReleaseJson {
        match r {
            Some(Release { version, digest }) => ReleaseJson {
                version: version.clone(),
                digest: digest.clone(),
            },
            None => ReleaseJson {
                version: String::new(),
                digest: String::new(),
            },
        }
    }

    /// `None` when there is no release or it has no version (the wire's
    /// "unknown").
    pub fn known(r: Option<&Release>) -> Option<ReleaseJson> {
        r.filter(|r| !r.version.is_empty())
            .map(|r| ReleaseJson::of(Some(r)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountsJson {
    pub total: u32,
    pub pending: u32,
    pub in_progress: u32,
    pub done: u32,
    pub failed: u32,
    pub skipped: u32,
    pub unreachable: u32,
    pub rolled_back: u32,
}

impl From<&RolloutCounts> for CountsJson {
    fn from(c: &RolloutCounts) -> Self {
        let RolloutCounts {
            total,
            pending,
            in_progress,
            done,
            failed,
            skipped,
            unreachable,
            rolled_back,
        } = *c;
        CountsJson {
            total,
            pending,
            in_progress,
            done,
            failed,
            skipped,
            unreachable,
            rolled_back,
        }
    }
}

/// One instance of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutInstanceJson {
    pub id: String,
    pub host: String,
    pub step: String,
    pub direction: String,
    pub batch: Option<u32>,
    pub release: Option<ReleaseJson>,
    pub previous: Option<ReleaseJson>,
    pub available: bool,
    pub reachable: bool,
    pub error: Option<String>,
    pub note: Option<String>,
    pub progress: Option<String>,
}

impl From<&RolloutInstance> for RolloutInstanceJson {
    fn from(i: &RolloutInstance) -> Self {
        let RolloutInstance {
            id,
            host,
            // Read with the deprecated texts (an older coordinator fills
            // only those) by `step_kind` and `direction_kind` below.
            step: _,
            direction: _,
            step_text: _,
            direction_text: _,
            batch,
            release,
            previous,
            available,
            reachable,
            error,
            note,
            progress,
        } = i;
        RolloutInstanceJson {
            id: id.clone(),
            host: host.clone(),
            step: i.step_kind().as_text().to_string(),
            direction: i.direction_kind().as_text().to_string(),
            batch: (*batch > 0).then_some(*batch),
            release: ReleaseJson::known(release.as_ref()),
            previous: ReleaseJson::known(previous.as_ref()),
            available: *available,
            reachable: *reachable,
            error: non_empty(error),
            note: non_empty(note),
            progress: non_empty(progress),
        }
    }
}

/// One event of a rollout's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventJson {
    pub at: Option<String>,
    pub at_ms: i64,
    pub instance: Option<String>,
    pub step: Option<String>,
    pub capacity: u32,
    pub floor: u32,
    pub message: String,
}

impl From<&RolloutEvent> for EventJson {
    fn from(e: &RolloutEvent) -> Self {
        let RolloutEvent {
            at_ms,
            instance,
            // Read with the deprecated text by `step_kind` below.
            step: _,
            step_text: _,
            capacity,
            floor,
            message,
        } = e;
        EventJson {
            at: rfc3339_ms(*at_ms),
            at_ms: *at_ms,
            instance: non_empty(instance),
            step: non_empty(e.step_kind().as_text()),
            capacity: *capacity,
            floor: *floor,
            message: message.clone(),
        }
    }
}

/// A rollout, as `rollout status|list|watch|start|<action>` print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutJson {
    pub id: String,
    pub service: String,
    pub selector: String,
    pub target: ReleaseJson,
    pub phase: String,
    pub reason: Option<String>,
    /// `reason`, typed; `null` exactly when `reason` is.
    pub stop: Option<StopJson>,
    pub batch: u32,
    pub counts: CountsJson,
    pub capacity: u32,
    pub floor: u32,
    pub lowest_capacity: u32,
    pub wait_reason: Option<String>,
    /// `wait_reason`, typed; `null` exactly when `wait_reason` is.
    pub wait: Option<WaitJson>,
    /// Canary and blue-green: where the traffic steps are; `null` for a
    /// rolling update.
    pub traffic: Option<TrafficJson>,
    pub started_at: Option<String>,
    pub started_at_ms: i64,
    pub finished_at: Option<String>,
    pub finished_at_ms: Option<i64>,
    pub started_by: String,
    pub instances: Vec<RolloutInstanceJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventJson>,
    /// The rollout's OpenTelemetry trace id; `null` when tracing is off.
    pub trace_id: Option<String>,
}

impl From<&Rollout> for RolloutJson {
    fn from(r: &Rollout) -> Self {
        let Rollout {
            id,
            service,
            selector,
            target,
            // Read with the deprecated text by `phase_kind` below.
            phase: _,
            phase_text: _,
            reason,
            batch,
            counts,
            capacity,
            floor,
            lowest_capacity,
            wait_reason,
            started_at_ms,
            finished_at_ms,
            instances,
            events,
            // Not shown: the spec is what `start` was given, and the text
            // view does not print it either.
            spec_toml: _,
            started_by,
            wait,
            stop,
            traffic,
            trace_id,
        } = r;
        let reason = non_empty(reason);
        let wait_reason = non_empty(wait_reason);
        RolloutJson {
            id: id.clone(),
            service: service.clone(),
            selector: selector.clone(),
            target: ReleaseJson::of(target.as_ref()),
            phase: r.phase_kind().as_text().to_string(),
            // A coordinator older than the typed field sends the text only.
            stop: match stop {
                Some(s) => Some(StopJson::from(s)),
                None => reason.as_ref().map(|_| StopJson {
                    why: StopKindJson::Other,
                    unfinished: None,
                    problems: Vec::new(),
                }),
            },
            reason,
            batch: *batch,
            counts: CountsJson::from(&counts.unwrap_or_default()),
            capacity: *capacity,
            floor: *floor,
            lowest_capacity: *lowest_capacity,
            wait: match wait {
                Some(w) => Some(WaitJson::from(w)),
                None => wait_reason.as_ref().map(|_| WaitJson::Other),
            },
            wait_reason,
            traffic: traffic.as_ref().map(TrafficJson::from),
            started_at: rfc3339_ms(*started_at_ms),
            started_at_ms: *started_at_ms,
            finished_at: rfc3339_ms(*finished_at_ms),
            finished_at_ms: (*finished_at_ms > 0).then_some(*finished_at_ms),
            started_by: started_by.clone(),
            instances: instances.iter().map(RolloutInstanceJson::from).collect(),
            events: events.iter().map(EventJson::from).collect(),
            trace_id: non_empty(trace_id),
        }
    }
}

/// An instance the plan leaves out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkipJson {
    pub instance: String,
    pub reason: String,
}

impl From<&PlannedSkip> for SkipJson {
    fn from(s: &PlannedSkip) -> Self {
        let PlannedSkip { instance, reason } = s;
        SkipJson {
            instance: instance.clone(),
            reason: reason.clone(),
        }
    }
}

/// One batch of a plan, in the waves the floor and limits allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchJson {
    pub number: u32,
    pub instances: Vec<String>,
    pub waves: Vec<Vec<String>>,
    pub max_down: u32,
    pub lowest_capacity: u32,
}

impl From<&PlannedBatch> for BatchJson {
    fn from(b: &PlannedBatch) -> Self {
        let PlannedBatch {
            number,
            instances,
            waves,
            max_down,
            lowest_capacity,
        } = b;
        BatchJson {
            number: *number,
            instances: instances.clone(),
            // An empty wave says nothing; the planner may leave one at the end.
            waves: (waves.iter())
                .map(|PlannedWave { instances }| instances)
                .filter(|w| !w.is_empty())
                .cloned()
                .collect(),
            max_down: *max_down,
            lowest_capacity: *lowest_capacity,
        }
    }
}

/// A plan, as `rollout start --dry-run -o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanJson {
    pub service: String,
    pub target: ReleaseJson,
    pub total: u32,
    pub floor: u32,
    pub capacity: u32,
    pub skipped: Vec<SkipJson>,
    pub batches: Vec<BatchJson>,
    pub lowest_capacity: u32,
    pub stalls: Option<String>,
    /// Canary and blue-green: each traffic step; absent for a rolling
    /// update.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub traffic_steps: Vec<TrafficStepJson>,
}

impl From<&RolloutPlan> for PlanJson {
    fn from(p: &RolloutPlan) -> Self {
        let RolloutPlan {
            service,
            target,
            total,
            floor,
            capacity,
            skipped,
            batches,
            lowest_capacity,
            stalls,
            // Not shown: the spec is what `--dry-run` was given, and the
            // text view does not print it either.
            spec_toml: _,
            traffic_steps,
        } = p;
        PlanJson {
            service: service.clone(),
            target: ReleaseJson::of(target.as_ref()),
            total: *total,
            floor: *floor,
            capacity: *capacity,
            skipped: skipped.iter().map(SkipJson::from).collect(),
            batches: batches.iter().map(BatchJson::from).collect(),
            lowest_capacity: *lowest_capacity,
            stalls: non_empty(stalls),
            traffic_steps: traffic_steps.iter().map(TrafficStepJson::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::testing::{NOW, floor_wait, release, to_value};
    use crate::v1::{
        Direction, InstanceStep, PlannedTrafficStep, RolloutPhase, RolloutStop, rollout_stop,
    };
    use serde_json::json;

    /// A rollout that waited on the floor, then failed on its budget and
    /// could not roll everything back: every typed reason, every field.
    fn failed_rollout() -> Rollout {
        let mut stop = RolloutStop {
            count: 2,
            max: 1,
            instances: vec![
                "web@h1: verify: unhealthy".into(),
                "web@h2: start: exit 1".into(),
            ],
            problems: vec!["web@h2: host lost".into()],
            ..RolloutStop::default()
        };
        stop.set_kind(rollout_stop::Kind::FailureBudget);
        stop.set_unfinished(rollout_stop::Unfinished::Rollback);
        let mut r = Rollout {
            id: "web-3".into(),
            service: "web".into(),
            selector: "env=prod".into(),
            target: release("v2"),
            phase_text: "failed".into(),
            reason: "failure budget exceeded: 2 failed, max_failures 1 (web@h1, web@h2)".into(),
            batch: 1,
            counts: Some(RolloutCounts {
                total: 5,
                pending: 3,
                failed: 2,
                ..RolloutCounts::default()
            }),
            capacity: 3,
            floor: 4,
            lowest_capacity: 3,
            wait_reason: "waiting: 3 healthy, floor 4".into(),
            started_at_ms: NOW - 60_000,
            finished_at_ms: NOW,
            instances: vec![RolloutInstance {
                id: "web@h1".into(),
                host: "h1".into(),
                step: InstanceStep::Failed as i32,
                direction: Direction::Forward as i32,
                batch: 1,
                release: release("v2"),
                previous: release("v1"),
                available: false,
                reachable: true,
                error: "verify: unhealthy".into(),
                ..RolloutInstance::default()
            }],
            events: vec![RolloutEvent {
                at_ms: NOW,
                instance: "web@h1".into(),
                step: InstanceStep::Failed as i32,
                step_text: "failed".into(),
                capacity: 3,
                floor: 4,
                message: "verify: unhealthy".into(),
            }],
            spec_toml: "service = \"web\"\n".into(),
            started_by: "operator/alice".into(),
            wait: Some(floor_wait()),
            stop: Some(stop),
            ..Rollout::default()
        };
        r.set_phase(RolloutPhase::Failed);
        r
    }

    #[test]
    fn a_failed_rollout_that_waited_on_the_floor_serialises_whole() {
        let v = to_value(&RolloutJson::from(&failed_rollout()));
        let digest = "ab".repeat(32);
        assert_eq!(
            v,
            json!({
                "id": "web-3",
                "service": "web",
                "selector": "env=prod",
                "target": {"version": "v2", "digest": digest},
                "phase": "failed",
                "reason": "failure budget exceeded: 2 failed, max_failures 1 (web@h1, web@h2)",
                "stop": {
                    "kind": "failure_budget",
                    "count": 2,
                    "max": 1,
                    "instances": ["web@h1: verify: unhealthy", "web@h2: start: exit 1"],
                    "unfinished": "rollback",
                    "problems": ["web@h2: host lost"],
                },
                "batch": 1,
                "counts": {"total": 5, "pending": 3, "in_progress": 0, "done": 0,
                           "failed": 2, "skipped": 0, "unreachable": 0, "rolled_back": 0},
                "capacity": 3,
                "floor": 4,
                "lowest_capacity": 3,
                "wait_reason": "waiting: 3 healthy, floor 4",
                "wait": {"kind": "floor", "capacity": 3, "floor": 4},
                "traffic": null,
                "trace_id": null,
                "started_at": "2026-09-21T14:12:20Z",
                "started_at_ms": NOW - 60_000,
                "finished_at": "2026-09-21T14:13:20Z",
                "finished_at_ms": NOW,
                "started_by": "operator/alice",
                "instances": [{
                    "id": "web@h1",
                    "host": "h1",
                    "step": "failed",
                    "direction": "forward",
                    "batch": 1,
                    "release": {"version": "v2", "digest": digest},
                    "previous": {"version": "v1", "digest": digest},
                    "available": false,
                    "reachable": true,
                    "error": "verify: unhealthy",
                    "note": null,
                    "progress": null,
                }],
                "events": [{
                    "at": "2026-09-21T14:13:20Z",
                    "at_ms": NOW,
                    "instance": "web@h1",
                    "step": "failed",
                    "capacity": 3,
                    "floor": 4,
                    "message": "verify: unhealthy",
                }],
            })
        );
    }

    /// The typed reasons sit next to their texts, so a reader of the
    /// pretty JSON finds `stop` under `reason` and `wait` under
    /// `wait_reason`.
    #[test]
    fn typed_reasons_follow_their_texts() {
        let text = serde_json::to_string(&RolloutJson::from(&failed_rollout())).expect("serialise");
        let at = |key: &str| {
            text.find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key} in {text}"))
        };
        assert!(at("reason") < at("stop") && at("stop") < at("batch"));
        assert!(at("wait_reason") < at("wait") && at("wait") < at("started_at"));
    }

    /// `wait` is null exactly when `wait_reason` is, and `stop` when
    /// `reason` is, whatever the coordinator's release.
    #[test]
    fn typed_reasons_are_null_exactly_when_their_texts_are() {
        let mut r = failed_rollout();
        r.wait = None;
        r.stop = None;
        // A coordinator older than the typed fields sends only the text.
        let v = to_value(&RolloutJson::from(&r));
        assert_eq!(v["wait"], json!({"kind": "other"}));
        assert_eq!(v["stop"], json!({"kind": "other"}));
        r.wait_reason.clear();
        r.reason.clear();
        let v = to_value(&RolloutJson::from(&r));
        assert!(v["wait"].is_null() && v["wait_reason"].is_null());
        assert!(v["stop"].is_null() && v["reason"].is_null());
        // A kind from a newer coordinator that this build does not know:
        // the text says why.
        let mut r = failed_rollout();
        if let Some(w) = r.wait.as_mut() {
            w.kind = 99;
        }
        if let Some(s) = r.stop.as_mut() {
            s.kind = 99;
            s.unfinished = 99;
        }
        let v = to_value(&RolloutJson::from(&r));
        assert_eq!(v["wait"], json!({"kind": "other"}));
        assert_eq!(
            v["stop"],
            json!({"kind": "other", "problems": ["web@h2: host lost"]})
        );
    }

    #[test]
    fn a_plan_drops_empty_waves_and_says_when_it_stalls() {
        let p = RolloutPlan {
            service: "web".into(),
            target: release("v2"),
            total: 2,
            floor: 2,
            capacity: 2,
            skipped: vec![PlannedSkip {
                instance: "web@h3".into(),
                reason: "already on v2".into(),
            }],
            batches: vec![PlannedBatch {
                number: 1,
                instances: vec!["web@h1".into()],
                waves: vec![
                    PlannedWave {
                        instances: vec!["web@h1".into()],
                    },
                    PlannedWave::default(),
                ],
                max_down: 1,
                lowest_capacity: 1,
            }],
            lowest_capacity: 1,
            stalls: "waiting: 1 healthy, floor 2".into(),
            spec_toml: "service = \"web\"\n".into(),
            traffic_steps: Vec::new(),
        };
        let v = to_value(&PlanJson::from(&p));
        assert_eq!(v["batches"][0]["waves"], json!([["web@h1"]]));
        assert_eq!(v["stalls"], "waiting: 1 healthy, floor 2");
        assert_eq!(
            v["skipped"],
            json!([{"instance": "web@h3", "reason": "already on v2"}])
        );
        assert!(v.get("spec_toml").is_none());
        // A rolling plan has no traffic steps, and no key for them.
        assert!(v.get("traffic_steps").is_none(), "{v}");
    }

    #[test]
    fn a_canary_plan_lists_its_traffic_steps_after_the_rest() {
        let p = RolloutPlan {
            service: "web".into(),
            target: release("v2"),
            total: 6,
            floor: 5,
            capacity: 6,
            traffic_steps: vec![
                PlannedTrafficStep {
                    number: 1,
                    share_basis_points: 500,
                    updated: 1,
                    new_weight: 16,
                    old_weight: 100,
                    bake_ms: 1_800_000,
                },
                PlannedTrafficStep {
                    number: 2,
                    share_basis_points: 10_000,
                    updated: 6,
                    new_weight: 100,
                    old_weight: 100,
                    bake_ms: 0,
                },
            ],
            ..RolloutPlan::default()
        };
        let text = serde_json::to_string(&PlanJson::from(&p)).expect("serialise");
        assert!(
            text.ends_with(
                r#""stalls":null,"traffic_steps":[{"number":1,"share":"5%","updated":1,"new_weight":16,"old_weight":100,"bake":"30m","bake_ms":1800000},{"number":2,"share":"100%","updated":6,"new_weight":100,"old_weight":100,"bake":"0s","bake_ms":0}]}"#
            ),
            "{text}"
        );
    }

    /// A canary baking its second step: `traffic` sits after `wait`, and
    /// the wait says which step bakes.
    #[test]
    fn a_canary_shows_its_traffic() {
        use crate::v1::{RolloutTraffic, RolloutWait, Strategy, rollout_traffic, rollout_wait};
        let mut r = failed_rollout();
        r.set_phase(RolloutPhase::Running);
        r.reason.clear();
        r.stop = None;
        r.finished_at_ms = 0;
        r.wait_reason = "step 2/4 (25%) bakes for 12m more".into();
        let mut wait = RolloutWait {
            step: 2,
            share_basis_points: 2500,
            ..RolloutWait::default()
        };
        wait.set_kind(rollout_wait::Kind::Baking);
        r.wait = Some(wait);
        let mut traffic = RolloutTraffic {
            steps_basis_points: vec![500, 2500, 5000, 10_000],
            step: 2,
            looks: 3,
            counting_from_ms: NOW - 60_000,
            bake_ends_at_ms: NOW + 720_000,
            ..RolloutTraffic::default()
        };
        traffic.set_strategy(Strategy::Canary);
        traffic.set_stage(rollout_traffic::Stage::Baking);
        r.traffic = Some(traffic);
        let text = serde_json::to_string(&RolloutJson::from(&r)).expect("serialise");
        assert!(
            text.contains(
                r#""wait":{"kind":"baking","step":2,"share":"25%"},"traffic":{"strategy":"canary","steps":["5%","25%","50%","100%"],"step":2,"stage":"baking","counting_from":"2026-09-21T14:12:20Z","counting_from_ms":1789999940000,"bake_ends_at":"2026-09-21T14:25:20Z","bake_ends_at_ms":1790000720000,"looks":3,"last_look":null,"results":[]},"started_at":"#
            ),
            "{text}"
        );
    }
}
