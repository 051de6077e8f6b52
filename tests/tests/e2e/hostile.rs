//! Done-when 4: hostile peers are refused, counted in
//! `drover_refusals_total`, and a good agent stays connected throughout.
//!
//! Assertions are on the refusal itself, never on a status code: with TLS
//! 1.3 a rejected client certificate surfaces on the first call with a code
//! that varies.

use std::time::{Duration, Instant};

use drover_tests::harness::pki::expired;
use drover_tests::{AgentSpec, Fleet, HostView, Pki, WAIT};

use crate::grpc::{SessionOutcome, assert_session_refused, hello, list_hosts, session};

/// A fleet with one well-behaved agent, `good`.
fn fleet_with_good_agent() -> Fleet {
    Fleet::builder().agent(AgentSpec::new("good")).start()
}

/// The good agent as it was before the attack.
fn baseline(fleet: &Fleet) -> HostView {
    fleet
        .wait_healthy(&["good"])
        .into_iter()
        .find(|h| h.host_id == "good")
        .expect("good listed")
}

/// The good agent is still connected on the same session (same peer
/// address, same process) and its reports still arrive.
#[track_caller]
fn assert_good_unaffected(fleet: &Fleet, before: &HostView) {
    eprintln!(
        "refusals by reason: {}",
        fleet.coordinator.refusals_by_reason()
    );
    let now = fleet.wait(WAIT, "the good agent keeps reporting", || {
        let h = fleet.host("good")?;
        (h.connected() && h.last_seen_ms > before.last_seen_ms).then_some(h)
    });
    assert!(now.healthy(), "good agent unhealthy: {now:#?}");
    if !before.peer_addr.is_empty() {
        assert_eq!(
            now.peer_addr,
            before.peer_addr,
            "the good agent's session was replaced\n{}",
            fleet.diagnostics()
        );
    }
    assert!(
        fleet.agent("good").is_running(),
        "{}",
        fleet.agent("good").describe(30)
    );
}

#[test]
fn client_without_certificate_is_refused() {
    let fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let (addr, ca) = (fleet.coordinator.grpc_addr(), fleet.pki.ca_cert());

    let before = fleet.refusals();
    let res = list_hosts(&addr, &ca, None);
    assert!(
        res.is_err(),
        "ListHosts without a certificate answered {res:?}"
    );
    fleet.wait_refusal_counted(before, "ListHosts without a certificate");

    let before = fleet.refusals();
    assert_session_refused(
        session(&addr, &ca, None, hello("good")),
        "Session without a certificate",
    );
    fleet.wait_refusal_counted(before, "Session without a certificate");

    fleet.cli_as(None).run(&["agents"]).expect_failure();
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn certificate_from_another_ca_is_refused() {
    let fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let other = Pki::init(&fleet.dir.join("other-pki"), &fleet.home);
    let mallory = other.issue("operator", "mallory", &[], None);

    let before = fleet.refusals();
    let res = list_hosts(
        &fleet.coordinator.grpc_addr(),
        &fleet.pki.ca_cert(),
        Some(&mallory),
    );
    assert!(
        res.is_err(),
        "ListHosts with a foreign CA's certificate answered {res:?}"
    );
    fleet.wait_refusal_counted(before, "a certificate from another CA");

    fleet
        .cli_as(Some(mallory))
        .run(&["agents"])
        .expect_failure();
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn expired_certificate_is_refused() {
    let fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let shorty = fleet.pki.issue("operator", "shorty", &[], Some("1s"));
    fleet.wait(
        Duration::from_secs(15),
        "shorty's certificate expires",
        || expired(&shorty),
    );

    let before = fleet.refusals();
    let res = list_hosts(
        &fleet.coordinator.grpc_addr(),
        &fleet.pki.ca_cert(),
        Some(&shorty),
    );
    assert!(
        res.is_err(),
        "ListHosts with an expired certificate answered {res:?}"
    );
    fleet.wait_refusal_counted(before, "an expired certificate");

    let out = fleet.cli_as(Some(shorty)).run(&["agents"]).expect_failure();
    assert!(
        out.combined().to_lowercase().contains("expired"),
        "the CLI does not say the certificate expired:\n{out}"
    );
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn revoked_agent_certificate_is_refused() {
    let fleet = Fleet::builder()
        .agent(AgentSpec::new("good"))
        .agent(AgentSpec::new("victim"))
        .start();
    let good = baseline(&fleet);
    let victim_tls = fleet.agent("victim").tls();

    fleet.cli(&["agent", "revoke", "victim"]).expect_success();
    fleet.wait_status("victim", "revoked", WAIT);

    let before = fleet.refusals();
    assert_session_refused(
        session(
            &fleet.coordinator.grpc_addr(),
            &fleet.pki.ca_cert(),
            Some(&victim_tls),
            hello("victim"),
        ),
        "Session with a revoked certificate",
    );
    fleet.wait_refusal_counted(before, "a revoked certificate");

    // The victim's agent keeps retrying and stays out.
    let start = Instant::now();
    fleet.wait(
        Duration::from_secs(10),
        "3 s pass with victim revoked",
        || {
            let v = fleet.host("victim").expect("victim listed");
            assert_eq!(v.status, "revoked", "victim came back: {v:#?}");
            start.elapsed() >= Duration::from_secs(3)
        },
    );
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn agent_certificate_cannot_use_the_control_api() {
    let fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let agent_tls = fleet.agent("good").tls();

    let before = fleet.refusals();
    let res = list_hosts(
        &fleet.coordinator.grpc_addr(),
        &fleet.pki.ca_cert(),
        Some(&agent_tls),
    );
    assert!(
        res.is_err(),
        "ListHosts with an agent certificate answered {res:?}"
    );
    fleet.wait_refusal_counted(before, "an agent certificate on the control API");

    let cli = fleet.cli_as(Some(agent_tls));
    cli.run(&["agents"]).expect_failure();
    cli.run(&["token", "create"]).expect_failure();

    // And the mirror image: a person's certificate cannot open an agent
    // session.
    let before = fleet.refusals();
    assert_session_refused(
        session(
            &fleet.coordinator.grpc_addr(),
            &fleet.pki.ca_cert(),
            Some(&fleet.operator_cert),
            hello("alice"),
        ),
        "Session with an operator certificate",
    );
    fleet.wait_refusal_counted(before, "an operator certificate on the agent API");
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn agent_cannot_claim_another_hosts_id() {
    let mut fleet = Fleet::builder()
        .agent(AgentSpec::new("good"))
        .agent(AgentSpec::new("h1"))
        .start();
    let good = baseline(&fleet);
    let h1_before = fleet.host("h1").expect("h1 listed");
    let h1_tls = fleet.agent("h1").tls();

    // A client holding h1's certificate says it is h2.
    let before = fleet.refusals();
    let reason = assert_session_refused(
        session(
            &fleet.coordinator.grpc_addr(),
            &fleet.pki.ca_cert(),
            Some(&h1_tls),
            hello("h2"),
        ),
        "Hello for h2 with h1's certificate",
    );
    fleet.wait_refusal_counted(before, "a Hello claiming another host");
    eprintln!("refused as expected: {reason}");

    // The real agent binary, configured as h2 but holding h1's certificate.
    let idx = fleet.create_agent(AgentSpec::new("h2").no_instances());
    let tls_dir = fleet.agents[idx].tls_dir();
    std::fs::create_dir_all(&tls_dir).expect("create h2's tls dir");
    for f in ["ca.pem", "agent.pem", "agent.key"] {
        std::fs::copy(fleet.agent("h1").tls_dir().join(f), tls_dir.join(f))
            .unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
    let before = fleet.refusals();
    fleet.agents[idx].start();
    fleet.wait(
        WAIT,
        "h2's session is refused (counted) or its agent gives up",
        || fleet.refusals() > before || fleet.agents[idx].try_exit().is_some(),
    );
    if let Some(status) = fleet.agents[idx].try_exit() {
        assert!(!status.success(), "{}", fleet.agents[idx].describe(20));
    }
    eprintln!("{}", fleet.agents[idx].describe(10));
    let hosts = fleet.agents_json();
    assert!(
        !hosts.iter().any(|h| h.host_id == "h2" && h.connected()),
        "h2 connected with h1's certificate: {hosts:#?}"
    );
    let h1 = hosts.iter().find(|h| h.host_id == "h1").expect("h1 listed");
    assert!(h1.connected(), "{h1:#?}");
    if !h1_before.peer_addr.is_empty() {
        assert_eq!(
            h1.peer_addr, h1_before.peer_addr,
            "h1's session was replaced"
        );
    }
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn reused_join_token_is_refused() {
    let mut fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let addr = fleet.coordinator.grpc_addr();
    let token = fleet.token();

    let first = fleet.create_agent(AgentSpec::new("t1").no_instances());
    fleet.agents[first]
        .enroll(&addr, &token.token, &token.ca_fingerprint)
        .expect_success();

    let second = fleet.create_agent(AgentSpec::new("t2").no_instances());
    let before = fleet.refusals();
    let out = fleet.agents[second]
        .enroll(&addr, &token.token, &token.ca_fingerprint)
        .expect_failure();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.combined().to_lowercase().contains("token"),
        "the refusal does not mention the token:\n{out}"
    );
    assert!(!fleet.agents[second].tls().cert.exists());
    fleet.wait_refusal_counted(before, "a reused join token");
    let m = fleet.coordinator.metrics();
    let refused: f64 = drover_tests::harness::metrics_samples(&m, "drover_enrollments_total")
        .iter()
        .filter(|(labels, _)| labels.contains("result=\"refused\""))
        .map(|(_, v)| v)
        .sum();
    assert!(refused >= 1.0, "enrolment refusal not counted:\n{m}");

    // A token that was never issued is refused the same way.
    let out = fleet.agents[second]
        .enroll(&addr, "not-a-real-token", &token.ca_fingerprint)
        .expect_failure();
    assert_eq!(out.code, Some(1), "{out}");
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn expired_join_token_is_refused() {
    let mut fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let addr = fleet.coordinator.grpc_addr();
    let created = Instant::now();
    let token = fleet.operator().token(Some("1s"), &[]);
    fleet.wait(Duration::from_secs(10), "the 1 s token expires", || {
        created.elapsed() >= Duration::from_millis(2500)
    });

    let idx = fleet.create_agent(AgentSpec::new("late").no_instances());
    let before = fleet.refusals();
    let out = fleet.agents[idx]
        .enroll(&addr, &token.token, &token.ca_fingerprint)
        .expect_failure();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.combined().to_lowercase().contains("token"),
        "the refusal does not mention the token:\n{out}"
    );
    assert!(!fleet.agents[idx].tls().cert.exists());
    fleet.wait_refusal_counted(before, "an expired join token");
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn wrong_ca_fingerprint_is_refused_by_the_agent() {
    let mut fleet = fleet_with_good_agent();
    let token = fleet.token();
    let idx = fleet.create_agent(AgentSpec::new("pinned").no_instances());
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = fleet.agents[idx]
        .enroll(&fleet.coordinator.grpc_addr(), &token.token, &wrong)
        .expect_failure();
    assert!(!fleet.agents[idx].tls().cert.exists(), "{out}");
    // The token was not spent on the wrong coordinator.
    fleet.agents[idx]
        .enroll(
            &fleet.coordinator.grpc_addr(),
            &token.token,
            &token.ca_fingerprint,
        )
        .expect_success();
}

#[test]
fn oversized_message_is_refused() {
    let mut fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let idx = fleet.create_agent(AgentSpec::new("big").no_instances());
    fleet.enroll(idx);
    let big_tls = fleet.agents[idx].tls();
    let (addr, ca) = (fleet.coordinator.grpc_addr(), fleet.pki.ca_cert());

    let mut huge = hello("big");
    huge.labels
        .insert("huge".to_string(), "x".repeat(2 * 1024 * 1024));
    let before = fleet.refusals();
    assert_session_refused(session(&addr, &ca, Some(&big_tls), huge), "a 2 MiB Hello");
    fleet.wait_refusal_counted(before, "an oversized message");

    // The coordinator still serves that host normally.
    match session(&addr, &ca, Some(&big_tls), hello("big")) {
        SessionOutcome::Welcomed => {}
        SessionOutcome::Refused(reason) => panic!(
            "a normal Hello after the oversized one was refused: {reason}\n{}",
            fleet.diagnostics()
        ),
    }
    assert_good_unaffected(&fleet, &good);
}

#[test]
fn viewer_can_read_but_not_change() {
    let fleet = fleet_with_good_agent();
    let good = baseline(&fleet);
    let viewer = fleet.viewer();
    let hosts = viewer.try_agents(None).unwrap_or_else(|e| panic!("{e}"));
    assert!(hosts.iter().any(|h| h.host_id == "good"), "{hosts:#?}");
    viewer.try_show("good").unwrap_or_else(|e| panic!("{e}"));

    let out = viewer.run(&["agent", "revoke", "good"]).expect_failure();
    assert_eq!(out.code, Some(1), "{out}");
    let out = viewer.run(&["token", "create"]).expect_failure();
    assert_eq!(out.code, Some(1), "{out}");

    let now = fleet.host("good").expect("good listed");
    assert_eq!(now.status, "connected", "{now:#?}");
    assert_good_unaffected(&fleet, &good);
}
