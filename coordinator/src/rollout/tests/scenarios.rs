//! Whole rollouts against the fake fleet.

use std::collections::BTreeSet;
use std::time::Duration;

use super::fleet::{Fleet, TICK, instances, spec, v1, v2};
use crate::rollout::{
    Amount, CommandId, CommandKind, CommandOutcome, Engine, Input, LostHostPolicy, Millis,
    OperatorAction, Outcome, Output, Phase, PlanError, RolloutSpec, RolloutState, Spread, Step,
};

const HOUR: u64 = 3_600_000;
const MINUTE: u64 = 60_000;

fn reason(o: Option<&Outcome>) -> String {
    match o {
        Some(Outcome::Failed { reason })
        | Some(Outcome::RolledBack { reason })
        | Some(Outcome::Aborted { reason }) => reason.to_string(),
        other => panic!("expected an outcome with a reason, got {other:?}"),
    }
}

/// A floor a fleet of three or four can move under.
fn small() -> RolloutSpec {
    RolloutSpec {
        min_healthy: Amount::Percent(50),
        ..spec()
    }
}

fn all_ids_unique(f: &Fleet) {
    let unique: BTreeSet<&CommandId> = f.executed.iter().collect();
    assert_eq!(unique.len(), f.executed.len(), "an id ran twice");
}

fn finished_at(f: &Fleet) -> u64 {
    f.status().finished_at.expect("finished").0
}

#[test]
fn happy_path_updates_everyone_and_holds_the_floor() {
    let mut f = Fleet::start(spec(), instances(10));
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    let st = f.status();
    assert_eq!(st.phase, Phase::Succeeded);
    assert!(st.instances.iter().all(|i| i.step == Step::Done), "{st:#?}");
    assert!(
        f.sim
            .values()
            .all(|s| s.release == Some(v2()) && s.serving())
    );
    assert_eq!(st.floor, 8);
    assert!(f.min_capacity >= 8, "capacity fell to {}", f.min_capacity);
    assert!(f.max_held <= 2, "{} down at once, 2 allowed", f.max_held);
    assert_eq!(st.lowest_capacity, 8);
    let batch = |id: &str| {
        st.instances
            .iter()
            .find(|i| i.id == id)
            .and_then(|i| i.batch)
    };
    assert_eq!(batch("web@h01"), Some(1));
    assert_eq!(batch("web@h02"), Some(2));
    assert_eq!(batch("web@h03"), Some(2));
    assert_eq!(batch("web@h10"), Some(3));
    // Seven commands per instance, each run once, in step order.
    assert_eq!(f.executed.len(), 70);
    all_ids_unique(&f);
    let h01: Vec<String> = (f.executed.iter())
        .map(CommandId::to_string)
        .filter(|id| id.starts_with("r1/web@h01/"))
        .collect();
    assert_eq!(
        h01,
        [
            "r1/web@h01/stage/1",
            "r1/web@h01/drain/1",
            "r1/web@h01/stop/1",
            "r1/web@h01/deploy/1",
            "r1/web@h01/start/1",
            "r1/web@h01/verify/1",
            "r1/web@h01/undrain/1"
        ]
    );
    // The timeline has an event per step with capacity and floor.
    let events = f.log.iter().filter(|l| l.contains("Event(")).count();
    assert!(events >= 70, "{events} events");
    assert!(
        f.log
            .last()
            .is_some_and(|l| l.contains("Finished(Succeeded)"))
    );
}

#[test]
fn verify_carries_the_health_gate_and_a_longer_timeout() {
    let mut f = Fleet::start(small(), instances(3));
    f.run_to_end(HOUR);
    let verify = f
        .log
        .iter()
        .find(|l| l.contains("kind: Verify"))
        .expect("a verify was sent");
    assert!(verify.contains("min_healthy_time: 10s"), "{verify}");
    assert!(verify.contains("healthy_deadline: 300s"), "{verify}");
    assert!(verify.contains("timeout: 420s"), "{verify}");
}

#[test]
fn instances_on_target_are_skipped() {
    let mut infos = instances(10);
    infos[2].release = Some(v2());
    infos[6].release = Some(v2());
    let mut f = Fleet::start(spec(), infos);
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    assert_eq!(f.step("web@h03"), Step::Skipped);
    assert_eq!(f.step("web@h07"), Step::Skipped);
    assert_eq!(f.status().counts.skipped, 2);
    assert_eq!(f.executed.len(), 8 * 7);
    assert!(!f.executed.iter().any(|id| id.to_string().contains("h03")));

    // A re-run over a fleet already on target is a no-op that succeeds at once.
    let mut done = instances(4);
    for i in &mut done {
        i.release = Some(v2());
    }
    let (eng, outs) = Engine::start("r2", spec(), done, Millis(0)).expect("starts");
    assert_eq!(eng.outcome(), Some(&Outcome::Succeeded));
    assert_eq!(outs.first(), Some(&Output::Persist));
    assert_eq!(outs.last(), Some(&Output::Finished(Outcome::Succeeded)));
    assert!(!outs.iter().any(|o| matches!(o, Output::Send { .. })));
}

#[test]
fn an_instance_down_on_its_own_shrinks_then_holds_the_next_batch() {
    let mut f = Fleet::start(spec(), instances(10));
    assert!(f.run_until(HOUR, |f| f.status().counts.done >= 3));
    let done: Vec<String> = (f.status().instances.into_iter())
        .filter(|i| i.step == Step::Done)
        .map(|i| i.id.clone())
        .collect();
    // One updated instance crashes: once the chains in flight finish, room
    // for one at a time instead of two.
    f.kill(&done[0]);
    let busy = f.status().counts.in_progress;
    assert!(f.run_until(HOUR, |f| f.status().counts.done >= 3 + busy));
    f.max_held = 0;
    assert!(f.run_until(HOUR, |f| f.status().counts.done >= 7));
    assert_eq!(f.max_held, 1, "the batch shrinks to what capacity allows");
    // A second one: capacity sits on the floor, nothing more goes down.
    f.kill(&done[1]);
    assert!(f.run_until(HOUR, |f| f.status().counts.in_progress == 0));
    let drains = f.drains();
    for _ in 0..120 {
        f.tick();
    }
    assert_eq!(
        f.drains(),
        drains,
        "drover took an instance under the floor"
    );
    let waiting = Some("waiting: 8 healthy, floor 8".to_string());
    assert_eq!(f.status().wait_reason.map(|b| b.to_string()), waiting);
    assert!(f.waits.contains(&waiting));
    assert_eq!(f.status().phase, Phase::Running);
    // Recovery lets it finish.
    f.revive(&done[0]);
    f.revive(&done[1]);
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    assert_eq!(f.waits.last(), Some(&None), "the wait reason is cleared");
}

#[test]
fn failure_budget_rolls_back_updated_instances_latest_first() {
    let s = RolloutSpec {
        max_failures: Amount::Count(1),
        auto_rollback: true,
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(10), |f| {
        f.bad.insert("web@h04".to_string());
        f.bad.insert("web@h05".to_string());
    });
    f.run_to_end(HOUR);
    let why = reason(f.engine.outcome());
    assert!(matches!(
        f.engine.outcome(),
        Some(Outcome::RolledBack { .. })
    ));
    assert!(
        why.starts_with("failure budget exceeded: 2 failed, max_failures 1 (web@h04: verify failed: health check failing"),
        "{why}"
    );
    assert!(
        f.sim
            .values()
            .all(|s| s.release == Some(v1()) && s.serving())
    );
    let st = f.status();
    assert_eq!(st.phase, Phase::RolledBack);
    for id in ["web@h01", "web@h02", "web@h03", "web@h04", "web@h05"] {
        assert_eq!(f.step(id), Step::RolledBack, "{id}");
    }
    assert_eq!(
        st.counts.pending, 5,
        "nothing new started after the budget ran out"
    );
    let order: Vec<String> = (f.sends.iter())
        .filter(|s| s.3 == CommandKind::Drain && s.1.to_string().ends_with("/2"))
        .map(|s| s.2.clone())
        .collect();
    assert_eq!(
        order,
        ["web@h05", "web@h04", "web@h03", "web@h02", "web@h01"]
    );
    let deploys_back = (f.sends.iter())
        .filter(|s| s.1.to_string().ends_with("deploy/2"))
        .all(|s| s.3 == CommandKind::Deploy { release: v1() });
    assert!(deploys_back);
    assert!(f.min_capacity >= 8, "rollback went under the floor");
    all_ids_unique(&f);
}

#[test]
fn failures_without_auto_rollback_stop_and_stay_drained() {
    let s = RolloutSpec {
        max_failures: Amount::Count(0),
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(10), |f| {
        f.bad.insert("web@h02".to_string());
    });
    f.run_to_end(HOUR);
    assert!(matches!(f.engine.outcome(), Some(Outcome::Failed { .. })));
    assert_eq!(f.step("web@h02"), Step::Failed);
    assert!(
        !f.sim["web@h02"].in_service,
        "a failed instance is not undrained"
    );
    // h03 was in the same batch and finished its chain.
    assert_eq!(f.step("web@h03"), Step::Done);
    assert_eq!(f.status().counts.pending, 7);
}

#[test]
fn impossible_floors_are_refused_with_numbers() {
    let mut sick = instances(10);
    for i in &mut sick[..4] {
        i.healthy = false;
    }
    let err = Engine::start("r1", spec(), sick.clone(), Millis(0)).expect_err("refused");
    assert_eq!(
        err,
        PlanError::FloorUnreachable {
            floor: 8,
            total: 10,
            capacity: 6,
            never_deployed: 0,
            disconnected: Vec::new(),
        }
    );
    assert_eq!(
        err.to_string(),
        "floor 8 of 10 but only 6 healthy and in service"
    );
    assert_eq!(Engine::plan(&spec(), sick), Err(err));

    // Hosts still reconnecting (after a coordinator restart, say) are
    // named: they are what the operator waits for.
    let mut reconnecting = instances(5);
    for i in [1, 3] {
        reconnecting[i].reachable = false;
        reconnecting[i].healthy = false;
    }
    let floor4 = RolloutSpec {
        min_healthy: Amount::Count(4),
        ..spec()
    };
    let err =
        Engine::start("r1", floor4.clone(), reconnecting.clone(), Millis(0)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "floor 4 of 5 but only 3 healthy and in service; h02, h04 disconnected"
    );
    assert_eq!(Engine::plan(&floor4, reconnecting), Err(err));
    // A first deploy: nothing runs a release, so nothing is healthy; the
    // refusal says what a first deploy needs.
    let mut fresh = instances(3);
    for i in &mut fresh {
        i.release = None;
        i.healthy = false;
    }
    let err = Engine::start("r1", spec(), fresh, Millis(0)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "floor 3 of 3 but only 0 healthy and in service; 3 never deployed: a first deploy \
         needs min_healthy 0 (`drover rollout start --initial`, or --min-healthy 0)"
    );
    let mut many = instances(30);
    for i in &mut many[..13] {
        i.reachable = false;
    }
    let floor20 = RolloutSpec {
        min_healthy: Amount::Count(20),
        ..spec()
    };
    let err = Engine::start("r1", floor20, many, Millis(0)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "floor 20 of 30 but only 17 healthy and in service; h01, h02, h03, h04, h05, h06, \
         h07, h08, h09, h10 and 3 more disconnected"
    );

    let all = RolloutSpec {
        min_healthy: Amount::Percent(100),
        ..spec()
    };
    let err = Engine::start("r1", all, instances(10), Millis(0)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "floor 10 of 10 leaves no instance that may be taken down, and 10 need updating; lower min_healthy"
    );
    let over = RolloutSpec {
        min_healthy: Amount::Count(11),
        ..spec()
    };
    let err = Engine::start("r1", over, instances(10), Millis(0)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "min_healthy 11 asks for a floor of 11 but only 10 instances match"
    );
    // Even with nothing to update: the spec itself is wrong.
    let mut done = instances(10);
    for i in &mut done {
        i.release = Some(v2());
    }
    let over = RolloutSpec {
        min_healthy: Amount::Count(11),
        ..spec()
    };
    let err = Engine::start("r1", over, done, Millis(0)).expect_err("refused");
    assert!(matches!(err, PlanError::FloorAboveTotal { .. }), "{err}");
    let mut lost = instances(10);
    lost[0].reachable = false;
    let skip = RolloutSpec {
        lost_hosts: LostHostPolicy::Skip,
        min_healthy: Amount::Percent(50),
        ..spec()
    };
    let err = Engine::start("r1", skip, lost, Millis(0)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "1 instance(s) on lost hosts (h01) exceed max_unreachable 0"
    );
    let err = Engine::start("r1", spec(), Vec::new(), Millis(0)).expect_err("refused");
    assert_eq!(
        err.to_string(),
        "no instances of service web match selector \"env=prod\""
    );
    let mut twice = instances(2);
    twice[1].id = twice[0].id.clone();
    let err = Engine::start("r1", spec(), twice, Millis(0)).expect_err("refused");
    assert_eq!(err, PlanError::DuplicateInstance("web@h01".to_string()));
    let err = Engine::start("a/b", spec(), instances(2), Millis(0)).expect_err("refused");
    assert_eq!(err, PlanError::BadId("a/b".to_string()));
}

#[test]
fn hosts_that_never_answer_fail_at_the_step_timeout() {
    let s = RolloutSpec {
        step_timeout: Duration::from_secs(30),
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(10), |f| {
        f.silent = f.sim.values().map(|s| s.host.clone()).collect();
    });
    f.run_to_end(HOUR);
    let why = reason(f.engine.outcome());
    assert!(matches!(f.engine.outcome(), Some(Outcome::Failed { .. })));
    assert!(
        why.contains(
            "failure budget exceeded: 1 failed, max_failures 0 (web@h01: stage timed out after 30s)"
        ),
        "{why}"
    );
    assert_eq!(finished_at(&f), 30 * TICK);
}

#[test]
fn lost_hosts_under_wait_policy_fail_at_the_progress_deadline() {
    let mut f = Fleet::start(spec(), instances(10));
    assert!(f.run_until(HOUR, |f| f.status().counts.done >= 1));
    let lost_at = f.now;
    for k in 4..=10 {
        f.host_lost(&format!("h{k:02}"));
    }
    f.run_to_end(HOUR);
    let why = reason(f.engine.outcome());
    assert!(matches!(f.engine.outcome(), Some(Outcome::Failed { .. })));
    assert!(
        why.starts_with(
            "no progress for 10m: waiting for lost hosts: h04, h05, h06, h07, h08 and 2 more"
        ),
        "{why}"
    );
    // The batch in flight finished, then the deadline ran from there.
    let end = finished_at(&f);
    assert!(
        end >= lost_at + 10 * MINUTE && end <= lost_at + 11 * MINUTE,
        "{end}"
    );
    assert_eq!(f.step("web@h02"), Step::Done);
    assert_eq!(f.status().counts.pending, 7);
}

#[test]
fn a_floor_that_never_recovers_fails_at_the_progress_deadline() {
    let mut f = Fleet::start(spec(), instances(10));
    assert!(f.run_until(HOUR, |f| f.status().counts.done >= 3));
    let done: Vec<String> = (f.status().instances.into_iter())
        .filter(|i| i.step == Step::Done)
        .map(|i| i.id.clone())
        .take(3)
        .collect();
    for id in &done {
        f.kill(id);
    }
    let killed_at = f.now;
    f.run_to_end(HOUR);
    let why = reason(f.engine.outcome());
    assert_eq!(why, "no progress for 10m: waiting: 7 healthy, floor 8");
    assert!(finished_at(&f) <= killed_at + 11 * MINUTE);
}

#[test]
fn pause_finishes_in_flight_and_starts_nothing_until_resume() {
    let mut f = Fleet::start(spec(), instances(10));
    assert!(f.run_until(HOUR, |f| f.drains() >= 3));
    f.operator(OperatorAction::Pause);
    assert_eq!(f.status().phase, Phase::Paused);
    let drains = f.drains();
    for _ in 0..300 {
        f.tick();
    }
    assert_eq!(f.drains(), drains, "nothing started while paused");
    let st = f.status();
    assert_eq!(st.counts.in_progress, 0, "in-flight chains finished");
    assert_eq!(st.counts.done, 3);
    assert_eq!(st.wait_reason, Some(crate::rollout::Block::Paused));
    f.operator(OperatorAction::Resume);
    assert_eq!(f.status().phase, Phase::Running);
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
}

#[test]
fn a_pause_that_is_never_resumed_ends_at_the_progress_deadline() {
    let mut f = Fleet::start(small(), instances(4));
    f.operator(OperatorAction::Pause);
    f.run_to_end(HOUR);
    assert_eq!(
        reason(f.engine.outcome()),
        "no progress for 10m: paused by operator"
    );
    assert!(finished_at(&f) <= 11 * MINUTE);
}

#[test]
fn abort_leaves_everyone_on_old_or_new_and_in_service() {
    let s = RolloutSpec {
        max_failures: Amount::Count(5),
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(10), |f| {
        f.bad.insert("web@h04".to_string());
    });
    assert!(f.run_until(HOUR, |f| f.step("web@h04") == Step::Failed));
    let busy = f.status().counts.in_progress;
    assert!(busy > 0, "abort should find work in flight");
    f.operator(OperatorAction::Abort);
    assert_eq!(f.status().phase, Phase::Aborting);
    f.run_to_end(HOUR);
    assert_eq!(
        f.engine.outcome(),
        Some(&Outcome::Aborted {
            reason: crate::rollout::StopReason::OperatorAbort
        })
    );
    for (id, s) in &f.sim {
        assert!(s.serving(), "{id} out of service");
        assert!(s.release == Some(v1()) || s.release == Some(v2()), "{id}");
    }
    assert_eq!(f.sim["web@h04"].release, Some(v1()));
    assert_eq!(f.step("web@h04"), Step::RolledBack);
    assert_eq!(f.step("web@h05"), Step::Done, "in-flight chains finish");
    assert_eq!(f.sim["web@h05"].release, Some(v2()));
}

#[test]
fn operator_rollback_returns_updated_instances() {
    let mut f = Fleet::start(spec(), instances(10));
    assert!(f.run_until(HOUR, |f| f.status().counts.done >= 4));
    f.operator(OperatorAction::Rollback);
    f.run_to_end(HOUR);
    assert_eq!(
        f.engine.outcome(),
        Some(&Outcome::RolledBack {
            reason: crate::rollout::StopReason::OperatorRollback
        })
    );
    assert!(
        f.sim
            .values()
            .all(|s| s.release == Some(v1()) && s.serving())
    );
    assert!(f.min_capacity >= 8);
}

fn inflight_ids(state: &RolloutState) -> Vec<CommandId> {
    (state.instances.iter())
        .filter_map(|i| i.inflight.as_ref().map(|f| f.id.clone()))
        .collect()
}

#[test]
fn restore_resends_in_flight_commands_with_the_same_ids() {
    let mut f = Fleet::start(spec(), instances(10));
    assert!(f.run_until(HOUR, |f| {
        let c = f.status().counts;
        c.done >= 3 && c.in_progress == 2
    }));
    let persisted: RolloutState = serde_json::from_str(&f.persisted).expect("parses");
    let expected = inflight_ids(&persisted);
    assert_eq!(expected.len(), 2);
    let outs = f.crash_and_restore();
    assert_eq!(outs.first(), Some(&Output::Persist));
    let resent: Vec<CommandId> = (outs.iter())
        .filter_map(|o| match o {
            Output::Send { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(resent, expected);
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    assert_eq!(f.executed.len(), 70, "no step ran twice or under a new id");
    all_ids_unique(&f);
}

#[test]
fn repeated_crashes_still_finish_without_repeating_a_step() {
    let s = RolloutSpec {
        max_failures: Amount::Count(1),
        auto_rollback: true,
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(10), |f| {
        f.bad.insert("web@h06".to_string());
        f.bad.insert("web@h07".to_string());
    });
    let mut crashes = 0;
    while !f.engine.is_finished() && f.now < HOUR {
        for _ in 0..7 {
            f.tick();
        }
        f.crash_and_restore();
        crashes += 1;
    }
    assert!(crashes > 5);
    assert!(matches!(
        f.engine.outcome(),
        Some(Outcome::RolledBack { .. })
    ));
    assert!(
        f.sim
            .values()
            .all(|s| s.release == Some(v1()) && s.serving())
    );
    all_ids_unique(&f);
}

#[test]
fn duplicate_and_late_results_are_ignored() {
    let s = RolloutSpec {
        step_timeout: Duration::from_secs(30),
        max_failures: Amount::Count(3),
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(10), |f| {
        f.silent.insert("h02".to_string());
    });
    assert!(f.run_until(HOUR, |f| f.step("web@h02") == Step::Failed));
    let before = serde_json::to_string(f.engine.state()).expect("serialises");
    let old = |s: &str| format!("r1/{s}").parse::<CommandId>().expect("id");
    for (id, outcome) in [
        (old("web@h01/drain/1"), CommandOutcome::Ok),
        (
            old("web@h01/undrain/1"),
            CommandOutcome::Failed("late".into()),
        ),
        (old("web@h02/drain/1"), CommandOutcome::Ok), // timed out long ago
        (old("web@h03/drain/0"), CommandOutcome::Ok), // an attempt that never was
        (
            "other/web@h03/drain/1".parse::<CommandId>().expect("id"),
            CommandOutcome::TimedOut,
        ),
    ] {
        let outs = f.feed(Input::CommandResult { id, outcome });
        assert!(outs.is_empty(), "{outs:?}");
    }
    let outs = f.feed(Input::Health {
        instance: "web@nowhere".into(),
        healthy: false,
        in_service: false,
        release: None,
    });
    assert!(outs.is_empty());
    assert_eq!(
        serde_json::to_string(f.engine.state()).expect("serialises"),
        before
    );
    assert_eq!(f.step("web@h02"), Step::Failed);
    f.run_to_end(HOUR);
    assert!(matches!(f.engine.outcome(), Some(Outcome::Failed { .. })));
}

#[test]
fn finished_rollouts_never_change() {
    let mut f = Fleet::start(small(), instances(3));
    f.run_to_end(HOUR);
    let before = serde_json::to_string(f.engine.state()).expect("serialises");
    for input in [
        Input::Tick,
        Input::Operator(OperatorAction::Rollback),
        Input::Operator(OperatorAction::Abort),
        Input::HostLost { host: "h01".into() },
        Input::CommandResult {
            id: "r1/web@h01/drain/1".parse::<CommandId>().expect("id"),
            outcome: CommandOutcome::Ok,
        },
    ] {
        assert!(f.engine.handle(Millis(f.now + HOUR), input).is_empty());
    }
    assert_eq!(
        serde_json::to_string(f.engine.state()).expect("serialises"),
        before
    );
    assert_eq!(f.engine.next_deadline(), None);
}

#[test]
fn spread_keeps_at_most_k_down_per_zone() {
    let s = RolloutSpec {
        batches: vec![Amount::Percent(100)],
        min_healthy: Amount::Percent(50),
        spread_by: Some(Spread {
            label: "zone".into(),
            max_unavailable: 1,
        }),
        ..spec()
    };
    let mut f = Fleet::start(s, instances(9));
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    for (zone, down) in &f.zone_max_down {
        assert!(*down <= 1, "zone {zone} had {down} down");
    }
    assert_eq!(f.max_held, 3, "one per zone at a time");
    // Plan order takes zones in turn.
    let order: Vec<String> = f
        .status()
        .instances
        .into_iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(&order[..3], ["web@h01", "web@h02", "web@h03"]);
}

#[test]
fn max_unavailable_caps_chains_in_flight() {
    let s = RolloutSpec {
        batches: vec![Amount::Percent(100)],
        min_healthy: Amount::Count(0),
        max_unavailable: Some(Amount::Count(3)),
        ..spec()
    };
    let mut f = Fleet::start(s, instances(10));
    f.faults = true; // the floor is 0 here
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    assert_eq!(f.max_held, 3);
}

#[test]
fn a_host_that_reconnects_gets_its_command_again() {
    let mut f = Fleet::start(small(), instances(4));
    assert!(f.run_until(HOUR, |f| f.step("web@h01") == Step::Deploying));
    f.host_lost("h01");
    for _ in 0..5 {
        f.tick();
    }
    assert_eq!(
        f.step("web@h01"),
        Step::Deploying,
        "still waiting on the command"
    );
    let sends = f.sends.len();
    f.host_back("h01");
    let resent = &f.sends[sends..];
    assert_eq!(resent.len(), 1);
    assert_eq!(resent[0].1.to_string(), "r1/web@h01/deploy/1");
    f.run_to_end(HOUR);
    assert_eq!(f.engine.outcome(), Some(&Outcome::Succeeded));
    assert_eq!(f.executed.len(), 28);
}

#[test]
fn lost_hosts_count_as_unreachable_not_failed() {
    let s = RolloutSpec {
        step_timeout: Duration::from_secs(30),
        max_unreachable: Amount::Count(2),
        lost_hosts: LostHostPolicy::Skip,
        min_healthy: Amount::Percent(50),
        ..spec()
    };
    let mut f = Fleet::start(s, instances(6));
    assert!(f.run_until(HOUR, |f| f.step("web@h02") == Step::Stopping));
    f.host_lost("h02"); // mid-chain: times out as unreachable
    f.host_lost("h06"); // pending: skipped under the skip policy
    f.run_to_end(HOUR);
    let st = f.status();
    assert_eq!(st.counts.unreachable, 2);
    assert_eq!(f.step("web@h06"), Step::Skipped);
    assert_eq!(f.step("web@h02"), Step::Failed);
    let why = reason(f.engine.outcome());
    assert_eq!(
        why,
        "1 instance(s) failed within the failure budget: web@h02: host lost during stop"
    );
    for id in ["web@h01", "web@h03", "web@h04", "web@h05"] {
        assert_eq!(f.step(id), Step::Done, "{id}");
    }
}

#[test]
fn too_many_lost_hosts_stop_the_rollout() {
    let s = RolloutSpec {
        lost_hosts: LostHostPolicy::Skip,
        min_healthy: Amount::Percent(50),
        ..spec()
    };
    let mut f = Fleet::start(s, instances(6));
    assert!(f.run_until(HOUR, |f| f.status().counts.done >= 1));
    f.host_lost("h06");
    f.run_to_end(HOUR);
    assert_eq!(
        reason(f.engine.outcome()),
        "unreachable budget exceeded: 1 on lost hosts, max_unreachable 0 (web@h06)"
    );
}

#[test]
fn dry_run_plans_batches_with_a_capacity_forecast() {
    let plan = Engine::plan(&spec(), instances(10)).expect("plans");
    assert_eq!((plan.total, plan.floor, plan.capacity), (10, 8, 10));
    assert_eq!(plan.batches.len(), 3);
    assert_eq!(plan.batches[0].instances, ["web@h01"]);
    assert_eq!(plan.batches[1].instances, ["web@h02", "web@h03"]);
    assert_eq!(plan.batches[2].instances.len(), 7);
    assert_eq!(plan.batches[2].waves[0], ["web@h04", "web@h05"]);
    assert!(
        plan.batches
            .iter()
            .all(|b| b.waves.iter().all(|w| w.len() <= 2))
    );
    assert_eq!(plan.batches[0].lowest_capacity, 9);
    assert_eq!(plan.lowest_capacity, 8);
    assert_eq!(plan.stalls, None);
    let text = plan.to_string();
    assert!(
        text.contains("batch 2   web@h02, web@h03  (capacity >= 8)"),
        "{text}"
    );
    assert!(
        text.contains("batch 3   web@h04, web@h05, web@h06, web@h07, web@h08, web@h09, web@h10  (2 at a time, capacity >= 8)"),
        "{text}"
    );
    assert!(text.ends_with("lowest capacity 8 (floor 8)"), "{text}");
    assert_eq!(plan.batches[2].max_down, 2);

    // Skipped instances are listed; a fleet stuck at its floor would stall.
    let mut infos = instances(10);
    infos[0].release = Some(v2());
    infos[1].healthy = false;
    infos[2].healthy = false;
    infos[1].release = Some(v2());
    infos[2].release = Some(v2());
    let plan = Engine::plan(&spec(), infos).expect("plans");
    assert_eq!(plan.skipped.len(), 3);
    assert_eq!(plan.stalls.as_deref(), Some("waiting: 8 healthy, floor 8"));
    assert!(plan.batches.is_empty());
}

/// Runs a rollout with failures, a rollback and crashes; returns every output.
fn eventful_run() -> (Vec<String>, Vec<String>, String) {
    let s = RolloutSpec {
        max_failures: Amount::Count(1),
        auto_rollback: true,
        spread_by: Some(Spread {
            label: "zone".into(),
            max_unavailable: 1,
        }),
        min_healthy: Amount::Percent(60),
        batches: crate::rollout::parse_batches("1,50%").expect("batches"),
        ..spec()
    };
    let mut f = Fleet::start_with(s, instances(12), |f| {
        f.bad.insert("web@h07".to_string());
        f.bad.insert("web@h09".to_string());
    });
    let mut n = 0;
    while !f.engine.is_finished() && f.now < HOUR {
        f.tick();
        n += 1;
        if n % 23 == 0 {
            f.crash_and_restore();
        }
        if n == 17 {
            f.kill("web@h01");
        }
        if n == 40 {
            f.revive("web@h01");
        }
    }
    let json = serde_json::to_string(f.engine.state()).expect("serialises");
    (f.log, f.json, json)
}

#[test]
fn same_inputs_give_byte_identical_outputs() {
    let (a, ja, sa) = eventful_run();
    let (b, jb, sb) = eventful_run();
    assert!(a.len() > 200, "{} outputs", a.len());
    assert_eq!(a, b);
    assert_eq!(ja, jb);
    assert_eq!(sa, sb);
    assert!(a.iter().any(|l| l.contains("Finished(")));
}
