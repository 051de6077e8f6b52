//! Canary: traffic moved by load-balancer weights, step by step, each step
//! judged live against the instances still on the old release.
//!
//! A canary rollout is a rolling update whose batches are the traffic steps.
//! Step k updates the fewest instances that can carry its share (at least
//! one, and at least one left on the old release until the last step),
//! under the same floor and limits as any chain; then every instance gets
//! a weight so that the updated ones receive the step's share; then the step
//! bakes while the analysis compares canary and baseline every interval.
//! A failing look stops the rollout and rolls it back at once; a bake that
//! ends with enough evidence and nothing wrong passes the step; one that
//! ends without enough traffic by `max_analysis` is inconclusive and does
//! what `on_inconclusive` says (by default: hold, paused, for a human).
//! `promote` passes the step by hand. At 100% every instance is on the new
//! release; before the rollout ends, however it ends, every weight drover
//! set is put back to the configured weight.
//!
//! A step counts its carriers, not its chains: when a canary's chain fails
//! (within the failure budget) the step updates another instance, so no
//! step bakes without a canary.
//!
//! Weight commands go beside the chains, one slot per instance, with ids
//! `<rollout>/<instance>/weight/<generation>`: a new set of weights, or a
//! new try of a failed one (up to [`WEIGHT_TRIES`], while the host is
//! connected), is a new generation, so a late answer to an older one is
//! ignored. Every weight change and every verdict is persisted before it
//! acts. The simulator holds all this to invariant 8 (see `sim`).

use std::collections::BTreeMap;
use std::time::Duration;

use drover_analysis as judge;
use drover_model::{MetricsSource, OnInconclusive, Share};
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "sim"))]
use super::bugs::{self, Bug};
use super::engine::{Cx, Engine};
use super::model::{CommandId, CommandKind, CommandOutcome, Millis, OperatorAction, Output, Step};
use super::reason::{Block, StopReason};
use super::state::{InFlight, Mode, RolloutState, SkipReason, Then, count};

/// The weight every instance on the old release gets while traffic is
/// split: the updated ones get what makes their share, relative to it.
pub const BASE_WEIGHT: u32 = 100;
/// HAProxy's largest weight.
pub const MAX_WEIGHT: u32 = 256;

/// What an instance served, as its agent read it: cumulative counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficSample {
    /// One per load balancer the instance is registered with.
    pub balancers: Vec<BalancerCounters>,
    /// From the instance's own `/metrics`, when its agent scrapes them.
    pub app: Option<AppCounters>,
}

/// HAProxy's counters for one server, as `show stat` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalancerCounters {
    pub balancer: String,
    pub requests: u64,
    pub responses_5xx: u64,
    pub response_errors: u64,
    pub connection_errors: u64,
    pub responses: u64,
    /// HAProxy's rtime: an average over the server's last 512..1,024
    /// responses.
    pub response_time_ms: u32,
}

impl BalancerCounters {
    /// Requests HAProxy tried on this server: answered, or failed by it.
    fn attempts(&self) -> u64 {
        self.requests
            .saturating_add(self.response_errors)
            .saturating_add(self.connection_errors)
    }

    /// 5xx answers plus HAProxy's own failures on this server.
    fn errors(&self) -> u64 {
        self.responses_5xx
            .saturating_add(self.response_errors)
            .saturating_add(self.connection_errors)
    }
}

/// The instance's own request counter and latency histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppCounters {
    pub requests: u64,
    /// The part of `requests` answered with a 5xx.
    pub errors: u64,
    pub latency: judge::Histogram,
}

/// Per instance, what it served since its step's counting began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Meter {
    pub balancers: BTreeMap<String, BalancerMeter>,
    pub app: Option<AppMeter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct BalancerMeter {
    attempts: judge::Counter,
    errors: judge::Counter,
    responses: judge::Counter,
    /// Responses since the last look: the weight of `rtime_ms` in it.
    window_responses: u64,
    rtime_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AppMeter {
    requests: judge::Counter,
    errors: judge::Counter,
    last: judge::Histogram,
    /// Latency since the last look.
    window: judge::Histogram,
}

impl Meter {
    fn new(sample: &TrafficSample) -> Meter {
        let balancers = (sample.balancers.iter())
            .map(|b| {
                let m = BalancerMeter {
                    attempts: judge::Counter::new(b.attempts()),
                    errors: judge::Counter::new(b.errors()),
                    responses: judge::Counter::new(b.responses),
                    window_responses: 0,
                    rtime_ms: b.response_time_ms,
                };
                (b.balancer.clone(), m)
            })
            .collect();
        let app = sample.app.as_ref().map(|a| AppMeter {
            requests: judge::Counter::new(a.requests),
            errors: judge::Counter::new(a.errors),
            last: a.latency.clone(),
            window: judge::Histogram::default(),
        });
        Meter { balancers, app }
    }

    fn advance(&mut self, sample: &TrafficSample) {
        for b in &sample.balancers {
            match self.balancers.get_mut(&b.balancer) {
                Some(m) => {
                    m.attempts.advance(b.attempts());
                    m.errors.advance(b.errors());
                    m.window_responses = m
                        .window_responses
                        .saturating_add(m.responses.advance(b.responses));
                    m.rtime_ms = b.response_time_ms;
                }
                None => {
                    let fresh = Meter::new(&TrafficSample {
                        balancers: vec![b.clone()],
                        app: None,
                    });
                    self.balancers.extend(fresh.balancers);
                }
            }
        }
        match (&mut self.app, &sample.app) {
            (Some(m), Some(a)) => {
                m.requests.advance(a.requests);
                m.errors.advance(a.errors);
                m.window.merge(&a.latency.delta(&m.last));
                m.last = a.latency.clone();
            }
            (None, Some(_)) => self.app = Meter::new(sample).app,
            (_, None) => {}
        }
    }

    /// Forgets the window's latency once a look used it.
    fn new_window(&mut self) {
        for b in self.balancers.values_mut() {
            b.window_responses = 0;
        }
        if let Some(a) = &mut self.app {
            a.window = judge::Histogram::default();
        }
    }
}

/// Where a traffic step is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Stage {
    /// Updating the instances the step needs (its batch).
    Updating,
    /// This step's weights are being set (generation `Traffic::generation`).
    Weighting,
    /// Weights in place: counting from `count_from`, the next look at
    /// `next_look` (then every interval), the bake ends at `ends_at` and
    /// the analysis gives up at `gives_up_at`.
    Baking {
        count_from: Millis,
        next_look: Millis,
        ends_at: Millis,
        gives_up_at: Millis,
    },
    /// Inconclusive, held for a human: `promote` passes the step,
    /// `resume` bakes it again, `rollback` returns every instance.
    Held { why: String },
    /// The step passed (or was promoted); the next step's updates may start.
    Passed,
    /// Blue-green: the idle color is being taken out of traffic (weight 0)
    /// before anything is deployed on it.
    Isolating,
    /// Blue-green: the pre-traffic hook runs (run `attempt`).
    Hook { attempt: u32 },
    /// Blue-green: all traffic on the new color; draining the old one.
    DrainingOld,
    /// Blue-green: the old color stays up, drained, until `until`.
    KeepingOld { until: Millis },
    /// Blue-green: keep-old is over; stopping the old color.
    StoppingOld,
    /// Blue-green: the old color is stopped; the rollout ends.
    Retired,
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepVerdict {
    Passed,
    /// By `drover rollout promote`, with what the analysis said then.
    Promoted,
    /// Not enough traffic, and `on_inconclusive = pass`.
    PassedInconclusive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// 1-based.
    pub step: u32,
    pub share: Share,
    pub verdict: StepVerdict,
    pub at: Millis,
    pub reason: String,
}

/// The traffic side of a canary rollout: its steps and where it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Traffic {
    pub steps: Vec<Share>,
    /// Instances each step updates (its batch quota).
    pub sizes: Vec<u32>,
    /// Instances on the new release each step needs (cumulative): a chain
    /// that fails does not carry traffic, so the step updates another.
    #[serde(default)]
    pub targets: Vec<u32>,
    /// 0-based index of the current step; the rollout's batch is the same.
    pub step: usize,
    pub stage: Stage,
    /// Bumps with every set of weights; the attempt in weight command ids.
    pub generation: u32,
    /// The current step's judge, while it bakes.
    pub analysis: Option<judge::Analysis>,
    /// Looks taken in the current step.
    pub looks: u32,
    /// Where the current step's counts come from, decided at its first look.
    pub source: Option<MetricsSource>,
    pub results: Vec<StepResult>,
    /// The last look's one line, for status.
    #[serde(default)]
    pub last_look: Option<String>,
    /// Blue-green: the colors and where the switch is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colors: Option<super::bluegreen::Colors>,
}

/// One weight drover keeps on an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct WeightSlot {
    /// What drover wants: `None` is the configured weight.
    pub want: Option<u32>,
    /// The agent confirmed `want`.
    pub applied: bool,
    pub inflight: Option<InFlight>,
    /// Why the last weight command failed.
    pub fault: Option<String>,
    /// Commands sent for `want` so far (a failed one is tried again, up
    /// to [`WEIGHT_TRIES`]).
    #[serde(default)]
    pub tries: u32,
    /// When the next try goes out, while one is due.
    #[serde(default)]
    pub retry_at: Option<Millis>,
}

/// Tries of one weight before it counts as failed: a load balancer that
/// blips (a reload, a full runtime API queue) should not roll a canary
/// back, nor leave a weight behind at the end.
pub const WEIGHT_TRIES: u32 = 3;

/// One look of a step's analysis, as stored and shown by
/// `drover rollout analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepJudgement {
    /// 1-based step and its share.
    pub step: u32,
    pub share: Share,
    /// 1-based look within the step.
    pub look: u32,
    pub source: MetricsSource,
    /// Instances in each arm at this look.
    pub canary_instances: u32,
    pub baseline_instances: u32,
    /// Whether it was the step's last look (the bake ended, or max_analysis).
    pub last: bool,
    pub judgement: judge::Judgement,
}

/// `ceil(share * total)` clamped to `[lo, hi]`.
fn carriers(share: Share, total: u32, lo: u32, hi: u32) -> u32 {
    let n = (u64::from(share.basis_points()) * u64::from(total)).div_ceil(10_000);
    u32::try_from(n).unwrap_or(u32::MAX).clamp(lo, hi.max(lo))
}

/// The canary's weight that gives `canary` instances `share` of the
/// traffic against `baseline` instances at [`BASE_WEIGHT`].
pub fn canary_weight(share: Share, canary: u32, baseline: u32) -> u32 {
    if share.is_full() || baseline == 0 {
        return BASE_WEIGHT;
    }
    let s = share.fraction();
    let w = s * f64::from(baseline) * f64::from(BASE_WEIGHT) / ((1.0 - s) * f64::from(canary));
    // Rounded; never 0 (that would be no traffic at all) nor above HAProxy's maximum.
    (w.round() as u32).clamp(1, MAX_WEIGHT)
}

impl Traffic {
    /// Steps and their batch quotas for `st`'s instances: step k's updated
    /// instances are the fewest that carry its share, at least 1, and
    /// leave at least one on the old release until the last step.
    pub(crate) fn plan(st: &RolloutState, active: Option<drover_model::Color>) -> Traffic {
        let steps = st.spec.traffic_steps();
        if let Some(active) = active {
            // Blue-green: step 1 updates the whole idle color; the steps
            // after it only move traffic.
            let idle =
                (st.instances.iter()).filter(|i| i.skipped != Some(SkipReason::ServingColor));
            let (mut pending, mut total) = (0, 0);
            for i in idle {
                total += 1;
                pending += u32::from(i.step == Step::Pending);
            }
            let mut sizes = vec![0; steps.len()];
            if let Some(first) = sizes.first_mut() {
                *first = pending;
            }
            return Traffic {
                targets: vec![total; steps.len()],
                sizes,
                steps,
                step: 0,
                stage: Stage::Isolating,
                generation: 0,
                analysis: None,
                looks: 0,
                source: None,
                results: Vec::new(),
                last_look: None,
                colors: Some(super::bluegreen::Colors {
                    active,
                    hook_passed: false,
                    hook_attempt: 0,
                    back: None,
                    sides: 0,
                }),
            };
        }
        let total = st.limits.total;
        let on_target =
            count((st.instances.iter()).filter(|i| i.skipped == Some(SkipReason::OnTarget)));
        let mut prev = on_target;
        let mut sizes = Vec::with_capacity(steps.len());
        let mut targets = Vec::with_capacity(steps.len());
        for (k, s) in steps.iter().enumerate() {
            let last = k + 1 == steps.len();
            let want = if last {
                total
            } else {
                carriers(*s, total, 1, total.saturating_sub(1))
            };
            let reach = want.max(prev);
            sizes.push(reach - prev);
            targets.push(reach);
            prev = reach;
        }
        Traffic {
            steps,
            sizes,
            targets,
            step: 0,
            stage: Stage::Updating,
            generation: 0,
            analysis: None,
            looks: 0,
            source: None,
            results: Vec::new(),
            last_look: None,
            colors: None,
        }
    }

    /// What `drover rollout status` shows of it.
    pub(crate) fn status(&self) -> super::status::TrafficStatus {
        use super::status::TrafficStage as S;
        let (stage, counting_from, bake_ends_at) = match &self.stage {
            Stage::Updating => (S::Updating, None, None),
            Stage::Weighting => (S::Weighting, None, None),
            Stage::Baking {
                count_from,
                ends_at,
                ..
            } => (S::Baking, Some(*count_from), Some(*ends_at)),
            Stage::Held { .. } => (S::Held, None, None),
            Stage::Passed => (S::Passed, None, None),
            Stage::Isolating => (S::Isolating, None, None),
            Stage::Hook { .. } => (S::Hook, None, None),
            Stage::DrainingOld => (S::Switched, None, None),
            Stage::KeepingOld { .. } => (S::Switched, None, None),
            Stage::StoppingOld => (S::Retiring, None, None),
            Stage::Retired => (S::Retired, None, None),
        };
        super::status::TrafficStatus {
            steps: self.steps.clone(),
            step: u32::try_from(self.step + 1).unwrap_or(u32::MAX),
            stage,
            counting_from,
            bake_ends_at,
            looks: self.looks,
            last_look: self.last_look.clone(),
            results: self.results.clone(),
            active_color: self.colors.as_ref().map(|c| c.active),
            keep_old_until: match self.stage {
                Stage::KeepingOld { until } => Some(until),
                _ => None,
            },
        }
    }

    pub(crate) fn share(&self) -> Share {
        self.steps.get(self.step).copied().unwrap_or(Share::FULL)
    }

    pub(crate) fn quota(&self) -> u32 {
        self.sizes.get(self.step).copied().unwrap_or(0)
    }

    /// Instances on the new release the current step needs: its carriers.
    fn target(&self, on_target: u32) -> u32 {
        match self.targets.get(self.step) {
            Some(t) => *t,
            None => on_target.saturating_add(self.sizes.iter().take(self.step + 1).sum::<u32>()),
        }
    }
}

fn thresholds(a: &drover_model::AnalysisSpec) -> judge::Thresholds {
    judge::Thresholds {
        error_ratio: a.error_ratio.get(),
        alpha_per_look: a.alpha.get(),
        min_canary_errors: a.min_canary_errors,
        min_difference: a.min_difference.get(),
        guard_error_rate: a.guard_error_rate.get(),
        guard_min_requests: a.guard_min_requests,
        min_requests: a.min_requests,
        latency_ratio: a.latency_ratio.get(),
        latency_min_delta_ms: a.latency_min_delta.as_secs_f64() * 1000.0,
        latency_windows: a.latency_windows,
        ..judge::Thresholds::default()
    }
}

/// The arms of one look.
struct Arms {
    canary: judge::Arm,
    baseline: judge::Arm,
    canary_instances: u32,
    baseline_instances: u32,
}

impl Engine {
    /// Why a paused traffic rollout waits when its step is held as
    /// inconclusive.
    pub(super) fn held_block(&self) -> Option<Block> {
        let t = self.st.traffic.as_ref()?;
        matches!(t.stage, Stage::Held { .. }).then(|| Block::Inconclusive {
            step: u32::try_from(t.step + 1).unwrap_or(u32::MAX),
            share: t.share(),
        })
    }

    /// How many more chains the current step must start to have its
    /// carriers: instances on the new release, or on their way to it.
    pub(super) fn traffic_needed(&self) -> u32 {
        let Some(t) = &self.st.traffic else {
            return 0;
        };
        let on_target =
            count((self.st.instances.iter()).filter(|i| i.skipped == Some(SkipReason::OnTarget)));
        let (canary, _) = self.arms();
        let moving =
            count((self.st.instances.iter()).filter(|i| {
                i.inflight.is_some() && i.direction == super::model::Direction::Forward
            }));
        t.target(on_target)
            .saturating_sub(count(canary.iter()).saturating_add(moving))
    }

    /// Whether this rollout moves traffic.
    pub(super) fn shifts_traffic(&self) -> bool {
        self.st.traffic.is_some()
    }

    /// The instances of each arm: canary on the target release and done
    /// (or on it from the start), baseline still pending on the old one.
    fn arms(&self) -> (Vec<usize>, Vec<usize>) {
        let (mut canary, mut baseline) = (Vec::new(), Vec::new());
        for (n, i) in self.st.instances.iter().enumerate() {
            match i.step {
                Step::Done => canary.push(n),
                Step::Skipped if i.skipped == Some(SkipReason::OnTarget) => canary.push(n),
                Step::Pending => baseline.push(n),
                Step::Skipped if i.skipped == Some(SkipReason::ServingColor) => baseline.push(n),
                _ => {}
            }
        }
        (canary, baseline)
    }

    // ---- inputs ----

    pub(super) fn on_traffic(&mut self, instance: &str, sample: &super::traffic::TrafficSample) {
        let Some(t) = &self.st.traffic else {
            return;
        };
        let Stage::Baking { count_from, .. } = t.stage else {
            return;
        };
        let Some(idx) = self.index_of(instance) else {
            return;
        };
        // Counting starts with the first reading after the warm-up.
        let counting = self.st.now >= count_from;
        self.edit(idx, |i| match &mut i.meter {
            Some(m) => m.advance(sample),
            None if counting => i.meter = Some(Meter::new(sample)),
            None => {}
        });
    }

    pub(super) fn on_weight_result(
        &mut self,
        cx: &mut Cx,
        idx: usize,
        id: &CommandId,
        outcome: CommandOutcome,
    ) {
        let current = self.st.instances[idx].weight.as_ref();
        let in_flight = current
            .and_then(|w| w.inflight.as_ref())
            .is_some_and(|f| &f.id == id);
        if !in_flight {
            return;
        }
        cx.dirty = true;
        self.progress(cx);
        let fault = match outcome {
            CommandOutcome::Ok => None,
            CommandOutcome::Failed(m) => Some(m),
            CommandOutcome::TimedOut => Some("the agent gave up on it".to_string()),
        };
        self.settle_weight(cx, idx, fault);
    }

    fn settle_weight(&mut self, cx: &mut Cx, idx: usize, fault: Option<String>) {
        let reachable = self.st.instances[idx].observed.reachable;
        let now = cx.now;
        let (want, ok, retry) = self.edit(idx, |i| {
            let Some(w) = &mut i.weight else {
                return (None, false, None);
            };
            w.inflight = None;
            w.applied = fault.is_none();
            w.fault.clone_from(&fault);
            // Tried again a little later while its host is there.
            let retry = (fault.is_some() && reachable && w.tries < WEIGHT_TRIES)
                .then(|| now.plus(std::time::Duration::from_secs(u64::from(w.tries))));
            w.retry_at = retry;
            (w.want, fault.is_none(), retry.map(|_| w.tries))
        });
        let Some(f) = fault else {
            // Success goes unsaid per instance: the stage's own event says
            // when every weight is in place.
            return;
        };
        let what = want.map_or_else(
            || "configured weight".to_string(),
            |w| format!("weight {w}"),
        );
        if let Some(tries) = retry {
            let msg = format!("{what} not set (try {tries} of {WEIGHT_TRIES}): {f}; trying again");
            self.event(cx, Some(idx), Some(Step::Weighting), msg);
            return;
        }
        self.event(
            cx,
            Some(idx),
            Some(Step::Weighting),
            format!("{what} not set: {f}"),
        );
        if !ok && self.st.mode == Mode::Forward {
            let who = format!("{}: {f}", self.st.instances[idx].id);
            self.stop(cx, StopReason::Weights { who: vec![who] }, Then::Rollback);
        }
    }

    /// Weight commands past their deadline fail; tries that are due go out.
    pub(super) fn expire_weights(&mut self, cx: &mut Cx) {
        for idx in 0..self.st.instances.len() {
            let retry = (self.st.instances[idx].weight.as_ref())
                .filter(|w| w.inflight.is_none() && w.retry_at.is_some_and(|t| t <= cx.now))
                .map(|w| (w.want, w.tries));
            if let Some((want, tries)) = retry {
                let generation = self.next_generation();
                self.send_weight(cx, idx, want, generation, tries + 1);
                continue;
            }
            let due = (self.st.instances[idx].weight.as_ref())
                .and_then(|w| w.inflight.as_ref())
                .is_some_and(|f| f.deadline <= cx.now);
            if due {
                cx.dirty = true;
                self.progress(cx);
                let why = if self.st.instances[idx].observed.reachable {
                    "no answer in time"
                } else {
                    "host lost"
                };
                self.settle_weight(cx, idx, Some(why.to_string()));
            }
        }
    }

    /// Weight commands in flight or due to be tried again.
    pub(super) fn weights_in_flight(&self) -> u32 {
        count((self.st.instances.iter()).filter(|i| {
            (i.weight.as_ref()).is_some_and(|w| w.inflight.is_some() || w.retry_at.is_some())
        }))
    }

    /// A new weight generation: every command for a new or retried weight
    /// has an id of its own.
    pub(super) fn next_generation(&mut self) -> u32 {
        match &mut self.st.traffic {
            Some(t) => {
                t.generation += 1;
                t.generation
            }
            None => 1,
        }
    }

    /// Earliest weight-command deadline or traffic time, for
    /// [`Engine::next_deadline`].
    pub(super) fn traffic_deadline(&self) -> Option<Millis> {
        let weights = (self.st.instances.iter())
            .filter_map(|i| {
                let w = i.weight.as_ref()?;
                w.inflight.as_ref().map(|f| f.deadline).or(w.retry_at)
            })
            .min();
        let stage = match self.st.traffic.as_ref().map(|t| &t.stage) {
            Some(Stage::Baking {
                next_look,
                ends_at,
                gives_up_at,
                ..
            }) if self.st.mode == Mode::Forward => Some(look_due(
                *next_look,
                *ends_at,
                *gives_up_at,
                self.st.spec.analysis.interval,
            )),
            _ => None,
        };
        (weights.into_iter().chain(stage))
            .chain(self.colors_deadline())
            .min()
    }

    pub(super) fn send_weight(
        &mut self,
        cx: &mut Cx,
        idx: usize,
        want: Option<u32>,
        generation: u32,
        tries: u32,
    ) {
        let i = &self.st.instances[idx];
        let id = CommandId::new(&self.st.id, &i.id, Step::Weighting, generation);
        let kind = CommandKind::SetWeight { weight: want };
        let flight = InFlight::new(id, kind, self.st.spec.step_timeout, cx.now);
        let sent = flight.clone();
        self.edit(idx, |i| {
            i.weight = Some(WeightSlot {
                want,
                applied: false,
                inflight: Some(flight),
                fault: None,
                tries,
                retry_at: None,
            });
        });
        cx.dirty = true;
        self.send_flight(cx, idx, &sent);
    }

    // ---- the forward drive ----

    /// The traffic side of going forward: the step's updates, then its
    /// weights, then its bake; returns why the rollout waits.
    pub(super) fn drive_traffic(&mut self, cx: &mut Cx) -> Option<Block> {
        let t = self.st.traffic.as_ref()?;
        let (step, share) = (u32::try_from(t.step + 1).unwrap_or(u32::MAX), t.share());
        match t.stage.clone() {
            Stage::Updating => {
                let block = self.fill_batch(cx);
                let pending = self.st.instances.iter().any(|i| i.step == Step::Pending);
                let quota_met = self.traffic_needed() == 0;
                #[cfg(any(test, feature = "sim"))]
                let quota_met = if bugs::on(Bug::StepCountsChainsNotCarriers) {
                    self.st.batch_started >= self.st.traffic.as_ref().map_or(0, Traffic::quota)
                } else {
                    quota_met
                };
                let chains = self.st.inflight() > 0;
                #[cfg(any(test, feature = "sim"))]
                let chains = chains && !(bugs::on(Bug::WeightDuringChain) && quota_met);
                if chains || (!quota_met && pending) {
                    return block;
                }
                if self.is_blue_green() {
                    if let Some(wait) = self.colors_ready(cx) {
                        return wait;
                    }
                } else if !pending {
                    // Nothing left on the old release: the end (drive_forward finishes).
                    return None;
                }
                self.start_weighting(cx);
                // Stage::Weighting now: it waits for the weights, or (every
                // instance already holding its weight) goes on at once.
                self.drive_traffic(cx)
            }
            Stage::Weighting => {
                let n = self.weights_in_flight();
                if n > 0 {
                    return Some(Block::Weighting {
                        step,
                        share,
                        instances: n,
                    });
                }
                if self.is_blue_green() && share.is_full() {
                    if let Some(n) = self.old_color_out(cx) {
                        return Some(Block::Weighting {
                            step,
                            share,
                            instances: n,
                        });
                    }
                    if self.st.mode != Mode::Forward {
                        return None;
                    }
                    // Nothing left to compare the new color against.
                    self.start_retiring(cx);
                    return self.drive_retiring(cx);
                }
                self.start_baking(cx);
                Some(Block::Baking { step, share })
            }
            Stage::Isolating => self.drive_isolating(cx),
            Stage::Hook { .. } => Some(Block::Hook {
                name: self.st.spec.pre_traffic_hook.clone().unwrap_or_default(),
            }),
            Stage::DrainingOld | Stage::KeepingOld { .. } | Stage::StoppingOld => {
                self.drive_retiring(cx)
            }
            Stage::Retired => None,
            Stage::Baking { .. } => Some(Block::Baking { step, share }),
            Stage::Held { .. } => Some(Block::Inconclusive { step, share }),
            Stage::Passed => {
                if let Some(t) = &mut self.st.traffic {
                    t.step += 1;
                    t.stage = Stage::Updating;
                    t.analysis = None;
                    t.looks = 0;
                    t.source = None;
                }
                self.st.batch += 1;
                self.st.batch_started = 0;
                cx.dirty = true;
                self.progress(cx);
                let t = self.st.traffic.as_ref()?;
                let msg = format!(
                    "traffic step {} of {} ({}): updating {} instance(s)",
                    t.step + 1,
                    t.steps.len(),
                    t.share(),
                    t.quota()
                );
                self.event(cx, None, None, msg);
                self.drive_traffic(cx)
            }
        }
    }

    /// Weights for the current step: the updated instances share its
    /// traffic, the rest keep [`BASE_WEIGHT`].
    fn start_weighting(&mut self, cx: &mut Cx) {
        let (canary, baseline) = self.arms();
        #[cfg(any(test, feature = "sim"))]
        let canary = if bugs::on(Bug::WeightDuringChain) {
            // The step's instances still updating count as updated.
            let mut c = canary;
            c.extend((0..self.st.instances.len()).filter(|&n| {
                let i = &self.st.instances[n];
                i.inflight.is_some() && i.direction == super::model::Direction::Forward
            }));
            c
        } else {
            canary
        };
        let Some(t) = &mut self.st.traffic else {
            return;
        };
        t.generation += 1;
        t.stage = Stage::Weighting;
        let (generation, share) = (t.generation, t.share());
        let (nc, nb) = (count(canary.iter()), count(baseline.iter()));
        let w = canary_weight(share, nc.max(1), nb);
        // Blue-green's last step takes the old color out of traffic.
        let old = if share.is_full() && self.is_blue_green() {
            0
        } else {
            BASE_WEIGHT
        };
        cx.dirty = true;
        self.progress(cx);
        self.event(
            cx,
            None,
            None,
            format!(
                "traffic {share}: weight {w} on {nc} updated instance(s), {old} on {nb} on the old release"
            ),
        );
        for idx in canary {
            self.weigh(cx, idx, Some(w), generation);
        }
        if old == 0 {
            // The old color goes to 0 only once the new one takes traffic
            // (see `old_color_out`): never both out at once.
            return;
        }
        for idx in baseline {
            self.weigh(cx, idx, Some(old), generation);
        }
    }

    /// Sends `want` to `idx` unless it already holds it.
    fn weigh(&mut self, cx: &mut Cx, idx: usize, want: Option<u32>, generation: u32) {
        let held = (self.st.instances[idx].weight.as_ref())
            .is_some_and(|w| w.want == want && w.applied && w.inflight.is_none());
        if !held {
            self.send_weight(cx, idx, want, generation, 1);
        }
    }

    fn start_baking(&mut self, cx: &mut Cx) {
        let now = cx.now;
        let spec = &self.st.spec;
        let bake = spec.bake_time();
        let warmup = spec.analysis.warmup_for(bake);
        let give_up = spec.analysis.max_analysis_for(bake);
        let interval = spec.analysis.interval;
        let judge = judge::Analysis::new(thresholds(&spec.analysis));
        for idx in 0..self.st.instances.len() {
            if self.st.instances[idx].meter.is_some() {
                self.edit(idx, |i| i.meter = None);
            }
        }
        let Some(t) = &mut self.st.traffic else {
            return;
        };
        let count_from = now.plus(warmup);
        t.stage = Stage::Baking {
            count_from,
            next_look: count_from.plus(interval),
            ends_at: now.plus(bake),
            gives_up_at: now.plus(give_up),
        };
        t.analysis = Some(judge);
        t.looks = 0;
        t.source = None;
        let msg = format!(
            "traffic {} in place: baking {} (warm-up {}, a look every {})",
            t.share(),
            super::engine::show(bake),
            super::engine::show(warmup),
            super::engine::show(interval)
        );
        cx.dirty = true;
        self.progress(cx);
        self.event(cx, None, None, msg);
    }

    /// Looks at a baking step when one is due, and ends the bake when its
    /// time came. Runs whatever the pause: judging a live canary is never
    /// put off.
    pub(super) fn traffic_tick(&mut self, cx: &mut Cx) {
        if self.st.mode != Mode::Forward {
            return;
        }
        let Some(t) = &self.st.traffic else {
            return;
        };
        let Stage::Baking {
            count_from,
            next_look,
            ends_at,
            gives_up_at,
        } = t.stage
        else {
            return;
        };
        let now = cx.now;
        let interval = self.st.spec.analysis.interval;
        if now < look_due(next_look, ends_at, gives_up_at, interval) {
            return;
        }
        let bake_over = now >= ends_at;
        let last = now >= gives_up_at;
        let judgement = self.look(cx, bake_over);
        let step = self.st.traffic.as_ref().map_or(0, |t| t.step + 1);
        let share = self.st.traffic.as_ref().map_or(Share::FULL, Traffic::share);
        let step32 = u32::try_from(step).unwrap_or(u32::MAX);
        // A scheduled look is progress, counted or not: the bake runs its
        // course, and max_analysis, not the progress deadline, ends a step
        // that gets no readings.
        self.progress(cx);
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::StepPassesWithoutVerdict)
            && bake_over
            && judgement
                .as_ref()
                .is_none_or(|j| j.verdict != judge::Verdict::Fail)
        {
            self.pass_step(cx, StepVerdict::Passed, "the bake ended".to_string());
            return;
        }
        let Some(j) = judgement else {
            if last {
                let why = "no traffic readings from both arms (do the agents report \
                           their load balancer's counters?)"
                    .to_string();
                self.inconclusive(cx, step32, share, why);
                return;
            }
            // Not counting yet: the warm-up, or no reading since it ended.
            self.look_again_at(now.max(count_from).plus(interval));
            cx.dirty = true;
            return;
        };
        let reason = j.reason.clone();
        match j.verdict {
            judge::Verdict::Fail => {
                let why = StopReason::AnalysisFailed {
                    step: step32,
                    share,
                    why: reason,
                };
                self.stop(cx, why, Then::Rollback);
            }
            judge::Verdict::Pass => self.pass_step(cx, StepVerdict::Passed, reason),
            judge::Verdict::Inconclusive if last => self.inconclusive(cx, step32, share, reason),
            judge::Verdict::Continue | judge::Verdict::Inconclusive => {
                self.look_again_at(now.plus(interval));
            }
        }
    }

    /// Schedules the baking step's next look.
    fn look_again_at(&mut self, at: Millis) {
        if let Some(Traffic {
            stage: Stage::Baking { next_look, .. },
            ..
        }) = &mut self.st.traffic
        {
            *next_look = at;
        }
    }

    /// One look: the arms' counts since counting began, judged. `None`
    /// before any instance was counted.
    fn look(&mut self, cx: &mut Cx, bake_over: bool) -> Option<judge::Judgement> {
        let arms = self.measure()?;
        let at_ms = i64::try_from(cx.now.0).unwrap_or(i64::MAX);
        let look = judge::Look {
            at_ms,
            canary: arms.canary,
            baseline: arms.baseline,
        };
        let t = self.st.traffic.as_mut()?;
        let analysis = t.analysis.as_mut()?;
        let j = if bake_over {
            analysis.finish(&look)
        } else {
            analysis.look(&look)
        };
        t.looks += 1;
        t.last_look = Some(j.reason.clone());
        let record = StepJudgement {
            step: u32::try_from(t.step + 1).unwrap_or(u32::MAX),
            share: t.share(),
            look: t.looks,
            source: t.source.unwrap_or(MetricsSource::Haproxy),
            canary_instances: arms.canary_instances,
            baseline_instances: arms.baseline_instances,
            last: bake_over,
            judgement: j.clone(),
        };
        for idx in 0..self.st.instances.len() {
            if self.st.instances[idx].meter.is_some() {
                self.edit(idx, |i| {
                    if let Some(m) = &mut i.meter {
                        m.new_window();
                    }
                });
            }
        }
        cx.dirty = true;
        self.progress(cx);
        cx.out.push(Output::Judgement(Box::new(record)));
        Some(j)
    }

    /// Sums each arm's meters.
    fn measure(&mut self) -> Option<Arms> {
        let (canary, baseline) = self.arms();
        let metered = |ids: &[usize]| ids.iter().any(|&n| self.st.instances[n].meter.is_some());
        if !metered(&canary) || !metered(&baseline) {
            return None;
        }
        let source = match self.st.traffic.as_ref()?.source {
            Some(s) => s,
            None => {
                let all_app = (canary.iter().chain(&baseline)).all(|&n| {
                    self.st.instances[n]
                        .meter
                        .as_ref()
                        .is_some_and(|m| m.app.is_some())
                });
                let s = match self.st.spec.analysis.source {
                    MetricsSource::Auto if all_app => MetricsSource::Metrics,
                    MetricsSource::Auto => MetricsSource::Haproxy,
                    s => s,
                };
                if let Some(t) = &mut self.st.traffic {
                    t.source = Some(s);
                }
                s
            }
        };
        let t = thresholds(&self.st.spec.analysis);
        let arm = |ids: &[usize], is_canary: bool| -> judge::Arm {
            let (mut attempts, mut errors) = (0_u64, 0_u64);
            let mut rtimes = Vec::new();
            let mut hist: Option<judge::Histogram> = None;
            for &n in ids {
                let Some(m) = &self.st.instances[n].meter else {
                    continue;
                };
                match source {
                    MetricsSource::Metrics => {
                        if let Some(a) = &m.app {
                            attempts = attempts.saturating_add(a.requests.total());
                            errors = errors.saturating_add(a.errors.total());
                            match &mut hist {
                                Some(h) => h.merge(&a.window),
                                None => hist = Some(a.window.clone()),
                            }
                        }
                    }
                    MetricsSource::Haproxy | MetricsSource::Auto => {
                        for b in m.balancers.values() {
                            attempts = attempts.saturating_add(b.attempts.total());
                            errors = errors.saturating_add(b.errors.total());
                            rtimes.push(judge::RtimeSample {
                                rtime_ms: f64::from(b.rtime_ms),
                                responses: b.window_responses,
                                since_deploy: if is_canary {
                                    b.responses.total()
                                } else {
                                    u64::MAX
                                },
                            });
                        }
                    }
                }
            }
            let latency = match source {
                MetricsSource::Metrics => {
                    hist.filter(|h| h.count > 0).map(judge::Latency::Histogram)
                }
                _ => judge::Latency::from_rtime(&rtimes, &t),
            };
            judge::Arm {
                attempts,
                errors,
                latency,
            }
        };
        Some(Arms {
            canary: arm(&canary, true),
            baseline: arm(&baseline, false),
            canary_instances: count(canary.iter()),
            baseline_instances: count(baseline.iter()),
        })
    }

    fn pass_step(&mut self, cx: &mut Cx, verdict: StepVerdict, reason: String) {
        let now = cx.now;
        let Some(t) = &mut self.st.traffic else {
            return;
        };
        let step = u32::try_from(t.step + 1).unwrap_or(u32::MAX);
        let share = t.share();
        t.results.push(StepResult {
            step,
            share,
            verdict: verdict.clone(),
            at: now,
            reason: reason.clone(),
        });
        t.stage = Stage::Passed;
        t.analysis = None;
        cx.dirty = true;
        self.progress(cx);
        let how = match verdict {
            StepVerdict::Passed => "passed",
            StepVerdict::Promoted => "promoted by operator",
            StepVerdict::PassedInconclusive => "passed as inconclusive (on_inconclusive = pass)",
        };
        self.event(
            cx,
            None,
            None,
            format!("traffic step {step} ({share}) {how}: {reason}"),
        );
    }

    fn inconclusive(&mut self, cx: &mut Cx, step: u32, share: Share, why: String) {
        match self.st.spec.analysis.on_inconclusive {
            OnInconclusive::Pass => self.pass_step(cx, StepVerdict::PassedInconclusive, why),
            OnInconclusive::Fail => {
                let reason = StopReason::Inconclusive { step, share, why };
                self.stop(cx, reason, Then::Rollback);
            }
            OnInconclusive::Pause => {
                if let Some(t) = &mut self.st.traffic {
                    t.stage = Stage::Held { why: why.clone() };
                    t.analysis = None;
                }
                self.st.paused = true;
                cx.dirty = true;
                self.event(
                    cx,
                    None,
                    None,
                    format!(
                        "traffic step {step} ({share}) inconclusive, paused: {why}; \
                         promote, resume (bake again) or roll back"
                    ),
                );
            }
        }
    }

    /// `promote` and `resume` on a traffic rollout; `false` when the action
    /// is not about traffic (the caller handles it).
    pub(super) fn traffic_operator(&mut self, cx: &mut Cx, action: OperatorAction) -> bool {
        if self.st.mode != Mode::Forward {
            return false;
        }
        if matches!(action, OperatorAction::Rollback | OperatorAction::Abort)
            && self.colors_past_return()
        {
            let msg = "rollback refused: keep-old is over and the old color is being stopped;                        start a rollout to the old release instead";
            self.event(cx, None, None, msg.to_string());
            return true;
        }
        let Some(t) = &self.st.traffic else {
            return false;
        };
        match (action, &t.stage) {
            (OperatorAction::Promote, Stage::Baking { .. } | Stage::Held { .. }) => {
                let looked = match &t.stage {
                    Stage::Held { why } => format!("inconclusive: {why}"),
                    _ => format!("{} look(s) without a failure", t.looks),
                };
                self.st.paused = false;
                self.pass_step(cx, StepVerdict::Promoted, looked);
                true
            }
            (OperatorAction::Resume, Stage::Held { .. }) => {
                self.st.paused = false;
                cx.dirty = true;
                self.event(cx, None, None, "resumed: baking the step again".to_string());
                self.start_baking(cx);
                true
            }
            _ => false,
        }
    }

    /// The current step as `--dry-run` shows it, once its weights are set.
    pub(super) fn planned_step(&self) -> Option<super::plan::PlannedTrafficStep> {
        let t = self.st.traffic.as_ref()?;
        let (canary, baseline) = self.arms();
        let want = |ids: &[usize]| {
            ids.iter()
                .find_map(|&n| self.st.instances[n].weight.as_ref().and_then(|w| w.want))
        };
        Some(super::plan::PlannedTrafficStep {
            number: u32::try_from(t.step + 1).unwrap_or(u32::MAX),
            share: t.share(),
            updated: count(canary.iter()),
            new_weight: want(&canary).unwrap_or(BASE_WEIGHT),
            old_weight: want(&baseline).unwrap_or(BASE_WEIGHT),
            // Blue-green's 100% has nothing left to compare against.
            bake: if self.is_blue_green() && t.share().is_full() {
                Duration::ZERO
            } else {
                self.st.spec.bake_time()
            },
        })
    }

    // ---- the end ----

    /// Whether the rollout must put weights back before it ends.
    pub(super) fn weights_to_restore(&self) -> bool {
        (self.st.instances.iter()).any(|i| {
            i.weight
                .as_ref()
                .is_some_and(|w| w.want.is_some() || w.inflight.is_some())
        })
    }

    /// Puts every weight drover set back to the configured weight, once
    /// no weight command is in flight; returns why it waits, `None` once
    /// done.
    pub(super) fn drive_unweighting(&mut self, cx: &mut Cx) -> Option<Block> {
        let n = self.weights_in_flight();
        if n > 0 {
            return Some(Block::Unweighting { instances: n });
        }
        // A slot that wants a weight needs the configured one back; one
        // that already wants the configured weight was sent it (done, or
        // failed for good: asking again would never end).
        let todo: Vec<usize> = (0..self.st.instances.len())
            .filter(|&n| (self.st.instances[n].weight.as_ref()).is_some_and(|w| w.want.is_some()))
            .collect();
        if todo.is_empty() {
            return None;
        }
        let generation = match &mut self.st.traffic {
            Some(t) => {
                t.generation += 1;
                t.generation
            }
            None => 1,
        };
        self.event(
            cx,
            None,
            None,
            format!(
                "putting back the configured weight of {} instance(s)",
                todo.len()
            ),
        );
        for idx in todo {
            self.send_weight(cx, idx, None, generation, 1);
        }
        Some(Block::Unweighting {
            instances: self.weights_in_flight(),
        })
    }

    /// Instances whose configured weight could not be put back, as
    /// `id: why`.
    pub(super) fn weights_not_restored(&self) -> Vec<String> {
        (self.st.instances.iter())
            .filter_map(|i| {
                let w = i.weight.as_ref()?;
                let f = w.fault.as_ref()?;
                (w.want.is_none() && !w.applied).then(|| format!("{}: {f}", i.id))
            })
            .collect()
    }
}

/// When a baking step's next look is due: at `next_look`, or at the end of
/// the bake if that comes first; once a look was taken at or after the
/// bake's end (an inconclusive step looking on until `max_analysis`), at
/// `next_look` or when the analysis gives up.
fn look_due(next_look: Millis, ends_at: Millis, gives_up_at: Millis, interval: Duration) -> Millis {
    let interval = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    let looked_after_bake = next_look.0.saturating_sub(interval) >= ends_at.0;
    #[cfg(any(test, feature = "sim"))]
    let looked_after_bake = looked_after_bake && !bugs::on(Bug::LooksEveryTickAfterBake);
    if looked_after_bake {
        next_look.min(gives_up_at)
    } else {
        next_look.min(ends_at).min(gives_up_at)
    }
}
