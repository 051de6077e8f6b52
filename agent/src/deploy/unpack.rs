//! Unpacking a release artifact (`.tar.gz` or plain `.tar`, told apart by
//! their magic bytes) safely: the archive comes from the network and is
//! treated as hostile.
//!
//! Refused, with the entry named: absolute paths, `..` components,
//! symlinks whose target resolves outside the release (checked when the
//! entry is met, and again over the finished tree, because a later symlink
//! can change where an earlier one leads), hard links to anything but an
//! entry already unpacked, writing through a symlinked directory, device
//! files and fifos, and archives past the size or entry-count limits
//! (decompression bombs). On any error the destination is removed, so
//! nothing is left behind.
//!
//! This is blocking code: run it on a blocking thread.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tar::EntryType;

/// Longest chain of symlinks followed when checking where one leads.
const MAX_SYMLINK_HOPS: u32 = 40;
/// Tar framing per entry (header and padding) allowed on top of the
/// unpacked bytes before the decompressed stream counts as a bomb.
const FRAMING_PER_ENTRY: u64 = 3 * 512;
const FRAMING_SLACK: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total size of the files unpacked.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("unsafe archive: entry `{entry}`: {why}")]
    Refused { entry: String, why: String },
    #[error("not a tar or gzip-compressed tar archive (unknown magic bytes)")]
    Format,
    #[error("read archive: {0}")]
    Read(io::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("unpacking was cancelled")]
    Cancelled,
}

impl UnpackError {
    fn refused(entry: &str, why: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            entry: entry.to_string(),
            why: why.into(),
        }
    }
}

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
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dest)
        .map_err(io_at(dest))?;
    let result = unpack_into(archive, dest, limits, cancel);
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

fn unpack_into(
    archive: &Path,
    dest: &Path,
    limits: Limits,
    cancel: &AtomicBool,
) -> Result<Stats, UnpackError> {
    let mut file = fs::File::open(archive).map_err(io_at(archive))?;
    let mut magic = [0u8; 262];
    let n = read_up_to(&mut file, &mut magic).map_err(io_at(archive))?;
    let file = fs::File::open(archive).map_err(io_at(archive))?;
    let stream_limit = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(FRAMING_PER_ENTRY))
        .saturating_add(FRAMING_SLACK);
    let reader: Box<dyn Read> = if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::GzDecoder::new(io::BufReader::new(file)))
    } else if n >= 262 && &magic[257..262] == b"ustar" {
        Box::new(io::BufReader::new(file))
    } else {
        return Err(UnpackError::Format);
    };
    let reader = Bounded {
        inner: reader,
        left: stream_limit,
        limit: stream_limit,
    };
    let mut tar = tar::Archive::new(reader);
    let mut stats = Stats::default();
    let mut symlinks: Vec<(String, PathBuf)> = Vec::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let entries = tar.entries().map_err(UnpackError::Read)?;
    for entry in entries {
        if cancel.load(Ordering::Relaxed) {
            return Err(UnpackError::Cancelled);
        }
        let mut entry = entry.map_err(UnpackError::Read)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(UnpackError::refused(
                &name,
                format!(
                    "the archive has more than {} entries (max_entries)",
                    limits.max_entries
                ),
            ));
        }
        let path = entry.path().map_err(UnpackError::Read)?;
        let rel = relative(&path).map_err(|why| UnpackError::refused(&name, why))?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        if rel.as_os_str().is_empty() {
            // `./` itself.
            if kind == EntryType::Directory {
                continue;
            }
            return Err(UnpackError::refused(&name, "the entry has no name"));
        }
        let target = dest.join(&rel);
        match kind {
            EntryType::Directory => {
                ensure_dirs(dest, &rel, &name)?;
                dir_modes.push((target, mode));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                if stats.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(UnpackError::refused(
                        &name,
                        format!(
                            "unpacking it would exceed the limit of {} bytes (max_unpacked_bytes)",
                            limits.max_bytes
                        ),
                    ));
                }
                prepare(dest, &rel, &name)?;
                let written = write_file(&mut entry, &target, mode, cancel)?;
                stats.bytes += written;
                stats.files += 1;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| UnpackError::refused(&name, "symlink without a target"))?
                    .into_owned();
                check_symlink_lexically(&rel, &link)
                    .map_err(|why| UnpackError::refused(&name, why))?;
                prepare(dest, &rel, &name)?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_at(&target))?;
                symlinks.push((name, rel));
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(UnpackError::Read)?
                    .ok_or_else(|| UnpackError::refused(&name, "hard link without a target"))?
                    .into_owned();
                let link_rel = relative(&link).map_err(|why| {
                    UnpackError::refused(&name, format!("hard link to `{}`: {why}", link.display()))
                })?;
                if link_rel.as_os_str().is_empty() {
                    return Err(UnpackError::refused(&name, "hard link to the release root"));
                }
                // The target must be something this archive already put
                // inside the release, reached without following symlinks.
                if let Some(parent) = link_rel.parent() {
                    real_dirs_only(dest, parent).map_err(|why| {
                        UnpackError::refused(
                            &name,
                            format!("hard link to `{}`: {why}", link.display()),
                        )
                    })?;
                }
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(UnpackError::refused(
                            &name,
                            format!(
                                "hard link to `{}`, which is not a file unpacked earlier from this archive",
                                link.display()
                            ),
                        ));
                    }
                }
                prepare(dest, &rel, &name)?;
                fs::hard_link(&source, &target).map_err(io_at(&target))?;
            }
            other => {
                return Err(UnpackError::refused(
                    &name,
                    format!("{} entries are not allowed in a release", kind_name(other)),
                ));
            }
        }
    }
    // Where every symlink finally leads, now that the tree is complete.
    for (name, rel) in &symlinks {
        resolve_inside(dest, rel).map_err(|why| UnpackError::refused(name, why))?;
    }
    // Modes of directories last, so a read-only directory does not stop
    // its own entries; the owner always keeps rwx so old releases can be
    // removed.
    for (dir, mode) in dir_modes.iter().rev() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o700));
    }
    Ok(stats)
}

fn kind_name(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "fifo".into(),
        other => format!("{other:?}"),
    }
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Fails the read once more than `limit` decompressed bytes came through.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let n64 = n as u64;
        if n64 > self.left {
            return Err(io::Error::other(format!(
                "the decompressed archive exceeds {} bytes (max_unpacked_bytes plus tar framing)",
                self.limit
            )));
        }
        self.left -= n64;
        Ok(n)
    }
}

/// The path as a plain relative path, or why it is refused.
fn relative(p: &Path) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir => return Err("the path contains `..`".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute paths are not allowed".into());
            }
        }
    }
    Ok(out)
}

/// Checks that every existing prefix of `rel` under `root` is a real
/// directory, not a symlink or a file.
fn real_dirs_only(root: &Path, rel: &Path) -> Result<(), String> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "goes through the symlink `{}`",
                    p.strip_prefix(root).unwrap_or(&p).display()
                ));
            }
            Ok(_) => {
                return Err(format!(
                    "`{}` is not a directory",
                    p.strip_prefix(root).unwrap_or(&p).display()
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(format!(
                    "`{}` does not exist",
                    p.strip_prefix(root).unwrap_or(&p).display()
                ));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

/// Creates the directories of `rel` under `root` as needed; never follows
/// a symlink on the way.
fn ensure_dirs(root: &Path, rel: &Path, name: &str) -> Result<(), UnpackError> {
    let mut p = root.to_path_buf();
    for c in rel.components() {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::refused(
                    name,
                    format!(
                        "it would be written through the symlink `{}`",
                        p.strip_prefix(root).unwrap_or(&p).display()
                    ),
                ));
            }
            Ok(_) => {
                return Err(UnpackError::refused(
                    name,
                    format!(
                        "`{}` is a file, not a directory",
                        p.strip_prefix(root).unwrap_or(&p).display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&p)
                    .map_err(io_at(&p))?;
            }
            Err(e) => return Err(io_at(&p)(e)),
        }
    }
    Ok(())
}

/// Makes room for a non-directory entry at `rel`: parents exist as real
/// directories; a file or symlink already there (a duplicate entry; the
/// later one wins, as with tar) is removed, a directory is refused.
fn prepare(root: &Path, rel: &Path, name: &str) -> Result<(), UnpackError> {
    if let Some(parent) = rel.parent() {
        ensure_dirs(root, parent, name)?;
    }
    let target = root.join(rel);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => Err(UnpackError::refused(
            name,
            "a directory of the same name is already in the archive",
        )),
        Ok(_) => fs::remove_file(&target).map_err(io_at(&target)),
        Err(_) => Ok(()),
    }
}

fn write_file(
    entry: &mut impl Read,
    target: &Path,
    mode: u32,
    cancel: &AtomicBool,
) -> Result<u64, UnpackError> {
    // create_new never follows a symlink at the final component.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(io_at(target))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(UnpackError::Cancelled);
        }
        let n = entry.read(&mut buf).map_err(UnpackError::Read)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n]).map_err(io_at(target))?;
        written += n as u64;
    }
    // The umask may have narrowed the mode.
    let _ = f.set_permissions(fs::Permissions::from_mode(mode));
    // A release counts as complete once it is renamed into place, so its
    // bytes must be on disk before that, not just in the page cache.
    f.sync_all().map_err(io_at(target))?;
    Ok(written)
}

/// First check of a symlink entry: where its target leads from its
/// directory, without looking at the tree.
fn check_symlink_lexically(rel: &Path, target: &Path) -> Result<(), String> {
    let mut depth: Vec<OsString> = rel
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "symlink to the absolute path `{}`, outside the release",
                    target.display()
                ));
            }
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return Err(format!(
                        "symlink to `{}`, which is outside the release",
                        target.display()
                    ));
                }
            }
            Component::Normal(x) => depth.push(x.to_os_string()),
        }
    }
    Ok(())
}

enum Part {
    Root,
    Parent,
    Name(OsString),
}

fn parts(p: &Path) -> impl Iterator<Item = Part> + '_ {
    p.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Part::Root),
        Component::CurDir => None,
        Component::ParentDir => Some(Part::Parent),
        Component::Normal(x) => Some(Part::Name(x.to_os_string())),
    })
}

/// Follows the symlink at `rel` through the unpacked tree (symlinks
/// included) and fails if it ever leaves `root`.
fn resolve_inside(root: &Path, rel: &Path) -> Result<(), String> {
    let target = fs::read_link(root.join(rel)).map_err(|e| e.to_string())?;
    let mut stack: Vec<OsString> = rel
        .parent()
        .map(|p| p.iter().map(|c| c.to_os_string()).collect())
        .unwrap_or_default();
    let mut pending: VecDeque<Part> = parts(&target).collect();
    let mut hops = 0u32;
    let outside = || {
        format!(
            "symlink to `{}`, which resolves outside the release",
            target.display()
        )
    };
    while let Some(part) = pending.pop_front() {
        match part {
            Part::Root => return Err(outside()),
            Part::Parent => {
                if stack.pop().is_none() {
                    return Err(outside());
                }
            }
            Part::Name(name) => {
                stack.push(name);
                let here: PathBuf = stack.iter().collect();
                let full = root.join(&here);
                let is_link = fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink());
                if is_link {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(format!(
                            "symlink to `{}`: too many levels of symlinks",
                            target.display()
                        ));
                    }
                    let next = fs::read_link(&full).map_err(|e| e.to_string())?;
                    stack.pop();
                    for p in parts(&next).collect::<Vec<_>>().into_iter().rev() {
                        pending.push_front(p);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative(Path::new("./a/b")).ok(),
            Some(PathBuf::from("a/b"))
        );
        assert!(relative(Path::new("/etc/passwd")).is_err());
        assert!(relative(Path::new("a/../../b")).is_err());
        assert_eq!(relative(Path::new("./")).ok(), Some(PathBuf::new()));
    }

    #[test]
    fn lexical_symlink_checks() {
        let ok = |rel: &str, t: &str| check_symlink_lexically(Path::new(rel), Path::new(t));
        assert!(ok("bin/app", "../lib/app").is_ok());
        assert!(ok("app", "lib/../lib/app").is_ok());
        assert!(ok("app", "../x").is_err());
        assert!(ok("a/b/c", "../../../x").is_err());
        assert!(ok("app", "/etc/passwd").is_err());
    }

    #[test]
    fn chained_symlinks_are_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::os::unix::fs::symlink("..", root.join("sub/up")).expect("link");
        std::os::unix::fs::symlink("sub/up", root.join("s")).expect("link");
        // Lexically `s/..` is the root; really it is the root's parent.
        std::os::unix::fs::symlink("s/..", root.join("t")).expect("link");
        assert!(resolve_inside(root, Path::new("sub/up")).is_ok());
        assert!(resolve_inside(root, Path::new("s")).is_ok());
        assert!(resolve_inside(root, Path::new("t")).is_err());
        std::os::unix::fs::symlink("loop2", root.join("loop1")).expect("link");
        std::os::unix::fs::symlink("loop1", root.join("loop2")).expect("link");
        let e = resolve_inside(root, Path::new("loop1")).expect_err("loop");
        assert!(e.contains("too many levels"), "{e}");
    }
}
