//! Canary on the fake fleet: weights set per step, the analysis judging
//! live counters, rollback on a bad canary, inconclusive steps held for a
//! human, and weights put back however the rollout ends.

use std::time::Duration;

use drover_model::{AnalysisSpec, Strategy, strategy::parse_steps};

use super::fleet::{Fleet, Load, TICK, instances, spec, v1, v2};
use crate::rollout::traffic::{StepVerdict, canary_weight};
use crate::rollout::{Amount, OperatorAction, Outcome, Phase, RolloutSpec, StopReason};

fn canary_spec(steps: &str) -> RolloutSpec {
    RolloutSpec {
        strategy: Strategy::Canary,
        batches: vec![Amount::Count(1)],
        steps: parse_steps(steps).expect("steps"),
        bake: Some(Duration::from_secs(60)),
        min_healthy: Amount::Percent(70),
        min_healthy_time: Duration::from_secs(1),
        analysis: AnalysisSpec {
            warmup: Some(Duration::from_secs(5)),
            min_requests: 300,
            ..AnalysisSpec::default()
        },
        ..spec()
    }
}

/// Ten instances, `per_tick` requests a second, errors per million on v1
/// and v2.
fn canary(steps: &str, per_tick: u64, v1_ppm: u64, v2_ppm: u64) -> Fleet {
    Fleet::start_with(canary_spec(steps), instances(10), |f| {
        f.load = Some(Load::new(per_tick, v1_ppm, v2_ppm));
    })
}

/// The share of the load balancer's weight on v2 now, in per mille.
fn v2_weight_share(f: &Fleet) -> u64 {
    let w = |s: &super::fleet::Sim| u64::from(s.weight.unwrap_or(1));
    let serving: Vec<_> = f.sim.values().filter(|s| s.serving()).collect();
    let total: u64 = serving.iter().map(|s| w(s)).sum();
    let v2: u64 = (serving.iter())
        .filter(|s| s.release == Some(v2()))
        .map(|s| w(s))
        .sum();
    v2 * 1000 / total.max(1)
}

fn no_weight_left(f: &Fleet) {
    for (id, s) in &f.sim {
        assert_eq!(s.weight, None, "{id} keeps a weight drover set");
    }
}

#[test]
fn weights_give_the_updated_instances_their_share() {
    // 1 canary against 9 at 100: 5% is 1*w/(1*w + 900).
    let w = canary_weight("5%".parse().expect("share"), 1, 9);
    let share = f64::from(w) / f64::from(w + 900);
    assert!((share - 0.05).abs() < 0.002, "weight {w} gives {share}");
    // Never 0 (no traffic at all), never above HAProxy's 256.
    assert_eq!(canary_weight("0.01%".parse().expect("share"), 1, 2), 1);
    assert!(canary_weight("50%".parse().expect("share"), 1, 30) <= 256);
}

#[test]
fn a_good_canary_is_promoted_through_every_step_and_weights_are_put_back() {
    let mut f = canary("10%,50%,100%", 2_000, 5_000, 5_000);
    let mut seen = Vec::new();
    let finished = f.run_until(20 * 60 * TICK, |f| f.engine.is_finished());
    assert!(finished, "{:#?}", f.status());
    assert_eq!(
        f.engine.outcome(),
        Some(&Outcome::Succeeded),
        "{}",
        f.tail()
    );
    let t = f.engine.state().traffic.clone().expect("traffic");
    let verdicts: Vec<_> = t.results.iter().map(|r| r.verdict.clone()).collect();
    assert_eq!(
        verdicts,
        [StepVerdict::Passed, StepVerdict::Passed],
        "{t:#?}"
    );
    for j in &f.judgements {
        seen.push((j.step, j.judgement.verdict));
    }
    assert!(
        seen.iter()
            .all(|(_, v)| *v != drover_analysis::Verdict::Fail),
        "a good canary failed a look: {seen:?}"
    );
    for id in f.sim.keys() {
        assert_eq!(f.sim[id].release, Some(v2()), "{id}");
    }
    no_weight_left(&f);
}

#[test]
fn each_step_sends_its_share_of_requests_to_the_new_release() {
    let mut f = canary("10%,50%,100%", 2_000, 5_000, 5_000);
    for (share, lo, hi) in [(100, 90, 110), (500, 480, 520)] {
        let ok = f.run_until(20 * 60 * TICK, |f| {
            let baking = matches!(
                f.engine.state().traffic.as_ref().map(|t| &t.stage),
                Some(crate::rollout::traffic::Stage::Baking { .. })
            );
            baking
                && v2_weight_share(f) > 0
                && f.engine
                    .state()
                    .traffic
                    .as_ref()
                    .is_some_and(|t| t.steps[t.step].basis_points() == share * 10)
        });
        assert!(ok, "never baked at {share}\n{}", f.tail());
        let got = v2_weight_share(&f);
        assert!(
            (lo..=hi).contains(&got),
            "step {share}‰: weights give {got}‰"
        );
        // Requests follow the weights.
        for _ in 0..5 {
            f.tick();
        }
        let load = f.load.as_ref().expect("load");
        let last = load.v2_share.last().expect("traffic").1;
        assert!(
            (lo..=hi).contains(&last),
            "step {share}‰: v2 served {last}‰"
        );
    }
}

#[test]
fn a_canary_with_5_percent_errors_is_rolled_back_in_its_first_step() {
    let mut f = canary("10%,50%,100%", 2_000, 5_000, 50_000);
    f.run_to_end(20 * 60 * TICK);
    let outcome = f.engine.outcome().cloned().expect("finished");
    let Outcome::RolledBack {
        reason: StopReason::AnalysisFailed { step, .. },
    } = &outcome
    else {
        panic!(
            "expected a rollback on the analysis: {outcome:?}\n{}",
            f.tail()
        );
    };
    assert_eq!(*step, 1);
    for (id, s) in &f.sim {
        assert_eq!(s.release, Some(v1()), "{id}");
    }
    no_weight_left(&f);
    // The failing look is stored with its numbers.
    let fail = (f.judgements.iter())
        .find(|j| j.judgement.verdict == drover_analysis::Verdict::Fail)
        .expect("a failing look");
    assert!(fail.judgement.canary.errors > 0, "{fail:#?}");
    assert_eq!(fail.canary_instances, 1);
}

#[test]
fn too_little_traffic_holds_the_step_paused_and_promote_passes_it() {
    let mut spec = canary_spec("10%,100%");
    spec.analysis.max_analysis = Some(Duration::from_secs(90));
    let mut f = Fleet::start_with(spec, instances(10), |f| {
        f.load = Some(Load::new(5, 0, 0));
    });
    let held = f.run_until(10 * 60 * TICK, |f| f.status().phase == Phase::Paused);
    assert!(held, "{}", f.tail());
    assert!(
        f.status()
            .wait_reason
            .is_some_and(|w| w.to_string().contains("inconclusive")),
        "{:?}",
        f.status().wait_reason
    );
    // Held, not passed: nothing more is updated while it waits.
    let done_before = f.status().counts.done;
    for _ in 0..30 {
        f.tick();
    }
    assert_eq!(f.status().counts.done, done_before);
    f.operator(OperatorAction::Promote);
    f.run_to_end(10 * 60 * TICK);
    assert_eq!(
        f.engine.outcome(),
        Some(&Outcome::Succeeded),
        "{}",
        f.tail()
    );
    let t = f.engine.state().traffic.clone().expect("traffic");
    assert_eq!(t.results[0].verdict, StepVerdict::Promoted);
    no_weight_left(&f);
}

#[test]
fn a_load_balancer_that_refuses_weights_rolls_the_canary_back() {
    let mut f = Fleet::start_with(canary_spec("10%,100%"), instances(10), |f| {
        f.load = Some(Load::new(2_000, 0, 0));
        f.weight_refused.insert("web@h05".to_string());
    });
    f.run_to_end(10 * 60 * TICK);
    let outcome = f.engine.outcome().cloned().expect("finished");
    // The refusing instance's weight could never be set, nor put back.
    let text = outcome.to_string();
    assert!(text.contains("web@h05"), "{text}");
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    for (id, s) in &f.sim {
        assert_eq!(s.release, Some(v1()), "{id}");
        if id != "web@h05" {
            assert_eq!(s.weight, None, "{id}");
        }
    }
}

#[test]
fn a_coordinator_crash_mid_bake_resumes_the_same_step() {
    let mut f = canary("10%,50%,100%", 2_000, 5_000, 5_000);
    let baking = f.run_until(10 * 60 * TICK, |f| f.judgements.len() >= 2);
    assert!(baking, "{}", f.tail());
    let step = f.engine.state().traffic.as_ref().map(|t| t.step);
    let looks = f.judgements.len();
    f.crash_and_restore();
    assert_eq!(f.engine.state().traffic.as_ref().map(|t| t.step), step);
    f.run_to_end(20 * 60 * TICK);
    assert_eq!(
        f.engine.outcome(),
        Some(&Outcome::Succeeded),
        "{}",
        f.tail()
    );
    assert!(f.judgements.len() > looks);
    no_weight_left(&f);
}

#[test]
fn an_operator_rollback_mid_canary_puts_every_weight_back() {
    let mut f = canary("10%,50%,100%", 2_000, 5_000, 5_000);
    let second = f.run_until(20 * 60 * TICK, |f| {
        f.engine
            .state()
            .traffic
            .as_ref()
            .is_some_and(|t| t.step == 1)
            && v2_weight_share(f) > 400
    });
    assert!(second, "{}", f.tail());
    f.operator(OperatorAction::Rollback);
    f.run_to_end(10 * 60 * TICK);
    assert!(
        matches!(f.engine.outcome(), Some(Outcome::RolledBack { .. })),
        "{:?}",
        f.engine.outcome()
    );
    for (id, s) in &f.sim {
        assert_eq!(s.release, Some(v1()), "{id}");
    }
    no_weight_left(&f);
}

#[test]
fn a_backend_that_ignores_weights_is_refused_before_anything_moves() {
    let mut infos = instances(4);
    infos[2].balancers[0].algorithm = "static-rr".to_string();
    infos[2].balancers[0].dynamic = false;
    let e = crate::rollout::Engine::plan(&canary_spec("10%,100%"), infos).expect_err("static-rr");
    let text = e.to_string();
    assert!(
        text.contains("web@h03") && text.contains("static-rr"),
        "{text}"
    );
    let mut infos = instances(4);
    infos[1].balancers[0].counted = false;
    let e = crate::rollout::Engine::plan(&canary_spec("10%,100%"), infos).expect_err("no counters");
    assert!(
        e.to_string().contains("web@h02") && e.to_string().contains("no counters"),
        "{e}"
    );
    let mut infos = instances(4);
    infos[0].balancers.clear();
    let e = crate::rollout::Engine::plan(&canary_spec("10%,100%"), infos)
        .expect_err("no load balancer");
    assert!(e.to_string().contains("no load balancer"), "{e}");
}

#[test]
fn a_dry_run_shows_each_step_with_its_weights() {
    let plan =
        crate::rollout::Engine::plan(&canary_spec("10%,50%,100%"), instances(10)).expect("plan");
    let steps: Vec<(u32, u32, u32)> = (plan.traffic_steps.iter())
        .map(|s| (s.updated, s.new_weight, s.old_weight))
        .collect();
    // 10% of 10 is one instance at the old ones' weight; 50% is five.
    assert_eq!(steps, [(1, 100, 100), (5, 100, 100)], "{plan}");
    assert!(plan.stalls.is_none(), "{plan}");
    assert_eq!(plan.batches.len(), 3, "{plan}");
    let text = plan.to_string();
    assert!(text.contains("step 1"), "{text}");
}

#[test]
fn a_canary_needs_an_instance_left_on_the_old_release() {
    let e = crate::rollout::Engine::start(
        "r1",
        canary_spec("10%,100%"),
        instances(1),
        crate::rollout::Millis(0),
    )
    .expect_err("one instance");
    assert!(e.to_string().contains("strategy = rolling"), "{e}");
}

#[test]
fn a_canary_that_exceeds_its_failure_budget_rolls_back_without_auto_rollback() {
    let mut spec = canary_spec("10%,50%,100%");
    assert!(!spec.auto_rollback);
    spec.max_failures = Amount::Count(0);
    let mut f = Fleet::start_with(spec, instances(10), |f| {
        f.load = Some(Load::new(2_000, 5_000, 5_000));
        // The second step's first canary never turns healthy.
        f.bad.insert("web@h02".to_string());
    });
    f.run_to_end(20 * 60 * TICK);
    assert!(
        matches!(f.engine.outcome(), Some(Outcome::RolledBack { .. })),
        "{:?}\n{}",
        f.engine.outcome(),
        f.tail()
    );
    for (id, s) in &f.sim {
        assert_eq!(s.release, Some(v1()), "{id}");
    }
    no_weight_left(&f);
}

#[test]
fn a_load_balancer_that_blips_gets_the_weight_on_a_later_try() {
    let mut f = Fleet::start_with(canary_spec("10%,100%"), instances(10), |f| {
        f.load = Some(Load::new(2_000, 5_000, 5_000));
        // Refuses twice, then takes it: within the tries a weight gets.
        f.weight_flaky.insert("web@h05".to_string(), 2);
        f.weight_flaky.insert("web@h01".to_string(), 2);
    });
    f.run_to_end(20 * 60 * TICK);
    assert_eq!(
        f.engine.outcome(),
        Some(&Outcome::Succeeded),
        "{}",
        f.tail()
    );
    no_weight_left(&f);
    let retried = (f.log.iter())
        .filter(|l| l.contains("trying again"))
        .count();
    assert!(retried >= 2, "{}", f.tail());
}

#[test]
fn a_step_whose_canary_fails_updates_another_to_carry_its_share() {
    let mut spec = canary_spec("10%,100%");
    spec.max_failures = Amount::Count(1);
    let mut f = Fleet::start_with(spec, instances(10), |f| {
        f.load = Some(Load::new(2_000, 5_000, 5_000));
        // The first canary never turns healthy on v2; within the budget,
        // the step updates the next instance instead of baking without one.
        f.bad.insert("web@h01".to_string());
    });
    let baking = f.run_until(10 * 60 * TICK, |f| {
        f.status()
            .wait_reason
            .is_some_and(|w| w.to_string().contains("baking"))
    });
    assert!(baking, "{}", f.tail());
    assert_eq!(f.step("web@h01"), crate::rollout::Step::Failed);
    assert_eq!(
        f.step("web@h02"),
        crate::rollout::Step::Done,
        "{}",
        f.tail()
    );
    assert!(
        v2_weight_share(&f) > 50,
        "the second canary carries the share"
    );
    f.run_to_end(20 * 60 * TICK);
    // Every instance but the failed one on v2; the failure is reported.
    assert!(
        matches!(f.engine.outcome(), Some(Outcome::Failed { .. })),
        "{:?}",
        f.engine.outcome()
    );
    no_weight_left(&f);
}
