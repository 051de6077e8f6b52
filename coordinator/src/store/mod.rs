//! The coordinator's persistence: a small key/value interface with prefix scans and
//! compare-and-swap.
//!
//! The interface is deliberately the intersection of what an embedded database (redb, one file
//! in the data dir, the default) and etcd (HA, [`etcd`]) both do well, so the rest of the
//! coordinator never learns which one it runs on. Keys are `/`-separated paths such as
//! `hosts/h1`; values are opaque bytes (the callers choose the encoding).

pub mod etcd;
pub mod memory;
pub mod redb;

use std::path::PathBuf;

pub use self::etcd::Guard;
pub use self::etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;

/// Why a store operation failed.
///
/// Callers decide between retrying and giving up with [`StoreError::is_retryable`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (usually a second coordinator) holds the database's lock.
    #[error(
        "data dir in use: {} is already open in another process (is another drover-coordinator running with the same data_dir?)",
        path.display()
    )]
    InUse { path: PathBuf },
    /// Reading or writing the backing file failed.
    #[error("store I/O error: {0}")]
    Io(String),
    /// The backing data is not a valid database, or failed an integrity check.
    #[error("store data is corrupted: {0}")]
    Corrupted(String),
    /// The backend cannot serve requests right now (a remote store without a leader, a
    /// timeout, a runtime shutting down); the same request may succeed later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A guarded write (etcd) was refused because its guard key no longer has the revision it
    /// was taken at: another coordinator has taken over, and this one must stop acting.
    #[error(
        "write refused: {key} is no longer at revision {revision} (another coordinator has taken over)"
    )]
    Fenced { key: String, revision: i64 },
    /// Any other backend failure.
    #[error("store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether repeating the same operation later may succeed.
    ///
    /// Local I/O errors are terminal on purpose: redb refuses further writes after a failed one
    /// until it is reopened, and a full or broken disk needs an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::InUse { .. }
            | StoreError::Io(_)
            | StoreError::Corrupted(_)
            | StoreError::Fenced { .. }
            | StoreError::Backend(_) => false,
        }
    }
}

/// Key/value persistence shared by the registry, the rollout engine and the audit log.
///
/// Every write is durable when its future resolves: the coordinator persists each rollout
/// transition before it sends the matching command.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError>;

    /// Writes all items in one durable transaction (all or nothing). More than
    /// [`Store::max_put_many`] items are refused, never split.
    async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError>;

    /// The most items one `put_many` may carry (etcd: its `--max-txn-ops`). Callers whose
    /// items need not be written together split larger batches into chunks of this size.
    fn max_put_many(&self) -> usize {
        usize::MAX
    }

    /// Returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// All keys starting with `prefix`, in key order.
    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Sets `key` to `new` (None deletes) only if its current value equals `expected`
    /// (None = must be absent). Returns whether the swap happened. Atomic.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError>;
}

/// One behavioural test suite that every [`Store`] implementation must pass, so the in-memory
/// fake used by unit tests cannot drift from the real backends.
#[cfg(test)]
pub(crate) mod conformance {
    use super::Store;
    use std::sync::Arc;

    fn bytes(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn keys(items: &[(String, Vec<u8>)]) -> Vec<&str> {
        items.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Runs every check against `store`, which must start empty.
    pub(crate) async fn run(store: &dyn Store) {
        put_get_overwrite(store).await;
        delete(store).await;
        scan_prefix(store).await;
        put_many(store).await;
        compare_and_swap(store).await;
        binary_values(store).await;
    }

    async fn put_get_overwrite(store: &dyn Store) {
        assert_eq!(store.get("pg/a").await.expect("get"), None);
        store.put("pg/a", bytes("1")).await.expect("put");
        assert_eq!(store.get("pg/a").await.expect("get"), Some(bytes("1")));
        store.put("pg/a", bytes("2")).await.expect("overwrite");
        assert_eq!(store.get("pg/a").await.expect("get"), Some(bytes("2")));
        store.put("pg/empty", Vec::new()).await.expect("put empty");
        assert_eq!(
            store.get("pg/empty").await.expect("get"),
            Some(Vec::new()),
            "an empty value is present, not absent"
        );
    }

    async fn delete(store: &dyn Store) {
        store.put("del/a", bytes("1")).await.expect("put");
        assert!(store.delete("del/a").await.expect("delete"));
        assert_eq!(store.get("del/a").await.expect("get"), None);
        assert!(
            !store.delete("del/a").await.expect("delete again"),
            "deleting an absent key reports false"
        );
        assert!(!store.delete("del/never").await.expect("delete absent"));
    }

    async fn scan_prefix(store: &dyn Store) {
        // Written out of order on purpose.
        for key in [
            "hosts/b",
            "hostsx",
            "hosts/a",
            "host",
            "hosts/a/inner",
            "hosts/",
            "i",
        ] {
            store.put(key, bytes(key)).await.expect("put");
        }
        let hosts = store.scan_prefix("hosts/").await.expect("scan");
        assert_eq!(
            keys(&hosts),
            ["hosts/", "hosts/a", "hosts/a/inner", "hosts/b"]
        );
        assert!(hosts.iter().all(|(k, v)| v == k.as_bytes()));

        let all_hosts = store.scan_prefix("hosts").await.expect("scan");
        assert_eq!(
            keys(&all_hosts),
            ["hosts/", "hosts/a", "hosts/a/inner", "hosts/b", "hostsx"]
        );
        assert!(
            store
                .scan_prefix("nothing/")
                .await
                .expect("scan")
                .is_empty()
        );
        assert_eq!(
            keys(&store.scan_prefix("hosts/a").await.expect("scan")),
            ["hosts/a", "hosts/a/inner"]
        );

        // The empty prefix is everything, still in order.
        let everything = store.scan_prefix("").await.expect("scan all");
        let mut sorted = keys(&everything);
        sorted.sort_unstable();
        assert_eq!(keys(&everything), sorted);
        assert!(keys(&everything).contains(&"i"));
        assert!(keys(&everything).contains(&"pg/a"));
    }

    async fn put_many(store: &dyn Store) {
        store.put("many/b", bytes("old")).await.expect("put");
        store
            .put_many(vec![
                ("many/a".into(), bytes("1")),
                ("many/b".into(), bytes("2")),
                ("many/c".into(), bytes("3")),
            ])
            .await
            .expect("put_many");
        let got = store.scan_prefix("many/").await.expect("scan");
        assert_eq!(
            got,
            vec![
                ("many/a".to_string(), bytes("1")),
                ("many/b".to_string(), bytes("2")),
                ("many/c".to_string(), bytes("3")),
            ]
        );
        store.put_many(Vec::new()).await.expect("empty put_many");
        // A repeated key: the last write wins, as it would in a sequence of puts.
        store
            .put_many(vec![
                ("many/d".into(), bytes("x")),
                ("many/d".into(), bytes("y")),
            ])
            .await
            .expect("put_many dup");
        assert_eq!(store.get("many/d").await.expect("get"), Some(bytes("y")));
    }

    async fn compare_and_swap(store: &dyn Store) {
        let key = "cas/k";
        // Absent: expecting a value fails, expecting absence succeeds.
        assert!(
            !store
                .compare_and_swap(key, Some(b"1"), Some(bytes("2")))
                .await
                .expect("cas")
        );
        assert_eq!(store.get(key).await.expect("get"), None);
        assert!(
            store
                .compare_and_swap(key, None, Some(bytes("1")))
                .await
                .expect("cas create")
        );
        assert_eq!(store.get(key).await.expect("get"), Some(bytes("1")));
        // Present: expecting absence fails.
        assert!(
            !store
                .compare_and_swap(key, None, Some(bytes("x")))
                .await
                .expect("cas")
        );
        // Mismatch leaves the value alone.
        assert!(
            !store
                .compare_and_swap(key, Some(b"wrong"), Some(bytes("x")))
                .await
                .expect("cas")
        );
        assert_eq!(store.get(key).await.expect("get"), Some(bytes("1")));
        // Match swaps.
        assert!(
            store
                .compare_and_swap(key, Some(b"1"), Some(bytes("2")))
                .await
                .expect("cas")
        );
        assert_eq!(store.get(key).await.expect("get"), Some(bytes("2")));
        // A prefix of the current value is not equal to it.
        assert!(
            !store
                .compare_and_swap(key, Some(b""), Some(bytes("3")))
                .await
                .expect("cas")
        );
        // Delete on match, refuse on mismatch.
        assert!(
            !store
                .compare_and_swap(key, Some(b"1"), None)
                .await
                .expect("cas")
        );
        assert!(
            store
                .compare_and_swap(key, Some(b"2"), None)
                .await
                .expect("cas delete")
        );
        assert_eq!(store.get(key).await.expect("get"), None);
        // Absent -> absent is a successful no-op.
        assert!(store.compare_and_swap(key, None, None).await.expect("cas"));
        assert_eq!(store.get(key).await.expect("get"), None);
        // Empty value is distinct from absent.
        assert!(
            store
                .compare_and_swap(key, None, Some(Vec::new()))
                .await
                .expect("cas")
        );
        assert!(
            !store
                .compare_and_swap(key, None, Some(bytes("x")))
                .await
                .expect("cas")
        );
        assert!(
            store
                .compare_and_swap(key, Some(b""), None)
                .await
                .expect("cas")
        );
    }

    async fn binary_values(store: &dyn Store) {
        let value: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        store.put("bin/v", value.clone()).await.expect("put");
        assert_eq!(store.get("bin/v").await.expect("get"), Some(value));
    }

    /// Many tasks increment one counter through compare-and-swap; none may lose an update.
    pub(crate) async fn concurrent_cas(store: Arc<dyn Store>) {
        const TASKS: u32 = 8;
        const INCREMENTS: u32 = 25;
        let key = "concurrent/counter";
        let mut handles = Vec::new();
        for _ in 0..TASKS {
            let store = Arc::clone(&store);
            handles.push(tokio::spawn(async move {
                for _ in 0..INCREMENTS {
                    loop {
                        let current = store.get(key).await.expect("get");
                        let n: u32 = match &current {
                            Some(v) => std::str::from_utf8(v)
                                .expect("utf8")
                                .parse()
                                .expect("number"),
                            None => 0,
                        };
                        let next = (n + 1).to_string().into_bytes();
                        if store
                            .compare_and_swap(key, current.as_deref(), Some(next))
                            .await
                            .expect("cas")
                        {
                            break;
                        }
                    }
                }
            }));
        }
        for handle in handles {
            handle.await.expect("task");
        }
        assert_eq!(
            store.get(key).await.expect("get"),
            Some((TASKS * INCREMENTS).to_string().into_bytes())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(StoreError::Unavailable("no leader".into()).is_retryable());
        assert!(!StoreError::Io("disk full".into()).is_retryable());
        assert!(!StoreError::Corrupted("bad header".into()).is_retryable());
        assert!(!StoreError::Backend("x".into()).is_retryable());
        let fenced = StoreError::Fenced {
            key: "/drover/leader/1".into(),
            revision: 7,
        };
        assert!(!fenced.is_retryable(), "a fenced coordinator must stop");
        assert!(fenced.to_string().contains("/drover/leader/1"));
        let in_use = StoreError::InUse {
            path: "/var/lib/drover/drover.redb".into(),
        };
        assert!(!in_use.is_retryable());
        assert!(in_use.to_string().contains("data dir in use"));
        assert!(in_use.to_string().contains("/var/lib/drover/drover.redb"));
    }
}
