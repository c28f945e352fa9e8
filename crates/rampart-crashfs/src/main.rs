//! `rampart-crashfs BACKING MOUNTPOINT`: mounts a crash filesystem by hand, then reads
//! commands on standard input: `crash` (drop every un-synced change; stop the programs using
//! the mount first), `unsynced` (bytes a crash would lose), `quit` or end of input (unmount).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use rampart_crashfs::CrashFs;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        eprintln!("usage: rampart-crashfs BACKING MOUNTPOINT");
        return ExitCode::from(2);
    };
    let mount = match CrashFs::mount(backing, mountpoint) {
        Ok(mount) => mount,
        Err(e) => {
            eprintln!("rampart-crashfs: {}", error_chain(&e));
            return ExitCode::FAILURE;
        }
    };
    println!(
        "mounted {} over {}; commands: crash, unsynced, quit",
        mountpoint.display(),
        backing.display()
    );
    for line in std::io::stdin().lock().lines() {
        match line.as_deref().map(str::trim) {
            Ok("crash") => match mount.crash() {
                Ok(()) => println!("crashed: every file reads what was last synced"),
                Err(e) => eprintln!("rampart-crashfs: {}", error_chain(&e)),
            },
            Ok("unsynced") => println!("{} bytes not synced", mount.unsynced_bytes()),
            Ok("quit") | Err(_) => break,
            Ok(other) => eprintln!("unknown command {other:?}: crash, unsynced, quit"),
        }
    }
    mount.unmount();
    ExitCode::SUCCESS
}

/// The error and its causes, on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}
