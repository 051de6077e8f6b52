//! Engine bugs the simulator found (see `rollout::sim`), each as a direct
//! scenario that does not depend on the simulator's seeds.

use std::time::Duration;

use super::fleet::{Fleet, instances, spec};
use crate::rollout::{
    Amount, CommandKind, Input, OperatorAction, Outcome, Output, RolloutSpec, Step,
};

const HOUR: u64 = 3_600_000;

/// A drain that timed out may not have happened: the instance may still be
/// serving, so taking it down again for a rollback needs room under the
/// floor like any serving instance.
#[test]
fn a_failed_drain_may_still_serve_so_its_rollback_waits_for_room() {
    let s = RolloutSpec {
        min_healthy: Amount::Count(3),
        auto_rollback: true,
        step_timeout: Duration::from_secs(30),
        ..spec()
    };
    // h01 stages, then takes its drain and never answers (nor drains).
    let mut f = Fleet::start_with(s, instances(4), |f| {
        f.mute_after_stage.insert("h01".to_string());
    });
    assert!(f.run_until(HOUR, |f| f.step("web@h01") == Step::Draining));
    // Another instance falls over: capacity under the floor.
    f.kill("web@h02");
    assert!(f.run_until(HOUR, |f| f.step("web@h01") == Step::Failed));
    let rollback = |f: &Fleet| {
        f.sends
            .iter()
            .any(|s| s.1.to_string() == "r1/web@h01/stage/2")
    };
    for _ in 0..10 {
        f.tick();
    }
    assert!(
        !rollback(&f),
        "took a maybe-serving instance down at the floor"
    );
    assert_eq!(
        f.status().wait_reason.map(|b| b.to_string()).as_deref(),
        Some("waiting: 2 healthy, floor 3")
    );
    f.revive("web@h02");
    assert!(rollback(&f), "room again, the rollback goes on");
}

/// Aborted promises every instance on old or new and in service unless its
/// host is lost; an abort that cannot return a failed instance on a live
/// host ends Failed.
#[test]
fn an_abort_that_cannot_return_a_failed_instance_ends_failed() {
    let mut infos = instances(4);
    infos[0].release = None;
    let s = RolloutSpec {
        min_healthy: Amount::Count(2),
        max_failures: Amount::Count(1),
        ..spec()
    };
    let mut f = Fleet::start_with(s, infos, |f| {
        f.bad.insert("web@h01".to_string());
    });
    assert!(f.run_until(HOUR, |f| f.step("web@h01") == Step::Failed));
    f.operator(OperatorAction::Abort);
    f.run_to_end(HOUR);
    match f.engine.outcome() {
        Some(Outcome::Failed { reason }) => assert!(
            reason.to_string().contains("abort incomplete")
                && (reason.to_string()).contains("web@h01: no previous release to return to"),
            "{reason}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// A host back after its command's deadline passed (before the tick that
/// would notice) does not get the command again: the same call times it
/// out, and the agent would run a step nobody waits for.
#[test]
fn a_command_past_its_deadline_is_not_sent_again_on_reconnect() {
    let s = RolloutSpec {
        step_timeout: Duration::from_secs(30),
        ..spec()
    };
    let mut f = Fleet::start(s, instances(5));
    assert_eq!(f.step("web@h01"), Step::Staging);
    f.host_lost("h01");
    f.now += 31_000;
    f.down.remove("h01");
    let outs = f.feed(Input::HostBack {
        host: "h01".to_string(),
    });
    let resent = outs.iter().any(|o| {
        matches!(o, Output::Send { id, kind: CommandKind::Stage { .. }, .. } if id.to_string() == "r1/web@h01/stage/1")
    });
    assert!(!resent, "{outs:#?}");
    assert_eq!(f.step("web@h01"), Step::Failed);
}
