//! Instance commands from the coordinator (stage, drain, stop, deploy,
//! start, verify, undrain, set weight): dispatch, one command per instance at a time,
//! timeouts, and the journal that makes every id run at most once.
//!
//! For each `Command` the agent answers with `CommandUpdate`s:
//! ACCEPTED, PROGRESS (stage and deploy bytes), then exactly one of SUCCEEDED,
//! FAILED (the message says why) or TIMED_OUT. An id already journaled
//! gets its recorded result again without running anything; an id still
//! running is attached to (ACCEPTED again, the result follows). A
//! different id for an instance that is busy waits for the running command
//! to end, then runs: the coordinator only sends one after it has timed the
//! running one out, which the agent does a moment later (it counts from
//! when the command arrived). If the running command is still there past
//! its own timeout and [`BUSY_GRACE`], the waiting one is FAILED
//! "busy with <id>" and not journaled, so it may be sent again later.

mod outbox;
mod steps;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::v1::command::Kind;
use drover_proto::v1::command_update::Phase as WirePhase;
use drover_proto::v1::{Command, CommandUpdate, Release};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::InstanceConfig;
use crate::deploy::fetch::{ArtifactSource, Cache};
use crate::exporter::{AgentMetrics, Refusal};
use crate::fencing::Fencing;
use crate::journal::{Journal, JournalError, Outcome, Phase, RecordKind};
use crate::state::StateFile;
use crate::supervisor::InstanceHandle;

pub use outbox::Outbox;

/// Used when a command carries no timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long past its timeout a running command may take to end (its hook
/// killed, its output collected) before a command waiting for the same
/// instance gives up.
pub const BUSY_GRACE: Duration = Duration::from_secs(5);
/// What an unfinished command that may not be redone is answered with
/// after an agent restart.
pub const RESTARTED: &str = "agent restarted during the step";

/// The journal's name for a command kind.
pub fn kind_name(kind: &Kind) -> RecordKind {
    match kind {
        Kind::Stage(_) => RecordKind::Stage,
        Kind::Drain(_) => RecordKind::Drain,
        Kind::Stop(_) => RecordKind::Stop,
        Kind::Deploy(_) => RecordKind::Deploy,
        Kind::Start(_) => RecordKind::Start,
        Kind::Verify(_) => RecordKind::Verify,
        Kind::Undrain(_) => RecordKind::Undrain,
        Kind::SetWeight(_) => RecordKind::SetWeight,
    }
}

/// The agent's span for one command, under the coordinator's step span
/// once its `traceparent` is set; disabled (free) when tracing is off.
fn command_span(
    host: &str,
    id: &str,
    instance: &Instance,
    kind: &Kind,
    kname: &RecordKind,
) -> tracing::Span {
    let release = match kind {
        Kind::Stage(s) => s.release.as_ref(),
        Kind::Deploy(d) => d.release.as_ref(),
        _ => None,
    };
    tracing::info_span!(
        target: drover_telemetry::TARGET,
        "command",
        otel.name = %kname,
        otel.kind = "server",
        "drover.service" = %instance.cfg.service,
        "drover.host" = %host,
        "drover.instance" = %instance.cfg.id(host),
        "drover.step" = %kname,
        "drover.release" = release.map(|r| r.version.as_str()),
        "drover.command" = %id,
        "drover.outcome" = tracing::field::Empty,
    )
}

/// `drover.outcome` of a command span.
fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Succeeded => "succeeded",
        Phase::Failed => "failed",
        Phase::TimedOut => "timed_out",
    }
}

/// The journal stage a deploy enters before its after_deploy hook: from
/// there on it is not redone after an agent restart.
pub const STAGE_AFTER_DEPLOY: &str = "after_deploy";

/// One configured instance, as command execution sees it.
#[derive(Debug, Clone)]
pub struct Instance {
    pub cfg: InstanceConfig,
    pub handle: InstanceHandle,
    pub state: StateFile,
}

/// Executes commands; cheap to clone.
#[derive(Clone)]
pub struct Executor {
    shared: Arc<Shared>,
}

struct Shared {
    host_id: String,
    instances: HashMap<String, Instance>,
    journal: Journal,
    cache: Cache,
    source: Arc<dyn ArtifactSource>,
    outbox: Outbox,
    /// The highest coordinator epoch seen: commands from lower ones are
    /// refused.
    fencing: Fencing,
    /// instance name -> the command running on it.
    running: Mutex<HashMap<String, Busy>>,
    /// Woken whenever a command ends, for those waiting on its instance.
    freed: tokio::sync::Notify,
    shutdown: CancellationToken,
    /// Owns every command task; the agent joins it on shutdown.
    tasks: tokio_util::task::TaskTracker,
    /// The agent's own metrics (served when `[metrics] listen` is set).
    metrics: Arc<AgentMetrics>,
}

struct Busy {
    id: String,
    /// When it will have ended at the latest: its timeout plus [`BUSY_GRACE`].
    until: tokio::time::Instant,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("host_id", &self.shared.host_id)
            .finish_non_exhaustive()
    }
}

fn update(id: &str, phase: WirePhase, message: impl Into<String>) -> CommandUpdate {
    CommandUpdate {
        command_id: id.to_string(),
        phase: phase as i32,
        message: message.into(),
        bytes_done: 0,
        bytes_total: 0,
        release: None,
    }
}

fn outcome_update(id: &str, o: &Outcome) -> CommandUpdate {
    let phase = match o.phase {
        Phase::Succeeded => WirePhase::Succeeded,
        Phase::Failed => WirePhase::Failed,
        Phase::TimedOut => WirePhase::TimedOut,
    };
    CommandUpdate {
        release: Some(Release {
            version: o.release_version.clone(),
            digest: o.release_digest.clone(),
        }),
        ..update(id, phase, o.message.clone())
    }
}

/// Frees the instance when the command's task ends, however it ends.
struct RunningGuard {
    shared: Arc<Shared>,
    instance: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        let mut running = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        running.remove(&self.instance);
        drop(running);
        self.shared.freed.notify_waiters();
    }
}

impl Executor {
    /// `instances` pairs each configured instance with its supervisor's
    /// handle. Settles what an earlier run of the agent left unfinished in
    /// the journal (see [`Executor::recover`]).
    pub fn new(
        host_id: &str,
        data_dir: &Path,
        instances: Vec<(InstanceConfig, InstanceHandle)>,
        journal: Journal,
        fencing: Fencing,
        source: Arc<dyn ArtifactSource>,
        shutdown: CancellationToken,
    ) -> Executor {
        let instances = instances
            .into_iter()
            .map(|(cfg, handle)| {
                let state = StateFile::new(&crate::config::instance_dir(data_dir, &cfg.name));
                (cfg.name.clone(), Instance { cfg, handle, state })
            })
            .collect();
        let exec = Executor {
            shared: Arc::new(Shared {
                host_id: host_id.to_string(),
                instances,
                journal,
                cache: Cache::new(data_dir),
                source,
                outbox: Outbox::default(),
                metrics: Arc::new(AgentMetrics::new(fencing.clone())),
                fencing,
                running: Mutex::new(HashMap::new()),
                freed: tokio::sync::Notify::new(),
                shutdown,
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        };
        exec.recover();
        exec
    }

    /// The command tasks, for shutdown to join.
    pub fn tasks(&self) -> &tokio_util::task::TaskTracker {
        &self.shared.tasks
    }

    pub fn outbox(&self) -> &Outbox {
        &self.shared.outbox
    }

    pub fn journal(&self) -> &Journal {
        &self.shared.journal
    }

    pub fn fencing(&self) -> &Fencing {
        &self.shared.fencing
    }

    /// The agent's own metrics, which commands and the session feed.
    pub fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.shared.metrics
    }

    /// Commands started by an earlier run of the agent that never
    /// finished: steps that are safe to redo (stage, drain, undrain, set
    /// weight, stop, start, verify; a deploy before its after_deploy hook, which finds the
    /// release directory complete or resumes the download) are forgotten,
    /// so they run again when the coordinator asks again; anything else is
    /// recorded as FAILED "agent restarted during the step".
    fn recover(&self) {
        for r in self.shared.journal.unfinished() {
            let redo = match r.kind {
                RecordKind::Stage
                | RecordKind::Drain
                | RecordKind::Undrain
                | RecordKind::SetWeight
                | RecordKind::Stop
                | RecordKind::Start
                | RecordKind::Verify => true,
                RecordKind::Deploy => !r.stages.iter().any(|s| s == STAGE_AFTER_DEPLOY),
                RecordKind::Other(_) => false,
            };
            if redo {
                tracing::info!(command = %r.id, kind = %r.kind, "unfinished before the agent restarted; it runs again if the coordinator asks");
                if let Err(e) = self.shared.journal.forget_unfinished(&r.id) {
                    tracing::error!(command = %r.id, "journal: {e}");
                }
                continue;
            }
            let message = match r.stages.last() {
                Some(stage) => format!("{RESTARTED} (in {stage}; it may have run partly)"),
                None => RESTARTED.to_string(),
            };
            tracing::warn!(command = %r.id, kind = %r.kind, "{message}");
            let release = self
                .shared
                .instances
                .get(&r.instance)
                .map(|i| i.handle.meta().release)
                .unwrap_or_default();
            let outcome = Outcome {
                phase: Phase::Failed,
                message,
                release_version: release.version,
                release_digest: release.digest,
            };
            if let Err(e) = self.shared.journal.finish(&r.id, outcome) {
                tracing::error!(command = %r.id, "journal: {e}");
            }
        }
    }

    /// Takes one command from the coordinator. Never blocks: the work runs
    /// on its own task and every answer goes through the outbox.
    pub fn submit(&self, cmd: Command) {
        let shared = &self.shared;
        let id = cmd.id.clone();
        let refuse = |why: String| {
            shared.metrics.command_refused(Refusal::Invalid);
            tracing::warn!(command = %id, "refused: {why}");
            shared.outbox.push(update(&id, WirePhase::Failed, why));
        };
        if id.is_empty() {
            return refuse("command without an id".into());
        }
        // Before the journal: a command from a deposed coordinator is
        // neither run nor recorded, so the same id from the leader runs.
        if let Some(why) = shared.fencing.admit(cmd.epoch).refusal() {
            shared.metrics.command_refused(Refusal::Fenced);
            tracing::warn!(
                command = %id,
                instance = %cmd.instance,
                fenced_total = shared.fencing.commands_fenced(),
                "refused: {why}"
            );
            shared.outbox.push(update(&id, WirePhase::Failed, why));
            return;
        }
        let Some(kind) = cmd.kind.clone() else {
            return refuse("command without a step (unknown to this agent version?)".into());
        };
        let name = match cmd.instance.split_once('@') {
            Some((name, host)) if host == shared.host_id => name,
            Some((_, host)) => {
                return refuse(format!(
                    "instance {} is on host {host}, not on {}",
                    cmd.instance, shared.host_id
                ));
            }
            None => cmd.instance.as_str(),
        };
        let Some(instance) = shared.instances.get(name).cloned() else {
            return refuse(format!(
                "no instance named `{}` on host {}",
                cmd.instance, shared.host_id
            ));
        };
        let timeout = match cmd.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let guard = {
            let mut running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.values().any(|r| r.id == id) {
                drop(running);
                tracing::info!(command = %id, "already running; attaching");
                shared
                    .outbox
                    .push(update(&id, WirePhase::Accepted, "already running"));
                return;
            }
            if let Some(record) = shared.journal.get(&id) {
                drop(running);
                match record.outcome {
                    Some(o) => {
                        tracing::info!(command = %id, "already done; resending the recorded outcome");
                        shared.outbox.push(outcome_update(&id, &o));
                    }
                    // Started by this process and not running: cannot
                    // happen, short of a journal error mid-step.
                    None => shared.outbox.push(update(
                        &id,
                        WirePhase::Failed,
                        "started earlier without a recorded outcome",
                    )),
                }
                return;
            }
            if let Some(other) = running.get(name) {
                let (other, until) = (other.id.clone(), other.until);
                drop(running);
                if tokio::time::Instant::now() >= until {
                    shared.metrics.command_refused(Refusal::Busy);
                    tracing::warn!(command = %id, "refused: busy with {other}");
                    shared.outbox.push(update(
                        &id,
                        WirePhase::Failed,
                        format!("busy with {other}"),
                    ));
                    return;
                }
                tracing::info!(command = %id, "{name} is busy with {other}; waiting for it to end");
                let exec = self.clone();
                let name = name.to_string();
                shared
                    .tasks
                    .spawn(async move { exec.after(cmd, &name, until).await });
                return;
            }
            running.insert(
                name.to_string(),
                Busy {
                    id: id.clone(),
                    until: tokio::time::Instant::now() + timeout + BUSY_GRACE,
                },
            );
            RunningGuard {
                shared: shared.clone(),
                instance: name.to_string(),
            }
        };
        let exec = self.clone();
        let traceparent = cmd.traceparent;
        self.shared.tasks.spawn(async move {
            let _guard = guard;
            exec.run(id, instance, kind, timeout, &traceparent).await;
        });
    }

    /// Submits `cmd` once instance `name` is free, or refuses it if the
    /// command running there has not ended by its `until` (the one first
    /// waited for ends by `until`; another may have taken the instance
    /// meanwhile, and then its own `until` counts).
    async fn after(&self, cmd: Command, name: &str, until: tokio::time::Instant) {
        let shared = &self.shared;
        let mut until = until;
        loop {
            let freed = shared.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let busy = {
                let running = shared.running.lock().unwrap_or_else(|e| e.into_inner());
                running.get(name).map(|b| (b.id.clone(), b.until))
            };
            let Some((other, other_until)) = busy else {
                // Free: every check again, as for a new arrival.
                return self.submit(cmd);
            };
            until = until.max(other_until);
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(until) => {
                    shared.metrics.command_refused(Refusal::Busy);
                    let why = format!("busy with {other}");
                    tracing::warn!(command = %cmd.id, "refused: {why}");
                    shared.outbox.push(update(&cmd.id, WirePhase::Failed, why));
                    return;
                }
            }
        }
    }

    async fn run(
        &self,
        id: String,
        instance: Instance,
        kind: Kind,
        timeout: Duration,
        traceparent: &str,
    ) {
        let shared = &self.shared;
        let kname = kind_name(&kind);
        // Only a traced command (one sent from a traced step) gets a span.
        let span = if traceparent.is_empty() {
            tracing::Span::none()
        } else {
            command_span(&shared.host_id, &id, &instance, &kind, &kname)
        };
        drover_telemetry::set_parent(&span, traceparent);
        let journal = shared.journal.clone();
        let (jid, jinst, jkind) = (id.clone(), instance.cfg.name.clone(), kname.clone());
        // The epoch this command raised is on disk before it acts, so a
        // restarted agent still refuses the coordinator it deposed.
        let fencing = shared.fencing.clone();
        let started = tokio::task::spawn_blocking(move || {
            fencing.save()?;
            Ok::<_, crate::fsutil::FsError>(journal.start(&jid, &jinst, jkind))
        })
        .await;
        let started = match started {
            Ok(Err(e)) => {
                tracing::error!(command = %id, "save the coordinator epoch: {e}");
                shared.outbox.push(update(
                    &id,
                    WirePhase::Failed,
                    format!("cannot save the coordinator epoch, so the command was not run: {e}"),
                ));
                return;
            }
            Ok(Ok(r)) => Ok(r),
            Err(e) => Err(e),
        };
        match started {
            Ok(Ok(())) => {}
            Ok(Err(JournalError::Duplicate(_))) => {
                // Raced with another submit of the same id that already
                // finished; answer from the journal.
                if let Some(o) = shared.journal.get(&id).and_then(|r| r.outcome) {
                    shared.outbox.push(outcome_update(&id, &o));
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::error!(command = %id, "journal: {e}");
                shared.outbox.push(update(
                    &id,
                    WirePhase::Failed,
                    format!("cannot journal the command, so it was not run: {e}"),
                ));
                return;
            }
            Err(e) => {
                shared
                    .outbox
                    .push(update(&id, WirePhase::Failed, format!("journal: {e}")));
                return;
            }
        }
        tracing::info!(command = %id, instance = %instance.cfg.name, step = %kname, timeout = %humantime::format_duration(timeout), "running command");
        shared.outbox.push(update(
            &id,
            WirePhase::Accepted,
            format!("{kname} accepted"),
        ));
        let ctx = steps::StepContext {
            id: &id,
            instance: &instance,
            host_id: &shared.host_id,
            journal: &shared.journal,
            cache: &shared.cache,
            source: shared.source.as_ref(),
            outbox: &shared.outbox,
            all_instances: &shared.instances,
            deadline: tokio::time::Instant::now() + timeout,
        };
        let began = tokio::time::Instant::now();
        let result = tokio::select! {
            _ = shared.shutdown.cancelled() => {
                // No outcome is recorded: the next agent settles it.
                tracing::warn!(command = %id, "agent shutting down; command interrupted");
                return;
            }
            r = tokio::time::timeout(timeout, steps::run(&ctx, &kind)).instrument(span.clone()) => r,
        };
        let (phase, message) = match result {
            Ok(Ok(msg)) => (Phase::Succeeded, msg),
            Ok(Err(msg)) => (Phase::Failed, msg),
            Err(_) => (
                Phase::TimedOut,
                format!(
                    "{kname} timed out after {}; stopped it (hooks killed)",
                    humantime::format_duration(timeout)
                ),
            ),
        };
        (shared.metrics).command_ended(&kname, phase, began.elapsed());
        let release = instance.handle.meta().release;
        let outcome = Outcome {
            phase,
            message,
            release_version: release.version,
            release_digest: release.digest,
        };
        match phase {
            Phase::Succeeded => tracing::info!(command = %id, "succeeded: {}", outcome.message),
            _ => tracing::warn!(command = %id, ?phase, "{}", outcome.message),
        }
        span.record(drover_telemetry::keys::OUTCOME, phase_name(phase));
        if phase != Phase::Succeeded {
            drover_telemetry::set_error(&span, &outcome.message);
        }
        let journal = shared.journal.clone();
        let (jid, o) = (id.clone(), outcome.clone());
        match tokio::task::spawn_blocking(move || journal.finish(&jid, o)).await {
            Ok(Ok(())) => shared.outbox.push(outcome_update(&id, &outcome)),
            // Not recorded, so not reported as done either: a resend would
            // find no outcome and fail, and so does this answer.
            Ok(Err(e)) => {
                tracing::error!(command = %id, "journal: {e}");
                shared.outbox.push(update(
                    &id,
                    WirePhase::Failed,
                    format!("the step ended ({phase:?}: {}) but its outcome could not be journaled: {e}", outcome.message),
                ));
            }
            Err(e) => tracing::error!(command = %id, "journal: {e}"),
        }
    }

    /// The data directory's cache, for tests.
    pub fn cache_dir(&self) -> PathBuf {
        self.shared.cache.dir().to_path_buf()
    }
}
