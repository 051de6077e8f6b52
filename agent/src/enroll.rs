//! `drover-agent enroll`: trade a join token for a certificate.
//!
//! The key pair is made here and never leaves the host; only a CSR is
//! sent. Before enrolment the agent does not have the CA, only its sha256
//! fingerprint from the join token, so the coordinator is trusted by
//! [`Trust::Pinned`] and the CA it returns must hash to the same pin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use drover_net::transport::{self, ClientTls, ConnectOptions, TransportError, Trust};
use drover_proto::v1::agent_service_client::AgentServiceClient;
use drover_proto::v1::{EnrollRequest, EnrollResponse};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::fsutil::{self, FsError};
use crate::tls::{self, TlsError, TlsFiles};

/// Bound on the whole exchange with the coordinator.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Written next to the TLS directory: what the operator attached to the
/// join token, merged under the config's labels at run time.
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// `drover-agent enroll` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EnrollOptions {
    /// Coordinator address, HOST:PORT; several, comma-separated, are tried
    /// in turn (HA: a coordinator that does not lead names the leader,
    /// which is asked next).
    #[arg(long)]
    pub coordinator: String,
    /// Join token from `drover token create`.
    #[arg(long, env = "DROVER_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// sha256 fingerprint of the drover CA from `drover token create`
    /// (`sha256:hex`, `AB:CD:..` or plain hex).
    #[arg(long)]
    pub ca_fingerprint: String,
    /// Replace an existing enrolment.
    #[arg(long)]
    pub force: bool,
}

/// What the coordinator issued.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub host_id: String,
    pub serial: String,
    pub not_after: SystemTime,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error(
        "--ca-fingerprint `{0}`: expected a sha256 fingerprint (64 hex digits, optionally `sha256:` and colons)"
    )]
    BadFingerprint(String),
    #[error("--coordinator: {0}")]
    BadAddress(TransportError),
    #[error("--token: expected the join token printed by `drover token create`")]
    EmptyToken,
    #[error(
        "already enrolled ({} exists); pass --force to replace the enrolment",
        .0.display()
    )]
    AlreadyEnrolled(PathBuf),
    #[error("{}", transport::error_chain(.0))]
    Connect(TransportError),
    #[error("timed out talking to the coordinator")]
    Timeout,
    #[error("enrolment refused: {0}")]
    Refused(String),
    #[error(
        "the coordinator returned a CA with fingerprint sha256:{got}, not the pinned sha256:{pinned}; refusing it"
    )]
    CaMismatch { pinned: String, got: String },
    #[error("the coordinator's reply: {0}")]
    BadReply(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl EnrollError {
    /// 2 for usage errors the operator fixes on the command line, 1 for
    /// everything else (refused, unreachable, I/O).
    pub fn exit_code(&self) -> u8 {
        match self {
            EnrollError::BadFingerprint(_)
            | EnrollError::BadAddress(_)
            | EnrollError::EmptyToken
            | EnrollError::AlreadyEnrolled(_) => 2,
            _ => 1,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct EnrollmentRecord {
    host_id: String,
    coordinator: String,
    enrolled_at: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Enrols this host with the coordinator at `opts.coordinator`.
pub async fn enroll(config: &Config, opts: &EnrollOptions) -> Result<Enrolled, EnrollError> {
    let pin = transport::normalize_fingerprint(&opts.ca_fingerprint)
        .ok_or_else(|| EnrollError::BadFingerprint(opts.ca_fingerprint.clone()))?;
    let addrs = coordinator_list(&opts.coordinator)?;
    let token = opts.token.trim();
    if token.is_empty() {
        return Err(EnrollError::EmptyToken);
    }
    let files = TlsFiles::new(&config.data_dir);
    if !opts.force
        && let Some(existing) = files.any_present()
    {
        return Err(EnrollError::AlreadyEnrolled(existing.to_path_buf()));
    }
    fsutil::create_dir(&files.dir, 0o700)?;

    let key = tls::make_csr(&config.host_id)?;
    let tls_config =
        ClientTls::new(Trust::Pinned(pin.clone()), None).map_err(EnrollError::Connect)?;
    let request = EnrollRequest {
        token: token.to_string(),
        host_id: config.host_id.clone(),
        csr_pem: key.csr_pem.clone(),
    };
    let (answered, reply) = exchange(&addrs, &tls_config, &request).await?;
    let ca = transport::certs_from_pem("CA certificate", reply.ca_pem.as_bytes())
        .map_err(|e| EnrollError::BadReply(e.to_string()))?;
    let got = transport::fingerprint(&ca[0]);
    if got != pin {
        return Err(EnrollError::CaMismatch { pinned: pin, got });
    }
    let peer = tls::check_issued(&reply.cert_pem, &config.host_id, &key)?;

    // Key first (0600, temp name), then certificate and CA; then renamed.
    files.install(&key.key_pem, &reply.cert_pem, Some(&reply.ca_pem))?;
    let labels: BTreeMap<String, String> = reply.labels.into_iter().collect();
    let record = EnrollmentRecord {
        host_id: config.host_id.clone(),
        coordinator: answered,
        enrolled_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        labels: labels.clone(),
    };
    let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
    fsutil::write_atomic(
        &config.data_dir.join(ENROLLMENT_FILE),
        &json,
        fsutil::PUBLIC,
    )?;

    Ok(Enrolled {
        host_id: config.host_id.clone(),
        serial: peer.serial,
        not_after: peer.not_after,
        labels,
    })
}

/// `--coordinator A,B,...`, each checked.
fn coordinator_list(arg: &str) -> Result<Vec<String>, EnrollError> {
    let addrs: Vec<String> = arg
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if addrs.is_empty() {
        return Err(EnrollError::BadAddress(TransportError::Address {
            addr: arg.to_string(),
            reason: "expected HOST:PORT (several: comma-separated)".into(),
        }));
    }
    for a in &addrs {
        transport::parse_addr(a).map_err(EnrollError::BadAddress)?;
    }
    Ok(addrs)
}

/// Asks the coordinators in turn: one that cannot be reached, or does not
/// lead, passes to the next; a leader named by one that does not lead is
/// asked next (once). An answer (a certificate, or a refusal of the token)
/// ends it. Returns the address that answered and its reply.
async fn exchange(
    addrs: &[String],
    tls: &ClientTls,
    request: &EnrollRequest,
) -> Result<(String, EnrollResponse), EnrollError> {
    let mut queue: std::collections::VecDeque<String> = addrs.iter().cloned().collect();
    let mut followed = false;
    let mut last = EnrollError::Timeout;
    while let Some(addr) = queue.pop_front() {
        let attempt = async {
            let channel = transport::connect(&addr, tls, &ConnectOptions::default())
                .await
                .map_err(|e| Err(EnrollError::Connect(e)))?;
            AgentServiceClient::new(channel)
                .enroll(request.clone())
                .await
                .map(tonic::Response::into_inner)
                .map_err(Ok)
        };
        let error = match tokio::time::timeout(ENROLL_TIMEOUT, attempt).await {
            Ok(Ok(reply)) => return Ok((addr, reply)),
            Err(_) => EnrollError::Timeout,
            Ok(Err(Err(connect))) => connect,
            Ok(Err(Ok(status))) => {
                if status.code() != tonic::Code::Unavailable {
                    return Err(EnrollError::Refused(status_message(&status)));
                }
                if let Some(leader) = crate::session::leader_hint(&status)
                    && !std::mem::replace(&mut followed, true)
                    && leader != addr
                {
                    tracing::info!(coordinator = %addr, leader = %leader, "this coordinator does not lead; asking the leader");
                    queue.push_front(leader);
                }
                EnrollError::Refused(format!("{addr}: {}", status_message(&status)))
            }
        };
        if !queue.is_empty() {
            tracing::warn!(coordinator = %addr, "enrolment: {error}; trying the next coordinator");
        }
        last = error;
    }
    Err(last)
}

/// Labels the operator attached to the join token, if enrolment recorded
/// any. A missing or unreadable record means none.
pub fn enrolled_labels(data_dir: &Path) -> BTreeMap<String, String> {
    std::fs::read(data_dir.join(ENROLLMENT_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<EnrollmentRecord>(&b).ok())
        .map(|r| r.labels)
        .unwrap_or_default()
}

fn status_message(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        s.message().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        Config::parse(
            &format!(
                "host_id = \"h1\"\ndata_dir = \"{}\"\ncoordinators = [\"127.0.0.1:1\"]\n",
                dir.display()
            ),
            Path::new("agent.toml"),
        )
        .expect("config")
    }

    fn opts(fp: &str) -> EnrollOptions {
        EnrollOptions {
            coordinator: "127.0.0.1:1".into(),
            token: "t".into(),
            ca_fingerprint: fp.into(),
            force: false,
        }
    }

    #[tokio::test]
    async fn refuses_bad_input_and_existing_enrolment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(dir.path());
        let e = enroll(&cfg, &opts("nope"))
            .await
            .expect_err("bad fingerprint");
        assert_eq!(e.exit_code(), 2);
        let fp = "ab".repeat(32);
        let mut o = opts(&fp);
        o.token = " ".into();
        assert!(matches!(
            enroll(&cfg, &o).await,
            Err(EnrollError::EmptyToken)
        ));

        let files = TlsFiles::new(dir.path());
        fsutil::create_dir(&files.dir, 0o700).expect("mkdir");
        std::fs::write(&files.cert, "x").expect("write");
        let e = enroll(&cfg, &opts(&fp))
            .await
            .expect_err("already enrolled");
        assert!(matches!(e, EnrollError::AlreadyEnrolled(_)), "{e}");
        assert!(e.to_string().contains("--force"));
        // With --force it gets as far as dialling (nothing listens on :1).
        let mut o = opts(&fp);
        o.force = true;
        let e = enroll(&cfg, &o).await.expect_err("unreachable");
        assert_eq!(e.exit_code(), 1, "{e}");
    }

    #[test]
    fn reads_enrolled_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(enrolled_labels(dir.path()).is_empty());
        std::fs::write(
            dir.path().join(ENROLLMENT_FILE),
            r#"{"host_id":"h1","coordinator":"c:1","enrolled_at":"x","labels":{"zone":"a"}}"#,
        )
        .expect("write");
        assert_eq!(
            enrolled_labels(dir.path()).get("zone").map(String::as_str),
            Some("a")
        );
    }
}
