//! Test support shared by the integration tests: a throwaway CA, a fake
//! coordinator over real mutual TLS that sends commands and serves
//! artifacts, archive builders, and waiting on conditions with deadlines.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use drover_agent::config::{Config, Signal};
use drover_agent::runtime::process;
use drover_agent::tls::{self, TlsFiles};
use drover_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use drover_proto::v1::command_update::Phase;
use drover_proto::v1::{
    AgentMessage, ArtifactChunk, Command, CommandUpdate, CoordinatorMessage, EnrollRequest,
    EnrollResponse, FetchArtifactRequest, HealthReport, Hello, InstanceStatus, Welcome,
    agent_message, coordinator_message,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

pub const DEADLINE: Duration = Duration::from_secs(20);

// ---- CA ----

pub struct Ca {
    pub pem: String,
    pub der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign");
        let pem = cert.pem();
        let der = cert.der().to_vec();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
            der,
        }
    }

    pub fn fingerprint(&self) -> String {
        drover_net::transport::fingerprint(&self.der)
    }

    fn leaf(
        &self,
        uri: &str,
        server: bool,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, uri);
        params
            .subject_alt_names
            .push(SanType::URI(uri.to_string().try_into().expect("uri")));
        if server {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        }
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params
    }

    /// (chain PEM with the CA, key PEM) for the coordinator.
    pub fn coordinator(&self) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let now = SystemTime::now();
        let params = self.leaf(
            "drover://coordinator/c1",
            true,
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (format!("{}{}", cert.pem(), self.pem), key.serialize_pem())
    }

    pub fn sign_csr(&self, csr_pem: &str, host: &str, lifetime: Duration) -> String {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).expect("csr");
        let now = SystemTime::now();
        let params = self.leaf(
            &format!("drover://agent/{host}"),
            false,
            now - Duration::from_millis(500),
            now + lifetime,
        );
        params
            .signed_by(&csr.public_key, &self.issuer)
            .expect("sign")
            .pem()
    }
}

/// Writes an enrolment straight to disk.
pub fn enrol_directly(ca: &Ca, data_dir: &Path, host: &str, lifetime: Duration) -> TlsFiles {
    let key = tls::make_csr(host).expect("csr");
    let cert = ca.sign_csr(&key.csr_pem, host, lifetime);
    let files = TlsFiles::new(data_dir);
    files
        .install(&key.key_pem, &cert, Some(&ca.pem))
        .expect("install");
    files
}

// ---- fake coordinator ----

#[derive(Debug)]
pub enum Event {
    Hello(Hello),
    Report(HealthReport),
    Update(CommandUpdate),
    Fetch { digest: String, offset: u64 },
}

/// How the fake serves artifact fetches.
#[derive(Debug, Clone, Default)]
pub struct FetchBehaviour {
    /// The first fetch fails with `unavailable` after this many bytes.
    pub cut_first_after: Option<u64>,
    /// Chunk size (default 64 KiB).
    pub chunk: Option<usize>,
    /// Pause before each chunk, to make a fetch slow enough to interrupt.
    pub chunk_delay: Option<Duration>,
}

#[derive(Default)]
struct Shared {
    session: Mutex<Option<mpsc::Sender<Result<CoordinatorMessage, Status>>>>,
    artifacts: Mutex<HashMap<String, Vec<u8>>>,
    behaviour: Mutex<FetchBehaviour>,
    fetches: Mutex<u32>,
    /// The fencing epoch sent in Welcome.
    epoch: Mutex<u64>,
    /// Set: this coordinator does not lead; it refuses every session with
    /// UNAVAILABLE and this address in `drover-leader` (None inside: no
    /// leader known).
    standby: Mutex<Option<Option<String>>>,
    /// Sessions refused as a standby.
    refused: Mutex<u32>,
}

#[derive(Clone)]
struct Fake {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
}

impl Fake {
    /// What a coordinator that does not lead answers every call with.
    fn refuse_as_standby(&self) -> Result<(), Status> {
        let standby = self.shared.standby.lock().expect("lock").clone();
        let Some(leader) = standby else {
            return Ok(());
        };
        *self.shared.refused.lock().expect("lock") += 1;
        let mut status = Status::unavailable("this coordinator is not the leader");
        if let Some(leader) = leader {
            status
                .metadata_mut()
                .insert("drover-leader", leader.parse().expect("metadata value"));
        }
        Err(status)
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Fake {
    async fn enroll(
        &self,
        _req: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        self.refuse_as_standby()?;
        Err(Status::unimplemented("not in this fake"))
    }

    type FetchArtifactStream = BoxStream<ArtifactChunk>;

    async fn fetch_artifact(
        &self,
        req: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        if req.peer_certs().is_none() {
            return Err(Status::unauthenticated("no client certificate"));
        }
        self.refuse_as_standby()?;
        let req = req.into_inner();
        let _ = self.events.send(Event::Fetch {
            digest: req.digest.clone(),
            offset: req.offset,
        });
        let bytes = self
            .shared
            .artifacts
            .lock()
            .expect("lock")
            .get(&req.digest)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no artifact {}", req.digest)))?;
        let size = bytes.len() as u64;
        if req.offset > size {
            return Err(Status::out_of_range("offset past the end"));
        }
        let behaviour = self.shared.behaviour.lock().expect("lock").clone();
        let first = {
            let mut n = self.shared.fetches.lock().expect("lock");
            *n += 1;
            *n == 1
        };
        let cut = if first {
            behaviour.cut_first_after
        } else {
            None
        };
        let chunk = behaviour.chunk.unwrap_or(64 * 1024);
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let mut offset = req.offset;
            while offset < size {
                if let Some(d) = behaviour.chunk_delay {
                    tokio::time::sleep(d).await;
                }
                let mut end = (offset + chunk as u64).min(size);
                if let Some(cut) = cut {
                    if offset >= cut {
                        let _ = tx.send(Err(Status::unavailable("cut by the test"))).await;
                        return;
                    }
                    end = end.min(cut);
                }
                let data = bytes[offset as usize..end as usize].to_vec().into();
                let msg = ArtifactChunk {
                    offset,
                    data,
                    size_bytes: size,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
                offset = end;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SessionStream = BoxStream<CoordinatorMessage>;

    async fn session(
        &self,
        req: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if req.peer_certs().is_none() {
            return Err(Status::unauthenticated("no client certificate"));
        }
        let standby = self.shared.standby.lock().expect("lock").clone();
        if let Some(leader) = standby {
            *self.shared.refused.lock().expect("lock") += 1;
            let mut status = Status::unavailable("this coordinator is not the leader");
            if let Some(leader) = leader {
                status
                    .metadata_mut()
                    .insert("drover-leader", leader.parse().expect("metadata value"));
            }
            return Err(status);
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
        let (tx, rx) = mpsc::channel(64);
        let epoch = *self.shared.epoch.lock().expect("lock");
        let _ = tx
            .send(Ok(CoordinatorMessage {
                msg: Some(coordinator_message::Msg::Welcome(Welcome {
                    coordinator_name: "c1".into(),
                    server_time_ms: 0,
                    epoch,
                })),
            }))
            .await;
        *self.shared.session.lock().expect("lock") = Some(tx);
        let _ = self.events.send(Event::Hello(hello));
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.msg {
                    Some(agent_message::Msg::Health(r)) => {
                        let _ = events.send(Event::Report(r));
                    }
                    Some(agent_message::Msg::CommandUpdate(u)) => {
                        let _ = events.send(Event::Update(u));
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

pub struct Coordinator {
    pub addr: String,
    events: mpsc::UnboundedReceiver<Event>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Every update seen, in order, whoever waited for what.
    pub updates: Vec<CommandUpdate>,
    pub fetches: Vec<(String, u64)>,
    pub last_report: Option<HealthReport>,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Coordinator {
    pub async fn start(ca: &Ca) -> Coordinator {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (chain, key) = ca.coordinator();
        let (tx, events) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let fake = Fake {
            shared: shared.clone(),
            events: tx,
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
            shared,
            stop,
            updates: Vec::new(),
            fetches: Vec::new(),
            last_report: None,
        }
    }

    /// Serves `bytes` under their sha256; returns the digest.
    pub fn add_artifact(&self, bytes: Vec<u8>) -> String {
        let digest = sha256_hex(&bytes);
        self.add_artifact_as(&digest, bytes);
        digest
    }

    /// Serves `bytes` under `digest`, whatever their real hash.
    pub fn add_artifact_as(&self, digest: &str, bytes: Vec<u8>) {
        self.shared
            .artifacts
            .lock()
            .expect("lock")
            .insert(digest.to_string(), bytes);
    }

    /// The epoch the next Welcome carries.
    pub fn set_epoch(&self, epoch: u64) {
        *self.shared.epoch.lock().expect("lock") = epoch;
    }

    /// Some: refuse sessions as a standby naming `leader` (or none);
    /// None: serve them.
    pub fn set_standby(&self, leader: Option<Option<String>>) {
        *self.shared.standby.lock().expect("lock") = leader;
    }

    /// Sessions refused as a standby so far.
    pub fn refused(&self) -> u32 {
        *self.shared.refused.lock().expect("lock")
    }

    /// Ends the current session from the coordinator's side.
    pub fn end_session(&self) {
        self.shared.session.lock().expect("lock").take();
    }

    /// Whether the fake holds a session (it may have ended on the agent's
    /// side without the fake knowing).
    pub fn has_session(&self) -> bool {
        self.shared.session.lock().expect("lock").is_some()
    }

    pub fn set_fetch(&self, b: FetchBehaviour) {
        *self.shared.behaviour.lock().expect("lock") = b;
        *self.shared.fetches.lock().expect("lock") = 0;
    }

    fn record(&mut self, e: &Event) {
        match e {
            Event::Update(u) => self.updates.push(u.clone()),
            Event::Fetch { digest, offset } => self.fetches.push((digest.clone(), *offset)),
            Event::Report(r) => self.last_report = Some(r.clone()),
            Event::Hello(_) => {}
        }
    }

    async fn next(&mut self, what: &str, deadline: Instant) -> Event {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.events.recv()).await {
            Ok(Some(e)) => {
                self.record(&e);
                e
            }
            _ => panic!(
                "timed out waiting for {what}; updates so far: {:#?}",
                self.updates
            ),
        }
    }

    /// Skips events until `pick` returns Some.
    pub async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        self.expect_within(what, DEADLINE, &mut pick).await
    }

    pub async fn expect_within<T>(
        &mut self,
        what: &str,
        within: Duration,
        pick: &mut impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let e = self.next(what, deadline).await;
            if let Some(t) = pick(&e) {
                return t;
            }
        }
    }

    pub async fn hello(&mut self) -> Hello {
        self.expect("Hello", |e| match e {
            Event::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a command on the current session.
    pub async fn send(&self, cmd: Command) {
        let tx = self
            .shared
            .session
            .lock()
            .expect("lock")
            .clone()
            .expect("a session is up");
        tx.send(Ok(CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Command(cmd)),
        }))
        .await
        .expect("session open");
    }

    /// Waits for the final update (succeeded, failed, timed out) of `id`.
    pub async fn result(&mut self, id: &str) -> CommandUpdate {
        let id = id.to_string();
        self.expect(&format!("the result of {id}"), |e| match e {
            Event::Update(u) if u.command_id == id && is_final(u) => Some(u.clone()),
            _ => None,
        })
        .await
    }

    /// Sends `cmd` and waits for its result.
    pub async fn run(&mut self, cmd: Command) -> CommandUpdate {
        let id = cmd.id.clone();
        self.send(cmd).await;
        self.result(&id).await
    }

    /// Waits for a report whose instance `name` satisfies `pred`.
    pub async fn status_where(
        &mut self,
        what: &str,
        name: &str,
        pred: impl Fn(&InstanceStatus) -> bool,
    ) -> InstanceStatus {
        if let Some(s) = self
            .last_report
            .as_ref()
            .and_then(|r| r.instances.iter().find(|i| i.name == name))
            .filter(|s| pred(s))
        {
            return s.clone();
        }
        self.expect(what, |e| match e {
            Event::Report(r) => r
                .instances
                .iter()
                .find(|i| i.name == name)
                .filter(|s| pred(s))
                .cloned(),
            _ => None,
        })
        .await
    }

    /// All updates seen for `id`, in order.
    pub fn updates_for(&self, id: &str) -> Vec<CommandUpdate> {
        self.updates
            .iter()
            .filter(|u| u.command_id == id)
            .cloned()
            .collect()
    }
}

pub fn is_final(u: &CommandUpdate) -> bool {
    matches!(
        u.phase(),
        Phase::Succeeded | Phase::Failed | Phase::TimedOut
    )
}

// ---- commands ----

pub fn command(id: &str, instance: &str, kind: drover_proto::v1::command::Kind) -> Command {
    Command {
        id: id.to_string(),
        instance: instance.to_string(),
        timeout_ms: 20_000,
        epoch: 0,
        traceparent: String::new(),
        kind: Some(kind),
    }
}

pub mod kinds {
    use drover_proto::v1::command::Kind;
    use drover_proto::v1::{
        DeployCommand, DrainCommand, Release, StartCommand, StopCommand, UndrainCommand,
        VerifyCommand,
    };

    pub fn drain() -> Kind {
        Kind::Drain(DrainCommand {})
    }
    pub fn undrain() -> Kind {
        Kind::Undrain(UndrainCommand {})
    }
    pub fn stop() -> Kind {
        Kind::Stop(StopCommand {})
    }
    pub fn start() -> Kind {
        Kind::Start(StartCommand {})
    }
    pub fn verify(min_ms: u32, deadline_ms: u32) -> Kind {
        Kind::Verify(VerifyCommand {
            min_healthy_time_ms: min_ms,
            healthy_deadline_ms: deadline_ms,
        })
    }
    pub fn deploy(version: &str, digest: &str) -> Kind {
        Kind::Deploy(DeployCommand {
            release: Some(Release {
                version: version.into(),
                digest: digest.into(),
            }),
        })
    }
}

// ---- agent ----

pub fn config_text(data_dir: &Path, coordinator: &str, instances: &str) -> String {
    format!(
        "host_id = \"h1\"\ndata_dir = \"{}\"\ncoordinators = [\"{coordinator}\"]\nreport_interval = \"200ms\"\n{instances}",
        data_dir.display()
    )
}

pub fn config(data_dir: &Path, coordinator: &str, instances: &str) -> Config {
    Config::parse(
        &config_text(data_dir, coordinator, instances),
        Path::new("agent.toml"),
    )
    .expect("valid test config")
}

/// An agent running in this process.
pub struct Agent {
    pub cfg: Config,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<Result<(), drover_agent::AgentError>>>,
}

impl Agent {
    pub fn start(cfg: Config) -> Agent {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(drover_agent::run(cfg.clone(), shutdown.clone()));
        Agent {
            cfg,
            shutdown,
            task: Some(task),
        }
    }

    /// Graceful stop; instances keep running.
    pub async fn stop(mut self) -> Config {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let r = tokio::time::timeout(DEADLINE, task)
                .await
                .expect("agent stops")
                .expect("join");
            assert!(r.is_ok(), "{r:?}");
        }
        self.cfg.clone()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Kills the instances' process groups when the test ends, pass or fail.
pub struct KillInstances(pub Vec<PathBuf>);

impl KillInstances {
    pub fn of(cfg: &Config) -> KillInstances {
        KillInstances(
            cfg.instances
                .iter()
                .map(|i| cfg.instance_dir(&i.name))
                .collect(),
        )
    }
}

impl Drop for KillInstances {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Some(pid) = process::read_pid(dir) {
                let _ = process::kill_group(pid, Signal::KILL);
            }
        }
    }
}

// ---- archives ----

/// One archive entry; paths and link targets are written raw, so hostile
/// archives can be built too.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Exec(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
    Fifo(&'a str),
}

pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (path, kind, data, link, mode): (&str, tar::EntryType, &[u8], Option<&str>, u32) =
            match e {
                Entry::File(p, d) => (p, tar::EntryType::Regular, d, None, 0o644),
                Entry::Exec(p, d) => (p, tar::EntryType::Regular, d, None, 0o755),
                Entry::Dir(p) => (p, tar::EntryType::Directory, &[], None, 0o755),
                Entry::Symlink(p, t) => (p, tar::EntryType::Symlink, &[], Some(t), 0o777),
                Entry::HardLink(p, t) => (p, tar::EntryType::Link, &[], Some(t), 0o644),
                Entry::CharDevice(p) => (p, tar::EntryType::Char, &[], None, 0o644),
                Entry::Fifo(p) => (p, tar::EntryType::Fifo, &[], None, 0o644),
            };
        let name = &mut h.as_old_mut().name;
        assert!(path.len() < name.len(), "test path too long");
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            h.set_link_name_literal(t).expect("link name");
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("finish tar")
}

pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// Names in `<deploy_dir>/releases`, sorted.
pub fn releases(deploy_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(deploy_dir.join("releases"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Where `<deploy_dir>/current` points, as written.
pub fn current(deploy_dir: &Path) -> Option<String> {
    std::fs::read_link(deploy_dir.join("current"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}
