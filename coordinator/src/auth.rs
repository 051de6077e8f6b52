//! Who is calling, and may they? Identity comes only from the verified peer
//! certificate; message fields are never trusted for it.

use std::net::SocketAddr;
use std::sync::Arc;

use drover_net::transport::{self, PeerCert};
use drover_proto::identity::Role;
use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::metrics::{Metrics, Refusal};
use crate::tls::RevocationList;

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub cert: PeerCert,
    pub addr: Option<SocketAddr>,
}

/// Checks callers against the roles a call allows, counting refusals.
#[derive(Debug, Clone)]
pub struct Authorizer {
    pub metrics: Arc<Metrics>,
    pub revoked: Arc<RevocationList>,
}

/// The peer's address, whether or not it presented a certificate.
pub fn peer_addr<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.get_ref().remote_addr())
}

impl Authorizer {
    /// The caller, if it presented a valid, unrevoked drover certificate
    /// with one of `allowed` roles.
    pub fn require<T>(&self, req: &Request<T>, allowed: &[Role]) -> Result<Caller, tonic::Status> {
        let addr = peer_addr(req);
        let Some(certs) = req.peer_certs() else {
            self.metrics.refused(Refusal::NoCertificate);
            tracing::warn!(peer = ?addr, "refused: no client certificate");
            return Err(tonic::Status::unauthenticated(
                "a client certificate is required: use a certificate from `drover cert issue` (people) or enrol the agent",
            ));
        };
        let Some(leaf) = certs.first() else {
            self.metrics.refused(Refusal::NoCertificate);
            return Err(tonic::Status::unauthenticated(
                "empty client certificate chain",
            ));
        };
        let cert = transport::parse_cert(leaf).map_err(|e| {
            self.metrics.refused(Refusal::BadRequest);
            tonic::Status::unauthenticated(format!("client certificate: {e}"))
        })?;
        if self.revoked.contains(&cert.serial) {
            self.metrics.refused(Refusal::Revoked);
            tracing::warn!(peer = ?addr, identity = %cert.identity, "refused: revoked certificate");
            return Err(tonic::Status::permission_denied(format!(
                "certificate {} (serial {}) has been revoked",
                cert.identity, cert.serial
            )));
        }
        if !allowed.contains(&cert.identity.role) {
            self.metrics.refused(Refusal::WrongRole);
            tracing::warn!(peer = ?addr, identity = %cert.identity, "refused: role may not make this call");
            let wanted: Vec<String> = allowed
                .iter()
                .map(|r| match r {
                    Role::Agent | Role::Operator => format!("an {r}"),
                    Role::Viewer | Role::Coordinator => format!("a {r}"),
                })
                .collect();
            return Err(tonic::Status::permission_denied(format!(
                "{} may not make this call; it needs {} certificate",
                cert.identity,
                wanted.join(" or ")
            )));
        }
        Ok(Caller { cert, addr })
    }
}

/// Roles that may read the fleet.
pub const READERS: &[Role] = &[Role::Operator, Role::Viewer];
/// Roles that may change it.
pub const WRITERS: &[Role] = &[Role::Operator];
