//! `lb`: a thread-per-core L4 TCP load balancer on monoio (io_uring).

pub mod balance;
pub mod config;
pub mod control;
pub mod proxy;
pub mod runtime;
pub mod upstream;
