//! The README's demo command: `drover-fleet up` starts a local fleet behind
//! HAProxy, rolls v2 across it under load, reports, and cleans up.

use std::process::Command;
use std::time::Duration;

use drover_tests::{bin_path, run_cmd};

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
