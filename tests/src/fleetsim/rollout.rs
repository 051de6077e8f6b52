//! Scenario 2, rollout overhead: roll service `web` across the simulated
//! instances with `drover rollout start` (batches of 10%, floor 90%) while
//! the hosts answer every step instantly or after a delay, and compare the
//! time taken with the time the steps themselves need.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drover_proto::v1::{GetRolloutRequest, InstanceStep, ListRolloutsRequest, Rollout};
use serde_json::{Map, Value, json};

use super::env::{Common, Env, Prepared, Sim, connected_json, runtime};
use super::fleet::{fake_release, host_id, labels, merge, print_targets};
use super::host::{HostSpec, StepStats, instance};
use super::procfs::{self, CpuWindow};
use super::stats::{Samples, round3};
use super::{StepDelay, emit, machine, target};
use crate::harness::process::run_cmd;
use crate::harness::release::{sample_release, write_artifact};

/// Steps per instance: drain, stop, deploy, start, verify, undrain.
const STEPS: u32 = 6;

/// Settings of one rollout-overhead run (the flags of `drover-fleetsim
/// rollout`).
#[derive(Debug, Clone, clap::Args)]
pub struct RolloutOptions {
    /// Simulated instances of service `web` in all.
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// `web` instances per host (hosts = instances / per-host).
    #[arg(long, default_value_t = 1)]
    pub per_host: usize,
    /// Health report interval of every host.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long each step takes on the hosts: 0, a duration (100ms) or a
    /// random range (50ms..150ms). Repeat the flag for one rollout per
    /// value, in order, each to the next version (v2, v3, ...).
    #[arg(long = "step-delay", default_values = ["0", "100ms"])]
    pub step_delays: Vec<StepDelay>,
    /// Batch sizes, as `drover rollout start --batch`.
    #[arg(long, default_value = "10%")]
    pub batch: String,
    /// The capacity floor, as `drover rollout start --min-healthy`.
    #[arg(long, default_value = "90%")]
    pub min_healthy: String,
    /// Start with `--detach` and read the result from the coordinator,
    /// instead of following the rollout with the CLI as an operator would.
    #[arg(long)]
    pub detach: bool,
    /// Between all hosts connected and the first rollout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Longest one rollout may take.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub rollout_timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

/// Hosts with `per_host` instances of `web` each (`web`, `web-2`, ...),
/// all on v1.
pub fn layout(instances: usize, per_host: usize) -> Vec<HostSpec> {
    let per_host = per_host.max(1);
    let hosts = instances.div_ceil(per_host);
    (1..=hosts)
        .map(|i| {
            let id = host_id(i, hosts);
            let here = per_host.min(instances - (i - 1) * per_host);
            let instances = (1..=here)
                .map(|k| {
                    let name = if k == 1 {
                        "web".to_string()
                    } else {
                        format!("web-{k}")
                    };
                    instance(
                        &id,
                        &name,
                        "web",
                        fake_release("v1"),
                        2000 + (i * 10 + k) as u32 % 60_000,
                    )
                })
                .collect();
            HostSpec {
                index: i,
                labels: labels(i),
                id,
                instances,
            }
        })
        .collect()
}

/// Runs scenario 2: one rollout per step delay. Returns the figures (also
/// printed), one object per rollout.
pub fn run(opts: &RolloutOptions) -> Result<Vec<Value>> {
    let specs = layout(opts.instances, opts.per_host);
    let hosts = specs.len();
    let env = Env::start(hosts, opts.interval, opts.common.dir.as_deref())?;
    eprintln!(
        "fleetsim: coordinator pid {} on {}; signing {hosts} agent certificates",
        env.pid(),
        env.coordinator.grpc_addr()
    );
    let prepared = Prepared::new(&env, specs)?;
    let rt = runtime()?;
    let figures = rt.block_on(measure(&env, prepared, opts));
    rt.shutdown_timeout(Duration::from_secs(5));
    let clean = env.stop(Duration::from_secs(30));
    let mut figures = figures?;
    for f in &mut figures {
        f["coordinator_stopped_cleanly"] = json!(clean);
        emit(f);
    }
    Ok(figures)
}

async fn measure(env: &Env, prepared: Prepared, opts: &RolloutOptions) -> Result<Vec<Value>> {
    let hosts = prepared.specs.len();
    let mut sim = Sim::launch(prepared, opts.interval, opts.common.connect_concurrency).await?;
    let connected = sim.wait_connected(opts.common.connect_timeout).await;
    eprintln!(
        "fleetsim: {} of {hosts} hosts connected in {:.2}s",
        connected.connected, connected.secs
    );
    if connected.connected < hosts {
        sim.shutdown().await;
        bail!(
            "only {} of {hosts} hosts connected; see the coordinator log {}",
            connected.connected,
            env.coordinator.log.display()
        );
    }
    tokio::time::sleep(opts.settle).await;
    let _ = sim.stop_watch().await;

    let cli = env.cli();
    let artifacts = env.dir.join("artifacts");
    let mut all = Vec::new();
    for (k, delay) in opts.step_delays.iter().enumerate() {
        let version = format!("v{}", k + 2);
        let file = write_artifact(
            &artifacts,
            &format!("web-{version}.tar.gz"),
            &sample_release(&version, &[]),
        );
        let push = cli.run(&[
            "artifact",
            "push",
            &file.display().to_string(),
            "--service",
            "web",
            "--version",
            &version,
        ]);
        if !push.success() {
            bail!("artifact push failed:\n{push}");
        }
        sim.shared.set_step_delay(*delay);
        let _ = sim.shared.take_steps();
        eprintln!(
            "fleetsim: rolling web to {version} over {} instances, steps taking {delay}",
            opts.instances
        );
        let figures = one_rollout(env, &mut sim, opts, &version, *delay).await?;
        let figures = merge(
            json!({"scenario": "rollout", "instances": opts.instances, "hosts": hosts, "per_host": opts.per_host}),
            merge(figures, connected_json(&connected)),
        );
        summary(&figures);
        all.push(figures);
    }
    sim.shutdown().await;
    Ok(all)
}

/// Waits until `drover agents -o json` shows every instance running,
/// healthy and in service (polled every 250 ms, bounded by `timeout`): the
/// coordinator refuses a rollout whose floor it cannot see yet, and the
/// simulated hosts report the end of the previous rollout a report later.
async fn wait_all_serving(env: &Env, instances: usize, timeout: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let cli = env.cli();
        let ready = tokio::task::spawn_blocking(move || {
            let out = cli.run(&["agents", "-o", "json"]);
            let Ok(hosts) = serde_json::from_str::<Vec<Value>>(&out.stdout) else {
                return false;
            };
            let all: Vec<&Value> = (hosts.iter())
                .filter_map(|h| h["instances"].as_array())
                .flatten()
                .collect();
            all.len() >= instances
                && all.iter().all(|i| {
                    i["state"] == "running" && i["health"] == "healthy" && i["drained"] == false
                })
        })
        .await
        .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!(
                "not every one of the {instances} simulated instances was serving after {:.0}s; see the coordinator log {}",
                timeout.as_secs_f64(),
                env.coordinator.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn one_rollout(
    env: &Env,
    sim: &mut Sim,
    opts: &RolloutOptions,
    version: &str,
    delay: StepDelay,
) -> Result<Value> {
    wait_all_serving(env, opts.instances, opts.common.connect_timeout).await?;
    let cli = env.cli();
    let mut args = vec![
        "rollout",
        "start",
        "--service",
        "web",
        "--version",
        version,
        "--batch",
        &opts.batch,
        "--min-healthy",
        &opts.min_healthy,
        "--min-healthy-time",
        "0s",
        "--healthy-deadline",
        "1m",
        "--step-timeout",
        "1m",
        "--progress-deadline",
        "10m",
        "-o",
        "json",
    ];
    if opts.detach {
        args.push("--detach");
    }
    let cpu = CpuWindow::start(env.pid());
    let t0 = Instant::now();
    let out = run_cmd(cli.command(&args), opts.rollout_timeout);
    let mut cli_secs = t0.elapsed().as_secs_f64();
    let cli_error = (!out.success()).then(|| {
        let err: String = out.stderr.chars().take(800).collect();
        format!("exit {:?}: {}", out.code, err.trim())
    });
    let id = serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string));
    let id = match id {
        Some(id) => id,
        None => latest_rollout(sim)
            .await
            .with_context(|| format!("no rollout id from `drover rollout start`:\n{out}"))?,
    };
    let rollout =
        wait_finished(sim, &id, opts.rollout_timeout.saturating_sub(t0.elapsed())).await?;
    if opts.detach {
        cli_secs = t0.elapsed().as_secs_f64();
    }
    let used = cpu.finish();
    let (rss, hwm) = env.memory();
    let mut steps = sim.shared.take_steps();

    let unfinished = unfinished_steps(&rollout, &steps);
    let t = timeline(&rollout);
    let counts = rollout.counts.unwrap_or_default();
    let rollout_secs = (rollout.finished_at_ms - rollout.started_at_ms) as f64 / 1000.0;
    let batches = t.batches.len() as f64;
    let theoretical = batches * f64::from(STEPS) * delay.mean().as_secs_f64();
    let ratio = (theoretical > 0.0).then(|| rollout_secs / theoretical);
    let overhead_per_batch_ms =
        (batches > 0.0).then(|| (rollout_secs - theoretical) / batches * 1000.0);
    let mut targets = Map::new();
    if opts.instances == 10_000 && delay == StepDelay::Zero {
        let (k, v) = target("overhead_per_batch_ms", overhead_per_batch_ms, 50.0);
        targets.insert(k, v);
    }
    if delay != StepDelay::Zero && matches!(opts.instances, 1_000 | 10_000) {
        let (k, v) = target("ratio", ratio, 1.05);
        targets.insert(k, v);
    }
    let by_kind: BTreeMap<&str, u64> = steps.by_kind.iter().map(|(k, v)| (*k, *v)).collect();
    Ok(json!({
        "interval_ms": opts.interval.as_millis() as u64,
        "step_delay": delay.to_string(),
        "step_delay_ms": delay.mean().as_secs_f64() * 1000.0,
        "batch": opts.batch,
        "min_healthy": opts.min_healthy,
        "followed_by_cli": !opts.detach,
        "rollout_id": id,
        "phase": rollout.phase_kind().as_text(),
        "done": counts.done,
        "failed": counts.failed,
        "total": counts.total,
        "batches": t.batches.len(),
        "rollout_secs": round3(rollout_secs),
        "cli_secs": round3(cli_secs),
        "cli_error": cli_error,
        "theoretical_min_secs": round3(theoretical),
        "ratio": ratio.map(round3),
        "overhead_per_batch_ms": overhead_per_batch_ms.map(round3),
        "batch_ms": t.batch_ms.clone().summary(),
        "between_batches_ms": t.gap_ms.clone().summary(),
        "first_command_after_start_ms": t.first_drain_ms,
        "step_turnaround_ms": steps.turnaround.summary(),
        "failed_steps_seen_by_hosts": unfinished,
        "commands_by_kind": by_kind,
        "events": rollout.events.len(),
        "coordinator_cpu_secs": round3(used.process_cpu_secs),
        "coordinator_cpu_cores": round3(used.process_cores),
        "coordinator_rss_mib": rss.map(round3),
        "coordinator_peak_rss_mib": hwm.map(round3),
        "simulator_cpu_cores": round3(used.simulator_cores),
        "simulator_rss_mib": procfs::status_mib(std::process::id(), "VmRSS").map(round3),
        "machine_busy_cores": round3(used.machine_busy_cores),
        "other_processes_cores": round3(used.others()),
        "machine": machine(),
        "targets": targets,
    }))
}

/// For each instance the rollout failed: its last command as the host saw
/// it (received when, answered when, relative to its first command), so a
/// step the coordinator timed out can be told apart from one that never
/// arrived or whose answer got lost.
fn unfinished_steps(r: &Rollout, steps: &StepStats) -> Vec<Value> {
    let Some(start) = steps.first_command else {
        return Vec::new();
    };
    let ms = |t: Instant| t.duration_since(start).as_millis() as u64;
    r.instances
        .iter()
        .filter(|i| !i.error.is_empty())
        .take(20)
        .map(|i| {
            let prefix = format!("{}/{}/", r.id, i.id);
            let mut seen: Vec<(&String, &(Instant, Option<Instant>))> = steps
                .commands
                .iter()
                .filter(|(id, _)| id.starts_with(&prefix))
                .collect();
            seen.sort_by_key(|(_, (at, _))| *at);
            let last = seen.last().map(|(id, (at, done))| {
                json!({"id": id, "received_ms": ms(*at), "answered_ms": done.map(ms)})
            });
            json!({"instance": i.id, "error": i.error, "last_command_seen": last})
        })
        .collect()
}

async fn latest_rollout(sim: &mut Sim) -> Result<String> {
    let list = sim
        .control
        .list_rollouts(ListRolloutsRequest {
            service: "web".into(),
            limit: 1,
        })
        .await
        .context("ListRollouts")?;
    list.into_inner()
        .rollouts
        .first()
        .map(|r| r.id.clone())
        .context("no rollout of web")
}

/// Waits until the rollout has finished, then reads it with its events.
/// Polls `ListRollouts`, which carries neither instances nor events, so
/// the polling costs the coordinator next to nothing.
async fn wait_finished(sim: &mut Sim, id: &str, timeout: Duration) -> Result<Rollout> {
    let deadline = Instant::now() + timeout.max(Duration::from_secs(5));
    loop {
        let list = sim
            .control
            .list_rollouts(ListRolloutsRequest {
                service: "web".into(),
                limit: 5,
            })
            .await
            .context("ListRollouts")?
            .into_inner();
        let r = list.rollouts.iter().find(|r| r.id == id);
        if r.is_some_and(|r| r.finished_at_ms > 0) {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "rollout {id} still {} after {}",
                r.map_or("missing", |r| r.phase_kind().as_text()),
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(sim
        .control
        .get_rollout(GetRolloutRequest {
            id: id.to_string(),
            include_events: true,
        })
        .await
        .with_context(|| format!("GetRollout {id}"))?
        .into_inner())
}

/// Batch boundaries from the rollout's events.
#[derive(Debug, Default)]
struct Timeline {
    /// Batch number -> (first chain start, last instance done), unix ms.
    batches: BTreeMap<u32, (i64, i64)>,
    batch_ms: Samples,
    gap_ms: Samples,
    first_drain_ms: Option<i64>,
}

fn timeline(r: &Rollout) -> Timeline {
    let batch_of: HashMap<&str, u32> = r
        .instances
        .iter()
        .map(|i| (i.id.as_str(), i.batch))
        .collect();
    let mut t = Timeline::default();
    for e in &r.events {
        let Some(&b) = batch_of.get(e.instance.as_str()) else {
            continue;
        };
        if b == 0 {
            continue;
        }
        let entry = t.batches.entry(b).or_insert((i64::MAX, i64::MIN));
        if e.step_kind() == InstanceStep::Draining {
            entry.0 = entry.0.min(e.at_ms);
        }
        if e.step_kind() == InstanceStep::Done {
            entry.1 = entry.1.max(e.at_ms);
        }
    }
    t.batches
        .retain(|_, (a, b)| *a != i64::MAX && *b != i64::MIN);
    let mut prev_end: Option<i64> = None;
    for (start, end) in t.batches.values() {
        t.batch_ms.push(((end - start).max(0) as u64) * 1000);
        if let Some(p) = prev_end {
            t.gap_ms.push(((start - p).max(0) as u64) * 1000);
        }
        prev_end = Some(*end);
    }
    t.first_drain_ms = t.batches.values().next().map(|(s, _)| s - r.started_at_ms);
    t
}

fn summary(f: &Value) {
    eprintln!(
        "\n== rollout overhead: {} instances on {} hosts ({} each), steps {} , batches {} of {} (coordinator + simulator + CLI on one {}-core machine)",
        f["instances"],
        f["hosts"],
        f["per_host"],
        f["step_delay"],
        f["batches"],
        f["batch"],
        f["machine"]["cores"]
    );
    eprintln!(
        "   outcome           {} ({} done, {} failed){}",
        f["phase"],
        f["done"],
        f["failed"],
        f["cli_error"]
            .as_str()
            .map(|e| format!("; CLI: {e}"))
            .unwrap_or_default()
    );
    eprintln!(
        "   time              {} s by the coordinator's clock, {} s for the CLI; theoretical minimum {} s; ratio {}",
        f["rollout_secs"], f["cli_secs"], f["theoretical_min_secs"], f["ratio"]
    );
    print_batches(f);
    eprintln!(
        "   coordinator       {} CPU s ({} cores), RSS {} MiB (peak {} MiB); simulator {} cores; other processes {} cores",
        f["coordinator_cpu_secs"],
        f["coordinator_cpu_cores"],
        f["coordinator_rss_mib"],
        f["coordinator_peak_rss_mib"],
        f["simulator_cpu_cores"],
        f["other_processes_cores"]
    );
    print_targets(f);
}

/// The per-batch and step-turnaround lines of a rollout summary, shared by
/// `rollout` and `floor` so the two read alike.
pub fn print_batches(f: &Value) {
    eprintln!(
        "   per batch         overhead {} ms; batch p50 {} ms max {} ms; between batches p50 {} ms",
        f["overhead_per_batch_ms"],
        f["batch_ms"]["p50"],
        f["batch_ms"]["max"],
        f["between_batches_ms"]["p50"]
    );
    eprintln!(
        "   step turnaround   p50 {} ms, p99 {} ms (result sent -> next command received, at the hosts)",
        f["step_turnaround_ms"]["p50"], f["step_turnaround_ms"]["p99"]
    );
}
