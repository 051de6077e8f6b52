//! Runs rollouts: the set of rollouts this coordinator knows, running or
//! finished, and the way in for the services.
//!
//! Each running rollout is a [`task`] (tokio: clock, store writes, sends,
//! channels) around a [`driver`] (every decision, sans-IO, which the
//! simulator runs too) around the rollout [`Engine`]. [`wire`] maps between
//! the driver and the protobuf messages.
//!
//! Order of effects, the promise that makes crash recovery work: the
//! engine's state and events are written to the store before any command
//! they lead to is sent. After a restart every unfinished rollout is
//! restored from the store; its in-flight commands go out again with the
//! same ids, and the agents answer them from their journals.

/// Records a pass writes beside its instances: the head, one of events,
/// a few judgements.
const WRITE_OVERHEAD: usize = 8;

pub mod driver;
pub mod hooks;
pub mod strays;
mod task;
pub(crate) mod trace;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use drover_proto::v1::{CommandUpdate, HostStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::rollout::{
    Engine, InstanceInfo, OperatorAction, PlanError, RolloutEvent, RolloutSpec, Status, persist,
};
use crate::selector::Selector;
use crate::store::{Store, StoreError};
use driver::{Driver, Event};
pub use task::{Clock, SystemClock};

const META: &str = "rollout-meta/";
/// Messages a running rollout's queue holds. Results and operator actions
/// wait for room (the agent's session then waits, which HTTP/2 flow
/// control passes back to the agent); progress messages are dropped when
/// it is full: the next one says more.
const QUEUE: usize = 1024;

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
    #[error(
        "this rollout has {instances} instances and may store up to {needed} records in one \
         write, but the store takes at most {max} in one transaction: raise --max-txn-ops on \
         every etcd member and [store] max_txn_ops to at least {needed} (and \
         --max-request-bytes for large fleets), or select fewer instances"
    )]
    TooLargeForStore {
        instances: usize,
        needed: usize,
        max: usize,
    },
}

impl From<RunnerError> for tonic::Status {
    fn from(e: RunnerError) -> tonic::Status {
        let msg = e.to_string();
        match e {
            RunnerError::Plan(PlanError::Spec(_)) | RunnerError::Plan(PlanError::BadId(_)) => {
                tonic::Status::invalid_argument(msg)
            }
            RunnerError::Plan(_)
            | RunnerError::Finished { .. }
            | RunnerError::TooLargeForStore { .. } => tonic::Status::failed_precondition(msg),
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
    /// W3C context of the rollout's root span when it started, so a
    /// coordinator that resumes it continues the same trace. Empty when
    /// tracing was off.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    traceparent: String,
}

impl Meta {
    /// The rollout's trace id, or empty.
    fn trace_id(&self) -> String {
        drover_telemetry::trace_id_of(&self.traceparent).unwrap_or_default()
    }
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
    /// The rollout's OpenTelemetry trace id; empty when tracing is off.
    pub trace_id: String,
}

type Reply = oneshot::Sender<Result<Arc<Snapshot>, RunnerError>>;

enum Msg {
    Event(Event),
    Action(OperatorAction, Reply),
}

struct Entry {
    service: String,
    hosts: BTreeSet<String>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    events: Arc<Mutex<Vec<RolloutEvent>>>,
    /// Present while the rollout runs.
    tx: Option<mpsc::Sender<Msg>>,
}

#[derive(Default)]
struct Inner {
    rollouts: BTreeMap<String, Entry>,
}

/// Every rollout this coordinator knows, running or finished.
/// What the coordinator's config says about running rollouts.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// How long a host may stay away after a coordinator restart before
    /// its rollouts treat it as lost.
    pub lost_timeout: Duration,
    /// Blue-green's pre-traffic hooks.
    pub hooks: hooks::Hooks,
    /// HA: the fencing epoch every command carries (0: no election).
    pub epoch: u64,
}

pub struct Rollouts {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
    /// Held for the whole of a start, so two starts for one service cannot
    /// both pass the busy check.
    starting: tokio::sync::Mutex<()>,
    /// How long a host may stay away after a coordinator restart before its
    /// rollouts treat it as lost.
    lost_timeout: Duration,
    /// Blue-green's pre-traffic hooks, from the coordinator's config.
    hooks: Arc<hooks::Hooks>,
    /// HA: the fencing epoch every command carries.
    epoch: u64,
    shutdown: CancellationToken,
    /// Owns every rollout task; the coordinator waits on it at shutdown.
    tasks: TaskTracker,
    /// DR drills: their weight commands' answers go there, and their
    /// services are busy (set once, at start).
    pub drills: std::sync::OnceLock<Arc<crate::drill::runner::Drills>>,
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
            let seen = wire::observe(inst);
            out.push(InstanceInfo {
                id: inst.id.clone(),
                host: host.host_id.clone(),
                labels: host.labels.clone().into_iter().collect(),
                in_service: seen.in_service(),
                healthy: seen.healthy,
                release: seen.release,
                reachable,
                balancers: (inst.load_balancers.iter())
                    .map(|lb| crate::rollout::BalancerInfo {
                        balancer: lb.balancer.clone(),
                        backend: lb.backend.clone(),
                        algorithm: lb.algorithm.clone(),
                        dynamic: lb.algorithm_dynamic,
                        counted: lb.counters.is_some(),
                    })
                    .collect(),
                color: drover_model::Color::parse(&inst.color),
            });
        }
    }
    out
}

impl Rollouts {
    /// Loads every stored rollout and resumes the unfinished ones, each as
    /// a task of `tasks`.
    pub async fn load(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        settings: Settings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Arc<Rollouts>, RunnerError> {
        Rollouts::load_with_clock(
            store,
            registry,
            metrics,
            Arc::new(SystemClock),
            settings,
            shutdown,
            tasks,
        )
        .await
    }

    /// [`Rollouts::load`] on a clock of the caller's.
    pub async fn load_with_clock(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Arc<Rollouts>, RunnerError> {
        let Settings {
            lost_timeout,
            hooks,
            epoch,
        } = settings;
        let this = Arc::new(Rollouts {
            hooks: Arc::new(hooks),
            epoch,
            store: store.clone(),
            registry,
            metrics,
            clock,
            inner: Mutex::new(Inner::default()),
            starting: tokio::sync::Mutex::new(()),
            lost_timeout,
            shutdown,
            tasks,
            drills: std::sync::OnceLock::new(),
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
                    traceparent: String::new(),
                },
            };
            let mut events = Vec::new();
            for (k, b) in store
                .scan_prefix(&format!("{}{id}/", driver::EVENTS))
                .await?
            {
                // One pass's events in one record; a record of one event
                // from before they were grouped.
                match serde_json::from_slice::<Vec<RolloutEvent>>(&b) {
                    Ok(pass) => events.extend(pass),
                    Err(_) => {
                        events.push(serde_json::from_slice(&b).map_err(|e| corrupt(&k, e))?);
                    }
                }
            }
            let (engine, outputs) = Engine::restore(state, this.clock.now());
            if engine.is_finished() {
                this.insert_finished(engine, meta, events);
            } else {
                tracing::info!(rollout = %id, "resuming rollout after a coordinator restart");
                let stored = Some(meta.traceparent.as_str()).filter(|t| !t.is_empty());
                let trace = trace::RolloutTrace::open(&engine, stored);
                this.spawn(engine, meta, events, outputs, true, trace).await;
            }
        }
        Ok(this)
    }

    fn insert_finished(&self, engine: Engine, meta: Meta, events: Vec<RolloutEvent>) {
        let trace_id = meta.trace_id();
        let snapshot = Snapshot {
            status: engine.status(),
            progress: BTreeMap::new(),
            events: events.len(),
            started_by: meta.started_by,
            selector: engine.state().spec().selector.clone(),
            trace_id,
            spec_toml: meta.spec_toml,
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
            if let Some(drill) = (self.drills.get())
                .and_then(|d| d.running_services().contains(&spec.service).then_some(d))
                .and_then(|d| {
                    d.list()
                        .into_iter()
                        .find(|x| x.plan.service == spec.service && !x.phase.is_terminal())
                })
            {
                return Err(RunnerError::Busy {
                    id: drill.id.clone(),
                    service: spec.service.clone(),
                    phase: format!("{} ({})", drill.phase.as_str(), drill.kind.as_str()),
                });
            }
            let id = next_id(&inner.rollouts, &spec.service);
            hooks::check(&spec, &self.hooks)?;
            let instances = target_instances(&self.registry, &spec);
            self.fits(instances.len())?;
            let (engine, outputs) = Engine::start(&id, spec, instances, self.clock.now())?;
            (engine, outputs, id)
        };
        let trace = trace::RolloutTrace::open(&engine, None);
        let meta = Meta {
            started_by,
            spec_toml,
            traceparent: trace.traceparent().unwrap_or_default(),
        };
        let meta_bytes = serde_json::to_vec(&meta).map_err(|e| corrupt(&id, e))?;
        // The meta goes first so a crash before the state write leaves no
        // half rollout behind (a meta without a state is ignored).
        self.store.put(&format!("{META}{id}"), meta_bytes).await?;
        let snapshot = self
            .spawn(engine, meta, Vec::new(), outputs, false, trace)
            .await;
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
        outputs: Vec<crate::rollout::Output>,
        restored: bool,
        trace: trace::RolloutTrace,
    ) -> Arc<Snapshot> {
        let mut meta = meta;
        if meta.traceparent.is_empty()
            && let Some(tp) = trace.traceparent()
        {
            // Started while tracing was off: the trace begins here, and a
            // later resume continues this one.
            meta.traceparent = tp;
            match serde_json::to_vec(&meta) {
                Ok(bytes) => {
                    let key = format!("{META}{}", engine.id());
                    if let Err(e) = self.store.put(&key, bytes).await {
                        tracing::warn!(rollout = %engine.id(), error = %e, "storing the rollout's trace context failed; a resume starts a new trace");
                    }
                }
                Err(e) => {
                    tracing::warn!(rollout = %engine.id(), error = %e, "encoding the rollout's meta")
                }
            }
        }
        let hosts: BTreeSet<String> = engine
            .state()
            .hosts()
            .into_keys()
            .map(str::to_string)
            .collect();
        let connected: Vec<String> = (hosts.iter())
            .filter(|h| self.registry.with_host(h, wire::connected).unwrap_or(false))
            .cloned()
            .collect();
        let id = engine.id().to_string();
        let service = engine.state().spec().service.clone();
        let selector = engine.state().spec().selector.clone();
        let now = self.clock.now();
        let driver = Driver::new(
            engine,
            outputs,
            events.len(),
            connected,
            restored.then_some(self.lost_timeout),
            now,
        );
        let snapshot = Arc::new(Snapshot {
            status: driver.engine().status(),
            progress: BTreeMap::new(),
            events: events.len(),
            started_by: meta.started_by.clone(),
            spec_toml: meta.spec_toml.clone(),
            selector,
            trace_id: meta.trace_id(),
        });
        let (snap_tx, snap_rx) = watch::channel(snapshot);
        let (tx, rx) = mpsc::channel(QUEUE);
        let events = Arc::new(Mutex::new(events));
        // Subscribe before the task reads the registry, so no change is missed.
        let changes = self.registry.subscribe();
        lock(&self.inner).rollouts.insert(
            id.clone(),
            Entry {
                service,
                hosts,
                snapshot: snap_rx,
                events: events.clone(),
                tx: Some(tx),
            },
        );
        let strategy = driver.engine().state().spec().strategy;
        let service = driver.service().to_string();
        self.metrics.rollout_running(strategy);
        let mut task = task::Task::new(self.clone(), driver, meta, events, snap_tx, trace);
        task.open(!restored).await;
        let snapshot = task.snapshot();
        let this = self.clone();
        self.tasks.spawn(async move {
            task.run(rx, changes).await;
            this.metrics.rollout_stopped(strategy, &id, &service);
            this.finished(&id);
        });
        snapshot
    }

    /// Refuses a rollout whose largest write would not fit in one store
    /// transaction: a pass stores the head, every instance it changed, one
    /// record of events and a few judgements together, and etcd takes at
    /// most `--max-txn-ops` operations in one.
    pub fn fits(&self, instances: usize) -> Result<(), RunnerError> {
        let max = self.store.max_put_many();
        let needed = instances.saturating_add(WRITE_OVERHEAD);
        if needed > max {
            return Err(RunnerError::TooLargeForStore {
                instances,
                needed,
                max,
            });
        }
        Ok(())
    }

    /// The fencing epoch the commands carry (0: no election).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The pre-traffic hooks of the coordinator's config.
    pub fn hooks(&self) -> &hooks::Hooks {
        &self.hooks
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

    /// Services with a rollout running now.
    /// Services whose held weights something owns: a running rollout, or
    /// a drill that moved the traffic (and has not moved it back).
    pub fn weight_owners(&self) -> BTreeSet<String> {
        let mut owners = self.running_services();
        if let Some(d) = self.drills.get() {
            owners.extend(d.holding());
            owners.extend(d.running_services());
        }
        owners
    }

    pub fn running_services(&self) -> BTreeSet<String> {
        (lock(&self.inner).rollouts.values())
            .filter(|e| e.tx.is_some())
            .map(|e| e.service.clone())
            .collect()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self, id: &str) -> Result<watch::Receiver<Arc<Snapshot>>, RunnerError> {
        lock(&self.inner)
            .rollouts
            .get(id)
            .map(|e| e.snapshot.clone())
            .ok_or_else(|| RunnerError::NotFound(id.to_string()))
    }

    /// Every stored look of a canary's analysis, step by step.
    pub async fn judgements(
        &self,
        id: &str,
    ) -> Result<Vec<crate::rollout::traffic::StepJudgement>, RunnerError> {
        let prefix = format!("{}{id}/", driver::JUDGEMENTS);
        let mut out = Vec::new();
        for (k, b) in self.store.scan_prefix(&prefix).await? {
            out.push(
                serde_json::from_slice(&b).map_err(|e| RunnerError::Corrupt {
                    key: k.clone(),
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
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
            .await
            .map_err(|_| RunnerError::ShuttingDown)?;
        rx.await.map_err(|_| RunnerError::ShuttingDown)?
    }

    fn sender(&self, id: &str) -> Option<mpsc::Sender<Msg>> {
        lock(&self.inner)
            .rollouts
            .get(id)
            .and_then(|e| e.tx.clone())
    }

    /// An agent's update on a command, from `host_id`'s session. The
    /// rollout's driver decides whether that host may answer for it. A
    /// result waits for room in the rollout's queue; progress does not.
    pub async fn command_update(&self, host_id: &str, update: CommandUpdate) {
        let Some(update) = wire::agent_update(update) else {
            self.metrics.updates_ignored.inc();
            tracing::debug!(host = %host_id, "ignoring an update that names no drover command");
            return;
        };
        if update
            .id
            .rollout
            .starts_with(crate::drill::runner::COMMAND_OWNER)
        {
            if let Some(drills) = self.drills.get() {
                drills.command_update(update);
            }
            return;
        }
        if update.id.rollout == strays::OWNER {
            if let driver::UpdateKind::Result(outcome) = &update.kind {
                tracing::info!(host = %host_id, instance = %update.id.instance, ?outcome, "configured weight put back (no rollout owned the held weight)");
            }
            return;
        }
        let Some(tx) = self.sender(&update.id.rollout) else {
            // Finished, or not ours: a late or replayed answer.
            return;
        };
        let progress = matches!(update.kind, driver::UpdateKind::Progress(_));
        let msg = Msg::Event(Event::Update {
            from: host_id.to_string(),
            update,
        });
        if progress {
            let _ = tx.try_send(msg);
        } else {
            let _ = tx.send(msg).await;
        }
    }

    /// A host's agent opened a new session: commands in flight on it may
    /// have been lost with the old one, so they are asked again.
    pub async fn host_connected(&self, host_id: &str) {
        let senders: Vec<mpsc::Sender<Msg>> = {
            let inner = lock(&self.inner);
            (inner.rollouts.values())
                .filter(|e| e.hosts.contains(host_id))
                .filter_map(|e| e.tx.clone())
                .collect()
        };
        for tx in senders {
            let _ = tx
                .send(Msg::Event(Event::Connected {
                    host: host_id.to_string(),
                }))
                .await;
        }
    }

    fn finished(&self, id: &str) {
        if let Some(e) = lock(&self.inner).rollouts.get_mut(id) {
            e.tx = None;
        }
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
        OperatorAction::Promote => "promote",
    }
}

#[cfg(test)]
mod compat;
#[cfg(test)]
mod tests;
