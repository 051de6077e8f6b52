//! The agent's one long-lived stream to a coordinator
//! (`AgentService.Session`): connect, Hello, Welcome, then HealthReports
//! periodically and on change, certificate renewal, and reconnecting with
//! backoff across the configured coordinators.
//!
//! The TLS files are read at every connect, so a renewed (or re-enrolled)
//! certificate is used without restarting the agent.
//!
//! With several coordinators (HA), only the leader serves sessions: the
//! others answer UNAVAILABLE with the leader's address in the
//! `drover-leader` metadata, which is dialled next; the configured list is
//! kept for when the leader goes away. A Welcome carries the leader's
//! fencing epoch (see [`crate::fencing`]).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_net::transport::{self, ConnectOptions, TransportError};
use drover_proto::v1::agent_service_client::AgentServiceClient;
use drover_proto::v1::{
    AgentMessage, CoordinatorMessage, HealthReport, Hello, HostMetrics, InstanceStatus,
    RenewRequest, RenewResponse, agent_message, coordinator_message,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, FailureLog};
use crate::commands::Executor;
use crate::host_metrics::HostMetricsCollector;
use crate::tls::{self, LoadedTls, NewKey, TlsError, TlsFiles};

/// The pause before the next coordinator after a standby answered, or the
/// leader it named did not: an election is under way, so look again soon.
pub const STANDBY_RETRY: Duration = Duration::from_millis(300);
/// Quick looks in a row before the usual backoff again: 20 × 300 ms covers
/// an election on a lease of several seconds.
const QUICK_LOOKS: u32 = 20;

/// First reconnect delay, doubling (with jitter) to [`BACKOFF_CAP`].
pub const BACKOFF_START: Duration = Duration::from_millis(500);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A session that lasted longer than this resets the backoff: it worked,
/// so its end (a coordinator restart, a leader's takeover) starts a fresh
/// search; one that ends sooner (a coordinator that drops sessions at once)
/// keeps backing off.
pub const STABLE_SESSION: Duration = Duration::from_secs(5);
/// Minimum spacing of change-triggered reports: bursts coalesce into one.
pub const COALESCE: Duration = Duration::from_millis(100);
/// How long to wait for the Welcome after opening the stream.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a RenewResponse before asking again.
const RENEW_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Host metrics younger than this are reused for change-triggered reports.
const METRICS_MAX_AGE: Duration = Duration::from_secs(1);
/// Outbound messages buffered before reports are skipped.
const OUTBOUND_QUEUE: usize = 16;
/// Response metadata a coordinator that does not lead sets to the
/// leader's gRPC address (HOST:PORT).
pub const LEADER_METADATA: &str = "drover-leader";

/// Everything the session loop needs to know.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub host_id: String,
    pub agent_version: String,
    pub coordinators: Vec<String>,
    pub report_interval: Duration,
    /// Set when some instance has traffic counters (a load balancer view,
    /// its own metrics): reports then go out at least this often, since
    /// counters never trigger one of their own.
    pub traffic_interval: Option<Duration>,
    pub labels: HashMap<String, String>,
    pub tls: TlsFiles,
    pub connect: ConnectOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("load TLS files: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "the agent certificate expired at {}; re-enrol with `drover-agent enroll --force ...`",
        humantime::format_rfc3339_seconds(*.0)
    )]
    Expired(SystemTime),
    #[error("{}", transport::error_chain(.0))]
    Connect(#[from] TransportError),
    #[error("timed out connecting")]
    ConnectTimeout,
    #[error("open session: {}", status_text(.0))]
    Open(tonic::Status),
    #[error("session ended: {}", status_text(.0))]
    Stream(tonic::Status),
    #[error("the coordinator closed the session")]
    Closed,
    #[error(
        "no Welcome from the coordinator within {}",
        humantime::format_duration(WELCOME_TIMEOUT)
    )]
    NoWelcome,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(
        "the coordinator leads epoch {coordinator}, but this agent follows epoch {agent}: \
         it was deposed; trying another"
    )]
    Deposed { coordinator: u64, agent: u64 },
    #[error("save the coordinator epoch: {0}")]
    Epoch(crate::fsutil::FsError),
}

impl SessionError {
    fn status(&self) -> Option<&tonic::Status> {
        match self {
            SessionError::Open(s) | SessionError::Stream(s) => Some(s),
            _ => None,
        }
    }

    /// Where the leader is, when a coordinator that does not lead refused
    /// the session (UNAVAILABLE with `drover-leader`).
    pub fn leader_hint(&self) -> Option<String> {
        leader_hint(self.status()?)
    }

    /// A live coordinator that does not lead answered (a standby, with or
    /// without the leader's address): an election may be under way.
    pub fn from_standby(&self) -> bool {
        self.status().is_some_and(|s| {
            s.code() == tonic::Code::Unavailable && s.message().contains("not the leader")
        })
    }

    /// The coordinator refused this agent (revoked, or host id mismatch).
    pub fn is_permission_denied(&self) -> bool {
        self.status()
            .is_some_and(|s| s.code() == tonic::Code::PermissionDenied)
    }
}

/// The leader's address from a refusal by a coordinator that does not
/// lead: UNAVAILABLE with `drover-leader` metadata.
pub fn leader_hint(s: &tonic::Status) -> Option<String> {
    if s.code() != tonic::Code::Unavailable {
        return None;
    }
    let addr = s.metadata().get(LEADER_METADATA)?.to_str().ok()?.trim();
    (!addr.is_empty()).then(|| addr.to_string())
}

fn status_text(s: &tonic::Status) -> String {
    let mut text = format!("{:?}", s.code());
    if !s.message().is_empty() {
        text.push_str(": ");
        text.push_str(s.message());
    }
    // The transport error behind the status often repeats the message;
    // add only what is new.
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// How one session attempt ended.
enum Outcome {
    /// Renewed the certificate: reconnect at once with it.
    Renewed,
    /// Failed before the Welcome, or ended after it.
    Ended {
        established: bool,
        lasted: Duration,
        error: SessionError,
    },
}

/// Runs sessions until `shutdown`, reconnecting as needed.
pub async fn run(
    cfg: SessionConfig,
    statuses: watch::Receiver<Vec<InstanceStatus>>,
    metrics: Option<HostMetricsCollector>,
    commands: Executor,
    shutdown: CancellationToken,
) {
    let mut s = Session {
        cfg,
        statuses,
        metrics,
        commands,
        last_metrics: None,
        failures: FailureLog::default(),
        leader: None,
    };
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
    let mut next = 0usize;
    // The leader a standby named, dialled next; and whether the last
    // attempt already followed such a hint (two in a row, as during an
    // election, wait out the backoff instead of bouncing between them).
    let mut redirect: Option<String> = None;
    let mut followed = false;
    // Quick looks in a row during an election (see STANDBY_RETRY), and
    // addresses that failed in the current round of the list.
    let mut quick = 0u32;
    let mut round = 0usize;
    loop {
        let n = s.cfg.coordinators.len().max(1);
        let (addr, hinted) = match redirect.take() {
            Some(leader) => (leader, true),
            None => (
                s.cfg
                    .coordinators
                    .get(next % n)
                    .cloned()
                    .unwrap_or_default(),
                false,
            ),
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = s.once(&addr) => outcome,
        };
        let delay = match outcome {
            Outcome::Renewed => continue,
            Outcome::Ended {
                established,
                lasted,
                error,
            } => {
                if established && lasted >= STABLE_SESSION {
                    backoff.reset();
                }
                if established {
                    followed = false;
                    quick = 0;
                    round = 0;
                }
                if let Some(leader) = error.leader_hint().filter(|l| *l != addr) {
                    if s.leader.as_deref() != Some(leader.as_str()) {
                        tracing::info!(coordinator = %addr, leader = %leader, "this coordinator does not lead; dialling the leader");
                    }
                    redirect = Some(leader);
                    if !std::mem::replace(&mut followed, true) {
                        continue;
                    }
                } else {
                    followed = false;
                }
                // A standby answered: the cluster is there and a leader is
                // (being) elected, so look again soon instead of backing
                // off as from a dead coordinator; a takeover then costs
                // the agent a fraction of a second, not a doubling backoff.
                // So is a leader a standby named that does not answer: the
                // standby still names the one that just died until its
                // lease expires. A bounded number of quick looks in a row,
                // then the usual backoff (a standby naming a leader this
                // host cannot reach, say across a partition).
                let quick_look = (error.from_standby() || hinted) && quick < QUICK_LOOKS;
                // With several coordinators, one that cannot be reached
                // passes to the next at once; the backoff grows once per
                // round of them all, not once per address.
                let next_in_round = !established && round + 1 < n;
                let delay = if quick_look {
                    quick += 1;
                    STANDBY_RETRY
                } else if next_in_round {
                    round += 1;
                    STANDBY_RETRY
                } else {
                    round = 0;
                    backoff.next_delay()
                };
                s.log_failure(&addr, established, &error, delay);
                if !hinted {
                    next = next.wrapping_add(1);
                }
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

struct Session {
    cfg: SessionConfig,
    statuses: watch::Receiver<Vec<InstanceStatus>>,
    metrics: Option<HostMetricsCollector>,
    commands: Executor,
    last_metrics: Option<(Instant, HostMetrics)>,
    failures: FailureLog,
    /// The address of the coordinator the last session was with, to log
    /// when the leader changes.
    leader: Option<String>,
}

/// A renewal in flight: the new key waits here for its certificate.
struct PendingRenewal {
    key: NewKey,
}

impl Session {
    fn log_failure(
        &mut self,
        addr: &str,
        established: bool,
        error: &SessionError,
        delay: Duration,
    ) {
        let text = error.to_string();
        if established && !error.is_permission_denied() {
            // A session that was up and ended is news every time.
            let aborted = error
                .status()
                .is_some_and(|s| s.code() == tonic::Code::Aborted);
            if aborted {
                tracing::warn!(coordinator = %addr, "session replaced by a newer one for this host: {text}");
            } else {
                tracing::warn!(coordinator = %addr, "session lost: {text}; reconnecting");
            }
            self.failures.reset();
            return;
        }
        let Some(count) = self.failures.record(addr, &text) else {
            return;
        };
        let retry = humantime::format_duration(Duration::from_millis(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        ));
        if error.is_permission_denied() {
            tracing::error!(
                coordinator = %addr,
                attempts = count,
                "the coordinator refused this agent (certificate revoked, or host id does not match the certificate): {text}; retrying in {retry}"
            );
        } else if matches!(error, SessionError::Expired(_)) {
            tracing::error!(coordinator = %addr, attempts = count, "{text}");
        } else {
            tracing::warn!(coordinator = %addr, attempts = count, "cannot reach coordinator: {text}; retrying in {retry}");
        }
    }

    fn snapshot(&mut self) -> Vec<InstanceStatus> {
        self.statuses.borrow_and_update().clone()
    }

    fn host_metrics(&mut self) -> Option<HostMetrics> {
        if let Some((at, m)) = &self.last_metrics
            && at.elapsed() < METRICS_MAX_AGE
        {
            return Some(m.clone());
        }
        let m = self.metrics.as_mut()?.collect();
        self.last_metrics = Some((Instant::now(), m.clone()));
        Some(m)
    }

    fn report(&mut self) -> AgentMessage {
        let instances = self.snapshot();
        self.commands.metrics().report_sent(&instances);
        AgentMessage {
            msg: Some(agent_message::Msg::Health(HealthReport {
                sent_at_ms: unix_ms(SystemTime::now()),
                host: self.host_metrics(),
                instances,
                epoch: self.commands.fencing().highest(),
                commands_fenced: self.commands.fencing().commands_fenced(),
            })),
        }
    }

    fn hello(&mut self) -> AgentMessage {
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                host_id: self.cfg.host_id.clone(),
                agent_version: self.cfg.agent_version.clone(),
                labels: self.cfg.labels.clone(),
                instances: self.snapshot(),
                report_interval_ms: u32::try_from(self.cfg.report_interval.as_millis())
                    .unwrap_or(u32::MAX),
            })),
        }
    }

    /// One connection: returns when it fails, ends, or must be redone with
    /// a renewed certificate.
    async fn once(&mut self, addr: &str) -> Outcome {
        let started = Instant::now();
        let mut established = false;
        let result = self.connect_and_serve(addr, &mut established).await;
        let metrics = self.commands.metrics();
        if !established {
            metrics.session_attempt(false);
        }
        metrics.session_down();
        match result {
            Ok(()) => Outcome::Renewed,
            Err(error) => Outcome::Ended {
                established,
                lasted: started.elapsed(),
                error,
            },
        }
    }

    async fn connect_and_serve(
        &mut self,
        addr: &str,
        established: &mut bool,
    ) -> Result<(), SessionError> {
        let LoadedTls { client: tls, cert } = self.cfg.tls.load()?;
        if cert.not_after <= SystemTime::now() {
            return Err(SessionError::Expired(cert.not_after));
        }
        // connect() has its own connect timeout; this bounds the TLS
        // handshake too.
        let budget = self.cfg.connect.connect_timeout * 2;
        let channel =
            tokio::time::timeout(budget, transport::connect(addr, &tls, &self.cfg.connect))
                .await
                .map_err(|_| SessionError::ConnectTimeout)??;
        let mut client = AgentServiceClient::new(channel);

        let (tx, rx) = mpsc::channel::<AgentMessage>(OUTBOUND_QUEUE);
        let hello = self.hello();
        tx.try_send(hello)
            .map_err(|_| SessionError::Protocol("outbound queue unavailable".into()))?;
        let response =
            tokio::time::timeout(WELCOME_TIMEOUT, client.session(ReceiverStream::new(rx)))
                .await
                .map_err(|_| SessionError::NoWelcome)?
                .map_err(SessionError::Open)?;
        let mut inbound = response.into_inner();
        let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| SessionError::NoWelcome)?
            .map_err(SessionError::Stream)?;
        let welcome = match first {
            Some(CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Welcome(w)),
            }) => w,
            Some(other) => {
                return Err(SessionError::Protocol(format!(
                    "expected Welcome, got {other:?}"
                )));
            }
            None => return Err(SessionError::Closed),
        };
        let fencing = self.commands.fencing();
        let agent_epoch = fencing.highest();
        if welcome.epoch > 0 && welcome.epoch < agent_epoch {
            fencing.refuse_session();
            return Err(SessionError::Deposed {
                coordinator: welcome.epoch,
                agent: agent_epoch,
            });
        }
        if fencing.observe(welcome.epoch) {
            fencing.save_async().await.map_err(SessionError::Epoch)?;
        }
        *established = true;
        self.commands.metrics().session_attempt(true);
        if welcome.epoch > 0 && self.leader.as_deref() != Some(addr) {
            tracing::info!(
                coordinator = %addr,
                name = %welcome.coordinator_name,
                epoch = welcome.epoch,
                "coordinator {} leads (epoch {})",
                welcome.coordinator_name,
                welcome.epoch
            );
        }
        self.leader = Some(addr.to_string());
        if self.failures.count() > 0 {
            tracing::info!(
                coordinator = %addr,
                name = %welcome.coordinator_name,
                failed_attempts = self.failures.count(),
                "connected to coordinator"
            );
        } else {
            tracing::info!(coordinator = %addr, name = %welcome.coordinator_name, "connected to coordinator");
        }
        self.failures.reset();
        // Acceptances and progress were for the session that is gone;
        // results still waiting go out first.
        self.commands.outbox().drop_transient();
        self.flush_updates(&tx).await?;

        let report_interval = match self.cfg.traffic_interval {
            Some(t) => self.cfg.report_interval.min(t),
            None => self.cfg.report_interval,
        };
        let mut ticker = tokio::time::interval(report_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick fires at once: the coordinator gets host metrics
        // right after the Welcome.
        let mut last_report = Instant::now();
        let mut renew_deadline = instant_at(tls::renew_at(&cert));
        let mut pending: Option<PendingRenewal> = None;
        // A change-triggered report waiting out COALESCE.
        let mut report_due: Option<Instant> = None;

        loop {
            tokio::select! {
                msg = inbound.message() => {
                    let msg = msg.map_err(SessionError::Stream)?.ok_or(SessionError::Closed)?;
                    match msg.msg {
                        Some(coordinator_message::Msg::Renew(resp)) => {
                            match self.on_renew_response(resp, pending.take(), &cert).await {
                                Ok(true) => return Ok(()),
                                Ok(false) => {}
                                Err(retry) => renew_deadline = Instant::now() + retry,
                            }
                        }
                        Some(coordinator_message::Msg::Command(cmd)) => {
                            tracing::debug!(command = %cmd.id, instance = %cmd.instance, "command received");
                            self.commands.submit(cmd);
                        }
                        Some(coordinator_message::Msg::Welcome(_)) | None => {}
                    }
                }
                _ = self.commands.outbox().notified() => {
                    // What the commands changed is reported before their
                    // results, so the coordinator never gets a result
                    // ahead of the state it produced.
                    if report_due.is_some() || self.statuses.has_changed().unwrap_or(false) {
                        report_due = None;
                        self.send_report(&tx);
                        last_report = Instant::now();
                        ticker.reset();
                    }
                    self.flush_updates(&tx).await?;
                }
                _ = ticker.tick() => {
                    self.send_report(&tx);
                    last_report = Instant::now();
                    report_due = None;
                }
                changed = self.statuses.changed() => {
                    if changed.is_err() {
                        // The agent is shutting down.
                        return Err(SessionError::Closed);
                    }
                    // Waits in its own branch, not here: commands and
                    // their results keep flowing while a burst of
                    // changes coalesces into one report.
                    report_due.get_or_insert(last_report + COALESCE);
                }
                _ = tokio::time::sleep_until(report_due.unwrap_or(last_report + report_interval)), if report_due.is_some() => {
                    report_due = None;
                    self.send_report(&tx);
                    last_report = Instant::now();
                    ticker.reset();
                }
                _ = tokio::time::sleep_until(renew_deadline) => {
                    let due = tls::renew_at(&cert);
                    if pending.is_none() && SystemTime::now() < due {
                        // Woke early (long waits are capped): not due yet.
                        renew_deadline = instant_at(due);
                        continue;
                    }
                    renew_deadline = Instant::now() + RENEW_ANSWER_TIMEOUT.min(retry_delay(&cert));
                    match tls::make_csr(&self.cfg.host_id) {
                        Ok(key) => {
                            let msg = AgentMessage {
                                msg: Some(agent_message::Msg::Renew(RenewRequest { csr_pem: key.csr_pem.clone() })),
                            };
                            if tx.try_send(msg).is_ok() {
                                tracing::info!(
                                    not_after = %humantime::format_rfc3339_seconds(cert.not_after),
                                    "renewing the agent certificate"
                                );
                                pending = Some(PendingRenewal { key });
                            }
                        }
                        Err(e) => tracing::error!("renew certificate: {e}"),
                    }
                }
            }
        }
    }

    /// Sends every queued command update; waits for room, since unlike
    /// reports these must not be skipped.
    async fn flush_updates(&self, tx: &mpsc::Sender<AgentMessage>) -> Result<(), SessionError> {
        let outbox = self.commands.outbox();
        while let Some(update) = outbox.pop() {
            let permit = match tx.reserve().await {
                Ok(p) => p,
                Err(_) => {
                    outbox.unpop(update);
                    return Err(SessionError::Closed);
                }
            };
            permit.send(AgentMessage {
                msg: Some(agent_message::Msg::CommandUpdate(update)),
            });
        }
        Ok(())
    }

    fn send_report(&mut self, tx: &mpsc::Sender<AgentMessage>) {
        let report = self.report();
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(report) {
            // The connection is not draining; the next report will carry
            // fresher data anyway.
            tracing::debug!("outbound queue full; skipping a report");
        }
    }

    /// Ok(true): new certificate installed, reconnect. Ok(false): nothing
    /// to do. Err(delay): renewal failed, try again after `delay`.
    async fn on_renew_response(
        &self,
        resp: RenewResponse,
        pending: Option<PendingRenewal>,
        cert: &transport::PeerCert,
    ) -> Result<bool, Duration> {
        let Some(PendingRenewal { key }) = pending else {
            tracing::warn!("ignoring a RenewResponse nobody asked for");
            return Ok(false);
        };
        let retry = retry_delay(cert);
        if !resp.error.is_empty() {
            tracing::warn!(
                "the coordinator refused to renew the certificate: {}; retrying in {}",
                resp.error,
                humantime::format_duration(retry)
            );
            return Err(retry);
        }
        let issued = match tls::check_issued(&resp.cert_pem, &self.cfg.host_id, &key) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("renewed certificate refused: {e}");
                return Err(retry);
            }
        };
        // Installing fsyncs: on the blocking pool, not the runtime thread
        // that carries the session and every instance.
        let files = self.cfg.tls.clone();
        let cert_pem = resp.cert_pem;
        let installed = tokio::task::spawn_blocking(move || {
            files
                .install(&key.key_pem, &cert_pem, None)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("installer task failed: {e}")));
        if let Err(e) = installed {
            tracing::error!("install renewed certificate: {e}");
            return Err(retry);
        }
        tracing::info!(
            serial = %issued.serial,
            not_after = %humantime::format_rfc3339_seconds(issued.not_after),
            "renewed the agent certificate; reconnecting with it"
        );
        Ok(true)
    }
}

/// How long to wait before asking again after a failed renewal: a tenth of
/// the time left, between 1 s and 60 s.
fn retry_delay(cert: &transport::PeerCert) -> Duration {
    let left = cert
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    (left / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Longest single timer wait for a wall-clock deadline: the wall clock
/// can be stepped, and tokio's timer wheel has a range of about two years.
const MAX_TIMER_WAIT: Duration = Duration::from_secs(3600);

/// The monotonic instant for a wall-clock time (now if past), capped at
/// [`MAX_TIMER_WAIT`] ahead: callers re-check the wall clock on waking.
fn instant_at(t: SystemTime) -> Instant {
    let wait = t
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    Instant::now() + wait.min(MAX_TIMER_WAIT)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::identity::Identity;

    #[test]
    fn renewal_retry_is_a_tenth_of_the_time_left_clamped() {
        let now = SystemTime::now();
        let cert = |left: u64| transport::PeerCert {
            identity: Identity::agent("h1").expect("id"),
            serial: "01".into(),
            not_before: now - Duration::from_secs(10),
            not_after: now + Duration::from_secs(left),
        };
        assert_eq!(retry_delay(&cert(0)), Duration::from_secs(1));
        assert!(retry_delay(&cert(100)) <= Duration::from_secs(10));
        assert_eq!(retry_delay(&cert(100_000)), Duration::from_secs(60));
    }

    #[test]
    fn permission_denied_is_recognised() {
        let e = SessionError::Stream(tonic::Status::permission_denied("revoked"));
        assert!(e.is_permission_denied());
        assert_eq!(e.to_string(), "session ended: PermissionDenied: revoked");
        assert!(!SessionError::Closed.is_permission_denied());
    }
}
