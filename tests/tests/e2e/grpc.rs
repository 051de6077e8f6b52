//! A hand-made gRPC client for the hostile-peer cases the CLI and the agent
//! would refuse to make (or would catch locally before the coordinator sees
//! them): no certificate, expired certificate, another host's id in Hello,
//! an oversized Hello.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use drover_net::transport::{ClientTls, ConnectOptions, Trust, connect, error_chain};
use drover_proto::v1::agent_service_client::AgentServiceClient;
use drover_proto::v1::control_service_client::ControlServiceClient;
use drover_proto::v1::{AgentMessage, Hello, ListHostsRequest, agent_message, coordinator_message};
use drover_tests::CertPair;

const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

fn tls(ca: &Path, identity: Option<&CertPair>) -> ClientTls {
    let ca_pem = std::fs::read(ca).expect("read CA certificate");
    let cas = drover_net::transport::certs_from_pem("CA", &ca_pem).expect("parse CA");
    let identity = identity.map(|id| {
        let cert = std::fs::read(&id.cert).expect("read client certificate");
        let key = std::fs::read(&id.key).expect("read client key");
        (
            drover_net::transport::certs_from_pem("client certificate", &cert)
                .expect("parse client certificate"),
            drover_net::transport::key_from_pem("client key", &key).expect("parse client key"),
        )
    });
    ClientTls::new(Trust::Ca(cas), identity).expect("build client TLS config")
}

async fn channel(
    addr: &str,
    ca: &Path,
    identity: Option<&CertPair>,
) -> Result<tonic::transport::Channel, String> {
    let opts = ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    };
    connect(addr, &tls(ca, identity), &opts)
        .await
        .map_err(|e| format!("connect: {}", error_chain(&e)))
}

/// Calls `ControlService.ListHosts`; Ok(number of hosts) or the error.
pub fn list_hosts(addr: &str, ca: &Path, identity: Option<&CertPair>) -> Result<usize, String> {
    runtime().block_on(async {
        let call = async {
            let ch = channel(addr, ca, identity).await?;
            let resp = ControlServiceClient::new(ch)
                .list_hosts(ListHostsRequest::default())
                .await
                .map_err(|s| format!("ListHosts: {:?}: {}", s.code(), s.message()))?;
            Ok(resp.into_inner().hosts.len())
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err("ListHosts: no answer in time".to_string()))
    })
}

/// Calls `ControlService.PushArtifact` with `bytes` in 256 KiB chunks, as
/// a client that skips `drover artifact push`'s own checks would; Ok(the
/// stored digest) or (the status code, its message).
pub fn push_artifact(
    addr: &str,
    ca: &Path,
    identity: &CertPair,
    version: &str,
    bytes: &[u8],
) -> Result<String, (tonic::Code, String)> {
    use drover_proto::v1::PushArtifactRequest;
    use drover_proto::v1::push_artifact_request::{Header, Msg};
    let mut msgs = vec![PushArtifactRequest {
        msg: Some(Msg::Header(Header {
            service: "web".to_string(),
            version: version.to_string(),
            expected_digest: String::new(),
        })),
    }];
    msgs.extend(bytes.chunks(256 * 1024).map(|c| PushArtifactRequest {
        msg: Some(Msg::Chunk(c.to_vec())),
    }));
    runtime().block_on(async {
        let call = async {
            let ch = channel(addr, ca, Some(identity))
                .await
                .map_err(|e| (tonic::Code::Unavailable, e))?;
            let resp = ControlServiceClient::new(ch)
                .push_artifact(tokio_stream::iter(msgs))
                .await
                .map_err(|s| (s.code(), s.message().to_string()))?;
            Ok(resp.into_inner().digest)
        };
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| Err((tonic::Code::DeadlineExceeded, "no answer".to_string())))
    })
}

/// How a session attempt ended.
#[derive(Debug)]
pub enum SessionOutcome {
    /// The coordinator answered Hello with Welcome.
    Welcomed,
    /// The call or the stream failed, or ended, before any Welcome.
    Refused(String),
}

/// A Hello for `host_id` with no instances.
pub fn hello(host_id: &str) -> Hello {
    Hello {
        host_id: host_id.to_string(),
        agent_version: "0.0.0-hostile".to_string(),
        labels: HashMap::new(),
        instances: Vec::new(),
        report_interval_ms: 500,
    }
}

/// Opens `AgentService.Session`, sends `hello` and keeps the stream open
/// until the coordinator answers, fails or ends it.
pub fn session(addr: &str, ca: &Path, identity: Option<&CertPair>, hello: Hello) -> SessionOutcome {
    runtime().block_on(async {
        let attempt = async {
            let ch = match channel(addr, ca, identity).await {
                Ok(ch) => ch,
                Err(e) => return SessionOutcome::Refused(e),
            };
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let msg = AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            };
            if tx.send(msg).await.is_err() {
                return SessionOutcome::Refused("stream closed before Hello".into());
            }
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            let resp = match AgentServiceClient::new(ch).session(stream).await {
                Ok(resp) => resp,
                Err(s) => {
                    return SessionOutcome::Refused(format!(
                        "Session: {:?}: {}",
                        s.code(),
                        s.message()
                    ));
                }
            };
            let mut inbound = resp.into_inner();
            let outcome = match inbound.message().await {
                Ok(Some(m)) => match m.msg {
                    Some(coordinator_message::Msg::Welcome(_)) => SessionOutcome::Welcomed,
                    other => {
                        SessionOutcome::Refused(format!("first message was not Welcome: {other:?}"))
                    }
                },
                Ok(None) => SessionOutcome::Refused("stream ended without Welcome".into()),
                Err(s) => {
                    SessionOutcome::Refused(format!("stream: {:?}: {}", s.code(), s.message()))
                }
            };
            drop(tx);
            outcome
        };
        tokio::time::timeout(CALL_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                SessionOutcome::Refused("no answer to Hello in time (hung, not refused)".into())
            })
    })
}

/// Asserts the session attempt was refused; returns the reason seen.
#[track_caller]
pub fn assert_session_refused(outcome: SessionOutcome, what: &str) -> String {
    match outcome {
        SessionOutcome::Welcomed => panic!("{what}: the coordinator welcomed the session"),
        SessionOutcome::Refused(reason) => {
            assert!(
                !reason.contains("hung, not refused"),
                "{what}: the coordinator neither answered nor refused"
            );
            reason
        }
    }
}
