//! Validation of what traffic shifting needs: an instance's blue-green
//! `color` and its own Prometheus metrics (`[instance.metrics]`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{CheckConfig, Checker, ConfigError, HttpTarget, InstanceConfig, parse_http_url};
use crate::config::DrainConfig;

const DEFAULT_REQUESTS_METRIC: &str = "http_requests_total";
const DEFAULT_LATENCY_METRIC: &str = "http_request_duration_seconds";
const DEFAULT_METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// Blue-green: which of a service's two instances on a host this is; the
/// same type the coordinator reads it back into.
pub use drover_model::Color;

/// Where the instance's own Prometheus metrics are, and which of them
/// drover reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub target: HttpTarget,
    /// A counter with a `code` label (HTTP status).
    pub requests: String,
    /// A histogram of request durations in seconds.
    pub latency: String,
    /// Bounds one scrape.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    url: Option<String>,
    requests: Option<String>,
    latency: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
}

pub(super) fn validate_metrics(
    raw: Option<RawMetrics>,
    c: &Checker<'_>,
) -> Result<Option<MetricsConfig>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let url = raw.url.as_deref().ok_or_else(|| {
        c.err(
            "metrics.url",
            "required: the instance's Prometheus endpoint, e.g. \"http://127.0.0.1:8080/metrics\"",
        )
    })?;
    let target = parse_http_url(url, 200).map_err(|why| c.err("metrics.url", why))?;
    if !host_address(&target.host) {
        return Err(c.err(
            "metrics.url",
            format!(
                "expected a loopback or IP address of this host (or localhost), got `{}`: the agent scrapes only the instance on its own host",
                target.host
            ),
        ));
    }
    let name = |field: &str, v: Option<String>, default: &str| match v {
        None => Ok(default.to_string()),
        Some(n) if valid_metric_name(&n) => Ok(n),
        Some(n) => Err(c.err(
            &format!("metrics.{field}"),
            format!("invalid metric name `{n}`: expected [a-zA-Z_:][a-zA-Z0-9_:]*"),
        )),
    };
    Ok(Some(MetricsConfig {
        target,
        requests: name("requests", raw.requests, DEFAULT_REQUESTS_METRIC)?,
        latency: name("latency", raw.latency, DEFAULT_LATENCY_METRIC)?,
        timeout: c.positive("metrics.timeout", raw.timeout, DEFAULT_METRICS_TIMEOUT)?,
    }))
}

/// `localhost` or an IP literal; whether an IP is this host's is checked
/// when scraping (addresses come and go).
fn host_address(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok()
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The port an instance serves on, as far as its config says (its
/// health check's or its metrics' address).
fn port(inst: &InstanceConfig) -> Option<u16> {
    match inst.health.as_ref().map(|h| &h.check) {
        Some(CheckConfig::Http(t)) => Some(t.port),
        Some(CheckConfig::Tcp { port, .. }) => Some(*port),
        _ => inst.metrics.as_ref().map(|m| m.target.port),
    }
}

/// A service either has no colors or exactly one blue and one green
/// instance on this host, each with its own name (already unique), deploy
/// dir (required, already unique), port and HAProxy server, in the same
/// backend so weights can shift traffic between them.
pub(super) fn validate_colors(
    instances: &[InstanceConfig],
    path: &Path,
) -> Result<(), ConfigError> {
    let mut by_service: BTreeMap<&str, Vec<(usize, &InstanceConfig)>> = BTreeMap::new();
    for (i, inst) in instances.iter().enumerate() {
        by_service.entry(&inst.service).or_default().push((i, inst));
    }
    for (service, members) in by_service {
        let colored: Vec<_> = members.iter().filter(|(_, m)| m.color.is_some()).collect();
        let Some(&&(first_i, first)) = colored.first() else {
            continue;
        };
        let checker = |i: usize, inst: &InstanceConfig| Checker {
            path,
            context: Some(format!("instance[{i}] ({})", inst.name)),
        };
        if let Some((i, plain)) = members.iter().find(|(_, m)| m.color.is_none()) {
            return Err(checker(*i, plain).err(
                "color",
                format!(
                    "missing: service {service} has colored instances ({} is {}), so every instance of it needs color = \"blue\" or \"green\"",
                    first.name,
                    first.color.map(Color::as_str).unwrap_or_default()
                ),
            ));
        }
        for color in [Color::Blue, Color::Green] {
            let same: Vec<_> = colored
                .iter()
                .filter(|(_, m)| m.color == Some(color))
                .collect();
            match same.as_slice() {
                [_] => {}
                [] => {
                    return Err(checker(first_i, first).err(
                        "color",
                        format!(
                            "service {service} has no {} instance on this host: blue-green needs exactly one blue and one green instance",
                            color.as_str()
                        ),
                    ));
                }
                [(_, a), (i, b), ..] => {
                    return Err(checker(*i, b).err(
                        "color",
                        format!(
                            "service {service} has two {} instances on this host ({} and {}): blue-green needs exactly one blue and one green instance",
                            color.as_str(),
                            a.name,
                            b.name
                        ),
                    ));
                }
            }
        }
        let (bi, blue) = **colored
            .iter()
            .find(|(_, m)| m.color == Some(Color::Blue))
            .unwrap_or(&&(first_i, first));
        let (gi, green) = **colored
            .iter()
            .find(|(_, m)| m.color == Some(Color::Green))
            .unwrap_or(&&(first_i, first));
        for (i, inst) in [(bi, blue), (gi, green)] {
            if inst.deploy.is_none() {
                return Err(checker(i, inst).err(
                    "deploy_dir",
                    "required for a blue or green instance: each color is deployed on its own",
                ));
            }
        }
        if let (Some(a), Some(b)) = (port(blue), port(green))
            && a == b
        {
            return Err(checker(gi, green).err(
                "color",
                format!(
                    "{} (blue) and {} (green) both serve on port {a}: each color needs its own port",
                    blue.name, green.name
                ),
            ));
        }
        if let (DrainConfig::Haproxy(a), DrainConfig::Haproxy(b)) = (&blue.drain, &green.drain) {
            if a.backend != b.backend {
                return Err(checker(gi, green).err(
                    "drain.backend",
                    format!(
                        "`{}`, but {} (blue) is in backend `{}`: blue and green must be servers of the same HAProxy backend so weights can shift traffic between them",
                        b.backend, blue.name, a.backend
                    ),
                ));
            }
            if a.server == b.server {
                return Err(checker(gi, green).err(
                    "drain.server",
                    format!(
                        "`{}` is {} (blue)'s server too: each color needs its own HAProxy server",
                        b.server, blue.name
                    ),
                ));
            }
        }
    }
    Ok(())
}
