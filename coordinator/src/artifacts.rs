//! Content-addressed artifact store: `<data_dir>/artifacts/sha256/<digest>`.
//!
//! Uploads stream into a temp file while being hashed and are renamed into
//! place only once complete and verified, so a reader never sees a partial
//! artifact. The binding of (service, version) to a digest lives in the
//! store and is made with compare-and-swap: a version, once bound, never
//! silently changes its bytes.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

impl From<ArtifactError> for tonic::Status {
    fn from(e: ArtifactError) -> Self {
        use ArtifactError::*;
        match e {
            Name { .. } | Digest(_) | Offset { .. } => {
                tonic::Status::invalid_argument(e.to_string())
            }
            Conflict { .. } | Mismatch { .. } => tonic::Status::failed_precondition(e.to_string()),
            TooLarge { .. } => tonic::Status::resource_exhausted(e.to_string()),
            NotFound(_) => tonic::Status::not_found(e.to_string()),
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
}

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
        })
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
        let key = format!("{BINDINGS}{service}/{version}");
        if let Some(existing) = self.binding(&key).await? {
            if existing.digest == digest {
                return Ok(to_artifact(service, version, existing));
            }
            return Err(ArtifactError::Conflict {
                service: service.into(),
                version: version.into(),
                existing: existing.digest,
                new: digest,
            });
        }
        let final_path = self.path_of(&digest)?;
        if !final_path.exists() {
            tokio::fs::rename(&upload.path, &final_path)
                .await
                .map_err(io_err(&final_path))?;
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

    /// Opens an artifact positioned at `offset`; returns a reader for it
    /// and its size.
    pub async fn open_at(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<(ChunkReader, u64), ArtifactError> {
        let path = self.path_of(digest)?;
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

    #[tokio::test]
    async fn content_addressed_and_versions_never_change_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Artifacts::open(dir.path(), Arc::new(MemoryStore::new()), 1 << 20).expect("open");
        let first = push(&a, "web", "v1", b"hello world").await.expect("push");
        assert_eq!(first.digest, hex::encode(Sha256::digest(b"hello world")));
        let again = push(&a, "web", "v1", b"hello world")
            .await
            .expect("same bytes");
        assert_eq!(again.digest, first.digest);
        let err = push(&a, "web", "v1", b"other bytes")
            .await
            .expect_err("conflict");
        assert!(matches!(err, ArtifactError::Conflict { .. }), "{err}");
        assert_eq!(a.list("web").await.expect("list").len(), 1);
        assert_eq!(
            std::fs::read_dir(dir.path().join("artifacts/tmp"))
                .expect("tmp")
                .count(),
            0
        );

        let (mut f, size) = a.open_at(&first.digest, 6).await.expect("open");
        assert_eq!(size, 11);
        assert_eq!(&f.next_chunk(3).await.expect("read")[..], b"wor");
        assert_eq!(&f.next_chunk(32).await.expect("read")[..], b"ld");
        assert!(f.next_chunk(32).await.expect("read").is_empty());
        assert!(a.open_at(&first.digest, 12).await.is_err());
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
        assert_eq!(
            std::fs::read_dir(dir.path().join("artifacts/tmp"))
                .expect("tmp")
                .count(),
            0
        );
    }
}
