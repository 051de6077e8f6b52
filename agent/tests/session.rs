//! The agent against a fake coordinator over real mutual TLS: enrolment,
//! Hello/Welcome, reports, certificate renewal, refusal and failover.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use drover_agent::config::{Config, Signal};
use drover_agent::enroll::{self, EnrollError, EnrollOptions};
use drover_agent::runtime::process;
use drover_agent::tls::TlsFiles;
use drover_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use drover_proto::v1::{
    AgentMessage, CoordinatorMessage, EnrollRequest, EnrollResponse, HealthReport, Hello,
    RenewResponse, Welcome, agent_message, coordinator_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const DEADLINE: Duration = Duration::from_secs(15);

use common::Ca;

#[derive(Debug)]
enum Event {
    Hello { hello: Hello, serial: String },
    Report(HealthReport),
    Renew,
    Denied,
    Enroll(EnrollRequest),
}

#[derive(Clone)]
struct Fake {
    ca: Arc<Ca>,
    events: mpsc::UnboundedSender<Event>,
    deny: Arc<Mutex<bool>>,
    /// CA PEM that Enroll returns (normally the real one).
    enroll_ca_pem: String,
}

fn peer_serial<T>(req: &Request<T>) -> Option<String> {
    let certs = req.peer_certs()?;
    let first = certs.first()?;
    drover_net::transport::parse_cert(first)
        .ok()
        .map(|p| p.serial)
}

#[tonic::async_trait]
impl AgentService for Fake {
    async fn enroll(
        &self,
        req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let req = req.into_inner();
        let _ = self.events.send(Event::Enroll(req.clone()));
        if req.token != "good-token" {
            return Err(Status::permission_denied("invalid or expired join token"));
        }
        let cert_pem = self
            .ca
            .sign_csr(&req.csr_pem, &req.host_id, Duration::from_secs(3600));
        Ok(Response::new(EnrollResponse {
            cert_pem,
            ca_pem: self.enroll_ca_pem.clone(),
            labels: HashMap::from([("zone".to_string(), "a".to_string())]),
        }))
    }

    type FetchArtifactStream = Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<drover_proto::v1::ArtifactChunk, Status>> + Send,
        >,
    >;

    async fn fetch_artifact(
        &self,
        _req: Request<drover_proto::v1::FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }

    type SessionStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let serial =
            peer_serial(&req).ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        if *self.deny.lock().expect("lock") {
            let _ = self.events.send(Event::Denied);
            return Err(Status::permission_denied("certificate revoked"));
        }
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(AgentMessage {
                msg: Some(agent_message::Msg::Hello(h)),
            }) => h,
            other => {
                return Err(Status::invalid_argument(format!(
                    "expected Hello, got {other:?}"
                )));
            }
        };
        let host = hello.host_id.clone();
        let _ = self.events.send(Event::Hello { hello, serial });
        let (tx, rx) = mpsc::channel(8);
        let _ = tx
            .send(Ok(CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Welcome(Welcome {
                    coordinator_name: "c1".into(),
                    server_time_ms: 0,
                    epoch: 0,
                })),
            }))
            .await;
        let fake = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.msg {
                    Some(agent_message::Msg::Health(r)) => {
                        let _ = fake.events.send(Event::Report(r));
                    }
                    Some(agent_message::Msg::Renew(r)) => {
                        let _ = fake.events.send(Event::Renew);
                        let cert_pem =
                            fake.ca
                                .sign_csr(&r.csr_pem, &host, Duration::from_secs(3600));
                        let _ = tx
                            .send(Ok(CoordinatorMessage {
                                msg: Some(coordinator_message::Msg::Renew(RenewResponse {
                                    cert_pem,
                                    error: String::new(),
                                })),
                            }))
                            .await;
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Coordinator {
    addr: String,
    events: mpsc::UnboundedReceiver<Event>,
    deny: Arc<Mutex<bool>>,
    stop: CancellationToken,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Coordinator {
    async fn start(ca: Arc<Ca>, enroll_ca_pem: Option<String>) -> Coordinator {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (chain, key) = ca.coordinator();
        let (tx, events) = mpsc::unbounded_channel();
        let deny = Arc::new(Mutex::new(false));
        let fake = Fake {
            enroll_ca_pem: enroll_ca_pem.unwrap_or_else(|| ca.pem.clone()),
            ca: ca.clone(),
            events: tx,
            deny: deny.clone(),
        };
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(chain, key))
            .client_ca_root(Certificate::from_pem(&ca.pem))
            .client_auth_optional(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = CancellationToken::new();
        let server = Server::builder()
            .tls_config(tls)
            .expect("tls config")
            .add_service(AgentServiceServer::new(fake))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Coordinator {
            addr,
            events,
            deny,
            stop,
        }
    }

    async fn next(&mut self, what: &str) -> Event {
        match tokio::time::timeout(DEADLINE, self.events.recv()).await {
            Ok(Some(e)) => e,
            _ => panic!("timed out waiting for {what}"),
        }
    }

    /// Skips events until `pick` returns Some.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if let Some(t) = pick(self.next(what).await) {
                return t;
            }
        }
    }
}

fn config(data_dir: &Path, coordinators: &[&str], extra: &str) -> Config {
    let list: Vec<String> = coordinators.iter().map(|c| format!("\"{c}\"")).collect();
    let text = format!(
        "host_id = \"h1\"\ndata_dir = \"{}\"\ncoordinators = [{}]\nreport_interval = \"200ms\"\n[labels]\nenv = \"test\"\n{extra}",
        data_dir.display(),
        list.join(", ")
    );
    Config::parse(&text, Path::new("agent.toml")).expect("config")
}

use common::enrol_directly;

struct KillOnDrop(std::path::PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = process::read_pid(&self.0) {
            let _ = kill_group(pid);
        }
    }
}

fn kill_group(pid: u32) -> Result<(), drover_agent::runtime::RuntimeError> {
    process::kill_group(pid, Signal::KILL)
}

#[tokio::test]
async fn hello_reports_and_renewal_over_mtls() {
    let ca = Arc::new(Ca::new("test CA"));
    let mut coord = Coordinator::start(ca.clone(), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Renewal is due at 2/3 of 3 s.
    let files = enrol_directly(&ca, dir.path(), "h1", Duration::from_secs(3));
    let first_cert = std::fs::read_to_string(&files.cert).expect("cert");
    let cfg = config(
        dir.path(),
        &[&coord.addr],
        "[[instance]]\nname = \"web\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\n",
    );
    let _kill = KillOnDrop(cfg.instance_dir("web"));
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(drover_agent::run(cfg.clone(), shutdown.clone()));

    let (hello, serial) = coord
        .expect("Hello", |e| match e {
            Event::Hello { hello, serial } => Some((hello, serial)),
            _ => None,
        })
        .await;
    assert_eq!(hello.host_id, "h1");
    assert_eq!(hello.agent_version, drover_agent::AGENT_VERSION);
    assert_eq!(hello.report_interval_ms, 200);
    assert_eq!(hello.labels.get("env").map(String::as_str), Some("test"));
    assert_eq!(hello.instances.len(), 1);
    assert_eq!(hello.instances[0].id, "web@h1");

    let report = coord
        .expect("a report with a running instance", |e| match e {
            Event::Report(r) if r.instances.first().is_some_and(|i| i.pid > 0) => Some(r),
            _ => None,
        })
        .await;
    let host = report.host.expect("host metrics");
    assert!(host.cpu_count >= 1 && host.mem_total_bytes > 0);
    assert!(report.sent_at_ms > 0);
    let instance_pid = report.instances[0].pid;

    coord
        .expect("RenewRequest", |e| matches!(e, Event::Renew).then_some(()))
        .await;
    let (hello2, serial2) = coord
        .expect("Hello with the renewed certificate", |e| match e {
            Event::Hello { hello, serial } => Some((hello, serial)),
            _ => None,
        })
        .await;
    assert_eq!(hello2.host_id, "h1");
    assert_ne!(serial2, serial, "reconnected with the new certificate");
    let second_cert = std::fs::read_to_string(&files.cert).expect("cert");
    assert_ne!(first_cert, second_cert);
    let loaded = files.load().expect("renewed files load");
    assert_eq!(loaded.cert.serial, serial2);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&files.key)
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("agent stops")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
    // Agent shutdown leaves instances running.
    let alive = process::proc_stat(instance_pid)
        .is_some_and(|s| process::is_alive(instance_pid, s.start_time));
    assert!(alive, "instance must outlive the agent");
}

#[tokio::test]
async fn keeps_retrying_when_refused_and_fails_over() {
    let ca = Arc::new(Ca::new("test CA"));
    let mut coord = Coordinator::start(ca.clone(), None).await;
    *coord.deny.lock().expect("lock") = true;
    // A dead first coordinator: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    enrol_directly(&ca, dir.path(), "h1", Duration::from_secs(3600));
    let cfg = config(dir.path(), &[&dead, &coord.addr], "");
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(drover_agent::run(cfg, shutdown.clone()));

    coord
        .expect("a refused session", |e| {
            matches!(e, Event::Denied).then_some(())
        })
        .await;
    coord
        .expect("a second refused session", |e| {
            matches!(e, Event::Denied).then_some(())
        })
        .await;
    *coord.deny.lock().expect("lock") = false;
    coord
        .expect("Hello once no longer refused", |e| {
            matches!(e, Event::Hello { .. }).then_some(())
        })
        .await;
    coord
        .expect("a report", |e| matches!(e, Event::Report(_)).then_some(()))
        .await;
    shutdown.cancel();
    let result = tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("agent stops")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn run_refuses_without_enrolment_or_with_a_foreign_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &["127.0.0.1:1"], "");
    let err = drover_agent::run(cfg.clone(), CancellationToken::new())
        .await
        .expect_err("not enrolled");
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string()
            .starts_with("not enrolled: run drover-agent enroll"),
        "{err}"
    );

    let ca = Ca::new("test CA");
    enrol_directly(&ca, dir.path(), "h2", Duration::from_secs(3600));
    let err = drover_agent::run(cfg, CancellationToken::new())
        .await
        .expect_err("wrong host");
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("agent/h2"), "{err}");
}

#[tokio::test]
async fn enrols_with_a_pinned_fingerprint() {
    let ca = Arc::new(Ca::new("test CA"));
    let mut coord = Coordinator::start(ca.clone(), None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &[&coord.addr], "");
    let addr = coord.addr.clone();
    let opts = |token: &str, fp: &str, force: bool| EnrollOptions {
        coordinator: addr.clone(),
        token: token.into(),
        ca_fingerprint: fp.into(),
        force,
    };

    let fp = format!("sha256:{}", ca.fingerprint().to_uppercase());
    let err = enroll::enroll(&cfg, &opts("bad-token", &fp, false))
        .await
        .expect_err("bad token");
    assert!(
        matches!(err, EnrollError::Refused(ref m) if m.contains("join token")),
        "{err}"
    );
    assert_eq!(err.exit_code(), 1);
    assert!(
        TlsFiles::new(dir.path()).any_present().is_none(),
        "nothing written on refusal"
    );

    let done = enroll::enroll(&cfg, &opts("good-token", &fp, false))
        .await
        .expect("enrol");
    assert_eq!(done.host_id, "h1");
    assert!(done.not_after > SystemTime::now());
    let req = coord
        .expect("Enroll", |e| match e {
            Event::Enroll(r) if r.token == "good-token" => Some(r),
            _ => None,
        })
        .await;
    assert_eq!(req.host_id, "h1");
    assert!(req.csr_pem.contains("CERTIFICATE REQUEST"));
    let files = TlsFiles::new(dir.path());
    assert!(files.missing().is_none());
    let loaded = files.load().expect("load");
    assert_eq!(loaded.cert.identity.to_string(), "agent/h1");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&files.key)
        .expect("key")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(
        enroll::enrolled_labels(dir.path())
            .get("zone")
            .map(String::as_str),
        Some("a")
    );

    let err = enroll::enroll(&cfg, &opts("good-token", &fp, false))
        .await
        .expect_err("enrolled");
    assert!(matches!(err, EnrollError::AlreadyEnrolled(_)));
    assert_eq!(err.exit_code(), 2);

    // A pin that matches nothing: the TLS handshake itself fails.
    let other = Ca::new("other CA");
    let err = enroll::enroll(&cfg, &opts("good-token", &other.fingerprint(), true))
        .await
        .expect_err("wrong pin");
    assert!(err.to_string().contains("fingerprint"), "{err}");
}

#[tokio::test]
async fn enrol_refuses_a_returned_ca_that_is_not_the_pinned_one() {
    let ca = Arc::new(Ca::new("test CA"));
    let impostor = Ca::new("impostor CA");
    let coord = Coordinator::start(ca.clone(), Some(impostor.pem.clone())).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &[&coord.addr], "");
    let err = enroll::enroll(
        &cfg,
        &EnrollOptions {
            coordinator: coord.addr.clone(),
            token: "good-token".into(),
            ca_fingerprint: ca.fingerprint(),
            force: false,
        },
    )
    .await
    .expect_err("CA mismatch");
    assert!(matches!(err, EnrollError::CaMismatch { .. }), "{err}");
    assert!(TlsFiles::new(dir.path()).any_present().is_none());
}

#[tokio::test]
async fn enrols_through_a_list_past_a_dead_address_and_a_standby() {
    let ca = Arc::new(Ca::new("test CA"));
    let mut leader = Coordinator::start(ca.clone(), None).await;
    let standby = common::Coordinator::start(&ca).await;
    standby.set_standby(Some(Some(leader.addr.clone())));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(dir.path(), &[&standby.addr], "");
    let done = enroll::enroll(
        &cfg,
        &EnrollOptions {
            coordinator: format!("{dead}, {}", standby.addr),
            token: "good-token".into(),
            ca_fingerprint: ca.fingerprint(),
            force: false,
        },
    )
    .await
    .expect("enrolled by the leader the standby named");
    assert_eq!(done.host_id, "h1");
    assert_eq!(standby.refused(), 1);
    leader
        .expect("Enroll at the leader", |e| {
            matches!(e, Event::Enroll(_)).then_some(())
        })
        .await;
    assert!(TlsFiles::new(dir.path()).missing().is_none());
    let record = std::fs::read_to_string(dir.path().join(enroll::ENROLLMENT_FILE))
        .expect("enrollment record");
    assert!(record.contains(&leader.addr), "{record}");

    // A list of nothing but commas is refused as typed.
    let err = enroll::enroll(
        &cfg,
        &EnrollOptions {
            coordinator: " , ".into(),
            token: "good-token".into(),
            ca_fingerprint: ca.fingerprint(),
            force: true,
        },
    )
    .await
    .expect_err("no address");
    assert_eq!(err.exit_code(), 2, "{err}");
}
