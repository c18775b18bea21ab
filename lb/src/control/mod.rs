//! Control plane: everything that is not on the data path. It runs on its own threads
//! (`lb-control` with its own runtime, `lb-discovery` for blocking DNS lookups), once per process, and talks to the workers only through
//! published snapshots and shared counters.

pub mod admin;
pub mod carry;
pub mod discovery;
pub mod health;
pub mod kernel;
pub mod reload;
pub mod replicas;
pub mod upgrade;

use std::net::TcpListener as StdListener;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::rc::Rc;
use std::sync::Arc;

use crate::shared::Shared;

/// Starts the control thread: the admin API (on `admin` and `admin_unix` when given) and the
/// active health checks; and kernel mode's loop, which programs netfilter before this returns
/// (an error when a service requires kernel mode and lb cannot use netfilter).
pub fn start(
    shared: Arc<Shared>,
    admin: Option<StdListener>,
    admin_unix: Option<StdUnixListener>,
    replicas: Arc<replicas::Supervisor>,
) -> std::io::Result<()> {
    kernel::start(shared.clone())?;
    discovery::start(shared.clone())?;
    std::thread::Builder::new()
        .name("lb-control".into())
        .spawn(move || {
            lb_common::runtime::block_on(|| async move {
                let ctx = Rc::new(admin::Ctx {
                    shared: shared.clone(),
                    replicas,
                    slots: Default::default(),
                });
                if let Some(l) = admin {
                    lb_common::task::spawn_guarded("admin", admin::serve_tcp(l, ctx.clone()));
                }
                if let Some(l) = admin_unix {
                    lb_common::task::spawn_guarded("admin-unix", admin::serve_unix(l, ctx.clone()));
                }
                // Per-source tables forget sources that are idle with a full bucket.
                let s = shared.clone();
                lb_common::task::spawn_guarded("ip-sweep", async move {
                    loop {
                        monoio::time::sleep(std::time::Duration::from_secs(10)).await;
                        let now = std::time::Instant::now();
                        for l in s.routing.load().listeners.iter() {
                            let rate = l.config.load().limits.max_new_connections_per_ip_per_s;
                            l.ips.sweep(now, rate);
                        }
                    }
                });
                health::run(shared).await;
                // Health checks off: keep the admin task alive for the life of the process.
                std::future::pending::<()>().await;
            })
        })?;
    Ok(())
}
