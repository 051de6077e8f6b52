//! Blue-green: every host runs a pair of instances of the service, one
//! blue and one green. The color that serves is the active one; the other,
//! idle, gets the new release, then the traffic, step by step, while the
//! old color stays up for an instant rollback.
//!
//! # How a blue-green rollout runs
//!
//! Both colors are the rollout's instances: the active color's are
//! [`SkipReason::ServingColor`] (never chained: they are the baseline), the
//! idle color's go through the usual chains. The floor counts one color.
//!
//! 1. `Isolating`: every idle instance gets weight 0, so nothing it serves
//!    while it is redeployed (its undrain leaves it UP at weight 0, which
//!    counts as out of service).
//! 2. `Updating` (step 1's batch is the whole idle color): chains under the
//!    usual limits; an idle instance costs no capacity. Blue-green switches
//!    whole colors: an idle instance that failed or was skipped rolls the
//!    rollout back before any traffic moves.
//! 3. `Hook`: the pre-traffic hook, if the spec names one, runs against the
//!    idle color (the runtime runs it and answers [`Input::HookDone`]); a
//!    failure rolls back before any traffic moves. Re-run after a restore.
//! 4. Traffic steps as a canary's, new color against old, each judged; at
//!    100% the old color gets weight 0 (nothing to compare against: no bake).
//! 5. `DrainingOld`, then `KeepingOld` for `keep_old` (a rollback then moves
//!    every weight back), then `StoppingOld`, then `Retired`: the end.
//!
//! A rollback or abort switches back by weights ([`Back`]): the old color
//! is undrained and weighted first, the new color is taken to weight 0 only
//! once enough of the old holds the floor, then the new color is drained.
//! However it ends, the color that does not serve is left drained, so
//! putting back the configured weights ([`Mode::Unweighting`]) sends it
//! nothing.
//!
//! Drains, undrains and stops outside a chain go through a side slot per
//! instance ([`SideSlot`]) with ids `<rollout>/<instance>/<verb>/<n>`,
//! `n` from [`SIDE_ATTEMPTS`] up, so they never collide with a chain's.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_model::Color;
use serde::{Deserialize, Serialize};

use super::engine::{Cx, Engine, Pass, PlanError};
use super::model::{
    CommandId, CommandKind, CommandOutcome, Input, InstanceInfo, Millis, Outcome, Output, Step,
};
use super::reason::{Block, StopReason, Unfinished};
use super::state::{InFlight, Mode, RestoreKind, SkipReason, Then, count};
use super::traffic::{BASE_WEIGHT, Stage};

/// Side command ids count from here, far above a chain's attempts.
pub const SIDE_ATTEMPTS: u32 = 100;
/// Tries of one side command while its host is connected.
pub const SIDE_TRIES: u32 = 3;

/// A command sent outside any chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Side {
    Drain,
    Undrain,
    Stop,
}

impl Side {
    fn step(self) -> Step {
        match self {
            Side::Drain => Step::Draining,
            Side::Undrain => Step::Undraining,
            Side::Stop => Step::Stopping,
        }
    }

    fn kind(self) -> CommandKind {
        match self {
            Side::Drain => CommandKind::Drain,
            Side::Undrain => CommandKind::Undrain,
            Side::Stop => CommandKind::Stop,
        }
    }

    fn done(self) -> &'static str {
        match self {
            Side::Drain => "drained",
            Side::Undrain => "undrained",
            Side::Stop => "stopped",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Side::Drain => "drain",
            Side::Undrain => "undrain",
            Side::Stop => "stop",
        }
    }
}

/// The side command drover keeps on an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SideSlot {
    pub action: Side,
    /// The agent confirmed `action`.
    pub done: bool,
    pub inflight: Option<InFlight>,
    pub fault: Option<String>,
    pub tries: u32,
    pub retry_at: Option<Millis>,
}

/// Where the switch back of a rollback or abort is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Back {
    /// The old color undrained and weighted.
    OldUp,
    /// The new color at weight 0.
    NewDown,
    /// The new color drained.
    DrainNew,
}

/// The blue-green side of a traffic rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Colors {
    /// The color that served at start (the old one).
    pub active: Color,
    pub hook_passed: bool,
    /// The attempt of the hook run last asked for.
    #[serde(default)]
    pub hook_attempt: u32,
    pub back: Option<Back>,
    /// Side commands sent so far: the `n` of the next one's id.
    pub sides: u32,
}

/// The pairs of a blue-green rollout and which color serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorPlan {
    /// The color that takes the traffic now; the other gets the release.
    pub active: Color,
    /// Instances of the active color, then of the idle one, by host.
    pub active_ids: Vec<String>,
    pub idle_ids: Vec<String>,
}

fn refuse(why: String) -> PlanError {
    PlanError::BlueGreen { why }
}

/// Checks the pairs and picks the active color: the one that serves. When
/// both serve (a first release deployed with `--initial`), blue stays
/// active and green becomes idle; when neither serves there is nothing to
/// switch from.
pub fn plan_colors(instances: &[InstanceInfo]) -> Result<ColorPlan, PlanError> {
    let mut by_host: BTreeMap<&str, Vec<&InstanceInfo>> = BTreeMap::new();
    for i in instances {
        if i.color.is_none() {
            return Err(refuse(format!(
                "{} has no color: give each instance of the service `color = \"blue\"` or \
                 `color = \"green\"` in its agent.toml (one of each per host)",
                i.id
            )));
        }
        by_host.entry(i.host.as_str()).or_default().push(i);
    }
    for (host, pair) in &by_host {
        let blue = pair.iter().filter(|i| i.color == Some(Color::Blue)).count();
        let green = pair.len() - blue;
        if (blue, green) != (1, 1) {
            return Err(refuse(format!(
                "host {host} has {blue} blue and {green} green instance(s) of the service; \
                 blue-green needs exactly one of each on every host"
            )));
        }
    }
    let serving = |c: Color| -> Vec<&InstanceInfo> {
        (instances.iter())
            .filter(|i| i.color == Some(c) && i.healthy && i.in_service && i.reachable)
            .collect()
    };
    let (blue, green) = (serving(Color::Blue), serving(Color::Green));
    let active = match (blue.is_empty(), green.is_empty()) {
        (true, true) => {
            return Err(refuse(
                "neither color serves: deploy the first release with a rolling update \
                 (`drover rollout start --initial`), then switch colors with blue-green"
                    .to_string(),
            ));
        }
        (false, true) => Color::Blue,
        (true, false) => Color::Green,
        // Both serve: the more complete color stays; blue on a tie.
        (false, false) if green.len() > blue.len() => Color::Green,
        (false, false) => Color::Blue,
    };
    let ids = |c: Color| -> Vec<String> {
        (by_host.values())
            .flat_map(|pair| pair.iter().filter(|i| i.color == Some(c)))
            .map(|i| i.id.clone())
            .collect()
    };
    Ok(ColorPlan {
        active,
        active_ids: ids(active),
        idle_ids: ids(active.other()),
    })
}

impl Engine {
    pub(super) fn colors(&self) -> Option<&Colors> {
        self.st.traffic.as_ref()?.colors.as_ref()
    }

    fn colors_mut(&mut self) -> Option<&mut Colors> {
        self.st.traffic.as_mut()?.colors.as_mut()
    }

    /// Whether this rollout is a blue-green switch.
    pub(super) fn is_blue_green(&self) -> bool {
        self.colors().is_some()
    }

    fn color_names(&self) -> (&'static str, &'static str) {
        let active = self.colors().map_or(Color::Blue, |c| c.active);
        (active.as_str(), active.other().as_str())
    }

    /// Instances of the color that served at start.
    pub(super) fn serving_color(&self) -> Vec<usize> {
        (0..self.st.instances.len())
            .filter(|&n| self.st.instances[n].skipped == Some(SkipReason::ServingColor))
            .collect()
    }

    /// Instances of the color that gets the release.
    fn idle_color(&self) -> Vec<usize> {
        (0..self.st.instances.len())
            .filter(|&n| self.st.instances[n].skipped != Some(SkipReason::ServingColor))
            .collect()
    }

    // ---- side commands ----

    fn send_side(&mut self, cx: &mut Cx, idx: usize, action: Side, tries: u32) {
        let n = match self.colors_mut() {
            Some(c) => {
                c.sides += 1;
                c.sides
            }
            None => return,
        };
        let i = &self.st.instances[idx];
        let id = CommandId::new(&self.st.id, &i.id, action.step(), SIDE_ATTEMPTS + n);
        let flight = InFlight::new(id, action.kind(), self.st.spec.step_timeout, cx.now);
        let sent = flight.clone();
        self.edit(idx, |i| {
            i.side = Some(SideSlot {
                action,
                done: false,
                inflight: Some(flight),
                fault: None,
                tries,
                retry_at: None,
            });
        });
        cx.dirty = true;
        self.send_flight(cx, idx, &sent);
    }

    /// Sends `action` to `idx` unless it was already asked for.
    fn side(&mut self, cx: &mut Cx, idx: usize, action: Side) {
        let asked = (self.st.instances[idx].side.as_ref()).is_some_and(|s| s.action == action);
        if !asked {
            self.send_side(cx, idx, action, 1);
        }
    }

    pub(super) fn on_side_result(
        &mut self,
        cx: &mut Cx,
        idx: usize,
        id: &CommandId,
        outcome: CommandOutcome,
    ) {
        let ours = (self.st.instances[idx].side.as_ref())
            .and_then(|s| s.inflight.as_ref())
            .is_some_and(|f| &f.id == id);
        if !ours {
            return;
        }
        cx.dirty = true;
        self.progress(cx);
        let fault = match outcome {
            CommandOutcome::Ok => None,
            CommandOutcome::Failed(m) => Some(m),
            CommandOutcome::TimedOut => Some("the agent gave up on it".to_string()),
        };
        self.settle_side(cx, idx, fault);
    }

    fn settle_side(&mut self, cx: &mut Cx, idx: usize, fault: Option<String>) {
        let reachable = self.st.instances[idx].observed.reachable;
        let now = cx.now;
        let settled = self.edit(idx, |i| {
            let s = i.side.as_mut()?;
            s.inflight = None;
            s.done = fault.is_none();
            s.fault.clone_from(&fault);
            s.retry_at = (fault.is_some() && reachable && s.tries < SIDE_TRIES)
                .then(|| now.plus(Duration::from_secs(u64::from(s.tries))));
            Some((s.action, s.tries, s.retry_at.is_some()))
        });
        let Some((action, tries, again)) = settled else {
            return;
        };
        let step = Some(action.step());
        let msg = match (&fault, again) {
            (None, _) => action.done().to_string(),
            (Some(f), true) => format!(
                "{} failed (try {tries} of {SIDE_TRIES}): {f}; trying again",
                action.verb()
            ),
            (Some(f), false) => format!("{} failed: {f}", action.verb()),
        };
        self.event(cx, Some(idx), step, msg);
    }

    /// Side commands past their deadline fail; tries that are due go out.
    pub(super) fn expire_sides(&mut self, cx: &mut Cx) {
        for idx in 0..self.st.instances.len() {
            let Some(s) = self.st.instances[idx].side.as_ref() else {
                continue;
            };
            if s.inflight.is_none() && s.retry_at.is_some_and(|t| t <= cx.now) {
                let (action, tries) = (s.action, s.tries);
                self.send_side(cx, idx, action, tries + 1);
                continue;
            }
            if s.inflight.as_ref().is_some_and(|f| f.deadline <= cx.now) {
                cx.dirty = true;
                self.progress(cx);
                let why = if self.st.instances[idx].observed.reachable {
                    "no answer in time"
                } else {
                    "host lost"
                };
                self.settle_side(cx, idx, Some(why.to_string()));
            }
        }
    }

    /// Side commands in flight or due to be tried again.
    pub(super) fn sides_in_flight(&self) -> u32 {
        count((self.st.instances.iter()).filter(|i| {
            (i.side.as_ref()).is_some_and(|s| s.inflight.is_some() || s.retry_at.is_some())
        }))
    }

    /// Earliest side-command deadline or keep-old end, for
    /// [`Engine::next_deadline`].
    pub(super) fn colors_deadline(&self) -> Option<Millis> {
        let sides = (self.st.instances.iter())
            .filter_map(|i| {
                let s = i.side.as_ref()?;
                s.inflight.as_ref().map(|f| f.deadline).or(s.retry_at)
            })
            .min();
        let keep = match self.st.traffic.as_ref().map(|t| &t.stage) {
            Some(Stage::KeepingOld { until }) if self.st.mode == Mode::Forward => Some(*until),
            _ => None,
        };
        sides.into_iter().chain(keep).min()
    }

    /// `id: why` of each of `ids` whose side command `action` did not
    /// succeed.
    fn side_problems(&self, ids: &[usize], action: Side) -> Vec<String> {
        (ids.iter())
            .filter_map(|&n| {
                let i = &self.st.instances[n];
                let s = i.side.as_ref().filter(|s| s.action == action)?;
                let f = s.fault.as_ref().filter(|_| !s.done)?;
                Some(format!("{}: {} failed: {f}", i.id, action.verb()))
            })
            .collect()
    }

    // ---- going forward ----

    /// Takes the idle color out of traffic before anything is deployed on
    /// it; returns why the rollout waits, `None` once done.
    pub(super) fn drive_isolating(&mut self, cx: &mut Cx) -> Option<Block> {
        let idle = self.idle_color();
        let todo: Vec<usize> = (idle.iter().copied())
            .filter(|&n| (self.st.instances[n].weight.as_ref()).is_none_or(|w| w.want != Some(0)))
            .collect();
        if !todo.is_empty() {
            let generation = self.next_generation();
            let (_, idle_name) = self.color_names();
            let msg = format!(
                "taking the idle color ({idle_name}) out of traffic: weight 0 on {} instance(s)",
                todo.len()
            );
            cx.dirty = true;
            self.progress(cx);
            self.event(cx, None, None, msg);
            for idx in todo {
                self.send_weight(cx, idx, Some(0), generation, 1);
            }
        }
        let n = self.weights_in_flight();
        if n > 0 {
            let (_, idle_name) = self.color_names();
            return Some(Block::Colors {
                what: format!("taking the idle color ({idle_name}) out of traffic"),
                instances: n,
            });
        }
        if self.st.mode != Mode::Forward {
            return None;
        }
        if let Some(t) = &mut self.st.traffic {
            t.stage = Stage::Updating;
        }
        cx.dirty = true;
        let (_, idle_name) = self.color_names();
        let msg = format!(
            "idle color ({idle_name}) out of traffic; deploying {} on it",
            self.st.spec.target
        );
        self.event(cx, None, None, msg);
        self.drive_traffic(cx)
    }

    /// Once the idle color is updated: checks it is whole and runs the
    /// pre-traffic hook. `Some` while the rollout waits (or was stopped),
    /// `None` when the traffic may move.
    pub(super) fn colors_ready(&mut self, cx: &mut Cx) -> Option<Option<Block>> {
        let idle = self.idle_color();
        let missing: Vec<String> = (idle.iter())
            .map(|&n| &self.st.instances[n])
            .filter(|i| i.step != Step::Done && i.skipped != Some(SkipReason::OnTarget))
            .map(|i| match &i.fault {
                Some(f) => format!("{}: {f}", i.id),
                None => format!("{}: {}", i.id, i.step.as_str()),
            })
            .collect();
        if !missing.is_empty() {
            let (_, idle_name) = self.color_names();
            let why = StopReason::BlueGreen {
                why: format!(
                    "the idle color ({idle_name}) is not whole, and blue-green switches whole \
                     colors; no traffic moved"
                ),
                who: missing,
            };
            self.stop(cx, why, Then::Rollback);
            return Some(None);
        }
        let hook = self.st.spec.pre_traffic_hook.clone()?;
        if self.colors().is_some_and(|c| c.hook_passed) {
            return None;
        }
        self.run_hook(cx);
        Some(Some(Block::Hook { name: hook }))
    }

    /// Asks the runtime to run the pre-traffic hook (again, after a
    /// restore: a run cut short by the crash has no verdict).
    fn run_hook(&mut self, cx: &mut Cx) {
        let Some(name) = self.st.spec.pre_traffic_hook.clone() else {
            return;
        };
        let attempt = match self.colors_mut() {
            Some(c) => {
                c.hook_attempt += 1;
                c.hook_attempt
            }
            None => return,
        };
        if let Some(t) = &mut self.st.traffic {
            t.stage = Stage::Hook { attempt };
        }
        let idle = self.idle_color();
        let instances = (idle.iter())
            .map(|&n| self.st.instances[n].id.clone())
            .collect();
        let color = self.colors().map_or(Color::Green, |c| c.active.other());
        cx.dirty = true;
        self.progress(cx);
        let msg = format!(
            "running the pre-traffic hook `{name}` against the idle color ({}), run {attempt}",
            color.as_str()
        );
        self.event(cx, None, None, msg);
        cx.out.push(Output::RunHook {
            name,
            attempt,
            color,
            instances,
            release: self.st.spec.target.clone(),
        });
    }

    /// After a restore: a hook that was running is run again.
    pub(super) fn rerun_hook(&mut self, cx: &mut Cx) {
        let running = matches!(
            self.st.traffic.as_ref().map(|t| &t.stage),
            Some(Stage::Hook { .. })
        );
        if running && self.st.mode == Mode::Forward {
            self.run_hook(cx);
        }
    }

    pub(super) fn on_hook_done(&mut self, cx: &mut Cx, attempt: u32, ok: bool, detail: &str) {
        let current = matches!(
            self.st.traffic.as_ref().map(|t| &t.stage),
            Some(Stage::Hook { attempt: a }) if *a == attempt
        );
        if !current || self.st.mode != Mode::Forward {
            return;
        }
        let name = self.st.spec.pre_traffic_hook.clone().unwrap_or_default();
        cx.dirty = true;
        self.progress(cx);
        if ok {
            if let Some(c) = self.colors_mut() {
                c.hook_passed = true;
            }
            if let Some(t) = &mut self.st.traffic {
                t.stage = Stage::Updating;
            }
            self.event(
                cx,
                None,
                None,
                format!("pre-traffic hook `{name}` passed: {detail}"),
            );
        } else {
            let why = StopReason::BlueGreen {
                why: format!("pre-traffic hook `{name}` failed: {detail}; no traffic moved"),
                who: Vec::new(),
            };
            self.stop(cx, why, Then::Rollback);
        }
    }

    /// Blue-green's last step, once the new color holds its weights: the
    /// old color to weight 0. `Some(commands under way)` while it waits.
    pub(super) fn old_color_out(&mut self, cx: &mut Cx) -> Option<u32> {
        let todo: Vec<usize> = (self.serving_color().into_iter())
            .filter(|&n| (self.st.instances[n].weight.as_ref()).is_none_or(|w| w.want != Some(0)))
            .collect();
        if !todo.is_empty() {
            let generation = self.next_generation();
            let (old, _) = self.color_names();
            let msg = format!("taking the old color ({old}) out of traffic: weight 0");
            self.event(cx, None, None, msg);
            for idx in todo {
                self.send_weight(cx, idx, Some(0), generation, 1);
            }
        }
        match self.weights_in_flight() {
            0 => None,
            n => Some(n),
        }
    }

    /// Every weight at 100% is in place: the old color is drained.
    pub(super) fn start_retiring(&mut self, cx: &mut Cx) {
        if let Some(t) = &mut self.st.traffic {
            t.stage = Stage::DrainingOld;
        }
        cx.dirty = true;
        self.progress(cx);
        let (old, new) = self.color_names();
        let msg = format!("all traffic on the new color ({new}); draining the old color ({old})");
        self.event(cx, None, None, msg);
        for idx in self.serving_color() {
            self.side(cx, idx, Side::Drain);
        }
    }

    /// The stages after the switch; returns why the rollout waits, `None`
    /// once the old color is retired.
    pub(super) fn drive_retiring(&mut self, cx: &mut Cx) -> Option<Block> {
        let stage = self.st.traffic.as_ref()?.stage.clone();
        let (old, _) = self.color_names();
        match stage {
            Stage::DrainingOld => {
                let n = self.sides_in_flight();
                if n > 0 {
                    return Some(Block::Colors {
                        what: format!("draining the old color ({old})"),
                        instances: n,
                    });
                }
                let keep = self.st.spec.keep_old_time();
                let until = cx.now.plus(keep);
                if let Some(t) = &mut self.st.traffic {
                    t.stage = Stage::KeepingOld { until };
                }
                cx.dirty = true;
                self.progress(cx);
                let msg = format!(
                    "old color ({old}) drained, kept running for {}: `drover rollout rollback {}` \
                     moves the traffic back until then",
                    super::engine::show(keep),
                    self.st.id
                );
                self.event(cx, None, None, msg);
                self.drive_retiring(cx)
            }
            Stage::KeepingOld { until } if cx.now < until => Some(Block::KeepingOld {
                color: old.to_string(),
                until,
            }),
            Stage::KeepingOld { .. } => {
                if let Some(t) = &mut self.st.traffic {
                    t.stage = Stage::StoppingOld;
                }
                cx.dirty = true;
                self.progress(cx);
                self.event(
                    cx,
                    None,
                    None,
                    format!("keep-old over: stopping the old color ({old})"),
                );
                for idx in self.serving_color() {
                    self.side(cx, idx, Side::Stop);
                }
                self.drive_retiring(cx)
            }
            Stage::StoppingOld => {
                let n = self.sides_in_flight();
                if n > 0 {
                    return Some(Block::Colors {
                        what: format!("stopping the old color ({old})"),
                        instances: n,
                    });
                }
                if let Some(t) = &mut self.st.traffic {
                    t.stage = Stage::Retired;
                }
                cx.dirty = true;
                self.progress(cx);
                self.event(cx, None, None, format!("old color ({old}) stopped"));
                None
            }
            _ => None,
        }
    }

    /// Whether a blue-green rollout has come to its end going forward.
    pub(super) fn colors_retired(&self) -> bool {
        matches!(
            self.st.traffic.as_ref().map(|t| &t.stage),
            Some(Stage::Retired)
        )
    }

    /// The outcome of a blue-green rollout that retired its old color.
    pub(super) fn retired_outcome(&self) -> Outcome {
        let serving = self.serving_color();
        let mut who = self.side_problems(&serving, Side::Drain);
        who.extend(self.side_problems(&serving, Side::Stop));
        if who.is_empty() {
            return Outcome::Succeeded;
        }
        let (old, _) = self.color_names();
        Outcome::Failed {
            reason: StopReason::BlueGreen {
                why: format!(
                    "all traffic is on the new release, but the old color ({old}) was not fully \
                     drained and stopped"
                ),
                who,
            },
        }
    }

    /// Whether `rollback` and `abort` still mean something: not once the
    /// old color is being stopped.
    pub(super) fn colors_past_return(&self) -> bool {
        matches!(
            self.st.traffic.as_ref().map(|t| &t.stage),
            Some(Stage::StoppingOld | Stage::Retired)
        )
    }

    // ---- switching back ----

    /// A rollback or abort of a blue-green rollout: traffic back to the
    /// old color by weights, then the new color drained.
    pub(super) fn drive_switch_back(
        &mut self,
        cx: &mut Cx,
        reason: StopReason,
        kind: RestoreKind,
    ) -> Pass {
        let (old, new) = self.color_names();
        let wait = |what: String, instances: u32| Pass {
            again: false,
            wait: Some(Block::Colors { what, instances }),
        };
        let busy = self.weights_in_flight() + self.sides_in_flight();
        let back = self.colors().and_then(|c| c.back);
        match back {
            None => {
                let idle = self.idle_color();
                // Traffic moved once an idle instance was given a weight
                // above 0 (isolation only ever sets 0).
                let moved = (idle.iter()).any(|&n| {
                    (self.st.instances[n].weight.as_ref()).is_some_and(|w| w.want != Some(0))
                });
                cx.dirty = true;
                self.progress(cx);
                if moved {
                    self.set_back(Back::OldUp);
                    let msg = format!("switching traffic back to the old color ({old})");
                    self.event(cx, None, None, msg);
                } else {
                    self.start_drain_new(cx);
                }
                Pass {
                    again: true,
                    wait: None,
                }
            }
            Some(Back::OldUp) if self.old_color_up(cx) > 0 => {
                let busy = self.weights_in_flight() + self.sides_in_flight();
                wait(
                    format!("moving traffic back to the old color ({old})"),
                    busy,
                )
            }
            Some(Back::OldUp) => {
                let serving = self.serving_color();
                let ready = count(serving.iter().filter(|&&n| {
                    let i = &self.st.instances[n];
                    let weighted = i.weight.as_ref().is_some_and(|w| w.applied);
                    let up = i.side.as_ref().is_none_or(|s| s.done);
                    weighted && up && i.observed.reachable && i.observed.healthy
                }));
                let needed = self.st.limits.floor.max(1);
                if ready < needed {
                    // Taking the new color out now would drop under the
                    // floor: it keeps serving, and the operator is told.
                    let mut who = self.side_problems(&serving, Side::Undrain);
                    who.extend(
                        (serving.iter())
                            .map(|&n| &self.st.instances[n])
                            .filter_map(|i| {
                                let f = i.weight.as_ref()?.fault.as_ref()?;
                                Some(format!("{}: weight not set: {f}", i.id))
                            }),
                    );
                    let why = StopReason::BlueGreen {
                        why: format!(
                            "{reason}; but only {ready} instance(s) of the old color ({old}) could \
                             take the traffic back, under the floor of {needed}, so the new color \
                             ({new}) keeps serving"
                        ),
                        who,
                    };
                    self.finish(cx, Outcome::Failed { reason: why });
                    return Pass {
                        again: true,
                        wait: None,
                    };
                }
                self.set_back(Back::NewDown);
                cx.dirty = true;
                self.progress(cx);
                let generation = self.next_generation();
                for idx in self.idle_color() {
                    self.send_weight(cx, idx, Some(0), generation, 1);
                }
                Pass {
                    again: true,
                    wait: None,
                }
            }
            Some(Back::NewDown) if busy > 0 => {
                wait(format!("taking the new color ({new}) out of traffic"), busy)
            }
            Some(Back::NewDown) => {
                let msg = format!("all traffic back on the old color ({old})");
                self.event(cx, None, None, msg);
                self.start_drain_new(cx);
                Pass {
                    again: true,
                    wait: None,
                }
            }
            Some(Back::DrainNew) if busy > 0 => {
                wait(format!("draining the new color ({new})"), busy)
            }
            Some(Back::DrainNew) => {
                self.finish_switch_back(cx, reason, kind);
                Pass {
                    again: true,
                    wait: None,
                }
            }
        }
    }

    /// Undrains the old color's drained instances, then gives each its
    /// weight: one command per instance at a time, as the agents run them.
    /// Returns the commands still under way.
    fn old_color_up(&mut self, cx: &mut Cx) -> u32 {
        let mut generation = None;
        for idx in self.serving_color() {
            let i = &self.st.instances[idx];
            let side_busy =
                (i.side.as_ref()).is_some_and(|s| s.inflight.is_some() || s.retry_at.is_some());
            let weight_busy =
                (i.weight.as_ref()).is_some_and(|w| w.inflight.is_some() || w.retry_at.is_some());
            if side_busy || weight_busy {
                continue;
            }
            let drained = (i.side.as_ref()).is_some_and(|s| s.action == Side::Drain);
            if drained {
                self.send_side(cx, idx, Side::Undrain, 1);
                continue;
            }
            let weighted = (i.weight.as_ref()).is_some_and(|w| w.want == Some(BASE_WEIGHT));
            if !weighted && i.observed.reachable {
                let g = match generation {
                    Some(g) => g,
                    None => *generation.insert(self.next_generation()),
                };
                self.send_weight(cx, idx, Some(BASE_WEIGHT), g, 1);
            }
        }
        self.weights_in_flight() + self.sides_in_flight()
    }

    fn set_back(&mut self, back: Back) {
        if let Some(c) = self.colors_mut() {
            c.back = Some(back);
        }
    }

    fn start_drain_new(&mut self, cx: &mut Cx) {
        self.set_back(Back::DrainNew);
        cx.dirty = true;
        for idx in self.idle_color() {
            if self.st.instances[idx].observed.reachable {
                self.side(cx, idx, Side::Drain);
            }
        }
    }

    fn finish_switch_back(&mut self, cx: &mut Cx, reason: StopReason, kind: RestoreKind) {
        let idle = self.idle_color();
        let mut problems = self.side_problems(&idle, Side::Drain);
        for &idx in &idle {
            let i = &self.st.instances[idx];
            if !i.observed.reachable && i.side.is_none() {
                problems.push(format!("{}: host lost, not drained", i.id));
            }
            if let Some(f) = i.weight.as_ref().and_then(|w| w.fault.as_ref())
                && !i.weight.as_ref().is_some_and(|w| w.applied)
            {
                problems.push(format!("{}: weight 0 not set: {f}", i.id));
            }
        }
        let target = self.st.spec.target.clone();
        for idx in idle {
            let i = &self.st.instances[idx];
            if i.step == Step::Done && i.side.as_ref().is_some_and(|s| s.done) {
                self.edit(idx, |i| i.step = Step::RolledBack);
                let msg = format!("out of traffic and drained (still on {target})");
                self.event(cx, Some(idx), Some(Step::RolledBack), msg);
            }
        }
        let outcome = match (kind, problems.is_empty()) {
            (RestoreKind::Rollback, true) => Outcome::RolledBack { reason },
            (RestoreKind::Abort, true) => Outcome::Aborted { reason },
            (RestoreKind::Rollback, false) => Outcome::Failed {
                reason: StopReason::Incomplete {
                    reason: Box::new(reason),
                    unfinished: Unfinished::Rollback,
                    problems,
                },
            },
            (RestoreKind::Abort, false) => Outcome::Failed {
                reason: StopReason::Incomplete {
                    reason: Box::new(reason),
                    unfinished: Unfinished::Abort,
                    problems,
                },
            },
        };
        self.finish(cx, outcome);
    }
}

/// The runtime's answer to [`Output::RunHook`].
pub fn hook_done(attempt: u32, ok: bool, detail: impl Into<String>) -> Input {
    Input::HookDone {
        attempt,
        ok,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(host: &str, color: Option<Color>, serving: bool) -> InstanceInfo {
        let name = color.map_or("web", |c| c.as_str());
        InstanceInfo {
            id: format!("web-{name}@{host}"),
            host: host.to_string(),
            labels: Default::default(),
            release: None,
            healthy: serving,
            in_service: serving,
            reachable: true,
            balancers: Vec::new(),
            color,
        }
    }

    const B: Option<Color> = Some(Color::Blue);
    const G: Option<Color> = Some(Color::Green);

    #[test]
    fn the_serving_color_is_active_and_the_other_gets_the_release() {
        let fleet = [
            inst("h1", B, false),
            inst("h1", G, true),
            inst("h2", G, true),
            inst("h2", B, false),
        ];
        let plan = plan_colors(&fleet).expect("pairs");
        assert_eq!(plan.active, Color::Green);
        assert_eq!(plan.idle_ids, ["web-blue@h1", "web-blue@h2"]);
        assert_eq!(plan.active_ids, ["web-green@h1", "web-green@h2"]);
        // A first release deployed everywhere: blue stays, green switches.
        let both = [
            inst("h1", B, true),
            inst("h1", G, true),
            inst("h2", B, true),
            inst("h2", G, true),
        ];
        assert_eq!(plan_colors(&both).expect("pairs").active, Color::Blue);
    }

    #[test]
    fn pairs_and_a_serving_color_are_required_and_named() {
        let cases: [(Vec<InstanceInfo>, &str); 3] = [
            (
                vec![inst("h1", B, true), inst("h1", None, false)],
                "web-web@h1 has no color",
            ),
            (
                vec![inst("h1", B, true), inst("h1", B, false)],
                "host h1 has 2 blue and 0 green",
            ),
            (
                vec![inst("h1", B, false), inst("h1", G, false)],
                "neither color serves",
            ),
        ];
        for (fleet, want) in cases {
            let e = plan_colors(&fleet).expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
