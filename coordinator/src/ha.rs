//! Highly available coordinators on etcd: one leader at a time, elected
//! through etcd's election API on a lease, fenced by its epoch.
//!
//! A coordinator on `[store] type = "etcd"` starts as a **standby**: it
//! serves its gRPC port, answering every call with UNAVAILABLE and the
//! leader's address in the `drover-leader` metadata (agents and the CLI
//! follow it), and campaigns. Once elected it stops the standby server and
//! starts as a single coordinator does, from the store as the last leader
//! left it: the registry, the rollouts (resumed as after a restart), the
//! tokens and the artifacts' records. It holds nothing it had to keep
//! warm: everything is read at the takeover.
//!
//! **Epoch.** The leader's epoch is the create revision of its election key:
//! it grows with every new leader. It travels with every command and every
//! Welcome to agents, which refuse commands from a lower one; and every
//! write the leader makes compares its election key's revision in the same
//! etcd transaction ([`FencedStore`]), so a deposed leader can write nothing.
//!
//! **Losing the lease.** The lease is kept alive every third of its TTL. A
//! leader that has had no successful keep-alive for three quarters of the
//! TTL (etcd cannot be reached, the process was paused) stops acting: it
//! exits at once with status 75, before etcd lets the lease expire and
//! another coordinator takes over. Its supervisor (systemd `Restart=`)
//! starts it again as a standby. A graceful stop (SIGTERM) resigns, so a
//! standby takes over at once.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, LeaderKey};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{EtcdStore, Guard, Store, StoreError};

/// The exit status of a leader that lost its lease.
pub const EXIT_LOST_LEADERSHIP: u8 = 75;

/// The metadata key naming the leader's gRPC address in a standby's answer.
pub const LEADER_METADATA: &str = "drover-leader";

/// One coordinator, as it announces itself in the election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// Where agents and operators reach it: `HOST:PORT`.
    pub grpc: String,
    /// Unix milliseconds when it became leader (0 while it campaigns).
    #[serde(default)]
    pub since_ms: i64,
}

/// Why the election could not go on.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("etcd election: {0}")]
    Etcd(String),
}

fn etcd_err(what: &str, e: etcd_client::Error) -> HaError {
    HaError::Etcd(format!("{what}: {e}"))
}

/// What a coordinator knows of the election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No election: one coordinator on redb.
    Single,
    /// It leads, with this fencing epoch.
    Leader { epoch: u64 },
    /// Another coordinator leads (if known); `trouble`: why the campaign
    /// cannot get through to etcd, while it cannot.
    Standby {
        leader: Option<Member>,
        trouble: Option<String>,
    },
}

/// The leader's hold on the election.
pub struct Leadership {
    pub epoch: u64,
    /// This coordinator's member record, and where it lives.
    member: Member,
    member_key: Vec<u8>,
    key: LeaderKey,
    lease: i64,
    client: Client,
    /// Cancelled when the lease is lost (or could not be kept alive).
    pub lost: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("epoch", &self.epoch)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The guard every write of this leader carries.
    pub fn guard(&self) -> Guard {
        Guard {
            key: self.key.key().to_vec(),
            revision: self.key.rev(),
        }
    }

    /// Records in its member entry when this coordinator took the lead
    /// (for `drover coordinators`). Best effort.
    pub async fn announce(&self) {
        let mut me = self.member.clone();
        me.since_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let value = serde_json::to_vec(&me).unwrap_or_default();
        let mut kv = self.client.kv_client();
        let put = kv.put(
            self.member_key.clone(),
            value,
            Some(etcd_client::PutOptions::new().with_lease(self.lease)),
        );
        if let Err(e) = put.await {
            tracing::warn!(error = %e, "could not record when this coordinator took the lead");
        }
    }

    /// Hands over: deletes the election key (a standby takes over at
    /// once) and revokes the lease. Best effort, bounded by `within`.
    pub async fn resign(self, within: Duration) {
        self.keeper.abort();
        let key = self.key.clone();
        let mut election = self.client.election_client();
        let mut lease = self.client.lease_client();
        let done = tokio::time::timeout(within, async {
            let resigned = election
                .resign(Some(etcd_client::ResignOptions::new().with_leader(key)))
                .await;
            let revoked = lease.revoke(self.lease).await;
            (resigned, revoked)
        })
        .await;
        match done {
            Ok((Ok(_), _)) => tracing::info!(epoch = self.epoch, "resigned the leadership"),
            Ok((Err(e), _)) => {
                tracing::warn!(error = %e, "resigning the leadership failed; the lease will expire")
            }
            Err(_) => tracing::warn!("resigning the leadership timed out; the lease will expire"),
        }
        self.lost.cancel();
    }
}

/// The election of one drover installation (one key prefix).
pub struct Election {
    client: Client,
    /// The election's name: `<prefix>leader`.
    name: Vec<u8>,
    /// Where this coordinator is listed, on its lease: `<prefix>members/<name>`.
    member_key: Vec<u8>,
    me: Member,
    ttl: Duration,
}

impl Election {
    pub fn new(store: &EtcdStore, me: Member, ttl: Duration) -> Election {
        Election {
            client: store.client(),
            name: format!("{}leader", store.prefix()).into_bytes(),
            member_key: format!("{}{}{}", store.prefix(), crate::replicate::MEMBERS, me.name)
                .into_bytes(),
            me,
            ttl,
        }
    }

    /// The current leader, as etcd says.
    pub async fn leader(&self) -> Result<Option<Member>, HaError> {
        let mut election = self.client.election_client();
        match election.leader(self.name.clone()).await {
            Ok(resp) => Ok(resp
                .kv()
                .and_then(|kv| serde_json::from_slice(kv.value()).ok())),
            // "election: no leader" is an answer, not a failure.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => Ok(None),
            Err(e) => Err(etcd_err("read the leader", e)),
        }
    }

    /// When the recorded leader is this very coordinator (same name, same
    /// address, which this process now holds, so the one that led is
    /// gone: it crashed or was killed), revokes its lease so that the
    /// election need not wait for it to expire. `true` when it did.
    pub async fn clear_own_stale_lead(&self) -> Result<bool, HaError> {
        // etcd-client may try a dead member first: a few tries.
        let mut last = None;
        for _ in 0..5 {
            match self.clear_own_stale_lead_once().await {
                Ok(done) => return Ok(done),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last.unwrap_or_else(|| HaError::Etcd("no answer".into())))
    }

    async fn clear_own_stale_lead_once(&self) -> Result<bool, HaError> {
        let mut election = self.client.election_client();
        let resp = match election.leader(self.name.clone()).await {
            Ok(r) => r,
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("no leader") => {
                return Ok(false);
            }
            Err(e) => return Err(etcd_err("read the leader", e)),
        };
        let Some(kv) = resp.kv() else {
            return Ok(false);
        };
        let Ok(leader) = serde_json::from_slice::<Member>(kv.value()) else {
            return Ok(false);
        };
        if leader.name != self.me.name || leader.grpc != self.me.grpc {
            return Ok(false);
        }
        let lease = kv.lease();
        let mut leases = self.client.lease_client();
        leases
            .revoke(lease)
            .await
            .map_err(|e| etcd_err("revoke the lease of this coordinator's previous run", e))?;
        tracing::info!(
            lease,
            "the recorded leader is this coordinator's previous run (gone: this process holds its address); its lease is revoked"
        );
        Ok(true)
    }

    /// Campaigns until elected (`Some`) or `stop` (`None`), publishing the
    /// leader it sees meanwhile on `seen`. A failure of etcd is retried
    /// with a pause: a standby waits for etcd as long as it takes.
    pub async fn campaign(
        &self,
        seen: &watch::Sender<Role>,
        stop: &CancellationToken,
    ) -> Option<Leadership> {
        let mut pause = Duration::from_millis(200);
        loop {
            if stop.is_cancelled() {
                return None;
            }
            match self.campaign_once(seen, stop).await {
                Ok(Some(l)) => return Some(l),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "campaign failed; trying again");
                    seen.send_replace(Role::Standby {
                        leader: None,
                        trouble: Some(e.to_string()),
                    });
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(self.ttl);
                }
            }
        }
    }

    async fn campaign_once(
        &self,
        seen: &watch::Sender<Role>,
        stop: &CancellationToken,
    ) -> Result<Option<Leadership>, HaError> {
        let ttl_secs = i64::try_from(self.ttl.as_secs().max(2)).unwrap_or(10);
        let mut leases = self.client.lease_client();
        // The lease's TTL runs from when etcd grants it, which is after
        // this instant: counting from here errs on the safe side.
        let asked = tokio::time::Instant::now();
        let lease = leases
            .grant(ttl_secs, None)
            .await
            .map_err(|e| etcd_err("grant a lease", e))?
            .id();
        // Listed among the members for as long as the lease holds.
        let value = serde_json::to_vec(&self.me).unwrap_or_default();
        self.client
            .kv_client()
            .put(
                self.member_key.clone(),
                value,
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| etcd_err("list this coordinator among the members", e))?;
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_alive(
            self.client.clone(),
            lease,
            self.ttl,
            lost.clone(),
            asked,
        ));
        // While campaigning: who leads, for the redirects.
        let watcher = tokio::spawn(watch_leader(
            self.client.clone(),
            self.name.clone(),
            seen.clone(),
            stop.clone(),
        ));
        let mut election = self.client.election_client();
        let value = serde_json::to_vec(&self.me).unwrap_or_default();
        let won = tokio::select! {
            () = stop.cancelled() => None,
            () = lost.cancelled() => {
                watcher.abort();
                keeper.abort();
                return Err(HaError::Etcd("the campaign's lease was lost".into()));
            }
            r = election.campaign(self.name.clone(), value, lease) => Some(r),
        };
        watcher.abort();
        let Some(won) = won else {
            keeper.abort();
            let _ = tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease)).await;
            return Ok(None);
        };
        let resp = match won {
            Ok(r) => r,
            Err(e) => {
                keeper.abort();
                return Err(etcd_err("campaign", e));
            }
        };
        let Some(key) = resp.leader().cloned() else {
            keeper.abort();
            return Err(HaError::Etcd(
                "campaign answered without a leader key".into(),
            ));
        };
        let epoch = u64::try_from(key.rev()).unwrap_or(0);
        Ok(Some(Leadership {
            epoch,
            member: self.me.clone(),
            member_key: self.member_key.clone(),
            key,
            lease,
            client: self.client.clone(),
            lost,
            keeper,
        }))
    }
}

/// Keeps `lease` alive every third of `ttl`; cancels `lost` once no
/// keep-alive succeeded for three quarters of it, or etcd says the lease is
/// gone. Three quarters: the leader stops before etcd can let the lease
/// expire and elect another. A renewal counts from when it was sent, not
/// when etcd's answer came back: etcd renewed the lease somewhere between
/// the two, so a slow answer cannot stretch the leader's belief past the
/// lease. `granted` is when the lease was asked for.
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: Duration,
    lost: CancellationToken,
    granted: tokio::time::Instant,
) {
    let every = ttl / 3;
    let give_up = ttl * 3 / 4;
    let mut last_ok = granted;
    let mut leases = client.lease_client();
    let mut stream = None;
    loop {
        if last_ok.elapsed() >= give_up {
            if fault_ignore_lease_loss() {
                tracing::warn!(
                    lease,
                    "no lease keep-alive for {give_up:?}, ignored: \
                     DROVER_FAULT_IGNORE_LEASE_LOSS is set (fault injection for tests)"
                );
                return;
            }
            tracing::error!(
                lease,
                "no lease keep-alive for {give_up:?}: the leadership is lost"
            );
            lost.cancel();
            return;
        }
        if stream.is_none() {
            let left = give_up.saturating_sub(last_ok.elapsed());
            if let Ok(Ok(s)) = tokio::time::timeout(left, leases.keep_alive(lease)).await {
                stream = Some(s);
            }
        }
        if let Some((keeper, answers)) = stream.as_mut() {
            let left = give_up.saturating_sub(last_ok.elapsed()).min(every);
            let asked = tokio::time::Instant::now();
            let sent = keeper.keep_alive().await.is_ok();
            let answer = if sent {
                tokio::time::timeout(left, answers.message()).await.ok()
            } else {
                None
            };
            match answer {
                Some(Ok(Some(r))) if r.ttl() > 0 => last_ok = asked,
                Some(Ok(Some(_))) => {
                    tracing::error!(lease, "etcd says the lease expired: the leadership is lost");
                    lost.cancel();
                    return;
                }
                // A broken stream is opened again on the next round.
                _ => stream = None,
            }
        }
        let left = give_up.saturating_sub(last_ok.elapsed());
        tokio::time::sleep(every.min(left).max(Duration::from_millis(50))).await;
    }
}

/// Publishes the leader etcd reports, until `stop` or the task is aborted.
async fn watch_leader(
    client: Client,
    name: Vec<u8>,
    seen: watch::Sender<Role>,
    stop: CancellationToken,
) {
    let mut election = client.election_client();
    loop {
        if stop.is_cancelled() {
            return;
        }
        match election.observe(name.clone()).await {
            Ok(mut stream) => loop {
                let next = tokio::select! {
                    () = stop.cancelled() => return,
                    m = stream.message() => m,
                };
                match next {
                    Ok(Some(resp)) => {
                        let leader = resp
                            .kv()
                            .and_then(|kv| serde_json::from_slice::<Member>(kv.value()).ok());
                        seen.send_replace(Role::Standby {
                            leader,
                            trouble: None,
                        });
                    }
                    _ => break,
                }
            },
            Err(e) => tracing::debug!(error = %e, "observing the election failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Fault injection for the fencing tests, honoured by debug builds only:
/// with `DROVER_FAULT_IGNORE_LEASE_LOSS=1` a leader's lease watchdog never
/// gives up, as if its clock or its process had stalled, so a test can show
/// that etcd and the agents still refuse it once another leads. Release
/// builds ignore it.
fn fault_ignore_lease_loss() -> bool {
    cfg!(debug_assertions)
        && std::env::var_os("DROVER_FAULT_IGNORE_LEASE_LOSS").is_some_and(|v| v == "1")
}

/// The leader's store: every write compares the leader's election key in
/// the same etcd transaction, so a deposed leader writes nothing
/// ([`StoreError::Fenced`]). Reads go straight to etcd. A refused write
/// means another coordinator leads (or may): it cancels `lost`, so the
/// coordinator stops acting at once, whatever its lease watchdog believes.
pub struct FencedStore {
    inner: Arc<EtcdStore>,
    guard: Guard,
    lost: CancellationToken,
}

impl FencedStore {
    pub fn new(inner: Arc<EtcdStore>, guard: Guard, lost: CancellationToken) -> FencedStore {
        FencedStore { inner, guard, lost }
    }

    fn check<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if let Err(e @ StoreError::Fenced { .. }) = &r
            && !self.lost.is_cancelled()
        {
            tracing::error!("etcd refused a write: {e}; this coordinator no longer leads");
            self.lost.cancel();
        }
        r
    }
}

#[async_trait::async_trait]
impl Store for FencedStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(key).await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.check(
            (self.inner)
                .put_many_guarded(vec![(key.to_string(), value)], Some(&self.guard))
                .await,
        )
    }

    async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        self.check(self.inner.put_many_guarded(items, Some(&self.guard)).await)
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.check(self.inner.delete_guarded(key, &self.guard).await)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(prefix).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        self.check(
            (self.inner)
                .compare_and_swap_guarded(key, expected, new, Some(&self.guard))
                .await,
        )
    }

    fn max_put_many(&self) -> usize {
        self.inner.max_put_many()
    }
}

/// The standby's answer to every call: UNAVAILABLE, with the leader's
/// address in [`LEADER_METADATA`] when known.
pub fn standby_status(role: &Role, me: &str) -> tonic::Status {
    let mut md = tonic::metadata::MetadataMap::new();
    let msg = match role {
        Role::Standby {
            leader: Some(leader),
            ..
        } => {
            if let Ok(v) = leader.grpc.parse() {
                md.insert(LEADER_METADATA, v);
            }
            format!(
                "coordinator {me} is not the leader (it stands by); the leader is {} at {}",
                leader.name, leader.grpc
            )
        }
        Role::Standby {
            leader: None,
            trouble: Some(why),
        } => format!(
            "coordinator {me} is not the leader (it stands by) and no leader can be elected: \
             etcd: {why}; rollouts wait, and go on once etcd answers again"
        ),
        _ => format!(
            "coordinator {me} is not the leader (it stands by) and no leader is elected yet; try again"
        ),
    };
    tonic::Status::with_metadata(tonic::Code::Unavailable, msg, md)
}

/// What a standby serves: another coordinator copying an artifact; every
/// other call is answered with [`standby_status`].
struct StandbyAgent {
    role: watch::Receiver<Role>,
    me: String,
    artifacts: Arc<crate::artifacts::Artifacts>,
    authz: crate::auth::Authorizer,
    stop: CancellationToken,
}

#[tonic::async_trait]
impl drover_proto::v1::agent_service_server::AgentService for StandbyAgent {
    async fn enroll(
        &self,
        _: tonic::Request<drover_proto::v1::EnrollRequest>,
    ) -> Result<tonic::Response<drover_proto::v1::EnrollResponse>, tonic::Status> {
        Err(standby_status(&self.role.borrow(), &self.me))
    }

    type SessionStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<
                    Item = Result<drover_proto::v1::CoordinatorMessage, tonic::Status>,
                > + Send,
        >,
    >;

    async fn session(
        &self,
        _: tonic::Request<tonic::Streaming<drover_proto::v1::AgentMessage>>,
    ) -> Result<tonic::Response<Self::SessionStream>, tonic::Status> {
        Err(standby_status(&self.role.borrow(), &self.me))
    }

    type FetchArtifactStream = crate::service::agent::FetchStream;

    async fn fetch_artifact(
        &self,
        request: tonic::Request<drover_proto::v1::FetchArtifactRequest>,
    ) -> Result<tonic::Response<Self::FetchArtifactStream>, tonic::Status> {
        let role = self.role.borrow().clone();
        let caller = (self.authz)
            .require(&request, &[drover_proto::identity::Role::Coordinator])
            .map_err(|_| standby_status(&role, &self.me))?;
        let metrics = self.authz.metrics.clone();
        crate::service::agent::fetch_stream(
            &self.artifacts,
            &metrics,
            &self.stop,
            &caller.cert.identity.name,
            request.into_inner(),
        )
        .await
    }
}

/// Keeps `revoked` up to date from etcd until `stop` (a read that fails is
/// logged and tried again at the next turn).
async fn follow_revocations(
    etcd: Arc<crate::store::EtcdStore>,
    revoked: Arc<crate::tls::RevocationList>,
    stop: CancellationToken,
) {
    let mut warned = false;
    loop {
        match crate::registry::load_revoked(etcd.as_ref(), &revoked).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(error = %e, "standby: could not read the revoked certificates; trying again");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(REVOCATIONS_EVERY) => {}
        }
    }
}

/// How often a standby reads the revoked certificate serials from etcd.
const REVOCATIONS_EVERY: Duration = Duration::from_secs(5);

/// A standby's gRPC server until `stop`: other coordinators may copy
/// artifacts from it; every other call of every service is answered with
/// [`standby_status`] for the role `role` says now. `revoked` is the list
/// its TLS verifier consults: it is read from etcd at once and every
/// [`REVOCATIONS_EVERY`], so a certificate revoked at the leader is refused
/// by the standbys too (the handshake and every call).
#[allow(clippy::too_many_arguments)]
pub async fn serve_standby(
    listener: tokio::net::TcpListener,
    tls_config: Arc<rustls::ServerConfig>,
    revoked: Arc<crate::tls::RevocationList>,
    role: watch::Receiver<Role>,
    me: String,
    artifacts: Arc<crate::artifacts::Artifacts>,
    etcd: Arc<crate::store::EtcdStore>,
    stop: CancellationToken,
) {
    use crate::metrics::Metrics;
    let metrics = Arc::new(Metrics::new());
    tokio::spawn(follow_revocations(
        etcd.clone(),
        revoked.clone(),
        stop.clone(),
    ));
    let coordinators = crate::service::coordinators::CoordinatorsSvc {
        name: me.clone(),
        etcd: Some(etcd),
        authz: crate::auth::Authorizer {
            metrics: metrics.clone(),
            revoked: revoked.clone(),
        },
    };
    let agent = StandbyAgent {
        role: role.clone(),
        me: me.clone(),
        artifacts,
        authz: crate::auth::Authorizer {
            metrics: metrics.clone(),
            revoked,
        },
        stop: stop.clone(),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    let enrolling = crate::tls::Enrolling::new(64, Duration::from_secs(10), metrics.clone());
    let incoming = crate::tls::incoming(
        listener,
        tls_config,
        metrics,
        enrolling,
        tasks.clone(),
        stop.clone(),
    );
    let state = Arc::new((role, me));
    let agent = drover_proto::v1::agent_service_server::AgentServiceServer::new(agent);
    let router = tonic::service::Routes::new(agent)
        .add_service(
            drover_proto::v1::coordinator_service_server::CoordinatorServiceServer::new(
                coordinators,
            ),
        )
        .into_axum_router()
        .fallback(move || {
            let state = state.clone();
            async move {
                let role = state.0.borrow().clone();
                standby_status(&role, &state.1).into_http::<axum::body::Body>()
            }
        });
    let served = tonic::transport::Server::builder()
        .add_routes(tonic::service::Routes::from(router))
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the standby server stopped");
    }
    tasks.close();
    tasks.wait().await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use drover_testkit::etcd::EtcdCluster;

    use super::*;
    use crate::store::{EtcdOptions, EtcdStore};

    async fn etcd(cluster: &EtcdCluster) -> Arc<EtcdStore> {
        let mut options = EtcdOptions::new(cluster.endpoints(), "/drover/");
        options.timeout = Duration::from_secs(2);
        Arc::new(EtcdStore::connect(options).await.expect("connect to etcd"))
    }

    fn member(name: &str) -> Member {
        Member {
            name: name.to_string(),
            grpc: format!("{name}.example:7443"),
            since_ms: 0,
        }
    }

    fn role() -> watch::Sender<Role> {
        watch::channel(Role::Standby {
            leader: None,
            trouble: None,
        })
        .0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_leads_the_next_gets_a_higher_epoch_and_the_deposed_one_cannot_write() {
        let cluster = EtcdCluster::start(1);
        let store = etcd(&cluster).await;
        let ttl = Duration::from_secs(2);
        let stop = CancellationToken::new();
        let c1 = Election::new(&store, member("c1"), ttl);
        let first = c1.campaign(&role(), &stop).await.expect("c1 elected");
        assert_eq!(c1.leader().await.expect("leader"), Some(member("c1")));
        let as_first = FencedStore::new(store.clone(), first.guard(), first.lost.clone());
        as_first
            .put("k", b"1".to_vec())
            .await
            .expect("the leader writes");

        // c2 campaigns while c1 leads: it sees c1 as leader, and wins
        // only once c1 resigns.
        let seen = role();
        let mut seen_rx = seen.subscribe();
        let c2 = Election::new(&store, member("c2"), ttl);
        let stop2 = stop.clone();
        let campaign = tokio::spawn(async move { c2.campaign(&seen, &stop2).await });
        let sees_c1 = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if matches!(&*seen_rx.borrow_and_update(), Role::Standby { leader: Some(m), .. } if m.name == "c1") {
                    return;
                }
                let _ = seen_rx.changed().await;
            }
        })
        .await;
        assert!(sees_c1.is_ok(), "the standby never saw c1 lead");
        assert!(!campaign.is_finished(), "c2 won while c1 leads");
        let stale = first.guard();
        first.resign(Duration::from_secs(2)).await;
        let second = tokio::time::timeout(Duration::from_secs(5), campaign)
            .await
            .expect("c2 elected once c1 resigned")
            .expect("campaign task")
            .expect("c2 elected");
        assert!(second.epoch > 0);
        assert!(
            second.guard().revision > stale.revision,
            "epochs grow: {} then {}",
            stale.revision,
            second.guard().revision
        );

        // The deposed leader's writes change nothing, whatever they are.
        let deposed_lost = CancellationToken::new();
        let deposed = FencedStore::new(store.clone(), stale, deposed_lost.clone());
        let fenced = |r: Result<(), StoreError>| matches!(r, Err(StoreError::Fenced { .. }));
        assert!(fenced(deposed.put("k", b"2".to_vec()).await));
        assert!(
            deposed_lost.is_cancelled(),
            "a refused write tells the deposed leader it lost the lead"
        );
        assert!(fenced(
            deposed.put_many(vec![("k".into(), b"3".to_vec())]).await
        ));
        assert!(matches!(
            deposed.delete("k").await,
            Err(StoreError::Fenced { .. })
        ));
        assert!(matches!(
            deposed
                .compare_and_swap("k", Some(b"1"), Some(b"4".to_vec()))
                .await,
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(store.get("k").await.expect("get"), Some(b"1".to_vec()));
        let as_second = FencedStore::new(store.clone(), second.guard(), second.lost.clone());
        as_second
            .put("k", b"5".to_vec())
            .await
            .expect("the new leader writes");
        assert_eq!(store.get("k").await.expect("get"), Some(b"5".to_vec()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_cut_off_from_etcd_knows_it_lost_the_lead_before_the_lease_expires() {
        let mut cluster = EtcdCluster::start(1);
        let store = etcd(&cluster).await;
        let ttl = Duration::from_secs(4);
        let c1 = Election::new(&store, member("c1"), ttl);
        let lead = c1
            .campaign(&role(), &CancellationToken::new())
            .await
            .expect("elected");
        let lost = lead.lost.clone();
        assert!(!lost.is_cancelled());
        let cut = Instant::now();
        cluster.kill(0);
        tokio::time::timeout(ttl * 2, lost.cancelled())
            .await
            .expect("the leader noticed the lost lease");
        let noticed = cut.elapsed();
        // Within three quarters of the TTL after the last renewal, which
        // came at most a third of it before the cut.
        assert!(
            noticed <= ttl * 3 / 4 + Duration::from_millis(500),
            "noticed after {noticed:?}"
        );
    }

    #[test]
    fn a_standby_says_where_the_leader_is() {
        let s = standby_status(
            &Role::Standby {
                leader: Some(member("c1")),
                trouble: None,
            },
            "c2",
        );
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.message(),
            "coordinator c2 is not the leader (it stands by); the leader is c1 at c1.example:7443"
        );
        assert_eq!(
            s.metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("c1.example:7443")
        );
        let none = standby_status(
            &Role::Standby {
                leader: None,
                trouble: None,
            },
            "c2",
        );
        assert!(none.metadata().get(LEADER_METADATA).is_none());
        assert!(none.message().contains("no leader is elected yet"));
    }
}
