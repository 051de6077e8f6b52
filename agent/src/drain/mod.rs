//! Taking an instance out of the load balancer and putting it back:
//! HAProxy's runtime API (every configured HAProxy), an operator command,
//! or nothing.
//!
//! HAProxy drain semantics: `state drain` stops new sessions at once;
//! sessions already open are allowed to finish. The step waits for the
//! server's current sessions to reach 0, and when the drain timeout comes
//! first it proceeds anyway (saying how many were left), because that is
//! what an operator's drain timeout means. Only an HAProxy that cannot be
//! reached (or refuses the command) fails the step.

pub mod haproxy;

use std::time::Duration;

use tokio::time::Instant;

use crate::config::{DrainConfig, HaproxyDrain};
use crate::hooks::{self, HookError};
use haproxy::{AdminState, HaproxyError};

/// How often `show stat` is polled while waiting for sessions to end.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Haproxy(#[from] HaproxyError),
    #[error("drain command: {0}")]
    Exec(#[from] HookError),
}

/// Drains per `cfg`. `env` goes to exec commands. On error, the bool says
/// whether the instance may still be (partly) out of the load balancer:
/// false only when everything was put back as it was.
pub async fn drain(
    cfg: &DrainConfig,
    env: &[(&str, String)],
) -> Result<String, (DrainError, bool)> {
    match cfg {
        DrainConfig::None => Ok("drained (no load balancer configured)".to_string()),
        DrainConfig::Exec(e) => hooks::run(&e.drain, env, e.timeout)
            .await
            .map(|()| "drain command succeeded".to_string())
            // The command's effect is unknown: count it as drained.
            .map_err(|err| (err.into(), true)),
        DrainConfig::Haproxy(h) => drain_haproxy(h).await,
    }
}

/// Undrains per `cfg`.
pub async fn undrain(cfg: &DrainConfig, env: &[(&str, String)]) -> Result<String, DrainError> {
    match cfg {
        DrainConfig::None => Ok("undrained (no load balancer configured)".to_string()),
        DrainConfig::Exec(e) => {
            hooks::run(&e.undrain, env, e.timeout).await?;
            Ok("undrain command succeeded".to_string())
        }
        DrainConfig::Haproxy(h) => {
            for addr in &h.sockets {
                haproxy::set_state(addr, &h.backend, &h.server, AdminState::Ready).await?;
            }
            Ok(format!(
                "{}/{} ready on {} HAProxy",
                h.backend,
                h.server,
                h.sockets.len()
            ))
        }
    }
}

/// Sets the server's weight on every HAProxy of `h`, for shifting traffic
/// gradually (canaries); stops at the first that fails.
pub async fn set_weight(h: &HaproxyDrain, weight: u32) -> Result<(), DrainError> {
    for addr in &h.sockets {
        haproxy::set_weight(addr, &h.backend, &h.server, weight).await?;
    }
    Ok(())
}

/// Sets `drain` on every HAProxy, then waits for the sessions to end. On
/// an error the HAProxies already drained are put back (best effort); the
/// bool says whether the instance may still be drained somewhere.
async fn drain_haproxy(h: &HaproxyDrain) -> Result<String, (DrainError, bool)> {
    for (i, addr) in h.sockets.iter().enumerate() {
        if let Err(e) = haproxy::set_state(addr, &h.backend, &h.server, AdminState::Drain).await {
            let mut restored = true;
            for done in &h.sockets[..i] {
                if let Err(e2) =
                    haproxy::set_state(done, &h.backend, &h.server, AdminState::Ready).await
                {
                    tracing::warn!(
                        "put {}/{} back after a failed drain: {e2}",
                        h.backend,
                        h.server
                    );
                    restored = false;
                }
            }
            return Err((e.into(), !restored));
        }
    }
    let started = Instant::now();
    let deadline = started + h.timeout;
    loop {
        let mut left = 0u64;
        let mut unreadable = None;
        for addr in &h.sockets {
            match haproxy::server_stat(addr, &h.backend, &h.server).await {
                Ok(s) => left += s.scur,
                Err(e) => unreadable = Some(e),
            }
        }
        if left == 0 && unreadable.is_none() {
            return Ok(format!(
                "drained {}/{} on {} HAProxy; sessions reached 0 after {}",
                h.backend,
                h.server,
                h.sockets.len(),
                humantime::format_duration(round_ms(started.elapsed()))
            ));
        }
        if Instant::now() >= deadline {
            let msg = match unreadable {
                None => format!("drain timeout with {left} sessions"),
                Some(e) => format!("drain timeout with {left} sessions (and {e})"),
            };
            tracing::warn!(backend = %h.backend, server = %h.server, "{msg}; proceeding");
            return Ok(msg);
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline - Instant::now())).await;
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
