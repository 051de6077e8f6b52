//! `drover-fleetsim smoke`: the fleet simulator runs both benchmark
//! scenarios against the real (debug) coordinator and reports figures that
//! make sense. No speed is asserted: machines differ.

use std::process::Command;
use std::time::Duration;

use drover_tests::{bin_path, run_cmd};
use serde_json::Value;

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v:#}"))
}

#[test]
fn fleetsim_smoke_runs_both_scenarios_with_sane_figures() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(bin_path("drover-fleetsim"));
    cmd.arg("smoke").arg("--dir").arg(dir.path().join("run"));
    let out = run_cmd(cmd, Duration::from_secs(300));
    assert!(out.success(), "{out}");
    let figures: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(figures.len(), 3, "one fleet run and two rollouts:\n{out}");

    let fleet = &figures[0];
    assert_eq!(fleet["scenario"], "fleet", "{fleet:#}");
    assert_eq!(num(fleet, "n"), 50.0, "{fleet:#}");
    assert_eq!(num(fleet, "connected"), 50.0, "{fleet:#}");
    assert_eq!(num(fleet, "gave_up"), 0.0, "{fleet:#}");
    assert_eq!(
        num(fleet, "coordinator_agents_connected"),
        50.0,
        "{fleet:#}"
    );
    assert!(num(fleet, "connect_secs") > 0.0, "{fleet:#}");
    assert!(num(fleet, "reports_sent_in_window") > 0.0, "{fleet:#}");
    // Every report sent in the window reached the coordinator, give or
    // take the ones in flight at its edges.
    let sent = num(fleet, "reports_sent_in_window");
    let received = num(fleet, "coordinator_reports_received_in_window");
    assert!((sent - received).abs() <= 50.0, "{fleet:#}");
    let latency = &fleet["report_to_visible_ms"];
    assert!(num(latency, "count") > 0.0, "{fleet:#}");
    assert!(num(latency, "p50") <= num(latency, "p99"), "{fleet:#}");
    assert!(num(latency, "p99") <= num(latency, "max"), "{fleet:#}");
    assert!(num(fleet, "coordinator_cpu_cores") >= 0.0, "{fleet:#}");
    assert!(num(fleet, "coordinator_rss_mib") > 1.0, "{fleet:#}");
    assert!(
        num(fleet, "coordinator_peak_rss_mib") >= num(fleet, "coordinator_rss_mib"),
        "{fleet:#}"
    );
    assert_eq!(fleet["agents_json_error"], Value::Null, "{fleet:#}");
    assert_eq!(num(fleet, "agents_json_hosts"), 50.0, "{fleet:#}");
    assert!(num(fleet, "agents_json_secs") > 0.0, "{fleet:#}");
    assert_eq!(fleet["coordinator_stopped_cleanly"], true, "{fleet:#}");

    for (rollout, delay_ms) in figures[1..].iter().zip([0.0, 20.0]) {
        assert_eq!(rollout["scenario"], "rollout", "{rollout:#}");
        assert_eq!(rollout["phase"], "succeeded", "{rollout:#}");
        assert_eq!(rollout["cli_error"], Value::Null, "{rollout:#}");
        assert_eq!(num(rollout, "done"), 50.0, "{rollout:#}");
        assert_eq!(num(rollout, "failed"), 0.0, "{rollout:#}");
        assert_eq!(num(rollout, "batches"), 10.0, "{rollout:#}");
        assert_eq!(num(rollout, "step_delay_ms"), delay_ms, "{rollout:#}");
        for kind in ["drain", "stop", "deploy", "start", "verify", "undrain"] {
            assert!(
                num(&rollout["commands_by_kind"], kind) >= 50.0,
                "{kind}: {rollout:#}"
            );
        }
        let secs = num(rollout, "rollout_secs");
        assert!(secs > 0.0, "{rollout:#}");
        assert!(num(rollout, "theoretical_min_secs") <= secs, "{rollout:#}");
        assert!(
            num(&rollout["step_turnaround_ms"], "count") > 0.0,
            "{rollout:#}"
        );
        assert_eq!(rollout["coordinator_stopped_cleanly"], true, "{rollout:#}");
    }
    // Steps of 20 ms, 10 batches of 6 steps: at least 1.2 s, so the ratio
    // to that minimum is at least 1.
    assert!(num(&figures[2], "ratio") >= 1.0, "{:#}", figures[2]);
}

#[test]
fn fleetsim_floor_drives_every_step_through_the_bare_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Command::new(bin_path("drover-fleetsim"));
    cmd.args(["floor", "--instances", "20", "--settle", "0s"])
        .args(["--step-delay", "0", "--step-delay", "20ms", "--dir"])
        .arg(dir.path().join("run"));
    let out = run_cmd(cmd, Duration::from_secs(120));
    assert!(out.success(), "{out}");
    let figures: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(figures.len(), 2, "one run per step delay:\n{out}");
    for (run, delay_ms) in figures.iter().zip([0.0, 20.0]) {
        assert_eq!(run["scenario"], "floor", "{run:#}");
        assert_eq!(num(run, "connected"), 20.0, "{run:#}");
        assert_eq!(num(run, "done"), 20.0, "{run:#}");
        assert_eq!(num(run, "failed"), 0.0, "{run:#}");
        assert_eq!(num(run, "batches"), 10.0, "{run:#}");
        assert_eq!(num(run, "step_delay_ms"), delay_ms, "{run:#}");
        // Each of the 6 steps: one command, ACCEPTED and SUCCEEDED back.
        assert_eq!(num(run, "commands_sent"), 120.0, "{run:#}");
        assert_eq!(num(run, "command_updates_received"), 240.0, "{run:#}");
        for kind in ["drain", "stop", "deploy", "start", "verify", "undrain"] {
            assert_eq!(num(&run["commands_by_kind"], kind), 20.0, "{kind}: {run:#}");
        }
        assert!(num(run, "rollout_secs") > 0.0, "{run:#}");
        assert!(num(run, "server_cpu_cores") >= 0.0, "{run:#}");
        assert!(run["overhead_per_batch_ms"].is_number(), "{run:#}");
    }
    // 10 batches of 6 steps of 20 ms: at least 1.2 s.
    assert!(num(&figures[1], "ratio") >= 1.0, "{:#}", figures[1]);
}
