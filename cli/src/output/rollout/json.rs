//! The rollout and plan JSON `drover rollout ... -o json` prints: the
//! contract's views from [`drover_proto::json`], pretty-printed. The tests
//! pin what the CLI prints with its own fixtures.

use serde::Serialize;

pub use drover_proto::json::{AnalysisJson, PlanJson, RolloutJson};

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
                "stop",
                "batch",
                "counts",
                "capacity",
                "floor",
                "lowest_capacity",
                "wait_reason",
                "wait",
                "traffic",
                "started_at",
                "started_at_ms",
                "finished_at",
                "finished_at_ms",
                "started_by",
                "instances",
                "trace_id",
            ])
        );
        assert_eq!(
            v["target"],
            json!({"version": "v2", "digest": "ab".repeat(32)})
        );
        assert_eq!(v["phase"], "running");
        assert!(v["reason"].is_null());
        assert!(v["wait_reason"].is_null());
        assert!(v["stop"].is_null() && v["wait"].is_null());
        // A rolling update moves no traffic.
        assert!(v["traffic"].is_null());
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

    /// What `rollout status -o json` prints, to the byte: the keys scripts
    /// have read since before the views moved to `drover_proto::json`
    /// (that file plus `stop`, `wait` and `traffic`), in the same order.
    #[test]
    fn json_prints_the_same_bytes() {
        let printed = to_json(&RolloutJson::from(&rollout())).expect("json");
        assert_eq!(printed, include_str!("rollout.golden.json"));
    }

    /// The typed wait and stop reasons the coordinator sends reach the
    /// CLI's JSON next to their texts.
    #[test]
    fn json_carries_the_typed_reasons() {
        use drover_proto::v1::{RolloutStop, RolloutWait, rollout_stop, rollout_wait};
        let mut r = rollout();
        r.wait_reason = "waiting for lost hosts: h2, h4".into();
        let mut wait = RolloutWait {
            hosts: vec!["h2".into(), "h4".into()],
            ..RolloutWait::default()
        };
        wait.set_kind(rollout_wait::Kind::LostHosts);
        r.wait = Some(wait);
        let printed = to_json(&RolloutJson::from(&r)).expect("json");
        assert!(
            printed.contains(
                "  \"wait_reason\": \"waiting for lost hosts: h2, h4\",\n  \"wait\": {\n    \"kind\": \"lost_hosts\",\n    \"hosts\": [\n      \"h2\",\n      \"h4\"\n    ]\n  },\n"
            ),
            "{printed}"
        );

        r.set_phase(RolloutPhase::Aborted);
        r.reason = "aborted by operator".into();
        let mut stop = RolloutStop::default();
        stop.set_kind(rollout_stop::Kind::OperatorAbort);
        r.stop = Some(stop);
        r.wait = None;
        r.wait_reason.clear();
        let v = serde_json::to_value(RolloutJson::from(&r)).expect("json");
        assert_eq!(v["reason"], "aborted by operator");
        assert_eq!(v["stop"], json!({"kind": "operator_abort"}));
        assert!(v["wait"].is_null() && v["wait_reason"].is_null());
    }
}
