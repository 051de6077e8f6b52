//! Opening a session with the coordinator and explaining its failures.
//!
//! With several coordinators (HA), [`open`] dials them in the order given
//! and keeps the first that answers; every call then follows the leader
//! (see [`crate::leader`]), so each command reaches it whichever
//! coordinator it dialled first.
//!
//! Problems an operator can fix locally (expired certificate, wrong file,
//! bad address) are caught before dialling. Failures from the coordinator
//! are turned into messages that say what to do next.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use drover_net::transport::{
    self, ClientTls, ConnectOptions, PeerCert, TransportError, error_chain,
};
use drover_proto::identity::{Identity, Role};
use drover_proto::v1::control_service_client::ControlServiceClient;

use crate::leader::{LeaderChannel, leader_hint};

/// Largest answer the CLI accepts. tonic's default of 4 MiB is less than
/// `drover agents -o json` needs for a fleet of 10,000 hosts (about 5 MB);
/// this leaves room for fleets ten times that size.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
use tonic::{Code, Status};

use crate::config::{ConnSettings, Setting};
use crate::error::usage;
use crate::output::{relative, rfc3339_ms, system_time_ms};

/// A connected control-API client plus what is needed to explain errors.
pub struct Session {
    pub identity: Identity,
    pub cert_path: String,
    pub client: ControlServiceClient<LeaderChannel>,
    channel: LeaderChannel,
}

fn date(t: SystemTime) -> String {
    rfc3339_ms(system_time_ms(t)).unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Refuses a certificate that is outside its validity window at `now`.
pub fn check_validity(path: &Path, cert: &PeerCert, now: SystemTime) -> Result<(), String> {
    if now > cert.not_after {
        return Err(format!(
            "certificate {} expired on {}; issue a new one with `drover cert issue`",
            path.display(),
            date(cert.not_after)
        ));
    }
    if now < cert.not_before {
        return Err(format!(
            "certificate {} is not valid until {}; check this machine's clock",
            path.display(),
            date(cert.not_before)
        ));
    }
    Ok(())
}

/// A warning when a long-lived certificate has less than a week left, so
/// operators renew before they are locked out.
pub fn expiry_warning(path: &Path, cert: &PeerCert, now: SystemTime) -> Option<String> {
    const WEEK: std::time::Duration = std::time::Duration::from_secs(7 * 86400);
    let lifetime = cert.not_after.duration_since(cert.not_before).ok()?;
    let left = cert.not_after.duration_since(now).ok()?;
    (lifetime > 2 * WEEK && left < WEEK).then(|| {
        format!(
            "warning: certificate {} expires {} ({}); issue a new one with `drover cert issue`",
            path.display(),
            date(cert.not_after),
            relative(system_time_ms(now), system_time_ms(cert.not_after))
        )
    })
}

fn read(what: &str, s: &Setting<std::path::PathBuf>) -> anyhow::Result<Vec<u8>> {
    std::fs::read(&s.value)
        .with_context(|| format!("read {what} {} (set by {})", s.value.display(), s.source))
}

/// Checks the local credentials, then dials the coordinator.
pub async fn open(settings: &ConnSettings) -> anyhow::Result<Session> {
    let ca = read("CA certificate", &settings.ca)?;
    let cert = read("client certificate", &settings.cert)?;
    let key = read("client key", &settings.key)?;
    let cert_path = &settings.cert.value;

    let chain = transport::certs_from_pem(&cert_path.display().to_string(), &cert)?;
    let peer = transport::parse_cert(&chain[0])
        .with_context(|| format!("read client certificate {}", cert_path.display()))?;
    let now = SystemTime::now();
    check_validity(cert_path, &peer, now).map_err(|e| anyhow!(e))?;
    if let Some(w) = expiry_warning(cert_path, &peer, now) {
        eprintln!("{w}");
    }
    if peer.identity.role == Role::Agent {
        return Err(anyhow!(
            "{} is an agent certificate ({}); the control API takes operator or viewer \
             certificates: issue one with `drover cert issue --role operator --name NAME`",
            cert_path.display(),
            peer.identity
        ));
    }

    let tls = ClientTls::from_pem(&ca, Some((&cert, &key))).with_context(|| {
        format!(
            "load TLS credentials (CA {}, certificate {}, key {})",
            settings.ca.value.display(),
            cert_path.display(),
            settings.key.value.display()
        )
    })?;
    // In order; one that cannot be reached passes to the next.
    let mut failures: Vec<(String, String)> = Vec::new();
    for addr in &settings.addr.value {
        let channel = match transport::connect(addr, &tls, &ConnectOptions::default()).await {
            Ok(c) => c,
            Err(e @ TransportError::Address { .. }) => {
                return Err(usage(format!("{e} (set by {})", settings.addr.source)));
            }
            Err(e) => {
                failures.push((addr.clone(), error_chain(&e)));
                continue;
            }
        };
        let channel = LeaderChannel::new(addr.clone(), channel, tls.clone());
        return Ok(Session {
            identity: peer.identity,
            cert_path: cert_path.display().to_string(),
            client: ControlServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            channel,
        });
    }
    Err(unreachable_all(&failures))
}

/// None of the coordinators could be reached: each with its reason.
fn unreachable_all(failures: &[(String, String)]) -> anyhow::Error {
    match failures {
        [(addr, chain)] => unreachable(addr, chain),
        _ => Unreachable {
            addr: failures
                .iter()
                .map(|(a, _)| a.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            chain: failures
                .iter()
                .map(|(a, c)| format!("{a}: {c}"))
                .collect::<Vec<_>>()
                .join("; "),
            trust: failures.iter().any(|(_, c)| trust_problem(c)),
        }
        .into(),
    }
}

/// Whether an error text is about TLS trust (a certificate refused on
/// either side), which waiting will not fix.
fn trust_problem(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    ["certificate", "unknownca", "fatal alert"]
        .iter()
        .any(|w| text.contains(w))
}

/// Whether a failed call means the coordinator could not be reached or the
/// connection broke (a restart, a dropped link), so that trying again later
/// may work; as opposed to an answer (refused, not found) or a TLS trust
/// problem, which fail at once.
///
/// `Unavailable` is both the dial failure and what a stopping coordinator
/// says. A connection cut mid-stream surfaces as `Unknown`, `Internal` or
/// `Cancelled` with the transport error as its source; the same codes sent
/// by the coordinator itself carry no source and are answers.
pub fn is_connectivity(status: &Status) -> bool {
    if trust_problem(&status_text(status)) {
        return false;
    }
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            std::error::Error::source(status).is_some()
        }
        _ => false,
    }
}

/// The coordinator could not be reached. `trust` is set when the TLS
/// handshake failed on certificates (retrying will not help); otherwise it
/// may be down or restarting.
#[derive(Debug)]
pub struct Unreachable {
    pub addr: String,
    pub chain: String,
    pub trust: bool,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hint = if self.trust {
            "check that --ca is the drover CA that signed the coordinator's certificate, \
             and that your certificate is from the same CA and not revoked"
        } else {
            "is drover-coordinator running and is --addr right?"
        };
        write!(
            f,
            "cannot reach coordinator at {}: {}; {hint}",
            self.addr, self.chain
        )
    }
}

impl std::error::Error for Unreachable {}

fn unreachable(addr: &str, chain: &str) -> anyhow::Error {
    Unreachable {
        addr: addr.to_string(),
        chain: chain.to_string(),
        trust: trust_problem(chain),
    }
    .into()
}

/// A refusal by a coordinator that does not lead: UNAVAILABLE from the
/// coordinator itself (no transport error behind it) naming the leader,
/// or saying it is not the leader.
fn is_standby(status: &Status) -> bool {
    if std::error::Error::source(status).is_some() {
        return false;
    }
    leader_hint(status).is_some() || status.message().contains("not the leader")
}

/// A status's message followed by its underlying cause, if any.
pub fn status_text(status: &Status) -> String {
    let mut text = status.message().to_string();
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        if !text.contains(&chain) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&chain);
        }
    }
    if text.is_empty() {
        text = status.code().description().to_string();
    }
    text
}

impl Session {
    /// The connection, for services beside the control API.
    pub fn channel(&self) -> LeaderChannel {
        self.channel.clone()
    }

    /// The coordinator in use: the first that answered, or the leader it
    /// named.
    pub fn addr(&self) -> String {
        self.channel.addr()
    }

    /// Turns a failed call into an actionable error. `InvalidArgument`
    /// exits 2, since the request as typed was wrong.
    pub fn rpc_error(&self, status: Status) -> anyhow::Error {
        rpc_error(&self.addr(), &self.identity, &self.cert_path, status)
    }
}

pub fn rpc_error(
    addr: &str,
    identity: &Identity,
    cert_path: &str,
    status: Status,
) -> anyhow::Error {
    let text = status_text(&status);
    match status.code() {
        Code::Unavailable if is_standby(&status) => {
            let leader = match leader_hint(&status) {
                Some(l) => format!("; the leader is at {l}"),
                None => "; it knows no leader yet (an election may be under way): try again in \
                         a few seconds"
                    .to_string(),
            };
            anyhow!(
                "coordinator at {addr} does not lead: {text}{leader}\nhint: list every \
                 coordinator in --addr (or DROVER_ADDR, or `addr` in cli.toml), \
                 comma-separated, so drover can find the leader"
            )
        }
        Code::Unavailable => unreachable(addr, &text),
        Code::PermissionDenied | Code::Unauthenticated => {
            let hint = match identity.role {
                Role::Viewer => format!(
                    "your certificate {cert_path} is for {identity}; viewer certificates can only \
                     read: use an operator certificate (`drover cert issue --role operator`)"
                ),
                _ => format!(
                    "your certificate {cert_path} is for {identity}; check it was issued by this \
                     coordinator's CA for an operator, and has not been revoked"
                ),
            };
            anyhow!("coordinator refused: {text}\nhint: {hint}")
        }
        Code::InvalidArgument => usage(text),
        Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists => anyhow!(text),
        Code::DeadlineExceeded => anyhow!("coordinator at {addr} did not answer in time: {text}"),
        code => anyhow!(
            "request to coordinator at {addr} failed ({code:?}): {text}\nhint: if every call \
             fails like this, the coordinator may have refused your certificate {cert_path} \
             ({identity}) during the TLS handshake: check it was issued by the coordinator's CA \
             and has not been revoked"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{EXIT_FAILURE, EXIT_USAGE, exit_code};
    use std::time::Duration;

    fn cert(not_before: SystemTime, not_after: SystemTime) -> PeerCert {
        PeerCert {
            identity: Identity::new(Role::Operator, "alice").expect("id"),
            serial: "01".into(),
            not_before,
            not_after,
        }
    }

    #[test]
    fn expired_certificates_are_refused_with_a_fix() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let c = cert(t0, t0 + Duration::from_secs(1));
        let path = Path::new("/etc/drover/alice.pem");
        assert_eq!(
            check_validity(path, &c, t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert_eq!(
            check_validity(path, &c, t0 + Duration::from_secs(2)),
            Err(
                "certificate /etc/drover/alice.pem expired on 2026-09-21T14:13:21Z; \
                 issue a new one with `drover cert issue`"
                    .into()
            )
        );
        let early = check_validity(path, &c, t0 - Duration::from_secs(60)).expect_err("early");
        assert!(
            early.contains("not valid until 2026-09-21T14:13:20Z"),
            "{early}"
        );
    }

    #[test]
    fn real_short_lived_certificate_expires() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = drover_model::pki::Ca::init(dir.path(), "t").expect("ca");
        let id = Identity::new(Role::Operator, "alice").expect("id");
        let issued = ca.issue(&id, &[], Duration::from_secs(1)).expect("issue");
        let der = transport::certs_from_pem("c", issued.cert_pem.as_bytes()).expect("pem");
        let peer = transport::parse_cert(&der[0]).expect("parse");
        let path = Path::new("alice.pem");
        assert!(check_validity(path, &peer, SystemTime::now()).is_ok());
        let later = SystemTime::now() + Duration::from_secs(5);
        let err = check_validity(path, &peer, later).expect_err("expired");
        assert!(
            err.starts_with("certificate alice.pem expired on "),
            "{err}"
        );
    }

    #[test]
    fn warns_a_week_before_expiry() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let year = cert(t0, t0 + Duration::from_secs(365 * 86400));
        let path = Path::new("a.pem");
        assert!(expiry_warning(path, &year, t0).is_none());
        let w = expiry_warning(path, &year, t0 + Duration::from_secs(362 * 86400)).expect("warn");
        assert!(w.contains("(in 3d)"), "{w}");
        let short = cert(t0, t0 + Duration::from_secs(3600));
        assert!(expiry_warning(path, &short, t0 + Duration::from_secs(3000)).is_none());
    }

    #[test]
    fn statuses_become_actionable_errors() {
        let viewer = Identity::new(Role::Viewer, "v").expect("id");
        let op = Identity::new(Role::Operator, "o").expect("id");
        let err = rpc_error(
            "c:1",
            &viewer,
            "v.pem",
            Status::permission_denied("viewers may not revoke"),
        );
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        let msg = err.to_string();
        assert!(
            msg.starts_with("coordinator refused: viewers may not revoke"),
            "{msg}"
        );
        assert!(msg.contains("viewer certificates can only read"), "{msg}");

        let err = rpc_error(
            "c:1",
            &op,
            "o.pem",
            Status::unavailable("tcp connect error"),
        );
        let msg = err.to_string();
        assert!(
            msg.starts_with("cannot reach coordinator at c:1: tcp connect error"),
            "{msg}"
        );
        assert!(
            msg.ends_with("is drover-coordinator running and is --addr right?"),
            "{msg}"
        );

        let err = rpc_error("c:1", &op, "o.pem", Status::not_found("no host `h9`"));
        assert_eq!(err.to_string(), "no host `h9`");
        assert_eq!(exit_code(&err), EXIT_FAILURE);

        let err = rpc_error(
            "c:1",
            &op,
            "o.pem",
            Status::invalid_argument("bad selector"),
        );
        assert_eq!(exit_code(&err), EXIT_USAGE);

        let err = rpc_error("c:1", &op, "o.pem", Status::cancelled("h2 protocol error"));
        let msg = err.to_string();
        assert!(msg.contains("(Cancelled): h2 protocol error"), "{msg}");
        assert!(
            msg.contains("refused your certificate o.pem (operator/o)"),
            "{msg}"
        );
    }
}
