//! Control plane: everything that is not on the data path. It runs on its own threads
//! (`lb-control` with its own runtime, `lb-discovery` for blocking DNS lookups), once per process, and talks to the workers only through
//! published snapshots and shared counters.

pub mod admin;
pub mod discovery;
pub mod health;
pub mod reload;
pub mod replicas;
pub mod upgrade;

use std::net::TcpListener as StdListener;
use std::sync::Arc;

use crate::shared::Shared;

/// Starts the control thread: the admin API (if `admin` is given) and the active health checks.
pub fn start(shared: Arc<Shared>, admin: Option<StdListener>) -> std::io::Result<()> {
    discovery::start(shared.clone())?;
    std::thread::Builder::new()
        .name("lb-control".into())
        .spawn(move || {
            lb_common::runtime::block_on(|| async move {
                if let Some(l) = admin {
                    let s = shared.clone();
                    lb_common::task::spawn_guarded(
                        "admin",
                        async move { admin::serve(l, s).await },
                    );
                }
                health::run(shared).await;
                // Health checks off: keep the admin task alive for the life of the process.
                std::future::pending::<()>().await;
            })
        })?;
    Ok(())
}
