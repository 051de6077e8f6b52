//! The fleet simulator behind `drover-fleetsim`: thousands of simulated
//! agents, each with its own certificate and mutual-TLS session, against a
//! real `drover-coordinator` process, measuring what the coordinator costs
//! and how quickly it reacts.
//!
//! - [`fleet`]: scenario 1, fleet scale: connect N hosts, hold them at a
//!   report interval, measure connect time, report-to-visible latency,
//!   coordinator CPU and memory, and `drover agents -o json`; on redb or,
//!   with [`etcd`], on etcd with its write rate, CPU and memory.
//! - [`rollout`]: scenario 2, rollout overhead: roll a service across the
//!   simulated instances with steps answered instantly or after a delay.
//! - [`floor`]: the floor under scenario 2: the same hosts and message
//!   pattern driven by a bare tonic + rustls server with no drover logic,
//!   for what the stack itself allows.
//!
//! Figures go to stdout as one JSON object per run, a readable summary to
//! stderr. Coordinator, simulator and CLI share the machine; every figure
//! says so.

pub mod conn;
pub mod env;
pub mod etcd;
pub mod fleet;
pub mod floor;
pub mod host;
pub mod probe;
pub mod procfs;
pub mod rollout;
pub mod stats;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};

/// How long a simulated agent takes to carry out one rollout step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDelay {
    Zero,
    Fixed(Duration),
    /// Uniformly random in the range.
    Uniform(Duration, Duration),
}

impl StepDelay {
    pub fn sample(&self) -> Duration {
        match *self {
            StepDelay::Zero => Duration::ZERO,
            StepDelay::Fixed(d) => d,
            StepDelay::Uniform(a, b) => {
                let span = b.saturating_sub(a);
                a + span.mul_f64(rand::random::<f64>())
            }
        }
    }

    /// The mean step time, for the theoretical minimum of a rollout.
    pub fn mean(&self) -> Duration {
        match *self {
            StepDelay::Zero => Duration::ZERO,
            StepDelay::Fixed(d) => d,
            StepDelay::Uniform(a, b) => (a + b) / 2,
        }
    }
}

impl FromStr for StepDelay {
    type Err = String;

    /// `0`, `100ms`, or a range `50ms..150ms`.
    fn from_str(s: &str) -> Result<StepDelay, String> {
        let parse = |x: &str| {
            humantime::parse_duration(x.trim())
                .map_err(|e| format!("`{x}`: {e} (expected e.g. 0, 100ms, 50ms..150ms)"))
        };
        let s = s.trim();
        if s == "0" {
            return Ok(StepDelay::Zero);
        }
        if let Some((a, b)) = s.split_once("..") {
            let (a, b) = (parse(a)?, parse(b)?);
            if b < a {
                return Err(format!("`{s}`: the range ends before it starts"));
            }
            return Ok(StepDelay::Uniform(a, b));
        }
        let d = parse(s)?;
        Ok(if d.is_zero() {
            StepDelay::Zero
        } else {
            StepDelay::Fixed(d)
        })
    }
}

impl fmt::Display for StepDelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| humantime::format_duration(d).to_string();
        match *self {
            StepDelay::Zero => write!(f, "0"),
            StepDelay::Fixed(d) => write!(f, "{}", ms(d)),
            StepDelay::Uniform(a, b) => write!(f, "{}..{}", ms(a), ms(b)),
        }
    }
}

/// Options as their flags' defaults.
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let cmd = T::augment_args(clap::Command::new("defaults"));
    let matches = cmd.get_matches_from(["defaults"]);
    match T::from_arg_matches(&matches) {
        Ok(t) => t,
        Err(e) => panic!("the flags' defaults do not parse: {e}"),
    }
}

/// A quick run of both scenarios: 50 hosts for a few seconds, then a
/// rollout over 50 instances with steps taking 0 and 20 ms. Returns every
/// figures object.
pub fn smoke(dir: Option<&std::path::Path>) -> anyhow::Result<Vec<Value>> {
    let sub = |name: &str| dir.map(|d| d.join(name));
    let mut fleet_opts: fleet::FleetOptions = defaults();
    fleet_opts.hosts = 50;
    fleet_opts.interval = Duration::from_millis(200);
    fleet_opts.warmup = Duration::from_secs(1);
    fleet_opts.steady = Duration::from_secs(2);
    fleet_opts.latency_window = Duration::from_secs(2);
    fleet_opts.watch_selector = String::new();
    fleet_opts.agents_json_runs = 1;
    fleet_opts.common.dir = sub("fleet");
    let mut all = vec![fleet::run(&fleet_opts)?];
    let mut rollout_opts: rollout::RolloutOptions = defaults();
    rollout_opts.instances = 50;
    rollout_opts.interval = Duration::from_millis(500);
    rollout_opts.step_delays = vec![StepDelay::Zero, StepDelay::Fixed(Duration::from_millis(20))];
    rollout_opts.settle = Duration::from_secs(1);
    rollout_opts.rollout_timeout = Duration::from_secs(120);
    rollout_opts.common.dir = sub("rollout");
    all.extend(rollout::run(&rollout_opts)?);
    Ok(all)
}

/// The machine the figures were taken on, for every JSON object.
pub fn machine() -> Value {
    json!({
        "cores": procfs::cores(),
        "mem_mib": procfs::mem_total_mib().map(|m| m.round()),
        "loadavg_at_start": procfs::loadavg(),
        "shared": "coordinator, simulator and CLI run on this one machine",
    })
}

/// Prints one figures object as a JSON line on stdout.
pub fn emit(figures: &Value) {
    println!("{figures}");
}

/// A target from the issue and whether it was met; `None` when not
/// measured.
pub fn target(name: &str, value: Option<f64>, limit: f64) -> (String, Value) {
    (
        name.to_string(),
        json!({
            "limit": limit,
            "value": value.map(stats::round3),
            "met": value.map(|v| v < limit),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_step_delays() {
        assert_eq!("0".parse::<StepDelay>(), Ok(StepDelay::Zero));
        assert_eq!("0s".parse::<StepDelay>(), Ok(StepDelay::Zero));
        assert_eq!(
            "100ms".parse::<StepDelay>(),
            Ok(StepDelay::Fixed(Duration::from_millis(100)))
        );
        assert_eq!(
            "50ms..150ms".parse::<StepDelay>(),
            Ok(StepDelay::Uniform(
                Duration::from_millis(50),
                Duration::from_millis(150)
            ))
        );
        assert!("150ms..50ms".parse::<StepDelay>().is_err());
        assert!("soon".parse::<StepDelay>().is_err());
        let u = StepDelay::Uniform(Duration::from_millis(50), Duration::from_millis(150));
        for _ in 0..100 {
            let d = u.sample();
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(150));
        }
        assert_eq!(u.mean(), Duration::from_millis(100));
    }

    #[test]
    fn flag_defaults_parse() {
        let f: fleet::FleetOptions = defaults();
        assert_eq!(f.hosts, 1000);
        assert_eq!(f.interval, Duration::from_secs(1));
        let r: rollout::RolloutOptions = defaults();
        assert_eq!(
            r.step_delays,
            vec![
                StepDelay::Zero,
                StepDelay::Fixed(Duration::from_millis(100))
            ]
        );
        assert_eq!(r.common.connect_concurrency, 128);
    }
}
