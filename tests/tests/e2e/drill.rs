//! Disaster-recovery plans (issue 13): `drover drill plan` checks a DR
//! plan against a two-site fleet behind HAProxy (hosts labelled
//! `site=primary` and `site=dr`) and refuses an under-provisioned DR site
//! with the numbers.

use std::path::{Path, PathBuf};

use drover_tests::{WAIT, WebFleet};

/// A two-site fleet: h1, h2 on the primary, h3, h4 on DR, all on v1.
fn two_sites(extra_coordinator_toml: &str) -> WebFleet {
    two_sites_with(extra_coordinator_toml, |b| b)
}

fn two_sites_with(
    extra_coordinator_toml: &str,
    f: impl FnOnce(drover_tests::WebFleetBuilder) -> drover_tests::WebFleetBuilder,
) -> WebFleet {
    let extra = extra_coordinator_toml.to_string();
    let builder = WebFleet::builder()
        .host("h1", &[("site", "primary")])
        .host("h2", &[("site", "primary")])
        .host("h3", &[("site", "dr")])
        .host("h4", &[("site", "dr")]);
    let web = f(builder)
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

/// The DR site waits at weight 0: registered, healthy, taking nothing.
fn dr_on_standby(web: &WebFleet) {
    for h in ["h3", "h4"] {
        web.haproxy
            .command(&format!("set server web/{h} weight 0"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Steady load through HAProxy, bounded.
fn bounded_load(web: &WebFleet) -> drover_tests::Load {
    web.start_load(drover_tests::LoadSpec {
        max_requests: 60_000,
        max_duration: std::time::Duration::from_secs(120),
        ..drover_tests::LoadSpec::default()
    })
}

/// `drover drill run -f PLAN --yes --detach` as the operator.
fn start_drill(web: &WebFleet, plan: &Path) {
    let plan = plan.to_str().expect("utf-8 path");
    web.fleet
        .cli(&["drill", "run", "-f", plan, "--yes", "--detach"])
        .expect_success();
}

/// `drover drill plan -f PLAN [ARGS]` as the operator.
fn drill_plan(web: &WebFleet, plan: &Path, args: &[&str]) -> drover_tests::CmdOutput {
    let mut all = vec!["drill", "plan", "-f", plan.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    web.fleet.cli(&all)
}

const PLAN: &str = "service = \"web\"\nversion = \"7\"\nrto = \"5m\"\n";

#[test]
fn drill_plan_checks_the_dr_site_and_refuses_one_too_small_with_the_numbers() {
    let mut web = two_sites("");
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(dir.path(), "dr.toml", PLAN);
    let plan_arg = plan.to_str().expect("utf-8 path");

    let out = drill_plan(&web, &plan, &[]).expect_success();
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
    let json = drill_plan(&web, &plan, &["-o", "json"]).expect_success();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["passed"], true, "{json}");
    assert_eq!(v["checks"][0]["name"], "capacity", "{json}");
    assert_eq!(v["plan_digest"].as_str().map(str::len), Some(64), "{json}");

    // Half the DR site goes: 1 of 2 ready is 50% of the primary's peak.
    web.fleet.agent_mut("h4").kill();
    web.fleet.wait_status("h4", "lost", WAIT);
    let out = drill_plan(&web, &plan, &[]);
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
    // And `drill run` is refused the same way, with the numbers; nothing
    // starts.
    let out = web
        .fleet
        .cli(&["drill", "run", "-f", plan_arg, "--yes", "--detach"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains("refused: pre-checks failed: capacity: 1 of 2 ready on site=dr")
            && out.stderr.contains("--force REASON"),
        "{out}"
    );
    let list = web.fleet.cli(&["drill", "list"]).expect_success();
    assert!(
        !list.stdout.contains("dr-"),
        "a refused drill was recorded:\n{list}"
    );

    // A plan asking for more than the DR site has: refused with numbers.
    let big = write(
        dir.path(),
        "big.toml",
        &format!("{PLAN}[checks]\ncapacity = \"150%\"\n"),
    );
    let out = drill_plan(&web, &big, &[]);
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
    let out = drill_plan(&web, &bad, &[]);
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
    let out = drill_plan(&web, &path_cmd, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("must be a bare name"), "{out}");

    // Commands, but no commands_dir on this coordinator: the check says so.
    let db = write(
        dir.path(),
        "db.toml",
        "service = \"web\"\nrpo = \"5s\"\n[database]\nlag = [\"pg-lag\"]\npromote = [\"pg-promote\"]\n",
    );
    let out = drill_plan(&web, &db, &[]);
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
    pair.wait_caught_up(std::time::Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = drill_plan(&web, &plan, &[]).expect_success();
    for want in [
        "replication_lag",
        "caught up (0 bytes behind)",
        "at most 1m behind, to catch up once writes stop (the RPO of 0s holds at the cutover)",
        "commands",
        "3 of 3 installed",
        "every pre-check passed",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{out}");
    }

    // Replay paused on the replica and rows written: it falls behind, and
    // for an ungraceful run an RPO of 0 refuses it, with the bytes.
    (pair.replica().query("SELECT pg_wal_replay_pause()")).unwrap_or_else(|e| panic!("{e}"));
    pair.primary()
        .query("CREATE TABLE drill_lag AS SELECT g AS n, repeat('x', 100) AS pad FROM generate_series(1, 20000) g")
        .unwrap_or_else(|e| panic!("{e}"));
    let out = drill_plan(&web, &plan, &["--ungraceful"]);
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
    let out = drill_plan(&web, &relaxed, &[]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains("not measured")
            && out.stdout.contains("the lag command failed: exit 1")
            && out.stdout.contains("no replica is streaming"),
        "{out}"
    );
    pair.resume_replication().unwrap_or_else(|e| panic!("{e}"));
}

/// What `drover drill report ID -o json` says.
fn report(web: &WebFleet, id: &str) -> serde_json::Value {
    let out = web
        .fleet
        .cli(&["drill", "report", id, "-o", "json"])
        .expect_success();
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("report json: {e}\n{out}"))
}

/// Done-when 1 (on loopback, one namespace): a graceful drill under load
/// through HAProxy moves every request to the DR site with none failed,
/// the database fully replicated at the cutover (RPO 0, and not one
/// acknowledged write missing on the promoted replica), and a report with
/// the measured recovery time.
#[test]
fn a_graceful_drill_moves_all_traffic_to_dr_with_no_failed_request_and_no_lost_write() {
    use drover_testkit::postgres::{PgPair, Writer, WriterOptions};
    use std::time::Duration;

    let mut pair = PgPair::start().unwrap_or_else(|e| panic!("start PostgreSQL: {e}"));
    pair.wait_streaming(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", pair.describe(40)));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/dr")
        .canonicalize()
        .expect("examples/dr");
    let web = two_sites(&format!(
        "[drills]\ncommands_dir = {}\n",
        toml::Value::String(examples.display().to_string())
    ));
    // The DR site waits at weight 0: registered, healthy, taking nothing.
    dr_on_standby(&web);
    let (a, b) = (pair.primary().endpoint(), pair.replica().endpoint());
    let plan_text = format!(
        "service = \"web\"\nversion = \"2026-12-05.1\"\nrto = \"5m\"\nrpo = \"0s\"\n\
         [database]\n\
         lag = [\"pg-lag\", \"--host\", \"{ah}\", \"--port\", \"{ap}\"]\n\
         stop_writes = [\"pg-stop-writes\", \"--host\", \"{ah}\", \"--port\", \"{ap}\"]\n\
         promote = [\"pg-promote\", \"--host\", \"{bh}\", \"--port\", \"{bp}\"]\n\
         timeout = \"30s\"\ncatch_up_timeout = \"30s\"\n\
         [verify]\nhold = \"3s\"\ntimeout = \"60s\"\n",
        ah = a.host,
        ap = a.port,
        bh = b.host,
        bp = b.port,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(dir.path(), "dr.toml", &plan_text);
    let plan_arg = plan.to_str().expect("utf-8 path");

    let load = bounded_load(&web);
    let writer = Writer::start(a.clone(), WriterOptions::default())
        .unwrap_or_else(|e| panic!("writer: {e}"));
    writer
        .wait_acknowledged(50, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    let before: std::collections::BTreeMap<String, u64> = (web.haproxy.servers().expect("stats"))
        .into_iter()
        .map(|s| (s.server.clone(), s.req_tot))
        .collect();

    let started = web
        .fleet
        .cli(&["drill", "run", "-f", plan_arg, "--yes", "--detach"])
        .expect_success();
    assert!(
        started.stdout.contains("dr-1 drill of web started"),
        "{started}"
    );
    // The plan asks for an approval, by someone else.
    let own = web.fleet.cli(&["drill", "approve", "dr-1"]);
    assert_eq!(own.code, Some(1), "{own}");
    assert!(own.stderr.contains("cannot approve it too"), "{own}");
    let bob = web.fleet.pki.issue("operator", "bob", &[], None);
    web.fleet
        .cli_as(Some(bob))
        .run(&["drill", "approve", "dr-1"])
        .expect_success();
    // Follow it to its end (exit 0 only if it succeeded).
    let watched = web.fleet.cli(&["drill", "watch", "dr-1"]);
    let r = report(&web, "dr-1");
    assert!(watched.success(), "{watched}\n{r:#}\n{}", web.diagnostics());
    // The new primary takes the writer's load; nothing acknowledged is lost.
    pair.promote().unwrap_or_else(|e| panic!("{e}"));
    writer.retarget(pair.primary().endpoint());
    writer
        .wait_acknowledged(writer.acknowledged() + 20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("writes on the new primary: {e}"));
    let log = writer.stop();
    let loss = log
        .lost_after_promotion(pair.primary())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(loss.lost.is_empty(), "lost writes: {loss:?}");
    // All traffic on DR: the primary's servers answer nothing more.
    let mid: std::collections::BTreeMap<String, u64> = (web.haproxy.servers().expect("stats"))
        .into_iter()
        .map(|s| (s.server.clone(), s.req_tot))
        .collect();
    let count_after = load.counts().1;
    web.fleet.wait(WAIT, "more requests flow", || {
        load.counts().1 >= count_after + 200
    });
    let report_load = load.stop();
    let end: std::collections::BTreeMap<String, u64> = (web.haproxy.servers().expect("stats"))
        .into_iter()
        .map(|s| (s.server.clone(), s.req_tot))
        .collect();
    assert_eq!(
        report_load.failed, 0,
        "failed requests during the drill\n{report_load}"
    );
    for h in ["h1", "h2"] {
        assert_eq!(
            end[h], mid[h],
            "{h} (primary) still got requests after the switch"
        );
    }
    for h in ["h3", "h4"] {
        assert!(end[h] > before[h], "{h} (DR) got no requests");
    }
    assert_eq!(r["phase"], "succeeded", "{r:#}");
    assert_eq!(r["approved_by"], "bob", "{r:#}");
    assert_eq!(r["data_loss"]["bytes"], 0, "{r:#}");
    // The report's own count, by HAProxy's counters: requests served on
    // both sites during the switch, none failed, capacity held.
    let t = &r["traffic"];
    assert_eq!(t["failed"], 0, "{r:#}");
    assert!(
        t["target"]["requests"].as_u64().is_some_and(|n| n > 0),
        "{r:#}"
    );
    assert_eq!(t["serving_before"], 2, "{r:#}");
    assert_eq!(t["floor"], 2, "{r:#}");
    assert!(t["lowest_serving"].as_u64() >= Some(2), "{r:#}");
    let recovery = r["recovery_ms"].as_i64().expect("recovery measured");
    // The age of the last good drill is on /metrics.
    web.fleet.wait(WAIT, "the drill's metrics", || {
        let metrics = web.fleet.coordinator.metrics();
        metrics.contains("drover_drill_last_success_timestamp_seconds{service=\"web\"}")
            && metrics.contains("drover_drills_ended_total{kind=\"drill\",outcome=\"succeeded\"} 1")
    });
    assert!(recovery > 0, "{r:#}");
    let md = web.fleet.cli(&["drill", "report", "dr-1"]).expect_success();
    for want in [
        "# DR drill dr-1: web (succeeded)",
        "| Recovery time | **",
        "against an RTO of 300.0 s: met",
        "| Data-loss window | none: the replica was 0 bytes behind at cutover",
        "| Requests during the switch | ",
        "against a floor of 2 (2 served before the switch): held",
        "## Pre-checks",
        "## Timeline",
        "| promote | done |",
        "## Findings",
    ] {
        assert!(
            md.stdout.contains(want),
            "no {want:?} in the report:\n{}",
            md.stdout
        );
    }
    eprintln!("{}", md.stdout);
    eprintln!("recovery time {recovery} ms; {report_load}");
}

/// Done-when 5: a step that times out stops the drill with the reason,
/// traffic stays where it was moved, and `drover drill abort` moves it
/// back, with no failed request.
#[test]
fn a_step_that_times_out_stops_the_drill_and_abort_moves_traffic_back() {
    use drover_tests::harness::process::signal;
    use std::time::Duration;

    let web = two_sites("");
    dr_on_standby(&web);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(
        dir.path(),
        "dr.toml",
        &format!(
            "{PLAN}[approval]\nrequired = false\n[verify]\nhold = \"10s\"\ntimeout = \"15s\"\n"
        ),
    );
    let load = bounded_load(&web);
    start_drill(&web, &plan);
    // Traffic moved; while it is being verified, a DR host freezes (its
    // agent stops answering), so the DR site is never seen whole.
    web.fleet.wait(WAIT, "dr-1 verifies the DR site", || {
        report(&web, "dr-1")["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "verify" && s["state"] == "running")
        })
    });
    let h4 = web.fleet.agent("h4").pid().expect("h4 runs") as i32;
    signal(h4, libc::SIGSTOP);
    web.fleet
        .wait(Duration::from_secs(60), "dr-1 fails at verify", || {
            report(&web, "dr-1")["phase"] == "failed"
        });
    let r = report(&web, "dr-1");
    assert!(
        r["reason"].as_str().is_some_and(|s| s
            .starts_with("verify: the site=dr site was not seen serving whole for 10s within 15s")),
        "{r:#}"
    );
    let servers = web.haproxy.servers().expect("stats");
    let weight = |h: &str| {
        servers
            .iter()
            .find(|s| s.server == h)
            .and_then(|s| s.weight)
    };
    assert_eq!(
        weight("h1"),
        Some(0),
        "the primary kept its traffic:\n{servers:?}"
    );
    // Abort: the primary takes the traffic back; the frozen DR host is
    // left to HAProxy's checks.
    let out = web.fleet.cli(&["drill", "abort", "dr-1"]).expect_success();
    assert!(
        out.stdout
            .contains("traffic is moving back to site=primary"),
        "{out}"
    );
    web.fleet.wait(WAIT, "dr-1 is aborted", || {
        report(&web, "dr-1")["phase"] == "aborted"
    });
    let servers = web.haproxy.servers().expect("stats");
    for h in ["h1", "h2"] {
        let s = servers.iter().find(|s| s.server == h).expect("server");
        assert!(s.serving(), "{h} does not serve after the abort: {s:?}");
    }
    let r = report(&web, "dr-1");
    assert!(
        (r["events"].as_array().expect("events").iter()).any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.contains("not connected, left to HAProxy's checks: web@h4"))),
        "{r:#}"
    );
    signal(h4, libc::SIGCONT);
    let report_load = load.stop();
    assert_eq!(report_load.failed, 0, "{report_load}");
    let md = web.fleet.cli(&["drill", "report", "dr-1"]).expect_success();
    assert!(
        md.stdout.contains("# DR drill dr-1: web (aborted)")
            && md.stdout.contains("- Step verify failed"),
        "{}",
        md.stdout
    );
}

/// A drill is persisted step by step: when its coordinator dies while it
/// waits for the approval, the standby takes over, resumes it from etcd,
/// and the approval given to the new leader carries it to the end.
#[test]
fn a_drill_resumes_on_the_new_leader_when_its_coordinator_dies() {
    use drover_tests::harness::etcd::EtcdCluster;
    use std::time::Duration;

    let etcd = EtcdCluster::start(3);
    let mut web = two_sites_with("", |b| b.ha(&etcd));
    dr_on_standby(&web);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(
        dir.path(),
        "dr.toml",
        &format!("{PLAN}[verify]\nhold = \"2s\"\ntimeout = \"60s\"\n"),
    );
    let load = bounded_load(&web);
    start_drill(&web, &plan);
    assert_eq!(report(&web, "dr-1")["phase"], "awaiting_approval");
    // The leader dies; c2 takes over and resumes the drill from etcd.
    web.fleet.coordinator.kill();
    let c2 = &web.fleet.standbys[0];
    web.fleet.wait(Duration::from_secs(20), "c2 leads", || {
        c2.role() == "leader"
    });
    let bob = web.fleet.pki.issue("operator", "bob", &[], None);
    web.fleet
        .cli_as(Some(bob))
        .run(&["drill", "approve", "dr-1"])
        .expect_success();
    let watched = web.fleet.cli(&["drill", "watch", "dr-1"]);
    let r = report(&web, "dr-1");
    assert!(watched.success(), "{watched}\n{r:#}\n{}", web.diagnostics());
    assert_eq!(r["phase"], "succeeded", "{r:#}");
    assert!(
        (r["events"].as_array().expect("events").iter()).any(|e| e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("resumed by this coordinator"))),
        "{r:#}"
    );
    let report_load = load.stop();
    assert_eq!(report_load.failed, 0, "{report_load}");
}

/// `drill plans -o json` as the operator: the kept plans.
fn kept_plans(web: &WebFleet) -> Vec<serde_json::Value> {
    let out = web.fleet.cli(&["drill", "plans", "-o", "json"]);
    serde_json::from_str::<Vec<serde_json::Value>>(&out.stdout)
        .unwrap_or_else(|e| panic!("drill plans -o json: {e}\n{out}"))
}

/// Whether the kept plan of `web` last failed `check`.
fn kept_check_fails(web: &WebFleet, check: &str) -> bool {
    kept_plans(web).first().is_some_and(|k| {
        (k["last"]["checks"].as_array().into_iter().flatten())
            .any(|c| c["name"] == check && c["passed"] == false)
    })
}

/// A plan kept with `--keep` is checked again on its schedule: when the DR
/// site shrinks, the leader warns (log, /metrics, `drill plans` exits 1),
/// and says so again when it is whole; the kept plan survives a restart.
/// A drill forced past the failed check records the reason in its report.
#[test]
fn a_kept_plan_is_checked_on_its_schedule_and_warns_when_the_dr_site_shrinks() {
    let mut web = two_sites("");
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(
        dir.path(),
        "dr.toml",
        &format!("{PLAN}[checks]\nrecheck_every = \"1s\"\n"),
    );
    let plan_arg = plan.to_str().expect("utf-8 path");
    let out = drill_plan(&web, &plan, &["--keep"]).expect_success();
    assert!(
        out.stdout.contains("every pre-check passed")
            && out
                .stdout
                .contains("kept: the coordinator checks it again every 1s"),
        "{out}"
    );
    let kept = kept_plans(&web);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["service"], "web");
    assert_eq!(kept[0]["every_ms"], 1000);
    assert_eq!(kept[0]["last"]["passed"], true, "{kept:?}");
    assert!(kept[0]["failing_since"].is_null(), "{kept:?}");

    // Half the DR site goes: nobody asks, the schedule notices.
    web.fleet.agent_mut("h4").kill();
    web.fleet.wait_status("h4", "lost", WAIT);
    web.fleet
        .wait(WAIT, "the kept plan's capacity check fails", || {
            kept_check_fails(&web, "capacity")
        });
    let kept = kept_plans(&web);
    assert!(kept[0]["failing_since"].is_string(), "{kept:?}");
    let out = web.fleet.cli(&["drill", "plans"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stdout.contains("FAILING: capacity")
            && out
                .stderr
                .contains("kept DR plans fail pre-checks: web: capacity"),
        "{out}"
    );
    let log = web.fleet.coordinator.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("DR plan pre-check stopped passing")
                && l.contains("capacity")
                && l.contains("1 of 2 ready")),
        "no warning in the coordinator's log:\n{log}"
    );
    let metrics = web.fleet.coordinator.metrics();
    assert!(
        metrics.contains("drover_drill_plan_check_passing{service=\"web\",check=\"capacity\"} 0")
            && metrics
                .contains("drover_drill_plan_check_passing{service=\"web\",check=\"release\"} 1"),
        "{metrics}"
    );

    // An operator who knows better forces a drill past it: the reason is
    // in the report. Nothing moves before its approval; abort ends it.
    let reason = "game day: DR runs half size on purpose";
    web.fleet
        .cli(&[
            "drill", "run", "-f", plan_arg, "--yes", "--detach", "--force", reason,
        ])
        .expect_success();
    let r = report(&web, "dr-1");
    assert_eq!(r["forced_reason"], reason, "{r:#}");
    assert_eq!(r["phase"], "awaiting_approval", "{r:#}");
    let md = web.fleet.cli(&["drill", "report", "dr-1"]).expect_success();
    assert!(md.stdout.contains(reason), "{md}");
    web.fleet.cli(&["drill", "abort", "dr-1"]).expect_success();

    // Whole again: the next check passes and says so.
    web.fleet.agent_mut("h4").start();
    web.fleet.wait(WAIT, "the kept plan passes again", || {
        kept_plans(&web)
            .first()
            .is_some_and(|k| k["last"]["passed"] == true && k["failing_since"].is_null())
    });
    assert!(
        web.fleet
            .coordinator
            .log_text()
            .lines()
            .any(|l| l.contains("DR plan pre-check passes again") && l.contains("capacity")),
        "no recovery line in the coordinator's log"
    );

    // Kept across a coordinator restart, then forgotten.
    web.fleet.coordinator.restart();
    let kept = kept_plans(&web);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0]["service"], "web");
    web.fleet.cli(&["drill", "forget", "web"]).expect_success();
    assert!(kept_plans(&web).is_empty());
    assert!(
        !web.fleet
            .coordinator
            .metrics()
            .contains("drover_drill_plan_check_passing{service=\"web\""),
        "a forgotten plan's series stay"
    );
    let out = web.fleet.cli(&["drill", "forget", "web"]);
    assert_ne!(out.code, Some(0), "{out}");
    assert!(
        out.stderr
            .contains("no DR plan is kept for service \"web\""),
        "{out}"
    );
}

/// A DR host whose agent dies while the switch waits for its weight
/// command, and comes back: the command is sent again on its new session
/// and the drill finishes, with no failed request (the other DR host and
/// the primary serve meanwhile).
#[test]
fn a_dr_agent_that_restarts_mid_switch_gets_its_weight_command_again() {
    use drover_tests::harness::process::signal;

    let mut web = two_sites("");
    dr_on_standby(&web);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(
        dir.path(),
        "dr.toml",
        &format!("{PLAN}[approval]\nrequired = true\n[verify]\nhold = \"2s\"\ntimeout = \"60s\"\n"),
    );
    let load = bounded_load(&web);
    start_drill(&web, &plan);
    // h3's agent freezes with its session open: the switch's command to
    // raise it goes into a connection nobody reads...
    let h3 = web.fleet.agent("h3").pid().expect("h3 runs") as i32;
    signal(h3, libc::SIGSTOP);
    let bob = web.fleet.pki.issue("operator", "bob", &[], None);
    web.fleet
        .cli_as(Some(bob))
        .run(&["drill", "approve", "dr-1"])
        .expect_success();
    web.fleet.wait(WAIT, "dr-1 switches", || {
        report(&web, "dr-1")["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["name"] == "switch" && s["state"] == "running")
        })
    });
    // ...and dies there; a new agent process connects a new session.
    web.fleet.agent_mut("h3").kill();
    web.fleet.agent_mut("h3").start();
    web.fleet.wait(WAIT * 2, "dr-1 ends", || {
        let r = report(&web, "dr-1");
        r["phase"] == "succeeded" || r["phase"] == "failed"
    });
    let r = report(&web, "dr-1");
    assert_eq!(r["phase"], "succeeded", "{r:#}");
    let servers = web.haproxy.servers().expect("stats");
    for h in ["h3", "h4"] {
        let s = servers.iter().find(|s| s.server == h).expect("server");
        assert!(
            s.serving() && s.weight > Some(0),
            "{h} does not serve: {s:?}"
        );
    }
    let report_load = load.stop();
    assert_eq!(report_load.failed, 0, "{report_load}");
}

/// A DR site left on an older release is refused with the command that
/// brings it to the primary's, and that command works on a site waiting
/// at weight 0: afterwards the plan passes and DR still waits at 0.
#[test]
fn a_dr_site_on_another_release_is_refused_with_the_command_that_fixes_it() {
    let web = two_sites("");
    dr_on_standby(&web);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(dir.path(), "dr.toml", PLAN);
    web.push_release("v2", &[]);
    let out = web.start_rollout("v2", &["--selector", "site=primary", "--min-healthy", "1"]);
    assert!(out.success(), "{out}");
    let out = drill_plan(&web, &plan, &[]);
    assert_eq!(out.code, Some(1), "{out}");
    let advice =
        "`drover rollout start --service web --version v2 --selector site=dr --min-healthy 0`";
    assert!(
        out.stdout
            .contains("site=primary: v2 on 2; site=dr: v1 on 2")
            && out.stdout.contains(advice),
        "{out}"
    );
    // Do as it says.
    let out = web.start_rollout("v2", &["--selector", "site=dr", "--min-healthy", "0"]);
    assert!(out.success(), "{out}\n{}", web.diagnostics());
    drill_plan(&web, &plan, &[]).expect_success();
    let servers = web.haproxy.servers().expect("stats");
    for h in ["h3", "h4"] {
        let s = servers.iter().find(|s| s.server == h).expect("server");
        assert_eq!(s.weight, Some(0), "{h} left standby: {s:?}");
    }
}

/// Issue 14: a drill is one trace too. Its root (named after its kind)
/// holds a span per step, and the agents' weight commands sit under the
/// switch step's span, on the same trace.
#[test]
fn a_drill_is_one_trace_with_its_steps_and_the_agents_weight_commands() {
    use drover_testkit::otlp::{Collector, summary};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the collector");
    let collector = rt
        .block_on(Collector::start())
        .expect("start the OTLP collector");
    let tracing_toml = format!("[tracing]\notlp_endpoint = \"{}\"\n", collector.endpoint());
    let coordinator_toml = tracing_toml.clone();
    let web = two_sites_with("", |b| {
        b.coordinator(|c| {
            c.extra_toml.push_str(&coordinator_toml);
            c.env
                .push(("OTEL_BSP_SCHEDULE_DELAY".to_string(), "200".to_string()));
        })
        .instance_toml(&tracing_toml)
    });
    dr_on_standby(&web);
    let dir = tempfile::tempdir().expect("temp dir");
    let plan = write(
        dir.path(),
        "dr.toml",
        &format!(
            "{PLAN}[approval]\nrequired = false\n[verify]\nhold = \"1s\"\ntimeout = \"30s\"\n"
        ),
    );
    let plan_arg = plan.to_str().expect("utf-8 path");
    web.fleet
        .cli(&["drill", "run", "-f", plan_arg, "--yes"])
        .expect_success();

    // The root ends with the drill; the agents' weight spans come in their
    // own batches (every 5 s by default).
    let spans = rt.block_on(collector.wait_for(
        std::time::Duration::from_secs(60),
        "the drill's trace with the agents' weight commands",
        |s| {
            s.iter()
                .any(|s| s.name == "drill" && s.attr("drover.drill") == "dr-1")
                && s.iter()
                    .filter(|s| s.service == "drover-agent" && s.name == "set_weight")
                    .count()
                    >= 4
        },
    ));
    let root = (spans.iter())
        .find(|s| s.name == "drill" && s.attr("drover.drill") == "dr-1")
        .expect("the root");
    assert_eq!(root.parent_span_id, "", "{}", summary(&spans));
    assert_eq!(root.attr("drover.service"), "web");
    assert_eq!(
        root.attr("drover.outcome"),
        "succeeded",
        "{}",
        summary(&spans)
    );
    let trace: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let step = |name: &str| {
        (trace.iter())
            .find(|s| s.name == name && s.parent_span_id == root.span_id)
            .unwrap_or_else(|| panic!("no {name} step under the root\n{}", summary(&spans)))
    };
    let switch = step("switch");
    step("verify");
    assert_eq!(switch.attr("drover.outcome"), "succeeded");
    // Both sites' weights: DR up, then the primary down, each set by its
    // agent under the switch.
    let weights: Vec<_> = (trace.iter())
        .filter(|s| s.service == "drover-agent" && s.name == "set_weight")
        .collect();
    assert_eq!(weights.len(), 4, "{}", summary(&spans));
    for w in &weights {
        assert_eq!(w.parent_span_id, switch.span_id, "{}", summary(&spans));
    }
    let hosts: std::collections::BTreeSet<&str> =
        weights.iter().map(|w| w.attr("drover.host")).collect();
    assert_eq!(hosts, ["h1", "h2", "h3", "h4"].into_iter().collect());
}
