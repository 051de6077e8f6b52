//! Invariant 5, the end state: what each outcome promises, checked against
//! the world's truth (what the simulated agents really run) and, for
//! consistency, against what the engine was seen to do.

use super::check::{Checker, Last, Pos, STAGE, UNDRAIN, Violation};
use crate::rollout::state::{RolloutState, SkipReason};
use crate::rollout::{Fault, Outcome, Release, Step, StopReason, Unfinished};

/// The world's truth about one instance at the end, from the simulated agents.
#[derive(Debug, Clone)]
pub struct Truth {
    pub release: Option<Release>,
    pub in_service: bool,
    pub running: bool,
    pub host_up: bool,
    /// The weight drover left in its load balancer (`None`: configured).
    pub weight: Option<u32>,
}

fn broke(what: String) -> Result<(), Violation> {
    Err(Violation { invariant: 5, what })
}

impl Checker {
    /// The promises of each outcome, against the engine's final state (for
    /// consistency with what it was seen to do) and the world's truth.
    pub fn finished(
        &self,
        outcome: &Outcome,
        state: &RolloutState,
        truth: &[Truth],
    ) -> Result<(), Violation> {
        if self.blue_green.is_some() {
            self.colors_end(outcome, state, truth)?;
            return self.weights_restored(outcome, truth);
        }
        for i in &state.instances {
            let Some(&k) = self.index.get(&i.id) else {
                return broke(format!("unknown instance {}", i.id));
            };
            let t = &truth[k];
            let pos = self.tentative[k];
            let consistent = match (pos, i.step) {
                (Pos::Busy { .. }, _) => false,
                (Pos::Idle { attempt: 0, .. }, Step::Pending | Step::Skipped) => true,
                (
                    Pos::Idle {
                        attempt: 1,
                        last: Last::Ok(UNDRAIN),
                    },
                    Step::Done,
                ) => true,
                (
                    Pos::Idle {
                        attempt: 2,
                        last: Last::Ok(UNDRAIN),
                    },
                    Step::RolledBack,
                ) => true,
                (
                    Pos::Idle {
                        last: Last::Failed(_),
                        ..
                    },
                    Step::Failed,
                ) => true,
                // A failed stage left nothing to return.
                (
                    Pos::Idle {
                        attempt: 1,
                        last: Last::Failed(STAGE),
                    },
                    Step::RolledBack,
                ) => true,
                _ => false,
            };
            if !consistent {
                return broke(format!(
                    "{} ended {:?} but its commands ended {pos:?}",
                    i.id, i.step
                ));
            }
            let serving_on =
                |r: Option<&Release>| t.release.as_ref() == r && t.in_service && t.running;
            let step_ok = match i.step {
                Step::Done => serving_on(Some(&self.target)),
                Step::RolledBack => serving_on(self.initial[k].as_ref()),
                _ => true,
            };
            if !step_ok {
                return broke(format!("{} is {:?} but the agent has {t:?}", i.id, i.step));
            }
            match outcome {
                Outcome::Succeeded => {
                    let skip_ok = match i.skipped {
                        Some(SkipReason::OnTarget) => {
                            self.initial[k].as_ref() == Some(&self.target)
                        }
                        Some(SkipReason::Unreachable) => self.lost_skip && self.ever_lost[k],
                        // The simulator runs no blue-green rollout: a
                        // serving color there is a bug.
                        Some(SkipReason::ServingColor) | None => false,
                    };
                    if i.step == Step::Skipped && !skip_ok {
                        return broke(format!("{} skipped without a reason", i.id));
                    }
                    if i.step != Step::Skipped && i.step != Step::Done {
                        return broke(format!("succeeded with {} {:?}", i.id, i.step));
                    }
                }
                Outcome::RolledBack { .. } => {
                    if matches!(pos, Pos::Idle { attempt: 1.., .. }) && i.step != Step::RolledBack {
                        return broke(format!("rolled back but touched {} is {:?}", i.id, i.step));
                    }
                }
                Outcome::Aborted { .. } => {
                    // Left because its host was lost, or its host is away now.
                    let lost = !t.host_up
                        || i.left.as_deref().is_some_and(|w| w.contains("lost"))
                        || i.rollback_fault.as_ref().is_some_and(Fault::is_unreachable);
                    let on_old_or_new = t.release.as_ref() == self.initial[k].as_ref()
                        || t.release.as_ref() == Some(&self.target);
                    let kept = on_old_or_new && t.in_service && t.running;
                    if !(lost || kept) {
                        return broke(format!(
                            "aborted but {} ({:?}) is not on old or new and in service: {t:?}",
                            i.id, i.step
                        ));
                    }
                }
                Outcome::Failed { .. } => {}
            }
        }
        self.weights_restored(outcome, truth)
    }

    /// Invariants 5 and 9 for a blue-green switch: a success leaves the new
    /// color serving the target and the old one drained and stopped; a
    /// rollback or an abort leaves the old color in service and the new
    /// one drained. Hosts that are away promise nothing.
    fn colors_end(
        &self,
        outcome: &Outcome,
        state: &RolloutState,
        truth: &[Truth],
    ) -> Result<(), Violation> {
        let Some(b) = &self.blue_green else {
            return Ok(());
        };
        for i in &state.instances {
            let Some(&k) = self.index.get(&i.id) else {
                return broke(format!("unknown instance {}", i.id));
            };
            let t = &truth[k];
            let serving_color = i.skipped == Some(SkipReason::ServingColor);
            if serving_color == b.idle[k] {
                return broke(format!(
                    "{} is {} but the engine has it as {}",
                    i.id,
                    if b.idle[k] {
                        "idle"
                    } else {
                        "the serving color"
                    },
                    if serving_color {
                        "the serving color"
                    } else {
                        "idle"
                    }
                ));
            }
            if !t.host_up {
                continue;
            }
            let what = match outcome {
                Outcome::Succeeded if b.idle[k] => {
                    (t.release.as_ref() == Some(&self.target) && t.in_service && t.running)
                        .then_some(())
                        .ok_or("serving the target")
                }
                Outcome::Succeeded => (!t.in_service && !t.running)
                    .then_some(())
                    .ok_or("drained and stopped"),
                Outcome::RolledBack { .. } | Outcome::Aborted { .. } if b.idle[k] => {
                    (!t.in_service).then_some(()).ok_or("drained")
                }
                Outcome::RolledBack { .. } | Outcome::Aborted { .. } => (t.in_service
                    && t.release.as_ref() == self.initial[k].as_ref())
                .then_some(())
                .ok_or("in service on its release"),
                Outcome::Failed { .. } => Ok(()),
            };
            if let Err(want) = what {
                return broke(format!(
                    "blue-green {outcome}: {} ({}) should be {want}, the agent has {t:?}",
                    i.id,
                    if b.idle[k] { "new color" } else { "old color" }
                ));
            }
        }
        Ok(())
    }

    /// Invariant 8: however a canary ends, every weight drover set is back
    /// to the configured one, or the outcome names the instance; and it
    /// names only instances whose weight is off, whose host is away, or
    /// whose last weight command failed (it may have worked all the same).
    fn weights_restored(&self, outcome: &Outcome, truth: &[Truth]) -> Result<(), Violation> {
        let named: &[String] = match outcome {
            Outcome::Failed {
                reason: StopReason::WeightsNotRestored { who },
            } => who,
            Outcome::Failed {
                reason:
                    StopReason::Incomplete {
                        unfinished: Unfinished::Weights,
                        problems,
                        ..
                    },
            } => problems,
            _ => &[],
        };
        let names = |id: &str| named.iter().any(|n| n.starts_with(&format!("{id}:")));
        for (id, &k) in &self.index {
            let t = &truth[k];
            let is_named = names(id);
            if let Some(w) = t.weight
                && !is_named
            {
                return Err(Violation {
                    invariant: 8,
                    what: format!(
                        "the rollout ended ({outcome}) with {id} at weight {w} in its load balancer, and the outcome does not name it"
                    ),
                });
            }
            if is_named && t.weight.is_none() && t.host_up && !self.weight_failed[k] {
                return Err(Violation {
                    invariant: 8,
                    what: format!(
                        "the outcome ({outcome}) names {id} as not restored, but its configured weight is back and its last weight command succeeded"
                    ),
                });
            }
        }
        Ok(())
    }
}
