//! The highly available [`Store`]: etcd v3, through `etcd-client`.
//!
//! Meant to be shared by several coordinators (leader election comes on top of it); every key
//! lives under a configurable prefix (`/drover/` by default) so that two drover installations
//! can share an etcd too. Reads are linearizable (etcd's default), writes are durable on a
//! quorum when they return.
//!
//! Every operation has a deadline ([`EtcdOptions::timeout`]): a cluster that lost its quorum
//! answers nothing (or "no leader"), and the coordinator must see [`StoreError::Unavailable`]
//! rather than hang. Within the deadline a request that never reached etcd (a dead member's
//! address, "no leader" during an election) is sent again, so losing one member of three is
//! not seen by callers. Connection failures, timeouts and leader trouble are `Unavailable`
//! (retryable); a refused request (too many operations, too large, no space, permission) is
//! terminal and says which etcd limit or setting to look at.
//!
//! `put_many` is one etcd transaction. etcd caps a transaction at `--max-txn-ops` operations
//! in all (128 by default, nested transactions included), so a `put_many` with more items is
//! refused with a clear error instead of being split: the trait promises all or nothing.
//! [`Store::max_put_many`] tells callers whose items need not be atomic together (the
//! registry's flush) how to split them.
//!
//! The fencing the leader needs is here as inherent methods taking a [`Guard`]: a write that
//! goes through only while a given key still has a given mod revision.

use std::collections::HashSet;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{Store, StoreError};

/// Keys fetched per range request of a scan, at first. A page whose response would exceed
/// [`DECODE_LIMIT`] is asked again with half as many keys.
const SCAN_PAGE: i64 = 256;
/// Largest response accepted from etcd. One value is at most etcd's request limit (1.5 MiB by
/// default), so a page of one key always fits.
const DECODE_LIMIT: usize = 64 * 1024 * 1024;
/// The smallest scan page: a single key whose response is still too large is an error.
const MIN_SCAN_PAGE: i64 = 1;

/// Client TLS towards etcd, as PEM.
#[derive(Clone)]
pub struct EtcdTls {
    /// The CA that signed the etcd members' server certificates.
    pub ca_cert_pem: Vec<u8>,
    /// Client certificate and key, for etcd with `--client-cert-auth`.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("EtcdTls")
            .field("client_identity", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

/// How to reach etcd; built from `[store] type = "etcd"` in coordinator.toml.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port` (https needs [`EtcdOptions::tls`]).
    pub endpoints: Vec<String>,
    /// Every drover key is stored under this prefix; it should end with `/`.
    pub prefix: String,
    /// Deadline of each request to etcd.
    pub timeout: Duration,
    /// etcd's `--max-txn-ops` (128 unless the operator raised it on every member).
    pub max_txn_ops: usize,
    pub tls: Option<EtcdTls>,
}

impl EtcdOptions {
    /// Plain-text etcd at `endpoints` with the defaults of coordinator.toml.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            prefix: prefix.into(),
            timeout: DEFAULT_TIMEOUT,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            tls: None,
        }
    }
}

/// Deadline of each request to etcd unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's own default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// A condition a guarded write must meet: `key` (a raw etcd key, as etcd's election API returns
/// it; use [`EtcdStore::raw_key`] for a store key) still has mod revision `revision`.
///
/// A coordinator that was leader at revision R writes under `Guard { leader key, R }`; once
/// another coordinator has taken the leader key over (or it was deleted or rewritten), the
/// write is refused with [`StoreError::Fenced`] and changes nothing. etcd's own election
/// compares the key's create revision; for a leader key that is never proclaimed again the
/// two are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: Vec<u8>,
    pub revision: i64,
}

impl Guard {
    fn compare(&self) -> Compare {
        Compare::mod_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    fn fenced(&self) -> StoreError {
        StoreError::Fenced {
            key: String::from_utf8_lossy(&self.key).into_owned(),
            revision: self.revision,
        }
    }
}

/// Whether a request may be sent again when its fate is unknown.
#[derive(Debug, Clone, Copy)]
enum Replay {
    /// Applying it twice leaves the same state and answer (reads, puts).
    Idempotent,
    /// Only when it certainly never reached etcd (compare-and-swap, delete).
    OnlyUnsent,
}

pub struct EtcdStore {
    /// The connection, for the election and leases (HA).
    client: Client,
    kv: KvClient,
    prefix: String,
    timeout: Duration,
    max_txn_ops: usize,
    /// For error messages: where we were trying to go.
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects and makes one read under the prefix, so that an unreachable etcd, a bad
    /// certificate or a cluster without quorum shows at start-up, within the timeout.
    pub async fn connect(options: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Backend(
                "no etcd endpoints given; list at least one in [store] endpoints".into(),
            ));
        }
        if options.prefix.is_empty() {
            return Err(StoreError::Backend(
                "the etcd key prefix is empty; set [store] prefix, e.g. \"/drover/\"".into(),
            ));
        }
        let endpoints = options.endpoints.join(",");
        let mut connect = ConnectOptions::new()
            .with_timeout(options.timeout)
            .with_connect_timeout(options.timeout)
            // A dead connection (member gone without a FIN) is noticed by pings, not by the
            // next request timing out.
            .with_keep_alive(Duration::from_secs(10), options.timeout)
            .with_keep_alive_while_idle(true)
            // A member without a leader refuses at once instead of holding the request.
            .with_require_leader(true);
        if let Some(tls) = &options.tls {
            let mut config =
                TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_cert_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        let client = match tokio::time::timeout(
            options.timeout,
            Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(map_err(e, &format!("connect to etcd at {endpoints}"))),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "connect to etcd at {endpoints}: no answer within {}",
                    humantime::format_duration(options.timeout)
                )));
            }
        };
        let store = EtcdStore {
            kv: client.kv_client().max_decoding_message_size(DECODE_LIMIT),
            client,
            prefix: options.prefix,
            timeout: options.timeout,
            max_txn_ops: options.max_txn_ops.max(1),
            endpoints,
        };
        let probe = store.raw_key("");
        store
            .call(
                "reach etcd",
                Replay::Idempotent,
                probe,
                |mut kv, probe| async move {
                    kv.get(probe, Some(GetOptions::new().with_count_only()))
                        .await
                },
            )
            .await?;
        Ok(store)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The etcd key that holds store key `key`.
    pub fn raw_key(&self, key: &str) -> Vec<u8> {
        let mut raw = Vec::with_capacity(self.prefix.len() + key.len());
        raw.extend_from_slice(self.prefix.as_bytes());
        raw.extend_from_slice(key.as_bytes());
        raw
    }

    /// The mod revision of a raw etcd key, or None when it is absent: what a [`Guard`] compares.
    pub async fn mod_revision(&self, raw_key: &[u8]) -> Result<Option<i64>, StoreError> {
        let key = raw_key.to_vec();
        let resp = self
            .call("read a key's revision", Replay::Idempotent, key, |mut kv, key| async move {
                kv.get(key, Some(GetOptions::new().with_keys_only())).await
            })
            .await?;
        Ok(resp.kvs().first().map(|kv| kv.mod_revision()))
    }

    /// Runs one request to etcd within [`EtcdOptions::timeout`], mapping failures to
    /// [`StoreError`]s that say what was being done.
    ///
    /// With one member of three gone, etcd-client still sends some requests to the dead
    /// member's address; such a request (and one refused for "no leader") never reached etcd,
    /// so it is sent again, to whichever member answers, until the deadline. Requests whose
    /// fate is unknown (a timeout, a dropped connection) are sent again only when `replay` is
    /// [`Replay::Idempotent`].
    async fn call<R, T, F, Fut>(
        &self,
        what: &str,
        replay: Replay,
        req: R,
        f: F,
    ) -> Result<T, StoreError>
    where
        R: Clone,
        F: Fn(KvClient, R) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = tokio::time::Instant::now();
        let deadline = started + self.timeout;
        // An idempotent request stuck on a member that lost its leader gets more than one
        // chance within the deadline.
        let attempt_for = match replay {
            Replay::Idempotent => (self.timeout / 3).max(Duration::from_millis(300)),
            Replay::OnlyUnsent => self.timeout,
        };
        let mut backoff = Duration::from_millis(20);
        let context = format!("{what} (etcd at {})", self.endpoints);
        let mut first: Option<String> = None;
        loop {
            let attempt_deadline = (tokio::time::Instant::now() + attempt_for).min(deadline);
            let (err, again) =
                match tokio::time::timeout_at(attempt_deadline, f(self.kv.clone(), req.clone()))
                    .await
                {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) => {
                        let unsent = never_sent(&e);
                        let err = map_err(e, &context);
                        let again =
                            err.is_retryable() && (unsent || matches!(replay, Replay::Idempotent));
                        (err, again)
                    }
                    Err(_) => (
                        StoreError::Unavailable(format!(
                            "{what}: etcd at {} did not answer",
                            self.endpoints
                        )),
                        matches!(replay, Replay::Idempotent),
                    ),
                };
            if !again {
                return Err(err);
            }
            if tokio::time::Instant::now() + backoff >= deadline {
                // The first and the last failure: e.g. "no leader" from a live member, then
                // a refused connection from a dead one.
                let last = cause(&err, &context);
                let earlier = match first {
                    Some(f) if f != last => format!("; first error: {f}"),
                    _ => String::new(),
                };
                return Err(StoreError::Unavailable(format!(
                    "{what}: etcd at {} did not answer within {} (is a quorum of its members up?); last error: {last}{earlier}",
                    self.endpoints,
                    humantime::format_duration(self.timeout)
                )));
            }
            first.get_or_insert_with(|| cause(&err, &context));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn check_txn_size(&self, ops: usize) -> Result<(), StoreError> {
        if ops > self.max_txn_ops {
            return Err(StoreError::Backend(format!(
                "one atomic write of {ops} keys exceeds etcd's limit of {} operations per \
                 transaction; raise --max-txn-ops on every etcd member and [store] max_txn_ops \
                 to match",
                self.max_txn_ops
            )));
        }
        Ok(())
    }

    /// [`Store::put_many`], refused with [`StoreError::Fenced`] (writing nothing) unless `guard`
    /// holds.
    pub(crate) async fn put_many_guarded(
        &self,
        items: Vec<(String, Vec<u8>)>,
        guard: Option<&Guard>,
    ) -> Result<(), StoreError> {
        // etcd refuses a transaction that writes one key twice; the last write wins, as it
        // would in a sequence of puts.
        let mut seen = HashSet::new();
        let mut ops: Vec<TxnOp> = items
            .into_iter()
            .rev()
            .filter(|(k, _)| seen.insert(k.clone()))
            .map(|(k, v)| TxnOp::put(self.raw_key(&k), v, None))
            .collect();
        ops.reverse();
        if ops.is_empty() && guard.is_none() {
            return Ok(());
        }
        self.check_txn_size(ops.len())?;
        let txn = match guard {
            Some(g) => Txn::new().when([g.compare()]).and_then(ops),
            None => Txn::new().and_then(ops),
        };
        let resp = self
            // Writing the same values again is harmless, and the guard compares a key this
            // write does not touch.
            .call(
                "write keys",
                Replay::Idempotent,
                txn,
                |mut kv, txn| async move { kv.txn(txn).await },
            )
            .await?;
        match guard {
            Some(g) if !resp.succeeded() => Err(g.fenced()),
            _ => Ok(()),
        }
    }

    /// The etcd connection, for the election and its lease.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// [`Store::delete`], refused with [`StoreError::Fenced`] (deleting nothing) unless
    /// `guard` holds.
    pub(crate) async fn delete_guarded(
        &self,
        key: &str,
        guard: &Guard,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([guard.compare()])
            .and_then([TxnOp::delete(self.raw_key(key), None)]);
        let resp = self
            // Deleting again would report "was absent" for a key this call deleted.
            .call(
                "delete a key",
                Replay::OnlyUnsent,
                txn,
                |mut kv, txn| async move { kv.txn(txn).await },
            )
            .await?;
        if !resp.succeeded() {
            return Err(guard.fenced());
        }
        Ok(match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Delete(d)) => d.deleted() > 0,
            _ => false,
        })
    }

    /// [`Store::compare_and_swap`], refused with [`StoreError::Fenced`] (changing nothing)
    /// unless `guard` holds. `Ok(false)` still means the value did not match.
    pub(crate) async fn compare_and_swap_guarded(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        guard: Option<&Guard>,
    ) -> Result<bool, StoreError> {
        let raw = self.raw_key(key);
        let compare = match expected {
            // Absent: never created (or deleted since).
            None => Compare::create_revision(raw.clone(), CompareOp::Equal, 0),
            // etcd fails a value comparison on a missing key, so `Some(b"")` does not match an
            // absent key.
            Some(v) => Compare::value(raw.clone(), CompareOp::Equal, v.to_vec()),
        };
        let ops: Vec<TxnOp> = match new {
            Some(v) => vec![TxnOp::put(raw, v, None)],
            None if expected.is_some() => vec![TxnOp::delete(raw, None)],
            // Absent -> absent: nothing to do once the comparison holds.
            None => Vec::new(),
        };
        let swap = Txn::new().when([compare]).and_then(ops);
        let Some(g) = guard else {
            // A swap that may have happened must not be tried again: it would report a
            // mismatch against its own write.
            let resp = self
                .call(
                    "compare and swap",
                    Replay::OnlyUnsent,
                    swap,
                    |mut kv, txn| async move { kv.txn(txn).await },
                )
                .await?;
            return Ok(resp.succeeded());
        };
        // The guard outside, the value comparison inside: the answer tells which one failed.
        let txn = Txn::new().when([g.compare()]).and_then([TxnOp::txn(swap)]);
        let resp = self
            .call(
                "compare and swap",
                Replay::OnlyUnsent,
                txn,
                |mut kv, txn| async move { kv.txn(txn).await },
            )
            .await?;
        if !resp.succeeded() {
            return Err(g.fenced());
        }
        match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Txn(inner)) => Ok(inner.succeeded()),
            other => Err(StoreError::Backend(format!(
                "compare and swap: etcd answered a nested transaction with {other:?}"
            ))),
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let raw = self.raw_key(key);
        let mut resp = self
            .call(
                "read a key",
                Replay::Idempotent,
                raw,
                |mut kv, raw| async move { kv.get(raw, None).await },
            )
            .await?;
        Ok(resp.take_kvs().into_iter().next().map(|kv| {
            let (_, value) = kv.into_key_value();
            value
        }))
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let raw = self.raw_key(key);
        self.call(
            "write a key",
            Replay::Idempotent,
            (raw, value),
            |mut kv, (raw, value)| async move { kv.put(raw, value, None).await },
        )
        .await?;
        Ok(())
    }

    async fn put_many(&self, items: Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
        self.put_many_guarded(items, None).await
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let raw = self.raw_key(key);
        let resp = self
            // Deleting again would report "was absent" for a key this call deleted.
            .call(
                "delete a key",
                Replay::OnlyUnsent,
                raw,
                |mut kv, raw| async move { kv.delete(raw, None).await },
            )
            .await?;
        Ok(resp.deleted() > 0)
    }

    async fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let start = self.raw_key(prefix);
        let end = prefix_end(&start);
        let mut out = Vec::new();
        let mut from = start;
        let mut page = SCAN_PAGE;
        // Later pages read at the first page's revision: the scan is one consistent snapshot.
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(page);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let key = from.clone();
            let result = self
                .call(
                    "scan keys",
                    Replay::Idempotent,
                    (key, options),
                    |mut kv, (key, options)| async move { kv.get(key, Some(options)).await },
                )
                .await;
            let mut resp = match result {
                Ok(resp) => resp,
                Err(StoreError::Backend(msg))
                    if msg.contains("message length too large") && page > MIN_SCAN_PAGE =>
                {
                    page = (page / 2).max(MIN_SCAN_PAGE);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let Some(last) = kvs.last() else {
                return Ok(out);
            };
            // The next page starts just after the last key of this one.
            from = last.key().to_vec();
            from.push(0);
            for kv in kvs {
                let (raw, value) = kv.into_key_value();
                out.push((self.store_key(raw)?, value));
            }
            if !more {
                return Ok(out);
            }
        }
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        self.compare_and_swap_guarded(key, expected, new, None)
            .await
    }

    fn max_put_many(&self) -> usize {
        self.max_txn_ops
    }
}

impl EtcdStore {
    /// The store key of a raw etcd key found under the prefix.
    fn store_key(&self, raw: Vec<u8>) -> Result<String, StoreError> {
        let key = String::from_utf8(raw).map_err(|e| {
            StoreError::Corrupted(format!(
                "etcd key {:?} under {} is not UTF-8; drover writes only UTF-8 keys there (does another program share the prefix?)",
                String::from_utf8_lossy(e.as_bytes()),
                self.prefix
            ))
        })?;
        match key.strip_prefix(&self.prefix) {
            Some(k) => Ok(k.to_string()),
            None => Err(StoreError::Corrupted(format!(
                "etcd returned key {key} outside the prefix {}",
                self.prefix
            ))),
        }
    }
}

/// The end of the range holding every key that starts with `prefix`: the prefix with its last
/// byte below 0xff incremented and what follows dropped. All 0xff (or empty): `\0`, which
/// etcd reads as "to the end of the key space".
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Sorts an etcd failure into retryable (connection, deadline, leader) and terminal (a
/// request etcd will never accept as it is), naming what was being done.
fn map_err(e: etcd_client::Error, what: &str) -> StoreError {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            // tonic puts the cause of a failed connection (refused, TLS alert, bad
            // certificate) in the source, behind a bare "transport error".
            let detail = format!("{what}: {msg}{}", causes(&status));
            match status.code() {
                Code::InvalidArgument if msg.contains("too many operations") => {
                    StoreError::Backend(format!(
                        "{detail}; raise --max-txn-ops on every etcd member and [store] max_txn_ops to match"
                    ))
                }
                // etcd refuses a request over --max-request-bytes itself, and its gRPC layer
                // one larger still (that limit plus some slack) before etcd sees it.
                Code::InvalidArgument | Code::ResourceExhausted
                    if msg.contains("request is too large") || msg.contains("larger than max") =>
                {
                    StoreError::Backend(format!(
                        "{detail}; raise --max-request-bytes on every etcd member"
                    ))
                }
                Code::ResourceExhausted if msg.contains("space exceeded") => {
                    StoreError::Backend(format!(
                        "{detail}; etcd is out of space: compact and defragment it, then disarm the NOSPACE alarm (etcdctl alarm disarm)"
                    ))
                }
                Code::PermissionDenied | Code::Unauthenticated => StoreError::Backend(format!(
                    "{detail}; check the client certificate ([store] cert, key) and etcd's auth settings"
                )),
                // The revision a scan was reading has been compacted away meanwhile: a new
                // scan will succeed.
                Code::OutOfRange if msg.contains("compacted") => StoreError::Unavailable(detail),
                // "no leader", "leader changed", "request timed out", a member stopping, a
                // dropped connection, our own deadline.
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown => StoreError::Unavailable(detail),
                _ => StoreError::Backend(detail),
            }
        }
        etcd_client::Error::TransportError(e) => {
            StoreError::Unavailable(format!("{what}: transport error: {e}{}", causes(&e)))
        }
        etcd_client::Error::IoError(e) => StoreError::Unavailable(format!("{what}: {e}")),
        other => StoreError::Backend(format!("{what}: {other}")),
    }
}

/// What went wrong in `err`, without the context [`map_err`] put in front.
fn cause(err: &StoreError, context: &str) -> String {
    let text = match err {
        StoreError::Unavailable(m)
        | StoreError::Backend(m)
        | StoreError::Io(m)
        | StoreError::Corrupted(m) => m.clone(),
        other => other.to_string(),
    };
    match text.strip_prefix(context) {
        Some(rest) => rest.trim_start_matches(": ").to_string(),
        None => text,
    }
}

/// Whether a failed request certainly never reached etcd's key-value store: the connection
/// could not be made, or the member refused it up front for having no leader (etcd checks
/// that before anything else when the client requires a leader) or for being overloaded.
fn never_sent(e: &etcd_client::Error) -> bool {
    use std::io::ErrorKind;
    let root: &dyn std::error::Error = match e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.contains("no leader") || msg.contains("too many requests") {
                return true;
            }
            status
        }
        etcd_client::Error::TransportError(t) => t,
        _ => return false,
    };
    let mut next = Some(root);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::NotConnected
                    | ErrorKind::AddrNotAvailable
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        // hyper-util's connector: the TCP connection was never established.
        if err.to_string().starts_with("tcp connect error") {
            return true;
        }
        next = err.source();
    }
    false
}

/// `: cause: its cause...` for every source below `e`, skipping repeats of the text already
/// shown.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut last = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests;
