//! Code shared by `lb`, `backend` and `loadgen`: per-core bootstrap, listeners, HTTP helpers.

pub mod http;
pub mod logging;
pub mod net;
pub mod quiesce;
pub mod runtime;
pub mod signals;
pub mod sysinfo;
pub mod task;
pub mod uring;
