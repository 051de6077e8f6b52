//! Where the simulated coordinator persists its engine state, with the
//! runtime's crash semantics: a write is durable once it returns, and a
//! crash loses everything after the last completed write.

use std::path::PathBuf;

use crate::rollout::{RolloutState, persist};
use crate::store::{MemoryStore, RedbStore, Store, StoreError};

use super::runtime::ROLLOUT as ID;

/// Which [`Store`] backs the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// [`MemoryStore`]: survives the simulated crash like a disk would.
    Memory,
    /// [`RedbStore`] in the given file: a crash closes and reopens the
    /// database.
    Redb(PathBuf),
}

/// Every write goes through the `Store` trait as the runner writes it (the
/// head and the instances changed since the last write), and a restore
/// reads it back as the runner does, so a change the engine forgot to mark
/// shows up as a state that differs from the one written.
pub struct SimStore {
    kind: StoreKind,
    memory: MemoryStore,
    /// The state of the last completed write, to compare the read-back with.
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

    /// The runtime's write of a pass: what the driver asked to store, and
    /// the engine's state it holds when the pass persisted it.
    pub fn write(
        &mut self,
        writes: Vec<(String, Vec<u8>)>,
        state: Option<RolloutState>,
    ) -> Result<(), StoreError> {
        self.writes += 1;
        if let Some(state) = state {
            self.last = Some(state);
        }
        match &self.redb {
            None => futures::executor::block_on(self.memory.put_many(writes)),
            Some((db, rt)) => rt.block_on(db.put_many(writes)),
        }
    }

    /// After a crash: what the store holds, read back as the runtime does.
    pub fn read_after_crash(&mut self) -> Result<Option<RolloutState>, StoreError> {
        let (head, records) = match (&self.kind, self.redb.take()) {
            (StoreKind::Redb(path), Some((db, rt))) => {
                // The process died: the database is closed and opened again.
                drop(db);
                let db = RedbStore::open(path)?;
                let head = rt.block_on(db.get(&persist::head_key(ID)))?;
                let records = rt.block_on(db.scan_prefix(&persist::instances_prefix(ID)))?;
                self.redb = Some((db, rt));
                (head, records)
            }
            _ => futures::executor::block_on(async {
                let head = self.memory.get(&persist::head_key(ID)).await?;
                let records = (self.memory)
                    .scan_prefix(&persist::instances_prefix(ID))
                    .await?;
                Ok::<_, StoreError>((head, records))
            })?,
        };
        let Some(head) = head else {
            return Ok(None);
        };
        let state = persist::decode(&head, &records).map_err(StoreError::Corrupted)?;
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
