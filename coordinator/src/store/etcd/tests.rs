//! The etcd store against a real etcd (Debian `etcd-server`), started by each test on free
//! loopback ports. Without an `etcd` binary these fail, naming the package to install.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_testkit::etcd::EtcdCluster;

use super::*;
use crate::store::conformance;

/// Connects to `cluster` under `prefix` with a short request deadline.
async fn store(cluster: &EtcdCluster, prefix: &str, timeout: Duration) -> EtcdStore {
    let mut options = EtcdOptions::new(cluster.endpoints(), prefix);
    options.timeout = timeout;
    EtcdStore::connect(options)
        .await
        .unwrap_or_else(|e| panic!("connect to etcd: {e}\n{}", cluster.describe(30)))
}

fn bytes(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

#[tokio::test]
async fn conformance_suite() {
    let cluster = EtcdCluster::start(1);
    conformance::run(&store(&cluster, "/drover/", DEFAULT_TIMEOUT).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas() {
    let cluster = EtcdCluster::start(1);
    let store = store(&cluster, "/drover/", DEFAULT_TIMEOUT).await;
    conformance::concurrent_cas(Arc::new(store)).await;
}

#[tokio::test]
async fn installations_with_different_prefixes_share_one_etcd() {
    let cluster = EtcdCluster::start(1);
    let a = store(&cluster, "/drover/", DEFAULT_TIMEOUT).await;
    let b = store(&cluster, "/drover-dr/", DEFAULT_TIMEOUT).await;
    a.put("hosts/h1", bytes("a")).await.expect("put a");
    b.put("hosts/h1", bytes("b")).await.expect("put b");
    assert_eq!(a.get("hosts/h1").await.expect("get"), Some(bytes("a")));
    assert_eq!(b.get("hosts/h1").await.expect("get"), Some(bytes("b")));
    assert_eq!(
        a.scan_prefix("").await.expect("scan"),
        vec![("hosts/h1".to_string(), bytes("a"))],
        "a scan of everything stays inside the installation's prefix"
    );
    assert!(b.delete("hosts/h1").await.expect("delete"));
    assert_eq!(a.get("hosts/h1").await.expect("get"), Some(bytes("a")));
}

#[tokio::test]
async fn scans_page_through_many_keys_and_large_values() {
    let cluster = EtcdCluster::start(1);
    let store = store(&cluster, "/drover/", DEFAULT_TIMEOUT).await;
    // More keys than one page, written out of order.
    let n = 3 * SCAN_PAGE as usize + 7;
    let mut items: Vec<(String, Vec<u8>)> = (0..n)
        .rev()
        .map(|i| (format!("many/{i:05}"), i.to_string().into_bytes()))
        .collect();
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(store.max_put_many()));
        store.put_many(items).await.expect("put_many");
        items = rest;
    }
    let got = store.scan_prefix("many/").await.expect("scan");
    assert_eq!(got.len(), n);
    for (i, (k, v)) in got.iter().enumerate() {
        assert_eq!(k, &format!("many/{i:05}"));
        assert_eq!(v, &i.to_string().into_bytes());
    }
    // More bytes than a gRPC response carries by default (4 MiB): values near etcd's
    // request limit are still read whole.
    let big: Vec<u8> = (0..=255u8).cycle().take(1024 * 1024).collect();
    for i in 0..6 {
        store
            .put(&format!("big/{i}"), big.clone())
            .await
            .expect("put 1 MiB");
    }
    let got = store.scan_prefix("big/").await.expect("scan big");
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|(_, v)| v == &big));
}

#[tokio::test]
async fn put_many_beyond_the_transaction_limit_is_refused_whole() {
    let cluster = EtcdCluster::start(1);
    let store = store(&cluster, "/drover/", DEFAULT_TIMEOUT).await;
    assert_eq!(store.max_put_many(), DEFAULT_MAX_TXN_OPS);
    let items: Vec<(String, Vec<u8>)> = (0..=DEFAULT_MAX_TXN_OPS)
        .map(|i| (format!("batch/{i:04}"), bytes("x")))
        .collect();
    let err = store.put_many(items).await.expect_err("over the limit");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("max-txn-ops"), "{err}");
    assert!(
        store.scan_prefix("batch/").await.expect("scan").is_empty(),
        "nothing of a refused batch is written"
    );

    // If the configured limit is above etcd's own, etcd's refusal says the same.
    let mut options = EtcdOptions::new(cluster.endpoints(), "/drover/");
    options.max_txn_ops = 1000;
    let lax = EtcdStore::connect(options).await.expect("connect");
    let items: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("batch/{i:04}"), bytes("x")))
        .collect();
    let err = lax.put_many(items).await.expect_err("etcd refuses");
    assert!(err.to_string().contains("max-txn-ops"), "{err}");
    assert!(store.scan_prefix("batch/").await.expect("scan").is_empty());
}

/// A batch over etcd's request size limit (1.5 MiB by default) is refused whole, and the error
/// says which limit.
#[tokio::test]
async fn put_many_over_the_request_size_limit_is_refused_whole() {
    let cluster = EtcdCluster::start(1);
    let store = store(&cluster, "/drover/", DEFAULT_TIMEOUT).await;
    let mb: Vec<u8> = vec![7; 1024 * 1024];
    store
        .put("big/one", mb.clone())
        .await
        .expect("1 MiB fits in one request");
    let err = store
        .put_many(vec![
            ("big/a".into(), mb.clone()),
            ("big/b".into(), mb.clone()),
        ])
        .await
        .expect_err("2 MiB in one request");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("max-request-bytes"), "{err}");
    // Between etcd's limit and its gRPC layer's: refused by etcd itself.
    let err = store
        .put_many(vec![
            ("big/a".into(), mb.clone()),
            ("big/c".into(), vec![7; 700 * 1024]),
        ])
        .await
        .expect_err("1.7 MiB in one request");
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("max-request-bytes"), "{err}");
    assert_eq!(
        store.scan_prefix("big/").await.expect("scan").len(),
        1,
        "nothing of the refused batch was written"
    );
}

#[tokio::test]
async fn guarded_writes_are_refused_once_the_guard_key_changed() {
    let cluster = EtcdCluster::start(1);
    let store = store(&cluster, "/drover/", DEFAULT_TIMEOUT).await;
    let leader = store.raw_key("leader");
    store.put("leader", bytes("c1")).await.expect("put leader");
    let rev = store
        .mod_revision(&leader)
        .await
        .expect("revision")
        .expect("leader key present");
    let c1 = Guard {
        key: leader.clone(),
        revision: rev,
    };

    // While the guard holds, guarded writes go through.
    store
        .put_many_guarded(vec![("state/r1".into(), bytes("step 1"))], Some(&c1))
        .await
        .expect("guarded put_many");
    assert!(
        store
            .compare_and_swap_guarded(
                "state/r1",
                Some(b"step 1"),
                Some(bytes("step 2")),
                Some(&c1)
            )
            .await
            .expect("guarded cas")
    );
    assert!(
        !store
            .compare_and_swap_guarded("state/r1", Some(b"stale"), Some(bytes("x")), Some(&c1))
            .await
            .expect("guarded cas, value mismatch"),
        "a value mismatch under a holding guard is a plain `false`"
    );

    // Another coordinator takes the leader key over.
    store.put("leader", bytes("c2")).await.expect("take over");
    let err = store
        .put_many_guarded(
            vec![
                ("state/r1".into(), bytes("step 3")),
                ("state/r2".into(), bytes("new")),
            ],
            Some(&c1),
        )
        .await
        .expect_err("fenced put_many");
    assert!(
        matches!(err, StoreError::Fenced { revision, .. } if revision == rev),
        "{err}"
    );
    assert!(!err.is_retryable());
    let err = store
        .compare_and_swap_guarded("state/r1", Some(b"step 2"), None, Some(&c1))
        .await
        .expect_err("fenced cas");
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_eq!(
        store.scan_prefix("state/").await.expect("scan"),
        vec![("state/r1".to_string(), bytes("step 2"))],
        "a fenced coordinator changed nothing"
    );

    // A guard on a key that is gone does not hold either.
    assert!(store.delete("leader").await.expect("delete"));
    let err = store
        .put_many_guarded(vec![("state/r1".into(), bytes("x"))], Some(&c1))
        .await
        .expect_err("fenced after delete");
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
}

#[tokio::test]
async fn unreachable_etcd_is_unavailable_at_connect() {
    // A port nothing listens on: etcd's own data dir is not even created.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut options = EtcdOptions::new(vec![format!("http://127.0.0.1:{port}")], "/drover/");
    options.timeout = Duration::from_secs(1);
    let err = tokio::time::timeout(Duration::from_secs(30), EtcdStore::connect(options))
        .await
        .expect("connect must give up by itself, not hang")
        .expect_err("nothing listens there");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

/// Three members, two killed: every operation ends with `Unavailable` after about the
/// configured deadline instead of hanging, and works again once the members are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_quorum_is_unavailable_then_recovers() {
    let mut cluster = EtcdCluster::start(3);
    let timeout = Duration::from_secs(2);
    let store = store(&cluster, "/drover/", timeout).await;
    store.put("k", bytes("before")).await.expect("put");

    cluster.kill(1);
    cluster.kill(2);
    // Bounded far above the deadline: the assertion is "returns", not "is fast".
    let hang = timeout * 10;
    for attempt in 0..2 {
        let started = Instant::now();
        let put = tokio::time::timeout(hang, store.put("k", bytes("during")))
            .await
            .unwrap_or_else(|_| panic!("put hung for {hang:?} without quorum"));
        let err = put.expect_err("a write without quorum cannot succeed");
        assert!(
            matches!(err, StoreError::Unavailable(_)),
            "attempt {attempt}: {err}"
        );
        assert!(err.to_string().contains("quorum"), "says why: {err}");
        assert!(started.elapsed() < hang);
        let get = tokio::time::timeout(hang, store.get("k"))
            .await
            .unwrap_or_else(|_| panic!("get hung for {hang:?} without quorum"));
        assert!(
            matches!(get, Err(StoreError::Unavailable(_))),
            "a linearizable read without quorum: {get:?}"
        );
        let scan = tokio::time::timeout(hang, store.scan_prefix(""))
            .await
            .unwrap_or_else(|_| panic!("scan hung for {hang:?} without quorum"));
        assert!(matches!(scan, Err(StoreError::Unavailable(_))), "{scan:?}");
    }

    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_healthy(drover_testkit::etcd::START_TIMEOUT);
    // The client reconnects on its own; retry as a caller would, with a deadline.
    let value = drover_testkit::wait_until_async(
        Duration::from_secs(30),
        "the store answers again once quorum is back",
        async || match store.put("k", bytes("after")).await {
            Ok(()) => store.get("k").await.ok().flatten(),
            Err(_) => None,
        },
        || cluster.describe(20),
    )
    .await;
    assert_eq!(
        value,
        bytes("after"),
        "the write made without quorum must not have landed"
    );
}

/// The registry writes every changed host at each flush; a fleet larger than one etcd
/// transaction must still be stored (in chunks), not refused every 5 s.
#[tokio::test]
async fn a_registry_larger_than_one_transaction_flushes() {
    use std::time::SystemTime;

    use drover_net::transport::PeerCert;
    use drover_proto::identity::{Identity, Role};
    use drover_proto::v1 as pb;

    use crate::metrics::Metrics;
    use crate::registry::Registry;
    use crate::tls::RevocationList;

    let cluster = EtcdCluster::start(1);
    let store: Arc<dyn Store> = Arc::new(store(&cluster, "/drover/", DEFAULT_TIMEOUT).await);
    let registry = Registry::load(
        store.clone(),
        Arc::new(Metrics::new()),
        Arc::new(RevocationList::default()),
        Duration::from_secs(30),
    )
    .await
    .expect("load registry");
    let hosts = 2 * DEFAULT_MAX_TXN_OPS + 5;
    let mut sessions = Vec::new();
    for i in 0..hosts {
        let id = format!("h{i:04}");
        let cert = PeerCert {
            identity: Identity {
                role: Role::Agent,
                name: id.clone(),
            },
            serial: format!("{i:04x}"),
            not_before: SystemTime::now(),
            not_after: SystemTime::now() + Duration::from_secs(3600),
        };
        let hello = pb::Hello {
            host_id: id,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        registry.connect(&cert, None, hello, tx);
        sessions.push(rx);
    }
    let written = registry.flush().await.expect("flush a large fleet to etcd");
    assert!(written >= hosts, "{written} writes for {hosts} hosts");
    assert_eq!(
        store.scan_prefix("hosts/").await.expect("scan hosts").len(),
        hosts,
        "every host is in etcd"
    );
    drop(sessions);
}

/// Three members, any one of them killed (the leader among them): every operation still
/// succeeds with the default deadline. etcd-client keeps the dead member's address in its
/// rotation; requests sent there never reach etcd and go again to a live member, and while
/// the other two elect a new leader (about 2 s here) they refuse with "no leader" and are
/// asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_member_of_three_changes_nothing_visible() {
    let mut cluster = EtcdCluster::start(3);
    let store = store(&cluster, "/drover/", DEFAULT_TIMEOUT).await;
    for victim in 0..cluster.len() {
        cluster.kill(victim);
        for i in 0..20 {
            let key = format!("m{victim}/k{i:02}");
            let fail = |op: &str, e: StoreError| -> ! {
                panic!(
                    "{op} {key} with member {victim} down: {e}\n{}",
                    cluster.describe(15)
                )
            };
            store
                .put(&key, bytes("1"))
                .await
                .unwrap_or_else(|e| fail("put", e));
            match store
                .compare_and_swap(&key, Some(b"1"), Some(bytes("2")))
                .await
            {
                Ok(true) => {}
                Ok(false) => fail("cas", StoreError::Backend("no swap".into())),
                Err(e) => fail("cas", e),
            }
            match store.get(&key).await {
                Ok(Some(v)) if v == b"2" => {}
                Ok(other) => fail("get", StoreError::Backend(format!("read {other:?}"))),
                Err(e) => fail("get", e),
            }
            if i % 2 == 0 {
                match store.delete(&key).await {
                    Ok(true) => {}
                    Ok(false) => fail("delete", StoreError::Backend("was absent".into())),
                    Err(e) => fail("delete", e),
                }
            }
        }
        let left = store
            .scan_prefix(&format!("m{victim}/"))
            .await
            .unwrap_or_else(|e| panic!("scan with member {victim} down: {e}"));
        assert_eq!(left.len(), 10);
        cluster.restart(victim);
        cluster.wait_healthy(drover_testkit::etcd::START_TIMEOUT);
    }
}
