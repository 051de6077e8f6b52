//! One instance's chain of commands: sending each step, applying its
//! result, failing it on an error or a timeout, and the failure budget.

#[cfg(any(test, feature = "sim"))]
use super::bugs::{self, Bug};
use super::engine::{Cx, Engine};
use super::model::{CommandId, CommandKind, CommandOutcome, Direction, Fault, Output, Step};
use super::reason::StopReason;
use super::state::{InFlight, Mode, Then};

fn next_step(step: Step) -> Option<Step> {
    match step {
        Step::Staging => Some(Step::Draining),
        Step::Draining => Some(Step::Stopping),
        Step::Stopping => Some(Step::Deploying),
        Step::Deploying => Some(Step::Starting),
        Step::Starting => Some(Step::Verifying),
        Step::Verifying => Some(Step::Undraining),
        _ => None,
    }
}

impl Engine {
    pub(super) fn on_result(&mut self, cx: &mut Cx, id: &CommandId, outcome: CommandOutcome) {
        let Some(idx) = self.instance_of(id) else {
            return;
        };
        if id.step == Step::Weighting {
            self.on_weight_result(cx, idx, id, outcome);
            return;
        }
        if id.attempt >= super::bluegreen::SIDE_ATTEMPTS {
            self.on_side_result(cx, idx, id, outcome);
            return;
        }
        let current = self.st.instances[idx].inflight.as_ref();
        if current.is_none_or(|f| &f.id != id) {
            // An answer to a step already timed out, or to an older chain.
            return;
        }
        let Some(flight) = self.edit(idx, |i| i.inflight.take()) else {
            return;
        };
        cx.dirty = true;
        self.progress(cx);
        let step = self.st.instances[idx].step;
        match outcome {
            CommandOutcome::Ok => self.step_ok(cx, idx, step, &flight.kind),
            CommandOutcome::Failed(message) => {
                self.fail(cx, idx, Fault::Failed { step, message });
            }
            CommandOutcome::TimedOut => {
                let fault = self.timeout_fault(idx, step, &flight);
                self.fail(cx, idx, fault);
            }
        }
    }

    /// Turns commands past their deadline into failures.
    pub(super) fn expire(&mut self, cx: &mut Cx) {
        self.expire_weights(cx);
        self.expire_sides(cx);
        for idx in 0..self.st.instances.len() {
            let i = &self.st.instances[idx];
            let Some(flight) = i.inflight.as_ref().filter(|f| f.deadline <= cx.now) else {
                continue;
            };
            let fault = self.timeout_fault(idx, i.step, flight);
            self.edit(idx, |i| i.inflight = None);
            cx.dirty = true;
            self.progress(cx);
            self.fail(cx, idx, fault);
        }
    }

    pub(super) fn timeout_fault(&self, idx: usize, step: Step, flight: &InFlight) -> Fault {
        if self.st.instances[idx].observed.reachable {
            Fault::TimedOut {
                step,
                after: u64::try_from(flight.timeout.as_millis()).unwrap_or(u64::MAX),
            }
        } else {
            Fault::Unreachable { step }
        }
    }

    pub(super) fn start_chain(&mut self, cx: &mut Cx, idx: usize, direction: Direction) {
        let batch = self.st.batch + 1;
        let seq = self.st.next_seq;
        self.edit(idx, |i| {
            i.direction = direction;
            i.attempt += 1;
            if direction == Direction::Forward {
                i.seq = Some(seq);
                i.batch = Some(batch);
            }
        });
        if direction == Direction::Forward {
            self.st.next_seq += 1;
        }
        cx.dirty = true;
        self.progress(cx);
        self.send_step(cx, idx, Step::Staging);
    }

    /// The release a chain of `idx` moves to.
    fn chain_release(&self, idx: usize) -> Option<super::spec::Release> {
        let i = &self.st.instances[idx];
        match i.direction {
            Direction::Forward => Some(self.st.spec.target.clone()),
            Direction::Back => i.previous.clone(),
        }
    }

    fn command_for(&self, idx: usize, step: Step) -> Option<CommandKind> {
        Some(match step {
            Step::Staging => CommandKind::Stage {
                release: self.chain_release(idx)?,
            },
            Step::Draining => CommandKind::Drain,
            Step::Stopping => CommandKind::Stop,
            Step::Deploying => CommandKind::Deploy {
                release: self.chain_release(idx)?,
            },
            Step::Starting => CommandKind::Start,
            Step::Verifying => CommandKind::Verify {
                min_healthy_time: self.st.spec.min_healthy_time,
                healthy_deadline: self.st.spec.healthy_deadline,
            },
            Step::Undraining => CommandKind::Undrain,
            _ => return None,
        })
    }

    pub(super) fn send_step(&mut self, cx: &mut Cx, idx: usize, step: Step) {
        let Some(kind) = self.command_for(idx, step) else {
            return;
        };
        let timeout = match kind {
            CommandKind::Verify { .. } => self.st.spec.longest_command(),
            _ => self.st.spec.step_timeout,
        };
        let i = &self.st.instances[idx];
        let id = CommandId::new(&self.st.id, &i.id, step, i.attempt);
        let flight = InFlight::new(id, kind.clone(), timeout, cx.now);
        let sent = flight.clone();
        self.edit(idx, |i| {
            i.step = step;
            i.inflight = Some(flight);
        });
        let i = &self.st.instances[idx];
        let (direction, batch) = (i.direction, i.batch.unwrap_or(0));
        cx.dirty = true;
        let what = match &kind {
            CommandKind::Stage { release } => format!("staging {release}"),
            CommandKind::Deploy { release } => format!("deploying {release}"),
            _ => step.as_str().to_string(),
        };
        let msg = match (direction, step) {
            (Direction::Back, _) => format!("rollback: {what}"),
            (Direction::Forward, Step::Staging) => format!("batch {batch}: {what}"),
            (Direction::Forward, _) => what,
        };
        self.event(cx, Some(idx), Some(step), msg);
        self.send_flight(cx, idx, &sent);
    }

    /// Sends again, same ids, the commands in `cx.resend` that are still in
    /// flight, each once; not one already past its deadline, which this
    /// very call turns into a timeout (the agent would run a step nobody
    /// waits for).
    pub(super) fn flush_resends(&self, cx: &mut Cx) {
        let mut due = std::mem::take(&mut cx.resend);
        due.sort_unstable_by_key(|(idx, _)| *idx);
        due.dedup();
        for (idx, id) in due {
            self.resend(cx, idx, &id);
        }
        let mut weights = std::mem::take(&mut cx.resend_weights);
        weights.sort_unstable();
        weights.dedup();
        for idx in weights {
            let i = &self.st.instances[idx];
            self.resend_flight(cx, idx, i.weight.as_ref().and_then(|w| w.inflight.as_ref()));
            self.resend_flight(cx, idx, i.side.as_ref().and_then(|s| s.inflight.as_ref()));
        }
    }

    fn resend(&self, cx: &mut Cx, idx: usize, id: &CommandId) {
        let i = &self.st.instances[idx];
        let Some(f) = i.inflight.as_ref().filter(|f| &f.id == id) else {
            return;
        };
        let due = f.deadline <= cx.now;
        #[cfg(any(test, feature = "sim"))]
        let due = due && !bugs::on(Bug::ResendPastDeadline);
        if due {
            return;
        }
        self.send_flight(cx, idx, f);
    }

    /// Hands `f`, a command of instance `idx`, to the runtime.
    pub(super) fn send_flight(&self, cx: &mut Cx, idx: usize, f: &InFlight) {
        let i = &self.st.instances[idx];
        cx.out.push(Output::Send {
            id: f.id.clone(),
            instance: i.id.clone(),
            host: i.host.clone(),
            kind: f.kind.clone(),
            timeout: f.timeout,
        });
    }

    /// [`Engine::send_flight`] again after a reconnect or a restore, unless
    /// it is already past its deadline.
    pub(super) fn resend_flight(&self, cx: &mut Cx, idx: usize, f: Option<&InFlight>) {
        if let Some(f) = f.filter(|f| f.deadline > cx.now) {
            self.send_flight(cx, idx, f);
        }
    }

    fn step_ok(&mut self, cx: &mut Cx, idx: usize, step: Step, kind: &CommandKind) {
        // What a successful step is known to have done, until Health says otherwise.
        self.edit(idx, |i| match kind {
            CommandKind::Stage { .. } => {}
            CommandKind::Drain => i.observed.in_service = false,
            CommandKind::Stop => i.observed.healthy = false,
            CommandKind::Deploy { release } => i.observed.release = Some(release.clone()),
            CommandKind::Start => {}
            CommandKind::Verify { .. } => i.observed.healthy = true,
            CommandKind::Undrain => i.observed.in_service = true,
            CommandKind::SetWeight { .. } => {}
        });
        if let Some(next) = next_step(step) {
            self.send_step(cx, idx, next);
            return;
        }
        let i = &self.st.instances[idx];
        let (end, msg) = match i.direction {
            Direction::Forward => (Step::Done, "done".to_string()),
            Direction::Back => {
                let to = i
                    .previous
                    .as_ref()
                    .map_or_else(|| "its previous release".to_string(), |r| r.to_string());
                (Step::RolledBack, format!("rolled back to {to}"))
            }
        };
        self.edit(idx, |i| i.step = end);
        self.event(cx, Some(idx), Some(end), msg);
    }

    /// Only a rollback or an abort brings the instance back.
    pub(super) fn fail(&mut self, cx: &mut Cx, idx: usize, fault: Fault) {
        let (msg, forward) = self.edit(idx, |i| {
            i.inflight = None;
            i.step = Step::Failed;
            let msg = match i.direction {
                Direction::Forward => {
                    let m = format!("failed: {fault}");
                    i.fault = Some(fault);
                    m
                }
                Direction::Back => {
                    let m = format!("rollback failed: {fault}");
                    i.rollback_fault = Some(fault);
                    m
                }
            };
            (msg, i.direction == Direction::Forward)
        });
        cx.dirty = true;
        self.event(cx, Some(idx), Some(Step::Failed), msg);
        if forward {
            self.check_budget(cx);
        }
    }

    pub(super) fn check_budget(&mut self, cx: &mut Cx) {
        if self.st.mode != Mode::Forward {
            return;
        }
        let lim = &self.st.limits;
        let (failed, unreachable) = (self.st.failed_count(), self.st.unreachable_count());
        let reason = if failed > lim.max_failures {
            let who: Vec<String> = (self.st.instances.iter())
                .filter_map(|i| {
                    i.fault
                        .as_ref()
                        .filter(|f| !f.is_unreachable())
                        .map(|f| (i, f))
                })
                .map(|(i, f)| format!("{}: {f}", i.id))
                .collect();
            StopReason::FailureBudget {
                failed,
                max: lim.max_failures,
                who,
            }
        } else if unreachable > lim.max_unreachable {
            let who: Vec<String> = (self.st.instances.iter())
                .filter(|i| i.unreachable())
                .map(|i| i.id.clone())
                .collect();
            StopReason::UnreachableBudget {
                unreachable,
                max: lim.max_unreachable,
                who,
            }
        } else {
            return;
        };
        // A canary never fails in place: its traffic is split between two
        // releases, so it goes back to the old one.
        let then = if self.st.spec.auto_rollback || self.shifts_traffic() {
            Then::Rollback
        } else {
            Then::Fail
        };
        self.stop(cx, reason, then);
    }
}
