//! Unpacking a release artifact safely: the archive comes from the
//! network and is treated as hostile.
//!
//! Which entries are allowed is decided by `drover-archive`, the same
//! rules `drover artifact push` and the coordinator apply, so an archive
//! they accepted is one this unpacker accepts. This file only writes what
//! those rules admitted, still defensively (new files are created with
//! `create_new`, which never follows a symlink). On any error the
//! destination is removed, so nothing is left behind.
//!
//! This is blocking code: run it on a blocking thread.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use drover_archive::Sink;
pub use drover_archive::{ArchiveError as UnpackError, Limits, Stats};

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Unpacks `archive` into `dest`, which must not exist yet. On error
/// `dest` is removed.
pub fn unpack(
    archive: &Path,
    dest: &Path,
    limits: Limits,
    cancel: &AtomicBool,
) -> Result<Stats, UnpackError> {
    let file = fs::File::open(archive).map_err(io_at(archive))?;
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dest)
        .map_err(io_at(dest))?;
    let mut sink = Files {
        root: dest.to_path_buf(),
    };
    let result = drover_archive::walk(io::BufReader::new(file), limits, &mut sink, cancel);
    if result.is_err() {
        remove_tree(dest);
    }
    result
}

/// Removes a tree even where the archive made directories read-only.
pub fn remove_tree(dir: &Path) {
    if fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return;
    }
    make_writable(dir);
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(path = %dir.display(), "remove: {e}");
    }
}

fn make_writable(dir: &Path) {
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            make_writable(&e.path());
        }
    }
}

/// Writes admitted entries under `root`, a directory this unpack made.
struct Files {
    root: PathBuf,
}

impl Sink for Files {
    fn dir(&mut self, rel: &Path) -> Result<(), UnpackError> {
        let p = self.root.join(rel);
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&p)
            .map_err(io_at(&p))
    }

    fn remove(&mut self, rel: &Path) -> Result<(), UnpackError> {
        let p = self.root.join(rel);
        fs::remove_file(&p).map_err(io_at(&p))
    }

    fn file(&mut self, rel: &Path, mode: u32, data: &mut dyn Read) -> Result<u64, UnpackError> {
        let target = self.root.join(rel);
        // create_new never follows a symlink at the final component.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&target)
            .map_err(io_at(&target))?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut written = 0u64;
        loop {
            let n = data.read(&mut buf).map_err(UnpackError::Read)?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n]).map_err(io_at(&target))?;
            written += n as u64;
        }
        // The umask may have narrowed the mode.
        let _ = f.set_permissions(fs::Permissions::from_mode(mode));
        // A release counts as complete once it is renamed into place, so
        // its bytes must be on disk before that, not just in the page cache.
        f.sync_all().map_err(io_at(&target))?;
        Ok(written)
    }

    fn symlink(&mut self, rel: &Path, target: &Path) -> Result<(), UnpackError> {
        let p = self.root.join(rel);
        std::os::unix::fs::symlink(target, &p).map_err(io_at(&p))
    }

    fn hard_link(&mut self, rel: &Path, source: &Path) -> Result<(), UnpackError> {
        let p = self.root.join(rel);
        fs::hard_link(self.root.join(source), &p).map_err(io_at(&p))
    }

    /// The owner always keeps rwx so old releases can be removed.
    fn dir_mode(&mut self, rel: &Path, mode: u32) -> Result<(), UnpackError> {
        let _ = fs::set_permissions(
            self.root.join(rel),
            fs::Permissions::from_mode(mode | 0o700),
        );
        Ok(())
    }
}
