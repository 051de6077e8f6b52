//! Small file helpers: create-new and atomic-replace writes with explicit
//! modes, so a key is never readable by others, not even for a moment, and a
//! crash never leaves half a file behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} already exists", .0.display())]
    Exists(PathBuf),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Mode for secrets (private keys).
pub const SECRET: u32 = 0o600;
/// Mode for everything else.
pub const PUBLIC: u32 = 0o644;

/// Writes a new file with `mode`; refuses to replace an existing one.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                FsError::Exists(path.to_path_buf())
            } else {
                io_err(path)(e)
            }
        })?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// The temporary name [`write_atomic`] uses next to `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `contents` to a temporary file next to `path` (fsynced) and
/// returns its name; [`commit`] renames it into place.
pub fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, FsError> {
    let tmp = temp_path(path);
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    Ok(tmp)
}

/// Renames a file from [`write_temp`] over `path` and syncs the directory.
pub fn commit(tmp: &Path, path: &Path) -> Result<(), FsError> {
    fs::rename(tmp, path).map_err(io_err(path))?;
    sync_dir(path);
    Ok(())
}

/// Replaces `path` atomically with `contents`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    let tmp = write_temp(path, contents, mode)?;
    commit(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
}

/// Creates `dir` and its parents; the last component gets `mode` if new.
pub fn create_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_atomically_with_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("agent.key");
        write_atomic(&p, b"one", SECRET).expect("write");
        write_atomic(&p, b"two", SECRET).expect("replace");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let mode = fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            write_new(&p, b"x", SECRET),
            Err(FsError::Exists(_))
        ));
        assert!(!temp_path(&p).exists());
    }
}
