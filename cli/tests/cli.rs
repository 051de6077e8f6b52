//! Runs the real `drover` binary: local CA commands in temp dirs, and the
//! remote commands against an in-process fake ControlService over real
//! mutual TLS, so flags, config files, TLS and error messages are exercised
//! the way an operator meets them. End-to-end tests against the real
//! coordinator live in the `drover-tests` crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use drover_model::pki::{self, Ca};
use drover_net::transport;
use drover_proto::identity::{Identity, Role};
use drover_proto::v1::control_service_server::{ControlService, ControlServiceServer};
use drover_proto::v1::{
    CreateTokenRequest, CreateTokenResponse, GetHostRequest, HealthState, Host, HostEvent,
    HostMetrics, HostStatus, InstanceStatus, ListHostsRequest, ListHostsResponse, Release,
    RevokeHostRequest, RevokeHostResponse, RuntimeState, WatchHostsRequest, host_event,
};
use futures::StreamExt as _;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

const CONNECTION_VARS: [&str; 5] = [
    "DROVER_ADDR",
    "DROVER_CA",
    "DROVER_CERT",
    "DROVER_KEY",
    "DROVER_CONFIG",
];

/// A CA with a coordinator, an operator and a viewer certificate.
struct Pki {
    dir: TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(&dir.path().join("ca"), "test").expect("ca init");
        let pki = Pki { dir, ca };
        pki.issue(Role::Coordinator, "c1", Duration::from_secs(3600));
        pki.issue(Role::Operator, "alice", Duration::from_secs(3600));
        pki.issue(Role::Viewer, "vic", Duration::from_secs(3600));
        pki
    }

    fn issue(&self, role: Role, name: &str, lifetime: Duration) {
        let id = Identity::new(role, name).expect("identity");
        let issued = self
            .ca
            .issue(&id, &["127.0.0.1".into()], lifetime)
            .expect("issue");
        pki::write_new(
            &self.path(&format!("{name}.pem")),
            issued.cert_pem.as_bytes(),
            false,
        )
        .expect("write cert");
        pki::write_new(
            &self.path(&format!("{name}.key")),
            issued.key_pem.as_bytes(),
            true,
        )
        .expect("write key");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca").join("ca.pem")
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read")
    }
}

fn host(id: &str, status: HostStatus) -> Host {
    Host {
        host_id: id.into(),
        status: status as i32,
        labels: [("env".to_string(), "prod".to_string())]
            .into_iter()
            .collect(),
        agent_version: "0.1.0".into(),
        last_seen_ms: 1,
        metrics: Some(HostMetrics {
            cpu_percent: 7.5,
            mem_total_bytes: 4 << 30,
            mem_used_bytes: 1 << 30,
            cpu_count: 2,
            ..HostMetrics::default()
        }),
        instances: vec![InstanceStatus {
            id: format!("web@{id}"),
            name: "web".into(),
            service: "web".into(),
            runtime: "process".into(),
            state: RuntimeState::Running as i32,
            health: HealthState::Healthy as i32,
            release: Some(Release {
                version: "v1".into(),
                digest: String::new(),
            }),
            ..InstanceStatus::default()
        }],
        cert_serial: "4a".into(),
        ..Host::default()
    }
}

/// Serves two hosts (h1 connected, h2 lost) and refuses writes from viewers.
/// Rollout watches play a script chosen by the rollout id (see
/// [`Fake::watch_script`]); `watches` counts the calls per id.
#[derive(Default)]
struct Fake {
    watches: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

type Update = Result<drover_proto::v1::RolloutUpdate, Status>;

fn rollout_event(n: u32) -> drover_proto::v1::RolloutEvent {
    drover_proto::v1::RolloutEvent {
        at_ms: 1_790_000_000_000 + i64::from(n) * 1000,
        instance: format!("web@h{n}"),
        step: drover_proto::v1::InstanceStep::Done as i32,
        step_text: "done".into(),
        capacity: 2,
        floor: 2,
        message: format!("event {n}"),
    }
}

/// An update in `phase` carrying events `from..=to` (none when from > to).
fn rollout_update(id: &str, phase: &str, from: u32, to: u32) -> Update {
    Ok(drover_proto::v1::RolloutUpdate {
        rollout: Some(drover_proto::v1::Rollout {
            id: id.into(),
            service: "web".into(),
            phase: drover_proto::v1::RolloutPhase::from_text(phase) as i32,
            phase_text: phase.into(),
            started_at_ms: 1_790_000_000_000,
            finished_at_ms: if phase == "running" {
                0
            } else {
                1_790_000_060_000
            },
            ..drover_proto::v1::Rollout::default()
        }),
        events: (from..=to).map(rollout_event).collect(),
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Canary `id` of web to v2, at `step` of 5%,25%,50%,100% in `stage`,
/// every earlier step passed (step 2 promoted), and `step` too when
/// `stage` says so; baking ends 12 minutes from now.
fn canary_rollout(
    id: &str,
    phase: &str,
    step: u32,
    stage: drover_proto::v1::rollout_traffic::Stage,
) -> drover_proto::v1::Rollout {
    use drover_proto::v1::{RolloutTraffic, Strategy, TrafficStepResult};
    let now = now_ms();
    let steps = vec![500, 2500, 5000, 10_000];
    let done = if stage == drover_proto::v1::rollout_traffic::Stage::Passed {
        step
    } else {
        step - 1
    };
    let results = (1..=done)
        .map(|n| TrafficStepResult {
            step: n,
            share_basis_points: steps[n as usize - 1],
            verdict: if n == 2 { "promoted" } else { "passed" }.into(),
            at_ms: now - i64::from(10 - n) * 60_000,
            reason: format!("step {n} reason"),
        })
        .collect();
    let mut traffic = RolloutTraffic {
        steps_basis_points: steps,
        step,
        looks: 3,
        counting_from_ms: now - 60_000,
        // 12m10s: reads "in 12m" however long the answer takes to arrive.
        bake_ends_at_ms: now + 12 * 60_000 + 10_000,
        last_look: "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass".into(),
        results,
        ..RolloutTraffic::default()
    };
    traffic.set_strategy(Strategy::Canary);
    traffic.set_stage(stage);
    drover_proto::v1::Rollout {
        id: id.into(),
        service: "web".into(),
        target: Some(Release {
            version: "v2".into(),
            digest: "ab".repeat(32),
        }),
        phase: drover_proto::v1::RolloutPhase::from_text(phase) as i32,
        phase_text: phase.into(),
        capacity: 6,
        floor: 5,
        started_at_ms: now - 600_000,
        finished_at_ms: if phase == "running" { 0 } else { now },
        traffic: Some(traffic),
        ..drover_proto::v1::Rollout::default()
    }
}

impl Fake {
    /// What the `call`th (0-based) WatchRollout of `id` answers: a stream
    /// of updates, or an error for the call itself.
    fn watch_script(id: &str, call: usize) -> Result<Vec<Update>, Status> {
        match (id, call) {
            // A coordinator restart: the stream ends with the coordinator
            // going away, the next call cannot connect, the one after gets
            // the whole history again plus what happened meanwhile.
            ("r-restart", 0) => Ok(vec![
                rollout_update(id, "running", 1, 2),
                rollout_update(id, "running", 3, 3),
                Err(Status::unavailable("coordinator shutting down")),
            ]),
            ("r-restart", 1) => Err(Status::unavailable("tcp connect error: connection refused")),
            ("r-restart", _) => Ok(vec![
                rollout_update(id, "running", 1, 4),
                rollout_update(id, "succeeded", 5, 5),
            ]),
            // The coordinator never comes back.
            ("r-gone", 0) => Ok(vec![
                rollout_update(id, "running", 1, 1),
                Err(Status::unavailable("coordinator shutting down")),
            ]),
            ("r-gone", _) => Err(Status::unavailable("tcp connect error: connection refused")),
            // A canary baking step 1, then step 2 (three updates: one
            // more look in the same bake), then done.
            ("c-watch", _) => {
                use drover_proto::v1::rollout_traffic::Stage;
                let update = |phase, step, stage, from, to| {
                    Ok(drover_proto::v1::RolloutUpdate {
                        rollout: Some(canary_rollout(id, phase, step, stage)),
                        events: (from..=to).map(rollout_event).collect(),
                    })
                };
                Ok(vec![
                    update("running", 1, Stage::Baking, 1, 1),
                    update("running", 1, Stage::Baking, 2, 1),
                    update("running", 2, Stage::Baking, 2, 2),
                    update("succeeded", 4, Stage::Passed, 3, 3),
                ])
            }
            // An answer, not a lost connection: no retry.
            ("r-broken", _) => Ok(vec![
                rollout_update(id, "running", 1, 1),
                Err(Status::internal("rollout state cannot be encoded")),
            ]),
            (other, _) => Err(Status::not_found(format!("no rollout `{other}`"))),
        }
    }
}

fn caller_role<T>(req: &Request<T>) -> Result<Role, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let cert = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let peer = transport::parse_cert(cert).map_err(|e| Status::unauthenticated(e.to_string()))?;
    Ok(peer.identity.role)
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Result<HostEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for Fake {
    async fn list_hosts(
        &self,
        req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        if req.get_ref().selector == "zone=nowhere" {
            return Err(Status::invalid_argument("unknown zone `nowhere`"));
        }
        Ok(Response::new(ListHostsResponse {
            // Out of order on purpose: the CLI sorts.
            hosts: vec![
                host("h2", HostStatus::Lost),
                host("h1", HostStatus::Connected),
            ],
        }))
    }

    async fn get_host(&self, req: Request<GetHostRequest>) -> Result<Response<Host>, Status> {
        match req.get_ref().host_id.as_str() {
            "h1" => Ok(Response::new(host("h1", HostStatus::Connected))),
            other => Err(Status::not_found(format!("no host `{other}`"))),
        }
    }

    type WatchHostsStream = EventStream;

    async fn watch_hosts(
        &self,
        _req: Request<WatchHostsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let event = |kind: host_event::Kind, host: Option<Host>| {
            Ok(HostEvent {
                kind: kind as i32,
                host,
            })
        };
        let events = vec![
            event(
                host_event::Kind::Snapshot,
                Some(host("h2", HostStatus::Lost)),
            ),
            event(
                host_event::Kind::Snapshot,
                Some(host("h1", HostStatus::Connected)),
            ),
            event(host_event::Kind::Synced, None),
            event(
                host_event::Kind::Updated,
                Some(host("h2", HostStatus::Connected)),
            ),
        ];
        let stream = futures::stream::iter(events).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        if caller_role(&req)? != Role::Operator {
            return Err(Status::permission_denied(
                "only operators may create tokens",
            ));
        }
        let env = req.get_ref().labels.get("env").cloned().unwrap_or_default();
        Ok(Response::new(CreateTokenResponse {
            token: format!("tok-{env}-{}", req.get_ref().ttl_secs),
            expires_at_ms: 1_790_000_000_000,
            ca_fingerprint: "ab".repeat(32),
        }))
    }

    async fn revoke_host(
        &self,
        req: Request<RevokeHostRequest>,
    ) -> Result<Response<RevokeHostResponse>, Status> {
        if caller_role(&req)? != Role::Operator {
            return Err(Status::permission_denied("viewers may not revoke hosts"));
        }
        Ok(Response::new(RevokeHostResponse {
            revoked_serials: vec!["4a".into(), "4b".into()],
        }))
    }

    async fn push_artifact(
        &self,
        _req: Request<tonic::Streaming<drover_proto::v1::PushArtifactRequest>>,
    ) -> Result<Response<drover_proto::v1::Artifact>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_artifacts(
        &self,
        _req: Request<drover_proto::v1::ListArtifactsRequest>,
    ) -> Result<Response<drover_proto::v1::ListArtifactsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    // Rollouts are covered end to end against the real coordinator
    // (tests/tests/e2e/rollout*.rs); this fake only serves the host views.
    async fn start_rollout(
        &self,
        _req: Request<drover_proto::v1::StartRolloutRequest>,
    ) -> Result<Response<drover_proto::v1::StartRolloutResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_rollout(
        &self,
        req: Request<drover_proto::v1::GetRolloutRequest>,
    ) -> Result<Response<drover_proto::v1::Rollout>, Status> {
        use drover_proto::v1::rollout_traffic::Stage;
        match req.get_ref().id.as_str() {
            "c-1" => Ok(Response::new(canary_rollout(
                "c-1",
                "running",
                2,
                Stage::Baking,
            ))),
            other => Err(Status::not_found(format!("no rollout `{other}`"))),
        }
    }

    async fn get_rollout_analysis(
        &self,
        req: Request<drover_proto::v1::GetRolloutAnalysisRequest>,
    ) -> Result<Response<drover_proto::v1::RolloutAnalysis>, Status> {
        use drover_proto::v1::{AnalysisArm, AnalysisLook, RolloutAnalysis};
        let arm = |attempts, errors, latency_ms| {
            Some(AnalysisArm {
                attempts,
                errors,
                latency_ms,
            })
        };
        match req.get_ref().id.as_str() {
            "c-1" => Ok(Response::new(RolloutAnalysis {
                id: "c-1".into(),
                looks: vec![AnalysisLook {
                    step: 1,
                    share_basis_points: 500,
                    look: 1,
                    at_ms: 1_790_000_000_000,
                    source: "haproxy".into(),
                    canary_instances: 1,
                    baseline_instances: 5,
                    canary: arm(612, 3, Some(41.5)),
                    baseline: arm(2390, 9, Some(40.0)),
                    p_value: Some(0.62),
                    verdict: "pass".into(),
                    reason: "errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%)".into(),
                    last: true,
                    judgement_json: r#"{"errors":{"p_value":0.62}}"#.into(),
                }],
            })),
            "r-7" => Err(Status::failed_precondition(
                "rollout r-7 is a rolling update: it has no analysis",
            )),
            other => Err(Status::not_found(format!("no rollout `{other}`"))),
        }
    }

    async fn list_rollouts(
        &self,
        _req: Request<drover_proto::v1::ListRolloutsRequest>,
    ) -> Result<Response<drover_proto::v1::ListRolloutsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    type WatchRolloutStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<drover_proto::v1::RolloutUpdate, Status>> + Send>,
    >;

    async fn watch_rollout(
        &self,
        req: Request<drover_proto::v1::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let id = req.into_inner().id;
        let call = {
            let mut calls = self.watches.lock().expect("lock");
            let n = calls.entry(id.clone()).or_default();
            *n += 1;
            *n - 1
        };
        let updates = Fake::watch_script(&id, call)?;
        Ok(Response::new(Box::pin(futures::stream::iter(updates))))
    }

    async fn act_on_rollout(
        &self,
        req: Request<drover_proto::v1::RolloutActionRequest>,
    ) -> Result<Response<drover_proto::v1::Rollout>, Status> {
        use drover_proto::v1::rollout_action_request::Action;
        use drover_proto::v1::rollout_traffic::Stage;
        if caller_role(&req)? != Role::Operator {
            return Err(Status::permission_denied("viewers may not act on rollouts"));
        }
        let r = req.get_ref();
        match (r.id.as_str(), r.action()) {
            ("c-1", Action::Promote) => Ok(Response::new(canary_rollout(
                "c-1",
                "running",
                3,
                Stage::Updating,
            ))),
            ("r-7", Action::Promote) => Err(Status::failed_precondition(
                "rollout r-7 is not baking a traffic step",
            )),
            (id, _) => Err(Status::not_found(format!("no rollout `{id}`"))),
        }
    }
}

async fn serve(pki: &Pki) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(
            pki.read("c1.pem"),
            pki.read("c1.key"),
        ))
        .client_ca_root(Certificate::from_pem(
            std::fs::read(pki.ca_pem()).expect("ca"),
        ));
    let server = Server::builder()
        .tls_config(tls)
        .expect("tls config")
        .add_service(ControlServiceServer::new(Fake::default()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

/// `drover` with a clean environment: no DROVER_* variables and a HOME
/// without a config file unless the test writes one.
fn drover(home: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"));
    for var in CONNECTION_VARS {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home).kill_on_drop(true);
    cmd
}

fn as_operator(cmd: &mut tokio::process::Command, pki: &Pki, addr: SocketAddr) {
    cmd.arg("--addr")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(pki.ca_pem())
        .arg("--cert")
        .arg(pki.path("alice.pem"))
        .arg("--key")
        .arg(pki.path("alice.key"));
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: tokio::process::Command) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("drover finished in time")
        .expect("run drover");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn ca_and_cert_commands_work_locally() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = drover(dir.path());
    cmd.args(["ca", "init", "--dir"]).arg(dir.path().join("ca"));
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let ca = Ca::load(&dir.path().join("ca")).expect("load ca");
    assert!(
        r.stdout
            .contains(&format!("fingerprint: sha256:{}\n", ca.fingerprint())),
        "{}",
        r.stdout
    );

    let issue = |role: &str, name: &str| {
        let mut cmd = drover(dir.path());
        cmd.args(["cert", "issue", "--role", role, "--name", name, "--ca-dir"])
            .arg(dir.path().join("ca"))
            .arg("--out")
            .arg(dir.path().join("out"));
        cmd
    };
    let r = run(issue("operator", "alice")).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let pem = std::fs::read(dir.path().join("out/alice.pem")).expect("pem");
    let der = transport::certs_from_pem("c", &pem).expect("parse pem");
    let peer = transport::parse_cert(&der[0]).expect("parse cert");
    assert_eq!(peer.identity.to_string(), "operator/alice");
    let lifetime = peer
        .not_after
        .duration_since(peer.not_before)
        .expect("positive");
    assert!(lifetime >= Duration::from_secs(8760 * 3600), "{lifetime:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("out/alice.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let r = run(issue("operator", "alice")).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(dir.path().join("out/alice.pem")).expect("pem"),
        pem,
        "existing certificate untouched"
    );

    let r = run(issue("agent", "h1")).await;
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("drover token create"), "{}", r.stderr);
}

#[tokio::test]
async fn agents_lists_sorted_hosts_as_table_and_json() {
    let pki = Pki::new();
    let addr = serve(&pki).await;

    let mut cmd = drover(pki.dir.path());
    as_operator(&mut cmd, &pki, addr);
    cmd.arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", r.stdout);
    assert!(lines[0].starts_with("HOST "), "{}", r.stdout);
    assert!(lines[1].starts_with("h1 ") && lines[1].contains("connected"));
    assert!(lines[2].starts_with("h2 ") && lines[2].contains("lost"));
    assert!(lines[1].contains("1.0GiB/4.0GiB") && lines[1].contains("1/1 healthy"));

    let mut cmd = drover(pki.dir.path());
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["agents", "-o", "json"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v[0]["host_id"], "h1");
    assert_eq!(v[1]["status"], "lost");
    assert_eq!(v[0]["instances"][0]["health"], "healthy");
    assert_eq!(v[0]["last_seen"], "1970-01-01T00:00:00Z");
}

#[tokio::test]
async fn settings_come_from_the_config_file_and_environment() {
    let pki = Pki::new();
    let addr = serve(&pki).await;
    let home = tempfile::tempdir().expect("home");
    let cfg_dir = home.path().join(".config/drover");
    std::fs::create_dir_all(&cfg_dir).expect("mkdir");
    for f in ["alice.pem", "alice.key"] {
        std::fs::copy(pki.path(f), cfg_dir.join(f)).expect("copy");
    }
    std::fs::copy(pki.ca_pem(), cfg_dir.join("ca.pem")).expect("copy ca");
    // The file points at a dead address; the environment overrides it.
    std::fs::write(
        cfg_dir.join("cli.toml"),
        "addr = \"127.0.0.1:1\"\nca = \"ca.pem\"\ncert = \"alice.pem\"\nkey = \"alice.key\"\n",
    )
    .expect("write config");
    let mut cmd = drover(home.path());
    cmd.env("DROVER_ADDR", addr.to_string()).arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("h1"));

    std::fs::write(cfg_dir.join("cli.toml"), "addr = \"x:1\"\nserver = \"y\"\n").expect("write");
    let mut cmd = drover(home.path());
    cmd.arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("cli.toml: line 2"), "{}", r.stderr);
    assert!(r.stderr.contains("server"), "{}", r.stderr);
}

#[tokio::test]
async fn show_revoke_and_token_talk_to_the_coordinator() {
    let pki = Pki::new();
    let addr = serve(&pki).await;
    let home = pki.dir.path();

    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["agent", "show", "h1"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("web@h1"), "{}", r.stdout);

    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["agent", "show", "h9"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr.trim(), "error: no host `h9`");

    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["agent", "revoke", "h1"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("refused certificate serials: 4a, 4b"),
        "{}",
        r.stdout
    );

    let mut cmd = drover(home);
    cmd.arg("--addr")
        .arg(addr.to_string())
        .env("DROVER_CA", pki.ca_pem())
        .env("DROVER_CERT", pki.path("vic.pem"))
        .env("DROVER_KEY", pki.path("vic.key"))
        .args(["agent", "revoke", "h1"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("coordinator refused: viewers may not revoke hosts"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("viewer certificates can only read"),
        "{}",
        r.stderr
    );

    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["token", "create", "--ttl", "30m", "--label", "env=prod"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let fp = format!("sha256:{}", "ab".repeat(32));
    assert!(
        r.stdout.contains(&format!(
            "drover-agent enroll --coordinator {addr} --token tok-prod-1800 --ca-fingerprint {fp}"
        )),
        "{}",
        r.stdout
    );

    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["token", "create", "-o", "json"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"token": "tok--3600", "ca_fingerprint": fp, "expires_at": "2026-09-21T14:13:20Z"})
    );

    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["agents", "-l", "zone=nowhere"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("unknown zone `nowhere`"), "{}", r.stderr);
}

#[tokio::test]
async fn watch_prints_events_and_exits_0_on_ctrl_c() {
    let pki = Pki::new();
    let addr = serve(&pki).await;
    let mut cmd = drover(pki.dir.path());
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["agents", "--watch", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut events = Vec::new();
    while events.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("event in time")
            .expect("read")
            .expect("a line before EOF");
        let v: serde_json::Value = serde_json::from_str(&line).expect("json line");
        events.push(v);
    }
    assert_eq!(events[0]["event"], "snapshot");
    assert_eq!(events[0]["host"]["host_id"], "h2");
    assert_eq!(events[2]["event"], "synced");
    assert_eq!(events[3]["event"], "updated");
    assert_eq!(events[3]["host"]["status"], "connected");

    let pid = child.id().expect("pid");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// `drover rollout watch ID` as alice, given up on after `reconnect_for`.
async fn watch_rollout(pki: &Pki, addr: SocketAddr, id: &str, reconnect_for: &str) -> Run {
    let mut cmd = drover(pki.dir.path());
    as_operator(&mut cmd, pki, addr);
    cmd.args(["rollout", "watch", id, "--reconnect-for", reconnect_for]);
    run(cmd).await
}

#[tokio::test]
async fn rollout_watch_rides_through_a_coordinator_restart() {
    let pki = Pki::new();
    let addr = serve(&pki).await;

    let r = watch_rollout(&pki, addr, "r-restart", "1m").await;
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    for n in 1..=5 {
        let want = format!("  event {n}\n");
        assert_eq!(
            r.stdout.matches(&want).count(),
            1,
            "event {n} must be printed once:\n{}",
            r.stdout
        );
    }
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].ends_with("event 1"), "{}", r.stdout);
    assert!(lines[4].ends_with("event 5"), "{}", r.stdout);
    assert!(
        lines[5].starts_with("rollout r-restart succeeded"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains(&format!(
            "lost contact with the coordinator at {addr} (coordinator shutting down); \
             trying again for up to 1m"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("reconnected to the coordinator"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("certificate"), "{}", r.stderr);
}

#[tokio::test]
async fn rollout_watch_gives_up_with_exit_3_and_fails_at_once_on_answers() {
    let pki = Pki::new();
    let addr = serve(&pki).await;

    let r = watch_rollout(&pki, addr, "r-gone", "1s").await;
    assert_eq!(r.code, Some(3), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("event 1"), "{}", r.stdout);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: lost contact with the coordinator at {addr} while following rollout r-gone \
             and could not reach it again within 1s"
        )),
        "{}",
        r.stderr
    );
    assert!(
        last.ends_with("its outcome is unknown: see `drover rollout status r-gone`"),
        "{}",
        r.stderr
    );

    // 0s: no second try.
    let r = watch_rollout(&pki, addr, "r-gone", "0s").await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);

    // Answers are not connectivity: exit 1 at once, with today's words.
    let r = watch_rollout(&pki, addr, "r-missing", "1m").await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert_eq!(r.stderr.trim(), "error: no rollout `r-missing`");
    let r = watch_rollout(&pki, addr, "r-broken", "1m").await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("rollout state cannot be encoded"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("lost contact"), "{}", r.stderr);
}

#[tokio::test]
async fn ctrl_c_while_reconnecting_stops_the_watch_not_the_rollout() {
    let pki = Pki::new();
    let addr = serve(&pki).await;
    let mut cmd = drover(pki.dir.path());
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["rollout", "watch", "r-gone", "--reconnect-for", "10m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let lost = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.starts_with("lost contact with the coordinator") {
                return line;
            }
        }
        panic!("stderr ended before the watch lost contact");
    })
    .await
    .expect("lost contact in time");
    assert!(lost.ends_with("trying again for up to 10m"), "{lost}");

    let pid = child.id().expect("pid");
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        let mut rest = String::new();
        while let Some(line) = lines.next_line().await.expect("read") {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    })
    .await
    .expect("stderr closed in time");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exit in time")
        .expect("wait");
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        rest.contains("error: stopped watching rollout r-gone; it goes on without you"),
        "{rest}"
    );
}

#[tokio::test]
async fn local_problems_are_explained() {
    let pki = Pki::new();
    let addr = serve(&pki).await;
    let home = pki.dir.path();

    // Nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, dead_addr);
    cmd.arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .starts_with(&format!("error: cannot reach coordinator at {dead_addr}: ")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("is drover-coordinator running and is --addr right?")
    );

    // Expired certificate: refused locally, before dialling.
    pki.issue(Role::Operator, "brief", Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut cmd = drover(home);
    cmd.arg("--addr")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(pki.ca_pem())
        .arg("--cert")
        .arg(pki.path("brief.pem"))
        .arg("--key")
        .arg(pki.path("brief.key"))
        .arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(&format!(
            "certificate {} expired on ",
            pki.path("brief.pem").display()
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("issue a new one with `drover cert issue`")
    );

    // A certificate from another CA: the coordinator refuses it.
    let other = Pki::new();
    let mut cmd = drover(home);
    cmd.arg("--addr")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(pki.ca_pem())
        .arg("--cert")
        .arg(other.path("alice.pem"))
        .arg("--key")
        .arg(other.path("alice.key"))
        .arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("certificate"), "{}", r.stderr);

    // Trusting the wrong CA: the coordinator's certificate is rejected.
    let mut cmd = drover(home);
    cmd.arg("--addr")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(other.ca_pem())
        .arg("--cert")
        .arg(pki.path("alice.pem"))
        .arg("--key")
        .arg(pki.path("alice.key"))
        .arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("check that --ca is the drover CA"),
        "{}",
        r.stderr
    );

    // Bad local input exits 2 before any connection.
    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["agents", "-l", "zone in (a"]);
    assert_eq!(run(cmd).await.code, Some(2));
    let mut cmd = drover(home);
    as_operator(&mut cmd, &pki, addr);
    cmd.args(["token", "create", "--label", "env"]);
    assert_eq!(run(cmd).await.code, Some(2));
    let mut cmd = drover(home);
    cmd.arg("agents");
    let r = run(cmd).await;
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains("missing connection settings"),
        "{}",
        r.stderr
    );
}

/// `drover ARGS...` as alice against the fake.
async fn as_alice(pki: &Pki, addr: SocketAddr, args: &[&str]) -> Run {
    let mut cmd = drover(pki.dir.path());
    as_operator(&mut cmd, pki, addr);
    cmd.args(args);
    run(cmd).await
}

#[tokio::test]
async fn a_canarys_status_shows_where_its_traffic_is() {
    let pki = Pki::new();
    let addr = serve(&pki).await;

    let r = as_alice(&pki, addr, &["rollout", "status", "c-1"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for want in [
        "Strategy:     canary, steps 5%, 25%, 50%, 100%\n",
        "Traffic:      step 2/4 (25%) baking, 3 looks, ends in 12m — last: errors canary \
         3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass\n",
        "Traffic steps:\nSTEP   SHARE   RESULT ",
        "\n1      5%      passed   ",
        "\n2      25%     baking   -",
    ] {
        assert!(r.stdout.contains(want), "lacks {want:?}:\n{}", r.stdout);
    }

    let r = as_alice(&pki, addr, &["rollout", "status", "c-1", "-o", "json"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(
        v["traffic"]["steps"],
        serde_json::json!(["5%", "25%", "50%", "100%"])
    );
    assert_eq!(v["traffic"]["stage"], "baking");
    assert_eq!(v["traffic"]["results"][0]["verdict"], "passed");
}

#[tokio::test]
async fn analysis_lists_the_looks_and_refuses_what_is_not_a_canary() {
    let pki = Pki::new();
    let addr = serve(&pki).await;

    let r = as_alice(&pki, addr, &["rollout", "analysis", "c-1"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("STEP   SHARE   LOOK"), "{}", r.stdout);
    for want in [
        "1 (last)",
        "14:13:20",
        "3/612 (0.49%)",
        "9/2,390 (0.38%)",
        "41.5",
        "0.620",
        "pass",
    ] {
        assert!(lines[1].contains(want), "lacks {want:?}:\n{}", r.stdout);
    }
    assert_eq!(
        lines[3],
        "step 1 (5%), canary 1 vs baseline 5 instances, look 1: errors canary 3/612 (0.49%) \
         vs baseline 9/2,390 (0.38%): pass"
    );

    let r = as_alice(&pki, addr, &["rollout", "analysis", "c-1", "-o", "json"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("json");
    assert_eq!(v["id"], "c-1");
    assert_eq!(v["looks"][0]["share"], "5%");
    assert_eq!(v["looks"][0]["canary"]["errors"], 3);
    assert_eq!(
        v["looks"][0]["judgement"],
        serde_json::json!({"errors": {"p_value": 0.62}})
    );

    let r = as_alice(&pki, addr, &["rollout", "analysis", "r-7"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_eq!(
        r.stderr.trim(),
        "error: rollout r-7 is a rolling update: it has no analysis\n\
         hint: only canary and blue-green rollouts have an analysis; \
         `drover rollout status r-7` shows this one's strategy"
    );
    let r = as_alice(&pki, addr, &["rollout", "analysis", "nope"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert_eq!(r.stderr.trim(), "error: no rollout `nope`");
}

#[tokio::test]
async fn promote_moves_a_canary_on_and_says_why_it_cannot() {
    let pki = Pki::new();
    let addr = serve(&pki).await;

    let r = as_alice(&pki, addr, &["rollout", "promote", "c-1"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.stdout,
        "rollout c-1: running\ntraffic: step 3/4 (50%) updating — last: errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass\n"
    );

    let r = as_alice(&pki, addr, &["rollout", "promote", "r-7"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stderr
            .starts_with("error: rollout r-7 is not baking a traffic step\nhint: promote ends"),
        "{}",
        r.stderr
    );

    let mut cmd = drover(pki.dir.path());
    cmd.arg("--addr")
        .arg(addr.to_string())
        .arg("--ca")
        .arg(pki.ca_pem())
        .arg("--cert")
        .arg(pki.path("vic.pem"))
        .arg("--key")
        .arg(pki.path("vic.key"))
        .args(["rollout", "promote", "c-1"]);
    let r = run(cmd).await;
    assert_eq!(r.code, Some(1), "{}", r.stdout);
    assert!(
        r.stderr.contains("viewer certificates can only read"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn watching_a_canary_into_a_pipe_prints_each_new_step_once() {
    let pki = Pki::new();
    let addr = serve(&pki).await;

    let r = watch_rollout(&pki, addr, "c-watch", "1m").await;
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    let traffic: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("  traffic: "))
        .collect();
    assert_eq!(traffic.len(), 3, "{}", r.stdout);
    assert!(
        traffic[0].contains("  -  -  capacity 6/floor 5  traffic: step 1/4 (5%) baking"),
        "{}",
        r.stdout
    );
    assert!(
        traffic[1].contains("traffic: step 2/4 (25%) baking"),
        "{}",
        r.stdout
    );
    assert!(
        traffic[2].contains("traffic: step 4/4 (100%) passed"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .ends_with("traffic: 5% passed, 25% promoted, 50% passed, 100% passed\n"),
        "{}",
        r.stdout
    );
}

#[tokio::test]
async fn canary_flags_are_checked_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = ["rollout", "start", "--service", "web", "--version", "v2"];
    for (extra, want) in [
        (&["--steps", "5"][..], "--steps"),
        (
            &["--strategy", "canary", "--steps", "50%,25%,100%"],
            "steps[1]: expected shares that grow step by step, got 25% (set by --steps)",
        ),
        (
            &["--bake", "10m"],
            "bake: expected nothing for a rolling update",
        ),
        (
            &["--strategy", "canary", "--keep-old", "1h"],
            "keep_old: expected nothing unless strategy = blue-green, got a value (set by --keep-old)",
        ),
        (&["--strategy", "sideways"], "--strategy"),
    ] {
        let mut cmd = drover(dir.path());
        // No coordinator: a spec or flag mistake exits 2 before any call.
        cmd.args(["--addr", "127.0.0.1:9"]).args(start).args(extra);
        let r = run(cmd).await;
        assert_eq!(r.code, Some(2), "{extra:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "{extra:?}: {}", r.stderr);
    }
}
