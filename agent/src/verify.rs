//! The verify step: is the instance really serving? The instance's own
//! health check must pass continuously for `min_healthy_time`, counted
//! from the first passing check, and that must happen within
//! `healthy_deadline`; a failed check or a restart of the process starts
//! the count again. Without a health check, the instance must stay running
//! (same pid) that long. Then the validate hook, if configured, must pass.
//!
//! The checks run here at the check's configured interval (sooner until
//! the first one passes), apart from the supervisor's rise/fall bookkeeping: verify needs the exact moment of
//! the first pass and of every failure.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::HealthConfig;
use crate::health::HealthCheck;
use crate::runtime::RuntimeHandle;

/// How often the runtime is looked at when there is no health check.
const RUNNING_POLL: Duration = Duration::from_millis(100);
/// Until a check passes, the next one comes this soon, then twice as late
/// each time up to the check's interval. A process that was just started
/// usually serves within milliseconds; waiting a whole interval (2 s by
/// default) after a first check that came too early would hold every
/// batch of a rollout that long. Once checks pass, they run at the
/// interval.
const FIRST_PASS_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifySpec {
    pub min_healthy_time: Duration,
    pub healthy_deadline: Duration,
}

/// Waits until the instance has been healthy for `min_healthy_time`.
/// Ok: a description; Err: what failed.
pub async fn healthy_for(
    health: Option<&HealthConfig>,
    runtime: &RuntimeHandle,
    spec: VerifySpec,
) -> Result<String, String> {
    let started = Instant::now();
    let end = started + spec.healthy_deadline;
    let check = health.map(HealthCheck::new);
    let interval = health.map_or(RUNNING_POLL, |h| h.interval);
    // (when the streak began, the pid it is about)
    let mut streak: Option<(Instant, u32)> = None;
    let mut last_error = String::from("no check has run yet");
    let mut checks = 0u32;
    let mut quick = FIRST_PASS_POLL.min(interval);
    loop {
        let now = Instant::now();
        let rt = runtime.status();
        if !rt.is_running() {
            streak = None;
            last_error = format!(
                "instance is not running (state {})",
                rt.state
                    .as_str_name()
                    .trim_start_matches("RUNTIME_STATE_")
                    .to_lowercase()
            );
        } else {
            let passed = match &check {
                None => Ok(()),
                Some(c) => {
                    checks += 1;
                    c.run().await.0
                }
            };
            let pid_now = runtime.status().pid;
            match passed {
                Ok(()) => match streak {
                    Some((_, pid)) if pid == pid_now => {}
                    Some(_) => {
                        last_error = format!("the instance restarted (pid {pid_now})");
                        streak = Some((now, pid_now));
                    }
                    None => streak = Some((now, pid_now)),
                },
                Err(e) => {
                    streak = None;
                    last_error = e;
                }
            }
        }
        let checked_at = Instant::now();
        if let Some((since, _)) = streak
            && checked_at.duration_since(since) >= spec.min_healthy_time
        {
            let what = if check.is_some() {
                format!(
                    "health check passed continuously for {}",
                    fmt(checked_at.duration_since(since))
                )
            } else {
                format!(
                    "running continuously for {}",
                    fmt(checked_at.duration_since(since))
                )
            };
            return Ok(format!(
                "{what} ({checks} checks, {} after verify began)",
                fmt(checked_at - started)
            ));
        }
        if checked_at >= end {
            let healthy_for = streak.map(|(since, _)| checked_at.duration_since(since));
            let about = if check.is_some() {
                "health check"
            } else {
                "instance"
            };
            return Err(match healthy_for {
                Some(d) => format!(
                    "{about} healthy for only {} of the required {} within the healthy_deadline of {}",
                    fmt(d),
                    fmt(spec.min_healthy_time),
                    fmt(spec.healthy_deadline)
                ),
                None => format!(
                    "{about} not healthy within the healthy_deadline of {}: {last_error}",
                    fmt(spec.healthy_deadline)
                ),
            });
        }
        // Next check: one interval on (sooner while none has passed), but
        // no later than the moment the streak would be long enough, nor
        // past the deadline.
        let mut next = match streak {
            Some((since, _)) => (now + interval).min(since + spec.min_healthy_time),
            None => {
                let wait = quick;
                quick = (quick * 2).min(interval);
                now + wait
            }
        };
        next = next.min(end).max(checked_at);
        tokio::time::sleep_until(next).await;
    }
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
    ))
}
