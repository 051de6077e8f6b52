//! Disaster-recovery plans (issue 13): `drover drill plan` checks a DR
//! plan against a two-site fleet behind HAProxy (hosts labelled
//! `site=primary` and `site=dr`) and refuses an under-provisioned DR site
//! with the numbers.

use std::path::{Path, PathBuf};

use drover_tests::{WAIT, WebFleet};

/// A two-site fleet: h1, h2 on the primary, h3, h4 on DR, all on v1.
fn two_sites(extra_coordinator_toml: &str) -> WebFleet {
    let extra = extra_coordinator_toml.to_string();
    let web = WebFleet::builder()
        .host("h1", &[("site", "primary")])
        .host("h2", &[("site", "primary")])
        .host("h3", &[("site", "dr")])
        .host("h4", &[("site", "dr")])
        .coordinator(|c| c.extra_toml.push_str(&extra))
        .start();
    web.deploy_initial("v1");
    web
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

const PLAN: &str = "service = \"web\"\nversion = \"7\"\nrto = \"5m\"\n";

#[test]
fn drill_plan_checks_the_dr_site_and_refuses_one_too_small_with_the_numbers() {
    let mut web = two_sites("");
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(dir.path(), "dr.toml", PLAN);
    let plan_arg = plan.to_str().expect("utf-8 path");

    let out = web
        .fleet
        .cli(&["drill", "plan", "-f", plan_arg])
        .expect_success();
    for want in [
        "DR plan for web version 7",
        "site=primary -> site=dr",
        "capacity",
        "2 of 2 ready on site=dr = 100% of the primary's peak of 2 serving",
        "at least 100% (2 instances)",
        "release",
        "site=primary: v1 on 2; site=dr: v1 on 2",
        "traffic",
        "4 of 4 instances registered with a load balancer",
        "every pre-check passed",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{out}");
    }
    let json = web
        .fleet
        .cli(&["drill", "plan", "-f", plan_arg, "-o", "json"])
        .expect_success();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["passed"], true, "{json}");
    assert_eq!(v["checks"][0]["name"], "capacity", "{json}");
    assert_eq!(v["plan_digest"].as_str().map(str::len), Some(64), "{json}");

    // Half the DR site goes: 1 of 2 ready is 50% of the primary's peak.
    web.fleet.agent_mut("h4").kill();
    web.fleet.wait_status("h4", "lost", WAIT);
    let out = web.fleet.cli(&["drill", "plan", "-f", plan_arg]);
    assert_eq!(out.code, Some(1), "{out}");
    for want in [
        "FAILED",
        "1 of 2 ready on site=dr = 50% of the primary's peak of 2 serving",
        "site=dr is short of 1 instance(s); not ready: web@h4",
        "a drill would be refused: capacity failed",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{out}");
    }
    assert!(
        out.stderr
            .contains("pre-checks failed: capacity: 1 of 2 ready"),
        "{out}"
    );

    // A plan asking for more than the DR site has: refused with numbers.
    let big = write(
        dir.path(),
        "big.toml",
        &format!("{PLAN}[checks]\ncapacity = \"150%\"\n"),
    );
    let out = web
        .fleet
        .cli(&["drill", "plan", "-f", big.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stdout.contains("at least 150% (3 instances)"), "{out}");
}

#[test]
fn drill_plan_refuses_a_malformed_plan_and_commands_it_cannot_run() {
    let web = two_sites("");
    let dir = tempfile::tempdir().expect("temp dir");
    // A malformed plan: exit 2, naming the file and the field; nothing sent.
    let bad = write(
        dir.path(),
        "bad.toml",
        "service = \"web\"\n[sites]\ndr = \"primary\"\n",
    );
    let out = web
        .fleet
        .cli(&["drill", "plan", "-f", bad.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("bad.toml") && out.stderr.contains("sites.dr: must differ"),
        "{out}"
    );
    let path_cmd = write(
        dir.path(),
        "path.toml",
        "service = \"web\"\n[database]\nlag = [\"/bin/sh\", \"-c\", \"echo\"]\npromote = [\"p\"]\n",
    );
    let out = web
        .fleet
        .cli(&["drill", "plan", "-f", path_cmd.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("must be a bare name"), "{out}");

    // Commands, but no commands_dir on this coordinator: the check says so.
    let db = write(
        dir.path(),
        "db.toml",
        "service = \"web\"\nrpo = \"5s\"\n[database]\nlag = [\"pg-lag\"]\npromote = [\"pg-promote\"]\n",
    );
    let out = web
        .fleet
        .cli(&["drill", "plan", "-f", db.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout
            .contains("this coordinator has no [drills] commands_dir"),
        "{out}"
    );
}

/// The replication-lag pre-check runs the plan's lag command (the example
/// plan's `pg-lag`, from the coordinator's commands_dir) against a real
/// PostgreSQL primary with a streaming replica.
#[test]
fn drill_plan_measures_the_real_replication_lag_against_the_rpo() {
    use drover_testkit::postgres::PgPair;

    let pair = PgPair::start().unwrap_or_else(|e| panic!("start PostgreSQL: {e}"));
    pair.wait_streaming(std::time::Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.describe(40)));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("dr")
        .canonicalize()
        .expect("examples/dr");
    let web = two_sites(&format!(
        "[drills]\ncommands_dir = {}\n",
        toml::Value::String(examples.display().to_string())
    ));
    let primary = pair.primary().endpoint();
    let plan_text = |rpo: &str| {
        format!(
            "{PLAN}rpo = \"{rpo}\"\n[database]\n\
             lag = [\"pg-lag\", \"--host\", \"{host}\", \"--port\", \"{port}\"]\n\
             stop_writes = [\"pg-stop-writes\", \"--host\", \"{host}\", \"--port\", \"{port}\"]\n\
             promote = [\"pg-promote\", \"--port\", \"{replica}\"]\n",
            host = primary.host,
            port = primary.port,
            replica = pair.replica().endpoint().port,
        )
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(dir.path(), "dr.toml", &plan_text("0s"));
    let plan_arg = plan.to_str().expect("utf-8 path");
    pair.wait_caught_up(std::time::Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = web
        .fleet
        .cli(&["drill", "plan", "-f", plan_arg])
        .expect_success();
    for want in [
        "replication_lag",
        "caught up (0 bytes behind)",
        "at most 0s (the RPO)",
        "commands",
        "3 of 3 installed",
        "every pre-check passed",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{out}");
    }

    // Replay paused on the replica and rows written: it falls behind, and
    // an RPO of 0 refuses it, with the bytes.
    (pair.replica().query("SELECT pg_wal_replay_pause()")).unwrap_or_else(|e| panic!("{e}"));
    pair.primary()
        .query("CREATE TABLE drill_lag AS SELECT g AS n, repeat('x', 100) AS pad FROM generate_series(1, 20000) g")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = web.fleet.cli(&["drill", "plan", "-f", plan_arg]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains("replication_lag   FAILED")
            && out.stdout.contains("the replica is ")
            && out.stdout.contains("behind, past the RPO"),
        "{out}"
    );
    (pair.replica().query("SELECT pg_wal_replay_resume()")).unwrap_or_else(|e| panic!("{e}"));
    // A replica that does not stream at all: not measured, and why.
    pair.pause_replication().unwrap_or_else(|e| panic!("{e}"));
    let relaxed = write(dir.path(), "relaxed.toml", &plan_text("5s"));
    let out = web
        .fleet
        .cli(&["drill", "plan", "-f", relaxed.to_str().expect("utf-8")]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains("not measured")
            && out.stdout.contains("the lag command failed: exit 1")
            && out.stdout.contains("no replica is streaming"),
        "{out}"
    );
    pair.resume_replication().unwrap_or_else(|e| panic!("{e}"));
}
