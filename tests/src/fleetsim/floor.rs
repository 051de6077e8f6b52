//! The floor under scenario 2: what the stack itself (tonic, h2, rustls,
//! prost over one mutual-TLS session per host) allows for the rollout's
//! message pattern, with none of drover's coordinator behind it.
//!
//! A bare `AgentService` server, a process of its own (the hidden
//! `drover-fleetsim floor-server`) started on the address and with the
//! certificate of the coordinator that made the fleet's CA, greets each
//! session with a Welcome, stores each health report in a map and drives
//! "rollouts" itself: batches of a percentage of the hosts, each instance
//! walking drain, stop, deploy, start, verify, undrain, the next step sent
//! as soon as the previous one's SUCCEEDED arrives, the next batch when
//! the whole batch is done. No store, no events, no rollout engine: the
//! same simulated hosts ([`super::host`]) do the same work as under
//! `drover-fleetsim rollout`, so the difference between the two is what
//! drover adds.
//!
//! A process of its own, as the coordinator is: its CPU is measured
//! apart, and each side has the open-file limit to itself (the simulator
//! holds one socket per host, so does the server). The scenario talks to
//! it over its stdin and stdout, one JSON line per request and reply.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use drover_proto::transport::{certs_from_pem, key_from_pem, provider};
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
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::{Notify, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::env::{Common, Env, Prepared, Sim, connected_json, runtime};
use super::fleet::{fake_release, host_id, merge, print_targets};
use super::procfs::{self, CpuWindow};
use super::rollout::layout;
use super::stats::{Samples, round3};
use super::{StepDelay, emit, machine, target};

/// Steps per instance: drain, stop, deploy, start, verify, undrain.
const STEPS: usize = 6;
/// As the coordinator: how long a handshake and a Hello may take, and the
/// session's outbound queue.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const SESSION_QUEUE: usize = 64;
/// The timeouts `drover-fleetsim rollout` gives the coordinator
/// (`--step-timeout 1m --healthy-deadline 1m`), sent in the same fields.
const STEP_TIMEOUT_MS: u32 = 60_000;

/// Settings of one floor run (the flags of `drover-fleetsim floor`).
#[derive(Debug, Clone, clap::Args)]
pub struct FloorOptions {
    /// Simulated hosts, one `web` instance each.
    #[arg(long, default_value_t = 1000)]
    pub instances: usize,
    /// Health report interval of every host.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long each step takes on the hosts: 0, a duration (100ms) or a
    /// random range (50ms..150ms). Repeat the flag for one run per value.
    #[arg(long = "step-delay", default_values = ["0", "100ms"])]
    pub step_delays: Vec<StepDelay>,
    /// Instances per batch, percent of all (rounded up), as `--batch 10%`.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch_percent: u32,
    /// Between all hosts connected and the first run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Longest one run may take.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub rollout_timeout: Duration,
    #[command(flatten)]
    pub common: Common,
}

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

/// Runs the floor: enrol the hosts with a real coordinator, replace it
/// with the bare server, one run per step delay. Returns the figures (also
/// printed), one object per run.
pub fn run(opts: &FloorOptions) -> Result<Vec<Value>> {
    let specs = layout(opts.instances, 1);
    let hosts = specs.len();
    let mut env = Env::start(hosts, opts.interval, opts.common.dir.as_deref())?;
    eprintln!(
        "fleetsim: coordinator pid {} on {} (for the CA and its certificate only); signing {hosts} agent certificates",
        env.pid(),
        env.coordinator.grpc_addr()
    );
    let prepared = Prepared::new(&env, specs)?;
    let server = ServerOptions {
        addr: env.grpc_addr()?,
        ca: env.pki.ca_cert(),
        cert: env.coordinator.tls.cert.clone(),
        key: env.coordinator.tls.key.clone(),
        hosts,
    };
    // The coordinator has done its part; the bare server takes its address
    // and presents its certificate.
    let clean = env.coordinator.terminate(Duration::from_secs(30));
    let rt = runtime()?;
    let figures = rt.block_on(measure(&server, prepared, opts));
    rt.shutdown_timeout(Duration::from_secs(5));
    let mut figures = figures?;
    for f in &mut figures {
        f["coordinator_stopped_cleanly"] = json!(clean);
        emit(f);
    }
    Ok(figures)
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
struct RunRequest {
    run: String,
    version: String,
    batch_size: usize,
    timeout_ms: u64,
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

/// The floor server as the scenario sees it: a child process, killed on
/// drop, spoken to in JSON lines.
struct ServerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    pid: u32,
}

impl ServerProc {
    /// Starts `drover-fleetsim floor-server` (this binary) and waits until
    /// it listens.
    async fn start(opts: &ServerOptions) -> Result<ServerProc> {
        let exe = std::env::current_exe().context("find this binary")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("floor-server")
            .arg("--addr")
            .arg(opts.addr.to_string())
            .arg("--ca")
            .arg(&opts.ca)
            .arg("--cert")
            .arg(&opts.cert)
            .arg("--key")
            .arg(&opts.key)
            .arg("--hosts")
            .arg(opts.hosts.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start drover-fleetsim floor-server")?;
        let pid = child.id().context("the floor server exited at once")?;
        let stdin = child.stdin.take().context("floor server stdin")?;
        let stdout = child.stdout.take().context("floor server stdout")?;
        let mut server = ServerProc {
            child,
            stdin: Some(stdin),
            lines: BufReader::new(stdout).lines(),
            pid,
        };
        server.reply(Duration::from_secs(30)).await?;
        Ok(server)
    }

    async fn reply(&mut self, timeout: Duration) -> Result<Value> {
        let line = tokio::time::timeout(timeout, self.lines.next_line())
            .await
            .context("no answer from the floor server in time")?
            .context("read from the floor server")?
            .ok_or_else(|| anyhow!("the floor server exited (its error is above)"))?;
        let v: Value = serde_json::from_str(&line).context("the floor server's answer")?;
        if let Some(e) = v["error"].as_str() {
            bail!("the floor server: {e}");
        }
        Ok(v)
    }

    async fn request(&mut self, req: &RunRequest, timeout: Duration) -> Result<Value> {
        let mut line = serde_json::to_string(req).context("encode a run request")?;
        line.push('\n');
        let stdin = self.stdin.as_mut().context("floor server stdin closed")?;
        stdin
            .write_all(line.as_bytes())
            .await
            .context("write to the floor server")?;
        stdin.flush().await.context("write to the floor server")?;
        self.reply(timeout).await
    }

    /// Closes its stdin and waits (at most 30 s) for it to exit; whether
    /// it exited cleanly.
    async fn stop(mut self) -> bool {
        self.stdin = None;
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        }
    }
}

async fn measure(
    server_opts: &ServerOptions,
    prepared: Prepared,
    opts: &FloorOptions,
) -> Result<Vec<Value>> {
    let n = prepared.specs.len();
    let mut server = ServerProc::start(server_opts).await?;
    eprintln!(
        "fleetsim: bare floor server pid {} on {}; connecting {n} hosts",
        server.pid, server_opts.addr
    );
    let sim = Sim::launch(prepared, opts.interval, opts.common.connect_concurrency).await?;
    let result = runs(&mut server, &sim, n, opts).await;
    sim.shutdown().await;
    let clean = server.stop().await;
    let mut all = result?;
    for f in &mut all {
        f["server_stopped_cleanly"] = json!(clean);
    }
    Ok(all)
}

async fn runs(
    server: &mut ServerProc,
    sim: &Sim,
    n: usize,
    opts: &FloorOptions,
) -> Result<Vec<Value>> {
    let connected = sim.wait_connected(opts.common.connect_timeout).await;
    eprintln!(
        "fleetsim: {} of {n} hosts connected in {:.2}s",
        connected.connected, connected.secs
    );
    if connected.connected < n {
        bail!("only {} of {n} hosts connected", connected.connected);
    }
    tokio::time::sleep(opts.settle).await;
    let batch_size = (n * opts.batch_percent as usize).div_ceil(100).max(1);
    let mut all = Vec::new();
    for (k, delay) in opts.step_delays.iter().enumerate() {
        let version = format!("v{}", k + 2);
        sim.shared.set_step_delay(*delay);
        let _ = sim.shared.take_steps();
        eprintln!(
            "fleetsim: floor run to {version} over {n} instances, batches of {batch_size}, steps taking {delay}"
        );
        let lost_before = sim.shared.counters.sessions_lost.load(Ordering::Relaxed);
        let load_at_start = procfs::loadavg();
        let req = RunRequest {
            run: format!("floor-{version}"),
            version: version.clone(),
            batch_size,
            timeout_ms: u64::try_from(opts.rollout_timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let cpu = CpuWindow::start(server.pid);
        let driven = server
            .request(&req, opts.rollout_timeout + Duration::from_secs(30))
            .await?;
        let used = cpu.finish();
        let mut steps = sim.shared.take_steps();
        let secs = driven["rollout_secs"].as_f64().unwrap_or(0.0);
        let batches = driven["batches"].as_f64().unwrap_or(0.0);
        let theoretical = batches * STEPS as f64 * delay.mean().as_secs_f64();
        let ratio = (theoretical > 0.0).then(|| secs / theoretical);
        let overhead_per_batch_ms =
            (batches > 0.0).then(|| (secs - theoretical) / batches * 1000.0);
        let mut targets = Map::new();
        if n == 10_000 && *delay == StepDelay::Zero {
            let (k, v) = target("overhead_per_batch_ms", overhead_per_batch_ms, 50.0);
            targets.insert(k, v);
        }
        if *delay != StepDelay::Zero && matches!(n, 1_000 | 10_000) {
            let (k, v) = target("ratio", ratio, 1.05);
            targets.insert(k, v);
        }
        let by_kind: BTreeMap<&str, u64> = steps.by_kind.iter().map(|(k, v)| (*k, *v)).collect();
        let figures = json!({
            "scenario": "floor",
            "server": "bare tonic + rustls AgentService (drover-fleetsim floor-server): Welcome, reports into a map, the rollout's commands; no store, no events, no engine",
            "instances": n,
            "hosts": n,
            "per_host": 1,
            "interval_ms": opts.interval.as_millis() as u64,
            "step_delay": delay.to_string(),
            "step_delay_ms": delay.mean().as_secs_f64() * 1000.0,
            "batch": format!("{}%", opts.batch_percent),
            "batch_size": batch_size,
            "run": version,
            "total": n,
            "rollout_secs": round3(secs),
            "theoretical_min_secs": round3(theoretical),
            "ratio": ratio.map(round3),
            "overhead_per_batch_ms": overhead_per_batch_ms.map(round3),
            "step_turnaround_ms": steps.turnaround.summary(),
            "commands_by_kind": by_kind,
            "sessions_lost": sim.shared.counters.sessions_lost.load(Ordering::Relaxed) - lost_before,
            "server_cpu_secs": round3(used.process_cpu_secs),
            "server_cpu_cores": round3(used.process_cores),
            "server_rss_mib": procfs::status_mib(server.pid, "VmRSS").map(round3),
            "simulator_cpu_cores": round3(used.simulator_cores),
            "simulator_rss_mib": procfs::status_mib(std::process::id(), "VmRSS").map(round3),
            "machine_busy_cores": round3(used.machine_busy_cores),
            "other_processes_cores": round3(used.others()),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": procfs::loadavg(),
            "machine": machine(),
            "targets": targets,
        });
        let mut figures = merge(merge(figures, driven), connected_json(&connected));
        figures["rollout_secs"] = json!(round3(secs));
        figures["machine"]["shared"] = json!("floor server and simulator run on this one machine");
        summary(&figures);
        all.push(figures);
    }
    Ok(all)
}

fn summary(f: &Value) {
    eprintln!(
        "\n== rollout floor (bare tonic + rustls server, no drover logic): {} instances on {} hosts, steps {}, batches {} of {} ({} each) (floor server and simulator on one {}-core machine)",
        f["instances"],
        f["hosts"],
        f["step_delay"],
        f["batches"],
        f["batch"],
        f["batch_size"],
        f["machine"]["cores"]
    );
    eprintln!(
        "   outcome           {} done, {} failed; {} commands, {} updates, {} reports received; {} sessions lost",
        f["done"],
        f["failed"],
        f["commands_sent"],
        f["command_updates_received"],
        f["reports_received"],
        f["sessions_lost"]
    );
    eprintln!(
        "   time              {} s; theoretical minimum {} s; ratio {}",
        f["rollout_secs"], f["theoretical_min_secs"], f["ratio"]
    );
    eprintln!(
        "   per batch         overhead {} ms; batch p50 {} ms max {} ms; between batches p50 {} ms",
        f["overhead_per_batch_ms"],
        f["batch_ms"]["p50"],
        f["batch_ms"]["max"],
        f["between_batches_ms"]["p50"]
    );
    eprintln!(
        "   step turnaround   p50 {} ms, p99 {} ms (result sent -> next command received, at the hosts)",
        f["step_turnaround_ms"]["p50"], f["step_turnaround_ms"]["p99"]
    );
    eprintln!(
        "   CPU               server {} cores ({} s, RSS {} MiB), simulator {} cores, other processes {} cores; machine busy {} cores; load {} -> {}",
        f["server_cpu_cores"],
        f["server_cpu_secs"],
        f["server_rss_mib"],
        f["simulator_cpu_cores"],
        f["other_processes_cores"],
        f["machine_busy_cores"],
        f["loadavg_at_start"],
        f["loadavg_at_end"]
    );
    print_targets(f);
}
