//! Rolling updates: a sans-IO engine that moves a set of instances to a
//! target release batch by batch without pushing serving capacity under the
//! operator's floor.
//!
//! The runtime (coordinator service, simulator, tests) owns all I/O: it calls
//! [`Engine::handle_all`] with the current time and the [`Input`]s that
//! arrived together, and performs the returned [`Output`]s in order. Same
//! inputs, same outputs, byte for byte.
//!
//! # Rules
//!
//! - Each instance walks Pending -> Staging -> Draining -> Stopping ->
//!   Deploying -> Starting -> Verifying -> Undraining -> Done, one command
//!   in flight at a time. Staging fetches, verifies and unpacks the release
//!   while the instance still serves, so a bad or unreachable artifact fails
//!   there, before it leaves service. A failed or timed-out command leaves
//!   it Failed; only a rollback or an abort brings it back. Instances
//!   already on the target are Skipped. Rollback walks the same steps toward
//!   the instance's release at start and ends RolledBack; an instance that
//!   failed while staging was never changed, so a rollback or abort marks it
//!   RolledBack without sending it anything.
//! - capacity = target instances healthy, in service, reachable and not held
//!   by drover (mid-chain, staging included, or failed, except failed while
//!   staging: that never touched what serves, so its reports count as they
//!   are). An instance is only taken down if the others still hold the
//!   floor, the chains in flight stay within `max_unavailable`, and its
//!   spread-label value keeps at most K unavailable; the check is made when
//!   its chain starts, at the stage. An instance known to be unavailable
//!   costs nothing; a failed one only when drover knows it drained it (it
//!   failed after its drain and before its undrain). One that failed at the
//!   drain or the undrain may be serving whatever its reports say (a
//!   timed-out drain may still run, a timed-out undrain may have worked), so
//!   it costs capacity.
//! - Percentages resolve against every target instance: `min_healthy` rounds
//!   up, batches, `max_unavailable`, `max_failures` and `max_unreachable`
//!   round down (batches and `max_unavailable` at least 1).
//! - Batches come from the list (the last repeats). A batch starts what the
//!   limits allow and the rest as room frees up; the next batch starts once
//!   every instance of the current one has finished.
//! - Lost hosts: under `skip` their pending instances are skipped and counted
//!   against `max_unreachable`; under `wait` they wait. A command that times
//!   out while its host is lost counts as unreachable, not failed.
//! - The rollout fails when nothing progressed (a chain started, a command
//!   answered or timed out, a rollback started, a resume, a restore) for
//!   `progress_deadline`, including while paused. Command timeouts are shorter
//!   than that deadline, so nothing waits forever as long as ticks come.
//! - Too many failures or lost instances stop the rollout: in-flight chains
//!   finish, then it fails, or with `auto_rollback` returns every touched
//!   instance to its previous release, latest first, under the same limits.
//!   Abort finishes in-flight chains and returns only failed instances; if
//!   one of them cannot be returned while its host is there, the rollout
//!   ends Failed rather than Aborted (Aborted promises every instance on its
//!   old or new release and in service, unless its host is lost).
//!   Failures within the budget let the rollout go on, but it ends Failed.
//! - Canary (`strategy = canary`, see [`traffic`]): the batches are traffic
//!   steps, each followed by weights and a bake judged by `drover-analysis`;
//!   a canary never fails in place (budget, deadline and analysis failures
//!   roll it back) and puts every weight back before it ends. Blue-green is
//!   refused after its pairs are checked (see [`bluegreen`]).

//! # What the runtime must do
//!
//! - On every [`Output::Persist`] (always first in its batch) write
//!   [`Engine::persist_writes`] (see [`persist`]) before performing the
//!   outputs after it; store the batch's events in the same write.
//! - Deliver each `Send` to the instance's agent with its id and timeout; the
//!   agent journals results by id and answers a repeated id from the journal.
//! - Feed `Health` for every target instance on every report, `HostLost` /
//!   `HostBack` from the registry (and `HostBack` on every reconnect), and
//!   `Tick` at least every second or at [`Engine::next_deadline`].
//! - After a crash, [`Engine::restore`] from the last persisted state and feed
//!   fresh `Health` for every instance: nothing new starts until they report.

pub mod bluegreen;
#[cfg(any(test, feature = "sim"))]
pub mod bugs;
mod chain;
mod engine;
mod model;
mod modes;
pub mod persist;
mod plan;
mod reason;
mod room;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod state;
mod status;
pub mod traffic;

#[cfg(test)]
mod tests;

// The spec, amounts and their validation live in `drover-model`, shared
// with the CLI; these keep `crate::rollout::RolloutSpec` and the module paths
// `rollout::spec` / `rollout::amount` working.
pub use drover_model::{amount, spec};

pub use amount::{Amount, AmountError, parse_batches};
pub use engine::{Engine, PlanError};
pub use model::{
    BalancerInfo, CommandId, CommandKind, CommandOutcome, Direction, Fault, Input, InstanceInfo,
    Millis, OperatorAction, Outcome, Output, RolloutEvent, Step,
};
pub use plan::{Plan, PlannedBatch, PlannedSkip, PlannedTrafficStep};
pub use reason::{Block, StopReason, Unfinished};
pub use spec::{DigestRule, LostHostPolicy, Release, RolloutSpec, SpecError, Spread};
pub use state::RolloutState;
pub use status::{Counts, InstanceStatus, Phase, Status, StatusCache, TrafficStage, TrafficStatus};
