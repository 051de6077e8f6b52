//! Client side of drover's mutual-TLS transport, shared by the agent and the
//! CLI. The certificate helpers both sides need live in
//! [`drover_model::cert`] and are re-exported here.
//!
//! A coordinator is trusted when its certificate chains to the drover CA and
//! carries the URI SAN `drover://coordinator/<name>`. The name the client
//! dialled is not checked: coordinators move between addresses, and the CA
//! only ever signs coordinator identities for coordinators. Before enrolment
//! an agent has no CA yet, only the CA's sha256 fingerprint from the join
//! token; [`Trust::Pinned`] then requires the coordinator to present that CA
//! in its chain.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint, Uri};

use drover_model::identity::Role;

pub use drover_model::cert::{
    CertError, PeerCert, PemError, certs_from_pem, fingerprint, key_from_pem,
    normalize_fingerprint, parse_cert,
};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Pem(#[from] PemError),
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid coordinator address `{addr}`: {reason}")]
    Address { addr: String, reason: String },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
}

/// The ring provider, the only one drover builds with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How the client decides to trust the coordinator.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The drover CA certificate(s).
    Ca(Vec<CertificateDer<'static>>),
    /// Only the CA's sha256 fingerprint (lowercase hex), before enrolment.
    Pinned(String),
}

/// Checks that the server is a drover coordinator, as described in the
/// module docs.
#[derive(Debug)]
struct CoordinatorVerifier {
    trust: Trust,
    algs: WebPkiSupportedAlgorithms,
}

impl CoordinatorVerifier {
    fn roots(&self, intermediates: &[CertificateDer<'_>]) -> Result<RootCertStore, rustls::Error> {
        let mut roots = RootCertStore::empty();
        match &self.trust {
            Trust::Ca(cas) => {
                for ca in cas {
                    roots.add(ca.clone())?;
                }
            }
            Trust::Pinned(pin) => {
                let ca = intermediates
                    .iter()
                    .find(|c| fingerprint(c) == *pin)
                    .ok_or_else(|| {
                        rustls::Error::General(format!(
                            "the coordinator did not present a CA with fingerprint sha256:{pin}; \
                             check --ca-fingerprint against `drover token create` output"
                        ))
                    })?;
                roots.add(ca.clone().into_owned())?;
            }
        }
        Ok(roots)
    }
}

impl ServerCertVerifier for CoordinatorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self.roots(intermediates)?;
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let peer = parse_cert(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        if peer.identity.role != Role::Coordinator {
            return Err(rustls::Error::General(format!(
                "peer presents identity {} where a coordinator was expected",
                peer.identity
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A ready rustls client configuration for talking to coordinators.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// `identity` is the client certificate chain and key; `None` only for
    /// enrolment.
    pub fn new(
        trust: Trust,
        identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> Result<Self, TransportError> {
        let provider = provider();
        let verifier = Arc::new(CoordinatorVerifier {
            trust,
            algs: provider.signature_verification_algorithms,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
        })
    }

    /// Builds from PEM text: the CA, and optionally a certificate and key.
    pub fn from_pem(
        ca_pem: &[u8],
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, TransportError> {
        let cas = certs_from_pem("CA certificate", ca_pem)?;
        let identity = match identity {
            Some((cert, key)) => Some((
                certs_from_pem("client certificate", cert)?,
                key_from_pem("client key", key)?,
            )),
            None => None,
        };
        Self::new(Trust::Ca(cas), identity)
    }
}

/// Splits `host:port`, `[v6]:port` or `https://host:port` into host and port.
pub fn parse_addr(addr: &str) -> Result<(String, u16), TransportError> {
    let bad = |reason: &str| TransportError::Address {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let rest = addr
        .strip_prefix("https://")
        .or_else(|| addr.strip_prefix("http://"))
        .unwrap_or(addr)
        .trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| bad("port must be a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port must be a number from 1 to 65535"));
    }
    Ok((host.to_string(), port))
}

/// Options for [`connect`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive: how often to ping an idle connection, so a dead
    /// peer is noticed without waiting for TCP.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Some(Duration::from_secs(20)),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

impl ConnectOptions {
    /// For an agent's long-lived session: a coordinator that falls silent
    /// (its machine partitioned or frozen, no FIN or RST ever coming) is
    /// noticed within 10 s, so the agent moves to the coordinator that took
    /// over well within the new leader's `lost_timeout` (15 s by default).
    /// The pings cost a few dozen bytes per agent every 5 s.
    pub fn session() -> Self {
        ConnectOptions {
            keepalive_interval: Some(Duration::from_secs(5)),
            keepalive_timeout: Duration::from_secs(5),
            ..ConnectOptions::default()
        }
    }
}

/// Opens an mTLS gRPC channel to a coordinator. The TLS handshake happens
/// here, so a refused certificate can surface either here or, with TLS 1.3,
/// on the first call.
pub async fn connect(
    addr: &str,
    tls: &ClientTls,
    opts: &ConnectOptions,
) -> Result<Channel, TransportError> {
    let (host, port) = parse_addr(addr)?;
    let uri_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let uri: Uri =
        format!("http://{uri_host}:{port}")
            .parse()
            .map_err(|e: http::uri::InvalidUri| TransportError::Address {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
    let server_name = ServerName::try_from(host.clone()).map_err(|e| TransportError::Address {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let target = format!("{uri_host}:{port}");
    let make = tower::service_fn(move |_: Uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let target = target.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let mut endpoint = Endpoint::from(uri)
        .connect_timeout(opts.connect_timeout)
        .keep_alive_timeout(opts.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if let Some(interval) = opts.keepalive_interval {
        endpoint = endpoint.http2_keep_alive_interval(interval);
    }
    endpoint
        .connect_with_connector(make)
        .await
        .map_err(|source| TransportError::Connect {
            addr: addr.to_string(),
            source,
        })
}

/// Joins an error and its sources into one line, so the reason a TLS
/// handshake failed (buried several levels down) reaches the operator.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:7443").ok(),
            Some(("127.0.0.1".into(), 7443))
        );
        assert_eq!(parse_addr("https://c1:1").ok(), Some(("c1".into(), 1)));
        assert_eq!(parse_addr("[::1]:9").ok(), Some(("::1".into(), 9)));
        assert!(parse_addr("c1").is_err());
        assert!(parse_addr("c1:0").is_err());
        assert!(parse_addr(":80").is_err());
    }
}
