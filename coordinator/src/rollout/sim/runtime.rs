//! The simulated coordinator and the event loop.
//!
//! The coordinator here is the real runtime's [`Driver`] (every decision
//! `runner/` makes) around the real engine, fed by a simulated registry
//! (what agents reported, which sessions are up) and a simulated timer.
//! Only the I/O is simulated, as `runner/task.rs` does it: take what is
//! queued into one pass, write what the pass asks to store, and only then
//! send its commands. A crash can strike before the write, between two
//! sends, or between passes; the engine is then rebuilt with
//! [`Engine::restore`] from what the store holds, the agents reconnect, and
//! the driver calls lost the hosts that did not.

use std::collections::{BTreeMap, BTreeSet};

use super::Failure;
use super::check::{Checker, Violation};
use super::rng::Rng;
use super::scenario::Scenario;
use super::store::{SimStore, StoreKind};
use super::trace::Trace;
use super::world::{Agent, Inst};
use crate::rollout::traffic::TrafficSample;
use crate::rollout::{
    CommandId, CommandKind, CommandOutcome, Engine, Input, Millis, Outcome, Output, StopReason,
};
use crate::runner::driver::{
    AgentUpdate, Driver, Event, HostView, InstanceView, Observed, Outgoing, Pass, UpdateKind,
};

pub const ROLLOUT: &str = "r1";
/// How far past the progress deadline the idle check allows.
const SLACK_MS: u64 = 1_000;

/// What reaches the coordinator.
#[derive(Debug, Clone)]
pub enum Msg {
    /// A new session: the agent's Hello, with every instance as it is.
    Hello {
        seen: Vec<(usize, Observed)>,
    },
    /// A health report for one instance.
    Report {
        k: usize,
        seen: Observed,
    },
    Result {
        id: CommandId,
        outcome: CommandOutcome,
    },
    Progress {
        id: CommandId,
        text: String,
    },
    /// The registry's lost timer for a dropped session fired.
    Lost {
        host: usize,
    },
    /// An agent's load balancer counters for its instances (canary seeds).
    Traffic {
        samples: Vec<(usize, TrafficSample)>,
    },
}

#[derive(Debug, Clone)]
pub enum Ev {
    /// A message reaches the coordinator: from an agent's session, or from
    /// the coordinator's own registry or operator API (`from` = None).
    ToCoord {
        life: u32,
        from: Option<(usize, u32)>,
        msg: Msg,
    },
    ToAgent {
        host: usize,
        session: u32,
        id: CommandId,
        k: usize,
        kind: CommandKind,
        timeout: u64,
    },
    Process {
        life: u32,
    },
    JobEnd {
        k: usize,
        token: u64,
    },
    VerifyPoll {
        k: usize,
        token: u64,
    },
    /// Crash (left > 0, toggling) or recover (left = 0) an instance.
    Flip {
        k: usize,
        left: u32,
    },
    Connect {
        host: usize,
    },
    NetUp {
        host: usize,
    },
    AgentUp {
        host: usize,
    },
    /// The registry's lost timer for a dropped session.
    LostCheck {
        host: usize,
        life: u32,
        sessions: u32,
    },
    /// An agent's periodic full health report.
    Report {
        host: usize,
    },
    /// The load balancer's checks of `k` may have passed by now.
    LbUp {
        k: usize,
    },
    /// A host sends a word about an instance it does not run, or outside
    /// the rollout (see `Sim::rogue`).
    Rogue,
    Chaos,
    CoordUp,
    /// A period of requests through the load balancer (canary seeds).
    Traffic,
    /// The operator looks at a canary (canary seeds).
    Watch,
    /// A run of the pre-traffic hook ends (blue-green seeds); for the
    /// coordinator of that life only.
    Hook {
        life: u32,
        attempt: u32,
        ok: bool,
    },
}

/// A host as the coordinator's registry holds it.
#[derive(Debug, Clone, Default)]
pub struct RegHost {
    pub connected: bool,
    pub seen: BTreeMap<usize, Observed>,
    /// The latest counters its agent reported, per instance.
    pub traffic: BTreeMap<usize, TrafficSample>,
}

pub struct Coord {
    pub driver: Driver,
    processing: bool,
    next_tick: u64,
    registry: Vec<RegHost>,
    /// Hosts whose new session reached the driver since the last pass: the
    /// pass must tell the engine they are back (so it asks again).
    reconnected: BTreeSet<String>,
}

/// How a seed's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `refused`, `succeeded`, `failed`, `rolled back` or `aborted`.
    pub end: &'static str,
    /// The outcome as the engine put it.
    pub detail: String,
    pub sim_ms: u64,
    pub crashes: u32,
    pub writes: u64,
    pub commands: u64,
    /// Canary seeds: how the canary ended, in a few words.
    pub canary: Option<&'static str>,
}

pub struct Sim {
    pub(super) sc: Scenario,
    pub(super) now: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    pub(super) net_rng: Rng,
    pub(super) agent_rng: Rng,
    pub(super) chaos_rng: Rng,
    crash_rng: Rng,
    tick_rng: Rng,
    pub(super) rogue_rng: Rng,
    /// Canary seeds' own streams: the requests, and the operator's promotes.
    pub(super) traffic_rng: Rng,
    pub(super) op_rng: Rng,
    /// Blue-green seeds: how the hook's runs end.
    hook_rng: Rng,
    /// Rogue words left to send (0 in most seeds).
    pub(super) rogues: u32,
    /// How much later than the agent's own check the load balancer's
    /// checks see a restarted instance; 0 in most seeds (no load balancer).
    pub(super) lb_lag: u64,
    pub(super) agents: Vec<Agent>,
    pub(super) insts: Vec<Inst>,
    host_index: BTreeMap<String, usize>,
    inst_index: BTreeMap<String, usize>,
    /// Coordinator incarnation; messages to a dead one are lost.
    pub(super) life: u32,
    pub(super) coord: Option<Coord>,
    store: SimStore,
    check: Checker,
    pub(super) trace: Trace,
    pub(super) tokens: u64,
    pub(super) crashes: u32,
    pub(super) chaos_count: u32,
    pub(super) operator_count: u32,
    pub(super) last_operator: Option<crate::rollout::OperatorAction>,
    commands: u64,
    outcome: Option<Outcome>,
    /// A promise the simulated world saw broken (a step run twice).
    pub(super) broken: Option<Violation>,
    /// The canary's step and stage as the trace last showed them.
    last_stage: String,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Sim {
    pub fn new(sc: Scenario, store: StoreKind, trace: bool) -> Result<Sim, String> {
        let mut rng = Rng::new(sc.seed ^ 0xD1B5_4A32_D192_ED03);
        let mut agents: Vec<Agent> = Vec::new();
        let mut insts = Vec::new();
        let mut host_index = BTreeMap::new();
        for (k, m) in sc.fleet.iter().enumerate() {
            let host = *host_index.entry(m.info.host.clone()).or_insert_with(|| {
                agents.push(Agent {
                    name: m.info.host.clone(),
                    insts: Vec::new(),
                    up: true,
                    net: m.info.reachable,
                    gone: false,
                    session: m.info.reachable.then_some(1),
                    sessions: 1,
                    journal: BTreeMap::new(),
                    outbox: Vec::new(),
                    finished_runs: BTreeMap::new(),
                    fifo_up: 0,
                    fifo_down: 0,
                    lose_in_flight: false,
                });
                agents.len() - 1
            });
            agents[host].insts.push(k);
            insts.push(Inst {
                id: m.info.id.clone(),
                host,
                release: m.info.release.clone(),
                running: true,
                crashed: !m.info.healthy,
                drained: !m.info.in_service,
                bad: m.bad,
                healthy_since: m.info.healthy.then_some(0),
                lb_up_at: m.info.healthy.then_some(0),
                reported: None,
                job: None,
                weight: None,
                requests: 0,
                errors: 0,
                sent: None,
            });
        }
        // Hosts unreachable at the start come back at some point.
        let mut unreachable = Vec::new();
        for (h, a) in agents.iter().enumerate() {
            if !a.net {
                unreachable.push(h);
            }
        }
        let inst_index = (insts.iter().enumerate())
            .map(|(k, i)| (i.id.clone(), k))
            .collect();
        let check = Checker::new(&sc, ROLLOUT, 0);
        // Drawn apart from the scenario, so seeds keep their fleets and specs.
        let mut extra = Rng::new(sc.seed ^ 0x6A09_E667_F3BC_C908);
        let lb_lag = if extra.chance(300) {
            extra.range(500, 8_000)
        } else {
            0
        };
        let rogues = if !sc.profile.calm && extra.chance(250) {
            extra.range_u32(1, 6)
        } else {
            0
        };
        let rogue_rng = extra.fork();
        let mut canary = Rng::new(sc.seed ^ 0x3C6E_F372_FE94_F82B);
        let traffic_rng = canary.fork();
        let op_rng = canary.fork();
        let hook_rng = canary.fork();
        let store = SimStore::open(store).map_err(|e| e.to_string())?;
        let mut sim = Sim {
            net_rng: rng.fork(),
            agent_rng: rng.fork(),
            chaos_rng: rng.fork(),
            crash_rng: rng.fork(),
            tick_rng: rng.fork(),
            rogue_rng,
            traffic_rng,
            op_rng,
            hook_rng,
            rogues,
            lb_lag,
            sc,
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            agents,
            insts,
            host_index,
            inst_index,
            life: 1,
            coord: None,
            store,
            check,
            trace: Trace::new(trace),
            tokens: 0,
            crashes: 0,
            chaos_count: 0,
            operator_count: 0,
            last_operator: None,
            commands: 0,
            outcome: None,
            broken: None,
            last_stage: String::new(),
        };
        // Instances unhealthy at the start mostly recover at some point;
        // not in a calm world, where nothing changes but by drover's hand.
        for k in 0..sim.insts.len() {
            if sim.insts[k].crashed && !sim.sc.profile.calm && !sim.chaos_rng.chance(200) {
                let at = sim.chaos_rng.range(1_000, 120_000);
                sim.push(at, Ev::Flip { k, left: 0 });
            }
        }
        for h in unreachable {
            let at = sim.chaos_rng.range(1_000, 300_000);
            sim.push(at, Ev::NetUp { host: h });
        }
        let every = sim.sc.profile.report_ms;
        if every > 0 {
            for host in 0..sim.agents.len() {
                let at = sim.net_rng.range(0, every);
                sim.push(at, Ev::Report { host });
            }
        }
        if sim.sc.profile.chaos_ms > 0 {
            let at = sim.chaos_rng.range(0, sim.sc.profile.chaos_ms);
            sim.push(at, Ev::Chaos);
        }
        if sim.rogues > 0 {
            let at = sim.rogue_rng.range(1_000, 60_000);
            sim.push(at, Ev::Rogue);
        }
        if let Some(c) = sim.sc.canary.clone() {
            let at = sim.traffic_rng.range(0, c.period_ms);
            sim.push(at, Ev::Traffic);
            if c.watch_ms > 0 {
                let at = sim.op_rng.range(c.watch_ms / 2, c.watch_ms * 3 / 2);
                sim.push(at, Ev::Watch);
            }
        }
        for k in 0..sim.insts.len() {
            let seen = sim.observe(k);
            sim.insts[k].reported = Some(seen);
        }
        Ok(sim)
    }

    pub(super) fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at.max(self.now), self.seq), ev);
    }

    fn fail(&self, v: Violation) -> Failure {
        Failure {
            seed: self.sc.seed,
            at_ms: self.now,
            violation: v,
            trace: String::new(),
        }
    }

    /// Runs the seed to the end of the rollout or the first broken promise.
    pub fn run(&mut self) -> Result<Summary, Failure> {
        self.run_inner().map_err(|v| {
            let f = self.fail(v);
            sim_trace!(self, "VIOLATION {}", f.violation);
            f
        })
    }

    fn run_inner(&mut self) -> Result<Summary, Violation> {
        let describe = self.sc.describe();
        sim_trace!(self, "seed {}\n{}", self.sc.seed, describe.trim_end());
        if self.lb_lag > 0 {
            sim_trace!(self, "load balancer checks lag by {}ms", self.lb_lag);
        }
        let started = Engine::start(ROLLOUT, self.sc.spec.clone(), self.sc.infos(), Millis(0));
        let (engine, outs) = match started {
            Ok(x) => x,
            Err(e) => {
                sim_trace!(self, "refused: {e}");
                return Ok(self.summary("refused"));
            }
        };
        sim_trace!(
            self,
            "floor {} (capacity {})",
            self.check.floor(),
            self.check.capacity()
        );
        // The registry as the engine read it: reachable hosts connected,
        // with what their agents last reported.
        let mut registry = vec![RegHost::default(); self.agents.len()];
        for (h, a) in self.agents.iter().enumerate() {
            registry[h].connected = a.session.is_some();
            for &k in &a.insts {
                if let Some(seen) = &self.insts[k].reported {
                    registry[h].seen.insert(k, seen.clone());
                }
            }
        }
        let connected = (self.agents.iter())
            .filter(|a| a.session.is_some())
            .map(|a| a.name.clone());
        let driver = Driver::new(engine, outs, 0, connected, None, Millis(0));
        self.coord = Some(Coord {
            driver,
            processing: false,
            next_tick: 0,
            registry,
            reconnected: BTreeSet::new(),
        });
        // The opening write is made before the rollout counts as started.
        self.pass(false)?;
        // Bounds on the whole run: every instance takes at most two chains of
        // six steps, and each step is answered or timed out.
        let n = u64::try_from(self.insts.len()).unwrap_or(u64::MAX);
        let max_activities = 40 * n + 1_000;
        // And on the world's own work, so a loop that makes no progress
        // (nothing the checker counts) still ends, as a violation.
        let max_events = 5_000 * n + 100_000;
        let mut events = 0u64;
        while self.outcome.is_none() {
            events += 1;
            if events > max_events || self.queue.len() as u64 > max_events {
                return Err(Violation {
                    invariant: 4,
                    what: format!(
                        "{events} events ({} queued) and still no end: a loop that makes no progress",
                        self.queue.len()
                    ),
                });
            }
            let tick = self.coord.as_ref().map(|c| c.next_tick);
            let head = self.queue.keys().next().copied();
            let ev = match (head, tick) {
                (Some((at, _)), Some(t)) if t < at => None,
                (Some(key), _) => self.queue.remove(&key).map(|ev| (key.0, ev)),
                (None, Some(_)) => None,
                (None, None) => {
                    return Err(Violation {
                        invariant: 4,
                        what: "the world stopped with the rollout unfinished".to_string(),
                    });
                }
            };
            match ev {
                Some((at, ev)) => {
                    self.now = self.now.max(at);
                    self.event(ev)?;
                }
                None => {
                    self.now = self.now.max(tick.unwrap_or(self.now));
                    self.queue(Event::Tick);
                    self.process()?;
                }
            }
            if let Some(v) = self.broken.take() {
                return Err(v);
            }
            if self.sc.profile.calm {
                self.real_capacity()?;
            }
            if self.coord.is_some() && self.outcome.is_none() {
                self.check.idle(self.now, SLACK_MS).map_err(|mut v| {
                    if let Some(c) = &self.coord {
                        v.what = format!(
                            "{} (the runtime's next tick at {}ms, the engine's next deadline {:?})",
                            v.what,
                            c.next_tick,
                            c.driver.next_deadline()
                        );
                    }
                    v
                })?;
            }
            if self.check.activities > max_activities {
                return Err(Violation {
                    invariant: 4,
                    what: format!("{} steps and still no end", self.check.activities),
                });
            }
        }
        let end = match &self.outcome {
            Some(Outcome::Succeeded) => "succeeded",
            Some(Outcome::Failed { .. }) => "failed",
            Some(Outcome::RolledBack { .. }) => "rolled back",
            Some(Outcome::Aborted { .. }) => "aborted",
            None => "running",
        };
        Ok(self.summary(end))
    }

    /// Without faults, the fleet's real capacity (instances healthy, not
    /// drained and routed to by their load balancer, counted from the
    /// agents, not from what the engine was told) never drops under the
    /// floor.
    fn real_capacity(&self) -> Result<(), Violation> {
        let target = &self.sc.spec.target;
        let serving = (0..self.insts.len())
            .filter(|&k| {
                let i = &self.insts[k];
                i.healthy(target) && !i.drained && self.lb_routes(k)
            })
            .count();
        let serving = u32::try_from(serving).unwrap_or(u32::MAX);
        if serving < self.check.floor() {
            return Err(Violation {
                invariant: 1,
                what: format!(
                    "in a world without faults, {serving} instances serve, floor {}",
                    self.check.floor()
                ),
            });
        }
        Ok(())
    }

    fn summary(&self, end: &'static str) -> Summary {
        Summary {
            end,
            detail: self
                .outcome
                .as_ref()
                .map_or_else(String::new, ToString::to_string),
            sim_ms: self.now,
            crashes: self.crashes,
            writes: self.store.writes,
            commands: self.commands,
            canary: self
                .sc
                .canary
                .as_ref()
                .map(|_| canary_end(end, self.outcome.as_ref())),
        }
    }

    /// The registry's view of host `h`, as the runtime hands it to the driver.
    fn host_view(&self, h: usize) -> Option<HostView> {
        let c = self.coord.as_ref()?;
        let reg = &c.registry[h];
        Some(HostView {
            host: self.agents[h].name.clone(),
            connected: reg.connected,
            instances: (reg.seen.iter())
                .map(|(&k, seen)| InstanceView {
                    id: self.insts[k].id.clone(),
                    seen: seen.clone(),
                    traffic: reg.traffic.get(&k).cloned(),
                })
                .collect(),
        })
    }

    /// What the coordinator does with a message that reached it: the
    /// registry's part, then the driver's.
    fn deliver(&mut self, from: Option<usize>, msg: Msg) {
        let Some(c) = self.coord.as_mut() else {
            return;
        };
        match msg {
            Msg::Hello { seen } => {
                let Some(h) = from else { return };
                c.registry[h].connected = true;
                c.registry[h].seen = seen.into_iter().collect();
                let name = self.agents[h].name.clone();
                c.reconnected.insert(name.clone());
                if let Some(view) = self.host_view(h) {
                    self.queue(Event::Host(view));
                }
                self.queue(Event::Connected { host: name });
            }
            Msg::Report { k, seen } => {
                let h = self.insts[k].host;
                c.registry[h].seen.insert(k, seen);
                if c.registry[h].connected
                    && let Some(view) = self.host_view(h)
                {
                    self.queue(Event::Host(view));
                }
            }
            Msg::Traffic { samples } => {
                let Some(h) = from else { return };
                c.registry[h].traffic.extend(samples);
                if c.registry[h].connected
                    && let Some(view) = self.host_view(h)
                {
                    self.queue(Event::Host(view));
                }
            }
            Msg::Lost { host } => {
                c.registry[host].connected = false;
                if let Some(view) = self.host_view(host) {
                    self.queue(Event::Host(view));
                }
            }
            Msg::Result { id, outcome } => {
                let Some(h) = from else { return };
                let from = self.agents[h].name.clone();
                let kind = UpdateKind::Result(outcome);
                self.queue(Event::Update {
                    from,
                    update: AgentUpdate { id, kind },
                });
            }
            Msg::Progress { id, text } => {
                let Some(h) = from else { return };
                let from = self.agents[h].name.clone();
                let kind = UpdateKind::Progress(text);
                self.queue(Event::Update {
                    from,
                    update: AgentUpdate { id, kind },
                });
            }
        }
    }

    fn event(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::ToCoord { life, from, msg } => {
                let live = self.coord.is_some()
                    && life == self.life
                    && from.is_none_or(|(h, s)| self.agents[h].session == Some(s));
                if !live {
                    if let Some((h, _)) = from {
                        self.undelivered(h, msg);
                    }
                    return Ok(());
                }
                if self.trace.on {
                    sim_trace!(self, "<- {}", show_msg(self, from.map(|f| f.0), &msg));
                }
                self.deliver(from.map(|f| f.0), msg);
                let batch = self.sc.profile.batch_ms;
                if batch == 0 {
                    self.process()?;
                } else if let Some(c) = self.coord.as_mut()
                    && !c.processing
                {
                    c.processing = true;
                    let at = self.now + self.net_rng.range(0, batch);
                    let life = self.life;
                    self.push(at, Ev::Process { life });
                }
            }
            Ev::Process { life } => {
                if life == self.life && self.coord.is_some() {
                    self.process()?;
                }
            }
            Ev::ToAgent {
                host,
                session,
                id,
                k,
                kind,
                timeout,
            } => self.submit(host, session, id, k, kind, timeout),
            Ev::JobEnd { k, token } => self.job_end(k, token),
            Ev::VerifyPoll { k, token } => self.verify_poll(k, token),
            Ev::Flip { k, left } => {
                if left == 0 {
                    self.set_crashed(k, false);
                } else {
                    let crashed = !self.insts[k].crashed;
                    self.set_crashed(k, crashed);
                    let at = self.now + self.chaos_rng.range(200, 3_000);
                    self.push(at, Ev::Flip { k, left: left - 1 });
                }
            }
            Ev::Connect { host } => self.connect(host),
            Ev::NetUp { host } => self.net_up(host),
            Ev::AgentUp { host } => self.agent_up(host),
            Ev::LostCheck {
                host,
                life,
                sessions,
            } => {
                let a = &self.agents[host];
                if life == self.life && a.session.is_none() && a.sessions == sessions {
                    let name = a.name.clone();
                    sim_trace!(self, "registry: {name} lost");
                    self.deliver(None, Msg::Lost { host });
                    self.process()?;
                }
            }
            Ev::Report { host } => {
                if self.agents[host].session.is_some() {
                    for k in self.agents[host].insts.clone() {
                        self.insts[k].reported = None;
                        self.report(k);
                    }
                }
                let at = self.now + self.sc.profile.report_ms;
                self.push(at, Ev::Report { host });
            }
            Ev::LbUp { k } => self.report(k),
            Ev::Rogue => self.rogue(),
            Ev::Chaos => {
                self.chaos();
                // An operator action is handled at once, as the runtime does.
                if self.coord.as_ref().is_some_and(|c| c.driver.queued() > 0) {
                    self.process()?;
                }
            }
            Ev::CoordUp => self.coord_up()?,
            Ev::Traffic => self.serve_traffic(),
            Ev::Watch => {
                self.watch();
                if self.coord.as_ref().is_some_and(|c| c.driver.queued() > 0) {
                    self.process()?;
                }
            }
            Ev::Hook { life, attempt, ok } => {
                if life == self.life && self.coord.is_some() {
                    let detail = if ok { "exit 0" } else { "exit 3" }.to_string();
                    sim_trace!(self, "hook run {attempt} ends: {detail}");
                    self.queue(Event::HookDone {
                        attempt,
                        ok,
                        detail,
                    });
                    self.process()?;
                }
            }
        }
        Ok(())
    }

    /// Hands an event to the coordinator's driver for its next pass.
    pub(super) fn queue(&mut self, ev: Event) {
        if let Some(c) = self.coord.as_mut() {
            c.driver.push(ev);
        }
    }

    /// One pass of the runtime: the driver decides, the checker judges what
    /// it fed the engine and what came out, then the runtime performs it.
    fn process(&mut self) -> Result<(), Violation> {
        self.pass(true)
    }

    fn pass(&mut self, may_crash: bool) -> Result<(), Violation> {
        let Some(c) = self.coord.as_mut() else {
            return Ok(());
        };
        c.processing = false;
        if c.driver.is_done() {
            return Ok(());
        }
        let pass = c.driver.pass(Millis(self.now));
        let reconnected = std::mem::take(&mut c.reconnected);
        self.judge(&pass, reconnected)?;
        self.perform(pass, may_crash)
    }

    /// The checker judges a pass: what the driver fed the engine and what
    /// came out.
    fn judge(&mut self, pass: &Pass, reconnected: BTreeSet<String>) -> Result<(), Violation> {
        for input in &pass.fed {
            if self.trace.on && !matches!(input, Input::Tick) {
                sim_trace!(self, "-> {}", show_input(input));
            }
            if let Input::CommandResult {
                id,
                outcome: CommandOutcome::Failed(why),
            } = input
                && why.starts_with(ROGUE)
            {
                return Err(Violation {
                    invariant: 2,
                    what: format!(
                        "a result for {id} from a host that does not run {} reached the engine",
                        id.instance
                    ),
                });
            }
            let input = self.as_reported(input);
            self.check.input(self.now, &input);
        }
        for host in reconnected {
            let told =
                (pass.fed.iter()).any(|i| matches!(i, Input::HostBack { host: h } if *h == host));
            if !told {
                return Err(Violation {
                    invariant: 4,
                    what: format!(
                        "{host} opened a new session but the engine was not told it is back, so what was in flight on the old one is never asked again"
                    ),
                });
            }
        }
        if self.trace.on {
            for o in &pass.outputs {
                if let Some(line) = show_output(o) {
                    sim_trace!(self, "   {line}");
                }
            }
        }
        self.check.outputs(self.now, &pass.outputs)?;
        if self.trace.on
            && let Some(c) = &self.coord
            && let Some(t) = &c.driver.engine().state().traffic
        {
            let stage = format!("traffic step {} {:?}", t.step + 1, t.stage);
            if stage != self.last_stage {
                sim_trace!(self, "   ({stage})");
                self.last_stage = stage;
            }
        }
        self.progress_bounded()
    }

    /// The checker judges capacity by what the coordinator heard, with the
    /// issue's definition (healthy, in service and routed to by every load
    /// balancer), not by what the driver made of it: a report the driver
    /// reads wrong is caught where the engine acts on it.
    fn as_reported(&self, input: &Input) -> Input {
        let Input::Health { instance, .. } = input else {
            return input.clone();
        };
        let seen = (self.inst_index.get(instance)).and_then(|&k| {
            let c = self.coord.as_ref()?;
            c.registry[self.insts[k].host].seen.get(&k)
        });
        match seen {
            Some(seen) => Input::Health {
                instance: instance.clone(),
                healthy: seen.healthy,
                in_service: seen.running && !seen.drained && seen.lb_routes,
                release: seen.release.clone(),
            },
            None => input.clone(),
        }
    }

    /// Progress is kept only for instances of the rollout with a step in
    /// flight: a peer cannot grow what readers are shown.
    fn progress_bounded(&self) -> Result<(), Violation> {
        let Some(c) = self.coord.as_ref() else {
            return Ok(());
        };
        for instance in c.driver.progress_instances() {
            let in_flight = c.driver.engine().instance(instance).is_some_and(|(_, f)| f);
            if !in_flight {
                return Err(Violation {
                    invariant: 7,
                    what: format!(
                        "progress is kept for {instance}, which has no step in flight in this rollout"
                    ),
                });
            }
        }
        Ok(())
    }

    fn roll_crash(&mut self, per_mille: u32) -> bool {
        self.crashes < self.sc.profile.max_crashes && self.crash_rng.chance(per_mille)
    }

    /// What the runtime does with a pass: write, then send.
    fn perform(&mut self, pass: Pass, may_crash: bool) -> Result<(), Violation> {
        if let Some(why) = pass.halt {
            return Err(Violation {
                invariant: 6,
                what: format!("the runtime halted the rollout: {why}"),
            });
        }
        let persist = pass.outputs.iter().any(|o| matches!(o, Output::Persist));
        if persist && may_crash && self.roll_crash(self.sc.profile.crash_before_write) {
            self.crash("before its store write");
            return Ok(());
        }
        if !pass.writes.is_empty() {
            if let Some(c) = self.coord.as_ref() {
                let state = persist.then(|| c.driver.engine().state().clone());
                self.store
                    .write(pass.writes, state)
                    .map_err(|e| Violation {
                        invariant: 0,
                        what: format!("store write failed: {e}"),
                    })?;
            }
            if persist {
                self.check.written();
            }
        }
        for send in pass.sends {
            if may_crash && self.roll_crash(self.sc.profile.crash_between_sends) {
                self.crash("between two sends");
                return Ok(());
            }
            self.check.sending(&send.id.to_string())?;
            self.send(send);
        }
        for run in pass.hooks {
            let Some(bg) = self.sc.blue_green.clone() else {
                continue;
            };
            let at = self.now + self.hook_rng.range(bg.hook_ms.0, bg.hook_ms.1);
            let ok = !self.hook_rng.chance(bg.hook_fail);
            let (life, attempt) = (self.life, run.attempt);
            self.push(at, Ev::Hook { life, attempt, ok });
        }
        if pass.finished {
            if !persist {
                return Err(Violation {
                    invariant: 6,
                    what: "the rollout finished without storing it".to_string(),
                });
            }
            if let Some(c) = &self.coord {
                let engine = c.driver.engine();
                if let Some(outcome) = engine.outcome().cloned() {
                    let truth = self.truth();
                    self.check.finished(&outcome, engine.state(), &truth)?;
                    self.outcome = Some(outcome);
                }
            }
            return Ok(());
        }
        if let Some(c) = self.coord.as_mut() {
            let deadline = c.driver.next_deadline().map_or(u64::MAX, |d| d.0);
            let late = self.tick_rng.range(0, self.sc.profile.tick_late_ms);
            c.next_tick = deadline
                .min(self.now + self.sc.profile.tick_ms)
                .max(self.now + 1)
                + late;
        }
        Ok(())
    }

    /// The runtime hands a command to the host's session, if it has one.
    fn send(&mut self, send: Outgoing) {
        self.commands += 1;
        let Outgoing {
            id,
            instance,
            host,
            kind,
            timeout,
        } = send;
        let timeout = ms(timeout);
        let (Some(&h), Some(&k)) = (self.host_index.get(&host), self.inst_index.get(&instance))
        else {
            return;
        };
        let Some(session) = self.agents[h].session else {
            sim_trace!(self, "   {id}: {host} not connected, not sent");
            return;
        };
        let ev = Ev::ToAgent {
            host: h,
            session,
            id,
            k,
            kind,
            timeout,
        };
        if self.net_rng.chance(self.sc.profile.dup) {
            let late = self.now + self.net_rng.range(1, 3_000);
            self.push(late, ev.clone());
        }
        let at = self.fifo(h, false);
        self.push(at, ev);
    }

    /// The coordinator process dies, and its registry with it.
    pub(super) fn crash(&mut self, when: &str) {
        self.crashes += 1;
        sim_trace!(self, "COORDINATOR CRASH {when}");
        self.coord = None;
        self.life += 1;
        self.check.crashed();
        for h in 0..self.agents.len() {
            if self.agents[h].session.take().is_some() {
                self.agents[h].lose_in_flight =
                    self.chaos_rng.chance(self.sc.profile.lose_in_flight);
                for k in self.agents[h].insts.clone() {
                    self.insts[k].reported = None;
                }
            }
        }
        let at = self.now + self.crash_rng.range(100, 30_000);
        self.push(at, Ev::CoordUp);
    }

    /// A new coordinator process: restore from the store, agents reconnect;
    /// the driver calls lost those not back within the lost timeout.
    fn coord_up(&mut self) -> Result<(), Violation> {
        let state = self.store.read_after_crash().map_err(|e| Violation {
            invariant: 6,
            what: format!("reading the state back: {e}"),
        })?;
        let Some(state) = state else {
            return Err(Violation {
                invariant: 6,
                what: "nothing stored to restore from".to_string(),
            });
        };
        let stored = format!(
            "{:?}",
            state.traffic.as_ref().map(|t| (t.step + 1, &t.stage))
        );
        let (engine, outs) = Engine::restore(state, Millis(self.now));
        sim_trace!(
            self,
            "coordinator restarted; restored from the store (traffic {stored})"
        );
        if self.trace.on {
            for o in &outs {
                if let Some(line) = show_output(o) {
                    sim_trace!(self, "   {line}");
                }
            }
        }
        self.check.restored(self.now, engine.state(), &outs)?;
        if let Some(outcome) = engine.outcome().cloned() {
            self.outcome = Some(outcome);
            return Ok(());
        }
        let lost = std::time::Duration::from_millis(self.sc.profile.lost_ms);
        let driver = Driver::new(
            engine,
            outs,
            0,
            std::iter::empty(),
            Some(lost),
            Millis(self.now),
        );
        let pass_now = {
            let mut driver = driver;
            let pass = driver.pass(Millis(self.now));
            self.coord = Some(Coord {
                driver,
                processing: false,
                next_tick: self.now + 1,
                registry: vec![RegHost::default(); self.agents.len()],
                reconnected: BTreeSet::new(),
            });
            pass
        };
        for h in 0..self.agents.len() {
            let at = self.now + self.net_rng.range(50, 3_000);
            self.push(at, Ev::Connect { host: h });
        }
        // The restored runtime's first pass is judged like any other: it
        // may look at a bake that ended while the coordinator was down.
        self.judge(&pass_now, BTreeSet::new())?;
        self.perform(pass_now, true)
    }

    /// A host sends a result or progress for an instance it does not run,
    /// or for an id outside the rollout: a misbehaving agent, or one whose
    /// journal holds another coordinator's ids. The runtime must not let
    /// either reach the engine or what readers see.
    fn rogue(&mut self) {
        if self.rogues == 0 || self.insts.is_empty() || self.agents.len() < 2 {
            return;
        }
        self.rogues -= 1;
        let next = self.now + self.rogue_rng.range(2_000, 40_000);
        self.push(next, Ev::Rogue);
        let from = self.rogue_rng.index(self.agents.len());
        if self.agents[from].session.is_none() {
            return;
        }
        let k = self.rogue_rng.index(self.insts.len());
        let inst = &self.insts[k];
        let id = match (&inst.job, self.rogue_rng.below(3)) {
            (_, 0) => CommandId::new("r9", "ghost@nowhere", crate::rollout::Step::Draining, 1),
            (Some(job), _) => job.id.clone(),
            (None, _) => CommandId::new(ROLLOUT, &inst.id, crate::rollout::Step::Draining, 1),
        };
        let own = inst.host == from && id.rollout == ROLLOUT;
        if own {
            return;
        }
        sim_trace!(
            self,
            "fault: {} sends a word on {id}",
            self.agents[from].name
        );
        if self.rogue_rng.chance(500) {
            self.agent_progress(from, id, "rogue progress");
        } else {
            let outcome = CommandOutcome::Failed(format!("{ROGUE} {}", self.agents[from].name));
            self.agent_says(from, Msg::Result { id, outcome });
        }
    }
}

/// How a rogue result's message starts, so the checker can tell it.
const ROGUE: &str = "rogue result from";

fn show_msg(sim: &Sim, from: Option<usize>, msg: &Msg) -> String {
    let who = from.map_or("registry", |h| sim.agents[h].name.as_str());
    match msg {
        Msg::Hello { .. } => format!("{who}: hello"),
        Msg::Report { k, seen } => format!(
            "{who}: {} {}{}{} on {}",
            sim.insts[*k].id,
            if seen.healthy { "healthy" } else { "UNHEALTHY" },
            if seen.drained { ", drained" } else { "" },
            if seen.lb_routes { "" } else { ", lb down" },
            seen.release
                .as_ref()
                .map_or("nothing", |r| r.version.as_str())
        ),
        Msg::Result { id, outcome } => format!("{who}: result {id}: {outcome:?}"),
        Msg::Progress { id, text } => format!("{who}: progress {id}: {text}"),
        Msg::Lost { host } => format!("registry: {} lost", sim.agents[*host].name),
        Msg::Traffic { samples } => format!(
            "{who}: counters {:?}",
            (samples.iter())
                .filter_map(|(k, s)| {
                    let b = s.balancers.first()?;
                    Some((sim.insts[*k].id.as_str(), b.requests, b.responses_5xx))
                })
                .collect::<Vec<_>>()
        ),
    }
}

fn show_input(input: &Input) -> String {
    match input {
        Input::Tick => "tick".to_string(),
        Input::Health {
            instance,
            healthy,
            in_service,
            release,
        } => format!(
            "health {instance}: {}{} on {}",
            if *healthy { "healthy" } else { "UNHEALTHY" },
            if *in_service { "" } else { ", drained" },
            release.as_ref().map_or("nothing", |r| r.version.as_str())
        ),
        Input::CommandResult { id, outcome } => format!("result {id}: {outcome:?}"),
        Input::HostLost { host } => format!("host lost {host}"),
        Input::HostBack { host } => format!("host back {host}"),
        Input::Operator(a) => format!("operator {a:?}"),
        Input::HookDone {
            attempt,
            ok,
            detail,
        } => format!("hook run {attempt}: ok={ok} {detail}"),
        Input::Traffic { instance, sample } => format!(
            "traffic {instance}: {:?}",
            (sample.balancers.iter())
                .map(|b| (b.requests, b.responses_5xx))
                .collect::<Vec<_>>()
        ),
    }
}

fn show_output(o: &Output) -> Option<String> {
    Some(match o {
        Output::Persist => "persist".to_string(),
        Output::Send { id, kind, .. } => match kind {
            CommandKind::Deploy { release } => format!("send {id} ({})", release.version),
            _ => format!("send {id}"),
        },
        Output::Event(e) => format!(
            "event [cap {}/{}] {}{}",
            e.capacity,
            e.floor,
            e.instance
                .as_ref()
                .map_or_else(String::new, |i| format!("{i}: ")),
            e.message
        ),
        Output::WaitReason(Some(w)) => format!("waiting: {w}"),
        Output::WaitReason(None) => return None,
        Output::Judgement(j) => format!(
            "look {}.{}: {:?} {}",
            j.step, j.look, j.judgement.verdict, j.judgement.reason
        ),
        Output::Finished(outcome) => format!("FINISHED {outcome}"),
        Output::RunHook { name, attempt, .. } => format!("run hook {name} (run {attempt})"),
    })
}

/// How a canary seed ended, in a few words, for the sweep's figures.
fn canary_end(end: &'static str, outcome: Option<&Outcome>) -> &'static str {
    let reason = match outcome {
        Some(
            Outcome::RolledBack { reason }
            | Outcome::Failed { reason }
            | Outcome::Aborted { reason },
        ) => Some(reason),
        _ => None,
    };
    match (end, reason) {
        ("succeeded", _) => "succeeded",
        ("refused", _) => "refused",
        ("rolled back", Some(StopReason::AnalysisFailed { .. })) => "rolled back on analysis",
        ("rolled back", Some(StopReason::Inconclusive { .. })) => "rolled back inconclusive",
        (
            "rolled back",
            Some(StopReason::ProgressDeadline {
                waiting: Some(crate::rollout::Block::Inconclusive { .. }),
                ..
            }),
        ) => "held inconclusive, rolled back on deadline",
        ("rolled back", Some(StopReason::ProgressDeadline { .. })) => "rolled back on deadline",
        ("rolled back", Some(StopReason::OperatorRollback)) => "rolled back by operator",
        ("rolled back", Some(StopReason::Weights { .. })) => "rolled back on a weight",
        ("rolled back", _) => "rolled back, other",
        ("failed", Some(StopReason::WeightsNotRestored { .. })) => "failed, weights not restored",
        (
            "failed",
            Some(StopReason::Incomplete {
                unfinished: crate::rollout::Unfinished::Weights,
                ..
            }),
        ) => "failed, weights not restored",
        ("failed", _) => "failed",
        ("aborted", _) => "aborted",
        _ => "other",
    }
}
