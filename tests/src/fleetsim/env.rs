//! The world a run happens in: a temp dir with a CA, an operator
//! certificate and a real `drover-coordinator` (through the e2e harness),
//! then the simulated hosts with one locally signed certificate each, and
//! an operator's watch on the fleet.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use drover_coordinator::pki::Ca;
use drover_proto::identity::Identity;
use drover_proto::v1::control_service_client::ControlServiceClient;
use rustls::ClientConfig;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use super::conn::{Dialer, source_addr};
use super::etcd::Etcd;
use super::host::{self, HostSpec, Shared};
use super::probe::{self, Probe, WatchResult};
use super::procfs;
use crate::{Cli, Coordinator, CoordinatorSpec, Pki, harness::pki::CertPair};

/// Lifetime of the simulated hosts' certificates: longer than any run.
const CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Largest response the simulator's own control client accepts (a
/// 50,000-host listing is tens of MB).
const MAX_CONTROL_MESSAGE: usize = 1 << 30;

/// Flags every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Keep the run's files (CA, coordinator config, data and log) here
    /// instead of a temp dir removed at the end; must be new or empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// TLS handshakes in flight at once while connecting.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Give up waiting for all hosts to connect after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

/// The coordinator and what talks to it as an operator.
#[derive(Debug)]
pub struct Env {
    pub dir: PathBuf,
    pub home: PathBuf,
    pub pki: Pki,
    pub operator: CertPair,
    pub coordinator: Coordinator,
    /// The coordinator's etcd, when it runs on one; after `coordinator`,
    /// so that it outlives it.
    pub etcd: Option<Etcd>,
    pub nofile: u64,
    _tmp: Option<TempDir>,
}

impl Env {
    /// Creates the CA and an operator certificate with the real CLI, and
    /// starts the coordinator, whose lost timeout is three report
    /// intervals (at least its default of 15 s). The open-file limit is
    /// raised first so the coordinator inherits it.
    pub fn start(hosts: usize, interval: Duration, dir: Option<&Path>) -> Result<Env> {
        Env::start_on(hosts, interval, dir, None)
    }

    /// [`Env::start`] with the coordinator's state in `etcd` (its own redb
    /// when `None`).
    pub fn start_on(
        hosts: usize,
        interval: Duration,
        dir: Option<&Path>,
        etcd: Option<Etcd>,
    ) -> Result<Env> {
        let want = (hosts as u64 + 8192).max(65_536);
        let nofile = procfs::raise_nofile(want);
        // One socket per session on each side, plus a few hundred for
        // everything else (store, listeners, logs, the runtime).
        if nofile < hosts as u64 + 256 {
            bail!(
                "the open-file limit is {nofile} and cannot be raised here (the hard limit needs CAP_SYS_RESOURCE), too low for {hosts} sessions: coordinator and simulator each need one descriptor per host, plus about 256"
            );
        }
        let (tmp, dir) = match dir {
            Some(d) => {
                if d.read_dir().is_ok_and(|mut e| e.next().is_some()) {
                    bail!(
                        "{} is not empty; --dir needs a new or empty directory",
                        d.display()
                    );
                }
                std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
                (None, d.to_path_buf())
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("drover-fleetsim-")
                    .tempdir()
                    .context("create temp dir")?;
                let dir = tmp.path().to_path_buf();
                (Some(tmp), dir)
            }
        };
        let home = dir.join("home");
        std::fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
        let pki = Pki::init(&dir.join("pki"), &home);
        let operator = pki.issue("operator", "fleetsim", &[], None);
        let lost = (interval * 3).max(Duration::from_secs(15));
        let spec = CoordinatorSpec {
            name: "bench".to_string(),
            lost_timeout: humantime::format_duration(lost).to_string(),
            extra_toml: etcd.as_ref().map(Etcd::store_toml).unwrap_or_default(),
            ..CoordinatorSpec::default()
        };
        let mut coordinator = Coordinator::create(&dir.join("coordinator"), &pki, spec);
        coordinator.start();
        Ok(Env {
            dir,
            home,
            pki,
            operator,
            coordinator,
            etcd,
            nofile,
            _tmp: tmp,
        })
    }

    pub fn pid(&self) -> u32 {
        self.coordinator.pid().unwrap_or(0)
    }

    pub fn grpc_addr(&self) -> Result<SocketAddr> {
        self.coordinator
            .grpc_addr()
            .parse()
            .context("coordinator gRPC address")
    }

    /// The `drover` CLI as the operator.
    pub fn cli(&self) -> Cli {
        Cli::new(
            &self.coordinator.grpc_addr(),
            &self.pki.ca_cert(),
            Some(self.operator.clone()),
            &self.home,
        )
    }

    /// A coordinator metric summed over its labels, 0 when missing.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.coordinator.try_metrics().ok()?;
        Some(crate::metrics_sum(&text, name))
    }

    /// Coordinator RSS now and at its peak, MiB.
    pub fn memory(&self) -> (Option<f64>, Option<f64>) {
        let pid = self.pid();
        (
            procfs::status_mib(pid, "VmRSS"),
            procfs::status_mib(pid, "VmHWM"),
        )
    }

    /// SIGTERM, then SIGKILL after `grace`. Whether it stopped cleanly.
    pub fn stop(mut self, grace: Duration) -> bool {
        self.coordinator.terminate(grace)
    }
}

/// Certificates and TLS settings made before the clock starts.
pub struct Prepared {
    pub dialer: Dialer,
    pub specs: Vec<HostSpec>,
    pub configs: Vec<Arc<ClientConfig>>,
    pub operator: Arc<ClientConfig>,
    pub certs_secs: f64,
}

impl Prepared {
    /// Signs one agent certificate per host with the fleet's CA (identity
    /// `drover://agent/<host>`, as enrolment would), on every core.
    pub fn new(env: &Env, specs: Vec<HostSpec>) -> Result<Prepared> {
        let ca = Ca::load_files(&env.pki.ca_cert(), &env.pki.ca_key()).context("load the CA")?;
        let ca_pem = std::fs::read(env.pki.ca_cert()).context("read the CA certificate")?;
        let dialer = Dialer::new(env.grpc_addr()?, &ca_pem)?;
        let operator = {
            let cert = std::fs::read_to_string(&env.operator.cert).context("operator cert")?;
            let key = std::fs::read_to_string(&env.operator.key).context("operator key")?;
            dialer.client_config(&cert, &key)?
        };
        let t0 = Instant::now();
        let threads = procfs::cores().max(1);
        let chunk = specs.len().div_ceil(threads).max(1);
        let configs: Result<Vec<Vec<Arc<ClientConfig>>>> = std::thread::scope(|s| {
            let handles: Vec<_> = specs
                .chunks(chunk)
                .map(|part| {
                    let (ca, dialer) = (&ca, &dialer);
                    s.spawn(move || {
                        part.iter()
                            .map(|h| {
                                let id = Identity::agent(h.id.clone())?;
                                let issued = ca.issue(&id, &[], CERT_LIFETIME)?;
                                dialer.client_config(&issued.cert_pem, &issued.key_pem)
                            })
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow!("certificate thread panicked"))?
                })
                .collect()
        });
        let configs = configs?.into_iter().flatten().collect();
        Ok(Prepared {
            dialer,
            specs,
            configs,
            operator,
            certs_secs: t0.elapsed().as_secs_f64(),
        })
    }
}

/// The simulated fleet, running.
pub struct Sim {
    pub shared: Arc<Shared>,
    pub control: ControlServiceClient<tonic::transport::Channel>,
    pub hosts: usize,
    pub certs_secs: f64,
    tasks: JoinSet<()>,
    watch: Option<(JoinHandle<WatchResult>, CancellationToken)>,
}

/// How the connect phase went.
#[derive(Debug, Clone)]
pub struct Connected {
    pub secs: f64,
    pub connected: usize,
    pub failures: u64,
    pub gave_up: usize,
    pub per_session_ms: Value,
}

impl Sim {
    /// Connects the operator's control client, then starts every host at
    /// once; at most `concurrency` handshakes are in flight at any moment.
    pub async fn launch(prepared: Prepared, interval: Duration, concurrency: usize) -> Result<Sim> {
        let Prepared {
            dialer,
            specs,
            configs,
            operator,
            certs_secs,
        } = prepared;
        let n = specs.len();
        let channel = dialer
            .channel(operator, source_addr(0, 1))
            .await
            .context("operator connection")?;
        let control =
            ControlServiceClient::new(channel).max_decoding_message_size(MAX_CONTROL_MESSAGE);
        let probe = Arc::new(Probe::new(n));
        let shared = Arc::new(Shared::new(
            probe,
            interval,
            concurrency,
            CancellationToken::new(),
        ));
        let mut tasks = JoinSet::new();
        for (spec, config) in specs.into_iter().zip(configs) {
            let source = source_addr(spec.index, n);
            tasks.spawn(host::run(
                spec,
                config,
                dialer.clone(),
                source,
                shared.clone(),
            ));
        }
        Ok(Sim {
            shared,
            control,
            hosts: n,
            certs_secs,
            tasks,
            watch: None,
        })
    }

    /// Opens an operator's `WatchHosts` for the hosts `selector` matches
    /// (all when empty) and waits until its initial listing is through.
    /// Reports seen from then on are timed while the probe records.
    pub async fn start_watch(&mut self, selector: &str) -> Result<()> {
        let _ = self.stop_watch().await;
        let stop = CancellationToken::new();
        let synced = Arc::new(tokio::sync::Notify::new());
        let handle = tokio::spawn(probe::watch(
            self.control.clone(),
            selector.to_string(),
            self.shared.probe.clone(),
            synced.clone(),
            stop.clone(),
        ));
        self.watch = Some((handle, stop));
        tokio::time::timeout(Duration::from_secs(60), synced.notified())
            .await
            .context("the coordinator's WatchHosts did not sync within 60s")
    }

    /// Waits until every host has its session (or gave up), at most
    /// `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Connected {
        let c = &self.shared.counters;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = c.ever_connected.load(Ordering::Relaxed) + c.gave_up.load(Ordering::Relaxed);
            if done >= self.hosts || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = self.shared.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let per_session_ms = self
            .shared
            .connect_times
            .lock()
            .map(|mut s| s.summary())
            .unwrap_or(Value::Null);
        Connected {
            secs: c.last_welcome_us.load(Ordering::Relaxed) as f64 / 1e6,
            connected: c.ever_connected.load(Ordering::Relaxed),
            failures: c.connect_failures.load(Ordering::Relaxed),
            gave_up: c.gave_up.load(Ordering::Relaxed),
            per_session_ms,
        }
    }

    /// Stops the watch and returns what it saw.
    pub async fn stop_watch(&mut self) -> WatchResult {
        match self.watch.take() {
            Some((handle, stop)) => {
                stop.cancel();
                handle.await.unwrap_or_default()
            }
            None => WatchResult::default(),
        }
    }

    /// Ends every session and waits (at most 30 s) for the host tasks.
    pub async fn shutdown(mut self) {
        let _ = self.stop_watch().await;
        self.shared.cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

/// JSON for a [`Connected`].
pub fn connected_json(c: &Connected) -> Value {
    json!({
        "connect_secs": super::stats::round3(c.secs),
        "connected": c.connected,
        "connect_failures": c.failures,
        "gave_up": c.gave_up,
        "session_setup_ms": c.per_session_ms,
    })
}

/// The tokio runtime the simulator runs on: one worker per core.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(procfs::cores())
        .enable_all()
        .build()
        .context("start the tokio runtime")
}
