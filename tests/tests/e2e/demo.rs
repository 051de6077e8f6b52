//! The README's demo command: `drover-fleet up` starts a local fleet behind
//! HAProxy, rolls v2 across it under load, reports, and cleans up.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use drover_tests::{CertPair, Cli, Proc, bin_path, run_cmd, wait_until_with};

#[test]
fn fleet_demo_rolls_v2_under_load_and_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fleet_dir = dir.path().join("fleet");
    let mut cmd = Command::new(bin_path("drover-fleet"));
    cmd.args(["up", "--agents", "3", "--dir"]).arg(&fleet_dir);
    let out = run_cmd(cmd, Duration::from_secs(120)).expect_success();
    for want in [
        "drover agents",
        "h1",
        "h2",
        "h3",
        "connected",
        "web@h1",
        "healthy",
        "release v1",
        "rollout web-2 succeeded",
        "3 of 3 instances updated",
        " served, 0 failed",
        "every instance on v2; no request failed; capacity never under the floor",
    ] {
        assert!(
            out.stdout.contains(want),
            "no `{want}` in the demo's output:\n{out}"
        );
    }
    // The files stay in --dir; a second run may reuse it.
    assert!(
        fleet_dir
            .join("fleet")
            .join("pki")
            .join("ca")
            .join("ca.pem")
            .is_file()
    );
    let mut again = Command::new(bin_path("drover-fleet"));
    again.args(["up", "--agents", "2", "--dir"]).arg(&fleet_dir);
    run_cmd(again, Duration::from_secs(120)).expect_success();

    // One instance cannot be updated without dropping requests: refused.
    let mut one = Command::new(bin_path("drover-fleet"));
    one.args(["up", "--agents", "1"]);
    let out = run_cmd(one, Duration::from_secs(60)).expect_failure();
    assert!(out.stderr.contains("--agents must be at least 2"), "{out}");

    // A dir it did not make is left alone.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("create dir");
    std::fs::write(foreign.join("precious.txt"), "keep me").expect("write file");
    let mut refused = Command::new(bin_path("drover-fleet"));
    refused.args(["up", "--dir"]).arg(&foreign);
    let out = run_cmd(refused, Duration::from_secs(60)).expect_failure();
    assert!(foreign.join("precious.txt").is_file(), "{out}");
}

/// `scripts/demo --strategy canary`: a bad canary caught and rolled back
/// by the analysis, then a good one promoted, under load, live.
#[test]
fn canary_demo_catches_a_bad_canary_and_promotes_a_good_one() {
    let mut cmd = Command::new(bin_path("drover-fleet"));
    cmd.args(["up", "--strategy", "canary", "--agents", "4"]);
    let out = run_cmd(cmd, Duration::from_secs(240)).expect_success();
    for want in [
        "a bad canary: v2-bad fails 5% of its requests",
        "canary analysis failed at step 1 (10%)",
        "rolled_back",
        "drover rollout analysis",
        "traffic: 10% passed, 50% passed",
        "v2-bad caught and rolled back by the analysis; v2 promoted to every instance",
    ] {
        assert!(
            out.stdout.contains(want),
            "no `{want}` in the canary demo's output:\n{out}"
        );
    }
    let mut small = Command::new(bin_path("drover-fleet"));
    small.args(["up", "--strategy", "canary", "--agents", "2"]);
    let out = run_cmd(small, Duration::from_secs(60)).expect_failure();
    assert!(out.stderr.contains("--agents 3 or more"), "{out}");
}

/// The number after `key` on the line of `text` that has `key`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let digits: String = (rest.chars())
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    digits.parse().ok()
}

/// Where `want` first shows in `text`; panics with the output otherwise.
#[track_caller]
fn position(text: &str, want: &str) -> usize {
    text.find(want)
        .unwrap_or_else(|| panic!("no `{want}` in the HA demo's output:\n{text}"))
}

/// `scripts/demo --ha --keep`: 3 etcd members and 2 coordinators; the
/// leader is SIGKILLed mid-rollout under load, the standby takes over and
/// finishes the rollout with no failed request; the kept fleet has both
/// coordinators again, and the printed DROVER_ADDR lists both.
#[test]
fn ha_demo_shows_the_standby_taking_over_when_the_leader_is_killed_mid_rollout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("demo.log");
    let mut cmd = Command::new(bin_path("drover-fleet"));
    cmd.args(["up", "--ha", "--agents", "3", "--keep"]);
    let demo = Proc::spawn("drover-fleet", cmd, &log);
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until_with(
        Duration::from_secs(180),
        "the HA demo keeps its fleet running",
        || {
            if let Some(status) = demo.try_exit() {
                panic!("the HA demo exited ({status}):\n{}", text());
            }
            text().contains("press Ctrl-C to stop")
        },
        text,
    );
    let out = text();

    // Who leads before, the kill in the middle of the rollout, the
    // takeover, who leads after; then the rollout's end, in that order.
    let before = position(&out, "leader: c1, epoch ");
    let killed = position(&out, "SIGKILL to the leader c1");
    let took_over = position(&out, "c2 took over: its role is leader ");
    let after = position(&out, "leader: c2, epoch ");
    let succeeded = position(&out, "rollout web-2: succeeded");
    assert!(
        before < killed && killed < took_over && took_over < after && after < succeeded,
        "out of order:\n{out}"
    );
    let kill_line = out[killed..].lines().next().unwrap_or_default();
    let done = number_after(kill_line, "mid-rollout: ").unwrap_or(0.0);
    assert!(
        (1.0..3.0).contains(&done) && kill_line.contains(" of 3 instances updated"),
        "the leader was not killed mid-rollout: {kill_line}\n{out}"
    );
    let took = number_after(&out[took_over..], "its role is leader ").unwrap_or(0.0);
    assert!(took > 0.0, "no takeover time:\n{out}");
    // The epoch goes up with the new leader.
    let epochs = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("leader epoch: "))
        .unwrap_or_else(|| panic!("no `leader epoch:` line:\n{out}"));
    let (old, new) = (epochs.split_once(" -> "))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, number_after(b, "")? as u64)))
        .unwrap_or_else(|| panic!("cannot read the epochs in `{epochs}`:\n{out}"));
    assert!(new > old, "the epoch did not go up: {epochs}\n{out}");
    for want in [
        // The CLI given both addresses followed the leader across the kill.
        "reconnected to the coordinator at",
        "resumed after a coordinator restart",
        "3 of 3 instances updated, finished by c2",
        " served, 0 failed",
        "(c1 -> c2)",
        "the standby took the rollout over and finished it: every instance on v2; no request failed",
        "c1 started again: it stands by",
    ] {
        assert!(
            out.contains(want),
            "no `{want}` in the HA demo's output:\n{out}"
        );
    }

    // The printed settings name both coordinators; with them the CLI finds
    // c2 leading and c1 standing by.
    let exports: BTreeMap<&str, &str> = (out.lines())
        .find_map(|l| l.strip_prefix("export "))
        .unwrap_or_else(|| panic!("no export line:\n{out}"))
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let addr = exports.get("DROVER_ADDR").copied().unwrap_or_default();
    assert_eq!(addr.split(',').count(), 2, "DROVER_ADDR={addr}\n{out}");
    let file = |k: &str| std::path::PathBuf::from(exports.get(k).copied().unwrap_or_default());
    let cli = Cli::new(
        addr,
        &file("DROVER_CA"),
        Some(CertPair {
            cert: file("DROVER_CERT"),
            key: file("DROVER_KEY"),
        }),
        dir.path(),
    );
    let listed = cli.run(&["coordinators", "-o", "json"]);
    assert!(listed.success(), "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    assert_eq!(listed["leader"], "c2", "{listed}");
    let names: Vec<&str> = (listed["coordinators"].as_array().expect("a list").iter())
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{listed}");

    // Ctrl-C (or SIGTERM) stops it all cleanly.
    let (status, in_time) = demo.terminate(Duration::from_secs(60));
    assert!(
        in_time && status.is_some_and(|s| s.success()),
        "the HA demo did not stop cleanly ({status:?}):\n{}",
        text()
    );

    // A canary is not what --ha shows: refused before anything starts.
    let mut canary = Command::new(bin_path("drover-fleet"));
    canary.args(["up", "--ha", "--strategy", "canary"]);
    let out = run_cmd(canary, Duration::from_secs(30)).expect_failure();
    assert!(
        out.stderr.contains("--ha") && out.stderr.contains("--strategy canary"),
        "{out}"
    );
}

/// `scripts/demo --dr`: a graceful DR drill on a two-site local fleet with
/// a real PostgreSQL pair, under load, and its report.
#[test]
fn dr_demo_runs_a_drill_end_to_end_and_prints_the_report() {
    let mut cmd = Command::new(bin_path("drover-fleet"));
    cmd.args(["up", "--dr"]);
    let out = run_cmd(cmd, Duration::from_secs(240)).expect_success();
    for want in [
        "every pre-check passed",
        "dr-1 drill of web started",
        "dr-1 approved by bob",
        "drill succeeded: recovery time",
        "# DR drill dr-1: web (succeeded)",
        "| Recovery time | **",
        " served, 0 failed",
        "0 lost",
        "all traffic on site=dr; no request failed; no acknowledged write lost",
    ] {
        assert!(
            out.stdout.contains(want),
            "no `{want}` in the demo's output:\n{out}"
        );
    }
    let mut odd = Command::new(bin_path("drover-fleet"));
    odd.args(["up", "--dr", "--agents", "3"]);
    let out = run_cmd(odd, Duration::from_secs(60)).expect_failure();
    assert!(out.stderr.contains("--dr needs an even --agents"), "{out}");
}
