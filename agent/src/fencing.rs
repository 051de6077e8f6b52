//! Fencing against deposed coordinators (HA on etcd).
//!
//! The leading coordinator's epoch (the revision of its election key) comes
//! with its Welcome and with every Command. The agent keeps the highest
//! epoch it has seen in `<data_dir>/epoch`, so a restart does not forget
//! it, and refuses a command from a lower epoch: such a command comes from
//! a coordinator that lost the leadership but does not know it yet (cut
//! off from etcd, paused), and acting on it could undo the new leader's
//! work. Epoch 0 means no election (one coordinator on redb): always
//! accepted, never raises anything.
//!
//! The in-memory value rises at once (so the next command compares
//! against it); the file is written on the blocking pool, before the
//! command that raised it runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::fsutil::{self, FsError};

/// The file under the data dir that holds the highest epoch seen.
pub const EPOCH_FILE: &str = "epoch";

#[derive(Debug, thiserror::Error)]
pub enum FencingError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(
        "{}: expected the highest coordinator epoch seen (a whole number), found {found:?}; \
         the file is written atomically, so something else wrote it: delete it to start from \
         epoch 0 (the next Welcome from the leader restores it)",
        path.display()
    )]
    Corrupt { path: PathBuf, found: String },
}

/// Whether a command may run, by its epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// From a coordinator that no longer leads.
    Fenced {
        command: u64,
        current: u64,
    },
}

impl Verdict {
    /// The refusal sent back to the coordinator (and logged).
    pub fn refusal(&self) -> Option<String> {
        match self {
            Verdict::Accept => None,
            Verdict::Fenced { command, current } => Some(format!(
                "fenced: command from epoch {command}, this agent follows epoch {current} \
                 (a deposed coordinator)"
            )),
        }
    }
}

/// The highest epoch seen, on disk and in memory; cheap to clone.
#[derive(Debug, Clone)]
pub struct Fencing {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    highest: AtomicU64,
    fenced: AtomicU64,
    /// The epoch last written to disk; held while writing, so writes are
    /// serialised and the file never goes down.
    saved: Mutex<u64>,
}

impl Fencing {
    /// Loads `<data_dir>/epoch` (0 when there is none). Blocking: reads a
    /// small file.
    pub fn open(data_dir: &Path) -> Result<Fencing, FencingError> {
        let path = data_dir.join(EPOCH_FILE);
        let saved = match std::fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| FencingError::Corrupt {
                    path: path.clone(),
                    found: text.chars().take(40).collect(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(fsutil::io_err(&path)(e).into()),
        };
        Ok(Fencing {
            inner: Arc::new(Inner {
                path,
                highest: AtomicU64::new(saved),
                fenced: AtomicU64::new(0),
                saved: Mutex::new(saved),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The highest epoch seen (0: none).
    pub fn highest(&self) -> u64 {
        self.inner.highest.load(Ordering::SeqCst)
    }

    /// Commands refused since the agent started, and sessions: a deposed
    /// coordinator's Welcome is refused before it can send any command.
    pub fn commands_fenced(&self) -> u64 {
        self.inner.fenced.load(Ordering::SeqCst)
    }

    /// Counts a session refused at its Welcome (a deposed coordinator).
    pub fn refuse_session(&self) {
        self.inner.fenced.fetch_add(1, Ordering::SeqCst);
    }

    /// Notes `epoch` (from a Welcome or a command about to be accepted);
    /// true if it is a new highest, which then has to be [`Fencing::save`]d.
    pub fn observe(&self, epoch: u64) -> bool {
        epoch > self.inner.highest.fetch_max(epoch, Ordering::SeqCst)
    }

    /// Judges a command's epoch, raising the highest when it is above it
    /// and counting a refusal when it is below.
    pub fn admit(&self, epoch: u64) -> Verdict {
        if epoch == 0 {
            return Verdict::Accept;
        }
        let before = self.inner.highest.fetch_max(epoch, Ordering::SeqCst);
        if epoch < before {
            self.inner.fenced.fetch_add(1, Ordering::SeqCst);
            return Verdict::Fenced {
                command: epoch,
                current: before,
            };
        }
        Verdict::Accept
    }

    /// Writes the highest epoch to disk if it is above what is there
    /// (temp file, fsync, rename, directory fsync). Blocking: call it on
    /// the blocking pool.
    pub fn save(&self) -> Result<(), FsError> {
        let mut saved = self.inner.saved.lock().unwrap_or_else(|e| e.into_inner());
        let highest = self.highest();
        if highest <= *saved {
            return Ok(());
        }
        fsutil::write_atomic(
            &self.inner.path,
            format!("{highest}\n").as_bytes(),
            fsutil::PUBLIC,
        )?;
        *saved = highest;
        Ok(())
    }

    /// [`Fencing::save`] on the blocking pool.
    pub async fn save_async(&self) -> Result<(), FsError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.save())
            .await
            .map_err(|e| FsError::Io {
                path: self.inner.path.clone(),
                source: std::io::Error::other(format!("epoch writer task failed: {e}")),
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_highest_epoch_and_refuses_lower_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Fencing::open(dir.path()).expect("open");
        assert_eq!(f.highest(), 0);
        // Epoch 0: no election; accepted and changes nothing.
        assert_eq!(f.admit(0), Verdict::Accept);
        assert!(f.observe(57));
        assert!(!f.observe(57));
        assert!(!f.observe(41));
        assert_eq!(f.admit(57), Verdict::Accept);
        assert_eq!(f.admit(0), Verdict::Accept);
        let v = f.admit(41);
        assert_eq!(
            v,
            Verdict::Fenced {
                command: 41,
                current: 57
            }
        );
        assert_eq!(
            v.refusal().as_deref(),
            Some(
                "fenced: command from epoch 41, this agent follows epoch 57 (a deposed coordinator)"
            )
        );
        assert_eq!(f.commands_fenced(), 1);
        // A higher command epoch is accepted and raises it.
        assert_eq!(f.admit(60), Verdict::Accept);
        assert_eq!(f.highest(), 60);
        assert_eq!(f.commands_fenced(), 1);
    }

    #[test]
    fn survives_a_restart_and_refuses_a_corrupt_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Fencing::open(dir.path()).expect("open");
        f.observe(12);
        // Not saved yet: a restart would not know it.
        assert_eq!(Fencing::open(dir.path()).expect("open").highest(), 0);
        f.save().expect("save");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(EPOCH_FILE)).expect("read"),
            "12\n"
        );
        let again = Fencing::open(dir.path()).expect("reopen");
        assert_eq!(again.highest(), 12);
        assert_eq!(again.commands_fenced(), 0);

        std::fs::write(dir.path().join(EPOCH_FILE), "twelve").expect("write");
        let err = Fencing::open(dir.path()).expect_err("corrupt");
        let text = err.to_string();
        assert!(text.contains("\"twelve\""), "{text}");
        assert!(text.contains("delete it"), "{text}");
    }
}
