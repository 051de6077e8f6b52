//! The agent's TLS material in `<data_dir>/tls/`: the drover CA, the agent
//! certificate and its key. Loading (fresh at every connect, so a renewed
//! certificate is picked up without a restart), making CSRs, checking what
//! the coordinator issued, and installing it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use drover_net::transport::{self, ClientTls, PeerCert};
use drover_proto::identity::Identity;
use rcgen::{CertificateParams, DnType, KeyPair, PublicKeyData};

use crate::fsutil::{self, FsError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] FsError),
    #[error("{}: {source}", path.display())]
    Transport {
        path: PathBuf,
        source: transport::TransportError,
    },
    #[error("{}: {source}", path.display())]
    Cert {
        path: PathBuf,
        source: transport::CertError,
    },
    #[error("certificate is for {found}, expected agent/{expected}")]
    WrongIdentity { found: String, expected: String },
    #[error("issued certificate: {0}")]
    Issued(String),
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        source: rcgen::Error,
    },
}

/// Paths of the agent's TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A client configuration ready to dial, and what the certificate says.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    pub client: ClientTls,
    pub cert: PeerCert,
}

impl TlsFiles {
    pub fn new(data_dir: &Path) -> TlsFiles {
        let dir = data_dir.join("tls");
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("agent.pem"),
            key: dir.join("agent.key"),
            dir,
        }
    }

    fn all(&self) -> [&Path; 3] {
        [&self.ca, &self.cert, &self.key]
    }

    /// The first file that is missing, if any: the agent is not enrolled.
    pub fn missing(&self) -> Option<&Path> {
        self.all().into_iter().find(|p| !p.exists())
    }

    /// Whether any part of an enrolment is present.
    pub fn any_present(&self) -> Option<&Path> {
        self.all().into_iter().find(|p| p.exists())
    }

    fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads all three files and builds a client configuration.
    pub fn load(&self) -> Result<LoadedTls, TlsError> {
        let ca = Self::read(&self.ca)?;
        let cert = Self::read(&self.cert)?;
        let key = Self::read(&self.key)?;
        let client = ClientTls::from_pem(&ca, Some((&cert, &key))).map_err(|source| {
            TlsError::Transport {
                path: self.dir.clone(),
                source,
            }
        })?;
        let der = transport::certs_from_pem("agent certificate", &cert).map_err(|source| {
            TlsError::Transport {
                path: self.cert.clone(),
                source: source.into(),
            }
        })?;
        let cert = transport::parse_cert(&der[0]).map_err(|source| TlsError::Cert {
            path: self.cert.clone(),
            source,
        })?;
        Ok(LoadedTls { client, cert })
    }

    /// Installs a new key and certificate (and, at enrolment, the CA):
    /// everything is first written to temporary names, the key first, then
    /// renamed into place, key first.
    pub fn install(
        &self,
        key_pem: &str,
        cert_pem: &str,
        ca_pem: Option<&str>,
    ) -> Result<(), TlsError> {
        fsutil::create_dir(&self.dir, 0o700)?;
        let mut staged = Vec::with_capacity(3);
        let result = (|| {
            staged.push((
                fsutil::write_temp(&self.key, key_pem.as_bytes(), fsutil::SECRET)?,
                &self.key,
            ));
            staged.push((
                fsutil::write_temp(&self.cert, cert_pem.as_bytes(), fsutil::PUBLIC)?,
                &self.cert,
            ));
            if let Some(ca) = ca_pem {
                staged.push((
                    fsutil::write_temp(&self.ca, ca.as_bytes(), fsutil::PUBLIC)?,
                    &self.ca,
                ));
            }
            Ok::<_, FsError>(())
        })();
        if let Err(e) = result {
            for (tmp, _) in &staged {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e.into());
        }
        for (tmp, path) in &staged {
            fsutil::commit(tmp, path)?;
        }
        Ok(())
    }
}

/// A fresh key pair and a CSR for it. The private key never leaves the host.
pub struct NewKey {
    pub key_pem: String,
    pub csr_pem: String,
    spki: Vec<u8>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").finish_non_exhaustive()
    }
}

/// Makes an ECDSA P-256 key and a CSR. The coordinator decides the
/// certificate's identity; the CN is only a hint for people reading it.
pub fn make_csr(host_id: &str) -> Result<NewKey, TlsError> {
    let rc = |what| move |source| TlsError::Rcgen { what, source };
    let key = KeyPair::generate().map_err(rc("generate key"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("agent/{host_id}"));
    let csr_pem = params
        .serialize_request(&key)
        .map_err(rc("make CSR"))?
        .pem()
        .map_err(rc("encode CSR"))?;
    Ok(NewKey {
        key_pem: key.serialize_pem(),
        csr_pem,
        spki: key.subject_public_key_info(),
    })
}

/// Checks that a certificate the coordinator issued is for this host and
/// for the key we made, before it replaces anything on disk.
pub fn check_issued(cert_pem: &str, host_id: &str, key: &NewKey) -> Result<PeerCert, TlsError> {
    let der = transport::certs_from_pem("issued certificate", cert_pem.as_bytes())
        .map_err(|e| TlsError::Issued(e.to_string()))?;
    let peer = transport::parse_cert(&der[0]).map_err(|e| TlsError::Issued(e.to_string()))?;
    let want = Identity::agent(host_id).map_err(|e| TlsError::Issued(e.to_string()))?;
    if peer.identity != want {
        return Err(TlsError::WrongIdentity {
            found: peer.identity.to_string(),
            expected: host_id.to_string(),
        });
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(&der[0])
        .map_err(|e| TlsError::Issued(e.to_string()))?;
    if parsed.public_key().raw != key.spki.as_slice() {
        return Err(TlsError::Issued(
            "certificate is not for the key in our CSR".into(),
        ));
    }
    Ok(peer)
}

/// When to renew: two thirds of the way through the validity period.
pub fn renew_at(cert: &PeerCert) -> SystemTime {
    let lifetime = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or(Duration::ZERO);
    cert.not_before + lifetime * 2 / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let cert = PeerCert {
            identity: Identity::agent("h1").expect("id"),
            serial: "01".into(),
            not_before: start,
            not_after: start + Duration::from_secs(300),
        };
        assert_eq!(renew_at(&cert), start + Duration::from_secs(200));
    }

    #[test]
    fn csr_and_install() {
        let key = make_csr("h1").expect("csr");
        assert!(key.csr_pem.contains("BEGIN CERTIFICATE REQUEST"));
        assert!(check_issued("garbage", "h1", &key).is_err());
        let dir = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles::new(dir.path());
        assert_eq!(files.missing(), Some(files.ca.as_path()));
        files
            .install(&key.key_pem, "cert", Some("ca"))
            .expect("install");
        assert!(files.missing().is_none());
        assert_eq!(std::fs::read_to_string(&files.cert).expect("read"), "cert");
        assert!(files.load().is_err());
    }
}
