//! `drover`: the operator's command line. Parses arguments and hands off to
//! `commands`; everything that can fail returns an error that is printed
//! once, here, and mapped to the exit code (0 ok, 1 failure, 2 usage, 3 lost contact).

mod cli;
mod commands;
mod config;
mod conn;
mod error;
mod labels;
mod leader;
mod output;

use clap::Parser;

fn main() {
    // clap prints its own usage errors and exits 2.
    let cli = cli::Cli::parse();
    // Another provider may already be installed; either way ring is what
    // drover's TLS config asks for explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();

    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(commands::run(cli, config::process_env())));
    if let Err(err) = result {
        eprintln!("error: {}", error::render(&err));
        std::process::exit(error::exit_code(&err));
    }
}
