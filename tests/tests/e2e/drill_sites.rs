//! The two-site fleet the disaster-recovery drills run on (issue 13): a
//! primary and a DR site, each a network namespace with its hosts, its
//! coordinator and its database node, behind one HAProxy where the DR
//! site waits at weight 0 (`drover_tests::harness::sites`).

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use drover_tests::harness::sites::{Site, TwoSites};
use drover_tests::{ServerState, WAIT, http_get};

/// The network namespace `pid` runs in (the inode of its ns file).
fn netns_of_pid(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/ns/net");
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .ino()
}

fn netns_named(name: &str) -> u64 {
    let path = format!("/run/netns/{name}");
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .ino()
}

#[test]
fn a_two_site_fleet_serves_from_the_primary_with_dr_on_standby_and_passes_the_plan() {
    let sites = TwoSites::builder().start();
    let all: Vec<String> = sites.hosts.iter().map(|h| h.id.clone()).collect();

    // c1 (primary site) leads, c2 (DR site) stands by; every host is
    // connected to the leader with its site's label.
    assert_eq!(
        sites.leader(),
        Some(Site::Primary),
        "{}",
        sites.diagnostics()
    );
    assert_eq!(sites.coordinator(Site::Dr).role(), "standby");
    let hosts = sites.wait_connected(&all, WAIT);
    for h in &sites.hosts {
        let view = (hosts.iter().find(|v| v.host_id == h.id))
            .unwrap_or_else(|| panic!("{} not listed", h.id));
        assert_eq!(
            view.labels.get("site").map(String::as_str),
            Some(h.site.label()),
            "{view:?}"
        );
    }
    assert_eq!(sites.ids_on(Site::Primary), ["h1", "h2"]);
    assert_eq!(sites.ids_on(Site::Dr), ["h3", "h4"]);
    // v1 runs on all four, each answering at its site's address.
    for id in &all {
        assert_eq!(sites.instance_version(id).as_deref(), Ok("v1"), "{id}");
    }

    // Each site's processes run in its namespace: coordinator, agents and
    // their instances.
    for site in [Site::Primary, Site::Dr] {
        let ns = netns_named(sites.ns(site).name());
        let c = sites.coordinator(site);
        assert_eq!(
            netns_of_pid(c.pid().expect("coordinator pid")),
            ns,
            "{} is not in the {site} namespace",
            c.spec.name
        );
        for id in sites.ids_on(site) {
            let agent = sites.fleet.agent(&id);
            assert_eq!(netns_of_pid(agent.pid().expect("agent pid")), ns, "{id}");
            let instance = agent.instance_pid("web").expect("instance pid");
            assert_eq!(netns_of_pid(instance), ns, "web@{id}");
        }
    }

    // HAProxy sends the traffic to the primary only: the DR site's servers
    // are up, at weight 0, and answer no request.
    for s in sites.servers() {
        let site = sites.host(&s.server).site;
        assert_eq!(s.state, ServerState::Up, "{s:?}");
        let want = if site == Site::Dr { Some(0) } else { Some(1) };
        assert_eq!(s.weight, want, "{s:?}");
    }
    let before = sites.requests_by_server();
    let sites_before = sites.requests_by_site();
    let frontend = sites.haproxy.frontend_addr();
    let sent = 100;
    for i in 0..sent {
        match http_get(&frontend, "/") {
            Ok((200, body)) => assert_eq!(body.trim(), "drover-sample v1", "request {i}"),
            other => panic!(
                "request {i} through HAProxy: {other:?}\n{}",
                sites.diagnostics()
            ),
        }
    }
    let after = sites.requests_by_server();
    let served = |id: &str| after[id] - before.get(id).copied().unwrap_or(0);
    for id in sites.ids_on(Site::Dr) {
        assert_eq!(served(&id), 0, "{id} on DR answered requests: {after:?}");
    }
    for id in sites.ids_on(Site::Primary) {
        assert!(served(&id) > 0, "{id} answered none: {after:?}");
    }
    let primary_total: u64 = sites
        .ids_on(Site::Primary)
        .iter()
        .map(|id| served(id))
        .sum();
    assert_eq!(primary_total, sent, "{before:?} -> {after:?}");
    let sites_after = sites.requests_by_site();
    assert_eq!(sites_after[&Site::Dr], sites_before[&Site::Dr]);
    assert_eq!(
        sites_after[&Site::Primary] - sites_before[&Site::Primary],
        sent
    );

    // The database pair streams from the primary site to the DR site.
    let pg = &sites.pg;
    pg.wait_streaming(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", pg.describe(20)));
    assert_eq!(pg.primary().listen(), sites.primary.ns_ip());
    assert_eq!(pg.replica().listen(), sites.dr.ns_ip());
    pg.wait_caught_up(WAIT).unwrap_or_else(|e| panic!("{e}"));

    // The example plan, aimed at this fleet, passes every pre-check; its
    // lag comes from pg-lag run by c1 in the primary namespace.
    let plan = sites.plan_toml("5s", "");
    let out = sites.drill_plan(&plan, &[]);
    assert!(out.success(), "{out}\n{}", sites.diagnostics());
    for want in [
        "site=primary -> site=dr",
        "2 of 2 ready on site=dr = 100% of the primary's peak of 2 serving",
        "site=primary: v1 on 2; site=dr: v1 on 2",
        "4 of 4 instances registered with a load balancer; 0 of 2 on site=dr take traffic now",
        "replication_lag",
        "8 of 8 installed",
        "every pre-check passed",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{out}");
    }
    let json = sites.drill_plan(&plan, &["-o", "json"]).expect_success();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["passed"], true, "{json}");
    let lag = (v["checks"].as_array().into_iter().flatten())
        .find(|c| c["name"] == "replication_lag")
        .unwrap_or_else(|| panic!("no replication_lag check: {json}"));
    assert_eq!(lag["passed"], true, "{json}");
}

#[test]
fn cutting_the_primary_site_leaves_dr_a_control_plane_and_restoring_brings_it_back() {
    let mut sites = TwoSites::builder().start();
    let ttl = sites.lease_ttl;
    let plan = sites.plan_toml("5s", "");
    sites
        .pg
        .wait_caught_up(WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    sites.drill_plan(&plan, &[]).expect_success();

    // The primary site drops off the network: c1 cannot renew its lease,
    // stops itself, and c2 on the DR site takes over.
    sites.cut_primary_site();
    let took = sites.wait_leader(Site::Dr, ttl + Duration::from_secs(15));
    assert!(
        took <= ttl + Duration::from_secs(2),
        "c2 led {took:?} after the cut, want at most the lease ({ttl:?}) + 2 s\n{}",
        sites.diagnostics()
    );
    assert!(
        !sites.coordinator(Site::Primary).is_running(),
        "c1 still runs, cut off\n{}",
        sites.diagnostics()
    );

    // The DR site's agents follow c2 and stay connected to it.
    let dr = sites.ids_on(Site::Dr);
    sites.wait(Duration::from_secs(30), "the DR agents follow c2", || {
        dr.iter().all(|h| sites.agent_follows(h, Site::Dr))
    });
    sites.wait_connected(&dr, Duration::from_secs(30));

    // HAProxy (in the test's namespace) loses the primary's servers; the
    // DR site's stay up, still at weight 0.
    let down = Instant::now();
    sites.wait_servers(Site::Primary, "are DOWN", Duration::from_secs(20), |s| {
        s.state == ServerState::Down
    });
    eprintln!(
        "c2 led {took:?} after the cut; HAProxy had the primary DOWN {:?} later",
        down.elapsed()
    );
    for s in sites.servers() {
        if sites.host(&s.server).site == Site::Dr {
            assert!(s.state == ServerState::Up && s.weight == Some(0), "{s:?}");
        }
    }

    // The plan no longer passes, from the DR site: the lag command cannot
    // reach the primary's database.
    let out = sites.drill_plan(&plan, &[]);
    assert_eq!(out.code, Some(1), "{out}\n{}", sites.diagnostics());
    eprintln!("drill plan with the primary site cut off:\n{}", out.stdout);
    let primary_db = sites.db_addr(Site::Primary);
    for want in [
        "not measured",
        "the lag command failed",
        primary_db.as_str(),
        "a drill would be refused",
    ] {
        assert!(out.stdout.contains(want), "no {want:?} in:\n{out}");
    }

    // The link back: HAProxy has the primary's servers again, c1 returns
    // as a standby, every agent is connected to the leader (c2) and the
    // replica streams from the primary again.
    let restored = Instant::now();
    sites.restore_primary_site();
    sites.wait_servers(Site::Primary, "are back UP", Duration::from_secs(20), |s| {
        s.serving()
    });
    assert_eq!(sites.coordinator(Site::Primary).role(), "standby");
    assert_eq!(sites.leader(), Some(Site::Dr));
    let all: Vec<String> = sites.hosts.iter().map(|h| h.id.clone()).collect();
    sites.wait_connected(&all, Duration::from_secs(40));
    let reconnected = restored.elapsed();
    sites
        .pg
        .wait_streaming(WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", sites.pg.describe(20)));
    eprintln!(
        "restored: every agent connected after {reconnected:?}, the replica streaming after {:?}",
        restored.elapsed()
    );
}

/// Done-when 2: the primary site is cut off (its hosts, its coordinator
/// and its database drop off the network while their processes run); the
/// coordinator on the DR site takes over, and an ungraceful drill run
/// against it moves the traffic to DR and promotes the DR database. The
/// report shows the recovery time; HAProxy serves every request from DR
/// afterwards.
#[test]
fn an_ungraceful_drill_with_the_primary_site_cut_off_recovers_on_dr() {
    use drover_testkit::postgres::WriterOptions;
    use drover_tests::LoadSpec;

    let mut sites = TwoSites::builder().start();
    let ttl = sites.lease_ttl;
    let plan = sites.plan_toml("5s", "[verify]\nhold = \"3s\"\ntimeout = \"60s\"\n");
    let load = sites.start_load(LoadSpec {
        max_requests: 100_000,
        max_duration: Duration::from_secs(150),
        ..LoadSpec::default()
    });
    let writer = sites.writer(WriterOptions::default());
    writer
        .wait_acknowledged(50, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    // The replica falls behind before the disaster (its stream stops),
    // so the primary takes writes the DR site never gets: a real loss
    // the report's window must cover.
    sites
        .pg
        .pause_replication()
        .unwrap_or_else(|e| panic!("{e}"));
    let unreplicated = writer.acknowledged() + 100;
    writer
        .wait_acknowledged(unreplicated, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));

    sites.cut_primary_site();
    let cut = Instant::now();
    sites.wait_leader(Site::Dr, ttl + Duration::from_secs(15));
    let dr = sites.ids_on(Site::Dr);
    sites.wait(Duration::from_secs(30), "the DR agents follow c2", || {
        dr.iter().all(|h| sites.agent_follows(h, Site::Dr))
    });
    sites.wait_connected(&dr, Duration::from_secs(30));
    // The emergency: no approval, nothing waits for the primary.
    let plan_arg = plan.to_str().expect("utf-8 path");
    let out = sites
        .cli()
        .run(&["drill", "run", "-f", plan_arg, "--ungraceful", "--yes"]);
    let report = sites.cli().run(&["drill", "report", "dr-1", "-o", "json"]);
    assert!(out.success(), "{out}\n{report}\n{}", sites.diagnostics());
    let outage = cut.elapsed();
    let r: serde_json::Value = serde_json::from_str(&report.stdout).expect("report json");
    assert_eq!(r["phase"], "succeeded", "{r:#}");
    assert_eq!(r["mode"], "ungraceful", "{r:#}");
    assert!(r["approved_by"].is_null(), "{r:#}");
    let recovery = r["recovery_ms"].as_i64().expect("recovery measured");
    let steps = r["steps"].as_array().expect("steps");
    let state = |name: &str| {
        (steps.iter())
            .find(|s| s["name"] == name)
            .map(|s| s["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    assert_eq!(state("stop_writes"), "skipped", "{r:#}");
    assert_eq!(state("promote"), "done", "{r:#}");
    // The DR database took the writes: the promoted replica accepts them.
    sites.pg.promote().unwrap_or_else(|e| panic!("{e}"));
    writer.retarget(sites.pg.primary().endpoint());
    let more = writer.acknowledged() + 20;
    writer
        .wait_acknowledged(more, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("writes on the promoted DR database: {e}"));
    let loss = (writer.stop())
        .lost_after_promotion(sites.pg.primary())
        .unwrap_or_else(|e| panic!("{e}"));
    // Done-when 2's data-loss window: measured on the DR replica (the
    // primary could not be asked), it holds every acknowledged write that
    // was really lost.
    let window = &r["data_loss"];
    assert_eq!(window["measured_on"], "replica", "{r:#}");
    assert_eq!(window["until"], "run_started", "{r:#}");
    let at = |key: &str| -> std::time::SystemTime {
        let ms = window[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} in {r:#}"));
        std::time::UNIX_EPOCH + Duration::from_millis(ms)
    };
    let (from, to) = (at("from_ms"), at("to_ms"));
    assert!(
        !loss.lost.is_empty(),
        "the paused stream lost writes: {loss:?}"
    );
    let (first, last) = (
        loss.first_lost_at.expect("first lost"),
        loss.last_lost_at.expect("last lost"),
    );
    assert!(
        from <= first && last <= to,
        "the window {from:?}..{to:?} does not hold the lost writes {first:?}..{last:?}\n{r:#}"
    );
    let md = sites.cli().run(&["drill", "report", "dr-1", "-o", "md"]);
    assert!(
        md.stdout
            .contains("the last transaction the DR replica replayed"),
        "{}",
        md.stdout
    );
    // From now on every request is served, by DR.
    let (_, _, failed_before) = load.counts();
    let by_site = sites.requests_by_site();
    let (_, ok_now, _) = load.counts();
    sites.wait(WAIT, "more requests flow", || {
        load.counts().1 >= ok_now + 200
    });
    let (_, _, failed_after) = load.counts();
    let later = sites.requests_by_site();
    let report_load = load.stop();
    assert_eq!(
        failed_after, failed_before,
        "requests failed after the switch\n{report_load}"
    );
    assert_eq!(
        later.get(&Site::Primary),
        by_site.get(&Site::Primary),
        "the cut-off primary still got requests"
    );
    assert!(
        later.get(&Site::Dr) > by_site.get(&Site::Dr),
        "DR served nothing"
    );
    eprintln!(
        "ungraceful drill: recovery {recovery} ms (switch start to DR serving), outage {outage:?} from the cut to the drill's end; writes: {} acknowledged, {} lost over {:?}; window reported {}; load: {report_load}",
        loss.acknowledged,
        loss.lost.len(),
        loss.window(),
        r["data_loss"]
    );
}

/// Done-when 1 and 3 on the two sites: a graceful drill moves all traffic
/// to DR with no failed request and no acknowledged write lost (RPO 0),
/// and the fail-back returns the traffic and the database roles to the
/// primary, again with no failed request and nothing lost.
#[test]
fn a_graceful_drill_and_its_fail_back_fail_no_request_and_lose_no_write() {
    use drover_testkit::postgres::WriterOptions;
    use drover_tests::LoadSpec;

    let mut sites = TwoSites::builder().start();
    let plan = sites.plan_toml(
        "0s",
        "[approval]\nrequired = false\n[verify]\nhold = \"3s\"\ntimeout = \"60s\"\n",
    );
    let plan_arg = plan.to_str().expect("utf-8 path").to_string();
    sites
        .pg
        .wait_caught_up(WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let load = sites.start_load(LoadSpec {
        max_requests: 150_000,
        max_duration: Duration::from_secs(200),
        ..LoadSpec::default()
    });
    let writer = sites.writer(WriterOptions {
        max_duration: Duration::from_secs(200),
        ..WriterOptions::default()
    });
    writer
        .wait_acknowledged(50, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));

    // To DR.
    let out = sites.cli().run(&["drill", "run", "-f", &plan_arg, "--yes"]);
    assert!(out.success(), "{out}\n{}", sites.diagnostics());
    sites.pg.promote().unwrap_or_else(|e| panic!("{e}"));
    writer.retarget(sites.pg.primary().endpoint());
    let acked = writer.acknowledged();
    writer
        .wait_acknowledged(acked + 20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("writes on the DR database: {e}"));
    let on_dr = sites.requests_by_site();
    let ok = load.counts().1;
    sites.wait(WAIT, "requests flow to DR", || load.counts().1 >= ok + 200);
    let later = sites.requests_by_site();
    assert_eq!(
        later.get(&Site::Primary),
        on_dr.get(&Site::Primary),
        "the primary still serves"
    );
    assert!(
        later.get(&Site::Dr) > on_dr.get(&Site::Dr),
        "DR serves nothing"
    );

    // Back: the old primary's database rejoins as a replica of DR, then
    // `drover failback` runs the plan the other way.
    sites
        .pg
        .rejoin_old_primary_as_replica()
        .unwrap_or_else(|e| panic!("{e}\n{}", sites.pg.describe(40)));
    // Streaming again; with the writer still writing it is never exactly
    // 0 bytes behind, and need not be: the fail-back stops the writes and
    // waits for it to catch up.
    sites
        .pg
        .wait_streaming(WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = sites.cli().run(&["failback", "-f", &plan_arg, "--yes"]);
    let report = sites.cli().run(&["drill", "report", "dr-2", "-o", "json"]);
    assert!(out.success(), "{out}\n{report}\n{}", sites.diagnostics());
    let r: serde_json::Value = serde_json::from_str(&report.stdout).expect("report json");
    assert_eq!(r["kind"], "failback", "{r:#}");
    assert_eq!(r["to"], "site=primary", "{r:#}");
    sites.pg.promote().unwrap_or_else(|e| panic!("{e}"));
    writer.retarget(sites.pg.primary().endpoint());
    let acked = writer.acknowledged();
    writer
        .wait_acknowledged(acked + 20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("writes on the primary database again: {e}"));
    let log = writer.stop();
    let loss = log
        .lost_after_promotion(sites.pg.primary())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(loss.lost.is_empty(), "acknowledged writes lost: {loss:?}");
    // Every weight is the configured one again: the primary serves, DR waits.
    let back = sites.requests_by_site();
    let ok = load.counts().1;
    sites.wait(WAIT, "requests flow to the primary", || {
        load.counts().1 >= ok + 200
    });
    let last = sites.requests_by_site();
    let report_load = load.stop();
    assert_eq!(report_load.failed, 0, "{report_load}");
    assert_eq!(
        last.get(&Site::Dr),
        back.get(&Site::Dr),
        "DR still serves after the fail-back"
    );
    assert!(
        last.get(&Site::Primary) > back.get(&Site::Primary),
        "the primary serves nothing"
    );
    // The drill's report carries its fail-back's timeline.
    let drill = sites.cli().run(&["drill", "report", "dr-1", "-o", "json"]);
    let d: serde_json::Value = serde_json::from_str(&drill.stdout).expect("report json");
    assert_eq!(d["fail_back"]["id"], "dr-2", "{d:#}");
    assert_eq!(d["fail_back"]["phase"], "succeeded", "{d:#}");
    let md = sites.cli().run(&["drill", "report", "dr-1"]);
    assert!(
        md.stdout.contains("## Fail-back")
            && md
                .stdout
                .contains("dr-2 (succeeded), site=dr → site=primary"),
        "{}",
        md.stdout
    );
    // Each switch's own count of what HAProxy served: none failed.
    for r in [&d, &r] {
        let t = &r["traffic"];
        assert_eq!(t["failed"], 0, "{r:#}");
        assert!(t["requests"].as_u64().is_some_and(|n| n > 0), "{r:#}");
        assert!(t["lowest_serving"].as_u64() >= t["floor"].as_u64(), "{r:#}");
    }
    eprintln!(
        "drill and fail-back: {} writes acknowledged, none lost; {report_load}; drill traffic {}, fail-back traffic {}",
        loss.acknowledged, d["traffic"], r["traffic"]
    );
}
