//! The inodes the kernel knows: each one's backing path, and the open backing file and overlay
//! of each regular file in use or holding un-synced data.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::INodeNo;
use parking_lot::Mutex;

use crate::overlay::Overlay;

/// A regular file's backing file, open for as long as its inode is known, and its overlay.
#[derive(Debug)]
pub(crate) struct OpenFile {
    /// Read under the overlay, written by a sync. Opened read-write where permitted.
    pub(crate) backing: File,
    pub(crate) overlay: Mutex<Overlay>,
}

impl OpenFile {
    fn open(path: &Path) -> io::Result<OpenFile> {
        let backing = File::options()
            .read(true)
            .write(true)
            .open(path)
            .or_else(|_| File::open(path))?;
        let len = backing.metadata()?.len();
        Ok(OpenFile {
            backing,
            overlay: Mutex::new(Overlay::new(len)),
        })
    }
}

/// A backing file's identity: device and inode number. A renamed file keeps it.
type Key = (u64, u64);

#[derive(Debug)]
struct Inode {
    /// Where it is in the backing directory. Renames update it.
    path: PathBuf,
    /// `None` once its last name is gone (unlinked, or replaced by a rename): a new file that
    /// is given the same backing inode number is then a new inode here too.
    key: Option<Key>,
    /// The kernel's references (lookups not yet forgotten).
    lookups: u64,
    /// Open handles.
    opens: u32,
    /// For a regular file once opened or truncated.
    file: Option<Arc<OpenFile>>,
}

/// Every inode the kernel may name, and every file with un-synced data. An inode is dropped
/// once the kernel has forgotten it, no handle is open and nothing of it is un-synced: a file
/// written, closed and forgotten keeps its overlay until it is synced or the power goes.
#[derive(Debug)]
pub(crate) struct Inodes {
    nodes: HashMap<u64, Inode>,
    by_key: HashMap<Key, u64>,
    /// Inode numbers are never reused, so the kernel never confuses an old one with a new one.
    next: u64,
}

impl Inodes {
    /// The table of a mount whose root is the backing directory `root`.
    pub(crate) fn new(root: PathBuf) -> io::Result<Inodes> {
        let metadata = std::fs::metadata(&root)?;
        let root_node = Inode {
            path: root,
            key: Some(key(&metadata)),
            lookups: 1,
            opens: 0,
            file: None,
        };
        Ok(Inodes {
            nodes: HashMap::from([(INodeNo::ROOT.0, root_node)]),
            by_key: HashMap::from([(key(&metadata), INodeNo::ROOT.0)]),
            next: INodeNo::ROOT.0 + 1,
        })
    }

    /// The backing path of `ino`, and its open file if it has one; `None` for an inode the
    /// table does not know or whose name is gone (and that has no open file).
    pub(crate) fn get(&self, ino: u64) -> Option<(PathBuf, Option<Arc<OpenFile>>)> {
        let node = self.nodes.get(&ino)?;
        (node.key.is_some() || node.file.is_some()).then(|| (node.path.clone(), node.file.clone()))
    }

    /// The backing path of a directory entry of `parent`.
    pub(crate) fn child(&self, parent: u64, name: &std::ffi::OsStr) -> Option<PathBuf> {
        let node = self.nodes.get(&parent).filter(|n| n.key.is_some())?;
        Some(node.path.join(name))
    }

    /// The inode of `path` (whose metadata is `metadata`), known already or new, with one more
    /// lookup counted: the kernel now holds a reference to it.
    pub(crate) fn remember(&mut self, path: PathBuf, metadata: &Metadata) -> u64 {
        let key = key(metadata);
        let ino = match self.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = self.next;
                self.next += 1;
                self.by_key.insert(key, ino);
                ino
            }
        };
        let node = self.nodes.entry(ino).or_insert_with(|| Inode {
            path: PathBuf::new(),
            key: Some(key),
            lookups: 0,
            opens: 0,
            file: None,
        });
        node.path = path;
        node.lookups += 1;
        ino
    }

    /// The number the table gives `metadata`'s file, if it knows it (for directory listings).
    pub(crate) fn known(&self, metadata_key: Key) -> Option<u64> {
        self.by_key.get(&metadata_key).copied()
    }

    /// The kernel dropped `count` references to `ino`.
    pub(crate) fn forget(&mut self, ino: u64, count: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups = node.lookups.saturating_sub(count);
        }
        self.evict_if_unused(ino);
    }

    /// The open file of regular file `ino`, opened now if it was not.
    pub(crate) fn file(&mut self, ino: u64) -> io::Result<Arc<OpenFile>> {
        let node = self
            .nodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if let Some(file) = &node.file {
            return Ok(file.clone());
        }
        let file = Arc::new(OpenFile::open(&node.path)?);
        node.file = Some(file.clone());
        Ok(file)
    }

    /// Like [`Inodes::file`], counting one more open handle.
    pub(crate) fn open(&mut self, ino: u64) -> io::Result<Arc<OpenFile>> {
        let file = self.file(ino)?;
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens += 1;
        }
        Ok(file)
    }

    /// A handle of `ino` was closed.
    pub(crate) fn release(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens = node.opens.saturating_sub(1);
        }
        self.evict_if_unused(ino);
    }

    /// The backing file of `metadata` lost a name; if that was its last (`links` was 1, or it is
    /// a directory), its inode is detached from the backing inode number, which the backing
    /// filesystem may give to a new file.
    pub(crate) fn unlinked(&mut self, metadata: &Metadata) {
        if metadata.is_dir() || metadata.nlink() <= 1 {
            if let Some(ino) = self.by_key.remove(&key(metadata)) {
                if let Some(node) = self.nodes.get_mut(&ino) {
                    node.key = None;
                }
                self.evict_if_unused(ino);
            }
        }
    }

    /// `from` was renamed to `to`: it and everything under it now live there.
    pub(crate) fn renamed(&mut self, from: &Path, to: &Path) {
        for node in self.nodes.values_mut().filter(|n| n.key.is_some()) {
            if let Ok(rest) = node.path.strip_prefix(from) {
                node.path = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
            }
        }
    }

    /// Every open file.
    pub(crate) fn open_files(&self) -> Vec<Arc<OpenFile>> {
        self.nodes.values().filter_map(|n| n.file.clone()).collect()
    }

    /// Drops every inode that is no longer needed (after a crash made files clean).
    pub(crate) fn evict_unused(&mut self) {
        let inos: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in inos {
            self.evict_if_unused(ino);
        }
    }

    fn evict_if_unused(&mut self, ino: u64) {
        let Some(node) = self.nodes.get(&ino) else {
            return;
        };
        // A file with un-synced data keeps its overlay while its name lives; an unlinked
        // file's data can never be read again once closed.
        let needed = ino == INodeNo::ROOT.0
            || node.lookups > 0
            || node.opens > 0
            || (node.key.is_some()
                && node
                    .file
                    .as_ref()
                    .is_some_and(|f| f.overlay.lock().is_dirty()));
        if !needed {
            if let Some(key) = node.key {
                self.by_key.remove(&key);
            }
            self.nodes.remove(&ino);
        }
    }
}

/// The identity of the file `metadata` describes.
pub(crate) fn key(metadata: &Metadata) -> Key {
    (metadata.dev(), metadata.ino())
}
