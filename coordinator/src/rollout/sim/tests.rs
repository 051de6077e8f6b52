//! The simulator's tests: a sweep of seeds split into shards (so the test
//! runner spreads them over the cores), the replay entry point, the teeth
//! (each broken engine variant is caught), determinism, the redb store,
//! and seeds that once found engine bugs.
//!
//! Environment: `SIM_SEEDS` (seeds of the sweep or the hunt, default 4,000),
//! `SIM_SEED_START` (first seed, default 1), `SIM_SEED` for `replay`,
//! `SIM_BUG` (a [`Bug`] variant's name) for `replay` and `hunt`,
//! `SIM_TRACE_LINES` (trace lines a failure shows, default 400).

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Failure, Options, StoreKind, check, run};
use crate::rollout::bugs::Bug;

const DEFAULT_SEEDS: u64 = 4_000;
const SHARDS: u64 = 8;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?}: expected a number"),
    }
}

fn report(f: &Failure, bug: Option<Bug>) -> String {
    format!("{f}\n\nreplay: {}\n\n{}\n", f.replay_command(bug), f.trace)
}

/// Seeds `start..start+count` whose offset is `shard` modulo [`SHARDS`].
fn sweep_shard(shard: u64) {
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("SIM_SEED_START").unwrap_or(1);
    let clock = Instant::now();
    let mut ends: BTreeMap<&str, u64> = BTreeMap::new();
    let mut canary: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut crashes, mut commands, mut ran) = (0u64, 0u64, 0u64);
    let mut slowest = (0.0f64, 0u64);
    for offset in (shard..count).step_by(usize::try_from(SHARDS).unwrap_or(1)) {
        let seed = start + offset;
        let one = Instant::now();
        let result = check(seed, None);
        let took = one.elapsed().as_secs_f64();
        if took > slowest.0 {
            slowest = (took, seed);
        }
        match result {
            Ok(s) => {
                *ends.entry(s.end).or_insert(0) += 1;
                if let Some(c) = s.canary {
                    *canary.entry(c).or_insert(0) += 1;
                }
                crashes += u64::from(s.crashes);
                commands += s.commands;
                ran += 1;
            }
            Err(f) => panic!("{}", report(&f, None)),
        }
    }
    let secs = clock.elapsed().as_secs_f64();
    eprintln!(
        "shard {shard}: {ran} seeds in {secs:.1}s ({:.0}/s, slowest seed {} {:.2}s), {commands} commands, {crashes} coordinator crashes, ends {ends:?}, canary {} {canary:?}",
        ran as f64 / secs.max(1e-9),
        slowest.1,
        slowest.0,
        canary.values().sum::<u64>()
    );
}

macro_rules! shards {
    ($($name:ident = $n:expr),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                sweep_shard($n);
            }
        )*
    };
}

shards!(
    sweep_0 = 0,
    sweep_1 = 1,
    sweep_2 = 2,
    sweep_3 = 3,
    sweep_4 = 4,
    sweep_5 = 5,
    sweep_6 = 6,
    sweep_7 = 7,
);

/// A tool, not a check (so ignored by default): `SIM_SEED=N
/// [SIM_BUG=Variant] cargo test ... rollout::sim::tests::replay -- --exact
/// --nocapture --ignored` (nextest: `--run-ignored only`) runs one seed
/// with its full trace.
#[test]
#[ignore = "a tool: set SIM_SEED and run with --ignored"]
fn replay() {
    let Some(seed) = env_u64("SIM_SEED") else {
        panic!("set SIM_SEED=N (and SIM_BUG=Variant to replay a broken variant)");
    };
    let bug = env_bug();
    let opts = Options {
        bug,
        trace: true,
        trace_lines: env_u64("SIM_TRACE_LINES")
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(400),
        ..Options::default()
    };
    match super::run_traced(seed, &opts) {
        (Ok(s), trace) => eprintln!("{trace}\n\nseed {seed}: {s:?}"),
        (Err(f), _) => panic!("{}", report(&f, bug)),
    }
}

fn env_bug() -> Option<Bug> {
    std::env::var("SIM_BUG").ok().map(|name| {
        Bug::all()
            .find(|b| b.to_string() == name)
            .unwrap_or_else(|| {
                panic!(
                    "SIM_BUG={name}: expected one of {:?}",
                    Bug::all().collect::<Vec<_>>()
                )
            })
    })
}

/// A tool, not a check (so ignored by default): `SIM_BUG=Variant
/// SIM_SEEDS=N cargo test ... rollout::sim::tests::hunt -- --exact
/// --nocapture --ignored` (nextest: `--run-ignored only`) prints the first
/// seeds that catch a broken variant.
#[test]
#[ignore = "a tool: set SIM_BUG and run with --ignored"]
fn hunt() {
    let Some(bug) = env_bug() else {
        panic!("set SIM_BUG=Variant (and SIM_SEEDS=N): the variant to hunt seeds for");
    };
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("SIM_SEED_START").unwrap_or(1);
    let caught: Vec<String> = (start..start + count)
        .filter_map(|seed| {
            let opts = Options {
                bug: Some(bug),
                ..Options::default()
            };
            run(seed, &opts).err().map(|f| f.to_string())
        })
        .take(5)
        .collect();
    eprintln!("{bug}: {caught:#?}");
}

/// Same seed, same run: the full traces of two runs are identical, and
/// tracing does not change the run.
#[test]
fn a_seed_replays_byte_for_byte() {
    // 25 and 87 are canary seeds.
    for seed in [1, 2, 3, 17, 25, 87, 99, 1000] {
        let opts = Options::default();
        let a = super::trace_of(seed, &opts);
        let b = super::trace_of(seed, &opts);
        assert!(a.lines().count() > 10, "seed {seed}: trace too short");
        assert_eq!(a, b, "seed {seed} ran differently twice");
        let untraced = run(seed, &opts).map_err(|f| f.to_string());
        let traced = super::run_traced(
            seed,
            &Options {
                trace: true,
                ..opts
            },
        )
        .0
        .map_err(|f| f.to_string());
        assert_eq!(untraced, traced, "seed {seed}: tracing changed the run");
    }
}

/// Seeds that crash the coordinator run exactly the same through the real
/// redb store (JSON on every write, the database closed and reopened at
/// every crash) as through the in-memory store.
#[test]
fn redb_store_runs_the_same() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut compared = Vec::new();
    for seed in 1..=2_000u64 {
        if compared.len() == 8 {
            break;
        }
        if super::Scenario::generate(seed).fleet.len() > 16 {
            continue;
        }
        let mem = match run(seed, &Options::default()) {
            Ok(s) if s.crashes > 0 => s,
            Ok(_) => continue,
            Err(f) => panic!("{}", report(&f, None)),
        };
        let path = dir.path().join(format!("seed-{seed}.redb"));
        let opts = Options {
            store: StoreKind::Redb(path),
            ..Options::default()
        };
        match run(seed, &opts) {
            Ok(redb) => assert_eq!(mem, redb, "seed {seed}"),
            Err(f) => panic!("{}", report(&f, None)),
        }
        compared.push(seed);
    }
    assert_eq!(compared.len(), 8, "too few seeds crash the coordinator");
    eprintln!("same through redb: seeds {compared:?}");
}

/// Seeds a deliberately broken variant gets before the checker must have
/// caught it.
const TEETH_LIMIT: u64 = 1_000;

fn first_caught(bug: Bug, limit: u64) -> (u64, Failure) {
    let opts = Options {
        bug: Some(bug),
        ..Options::default()
    };
    for seed in 1..=limit {
        if let Err(f) = run(seed, &opts) {
            return (seed, f);
        }
    }
    panic!("{bug} survived {limit} seeds: the checker has no teeth for it");
}

macro_rules! teeth {
    ($($name:ident = $bug:ident),* $(,)?) => {
        $(
            /// The checker catches this broken engine variant within
            /// [`TEETH_LIMIT`] seeds.
            #[test]
            fn $name() {
                let (seed, f) = first_caught(Bug::$bug, TEETH_LIMIT);
                eprintln!("{}: caught by seed {seed}: {}", Bug::$bug, f.violation);
            }
        )*
        /// Every deliberately broken variant has its test above.
        #[test]
        fn every_deliberate_variant_has_a_teeth_test() {
            let tested = [$(Bug::$bug),*];
            assert_eq!(tested.as_slice(), Bug::DELIBERATE.as_slice());
        }
    };
}

teeth!(
    catches_capacity_off_by_one = CapacityOffByOne,
    catches_no_persist_before_send = NoPersistBeforeSend,
    catches_rollback_ignoring_the_floor = RollbackIgnoresFloor,
    catches_spread_ignored = SpreadIgnored,
    catches_duplicate_send_on_resume = DuplicateSendOnResume,
    catches_restore_forgetting_in_flight = RestoreForgetsInFlight,
    catches_paused_never_timing_out = PausedNeverTimesOut,
    catches_failures_counted_as_success = FailuresCountAsSuccess,
    catches_a_step_passed_without_a_verdict = StepPassesWithoutVerdict,
    catches_weights_kept_on_rollback = WeightsKeptOnRollback,
    catches_a_weight_during_a_chain = WeightDuringChain,
    catches_reask_dropped_on_reconnect = ReaskDroppedOnReconnect,
    catches_results_from_any_host = ResultFromAnyHost,
    catches_progress_outside_the_rollout = ProgressOutsideRollout,
    catches_the_load_balancer_ignored = LoadBalancerIgnored,
);

/// An engine bug the simulator found: `seed` reaches it (the bug, switched
/// back on, is caught there) and the fixed engine keeps every promise on it.
fn stays_fixed(bug: Bug, seed: u64, invariant: u8) {
    let broken = run(
        seed,
        &Options {
            bug: Some(bug),
            ..Options::default()
        },
    );
    match broken {
        Err(f) => assert_eq!(
            f.violation.invariant, invariant,
            "seed {seed} with {bug}: {f}"
        ),
        Ok(s) => panic!(
            "seed {seed} no longer reaches {bug} ({s:?}); the scenario generator changed: \
             find a new seed with SIM_BUG={bug} SIM_SEEDS=20000 cargo test -p drover-coordinator \
             --release --lib rollout::sim::tests::hunt -- --exact --nocapture --ignored"
        ),
    }
    if let Err(f) = check(seed, None) {
        panic!("{}", report(&f, None));
    }
}

/// Seed 175: during an operator abort the rollback of a failed instance
/// fails its verify on a host that is there; the rollout ended Aborted ("not
/// restored") with the instance drained, breaking invariant 5 (Aborted
/// promises every instance on old or new and in service unless its host is
/// lost). Now such an abort ends Failed ("abort incomplete").
#[test]
fn regression_seed_175_abort_that_strands_an_instance_is_not_aborted() {
    stays_fixed(Bug::AbortedWhileStranded, 175, 5);
}

/// Seed 24 first (seed 203 since chains start with a stage): a failed
/// instance always cost nothing to take down, so a
/// rollback drained one that its reports showed healthy and in service
/// (its failed step had been a drain that did not happen, or an undrain
/// that worked after timing out) with capacity already under the floor
/// (invariant 1). Now a failed instance is free to take only when drover
/// knows it drained it (it failed between its drain and its undrain).
#[test]
fn regression_seed_203_failed_instances_are_not_free_to_take() {
    stays_fixed(Bug::FailedTakenForFree, 203, 1);
}

/// Seed 5530 first: a host came back after its in-flight command's
/// deadline had passed but before the tick that would time it out; the
/// engine re-sent the command and timed it out in the same call, so the
/// agent ran a step nobody waited for (invariant 2). The engine now times
/// out what is due before it looks at any input of a call. Since inputs
/// arrive in passes, seed 62 (seed 633 since the simulator runs the
/// runtime's driver and chains start with a stage) reaches the same broken
/// order first: a result arriving exactly at its deadline was taken after
/// the step had timed out, and the next step went out (invariant 2).
#[test]
fn regression_seed_633_due_steps_time_out_before_inputs() {
    stays_fixed(Bug::ResendPastDeadline, 633, 2);
}

/// Seed 627 (87 until failed weights were tried again; canary seeds since
/// the simulator shifts traffic): the rollout stopped while a weight
/// command was still running, and the rollback's first chain went to that
/// instance (the agent answers "busy", invariant 8). Stopping now waits
/// for weight commands as it waits for chains.
#[test]
fn regression_seed_627_stopping_waits_for_weight_commands() {
    stays_fixed(Bug::StoppingIgnoresWeights, 627, 8);
}

/// Seed 206: a step still inconclusive when its bake ended looks on until
/// `max_analysis`, but the bake's end stayed due, so the runtime woke and
/// the engine stored a look every millisecond (invariant 4: no end within
/// the run's bound). It now looks every interval.
#[test]
fn regression_seed_206_a_bake_over_looks_every_interval() {
    stays_fixed(Bug::LooksEveryTickAfterBake, 206, 4);
}

/// A quarter of the seeds or so are canaries, and a seed that stays
/// rolling draws what it always drew (its canary draws come from a stream
/// of their own).
#[test]
fn canary_seeds_are_a_share_and_rolling_seeds_are_unchanged() {
    let (mut canary, mut blue_green) = (0, 0);
    for s in 1..=2_000u64 {
        let sc = super::Scenario::generate(s);
        match (&sc.canary, &sc.blue_green) {
            (Some(_), None) => canary += 1,
            (Some(_), Some(_)) => blue_green += 1,
            _ => {}
        }
    }
    assert!(
        (350..=650).contains(&canary),
        "{canary} canary seeds of 2,000"
    );
    assert!(
        (150..=320).contains(&blue_green),
        "{blue_green} blue-green seeds of 2,000"
    );
    let sc = super::Scenario::generate(1);
    assert!(sc.canary.is_none(), "seed 1 is expected to stay rolling");
    assert_eq!(sc.spec.strategy, drover_model::Strategy::Rolling);
    assert!(sc.fleet.iter().all(|m| m.info.balancers.is_empty()));
}

/// A tool, not a check (so ignored by default): `SIM_SEEDS=N cargo test
/// ... rollout::sim::tests::canary_figures -- --exact --nocapture
/// --ignored` prints how the canary seeds ended, by world and release.
#[test]
#[ignore = "a tool: prints how canary seeds end"]
fn canary_figures() {
    let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let start = env_u64("SIM_SEED_START").unwrap_or(1);
    let mut by: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
    for seed in start..start + count {
        let sc = super::Scenario::generate(seed);
        let Some(c) = &sc.canary else { continue };
        let world = if sc.profile.calm { "calm" } else { "storm" };
        let release = if c.v2_ppm > c.v1_ppm {
            "errors"
        } else if c.v2_ms > c.v1_ms {
            "slow"
        } else {
            "good"
        };
        let traffic = if c.rps <= 1 { "no traffic" } else { "traffic" };
        let key = format!("{world}, {release}, {traffic}");
        let end = match check(seed, None) {
            Ok(s) => s.canary.unwrap_or("?"),
            Err(f) => panic!("{}", report(&f, None)),
        };
        // SIM_SHOW="calm/succeeded" (or "/refused"): list the seeds of a kind.
        let show = std::env::var("SIM_SHOW").ok();
        if let Some((kind, how)) = show.as_deref().and_then(|w| w.split_once('/'))
            && key.starts_with(kind)
            && end == how
        {
            eprintln!("seed {seed}: {key}: {end}");
        }
        *by.entry(key).or_default().entry(end).or_insert(0) += 1;
    }
    for (k, ends) in &by {
        eprintln!("{k}: {} {ends:?}", ends.values().sum::<u64>());
    }
}

/// Seed 73154 (found by the 100,000-seed sweep): a canary step whose only
/// canary failed (within the budget) baked with no canary arm, looking at
/// nothing until `max_analysis`, and so did every step after it (invariant
/// 4: nothing happened for longer than the progress deadline). A step now
/// counts the instances that carry its share and updates another.
#[test]
fn regression_seed_73154_a_step_updates_another_when_its_canary_fails() {
    stays_fixed(Bug::StepCountsChainsNotCarriers, 73154, 4);
}
