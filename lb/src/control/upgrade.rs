//! Zero-downtime binary upgrade, as HAProxy and Pingora do it: the running `lb` hands its
//! listening sockets to a new process over a Unix socket (SCM_RIGHTS), then drains. The sockets
//! never close, so connections queued on them are served by whichever process accepts them;
//! closing an `SO_REUSEPORT` socket instead would reset its queue.
//!
//! Protocol on the upgrade socket, one line each way:
//! new -> old `TAKEOVER`; old -> new `FDS <admin 0|1> <listener>=<sockets> ...` with the
//! descriptors attached (each listener's sockets in order, then the admin socket); new -> old
//! `STATE`; old -> new `STATE <length>` and that many bytes of JSON (the run-time state,
//! [`super::carry`]); new -> old `DRAIN` once its workers accept; old stops accepting, closes the
//! upgrade socket and lets its open connections finish. Listeners are matched by name: the new process binds those it does
//! not get, and leaves those the old one has but it does not configure.
//!
//! The socket hands over listening sockets, so it is guarded (DESIGN.md, Trust boundaries): by
//! default it lives in a directory only lb's user can write (`$XDG_RUNTIME_DIR/lb/`, `/run/lb/`
//! as root, else `$TMPDIR/lb-UID/`; created 0700, refused when someone else owns it or may write
//! to it); a socket file owned by another user is never used or replaced; each side checks the
//! other's uid (`SO_PEERCRED`); and the file is removed when the process exits.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpListener as StdListener;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::shared::{exit, Shared};

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Default path for the listen port: one upgrade socket per lb instance on a machine, in lb's
/// private runtime directory (created if missing).
pub fn default_path(port: u16) -> io::Result<PathBuf> {
    Ok(private_dir()?.join(format!("upgrade-{port}.sock")))
}

/// `$XDG_RUNTIME_DIR/lb`, else `/run/lb` for root, else `$TMPDIR/lb-UID`: created 0700, and
/// refused unless it is a directory of lb's user that nobody else may write to.
pub fn private_dir() -> io::Result<PathBuf> {
    let uid = euid();
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(x) if x.is_absolute() => x.join("lb"),
        _ if uid == 0 => PathBuf::from("/run/lb"),
        _ => std::env::temp_dir().join(format!("lb-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", dir.display()),
            ))
        }
    }
    let m = std::fs::symlink_metadata(&dir)?;
    if !m.is_dir() || m.uid() != uid || m.permissions().mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing {} for the upgrade socket: it must be a directory of uid {uid} that nobody else may write to (found uid {}, mode {:o}); remove it or pass --upgrade-socket",
                dir.display(),
                m.uid(),
                m.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(dir)
}

/// A socket file this old with nobody listening was left by an lb that was killed (SIGKILL, a
/// crash: no exit path ran). Younger ones are left alone: another lb may be between its bind and
/// its listen.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Removes the upgrade sockets in lb's private directory that nobody listens on any more, so that
/// killed lbs do not pile them up (2,079 had, from test runs that SIGKILL lb). Only files named
/// `upgrade-*.sock`, owned by lb's user, older than `min_age`, whose connect is refused.
/// Returns how many it removed.
pub fn sweep_stale(dir: &Path, min_age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("upgrade-") && name.ends_with(".sock")) {
            continue;
        }
        let path = e.path();
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old = m
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !m.file_type().is_socket() || m.uid() != euid() || !old {
            continue;
        }
        let dead = matches!(UnixStream::connect(&path),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused);
        if dead && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed upgrade sockets of lbs that are gone");
    }
    removed
}

/// An existing socket file at `path` must belong to lb's user: one planted by someone else (in a
/// shared directory, say) is neither connected to nor replaced.
fn check_owner(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.uid() != euid() => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "upgrade socket {} is owned by uid {}, not lb's uid {}: refusing to use it (someone else may have planted it)",
                path.display(),
                m.uid(),
                euid()
            ),
        )),
        _ => Ok(()),
    }
}

/// The uid of the process at the other end of a Unix socket.
fn peer_uid(conn: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the length we pass.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Only a process of lb's own user is at the other end.
fn check_peer(conn: &UnixStream, who: &str) -> io::Result<()> {
    let uid = peer_uid(conn)?;
    if uid != euid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the {who} on the upgrade socket runs as uid {uid}, not lb's uid {}: refused",
                euid()
            ),
        ));
    }
    Ok(())
}

/// Whether an lb already serves the upgrade socket at `path` (the caller then refuses to start a
/// second one beside it, unless it is taking over).
pub fn answers(path: &Path) -> bool {
    check_owner(path).is_ok() && UnixStream::connect(path).is_ok()
}

/// Old side: serves one takeover on `path` (a stale file from a dead process is replaced).
pub fn serve(path: PathBuf, shared: Arc<Shared>, admin_fd: Option<RawFd>) -> io::Result<()> {
    let listener = bind_unix(&path)?;
    exit::remove_at_exit(&path);
    tracing::info!(path = %path.display(), "upgrade socket ready: start the new binary with --takeover");
    std::thread::Builder::new()
        .name("lb-upgrade".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade socket accept failed");
                        continue;
                    }
                };
                if let Err(e) = check_peer(&conn, "new process") {
                    tracing::warn!(error = %e, "takeover attempt refused; still serving");
                    continue;
                }
                match hand_over(conn, &shared, admin_fd) {
                    Ok(()) => {
                        // The new process owns the paths now (it binds them after DRAIN); do
                        // not unlink them from under it.
                        exit::forget_all();
                        tracing::info!(
                            grace_ms = shared.live.load().shutdown.grace.as_millis() as u64,
                            "listeners handed to the new process: draining"
                        );
                        shared.lifecycle.stop(shared.live.load().shutdown.grace);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "takeover attempt failed; still serving"),
                }
            }
        })?;
    Ok(())
}

fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    check_owner(path)?;
    match UnixListener::bind(path) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another lb serves the upgrade socket {}: use --takeover to replace it",
                        path.display()
                    ),
                ));
            }
            // Left by a process that died: nobody listens, so it is safe to replace.
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        Err(e) => Err(e),
    }
}

fn hand_over(conn: UnixStream, shared: &Shared, admin_fd: Option<RawFd>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.trim() != "TAKEOVER" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected request {line:?}"),
        ));
    }
    let routing = shared.routing.load();
    let mut fds: Vec<RawFd> = Vec::new();
    let mut header = format!("FDS {}", admin_fd.is_some() as u8);
    for l in &routing.listeners {
        header.push_str(&format!(" {}={}", l.name, l.fds.len()));
        fds.extend(&l.fds);
    }
    header.push('\n');
    fds.extend(admin_fd);
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors to hand over, more than the {MAX_FDS} one message carries",
            fds.len()
        )));
    }
    send_fds(&conn, header.as_bytes(), &fds)?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != "STATE" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("new process did not ask for the state: {line:?}"),
        ));
    }
    // Collected now, after the sockets went: as close as possible to the moment it takes over.
    let state = serde_json::to_vec(&super::carry::collect(shared)).map_err(io::Error::other)?;
    (&conn).write_all(format!("STATE {}\n", state.len()).as_bytes())?;
    (&conn).write_all(&state)?;
    line.clear();
    reader.read_line(&mut line)?;
    if line.trim() != "DRAIN" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("new process did not confirm: {line:?}"),
        ));
    }
    Ok(())
}

/// New side: what the old process handed over, and the connection to confirm on.
pub struct Takeover {
    /// Each listener's name and sockets.
    pub listeners: Vec<(String, Vec<StdListener>)>,
    /// The old process's run-time state, to apply before accepting.
    pub carried: super::carry::Carried,
    pub admin: Option<StdListener>,
    conn: UnixStream,
}

impl Takeover {
    /// Tells the old process to drain; call once the workers accept.
    pub fn confirm(mut self) -> io::Result<()> {
        self.conn.write_all(b"DRAIN\n")
    }
}

pub fn take_over(path: &Path) -> io::Result<Takeover> {
    check_owner(path)?;
    // Right after an upgrade the newest process takes the socket path over from the one it
    // replaced: give that a moment instead of failing at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let conn = loop {
        match UnixStream::connect(path) {
            Ok(c) => break c,
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("no running lb on upgrade socket {}: {e}", path.display()),
                ))
            }
        }
    };
    check_owner(path)?;
    check_peer(&conn, "running lb")?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    (&conn).write_all(b"TAKEOVER\n")?;
    let (header, fds) = recv_fds(&conn)?;
    let header = String::from_utf8_lossy(&header).to_string();
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad takeover answer {header:?}: {why}"),
        )
    };
    let mut parts = header.split_whitespace();
    if parts.next() != Some("FDS") {
        return Err(bad("not FDS"));
    }
    let admin = match parts.next() {
        Some("1") => true,
        Some("0") => false,
        _ => return Err(bad("no admin flag")),
    };
    let mut groups: Vec<(String, usize)> = Vec::new();
    for p in parts {
        let (name, n) = p.split_once('=').ok_or_else(|| bad("not name=count"))?;
        let n: usize = n.parse().map_err(|_| bad("bad count"))?;
        groups.push((name.to_string(), n));
    }
    let want: usize = groups.iter().map(|g| g.1).sum::<usize>() + admin as usize;
    if fds.len() != want || groups.is_empty() {
        // SAFETY: close what we received and will not use.
        fds.iter().for_each(|&fd| unsafe {
            libc::close(fd);
        });
        return Err(bad(&format!(
            "expected {want} descriptors, got {}",
            fds.len()
        )));
    }
    // SAFETY: each fd was just received with SCM_RIGHTS and is owned by nobody else here.
    let mut all = fds
        .into_iter()
        .map(|fd| unsafe { StdListener::from_raw_fd(fd) });
    let listeners = groups
        .into_iter()
        .map(|(name, n)| (name, all.by_ref().take(n).collect()))
        .collect();
    let admin = if admin { all.next() } else { None };
    let carried = read_state(&conn)?;
    Ok(Takeover {
        listeners,
        carried,
        admin,
        conn,
    })
}

/// Asks for and reads the old process's run-time state (at most 64 MiB of JSON).
fn read_state(conn: &UnixStream) -> io::Result<super::carry::Carried> {
    use std::io::Read;
    (&*conn).write_all(b"STATE\n")?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let len: usize = line
        .trim()
        .strip_prefix("STATE ")
        .and_then(|n| n.parse().ok())
        .filter(|&n| n <= 64 << 20)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad state answer {line:?}"),
            )
        })?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// After confirming: take the upgrade socket path over from the old process, so that the next
/// upgrade finds this one. Retries while the old process still holds it.
pub fn serve_after_takeover(path: PathBuf, shared: Arc<Shared>, admin_fd: Option<RawFd>) {
    std::thread::spawn(move || {
        for _ in 0..500 {
            // The old process stops serving the path after DRAIN; wait until nobody answers.
            if UnixStream::connect(&path).is_err() {
                if let Err(e) = serve(path.clone(), shared.clone(), admin_fd) {
                    tracing::warn!(error = %e, "cannot serve the upgrade socket");
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(path = %path.display(), "old process still holds the upgrade socket; further upgrades need a restart");
    });
}

const MAX_FDS: usize = 64;

/// One data buffer plus a control buffer for the descriptors. The result points into both, so
/// they must outlive its use.
fn msghdr(iov: &mut libc::iovec, cbuf: &mut [u8]) -> libc::msghdr {
    // SAFETY: msghdr is plain data; every field we rely on is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.len() as _;
    msg
}

fn send_fds(conn: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS);
    // SAFETY: msghdr/cmsghdr built per cmsg(3); buffers outlive the sendmsg call.
    unsafe {
        let space = libc::CMSG_SPACE(std::mem::size_of_val(fds) as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut _,
            iov_len: data.len(),
        };
        let msg = msghdr(&mut iov, &mut cbuf);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        if libc::sendmsg(conn.as_raw_fd(), &msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fds(conn: &UnixStream) -> io::Result<(Vec<u8>, Vec<RawFd>)> {
    // SAFETY: as above; received descriptors are read out of the control buffer.
    unsafe {
        let mut data = vec![0u8; 256];
        let space = libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<RawFd>()) as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut msg = msghdr(&mut iov, &mut cbuf);
        let n = libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n <= 0 {
            return Err(if n == 0 {
                io::ErrorKind::UnexpectedEof.into()
            } else {
                io::Error::last_os_error()
            });
        }
        data.truncate(n as usize);
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                let p = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for i in 0..count {
                    fds.push(std::ptr::read_unaligned(p.add(i)));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok((data, fds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_of_the_same_user_passes_the_uid_check() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(peer_uid(&a).unwrap(), euid());
        assert!(check_peer(&b, "test").is_ok());
    }

    #[test]
    fn a_socket_file_of_another_user_is_refused() {
        if euid() != 0 {
            return; // only root can make a file of another user
        }
        let path = std::env::temp_dir().join(format!("lb-owner-test-{}", std::process::id()));
        let _l = UnixListener::bind(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
        let e = check_owner(&path).unwrap_err().to_string();
        assert!(e.contains("uid 65534"), "{e}");
        assert!(bind_unix(&path).is_err(), "never replaced");
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_sweep_removes_only_dead_upgrade_sockets_old_enough() {
        let dir = std::env::temp_dir().join(format!("lb-sweep-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Bound then dropped: the file stays and nobody listens (what a SIGKILL leaves).
        drop(UnixListener::bind(dir.join("upgrade-1.sock")).unwrap());
        let live = UnixListener::bind(dir.join("upgrade-2.sock")).unwrap();
        drop(UnixListener::bind(dir.join("admin.sock")).unwrap());
        std::fs::write(dir.join("upgrade-3.sock"), b"not a socket").unwrap();
        // Too young: left alone (another lb may be between bind and listen).
        assert_eq!(sweep_stale(&dir, Duration::from_secs(3600)), 0);
        assert!(dir.join("upgrade-1.sock").exists());
        assert_eq!(sweep_stale(&dir, Duration::ZERO), 1);
        assert!(!dir.join("upgrade-1.sock").exists(), "the dead one goes");
        assert!(dir.join("upgrade-2.sock").exists(), "a live one stays");
        assert!(dir.join("admin.sock").exists(), "other names stay");
        assert!(dir.join("upgrade-3.sock").exists(), "other file types stay");
        drop(live);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn descriptors_cross_a_unix_socket_and_still_listen() {
        let (a, b) = UnixStream::pair().unwrap();
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        send_fds(&a, b"FDS 1 0\n", &[l.as_raw_fd()]).unwrap();
        let (data, fds) = recv_fds(&b).unwrap();
        assert_eq!(data, b"FDS 1 0\n");
        assert_eq!(fds.len(), 1);
        drop(l);
        // SAFETY: the received descriptor is ours now.
        let l2 = unsafe { StdListener::from_raw_fd(fds[0]) };
        assert_eq!(
            l2.local_addr().unwrap(),
            addr,
            "the same socket, still bound"
        );
        let _c = std::net::TcpStream::connect(addr).unwrap();
        l2.accept().unwrap();
    }
}
