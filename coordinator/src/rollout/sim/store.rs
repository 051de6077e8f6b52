//! Where the simulated coordinator persists its engine state, with the
//! runtime's crash semantics: a write is durable once it returns, and a
//! crash loses everything after the last completed write.

use std::path::PathBuf;

use crate::rollout::RolloutState;
use crate::store::{MemoryStore, RedbStore, Store, StoreError};

const KEY: &str = "rollout-state/r1";

/// Which [`Store`] backs the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// [`MemoryStore`]. Each write keeps a copy of the state; the copy is
    /// written through the store as JSON (as the runtime writes it) when
    /// the coordinator crashes, and the restore reads it back from there.
    /// Serialising is a pure function of the state, so this is the same as
    /// writing JSON every time, only cheaper, and every crash still
    /// round-trips the state through serde and the `Store` trait.
    Memory,
    /// [`RedbStore`] in the given file: JSON written through redb on every
    /// write, and a crash closes and reopens the database.
    Redb(PathBuf),
}

pub struct SimStore {
    kind: StoreKind,
    memory: MemoryStore,
    /// The state of the last completed write (memory mode).
    last: Option<RolloutState>,
    redb: Option<(RedbStore, tokio::runtime::Runtime)>,
    pub writes: u64,
}

fn runtime() -> Result<tokio::runtime::Runtime, StoreError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| StoreError::Io(e.to_string()))
}

impl SimStore {
    pub fn open(kind: StoreKind) -> Result<SimStore, StoreError> {
        let redb = match &kind {
            StoreKind::Memory => None,
            StoreKind::Redb(path) => Some((RedbStore::open(path)?, runtime()?)),
        };
        Ok(SimStore {
            kind,
            memory: MemoryStore::new(),
            last: None,
            redb,
            writes: 0,
        })
    }

    /// The runtime's write on a `Persist`: the whole state, as JSON.
    pub fn write(&mut self, state: &RolloutState) -> Result<(), StoreError> {
        self.writes += 1;
        match &self.redb {
            None => {
                self.last = Some(state.clone());
                Ok(())
            }
            Some((db, rt)) => {
                let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Io(e.to_string()))?;
                rt.block_on(db.put_many(vec![(KEY.to_string(), bytes)]))
            }
        }
    }

    /// After a crash: what the store holds, read back as the runtime does.
    pub fn read_after_crash(&mut self) -> Result<Option<RolloutState>, StoreError> {
        let bytes = match (&self.kind, self.redb.take()) {
            (StoreKind::Redb(path), Some((db, rt))) => {
                // The process died: the database is closed and opened again.
                drop(db);
                let db = RedbStore::open(path)?;
                let bytes = rt.block_on(db.get(KEY))?;
                self.redb = Some((db, rt));
                bytes
            }
            _ => {
                if let Some(state) = &self.last {
                    let bytes =
                        serde_json::to_vec(state).map_err(|e| StoreError::Io(e.to_string()))?;
                    futures::executor::block_on(self.memory.put(KEY, bytes))?;
                }
                futures::executor::block_on(self.memory.get(KEY))?
            }
        };
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let state: RolloutState = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupted(format!("rollout state: {e}")))?;
        if let Some(last) = &self.last
            && last != &state
        {
            return Err(StoreError::Corrupted(
                "the state read back differs from the state written".to_string(),
            ));
        }
        Ok(Some(state))
    }
}
