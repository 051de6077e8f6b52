//! `drover-agent`: parse arguments, load and validate the config, then hand
//! over to the library ([`drover_agent::run`], [`drover_agent::enroll`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover_agent::config::{Config, DEFAULT_CONFIG_PATH};
use drover_agent::enroll::{self, EnrollOptions};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();

    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return fail(&e, 2),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("start the tokio runtime"), 1),
    };
    runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => {
                let shutdown = CancellationToken::new();
                if let Err(e) = drover_agent::cancel_on_signals(shutdown.clone()) {
                    return fail(&anyhow::Error::new(e).context("install signal handlers"), 1);
                }
                match drover_agent::run(config, shutdown).await {
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
