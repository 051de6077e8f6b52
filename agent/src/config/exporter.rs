//! `[metrics]`: the agent's own Prometheus endpoint, off unless `listen`
//! names an address.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{Checker, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExporter {
    listen: Option<String>,
}

/// The address to serve `/metrics` on, or `None` when there is no
/// `[metrics]` table. An IP literal and a port: a host name could resolve
/// to an address other than the operator meant, and port 0 to one nobody
/// could find.
pub(super) fn validate_exporter(
    raw: Option<RawExporter>,
    c: &Checker<'_>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let Some(listen) = raw.listen else {
        return Err(c.err(
            "metrics.listen",
            "required in [metrics]: the address to serve the agent's /metrics on, e.g. \"127.0.0.1:9464\" (leave [metrics] out to serve none)",
        ));
    };
    let addr: SocketAddr = listen.parse().map_err(|_| {
        c.err(
            "metrics.listen",
            format!("expected IP:PORT (e.g. \"127.0.0.1:9464\" or \"[::1]:9464\"), got `{listen}`"),
        )
    })?;
    if addr.port() == 0 {
        return Err(c.err(
            "metrics.listen",
            format!("expected a port from 1 to 65535, got `{listen}`: Prometheus needs to know where to scrape"),
        ));
    }
    Ok(Some(addr))
}
