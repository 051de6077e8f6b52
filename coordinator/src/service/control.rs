//! `ControlService`: the operator's API. Viewers may read; operators may
//! also change. Agent certificates are refused.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::v1::control_service_server::ControlService;
use drover_proto::v1::push_artifact_request::Msg as PushMsg;
use drover_proto::v1::{
    Artifact, CreateTokenRequest, CreateTokenResponse, GetHostRequest, GetRolloutAnalysisRequest,
    GetRolloutRequest, Host, HostEvent, ListArtifactsRequest, ListArtifactsResponse,
    ListHostsRequest, ListHostsResponse, ListRolloutsRequest, ListRolloutsResponse,
    PushArtifactRequest, RevokeHostRequest, RevokeHostResponse, Rollout, RolloutActionRequest,
    RolloutAnalysis, RolloutUpdate, StartRolloutRequest, StartRolloutResponse, WatchHostsRequest,
    WatchRolloutRequest, host_event, rollout_action_request,
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::Ctx;
use super::rollouts::{self, Listed};
use crate::auth::{READERS, WRITERS};
use crate::rollout::OperatorAction;
use crate::selector::Selector;

/// Shortest time between two WatchRollout updates, unless the rollout ends.
const WATCH_GAP: Duration = Duration::from_millis(100);

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
        let stream = async_stream(&self.ctx.tasks, move |tx| async move {
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
        // A well-formed request this coordinator's policy refuses, not a
        // malformed one: FAILED_PRECONDITION, so the CLI exits 1 (refused)
        // rather than 2 (usage).
        if ttl > self.ctx.max_token_ttl {
            return Err(Status::failed_precondition(format!(
                "refused: ttl {} is above this coordinator's maximum of {} \
                 (agents.max_token_ttl in its config); ask for {} or less",
                humantime::format_duration(ttl),
                humantime::format_duration(self.ctx.max_token_ttl),
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
        let artifact = match artifacts
            .finish(
                upload,
                &header.service,
                &header.version,
                &header.expected_digest,
                &caller.cert.identity.to_string(),
            )
            .await
        {
            Ok(a) => a,
            Err(e @ crate::artifacts::ArtifactError::BadArchive(_)) => {
                self.ctx.metrics.artifacts_refused.inc();
                tracing::warn!(by = %caller.cert.identity, service = %header.service, version = %header.version, error = %e, "artifact push refused");
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(replicas) = &self.ctx.replicas {
            // HA: not done until another coordinator holds a verified copy.
            let held = replicas
                .confirm(&artifact.digest, crate::replicate::CONFIRM_WITHIN)
                .await
                .map_err(|why| {
                    Status::unavailable(format!(
                        "{}/{} is stored, but {why}; push it again once the other coordinators are back",
                        artifact.service, artifact.version
                    ))
                })?;
            tracing::info!(digest = %artifact.digest, on = ?held, "artifact copies confirmed");
        }
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

    async fn start_rollout(
        &self,
        request: Request<StartRolloutRequest>,
    ) -> Result<Response<StartRolloutResponse>, Status> {
        let dry_run = request.get_ref().dry_run;
        let caller = if dry_run {
            self.ctx.authz.require(&request, READERS)?
        } else {
            self.ctx.authz.require(&request, WRITERS)?
        };
        let spec = rollouts::resolve_spec(&self.ctx, request.get_ref().spec.as_ref()).await?;
        if dry_run {
            let plan = rollouts::plan(&self.ctx, &spec)?;
            return Ok(Response::new(StartRolloutResponse {
                rollout: None,
                plan: Some(plan),
            }));
        }
        let snap = self
            .ctx
            .rollouts
            .start(spec, caller.cert.identity.to_string())
            .await
            .inspect_err(
                |e| tracing::info!(by = %caller.cert.identity, error = %e, "rollout refused"),
            )?;
        tracing::info!(by = %caller.cert.identity, rollout = %snap.status.id, service = %snap.status.service, target = %snap.status.target, "rollout started");
        Ok(Response::new(StartRolloutResponse {
            rollout: Some(rollouts::to_proto(&snap, &[], Listed::All)),
            plan: None,
        }))
    }

    async fn get_rollout(
        &self,
        request: Request<GetRolloutRequest>,
    ) -> Result<Response<Rollout>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        let req = request.into_inner();
        let snap = self.ctx.rollouts.get(&req.id)?;
        let events = if req.include_events {
            self.ctx.rollouts.events(&req.id, 0)?
        } else {
            Vec::new()
        };
        Ok(Response::new(rollouts::to_proto(
            &snap,
            &events,
            Listed::All,
        )))
    }

    async fn list_rollouts(
        &self,
        request: Request<ListRolloutsRequest>,
    ) -> Result<Response<ListRolloutsResponse>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        let req = request.into_inner();
        let limit = if req.limit == 0 {
            20
        } else {
            req.limit as usize
        };
        let rollouts = self
            .ctx
            .rollouts
            .list(&req.service, limit)
            .iter()
            .map(|s| rollouts::to_proto(s, &[], Listed::None))
            .collect();
        Ok(Response::new(ListRolloutsResponse { rollouts }))
    }

    type WatchRolloutStream = Pin<Box<dyn Stream<Item = Result<RolloutUpdate, Status>> + Send>>;

    async fn watch_rollout(
        &self,
        request: Request<WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        let id = request.into_inner().id;
        let mut rx = self.ctx.rollouts.subscribe(&id)?;
        let ctx = self.ctx.clone();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        self.ctx.tasks.spawn(async move {
            let mut sent = 0usize;
            let mut last = tokio::time::Instant::now();
            loop {
                let snap = rx.borrow_and_update().clone();
                let events = ctx.rollouts.events(&id, sent).unwrap_or_default();
                sent += events.len();
                // While it runs, only the instances mid-step: a live view
                // needs no more, and at 10,000 instances every update would
                // otherwise carry them all. The last update lists them all.
                let listed = if snap.status.phase.is_terminal() {
                    Listed::All
                } else {
                    Listed::InFlight
                };
                let update = RolloutUpdate {
                    rollout: Some(rollouts::to_proto(&snap, &[], listed)),
                    events: events.iter().map(rollouts::event_to_proto).collect(),
                };
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                if snap.status.phase.is_terminal() {
                    return;
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("coordinator shutting down"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    changed = rx.changed() => if changed.is_err() {
                        // The rollout task ended without a terminal phase:
                        // the coordinator is stopping.
                        let _ = tx.send(Err(Status::unavailable("the rollout's runner stopped; the coordinator is shutting down"))).await;
                        return;
                    },
                }
                // Coalesce: every update carries every instance, and a big
                // rollout changes many times a millisecond. The events in
                // between are all delivered with the next update; the end
                // goes out at once.
                let gap = tokio::time::sleep_until(last + WATCH_GAP);
                tokio::pin!(gap);
                while !rx.borrow().status.phase.is_terminal() {
                    tokio::select! {
                        _ = &mut gap => break,
                        _ = tx.closed() => return,
                        changed = rx.changed() => if changed.is_err() {
                            break;
                        },
                    }
                }
                last = tokio::time::Instant::now();
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn get_rollout_analysis(
        &self,
        request: Request<GetRolloutAnalysisRequest>,
    ) -> Result<Response<RolloutAnalysis>, Status> {
        self.ctx.authz.require(&request, READERS)?;
        let req = request.into_inner();
        let snap = self.ctx.rollouts.get(&req.id)?;
        if snap.status.traffic.is_none() {
            return Err(Status::failed_precondition(format!(
                "rollout {} is a rolling update: it has no canary analysis",
                req.id
            )));
        }
        let looks = self.ctx.rollouts.judgements(&req.id).await?;
        Ok(Response::new(RolloutAnalysis {
            id: req.id,
            looks: looks.iter().map(rollouts::look).collect(),
        }))
    }

    async fn act_on_rollout(
        &self,
        request: Request<RolloutActionRequest>,
    ) -> Result<Response<Rollout>, Status> {
        let caller = self.ctx.authz.require(&request, WRITERS)?;
        let req = request.into_inner();
        use rollout_action_request::Action;
        let action = match Action::try_from(req.action).unwrap_or(Action::Unspecified) {
            Action::Pause => OperatorAction::Pause,
            Action::Resume => OperatorAction::Resume,
            Action::Abort => OperatorAction::Abort,
            Action::Rollback => OperatorAction::Rollback,
            Action::Promote => OperatorAction::Promote,
            Action::Unspecified => {
                return Err(Status::invalid_argument(
                    "action: expected pause, resume, abort, rollback or promote",
                ));
            }
        };
        if action == OperatorAction::Promote {
            let snap = self.ctx.rollouts.get(&req.id)?;
            let promotable = snap.status.traffic.as_ref().is_some_and(|t| {
                matches!(
                    t.stage,
                    crate::rollout::TrafficStage::Baking | crate::rollout::TrafficStage::Held
                )
            });
            if !snap.status.phase.is_terminal() && !promotable {
                let what = match &snap.status.traffic {
                    None => format!(
                        "rollout {} is a rolling update: it has no traffic step to promote",
                        req.id
                    ),
                    Some(t) => format!(
                        "rollout {} has no traffic step baking (step {} is {}); promote ends a bake",
                        req.id,
                        t.step,
                        serde_json::to_value(t.stage)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    ),
                };
                return Err(Status::failed_precondition(what));
            }
        }
        if matches!(action, OperatorAction::Rollback | OperatorAction::Abort) {
            let snap = self.ctx.rollouts.get(&req.id)?;
            let past_return = snap.status.traffic.as_ref().is_some_and(|t| {
                matches!(
                    t.stage,
                    crate::rollout::TrafficStage::Retiring | crate::rollout::TrafficStage::Retired
                )
            });
            if !snap.status.phase.is_terminal() && past_return {
                return Err(Status::failed_precondition(format!(
                    "rollout {}: keep-old is over and the old color is being stopped, so there \
                     is no color to switch back to; once it ends, start a rollout to the old \
                     release",
                    req.id
                )));
            }
        }
        let snap = self.ctx.rollouts.act(&req.id, action).await?;
        tracing::info!(by = %caller.cert.identity, rollout = %req.id, action = crate::runner::action_name(action), phase = %crate::runner::phase_name(snap.status.phase), "rollout action");
        Ok(Response::new(rollouts::to_proto(&snap, &[], Listed::All)))
    }
}

/// Bytes per gRPC message when streaming artifacts.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A response stream fed by a task; the task stops when the client goes away.
fn async_stream<F, Fut>(tasks: &tokio_util::task::TaskTracker, f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HostEvent, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tasks.spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
