//! Capacity as the load balancer sees it (issue 10, section 5): HAProxy
//! routes to an instance only once its own checks pass, `rise` x `inter`
//! after the instance is back, which is well after the agent's own check
//! passes. drover counts an instance in service only when HAProxy has it
//! UP too, so a restarted instance outside the batch holds the rollout
//! until HAProxy routes to it again, and the floor holds as HAProxy
//! counts it.

use std::time::Duration;

use drover_tests::harness::haproxy::{
    Checks, Reading, ServerStat, StatRecorder, capacity, format_servers,
};
use drover_tests::harness::rollout::SERVICE;
use drover_tests::{Load, LoadSpec, WAIT, WebFleet, wait_until};

/// HAProxy's own `show stat`, read this often.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// Two minutes of samples at most.
const MAX_SAMPLES: usize = 2_400;

fn serving(s: &Reading, server: &str) -> Option<bool> {
    s.servers
        .iter()
        .find(|x| x.server == server)
        .map(ServerStat::serving)
}

/// Every moment a server other than `killed` left HAProxy's service
/// (drover drained it) while that left fewer than `floor` servers in
/// service. The killed server's own fall is the test's doing, not
/// drover's: it may take HAProxy under the floor for a while, during which
/// drover must take nothing else out.
///
/// Readings are 50 ms apart, so a drain drover started just before the
/// test marked `killed` down (at `marked`) can first show in the same
/// reading as the mark. A departure seen in a window that began before
/// the mark is counted with `killed` as it was before the mark: drover
/// could not have known of a fall that had not happened yet.
fn drains_under_floor(
    samples: &[Reading],
    floor: u32,
    killed: &str,
    marked: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    for pair in samples.windows(2) {
        let (before, now) = (&pair[0], &pair[1]);
        let mut in_service = capacity(&now.servers);
        let killed_fell_here =
            serving(before, killed) == Some(true) && serving(now, killed) == Some(false);
        if before.at <= marked && killed_fell_here {
            in_service += 1;
        }
        for s in &now.servers {
            let left = !s.serving() && serving(before, &s.server) == Some(true);
            if s.server != killed && left && in_service < floor {
                out.push(format!(
                    "at {:.2}s {} left service ({}) with {in_service} in service, floor {floor}:\n{}",
                    now.at.as_secs_f64(),
                    s.server,
                    s.status,
                    format_servers(&now.servers)
                ));
            }
        }
    }
    out
}

/// Each server's status changes, with times, for failure messages.
fn transitions(samples: &[Reading]) -> String {
    let mut out = String::new();
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    for s in samples {
        for server in &s.servers {
            if last.get(&server.server) != Some(&server.status) {
                out.push_str(&format!(
                    "    {:7.2}s {} {} (in service: {})\n",
                    s.at.as_secs_f64(),
                    server.server,
                    server.status,
                    capacity(&s.servers)
                ));
                last.insert(server.server.clone(), server.status.clone());
            }
        }
    }
    out
}

#[test]
fn a_restarted_instance_counts_only_once_haproxy_routes_to_it_again() {
    // HAProxy much slower than the agents (health checks every 200 ms,
    // rise 1): a restarted instance is healthy to its agent about 1.2 s
    // after its death (1 s restart backoff), and UP in HAProxy only three
    // checks a second apart later.
    let web = WebFleet::builder()
        .hosts(4)
        .haproxy_checks(Checks {
            inter: "1s".to_string(),
            fall: 2,
            rise: 3,
        })
        .start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let floor = 3;

    let sampler = StatRecorder::start(web.haproxy.socket(), SERVICE, SAMPLE_EVERY, MAX_SAMPLES);
    let load = Load::start(
        &web.haproxy.frontend_addr(),
        LoadSpec {
            max_requests: 30_000,
            max_duration: Duration::from_secs(100),
            ..LoadSpec::default()
        },
    );
    web.fleet
        .wait(WAIT, "load flows through HAProxy", || load.counts().1 >= 30);

    // One at a time with a floor of 3 of 4: every drain uses all the room
    // there is, so draining while HAProxy still has a restarted instance
    // DOWN takes it under the floor.
    let started = web.start_detached(
        "v2",
        &[
            "--batch",
            "1",
            "--min-healthy",
            "3",
            "--min-healthy-time",
            "2s",
        ],
    );
    let id = started.id.clone();
    let before = web.wait_rollout(&id, "has web@h1 done and verifies web@h2", WAIT, |r| {
        r.instance("h1").step == "done" && r.instance("h2").step == "verifying"
    });
    // web@h2's drain is done before web@h1 is marked down, as HAProxy
    // sees it too, so the two departures happen in that order.
    wait_until(WAIT, "HAProxy has web/h2 drained", || {
        let h2 = web
            .haproxy
            .servers()
            .ok()?
            .into_iter()
            .find(|s| s.server == "h2")?;
        (!h2.serving()).then_some(())
    });
    // HAProxy's checks would find the dead instance `fall` checks later;
    // it is marked down first so that no request goes to a dead server
    // meanwhile (with `retries 0` those would fail, and this test counts
    // failed requests). It stays down until its checks rise again.
    let marked_at = sampler.elapsed();
    let answer = web
        .haproxy
        .command("set server web/h1 health down")
        .expect("runtime API");
    assert_eq!(answer.trim(), "", "set server health refused");
    wait_until(WAIT, "HAProxy has web/h1 DOWN with no session", || {
        let h1 = web
            .haproxy
            .servers()
            .ok()?
            .into_iter()
            .find(|s| s.server == "h1")?;
        (!h1.serving() && h1.scur == 0).then_some(())
    });
    let killed = web.fleet.agent("h1").kill_instance("web");

    let rollout = web.wait_finished(&id, Duration::from_secs(90));
    let report = load.stop();
    let (samples, errors) = sampler.stop();
    let diag = || {
        format!(
            "killed pid {killed} of web@h1 when:\n{}\n{report}\nHAProxy show stat transitions:\n{}\n{}\n{}",
            before.timeline(),
            transitions(&samples),
            rollout.timeline(),
            web.diagnostics_for(&id)
        )
    };

    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(rollout.counts.done, 4, "{}", diag());
    for (iid, v) in rollout.versions() {
        assert_eq!(v.as_deref(), Some("v2"), "{iid}\n{}", diag());
    }
    assert_eq!(rollout.floor, floor, "{}", diag());

    // Users saw no error.
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
    assert!(
        !report.hit_limit,
        "the load ended before the rollout\n{report}"
    );
    let logged = web.haproxy.failed_requests_logged(10);
    assert!(
        logged.is_empty(),
        "HAProxy logged failed requests: {logged:#?}"
    );

    // HAProxy's own count: drover never took an instance out while that
    // left fewer than the floor in service.
    assert!(errors.is_empty(), "show stat failed: {errors:?}");
    assert!(
        samples.len() >= 100,
        "{} samples\n{}",
        samples.len(),
        diag()
    );
    let under = drains_under_floor(&samples, floor, "h1", marked_at);
    assert!(
        under.is_empty(),
        "drover drained while HAProxy had fewer than {floor} in service:\n{}\n{}",
        under.join("\n"),
        diag()
    );
    // The scenario happened: HAProxy had web/h1 out, and drover went on
    // with web@h3 and web@h4 after that.
    let h1_out = samples
        .iter()
        .position(|s| s.at >= marked_at && serving(s, "h1") == Some(false))
        .unwrap_or_else(|| panic!("HAProxy never had web/h1 out\n{}", diag()));
    let h1_back = samples[h1_out..]
        .iter()
        .position(|s| serving(s, "h1") == Some(true))
        .map(|i| i + h1_out)
        .unwrap_or_else(|| panic!("web/h1 never came back in HAProxy\n{}", diag()));
    for later in ["h3", "h4"] {
        assert!(
            samples[h1_out..]
                .iter()
                .any(|s| serving(s, later) == Some(false)),
            "drover never drained web@{later} after the kill\n{}",
            diag()
        );
    }
    // Only the killed instance and the one in flight were ever out at
    // once while HAProxy had web/h1 down.
    let lowest = samples[h1_out..h1_back]
        .iter()
        .map(|s| capacity(&s.servers))
        .min()
        .unwrap_or(0);
    assert!(
        lowest >= floor - 1,
        "only the killed instance may be missing: {lowest} in service\n{}",
        diag()
    );
    let under = rollout.drains_under_floor();
    assert!(
        under.is_empty(),
        "engine drained under the floor: {under:#?}\n{}",
        diag()
    );
    web.wait_all_serving("v2");
}
