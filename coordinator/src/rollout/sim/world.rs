//! The simulated fleet: agents that behave like drover's (one command per
//! instance at a time, a journal that answers a repeated id without running
//! it again, "busy" for a second id, an outbox that outlives sessions, and
//! what an agent restart does to a step that was running), instances with
//! their real state, and the faults the chaos clock injects.

use std::collections::BTreeMap;

use super::check::Violation;
use super::end_state::Truth;
use super::runtime::{Ev, Msg, Sim};
use super::scenario::Chaos;
use crate::rollout::traffic::{BalancerCounters, Stage, TrafficSample};
use crate::rollout::{CommandId, CommandKind, CommandOutcome, OperatorAction, Release};
use crate::runner::driver::{Event, Observed};

/// What the agent says when it was restarted in the middle of a step it
/// must not redo blindly (a deploy past its after_deploy hook).
const RESTARTED: &str = "agent restarted during the step (in after_deploy; it may have run partly)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Ok,
    Fail,
    Hang,
}

/// A command running on an instance.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: CommandId,
    pub kind: CommandKind,
    pub token: u64,
    pub started: u64,
    /// When the agent gives up on it.
    pub deadline: u64,
    pub plan: Plan,
}

#[derive(Debug, Clone)]
pub struct Inst {
    pub id: String,
    pub host: usize,
    pub release: Option<Release>,
    /// Started by drover (a Stop clears it, a Start sets it).
    pub running: bool,
    /// Crashed on its own; its supervisor restarts it later, or never.
    pub crashed: bool,
    pub drained: bool,
    /// Fails its health check on the target release.
    pub bad: bool,
    pub healthy_since: Option<u64>,
    /// When its load balancer routes to it again, if it stays healthy: the
    /// load balancer's own checks lag the agent's (see `Sim::lb_lag`).
    pub lb_up_at: Option<u64>,
    /// What the current session last reported.
    pub reported: Option<Observed>,
    pub job: Option<Job>,
    /// The weight drover set in its load balancer; `None`: the configured one.
    pub weight: Option<u32>,
    /// Its load balancer's cumulative counters (canary seeds).
    pub requests: u64,
    pub errors: u64,
    /// The counters last reported on the current session.
    pub sent: Option<(u64, u64, u32)>,
}

/// The configured weight of every server in the simulated load balancer.
const CONFIGURED_WEIGHT: u64 = 1;

#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub insts: Vec<usize>,
    /// The agent process runs.
    pub up: bool,
    /// The network between it and the coordinator works.
    pub net: bool,
    /// Lost for good.
    pub gone: bool,
    pub session: Option<u32>,
    pub sessions: u32,
    pub journal: BTreeMap<CommandId, CommandOutcome>,
    /// Results waiting for a session to carry them.
    pub outbox: Vec<(CommandId, CommandOutcome)>,
    /// Finished runs per command id, to prove none ran to the end twice.
    pub finished_runs: BTreeMap<CommandId, u32>,
    /// Latest delivery time on each direction of its session (FIFO).
    pub fifo_up: u64,
    pub fifo_down: u64,
    /// Whether results in flight die with the session that carried them.
    pub lose_in_flight: bool,
}

impl Inst {
    pub fn healthy(&self, target: &Release) -> bool {
        self.running && !self.crashed && !(self.bad && self.release.as_ref() == Some(target))
    }
}

impl Sim {
    pub(super) fn truth(&self) -> Vec<Truth> {
        (self.insts.iter())
            .map(|i| {
                let a = &self.agents[i.host];
                Truth {
                    release: i.release.clone(),
                    in_service: !i.drained,
                    running: i.running,
                    host_up: a.up && a.net && !a.gone,
                    weight: i.weight,
                }
            })
            .collect()
    }

    /// Delivery time for the next message on `host`'s session, in order.
    pub(super) fn fifo(&mut self, host: usize, up: bool) -> u64 {
        let (lo, hi) = self.sc.profile.delay;
        let at = self.now + self.net_rng.range(lo, hi);
        let a = &mut self.agents[host];
        let last = if up { &mut a.fifo_up } else { &mut a.fifo_down };
        let at = at.max(*last);
        *last = at;
        at
    }

    /// A message from an agent to the coordinator on its current session.
    pub(super) fn agent_says(&mut self, host: usize, msg: Msg) {
        let Some(session) = self.agents[host].session else {
            return;
        };
        let at = self.fifo(host, true);
        let from = Some((host, session));
        // A session keeps its messages in order. Results are delivered twice
        // and out of order (an outbox replay, a journal answer to a re-sent
        // id); a health report is not: an old report arriving late would be
        // a lie no coordinator could tell from the truth.
        let result = matches!(msg, Msg::Result { .. });
        if result && self.net_rng.chance(self.sc.profile.dup) {
            // Delivered twice, the copy out of order.
            let late = at + self.net_rng.range(1, 5_000);
            self.push(
                late,
                Ev::ToCoord {
                    life: self.life,
                    from,
                    msg: msg.clone(),
                },
            );
        }
        self.push(
            at,
            Ev::ToCoord {
                life: self.life,
                from,
                msg,
            },
        );
    }

    /// A progress message on the session, delivered in order after what
    /// the session already carries, drawing nothing from the network's
    /// randomness (so it does not change the rest of the run).
    pub(super) fn agent_progress(&mut self, host: usize, id: CommandId, text: &str) {
        let Some(session) = self.agents[host].session else {
            return;
        };
        let a = &mut self.agents[host];
        let at = (self.now + self.sc.profile.delay.0).max(a.fifo_up);
        a.fifo_up = at;
        self.push(
            at,
            Ev::ToCoord {
                life: self.life,
                from: Some((host, session)),
                msg: Msg::Progress {
                    id,
                    text: text.to_string(),
                },
            },
        );
    }

    /// The agent's answer to a command: on the session if there is one,
    /// else kept for the next.
    pub(super) fn answer(&mut self, host: usize, id: CommandId, outcome: CommandOutcome) {
        if self.agents[host].session.is_some() {
            self.agent_says(host, Msg::Result { id, outcome });
        } else {
            self.agents[host].outbox.push((id, outcome));
        }
    }

    /// A result that was on its way when its session or the coordinator
    /// died: lost, or still in the agent's outbox.
    pub(super) fn undelivered(&mut self, host: usize, msg: Msg) {
        if let Msg::Result { id, outcome } = msg
            && !self.agents[host].lose_in_flight
            && !self.agents[host].gone
        {
            sim_trace!(
                self,
                "  {id} result back in {}'s outbox",
                self.agents[host].name
            );
            self.answer(host, id, outcome);
        }
    }

    /// Whether the instance's load balancer routes to it. With no lag the
    /// instance is registered with none, which the runtime counts as routed.
    pub(super) fn lb_routes(&self, k: usize) -> bool {
        let i = &self.insts[k];
        // Weight 0 (blue-green's idle color): up, but sent nothing.
        i.weight != Some(0)
            && (self.lb_lag == 0 || (!i.drained && i.lb_up_at.is_some_and(|t| self.now >= t)))
    }

    /// What the agent would report of `k` now (updating when it became
    /// healthy, and when its load balancer will route to it).
    pub(super) fn observe(&mut self, k: usize) -> Observed {
        let target = self.sc.spec.target.clone();
        let lag = self.lb_lag;
        let now = self.now;
        let i = &mut self.insts[k];
        let healthy = i.healthy(&target);
        if !healthy {
            i.healthy_since = None;
            i.lb_up_at = None;
        } else if i.healthy_since.is_none() {
            i.healthy_since = Some(now);
            i.lb_up_at = Some(now + lag);
            if lag > 0 {
                self.push(now + lag, Ev::LbUp { k });
            }
        }
        let i = &self.insts[k];
        Observed {
            healthy,
            running: i.running && !i.crashed,
            drained: i.drained,
            lb_routes: self.lb_routes(k),
            release: i.release.clone(),
        }
    }

    /// Sends a health report for `k` if what the agent would report changed.
    pub(super) fn report(&mut self, k: usize) {
        let seen = self.observe(k);
        let i = &mut self.insts[k];
        let host = i.host;
        if self.agents[host].session.is_none() || i.reported.as_ref() == Some(&seen) {
            return;
        }
        i.reported = Some(seen.clone());
        self.agent_says(host, Msg::Report { k, seen });
    }

    /// A command arrives at an agent on `session`.
    pub(super) fn submit(
        &mut self,
        host: usize,
        session: u32,
        id: CommandId,
        k: usize,
        kind: CommandKind,
        timeout: u64,
    ) {
        let a = &self.agents[host];
        if a.session != Some(session) || !a.up || a.gone {
            sim_trace!(self, "  {id} lost with {}'s session", a.name);
            return;
        }
        if self.insts[k].job.as_ref().is_some_and(|j| j.id == id) {
            sim_trace!(self, "  {id} already running; agent attaches");
            return;
        }
        if let Some(o) = a.journal.get(&id).cloned() {
            sim_trace!(self, "  {id} answered from the journal: {o:?}");
            self.answer(host, id, o);
            return;
        }
        if let Some(j) = &self.insts[k].job {
            let why = format!("busy with {}", j.id);
            sim_trace!(self, "  {id} refused: {why}");
            self.answer(host, id, CommandOutcome::Failed(why));
            return;
        }
        let p = &self.sc.profile;
        // A bad or unreachable artifact: the stage of the target fails.
        let bad_stage = matches!(&kind, CommandKind::Stage { release } if *release == self.sc.spec.target)
            && self.agent_rng.chance(self.sc.stage_fail);
        let plan = if bad_stage {
            Plan::Fail
        } else if self.agent_rng.chance(p.cmd_hang) {
            Plan::Hang
        } else if self.agent_rng.chance(p.cmd_fail) {
            Plan::Fail
        } else {
            Plan::Ok
        };
        let took = if self.agent_rng.chance(p.cmd_slow) {
            self.agent_rng.range(timeout / 2, timeout + timeout / 5)
        } else {
            self.agent_rng.range(20, 3_000)
        };
        self.tokens += 1;
        let token = self.tokens;
        sim_trace!(
            self,
            "  {} runs {id} ({plan:?}, {took}ms)",
            self.agents[host].name
        );
        let verify = matches!(kind, CommandKind::Verify { .. });
        self.agent_progress(host, id.clone(), "accepted");
        self.insts[k].job = Some(Job {
            id,
            kind,
            token,
            started: self.now,
            deadline: self.now + timeout,
            plan,
        });
        // The agent kills a step at its timeout and reports TimedOut.
        let end = match plan {
            Plan::Hang => timeout,
            _ if verify && plan == Plan::Ok => {
                self.push(self.now + 1_000, Ev::VerifyPoll { k, token });
                timeout
            }
            _ if took >= timeout => {
                if let Some(j) = self.insts[k].job.as_mut() {
                    j.plan = Plan::Hang;
                }
                timeout
            }
            _ => took,
        };
        self.push(self.now + end, Ev::JobEnd { k, token });
    }

    /// A verify step checks the health gate once a second.
    pub(super) fn verify_poll(&mut self, k: usize, token: u64) {
        let Some(job) = self.insts[k].job.as_ref().filter(|j| j.token == token) else {
            return;
        };
        let CommandKind::Verify {
            min_healthy_time,
            healthy_deadline,
        } = job.kind
        else {
            return;
        };
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let started = job.started;
        let passed = (self.insts[k].healthy_since)
            .is_some_and(|s| self.now >= s.max(started) + ms(min_healthy_time));
        if passed {
            self.finish_job(k, CommandOutcome::Ok);
        } else if self.now >= started + ms(healthy_deadline) {
            let why = "health check did not pass for min_healthy_time within healthy_deadline";
            self.finish_job(k, CommandOutcome::Failed(why.to_string()));
        } else {
            self.push(self.now + 1_000, Ev::VerifyPoll { k, token });
        }
    }

    pub(super) fn job_end(&mut self, k: usize, token: u64) {
        let Some(job) = self.insts[k].job.as_ref().filter(|j| j.token == token) else {
            return;
        };
        // An undrain with a load balancer ends when the load balancer
        // routes to the instance again, as the agent waits for it.
        let undrain = matches!(job.kind, CommandKind::Undrain);
        if undrain && job.plan == Plan::Ok && self.lb_lag > 0 {
            let deadline = job.deadline;
            let up_at = self.insts[k].lb_up_at;
            match up_at {
                Some(t) if t <= self.now => {}
                Some(t) if t < deadline => {
                    self.push(t, Ev::JobEnd { k, token });
                    return;
                }
                _ if self.now < deadline => {
                    self.push(deadline, Ev::JobEnd { k, token });
                    return;
                }
                _ => {
                    self.finish_job(k, CommandOutcome::TimedOut);
                    return;
                }
            }
        }
        let outcome = match job.plan {
            Plan::Ok if matches!(job.kind, CommandKind::Verify { .. }) => CommandOutcome::TimedOut,
            Plan::Ok => CommandOutcome::Ok,
            Plan::Fail => CommandOutcome::Failed("injected failure".to_string()),
            Plan::Hang => CommandOutcome::TimedOut,
        };
        self.finish_job(k, outcome);
    }

    fn effect(&mut self, k: usize, kind: &CommandKind) {
        let i = &mut self.insts[k];
        match kind {
            CommandKind::Stage { .. } => {}
            CommandKind::Drain => i.drained = true,
            CommandKind::Stop => i.running = false,
            CommandKind::Deploy { release } => i.release = Some(release.clone()),
            CommandKind::Start => i.running = true,
            CommandKind::Verify { .. } => {}
            CommandKind::Undrain => i.drained = false,
            CommandKind::SetWeight { weight } => i.weight = *weight,
        }
        self.report(k);
    }

    fn finish_job(&mut self, k: usize, outcome: CommandOutcome) {
        let Some(job) = self.insts[k].job.take() else {
            return;
        };
        let did = match outcome {
            CommandOutcome::Ok => true,
            _ => self.agent_rng.chance(self.sc.profile.partial),
        };
        if did {
            self.effect(k, &job.kind);
        }
        let host = self.insts[k].host;
        sim_trace!(
            self,
            "  {} finished {}: {outcome:?}",
            self.agents[host].name,
            job.id
        );
        let a = &mut self.agents[host];
        a.journal.insert(job.id.clone(), outcome.clone());
        let runs = a.finished_runs.entry(job.id.clone()).or_insert(0);
        *runs += 1;
        if *runs > 1 {
            self.broken = Some(Violation {
                invariant: 2,
                what: format!("{} ran to the end {runs} times on {}", job.id, a.name),
            });
        }
        self.answer(host, job.id, outcome);
    }

    /// The session drops; the registry calls the host lost if it does not
    /// come back within the lost timeout.
    fn drop_session(&mut self, host: usize) {
        let lose = self.chaos_rng.chance(self.sc.profile.lose_in_flight);
        let a = &mut self.agents[host];
        a.lose_in_flight = lose;
        if a.session.take().is_some() {
            let sessions = a.sessions;
            let at = self.now + self.sc.profile.lost_ms;
            self.push(
                at,
                Ev::LostCheck {
                    host,
                    life: self.life,
                    sessions,
                },
            );
        }
        for &k in &self.agents[host].insts {
            self.insts[k].reported = None;
        }
    }

    /// The agent (re)connects: Hello (the registry feeds HostBack), a full
    /// health report, then whatever its outbox kept.
    pub(super) fn connect(&mut self, host: usize) {
        let a = &self.agents[host];
        if !a.up || !a.net || a.gone || a.session.is_some() || self.coord.is_none() {
            return;
        }
        let a = &mut self.agents[host];
        a.sessions += 1;
        a.session = Some(a.sessions);
        a.lose_in_flight = false;
        let name = a.name.clone();
        sim_trace!(self, "{name} connected");
        let mut seen = Vec::new();
        for k in self.agents[host].insts.clone() {
            self.insts[k].sent = None;
            let o = self.observe(k);
            self.insts[k].reported = Some(o.clone());
            seen.push((k, o));
        }
        self.agent_says(host, Msg::Hello { seen });
        for (id, outcome) in std::mem::take(&mut self.agents[host].outbox) {
            self.answer(host, id, outcome);
        }
    }

    /// The agent process restarts. Steps that were running stop; those it
    /// may redo are forgotten (a repeated id runs them again), a deploy past
    /// its after_deploy hook is journaled as failed. Then it replays recent
    /// journal entries to the coordinator.
    fn restart_agent(&mut self, host: usize) {
        self.drop_session(host);
        self.agents[host].up = false;
        for k in self.agents[host].insts.clone() {
            let Some(job) = self.insts[k].job.take() else {
                continue;
            };
            if self.agent_rng.chance(self.sc.profile.partial) {
                self.effect(k, &job.kind);
            }
            let late_deploy =
                matches!(job.kind, CommandKind::Deploy { .. }) && self.agent_rng.chance(500);
            if late_deploy {
                let o = CommandOutcome::Failed(RESTARTED.to_string());
                sim_trace!(self, "  {} journaled as failed: {RESTARTED}", job.id);
                self.agents[host].journal.insert(job.id.clone(), o.clone());
                self.agents[host].outbox.push((job.id, o));
            } else {
                sim_trace!(self, "  {} cut off; it runs again if asked", job.id);
            }
        }
        let recent: Vec<(CommandId, CommandOutcome)> = (self.agents[host].journal.iter())
            .rev()
            .take(3)
            .map(|(id, o)| (id.clone(), o.clone()))
            .collect();
        self.agents[host].outbox.extend(recent);
        let back = self.now + self.chaos_rng.range(500, 15_000);
        self.push(back, Ev::AgentUp { host });
    }

    pub(super) fn agent_up(&mut self, host: usize) {
        if !self.agents[host].gone {
            self.agents[host].up = true;
            self.connect(host);
        }
    }

    pub(super) fn net_up(&mut self, host: usize) {
        if !self.agents[host].gone {
            self.agents[host].net = true;
            let at = self.now + self.net_rng.range(10, 1_000);
            self.push(at, Ev::Connect { host });
        }
    }

    pub(super) fn set_crashed(&mut self, k: usize, crashed: bool) {
        self.insts[k].crashed = crashed;
        self.report(k);
    }

    /// One fault from the chaos clock.
    pub(super) fn chaos(&mut self) {
        let p = &self.sc.profile;
        if p.chaos_ms == 0 || self.chaos_count >= p.max_chaos {
            return;
        }
        let (every, weights) = (p.chaos_ms, p.chaos_weights);
        let next = self.now + self.chaos_rng.range(every / 4, every * 7 / 4);
        self.push(next, Ev::Chaos);
        self.chaos_count += 1;
        let kind = Chaos::ALL[self.chaos_rng.weighted(&weights)];
        let k = self.chaos_rng.index(self.insts.len());
        let host = self.insts[k].host;
        let name = self.agents[host].name.clone();
        match kind {
            Chaos::CrashInstance => {
                sim_trace!(self, "fault: {} crashes", self.insts[k].id);
                self.set_crashed(k, true);
                if !self.chaos_rng.chance(100) {
                    let at = self.now + self.chaos_rng.range(1_000, 90_000);
                    self.push(at, Ev::Flip { k, left: 0 });
                }
            }
            Chaos::Flap => {
                sim_trace!(self, "fault: {} flaps", self.insts[k].id);
                let left = 2 * self.chaos_rng.range_u32(1, 3);
                self.push(self.now, Ev::Flip { k, left });
            }
            Chaos::Blip | Chaos::Disconnect => {
                if self.agents[host].gone || !self.agents[host].net {
                    return;
                }
                sim_trace!(self, "fault: {name} disconnected ({kind:?})");
                self.agents[host].net = false;
                self.drop_session(host);
                let lost = self.sc.profile.lost_ms;
                let back = if kind == Chaos::Blip {
                    self.chaos_rng.range(100, lost / 2)
                } else {
                    lost + self.chaos_rng.range(1_000, 120_000)
                };
                self.push(self.now + back, Ev::NetUp { host });
            }
            Chaos::AgentRestart => {
                if self.agents[host].gone || !self.agents[host].up {
                    return;
                }
                sim_trace!(self, "fault: agent on {name} restarts");
                self.restart_agent(host);
            }
            Chaos::LoseHost => {
                if self.agents[host].gone {
                    return;
                }
                sim_trace!(self, "fault: {name} lost for good");
                self.drop_session(host);
                self.agents[host].gone = true;
            }
            Chaos::CoordinatorCrash => {
                if self.coord.is_some() && self.crashes < self.sc.profile.max_crashes {
                    self.crash("between passes");
                }
            }
            Chaos::Operator => {
                if self.coord.is_none() || self.operator_count >= self.sc.profile.max_operator {
                    return;
                }
                self.operator_count += 1;
                // An operator who paused mostly resumes next.
                let resume = if self.last_operator == Some(OperatorAction::Pause) {
                    8
                } else {
                    1
                };
                let action = [
                    OperatorAction::Pause,
                    OperatorAction::Resume,
                    OperatorAction::Abort,
                    OperatorAction::Rollback,
                ][self.chaos_rng.weighted(&[4, resume, 1, 1])];
                // Drawn from the canary's own stream, so rolling seeds draw
                // what they always drew.
                let promote = self.sc.canary.as_ref().map_or(0, |c| c.promote);
                let action = if promote > 0 && self.op_rng.chance(promote) {
                    OperatorAction::Promote
                } else {
                    action
                };
                self.last_operator = Some(action);
                sim_trace!(self, "operator: {action:?}");
                self.queue(Event::Operator(action));
            }
        }
    }
}

impl Sim {
    /// Whether the load balancer sends requests to `k`: it runs, passes
    /// its checks, is not drained, and its host is there.
    fn routes(&self, k: usize) -> bool {
        let i = &self.insts[k];
        let a = &self.agents[i.host];
        i.healthy(&self.sc.spec.target) && !i.drained && self.lb_routes(k) && a.up && !a.gone
    }

    /// One period of requests (canary seeds): spread over the instances
    /// the load balancer routes to in proportion to their weights, failed
    /// at their release's rate; then every connected agent reports its
    /// instances' cumulative counters on its session.
    pub(super) fn serve_traffic(&mut self) {
        let Some(c) = self.sc.canary.clone() else {
            return;
        };
        let next = self.now + c.period_ms;
        self.push(next, Ev::Traffic);
        if self.traffic_rng.chance(c.counter_reset) {
            sim_trace!(
                self,
                "fault: the load balancer restarts; its counters start from 0"
            );
            for i in &mut self.insts {
                i.requests = 0;
                i.errors = 0;
            }
        }
        let weight = |i: &Inst| i.weight.map_or(CONFIGURED_WEIGHT, u64::from);
        let routed: Vec<usize> = (0..self.insts.len()).filter(|&k| self.routes(k)).collect();
        let total_weight: u64 = routed.iter().map(|&k| weight(&self.insts[k])).sum();
        let period = c.rps * c.period_ms + self.traffic_rng.below(1_000);
        let requests = period / 1_000;
        if total_weight > 0 {
            for &k in &routed {
                let w = weight(&self.insts[k]);
                let n = (u128::from(requests) * u128::from(w)
                    + u128::from(self.traffic_rng.below(total_weight)))
                    / u128::from(total_weight);
                let n = u64::try_from(n).unwrap_or(u64::MAX);
                let ppm = if self.insts[k].release.as_ref() == Some(&self.sc.spec.target) {
                    c.v2_ppm
                } else {
                    c.v1_ppm
                };
                let errors = if n <= 1_000 {
                    (0..n)
                        .filter(|_| self.traffic_rng.below(1_000_000) < ppm)
                        .count() as u64
                } else {
                    (n * ppm + self.traffic_rng.below(1_000_000)) / 1_000_000
                };
                let i = &mut self.insts[k];
                i.requests += n;
                i.errors += errors;
            }
        }
        for host in 0..self.agents.len() {
            let a = &self.agents[host];
            if a.session.is_none() || !a.up || a.gone {
                continue;
            }
            let mut samples = Vec::new();
            for k in a.insts.clone() {
                let i = &mut self.insts[k];
                let ms = if i.release.as_ref() == Some(&self.sc.spec.target) {
                    c.v2_ms
                } else {
                    c.v1_ms
                };
                // Only what changed: the driver would drop the rest.
                let now = (i.requests, i.errors, ms);
                if i.sent == Some(now) {
                    continue;
                }
                i.sent = Some(now);
                {
                    let sample = TrafficSample {
                        balancers: vec![BalancerCounters {
                            balancer: "lb1".to_string(),
                            requests: i.requests,
                            responses_5xx: i.errors,
                            response_errors: 0,
                            connection_errors: 0,
                            responses: i.requests,
                            response_time_ms: ms,
                        }],
                        app: None,
                    };
                    samples.push((k, sample));
                }
            }
            if !samples.is_empty() {
                self.agent_in_order(host, Msg::Traffic { samples });
            }
        }
    }

    /// A message on `host`'s session, in order after what it already
    /// carries, drawing nothing from the network's randomness.
    fn agent_in_order(&mut self, host: usize, msg: Msg) {
        let Some(session) = self.agents[host].session else {
            return;
        };
        let a = &mut self.agents[host];
        let at = (self.now + self.sc.profile.delay.0).max(a.fifo_up);
        a.fifo_up = at;
        self.push(
            at,
            Ev::ToCoord {
                life: self.life,
                from: Some((host, session)),
                msg,
            },
        );
    }

    /// A simulated operator who watches a canary: a step held as
    /// inconclusive is promoted, baked again or rolled back.
    pub(super) fn watch(&mut self) {
        let Some(c) = self.sc.canary.as_ref() else {
            return;
        };
        if c.watch_ms == 0 {
            return;
        }
        let next = self.now + self.op_rng.range(c.watch_ms / 2, c.watch_ms * 3 / 2);
        self.push(next, Ev::Watch);
        let stage = self.coord.as_ref().and_then(|c| {
            let st = c.driver.engine().state();
            st.traffic.as_ref().map(|t| t.stage.clone())
        });
        if let (Some(Stage::KeepingOld { .. }), Some(bg)) = (&stage, &self.sc.blue_green)
            && self.op_rng.chance(bg.rollback_in_keep)
        {
            sim_trace!(self, "operator (the old color is kept): Rollback");
            self.queue(Event::Operator(OperatorAction::Rollback));
            return;
        }
        if !matches!(stage, Some(Stage::Held { .. })) {
            return;
        }
        let action = [
            OperatorAction::Promote,
            OperatorAction::Resume,
            OperatorAction::Rollback,
        ][self.op_rng.weighted(&[5, 3, 2])];
        sim_trace!(self, "operator (watching a held step): {action:?}");
        self.queue(Event::Operator(action));
    }
}
