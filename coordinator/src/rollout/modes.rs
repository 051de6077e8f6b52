//! The rollout's modes: going forward batch by batch, stopping, restoring
//! previous releases, and finishing.

use std::collections::BTreeSet;

#[cfg(any(test, feature = "sim"))]
use super::bugs::{self, Bug};
use super::engine::{Cx, Engine, Pass};
use super::model::{Direction, Fault, Millis, Outcome, Output, Step};
use super::reason::{Block, StopReason, Unfinished};
use super::room::Room;
use super::spec::LostHostPolicy;
use super::state::{Mode, RestoreKind, Then, count};

impl Engine {
    pub(super) fn stop(&mut self, cx: &mut Cx, reason: StopReason, then: Then) {
        self.st.paused = false;
        cx.dirty = true;
        self.event(cx, None, None, format!("stopping: {reason}"));
        self.st.mode = Mode::Stopping { reason, then };
    }

    /// Ends the rollout with `outcome`; a canary first puts back every
    /// weight it set (see [`Mode::Unweighting`]).
    pub(super) fn finish(&mut self, cx: &mut Cx, outcome: Outcome) {
        let unweighted = matches!(self.st.mode, Mode::Unweighting { .. });
        #[cfg(any(test, feature = "sim"))]
        let unweighted = unweighted
            || (bugs::on(Bug::WeightsKeptOnRollback)
                && matches!(outcome, Outcome::RolledBack { .. }));
        if !unweighted && (self.weights_to_restore() || self.weights_in_flight() > 0) {
            cx.dirty = true;
            self.st.paused = false;
            self.st.mode = Mode::Unweighting { outcome };
            return;
        }
        cx.dirty = true;
        cx.finished = true;
        self.st.paused = false;
        self.st.finished_at = Some(cx.now);
        self.event(cx, None, None, format!("rollout {outcome}"));
        self.st.mode = Mode::Finished(outcome);
    }

    pub(super) fn progress(&mut self, cx: &Cx) {
        self.st.last_progress = cx.now;
    }

    fn deadline_passed(&self, now: Millis) -> bool {
        let due = self.st.last_progress.plus(self.st.spec.progress_deadline);
        #[cfg(any(test, feature = "sim"))]
        let due = if bugs::on(Bug::PausedNeverTimesOut) && self.st.paused {
            Millis(u64::MAX)
        } else {
            due
        };
        now >= due
    }

    /// Runs the mode machine until it rests, then reports the wait reason and
    /// the end, if reached.
    pub(super) fn settle(&mut self, cx: &mut Cx) {
        let mut wait = None;
        // Each pass that asks for another changes the mode, and modes only go
        // Forward -> Stopping -> Restoring -> Finished (or Restoring -> Finished),
        // so a handful of passes always suffices.
        for _ in 0..8 {
            let pass = match self.st.mode {
                Mode::Forward => self.drive_forward(cx),
                Mode::Stopping { .. } => self.drive_stopping(cx),
                Mode::Restoring { .. } => self.drive_restoring(cx),
                Mode::Unweighting { .. } => self.drive_unweighting_mode(cx),
                Mode::Finished(_) => Pass {
                    again: false,
                    wait: None,
                },
            };
            wait = pass.wait;
            if !pass.again {
                break;
            }
        }
        if wait != self.st.wait_reason {
            self.st.wait_reason.clone_from(&wait);
            cx.out.push(Output::WaitReason(wait));
        }
        let capacity = self.capacity();
        if capacity < self.st.lowest_capacity {
            self.st.lowest_capacity = capacity;
            cx.dirty = true;
        }
        if cx.finished
            && let Mode::Finished(outcome) = &self.st.mode
        {
            cx.out.push(Output::Finished(outcome.clone()));
        }
    }

    /// Number of reachable instances not reported since a restore or reconnect.
    fn stale(&self) -> u32 {
        count((self.st.instances.iter()).filter(|i| i.observed.reachable && i.observed.stale))
    }

    fn gate(&self) -> Option<Block> {
        if self.st.paused {
            return Some(self.held_block().unwrap_or(Block::Paused));
        }
        match self.stale() {
            0 => None,
            n => Some(Block::HealthReports { instances: n }),
        }
    }

    /// Puts weights back, then ends as the rollout would have; a weight
    /// that could not be put back makes the end a failure that names it.
    fn drive_unweighting_mode(&mut self, cx: &mut Cx) -> Pass {
        let Mode::Unweighting { outcome } = &self.st.mode else {
            return Pass {
                again: false,
                wait: None,
            };
        };
        let outcome = outcome.clone();
        if let Some(wait) = self.drive_unweighting(cx) {
            return Pass {
                again: false,
                wait: Some(wait),
            };
        }
        let problems = self.weights_not_restored();
        let outcome = match outcome {
            o if problems.is_empty() => o,
            Outcome::Succeeded => Outcome::Failed {
                reason: StopReason::WeightsNotRestored { who: problems },
            },
            Outcome::Failed { reason }
            | Outcome::RolledBack { reason }
            | Outcome::Aborted { reason } => Outcome::Failed {
                reason: StopReason::Incomplete {
                    reason: Box::new(reason),
                    unfinished: Unfinished::Weights,
                    problems,
                },
            },
        };
        self.finish(cx, outcome);
        Pass {
            again: true,
            wait: None,
        }
    }

    fn drive_forward(&mut self, cx: &mut Cx) -> Pass {
        if self.is_blue_green() {
            if self.colors_retired() && self.sides_in_flight() == 0 {
                let outcome = self.retired_outcome();
                self.finish(cx, outcome);
                return Pass {
                    again: true,
                    wait: None,
                };
            }
        } else if self.st.instances.iter().all(|i| i.step != Step::Pending)
            && self.st.inflight() == 0
            && self.weights_in_flight() == 0
        {
            let failed: Vec<String> = (self.st.instances.iter())
                .filter(|i| i.step == Step::Failed)
                .map(|i| match &i.fault {
                    Some(f) => format!("{}: {f}", i.id),
                    None => i.id.clone(),
                })
                .collect();
            #[cfg(any(test, feature = "sim"))]
            let failed = if bugs::on(Bug::FailuresCountAsSuccess) {
                Vec::new()
            } else {
                failed
            };
            let outcome = if failed.is_empty() {
                Outcome::Succeeded
            } else {
                Outcome::Failed {
                    reason: StopReason::FailedWithinBudget { failed },
                }
            };
            self.finish(cx, outcome);
            return Pass {
                again: true,
                wait: None,
            };
        }
        let wait = match self.gate() {
            Some(w) => Some(w),
            None if self.shifts_traffic() => self.drive_traffic(cx),
            None => self.fill_batch(cx),
        };
        if self.st.mode != Mode::Forward || (self.is_blue_green() && self.colors_retired()) {
            // The traffic drive stopped it (a weight that could not be
            // set), or a blue-green switch came to its end.
            return Pass { again: true, wait };
        }
        // Keeping the old color is waiting by design, for as long as
        // keep_old says.
        let keeping = matches!(wait, Some(Block::KeepingOld { .. }));
        if self.deadline_passed(cx.now) && !keeping {
            let reason =
                StopReason::progress_deadline(self.st.spec.progress_deadline, wait.clone());
            let then = if self.shifts_traffic() {
                // Traffic is split: put it all back on the old release.
                Then::Rollback
            } else {
                Then::Fail
            };
            self.stop(cx, reason, then);
            return Pass { again: true, wait };
        }
        Pass { again: false, wait }
    }

    /// Starts what the current batch and the limits allow; returns why the
    /// rest of the batch waits.
    pub(super) fn fill_batch(&mut self, cx: &mut Cx) -> Option<Block> {
        // A canary's batches are its traffic steps: the traffic drive
        // moves to the next one once the step passed.
        let traffic = self
            .st
            .traffic
            .as_ref()
            .map(|_| self.st.batch_started.saturating_add(self.traffic_needed()));
        #[cfg(any(test, feature = "sim"))]
        let traffic = if bugs::on(Bug::StepCountsChainsNotCarriers) {
            self.st.traffic.as_ref().map(super::traffic::Traffic::quota)
        } else {
            traffic
        };
        if traffic.is_none() && self.st.batch_started >= self.st.limits.batch_size(self.st.batch) {
            if self.st.inflight() > 0 {
                return None;
            }
            self.st.batch += 1;
            self.st.batch_started = 0;
            cx.dirty = true;
        }
        let quota = traffic.unwrap_or_else(|| self.st.limits.batch_size(self.st.batch));
        let mut room = Room::measure(&self.st);
        let mut block: Option<Block> = None;
        let mut lost = BTreeSet::new();
        for idx in 0..self.st.instances.len() {
            if self.st.batch_started >= quota {
                break;
            }
            let i = &self.st.instances[idx];
            if i.step != Step::Pending {
                continue;
            }
            if !i.observed.reachable {
                lost.insert(i.host.clone());
                continue;
            }
            match room.admit(&self.st, i) {
                Ok(()) => {
                    room.take(&self.st, i);
                    if self.st.batch_started == 0 {
                        let msg = format!("batch {} started (up to {quota})", self.st.batch + 1);
                        self.event(cx, None, None, msg);
                    }
                    self.st.batch_started += 1;
                    self.start_chain(cx, idx, Direction::Forward);
                }
                Err(b) => {
                    let all = matches!(b, Block::MaxUnavailable { .. });
                    block.get_or_insert(b);
                    if all {
                        break;
                    }
                }
            }
        }
        if self.st.batch_started >= quota {
            None
        } else if block.is_some() {
            block
        } else if !lost.is_empty() {
            let hosts: Vec<String> = lost.into_iter().collect();
            Some(Block::LostHosts { hosts })
        } else {
            None
        }
    }

    fn drive_stopping(&mut self, cx: &mut Cx) -> Pass {
        let Mode::Stopping { reason, then } = &self.st.mode else {
            return Pass {
                again: false,
                wait: None,
            };
        };
        // Weight commands too: a rollback's chain sent to an instance whose
        // weight command still runs would be refused as busy.
        let n = self.st.inflight() + self.weights_in_flight() + self.sides_in_flight();
        #[cfg(any(test, feature = "sim"))]
        let n = if bugs::on(Bug::StoppingIgnoresWeights) {
            self.st.inflight()
        } else {
            n
        };
        if n > 0 {
            return Pass {
                again: false,
                wait: Some(Block::Stopping { instances: n }),
            };
        }
        let (reason, then) = (reason.clone(), *then);
        let kind = match then {
            Then::Fail => {
                self.finish(cx, Outcome::Failed { reason });
                return Pass {
                    again: true,
                    wait: None,
                };
            }
            Then::Rollback => RestoreKind::Rollback,
            Then::Abort => RestoreKind::Abort,
        };
        cx.dirty = true;
        self.progress(cx);
        let msg = match kind {
            RestoreKind::Rollback => format!("rolling back: {reason}"),
            RestoreKind::Abort => {
                format!("{reason}: returning failed instances to their previous release")
            }
        };
        self.event(cx, None, None, msg);
        self.st.mode = Mode::Restoring { reason, kind };
        Pass {
            again: true,
            wait: None,
        }
    }

    /// Instances a restore still has to start, latest update first.
    fn restore_candidates(&self, kind: RestoreKind) -> Vec<usize> {
        let mut c: Vec<usize> = (0..self.st.instances.len())
            .filter(|&n| {
                let i = &self.st.instances[n];
                i.direction == Direction::Forward
                    && i.left.is_none()
                    && i.seq.is_some()
                    && (i.step == Step::Failed
                        || (i.step == Step::Done && kind == RestoreKind::Rollback))
            })
            .collect();
        c.sort_by_key(|&n| std::cmp::Reverse(self.st.instances[n].seq));
        c
    }

    fn leave(&mut self, cx: &mut Cx, idx: usize, why: String) {
        cx.dirty = true;
        self.edit(idx, |i| i.left = Some(why.clone()));
        let step = self.st.instances[idx].step;
        self.event(cx, Some(idx), Some(step), format!("left as it is: {why}"));
    }

    fn drive_restoring(&mut self, cx: &mut Cx) -> Pass {
        let Mode::Restoring { reason, kind } = &self.st.mode else {
            return Pass {
                again: false,
                wait: None,
            };
        };
        let (reason, kind) = (reason.clone(), *kind);
        if self.is_blue_green() {
            return self.drive_switch_back(cx, reason, kind);
        }
        let skip_lost = self.st.spec.lost_hosts == LostHostPolicy::Skip;
        for idx in self.restore_candidates(kind) {
            let i = &self.st.instances[idx];
            if i.failed_at_stage() && i.available() {
                // Staging changes nothing that serves: the instance is
                // still on its previous release and its reports say it
                // serves, so there is nothing to return and no reason to
                // take it out of service. One that is not serving gets the
                // usual chain back, which costs no capacity.
                cx.dirty = true;
                self.edit(idx, |i| i.step = Step::RolledBack);
                let msg = "nothing to undo: it failed while staging, before it left service";
                self.event(cx, Some(idx), Some(Step::RolledBack), msg.to_string());
            } else if i.previous.is_none() {
                self.leave(cx, idx, "no previous release to return to".to_string());
            } else if skip_lost && !i.observed.reachable {
                self.leave(cx, idx, format!("host {} lost", i.host));
            }
        }
        let candidates = self.restore_candidates(kind);
        if candidates.is_empty() && self.st.inflight() == 0 {
            self.finish_restore(cx, reason, kind);
            return Pass {
                again: true,
                wait: None,
            };
        }
        let wait = match self.gate() {
            Some(w) => Some(w),
            None => self.fill_restore(cx, &candidates),
        };
        if self.deadline_passed(cx.now) {
            // Give up on what could not start; in-flight chains still finish.
            let why = StopReason::progress_deadline(self.st.spec.progress_deadline, wait.clone())
                .to_string();
            let stuck = self.restore_candidates(kind);
            for &idx in &stuck {
                self.leave(cx, idx, why.clone());
            }
            return Pass {
                again: !stuck.is_empty(),
                wait,
            };
        }
        Pass { again: false, wait }
    }

    fn fill_restore(&mut self, cx: &mut Cx, candidates: &[usize]) -> Option<Block> {
        let mut room = Room::measure(&self.st);
        let mut block: Option<Block> = None;
        let mut lost = BTreeSet::new();
        for &idx in candidates {
            let i = &self.st.instances[idx];
            if !i.observed.reachable {
                lost.insert(i.host.clone());
                continue;
            }
            match room.admit(&self.st, i) {
                Ok(()) => {
                    room.take(&self.st, i);
                    self.start_chain(cx, idx, Direction::Back);
                }
                Err(b) => {
                    let all = matches!(b, Block::MaxUnavailable { .. });
                    block.get_or_insert(b);
                    if all {
                        break;
                    }
                }
            }
        }
        if block.is_some() {
            block
        } else if !lost.is_empty() {
            let hosts: Vec<String> = lost.into_iter().collect();
            Some(Block::LostHosts { hosts })
        } else {
            None
        }
    }

    /// An abort promises every instance on its old or new release and in
    /// service, except those whose host is lost; one it could not return on
    /// a host that is there makes the rollout Failed, not Aborted.
    fn finish_restore(&mut self, cx: &mut Cx, reason: StopReason, kind: RestoreKind) {
        let mut problems = Vec::new();
        let mut stranded = false;
        for i in &self.st.instances {
            let what = match (&i.rollback_fault, &i.left) {
                (Some(f), _) => format!("{}: {f}", i.id),
                (None, Some(why)) => format!("{}: {why}", i.id),
                (None, None) => continue,
            };
            let lost = !i.observed.reachable
                || i.rollback_fault.as_ref().is_some_and(Fault::is_unreachable);
            stranded |= !lost;
            problems.push(what);
        }
        #[cfg(any(test, feature = "sim"))]
        let stranded = stranded && !bugs::on(Bug::AbortedWhileStranded);
        let incomplete = |unfinished| StopReason::Incomplete {
            reason: Box::new(reason.clone()),
            unfinished,
            problems: problems.clone(),
        };
        let outcome = match (kind, problems.is_empty()) {
            (RestoreKind::Rollback, true) => Outcome::RolledBack { reason },
            (RestoreKind::Rollback, false) => Outcome::Failed {
                reason: incomplete(Unfinished::Rollback),
            },
            (RestoreKind::Abort, true) => Outcome::Aborted { reason },
            (RestoreKind::Abort, false) if stranded => Outcome::Failed {
                reason: incomplete(Unfinished::Abort),
            },
            (RestoreKind::Abort, false) => Outcome::Aborted {
                reason: incomplete(Unfinished::HostLost),
            },
        };
        self.finish(cx, outcome);
    }
}
