//! Rolling updates end to end (issue 3): a real coordinator and agents, real
//! drover-sample instances deployed from pushed artifacts, and a real HAProxy
//! in front of them that drover drains through, with load running through
//! HAProxy while the rollout goes on.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_tests::harness::rollout::SERVICE;
use drover_tests::{CapacitySampler, Load, LoadReport, LoadSpec, RolloutView, WAIT, WebFleet};

/// The capacity sampler's period and bound (a minute of samples).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const MAX_SAMPLES: u64 = 1_200;

/// Starts load through HAProxy and waits until it flows.
fn start_load(web: &WebFleet) -> Load {
    let load = Load::start(&web.haproxy.frontend_addr(), LoadSpec::default());
    web.fleet
        .wait(WAIT, "load flows through HAProxy", || load.counts().1 >= 30);
    load
}

/// Versions answered through HAProxy, as a sorted list.
fn load_versions(report: &LoadReport) -> Vec<&str> {
    report.versions.keys().map(String::as_str).collect()
}

fn all_served(web: &WebFleet, version: &str) -> bool {
    web.served_versions()
        .values()
        .all(|v| v.as_deref() == Ok(version))
}

/// Every instance's release in the rollout JSON.
fn json_versions(r: &RolloutView) -> BTreeMap<String, Option<String>> {
    r.versions()
}

#[test]
fn rolling_update_under_load_drops_no_request_and_keeps_the_floor() {
    let web = WebFleet::builder().hosts(6).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);

    let sampler = CapacitySampler::start(web.haproxy.socket(), SERVICE, SAMPLE_EVERY, MAX_SAMPLES);
    let load = start_load(&web);
    let out = web.start_rollout("v2", &["--min-healthy", "80%", "--min-healthy-time", "1s"]);
    let report = load.stop();
    let capacity = sampler.stop();
    let rollout = web.latest();
    let diag = || {
        format!(
            "{out}\n{report}\n{capacity}\n{}\n{}",
            rollout.timeline(),
            web.diagnostics()
        )
    };

    assert_eq!(out.code, Some(0), "rollout start must exit 0\n{}", diag());
    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(rollout.counts.total, 6, "{}", diag());
    assert_eq!(rollout.counts.done, 6, "{}", diag());
    assert_eq!(rollout.counts.failed, 0, "{}", diag());

    // Users saw no error while both versions were served.
    assert_eq!(
        report.failed,
        0,
        "failed requests through HAProxy\n{}",
        diag()
    );
    assert!(
        report.ok >= 200,
        "too little load to mean anything\n{report}"
    );
    assert_eq!(load_versions(&report), vec!["v1", "v2"], "{}", diag());
    assert!(
        !report.hit_limit,
        "the load ended before the rollout\n{report}"
    );
    assert!(
        web.haproxy.failed_requests_logged(10).is_empty(),
        "HAProxy logged failed requests: {:#?}",
        web.haproxy.failed_requests_logged(10)
    );

    // Every instance runs v2, per the rollout and per what it serves.
    for (id, v) in json_versions(&rollout) {
        assert_eq!(v.as_deref(), Some("v2"), "{id}\n{}", diag());
    }
    assert!(all_served(&web, "v2"), "{}", diag());
    let through = web.versions_through_haproxy(12);
    assert_eq!(
        through.keys().collect::<Vec<_>>(),
        vec!["v2"],
        "{through:?}"
    );

    // Capacity never went under the floor: 80% of 6 rounds up to 5.
    assert_eq!(rollout.floor, 5, "{}", diag());
    assert!(rollout.lowest_capacity >= 5, "{}", diag());
    let under: Vec<String> = rollout
        .events
        .iter()
        .filter(|e| e.capacity < e.floor)
        .map(ToString::to_string)
        .collect();
    assert!(
        under.is_empty(),
        "engine events under the floor: {under:#?}\n{}",
        diag()
    );
    assert!(!rollout.events.is_empty(), "no events\n{}", diag());
    assert!(capacity.samples >= 20, "{capacity}");
    assert!(capacity.errors.is_empty(), "{capacity}");
    assert!(
        capacity.min_capacity().is_some_and(|c| c >= 5),
        "HAProxy capacity went under the floor of 5\n{}",
        diag()
    );
    // And the drains really went through HAProxy, one server at a time.
    for host in web.hosts() {
        let seen = capacity.transitions.get(&host).cloned().unwrap_or_default();
        assert!(
            seen.iter()
                .any(|s| s.starts_with("DRAIN") || s.starts_with("DOWN")),
            "{host} was never drained in HAProxy: {seen:?}\n{}",
            diag()
        );
    }
    web.haproxy.wait_serving(6, WAIT);
}

#[test]
fn failing_health_stops_at_the_budget_and_rolls_back_automatically() {
    let web = WebFleet::builder().hosts(6).start();
    web.deploy_initial("v2");
    web.push_release("v3", &["--fail-health"]);

    let sampler = CapacitySampler::start(web.haproxy.socket(), SERVICE, SAMPLE_EVERY, MAX_SAMPLES);
    let load = start_load(&web);
    let out = web.start_rollout(
        "v3",
        &[
            "--min-healthy",
            "80%",
            "--max-failures",
            "0",
            "--auto-rollback",
            "--healthy-deadline",
            "3s",
        ],
    );
    let report = load.stop();
    let capacity = sampler.stop();
    let rollout = web.latest();
    let diag = || {
        format!(
            "{out}\n{report}\n{capacity}\n{}\n{}",
            rollout.timeline(),
            web.diagnostics()
        )
    };

    assert_eq!(
        out.code,
        Some(1),
        "a rolled back rollout exits 1\n{}",
        diag()
    );
    assert_eq!(rollout.phase, "rolled_back", "{}", diag());
    let reason = rollout.reason_text();
    assert!(
        reason.contains("failure budget") && reason.contains("verify"),
        "the reason must say the budget was spent on a failed verify: {reason:?}\n{}",
        diag()
    );
    assert!(
        out.combined().contains("verify"),
        "the CLI's summary must say why\n{}",
        diag()
    );

    // Only the first instance was tried; it failed verify on its health
    // check and went back to v2.
    let h1 = rollout.instance("h1");
    assert!(
        h1.error_text().contains("verify") && h1.error_text().contains("health"),
        "h1's error must name the failed health check: {h1:?}\n{}",
        diag()
    );
    assert_eq!(h1.step, "rolled_back", "{}", diag());
    assert_eq!(rollout.counts.rolled_back, 1, "{}", diag());
    let touched: Vec<String> = rollout
        .events
        .iter()
        .filter(|e| e.step_is("draining"))
        .filter_map(|e| e.instance.clone())
        .collect();
    assert!(
        touched.iter().all(|i| i == "web@h1"),
        "only web@h1 may be taken down: {touched:?}\n{}",
        diag()
    );
    for (id, v) in json_versions(&rollout) {
        assert_eq!(v.as_deref(), Some("v2"), "{id}\n{}", diag());
    }
    web.wait_all_serving("v2");

    // v3 never served a request and nothing failed.
    assert_eq!(
        report.failed,
        0,
        "failed requests through HAProxy\n{}",
        diag()
    );
    assert_eq!(load_versions(&report), vec!["v2"], "{}", diag());
    assert!(
        !report.hit_limit,
        "the load ended before the rollout\n{report}"
    );
    assert!(
        capacity.min_capacity().is_some_and(|c| c >= 5),
        "HAProxy capacity under the floor\n{}",
        diag()
    );
    assert!(rollout.drains_under_floor().is_empty(), "{}", diag());
}

#[test]
fn an_instance_killed_outside_the_batch_makes_the_rollout_wait_not_break_the_floor() {
    let web = WebFleet::builder().hosts(6).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);

    let started = web.start_detached("v2", &["--min-healthy", "80%", "--min-healthy-time", "1s"]);
    let id = started.id.clone();
    // h1 is done (its batch is over) and h2's batch is under way.
    let before = web.wait_rollout(&id, "has web@h1 done and works on web@h2", WAIT, |r| {
        r.instance("h1").step == "done"
            && !matches!(r.instance("h2").step.as_str(), "pending" | "done")
    });
    let killed = web.fleet.agent("h1").kill_instance("web");

    let watch = web.rollout(&["watch", &id]);
    let rollout = web.wait_finished(&id, WAIT);
    let diag = || {
        format!(
            "killed pid {killed} of web@h1 when:\n{}\n{watch}\n{}\n{}",
            before.timeline(),
            rollout.timeline(),
            web.diagnostics_for(&id)
        )
    };
    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(watch.code, Some(0), "watch exits 0 on success\n{}", diag());
    assert_eq!(rollout.counts.done, 6, "{}", diag());
    for (iid, v) in json_versions(&rollout) {
        assert_eq!(v.as_deref(), Some("v2"), "{iid}\n{}", diag());
    }

    // The engine saw h1 go down and took nothing down until it was back:
    // with h1 down and h2 in flight, capacity was 4 of a floor of 5.
    let events = &rollout.events;
    let down = events
        .iter()
        .position(|e| e.instance_is("web@h1") && e.message.contains("unavailable"))
        .unwrap_or_else(|| panic!("no event for web@h1 going down\n{}", diag()));
    assert!(
        events[down].capacity < events[down].floor,
        "capacity must be under the floor once web@h1 is down\n{}",
        diag()
    );
    let back = events[down..]
        .iter()
        .position(|e| e.instance_is("web@h1") && e.message.contains("available again"))
        .map(|i| i + down)
        .unwrap_or_else(|| panic!("no event for web@h1 coming back\n{}", diag()));
    let drained_meanwhile: Vec<String> = events[down..back]
        .iter()
        .filter(|e| e.step_is("draining"))
        .map(ToString::to_string)
        .collect();
    assert!(
        drained_meanwhile.is_empty(),
        "instances taken down while web@h1 was down: {drained_meanwhile:#?}\n{}",
        diag()
    );
    let under = rollout.drains_under_floor();
    assert!(
        under.is_empty(),
        "drover took instances down under the floor: {under:#?}\n{}",
        diag()
    );
    web.wait_all_serving("v2");
}

#[test]
fn a_broken_pending_instance_costs_no_capacity_and_is_updated_early() {
    // An instance that is already down when its turn has not come yet is
    // free to update: the engine takes it into the current batch rather than
    // waiting for it, and never takes an available instance down under the
    // floor meanwhile.
    let web = WebFleet::builder().hosts(6).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let started = web.start_detached(
        "v2",
        &[
            "--batch",
            "2",
            "--min-healthy",
            "80%",
            "--min-healthy-time",
            "1s",
        ],
    );
    let id = started.id.clone();
    let before = web.wait_rollout(&id, "works on web@h1", WAIT, |r| {
        r.instance("h1").step != "pending"
    });
    assert_eq!(
        before.instance("h6").step,
        "pending",
        "{}",
        before.timeline()
    );
    let killed = web.fleet.agent("h6").kill_instance("web");
    let watch = web.rollout(&["watch", &id]);
    let rollout = web.wait_finished(&id, WAIT);
    let diag = || {
        format!(
            "killed pid {killed} of web@h6\n{watch}\n{}\n{}",
            rollout.timeline(),
            web.diagnostics_for(&id)
        )
    };
    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(watch.code, Some(0), "{}", diag());
    assert_eq!(rollout.counts.done, 6, "{}", diag());
    let first_drain = |iid: &str| {
        rollout
            .events
            .iter()
            .position(|e| e.instance_is(iid) && e.step_is("draining"))
            .unwrap_or_else(|| panic!("{iid} never drained\n{}", diag()))
    };
    assert!(
        first_drain("web@h6") < first_drain("web@h2"),
        "the broken web@h6 costs nothing and goes before web@h2, which waits for the floor\n{}",
        diag()
    );
    let under = rollout.drains_under_floor();
    assert!(
        under.is_empty(),
        "drover took available instances down under the floor: {under:#?}\n{}",
        diag()
    );
    web.wait_all_serving("v2");
}
