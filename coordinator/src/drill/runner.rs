//! Runs drills: one task per running drill carries out what the
//! [`super::engine`] decides, storing the drill after every change
//! (`drills/<id>`), so a coordinator that dies (or loses the lead) resumes
//! each running drill from its last stored state.
//!
//! Traffic moves through the agents, as weights: the target site's
//! instances get weight [`BASE_WEIGHT`] first, then the source site's go
//! to 0, so both serve in between and no request is turned away. Hosts of
//! the source site that are not connected (an ungraceful run: the site is
//! gone) are left as they are; HAProxy's own checks keep a dead server out.
//! A fail-back, and an abort, put back every instance's configured weight
//! (`restore`), the target's first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_model::drill::{TrafficVia, parse_lag, parse_replayed};
use drover_proto::v1::{
    Command, CoordinatorMessage, SetWeightCommand, command, coordinator_message,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{Action, Drill, Kind, Ms, Reading, SwitchTraffic, Toward};
use super::precheck::{command_env, run_command};
use crate::registry::{Registry, now_ms};
use crate::rollout::CommandOutcome;
use crate::rollout::traffic::BASE_WEIGHT;
use crate::runner::driver::{AgentUpdate, UpdateKind};
use crate::runner::wire::{connected, observe};
use crate::selector::Selector;
use crate::store::{Store, StoreError};

/// Where drills are stored.
pub const KEY_PREFIX: &str = "drills/";
/// The last drill number handed out.
pub const SEQ_KEY: &str = "drill-seq";
/// The rollout part of a drill's command ids: `drill@<id>` (service and
/// rollout names cannot hold `@`).
pub const COMMAND_OWNER: &str = "drill@";
/// How long one weight command may take.
const WEIGHT_TIMEOUT: Duration = Duration::from_secs(30);
/// A weight command not answered in this long is sent again (see
/// `Drills::set_weights`).
const RESEND_EVERY: Duration = Duration::from_secs(2);

fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("no drill {0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl From<DrillError> for tonic::Status {
    fn from(e: DrillError) -> Self {
        match e {
            DrillError::NotFound(_) => tonic::Status::not_found(e.to_string()),
            DrillError::Refused(_) => tonic::Status::failed_precondition(e.to_string()),
            DrillError::Store(_) => tonic::Status::unavailable(e.to_string()),
        }
    }
}

enum Msg {
    Approve(String, oneshot::Sender<Result<(), String>>),
    Abort(String, oneshot::Sender<Result<(), String>>),
}

struct Entry {
    snapshot: watch::Sender<Arc<Drill>>,
    tx: Option<mpsc::Sender<Msg>>,
}

/// Every drill this coordinator knows, and the running ones' tasks.
pub struct Drills {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    metrics: Arc<crate::metrics::Metrics>,
    commands_dir: Option<PathBuf>,
    epoch: u64,
    inner: Mutex<BTreeMap<String, Entry>>,
    /// Weight commands waiting for their agent's answer, by command id.
    pending: Mutex<HashMap<String, oneshot::Sender<CommandOutcome>>>,
    /// One start at a time (the service-busy check and the id).
    starting: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Drills {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drills").finish_non_exhaustive()
    }
}

/// What one walk of the registry saw of a drill's service.
#[derive(Debug, Default)]
struct Look {
    /// Serving on either site.
    serving: u32,
    target_serving: u32,
    target_total: u32,
    readings: Vec<Reading>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drills {
    /// Loads every stored drill and resumes the running ones.
    pub async fn load(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        metrics: Arc<crate::metrics::Metrics>,
        commands_dir: Option<PathBuf>,
        epoch: u64,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Arc<Drills>, StoreError> {
        let drills = Arc::new(Drills {
            store: store.clone(),
            registry,
            metrics,
            commands_dir,
            epoch,
            inner: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            shutdown,
            tasks,
        });
        for (k, v) in store.scan_prefix(KEY_PREFIX).await? {
            match serde_json::from_slice::<Drill>(&v) {
                Ok(d) => {
                    if d.kind == Kind::Drill && d.phase == super::engine::Phase::Succeeded {
                        drills
                            .metrics
                            .drill_succeeded(&d.plan.service, d.ended_ms.unwrap_or(0) / 1000);
                    }
                    let running = !d.phase.is_terminal() || d.awaits_abort();
                    if running {
                        tracing::info!(drill = %d.id, phase = d.phase.as_str(), "resuming a drill after a coordinator restart");
                    }
                    drills.add(d, running, running);
                }
                Err(e) => tracing::error!(key = %k, "unreadable drill record, skipped: {e}"),
            }
        }
        Ok(drills)
    }

    fn add(self: &Arc<Self>, mut d: Drill, run: bool, resumed: bool) {
        if resumed {
            d.events.push(super::engine::Event {
                at_ms: now_ms(),
                message: "resumed by this coordinator (after a restart or failover)".into(),
            });
        }
        let (snapshot, _) = watch::channel(Arc::new(d.clone()));
        let tx = run.then(|| {
            let (tx, rx) = mpsc::channel(16);
            let me = self.clone();
            self.tasks.spawn(async move { me.drive(d, rx).await });
            tx
        });
        let id = snapshot.borrow().id.clone();
        lock(&self.inner).insert(id, Entry { snapshot, tx });
    }

    /// The services whose weights a drill holds (moved, not moved back):
    /// nothing else may put their configured weights back.
    pub fn holding(&self) -> BTreeSet<String> {
        let mut by_service: BTreeMap<String, Vec<Arc<Drill>>> = BTreeMap::new();
        for e in lock(&self.inner).values() {
            let d = e.snapshot.borrow().clone();
            by_service
                .entry(d.plan.service.clone())
                .or_default()
                .push(d);
        }
        (by_service.into_iter())
            .filter(|(_, drills)| super::engine::holds(drills.iter().map(|d| d.as_ref())))
            .map(|(service, _)| service)
            .collect()
    }

    /// Services with a drill running now.
    pub fn running_services(&self) -> BTreeSet<String> {
        (lock(&self.inner).values())
            .filter(|e| e.tx.is_some())
            .map(|e| e.snapshot.borrow().plan.service.clone())
            .collect()
    }

    /// An agent's answer to a drill's weight command.
    pub fn command_update(&self, update: AgentUpdate) {
        let UpdateKind::Result(outcome) = update.kind else {
            return;
        };
        if let Some(tx) = lock(&self.pending).remove(&update.id.to_string()) {
            let _ = tx.send(outcome);
        }
    }

    pub fn get(&self, id: &str) -> Result<Arc<Drill>, DrillError> {
        lock(&self.inner)
            .get(id)
            .map(|e| e.snapshot.borrow().clone())
            .ok_or_else(|| DrillError::NotFound(id.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Drill>> {
        let mut all: Vec<Arc<Drill>> = (lock(&self.inner).values())
            .map(|e| e.snapshot.borrow().clone())
            .collect();
        all.sort_by_key(|d| std::cmp::Reverse(d.started_ms));
        all
    }

    pub fn subscribe(&self, id: &str) -> Result<watch::Receiver<Arc<Drill>>, DrillError> {
        lock(&self.inner)
            .get(id)
            .map(|e| e.snapshot.subscribe())
            .ok_or_else(|| DrillError::NotFound(id.to_string()))
    }

    /// Stores and starts a new drill, refused while another operation on
    /// its service runs (`busy` names the rollout, if one runs).
    pub async fn start(
        self: &Arc<Self>,
        service: &str,
        make: impl FnOnce(String) -> Drill,
        rollout_busy: bool,
    ) -> Result<Arc<Drill>, DrillError> {
        let _one = self.starting.lock().await;
        if rollout_busy {
            return Err(DrillError::Refused(format!(
                "a rollout of {service} is running: let it finish (or abort it) first"
            )));
        }
        if let Some(other) = (lock(&self.inner).values())
            .filter(|e| e.tx.is_some())
            .map(|e| e.snapshot.borrow().clone())
            .find(|o| o.plan.service == service)
        {
            return Err(DrillError::Refused(format!(
                "{} ({} of {service}) is still {}: one at a time",
                other.id,
                other.kind.as_str(),
                other.phase.as_str()
            )));
        }
        // An id only once nothing refuses it.
        let n = self.next_seq().await?;
        let d = make(format!("dr-{n}"));
        self.save(&d).await?;
        self.add(d, true, false);
        self.get(&format!("dr-{n}"))
    }

    async fn next_seq(&self) -> Result<u64, StoreError> {
        loop {
            let cur = self.store.get(SEQ_KEY).await?;
            let n = cur
                .as_deref()
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            if self
                .store
                .compare_and_swap(SEQ_KEY, cur.as_deref(), Some(n.to_string().into_bytes()))
                .await?
            {
                return Ok(n);
            }
        }
    }

    async fn save(&self, d: &Drill) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(d).unwrap_or_default();
        self.store.put(&key(&d.id), bytes).await
    }

    async fn ask(
        &self,
        id: &str,
        msg: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Msg,
    ) -> Result<Arc<Drill>, DrillError> {
        let tx = {
            let inner = lock(&self.inner);
            let e = inner
                .get(id)
                .ok_or_else(|| DrillError::NotFound(id.to_string()))?;
            e.tx.clone()
        };
        let Some(tx) = tx else {
            let d = self.get(id)?;
            return Err(DrillError::Refused(format!(
                "{id} has ended ({}){}",
                d.phase.as_str(),
                if d.phase == super::engine::Phase::Succeeded {
                    ": fail back with `drover failback` instead"
                } else {
                    ""
                }
            )));
        };
        let (reply, answer) = oneshot::channel();
        tx.send(msg(reply))
            .await
            .map_err(|_| DrillError::Refused(format!("{id} is ending")))?;
        match answer.await {
            Ok(Ok(())) => self.get(id),
            Ok(Err(e)) => Err(DrillError::Refused(e)),
            Err(_) => Err(DrillError::Refused(format!("{id} is ending"))),
        }
    }

    pub async fn approve(&self, id: &str, by: &str) -> Result<Arc<Drill>, DrillError> {
        let by = by.to_string();
        self.ask(id, |r| Msg::Approve(by, r)).await
    }

    pub async fn abort(&self, id: &str, by: &str) -> Result<Arc<Drill>, DrillError> {
        let by = by.to_string();
        self.ask(id, |r| Msg::Abort(by, r)).await
    }

    fn publish(&self, d: &Drill) {
        if let Some(e) = lock(&self.inner).get(&d.id) {
            e.snapshot.send_replace(Arc::new(d.clone()));
        }
    }

    /// Stores `d` when it changed since `last` (the stored JSON), retrying
    /// until the store takes it: nothing is done that was not stored.
    async fn persist(&self, d: &Drill, last: &mut Vec<u8>) -> bool {
        let bytes = serde_json::to_vec(d).unwrap_or_default();
        if bytes == *last {
            return true;
        }
        let mut delay = Duration::from_millis(200);
        loop {
            match self.store.put(&key(&d.id), bytes.clone()).await {
                Ok(()) => {
                    *last = bytes;
                    self.publish(d);
                    return true;
                }
                Err(StoreError::Fenced { .. }) => return false,
                Err(e) => {
                    tracing::warn!(drill = %d.id, "store the drill: {e}; trying again");
                    tokio::select! {
                        () = self.shutdown.cancelled() => return false,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Applies an approval or abort, stores it, then answers: the caller
    /// reads the drill back as stored.
    async fn handle(&self, d: &mut Drill, msg: Msg, last: &mut Vec<u8>) {
        let now = now_ms();
        let (reply, result) = match msg {
            Msg::Approve(by, reply) => (reply, d.approve(now, &by)),
            Msg::Abort(by, reply) => (reply, d.abort(now, &by)),
        };
        if result.is_ok() && !self.persist(d, last).await {
            let _ = reply.send(Err("this coordinator no longer leads".to_string()));
            return;
        }
        let _ = reply.send(result);
    }

    /// The drill's task: act, store, repeat, until it ends.
    async fn drive(self: Arc<Self>, mut d: Drill, mut rx: mpsc::Receiver<Msg>) {
        let mut last = Vec::new();
        let mut trace = crate::runner::trace::DrillTrace::open(&d);
        loop {
            let now = now_ms();
            let action = d.next(now);
            trace.observe(&d);
            if !self.persist(&d, &mut last).await {
                return;
            }
            // What to wait for, while messages (approve, abort) may come.
            let wait_until: Option<Ms> = match action {
                // Failed with traffic moved: kept until an abort moves it
                // back (or an operator decides to leave it).
                Action::Done if d.awaits_abort() => None,
                Action::Done => break,
                Action::WaitForInput => None,
                Action::WaitUntil(t) => Some(t),
                Action::Run { .. } | Action::MeasureLag { .. } | Action::MeasureReplayed { .. } => {
                    let Some((field, argv, timeout)) = action.command() else {
                        continue;
                    };
                    let env = command_env(&d.plan);
                    let ran = tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        Some(msg) = rx.recv() => { self.handle(&mut d, msg, &mut last).await; continue; }
                        ran = run_command(self.commands_dir.as_deref(), field, argv, &env, timeout) => ran,
                    };
                    let now = now_ms();
                    match action {
                        Action::MeasureLag { .. } => {
                            let lag = if ran.ok {
                                parse_lag(&ran.stdout)
                            } else {
                                Err(ran.detail)
                            };
                            match d.on_lag(now, lag) {
                                Some(t) => Some(t),
                                None => continue,
                            }
                        }
                        Action::MeasureReplayed { .. } => {
                            let r = if ran.ok {
                                parse_replayed(&ran.stdout)
                            } else {
                                Err(ran.detail)
                            };
                            d.on_replayed(now, r);
                            continue;
                        }
                        _ => {
                            d.on_command(now, ran.ok, &ran.detail);
                            continue;
                        }
                    }
                }
                Action::Switch(toward) => {
                    if toward == Toward::Target && d.traffic.is_none() {
                        let look = self.look(&d);
                        d.traffic = Some(SwitchTraffic::start(
                            now_ms(),
                            look.serving,
                            d.plan.checks.capacity,
                            &look.readings,
                        ));
                    }
                    let result = tokio::select! {
                        () = self.shutdown.cancelled() => return,
                        r = tracing::Instrument::instrument(self.switch(&d, toward), trace.span()) => r,
                    };
                    d.on_switched(now_ms(), toward, result);
                    if toward == Toward::Target {
                        self.observe_traffic(&mut d);
                    }
                    if d.phase == super::engine::Phase::Aborting && d.traffic_moved {
                        // Moving back failed: try again shortly.
                        Some(now_ms() + 1_000)
                    } else {
                        continue;
                    }
                }
                Action::CheckServing => {
                    let look = self.observe_traffic(&mut d);
                    let whole = look.target_total > 0 && look.target_serving == look.target_total;
                    let seen = format!(
                        "{} of {} serving on {}",
                        look.target_serving,
                        look.target_total,
                        d.target_site()
                    );
                    match d.on_serving(now_ms(), whole, &seen) {
                        Some(t) => Some(t),
                        None => continue,
                    }
                }
            };
            if !self.persist(&d, &mut last).await {
                return;
            }
            let sleep = match wait_until {
                Some(t) => Duration::from_millis(u64::try_from((t - now_ms()).max(0)).unwrap_or(0)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                Some(msg) = rx.recv() => self.handle(&mut d, msg, &mut last).await,
                () = tokio::time::sleep(sleep) => {}
            }
        }
        let _ = self.persist(&d, &mut last).await;
        trace.finish(&d);
        if let Some(e) = lock(&self.inner).get_mut(&d.id) {
            e.tx = None;
        }
        self.metrics.drill_ended(d.kind.as_str(), d.phase.as_str());
        if let (super::engine::Phase::Succeeded, Some(ms)) = (d.phase, d.recovery_ms()) {
            let took = std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            (self.metrics).drill_recovered(&d.plan.service, d.kind.as_str(), took, d.plan.rto);
        }
        if d.kind == Kind::Drill && d.phase == super::engine::Phase::Succeeded {
            self.metrics
                .drill_succeeded(&d.plan.service, d.ended_ms.unwrap_or(0) / 1000);
        }
        tracing::info!(drill = %d.id, phase = d.phase.as_str(), "drill ended");
    }

    /// The plan's service's instances on hosts with `label=value`, with
    /// their hosts and names: `(host, instance name, instance id)`.
    fn instances(&self, d: &Drill, site: &str) -> Vec<(String, String, String, bool)> {
        let (label, value) = site.split_once('=').unwrap_or((site, ""));
        let mut out = Vec::new();
        for h in self.registry.list(&Selector::everything()) {
            if h.labels.get(label).is_none_or(|v| v != value) {
                continue;
            }
            let up = connected(&h);
            for i in h.instances.iter().filter(|i| i.service == d.plan.service) {
                out.push((h.host_id.clone(), i.name.clone(), i.id.clone(), up));
            }
        }
        out
    }

    /// One walk of the registry: the service's instances serving
    /// (connected, healthy, routed to) on either site and on the target,
    /// and every server's HAProxy counters.
    fn look(&self, d: &Drill) -> Look {
        let site_of = |h: &drover_proto::v1::Host, site: &str| {
            let (label, value) = site.split_once('=').unwrap_or((site, ""));
            h.labels.get(label).is_some_and(|v| v == value)
        };
        let (target, source) = (d.target_site(), d.source_site());
        let mut look = Look::default();
        for h in self.registry.list(&Selector::everything()) {
            let on_target = site_of(&h, &target);
            if !on_target && !site_of(&h, &source) {
                continue;
            }
            let up = connected(&h);
            for i in h.instances.iter().filter(|i| i.service == d.plan.service) {
                let seen = observe(i);
                let serving = up && seen.healthy && seen.in_service();
                look.serving += u32::from(serving);
                if on_target {
                    look.target_total += 1;
                    look.target_serving += u32::from(serving);
                }
                for lb in &i.load_balancers {
                    if let Some(c) = &lb.counters {
                        let failures = c.response_errors.saturating_add(c.connection_errors);
                        look.readings.push(Reading {
                            key: format!("{}|{}", i.id, lb.balancer),
                            on_target,
                            attempts: c.requests.saturating_add(failures),
                            errors: c.responses_5xx.saturating_add(failures),
                        });
                    }
                }
            }
        }
        look
    }

    /// A look while traffic moves: the switch's count goes on.
    fn observe_traffic(&self, d: &mut Drill) -> Look {
        let look = self.look(d);
        if let Some(t) = d.traffic.as_mut() {
            t.observe(now_ms(), look.serving, &look.readings);
        }
        look
    }

    /// Moves traffic `toward` the target or back to the source.
    async fn switch(&self, d: &Drill, toward: Toward) -> Result<String, String> {
        if d.plan.traffic.via == TrafficVia::Command {
            let (field, argv) = match toward {
                Toward::Target => ("traffic.switch", &d.plan.traffic.switch),
                Toward::Source => ("traffic.switch_back", &d.plan.traffic.switch_back),
            };
            let ran = run_command(
                self.commands_dir.as_deref(),
                field,
                argv,
                &command_env(&d.plan),
                d.plan
                    .database
                    .as_ref()
                    .map_or(Duration::from_secs(60), |db| db.timeout),
            )
            .await;
            return if ran.ok {
                Ok(ran.detail)
            } else {
                Err(ran.detail)
            };
        }
        // Hosts that must take the traffic may still be reconnecting (a
        // coordinator that just took over): give them a while.
        let up_site = match toward {
            Toward::Target => d.target_site(),
            Toward::Source => d.source_site(),
        };
        let deadline = tokio::time::Instant::now() + WEIGHT_TIMEOUT;
        while self.instances(d, &up_site).iter().any(|i| !i.3)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let target = self.instances(d, &d.target_site());
        let source = self.instances(d, &d.source_site());
        if target.is_empty() {
            return Err(format!(
                "no instance of {} on {}",
                d.plan.service,
                d.target_site()
            ));
        }
        // Up first, then down, so both serve in between. Toward the DR
        // site: held weights (it is configured at 0); a fail-back, and the
        // abort of a drill, put every configured weight back; the abort of
        // a fail-back puts the DR site's held weights back.
        let (up, down, up_weight, down_weight, up_site, down_site) = match (toward, d.kind) {
            (Toward::Target, Kind::Failback) => (
                &target,
                &source,
                None,
                None,
                d.target_site(),
                d.source_site(),
            ),
            (Toward::Target, _) => (
                &target,
                &source,
                Some(BASE_WEIGHT),
                Some(0),
                d.target_site(),
                d.source_site(),
            ),
            (Toward::Source, Kind::Failback) => (
                &source,
                &target,
                Some(BASE_WEIGHT),
                Some(0),
                d.source_site(),
                d.target_site(),
            ),
            (Toward::Source, _) => (
                &source,
                &target,
                None,
                None,
                d.source_site(),
                d.target_site(),
            ),
        };
        let generation = now_ms() / 1000;
        let failed: Vec<String> = (self.set_weights(d, up, up_weight, generation, 0).await)
            .into_iter()
            .filter_map(Result::err)
            .collect();
        if !failed.is_empty() {
            return Err(format!("raising {up_site}: {}", failed.join("; ")));
        }
        let reachable: Vec<(String, String, String, bool)> =
            down.iter().filter(|i| i.3).cloned().collect();
        let gone: Vec<&str> = down.iter().filter(|i| !i.3).map(|i| i.2.as_str()).collect();
        let failed: Vec<String> = (self
            .set_weights(d, &reachable, down_weight, generation, 1)
            .await)
            .into_iter()
            .filter_map(Result::err)
            .collect();
        let weight_text = |w: Option<u32>| match w {
            Some(w) => format!("at weight {w}"),
            None => "at their configured weight".to_string(),
        };
        let mut detail = format!(
            "{} instance(s) on {up_site} {}, {} on {down_site} {}",
            up.len(),
            weight_text(up_weight),
            reachable.len(),
            weight_text(down_weight),
        );
        if !gone.is_empty() {
            detail.push_str(&format!(
                "; not connected, left to HAProxy's checks: {}",
                gone.join(", ")
            ));
        }
        if failed.is_empty() {
            Ok(detail)
        } else {
            Err(format!("lowering {down_site}: {}", failed.join("; ")))
        }
    }

    /// Sends a weight command to each instance and waits for every answer,
    /// within [`WEIGHT_TIMEOUT`] for all. An instance whose answer has not
    /// come is sent the same command again every [`RESEND_EVERY`] on its
    /// host's session as it is then: an agent that reconnected (or was
    /// not connected yet) gets it on its new session, and answers an id
    /// it has seen from its journal without setting the weight twice.
    async fn set_weights(
        &self,
        d: &Drill,
        instances: &[(String, String, String, bool)],
        weight: Option<u32>,
        generation: i64,
        half: u32,
    ) -> Vec<Result<(), String>> {
        // A fresh id each time (the agent answers a repeated id from its
        // journal): the second, then which half of the switch.
        let attempt = u32::try_from(generation.rem_euclid(100_000_000))
            .unwrap_or(0)
            .saturating_mul(2)
            .saturating_add(half);
        let mut waits = Vec::new();
        for (host, name, id, _) in instances {
            let cmd_id = format!("{COMMAND_OWNER}{}/{id}/weight/{attempt}", d.id);
            let (tx, rx) = oneshot::channel();
            lock(&self.pending).insert(cmd_id.clone(), tx);
            let msg = CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Command(Command {
                    id: cmd_id.clone(),
                    instance: name.clone(),
                    timeout_ms: u32::try_from(WEIGHT_TIMEOUT.as_millis()).unwrap_or(u32::MAX),
                    epoch: self.epoch,
                    traceparent: drover_telemetry::traceparent(&tracing::Span::current())
                        .unwrap_or_default(),
                    kind: Some(command::Kind::SetWeight(SetWeightCommand {
                        weight: weight.unwrap_or(0),
                        restore: weight.is_none(),
                    })),
                })),
            };
            let sent = self.send(host, &msg).await;
            waits.push((host, id, cmd_id, msg, sent, rx));
        }
        let deadline = tokio::time::Instant::now() + WEIGHT_TIMEOUT;
        let mut out = Vec::new();
        for (host, id, cmd_id, msg, mut sent, mut rx) in waits {
            let answer = loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break None;
                }
                match tokio::time::timeout(left.min(RESEND_EVERY), &mut rx).await {
                    Ok(Ok(outcome)) => break Some(outcome),
                    Ok(Err(_)) => break None,
                    Err(_) => sent |= self.send(host, &msg).await,
                }
            };
            out.push(match answer {
                Some(CommandOutcome::Ok) => Ok(()),
                Some(CommandOutcome::Failed(why)) => Err(format!("{id}: {why}")),
                Some(CommandOutcome::TimedOut) => Err(format!("{id}: timed out")),
                None => {
                    lock(&self.pending).remove(&cmd_id);
                    Err(if sent {
                        format!(
                            "{id}: no answer within {}",
                            humantime::format_duration(WEIGHT_TIMEOUT)
                        )
                    } else {
                        format!(
                            "{id}: its host was not connected within {}",
                            humantime::format_duration(WEIGHT_TIMEOUT)
                        )
                    })
                }
            });
        }
        out
    }

    /// Sends a message on the host's session as it is now; false when it
    /// has none (or it just closed).
    async fn send(&self, host: &str, msg: &CoordinatorMessage) -> bool {
        match self.registry.session_sender(host) {
            Some(tx) => tx.send(Ok(msg.clone())).await.is_ok(),
            None => false,
        }
    }
}
