//! A read-only view of a rollout for `drover rollout status|watch`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::model::{Direction, Millis, Outcome, Step};
use super::reason::{Block, StopReason};
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

/// Where a canary's traffic steps are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficStatus {
    pub steps: Vec<drover_model::Share>,
    /// 1-based.
    pub step: u32,
    pub stage: TrafficStage,
    pub counting_from: Option<Millis>,
    pub bake_ends_at: Option<Millis>,
    pub looks: u32,
    pub last_look: Option<String>,
    pub results: Vec<super::traffic::StepResult>,
    /// Blue-green: the color that served at start (the old one).
    pub active_color: Option<drover_model::Color>,
    /// Blue-green: when keep-old ends, while the old color is kept.
    pub keep_old_until: Option<Millis>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficStage {
    Updating,
    Weighting,
    Baking,
    Held,
    Passed,
    /// Blue-green: taking the idle color out of traffic.
    Isolating,
    /// Blue-green: the pre-traffic hook runs.
    Hook,
    /// Blue-green: all traffic on the new color, the old one drained and
    /// kept (`bake_ends_at` is when keep-old ends, once known).
    Switched,
    /// Blue-green: stopping the old color.
    Retiring,
    /// Blue-green: the old color is stopped.
    Retired,
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
    pub reason: Option<StopReason>,
    pub outcome: Option<Outcome>,
    /// 1-based current batch.
    pub batch: u32,
    pub counts: Counts,
    pub capacity: u32,
    pub floor: u32,
    pub lowest_capacity: u32,
    pub wait_reason: Option<Block>,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    /// Canary: its traffic steps; `None` for a rolling update.
    pub traffic: Option<TrafficStatus>,
    /// Shared with the snapshot before it where unchanged.
    pub instances: Vec<Arc<InstanceStatus>>,
}

/// The instances of the last [`Engine::status_from`], to rebuild only those
/// changed since: a runner publishes a status on every pass, and at 10,000
/// instances rebuilding each would cost more than the pass itself.
#[derive(Debug, Default)]
pub struct StatusCache {
    instances: Vec<Arc<InstanceStatus>>,
    /// [`Engine::changed_at`] of each instance when it was built.
    built_at: Vec<u64>,
}

impl Engine {
    /// The status, every instance built afresh.
    pub fn status(&self) -> Status {
        self.status_with(None)
    }

    /// The status, rebuilding only the instances changed since `cache` was
    /// last used with this engine.
    pub fn status_from(&self, cache: &mut StatusCache) -> Status {
        self.status_with(Some(cache))
    }

    fn instance_status(&self, n: usize) -> InstanceStatus {
        let i = &self.state().instances[n];
        InstanceStatus {
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
                        super::state::SkipReason::ServingColor => "the serving color (old)",
                    }
                    .to_string()
                })
            }),
        }
    }

    fn status_with(&self, cache: Option<&mut StatusCache>) -> Status {
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
            Mode::Unweighting { outcome } => match outcome {
                Outcome::Succeeded => (Phase::Running, None),
                Outcome::Failed { reason } => (Phase::Stopping, Some(reason.clone())),
                Outcome::RolledBack { reason } => (Phase::RollingBack, Some(reason.clone())),
                Outcome::Aborted { reason } => (Phase::Aborting, Some(reason.clone())),
            },
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
        let instances = match cache {
            None => (0..st.instances.len())
                .map(|n| Arc::new(self.instance_status(n)))
                .collect(),
            Some(c) => {
                if c.instances.len() != st.instances.len() {
                    *c = StatusCache::default();
                }
                for n in 0..st.instances.len() {
                    let at = self.changed_at(n);
                    match c.built_at.get(n) {
                        Some(&built) if built == at => {}
                        Some(_) => {
                            c.instances[n] = Arc::new(self.instance_status(n));
                            c.built_at[n] = at;
                        }
                        None => {
                            c.instances.push(Arc::new(self.instance_status(n)));
                            c.built_at.push(at);
                        }
                    }
                }
                c.instances.clone()
            }
        };
        Status {
            id: st.id.clone(),
            service: st.spec.service.clone(),
            target: st.spec.target.clone(),
            phase,
            reason,
            outcome: st.outcome().cloned(),
            batch: st.batch + 1,
            counts,
            capacity: self.capacity(),
            floor: st.limits.floor,
            lowest_capacity: st.lowest_capacity,
            wait_reason: st.wait_reason.clone(),
            started_at: st.started_at,
            finished_at: st.finished_at,
            traffic: st.traffic.as_ref().map(super::traffic::Traffic::status),
            instances,
        }
    }
}
