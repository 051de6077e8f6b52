//! The PostgreSQL kit against a real primary and streaming replica (Debian `postgresql`):
//! what the DR drills rely on. Each test has its own pair on free ports in its own temp dir.

use std::time::{Duration, Instant};

use drover_testkit::postgres::{
    DataLoss, NodeOptions, PORT_TAKEN, PgEndpoint, PgError, PgNode, PgPair, PgPairOptions, Rejoin,
    Role, WriteLog, Writer, WriterOptions,
};

const WAIT: Duration = Duration::from_secs(20);

fn start() -> PgPair {
    PgPair::start().unwrap_or_else(|e| panic!("start a postgres pair: {e}"))
}

/// Unwraps a kit result (evaluated first, so it may borrow the pair mutably), panicking
/// with what failed and both servers' log tails.
macro_rules! ok {
    ($pair:expr, $what:expr, $result:expr $(,)?) => {{
        let result: Result<_, PgError> = $result;
        result.unwrap_or_else(|e| panic!("{}: {e}\n{}", $what, $pair.describe(20)))
    }};
}

fn count(node: &PgNode, table: &str) -> u64 {
    let out = node
        .query(&format!("SELECT count(*) FROM {table}"))
        .unwrap_or_else(|e| panic!("count {table} on {}: {e}", node.name()));
    out.parse()
        .unwrap_or_else(|_| panic!("count(*) printed {out:?}"))
}

/// A writer bounded in rows and time, with a short insert timeout.
fn writer(pair: &PgPair) -> Writer {
    let options = WriterOptions {
        max_rows: 20_000,
        max_duration: Duration::from_secs(40),
        pause: Duration::from_millis(1),
        insert_timeout: Duration::from_secs(2),
    };
    ok!(
        pair,
        "start the writer",
        Writer::start(pair.primary().endpoint(), options),
    )
}

/// Every acknowledged id is kept or reported lost, once; lost ids come after every kept
/// one (replication is in order), and the window is that of the lost acks.
fn assert_consistent(log: &WriteLog, loss: &DataLoss) {
    assert_eq!(loss.acknowledged, log.acked.len());
    assert_eq!(
        loss.kept + loss.lost.len(),
        loss.acknowledged,
        "every acknowledged write is kept or lost: {loss:?}"
    );
    if let Some(first_lost) = loss.lost.first() {
        let kept_after = log
            .acked
            .iter()
            .filter(|a| a.id > *first_lost && !loss.lost.contains(&a.id))
            .count();
        assert_eq!(kept_after, 0, "a write after a lost one was kept: {loss:?}");
        assert!(loss.first_lost_at.is_some() && loss.last_lost_at >= loss.first_lost_at);
    } else {
        assert_eq!(loss.window(), Duration::ZERO);
    }
    for id in &loss.unacknowledged_kept {
        assert!(log.failed.contains(id), "{id} was never attempted");
    }
}

#[test]
fn a_port_given_and_taken_fails_with_postgres_saying_so() {
    // The kit retries a port it picked when postgres logs PORT_TAKEN; a given one it cannot.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = held.local_addr().expect("its address").port();
    let options = PgPairOptions {
        a: NodeOptions {
            port: Some(port),
            ..NodeOptions::default()
        },
        ..PgPairOptions::default()
    };
    match PgPair::start_with(options) {
        Err(e @ PgError::Exited { .. }) => {
            assert!(e.to_string().contains(PORT_TAKEN), "{e}");
        }
        other => panic!("started on a taken port: {other:?}"),
    }
}

#[test]
fn the_replica_streams_and_its_lag_returns_to_zero() {
    // b listens elsewhere and runs every process under a prefix, as a DR site's node in
    // its own network namespace would (`ip netns exec dr`); here the prefix logs each
    // command and execs it.
    let logdir = tempfile::tempdir().expect("a temp dir");
    let prefix_log = logdir.path().join("prefix.log");
    let options = PgPairOptions {
        b: NodeOptions {
            listen: std::net::IpAddr::from([127, 0, 0, 2]),
            prefix: vec![
                "sh".into(),
                "-c".into(),
                "echo \"$*\" >> \"$0\"; exec \"$@\"".into(),
                prefix_log.clone().into(),
            ],
            ..NodeOptions::default()
        },
        ..PgPairOptions::default()
    };
    let pair = PgPair::start_with(options).unwrap_or_else(|e| panic!("start a postgres pair: {e}"));
    assert_eq!(pair.replica().endpoint().host.to_string(), "127.0.0.2");
    let run: Vec<String> = std::fs::read_to_string(&prefix_log)
        .expect("the prefix ran")
        .lines()
        .map(|l| {
            l.split_whitespace()
                .find(|w| w.contains("/bin/"))
                .unwrap_or(l)
                .to_string()
        })
        .collect();
    for tool in ["pg_basebackup", "postgres", "psql"] {
        assert!(
            run.iter().any(|p| p.ends_with(&format!("/bin/{tool}"))),
            "{tool} did not run under b's prefix: {run:?}"
        );
    }
    assert!(
        !run.iter().any(|p| p.ends_with("/bin/initdb")),
        "a's initdb ran under b's prefix"
    );
    assert_eq!(pair.primary().role(), Role::Primary);
    assert_eq!(pair.replica().role(), Role::Replica);
    assert!(ok!(&pair, "ask b", pair.replica().in_recovery()));
    ok!(
        &pair,
        "write on a",
        pair.primary().query_each(&[
            "CREATE TABLE t (id bigint PRIMARY KEY)",
            "INSERT INTO t SELECT generate_series(1, 5000)",
        ]),
    );
    let lag = ok!(&pair, "catch up", pair.wait_caught_up(WAIT));
    assert_eq!(lag.bytes, 0);
    assert!(lag.streaming, "{lag:?}");
    assert_eq!(count(pair.replica(), "t"), 5000);

    // With streaming paused, what the primary writes shows as bytes behind.
    ok!(&pair, "pause", pair.pause_replication());
    ok!(
        &pair,
        "write more",
        pair.primary()
            .query("INSERT INTO t SELECT generate_series(5001, 10000)"),
    );
    let behind = ok!(&pair, "lag", pair.lag());
    assert!(
        behind.bytes > 100_000 && !behind.streaming,
        "5000 rows unreplicated should be well over 100 kB behind: {behind:?}"
    );
    assert_eq!(behind.seconds(), None, "{behind:?}");
    assert_eq!(count(pair.replica(), "t"), 5000);

    ok!(&pair, "resume", pair.resume_replication());
    let lag = ok!(&pair, "catch up again", pair.wait_caught_up(WAIT));
    assert_eq!(lag.bytes, 0);
    assert_eq!(count(pair.replica(), "t"), 10_000);

    // A replica refuses writes.
    let refused = pair.replica().query("INSERT INTO t VALUES (0)");
    assert!(
        matches!(&refused, Err(PgError::Command { stderr, .. }) if stderr.contains("read-only")),
        "{refused:?}"
    );
}

#[test]
fn a_graceful_failover_loses_no_acknowledged_write() {
    let mut pair = start();
    let w = writer(&pair);
    ok!(&pair, "first writes", w.wait_acknowledged(200, WAIT));

    let stopped_at = ok!(&pair, "stop writes", pair.stop_writes());
    let at_stop = w.acknowledged();
    // The writer goes on trying; the primary refuses every insert.
    let start = Instant::now();
    while w.log().failed.len() < 5 {
        assert!(start.elapsed() < WAIT, "no refused insert: {:?}", w.log());
        drover_testkit::pause(Duration::from_millis(10));
    }
    assert_eq!(
        w.acknowledged(),
        at_stop,
        "a write went through after stop_writes"
    );
    assert!(
        w.log()
            .error_samples
            .iter()
            .any(|e| e.contains("read-only")),
        "{:?}",
        w.log().error_samples
    );

    let lag = ok!(&pair, "catch up", pair.wait_caught_up(WAIT));
    assert_eq!(lag.bytes, 0);
    let took = ok!(&pair, "promote b", pair.promote());
    assert!(took < Duration::from_secs(30));
    assert_eq!(pair.primary().name(), "b");
    assert_eq!(pair.replica().role(), Role::Former);
    assert!(!ok!(&pair, "ask b", pair.primary().in_recovery()));

    let loss = ok!(&pair, "measure", w.lost_after_promotion(pair.primary()));
    assert_consistent(&w.log(), &loss);
    assert!(loss.lost.is_empty(), "graceful lost {loss:?}");
    assert_eq!(loss.kept, at_stop);
    assert_eq!(loss.window(), Duration::ZERO);

    // The old primary stays read-only; the new one takes the writer's load.
    let refused = pair
        .replica()
        .query("INSERT INTO drover_writes (id) VALUES (-1)");
    assert!(
        refused.is_err(),
        "the old primary took a write: {refused:?}"
    );
    w.retarget(pair.primary().endpoint());
    ok!(
        &pair,
        "writes on b",
        w.wait_acknowledged(at_stop + 200, WAIT)
    );
    let log = w.stop();
    let loss = ok!(&pair, "measure", log.lost_after_promotion(pair.primary()));
    assert!(loss.lost.is_empty(), "{loss:?}");
    assert_eq!(loss.kept, log.acked.len());
    assert!(stopped_at.0 > 0);
}

#[test]
fn an_ungraceful_failover_measures_what_it_lost() {
    let mut pair = start();
    let w = writer(&pair);
    ok!(&pair, "first writes", w.wait_acknowledged(300, WAIT));
    pair.kill_primary();
    let at_kill = w.acknowledged();
    ok!(&pair, "promote b", pair.promote());
    assert_eq!(pair.primary().name(), "b");

    let log = w.log();
    let loss = ok!(&pair, "measure", log.lost_after_promotion(pair.primary()));
    assert_consistent(&log, &loss);
    assert!(loss.acknowledged >= at_kill && at_kill >= 300, "{loss:?}");
    eprintln!(
        "ungraceful: {} acknowledged, {} lost, window {:?}, {} unacknowledged but kept",
        loss.acknowledged,
        loss.lost.len(),
        loss.window(),
        loss.unacknowledged_kept.len()
    );

    // The writer carries on at the new primary, after the ids it burned.
    w.retarget(pair.primary().endpoint());
    ok!(
        &pair,
        "writes on b",
        w.wait_acknowledged(at_kill + 100, WAIT)
    );
    let log = w.stop();
    let after = ok!(&pair, "measure", log.lost_after_promotion(pair.primary()));
    assert_eq!(after.lost, loss.lost, "only the failover lost writes");

    // The old primary's disk lost its control file: pg_rewind cannot use it, so it is
    // copied afresh, and it follows b.
    let control = pair.replica().data_dir().join("global/pg_control");
    std::fs::remove_file(&control).unwrap_or_else(|e| panic!("remove {}: {e}", control.display()));
    let rejoin = ok!(pair, "rejoin a", pair.rejoin_old_primary_as_replica());
    assert!(matches!(rejoin, Rejoin::Recloned { .. }), "{rejoin:?}");
    assert_eq!(pair.replica().role(), Role::Replica);
    ok!(pair, "a catches up", pair.wait_caught_up(WAIT));
    assert_eq!(
        count(pair.replica(), "drover_writes"),
        count(pair.primary(), "drover_writes")
    );
}

#[test]
fn writes_the_replica_never_received_are_reported_lost() {
    let mut pair = start();
    let w = writer(&pair);
    ok!(&pair, "first writes", w.wait_acknowledged(100, WAIT));
    ok!(&pair, "pause replication", pair.pause_replication());
    // From here on nothing the primary acknowledges reaches b.
    let unreplicated_from = w.acknowledged();
    let paused_at = std::time::SystemTime::now();
    ok!(
        &pair,
        "writes while paused",
        w.wait_acknowledged(unreplicated_from + 200, WAIT),
    );
    pair.kill_primary();
    // What the DR plan's pg-replayed tells of b before its promotion: the
    // commit time of its last replayed write, and no heard_at (it no
    // longer streams). Every lost write came after it.
    let (ok_, out, err) = helper("pg-replayed", &pair.replica().endpoint(), &[]);
    assert!(ok_, "{err}");
    assert!(!out.contains("heard_at="), "b does not stream: {out}");
    let replayed_at: f64 = field(&out, "replayed_at")
        .parse()
        .expect("replayed_at is a number");
    ok!(&pair, "promote b", pair.promote());
    let log = w.stop();
    let loss = ok!(&pair, "measure", log.lost_after_promotion(pair.primary()));
    assert_consistent(&log, &loss);
    let first_lost = (loss.first_lost_at)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .expect("writes were lost")
        .as_secs_f64();
    assert!(
        replayed_at <= first_lost,
        "pg-replayed says b replayed up to {replayed_at}, after the first lost write ({first_lost}): {out}"
    );
    let surely_lost: Vec<u64> = log.acked[unreplicated_from..]
        .iter()
        .map(|a| a.id)
        .collect();
    assert!(surely_lost.len() >= 200);
    for id in &surely_lost {
        assert!(
            loss.lost.contains(id),
            "{id} was never replicated: {loss:?}"
        );
    }
    let window_floor = log
        .acked
        .last()
        .and_then(|a| a.at.duration_since(paused_at).ok())
        .unwrap_or_default();
    assert!(
        loss.window() >= window_floor,
        "the window {:?} covers at least the writes since the pause ({window_floor:?})",
        loss.window()
    );
}

#[test]
fn the_old_primary_rejoins_and_a_switch_back_loses_nothing() {
    let mut pair = start();
    ok!(
        &pair,
        "write on a",
        pair.primary().query_each(&[
            "CREATE TABLE t (id bigint PRIMARY KEY)",
            "INSERT INTO t SELECT generate_series(1, 1000)",
        ]),
    );
    ok!(&pair, "catch up", pair.wait_caught_up(WAIT));
    pair.kill_primary();
    ok!(&pair, "promote b", pair.promote());
    ok!(
        &pair,
        "write on b",
        pair.primary()
            .query("INSERT INTO t SELECT generate_series(1001, 2000)"),
    );

    let rejoin = ok!(&pair, "rejoin a", pair.rejoin_old_primary_as_replica());
    assert_eq!(rejoin, Rejoin::Rewound);
    assert_eq!(pair.replica().name(), "a");
    assert_eq!(pair.replica().role(), Role::Replica);
    assert!(ok!(&pair, "ask a", pair.replica().in_recovery()));
    ok!(&pair, "a catches up", pair.wait_caught_up(WAIT));
    assert_eq!(count(pair.replica(), "t"), 2000);

    // Switch back under load: nothing acknowledged is lost, a takes the writes again.
    let w = writer(&pair);
    ok!(&pair, "writes on b", w.wait_acknowledged(200, WAIT));
    let switch = ok!(&pair, "switch back", pair.switchover());
    assert_eq!(switch.rejoin, Rejoin::Rewound);
    assert_eq!(pair.primary().name(), "a");
    assert_eq!(pair.replica().name(), "b");
    assert_eq!(pair.replica().role(), Role::Replica);
    let before = w.acknowledged();
    w.retarget(pair.primary().endpoint());
    ok!(
        &pair,
        "writes on a",
        w.wait_acknowledged(before + 200, WAIT)
    );
    let log = w.stop();
    let loss = ok!(&pair, "measure", log.lost_after_promotion(pair.primary()));
    assert_consistent(&log, &loss);
    assert!(loss.lost.is_empty(), "switch back lost {loss:?}");
    assert_eq!(count(pair.primary(), "t"), 2000);
    ok!(&pair, "b catches up", pair.wait_caught_up(WAIT));
    assert_eq!(
        count(pair.replica(), "drover_writes"),
        count(pair.primary(), "drover_writes")
    );
}

/// Runs `examples/dr/NAME ARGS` against `target` (as PG* variables); (success, stdout, stderr).
fn helper(name: &str, target: &PgEndpoint, args: &[&str]) -> (bool, String, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/dr")
        .join(name);
    let mut cmd = std::process::Command::new(&path);
    for var in [
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "PGOPTIONS",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .envs(target.env())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// `key=value` from a helper's one-line result.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

#[test]
fn the_dr_plan_helpers_measure_stop_writes_and_promote() {
    let mut pair = start();
    let (a, b) = (pair.primary().endpoint(), pair.replica().endpoint());
    ok!(
        pair,
        "write on a",
        pair.primary().query_each(&[
            "CREATE TABLE t (id bigint PRIMARY KEY)",
            "INSERT INTO t SELECT generate_series(1, 2000)",
        ])
    );

    let (ok_, out, err) = helper("pg-health", &a, &["--expect", "writable"]);
    assert!(ok_, "{err}");
    assert_eq!(field(&out, "role"), "primary");
    assert_eq!(field(&out, "writable"), "yes");
    let (ok_, out, err) = helper("pg-health", &b, &["--expect", "primary"]);
    assert!(!ok_ && out.starts_with("role=replica"), "{out}");
    assert!(err.contains("is a replica, expected a primary"), "{err}");

    // Lag from the primary, then waiting until it is 0; not from the replica.
    let (ok_, out, err) = helper("pg-lag", &a, &[]);
    assert!(ok_, "{err}");
    let bytes: u64 = field(&out, "lag_bytes")
        .parse()
        .expect("lag_bytes is a number");
    let seconds: f64 = field(&out, "lag_seconds")
        .parse()
        .expect("lag_seconds is a number");
    assert!(seconds >= 0.0 && bytes < 1 << 30, "{out}");
    let (ok_, out, err) = helper("pg-lag", &a, &["--wait-caught-up", "20", "--standby", "b"]);
    assert!(ok_, "{err}");
    assert_eq!(field(&out, "lag_bytes"), "0", "{out}");
    let (ok_, _, err) = helper("pg-lag", &b, &[]);
    assert!(!ok_ && err.contains("is a replica"), "{err}");
    // What the replica replayed, while it streams: both times, the last
    // replayed commit no later than when it last heard from a.
    let (ok_, out, err) = helper("pg-replayed", &b, &[]);
    assert!(ok_, "{err}");
    let at = |key: &str| -> f64 {
        field(&out, key)
            .parse()
            .unwrap_or_else(|_| panic!("{key} is a number: {out}"))
    };
    assert!(at("replayed_at") <= at("heard_at") + 0.001, "{out}");
    let (ok_, _, err) = helper("pg-replayed", &a, &[]);
    assert!(!ok_ && err.contains("is not in recovery"), "{err}");
    let (ok_, _, err) = helper("pg-lag", &a, &["--standby", "nobody"]);
    assert!(!ok_ && err.contains("no replica named nobody"), "{err}");

    // Writes stop under load: an insert is refused, the health check says so.
    let w = writer(&pair);
    ok!(pair, "writes on a", w.wait_acknowledged(200, WAIT));
    let (ok_, out, err) = helper("pg-stop-writes", &a, &[]);
    assert!(ok_, "{err}");
    assert!(out.starts_with("writes_stopped lsn="), "{out}");
    assert_ne!(
        field(&out, "terminated"),
        "0",
        "the writer's session: {out}"
    );
    let at_stop = w.acknowledged();
    let refused = pair.primary().query("INSERT INTO t VALUES (0)");
    assert!(
        matches!(&refused, Err(PgError::Command { stderr, .. }) if stderr.contains("read-only")),
        "{refused:?}"
    );
    let (ok_, out, _) = helper("pg-health", &a, &["--expect", "writable"]);
    assert!(!ok_ && field(&out, "writable") == "no", "{out}");
    let (ok_, out, err) = helper("pg-lag", &a, &["--wait-caught-up", "20"]);
    assert!(ok_ && field(&out, "lag_bytes") == "0", "{out} {err}");

    // Promotion, given by flags this time; running it again is harmless.
    let flags = ["--host", &b.host.to_string(), "--port", &b.port.to_string()];
    let (ok_, out, err) = helper("pg-promote", &a, &flags);
    assert!(ok_, "{err}");
    assert_eq!(field(&out, "promoted"), "yes", "{out}");
    let (ok_, out, err) = helper("pg-health", &b, &["--expect", "writable"]);
    assert!(ok_ && field(&out, "role") == "primary", "{out} {err}");
    // The graceful path through the helpers lost nothing, and b takes the load.
    let loss = ok!(pair, "measure", w.lost_after_promotion(pair.replica()));
    assert_consistent(&w.log(), &loss);
    assert!(loss.lost.is_empty() && loss.kept == at_stop, "{loss:?}");
    w.retarget(b.clone());
    ok!(
        pair,
        "writes on b",
        w.wait_acknowledged(at_stop + 100, WAIT)
    );
    drop(w.stop());
    ok!(
        pair,
        "write on b",
        pair.replica().query("INSERT INTO t VALUES (0)")
    );
    assert_eq!(count(pair.replica(), "t"), 2001);
    let (ok_, out, err) = helper("pg-promote", &b, &[]);
    assert!(ok_ && field(&out, "promoted") == "already", "{out} {err}");
    // The kit takes note of a promotion done without it, and a can rejoin b.
    ok!(pair, "record b's promotion", pair.promote());
    assert_eq!(pair.primary().name(), "b");
    ok!(pair, "rejoin a", pair.rejoin_old_primary_as_replica());
    ok!(pair, "a catches up", pair.wait_caught_up(WAIT));
    assert_eq!(count(pair.replica(), "t"), 2001);

    // No database, or none listening: a message naming it, exit 1.
    let mut nowhere = b.clone();
    nowhere.host = std::net::IpAddr::from([127, 0, 0, 1]);
    nowhere.port = 1;
    let (ok_, _, err) = helper("pg-health", &nowhere, &[]);
    assert!(!ok_ && err.starts_with("pg-health: 127.0.0.1:1: "), "{err}");
    let (ok_, _, err) = helper("pg-lag", &a, &["--host", ""]);
    assert!(!ok_ && err.contains("no database given"), "{err}");
}
