//! Done-when 5: agent certificates renew without a restart; revocation
//! drops the session within a report interval and keeps the host out.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use drover_tests::harness::pki::parse_cert_file;
use drover_tests::{AgentSpec, Fleet, WAIT};

#[test]
fn certificates_renew_without_restart() {
    let lifetime = Duration::from_secs(6);
    let fleet = Fleet::builder()
        .cert_lifetime("6s")
        .agent(AgentSpec::new("h1"))
        .start();
    let agent = fleet.agent("h1");
    let pid = agent.pid().expect("agent started");
    let cert_path = agent.tls().cert;
    let first = parse_cert_file(&cert_path).unwrap_or_else(|e| panic!("{e}"));
    let issued_for = first
        .not_after
        .duration_since(first.not_before)
        .unwrap_or_default();
    assert!(
        issued_for <= lifetime + Duration::from_secs(2),
        "enrolment ignored cert_lifetime = 6s: certificate valid for {issued_for:?}"
    );

    // Watch the file through more than two lifetimes.
    let start = Instant::now();
    let mut serials = BTreeSet::from([first.serial.clone()]);
    fleet.wait(
        Duration::from_secs(60),
        "h1's certificate is renewed at least twice over more than two lifetimes",
        || {
            if let Ok(cert) = parse_cert_file(&cert_path) {
                serials.insert(cert.serial);
            }
            assert!(
                agent.is_running(),
                "the agent exited during renewal:\n{}",
                agent.describe(40)
            );
            serials.len() >= 3 && start.elapsed() > 2 * lifetime + Duration::from_secs(1)
        },
    );
    assert_eq!(agent.pid(), Some(pid), "the agent was restarted");

    // The coordinator sees the current certificate on a live session.
    let current = parse_cert_file(&cert_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(current.not_after > std::time::SystemTime::now());
    fleet.wait(WAIT, "h1 is connected on a renewed certificate", || {
        let h1 = fleet.host("h1")?;
        (h1.healthy() && h1.cert_serial != first.serial && serials.contains(&h1.cert_serial))
            .then_some(())
    });
    // The key was replaced along with the certificate (fresh key per renewal)
    // and is still private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.tls().key)
        .expect("stat agent.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "agent.key is readable by others: {mode:o}");
}

#[test]
fn revocation_drops_the_session_and_keeps_the_host_out() {
    let mut fleet = Fleet::builder()
        .agent(AgentSpec::new("h1"))
        .agent(AgentSpec::new("h2"))
        .start();
    let out = fleet.cli(&["agent", "revoke", "h1"]).expect_success();
    let revoked = Instant::now();
    let h1 = fleet.wait_status("h1", "revoked", WAIT);
    let took = revoked.elapsed();
    // One report interval is 500 ms; each poll runs the CLI, so allow for it.
    assert!(
        took <= Duration::from_secs(3),
        "h1 shown revoked only {took:?} after `drover agent revoke`:\n{out}"
    );
    assert!(!h1.connected());

    // It stays out although its agent keeps trying.
    let start = Instant::now();
    fleet.wait(Duration::from_secs(15), "5 s pass with h1 revoked", || {
        let h1 = fleet.host("h1").expect("h1 listed");
        assert_eq!(h1.status, "revoked", "h1 came back: {h1:#?}");
        start.elapsed() >= Duration::from_secs(5)
    });
    assert!(fleet.refusals() > 0.0, "{}", fleet.diagnostics());
    let h2 = fleet.host("h2").expect("h2 listed");
    assert!(h2.healthy(), "{h2:#?}");

    let out = fleet.cli(&["agent", "revoke", "no-such-host"]);
    assert_eq!(out.code, Some(1), "{out}");

    // Back only through a new enrolment (a new token, `--force` over the
    // revoked certificate).
    let token = fleet.token();
    let addr = fleet.coordinator.grpc_addr();
    let agent = fleet.agent_mut("h1");
    agent.kill();
    agent
        .enroll_with(&addr, &token.token, &token.ca_fingerprint, &["--force"])
        .expect_success();
    agent.start();
    fleet.wait_healthy(&["h1", "h2"]);
}
