//! Local backend replicas that `lb` starts and supervises: the built-in default when no backend
//! is configured, so that one command gives a working balancer on a fresh machine.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ReplicaSpec;

const POLL: Duration = Duration::from_millis(200);
/// A replica that exits sooner than this after starting is restarted with a growing delay.
const QUICK_EXIT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The `backend` binary: `LB_BACKEND_BIN`, else next to the running `lb`.
pub fn backend_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LB_BACKEND_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let path = exe.with_file_name("backend");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "no backend configured and no `backend` binary at {} to start local replicas: build it with `cargo build --release` or pass --backend host:port",
            path.display()
        ))
    }
}

/// What to run: the `backend` binary (`--listen ADDR --id ID`), or a configured command line
/// with `{port}`, `{host}` and `{id}` substituted.
#[derive(Clone, Debug)]
pub enum Program {
    Backend(PathBuf),
    Command(Vec<String>),
}

/// Tells whether the health checks currently hold a replica down.
pub type DownProbe = Arc<dyn Fn(&str) -> bool + Send + Sync>;
/// Tells whether lb is stopping: then replicas that exit are not restarted.
pub type StopProbe = Arc<dyn Fn() -> bool + Send + Sync>;
/// Called once a restarted replica accepts connections again, with its id.
pub type BackHook = Arc<dyn Fn(&str) + Send + Sync>;

/// A replica held down by its checks this long after starting is killed and restarted.
const CHECK_GRACE: Duration = Duration::from_secs(3);

/// While a restarted replica is not yet known to listen, it is probed this often...
const ANNOUNCE_POLL: Duration = Duration::from_millis(10);
/// ...for at most this long; after that the health checks alone decide.
const ANNOUNCE_LIMIT: Duration = Duration::from_secs(5);

struct Replica {
    spec: ReplicaSpec,
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    restart_at: Option<Instant>,
    /// Restarted, and lb's cores not yet told that it listens again.
    announce: bool,
}

/// The local replicas lb runs: those it started with, and those the seed API's `POST /add`
/// starts later (and `DELETE /rm` stops).
pub struct Supervisor {
    /// What to run; None when there is nothing to run (no `backend` binary beside lb and no
    /// `replicas.command`): then only the configured replicas (none) exist.
    program: Option<Program>,
    replicas: std::sync::Mutex<Vec<Replica>>,
}

impl Supervisor {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Replica>> {
        self.replicas.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts one more replica; it is supervised like the others from now on.
    pub fn add(&self, spec: ReplicaSpec) -> std::io::Result<()> {
        let program = self.program.as_ref().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no `backend` binary beside lb and no replicas.command: lb cannot start replicas",
            )
        })?;
        let child = spawn(program, &spec)?;
        tracing::info!(id = %spec.id, addr = %spec.addr, pid = child.id(), "started local backend replica");
        self.lock().push(Replica {
            spec,
            child: Some(child),
            started: Instant::now(),
            backoff: Duration::from_millis(100),
            restart_at: None,
            announce: false,
        });
        Ok(())
    }

    /// Stops the replica `id` (SIGTERM, and SIGKILL if it has not exited 5 s later, on a thread
    /// of its own so that the caller never waits); false if lb runs none of that name.
    pub fn remove(&self, id: &str) -> bool {
        let r = {
            let mut all = self.lock();
            match all.iter().position(|r| r.spec.id == id) {
                Some(i) => all.remove(i),
                None => return false,
            }
        };
        if let Some(mut child) = r.child {
            // SAFETY: kill(2) of a child this process started.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let id = id.to_string();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(5);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = child.kill();
                let _ = child.wait();
                tracing::info!(id, "stopped local backend replica");
            });
        }
        true
    }

    /// The replicas' ids and addresses, in the order they were started.
    pub fn specs(&self) -> Vec<ReplicaSpec> {
        self.lock().iter().map(|r| r.spec.clone()).collect()
    }

    pub fn can_start(&self) -> bool {
        self.program.is_some()
    }
}

/// Starts the replicas and a thread that restarts any that exits. Children get SIGTERM when
/// `lb` dies (PR_SET_PDEATHSIG), so none is left behind.
pub fn start(
    program: Option<Program>,
    specs: Vec<ReplicaSpec>,
    down: DownProbe,
    stopping: StopProbe,
    back: BackHook,
) -> std::io::Result<std::sync::Arc<Supervisor>> {
    let sup = std::sync::Arc::new(Supervisor {
        program,
        replicas: std::sync::Mutex::new(Vec::new()),
    });
    for spec in specs {
        sup.add(spec)?;
    }
    let s = sup.clone();
    std::thread::Builder::new()
        .name("lb-replicas".into())
        .spawn(move || supervise(s, down, stopping, back))?;
    Ok(sup)
}

fn spawn(program: &Program, spec: &ReplicaSpec) -> std::io::Result<Child> {
    let mut cmd = match program {
        Program::Backend(binary) => {
            let mut c = Command::new(binary);
            c.args(["--listen", &spec.addr.to_string(), "--id", &spec.id]);
            c
        }
        Program::Command(argv) => {
            let fill = |a: &String| {
                a.replace("{port}", &spec.addr.port().to_string())
                    .replace("{host}", &spec.addr.ip().to_string())
                    .replace("{id}", &spec.id)
            };
            let mut c = Command::new(fill(&argv[0]));
            c.args(argv[1..].iter().map(fill));
            c
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            // lb blocks SIGTERM/SIGINT/SIGHUP/SIGUSR1 in every thread (one thread takes them with
            // sigwait); a child would inherit that mask and ignore both PDEATHSIG and kill.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

fn supervise(
    sup: std::sync::Arc<Supervisor>,
    down: DownProbe,
    stopping: StopProbe,
    back: BackHook,
) {
    loop {
        let announcing = sup.lock().iter().any(|r| r.announce);
        std::thread::sleep(if announcing { ANNOUNCE_POLL } else { POLL });
        if stopping() {
            // Shutting down (a signal may have reached the replicas too): no restarts.
            continue;
        }
        let Some(program) = &sup.program else {
            continue;
        };
        let now = Instant::now();
        let mut replicas = sup.lock();
        for r in replicas.iter_mut() {
            if r.announce && r.child.is_some() {
                // The cores may still be skipping it after the refused connects of its death
                // (passive ejection, up to seconds): tell them as soon as it listens.
                if std::net::TcpStream::connect_timeout(&r.spec.addr, ANNOUNCE_POLL).is_ok() {
                    r.announce = false;
                    tracing::info!(id = %r.spec.id, after_ms = now.duration_since(r.started).as_millis() as u64,
                        "restarted local backend replica accepts connections; back in rotation");
                    back(&r.spec.id);
                } else if now.duration_since(r.started) > ANNOUNCE_LIMIT {
                    r.announce = false;
                }
            }
            if let Some(child) = &mut r.child {
                match child.try_wait() {
                    Ok(None) if now.duration_since(r.started) > CHECK_GRACE && down(&r.spec.id) => {
                        // Alive but failing its checks: replace it like one that exited.
                        tracing::warn!(id = %r.spec.id, pid = child.id(), "local backend replica fails its health checks; restarting it");
                        let _ = child.kill();
                        let _ = child.wait();
                        r.child = None;
                        r.backoff = Duration::from_millis(100);
                        r.restart_at = Some(now);
                        r.started = now;
                    }
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        let quick = now.duration_since(r.started) < QUICK_EXIT;
                        r.backoff = if quick {
                            (r.backoff * 2).min(MAX_BACKOFF)
                        } else {
                            Duration::from_millis(100)
                        };
                        tracing::warn!(id = %r.spec.id, %status, restart_in_ms = r.backoff.as_millis() as u64, "local backend replica exited; restarting it");
                        r.child = None;
                        r.restart_at = Some(now + r.backoff);
                    }
                    Err(e) => tracing::warn!(id = %r.spec.id, error = %e, "cannot check replica"),
                }
            }
            if r.child.is_none() && r.restart_at.is_some_and(|t| now >= t) {
                match spawn(program, &r.spec) {
                    Ok(child) => {
                        tracing::info!(id = %r.spec.id, addr = %r.spec.addr, pid = child.id(), "restarted local backend replica");
                        r.child = Some(child);
                        r.started = now;
                        r.restart_at = None;
                        r.announce = true;
                    }
                    Err(e) => {
                        r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
                        r.restart_at = Some(now + r.backoff);
                        tracing::error!(id = %r.spec.id, error = %e, "cannot restart replica");
                    }
                }
            }
        }
    }
}
