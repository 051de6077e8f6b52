//! The operator's `drover rollout start` (not detached, output into a file
//! as from a script or CI job) while the coordinator is SIGKILLed (issue 10,
//! section 6): it reconnects when the coordinator comes back on the same
//! address and exits by the rollout's outcome, printing no event twice; it
//! exits 3 (outcome unknown) when the coordinator stays away longer than
//! `--reconnect-for`.

use std::path::Path;
use std::time::Duration;

use drover_tests::harness::rollout::SERVICE;
use drover_tests::{Proc, WAIT, WebFleet};

/// The rollout's whole run after the disruption, at most.
const FINISH: Duration = Duration::from_secs(60);

/// `drover rollout start` for v2, two at a time, each instance verified
/// for 2 s, run in the background with its stdout and stderr in `log`.
fn start_following(web: &WebFleet, log: &Path, extra: &[&str]) -> Proc {
    let mut flags = vec![
        "--batch",
        "1",
        "--min-healthy",
        "50%",
        "--min-healthy-time",
        "2s",
    ];
    flags.extend_from_slice(extra);
    let args = WebFleet::start_args("v2", &flags);
    let mut all = vec!["rollout"];
    all.extend(args.iter().map(String::as_str));
    Proc::spawn(
        "drover rollout start",
        web.fleet.operator().command(&all),
        log,
    )
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// The rollout id from the CLI's `rollout ID started: ...` line.
fn started_id(log: &Path) -> Option<String> {
    read(log).lines().find_map(|l| {
        let rest = l.strip_prefix("rollout ")?;
        let (id, tail) = rest.split_once(' ')?;
        tail.starts_with("started:").then(|| id.to_string())
    })
}

/// Event lines (`HH:MM:SS  INSTANCE  STEP  capacity C/floor F  MESSAGE`).
fn event_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| {
            let b = l.as_bytes();
            b.len() > 10
                && b[2] == b':'
                && b[5] == b':'
                && l.get(8..).is_some_and(|t| t.starts_with("  "))
        })
        .collect()
}

/// Starts the rollout in the background and kills the coordinator while
/// an instance is verifying; returns the CLI process and the rollout id
/// once the CLI says it lost contact.
fn kill_coordinator_mid_rollout(web: &mut WebFleet, log: &Path, extra: &[&str]) -> (Proc, String) {
    web.deploy_initial("v1");
    // v2 listens a second late and must then stay healthy for 2 s: the
    // coordinator dies in that window.
    web.push_release("v2", &["--start-delay", "1s"]);
    let cli = start_following(web, log, extra);
    let id = web
        .fleet
        .wait(WAIT, "the CLI prints the rollout id", || started_id(log));
    web.wait_rollout(&id, "has an instance verifying", WAIT, |r| {
        r.instances.iter().any(|i| i.step == "verifying")
    });
    web.fleet.coordinator.kill();
    web.fleet
        .wait(WAIT, "the CLI notices the coordinator is gone", || {
            read(log).contains("lost contact with the coordinator")
        });
    assert!(cli.is_running(), "{}", cli.describe(40));
    (cli, id)
}

#[test]
fn rollout_start_rides_through_a_coordinator_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("drover-rollout-start.log");
    let mut web = WebFleet::builder().hosts(3).fixed_ports().start();
    let grpc = web.fleet.coordinator.grpc_addr();
    let (cli, id) = kill_coordinator_mid_rollout(&mut web, &log, &[]);

    web.fleet.coordinator.start();
    assert_eq!(web.fleet.coordinator.grpc_addr(), grpc, "fixed port moved");
    let status = cli.wait_exit(FINISH);
    let rollout = web.status(&id);
    let text = read(&log);
    let diag = || {
        format!(
            "{}\n{}{}",
            cli.describe(60),
            rollout.timeline(),
            web.diagnostics_for(&id)
        )
    };

    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "the CLI must exit by the rollout's outcome\n{}",
        diag()
    );
    assert!(
        text.contains("reconnected to the coordinator"),
        "{}",
        diag()
    );
    assert!(
        text.contains(&format!("rollout {id} succeeded in ")),
        "{}",
        diag()
    );
    assert!(
        !text.contains("certificate"),
        "no certificate hint for a restart\n{}",
        diag()
    );
    // Every event once, in order: the CLI printed what the coordinator
    // stored, across the restart, without repeating the history the new
    // stream began with.
    let printed = event_lines(&text);
    let messages: Vec<&str> = rollout.events.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        printed.len(),
        messages.len(),
        "event lines printed vs events stored\n{}",
        diag()
    );
    for (line, message) in printed.iter().zip(&messages) {
        assert!(
            line.ends_with(message),
            "{line:?} is not {message:?}\n{}",
            diag()
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.contains("resumed after a coordinator restart")),
        "{}",
        diag()
    );
    assert!(rollout.counts.done >= 1, "{}", diag());
    web.wait_all_serving("v2");
    assert_eq!(rollout.service, SERVICE);
}

#[test]
fn rollout_start_exits_3_when_the_coordinator_stays_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("drover-rollout-start.log");
    let mut web = WebFleet::builder().hosts(2).fixed_ports().start();
    let (cli, id) = kill_coordinator_mid_rollout(&mut web, &log, &["--reconnect-for", "3s"]);

    let status = cli.wait_exit(WAIT);
    let text = read(&log);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "exit 3: lost contact, outcome unknown\n{}",
        cli.describe(40)
    );
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: lost contact with the coordinator at {} while following rollout {id} and \
             could not reach it again within 3s",
            web.fleet.coordinator.grpc_addr()
        )),
        "{text}"
    );
    assert!(
        last.ends_with(&format!("see `drover rollout status {id}`")),
        "{text}"
    );
}

/// `drover rollout watch` started while the coordinator is down (mid
/// restart): it keeps dialling, follows the rollout once the coordinator is
/// back, and exits by its outcome; started when it stays away, it exits 3.
#[test]
fn rollout_watch_waits_for_a_coordinator_that_is_down_when_it_starts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut web = WebFleet::builder().hosts(2).fixed_ports().start();
    web.deploy_initial("v1");
    web.push_release("v2", &["--start-delay", "1s"]);
    let started = web.start_detached("v2", &["--min-healthy", "50%", "--min-healthy-time", "2s"]);
    let id = started.id.clone();
    web.fleet.coordinator.kill();

    // Gives up after --reconnect-for with exit 3, naming the rollout.
    let short = dir.path().join("watch-short.log");
    let cli = Proc::spawn(
        "drover rollout watch",
        web.fleet
            .operator()
            .command(&["rollout", "watch", &id, "--reconnect-for", "2s"]),
        &short,
    );
    let status = cli.wait_exit(WAIT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "{}",
        cli.describe(20)
    );
    let text = read(&short);
    assert!(
        text.contains("cannot reach the coordinator") && text.contains(&id),
        "{text}"
    );

    // Rides through: dialling until the coordinator is back.
    let log = dir.path().join("watch.log");
    let cli = Proc::spawn(
        "drover rollout watch",
        web.fleet.operator().command(&["rollout", "watch", &id]),
        &log,
    );
    web.fleet.wait(WAIT, "the CLI says it keeps trying", || {
        read(&log).contains("trying again for up to").then_some(())
    });
    web.fleet.coordinator.start();
    let status = cli.wait_exit(FINISH);
    let rollout = web.status(&id);
    assert_eq!(rollout.phase, "succeeded", "{}", cli.describe(40));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        cli.describe(40)
    );
    assert!(
        read(&log).contains(&format!("rollout {id} succeeded in ")),
        "{}",
        cli.describe(40)
    );
}
