//! Issue 10, section 3: connections without a client certificate exist
//! only to `Enroll`. One that has not enrolled within
//! `agents.enroll_timeout` is closed, at most
//! `agents.max_enrolling_connections` are open at once (more are refused
//! right after the handshake), both are counted in /metrics, and a real
//! enrolment still works. Before, idle cert-less TLS connections stayed
//! open for as long as the peer liked.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_tests::{AgentSpec, Fleet, WAIT};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

type Conn = StreamOwned<ClientConnection, TcpStream>;

/// Opens a TLS connection to the coordinator that trusts its CA but
/// presents no certificate, and completes the handshake.
fn open_certless(addr: &str, ca: &Path) -> Conn {
    let pem = std::fs::read(ca).expect("read CA certificate");
    let mut roots = rustls::RootCertStore::empty();
    for cert in drover_net::transport::certs_from_pem("CA", &pem).expect("parse CA") {
        roots.add(cert).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    let mut conn = ClientConnection::new(Arc::new(config), name).expect("client connection");
    let mut tcp = TcpStream::connect(addr).expect("connect to the coordinator");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).expect("TLS handshake");
    }
    StreamOwned::new(conn, tcp)
}

/// Reads (and drops whatever the server sends, its HTTP/2 settings) until
/// the server closes the connection; panics if it is still open after
/// `within`. Whether it closes at all is what is tested: `within` is far
/// beyond the configured timeout.
fn wait_closed(conn: &mut Conn, what: &str, within: Duration) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
        assert!(
            start.elapsed() < within,
            "{what}: still open after {within:?}"
        );
    }
}

/// The value of `name{reason="<reason>"}` (or of `name` alone).
fn sample(metrics: &str, name: &str, reason: Option<&str>) -> f64 {
    let key = match reason {
        Some(r) => format!("{name}{{reason=\"{r}\"}} "),
        None => format!("{name} "),
    };
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

const REFUSALS: &str = "drover_refusals_total";
const OPEN: &str = "drover_enrolling_connections";

#[test]
fn idle_certless_connections_are_closed_and_enrolment_still_works() {
    let mut fleet = Fleet::builder()
        .coordinator(|c| c.extra_toml = "enroll_timeout = \"2s\"\n".to_string())
        .start();
    let addr = fleet.coordinator.grpc_addr();
    let ca = fleet.pki.ca_cert();

    const N: usize = 8;
    let mut conns: Vec<Conn> = (0..N).map(|_| open_certless(&addr, &ca)).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        wait_closed(
            conn,
            &format!("cert-less connection {i} that never enrolled"),
            Duration::from_secs(60),
        );
    }
    fleet.wait(
        WAIT,
        "every closed connection counted, and none left open",
        || {
            let m = fleet.coordinator.metrics();
            sample(&m, REFUSALS, Some("enroll_timeout")) >= N as f64
                && sample(&m, OPEN, None) == 0.0
        },
    );

    // An agent enrols over exactly such a connection, and then connects.
    fleet.add_agent(AgentSpec::new("h1"));
    fleet.wait_connected(&["h1"]);
    let m = fleet.coordinator.metrics();
    assert!(
        m.contains("drover_enrollments_total{result=\"ok\"} 1"),
        "{m}"
    );
}

#[test]
fn certless_connections_over_the_cap_are_refused() {
    const CAP: usize = 4;
    const EXTRA: usize = 3;
    let fleet = Fleet::builder()
        .coordinator(|c| {
            c.extra_toml = format!("enroll_timeout = \"10m\"\nmax_enrolling_connections = {CAP}\n")
        })
        .start();
    let addr = fleet.coordinator.grpc_addr();
    let ca = fleet.pki.ca_cert();

    let held: Vec<Conn> = (0..CAP).map(|_| open_certless(&addr, &ca)).collect();
    fleet.wait(WAIT, "the cap's connections counted as open", || {
        sample(&fleet.coordinator.metrics(), OPEN, None) == CAP as f64
    });
    for i in 0..EXTRA {
        let mut conn = open_certless(&addr, &ca);
        // The timeout is ten minutes: a close now is the cap's doing.
        wait_closed(
            &mut conn,
            &format!("connection {} over the cap of {CAP}", i + 1),
            Duration::from_secs(60),
        );
    }
    let m = fleet.coordinator.metrics();
    assert_eq!(
        sample(&m, REFUSALS, Some("enrolling_limit")),
        EXTRA as f64,
        "{m}"
    );
    assert_eq!(
        sample(&m, OPEN, None),
        CAP as f64,
        "the held ones stay open: {m}"
    );
    assert_eq!(sample(&m, REFUSALS, Some("enroll_timeout")), 0.0, "{m}");

    // Closing them frees their places.
    drop(held);
    fleet.wait(WAIT, "the closed connections leave the count", || {
        sample(&fleet.coordinator.metrics(), OPEN, None) == 0.0
    });
    let mut conn = open_certless(&addr, &ca);
    fleet.wait(WAIT, "a new cert-less connection admitted", || {
        sample(&fleet.coordinator.metrics(), OPEN, None) == 1.0
    });
    let mut buf = [0u8; 64];
    // Still open: reading finds no end of stream (only its settings).
    let still_open = match conn.read(&mut buf) {
        Ok(n) => n > 0,
        Err(e) => matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    };
    assert!(still_open, "a connection under the cap was closed");
}
