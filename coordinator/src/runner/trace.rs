//! A running rollout's trace: a root span (`rollout`), a span per batch
//! (`batch`, rolling) or traffic step (`traffic_step`, canary and
//! blue-green), and a span per command sent (`stage`, `drain`, `stop`,
//! `deploy`, `start`, `verify`, `undrain`, `set_weight`) from its send to
//! its result. Each command carries its span's `traceparent`, so the
//! agent's spans sit under it.
//!
//! The rollout's root context is stored with the rollout (its meta
//! record); a coordinator that resumes the rollout after a crash or a
//! handover opens a new `rollout` span whose parent is that stored root,
//! so the whole rollout stays one trace (`drover.resumed = true` marks
//! the continuation).
//!
//! Only watches: the task tells it what was sent and answered, it decides
//! nothing. With tracing off every span is disabled and each call returns
//! at its first check.

use std::collections::HashMap;

use drover_telemetry::{TARGET, keys};
use tracing::Span;
use tracing::field::Empty;

use super::driver::{AgentUpdate, Outgoing, Pass, UpdateKind};
use crate::rollout::{CommandId, CommandKind, CommandOutcome, Engine, Outcome};

pub(super) struct RolloutTrace {
    root: Span,
    /// The current batch or traffic step: its 0-based index and its span.
    group: Option<(u32, Span)>,
    /// The lowest capacity seen during the current group.
    group_low: u32,
    /// Commands sent and not yet answered: their host and span.
    steps: HashMap<CommandId, (String, Span)>,
    service: String,
    capacity: u32,
    floor: u32,
    finished: bool,
}

impl RolloutTrace {
    /// The root span of a rollout; `stored` is the root `traceparent` kept
    /// with a rollout that is being resumed.
    pub(super) fn open(engine: &Engine, stored: Option<&str>) -> RolloutTrace {
        let st = engine.state();
        let spec = st.spec();
        let root = tracing::info_span!(
            target: TARGET,
            parent: None,
            "rollout",
            "drover.rollout" = %st.id(),
            "drover.service" = %spec.service,
            "drover.release" = %spec.target.version,
            "drover.strategy" = %spec.strategy,
            "drover.selector" = %spec.selector,
            "drover.floor" = st.limits.floor,
            "drover.instances" = st.instances.len(),
            "drover.resumed" = stored.is_some(),
            "drover.capacity" = Empty,
            "drover.outcome" = Empty,
        );
        if let Some(tp) = stored {
            drover_telemetry::set_parent(&root, tp);
        }
        RolloutTrace {
            root,
            group: None,
            group_low: u32::MAX,
            steps: HashMap::new(),
            service: spec.service.clone(),
            capacity: 0,
            floor: st.limits.floor,
            finished: false,
        }
    }

    fn off(&self) -> bool {
        self.root.is_disabled()
    }

    /// The root's context, to store with the rollout.
    pub(super) fn traceparent(&self) -> Option<String> {
        drover_telemetry::traceparent(&self.root)
    }

    /// An agent's update, before the driver takes it: a result ends its
    /// command's span (only from the host the command went to).
    pub(super) fn update(&mut self, from: &str, update: &AgentUpdate) {
        if self.off() {
            return;
        }
        let UpdateKind::Result(outcome) = &update.kind else {
            return;
        };
        if (self.steps.get(&update.id)).is_none_or(|(host, _)| host != from) {
            return;
        }
        if let Some((_, span)) = self.steps.remove(&update.id) {
            match outcome {
                CommandOutcome::Ok => {
                    span.record(keys::OUTCOME, "succeeded");
                }
                CommandOutcome::Failed(why) => {
                    span.record(keys::OUTCOME, "failed");
                    drover_telemetry::set_error(&span, why);
                }
                CommandOutcome::TimedOut => {
                    span.record(keys::OUTCOME, "timed_out");
                    drover_telemetry::set_error(&span, "the agent timed the step out");
                }
            }
        }
    }

    /// After a pass was stored, before its commands go out: follows the
    /// batch or traffic step and capacity, and ends the spans of commands
    /// the engine no longer waits for.
    pub(super) fn pass(&mut self, engine: &Engine, pass: &Pass) {
        if self.off() {
            return;
        }
        if let Some(last) = pass.events.last() {
            self.capacity = last.capacity;
            self.floor = last.floor;
            self.group_low = self.group_low.min(last.capacity);
        }
        self.steps.retain(|id, (_, span)| {
            let waiting = engine.instance(&id.instance).is_some_and(|(_, f)| f);
            if !waiting {
                span.record(keys::OUTCOME, "no_answer");
                drover_telemetry::set_error(span, "the rollout stopped waiting for an answer");
            }
            waiting
        });
        let st = engine.state();
        if engine.is_finished() {
            return;
        }
        let index = st.batch;
        if self.group.as_ref().is_some_and(|(i, _)| *i == index) {
            return;
        }
        self.end_group();
        let spec = st.spec();
        let span = match &st.traffic {
            Some(t) => tracing::info_span!(
                target: TARGET,
                parent: &self.root,
                "traffic_step",
                "drover.service" = %spec.service,
                "drover.release" = %spec.target.version,
                "drover.traffic_step" = index + 1,
                "drover.share" = t.steps.get(index as usize).map(ToString::to_string),
                "drover.floor" = self.floor,
                "drover.capacity" = Empty,
            ),
            None => tracing::info_span!(
                target: TARGET,
                parent: &self.root,
                "batch",
                "drover.service" = %spec.service,
                "drover.release" = %spec.target.version,
                "drover.batch" = index + 1,
                "drover.batch_size" = st.limits.batch_size(index),
                "drover.floor" = self.floor,
                "drover.capacity" = Empty,
            ),
        };
        self.group_low = self.capacity;
        self.group = Some((index, span));
    }

    /// A command about to be sent: its span (the same for a re-send of the
    /// same id) and the `traceparent` it carries.
    pub(super) fn send(&mut self, send: &Outgoing) -> String {
        if self.off() {
            return String::new();
        }
        let parent = self.group.as_ref().map_or(&self.root, |(_, s)| s);
        let (_, span) = self.steps.entry(send.id.clone()).or_insert_with(|| {
            let (name, release) = match &send.kind {
                CommandKind::Stage { release } => ("stage", Some(release.version.as_str())),
                CommandKind::Drain => ("drain", None),
                CommandKind::Stop => ("stop", None),
                CommandKind::Deploy { release } => ("deploy", Some(release.version.as_str())),
                CommandKind::Start => ("start", None),
                CommandKind::Verify { .. } => ("verify", None),
                CommandKind::Undrain => ("undrain", None),
                CommandKind::SetWeight { .. } => ("set_weight", None),
            };
            let weight = match &send.kind {
                CommandKind::SetWeight { weight } => *weight,
                _ => None,
            };
            let span = tracing::info_span!(
                target: TARGET,
                parent: parent,
                "step",
                otel.name = name,
                otel.kind = "client",
                "drover.service" = %self.service,
                "drover.host" = %send.host,
                "drover.instance" = %send.instance,
                "drover.step" = name,
                "drover.release" = release,
                "drover.command" = %send.id,
                "drover.attempt" = send.id.attempt,
                "drover.weight" = weight,
                "drover.capacity" = self.capacity,
                "drover.floor" = self.floor,
                "drover.outcome" = Empty,
            );
            (send.host.clone(), span)
        });
        drover_telemetry::traceparent(span).unwrap_or_default()
    }

    fn end_group(&mut self) {
        if let Some((_, span)) = self.group.take()
            && self.group_low != u32::MAX
        {
            span.record(keys::CAPACITY, self.group_low);
        }
    }

    /// The rollout ended (`outcome`), or halted (`None`).
    pub(super) fn finish(&mut self, engine: &Engine, outcome: Option<&Outcome>) {
        self.finished = true;
        if self.off() {
            return;
        }
        for (_, (_, span)) in self.steps.drain() {
            span.record(keys::OUTCOME, "no_answer");
        }
        self.end_group();
        let (word, error) = match outcome {
            Some(Outcome::Succeeded) => ("succeeded", None),
            Some(o @ Outcome::Failed { .. }) => ("failed", Some(o.to_string())),
            Some(o @ Outcome::RolledBack { .. }) => ("rolled_back", Some(o.to_string())),
            Some(o @ Outcome::Aborted { .. }) => ("aborted", Some(o.to_string())),
            None => (
                "halted",
                Some("the rollout's state could not be stored".into()),
            ),
        };
        self.root.record(keys::OUTCOME, word);
        self.root
            .record(keys::CAPACITY, engine.state().lowest_capacity);
        if let Some(e) = error {
            drover_telemetry::set_error(&self.root, &e);
        }
    }
}

impl Drop for RolloutTrace {
    /// A rollout left running (the coordinator stops or hands over): its
    /// spans end here, and the coordinator that resumes it continues the
    /// trace.
    fn drop(&mut self) {
        if !self.finished && !self.off() {
            self.root.record(keys::OUTCOME, "interrupted");
        }
    }
}

/// A DR drill's, failover's or failback's trace: a root span named after
/// its kind (`drill`, `failover`, `failback`) and a span per step
/// (`approval`, `stop_writes`, `catch_up`, `promote`, `switch`, `verify`)
/// while it runs. The drill's weight commands carry the `switch` span's
/// context, so the agents' `set_weight` spans sit under it.
pub(crate) struct DrillTrace {
    root: Span,
    /// The running step: its index in the drill's steps, and its span.
    step: Option<(usize, Span)>,
    service: String,
    finished: bool,
}

impl DrillTrace {
    /// A drill resumed by another coordinator (or after a restart) gets a
    /// trace of its own from there on.
    pub(crate) fn open(d: &crate::drill::engine::Drill) -> DrillTrace {
        let kind = d.kind.as_str();
        let root = tracing::info_span!(
            target: TARGET,
            parent: None,
            "drill",
            otel.name = kind,
            "drover.drill" = %d.id,
            "drover.kind" = kind,
            "drover.service" = %d.plan.service,
            "drover.outcome" = Empty,
        );
        DrillTrace {
            root,
            step: None,
            service: d.plan.service.clone(),
            finished: false,
        }
    }

    /// Follows the drill's running step: ends the span of one that
    /// stopped running, opens one for a step that started.
    pub(crate) fn observe(&mut self, d: &crate::drill::engine::Drill) {
        use crate::drill::engine::StepState;
        if self.root.is_disabled() {
            return;
        }
        let running = (d.steps.iter()).position(|s| s.state == StepState::Running);
        if self.step.as_ref().map(|(i, _)| *i) == running {
            return;
        }
        self.end_step(d);
        if let Some(i) = running {
            let name = d.steps[i].name.as_str();
            let span = tracing::info_span!(
                target: TARGET,
                parent: &self.root,
                "drill_step",
                otel.name = name,
                "drover.service" = %self.service,
                "drover.step" = name,
                "drover.outcome" = Empty,
            );
            self.step = Some((i, span));
        }
    }

    fn end_step(&mut self, d: &crate::drill::engine::Drill) {
        use crate::drill::engine::StepState;
        let Some((i, span)) = self.step.take() else {
            return;
        };
        let Some(step) = d.steps.get(i) else {
            return;
        };
        let word = match step.state {
            StepState::Done => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Pending | StepState::Running => "interrupted",
        };
        span.record(keys::OUTCOME, word);
        if step.state == StepState::Failed {
            drover_telemetry::set_error(&span, &step.output);
        }
    }

    /// The running step's span (the root between steps), to run its work in.
    pub(crate) fn span(&self) -> Span {
        self.step
            .as_ref()
            .map_or_else(|| self.root.clone(), |(_, s)| s.clone())
    }

    /// The drill ended as `d` says.
    pub(crate) fn finish(&mut self, d: &crate::drill::engine::Drill) {
        self.finished = true;
        if self.root.is_disabled() {
            return;
        }
        self.end_step(d);
        self.root.record(keys::OUTCOME, d.phase.as_str());
        if !d.reason.is_empty() {
            drover_telemetry::set_error(&self.root, &d.reason);
        }
    }
}

impl Drop for DrillTrace {
    fn drop(&mut self) {
        if !self.finished && !self.root.is_disabled() {
            self.root.record(keys::OUTCOME, "interrupted");
        }
    }
}
