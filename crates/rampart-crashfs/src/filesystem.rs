//! The FUSE operations: metadata passes through to the backing directory at once, file data
//! goes to each file's [`Overlay`](crate::overlay::Overlay) until the file is synced.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, DirEntryExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use nix::libc;
use parking_lot::{Condvar, Mutex};

use crate::inodes::{self, Inodes, OpenFile};

/// How long the kernel may keep attributes and names: not at all. A crash changes file sizes
/// behind the kernel's back, and the next process must see them at once.
const TTL: Duration = Duration::ZERO;

/// Writes up to this size reach the filesystem in one request.
const MAX_WRITE: u32 = 1 << 20;

/// State shared by the FUSE threads and the mount's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) inodes: Mutex<Inodes>,
    handles: Mutex<Handles>,
    /// Whether the disk is frozen: reads, writes and syncs of file data wait while it is.
    frozen: Mutex<bool>,
    thawed: Condvar,
}

#[derive(Debug, Default)]
struct Handles {
    open: HashMap<u64, Handle>,
    next: u64,
}

#[derive(Debug)]
enum Handle {
    File {
        ino: u64,
        file: Arc<OpenFile>,
    },
    /// A directory's entries as listed when it was opened.
    Dir(Vec<(u64, FileType, OsString)>),
}

impl Shared {
    pub(crate) fn new(backing: PathBuf) -> io::Result<Shared> {
        Ok(Shared {
            inodes: Mutex::new(Inodes::new(backing)?),
            handles: Mutex::new(Handles::default()),
            frozen: Mutex::new(false),
            thawed: Condvar::new(),
        })
    }

    /// Freezes or thaws the disk (see `MountedCrashFs::freeze`).
    pub(crate) fn set_frozen(&self, frozen: bool) {
        *self.frozen.lock() = frozen;
        if !frozen {
            self.thawed.notify_all();
        }
    }

    /// Waits while the disk is frozen.
    fn wait_thawed(&self) {
        let mut frozen = self.frozen.lock();
        while *frozen {
            self.thawed.wait(&mut frozen);
        }
    }

    fn add_handle(&self, handle: Handle) -> FileHandle {
        let mut handles = self.handles.lock();
        handles.next += 1;
        let fh = handles.next;
        handles.open.insert(fh, handle);
        FileHandle(fh)
    }

    fn file_handle(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        match self.handles.lock().open.get(&fh.0) {
            Some(Handle::File { file, .. }) => Ok(file.clone()),
            _ => Err(Errno::EBADF),
        }
    }

    /// The attributes of `ino`: the backing file's, with the size its overlay gives.
    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let (path, file) = self.inodes.lock().get(ino).ok_or(Errno::ENOENT)?;
        match file {
            Some(file) => {
                let overlay = file.overlay.lock();
                let metadata = file.backing.metadata()?;
                Ok(attr(ino, &metadata, Some(overlay.size())))
            }
            None => Ok(attr(ino, &fs::symlink_metadata(path)?, None)),
        }
    }

    /// Counts a lookup of `path` and returns its attributes (for entry replies).
    fn entry(&self, path: PathBuf) -> Result<FileAttr, Errno> {
        let metadata = fs::symlink_metadata(&path)?;
        let ino = self.inodes.lock().remember(path, &metadata);
        self.attr(ino)
    }

    /// Makes the new name `name` in `parent` with `make` (through to the backing directory at
    /// once), and counts a lookup of it.
    fn make(
        &self,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<FileAttr, Errno> {
        let path = self.child(parent, name)?;
        make(&path)?;
        self.entry(path)
    }

    fn path(&self, ino: u64) -> Result<PathBuf, Errno> {
        Ok(self.inodes.lock().get(ino).ok_or(Errno::ENOENT)?.0)
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<PathBuf, Errno> {
        self.inodes.lock().child(parent, name).ok_or(Errno::ENOENT)
    }

    fn set_attrs(
        &self,
        ino: u64,
        mode: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        times: (Option<TimeOrNow>, Option<TimeOrNow>),
        fh: Option<FileHandle>,
    ) -> Result<FileAttr, Errno> {
        let path = self.path(ino)?;
        if let Some(mode) = mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if owner.0.is_some() || owner.1.is_some() {
            std::os::unix::fs::lchown(&path, owner.0, owner.1)?;
        }
        if let Some(size) = size {
            let file = match fh {
                Some(fh) => self.file_handle(fh)?,
                None => self.inodes.lock().file(ino)?,
            };
            file.overlay.lock().set_size(size);
        }
        if times.0.is_some() || times.1.is_some() {
            let spec = |t: Option<TimeOrNow>| match t {
                None => nix::sys::time::TimeSpec::UTIME_OMIT,
                Some(TimeOrNow::Now) => nix::sys::time::TimeSpec::UTIME_NOW,
                Some(TimeOrNow::SpecificTime(t)) => {
                    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
                    nix::sys::time::TimeSpec::from_duration(d)
                }
            };
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &path,
                &spec(times.0),
                &spec(times.1),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(nix_errno)?;
        }
        self.attr(ino)
    }

    fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, FileHandle), Errno> {
        let path = self.child(parent, name)?;
        // The name passes through at once, at length 0: what is written reaches the backing
        // file only when synced.
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .create_new(flags & libc::O_EXCL != 0)
            .mode(mode & 0o7777)
            .open(&path)?;
        let attr = self.entry(path)?;
        let file = self.inodes.lock().open(attr.ino.0)?;
        if flags & libc::O_TRUNC != 0 {
            file.overlay.lock().set_size(0);
        }
        let fh = self.add_handle(Handle::File {
            ino: attr.ino.0,
            file,
        });
        Ok((self.attr(attr.ino.0)?, fh))
    }

    fn rename(&self, from: PathBuf, to: PathBuf, flags: RenameFlags) -> Result<(), Errno> {
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Errno::EINVAL);
        }
        let mut inodes = self.inodes.lock();
        let replaced = fs::symlink_metadata(&to).ok();
        if replaced.is_some() && flags.contains(RenameFlags::RENAME_NOREPLACE) {
            return Err(Errno::EEXIST);
        }
        let moved = fs::symlink_metadata(&from)?;
        fs::rename(&from, &to)?;
        if let Some(replaced) = replaced.filter(|r| inodes::key(r) != inodes::key(&moved)) {
            inodes.unlinked(&replaced);
        }
        inodes.renamed(&from, &to);
        Ok(())
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        let mut inodes = self.inodes.lock();
        let metadata = fs::symlink_metadata(&path)?;
        if dir {
            fs::remove_dir(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
        inodes.unlinked(&metadata);
        Ok(())
    }

    fn list(&self, ino: u64) -> Result<Vec<(u64, FileType, OsString)>, Errno> {
        let path = self.path(ino)?;
        let mut entries = vec![
            (ino, FileType::Directory, OsString::from(".")),
            (ino, FileType::Directory, OsString::from("..")),
        ];
        let inodes = self.inodes.lock();
        for entry in fs::read_dir(&path)? {
            let entry = entry?;
            let kind = entry
                .file_type()
                .ok()
                .and_then(FileType::from_std)
                .unwrap_or(FileType::RegularFile);
            // Only informative (d_ino): the kernel looks each name up before using it.
            let number = entry
                .metadata()
                .ok()
                .and_then(|m| inodes.known(inodes::key(&m)))
                .unwrap_or(entry.ino());
            entries.push((number, kind, entry.file_name()));
        }
        Ok(entries)
    }
}

/// The filesystem the FUSE session runs.
#[derive(Debug)]
pub(crate) struct CrashFilesystem {
    pub(crate) shared: Arc<Shared>,
}

/// Replies with `result`'s value through `ok`, or its error.
macro_rules! reply {
    ($reply:expr, $result:expr, |$v:pat_param| $ok:expr) => {
        match $result {
            Ok($v) => $ok,
            Err(e) => $reply.error(e),
        }
    };
}

impl Filesystem for CrashFilesystem {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Rejected only above the kernel's limit; the default then stays.
        let _ = config.set_max_write(MAX_WRITE);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self
            .shared
            .child(parent.0, name)
            .and_then(|p| self.shared.entry(p));
        reply_entry(reply, result);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.shared.inodes.lock().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply!(reply, self.shared.attr(ino.0), |attr| reply
            .attr(&TTL, &attr));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self
            .shared
            .set_attrs(ino.0, mode, (uid, gid), size, (atime, mtime), fh);
        reply!(reply, result, |attr| reply.attr(&TTL, &attr));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = self.shared.path(ino.0).and_then(|p| Ok(fs::read_link(p)?));
        reply!(reply, result, |target| reply.data(
            std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str())
        ));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // Regular files only: nothing here needs devices, pipes or sockets.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let result = self.shared.make(parent.0, name, |path| {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true).mode(mode & 0o7777);
            options.open(path).map(drop)
        });
        reply_entry(reply, result);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = self.shared.make(parent.0, name, |path| {
            fs::DirBuilder::new().mode(mode & 0o7777).create(path)
        });
        reply_entry(reply, result);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.shared.remove(parent.0, name, false);
        reply!(reply, result, |()| reply.ok());
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = self.shared.remove(parent.0, name, true);
        reply!(reply, result, |()| reply.ok());
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = self.shared.make(parent.0, link_name, |path| {
            std::os::unix::fs::symlink(target, path)
        });
        reply_entry(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = self.shared.child(parent.0, name).and_then(|from| {
            let to = self.shared.child(newparent.0, newname)?;
            self.shared.rename(from, to, flags)
        });
        reply!(reply, result, |()| reply.ok());
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = self.shared.inodes.lock().open(ino.0).map_err(Errno::from);
        reply!(reply, result, |file| {
            if flags.0 & libc::O_TRUNC != 0 {
                file.overlay.lock().set_size(0);
            }
            let fh = self.shared.add_handle(Handle::File { ino: ino.0, file });
            // Direct I/O: the kernel caches no file data, every read and write comes here.
            reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO)
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.shared.wait_thawed();
        let result = self.shared.file_handle(fh).and_then(|file| {
            let overlay = file.overlay.lock();
            Ok(overlay.read(&file.backing, offset, size)?)
        });
        reply!(reply, result, |data| reply.data(&data));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.shared.wait_thawed();
        let result = self.shared.file_handle(fh).map(|file| {
            file.overlay.lock().write(offset, data);
        });
        reply!(reply, result, |()| reply.written(data.len() as u32));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() does not sync, on Linux's filesystems either.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let handle = self.shared.handles.lock().open.remove(&fh.0);
        if let Some(Handle::File { ino, .. }) = handle {
            self.shared.inodes.lock().release(ino);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // fsync and fdatasync alike: the data, the size, and metadata (already through).
        self.shared.wait_thawed();
        let result = self.shared.file_handle(fh).and_then(|file| {
            let mut overlay = file.overlay.lock();
            Ok(overlay.sync(&file.backing)?)
        });
        reply!(reply, result, |()| reply.ok());
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = self.shared.list(ino.0);
        reply!(reply, result, |entries| reply.opened(
            self.shared.add_handle(Handle::Dir(entries)),
            FopenFlags::empty()
        ));
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let handles = self.shared.handles.lock();
        let Some(Handle::Dir(entries)) = handles.open.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.shared.handles.lock().open.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Names are durable as soon as they are made (see the crate's model); a directory's
        // fsync syncs no file's data, as on Linux's filesystems.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let root = self.shared.path(INodeNo::ROOT.0);
        let result = root.and_then(|root| nix::sys::statvfs::statvfs(&root).map_err(nix_errno));
        reply!(reply, result, |s| reply.statfs(
            s.blocks(),
            s.blocks_free(),
            s.blocks_available(),
            s.files(),
            s.files_free(),
            s.block_size() as u32,
            s.name_max() as u32,
            s.fragment_size() as u32,
        ));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.shared.create(parent.0, name, mode, flags);
        reply!(reply, result, |created| reply.created(
            &TTL,
            &created.0,
            Generation(0),
            created.1,
            FopenFlags::FOPEN_DIRECT_IO
        ));
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Plain allocation grows the file (un-synced, like a write of zeros); with KEEP_SIZE
        // it changes nothing a reader sees. Punching and zeroing ranges are not modelled.
        let result = match mode {
            0 => self.shared.file_handle(fh).map(|file| {
                let mut overlay = file.overlay.lock();
                let end = offset.saturating_add(length);
                if end > overlay.size() {
                    overlay.set_size(end);
                }
            }),
            libc::FALLOC_FL_KEEP_SIZE => self.shared.file_handle(fh).map(drop),
            _ => Err(Errno::EOPNOTSUPP),
        };
        reply!(reply, result, |()| reply.ok());
    }
}

/// Replies with a new or looked-up entry, or the error.
fn reply_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    reply!(reply, result, |attr| reply.entry(
        &TTL,
        &attr,
        Generation(0)
    ));
}

/// A file's attributes from its backing metadata, with `size` in place of the backing size.
fn attr(ino: u64, metadata: &Metadata, size: Option<u64>) -> FileAttr {
    let size = size.unwrap_or(metadata.len());
    let time = |secs: i64, nanos: i64| {
        UNIX_EPOCH + Duration::new(secs.max(0) as u64, nanos.clamp(0, 999_999_999) as u32)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: time(metadata.atime(), metadata.atime_nsec()),
        mtime: time(metadata.mtime(), metadata.mtime_nsec()),
        ctime: time(metadata.ctime(), metadata.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: FileType::from_std(metadata.file_type()).unwrap_or(FileType::RegularFile),
        perm: (metadata.mode() & 0o7777) as u16,
        nlink: metadata.nlink() as u32,
        uid: metadata.uid(),
        gid: metadata.gid(),
        rdev: metadata.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn nix_errno(e: nix::errno::Errno) -> Errno {
    Errno::from_i32(e as i32)
}
