//! What the registry writes to its store for the reports agents send.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use drover_net::transport::PeerCert;
use drover_proto::identity::{Identity, Role};
use drover_proto::v1 as pb;

use super::{HOSTS, HealthWrites, Registry};
use crate::metrics::Metrics;
use crate::store::{MemoryStore, Store, StoreError};
use crate::tls::RevocationList;

/// A [`MemoryStore`] that counts the host records written to it.
#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    host_writes: AtomicUsize,
}

impl Counting {
    fn count(&self, key: &str) {
        if key.starts_with(HOSTS) {
            self.host_writes.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Host records written since the last call.
    fn take(&self) -> usize {
        self.host_writes.swap(0, Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.count(key);
        self.inner.put(key, value).await
    }
    async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        for (k, _) in &items {
            self.count(k);
        }
        self.inner.put_many(items).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.delete(key).await
    }
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(prefix).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        self.count(key);
        self.inner.compare_and_swap(key, expected, new).await
    }
}

const HOSTS_N: usize = 3;

fn instance(host: &str, version: &str) -> pb::InstanceStatus {
    pb::InstanceStatus {
        id: format!("web@{host}"),
        name: "web".to_string(),
        service: "web".to_string(),
        state: pb::RuntimeState::Running as i32,
        health: pb::HealthState::Healthy as i32,
        release: Some(pb::Release {
            version: version.to_string(),
            digest: "a".repeat(64),
        }),
        load_balancers: vec![pb::LoadBalancerView {
            balancer: "/run/haproxy.sock".to_string(),
            backend: "web".to_string(),
            server: host.to_string(),
            state: pb::LoadBalancerState::Up as i32,
            status: "UP".to_string(),
            weight: 100,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A report that changes only health figures: host metrics, check latency
/// and counts, the load balancer's counters, words and read time.
fn health_only(host: &str, seq: u32) -> pb::HealthReport {
    let mut i = instance(host, "v1");
    i.consecutive_successes = seq;
    i.last_check_latency_ms = 1 + seq % 7;
    i.app_metrics = Some(pb::AppMetrics {
        requests: u64::from(seq) * 10,
        ..Default::default()
    });
    i.load_balancers[0].read_at_ms = i64::from(seq);
    i.load_balancers[0].status = format!("UP {}/3", seq % 3);
    i.load_balancers[0].counters = Some(pb::TrafficCounters {
        requests: u64::from(seq),
        ..Default::default()
    });
    pb::HealthReport {
        sent_at_ms: i64::from(seq),
        host: Some(pb::HostMetrics {
            cpu_percent: f64::from(seq % 100),
            uptime_secs: u64::from(seq),
            ..Default::default()
        }),
        instances: vec![i],
        ..Default::default()
    }
}

struct Fleet {
    store: Arc<Counting>,
    registry: Registry,
    sessions: Vec<(String, u64)>,
    _rx: Vec<super::mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>>,
}

/// `HOSTS_N` connected hosts with their first flush done.
async fn fleet(mode: HealthWrites) -> Fleet {
    let store = Arc::new(Counting::default());
    let registry = Registry::load(
        store.clone(),
        Arc::new(Metrics::new()),
        Arc::new(RevocationList::default()),
        Duration::from_secs(30),
    )
    .await
    .expect("load registry")
    .with_health_writes(mode);
    let mut sessions = Vec::new();
    let mut rx = Vec::new();
    for n in 0..HOSTS_N {
        let id = format!("h{n}");
        let cert = PeerCert {
            identity: Identity {
                role: Role::Agent,
                name: id.clone(),
            },
            serial: format!("{n:02x}"),
            not_before: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        };
        let hello = pb::Hello {
            host_id: id.clone(),
            instances: vec![instance(&id, "v1")],
            ..Default::default()
        };
        let (tx, r) = super::mpsc::channel(1);
        let (session, _) = registry.connect(&cert, None, hello, tx);
        sessions.push((id, session));
        rx.push(r);
    }
    registry.flush().await.expect("first flush");
    assert_eq!(store.take(), HOSTS_N, "connecting writes every host once");
    Fleet {
        store,
        registry,
        sessions,
        _rx: rx,
    }
}

/// On etcd, a fleet reporting nothing but health figures writes nothing,
/// however many reports and flushes go by, while an operator still sees
/// the latest figures.
#[tokio::test]
async fn health_only_reports_stay_in_memory_on_etcd() {
    let f = fleet(HealthWrites::InMemory).await;
    for round in 1..=50u32 {
        for (id, session) in &f.sessions {
            f.registry.report(id, *session, health_only(id, round));
        }
        if round % 10 == 0 {
            f.registry.flush().await.expect("flush");
        }
    }
    assert_eq!(
        f.store.take(),
        0,
        "health-only reports were written to the store"
    );
    let h0 = f.registry.get("h0").expect("h0");
    let m = h0.metrics.expect("metrics kept in memory");
    assert_eq!(m.uptime_secs, 50, "the latest report is what is shown");
    assert_eq!(h0.instances[0].consecutive_successes, 50);
}

/// What a takeover needs is still written, once per host per flush: a new
/// release, a change of health, a drain, a changed weight, a lost host.
#[tokio::test]
async fn changes_beyond_health_are_written_on_etcd() {
    let f = fleet(HealthWrites::InMemory).await;
    let (h0, s0) = &f.sessions[0];
    let (h1, s1) = &f.sessions[1];
    let (h2, s2) = &f.sessions[2];

    let mut deployed = health_only(h0, 1);
    deployed.instances[0].release = Some(pb::Release {
        version: "v2".to_string(),
        digest: "b".repeat(64),
    });
    f.registry.report(h0, *s0, deployed.clone());
    deployed.instances[0].consecutive_successes = 2;
    f.registry.report(h0, *s0, deployed);
    let mut unhealthy = health_only(h1, 1);
    unhealthy.instances[0].health = pb::HealthState::Unhealthy as i32;
    f.registry.report(h1, *s1, unhealthy);
    let mut weighted = health_only(h2, 1);
    weighted.instances[0].load_balancers[0].weight = 0;
    f.registry.report(h2, *s2, weighted);
    f.registry.flush().await.expect("flush");
    assert_eq!(
        f.store.take(),
        3,
        "each changed host is written once at the flush"
    );
    let stored = f
        .store
        .get(&format!("{HOSTS}{h0}"))
        .await
        .expect("get")
        .expect("h0 stored");
    let stored = <pb::Host as prost::Message>::decode(stored.as_slice()).expect("decode");
    assert_eq!(
        stored.instances[0]
            .release
            .as_ref()
            .map(|r| r.version.as_str()),
        Some("v2"),
        "the new release is in the store"
    );

    let mut drained = health_only(h1, 2);
    drained.instances[0].health = pb::HealthState::Unhealthy as i32;
    drained.instances[0].drained = true;
    f.registry.report(h1, *s1, drained);
    f.registry.disconnected(h2, *s2, "test");
    f.registry.flush().await.expect("flush");
    assert_eq!(f.store.take(), 2, "the drain and the lost host are written");
}

/// On redb (the default) every host that reported is written at the next
/// flush, figures included, as before.
#[tokio::test]
async fn health_only_reports_are_batched_on_redb() {
    let f = fleet(HealthWrites::default()).await;
    for round in 1..=5u32 {
        for (id, session) in &f.sessions {
            f.registry.report(id, *session, health_only(id, round));
        }
    }
    f.registry.flush().await.expect("flush");
    assert_eq!(
        f.store.take(),
        HOSTS_N,
        "one write per host per flush, not per report"
    );
    let stored = f
        .store
        .get(&format!("{HOSTS}h0"))
        .await
        .expect("get")
        .expect("h0 stored");
    let stored = <pb::Host as prost::Message>::decode(stored.as_slice()).expect("decode");
    assert_eq!(stored.metrics.map(|m| m.uptime_secs), Some(5));
}

/// `drover_hosts{status}` follows every host through enrolment, sessions,
/// revocation and a coordinator restart, which brings connected hosts back
/// as lost.
#[tokio::test]
async fn hosts_are_counted_by_status_through_their_lives() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let load = async |metrics: Arc<Metrics>| {
        Registry::load(
            store.clone(),
            metrics,
            Arc::new(RevocationList::default()),
            Duration::from_secs(30),
        )
        .await
        .expect("load registry")
    };
    let count = |m: &Metrics, status: &str| {
        let series = format!("drover_hosts{{status=\"{status}\"}} ");
        (m.encode().lines())
            .find_map(|l| l.strip_prefix(&series)?.parse::<i64>().ok())
            .unwrap_or(-1)
    };
    let metrics = Arc::new(Metrics::new());
    let registry = load(metrics.clone()).await;
    for id in ["h1", "h2", "h3"] {
        registry
            .enrolled(id, Default::default())
            .await
            .expect("enrol");
    }
    assert_eq!(count(&metrics, "enrolled"), 3);
    let mut rx = Vec::new();
    let mut sessions = Vec::new();
    for id in ["h1", "h2"] {
        let cert = PeerCert {
            identity: Identity {
                role: Role::Agent,
                name: id.to_string(),
            },
            serial: format!("s-{id}"),
            not_before: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        };
        let hello = pb::Hello {
            host_id: id.to_string(),
            ..Default::default()
        };
        let (tx, r) = super::mpsc::channel(1);
        sessions.push(registry.connect(&cert, None, hello, tx).0);
        rx.push(r);
    }
    registry.disconnected("h2", sessions[1], "test");
    registry.revoke("h3").await.expect("revoke");
    registry.flush().await.expect("flush");
    for (status, n) in [
        ("enrolled", 0),
        ("connected", 1),
        ("lost", 1),
        ("revoked", 1),
    ] {
        assert_eq!(count(&metrics, status), n, "{status}\n{}", metrics.encode());
    }
    // A restarted coordinator: h1 was connected, so it is lost until its
    // agent is back.
    let metrics = Arc::new(Metrics::new());
    let _restarted = load(metrics.clone()).await;
    for (status, n) in [
        ("enrolled", 0),
        ("connected", 0),
        ("lost", 2),
        ("revoked", 1),
    ] {
        assert_eq!(count(&metrics, status), n, "{status}\n{}", metrics.encode());
    }
}
