//! Deliberately broken variants of the engine and of the runtime's driver,
//! for proving that the simulator's invariant checker can fail (see
//! [`sim`](super::sim)).
//!
//! This module and every line that consults it exist only in test builds and
//! builds with the `sim` feature: each decision point reads
//! `#[cfg(any(test, feature = "sim"))] let x = if bugs::on(..) { .. } else { x };`,
//! so a release build of the coordinator contains none of it. The switch is
//! per thread, so tests running side by side do not see each other's bug.

use std::cell::Cell;
use std::fmt;

/// One way to break the engine, each at the exact decision it corrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// The floor check lets capacity drop one under the floor.
    CapacityOffByOne,
    /// Advancing a chain (a result in, the next step out) forgets to ask
    /// for a Persist, so the Send goes out before the state is stored.
    NoPersistBeforeSend,
    /// Rollback and abort take instances down without looking at the floor.
    RollbackIgnoresFloor,
    /// `spread_by` is never consulted.
    SpreadIgnored,
    /// Resume asks again for every in-flight step under a new command id.
    DuplicateSendOnResume,
    /// A restored engine puts instances that were mid-chain back to Pending
    /// and forgets their in-flight commands.
    RestoreForgetsInFlight,
    /// The progress deadline does not run while paused.
    PausedNeverTimesOut,
    /// Failures within the budget still end the rollout Succeeded.
    FailuresCountAsSuccess,
    /// Canary: the bake's end passes the step even when its final look is
    /// inconclusive or the analysis never looked.
    StepPassesWithoutVerdict,
    /// Canary: a rollback ends without putting the weights back.
    WeightsKeptOnRollback,
    /// Canary: a step's weights are sent once its chains started, while
    /// they are still in flight (the updated instances among them).
    WeightDuringChain,
    // Engine bugs the simulator found, fixed, and kept here as they were so
    // that their seeds stay regression tests that provably reach the bug.
    /// An abort that could not return a failed instance on a live host still
    /// ended Aborted (which promises everyone on old or new, in service).
    AbortedWhileStranded,
    /// A failed instance always cost nothing to take down, though its drain
    /// may have failed or its undrain worked after timing out: a rollback
    /// took a serving instance down under the floor.
    FailedTakenForFree,
    /// Inputs were handled before what was due timed out: a result as late
    /// as its deadline was taken after the checker's clock had failed the
    /// step, and a reconnect could re-send a command past its deadline,
    /// which the same call then timed out (the agent ran a step nobody
    /// waited for).
    ResendPastDeadline,
    /// Stopping waited only for chains, not for weight commands: a
    /// rollback's chain went to an instance whose weight command was still
    /// running (the agent answers "busy").
    StoppingIgnoresWeights,
    /// A step still inconclusive at the end of its bake (looking on until
    /// `max_analysis`) looked at every tick, not every interval: the bake's
    /// end stayed due, so the runtime woke every millisecond and stored a
    /// look each time.
    LooksEveryTickAfterBake,
    /// A canary step counted the chains it started, not the instances that
    /// carry its share: when its canary's chain failed (within the budget)
    /// the step baked with no canary at all, and the next steps did too,
    /// each until `max_analysis`, looking at nothing.
    StepCountsChainsNotCarriers,
    // Broken variants of the runtime's driver (`runner/driver.rs`), which
    // the simulator runs as the coordinator does.
    /// A new agent session does not ask again for what was in flight on
    /// the old one.
    ReaskDroppedOnReconnect,
    /// A command result is taken from whichever host sends it, not only
    /// from the host that runs the instance.
    ResultFromAnyHost,
    /// Progress messages are kept for any id, in this rollout or not, in
    /// flight or not: the map readers see grows without bound.
    ProgressOutsideRollout,
    /// Capacity counts an instance in service on its agent's word alone,
    /// though its load balancer does not route to it yet.
    LoadBalancerIgnored,
}

impl Bug {
    /// The deliberately broken variants: the checker must catch each within
    /// a fixed number of seeds.
    pub const DELIBERATE: [Bug; 15] = [
        Bug::CapacityOffByOne,
        Bug::NoPersistBeforeSend,
        Bug::RollbackIgnoresFloor,
        Bug::SpreadIgnored,
        Bug::DuplicateSendOnResume,
        Bug::RestoreForgetsInFlight,
        Bug::PausedNeverTimesOut,
        Bug::FailuresCountAsSuccess,
        Bug::StepPassesWithoutVerdict,
        Bug::WeightsKeptOnRollback,
        Bug::WeightDuringChain,
        Bug::ReaskDroppedOnReconnect,
        Bug::ResultFromAnyHost,
        Bug::ProgressOutsideRollout,
        Bug::LoadBalancerIgnored,
    ];

    /// Engine bugs the simulator found (fixed; see each variant).
    pub const FOUND: [Bug; 6] = [
        Bug::AbortedWhileStranded,
        Bug::FailedTakenForFree,
        Bug::ResendPastDeadline,
        Bug::StoppingIgnoresWeights,
        Bug::LooksEveryTickAfterBake,
        Bug::StepCountsChainsNotCarriers,
    ];

    /// Every variant: the deliberate ones, then those found.
    pub fn all() -> impl Iterator<Item = Bug> {
        Bug::DELIBERATE.into_iter().chain(Bug::FOUND)
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

thread_local! {
    static ACTIVE: Cell<Option<Bug>> = const { Cell::new(None) };
}

/// Whether `bug` is switched on for this thread.
pub fn on(bug: Bug) -> bool {
    ACTIVE.with(|a| a.get() == Some(bug))
}

/// Switches `bug` on for this thread until the guard drops.
#[must_use = "the bug is switched off again when the guard drops"]
pub fn inject(bug: Option<Bug>) -> Injected {
    let before = ACTIVE.with(|a| a.replace(bug));
    Injected { before }
}

/// Restores the previous setting on drop, even when the run panics.
#[derive(Debug)]
pub struct Injected {
    before: Option<Bug>,
}

impl Drop for Injected {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.before));
    }
}
