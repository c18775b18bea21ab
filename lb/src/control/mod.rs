//! Control plane: everything that is not on the data path.

pub mod replicas;
