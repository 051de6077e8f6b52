//! The benchmarks of issue 5 (`drover-bench`) run end to end in a tiny
//! configuration against the debug build: each scenario must start the
//! real binaries, finish, and print sane figures. No speed is asserted;
//! the figures worth reading come from `scripts/bench` on release builds.
//! The Ansible side of the comparison is not run here (it needs a
//! virtualenv with ansible-core, which `scripts/bench` installs).

use std::process::Command;
use std::time::Duration;

use drover_tests::bench::table;
use drover_tests::{bin_path, run_cmd};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `drover-bench ARGS`; its JSON lines.
fn bench(args: &[&str]) -> Vec<Value> {
    let mut cmd = Command::new(bin_path("drover-bench"));
    cmd.args(args);
    let out = run_cmd(cmd, TIMEOUT);
    assert!(out.success(), "drover-bench failed:\n{out}");
    let records = table::parse(&out.stdout);
    assert!(!records.is_empty(), "no JSON from drover-bench:\n{out}");
    records
}

fn find<'a>(records: &'a [Value], key: &str, value: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r[key] == value)
        .unwrap_or_else(|| panic!("no record with {key}={value}: {records:#?}"))
}

fn num(r: &Value, key: &str) -> f64 {
    r[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {key} in {r}"))
}

#[test]
fn footprint_measures_an_idle_agent() {
    let records = bench(&["footprint", "--duration", "2s", "--warmup", "500ms"]);
    let agent = find(&records, "subject", "drover-agent");
    let rss = num(agent, "rss_peak_mib");
    assert!((1.0..512.0).contains(&rss), "peak RSS {rss} MiB: {agent}");
    assert!(num(agent, "rss_mib") <= rss, "{agent}");
    let cpu = num(agent, "cpu_percent");
    assert!((0.0..100.0).contains(&cpu), "CPU {cpu}%: {agent}");
    assert!(num(agent, "window_secs") >= 2.0, "{agent}");
    assert_eq!(agent["processes"], 1, "{agent}");
    let salt = find(&records, "subject", "salt-minion");
    assert!(salt["skipped"].is_string(), "{salt}");
}

#[test]
fn ansible_comparison_runs_drovers_side() {
    let records = bench(&["ansible", "--hosts", "2", "--batches", "1"]);
    let drover = find(&records, "tool", "drover");
    assert_eq!(drover["batch"], 1, "{drover}");
    assert_eq!(drover["hosts"], 2, "{drover}");
    assert!(num(drover, "wall_secs") > 0.0, "{drover}");
    assert!(num(drover, "cpu_secs") > 0.0, "{drover}");
    assert!(
        records.iter().all(|r| r["tool"] == "drover"),
        "the Ansible side needs --ansible-venv: {records:#?}"
    );
    assert!(
        drover_tests::bench::ansible::PLAYBOOK.contains("serial: \"{{ batch | int }}\""),
        "the playbook's batch size comes from -e batch=N"
    );
}

#[test]
fn fanout_measures_throughput_against_the_loopback_limit() {
    let records = bench(&["fanout", "--agents", "2", "--size-mib", "4"]);
    let r = find(&records, "scenario", "fanout");
    assert_eq!(r["agents"], 2, "{r}");
    assert!(num(r, "artifact_mib") >= 4.0, "{r}");
    assert!(num(r, "drover_mib_s") > 0.0, "{r}");
    assert!(num(r, "loopback_mib_s") > 0.0, "{r}");
    assert!(num(r, "ratio") > 0.0, "{r}");
    // Streamed: an agent never holds the artifact in memory.
    assert!(num(r, "agent_rss_growth_mib_max") < 64.0, "{r}");

    // The table scripts/bench prints shows the figure and its target.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("fanout.jsonl");
    std::fs::write(&file, serde_json::to_string(r).expect("encode")).expect("write");
    let mut cmd = Command::new(bin_path("drover-bench"));
    cmd.arg("table").arg(&file);
    let out = run_cmd(cmd, TIMEOUT).expect_success();
    assert!(
        out.stdout.contains("| fanout |") && out.stdout.contains(">= 0.5 of the loopback limit"),
        "{out}"
    );
}

/// `drover-fleetsim fleet --store etcd` (issue 12): a tiny fleet whose
/// coordinator keeps its state in a 1-member etcd started for the run
/// reports etcd's write rate, CPU and memory beside the coordinator's
/// figures. No speed and no rate is asserted: only that the figures are
/// there and that etcd's counters were read (connecting writes each host).
#[test]
fn fleet_on_etcd_reports_etcds_write_rate() {
    const HOSTS: u64 = 20;
    let mut cmd = Command::new(bin_path("drover-fleetsim"));
    cmd.args([
        "fleet",
        "--hosts",
        &HOSTS.to_string(),
        "--interval",
        "500ms",
        "--warmup",
        "1s",
        "--steady",
        "3s",
        "--latency-window",
        "1s",
        "--watch-selector",
        "",
        "--agents-json-runs",
        "1",
        "--store",
        "etcd",
    ]);
    let out = run_cmd(cmd, TIMEOUT);
    assert!(
        out.success(),
        "drover-fleetsim fleet --store etcd failed:\n{out}"
    );
    let records = table::parse(&out.stdout);
    let r = find(&records, "scenario", "fleet");
    assert_eq!(r["store"], "etcd", "{r}");
    assert_eq!(r["connected"], HOSTS, "{r}");
    assert!(num(r, "etcd_writes_per_sec") >= 0.0, "{r}");
    assert!(num(r, "etcd_writes_per_agent_per_sec") >= 0.0, "{r}");
    assert!(
        num(r, "etcd_rss_mib") > 0.0,
        "etcd's process was not found: {r}"
    );
    assert!(num(r, "etcd_cpu_cores") >= 0.0, "{r}");
    let e = &r["etcd"];
    assert!(e["error"].is_null(), "{r}");
    assert!(
        num(e, "writes_while_connecting_and_warming_up") >= HOSTS as f64,
        "each host is written once when it connects: {r}"
    );

    // The table scripts/bench prints lists the write rate.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("scale-etcd.jsonl");
    std::fs::write(&file, serde_json::to_string(r).expect("encode")).expect("write");
    let mut cmd = Command::new(bin_path("drover-bench"));
    cmd.arg("table").arg(&file);
    let out = run_cmd(cmd, TIMEOUT).expect_success();
    assert!(
        out.stdout.contains("store=etcd") && out.stdout.contains("etcd_writes_per_sec"),
        "{out}"
    );
}
