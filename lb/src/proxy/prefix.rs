//! The bytes a connection reads before it picks a backend: a PROXY header, then a TLS ClientHello
//! or an HTTP request head. Every peek on a connection reads into the same [`Prefix`], so that
//! what one peek read past its own end (the ClientHello after a PROXY header, in the same
//! segment) is there for the next; what is left is replayed to the backend.
//!
//! Clients on the data port are untrusted: a prefix is bounded in bytes (its limit), in time (one
//! deadline for the whole prefix phase, however many peeks it takes) and, with every other prefix
//! on the core, in memory (the core's [`PeekBudget`]).

use std::io;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use monoio::time::Instant;

use super::budget::{PeekBudget, PeekLease};

/// The first allocation: most PROXY headers, ClientHellos and request heads fit in it.
const FIRST: usize = 1024;
/// The smallest growth after the first allocation (then the buffer doubles, up to the limit).
const MIN_GROWTH: usize = 512;

/// Why [`Prefix::fill`] read nothing. EOF is not among them: it is `Ok(0)`, as for any read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The deadline of the prefix phase passed (`io::ErrorKind::TimedOut`). The bytes read so far
    /// are gone with the cancelled read: the caller is expected to close the connection.
    #[error("the client sent nothing lb could route on before the peek deadline")]
    Timeout,
    /// The prefix holds its limit of bytes (`io::ErrorKind::InvalidData`); nothing was read.
    #[error("the client sent {0} bytes without ending what lb peeks at")]
    Full(usize),
    /// The core's peek memory is in use by other connections (`io::ErrorKind::OutOfMemory`).
    #[error("the core's peek memory (relay.peek_memory) is in use by other clients' heads")]
    Refused,
}

impl PrefixError {
    pub fn kind(self) -> io::ErrorKind {
        match self {
            PrefixError::Timeout => io::ErrorKind::TimedOut,
            PrefixError::Full(_) => io::ErrorKind::InvalidData,
            PrefixError::Refused => io::ErrorKind::OutOfMemory,
        }
    }

    /// The prefix error inside `e`, if `e` came from [`Prefix::fill`] for one of these reasons
    /// (and not from the socket).
    pub fn of(e: &io::Error) -> Option<PrefixError> {
        e.get_ref()?.downcast_ref::<PrefixError>().copied()
    }
}

impl From<PrefixError> for io::Error {
    fn from(e: PrefixError) -> io::Error {
        io::Error::new(e.kind(), e)
    }
}

/// A connection's peeked bytes, in a buffer leased from its core's [`PeekBudget`].
pub struct Prefix<'b> {
    buf: Vec<u8>,
    /// What `buf`'s capacity holds of the core's budget.
    lease: PeekLease<'b>,
    /// Most bytes held at once (and most capacity).
    limit: usize,
    /// The end of the prefix phase, for every fill.
    deadline: Instant,
}

impl<'b> Prefix<'b> {
    /// An empty prefix that may hold up to `limit` bytes and read until `timeout` from now. It
    /// holds no memory until the first [`fill`](Prefix::fill).
    pub fn new(budget: &'b PeekBudget, limit: usize, timeout: Duration) -> Prefix<'b> {
        Prefix {
            buf: Vec::new(),
            lease: budget.lease(),
            limit,
            deadline: Instant::now() + timeout,
        }
    }

    /// The bytes read and not consumed.
    pub fn data(&self) -> &[u8] {
        &self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Holds its limit: the next fill fails with [`PrefixError::Full`].
    pub fn is_full(&self) -> bool {
        self.buf.len() >= self.limit
    }

    /// Drops `n` bytes from the front (a PROXY header, which is not for the backend). The
    /// capacity stays, and with it the lease; the bytes after them move to the front.
    ///
    /// # Panics
    /// If `n` is more than [`len`](Prefix::len): the caller parsed bytes it did not have.
    pub fn consume(&mut self, n: usize) {
        assert!(
            n <= self.buf.len(),
            "consumed {n} of {} bytes",
            self.buf.len()
        );
        self.buf.drain(..n);
    }

    /// Reads once more from `stream`, after what is held: `Ok(n)` with the bytes read, `Ok(0)` at
    /// EOF. Fails with a [`PrefixError`] (see [`PrefixError::of`]) when the prefix is full, the
    /// core's budget cannot hold more, or the deadline passed; otherwise with the socket's error.
    pub async fn fill(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        let len = self.buf.len();
        if len >= self.limit {
            return Err(PrefixError::Full(len).into());
        }
        if self.buf.capacity() == len {
            let more = if len == 0 { FIRST } else { len.max(MIN_GROWTH) }.min(self.limit - len);
            // Leased before allocating, so that a refusal allocates nothing.
            if !self.lease.hold(len + more) {
                return Err(PrefixError::Refused.into());
            }
            self.buf.reserve_exact(more);
        }
        // monoio reads into a Vec from its start: read into the spare capacity instead. The read
        // cannot pass the limit: the capacity is at most the limit.
        let buf = std::mem::take(&mut self.buf);
        match monoio::time::timeout_at(self.deadline, stream.read(buf.slice_mut(len..))).await {
            Ok((res, slice)) => {
                self.buf = slice.into_inner();
                res
            }
            // A client that cannot send what lb peeks at in time is not served (as with nginx's
            // client_header_timeout); the cancelled read took the buffer with it.
            Err(_) => Err(PrefixError::Timeout.into()),
        }
    }

    /// The bytes to replay to the backend before relaying. Gives the lease back: the replay is
    /// one write, outside the peek phase.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{client_sending, join};
    use super::*;

    #[test]
    fn fill_appends_after_what_is_held_and_consume_drops_from_the_front() {
        lb_common::runtime::block_on(|| async {
            let budget = PeekBudget::new(1 << 20);
            let (mut s, client) =
                client_sending(vec![b"PROXY".to_vec(), b" rest".to_vec()], true).await;
            let mut p = Prefix::new(&budget, 4096, Duration::from_secs(5));
            while p.len() < 10 {
                assert!(p.fill(&mut s).await.unwrap() > 0);
            }
            assert_eq!(p.data(), b"PROXY rest");
            assert_eq!(p.fill(&mut s).await.unwrap(), 0, "EOF");
            p.consume(6);
            assert_eq!(p.data(), b"rest");
            assert_eq!(
                budget.used(),
                FIRST,
                "the capacity stays leased after a consume"
            );
            assert_eq!(p.into_bytes(), b"rest");
            assert_eq!(budget.used(), 0, "into_bytes gives the lease back");
            join(client).await;
        });
    }

    #[test]
    fn eof_the_deadline_and_the_limit_are_told_apart() {
        lb_common::runtime::block_on(|| async {
            let budget = PeekBudget::new(1 << 20);
            // EOF: Ok(0), the bytes kept.
            let (mut s, c) = client_sending(vec![b"ab".to_vec()], true).await;
            let mut p = Prefix::new(&budget, 4096, Duration::from_secs(5));
            let mut got = 0;
            loop {
                match p.fill(&mut s).await.unwrap() {
                    0 => break,
                    n => got += n,
                }
            }
            assert_eq!((got, p.data()), (2, &b"ab"[..]));
            join(c).await;

            // The deadline: TimedOut, and a PrefixError::Timeout inside.
            let (mut s, c) = client_sending(vec![b"x".to_vec()], false).await;
            let mut p = Prefix::new(&budget, 4096, Duration::from_millis(150));
            let started = std::time::Instant::now();
            let e = loop {
                match p.fill(&mut s).await {
                    Ok(n) => assert!(n > 0, "no EOF from a client that holds on"),
                    Err(e) => break e,
                }
            };
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
            assert_eq!(PrefixError::of(&e), Some(PrefixError::Timeout));
            assert!(started.elapsed() < Duration::from_secs(3));
            drop(s);
            join(c).await;

            // The limit: exactly `limit` bytes held, then Full without reading.
            let budget = PeekBudget::new(1 << 20);
            let (mut s, c) = client_sending(vec![vec![b'z'; 3000]], false).await;
            let mut p = Prefix::new(&budget, 1500, Duration::from_secs(5));
            let e = loop {
                match p.fill(&mut s).await {
                    Ok(n) => assert!(n > 0),
                    Err(e) => break e,
                }
            };
            assert_eq!(PrefixError::of(&e), Some(PrefixError::Full(1500)));
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert_eq!(p.len(), 1500);
            assert!(p.is_full());
            assert!(budget.used() <= 1500, "{} leased", budget.used());
            drop((p, s));
            join(c).await;

            // A socket error is none of them.
            let other = io::Error::from(io::ErrorKind::ConnectionReset);
            assert_eq!(PrefixError::of(&other), None);
        });
    }

    #[test]
    fn a_prefix_is_refused_when_the_cores_budget_is_used_up() {
        lb_common::runtime::block_on(|| async {
            let budget = PeekBudget::new(1500);
            let (mut s, c) = client_sending(vec![vec![b'a'; 1024], vec![b'b'; 600]], false).await;
            let mut p = Prefix::new(&budget, 64 * 1024, Duration::from_secs(5));
            // 1,024 bytes fit; growing to 2,048 does not.
            let e = loop {
                match p.fill(&mut s).await {
                    Ok(n) => assert!(n > 0),
                    Err(e) => break e,
                }
            };
            assert_eq!(PrefixError::of(&e), Some(PrefixError::Refused));
            assert_eq!(e.kind(), io::ErrorKind::OutOfMemory);
            assert_eq!((p.len(), budget.used()), (1024, 1024));
            // Another prefix cannot even start while this one holds its first 1,024 bytes...
            let (mut s2, c2) = client_sending(vec![b"x".to_vec()], false).await;
            let mut q = Prefix::new(&budget, 64 * 1024, Duration::from_secs(5));
            let e = q.fill(&mut s2).await.unwrap_err();
            assert_eq!(PrefixError::of(&e), Some(PrefixError::Refused));
            // ...and can once it is gone.
            drop(p);
            assert_eq!(budget.used(), 0);
            assert_eq!(q.fill(&mut s2).await.unwrap(), 1);
            drop((s, s2, q));
            join(c).await;
            join(c2).await;
        });
    }

    #[test]
    fn a_prefix_adds_little_to_the_connection_it_lives_in() {
        // It lives in the connection's future through the peeks and the backend connect.
        let size = std::mem::size_of::<Prefix<'static>>();
        assert!(size <= 64, "Prefix is {size} bytes");
    }
}
