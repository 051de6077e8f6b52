//! Done-when 2: a killed agent is marked lost within the timeout and comes
//! back without re-enrolment; a killed instance is seen crashed and
//! restarted by its agent.

use std::time::{Duration, Instant};

use drover_tests::harness::process::alive;
use drover_tests::{AgentSpec, Fleet, WAIT};

const LOST_TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn killed_agent_is_lost_then_back_without_reenrolment() {
    let mut fleet = Fleet::builder()
        .lost_timeout("2s")
        .agent(AgentSpec::new("h1"))
        .agent(AgentSpec::new("h2"))
        .start();
    let cert_before = std::fs::read(fleet.agent("h1").tls().cert).expect("read h1's certificate");

    fleet.agent_mut("h1").kill();
    let killed = Instant::now();
    fleet.wait_status("h1", "lost", WAIT);
    let took = killed.elapsed();
    // Reports come every 500 ms, so the last one is at most that old when
    // the agent dies; allow the coordinator's check tick and a loaded CI on
    // top of the configured timeout.
    assert!(
        took <= LOST_TIMEOUT + Duration::from_secs(4),
        "h1 marked lost {took:?} after it was killed (lost_timeout {LOST_TIMEOUT:?})\n{}",
        fleet.diagnostics()
    );
    let h2 = fleet.host("h2").expect("h2 listed");
    assert!(h2.connected(), "h2 affected: {h2:#?}");
    fleet.wait(WAIT, "drover_agents_lost counts h1", || {
        let m = fleet.coordinator.try_metrics().ok()?;
        (drover_tests::metrics_sum(&m, "drover_agents_lost") >= 1.0).then_some(())
    });

    // Back with the same certificate, no new token.
    fleet.agent_mut("h1").start();
    let hosts = fleet.wait_healthy(&["h1", "h2"]);
    let cert_after = std::fs::read(fleet.agent("h1").tls().cert).expect("read h1's certificate");
    assert_eq!(
        cert_before, cert_after,
        "h1's certificate changed on restart"
    );
    let h1 = hosts.iter().find(|h| h.host_id == "h1").expect("h1 listed");
    assert_eq!(h1.status_reason, "", "{h1:#?}");
    fleet.wait(WAIT, "drover_agents_lost back to 0", || {
        let m = fleet.coordinator.try_metrics().ok()?;
        (drover_tests::metrics_sum(&m, "drover_agents_lost") == 0.0).then_some(())
    });
}

#[test]
fn agent_restart_leaves_its_instance_running() {
    let mut fleet = Fleet::builder().agents(1).start();
    let pid = fleet
        .agent("h1")
        .instance_pid("web")
        .expect("web's pidfile");
    fleet.agent_mut("h1").kill();
    assert!(alive(pid), "web (pid {pid}) died with its agent");
    fleet.agent_mut("h1").start();
    fleet.wait(WAIT, "h1 reconnects and re-adopts web", || {
        let h1 = fleet.host("h1")?;
        let web = h1.instance("web")?;
        (h1.healthy() && web.pid == pid).then_some(())
    });
    let h1 = fleet.host("h1").expect("h1 listed");
    let web = h1.instance("web").expect("web listed");
    assert_eq!(web.restarts, 0, "{h1:#?}");
    assert_eq!(fleet.agent("h1").instance_pid("web"), Some(pid));
    assert!(alive(pid));
}

#[test]
fn killed_instance_is_seen_crashed_then_restarted() {
    let fleet = Fleet::builder().agents(1).start();
    let old = fleet.agent("h1").kill_instance("web");
    fleet.wait(WAIT, "h1 reports web crashed or restarted", || {
        let web = fleet.host("h1")?.instance("web")?.clone();
        (web.state == "crashed" || web.restarts >= 1 || web.health == "unhealthy").then_some(())
    });
    let web = fleet.wait(WAIT, "web is running and healthy again", || {
        let web = fleet.host("h1")?.instance("web")?.clone();
        (web.running_healthy() && web.restarts >= 1).then_some(web)
    });
    assert_ne!(web.pid, old, "{web:#?}");
    assert!(!alive(old));
    let new = fleet
        .agent("h1")
        .instance_pid("web")
        .expect("web's pidfile");
    assert_eq!(new, web.pid);
    assert!(alive(new));
    // The instance's output is captured in the data dir.
    let log = fleet.agent("h1").instance_dir("web").join("output.log");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("listening on"),
        "no instance output in {}: {text:?}",
        log.display()
    );
}

#[test]
fn agent_sigterm_exits_zero_and_leaves_its_instance_running() {
    let mut fleet = Fleet::builder().lost_timeout("2s").agents(1).start();
    let pid = fleet
        .agent("h1")
        .instance_pid("web")
        .expect("web's pidfile");
    let clean = fleet.agent_mut("h1").terminate(Duration::from_secs(15));
    assert!(
        clean,
        "the agent did not exit 0 within 15 s of SIGTERM:\n{}",
        fleet.agent("h1").describe(30)
    );
    assert!(alive(pid), "web (pid {pid}) stopped with its agent");
    fleet.wait_status("h1", "lost", WAIT);
    fleet.agent_mut("h1").start();
    fleet.wait(WAIT, "h1 is back with the same web process", || {
        let h1 = fleet.host("h1")?;
        (h1.healthy() && h1.instance("web")?.pid == pid).then_some(())
    });
}

#[test]
fn frozen_agent_is_lost_after_the_timeout_then_recovers() {
    // SIGSTOP keeps the agent's connection open but stops its reports, so
    // only the lost timeout can notice.
    let fleet = Fleet::builder().lost_timeout("2s").agents(2).start();
    fleet.agent("h1").signal(libc::SIGSTOP);
    let frozen = Instant::now();
    fleet.wait_status("h1", "lost", WAIT);
    let took = frozen.elapsed();
    fleet.agent("h1").signal(libc::SIGCONT);
    assert!(
        took >= Duration::from_secs(1),
        "h1 marked lost {took:?} after it froze, before lost_timeout {LOST_TIMEOUT:?} could pass"
    );
    assert!(
        took <= LOST_TIMEOUT + Duration::from_secs(4),
        "h1 marked lost only {took:?} after it froze (lost_timeout {LOST_TIMEOUT:?})\n{}",
        fleet.diagnostics()
    );
    assert!(fleet.host("h2").is_some_and(|h| h.connected()));
    fleet.wait_healthy(&["h1", "h2"]);
}
