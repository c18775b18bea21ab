//! Socket files removed when the process exits, however it exits (a normal return from main,
//! `std::process::exit` from a dead worker or a signal before serving): each path is unlinked
//! only if it is still the very file this process created (same device, inode and change time:
//! a file system reuses a freed inode number at once), because after a binary upgrade the new
//! process has bound a socket of its own at the same path. A process that handed its sockets
//! over forgets its paths altogether: they are the new process's from then on.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// Path and identity (device, inode, change time in ns) of each file to remove.
static FILES: Mutex<Vec<(PathBuf, Identity)>> = Mutex::new(Vec::new());

type Identity = (u64, u64, i128);

fn identity(path: &Path) -> Option<Identity> {
    let m = std::fs::symlink_metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
    ))
}
static HOOK: Once = Once::new();

extern "C" fn remove_all() {
    // try_lock: never block an exit on a thread that died holding the lock.
    if let Ok(files) = FILES.try_lock() {
        for (path, id) in files.iter() {
            if identity(path) == Some(*id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Removes `path` at exit, if it is still the file that is there now.
pub fn remove_at_exit(path: &Path) {
    let Some(id) = identity(path) else {
        return;
    };
    HOOK.call_once(|| {
        // SAFETY: registers a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(remove_all) };
    });
    FILES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((path.to_path_buf(), id));
}

/// Forgets every path: after a hand-over they belong to the new process.
pub fn forget_all() {
    FILES.lock().unwrap_or_else(|p| p.into_inner()).clear();
}
