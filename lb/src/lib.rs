//! `lb`: a thread-per-core L4 TCP load balancer on monoio (io_uring).
//!
//! Layers, lowest first: `balance` and `proxy` (pure algorithms and byte movers, knowing nothing
//! of backends or config), `config`, `shared` (the contract between the planes), then the two
//! planes `worker` (data, one per core) and `control` (everything else), which never import each
//! other; `serve` composes them.

pub mod balance;
pub mod config;
pub mod control;
pub mod proxy;
pub mod serve;
pub mod shared;
pub mod worker;
