//! Thread-per-core bootstrap: one OS thread, one monoio runtime, one future per core.
//!
//! Every binary uses this so that driver choice, pinning, naming and the "a dead worker takes the
//! process down" rule are the same everywhere.

use std::cell::Cell;
use std::future::Future;
use std::sync::Arc;

/// Which monoio driver a worker runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    IoUring,
    Epoll,
}

impl IoDriver {
    pub fn name(self) -> &'static str {
        match self {
            IoDriver::IoUring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }

    /// The driver of the runtime this thread runs, if it was started by [`run_workers`] or
    /// [`block_on`].
    pub fn current() -> Option<IoDriver> {
        CURRENT_DRIVER.with(|d| d.get())
    }

    /// True when sockets handed to this thread's runtime must be non-blocking (epoll needs it;
    /// under io_uring a blocking socket saves the kernel a failed non-blocking attempt).
    pub fn wants_nonblocking() -> bool {
        IoDriver::current() != Some(IoDriver::IoUring)
    }
}

thread_local! {
    static CURRENT_DRIVER: Cell<Option<IoDriver>> = const { Cell::new(None) };
    static TASK_RUN: Cell<Option<TaskRun>> = const { Cell::new(None) };
    static RUNTIME_ID: Cell<u64> = const { Cell::new(0) };
}

/// Tells this thread's runtimes apart (a test may run several, one after the other): per-core
/// state bound to a runtime, such as its tasks, is made again in the next one.
pub fn runtime_id() -> u64 {
    RUNTIME_ID.with(|c| c.get())
}

/// When the kernel runs an io_uring's completion work (the task work that finishes a receive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRun {
    /// `DEFER_TASKRUN | SINGLE_ISSUER` (6.1+): completion work waits for the ring's own
    /// `io_uring_enter` with GETEVENTS, where it runs in one batch, and is never run by other
    /// syscalls or interrupts the thread. monoio's busy path submits without GETEVENTS, so this
    /// ring, like the COOP one, relies on no task yielding forever.
    Defer,
    /// `COOP_TASKRUN | TASKRUN_FLAG` (5.19+): completions run at the thread's next kernel entry
    /// instead of by interrupting it (measured: ~20-35% less server CPU per request under load).
    Coop,
}

impl TaskRun {
    pub fn name(self) -> &'static str {
        match self {
            TaskRun::Defer => "defer",
            TaskRun::Coop => "coop",
        }
    }

    /// The setup this thread's runtime was built with (None: a plain ring, or epoll).
    pub fn current() -> Option<TaskRun> {
        TASK_RUN.with(|t| t.get())
    }

    /// The setups to try, best first. `LB_URING_TASKRUN=coop` starts at COOP_TASKRUN (an escape
    /// hatch, and what the benchmarks compare against).
    fn preferred() -> &'static [TaskRun] {
        match std::env::var("LB_URING_TASKRUN").as_deref() {
            Ok("coop") => &[TaskRun::Coop],
            _ => &[TaskRun::Defer, TaskRun::Coop],
        }
    }

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        match self {
            TaskRun::Defer => b.setup_single_issuer().setup_defer_taskrun(),
            TaskRun::Coop => b.setup_coop_taskrun().setup_taskrun_flag(),
        };
        b
    }
}

/// How to start the workers.
#[derive(Clone, Debug)]
pub struct WorkerOpts {
    /// Thread name prefix: threads are named `{name}-{i}`.
    pub name: String,
    /// Number of worker threads (>= 1).
    pub cores: usize,
    /// Pin worker i to the i-th CPU of this process's affinity mask.
    pub pin: bool,
    /// io_uring submission queue size.
    pub ring_entries: u32,
}

impl WorkerOpts {
    pub fn new(name: &str, cores: usize) -> Self {
        WorkerOpts {
            name: name.to_string(),
            cores: cores.max(1),
            pin: false,
            ring_entries: DEFAULT_RING_ENTRIES,
        }
    }
}

/// Enough for thousands of in-flight operations per core; the kernel queues overflow (NODROP).
pub const DEFAULT_RING_ENTRIES: u32 = 4096;

/// What a worker knows about itself.
#[derive(Clone, Copy, Debug)]
pub struct WorkerCtx {
    pub index: usize,
    pub cores: usize,
    pub driver: IoDriver,
}

/// Runs `f(ctx)` on `opts.cores` threads, each inside its own monoio runtime, and returns the
/// outputs in worker order.
///
/// A worker that panics ends the whole process with exit code 70 after logging which worker died:
/// a half-dead process would keep a listener in the `SO_REUSEPORT` group that nobody serves.
pub fn run_workers<F, Fut, T>(opts: &WorkerOpts, f: F) -> std::io::Result<Vec<T>>
where
    F: Fn(WorkerCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let f = Arc::new(f);
    let cpus = if opts.pin { allowed_cpus() } else { Vec::new() };
    let mut handles = Vec::with_capacity(opts.cores);
    for index in 0..opts.cores {
        let f = f.clone();
        let cores = opts.cores;
        let entries = opts.ring_entries;
        let cpu = cpus.get(index % cpus.len().max(1)).copied();
        let name = format!("{}-{}", opts.name, index);
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let _guard = DeathGuard(name);
                if let Some(cpu) = cpu {
                    pin_to_cpu(cpu);
                }
                block_on_with(entries, index, move |driver| {
                    f(WorkerCtx {
                        index,
                        cores,
                        driver,
                    })
                })
            })?;
        handles.push(handle);
    }
    // A panicking worker exits the process from its DeathGuard, so join only sees clean results.
    Ok(handles
        .into_iter()
        .map(|h| h.join().expect("worker thread panicked"))
        .collect())
}

/// Runs one future on a fresh runtime on the current thread (tests, small tools). The future is
/// made inside the runtime because monoio timers and sockets bind to it when created.
pub fn block_on<Fut: Future>(make: impl FnOnce() -> Fut) -> Fut::Output {
    block_on_with(DEFAULT_RING_ENTRIES, 0, |_| make())
}

fn block_on_with<Fut: Future>(
    entries: u32,
    index: usize,
    make: impl FnOnce(IoDriver) -> Fut,
) -> Fut::Output {
    use monoio::{FusionRuntime, RuntimeBuilder};
    let build = |setup: Option<TaskRun>| {
        let mut b = RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(entries)
            .enable_timer();
        if let Some(setup) = setup {
            b = b.uring_builder(setup.builder());
        }
        b.build()
    };
    // The first setup the kernel takes (kernels before 6.1 refuse DEFER_TASKRUN, before 5.19
    // COOP_TASKRUN); a plain ring last.
    let mut built = Err(std::io::Error::other("no io_uring setup tried"));
    for &setup in TaskRun::preferred() {
        built = build(Some(setup));
        match &built {
            Ok(_) => {
                TASK_RUN.with(|t| t.set(Some(setup)));
                break;
            }
            Err(e) => tracing::debug!(error = %e, setup = setup.name(), "io_uring setup refused"),
        }
    }
    if built.is_err() {
        built = build(None);
    }
    let mut rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            // io_uring passed the probe but could not be set up (e.g. memlock limit): use epoll.
            tracing::warn!(worker = index, error = %e, "io_uring runtime failed to start, falling back to epoll");
            let rt = RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("cannot build even the epoll runtime");
            FusionRuntime::Legacy(rt)
        }
    };
    let driver = match rt {
        FusionRuntime::Uring(_) => IoDriver::IoUring,
        FusionRuntime::Legacy(_) => IoDriver::Epoll,
    };
    CURRENT_DRIVER.with(|d| d.set(Some(driver)));
    RUNTIME_ID.with(|c| c.set(c.get() + 1));
    if driver == IoDriver::Epoll
        && index == 0
        && std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_none()
    {
        tracing::warn!("io_uring is not available here (blocked by seccomp or an old kernel): running on epoll");
    }
    tracing::debug!(
        worker = index,
        driver = driver.name(),
        taskrun = TaskRun::current().map_or("none", TaskRun::name),
        "worker runtime started"
    );
    // `make` runs inside the runtime: monoio timers and sockets bind to it when created.
    rt.block_on(async move { make(driver).await })
}

struct DeathGuard(String);

impl Drop for DeathGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(worker = %self.0, "worker thread panicked: stopping the whole process");
            eprintln!(
                "fatal: worker {} died; exiting so that no listener is left unserved",
                self.0
            );
            std::process::exit(70);
        }
    }
}

/// CPUs in this process's affinity mask, in ascending order.
/// CPUs this process can use: those of its affinity mask, fewer when its cgroup's CPU quota
/// (`cpu.max`, a container's CPU limit) allows less; at least 1.
pub fn available_cpus() -> usize {
    let affinity = allowed_cpus().len().max(1);
    let quota = std::fs::read_to_string("/sys/fs/cgroup/cpu.max")
        .ok()
        .and_then(|s| cgroup_cpus(&s));
    quota.map_or(affinity, |q| q.min(affinity)).max(1)
}

/// CPUs a cgroup v2 `cpu.max` line ("QUOTA PERIOD", or "max PERIOD") allows, rounded up.
pub fn cgroup_cpus(cpu_max: &str) -> Option<usize> {
    let mut it = cpu_max.split_whitespace();
    let quota: u64 = it.next()?.parse().ok()?;
    let period: u64 = it.next()?.parse().ok()?;
    (period > 0).then(|| quota.div_ceil(period) as usize)
}

pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: as above; failure only means we stay unpinned, which we log.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "could not pin worker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_run_on_their_own_threads_and_return_in_order() {
        let opts = WorkerOpts::new("t-worker", 3);
        let out = run_workers(&opts, |ctx| async move {
            let name = std::thread::current().name().unwrap().to_string();
            assert_eq!(IoDriver::current(), Some(ctx.driver));
            (ctx.index, name)
        })
        .unwrap();
        assert_eq!(
            out,
            vec![
                (0, "t-worker-0".to_string()),
                (1, "t-worker-1".to_string()),
                (2, "t-worker-2".to_string())
            ]
        );
    }

    #[test]
    fn pinned_workers_still_run() {
        let mut opts = WorkerOpts::new("t-pinned", 2);
        opts.pin = true;
        let out = run_workers(&opts, |ctx| async move { ctx.index * 10 }).unwrap();
        assert_eq!(out, vec![0, 10]);
    }

    #[test]
    fn a_cgroup_quota_limits_the_cpus_and_max_does_not() {
        assert_eq!(cgroup_cpus("max 100000\n"), None);
        assert_eq!(cgroup_cpus("200000 100000\n"), Some(2));
        assert_eq!(cgroup_cpus("150000 100000"), Some(2));
        assert_eq!(cgroup_cpus("50000 100000"), Some(1));
        assert_eq!(cgroup_cpus("garbage"), None);
        assert!(available_cpus() >= 1);
    }

    /// A worker that panics must end the whole process (exit 70), never leave the others running.
    /// The test re-runs itself as a child process that does the panicking.
    #[test]
    fn a_panicking_worker_ends_the_process_with_exit_70() {
        if std::env::var_os("LB_COMMON_PANIC_CHILD").is_some() {
            let opts = WorkerOpts::new("t-dying", 2);
            let _ = run_workers(&opts, |ctx| async move {
                if ctx.index == 1 {
                    panic!("deliberate worker panic");
                }
                // The healthy worker would run forever; the dying one must stop the process.
                monoio::time::sleep(std::time::Duration::from_secs(30)).await;
            });
            unreachable!("run_workers returned although a worker panicked");
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                "runtime::tests::a_panicking_worker_ends_the_process_with_exit_70",
                "--nocapture",
            ])
            .env("LB_COMMON_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(70), "{stderr}");
        assert!(stderr.contains("worker t-dying-1 died"), "{stderr}");
    }

    #[test]
    fn timers_work_inside_block_on() {
        let t = std::time::Instant::now();
        block_on(|| monoio::time::sleep(std::time::Duration::from_millis(20)));
        assert!(t.elapsed() >= std::time::Duration::from_millis(20));
    }
}
