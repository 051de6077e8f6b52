//! The drover coordinator: enrols agents, holds their sessions and the host
//! registry, and serves the operator's control API, all over mutual TLS.
//!
//! `main.rs` only parses arguments, loads the config and binds; tests call
//! [`run`] with their own listeners and shutdown token.

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod drill;
pub mod exec;
pub mod ha;
pub mod http;
pub mod metrics;
pub mod registry;
pub mod replicate;
pub mod rollout;
pub mod runner;
pub mod service;
pub mod store;
pub mod tls;
pub mod tokens;

// The offline CA and label selectors live in `drover-model`, shared with the
// CLI; re-exported so `drover_coordinator::pki::Ca` and `crate::selector`
// keep working.
pub use drover_model::{pki, selector};

use std::net::SocketAddr;
use std::sync::Arc;

use drover_proto::v1::agent_service_server::AgentServiceServer;
use drover_proto::v1::control_service_server::ControlServiceServer;
use drover_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use drover_proto::v1::drill_service_server::DrillServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authorizer;
use crate::config::{CoordinatorConfig, StoreConfig};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::service::Ctx;
use crate::tls::RevocationList;
use crate::tokens::Tokens;

/// File name of the embedded store inside the data dir.
pub const STORE_FILE: &str = "drover.redb";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    // The message is shown inline, not as a source as well: `{:#}` would print it twice.
    #[error("open store: {0}")]
    Store(store::StoreError),
    #[error("load registry: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("load the CA from {} and {}: {source}", cert.display(), key.display())]
    Ca {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        source: pki::PkiError,
    },
    #[error("{path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("load rollouts: {0}")]
    Rollouts(#[from] runner::RunnerError),
    #[error("artifact store: {0}")]
    Artifacts(#[from] artifacts::ArtifactError),
    #[error("load the TLS certificate {} and key {}: {source}", cert.display(), key.display())]
    Tls {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        source: tls::TlsError,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(std::io::Error),
    #[error("gRPC listener: {0}")]
    Listener(std::io::Error),
    #[error("client TLS towards other coordinators: {0}")]
    Replicas(String),
}

impl From<store::StoreError> for RunError {
    fn from(e: store::StoreError) -> Self {
        RunError::Store(e)
    }
}

/// The two bound sockets.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> std::io::Result<Listeners> {
        Ok(Listeners {
            grpc: TcpListener::bind(grpc).await?,
            http: TcpListener::bind(http).await?,
        })
    }
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|source| RunError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A coordinator that has loaded everything it needs (CA, TLS material,
/// store, registry, rollouts) and is ready to serve: the point at which
/// `main` announces readiness. Nothing is accepted until [`Started::serve`].
pub struct Started {
    config: CoordinatorConfig,
    listeners: Listeners,
    /// HA: this coordinator's hold on the election (it leads).
    leadership: Option<ha::Leadership>,
    shutdown: CancellationToken,
    ctx: Arc<Ctx>,
    tls_config: Arc<rustls::ServerConfig>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").finish_non_exhaustive()
    }
}

/// The store as opened: redb, or etcd (which the election uses too).
enum Opened {
    Redb(Arc<dyn store::Store>),
    Etcd(Arc<store::EtcdStore>),
}

/// Opens the store `[store]` names: redb in the data dir, or etcd (reached once here, so an
/// unreachable cluster fails the start within `[store] timeout`).
async fn open_store(config: &CoordinatorConfig) -> Result<Opened, RunError> {
    let etcd = match &config.store {
        StoreConfig::Redb => {
            return Ok(Opened::Redb(Arc::new(store::RedbStore::open(
                &config.data_dir.join(STORE_FILE),
            )?)));
        }
        StoreConfig::Etcd(etcd) => etcd,
    };
    let tls = match &etcd.ca_cert {
        Some(ca) => Some(store::EtcdTls {
            ca_cert_pem: read(ca)?,
            identity: match (&etcd.cert, &etcd.key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
        }),
        None => None,
    };
    tracing::info!(endpoints = ?etcd.endpoints, prefix = %etcd.prefix, "opening the etcd store");
    let store = store::EtcdStore::connect(store::EtcdOptions {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        timeout: etcd.timeout,
        max_txn_ops: etcd.max_txn_ops,
        tls,
    })
    .await?;
    Ok(Opened::Etcd(Arc::new(store)))
}

/// Where other coordinators send clients when this one leads.
fn advertised(config: &CoordinatorConfig, grpc: SocketAddr) -> String {
    if let Some(a) = &config.listen.advertise {
        return a.clone();
    }
    if grpc.ip().is_unspecified() {
        let host = config::hostname().unwrap_or_else(|| "localhost".to_string());
        return format!("{host}:{}", grpc.port());
    }
    grpc.to_string()
}

/// HA: serves as a standby (every call answered with where the leader is)
/// and campaigns until elected (`Some`) or shut down (`None`).
/// `on_standby` runs once the standby serves: the coordinator is ready, as
/// a standby.
#[allow(clippy::too_many_arguments)]
async fn stand_by(
    config: &CoordinatorConfig,
    etcd: &Arc<store::EtcdStore>,
    listener: TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    revoked: Arc<RevocationList>,
    artifacts: Arc<artifacts::Artifacts>,
    shutdown: &CancellationToken,
    on_standby: impl FnOnce(),
) -> Result<(TcpListener, Option<ha::Leadership>), RunError> {
    let StoreConfig::Etcd(etcd_config) = &config.store else {
        return Ok((listener, None));
    };
    let grpc = listener.local_addr().map_err(RunError::Listener)?;
    let me = ha::Member {
        name: config.name.clone(),
        grpc: advertised(config, grpc),
        since_ms: 0,
    };
    let election = ha::Election::new(etcd, me.clone(), etcd_config.lease_ttl);
    if let Err(e) = election.clear_own_stale_lead().await {
        tracing::warn!(error = %e, "could not check for a stale lead of this coordinator");
    }
    let leader = election.leader().await.ok().flatten();
    let (role_tx, role_rx) = tokio::sync::watch::channel(ha::Role::Standby {
        leader,
        trouble: None,
    });
    // The standby answers on a second handle of the same socket; the
    // leader's server takes the socket over once it is elected.
    let std_listener = listener.into_std().map_err(RunError::Listener)?;
    let dup = std_listener.try_clone().map_err(RunError::Listener)?;
    let listener = TcpListener::from_std(std_listener).map_err(RunError::Listener)?;
    let standby_listener = TcpListener::from_std(dup).map_err(RunError::Listener)?;
    let stop = CancellationToken::new();
    let mut standby = tokio::spawn(ha::serve_standby(
        standby_listener,
        tls_config,
        revoked,
        role_rx,
        config.name.clone(),
        artifacts,
        etcd.clone(),
        stop.clone(),
    ));
    tracing::info!(name = %me.name, grpc = %me.grpc, "standby: campaigning for the leadership");
    on_standby();
    let won = election.campaign(&role_tx, shutdown).await;
    // Whoever still talks to the standby is cut off rather than waited
    // for: an agent held on a standby's connection would not reach the
    // leader until its own timeouts.
    stop.cancel();
    if tokio::time::timeout(std::time::Duration::from_millis(300), &mut standby)
        .await
        .is_err()
    {
        standby.abort();
        tracing::info!("the standby's connections were cut to serve as leader");
    }
    if let Some(l) = &won {
        tracing::info!(epoch = l.epoch, "elected leader");
        l.announce().await;
    }
    Ok((listener, won))
}

/// Loads the CA and TLS material first (a bad file fails here, before
/// anything is announced), then the store, registry and rollouts.
///
/// On etcd the coordinator first stands by: it serves as a standby,
/// calls `on_standby`, and campaigns; it loads the registry and the
/// rollouts only once elected. `None`: shut down before it was elected.
pub async fn start(
    config: CoordinatorConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
    on_standby: impl FnOnce(),
) -> Result<Option<Started>, RunError> {
    let ca = pki::Ca::load_files(&config.tls.ca_cert, &config.tls.ca_key).map_err(|source| {
        RunError::Ca {
            cert: config.tls.ca_cert.clone(),
            key: config.tls.ca_key.clone(),
            source,
        }
    })?;
    let revoked = Arc::new(RevocationList::default());
    let tls_config = tls::server_config(
        ca.cert_pem().as_bytes(),
        &read(&config.tls.cert)?,
        &read(&config.tls.key)?,
        revoked.clone(),
    )
    .map_err(|source| RunError::Tls {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        source,
    })?;

    std::fs::create_dir_all(&config.data_dir).map_err(|source| RunError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let tls_config = Arc::new(tls_config);
    let mut listeners = listeners;
    let open_artifacts = |store: Arc<dyn store::Store>| -> Result<artifacts::Artifacts, RunError> {
        Ok(
            artifacts::Artifacts::open(&config.data_dir, store, config.artifacts.max_size_bytes)?
                .with_unpack_limits(drover_archive::Limits {
                    max_bytes: config.artifacts.max_unpacked_bytes,
                    max_entries: config.artifacts.max_entries,
                }),
        )
    };
    let (store, leadership, artifacts, replicas): (Arc<dyn store::Store>, _, _, _) =
        match open_store(&config).await? {
            Opened::Redb(s) => {
                let artifacts = open_artifacts(s.clone())?;
                (s, None, artifacts, None)
            }
            Opened::Etcd(etcd) => {
                // Artifacts are copied between coordinators from the
                // start, standby or not.
                let shared = Arc::new(open_artifacts(etcd.clone())?);
                let replicas = replicate::Replicas {
                    store: etcd.clone(),
                    artifacts: shared.clone(),
                    me: config.name.clone(),
                    tls: drover_net::transport::ClientTls::from_pem(
                        ca.cert_pem().as_bytes(),
                        Some((&read(&config.tls.cert)?, &read(&config.tls.key)?)),
                    )
                    .map_err(|e| RunError::Replicas(e.to_string()))?,
                };
                tokio::spawn(replicas.clone().run(shutdown.clone()));
                let Listeners { grpc, http } = listeners;
                let (grpc, won) = stand_by(
                    &config,
                    &etcd,
                    grpc,
                    tls_config.clone(),
                    revoked.clone(),
                    shared.clone(),
                    &shutdown,
                    on_standby,
                )
                .await?;
                listeners = Listeners { grpc, http };
                let Some(leadership) = won else {
                    return Ok(None);
                };
                let fenced: Arc<dyn store::Store> = Arc::new(ha::FencedStore::new(
                    etcd,
                    leadership.guard(),
                    leadership.lost.clone(),
                ));
                let artifacts = shared.with_store(fenced.clone());
                (fenced, Some(leadership), artifacts, Some(replicas))
            }
        };
    let epoch = leadership.as_ref().map_or(0, |l| l.epoch);
    let metrics = Arc::new(Metrics::new());
    metrics.leader.set(1);
    metrics.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    metrics.leader_since.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    );
    let registry = Arc::new(
        Registry::load(
            store.clone(),
            metrics.clone(),
            revoked.clone(),
            config.agents.lost_timeout,
        )
        .await?
        // On etcd, health-only reports stay in memory (issue 12's write budget).
        .with_health_writes(match config.store {
            StoreConfig::Etcd(_) => registry::HealthWrites::InMemory,
            StoreConfig::Redb => registry::HealthWrites::Batched,
        }),
    );
    let tasks = TaskTracker::new();
    let rollouts = runner::Rollouts::load(
        store.clone(),
        registry.clone(),
        metrics.clone(),
        runner::Settings {
            lost_timeout: config.agents.lost_timeout,
            hooks: config.pre_traffic_hooks.clone(),
            epoch,
        },
        shutdown.clone(),
        tasks.clone(),
    )
    .await?;
    let drill_runs = drill::runner::Drills::load(
        store.clone(),
        registry.clone(),
        metrics.clone(),
        config.drills.commands_dir.clone(),
        epoch,
        shutdown.clone(),
        tasks.clone(),
    )
    .await?;
    let _ = rollouts.drills.set(drill_runs.clone());
    let peaks = drill::Peaks::load(store.as_ref()).await;
    peaks.sample(&registry, registry::now_ms());
    tasks.spawn(
        peaks
            .clone()
            .run(registry.clone(), store.clone(), shutdown.clone()),
    );
    let kept_plans = drill::kept::KeptPlans::load(
        store.clone(),
        drill::Checker {
            registry: registry.clone(),
            peaks: peaks.clone(),
            commands_dir: config.drills.commands_dir.clone(),
        },
        metrics.clone(),
    )
    .await?;
    tasks.spawn(kept_plans.clone().run(shutdown.clone()));

    let ctx = Arc::new(Ctx {
        name: config.name.clone(),
        epoch,
        registry: registry.clone(),
        rollouts,
        tokens: Tokens::new(store.clone()),
        artifacts,
        replicas,
        ca,
        authz: Authorizer {
            metrics: metrics.clone(),
            revoked,
        },
        metrics: metrics.clone(),
        cert_lifetime: config.agents.cert_lifetime,
        max_token_ttl: config.agents.max_token_ttl,
        shutdown: shutdown.clone(),
        tasks: tasks.clone(),
        enrolling: tls::Enrolling::new(
            config.agents.max_enrolling_connections,
            config.agents.enroll_timeout,
            metrics,
        ),
        peaks,
        drill_runs,
        kept_plans,
        drills: config.drills.clone(),
    });
    Ok(Some(Started {
        config,
        listeners,
        leadership,
        shutdown,
        ctx,
        tls_config,
        tasks,
    }))
}

impl Started {
    /// `single` (no election) or `leader` (elected on etcd).
    pub fn role(&self) -> &'static str {
        if self.leadership.is_some() {
            "leader"
        } else {
            "single"
        }
    }

    /// Serves until `shutdown` fires, then stops accepting, ends agent
    /// sessions, joins every task and flushes the store, all within
    /// `shutdown_timeout`; past it, gives up waiting (logged) and returns.
    pub async fn serve(self) -> Result<(), RunError> {
        let Started {
            config,
            listeners,
            leadership,
            shutdown,
            ctx,
            tls_config,
            tasks,
        } = self;
        if let Some(l) = &leadership {
            // A leader that lost its lease stops acting at once: another
            // coordinator may lead already, and the agents and the store
            // refuse it anyway. Its supervisor starts it again as a standby.
            let lost = l.lost.clone();
            let stopping = shutdown.clone();
            let epoch = l.epoch;
            tokio::spawn(async move {
                lost.cancelled().await;
                if !stopping.is_cancelled() {
                    tracing::error!(
                        epoch,
                        "lost the leadership (no lease renewal in time); exiting"
                    );
                    std::process::exit(i32::from(ha::EXIT_LOST_LEADERSHIP));
                }
            });
        }
        let registry = ctx.registry.clone();
        let metrics = ctx.metrics.clone();
        tasks.spawn(registry.clone().run_background(shutdown.clone()));
        tasks.spawn(runner::strays::run(
            ctx.rollouts.clone(),
            registry.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let http = tasks.spawn(http::serve(
            listeners.http,
            metrics.clone(),
            shutdown.clone(),
        ));

        let max = config.agents.max_message_bytes;
        let agent_svc = AgentServiceServer::new(service::agent::AgentSvc { ctx: ctx.clone() })
            .max_decoding_message_size(max);
        let control_svc =
            ControlServiceServer::new(service::control::ControlSvc { ctx: ctx.clone() })
                .max_decoding_message_size(max);
        let drill_svc = DrillServiceServer::new(service::drills::DrillSvc { ctx: ctx.clone() })
            .max_decoding_message_size(max);
        let coordinators_svc =
            CoordinatorServiceServer::new(service::coordinators::CoordinatorsSvc {
                name: ctx.name.clone(),
                etcd: ctx.replicas.as_ref().map(|r| r.store.clone()),
                authz: Authorizer {
                    metrics: metrics.clone(),
                    revoked: ctx.authz.revoked.clone(),
                },
            });
        let incoming = tls::incoming(
            listeners.grpc,
            tls_config,
            metrics.clone(),
            ctx.enrolling.clone(),
            tasks.clone(),
            shutdown.clone(),
        );
        let grpc_shutdown = shutdown.clone();
        let registry_for_close = registry.clone();
        let grpc = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .add_service(agent_svc)
            .add_service(control_svc)
            .add_service(coordinators_svc)
            .add_service(drill_svc)
            .serve_with_incoming_shutdown(incoming, async move {
                grpc_shutdown.cancelled().await;
                registry_for_close.close_sessions();
            });
        drop(ctx);

        // The deadline runs from the moment shutdown is asked for; a
        // server that fails on its own stops the same way.
        let stopping = async {
            let served = grpc.await;
            shutdown.cancel();
            tasks.close();
            tasks.wait().await;
            served
        };
        tokio::pin!(stopping);
        let served = tokio::select! {
            served = &mut stopping => served,
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(config.shutdown_timeout).await;
            } => {
                tracing::warn!(
                    tasks = tasks.len(),
                    "shutdown took longer than shutdown_timeout ({}); stopping without waiting further",
                    humantime::format_duration(config.shutdown_timeout)
                );
                return Ok(());
            }
        };
        if let Some(l) = leadership {
            l.resign(std::time::Duration::from_secs(1)).await;
        }
        served?;
        if let Ok(Err(e)) = http.await {
            return Err(RunError::Http(e));
        }
        tracing::info!("coordinator stopped");
        Ok(())
    }
}

/// Runs the coordinator until `shutdown` fires, then stops accepting, ends
/// agent sessions, joins every task and flushes the store.
pub async fn run(
    config: CoordinatorConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    match start(config, listeners, shutdown, || {}).await? {
        Some(started) => started.serve().await,
        None => Ok(()),
    }
}
