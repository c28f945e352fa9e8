//! Mounting a crash filesystem in a background thread, and its handle: crash, count, unmount.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, Config, MountOption};

use crate::filesystem::{CrashFilesystem, Shared};

/// Threads serving FUSE requests: a member's log flusher, sled's flusher and its readers work
/// at once.
const FUSE_THREADS: usize = 4;

/// How long dropping a mount waits for the kernel to end its session.
const UNMOUNT_WAIT: Duration = Duration::from_secs(10);

/// What can go wrong with a crash filesystem.
#[derive(Debug, thiserror::Error)]
pub enum CrashFsError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("mounting a crash filesystem at {mountpoint} over {backing}")]
    Mount {
        mountpoint: PathBuf,
        backing: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("dropping the un-synced data of the crash filesystem at {mountpoint}")]
    Crash {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Whether this machine can mount FUSE filesystems at all (`/dev/fuse` exists).
pub fn fuse_available() -> bool {
    Path::new("/dev/fuse").exists()
}

/// The entry point: [`CrashFs::mount`].
#[derive(Debug)]
pub struct CrashFs;

impl CrashFs {
    /// Mounts a crash filesystem over the directory `backing` at the directory `mountpoint`,
    /// served by threads of this process until the returned handle is dropped. The backing
    /// directory holds what was synced; it must not be changed except through the mount
    /// while mounted.
    ///
    /// As root the mount is made with mount(2) directly; otherwise through `fusermount3`
    /// (Debian's `fuse3`). A process killed before it unmounts leaves a dead mount behind
    /// (`umount` clears it). fusermount3's `auto_unmount` is meant to clean up after such a
    /// process, but on this project's machines the mount outlived the process all the same,
    /// and every unmount waited seconds for the session to end.
    pub fn mount(backing: &Path, mountpoint: &Path) -> Result<MountedCrashFs, CrashFsError> {
        for dir in [backing, mountpoint] {
            if !dir.is_dir() {
                return Err(CrashFsError::NotADirectory(dir.to_owned()));
            }
        }
        let mount_error = |source| CrashFsError::Mount {
            mountpoint: mountpoint.to_owned(),
            backing: backing.to_owned(),
            source,
        };
        let backing = backing.canonicalize().map_err(mount_error)?;
        let shared = Arc::new(Shared::new(backing.clone()).map_err(mount_error)?);
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("crashfs:{}", backing.display())),
            MountOption::Subtype("rampart-crashfs".into()),
            MountOption::DefaultPermissions,
            MountOption::NoAtime,
        ];
        config.n_threads = Some(FUSE_THREADS);
        config.clone_fd = true;
        let filesystem = CrashFilesystem {
            shared: shared.clone(),
        };
        let session = fuser::spawn_mount(filesystem, mountpoint, &config).map_err(mount_error)?;
        Ok(MountedCrashFs {
            shared,
            session: Some(session),
            mountpoint: mountpoint.to_owned(),
            backing,
        })
    }
}

/// A mounted crash filesystem. Dropping it unmounts it (the processes using it must be gone).
#[derive(Debug)]
pub struct MountedCrashFs {
    shared: Arc<Shared>,
    /// `None` once unmounted.
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
}

impl MountedCrashFs {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory that holds what was synced.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Cuts the power: drops every change of file data not synced, so that every file reads
    /// what was last synced (a file created and never synced reads empty). Names created,
    /// renamed or removed stay as they are (see the crate's model).
    ///
    /// The processes using the mount must be dead already (killed with SIGKILL): a live one
    /// would see its files change under it, which no power loss does. The mount stays, ready
    /// for them to start again.
    pub fn crash(&self) -> Result<(), CrashFsError> {
        let mut inodes = self.shared.inodes.lock();
        for file in inodes.open_files() {
            file.overlay
                .lock()
                .crash(&file.backing)
                .map_err(|source| CrashFsError::Crash {
                    mountpoint: self.mountpoint.clone(),
                    source,
                })?;
        }
        inodes.evict_unused();
        Ok(())
    }

    /// Freezes the disk, as one that stops answering does: from now on every read, write and
    /// sync of file data waits until [`MountedCrashFs::thaw`] (names and metadata still pass).
    /// A process waiting on it cannot die meanwhile, not even of SIGKILL: the kernel waits
    /// for the filesystem's answer to a request already handed over, as it waits for a real
    /// disk.
    pub fn freeze(&self) {
        self.shared.set_frozen(true);
    }

    /// Ends [`MountedCrashFs::freeze`]: what waited goes on. Unmounting thaws too.
    pub fn thaw(&self) {
        self.shared.set_frozen(false);
    }

    /// Bytes written through the mount and not yet synced: what a crash now would lose.
    pub fn unsynced_bytes(&self) -> u64 {
        let files = self.shared.inodes.lock().open_files();
        files
            .iter()
            .map(|f| f.overlay.lock().unsynced_bytes())
            .sum()
    }

    /// Unmounts, and waits (up to 10 s) for the kernel to end the session. Un-synced data is
    /// dropped, as by a crash.
    pub fn unmount(mut self) {
        self.unmount_now();
    }

    fn unmount_now(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        // Requests waiting on a freeze would keep the session from ending.
        self.thaw();
        // Dropping the session's mount (at the end of this block) unmounts; the kernel then
        // ends the session and its threads return.
        let guard = {
            let session = session;
            let BackgroundSession { guard, .. } = session;
            guard
        };
        let deadline = Instant::now() + UNMOUNT_WAIT;
        while !guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if guard.is_finished() {
            let _ = guard.join();
        }
    }
}

impl Drop for MountedCrashFs {
    fn drop(&mut self) {
        self.unmount_now();
    }
}
