//! The default [`Store`]: one redb file in the coordinator's data dir.
//!
//! redb is synchronous and fsyncs on every commit (`Durability::Immediate`, its default), so
//! each call runs on tokio's blocking pool. redb locks the file, which is what stops a second
//! coordinator from sharing a data dir.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Store, StoreError};

/// The single table: key -> opaque value bytes.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database file at `path`, creating it (but not its directory) if absent.
    ///
    /// Blocks: opening recovers the file after an unclean shutdown, which can take a while on
    /// a large file. Call it at start-up, or from a blocking task.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(|e| match e {
            ::redb::DatabaseError::DatabaseAlreadyOpen
            | ::redb::DatabaseError::LockProtocolMismatch => StoreError::InUse {
                path: path.to_path_buf(),
            },
            other => with_context(map_err(other), &format!("open store {}", path.display())),
        })?;
        // Create the table up front so that readers never see "table does not exist".
        let txn = db.begin_write().map_err(map_err)?;
        txn.open_table(KV).map_err(map_err)?;
        txn.commit().map_err(map_err)?;
        Ok(RedbStore {
            db: Arc::new(db),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes and closes the file, releasing its lock, and reports any error doing so
    /// (dropping the store closes it too, but silently).
    ///
    /// If an operation whose future was dropped is still running on the blocking pool, the
    /// file closes when it finishes instead.
    pub async fn close(self) -> Result<(), StoreError> {
        match Arc::try_unwrap(self.db) {
            Ok(db) => tokio::task::spawn_blocking(move || db.close().map_err(map_err))
                .await
                .map_err(join_err)?,
            Err(_still_in_use) => Ok(()),
        }
    }

    /// Runs `f` against the database on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(join_err)?
    }
}

#[async_trait::async_trait]
impl Store for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(map_err)?;
            let table = txn.open_table(KV).map_err(map_err)?;
            let value = table.get(key.as_str()).map_err(map_err)?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(map_err)?;
            {
                let mut table = txn.open_table(KV).map_err(map_err)?;
                table
                    .insert(key.as_str(), value.as_slice())
                    .map_err(map_err)?;
            }
            txn.commit().map_err(map_err)
        })
        .await
    }

    async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        self.blocking(move |db| {
            // An error before commit drops the transaction, which aborts it: all or nothing.
            let txn = db.begin_write().map_err(map_err)?;
            {
                let mut table = txn.open_table(KV).map_err(map_err)?;
                for (key, value) in &items {
                    table
                        .insert(key.as_str(), value.as_slice())
                        .map_err(map_err)?;
                }
            }
            txn.commit().map_err(map_err)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(map_err)?;
            let existed = {
                let mut table = txn.open_table(KV).map_err(map_err)?;
                table.remove(key.as_str()).map_err(map_err)?.is_some()
            };
            if existed {
                txn.commit().map_err(map_err)?;
            } else {
                txn.abort().map_err(map_err)?;
            }
            Ok(existed)
        })
        .await
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(map_err)?;
            let table = txn.open_table(KV).map_err(map_err)?;
            let mut out = Vec::new();
            for entry in table.range::<&str>(prefix.as_str()..).map_err(map_err)? {
                let (key, value) = entry.map_err(map_err)?;
                let key = key.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                out.push((key.to_owned(), value.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let expected = expected.map(<[u8]>::to_vec);
        self.blocking(move |db| {
            // redb allows one write transaction at a time, so the read and the write below
            // cannot interleave with another writer.
            let txn = db.begin_write().map_err(map_err)?;
            let swapped = {
                let mut table = txn.open_table(KV).map_err(map_err)?;
                let current = table
                    .get(key.as_str())
                    .map_err(map_err)?
                    .map(|v| v.value().to_vec());
                if current != expected {
                    false
                } else {
                    match &new {
                        Some(value) => {
                            table
                                .insert(key.as_str(), value.as_slice())
                                .map_err(map_err)?;
                        }
                        None => {
                            table.remove(key.as_str()).map_err(map_err)?;
                        }
                    }
                    true
                }
            };
            if swapped {
                txn.commit().map_err(map_err)?;
            } else {
                txn.abort().map_err(map_err)?;
            }
            Ok(swapped)
        })
        .await
    }
}

/// Sorts redb's errors into retryable and terminal ones.
fn map_err(e: impl Into<::redb::Error>) -> StoreError {
    use ::redb::Error;
    let e: Error = e.into();
    match e {
        Error::DatabaseAlreadyOpen | Error::LockProtocolMismatch => {
            StoreError::Backend(e.to_string())
        }
        Error::Io(io) => StoreError::Io(io.to_string()),
        Error::PreviousIo => StoreError::Io(
            "an earlier I/O error left the database unusable until it is reopened".into(),
        ),
        Error::Corrupted(msg) => StoreError::Corrupted(msg),
        Error::UpgradeRequired(_) => StoreError::Corrupted(e.to_string()),
        // Another write transaction is in progress: try again shortly.
        Error::WouldBlock => StoreError::Unavailable(e.to_string()),
        other => StoreError::Backend(other.to_string()),
    }
}

fn with_context(e: StoreError, context: &str) -> StoreError {
    match e {
        StoreError::Io(msg) => StoreError::Io(format!("{context}: {msg}")),
        StoreError::Corrupted(msg) => StoreError::Corrupted(format!("{context}: {msg}")),
        StoreError::Unavailable(msg) => StoreError::Unavailable(format!("{context}: {msg}")),
        StoreError::Backend(msg) => StoreError::Backend(format!("{context}: {msg}")),
        kept @ (StoreError::InUse { .. } | StoreError::Fenced { .. }) => kept,
    }
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    if e.is_panic() {
        // A panic inside redb is a bug, not a store condition: let it reach the caller's task.
        std::panic::resume_unwind(e.into_panic());
    }
    StoreError::Unavailable(format!("store task cancelled: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("drover.redb");
        (dir, path)
    }

    #[tokio::test]
    async fn conformance_suite() {
        let (_dir, path) = temp();
        let store = RedbStore::open(&path).expect("open");
        conformance::run(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cas() {
        let (_dir, path) = temp();
        let store = RedbStore::open(&path).expect("open");
        conformance::concurrent_cas(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn survives_close_and_reopen() {
        let (_dir, path) = temp();
        let store = RedbStore::open(&path).expect("open");
        store.put("hosts/h1", b"one".to_vec()).await.expect("put");
        store
            .put_many(vec![
                ("hosts/h2".into(), b"two".to_vec()),
                ("rollouts/r1".into(), b"r".to_vec()),
            ])
            .await
            .expect("put_many");
        assert!(
            store
                .compare_and_swap("leader", None, Some(b"c1".to_vec()))
                .await
                .expect("cas")
        );
        assert!(store.delete("rollouts/r1").await.expect("delete"));
        store.close().await.expect("close");

        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store.scan_prefix("hosts/").await.expect("scan"),
            vec![
                ("hosts/h1".to_string(), b"one".to_vec()),
                ("hosts/h2".to_string(), b"two".to_vec()),
            ]
        );
        assert_eq!(
            store.get("leader").await.expect("get"),
            Some(b"c1".to_vec())
        );
        assert_eq!(store.get("rollouts/r1").await.expect("get"), None);
        drop(store);

        // Dropping without close() also persists and unlocks.
        let store = RedbStore::open(&path).expect("reopen after drop");
        assert_eq!(
            store.get("hosts/h1").await.expect("get"),
            Some(b"one".to_vec())
        );
    }

    #[tokio::test]
    async fn second_open_is_refused_while_in_use() {
        let (_dir, path) = temp();
        let first = RedbStore::open(&path).expect("open");
        let err = RedbStore::open(&path).expect_err("second open must fail");
        assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
        assert!(!err.is_retryable());
        let msg = err.to_string();
        assert!(msg.contains("data dir in use"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        first.close().await.expect("close");
        RedbStore::open(&path).expect("open after the first closed");
    }

    #[tokio::test]
    async fn missing_directory_names_the_path() {
        let (dir, _) = temp();
        let path = dir.path().join("no/such/dir/drover.redb");
        let err = RedbStore::open(&path).expect_err("must fail");
        assert!(matches!(err, StoreError::Io(_)), "{err:?}");
        assert!(err.to_string().contains("no/such/dir"), "{err}");
    }

    #[tokio::test]
    async fn garbage_file_is_reported_not_panicked() {
        let (_dir, path) = temp();
        std::fs::write(&path, vec![0x5a; 8192]).expect("write");
        let err = RedbStore::open(&path).expect_err("must fail");
        assert!(!err.is_retryable(), "{err:?}");
    }
}
