//! The rollout engine: a sans-IO state machine in the manner of quinn-proto.
//!
//! The runtime feeds [`Input`]s with the current time and performs the
//! [`Output`]s in order. The engine has no clock, no randomness and no
//! unordered maps, so the same inputs give byte-identical outputs; that is what
//! lets the simulator replay a failing seed.
//!
//! This file holds the entry points and input handling; `chain.rs` runs one
//! instance's commands, `modes.rs` the rollout as a whole.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::amount::Amount;
#[cfg(any(test, feature = "sim"))]
use super::bugs::{self, Bug};
use super::model::{
    Direction, Input, InstanceInfo, Millis, OperatorAction, Outcome, Output, RolloutEvent, Step,
};
use super::reason::{Block, StopReason};
use super::spec::{LostHostPolicy, Release, RolloutSpec, SpecError};
use super::state::{
    InstanceState, Limits, Mode, Observed, RestoreKind, RolloutState, SkipReason, Then, count,
};

/// Why a rollout is refused before it starts. All terminal: the spec or the
/// fleet has to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("rollout id {0:?}: expected a non-empty id without '/'")]
    BadId(String),
    #[error("no instances of service {service} match selector {selector:?}")]
    NoInstances { service: String, selector: String },
    #[error("instance {0:?}: expected a non-empty id and host")]
    BadInstance(String),
    #[error("instance {0} is listed twice")]
    DuplicateInstance(String),
    #[error(
        "min_healthy {min_healthy} asks for a floor of {floor} but only {total} instances match"
    )]
    FloorAboveTotal {
        min_healthy: Amount,
        floor: u32,
        total: u32,
    },
    #[error(
        "floor {floor} of {total} but only {capacity} healthy and in service{}{}",
        disconnected_text(.disconnected),
        never_deployed_text(*.never_deployed)
    )]
    FloorUnreachable {
        floor: u32,
        total: u32,
        capacity: u32,
        /// Target instances that run no release at all: a first deploy,
        /// which only a floor of 0 lets start.
        never_deployed: u32,
        /// Hosts of target instances that are not connected (still
        /// reconnecting after a restart, or lost), sorted: what the
        /// operator may wait for.
        disconnected: Vec<String>,
    },
    #[error(
        "floor {floor} of {total} leaves no instance that may be taken down, \
         and {pending} need updating; lower min_healthy"
    )]
    NoRoom {
        floor: u32,
        total: u32,
        pending: u32,
    },
    #[error(
        "a canary compares instances on the new release with instances on the old one, \
         but service {service} has {instances} matching instance(s); use strategy = rolling"
    )]
    CanaryNeedsBaseline { service: String, instances: u32 },
    #[error(
        "pre_traffic_hook `{name}` is not in this coordinator's config (it has: {}); add \
         [pre_traffic_hooks.{name}] with its command to coordinator.toml",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    UnknownHook { name: String, known: Vec<String> },
    #[error("blue-green: {why}")]
    BlueGreen { why: String },
    #[error("{instance}: {why}; a canary moves traffic by load balancer weights")]
    NotWeightable { instance: String, why: String },
    #[error("{unreachable} instance(s) on lost hosts ({hosts}) exceed max_unreachable {max}")]
    TooManyUnreachable {
        unreachable: u32,
        max: u32,
        hosts: String,
    },
}

/// Hosts named in a refusal at most; the rest are counted.
const HOSTS_NAMED: usize = 10;

/// `; h2, h4 disconnected` (the first [`HOSTS_NAMED`], then `and N more`),
/// or nothing.
fn disconnected_text(hosts: &[String]) -> String {
    if hosts.is_empty() {
        return String::new();
    }
    let mut text = format!("; {}", hosts[..hosts.len().min(HOSTS_NAMED)].join(", "));
    if hosts.len() > HOSTS_NAMED {
        text.push_str(&format!(" and {} more", hosts.len() - HOSTS_NAMED));
    }
    text.push_str(" disconnected");
    text
}

/// `; 3 never deployed: a first deploy needs ...`, or nothing.
fn never_deployed_text(n: u32) -> String {
    if n == 0 {
        return String::new();
    }
    format!(
        "; {n} never deployed: a first deploy needs min_healthy 0 \
         (`drover rollout start --initial`, or --min-healthy 0)"
    )
}

/// The outputs of one call, with the Persist flag kept apart until the end so
/// that it can go first.
pub(super) struct Cx {
    pub(super) now: Millis,
    pub(super) out: Vec<Output>,
    pub(super) dirty: bool,
    pub(super) finished: bool,
    /// Instances whose in-flight command is to be sent again, once every
    /// input of the call is in: a result later in the same call may have
    /// settled it already.
    pub(super) resend: Vec<(usize, super::model::CommandId)>,
    /// Instances whose in-flight weight command is to be sent again.
    pub(super) resend_weights: Vec<usize>,
}

impl Cx {
    fn new(now: Millis) -> Cx {
        Cx {
            now,
            out: Vec::new(),
            dirty: false,
            finished: false,
            resend: Vec::new(),
            resend_weights: Vec::new(),
        }
    }

    fn into_outputs(mut self) -> Vec<Output> {
        let persist = self.dirty;
        #[cfg(any(test, feature = "sim"))]
        let persist = persist
            && !(bugs::on(Bug::NoPersistBeforeSend)
                && self.out.iter().any(|o| matches!(o, Output::Send { .. })));
        if persist {
            self.out.insert(0, Output::Persist);
        }
        self.out
    }
}

/// One pass of [`Engine::drive`]: whether the mode changed (drive again) and
/// why the rollout waits, if it does.
pub(super) struct Pass {
    pub(super) again: bool,
    pub(super) wait: Option<Block>,
}

pub(super) fn show(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Lists up to five items, then a count of the rest.
pub(super) fn list(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}

/// Sorted by id; with `spread_by`, label values take turns so that batches
/// mix zones instead of emptying one.
fn plan_order(mut infos: Vec<InstanceInfo>, spread_label: Option<&str>) -> Vec<InstanceInfo> {
    infos.sort_by(|a, b| a.id.cmp(&b.id));
    let Some(label) = spread_label else {
        return infos;
    };
    let mut groups: BTreeMap<String, VecDeque<InstanceInfo>> = BTreeMap::new();
    for i in infos {
        let v = i.labels.get(label).cloned().unwrap_or_default();
        groups.entry(v).or_default().push_back(i);
    }
    let mut out = Vec::new();
    while groups.values().any(|g| !g.is_empty()) {
        for g in groups.values_mut() {
            if let Some(i) = g.pop_front() {
                out.push(i);
            }
        }
    }
    out
}

/// A running rollout. See the module docs of [`rollout`](super) for the rules.
///
/// Every change to an instance goes through [`Engine::edit`], which keeps
/// the capacity count and a per-instance change counter up to date, so that
/// handling an input costs the instances it touches rather than the fleet,
/// and the runtime can store and show only what changed.
#[derive(Debug, Clone)]
pub struct Engine {
    pub(super) st: RolloutState,
    index: BTreeMap<String, usize>,
    by_host: BTreeMap<String, Vec<usize>>,
    /// Per instance, the value of `changes` at its last change.
    changed_at: Vec<u64>,
    /// Counts instance changes since this engine was built.
    changes: u64,
    /// `changes` when [`Engine::take_changed`] last ran.
    taken: u64,
    /// Instances counted in capacity: [`RolloutState::capacity`], kept as
    /// instances change instead of counted on every event.
    available: u32,
}

impl Engine {
    /// Starts a rollout over `instances`: the instances of `spec.service`
    /// matched by `spec.selector` (the caller matches; the engine takes the
    /// list as the target set). Refuses a rollout that could never proceed.
    pub fn start(
        id: &str,
        spec: RolloutSpec,
        instances: Vec<InstanceInfo>,
        now: Millis,
    ) -> Result<(Engine, Vec<Output>), PlanError> {
        spec.validate()?;
        let colors = match spec.strategy {
            drover_model::Strategy::BlueGreen => {
                let plan = super::bluegreen::plan_colors(&instances)?;
                check_weightable(&instances, spec.analysis.source)?;
                Some(plan)
            }
            _ => None,
        };
        if spec.strategy == drover_model::Strategy::Canary {
            if instances.len() < 2 {
                return Err(PlanError::CanaryNeedsBaseline {
                    service: spec.service.clone(),
                    instances: count(instances.iter()),
                });
            }
            check_weightable(&instances, spec.analysis.source)?;
        }
        if id.trim().is_empty() || id.contains('/') {
            return Err(PlanError::BadId(id.to_string()));
        }
        if instances.is_empty() {
            return Err(PlanError::NoInstances {
                service: spec.service.clone(),
                selector: spec.selector.clone(),
            });
        }
        let mut seen = BTreeSet::new();
        for i in &instances {
            if i.id.trim().is_empty() || i.host.trim().is_empty() {
                return Err(PlanError::BadInstance(i.id.clone()));
            }
            if !seen.insert(i.id.as_str()) {
                return Err(PlanError::DuplicateInstance(i.id.clone()));
            }
        }
        let ordered = plan_order(instances, spec.spread_by.as_ref().map(|s| s.label.as_str()));
        // Blue-green counts one color: the floor, the budgets and the
        // batches are about the color that serves, then the one that will.
        let total = match &colors {
            Some(c) => count(c.idle_ids.iter()),
            None => count(ordered.iter()),
        };
        let serving_color = |id: &str| {
            colors
                .as_ref()
                .is_some_and(|c| c.active_ids.iter().any(|a| a == id))
        };
        let limits = Limits {
            total,
            floor: spec.min_healthy.resolve_up(total),
            max_failures: spec.max_failures.resolve_down(total),
            max_unreachable: spec.max_unreachable.resolve_down(total),
            max_unavailable: spec
                .max_unavailable
                .map_or(u32::MAX, |a| a.resolve_down(total).max(1)),
            batch_sizes: spec
                .batches
                .iter()
                .map(|b| b.resolve_down(total).max(1))
                .collect(),
        };
        let states: Vec<InstanceState> = ordered
            .into_iter()
            .map(|i| {
                // Blue-green redeploys the idle color even when it is on the
                // target already: it must be verified and undrained before
                // it takes traffic.
                let skipped = if serving_color(&i.id) {
                    Some(SkipReason::ServingColor)
                } else if i.release.as_ref() == Some(&spec.target) && colors.is_none() {
                    Some(SkipReason::OnTarget)
                } else if !i.reachable && spec.lost_hosts == LostHostPolicy::Skip {
                    Some(SkipReason::Unreachable)
                } else {
                    None
                };
                InstanceState {
                    id: i.id,
                    host: i.host,
                    labels: i.labels,
                    previous: i.release.clone(),
                    observed: Observed {
                        release: i.release,
                        healthy: i.healthy,
                        in_service: i.in_service,
                        reachable: i.reachable,
                        stale: false,
                    },
                    step: if skipped.is_some() {
                        Step::Skipped
                    } else {
                        Step::Pending
                    },
                    direction: Direction::Forward,
                    skipped,
                    batch: None,
                    seq: None,
                    attempt: 0,
                    inflight: None,
                    fault: None,
                    rollback_fault: None,
                    left: None,
                    weight: None,
                    meter: None,
                    side: None,
                }
            })
            .collect();
        let mut st = RolloutState {
            id: id.to_string(),
            spec,
            limits,
            instances: states,
            mode: Mode::Forward,
            paused: false,
            batch: 0,
            batch_started: 0,
            next_seq: 0,
            started_at: now,
            last_progress: now,
            now,
            lowest_capacity: 0,
            wait_reason: None,
            finished_at: None,
            traffic: None,
        };
        if st.spec.strategy != drover_model::Strategy::Rolling {
            let active = colors.as_ref().map(|c| c.active);
            st.traffic = Some(super::traffic::Traffic::plan(&st, active));
        }
        let capacity = st.capacity();
        st.lowest_capacity = capacity;
        check_startable(&st, capacity)?;

        let mut eng = Engine::from_state(st);
        let mut cx = Cx::new(now);
        cx.dirty = true;
        let s = &eng.st;
        let pending = count(s.instances.iter().filter(|i| i.step == Step::Pending));
        let msg = format!(
            "rollout started: {} to {}, {pending} of {} instances to update, floor {}",
            s.spec.service, s.spec.target, s.limits.total, s.limits.floor
        );
        eng.event(&mut cx, None, None, msg);
        for idx in 0..eng.st.instances.len() {
            let i = &eng.st.instances[idx];
            let why = match i.skipped {
                Some(SkipReason::OnTarget) => "skipped: already on the target release",
                Some(SkipReason::Unreachable) => "skipped: host lost (counted as unreachable)",
                Some(SkipReason::ServingColor) => {
                    "the serving color: keeps its release and carries the traffic until the switch"
                }
                None => continue,
            };
            eng.event(&mut cx, Some(idx), Some(Step::Skipped), why.to_string());
        }
        eng.settle(&mut cx);
        Ok((eng, cx.into_outputs()))
    }

    /// Resumes from a persisted state after a coordinator crash. In-flight
    /// commands are sent again with the same ids (the agent's journal answers
    /// those it already ran) and get a fresh timeout. Nothing new starts until
    /// every reachable instance has reported its health again, and the
    /// progress deadline restarts from `now`.
    pub fn restore(state: RolloutState, now: Millis) -> (Engine, Vec<Output>) {
        let mut eng = Engine::from_state(state);
        if eng.st.is_finished() {
            return (eng, Vec::new());
        }
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::RestoreForgetsInFlight) {
            eng.forget_in_flight();
        }
        let now = now.max(eng.st.now);
        eng.st.now = now;
        eng.st.last_progress = now;
        eng.st.wait_reason = None;
        let mut cx = Cx::new(now);
        cx.dirty = true;
        for i in &mut eng.st.instances {
            if i.observed.reachable {
                i.observed.stale = true;
            }
            if let Some(f) = &mut i.inflight {
                f.deadline = now.plus(f.timeout);
            }
            if let Some(f) = i.weight.as_mut().and_then(|w| w.inflight.as_mut()) {
                f.deadline = now.plus(f.timeout);
            }
            if let Some(f) = i.side.as_mut().and_then(|s| s.inflight.as_mut()) {
                f.deadline = now.plus(f.timeout);
            }
        }
        let n = eng.st.inflight();
        eng.event(
            &mut cx,
            None,
            None,
            format!(
                "resumed after a coordinator restart; asking again for {n} in-flight command(s)"
            ),
        );
        cx.resend = (eng.st.instances.iter().enumerate())
            .filter_map(|(n, i)| Some((n, i.inflight.as_ref()?.id.clone())))
            .collect();
        cx.resend_weights = (0..eng.st.instances.len()).collect();
        eng.flush_resends(&mut cx);
        eng.rerun_hook(&mut cx);
        eng.settle(&mut cx);
        (eng, cx.into_outputs())
    }

    fn from_state(st: RolloutState) -> Engine {
        let index = st
            .instances
            .iter()
            .enumerate()
            .map(|(n, i)| (i.id.clone(), n))
            .collect();
        let mut by_host: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (n, i) in st.instances.iter().enumerate() {
            by_host.entry(i.host.clone()).or_default().push(n);
        }
        let available = st.capacity();
        // Everything counts as changed once: the first store write after a
        // start or a restore holds every instance.
        let changed_at = vec![1; st.instances.len()];
        Engine {
            st,
            index,
            by_host,
            changed_at,
            changes: 1,
            taken: 0,
            available,
        }
    }

    /// Changes instance `idx` through `f`, keeping the capacity count and
    /// the change counters. Every change goes through here once the engine
    /// is built, except `restore` marking instances stale and renewing
    /// deadlines, which counts nothing and which the first write holds anyway.
    pub(super) fn edit<R>(&mut self, idx: usize, f: impl FnOnce(&mut InstanceState) -> R) -> R {
        let i = &mut self.st.instances[idx];
        let before = i.available();
        let r = f(i);
        let after = i.available();
        if before != after {
            if after {
                self.available += 1;
            } else {
                self.available -= 1;
            }
        }
        self.changes += 1;
        self.changed_at[idx] = self.changes;
        r
    }

    /// Serving capacity now: what [`RolloutState::capacity`] counts.
    pub(super) fn capacity(&self) -> u32 {
        #[cfg(any(test, feature = "sim"))]
        assert_eq!(
            self.available,
            self.st.capacity(),
            "capacity count drifted from the instances"
        );
        self.available
    }

    /// Indices of the instances changed since the last call (all of them on
    /// the first), in plan order. The runtime stores these on a `Persist`;
    /// the rest are as last stored.
    pub fn take_changed(&mut self) -> Vec<usize> {
        let since = self.taken;
        self.taken = self.changes;
        (self.changed_at.iter().enumerate())
            .filter(|&(_, &at)| at > since)
            .map(|(n, _)| n)
            .collect()
    }

    /// The change counter of instance `idx`, for readers that keep their own
    /// copy (the status cache) and refresh only what moved.
    pub fn changed_at(&self, idx: usize) -> u64 {
        self.changed_at[idx]
    }

    /// The position of a target instance.
    pub(super) fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// The instance an id from this rollout's commands names, if any.
    pub(super) fn instance_of(&self, id: &super::model::CommandId) -> Option<usize> {
        if id.rollout != self.st.id {
            return None;
        }
        self.index.get(&id.instance).copied()
    }

    /// The host of a target instance, and whether a command of it is in
    /// flight; `None` for an instance outside this rollout.
    pub fn instance(&self, id: &str) -> Option<(&str, bool)> {
        let i = &self.st.instances[*self.index.get(id)?];
        let weighing = i.weight.as_ref().is_some_and(|w| w.inflight.is_some());
        let side = i.side.as_ref().is_some_and(|s| s.inflight.is_some());
        Some((i.host.as_str(), i.inflight.is_some() || weighing || side))
    }

    pub fn state(&self) -> &RolloutState {
        &self.st
    }

    pub fn id(&self) -> &str {
        &self.st.id
    }

    pub fn is_finished(&self) -> bool {
        self.st.is_finished()
    }

    pub fn outcome(&self) -> Option<&Outcome> {
        self.st.outcome()
    }

    /// The earliest time at which a [`Input::Tick`] could change anything (a
    /// command timeout or the progress deadline), so the runtime can sleep
    /// until then instead of polling. `None` once finished.
    pub fn next_deadline(&self) -> Option<Millis> {
        let progress = match self.st.mode {
            Mode::Forward | Mode::Restoring { .. } => {
                Some(self.st.last_progress.plus(self.st.spec.progress_deadline))
            }
            Mode::Stopping { .. } | Mode::Unweighting { .. } | Mode::Finished(_) => None,
        };
        if self.st.is_finished() {
            return None;
        }
        self.st
            .instances
            .iter()
            .filter_map(|i| i.inflight.as_ref().map(|f| f.deadline))
            .chain(progress)
            .chain(self.traffic_deadline())
            .min()
    }

    /// Feeds one input. Outputs that follow a `Persist` must wait until the
    /// state has been stored. A finished rollout ignores everything.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Output> {
        self.handle_all(now, [input])
    }

    /// Feeds every input that arrived together, then looks at the rollout
    /// as a whole once: one timeout sweep and one pass of the mode machine
    /// for the lot, as if they had arrived at the same instant. This is what
    /// keeps a pass linear in the fleet rather than in fleet times inputs.
    /// Outputs as [`Engine::handle`]: one `Persist` first if anything needs
    /// storing.
    pub fn handle_all(
        &mut self,
        now: Millis,
        inputs: impl IntoIterator<Item = Input>,
    ) -> Vec<Output> {
        if self.st.is_finished() {
            return Vec::new();
        }
        let now = now.max(self.st.now);
        self.st.now = now;
        let mut cx = Cx::new(now);
        // A deadline at or before `now` beats any input handled at `now`:
        // a result that arrives as late as its timeout counts as too late,
        // and a host that comes back is not asked for a step already given up.
        #[cfg(any(test, feature = "sim"))]
        let expire_first = !bugs::on(Bug::ResendPastDeadline);
        #[cfg(not(any(test, feature = "sim")))]
        let expire_first = true;
        if expire_first {
            self.expire(&mut cx);
        }
        for input in inputs {
            match input {
                Input::Tick => {}
                Input::Health {
                    instance,
                    healthy,
                    in_service,
                    release,
                } => self.on_health(&mut cx, &instance, healthy, in_service, release),
                Input::CommandResult { id, outcome } => self.on_result(&mut cx, &id, outcome),
                Input::HostLost { host } => self.on_host_lost(&mut cx, &host),
                Input::HostBack { host } => self.on_host_back(&mut cx, &host),
                Input::Operator(action) => self.on_operator(&mut cx, action),
                Input::Traffic { instance, sample } => self.on_traffic(&instance, &sample),
                Input::HookDone {
                    attempt,
                    ok,
                    detail,
                } => self.on_hook_done(&mut cx, attempt, ok, &detail),
            }
        }
        self.expire(&mut cx);
        self.traffic_tick(&mut cx);
        self.flush_resends(&mut cx);
        self.settle(&mut cx);
        cx.into_outputs()
    }

    // ---- inputs ----

    fn on_health(
        &mut self,
        cx: &mut Cx,
        instance: &str,
        healthy: bool,
        in_service: bool,
        release: Option<Release>,
    ) {
        let Some(&idx) = self.index.get(instance) else {
            return;
        };
        let (before, after) = self.edit(idx, |i| {
            let before = i.available();
            i.observed.healthy = healthy;
            i.observed.in_service = in_service;
            i.observed.release = release;
            i.observed.stale = false;
            (before, i.available())
        });
        if before != after {
            let msg = if after {
                "available again".to_string()
            } else if !healthy {
                "unavailable on its own: unhealthy".to_string()
            } else {
                "unavailable on its own: out of service".to_string()
            };
            self.event(cx, Some(idx), None, msg);
        }
    }

    /// Instances on `host`, in plan order.
    fn on_host(&self, host: &str) -> Vec<usize> {
        self.by_host.get(host).cloned().unwrap_or_default()
    }

    fn on_host_lost(&mut self, cx: &mut Cx, host: &str) {
        let on_host = self.on_host(host);
        let mut lost = 0;
        for &idx in &on_host {
            if self.st.instances[idx].observed.reachable {
                self.edit(idx, |i| i.observed.reachable = false);
                lost += 1;
            }
        }
        if lost == 0 {
            return;
        }
        cx.dirty = true;
        self.event(
            cx,
            None,
            None,
            format!("host {host} lost ({lost} instance(s))"),
        );
        if self.st.spec.lost_hosts == LostHostPolicy::Skip && self.st.mode == Mode::Forward {
            for idx in on_host {
                if self.st.instances[idx].step == Step::Pending {
                    self.edit(idx, |i| {
                        i.step = Step::Skipped;
                        i.skipped = Some(SkipReason::Unreachable);
                    });
                    let msg = "skipped: host lost (counted as unreachable)".to_string();
                    self.event(cx, Some(idx), Some(Step::Skipped), msg);
                }
            }
            self.check_budget(cx);
        }
    }

    fn on_host_back(&mut self, cx: &mut Cx, host: &str) {
        let on_host = self.on_host(host);
        let mut back = 0;
        for &idx in &on_host {
            if !self.st.instances[idx].observed.reachable {
                self.edit(idx, |i| {
                    i.observed.reachable = true;
                    i.observed.stale = true;
                });
                back += 1;
            }
        }
        if back > 0 {
            cx.dirty = true;
            self.event(
                cx,
                None,
                None,
                format!("host {host} back ({back} instance(s))"),
            );
        }
        for idx in on_host {
            if let Some(f) = &self.st.instances[idx].inflight {
                cx.resend.push((idx, f.id.clone()));
            }
            cx.resend_weights.push(idx);
        }
    }

    fn on_operator(&mut self, cx: &mut Cx, action: OperatorAction) {
        if self.traffic_operator(cx, action) {
            return;
        }
        match action {
            // Promote means nothing outside a traffic step's bake.
            OperatorAction::Promote => {}
            OperatorAction::Pause => {
                let pausable = matches!(self.st.mode, Mode::Forward | Mode::Restoring { .. });
                if pausable && !self.st.paused {
                    self.st.paused = true;
                    cx.dirty = true;
                    self.event(cx, None, None, "paused by operator".to_string());
                }
            }
            OperatorAction::Resume => {
                if self.st.paused {
                    self.st.paused = false;
                    cx.dirty = true;
                    self.progress(cx);
                    self.event(cx, None, None, "resumed by operator".to_string());
                    #[cfg(any(test, feature = "sim"))]
                    if bugs::on(Bug::DuplicateSendOnResume) {
                        self.reissue_in_flight(cx);
                    }
                }
            }
            OperatorAction::Abort => self.redirect(cx, StopReason::OperatorAbort, Then::Abort),
            OperatorAction::Rollback => {
                self.redirect(cx, StopReason::OperatorRollback, Then::Rollback);
            }
        }
    }

    /// Operator abort or rollback: stop going forward, or turn a stop or a
    /// restore already under way toward what the operator asked for.
    fn redirect(&mut self, cx: &mut Cx, reason: StopReason, then: Then) {
        let kind = match then {
            Then::Abort => RestoreKind::Abort,
            Then::Rollback | Then::Fail => RestoreKind::Rollback,
        };
        let changed = match &mut self.st.mode {
            Mode::Forward => {
                self.stop(cx, reason, then);
                return;
            }
            Mode::Stopping { reason: r, then: t } if *t != then => {
                *r = reason.clone();
                *t = then;
                true
            }
            Mode::Restoring { reason: r, kind: k } if *k != kind => {
                *r = reason.clone();
                *k = kind;
                true
            }
            _ => false,
        };
        if changed || self.st.paused {
            self.st.paused = false;
            cx.dirty = true;
            self.event(cx, None, None, reason.to_string());
        }
    }

    // ---- events ----

    pub(super) fn event(
        &mut self,
        cx: &mut Cx,
        idx: Option<usize>,
        step: Option<Step>,
        message: String,
    ) {
        let capacity = self.capacity();
        if capacity < self.st.lowest_capacity {
            self.st.lowest_capacity = capacity;
            cx.dirty = true;
        }
        cx.out.push(Output::Event(RolloutEvent {
            at: cx.now,
            instance: idx.map(|n| self.st.instances[n].id.clone()),
            step,
            capacity,
            floor: self.st.limits.floor,
            message,
        }));
    }
}

/// The broken variants' own moves; see [`bugs`](super::bugs).
#[cfg(any(test, feature = "sim"))]
impl Engine {
    /// [`Bug::DuplicateSendOnResume`]: every in-flight step again, new id.
    fn reissue_in_flight(&mut self, cx: &mut Cx) {
        for idx in 0..self.st.instances.len() {
            if self.st.instances[idx].inflight.is_some() {
                let step = self.edit(idx, |i| {
                    i.attempt += 1;
                    i.step
                });
                self.send_step(cx, idx, step);
            }
        }
    }

    /// [`Bug::RestoreForgetsInFlight`]: forward chains start over.
    fn forget_in_flight(&mut self) {
        for idx in 0..self.st.instances.len() {
            self.edit(idx, |i| {
                if i.direction == Direction::Forward && i.inflight.take().is_some() {
                    i.step = Step::Pending;
                    i.attempt = i.attempt.saturating_sub(1);
                    i.seq = None;
                    i.batch = None;
                }
            });
        }
    }
}

/// Every target instance must sit behind load balancers that apply weight
/// changes at run time: a canary's traffic share is made of weights.
fn check_weightable(
    instances: &[InstanceInfo],
    source: drover_model::MetricsSource,
) -> Result<(), PlanError> {
    for i in instances {
        let refuse = |why: String| {
            Err(PlanError::NotWeightable {
                instance: i.id.clone(),
                why,
            })
        };
        if i.balancers.is_empty() {
            return refuse(
                "its agent reports no load balancer (configure [instance.drain] type = \"haproxy\")"
                    .to_string(),
            );
        }
        for b in &i.balancers {
            if b.algorithm.is_empty() {
                return refuse(format!(
                    "the balance algorithm of backend {} in {} could not be read",
                    b.backend, b.balancer
                ));
            }
            // HAProxy 2.6 does not say whether hashing is consistent, so a
            // hash backend not yet seen to take a runtime weight passes
            // here; a map-based one refuses the first weight, which fails
            // that step with HAProxy's reason. The two algorithms that
            // always ignore weights are refused now.
            let algorithm = b.algorithm.as_str();
            if !b.dynamic && matches!(algorithm, "static-rr" | "first") {
                return refuse(format!(
                    "backend {} in {} uses `balance {algorithm}`, which ignores weight changes; \
                     use roundrobin, leastconn or random (or hash-type consistent)",
                    b.backend, b.balancer
                ));
            }
            // Judged on HAProxy's counters: without them every step would
            // end inconclusive.
            if source != drover_model::MetricsSource::Metrics && !b.counted {
                return refuse(format!(
                    "its agent reports no counters for backend {} in {} (an agent older \
                     than canary support, or HAProxy's stats could not be read); upgrade it, \
                     or judge on the instances' own metrics (analysis.source = \"metrics\")",
                    b.backend, b.balancer
                ));
            }
        }
    }
    Ok(())
}

/// Refuses a rollout that is already under its floor, could never take an
/// instance down, or already has more lost instances than allowed.
fn check_startable(st: &RolloutState, capacity: u32) -> Result<(), PlanError> {
    let lim = &st.limits;
    // A floor above the fleet is a wrong spec even when nothing needs updating.
    if lim.floor > lim.total {
        return Err(PlanError::FloorAboveTotal {
            min_healthy: st.spec.min_healthy,
            floor: lim.floor,
            total: lim.total,
        });
    }
    let pending = count(st.instances.iter().filter(|i| i.step == Step::Pending));
    if pending == 0 {
        return Ok(());
    }
    let unreachable = st.unreachable_count();
    if unreachable > lim.max_unreachable {
        let hosts: BTreeSet<&str> = (st.instances.iter())
            .filter(|i| i.unreachable())
            .map(|i| i.host.as_str())
            .collect();
        return Err(PlanError::TooManyUnreachable {
            unreachable,
            max: lim.max_unreachable,
            hosts: hosts.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    if capacity < lim.floor {
        let disconnected: BTreeSet<&str> = (st.instances.iter())
            .filter(|i| !i.observed.reachable)
            .map(|i| i.host.as_str())
            .collect();
        let never_deployed = count(
            (st.instances.iter()).filter(|i| i.observed.reachable && i.observed.release.is_none()),
        );
        return Err(PlanError::FloorUnreachable {
            floor: lim.floor,
            total: lim.total,
            capacity,
            never_deployed,
            disconnected: disconnected.into_iter().map(str::to_string).collect(),
        });
    }
    // Blue-green takes down only instances that serve nothing.
    let colors = st.traffic.as_ref().is_some_and(|t| t.colors.is_some());
    if lim.floor == lim.total && !colors {
        return Err(PlanError::NoRoom {
            floor: lim.floor,
            total: lim.total,
            pending,
        });
    }
    Ok(())
}
