//! The real `drover` binary against several fake coordinators over real
//! mutual TLS (HA): the addresses are tried in order, a coordinator that
//! does not lead sends the call to the leader it names, and `rollout
//! watch` follows a failover to another coordinator.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_model::pki::{self, Ca};
use drover_proto::identity::{Identity, Role};
use drover_proto::v1::control_service_server::{ControlService, ControlServiceServer};
use drover_proto::v1::push_artifact_request::Msg;
use drover_proto::v1::{
    Artifact, CreateTokenRequest, CreateTokenResponse, GetHostRequest, Host, HostEvent, HostStatus,
    ListHostsRequest, ListHostsResponse, PushArtifactRequest, RevokeHostRequest,
    RevokeHostResponse, RolloutUpdate, WatchHostsRequest,
};
use tempfile::TempDir;
use tokio::sync::Notify;
use tonic::transport::{Certificate, Identity as TlsIdentity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const CONNECTION_VARS: [&str; 5] = [
    "DROVER_ADDR",
    "DROVER_CA",
    "DROVER_CERT",
    "DROVER_KEY",
    "DROVER_CONFIG",
];

struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(&dir.path().join("ca"), "test").expect("ca init");
        for (role, name) in [(Role::Coordinator, "c1"), (Role::Operator, "alice")] {
            let id = Identity::new(role, name).expect("identity");
            let issued = ca
                .issue(&id, &["127.0.0.1".into()], Duration::from_secs(3600))
                .expect("issue");
            let path = |ext: &str| dir.path().join(format!("{name}.{ext}"));
            pki::write_new(&path("pem"), issued.cert_pem.as_bytes(), false).expect("cert");
            pki::write_new(&path("key"), issued.key_pem.as_bytes(), true).expect("key");
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca").join("ca.pem")
    }
}

/// One fake coordinator: the leader, or a standby that refuses every call
/// as the contract says.
#[derive(Clone, Default)]
struct Fake {
    name: String,
    /// Some: does not lead; answers UNAVAILABLE naming this leader (None
    /// inside: no leader known).
    standby: Arc<Mutex<Option<Option<String>>>>,
    /// Calls received, refused or not.
    calls: Arc<AtomicUsize>,
    /// Artifact bytes received by the last push.
    pushed: Arc<Mutex<Vec<u8>>>,
    /// Notified when this coordinator is to go away (after a watch).
    stop: Arc<Notify>,
}

impl Fake {
    fn gate(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let Some(leader) = self.standby.lock().expect("lock").clone() else {
            return Ok(());
        };
        let mut status =
            Status::unavailable(format!("coordinator {} is not the leader", self.name));
        if let Some(leader) = leader {
            status
                .metadata_mut()
                .insert("drover-leader", leader.parse().expect("metadata"));
        }
        Err(status)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn rollout_update(id: &str, phase: &str, from: u32, to: u32) -> Result<RolloutUpdate, Status> {
    Ok(RolloutUpdate {
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
        events: (from..=to)
            .map(|n| drover_proto::v1::RolloutEvent {
                at_ms: 1_790_000_000_000 + i64::from(n) * 1000,
                instance: format!("web@h{n}"),
                step: drover_proto::v1::InstanceStep::Done as i32,
                step_text: "done".into(),
                capacity: 2,
                floor: 2,
                message: format!("event {n}"),
            })
            .collect(),
    })
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for Fake {
    async fn list_hosts(
        &self,
        _req: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        self.gate()?;
        Ok(Response::new(ListHostsResponse {
            hosts: vec![Host {
                host_id: format!("seen-by-{}", self.name),
                status: HostStatus::Connected as i32,
                ..Host::default()
            }],
        }))
    }

    async fn get_host(&self, _req: Request<GetHostRequest>) -> Result<Response<Host>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    type WatchHostsStream = Stream<HostEvent>;

    async fn watch_hosts(
        &self,
        _req: Request<WatchHostsRequest>,
    ) -> Result<Response<Self::WatchHostsStream>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    async fn create_token(
        &self,
        _req: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    async fn revoke_host(
        &self,
        _req: Request<RevokeHostRequest>,
    ) -> Result<Response<RevokeHostResponse>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    async fn push_artifact(
        &self,
        req: Request<Streaming<PushArtifactRequest>>,
    ) -> Result<Response<Artifact>, Status> {
        self.gate()?;
        let mut stream = req.into_inner();
        let mut header = None;
        let mut bytes = Vec::new();
        while let Some(msg) = stream.message().await? {
            match msg.msg {
                Some(Msg::Header(h)) => header = Some(h),
                Some(Msg::Chunk(c)) => bytes.extend_from_slice(&c),
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        let size_bytes = bytes.len() as u64;
        *self.pushed.lock().expect("lock") = bytes;
        Ok(Response::new(Artifact {
            service: header.service,
            version: header.version,
            digest: header.expected_digest,
            size_bytes,
            pushed_at_ms: 1_790_000_000_000,
            pushed_by: "operator/alice".into(),
        }))
    }

    async fn list_artifacts(
        &self,
        _req: Request<drover_proto::v1::ListArtifactsRequest>,
    ) -> Result<Response<drover_proto::v1::ListArtifactsResponse>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    async fn start_rollout(
        &self,
        _req: Request<drover_proto::v1::StartRolloutRequest>,
    ) -> Result<Response<drover_proto::v1::StartRolloutResponse>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    async fn get_rollout(
        &self,
        _req: Request<drover_proto::v1::GetRolloutRequest>,
    ) -> Result<Response<drover_proto::v1::Rollout>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    async fn get_rollout_analysis(
        &self,
        _req: Request<drover_proto::v1::GetRolloutAnalysisRequest>,
    ) -> Result<Response<drover_proto::v1::RolloutAnalysis>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    async fn list_rollouts(
        &self,
        _req: Request<drover_proto::v1::ListRolloutsRequest>,
    ) -> Result<Response<drover_proto::v1::ListRolloutsResponse>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }

    type WatchRolloutStream = Stream<RolloutUpdate>;

    /// The first leader streams two events and goes away (its stream cut,
    /// its port closed); the one that takes over has the whole history.
    async fn watch_rollout(
        &self,
        req: Request<drover_proto::v1::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        self.gate()?;
        let id = req.into_inner().id;
        let updates = if self.name == "old" {
            self.stop.notify_one();
            vec![
                rollout_update(&id, "running", 1, 2),
                Err(Status::unavailable("coordinator shutting down")),
            ]
        } else {
            vec![
                rollout_update(&id, "running", 1, 3),
                rollout_update(&id, "succeeded", 4, 4),
            ]
        };
        Ok(Response::new(Box::pin(futures::stream::iter(updates))))
    }

    async fn act_on_rollout(
        &self,
        _req: Request<drover_proto::v1::RolloutActionRequest>,
    ) -> Result<Response<drover_proto::v1::Rollout>, Status> {
        self.gate()?;
        Err(Status::unimplemented("not faked"))
    }
}

/// Serves `fake` on a loopback port until its `stop` is notified.
async fn serve(pki: &Pki, fake: Fake) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let read = |p: PathBuf| std::fs::read(p).expect("read");
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(
            read(pki.path("c1.pem")),
            read(pki.path("c1.key")),
        ))
        .client_ca_root(Certificate::from_pem(read(pki.ca_pem())));
    let stop = fake.stop.clone();
    let server = Server::builder()
        .tls_config(tls)
        .expect("tls config")
        .add_service(ControlServiceServer::new(fake))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move { stop.notified().await },
        );
    tokio::spawn(server);
    addr
}

fn fake(name: &str, standby: Option<Option<String>>) -> Fake {
    Fake {
        name: name.into(),
        standby: Arc::new(Mutex::new(standby)),
        ..Fake::default()
    }
}

/// A loopback address nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// `drover ARGS` as alice, with `DROVER_ADDR=addrs` and nothing else set.
async fn drover(
    pki: &Pki,
    home: &Path,
    addrs: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"));
    for var in CONNECTION_VARS {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("DROVER_ADDR", addrs)
        .arg("--ca")
        .arg(pki.ca_pem())
        .arg("--cert")
        .arg(pki.path("alice.pem"))
        .arg("--key")
        .arg(pki.path("alice.key"))
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("drover finished in time")
        .expect("run drover");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_command_reaches_the_leader_through_a_standby_listed_first() {
    let pki = Pki::new();
    let leader = fake("leader", None);
    let leader_addr = serve(&pki, leader.clone()).await;
    let standby = fake("standby", Some(Some(leader_addr.clone())));
    let standby_addr = serve(&pki, standby.clone()).await;

    let (code, stdout, stderr) = drover(
        &pki,
        pki.dir.path(),
        &format!("{standby_addr},{leader_addr}"),
        &["agents"],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("seen-by-leader"), "{stdout}");
    assert_eq!(standby.calls(), 1, "asked the standby once");
    assert_eq!(leader.calls(), 1);

    // Only the standby listed: its answer alone leads to the leader.
    let (code, stdout, stderr) = drover(&pki, pki.dir.path(), &standby_addr, &["agents"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("seen-by-leader"), "{stdout}");
}

#[tokio::test]
async fn the_next_address_is_used_when_the_first_is_dead() {
    let pki = Pki::new();
    let leader = fake("leader", None);
    let leader_addr = serve(&pki, leader.clone()).await;
    let (code, stdout, stderr) = drover(
        &pki,
        pki.dir.path(),
        &format!("{}, {leader_addr}", dead_addr()),
        &["agents"],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("seen-by-leader"), "{stdout}");

    // Every address dead: each is named with its reason.
    let (a, b) = (dead_addr(), dead_addr());
    let (code, _, stderr) = drover(&pki, pki.dir.path(), &format!("{a},{b}"), &["agents"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach coordinator at {a}, {b}: {a}: ")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_standby_that_knows_no_leader_says_so() {
    let pki = Pki::new();
    let standby = fake("standby", Some(None));
    let addr = serve(&pki, standby).await;
    let (code, _, stderr) = drover(&pki, pki.dir.path(), &addr, &["agents"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("coordinator at {addr} does not lead")),
        "{stderr}"
    );
    assert!(stderr.contains("knows no leader yet"), "{stderr}");
}

#[tokio::test]
async fn artifact_push_through_a_standby_reaches_the_leader_small_or_large() {
    let pki = Pki::new();
    let leader = fake("leader", None);
    let leader_addr = serve(&pki, leader.clone()).await;
    let standby = fake("standby", Some(Some(leader_addr.clone())));
    let standby_addr = serve(&pki, standby.clone()).await;

    // A small archive is resent as it was; a large one (over the size kept
    // for resending) is uploaded again.
    for (n, size) in [(1, 1000usize), (2, 3 << 20)] {
        let mut b = tar::Builder::new(Vec::new());
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut h = tar::Header::new_gnu();
        h.set_path("./blob").expect("path");
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &data[..]).expect("append");
        let archive = b.into_inner().expect("tar");
        let file = pki.path(&format!("web-{n}.tar"));
        std::fs::write(&file, &archive).expect("write");
        let file = file.display().to_string();
        let version = format!("v{n}");
        let (code, stdout, stderr) = drover(
            &pki,
            pki.dir.path(),
            &standby_addr,
            &[
                "artifact",
                "push",
                &file,
                "--service",
                "web",
                "--version",
                &version,
            ],
        )
        .await;
        assert_eq!(code, Some(0), "{stdout}\n{stderr}");
        assert!(
            stdout.starts_with(&format!("pushed web {version}")),
            "{stdout}"
        );
        assert_eq!(
            *leader.pushed.lock().expect("lock"),
            archive,
            "the leader got every byte"
        );
    }
}

#[tokio::test]
async fn rollout_watch_follows_a_failover_to_another_coordinator() {
    let pki = Pki::new();
    let old = fake("old", None);
    let old_addr = serve(&pki, old.clone()).await;
    let new = fake("new", None);
    let new_addr = serve(&pki, new.clone()).await;

    let (code, stdout, stderr) = drover(
        &pki,
        pki.dir.path(),
        &format!("{old_addr},{new_addr}"),
        &["rollout", "watch", "r-ha", "--reconnect-for", "30s"],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    for n in 1..=4 {
        assert_eq!(
            stdout.matches(&format!("  event {n}\n")).count(),
            1,
            "event {n} printed once:\n{stdout}"
        );
    }
    assert!(stdout.contains("rollout r-ha succeeded"), "{stdout}");
    assert!(
        stderr.contains(&format!("lost contact with the coordinator at {old_addr}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("reconnected to the coordinator at {new_addr}")),
        "{stderr}"
    );
    assert!(new.calls() >= 1);
}
