//! Deterministic simulation of the rollout engine.
//!
//! One `u64` seed draws a fleet (1 to 200 instances, zones, some already on
//! the target, some unhealthy or unreachable, some that fail their health
//! check on the new release), a rollout spec (batch lists, floors as counts
//! and percentages, `max_unavailable`, spread, failure budgets,
//! auto-rollback, lost-host policy, timings) and how hostile the world is.
//! Then the real [`Engine`](super::Engine), inside the coordinator's real
//! runtime [`Driver`](crate::runner::driver::Driver) (every decision of
//! `runner/`: which reports reach the engine, re-asks on a new session, lost
//! hosts after a restore, whose results count, progress, the load
//! balancer's part in capacity), runs against simulated agents, a simulated
//! registry, network and clock, until the rollout ends or a promise breaks.
//! Only the runtime's I/O is simulated: one pass, its write, then its sends. Same seed, same run, byte for byte: nothing reads a wall
//! clock, iterates a hash map or draws from an outside RNG.
//!
//! Faults: commands that fail (sometimes after doing part of their work),
//! hang until the agent kills them, or run slow; health that fails after a
//! deploy, flaps, or goes because the instance crashed; agents that drop
//! their session briefly or long enough to be reported lost, keeping or
//! losing the results on the wire, restart (cutting off running steps,
//! replaying their journal), or are never seen again; command results and
//! commands delivered twice and out of order; a runtime whose ticks come
//! late; coordinator crashes between passes, before a pass's store write
//! and between its sends, after which the engine is rebuilt only from the
//! store; an operator who pauses, resumes, aborts and rolls back at
//! random; hosts that send results and progress for instances they do not
//! run or for ids outside the rollout; and load balancers whose own checks
//! put a restarted instance back seconds after its agent's check passed.
//!
//! After every step the checker (`check.rs`) holds the engine to the
//! issue's invariants:
//!
//! 1. capacity: each drain decided is judged against what the engine had
//!    been told (`check.rs`, `Checker::send`); in a world without faults,
//!    the fleet's real capacity is also counted after every event
//!    (`runtime.rs`, `Sim::real_capacity`);
//! 2. one command per instance: every command sent must be the next step of
//!    its instance's chain with nothing else in flight (`Checker::send`);
//!    no agent runs an id to the end twice (`world.rs`, `finish_job`);
//! 3. spread, with the capacity check (`Checker::send`);
//! 4. termination: something progresses at least every `progress_deadline`
//!    (`Checker::idle`, after every event), a reconnect asks again for what
//!    was in flight (`Checker::outputs`), and a run has a hard bound;
//! 5. end state: each outcome's promise against the agents' real state
//!    (`end_state.rs`);
//! 6. crash safety: nothing is sent before the write that decided it
//!    (`Checker::sending`), a restored engine holds exactly what the last
//!    write held and asks again for everything in flight
//!    (`Checker::restored`), and no step is decided twice (`Checker::send`).
//!
//! 7. runtime bounds: progress is kept only for instances of the rollout
//!    with a step in flight (`runtime.rs`, `Sim::progress_bounded`); a
//!    result from a host that does not run the instance never reaches the
//!    engine (invariant 2), and a new session is told to the engine as the
//!    host being back (invariant 4).
//! 8. traffic (canary seeds, about a quarter, drawn from a stream of their
//!    own so rolling seeds run as they always did): a step's chains start
//!    only once every earlier step had a passing final look, an
//!    inconclusive one under `on_inconclusive = pass`, or a promote, as the
//!    runtime saw them come out (`Checker::advance`, from the spec's plan
//!    and the sends, never the engine's bookkeeping); no weight command goes
//!    to an instance with a chain command or another weight command in
//!    flight, nor a chain command beside a weight command
//!    (`Checker::send_weight`); and at the end every weight drover set is
//!    back in the load balancer or named by the outcome, which names no
//!    other (`end_state.rs`, `Checker::weights_restored`).
//!
//! Canary seeds: every instance has one load balancer; a traffic clock
//! serves requests to the instances it routes to (running, healthy, not
//! drained, checked up, host there) in proportion to their weights, failed
//! at each release's rate (a bad canary fails 5 to 20 times as often,
//! some are 100 ms slower, some fleets get no traffic at all); agents
//! report the cumulative counters on their sessions, the registry hands
//! them to the real driver in `InstanceView.traffic`; the load balancer
//! sometimes restarts and its counters start again from 0; weight
//! commands fail and hang like any command; the operator also promotes,
//! and may watch for a held step to promote, resume or roll back.
//!
//! A failing seed comes back as a [`Failure`] with the one-line command that
//! replays it and the trace up to the violation.
//!
//! Run more seeds: `SIM_SEEDS=100000 SIM_SEED_START=1 cargo test -p
//! drover-coordinator --release --lib rollout::sim::tests::sweep`. Replay
//! one: `SIM_SEED=N cargo test -p drover-coordinator --release --lib
//! rollout::sim::tests::replay -- --exact --nocapture --ignored`. Find the
//! seeds that catch a broken variant: `SIM_BUG=CapacityOffByOne
//! SIM_SEEDS=1000 cargo test -p drover-coordinator --release --lib
//! rollout::sim::tests::hunt -- --exact --nocapture --ignored`. Both are
//! ignored tools, not checks: without `--ignored` they do not run.

#[macro_use]
mod trace;
mod check;
mod end_state;
mod rng;
mod runtime;
mod scenario;
mod store;
mod world;

#[cfg(test)]
mod tests;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

pub use check::Violation;
pub use runtime::Summary;
pub use scenario::Scenario;
pub use store::StoreKind;

use super::bugs::{self, Bug};
use runtime::Sim;

/// How to run a seed.
#[derive(Debug, Clone)]
pub struct Options {
    /// A deliberately broken engine variant to run instead of the real one.
    pub bug: Option<Bug>,
    pub store: StoreKind,
    /// Keep a trace (slower); a failure carries its last `trace_lines`.
    pub trace: bool,
    pub trace_lines: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            bug: None,
            store: StoreKind::Memory,
            trace: false,
            trace_lines: 400,
        }
    }
}

/// A seed that broke a promise.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub at_ms: u64,
    pub violation: Violation,
    /// The run up to the violation (empty unless traced).
    pub trace: String,
}

impl Failure {
    /// The one line that runs this seed again, with its trace.
    pub fn replay_command(&self, bug: Option<Bug>) -> String {
        let bug = bug.map_or_else(String::new, |b| format!("SIM_BUG={b} "));
        format!(
            "{bug}SIM_SEED={} cargo test -p drover-coordinator --release --lib rollout::sim::tests::replay -- --exact --nocapture --ignored",
            self.seed
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} broke {} at {}ms",
            self.seed, self.violation, self.at_ms
        )
    }
}

/// Runs one seed.
pub fn run(seed: u64, opts: &Options) -> Result<Summary, Failure> {
    run_traced(seed, opts).0
}

/// Runs one seed, and returns the trace too (empty unless `opts.trace`).
pub fn run_traced(seed: u64, opts: &Options) -> (Result<Summary, Failure>, String) {
    let _bug = bugs::inject(opts.bug);
    let sc = Scenario::generate(seed);
    let mut sim = match Sim::new(sc, opts.store.clone(), opts.trace) {
        Ok(sim) => sim,
        Err(e) => {
            let f = Failure {
                seed,
                at_ms: 0,
                violation: Violation {
                    invariant: 0,
                    what: format!("simulator setup: {e}"),
                },
                trace: String::new(),
            };
            return (Err(f), String::new());
        }
    };
    let result = catch_unwind(AssertUnwindSafe(|| sim.run()));
    let trace = sim.trace.text();
    let mut failure = match result {
        Ok(Ok(summary)) => return (Ok(summary), trace),
        Ok(Err(failure)) => failure,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            Failure {
                seed,
                at_ms: sim.now,
                violation: Violation {
                    invariant: 0,
                    what: format!("panicked: {msg}"),
                },
                trace: String::new(),
            }
        }
    };
    failure.trace = sim.trace.tail(opts.trace_lines);
    (Err(failure), trace)
}

/// Runs one seed fast; if it fails, runs it again with the trace on (the
/// same run, only recorded) and returns that failure.
pub fn check(seed: u64, bug: Option<Bug>) -> Result<Summary, Failure> {
    let opts = Options {
        bug,
        ..Options::default()
    };
    let first = match run(seed, &opts) {
        Ok(summary) => return Ok(summary),
        Err(f) => f,
    };
    let traced = Options {
        trace: true,
        ..opts
    };
    match run(seed, &traced) {
        Err(f) => Err(f),
        Ok(_) => Err(Failure {
            violation: Violation {
                invariant: 0,
                what: format!(
                    "not deterministic: failed untraced ({}) but passed traced",
                    first.violation
                ),
            },
            ..first
        }),
    }
}

/// The whole trace of a seed and how it ended.
pub fn trace_of(seed: u64, opts: &Options) -> String {
    let opts = Options {
        trace: true,
        ..opts.clone()
    };
    let (result, trace) = run_traced(seed, &opts);
    let end = match result {
        Ok(s) => format!("{s:?}"),
        Err(f) => f.to_string(),
    };
    format!("{trace}\n{end}")
}
