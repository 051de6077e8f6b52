//! Certificate helpers both ends of a connection need: reading PEM, reading
//! the drover identity, serial and validity out of a certificate, and the CA
//! fingerprint join tokens are printed with. No I/O, no TLS.

use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::identity::{Identity, IdentityError, SCHEME};

/// PEM text that holds no certificate or key, or cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: {source}")]
    Pem {
        what: String,
        source: rustls_pki_types::pem::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    #[error("certificate has no drover identity (URI SAN drover://<role>/<name>)")]
    NoIdentity,
    #[error("certificate identity: {0}")]
    Identity(#[from] IdentityError),
}

/// What a verified peer certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    pub identity: Identity,
    /// Serial number, lowercase hex without separators.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Reads the drover identity, serial and validity out of a DER certificate.
/// Does not verify anything: call it on certificates the TLS layer verified.
pub fn parse_cert(der: &[u8]) -> Result<PeerCert, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Parse(e.to_string()))?;
    let mut identity = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name
                && uri.starts_with(SCHEME)
            {
                identity = Some(Identity::parse_uri(uri)?);
                break;
            }
        }
    }
    let identity = identity.ok_or(CertError::NoIdentity)?;
    let to_time = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok(PeerCert {
        identity,
        serial: hex::encode(cert.raw_serial()),
        not_before: to_time(cert.validity().not_before),
        not_after: to_time(cert.validity().not_after),
    })
}

/// sha256 of a DER certificate, lowercase hex: the CA fingerprint that join
/// tokens are printed with.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Accepts `sha256:AB:CD...`, `AB:CD...` or plain hex; returns lowercase hex.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s
        .strip_prefix("sha256:")
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    (hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit())).then(|| hex.to_lowercase())
}

pub fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| PemError::Pem {
            what: what.to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

pub fn key_from_pem(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|source| PemError::Pem {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_fingerprints() {
        let hex = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(normalize_fingerprint(&hex), Some(hex.clone()));
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{colons}")),
            Some(hex)
        );
        assert_eq!(normalize_fingerprint("abc"), None);
    }
}
