//! Coordinator configuration: TOML file, validated completely before anything
//! starts, so a bad config never leaves a half-started coordinator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A config problem, always naming the file and, where there is one, the field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub detail: String,
}

impl ConfigError {
    fn field(path: &Path, field: &str, expected: impl std::fmt::Display) -> Self {
        ConfigError {
            path: path.to_path_buf(),
            detail: format!("field `{field}`: {expected}"),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Name used in logs and in the Welcome message; defaults to the hostname.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where the embedded store (`drover.redb`) and the artifacts live.
    pub data_dir: PathBuf,
    /// Where the coordinator keeps its state: redb in `data_dir` (default) or etcd.
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    #[serde(default)]
    pub agents: AgentsConfig,
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
    /// Blue-green: commands a rollout may run against the idle color
    /// before any traffic moves, by the name its spec gives
    /// (`pre_traffic_hook = "smoke"` runs `[pre_traffic_hooks.smoke]`).
    /// Only the coordinator's own config says what runs, never a spec.
    #[serde(default)]
    pub pre_traffic_hooks: std::collections::BTreeMap<String, HookConfig>,
    /// Disaster-recovery drills.
    #[serde(default)]
    pub drills: DrillsConfig,
    /// How long a graceful stop (first SIGTERM) may take: sessions end,
    /// every task is joined and the store flushed within it, or the
    /// coordinator exits anyway.
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `[tracing]`: OpenTelemetry export, off unless an endpoint is set.
    #[serde(default)]
    pub tracing: drover_telemetry::TracingConfig,
}

/// One pre-traffic hook: a program run without a shell, whose exit code
/// decides (0 lets the traffic move).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Killed, and counted as failed, after this long.
    #[serde(default = "default_hook_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// `[drills]`: what DR plans may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillsConfig {
    /// The directory a plan's commands come from: a plan names a program
    /// (`promote = ["pg-promote", "--port", "5433"]`) and the coordinator
    /// runs `<commands_dir>/pg-promote`, nothing else. Without it, plans
    /// that name commands are refused.
    pub commands_dir: Option<PathBuf>,
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}

/// `[store]`: `type = "redb"` (one file in `data_dir`, the default) or `type = "etcd"`
/// (shared by several coordinators).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawStoreConfig")]
pub enum StoreConfig {
    #[default]
    Redb,
    Etcd(EtcdStoreConfig),
}

#[derive(Debug, Clone)]
pub struct EtcdStoreConfig {
    /// Client URLs of the etcd members: `http://host:2379`, or `https://...` with `ca_cert`.
    pub endpoints: Vec<String>,
    /// Every key drover writes lives under this prefix, so that two installations can share
    /// one etcd. Must end with `/`.
    pub prefix: String,
    /// Deadline of each request to etcd: past it (lost quorum, unreachable members) the
    /// operation fails as unavailable instead of hanging.
    pub timeout: Duration,
    /// etcd's `--max-txn-ops`; raise both together.
    pub max_txn_ops: usize,
    /// The leader's lease: a leader that cannot renew it stops acting within
    /// three quarters of it, and a standby takes over once it expires.
    pub lease_ttl: Duration,
    /// CA of the etcd members' server certificates; required for `https://` endpoints.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key, for etcd with `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    #[default]
    Redb,
    Etcd,
}

/// `[store]` as written: a plain struct, so that a bad value is reported at its own key
/// (an internally tagged enum would point at the section only).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStoreConfig {
    #[serde(rename = "type", default)]
    kind: StoreKind,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    max_txn_ops: Option<usize>,
    #[serde(default, with = "humantime_serde::option")]
    lease_ttl: Option<Duration>,
    ca_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TryFrom<RawStoreConfig> for StoreConfig {
    type Error = String;

    fn try_from(raw: RawStoreConfig) -> Result<Self, String> {
        match raw.kind {
            StoreKind::Redb => {
                let etcd_only = [
                    ("endpoints", raw.endpoints.is_some()),
                    ("prefix", raw.prefix.is_some()),
                    ("timeout", raw.timeout.is_some()),
                    ("max_txn_ops", raw.max_txn_ops.is_some()),
                    ("lease_ttl", raw.lease_ttl.is_some()),
                    ("ca_cert", raw.ca_cert.is_some()),
                    ("cert", raw.cert.is_some()),
                    ("key", raw.key.is_some()),
                ];
                match etcd_only.iter().find(|(_, set)| *set) {
                    Some((field, _)) => Err(format!(
                        "field `store.{field}`: only for type = \"etcd\" (this store is redb)"
                    )),
                    None => Ok(StoreConfig::Redb),
                }
            }
            StoreKind::Etcd => Ok(StoreConfig::Etcd(EtcdStoreConfig {
                endpoints: raw.endpoints.ok_or_else(|| {
                    "field `store.endpoints`: required with type = \"etcd\", e.g. [\"http://127.0.0.1:2379\"]"
                        .to_string()
                })?,
                prefix: raw.prefix.unwrap_or_else(default_etcd_prefix),
                timeout: raw.timeout.unwrap_or_else(default_etcd_timeout),
                max_txn_ops: raw.max_txn_ops.unwrap_or_else(default_max_txn_ops),
                lease_ttl: raw.lease_ttl.unwrap_or(Duration::from_secs(10)),
                ca_cert: raw.ca_cert,
                cert: raw.cert,
                key: raw.key,
            })),
        }
    }
}

fn default_etcd_prefix() -> String {
    "/drover/".to_string()
}
fn default_etcd_timeout() -> Duration {
    crate::store::etcd::DEFAULT_TIMEOUT
}
fn default_max_txn_ops() -> usize {
    crate::store::etcd::DEFAULT_MAX_TXN_OPS
}

impl EtcdStoreConfig {
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(300) {
            return Err(ConfigError::field(
                path,
                "store.lease_ttl",
                "must be between 2s and 5m (etcd counts leases in whole seconds)",
            ));
        }
        if self.endpoints.is_empty() {
            return Err(ConfigError::field(
                path,
                "store.endpoints",
                "list at least one etcd client URL, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        let mut https = None;
        for e in &self.endpoints {
            let secure = if let Some(rest) = e.strip_prefix("https://") {
                (true, rest)
            } else if let Some(rest) = e.strip_prefix("http://") {
                (false, rest)
            } else {
                return Err(ConfigError::field(
                    path,
                    "store.endpoints",
                    format!(
                        "`{e}` is not an etcd client URL: expected http://host:port or https://host:port"
                    ),
                ));
            };
            if secure.1.is_empty() || secure.1.contains('/') {
                return Err(ConfigError::field(
                    path,
                    "store.endpoints",
                    format!(
                        "`{e}` is not an etcd client URL: expected http://host:port or https://host:port"
                    ),
                ));
            }
            if https.is_some_and(|h| h != secure.0) {
                return Err(ConfigError::field(
                    path,
                    "store.endpoints",
                    "mixes http:// and https://; use one scheme for every member",
                ));
            }
            https = Some(secure.0);
        }
        let https = https.unwrap_or(false);
        if https && self.ca_cert.is_none() {
            return Err(ConfigError::field(
                path,
                "store.ca_cert",
                "required with https:// endpoints: the CA that signed the etcd members' certificates",
            ));
        }
        if !https && (self.ca_cert.is_some() || self.cert.is_some() || self.key.is_some()) {
            return Err(ConfigError::field(
                path,
                "store.endpoints",
                "TLS files are set but the endpoints are http://; use https:// endpoints",
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(ConfigError::field(
                path,
                if self.cert.is_some() {
                    "store.key"
                } else {
                    "store.cert"
                },
                "set both store.cert and store.key (a client certificate needs its key)",
            ));
        }
        for (field, file) in [
            ("store.ca_cert", &self.ca_cert),
            ("store.cert", &self.cert),
            ("store.key", &self.key),
        ] {
            if let Some(file) = file
                && let Err(e) = std::fs::metadata(file)
            {
                return Err(ConfigError::field(
                    path,
                    field,
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
        if self.prefix.is_empty() || !self.prefix.ends_with('/') {
            return Err(ConfigError::field(
                path,
                "store.prefix",
                format!(
                    "`{}` must be non-empty and end with `/`, so that no installation's keys fall under another's (e.g. \"/drover/\")",
                    self.prefix
                ),
            ));
        }
        if self.timeout < Duration::from_millis(100) {
            return Err(ConfigError::field(
                path,
                "store.timeout",
                "must be at least 100ms",
            ));
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError::field(
                path,
                "store.max_txn_ops",
                "must be at least 1 (etcd's default is 128)",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// Largest artifact an operator may push.
    #[serde(default = "default_max_artifact")]
    pub max_size_bytes: u64,
    /// Pushes whose files add up to more than this once unpacked are
    /// refused; keep it at or below the agents' `max_unpacked_bytes`.
    #[serde(default = "default_max_unpacked")]
    pub max_unpacked_bytes: u64,
    /// Pushes with more entries than this are refused; keep it at or below
    /// the agents' `max_entries`.
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            max_size_bytes: default_max_artifact(),
            max_unpacked_bytes: default_max_unpacked(),
            max_entries: default_max_entries(),
        }
    }
}

fn default_max_unpacked() -> u64 {
    drover_archive::DEFAULT_MAX_UNPACKED_BYTES
}

fn default_max_entries() -> u64 {
    drover_archive::DEFAULT_MAX_ENTRIES
}

fn default_max_artifact() -> u64 {
    4 * 1024 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// mutual-TLS gRPC, for agents and the CLI.
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
    /// Plain HTTP side port: `/healthz`, `/metrics`.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// HA: the address other coordinators' standbys send agents and
    /// operators to when this one leads (`HOST:PORT`); default: the gRPC
    /// listen address, with the host name for an unspecified IP.
    #[serde(default)]
    pub advertise: Option<String>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            grpc: default_grpc(),
            http: default_http(),
            advertise: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_cert: PathBuf,
    /// Signs agent certificates at enrolment and renewal.
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// A connected agent with no report for this long is marked lost.
    #[serde(default = "default_lost_timeout", with = "humantime_serde")]
    pub lost_timeout: Duration,
    /// Lifetime of agent certificates; agents renew at two thirds of it.
    #[serde(default = "default_cert_lifetime", with = "humantime_serde")]
    pub cert_lifetime: Duration,
    /// Longest join-token lifetime an operator may ask for.
    #[serde(default = "default_max_token_ttl", with = "humantime_serde")]
    pub max_token_ttl: Duration,
    /// Largest message an agent may send; bigger ones end its session.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// A TLS connection without a client certificate is closed if it has
    /// not completed an `Enroll` within this long.
    #[serde(default = "default_enroll_timeout", with = "humantime_serde")]
    pub enroll_timeout: Duration,
    /// At most this many connections without a client certificate (agents
    /// enrolling) are open at once; more are refused after the handshake.
    #[serde(default = "default_max_enrolling")]
    pub max_enrolling_connections: usize,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            lost_timeout: default_lost_timeout(),
            cert_lifetime: default_cert_lifetime(),
            max_token_ttl: default_max_token_ttl(),
            max_message_bytes: default_max_message_bytes(),
            enroll_timeout: default_enroll_timeout(),
            max_enrolling_connections: default_max_enrolling(),
        }
    }
}

fn default_name() -> String {
    hostname().unwrap_or_else(|| "coordinator".to_string())
}
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7080))
}
fn default_lost_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_cert_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_token_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_enroll_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_enrolling() -> usize {
    256
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The machine's host name, if it is usable as a drover name.
pub fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_string();
    drover_proto::identity::valid_name(&name).then_some(name)
}

impl CoordinatorConfig {
    /// Reads, parses and validates the file. Relative paths inside it are
    /// taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            detail: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<CoordinatorConfig, ConfigError> {
        let mut config: CoordinatorConfig = toml::from_str(text).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            detail: e.to_string().trim_end().to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.data_dir,
            &mut config.tls.ca_cert,
            &mut config.tls.ca_key,
            &mut config.tls.cert,
            &mut config.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let StoreConfig::Etcd(etcd) = &mut config.store {
            for p in [&mut etcd.ca_cert, &mut etcd.cert, &mut etcd.key]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if !drover_proto::identity::valid_name(&self.name) {
            return Err(ConfigError::field(
                path,
                "name",
                format!(
                    "`{}` is not a valid name: 1-63 characters from a-z, A-Z, 0-9, `-`, `_`, `.`",
                    self.name
                ),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::field(path, "data_dir", "must not be empty"));
        }
        if let Some(dir) = &self.drills.commands_dir
            && !dir.is_absolute()
        {
            return Err(ConfigError::field(
                path,
                "drills.commands_dir",
                format!(
                    "must be an absolute path, like \"/etc/drover/dr\", got {:?}",
                    dir.display().to_string()
                ),
            ));
        }
        for (name, hook) in &self.pre_traffic_hooks {
            let field = format!("pre_traffic_hooks.{name}");
            let valid = !name.is_empty()
                && (name.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(ConfigError::field(
                    path,
                    &field,
                    "a hook name is letters, digits, `-` and `_`",
                ));
            }
            if hook.command.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(ConfigError::field(
                    path,
                    &format!("{field}.command"),
                    "must name a program, e.g. command = [\"/usr/local/bin/smoke\", \"--quick\"]",
                ));
            }
            if hook.timeout < Duration::from_secs(1) {
                return Err(ConfigError::field(
                    path,
                    &format!("{field}.timeout"),
                    "must be at least 1s",
                ));
            }
        }
        if let Err(e) = self.tracing.validate() {
            return Err(ConfigError::field(path, e.field, e.expected));
        }
        if let StoreConfig::Etcd(etcd) = &self.store {
            etcd.validate(path)?;
        }
        let a = &self.agents;
        if a.lost_timeout < Duration::from_millis(500) {
            return Err(ConfigError::field(
                path,
                "agents.lost_timeout",
                "must be at least 500ms",
            ));
        }
        if a.cert_lifetime < Duration::from_secs(3) {
            return Err(ConfigError::field(
                path,
                "agents.cert_lifetime",
                "must be at least 3s",
            ));
        }
        if a.max_token_ttl < Duration::from_secs(1) {
            return Err(ConfigError::field(
                path,
                "agents.max_token_ttl",
                "must be at least 1s",
            ));
        }
        if !(16 * 1024..=64 * 1024 * 1024).contains(&a.max_message_bytes) {
            return Err(ConfigError::field(
                path,
                "agents.max_message_bytes",
                "expected a number of bytes from 16384 to 67108864",
            ));
        }
        if a.enroll_timeout < Duration::from_millis(100) {
            return Err(ConfigError::field(
                path,
                "agents.enroll_timeout",
                "must be at least 100ms",
            ));
        }
        if a.max_enrolling_connections == 0 {
            return Err(ConfigError::field(
                path,
                "agents.max_enrolling_connections",
                "must be at least 1 (agents enrol over such connections)",
            ));
        }
        if self.shutdown_timeout < Duration::from_millis(100) {
            return Err(ConfigError::field(
                path,
                "shutdown_timeout",
                "must be at least 100ms",
            ));
        }
        for (field, file) in [
            ("tls.ca_cert", &self.tls.ca_cert),
            ("tls.ca_key", &self.tls.ca_key),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if let Err(e) = std::fs::metadata(file) {
                return Err(ConfigError::field(
                    path,
                    field,
                    format!("cannot read {}: {e}", file.display()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CoordinatorConfig, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        for f in ["ca.pem", "ca.key", "c.pem", "c.key"] {
            std::fs::write(dir.path().join(f), "x").map_err(|e| e.to_string())?;
        }
        let path = dir.path().join("coordinator.toml");
        CoordinatorConfig::parse(&path, text).map_err(|e| e.to_string())
    }

    const TLS: &str =
        "[tls]\nca_cert = \"ca.pem\"\nca_key = \"ca.key\"\ncert = \"c.pem\"\nkey = \"c.key\"\n";

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = parse(&format!("data_dir = \"d\"\n{TLS}")).expect("valid");
        assert_eq!(c.agents.lost_timeout, Duration::from_secs(15));
        assert_eq!(c.listen.http.ip().to_string(), "127.0.0.1");
        assert!(c.data_dir.is_absolute());
        assert_eq!(c.agents.enroll_timeout, Duration::from_secs(10));
        assert_eq!(c.agents.max_enrolling_connections, 256);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert!(
            matches!(c.store, StoreConfig::Redb),
            "redb stays the default"
        );
    }

    #[test]
    fn etcd_store_section() {
        let c = parse(&format!(
            "data_dir = \"d\"\n{TLS}[store]\ntype = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"http://10.0.0.2:2379\"]\n"
        ))
        .expect("valid");
        let StoreConfig::Etcd(etcd) = c.store else {
            panic!("not etcd: {:?}", c.store);
        };
        assert_eq!(etcd.endpoints.len(), 2);
        assert_eq!(etcd.prefix, "/drover/");
        assert_eq!(etcd.timeout, Duration::from_secs(5));
        assert_eq!(etcd.max_txn_ops, 128);

        let c = parse(&format!(
            "data_dir = \"d\"\n{TLS}[store]\ntype = \"etcd\"\nendpoints = [\"https://etcd1:2379\"]\nprefix = \"/drover-dr/\"\ntimeout = \"2s\"\nca_cert = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n"
        ))
        .expect("valid with TLS");
        let StoreConfig::Etcd(etcd) = c.store else {
            panic!("not etcd");
        };
        assert!(etcd.ca_cert.is_some_and(|p| p.is_absolute()));
        assert_eq!(etcd.timeout, Duration::from_secs(2));

        let c = parse(&format!(
            "data_dir = \"d\"\n{TLS}[store]\ntype = \"redb\"\n"
        ))
        .expect("explicit redb");
        assert!(matches!(c.store, StoreConfig::Redb));
    }

    #[test]
    fn etcd_store_errors_name_the_field() {
        let etcd = |body: &str| {
            parse(&format!(
                "data_dir = \"d\"\n{TLS}[store]\ntype = \"etcd\"\n{body}"
            ))
            .expect_err("invalid")
        };
        let e = parse(&format!(
            "data_dir = \"d\"\n{TLS}[store]\ntype = \"postgres\"\n"
        ))
        .expect_err("unknown type");
        assert!(e.contains("postgres") && e.contains("etcd"), "{e}");
        let e = etcd("endpoints = [\"http://a:2379\"]\nendpoint = 1\n");
        assert!(e.contains("endpoint"), "unknown key: {e}");
        let e = parse(&format!(
            "data_dir = \"d\"\n{TLS}[store]\ntype = \"redb\"\nendpoints = []\n"
        ))
        .expect_err("etcd key on redb");
        assert!(e.contains("endpoints"), "{e}");
        let e = etcd("");
        assert!(e.contains("endpoints"), "missing: {e}");
        let e = etcd("endpoints = []\n");
        assert!(e.contains("store.endpoints"), "{e}");
        let e = etcd("endpoints = [\"127.0.0.1:2379\"]\n");
        assert!(
            e.contains("store.endpoints") && e.contains("127.0.0.1:2379"),
            "{e}"
        );
        let e = etcd("endpoints = [\"http://a:2379\", \"https://b:2379\"]\nca_cert = \"ca.pem\"\n");
        assert!(e.contains("store.endpoints"), "{e}");
        let e = etcd("endpoints = [\"https://a:2379\"]\n");
        assert!(e.contains("store.ca_cert"), "{e}");
        let e = etcd("endpoints = [\"http://a:2379\"]\nca_cert = \"ca.pem\"\n");
        assert!(e.contains("https://"), "{e}");
        let e = etcd("endpoints = [\"https://a:2379\"]\nca_cert = \"ca.pem\"\ncert = \"c.pem\"\n");
        assert!(e.contains("store.key"), "{e}");
        let e = etcd("endpoints = [\"https://a:2379\"]\nca_cert = \"nope.pem\"\n");
        assert!(e.contains("store.ca_cert") && e.contains("nope.pem"), "{e}");
        let e = etcd("endpoints = [\"http://a:2379\"]\nprefix = \"/drover\"\n");
        assert!(e.contains("store.prefix"), "{e}");
        let e = etcd("endpoints = [\"http://a:2379\"]\ntimeout = \"soon\"\n");
        assert!(e.contains("timeout"), "{e}");
        let e = etcd("endpoints = [\"http://a:2379\"]\ntimeout = \"10ms\"\n");
        assert!(e.contains("store.timeout"), "{e}");
        let e = etcd("endpoints = [\"http://a:2379\"]\nmax_txn_ops = 0\n");
        assert!(e.contains("store.max_txn_ops"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(TLS).expect_err("missing data_dir");
        assert!(e.contains("data_dir"), "{e}");
        let e = parse(&format!("data_dir = \"d\"\nport = 1\n{TLS}")).expect_err("unknown");
        assert!(e.contains("port"), "{e}");
        let e = parse(&format!(
            "data_dir = \"d\"\n{TLS}[agents]\nlost_timeout = \"soon\"\n"
        ))
        .expect_err("bad duration");
        assert!(e.contains("lost_timeout"), "{e}");
        let e = parse(&format!(
            "data_dir = \"d\"\n[listen]\ngrpc = \"localhost\"\n{TLS}"
        ))
        .expect_err("bad addr");
        assert!(e.contains("grpc"), "{e}");
        let e = parse("data_dir = \"d\"\n[tls]\nca_cert = \"nope.pem\"\nca_key = \"ca.key\"\ncert = \"c.pem\"\nkey = \"c.key\"\n")
            .expect_err("missing file");
        assert!(e.contains("tls.ca_cert") && e.contains("nope.pem"), "{e}");
    }
}
