//! The rules a release archive (`.tar.gz` or plain `.tar`, told apart by
//! their magic bytes) must pass, in one place, so that `drover artifact
//! push`, the coordinator's upload handler and the agent's unpacker can
//! never disagree about what is deployable.
//!
//! Refused, with the entry named: absolute paths, `..` components,
//! symlinks whose target resolves outside the release (checked when the
//! entry is met, and again over the finished tree, because a later symlink
//! can change where an earlier one leads), hard links to anything but an
//! entry already unpacked, writing through a symlinked directory, device
//! files and fifos, and archives past the size or entry-count limits
//! (decompression bombs). A stream that is not a tar or gzip archive, or
//! that ends early or fails its gzip checksum, is refused too.
//!
//! [`walk`] reads the archive once, as a stream, and keeps a model of the
//! tree it describes (one small record per entry, bounded by
//! `max_entries`), so every rule is decided on that model, never on the
//! disk. What is done with each admitted entry is up to a [`Sink`]: the
//! agent writes it under the release directory, [`check`] only reads the
//! bytes through. Memory stays bounded whatever the archive holds, and
//! reading stops at the size limit.
//!
//! This is blocking code: run it on a blocking thread.

mod tree;

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tar::EntryType;

use tree::Tree;

/// Default total size of a release's unpacked files.
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default number of entries (files, directories, links) in one artifact.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

/// Tar framing per entry (header and padding) allowed on top of the
/// unpacked bytes before the decompressed stream counts as a bomb.
const FRAMING_PER_ENTRY: u64 = 3 * 512;
const FRAMING_SLACK: u64 = 1024 * 1024;
/// Bytes needed to tell a tar from a gzip stream.
const MAGIC_LEN: usize = 262;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total size of the files unpacked (`max_unpacked_bytes`).
    pub max_bytes: u64,
    /// Entries of any kind (`max_entries`).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
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

impl ArchiveError {
    pub(crate) fn refused(entry: &str, why: impl Into<String>) -> ArchiveError {
        ArchiveError::Refused {
            entry: entry.to_string(),
            why: why.into(),
        }
    }

    /// Whether the archive itself is at fault (as opposed to the disk it
    /// was being unpacked to, or a cancellation): pushing it again will
    /// not help, a new archive is needed.
    pub fn is_bad_archive(&self) -> bool {
        matches!(
            self,
            ArchiveError::Refused { .. } | ArchiveError::Format | ArchiveError::Read(_)
        )
    }
}

/// The container format, from the first bytes of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Tar,
}

/// Tells the format from the first 262 bytes (fewer when the file is
/// shorter); `None` when it is neither.
pub fn sniff(magic: &[u8]) -> Option<Format> {
    if magic.len() >= 2 && magic[..2] == [0x1f, 0x8b] {
        Some(Format::Gzip)
    } else if magic.len() >= MAGIC_LEN && &magic[257..262] == b"ustar" {
        Some(Format::Tar)
    } else {
        None
    }
}

/// What is done with each entry the rules admitted. Paths are relative to
/// the release root and plain (no `.`, `..` or root); the walker has
/// already checked every parent against its model of the tree.
pub trait Sink {
    /// Creates the directory `rel`; its parent exists.
    fn dir(&mut self, rel: &Path) -> Result<(), ArchiveError>;
    /// Removes the file or symlink at `rel`: a later entry of the same
    /// name replaces it, as with tar.
    fn remove(&mut self, rel: &Path) -> Result<(), ArchiveError>;
    /// Stores a regular file; returns the bytes read from `data`.
    fn file(&mut self, rel: &Path, mode: u32, data: &mut dyn Read) -> Result<u64, ArchiveError>;
    fn symlink(&mut self, rel: &Path, target: &Path) -> Result<(), ArchiveError>;
    /// `source` is an entry already stored, reached through real
    /// directories only.
    fn hard_link(&mut self, rel: &Path, source: &Path) -> Result<(), ArchiveError>;
    /// Called last, deepest directories first, for directory entries that
    /// carried a mode.
    fn dir_mode(&mut self, rel: &Path, mode: u32) -> Result<(), ArchiveError>;
}

/// A sink that stores nothing: the bytes are read (so the stream and its
/// checksum are checked to the end) and dropped.
#[derive(Debug, Default)]
pub struct Discard;

impl Sink for Discard {
    fn dir(&mut self, _: &Path) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn remove(&mut self, _: &Path) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn file(&mut self, _: &Path, _: u32, data: &mut dyn Read) -> Result<u64, ArchiveError> {
        io::copy(data, &mut io::sink()).map_err(ArchiveError::Read)
    }
    fn symlink(&mut self, _: &Path, _: &Path) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn hard_link(&mut self, _: &Path, _: &Path) -> Result<(), ArchiveError> {
        Ok(())
    }
    fn dir_mode(&mut self, _: &Path, _: u32) -> Result<(), ArchiveError> {
        Ok(())
    }
}

/// Checks an archive without storing anything.
pub fn check(reader: impl Read, limits: Limits) -> Result<Stats, ArchiveError> {
    walk(reader, limits, &mut Discard, &AtomicBool::new(false))
}

/// Checks the archive file at `path` without storing anything.
pub fn check_file(path: &Path, limits: Limits) -> Result<Stats, ArchiveError> {
    let file = std::fs::File::open(path).map_err(|source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check(io::BufReader::new(file), limits)
}

/// Reads the archive from `reader` (the file's bytes, compressed or not),
/// applies every rule to every entry, and hands the admitted ones to
/// `sink`. Stops at the first refusal; the caller cleans up what the sink
/// stored. `cancel` is polled between entries and while file data flows.
pub fn walk(
    mut reader: impl Read,
    limits: Limits,
    sink: &mut dyn Sink,
    cancel: &AtomicBool,
) -> Result<Stats, ArchiveError> {
    let mut magic = [0u8; MAGIC_LEN];
    let n = read_up_to(&mut reader, &mut magic).map_err(ArchiveError::Read)?;
    let format = sniff(&magic[..n]).ok_or(ArchiveError::Format)?;
    let raw = io::Cursor::new(magic[..n].to_vec()).chain(reader);
    let stream_limit = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(FRAMING_PER_ENTRY))
        .saturating_add(FRAMING_SLACK);
    let inner: Box<dyn Read> = match format {
        Format::Gzip => Box::new(flate2::read::GzDecoder::new(raw)),
        Format::Tar => Box::new(raw),
    };
    let reader = Bounded {
        inner,
        left: stream_limit,
        limit: stream_limit,
    };
    let mut tar = tar::Archive::new(reader);
    let stats = walk_entries(&mut tar, limits, sink, cancel)?;
    // The tar stops at its end-of-archive blocks; read on to the end so a
    // gzip stream is checked to its trailer (length and CRC) and a
    // truncated one is refused rather than half trusted.
    let mut rest = tar.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(ArchiveError::Read)?;
    Ok(stats)
}

fn walk_entries<R: Read>(
    tar: &mut tar::Archive<R>,
    limits: Limits,
    sink: &mut dyn Sink,
    cancel: &AtomicBool,
) -> Result<Stats, ArchiveError> {
    let mut stats = Stats::default();
    let mut tree = Tree::default();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let entries = tar.entries().map_err(ArchiveError::Read)?;
    for entry in entries {
        if cancel.load(Ordering::Relaxed) {
            return Err(ArchiveError::Cancelled);
        }
        let mut entry = entry.map_err(ArchiveError::Read)?;
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
            return Err(ArchiveError::refused(
                &name,
                format!(
                    "the archive has more than {} entries (max_entries)",
                    limits.max_entries
                ),
            ));
        }
        let path = entry.path().map_err(ArchiveError::Read)?;
        let rel = relative(&path).map_err(|why| ArchiveError::refused(&name, why))?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        if rel.as_os_str().is_empty() {
            // `./` itself.
            if kind == EntryType::Directory {
                continue;
            }
            return Err(ArchiveError::refused(&name, "the entry has no name"));
        }
        match kind {
            EntryType::Directory => {
                tree.ensure_dirs(&rel, &name, sink)?;
                dir_modes.push((rel, mode));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                if stats.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(ArchiveError::refused(
                        &name,
                        format!(
                            "unpacking it would exceed the limit of {} bytes (max_unpacked_bytes)",
                            limits.max_bytes
                        ),
                    ));
                }
                tree.prepare(&rel, &name, sink)?;
                let mut data = Cancellable {
                    inner: &mut entry,
                    cancel,
                };
                let written = match sink.file(&rel, mode, &mut data) {
                    Ok(n) => n,
                    Err(_) if cancel.load(Ordering::Relaxed) => {
                        return Err(ArchiveError::Cancelled);
                    }
                    Err(e) => return Err(e),
                };
                tree.add_file(rel);
                stats.bytes += written;
                stats.files += 1;
            }
            EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Read)?
                    .ok_or_else(|| ArchiveError::refused(&name, "symlink without a target"))?
                    .into_owned();
                check_symlink_lexically(&rel, &link)
                    .map_err(|why| ArchiveError::refused(&name, why))?;
                tree.prepare(&rel, &name, sink)?;
                sink.symlink(&rel, &link)?;
                tree.add_symlink(rel, link, name);
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(ArchiveError::Read)?
                    .ok_or_else(|| ArchiveError::refused(&name, "hard link without a target"))?
                    .into_owned();
                let source = relative(&link).map_err(|why| {
                    ArchiveError::refused(
                        &name,
                        format!("hard link to `{}`: {why}", link.display()),
                    )
                })?;
                if source.as_os_str().is_empty() {
                    return Err(ArchiveError::refused(
                        &name,
                        "hard link to the release root",
                    ));
                }
                // The target must be something this archive already put
                // inside the release, reached without following symlinks.
                if let Some(parent) = source.parent() {
                    tree.real_dirs_only(parent).map_err(|why| {
                        ArchiveError::refused(
                            &name,
                            format!("hard link to `{}`: {why}", link.display()),
                        )
                    })?;
                }
                if !tree.is_linkable(&source) {
                    return Err(ArchiveError::refused(
                        &name,
                        format!(
                            "hard link to `{}`, which is not a file unpacked earlier from this archive",
                            link.display()
                        ),
                    ));
                }
                tree.prepare(&rel, &name, sink)?;
                sink.hard_link(&rel, &source)?;
                tree.add_hard_link(rel, &source, name);
            }
            other => {
                return Err(ArchiveError::refused(
                    &name,
                    format!("{} entries are not allowed in a release", kind_name(other)),
                ));
            }
        }
    }
    // Where every symlink finally leads, now that the tree is complete.
    tree.check_symlinks()?;
    // Modes of directories last, so a read-only directory does not stop
    // its own entries.
    for (dir, mode) in dir_modes.iter().rev() {
        sink.dir_mode(dir, *mode)?;
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
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
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

/// File data that stops with an error once `cancel` is set.
struct Cancellable<'a, R> {
    inner: &'a mut R,
    cancel: &'a AtomicBool,
}

impl<R: Read> Read for Cancellable<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("cancelled"));
        }
        self.inner.read(buf)
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

/// First check of a symlink entry: where its target leads from its
/// directory, without looking at the tree.
fn check_symlink_lexically(rel: &Path, target: &Path) -> Result<(), String> {
    let mut depth: Vec<&std::ffi::OsStr> =
        rel.parent().map(|p| p.iter().collect()).unwrap_or_default();
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
            Component::Normal(x) => depth.push(x),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
