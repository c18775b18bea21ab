//! The client-facing listen address: the file's `listen`, then `HOST`/`PORT`, then `--listen`.

use std::net::SocketAddr;

use super::{invalid, ConfigError, Overrides};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

pub fn build(file_listen: Option<&str>, over: &Overrides) -> Result<SocketAddr, ConfigError> {
    if let Some(l) = &over.listen {
        return lb_common::net::parse_addr(l).map_err(|e| invalid("listen", e));
    }
    let base = file_listen.unwrap_or(DEFAULT_LISTEN);
    let mut addr = lb_common::net::parse_addr(base).map_err(|e| invalid("listen", e))?;
    if let Some(host) = &over.host {
        let host = host.trim();
        // A bare IPv6 address (HOST=::1) needs brackets before a port can follow it.
        let with_port = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:0")
        } else {
            format!("{host}:0")
        };
        let ip = lb_common::net::parse_addr(&with_port)
            .map_err(|e| invalid("HOST", e))?
            .ip();
        addr.set_ip(ip);
    }
    if let Some(port) = &over.port {
        let p: u16 = port
            .trim()
            .parse()
            .map_err(|_| invalid("PORT", format!("'{port}' is not a port number (0-65535)")))?;
        addr.set_port(p);
    }
    Ok(addr)
}
