//! Seeded random fault schedules against the fake fleet: a small forerunner
//! of the simulator, checking the engine's promises on paths nobody scripted.
//! `ROLLOUT_SEEDS=N` runs more.

use std::time::Duration;

use super::fleet::{Chaos, Fleet, instances, spec, v1, v2};
use crate::rollout::{
    Amount, CommandOutcome, Engine, Input, LostHostPolicy, Millis, OperatorAction, Outcome,
    RolloutSpec, Spread, Step,
};

fn pick<T: Clone>(c: &mut Chaos, items: &[T]) -> T {
    let n = u64::try_from(items.len()).unwrap_or(1);
    items[usize::try_from(c.below(n)).unwrap_or(0)].clone()
}

fn chance(c: &mut Chaos, per_mille: u64) -> bool {
    c.below(1000) < per_mille
}

fn random_spec(c: &mut Chaos, n: u32) -> RolloutSpec {
    let batches = pick(c, &["1", "1,25%,100%", "2,50%", "100%", "1,2,3", "10%"]);
    let amount = |c: &mut Chaos, max: u32| {
        if chance(c, 500) {
            Amount::Count(u32::try_from(c.below(u64::from(max) + 1)).unwrap_or(0))
        } else {
            Amount::Percent(u32::try_from(c.below(10) * 10).unwrap_or(0))
        }
    };
    RolloutSpec {
        batches: crate::rollout::parse_batches(batches).unwrap_or_default(),
        min_healthy: amount(c, n),
        max_unavailable: chance(c, 300)
            .then(|| Amount::Count(1 + u32::try_from(c.below(3)).unwrap_or(0))),
        max_failures: amount(c, 3),
        max_unreachable: amount(c, 2),
        auto_rollback: chance(c, 500),
        spread_by: chance(c, 400).then(|| Spread {
            label: "zone".to_string(),
            max_unavailable: 1 + u32::try_from(c.below(2)).unwrap_or(0),
        }),
        lost_hosts: if chance(c, 500) {
            LostHostPolicy::Skip
        } else {
            LostHostPolicy::Wait
        },
        min_healthy_time: Duration::from_secs(5),
        healthy_deadline: Duration::from_secs(60),
        step_timeout: Duration::from_secs(30),
        progress_deadline: Duration::from_secs(180),
        ..spec()
    }
}

/// Runs one seed; returns a line describing the end for the summary.
fn run(seed: u64) -> String {
    let mut c = Chaos {
        rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        fail: 0,
        hang: 0,
    };
    let n = 1 + usize::try_from(c.below(24)).unwrap_or(0);
    let mut infos = instances(n);
    for i in &mut infos {
        if chance(&mut c, 100) {
            i.release = Some(v2());
        }
        if chance(&mut c, 50) {
            i.healthy = false;
        }
        if chance(&mut c, 40) {
            i.reachable = false;
        }
    }
    let s = random_spec(&mut c, u32::try_from(n).unwrap_or(0));
    if let Err(e) = Engine::plan(&s, infos.clone()) {
        let _ = e;
        return "refused".to_string();
    }
    let chaos = Chaos {
        rng: c.next() | 1,
        fail: c.below(80),
        hang: c.below(30),
    };
    let mut f = Fleet::start_with(s, infos.clone(), |f| {
        f.chaos = Some(chaos);
        f.faults = true;
        for i in &infos {
            if !i.reachable {
                f.down.insert(i.host.clone());
            }
        }
    });
    let ids: Vec<String> = f.sim.keys().cloned().collect();
    let hosts: Vec<String> = f.sim.values().map(|s| s.host.clone()).collect();
    let mut answered: Vec<(crate::rollout::CommandId, CommandOutcome)> = Vec::new();
    let limit = 12 * 3_600_000;
    let spec = f.engine.state().spec.clone();
    let slack = spec.progress_deadline + spec.longest_command();
    while !f.engine.is_finished() && f.now < limit {
        f.tick();
        // Nothing waits forever: without progress, the deadline or a command
        // timeout ends the wait.
        let idle = Millis(f.now).since(f.engine.state().last_progress);
        assert!(
            f.engine.is_finished() || idle <= slack + Duration::from_secs(1),
            "seed {seed}: idle for {idle:?}: {:#?}",
            f.status()
        );
        for (_, id, _, _) in f.sends.iter().rev().take(3) {
            if let Some(o) = f.answer(id) {
                answered.push((id.clone(), o));
            }
        }
        if chance(&mut c, 20) {
            let id = pick(&mut c, &ids);
            f.kill(&id);
        }
        if chance(&mut c, 40) {
            let id = pick(&mut c, &ids);
            f.revive(&id);
        }
        if chance(&mut c, 8) {
            let h = pick(&mut c, &hosts);
            f.host_lost(&h);
        }
        if chance(&mut c, 30) && !f.down.is_empty() {
            let down: Vec<String> = f.down.iter().cloned().collect();
            let h = pick(&mut c, &down);
            f.host_back(&h);
        }
        if chance(&mut c, 20) && !answered.is_empty() {
            let (id, outcome) = pick(&mut c, &answered);
            f.feed(Input::CommandResult { id, outcome });
        }
        if chance(&mut c, 10) {
            f.crash_and_restore();
        }
        if chance(&mut c, 4) {
            let a = pick(
                &mut c,
                &[
                    OperatorAction::Pause,
                    OperatorAction::Resume,
                    OperatorAction::Resume,
                    OperatorAction::Abort,
                    OperatorAction::Rollback,
                ],
            );
            f.operator(a);
        }
    }
    assert!(
        f.engine.is_finished(),
        "seed {seed}: no end: {:#?}",
        f.status()
    );
    check_end(seed, &f);
    match f.engine.outcome() {
        Some(Outcome::Succeeded) => "succeeded",
        Some(Outcome::Failed { .. }) => "failed",
        Some(Outcome::RolledBack { .. }) => "rolled back",
        Some(Outcome::Aborted { .. }) => "aborted",
        None => "running",
    }
    .to_string()
}

/// The end-state promises of each outcome.
fn check_end(seed: u64, f: &Fleet) {
    let st = f.status();
    assert_eq!(st.counts.in_progress, 0, "seed {seed}: chains left running");
    let sim = |id: &str| &f.sim[id];
    let outcome = f.engine.outcome().cloned();
    for i in &st.instances {
        let s = sim(&i.id);
        let lost = f.down.contains(&s.host);
        match (&outcome, i.step) {
            (Some(Outcome::Succeeded), step) => {
                assert!(
                    matches!(step, Step::Done | Step::Skipped),
                    "seed {seed}: {i:?}"
                );
                if step == Step::Done {
                    assert!(
                        s.release == Some(v2()) && s.in_service,
                        "seed {seed}: {i:?} {s:?}"
                    );
                }
            }
            (Some(Outcome::RolledBack { .. }), step) => {
                assert!(
                    matches!(step, Step::RolledBack | Step::Pending | Step::Skipped),
                    "seed {seed}: {i:?}"
                );
                if step == Step::RolledBack {
                    assert!(
                        s.release == Some(v1()) && s.in_service,
                        "seed {seed}: {i:?} {s:?}"
                    );
                }
            }
            (Some(Outcome::Aborted { reason }), step) => {
                if step == Step::Failed {
                    assert!(
                        reason.to_string().contains("not restored"),
                        "seed {seed}: {reason}"
                    );
                } else if !lost && step != Step::Skipped {
                    assert!(s.in_service, "seed {seed}: {i:?} {s:?}");
                    assert!(
                        s.release == Some(v1()) || s.release == Some(v2()),
                        "seed {seed}: {i:?}"
                    );
                }
            }
            _ => {}
        }
    }
}

#[test]
fn seeded_fault_schedules_keep_the_promises() {
    let seeds: u64 = std::env::var("ROLLOUT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut ends = std::collections::BTreeMap::<String, u32>::new();
    for seed in 1..=seeds {
        let end = std::panic::catch_unwind(|| run(seed))
            .unwrap_or_else(|_| panic!("seed {seed} broke a promise (see the panic above)"));
        *ends.entry(end).or_insert(0) += 1;
    }
    // The schedules must reach every kind of end, or they test too little.
    for kind in ["refused", "succeeded", "failed", "rolled back", "aborted"] {
        assert!(ends.contains_key(kind), "{ends:?}");
    }
    eprintln!("{ends:?}");
}
