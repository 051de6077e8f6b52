//! drover-agent: runs on every host, supervises the host's instances,
//! checks their health and reports to a coordinator over one mutual-TLS
//! gRPC stream.
//!
//! [`run`] is the agent; [`enroll::enroll`] is the one-time enrolment. The
//! binary only parses arguments and calls these; tests call them too.

pub mod app_metrics;
pub mod backoff;
pub mod commands;
pub mod config;
pub mod deploy;
pub mod drain;
pub mod enroll;
pub mod exporter;
pub mod fencing;
pub mod fsutil;
pub mod health;
pub mod hooks;
pub mod host_metrics;
pub mod http;
pub mod journal;
pub mod prometheus;
pub mod runtime;
pub mod session;
pub mod state;
pub mod supervisor;
pub mod tls;
pub mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_net::transport::ConnectOptions;
use drover_proto::identity::Identity;
use tokio_util::sync::CancellationToken;

use crate::commands::Executor;
use crate::config::Config;
use crate::deploy::fetch::GrpcSource;
use crate::journal::Journal;
use crate::supervisor::{StatusBoard, Supervisor};
use crate::tls::TlsFiles;

/// The version sent in Hello.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long shutdown waits for every task (session, command steps,
/// instance supervisors) to end before the agent exits anyway. Instances
/// keep running either way.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "not enrolled: run drover-agent enroll --coordinator ADDR --token TOKEN --ca-fingerprint SHA256 ({} is missing)",
        missing.display()
    )]
    NotEnrolled { missing: PathBuf },
    #[error(
        "{}: the certificate is for {found}, but host_id in {} is `{host_id}`; fix host_id or enrol again with --force",
        cert.display(), config.display()
    )]
    HostMismatch {
        cert: PathBuf,
        config: PathBuf,
        found: String,
        host_id: String,
    },
    #[error("load TLS files: {0}")]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
    #[error(transparent)]
    Fencing(#[from] fencing::FencingError),
    #[error("start instance {name}: {source}")]
    Instance {
        name: String,
        source: runtime::RuntimeError,
    },
    #[error(transparent)]
    MetricsListen(#[from] exporter::ListenError),
}

impl AgentError {
    /// 2 when the operator has to fix the setup (not enrolled, wrong host
    /// id, a damaged epoch file), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::NotEnrolled { .. }
            | AgentError::HostMismatch { .. }
            | AgentError::Fencing(fencing::FencingError::Corrupt { .. })
            | AgentError::MetricsListen(_) => 2,
            _ => 1,
        }
    }
}

/// Runs the agent until `shutdown` is cancelled: starts or adopts every
/// instance, then keeps a session to a coordinator. On shutdown the
/// instances keep running; a restarted agent adopts them.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let tls_files = TlsFiles::new(&config.data_dir);
    if let Some(missing) = tls_files.missing() {
        return Err(AgentError::NotEnrolled {
            missing: missing.to_path_buf(),
        });
    }
    let loaded = tls_files.load()?;
    let expected = Identity::agent(&config.host_id).ok();
    if expected.as_ref() != Some(&loaded.cert.identity) {
        return Err(AgentError::HostMismatch {
            cert: tls_files.cert.clone(),
            config: config.path.clone(),
            found: loaded.cert.identity.to_string(),
            host_id: config.host_id.clone(),
        });
    }
    // Bound before any work: a taken address stops the agent at once.
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(exporter::bind(addr).await?),
        None => None,
    };
    fsutil::create_dir(&config.data_dir.join("instances"), 0o755)?;
    // What an agent killed mid-deploy left behind goes before anything
    // starts: `current` always leads to a complete release.
    for inst in &config.instances {
        if let Some(d) = &inst.deploy {
            for path in deploy::clean_leftovers(d) {
                tracing::info!(instance = %inst.name, path = %path.display(), "removed an unfinished deploy's leftover");
            }
        }
    }
    // Opening the journal and settling what it left unfinished write
    // and fsync: off the runtime thread, like every other durable write.
    let journal_dir = config.data_dir.clone();
    let journal = tokio::task::spawn_blocking(move || Journal::open(&journal_dir))
        .await
        .map_err(|e| fsutil::FsError::Io {
            path: journal::Journal::dir(&config.data_dir),
            source: std::io::Error::other(format!("journal task failed: {e}")),
        })??;

    let epoch_dir = config.data_dir.clone();
    let fencing = tokio::task::spawn_blocking(move || fencing::Fencing::open(&epoch_dir))
        .await
        .map_err(|e| fsutil::FsError::Io {
            path: config.data_dir.join(fencing::EPOCH_FILE),
            source: std::io::Error::other(format!("epoch reader task failed: {e}")),
        })??;
    if fencing.highest() > 0 {
        tracing::info!(epoch = fencing.highest(), path = %fencing.path().display(), "following coordinator epoch");
    }

    let board = StatusBoard::new(
        config
            .instances
            .iter()
            .map(|i| supervisor::initial_status(i, &config.host_id))
            .collect(),
    );
    let mut supervisors = Vec::with_capacity(config.instances.len());
    for (index, inst) in config.instances.iter().enumerate() {
        let sup = Supervisor::start(
            inst,
            &config.host_id,
            &config.data_dir,
            board.clone(),
            index,
            &shutdown,
        )
        .await
        .map_err(|source| AgentError::Instance {
            name: inst.name.clone(),
            source,
        })?;
        supervisors.push(sup);
    }

    let metrics = match host_metrics::HostMetricsCollector::new() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("{e}; reports will carry no host metrics");
            None
        }
    };
    // Token labels are the baseline; the config file has the last word.
    let mut labels: HashMap<String, String> = enroll::enrolled_labels(&config.data_dir)
        .into_iter()
        .collect();
    labels.extend(config.labels.clone());
    let source = GrpcSource::new(
        tls_files.clone(),
        config.coordinators.clone(),
        ConnectOptions::default(),
    );
    let (host_id, data_dir) = (config.host_id.clone(), config.data_dir.clone());
    let instances = (config.instances.iter().cloned())
        .zip(supervisors.iter().map(Supervisor::handle))
        .collect();
    let command_stop = shutdown.child_token();
    // `new` settles unfinished journal records (fsynced writes).
    let executor = tokio::task::spawn_blocking(move || {
        Executor::new(
            &host_id,
            &data_dir,
            instances,
            journal,
            fencing,
            Arc::new(source),
            command_stop,
        )
    })
    .await
    .map_err(|e| fsutil::FsError::Io {
        path: journal::Journal::dir(&config.data_dir),
        source: std::io::Error::other(format!("journal recovery task failed: {e}")),
    })?;
    let command_tasks = executor.tasks().clone();
    let own_metrics = executor.metrics().clone();
    let session_cfg = session::SessionConfig {
        host_id: config.host_id.clone(),
        agent_version: AGENT_VERSION.to_string(),
        coordinators: config.coordinators.clone(),
        report_interval: config.report_interval,
        traffic_interval: config.has_traffic().then_some(config.traffic_interval),
        labels,
        tls: tls_files,
        connect: ConnectOptions::session(),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    // HAProxy's view of the instances, read beside the health checks.
    let lb_stop = shutdown.child_token();
    if let Some(w) =
        drain::view::Watcher::new(&config.instances, board.clone(), config.report_interval)
    {
        tasks.spawn(w.run(lb_stop.clone()));
    }
    // The instances' own metrics, scraped at the traffic interval.
    for (index, inst) in config.instances.iter().enumerate() {
        if let Some(m) = &inst.metrics {
            tasks.spawn(app_metrics::scrape_loop(
                m.clone(),
                board.clone(),
                index,
                config.traffic_interval,
                lb_stop.clone(),
            ));
        }
    }
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the agent's /metrics");
        }
        tasks.spawn(exporter::serve(listener, own_metrics, lb_stop.clone()));
    }
    let session_stop = shutdown.child_token();
    tasks.spawn(session::run(
        session_cfg,
        board.subscribe(),
        metrics,
        executor,
        session_stop.clone(),
    ));

    tracing::info!(
        host_id = %config.host_id,
        instances = supervisors.len(),
        coordinators = %config.coordinators.join(","),
        "agent running"
    );
    notify("READY=1");

    shutdown.cancelled().await;
    notify("STOPPING=1");
    tracing::info!("shutting down; instances keep running");
    session_stop.cancel();
    lb_stop.cancel();
    let joined = async {
        for sup in supervisors {
            sup.detach().await;
        }
        tasks.close();
        tasks.wait().await;
        command_tasks.close();
        command_tasks.wait().await;
    };
    if tokio::time::timeout(SHUTDOWN_DEADLINE, joined)
        .await
        .is_err()
    {
        tracing::warn!(
            session_tasks = tasks.len(),
            command_tasks = command_tasks.len(),
            "tasks still running {} after shutdown began; exiting anyway",
            humantime::format_duration(SHUTDOWN_DEADLINE)
        );
    }
    drop(board);
    Ok(())
}

fn notify(state: &str) {
    if let Err(e) = drover_net::sd_notify::notify(state) {
        tracing::warn!("sd_notify {state}: {e}");
    }
}

/// Cancels `token` on the first SIGTERM or SIGINT; exits the process at
/// once on the second. Call from inside the runtime.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if std::mem::take(&mut first) {
                tracing::info!("{name} received; shutting down (again to exit at once)");
                token.cancel();
            } else {
                tracing::warn!("{name} received again; exiting now");
                std::process::exit(130);
            }
        }
    });
    Ok(())
}
