//! The `systemd` runtime: systemd runs the unit; the agent asks it to start
//! and stop (`systemctl [--user] start|stop UNIT`) and polls its state
//! (`systemctl show -p ActiveState,MainPID,NRestarts UNIT`). Restart policy
//! is the unit's own business.

use std::process::Stdio;
use std::time::Duration;

use drover_proto::v1::RuntimeState;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Desired, Request, RuntimeError, RuntimeHandle, RuntimeStatus, publish};
use crate::config::SystemdConfig;

/// Poll interval when the instance has no health check to borrow one from.
pub const DEFAULT_POLL: Duration = Duration::from_secs(2);
/// Upper bound for one `systemctl` call; `stop` waits for the unit's own
/// stop timeout, so this is generous.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(120);
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);

pub fn spawn(
    name: &str,
    cfg: SystemdConfig,
    poll: Duration,
    desired: Desired,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> RuntimeHandle {
    let (status_tx, status_rx) = watch::channel(RuntimeStatus::UNKNOWN);
    let (req_tx, req_rx) = mpsc::channel(8);
    let unit = UnitRuntime {
        name: name.to_string(),
        cfg,
        status_tx,
        last_error: None,
    };
    tasks.spawn(unit.run(req_rx, poll, desired, shutdown));
    RuntimeHandle::new(status_rx, req_tx)
}

struct UnitRuntime {
    name: String,
    cfg: SystemdConfig,
    status_tx: watch::Sender<RuntimeStatus>,
    /// Last polling error logged, so a missing systemd is said once.
    last_error: Option<String>,
}

impl UnitRuntime {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        poll: Duration,
        desired: Desired,
        shutdown: CancellationToken,
    ) {
        // Instances are meant to run unless a command stopped them; `start`
        // on an active unit is a no-op.
        if desired == Desired::Running
            && let Err(e) = self.systemctl(&["start"]).await
        {
            tracing::error!(instance = %self.name, "{e}");
        }
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                req = requests.recv() => match req {
                    Some(Request::Start(reply)) => {
                        let r = self.systemctl(&["start"]).await;
                        self.poll().await;
                        let _ = reply.send(r.map(drop));
                    }
                    Some(Request::Stop(reply)) => {
                        publish(&self.status_tx, RuntimeStatus {
                            state: RuntimeState::Stopping,
                            ..*self.status_tx.borrow()
                        });
                        let r = self.systemctl(&["stop"]).await;
                        self.poll().await;
                        let _ = reply.send(r.map(drop));
                    }
                    None => break,
                },
                _ = ticker.tick() => self.poll().await,
            }
        }
    }

    fn base_args(&self) -> Vec<&str> {
        let mut args = Vec::with_capacity(8);
        if self.cfg.user {
            args.push("--user");
        }
        args
    }

    async fn systemctl(&self, verb: &[&str]) -> Result<String, RuntimeError> {
        let mut args = self.base_args();
        args.extend_from_slice(verb);
        args.push("--");
        args.push(&self.cfg.unit);
        let timeout = if verb.first() == Some(&"show") {
            SHOW_TIMEOUT
        } else {
            SYSTEMCTL_TIMEOUT
        };
        run_systemctl(&args, timeout).await
    }

    async fn poll(&mut self) {
        let status = match self
            .systemctl(&["show", "-p", "ActiveState,MainPID,NRestarts"])
            .await
        {
            Ok(out) => {
                self.last_error = None;
                parse_show(&out)
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_error.as_deref() != Some(&text) {
                    tracing::warn!(instance = %self.name, "{text}");
                    self.last_error = Some(text);
                }
                RuntimeStatus::UNKNOWN
            }
        };
        publish(&self.status_tx, status);
    }
}

async fn run_systemctl(args: &[&str], timeout: Duration) -> Result<String, RuntimeError> {
    let err = |reason: String| RuntimeError::Systemctl {
        args: args.join(" "),
        reason,
    };
    let fut = tokio::process::Command::new("systemctl")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| {
            err(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            ))
        })?
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(err(format!("{}: {}", out.status, stderr.trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns `systemctl show -p ActiveState,MainPID,NRestarts` output into a
/// status. Unknown or missing values give an unknown state.
pub fn parse_show(text: &str) -> RuntimeStatus {
    let mut status = RuntimeStatus::UNKNOWN;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "ActiveState" => {
                status.state = match value {
                    "active" | "reloading" | "refreshing" => RuntimeState::Running,
                    "inactive" | "maintenance" => RuntimeState::Stopped,
                    "failed" => RuntimeState::Crashed,
                    "activating" => RuntimeState::Starting,
                    "deactivating" => RuntimeState::Stopping,
                    _ => RuntimeState::Unspecified,
                }
            }
            "MainPID" => status.pid = value.parse().unwrap_or(0),
            "NRestarts" => status.restarts = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_show_output() {
        let s = parse_show("ActiveState=active\nMainPID=4242\nNRestarts=3\n");
        assert_eq!(
            s,
            RuntimeStatus {
                state: RuntimeState::Running,
                pid: 4242,
                restarts: 3
            }
        );
        // Order is systemd's, not ours; values it cannot know are empty.
        let s = parse_show("MainPID=0\nNRestarts=\nActiveState=failed\n");
        assert_eq!((s.state, s.pid, s.restarts), (RuntimeState::Crashed, 0, 0));
        assert_eq!(
            parse_show("ActiveState=inactive\n").state,
            RuntimeState::Stopped
        );
        assert_eq!(
            parse_show("ActiveState=activating\n").state,
            RuntimeState::Starting
        );
        assert_eq!(
            parse_show("ActiveState=deactivating\n").state,
            RuntimeState::Stopping
        );
        assert_eq!(
            parse_show("ActiveState=weird\n").state,
            RuntimeState::Unspecified
        );
        assert_eq!(parse_show(""), RuntimeStatus::UNKNOWN);
    }
}
