//! Done-when 1: a fresh CA, a coordinator and 3 agents enrolled by join
//! token report in; `drover agents` shows them; label selectors filter.

use std::process::Command;
use std::time::Duration;

use drover_tests::harness::metrics_samples;
use drover_tests::{AgentSpec, Fleet, Proc, WAIT, http_get, metrics_sum};

use crate::{ids, set};

/// h1 prod/a, h2 staging/b, h3 prod/c canary.
fn labelled_fleet() -> Fleet {
    Fleet::builder()
        .agent(AgentSpec::new("h1").label("env", "prod").label("zone", "a"))
        .agent(
            AgentSpec::new("h2")
                .label("env", "staging")
                .label("zone", "b"),
        )
        .agent(
            AgentSpec::new("h3")
                .label("env", "prod")
                .label("zone", "c")
                .label("canary", "true"),
        )
        .start()
}

#[test]
fn three_agents_enrol_connect_and_report_health() {
    let fleet = labelled_fleet();
    let hosts = fleet.agents_json();
    assert_eq!(ids(&hosts), set(&["h1", "h2", "h3"]));
    for h in &hosts {
        let ctx = format!("{h:#?}");
        assert_eq!(h.status, "connected", "{ctx}");
        assert!(!h.agent_version.is_empty(), "no agent_version: {ctx}");
        assert!(!h.cert_serial.is_empty(), "no cert_serial: {ctx}");
        assert!(h.last_seen_ms > 0, "no last_seen_ms: {ctx}");
        let m = h.metrics.as_ref().expect("metrics reported");
        assert!(m.mem_total_bytes > 0 && m.mem_used_bytes > 0, "{ctx}");
        assert!(m.mem_used_bytes <= m.mem_total_bytes, "{ctx}");
        assert!(m.cpu_count > 0, "no cpu_count: {ctx}");
        assert!(m.uptime_secs > 0, "no uptime: {ctx}");
        assert!(
            m.disks.iter().any(|d| d.total_bytes > 0),
            "no disk usage: {ctx}"
        );
        assert_eq!(h.instances.len(), 1, "{ctx}");
        let web = &h.instances[0];
        assert_eq!(web.id, format!("web@{}", h.host_id), "{ctx}");
        assert_eq!(web.name, "web", "{ctx}");
        assert_eq!(web.service, "web", "{ctx}");
        assert_eq!(web.runtime, "process", "{ctx}");
        assert_eq!(web.state, "running", "{ctx}");
        assert_eq!(web.health, "healthy", "{ctx}");
        assert_eq!(web.restarts, 0, "{ctx}");
        // The pid the agent reports is the one in its pidfile, and that
        // process answers as drover-sample.
        let agent = fleet.agent(&h.host_id);
        assert_eq!(Some(web.pid), agent.instance_pid("web"), "{ctx}");
        let port = agent.spec.sample_port().expect("sample port");
        let resp = http_get(&format!("127.0.0.1:{port}"), "/").expect("GET / on the instance");
        assert_eq!(resp, (200, "drover-sample v1\n".to_string()));
    }
    let h3 = hosts.iter().find(|h| h.host_id == "h3").expect("h3 listed");
    assert_eq!(h3.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(h3.labels.get("canary").map(String::as_str), Some("true"));

    // The other views.
    let table = fleet.cli(&["agents"]).expect_success();
    for id in ["h1", "h2", "h3"] {
        assert!(table.stdout.contains(id), "{table}");
    }
    let wide = fleet.cli(&["agents", "-o", "wide"]).expect_success();
    assert!(wide.stdout.contains("web@h1"), "{wide}");
    let show = fleet
        .operator()
        .try_show("h2")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(show.host_id, "h2");
    assert_eq!(show.status, "connected");
    let show_table = fleet.cli(&["agent", "show", "h2"]).expect_success();
    assert!(show_table.stdout.contains("h2"), "{show_table}");
    let missing = fleet.cli(&["agent", "show", "nope"]);
    assert_eq!(missing.code, Some(1), "{missing}");

    // Metrics on the plain side port.
    let (code, body) = http_get(&fleet.coordinator.http_addr(), "/healthz").expect("GET /healthz");
    assert_eq!(code, 200, "{body}");
    fleet.wait(WAIT, "drover_agents_connected is 3", || {
        let m = fleet.coordinator.try_metrics().ok()?;
        (metrics_sum(&m, "drover_agents_connected") == 3.0).then_some(())
    });
    let m = fleet.coordinator.metrics();
    assert!(
        metrics_sum(&m, "drover_reports_received_total") > 0.0,
        "{m}"
    );
    let ok_enrolments: f64 = metrics_samples(&m, "drover_enrollments_total")
        .iter()
        .filter(|(labels, _)| labels.contains("result=\"ok\""))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(ok_enrolments, 3.0, "{m}");
    assert_eq!(metrics_sum(&m, "drover_agents_lost"), 0.0, "{m}");
}

#[test]
fn label_selectors_filter_hosts() {
    let fleet = labelled_fleet();
    let cases: &[(&str, &[&str])] = &[
        ("env=prod", &["h1", "h3"]),
        ("env!=prod", &["h2"]),
        ("zone in (a,b)", &["h1", "h2"]),
        ("zone notin (a,b)", &["h3"]),
        ("!canary", &["h1", "h2"]),
        ("canary", &["h3"]),
        ("env=prod,zone in (a,b)", &["h1"]),
        ("env=prod,!canary", &["h1"]),
        ("env=dev", &[]),
    ];
    let mut failures = Vec::new();
    for (selector, want) in cases {
        match fleet.operator().try_agents(Some(selector)) {
            Ok(hosts) => {
                if ids(&hosts) != set(want) {
                    failures.push(format!(
                        "-l '{selector}': got {:?}, want {want:?}",
                        ids(&hosts)
                    ));
                }
            }
            Err(e) => failures.push(format!("-l '{selector}' failed:\n{e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The table view filters too, and a malformed selector is a usage error.
    let out = fleet.cli(&["agents", "-l", "env=staging"]).expect_success();
    assert!(
        out.stdout.contains("h2") && !out.stdout.contains("h1"),
        "{out}"
    );
    let bad = fleet.cli(&["agents", "-l", "zone in (a"]);
    assert!(!bad.success(), "malformed selector accepted:\n{bad}");
}

#[test]
fn watch_streams_fleet_changes() {
    let mut fleet = Fleet::builder().lost_timeout("2s").agents(2).start();
    let log = fleet.dir.join("watch.log");
    let cmd: Command = fleet.operator().command(&["agents", "--watch"]);
    let watch = Proc::spawn("drover agents --watch", cmd, &log);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    fleet.wait(WAIT, "`drover agents --watch` lists h1 and h2", || {
        if let Some(status) = watch.try_exit() {
            panic!("watch exited ({status}):\n{}", watch.describe(40));
        }
        let text = read();
        text.contains("h1") && text.contains("h2")
    });
    let seen = read().len();
    fleet.agent_mut("h2").kill();
    fleet.wait(
        Duration::from_secs(20),
        "`drover agents --watch` shows h2 lost",
        || {
            let text = read();
            text.get(seen..)
                .unwrap_or("")
                .lines()
                .any(|l| l.contains("h2") && l.contains("lost"))
        },
    );
    assert!(watch.is_running(), "{}", watch.describe(40));
}

#[test]
fn join_token_labels_are_attached_with_config_labels() {
    let mut fleet = Fleet::builder().no_wait().start();
    let token = fleet.operator().token(Some("10m"), &["team=blue"]);
    let idx = fleet.create_agent(AgentSpec::new("h1").label("env", "prod"));
    fleet.agents[idx]
        .enroll(
            &fleet.coordinator.grpc_addr(),
            &token.token,
            &token.ca_fingerprint,
        )
        .expect_success();
    fleet.agents[idx].start();
    let hosts = fleet.wait_healthy(&["h1"]);
    let h1 = hosts.iter().find(|h| h.host_id == "h1").expect("h1 listed");
    assert_eq!(
        h1.labels.get("team").map(String::as_str),
        Some("blue"),
        "{h1:#?}"
    );
    assert_eq!(
        h1.labels.get("env").map(String::as_str),
        Some("prod"),
        "{h1:#?}"
    );
    let blue = fleet.agents_selected(Some("team=blue"));
    assert_eq!(ids(&blue), set(&["h1"]));
}
