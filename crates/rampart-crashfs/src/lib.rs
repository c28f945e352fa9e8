//! A FUSE filesystem that loses power: a passthrough over a backing directory that keeps file
//! data in memory, as the page cache does, until the file is fsynced, and drops all of it on
//! [`MountedCrashFs::crash`]. Rampart's own, small equivalent of LazyFS, for tests that cut a
//! member's power instead of only killing its process (`kill -9` keeps the page cache, so it
//! never loses a write that was not fsynced).
//!
//! # The model
//!
//! - **File data is cached.** `write`, truncation (`ftruncate`, `set_len`, `O_TRUNC`) and
//!   `fallocate` (plain, growing the file) change an in-memory overlay of the file; reads see
//!   the overlay over the backing file, as they would see the page cache. `fsync` or
//!   `fdatasync` of the file (any open handle of it) writes its overlay down to the backing
//!   file: its data and its size, all of it at once.
//! - **A crash keeps exactly what was synced.** After [`MountedCrashFs::crash`] every file
//!   reads what it held at its last sync, byte for byte and length for length. A file created
//!   and never synced is there, empty.
//! - **Metadata passes through at once and survives a crash**: creating, removing and renaming
//!   files and directories, `mkdir`, symlinks, permissions, owners, times. So a rename of a
//!   synced file over another is durable as soon as it returns, with or without an fsync of
//!   the directory; this is LazyFS's default too.
//!
//! Not modelled, so never lost: directory entries made without an fsync of their directory
//! (a file created, or renamed, and then lost to the crash: real filesystems can lose them);
//! metadata other than the size (times, permissions).
//! Not modelled, so never produced: torn writes (a crash keeps a write whole or not at all, and
//! the synced part of a file whole); reordering (a file synced later never survives while one
//! synced earlier does not); `syncfs(2)`/`sync(2)` syncing anything (FUSE does not pass them
//! on: only a file's own fsync counts); an fsync of a directory syncing file data (it does not
//! on Linux either). An unlinked file's data is gone with its last handle, synced or not.
//! Not supported: hard links (EPERM), devices, pipes and sockets (EPERM), punching or zeroing
//! ranges with `fallocate` (EOPNOTSUPP), shared writable `mmap` (files are opened with direct
//! I/O, so the kernel caches no data and every read and write reaches the overlay).
//!
//! # Use
//!
//! [`CrashFs::mount`] mounts it in background threads of the calling process (it needs
//! `/dev/fuse`; as root it mounts with mount(2), otherwise through `fusermount3` from Debian's
//! `fuse3`); [`MountedCrashFs::crash`] cuts the
//! power once the processes using it are dead; [`MountedCrashFs::unsynced_bytes`] is what a
//! crash now would lose. [`MountedCrashFs::freeze`] makes the disk stop answering (reads,
//! writes and syncs of file data wait) until [`MountedCrashFs::thaw`]. Dropping the handle
//! unmounts. [`fuse_available`] tells tests whether they can run here at all. The `rampart-crashfs` binary mounts one by hand.
//!
//! # Layout
//!
//! - `overlay.rs`: [`Overlay`](overlay::Overlay), one file's un-synced extents and size.
//! - `inodes.rs`: the inodes the kernel knows, their backing paths and open files.
//! - `filesystem.rs`: the FUSE operations.
//! - `mount.rs`: [`CrashFs`], [`MountedCrashFs`], [`CrashFsError`].
//!
//! It depends on no Rampart crate: it is test tooling that any process can run on.

mod filesystem;
mod inodes;
mod mount;
mod overlay;

pub use mount::{fuse_available, CrashFs, CrashFsError, MountedCrashFs};
