//! Server side of the mutual-TLS transport.
//!
//! Client certificates are optional at the TLS layer because `Enroll` must
//! work without one; every other call checks the verified peer certificate
//! (see [`crate::auth`]). A certificate that does not chain to the drover CA,
//! has expired, or has been revoked fails the handshake itself, so such a
//! peer never reaches a handler. Handshakes run in their own tasks with a
//! deadline so a slow or hostile client cannot stall the accept loop, and
//! each refusal is logged and counted. A connection without a client
//! certificate exists only to `Enroll`: there is a cap on how many are
//! open ([`Enrolling`]) and each is closed at a deadline unless it has
//! enrolled by then.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use drover_net::transport::{self, certs_from_pem, key_from_pem};
use rustls::DistinguishedName;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::metrics::{Metrics, Refusal};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serials (lowercase hex) the coordinator refuses. Read on every handshake,
/// written on revocation.
#[derive(Debug, Default)]
pub struct RevocationList {
    serials: RwLock<HashSet<String>>,
}

impl RevocationList {
    pub fn contains(&self, serial: &str) -> bool {
        self.serials
            .read()
            .map(|s| s.contains(serial))
            .unwrap_or(true)
    }

    pub fn insert(&self, serial: String) {
        if let Ok(mut s) = self.serials.write() {
            s.insert(serial);
        }
    }
}

#[derive(Debug)]
struct Verifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevocationList>,
}

impl ClientCertVerifier for Verifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let peer =
            transport::parse_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if self.revoked.contains(&peer.serial) {
            return Err(rustls::Error::General(format!(
                "certificate {} (serial {}) has been revoked",
                peer.identity, peer.serial
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    Pem(#[from] transport::PemError),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Builds the server configuration. The CA is appended to the served chain
/// so that enrolling agents, which only know its fingerprint, can pin it.
pub fn server_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
    revoked: Arc<RevocationList>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = transport::provider();
    let cas = certs_from_pem("CA certificate", ca_pem)?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        roots.add(ca.clone())?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let verifier = Arc::new(Verifier { inner, revoked });
    let mut chain = certs_from_pem("coordinator certificate", cert_pem)?;
    for ca in cas {
        if !chain.contains(&ca) {
            chain.push(ca);
        }
    }
    let key = key_from_pem("coordinator key", key_pem)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The connections without a client certificate, which are only there to
/// `Enroll`: how many may be open at once and how long each may stay
/// without completing one. Without this, idle cert-less connections held
/// about 24 KiB each for as long as the peer liked.
#[derive(Debug)]
pub struct Enrolling {
    limit: usize,
    timeout: Duration,
    metrics: Arc<Metrics>,
    open: Mutex<EnrollingState>,
}

#[derive(Debug, Default)]
struct EnrollingState {
    next_id: u64,
    /// By peer address: (connection id, enrolled flag).
    by_addr: HashMap<SocketAddr, (u64, Arc<AtomicBool>)>,
}

impl Enrolling {
    pub fn new(limit: usize, timeout: Duration, metrics: Arc<Metrics>) -> Arc<Enrolling> {
        Arc::new(Enrolling {
            limit,
            timeout,
            metrics,
            open: Mutex::new(EnrollingState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, EnrollingState> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new cert-less connection from `addr`, or `None` when
    /// `limit` are open already.
    fn admit(self: &Arc<Self>, addr: SocketAddr) -> Option<Admitted> {
        let mut st = self.lock();
        if st.by_addr.len() >= self.limit {
            return None;
        }
        st.next_id += 1;
        let id = st.next_id;
        let enrolled = Arc::new(AtomicBool::new(false));
        st.by_addr.insert(addr, (id, enrolled.clone()));
        self.metrics
            .enrolling_connections
            .set(st.by_addr.len() as i64);
        Some(Admitted {
            owner: self.clone(),
            addr,
            id,
            enrolled,
        })
    }

    /// The connection from `addr` completed an `Enroll`: it is no longer
    /// closed at the deadline (it still counts against the limit while open).
    pub fn completed(&self, addr: Option<SocketAddr>) {
        let Some(addr) = addr else { return };
        if let Some((_, flag)) = self.lock().by_addr.get(&addr) {
            flag.store(true, Ordering::Release);
        }
    }

    /// Connections without a certificate open now.
    pub fn open(&self) -> usize {
        self.lock().by_addr.len()
    }
}

/// One cert-less connection's place under the limit; freed on drop.
#[derive(Debug)]
struct Admitted {
    owner: Arc<Enrolling>,
    addr: SocketAddr,
    id: u64,
    enrolled: Arc<AtomicBool>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut st = self.owner.lock();
        // The address may already belong to a newer connection.
        if st
            .by_addr
            .get(&self.addr)
            .is_some_and(|(id, _)| *id == self.id)
        {
            st.by_addr.remove(&self.addr);
        }
        self.owner
            .metrics
            .enrolling_connections
            .set(st.by_addr.len() as i64);
    }
}

/// What an accepted connection carries under TLS: the TCP stream and, for
/// a connection without a client certificate, its deadline. Past the
/// deadline without a completed `Enroll`, reads and writes fail and the
/// HTTP/2 server closes the connection. The deadline is a timer of its
/// own, polled with every read, so an idle connection is woken to close.
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    guard: Option<Guard>,
}

#[derive(Debug)]
struct Guard {
    admitted: Admitted,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: bool,
}

impl Conn {
    fn new(tcp: TcpStream) -> Conn {
        Conn { tcp, guard: None }
    }

    /// `Err` once the connection is past its deadline without an `Enroll`.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        let Some(g) = self.guard.as_mut() else {
            return Ok(());
        };
        if !g.expired {
            if g.admitted.enrolled.load(Ordering::Acquire) {
                return Ok(());
            }
            if g.deadline.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            g.expired = true;
            let owner = &g.admitted.owner;
            owner.metrics.refused(Refusal::EnrollTimeout);
            tracing::warn!(
                peer = %g.admitted.addr,
                "closing a connection without a client certificate: no Enroll within {}",
                humantime::format_duration(owner.timeout)
            );
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no client certificate and no Enroll before the deadline",
        ))
    }
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: self.tcp.local_addr().ok(),
            remote_addr: self.tcp.peer_addr().ok(),
        }
    }
}

/// Finished handshakes, in the order they finished.
pub type Incoming = ReceiverStream<Result<TlsStream<Conn>, std::io::Error>>;

/// Accepts TCP connections and completes TLS handshakes concurrently, feeding
/// finished streams to tonic. Stops accepting when `shutdown` fires. The
/// accept loop and every handshake are tasks of `tasks`.
///
/// A connection without a client certificate takes a place under
/// `enrolling`'s limit (refused when there is none) and is closed at its
/// deadline unless it completed an `Enroll` by then.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
    enrolling: Arc<Enrolling>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) -> Incoming {
    // Bounded: when tonic does not take finished handshakes, handshakes
    // wait here (each still under its own deadline) instead of piling up.
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshakes = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, addr) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let metrics = metrics.clone();
            let enrolling = enrolling.clone();
            let shutdown = shutdown.clone();
            handshakes.spawn(async move {
                let done = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    done = handshake(&acceptor, Conn::new(tcp), addr) => done,
                };
                let mut stream = match done {
                    Ok(stream) => stream,
                    Err(reason) => {
                        metrics.refused(if reason.contains("revoked") {
                            Refusal::Revoked
                        } else {
                            Refusal::TlsHandshake
                        });
                        tracing::warn!(peer = %addr, %reason, "TLS handshake refused");
                        return;
                    }
                };
                let has_cert = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|c| !c.is_empty());
                if !has_cert {
                    let Some(admitted) = enrolling.admit(addr) else {
                        metrics.refused(Refusal::EnrollingLimit);
                        tracing::warn!(
                            peer = %addr,
                            limit = enrolling.limit,
                            "refused a connection without a client certificate: too many are open (agents.max_enrolling_connections)"
                        );
                        return;
                    };
                    stream.get_mut().0.guard = Some(Guard {
                        admitted,
                        deadline: Box::pin(tokio::time::sleep(enrolling.timeout)),
                        expired: false,
                    });
                }
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tx.send(Ok(stream)) => {}
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: Conn,
    addr: SocketAddr,
) -> Result<TlsStream<Conn>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(transport::error_chain(&e)),
        Err(_) => Err(format!(
            "no handshake from {addr} within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn enrolling_connections_are_capped_and_freed_on_drop() {
        let metrics = Arc::new(Metrics::new());
        let e = Enrolling::new(2, Duration::from_secs(10), metrics.clone());
        let a = e.admit(addr(1)).expect("first");
        let b = e.admit(addr(2)).expect("second");
        assert!(e.admit(addr(3)).is_none(), "over the cap");
        assert_eq!(e.open(), 2);
        assert!(
            metrics.encode().contains("drover_enrolling_connections 2"),
            "{}",
            metrics.encode()
        );
        drop(a);
        assert_eq!(e.open(), 1);
        let c = e.admit(addr(3)).expect("a freed place");
        drop((b, c));
        assert_eq!(e.open(), 0);
    }

    #[test]
    fn a_reused_address_keeps_the_newer_connection() {
        let e = Enrolling::new(4, Duration::from_secs(10), Arc::new(Metrics::new()));
        let old = e.admit(addr(1)).expect("old");
        let new = e.admit(addr(1)).expect("new, same address");
        drop(old);
        e.completed(Some(addr(1)));
        assert!(
            new.enrolled.load(Ordering::Acquire),
            "the newer one enrolled"
        );
    }
}
