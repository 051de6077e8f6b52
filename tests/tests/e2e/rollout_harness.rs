//! The rollout tests' own instruments, checked against real parts without
//! any rollout: HAProxy in front of drover-sample instances, `show stat`
//! reading, bounded load through HAProxy and the capacity sampler.

use std::time::Duration;

use drover_tests::harness::haproxy::{Server, format_servers};
use drover_tests::{CapacitySampler, Fleet, Haproxy, Load, LoadSpec, ServerState, WAIT};

#[test]
fn haproxy_load_and_capacity_sampler_see_drains_and_deaths() {
    let fleet = Fleet::builder().agents(3).start();
    let dir = tempfile::tempdir().expect("temp dir");
    let servers: Vec<Server> = fleet
        .agents
        .iter()
        .map(|a| Server::new(a.host_id(), a.spec.sample_port().expect("sample port")))
        .collect();
    let h = Haproxy::start(dir.path(), "web", &servers);
    h.wait_serving(3, WAIT);
    let diag = || format!("{}{}", fleet.diagnostics(), h.describe());

    let sampler = CapacitySampler::start(h.socket(), "web", Duration::from_millis(50), 2_000);
    let load = Load::start(
        &h.frontend_addr(),
        LoadSpec {
            max_requests: 5_000,
            max_duration: Duration::from_secs(30),
            ..LoadSpec::default()
        },
    );
    fleet.wait(WAIT, "100 requests answered through HAProxy", || {
        load.counts().1 >= 100
    });

    // A drain through the runtime API takes the server out of service.
    let answer = h
        .command("set server web/h1 state drain")
        .expect("runtime API");
    assert_eq!(answer.trim(), "", "set state drain refused");
    // Drained, and the request it was serving when drained (if any) done.
    let h1 = |s: &[drover_tests::ServerStat]| s.iter().find(|s| s.server == "h1").cloned();
    let drained = fleet.wait(WAIT, "h1 is DRAIN with no session, capacity 2", || {
        let s = h.servers().ok()?;
        let one = h1(&s)?;
        (one.state == ServerState::Drain && one.scur == 0 && h.capacity().ok()? == 2).then_some(s)
    });
    let sent_while_drained = load.counts().0;
    fleet.wait(WAIT, "50 more requests while h1 is drained", || {
        load.counts().0 >= sent_while_drained + 50
    });
    // None of them went to h1.
    let after = h.servers().expect("show stat");
    assert_eq!(
        h1(&after).map(|s| s.req_tot),
        h1(&drained).map(|s| s.req_tot),
        "a drained server got new requests
{}
{}",
        format_servers(&drained),
        format_servers(&after)
    );
    h.command("set server web/h1 state ready")
        .expect("runtime API");
    h.wait_serving(3, WAIT);
    let report = load.stop();
    assert_eq!(report.failed, 0, "{report}\n{}", diag());
    assert!(report.ok >= 150, "{report}");
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "{report}"
    );

    // A killed instance is marked DOWN by HAProxy's checks.
    fleet.agent("h2").kill_instance("web");
    fleet.wait(WAIT, "HAProxy marks h2 DOWN", || {
        h.servers()
            .ok()?
            .iter()
            .find(|s| s.server == "h2")
            .map(|s| s.state == ServerState::Down)?
            .then_some(())
    });
    let capacity = sampler.stop();
    assert!(capacity.samples >= 10, "{capacity}");
    assert_eq!(capacity.min_capacity(), Some(2), "{capacity}\n{}", diag());
    assert_eq!(capacity.max, Some(3), "{capacity}");
    assert!(capacity.errors.is_empty(), "{capacity}");
    let seen = |server: &str, status: &str| {
        capacity
            .transitions
            .get(server)
            .is_some_and(|t| t.iter().any(|s| s == status))
    };
    assert!(seen("h1", "DRAIN"), "{capacity}");
    assert!(seen("h2", "DOWN"), "{capacity}");
    assert!(h.failed_requests_logged(5).is_empty(), "{}", h.log_tail(20));
}
