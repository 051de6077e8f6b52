//! The tokio side of one running rollout: it waits for the registry, the
//! agents, the operator and the clock, hands what they said to the
//! [`Driver`], stores what a pass asks to store, then sends its commands
//! and publishes its status. It decides nothing the simulator would need
//! to see.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, watch};

use super::driver::{Driver, Event, Outgoing, Pass, UpdateKind};
use super::trace::RolloutTrace;
use super::{Meta, Msg, Reply, Rollouts, RunnerError, Snapshot, lock, wire};
use crate::registry::HostChange;
use crate::rollout::{CommandId, CommandKind, Millis, Outcome, Phase, RolloutEvent, StopReason};

/// Inputs taken together before one pass (one write and the sends after it).
const MAX_BATCH: usize = 512;
/// Registry changes looked at in one pass at most. Most say nothing new,
/// so inputs alone would not bound a pass while thousands of hosts report.
const MAX_CHANGES: usize = 4096;

/// Where a rollout's time comes from: unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        Millis(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        )
    }
}

pub(super) struct Task {
    rollouts: Arc<Rollouts>,
    driver: Driver,
    meta: Meta,
    events: Arc<Mutex<Vec<RolloutEvent>>>,
    snap_tx: watch::Sender<Arc<Snapshot>>,
    /// Pre-traffic hooks running: `(attempt, ok, detail)` when done.
    hooks: tokio::task::JoinSet<(u32, bool, String)>,
    /// Commands sent and not answered yet: what and when first sent, for
    /// the step durations.
    sent: HashMap<CommandId, (CommandKind, Millis)>,
    trace: RolloutTrace,
}

impl Task {
    pub(super) fn new(
        rollouts: Arc<Rollouts>,
        driver: Driver,
        meta: Meta,
        events: Arc<Mutex<Vec<RolloutEvent>>>,
        snap_tx: watch::Sender<Arc<Snapshot>>,
        trace: RolloutTrace,
    ) -> Task {
        Task {
            rollouts,
            driver,
            meta,
            events,
            snap_tx,
            hooks: tokio::task::JoinSet::new(),
            sent: HashMap::new(),
            trace,
        }
    }

    fn now(&self) -> Millis {
        self.rollouts.clock.now()
    }

    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        self.snap_tx.borrow().clone()
    }

    /// The first pass: the engine's opening outputs (stored before this
    /// returns) and, for a fresh start, the registry as it is now (health
    /// may have changed between the engine's read and the subscription).
    /// A restored rollout waits for its hosts to come back instead.
    pub(super) async fn open(&mut self, fresh: bool) {
        if fresh {
            self.resync();
        }
        let pass = self.driver.pass(self.now());
        self.perform(pass, Vec::new()).await;
        self.publish();
    }

    /// Feeds the registry's current view of every host of the rollout.
    fn resync(&mut self) {
        let registry = self.rollouts.registry.clone();
        let service = self.driver.service().to_string();
        let hosts: Vec<String> = self.driver.hosts().map(str::to_string).collect();
        for h in hosts {
            if let Some(view) = registry.with_host(&h, |host| wire::host_view(host, &service)) {
                self.driver.push(Event::Host(view));
            }
        }
    }

    fn on_change(&mut self, change: &HostChange) {
        if self.driver.wants_host(&change.host.host_id) {
            let view = wire::host_view(&change.host, self.driver.service());
            self.driver.push(Event::Host(view));
        }
    }

    fn take(&mut self, msg: Msg, replies: &mut Vec<Reply>) {
        match msg {
            Msg::Event(e) => {
                self.observe_step(&e);
                if let Event::Update { from, update } = &e {
                    self.trace.update(from, update);
                }
                self.driver.push(e);
            }
            Msg::Action(a, reply) => {
                self.driver.push(Event::Operator(a));
                replies.push(reply);
            }
        }
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<Msg>,
        mut changes: broadcast::Receiver<HostChange>,
    ) {
        let id = self.driver.engine().id().to_string();
        let shutdown = self.rollouts.shutdown.clone();
        while !self.driver.is_done() {
            let now = self.now();
            let wake = Duration::from_millis(self.driver.next_wake(now).0.saturating_sub(now.0));
            let mut replies = Vec::new();
            // At most one resync per pass: it reads the registry as it is
            // now, which covers whatever was missed since.
            let mut resynced = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wake) => self.driver.push(Event::Tick),
                Some(done) = self.hooks.join_next(), if !self.hooks.is_empty() => {
                    self.driver.push(hook_event(done));
                }
                msg = rx.recv() => match msg {
                    Some(m) => self.take(m, &mut replies),
                    None => return,
                },
                change = changes.recv() => match change {
                    Ok(c) => self.on_change(&c),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.resync();
                        resynced = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            // Take whatever else is queued, so one write covers it all.
            while self.driver.queued() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => self.take(m, &mut replies),
                    Err(_) => break,
                }
            }
            let mut looked = 0;
            while self.driver.queued() < MAX_BATCH && looked < MAX_CHANGES {
                looked += 1;
                match changes.try_recv() {
                    Ok(c) => self.on_change(&c),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => {
                        if !resynced {
                            self.resync();
                            resynced = true;
                        }
                    }
                    Err(_) => break,
                }
            }
            let pass = self.driver.pass(self.now());
            if !self.perform(pass, replies).await {
                return;
            }
        }
        let strategy = self.driver.engine().state().spec().strategy;
        (self.rollouts.metrics).rollout_ended(strategy, self.driver.engine().outcome());
        let outcome = self.driver.engine().outcome().cloned();
        let outcome = outcome.filter(|_| self.driver.halted().is_none());
        self.trace.finish(self.driver.engine(), outcome.as_ref());
        match self.driver.halted() {
            Some(why) => tracing::error!(rollout = %id, reason = %why, "rollout halted"),
            None => {
                tracing::info!(rollout = %id, outcome = ?self.driver.engine().outcome(), "rollout finished");
            }
        }
    }

    /// Stores, then sends, then publishes and answers. Returns false when
    /// the coordinator is shutting down before the write succeeded.
    async fn perform(&mut self, pass: Pass, replies: Vec<Reply>) -> bool {
        if pass.ignored > 0 {
            (self.rollouts.metrics.updates_ignored).inc_by(pass.ignored as u64);
        }
        if pass.halt.is_some() {
            self.halted();
        }
        self.trace.pass(self.driver.engine(), &pass);
        if !pass.writes.is_empty() {
            match self.write(pass.writes).await {
                Ok(()) => {}
                Err(Stop::Shutdown) => {
                    for reply in replies {
                        let _ = reply.send(Err(RunnerError::ShuttingDown));
                    }
                    return false;
                }
                Err(Stop::Terminal(why)) => {
                    self.driver.halt(why);
                    self.halted();
                    let snap = self.snapshot();
                    for reply in replies {
                        let _ = reply.send(Ok(snap.clone()));
                    }
                    return true;
                }
            }
        }
        if let Some(j) = &pass.judgement {
            let (id, service) = (self.driver.engine().id(), self.driver.service());
            self.rollouts.metrics.canary_look(id, service, j);
        }
        lock(&self.events).extend(pass.events);
        for send in &pass.sends {
            self.send(send);
        }
        for run in pass.hooks {
            let hooks = self.rollouts.hooks.clone();
            let (rollout, service) = (
                self.driver.engine().id().to_string(),
                self.driver.service().to_string(),
            );
            self.hooks.spawn(async move {
                let (ok, detail) = super::hooks::run(&rollout, &service, &run, &hooks).await;
                (run.attempt, ok, detail)
            });
        }
        if pass.publish {
            self.publish();
        }
        let snap = self.snapshot();
        for reply in replies {
            let _ = reply.send(Ok(snap.clone()));
        }
        true
    }

    /// The rollout cannot go on: its status says why, a metric counts it.
    fn halted(&mut self) {
        self.rollouts.metrics.rollout_store_failures.inc();
        self.publish();
    }

    /// Retries while the store says it may help, until the coordinator
    /// stops: nothing may be sent before its transition is stored.
    async fn write(&self, writes: Vec<(String, Vec<u8>)>) -> Result<(), Stop> {
        let mut delay = Duration::from_millis(100);
        loop {
            match self.rollouts.store.put_many(writes.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(rollout = %self.driver.engine().id(), error = %e, "storing rollout state failed; holding its commands and retrying");
                    tokio::select! {
                        _ = self.rollouts.shutdown.cancelled() => return Err(Stop::Shutdown),
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    return Err(Stop::Terminal(format!(
                        "the store refused the rollout's state ({e}); nothing more is sent. Fix the store and restart the coordinator to resume the rollout from its last stored step"
                    )));
                }
            }
        }
    }

    /// Hands a command to its host's session. A host that is not connected
    /// gets it again when it is back (the driver asks again on reconnect);
    /// a full session queue is not waited for (a slow agent must not stall
    /// the rollout): the driver asks again shortly.
    fn send(&mut self, send: &Outgoing) {
        let now = self.now();
        (self.sent.entry(send.id.clone())).or_insert_with(|| (send.kind.clone(), now));
        let Some(tx) = self.rollouts.registry.session_sender(&send.host) else {
            tracing::debug!(command = %send.id, host = %send.host, "host not connected; the command goes out when it is back");
            return;
        };
        tracing::debug!(command = %send.id, host = %send.host, "sending command");
        let traceparent = self.trace.send(send);
        match tx.try_send(Ok(wire::command(send, self.rollouts.epoch, traceparent))) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.rollouts.metrics.commands_undelivered.inc();
                tracing::warn!(command = %send.id, host = %send.host, "the agent's session queue is full; asking again shortly");
                self.driver.push(Event::Undelivered {
                    host: send.host.clone(),
                });
            }
        }
    }

    fn publish(&mut self) {
        let mut status = self.driver.status();
        if let Some(why) = self.driver.halted() {
            status.phase = Phase::Failed;
            let why = StopReason::Halted {
                why: why.to_string(),
            };
            status.reason = Some(why.clone());
            status.outcome = Some(Outcome::Failed { reason: why });
            status.finished_at = Some(self.now());
        }
        let snap = Snapshot {
            status,
            progress: self.driver.progress().clone(),
            events: lock(&self.events).len(),
            started_by: self.meta.started_by.clone(),
            spec_toml: self.meta.spec_toml.clone(),
            selector: self.driver.engine().state().spec().selector.clone(),
            trace_id: self.meta.trace_id(),
        };
        (self.rollouts.metrics).rollout_capacity(
            &snap.status.id,
            &snap.status.service,
            snap.status.capacity,
            snap.status.floor,
        );
        self.snap_tx.send_replace(Arc::new(snap));
    }

    /// A result from the host that runs the instance ends a step sent
    /// from here: its duration goes to the metrics.
    fn observe_step(&mut self, e: &Event) {
        let Event::Update { from, update } = e else {
            return;
        };
        let UpdateKind::Result(outcome) = &update.kind else {
            return;
        };
        if update.id.host() != Some(from.as_str()) {
            return;
        }
        if let Some((kind, at)) = self.sent.remove(&update.id) {
            let took = self.now().since(at);
            self.rollouts.metrics.rollout_step(&kind, outcome, took);
        }
    }
}

enum Stop {
    Shutdown,
    Terminal(String),
}

/// A finished hook run as the driver takes it; a run that panicked or was
/// cancelled failed.
fn hook_event(done: Result<(u32, bool, String), tokio::task::JoinError>) -> Event {
    match done {
        Ok((attempt, ok, detail)) => Event::HookDone {
            attempt,
            ok,
            detail,
        },
        Err(e) => Event::HookDone {
            // Unknown run: the engine ignores it, and the progress
            // deadline ends a hook that never answers.
            attempt: 0,
            ok: false,
            detail: format!("the hook's task ended: {e}"),
        },
    }
}
