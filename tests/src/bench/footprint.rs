//! Scenario 3, agent footprint: one real `drover-agent` supervising two
//! drover-sample instances, each checked over HTTP every 2 s, reporting
//! every 5 s to a real coordinator over mTLS, left idle; and beside it, in
//! the same window, an idle `salt-minion` connected to a local
//! `salt-master` when a Salt virtualenv is given. Measured over the window:
//! peak RSS (VmHWM), RSS, PSS and the average CPU (utime + stime from
//! /proc) as a share of one core.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{ProcSample, load_avg, mib, note, process_tree, round, sample, secs};
use crate::harness::process::{Proc, run_cmd};
use crate::harness::{free_port, pause, tail, wait_until_with};
use crate::{AgentSpec, Fleet, InstanceSpec};

/// How a footprint run goes.
#[derive(Debug, Clone)]
pub struct FootprintOpts {
    /// The measured window.
    pub duration: Duration,
    /// Idle time after everything is up and before the window opens.
    pub warmup: Duration,
    /// A virtualenv's `bin` dir holding `salt-master` and `salt-minion`;
    /// `None` measures drover alone.
    pub salt_bin: Option<PathBuf>,
    /// More `drover-agent` builds to measure beside the one next to this
    /// binary, in the same window: (label, path), e.g. ("dist",
    /// target/dist/drover-agent).
    pub other_agents: Vec<(String, PathBuf)>,
}

const HOST: &str = "footprint";
const HEALTH_INTERVAL: &str = "2s";
const REPORT_INTERVAL: &str = "5s";
/// The coordinator's default: the harness's 3 s is for tests that report
/// every 500 ms.
pub const LOST_TIMEOUT: &str = "15s";
/// How often RSS is sampled inside the window.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Runs the scenario; one JSON object per subject (drover-agent,
/// salt-minion).
pub fn run(opts: &FootprintOpts) -> Vec<Value> {
    // (subject, host id, binary)
    let mut variants: Vec<(String, String, Option<PathBuf>)> =
        vec![("drover-agent".to_string(), HOST.to_string(), None)];
    for (label, path) in &opts.other_agents {
        variants.push((
            format!("drover-agent ({label})"),
            format!("{HOST}-{label}"),
            Some(path.clone()),
        ));
    }
    let mut builder = Fleet::builder().lost_timeout(LOST_TIMEOUT);
    for (_, host, binary) in &variants {
        let mut agent = AgentSpec::new(host)
            .report_interval(REPORT_INTERVAL)
            .no_instances()
            .instance(instance("web"))
            .instance(instance("api"));
        agent.binary.clone_from(binary);
        builder = builder.agent(agent);
    }
    note(&format!(
        "starting a coordinator and {} agent(s) with two instances each",
        variants.len()
    ));
    let fleet = builder.start();
    let pids: Vec<u32> = variants
        .iter()
        .map(|(_, host, _)| fleet.agent(host).pid().expect("the agent runs"))
        .collect();

    let mut salt = match &opts.salt_bin {
        None => Err("no Salt virtualenv given (--salt-venv)".to_string()),
        Some(bin) => Salt::start(bin, &fleet.dir.join("salt")),
    };
    if let Err(e) = &salt {
        note(&format!("salt-minion not measured: {e}"));
    }

    note(&format!(
        "warming up for {}s, then measuring for {}s",
        opts.warmup.as_secs(),
        opts.duration.as_secs()
    ));
    pause(opts.warmup);
    let load_start = load_avg();
    let salt_root = salt.as_ref().ok().map(|s| s.minion.pid());
    let starts: Vec<ProcSample> = pids
        .iter()
        .map(|p| sample(*p).expect("the agent runs"))
        .collect();
    let salt_start = salt_root.map(tree_sample);
    let started = Instant::now();
    let mut rss_max: Vec<u64> = starts.iter().map(|s| s.rss_kib).collect();
    let mut salt_rss_max = salt_start.map_or(0, |s| s.rss_kib);
    let rounds = (opts.duration.as_millis() / SAMPLE_EVERY.as_millis()).max(1);
    for i in 1..=rounds {
        let due = SAMPLE_EVERY * u32::try_from(i).unwrap_or(u32::MAX);
        pause(due.saturating_sub(started.elapsed()));
        for (max, pid) in rss_max.iter_mut().zip(&pids) {
            if let Some(s) = sample(*pid) {
                *max = (*max).max(s.rss_kib);
            }
        }
        if let Some(root) = salt_root {
            salt_rss_max = salt_rss_max.max(tree_sample(root).rss_kib);
        }
    }
    let window = started.elapsed();
    let ends: Vec<ProcSample> = pids
        .iter()
        .map(|p| sample(*p).expect("the agent still runs"))
        .collect();
    let salt_end = salt_root.map(tree_sample);
    let load_end = load_avg();

    let mut out = Vec::new();
    for (i, (subject, host, binary)) in variants.iter().enumerate() {
        let seen = fleet.host(host);
        assert!(
            seen.as_ref().is_some_and(|h| h.healthy()),
            "{subject} must still be connected with healthy instances at the end: {seen:?}\n{}",
            fleet.diagnostics()
        );
        let binary = binary
            .clone()
            .unwrap_or_else(|| crate::bin_path("drover-agent"));
        let mut v = figures(
            subject,
            &starts[i],
            &ends[i],
            rss_max[i],
            1,
            window,
            &load_start,
            &load_end,
        );
        v["instances"] = json!(2);
        v["health_interval"] = json!(HEALTH_INTERVAL);
        v["report_interval"] = json!(REPORT_INTERVAL);
        v["version"] = json!(agent_version(&binary));
        v["binary"] = json!(binary.display().to_string());
        v["binary_mib"] = json!(
            std::fs::metadata(&binary).map_or(0.0, |m| round(m.len() as f64 / super::MIB, 2))
        );
        out.push(v);
    }
    match (&mut salt, salt_start, salt_end) {
        (Ok(s), Some(start), Some(end)) => {
            let n = process_tree(s.minion.pid()).len();
            let mut v = figures(
                "salt-minion",
                &start,
                &end,
                salt_rss_max,
                n,
                window,
                &load_start,
                &load_end,
            );
            v["version"] = json!(s.version);
            v["master"] = json!("a local salt-master on loopback, minion key accepted");
            out.push(v);
        }
        (Err(e), _, _) => out.push(json!({
            "scenario": "footprint",
            "subject": "salt-minion",
            "skipped": e,
        })),
        _ => {}
    }
    out
}

/// drover-sample checked every 2 s (rise 2, fall 3: the agent's defaults).
fn instance(name: &str) -> InstanceSpec {
    let mut i = InstanceSpec::sample(name, free_port(), "v1");
    i.health_interval = HEALTH_INTERVAL.to_string();
    i.rise = 2;
    i.fall = 3;
    i
}

fn agent_version(binary: &Path) -> String {
    let mut cmd = Command::new(binary);
    cmd.arg("--version");
    run_cmd(cmd, Duration::from_secs(10))
        .stdout
        .trim()
        .to_string()
}

/// The whole process tree under `root`, summed: CPU of the live processes
/// and of reaped children, RSS, PSS and peak RSS.
fn tree_sample(root: u32) -> ProcSample {
    let mut sum = ProcSample::default();
    for pid in process_tree(root) {
        if let Some(s) = sample(pid) {
            sum.cpu_secs += s.cpu_secs + s.children_cpu_secs;
            sum.rss_kib += s.rss_kib;
            sum.hwm_kib += s.hwm_kib;
            sum.pss_kib += s.pss_kib;
            sum.threads += s.threads;
            sum.sched_ns += s.sched_ns;
        }
    }
    sum
}

#[allow(clippy::too_many_arguments)]
fn figures(
    subject: &str,
    start: &ProcSample,
    end: &ProcSample,
    rss_max_kib: u64,
    processes: usize,
    window: Duration,
    load_start: &str,
    load_end: &str,
) -> Value {
    // Nanosecond counters when the same threads ran throughout (none
    // exited with its share), else the tick counters.
    let (cpu, source) = if end.threads == start.threads && end.sched_ns >= start.sched_ns {
        (
            (end.sched_ns - start.sched_ns) as f64 / 1e9,
            "schedstat (ns)",
        )
    } else {
        (
            (end.cpu_secs - start.cpu_secs).max(0.0),
            "stat utime+stime (10 ms ticks)",
        )
    };
    json!({
        "cpu_source": source,
        "cpu_ticks_secs": round((end.cpu_secs - start.cpu_secs).max(0.0), 3),
        "scenario": "footprint",
        "subject": subject,
        "window_secs": secs(window),
        "rss_peak_mib": mib(end.hwm_kib),
        "rss_mib": mib(end.rss_kib),
        "rss_max_in_window_mib": mib(rss_max_kib),
        "pss_mib": mib(end.pss_kib),
        "cpu_secs": round(cpu, 4),
        "cpu_percent": round(100.0 * cpu / window.as_secs_f64(), 4),
        "processes": processes,
        "threads": end.threads,
        "load_start": load_start,
        "load_end": load_end,
    })
}

/// A local salt-master and a salt-minion connected to it, each in its own
/// process group, killed on drop.
struct Salt {
    minion: Proc,
    _master: Proc,
    version: String,
}

impl Salt {
    fn start(bin: &Path, dir: &Path) -> Result<Salt, String> {
        let master_bin = bin.join("salt-master");
        let minion_bin = bin.join("salt-minion");
        for b in [&master_bin, &minion_bin] {
            if !b.is_file() {
                return Err(format!("{} is missing", b.display()));
            }
        }
        let version = {
            let mut cmd = Command::new(&minion_bin);
            cmd.arg("--version");
            let out = run_cmd(cmd, Duration::from_secs(60));
            if !out.success() {
                return Err(format!("salt-minion --version failed:\n{out}"));
            }
            out.stdout.trim().to_string()
        };
        let (publish, ret) = (free_port(), free_port());
        let write = |name: &str, text: String| -> Result<PathBuf, String> {
            let conf = dir.join(format!("{name}-conf"));
            std::fs::create_dir_all(&conf)
                .map_err(|e| format!("create {}: {e}", conf.display()))?;
            std::fs::write(conf.join(name), text)
                .map_err(|e| format!("write {name} config: {e}"))?;
            Ok(conf)
        };
        let master_conf = write(
            "master",
            format!(
                "root_dir: {root}\ninterface: 127.0.0.1\npublish_port: {publish}\nret_port: {ret}\n\
                 user: root\nauto_accept: True\nlog_file: master.log\nlog_level_logfile: info\n",
                root = dir.join("master-root").display()
            ),
        )?;
        let minion_root = dir.join("minion-root");
        let minion_conf = write(
            "minion",
            format!(
                "root_dir: {root}\nmaster: 127.0.0.1\nmaster_port: {ret}\npublish_port: {publish}\n\
                 id: bench-minion\nuser: root\nlog_file: minion.log\nlog_level_logfile: info\n",
                root = minion_root.display()
            ),
        )?;
        let mut cmd = Command::new(&master_bin);
        cmd.arg("-c").arg(&master_conf);
        let master = Proc::spawn("salt-master", cmd, &dir.join("salt-master.out"));
        let mut cmd = Command::new(&minion_bin);
        cmd.arg("-c").arg(&minion_conf);
        let minion = Proc::spawn("salt-minion", cmd, &dir.join("salt-minion.out"));
        // A relative log_file lands under root_dir.
        let log = minion_root.join("minion.log");
        let started = Instant::now();
        let ready = loop {
            if std::fs::read_to_string(&log)
                .is_ok_and(|t| t.contains("Minion is ready to receive requests"))
            {
                break true;
            }
            if minion.try_exit().is_some() || master.try_exit().is_some() {
                break false;
            }
            if started.elapsed() > Duration::from_secs(120) {
                break false;
            }
            pause(Duration::from_millis(200));
        };
        if !ready {
            return Err(format!(
                "salt-minion did not become ready within 120 s:\n{}\n{}\n--- minion log:\n{}",
                master.describe(20),
                minion.describe(20),
                tail(&log, 20)
            ));
        }
        // The accepted key on the master says the minion is connected.
        wait_until_with(
            Duration::from_secs(30),
            "the salt-master accepts the minion's key",
            || {
                dir.join("master-root/etc/salt/pki/master/minions/bench-minion")
                    .is_file()
            },
            || master.describe(20),
        );
        Ok(Salt {
            minion,
            _master: master,
            version,
        })
    }
}
