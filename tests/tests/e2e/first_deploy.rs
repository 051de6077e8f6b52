//! The operator's first moments with a fleet (issue 10, section 6): a first
//! deploy is explained and `--initial` does it; instances never deployed
//! say `not deployed`; a start refused under the floor names the hosts not
//! connected; a rollout over instances nothing drains is warned about; a
//! token TTL above the coordinator's maximum is refused (exit 1).

use drover_tests::harness::release::{sample_release, write_artifact};
use drover_tests::{Fleet, WebFleet};

#[test]
fn a_first_deploy_is_explained_and_initial_does_it() {
    let mut web = WebFleet::builder().hosts(2).start();

    // Never deployed: the agents say so instead of crash-looping.
    let cli = web.fleet.operator();
    let hosts = web.fleet.wait(
        drover_tests::WAIT,
        "every instance reports not deployed",
        || {
            let hosts = cli.try_agents(None).ok()?;
            hosts
                .iter()
                .all(|h| h.instances.iter().all(|i| i.state == "not_deployed"))
                .then_some(hosts)
        },
    );
    for h in &hosts {
        assert_eq!(h.instances[0].restarts, 0, "{h:?}");
    }
    let wide = cli.run(&["agents", "-o", "wide"]).expect_success();
    assert!(wide.stdout.contains("not deployed"), "{wide}");
    assert!(
        !wide.stdout.contains("crashed") && !wide.stdout.contains("unhealthy"),
        "{wide}"
    );

    // With the default floor the start is refused, and says why.
    web.push_release("v1", &[]);
    let refused = web.start_rollout("v1", &[]);
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(
        refused.stderr.contains(
            "2 never deployed: a first deploy needs min_healthy 0 (`drover rollout start \
             --initial`, or --min-healthy 0)"
        ),
        "{refused}"
    );
    // HAProxy drains these instances: no warning.
    assert!(!refused.stderr.contains("no drain configured"), "{refused}");

    let first = web.start_rollout("v1", &["--initial", "--batch", "100%"]);
    assert_eq!(first.code, Some(0), "{first}\n{}", web.diagnostics());
    web.wait_all_serving("v1");

    // Once anything serves a release, --initial would take it all down.
    web.push_release("v2", &[]);
    let again = web.start_rollout("v2", &["--initial"]);
    assert_eq!(again.code, Some(1), "{again}");
    assert!(
        again
            .stderr
            .contains("--initial is for a first deploy, but web@h1, web@h2 of web already serve"),
        "{again}"
    );
    assert!(web.fleet.agents_json().iter().all(|h| h.healthy()));

    // A host that is not connected (here its agent is gone; after a
    // coordinator restart, one still reconnecting) is named in a refusal.
    web.fleet.agent_mut("h2").kill();
    web.fleet.wait_status("h2", "lost", drover_tests::WAIT);
    let refused = web.start_rollout("v2", &["--min-healthy", "2"]);
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(
        refused
            .stderr
            .contains("floor 2 of 2 but only 1 healthy and in service; h2 disconnected"),
        "{refused}"
    );
}

#[test]
fn undrained_instances_are_warned_about_and_a_long_token_is_refused() {
    let fleet = Fleet::builder()
        .coordinator(|c| c.max_token_ttl = Some("1h".into()))
        .agents(2)
        .start();
    let file = write_artifact(
        &fleet.dir.join("artifacts"),
        "web-v2.tar.gz",
        &sample_release("v2", &[]),
    );
    fleet.push_artifact(&file, "web", "v2");

    // The plain agents run `web` with no [instance.drain].
    let out = fleet.cli(&[
        "rollout",
        "start",
        "--service",
        "web",
        "--version",
        "v2",
        "--min-healthy",
        "1",
        "--dry-run",
    ]);
    assert_eq!(out.code, Some(0), "{out}");
    assert!(out.stdout.starts_with("Plan: web to v2"), "{out}");
    assert!(
        out.stderr.contains(
            "warning: 2 instances of web have no drain configured (web@h1, web@h2): requests \
             in flight when each is stopped will fail"
        ),
        "{out}"
    );

    let out = fleet.cli(&["token", "create", "--ttl", "2h"]);
    assert_eq!(out.code, Some(1), "refused, not a usage error: {out}");
    assert!(
        out.stderr
            .contains("refused: ttl 2h is above this coordinator's maximum of 1h"),
        "{out}"
    );
    let ok = fleet.cli(&["token", "create", "--ttl", "1h"]);
    assert_eq!(ok.code, Some(0), "{ok}");
}
