//! Data plane: the L4 relay and the HTTP head peek used by cookie and header hashing.

pub mod http;
pub mod tcp;
