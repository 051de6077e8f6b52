//! The engine's durable state: everything needed to resume after a crash.
//! Stored on every [`Output::Persist`](super::Output::Persist) as laid out
//! in [`persist`](super::persist); its shape is private so the runtime can
//! only store and restore it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "sim"))]
use super::bugs::{self, Bug};
use super::model::{CommandId, CommandKind, Direction, Fault, Millis, Outcome, Step};
use super::reason::{Block, StopReason};
use super::spec::{Release, RolloutSpec};

/// The spec's amounts resolved once, against the instances matched at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Limits {
    pub total: u32,
    pub floor: u32,
    pub max_failures: u32,
    pub max_unreachable: u32,
    /// Chains in flight at once; `u32::MAX` when the spec sets no cap.
    pub max_unavailable: u32,
    pub batch_sizes: Vec<u32>,
}

impl Limits {
    pub fn batch_size(&self, index: u32) -> u32 {
        let i = usize::try_from(index).unwrap_or(usize::MAX);
        self.batch_sizes
            .get(i)
            .or(self.batch_sizes.last())
            .copied()
            .unwrap_or(1)
            .max(1)
    }
}

/// What drover last learned about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Observed {
    pub release: Option<Release>,
    pub healthy: bool,
    pub in_service: bool,
    pub reachable: bool,
    /// Not reported since a restore or since its host came back: nothing new
    /// starts until every reachable instance has reported.
    pub stale: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SkipReason {
    OnTarget,
    Unreachable,
    /// Blue-green: an instance of the color that serves; it takes no new
    /// release, carries the baseline, and is drained and stopped once the
    /// traffic switched.
    ServingColor,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InFlight {
    pub id: CommandId,
    pub kind: CommandKind,
    pub timeout: Duration,
    pub sent_at: Millis,
    pub deadline: Millis,
}

impl InFlight {
    /// `kind` sent now as `id`, given up on after `timeout`.
    pub fn new(id: CommandId, kind: CommandKind, timeout: Duration, now: Millis) -> InFlight {
        InFlight {
            id,
            kind,
            timeout,
            sent_at: now,
            deadline: now.plus(timeout),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct InstanceState {
    pub id: String,
    pub host: String,
    pub labels: BTreeMap<String, String>,
    /// The release at start: where a rollback returns to.
    pub previous: Option<Release>,
    pub observed: Observed,
    pub step: Step,
    pub direction: Direction,
    pub skipped: Option<SkipReason>,
    /// 1-based batch the update started in.
    pub batch: Option<u32>,
    /// Order in which updates started; rollback goes in reverse.
    pub seq: Option<u64>,
    /// Chain number in command ids: 1 update, 2 rollback.
    pub attempt: u32,
    pub inflight: Option<InFlight>,
    /// Why the update failed.
    pub fault: Option<Fault>,
    /// Why the rollback failed.
    pub rollback_fault: Option<Fault>,
    /// Why a rollback or abort left the instance as it was.
    pub left: Option<String>,
    /// Canary: the weight drover keeps on it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<super::traffic::WeightSlot>,
    /// Canary: what it served since its step's counting began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<super::traffic::Meter>,
    /// Blue-green: a drain, undrain or stop sent outside any chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<super::bluegreen::SideSlot>,
}

impl InstanceState {
    /// Drover holds it out of the count: mid-chain, or failed. A failed
    /// step leaves no trustworthy picture: a timed-out drain may still run,
    /// an undrain that timed out may have worked, and a health report may
    /// predate either. Except a failed stage: staging never touches what
    /// serves, so the health reports stay true and count as they are.
    pub fn held(&self) -> bool {
        self.step.in_chain() || (self.step == Step::Failed && !self.failed_at_stage())
    }

    fn fault_now(&self) -> Option<&Fault> {
        match self.direction {
            Direction::Forward => self.fault.as_ref(),
            Direction::Back => self.rollback_fault.as_ref(),
        }
    }

    /// Failed while staging, and nothing before it touched what serves:
    /// a forward chain that failed at its stage, or a rollback that failed
    /// at its stage after a forward chain that finished or also failed at
    /// its stage. Not a rollback's stage after a forward chain that failed
    /// mid-way: that one's serving state is as unknown as it was.
    pub fn failed_at_stage(&self) -> bool {
        let at_stage = |f: &Option<Fault>| f.as_ref().is_some_and(|f| f.step() == Step::Staging);
        self.step == Step::Failed
            && match self.direction {
                Direction::Forward => at_stage(&self.fault),
                Direction::Back => {
                    at_stage(&self.rollback_fault)
                        && (self.fault.is_none() || at_stage(&self.fault))
                }
            }
    }

    /// Counts toward capacity: healthy, in service, reachable, not held.
    pub fn available(&self) -> bool {
        let o = &self.observed;
        !self.held() && o.reachable && o.healthy && o.in_service
    }

    /// Taking it down may cost capacity. A failed instance costs nothing
    /// only when drover knows it drained it: its chain's drain succeeded
    /// and no undrain followed (it failed at stop, deploy, start or verify).
    pub fn maybe_available(&self) -> bool {
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::FailedTakenForFree) {
            return self.available();
        }
        let o = &self.observed;
        if self.step != Step::Failed {
            return self.available();
        }
        let drained = self.fault_now().is_some_and(|f| {
            matches!(
                f.step(),
                Step::Stopping | Step::Deploying | Step::Starting | Step::Verifying
            )
        });
        o.reachable && o.healthy && !drained
    }

    pub fn failed_forward(&self) -> bool {
        self.fault.as_ref().is_some_and(|f| !f.is_unreachable())
    }

    pub fn unreachable(&self) -> bool {
        self.skipped == Some(SkipReason::Unreachable)
            || self.fault.as_ref().is_some_and(Fault::is_unreachable)
    }
}

/// What happens once the in-flight chains of a stopping rollout finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Then {
    Fail,
    Rollback,
    Abort,
}

/// Rollback returns every touched instance; abort only the failed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RestoreKind {
    Rollback,
    Abort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    Forward,
    /// Nothing new starts; in-flight chains finish, then `then`.
    Stopping {
        #[serde(deserialize_with = "super::reason::text_compat::deserialize")]
        reason: StopReason,
        then: Then,
    },
    /// Chains toward previous releases, under the same capacity rule.
    Restoring {
        #[serde(deserialize_with = "super::reason::text_compat::deserialize")]
        reason: StopReason,
        kind: RestoreKind,
    },
    /// Canary: putting back every weight drover set, then `outcome`.
    Unweighting {
        outcome: Outcome,
    },
    Finished(Outcome),
}

/// Everything the engine knows. Store it on every `Persist`; hand it to
/// [`Engine::restore`](super::Engine::restore) after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    pub(crate) id: String,
    pub(crate) spec: RolloutSpec,
    pub(crate) limits: Limits,
    /// In plan order.
    pub(crate) instances: Vec<InstanceState>,
    pub(crate) mode: Mode,
    pub(crate) paused: bool,
    /// 0-based index of the current batch.
    pub(crate) batch: u32,
    /// Instances started in the current batch.
    pub(crate) batch_started: u32,
    pub(crate) next_seq: u64,
    pub(crate) started_at: Millis,
    pub(crate) last_progress: Millis,
    /// Latest time seen; time never goes backwards inside the engine.
    pub(crate) now: Millis,
    pub(crate) lowest_capacity: u32,
    #[serde(
        default,
        deserialize_with = "super::reason::text_compat::option::deserialize"
    )]
    pub(crate) wait_reason: Option<Block>,
    pub(crate) finished_at: Option<Millis>,
    /// Canary: its traffic steps and where it is; `None` for rolling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) traffic: Option<super::traffic::Traffic>,
}

impl RolloutState {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> &RolloutSpec {
        &self.spec
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.mode, Mode::Finished(_))
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.mode {
            Mode::Finished(o) => Some(o),
            _ => None,
        }
    }

    /// Each target host once, with whether the engine last saw it reachable.
    pub fn hosts(&self) -> std::collections::BTreeMap<&str, bool> {
        let mut hosts = std::collections::BTreeMap::new();
        for i in &self.instances {
            let r = hosts.entry(i.host.as_str()).or_insert(true);
            *r &= i.observed.reachable;
        }
        hosts
    }

    /// Everything but the instances, which are stored one record each.
    pub(crate) fn head(&self) -> RolloutState {
        RolloutState {
            id: self.id.clone(),
            spec: self.spec.clone(),
            limits: self.limits.clone(),
            instances: Vec::new(),
            mode: self.mode.clone(),
            paused: self.paused,
            batch: self.batch,
            batch_started: self.batch_started,
            next_seq: self.next_seq,
            started_at: self.started_at,
            last_progress: self.last_progress,
            now: self.now,
            lowest_capacity: self.lowest_capacity,
            wait_reason: self.wait_reason.clone(),
            finished_at: self.finished_at,
            traffic: self.traffic.clone(),
        }
    }

    pub(crate) fn capacity(&self) -> u32 {
        count(self.instances.iter().filter(|i| i.available()))
    }

    pub(crate) fn inflight(&self) -> u32 {
        count(self.instances.iter().filter(|i| i.inflight.is_some()))
    }

    pub(crate) fn failed_count(&self) -> u32 {
        count(self.instances.iter().filter(|i| i.failed_forward()))
    }

    pub(crate) fn unreachable_count(&self) -> u32 {
        count(self.instances.iter().filter(|i| i.unreachable()))
    }
}

pub(crate) fn count<T>(it: impl Iterator<Item = T>) -> u32 {
    u32::try_from(it.count()).unwrap_or(u32::MAX)
}
