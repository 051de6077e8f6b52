//! Several coordinator addresses (HA) with the real binaries and the real
//! coordinator: enrolment and every CLI command pass an address where
//! nothing listens and reach the coordinator after it. (Following a
//! standby's redirect is tested against fake standbys in the agent's and
//! the CLI's own tests.)

use drover_tests::{AgentSpec, Cli, Fleet, free_port};

#[test]
fn enrolment_and_the_cli_pass_a_dead_coordinator_address() {
    let mut fleet = Fleet::builder().start();
    let grpc = fleet.coordinator.grpc_addr();
    let dead = format!("127.0.0.1:{}", free_port());
    let both = format!("{dead},{grpc}");

    let idx = fleet.create_agent(AgentSpec::new("h1"));
    let token = fleet.token();
    let out = fleet.agents[idx].enroll(&both, &token.token, &token.ca_fingerprint);
    assert!(out.success(), "{out}\n{}", fleet.diagnostics());
    fleet.agents[idx].start();
    fleet.wait_connected(&["h1"]);

    let cli = Cli {
        addr: both,
        ..fleet.operator()
    };
    let hosts = cli.agents(None);
    assert_eq!(crate::ids(&hosts), crate::set(&["h1"]), "{hosts:#?}");

    // Every address dead: each is named, and the command fails (exit 1).
    let cli = Cli {
        addr: format!("{dead}, 127.0.0.1:{}", free_port()),
        ..fleet.operator()
    };
    let out = cli.run(&["agents"]);
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr
            .contains(&format!("cannot reach coordinator at {dead}, ")),
        "{out}"
    );
}
