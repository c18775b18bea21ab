//! Data plane: one worker per core, each with its own listeners, balancer and backend state; a
//! connection never leaves the core that accepted it. Workers are `!Send` inside and meet the
//! control plane only in [`crate::shared`].

mod accept;
mod connection;
pub mod pool;
pub mod upstream;

use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lb_common::runtime::{run_workers, WorkerCtx, WorkerOpts};
use lb_common::task::spawn_guarded;

use crate::proxy::budget::PeekBudget;
use crate::proxy::idle::IdleTimer;
use crate::proxy::readiness::Scratch;
use crate::proxy::tcp::RelayOpts;
use crate::shared::Shared;
use upstream::CoreUpstream;

/// Runs the workers on `listeners` until a graceful stop has finished.
pub fn run(shared: Arc<Shared>, listeners: Vec<StdListener>) -> anyhow::Result<()> {
    let config = &shared.config;
    tracing::info!(
        listen = %shared.listen,
        cores = config.cores,
        pin = config.pin,
        algorithm = config.algorithm.name(),
        backends = %config.backends.iter().map(|b| format!("{}({}, w={})", b.name, b.address, b.weight)).collect::<Vec<_>>().join(", "),
        "lb starting"
    );
    let mut opts = WorkerOpts::new("lb-worker", config.cores);
    opts.pin = config.pin;
    // Listener i goes to worker i mod cores (a takeover may bring more listeners than cores).
    let mut per_worker: Vec<Vec<StdListener>> = (0..config.cores).map(|_| Vec::new()).collect();
    for (i, l) in listeners.into_iter().enumerate() {
        per_worker[i % config.cores].push(l);
    }
    // Startup-only hand-over; the data path takes no lock.
    let per_worker = Mutex::new(per_worker);
    run_workers(&opts, move |ctx| {
        let mine = std::mem::take(&mut per_worker.lock().unwrap()[ctx.index]);
        worker(ctx, mine, shared.clone())
    })?;
    Ok(())
}

/// What every task of one core shares.
struct Core {
    index: usize,
    shared: Arc<Shared>,
    upstream: CoreUpstream,
    relay: RelayOpts,
    scratch: Scratch,
    idle: Rc<IdleTimer>,
    peeks: PeekBudget,
}

async fn worker(ctx: WorkerCtx, listeners: Vec<StdListener>, shared: Arc<Shared>) {
    tracing::info!(
        worker = ctx.index,
        driver = ctx.driver.name(),
        listeners = listeners.len(),
        "worker started"
    );
    let core = Rc::new(Core {
        index: ctx.index,
        upstream: CoreUpstream::new(ctx.index, shared.set.clone(), &shared.config),
        relay: RelayOpts {
            max_buffer: shared.config.relay.buffer_size,
            idle_timeout: shared.config.timeouts.idle,
        },
        scratch: Scratch::new(shared.config.relay.buffer_size),
        idle: IdleTimer::new(shared.config.timeouts.idle),
        peeks: PeekBudget::new(shared.config.relay.peek_memory),
        shared,
    });
    core.upstream.warm_pools();
    let loops = Rc::new(std::cell::Cell::new(listeners.len()));
    for l in listeners {
        let (core, loops) = (core.clone(), loops.clone());
        spawn_guarded("accept", async move {
            accept::accept_loop(l, core).await;
            loops.set(loops.get() - 1);
        });
    }
    // Stop: wait for the accept loops to end, then for open connections until the deadline.
    while loops.get() > 0 {
        monoio::time::sleep(accept::ACCEPT_TICK).await;
    }
    let lifecycle = &core.shared.lifecycle;
    let mut reported = false;
    loop {
        let open = core.shared.cores.get(ctx.index).active;
        if open == 0 {
            break;
        }
        if Instant::now() >= lifecycle.deadline() {
            // Cut with a reset, not a FIN: a transfer ended by the deadline must not look
            // complete. The relays see the cut at once; give them a moment to close.
            let cut = core.idle.cut_all();
            tracing::warn!(
                worker = ctx.index,
                open,
                cut,
                "shutdown deadline reached: resetting the remaining connections"
            );
            let until = Instant::now() + Duration::from_millis(200);
            while core.shared.cores.get(ctx.index).active > 0 && Instant::now() < until {
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            break;
        }
        if !reported {
            tracing::info!(
                worker = ctx.index,
                open,
                "waiting for open connections to finish"
            );
            reported = true;
        }
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(worker = ctx.index, "worker stopped");
}
