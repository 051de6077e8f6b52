//! The agent's configuration file (`/etc/drover/agent.toml`).
//!
//! The file is read into `Raw*` structs that mirror the TOML (unknown keys
//! are refused so typos surface), then checked field by field into the
//! validated [`Config`]. Everything the agent will later rely on is checked
//! here, before anything starts, and every error names the file, the field
//! and what was expected.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_net::transport;
use drover_proto::identity::valid_name;
use serde::Deserialize;

mod exporter;
mod health;
mod steps;
mod traffic;

pub use health::parse_http_url;
pub use traffic::{Color, MetricsConfig};

pub use steps::{
    CURRENT_PLACEHOLDER, DeployConfig, DrainConfig, ExecDrain, HaproxyAddr, HaproxyDrain,
    HooksConfig, expand_current,
};

/// Where `drover-agent` looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drover/agent.toml";

const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TRAFFIC_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax or type errors; the message carries line and column.
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {}field `{field}`: {expected}", path.display(), context.as_ref().map(|c| format!("{c}: ")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Which block the field is in, e.g. `instance[0] (web)`.
        context: Option<String>,
        field: String,
        expected: String,
    },
}

/// The validated agent configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, for messages.
    pub path: PathBuf,
    pub host_id: String,
    pub data_dir: PathBuf,
    pub coordinators: Vec<String>,
    pub report_interval: Duration,
    /// Longest spacing of two reports while any instance has traffic
    /// counters to carry (a load balancer view or its own metrics), and
    /// how often the instances' metrics are scraped.
    pub traffic_interval: Duration,
    pub labels: BTreeMap<String, String>,
    pub instances: Vec<InstanceConfig>,
    /// `[metrics] listen`: where the agent serves its own `/metrics`
    /// (plain HTTP); `None`: nowhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[tracing]`: OpenTelemetry export, off unless an endpoint is set.
    pub tracing: drover_telemetry::TracingConfig,
}

impl Config {
    /// Whether any instance has traffic counters to report (HAProxy
    /// counters or its own metrics).
    pub fn has_traffic(&self) -> bool {
        self.instances
            .iter()
            .any(|i| matches!(i.drain, DrainConfig::Haproxy(_)) || i.metrics.is_some())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceConfig {
    pub name: String,
    pub service: String,
    pub runtime: RuntimeConfig,
    /// `None`: no health check, health is reported as NONE.
    pub health: Option<HealthConfig>,
    /// `None`: the instance cannot be deployed to.
    pub deploy: Option<DeployConfig>,
    pub drain: DrainConfig,
    pub hooks: HooksConfig,
    /// Blue-green: which of the service's two instances on this host.
    pub color: Option<Color>,
    /// The instance's own Prometheus metrics, scraped with the reports.
    pub metrics: Option<MetricsConfig>,
}

impl InstanceConfig {
    /// `<name>@<host-id>`.
    pub fn id(&self, host_id: &str) -> String {
        format!("{}@{host_id}", self.name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeConfig {
    Process(ProcessConfig),
    Systemd(SystemdConfig),
}

impl RuntimeConfig {
    /// The name used on the wire (`InstanceStatus.runtime`).
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeConfig::Process(_) => "process",
            RuntimeConfig::Systemd(_) => "systemd",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessConfig {
    pub command: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// What `{current}` in command, args, env and working_dir stands for:
    /// `<deploy_dir>/current`. `None` without a deploy_dir (and then the
    /// placeholder is refused).
    pub current: Option<PathBuf>,
}

impl ProcessConfig {
    /// The command line with `{current}` replaced by `current`, which the
    /// runtime resolves at start time (see `runtime::process`).
    pub fn expanded(&self, current: &Path) -> ProcessConfig {
        let x = |s: &str| expand_current(s, current);
        ProcessConfig {
            command: PathBuf::from(x(&self.command.to_string_lossy())),
            args: self.args.iter().map(|a| x(a)).collect(),
            env: self.env.iter().map(|(k, v)| (k.clone(), x(v))).collect(),
            working_dir: self
                .working_dir
                .as_ref()
                .map(|d| PathBuf::from(x(&d.to_string_lossy()))),
            ..self.clone()
        }
    }

    /// Whether any part of the command line uses `{current}`.
    pub fn uses_current(&self) -> bool {
        let has = |s: &str| s.contains(CURRENT_PLACEHOLDER);
        has(&self.command.to_string_lossy())
            || self.args.iter().any(|a| has(a))
            || self.env.values().any(|v| has(v))
            || self
                .working_dir
                .as_ref()
                .is_some_and(|d| has(&d.to_string_lossy()))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SystemdConfig {
    pub unit: String,
    /// Use `systemctl --user`.
    pub user: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub check: CheckConfig,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckConfig {
    Http(HttpTarget),
    Tcp { host: String, port: u16 },
    Exec { command: Vec<String> },
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    /// Path plus query, always starting with `/`.
    pub path: String,
    pub expect_status: u16,
}

impl HttpTarget {
    /// Value for the `Host:` header.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A signal that can be sent to stop an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    pub name: &'static str,
    pub number: i32,
}

const SIGNALS: &[(&str, i32)] = &[
    ("SIGTERM", libc::SIGTERM),
    ("SIGINT", libc::SIGINT),
    ("SIGQUIT", libc::SIGQUIT),
    ("SIGHUP", libc::SIGHUP),
    ("SIGKILL", libc::SIGKILL),
    ("SIGUSR1", libc::SIGUSR1),
    ("SIGUSR2", libc::SIGUSR2),
    ("SIGWINCH", libc::SIGWINCH),
];

impl Signal {
    pub const TERM: Signal = Signal {
        name: "SIGTERM",
        number: libc::SIGTERM,
    };
    pub const KILL: Signal = Signal {
        name: "SIGKILL",
        number: libc::SIGKILL,
    };

    /// Accepts `SIGTERM`, `TERM`, `sigterm`.
    pub fn from_name(s: &str) -> Option<Signal> {
        let upper = s.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        SIGNALS
            .iter()
            .find(|(name, _)| *name == full)
            .map(|&(name, number)| Signal { name, number })
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

// ---- the file as written ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host_id: Option<String>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    coordinators: Vec<String>,
    #[serde(default, with = "humantime_serde::option")]
    report_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    traffic_interval: Option<Duration>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default, rename = "instance")]
    instances: Vec<RawInstance>,
    metrics: Option<exporter::RawExporter>,
    #[serde(default)]
    tracing: drover_telemetry::TracingConfig,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawRuntime {
    Process,
    Systemd,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstance {
    name: Option<String>,
    service: Option<String>,
    runtime: Option<RawRuntime>,
    command: Option<PathBuf>,
    args: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    working_dir: Option<PathBuf>,
    stop_signal: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    stop_timeout: Option<Duration>,
    unit: Option<String>,
    user: Option<bool>,
    health: Option<health::RawHealth>,
    deploy_dir: Option<PathBuf>,
    keep_releases: Option<usize>,
    max_unpacked_bytes: Option<u64>,
    max_entries: Option<u64>,
    drain: Option<steps::RawDrain>,
    hooks: Option<steps::RawHooks>,
    color: Option<Color>,
    metrics: Option<traffic::RawMetrics>,
}

/// Builds [`ConfigError::Invalid`] for one file and one block.
struct Checker<'a> {
    path: &'a Path,
    context: Option<String>,
}

impl Checker<'_> {
    fn err(&self, field: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            context: self.context.clone(),
            field: field.to_string(),
            expected: expected.into(),
        }
    }

    fn positive(
        &self,
        field: &str,
        d: Option<Duration>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match d {
            None => Ok(default),
            Some(d) if d.is_zero() => {
                Err(self.err(field, "expected a duration greater than 0, e.g. \"5s\""))
            }
            Some(d) => Ok(d),
        }
    }
}

const NAME_RULE: &str =
    "1-63 characters from a-z, A-Z, 0-9, `-`, `_` and `.`, starting with a letter or digit";

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Config::validate(raw, path)
    }

    fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let top = Checker {
            path,
            context: None,
        };
        let host_id = match raw.host_id {
            Some(h) if valid_name(&h) => h,
            Some(h) => {
                return Err(top.err(
                    "host_id",
                    format!("invalid name `{h}`: expected {NAME_RULE}"),
                ));
            }
            None => match hostname() {
                Some(h) if valid_name(&h) => h,
                Some(h) => {
                    return Err(top.err(
                        "host_id",
                        format!("not set, and the hostname `{h}` is not a valid name; set host_id ({NAME_RULE})"),
                    ));
                }
                None => {
                    return Err(top.err(
                        "host_id",
                        "not set, and the hostname could not be read; set host_id",
                    ));
                }
            },
        };
        let data_dir =
            match raw.data_dir {
                None => return Err(top.err(
                    "data_dir",
                    "required: the directory for the agent's state, e.g. \"/var/lib/drover-agent\"",
                )),
                Some(d) if !d.is_absolute() => {
                    return Err(top.err(
                        "data_dir",
                        format!("expected an absolute path, got `{}`", d.display()),
                    ));
                }
                Some(d) => d,
            };
        if raw.coordinators.is_empty() {
            return Err(top.err(
                "coordinators",
                "expected at least one coordinator address, e.g. [\"10.0.0.1:7443\"]",
            ));
        }
        for (i, addr) in raw.coordinators.iter().enumerate() {
            if let Err(e) = transport::parse_addr(addr) {
                return Err(top.err(
                    &format!("coordinators[{i}]"),
                    format!("expected HOST:PORT: {e}"),
                ));
            }
        }
        let report_interval = top.positive(
            "report_interval",
            raw.report_interval,
            DEFAULT_REPORT_INTERVAL,
        )?;
        let traffic_interval = top.positive(
            "traffic_interval",
            raw.traffic_interval,
            DEFAULT_TRAFFIC_INTERVAL,
        )?;
        for (k, v) in &raw.labels {
            if !valid_name(k) {
                return Err(top.err(
                    &format!("labels.{k}"),
                    format!("invalid label key: expected {NAME_RULE}"),
                ));
            }
            if !v.is_empty() && !valid_name(v) {
                return Err(top.err(
                    &format!("labels.{k}"),
                    format!("invalid label value `{v}`: expected {NAME_RULE}"),
                ));
            }
        }

        let mut seen = HashSet::new();
        let mut deploy_dirs = HashSet::new();
        let mut instances = Vec::with_capacity(raw.instances.len());
        for (i, inst) in raw.instances.into_iter().enumerate() {
            let label = match &inst.name {
                Some(n) => format!("instance[{i}] ({n})"),
                None => format!("instance[{i}]"),
            };
            let c = Checker {
                path,
                context: Some(label),
            };
            let inst = validate_instance(inst, &c)?;
            if !seen.insert(inst.name.clone()) {
                return Err(c.err(
                    "name",
                    format!(
                        "duplicate instance name `{}`: expected names to be unique",
                        inst.name
                    ),
                ));
            }
            if let Some(d) = &inst.deploy
                && !deploy_dirs.insert(d.dir.clone())
            {
                return Err(c.err(
                    "deploy_dir",
                    format!(
                        "`{}` is used by another instance: expected one deploy_dir per instance",
                        d.dir.display()
                    ),
                ));
            }
            instances.push(inst);
        }
        traffic::validate_colors(&instances, path)?;
        let metrics_listen = exporter::validate_exporter(raw.metrics, &top)?;
        if let Err(e) = raw.tracing.validate() {
            return Err(top.err(e.field, e.expected));
        }

        Ok(Config {
            path: path.to_path_buf(),
            host_id,
            data_dir,
            coordinators: raw.coordinators,
            report_interval,
            traffic_interval,
            labels: raw.labels,
            instances,
            metrics_listen,
            tracing: raw.tracing,
        })
    }

    /// `<data_dir>/instances/<name>`.
    pub fn instance_dir(&self, name: &str) -> PathBuf {
        instance_dir(&self.data_dir, name)
    }
}

/// `<data_dir>/instances/<name>`.
pub fn instance_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("instances").join(name)
}

fn validate_instance(raw: RawInstance, c: &Checker<'_>) -> Result<InstanceConfig, ConfigError> {
    let name = match raw.name {
        None => return Err(c.err("name", format!("required: {NAME_RULE}"))),
        Some(n) if !valid_name(&n) => {
            return Err(c.err("name", format!("invalid name `{n}`: expected {NAME_RULE}")));
        }
        Some(n) => n,
    };
    let service = match raw.service {
        None => name.clone(),
        Some(s) if !valid_name(&s) => {
            return Err(c.err(
                "service",
                format!("invalid name `{s}`: expected {NAME_RULE}"),
            ));
        }
        Some(s) => s,
    };
    let deploy = steps::validate_deploy(
        steps::RawDeploy {
            dir: raw.deploy_dir,
            keep_releases: raw.keep_releases,
            max_unpacked_bytes: raw.max_unpacked_bytes,
            max_entries: raw.max_entries,
        },
        c,
    )?;
    let current = deploy.as_ref().map(DeployConfig::current_link);
    let runtime = match raw.runtime.unwrap_or(RawRuntime::Process) {
        RawRuntime::Process => {
            for (field, set) in [("unit", raw.unit.is_some()), ("user", raw.user.is_some())] {
                if set {
                    return Err(c.err(field, "only used when runtime = \"systemd\""));
                }
            }
            let command = match raw.command {
                None => return Err(c.err("command", "required when runtime = \"process\"")),
                Some(cmd) if cmd.as_os_str().is_empty() => {
                    return Err(c.err("command", "expected the path of the program to run"));
                }
                Some(cmd) => cmd,
            };
            let env = raw.env.unwrap_or_default();
            for k in env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(c.err(
                        &format!("env.{k}"),
                        "expected an environment variable name without `=`",
                    ));
                }
            }
            let placeholder = |field: &str, value: &str| {
                if value.contains(CURRENT_PLACEHOLDER) && current.is_none() {
                    Err(c.err(
                        field,
                        format!("uses {CURRENT_PLACEHOLDER}, which needs deploy_dir to be set"),
                    ))
                } else {
                    Ok(())
                }
            };
            placeholder("command", &command.to_string_lossy())?;
            for (i, a) in raw.args.iter().flatten().enumerate() {
                placeholder(&format!("args[{i}]"), a)?;
            }
            for (k, v) in &env {
                placeholder(&format!("env.{k}"), v)?;
            }
            if let Some(dir) = &raw.working_dir {
                placeholder("working_dir", &dir.to_string_lossy())?;
            }
            let expanded_dir = raw.working_dir.as_ref().map(|d| match &current {
                Some(cur) => PathBuf::from(expand_current(&d.to_string_lossy(), cur)),
                None => d.clone(),
            });
            if let Some(dir) = &expanded_dir
                && !dir.is_absolute()
            {
                return Err(c.err(
                    "working_dir",
                    format!("expected an absolute path, got `{}`", dir.display()),
                ));
            }
            let stop_signal = match raw.stop_signal {
                None => Signal::TERM,
                Some(s) => Signal::from_name(&s).ok_or_else(|| {
                    let known: Vec<&str> = SIGNALS.iter().map(|(n, _)| *n).collect();
                    c.err(
                        "stop_signal",
                        format!("unknown signal `{s}`: expected one of {}", known.join(", ")),
                    )
                })?,
            };
            RuntimeConfig::Process(ProcessConfig {
                command,
                args: raw.args.unwrap_or_default(),
                env,
                working_dir: raw.working_dir,
                stop_signal,
                stop_timeout: c.positive("stop_timeout", raw.stop_timeout, DEFAULT_STOP_TIMEOUT)?,
                current: current.clone(),
            })
        }
        RawRuntime::Systemd => {
            for (field, set) in [
                ("command", raw.command.is_some()),
                ("args", raw.args.is_some()),
                ("env", raw.env.is_some()),
                ("working_dir", raw.working_dir.is_some()),
                ("stop_signal", raw.stop_signal.is_some()),
                ("stop_timeout", raw.stop_timeout.is_some()),
            ] {
                if set {
                    return Err(c.err(
                        field,
                        "only used when runtime = \"process\" (systemd units carry their own)",
                    ));
                }
            }
            let unit = match raw.unit {
                None => {
                    return Err(c.err(
                        "unit",
                        "required when runtime = \"systemd\", e.g. \"web.service\"",
                    ));
                }
                Some(u) if !valid_unit(&u) => {
                    return Err(c.err(
                        "unit",
                        format!("invalid unit name `{u}`: expected e.g. \"web.service\""),
                    ));
                }
                Some(u) => u,
            };
            RuntimeConfig::Systemd(SystemdConfig {
                unit,
                user: raw.user.unwrap_or(false),
            })
        }
    };
    let health = raw
        .health
        .map(|h| health::validate_health(h, c))
        .transpose()?;
    let drain = steps::validate_drain(raw.drain, c)?;
    let hooks = steps::validate_hooks(raw.hooks, c)?;
    let metrics = traffic::validate_metrics(raw.metrics, c)?;
    Ok(InstanceConfig {
        name,
        service,
        runtime,
        health,
        deploy,
        drain,
        hooks,
        color: raw.color,
        metrics,
    })
}

fn valid_unit(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 255
        && !unit.starts_with('-')
        && unit.chars().all(|ch| {
            ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | '@' | ':' | '\\')
        })
}

fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim();
    (!h.is_empty()).then(|| h.to_string())
}
