//! The README's demo command: `drover-fleet up` starts a local fleet, shows
//! it and cleans up.

use std::process::Command;
use std::time::Duration;

use drover_tests::{bin_path, run_cmd};

#[test]
fn fleet_demo_starts_shows_and_stops() {
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
    ] {
        assert!(
            out.stdout.contains(want),
            "no `{want}` in the demo's output:\n{out}"
        );
    }
    // The files stay in --dir; a second run may reuse it.
    assert!(fleet_dir.join("pki").join("ca").join("ca.pem").is_file());
    let mut again = Command::new(bin_path("drover-fleet"));
    again.args(["up", "--agents", "1", "--dir"]).arg(&fleet_dir);
    run_cmd(again, Duration::from_secs(120)).expect_success();

    // A dir it did not make is left alone.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).expect("create dir");
    std::fs::write(foreign.join("precious.txt"), "keep me").expect("write file");
    let mut refused = Command::new(bin_path("drover-fleet"));
    refused.args(["up", "--dir"]).arg(&foreign);
    let out = run_cmd(refused, Duration::from_secs(60)).expect_failure();
    assert!(foreign.join("precious.txt").is_file(), "{out}");
}
