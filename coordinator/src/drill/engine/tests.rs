//! The drill engine's unit tests and its seeded simulator: random plans,
//! outcomes, crashes (the engine rebuilt from its stored JSON), approvals
//! and aborts, with the invariants checked after every action.

use super::*;
use drover_model::drill::DrillPlan;

const PLAN_DB: &str = r#"
service = "web"
rto = "2m"
rpo = "5s"
[database]
lag = ["pg-lag"]
stop_writes = ["pg-stop-writes"]
promote = ["pg-promote"]
catch_up_timeout = "10s"
[verify]
hold = "2s"
timeout = "20s"
"#;

fn drill(text: &str, mode: Mode) -> Drill {
    let plan = DrillPlan::from_toml(text).expect("plan");
    Drill::new(
        "dr-1".into(),
        Kind::Drill,
        mode,
        text.into(),
        plan,
        "d".into(),
        "alice".into(),
        1_000,
        None,
        Vec::new(),
    )
}

fn lag(bytes: u64) -> Result<Lag, String> {
    Ok(Lag {
        bytes,
        seconds: bytes as f64 / 1e6,
    })
}

#[test]
fn a_graceful_drill_runs_its_steps_in_order_and_measures_the_recovery() {
    let mut d = drill(PLAN_DB, Mode::Graceful);
    assert_eq!(d.next(1_000), Action::WaitForInput);
    assert!(
        d.approve(1_500, "alice").is_err(),
        "the starter cannot approve"
    );
    d.approve(2_000, "bob").expect("approved");
    let mut t = 2_000;
    assert!(matches!(
        d.next(t),
        Action::Run {
            field: "database.stop_writes",
            ..
        }
    ));
    assert_eq!(d.switch_started_ms, Some(2_000));
    t += 100;
    d.on_command(t, true, "writes_stopped");
    assert!(matches!(d.next(t), Action::MeasureLag { .. }));
    let again = d.on_lag(t, lag(4096)).expect("looks again");
    assert!(matches!(d.next(again), Action::MeasureLag { .. }));
    d.on_lag(again, lag(0));
    t = again;
    assert!(matches!(
        d.next(t),
        Action::Run {
            field: "database.promote",
            ..
        }
    ));
    d.on_command(t + 200, true, "promoted=yes");
    t += 200;
    assert_eq!(d.next(t), Action::Switch(Toward::Target));
    d.on_switched(
        t + 50,
        Toward::Target,
        Ok("2 instances at weight 100".into()),
    );
    t += 50;
    assert_eq!(d.next(t), Action::CheckServing);
    // Not whole, then whole for the hold.
    let at = d.on_serving(t, false, "1 of 2").expect("again");
    let at = d.on_serving(at, true, "2 of 2").expect("again");
    let serving = d.serving_ms.expect("serving since");
    let mut at = at;
    while let Some(next) = d.on_serving(at, true, "2 of 2") {
        at = next;
    }
    assert_eq!(d.next(at), Action::Done);
    assert_eq!(d.phase, Phase::Succeeded, "{:?}", d.events);
    assert_eq!(d.recovery_ms(), Some(serving - 2_000));
    assert!(d.verified_ms.expect("verified") - serving >= 2_000);
    assert_eq!(d.lag_at_cutover.map(|l| l.bytes), Some(0));
    assert!(
        d.events
            .iter()
            .any(|e| e.message.contains("within the RTO"))
    );
}

/// Ungraceful, the primary gone: its lag cannot be read, so the DR
/// replica is asked what it replayed, and the window runs from its last
/// replayed transaction to when it last heard from the primary, or else
/// to the run's start.
#[test]
fn an_ungraceful_run_measures_the_loss_window_on_the_replica() {
    let plan = PLAN_DB.replace(
        "promote = [\"pg-promote\"]",
        "promote = [\"pg-promote\"]\nreplayed = [\"pg-replayed\", \"--port\", \"5433\"]",
    );
    // The replica no longer streams: the window ends at the run's start.
    let mut d = drill(&plan, Mode::Ungraceful);
    assert!(matches!(d.next(1_000), Action::MeasureLag { .. }));
    let again = d.on_lag(1_010, Err("exit 1: connection refused".into()));
    assert_eq!(again, Some(1_010), "asks the replica at once");
    let Action::MeasureReplayed { field, argv, .. } = d.next(1_010) else {
        panic!("the replica is asked")
    };
    assert_eq!(field, "database.replayed");
    assert_eq!(argv, ["pg-replayed", "--port", "5433"]);
    // Survives a crash between the two.
    let mut d: Drill =
        serde_json::from_str(&serde_json::to_string(&d).expect("encode")).expect("decode");
    assert!(matches!(d.next(1_020), Action::MeasureReplayed { .. }));
    d.on_replayed(
        1_030,
        Ok(Replayed {
            replayed_at: 0.250,
            heard_at: None,
        }),
    );
    assert_eq!(
        d.loss,
        Some(LossWindow {
            from_ms: 250,
            to_ms: 1_000,
            end: LossEnd::RunStarted,
        })
    );
    assert!(d.lag_at_cutover.is_none());
    let out = &d.step(StepName::CatchUp).expect("step").output;
    assert!(
        out.contains("0.750 s") && out.contains("connection refused"),
        "{out}"
    );
    assert!(matches!(
        d.next(1_030),
        Action::Run {
            field: "database.promote",
            ..
        }
    ));

    // Still streaming: the window ends when it last heard from the primary.
    let mut d = drill(&plan, Mode::Ungraceful);
    d.next(1_000);
    d.on_lag(1_010, Err("timeout".into()));
    d.next(1_010);
    d.on_replayed(
        1_020,
        Ok(Replayed {
            replayed_at: 0.5,
            heard_at: Some(0.8),
        }),
    );
    assert_eq!(
        d.loss.map(|w| (w.len_ms(), w.end)),
        Some((300, LossEnd::HeardFromPrimary))
    );

    // The replica cannot say: noted, and the run goes on.
    let mut d = drill(&plan, Mode::Ungraceful);
    d.next(1_000);
    d.on_lag(1_010, Err("timeout".into()));
    d.next(1_010);
    d.on_replayed(1_020, Err("exit 1: not in recovery".into()));
    assert!(d.loss.is_none());
    assert!(
        d.step(StepName::CatchUp)
            .expect("step")
            .output
            .contains("not measured")
    );
    assert!(matches!(
        d.next(1_020),
        Action::Run {
            field: "database.promote",
            ..
        }
    ));

    // A graceful run never asks the replica: it waits for the primary.
    let mut d = drill(&plan, Mode::Graceful);
    d.approve(1_000, "bob").expect("approve");
    let mut t = 1_000;
    loop {
        match d.next(t) {
            Action::Run { .. } => d.on_command(t, true, "ok"),
            Action::MeasureLag { .. } => {
                assert_eq!(d.on_lag(t, Err("exit 1".into())), Some(t + 500));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
        t += 10;
    }
    assert!(matches!(d.next(t + 500), Action::MeasureLag { .. }));
}

#[test]
fn a_failed_step_stops_and_abort_moves_traffic_back() {
    let mut d = drill(PLAN_DB, Mode::Ungraceful);
    // Ungraceful: no approval, no stop_writes; a lag that cannot be read is
    // noted, not waited on.
    assert!(matches!(d.next(0), Action::MeasureLag { .. }));
    d.on_lag(10, Err("the primary does not answer".into()));
    assert!(
        d.step(StepName::CatchUp)
            .expect("step")
            .output
            .contains("not measured")
    );
    assert!(matches!(
        d.next(10),
        Action::Run {
            field: "database.promote",
            ..
        }
    ));
    d.on_command(20, true, "promoted");
    assert_eq!(d.next(20), Action::Switch(Toward::Target));
    d.on_switched(30, Toward::Target, Ok("moved".into()));
    // The DR site never serves whole: verify times out, the drill fails,
    // traffic stays on DR until the abort moves it back.
    let mut t = 30;
    loop {
        match d.next(t) {
            Action::CheckServing => {
                t = d.on_serving(t, false, "0 of 2").unwrap_or(t);
            }
            Action::Done => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(d.phase, Phase::Failed);
    assert!(d.reason.starts_with("verify:"), "{}", d.reason);
    d.abort(t, "bob")
        .expect("abort a failed drill that moved traffic");
    assert_eq!(d.next(t), Action::Switch(Toward::Source));
    d.on_switched(t + 5, Toward::Source, Err("h1 did not answer".into()));
    assert_eq!(d.next(t + 5), Action::Switch(Toward::Source));
    d.on_switched(t + 9, Toward::Source, Ok("back".into()));
    assert_eq!(d.next(t + 9), Action::Done);
    assert_eq!(d.phase, Phase::Aborted);
    assert!(!d.traffic_moved);
    assert!(
        d.events
            .iter()
            .any(|e| e.message.contains("promotion stays"))
    );
    assert!(d.abort(t + 10, "bob").is_err(), "an aborted drill is over");
}

/// A tiny deterministic generator (xorshift), so seeds replay exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn random_plan(r: &mut Rng) -> String {
    let mut text = String::from("service = \"web\"\nrto = \"1m\"\nrpo = \"2s\"\n");
    if r.chance(30) {
        text.push_str("[approval]\nrequired = false\n");
    }
    if r.chance(30) {
        text.push_str("[traffic]\nvia = \"command\"\nswitch = [\"dns\", \"dr\"]\nswitch_back = [\"dns\", \"primary\"]\n");
    }
    if r.chance(75) {
        text.push_str("[database]\nlag = [\"pg-lag\"]\npromote = [\"pg-promote\"]\ncatch_up_timeout = \"5s\"\n");
        if r.chance(70) {
            text.push_str("stop_writes = [\"pg-stop-writes\"]\n");
        }
        let replayed = r.chance(50);
        if replayed {
            text.push_str("replayed = [\"pg-replayed\"]\n");
        }
        // The way back, for the fail-backs among the seeds.
        text.push_str("[database.failback]\nlag = [\"pg-lag\"]\npromote = [\"pg-promote\"]\n");
        if r.chance(70) {
            text.push_str("stop_writes = [\"pg-stop-writes\"]\n");
        }
        if replayed {
            text.push_str("replayed = [\"pg-replayed\"]\n");
        }
    }
    text.push_str("[verify]\nhold = \"1s\"\ntimeout = \"8s\"\n");
    text
}

/// Runs one seed; panics with the trace on a broken invariant.
fn simulate(seed: u64) {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let text = random_plan(&mut r);
    let mode = if r.chance(30) {
        Mode::Ungraceful
    } else {
        Mode::Graceful
    };
    let kind = match r.below(4) {
        0 => Kind::Failback,
        1 => Kind::Failover,
        _ => Kind::Drill,
    };
    let plan = DrillPlan::from_toml(&text).expect("plan");
    let mut d = Drill::new(
        "dr-1".into(),
        kind,
        mode,
        text.clone(),
        plan,
        "d".into(),
        "alice".into(),
        1_000,
        None,
        Vec::new(),
    );
    let mut now: Ms = 1_000;
    let mut trace: Vec<String> = Vec::new();
    let abort_at = r
        .chance(25)
        .then(|| 1_000 + i64::try_from(r.below(20_000)).unwrap_or(0));
    let mut aborted = false;
    let mut switched_to_target_at: Option<Ms> = None;
    for _ in 0..10_000 {
        // A crash: the engine comes back from what was stored.
        if r.chance(5) {
            let stored = serde_json::to_string(&d).expect("encode");
            d = serde_json::from_str(&stored).expect("decode");
            trace.push("crash".into());
        }
        if let Some(at) = abort_at
            && now >= at
            && !aborted
        {
            aborted = true;
            let ok = d.abort(now, "bob").is_ok();
            trace.push(format!("abort -> {ok}"));
        }
        let action = d.next(now);
        trace.push(format!("{now}: {action:?} [{:?}]", d.phase));
        let check = |cond: bool, what: &str, trace: &[String]| {
            assert!(
                cond,
                "seed {seed}: {what}\nplan:\n{text}\ntrace:\n{}",
                trace.join("\n")
            );
        };
        // A fail-back runs the plan's way back, the others its way out.
        if let Some((field, argv, _)) = action.command() {
            check(
                field.starts_with("database.failback.") == (d.kind == Kind::Failback),
                &format!("a {} ran {field}", d.kind.as_str()),
                &trace,
            );
            check(
                !argv.is_empty(),
                &format!("{field} ran with no command"),
                &trace,
            );
        }
        if let Action::MeasureReplayed { .. } = &action {
            // The replica is asked only when the primary could not be.
            check(
                mode == Mode::Ungraceful && d.primary_unreachable.is_some(),
                "asked the replica while the primary's lag was readable or the run graceful",
                &trace,
            );
        }
        match &action {
            Action::Switch(Toward::Target) => {
                // Never before the approval, the catch-up and the promotion.
                check(
                    !(d.plan.approval.required && mode == Mode::Graceful)
                        || d.approved_by.is_some(),
                    "traffic moved before the approval",
                    &trace,
                );
                for name in [StepName::StopWrites, StepName::CatchUp, StepName::Promote] {
                    let s = d.step(name).expect("step");
                    check(
                        matches!(s.state, StepState::Done | StepState::Skipped),
                        &format!("traffic moved before {} was done", name.as_str()),
                        &trace,
                    );
                }
                if mode == Mode::Graceful && d.plan.database.is_some() {
                    check(
                        d.lag_at_cutover.is_some_and(|l| l.bytes == 0),
                        "graceful switch with the replica behind",
                        &trace,
                    );
                }
                // A window measured on the replica never runs backwards,
                // and only stands in for a lag that was not read.
                if let Some(w) = d.loss {
                    check(
                        w.to_ms >= w.from_ms && d.lag_at_cutover.is_none(),
                        "a loss window backwards or beside a measured lag",
                        &trace,
                    );
                }
                check(
                    d.phase == Phase::Running,
                    "switched while not running",
                    &trace,
                );
                switched_to_target_at.get_or_insert(now);
            }
            Action::Switch(Toward::Source) => {
                check(
                    d.phase == Phase::Aborting,
                    "moved back while not aborting",
                    &trace,
                );
            }
            _ => {}
        }
        match action {
            Action::Done => break,
            Action::WaitForInput => {
                // An approval comes, sometimes first from the starter.
                now += 300;
                let by = if r.chance(20) { "alice" } else { "bob" };
                let ok = d.approve(now, by);
                check(
                    by != "alice" || ok.is_err(),
                    "the starter approved their own drill",
                    &trace,
                );
            }
            Action::WaitUntil(t) => now = now.max(t),
            Action::Run { .. } => {
                now += i64::try_from(r.below(400)).unwrap_or(0);
                let ok = !r.chance(8);
                d.on_command(now, ok, if ok { "exit 0" } else { "exit 1: refused" });
            }
            Action::MeasureLag { .. } => {
                now += 50;
                // An ungraceful run's primary is often gone.
                let gone = if mode == Mode::Ungraceful { 50 } else { 10 };
                let answer = if r.chance(gone) {
                    Err("exit 1".to_string())
                } else if r.chance(40) {
                    lag(0)
                } else {
                    lag(r.below(100_000) + 1)
                };
                if let Some(t) = d.on_lag(now, answer) {
                    now = t;
                }
            }
            Action::MeasureReplayed { .. } => {
                now += 50;
                let answer = if r.chance(15) {
                    Err("exit 1: the replica is not in recovery".to_string())
                } else {
                    let replayed_at =
                        (now - i64::try_from(r.below(5_000)).unwrap_or(0)) as f64 / 1000.0;
                    let heard_at = r
                        .chance(50)
                        .then(|| replayed_at + r.below(3_000) as f64 / 1000.0);
                    Ok(Replayed {
                        replayed_at,
                        heard_at,
                    })
                };
                d.on_replayed(now, answer);
            }
            Action::Switch(toward) => {
                now += i64::try_from(r.below(200)).unwrap_or(0);
                let result = if r.chance(10) {
                    Err("h3 did not answer".into())
                } else {
                    Ok("moved".into())
                };
                d.on_switched(now, toward, result);
            }
            Action::CheckServing => {
                now += 20;
                let whole = r.chance(85);
                if let Some(t) = d.on_serving(now, whole, if whole { "2 of 2" } else { "1 of 2" }) {
                    now = t;
                }
            }
        }
    }
    let done =
        |trace: &[String]| format!("seed {seed}\nplan:\n{text}\ntrace:\n{}", trace.join("\n"));
    assert!(
        d.phase.is_terminal() || d.phase == Phase::Aborting,
        "did not end: {}",
        done(&trace)
    );
    assert_eq!(d.next(now), Action::Done, "{}", done(&trace));
    match d.phase {
        Phase::Succeeded => {
            assert!(
                d.verified_ms.is_some() && d.recovery_ms().is_some_and(|r| r >= 0),
                "{}",
                done(&trace)
            );
            assert!(switched_to_target_at.is_some(), "{}", done(&trace));
            assert!(
                d.steps
                    .iter()
                    .all(|s| matches!(s.state, StepState::Done | StepState::Skipped)),
                "{}",
                done(&trace)
            );
        }
        Phase::Aborted => assert!(
            !d.traffic_moved,
            "aborted with traffic moved: {}",
            done(&trace)
        ),
        Phase::Failed => assert!(!d.reason.is_empty(), "{}", done(&trace)),
        _ => {}
    }
    for s in &d.steps {
        if let (Some(a), Some(b)) = (s.started_ms, s.ended_ms) {
            assert!(
                a <= b,
                "{} ended before it started: {}",
                s.name.as_str(),
                done(&trace)
            );
        }
    }
}

#[test]
fn the_simulator_holds_every_invariant_over_many_seeds() {
    let n: u64 = std::env::var("DRILL_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    for seed in 0..n {
        simulate(seed);
    }
}

#[test]
fn a_failback_runs_the_plans_way_back() {
    let text = format!(
        "{PLAN_DB}[database.failback]\nlag = [\"pg-lag\", \"--host\", \"dr-db\"]\n\
         stop_writes = [\"pg-stop-writes\", \"--host\", \"dr-db\"]\n\
         promote = [\"pg-promote\", \"--host\", \"primary-db\"]\n"
    );
    let plan = DrillPlan::from_toml(&text).expect("plan");
    let mut d = Drill::new(
        "dr-2".into(),
        Kind::Failback,
        Mode::Graceful,
        text.clone(),
        plan,
        "d".into(),
        "alice".into(),
        0,
        None,
        Vec::new(),
    );
    assert_eq!(d.target_site(), "site=primary");
    assert_eq!(d.source_site(), "site=dr");
    d.approve(1, "bob").expect("approve");
    let Action::Run { field, argv, .. } = d.next(1) else {
        panic!("expected stop_writes");
    };
    assert_eq!(field, "database.failback.stop_writes");
    assert_eq!(argv[2], "dr-db");
    d.on_command(2, true, "ok");
    let Action::MeasureLag { argv, .. } = d.next(2) else {
        panic!("expected the lag");
    };
    assert_eq!(argv[2], "dr-db");
    d.on_lag(3, lag(0));
    let Action::Run { field, argv, .. } = d.next(3) else {
        panic!("expected promote");
    };
    assert_eq!(
        (field, argv[2].as_str()),
        ("database.failback.promote", "primary-db")
    );
}

#[test]
fn the_latest_drill_that_moved_traffic_decides_who_holds_the_weights() {
    let at = |kind: Kind, started: Ms, phase: Phase, moved: bool| {
        let mut d = drill(PLAN_DB, Mode::Graceful);
        d.kind = kind;
        d.started_ms = started;
        d.phase = phase;
        d.traffic_moved = moved;
        d
    };
    let to_dr = at(Kind::Drill, 1, Phase::Succeeded, true);
    assert!(holds([&to_dr].into_iter()));
    // A fail-back that failed before moving anything: DR still holds.
    let failed_back = at(Kind::Failback, 2, Phase::Failed, false);
    assert!(holds([&to_dr, &failed_back].into_iter()));
    // One that failed half-way holds too (its abort moves it back).
    let half_back = at(Kind::Failback, 2, Phase::Failed, true);
    assert!(holds([&to_dr, &half_back].into_iter()));
    // A fail-back that finished put the configured weights back.
    let back = at(Kind::Failback, 3, Phase::Succeeded, true);
    assert!(!holds([&to_dr, &failed_back, &back].into_iter()));
    // A drill aborted back to the primary holds nothing.
    let aborted = at(Kind::Drill, 4, Phase::Aborted, false);
    assert!(!holds([&aborted].into_iter()));
    assert!(!holds(std::iter::empty()));
}
