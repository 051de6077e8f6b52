//! The drover certificate authority: creating it, issuing certificates for
//! coordinators and people, and signing agents' enrolment CSRs.
//!
//! Every certificate carries exactly one identity URI SAN
//! (`drover://<role>/<name>`, see [`crate::identity`]). Keys are ECDSA
//! P-256. Private keys are written with mode 0600 and never overwritten.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::cert::{self, PeerCert};
use crate::identity::{Identity, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// File names inside a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";

/// How long a CA made by `drover ca init` is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists; refusing to overwrite a key or certificate")]
    Exists(PathBuf),
    #[error("{what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("{0}")]
    Cert(#[from] cert::CertError),
    #[error("{0}")]
    Pem(#[from] cert::PemError),
    #[error("invalid subject alternative name `{0}`: expected a DNS name or an IP address")]
    San(String),
    #[error("certificate signing request: {0}")]
    Csr(String),
}

fn rc(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Rcgen {
        what: what.to_string(),
        source,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to a new file; refuses to replace an existing one.
/// Secrets get mode 0600.
pub fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_path_buf())
        } else {
            PkiError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Replaces `path` atomically (write to a temp file, fsync, rename), so a
/// crash never leaves half a certificate behind.
pub fn write_atomic(path: &Path, contents: &[u8], secret: bool) -> Result<(), PkiError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, secret)?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so the hex form is stable.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
    pub not_after: SystemTime,
}

/// A loaded CA, able to sign.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA in `dir` (`ca.pem`, `ca.key`). Refuses to overwrite.
    pub fn init(dir: &Path, name: &str) -> Result<Ca, PkiError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(PkiError::Exists(p.clone()));
            }
        }
        let key = KeyPair::generate().map_err(rc("generate CA key"))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("drover CA {name}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "drover");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(300)).into();
        params.not_after = (now + CA_LIFETIME).into();
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(rc("self-sign CA"))?;
        write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
        write_new(&cert_path, cert.pem().as_bytes(), false)?;
        Ca::load(dir)
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        Ca::load_files(&dir.join(CA_CERT_FILE), &dir.join(CA_KEY_FILE))
    }

    pub fn load_files(cert_path: &Path, key_path: &Path) -> Result<Ca, PkiError> {
        let cert_pem = fs::read_to_string(cert_path).map_err(io(cert_path))?;
        let key_pem = fs::read_to_string(key_path).map_err(io(key_path))?;
        Ca::from_pem(&cert_pem, &key_pem)
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(rc("parse CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(rc("parse CA certificate"))?;
        let cert_der = cert::certs_from_pem("CA certificate", cert_pem.as_bytes())?
            .remove(0)
            .to_vec();
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            cert_der,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// sha256 of the CA certificate, lowercase hex.
    pub fn fingerprint(&self) -> String {
        cert::fingerprint(&self.cert_der)
    }

    fn leaf_params(
        identity: &Identity,
        sans: &[String],
        lifetime: Duration,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.to_string());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "drover");
        let uri = identity
            .uri()
            .try_into()
            .map_err(|e| rc("identity URI")(e))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for san in sans {
            let san_type = match san.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    let valid = !san.is_empty()
                        && san.len() <= 253
                        && san
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
                    if !valid {
                        return Err(PkiError::San(san.clone()));
                    }
                    SanType::DnsName(
                        san.clone()
                            .try_into()
                            .map_err(|_| PkiError::San(san.clone()))?,
                    )
                }
            };
            params.subject_alt_names.push(san_type);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match identity.role {
            Role::Coordinator => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            _ => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        // Tolerate a little clock skew between hosts, but never more than a
        // tenth of the lifetime, so short-lived test certificates still renew
        // on schedule.
        let backdate = (lifetime / 10).min(Duration::from_secs(60));
        params.not_before = (now - backdate).into();
        params.not_after = (now + lifetime).into();
        params.serial_number = Some(random_serial());
        Ok(params)
    }

    /// Issues a certificate with a fresh key for a coordinator or a person.
    pub fn issue(
        &self,
        identity: &Identity,
        sans: &[String],
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let params = Ca::leaf_params(identity, sans, lifetime)?;
        let key = KeyPair::generate().map_err(rc("generate key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rc("sign certificate"))?;
        let peer = crate::cert::parse_cert(cert.der())?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: peer.serial,
            not_after: peer.not_after,
        })
    }

    /// Signs an agent's CSR. Only the CSR's public key is used: the identity,
    /// usages and lifetime are the coordinator's to decide.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<(String, PeerCert), PkiError> {
        if csr_pem.len() > 16 * 1024 {
            return Err(PkiError::Csr("larger than 16 KiB".into()));
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Csr(e.to_string()))?;
        let params = Ca::leaf_params(identity, &[], lifetime)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(rc("sign certificate"))?;
        let peer = crate::cert::parse_cert(cert.der())?;
        Ok((cert.pem(), peer))
    }
}

/// Makes a key pair and a CSR for it, as an agent does before enrolment and
/// renewal. Returns (key PEM, CSR PEM).
pub fn make_csr(host_id: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(rc("generate key"))?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("agent/{host_id}"));
    let csr = params
        .serialize_request(&key)
        .map_err(rc("make CSR"))?
        .pem()
        .map_err(rc("encode CSR"))?;
    Ok((key.serialize_pem(), csr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_signs_with_identities() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "test").expect("init");
        assert!(matches!(
            Ca::init(dir.path(), "test"),
            Err(PkiError::Exists(_))
        ));
        let loaded = Ca::load(dir.path()).expect("load");
        assert_eq!(loaded.fingerprint(), ca.fingerprint());

        let id = Identity::new(Role::Operator, "alice").expect("id");
        let issued = ca
            .issue(
                &id,
                &["localhost".into(), "127.0.0.1".into()],
                Duration::from_secs(3600),
            )
            .expect("issue");
        let der = cert::certs_from_pem("c", issued.cert_pem.as_bytes()).expect("pem");
        assert_eq!(cert::parse_cert(&der[0]).expect("parse").identity, id);

        let (_key, csr) = make_csr("h1").expect("csr");
        let agent = Identity::agent("h1").expect("id");
        let (_pem, peer) = ca
            .sign_csr(&csr, &agent, Duration::from_secs(60))
            .expect("sign");
        assert_eq!(peer.identity, agent);
        assert!(
            ca.sign_csr("garbage", &agent, Duration::from_secs(60))
                .is_err()
        );
    }

    #[test]
    fn refuses_bad_sans() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(dir.path(), "t").expect("init");
        let id = Identity::new(Role::Coordinator, "c1").expect("id");
        assert!(matches!(
            ca.issue(&id, &["bad name!".into()], Duration::from_secs(60)),
            Err(PkiError::San(_))
        ));
    }
}
