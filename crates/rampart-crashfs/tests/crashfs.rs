//! The crash filesystem through a real mount: files written and read by this process through
//! the kernel, then a crash, then what is left. Each test skips (and says so) only where the
//! machine has no `/dev/fuse`; anything else that keeps it from mounting fails it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rampart_crashfs::{CrashFs, MountedCrashFs};
use tempfile::TempDir;

/// A crash filesystem mounted at `<tmp>/mnt` over `<tmp>/backing`, or `None` (printed) where
/// there is no FUSE.
struct Mounted {
    fs: MountedCrashFs,
    dir: TempDir,
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.fs.mountpoint().join(name)
    }

    fn backing(&self, name: &str) -> PathBuf {
        self.dir.path().join("backing").join(name)
    }
}

fn mount() -> Option<Mounted> {
    if !rampart_crashfs::fuse_available() {
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("this test");
        println!("SKIPPED {test}: /dev/fuse is missing, so no FUSE filesystem can be mounted here");
        return None;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let backing = dir.path().join("backing");
    let mountpoint = dir.path().join("mnt");
    fs::create_dir(&backing).unwrap();
    fs::create_dir(&mountpoint).unwrap();
    let fs = CrashFs::mount(&backing, &mountpoint)
        .unwrap_or_else(|e| panic!("mounting a crash filesystem: {e:?}"));
    Some(Mounted { fs, dir })
}

fn create(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn data_written_then_fsynced_survives_a_crash() {
    let Some(m) = mount() else { return };
    let path = m.path("synced");
    let mut file = create(&path);
    file.write_all(b"durable bytes").unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert_eq!(m.fs.unsynced_bytes(), 0);
    assert_eq!(read(&m.backing("synced")), b"durable bytes", "on the disk");
    m.fs.crash().unwrap();
    assert_eq!(read(&path), b"durable bytes");
}

#[test]
fn data_written_and_not_synced_is_read_back_then_lost() {
    let Some(m) = mount() else { return };
    let path = m.path("unsynced");
    let mut file = create(&path);
    file.write_all(b"in the page cache only").unwrap();
    // Another handle, and a new open after close, read it as from the page cache.
    assert_eq!(read(&path), b"in the page cache only");
    drop(file);
    assert_eq!(read(&path), b"in the page cache only");
    assert_eq!(fs::metadata(&path).unwrap().len(), 22);
    assert_eq!(m.fs.unsynced_bytes(), 22);
    assert_eq!(read(&m.backing("unsynced")), b"", "nothing on the disk yet");
    m.fs.crash().unwrap();
    assert!(path.exists(), "the name passed through");
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        0,
        "a new file keeps zero length"
    );
    assert_eq!(read(&path), b"");
    assert_eq!(m.fs.unsynced_bytes(), 0);
}

#[test]
fn a_partly_synced_file_keeps_the_synced_part_only() {
    let Some(m) = mount() else { return };
    let path = m.path("log");
    let mut file = create(&path);
    file.write_all(b"AAAA").unwrap();
    file.sync_data().unwrap();
    file.write_all(b"BBBB").unwrap();
    // An overwrite inside the synced part is lost too.
    file.write_all_at(b"a", 0).unwrap();
    assert_eq!(read(&path), b"aAAABBBB");
    m.fs.crash().unwrap();
    assert_eq!(read(&path), b"AAAA");
    // The file goes on from there, like a log reopened after the crash.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"CC").unwrap();
    file.sync_data().unwrap();
    m.fs.crash().unwrap();
    assert_eq!(read(&path), b"AAAACC");
}

#[test]
fn truncations_are_data_lost_until_synced() {
    let Some(m) = mount() else { return };
    let path = m.path("cut");
    let file = create(&path);
    file.write_all_at(b"0123456789", 0).unwrap();
    file.sync_all().unwrap();
    file.set_len(4).unwrap();
    assert_eq!(read(&path), b"0123");
    // Growing it again reads zeros, not the old bytes.
    file.set_len(6).unwrap();
    assert_eq!(read(&path), b"0123\0\0");
    m.fs.crash().unwrap();
    assert_eq!(
        read(&path),
        b"0123456789",
        "the truncation was never synced"
    );
    drop(file);

    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(3).unwrap();
    file.write_all_at(b"x", 5).unwrap();
    file.sync_data().unwrap();
    m.fs.crash().unwrap();
    assert_eq!(read(&path), b"012\0\0x");
    assert_eq!(read(&m.backing("cut")), b"012\0\0x");

    // O_TRUNC on open is a truncation like any other.
    let mut file = create(&path);
    file.write_all(b"new").unwrap();
    assert_eq!(read(&path), b"new");
    m.fs.crash().unwrap();
    assert_eq!(read(&path), b"012\0\0x");
}

#[test]
fn a_synced_file_renamed_into_place_survives_a_crash() {
    let Some(m) = mount() else { return };
    fs::write(m.path("current"), b"").unwrap();
    {
        let mut old = OpenOptions::new()
            .write(true)
            .open(m.path("current"))
            .unwrap();
        old.write_all(b"old").unwrap();
        old.sync_all().unwrap();
    }
    let mut tmp = create(&m.path("current.tmp"));
    tmp.write_all(b"new contents").unwrap();
    tmp.sync_all().unwrap();
    drop(tmp);
    fs::rename(m.path("current.tmp"), m.path("current")).unwrap();
    assert_eq!(read(&m.path("current")), b"new contents");

    // A file renamed before it was synced keeps its new name, and loses its data.
    let mut unsynced = create(&m.path("unsynced.tmp"));
    unsynced.write_all(b"gone").unwrap();
    drop(unsynced);
    fs::create_dir(m.path("dir")).unwrap();
    fs::rename(m.path("unsynced.tmp"), m.path("dir/unsynced")).unwrap();
    assert_eq!(read(&m.path("dir/unsynced")), b"gone");

    m.fs.crash().unwrap();
    assert_eq!(read(&m.path("current")), b"new contents");
    assert!(!m.path("current.tmp").exists());
    assert_eq!(read(&m.path("dir/unsynced")), b"");
    assert_eq!(read(&m.backing("dir/unsynced")), b"");
}

#[test]
fn a_file_removed_and_made_again_starts_empty() {
    let Some(m) = mount() else { return };
    let path = m.path("again");
    create(&path).write_all(b"first, never synced").unwrap();
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    let mut file = create(&path);
    assert_eq!(read(&path), b"");
    file.write_all(b"second").unwrap();
    file.sync_all().unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut back = String::new();
    file.read_to_string(&mut back).unwrap();
    assert_eq!(back, "second");
    m.fs.crash().unwrap();
    assert_eq!(read(&path), b"second");
    assert_eq!(fs::read_dir(m.fs.mountpoint()).unwrap().count(), 1);
}

#[test]
fn many_files_written_from_many_threads_keep_what_each_synced() {
    let Some(m) = mount() else { return };
    let threads = 4;
    let files_per_thread = 25;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let dir = m.path(&format!("t{t}"));
            scope.spawn(move || {
                fs::create_dir(&dir).unwrap();
                for f in 0..files_per_thread {
                    let mut file = create(&dir.join(format!("f{f}")));
                    // 64 KiB and more: several FUSE writes each.
                    let synced = vec![b'a' + (f % 26) as u8; 65536 + f * 1000];
                    file.write_all(&synced).unwrap();
                    if f % 2 == 0 {
                        file.sync_data().unwrap();
                    }
                    file.write_all(b"tail, never synced").unwrap();
                }
            });
        }
    });
    let expected_unsynced: u64 = (0..files_per_thread)
        .map(|f| {
            18 + if f % 2 == 0 {
                0
            } else {
                65536 + f as u64 * 1000
            }
        })
        .sum::<u64>()
        * threads as u64;
    assert_eq!(m.fs.unsynced_bytes(), expected_unsynced);
    m.fs.crash().unwrap();
    assert_eq!(m.fs.unsynced_bytes(), 0);
    for t in 0..threads {
        for f in 0..files_per_thread {
            let content = read(&m.path(&format!("t{t}/f{f}")));
            if f % 2 == 0 {
                assert_eq!(content.len(), 65536 + f * 1000, "t{t}/f{f}");
                assert!(content.iter().all(|&b| b == b'a' + (f % 26) as u8));
            } else {
                assert!(content.is_empty(), "t{t}/f{f} was never synced");
            }
        }
    }
}

#[test]
fn a_frozen_disk_holds_every_sync_until_it_thaws() {
    let Some(mounted) = mount() else { return };
    let path = mounted.path("wal");
    let mut file = create(&path);
    file.write_all(b"before").unwrap();
    file.sync_all().unwrap();

    mounted.fs.freeze();
    let (done, synced) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        file.write_all(b" during").unwrap();
        file.sync_data().unwrap();
        done.send(()).unwrap();
    });
    // Frozen: the write and its sync wait, however long.
    assert!(
        synced
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err(),
        "a write and sync finished on a frozen disk"
    );
    // Names still pass while the data waits.
    assert!(mounted.path("wal").exists());

    mounted.fs.thaw();
    synced
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the sync finishes once the disk thaws");
    writer.join().unwrap();
    assert_eq!(read(&mounted.backing("wal")), b"before during");
}
