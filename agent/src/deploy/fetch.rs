//! Fetching artifacts into the agent's content-addressed cache,
//! `<data_dir>/cache/<digest>`.
//!
//! Bytes stream straight to `<digest>.partial` (never the whole artifact in
//! memory). A stream that drops resumes from the partial file's length; a
//! few attempts in a row without progress, over at least
//! [`FETCH_PATIENCE`], give up. The sha256 is checked
//! before the file is renamed to its digest, and again before a cached
//! file is reused.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_net::transport::{self, ConnectOptions};
use drover_proto::v1::agent_service_client::AgentServiceClient;
use drover_proto::v1::{ArtifactChunk, FetchArtifactRequest};
use futures::{Stream, StreamExt};
use prost::bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::tls::TlsFiles;

/// Attempts in a row that bring no new bytes before giving up...
pub const MAX_ATTEMPTS_WITHOUT_PROGRESS: u32 = 5;
/// ...and for at least this long: a coordinator failover (the leader's
/// lease, 10 s by default, then the election) must not fail a fetch that
/// was under way when the leader died; the standby answers UNAVAILABLE
/// until it leads.
pub const FETCH_PATIENCE: Duration = Duration::from_secs(30);
const RETRY_START: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Worth retrying: the connection failed or the stream broke.
    #[error("{0}")]
    Unavailable(String),
    /// The coordinator does not have it.
    #[error("{0}")]
    NotFound(String),
    #[error("checksum mismatch: expected sha256 {expected}, got {actual}")]
    Mismatch { expected: String, actual: String },
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Io(String),
}

impl FetchError {
    fn retryable(&self) -> bool {
        matches!(self, FetchError::Unavailable(_))
    }
}

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<ArtifactChunk, FetchError>> + Send>>;

/// Where artifact bytes come from: the coordinator in production, a fake
/// in tests.
#[async_trait::async_trait]
pub trait ArtifactSource: Send + Sync {
    async fn open(&self, digest: &str, offset: u64) -> Result<ChunkStream, FetchError>;
}

/// `AgentService.FetchArtifact` on the configured coordinators, over mTLS
/// with the agent's certificate (read at each connect, so renewals apply).
pub struct GrpcSource {
    tls: TlsFiles,
    coordinators: Vec<String>,
    connect: ConnectOptions,
    channel: tokio::sync::Mutex<Option<tonic::transport::Channel>>,
}

impl GrpcSource {
    pub fn new(tls: TlsFiles, coordinators: Vec<String>, connect: ConnectOptions) -> GrpcSource {
        GrpcSource {
            tls,
            coordinators,
            connect,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    async fn dial(
        &self,
        addr: &str,
        tls: &transport::ClientTls,
    ) -> Result<tonic::transport::Channel, String> {
        let budget = self.connect.connect_timeout * 2;
        match tokio::time::timeout(budget, transport::connect(addr, tls, &self.connect)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("{addr}: {}", transport::error_chain(&e))),
            Err(_) => Err(format!("{addr}: timed out connecting")),
        }
    }

    fn load_tls(&self) -> Result<transport::ClientTls, FetchError> {
        self.tls
            .load()
            .map(|l| l.client)
            .map_err(|e| FetchError::Unavailable(format!("load TLS files: {e}")))
    }

    async fn channel(&self) -> Result<tonic::transport::Channel, FetchError> {
        let mut slot = self.channel.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let tls = self.load_tls()?;
        let mut errors = Vec::new();
        for addr in &self.coordinators {
            match self.dial(addr, &tls).await {
                Ok(c) => {
                    *slot = Some(c.clone());
                    return Ok(c);
                }
                Err(e) => errors.push(e),
            }
        }
        Err(FetchError::Unavailable(format!(
            "no coordinator reachable: {}",
            errors.join("; ")
        )))
    }

    async fn fetch(
        channel: tonic::transport::Channel,
        digest: &str,
        offset: u64,
    ) -> Result<ChunkStream, tonic::Status> {
        let r = AgentServiceClient::new(channel)
            .fetch_artifact(FetchArtifactRequest {
                digest: digest.to_string(),
                offset,
            })
            .await?;
        let digest = digest.to_string();
        let stream = r
            .into_inner()
            .map(move |item| item.map_err(|s| status_error(s, &digest)));
        Ok(Box::pin(stream))
    }
}

#[async_trait::async_trait]
impl ArtifactSource for GrpcSource {
    async fn open(&self, digest: &str, offset: u64) -> Result<ChunkStream, FetchError> {
        let channel = self.channel().await?;
        let mut status = match Self::fetch(channel, digest, offset).await {
            Ok(s) => return Ok(s),
            Err(s) => s,
        };
        // A coordinator that does not lead names the leader: ask it once,
        // and keep its channel for the next fetch.
        if let Some(leader) = crate::session::leader_hint(&status) {
            let tls = self.load_tls()?;
            if let Ok(channel) = self.dial(&leader, &tls).await {
                match Self::fetch(channel.clone(), digest, offset).await {
                    Ok(s) => {
                        *self.channel.lock().await = Some(channel);
                        return Ok(s);
                    }
                    Err(s) => status = s,
                }
            }
        }
        // A broken channel is made anew next time.
        *self.channel.lock().await = None;
        Err(status_error(status, digest))
    }
}

fn status_error(s: tonic::Status, digest: &str) -> FetchError {
    let text = if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    };
    match s.code() {
        tonic::Code::NotFound => FetchError::NotFound(format!(
            "artifact {digest} not found on the coordinator ({text})"
        )),
        tonic::Code::InvalidArgument
        | tonic::Code::PermissionDenied
        | tonic::Code::Unauthenticated
        | tonic::Code::OutOfRange
        | tonic::Code::FailedPrecondition
        // The coordinator's copy is corrupt: asking again will not help.
        | tonic::Code::DataLoss => FetchError::Protocol(format!("fetch refused: {text}")),
        _ => FetchError::Unavailable(format!("fetch: {text}")),
    }
}

/// Bytes fetched so far, for progress updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchProgress {
    pub done: u64,
    /// 0 until the first chunk says.
    pub total: u64,
}

/// The agent's artifact cache.
#[derive(Debug)]
pub struct Cache {
    dir: PathBuf,
    /// One fetch per digest at a time: instances sharing an artifact wait
    /// for the first fetch instead of writing the same partial file.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Cache {
    /// `<data_dir>/cache`.
    pub fn new(data_dir: &Path) -> Cache {
        Cache {
            dir: data_dir.join("cache"),
            locks: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path_of(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    pub fn partial_of(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.partial"))
    }

    fn lock_for(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(digest.to_string()).or_default().clone()
    }

    /// The verified artifact's path: from the cache when present and
    /// intact, else fetched. `digest` must already be validated (64
    /// lowercase hex characters).
    pub async fn get(
        &self,
        digest: &str,
        source: &dyn ArtifactSource,
        progress: &(dyn Fn(FetchProgress) + Send + Sync),
    ) -> Result<(PathBuf, bool), FetchError> {
        let lock = self.lock_for(digest);
        let _held = lock.lock().await;
        crate::fsutil::create_dir(&self.dir, 0o755).map_err(|e| FetchError::Io(e.to_string()))?;
        let path = self.path_of(digest);
        if path.exists() {
            match sha256_file(&path).await {
                Ok(actual) if actual == digest => return Ok((path, false)),
                Ok(actual) => {
                    tracing::warn!(path = %path.display(), %actual, "cached artifact is corrupt; fetching it again");
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cached artifact unreadable ({e}); fetching it again");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        self.fetch(digest, source, progress).await?;
        Ok((path, true))
    }

    async fn fetch(
        &self,
        digest: &str,
        source: &dyn ArtifactSource,
        progress: &(dyn Fn(FetchProgress) + Send + Sync),
    ) -> Result<(), FetchError> {
        let partial = self.partial_of(digest);
        let io = |what: &str, e: std::io::Error| {
            FetchError::Io(format!("{what} {}: {e}", partial.display()))
        };
        let mut fruitless = 0u32;
        let mut last_progress = tokio::time::Instant::now();
        let mut restarted = false;
        let mut delay = RETRY_START;
        loop {
            let offset = tokio::fs::metadata(&partial).await.map_or(0, |m| m.len());
            let attempt = self
                .attempt(digest, offset, source, progress, &partial)
                .await;
            let (got, ended) = match attempt {
                Ok(r) => r,
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => (offset, Err(e)),
            };
            if got > offset {
                fruitless = 0;
                last_progress = tokio::time::Instant::now();
                delay = RETRY_START;
            }
            match ended {
                // The stream ended cleanly: everything the coordinator has.
                Ok((total, actual)) if total.is_none_or(|t| got >= t) => {
                    if actual == digest {
                        let path = self.path_of(digest);
                        tokio::fs::rename(&partial, &path)
                            .await
                            .map_err(|e| io("rename", e))?;
                        sync_dir(&self.dir);
                        return Ok(());
                    }
                    let _ = tokio::fs::remove_file(&partial).await;
                    // Bytes kept from an earlier attempt may be what is
                    // wrong: one fresh download before giving up.
                    if offset > 0 && !restarted {
                        tracing::warn!(%digest, "resumed download does not match its digest; downloading again from the start");
                        restarted = true;
                        continue;
                    }
                    return Err(FetchError::Mismatch {
                        expected: digest.to_string(),
                        actual,
                    });
                }
                Ok(_) => {
                    tracing::warn!(%digest, bytes = got, "artifact stream ended early; resuming")
                }
                Err(e) => {
                    fruitless += 1;
                    if fruitless >= MAX_ATTEMPTS_WITHOUT_PROGRESS
                        && last_progress.elapsed() >= FETCH_PATIENCE
                    {
                        return Err(FetchError::Unavailable(format!(
                            "fetch artifact {digest}: {e} ({fruitless} attempts without progress in {}, {got} bytes kept for later)",
                            humantime::format_duration(Duration::from_secs(
                                last_progress.elapsed().as_secs()
                            ))
                        )));
                    }
                    tracing::warn!(%digest, bytes = got, "artifact fetch interrupted: {e}; resuming");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_CAP);
        }
    }

    /// One request from `offset`. Returns the partial file's length after
    /// it, and how the stream ended: `Ok((total size if seen, sha256 of
    /// the whole partial file))` when it ended cleanly, `Err` when it broke.
    ///
    /// The bytes are written and hashed on the blocking pool while the
    /// next chunks arrive (at most [`WRITE_QUEUE`] chunks wait), so the
    /// checksum needs no second pass over the file.
    async fn attempt(
        &self,
        digest: &str,
        offset: u64,
        source: &dyn ArtifactSource,
        progress: &(dyn Fn(FetchProgress) + Send + Sync),
        partial: &Path,
    ) -> Result<(u64, Result<(Option<u64>, String), FetchError>), FetchError> {
        let mut stream = source.open(digest, offset).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let path = partial.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || write_partial(&path, offset, rx));
        let mut got = offset;
        let mut total = None;
        // `Err` is terminal: the writer is stopped and the error returned.
        let ended: Result<Result<Option<u64>, FetchError>, FetchError> = loop {
            match stream.next().await {
                None => break Ok(Ok(total)),
                Some(Err(e)) if e.retryable() => break Ok(Err(e)),
                Some(Err(e)) => break Err(e),
                Some(Ok(chunk)) => {
                    if chunk.offset != got {
                        break Ok(Err(FetchError::Unavailable(format!(
                            "chunk at offset {}, expected {got}",
                            chunk.offset
                        ))));
                    }
                    let end = got + chunk.data.len() as u64;
                    if end > chunk.size_bytes {
                        break Err(FetchError::Protocol(format!(
                            "the coordinator sent {end} bytes of an artifact it says has {}",
                            chunk.size_bytes
                        )));
                    }
                    total = Some(chunk.size_bytes);
                    if tx.send(chunk.data).await.is_err() {
                        // The writer failed; its error is returned below.
                        break Ok(Ok(total));
                    }
                    got = end;
                    progress(FetchProgress {
                        done: got,
                        total: chunk.size_bytes,
                    });
                }
            }
        };
        drop(tx);
        let written = writer
            .await
            .map_err(|e| FetchError::Io(format!("write {}: {e}", partial.display())))
            .and_then(|r| {
                r.map_err(|(what, e)| FetchError::Io(format!("{what} {}: {e}", partial.display())))
            });
        let ended = match ended {
            Ok(ended) => ended,
            Err(e) => {
                if matches!(e, FetchError::Protocol(_)) {
                    let _ = tokio::fs::remove_file(partial).await;
                }
                return Err(e);
            }
        };
        let sha = written?;
        Ok((got, ended.map(|total| (total, sha))))
    }

    /// Removes cached artifacts not in `keep` (partial files stay, for
    /// resuming).
    pub fn prune(&self, keep: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if valid_digest(&name)
                && !keep.contains(&name)
                && Arc::strong_count(&self.lock_for(&name)) <= 2
            {
                tracing::info!(digest = %name, "removing cached artifact no release uses");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// 64 lowercase hex characters.
pub fn valid_digest(d: &str) -> bool {
    d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// sha256 of a file, lowercase hex, read on a blocking thread.
pub async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut h = Sha256::new();
        hash_from(&mut h, std::fs::File::open(&path)?)?;
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Chunks received but not yet written, per fetch: with the HTTP/2
/// stream window, what bounds an agent's memory during a download.
const WRITE_QUEUE: usize = 4;

/// Appends the received chunks to `path` (which holds `offset` bytes from
/// earlier attempts) and syncs it. Returns the sha256 of the whole file,
/// lowercase hex: the earlier bytes are read back and hashed first, the
/// new ones as they are written. Errors say what failed.
fn write_partial(
    path: &Path,
    offset: u64,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> Result<String, (&'static str, std::io::Error)> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ("open", e))?;
    let mut h = Sha256::new();
    if offset > 0 {
        let kept = std::fs::File::open(path).map_err(|e| ("read", e))?;
        hash_from(&mut h, kept.take(offset)).map_err(|e| ("read", e))?;
    }
    while let Some(data) = rx.blocking_recv() {
        file.write_all(&data).map_err(|e| ("write", e))?;
        h.update(&data);
    }
    file.sync_data().map_err(|e| ("sync", e))?;
    Ok(hex::encode(h.finalize()))
}

fn hash_from(h: &mut Sha256, mut r: impl Read) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
