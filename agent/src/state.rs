//! What commands decided about an instance that must survive an agent
//! restart: whether it should run (a stopped instance stays stopped until
//! a start command), whether it is drained from the load balancer, and
//! the weight it is to have there.
//! One small JSON file per instance, `<data_dir>/instances/<name>/state.json`,
//! replaced atomically. Writes are fsynced, so they run on tokio's
//! blocking pool, never on the agent's (single) runtime thread.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, FsError};
use crate::runtime::Desired;

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceState {
    pub desired: Desired,
    pub drained: bool,
    /// The weight a SetWeight command asked for, kept in force in every
    /// load balancer; None: the configured weight. Absent in files
    /// written before weights existed.
    #[serde(default)]
    pub weight: Option<u32>,
}

impl Default for InstanceState {
    fn default() -> Self {
        InstanceState {
            desired: Desired::Running,
            drained: false,
            weight: None,
        }
    }
}

/// The state file of one instance.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `dir` is the instance's directory, `<data_dir>/instances/<name>`.
    pub fn new(dir: &Path) -> StateFile {
        StateFile {
            path: dir.join(STATE_FILE),
        }
    }

    /// The saved state; the default (running, not drained) when there is
    /// none or it cannot be read, which is what an instance without any
    /// command history is.
    pub fn load(&self) -> InstanceState {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), "ignoring unreadable instance state: {e}");
                InstanceState::default()
            }),
            Err(_) => InstanceState::default(),
        }
    }

    fn save_blocking(&self, state: InstanceState) -> Result<(), FsError> {
        if let Some(dir) = self.path.parent() {
            fsutil::create_dir(dir, 0o755)?;
        }
        let bytes = serde_json::to_vec(&state).unwrap_or_default();
        fsutil::write_atomic(&self.path, &bytes, fsutil::PUBLIC)
    }

    /// Loads, applies `f`, saves (durably, on the blocking pool).
    pub async fn update(
        &self,
        f: impl FnOnce(&mut InstanceState) + Send + 'static,
    ) -> Result<InstanceState, FsError> {
        let file = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = file.load();
            f(&mut s);
            file.save_blocking(s)?;
            Ok(s)
        })
        .await
        .map_err(|e| FsError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(format!("state writer task failed: {e}")),
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = StateFile::new(&dir.path().join("web"));
        assert_eq!(f.load(), InstanceState::default());
        f.update(|s| {
            s.drained = true;
            s.desired = Desired::Stopped;
        })
        .await
        .expect("save");
        assert_eq!(
            f.load(),
            InstanceState {
                desired: Desired::Stopped,
                drained: true,
                weight: None,
            }
        );
        f.update(|s| s.weight = Some(25)).await.expect("save");
        assert_eq!(f.load().weight, Some(25));
        // A file from before weights existed still loads: no weight held.
        std::fs::write(
            dir.path().join("web").join(STATE_FILE),
            br#"{"desired":"running","drained":true}"#,
        )
        .expect("write");
        assert_eq!(
            f.load(),
            InstanceState {
                desired: Desired::Running,
                drained: true,
                weight: None,
            }
        );
        std::fs::write(dir.path().join("web").join(STATE_FILE), b"{oops").expect("write");
        assert_eq!(f.load(), InstanceState::default());
    }
}
