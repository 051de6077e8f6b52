//! Steering rollouts: the dry run's forecast and refusals, pause and
//! resume, abort, and a manual rollback, against a real fleet behind
//! HAProxy.

use std::collections::BTreeSet;
use std::time::Duration;

use drover_tests::{RolloutView, WAIT, WebFleet, holds_for};

/// One instance at a time on 4 hosts: floor 3.
const ONE_AT_A_TIME: &[&str] = &["--min-healthy", "75%", "--min-healthy-time", "1s"];

fn step<'a>(r: &'a RolloutView, host: &str) -> &'a str {
    r.instance(host).step.as_str()
}

fn in_chain(step: &str) -> bool {
    !matches!(
        step,
        "pending" | "done" | "failed" | "skipped" | "rolled_back"
    )
}

#[test]
fn dry_run_forecasts_batches_and_capacity_and_refuses_impossible_specs() {
    let web = WebFleet::builder().hosts(6).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let before = web.try_list().unwrap_or_else(|e| panic!("{e}"));

    let (out, plan) = web.dry_run("v2", &["--batch", "1,25%,100%", "--min-healthy", "50%"]);
    let plan = plan.unwrap_or_else(|| panic!("no plan JSON:\n{out}\n{}", web.diagnostics()));
    assert_eq!(out.code, Some(0), "{out}");
    assert_eq!((plan.total, plan.floor, plan.capacity), (6, 3, 6), "{out}");
    assert!(plan.skipped.is_empty(), "{out}");
    assert_eq!(plan.stalls, None, "{out}");
    let sizes: Vec<usize> = plan.batches.iter().map(|b| b.instances.len()).collect();
    // 1, then 25% of 6 rounded down, then the rest.
    assert_eq!(sizes, vec![1, 1, 4], "{out}");
    let mut seen = BTreeSet::new();
    for b in &plan.batches {
        for i in &b.instances {
            assert!(seen.insert(i.clone()), "{i} planned twice\n{out}");
        }
        let waved: Vec<String> = b.waves.iter().flatten().cloned().collect();
        assert_eq!(waved, b.instances, "waves must cover the batch\n{out}");
        assert!(
            b.waves.iter().all(|w| w.len() <= 3) && b.max_down <= 3,
            "no more than capacity - floor = 3 down at once\n{out}"
        );
        assert!(b.lowest_capacity >= plan.floor, "{out}");
    }
    assert_eq!(seen.len(), 6, "{out}");
    assert!(
        plan.batches[2].waves.len() >= 2,
        "the floor must split the last batch of 4\n{out}"
    );
    assert_eq!(plan.lowest_capacity, 3, "{out}");

    // Specs that cannot work are refused with the reason.
    let refusals: [(&[&str], i32, &[&str]); 4] = [
        (
            &["--min-healthy", "100%"],
            1,
            &["floor 6 of 6", "min_healthy"],
        ),
        (&["--min-healthy", "7"], 1, &["floor of 7", "6 instances"]),
        (
            &["--progress-deadline", "5s"],
            2,
            &["progress_deadline", "healthy_deadline + step_timeout"],
        ),
        (
            &["-l", "zone=nowhere"],
            1,
            &["no instances", "zone=nowhere"],
        ),
    ];
    for (flags, code, words) in refusals {
        for dry in [true, false] {
            let out = if dry {
                web.dry_run("v2", flags).0
            } else {
                web.start_rollout("v2", flags)
            };
            assert_eq!(out.code, Some(code), "{flags:?} dry={dry}\n{out}");
            assert!(
                words.iter().all(|w| out.stderr.contains(w)),
                "{flags:?} dry={dry}: the refusal must say {words:?}\n{out}"
            );
        }
    }

    // Nothing was started by any of it.
    let after = web.try_list().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        after.len(),
        before.len(),
        "a dry run or a refused start was stored: {after:?}"
    );
    assert!(
        web.served_versions()
            .values()
            .all(|v| v.as_deref() == Ok("v1")),
        "{}",
        web.diagnostics()
    );
}

#[test]
fn pause_finishes_in_flight_and_starts_nothing_until_resumed() {
    let web = WebFleet::builder().hosts(4).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let id = web.start_detached("v2", ONE_AT_A_TIME).id;
    web.wait_rollout(&id, "works on web@h1", WAIT, |r| in_chain(step(r, "h1")));

    let paused = web.act("pause", &id);
    assert!(
        matches!(paused.phase.as_str(), "paused" | "running"),
        "{}",
        paused.timeline()
    );
    let settled = web.wait_rollout(&id, "is paused with nothing in flight", WAIT, |r| {
        r.phase == "paused" && r.counts.in_progress == 0
    });
    assert_eq!(step(&settled, "h1"), "done", "{}", settled.timeline());
    let done = settled.counts.done;
    assert!(done < 4, "{}", settled.timeline());
    holds_for(
        Duration::from_secs(2),
        "a paused rollout starts nothing",
        || {
            web.try_status(&id).is_ok_and(|r| {
                r.phase == "paused" && r.counts.in_progress == 0 && r.counts.done == done
            })
        },
        || web.diagnostics_for(&id),
    );
    web.haproxy.wait_serving(4, WAIT);

    let resumed = web.act("resume", &id);
    assert_eq!(resumed.phase, "running", "{}", resumed.timeline());
    let watch = web.rollout(&["watch", &id]);
    let r = web.wait_finished(&id, WAIT);
    let diag = || format!("{watch}\n{}\n{}", r.timeline(), web.diagnostics());
    assert_eq!(watch.code, Some(0), "{}", diag());
    assert_eq!(r.phase, "succeeded", "{}", diag());
    assert_eq!(r.counts.done, 4, "{}", diag());
    for msg in ["paused by operator", "resumed by operator"] {
        assert!(
            r.events.iter().any(|e| e.message.contains(msg)),
            "no event {msg:?}\n{}",
            diag()
        );
    }
    assert!(r.drains_under_floor().is_empty(), "{}", diag());
    web.wait_all_serving("v2");
}

#[test]
fn abort_leaves_every_instance_on_old_or_new_and_in_service() {
    let web = WebFleet::builder().hosts(4).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let id = web.start_detached("v2", ONE_AT_A_TIME).id;
    web.wait_rollout(&id, "has web@h1 done and works on web@h2", WAIT, |r| {
        step(r, "h1") == "done" && in_chain(step(r, "h2"))
    });

    web.act("abort", &id);
    let watch = web.rollout(&["watch", &id]);
    let r = web.wait_finished(&id, WAIT);
    let diag = || format!("{watch}\n{}\n{}", r.timeline(), web.diagnostics());
    assert_eq!(r.phase, "aborted", "{}", diag());
    assert_eq!(
        watch.code,
        Some(1),
        "an aborted rollout exits 1\n{}",
        diag()
    );
    assert!(
        r.reason_text().contains("abort"),
        "reason {:?}\n{}",
        r.reason,
        diag()
    );
    // In-flight h2 finished; h3 and h4 never started.
    assert_eq!(r.instance("h1").version(), Some("v2"), "{}", diag());
    assert_eq!(r.instance("h2").version(), Some("v2"), "{}", diag());
    for host in ["h3", "h4"] {
        assert_eq!(step(&r, host), "pending", "{}", diag());
        assert_eq!(r.instance(host).version(), Some("v1"), "{}", diag());
    }
    // Every instance in service, serving what the rollout says it runs.
    web.haproxy.wait_serving(4, WAIT);
    for i in &r.instances {
        let served = web.instance_version(&i.host);
        assert_eq!(
            served.as_deref().ok(),
            i.version(),
            "{}: {served:?}\n{}",
            i.id,
            diag()
        );
    }
    assert!(r.drains_under_floor().is_empty(), "{}", diag());
}

#[test]
fn manual_rollback_returns_every_updated_instance_to_the_old_release() {
    let web = WebFleet::builder().hosts(4).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let id = web.start_detached("v2", ONE_AT_A_TIME).id;
    web.wait_rollout(&id, "has web@h1 and web@h2 done", WAIT, |r| {
        step(r, "h1") == "done" && step(r, "h2") == "done"
    });

    let acted = web.act("rollback", &id);
    assert!(
        matches!(
            acted.phase.as_str(),
            "stopping" | "rolling_back" | "rolled_back"
        ),
        "{}",
        acted.timeline()
    );
    let watch = web.rollout(&["watch", &id]);
    let r = web.wait_finished(&id, WAIT);
    let diag = || format!("{watch}\n{}\n{}", r.timeline(), web.diagnostics());
    assert_eq!(r.phase, "rolled_back", "{}", diag());
    assert_eq!(
        watch.code,
        Some(1),
        "a rolled back rollout exits 1\n{}",
        diag()
    );
    assert!(
        r.reason_text().contains("rollback"),
        "reason {:?}\n{}",
        r.reason,
        diag()
    );
    assert!(r.counts.rolled_back >= 2, "{}", diag());
    for i in &r.instances {
        assert_eq!(i.version(), Some("v1"), "{}\n{}", i.id, diag());
    }
    assert!(r.drains_under_floor().is_empty(), "{}", diag());
    let backs = r
        .events
        .iter()
        .filter(|e| e.step_is("draining") && e.message.starts_with("rollback"))
        .count();
    assert!(backs >= 2, "h1 and h2 must be rolled back\n{}", diag());
    web.wait_all_serving("v1");
}
