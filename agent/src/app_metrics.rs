//! Scraping an instance's own Prometheus `/metrics` (`[instance.metrics]`)
//! at the traffic interval: one bounded GET with the agent's HTTP client,
//! only to an address of this host, parsed strictly
//! ([`crate::prometheus`]). The counts go on the [`StatusBoard`] and ride
//! along with the next report; they never trigger one.

use std::net::IpAddr;
use std::time::Duration;

use drover_proto::v1::{AppMetrics, HistogramBucket};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsConfig;
use crate::supervisor::StatusBoard;

/// Largest `/metrics` body read.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Longest error text kept.
const MAX_ERROR: usize = 300;

/// Scrapes every `every` into `board[index]` until `cancel`.
pub async fn scrape_loop(
    cfg: MetricsConfig,
    board: StatusBoard,
    index: usize,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let m = tokio::select! {
            _ = cancel.cancelled() => return,
            m = scrape(&cfg) => m,
        };
        match (m.error.is_empty(), failing) {
            (false, false) => {
                tracing::warn!(url = %url(&cfg), "cannot read the instance's metrics: {}", m.error);
                failing = true;
            }
            (true, true) => {
                tracing::info!(url = %url(&cfg), "the instance's metrics can be read again");
                failing = false;
            }
            _ => {}
        }
        board.set_app_metrics(index, m);
    }
}

fn url(cfg: &MetricsConfig) -> String {
    format!("http://{}{}", cfg.target.host_header(), cfg.target.path)
}

/// One scrape, bounded by the configured timeout; a failure is reported
/// in `error`.
pub async fn scrape(cfg: &MetricsConfig) -> AppMetrics {
    let read_at_ms = crate::drain::view::unix_ms();
    let result = match tokio::time::timeout(cfg.timeout, fetch(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(cfg.timeout)
        )),
    };
    match result {
        Ok(t) => AppMetrics {
            read_at_ms,
            error: String::new(),
            requests: t.requests,
            errors: t.errors,
            latency_buckets: t
                .buckets
                .into_iter()
                .map(|(le, count)| HistogramBucket { le, count })
                .collect(),
            latency_sum: t.latency_sum,
            latency_count: t.latency_count,
        },
        Err(mut e) => {
            if e.len() > MAX_ERROR {
                let mut end = MAX_ERROR;
                while !e.is_char_boundary(end) {
                    end -= 1;
                }
                e.truncate(end);
                e.push('…');
            }
            AppMetrics {
                read_at_ms,
                error: e,
                ..AppMetrics::default()
            }
        }
    }
}

async fn fetch(cfg: &MetricsConfig) -> Result<crate::prometheus::Traffic, String> {
    check_local(&cfg.target.host)?;
    let body = crate::http::get_body(&cfg.target, "text/plain;version=0.0.4", MAX_BODY).await?;
    let text = std::str::from_utf8(&body).map_err(|_| "the metrics are not UTF-8".to_string())?;
    crate::prometheus::parse(text)
        .and_then(|e| e.traffic(&cfg.requests, &cfg.latency))
        .map_err(|e| e.to_string())
}

/// Only this host's instances are scraped: `localhost`, a loopback
/// address, or an address this host has (one a socket can be bound to).
fn check_local(host: &str) -> Result<(), String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(());
    }
    let ip: IpAddr = host
        .parse()
        .map_err(|_| format!("{host} is not an IP address"))?;
    if ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{ip} is not an address of this host: the agent scrapes only its own instances"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_hosts_addresses_are_scraped() {
        assert!(check_local("127.0.0.1").is_ok());
        assert!(check_local("::1").is_ok());
        assert!(check_local("localhost").is_ok());
        // TEST-NET-3, never assigned to a host.
        let e = check_local("203.0.113.7").expect_err("not ours");
        assert!(e.contains("not an address of this host"), "{e}");
    }
}
