//! One task per instance: combines what the runtime observes (running,
//! crashed, ...) with the health check's verdict into the
//! [`InstanceStatus`] the agent reports, and publishes it on the
//! [`StatusBoard`] that the session reads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use drover_proto::v1::{
    AppMetrics, DrainMethod, HealthState, InstanceStatus, LoadBalancerView, Release, RuntimeState,
};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::InstanceConfig;
use crate::health::{HealthCheck, HealthTracker};
use crate::runtime::{self, RuntimeError, RuntimeHandle, RuntimeStatus};
use crate::state::StateFile;

/// The latest status of every instance, one slot per configured instance.
/// Watchers are woken only by changes that matter to the coordinator
/// (state, health, pid, restarts, drain, release, a load balancer's state
/// or weight), not by every check's latency or counters nor a view's read
/// time; those ride along in the next report.
///
/// The instance's supervisor publishes all but `load_balancers`, which
/// [`crate::drain::view`] and the drain steps publish.
#[derive(Debug, Clone)]
pub struct StatusBoard {
    tx: Arc<watch::Sender<Vec<InstanceStatus>>>,
    /// When each (instance, load balancer) view on the board was asked
    /// for: the answer to an older question never replaces a newer one
    /// (an undrain's fresh UP is not undone by a read that was already
    /// under way).
    asked: Arc<Mutex<HashMap<(usize, usize), Instant>>>,
    /// One per instance: held by whoever changes the instance's weight in
    /// its load balancers (a SetWeight step, or the view reader setting a
    /// lost weight again), so that neither undoes the other.
    weight_locks: Arc<Vec<tokio::sync::Mutex<()>>>,
}

/// A load balancer's view of one instance, for the board.
#[derive(Debug, Clone)]
pub struct ViewUpdate {
    /// The instance's slot on the board.
    pub index: usize,
    /// The load balancer's place in its `load_balancers`.
    pub slot: usize,
    /// When the load balancer was asked (before its answer).
    pub asked: Instant,
    pub view: LoadBalancerView,
}

impl StatusBoard {
    pub fn new(initial: Vec<InstanceStatus>) -> StatusBoard {
        let locks = (0..initial.len())
            .map(|_| tokio::sync::Mutex::new(()))
            .collect();
        StatusBoard {
            tx: Arc::new(watch::Sender::new(initial)),
            asked: Arc::new(Mutex::new(HashMap::new())),
            weight_locks: Arc::new(locks),
        }
    }

    /// The lock over instance `index`'s weight in its load balancers.
    pub fn weight_lock(&self, index: usize) -> Option<&tokio::sync::Mutex<()>> {
        self.weight_locks.get(index)
    }

    /// The weight instance `index` is to have in its load balancers
    /// (None: the configured one, nothing held). A change wakes the
    /// watchers.
    pub fn set_desired_weight(&self, index: usize, weight: Option<u32>) {
        self.tx.send_if_modified(|all| {
            let Some(slot) = all.get_mut(index) else {
                return false;
            };
            let (set, held) = (weight.unwrap_or(0), weight.is_some());
            let changed = slot.weight_set != set || slot.weight_held != held;
            slot.weight_set = set;
            slot.weight_held = held;
            changed
        });
    }

    /// The weight held for instance `index`, if any.
    pub fn desired_weight(&self, index: usize) -> Option<u32> {
        let all = self.tx.borrow();
        let slot = all.get(index)?;
        slot.weight_held.then_some(slot.weight_set)
    }

    /// Counts one re-assertion of instance `index`'s weight (a load
    /// balancer had lost it); wakes the watchers.
    pub fn count_reasserted(&self, index: usize) {
        self.tx.send_if_modified(|all| match all.get_mut(index) {
            Some(slot) => {
                slot.weight_reasserted = slot.weight_reasserted.saturating_add(1);
                true
            }
            None => false,
        });
    }

    /// The instance's own metrics, read now: no news by themselves, they
    /// ride along with the next report.
    pub fn set_app_metrics(&self, index: usize, metrics: AppMetrics) {
        self.tx.send_if_modified(|all| {
            if let Some(slot) = all.get_mut(index) {
                slot.app_metrics = Some(metrics);
            }
            false
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<Vec<InstanceStatus>> {
        self.tx.subscribe()
    }

    pub fn snapshot(&self) -> Vec<InstanceStatus> {
        self.tx.borrow().clone()
    }

    pub fn get(&self, index: usize) -> Option<InstanceStatus> {
        self.tx.borrow().get(index).cloned()
    }

    fn set(&self, index: usize, new: InstanceStatus) {
        self.tx.send_if_modified(|all| {
            let Some(slot) = all.get_mut(index) else {
                return false;
            };
            let mut new = new;
            // Fields others publish: the load balancers' views, the
            // weight commands keep, the instance's own metrics.
            new.load_balancers.clone_from(&slot.load_balancers);
            new.weight_set = slot.weight_set;
            new.weight_held = slot.weight_held;
            new.weight_reasserted = slot.weight_reasserted;
            new.app_metrics.clone_from(&slot.app_metrics);
            if *slot == new {
                return false;
            }
            let significant = !same_outline(slot, &new);
            *slot = new;
            significant
        });
    }

    /// Puts each update's view in its instance's `load_balancers`, unless
    /// a view asked for later is there already; wakes the watchers when a
    /// state or weight changed.
    pub fn set_views(&self, updates: &[ViewUpdate]) {
        let mut asked = self.asked.lock().unwrap_or_else(|e| e.into_inner());
        self.tx.send_if_modified(|all| {
            let mut significant = false;
            for u in updates {
                let key = (u.index, u.slot);
                if asked.get(&key).is_some_and(|newer| *newer > u.asked) {
                    continue;
                }
                let Some(old) = all
                    .get_mut(u.index)
                    .and_then(|s| s.load_balancers.get_mut(u.slot))
                else {
                    continue;
                };
                asked.insert(key, u.asked);
                significant |= !same_view(old, &u.view);
                old.clone_from(&u.view);
            }
            significant
        });
    }
}

fn same_view(a: &LoadBalancerView, b: &LoadBalancerView) -> bool {
    a.balancer == b.balancer && a.state == b.state && a.weight == b.weight
}

fn same_outline(a: &InstanceStatus, b: &InstanceStatus) -> bool {
    a.state == b.state
        && a.health == b.health
        && a.pid == b.pid
        && a.restarts == b.restarts
        && a.drained == b.drained
        && a.release == b.release
        && a.weight_set == b.weight_set
        && a.weight_held == b.weight_held
        && a.weight_reasserted == b.weight_reasserted
        && a.load_balancers.len() == b.load_balancers.len()
        && a.load_balancers
            .iter()
            .zip(&b.load_balancers)
            .all(|(a, b)| same_view(a, b))
}

/// The status an instance has before its runtime has said anything.
pub fn initial_status(cfg: &InstanceConfig, host_id: &str) -> InstanceStatus {
    InstanceStatus {
        id: cfg.id(host_id),
        name: cfg.name.clone(),
        service: cfg.service.clone(),
        runtime: cfg.runtime.kind().to_string(),
        state: RuntimeState::Unspecified as i32,
        restarts: 0,
        pid: 0,
        health: if cfg.health.is_some() {
            HealthState::Unknown
        } else {
            HealthState::None
        } as i32,
        last_check_latency_ms: 0,
        consecutive_successes: 0,
        consecutive_failures: 0,
        last_check_error: String::new(),
        release: Some(Release::default()),
        drained: false,
        load_balancers: crate::drain::view::unread(&cfg.drain),
        drain: drain_method(&cfg.drain) as i32,
        color: cfg
            .color
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        app_metrics: None,
        weight_set: 0,
        weight_held: false,
        weight_reasserted: 0,
    }
}

/// The wire's name for how an instance is drained, so that the CLI can warn
/// before a rollout stops instances that no load balancer was told about.
fn drain_method(drain: &crate::config::DrainConfig) -> DrainMethod {
    use crate::config::DrainConfig;
    match drain {
        DrainConfig::None => DrainMethod::None,
        DrainConfig::Haproxy(_) => DrainMethod::Haproxy,
        DrainConfig::Exec(_) => DrainMethod::Exec,
    }
}

/// What commands set about an instance, as opposed to what the runtime
/// and the health check observe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    pub drained: bool,
    pub release: Release,
    /// The pid a verify step last found healthy (0: none).
    pub verified_pid: u32,
}

/// What command execution needs of a supervised instance; cheap to clone.
#[derive(Debug, Clone)]
pub struct InstanceHandle {
    runtime: RuntimeHandle,
    meta: Arc<watch::Sender<Meta>>,
    board: StatusBoard,
    index: usize,
}

impl InstanceHandle {
    pub fn runtime(&self) -> &RuntimeHandle {
        &self.runtime
    }

    pub fn status(&self) -> Option<InstanceStatus> {
        self.board.get(self.index)
    }

    pub fn meta(&self) -> Meta {
        self.meta.borrow().clone()
    }

    pub fn set_drained(&self, drained: bool) {
        self.meta.send_if_modified(|m| {
            let changed = m.drained != drained;
            m.drained = drained;
            changed
        });
    }

    /// A verify step found process `pid` healthy: its health is reported
    /// as Healthy from now on, without waiting for the supervisor's own
    /// checks to rise (they go on, and a failure counts as usual).
    pub fn set_verified(&self, pid: u32) {
        self.meta.send_if_modified(|m| {
            let changed = m.verified_pid != pid;
            m.verified_pid = pid;
            changed
        });
    }

    /// What the load balancers said of the instance when asked at
    /// `asked` (one view per load balancer, in config order), read by a
    /// drain step.
    pub fn set_load_balancers(&self, views: Vec<LoadBalancerView>, asked: Instant) {
        let updates: Vec<ViewUpdate> = views
            .into_iter()
            .enumerate()
            .map(|(slot, view)| ViewUpdate {
                index: self.index,
                slot,
                asked,
                view,
            })
            .collect();
        self.board.set_views(&updates);
    }

    /// The board the instance publishes on, and its slot there.
    pub fn board(&self) -> (&StatusBoard, usize) {
        (&self.board, self.index)
    }

    pub fn set_release(&self, release: Release) {
        self.meta.send_if_modified(|m| {
            let changed = m.release != release;
            m.release = release;
            changed
        });
    }
}

/// A running instance supervisor. Dropping it stops the supervision, not
/// the instance.
#[derive(Debug)]
pub struct Supervisor {
    name: String,
    handle: InstanceHandle,
    cancel: CancellationToken,
    /// The instance's two tasks: its runtime and its status/health loop.
    tasks: TaskTracker,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Supervisor {
    /// Starts (or adopts) the instance and its health checks. Publishes
    /// into `board[index]`. An instance that a stop command left stopped
    /// (see [`crate::state`]) stays stopped; the drained flag and the
    /// release in `<deploy_dir>/current` are reported from the start.
    pub async fn start(
        cfg: &InstanceConfig,
        host_id: &str,
        data_dir: &Path,
        board: StatusBoard,
        index: usize,
        shutdown: &CancellationToken,
    ) -> Result<Supervisor, RuntimeError> {
        let cancel = shutdown.child_token();
        let saved = StateFile::new(&crate::config::instance_dir(data_dir, &cfg.name)).load();
        let meta = Meta {
            drained: saved.drained,
            release: cfg
                .deploy
                .as_ref()
                .and_then(|d| crate::deploy::current_release(d).ok().flatten())
                .unwrap_or_default(),
            verified_pid: 0,
        };
        let tasks = TaskTracker::new();
        let runtime = runtime::spawn(cfg, data_dir, saved.desired, cancel.clone(), &tasks).await?;
        let meta = Arc::new(watch::Sender::new(meta));
        board.set_desired_weight(index, saved.weight);
        let mut status = initial_status(cfg, host_id);
        status.drained = meta.borrow().drained;
        status.release = Some(meta.borrow().release.clone());
        let mut task = InstanceTask {
            status,
            check: cfg.health.as_ref().map(HealthCheck::new),
            tracker: cfg
                .health
                .as_ref()
                .map(|h| HealthTracker::new(h.rise, h.fall)),
            board: board.clone(),
            index,
        };
        task.publish(runtime.status());
        let interval = cfg.health.as_ref().map(|h| h.interval);
        tasks.spawn(task.run(
            runtime.subscribe(),
            meta.subscribe(),
            interval,
            cancel.clone(),
        ));
        Ok(Supervisor {
            name: cfg.name.clone(),
            handle: InstanceHandle {
                runtime,
                meta,
                board,
                index,
            },
            cancel,
            tasks,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> Option<InstanceStatus> {
        self.handle.status()
    }

    pub fn runtime(&self) -> &RuntimeHandle {
        &self.handle.runtime
    }

    /// The handle command execution works through.
    pub fn handle(&self) -> InstanceHandle {
        self.handle.clone()
    }

    /// Stops the instance (stop signal, then SIGKILL after stop_timeout).
    pub async fn stop(&self) -> Result<(), RuntimeError> {
        self.handle.runtime.stop().await
    }

    /// Starts the instance again after a stop.
    pub async fn start_instance(&self) -> Result<(), RuntimeError> {
        self.handle.runtime.start().await
    }

    /// Ends supervision (the instance keeps running) and waits for the
    /// instance's tasks to finish.
    pub async fn detach(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

struct InstanceTask {
    status: InstanceStatus,
    check: Option<HealthCheck>,
    tracker: Option<HealthTracker>,
    board: StatusBoard,
    index: usize,
}

impl InstanceTask {
    async fn run(
        mut self,
        mut runtime: watch::Receiver<RuntimeStatus>,
        mut meta: watch::Receiver<Meta>,
        interval: Option<std::time::Duration>,
        cancel: CancellationToken,
    ) {
        // The first check comes one interval in: a process that was just
        // started gets that long to come up before it is judged.
        let mut ticker = interval.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        // Whatever happened between start and now counts: publish it
        // before waiting for the next change.
        let first = *runtime.borrow_and_update();
        self.publish(first);
        let mut was_running = first.is_running();
        loop {
            let running = runtime.borrow().is_running();
            tokio::select! {
                _ = cancel.cancelled() => break,
                changed = meta.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let m = meta.borrow_and_update().clone();
                    self.status.drained = m.drained;
                    self.status.release = Some(m.release);
                    let rt = *runtime.borrow();
                    if m.verified_pid != 0 && rt.is_running() && rt.pid == m.verified_pid
                        && let Some(tracker) = self.tracker.as_mut()
                    {
                        tracker.verified();
                    }
                    self.publish(rt);
                }
                changed = runtime.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let rt = *runtime.borrow_and_update();
                    if rt.is_running() && !was_running {
                        // Give a freshly started process one interval to
                        // come up before the first check.
                        if let Some(t) = ticker.as_mut() {
                            t.reset();
                        }
                    }
                    was_running = rt.is_running();
                    self.publish(rt);
                }
                _ = async {
                    match ticker.as_mut() {
                        Some(t) => { t.tick().await; }
                        None => std::future::pending::<()>().await,
                    }
                }, if running => {
                    let Some(check) = self.check.as_ref() else { continue };
                    let outcome = tokio::select! {
                        _ = cancel.cancelled() => break,
                        outcome = check.run() => outcome,
                    };
                    // The process may have stopped while the check ran; its
                    // result then says nothing about the new run.
                    if !runtime.borrow().is_running() {
                        continue;
                    }
                    if let Some(tracker) = self.tracker.as_mut() {
                        tracker.record(&outcome.0, outcome.1);
                    }
                    let rt = *runtime.borrow();
                    self.publish(rt);
                }
            }
        }
    }

    fn publish(&mut self, rt: RuntimeStatus) {
        let s = &mut self.status;
        s.state = rt.state as i32;
        s.pid = rt.pid;
        s.restarts = rt.restarts;
        if let Some(tracker) = self.tracker.as_mut() {
            if !rt.is_running() {
                tracker.reset();
            }
            s.health = match (rt.state, tracker.state) {
                (RuntimeState::Running, h) => h,
                // A stopped, crashed or never deployed instance serves nothing.
                (
                    RuntimeState::Stopped
                    | RuntimeState::Crashed
                    | RuntimeState::Stopping
                    | RuntimeState::NotDeployed,
                    _,
                ) => HealthState::Unhealthy,
                _ => HealthState::Unknown,
            } as i32;
            s.consecutive_successes = tracker.consecutive_successes;
            s.consecutive_failures = tracker.consecutive_failures;
            s.last_check_latency_ms = tracker.last_latency_ms;
            s.last_check_error = if rt.is_running() {
                tracker.last_error.clone()
            } else {
                "instance is not running".to_string()
            };
        }
        self.board.set(self.index, self.status.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The green one of a blue-green pair.
    fn green() -> InstanceConfig {
        let text = r#"
host_id = "h1"
data_dir = "/tmp/x"
coordinators = ["127.0.0.1:1"]
[[instance]]
name = "web-blue"
service = "web"
color = "blue"
command = "/bin/true"
deploy_dir = "/srv/blue"
[[instance]]
name = "web-green"
service = "web"
color = "green"
command = "/bin/true"
deploy_dir = "/srv/green"
"#;
        crate::config::Config::parse(text, Path::new("agent.toml"))
            .expect("valid")
            .instances
            .remove(1)
    }

    #[test]
    fn the_color_is_reported_and_command_owned_fields_survive_the_supervisors_updates() {
        let status = initial_status(&green(), "h1");
        assert_eq!(
            (status.id.as_str(), status.color.as_str()),
            ("web-green@h1", "green")
        );
        let board = StatusBoard::new(vec![status.clone()]);
        let mut rx = board.subscribe();
        rx.borrow_and_update();

        // Metrics are no news; a held weight and a re-assertion are.
        board.set_app_metrics(
            0,
            AppMetrics {
                requests: 7,
                ..AppMetrics::default()
            },
        );
        assert!(!rx.has_changed().expect("open"));
        board.set_desired_weight(0, Some(25));
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();
        assert_eq!(board.desired_weight(0), Some(25));
        board.set_desired_weight(0, Some(25));
        assert!(
            !rx.has_changed().expect("open"),
            "the same weight is no news"
        );
        board.count_reasserted(0);
        assert!(rx.has_changed().expect("open"));
        rx.borrow_and_update();

        // The supervisor publishes its own fields without undoing those.
        let mut from_supervisor = status;
        from_supervisor.restarts = 1;
        board.set(0, from_supervisor);
        let now = board.get(0).expect("slot");
        assert_eq!(
            (
                now.restarts,
                now.weight_set,
                now.weight_held,
                now.weight_reasserted
            ),
            (1, 25, true, 1)
        );
        assert_eq!(now.app_metrics.map(|m| m.requests), Some(7));
        board.set_desired_weight(0, None);
        assert_eq!(board.desired_weight(0), None);
        assert_eq!(
            board.get(0).map(|s| (s.weight_set, s.weight_held)),
            Some((0, false))
        );
    }
}
