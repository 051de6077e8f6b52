//! The agent's own Prometheus metrics (`[metrics] listen`, off by default):
//! the commands it ran by step and outcome and how long they took, commands
//! refused, its session to the coordinator, and what its last health report
//! said of each instance.
//!
//! Served as plain HTTP on the configured address only: a read-only text
//! page, no request body read, no keep-alive, a bounded number of
//! connections at once. Like the agent's HTTP client ([`crate::http`]) it
//! needs no HTTP stack. Recording costs a few atomic operations whether or
//! not anything serves them.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use drover_proto::v1::{HealthState, InstanceStatus, RuntimeState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fencing::Fencing;
use crate::journal::{Phase, RecordKind};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 8;
/// Longest request head read before the connection is dropped.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a command was refused before it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// From a coordinator with a lower epoch than the highest seen.
    Fenced,
    /// Malformed: no id, no step, an instance of another host or none
    /// configured here.
    Invalid,
    /// Its instance stayed busy with another command past that one's timeout.
    Busy,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Fenced => "fenced",
            Refusal::Invalid => "invalid",
            Refusal::Busy => "busy",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    /// `web@h1`; not `instance`, which Prometheus gives every target.
    id: String,
    service: String,
}

/// Step durations from 10 ms to about 5.5 minutes (doubling).
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

fn step_label(kind: &RecordKind) -> &'static str {
    match kind {
        RecordKind::Stage => "stage",
        RecordKind::Drain => "drain",
        RecordKind::Stop => "stop",
        RecordKind::Deploy => "deploy",
        RecordKind::Start => "start",
        RecordKind::Verify => "verify",
        RecordKind::Undrain => "undrain",
        RecordKind::SetWeight => "set_weight",
        // Never run (only settled after a restart); one label for all.
        RecordKind::Other(_) => "other",
    }
}

fn outcome_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Succeeded => "succeeded",
        Phase::Failed => "failed",
        Phase::TimedOut => "timed_out",
    }
}

/// The agent's metrics; shared by the executor, the session and the server.
pub struct AgentMetrics {
    registry: Registry,
    commands: Family<StepLabels, Counter>,
    durations: Family<StepLabels, Histogram, fn() -> Histogram>,
    refused: Family<ReasonLabel, Counter>,
    sessions: Family<ResultLabel, Counter>,
    connected: Gauge,
    reports: Counter,
    last_report: Gauge<f64, AtomicU64>,
    healthy: Family<InstanceLabels, Gauge>,
    running: Family<InstanceLabels, Gauge>,
    epoch: Gauge,
    fenced: Counter,
    /// Read at every scrape: the highest epoch and the refusals it counts.
    fencing: Fencing,
    /// Serialises bringing `fenced` up to the fencing's count.
    fenced_sync: Mutex<()>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    pub fn new(fencing: Fencing) -> AgentMetrics {
        let mut registry = Registry::with_prefix("drover_agent");
        let m = AgentMetrics {
            commands: Family::default(),
            durations: Family::new_with_constructor(step_histogram),
            refused: Family::default(),
            sessions: Family::default(),
            connected: Gauge::default(),
            reports: Counter::default(),
            last_report: Gauge::default(),
            healthy: Family::default(),
            running: Family::default(),
            epoch: Gauge::default(),
            fenced: Counter::default(),
            fencing,
            fenced_sync: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "commands",
            "Commands this agent ran to the end, by step and outcome (succeeded, failed, timed_out)",
            m.commands.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "How long a command ran on this agent, by step and outcome",
            m.durations.clone(),
        );
        registry.register(
            "commands_refused",
            "Commands refused before they ran, by reason (fenced, invalid, busy)",
            m.refused.clone(),
        );
        registry.register(
            "fenced",
            "Commands and sessions refused because they came from a deposed coordinator (a lower epoch)",
            m.fenced.clone(),
        );
        registry.register(
            "epoch",
            "The highest coordinator epoch this agent has seen (0: no election)",
            m.epoch.clone(),
        );
        registry.register(
            "sessions",
            "Session attempts to a coordinator, by result: established (the first and every reconnect) or failed",
            m.sessions.clone(),
        );
        registry.register(
            "session_connected",
            "1 while a session to a coordinator is up",
            m.connected.clone(),
        );
        registry.register(
            "reports_sent",
            "Health reports sent to the coordinator",
            m.reports.clone(),
        );
        registry.register(
            "last_report_timestamp_seconds",
            "When the last health report was sent (unix seconds)",
            m.last_report.clone(),
        );
        registry.register(
            "instance_healthy",
            "1 when the last health report called the instance healthy (running, and passing its check or without one)",
            m.healthy.clone(),
        );
        registry.register(
            "instance_running",
            "1 when the last health report called the instance running",
            m.running.clone(),
        );
        for result in ["established", "failed"] {
            m.sessions
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .get();
        }
        for r in [Refusal::Fenced, Refusal::Invalid, Refusal::Busy] {
            m.refused
                .get_or_create(&ReasonLabel {
                    reason: r.as_str().into(),
                })
                .get();
        }
        AgentMetrics { registry, ..m }
    }

    /// A command of `kind` ran to its end after `took`.
    pub fn command_ended(&self, kind: &RecordKind, phase: Phase, took: Duration) {
        let labels = StepLabels {
            step: step_label(kind).to_string(),
            outcome: outcome_label(phase).to_string(),
        };
        self.commands.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn command_refused(&self, why: Refusal) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: why.as_str().to_string(),
            })
            .inc();
    }

    /// A session attempt ended its handshake: `true` when the coordinator
    /// welcomed it.
    pub fn session_attempt(&self, established: bool) {
        let result = if established { "established" } else { "failed" };
        self.sessions
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        if established {
            self.connected.set(1);
        }
    }

    /// The session is down (ended, or never came up).
    pub fn session_down(&self) {
        self.connected.set(0);
    }

    /// A health report went out with `instances`.
    pub fn report_sent(&self, instances: &[InstanceStatus]) {
        self.reports.inc();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_report.set(now);
        for i in instances {
            let labels = InstanceLabels {
                id: i.id.clone(),
                service: i.service.clone(),
            };
            let running = i.state == RuntimeState::Running as i32;
            let healthy = running
                && matches!(
                    HealthState::try_from(i.health),
                    Ok(HealthState::Healthy | HealthState::None)
                );
            self.running.get_or_create(&labels).set(i64::from(running));
            self.healthy.get_or_create(&labels).set(i64::from(healthy));
        }
    }

    /// Text exposition format (OpenMetrics).
    pub fn encode(&self) -> String {
        self.epoch
            .set(i64::try_from(self.fencing.highest()).unwrap_or(i64::MAX));
        {
            let _one_at_a_time = self
                .fenced_sync
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let total = self.fencing.commands_fenced();
            let shown = self.fenced.get();
            if total > shown {
                self.fenced.inc_by(total - shown);
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("listen for /metrics on {addr} ([metrics] listen): {source}")]
pub struct ListenError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the configured address (before the agent does any work, so a
/// taken port stops it at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, source })
}

/// Serves `GET /metrics` on `listener` until `cancel`.
pub async fn serve(
    listener: TcpListener,
    metrics: std::sync::Arc<AgentMetrics>,
    cancel: CancellationToken,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let tasks = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("metrics listener: accept: {e}");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = tokio::time::timeout(IO_TIMEOUT, answer(stream, &metrics)).await {
                tracing::debug!("metrics request: {e}");
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Reads the request head and answers it; the connection closes after.
async fn answer(mut stream: TcpStream, metrics: &AgentMetrics) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            let _ = respond(&mut stream, "431 Request Header Fields Too Large", "", "").await;
            return;
        }
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", metrics.encode()),
        ("GET" | "HEAD", _) => ("404 Not Found", "only /metrics is served here\n".into()),
        _ => ("405 Method Not Allowed", "only GET /metrics\n".into()),
    };
    let body = if method == "HEAD" { "" } else { body.as_str() };
    let _ = respond(
        &mut stream,
        status,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body,
    )
    .await;
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let ct = if content_type.is_empty() {
        "text/plain; charset=utf-8"
    } else {
        content_type
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (tempfile::TempDir, AgentMetrics) {
        let dir = tempfile::tempdir().expect("tempdir");
        let fencing = Fencing::open(dir.path()).expect("fencing");
        (dir, AgentMetrics::new(fencing))
    }

    #[test]
    fn commands_are_counted_by_step_and_outcome_with_their_durations() {
        let (_dir, m) = metrics();
        m.command_ended(
            &RecordKind::Drain,
            Phase::Succeeded,
            Duration::from_millis(30),
        );
        m.command_ended(
            &RecordKind::Drain,
            Phase::Succeeded,
            Duration::from_millis(50),
        );
        m.command_ended(
            &RecordKind::Verify,
            Phase::TimedOut,
            Duration::from_secs(10),
        );
        m.command_refused(Refusal::Fenced);
        let text = m.encode();
        for line in [
            "drover_agent_commands_total{step=\"drain\",outcome=\"succeeded\"} 2",
            "drover_agent_commands_total{step=\"verify\",outcome=\"timed_out\"} 1",
            "drover_agent_command_duration_seconds_count{step=\"drain\",outcome=\"succeeded\"} 2",
            "drover_agent_commands_refused_total{reason=\"fenced\"} 1",
            "drover_agent_commands_refused_total{reason=\"busy\"} 0",
            "drover_agent_session_connected 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    #[test]
    fn fenced_and_epoch_follow_the_fencing_record() {
        let (_dir, m) = metrics();
        assert!(m.fencing.observe(7));
        let _ = m.fencing.admit(3);
        let _ = m.fencing.admit(5);
        let text = m.encode();
        assert!(text.contains("drover_agent_epoch 7\n"), "{text}");
        assert!(text.contains("drover_agent_fenced_total 2\n"), "{text}");
        // Scraped again: nothing counted twice.
        let text = m.encode();
        assert!(text.contains("drover_agent_fenced_total 2\n"), "{text}");
    }

    #[test]
    fn a_report_sets_each_instance_health() {
        let (_dir, m) = metrics();
        let inst = |id: &str, state: RuntimeState, health: HealthState| InstanceStatus {
            id: id.into(),
            service: "web".into(),
            state: state as i32,
            health: health as i32,
            ..Default::default()
        };
        m.report_sent(&[
            inst("web@h1", RuntimeState::Running, HealthState::Healthy),
            inst("api@h1", RuntimeState::Running, HealthState::Unhealthy),
            inst("db@h1", RuntimeState::Stopped, HealthState::None),
        ]);
        let text = m.encode();
        for line in [
            "drover_agent_instance_healthy{id=\"web@h1\",service=\"web\"} 1",
            "drover_agent_instance_healthy{id=\"api@h1\",service=\"web\"} 0",
            "drover_agent_instance_running{id=\"api@h1\",service=\"web\"} 1",
            "drover_agent_instance_healthy{id=\"db@h1\",service=\"web\"} 0",
            "drover_agent_instance_running{id=\"db@h1\",service=\"web\"} 0",
            "drover_agent_reports_sent_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }

    /// The listener answers /metrics and nothing else, over real TCP.
    #[tokio::test]
    async fn serves_metrics_over_plain_http() {
        let (_dir, m) = metrics();
        let m = std::sync::Arc::new(m);
        m.session_attempt(true);
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve(listener, m.clone(), cancel.clone()));
        let get = async |path: &str| {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\r\n\r\n# HELP drover_agent_"), "{ok}");
        assert!(ok.contains("drover_agent_session_connected 1\n"), "{ok}");
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        let missing = get("/").await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops when cancelled")
            .expect("join");
    }
}
