//! Stored rollouts written by an earlier layout still load: a fixture of a
//! store as drover wrote it before the typed contract (`tests/fixtures/`),
//! and the generator that made it (kept so the next layout change can
//! write a fixture of its own).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{META, Meta, Rollouts, driver};
use crate::metrics::Metrics;
use crate::rollout::{
    Amount, CommandOutcome, Engine, Input, InstanceInfo, Millis, Output, Phase, Release,
    RolloutSpec, parse_batches,
};
use crate::store::{MemoryStore, Store};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/store-before-typed-contract.json"
);

fn release(v: &str) -> Release {
    Release::new(v, std::iter::repeat_n('a', 64).collect::<String>())
}

fn infos(service: &str, n: usize) -> Vec<InstanceInfo> {
    (1..=n)
        .map(|k| InstanceInfo {
            id: format!("{service}@h{k}"),
            host: format!("h{k}"),
            labels: BTreeMap::from([("zone".to_string(), format!("z{}", k % 2))]),
            release: Some(release("v1")),
            healthy: true,
            in_service: true,
            reachable: true,
            balancers: Vec::new(),
            color: None,
        })
        .collect()
}

fn spec(service: &str, max_failures: u32, auto_rollback: bool) -> RolloutSpec {
    RolloutSpec {
        service: service.to_string(),
        selector: String::new(),
        target: release("v2"),
        batches: parse_batches("1,2").expect("batches"),
        min_healthy: Amount::Count(2),
        max_failures: Amount::Count(max_failures),
        auto_rollback,
        ..RolloutSpec::default()
    }
}

/// Everything a runner writes for one rollout driven by `script`.
fn write_rollout(
    out: &mut BTreeMap<String, Vec<u8>>,
    id: &str,
    spec: RolloutSpec,
    n: usize,
    script: &[Option<CommandOutcome>],
) {
    let service = spec.service.clone();
    let meta = Meta {
        started_by: "operator/fixture".to_string(),
        spec_toml: spec.to_toml(),
        traceparent: String::new(),
    };
    out.insert(
        format!("{META}{id}"),
        serde_json::to_vec(&meta).expect("meta"),
    );
    let (mut engine, mut outs) =
        Engine::start(id, spec, infos(&service, n), Millis(1_000)).expect("start");
    let mut events = 0;
    let mut now = 1_000;
    // What the runner writes of one pass's outputs.
    let mut record = |engine: &mut Engine, outs: &[Output]| {
        for o in outs {
            if let Output::Event(e) = o {
                let key = driver::event_key(id, events);
                out.insert(key, serde_json::to_vec(e).expect("event"));
                events += 1;
            }
        }
        if outs.iter().any(|o| matches!(o, Output::Persist)) {
            for (k, v) in engine.persist_writes().expect("encode") {
                out.insert(k, v);
            }
        }
    };
    for step in script {
        record(&mut engine, &outs);
        let sent: Vec<_> = (outs.iter())
            .filter_map(|o| match o {
                Output::Send { id, .. } => Some(id.clone()),
                _ => None,
            })
            .collect();
        now += 500;
        let inputs: Vec<Input> = match step {
            Some(outcome) => sent
                .into_iter()
                .map(|id| Input::CommandResult {
                    id,
                    outcome: outcome.clone(),
                })
                .collect(),
            None => vec![Input::Tick],
        };
        outs = engine.handle_all(Millis(now), inputs);
    }
    record(&mut engine, &outs);
}

/// `DROVER_WRITE_FIXTURE=1 cargo test -p drover-coordinator --lib
/// runner::compat::write_fixture -- --ignored`: writes the fixture with
/// the code as it is. Only for a new layout's fixture; never overwrite the
/// old one.
#[test]
#[ignore = "a tool: writes the stored-rollout fixture"]
fn write_fixture() {
    if std::env::var_os("DROVER_WRITE_FIXTURE").is_none() {
        return;
    }
    let mut out = BTreeMap::new();
    let ok = Some(CommandOutcome::Ok);
    // web-1: mid-way, a drain of the second batch in flight.
    write_rollout(
        &mut out,
        "web-1",
        spec("web", 1, false),
        4,
        &vec![ok.clone(); 7],
    );
    // api-1: a failed deploy, rolling back (stop reason and rollback mode).
    let mut script = vec![ok.clone(); 2];
    script.push(Some(CommandOutcome::Failed(
        "unpack: bad archive".to_string(),
    )));
    script.extend(vec![ok.clone(); 2]);
    write_rollout(&mut out, "api-1", spec("api", 0, true), 3, &script);
    // db-1: finished, failed.
    let mut script = vec![ok.clone(); 2];
    script.push(Some(CommandOutcome::TimedOut));
    script.extend([None, None]);
    write_rollout(&mut out, "db-1", spec("db", 0, false), 3, &script);
    let b64 = base64::engine::general_purpose::STANDARD;
    let json: BTreeMap<String, String> = out.into_iter().map(|(k, v)| (k, b64.encode(v))).collect();
    let text = serde_json::to_string_pretty(&json).expect("json");
    std::fs::write(FIXTURE, text + "\n").expect("write fixture");
}

#[tokio::test]
async fn stored_rollouts_of_the_earlier_layout_still_load() {
    let text = std::fs::read_to_string(FIXTURE).expect("fixture");
    let json: BTreeMap<String, String> = serde_json::from_str(&text).expect("fixture json");
    let b64 = base64::engine::general_purpose::STANDARD;
    let store = Arc::new(MemoryStore::new());
    let items = (json.into_iter())
        .map(|(k, v)| (k, b64.decode(v).expect("base64")))
        .collect();
    store.put_many(items).await.expect("seed store");
    let metrics = Arc::new(Metrics::new());
    let registry = super::tests::registry(store.clone(), metrics.clone()).await;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let rollouts = Rollouts::load(
        store,
        registry,
        metrics,
        super::Settings {
            lost_timeout: Duration::from_secs(30),
            hooks: Default::default(),
            epoch: 0,
        },
        shutdown.clone(),
        tasks.clone(),
    )
    .await
    .expect("the stored rollouts load");
    let web = rollouts.get("web-1").expect("web-1");
    assert_eq!(web.status.phase, Phase::Running);
    assert_eq!(web.started_by, "operator/fixture");
    assert!(web.status.counts.done >= 1, "{:?}", web.status.counts);
    let api = rollouts.get("api-1").expect("api-1");
    assert!(
        matches!(
            api.status.phase,
            Phase::RollingBack | Phase::Stopping | Phase::RolledBack
        ),
        "{:?}",
        api.status.phase
    );
    assert!(
        api.status
            .reason
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
            .contains("failure budget")
            || api.status.outcome.is_some(),
        "{:?}",
        api.status
    );
    let db = rollouts.get("db-1").expect("db-1");
    assert_eq!(db.status.phase, Phase::Failed);
    assert!(
        db.status
            .outcome
            .as_ref()
            .is_some_and(|o| o.to_string().contains("timed out")),
        "{:?}",
        db.status.outcome
    );
    // A reason stored as text before reasons were typed reads back as
    // that text, shown exactly as it was.
    assert_eq!(
        db.status.outcome,
        Some(crate::rollout::Outcome::Failed {
            reason: crate::rollout::StopReason::Text(
                "failure budget exceeded: 1 failed, max_failures 0 (db@h1: deploy timed out after 2m)"
                    .into()
            )
        })
    );
    assert!(rollouts.events("db-1", 0).expect("events").len() >= 3);
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}
