//! `drover-agent`: parse arguments, load and validate the config, then hand
//! over to the library ([`drover_agent::run`], [`drover_agent::enroll`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover_agent::config::{Config, DEFAULT_CONFIG_PATH};
use drover_agent::enroll::{self, EnrollOptions};
use tokio_util::sync::CancellationToken;

/// drover agent: supervises this host's instances and reports to a coordinator.
#[derive(Parser)]
#[command(name = "drover-agent", version)]
struct Cli {
    /// Agent configuration file.
    #[arg(long, short = 'c', global = true, default_value = DEFAULT_CONFIG_PATH, env = "DROVER_AGENT_CONFIG")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Enrol this host: trade a join token for a certificate.
    Enroll(EnrollOptions),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let command = cli.command.unwrap_or(Command::Run);
    // Only a running agent exports spans; enrolling makes none.
    let tracing = match &command {
        Command::Run => {
            match drover_telemetry::resolve(&config.tracing, "drover-agent", |k| {
                std::env::var(k).ok()
            }) {
                Ok(t) => t,
                Err(e) => return fail(&format!("{}: {e}", cli.config.display()), 2),
            }
        }
        Command::Enroll(_) => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("start the tokio runtime"), 1),
    };
    // The OTLP channel's worker runs on this runtime.
    let telemetry = match runtime.block_on(async { drover_telemetry::init(tracing) }) {
        Ok(t) => t,
        Err(e) => return fail(&e, 2),
    };
    runtime.block_on(async move {
        match command {
            Command::Run => {
                let shutdown = CancellationToken::new();
                if let Err(e) = drover_agent::cancel_on_signals(shutdown.clone()) {
                    return fail(&anyhow::Error::new(e).context("install signal handlers"), 1);
                }
                let result = drover_agent::run(config, shutdown).await;
                // After the command tasks ended, so their spans are sent.
                telemetry.shutdown().await;
                match result {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&e, e.exit_code()),
                }
            }
            Command::Enroll(opts) => match enroll::enroll(&config, &opts).await {
                Ok(done) => {
                    println!(
                        "enrolled as {}; certificate valid until {}",
                        done.host_id,
                        humantime::format_rfc3339_seconds(done.not_after)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e, e.exit_code()),
            },
        }
    })
}

/// Prints `error: ...` (with the cause chain) and picks the exit code.
fn fail(err: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(code)
}
