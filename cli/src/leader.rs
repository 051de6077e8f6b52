//! The control channel under HA coordinators: every call goes to the
//! coordinator in use; when that one does not lead it answers UNAVAILABLE
//! with the leader's address in the `drover-leader` metadata, and the call
//! is sent once more, to the leader, which is then used for the rest of
//! the command. So every command follows the leader without knowing it.
//!
//! A refusal comes before the coordinator reads the request, so resending
//! it is safe. To resend it, the request body is kept: whole when it is
//! small (every call but an artifact upload); a larger one (an upload) is
//! streamed through and not resent: its refusal goes back to the caller
//! with the channel already moved to the leader, so the caller can send it
//! again (`artifact push` does).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use drover_net::transport::{self, ClientTls, ConnectOptions};
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::transport::Channel;
use tower::ServiceExt;

/// Response metadata a coordinator that does not lead sets to the leader's
/// gRPC address (HOST:PORT).
pub const LEADER_METADATA: &str = "drover-leader";

/// Request bodies up to this size are kept so the call can be resent.
const REPLAY_LIMIT: usize = 1 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A channel to the coordinator in use that moves to the leader when told;
/// cheap to clone (clones share the coordinator in use).
#[derive(Clone)]
pub struct LeaderChannel {
    current: Arc<Mutex<Current>>,
    tls: ClientTls,
}

struct Current {
    addr: String,
    channel: Channel,
}

impl LeaderChannel {
    pub fn new(addr: String, channel: Channel, tls: ClientTls) -> LeaderChannel {
        LeaderChannel {
            current: Arc::new(Mutex::new(Current { addr, channel })),
            tls,
        }
    }

    /// The address of the coordinator in use.
    pub fn addr(&self) -> String {
        self.lock().addr.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn forward(self, req: http::Request<Body>) -> Result<http::Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        let (body, replay) = keep(body).await?;
        let (addr, channel) = {
            let c = self.lock();
            (c.addr.clone(), c.channel.clone())
        };
        let resp = channel
            .oneshot(http::Request::from_parts(parts.clone(), body))
            .await?;
        let Some(leader) = leader_in(resp.headers()).filter(|l| *l != addr) else {
            return Ok(resp);
        };
        let channel = match transport::connect(&leader, &self.tls, &ConnectOptions::default()).await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(coordinator = %addr, leader = %leader, "cannot reach the leader: {}", transport::error_chain(&e));
                return Ok(resp);
            }
        };
        tracing::info!(coordinator = %addr, leader = %leader, "not the leader; asking the leader");
        *self.lock() = Current {
            addr: leader,
            channel: channel.clone(),
        };
        // Too large to have been kept: the refusal goes back, and the
        // caller may send it again, now to the leader.
        let Some(bytes) = replay else {
            return Ok(resp);
        };
        let retry = http::Request::from_parts(parts, Body::new(Full::new(bytes)));
        Ok(channel.oneshot(retry).await?)
    }
}

/// The leader named by a refusal whose status is in the headers (a
/// "trailers-only" answer: what a coordinator that does not lead sends).
fn leader_in(headers: &http::HeaderMap) -> Option<String> {
    let status = headers.get("grpc-status")?.to_str().ok()?;
    if status.trim() != (tonic::Code::Unavailable as i32).to_string() {
        return None;
    }
    let leader = headers.get(LEADER_METADATA)?.to_str().ok()?.trim();
    (!leader.is_empty()).then(|| leader.to_string())
}

/// The leader named by a refusal, as the client sees it.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    if status.code() != tonic::Code::Unavailable {
        return None;
    }
    let leader = status
        .metadata()
        .get(LEADER_METADATA)?
        .to_str()
        .ok()?
        .trim();
    (!leader.is_empty()).then(|| leader.to_string())
}

/// Reads `body` up to [`REPLAY_LIMIT`]: a body that ends by then comes back
/// whole, with a copy to resend; a longer one comes back as a body that
/// yields what was read and then the rest, without a copy.
async fn keep(mut body: Body) -> Result<(Body, Option<Bytes>), BoxError> {
    let mut read: VecDeque<Bytes> = VecDeque::new();
    let mut len = 0usize;
    while len <= REPLAY_LIMIT {
        match body.frame().await {
            None => {
                let mut whole = Vec::with_capacity(len);
                for b in &read {
                    whole.extend_from_slice(b);
                }
                let whole = Bytes::from(whole);
                return Ok((Body::new(Full::new(whole.clone())), Some(whole)));
            }
            Some(Err(status)) => return Err(Box::new(status)),
            Some(Ok(frame)) => {
                // Requests carry no trailers; data is all there is.
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    read.push_back(data);
                }
            }
        }
    }
    let head = futures::stream::iter(
        read.into_iter()
            .map(|b| Ok::<_, tonic::Status>(http_body::Frame::data(b))),
    );
    let rest = futures::StreamExt::chain(head, BodyStream::new(body));
    Ok((Body::new(StreamBody::new(rest)), None))
}

impl tower::Service<http::Request<Body>> for LeaderChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call waits for its channel's readiness itself (oneshot).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.clone().forward(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_named_only_by_unavailable() {
        let mut h = http::HeaderMap::new();
        h.insert(LEADER_METADATA, "c2:7443".parse().expect("value"));
        assert_eq!(leader_in(&h), None, "no status: not a refusal");
        h.insert("grpc-status", "14".parse().expect("value"));
        assert_eq!(leader_in(&h).as_deref(), Some("c2:7443"));
        h.insert("grpc-status", "5".parse().expect("value"));
        assert_eq!(leader_in(&h), None);

        let mut s = tonic::Status::unavailable("not the leader");
        assert_eq!(leader_hint(&s), None);
        s.metadata_mut()
            .insert(LEADER_METADATA, "c2:7443".parse().expect("value"));
        assert_eq!(leader_hint(&s).as_deref(), Some("c2:7443"));
    }

    #[tokio::test]
    async fn small_bodies_are_kept_and_large_ones_stream_through() {
        let small = Body::new(Full::new(Bytes::from_static(b"hello")));
        let (body, kept) = keep(small).await.expect("keep");
        assert_eq!(kept.as_deref(), Some(&b"hello"[..]));
        let again = body.collect().await.expect("collect").to_bytes();
        assert_eq!(&again[..], b"hello");

        let chunks: Vec<Result<http_body::Frame<Bytes>, tonic::Status>> = (0..3)
            .map(|i| {
                Ok(http_body::Frame::data(Bytes::from(vec![
                    i as u8;
                    REPLAY_LIMIT / 2
                        + 1
                ])))
            })
            .collect();
        let large = Body::new(StreamBody::new(futures::stream::iter(chunks)));
        let (body, kept) = keep(large).await.expect("keep");
        assert!(kept.is_none(), "too large to keep");
        let all = body.collect().await.expect("collect").to_bytes();
        assert_eq!(all.len(), 3 * (REPLAY_LIMIT / 2 + 1), "nothing lost");
        assert_eq!(all[all.len() - 1], 2);
    }
}
