//! A read-only view of a rollout for `drover rollout status|watch`.

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::model::{Direction, Millis, Outcome, Step};
use super::spec::Release;
use super::state::{Mode, RestoreKind, Then, count};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Paused,
    /// Finishing in-flight instances before failing, rolling back or aborting.
    Stopping,
    RollingBack,
    /// Returning failed instances to their previous release after an abort.
    Aborting,
    Succeeded,
    Failed,
    RolledBack,
    Aborted,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded | Phase::Failed | Phase::RolledBack | Phase::Aborted
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub id: String,
    pub host: String,
    pub step: Step,
    pub direction: Direction,
    /// 1-based batch its update started in.
    pub batch: Option<u32>,
    pub release: Option<Release>,
    pub previous: Option<Release>,
    /// Counted in capacity right now.
    pub available: bool,
    pub reachable: bool,
    /// Why the update, or the rollback, failed.
    pub error: Option<String>,
    /// Why it was skipped or left as it was.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub total: u32,
    pub pending: u32,
    pub in_progress: u32,
    pub done: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Skipped or timed out because their host was lost.
    pub unreachable: u32,
    pub rolled_back: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    pub service: String,
    pub target: Release,
    pub phase: Phase,
    /// Why it is stopping, rolling back or aborting.
    pub reason: Option<String>,
    pub outcome: Option<Outcome>,
    /// 1-based current batch.
    pub batch: u32,
    pub counts: Counts,
    pub capacity: u32,
    pub floor: u32,
    pub lowest_capacity: u32,
    pub wait_reason: Option<String>,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub instances: Vec<InstanceStatus>,
}

impl Engine {
    pub fn status(&self) -> Status {
        let st = self.state();
        let (phase, reason) = match &st.mode {
            Mode::Forward if st.paused => (Phase::Paused, None),
            Mode::Forward => (Phase::Running, None),
            Mode::Stopping { reason, then } => (
                match then {
                    Then::Fail | Then::Rollback => Phase::Stopping,
                    Then::Abort => Phase::Aborting,
                },
                Some(reason.clone()),
            ),
            Mode::Restoring { .. } if st.paused => (Phase::Paused, None),
            Mode::Restoring { reason, kind } => (
                match kind {
                    RestoreKind::Rollback => Phase::RollingBack,
                    RestoreKind::Abort => Phase::Aborting,
                },
                Some(reason.clone()),
            ),
            Mode::Finished(o) => (
                match o {
                    Outcome::Succeeded => Phase::Succeeded,
                    Outcome::Failed { .. } => Phase::Failed,
                    Outcome::RolledBack { .. } => Phase::RolledBack,
                    Outcome::Aborted { .. } => Phase::Aborted,
                },
                None,
            ),
        };
        let by = |step: Step| count(st.instances.iter().filter(|i| i.step == step));
        let counts = Counts {
            total: st.limits.total,
            pending: by(Step::Pending),
            in_progress: count(st.instances.iter().filter(|i| i.step.in_chain())),
            done: by(Step::Done),
            failed: by(Step::Failed),
            skipped: by(Step::Skipped),
            unreachable: st.unreachable_count(),
            rolled_back: by(Step::RolledBack),
        };
        let instances = (st.instances.iter())
            .map(|i| InstanceStatus {
                id: i.id.clone(),
                host: i.host.clone(),
                step: i.step,
                direction: i.direction,
                batch: i.batch,
                release: i.observed.release.clone(),
                previous: i.previous.clone(),
                available: i.available(),
                reachable: i.observed.reachable,
                error: (i.rollback_fault.as_ref())
                    .map(|f| format!("rollback {f}"))
                    .or_else(|| i.fault.as_ref().map(ToString::to_string)),
                note: i.left.clone().or_else(|| {
                    i.skipped.map(|s| {
                        match s {
                            super::state::SkipReason::OnTarget => "already on the target release",
                            super::state::SkipReason::Unreachable => "host lost",
                        }
                        .to_string()
                    })
                }),
            })
            .collect();
        Status {
            id: st.id.clone(),
            service: st.spec.service.clone(),
            target: st.spec.target.clone(),
            phase,
            reason,
            outcome: st.outcome().cloned(),
            batch: st.batch + 1,
            counts,
            capacity: st.capacity(),
            floor: st.limits.floor,
            lowest_capacity: st.lowest_capacity,
            wait_reason: st.wait_reason.clone(),
            started_at: st.started_at,
            finished_at: st.finished_at,
            instances,
        }
    }
}
