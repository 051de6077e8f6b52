//! `--dry-run`: what the engine would do if every command succeeded and the
//! fleet stayed as it is now. Computed by running the real engine against a
//! perfect fleet, so the forecast cannot drift from the rules.

use std::collections::VecDeque;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::engine::{Engine, PlanError};
use super::model::{
    CommandKind, CommandOutcome, Input, InstanceInfo, Millis, OperatorAction, Output,
};
use super::spec::{Release, RolloutSpec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBatch {
    /// 1-based.
    pub number: u32,
    /// Instances started in this batch, in order.
    pub instances: Vec<String>,
    /// Groups taken down together; more than one when the floor, the
    /// `max_unavailable` cap or the spread limit shrinks the batch.
    pub waves: Vec<Vec<String>>,
    /// Most instances down at once during the batch.
    pub max_down: u32,
    /// Lowest forecast capacity while the batch runs.
    pub lowest_capacity: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedSkip {
    pub instance: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub service: String,
    pub target: Release,
    pub total: u32,
    pub floor: u32,
    pub capacity: u32,
    pub skipped: Vec<PlannedSkip>,
    pub batches: Vec<PlannedBatch>,
    pub lowest_capacity: u32,
    /// Set when the rollout would wait forever with the fleet as it is (for
    /// example floor reached and only healthy instances left to update).
    pub stalls: Option<String>,
    /// Canary: each traffic step, with its weights, as if every step
    /// passed; empty for a rolling update.
    pub traffic_steps: Vec<PlannedTrafficStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedTrafficStep {
    /// 1-based.
    pub number: u32,
    pub share: drover_model::Share,
    /// Instances on the new release during the step.
    pub updated: u32,
    /// Their weight, and that of the instances still on the old release.
    pub new_weight: u32,
    pub old_weight: u32,
    #[serde(with = "humantime_serde")]
    pub bake: std::time::Duration,
}

impl Engine {
    /// The plan for `--dry-run`, or the reason the rollout would be refused.
    pub fn plan(spec: &RolloutSpec, instances: Vec<InstanceInfo>) -> Result<Plan, PlanError> {
        let (mut eng, first) = Engine::start("dry-run", spec.clone(), instances, Millis(0))?;
        let status = eng.status();
        // Capacity before the first batch went out, from the opening event.
        let capacity = (first.iter())
            .find_map(|o| match o {
                Output::Event(e) => Some(e.capacity),
                _ => None,
            })
            .unwrap_or(status.capacity);
        let mut plan = Plan {
            service: spec.service.clone(),
            target: spec.target.clone(),
            total: status.counts.total,
            floor: status.floor,
            capacity,
            skipped: (status.instances.iter())
                .filter(|i| i.note.is_some())
                .map(|i| PlannedSkip {
                    instance: i.id.clone(),
                    reason: i.note.clone().unwrap_or_default(),
                })
                .collect(),
            batches: Vec::new(),
            lowest_capacity: capacity,
            stalls: None,
            traffic_steps: Vec::new(),
        };
        let mut queue = VecDeque::new();
        let mut outputs = first;
        let mut now = 0u64;
        // Every instance takes seven commands (blue-green: its pair a few
        // weights, a drain and a stop more); anything beyond is a bug, not
        // a plan.
        let instances = u64::try_from(eng.state().instances.len()).unwrap_or(u64::MAX);
        let limit = 16 * instances + 16;
        let mut answered = 0_u64;
        loop {
            plan.record(&eng, &outputs, &mut queue);
            if eng.is_finished() {
                break;
            }
            let Some(id) = queue.pop_front() else {
                // A canary step bakes: take its weights, then pass it as
                // if its analysis had, to plan the next one.
                match eng.status().wait_reason {
                    Some(super::reason::Block::Baking { .. }) => {
                        plan.traffic_steps.extend(eng.planned_step());
                        now += 1;
                        outputs = eng.handle(Millis(now), Input::Operator(OperatorAction::Promote));
                        continue;
                    }
                    // Blue-green: the hook passes, the switch's last
                    // weights are the plan's last step, keep-old ends.
                    Some(super::reason::Block::Hook { .. }) => {
                        now += 1;
                        let attempt = eng.colors().map_or(0, |c| c.hook_attempt);
                        let done = super::bluegreen::hook_done(attempt, true, "dry run");
                        outputs = eng.handle(Millis(now), done);
                        continue;
                    }
                    Some(super::reason::Block::KeepingOld { until, .. }) => {
                        plan.traffic_steps.extend(eng.planned_step());
                        now = now.max(until.0);
                        outputs = eng.handle(Millis(now), Input::Tick);
                        continue;
                    }
                    _ => {}
                }
                plan.stalls = eng.status().wait_reason.map(|b| b.to_string());
                break;
            };
            now += 1;
            answered += 1;
            if answered > limit {
                plan.stalls = Some("the dry run did not converge".to_string());
                break;
            }
            let input = Input::CommandResult {
                id,
                outcome: CommandOutcome::Ok,
            };
            outputs = eng.handle(Millis(now), input);
        }
        // A wave is opened after each group in case another follows.
        for b in &mut plan.batches {
            b.waves.retain(|w| !w.is_empty());
        }
        Ok(plan)
    }
}

impl Plan {
    fn record(&mut self, eng: &Engine, outputs: &[Output], queue: &mut VecDeque<super::CommandId>) {
        let status = eng.status();
        let mut wave: Vec<(u32, String)> = Vec::new();
        for o in outputs {
            if let Output::Send {
                id, instance, kind, ..
            } = o
            {
                queue.push_back(id.clone());
                // A chain's first command: instances started together.
                if matches!(kind, CommandKind::Stage { .. }) {
                    let batch = (status.instances.iter())
                        .find(|i| &i.id == instance)
                        .and_then(|i| i.batch)
                        .unwrap_or(status.batch);
                    wave.push((batch, instance.clone()));
                }
            }
        }
        for (batch, instance) in wave.iter() {
            if self.batches.last().is_none_or(|b| b.number != *batch) {
                self.batches.push(PlannedBatch {
                    number: *batch,
                    instances: Vec::new(),
                    waves: vec![Vec::new()],
                    max_down: 0,
                    lowest_capacity: status.capacity,
                });
            }
            if let Some(b) = self.batches.last_mut() {
                b.instances.push(instance.clone());
                if let Some(w) = b.waves.last_mut() {
                    w.push(instance.clone());
                }
            }
        }
        if let Some(b) = self.batches.last_mut() {
            if !wave.is_empty() && b.waves.last().is_some_and(|w| !w.is_empty()) {
                b.waves.push(Vec::new());
            }
            b.lowest_capacity = b.lowest_capacity.min(status.capacity);
            b.max_down = b.max_down.max(status.counts.in_progress);
        }
        self.lowest_capacity = self.lowest_capacity.min(status.capacity);
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rollout {} to {}: {} instances, floor {}, capacity now {}",
            self.service, self.target, self.total, self.floor, self.capacity
        )?;
        for s in &self.skipped {
            writeln!(f, "  skip      {} ({})", s.instance, s.reason)?;
        }
        for b in &self.batches {
            let pace = if (b.max_down as usize) < b.instances.len() {
                format!("{} at a time, ", b.max_down)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  batch {:<3} {}  ({pace}capacity >= {})",
                b.number,
                b.instances.join(", "),
                b.lowest_capacity
            )?;
        }
        write!(
            f,
            "lowest capacity {} (floor {})",
            self.lowest_capacity, self.floor
        )?;
        for s in &self.traffic_steps {
            write!(
                f,
                "\n  step {:<3} {:>6}  {} updated at weight {}, the rest at {}, bake {}",
                s.number,
                s.share.to_string(),
                s.updated,
                s.new_weight,
                s.old_weight,
                humantime::format_duration(s.bake)
            )?;
        }
        if let Some(s) = &self.stalls {
            write!(f, "\nwould stall: {s}")?;
        }
        Ok(())
    }
}
