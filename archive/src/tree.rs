//! The walker's model of the tree an archive describes: what each path
//! is (directory, file, symlink and where it points), so that every rule
//! about parents, links and where symlinks lead is decided without
//! looking at a disk. One record per entry, so its size is bounded by
//! `max_entries`.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use crate::{ArchiveError, Sink};

/// Longest chain of symlinks followed when checking where one leads.
const MAX_SYMLINK_HOPS: u32 = 40;

#[derive(Debug, Clone)]
enum Node {
    Dir,
    File,
    /// `entry` is the archive entry that made it, for the refusal.
    Symlink {
        target: PathBuf,
        entry: String,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Tree {
    nodes: HashMap<PathBuf, Node>,
}

impl Tree {
    /// Makes the directories of `rel` as needed (through the sink); never
    /// goes through a symlink or a file on the way.
    pub(crate) fn ensure_dirs(
        &mut self,
        rel: &Path,
        name: &str,
        sink: &mut dyn Sink,
    ) -> Result<(), ArchiveError> {
        let mut p = PathBuf::new();
        for c in rel.components() {
            p.push(c);
            match self.nodes.get(&p) {
                Some(Node::Dir) => {}
                Some(Node::Symlink { .. }) => {
                    return Err(ArchiveError::refused(
                        name,
                        format!("it would be written through the symlink `{}`", p.display()),
                    ));
                }
                Some(Node::File) => {
                    return Err(ArchiveError::refused(
                        name,
                        format!("`{}` is a file, not a directory", p.display()),
                    ));
                }
                None => {
                    sink.dir(&p)?;
                    self.nodes.insert(p.clone(), Node::Dir);
                }
            }
        }
        Ok(())
    }

    /// Makes room for a non-directory entry at `rel`: parents exist as
    /// real directories; a file or symlink already there (a duplicate
    /// entry; the later one wins, as with tar) is removed, a directory is
    /// refused.
    pub(crate) fn prepare(
        &mut self,
        rel: &Path,
        name: &str,
        sink: &mut dyn Sink,
    ) -> Result<(), ArchiveError> {
        if let Some(parent) = rel.parent() {
            self.ensure_dirs(parent, name, sink)?;
        }
        match self.nodes.get(rel) {
            Some(Node::Dir) => Err(ArchiveError::refused(
                name,
                "a directory of the same name is already in the archive",
            )),
            Some(_) => {
                sink.remove(rel)?;
                self.nodes.remove(rel);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Checks that every prefix of `rel` is a directory this archive
    /// made, not a symlink or a file.
    pub(crate) fn real_dirs_only(&self, rel: &Path) -> Result<(), String> {
        let mut p = PathBuf::new();
        for c in rel.components() {
            p.push(c);
            match self.nodes.get(&p) {
                Some(Node::Dir) => {}
                Some(Node::Symlink { .. }) => {
                    return Err(format!("goes through the symlink `{}`", p.display()));
                }
                Some(Node::File) => return Err(format!("`{}` is not a directory", p.display())),
                None => return Err(format!("`{}` does not exist", p.display())),
            }
        }
        Ok(())
    }

    /// Whether a hard link may point at `rel`: a file or symlink already
    /// in the tree.
    pub(crate) fn is_linkable(&self, rel: &Path) -> bool {
        matches!(self.nodes.get(rel), Some(Node::File | Node::Symlink { .. }))
    }

    pub(crate) fn add_file(&mut self, rel: PathBuf) {
        self.nodes.insert(rel, Node::File);
    }

    pub(crate) fn add_symlink(&mut self, rel: PathBuf, target: PathBuf, entry: String) {
        self.nodes.insert(rel, Node::Symlink { target, entry });
    }

    /// A hard link is another name for what `source` is. A hard link to a
    /// symlink is a symlink with the same target at a new place, so it is
    /// checked like one: from elsewhere, the same target can lead out.
    pub(crate) fn add_hard_link(&mut self, rel: PathBuf, source: &Path, entry: String) {
        let node = match self.nodes.get(source) {
            Some(Node::Symlink { target, .. }) => Node::Symlink {
                target: target.clone(),
                entry,
            },
            _ => Node::File,
        };
        self.nodes.insert(rel, node);
    }

    /// Follows every symlink of the finished tree; refuses the first
    /// (in path order, so the answer does not depend on hashing) that
    /// leads outside the release.
    pub(crate) fn check_symlinks(&self) -> Result<(), ArchiveError> {
        let mut links: Vec<(&PathBuf, &String)> = self
            .nodes
            .iter()
            .filter_map(|(p, n)| match n {
                Node::Symlink { entry, .. } => Some((p, entry)),
                _ => None,
            })
            .collect();
        links.sort();
        for (rel, entry) in links {
            self.resolve_inside(rel)
                .map_err(|why| ArchiveError::refused(entry, why))?;
        }
        Ok(())
    }

    /// Follows the symlink at `rel` through the tree (symlinks included)
    /// and fails if it ever leaves the root.
    pub(crate) fn resolve_inside(&self, rel: &Path) -> Result<(), String> {
        let Some(Node::Symlink { target, .. }) = self.nodes.get(rel) else {
            return Err(format!("`{}` is not a symlink", rel.display()));
        };
        let mut stack: Vec<OsString> = rel
            .parent()
            .map(|p| p.iter().map(|c| c.to_os_string()).collect())
            .unwrap_or_default();
        let mut pending: VecDeque<Part> = parts(target).collect();
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
                    if let Some(Node::Symlink { target: next, .. }) = self.nodes.get(&here) {
                        hops += 1;
                        if hops > MAX_SYMLINK_HOPS {
                            return Err(format!(
                                "symlink to `{}`: too many levels of symlinks",
                                target.display()
                            ));
                        }
                        stack.pop();
                        for p in parts(next).collect::<Vec<_>>().into_iter().rev() {
                            pending.push_front(p);
                        }
                    }
                }
            }
        }
        Ok(())
    }
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
