//! Done-when 3: a restarted coordinator has its registry back from the store
//! before any agent reconnects, and the agents reconnect on their own.

use std::time::Duration;

use drover_tests::{AgentSpec, Fleet, WAIT};

use crate::{ids, set};

#[test]
fn coordinator_killed_and_restarted_restores_registry() {
    let mut fleet = Fleet::builder()
        .fixed_ports()
        .lost_timeout("3s")
        .agent(AgentSpec::new("h1").label("env", "prod"))
        .agent(AgentSpec::new("h2").label("env", "prod"))
        .agent(AgentSpec::new("h3").label("env", "staging"))
        .start();
    let grpc = fleet.coordinator.grpc_addr();

    // h3 stays down while the coordinator restarts: whatever is listed for
    // it afterwards can only come from the store.
    fleet.agent_mut("h3").kill();
    fleet.coordinator.kill();
    fleet.coordinator.start();
    assert_eq!(fleet.coordinator.grpc_addr(), grpc, "fixed port moved");

    let hosts = fleet.agents_json();
    assert_eq!(
        ids(&hosts),
        set(&["h1", "h2", "h3"]),
        "registry not restored: {hosts:#?}"
    );
    let h3 = hosts.iter().find(|h| h.host_id == "h3").expect("h3 listed");
    assert_eq!(
        h3.labels.get("env").map(String::as_str),
        Some("staging"),
        "{h3:#?}"
    );
    // Not connected (it cannot be); lost, or enrolled if the coordinator
    // resets session state on start.
    fleet.wait(WAIT, "h3 shows lost or enrolled", || {
        let h3 = fleet.host("h3")?;
        (h3.status == "lost" || h3.status == "enrolled").then_some(())
    });

    // h1 and h2 reconnect by themselves; h3 too once started again.
    fleet.wait_healthy(&["h1", "h2"]);
    fleet.agent_mut("h3").start();
    fleet.wait_healthy(&["h1", "h2", "h3"]);
    assert!(fleet.agent("h1").is_running() && fleet.agent("h2").is_running());
}

#[test]
fn coordinator_graceful_restart_and_agents_reconnect() {
    let mut fleet = Fleet::builder().fixed_ports().agents(3).start();
    let pids: Vec<Option<u32>> = fleet.agents.iter().map(|a| a.pid()).collect();
    assert!(
        fleet.coordinator.terminate(Duration::from_secs(15)),
        "coordinator did not exit 0 within 15 s of SIGTERM\n{}",
        fleet.coordinator.describe(40)
    );
    fleet.coordinator.start();
    let hosts = fleet.agents_json();
    assert_eq!(ids(&hosts), set(&["h1", "h2", "h3"]));
    fleet.wait_healthy(&["h1", "h2", "h3"]);
    let after: Vec<Option<u32>> = fleet.agents.iter().map(|a| a.pid()).collect();
    assert_eq!(pids, after, "agents were restarted");
    for agent in &fleet.agents {
        assert!(agent.is_running(), "{}", agent.describe(30));
    }
}
