//! Dialling the coordinator the way an agent does (TCP, mutual TLS with
//! the host's own certificate, HTTP/2 with keepalive), from a chosen
//! loopback source address so that more sessions fit than one address has
//! ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use drover_net::transport::{certs_from_pem, key_from_pem, provider};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tonic::transport::{Channel, Endpoint, Uri};

/// Sessions per loopback source address: well under the 28,000 or so
/// ephemeral ports a default Linux gives one address.
const SESSIONS_PER_SOURCE: usize = 16_000;

/// Builds TLS client configurations and opens channels to one coordinator.
#[derive(Clone)]
pub struct Dialer {
    server: SocketAddr,
    server_name: ServerName<'static>,
    verifier: Arc<WebPkiServerVerifier>,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// `server` is the coordinator's gRPC address; its certificate must
    /// chain to `ca_pem` and name the address's IP (the harness issues it
    /// for 127.0.0.1).
    pub fn new(server: SocketAddr, ca_pem: &[u8]) -> Result<Dialer> {
        let mut roots = RootCertStore::empty();
        for ca in certs_from_pem("CA certificate", ca_pem)? {
            roots.add(ca).context("add the CA to the trust store")?;
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .context("build the server certificate verifier")?;
        Ok(Dialer {
            server,
            server_name: ServerName::IpAddress(server.ip().into()),
            verifier,
            connect_timeout: Duration::from_secs(20),
        })
    }

    /// A client configuration presenting `cert_pem` / `key_pem`. Session
    /// resumption is off: every simulated agent pays a full handshake, as a
    /// real agent's first connection does.
    pub fn client_config(&self, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>> {
        let chain = certs_from_pem("client certificate", cert_pem.as_bytes())?;
        let key = key_from_pem("client key", key_pem.as_bytes())?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_webpki_verifier(self.verifier.clone())
            .with_client_auth_cert(chain, key)
            .context("client certificate and key")?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }

    /// Opens an HTTP/2 channel over mutual TLS from `source` (port chosen
    /// by the kernel). The handshake happens here; a reconnect after a
    /// lost connection runs it again from the same source address.
    pub async fn channel(&self, config: Arc<ClientConfig>, source: IpAddr) -> Result<Channel> {
        let server = self.server;
        let name = self.server_name.clone();
        let connector = tokio_rustls::TlsConnector::from(config);
        let make = tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let name = name.clone();
            async move {
                let sock = match source {
                    IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                };
                sock.bind(SocketAddr::new(source, 0))?;
                let tcp = sock.connect(server).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        // The same HTTP/2 settings as drover_net::transport::connect.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.server))
            .context("coordinator URI")?
            .connect_timeout(self.connect_timeout)
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .http2_keep_alive_interval(Duration::from_secs(20))
            .tcp_nodelay(true);
        let channel =
            tokio::time::timeout(self.connect_timeout, endpoint.connect_with_connector(make))
                .await
                .context("connect: timed out")?
                .context("connect")?;
        Ok(channel)
    }
}

/// The loopback source address for session `index` of `total`: 127.0.0.1
/// while one address has ports enough, then spread over 127.0.0.1.. so no
/// address carries more than [`SESSIONS_PER_SOURCE`].
pub fn source_addr(index: usize, total: usize) -> IpAddr {
    let sources = total.div_ceil(SESSIONS_PER_SOURCE).max(1);
    let n = (index % sources) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n))
}
