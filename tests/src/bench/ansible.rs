//! Scenario 4, drover against Ansible on the same job: N hosts on this
//! machine, each with a `web` instance (a drover-sample release) behind a
//! real HAProxy; per host drain, stop, unpack the new release, switch
//! `current`, start, HTTP health check, undrain; at each batch size.
//!
//! The drover side is a [`WebFleet`]: N real agents (report interval 5 s,
//! the product default) and a coordinator; the rollout is `drover rollout
//! start --batch B --min-healthy N-B --min-healthy-time 0s`, so verify
//! passes on the first good health check, polled every `health_interval`.
//! The Ansible side is `ansible-playbook` (ansible-core from a virtualenv)
//! with N inventory hosts `ansible_connection=local`, `serial: B`, running
//! [`PLAYBOOK`] on its own HAProxy and instances, the health check polled
//! with the same period. The sides run one after the other, never
//! together.
//!
//! Wall time is the CLI or `ansible-playbook` call from start to exit. CPU
//! time: drover's is the coordinator's and every agent's own utime + stime
//! over the rollout plus the CLI's; Ansible's is every process it ran and
//! waited for (`RUSAGE_CHILDREN`). Neither side counts the instances'
//! own CPU (drover-sample serving health checks).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::footprint::LOST_TIMEOUT;
use super::{children_cpu_secs, kill_pidfile, load_avg, note, round, sample, secs};
use crate::harness::haproxy::{Haproxy, Server};
use crate::harness::process::run_cmd;
use crate::harness::release::{sample_release, write_artifact};
use crate::harness::rollout::SERVICE;
use crate::harness::{bin_path, free_port, http_get, wait_until_with};
use crate::{RolloutView, WAIT, WebFleet};

/// The playbook the Ansible side runs.
pub const PLAYBOOK: &str = include_str!("rollout.yml");

/// How long one rollout (either tool) may take before it is killed.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct AnsibleOpts {
    pub hosts: usize,
    /// Batch sizes, run in this order (v2 at the first, v3 at the second...).
    pub batches: Vec<usize>,
    /// How often both sides poll the instance's health endpoint.
    pub health_interval: Duration,
    /// A virtualenv's `bin` dir with `ansible-playbook`; `None` runs the
    /// drover side only.
    pub ansible_bin: Option<PathBuf>,
}

/// Runs drover's side, then Ansible's; one JSON object per tool and batch.
pub fn run(opts: &AnsibleOpts) -> Vec<Value> {
    assert!(opts.hosts >= 2, "at least 2 hosts");
    for &b in &opts.batches {
        assert!(
            (1..opts.hosts).contains(&b),
            "batch {b} must be between 1 and hosts - 1"
        );
    }
    let mut out = drover_side(opts);
    match &opts.ansible_bin {
        Some(bin) => out.extend(ansible_side(opts, bin)),
        None => note("Ansible side not run (no --ansible-venv)"),
    }
    out
}

fn record(tool: &str, opts: &AnsibleOpts, batch: usize, wall: Duration, cpu: f64) -> Value {
    json!({
        "scenario": "ansible",
        "tool": tool,
        "hosts": opts.hosts,
        "batch": batch,
        "wall_secs": secs(wall),
        "cpu_secs": round(cpu, 3),
        "per_host_ms": round(wall.as_secs_f64() * 1000.0 / opts.hosts as f64, 1),
        "health_poll_ms": opts.health_interval.as_millis() as u64,
    })
}

fn drover_side(opts: &AnsibleOpts) -> Vec<Value> {
    note(&format!(
        "drover: starting a coordinator, HAProxy and {} agents",
        opts.hosts
    ));
    let interval = format!("{}ms", opts.health_interval.as_millis());
    let web = WebFleet::builder()
        .hosts(opts.hosts)
        .report_interval("5s")
        .health_interval(&interval)
        .coordinator(|c| c.lost_timeout = LOST_TIMEOUT.to_string())
        .start();
    web.deploy_initial("v1");
    let mut out = Vec::new();
    for (i, &batch) in opts.batches.iter().enumerate() {
        let version = format!("v{}", i + 2);
        web.push_release(&version, &[]);
        let mut pids: Vec<u32> = web.fleet.agents.iter().filter_map(|a| a.pid()).collect();
        pids.extend(web.fleet.coordinator.pid());
        let cpu = |pids: &[u32]| -> f64 {
            pids.iter()
                .filter_map(|p| sample(*p))
                .map(|s| s.cpu_secs)
                .sum()
        };
        let floor = (opts.hosts - batch).to_string();
        let batch_arg = batch.to_string();
        let args = WebFleet::start_args(
            &version,
            &[
                "--batch",
                &batch_arg,
                "--min-healthy",
                &floor,
                "--min-healthy-time",
                "0s",
                "--progress-deadline",
                "5m",
            ],
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        note(&format!(
            "drover: rollout {version} over {} hosts, batch {batch}",
            opts.hosts
        ));
        let load_start = load_avg();
        let (cpu0, cli0) = (cpu(&pids), children_cpu_secs());
        let started = Instant::now();
        let result = web.rollout_cmd(&args, ROLLOUT_TIMEOUT);
        let wall = started.elapsed();
        let used = cpu(&pids) - cpu0 + children_cpu_secs() - cli0;
        let load_end = load_avg();
        if !result.success() {
            panic!("drover's rollout failed:\n{result}\n{}", web.diagnostics());
        }
        web.wait_all_serving(&version);
        let mut r = record("drover", opts, batch, wall, used);
        r["load_start"] = json!(load_start);
        r["load_end"] = json!(load_end);
        let rollout = web.latest();
        if std::env::var_os("DROVER_BENCH_TIMELINE").is_some() {
            note(&rollout.timeline());
        }
        r["rollout_id"] = json!(rollout.id);
        r["step_mean_ms"] = step_means(&rollout);
        out.push(r);
    }
    out
}

/// The mean time an instance spent in each step, from the rollout's
/// events (a step lasts until the instance's next event).
fn step_means(rollout: &RolloutView) -> Value {
    let mut last: BTreeMap<&str, (&str, i64)> = BTreeMap::new();
    let mut sums: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in &rollout.events {
        let (Some(instance), Some(step)) = (e.instance.as_deref(), e.step.as_deref()) else {
            continue;
        };
        if let Some((prev, at)) = last.insert(instance, (step, e.at_ms)) {
            let s = sums.entry(prev.to_string()).or_default();
            s.0 += e.at_ms - at;
            s.1 += 1;
        }
    }
    let means: serde_json::Map<String, Value> = sums
        .into_iter()
        .map(|(step, (total, n))| (step, json!(round(total as f64 / n as f64, 1))))
        .collect();
    Value::Object(means)
}

fn ansible_side(opts: &AnsibleOpts, bin: &Path) -> Vec<Value> {
    let playbook_bin = bin.join("ansible-playbook");
    assert!(
        playbook_bin.is_file(),
        "{} is missing: install ansible-core into that virtualenv",
        playbook_bin.display()
    );
    let version = {
        let mut cmd = Command::new(&playbook_bin);
        cmd.arg("--version");
        let out = run_cmd(cmd, Duration::from_secs(60));
        assert!(out.success(), "ansible-playbook --version failed:\n{out}");
        out.stdout.lines().next().unwrap_or_default().to_string()
    };
    let tmp = tempfile::Builder::new()
        .prefix("drover-bench-ansible-")
        .tempdir()
        .expect("create temp dir");
    let dir = tmp.path();
    let side = AnsibleHosts::start(dir, opts.hosts);
    let artifacts = dir.join("artifacts");
    let v1 = write_artifact(&artifacts, "web-v1.tar.gz", &sample_release("v1", &[]));
    side.deploy_v1(&v1);

    let inventory = side.write_inventory(bin, opts);
    let playbook = dir.join("rollout.yml");
    std::fs::write(&playbook, PLAYBOOK).expect("write the playbook");
    let mut out = Vec::new();
    for (i, &batch) in opts.batches.iter().enumerate() {
        let v = format!("v{}", i + 2);
        let artifact = write_artifact(
            &artifacts,
            &format!("web-{v}.tar.gz"),
            &sample_release(&v, &[]),
        );
        let mut cmd = Command::new(&playbook_bin);
        cmd.arg("-i")
            .arg(&inventory)
            .arg(&playbook)
            .arg("-e")
            .arg(format!("version={v}"))
            .arg("-e")
            .arg(format!("artifact={}", artifact.display()))
            .arg("-e")
            .arg(format!("batch={batch}"));
        ansible_env(&mut cmd, dir, batch);
        note(&format!(
            "ansible: playbook to {v} over {} hosts, serial {batch}",
            opts.hosts
        ));
        let load_start = load_avg();
        let cpu0 = children_cpu_secs();
        let started = Instant::now();
        let result = run_cmd(cmd, ROLLOUT_TIMEOUT);
        let wall = started.elapsed();
        let used = children_cpu_secs() - cpu0;
        let load_end = load_avg();
        assert!(
            result.success(),
            "ansible-playbook failed:\n{result}\n{}",
            side.haproxy.describe()
        );
        side.wait_all_serving(&v);
        let mut r = record("ansible", opts, batch, wall, used);
        r["load_start"] = json!(load_start);
        r["load_end"] = json!(load_end);
        r["ansible_version"] = json!(version);
        out.push(r);
    }
    out
}

/// Settings that make Ansible's run fair and self-contained: no fact
/// gathering, pipelining on (fewer temp files per task), forks at least
/// the batch size, temp dirs and HOME inside the benchmark's dir.
fn ansible_env(cmd: &mut Command, dir: &Path, batch: usize) {
    cmd.env("HOME", dir)
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_GATHERING", "explicit")
        .env("ANSIBLE_FORKS", batch.max(5).to_string())
        .env("ANSIBLE_HOST_KEY_CHECKING", "False")
        .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", dir.join("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", dir.join("ansible-remote-tmp"))
        .env_remove("ANSIBLE_CONFIG");
}

/// The Ansible side's hosts: a deploy dir and an instance port per host,
/// their own HAProxy. Instances are daemons started the way the playbook
/// starts them, killed by pid on drop.
struct AnsibleHosts {
    dir: PathBuf,
    ports: BTreeMap<String, u16>,
    haproxy: Haproxy,
}

impl AnsibleHosts {
    fn start(dir: &Path, n: usize) -> AnsibleHosts {
        let mut ports = BTreeMap::new();
        for i in 1..=n {
            let port = loop {
                let p = free_port();
                if !ports.values().any(|q| *q == p) {
                    break p;
                }
            };
            ports.insert(format!("h{i}"), port);
        }
        let servers: Vec<Server> = ports.iter().map(|(h, p)| Server::new(h, *p)).collect();
        let haproxy = Haproxy::start(&dir.join("haproxy"), SERVICE, &servers);
        AnsibleHosts {
            dir: dir.to_path_buf(),
            ports,
            haproxy,
        }
    }

    fn deploy_dir(&self, host: &str) -> PathBuf {
        self.dir.join("deploy").join(host)
    }

    /// Unpacks v1 on every host, points `current` at it and starts the
    /// instance the way the playbook does; waits until all serve v1.
    fn deploy_v1(&self, artifact: &Path) {
        for (host, port) in &self.ports {
            let d = self.deploy_dir(host);
            let rel = d.join("releases").join("v1");
            std::fs::create_dir_all(&rel).expect("create the release dir");
            let mut tar = Command::new("tar");
            tar.arg("-xzf").arg(artifact).arg("-C").arg(&rel);
            run_cmd(tar, Duration::from_secs(30)).expect_success();
            std::os::unix::fs::symlink(&rel, d.join("current")).expect("link current");
            let line = format!(
                "cd '{d}' && SAMPLE_WATCH_PID={me} setsid nohup '{d}/current/run' --port {port} \
                 --version-file '{d}/current/VERSION' >> '{d}/output.log' 2>&1 < /dev/null & \
                 echo $! > '{d}/pid'",
                d = d.display(),
                me = std::process::id(),
            );
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(line);
            run_cmd(sh, Duration::from_secs(10)).expect_success();
        }
        self.wait_all_serving("v1");
    }

    fn wait_all_serving(&self, version: &str) {
        self.haproxy.wait_serving(self.ports.len() as u32, WAIT);
        wait_until_with(
            WAIT,
            &format!("every Ansible-side instance serves {version}"),
            || {
                self.ports.values().all(|p| {
                    http_get(&format!("127.0.0.1:{p}"), "/")
                        .is_ok_and(|(code, body)| code == 200 && body.trim().ends_with(version))
                })
            },
            || self.haproxy.describe(),
        );
    }

    fn write_inventory(&self, bin: &Path, opts: &AnsibleOpts) -> PathBuf {
        let mut t = String::from("[web]\n");
        for (host, port) in &self.ports {
            t.push_str(&format!(
                "{host} ansible_connection=local web_port={port} deploy_dir={}\n",
                self.deploy_dir(host).display()
            ));
        }
        t.push_str(&format!(
            "\n[web:vars]\nansible_python_interpreter={python}\nbackend={SERVICE}\n\
             haproxy_socket={socket}\nwatch_pid={me}\nhealth_delay={delay}\n",
            python = bin.join("python3").display(),
            socket = self.haproxy.socket().display(),
            me = std::process::id(),
            delay = opts.health_interval.as_secs_f64(),
        ));
        let path = self.dir.join("inventory.ini");
        std::fs::write(&path, t).expect("write the inventory");
        path
    }
}

impl Drop for AnsibleHosts {
    fn drop(&mut self) {
        let sample = bin_path("drover-sample");
        for host in self.ports.keys() {
            kill_pidfile(&self.deploy_dir(host).join("pid"), &sample);
        }
    }
}
