//! Stage before drain: a release that cannot be staged fails its instance
//! while it still serves, and that failure costs no capacity.

use super::fleet::{Fleet, instances, spec, v1};
use crate::rollout::{Amount, CommandKind, Outcome, RolloutSpec, Step};

const HOUR: u64 = 3_600_000;

#[test]
fn every_chain_stages_the_release_before_it_drains() {
    let mut f = Fleet::start(spec(), instances(5));
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    for k in 1..=5 {
        let ids: Vec<String> = (f.executed.iter())
            .map(|id| id.to_string())
            .filter(|id| id.starts_with(&format!("r1/web@h{k:02}/")))
            .collect();
        assert_eq!(ids.first(), Some(&format!("r1/web@h{k:02}/stage/1")));
        assert_eq!(ids.get(1), Some(&format!("r1/web@h{k:02}/drain/1")));
    }
}

#[test]
fn a_bad_artifact_fails_the_rollout_without_draining_anything() {
    let s = RolloutSpec {
        auto_rollback: true,
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(5), |f| {
        f.bad_artifact = f.sim.keys().cloned().collect();
    });
    f.run_to_end(HOUR);
    match f.engine.outcome() {
        Some(Outcome::RolledBack { reason }) => assert!(
            reason
                .to_string()
                .contains("web@h01: stage failed: artifact checksum mismatch"),
            "{reason}"
        ),
        other => panic!("expected RolledBack, got {other:?}"),
    }
    assert_eq!(f.drains(), 0, "nothing may leave service: {:?}", f.sends);
    // Nothing to undo: no rollback chain was sent at all.
    assert!(
        f.sends.iter().all(|s| s.1.to_string().ends_with("/1")),
        "{:?}",
        f.sends
    );
    assert_eq!(f.step("web@h01"), Step::RolledBack);
    assert_eq!(f.min_capacity, 5);
    assert!(
        f.sim
            .values()
            .all(|s| s.release == Some(v1()) && s.serving())
    );
}

#[test]
fn a_failed_stage_costs_no_capacity_when_the_instance_still_serves() {
    // Floor 4 of 5 and one failure allowed: had the failed instance been
    // held out of the count, nothing else could ever be taken.
    let s = RolloutSpec {
        min_healthy: Amount::Count(4),
        max_failures: Amount::Count(1),
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(5), |f| {
        f.bad_artifact.insert("web@h01".to_string());
    });
    f.run_to_end(HOUR);
    match f.engine.outcome() {
        Some(Outcome::Failed { reason }) => assert!(
            reason
                .to_string()
                .contains("1 instance(s) failed within the failure budget"),
            "{reason}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(f.step("web@h01"), Step::Failed);
    assert_eq!(f.status().counts.done, 4);
    assert!(
        !(f.sends.iter()).any(|s| s.2 == "web@h01" && s.3 == CommandKind::Drain),
        "web@h01 was drained"
    );
}

/// A rollout stored before chains had a stage (mid-drain, nothing staged)
/// loads and goes on from where it was: the drain is asked again, and the
/// deploy (which stages first when nothing did) carries it to the end.
#[test]
fn a_rollout_stored_mid_chain_without_a_stage_resumes() {
    let mut f = Fleet::start(spec(), instances(5));
    assert!(f.run_until(HOUR, |f| f.step("web@h01") == Step::Draining));
    // What the previous layout stored at this point: the same fields,
    // with no variant it did not know.
    let stored: serde_json::Value = serde_json::from_str(&f.persisted).expect("json");
    let h01 = &stored["instances"][0];
    assert_eq!(h01["step"], "draining");
    assert_eq!(h01["inflight"]["kind"], "drain");
    let outs = f.crash_and_restore();
    assert!(
        outs.iter().any(|o| matches!(o, crate::rollout::Output::Send { id, .. } if id.to_string() == "r1/web@h01/drain/1")),
        "{outs:?}"
    );
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
}
