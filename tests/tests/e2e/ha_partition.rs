//! A leader cut off by a network partition (issue 12): the leader runs in a
//! network namespace of its own, and the test takes its link down in the
//! middle of a rolling update under load, while its process keeps running.
//!
//! Two lines of defence keep a deposed leader from acting: it stops itself
//! once its lease could have expired (three quarters of the TTL without a
//! renewal), before another can be elected; and should it not (its clock or
//! process stalled), etcd refuses its writes and the agents, which keep the
//! highest epoch they have seen, refuse its sessions and commands. The
//! first test shows the first line; the second switches the first off with
//! the debug-only `DROVER_FAULT_IGNORE_LEASE_LOSS` and shows the second.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use drover_testkit::netns::Netns;
use drover_testkit::tcp_proxy::TcpProxy;
use drover_tests::harness::etcd::EtcdCluster;
use drover_tests::{Coordinator, WebFleet, metrics_sum};

use crate::ha_election::{TTL, epoch, finish_under_load, mid_rollout, wait_leader};

/// A proxy on `ns.host_ip()` to each etcd member, for the leader in `ns`.
fn etcd_proxies(etcd: &EtcdCluster, ns: &Netns) -> Vec<TcpProxy> {
    (etcd.endpoints().iter())
        .map(|e| {
            let target: SocketAddr = e
                .trim_start_matches("http://")
                .parse()
                .unwrap_or_else(|err| panic!("etcd endpoint {e}: {err}"));
            TcpProxy::start(IpAddr::V4(ns.host_ip()), target)
        })
        .collect()
}

fn endpoints(proxies: &[TcpProxy]) -> Vec<String> {
    proxies
        .iter()
        .map(|p| format!("http://{}", p.addr()))
        .collect()
}

/// The fleet: `c1` leads from inside `ns`, `c2` stands by; 4 hosts on v1,
/// v2 pushed.
fn start(ns: &Netns, etcd: &EtcdCluster, proxies: &[TcpProxy], fault: bool) -> WebFleet {
    let web = WebFleet::builder()
        .hosts(4)
        .ha_in(etcd, ns, &endpoints(proxies))
        .coordinator(|c| {
            // Agents notice a silent coordinator within 10 s (their session
            // keepalive); the new leader gives them twice that.
            c.lost_timeout = "20s".to_string();
            if fault {
                c.env.push((
                    "DROVER_FAULT_IGNORE_LEASE_LOSS".to_string(),
                    "1".to_string(),
                ));
            }
        })
        .start();
    web.deploy_initial("v1");
    web.push_release("v2", &[]);
    web
}

/// Every agent's log has `text`.
fn in_every_agent_log(web: &WebFleet, text: &str) -> bool {
    (web.fleet.agents.iter())
        .all(|a| std::fs::read_to_string(&a.log).is_ok_and(|l| l.contains(text)))
}

fn exit_code(c: &Coordinator, within: Duration) -> Option<i32> {
    (c.process())
        .and_then(|p| p.wait_exit(within))
        .and_then(|s| s.code())
}

#[test]
fn a_partitioned_leader_stops_itself_and_the_standby_finishes_the_rollout() {
    let ns = Netns::create();
    let etcd = EtcdCluster::start(3);
    let proxies = etcd_proxies(&etcd, &ns);
    let web = start(&ns, &etcd, &proxies, false);
    let e1 = epoch(&web.fleet.coordinator);
    let (load, id) = mid_rollout(&web, "v2");

    // The leader's machine drops off the network: no etcd, no agents, no
    // standby; its process runs on.
    ns.cut();
    let cut = Instant::now();
    // It cannot renew its lease, so it stops by itself, before the lease
    // can expire and another be elected (its supervisor would start it
    // again as a standby).
    let code = exit_code(&web.fleet.coordinator, TTL * 3);
    let stopped = cut.elapsed();
    assert_eq!(
        code,
        Some(75),
        "the cut-off leader did not stop\n{}",
        web.fleet.coordinator.describe(40)
    );
    assert!(
        (web.fleet.coordinator.log_text()).contains("lost the leadership"),
        "{}",
        web.fleet.coordinator.describe(40)
    );
    let c2 = &web.fleet.standbys[0];
    wait_leader(c2, TTL + Duration::from_secs(10));
    let took = cut.elapsed();
    let e2 = epoch(c2);
    assert!(e2 > e1, "epochs grow: {e1} then {e2}");
    // The agents notice the silent leader and follow the new one.
    web.fleet
        .wait(Duration::from_secs(30), "every agent follows c2", || {
            in_every_agent_log(&web, &format!("coordinator c2 leads (epoch {e2})"))
        });
    ns.restore();
    finish_under_load(&web, &id, load);
    eprintln!(
        "partitioned leader stopped itself {stopped:?} after the cut; c2 led {took:?} after it (lease {TTL:?})"
    );
}

#[test]
fn a_deposed_leader_that_does_not_stop_is_refused_by_etcd_and_by_the_agents() {
    let ns = Netns::create();
    let etcd = EtcdCluster::start(3);
    let proxies = etcd_proxies(&etcd, &ns);
    let mut web = start(&ns, &etcd, &proxies, true);
    let e1 = epoch(&web.fleet.coordinator);
    let (load, id) = mid_rollout(&web, "v2");

    // Cut off, c1 keeps believing it leads (its watchdog is switched off):
    // a stalled clock or process. c2 takes over and the agents follow it.
    ns.cut();
    let c2 = &web.fleet.standbys[0];
    wait_leader(c2, TTL + Duration::from_secs(10));
    let e2 = epoch(c2);
    assert!(e2 > e1, "epochs grow: {e1} then {e2}");
    web.fleet
        .wait(Duration::from_secs(30), "every agent follows c2", || {
            in_every_agent_log(&web, &format!("coordinator c2 leads (epoch {e2})"))
        });
    assert!(
        web.fleet.coordinator.is_running()
            && (web.fleet.coordinator.log_text())
                .contains("ignored: DROVER_FAULT_IGNORE_LEASE_LOSS"),
        "c1 was to keep running, deposed without knowing it\n{}",
        web.fleet.coordinator.describe(40)
    );

    // Its link comes back, but not its etcd; then the new leader dies, so
    // the agents' next try is the deposed one: they refuse it.
    for p in &proxies {
        p.block();
    }
    ns.restore();
    web.fleet.standbys[0].kill();
    web.fleet.wait(
        Duration::from_secs(60),
        "every agent refuses the deposed c1",
        || {
            in_every_agent_log(
                &web,
                &format!("the coordinator leads epoch {e1}, but this agent follows epoch {e2}"),
            )
        },
    );

    // etcd back: the first write c1 tries is refused, and that stops it.
    for p in &proxies {
        p.unblock();
    }
    let code = exit_code(&web.fleet.coordinator, Duration::from_secs(60));
    let c1_log = web.fleet.coordinator.log_text();
    assert_eq!(
        code,
        Some(75),
        "the deposed leader did not stop once etcd refused it\n{}",
        web.fleet.coordinator.describe(40)
    );
    assert!(
        c1_log.contains("etcd refused a write"),
        "{}",
        web.fleet.coordinator.describe(40)
    );

    // c2 comes back, leads again, and finishes the rollout.
    let c2 = &mut web.fleet.standbys[0];
    c2.start();
    wait_leader(c2, TTL + Duration::from_secs(10));
    let e3 = epoch(c2);
    assert!(e3 > e2, "epochs grow: {e2} then {e3}");
    finish_under_load(&web, &id, load);
    // The agents report their refusals; the leader counts them.
    let fenced = metrics_sum(
        &web.fleet.standbys[0].metrics(),
        "drover_agent_commands_fenced_total",
    );
    assert!(
        fenced >= 4.0,
        "drover_agent_commands_fenced_total = {fenced}, want one refusal per agent at least"
    );
}
