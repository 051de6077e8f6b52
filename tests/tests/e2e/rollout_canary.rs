//! Canary through real HAProxy under load (issue 11): the agents set
//! weights through HAProxy's runtime API, the coordinator judges HAProxy's
//! own per-server counters (or the instances' `/metrics`) of the updated
//! instances against the rest, and rolls a bad canary back on its own.
//! What is checked is what users and HAProxy see: the share of requests
//! the new release answers at each step, failed requests, weights and
//! versions at the end.

use std::time::Duration;

use drover_tests::harness::haproxy::StatRecorder;
use drover_tests::harness::rollout::SERVICE;
use drover_tests::harness::traffic::{
    MAX_SAMPLES, SAMPLE_EVERY, answered, assert_weights_restored, bakes, load_spec,
};
use drover_tests::{Load, LoadSpec, RolloutView, WAIT, WebFleet, free_port};

/// A canary spec file: `steps`, a short bake, looks every second.
fn spec_file(web: &WebFleet, name: &str, steps: &str, bake: &str, analysis: &str) -> String {
    let path = web.root.join(format!("{name}.toml"));
    let text = format!(
        "strategy = \"canary\"\nsteps = \"{steps}\"\nbake = \"{bake}\"\nmin_healthy = \"60%\"\n\
         [analysis]\ninterval = \"1s\"\nwarmup = \"2s\"\nmin_requests = 100\n{analysis}"
    );
    std::fs::write(&path, text).expect("write the rollout spec");
    path.display().to_string()
}

/// The hosts whose instance finished its update before `at` (unix ms).
fn updated_before(rollout: &RolloutView, at: i64) -> Vec<String> {
    (rollout.events.iter())
        .filter(|e| e.at_ms <= at && e.step_is("done"))
        .filter_map(|e| {
            e.instance
                .as_deref()?
                .split_once('@')
                .map(|(_, h)| h.to_string())
        })
        .collect()
}

#[test]
fn a_good_canary_is_promoted_step_by_step_with_each_share_seen_at_haproxy() {
    let web = WebFleet::builder().hosts(5).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let sampler = StatRecorder::start(web.haproxy.socket(), SERVICE, SAMPLE_EVERY, MAX_SAMPLES);
    let load = web.start_load(load_spec());

    let spec = spec_file(&web, "canary", "10%,50%,100%", "8s", "");
    let started = web.start_detached("v2", &["-f", &spec]);
    let rollout = web.wait_finished(&started.id, Duration::from_secs(120));
    let report = load.stop();
    let (samples, _) = sampler.stop();
    let diag = || {
        format!(
            "{}\n{report}\n{}",
            rollout.timeline(),
            web.diagnostics_for(&started.id)
        )
    };

    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(report.failed, 0, "failed requests\n{}", diag());
    for (iid, v) in rollout.versions() {
        assert_eq!(v.as_deref(), Some("v2"), "{iid}\n{}", diag());
    }
    assert_weights_restored(&web, &diag);

    // Each step's share of requests, as HAProxy counted them, within 5
    // points of the step (a second after the bake began, to the end).
    let windows = bakes(&rollout);
    assert_eq!(windows.len(), 2, "two steps baked before 100%\n{}", diag());
    for ((from, to), want) in windows.into_iter().zip([10.0, 50.0]) {
        let updated = updated_before(&rollout, from);
        let per_server = answered(&samples, from + 1_000, to);
        let total: u64 = per_server.values().sum();
        let new: u64 = (per_server.iter())
            .filter(|(s, _)| updated.contains(s))
            .map(|(_, n)| n)
            .sum();
        assert!(
            total >= 200,
            "too few requests in the {want}% step: {per_server:?}"
        );
        let share = 100.0 * new as f64 / total as f64;
        assert!(
            (share - want).abs() <= 5.0,
            "step {want}%: the new release answered {share:.1}% ({new} of {total}; updated {updated:?})\n{}",
            diag()
        );
    }
}

#[test]
fn a_canary_with_5_percent_errors_is_rolled_back_in_its_first_step() {
    let web = WebFleet::builder().hosts(5).start();
    web.deploy_initial("v1");
    web.push_release("v2", &["--error-rate", "0.05"]);
    let load = web.start_load(load_spec());

    let spec = spec_file(&web, "canary", "10%,50%,100%", "30s", "");
    let started = web.start_detached("v2", &["-f", &spec]);
    let rollout = web.wait_finished(&started.id, Duration::from_secs(120));
    let report = load.stop();
    let diag = || {
        format!(
            "{}\n{report}\n{}",
            rollout.timeline(),
            web.diagnostics_for(&started.id)
        )
    };

    assert_eq!(rollout.phase, "rolled_back", "{}", diag());
    assert!(
        rollout
            .reason_text()
            .contains("canary analysis failed at step 1"),
        "{}",
        diag()
    );
    // Caught in the first step: only the first canary was ever updated.
    let updated: Vec<&str> = (rollout.events.iter())
        .filter(|e| e.step_is("done"))
        .filter_map(|e| e.instance.as_deref())
        .collect();
    assert_eq!(updated.len(), 1, "{updated:?}\n{}", diag());
    for (iid, v) in rollout.versions() {
        assert_eq!(v.as_deref(), Some("v1"), "{iid}\n{}", diag());
    }
    assert_weights_restored(&web, &diag);
    // Failed requests are bounded by the canary's own share of traffic.
    assert!(
        report.failed > 0,
        "the bad canary failed nothing?\n{}",
        diag()
    );
    assert!(
        report.failed * 10 <= report.total,
        "{} of {} requests failed: more than the canary's 10% share\n{}",
        report.failed,
        report.total,
        diag()
    );
    web.wait_all_serving("v1");
}

#[test]
fn a_canary_with_too_little_traffic_ends_paused_as_inconclusive() {
    let web = WebFleet::builder().hosts(4).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    // One request every 200 ms: nowhere near 100 per arm in the time allowed.
    let load = web.start_load(LoadSpec {
        threads: 1,
        gap: Duration::from_millis(200),
        ..load_spec()
    });
    web.fleet
        .wait(WAIT, "load flows through HAProxy", || load.counts().1 >= 3);
    let spec = spec_file(
        &web,
        "canary",
        "25%,100%",
        "4s",
        "max_analysis = \"6s\"\non_inconclusive = \"pause\"\n",
    );
    let started = web.start_detached("v2", &["-f", &spec]);
    let paused = web.wait_rollout(&started.id, "is held as inconclusive", WAIT * 2, |r| {
        r.phase == "paused" || r.is_terminal()
    });
    let report = load.stop();
    let diag = || {
        format!(
            "{}\n{report}\n{}",
            paused.timeline(),
            web.diagnostics_for(&started.id)
        )
    };
    assert_eq!(paused.phase, "paused", "{}", diag());
    assert!(
        paused
            .wait_reason
            .as_deref()
            .is_some_and(|w| w.contains("inconclusive")),
        "{}",
        diag()
    );
    assert_eq!(
        paused.counts.done,
        1,
        "only the canary was updated\n{}",
        diag()
    );
    // A human decides: rolled back, every weight restored.
    let out = web.rollout(&["rollback", &started.id]);
    assert!(out.success(), "{out}");
    let rollout = web.wait_finished(&started.id, Duration::from_secs(60));
    assert_eq!(rollout.phase, "rolled_back", "{}", diag());
    assert_weights_restored(&web, &diag);
}

#[test]
fn a_canary_survives_a_coordinator_sigkill_mid_bake() {
    let mut web = WebFleet::builder()
        .hosts(4)
        .coordinator(|c| {
            c.grpc_port = free_port();
            c.http_port = loop {
                let p = free_port();
                if p != c.grpc_port {
                    break p;
                }
            };
        })
        .start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let load = Load::start(&web.haproxy.frontend_addr(), load_spec());
    let spec = spec_file(&web, "canary", "25%,50%,100%", "8s", "");
    let started = web.start_detached("v2", &["-f", &spec]);
    let id = started.id.clone();
    web.wait_rollout(&id, "bakes its second step", WAIT * 2, |r| {
        r.wait_reason
            .as_deref()
            .is_some_and(|w| w.contains("step 2") && w.contains("baking"))
    });
    web.fleet.coordinator.kill();
    web.fleet.coordinator.restart();
    let rollout = web.wait_finished(&id, Duration::from_secs(120));
    let report = load.stop();
    let diag = || {
        format!(
            "{}\n{report}\n{}",
            rollout.timeline(),
            web.diagnostics_for(&id)
        )
    };
    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert!(
        (rollout.events.iter()).any(|e| e.message.contains("resumed after a coordinator restart")),
        "{}",
        diag()
    );
    assert_eq!(report.failed, 0, "{}", diag());
    for (iid, v) in rollout.versions() {
        assert_eq!(v.as_deref(), Some("v2"), "{iid}\n{}", diag());
    }
    assert_weights_restored(&web, &diag);
}

/// Latency judged on the instances' own histograms: +100 ms is rolled
/// back, +10 ms (under the 25 ms floor) is not.
#[test]
fn canary_latency_is_judged_on_the_instances_histograms() {
    for (latency, outcome) in [("100ms", "rolled_back"), ("10ms", "succeeded")] {
        let web = WebFleet::builder().hosts(4).instance_metrics().start();
        web.deploy_initial("v1");
        web.push_release("v2", &["--latency", latency]);
        let load = web.start_load(load_spec());
        let spec = spec_file(&web, "canary", "25%,100%", "10s", "source = \"metrics\"\n");
        let started = web.start_detached("v2", &["-f", &spec]);
        let rollout = web.wait_finished(&started.id, Duration::from_secs(120));
        let report = load.stop();
        let diag = || {
            format!(
                "+{latency}\n{}\n{report}\n{}",
                rollout.timeline(),
                web.diagnostics_for(&started.id)
            )
        };
        assert_eq!(rollout.phase, outcome, "{}", diag());
        if outcome == "rolled_back" {
            assert!(rollout.reason_text().contains("latency"), "{}", diag());
        }
        assert_eq!(report.failed, 0, "{}", diag());
        assert_weights_restored(&web, &diag);
    }
}

/// A canary that ends while a host is away cannot put back that host's
/// weight and says so; once the host is back, the coordinator sees its
/// agent still holding a weight no rollout owns and puts the configured
/// one back.
#[test]
fn a_weight_left_on_an_absent_host_is_put_back_when_it_returns() {
    let mut web = WebFleet::builder().hosts(4).start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let load = web.start_load(load_spec());
    let spec = spec_file(&web, "canary", "25%,50%,100%", "60s", "");
    let started = web.start_detached("v2", &["-f", &spec]);
    let id = started.id.clone();
    web.wait_rollout(&id, "bakes its first step", WAIT * 2, |r| {
        r.wait_reason
            .as_deref()
            .is_some_and(|w| w.contains("baking"))
    });
    assert_eq!(
        lb_weight(&web, "h4"),
        Some(100),
        "the baseline's weight while baking"
    );
    // h4's agent goes away (its instance keeps serving), then the
    // operator rolls the canary back.
    web.fleet.agent_mut("h4").kill();
    let out = web.rollout(&["rollback", &id]);
    assert!(out.success(), "{out}");
    let rollout = web.wait_finished(&id, Duration::from_secs(90));
    let diag = format!("{}\n{}", rollout.timeline(), web.diagnostics_for(&id));
    assert_eq!(rollout.phase, "failed", "{diag}");
    assert!(
        rollout
            .reason_text()
            .contains("configured weights not put back")
            && rollout.reason_text().contains("web@h4"),
        "{diag}"
    );
    assert_eq!(
        lb_weight(&web, "h4"),
        Some(100),
        "nobody could reach h4's agent"
    );
    for h in ["h1", "h2", "h3"] {
        assert_eq!(lb_weight(&web, h), Some(1), "{h}\n{diag}");
    }

    web.fleet.agent_mut("h4").restart();
    web.fleet.wait(WAIT * 2, "h4's weight is put back", || {
        (lb_weight(&web, "h4") == Some(1)).then_some(())
    });
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}\n{diag}");
}

/// The weight HAProxy has for `server` now.
fn lb_weight(web: &WebFleet, server: &str) -> Option<u64> {
    (web.haproxy.servers().ok()?.into_iter())
        .find(|s| s.server == server)
        .and_then(|s| s.weight)
}
