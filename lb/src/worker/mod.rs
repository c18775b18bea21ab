//! Data plane: one worker per core, each with its own listeners, balancer and backend state; a
//! connection never leaves the core that accepted it. Workers are `!Send` inside and meet the
//! control plane only in [`crate::shared`].

mod accept;
pub mod access_log;
mod connection;
mod latency;
pub mod pool;
pub mod queue;
pub mod upstream;

use std::cell::{Cell, RefCell};
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
use crate::shared::{Listener, Service, Shared};
use upstream::CoreUpstream;

/// Runs the workers until a graceful stop has finished. `sockets` holds, for each listener in
/// the routing, its per-core sockets (socket i goes to worker i mod cores).
pub fn run(
    shared: Arc<Shared>,
    sockets: Vec<(Arc<Listener>, Vec<StdListener>)>,
) -> anyhow::Result<()> {
    let config = &shared.config;
    let routing = shared.routing.load();
    tracing::info!(
        listeners = %routing.listeners.iter().map(|l| format!("{}({})", l.name, l.address)).collect::<Vec<_>>().join(", "),
        services = %routing.services.iter().map(|s| {
            let c = s.config.load();
            format!("{}[{}: {}]", s.name, c.algorithm.name(), c.backends.iter().map(|b| format!("{}({}, w={})", b.name, b.address, b.weight)).collect::<Vec<_>>().join(", "))
        }).collect::<Vec<_>>().join(", "),
        cores = config.cores,
        pin = config.pin,
        "lb starting"
    );
    let mut opts = WorkerOpts::new("lb-worker", config.cores);
    opts.pin = config.pin;
    let mut per_worker: Vec<Vec<(Arc<Listener>, StdListener)>> =
        (0..config.cores).map(|_| Vec::new()).collect();
    for (listener, socks) in sockets {
        for (i, s) in socks.into_iter().enumerate() {
            per_worker[i % config.cores].push((listener.clone(), s));
        }
    }
    // Startup-only hand-over; the data path takes no lock.
    let per_worker = Mutex::new(per_worker);
    let access = shared.access.clone();
    let ran = run_workers(&opts, move |ctx| {
        let mine = std::mem::take(&mut per_worker.lock().unwrap()[ctx.index]);
        worker(ctx, mine, shared.clone())
    });
    // Every core handed its last lines over when its runtime ended: wait until they are out.
    access.flush(Duration::from_secs(2));
    ran?;
    Ok(())
}

/// This core's view of one service.
pub(crate) struct CoreService {
    pub service: Arc<Service>,
    pub upstream: CoreUpstream,
}

/// This core's services, for one routing generation.
struct CoreServices {
    generation: u64,
    list: Vec<Rc<CoreService>>,
}

/// What every task of one core shares.
struct Core {
    index: usize,
    shared: Arc<Shared>,
    services: RefCell<CoreServices>,
    relay: RelayOpts,
    scratch: Scratch,
    idle: Rc<IdleTimer>,
    peeks: PeekBudget,
    /// Accept loops running on this core.
    loops: Cell<usize>,
    /// Clients refused before a service was chosen: one warning per 5 s per core.
    refusals: lb_common::logging::RateLimited,
    log: Rc<access_log::CoreLog>,
}

impl Core {
    /// The service named `name` in the routing in force, as this core sees it. A core keeps its
    /// view of a service (balancer, ejections, pools) while the service stays.
    fn service(&self, name: &str) -> Option<Rc<CoreService>> {
        let routing = self.shared.routing.load();
        if routing.generation != self.services.borrow().generation {
            let mut cur = self.services.borrow_mut();
            let list = routing
                .services
                .iter()
                .map(|s| {
                    cur.list
                        .iter()
                        .find(|c| Arc::ptr_eq(&c.service, s))
                        .cloned()
                        .unwrap_or_else(|| {
                            let c = Rc::new(CoreService {
                                service: s.clone(),
                                upstream: CoreUpstream::new(
                                    self.index,
                                    s.clone(),
                                    self.shared.config.pool,
                                ),
                            });
                            c.upstream.warm_pools();
                            c
                        })
                })
                .collect();
            *cur = CoreServices {
                generation: routing.generation,
                list,
            };
        }
        self.services
            .borrow()
            .list
            .iter()
            .find(|c| c.service.name == name)
            .cloned()
    }

    /// Cuts this core's connections to backends past their drain deadline.
    fn cut_drained(&self) {
        let now = Instant::now();
        let services = self.services.borrow();
        for svc in &services.list {
            for b in &svc.service.set.load().backends {
                if b.drain_deadline.is_some_and(|d| now >= d) && b.counters.active() > 0 {
                    let id = Arc::as_ptr(&b.counters) as usize;
                    let n = self.idle.cut_backend(id);
                    if n > 0 {
                        tracing::info!(worker = self.index, service = %svc.service.name, backend = ?b.name, connections = n, "drain deadline passed: closing the backend's remaining connections");
                    }
                }
            }
        }
    }

    /// Starts accepting on `socket` of `listener` on this core.
    fn start_accepting(self: &Rc<Self>, listener: Arc<Listener>, socket: StdListener) {
        self.loops.set(self.loops.get() + 1);
        let core = self.clone();
        spawn_guarded("accept", async move {
            accept::accept_loop(socket, listener, core.clone()).await;
            core.loops.set(core.loops.get() - 1);
        });
    }
}

async fn worker(ctx: WorkerCtx, sockets: Vec<(Arc<Listener>, StdListener)>, shared: Arc<Shared>) {
    tracing::info!(
        worker = ctx.index,
        driver = ctx.driver.name(),
        listeners = sockets.len(),
        "worker started"
    );
    let idle = IdleTimer::new();
    let log = access_log::CoreLog::new(shared.access.clone(), shared.config.cores, idle.clone());
    let core = Rc::new(Core {
        index: ctx.index,
        services: RefCell::new(CoreServices {
            generation: 0,
            list: Vec::new(),
        }),
        relay: RelayOpts {
            max_buffer: shared.config.relay.buffer_size,
        },
        scratch: Scratch::new(shared.config.relay.buffer_size),
        idle,
        log,
        peeks: PeekBudget::new(shared.config.relay.peek_memory),
        loops: Cell::new(0),
        refusals: Default::default(),
        shared,
    });
    // Build every service's view now (and warm its pool), not at the first connection.
    let names: Vec<String> = core
        .shared
        .routing
        .load()
        .services
        .iter()
        .map(|s| s.name.clone())
        .collect();
    for n in names {
        let _ = core.service(&n);
    }
    for (listener, socket) in sockets {
        core.start_accepting(listener, socket);
    }
    // Every 100 ms: the access log's buffer out and its periodic lines, and the connections of
    // backends whose drain deadline passed cut.
    let ticking = core.clone();
    spawn_guarded("core-tick", async move {
        loop {
            monoio::time::sleep(access_log::FLUSH_EVERY).await;
            ticking.log.tick();
            ticking.cut_drained();
        }
    });
    // Listeners a reload adds arrive in this core's inbox.
    let lifecycle = &core.shared.lifecycle;
    while !lifecycle.stopping() || core.loops.get() > 0 {
        if !lifecycle.stopping() {
            let new: Vec<(Arc<Listener>, StdListener)> = std::mem::take(
                &mut *core.shared.inbox[ctx.index]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            for (listener, socket) in new {
                tracing::info!(worker = ctx.index, listener = %listener.name, address = %listener.address, "accepting on a listener the reload added");
                core.start_accepting(listener, socket);
            }
        }
        monoio::time::sleep(accept::ACCEPT_TICK).await;
    }
    // Stop: the accept loops have ended; wait for open connections until the deadline.
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
    // The lines of the connections that just ended go out now: the process exits next.
    core.log.flush();
    tracing::info!(worker = ctx.index, "worker stopped");
}
