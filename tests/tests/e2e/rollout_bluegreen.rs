//! Blue-green through real HAProxy under load (issue 11): every host runs
//! `web-blue` and `web-green` behind the same backend. drover takes the
//! idle color out of traffic, redeploys it, runs the pre-traffic hook the
//! coordinator's config names, moves the traffic by weights step by step,
//! then drains the old color, keeps it for keep-old and stops it. What is
//! checked is what HAProxy and the users see: each step's share of
//! requests, failed requests, how fast a rollback moves the traffic back,
//! weights and drains at the end.

use std::time::Duration;

use drover_tests::harness::haproxy::{Reading, ServerState, StatRecorder};
use drover_tests::harness::rollout::SERVICE;
use drover_tests::harness::traffic::{
    MAX_SAMPLES, SAMPLE_EVERY, answered, assert_weights_restored, bakes, load_spec,
};
use drover_tests::{Load, RolloutView, WAIT, WebFleet, free_port};

/// A pre-traffic hook that checks what drover tells it, then passes.
const GOOD_HOOK: &str = "[pre_traffic_hooks.smoke]\n\
    command = [\"sh\", \"-c\", \"test \\\"$DROVER_COLOR\\\" = green && echo smoke ok on $DROVER_INSTANCES\"]\n\
    timeout = \"30s\"\n";
/// One that finds a problem.
const BAD_HOOK: &str = "[pre_traffic_hooks.smoke]\n\
    command = [\"sh\", \"-c\", \"echo 2 of 9 smoke checks failed >&2; exit 3\"]\n\
    timeout = \"30s\"\n";

/// A blue-green spec file: steps 10%, 50%, 100%, short bakes, looks every
/// second, the whole color as the floor.
fn spec_file(web: &WebFleet, keep_old: &str, hook: bool) -> String {
    let path = web.root.join("blue-green.toml");
    let hook = if hook {
        "pre_traffic_hook = \"smoke\"\n"
    } else {
        ""
    };
    let text = format!(
        "strategy = \"blue-green\"\nsteps = \"10%,50%,100%\"\nbake = \"6s\"\n\
         keep_old = \"{keep_old}\"\nmin_healthy = \"100%\"\n{hook}\
         [analysis]\ninterval = \"1s\"\nwarmup = \"2s\"\nmin_requests = 100\n"
    );
    std::fs::write(&path, text).expect("write the rollout spec");
    path.display().to_string()
}

/// Blue and green on `hosts` hosts, both colors on v1 (the first release
/// goes everywhere), v2 pushed, load flowing.
fn fleet(hosts: usize, hook: Option<&str>) -> (WebFleet, Load) {
    let mut builder = WebFleet::builder().hosts(hosts).colors().coordinator(|c| {
        c.grpc_port = free_port();
        c.http_port = loop {
            let p = free_port();
            if p != c.grpc_port {
                break p;
            }
        };
    });
    if let Some(h) = hook {
        builder = builder.coordinator(|c| c.extra_toml.push_str(h));
    }
    let web = builder.start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let load = web.start_load(load_spec());
    (web, load)
}

/// Green's share (percent) of the requests answered in the window, and
/// the total.
fn green_share(samples: &[Reading], from: i64, to: i64) -> (f64, u64) {
    let per_server = answered(samples, from, to);
    let total: u64 = per_server.values().sum();
    let green: u64 = (per_server.iter())
        .filter(|(s, _)| s.ends_with("-green"))
        .map(|(_, n)| n)
        .sum();
    (100.0 * green as f64 / total.max(1) as f64, total)
}

fn event_at(rollout: &RolloutView, what: &str) -> Option<i64> {
    (rollout.events.iter())
        .find(|e| e.message.contains(what))
        .map(|e| e.at_ms)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn stage_is(r: &RolloutView, stage: &str) -> bool {
    r.traffic.as_ref().is_some_and(|t| t.stage == stage)
}

#[test]
fn a_switch_moves_traffic_step_by_step_and_rollback_during_keep_old_moves_it_back_at_once() {
    let (web, load) = fleet(3, None);
    let sampler = StatRecorder::start(web.haproxy.socket(), SERVICE, SAMPLE_EVERY, MAX_SAMPLES);
    let spec = spec_file(&web, "10m", false);
    let started = web.start_detached("v2", &["-f", &spec]);
    let id = started.id.clone();
    let switched = web.wait_rollout(&id, "switches all traffic to green", WAIT * 4, |r| {
        stage_is(r, "switched")
            && r.wait_reason
                .as_deref()
                .is_some_and(|w| w.contains("keeping"))
    });
    // Two seconds of all traffic on green, then back.
    let all_green_from = event_at(&switched, "old color (blue) drained").unwrap_or_else(now_ms);
    web.fleet.wait(WAIT, "two seconds on green", || {
        now_ms() >= all_green_from + 2_000
    });
    let asked = now_ms();
    let acted = web.act("rollback", &id);
    assert_ne!(acted.phase, "succeeded", "{acted:?}");
    let rollout = web.wait_finished(&id, Duration::from_secs(60));
    // Some traffic after the end, to see where it goes.
    let served = load.counts().1;
    web.fleet
        .wait(WAIT, "more requests after the rollback", || {
            load.counts().1 >= served + 100
        });
    let report = load.stop();
    let (samples, _) = sampler.stop();
    let diag = || {
        format!(
            "{}\n{report}\n{}",
            rollout.timeline(),
            web.diagnostics_for(&id)
        )
    };

    assert_eq!(rollout.phase, "rolled_back", "{}", diag());
    assert_eq!(report.failed, 0, "failed requests\n{}", diag());

    // Each step's share of requests, as HAProxy counted them, within 5
    // points: 10% and 50% while they baked, 100% once blue was drained.
    let windows = bakes(&rollout);
    assert_eq!(windows.len(), 2, "two steps baked before 100%\n{}", diag());
    let mut seen = Vec::new();
    for ((from, to), want) in windows.into_iter().zip([10.0, 50.0]) {
        let (share, total) = green_share(&samples, from + 1_000, to);
        assert!(
            total >= 100,
            "too few requests in the {want}% step\n{}",
            diag()
        );
        seen.push((want, share));
    }
    let (share, total) = green_share(&samples, all_green_from, asked);
    assert!(total >= 50, "too few requests at 100%\n{}", diag());
    seen.push((100.0, share));
    for (want, share) in &seen {
        assert!(
            (share - want).abs() <= 5.0,
            "steps at HAProxy: {seen:?}\n{}",
            diag()
        );
    }

    // The rollback: the first reading after it was asked where blue takes
    // every request (green at weight 0 or drained, every blue serving).
    let back = samples.iter().find(|r| {
        r.unix_ms >= asked
            && r.servers.iter().all(|s| {
                if s.server.ends_with("-green") {
                    !s.serving()
                } else {
                    s.serving()
                }
            })
    });
    let back = back.unwrap_or_else(|| panic!("traffic never went back to blue\n{}", diag()));
    let took = back.unix_ms - asked;
    assert!(took < 1_000, "the switch back took {took} ms\n{}", diag());
    // ... and stayed there: no request reached green after it.
    let (after, total) = green_share(&samples, back.unix_ms, i64::MAX);
    assert!(
        total > 0 && after == 0.0,
        "green answered {after}% after the switch back\n{}",
        diag()
    );

    // Green is drained (still on v2, for a look), blue serves v1, every
    // weight is the configured one.
    let servers = web.haproxy.servers().expect("show stat");
    for s in &servers {
        if s.server.ends_with("-green") {
            assert_eq!(
                s.state,
                ServerState::Drain,
                "{} not drained\n{}",
                s.server,
                diag()
            );
        } else {
            assert!(s.serving(), "{} not serving\n{}", s.server, diag());
        }
    }
    for (server, v) in web.served_versions() {
        let want = if server.ends_with("-green") {
            "v2"
        } else {
            "v1"
        };
        assert_eq!(v.as_deref(), Ok(want), "{server}\n{}", diag());
    }
    assert_weights_restored(&web, &diag);
    eprintln!("blue-green steps at HAProxy {seen:?}; switch back took {took} ms");
}

#[test]
fn without_a_rollback_the_old_color_is_stopped_after_keep_old() {
    let (web, load) = fleet(2, Some(GOOD_HOOK));
    let spec = spec_file(&web, "3s", true);
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

    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(report.failed, 0, "failed requests\n{}", diag());
    let hook = (rollout.events.iter())
        .find(|e| e.message.contains("pre-traffic hook `smoke` passed"))
        .unwrap_or_else(|| panic!("no hook event\n{}", diag()));
    assert!(
        hook.message
            .contains("smoke ok on web-green@h1 web-green@h2"),
        "{}",
        diag()
    );
    let kept = event_at(&rollout, "old color (blue) drained").expect("drained");
    let stopped = event_at(&rollout, "keep-old over").expect("keep-old over");
    assert!(
        stopped - kept >= 3_000,
        "keep-old lasted {} ms\n{}",
        stopped - kept,
        diag()
    );

    // Green serves v2; blue is drained and its processes are stopped.
    for (server, v) in web.served_versions() {
        if server.ends_with("-green") {
            assert_eq!(v.as_deref(), Ok("v2"), "{server}\n{}", diag());
        } else {
            assert!(v.is_err(), "{server} still answers: {v:?}\n{}", diag());
        }
    }
    let servers = web.haproxy.servers().expect("show stat");
    for s in &servers {
        let green = s.server.ends_with("-green");
        assert_eq!(
            s.serving(),
            green,
            "{}: {:?}\n{}",
            s.server,
            s.state,
            diag()
        );
    }
    assert_weights_restored(&web, &diag);
}

#[test]
fn a_failing_pre_traffic_hook_stops_the_switch_before_any_traffic_moves() {
    let (web, load) = fleet(2, Some(BAD_HOOK));
    let green_before: u64 = (web.haproxy.servers().expect("show stat").iter())
        .filter(|s| s.server.ends_with("-green"))
        .map(|s| s.req_tot)
        .sum();
    let spec = spec_file(&web, "1m", true);
    let started = web.start_detached("v2", &["-f", &spec]);
    let rollout = web.wait_finished(&started.id, Duration::from_secs(90));
    let report = load.stop();
    let diag = || {
        format!(
            "{}\n{report}\n{}",
            rollout.timeline(),
            web.diagnostics_for(&started.id)
        )
    };

    assert_eq!(rollout.phase, "rolled_back", "{}", diag());
    let reason = rollout.reason_text();
    assert!(
        reason.contains("pre-traffic hook `smoke` failed: exit 3")
            && reason.contains("2 of 9 smoke checks failed")
            && reason.contains("no traffic moved"),
        "{}",
        diag()
    );
    assert_eq!(report.failed, 0, "failed requests\n{}", diag());
    // Green took its weight 0 before it was touched, and never another:
    // HAProxy sent it nothing from the start on (green served v1 before,
    // along with blue; the first weight went out before the load's next
    // requests could count, so allow what was in flight at the start).
    let servers = web.haproxy.servers().expect("show stat");
    let green_after: u64 = (servers.iter())
        .filter(|s| s.server.ends_with("-green"))
        .map(|s| s.req_tot)
        .sum();
    let weights: Vec<&str> = (rollout.events.iter())
        .filter(|e| e.message.starts_with("traffic "))
        .map(|e| e.message.as_str())
        .collect();
    assert!(weights.is_empty(), "traffic moved: {weights:?}\n{}", diag());
    assert!(
        green_after - green_before < 50,
        "green answered {} requests\n{}",
        green_after - green_before,
        diag()
    );
    for s in &servers {
        if s.server.ends_with("-green") {
            assert_eq!(
                s.state,
                ServerState::Drain,
                "{} not drained\n{}",
                s.server,
                diag()
            );
        } else {
            assert!(s.serving(), "{}\n{}", s.server, diag());
        }
    }
    assert_weights_restored(&web, &diag);
}

#[test]
fn a_switch_survives_a_coordinator_sigkill_mid_step_and_in_keep_old() {
    let (mut web, load) = fleet(2, Some(GOOD_HOOK));
    let spec = spec_file(&web, "6s", true);
    let started = web.start_detached("v2", &["-f", &spec]);
    let id = started.id.clone();
    web.wait_rollout(&id, "bakes its second step", WAIT * 3, |r| {
        r.wait_reason
            .as_deref()
            .is_some_and(|w| w.contains("step 2") && w.contains("baking"))
    });
    web.fleet.coordinator.kill();
    web.fleet.coordinator.restart();
    web.wait_rollout(&id, "keeps the old color", WAIT * 3, |r| {
        stage_is(r, "switched")
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
    let resumed = (rollout.events.iter())
        .filter(|e| e.message.contains("resumed after a coordinator restart"))
        .count();
    assert_eq!(resumed, 2, "{}", diag());
    assert_eq!(report.failed, 0, "failed requests\n{}", diag());
    for (server, v) in web.served_versions() {
        if server.ends_with("-green") {
            assert_eq!(v.as_deref(), Ok("v2"), "{server}\n{}", diag());
        }
    }
    let servers = web.haproxy.servers().expect("show stat");
    for s in &servers {
        assert_eq!(
            s.serving(),
            s.server.ends_with("-green"),
            "{}\n{}",
            s.server,
            diag()
        );
    }
    assert_weights_restored(&web, &diag);
}

#[test]
fn a_blue_green_start_checks_the_pairs_and_the_hook_plainly() {
    let web = WebFleet::builder().hosts(2).colors().start();
    web.push_release("v1", &[]);
    web.push_release("v2", &[]);

    // The agents report both instances of each pair with their color.
    let out = web.fleet.cli(&["agents", "-o", "json"]);
    assert!(out.success(), "{out}");
    let hosts: serde_json::Value = serde_json::from_str(&out.stdout).expect("agents JSON");
    let mut seen = Vec::new();
    for h in hosts.as_array().expect("a list of hosts") {
        for i in h["instances"].as_array().expect("instances") {
            seen.push(format!(
                "{} {}",
                i["id"].as_str().unwrap_or_default(),
                i["color"].as_str().unwrap_or_default()
            ));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "web-blue@h1 blue",
            "web-blue@h2 blue",
            "web-green@h1 green",
            "web-green@h2 green"
        ],
        "{out}"
    );

    // Nothing serves yet: there is no color to switch from.
    let dry = web.start_rollout("v1", &["--strategy", "blue-green", "--dry-run"]);
    assert_eq!(dry.code, Some(1), "{dry}");
    assert!(dry.stderr.contains("neither color serves"), "{dry}");

    let out = web.start_rollout("v1", &["--min-healthy", "0", "--batch", "100%"]);
    assert!(out.success(), "{out}");

    // A hook the coordinator's config does not have is refused up front.
    let dry = web.start_rollout(
        "v2",
        &[
            "--strategy",
            "blue-green",
            "--pre-traffic-hook",
            "smoke",
            "--dry-run",
        ],
    );
    assert_eq!(dry.code, Some(1), "{dry}");
    assert!(
        dry.stderr
            .contains("pre_traffic_hook `smoke` is not in this coordinator's config"),
        "{dry}"
    );

    // The plan: green gets v2, one color counts, the weights of each step.
    let dry = web.start_rollout("v2", &["--strategy", "blue-green", "--dry-run"]);
    assert!(dry.success(), "{dry}");
    for want in ["web-green@h1", "web-green@h2", "10%", "100%"] {
        assert!(dry.stdout.contains(want), "{want} missing\n{dry}");
    }
}
