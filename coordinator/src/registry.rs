//! The host registry: every enrolled host, its live session if any, its last
//! health, and the certificates issued to it.
//!
//! The in-memory map is the source of truth while running; it is persisted
//! through the [`Store`] so that after a restart the fleet is listed before
//! any agent reconnects. Status changes are written promptly; other changes
//! are batched (one flush every few seconds) because at fleet scale reports
//! arrive thousands of times a second. What a health-only report changes
//! (host metrics, check latency and counts, the load balancers' counters) is
//! written with those batches on redb, and kept in memory only on etcd
//! ([`HealthWrites`]): there every key written goes through the quorum and
//! stays in etcd's history until compacted, and a fleet reporting every
//! second would make thousands of writes a second that nobody reads back.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use drover_net::transport::PeerCert;
use drover_proto::v1::{
    CoordinatorMessage, HealthReport, Hello, Host, HostStatus, InstanceStatus, LoadBalancerView,
    host_event,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::selector::Selector;
use crate::store::{Store, StoreError};
use crate::tls::RevocationList;

const HOSTS: &str = "hosts/";
const HOSTMETA: &str = "hostmeta/";
const SERIALS: &str = "serials/";

/// Adds every serial the store records as revoked to `revoked`; how many
/// it holds.
pub async fn load_revoked(
    store: &dyn Store,
    revoked: &RevocationList,
) -> Result<usize, RegistryError> {
    let mut n = 0;
    for (key, bytes) in store.scan_prefix(SERIALS).await? {
        let rec: SerialRecord =
            serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        if rec.revoked {
            revoked.insert(key[SERIALS.len()..].to_string());
            n += 1;
        }
    }
    Ok(n)
}
/// How often health-only changes are written.
const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Hosts encoded per hold of the lock when flushing.
const FLUSH_CHUNK: usize = 256;
/// Changes a `WatchHosts` stream or a rollout may fall behind by before it
/// has to start over from a full read of the registry: about 1.6 s of
/// reports from 10,000 hosts at one a second. Entries are only held while
/// some subscriber has not seen them.
const CHANGES_BUFFER: usize = 16_384;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn system_time_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sends to one agent session; `Err` items end the stream with that status.
pub type SessionSender = mpsc::Sender<Result<CoordinatorMessage, tonic::Status>>;

#[derive(Debug)]
struct Session {
    id: u64,
    cancel: CancellationToken,
    tx: SessionSender,
}

/// What we keep beside the public view of a host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HostMeta {
    /// Labels the operator attached to the join token; they win over the
    /// agent's own.
    token_labels: BTreeMap<String, String>,
    /// Labels from the agent's config, as of its last Hello.
    agent_labels: BTreeMap<String, String>,
}

#[derive(Debug)]
struct Entry {
    host: Host,
    meta: HostMeta,
    session: Option<Session>,
    last_seen: Option<Instant>,
}

/// A certificate the coordinator issued.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SerialRecord {
    pub host_id: String,
    pub not_after_ms: i64,
    pub revoked: bool,
}

/// A change for `WatchHosts` subscribers.
#[derive(Debug, Clone)]
pub struct HostChange {
    pub kind: host_event::Kind,
    pub host: Arc<Host>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no host named `{0}`; `drover agents` lists the known hosts")]
    UnknownHost(String),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt record `{key}` in the store: {reason}")]
    Corrupt { key: String, reason: String },
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownHost(_) => tonic::Status::not_found(e.to_string()),
            RegistryError::Store(ref s) if s.is_retryable() => {
                tonic::Status::unavailable(e.to_string())
            }
            RegistryError::Store(_) | RegistryError::Corrupt { .. } => {
                tonic::Status::internal(e.to_string())
            }
        }
    }
}

/// What the registry does with a report that changes only health figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HealthWrites {
    /// The host is written at the next flush (every few seconds), like any
    /// other change: the embedded redb store, where a flush is one local
    /// transaction, and a restarted coordinator lists figures at most a few
    /// seconds old.
    #[default]
    Batched,
    /// The figures stay in memory with the session; the host is written
    /// only when something else changes (status, labels, version, an
    /// instance's release, state, health, drain or weights). For etcd: a
    /// leader that takes over marks every host lost until its agent
    /// reconnects and reports afresh, so stored figures would only ever be
    /// read stale.
    InMemory,
}

#[derive(Debug, Default)]
struct State {
    hosts: HashMap<String, Entry>,
    dirty: HashSet<String>,
    dirty_meta: HashSet<String>,
    next_session: u64,
}

pub struct Registry {
    state: Mutex<State>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    revoked: Arc<RevocationList>,
    events: broadcast::Sender<HostChange>,
    flush_now: Notify,
    lost_timeout: Duration,
    health_writes: HealthWrites,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

fn status_of(host: &Host) -> HostStatus {
    HostStatus::try_from(host.status).unwrap_or(HostStatus::Unspecified)
}

impl Registry {
    /// Loads every host and issued serial from the store. Hosts that were
    /// connected when the coordinator stopped come back as lost until their
    /// agents reconnect.
    pub async fn load(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        revoked: Arc<RevocationList>,
        lost_timeout: Duration,
    ) -> Result<Registry, RegistryError> {
        let mut hosts = HashMap::new();
        for (key, bytes) in store.scan_prefix(HOSTS).await? {
            let mut host = Host::decode(bytes.as_slice()).map_err(|e| RegistryError::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?;
            if status_of(&host) == HostStatus::Connected {
                host.status = HostStatus::Lost as i32;
                host.status_reason =
                    "coordinator restarted; waiting for the agent to reconnect".into();
            }
            hosts.insert(
                host.host_id.clone(),
                Entry {
                    host,
                    meta: HostMeta::default(),
                    session: None,
                    last_seen: None,
                },
            );
        }
        for (key, bytes) in store.scan_prefix(HOSTMETA).await? {
            let id = &key[HOSTMETA.len()..];
            let meta: HostMeta =
                serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                    key: key.clone(),
                    reason: e.to_string(),
                })?;
            if let Some(entry) = hosts.get_mut(id) {
                entry.meta = meta;
            }
        }
        load_revoked(store.as_ref(), &revoked).await?;
        let lost = hosts
            .values()
            .filter(|e| status_of(&e.host) == HostStatus::Lost)
            .count();
        metrics.agents_lost.set(lost as i64);
        metrics.agents_connected.set(0);
        for e in hosts.values() {
            metrics.host_status(HostStatus::Unspecified, status_of(&e.host));
        }
        let (events, _) = broadcast::channel(CHANGES_BUFFER);
        Ok(Registry {
            state: Mutex::new(State {
                hosts,
                ..State::default()
            }),
            store,
            metrics,
            revoked,
            events,
            flush_now: Notify::new(),
            lost_timeout,
            health_writes: HealthWrites::default(),
        })
    }

    /// Chooses what health-only reports write ([`HealthWrites::Batched`]
    /// unless told otherwise).
    pub fn with_health_writes(mut self, health_writes: HealthWrites) -> Registry {
        self.health_writes = health_writes;
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The coordinator's metrics, for whoever acts on the registry's hosts.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HostChange> {
        self.events.subscribe()
    }

    fn emit(&self, host: &Host) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(HostChange {
                kind: host_event::Kind::Updated,
                host: Arc::new(host.clone()),
            });
        }
    }

    /// Moves a host to `status`, keeping the gauges right.
    fn set_status(&self, host: &mut Host, status: HostStatus, reason: impl Into<String>) {
        let old = status_of(host);
        if old != status {
            match old {
                HostStatus::Connected => self.metrics.agents_connected.dec(),
                HostStatus::Lost => self.metrics.agents_lost.dec(),
                _ => 0,
            };
            match status {
                HostStatus::Connected => self.metrics.agents_connected.inc(),
                HostStatus::Lost => self.metrics.agents_lost.inc(),
                _ => 0,
            };
            host.status = status as i32;
            self.metrics.host_status(old, status);
        }
        host.status_reason = reason.into();
    }

    fn effective_labels(meta: &HostMeta) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = meta.agent_labels.clone().into_iter().collect();
        labels.extend(meta.token_labels.clone());
        labels
    }

    /// Records a certificate issued to `host_id`.
    pub async fn record_serial(&self, cert: &PeerCert) -> Result<(), RegistryError> {
        let rec = SerialRecord {
            host_id: cert.identity.name.clone(),
            not_after_ms: system_time_ms(cert.not_after),
            revoked: false,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| RegistryError::Corrupt {
            key: cert.serial.clone(),
            reason: e.to_string(),
        })?;
        self.store
            .put(&format!("{SERIALS}{}", cert.serial), bytes)
            .await?;
        Ok(())
    }

    /// A host enrolled (or re-enrolled after revocation) with a join token.
    pub async fn enrolled(
        &self,
        host_id: &str,
        token_labels: BTreeMap<String, String>,
    ) -> Result<(), RegistryError> {
        let (host_bytes, meta_bytes) = {
            let mut st = self.lock();
            let entry = st
                .hosts
                .entry(host_id.to_string())
                .or_insert_with(|| Entry {
                    // Unspecified until set_status below counts it enrolled.
                    host: Host {
                        host_id: host_id.to_string(),
                        ..Host::default()
                    },
                    meta: HostMeta::default(),
                    session: None,
                    last_seen: None,
                });
            entry.meta.token_labels = token_labels;
            entry.host.labels = Self::effective_labels(&entry.meta);
            entry.host.enrolled_at_ms = now_ms();
            if status_of(&entry.host) != HostStatus::Connected {
                let mut host = std::mem::take(&mut entry.host);
                self.set_status(
                    &mut host,
                    HostStatus::Enrolled,
                    "enrolled; waiting for the agent to connect",
                );
                entry.host = host;
            }
            let out = (
                entry.host.encode_to_vec(),
                serde_json::to_vec(&entry.meta).unwrap_or_default(),
            );
            self.emit(&entry.host);
            out
        };
        self.store
            .put_many(vec![
                (format!("{HOSTS}{host_id}"), host_bytes),
                (format!("{HOSTMETA}{host_id}"), meta_bytes),
            ])
            .await?;
        Ok(())
    }

    /// An agent opened a session and said Hello. Any older session for the
    /// same host is ended. Returns the session id and its cancel token.
    pub fn connect(
        &self,
        cert: &PeerCert,
        peer_addr: Option<std::net::SocketAddr>,
        hello: Hello,
        tx: SessionSender,
    ) -> (u64, CancellationToken) {
        let host_id = cert.identity.name.clone();
        let cancel = CancellationToken::new();
        let mut st = self.lock();
        st.next_session += 1;
        let id = st.next_session;
        let entry = st.hosts.entry(host_id.clone()).or_insert_with(|| Entry {
            // A certificate from a previous data dir: accept, it is ours.
            host: Host {
                host_id: host_id.clone(),
                ..Host::default()
            },
            meta: HostMeta::default(),
            session: None,
            last_seen: None,
        });
        if let Some(old) = entry.session.take() {
            let _ = old.tx.try_send(Err(tonic::Status::aborted(
                "superseded by a newer session from the same host",
            )));
            old.cancel.cancel();
        }
        entry.session = Some(Session {
            id,
            cancel: cancel.clone(),
            tx,
        });
        entry.last_seen = Some(Instant::now());
        let meta_changed =
            entry.meta.agent_labels != hello.labels.clone().into_iter().collect::<BTreeMap<_, _>>();
        entry.meta.agent_labels = hello.labels.into_iter().collect();
        let mut host = std::mem::take(&mut entry.host);
        host.labels = Self::effective_labels(&entry.meta);
        host.agent_version = hello.agent_version;
        host.instances = hello.instances;
        host.last_seen_ms = now_ms();
        host.cert_serial = cert.serial.clone();
        host.cert_not_after_ms = system_time_ms(cert.not_after);
        host.peer_addr = peer_addr.map(|a| a.to_string()).unwrap_or_default();
        self.set_status(&mut host, HostStatus::Connected, "");
        self.emit(&host);
        entry.host = host;
        st.dirty.insert(host_id.clone());
        if meta_changed {
            st.dirty_meta.insert(host_id);
        }
        drop(st);
        self.flush_now.notify_one();
        (id, cancel)
    }

    /// A health report on session `session`. Reports from a superseded
    /// session are ignored.
    pub fn report(&self, host_id: &str, session: u64, mut report: HealthReport) {
        self.metrics.reports_received.inc();
        let mut st = self.lock();
        let Some(entry) = st.hosts.get_mut(host_id) else {
            return;
        };
        if entry.session.as_ref().map(|s| s.id) != Some(session) {
            return;
        }
        entry.last_seen = Some(Instant::now());
        let mut host = std::mem::take(&mut entry.host);
        host.last_seen_ms = now_ms();
        let urgent = status_of(&host) != HostStatus::Connected;
        let write = urgent
            || self.health_writes == HealthWrites::Batched
            || !same_apart_from_health(&mut host.instances, &mut report.instances);
        host.metrics = report.host;
        host.instances = report.instances;
        if urgent {
            self.set_status(&mut host, HostStatus::Connected, "");
        }
        self.emit(&host);
        entry.host = host;
        if write {
            st.dirty.insert(host_id.to_string());
        }
        drop(st);
        if urgent {
            self.flush_now.notify_one();
        }
    }

    /// Session `session` of `host_id` ended.
    pub fn disconnected(&self, host_id: &str, session: u64, reason: &str) {
        let mut st = self.lock();
        let Some(entry) = st.hosts.get_mut(host_id) else {
            return;
        };
        if entry.session.as_ref().map(|s| s.id) != Some(session) {
            return;
        }
        entry.session = None;
        let mut host = std::mem::take(&mut entry.host);
        if status_of(&host) != HostStatus::Revoked {
            self.set_status(
                &mut host,
                HostStatus::Lost,
                format!("session ended: {reason}"),
            );
        }
        self.emit(&host);
        entry.host = host;
        st.dirty.insert(host_id.to_string());
        drop(st);
        self.flush_now.notify_one();
    }

    /// Marks connected hosts without a recent report as lost.
    pub fn check_lost(&self) {
        let now = Instant::now();
        let mut changed = false;
        let mut st = self.lock();
        let mut lost = Vec::new();
        for (id, entry) in st.hosts.iter_mut() {
            if status_of(&entry.host) != HostStatus::Connected {
                continue;
            }
            let silent = entry
                .last_seen
                .map(|t| now.duration_since(t))
                .unwrap_or(Duration::MAX);
            if silent >= self.lost_timeout {
                let mut host = std::mem::take(&mut entry.host);
                self.set_status(
                    &mut host,
                    HostStatus::Lost,
                    format!(
                        "no report for {}",
                        humantime::format_duration(self.lost_timeout)
                    ),
                );
                tracing::warn!(host = %id, "agent lost: no report within the lost timeout");
                self.emit(&host);
                entry.host = host;
                lost.push(id.clone());
                changed = true;
            }
        }
        st.dirty.extend(lost);
        drop(st);
        if changed {
            self.flush_now.notify_one();
        }
    }

    /// Revokes every certificate issued to `host_id` and ends its session.
    pub async fn revoke(&self, host_id: &str) -> Result<Vec<String>, RegistryError> {
        if !self.lock().hosts.contains_key(host_id) {
            return Err(RegistryError::UnknownHost(host_id.to_string()));
        }
        let mut serials = Vec::new();
        let mut writes = Vec::new();
        for (key, bytes) in self.store.scan_prefix(SERIALS).await? {
            let Ok(mut rec) = serde_json::from_slice::<SerialRecord>(&bytes) else {
                continue;
            };
            if rec.host_id != host_id {
                continue;
            }
            let serial = key[SERIALS.len()..].to_string();
            if !rec.revoked {
                rec.revoked = true;
                if let Ok(b) = serde_json::to_vec(&rec) {
                    writes.push((key.clone(), b));
                }
            }
            serials.push(serial);
        }
        // The serial of the live session too, in case it predates our records.
        let host_bytes = {
            let mut st = self.lock();
            let Some(entry) = st.hosts.get_mut(host_id) else {
                return Err(RegistryError::UnknownHost(host_id.to_string()));
            };
            if !entry.host.cert_serial.is_empty() && !serials.contains(&entry.host.cert_serial) {
                serials.push(entry.host.cert_serial.clone());
            }
            let mut host = std::mem::take(&mut entry.host);
            self.set_status(
                &mut host,
                HostStatus::Revoked,
                "certificates revoked by an operator; re-enrol with a new token",
            );
            self.emit(&host);
            let bytes = host.encode_to_vec();
            entry.host = host;
            bytes
        };
        writes.push((format!("{HOSTS}{host_id}"), host_bytes));
        self.store.put_many(writes).await?;
        for s in &serials {
            self.revoked.insert(s.clone());
        }
        // Only now end the session: the revocation is durable.
        let session = {
            let mut st = self.lock();
            st.hosts.get_mut(host_id).and_then(|e| e.session.take())
        };
        if let Some(s) = session {
            let _ = s.tx.try_send(Err(tonic::Status::permission_denied(
                "this host's certificate has been revoked",
            )));
            s.cancel.cancel();
        }
        Ok(serials)
    }

    pub fn get(&self, host_id: &str) -> Result<Host, RegistryError> {
        self.lock()
            .hosts
            .get(host_id)
            .map(|e| e.host.clone())
            .ok_or_else(|| RegistryError::UnknownHost(host_id.to_string()))
    }

    /// Calls `f` with the host, under the lock and without cloning it;
    /// `None` for an unknown host. `f` must not call back into the registry.
    pub fn with_host<R>(&self, host_id: &str, f: impl FnOnce(&Host) -> R) -> Option<R> {
        self.lock().hosts.get(host_id).map(|e| f(&e.host))
    }

    pub fn list(&self, selector: &Selector) -> Vec<Host> {
        let st = self.lock();
        let mut hosts: Vec<Host> = st
            .hosts
            .values()
            .filter(|e| selector.matches(&e.host.labels.clone().into_iter().collect()))
            .map(|e| e.host.clone())
            .collect();
        drop(st);
        hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        hosts
    }

    /// `(host, instance id, instance name, service)` of every instance on a
    /// connected host that reports holding a weight drover set, read under
    /// the lock without copying the fleet.
    pub fn held_weights(&self) -> Vec<(String, String, String, String)> {
        let st = self.lock();
        let mut out = Vec::new();
        for e in st.hosts.values() {
            if status_of(&e.host) != HostStatus::Connected {
                continue;
            }
            for i in e.host.instances.iter().filter(|i| i.weight_held) {
                out.push((
                    e.host.host_id.clone(),
                    i.id.clone(),
                    i.name.clone(),
                    i.service.clone(),
                ));
            }
        }
        out
    }

    /// Sends a message to the host's live session, if any.
    pub fn session_sender(&self, host_id: &str) -> Option<SessionSender> {
        self.lock()
            .hosts
            .get(host_id)
            .and_then(|e| e.session.as_ref().map(|s| s.tx.clone()))
    }

    /// Writes every changed host in one transaction. Hosts are encoded a
    /// chunk at a time, taking the lock for each chunk and yielding in
    /// between: encoding a whole large fleet at once held the lock (and so
    /// every agent's report) for tens of milliseconds. A host that changes
    /// meanwhile is written as it is by then, and again at the next flush.
    pub async fn flush(&self) -> Result<usize, RegistryError> {
        let (dirty, dirty_meta) = {
            let mut st = self.lock();
            let dirty: Vec<String> = st.dirty.drain().collect();
            let dirty_meta: Vec<String> = st.dirty_meta.drain().collect();
            (dirty, dirty_meta)
        };
        let mut writes = Vec::with_capacity(dirty.len() + dirty_meta.len());
        for (n, chunk) in dirty.chunks(FLUSH_CHUNK).enumerate() {
            if n > 0 {
                tokio::task::yield_now().await;
            }
            let st = self.lock();
            for id in chunk {
                if let Some(e) = st.hosts.get(id) {
                    writes.push((format!("{HOSTS}{id}"), e.host.encode_to_vec()));
                }
            }
        }
        {
            let st = self.lock();
            for id in dirty_meta {
                if let Some(e) = st.hosts.get(&id)
                    && let Ok(b) = serde_json::to_vec(&e.meta)
                {
                    writes.push((format!("{HOSTMETA}{id}"), b));
                }
            }
        }
        let n = writes.len();
        // Hosts need not land together: split what one store transaction cannot carry (etcd).
        let max = self.store.max_put_many().max(1);
        while !writes.is_empty() {
            let rest = writes.split_off(writes.len().min(max));
            self.store.put_many(writes).await?;
            writes = rest;
        }
        Ok(n)
    }

    /// Persists changes (promptly for status changes, batched for health)
    /// and detects lost agents, until `shutdown`; then flushes once more.
    pub async fn run_background(self: Arc<Self>, shutdown: CancellationToken) {
        let mut flush_tick = tokio::time::interval(FLUSH_INTERVAL);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost_every =
            (self.lost_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut lost_tick = tokio::time::interval(lost_every);
        lost_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = lost_tick.tick() => { self.check_lost(); continue; }
                _ = flush_tick.tick() => {}
                _ = self.flush_now.notified() => {}
            }
            if let Err(e) = self.flush().await {
                tracing::error!(error = %e, "persisting the registry failed; will retry");
            }
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "final registry flush failed");
        }
    }

    /// Ends every session (coordinator shutdown).
    pub fn close_sessions(&self) {
        let st = self.lock();
        for entry in st.hosts.values() {
            if let Some(s) = &entry.session {
                let _ =
                    s.tx.try_send(Err(tonic::Status::unavailable("coordinator shutting down")));
                s.cancel.cancel();
            }
        }
    }
}

/// What changes in an instance's report without anything having happened
/// to it: check latency and counts, the last check's words, the instance's
/// own metrics, and per load balancer its counters, words and read time.
#[derive(Default)]
struct HealthFigures {
    latency_ms: u32,
    successes: u32,
    failures: u32,
    error: String,
    app_metrics: Option<drover_proto::v1::AppMetrics>,
    load_balancers: Vec<LoadBalancerView>,
}

impl HealthFigures {
    fn take(i: &mut InstanceStatus) -> HealthFigures {
        HealthFigures {
            latency_ms: std::mem::take(&mut i.last_check_latency_ms),
            successes: std::mem::take(&mut i.consecutive_successes),
            failures: std::mem::take(&mut i.consecutive_failures),
            error: std::mem::take(&mut i.last_check_error),
            app_metrics: i.app_metrics.take(),
            load_balancers: std::mem::take(&mut i.load_balancers),
        }
    }

    fn restore(self, i: &mut InstanceStatus) {
        i.last_check_latency_ms = self.latency_ms;
        i.consecutive_successes = self.successes;
        i.consecutive_failures = self.failures;
        i.last_check_error = self.error;
        i.app_metrics = self.app_metrics;
        i.load_balancers = self.load_balancers;
    }
}

/// Whether two load balancer views differ only in their counters, status
/// words and read time (state and weights are compared).
fn same_balancer_apart_from_health(a: &mut LoadBalancerView, b: &mut LoadBalancerView) -> bool {
    let taken = |v: &mut LoadBalancerView| {
        (
            std::mem::take(&mut v.status),
            std::mem::take(&mut v.read_at_ms),
            v.counters.take(),
        )
    };
    let (ta, tb) = (taken(a), taken(b));
    let same = a == b;
    (a.status, a.read_at_ms, a.counters) = ta;
    (b.status, b.read_at_ms, b.counters) = tb;
    same
}

/// Whether `new` reports the same instances as `old` apart from
/// [`HealthFigures`]: nothing a restarted or newly elected coordinator
/// would need from the store, since agents report them again within one
/// interval of reconnecting. Compares in place (the figures are taken out
/// and put back), so that the report path allocates nothing for it, and
/// any field added later counts as a change until listed here.
fn same_apart_from_health(old: &mut [InstanceStatus], new: &mut [InstanceStatus]) -> bool {
    if old.len() != new.len() {
        return false;
    }
    old.iter_mut().zip(new.iter_mut()).all(|(a, b)| {
        let (mut fa, mut fb) = (HealthFigures::take(a), HealthFigures::take(b));
        let mut same = a == b && fa.load_balancers.len() == fb.load_balancers.len();
        if same {
            same = fa
                .load_balancers
                .iter_mut()
                .zip(fb.load_balancers.iter_mut())
                .all(|(x, y)| same_balancer_apart_from_health(x, y));
        }
        fa.restore(a);
        fb.restore(b);
        same
    })
}

#[cfg(test)]
mod tests;
