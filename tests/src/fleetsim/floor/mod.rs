//! The floor under scenario 2: what the stack itself (tonic, h2, rustls,
//! prost over one mutual-TLS session per host) allows for the rollout's
//! message pattern, with none of drover's coordinator behind it.
//!
//! A bare `AgentService` server, a process of its own (the hidden
//! `drover-fleetsim floor-server`) started on the address and with the
//! certificate of the coordinator that made the fleet's CA, greets each
//! session with a Welcome, stores each health report in a map and drives
//! "rollouts" itself: batches of a percentage of the hosts, each instance
//! walking drain, stop, deploy, start, verify, undrain, the next step sent
//! as soon as the previous one's SUCCEEDED arrives, the next batch when
//! the whole batch is done. No store, no events, no rollout engine: the
//! same simulated hosts ([`super::host`]) do the same work as under
//! `drover-fleetsim rollout`, so the difference between the two is what
//! drover adds.
//!
//! A process of its own, as the coordinator is: its CPU is measured
//! apart, and each side has the open-file limit to itself (the simulator
//! holds one socket per host, so does the server). The scenario talks to
//! it over its stdin and stdout, one JSON line per request and reply.

mod server;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::env::{Common, Env, Prepared, Sim, connected_json, runtime};
use super::fleet::{merge, print_targets};
use super::procfs::{self, CpuWindow};
use super::rollout::{layout, print_batches};
use super::stats::round3;
use super::{StepDelay, emit, machine, target};

/// Steps per instance: drain, stop, deploy, start, verify, undrain.
const STEPS: usize = 6;

/// Settings of one floor run (the flags of `drover-fleetsim floor`).
#[derive(Debug, Clone, clap::Args)]
pub struct FloorOptions {
    /// Simulated hosts, one `web` instance each.
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Health report interval of every host.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long each step takes on the hosts: 0, a duration (100ms) or a
    /// random range (50ms..150ms). Repeat the flag for one run per value.
    #[arg(long = "step-delay", default_values = ["0", "100ms"])]
    pub step_delays: Vec<StepDelay>,
    /// Instances per batch, percent of all (rounded up), as `--batch 10%`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch_percent: u32,
    /// Between all hosts connected and the first run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Longest one run may take.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub rollout_timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

use server::RunRequest;
pub use server::{ServerOptions, serve};

/// Runs the floor: enrol the hosts with a real coordinator, replace it
/// with the bare server, one run per step delay. Returns the figures (also
/// printed), one object per run.
pub fn run(opts: &FloorOptions) -> Result<Vec<Value>> {
    let specs = layout(opts.instances, 1);
    let hosts = specs.len();
    let mut env = Env::start(hosts, opts.interval, opts.common.dir.as_deref())?;
    eprintln!(
        "fleetsim: coordinator pid {} on {} (for the CA and its certificate only); signing {hosts} agent certificates",
        env.pid(),
        env.coordinator.grpc_addr()
    );
    let prepared = Prepared::new(&env, specs)?;
    let server = ServerOptions {
        addr: env.grpc_addr()?,
        ca: env.pki.ca_cert(),
        cert: env.coordinator.tls.cert.clone(),
        key: env.coordinator.tls.key.clone(),
        hosts,
    };
    // The coordinator has done its part; the bare server takes its address
    // and presents its certificate.
    let clean = env.coordinator.terminate(Duration::from_secs(30));
    let rt = runtime()?;
    let figures = rt.block_on(measure(&server, prepared, opts));
    rt.shutdown_timeout(Duration::from_secs(5));
    let mut figures = figures?;
    for f in &mut figures {
        f["coordinator_stopped_cleanly"] = json!(clean);
        emit(f);
    }
    Ok(figures)
}

/// The floor server as the scenario sees it: a child process, killed on
/// drop, spoken to in JSON lines.
struct ServerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl ServerProc {
    /// Starts `drover-fleetsim floor-server` (this binary) and waits until
    /// it listens.
    async fn start(opts: &ServerOptions) -> Result<ServerProc> {
        let exe = std::env::current_exe().context("find this binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("floor-server")
            .arg("--addr")
            .arg(opts.addr.to_string())
            .arg("--ca")
            .arg(&opts.ca)
            .arg("--cert")
            .arg(&opts.cert)
            .arg("--key")
            .arg(&opts.key)
            .arg("--hosts")
            .arg(opts.hosts.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start drover-fleetsim floor-server")?;
        let pid = child.id().context("the floor server exited at once")?;
        let stdin = child.stdin.take().context("floor server stdin")?;
        let stdout = child.stdout.take().context("floor server stdout")?;
        let mut server = ServerProc {
            child,
            stdin: Some(stdin),
            lines: BufReader::new(stdout).lines(),
            pid,
        };
        server.reply(Duration::from_secs(30)).await?;
        Ok(server)
    }

    async fn reply(&mut self, timeout: Duration) -> Result<Value> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("no answer from the floor server in time")?
            .context("read from the floor server")?
            .ok_or_else(|| anyhow!("the floor server exited (its error is above)"))?;
        let v: Value = serde_json::from_str(&line).context("the floor server's answer")?;
        if let Some(e) = v["error"].as_str() {
            bail!("the floor server: {e}");
        }
        Ok(v)
    }

    async fn request(&mut self, req: &RunRequest, timeout: Duration) -> Result<Value> {
        let mut line = serde_json::to_string(req).context("encode a run request")?;
        line.push('\n');
        let stdin = self.stdin.as_mut().context("floor server stdin closed")?;
        stdin
            .write_all(line.as_bytes())
            .await
            .context("write to the floor server")?;
        stdin.flush().await.context("write to the floor server")?;
        self.reply(timeout).await
    }

    /// Closes its stdin and waits (at most 30 s) for it to exit; whether
    /// it exited cleanly.
    async fn stop(mut self) -> bool {
        self.stdin = None;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }
}

async fn measure(
    server_opts: &ServerOptions,
    prepared: Prepared,
    opts: &FloorOptions,
) -> Result<Vec<Value>> {
    let n = prepared.specs.len();
    let mut server = ServerProc::start(server_opts).await?;
    eprintln!(
        "fleetsim: bare floor server pid {} on {}; connecting {n} hosts",
        server.pid, server_opts.addr
    );
    let sim = Sim::launch(prepared, opts.interval, opts.common.connect_concurrency).await?;
    let result = runs(&mut server, &sim, n, opts).await;
    sim.shutdown().await;
    let clean = server.stop().await;
    let mut all = result?;
    for f in &mut all {
        f["server_stopped_cleanly"] = json!(clean);
    }
    Ok(all)
}

async fn runs(
    server: &mut ServerProc,
    sim: &Sim,
    n: usize,
    opts: &FloorOptions,
) -> Result<Vec<Value>> {
    let connected = sim.wait_connected(opts.common.connect_timeout).await;
    eprintln!(
        "fleetsim: {} of {n} hosts connected in {:.2}s",
        connected.connected, connected.secs
    );
    if connected.connected < n {
        bail!("only {} of {n} hosts connected", connected.connected);
    }
    tokio::time::sleep(opts.settle).await;
    let batch_size = (n * opts.batch_percent as usize).div_ceil(100).max(1);
    let mut all = Vec::new();
    for (k, delay) in opts.step_delays.iter().enumerate() {
        let version = format!("v{}", k + 2);
        sim.shared.set_step_delay(*delay);
        let _ = sim.shared.take_steps();
        eprintln!(
            "fleetsim: floor run to {version} over {n} instances, batches of {batch_size}, steps taking {delay}"
        );
        let lost_before = sim.shared.counters.sessions_lost.load(Ordering::Relaxed);
        let load_at_start = procfs::loadavg();
        let req = RunRequest {
            run: format!("floor-{version}"),
            version: version.clone(),
            batch_size,
            timeout_ms: u64::try_from(opts.rollout_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let cpu = CpuWindow::start(server.pid);
        let driven = server
            .request(&req, opts.rollout_timeout + Duration::from_secs(30))
            .await?;
        let used = cpu.finish();
        let mut steps = sim.shared.take_steps();
        let secs = driven["rollout_secs"].as_f64().unwrap_or(0.0);
        let batches = driven["batches"].as_f64().unwrap_or(0.0);
        let theoretical = batches * STEPS as f64 * delay.mean().as_secs_f64();
        let ratio = (theoretical > 0.0).then(|| secs / theoretical);
        let overhead_per_batch_ms =
            (batches > 0.0).then(|| (secs - theoretical) / batches * 1000.0);
        let mut targets = Map::new();
        if n == 10_000 && *delay == StepDelay::Zero {
            let (k, v) = target("overhead_per_batch_ms", overhead_per_batch_ms, 50.0);
            targets.insert(k, v);
        }
        if *delay != StepDelay::Zero && matches!(n, 1_000 | 10_000) {
            let (k, v) = target("ratio", ratio, 1.05);
            targets.insert(k, v);
        }
        let by_kind: BTreeMap<&str, u64> = steps.by_kind.iter().map(|(k, v)| (*k, *v)).collect();
        let figures = json!({
            "scenario": "floor",
            "server": "bare tonic + rustls AgentService (drover-fleetsim floor-server): Welcome, reports into a map, the rollout's commands; no store, no events, no engine",
            "instances": n,
            "hosts": n,
            "per_host": 1,
            "interval_ms": opts.interval.as_millis() as u64,
            "step_delay": delay.to_string(),
            "step_delay_ms": delay.mean().as_secs_f64() * 1000.0,
            "batch": format!("{}%", opts.batch_percent),
            "batch_size": batch_size,
            "run": version,
            "total": n,
            "rollout_secs": round3(secs),
            "theoretical_min_secs": round3(theoretical),
            "ratio": ratio.map(round3),
            "overhead_per_batch_ms": overhead_per_batch_ms.map(round3),
            "step_turnaround_ms": steps.turnaround.summary(),
            "commands_by_kind": by_kind,
            "sessions_lost": sim.shared.counters.sessions_lost.load(Ordering::Relaxed) - lost_before,
            "server_cpu_secs": round3(used.process_cpu_secs),
            "server_cpu_cores": round3(used.process_cores),
            "server_rss_mib": procfs::status_mib(server.pid, "VmRSS").map(round3),
            "simulator_cpu_cores": round3(used.simulator_cores),
            "simulator_rss_mib": procfs::status_mib(std::process::id(), "VmRSS").map(round3),
            "machine_busy_cores": round3(used.machine_busy_cores),
            "other_processes_cores": round3(used.others()),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": procfs::loadavg(),
            "machine": machine(),
            "targets": targets,
        });
        let mut figures = merge(merge(figures, driven), connected_json(&connected));
        figures["rollout_secs"] = json!(round3(secs));
        figures["machine"]["shared"] = json!("floor server and simulator run on this one machine");
        summary(&figures);
        all.push(figures);
    }
    Ok(all)
}

fn summary(f: &Value) {
    eprintln!(
        "\n== rollout floor (bare tonic + rustls server, no drover logic): {} instances on {} hosts, steps {}, batches {} of {} ({} each) (floor server and simulator on one {}-core machine)",
        f["instances"],
        f["hosts"],
        f["step_delay"],
        f["batches"],
        f["batch"],
        f["batch_size"],
        f["machine"]["cores"]
    );
    eprintln!(
        "   outcome           {} done, {} failed; {} commands, {} updates, {} reports received; {} sessions lost",
        f["done"],
        f["failed"],
        f["commands_sent"],
        f["command_updates_received"],
        f["reports_received"],
        f["sessions_lost"]
    );
    eprintln!(
        "   time              {} s; theoretical minimum {} s; ratio {}",
        f["rollout_secs"], f["theoretical_min_secs"], f["ratio"]
    );
    print_batches(f);
    eprintln!(
        "   CPU               server {} cores ({} s, RSS {} MiB), simulator {} cores, other processes {} cores; machine busy {} cores; load {} -> {}",
        f["server_cpu_cores"],
        f["server_cpu_secs"],
        f["server_rss_mib"],
        f["simulator_cpu_cores"],
        f["other_processes_cores"],
        f["machine_busy_cores"],
        f["loadavg_at_start"],
        f["loadavg_at_end"]
    );
    print_targets(f);
}
