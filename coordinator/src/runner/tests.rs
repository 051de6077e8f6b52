//! The tokio runtime around the driver, with a real registry, an in-memory
//! store and an agent session that is a channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use drover_net::transport::PeerCert;
use drover_proto::identity::{Identity, Role};
use drover_proto::v1::{self as pb, coordinator_message};

use super::*;
use crate::rollout::{Amount, Phase, Release, parse_batches};
use crate::store::MemoryStore;
use crate::tls::RevocationList;

/// A store that can be told to refuse every write for good, as a full or
/// failed disk does.
#[derive(Default)]
struct Breakable {
    inner: MemoryStore,
    broken: AtomicBool,
    /// Items one put_many may carry, as etcd's --max-txn-ops (0: any).
    max: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for Breakable {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put(key, value).await
    }
    async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(StoreError::Io("disk full".to_string()));
        }
        let max = self.max.load(Ordering::SeqCst);
        if max > 0 && items.len() > max {
            return Err(StoreError::Backend(format!(
                "{} operations in one transaction, more than {max}",
                items.len()
            )));
        }
        self.inner.put_many(items).await
    }
    fn max_put_many(&self) -> usize {
        match self.max.load(Ordering::SeqCst) {
            0 => usize::MAX,
            n => n,
        }
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
        self.inner.compare_and_swap(key, expected, new).await
    }
}

fn digest() -> String {
    std::iter::repeat_n('a', 64).collect()
}

struct Setup {
    store: Arc<Breakable>,
    metrics: Arc<Metrics>,
    rollouts: Arc<Rollouts>,
    session: mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// A registry on `store`, hosts lost after 30 s.
pub(super) async fn registry(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<Registry> {
    Arc::new(
        Registry::load(
            store,
            metrics,
            Arc::new(RevocationList::default()),
            Duration::from_secs(30),
        )
        .await
        .expect("registry"),
    )
}

/// One connected host `h1` running `web@h1` on v1, healthy.
async fn setup() -> Setup {
    let store = Arc::new(Breakable::default());
    let metrics = Arc::new(Metrics::new());
    let registry = registry(store.clone(), metrics.clone()).await;
    let cert = PeerCert {
        identity: Identity {
            role: Role::Agent,
            name: "h1".to_string(),
        },
        serial: "01".to_string(),
        not_before: SystemTime::now(),
        not_after: SystemTime::now() + Duration::from_secs(3600),
    };
    let hello = pb::Hello {
        host_id: "h1".to_string(),
        instances: vec![pb::InstanceStatus {
            id: "web@h1".to_string(),
            name: "web".to_string(),
            service: "web".to_string(),
            state: pb::RuntimeState::Running as i32,
            health: pb::HealthState::Healthy as i32,
            release: Some(pb::Release {
                version: "v1".to_string(),
                digest: digest(),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (tx, session) = mpsc::channel(16);
    registry.connect(&cert, None, hello, tx);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let rollouts = Rollouts::load(
        store.clone(),
        registry,
        metrics.clone(),
        super::Settings {
            lost_timeout: Duration::from_secs(30),
            hooks: Default::default(),
            epoch: 0,
        },
        shutdown.clone(),
        tasks.clone(),
    )
    .await
    .expect("rollouts");
    Setup {
        store,
        metrics,
        rollouts,
        session,
        shutdown,
        tasks,
    }
}

fn spec() -> RolloutSpec {
    RolloutSpec {
        service: "web".to_string(),
        selector: String::new(),
        target: Release::new("v2", digest()),
        batches: parse_batches("1").expect("batches"),
        min_healthy: Amount::Count(0),
        ..RolloutSpec::default()
    }
}

async fn next_command(
    session: &mut mpsc::Receiver<Result<pb::CoordinatorMessage, tonic::Status>>,
) -> pb::Command {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), session.recv())
            .await
            .expect("a message on the session within 10 s")
            .expect("session open")
            .expect("not an error");
        if let Some(coordinator_message::Msg::Command(c)) = msg.msg {
            return c;
        }
    }
}

#[tokio::test]
async fn a_command_goes_out_only_after_the_step_is_stored() {
    let mut s = setup().await;
    let snap = s
        .rollouts
        .start(spec(), "operator/test".to_string())
        .await
        .expect("start");
    let cmd = next_command(&mut s.session).await;
    assert_eq!(cmd.id, format!("{}/web@h1/stage/1", snap.status.id));
    let stored = s
        .store
        .scan_prefix(&persist::instances_prefix(&snap.status.id))
        .await
        .expect("scan");
    let text: Vec<String> = (stored.iter())
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(
        text.iter().any(|t| t.contains(&cmd.id)),
        "the stage in flight was stored before it was sent: {text:?}"
    );
    s.shutdown.cancel();
    s.tasks.close();
    tokio::time::timeout(Duration::from_secs(10), s.tasks.wait())
        .await
        .expect("the rollout task stops at shutdown");
}

/// etcd takes a bounded number of operations per transaction: a rollout
/// whose passes could exceed it is refused up front, naming the setting,
/// and one that fits stores every pass in one transaction to its end.
#[tokio::test]
async fn a_rollout_is_refused_when_its_writes_could_not_fit_one_store_transaction() {
    let mut s = setup().await;
    s.store.max.store(8, Ordering::SeqCst);
    let e = s
        .rollouts
        .start(spec(), "operator/test".to_string())
        .await
        .expect_err("1 instance + 8 records > 8");
    let text = e.to_string();
    assert!(
        text.contains("raise --max-txn-ops") && text.contains("at least 9"),
        "{text}"
    );
    assert!(s.session.try_recv().is_err(), "nothing went out");
    // With room for the largest pass, the rollout runs: its first pass
    // (head, the instance, the events' record) fits the limit.
    s.store.max.store(9, Ordering::SeqCst);
    let snap = s
        .rollouts
        .start(spec(), "operator/test".to_string())
        .await
        .expect("start");
    assert_ne!(snap.status.phase, Phase::Failed, "{:?}", snap.status.reason);
    let cmd = next_command(&mut s.session).await;
    assert!(cmd.id.ends_with("/stage/1"), "{}", cmd.id);
    s.shutdown.cancel();
    s.tasks.close();
    tokio::time::timeout(Duration::from_secs(10), s.tasks.wait())
        .await
        .expect("the rollout task stops at shutdown");
}

#[tokio::test]
async fn a_store_that_refuses_for_good_fails_the_rollout_visibly() {
    let mut s = setup().await;
    s.store.broken.store(true, Ordering::SeqCst);
    let snap = s
        .rollouts
        .start(spec(), "operator/test".to_string())
        .await
        .expect("start answers with the halted rollout");
    assert_eq!(snap.status.phase, Phase::Failed);
    let reason = (snap.status.reason.as_ref())
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        reason.contains("store refused") && reason.contains("disk full"),
        "{reason}"
    );
    assert!(
        s.metrics
            .encode()
            .contains("drover_rollout_store_failures_total 1"),
        "{}",
        s.metrics.encode()
    );
    // Nothing was sent: the session holds only the welcome-less silence.
    assert!(s.session.try_recv().is_err(), "no command went out");
    tokio::time::timeout(Duration::from_secs(10), async {
        while s
            .rollouts
            .act(&snap.status.id, OperatorAction::Pause)
            .await
            .is_ok()
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the halted rollout's task ends");
}

/// The value of the one sample line `series` (name and labels as
/// exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A rollout shows in /metrics while it runs (running by strategy, its
/// capacity against its floor) and, once it ended, as an outcome and the
/// durations of its steps; its own series are gone.
#[tokio::test]
async fn a_rollout_is_seen_in_the_metrics_while_it_runs_and_counted_when_it_ends() {
    let mut s = setup().await;
    let snap = s
        .rollouts
        .start(spec(), "operator/test".to_string())
        .await
        .expect("start");
    let id = snap.status.id.clone();
    let text = s.metrics.encode();
    let capacity = format!("drover_rollout_capacity_instances{{rollout=\"{id}\",service=\"web\"}}");
    let floor = format!("drover_rollout_floor_instances{{rollout=\"{id}\",service=\"web\"}}");
    assert_eq!(
        sample(&text, "drover_rollouts_running{strategy=\"rolling\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(sample(&text, &capacity).is_some(), "{text}");
    assert_eq!(sample(&text, &floor), Some(0.0), "{text}");
    let mut steps = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let cmd = next_command(&mut s.session).await;
            steps.push(cmd.id.rsplit('/').nth(1).unwrap_or_default().to_string());
            s.rollouts
                .command_update(
                    "h1",
                    pb::CommandUpdate {
                        command_id: cmd.id.clone(),
                        phase: pb::command_update::Phase::Succeeded as i32,
                        ..Default::default()
                    },
                )
                .await;
            if cmd.id.ends_with("/undrain/1") {
                break;
            }
        }
        loop {
            let snap = s.rollouts.get(&id).expect("rollout");
            if snap.status.phase.is_terminal() && s.rollouts.sender(&id).is_none() {
                return snap;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the rollout ends once every step succeeded");
    assert_eq!(ended.status.phase, Phase::Succeeded);
    let text = s.metrics.encode();
    assert_eq!(
        sample(&text, "drover_rollouts_running{strategy=\"rolling\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "drover_rollouts_ended_total{strategy=\"rolling\",outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, &capacity), None, "gone once ended\n{text}");
    assert_eq!(sample(&text, &floor), None, "gone once ended\n{text}");
    for step in [
        "stage", "drain", "stop", "deploy", "start", "verify", "undrain",
    ] {
        assert!(steps.iter().any(|s| s == step), "{steps:?}");
        let count = format!(
            "drover_rollout_step_duration_seconds_count{{step=\"{step}\",outcome=\"succeeded\"}}"
        );
        assert_eq!(sample(&text, &count), Some(1.0), "{step}\n{text}");
    }
}
