//! `[admin]`: where the admin API listens.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{invalid, ConfigError};

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9900";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// None: no admin listener.
    pub listen: Option<SocketAddr>,
}

/// `over` is `--admin` (an address or "off").
pub fn build(f: &FileAdmin, over: Option<&str>) -> Result<AdminConfig, ConfigError> {
    let listen = match over.or(f.listen.as_deref()) {
        Some("off") => None,
        Some(a) => Some(
            lb_common::net::parse_addr(a)
                .map_err(|e| invalid("admin.listen", format!("{e}; or \"off\"")))?,
        ),
        None => Some(DEFAULT_ADMIN_LISTEN.parse().expect("valid default")),
    };
    Ok(AdminConfig { listen })
}
