//! Releases on disk, per instance:
//!
//! ```text
//! <deploy_dir>/releases/<version>-<digest12>/   unpacked, with release.json
//! <deploy_dir>/releases/.tmp-...                 being unpacked (removed at start-up)
//! <deploy_dir>/current -> releases/<name>        switched by an atomic rename
//! ```
//!
//! A release directory only gets its final name once it is complete
//! (every file synced, `release.json` written last), and `current` only
//! ever points at such a directory, so an agent killed at any moment
//! leaves the instance on exactly one complete release.

pub mod fetch;
pub mod unpack;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use drover_proto::identity::valid_name;
use drover_proto::v1::Release;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::config::DeployConfig;
use fetch::{ArtifactSource, Cache, FetchError, FetchProgress, valid_digest};
use unpack::{Limits, UnpackError};

pub const RELEASE_FILE: &str = "release.json";
const TMP_PREFIX: &str = ".tmp-";
const CURRENT_TMP_PREFIX: &str = "current.tmp-";

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("invalid release: {0}")]
    Invalid(String),
    #[error("fetch artifact: {0}")]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Conflict(String),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> DeployError + '_ {
    move |source| DeployError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `release.json` inside a release directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseFile {
    pub version: String,
    pub digest: String,
}

/// `<version>-<digest12>`.
pub fn release_name(r: &Release) -> String {
    let short = r.digest.get(..12).unwrap_or(&r.digest);
    format!("{}-{short}", r.version)
}

/// The release must name a version that is safe in a path and a full
/// sha256 digest.
pub fn validate_release(r: &Release) -> Result<(), DeployError> {
    if !valid_name(&r.version) {
        return Err(DeployError::Invalid(format!(
            "version `{}`: expected 1-63 characters from a-z, A-Z, 0-9, `-`, `_` and `.`",
            r.version
        )));
    }
    if !valid_digest(&r.digest) {
        return Err(DeployError::Invalid(format!(
            "digest `{}`: expected a sha256 as 64 lowercase hex characters",
            r.digest
        )));
    }
    Ok(())
}

fn read_release_file(dir: &Path) -> Option<ReleaseFile> {
    let bytes = fs::read(dir.join(RELEASE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Whether `dir` is a complete unpack of `r`.
fn is_complete(dir: &Path, r: &Release) -> bool {
    read_release_file(dir).is_some_and(|f| f.version == r.version && f.digest == r.digest)
}

/// The release `current` points at, from its `release.json`; `None`
/// when nothing is deployed yet.
pub fn current_release(cfg: &DeployConfig) -> Result<Option<Release>, DeployError> {
    let current = cfg.current_link();
    match fs::symlink_metadata(&current) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_at(&current)(e)),
        Ok(_) => {}
    }
    let path = current.join(RELEASE_FILE);
    let bytes = fs::read(&path).map_err(io_at(&path))?;
    let f: ReleaseFile = serde_json::from_slice(&bytes)
        .map_err(|e| io_at(&path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    Ok(Some(Release {
        version: f.version,
        digest: f.digest,
    }))
}

/// The name of the release directory `current` points at.
fn current_name(cfg: &DeployConfig) -> Option<String> {
    let target = fs::read_link(cfg.current_link()).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Start-up: removes what an agent killed mid-deploy left behind (half
/// unpacked releases, a `current` symlink not yet renamed into place).
/// Returns the paths removed.
pub fn clean_leftovers(cfg: &DeployConfig) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if let Ok(entries) = fs::read_dir(cfg.releases_dir()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                unpack::remove_tree(&e.path());
                removed.push(e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir(&cfg.dir) {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(CURRENT_TMP_PREFIX)
            {
                let _ = fs::remove_file(e.path());
                removed.push(e.path());
            }
        }
    }
    if fs::symlink_metadata(cfg.current_link()).is_ok()
        && let Err(e) = current_release(cfg)
    {
        tracing::error!(deploy_dir = %cfg.dir.display(), "`current` does not lead to a complete release: {e}");
    }
    removed
}

/// Progress of a deploy, for updates to the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Fetching(FetchProgress),
    Unpacking,
    Switching,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub release: Release,
    pub dir: PathBuf,
    /// The release directory `current` pointed at before, if any.
    pub previous: Option<String>,
    /// The release directory was already there: nothing fetched or
    /// unpacked.
    pub reused: bool,
    /// The artifact was downloaded (not found in the cache).
    pub fetched: bool,
}

/// Sets the flag when dropped: stops a blocking unpack whose deploy was
/// given up (command timeout).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// What staging did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub dir: PathBuf,
    /// The release directory was already complete: nothing fetched or
    /// unpacked.
    pub reused: bool,
    /// The artifact was downloaded (not found in the cache).
    pub fetched: bool,
}

/// Puts `release` beside the running one, ready to switch to: reuses its
/// directory if complete, else fetches (resuming a partial download, or
/// from the cache), verifies the sha256 and unpacks it. Never touches
/// `current`, so it is safe while the instance serves. A release staged
/// this way is the newest directory under `releases/` and so survives
/// pruning until a deploy switches to it (see [`prune`]).
pub async fn stage(
    cfg: &DeployConfig,
    release: &Release,
    cache: &Cache,
    source: &dyn ArtifactSource,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Staged, DeployError> {
    validate_release(release)?;
    let releases = cfg.releases_dir();
    crate::fsutil::create_dir(&releases, 0o755)
        .map_err(|e| DeployError::Conflict(e.to_string()))?;
    let name = release_name(release);
    let target = releases.join(&name);
    if is_complete(&target, release) {
        return Ok(Staged {
            dir: target,
            reused: true,
            fetched: false,
        });
    }
    if fs::symlink_metadata(&target).is_ok() {
        if current_name(cfg).as_deref() == Some(name.as_str()) {
            return Err(DeployError::Conflict(format!(
                "{} is the current release but its {RELEASE_FILE} does not say {} {}",
                target.display(),
                release.version,
                release.digest
            )));
        }
        tracing::warn!(path = %target.display(), "replacing an incomplete release directory");
        unpack::remove_tree(&target);
    }
    let fetch_progress = |p: FetchProgress| progress(Progress::Fetching(p));
    let (artifact, fetched) = cache
        .get(&release.digest, source, &fetch_progress)
        .instrument(tracing::info_span!(
            target: drover_telemetry::TARGET,
            "fetch",
            "drover.release" = %release.version,
        ))
        .await?;
    progress(Progress::Unpacking);
    let tmp = releases.join(format!(
        "{TMP_PREFIX}{name}-{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let cancel = Arc::new(AtomicBool::new(false));
    let _guard = CancelOnDrop(cancel.clone());
    let limits = Limits {
        max_bytes: cfg.max_unpacked_bytes,
        max_entries: cfg.max_entries,
    };
    let r = release.clone();
    let t = target.clone();
    let tmp2 = tmp.clone();
    let joined = tokio::task::spawn_blocking(move || -> Result<bool, DeployError> {
        unpack::unpack(&artifact, &tmp2, limits, &cancel)?;
        let finish = || -> Result<bool, DeployError> {
            let meta = ReleaseFile {
                version: r.version.clone(),
                digest: r.digest.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
            let file = tmp2.join(RELEASE_FILE);
            let _ = fs::remove_file(&file);
            crate::fsutil::write_new(&file, &bytes, crate::fsutil::PUBLIC)
                .map_err(|e| DeployError::Conflict(e.to_string()))?;
            sync_dir(&tmp2);
            if cancel.load(Ordering::Relaxed) {
                return Err(UnpackError::Cancelled.into());
            }
            match fs::rename(&tmp2, &t) {
                Ok(()) => {
                    sync_dir(&t.parent().map(Path::to_path_buf).unwrap_or_default());
                    Ok(false)
                }
                // Someone finished the same release first.
                Err(_) if is_complete(&t, &r) => Ok(true),
                Err(e) => Err(io_at(&t)(e)),
            }
        };
        let result = finish();
        if !matches!(result, Ok(false)) {
            unpack::remove_tree(&tmp2);
        }
        result
    })
    .instrument(tracing::info_span!(
        target: drover_telemetry::TARGET,
        "unpack",
        "drover.release" = %release.version,
    ))
    .await;
    match joined {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            unpack::remove_tree(&tmp);
            return Err(DeployError::Conflict(format!("unpack task failed: {e}")));
        }
    }
    Ok(Staged {
        dir: target,
        reused: false,
        fetched,
    })
}

/// Makes `release` the instance's current release: switches `current` to
/// its staged directory, staging it first (fetch, verify, unpack) when a
/// stage command did not, as with a coordinator that sends no stage.
pub async fn deploy(
    cfg: &DeployConfig,
    release: &Release,
    cache: &Cache,
    source: &dyn ArtifactSource,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<Deployed, DeployError> {
    let previous = current_name(cfg);
    let staged = stage(cfg, release, cache, source, progress).await?;
    let name = release_name(release);
    progress(Progress::Switching);
    if previous.as_deref() != Some(name.as_str()) {
        switch_current(cfg, &name)?;
    }
    mark_activated(&staged.dir);
    Ok(Deployed {
        release: release.clone(),
        dir: staged.dir,
        previous,
        reused: staged.reused,
        fetched: staged.fetched,
    })
}

/// Points `current` at `releases/<name>`: a new symlink under a temporary
/// name, renamed over `current` (atomic), then the directory synced.
fn switch_current(cfg: &DeployConfig, name: &str) -> Result<(), DeployError> {
    let current = cfg.current_link();
    if let Ok(m) = fs::symlink_metadata(&current)
        && !m.file_type().is_symlink()
    {
        return Err(DeployError::Conflict(format!(
            "{} is not a symlink; move it away so drover can manage it",
            current.display()
        )));
    }
    let tmp = cfg
        .dir
        .join(format!("{CURRENT_TMP_PREFIX}{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let target = Path::new("releases").join(name);
    std::os::unix::fs::symlink(&target, &tmp).map_err(io_at(&tmp))?;
    if let Err(e) = fs::rename(&tmp, &current) {
        let _ = fs::remove_file(&tmp);
        return Err(io_at(&current)(e));
    }
    sync_dir(&cfg.dir);
    Ok(())
}

/// Records when a release last became current (its directory's mtime),
/// which is what pruning keeps the newest of.
fn mark_activated(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Keeps the `keep_releases` most recently activated releases, and always
/// the current one, `previous`, and any release staged since `current`
/// was last switched (its directory is newer than the current one's
/// activation): a stage is followed by the deploy that needs it.
/// Returns the names removed.
pub fn prune(cfg: &DeployConfig, previous: Option<&str>) -> Vec<String> {
    let current = current_name(cfg);
    let activated = current
        .as_ref()
        .and_then(|c| fs::symlink_metadata(cfg.releases_dir().join(c)).ok())
        .and_then(|m| m.modified().ok());
    let Ok(entries) = fs::read_dir(cfg.releases_dir()) else {
        return Vec::new();
    };
    let mut found: Vec<(SystemTime, String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(e.path()).ok()?;
            (!name.starts_with('.') && meta.is_dir()).then(|| {
                (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    name,
                    e.path(),
                )
            })
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let mut removed = Vec::new();
    for (i, (modified, name, path)) in found.into_iter().enumerate() {
        let staged_since = activated.is_some_and(|a| modified > a);
        let protected = current.as_deref() == Some(name.as_str())
            || previous == Some(name.as_str())
            || staged_since;
        if i < cfg.keep_releases || protected {
            continue;
        }
        tracing::info!(release = %name, "removing old release");
        unpack::remove_tree(&path);
        removed.push(name);
    }
    removed
}

/// Digests of every release kept under `cfg`, so the cache keeps them.
pub fn kept_digests(cfg: &DeployConfig) -> Vec<String> {
    let Ok(entries) = fs::read_dir(cfg.releases_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| read_release_file(&e.path()).map(|f| f.digest))
        .collect()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
