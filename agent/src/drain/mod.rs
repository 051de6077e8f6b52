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
//!
//! Undrain is done when every HAProxy has the server UP again (its checks
//! passed, neither drained nor in maintenance), not when `state ready` was
//! accepted: HAProxy routes to a server that was stopped only `rise`
//! checks later, and until then the instance is no capacity.

pub mod haproxy;
pub mod view;
pub mod weight;

use std::time::Duration;

use tokio::time::Instant;

use drover_proto::v1::LoadBalancerView;

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
    /// `state ready` was accepted but HAProxy did not have the server UP
    /// by the deadline: it is no longer drained, and not serving either.
    #[error(
        "HAProxy did not see {instance} UP within {waited} of `set server {backend}/{server} state ready`: {last}; check that the instance answers HAProxy's health check"
    )]
    NotUp {
        instance: String,
        backend: String,
        server: String,
        waited: String,
        last: String,
    },
}

/// How an undrain waits for the load balancer to route to the instance.
pub struct UndrainWait<'a> {
    /// The instance, for messages (`web@h1`).
    pub instance: &'a str,
    /// The step fails at this instant at the latest (a little before, so
    /// that it fails with its own message rather than a timeout).
    pub deadline: Instant,
    /// Called with each new progress message.
    pub progress: &'a (dyn Fn(String) + Send + Sync),
}

/// A finished undrain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undrained {
    pub message: String,
    /// What each load balancer said last (haproxy drains only, one per
    /// socket in config order)...
    pub views: Vec<LoadBalancerView>,
    /// ...when asked at this instant.
    pub asked: std::time::Instant,
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

/// Undrains per `cfg`; for HAProxy, waits until every HAProxy has the
/// server UP, until `wait.deadline`.
pub async fn undrain(
    cfg: &DrainConfig,
    env: &[(&str, String)],
    wait: &UndrainWait<'_>,
) -> Result<Undrained, DrainError> {
    let message = match cfg {
        DrainConfig::None => "undrained (no load balancer configured)".to_string(),
        DrainConfig::Exec(e) => {
            hooks::run(&e.undrain, env, e.timeout).await?;
            "undrain command succeeded".to_string()
        }
        DrainConfig::Haproxy(h) => return undrain_haproxy(h, wait).await,
    };
    Ok(Undrained {
        message,
        views: Vec::new(),
        asked: std::time::Instant::now(),
    })
}

/// The margin an undrain keeps before its deadline: a tenth of the time
/// it has, at most a second.
fn margin(left: Duration) -> Duration {
    (left / 10).min(Duration::from_secs(1))
}

async fn undrain_haproxy(
    h: &HaproxyDrain,
    wait: &UndrainWait<'_>,
) -> Result<Undrained, DrainError> {
    for addr in &h.sockets {
        haproxy::set_state(addr, &h.backend, &h.server, AdminState::Ready).await?;
    }
    let started = Instant::now();
    let give_up = wait
        .deadline
        .checked_sub(margin(wait.deadline.saturating_duration_since(started)))
        .unwrap_or(started);
    let many = h.sockets.len() > 1;
    let mut said = String::new();
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        let timeout = left.clamp(Duration::from_millis(100), haproxy::COMMAND_TIMEOUT);
        let now = view::unix_ms();
        let asked = std::time::Instant::now();
        let mut views = Vec::with_capacity(h.sockets.len());
        let mut waiting = Vec::new();
        for addr in &h.sockets {
            let answer = haproxy::read(addr, timeout).await;
            let found = answer
                .as_ref()
                .ok()
                .and_then(|snap| snap.server(&h.backend, &h.server));
            let seen = match found {
                Some(s) if s.is_up() => None,
                Some(s) => Some(s.describe()),
                None => Some(match &answer {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("HAProxy lists no server {}/{}", h.backend, h.server),
                }),
            };
            if let Some(seen) = seen {
                waiting.push(if many {
                    format!("{seen} on {addr}")
                } else {
                    seen
                });
            }
            views.push(view::from_answer(addr, &h.backend, &h.server, &answer, now));
        }
        if waiting.is_empty() {
            return Ok(Undrained {
                message: format!(
                    "{}/{} ready and UP on {} HAProxy after {}",
                    h.backend,
                    h.server,
                    h.sockets.len(),
                    humantime::format_duration(round_ms(started.elapsed()))
                ),
                views,
                asked,
            });
        }
        let last = waiting.join("; ");
        if Instant::now() >= give_up {
            return Err(DrainError::NotUp {
                instance: wait.instance.to_string(),
                backend: h.backend.clone(),
                server: h.server.clone(),
                waited: humantime::format_duration(round_ms(started.elapsed())).to_string(),
                last,
            });
        }
        let msg = format!("waiting for haproxy to see {} UP: {last}", wait.instance);
        if msg != said {
            (wait.progress)(msg.clone());
            said = msg;
        }
        tokio::time::sleep(POLL_INTERVAL.min(give_up.saturating_duration_since(Instant::now())))
            .await;
    }
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
