//! Orchestration: start one worker per core (lb_common::runtime), spawn the connection tasks,
//! print live progress from the per-core atomics, and merge the per-core results at the end.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_common::runtime::{run_workers, IoDriver, WorkerCtx, WorkerOpts};

use crate::args::{Config, Protocol, StopAt};
use crate::client::{connection, CoreCtx, Http, Proto, Shared, INTERRUPTED};
use crate::echo::Echo;
use crate::schedule::{split, Budget, Pacer, Plan};
use crate::stats::{merge, CoreStats, Progress, Totals};

/// Time between starting the workers and starting the load: runtimes come up and keep-alive
/// connections are opened in it, so neither lands in the measurement.
pub const LAUNCH_DELAY: Duration = Duration::from_millis(100);

/// Everything the report needs from a run.
#[derive(Debug)]
pub struct RunOutput {
    pub totals: Totals,
    pub drivers: Vec<IoDriver>,
    /// Measured wall time, seconds.
    pub duration_s: f64,
    /// When the measurement started (t = 0 of the timeline), in ms since the Unix epoch, so that
    /// other programs' logs can be lined up with the timeline.
    pub started_unix_ms: f64,
    /// CPU seconds the process used during the measurement (None if /proc is unreadable).
    pub cpu_seconds: Option<f64>,
    pub interrupted: bool,
    /// The run was ended early because no connection could be opened.
    pub aborted: bool,
}

/// Runs the load described by `cfg` and returns the merged results.
pub fn run(cfg: Config) -> std::io::Result<RunOutput> {
    let cfg = Arc::new(cfg);
    let cores = cfg.cores;
    let conns_of = |i: usize| split(cfg.conns as u64, cores, i) as usize;
    let active_of = |i: usize| match cfg.stop {
        StopAt::Requests(n) => conns_of(i).min(split(n, cores, i) as usize),
        StopAt::Duration(_) => conns_of(i),
    };
    let active: usize = (0..cores).map(active_of).sum();
    let shared = Arc::new(Shared::new(active));
    let progress: Arc<Vec<Arc<Progress>>> =
        Arc::new((0..cores).map(|_| Arc::new(Progress::default())).collect());

    install_sigint_handler();
    let cpu_before = lb_common::sysinfo::process_cpu_seconds();
    let launch = Instant::now() + LAUNCH_DELAY;
    let measure_start = launch + cfg.warmup;
    let started_unix_ms = unix_ms_at(measure_start);
    let end = match cfg.stop {
        StopAt::Duration(d) => Some(measure_start + d),
        StopAt::Requests(_) => None,
    };

    // The monitor samples CPU time when the measurement starts and prints progress on a terminal.
    let done = Arc::new(AtomicBool::new(false));
    let cpu_at_start = Arc::new(Mutex::new(cpu_before));
    let monitor = {
        let done = done.clone();
        let progress = progress.clone();
        let cpu_at_start = cpu_at_start.clone();
        let warmup = !cfg.warmup.is_zero();
        std::thread::Builder::new()
            .name("loadgen-monitor".into())
            .spawn(move || monitor(done, progress, measure_start, warmup, cpu_at_start))?
    };

    let mut opts = WorkerOpts::new("loadgen", cores);
    opts.pin = cfg.pin;
    let worker_cfg = cfg.clone();
    let worker_shared = shared.clone();
    let outputs = run_workers(&opts, move |ctx: WorkerCtx| {
        let cfg = worker_cfg.clone();
        let shared = worker_shared.clone();
        let progress = progress[ctx.index].clone();
        let first_conn: usize = (0..ctx.index)
            .map(|i| split(cfg.conns as u64, cfg.cores, i) as usize)
            .sum();
        worker(
            ctx,
            cfg,
            shared,
            progress,
            first_conn,
            launch,
            measure_start,
            end,
        )
    });
    done.store(true, Ordering::Relaxed);
    let _ = monitor.join();
    let outputs = outputs?;

    let cpu_after = lb_common::sysinfo::process_cpu_seconds();
    let cpu_start = *cpu_at_start.lock().unwrap_or_else(|e| e.into_inner());
    let drivers = outputs.iter().map(|(_, d)| *d).collect();
    let totals = merge(outputs.into_iter().map(|(s, _)| s).collect());
    let interrupted = INTERRUPTED.load(Ordering::Relaxed);
    let aborted = shared.abort.load(Ordering::Relaxed);

    let events = totals.last_event.map_or(Duration::ZERO, |t| {
        t.saturating_duration_since(measure_start)
    });
    let duration = match (cfg.stop, interrupted || aborted) {
        // A duration run lasts its duration plus whatever the last in-flight responses took.
        (StopAt::Duration(d), false) => events.max(d),
        _ => events,
    };
    Ok(RunOutput {
        totals,
        drivers,
        duration_s: duration.as_secs_f64(),
        started_unix_ms,
        cpu_seconds: match (cpu_start, cpu_after) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        },
        interrupted,
        aborted,
    })
}

/// The wall-clock time (ms since the Unix epoch) of a monotonic instant in the near future.
fn unix_ms_at(at: Instant) -> f64 {
    let now_wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (now_wall + at.saturating_duration_since(Instant::now())).as_secs_f64() * 1000.0
}

/// One core: its share of the connections, each a task, all recording into the core's stats.
#[allow(clippy::too_many_arguments)]
async fn worker(
    ctx: WorkerCtx,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    progress: Arc<Progress>,
    first_conn: usize,
    launch: Instant,
    measure_start: Instant,
    end: Option<Instant>,
) -> (CoreStats, IoDriver) {
    let conns = split(cfg.conns as u64, cfg.cores, ctx.index) as usize;
    let (budget, active) = match cfg.stop {
        StopAt::Duration(_) => (
            Budget::Until(end.expect("duration runs have an end")),
            conns,
        ),
        StopAt::Requests(n) => {
            let share = split(n, cfg.cores, ctx.index);
            (
                Budget::Count(Rc::new(Cell::new(share))),
                conns.min(share as usize),
            )
        }
    };
    let stats = Rc::new(RefCell::new(CoreStats::new(
        measure_start,
        cfg.timeline,
        progress,
    )));
    let core = Rc::new(CoreCtx {
        cfg: cfg.clone(),
        stats: stats.clone(),
        shared,
        launch,
        hard_end: end.map(|e| e + cfg.timeout),
        core: ctx.index,
        draws: Cell::new(0),
    });
    let mut tasks = Vec::with_capacity(active);
    for j in 0..active {
        let pacer = cfg
            .rate
            .map(|rate| Pacer::new(launch, rate, first_conn + j, cfg.conns));
        let plan = Plan::new(budget.clone(), measure_start, pacer);
        let proto = match cfg.protocol {
            Protocol::Http => Proto::Http(Http::new(&cfg)),
            Protocol::TcpEcho => {
                let server = stats.borrow_mut().intern_server(None);
                Proto::Echo(Echo::new(cfg.request, server))
            }
        };
        tasks.push(monoio::spawn(connection(core.clone(), plan, proto)));
    }
    for t in tasks {
        t.await;
    }
    drop(core);
    let stats = Rc::try_unwrap(stats)
        .map(RefCell::into_inner)
        .unwrap_or_else(|_| panic!("connection tasks still hold the core's stats"));
    (stats, ctx.driver)
}

fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}

fn monitor(
    done: Arc<AtomicBool>,
    progress: Arc<Vec<Arc<Progress>>>,
    measure_start: Instant,
    warmup: bool,
    cpu_at_start: Arc<Mutex<Option<f64>>>,
) {
    let tty = stderr_is_tty();
    let mut sampled = !warmup;
    // A line at the end of each measured second; the warmup shows nothing (it is not counted).
    let mut next_print = measure_start + Duration::from_secs(1);
    let (mut last_req, mut last_err) = (0u64, 0u64);
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        let now = Instant::now();
        if !sampled && now >= measure_start {
            sampled = true;
            *cpu_at_start.lock().unwrap_or_else(|e| e.into_inner()) =
                lb_common::sysinfo::process_cpu_seconds();
        }
        if tty && now >= next_print {
            let req: u64 = progress
                .iter()
                .map(|p| p.requests.load(Ordering::Relaxed))
                .sum();
            let err: u64 = progress
                .iter()
                .map(|p| p.errors.load(Ordering::Relaxed))
                .sum();
            let secs = next_print
                .saturating_duration_since(measure_start)
                .as_secs();
            let _ = writeln!(
                std::io::stderr(),
                "[{secs:>5}s] {:>9} req/s  {:>6} errors/s  total {req} requests, {err} errors",
                req - last_req,
                err - last_err
            );
            (last_req, last_err) = (req, err);
            next_print += Duration::from_secs(1);
        }
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
    // A second Ctrl-C kills the process the default way.
    // SAFETY: signal() is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

fn install_sigint_handler() {
    // SAFETY: the handler only stores an atomic and resets the disposition.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}
