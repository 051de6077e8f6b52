//! Runtimes: what actually runs an instance. Each runtime is a task that
//! owns its instance's process (or unit), publishes a [`RuntimeStatus`] on a
//! watch channel and takes [`Request`]s (start, stop) through a
//! [`RuntimeHandle`]. Requests are handled one at a time, in order, by the
//! task, so later commands (deploy, drain) can be added as further
//! requests without locking.
//!
//! Dropping every handle, or cancelling the shutdown token, ends the task
//! but never the instance: instances outlive the agent.

pub mod process;
pub mod systemd;

use std::path::Path;
use std::time::Duration;

use drover_proto::v1::RuntimeState;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{InstanceConfig, RuntimeConfig};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("start {command}: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("signal process group {pgid}: {source}")]
    Signal { pgid: u32, source: std::io::Error },
    #[error("process {pid} did not exit after SIGKILL")]
    Unkillable { pid: u32 },
    #[error("systemctl {args}: {reason}")]
    Systemctl { args: String, reason: String },
    #[error("the instance's runtime task has ended")]
    Gone,
}

/// What the runtime observes about its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeStatus {
    pub state: RuntimeState,
    /// 0 when not running or unknown.
    pub pid: u32,
    /// Restarts after unexpected exits since the agent started.
    pub restarts: u32,
}

impl RuntimeStatus {
    pub const UNKNOWN: RuntimeStatus = RuntimeStatus {
        state: RuntimeState::Unspecified,
        pid: 0,
        restarts: 0,
    };

    pub fn is_running(&self) -> bool {
        self.state == RuntimeState::Running
    }
}

/// What the agent wants the instance to be; kept apart from what it is.
/// A stop command makes it `Stopped` (persisted, see `crate::state`), so
/// neither the crash-restart logic nor an agent restart brings the
/// instance back before a start command does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Running,
    Stopped,
}

type Reply = oneshot::Sender<Result<(), RuntimeError>>;

/// A request to a runtime task.
#[derive(Debug)]
pub enum Request {
    /// Make the instance run (desired = running) and start it if it is not.
    Start(Reply),
    /// Make the instance stop (desired = stopped) and wait until it has.
    Stop(Reply),
}

/// The way to talk to a runtime task.
#[derive(Debug, Clone)]
pub struct RuntimeHandle {
    status: watch::Receiver<RuntimeStatus>,
    requests: mpsc::Sender<Request>,
}

impl RuntimeHandle {
    pub(crate) fn new(
        status: watch::Receiver<RuntimeStatus>,
        requests: mpsc::Sender<Request>,
    ) -> Self {
        RuntimeHandle { status, requests }
    }

    pub fn status(&self) -> RuntimeStatus {
        *self.status.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<RuntimeStatus> {
        self.status.clone()
    }

    async fn request(&self, make: impl FnOnce(Reply) -> Request) -> Result<(), RuntimeError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| RuntimeError::Gone)?;
        rx.await.map_err(|_| RuntimeError::Gone)?
    }

    pub async fn start(&self) -> Result<(), RuntimeError> {
        self.request(Request::Start).await
    }

    pub async fn stop(&self) -> Result<(), RuntimeError> {
        self.request(Request::Stop).await
    }
}

/// Starts the runtime task for one instance. For the process runtime the
/// instance has been started (when `desired` is running) or adopted when
/// this returns. The task belongs to `tasks` and ends on `shutdown`.
pub async fn spawn(
    instance: &InstanceConfig,
    data_dir: &Path,
    desired: Desired,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Result<RuntimeHandle, RuntimeError> {
    match &instance.runtime {
        RuntimeConfig::Process(cfg) => {
            process::spawn(
                &instance.name,
                cfg.clone(),
                crate::config::instance_dir(data_dir, &instance.name),
                desired,
                shutdown,
                tasks,
            )
            .await
        }
        RuntimeConfig::Systemd(cfg) => {
            let poll = instance
                .health
                .as_ref()
                .map_or(systemd::DEFAULT_POLL, |h| h.interval);
            Ok(systemd::spawn(
                &instance.name,
                cfg.clone(),
                poll,
                desired,
                shutdown,
                tasks,
            ))
        }
    }
}

/// Publishes `new` only if it differs, so watchers wake on real changes.
pub(crate) fn publish(tx: &watch::Sender<RuntimeStatus>, new: RuntimeStatus) {
    tx.send_if_modified(|cur| {
        if *cur == new {
            false
        } else {
            *cur = new;
            true
        }
    });
}

/// Restart delays after crashes: `initial` doubling up to `cap`, back to
/// `initial` once the instance has run for `stable`.
#[derive(Debug, Clone)]
pub struct RestartBackoff {
    initial: Duration,
    cap: Duration,
    stable: Duration,
    next: Duration,
}

impl RestartBackoff {
    pub const fn new(initial: Duration, cap: Duration, stable: Duration) -> Self {
        RestartBackoff {
            initial,
            cap,
            stable,
            next: initial,
        }
    }

    /// The delay before restarting an instance that ran for `ran`.
    pub fn after_exit(&mut self, ran: Duration) -> Duration {
        if ran >= self.stable {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_backoff_doubles_caps_and_resets() {
        let s = Duration::from_secs;
        let mut b = RestartBackoff::new(s(1), s(30), s(60));
        let delays: Vec<u64> = (0..7).map(|_| b.after_exit(s(2)).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.after_exit(s(61)), s(1));
        assert_eq!(b.after_exit(s(1)), s(2));
    }
}
