//! A deterministic fake fleet: agents that execute commands when they receive
//! them and answer after a fixed delay, a journal per command id, and checks
//! of the engine's promises after every call.

use std::collections::{BTreeMap, BTreeSet};

use crate::rollout::{
    CommandId, CommandKind, CommandOutcome, Engine, Input, InstanceInfo, Millis, OperatorAction,
    Output, Release, RolloutSpec, RolloutState, Status, Step,
};

pub const TICK: u64 = 1_000;

pub fn digest(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

pub fn v1() -> Release {
    Release::new("v1", digest('1'))
}

pub fn v2() -> Release {
    Release::new("v2", digest('2'))
}

/// `web@h01`..: zones a, b, c in turn, all healthy on v1.
pub fn instances(n: usize) -> Vec<InstanceInfo> {
    (1..=n)
        .map(|k| {
            let zone = ["a", "b", "c"][(k - 1) % 3];
            InstanceInfo {
                id: format!("web@h{k:02}"),
                host: format!("h{k:02}"),
                labels: BTreeMap::from([
                    ("env".to_string(), "prod".to_string()),
                    ("zone".to_string(), zone.to_string()),
                ]),
                release: Some(v1()),
                healthy: true,
                in_service: true,
                reachable: true,
                balancers: vec![crate::rollout::BalancerInfo {
                    balancer: "lb1".to_string(),
                    backend: "web".to_string(),
                    algorithm: "roundrobin".to_string(),
                    dynamic: true,
                    counted: true,
                }],
                color: None,
            }
        })
        .collect()
}

pub fn spec() -> RolloutSpec {
    RolloutSpec {
        service: "web".to_string(),
        selector: "env=prod".to_string(),
        target: v2(),
        batches: crate::rollout::parse_batches("1,25%,100%").expect("batches"),
        min_healthy: crate::rollout::Amount::Percent(80),
        ..RolloutSpec::default()
    }
}

#[derive(Debug, Clone)]
pub struct Sim {
    pub host: String,
    pub zone: String,
    pub release: Option<Release>,
    pub healthy: bool,
    pub in_service: bool,
    /// The weight drover set in the load balancer; `None`: configured.
    pub weight: Option<u32>,
}

impl Sim {
    /// Healthy and routed to: in service at a weight above 0 (what the
    /// agents report as in service).
    pub fn serving(&self) -> bool {
        self.healthy && self.routed()
    }

    pub fn routed(&self) -> bool {
        self.in_service && self.weight != Some(0)
    }
}

pub struct Fleet {
    pub now: u64,
    pub engine: Engine,
    pub sim: BTreeMap<String, Sim>,
    /// Instances whose health check fails on the target release.
    pub bad: BTreeSet<String>,
    /// Hosts that receive nothing and answer nothing (cut off).
    pub down: BTreeSet<String>,
    /// Hosts that accept commands but never answer.
    pub silent: BTreeSet<String>,
    /// Hosts that answer their stages but nothing after (a drain that hangs).
    pub mute_after_stage: BTreeSet<String>,
    /// Instances that cannot stage the target (a bad or unreachable artifact).
    pub bad_artifact: BTreeSet<String>,
    pub delay: u64,
    queue: BTreeMap<(u64, u64), (String, CommandId, CommandOutcome)>,
    seq: u64,
    journal: BTreeMap<CommandId, CommandOutcome>,
    /// Ids in the order the agents first ran them.
    pub executed: Vec<CommandId>,
    /// Every output with the time it came out, for determinism checks.
    pub log: Vec<String>,
    /// The same outputs as JSON.
    pub json: Vec<String>,
    pub sends: Vec<(u64, CommandId, String, CommandKind)>,
    pub waits: Vec<Option<String>>,
    pub persisted: String,
    pub floor: u32,
    pub min_capacity: u32,
    pub max_held: u32,
    pub zone_max_down: BTreeMap<String, u32>,
    /// Set when the floor can be broken by faults the test injects.
    pub faults: bool,
    /// Random command failures and hangs, for the seeded runs.
    pub chaos: Option<Chaos>,
    /// Instances whose load balancer refuses weight changes.
    pub weight_refused: BTreeSet<String>,
    /// Instances whose load balancer refuses this many weight changes
    /// first (a reload, a blip), then takes them.
    pub weight_flaky: BTreeMap<String, u32>,
    /// Every analysis look, in order.
    pub judgements: Vec<crate::rollout::traffic::StepJudgement>,
    /// Blue-green: the pre-traffic hook runs asked for, by attempt.
    pub hooks: Vec<u32>,
    /// Requests flowing through the load balancer, if any.
    pub load: Option<Load>,
}

/// Requests spread over serving instances by weight, each answered with an
/// error at its release's rate; counters as HAProxy keeps them.
#[derive(Debug, Clone)]
pub struct Load {
    /// Requests per tick over the whole fleet.
    pub per_tick: u64,
    /// Error rate per release version, in parts per million.
    pub error_ppm: BTreeMap<String, u64>,
    /// Latency per release version, in ms.
    pub latency_ms: BTreeMap<String, u32>,
    pub rng: Chaos,
    /// Per instance: requests, 5xx.
    pub counters: BTreeMap<String, (u64, u64)>,
    /// Requests answered by the target release, per tick: (tick, share of
    /// requests on v2 in parts per thousand).
    pub v2_share: Vec<(u64, u64)>,
}

impl Load {
    pub fn new(per_tick: u64, v1_ppm: u64, v2_ppm: u64) -> Load {
        Load {
            per_tick,
            error_ppm: BTreeMap::from([("v1".to_string(), v1_ppm), ("v2".to_string(), v2_ppm)]),
            latency_ms: BTreeMap::from([("v1".to_string(), 20), ("v2".to_string(), 20)]),
            rng: Chaos {
                rng: 0x9E37_79B9_7F4A_7C15,
                fail: 0,
                hang: 0,
            },
            counters: BTreeMap::new(),
            v2_share: Vec::new(),
        }
    }
}

/// Seeded faults on commands. A tiny xorshift keeps runs reproducible
/// without a dependency.
#[derive(Debug, Clone)]
pub struct Chaos {
    pub rng: u64,
    /// Per mille of commands that fail.
    pub fail: u64,
    /// Per mille of commands that never answer.
    pub hang: u64,
}

impl Chaos {
    pub fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl Fleet {
    pub fn start(spec: RolloutSpec, infos: Vec<InstanceInfo>) -> Fleet {
        Fleet::start_with(spec, infos, |_| {})
    }

    /// Starts the rollout after `setup` configured the fleet, so faults are
    /// in place before the first command goes out.
    pub fn start_with(
        spec: RolloutSpec,
        infos: Vec<InstanceInfo>,
        setup: impl FnOnce(&mut Fleet),
    ) -> Fleet {
        let sim = infos
            .iter()
            .map(|i| {
                let s = Sim {
                    host: i.host.clone(),
                    zone: i.labels.get("zone").cloned().unwrap_or_default(),
                    release: i.release.clone(),
                    healthy: i.healthy,
                    in_service: i.in_service,
                    weight: None,
                };
                (i.id.clone(), s)
            })
            .collect();
        let (engine, outs) = Engine::start("r1", spec, infos, Millis(0)).expect("rollout starts");
        let floor = engine.status().floor;
        let mut f = Fleet {
            now: 0,
            engine,
            sim,
            bad: BTreeSet::new(),
            down: BTreeSet::new(),
            silent: BTreeSet::new(),
            mute_after_stage: BTreeSet::new(),
            bad_artifact: BTreeSet::new(),
            delay: 2 * TICK,
            queue: BTreeMap::new(),
            seq: 0,
            journal: BTreeMap::new(),
            executed: Vec::new(),
            log: Vec::new(),
            json: Vec::new(),
            sends: Vec::new(),
            waits: Vec::new(),
            persisted: String::new(),
            floor,
            min_capacity: u32::MAX,
            max_held: 0,
            zone_max_down: BTreeMap::new(),
            faults: false,
            chaos: None,
            weight_refused: BTreeSet::new(),
            weight_flaky: BTreeMap::new(),
            judgements: Vec::new(),
            hooks: Vec::new(),
            load: None,
        };
        setup(&mut f);
        f.process(outs, None);
        f
    }

    pub fn status(&self) -> Status {
        self.engine.status()
    }

    pub fn step(&self, instance: &str) -> Step {
        self.status()
            .instances
            .iter()
            .find(|i| i.id == instance)
            .map(|i| i.step)
            .expect("known instance")
    }

    pub fn drains(&self) -> usize {
        self.sends
            .iter()
            .filter(|s| s.3 == CommandKind::Drain)
            .count()
    }

    pub fn truth_capacity(&self) -> u32 {
        u32::try_from(self.sim.values().filter(|s| s.serving()).count()).expect("small")
    }

    /// Feeds one input and checks the outputs.
    pub fn feed(&mut self, input: Input) -> Vec<Output> {
        let before = self.status();
        let outs = self.engine.handle(Millis(self.now), input);
        self.process(outs.clone(), Some(&before));
        outs
    }

    fn process(&mut self, outs: Vec<Output>, before: Option<&Status>) {
        for (n, o) in outs.iter().enumerate() {
            self.log.push(format!("{} {o:?}", self.now));
            self.json
                .push(serde_json::to_string(o).expect("outputs serialise"));
            match o {
                Output::Persist => {
                    assert_eq!(n, 0, "Persist must come first: {outs:?}");
                    self.persisted =
                        serde_json::to_string(self.engine.state()).expect("state serialises");
                }
                Output::Send {
                    id, instance, kind, ..
                } => {
                    assert!(
                        self.persisted.contains(&format!("\"{id}\"")),
                        "{id} sent before it was persisted"
                    );
                    let new = !self.sends.iter().any(|s| &s.1 == id);
                    // The engine holds an instance from its chain's first
                    // command (the stage): that is where taking it is judged.
                    if new && matches!(kind, CommandKind::Stage { .. }) {
                        self.check_take(instance, before);
                    }
                    self.sends
                        .push((self.now, id.clone(), instance.clone(), kind.clone()));
                    self.receive(id, instance, kind);
                }
                Output::WaitReason(w) => self.waits.push(w.as_ref().map(ToString::to_string)),
                Output::Judgement(j) => self.judgements.push((**j).clone()),
                Output::RunHook { attempt, .. } => self.hooks.push(*attempt),
                Output::Event(_) | Output::Finished(_) => {}
            }
        }
        self.observe();
    }

    /// Drover took `instance` (started its chain): capacity must stay at or
    /// above the floor unless the instance was not counted in it anyway.
    fn check_take(&self, instance: &str, before: Option<&Status>) {
        // The engine knew what the fleet reports; the input of this very call
        // may just have told it the instance went down.
        let sim = &self.sim[instance];
        let was_available = sim.serving()
            && !self.down.contains(&sim.host)
            && before.is_none_or(|s| s.instances.iter().any(|i| i.id == instance && i.available));
        let capacity = self.engine.status().capacity;
        assert!(
            !was_available || capacity >= self.floor,
            "taking {instance} left capacity {capacity} under floor {}\n{}",
            self.floor,
            self.tail()
        );
        if let (Some(spread), true) = (&self.engine.state().spec.spread_by, was_available) {
            let zone = &self.sim[instance].zone;
            let down = (self.engine.status().instances.iter())
                .filter(|i| &self.sim[&i.id].zone == zone && !i.available)
                .count();
            assert!(
                down <= spread.max_unavailable as usize,
                "taking {instance} left {down} down in zone {zone}\n{}",
                self.tail()
            );
        }
    }

    /// The last outputs, for failure messages.
    pub fn tail(&self) -> String {
        let from = self.log.len().saturating_sub(25);
        self.log[from..].join("\n")
    }

    fn observe(&mut self) {
        let status = self.engine.status();
        let held = status.counts.in_progress;
        self.max_held = self.max_held.max(held);
        let truth = self.truth_capacity();
        self.min_capacity = self.min_capacity.min(truth);
        if !self.faults {
            assert!(
                truth >= self.floor,
                "capacity {truth} under floor {} at {}",
                self.floor,
                self.now
            );
        }
        let mut down: BTreeMap<String, u32> = BTreeMap::new();
        for s in self.sim.values() {
            *down.entry(s.zone.clone()).or_insert(0) += u32::from(!s.serving());
        }
        for (z, d) in down {
            let m = self.zone_max_down.entry(z).or_insert(0);
            *m = (*m).max(d);
        }
    }

    /// The agent gets the command: runs it unless its journal already has
    /// the id, and answers after `delay`.
    fn receive(&mut self, id: &CommandId, instance: &str, kind: &CommandKind) {
        let Some(host) = self.sim.get(instance).map(|s| s.host.clone()) else {
            return;
        };
        if self.down.contains(&host) || self.silent.contains(&host) {
            return;
        }
        if self.mute_after_stage.contains(&host) && !matches!(kind, CommandKind::Stage { .. }) {
            return;
        }
        let outcome = match self.journal.get(id) {
            Some(o) => o.clone(),
            None => {
                if let Some(c) = &mut self.chaos {
                    let roll = c.below(1000);
                    if roll < c.hang {
                        return;
                    }
                    if roll < c.hang + c.fail {
                        let o = CommandOutcome::Failed("injected".to_string());
                        self.journal.insert(id.clone(), o.clone());
                        self.executed.push(id.clone());
                        self.queue_answer(instance, id, o);
                        return;
                    }
                }
                let o = self.run(instance, kind);
                self.journal.insert(id.clone(), o.clone());
                self.executed.push(id.clone());
                o
            }
        };
        self.queue_answer(instance, id, outcome);
    }

    fn queue_answer(&mut self, instance: &str, id: &CommandId, outcome: CommandOutcome) {
        self.seq += 1;
        let delay = match &mut self.chaos {
            Some(c) => TICK / 2 + c.below(4 * self.delay),
            None => self.delay,
        };
        self.queue.insert(
            (self.now + delay, self.seq),
            (instance.to_string(), id.clone(), outcome),
        );
    }

    fn run(&mut self, instance: &str, kind: &CommandKind) -> CommandOutcome {
        let bad = self.bad.contains(instance);
        let bad_artifact = self.bad_artifact.contains(instance);
        let weight_refused = self.weight_refused.contains(instance)
            || (matches!(kind, CommandKind::SetWeight { .. })
                && self.weight_flaky.get_mut(instance).is_some_and(|n| {
                    let refuse = *n > 0;
                    *n = n.saturating_sub(1);
                    refuse
                }));
        let Some(s) = self.sim.get_mut(instance) else {
            return CommandOutcome::Failed("no such instance".to_string());
        };
        match kind {
            CommandKind::Stage { release } if bad_artifact && *release == v2() => {
                return CommandOutcome::Failed("artifact checksum mismatch".to_string());
            }
            CommandKind::Stage { .. } => {}
            CommandKind::Drain => s.in_service = false,
            CommandKind::Stop => s.healthy = false,
            CommandKind::Deploy { release } => s.release = Some(release.clone()),
            CommandKind::Start => s.healthy = !(bad && s.release == Some(v2())),
            CommandKind::Verify { .. } => {
                if !s.healthy {
                    return CommandOutcome::Failed("health check failing".to_string());
                }
            }
            CommandKind::Undrain => s.in_service = true,
            CommandKind::SetWeight { .. } if weight_refused => {
                return CommandOutcome::Failed(
                    "haproxy 127.0.0.1:9999: connection refused".to_string(),
                );
            }
            CommandKind::SetWeight { weight } => s.weight = *weight,
        }
        CommandOutcome::Ok
    }

    /// What the agent recorded for `id`, if it ran.
    pub fn answer(&self, id: &CommandId) -> Option<CommandOutcome> {
        self.journal.get(id).cloned()
    }

    pub fn health(&mut self, instance: &str) {
        let s = self.sim[instance].clone();
        self.feed(Input::Health {
            instance: instance.to_string(),
            healthy: s.healthy,
            in_service: s.routed(),
            release: s.release,
        });
    }

    pub fn report_all(&mut self) {
        let ids: Vec<String> = self.sim.keys().cloned().collect();
        for id in ids {
            if !self.down.contains(&self.sim[&id].host) {
                self.health(&id);
            }
        }
    }

    /// The instance crashes on its own.
    pub fn kill(&mut self, instance: &str) {
        self.faults = true;
        if let Some(s) = self.sim.get_mut(instance) {
            s.healthy = false;
        }
        self.health(instance);
    }

    pub fn revive(&mut self, instance: &str) {
        if let Some(s) = self.sim.get_mut(instance) {
            s.healthy = true;
        }
        self.health(instance);
    }

    pub fn operator(&mut self, a: OperatorAction) -> Vec<Output> {
        self.feed(Input::Operator(a))
    }

    /// One second: due answers arrive (health first), then a tick.
    pub fn tick(&mut self) {
        self.now += TICK;
        while let Some((&key, _)) = self.queue.iter().next().filter(|(k, _)| k.0 <= self.now) {
            let Some((instance, id, outcome)) = self.queue.remove(&key) else {
                break;
            };
            self.health(&instance);
            self.feed(Input::CommandResult { id, outcome });
        }
        self.serve_load();
        self.feed(Input::Tick);
    }

    /// One tick of requests through the load balancer: each serving
    /// instance gets its weight's share (configured weight 1), answered
    /// with errors at its release's rate; every agent then reports its
    /// counters.
    fn serve_load(&mut self) {
        let Some(mut load) = self.load.take() else {
            return;
        };
        let weight = |s: &Sim| u64::from(s.weight.unwrap_or(1));
        let total: u64 = (self.sim.values())
            .filter(|s| s.serving())
            .map(weight)
            .sum();
        let (mut v2, mut all) = (0_u64, 0_u64);
        let ids: Vec<String> = self.sim.keys().cloned().collect();
        for id in &ids {
            let s = &self.sim[id];
            let version = s
                .release
                .as_ref()
                .map(|r| r.version.clone())
                .unwrap_or_default();
            let n = if s.serving() && total > 0 {
                load.per_tick * weight(s) / total
            } else {
                0
            };
            let ppm = load.error_ppm.get(&version).copied().unwrap_or(0);
            let errors = (0..n).filter(|_| load.rng.below(1_000_000) < ppm).count() as u64;
            let c = load.counters.entry(id.clone()).or_insert((0, 0));
            c.0 += n;
            c.1 += errors;
            all += n;
            if version == "v2" {
                v2 += n;
            }
        }
        if let Some(share) = (v2 * 1000).checked_div(all) {
            load.v2_share.push((self.now, share));
        }
        let reports: Vec<(String, (u64, u64), u32)> = (ids.iter())
            .filter(|id| !self.down.contains(&self.sim[*id].host))
            .map(|id| {
                let version = (self.sim[id].release.as_ref())
                    .map(|r| r.version.clone())
                    .unwrap_or_default();
                let ms = load.latency_ms.get(&version).copied().unwrap_or(0);
                (
                    id.clone(),
                    load.counters.get(id).copied().unwrap_or((0, 0)),
                    ms,
                )
            })
            .collect();
        self.load = Some(load);
        for (id, (requests, errors), ms) in reports {
            let sample = crate::rollout::traffic::TrafficSample {
                balancers: vec![crate::rollout::traffic::BalancerCounters {
                    balancer: "lb1".to_string(),
                    requests,
                    responses_5xx: errors,
                    response_errors: 0,
                    connection_errors: 0,
                    responses: requests,
                    response_time_ms: ms,
                }],
                app: None,
            };
            self.feed(Input::Traffic {
                instance: id,
                sample,
            });
        }
    }

    /// Ticks until `done` holds or the rollout ends; false on the time limit.
    pub fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Fleet) -> bool) -> bool {
        let end = self.now + limit_ms;
        while self.now < end {
            if done(self) {
                return true;
            }
            if self.engine.is_finished() {
                return false;
            }
            self.tick();
        }
        done(self)
    }

    pub fn run_to_end(&mut self, limit_ms: u64) {
        let finished = self.run_until(limit_ms, |f| f.engine.is_finished());
        assert!(finished, "rollout did not finish: {:#?}", self.status());
    }

    /// The coordinator dies: answers on the way are lost, the engine is
    /// rebuilt from the last persisted state only.
    pub fn crash_and_restore(&mut self) -> Vec<Output> {
        self.queue.clear();
        let state: RolloutState = serde_json::from_str(&self.persisted).expect("state parses");
        let (engine, outs) = Engine::restore(state, Millis(self.now));
        self.engine = engine;
        self.process(outs.clone(), None);
        self.report_all();
        outs
    }

    pub fn host_lost(&mut self, host: &str) {
        self.faults = true;
        self.down.insert(host.to_string());
        let sim = &self.sim;
        self.queue
            .retain(|_, (instance, _, _)| sim.get(instance).is_none_or(|s| s.host != host));
        self.feed(Input::HostLost {
            host: host.to_string(),
        });
    }

    pub fn host_back(&mut self, host: &str) {
        self.down.remove(host);
        self.feed(Input::HostBack {
            host: host.to_string(),
        });
        let ids: Vec<String> = (self.sim.iter())
            .filter(|(_, s)| s.host == host)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.health(&id);
        }
    }
}
