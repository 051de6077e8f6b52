//! Content-addressed artifact store: `<data_dir>/artifacts/sha256/<digest>`.
//!
//! Uploads stream into a temp file while being hashed and are renamed into
//! place only once complete and verified, so a reader never sees a partial
//! artifact. The binding of (service, version) to a digest lives in the
//! store and is made with compare-and-swap: a version, once bound, never
//! silently changes its bytes.
//!
//! An upload is also read through the agents' unpacking rules
//! (`drover-archive`) before it is stored, so what a client that skipped
//! `drover artifact push`'s own check sends cannot become a release. And
//! a stored blob is served only while it still hashes to its name (see
//! [`Verified`]): a corrupt one is refused with a clear error before any
//! host downloads it.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use drover_proto::identity::valid_name;
use drover_proto::v1::Artifact;
use prost::bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::registry::now_ms;
use crate::store::{Store, StoreError};

const BINDINGS: &str = "artifacts/";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("invalid {what} `{value}`: use 1-63 characters from a-z, A-Z, 0-9, `-`, `_`, `.`")]
    Name { what: &'static str, value: String },
    #[error("invalid digest `{0}`: expected 64 lowercase hex characters (sha256)")]
    Digest(String),
    #[error(
        "{service} {version} is already bound to sha256:{existing}; these bytes are sha256:{new}. Push them under a new version"
    )]
    Conflict {
        service: String,
        version: String,
        existing: String,
        new: String,
    },
    #[error("upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("upload hashed to sha256:{actual}, not the expected sha256:{expected}")]
    Mismatch { expected: String, actual: String },
    #[error("no artifact with digest sha256:{0}")]
    NotFound(String),
    #[error("offset {offset} is past the end of the artifact ({size} bytes)")]
    Offset { offset: u64, size: u64 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt artifact record: {0}")]
    Corrupt(String),
    #[error(
        "refused: {0}; nothing was stored: agents would refuse to unpack it, so fix the archive and push again"
    )]
    BadArchive(drover_archive::ArchiveError),
    #[error("artifact {digest} on the coordinator is corrupt: {why}; push it again")]
    CorruptBlob { digest: String, why: String },
}

impl From<ArtifactError> for tonic::Status {
    fn from(e: ArtifactError) -> Self {
        use ArtifactError::*;
        match e {
            Name { .. } | Digest(_) | Offset { .. } | BadArchive(_) => {
                tonic::Status::invalid_argument(e.to_string())
            }
            Conflict { .. } | Mismatch { .. } => tonic::Status::failed_precondition(e.to_string()),
            TooLarge { .. } => tonic::Status::resource_exhausted(e.to_string()),
            NotFound(_) => tonic::Status::not_found(e.to_string()),
            CorruptBlob { .. } => tonic::Status::data_loss(e.to_string()),
            Store(ref s) if s.is_retryable() => tonic::Status::unavailable(e.to_string()),
            Io { .. } | Store(_) | Corrupt(_) => tonic::Status::internal(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Binding {
    digest: String,
    size_bytes: u64,
    pushed_at_ms: i64,
    pushed_by: String,
}

pub fn valid_digest(d: &str) -> bool {
    d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub struct Artifacts {
    dir: PathBuf,
    store: Arc<dyn Store>,
    max_size: u64,
    /// What an upload must unpack within.
    limits: drover_archive::Limits,
    /// Per digest: the last check that the blob hashes to its name. The
    /// inner lock makes concurrent fetches of one blob wait for a single
    /// hash instead of each reading the whole file.
    verified: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Verified>>>>>,
    recheck_after: Duration,
}

/// A blob was hashed and matched its digest while it had this size and
/// mtime.
///
/// Hashing before every fetch would read the whole blob once per host (a
/// 64 MiB artifact sent to 1,000 hosts is 64 GB of reads), so a blob is
/// trusted while its size and mtime are what they were when it was last
/// hashed: whatever rewrites the file through the filesystem (a truncation,
/// a stray copy, an editor) changes one of them and is caught at the next
/// fetch. What does not change them (a failing disk, a write that restores
/// the mtime) is caught by hashing again at the first fetch after
/// [`RECHECK_AFTER`]. Checking lazily, at fetch time, means no background
/// task to own and no cost for a blob nobody fetches; the agents verify the
/// digest as well, so this only decides who finds a bad blob first and how
/// clearly it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verified {
    size: u64,
    mtime: Option<SystemTime>,
    at: Instant,
}

/// How long a blob's verification is trusted when its size and mtime did
/// not change.
pub const RECHECK_AFTER: Duration = Duration::from_secs(10 * 60);

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// An upload in progress: bytes go to a temp file and through the hasher.
pub struct Upload {
    file: tokio::fs::File,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    max_size: u64,
}

impl Upload {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ArtifactError> {
        self.size += chunk.len() as u64;
        if self.size > self.max_size {
            return Err(ArtifactError::TooLarge {
                limit: self.max_size,
            });
        }
        self.hasher.update(chunk);
        self.file.write_all(chunk).await.map_err(io_err(&self.path))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Finished uploads were renamed away; anything left is a failed one.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Artifacts {
    pub fn open(
        data_dir: &Path,
        store: Arc<dyn Store>,
        max_size: u64,
    ) -> Result<Artifacts, ArtifactError> {
        let dir = data_dir.join("artifacts");
        for sub in ["sha256", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        // Leftovers of uploads cut off by a crash.
        if let Ok(entries) = std::fs::read_dir(dir.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Artifacts {
            dir,
            store,
            max_size,
            limits: drover_archive::Limits::default(),
            verified: Mutex::new(HashMap::new()),
            recheck_after: RECHECK_AFTER,
        })
    }

    /// The unpacking limits uploads are checked against (the defaults are
    /// the agents' defaults).
    pub fn with_unpack_limits(mut self, limits: drover_archive::Limits) -> Artifacts {
        self.limits = limits;
        self
    }

    #[cfg(test)]
    fn with_recheck_after(mut self, d: Duration) -> Artifacts {
        self.recheck_after = d;
        self
    }

    fn check_slot(&self, digest: &str) -> Arc<tokio::sync::Mutex<Option<Verified>>> {
        let mut map = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(digest.to_string()).or_default().clone()
    }

    /// Fails unless the stored blob still hashes to `digest`; hashes it
    /// only when [`Verified`] says the last check no longer holds.
    pub async fn verify_blob(&self, digest: &str) -> Result<(), ArtifactError> {
        let path = self.path_of(digest)?;
        let slot = self.check_slot(digest);
        let mut last = slot.lock().await;
        let meta = match tokio::fs::metadata(&path).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound(digest.to_string()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let (size, mtime) = (meta.len(), meta.modified().ok());
        if let Some(v) = *last
            && v.size == size
            && v.mtime == mtime
            && v.at.elapsed() < self.recheck_after
        {
            return Ok(());
        }
        *last = None;
        let at = path.clone();
        let actual = tokio::task::spawn_blocking(move || sha256_of(&at))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(io_err(&path))?;
        if actual != digest {
            return Err(ArtifactError::CorruptBlob {
                digest: digest.to_string(),
                why: format!("its {size} bytes hash to sha256:{actual}"),
            });
        }
        *last = Some(Verified {
            size,
            mtime,
            at: Instant::now(),
        });
        Ok(())
    }

    /// Records that the blob at `path` was just written with bytes that
    /// hashed to `digest`.
    async fn mark_verified(&self, digest: &str, path: &Path) {
        let slot = self.check_slot(digest);
        let mut last = slot.lock().await;
        *last = tokio::fs::metadata(path).await.ok().map(|m| Verified {
            size: m.len(),
            mtime: m.modified().ok(),
            at: Instant::now(),
        });
    }

    pub fn path_of(&self, digest: &str) -> Result<PathBuf, ArtifactError> {
        if !valid_digest(digest) {
            return Err(ArtifactError::Digest(digest.to_string()));
        }
        Ok(self.dir.join("sha256").join(digest))
    }

    pub async fn begin(&self) -> Result<Upload, ArtifactError> {
        let name: u64 = rand::random();
        let path = self.dir.join("tmp").join(format!("{name:016x}"));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(io_err(&path))?;
        Ok(Upload {
            file,
            path,
            hasher: Sha256::new(),
            size: 0,
            max_size: self.max_size,
        })
    }

    /// The same artifact dir seen through another store (the HA leader's
    /// fenced one); nothing on disk is touched.
    pub fn with_store(&self, store: Arc<dyn Store>) -> Artifacts {
        Artifacts {
            dir: self.dir.clone(),
            store,
            max_size: self.max_size,
            limits: self.limits,
            verified: Mutex::new(HashMap::new()),
            recheck_after: self.recheck_after,
        }
    }

    /// Whether the blob `digest` is here and still hashes to its name.
    pub async fn has_blob(&self, digest: &str) -> bool {
        match self.path_of(digest) {
            Ok(p) if p.exists() => self.verify_blob(digest).await.is_ok(),
            _ => false,
        }
    }

    /// Every digest bound to a (service, version).
    pub async fn bound_digests(&self) -> Result<std::collections::BTreeSet<String>, ArtifactError> {
        Ok(self.list("").await?.into_iter().map(|a| a.digest).collect())
    }

    /// Puts a blob copied from another coordinator in place, once its
    /// bytes hash to `digest` (the copy's only proof); nothing is bound.
    pub async fn install(&self, mut upload: Upload, digest: &str) -> Result<(), ArtifactError> {
        let final_path = self.path_of(digest)?;
        upload.file.flush().await.map_err(io_err(&upload.path))?;
        upload.file.sync_all().await.map_err(io_err(&upload.path))?;
        let actual = hex::encode(std::mem::take(&mut upload.hasher).finalize());
        if actual != digest {
            return Err(ArtifactError::Mismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        tokio::fs::rename(&upload.path, &final_path)
            .await
            .map_err(io_err(&final_path))?;
        self.mark_verified(digest, &final_path).await;
        Ok(())
    }

    /// Completes an upload and binds it to (service, version).
    pub async fn finish(
        &self,
        mut upload: Upload,
        service: &str,
        version: &str,
        expected_digest: &str,
        pushed_by: &str,
    ) -> Result<Artifact, ArtifactError> {
        check_name("service", service)?;
        check_name("version", version)?;
        upload.file.flush().await.map_err(io_err(&upload.path))?;
        upload.file.sync_all().await.map_err(io_err(&upload.path))?;
        let digest = hex::encode(std::mem::take(&mut upload.hasher).finalize());
        if !expected_digest.is_empty() && expected_digest != digest {
            return Err(ArtifactError::Mismatch {
                expected: expected_digest.to_string(),
                actual: digest,
            });
        }
        let path = upload.path.clone();
        let limits = self.limits;
        let checked =
            tokio::task::spawn_blocking(move || drover_archive::check_file(&path, limits))
                .await
                .map_err(|e| io_err(&upload.path)(std::io::Error::other(e)))?;
        match checked {
            Ok(_) => {}
            Err(e) if e.is_bad_archive() => return Err(ArtifactError::BadArchive(e)),
            Err(e) => return Err(io_err(&upload.path)(std::io::Error::other(e))),
        }
        let key = format!("{BINDINGS}{service}/{version}");
        let existing = self.binding(&key).await?;
        if let Some(existing) = &existing
            && existing.digest != digest
        {
            return Err(ArtifactError::Conflict {
                service: service.into(),
                version: version.into(),
                existing: existing.digest.clone(),
                new: digest,
            });
        }
        // Always put the verified bytes in place, even over a blob of the
        // same name: that is how pushing again repairs a corrupt one.
        let final_path = self.path_of(&digest)?;
        tokio::fs::rename(&upload.path, &final_path)
            .await
            .map_err(io_err(&final_path))?;
        self.mark_verified(&digest, &final_path).await;
        if let Some(existing) = existing {
            return Ok(to_artifact(service, version, existing));
        }
        let binding = Binding {
            digest: digest.clone(),
            size_bytes: upload.size,
            pushed_at_ms: now_ms(),
            pushed_by: pushed_by.to_string(),
        };
        let bytes =
            serde_json::to_vec(&binding).map_err(|e| ArtifactError::Corrupt(e.to_string()))?;
        if !self.store.compare_and_swap(&key, None, Some(bytes)).await? {
            // Someone bound it between our check and now: same rules apply.
            if let Some(existing) = self.binding(&key).await?
                && existing.digest != digest
            {
                return Err(ArtifactError::Conflict {
                    service: service.into(),
                    version: version.into(),
                    existing: existing.digest,
                    new: digest,
                });
            }
        }
        Ok(to_artifact(service, version, binding))
    }

    async fn binding(&self, key: &str) -> Result<Option<Binding>, ArtifactError> {
        match self.store.get(key).await? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ArtifactError::Corrupt(e.to_string())),
            None => Ok(None),
        }
    }

    /// The artifact bound to (service, version), if any.
    pub async fn get(
        &self,
        service: &str,
        version: &str,
    ) -> Result<Option<Artifact>, ArtifactError> {
        Ok(self
            .binding(&format!("{BINDINGS}{service}/{version}"))
            .await?
            .map(|b| to_artifact(service, version, b)))
    }

    pub async fn list(&self, service: &str) -> Result<Vec<Artifact>, ArtifactError> {
        let prefix = if service.is_empty() {
            BINDINGS.to_string()
        } else {
            check_name("service", service)?;
            format!("{BINDINGS}{service}/")
        };
        let mut out = Vec::new();
        for (key, bytes) in self.store.scan_prefix(&prefix).await? {
            let Some((svc, ver)) = key[BINDINGS.len()..].split_once('/') else {
                continue;
            };
            let b: Binding = serde_json::from_slice(&bytes)
                .map_err(|e| ArtifactError::Corrupt(e.to_string()))?;
            out.push(to_artifact(svc, ver, b));
        }
        out.sort_by(|a, b| (&a.service, a.pushed_at_ms).cmp(&(&b.service, b.pushed_at_ms)));
        Ok(out)
    }

    /// Opens an artifact positioned at `offset`, once [`Self::verify_blob`]
    /// passed; returns a reader for it and its size.
    pub async fn open_at(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<(ChunkReader, u64), ArtifactError> {
        let path = self.path_of(digest)?;
        self.verify_blob(digest).await?;
        let at = path.clone();
        let opened = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let mut file = std::fs::File::open(&at)?;
            let size = file.metadata()?.len();
            if offset <= size {
                file.seek(std::io::SeekFrom::Start(offset))?;
            }
            Ok((file, size))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let (file, size) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound(digest.to_string()));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        if offset > size {
            return Err(ArtifactError::Offset { offset, size });
        }
        Ok((ChunkReader { file: Some(file) }, size))
    }
}

/// Reads an artifact in chunks on the blocking pool, each straight into
/// the buffer that goes on the wire: `tokio::fs::File` would read into its
/// own buffer and copy from there, one more pass over every byte sent.
#[derive(Debug)]
pub struct ChunkReader {
    /// Lent to the blocking task during a read; `None` after a panic there.
    file: Option<std::fs::File>,
}

impl ChunkReader {
    /// The next up to `max` bytes, fewer only at the end of the file;
    /// empty at the end.
    pub async fn next_chunk(&mut self, max: usize) -> std::io::Result<Bytes> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| std::io::Error::other("an earlier read failed"))?;
        let (file, read) = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(max);
            let read = (&mut file).take(max as u64).read_to_end(&mut buf);
            (file, read.map(|_| Bytes::from(buf)))
        })
        .await
        .map_err(std::io::Error::other)?;
        self.file = Some(file);
        read
    }
}

fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hex::encode(hasher.finalize())),
            n => hasher.update(&buf[..n]),
        }
    }
}

fn check_name(what: &'static str, value: &str) -> Result<(), ArtifactError> {
    if valid_name(value) {
        Ok(())
    } else {
        Err(ArtifactError::Name {
            what,
            value: value.to_string(),
        })
    }
}

fn to_artifact(service: &str, version: &str, b: Binding) -> Artifact {
    Artifact {
        service: service.to_string(),
        version: version.to_string(),
        digest: b.digest,
        size_bytes: b.size_bytes,
        pushed_at_ms: b.pushed_at_ms,
        pushed_by: b.pushed_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// A `.tar` holding one file with `data`.
    fn archive(data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "file", data).expect("append");
        b.into_inner().expect("tar")
    }

    async fn push(
        a: &Artifacts,
        service: &str,
        version: &str,
        data: &[u8],
    ) -> Result<Artifact, ArtifactError> {
        let mut up = a.begin().await?;
        for chunk in data.chunks(7) {
            up.write(chunk).await?;
        }
        a.finish(up, service, version, "", "operator/t").await
    }

    fn tmp_is_empty(dir: &Path) -> bool {
        std::fs::read_dir(dir.join("artifacts/tmp"))
            .expect("tmp")
            .count()
            == 0
    }

    #[tokio::test]
    async fn content_addressed_and_versions_never_change_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Artifacts::open(dir.path(), Arc::new(MemoryStore::new()), 1 << 20).expect("open");
        let hello = archive(b"hello world");
        let first = push(&a, "web", "v1", &hello).await.expect("push");
        assert_eq!(first.digest, hex::encode(Sha256::digest(&hello)));
        let again = push(&a, "web", "v1", &hello).await.expect("same bytes");
        assert_eq!(again.digest, first.digest);
        let err = push(&a, "web", "v1", &archive(b"other bytes"))
            .await
            .expect_err("conflict");
        assert!(matches!(err, ArtifactError::Conflict { .. }), "{err}");
        assert_eq!(a.list("web").await.expect("list").len(), 1);
        assert!(tmp_is_empty(dir.path()));

        let (mut f, size) = a.open_at(&first.digest, 512).await.expect("open");
        assert_eq!(size, hello.len() as u64);
        assert_eq!(&f.next_chunk(5).await.expect("read")[..], b"hello");
        assert_eq!(
            f.next_chunk(1 << 20).await.expect("read").len(),
            hello.len() - 517
        );
        assert!(f.next_chunk(32).await.expect("read").is_empty());
        assert!(a.open_at(&first.digest, size + 1).await.is_err());
        assert!(matches!(
            a.open_at(&"0".repeat(64), 0).await,
            Err(ArtifactError::NotFound(_))
        ));
        assert!(matches!(
            a.open_at("../etc/passwd", 0).await,
            Err(ArtifactError::Digest(_))
        ));
    }

    #[tokio::test]
    async fn refuses_oversized_and_mismatched_uploads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Artifacts::open(dir.path(), Arc::new(MemoryStore::new()), 10).expect("open");
        let err = push(&a, "web", "v1", &[0u8; 11])
            .await
            .expect_err("too large");
        assert!(matches!(err, ArtifactError::TooLarge { .. }));
        let mut up = a.begin().await.expect("begin");
        up.write(b"abc").await.expect("write");
        let err = a
            .finish(up, "web", "v2", &"0".repeat(64), "operator/t")
            .await
            .expect_err("mismatch");
        assert!(matches!(err, ArtifactError::Mismatch { .. }));
        assert!(a.list("").await.expect("list").is_empty());
        assert!(tmp_is_empty(dir.path()));
    }

    #[tokio::test]
    async fn archives_the_agents_would_refuse_are_not_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Artifacts::open(dir.path(), Arc::new(MemoryStore::new()), 1 << 20)
            .expect("open")
            .with_unpack_limits(drover_archive::Limits {
                max_bytes: 1000,
                max_entries: 10,
            });
        let good = archive(b"fine");
        let cases: [(&str, Vec<u8>, &str); 3] = [
            (
                "random bytes",
                b"random bytes, no archive".to_vec(),
                "not a tar",
            ),
            ("truncated", good[..700].to_vec(), "read archive"),
            ("too big", archive(&[0u8; 2000]), "max_unpacked_bytes"),
        ];
        for (what, bytes, why) in cases {
            let err = push(&a, "web", "v1", &bytes).await.expect_err(what);
            assert!(matches!(err, ArtifactError::BadArchive(_)), "{what}: {err}");
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
            assert!(status.message().contains(why), "{what}: {status:?}");
        }
        assert!(a.list("").await.expect("list").is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("artifacts/sha256"))
                .expect("blobs")
                .count(),
            0
        );
        assert!(tmp_is_empty(dir.path()));
        push(&a, "web", "v1", &good).await.expect("a good one");
    }

    #[tokio::test]
    async fn a_corrupt_blob_is_refused_until_pushed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Artifacts::open(dir.path(), Arc::new(MemoryStore::new()), 1 << 20).expect("open");
        let bytes = archive(b"hello world");
        let pushed = push(&a, "web", "v1", &bytes).await.expect("push");
        let blob = a.path_of(&pushed.digest).expect("path");
        let mut bad = bytes.clone();
        bad[512] ^= 0xff;
        std::fs::write(&blob, &bad).expect("corrupt");

        let err = a.open_at(&pushed.digest, 0).await.expect_err("corrupt");
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::DataLoss);
        assert!(
            status.message().starts_with(&format!(
                "artifact {} on the coordinator is corrupt: ",
                pushed.digest
            )) && status.message().ends_with("push it again"),
            "{status:?}"
        );

        push(&a, "web", "v1", &bytes).await.expect("push again");
        let (_, size) = a.open_at(&pushed.digest, 0).await.expect("repaired");
        assert_eq!(size, bytes.len() as u64);
    }

    #[tokio::test]
    async fn a_change_that_keeps_size_and_mtime_is_caught_on_the_recheck() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bytes = archive(b"hello world");
        let a = Artifacts::open(dir.path(), Arc::new(MemoryStore::new()), 1 << 20).expect("open");
        let pushed = push(&a, "web", "v1", &bytes).await.expect("push");
        let blob = a.path_of(&pushed.digest).expect("path");
        let rot = |blob: &Path| {
            let mtime = std::fs::metadata(blob)
                .and_then(|m| m.modified())
                .expect("mtime");
            let mut bad = bytes.clone();
            bad[512] ^= 0x01;
            std::fs::write(blob, &bad).expect("rot");
            let f = std::fs::File::options()
                .write(true)
                .open(blob)
                .expect("open");
            f.set_modified(mtime).expect("keep mtime");
        };
        rot(&blob);
        // Trusted: same size and mtime, checked moments ago.
        assert!(a.open_at(&pushed.digest, 0).await.is_ok());

        let a = Artifacts::open(dir.path(), Arc::new(MemoryStore::new()), 1 << 20)
            .expect("open")
            .with_recheck_after(Duration::ZERO);
        std::fs::write(&blob, &bytes).expect("restore");
        let pushed = push(&a, "web", "v1", &bytes).await.expect("push");
        rot(&blob);
        assert!(matches!(
            a.open_at(&pushed.digest, 0).await,
            Err(ArtifactError::CorruptBlob { .. })
        ));
    }
}
