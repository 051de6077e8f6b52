//! `drover-fleet`: a local drover fleet on loopback, for the README's demo.
//!
//! `drover-fleet up` creates a CA, starts a coordinator, HAProxy and N agents
//! (separate processes, each supervising a `web` instance behind HAProxy),
//! pushes releases v1 and v2, deploys v1, then rolls v2 across the fleet
//! under steady load through HAProxy, watched live, and ends with requests
//! served and failed and the lowest capacity against the floor. It exits
//! non-zero unless the update succeeded with no failed request. `--keep`
//! leaves the fleet running until Ctrl-C and prints the settings to use the
//! CLI against it.
//!
//! `--ha` runs the same update on two coordinators sharing a 3-member etcd
//! and SIGKILLs the leader in the middle of it: the standby takes the
//! rollout over and finishes it, and the demo shows who leads before and
//! after, the takeover time and the epochs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::process::Stdio;

use drover_tests::harness::etcd::EtcdCluster;
use drover_tests::harness::rollout::SERVICE;
use drover_tests::{
    CapacityReport, CapacitySampler, Cli, Coordinator, Load, LoadReport, LoadSpec, RolloutView,
    WebFleet,
};

#[path = "drover-fleet/dr.rs"]
mod dr;
#[path = "drover-fleet/ha.rs"]
mod ha;
use ha::{ha_rolling_update, restart_as_standbys, start_etcd};

/// Marks a dir as made by drover-fleet, so a later run may wipe it.
const MARKER: &str = ".drover-fleet";

#[derive(Debug, Parser)]
#[command(
    name = "drover-fleet",
    about = "Run a local drover fleet on loopback",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    opts: UpOpts,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start a fleet, show it, stop it (the default).
    Up(UpOpts),
}

#[derive(Debug, Clone, clap::Args)]
struct UpOpts {
    /// Number of agents (hosts), at least 2.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Put the fleet's files here instead of a temp dir (kept afterwards;
    /// wiped at the start if a previous drover-fleet made it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the fleet running until Ctrl-C.
    #[arg(long)]
    keep: bool,
    /// What to show: `rolling` (a rolling update to v2) or `canary` (a
    /// canary of a release failing 5% of requests, caught and rolled back
    /// by the analysis, then a good canary promoted step by step).
    #[arg(long, default_value = "rolling", value_parser = ["rolling", "canary"])]
    strategy: String,
    /// High availability: 3 etcd members and 2 coordinators on them (one
    /// leads, one stands by); the leader is SIGKILLed in the middle of the
    /// rolling update and the standby takes it over and finishes it.
    #[arg(long)]
    ha: bool,
    /// A disaster-recovery drill: hosts on two sites (site=primary and
    /// site=dr, the DR servers at weight 0 in HAProxy) and a PostgreSQL
    /// primary streaming to a replica; under load, `drover drill run`
    /// stops writes, waits for the replica, promotes it, moves the traffic
    /// to DR and verifies it, then prints the after-action report.
    #[arg(long, conflicts_with_all = ["ha", "keep"])]
    dr: bool,
}

fn step(msg: &str) {
    println!("==> {msg}");
}

/// Prepares `--dir`: created if missing, wiped if a previous run made it,
/// refused if it holds anything else.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .peekable();
        if entries.peek().is_some() {
            if !dir.join(MARKER).exists() {
                bail!(
                    "{} is not empty and was not made by drover-fleet; pick another --dir",
                    dir.display()
                );
            }
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("remove previous fleet in {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "made by drover-fleet; safe to delete\n")
        .with_context(|| format!("mark {}", dir.display()))?;
    Ok(())
}

/// Phase 1: CA, coordinator, HAProxy and agents h1..hN (zones a, b, c),
/// each supervising a `web` instance that runs whatever release is
/// deployed, behind HAProxy. With `etcd` (`--ha`), two coordinators on it:
/// c1 leads, c2 stands by, and the agents know both.
fn start_fleet(opts: &UpOpts, etcd: Option<&EtcdCluster>) -> Result<WebFleet> {
    if opts.agents < 2 {
        bail!(
            "--agents must be at least 2: with a single instance, updating it takes the only server out of HAProxy"
        );
    }
    let started = Instant::now();
    let mut builder = WebFleet::builder();
    if let Some(dir) = &opts.dir {
        prepare_dir(dir)?;
        builder = builder.dir(dir);
    }
    for i in 1..=opts.agents {
        let zone = ["a", "b", "c"][(i - 1) % 3];
        builder = builder.host(&format!("h{i}"), &[("env", "demo"), ("zone", zone)]);
    }
    let coordinators = match etcd {
        Some(etcd) => {
            builder = builder.ha(etcd);
            "2 coordinators on etcd (c1 leads, c2 stands by)"
        }
        None => "a coordinator",
    };
    step(&format!(
        "starting a CA, {coordinators}, HAProxy and {} agents (h1..h{}), each supervising a `web` instance behind HAProxy",
        opts.agents, opts.agents
    ));
    let web = builder.start();
    for c in coordinators_of(&web) {
        let role = match c.role().as_str() {
            "" | "single" => String::new(),
            r => format!(" [{r}]"),
        };
        println!(
            "    coordinator {}{role}: grpc {} (mTLS), http http://{}/metrics",
            c.spec.name,
            c.grpc_addr(),
            c.http_addr()
        );
    }
    println!(
        "    HAProxy: http://{}/ in front of {}",
        web.haproxy.frontend_addr(),
        web.ports
            .iter()
            .map(|(h, p)| format!("{h}=127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("    files in {}", web.root.display());
    let knowing = if etcd.is_some() {
        " (each knows both coordinators)"
    } else {
        ""
    };
    println!(
        "    {} agents enrolled with join tokens and connected{knowing} after {:.1}s",
        opts.agents,
        started.elapsed().as_secs_f64()
    );
    Ok(web)
}

/// Every coordinator of the fleet: c1, then the standbys.
fn coordinators_of(web: &WebFleet) -> impl Iterator<Item = &Coordinator> {
    std::iter::once(&web.fleet.coordinator).chain(&web.fleet.standbys)
}

/// The CLI as the operator, given every coordinator's address (as an
/// operator of an HA fleet sets DROVER_ADDR): it finds the leader itself.
fn cli_all(web: &WebFleet) -> Cli {
    let addr = coordinators_of(web)
        .map(|c| c.grpc_addr())
        .collect::<Vec<_>>()
        .join(",");
    Cli {
        addr,
        ..web.fleet.operator()
    }
}

fn cli(web: &WebFleet, args: &[&str]) -> Result<String> {
    let out = web.fleet.cli(args);
    if !out.success() {
        bail!("`drover {}` failed:\n{out}", args.join(" "));
    }
    Ok(out.stdout)
}

/// Runs `drover ARGS` on the terminal, so its live output shows.
fn cli_live(web: &WebFleet, args: &[&str]) -> Result<bool> {
    println!("$ drover {}", args.join(" "));
    let status = web
        .fleet
        .operator()
        .command(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("run drover {}", args.join(" ")))?;
    Ok(status.success())
}

/// The floor for the demo's update: 75% of the instances, or all but one on
/// a fleet too small for that to leave room.
fn floor(n: usize) -> String {
    if n >= 4 {
        "75%".to_string()
    } else {
        (n - 1).to_string()
    }
}

/// The first deploy: v1 on every instance at once (nothing serves yet).
fn deploy_v1(web: &WebFleet) -> Result<()> {
    step("deploying v1 to every instance (first deploy: --min-healthy 0 --batch 100%)");
    let out = web.start_rollout("v1", &["--min-healthy", "0", "--batch", "100%"]);
    if !out.success() {
        bail!("the first deploy of v1 failed:\n{out}");
    }
    web.wait_all_serving("v1");
    Ok(())
}

/// About 300 requests a second through HAProxy, bounded in time and count.
fn steady_load(web: &WebFleet, max_duration: Duration, max_requests: u64) -> Load {
    let addr = web.haproxy.frontend_addr();
    step(&format!(
        "steady load through HAProxy (http://{addr}/): 3 clients, about 300 requests/s, bounded"
    ));
    Load::start(
        &addr,
        LoadSpec {
            max_duration,
            max_requests,
            ..LoadSpec::default()
        },
    )
}

/// Releases v1 and v2 pushed, v1 deployed everywhere, the fleet shown.
fn prepare_v1(web: &WebFleet) -> Result<()> {
    step("pushing releases v1 and v2 of service web (drover artifact push)");
    for v in ["v1", "v2"] {
        let digest = web.push_release(v, &[]);
        println!("    web {v}: sha256 {}", &digest[..16]);
    }
    deploy_v1(web)?;
    step("drover agents -o wide");
    print!("{}", cli(web, &["agents", "-o", "wide"])?);
    Ok(())
}

/// `drover rollout start` of v2 with `batch` under `floor`, each instance
/// healthy for `min_healthy_time` before it counts.
fn update_args(batch: &str, floor: &str, min_healthy_time: &str) -> Vec<String> {
    [
        "rollout",
        "start",
        "--service",
        SERVICE,
        "--version",
        "v2",
        "--batch",
        batch,
        "--min-healthy",
        floor,
        "--min-healthy-time",
        min_healthy_time,
        "--healthy-deadline",
        "30s",
        "--step-timeout",
        "30s",
        "--progress-deadline",
        "2m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What a rolling update under load came to.
struct Update {
    succeeded: bool,
    took: Duration,
    rollout: RolloutView,
    report: LoadReport,
    capacity: CapacityReport,
}

impl Update {
    /// The summary's rollout line.
    fn print_rollout(&self, on: &str) {
        let r = &self.rollout;
        println!(
            "    rollout {}: {} in {:.1}s, {} of {} instances updated{on}",
            r.id,
            r.phase,
            self.took.as_secs_f64(),
            r.counts.done,
            r.counts.total
        );
    }

    /// The summary's lines on requests, versions and capacity.
    fn print_load(&self) {
        let report = &self.report;
        println!(
            "    requests through HAProxy: {} served, {} failed",
            report.ok, report.failed
        );
        for f in report.failures.iter().take(5) {
            println!("      {f}");
        }
        println!(
            "    answers by version: {}",
            report
                .versions
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "    lowest capacity: {} in service by HAProxy's count, {} by drover's; floor {} of {}",
            self.capacity
                .min_capacity()
                .map_or_else(|| "?".to_string(), |c| c.to_string()),
            self.rollout.lowest_capacity,
            self.rollout.floor,
            self.rollout.counts.total
        );
    }

    /// Fails unless the update succeeded with no failed request and
    /// HAProxy never saw capacity under the floor.
    fn check(&self) -> Result<()> {
        let rollout = &self.rollout;
        if !self.succeeded || rollout.phase != "succeeded" {
            bail!(
                "the rolling update did not succeed: {}",
                rollout.reason_text()
            );
        }
        if self.report.failed > 0 {
            bail!("{} requests failed during the update", self.report.failed);
        }
        if (self.capacity.min_capacity()).is_some_and(|c| c < rollout.floor) {
            bail!("HAProxy saw capacity under the floor:\n{}", self.capacity);
        }
        Ok(())
    }
}

/// Samples HAProxy's count of servers in service every 50 ms, bounded.
fn sample_capacity(web: &WebFleet, max_duration: Duration) -> CapacitySampler {
    let every = Duration::from_millis(50);
    let samples = (max_duration.as_millis() / every.as_millis()) as u64;
    CapacitySampler::start(web.haproxy.socket(), SERVICE, every, samples)
}

/// Phase 2: releases v1 and v2 pushed, v1 deployed everywhere, the fleet
/// shown; then a rolling update to v2 under steady load through HAProxy.
fn rolling_update(web: &WebFleet, opts: &UpOpts) -> Result<()> {
    prepare_v1(web)?;
    let load = steady_load(web, Duration::from_secs(120), 40_000);
    let sampler = sample_capacity(web, Duration::from_secs(120));
    let floor = floor(opts.agents);
    step(&format!(
        "rolling update v1 -> v2, batches 1,25%,100%, floor {floor}, watched live"
    ));
    let started = Instant::now();
    let args = update_args("1,25%,100%", &floor, "1s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let succeeded = cli_live(web, &args)?;
    let took = started.elapsed();
    let update = Update {
        succeeded,
        took,
        capacity: sampler.stop(),
        report: load.stop(),
        rollout: web.latest(),
    };
    step("summary");
    update.print_rollout("");
    update.print_load();
    update.check()?;
    println!("    every instance on v2; no request failed; capacity never under the floor");
    Ok(())
}

/// The canary demo's spec: short bakes and frequent looks, so a bad canary
/// is caught and a good one promoted in about a minute.
const CANARY_SPEC: &str = "strategy = \"canary\"
steps = \"10%,50%,100%\"
bake = \"15s\"
min_healthy = \"75%\"
min_healthy_time = \"1s\"
healthy_deadline = \"30s\"
step_timeout = \"30s\"
progress_deadline = \"2m\"

[analysis]
interval = \"1s\"
warmup = \"2s\"
min_requests = 100
";

/// Phase 2, canary: v2-bad (fails 5% of its requests) caught in its first
/// step and rolled back by the analysis; v2 promoted step by step. Both
/// under steady load through HAProxy, watched live.
fn canary(web: &WebFleet, opts: &UpOpts) -> Result<()> {
    if opts.agents < 3 {
        bail!(
            "--strategy canary needs --agents 3 or more: a canary step leaves instances on the old release to compare with"
        );
    }
    step("pushing web v1, v2-bad (fails 5% of requests) and v2 (drover artifact push)");
    web.push_release("v1", &[]);
    web.push_release("v2-bad", &["--error-rate", "0.05"]);
    web.push_release("v2", &[]);
    deploy_v1(web)?;
    let spec = web.root.join("canary.toml");
    std::fs::write(&spec, CANARY_SPEC).context("write canary.toml")?;
    let spec = spec.display().to_string();
    println!("    canary spec ({spec}):\n{CANARY_SPEC}");
    let load = steady_load(web, Duration::from_secs(150), 60_000);
    let mut outcomes = Vec::new();
    for (version, what) in [
        ("v2-bad", "a bad canary: v2-bad fails 5% of its requests"),
        ("v2", "a good canary: v2"),
    ] {
        step(&format!("{what}; canary 10% -> 50% -> 100%, watched live"));
        let before = load.counts();
        let started = Instant::now();
        let args = [
            "rollout",
            "start",
            "--service",
            SERVICE,
            "--version",
            version,
            "-f",
            &spec,
        ];
        cli_live(web, &args)?;
        let rollout = web.latest();
        let after = load.counts();
        println!(
            "    rollout {} ({version}): {} in {:.1}s; {} requests meanwhile, {} failed",
            rollout.id,
            rollout.phase,
            started.elapsed().as_secs_f64(),
            after.0.saturating_sub(before.0),
            after.2.saturating_sub(before.2),
        );
        if !rollout.reason_text().is_empty() {
            println!("    why: {}", rollout.reason_text());
        }
        step(&format!("drover rollout analysis {}", rollout.id));
        print!("{}", cli(web, &["rollout", "analysis", &rollout.id])?);
        outcomes.push((version, rollout));
    }
    let report = load.stop();
    step("summary");
    println!(
        "    requests through HAProxy: {} served, {} failed (all from v2-bad while it had its 10% share)",
        report.ok, report.failed
    );
    println!(
        "    answers by version: {}",
        (report.versions.iter())
            .map(|(v, n)| format!("{v} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let bad = &outcomes[0].1;
    let good = &outcomes[1].1;
    if bad.phase != "rolled_back" {
        bail!(
            "the bad canary was not rolled back: {} {}",
            bad.phase,
            bad.reason_text()
        );
    }
    if good.phase != "succeeded" {
        bail!(
            "the good canary did not succeed: {} {}",
            good.phase,
            good.reason_text()
        );
    }
    if report.failed * 10 > report.total.max(1) {
        bail!(
            "{} of {} requests failed: more than the canary's share",
            report.failed,
            report.total
        );
    }
    println!("    v2-bad caught and rolled back by the analysis; v2 promoted to every instance");
    Ok(())
}

fn wait_for_ctrl_c() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
        tokio::select! {
            res = tokio::signal::ctrl_c() => res.context("wait for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    })
}

fn up(opts: &UpOpts) -> Result<()> {
    if opts.dr {
        if opts.strategy == "canary" {
            bail!("--dr runs a DR drill; it does not run with --strategy canary");
        }
        return dr::run(opts);
    }
    if opts.ha && opts.strategy == "canary" {
        bail!(
            "--ha shows a leader killed in the middle of a rolling update; it does not run with \
             --strategy canary: run `scripts/demo --ha` and `scripts/demo --strategy canary` apart"
        );
    }
    // Before the fleet, so that it outlives the coordinators on it.
    let etcd = if opts.ha { Some(start_etcd()?) } else { None };
    let mut web = start_fleet(opts, etcd.as_ref())?;
    let result = match opts.strategy.as_str() {
        "canary" => canary(&web, opts),
        _ if opts.ha => ha_rolling_update(&mut web, opts),
        _ => rolling_update(&web, opts),
    };
    if result.is_ok() && opts.keep {
        let cli = if opts.ha {
            restart_as_standbys(&mut web)?;
            cli_all(&web)
        } else {
            web.fleet.operator()
        };
        step("fleet running; use the CLI against it with:");
        println!("{}", cli.exports());
        println!(
            "    e.g. `target/debug/drover agents -o wide`, `target/debug/drover rollout list`, \
             `target/debug/drover rollout status {}`",
            web.latest().id
        );
        if opts.ha {
            let pids: Vec<String> = coordinators_of(&web)
                .map(|c| format!("{} {} pid {}", c.spec.name, c.role(), c.pid().unwrap_or(0)))
                .collect();
            println!(
                "    `target/debug/drover coordinators`; `kill -9` the leader ({}) and watch the other take over",
                pids.join(", ")
            );
        }
        let logs: Vec<String> = coordinators_of(&web)
            .map(|c| c.log.display().to_string())
            .collect();
        println!(
            "    logs: {}, {}/fleet/agents/*/agent.log",
            logs.join(", "),
            web.root.display()
        );
        println!("    press Ctrl-C to stop");
        wait_for_ctrl_c()?;
    }
    let what = if opts.ha {
        "coordinators, HAProxy and etcd"
    } else {
        "coordinator and HAProxy"
    };
    step(&format!("stopping agents, instances, {what}"));
    web.fleet.shutdown(Duration::from_secs(5));
    for standby in &mut web.fleet.standbys {
        standby.terminate(Duration::from_secs(5));
    }
    if opts.dir.is_none() {
        println!("    removed {}", web.root.display());
    }
    result
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Cmd::Up(opts)) => up(&opts),
        None => up(&args.opts),
    }
}
