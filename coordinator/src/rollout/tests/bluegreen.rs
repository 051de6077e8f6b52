//! Blue-green on the fake fleet: the idle color taken out of traffic,
//! redeployed, hooked, switched step by step; the old color drained, kept
//! and stopped; a rollback during keep-old moving every weight back; a
//! failing hook stopping before any traffic moved; a crash in the middle.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_model::{AnalysisSpec, Color, Strategy, strategy::parse_steps};

use super::fleet::{Fleet, Load, TICK, instances, spec, v1, v2};
use crate::rollout::traffic::Stage;
use crate::rollout::{
    Amount, CommandKind, Input, InstanceInfo, OperatorAction, Outcome, Phase, RolloutSpec,
    StopReason,
};

fn bg_spec(hook: Option<&str>) -> RolloutSpec {
    RolloutSpec {
        strategy: Strategy::BlueGreen,
        batches: vec![Amount::Count(1)],
        steps: parse_steps("10%,50%,100%").expect("steps"),
        bake: Some(Duration::from_secs(30)),
        keep_old: Some(Duration::from_secs(120)),
        pre_traffic_hook: hook.map(str::to_string),
        min_healthy: Amount::Percent(100),
        max_unavailable: Some(Amount::Count(2)),
        min_healthy_time: Duration::from_secs(1),
        analysis: AnalysisSpec {
            warmup: Some(Duration::from_secs(5)),
            min_requests: 300,
            ..AnalysisSpec::default()
        },
        ..spec()
    }
}

/// `hosts` hosts, each with a blue instance serving v1 and a green one
/// running v1 but drained (the idle color of the last switch).
fn pairs(hosts: usize) -> Vec<InstanceInfo> {
    let mut out = Vec::new();
    for i in instances(hosts) {
        for color in [Color::Blue, Color::Green] {
            let serving = color == Color::Blue;
            out.push(InstanceInfo {
                id: format!("web-{}@{}", color.as_str(), i.host),
                in_service: serving,
                color: Some(color),
                ..i.clone()
            });
        }
    }
    out
}

fn blue_green(hosts: usize, hook: Option<&str>, v2_ppm: u64) -> Fleet {
    Fleet::start_with(bg_spec(hook), pairs(hosts), |f| {
        f.load = Some(Load::new(2_000, 5_000, v2_ppm));
    })
}

fn stage(f: &Fleet) -> Option<Stage> {
    f.engine.state().traffic.as_ref().map(|t| t.stage.clone())
}

fn colored<'a>(
    f: &'a Fleet,
    color: &str,
) -> impl Iterator<Item = (&'a String, &'a super::fleet::Sim)> {
    let tag = format!("web-{color}@");
    f.sim.iter().filter(move |(id, _)| id.starts_with(&tag))
}

/// Answers every hook run asked for so far with `ok`.
fn answer_hooks(f: &mut Fleet, ok: bool) {
    let runs = std::mem::take(&mut f.hooks);
    for attempt in runs {
        let detail = if ok {
            "exit 0"
        } else {
            "exit 3: 2 checks failed"
        };
        f.feed(Input::HookDone {
            attempt,
            ok,
            detail: detail.to_string(),
        });
    }
}

/// Weights sent to green instances, in order.
fn green_weights(f: &Fleet) -> Vec<Option<u32>> {
    (f.sends.iter())
        .filter(|s| s.2.starts_with("web-green@"))
        .filter_map(|s| match &s.3 {
            CommandKind::SetWeight { weight } => Some(*weight),
            _ => None,
        })
        .collect()
}

#[test]
fn a_switch_deploys_the_idle_color_moves_traffic_step_by_step_and_retires_the_old() {
    let mut f = blue_green(4, Some("smoke"), 5_000);
    let mut shares = BTreeMap::new();
    let done = f.run_until(30 * 60 * TICK, |f| {
        f.engine.is_finished() || !f.hooks.is_empty()
    });
    assert!(
        done && !f.hooks.is_empty(),
        "no hook asked for\n{}",
        f.tail()
    );
    // Before the hook, green was redeployed but carries nothing.
    assert!(colored(&f, "green").all(|(_, s)| s.release == Some(v2()) && !s.routed()));
    assert!(
        green_weights(&f).iter().all(|w| *w == Some(0)),
        "{:?}",
        green_weights(&f)
    );
    answer_hooks(&mut f, true);
    while !f.engine.is_finished() && f.now < 60 * 60 * TICK {
        f.tick();
        if let (Some(Stage::Baking { .. }), Some(t)) =
            (stage(&f), f.engine.state().traffic.as_ref())
        {
            let share = t.steps[t.step].basis_points();
            if let Some((_, v2)) = f.load.as_ref().and_then(|l| l.v2_share.last()) {
                shares.insert(share, *v2);
            }
        }
    }
    assert_eq!(
        f.engine.outcome(),
        Some(&Outcome::Succeeded),
        "{}",
        f.tail()
    );
    // v2 served each step's share of the requests (per mille).
    assert_eq!(shares.keys().copied().collect::<Vec<_>>(), [1000, 5000]);
    for (share, got) in shares {
        let want = u64::from(share) / 10;
        assert!(got.abs_diff(want) <= 20, "step {share}bp: v2 served {got}‰");
    }
    for (id, s) in colored(&f, "green") {
        assert!(s.serving() && s.release == Some(v2()), "{id}: {s:?}");
    }
    for (id, s) in colored(&f, "blue") {
        assert!(
            !s.in_service && !s.healthy,
            "{id} not drained and stopped: {s:?}"
        );
        assert_eq!(s.release, Some(v1()), "{id}");
    }
    for (id, s) in &f.sim {
        assert_eq!(s.weight, None, "{id} keeps a weight drover set");
    }
    // The keep-old wait came between the drain and the stop.
    let at = |what: &str| {
        (f.log.iter())
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` in the log"))
    };
    assert!(at("draining the old color (blue)") < at("keep-old over"));
    assert!(at("keep-old over") < at("old color (blue) stopped"));
}

#[test]
fn rollback_during_keep_old_moves_every_weight_back_and_drains_the_new_color() {
    let mut f = blue_green(3, None, 5_000);
    let kept = f.run_until(30 * 60 * TICK, |f| {
        matches!(stage(f), Some(Stage::KeepingOld { .. }))
    });
    assert!(kept, "{}", f.tail());
    assert!(colored(&f, "blue").all(|(_, s)| !s.routed() && s.healthy));
    let asked = f.now;
    f.operator(OperatorAction::Rollback);
    let back = f.run_until(60 * TICK, |f| {
        colored(f, "blue").all(|(_, s)| s.serving())
            && colored(f, "green").all(|(_, s)| !s.routed())
    });
    assert!(back, "{}", f.tail());
    // Two rounds of commands (old color up, then new color down): a few
    // agent round trips, no chain.
    assert!(f.now - asked <= 6 * TICK, "took {} ms", f.now - asked);
    f.run_to_end(10 * 60 * TICK);
    assert!(
        matches!(
            f.engine.outcome(),
            Some(Outcome::RolledBack {
                reason: StopReason::OperatorRollback
            })
        ),
        "{}",
        f.tail()
    );
    for (id, s) in colored(&f, "blue") {
        assert!(s.serving() && s.release == Some(v1()), "{id}: {s:?}");
    }
    for (id, s) in colored(&f, "green") {
        assert!(!s.in_service, "{id} left in service: {s:?}");
    }
    for (id, s) in &f.sim {
        assert_eq!(s.weight, None, "{id} keeps a weight drover set");
    }
    assert_eq!(f.status().phase, Phase::RolledBack);
}

#[test]
fn a_failing_hook_rolls_back_before_any_traffic_moves() {
    let mut f = blue_green(3, Some("smoke"), 5_000);
    let asked = f.run_until(30 * 60 * TICK, |f| !f.hooks.is_empty());
    assert!(asked, "{}", f.tail());
    answer_hooks(&mut f, false);
    f.run_to_end(10 * 60 * TICK);
    let Some(Outcome::RolledBack {
        reason: StopReason::BlueGreen { why, .. },
    }) = f.engine.outcome()
    else {
        panic!("{}", f.tail());
    };
    assert!(
        why.contains("pre-traffic hook `smoke` failed: exit 3"),
        "{why}"
    );
    // Green never got a weight above 0: no request reached v2.
    assert!(
        green_weights(&f)
            .iter()
            .all(|w| matches!(w, Some(0) | None))
    );
    let load = f.load.as_ref().expect("load");
    assert!(
        load.v2_share.iter().all(|(_, s)| *s == 0),
        "v2 served requests"
    );
    for (id, s) in colored(&f, "blue") {
        assert!(s.serving(), "{id}");
    }
    for (id, s) in colored(&f, "green") {
        assert!(!s.in_service, "{id} left in service");
    }
}

#[test]
fn a_bad_new_color_is_caught_by_the_analysis_and_switched_back() {
    let mut f = blue_green(4, None, 60_000);
    f.run_to_end(30 * 60 * TICK);
    let Some(Outcome::RolledBack {
        reason: StopReason::AnalysisFailed { step: 1, .. },
    }) = f.engine.outcome()
    else {
        panic!("{}", f.tail());
    };
    for (id, s) in colored(&f, "blue") {
        assert!(s.serving(), "{id}");
    }
    for (id, s) in &f.sim {
        assert_eq!(s.weight, None, "{id} keeps a weight drover set");
    }
}

#[test]
fn a_crash_at_any_point_resumes_and_ends_the_switch_the_same_way() {
    // Crash after every n-th tick of the switch; each run must end as an
    // uncrashed one does, with the hook asked again if it was running.
    for every in [3_u64, 7, 11] {
        let mut f = blue_green(3, Some("smoke"), 5_000);
        let mut ticks = 0;
        let mut crashes = 0;
        while !f.engine.is_finished() && f.now < 40 * 60 * TICK {
            f.tick();
            ticks += 1;
            if !f.hooks.is_empty() {
                answer_hooks(&mut f, true);
            }
            if ticks % every == 0 {
                f.crash_and_restore();
                f.report_all();
                crashes += 1;
            }
        }
        assert!(crashes > 10, "every {every}: {crashes} crashes");
        assert_eq!(
            f.engine.outcome(),
            Some(&Outcome::Succeeded),
            "every {every}\n{}",
            f.tail()
        );
        for (id, s) in &f.sim {
            assert_eq!(s.weight, None, "{id} keeps a weight (crash every {every})");
        }
        for (id, s) in colored(&f, "green") {
            assert!(s.serving(), "{id} (crash every {every})");
        }
    }
}

#[test]
fn the_plan_shows_one_color_counted_and_the_switch_steps() {
    let plan = crate::rollout::Engine::plan(&bg_spec(None), pairs(4)).expect("plans");
    assert_eq!(plan.total, 4, "one color counts: {plan:?}");
    assert_eq!(plan.floor, 4);
    let steps: Vec<(u32, u32)> = (plan.traffic_steps.iter())
        .map(|s| (s.new_weight, s.old_weight))
        .collect();
    // 10%: 4 green at 11 against 4 blue at 100; 50%: 100 against 100;
    // 100%: blue out of traffic.
    assert_eq!(steps, [(11, 100), (100, 100), (100, 0)], "{plan:?}");
    assert!(plan.stalls.is_none(), "{plan:?}");
    let e = crate::rollout::Engine::plan(&bg_spec(None), instances(4)).expect_err("no colors");
    assert!(e.to_string().contains("has no color"), "{e}");
}
