//! Server side of the mutual-TLS transport.
//!
//! Client certificates are optional at the TLS layer because `Enroll` must
//! work without one; every other call checks the verified peer certificate
//! (see [`crate::auth`]). A certificate that does not chain to the drover CA,
//! has expired, or has been revoked fails the handshake itself, so such a
//! peer never reaches a handler. Handshakes run in their own tasks with a
//! deadline so a slow or hostile client cannot stall the accept loop, and
//! each refusal is logged and counted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
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

/// Accepts TCP connections and completes TLS handshakes concurrently, feeding
/// finished streams to tonic. Stops accepting when `shutdown` fires.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
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
            tokio::spawn(async move {
                match handshake(&acceptor, tcp, addr).await {
                    Ok(stream) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Err(reason) => {
                        metrics.refused(if reason.contains("revoked") {
                            Refusal::Revoked
                        } else {
                            Refusal::TlsHandshake
                        });
                        tracing::warn!(peer = %addr, %reason, "TLS handshake refused");
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(transport::error_chain(&e)),
        Err(_) => Err(format!(
            "no handshake from {addr} within {}s",
            HANDSHAKE_TIMEOUT.as_secs()
        )),
    }
}
