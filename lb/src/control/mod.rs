//! Control plane: everything that is not on the data path. It runs on its own threads
//! (`lb-control` with its own runtime, `lb-discovery` for blocking DNS lookups), once per process, and talks to the workers only through
//! published snapshots and shared counters.

pub mod admin;
pub mod carry;
pub mod discovery;
pub mod health;
pub mod reload;
pub mod replicas;
pub mod upgrade;

use std::net::TcpListener as StdListener;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::rc::Rc;
use std::sync::Arc;

use crate::shared::Shared;

/// Starts the control thread: the admin API (on `admin` and `admin_unix` when given) and the
/// active health checks.
pub fn start(
    shared: Arc<Shared>,
    admin: Option<StdListener>,
    admin_unix: Option<StdUnixListener>,
) -> std::io::Result<()> {
    discovery::start(shared.clone())?;
    std::thread::Builder::new()
        .name("lb-control".into())
        .spawn(move || {
            lb_common::runtime::block_on(|| async move {
                let slots = Rc::new(admin::Slots::default());
                if let Some(l) = admin {
                    let (s, slots) = (shared.clone(), slots.clone());
                    lb_common::task::spawn_guarded("admin", admin::serve_tcp(l, s, slots));
                }
                if let Some(l) = admin_unix {
                    let (s, slots) = (shared.clone(), slots.clone());
                    lb_common::task::spawn_guarded("admin-unix", admin::serve_unix(l, s, slots));
                }
                health::run(shared).await;
                // Health checks off: keep the admin task alive for the life of the process.
                std::future::pending::<()>().await;
            })
        })?;
    Ok(())
}
