//! Every decision of a running rollout's runtime, sans-IO: what the engine
//! is told, and what must be stored, sent and shown because of it.
//!
//! The runtime around it ([`task`](super::task) in the coordinator, the
//! simulator in tests) only moves things: it hands the driver what the
//! registry and the agents said ([`Event`]), calls [`Driver::pass`] with
//! the time, stores the pass's writes, and only then sends its commands.
//! So the simulator runs exactly what the coordinator runs.
//!
//! Decided here:
//! - which registry changes become engine inputs: a host's instances as
//!   reported, with a report that says the same again dropped (every input
//!   costs the engine work, and every host reports every few seconds);
//!   `HostLost` / `HostBack` on a change of the host's status;
//! - a new agent session asks again for what was in flight (`HostBack`);
//! - after a restore, hosts that stayed away for the lost timeout are lost;
//! - an agent's update is taken only for an instance of this rollout, from
//!   the host that owns it; progress is kept only while a step is in flight;
//! - what capacity counts: an instance is in service when it runs, its
//!   agent has not drained it, and every load balancer it is registered
//!   with routes to it;
//! - one write per pass (state and events), and nothing sent when the state
//!   could not be encoded;
//! - when readers get a new status (at most every [`PUBLISH_EVERY`], at once
//!   for operator actions and the end).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

#[cfg(any(test, feature = "sim"))]
use crate::rollout::bugs::{self, Bug};
use crate::rollout::traffic::TrafficSample;
use crate::rollout::{
    CommandId, CommandKind, CommandOutcome, Engine, Input, Millis, OperatorAction, Output, Release,
    RolloutEvent, Status, StatusCache,
};

pub const EVENTS: &str = "rollout-events/";
/// Key prefix of canary analysis looks: `rollout-analysis/<id>/<step>/<look>`.
pub const JUDGEMENTS: &str = "rollout-analysis/";

/// Where look `look` of traffic step `step` is stored; keys sort by step,
/// then look.
pub fn judgement_key(id: &str, step: u32, look: u32) -> String {
    format!("{JUDGEMENTS}{id}/{step:04}/{look:06}")
}
/// The engine wants a tick at least this often.
pub const TICK: Duration = Duration::from_secs(1);
/// What readers see is rebuilt at most this often while the rollout runs.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// How long after a command found its session's queue full the host's
/// in-flight commands are asked again.
pub const REASK_AFTER: Duration = Duration::from_secs(1);

pub fn event_key(id: &str, seq: usize) -> String {
    format!("{EVENTS}{id}/{seq:010}")
}

/// What an agent reports of one instance, as far as a rollout cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Running and passing its own health check (or running, without one).
    pub healthy: bool,
    pub running: bool,
    /// The agent took it out of its load balancer.
    pub drained: bool,
    /// Every load balancer the instance is registered with routes to it
    /// (UP, not drained, weight above 0); true when it is registered with
    /// none. A load balancer puts a restarted instance back only after its
    /// own checks pass, later than the agent's.
    pub lb_routes: bool,
    pub release: Option<Release>,
}

impl Observed {
    /// Counted as serving: running, not drained, and routed to.
    pub fn in_service(&self) -> bool {
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::LoadBalancerIgnored) {
            return self.running && !self.drained;
        }
        self.running && !self.drained && self.lb_routes
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView {
    /// `web@h1`.
    pub id: String,
    pub seen: Observed,
    /// Its traffic counters, when its agent reports them.
    pub traffic: Option<TrafficSample>,
}

/// A host as the registry holds it now, with its instances of the
/// rollout's service.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub host: String,
    pub connected: bool,
    pub instances: Vec<InstanceView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKind {
    /// Accepted, or a progress message.
    Progress(String),
    Result(CommandOutcome),
}

/// An agent's word on one of its commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUpdate {
    pub id: CommandId,
    pub kind: UpdateKind,
}

/// What the runtime tells the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A registry change (or, after missed changes, the registry as it is).
    Host(HostView),
    /// An update that came on `from`'s session.
    Update {
        from: String,
        update: AgentUpdate,
    },
    /// `host`'s agent opened a new session.
    Connected {
        host: String,
    },
    /// A command for `host` found its session's queue full and was not sent.
    Undelivered {
        host: String,
    },
    Operator(OperatorAction),
    /// The runtime's timer fired.
    Tick,
    /// A pre-traffic hook run ended.
    HookDone {
        attempt: u32,
        ok: bool,
        detail: String,
    },
}

/// A command to hand to a host's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: CommandId,
    /// `web@h1`.
    pub instance: String,
    pub host: String,
    pub kind: CommandKind,
    pub timeout: Duration,
}

/// What one pass asks of the runtime, in order: store `writes` (all in one
/// write, retried while the store says it may), append `events` to what
/// readers see, then send `sends`; answer `acted` operator actions with
/// the status; publish the status if `publish`.
#[derive(Debug, Default)]
pub struct Pass {
    pub writes: Vec<(String, Vec<u8>)>,
    pub events: Vec<RolloutEvent>,
    pub sends: Vec<Outgoing>,
    /// Pre-traffic hooks to run, once the write is done.
    pub hooks: Vec<super::hooks::HookRun>,
    pub acted: usize,
    pub publish: bool,
    pub finished: bool,
    /// Set when the pass could not be stored as the engine holds it (its
    /// state failed to encode): nothing of it is sent, and the rollout halts.
    pub halt: Option<String>,
    /// Agent updates ignored since the last pass (see [`Event::Update`]).
    pub ignored: usize,
    /// The latest look of the analysis in this pass, for the metrics.
    pub judgement: Option<Box<crate::rollout::traffic::StepJudgement>>,
    /// The inputs the engine was given, in order, and what it answered
    /// (simulator builds only).
    #[cfg(any(test, feature = "sim"))]
    pub fed: Vec<Input>,
    #[cfg(any(test, feature = "sim"))]
    pub outputs: Vec<Output>,
}

/// What the engine was told of an instance: healthy, in service, release.
type Told = (bool, bool, Option<Release>);

/// One running rollout's runtime decisions.
pub struct Driver {
    engine: Engine,
    service: String,
    /// Target hosts, with whether the engine was last told they are reachable.
    reachable: HashMap<String, bool>,
    /// Hosts the registry last called connected.
    connected: HashSet<String>,
    /// Per host and instance, what the engine was last told. Forgotten for
    /// an instance when one of its commands ends (the engine then assumes
    /// the step's effect until a report says otherwise) and for a host
    /// when it is lost or back, so those reports always get through.
    told: HashMap<String, HashMap<String, Told>>,
    /// The last traffic counters given to the engine, per instance.
    told_traffic: HashMap<String, TrafficSample>,
    /// The agents' latest progress message per instance with a step in flight.
    progress: BTreeMap<String, String>,
    /// After a restore: when hosts still away count as lost.
    lost_check_at: Option<Millis>,
    /// Hosts whose in-flight commands are asked again at the given time.
    reask: BTreeMap<String, Millis>,
    /// What the engine said when it started or was restored, not yet performed.
    opening: Vec<Output>,
    inputs: Vec<Input>,
    actions: Vec<OperatorAction>,
    /// Events stored so far (the next event's sequence number).
    events_stored: usize,
    unpublished: bool,
    published_at: Option<Millis>,
    status_cache: StatusCache,
    halted: Option<String>,
    ignored: usize,
}

impl Driver {
    /// `opening` are the outputs of [`Engine::start`] or [`Engine::restore`];
    /// `events` how many events the rollout has stored; `connected` the
    /// target hosts the registry calls connected now. A restored rollout
    /// gives hosts `lost_timeout` to come back before they count as lost.
    pub fn new(
        engine: Engine,
        opening: Vec<Output>,
        events: usize,
        connected: impl IntoIterator<Item = String>,
        restored: Option<Duration>,
        now: Millis,
    ) -> Driver {
        let reachable: HashMap<String, bool> = (engine.state().hosts().into_iter())
            .map(|(h, r)| (h.to_string(), r))
            .collect();
        let connected = connected
            .into_iter()
            .filter(|h| reachable.contains_key(h))
            .collect();
        Driver {
            service: engine.state().spec().service.clone(),
            engine,
            reachable,
            connected,
            told: HashMap::new(),
            told_traffic: HashMap::new(),
            progress: BTreeMap::new(),
            lost_check_at: restored.map(|t| now.plus(t)),
            reask: BTreeMap::new(),
            opening,
            inputs: Vec::new(),
            actions: Vec::new(),
            events_stored: events,
            unpublished: true,
            published_at: None,
            status_cache: StatusCache::default(),
            halted: None,
            ignored: 0,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Whether changes of `host` matter to this rollout.
    pub fn wants_host(&self, host: &str) -> bool {
        self.reachable.contains_key(host)
    }

    /// The rollout's hosts, for a resync.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.reachable.keys().map(String::as_str)
    }

    /// Nothing more to do: finished (and what the engine said on the way
    /// there performed), or halted.
    pub fn is_done(&self) -> bool {
        (self.engine.is_finished() && self.opening.is_empty()) || self.halted.is_some()
    }

    pub fn halted(&self) -> Option<&str> {
        self.halted.as_deref()
    }

    pub fn progress(&self) -> &BTreeMap<String, String> {
        &self.progress
    }

    /// The status readers see, rebuilt where it changed.
    pub fn status(&mut self) -> Status {
        self.engine.status_from(&mut self.status_cache)
    }

    /// Takes what the runtime heard. Cheap; the engine runs at [`Driver::pass`].
    pub fn push(&mut self, ev: Event) {
        match ev {
            Event::Host(view) => self.on_host(view),
            Event::Update { from, update } => self.on_update(&from, update),
            Event::Connected { host } => self.on_connected(host),
            Event::Undelivered { host } => {
                if self.wants_host(&host) && !self.reask.contains_key(&host) {
                    let at = self.engine.state().now.plus(REASK_AFTER);
                    self.reask.insert(host, at);
                }
            }
            Event::Operator(a) => self.actions.push(a),
            Event::Tick => self.inputs.push(Input::Tick),
            Event::HookDone {
                attempt,
                ok,
                detail,
            } => self.inputs.push(Input::HookDone {
                attempt,
                ok,
                detail,
            }),
        }
    }

    /// Inputs and actions waiting for the next pass.
    pub fn queued(&self) -> usize {
        self.inputs.len() + self.actions.len()
    }

    fn on_host(&mut self, view: HostView) {
        let Some(&was) = self.reachable.get(&view.host) else {
            return;
        };
        let host = view.host;
        if view.connected {
            self.connected.insert(host.clone());
        } else {
            self.connected.remove(&host);
        }
        if was && !view.connected {
            self.reachable.insert(host.clone(), false);
            self.told.remove(&host);
            self.inputs.push(Input::HostLost { host });
            return;
        }
        if !view.connected {
            return;
        }
        if !was {
            self.reachable.insert(host.clone(), true);
            self.told.remove(&host);
            self.inputs.push(Input::HostBack { host: host.clone() });
        }
        let counts_traffic = self.engine.state().spec().strategy.shifts_traffic();
        let told = self.told.entry(host).or_default();
        for inst in view.instances {
            if counts_traffic && let Some(sample) = inst.traffic {
                // Counters only: they change with every request, so they
                // go to the engine as they are, never as a health change.
                if self.told_traffic.get(&inst.id) != Some(&sample) {
                    self.told_traffic.insert(inst.id.clone(), sample.clone());
                    self.inputs.push(Input::Traffic {
                        instance: inst.id.clone(),
                        sample,
                    });
                }
            }
            let seen = (inst.seen.healthy, inst.seen.in_service(), inst.seen.release);
            if told.get(&inst.id) == Some(&seen) {
                continue;
            }
            told.insert(inst.id.clone(), seen.clone());
            let (healthy, in_service, release) = seen;
            self.inputs.push(Input::Health {
                instance: inst.id,
                healthy,
                in_service,
                release,
            });
        }
    }

    fn on_connected(&mut self, host: String) {
        if !self.wants_host(&host) {
            return;
        }
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::ReaskDroppedOnReconnect) {
            return;
        }
        self.connected.insert(host.clone());
        self.reachable.insert(host.clone(), true);
        self.told.remove(&host);
        self.reask.remove(&host);
        self.inputs.push(Input::HostBack { host });
    }

    fn on_update(&mut self, from: &str, update: AgentUpdate) {
        let AgentUpdate { id, kind } = update;
        let owner = self.engine.instance(&id.instance);
        #[allow(unused_mut)]
        let mut owned = id.rollout == self.engine.id() && owner.is_some_and(|(h, _)| h == from);
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::ResultFromAnyHost) && matches!(kind, UpdateKind::Result(_)) {
            owned = owner.is_some();
        }
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::ProgressOutsideRollout) && matches!(kind, UpdateKind::Progress(_)) {
            owned = true;
        }
        if !owned {
            self.ignored += 1;
            tracing::warn!(host = %from, command = %id, "ignoring an update for an instance this host does not run in this rollout");
            return;
        }
        match kind {
            UpdateKind::Progress(text) => {
                #[allow(unused_mut)]
                let mut in_flight = owner.is_some_and(|(_, f)| f);
                #[cfg(any(test, feature = "sim"))]
                if bugs::on(Bug::ProgressOutsideRollout) {
                    in_flight = true;
                }
                // A late progress message after the step's result would
                // otherwise stay on show until the next step.
                if in_flight {
                    self.progress.insert(id.instance, text);
                    self.unpublished = true;
                }
            }
            UpdateKind::Result(outcome) => {
                self.progress.remove(&id.instance);
                if let Some(told) = self.told.get_mut(from) {
                    told.remove(&id.instance);
                }
                self.inputs.push(Input::CommandResult { id, outcome });
            }
        }
    }

    /// The earliest time at which a pass could decide something without
    /// news: an engine deadline, the lost check after a restore, a re-ask.
    pub fn next_deadline(&self) -> Option<Millis> {
        (self.engine.next_deadline().into_iter())
            .chain(self.lost_check_at)
            .chain(self.reask.values().copied())
            .min()
    }

    /// When the runtime should call [`Driver::pass`] next, at the latest:
    /// the next deadline, a tick, or the next publish of pending changes.
    pub fn next_wake(&self, now: Millis) -> Millis {
        let mut wake = now.plus(TICK);
        if let Some(d) = self.next_deadline() {
            wake = wake.min(d);
        }
        if self.unpublished {
            let publish = self.published_at.map_or(now, |p| p.plus(PUBLISH_EVERY));
            wake = wake.min(publish);
        }
        wake.max(now)
    }

    /// Runs the engine on everything taken since the last pass, and says
    /// what to store, send and show.
    pub fn pass(&mut self, now: Millis) -> Pass {
        let mut pass = Pass {
            ignored: std::mem::take(&mut self.ignored),
            ..Pass::default()
        };
        if self.halted.is_some() {
            return pass;
        }
        if self.lost_check_at.is_some_and(|at| now >= at) {
            self.lost_check_at = None;
            self.mark_absent_hosts_lost();
        }
        let due: Vec<String> = (self.reask.iter())
            .filter(|&(_, &at)| now >= at)
            .map(|(h, _)| h.clone())
            .collect();
        for host in due {
            self.reask.remove(&host);
            if self.reachable.get(&host) == Some(&true) {
                self.told.remove(&host);
                self.inputs.push(Input::HostBack { host });
            }
        }
        let mut outputs = std::mem::take(&mut self.opening);
        let mut inputs = std::mem::take(&mut self.inputs);
        // Operator actions go last in the same call, after what the fleet
        // said, so they act on the freshest picture.
        pass.acted = self.actions.len();
        inputs.extend(self.actions.drain(..).map(Input::Operator));
        // A deadline that passed is the engine's to act on now, whatever
        // else came: a steady stream of reports that say nothing new (and
        // so feed it nothing) must not keep a timeout from firing.
        let due = self.engine.next_deadline().is_some_and(|d| d <= now);
        if due && inputs.is_empty() {
            inputs.push(Input::Tick);
        }
        #[cfg(any(test, feature = "sim"))]
        {
            pass.fed = inputs.clone();
        }
        if !inputs.is_empty() {
            let more = self.engine.handle_all(now, inputs);
            // One write covers both calls: one Persist, first.
            let persist = more.iter().any(|o| matches!(o, Output::Persist));
            if persist && !outputs.iter().any(|o| matches!(o, Output::Persist)) {
                outputs.insert(0, Output::Persist);
            }
            outputs.extend(more.into_iter().filter(|o| !matches!(o, Output::Persist)));
        }
        if !outputs.is_empty() {
            self.unpublished = true;
        }
        #[cfg(any(test, feature = "sim"))]
        {
            pass.outputs = outputs.clone();
        }
        self.prune_progress();
        if let Err(why) = self.take_outputs(outputs, &mut pass) {
            tracing::error!(rollout = %self.engine.id(), error = %why, "rollout state cannot be stored; halting it");
            self.halted = Some(why.clone());
            pass.halt = Some(why);
            pass.writes.clear();
            pass.events.clear();
            pass.sends.clear();
            pass.hooks.clear();
            pass.judgement = None;
            pass.publish = true;
            return pass;
        }
        pass.finished = self.engine.is_finished();
        let throttled = self
            .published_at
            .is_some_and(|p| now < p.plus(PUBLISH_EVERY));
        if self.unpublished && (pass.finished || pass.acted > 0 || !throttled) {
            self.unpublished = false;
            self.published_at = Some(now);
            pass.publish = true;
        }
        pass
    }

    /// Stops the rollout where it is because its state could not be stored
    /// (`why`); nothing more is sent. A restart resumes it from the store.
    pub fn halt(&mut self, why: String) {
        self.halted = Some(why);
    }

    fn take_outputs(&mut self, outputs: Vec<Output>, pass: &mut Pass) -> Result<(), String> {
        let mut persist = false;
        let mut judgements = Vec::new();
        for o in outputs {
            match o {
                Output::Persist => persist = true,
                Output::Send {
                    id,
                    instance,
                    host,
                    kind,
                    timeout,
                } => pass.sends.push(Outgoing {
                    id,
                    instance,
                    host,
                    kind,
                    timeout,
                }),
                Output::Event(e) => pass.events.push(e),
                Output::Judgement(j) => {
                    let bytes =
                        serde_json::to_vec(&j).map_err(|e| format!("encoding a judgement: {e}"))?;
                    let key = judgement_key(self.engine.id(), j.step, j.look);
                    judgements.push((key, bytes));
                    pass.judgement = Some(j);
                }
                Output::RunHook {
                    name,
                    attempt,
                    color,
                    instances,
                    release,
                } => pass.hooks.push(super::hooks::HookRun {
                    name,
                    attempt,
                    color,
                    instances,
                    release,
                }),
                Output::WaitReason(_) | Output::Finished(_) => {}
            }
        }
        if persist {
            // The head and the instances changed since the last write.
            let writes = self
                .engine
                .persist_writes()
                .map_err(|e| format!("encoding the rollout's state: {e}"))?;
            pass.writes.extend(writes);
        }
        // A pass's events go in one record (under the sequence number of
        // its first): one store operation, however many instances moved,
        // so a pass fits in one etcd transaction.
        if !pass.events.is_empty() {
            let id = self.engine.id().to_string();
            let bytes = serde_json::to_vec(&pass.events)
                .map_err(|e| format!("encoding the events: {e}"))?;
            pass.writes
                .push((event_key(&id, self.events_stored), bytes));
            self.events_stored += pass.events.len();
        }
        pass.writes.extend(judgements);
        Ok(())
    }

    /// Progress of steps that ended without a result (timed out, or the
    /// rollout moved on) is not shown any longer.
    fn prune_progress(&mut self) {
        #[cfg(any(test, feature = "sim"))]
        if bugs::on(Bug::ProgressOutsideRollout) {
            return;
        }
        let engine = &self.engine;
        let before = self.progress.len();
        (self.progress).retain(|i, _| engine.instance(i).is_some_and(|(_, in_flight)| in_flight));
        if self.progress.len() != before {
            self.unpublished = true;
        }
    }

    /// After a restore: hosts that did not come back within the lost
    /// timeout are lost.
    fn mark_absent_hosts_lost(&mut self) {
        let mut hosts: Vec<&String> = self.reachable.keys().collect();
        hosts.sort();
        let mut lost = Vec::new();
        for h in hosts {
            if self.reachable.get(h) == Some(&false) || self.connected.contains(h) {
                continue;
            }
            lost.push(h.clone());
        }
        for h in lost {
            self.reachable.insert(h.clone(), false);
            self.told.remove(&h);
            self.inputs.push(Input::HostLost { host: h });
        }
    }

    /// Instances a progress message is kept for (simulator checks).
    #[cfg(any(test, feature = "sim"))]
    pub fn progress_instances(&self) -> std::collections::BTreeSet<&str> {
        self.progress.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests;
