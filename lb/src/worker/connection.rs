//! One client connection, from accept to close: key -> choose a backend -> replay any peeked
//! head -> relay -> account.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use monoio::net::TcpStream;

use crate::balance::{key_from_bytes, key_from_ip};
use crate::config::{KeySource, RelayMode};
use crate::proxy::abort_on_close;
use crate::proxy::http::peek_key;
use crate::proxy::prefix::Prefix;
use crate::proxy::readiness;
use crate::proxy::tcp;

use super::Core;

pub(super) async fn handle(mut client: TcpStream, peer: SocketAddr, core: &Core) {
    let _ = client.set_nodelay(true);
    let cfg = &core.shared.config;
    let mut replay = None;
    let key = if !cfg.algorithm.needs_key() {
        None
    } else {
        match &cfg.key {
            KeySource::ClientIp => Some(key_from_ip(&cfg.hash, peer.ip())),
            // Boxed, like the connect below: short-lived states kept out of the connection's
            // long-lived future, which every idle connection pays for.
            KeySource::Head(source) => {
                let mut prefix = Prefix::new(&core.peeks, cfg.relay.max_head, cfg.timeouts.peek);
                match Box::pin(peek_key(&mut prefix, &mut client, source)).await {
                    Ok(key) => {
                        let key = key.map(|r| key_from_bytes(&cfg.hash, &prefix.data()[r]));
                        replay = Some(prefix.into_bytes());
                        key
                    }
                    Err(e) => {
                        if e.kind() == std::io::ErrorKind::OutOfMemory {
                            core.shared.cores.peek_refused(core.index);
                        }
                        tracing::debug!(%peer, error = %e, "closing client before choosing a backend");
                        return;
                    }
                }
            }
        }
    };
    let (mut backend, active) = match Box::pin(core.upstream.connect(key)).await {
        Ok(x) => x,
        Err(e) => {
            core.shared.cores.no_backend(core.index);
            tracing::debug!(%peer, error = %e, "no backend for client; closing it");
            return;
        }
    };
    // The replayed head counts as relayed: it is the first bytes the backend gets.
    let mut replayed = 0u64;
    if let Some(bytes) = replay.filter(|b| !b.is_empty()) {
        use monoio::io::AsyncWriteRentExt;
        let len = bytes.len() as u64;
        let (res, _) = Box::pin(backend.write_all(bytes)).await;
        if let Err(e) = res {
            tracing::debug!(%peer, error = %e, "backend failed while replaying the peeked head");
            // The client's request was cut: it must not see a clean close.
            abort_on_close(client.as_raw_fd());
            return;
        }
        replayed = len;
    }
    let idle = core.idle.register();
    let result = match cfg.relay.mode {
        // Boxed: each mode's future is allocated at its own size instead of the connection
        // carrying the larger of the two.
        RelayMode::Readiness => {
            Box::pin(readiness::relay(
                client,
                backend,
                core.relay,
                &core.scratch,
                &idle,
            ))
            .await
        }
        RelayMode::Completion => Box::pin(tcp::relay(client, backend, core.relay, &idle)).await,
    };
    // Counted however the connection ended (an error, the idle timeout, a cut).
    let (up, down) = idle.bytes();
    active.set_bytes(up + replayed, down);
    match result {
        Ok(_) => {
            tracing::trace!(%peer, backend = active.backend(), up = up + replayed, down, "connection done")
        }
        Err(e) => {
            tracing::debug!(%peer, backend = active.backend(), error = %e, "connection ended with an error; both sides reset")
        }
    }
}
