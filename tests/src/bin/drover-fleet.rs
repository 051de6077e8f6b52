//! `drover-fleet`: a local drover fleet on loopback, for the README's demo.
//!
//! `drover-fleet up` creates a CA, starts a coordinator and N agents (separate
//! processes, each supervising a drover-sample instance), waits until all are
//! connected and healthy, shows `drover agents`, then stops everything
//! (`--keep`: keeps it running until Ctrl-C and prints the settings to use
//! the CLI against it). The demo runs as phases so later ones (a rolling
//! update behind HAProxy) slot in after `show`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use drover_tests::{AgentSpec, Fleet, HostView};

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
    /// Number of agents (hosts).
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Put the fleet's files here instead of a temp dir (kept afterwards;
    /// wiped at the start if a previous drover-fleet made it).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the fleet running until Ctrl-C.
    #[arg(long)]
    keep: bool,
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

/// h1..hN across zones a, b, c.
fn agent_specs(n: usize) -> Vec<AgentSpec> {
    (1..=n)
        .map(|i| {
            let zone = ["a", "b", "c"][(i - 1) % 3];
            AgentSpec::new(&format!("h{i}"))
                .label("env", "demo")
                .label("zone", zone)
                .label("role", "web")
                .report_interval("1s")
        })
        .collect()
}

/// Phase 1: CA, coordinator, agents enrolled by join token.
fn start_fleet(opts: &UpOpts) -> Result<Fleet> {
    if opts.agents == 0 {
        bail!("--agents must be at least 1");
    }
    let started = Instant::now();
    let mut builder = Fleet::builder();
    if let Some(dir) = &opts.dir {
        prepare_dir(dir)?;
        builder = builder.dir(dir);
    }
    step("creating a CA, coordinator/operator/viewer certificates; starting the coordinator");
    let mut fleet = builder.start();
    println!(
        "    coordinator: grpc {} (mTLS), http http://{}/metrics",
        fleet.coordinator.grpc_addr(),
        fleet.coordinator.http_addr()
    );
    println!("    files in {}", fleet.dir.display());
    for spec in agent_specs(opts.agents) {
        let id = spec.host_id.clone();
        let port = spec.sample_port();
        fleet.add_agent(spec);
        match port {
            Some(port) => println!(
                "    enrolled {id} with a join token; it supervises drover-sample on http://127.0.0.1:{port}/"
            ),
            None => println!("    enrolled {id} with a join token"),
        }
    }
    step("waiting until every agent is connected and its instance healthy");
    let ids: Vec<String> = fleet
        .agents
        .iter()
        .map(|a| a.host_id().to_string())
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    fleet.wait_healthy(&ids);
    println!(
        "    {} agents connected and healthy after {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(fleet)
}

/// Phase 2: what the operator sees.
fn show(fleet: &Fleet) -> Result<Vec<HostView>> {
    for args in [&["agents"][..], &["agents", "-o", "wide"][..]] {
        step(&format!("drover {}", args.join(" ")));
        let out = fleet.cli(args);
        if !out.success() {
            bail!("`drover {}` failed:\n{out}", args.join(" "));
        }
        print!("{}", out.stdout);
    }
    Ok(fleet.agents_json())
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
    let mut fleet = start_fleet(opts)?;
    let hosts = show(&fleet)?;
    let healthy = hosts.iter().filter(|h| h.healthy()).count();
    if healthy < opts.agents {
        bail!("only {healthy} of {} hosts are healthy", opts.agents);
    }
    if opts.keep {
        step("fleet running; use the CLI against it with:");
        println!("{}", fleet.operator().exports());
        println!(
            "    e.g. `target/debug/drover agents -o wide`, `target/debug/drover agents --watch`"
        );
        println!(
            "    logs: {}/coordinator/coordinator.log, {}/agents/*/agent.log",
            fleet.dir.display(),
            fleet.dir.display()
        );
        println!("    press Ctrl-C to stop");
        wait_for_ctrl_c()?;
    }
    step("stopping agents, instances and coordinator");
    fleet.shutdown(Duration::from_secs(5));
    if opts.dir.is_none() {
        println!("    removed {}", fleet.dir.display());
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Cmd::Up(opts)) => up(&opts),
        None => up(&args.opts),
    }
}
