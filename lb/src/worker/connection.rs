//! One client connection, from accept to close: the prefix (a PROXY header from a trusted
//! balancer, a TLS ClientHello for SNI routing, an HTTP head for a cookie or header key) ->
//! the service -> the key -> a backend -> the PROXY header out and the replayed prefix -> relay
//! -> account.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::balance::{key_from_bytes, key_from_ip};
use crate::config::{AcceptProxy, KeySource, RelayMode, SendProxy};
use crate::proxy::http::peek_key;
use crate::proxy::idle::IdleGuard;
use crate::proxy::prefix::{Prefix, PrefixError};
use crate::proxy::proxy_header::{self, Accept};
use crate::proxy::tcp::{RelayError, Side};
use crate::proxy::tls::{self, peek_sni};
use crate::proxy::{abort_on_close, multishot, readiness, set_keepalive, tcp};
use crate::shared::access_log::End;
use crate::shared::ips::{IpLease, Refused};
use crate::shared::routing::{listener_counter, service_counter};
use crate::shared::Listener;

use super::access_log::Record;
use super::latency::Probe;
use super::upstream::{ActiveConn, ConnectError, Connected};
use super::Core;

/// Why a client was closed before a service was chosen, for the log. Always `None`, for the
/// caller to return.
fn refuse<T>(
    core: &Core,
    listener: &Listener,
    peer: SocketAddr,
    why: &str,
    e: Option<&std::io::Error>,
    log: &Record,
) -> Option<T> {
    log.end(End::Protocol);
    listener
        .counters
        .add(core.index, listener_counter::REFUSED, 1);
    if e.and_then(PrefixError::of) == Some(PrefixError::Refused) {
        core.shared.cores.peek_refused(core.index);
    }
    core.refusals.warn(|suppressed| match e {
        Some(e) => tracing::warn!(listener = %listener.name, %peer, error = %e, suppressed, "{why}; client closed"),
        None => tracing::warn!(listener = %listener.name, %peer, suppressed, "{why}; client closed"),
    });
    None
}

/// Refuses a client by policy (an access list, a per-source limit) with a reset, counted under
/// `counter` and logged at most once per 5 s per core. Always `None`, for the caller to return.
fn deny<T>(
    core: &Core,
    listener: &Listener,
    client: &TcpStream,
    client_addr: SocketAddr,
    counter: usize,
    why: &str,
    log: &Record,
) -> Option<T> {
    log.end(match counter {
        listener_counter::PER_IP => End::Limit,
        listener_counter::RATE => End::RateLimit,
        _ => End::Denied,
    });
    listener.counters.add(core.index, counter, 1);
    abort_on_close(client.as_raw_fd());
    core.refusals.warn(|suppressed| {
        tracing::warn!(listener = %listener.name, client = %client_addr, suppressed, "{why}: client refused")
    });
    None
}

/// What the relay phase needs of a connection that reached its backend, and what must live as
/// long as it: one value, so that the phase's future holds each field once.
struct Relaying<'a> {
    client: TcpStream,
    backend: TcpStream,
    client_addr: SocketAddr,
    log: Record,
    idle: IdleGuard,
    active: ActiveConn,
    probe: Option<Rc<Probe>>,
    /// Bytes of the client's prefix sent before the relay started.
    replayed: u64,
    /// The per-source slot (max_connections_per_ip), held until the connection closes.
    _source: Option<IpLease<'a>>,
}

/// One accepted connection, to its close; the listener's and the core's counts of open
/// connections drop when it ends.
///
/// The setup (the prefix, the routing, the connect and its retries) runs boxed and is freed
/// when the relay starts, so that an idle connection's task carries only the relay phase:
/// heaptrack on 2,000 idle connections showed 1,024 bytes per task with both in one future.
#[allow(clippy::manual_async_fn)]
pub(super) fn handle(
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    core: Rc<Core>,
) -> impl std::future::Future<Output = ()> {
    // A block, not an `async fn`, which would hold its arguments twice (see relay_and_account).
    async move {
        let setup = Box::pin(setup(client, peer, &listener, &core));
        // `let else`, not `if let`: the scrutinee of an `if let` stays in the future beside
        // the relay phase's (928 bytes instead of 568).
        let Some(r) = setup.await else {
            return closed(&listener, &core);
        };
        relay_and_account(r, &core).await;
        closed(&listener, &core)
    }
}

/// A connection of `listener` on this core closed.
fn closed(listener: &Listener, core: &Core) {
    listener
        .counters
        .sub(core.index, listener_counter::ACTIVE, 1);
    core.shared.cores.finished(core.index);
}

/// From accept to the first bytes sent to the backend; `None`: the connection was closed,
/// counted and logged.
async fn setup<'a>(
    mut client: TcpStream,
    peer: SocketAddr,
    listener: &'a Listener,
    core: &'a Core,
) -> Option<Relaying<'a>> {
    let _ = client.set_nodelay(true);
    // The access log's record of this connection (empty with the log off): its line is
    // written when it drops, however the connection ends.
    let log = core.log.open(&listener.name, peer);
    let lcfg = listener.config.load_full();
    let top = &core.shared.config;
    // Everything read before a backend is chosen lives in one bounded buffer, leased from the
    // core's peek budget and read within the top-level `timeouts.peek_ms` (the one in force).
    let limit = top.relay.max_head.max(tls::MAX_HELLO) + proxy_header::V2_MAX;
    let peek = core.shared.live.load().timeouts.peek;
    let mut prefix = Prefix::new(&core.peeks, limit, peek);

    // A PROXY header, only from a trusted balancer; its source is the client from then on.
    let mut client_addr = peer;
    let mut destination = None;
    if lcfg.accept_proxy != AcceptProxy::Off {
        if !lcfg.trusted_proxies.contains(peer.ip()) {
            return refuse(
                core,
                listener,
                peer,
                "PROXY header expected from an untrusted source",
                None,
                &log,
            );
        }
        let accept = match lcfg.accept_proxy {
            AcceptProxy::V1 => Accept::V1,
            AcceptProxy::V2 => Accept::V2,
            _ => Accept::Any,
        };
        // Boxed, like every short-lived state here: kept out of the connection's long-lived
        // future, which every idle connection pays for.
        match Box::pin(proxy_header::read_proxy_header(
            &mut prefix,
            &mut client,
            accept,
        ))
        .await
        {
            // A LOCAL command (an upstream balancer's health check) carries no client.
            Ok(h) => {
                if let Some(src) = h.source() {
                    client_addr = SocketAddr::new(src.ip().to_canonical(), src.port());
                    destination = h.destination();
                    log.client(client_addr);
                }
            }
            Err(e) => {
                return refuse(
                    core,
                    listener,
                    peer,
                    "no valid PROXY header",
                    Some(&e),
                    &log,
                )
            }
        }
    }

    // Who may connect: the access list, then the per-source limits, on the client's address
    // (the PROXY header's when one came). Refused with a reset.
    if !lcfg.limits.access.permits(client_addr.ip()) {
        return deny(
            core,
            listener,
            &client,
            client_addr,
            listener_counter::DENIED,
            "denied by the access list",
            &log,
        );
    }
    let source = if lcfg.limits.per_ip() {
        match listener.ips.admit(
            client_addr.ip(),
            std::time::Instant::now(),
            lcfg.limits.max_connections_per_ip,
            lcfg.limits.max_new_connections_per_ip_per_s,
        ) {
            Ok(lease) => Some(lease),
            Err(why) => {
                let (counter, what) = match why {
                    Refused::TooMany => {
                        (listener_counter::PER_IP, "max_connections_per_ip reached")
                    }
                    Refused::TooFast => (
                        listener_counter::RATE,
                        "max_new_connections_per_ip_per_s exceeded",
                    ),
                    Refused::Full => (listener_counter::PER_IP, "too many sources tracked"),
                };
                return deny(core, listener, &client, client_addr, counter, what, &log);
            }
        }
    } else {
        None
    };

    // The service: the listener's, or chosen by the ClientHello's server name.
    let mut sni = None;
    let lcfg_reads_sni = lcfg.route.reads_sni();
    if lcfg_reads_sni {
        sni = Box::pin(sni_or_refuse(
            &mut prefix,
            &mut client,
            &log,
            core,
            listener,
            client_addr,
        ))
        .await?;
    }
    let Some(name) = lcfg.route.service_for(sni.as_deref()) else {
        return refuse(
            core,
            listener,
            client_addr,
            "no route for this server name and no default_service",
            None,
            &log,
        );
    };
    let Some(svc) = core.service(name) else {
        return refuse(
            core,
            listener,
            client_addr,
            "the listener's service is gone",
            None,
            &log,
        );
    };
    drop(lcfg);
    log.service(&svc.service.name);
    let cfg = svc.service.config.load_full();
    if !cfg.limits.access.permits(client_addr.ip()) {
        return deny(
            core,
            listener,
            &client,
            client_addr,
            listener_counter::DENIED,
            "denied by the service's access list",
            &log,
        );
    }

    // The key, for the hash algorithms.
    let key = if !cfg.algorithm.needs_key() {
        None
    } else {
        match &cfg.key {
            KeySource::ClientIp => Some(key_from_ip(&cfg.hash, client_addr.ip())),
            KeySource::Sni => {
                // Read already when the listener routes by it; else read it now.
                if !lcfg_reads_sni {
                    sni = Box::pin(sni_or_refuse(
                        &mut prefix,
                        &mut client,
                        &log,
                        core,
                        listener,
                        client_addr,
                    ))
                    .await?;
                }
                sni.as_deref()
                    .map(|s| key_from_bytes(&cfg.hash, s.as_bytes()))
            }
            KeySource::Head(source) => {
                match Box::pin(peek_key(&mut prefix, &mut client, source)).await {
                    Ok(range) => range.map(|r| key_from_bytes(&cfg.hash, &prefix.data()[r])),
                    Err(e) => {
                        return refuse(
                            core,
                            listener,
                            client_addr,
                            "no request head in time",
                            Some(&e),
                            &log,
                        )
                    }
                }
            }
        }
    };
    let replay = prefix.into_bytes();

    let Connected {
        stream: mut backend,
        active,
        address,
        queued,
        latency,
    } = match Box::pin(svc.upstream.connect(key)).await {
        Ok(x) => x,
        Err(e) => {
            log.end(match &e {
                ConnectError::NoneAvailable => End::NoBackend,
                ConnectError::AllFailed { tries, .. } => {
                    log.attempts(*tries, std::time::Duration::ZERO);
                    End::ConnectFailed
                }
                ConnectError::QueueTimeout(waited) => {
                    log.attempts(0, *waited);
                    End::QueueTimeout
                }
                ConnectError::QueueFull => End::QueueFull,
                ConnectError::Local(_) => End::Local,
            });
            core.shared.cores.no_backend(core.index);
            svc.service
                .counters
                .add(core.index, service_counter::NO_BACKEND, 1);
            tracing::debug!(%client_addr, service = %svc.service.name, error = %e, "no backend for client; closing it");
            return None;
        }
    };
    let connected_at = std::time::Instant::now();
    log.attempts(active.attempts, queued);
    log.connected(
        active.backend(),
        address,
        active.connect_time.saturating_sub(queued),
    );
    // First to the backend: the PROXY header (for this backend: a retry wrote none to the ones
    // that failed, nothing having been sent), then what was read of the client so far.
    let mut first = match cfg.send_proxy {
        SendProxy::Off => Vec::new(),
        out => {
            let dst = destination
                .or_else(|| client.local_addr().ok())
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            if out == SendProxy::V1 {
                proxy_header::encode_v1(client_addr, dst)
            } else {
                proxy_header::encode_v2(client_addr, dst)
            }
        }
    };
    let replayed = replay.len() as u64;
    if first.is_empty() {
        first = replay;
    } else {
        first.extend_from_slice(&replay);
    }
    let sent_first = !first.is_empty();
    if sent_first {
        let (res, _) = Box::pin(backend.write_all(first)).await;
        if let Err(e) = res {
            tracing::debug!(%client_addr, error = %e, "backend failed while taking the client's first bytes");
            log.end(io_end(Side::Backend, &e));
            // The client's request was cut: it must not see a clean close.
            abort_on_close(client.as_raw_fd());
            return None;
        }
    }
    if let Some(ka) = cfg.timeouts.keepalive {
        set_keepalive(client.as_raw_fd(), ka.idle, ka.interval, ka.count);
        set_keepalive(backend.as_raw_fd(), ka.idle, ka.interval, ka.count);
    }
    let idle = core
        .idle
        .register_with_lifetime(cfg.timeouts.idle, cfg.timeouts.max_lifetime);
    log.relaying(idle.key());
    idle.for_backend(active.backend_id());
    // least_response_time: the relays tell the probe of the first byte each way.
    let probe = latency.map(|est| {
        let sent_at = sent_first.then(std::time::Instant::now);
        let p = Probe::start(est, cfg.response_time.metric, connected_at, sent_at);
        idle.set_probe(p.clone());
        p
    });
    Some(Relaying {
        client,
        backend,
        client_addr,
        log,
        idle,
        active,
        probe,
        replayed,
        _source: source,
    })
}

/// Relays until both sides are done, then counts and logs how the connection ended.
///
/// Not an `async fn`: one of those moves its arguments into its body, so the future would
/// hold `r` twice (824 bytes instead of 432); the block uses the captured `r` in place.
#[allow(clippy::manual_async_fn)]
fn relay_and_account<'a>(
    r: Relaying<'a>,
    core: &'a Core,
) -> impl std::future::Future<Output = ()> + 'a {
    async move {
        // The streams move into the relay; the rest is used in place. Every field is named:
        // the block captures only the fields it uses, and the per-source lease, left to `..`,
        // was dropped before the relay started (a_source_over_its_limit_is_refused_while_
        // another_is_served caught it).
        let Relaying {
            client,
            backend,
            client_addr,
            replayed,
            ref log,
            ref idle,
            ref active,
            ref probe,
            ref _source,
        } = r;
        // Boxed: each mode's future is allocated at its own size instead of the connection
        // carrying the largest.
        let relay: multishot::RelayFuture<'_> = match core.shared.config.relay.mode {
            RelayMode::Readiness => Box::pin(readiness::relay(
                client,
                backend,
                core.relay,
                &core.scratch,
                idle,
            )),
            RelayMode::Completion => Box::pin(tcp::relay(client, backend, core.relay, idle)),
            RelayMode::Multishot => {
                multishot::relay(client, backend, core.relay, &core.scratch, idle)
            }
        };
        let result = relay.await;
        // Counted however the connection ended (an error, the idle timeout, a cut); the replayed
        // prefix counts as relayed: it is the first bytes the backend gets from the client.
        if let Some(p) = probe {
            p.finish(std::time::Instant::now());
        }
        let (up, down) = idle.bytes();
        active.set_bytes(up + replayed, down);
        log.bytes(up + replayed, down);
        log.end(match &result {
            Ok(_) => match idle.first_eof() {
                Some(false) => End::BackendFin,
                _ => End::ClientFin,
            },
            Err(RelayError::Io { side, source }) => io_end(*side, source),
            Err(RelayError::Idle) => End::IdleTimeout,
            Err(RelayError::Shutdown) => End::Shutdown,
            Err(RelayError::Lifetime) => End::Lifetime,
            Err(RelayError::Drained) => End::DrainDeadline,
        });
        match result {
            Ok(_) => {
                tracing::trace!(%client_addr, backend = active.backend(), up = up + replayed, down, "connection done")
            }
            Err(e) => {
                tracing::debug!(%client_addr, backend = active.backend(), error = %e, "connection ended with an error; both sides reset")
            }
        }
    }
}

/// The ClientHello's server name (Some(None): not TLS, or no name); None: it was malformed and
/// the connection is refused (counted and logged).
async fn sni_or_refuse(
    prefix: &mut Prefix<'_>,
    client: &mut TcpStream,
    log: &Record,
    core: &Core,
    listener: &Listener,
    client_addr: SocketAddr,
) -> Option<Option<String>> {
    match sni_of(prefix, client, log).await {
        Ok(s) => Some(s),
        Err(e) => refuse(
            core,
            listener,
            client_addr,
            "malformed TLS ClientHello",
            Some(&e),
            log,
        ),
    }
}

/// The ClientHello's server name (None: not TLS, or no name), also for the access log.
async fn sni_of(
    prefix: &mut Prefix<'_>,
    client: &mut TcpStream,
    log: &Record,
) -> std::io::Result<Option<String>> {
    let s = Box::pin(peek_sni(prefix, client)).await?;
    log.sni(s.as_deref());
    Ok(s)
}

/// An I/O error's side and kind, as the access log says it.
fn io_end(side: Side, e: &std::io::Error) -> End {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    let reset = matches!(e.kind(), ConnectionReset | BrokenPipe | ConnectionAborted);
    match (side, reset) {
        (Side::Client, true) => End::ClientReset,
        (Side::Client, false) => End::ClientError,
        (Side::Backend, true) => End::BackendReset,
        (Side::Backend, false) => End::BackendError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, D, F>(_: impl Fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every open connection's task holds this future. It was about 930 bytes (heaptrack: a
    /// 1,024-byte task per idle connection) while the setup's state shared it with the relay
    /// phase, `async fn`s kept their arguments twice and the spawn wrapped it in another block.
    #[test]
    fn the_future_of_an_idle_connection_stays_small() {
        let size = returned_size(handle);
        assert!(size <= 640, "connection future is {size} bytes");
    }
}
