//! `[relay]`: how bytes are moved, buffer and head sizes, the accept backlog.

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Largest per-direction relay buffer; buffers start small and grow to this on full reads.
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
pub const MIN_BUFFER_SIZE: usize = 1024;
pub const MAX_BUFFER_SIZE: usize = 16 * 1024 * 1024;
pub const DEFAULT_MAX_HEAD: usize = lb_common::http::DEFAULT_MAX_HEAD;
pub const DEFAULT_BACKLOG: i32 = lb_common::net::DEFAULT_BACKLOG;
/// Memory one core lets its head peeks hold at once: 2,048 default-sized heads.
pub const DEFAULT_PEEK_MEMORY: usize = 16 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRelay {
    pub mode: Option<String>,
    pub buffer_size: Option<usize>,
    pub max_head: Option<usize>,
    pub backlog: Option<i32>,
    pub peek_memory: Option<usize>,
}

/// How bytes are moved; see `proxy::readiness` and `proxy::tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMode {
    /// io_uring poll for readiness, then non-blocking recv/send through a per-core buffer:
    /// idle connections hold no buffer.
    Readiness,
    /// io_uring recv/send with a buffer committed to every pending read.
    Completion,
    /// One multishot receive per socket into the core's provided buffer ring (no poll armed
    /// per message, no buffer held while idle); sends on monoio. Readiness where it cannot run.
    Multishot,
}

pub const DEFAULT_RELAY_MODE: RelayMode = RelayMode::Completion;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    pub mode: RelayMode,
    pub buffer_size: usize,
    /// Largest request head peeked for a cookie or header key.
    pub max_head: usize,
    pub backlog: i32,
    /// What one core's head peeks may hold at once.
    pub peek_memory: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            mode: DEFAULT_RELAY_MODE,
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_head: DEFAULT_MAX_HEAD,
            backlog: DEFAULT_BACKLOG,
            peek_memory: DEFAULT_PEEK_MEMORY,
        }
    }
}

pub fn build(f: &FileRelay) -> Result<RelayConfig, ConfigError> {
    let buffer_size = f.buffer_size.unwrap_or(DEFAULT_BUFFER_SIZE);
    if !(MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&buffer_size) {
        return Err(invalid(
            "relay.buffer_size",
            format!(
                "must be between {MIN_BUFFER_SIZE} and {MAX_BUFFER_SIZE} bytes (got {buffer_size})"
            ),
        ));
    }
    let mode = match f.mode.as_deref() {
        None => DEFAULT_RELAY_MODE,
        Some("readiness") => RelayMode::Readiness,
        Some("completion") => RelayMode::Completion,
        Some("multishot") => RelayMode::Multishot,
        Some(other) => {
            return Err(invalid(
                "relay.mode",
                format!(
                "'{other}' is not a relay mode: use \"readiness\", \"completion\" or \"multishot\""
            ),
            ))
        }
    };
    let max_head = f.max_head.unwrap_or(DEFAULT_MAX_HEAD);
    if !(256..=1024 * 1024).contains(&max_head) {
        return Err(invalid(
            "relay.max_head",
            format!("must be between 256 and 1048576 bytes (got {max_head})"),
        ));
    }
    let backlog = f.backlog.unwrap_or(DEFAULT_BACKLOG);
    if backlog < 1 {
        return Err(invalid(
            "relay.backlog",
            format!("must be at least 1 (got {backlog})"),
        ));
    }
    let peek_memory = f.peek_memory.unwrap_or(DEFAULT_PEEK_MEMORY);
    if !(max_head..=1 << 30).contains(&peek_memory) {
        return Err(invalid(
            "relay.peek_memory",
            format!("must be between relay.max_head ({max_head}) and 1073741824 bytes (got {peek_memory})"),
        ));
    }
    Ok(RelayConfig {
        mode,
        buffer_size,
        max_head,
        backlog,
        peek_memory,
    })
}
