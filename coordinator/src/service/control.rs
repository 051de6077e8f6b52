//! `ControlService`: the operator's API. Viewers may read; operators may
//! also change. Agent certificates are refused.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::v1::control_service_server::ControlService;
use drover_proto::v1::push_artifact_request::Msg as PushMsg;
use drover_proto::v1::{
    Artifact, CreateTokenRequest, CreateTokenResponse, GetHostRequest, Host, HostEvent,
    ListArtifactsRequest, ListArtifactsResponse, ListHostsRequest, ListHostsResponse,
    PushArtifactRequest, RevokeHostRequest, RevokeHostResponse, WatchHostsRequest, host_event,
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::auth::{READERS, WRITERS};
use crate::selector::Selector;

/// Join tokens last an hour unless the operator asks otherwise.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

pub struct ControlSvc {
    pub ctx: Arc<Ctx>,
}

fn parse_selector(s: &str) -> Result<Selector, Status> {
    s.parse::<Selector>()
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

fn matches(sel: &Selector, host: &Host) -> bool {
    sel.matches(&host.labels.clone().into_iter().collect())
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HostEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ControlService for ControlSvc {
    async fn list_hosts(
        &self,
        request: Request<ListHostsRequest>,
    ) -> Result<Response<ListHostsResponse>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        let sel = parse_selector(&request.get_ref().selector)?;
        Ok(Response::new(ListHostsResponse {
            hosts: self.ctx.registry.list(&sel),
        }))
    }

    async fn get_host(&self, request: Request<GetHostRequest>) -> Result<Response<Host>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        Ok(Response::new(
            self.ctx.registry.get(&request.get_ref().host_id)?,
        ))
    }

    type WatchHostsStream = WatchStream;

    async fn watch_hosts(
        &self,
        request: Request<WatchHostsRequest>,
    ) -> Result<Response<Self::WatchHostsStream>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        let sel = parse_selector(&request.get_ref().selector)?;
        let registry = self.ctx.registry.clone();
        let shutdown = self.ctx.shutdown.clone();
        // Subscribe before the snapshot so no change falls in between.
        let mut changes = registry.subscribe();
        let stream = async_stream(move |tx| async move {
            let snapshot = |sel: &Selector| {
                let mut events: Vec<HostEvent> = registry
                    .list(sel)
                    .into_iter()
                    .map(|h| HostEvent {
                        kind: host_event::Kind::Snapshot as i32,
                        host: Some(h),
                    })
                    .collect();
                events.push(HostEvent {
                    kind: host_event::Kind::Synced as i32,
                    host: None,
                });
                events
            };
            for ev in snapshot(&sel) {
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    c = changes.recv() => c,
                };
                match change {
                    Ok(change) => {
                        if !matches(&sel, &change.host) {
                            continue;
                        }
                        let ev = HostEvent {
                            kind: change.kind as i32,
                            host: Some((*change.host).clone()),
                        };
                        if tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                    }
                    // Too slow to keep up: start over from a fresh snapshot.
                    Err(RecvError::Lagged(_)) => {
                        for ev in snapshot(&sel) {
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let caller = self.ctx.authz.require(&request, WRITERS)?;
        let req = request.into_inner();
        let ttl = if req.ttl_secs == 0 {
            DEFAULT_TOKEN_TTL
        } else {
            Duration::from_secs(req.ttl_secs)
        };
        if ttl > self.ctx.max_token_ttl {
            return Err(Status::invalid_argument(format!(
                "ttl {} exceeds the coordinator's agents.max_token_ttl of {}",
                humantime::format_duration(ttl),
                humantime::format_duration(self.ctx.max_token_ttl)
            )));
        }
        let pairs: Vec<String> = req.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels: BTreeMap<String, String> = crate::selector::parse_labels(&pairs)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (token, expires_at_ms) = self
            .ctx
            .tokens
            .create(ttl, labels, &caller.cert.identity.to_string())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(by = %caller.cert.identity, ttl = %humantime::format_duration(ttl), "join token created");
        Ok(Response::new(CreateTokenResponse {
            token,
            expires_at_ms,
            ca_fingerprint: self.ctx.ca.fingerprint(),
        }))
    }

    async fn revoke_host(
        &self,
        request: Request<RevokeHostRequest>,
    ) -> Result<Response<RevokeHostResponse>, Status> {
        let caller = self.ctx.authz.require(&request, WRITERS)?;
        let host_id = request.into_inner().host_id;
        let revoked_serials = self.ctx.registry.revoke(&host_id).await?;
        tracing::warn!(by = %caller.cert.identity, host = %host_id, serials = revoked_serials.len(), "host revoked");
        Ok(Response::new(RevokeHostResponse { revoked_serials }))
    }

    async fn push_artifact(
        &self,
        request: Request<tonic::Streaming<PushArtifactRequest>>,
    ) -> Result<Response<Artifact>, Status> {
        let caller = self.ctx.authz.require(&request, WRITERS)?;
        let mut inbound = request.into_inner();
        let header = match inbound.message().await? {
            Some(PushArtifactRequest {
                msg: Some(PushMsg::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an upload must be its header",
                ));
            }
        };
        let artifacts = &self.ctx.artifacts;
        let mut upload = artifacts.begin().await?;
        while let Some(msg) = inbound.message().await? {
            match msg.msg {
                Some(PushMsg::Chunk(bytes)) => upload.write(&bytes).await?,
                _ => return Err(Status::invalid_argument("only one header per upload")),
            }
        }
        let artifact = artifacts
            .finish(
                upload,
                &header.service,
                &header.version,
                &header.expected_digest,
                &caller.cert.identity.to_string(),
            )
            .await?;
        tracing::info!(by = %caller.cert.identity, service = %artifact.service, version = %artifact.version, digest = %artifact.digest, size = artifact.size_bytes, "artifact pushed");
        Ok(Response::new(artifact))
    }

    async fn list_artifacts(
        &self,
        request: Request<ListArtifactsRequest>,
    ) -> Result<Response<ListArtifactsResponse>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        let artifacts = self.ctx.artifacts.list(&request.get_ref().service).await?;
        Ok(Response::new(ListArtifactsResponse { artifacts }))
    }
}

/// Bytes per gRPC message when streaming artifacts.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A response stream fed by a task; the task stops when the client goes away.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HostEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
