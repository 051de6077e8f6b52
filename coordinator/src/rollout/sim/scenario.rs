//! What one seed simulates: the fleet, the rollout spec and how hostile the
//! world is. Drawn from the seed before anything runs, so a trace can open
//! with the whole setup.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::rng::Rng;
use drover_model::strategy::parse_steps;
use drover_model::{AnalysisSpec, OnInconclusive, Strategy};

use crate::rollout::{
    Amount, BalancerInfo, InstanceInfo, LostHostPolicy, Release, RolloutSpec, Spread,
};

pub const SERVICE: &str = "web";

pub fn release(version: &str, fill: char) -> Release {
    Release::new(version, std::iter::repeat_n(fill, 64).collect::<String>())
}

pub fn old() -> Release {
    release("v1", 'a')
}

pub fn target() -> Release {
    release("v2", 'b')
}

/// One target instance and the faults built into it.
#[derive(Debug, Clone)]
pub struct Member {
    pub info: InstanceInfo,
    /// Its health check fails once it runs the target release.
    pub bad: bool,
}

/// Kinds of fault the chaos clock injects; weights are drawn per seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chaos {
    /// An instance not being worked on crashes; its supervisor may restart it.
    CrashInstance,
    /// An instance's health check flaps a few times.
    Flap,
    /// A short network blip: the session drops and comes back before the
    /// registry calls the host lost.
    Blip,
    /// A long disconnect: the registry reports the host lost, then back.
    Disconnect,
    /// The agent process restarts: running steps are cut off, the journal
    /// survives and is replayed.
    AgentRestart,
    /// The host never comes back.
    LoseHost,
    /// The coordinator dies between steps.
    CoordinatorCrash,
    /// Pause, resume, abort or rollback.
    Operator,
}

impl Chaos {
    pub const ALL: [Chaos; 8] = [
        Chaos::CrashInstance,
        Chaos::Flap,
        Chaos::Blip,
        Chaos::Disconnect,
        Chaos::AgentRestart,
        Chaos::LoseHost,
        Chaos::CoordinatorCrash,
        Chaos::Operator,
    ];
}

/// How hostile one seed's world is. Rates are per mille.
#[derive(Debug, Clone)]
pub struct Profile {
    /// No faults at all beyond the fleet's own (bad releases, instances
    /// unhealthy or unreachable at the start, slow networks). The checker
    /// then also holds the world's real capacity to the floor.
    pub calm: bool,
    /// A command fails (sometimes after doing part of its work).
    pub cmd_fail: u32,
    /// A command hangs until the agent kills it at its timeout.
    pub cmd_hang: u32,
    /// A command is slow: anywhere up to a little past its timeout.
    pub cmd_slow: u32,
    /// A failed or cut-off command did its work anyway.
    pub partial: u32,
    /// A message is delivered twice.
    pub dup: u32,
    /// Network delay per message, in ms.
    pub delay: (u64, u64),
    /// The coordinator takes several queued inputs in one pass (one write,
    /// then the sends), as the runtime does, waiting up to this long.
    pub batch_ms: u64,
    /// Ticks come at the engine's next deadline and at least this often...
    pub tick_ms: u64,
    /// ...up to this late (a busy runtime's timer), so inputs can arrive
    /// after a deadline passed and before the tick that would notice it.
    pub tick_late_ms: u64,
    /// After a session drops, the registry reports the host lost this much later.
    pub lost_ms: u64,
    /// Agents send a full health report this often (0: only on change).
    pub report_ms: u64,
    /// Mean time between chaos events; 0 for a calm world.
    pub chaos_ms: u64,
    pub chaos_weights: [u32; 8],
    /// Chance that a coordinator pass crashes before its write, and that
    /// it crashes between two of its sends.
    pub crash_before_write: u32,
    pub crash_between_sends: u32,
    /// A disconnect loses the results in flight (otherwise the agent's
    /// outbox keeps them for the next session).
    pub lose_in_flight: u32,
    pub max_crashes: u32,
    pub max_operator: u32,
    pub max_chaos: u32,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub seed: u64,
    pub spec: RolloutSpec,
    pub fleet: Vec<Member>,
    pub profile: Profile,
    /// Per mille: a stage of the target release fails (1000: the artifact
    /// is bad, every host refuses it; less: unreachable from some hosts).
    pub stage_fail: u32,
    /// A canary rollout: its traffic and its operator (`None`: rolling).
    /// Blue-green seeds have one too: their traffic is a canary's.
    pub canary: Option<CanaryProfile>,
    /// A blue-green rollout: its hook and its operator (`None`: not one).
    pub blue_green: Option<BlueGreenProfile>,
}

/// How a blue-green seed's hook answers and what its operator does.
#[derive(Debug, Clone)]
pub struct BlueGreenProfile {
    /// Per mille: a run of the pre-traffic hook fails.
    pub hook_fail: u32,
    /// How long a run of the hook takes, in ms.
    pub hook_ms: (u64, u64),
    /// Per mille per look while the old color is kept: the operator rolls
    /// back.
    pub rollback_in_keep: u32,
}

/// The requests a canary seed's fleet serves, and how each release answers.
#[derive(Debug, Clone)]
pub struct CanaryProfile {
    /// Requests per second over the whole fleet (0 or tiny: inconclusive).
    pub rps: u64,
    /// Error rates, per million requests.
    pub v1_ppm: u64,
    pub v2_ppm: u64,
    /// HAProxy's rtime per release, in ms.
    pub v1_ms: u32,
    pub v2_ms: u32,
    /// Agents read and report their load balancer's counters this often.
    pub period_ms: u64,
    /// Per mille per period: the load balancer restarts and its counters
    /// start again from 0 (the agents re-assert their weights).
    pub counter_reset: u32,
    /// A simulated operator looks at the rollout this often (0: never) and
    /// promotes, resumes or rolls back a held step.
    pub watch_ms: u64,
    /// Per mille: an operator chaos action is a promote instead.
    pub promote: u32,
}

/// The canary seeds' own stream: drawn from the seed apart from every
/// other draw, so a seed that stays rolling draws what it always drew.
const CANARY_STREAM: u64 = 0xBB67_AE85_84CA_A73B;
/// The blue-green seeds' own stream, drawn only for seeds that are not
/// canaries, so canary seeds stay what they were.
const BLUE_GREEN_STREAM: u64 = 0x510E_527F_ADE6_82D1;

fn amount(rng: &mut Rng, max_count: u32, percents: &[u32]) -> Amount {
    if rng.chance(500) {
        Amount::Count(rng.range_u32(0, max_count))
    } else {
        Amount::Percent(*rng.pick(percents))
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Scenario {
    pub fn generate(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed);
        let n = match rng.below(100) {
            0..40 => rng.range(1, 8),
            40..78 => rng.range(9, 40),
            78..94 => rng.range(41, 100),
            _ => rng.range(101, 200),
        };
        let n = u32::try_from(n).unwrap_or(1);
        let fleet = fleet(&mut rng, n);
        let spec = spec(&mut rng, n);
        let profile = profile(&mut rng);
        // Drawn last so every earlier draw, and so every older seed's
        // world, stays what it was.
        let stage_fail = *rng.pick(&[0, 0, 0, 0, 0, 0, 0, 0, 300, 1000]);
        let mut sc = Scenario {
            seed,
            spec,
            fleet,
            profile,
            stage_fail,
            canary: None,
            blue_green: None,
        };
        let mut crng = Rng::new(seed ^ CANARY_STREAM);
        if crng.chance(250) {
            sc.make_canary(&mut crng);
        } else {
            let mut brng = Rng::new(seed ^ BLUE_GREEN_STREAM);
            if brng.chance(150) {
                sc.make_canary(&mut brng);
                sc.make_blue_green(&mut brng);
            }
        }
        sc
    }

    /// Turns a canary seed into a blue-green one: each host keeps one
    /// instance, doubled into a blue one (as drawn: it serves, or not) and a
    /// green one (idle: drained, healthy, on the release drawn or the old
    /// one); the spec gets keep-old, maybe a hook, and a floor of one color.
    fn make_blue_green(&mut self, rng: &mut Rng) {
        let mut pairs = Vec::new();
        let mut hosts = std::collections::BTreeSet::new();
        for m in &self.fleet {
            if pairs.len() >= 2 * 40 || !hosts.insert(m.info.host.clone()) {
                continue;
            }
            let blue = Member {
                info: InstanceInfo {
                    id: format!("{SERVICE}-blue@{}", m.info.host),
                    color: Some(drover_model::Color::Blue),
                    ..m.info.clone()
                },
                bad: false,
            };
            let green = Member {
                info: InstanceInfo {
                    id: format!("{SERVICE}-green@{}", m.info.host),
                    color: Some(drover_model::Color::Green),
                    in_service: false,
                    healthy: true,
                    release: if rng.chance(100) {
                        Some(target())
                    } else {
                        m.info.release.clone().or_else(|| Some(old()))
                    },
                    ..m.info.clone()
                },
                bad: m.bad,
            };
            pairs.push(blue);
            pairs.push(green);
        }
        self.fleet = pairs;
        let colors = u32::try_from(self.fleet.len() / 2).unwrap_or(1);
        let spec = &mut self.spec;
        spec.strategy = Strategy::BlueGreen;
        let steps = *rng.pick(&["10%,50%,100%", "10%,25%,50%,100%", "100%", "50%,100%"]);
        spec.steps = parse_steps(steps).unwrap_or_default();
        spec.keep_old = Some(secs(rng.range(5, 300)));
        spec.pre_traffic_hook = rng.chance(600).then(|| "smoke".to_string());
        spec.min_healthy = match rng.below(4) {
            0 => Amount::Percent(100),
            1 => Amount::Count(colors),
            2 => Amount::Percent(*rng.pick(&[50, 75, 90])),
            _ => Amount::Count(rng.range_u32(0, colors + 1)),
        };
        // The hook and keep-old are no lack of progress for the checker.
        self.blue_green = Some(BlueGreenProfile {
            hook_fail: *rng.pick(&[0, 0, 100, 300, 1000]),
            hook_ms: (rng.range(10, 500), rng.range(500, 20_000)),
            rollback_in_keep: *rng.pick(&[0, 0, 100, 500]),
        });
        if let Some(c) = &mut self.canary
            && c.watch_ms == 0
            && self
                .blue_green
                .as_ref()
                .is_some_and(|b| b.rollback_in_keep > 0)
        {
            c.watch_ms = 20_000;
        }
    }

    /// Turns the seed's rolling update into a canary: strategy, steps,
    /// bake and analysis from `rng`, one load balancer per instance, and
    /// the traffic the fleet serves.
    fn make_canary(&mut self, rng: &mut Rng) {
        let steps = *rng.pick(&[
            "10%,100%",
            "5%,25%,50%,100%",
            "20%,50%,100%",
            "1%,100%",
            "50%,100%",
        ]);
        let bake = rng.range(20, 180);
        let interval = rng.range(2, 10);
        let warmup = rng.range(0, bake / 2);
        let max_analysis = bake + *rng.pick(&[0, 0, 30, 120]);
        let on_inconclusive = *rng.pick(&[
            OnInconclusive::Pause,
            OnInconclusive::Pause,
            OnInconclusive::Fail,
            OnInconclusive::Pass,
        ]);
        let min_requests = rng.range(50, 500);
        let spec = &mut self.spec;
        spec.strategy = Strategy::Canary;
        spec.batches = vec![Amount::Count(1)];
        spec.steps = parse_steps(steps).unwrap_or_default();
        spec.bake = Some(secs(bake));
        spec.analysis = AnalysisSpec {
            interval: secs(interval),
            warmup: Some(secs(warmup)),
            max_analysis: Some(secs(max_analysis)),
            on_inconclusive,
            min_requests,
            ..AnalysisSpec::default()
        };
        // The bake's warm-up and first look are no lack of progress: a
        // deadline shorter than them would roll back every canary.
        let quiet = secs(warmup + 2 * interval + 10);
        spec.progress_deadline = spec.progress_deadline.max(quiet);
        for m in &mut self.fleet {
            m.info.balancers = vec![BalancerInfo {
                balancer: "lb1".to_string(),
                backend: SERVICE.to_string(),
                algorithm: "roundrobin".to_string(),
                dynamic: true,
                counted: true,
            }];
        }
        let rps = *rng.pick(&[0, 1, 20, 200, 200, 500, 2_000]);
        let v1_ppm = *rng.pick(&[0, 1_000, 5_000, 10_000]);
        let bad = rng.chance(350);
        let v2_ppm = if !bad {
            v1_ppm
        } else if v1_ppm == 0 {
            rng.range(20_000, 100_000)
        } else {
            (v1_ppm * rng.range(5, 20)).min(1_000_000)
        };
        let v1_ms = rng.range_u32(5, 60);
        let v2_ms = if rng.chance(150) { v1_ms + 100 } else { v1_ms };
        self.canary = Some(CanaryProfile {
            rps,
            v1_ppm,
            v2_ppm,
            v1_ms,
            v2_ms,
            period_ms: rng.range(1_000, 5_000),
            counter_reset: if self.profile.calm {
                0
            } else {
                *rng.pick(&[0, 0, 5, 20])
            },
            watch_ms: *rng.pick(&[0, 20_000, 60_000]),
            promote: *rng.pick(&[0, 200, 500]),
        });
    }

    pub fn infos(&self) -> Vec<InstanceInfo> {
        self.fleet.iter().map(|m| m.info.clone()).collect()
    }

    /// The opening lines of a trace.
    pub fn describe(&self) -> String {
        let s = &self.spec;
        let mut out = String::new();
        let batches: Vec<String> = s.batches.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "spec: {} instances, batches {}, min_healthy {}, max_unavailable {}, max_failures {}, \
             max_unreachable {}, auto_rollback {}, spread_by {}, lost_hosts {:?}",
            self.fleet.len(),
            batches.join(","),
            s.min_healthy,
            s.max_unavailable
                .map_or_else(|| "-".to_string(), |a| a.to_string()),
            s.max_failures,
            s.max_unreachable,
            s.auto_rollback,
            s.spread_by.as_ref().map_or_else(
                || "-".to_string(),
                |sp| format!("{}:{}", sp.label, sp.max_unavailable)
            ),
            s.lost_hosts,
        );
        let _ = writeln!(
            out,
            "timing: min_healthy_time {:?}, healthy_deadline {:?}, step_timeout {:?}, progress_deadline {:?}",
            s.min_healthy_time, s.healthy_deadline, s.step_timeout, s.progress_deadline
        );
        let p = &self.profile;
        let _ = writeln!(out, "stage of the target fails {}‰", self.stage_fail);
        let _ = writeln!(
            out,
            "world: calm {} fail {}‰ hang {}‰ slow {}‰ partial {}‰ dup {}‰ delay {:?}ms batch {}ms tick {}ms (late {}ms) \
             lost after {}ms reports every {}ms chaos every ~{}ms {:?} crash-before-write {}‰ crash-between-sends {}‰",
            p.calm,
            p.cmd_fail,
            p.cmd_hang,
            p.cmd_slow,
            p.partial,
            p.dup,
            p.delay,
            p.batch_ms,
            p.tick_ms,
            p.tick_late_ms,
            p.lost_ms,
            p.report_ms,
            p.chaos_ms,
            p.chaos_weights,
            p.crash_before_write,
            p.crash_between_sends
        );
        if let Some(c) = &self.canary {
            let a = &s.analysis;
            let steps: Vec<String> = s.steps.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "canary: steps {}, bake {:?}, interval {:?}, warmup {:?}, max_analysis {:?}, \
                 on_inconclusive {:?}, min_requests {}; {} req/s, errors v1 {}ppm v2 {}ppm, \
                 rtime v1 {}ms v2 {}ms, counters every {}ms (reset {}‰), operator watches every {}ms, promote {}‰",
                steps.join(","),
                s.bake_time(),
                a.interval,
                a.warmup,
                a.max_analysis,
                a.on_inconclusive,
                a.min_requests,
                c.rps,
                c.v1_ppm,
                c.v2_ppm,
                c.v1_ms,
                c.v2_ms,
                c.period_ms,
                c.counter_reset,
                c.watch_ms,
                c.promote
            );
        }
        if let Some(b) = &self.blue_green {
            let _ = writeln!(
                out,
                "blue-green: keep_old {:?}, pre_traffic_hook {:?} (fails {}‰, runs {:?}ms), \
                 operator rolls back {}‰ per look while the old color is kept",
                s.keep_old_time(),
                s.pre_traffic_hook,
                b.hook_fail,
                b.hook_ms,
                b.rollback_in_keep
            );
        }
        for m in &self.fleet {
            let i = &m.info;
            let _ = writeln!(
                out,
                "  {} zone={} release={} healthy={} reachable={}{}",
                i.id,
                i.labels.get("zone").map_or("-", String::as_str),
                i.release
                    .as_ref()
                    .map_or_else(|| "none".to_string(), |r| r.version.clone()),
                i.healthy,
                i.reachable,
                if m.bad { " (fails on v2)" } else { "" }
            );
        }
        out
    }
}

fn fleet(rng: &mut Rng, n: u32) -> Vec<Member> {
    let zones = rng.range(1, 4);
    let p_bad = *rng.pick(&[0, 0, 0, 10, 50, 200]);
    let p_on_target = *rng.pick(&[0, 0, 50, 200]);
    let p_unhealthy = *rng.pick(&[0, 0, 20, 60]);
    let p_unreachable = *rng.pick(&[0, 0, 0, 20]);
    let p_shared_host = *rng.pick(&[0, 0, 300]);
    let mut out: Vec<Member> = Vec::new();
    let mut host = 0u32;
    let mut on_host = 0u32;
    for k in 0..n {
        // Sometimes a second instance shares the previous one's host.
        if k == 0 || on_host >= 2 || !rng.chance(p_shared_host) {
            host += 1;
            on_host = 0;
        }
        on_host += 1;
        let host_id = format!("h{host:03}");
        let id = if on_host == 1 {
            format!("{SERVICE}@{host_id}")
        } else {
            format!("{SERVICE}@{host_id}#{on_host}")
        };
        let mut labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
        if !rng.chance(30) {
            let z = ["a", "b", "c", "d"][usize::try_from(rng.below(zones)).unwrap_or(0)];
            labels.insert("zone".to_string(), z.to_string());
        }
        let release = if rng.chance(p_on_target) {
            Some(target())
        } else if rng.chance(30) {
            None
        } else {
            Some(old())
        };
        // Instances on one host share its reachability.
        let reachable = match out.last() {
            Some(prev) if prev.info.host == host_id => prev.info.reachable,
            _ => !rng.chance(p_unreachable),
        };
        // Only a deploy of the target breaks an instance's health check.
        let bad = rng.chance(p_bad) && release != Some(target());
        out.push(Member {
            info: InstanceInfo {
                id,
                host: host_id,
                labels,
                release,
                healthy: !rng.chance(p_unhealthy),
                in_service: true,
                reachable,
                balancers: Vec::new(),
                color: None,
            },
            bad,
        });
    }
    out
}

fn spec(rng: &mut Rng, n: u32) -> RolloutSpec {
    let mut batches = Vec::new();
    for _ in 0..rng.range(1, 3) {
        batches.push(if rng.chance(500) {
            Amount::Count(rng.range_u32(1, 5))
        } else {
            Amount::Percent(*rng.pick(&[5, 10, 25, 50, 100]))
        });
    }
    // Floors mostly leave room to work; sometimes none, sometimes too much.
    let min_healthy = match rng.below(10) {
        0 => Amount::Count(rng.range_u32(0, n)),
        1 => Amount::Percent(rng.range_u32(0, 100)),
        2..6 => Amount::Count(n.saturating_sub(rng.range_u32(1, 4))),
        _ => Amount::Percent(*rng.pick(&[0, 25, 50, 60, 75, 80, 90])),
    };
    let min_healthy_time = rng.range(1, 8);
    let healthy_deadline = min_healthy_time + rng.range(2, 40);
    let step_timeout = rng.range(3, 45);
    let progress = healthy_deadline + step_timeout + rng.range(1, 240);
    RolloutSpec {
        service: SERVICE.to_string(),
        selector: "env=prod".to_string(),
        target: target(),
        batches,
        max_unavailable: match rng.below(4) {
            0 => Some(Amount::Count(rng.range_u32(1, 4))),
            1 => Some(Amount::Percent(*rng.pick(&[10, 20, 50]))),
            _ => None,
        },
        min_healthy,
        min_healthy_time: secs(min_healthy_time),
        healthy_deadline: secs(healthy_deadline),
        progress_deadline: secs(progress),
        max_failures: amount(rng, 6, &[0, 10, 25, 50]),
        max_unreachable: amount(rng, 3, &[0, 5, 10, 30]),
        auto_rollback: rng.chance(500),
        spread_by: rng.chance(350).then(|| Spread {
            label: "zone".to_string(),
            max_unavailable: rng.range_u32(1, 3),
        }),
        lost_hosts: if rng.chance(500) {
            LostHostPolicy::Skip
        } else {
            LostHostPolicy::Wait
        },
        step_timeout: secs(step_timeout),
        ..RolloutSpec::default()
    }
}

fn profile(rng: &mut Rng) -> Profile {
    // A quarter of the seeds run in a calm world, so that plain success is
    // checked as often as the storms.
    let calm = rng.chance(250);
    let rate = |rng: &mut Rng, choices: &[u32]| if calm { 0 } else { *rng.pick(choices) };
    let max_delay = *rng.pick(&[5, 50, 400, 3000]);
    let mut chaos_weights = [0u32; 8];
    for w in &mut chaos_weights {
        *w = if rng.chance(700) {
            rng.range_u32(1, 10)
        } else {
            0
        };
    }
    Profile {
        calm,
        cmd_fail: rate(rng, &[0, 2, 8, 30]),
        cmd_hang: rate(rng, &[0, 1, 5, 15]),
        cmd_slow: rate(rng, &[0, 10, 50]),
        partial: rng.range_u32(0, 1000),
        dup: rate(rng, &[0, 10, 50, 200]),
        delay: (rng.range(1, 5), max_delay),
        batch_ms: *rng.pick(&[0, 0, 5, 50]),
        tick_ms: *rng.pick(&[1_000, 5_000, 30_000]),
        tick_late_ms: *rng.pick(&[0, 0, 20, 300]),
        lost_ms: rng.range(2_000, 20_000),
        report_ms: *rng.pick(&[0, 10_000, 30_000, 60_000]),
        chaos_ms: if calm {
            0
        } else {
            *rng.pick(&[5_000, 20_000, 60_000, 180_000])
        },
        chaos_weights,
        crash_before_write: rate(rng, &[0, 0, 2, 10]),
        crash_between_sends: rate(rng, &[0, 0, 2, 10]),
        lose_in_flight: rng.range_u32(0, 1000),
        max_crashes: rng.range_u32(0, 4),
        max_operator: rng.range_u32(0, 5),
        max_chaos: rng.range_u32(0, 40),
    }
}
