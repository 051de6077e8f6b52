//! The parts of an instance's config that rollout steps use: where
//! releases are deployed, how the instance leaves the load balancer, and
//! the operator's own hooks. The coordinator only names steps; everything
//! that runs on the host is defined here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_net::transport;
use serde::Deserialize;

use super::{Checker, ConfigError};

pub const DEFAULT_KEEP_RELEASES: usize = 5;
/// The same defaults `drover artifact push` checks against.
pub use drover_archive::{DEFAULT_MAX_ENTRIES, DEFAULT_MAX_UNPACKED_BYTES};
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// The placeholder process instances may use for the deployed release.
pub const CURRENT_PLACEHOLDER: &str = "{current}";

/// Where and how releases are unpacked for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployConfig {
    pub dir: PathBuf,
    /// Releases kept on disk, counting the current one; the current and
    /// the previous release are never removed whatever this says.
    pub keep_releases: usize,
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}

impl DeployConfig {
    /// `<deploy_dir>/releases`.
    pub fn releases_dir(&self) -> PathBuf {
        self.dir.join("releases")
    }

    /// `<deploy_dir>/current`, the symlink to the live release.
    pub fn current_link(&self) -> PathBuf {
        self.dir.join("current")
    }
}

/// How an instance is taken out of (and put back into) the load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DrainConfig {
    /// Nothing to do: draining only sets the instance's `drained` flag.
    #[default]
    None,
    Haproxy(HaproxyDrain),
    Exec(ExecDrain),
}

impl DrainConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            DrainConfig::None => "none",
            DrainConfig::Haproxy(_) => "haproxy",
            DrainConfig::Exec(_) => "exec",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyDrain {
    /// Every HAProxy that sends traffic to this instance.
    pub sockets: Vec<HaproxyAddr>,
    pub backend: String,
    pub server: String,
    /// Longest wait for the server's current sessions to reach 0.
    pub timeout: Duration,
}

/// Address of an HAProxy runtime API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaproxyAddr {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl std::fmt::Display for HaproxyAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaproxyAddr::Unix(p) => write!(f, "{}", p.display()),
            HaproxyAddr::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            HaproxyAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl HaproxyAddr {
    /// A path (starting with `/`) is a unix socket; anything else HOST:PORT.
    pub fn parse(s: &str) -> Result<HaproxyAddr, String> {
        if s.starts_with('/') {
            return Ok(HaproxyAddr::Unix(PathBuf::from(s)));
        }
        transport::parse_addr(s)
            .map(|(host, port)| HaproxyAddr::Tcp { host, port })
            .map_err(|e| {
                format!(
                    "expected a unix socket path or HOST:PORT, got `{s}`: {}",
                    super::health::address_problem(e)
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecDrain {
    pub drain: Vec<String>,
    pub undrain: Vec<String>,
    /// Bounds each run of the drain or undrain command.
    pub timeout: Duration,
}

/// The operator's hooks; each is an argv (never shell text from the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HooksConfig {
    pub before_stop: Option<Vec<String>>,
    pub after_deploy: Option<Vec<String>>,
    /// Must pass during verify.
    pub validate: Option<Vec<String>>,
    pub timeout: Duration,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            before_stop: None,
            after_deploy: None,
            validate: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

// ---- the file as written ----

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawDrainType {
    Haproxy,
    Exec,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    #[serde(rename = "type")]
    kind: Option<RawDrainType>,
    sockets: Option<Vec<String>>,
    backend: Option<String>,
    server: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    drain: Option<Vec<String>>,
    undrain: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    before_stop: Option<Vec<String>>,
    after_deploy: Option<Vec<String>>,
    validate: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
}

/// The deploy-related fields of one `[[instance]]`.
pub(super) struct RawDeploy {
    pub dir: Option<PathBuf>,
    pub keep_releases: Option<usize>,
    pub max_unpacked_bytes: Option<u64>,
    pub max_entries: Option<u64>,
}

pub(super) fn validate_deploy(
    raw: RawDeploy,
    c: &Checker<'_>,
) -> Result<Option<DeployConfig>, ConfigError> {
    let Some(dir) = raw.dir else {
        for (field, set) in [
            ("keep_releases", raw.keep_releases.is_some()),
            ("max_unpacked_bytes", raw.max_unpacked_bytes.is_some()),
            ("max_entries", raw.max_entries.is_some()),
        ] {
            if set {
                return Err(c.err(field, "only used together with deploy_dir"));
            }
        }
        return Ok(None);
    };
    if !dir.is_absolute() {
        return Err(c.err(
            "deploy_dir",
            format!("expected an absolute path, got `{}`", dir.display()),
        ));
    }
    if dir.parent().is_none() {
        return Err(c.err("deploy_dir", "expected a directory below /, not / itself"));
    }
    let keep_releases = raw.keep_releases.unwrap_or(DEFAULT_KEEP_RELEASES);
    if keep_releases < 1 {
        return Err(c.err("keep_releases", "expected a count of at least 1"));
    }
    let max_unpacked_bytes = raw.max_unpacked_bytes.unwrap_or(DEFAULT_MAX_UNPACKED_BYTES);
    if max_unpacked_bytes < 1 {
        return Err(c.err(
            "max_unpacked_bytes",
            "expected a size in bytes of at least 1",
        ));
    }
    let max_entries = raw.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
    if max_entries < 1 {
        return Err(c.err("max_entries", "expected a count of at least 1"));
    }
    Ok(Some(DeployConfig {
        dir,
        keep_releases,
        max_unpacked_bytes,
        max_entries,
    }))
}

fn argv(c: &Checker<'_>, field: &str, v: Vec<String>) -> Result<Vec<String>, ConfigError> {
    match v.first() {
        Some(p) if Path::new(p).is_absolute() => {}
        Some(p) if !p.is_empty() => {
            return Err(c.err(
                field,
                format!("expected an absolute program path as the first element, got `{p}`"),
            ));
        }
        _ => {
            return Err(c.err(
                field,
                "expected a command as an argv array, e.g. [\"/usr/local/bin/cmd\", \"arg\"]",
            ));
        }
    }
    if v.iter().any(|a| a.contains('\0')) {
        return Err(c.err(field, "arguments must not contain NUL bytes"));
    }
    Ok(v)
}

/// HAProxy proxy and server names end up in a runtime API command line,
/// so only the characters HAProxy itself allows in names get through.
fn haproxy_name(c: &Checker<'_>, field: &str, v: Option<String>) -> Result<String, ConfigError> {
    let rule = "expected an HAProxy name: letters, digits, `-`, `_`, `.` and `:`";
    match v {
        None => Err(c.err(field, format!("required when type = \"haproxy\": {rule}"))),
        Some(n)
            if !n.is_empty()
                && n.len() <= 128
                && n.chars().all(|ch| {
                    ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.' | ':')
                }) =>
        {
            Ok(n)
        }
        Some(n) => Err(c.err(field, format!("invalid name `{n}`: {rule}"))),
    }
}

pub(super) fn validate_drain(
    raw: Option<RawDrain>,
    c: &Checker<'_>,
) -> Result<DrainConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(DrainConfig::None);
    };
    let kind = raw.kind.unwrap_or(RawDrainType::None);
    let not_for = |field: &str, set: bool| {
        if set {
            Err(c.err(
                &format!("drain.{field}"),
                format!("not used by a drain of type {kind:?}").to_lowercase(),
            ))
        } else {
            Ok(())
        }
    };
    let timeout = c.positive("drain.timeout", raw.timeout, DEFAULT_DRAIN_TIMEOUT)?;
    match kind {
        RawDrainType::None => {
            not_for("sockets", raw.sockets.is_some())?;
            not_for("backend", raw.backend.is_some())?;
            not_for("server", raw.server.is_some())?;
            not_for("timeout", raw.timeout.is_some())?;
            not_for("drain", raw.drain.is_some())?;
            not_for("undrain", raw.undrain.is_some())?;
            Ok(DrainConfig::None)
        }
        RawDrainType::Haproxy => {
            not_for("drain", raw.drain.is_some())?;
            not_for("undrain", raw.undrain.is_some())?;
            let list = raw.sockets.unwrap_or_default();
            if list.is_empty() {
                return Err(c.err(
                    "drain.sockets",
                    "required when type = \"haproxy\": one or more runtime API addresses, e.g. [\"/run/haproxy/admin.sock\"] or [\"127.0.0.1:9999\"]",
                ));
            }
            let mut sockets = Vec::with_capacity(list.len());
            for (i, s) in list.iter().enumerate() {
                let addr = HaproxyAddr::parse(s)
                    .map_err(|why| c.err(&format!("drain.sockets[{i}]"), why))?;
                if sockets.contains(&addr) {
                    return Err(c.err(
                        &format!("drain.sockets[{i}]"),
                        format!("`{s}` is listed twice"),
                    ));
                }
                sockets.push(addr);
            }
            Ok(DrainConfig::Haproxy(HaproxyDrain {
                sockets,
                backend: haproxy_name(c, "drain.backend", raw.backend)?,
                server: haproxy_name(c, "drain.server", raw.server)?,
                timeout,
            }))
        }
        RawDrainType::Exec => {
            not_for("sockets", raw.sockets.is_some())?;
            not_for("backend", raw.backend.is_some())?;
            not_for("server", raw.server.is_some())?;
            let drain = argv(c, "drain.drain", raw.drain.unwrap_or_default())?;
            let undrain = argv(c, "drain.undrain", raw.undrain.unwrap_or_default())?;
            Ok(DrainConfig::Exec(ExecDrain {
                drain,
                undrain,
                timeout,
            }))
        }
    }
}

pub(super) fn validate_hooks(
    raw: Option<RawHooks>,
    c: &Checker<'_>,
) -> Result<HooksConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(HooksConfig::default());
    };
    let hook = |field: &str, v: Option<Vec<String>>| {
        v.map(|v| argv(c, &format!("hooks.{field}"), v)).transpose()
    };
    Ok(HooksConfig {
        before_stop: hook("before_stop", raw.before_stop)?,
        after_deploy: hook("after_deploy", raw.after_deploy)?,
        validate: hook("validate", raw.validate)?,
        timeout: c.positive("hooks.timeout", raw.timeout, DEFAULT_HOOK_TIMEOUT)?,
    })
}

/// Replaces `{current}` in `s` with `current`.
pub fn expand_current(s: &str, current: &Path) -> String {
    if s.contains(CURRENT_PLACEHOLDER) {
        s.replace(CURRENT_PLACEHOLDER, &current.to_string_lossy())
    } else {
        s.to_string()
    }
}
