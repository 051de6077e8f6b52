//! The bare server of [`floor`](super): TLS as the coordinator sets it up,
//! the AgentService sessions, and the driver that walks each batch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use drover_net::transport::{certs_from_pem, key_from_pem, provider};
use drover_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use drover_proto::v1::command::Kind;
use drover_proto::v1::command_update::Phase;
use drover_proto::v1::{
    AgentMessage, ArtifactChunk, Command, CommandUpdate, CoordinatorMessage, DeployCommand,
    DrainCommand, EnrollRequest, EnrollResponse, FetchArtifactRequest, HealthReport, Release,
    StartCommand, StopCommand, UndrainCommand, VerifyCommand, Welcome, agent_message,
    coordinator_message,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::STEPS;
use crate::fleetsim::env::runtime;
use crate::fleetsim::fleet::{fake_release, host_id};
use crate::fleetsim::procfs;
use crate::fleetsim::stats::Samples;

/// As the coordinator: how long a handshake and a Hello may take, and the
/// session's outbound queue.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_QUEUE: usize = 64;
/// The timeouts `drover-fleetsim rollout` gives the coordinator
/// (`--step-timeout 1m --healthy-deadline 1m`), sent in the same fields.
const STEP_TIMEOUT_MS: u32 = 60_000;

/// Flags of the hidden `drover-fleetsim floor-server`, which `floor`
/// starts: where to listen, with which certificate, for which hosts.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerOptions {
    #[arg(long)]
    pub addr: SocketAddr,
    /// The CA the hosts' certificates chain to.
    #[arg(long)]
    pub ca: PathBuf,
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    /// Hosts as `floor` names them (`host_id(1..=n, n)`).
    #[arg(long)]
    pub hosts: usize,
}

/// The coordinator's TLS essentials: its certificate (with the CA
/// appended, as it serves it), ring, TLS 1.2/1.3, ALPN h2, client
/// certificates verified against the CA. Unlike the coordinator it
/// requires a client certificate (no enrolment here) and checks no
/// revocation list: both only matter at the handshake, never per message.
fn server_tls(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("read {}", p.display()));
    let cas = certs_from_pem("CA certificate", &read(ca)?)?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots
            .add(ca.clone())
            .context("add the CA to the trust store")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("build the client certificate verifier")?;
    let mut chain = certs_from_pem("coordinator certificate", &read(cert)?)?;
    for ca in cas {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = key_from_pem("coordinator key", &read(key)?)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("coordinator certificate and key")?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A session's outbound queue, as the coordinator keeps it.
type Outbound = mpsc::Sender<Result<CoordinatorMessage, Status>>;

/// What the bare server knows: the hosts' sessions, their latest reports,
/// and the command updates waiting for the driver.
struct Floor {
    /// Host id -> position in the fleet.
    index: HashMap<String, usize>,
    sessions: Mutex<Vec<Option<Outbound>>>,
    connected: AtomicUsize,
    changed: Notify,
    reports: Mutex<HashMap<usize, HealthReport>>,
    reports_received: AtomicU64,
    updates_received: AtomicU64,
    updates: mpsc::UnboundedSender<(usize, CommandUpdate)>,
    refused: AtomicU64,
    cancel: CancellationToken,
}

impl Floor {
    fn sessions(&self) -> std::sync::MutexGuard<'_, Vec<Option<Outbound>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct FloorSvc(Arc<Floor>);

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tonic::async_trait]
impl AgentService for FloorSvc {
    async fn enroll(
        &self,
        _request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        Err(Status::unimplemented("the floor server does not enrol"))
    }

    type SessionStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    /// As the coordinator's: Hello first, a Welcome back, then every
    /// message read in a task of its own; reports go into the map, command
    /// updates to the driver.
    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let floor = self.0.clone();
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Hello within 10s")),
        };
        // The coordinator checks the Hello against the certificate; that
        // is once per session and left out here.
        let Some(&idx) = floor.index.get(&hello.host_id) else {
            return Err(Status::permission_denied(format!(
                "host `{}` is not one of the simulated fleet",
                hello.host_id
            )));
        };
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let welcome = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Welcome(Welcome {
                coordinator_name: "floor".to_string(),
                server_time_ms: unix_ms(),
                epoch: 0,
            })),
        };
        let _ = tx.try_send(Ok(welcome));
        floor.sessions()[idx] = Some(tx.clone());
        floor.connected.fetch_add(1, Ordering::Relaxed);
        floor.changed.notify_waiters();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = floor.cancel.cancelled() => break,
                    msg = inbound.message() => msg,
                };
                match msg {
                    Ok(Some(AgentMessage { msg: Some(msg) })) => match msg {
                        agent_message::Msg::Health(report) => {
                            floor
                                .reports
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(idx, report);
                            floor.reports_received.fetch_add(1, Ordering::Relaxed);
                        }
                        agent_message::Msg::CommandUpdate(update) => {
                            floor.updates_received.fetch_add(1, Ordering::Relaxed);
                            let _ = floor.updates.send((idx, update));
                        }
                        agent_message::Msg::Hello(_) | agent_message::Msg::Renew(_) => {}
                    },
                    Ok(Some(AgentMessage { msg: None })) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            let mut sessions = floor.sessions();
            if sessions[idx].as_ref().is_some_and(|s| s.same_channel(&tx)) {
                sessions[idx] = None;
            }
            drop(sessions);
            floor.connected.fetch_sub(1, Ordering::Relaxed);
            floor.changed.notify_waiters();
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type FetchArtifactStream = ReceiverStream<Result<ArtifactChunk, Status>>;

    async fn fetch_artifact(
        &self,
        _request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        Err(Status::unimplemented("the floor server holds no artifacts"))
    }
}

/// Accepts TCP connections and completes TLS handshakes in tasks of their
/// own, as the coordinator's accept loop does, until `cancel`.
fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    floor: Arc<Floor>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = floor.cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((tcp, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, floor) = (acceptor.clone(), tx.clone(), floor.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(_)) | Err(_) => {
                        floor.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Binds `addr`, which the coordinator just left (retrying for a few
/// seconds while the kernel lets go of it).
async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("bind {addr} for the bare server"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The command for step `step` of the host at `idx`, in the fields and
/// shape the coordinator's runner fills.
fn command(id: String, host: &str, step: usize, release: &Release) -> CoordinatorMessage {
    let kind = match step {
        0 => Kind::Drain(DrainCommand {}),
        1 => Kind::Stop(StopCommand {}),
        2 => Kind::Deploy(DeployCommand {
            release: Some(release.clone()),
        }),
        3 => Kind::Start(StartCommand {}),
        4 => Kind::Verify(VerifyCommand {
            min_healthy_time_ms: 0,
            healthy_deadline_ms: STEP_TIMEOUT_MS,
        }),
        _ => Kind::Undrain(UndrainCommand {}),
    };
    CoordinatorMessage {
        msg: Some(coordinator_message::Msg::Command(Command {
            id,
            instance: format!("web@{host}"),
            timeout_ms: STEP_TIMEOUT_MS,
            epoch: 0,
            traceparent: String::new(),
            kind: Some(kind),
        })),
    }
}

const VERBS: [&str; STEPS] = ["drain", "stop", "deploy", "start", "verify", "undrain"];

/// What one driven rollout took.
#[derive(Debug, Default)]
struct Driven {
    secs: f64,
    done: usize,
    failed: usize,
    /// (first command sent, last step done) per batch.
    batches: Vec<(Instant, Instant)>,
    commands_sent: u64,
    /// SUCCEEDED received -> the next step's command queued, per step.
    turnaround: Samples,
}

/// One rollout over every host, batch after batch; each instance's next
/// step goes out as soon as the previous one SUCCEEDED.
async fn drive(
    floor: &Floor,
    hosts: &[String],
    updates: &mut mpsc::UnboundedReceiver<(usize, CommandUpdate)>,
    run: &str,
    release: &Release,
    batch_size: usize,
    timeout: Duration,
) -> Result<Driven> {
    while updates.try_recv().is_ok() {}
    let deadline = tokio::time::Instant::now() + timeout;
    let sessions: Vec<Option<Outbound>> = floor.sessions().clone();
    let mut step = vec![0usize; hosts.len()];
    let mut expected: Vec<String> = vec![String::new(); hosts.len()];
    let mut out = Driven::default();
    let t0 = Instant::now();
    let send = |idx: usize, step: usize, expected: &mut Vec<String>, out: &mut Driven| -> bool {
        let id = format!("{run}/web@{}/{}/1", hosts[idx], VERBS[step]);
        expected[idx].clone_from(&id);
        let Some(tx) = &sessions[idx] else {
            return false;
        };
        out.commands_sent += 1;
        match tx.try_send(Ok(command(id, &hosts[idx], step, release))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
                true
            }
        }
    };
    for batch in (0..hosts.len()).collect::<Vec<_>>().chunks(batch_size) {
        let start = Instant::now();
        let mut remaining = 0usize;
        for &idx in batch {
            if send(idx, 0, &mut expected, &mut out) {
                remaining += 1;
            } else {
                out.failed += 1;
            }
        }
        let mut end = start;
        while remaining > 0 {
            let (idx, update) = tokio::select! {
                u = updates.recv() => u.context("the sessions' update channel closed")?,
                _ = tokio::time::sleep_until(deadline) => bail!(
                    "run {run} not done after {}: {} of {} instances done, {remaining} in flight",
                    humantime::format_duration(timeout),
                    out.done,
                    hosts.len()
                ),
            };
            if update.command_id != expected[idx] {
                continue;
            }
            let phase = Phase::try_from(update.phase).unwrap_or(Phase::Unspecified);
            match phase {
                Phase::Succeeded => {
                    let at = Instant::now();
                    step[idx] += 1;
                    if step[idx] == STEPS {
                        remaining -= 1;
                        out.done += 1;
                        end = at;
                    } else if send(idx, step[idx], &mut expected, &mut out) {
                        out.turnaround.push(at.elapsed().as_micros() as u64);
                    } else {
                        remaining -= 1;
                        out.failed += 1;
                    }
                }
                Phase::Failed | Phase::TimedOut => {
                    remaining -= 1;
                    out.failed += 1;
                    expected[idx].clear();
                }
                Phase::Accepted | Phase::Progress | Phase::Unspecified => {}
            }
        }
        out.batches.push((start, end.max(start)));
    }
    out.secs = t0.elapsed().as_secs_f64();
    Ok(out)
}

/// A request to the floor server: one rollout.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct RunRequest {
    pub run: String,
    pub version: String,
    pub batch_size: usize,
    pub timeout_ms: u64,
}

/// The floor server: `drover-fleetsim floor-server`. Prints
/// `{"listening": ...}` once bound, then answers each [`RunRequest`] line
/// on stdin with one line of figures; ends when stdin closes.
pub fn serve(opts: &ServerOptions) -> Result<()> {
    let tls = server_tls(&opts.ca, &opts.cert, &opts.key)?;
    procfs::raise_nofile(opts.hosts as u64 + 8192);
    // One worker per core, as the coordinator's runtime.
    let rt = runtime()?;
    rt.block_on(serve_on(opts, tls))
}

fn say(line: &Value) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context("write to stdout")
}

async fn serve_on(opts: &ServerOptions, tls: Arc<rustls::ServerConfig>) -> Result<()> {
    let hosts: Vec<String> = (1..=opts.hosts).map(|i| host_id(i, opts.hosts)).collect();
    let listener = bind(opts.addr).await?;
    let (updates_tx, mut updates) = mpsc::unbounded_channel();
    let floor = Arc::new(Floor {
        index: hosts
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, h)| (h, i))
            .collect(),
        sessions: Mutex::new(vec![None; hosts.len()]),
        connected: AtomicUsize::new(0),
        changed: Notify::new(),
        reports: Mutex::new(HashMap::new()),
        reports_received: AtomicU64::new(0),
        updates_received: AtomicU64::new(0),
        updates: updates_tx,
        refused: AtomicU64::new(0),
        cancel: CancellationToken::new(),
    });
    let incoming = incoming(listener, tls, floor.clone());
    // The coordinator's HTTP/2 settings.
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(AgentServiceServer::new(FloorSvc(floor.clone())))
            .serve_with_incoming_shutdown(incoming, floor.cancel.clone().cancelled_owned()),
    );
    say(&json!({"listening": opts.addr.to_string()}))?;
    // Requests from stdin, read on a thread of their own (this tokio has
    // no async stdin); it ends when stdin closes.
    let (line_tx, mut requests) = mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = requests.recv().await {
        let req: RunRequest = serde_json::from_str(&line).context("a run request")?;
        let reports = floor.reports_received.load(Ordering::Relaxed);
        let updates_before = floor.updates_received.load(Ordering::Relaxed);
        let driven = drive(
            &floor,
            &hosts,
            &mut updates,
            &req.run,
            &fake_release(&req.version),
            req.batch_size.max(1),
            Duration::from_millis(req.timeout_ms),
        )
        .await;
        let reply = match driven {
            Ok(mut d) => {
                let mut batch_ms = Samples::default();
                let mut gap_ms = Samples::default();
                let mut prev_end: Option<Instant> = None;
                for (start, end) in &d.batches {
                    batch_ms.push(end.duration_since(*start).as_micros() as u64);
                    if let Some(p) = prev_end {
                        gap_ms.push(start.saturating_duration_since(p).as_micros() as u64);
                    }
                    prev_end = Some(*end);
                }
                json!({
                    "rollout_secs": d.secs,
                    "done": d.done,
                    "failed": d.failed,
                    "batches": d.batches.len(),
                    "batch_ms": batch_ms.summary(),
                    "between_batches_ms": gap_ms.summary(),
                    "server_turnaround_ms": d.turnaround.summary(),
                    "commands_sent": d.commands_sent,
                    "command_updates_received": floor.updates_received.load(Ordering::Relaxed) - updates_before,
                    "reports_received": floor.reports_received.load(Ordering::Relaxed) - reports,
                    "reports_stored": floor.reports.lock().map(|r| r.len()).unwrap_or(0),
                    "server_sessions": floor.connected.load(Ordering::Relaxed),
                    "handshakes_refused": floor.refused.load(Ordering::Relaxed),
                })
            }
            Err(e) => json!({"error": format!("{e:#}")}),
        };
        say(&reply)?;
    }
    floor.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    Ok(())
}
