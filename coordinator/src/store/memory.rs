//! An in-memory [`Store`] for unit tests and simulations: same semantics as the real
//! backends (checked by the shared conformance suite), nothing survives the process.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Store, StoreError};

/// A `BTreeMap` behind a mutex. Clones share the same data, which lets a test "restart" a
/// component on top of the state its predecessor left behind.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    map: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // Every operation below completes its mutation before it can panic, so a poisoned map
        // is still consistent.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.lock().insert(key.to_owned(), value);
        Ok(())
    }

    async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        self.lock().extend(items);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.lock().remove(key).is_some())
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let map = self.lock();
        Ok(map
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let mut map = self.lock();
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        match new {
            Some(value) => {
                map.insert(key.to_owned(), value);
            }
            None => {
                map.remove(key);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    #[tokio::test]
    async fn conformance_suite() {
        conformance::run(&MemoryStore::new()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cas() {
        conformance::concurrent_cas(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test]
    async fn clones_share_data() {
        let a = MemoryStore::new();
        let b = a.clone();
        a.put("k", b"v".to_vec()).await.expect("put");
        assert_eq!(b.get("k").await.expect("get"), Some(b"v".to_vec()));
    }
}
