//! `drover-coordinator`: parse arguments, load and validate the config, bind,
//! then hand over to [`drover_coordinator::start`]; readiness (ready file,
//! sd_notify) is announced only once the CA and TLS material have loaded.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use drover_coordinator::config::CoordinatorConfig;
use drover_coordinator::{Listeners, start};
use tokio_util::sync::CancellationToken;

/// The drover coordinator: enrols agents, holds their mTLS sessions and the
/// host registry, and serves the operator's control API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(
        long,
        short,
        env = "DROVER_COORDINATOR_CONFIG",
        default_value = "/etc/drover/coordinator.toml"
    )]
    config: PathBuf,
    /// Once serving, write the bound addresses here as JSON
    /// (`{"grpc": ..., "http": ..., "pid": ...}`); useful with port 0.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match CoordinatorConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let tracing = match drover_telemetry::resolve(&config.tracing, "drover-coordinator", |k| {
        std::env::var(k).ok()
    }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP channel's worker runs on this runtime.
    let telemetry = match runtime.block_on(async { drover_telemetry::init(tracing) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let result = serve(config, args.ready_file).await;
        // After every span has ended, so the last ones reach the collector.
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: CoordinatorConfig, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let listeners = Listeners::bind(config.listen.grpc, config.listen.http)
        .await
        .with_context(|| {
            format!(
                "bind listen addresses grpc={} http={}",
                config.listen.grpc, config.listen.http
            )
        })?;
    let grpc = listeners.grpc.local_addr().context("read gRPC address")?;
    let http = listeners.http.local_addr().context("read HTTP address")?;
    let shutdown = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    // Everything that can be wrong with the CA, the TLS files or the store
    // shows here, before readiness is announced.
    // Ready once serving: at once for one coordinator, or as a standby
    // (HA on etcd) before the election is won.
    let announced = std::sync::Mutex::new(None);
    // `role`: single (no election), standby, or leader (written again on
    // promotion).
    let announce = |role: &str| -> anyhow::Result<()> {
        tracing::info!(%grpc, %http, role, "listening");
        if let Some(path) = &ready_file {
            let body = serde_json::json!({"grpc": grpc.to_string(), "http": http.to_string(), "pid": std::process::id(), "role": role});
            drover_coordinator::pki::write_atomic(path, body.to_string().as_bytes(), false)
                .context("write ready file")?;
        }
        if let Err(e) = drover_net::sd_notify::notify("READY=1") {
            tracing::warn!(error = %e, "sd_notify READY failed");
        }
        Ok(())
    };
    let started = start(config, listeners, shutdown.clone(), || {
        *announced.lock().unwrap_or_else(|p| p.into_inner()) = Some(announce("standby"));
    })
    .await
    .context("start coordinator")?;
    if let Some(result) = announced.lock().unwrap_or_else(|p| p.into_inner()).take() {
        result?;
    }
    if let Some(s) = &started {
        announce(s.role())?;
    }
    let Some(started) = started else {
        signals.abort();
        tracing::info!("stopped while standing by");
        return Ok(());
    };
    let result = started.serve().await;
    let _ = drover_net::sd_notify::notify("STOPPING=1");
    signals.abort();
    result.context("run coordinator")
}

/// First SIGTERM/SIGINT: graceful stop. Second: exit at once.
async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    tracing::info!("shutting down (send the signal again to exit at once)");
    shutdown.cancel();
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    std::process::exit(130);
}
