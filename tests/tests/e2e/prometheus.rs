//! Metrics and the Grafana dashboard end to end (issue 14): a real
//! Prometheus scrapes a real coordinator and one agent's own /metrics
//! while a rolling update runs under load through HAProxy, and PromQL over
//! its HTTP API, as a dashboard asks it, shows the capacity dipping to the
//! floor and never under it. The dashboard in `deploy/grafana/drover.json`
//! is checked for well-formedness, and every one of its queries is sent to
//! that same Prometheus and must parse.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use drover_testkit::prometheus::{Prometheus, Series, Target, unix_now};
use drover_tests::harness::rollout::SERVICE;
use drover_tests::{LoadSpec, WAIT, WebFleet, free_port, http_get, wait_until_with};
use serde_json::Value;

/// Short enough that a batch out of service (stop, deploy, start and a
/// 2 s verify) is seen in several scrapes.
const SCRAPE: Duration = Duration::from_millis(250);
/// What Grafana's variables stand for when the dashboard's queries are sent.
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "1h"),
    ("${service}", ".*"),
    ("$service", ".*"),
];

fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/drover.json")
}

fn dashboard() -> Value {
    let path = dashboard_path();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        out.push(p);
        for inner in p["panels"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            out.push(inner);
        }
    }
    out
}

/// `(panel title, expr)` of every query, Grafana's variables substituted.
fn queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dash) {
        for t in p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let mut expr = t["expr"].as_str().unwrap_or_default().to_string();
            for (var, value) in VARIABLES {
                expr = expr.replace(var, value);
            }
            out.push((p["title"].as_str().unwrap_or_default().to_string(), expr));
        }
    }
    out
}

/// The metric names a query reads (`drover_...`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("drover_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |n| start + n);
        if !preceded {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// The family a sample name belongs to: `drover_x_total` and
/// `drover_x_bucket` are samples of `drover_x`.
fn family(name: &str) -> &str {
    ["_bucket", "_count", "_sum", "_total"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Whether the coordinator's or the agent's metrics register family
/// `name` (registered without the registry's prefix).
fn registered(name: &str) -> bool {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (files, prefix): (&[&str], &str) =
        if name.starts_with("drover_agent_") && !name.starts_with("drover_agent_commands_fenced") {
            (&["agent/src/exporter.rs"], "drover_agent_")
        } else {
            (
                &[
                    "coordinator/src/metrics.rs",
                    "coordinator/src/metrics/rollouts.rs",
                ],
                "drover_",
            )
        };
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    files.iter().any(|f| {
        std::fs::read_to_string(root.join(f))
            .unwrap_or_default()
            .contains(&format!("\"{rest}\","))
    })
}

#[test]
fn the_dashboard_is_well_formed() {
    let dash = dashboard();
    assert!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion"
    );
    assert!(
        dash["title"].as_str().is_some_and(|t| !t.is_empty()),
        "title"
    );
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()), "uid");
    let vars = dash["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a `datasource` variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"], "${datasource}",
            "variable {}",
            v["name"]
        );
    }

    let all = panels(&dash);
    let mut ids = BTreeSet::new();
    for p in &all {
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel without an id: {p}"));
        assert!(ids.insert(id), "panel id {id} used twice");
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel {id} has no title");
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h), (Some(x), Some(w), Some(h)) if w >= 1 && h >= 1 && x + w <= 24),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap_or_default()),
                "{title}: refId twice"
            );
            assert!(
                !t["refId"].as_str().unwrap_or_default().is_empty(),
                "{title}: refId"
            );
            assert!(
                t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()),
                "{title}: expr"
            );
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    // Grafana's variables all stand for something once substituted.
    for (title, expr) in queries(&dash) {
        assert!(
            !expr.contains('$'),
            "{title}: a variable the check does not know: {expr}"
        );
    }

    // The panels the issue asks for, by what they read.
    let reads = |title_has: &[&str]| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for p in &all {
            let t = p["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let names: BTreeSet<String> = t
                .iter()
                .flat_map(|t| metric_names(t["expr"].as_str().unwrap_or_default()))
                .collect();
            if title_has.iter().all(|n| names.contains(*n)) {
                out.insert(p["title"].as_str().unwrap_or_default().to_string());
            }
        }
        out
    };
    for wanted in [
        &["drover_hosts"][..],
        &["drover_rollouts_running"],
        &["drover_rollouts_ended_total"],
        &[
            "drover_rollout_capacity_instances",
            "drover_rollout_floor_instances",
        ],
        &["drover_rollout_step_duration_seconds_bucket"],
        &["drover_canary_error_ratio"],
        &["drover_canary_latency_seconds"],
        &["drover_drill_recovery_seconds"],
        &["drover_drill_last_success_timestamp_seconds"],
        &["drover_leader", "drover_epoch"],
    ] {
        assert!(!reads(wanted).is_empty(), "no panel reads {wanted:?}");
    }
}

/// The value of the one series of an instant query, once it is `want`.
fn wait_value(prom: &Prometheus, query: &str, want: f64) {
    wait_until_with(
        WAIT,
        &format!("Prometheus answers {query} with {want}"),
        || {
            let got = prom.query(query).ok()?;
            (got.len() == 1 && got[0].values().next() == Some(want)).then_some(())
        },
        || {
            format!(
                "last answer: {:?}\n{}",
                prom.query(query),
                prom.describe(20)
            )
        },
    );
}

fn one(series: Vec<Series>, what: &str) -> Series {
    assert_eq!(
        series.len(),
        1,
        "{what}: expected one series, got {series:#?}"
    );
    series.into_iter().next().unwrap_or_else(|| unreachable!())
}

#[test]
fn prometheus_sees_a_rolling_update_dip_to_the_floor_and_the_dashboard_queries_parse() {
    let agent_port = free_port();
    let agent_addr = format!("127.0.0.1:{agent_port}");
    let web = WebFleet::builder()
        .hosts(4)
        .agent_toml("h1", &format!("[metrics]\nlisten = \"{agent_addr}\"\n"))
        .start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    let coordinator_addr = web.fleet.coordinator.http_addr();
    let prom = Prometheus::start(
        &[
            Target::new("drover-coordinator", &coordinator_addr),
            Target::new("drover-agent", &agent_addr),
        ],
        SCRAPE,
    );
    prom.wait_up("drover-coordinator", WAIT);
    prom.wait_up("drover-agent", WAIT);

    let load = web.start_load(LoadSpec::default());
    let before = unix_now();
    // 75% of 4: a floor of 3, one instance out at a time, each out for a
    // 2 s verify at least. Staging holds the next instance as soon as one
    // is done, so the rollout is paused once to show all 4 in service in
    // the middle of it.
    let started = web.start_detached(
        "v2",
        &[
            "--min-healthy",
            "75%",
            "--batch",
            "1",
            "--min-healthy-time",
            "2s",
        ],
    );
    let id = started.id.clone();
    let selector = format!("{{rollout=\"{id}\",service=\"{SERVICE}\"}}");
    web.act("pause", &id);
    web.wait_rollout(&id, "is paused with all 4 in service", WAIT, |r| {
        r.phase == "paused" && r.counts.in_progress == 0 && r.capacity == 4
    });
    wait_value(
        &prom,
        &format!("drover_rollout_capacity_instances{selector}"),
        4.0,
    );
    web.act("resume", &id);
    let rollout = web.wait_finished(&id, Duration::from_secs(120));
    let report = load.stop();
    let diag = || format!("{report}\n{}\n{}", rollout.timeline(), prom.describe(20));
    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(rollout.counts.done, 4, "{}", diag());
    assert_eq!(rollout.floor, 3, "{}", diag());
    assert_eq!(
        report.failed,
        0,
        "requests failed through HAProxy\n{}",
        diag()
    );

    // Prometheus saw it end: the initial deploy and this one.
    wait_value(
        &prom,
        "drover_rollouts_ended_total{strategy=\"rolling\",outcome=\"succeeded\"}",
        2.0,
    );
    wait_value(&prom, "sum(drover_rollouts_running)", 0.0);
    let after = unix_now();

    // The capacity series over the rollout, as a dashboard's graph asks.
    let capacity = one(
        prom.query_range(
            &format!("drover_rollout_capacity_instances{selector}"),
            before,
            after,
            SCRAPE,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", diag())),
        "capacity",
    );
    let floor = one(
        prom.query_range(
            &format!("drover_rollout_floor_instances{selector}"),
            before,
            after,
            SCRAPE,
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", diag())),
        "floor",
    );
    let values: Vec<f64> = capacity.values().collect();
    let shown = || format!("capacity {values:?}\n{}", diag());
    assert!(values.len() >= 8, "too few samples: {}", shown());
    assert!(
        floor.values().all(|v| v == 3.0),
        "floor {:?}\n{}",
        floor.samples,
        diag()
    );
    let lowest = values.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(
        lowest,
        3.0,
        "capacity dips to the floor and never under it: {}",
        shown()
    );
    let above = values.iter().position(|&v| v == 4.0);
    assert!(
        above.is_some_and(|i| values[i..].contains(&3.0)),
        "capacity was above the floor (all 4 in service) and dipped to it after: {}",
        shown()
    );
    // The same minimum over the range, in one PromQL expression.
    let span = (after - before).ceil() as u64 + 1;
    let min = one(
        prom.query(&format!(
            "min_over_time(drover_rollout_capacity_instances{selector}[{span}s])"
        ))
        .unwrap_or_else(|e| panic!("{e}\n{}", diag())),
        "min_over_time",
    );
    assert_eq!(min.values().next(), Some(3.0), "{}", shown());
    // Gone once the rollout ended: no series left for past rollouts.
    wait_until_with(
        WAIT,
        "the ended rollout's capacity series is no longer current",
        || {
            prom.query(&format!("drover_rollout_capacity_instances{selector}"))
                .is_ok_and(|s| s.is_empty())
        },
        || prom.describe(20),
    );

    // Step durations by step: every step of the chain ran for each of the
    // 4 instances in this rollout.
    let steps: BTreeMap<String, f64> = prom
        .query("sum by (step) (drover_rollout_step_duration_seconds_count{outcome=\"succeeded\"})")
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|s| {
            (
                s.label("step").to_string(),
                s.values().next().unwrap_or(0.0),
            )
        })
        .collect();
    for step in [
        "stage", "drain", "stop", "deploy", "start", "verify", "undrain",
    ] {
        assert!(
            steps.get(step).is_some_and(|&n| n >= 4.0),
            "step {step} observed fewer than 4 times: {steps:?}"
        );
    }
    let p90 = prom
        .query("histogram_quantile(0.9, sum by (le, step) (rate(drover_rollout_step_duration_seconds_bucket[5m])))")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        p90.iter()
            .any(|s| s.label("step") == "verify" && s.values().all(f64::is_finite)),
        "{p90:?}"
    );
    // Hosts by status: the 4 agents are connected.
    wait_value(&prom, "drover_hosts{status=\"connected\"}", 4.0);

    // h1's agent, from its own /metrics: it drained and verified in both
    // rollouts, its session is up and its instance healthy.
    for step in ["drain", "verify"] {
        let q = format!(
            "drover_agent_commands_total{{job=\"drover-agent\",step=\"{step}\",outcome=\"succeeded\"}}"
        );
        let got = one(prom.query(&q).unwrap_or_else(|e| panic!("{e}")), &q);
        assert!(got.values().all(|v| v >= 1.0), "{q}: {got:?}");
    }
    wait_value(
        &prom,
        "drover_agent_session_connected{job=\"drover-agent\"}",
        1.0,
    );
    wait_value(
        &prom,
        "drover_agent_instance_healthy{job=\"drover-agent\",id=\"web@h1\"}",
        1.0,
    );

    // Every query of the dashboard parses and runs against this
    // Prometheus, and every metric it reads exists (a typo would parse
    // and show nothing): exposed now, or (for series that exist only
    // while something runs: canaries, drills) registered by name.
    let exposed = [coordinator_addr.as_str(), agent_addr.as_str()]
        .iter()
        .map(|addr| match http_get(addr, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("GET {addr}/metrics: {other:?}"),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let families: BTreeSet<&str> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let dash = dashboard();
    let all = queries(&dash);
    assert!(all.len() >= 20, "{} queries", all.len());
    for (title, expr) in &all {
        if let Err(e) = prom.query(expr) {
            panic!("panel {title:?}: {expr}\n{e}");
        }
        for name in metric_names(expr) {
            let name = family(&name);
            assert!(
                families.contains(name) || registered(name),
                "panel {title:?} reads {name}, which neither the coordinator nor the agent exposes"
            );
        }
    }
    // And a query that does not parse is refused, so the check has teeth.
    let bad = prom
        .query("sum by (step (drover_rollout_step_duration_seconds_count)")
        .expect_err("a malformed query");
    assert!(bad.is_bad_data(), "{bad}");
}

/// A canary whose new release fails 5% of its requests: while it is
/// judged, Prometheus sees the analysis's numbers per arm (the canary's
/// errors, the baseline's none) and the verdict that rolls it back.
#[test]
fn prometheus_sees_a_bad_canary_judged_against_its_baseline() {
    let web = WebFleet::builder().hosts(5).start();
    web.deploy_initial("v1");
    web.push_release("v2", &["--error-rate", "0.05"]);
    let prom = Prometheus::start(
        &[Target::new(
            "drover-coordinator",
            &web.fleet.coordinator.http_addr(),
        )],
        SCRAPE,
    );
    prom.wait_up("drover-coordinator", WAIT);
    let load = web.start_load(drover_tests::harness::traffic::load_spec());
    let before = unix_now();
    let spec = web.root.join("canary.toml");
    std::fs::write(
        &spec,
        "strategy = \"canary\"\nsteps = \"10%,50%,100%\"\nbake = \"30s\"\nmin_healthy = \"60%\"\n\
         [analysis]\ninterval = \"1s\"\nwarmup = \"2s\"\nmin_requests = 100\n",
    )
    .expect("write the rollout spec");
    let started = web.start_detached("v2", &["-f", &spec.display().to_string()]);
    let rollout = web.wait_finished(&started.id, Duration::from_secs(120));
    let report = load.stop();
    let diag = || format!("{report}\n{}\n{}", rollout.timeline(), prom.describe(20));
    assert_eq!(rollout.phase, "rolled_back", "{}", diag());
    wait_value(
        &prom,
        "drover_rollouts_ended_total{strategy=\"canary\",outcome=\"rolled_back\"}",
        1.0,
    );
    let span = (unix_now() - before).ceil() as u64 + 1;
    let max = |metric: &str, labels: &str| -> Option<f64> {
        let q = format!(
            "max_over_time({metric}{{rollout=\"{}\",service=\"{SERVICE}\",{labels}}}[{span}s])",
            started.id
        );
        let got = prom
            .query(&q)
            .unwrap_or_else(|e| panic!("{q}: {e}\n{}", diag()));
        assert!(got.len() <= 1, "{q}: {got:?}");
        got.first().and_then(|s| s.values().next())
    };
    let canary = max("drover_canary_error_ratio", "arm=\"canary\"");
    let baseline = max("drover_canary_error_ratio", "arm=\"baseline\"");
    assert!(
        canary.is_some_and(|c| c > 0.0) && baseline == Some(0.0),
        "error ratio: canary {canary:?}, baseline {baseline:?}\n{}",
        diag()
    );
    for arm in ["canary", "baseline"] {
        let requests = max("drover_canary_requests", &format!("arm=\"{arm}\""));
        assert!(
            requests.is_some_and(|n| n > 0.0),
            "{arm} requests {requests:?}\n{}",
            diag()
        );
    }
    assert_eq!(
        max("drover_canary_verdict", "verdict=\"fail\""),
        Some(1.0),
        "the failing verdict was seen\n{}",
        diag()
    );
    assert_eq!(
        max(
            "drover_canary_traffic_share_ratio",
            "job=\"drover-coordinator\""
        ),
        Some(0.1),
        "caught in the 10% step\n{}",
        diag()
    );
}
