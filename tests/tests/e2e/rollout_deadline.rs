//! Rollouts that cannot go on end at their progress deadline, saying why:
//! one whose floor can no longer be met, one whose hosts stopped answering.

use drover_tests::harness::process::signal;
use drover_tests::{WAIT, WebFleet};

/// Short deadlines; the progress deadline must exceed healthy_deadline +
/// step_timeout (4s here).
fn args(extra: &[&'static str], progress_deadline: &'static str) -> Vec<&'static str> {
    let mut v = extra.to_vec();
    v.extend_from_slice(&[
        "--min-healthy-time",
        "500ms",
        "--healthy-deadline",
        "2s",
        "--step-timeout",
        "2s",
        "--progress-deadline",
        progress_deadline,
    ]);
    v
}

#[test]
fn a_floor_that_can_no_longer_be_met_fails_at_the_progress_deadline() {
    let web = WebFleet::builder().hosts(3).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let id = web
        .start_detached("v2", &args(&["--min-healthy", "2"], "8s"))
        .id;
    // Paused at once: web@h1, already under way, finishes; nothing else
    // starts while h1 is made to fail.
    web.act("pause", &id);
    let paused = web.wait_rollout(&id, "is paused with web@h1 done", WAIT, |r| {
        r.phase == "paused" && r.counts.in_progress == 0
    });
    assert_eq!(paused.instance("h1").step, "done", "{}", paused.timeline());
    // The updated h1 freezes: it no longer answers its health check, and
    // with h1 down no other instance may be taken below the floor of 2.
    let frozen = web
        .fleet
        .agent("h1")
        .instance_pid("web")
        .unwrap_or_else(|| panic!("no pid for web@h1\n{}", web.diagnostics()));
    signal(frozen as i32, libc::SIGSTOP);
    web.wait_rollout(&id, "sees web@h1 unavailable", WAIT, |r| r.capacity == 2);
    web.act("resume", &id);

    let watch = web.rollout(&["watch", &id]);
    let r = web.wait_finished(&id, WAIT);
    signal(frozen as i32, libc::SIGCONT);
    let diag = || format!("{watch}\n{}\n{}", r.timeline(), web.diagnostics());
    assert_eq!(r.phase, "failed", "{}", diag());
    assert_eq!(watch.code, Some(1), "{}", diag());
    let reason = r.reason_text();
    assert!(
        reason.contains("no progress for 8s") && reason.contains("floor 2"),
        "the reason must name the deadline and the floor: {reason:?}\n{}",
        diag()
    );
    assert!(
        watch.combined().contains("no progress"),
        "the CLI must say why\n{}",
        diag()
    );
    let waiting: Vec<&str> = r
        .instances
        .iter()
        .filter(|i| i.step == "pending")
        .map(|i| i.host.as_str())
        .collect();
    assert!(!waiting.is_empty(), "{}", diag());
    for host in waiting {
        assert_eq!(
            web.instance_version(host).as_deref(),
            Ok("v1"),
            "{host} must still serve v1\n{}",
            diag()
        );
    }
    assert!(r.drains_under_floor().is_empty(), "{}", diag());
}

#[test]
fn hosts_that_stop_answering_end_the_rollout_at_the_progress_deadline() {
    let web = WebFleet::builder().hosts(3).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    // h2's and h3's agents freeze with their connections open; their
    // instances keep serving. The coordinator marks them lost.
    for host in ["h2", "h3"] {
        web.fleet.agent(host).signal(libc::SIGSTOP);
    }
    for host in ["h2", "h3"] {
        web.fleet.wait_status(host, "lost", WAIT);
    }

    let out = web.start_rollout(
        "v2",
        &args(&["--min-healthy", "0", "--lost-hosts", "wait"], "6s"),
    );
    let r = web.latest();
    for host in ["h2", "h3"] {
        web.fleet.agent(host).signal(libc::SIGCONT);
    }
    let diag = || format!("{out}\n{}\n{}", r.timeline(), web.diagnostics());
    assert_eq!(out.code, Some(1), "{}", diag());
    assert_eq!(r.phase, "failed", "{}", diag());
    let reason = r.reason_text();
    assert!(
        reason.contains("no progress for 6s")
            && reason.contains("lost")
            && reason.contains("h2")
            && reason.contains("h3"),
        "the reason must name the deadline and the lost hosts: {reason:?}\n{}",
        diag()
    );
    assert!(out.combined().contains("no progress"), "{}", diag());
    assert_eq!(r.instance("h1").step, "done", "{}", diag());
    for host in ["h2", "h3"] {
        assert_eq!(r.instance(host).step, "pending", "{}", diag());
        assert_eq!(
            web.instance_version(host).as_deref(),
            Ok("v1"),
            "{host} keeps serving v1\n{}",
            diag()
        );
    }
}

/// A step that hangs: the agent kills its hook at the step timeout, the
/// failure budget stops the rollout, and the automatic rollback returns
/// the instance to v1: the rollout ends rolled back, not failed. (The
/// rollback's first command may reach the agent before it has given up on
/// the hung step, since it counts the timeout from the command's arrival;
/// it then waits instead of being refused as busy. On loopback the agent is
/// usually first; `agent/tests/commands.rs` covers the overlap itself.)
#[test]
fn a_hung_step_times_out_and_the_rollback_after_it_completes() {
    // v3's after_deploy hook never returns; v1's passes at once.
    let hook = "[instance.hooks]\n\
                after_deploy = [\"/bin/sh\", \"-c\", \"[ \\\"$DROVER_RELEASE_VERSION\\\" = v3 ] && exec sleep 1000; exit 0\"]\n\
                timeout = \"60s\"";
    let web = WebFleet::builder().hosts(3).instance_toml(hook).start();
    web.deploy_initial("v1");
    web.push_release("v3", &[]);
    let out = web.start_rollout(
        "v3",
        &args(
            &[
                "--min-healthy",
                "2",
                "--max-failures",
                "0",
                "--auto-rollback",
            ],
            "20s",
        ),
    );
    let r = web.latest();
    let diag = || format!("{out}\n{}\n{}", r.timeline(), web.diagnostics());
    assert_eq!(out.code, Some(1), "{}", diag());
    assert_eq!(r.phase, "rolled_back", "{}", diag());
    let h1 = r.instance("h1");
    assert_eq!(h1.step, "rolled_back", "{}", diag());
    assert_eq!(h1.version(), Some("v1"), "{}", diag());
    assert!(
        r.reason_text().contains("timed out"),
        "the reason must say the step timed out: {:?}\n{}",
        r.reason_text(),
        diag()
    );
    for host in ["h1", "h2", "h3"] {
        assert_eq!(
            web.instance_version(host).as_deref(),
            Ok("v1"),
            "{host} serves v1 again\n{}",
            diag()
        );
    }
}
