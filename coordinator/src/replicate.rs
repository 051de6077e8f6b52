//! Artifacts on every coordinator (HA on etcd). A blob lives on the disk of
//! the coordinator that received the push; the others copy it.
//!
//! - Every coordinator, leader or standby, is listed under `members/` with
//!   its gRPC address, on its election lease (gone when it dies).
//! - Each copy is recorded under `artifact-copies/<digest>/<name>` once its
//!   bytes hashed to the digest.
//! - Every coordinator looks every second for bound artifacts it lacks and
//!   copies each from a member that has it (`FetchArtifact`, as a
//!   coordinator), checking the digest before it keeps it.
//! - `drover artifact push` returns only once the blob is on at least two
//!   live coordinators (all of them when fewer), so the loss of any one
//!   loses no artifact.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use drover_net::transport::{ClientTls, ConnectOptions};
use drover_proto::v1::FetchArtifactRequest;
use drover_proto::v1::agent_service_client::AgentServiceClient;
use tokio_util::sync::CancellationToken;

use crate::artifacts::Artifacts;
use crate::ha::Member;
use crate::store::{EtcdStore, Store, StoreError};

pub const MEMBERS: &str = "members/";
pub const COPIES: &str = "artifact-copies/";
/// How often a coordinator looks for artifacts it lacks.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// How long a push waits for another coordinator's copy.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(60);

/// Copies on at least this many coordinators before a push returns (all of
/// them when fewer are alive).
pub const WANTED_COPIES: usize = 2;

/// What a coordinator needs to copy artifacts and count copies.
#[derive(Clone)]
pub struct Replicas {
    pub store: Arc<EtcdStore>,
    pub artifacts: Arc<Artifacts>,
    pub me: String,
    pub tls: ClientTls,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

fn copy_key(digest: &str, name: &str) -> String {
    format!("{COPIES}{digest}/{name}")
}

impl Replicas {
    /// The coordinators alive now (their election lease holds), by name.
    pub async fn members(&self) -> Result<BTreeMap<String, Member>, StoreError> {
        let mut out = BTreeMap::new();
        for (_, v) in self.store.scan_prefix(MEMBERS).await? {
            if let Ok(m) = serde_json::from_slice::<Member>(&v) {
                out.insert(m.name.clone(), m);
            }
        }
        Ok(out)
    }

    /// The coordinators that recorded a copy of `digest`.
    pub async fn copies(&self, digest: &str) -> Result<BTreeSet<String>, StoreError> {
        let prefix = format!("{COPIES}{digest}/");
        Ok((self.store.scan_prefix(&prefix).await?.into_iter())
            .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// Records that this coordinator holds a verified copy of `digest`.
    pub async fn record(&self, digest: &str) -> Result<(), StoreError> {
        self.store
            .put(&copy_key(digest, &self.me), Vec::new())
            .await
    }

    /// After a push: records this copy, then waits (up to `within`) until
    /// enough live coordinators hold one. The names holding it, or why not.
    pub async fn confirm(&self, digest: &str, within: Duration) -> Result<Vec<String>, String> {
        self.record(digest)
            .await
            .map_err(|e| format!("record the copy: {e}"))?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let members = self.members().await.map_err(|e| e.to_string())?;
            let copies = self.copies(digest).await.map_err(|e| e.to_string())?;
            let live: Vec<String> = copies
                .iter()
                .filter(|n| members.contains_key(*n) || **n == self.me)
                .cloned()
                .collect();
            let wanted = WANTED_COPIES.min(members.len().max(1));
            if live.len() >= wanted {
                return Ok(live);
            }
            if tokio::time::Instant::now() >= deadline {
                let others: Vec<&String> = members.keys().filter(|n| **n != self.me).collect();
                return Err(format!(
                    "the blob is stored on {} only; no other coordinator ({}) confirmed a copy within {}",
                    live.join(", "),
                    others
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    humantime::format_duration(within)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One look: copies every bound artifact this coordinator lacks from a
    /// member that has it, and records the copies it holds. How many blobs
    /// it copied.
    pub async fn sync_once(&self) -> Result<usize, String> {
        let digests = (self.artifacts.bound_digests().await).map_err(|e| e.to_string())?;
        let mut copied = 0;
        let mut members = None;
        for digest in digests {
            let mine = self.copies(&digest).await.map_err(|e| e.to_string())?;
            if self.artifacts.has_blob(&digest).await {
                if !mine.contains(&self.me) {
                    self.record(&digest).await.map_err(|e| e.to_string())?;
                }
                continue;
            }
            if members.is_none() {
                members = Some(self.members().await.map_err(|e| e.to_string())?);
            }
            let Some(members) = &members else { continue };
            for name in mine.iter().filter(|n| **n != self.me) {
                let Some(peer) = members.get(name) else {
                    continue;
                };
                match self.fetch_from(peer, &digest).await {
                    Ok(()) => {
                        self.record(&digest).await.map_err(|e| e.to_string())?;
                        tracing::info!(digest = %digest, from = %peer.name, "copied an artifact from another coordinator");
                        copied += 1;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(digest = %digest, from = %peer.name, error = %e, "copying an artifact failed");
                    }
                }
            }
        }
        Ok(copied)
    }

    async fn fetch_from(&self, peer: &Member, digest: &str) -> Result<(), String> {
        let channel =
            drover_net::transport::connect(&peer.grpc, &self.tls, &ConnectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
        let mut client = AgentServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let mut stream = client
            .fetch_artifact(FetchArtifactRequest {
                digest: digest.to_string(),
                offset: 0,
            })
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let mut upload = self.artifacts.begin().await.map_err(|e| e.to_string())?;
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| s.message().to_string())?
        {
            upload.write(&chunk.data).await.map_err(|e| e.to_string())?;
        }
        self.artifacts
            .install(upload, digest)
            .await
            .map_err(|e| e.to_string())
    }

    /// Looks every [`SYNC_EVERY`] until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.sync_once().await {
                tracing::warn!(error = %e, "looking for artifacts to copy failed");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SYNC_EVERY) => {}
            }
        }
    }
}
