//! The invariant checker. It never asks the engine what it thinks: it keeps
//! its own account of what the engine was told (inputs delivered) and what
//! it decided (commands sent), and judges each decision against that.
//!
//! - Facts: healthy / in service / reachable per instance, from delivered
//!   `Health`, `HostLost` / `HostBack` and what a successful step is known
//!   to do. After a failed or timed-out step the fact it would have changed
//!   is unknown until the next health report.
//! - Chains: per instance, the command in flight (if any) and how the last
//!   one ended, kept twice: `tentative` (what the running engine has done)
//!   and `committed` (what the last completed store write holds). A crash
//!   throws `tentative` away; a restore must match `committed`.
//!
//! Capacity here is what the issue calls it: instances healthy and in
//! service (and reachable, and not in one of drover's chains), as far as
//! the engine had been told. An instance drover failed earlier counts once
//! its health reports show it serving again (the engine is stricter: it
//! never counts a failed instance). Taking down an instance that may be
//! serving (including one whose state a failed step left unknown) must
//! leave the others at or above the floor.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::scenario::Scenario;
use crate::rollout::state::RolloutState;
use crate::rollout::{
    CommandKind, CommandOutcome, Direction, Input, LostHostPolicy, OperatorAction, Output, Release,
    Step,
};
use drover_analysis::Verdict;
use drover_model::OnInconclusive;

/// One broken promise, numbered as in the issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub invariant: u8,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.invariant {
            1 => "capacity",
            2 => "one command per instance",
            3 => "spread",
            4 => "termination",
            5 => "end state",
            6 => "crash safety",
            7 => "runtime bounds",
            8 => "traffic",
            9 => "blue-green",
            _ => "simulator",
        };
        write!(f, "invariant {} ({name}): {}", self.invariant, self.what)
    }
}

fn broke(invariant: u8, what: String) -> Result<(), Violation> {
    Err(Violation { invariant, what })
}

pub const VERBS: [&str; 8] = [
    "stage", "drain", "stop", "deploy", "start", "verify", "undrain", "weight",
];
/// A drain, undrain or stop outside a chain (blue-green's side commands).
fn is_side(verb: usize, attempt: u32) -> bool {
    attempt >= crate::rollout::bluegreen::SIDE_ATTEMPTS && matches!(verb, DRAIN | UNDRAIN | STOP)
}

/// The first command of every chain: from here on the engine holds the
/// instance, so this is where taking it is judged.
pub(super) const STAGE: usize = 0;
const DRAIN: usize = 1;
const STOP: usize = 2;
const START: usize = 4;
const VERIFY: usize = 5;
pub(super) const UNDRAIN: usize = 6;
/// Weight commands go beside the chain (canary); rolling scenarios send none.
pub(super) const WEIGHT: usize = 7;

fn step_of(verb: usize) -> Step {
    [
        Step::Staging,
        Step::Draining,
        Step::Stopping,
        Step::Deploying,
        Step::Starting,
        Step::Verifying,
        Step::Undraining,
        Step::Weighting,
    ][verb]
}

fn kind_verb(kind: &CommandKind) -> usize {
    match kind {
        CommandKind::Stage { .. } => STAGE,
        CommandKind::Drain => DRAIN,
        CommandKind::Stop => STOP,
        CommandKind::Deploy { .. } => 3,
        CommandKind::Start => START,
        CommandKind::Verify { .. } => VERIFY,
        CommandKind::Undrain => UNDRAIN,
        CommandKind::SetWeight { .. } => WEIGHT,
    }
}

/// `<rollout>/<instance>/<verb>/<attempt>`.
pub fn parse_id(id: &str) -> Option<(&str, &str, usize, u32)> {
    let mut parts = id.split('/');
    let (rollout, instance, verb, attempt) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let verb = VERBS.iter().position(|v| *v == verb)?;
    Some((rollout, instance, verb, attempt.parse().ok()?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tri {
    Yes,
    No,
    Unknown,
}

impl From<bool> for Tri {
    fn from(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
}

#[derive(Debug, Clone, Copy)]
struct Facts {
    healthy: Tri,
    in_service: Tri,
    reachable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Last {
    Nothing,
    Ok(usize),
    Failed(usize),
}

/// Where one instance's chains are, as seen from outside the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pos {
    Idle {
        attempt: u32,
        last: Last,
    },
    Busy {
        attempt: u32,
        verb: usize,
        deadline: u64,
        timeout: u64,
    },
}

impl Pos {
    fn busy(self) -> bool {
        matches!(self, Pos::Busy { .. })
    }
}

pub struct Checker {
    rollout: String,
    pub(super) target: Release,
    floor: u32,
    max_unavailable: u32,
    spread: Option<u32>,
    pub(super) lost_skip: bool,
    progress_deadline: u64,
    names: Vec<String>,
    pub(super) index: BTreeMap<String, usize>,
    host: Vec<String>,
    /// Spread-label value per instance ("" when missing).
    zone: Vec<String>,
    pub(super) initial: Vec<Option<Release>>,
    facts: Vec<Facts>,
    pub(super) ever_lost: Vec<bool>,
    pub(super) tentative: Vec<Pos>,
    committed: Vec<Pos>,
    /// Instances with a command decided since the last write.
    uncommitted: BTreeSet<usize>,
    /// Commands a `HostBack` must ask for again in the same call: they may
    /// have been lost with the host's old session.
    resend_due: Vec<String>,
    pub last_activity: u64,
    /// Progress events seen, for the hard bound on a rollout's length.
    pub activities: u64,
    /// Canary seeds: the steps and their verdicts (invariant 8).
    pub(super) canary: Option<CanaryCheck>,
    /// Weight commands in flight per instance, as decided (`tentative`)
    /// and as stored (`committed`).
    weights: Vec<Option<WeightFlight>>,
    weights_committed: Vec<Option<WeightFlight>>,
    /// The last weight command of each instance failed or timed out.
    pub(super) weight_failed: Vec<bool>,
    /// How much longer than the progress deadline a canary may go without
    /// a command: a bake looks for traffic up to `max_analysis`.
    idle_extra: u64,
    /// Blue-green seeds: drains, undrains and stops sent outside a chain,
    /// as decided and as stored.
    sides: Vec<Option<SideFlight>>,
    sides_committed: Vec<Option<SideFlight>>,
    /// Blue-green seeds: the colors and the hook (invariant 9).
    pub(super) blue_green: Option<BlueGreenCheck>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SideFlight {
    verb: usize,
    attempt: u32,
    deadline: u64,
    timeout: u64,
}

/// What invariant 9 keeps of a blue-green switch.
#[derive(Debug, Clone)]
pub(super) struct BlueGreenCheck {
    /// Per instance: of the idle color (gets the release).
    pub idle: Vec<bool>,
    /// The spec names a pre-traffic hook.
    hook: bool,
    /// The last run asked for, and whether a run answered ok.
    hook_asked: Option<u32>,
    hook_passed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WeightFlight {
    generation: u32,
    deadline: u64,
    timeout: u64,
}

/// What invariant 8 keeps of a canary: its steps, planned from the spec
/// alone, and the verdicts the runtime saw come out of the engine.
#[derive(Debug, Clone)]
pub(super) struct CanaryCheck {
    /// Chains started by the end of each step (cumulative).
    reach: Vec<u32>,
    /// 0-based steps with a passing final look, an inconclusive final look
    /// under `on_inconclusive = pass`, or a promote.
    passed: BTreeSet<usize>,
    /// 0-based steps with any look.
    looked: BTreeSet<usize>,
    pass_inconclusive: bool,
}

impl CanaryCheck {
    fn new(sc: &Scenario) -> CanaryCheck {
        let spec = &sc.spec;
        let total = u32::try_from(sc.fleet.len()).unwrap_or(u32::MAX);
        let on_target = (sc.fleet.iter())
            .filter(|m| m.info.release.as_ref() == Some(&spec.target))
            .count();
        let on_target = u32::try_from(on_target).unwrap_or(u32::MAX);
        let steps = spec.traffic_steps();
        let mut prev = on_target;
        let mut reach = Vec::with_capacity(steps.len());
        for (k, s) in steps.iter().enumerate() {
            let want = if k + 1 == steps.len() {
                total
            } else {
                // The fewest instances that carry the share: at least one,
                // and one left on the old release.
                let n = (u64::from(s.basis_points()) * u64::from(total)).div_ceil(10_000);
                let hi = total.saturating_sub(1).max(1);
                u32::try_from(n).unwrap_or(u32::MAX).clamp(1, hi)
            };
            prev = want.max(prev);
            reach.push(prev - on_target);
        }
        CanaryCheck {
            reach,
            passed: BTreeSet::new(),
            looked: BTreeSet::new(),
            pass_inconclusive: spec.analysis.on_inconclusive == OnInconclusive::Pass,
        }
    }

    /// The step whose chains `started` chains reach into (0-based).
    fn chains_step(&self, started: u32) -> usize {
        (self.reach.iter())
            .position(|&q| started <= q)
            .unwrap_or(self.reach.len().saturating_sub(1))
    }

    /// Whether step `j` (0-based) may be left behind.
    fn allowed(&self, j: usize) -> bool {
        self.passed.contains(&j) || (self.pass_inconclusive && !self.looked.contains(&j))
    }
}

fn resolve_up(a: crate::rollout::Amount, total: u32) -> u32 {
    match a {
        crate::rollout::Amount::Count(n) => n,
        crate::rollout::Amount::Percent(p) => {
            u32::try_from((u64::from(p) * u64::from(total)).div_ceil(100)).unwrap_or(u32::MAX)
        }
    }
}

fn resolve_down(a: crate::rollout::Amount, total: u32) -> u32 {
    match a {
        crate::rollout::Amount::Count(n) => n,
        crate::rollout::Amount::Percent(p) => {
            u32::try_from(u64::from(p) * u64::from(total) / 100).unwrap_or(u32::MAX)
        }
    }
}

impl Checker {
    pub fn new(sc: &Scenario, rollout: &str, now: u64) -> Checker {
        let total = u32::try_from(sc.fleet.len()).unwrap_or(u32::MAX);
        // Blue-green counts one color.
        let total = if sc.blue_green.is_some() {
            total / 2
        } else {
            total
        };
        let spec = &sc.spec;
        let label = spec.spread_by.as_ref().map(|s| s.label.clone());
        let n = sc.fleet.len();
        Checker {
            rollout: rollout.to_string(),
            target: spec.target.clone(),
            floor: resolve_up(spec.min_healthy, total),
            max_unavailable: spec
                .max_unavailable
                .map_or(u32::MAX, |a| resolve_down(a, total).max(1)),
            spread: spec.spread_by.as_ref().map(|s| s.max_unavailable),
            lost_skip: spec.lost_hosts == LostHostPolicy::Skip,
            progress_deadline: u64::try_from(spec.progress_deadline.as_millis())
                .unwrap_or(u64::MAX),
            names: sc.fleet.iter().map(|m| m.info.id.clone()).collect(),
            index: (sc.fleet.iter().enumerate())
                .map(|(k, m)| (m.info.id.clone(), k))
                .collect(),
            host: sc.fleet.iter().map(|m| m.info.host.clone()).collect(),
            zone: (sc.fleet.iter())
                .map(|m| match &label {
                    Some(l) => m.info.labels.get(l).cloned().unwrap_or_default(),
                    None => String::new(),
                })
                .collect(),
            initial: sc.fleet.iter().map(|m| m.info.release.clone()).collect(),
            facts: (sc.fleet.iter())
                .map(|m| Facts {
                    healthy: m.info.healthy.into(),
                    in_service: m.info.in_service.into(),
                    reachable: m.info.reachable,
                })
                .collect(),
            ever_lost: sc.fleet.iter().map(|m| !m.info.reachable).collect(),
            tentative: vec![
                Pos::Idle {
                    attempt: 0,
                    last: Last::Nothing
                };
                n
            ],
            committed: vec![
                Pos::Idle {
                    attempt: 0,
                    last: Last::Nothing
                };
                n
            ],
            uncommitted: BTreeSet::new(),
            resend_due: Vec::new(),
            last_activity: now,
            activities: 0,
            canary: (sc.canary.as_ref())
                .filter(|_| sc.blue_green.is_none())
                .map(|_| CanaryCheck::new(sc)),
            weights: vec![None; n],
            weights_committed: vec![None; n],
            weight_failed: vec![false; n],
            idle_extra: if sc.canary.is_some() {
                let a = &spec.analysis;
                let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                // A bake with no readings, then a step that waits out a
                // progress deadline: the engine's progress, not the runtime's.
                ms(a.max_analysis_for(spec.bake_time()))
                    + ms(a.interval)
                    + ms(spec.progress_deadline)
                    // Blue-green: keep-old is waiting by design, and a
                    // hook runs as long as it runs.
                    + sc.blue_green.as_ref().map_or(0, |b| {
                        ms(spec.keep_old_time()) + b.hook_ms.1
                    })
            } else {
                0
            },
            sides: vec![None; n],
            sides_committed: vec![None; n],
            blue_green: sc.blue_green.as_ref().map(|_| BlueGreenCheck {
                idle: (sc.fleet.iter())
                    .map(|m| m.info.color == Some(drover_model::Color::Green))
                    .collect(),
                hook: spec.pre_traffic_hook.is_some(),
                hook_asked: None,
                hook_passed: false,
            }),
        }
    }

    /// Chains started forward so far (attempt 1 or later).
    /// Forward chains that may carry traffic: started and not failed. A
    /// canary step whose chain failed updates another instance instead, so
    /// a failed chain does not count toward its step.
    fn carrying(&self) -> u32 {
        let n = (self.tentative.iter())
            .filter(|p| match p {
                Pos::Idle {
                    attempt: 1,
                    last: Last::Failed(_),
                } => false,
                Pos::Idle { attempt, .. } | Pos::Busy { attempt, .. } => *attempt >= 1,
            })
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The canary step the runtime has seen the rollout reach: the step of
    /// the chains that may carry traffic so far, past those already passed.
    fn current_step(&self, c: &CanaryCheck) -> usize {
        let mut j = c.chains_step(self.carrying());
        while c.passed.contains(&j) {
            j += 1;
        }
        j
    }

    pub fn floor(&self) -> u32 {
        self.floor
    }

    fn activity(&mut self, now: u64) {
        self.last_activity = self.last_activity.max(now);
        self.activities += 1;
    }

    fn available(&self, k: usize) -> bool {
        let f = &self.facts[k];
        f.reachable
            && f.healthy == Tri::Yes
            && f.in_service == Tri::Yes
            && !self.tentative[k].busy()
    }

    /// Might be serving, as far as the engine had been told: taking it down
    /// may cost capacity.
    fn maybe_available(&self, k: usize) -> bool {
        let f = &self.facts[k];
        f.reachable && f.healthy != Tri::No && f.in_service != Tri::No && !self.tentative[k].busy()
    }

    /// Capacity as far as the engine had been told.
    pub fn capacity(&self) -> u32 {
        let n = (0..self.facts.len()).filter(|&k| self.available(k)).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn zone_down(&self, zone: &str) -> u32 {
        let n = (0..self.facts.len())
            .filter(|&k| self.zone[k] == zone && !self.available(k))
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn in_flight(&self) -> u32 {
        let n = self.tentative.iter().filter(|p| p.busy()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// An input the engine is about to handle: learn the facts it carries.
    pub fn input(&mut self, now: u64, input: &Input) {
        // A deadline at or before `now` beats any input handled at `now`.
        self.expire(now);
        match input {
            Input::Tick | Input::Traffic { .. } => {}
            Input::HookDone { attempt, ok, .. } => {
                if let Some(b) = self.blue_green.as_mut()
                    && *ok
                    && b.hook_asked == Some(*attempt)
                {
                    b.hook_passed = true;
                }
                self.activity(now);
            }
            Input::Health {
                instance,
                healthy,
                in_service,
                ..
            } => {
                if let Some(&k) = self.index.get(instance) {
                    self.facts[k].healthy = (*healthy).into();
                    self.facts[k].in_service = (*in_service).into();
                }
            }
            Input::CommandResult { id, outcome } => {
                // Answered in the same call as a `HostBack`: nothing to ask again.
                let id = id.to_string();
                self.resend_due.retain(|due| *due != id);
                self.result(now, &id, outcome);
            }
            Input::HostBack { host } => {
                self.expire(now);
                for k in 0..self.host.len() {
                    if &self.host[k] != host {
                        continue;
                    }
                    self.facts[k].reachable = true;
                    if let Pos::Busy { attempt, verb, .. } = self.tentative[k] {
                        let id = format!(
                            "{}/{}/{}/{attempt}",
                            self.rollout, self.names[k], VERBS[verb]
                        );
                        self.resend_due.push(id);
                    }
                    if let Some(s) = self.sides[k] {
                        let id = format!(
                            "{}/{}/{}/{}",
                            self.rollout, self.names[k], VERBS[s.verb], s.attempt
                        );
                        self.resend_due.push(id);
                    }
                }
            }
            Input::HostLost { host } => {
                for k in 0..self.host.len() {
                    if &self.host[k] == host {
                        self.facts[k].reachable = false;
                        self.ever_lost[k] = true;
                    }
                }
                // Under lost_hosts = skip this may stop the rollout.
                self.activity(now);
            }
            Input::Operator(a) => {
                if !matches!(a, OperatorAction::Pause) {
                    self.activity(now);
                }
                // A promote passes the step that bakes; none bakes while
                // its chains are still running.
                let updating =
                    (self.tentative.iter()).any(|p| matches!(p, Pos::Busy { attempt: 1, .. }));
                if *a == OperatorAction::Promote && !updating {
                    let step = self.canary.as_ref().map(|c| self.current_step(c));
                    if let (Some(c), Some(step)) = (self.canary.as_mut(), step) {
                        c.passed.insert(step);
                    }
                }
            }
        }
        self.expire(now);
    }

    fn result(&mut self, now: u64, id: &str, outcome: &CommandOutcome) {
        let Some((_, instance, verb, attempt)) = parse_id(id) else {
            return;
        };
        let Some(&k) = self.index.get(instance) else {
            return;
        };
        if is_side(verb, attempt) {
            if self.sides[k].is_some_and(|s| (s.verb, s.attempt) == (verb, attempt)) {
                self.sides[k] = None;
                let f = &mut self.facts[k];
                match outcome {
                    CommandOutcome::Ok => match verb {
                        DRAIN => f.in_service = Tri::No,
                        STOP => f.healthy = Tri::No,
                        _ => f.in_service = Tri::Unknown,
                    },
                    _ => Self::unsure(f, verb),
                }
                self.activity(now);
            }
            return;
        }
        if verb == WEIGHT {
            if self.weights[k].is_some_and(|f| f.generation == attempt) {
                self.weights[k] = None;
                self.weight_failed[k] = *outcome != CommandOutcome::Ok;
                self.activity(now);
            }
            return;
        }
        match self.tentative[k] {
            Pos::Busy {
                attempt: a,
                verb: v,
                ..
            } if (v, a) == (verb, attempt) => {}
            _ => return,
        }
        let f = &mut self.facts[k];
        let last = match outcome {
            CommandOutcome::Ok => {
                match verb {
                    DRAIN => f.in_service = Tri::No,
                    STOP => f.healthy = Tri::No,
                    VERIFY => f.healthy = Tri::Yes,
                    UNDRAIN => f.in_service = Tri::Yes,
                    _ => {}
                }
                Last::Ok(verb)
            }
            CommandOutcome::Failed(_) | CommandOutcome::TimedOut => {
                Self::unsure(f, verb);
                Last::Failed(verb)
            }
        };
        self.tentative[k] = Pos::Idle { attempt, last };
        self.activity(now);
    }

    /// What a step that may or may not have run leaves unknown. A stage
    /// (and a deploy, which only switches a link) touches neither.
    fn unsure(f: &mut Facts, verb: usize) {
        match verb {
            DRAIN | UNDRAIN => f.in_service = Tri::Unknown,
            STOP | START | VERIFY => f.healthy = Tri::Unknown,
            _ => {}
        }
    }

    /// Commands past their deadline failed, as the engine will decide.
    fn expire(&mut self, now: u64) {
        for k in 0..self.tentative.len() {
            if let Pos::Busy {
                attempt,
                verb,
                deadline,
                ..
            } = self.tentative[k]
                && deadline <= now
            {
                Self::unsure(&mut self.facts[k], verb);
                self.tentative[k] = Pos::Idle {
                    attempt,
                    last: Last::Failed(verb),
                };
                self.activity(now);
            }
            if self.weights[k].is_some_and(|f| f.deadline <= now) {
                self.weights[k] = None;
                self.weight_failed[k] = true;
                self.activity(now);
            }
            if let Some(s) = self.sides[k]
                && s.deadline <= now
            {
                Self::unsure(&mut self.facts[k], s.verb);
                self.sides[k] = None;
                self.activity(now);
            }
        }
    }

    /// The outputs of one `handle` (or `start` / `restore`): judge every
    /// command decided in it.
    pub fn outputs(&mut self, now: u64, outs: &[Output]) -> Result<(), Violation> {
        for id in std::mem::take(&mut self.resend_due) {
            let asked = outs
                .iter()
                .any(|o| matches!(o, Output::Send { id: sent, .. } if sent.to_string() == id));
            if !asked {
                return broke(
                    4,
                    format!("{id} was in flight when its host came back but was not asked again"),
                );
            }
        }
        for (n, o) in outs.iter().enumerate() {
            match o {
                Output::Persist if n != 0 => {
                    return broke(6, format!("Persist is output #{n} of its call, not first"));
                }
                Output::Send {
                    id,
                    instance,
                    host,
                    kind,
                    timeout,
                } => {
                    let timeout = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                    self.send(now, &id.to_string(), instance, host, kind, timeout)?;
                }
                Output::RunHook { attempt, .. } => {
                    self.activity(now);
                    if let Some(b) = self.blue_green.as_mut() {
                        b.hook_asked = Some(*attempt);
                    }
                }
                Output::Judgement(j) => {
                    self.activity(now);
                    if let Some(c) = self.canary.as_mut() {
                        let step = usize::try_from(j.step.saturating_sub(1)).unwrap_or(usize::MAX);
                        c.looked.insert(step);
                        let v = &j.judgement.verdict;
                        let passes = *v == Verdict::Pass
                            || (*v == Verdict::Inconclusive && c.pass_inconclusive);
                        if j.last && passes {
                            c.passed.insert(step);
                        }
                    }
                }
                _ => {}
            }
        }
        // A chain whose step succeeded must have its next step in flight.
        for k in 0..self.tentative.len() {
            if let Pos::Idle {
                last: Last::Ok(v), ..
            } = self.tentative[k]
                && v != UNDRAIN
            {
                return broke(
                    2,
                    format!(
                        "{}: {} succeeded but {} was not sent",
                        self.names[k],
                        VERBS[v],
                        VERBS[v + 1]
                    ),
                );
            }
        }
        Ok(())
    }

    fn send(
        &mut self,
        now: u64,
        id: &str,
        instance: &str,
        host: &str,
        kind: &CommandKind,
        timeout: u64,
    ) -> Result<(), Violation> {
        let Some((rollout, inst, verb, attempt)) = parse_id(id) else {
            return broke(
                2,
                format!("command id {id:?} is not rollout/instance/verb/attempt"),
            );
        };
        let Some(&k) = self.index.get(inst) else {
            return broke(2, format!("{id}: no such instance"));
        };
        if rollout != self.rollout || inst != instance || host != self.host[k] {
            return broke(
                2,
                format!("{id} sent for {instance} on {host}: id, instance and host disagree"),
            );
        }
        if kind_verb(kind) != verb {
            return broke(2, format!("{id} carries a {kind:?} command"));
        }
        if is_side(verb, attempt) {
            return self.send_side(now, id, k, verb, attempt, timeout);
        }
        if let Some(s) = self.sides[k] {
            return broke(
                8,
                format!(
                    "{id} sent while {}/{}/{}/{} is in flight (the agent answers busy)",
                    self.rollout, self.names[k], VERBS[s.verb], s.attempt
                ),
            );
        }
        if verb == WEIGHT {
            if let CommandKind::SetWeight { weight } = kind {
                self.weight_to_idle(id, k, *weight)?;
            }
            return self.send_weight(now, id, k, attempt, timeout);
        }
        if let CommandKind::Stage { release } | CommandKind::Deploy { release } = kind {
            let want = if attempt == 1 {
                Some(&self.target)
            } else {
                self.initial[k].as_ref()
            };
            if want != Some(release) {
                return broke(
                    5,
                    format!("{id} deploys {release}, expected {want:?} for attempt {attempt}"),
                );
            }
        }
        match self.tentative[k] {
            Pos::Busy {
                attempt: a,
                verb: v,
                ..
            } if (v, a) == (verb, attempt) => return Ok(()), // asked again
            Pos::Busy {
                attempt: a,
                verb: v,
                ..
            } => {
                return broke(
                    2,
                    format!(
                        "{id} sent while {}/{}/{a} is still in flight on {inst}",
                        self.names[k], VERBS[v]
                    ),
                );
            }
            Pos::Idle { attempt: a, last } => {
                let expected = match last {
                    Last::Nothing => Some((STAGE, 1)),
                    Last::Ok(v) if v < UNDRAIN => Some((v + 1, a)),
                    Last::Ok(_) | Last::Failed(_) if a == 1 => Some((STAGE, 2)),
                    _ => None,
                };
                if expected != Some((verb, attempt)) {
                    let twice = attempt < a
                        || (attempt == a
                            && match last {
                                Last::Ok(v) | Last::Failed(v) => verb <= v,
                                Last::Nothing => false,
                            });
                    let again = matches!(last, Last::Failed(v) if (v, a) == (verb, attempt));
                    let what = if again {
                        format!("{id} sent again after it had failed or timed out")
                    } else if twice {
                        format!("{id}: a step that already ran is decided again")
                    } else {
                        format!("{id}: out of order after {last:?} of attempt {a}")
                    };
                    return broke(if twice && !again { 6 } else { 2 }, what);
                }
            }
        }
        if let Some(f) = self.weights[k] {
            return broke(
                8,
                format!(
                    "{id} sent while weight command {}/{inst}/weight/{} is in flight (the agent answers busy)",
                    self.rollout, f.generation
                ),
            );
        }
        if verb == STAGE && attempt == 1 {
            self.advance(id)?;
        }
        // Judged at the stage, where the engine starts holding the
        // instance (it is busy, so uncounted, from then on).
        let costs = verb == STAGE && self.maybe_available(k);
        let before = if costs { self.capacity() } else { 0 };
        self.tentative[k] = Pos::Busy {
            attempt,
            verb,
            deadline: now.saturating_add(timeout),
            timeout,
        };
        self.uncommitted.insert(k);
        self.activity(now);
        if verb != STAGE {
            return Ok(());
        }
        let inflight = self.in_flight();
        if inflight > self.max_unavailable {
            return broke(
                1,
                format!(
                    "{id}: {inflight} chains in flight, max_unavailable {}",
                    self.max_unavailable
                ),
            );
        }
        if !costs {
            return Ok(());
        }
        let capacity = self.capacity();
        if capacity < self.floor {
            return broke(
                1,
                format!(
                    "{id} takes {inst} down: capacity {before} -> {capacity}, floor {}",
                    self.floor
                ),
            );
        }
        if let Some(max) = self.spread {
            let down = self.zone_down(&self.zone[k]);
            if down > max {
                return broke(
                    3,
                    format!(
                        "{id} leaves {down} unavailable in zone {:?}, spread limit {max}",
                        self.zone[k]
                    ),
                );
            }
        }
        Ok(())
    }

    /// A new forward chain: the step it belongs to may start only once
    /// every step before it passed (invariant 8).
    fn advance(&self, id: &str) -> Result<(), Violation> {
        let Some(c) = &self.canary else {
            return Ok(());
        };
        let step = c.chains_step(self.carrying() + 1);
        for j in 0..step {
            if !c.allowed(j) {
                return broke(
                    8,
                    format!(
                        "{id} starts a chain of traffic step {} ({} chains by its end), but step {} had no passing verdict nor promote (steps passed: {:?}, looked at: {:?})",
                        step + 1,
                        c.reach[step],
                        j + 1,
                        c.passed.iter().map(|s| s + 1).collect::<Vec<_>>(),
                        c.looked.iter().map(|s| s + 1).collect::<Vec<_>>(),
                    ),
                );
            }
        }
        Ok(())
    }

    /// A weight command: beside the chain, never while a chain command or
    /// another weight command of the instance is in flight (invariant 8).
    fn send_weight(
        &mut self,
        now: u64,
        id: &str,
        k: usize,
        generation: u32,
        timeout: u64,
    ) -> Result<(), Violation> {
        if let Pos::Busy { attempt, verb, .. } = self.tentative[k] {
            return broke(
                8,
                format!(
                    "{id} sent while {}/{}/{}/{attempt} is in flight (the agent answers busy)",
                    self.rollout, self.names[k], VERBS[verb]
                ),
            );
        }
        match self.weights[k] {
            Some(f) if f.generation == generation => return Ok(()), // asked again
            Some(f) => {
                return broke(
                    8,
                    format!(
                        "{id} sent while weight generation {} of {} is still in flight",
                        f.generation, self.names[k]
                    ),
                );
            }
            None => {}
        }
        self.weights[k] = Some(WeightFlight {
            generation,
            deadline: now.saturating_add(timeout),
            timeout,
        });
        self.uncommitted.insert(k);
        self.activity(now);
        Ok(())
    }

    /// A drain, undrain or stop outside a chain (blue-green): never while a
    /// chain command, a weight command or another of its kind is in flight
    /// on the instance.
    fn send_side(
        &mut self,
        now: u64,
        id: &str,
        k: usize,
        verb: usize,
        attempt: u32,
        timeout: u64,
    ) -> Result<(), Violation> {
        if self.blue_green.is_none() {
            return broke(
                2,
                format!("{id}: a command outside any chain in a rollout that has none"),
            );
        }
        if let Pos::Busy {
            attempt: a,
            verb: v,
            ..
        } = self.tentative[k]
        {
            return broke(
                9,
                format!(
                    "{id} sent while {}/{}/{}/{a} is in flight (the agent answers busy)",
                    self.rollout, self.names[k], VERBS[v]
                ),
            );
        }
        if let Some(f) = self.weights[k] {
            return broke(
                9,
                format!(
                    "{id} sent while weight generation {} of {} is in flight",
                    f.generation, self.names[k]
                ),
            );
        }
        match self.sides[k] {
            Some(s) if (s.verb, s.attempt) == (verb, attempt) => return Ok(()), // asked again
            Some(s) => {
                return broke(
                    9,
                    format!(
                        "{id} sent while {}/{}/{}/{} is in flight",
                        self.rollout, self.names[k], VERBS[s.verb], s.attempt
                    ),
                );
            }
            None => {}
        }
        self.sides[k] = Some(SideFlight {
            verb,
            attempt,
            deadline: now.saturating_add(timeout),
            timeout,
        });
        self.uncommitted.insert(k);
        self.activity(now);
        Ok(())
    }

    /// Invariant 9: the idle color gets traffic (a weight above 0) only
    /// once it is whole (every instance of it updated, or on the target
    /// from the start) and the pre-traffic hook, if any, passed.
    fn weight_to_idle(&self, id: &str, k: usize, weight: Option<u32>) -> Result<(), Violation> {
        let Some(b) = &self.blue_green else {
            return Ok(());
        };
        if !b.idle[k] || weight.is_none_or(|w| w == 0) {
            return Ok(());
        }
        if b.hook && !b.hook_passed {
            return broke(
                9,
                format!("{id} gives the idle color traffic before the pre-traffic hook passed"),
            );
        }
        for j in (0..self.names.len()).filter(|&j| b.idle[j]) {
            let updated = matches!(
                self.tentative[j],
                Pos::Idle {
                    attempt: 1,
                    last: Last::Ok(UNDRAIN)
                }
            ) || (matches!(self.tentative[j], Pos::Idle { attempt: 0, .. })
                && self.initial[j].as_ref() == Some(&self.target));
            if !updated {
                return broke(
                    9,
                    format!(
                        "{id} gives the idle color traffic while {} is not updated ({:?})",
                        self.names[j], self.tentative[j]
                    ),
                );
            }
        }
        Ok(())
    }

    /// The runtime is about to send `id`: its decision must be stored.
    pub fn sending(&self, id: &str) -> Result<(), Violation> {
        let Some((_, inst, ..)) = parse_id(id) else {
            return Ok(());
        };
        match self.index.get(inst) {
            Some(k) if self.uncommitted.contains(k) => broke(
                6,
                format!("{id} sent before the state deciding it was stored"),
            ),
            _ => Ok(()),
        }
    }

    /// The store write of a pass completed.
    pub fn written(&mut self) {
        self.sides_committed.clone_from(&self.sides);
        self.weights_committed.clone_from(&self.weights);
        self.committed.clone_from(&self.tentative);
        self.uncommitted.clear();
    }

    /// The coordinator died: whatever it did since the last write is gone.
    pub fn crashed(&mut self) {
        self.sides.clone_from(&self.sides_committed);
        self.weights.clone_from(&self.weights_committed);
        self.tentative.clone_from(&self.committed);
        self.uncommitted.clear();
    }

    /// A restored engine must hold exactly the progress that was stored, and
    /// ask again for every command that was in flight.
    pub fn restored(
        &mut self,
        now: u64,
        state: &RolloutState,
        outs: &[Output],
    ) -> Result<(), Violation> {
        self.activity(now);
        let resent: BTreeSet<String> = (outs.iter())
            .filter_map(|o| match o {
                Output::Send { id, .. } => Some(id.to_string()),
                _ => None,
            })
            .collect();
        for i in &state.instances {
            let Some(&k) = self.index.get(&i.id) else {
                return broke(6, format!("restored state has unknown instance {}", i.id));
            };
            let inflight_id = i.inflight.as_ref().map(|f| f.id.to_string());
            let inflight = inflight_id.as_deref().and_then(parse_id);
            let ok = match self.committed[k] {
                Pos::Busy { attempt, verb, .. } => {
                    let dir = if attempt == 1 {
                        Direction::Forward
                    } else {
                        Direction::Back
                    };
                    inflight.is_some_and(|(_, _, v, a)| (v, a) == (verb, attempt))
                        && i.step == step_of(verb)
                        && i.direction == dir
                }
                Pos::Idle { attempt, last } => {
                    inflight.is_none()
                        && match (attempt, last) {
                            (0, Last::Nothing) => matches!(i.step, Step::Pending | Step::Skipped),
                            (1, Last::Ok(UNDRAIN)) => {
                                i.step == Step::Done
                                    // Blue-green: switched back, drained.
                                    || (self.blue_green.is_some() && i.step == Step::RolledBack)
                            }
                            (2, Last::Ok(UNDRAIN)) => i.step == Step::RolledBack,
                            // Nothing to return after a failed stage.
                            (1, Last::Failed(STAGE)) => {
                                matches!(i.step, Step::Failed | Step::RolledBack)
                            }
                            (_, Last::Failed(_)) => i.step == Step::Failed,
                            _ => false,
                        }
                }
            };
            if !ok {
                return broke(
                    6,
                    format!(
                        "{} restored as {:?} {:?} in flight {:?}, but the store write before the crash held {:?}",
                        i.id,
                        i.step,
                        i.direction,
                        i.inflight.as_ref().map(|f| f.id.to_string()),
                        self.committed[k]
                    ),
                );
            }
            if let Pos::Busy {
                attempt,
                verb,
                timeout,
                ..
            } = self.committed[k]
            {
                let id = format!("{}/{}/{}/{attempt}", self.rollout, i.id, VERBS[verb]);
                if !state.is_finished() && !resent.contains(&id) {
                    return broke(
                        6,
                        format!("{id} was in flight but not asked again on restore"),
                    );
                }
                self.committed[k] = Pos::Busy {
                    attempt,
                    verb,
                    deadline: now.saturating_add(timeout),
                    timeout,
                };
            }
        }
        self.tentative.clone_from(&self.committed);
        for f in self.weights_committed.iter_mut().flatten() {
            f.deadline = now.saturating_add(f.timeout);
        }
        for (k, s) in self.sides_committed.iter_mut().enumerate() {
            let Some(s) = s else { continue };
            let id = format!(
                "{}/{}/{}/{}",
                self.rollout, self.names[k], VERBS[s.verb], s.attempt
            );
            if !state.is_finished() && !resent.contains(&id) {
                return broke(
                    6,
                    format!("{id} was in flight but not asked again on restore"),
                );
            }
            s.deadline = now.saturating_add(s.timeout);
        }
        self.sides.clone_from(&self.sides_committed);
        self.weights.clone_from(&self.weights_committed);
        self.outputs(now, outs)
    }

    /// Nothing waits forever: some progress at least every progress_deadline.
    pub fn idle(&self, now: u64, slack: u64) -> Result<(), Violation> {
        let idle = now.saturating_sub(self.last_activity);
        let limit = (self.progress_deadline)
            .saturating_add(self.idle_extra)
            .saturating_add(slack);
        if idle > limit {
            return broke(
                4,
                format!(
                    "nothing happened for {idle}ms, progress_deadline {}ms",
                    self.progress_deadline
                ),
            );
        }
        Ok(())
    }
}
