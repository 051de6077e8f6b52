//! The contract's JSON for rollouts and plans: serde mirrors of the wire
//! types, empty strings and unknown releases as null, times as RFC 3339 UTC
//! next to the raw milliseconds.

use drover_proto::v1::{
    PlannedBatch, Release, Rollout, RolloutCounts, RolloutEvent, RolloutInstance, RolloutPlan,
};
use serde::Serialize;

use crate::output::rfc3339_ms;

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[derive(Debug, Serialize)]
pub struct ReleaseJson {
    pub version: String,
    pub digest: String,
}

impl ReleaseJson {
    fn of(r: Option<&Release>) -> ReleaseJson {
        ReleaseJson {
            version: r.map(|r| r.version.clone()).unwrap_or_default(),
            digest: r.map(|r| r.digest.clone()).unwrap_or_default(),
        }
    }

    /// `None` when there is no release or it has no version (the wire's
    /// "unknown").
    fn known(r: Option<&Release>) -> Option<ReleaseJson> {
        r.filter(|r| !r.version.is_empty())
            .map(|r| ReleaseJson::of(Some(r)))
    }
}

#[derive(Debug, Serialize)]
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
        CountsJson {
            total: c.total,
            pending: c.pending,
            in_progress: c.in_progress,
            done: c.done,
            failed: c.failed,
            skipped: c.skipped,
            unreachable: c.unreachable,
            rolled_back: c.rolled_back,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InstanceJson {
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

impl From<&RolloutInstance> for InstanceJson {
    fn from(i: &RolloutInstance) -> Self {
        InstanceJson {
            id: i.id.clone(),
            host: i.host.clone(),
            step: i.step_kind().as_text().to_string(),
            direction: i.direction_kind().as_text().to_string(),
            batch: (i.batch > 0).then_some(i.batch),
            release: ReleaseJson::known(i.release.as_ref()),
            previous: ReleaseJson::known(i.previous.as_ref()),
            available: i.available,
            reachable: i.reachable,
            error: non_empty(&i.error),
            note: non_empty(&i.note),
            progress: non_empty(&i.progress),
        }
    }
}

#[derive(Debug, Serialize)]
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
        EventJson {
            at: rfc3339_ms(e.at_ms),
            at_ms: e.at_ms,
            instance: non_empty(&e.instance),
            step: non_empty(e.step_kind().as_text()),
            capacity: e.capacity,
            floor: e.floor,
            message: e.message.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RolloutJson {
    pub id: String,
    pub service: String,
    pub selector: String,
    pub target: ReleaseJson,
    pub phase: String,
    pub reason: Option<String>,
    pub batch: u32,
    pub counts: CountsJson,
    pub capacity: u32,
    pub floor: u32,
    pub lowest_capacity: u32,
    pub wait_reason: Option<String>,
    pub started_at: Option<String>,
    pub started_at_ms: i64,
    pub finished_at: Option<String>,
    pub finished_at_ms: Option<i64>,
    pub started_by: String,
    pub instances: Vec<InstanceJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventJson>,
}

impl From<&Rollout> for RolloutJson {
    fn from(r: &Rollout) -> Self {
        RolloutJson {
            id: r.id.clone(),
            service: r.service.clone(),
            selector: r.selector.clone(),
            target: ReleaseJson::of(r.target.as_ref()),
            phase: r.phase_kind().as_text().to_string(),
            reason: non_empty(&r.reason),
            batch: r.batch,
            counts: CountsJson::from(&r.counts.unwrap_or_default()),
            capacity: r.capacity,
            floor: r.floor,
            lowest_capacity: r.lowest_capacity,
            wait_reason: non_empty(&r.wait_reason),
            started_at: rfc3339_ms(r.started_at_ms),
            started_at_ms: r.started_at_ms,
            finished_at: rfc3339_ms(r.finished_at_ms),
            finished_at_ms: (r.finished_at_ms > 0).then_some(r.finished_at_ms),
            started_by: r.started_by.clone(),
            instances: r.instances.iter().map(InstanceJson::from).collect(),
            events: r.events.iter().map(EventJson::from).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SkipJson {
    pub instance: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct BatchJson {
    pub number: u32,
    pub instances: Vec<String>,
    pub waves: Vec<Vec<String>>,
    pub max_down: u32,
    pub lowest_capacity: u32,
}

impl From<&PlannedBatch> for BatchJson {
    fn from(b: &PlannedBatch) -> Self {
        BatchJson {
            number: b.number,
            instances: b.instances.clone(),
            // An empty wave says nothing; the planner may leave one at the end.
            waves: (b.waves.iter())
                .filter(|w| !w.instances.is_empty())
                .map(|w| w.instances.clone())
                .collect(),
            max_down: b.max_down,
            lowest_capacity: b.lowest_capacity,
        }
    }
}

#[derive(Debug, Serialize)]
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
}

impl From<&RolloutPlan> for PlanJson {
    fn from(p: &RolloutPlan) -> Self {
        PlanJson {
            service: p.service.clone(),
            target: ReleaseJson::of(p.target.as_ref()),
            total: p.total,
            floor: p.floor,
            capacity: p.capacity,
            skipped: (p.skipped.iter())
                .map(|s| SkipJson {
                    instance: s.instance.clone(),
                    reason: s.reason.clone(),
                })
                .collect(),
            batches: p.batches.iter().map(BatchJson::from).collect(),
            lowest_capacity: p.lowest_capacity,
            stalls: non_empty(&p.stalls),
        }
    }
}

/// Pretty JSON with a trailing newline.
pub fn to_json<T: Serialize + ?Sized>(v: &T) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(v)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::NOW;
    use crate::output::rollout::fixtures::{event, plan, rollout};
    use drover_proto::v1::{InstanceStep, RolloutPhase};
    use serde_json::json;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort_unstable();
        k
    }

    fn sorted(mut v: Vec<&str>) -> Vec<String> {
        v.sort_unstable();
        v.into_iter().map(String::from).collect()
    }

    #[test]
    fn json_has_the_contract_shape() {
        let v = serde_json::to_value(RolloutJson::from(&rollout())).expect("json");
        assert_eq!(
            keys(&v),
            sorted(vec![
                "id",
                "service",
                "selector",
                "target",
                "phase",
                "reason",
                "batch",
                "counts",
                "capacity",
                "floor",
                "lowest_capacity",
                "wait_reason",
                "started_at",
                "started_at_ms",
                "finished_at",
                "finished_at_ms",
                "started_by",
                "instances",
            ])
        );
        assert_eq!(
            v["target"],
            json!({"version": "v2", "digest": "ab".repeat(32)})
        );
        assert_eq!(v["phase"], "running");
        assert!(v["reason"].is_null());
        assert!(v["wait_reason"].is_null());
        assert!(v["finished_at"].is_null());
        assert!(v["finished_at_ms"].is_null());
        assert_eq!(v["started_at"], "2026-09-21T14:11:50Z");
        assert_eq!(v["started_at_ms"], NOW - 90_000);
        assert_eq!(
            v["counts"],
            json!({"total": 3, "pending": 1, "in_progress": 1, "done": 1, "failed": 0,
                   "skipped": 0, "unreachable": 0, "rolled_back": 0})
        );
        let i = &v["instances"][1];
        assert_eq!(
            keys(i),
            sorted(vec![
                "id",
                "host",
                "step",
                "direction",
                "batch",
                "release",
                "previous",
                "available",
                "reachable",
                "error",
                "note",
                "progress",
            ])
        );
        assert_eq!(i["progress"], "unpacking 40%");
        assert_eq!(i["batch"], 2);
        assert_eq!(i["release"]["version"], "v1");
        assert!(i["error"].is_null() && i["note"].is_null());
        // Not started, release of unknown version, no previous release.
        let pending = &v["instances"][2];
        assert!(pending["batch"].is_null());
        assert!(pending["release"].is_null());
        assert!(pending["previous"].is_null());
        assert!(pending["progress"].is_null());
    }

    #[test]
    fn json_fills_what_finished_rollouts_have() {
        let mut r = rollout();
        r.set_phase(RolloutPhase::Failed);
        r.reason = "1 instance failed, max_failures 0".into();
        r.finished_at_ms = NOW;
        r.instances[1].set_step(InstanceStep::Failed);
        r.instances[1].error = "verify: unhealthy".into();
        r.events = vec![
            event(NOW, "", "", "started"),
            event(NOW, "web@h1", "done", "ok"),
        ];
        r.target = None;
        let v = serde_json::to_value(RolloutJson::from(&r)).expect("json");
        assert_eq!(v["reason"], "1 instance failed, max_failures 0");
        assert_eq!(v["finished_at"], "2026-09-21T14:13:20Z");
        assert_eq!(v["finished_at_ms"], NOW);
        assert_eq!(v["target"], json!({"version": "", "digest": ""}));
        assert_eq!(v["instances"][1]["error"], "verify: unhealthy");
        let e = &v["events"][0];
        assert_eq!(
            keys(e),
            sorted(vec![
                "at", "at_ms", "instance", "step", "capacity", "floor", "message"
            ])
        );
        assert!(e["instance"].is_null() && e["step"].is_null());
        assert_eq!(e["at"], "2026-09-21T14:13:20Z");
        assert_eq!(v["events"][1]["instance"], "web@h1");
    }

    /// The enums on the wire print as the words scripts have always read,
    /// and a coordinator a release older (text only) prints the same.
    #[test]
    fn json_words_are_unchanged_by_the_typed_wire() {
        let mut r = rollout();
        r.set_phase(RolloutPhase::RollingBack);
        r.instances[1].set_step(InstanceStep::Verifying);
        r.instances[1].set_direction(drover_proto::v1::Direction::Back);
        r.events = vec![event(NOW, "web@h2", "rolled_back", "back on v1")];
        let typed = serde_json::to_value(RolloutJson::from(&r)).expect("json");
        assert_eq!(typed["phase"], "rolling_back");
        assert_eq!(typed["instances"][0]["step"], "done");
        assert_eq!(typed["instances"][0]["direction"], "forward");
        assert_eq!(typed["instances"][1]["step"], "verifying");
        assert_eq!(typed["instances"][1]["direction"], "back");
        assert_eq!(typed["instances"][2]["step"], "pending");
        assert_eq!(typed["events"][0]["step"], "rolled_back");

        let mut old = r.clone();
        old.phase = 0;
        old.phase_text = "rolling_back".into();
        for i in &mut old.instances {
            i.step_text = i.step_kind().as_text().into();
            i.direction_text = i.direction_kind().as_text().into();
            i.step = 0;
            i.direction = 0;
        }
        old.events[0].step = 0;
        old.events[0].step_text = "rolled_back".into();
        let text = serde_json::to_value(RolloutJson::from(&old)).expect("json");
        assert_eq!(text, typed);
    }

    #[test]
    fn plan_json_has_the_contract_shape() {
        let v = serde_json::to_value(PlanJson::from(&plan())).expect("json");
        assert_eq!(
            v,
            json!({
                "service": "web",
                "target": {"version": "v2", "digest": "ab".repeat(32)},
                "total": 4, "floor": 3, "capacity": 4,
                "skipped": [{"instance": "web@h4", "reason": "already on v2"}],
                "batches": [
                    {"number": 1, "instances": ["web@h1"], "waves": [["web@h1"]],
                     "max_down": 1, "lowest_capacity": 3},
                    {"number": 2, "instances": ["web@h2", "web@h3"],
                     "waves": [["web@h2"], ["web@h3"]], "max_down": 1, "lowest_capacity": 3},
                ],
                "lowest_capacity": 3,
                "stalls": null,
            })
        );
    }
}
