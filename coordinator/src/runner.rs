//! Runs rollouts: one task per running rollout drives its sans-IO
//! [`Engine`] with the wall clock, the registry's view of the fleet and the
//! agents' command results, and performs what the engine asks for.
//!
//! Order of effects, the promise that makes crash recovery work: the
//! engine's state and events are written to the store before any command
//! they lead to is sent. After a restart every unfinished rollout is
//! restored from the store; its in-flight commands go out again with the
//! same ids, and the agents answer them from their journals.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use drover_proto::v1::{
    self as pb, Command, CommandUpdate, CoordinatorMessage, HealthState, Host, HostStatus,
    RuntimeState, command, command_update::Phase as WirePhase, coordinator_message,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::registry::{HostChange, Registry};
use crate::rollout::{
    CommandKind, CommandOutcome, Engine, Input, InstanceInfo, Millis, OperatorAction, Output,
    PlanError, Release, RolloutEvent, RolloutSpec, Status, StatusCache, persist,
};
use crate::selector::Selector;
use crate::store::{Store, StoreError};

const META: &str = "rollout-meta/";
const EVENTS: &str = "rollout-events/";
/// The engine wants a tick at least this often.
const TICK: Duration = Duration::from_secs(1);
/// What readers see (GetRollout, WatchRollout) is rebuilt at most this
/// often while the rollout runs; at once for operator actions and the end.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);
/// Inputs handled together before one write and the sends that follow it.
const MAX_BATCH: usize = 512;
/// Registry changes looked at in one pass at most. Most say nothing new
/// (and become no input), so inputs alone would not bound a pass while
/// thousands of hosts keep reporting.
const MAX_CHANGES: usize = 4096;

fn now() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(
        "rollout {id} of service {service} is still {phase}; wait for it, or abort it with `drover rollout abort {id}`"
    )]
    Busy {
        id: String,
        service: String,
        phase: String,
    },
    #[error("no rollout named `{0}`; `drover rollout list` shows them")]
    NotFound(String),
    #[error("rollout {id} already finished ({outcome}); nothing to {action}")]
    Finished {
        id: String,
        outcome: String,
        action: String,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt rollout record `{key}`: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the coordinator is shutting down")]
    ShuttingDown,
}

impl From<RunnerError> for tonic::Status {
    fn from(e: RunnerError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            RunnerError::Plan(PlanError::Spec(_)) | RunnerError::Plan(PlanError::BadId(_)) => {
                tonic::Status::invalid_argument(msg)
            }
            RunnerError::Plan(_) | RunnerError::Finished { .. } => {
                tonic::Status::failed_precondition(msg)
            }
            RunnerError::Busy { .. } => tonic::Status::already_exists(msg),
            RunnerError::NotFound(_) => tonic::Status::not_found(msg),
            RunnerError::Store(ref s) if s.is_retryable() => tonic::Status::unavailable(msg),
            RunnerError::ShuttingDown => tonic::Status::unavailable(msg),
            RunnerError::Store(_) | RunnerError::Corrupt { .. } => tonic::Status::internal(msg),
        }
    }
}

/// Written once when a rollout starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    started_by: String,
    /// The spec as TOML, digest resolved.
    spec_toml: String,
}

/// What readers see of one rollout; replaced on every change.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    /// The agents' latest progress message per instance in flight.
    pub progress: BTreeMap<String, String>,
    /// How many events exist; read them with [`Rollouts::events`].
    pub events: usize,
    pub started_by: String,
    pub spec_toml: String,
    pub selector: String,
}

type Reply = oneshot::Sender<Result<Arc<Snapshot>, RunnerError>>;

enum Msg {
    Input(Input),
    Action(OperatorAction, Reply),
    Progress { instance: String, text: String },
}

struct Entry {
    service: String,
    hosts: BTreeSet<String>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    events: Arc<Mutex<Vec<RolloutEvent>>>,
    /// Present while the rollout runs.
    tx: Option<mpsc::UnboundedSender<Msg>>,
}

#[derive(Default)]
struct Inner {
    rollouts: BTreeMap<String, Entry>,
}

/// Every rollout this coordinator knows, running or finished.
pub struct Rollouts {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    inner: Mutex<Inner>,
    /// Held for the whole of a start, so two starts for one service cannot
    /// both pass the busy check.
    starting: tokio::sync::Mutex<()>,
    /// How long a host may stay away after a coordinator restart before its
    /// rollouts treat it as lost.
    lost_timeout: Duration,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Rollouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollouts").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> RunnerError {
    RunnerError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    }
}

fn event_key(id: &str, seq: usize) -> String {
    format!("{EVENTS}{id}/{seq:010}")
}

/// Rollout ids are `<service>-<n>`, counting per service from 1.
fn next_id(existing: &BTreeMap<String, Entry>, service: &str) -> String {
    let prefix = format!("{service}-");
    let n = existing
        .keys()
        .filter_map(|k| k.strip_prefix(&prefix)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("{service}-{}", n + 1)
}

/// The instances of `spec.service` on hosts the selector matches, as the
/// registry sees them now. Revoked hosts are left out.
pub fn target_instances(registry: &Registry, spec: &RolloutSpec) -> Vec<InstanceInfo> {
    let Ok(selector) = spec.selector.parse::<Selector>() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for host in registry.list(&selector) {
        let status = HostStatus::try_from(host.status).unwrap_or(HostStatus::Unspecified);
        if status == HostStatus::Revoked {
            continue;
        }
        let reachable = status == HostStatus::Connected;
        for inst in &host.instances {
            if inst.service != spec.service {
                continue;
            }
            let (healthy, in_service, release) = observe(inst);
            out.push(InstanceInfo {
                id: inst.id.clone(),
                host: host.host_id.clone(),
                labels: host.labels.clone().into_iter().collect(),
                release,
                healthy,
                in_service,
                reachable,
            });
        }
    }
    out
}

/// What a report says of an instance, as the engine is told it.
type Observed = (bool, bool, Option<Release>);

/// (healthy, in service, release) of a reported instance. Without a health
/// check, running counts as healthy.
fn observe(inst: &pb::InstanceStatus) -> Observed {
    let running = inst.state == RuntimeState::Running as i32;
    let healthy = running
        && match HealthState::try_from(inst.health).unwrap_or(HealthState::Unspecified) {
            HealthState::Healthy | HealthState::None => true,
            HealthState::Unspecified | HealthState::Unknown | HealthState::Unhealthy => false,
        };
    let release = inst
        .release
        .as_ref()
        .filter(|r| !r.version.is_empty())
        .map(|r| Release::new(r.version.clone(), r.digest.clone()));
    (healthy, running && !inst.drained, release)
}

impl Rollouts {
    /// Loads every stored rollout and resumes the unfinished ones.
    pub async fn load(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        lost_timeout: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Rollouts>, RunnerError> {
        let this = Arc::new(Rollouts {
            store: store.clone(),
            registry,
            inner: Mutex::new(Inner::default()),
            starting: tokio::sync::Mutex::new(()),
            lost_timeout,
            shutdown,
        });
        let heads = store.scan_prefix(persist::STATE).await?;
        for (key, head) in heads {
            let id = key.strip_prefix(persist::STATE).unwrap_or(&key);
            let records = store.scan_prefix(&persist::instances_prefix(id)).await?;
            let state = persist::decode(&head, &records).map_err(|e| corrupt(&key, e))?;
            let id = state.id().to_string();
            let meta_key = format!("{META}{id}");
            let meta: Meta = match store.get(&meta_key).await? {
                Some(b) => serde_json::from_slice(&b).map_err(|e| corrupt(&meta_key, e))?,
                None => Meta {
                    started_by: String::new(),
                    spec_toml: state.spec().to_toml(),
                },
            };
            let mut events = Vec::new();
            for (k, b) in store.scan_prefix(&format!("{EVENTS}{id}/")).await? {
                events.push(serde_json::from_slice(&b).map_err(|e| corrupt(&k, e))?);
            }
            let (engine, outputs) = Engine::restore(state, now());
            if engine.is_finished() {
                this.insert_finished(engine, meta, events);
            } else {
                tracing::info!(rollout = %id, "resuming rollout after a coordinator restart");
                this.spawn(engine, meta, events, outputs, true).await;
            }
        }
        Ok(this)
    }

    fn insert_finished(&self, engine: Engine, meta: Meta, events: Vec<RolloutEvent>) {
        let snapshot = Snapshot {
            status: engine.status(),
            progress: BTreeMap::new(),
            events: events.len(),
            started_by: meta.started_by,
            spec_toml: meta.spec_toml,
            selector: engine.state().spec().selector.clone(),
        };
        let (_tx, rx) = watch::channel(Arc::new(snapshot));
        lock(&self.inner).rollouts.insert(
            engine.id().to_string(),
            Entry {
                service: engine.state().spec().service.clone(),
                hosts: BTreeSet::new(),
                snapshot: rx,
                events: Arc::new(Mutex::new(events)),
                tx: None,
            },
        );
    }

    /// Starts a rollout over the instances the registry holds now. The
    /// first state and events are stored before anything is sent.
    pub async fn start(
        self: &Arc<Self>,
        spec: RolloutSpec,
        started_by: String,
    ) -> Result<Arc<Snapshot>, RunnerError> {
        if self.shutdown.is_cancelled() {
            return Err(RunnerError::ShuttingDown);
        }
        let _starting = self.starting.lock().await;
        let spec_toml = spec.to_toml();
        let (engine, outputs, id) = {
            let inner = lock(&self.inner);
            if let Some((id, e)) = inner
                .rollouts
                .iter()
                .find(|(_, e)| e.service == spec.service && e.tx.is_some())
            {
                let phase = phase_name(e.snapshot.borrow().status.phase);
                return Err(RunnerError::Busy {
                    id: id.clone(),
                    service: spec.service.clone(),
                    phase,
                });
            }
            let id = next_id(&inner.rollouts, &spec.service);
            let instances = target_instances(&self.registry, &spec);
            let (engine, outputs) = Engine::start(&id, spec, instances, now())?;
            (engine, outputs, id)
        };
        let meta = Meta {
            started_by,
            spec_toml,
        };
        let meta_bytes = serde_json::to_vec(&meta).map_err(|e| corrupt(&id, e))?;
        // The meta goes first so a crash before the state write leaves no
        // half rollout behind (a meta without a state is ignored).
        self.store.put(&format!("{META}{id}"), meta_bytes).await?;
        let snapshot = self.spawn(engine, meta, Vec::new(), outputs, false).await;
        tracing::info!(rollout = %id, "rollout started");
        Ok(snapshot)
    }

    /// Registers a running rollout, performs its first outputs (so its
    /// opening state and events are stored when this returns) and starts
    /// its task.
    async fn spawn(
        self: &Arc<Self>,
        engine: Engine,
        meta: Meta,
        events: Vec<RolloutEvent>,
        outputs: Vec<Output>,
        restored: bool,
    ) -> Arc<Snapshot> {
        let hosts: BTreeSet<String> = engine
            .state()
            .hosts()
            .into_keys()
            .map(str::to_string)
            .collect();
        let snapshot = Arc::new(Snapshot {
            status: engine.status(),
            progress: BTreeMap::new(),
            events: events.len(),
            started_by: meta.started_by.clone(),
            spec_toml: meta.spec_toml.clone(),
            selector: engine.state().spec().selector.clone(),
        });
        let (snap_tx, snap_rx) = watch::channel(snapshot);
        let (tx, rx) = mpsc::unbounded_channel();
        let events = Arc::new(Mutex::new(events));
        // Subscribe before the task reads the registry, so no change is missed.
        let changes = self.registry.subscribe();
        lock(&self.inner).rollouts.insert(
            engine.id().to_string(),
            Entry {
                service: engine.state().spec().service.clone(),
                hosts: hosts.clone(),
                snapshot: snap_rx,
                events: events.clone(),
                tx: Some(tx),
            },
        );
        let reachable = (engine.state().hosts().into_iter())
            .map(|(h, r)| (h.to_string(), r))
            .collect();
        let mut task = Task {
            rollouts: self.clone(),
            engine,
            meta,
            events,
            snap_tx,
            progress: BTreeMap::new(),
            unpublished: false,
            published_at: std::time::Instant::now(),
            reachable,
            told: HashMap::new(),
            status_cache: StatusCache::default(),
            hosts,
            lost_check_at: restored.then(|| now().plus(self.lost_timeout)),
        };
        task.perform(outputs).await;
        task.publish();
        let snapshot = task.snap_tx.borrow().clone();
        tokio::spawn(task.run(rx, changes));
        snapshot
    }

    pub fn get(&self, id: &str) -> Result<Arc<Snapshot>, RunnerError> {
        lock(&self.inner)
            .rollouts
            .get(id)
            .map(|e| e.snapshot.borrow().clone())
            .ok_or_else(|| RunnerError::NotFound(id.to_string()))
    }

    /// Events `from..` of a rollout.
    pub fn events(&self, id: &str, from: usize) -> Result<Vec<RolloutEvent>, RunnerError> {
        let inner = lock(&self.inner);
        let e = inner
            .rollouts
            .get(id)
            .ok_or_else(|| RunnerError::NotFound(id.to_string()))?;
        let events = lock(&e.events);
        Ok(events.get(from..).map(<[_]>::to_vec).unwrap_or_default())
    }

    /// Newest first.
    pub fn list(&self, service: &str, limit: usize) -> Vec<Arc<Snapshot>> {
        let inner = lock(&self.inner);
        let mut all: Vec<Arc<Snapshot>> = inner
            .rollouts
            .values()
            .filter(|e| service.is_empty() || e.service == service)
            .map(|e| e.snapshot.borrow().clone())
            .collect();
        drop(inner);
        all.sort_by(|a, b| {
            (b.status.started_at, &b.status.id).cmp(&(a.status.started_at, &a.status.id))
        });
        all.truncate(limit);
        all
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self, id: &str) -> Result<watch::Receiver<Arc<Snapshot>>, RunnerError> {
        lock(&self.inner)
            .rollouts
            .get(id)
            .map(|e| e.snapshot.clone())
            .ok_or_else(|| RunnerError::NotFound(id.to_string()))
    }

    pub async fn act(
        &self,
        id: &str,
        action: OperatorAction,
    ) -> Result<Arc<Snapshot>, RunnerError> {
        let tx = {
            let inner = lock(&self.inner);
            let e = inner
                .rollouts
                .get(id)
                .ok_or_else(|| RunnerError::NotFound(id.to_string()))?;
            match &e.tx {
                Some(tx) => tx.clone(),
                None => {
                    let s = e.snapshot.borrow();
                    return Err(RunnerError::Finished {
                        id: id.to_string(),
                        outcome: s
                            .status
                            .outcome
                            .as_ref()
                            .map_or_else(|| phase_name(s.status.phase), ToString::to_string),
                        action: action_name(action).to_string(),
                    });
                }
            }
        };
        let (reply, rx) = oneshot::channel();
        tx.send(Msg::Action(action, reply))
            .map_err(|_| RunnerError::ShuttingDown)?;
        rx.await.map_err(|_| RunnerError::ShuttingDown)?
    }

    fn send_to(&self, id: &str, msg: Msg) {
        if let Some(tx) = lock(&self.inner)
            .rollouts
            .get(id)
            .and_then(|e| e.tx.as_ref())
        {
            let _ = tx.send(msg);
        }
    }

    /// An agent's update on a command. Only the host the instance lives on
    /// may answer for it.
    pub fn command_update(&self, host_id: &str, update: CommandUpdate) {
        let mut parts = update.command_id.splitn(3, '/').map(str::to_string);
        let (Some(rollout), Some(instance)) = (parts.next(), parts.next()) else {
            tracing::debug!(host = %host_id, id = %update.command_id, "ignoring an update for a command id drover did not issue");
            return;
        };
        let (rollout, instance) = (rollout.as_str(), instance.as_str());
        if instance.rsplit_once('@').map(|(_, h)| h) != Some(host_id) {
            tracing::warn!(host = %host_id, id = %update.command_id, "ignoring an update for an instance on another host");
            return;
        }
        let phase = WirePhase::try_from(update.phase).unwrap_or(WirePhase::Unspecified);
        let outcome = match phase {
            WirePhase::Succeeded => CommandOutcome::Ok,
            WirePhase::Failed => CommandOutcome::Failed(update.message.clone()),
            WirePhase::TimedOut => CommandOutcome::TimedOut,
            WirePhase::Accepted | WirePhase::Progress => {
                let text = progress_text(&update);
                self.send_to(
                    rollout,
                    Msg::Progress {
                        instance: instance.to_string(),
                        text,
                    },
                );
                return;
            }
            WirePhase::Unspecified => return,
        };
        self.send_to(
            rollout,
            Msg::Input(Input::CommandResult {
                id: update.command_id.into(),
                outcome,
            }),
        );
    }

    /// A host's agent opened a new session: commands in flight on it may
    /// have been lost with the old one, so they are asked again.
    pub fn host_connected(&self, host_id: &str) {
        let inner = lock(&self.inner);
        for e in inner.rollouts.values() {
            if let Some(tx) = &e.tx
                && e.hosts.contains(host_id)
            {
                let _ = tx.send(Msg::Input(Input::HostBack {
                    host: host_id.to_string(),
                }));
            }
        }
    }

    fn finished(&self, id: &str) {
        if let Some(e) = lock(&self.inner).rollouts.get_mut(id) {
            e.tx = None;
        }
    }
}

fn progress_text(u: &CommandUpdate) -> String {
    if let Some(pct) = u.bytes_done.saturating_mul(100).checked_div(u.bytes_total) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let head = if u.message.is_empty() {
            "fetching"
        } else {
            u.message.as_str()
        };
        format!(
            "{head} {:.1}/{:.1} MiB ({pct}%)",
            mib(u.bytes_done),
            mib(u.bytes_total)
        )
    } else {
        u.message.clone()
    }
}

pub fn phase_name(p: crate::rollout::Phase) -> String {
    snake(&p)
}

fn snake<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

pub fn action_name(a: OperatorAction) -> &'static str {
    match a {
        OperatorAction::Pause => "pause",
        OperatorAction::Resume => "resume",
        OperatorAction::Abort => "abort",
        OperatorAction::Rollback => "roll back",
    }
}

/// One running rollout.
struct Task {
    rollouts: Arc<Rollouts>,
    engine: Engine,
    meta: Meta,
    events: Arc<Mutex<Vec<RolloutEvent>>>,
    snap_tx: watch::Sender<Arc<Snapshot>>,
    progress: BTreeMap<String, String>,
    /// Something changed since the last published snapshot. Building one
    /// walks every instance, and a busy rollout makes thousands of passes a
    /// second (every step's ACCEPTED alone is a progress message), so it is
    /// published every [`PUBLISH_EVERY`] at most.
    unpublished: bool,
    published_at: std::time::Instant,
    /// Per host, whether the engine was last told it is reachable.
    reachable: HashMap<String, bool>,
    /// Per host and instance, the health the engine was last told. A report
    /// that says the same again is not fed to it: every input costs the
    /// engine a pass over all instances, and every host reports every few
    /// seconds. Forgotten for an instance when one of its commands ends (the
    /// engine then assumes the step's effect until a report says
    /// otherwise) and for a host when it is lost or back (the engine waits
    /// for fresh reports), so those reports always get through.
    told: HashMap<String, HashMap<String, Observed>>,
    /// The instances of the last published status, rebuilt where changed.
    status_cache: StatusCache,
    hosts: BTreeSet<String>,
    /// After a restore: when hosts still away count as lost.
    lost_check_at: Option<Millis>,
}

impl Task {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut changes: broadcast::Receiver<HostChange>,
    ) {
        let id = self.engine.id().to_string();
        if self.lost_check_at.is_none() {
            // Fresh start: health may have changed between the registry
            // read and the subscription.
            self.resync().await;
        }
        let shutdown = self.rollouts.shutdown.clone();
        while !self.engine.is_finished() {
            let t = now();
            let wake = self
                .engine
                .next_deadline()
                .into_iter()
                .chain(self.lost_check_at)
                .min()
                .map_or(TICK, |d| Duration::from_millis(d.0.saturating_sub(t.0)))
                .min(TICK);
            let wake = if self.unpublished {
                wake.min(PUBLISH_EVERY.saturating_sub(self.published_at.elapsed()))
            } else {
                wake
            };
            let mut inputs = Vec::new();
            let mut replies = Vec::new();
            // At most one resync per pass: it reads the registry as it is
            // now, which covers whatever was missed since.
            let mut resynced = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wake) => inputs.push(Input::Tick),
                msg = rx.recv() => match msg {
                    Some(m) => self.take(m, &mut inputs, &mut replies),
                    None => return,
                },
                change = changes.recv() => match change {
                    Ok(c) => self.on_change(&c.host, &mut inputs),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.resync_into(&mut inputs);
                        resynced = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            // Take whatever else is queued, so one write covers it all.
            while inputs.len() + replies.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => self.take(m, &mut inputs, &mut replies),
                    Err(_) => break,
                }
            }
            let mut looked = 0;
            while inputs.len() < MAX_BATCH && looked < MAX_CHANGES {
                match changes.try_recv() {
                    Ok(c) => {
                        looked += 1;
                        self.on_change(&c.host, &mut inputs);
                    }
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        looked += 1;
                        if !resynced {
                            self.resync_into(&mut inputs);
                            resynced = true;
                        }
                    }
                    Err(_) => break,
                }
            }
            let t = now();
            if self.lost_check_at.is_some_and(|at| t >= at) {
                self.lost_check_at = None;
                self.mark_absent_hosts_lost(&mut inputs);
            }
            // The whole pass in one call: one sweep of the fleet, however
            // many inputs (see `Engine::handle_all`).
            let mut outputs = if inputs.is_empty() {
                Vec::new()
            } else {
                self.engine.handle_all(t, inputs)
            };
            let mut acted = Vec::new();
            for (action, reply) in replies {
                outputs.extend(self.engine.handle(t, Input::Operator(action)));
                acted.push(reply);
            }
            if !self.perform(outputs).await {
                for reply in acted {
                    let _ = reply.send(Err(RunnerError::ShuttingDown));
                }
                return;
            }
            if self.unpublished
                && (self.engine.is_finished()
                    || !acted.is_empty()
                    || self.published_at.elapsed() >= PUBLISH_EVERY)
            {
                self.publish();
            }
            let snap = self.snap_tx.borrow().clone();
            for reply in acted {
                let _ = reply.send(Ok(snap.clone()));
            }
        }
        tracing::info!(rollout = %id, outcome = ?self.engine.outcome(), "rollout finished");
        self.rollouts.finished(&id);
    }

    fn take(
        &mut self,
        msg: Msg,
        inputs: &mut Vec<Input>,
        replies: &mut Vec<(OperatorAction, Reply)>,
    ) {
        match msg {
            Msg::Input(i) => {
                if let Input::CommandResult { id, .. } = &i
                    && let Some(instance) = id.as_str().split('/').nth(1)
                {
                    self.progress.remove(instance);
                    if let Some((_, host)) = instance.rsplit_once('@')
                        && let Some(told) = self.told.get_mut(host)
                    {
                        told.remove(instance);
                    }
                }
                if let Input::HostBack { host } = &i {
                    self.reachable.insert(host.clone(), true);
                    self.told.remove(host);
                }
                inputs.push(i);
            }
            Msg::Action(a, reply) => replies.push((a, reply)),
            Msg::Progress { instance, text } => {
                self.progress.insert(instance, text);
                self.unpublished = true;
            }
        }
    }

    /// Health for every target instance of a host, and lost / back on a
    /// change of its status.
    fn on_change(&mut self, host: &Host, inputs: &mut Vec<Input>) {
        if !self.hosts.contains(&host.host_id) {
            return;
        }
        let status = HostStatus::try_from(host.status).unwrap_or(HostStatus::Unspecified);
        let up = status == HostStatus::Connected;
        let was = self.reachable.get(&host.host_id).copied().unwrap_or(true);
        if was && !up {
            self.reachable.insert(host.host_id.clone(), false);
            self.told.remove(&host.host_id);
            inputs.push(Input::HostLost {
                host: host.host_id.clone(),
            });
            return;
        }
        if !up {
            return;
        }
        if !was {
            self.reachable.insert(host.host_id.clone(), true);
            self.told.remove(&host.host_id);
            inputs.push(Input::HostBack {
                host: host.host_id.clone(),
            });
        }
        let service = &self.engine.state().spec().service;
        let told = self.told.entry(host.host_id.clone()).or_default();
        for inst in &host.instances {
            if &inst.service != service {
                continue;
            }
            let seen = observe(inst);
            if told.get(&inst.id) == Some(&seen) {
                continue;
            }
            told.insert(inst.id.clone(), seen.clone());
            let (healthy, in_service, release) = seen;
            inputs.push(Input::Health {
                instance: inst.id.clone(),
                healthy,
                in_service,
                release,
            });
        }
    }

    /// Catches up after missed registry changes: the registry's current
    /// view, compared with what the engine was told, is all that matters.
    /// Each host is looked at in place, under the registry's lock, rather
    /// than cloned: this runs when the rollout fell behind a busy fleet.
    fn resync_into(&mut self, inputs: &mut Vec<Input>) {
        let registry = self.rollouts.registry.clone();
        let hosts: Vec<String> = self.hosts.iter().cloned().collect();
        for h in hosts {
            registry.with_host(&h, |host| self.on_change(host, inputs));
        }
    }

    async fn resync(&mut self) {
        let mut inputs = Vec::new();
        self.resync_into(&mut inputs);
        let outputs = self.engine.handle_all(now(), inputs);
        self.perform(outputs).await;
    }

    /// After a restore: hosts that did not come back within the lost timeout
    /// are lost.
    fn mark_absent_hosts_lost(&mut self, inputs: &mut Vec<Input>) {
        for h in &self.hosts {
            if self.reachable.get(h) == Some(&false) {
                continue;
            }
            let up = self
                .rollouts
                .registry
                .get(h)
                .is_ok_and(|host| host.status == HostStatus::Connected as i32);
            if !up {
                self.reachable.insert(h.clone(), false);
                self.told.remove(h);
                inputs.push(Input::HostLost { host: h.clone() });
            }
        }
    }

    /// Stores state and events, then sends commands. Returns false when the
    /// coordinator is shutting down before the write succeeded.
    async fn perform(&mut self, outputs: Vec<Output>) -> bool {
        if outputs.is_empty() {
            return true;
        }
        let persist = outputs.iter().any(|o| matches!(o, Output::Persist));
        let new_events: Vec<RolloutEvent> = outputs
            .iter()
            .filter_map(|o| match o {
                Output::Event(e) => Some(e.clone()),
                _ => None,
            })
            .collect();
        if persist || !new_events.is_empty() {
            let id = self.engine.id().to_string();
            let base = lock(&self.events).len();
            let mut writes = Vec::with_capacity(new_events.len() + 1);
            if persist {
                // The head and the instances changed since the last write.
                match self.engine.persist_writes() {
                    Ok(w) => writes.extend(w),
                    Err(e) => tracing::error!(rollout = %id, error = %e, "encoding rollout state"),
                }
            }
            for (n, e) in new_events.iter().enumerate() {
                if let Ok(b) = serde_json::to_vec(e) {
                    writes.push((event_key(&id, base + n), b));
                }
            }
            if !self.write(writes).await {
                return false;
            }
            lock(&self.events).extend(new_events);
        }
        for o in outputs {
            if let Output::Send {
                id,
                instance,
                host,
                kind,
                timeout,
            } = o
            {
                self.send(id.0, instance, &host, kind, timeout);
            }
        }
        self.unpublished = true;
        true
    }

    /// Retries until the store takes the write or the coordinator stops:
    /// nothing may be sent before its transition is stored.
    async fn write(&self, writes: Vec<(String, Vec<u8>)>) -> bool {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.rollouts.store.put_many(writes.clone()).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::error!(rollout = %self.engine.id(), error = %e, "storing rollout state failed; holding its commands and retrying");
                    tokio::select! {
                        _ = self.rollouts.shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn send(&self, id: String, instance: String, host: &str, kind: CommandKind, timeout: Duration) {
        let Some(tx) = self.rollouts.registry.session_sender(host) else {
            tracing::debug!(command = %id, host, "host not connected; the command goes out when it is back");
            return;
        };
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let cmd = match kind {
            CommandKind::Stage { release } => command::Kind::Stage(pb::StageCommand {
                release: Some(pb::Release {
                    version: release.version,
                    digest: release.digest,
                }),
            }),
            CommandKind::Drain => command::Kind::Drain(pb::DrainCommand {}),
            CommandKind::Stop => command::Kind::Stop(pb::StopCommand {}),
            CommandKind::Deploy { release } => command::Kind::Deploy(pb::DeployCommand {
                release: Some(pb::Release {
                    version: release.version,
                    digest: release.digest,
                }),
            }),
            CommandKind::Start => command::Kind::Start(pb::StartCommand {}),
            CommandKind::Verify {
                min_healthy_time,
                healthy_deadline,
            } => command::Kind::Verify(pb::VerifyCommand {
                min_healthy_time_ms: ms(min_healthy_time),
                healthy_deadline_ms: ms(healthy_deadline),
            }),
            CommandKind::Undrain => command::Kind::Undrain(pb::UndrainCommand {}),
        };
        tracing::debug!(command = %id, host, "sending command");
        let msg = CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Command(Command {
                id,
                instance,
                timeout_ms: ms(timeout).max(1),
                kind: Some(cmd),
            })),
        };
        // The session's queue is bounded; a slow agent must not stall the
        // rollout, and a lost message is re-asked on reconnect or times out.
        // Most of the time there is room, and no task is needed.
        match tx.try_send(Ok(msg)) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                tokio::spawn(async move {
                    let _ = tx.send(msg).await;
                });
            }
        }
    }

    fn publish(&mut self) {
        self.unpublished = false;
        self.published_at = std::time::Instant::now();
        let events = lock(&self.events).len();
        let snap = Snapshot {
            status: self.engine.status_from(&mut self.status_cache),
            progress: self.progress.clone(),
            events,
            started_by: self.meta.started_by.clone(),
            spec_toml: self.meta.spec_toml.clone(),
            selector: self.engine.state().spec().selector.clone(),
        };
        self.snap_tx.send_replace(Arc::new(snap));
    }
}
