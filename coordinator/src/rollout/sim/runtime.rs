//! The simulated coordinator runtime and the event loop.
//!
//! It does what `runner.rs` does around the real engine: takes whatever
//! inputs are queued (health, results, registry changes, operator actions,
//! ticks) into one pass, handles them, writes the engine state if any output
//! asked for a Persist, and only then performs the Sends. A crash can strike
//! before the write, between two sends, or between passes; the engine is
//! then rebuilt with [`Engine::restore`] from what the store holds, the
//! agents reconnect, and the registry reports the hosts that did not.

use std::collections::BTreeMap;

use super::Failure;
use super::check::{Checker, Violation};
use super::rng::Rng;
use super::scenario::Scenario;
use super::store::{SimStore, StoreKind};
use super::trace::Trace;
use super::world::{Agent, Inst};
use crate::rollout::{CommandKind, Engine, Input, Millis, Outcome, Output};

pub const ROLLOUT: &str = "r1";
/// How far past the progress deadline the idle check allows.
const SLACK_MS: u64 = 1_000;

#[derive(Debug, Clone)]
pub enum Ev {
    /// A message reaches the coordinator: from an agent's session, or from
    /// the coordinator's own registry or operator API (`from` = None).
    ToCoord {
        life: u32,
        from: Option<(usize, u32)>,
        input: Input,
    },
    ToAgent {
        host: usize,
        session: u32,
        id: String,
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
    /// After a restore: hosts not back by now are lost.
    LostCheckAll {
        life: u32,
    },
    /// An agent's periodic full health report.
    Report {
        host: usize,
    },
    Chaos,
    CoordUp,
}

pub struct Coord {
    pub engine: Engine,
    inbox: Vec<Input>,
    processing: bool,
    next_tick: u64,
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
                reported: Some((m.info.healthy, m.info.in_service, m.info.release.clone())),
                job: None,
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
        let store = SimStore::open(store).map_err(|e| e.to_string())?;
        let mut sim = Sim {
            net_rng: rng.fork(),
            agent_rng: rng.fork(),
            chaos_rng: rng.fork(),
            crash_rng: rng.fork(),
            tick_rng: rng.fork(),
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
        if self.trace.on {
            for o in &outs {
                if let Some(line) = show_output(o) {
                    sim_trace!(self, "   {line}");
                }
            }
        }
        self.coord = Some(Coord {
            engine,
            inbox: Vec::new(),
            processing: false,
            next_tick: 0,
        });
        self.check.outputs(0, &outs)?;
        self.perform(outs, false)?;
        // Bounds on the whole run: every instance takes at most two chains of
        // six steps, and each step is answered or timed out.
        let n = u64::try_from(self.insts.len()).unwrap_or(u64::MAX);
        let max_activities = 40 * n + 1_000;
        while self.outcome.is_none() {
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
                    self.queue_input(Input::Tick);
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
                self.check.idle(self.now, SLACK_MS)?;
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

    /// Without faults, the fleet's real capacity (instances healthy and not
    /// drained, counted from the agents, not from what the engine was told)
    /// never drops under the floor.
    fn real_capacity(&self) -> Result<(), Violation> {
        let target = &self.sc.spec.target;
        let serving = (self.insts.iter())
            .filter(|i| i.healthy(target) && !i.drained)
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
        }
    }

    fn event(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::ToCoord { life, from, input } => {
                let live = self.coord.is_some()
                    && life == self.life
                    && from.is_none_or(|(h, s)| self.agents[h].session == Some(s));
                if !live {
                    if let Some((h, _)) = from {
                        self.undelivered(h, input);
                    }
                    return Ok(());
                }
                self.queue_input(input);
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
                    self.queue_input(Input::HostLost { host: name });
                    self.process()?;
                }
            }
            Ev::LostCheckAll { life } => {
                if life == self.life {
                    let away: Vec<String> = (self.agents.iter())
                        .filter(|a| a.session.is_none())
                        .map(|a| a.name.clone())
                        .collect();
                    for host in away {
                        sim_trace!(self, "registry: {host} not back since the restart, lost");
                        self.queue_input(Input::HostLost { host });
                    }
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
            Ev::Chaos => {
                self.chaos();
                // An operator action is handled at once, as the runtime does.
                if self.coord.as_ref().is_some_and(|c| !c.inbox.is_empty()) {
                    self.process()?;
                }
            }
            Ev::CoordUp => self.coord_up()?,
        }
        Ok(())
    }

    /// Queues an input for the coordinator's next pass.
    pub(super) fn queue_input(&mut self, input: Input) {
        if let Some(c) = self.coord.as_mut() {
            c.inbox.push(input);
        }
    }

    /// One pass of the runtime: handle everything queued, then perform.
    fn process(&mut self) -> Result<(), Violation> {
        let Some(c) = self.coord.as_mut() else {
            return Ok(());
        };
        c.processing = false;
        if c.engine.is_finished() {
            return Ok(());
        }
        // Everything queued goes in as one call, as the runner hands the
        // engine a whole pass of inputs.
        let inputs = std::mem::take(&mut c.inbox);
        for input in &inputs {
            if self.trace.on && !matches!(input, Input::Tick) {
                sim_trace!(self, "-> {}", show_input(input));
            }
            self.check.input(self.now, input);
        }
        let Some(c) = self.coord.as_mut() else {
            return Ok(());
        };
        let outs = c.engine.handle_all(Millis(self.now), inputs);
        if self.trace.on {
            for o in &outs {
                if let Some(line) = show_output(o) {
                    sim_trace!(self, "   {line}");
                }
            }
        }
        self.check.outputs(self.now, &outs)?;
        self.perform(outs, true)
    }

    fn roll_crash(&mut self, per_mille: u32) -> bool {
        self.crashes < self.sc.profile.max_crashes && self.crash_rng.chance(per_mille)
    }

    /// What the runtime does with a pass's outputs: write, then send.
    fn perform(&mut self, outs: Vec<Output>, may_crash: bool) -> Result<(), Violation> {
        let persist = outs.iter().any(|o| matches!(o, Output::Persist));
        if persist {
            if may_crash && self.roll_crash(self.sc.profile.crash_before_write) {
                self.crash("before its store write");
                return Ok(());
            }
            if let Some(c) = self.coord.as_mut() {
                self.store.write(&mut c.engine).map_err(|e| Violation {
                    invariant: 0,
                    what: format!("store write failed: {e}"),
                })?;
            }
            self.check.written();
        }
        for o in outs {
            match o {
                Output::Send {
                    id,
                    instance,
                    host,
                    kind,
                    timeout,
                } => {
                    if may_crash && self.roll_crash(self.sc.profile.crash_between_sends) {
                        self.crash("between two sends");
                        return Ok(());
                    }
                    self.check.sending(id.as_str())?;
                    self.send(id.0, &instance, &host, kind, ms(timeout));
                }
                Output::Finished(outcome) => {
                    if !persist {
                        return Err(Violation {
                            invariant: 6,
                            what: "the rollout finished without storing it".to_string(),
                        });
                    }
                    if let Some(c) = &self.coord {
                        let truth = self.truth();
                        self.check.finished(&outcome, c.engine.state(), &truth)?;
                    }
                    self.outcome = Some(outcome);
                    return Ok(());
                }
                _ => {}
            }
        }
        if let Some(c) = self.coord.as_mut() {
            let deadline = c.engine.next_deadline().map_or(u64::MAX, |d| d.0);
            let late = self.tick_rng.range(0, self.sc.profile.tick_late_ms);
            c.next_tick = deadline
                .min(self.now + self.sc.profile.tick_ms)
                .max(self.now + 1)
                + late;
        }
        Ok(())
    }

    /// The runtime hands a command to the host's session, if it has one.
    fn send(&mut self, id: String, instance: &str, host: &str, kind: CommandKind, timeout: u64) {
        self.commands += 1;
        let (Some(&h), Some(&k)) = (self.host_index.get(host), self.inst_index.get(instance))
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

    /// The coordinator process dies.
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

    /// A new coordinator process: restore from the store, agents reconnect.
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
        let (engine, outs) = Engine::restore(state, Millis(self.now));
        sim_trace!(self, "coordinator restarted; restored from the store");
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
        self.coord = Some(Coord {
            engine,
            inbox: Vec::new(),
            processing: false,
            next_tick: self.now + 1,
        });
        let life = self.life;
        for h in 0..self.agents.len() {
            let at = self.now + self.net_rng.range(50, 3_000);
            self.push(at, Ev::Connect { host: h });
        }
        let at = self.now + self.sc.profile.lost_ms;
        self.push(at, Ev::LostCheckAll { life });
        self.perform(outs, true)
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
        Output::Finished(outcome) => format!("FINISHED {outcome}"),
    })
}
