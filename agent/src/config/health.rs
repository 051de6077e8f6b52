//! Validation of `[instance.health]`.

use std::time::Duration;

use drover_net::transport;
use serde::Deserialize;

use super::{
    CheckConfig, Checker, ConfigError, DEFAULT_CHECK_INTERVAL, DEFAULT_CHECK_TIMEOUT, DEFAULT_FALL,
    DEFAULT_RISE, HealthConfig, HttpTarget,
};

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawCheckType {
    Http,
    Tcp,
    Exec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    #[serde(rename = "type")]
    kind: RawCheckType,
    url: Option<String>,
    expect_status: Option<u16>,
    address: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
}

pub(super) fn validate_health(
    raw: RawHealth,
    c: &Checker<'_>,
) -> Result<HealthConfig, ConfigError> {
    let not_for = |field: &str, set: bool| {
        if set {
            Err(c.err(
                &format!("health.{field}"),
                format!("not used by a health check of type {:?}", raw.kind).to_lowercase(),
            ))
        } else {
            Ok(())
        }
    };
    let check = match raw.kind {
        RawCheckType::Http => {
            not_for("address", raw.address.is_some())?;
            not_for("command", raw.command.is_some())?;
            let url = raw.url.as_deref().ok_or_else(|| {
                c.err(
                    "health.url",
                    "required when type = \"http\", e.g. \"http://127.0.0.1:8080/healthz\"",
                )
            })?;
            let expect_status = raw.expect_status.unwrap_or(200);
            if !(100..=599).contains(&expect_status) {
                return Err(c.err(
                    "health.expect_status",
                    "expected an HTTP status code from 100 to 599",
                ));
            }
            let target =
                parse_http_url(url, expect_status).map_err(|why| c.err("health.url", why))?;
            CheckConfig::Http(target)
        }
        RawCheckType::Tcp => {
            not_for("url", raw.url.is_some())?;
            not_for("expect_status", raw.expect_status.is_some())?;
            not_for("command", raw.command.is_some())?;
            let addr = raw.address.as_deref().ok_or_else(|| {
                c.err(
                    "health.address",
                    "required when type = \"tcp\", e.g. \"127.0.0.1:8080\"",
                )
            })?;
            let (host, port) = transport::parse_addr(addr).map_err(|e| {
                c.err(
                    "health.address",
                    format!(
                        "expected the instance's HOST:PORT, got `{addr}`: {}",
                        address_problem(e)
                    ),
                )
            })?;
            CheckConfig::Tcp { host, port }
        }
        RawCheckType::Exec => {
            not_for("url", raw.url.is_some())?;
            not_for("expect_status", raw.expect_status.is_some())?;
            not_for("address", raw.address.is_some())?;
            let command = raw.command.unwrap_or_default();
            if command.first().is_none_or(|p| p.is_empty()) {
                return Err(c.err(
                    "health.command",
                    "required when type = \"exec\": expected [\"/path/to/check\", \"arg\", ...]",
                ));
            }
            CheckConfig::Exec { command }
        }
    };
    let rise = raw.rise.unwrap_or(DEFAULT_RISE);
    if rise < 1 {
        return Err(c.err("health.rise", "expected a count of at least 1"));
    }
    let fall = raw.fall.unwrap_or(DEFAULT_FALL);
    if fall < 1 {
        return Err(c.err("health.fall", "expected a count of at least 1"));
    }
    Ok(HealthConfig {
        check,
        interval: c.positive("health.interval", raw.interval, DEFAULT_CHECK_INTERVAL)?,
        timeout: c.positive("health.timeout", raw.timeout, DEFAULT_CHECK_TIMEOUT)?,
        rise,
        fall,
    })
}

/// What is wrong with an address, without `parse_addr`'s own wording,
/// which calls every address a coordinator's.
pub(super) fn address_problem(e: transport::TransportError) -> String {
    match e {
        transport::TransportError::Address { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// Parses `http://host[:port][/path]`; only plain HTTP is supported.
pub fn parse_http_url(url: &str, expect_status: u16) -> Result<HttpTarget, String> {
    let usage = "expected http://HOST:PORT/PATH";
    let Some(rest) = url.strip_prefix("http://") else {
        if url.starts_with("https://") {
            return Err(format!(
                "{usage} (https is not supported by the built-in check; use type = \"exec\")"
            ));
        }
        return Err(format!("{usage}, got `{url}`"));
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err(format!("{usage}: credentials in the URL are not supported"));
    }
    if path.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
        return Err(format!(
            "{usage}: the path must not contain spaces or control characters"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{usage}: unclosed `[`"))?;
        match after.strip_prefix(':') {
            Some(p) => (host, Some(p)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("{usage}, got `{url}`")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{usage}: empty host"));
    }
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{usage}: port must be a number from 1 to 65535")),
        },
    };
    Ok(HttpTarget {
        host: host.to_string(),
        port,
        path: path.to_string(),
        expect_status,
    })
}
