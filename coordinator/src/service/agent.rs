//! `AgentService`: enrolment and the long-lived agent session.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use drover_proto::identity::{Identity, Role, valid_name};
use drover_proto::v1::agent_message::Msg as AgentMsg;
use drover_proto::v1::agent_service_server::AgentService;
use drover_proto::v1::coordinator_message::Msg as CoordMsg;
use drover_proto::v1::{
    AgentMessage, ArtifactChunk, CoordinatorMessage, EnrollRequest, EnrollResponse,
    FetchArtifactRequest, RenewResponse, Welcome,
};
use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::Ctx;
use crate::auth::peer_addr;
use crate::metrics::Refusal;
use crate::registry::now_ms;

/// How long a new session may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentSvc {
    pub ctx: Arc<Ctx>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;

fn is_oversized(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
    ) || status.message().contains("too large")
}

#[tonic::async_trait]
impl AgentService for AgentSvc {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let ctx = &self.ctx;
        let addr = peer_addr(&request);
        let req = request.into_inner();
        let refuse = |why: Refusal, status: Status| {
            ctx.metrics.enrollment(false);
            ctx.metrics.refused(why);
            tracing::warn!(peer = ?addr, host = %req.host_id, reason = %status.message(), "enrolment refused");
            status
        };
        if !valid_name(&req.host_id) {
            return Err(refuse(
                Refusal::BadRequest,
                Status::invalid_argument(format!(
                    "host id `{}` is not valid: use 1-63 characters from a-z, A-Z, 0-9, `-`, `_`, `.`",
                    req.host_id
                )),
            ));
        }
        let identity = Identity::agent(req.host_id.clone())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The token first, without spending it: an unknown, used or
        // expired token costs a store read, not a signature.
        match ctx.tokens.check(&req.token).await {
            Ok(()) => {}
            Err(e) if e.is_refusal() => {
                return Err(refuse(
                    Refusal::Token,
                    Status::unauthenticated(e.to_string()),
                ));
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        }
        // Check the CSR before spending the token on it.
        let (cert_pem, cert) = ctx
            .ca
            .sign_csr(&req.csr_pem, &identity, ctx.cert_lifetime)
            .map_err(|e| refuse(Refusal::BadRequest, Status::invalid_argument(e.to_string())))?;
        let labels = match ctx.tokens.consume(&req.token, &req.host_id).await {
            Ok(labels) => labels,
            Err(e) if e.is_refusal() => {
                return Err(refuse(
                    Refusal::Token,
                    Status::unauthenticated(e.to_string()),
                ));
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        ctx.registry.record_serial(&cert).await?;
        ctx.registry.enrolled(&req.host_id, labels.clone()).await?;
        ctx.metrics.enrollment(true);
        ctx.enrolling.completed(addr);
        tracing::info!(host = %req.host_id, serial = %cert.serial, peer = ?addr, "agent enrolled");
        Ok(Response::new(EnrollResponse {
            cert_pem,
            ca_pem: ctx.ca.cert_pem().to_string(),
            labels: labels.into_iter().collect(),
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let ctx = self.ctx.clone();
        let caller = ctx.authz.require(&request, &[Role::Agent])?;
        let host_id = caller.cert.identity.name.clone();
        let mut inbound = request.into_inner();

        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                msg: Some(AgentMsg::Hello(hello)),
            }))) => hello,
            Ok(Ok(_)) => {
                ctx.metrics.refused(Refusal::BadRequest);
                return Err(Status::invalid_argument(
                    "the first message of a session must be Hello",
                ));
            }
            Ok(Err(status)) => {
                let why = if is_oversized(&status) {
                    Refusal::Oversized
                } else {
                    Refusal::BadRequest
                };
                ctx.metrics.refused(why);
                ctx.metrics.session_errors.inc();
                tracing::warn!(host = %host_id, error = %status.message(), "session refused before Hello");
                return Err(status);
            }
            Err(_) => {
                ctx.metrics.refused(Refusal::BadRequest);
                return Err(Status::deadline_exceeded("no Hello within 10s"));
            }
        };
        if hello.host_id != host_id {
            ctx.metrics.refused(Refusal::HostMismatch);
            tracing::warn!(
                cert_host = %host_id,
                claimed = %hello.host_id,
                peer = ?caller.addr,
                "refused: agent claims another host's id"
            );
            return Err(Status::permission_denied(format!(
                "certificate is for host `{host_id}` but Hello claims `{}`; an agent may speak only for its own host",
                hello.host_id
            )));
        }

        // What goes out to this agent (Welcome, renewals, rollout commands)
        // waits here, bounded: an agent that does not read cannot make the
        // coordinator hold more than this. When full, renewal replies wait
        // (this session's own loop, so only this agent slows down), and
        // rollout commands are dropped and counted (re-sent on reconnect,
        // or they time out). What comes in is read one message at a time
        // by the loop below, under HTTP/2 flow control.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let welcome = CoordinatorMessage {
            msg: Some(CoordMsg::Welcome(Welcome {
                coordinator_name: ctx.name.clone(),
                server_time_ms: now_ms(),
                epoch: ctx.epoch,
            })),
        };
        let _ = tx.try_send(Ok(welcome));
        let (session_id, cancel) =
            ctx.registry
                .connect(&caller.cert, caller.addr, hello, tx.clone());
        tracing::info!(host = %host_id, peer = ?caller.addr, session = session_id, "agent connected");
        ctx.rollouts.host_connected(&host_id).await;

        let cert_expires = caller
            .cert
            .not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let shutdown = ctx.shutdown.clone();
        let tasks = ctx.tasks.clone();
        tasks.spawn(async move {
            let expiry = tokio::time::sleep(cert_expires);
            tokio::pin!(expiry);
            let reason = loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => break "ended by the coordinator".to_string(),
                    _ = shutdown.cancelled() => break "coordinator shutting down".to_string(),
                    _ = &mut expiry => {
                        let _ = tx.try_send(Err(Status::unauthenticated(
                            "session certificate expired; the agent must renew and reconnect",
                        )));
                        break "certificate expired".to_string();
                    }
                    msg = inbound.message() => msg,
                };
                match msg {
                    Ok(Some(AgentMessage { msg: Some(msg) })) => match msg {
                        AgentMsg::Health(report) => {
                            ctx.metrics.agent_fenced(&host_id, report.commands_fenced);
                            ctx.registry.report(&host_id, session_id, report)
                        }
                        AgentMsg::Renew(renew) => {
                            let reply = renew_cert(&ctx, &host_id, &renew.csr_pem).await;
                            let _ = tx
                                .send(Ok(CoordinatorMessage {
                                    msg: Some(CoordMsg::Renew(reply)),
                                }))
                                .await;
                        }
                        AgentMsg::Hello(_) => {
                            tracing::debug!(host = %host_id, "ignoring a second Hello");
                        }
                        AgentMsg::CommandUpdate(update) => {
                            ctx.rollouts.command_update(&host_id, update).await
                        }
                    },
                    Ok(Some(AgentMessage { msg: None })) => {}
                    Ok(None) => break "agent closed the session".to_string(),
                    Err(status) => {
                        ctx.metrics.session_errors.inc();
                        if is_oversized(&status) {
                            ctx.metrics.refused(Refusal::Oversized);
                        }
                        break format!("stream error: {}", status.message());
                    }
                }
            };
            tracing::info!(host = %host_id, session = session_id, %reason, "agent session ended");
            ctx.registry.disconnected(&host_id, session_id, &reason);
        });

        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as SessionStream
        ))
    }

    type FetchArtifactStream = FetchStream;

    async fn fetch_artifact(
        &self,
        request: Request<FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        // Agents, and other coordinators copying a blob (HA).
        let caller = (self.ctx.authz).require(&request, &[Role::Agent, Role::Coordinator])?;
        let ctx = &self.ctx;
        let req = request.into_inner();
        fetch_stream(
            &ctx.artifacts,
            &ctx.metrics,
            &ctx.shutdown,
            &caller.cert.identity.name,
            req,
        )
        .await
    }
}

/// An artifact's bytes on the wire.
pub type FetchStream = Pin<Box<dyn Stream<Item = Result<ArtifactChunk, Status>> + Send>>;

/// Streams the blob `req` asks for from `artifacts`, from its offset, once
/// it is verified (a corrupt one is refused and counted).
pub async fn fetch_stream(
    artifacts: &crate::artifacts::Artifacts,
    metrics: &crate::metrics::Metrics,
    shutdown: &tokio_util::sync::CancellationToken,
    caller: &str,
    req: FetchArtifactRequest,
) -> Result<Response<FetchStream>, Status> {
    let (mut reader, size) = match artifacts.open_at(&req.digest, req.offset).await {
        Ok(opened) => opened,
        Err(e @ crate::artifacts::ArtifactError::CorruptBlob { .. }) => {
            metrics.artifacts_corrupt.inc();
            tracing::error!(host = %caller, digest = %req.digest, error = %e, "refused to serve a corrupt artifact");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    tracing::debug!(host = %caller, digest = %req.digest, offset = req.offset, "artifact fetch");
    // At most this many chunks wait per fetch: a slow agent holds a
    // bounded amount of the coordinator's memory.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut offset = req.offset;
        loop {
            let data = tokio::select! {
                _ = shutdown.cancelled() => return,
                data = reader.next_chunk(super::control::CHUNK_BYTES) => data,
            };
            let data = match data {
                Ok(d) if d.is_empty() => return,
                Ok(d) => d,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::internal(format!("read artifact: {e}"))))
                        .await;
                    return;
                }
            };
            let n = data.len() as u64;
            let chunk = ArtifactChunk {
                offset,
                data,
                size_bytes: size,
            };
            offset += n;
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

async fn renew_cert(ctx: &Ctx, host_id: &str, csr_pem: &str) -> RenewResponse {
    let signed = Identity::agent(host_id.to_string())
        .map_err(|e| e.to_string())
        .and_then(|id| {
            ctx.ca
                .sign_csr(csr_pem, &id, ctx.cert_lifetime)
                .map_err(|e| e.to_string())
        });
    match signed {
        Ok((cert_pem, cert)) => {
            if let Err(e) = ctx.registry.record_serial(&cert).await {
                tracing::error!(host = %host_id, error = %e, "recording renewed certificate failed");
                return RenewResponse {
                    cert_pem: String::new(),
                    error: format!("coordinator could not record the certificate: {e}"),
                };
            }
            ctx.metrics.renewals.inc();
            tracing::info!(host = %host_id, serial = %cert.serial, "agent certificate renewed");
            RenewResponse {
                cert_pem,
                error: String::new(),
            }
        }
        Err(error) => {
            ctx.metrics.refused(Refusal::BadRequest);
            tracing::warn!(host = %host_id, %error, "renewal refused");
            RenewResponse {
                cert_pem: String::new(),
                error,
            }
        }
    }
}
