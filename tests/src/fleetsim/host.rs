//! One simulated host: its own mTLS connection and `Session` stream, a
//! Hello, health reports every interval (jittered), and rollout commands
//! answered after the configured delay with the effect a real agent's
//! step has on the instance (drained, stopped, new release, ...).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use drover_proto::v1::agent_service_client::AgentServiceClient;
use drover_proto::v1::command::Kind;
use drover_proto::v1::command_update::Phase;
use drover_proto::v1::{
    AgentMessage, Command, CommandUpdate, DiskUsage, HealthReport, HealthState, Hello, HostMetrics,
    InstanceStatus, Release, RuntimeState, agent_message, coordinator_message,
};
use rustls::ClientConfig;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::StepDelay;
use super::conn::Dialer;
use super::probe::Probe;
use super::stats::Samples;

/// The real agent's outbound queue; reports are skipped when it is full.
const OUTBOUND_QUEUE: usize = 16;
/// As the real agent: change-triggered reports at most this often.
const COALESCE: Duration = Duration::from_millis(100);
/// How long the coordinator may take to answer the session with a Welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);
/// Results remembered per host, so a command sent again gets its result
/// again instead of running twice (the real agent's journal).
const JOURNAL: usize = 64;
/// Reconnect delays double from this up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Counters shared by every simulated host.
#[derive(Debug, Default)]
pub struct Counters {
    /// Sessions up right now.
    pub connected: AtomicUsize,
    /// Hosts that got a Welcome at least once.
    pub ever_connected: AtomicUsize,
    pub connect_failures: AtomicU64,
    pub sessions_lost: AtomicU64,
    /// Hosts that gave up after too many failed attempts.
    pub gave_up: AtomicUsize,
    pub reports_sent: AtomicU64,
    /// Reports skipped because the outbound queue was full.
    pub reports_skipped: AtomicU64,
    pub commands: AtomicU64,
    pub repeated_commands: AtomicU64,
    pub results_sent: AtomicU64,
    /// Microseconds since [`Shared::start`] of the latest first Welcome.
    pub last_welcome_us: AtomicU64,
}

/// Timings of rollout steps as the hosts saw them.
#[derive(Debug, Default)]
pub struct StepStats {
    /// From a step's result to the next step's command for the same
    /// instance: the coordinator's turnaround.
    pub turnaround: Samples,
    pub by_kind: HashMap<&'static str, u64>,
    pub first_command: Option<Instant>,
    pub last_result: Option<Instant>,
    /// Every command id received, with when it came and when its result
    /// went out: what a step that timed out on the coordinator's side
    /// looked like here.
    pub commands: HashMap<String, (Instant, Option<Instant>)>,
}

/// What every host task shares.
#[derive(Debug)]
pub struct Shared {
    pub probe: Arc<Probe>,
    pub interval: Duration,
    pub step_delay: RwLock<StepDelay>,
    pub counters: Counters,
    pub steps: Mutex<StepStats>,
    /// Handshakes in flight at once.
    pub connect_gate: Semaphore,
    pub connect_times: Mutex<Samples>,
    pub start: Instant,
    pub changed: Notify,
    pub cancel: CancellationToken,
    /// Failed connection attempts a host makes before it gives up.
    pub max_attempts: u32,
}

impl Shared {
    pub fn new(
        probe: Arc<Probe>,
        interval: Duration,
        connect_concurrency: usize,
        cancel: CancellationToken,
    ) -> Shared {
        Shared {
            probe,
            interval,
            step_delay: RwLock::new(StepDelay::Zero),
            counters: Counters::default(),
            steps: Mutex::new(StepStats::default()),
            connect_gate: Semaphore::new(connect_concurrency.max(1)),
            connect_times: Mutex::new(Samples::default()),
            start: Instant::now(),
            changed: Notify::new(),
            cancel,
            max_attempts: 10,
        }
    }

    pub fn set_step_delay(&self, d: StepDelay) {
        *self.step_delay.write().unwrap_or_else(|e| e.into_inner()) = d;
    }

    fn delay(&self) -> Duration {
        self.step_delay
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .sample()
    }

    pub fn take_steps(&self) -> StepStats {
        std::mem::take(&mut *self.steps.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn steps(&self) -> std::sync::MutexGuard<'_, StepStats> {
        self.steps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a simulated host looks like.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub index: usize,
    pub id: String,
    pub labels: HashMap<String, String>,
    /// Instances as first reported: running, healthy, in service.
    pub instances: Vec<InstanceStatus>,
}

/// A running, healthy instance of `service` on `host`, on `release`.
pub fn instance(
    host: &str,
    name: &str,
    service: &str,
    release: Release,
    pid: u32,
) -> InstanceStatus {
    InstanceStatus {
        id: format!("{name}@{host}"),
        name: name.to_string(),
        service: service.to_string(),
        runtime: "process".to_string(),
        state: RuntimeState::Running as i32,
        restarts: 0,
        pid,
        health: HealthState::Healthy as i32,
        last_check_latency_ms: 2,
        consecutive_successes: 10,
        consecutive_failures: 0,
        last_check_error: String::new(),
        release: Some(release),
        drained: false,
        ..InstanceStatus::default()
    }
}

/// xorshift64: cheap variation for metrics and jitter.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn kind_name(kind: &Option<Kind>) -> &'static str {
    match kind {
        Some(Kind::Stage(_)) => "stage",
        Some(Kind::Drain(_)) => "drain",
        Some(Kind::Stop(_)) => "stop",
        Some(Kind::Deploy(_)) => "deploy",
        Some(Kind::Start(_)) => "start",
        Some(Kind::Verify(_)) => "verify",
        Some(Kind::Undrain(_)) => "undrain",
        Some(Kind::SetWeight(_)) => "set_weight",
        None => "none",
    }
}

/// One host's state across sessions.
struct SimHost {
    spec: HostSpec,
    shared: Arc<Shared>,
    instances: Vec<InstanceStatus>,
    rng: Rng,
    seq: u64,
    mem_total: u64,
    journal: VecDeque<(String, CommandUpdate)>,
    running: HashSet<String>,
    last_result: HashMap<String, Instant>,
    done_tx: mpsc::UnboundedSender<Command>,
    done_rx: mpsc::UnboundedReceiver<Command>,
    welcomed: bool,
}

/// Runs host `spec` until `shared.cancel`, reconnecting (a bounded number
/// of times) when its session fails.
pub async fn run(
    spec: HostSpec,
    config: Arc<ClientConfig>,
    dialer: Dialer,
    source: IpAddr,
    shared: Arc<Shared>,
) {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((spec.index as u64 + 1) * 0x1000_0000_01B3);
    let mut host = SimHost {
        instances: spec.instances.clone(),
        spec,
        shared: shared.clone(),
        rng: Rng(seed | 1),
        seq: 0,
        mem_total: 16 * 1024 * 1024 * 1024,
        journal: VecDeque::new(),
        running: HashSet::new(),
        last_result: HashMap::new(),
        done_tx,
        done_rx,
        welcomed: false,
    };
    let mut failures = 0u32;
    let mut backoff = BACKOFF_START;
    loop {
        let result = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            r = host.session(&dialer, config.clone(), source) => r,
        };
        let Err(e) = result else { return };
        if host.welcomed {
            shared
                .counters
                .sessions_lost
                .fetch_add(1, Ordering::Relaxed);
        } else {
            shared
                .counters
                .connect_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        failures += 1;
        if failures >= shared.max_attempts {
            shared.counters.gave_up.fetch_add(1, Ordering::Relaxed);
            shared.changed.notify_waiters();
            eprintln!(
                "fleetsim: {} gives up after {failures} failed sessions: {e:#}",
                host.spec.id
            );
            return;
        }
        if failures == 1 || failures == shared.max_attempts / 2 {
            eprintln!("fleetsim: {}: {e:#}; reconnecting", host.spec.id);
        }
        let jitter = Duration::from_millis(host.rng.next() % 250);
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

/// Decrements the connected count when a session ends, however it ends.
struct Up<'a>(&'a Counters);

impl Drop for Up<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SimHost {
    fn hello(&self) -> AgentMessage {
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(Hello {
                host_id: self.spec.id.clone(),
                agent_version: concat!("fleetsim-", env!("CARGO_PKG_VERSION")).to_string(),
                labels: self.spec.labels.clone(),
                instances: self.instances.clone(),
                report_interval_ms: u32::try_from(self.shared.interval.as_millis())
                    .unwrap_or(u32::MAX),
            })),
        }
    }

    /// Host metrics as a real agent's sysinfo collector fills them, with
    /// the report's sequence number in `uptime_secs`.
    fn metrics(&mut self, seq: u64) -> HostMetrics {
        let cpu = 5.0 + 30.0 * self.rng.unit();
        let used = self.mem_total / 4 + (self.rng.next() % (self.mem_total / 4));
        HostMetrics {
            cpu_percent: cpu,
            load1: cpu / 12.5,
            load5: cpu / 14.0,
            load15: cpu / 15.0,
            mem_total_bytes: self.mem_total,
            mem_used_bytes: used,
            swap_total_bytes: 2 * 1024 * 1024 * 1024,
            swap_used_bytes: 0,
            disks: vec![
                DiskUsage {
                    mount: "/".to_string(),
                    total_bytes: 100 * 1024 * 1024 * 1024,
                    used_bytes: 41 * 1024 * 1024 * 1024 + self.rng.next() % (1 << 30),
                },
                DiskUsage {
                    mount: "/var".to_string(),
                    total_bytes: 400 * 1024 * 1024 * 1024,
                    used_bytes: 120 * 1024 * 1024 * 1024 + self.rng.next() % (1 << 30),
                },
            ],
            uptime_secs: self.shared.probe.uptime(self.spec.index, seq),
            cpu_count: 8,
        }
    }

    /// Queues a report; skipped (and counted) when the queue is full, as
    /// the real agent does.
    fn report(&mut self, tx: &mpsc::Sender<AgentMessage>) {
        self.seq += 1;
        let seq = self.seq;
        for i in &mut self.instances {
            if i.state == RuntimeState::Running as i32 {
                i.consecutive_successes = i.consecutive_successes.saturating_add(1);
                i.last_check_latency_ms = 1 + (seq % 4) as u32;
            }
        }
        let msg = AgentMessage {
            msg: Some(agent_message::Msg::Health(HealthReport {
                sent_at_ms: unix_ms(),
                host: Some(self.metrics(seq)),
                instances: self.instances.clone(),
                epoch: 0,
                commands_fenced: 0,
            })),
        };
        let c = &self.shared.counters;
        match tx.try_send(msg) {
            Ok(()) => {
                self.shared.probe.sent(self.spec.index, seq);
                c.reports_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                c.reports_skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn session(
        &mut self,
        dialer: &Dialer,
        config: Arc<ClientConfig>,
        source: IpAddr,
    ) -> Result<()> {
        let shared = self.shared.clone();
        let permit = shared
            .connect_gate
            .acquire()
            .await
            .map_err(|_| anyhow!("connect gate closed"))?;
        let t0 = Instant::now();
        let channel = dialer.channel(config, source).await?;
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<AgentMessage>(OUTBOUND_QUEUE);
        tx.try_send(self.hello())
            .map_err(|_| anyhow!("outbound queue unavailable"))?;
        let response =
            tokio::time::timeout(WELCOME_TIMEOUT, client.session(ReceiverStream::new(rx)))
                .await
                .context("no session response")?
                .context("open session")?;
        let mut inbound = response.into_inner();
        let first = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
            .await
            .context("no Welcome")?
            .context("session")?;
        match first.and_then(|m| m.msg) {
            Some(coordinator_message::Msg::Welcome(_)) => {}
            other => bail!("expected Welcome, got {other:?}"),
        }
        drop(permit);
        let c = &shared.counters;
        c.connected.fetch_add(1, Ordering::Relaxed);
        let _up = Up(c);
        if !self.welcomed {
            self.welcomed = true;
            shared
                .connect_times
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t0.elapsed().as_micros() as u64);
            c.ever_connected.fetch_add(1, Ordering::Relaxed);
            c.last_welcome_us
                .fetch_max(shared.start.elapsed().as_micros() as u64, Ordering::Relaxed);
            shared.changed.notify_waiters();
        }

        // Spread the reports over the interval: each host starts at its own
        // offset.
        let interval = shared.interval;
        let offset = interval.mul_f64(self.rng.unit());
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_report = tokio::time::Instant::now();
        // When a change-triggered report is due: coalesced as the real
        // agent does.
        let mut pending: Option<tokio::time::Instant> = None;
        let due = |last: tokio::time::Instant| (last + COALESCE).max(tokio::time::Instant::now());
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            tokio::select! {
                _ = shared.cancel.cancelled() => return Ok(()),
                msg = inbound.message() => {
                    let msg = msg
                        .context("session stream")?
                        .ok_or_else(|| anyhow!("the coordinator closed the session"))?;
                    if let Some(coordinator_message::Msg::Command(cmd)) = msg.msg
                        && self.on_command(cmd, &tx).await?
                    {
                        pending.get_or_insert(due(last_report));
                    }
                }
                Some(cmd) = self.done_rx.recv() => {
                    self.complete(cmd, &tx).await?;
                    pending.get_or_insert(due(last_report));
                }
                _ = tokio::time::sleep_until(pending.unwrap_or(far)), if pending.is_some() => {
                    pending = None;
                    self.report(&tx);
                    last_report = tokio::time::Instant::now();
                    ticker.reset();
                }
                _ = ticker.tick() => {
                    pending = None;
                    self.report(&tx);
                    last_report = tokio::time::Instant::now();
                }
            }
        }
    }

    /// The instance name a command means: `web@h1` or plain `web`, as the
    /// real agent accepts; another host's instance matches nothing.
    fn local_name<'a>(&self, instance: &'a str) -> &'a str {
        match instance.split_once('@') {
            Some((name, host)) if host == self.spec.id => name,
            Some(_) => "",
            None => instance,
        }
    }

    /// Acknowledges a command and runs it now or after the step delay.
    /// Returns whether the host's state changed (so a report is due).
    async fn on_command(&mut self, cmd: Command, tx: &mpsc::Sender<AgentMessage>) -> Result<bool> {
        let shared = self.shared.clone();
        shared.counters.commands.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut st = shared.steps();
            st.first_command.get_or_insert(now);
            st.commands.entry(cmd.id.clone()).or_insert((now, None));
            *st.by_kind.entry(kind_name(&cmd.kind)).or_default() += 1;
            let name = self.local_name(&cmd.instance).to_string();
            if matches!(cmd.kind, Some(Kind::Drain(_))) {
                self.last_result.remove(&name);
            } else if let Some(at) = self.last_result.remove(&name) {
                st.turnaround
                    .push(now.duration_since(at).as_micros() as u64);
            }
        }
        if let Some((_, update)) = self.journal.iter().find(|(id, _)| *id == cmd.id) {
            shared
                .counters
                .repeated_commands
                .fetch_add(1, Ordering::Relaxed);
            let update = update.clone();
            send(
                tx,
                AgentMessage {
                    msg: Some(agent_message::Msg::CommandUpdate(update)),
                },
            )
            .await?;
            return Ok(false);
        }
        if self.running.contains(&cmd.id) {
            shared
                .counters
                .repeated_commands
                .fetch_add(1, Ordering::Relaxed);
            send(tx, update(&cmd.id, Phase::Accepted, None)).await?;
            return Ok(false);
        }
        send(tx, update(&cmd.id, Phase::Accepted, None)).await?;
        let delay = shared.delay();
        if delay.is_zero() {
            self.complete(cmd, tx).await?;
            return Ok(true);
        }
        self.running.insert(cmd.id.clone());
        let done = self.done_tx.clone();
        let cancel = shared.cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(delay) => { let _ = done.send(cmd); }
            }
        });
        Ok(false)
    }

    /// Applies a finished step to the instance and sends its result.
    async fn complete(&mut self, cmd: Command, tx: &mpsc::Sender<AgentMessage>) -> Result<()> {
        self.running.remove(&cmd.id);
        let name = self.local_name(&cmd.instance).to_string();
        let Some(inst) = self.instances.iter_mut().find(|i| i.name == name) else {
            let mut msg = update(&cmd.id, Phase::Failed, None);
            if let Some(agent_message::Msg::CommandUpdate(u)) = &mut msg.msg {
                u.message = format!("no instance {} on {}", cmd.instance, self.spec.id);
            }
            return send(tx, msg).await;
        };
        match &cmd.kind {
            Some(Kind::Drain(_)) => inst.drained = true,
            Some(Kind::Stop(_)) => {
                inst.state = RuntimeState::Stopped as i32;
                inst.health = HealthState::Unknown as i32;
                inst.pid = 0;
                inst.consecutive_successes = 0;
            }
            Some(Kind::Deploy(d)) => inst.release = d.release.clone(),
            Some(Kind::Start(_)) => {
                inst.state = RuntimeState::Running as i32;
                inst.health = HealthState::Healthy as i32;
                inst.pid = 1000 + (self.rng.next() % 60_000) as u32;
                inst.consecutive_successes = 1;
            }
            Some(Kind::Stage(_) | Kind::Verify(_)) | None => {}
            Some(Kind::Undrain(_)) => inst.drained = false,
            Some(Kind::SetWeight(w)) => {
                inst.weight_held = !w.restore;
                inst.weight_set = if w.restore { 0 } else { w.weight };
            }
        }
        let release = inst.release.clone();
        let name = inst.name.clone();
        let msg = update(&cmd.id, Phase::Succeeded, release);
        if let Some(agent_message::Msg::CommandUpdate(u)) = &msg.msg {
            self.journal.push_back((cmd.id.clone(), u.clone()));
            if self.journal.len() > JOURNAL {
                self.journal.pop_front();
            }
        }
        send(tx, msg).await?;
        let now = Instant::now();
        self.last_result.insert(name, now);
        self.shared
            .counters
            .results_sent
            .fetch_add(1, Ordering::Relaxed);
        let mut st = self.shared.steps();
        st.last_result = Some(now);
        if let Some(c) = st.commands.get_mut(&cmd.id) {
            c.1 = Some(now);
        }
        Ok(())
    }
}

fn update(id: &str, phase: Phase, release: Option<Release>) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::CommandUpdate(CommandUpdate {
            command_id: id.to_string(),
            phase: phase as i32,
            message: String::new(),
            bytes_done: 0,
            bytes_total: 0,
            release,
        })),
    }
}

async fn send(tx: &mpsc::Sender<AgentMessage>, msg: AgentMessage) -> Result<()> {
    tx.send(msg)
        .await
        .map_err(|_| anyhow!("session stream closed"))
}
