//! `drover-fleetsim`: many simulated agents against one real coordinator.
//! Parses arguments and hands over to [`drover_tests::fleetsim`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover_tests::fleetsim::{self, fleet, floor, rollout};

/// Simulate a fleet of drover agents against a real drover-coordinator
///
/// Starts `drover-coordinator` (found beside this binary) in a temp dir
/// with a fresh CA, signs one agent certificate per simulated host with
/// that CA (identity drover://agent/<host>), and opens one TCP + mutual-TLS
/// session per host from this process. Hosts send Hello and health reports
/// (instances with health, host metrics) at the interval, jittered across
/// it, and answer rollout commands (ACCEPTED, then SUCCEEDED after the step
/// delay) with the effect a real agent's step has.
///
/// Output: one JSON object per run on stdout (scenario, n, interval_ms,
/// connect_secs, reports_sent, report_to_visible_ms {p50, p99, ...},
/// coordinator_cpu_cores, coordinator_rss_mib, agents_json_secs, ... for
/// `fleet`; rollout_secs, overhead_per_batch_ms, ratio, ... for `rollout`;
/// `targets` where the issue sets one), a readable summary on stderr.
/// Coordinator, simulator and CLI share the machine. Build first with
/// `cargo build --release --workspace --bins`. The open-file limit is
/// raised for the simulator and the coordinator it starts (run as root for
/// more sessions than the hard limit allows).
#[derive(Debug, Parser)]
#[command(name = "drover-fleetsim", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Scenario 1, fleet scale: time until all N are connected,
    /// report-to-visible latency (p50/p99 over the steady window, via an
    /// operator's WatchHosts), coordinator CPU and RSS, and the time of
    /// `drover agents -o json`.
    ///
    /// e.g. `drover-fleetsim fleet --hosts 10000 --interval 1s`
    Fleet(fleet::FleetOptions),
    /// Scenario 2, rollout overhead: `drover rollout start --batch 10%
    /// --min-healthy 90% --min-healthy-time 0s` over the simulated `web`
    /// instances, one rollout per --step-delay; total time, overhead per
    /// batch, and the ratio to batches x 6 steps x delay.
    ///
    /// e.g. `drover-fleetsim rollout --instances 10000 --step-delay 0 --step-delay 100ms`
    Rollout(rollout::RolloutOptions),
    /// The floor under scenario 2: enrols the hosts with a real
    /// coordinator, stops it, and serves its address with a bare tonic +
    /// rustls AgentService (same certificate, same mutual TLS) that drives
    /// the rollout's message pattern itself: batches of --batch-percent,
    /// each instance's 6 steps back to back, no store, no events. Same
    /// figures as `rollout`; the server is a process of its own, measured
    /// as the coordinator is.
    ///
    /// e.g. `drover-fleetsim floor --instances 10000 --step-delay 0 --step-delay 100ms`
    Floor(floor::FloorOptions),
    /// The bare server `floor` starts; takes run requests on stdin.
    #[command(hide = true)]
    FloorServer(floor::ServerOptions),
    /// A quick check that everything works: `fleet` with 50 hosts for a
    /// few seconds, then `rollout` over 50 instances with steps taking 0
    /// and 20ms.
    Smoke {
        /// Keep the runs' files here instead of temp dirs.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match cli.cmd {
        Cmd::Fleet(opts) => fleet::run(&opts).map(drop),
        Cmd::Rollout(opts) => rollout::run(&opts).map(drop),
        Cmd::Floor(opts) => floor::run(&opts).map(drop),
        Cmd::FloorServer(opts) => floor::serve(&opts),
        Cmd::Smoke { dir } => fleetsim::smoke(dir.as_deref()).map(drop),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-fleetsim: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
