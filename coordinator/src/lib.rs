//! The drover coordinator: enrols agents, holds their sessions and the host
//! registry, and serves the operator's control API, all over mutual TLS.
//!
//! `main.rs` only parses arguments, loads the config and binds; tests call
//! [`run`] with their own listeners and shutdown token.

pub mod artifacts;
pub mod auth;
pub mod config;
pub mod http;
pub mod metrics;
pub mod registry;
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

/// Opens the store `[store]` names: redb in the data dir, or etcd (reached once here, so an
/// unreachable cluster fails the start within `[store] timeout`).
async fn open_store(config: &CoordinatorConfig) -> Result<Arc<dyn store::Store>, RunError> {
    let etcd = match &config.store {
        StoreConfig::Redb => {
            return Ok(Arc::new(store::RedbStore::open(
                &config.data_dir.join(STORE_FILE),
            )?));
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
    Ok(Arc::new(store))
}

/// Loads the CA and TLS material first (a bad file fails here, before
/// anything is announced), then the store, registry and rollouts.
pub async fn start(
    config: CoordinatorConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<Started, RunError> {
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
    let store = open_store(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(
        Registry::load(
            store.clone(),
            metrics.clone(),
            revoked.clone(),
            config.agents.lost_timeout,
        )
        .await?,
    );
    let tasks = TaskTracker::new();
    let rollouts = runner::Rollouts::load(
        store.clone(),
        registry.clone(),
        metrics.clone(),
        runner::Settings {
            lost_timeout: config.agents.lost_timeout,
            hooks: config.pre_traffic_hooks.clone(),
        },
        shutdown.clone(),
        tasks.clone(),
    )
    .await?;

    let ctx = Arc::new(Ctx {
        name: config.name.clone(),
        registry: registry.clone(),
        rollouts,
        tokens: Tokens::new(store.clone()),
        artifacts: artifacts::Artifacts::open(
            &config.data_dir,
            store.clone(),
            config.artifacts.max_size_bytes,
        )?
        .with_unpack_limits(drover_archive::Limits {
            max_bytes: config.artifacts.max_unpacked_bytes,
            max_entries: config.artifacts.max_entries,
        }),
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
    });
    Ok(Started {
        config,
        listeners,
        shutdown,
        ctx,
        tls_config: Arc::new(tls_config),
        tasks,
    })
}

impl Started {
    /// Serves until `shutdown` fires, then stops accepting, ends agent
    /// sessions, joins every task and flushes the store, all within
    /// `shutdown_timeout`; past it, gives up waiting (logged) and returns.
    pub async fn serve(self) -> Result<(), RunError> {
        let Started {
            config,
            listeners,
            shutdown,
            ctx,
            tls_config,
            tasks,
        } = self;
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
    start(config, listeners, shutdown).await?.serve().await
}
