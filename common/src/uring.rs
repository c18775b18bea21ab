//! A per-core io_uring of our own for multishot receives into a provided buffer ring.
//!
//! monoio 0.2.4 keeps its ring and its ops private and has neither multishot receives nor
//! provided buffers, so this is a second, small ring beside monoio's, used for one thing: a
//! socket's receives. One `RecvMulti` per socket stays armed for the connection's life (no poll
//! armed and no failed receive per message), each message lands in a buffer taken from this
//! core's buffer ring, and a socket waiting for bytes holds no buffer at all. Sends, accepts,
//! connects and timers stay on monoio.
//!
//! The bridge: one monoio task per core (the pump) waits for this ring's descriptor to poll
//! readable (completions waiting) with a poll on monoio's ring, takes every completion waiting
//! here in one pass, wakes the receivers they belong to and polls again. Each wake costs one
//! poll armed on monoio's ring (a poll, not the failed read and poll an eventfd read costs;
//! `LB_RECV_RING_BRIDGE=eventfd` selects that bridge instead, for comparison). The ring runs
//! with COOP_TASKRUN, so its receive work runs in whatever `io_uring_enter` the thread makes
//! next, usually monoio's own wait, which then sees the poll complete in the same call.
//!
//! Backpressure: a multishot receive keeps taking bytes while the peer sends, whether or not they
//! were passed on. A socket with [`MAX_QUEUED`] messages waiting is cancelled and re-armed once
//! its reader took them, so that a slow writer bounds what its connection holds and the kernel's
//! receive window pushes back on the sender as with any other relay.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll, Waker};

use io_uring::types::BufRingEntry;
use io_uring::{cqueue, opcode, types, IoUring};
use slab::Slab;

use crate::runtime::IoDriver;

/// Size of one provided buffer: what one completion can carry.
pub const BUF_SIZE: usize = 16 * 1024;
/// Buffers a core starts with; the pool doubles when the kernel finds it empty, up to
/// [`MAX_BUFS`] (16 MiB of buffers per core at most).
pub const INITIAL_BUFS: u16 = 32;
pub const MAX_BUFS: u16 = 1024;
/// Buffers are allocated in slabs of this many.
const SLAB_BUFS: u16 = 16;
/// Messages a socket may have waiting for its reader before its receive is paused.
pub const MAX_QUEUED: usize = 4;
const BGID: u16 = 0;
const SQ_ENTRIES: u32 = 256;
const CQ_ENTRIES: u32 = 4096;
/// user_data of the cancels, whose completions are ignored.
const CANCEL: u64 = u64::MAX;
/// Marks the user_data of a single-shot receive into a stream's own buffer.
const PRIVATE: u64 = 1 << 62;
/// `IORING_ENTER_GETEVENTS` (io_uring.h; the crate keeps its `sys` private).
const ENTER_GETEVENTS: u32 = 1;

/// One core's receive ring, its buffers and its receivers.
pub struct RecvRing {
    inner: RefCell<Inner>,
    /// The pump's wakeups and completions seen: how well the bridge batches.
    wakes: Cell<u64>,
    completions: Cell<u64>,
}

struct Inner {
    ring: IoUring,
    pool: Pool,
    streams: Slab<Stream>,
    /// Wakers collected while draining, woken after the borrow ends.
    wake: Vec<Waker>,
}

enum Ready {
    Data {
        bid: u16,
        len: u32,
    },
    /// Received into the stream's own buffer, the pool being empty.
    Owned(Box<[u8]>, u32),
    Eof,
    Err(i32),
}

#[derive(Default)]
struct Stream {
    fd: RawFd,
    queue: VecDeque<Ready>,
    /// A multishot receive is in the kernel for this socket.
    armed: bool,
    /// A cancel of it is on its way (paused for backpressure, or the receiver is gone).
    cancelling: bool,
    /// EOF or an error is queued: nothing more will come.
    done: bool,
    /// The receiver was dropped while armed: the entry goes with the last completion.
    dropped: bool,
    /// The last receive ended for want of a buffer.
    starved: bool,
    /// A poll for readable is in the kernel instead (`armed`, with the PRIVATE user_data): the
    /// pool was empty, and the receive happens once the socket is readable, into a buffer
    /// allocated then. A receive of its own waiting in the kernel would hold a buffer for as
    /// long as the peer is quiet: 16 KiB per idle connection (seen: 11 KiB per connection
    /// over 5,000 held open, against 4.4 KiB for the completion relay).
    polling: bool,
    waker: Option<Waker>,
}

thread_local! {
    /// This thread's ring, and the runtime it was made in (its pump runs there).
    static CURRENT: RefCell<Option<(u64, Option<Rc<RecvRing>>)>> = const { RefCell::new(None) };
}

impl RecvRing {
    /// This core's ring, made (and its pump spawned) on first use; None where it cannot run: the
    /// epoll driver, a kernel before 6.0 (multishot receive), or a ring the kernel refuses. Must
    /// be called inside the runtime.
    pub fn current() -> Option<Rc<RecvRing>> {
        let runtime = crate::runtime::runtime_id();
        CURRENT.with(|c| {
            if let Some((id, r)) = c.borrow().as_ref() {
                if *id == runtime {
                    return r.clone();
                }
            }
            let made = if IoDriver::current() == Some(IoDriver::IoUring) {
                match RecvRing::new() {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "multishot receive ring unavailable: using the readiness relay");
                        None
                    }
                }
            } else {
                None
            };
            *c.borrow_mut() = Some((runtime, made.clone()));
            made
        })
    }

    fn new() -> io::Result<Rc<RecvRing>> {
        if !kernel_at_least(6, 0) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "multishot receive needs Linux 6.0",
            ));
        }
        let mut b = IoUring::builder();
        b.setup_cqsize(CQ_ENTRIES)
            .setup_coop_taskrun()
            .setup_taskrun_flag();
        let ring = b.build(SQ_ENTRIES)?;
        let pool = Pool::new(&ring)?;
        let bridge = match std::env::var("LB_RECV_RING_BRIDGE").as_deref() {
            Ok("eventfd") => Bridge::EventFd,
            _ => Bridge::Poll,
        };
        let wake_fd = match bridge {
            // SAFETY: dup(2) of the ring's descriptor returns a new one or -1.
            Bridge::Poll => unsafe { libc::fcntl(ring.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) },
            // SAFETY: eventfd(2) returns a new descriptor or -1.
            Bridge::EventFd => unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) },
        };
        if wake_fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just made and own.
        let wake_fd = unsafe { OwnedFd::from_raw_fd(wake_fd) };
        if bridge == Bridge::EventFd {
            ring.submitter().register_eventfd(wake_fd.as_raw_fd())?;
        }
        let rr = Rc::new(RecvRing {
            inner: RefCell::new(Inner {
                ring,
                pool,
                streams: Slab::new(),
                wake: Vec::new(),
            }),
            wakes: Cell::new(0),
            completions: Cell::new(0),
        });
        crate::task::spawn_guarded("recv-ring-pump", pump(rr.clone(), bridge, wake_fd));
        Ok(rr)
    }

    /// A receiver for `fd`, armed at its first `recv`. `fd` must stay open until it is dropped.
    pub fn recv(self: &Rc<Self>, fd: RawFd) -> MultiRecv {
        let key = self.inner.borrow_mut().streams.insert(Stream {
            fd,
            ..Stream::default()
        });
        MultiRecv {
            ring: self.clone(),
            key,
        }
    }

    /// (pump wakeups, completions taken): completions per wakeup is the bridge's batch.
    pub fn stats(&self) -> (u64, u64) {
        (self.wakes.get(), self.completions.get())
    }

    /// Buffers in the pool now (allocated, in the kernel's ring or held by receivers).
    pub fn buffers(&self) -> usize {
        self.inner.borrow().pool.total as usize
    }

    /// Takes every completion waiting on the ring and wakes the receivers they belong to.
    fn drain(&self) {
        let mut wake = {
            let mut guard = self.inner.borrow_mut();
            let inner = &mut *guard;
            if inner.ring.submission().cq_overflow() {
                // Completions that overflowed the queue come back only in an enter with
                // GETEVENTS.
                // SAFETY: no argument; the ring is ours.
                let _ = unsafe {
                    inner
                        .ring
                        .submitter()
                        .enter::<libc::sigset_t>(0, 0, ENTER_GETEVENTS, None)
                };
            }
            let mut cancels = Vec::new();
            let mut n = 0u64;
            let mut wake = std::mem::take(&mut inner.wake);
            for cqe in inner.ring.completion() {
                n += 1;
                let ud = cqe.user_data();
                if ud == CANCEL {
                    continue;
                }
                let (res, flags) = (cqe.result(), cqe.flags());
                let more = cqueue::more(flags);
                let bid = cqueue::buffer_select(flags);
                if bid.is_some() {
                    inner.pool.out += 1;
                }
                let key = (ud & !PRIVATE) as usize;
                let Some(st) = inner.streams.get_mut(key) else {
                    if let Some(bid) = bid {
                        inner.pool.put(bid);
                    }
                    continue;
                };
                if !more {
                    st.armed = false;
                    st.cancelling = false;
                }
                if st.dropped {
                    if let Some(bid) = bid {
                        inner.pool.put(bid);
                    }
                    if !more {
                        inner.streams.remove(key);
                    }
                    continue;
                }
                if ud & PRIVATE != 0 {
                    st.polling = false;
                    let ready = if res < 0 {
                        Some(Ready::Err(-res))
                    } else {
                        recv_now(st.fd)
                    };
                    // None: nothing to read after all; the receiver polls again.
                    if let Some(r) = ready {
                        st.done = matches!(r, Ready::Eof | Ready::Err(_));
                        st.queue.push_back(r);
                    }
                    if let Some(w) = st.waker.take() {
                        wake.push(w);
                    }
                    continue;
                }
                match (res, bid) {
                    (len @ 1.., Some(bid)) => {
                        st.queue.push_back(Ready::Data {
                            bid,
                            len: len as u32,
                        });
                        if more && !st.cancelling && st.queue.len() >= MAX_QUEUED {
                            st.cancelling = true;
                            cancels.push(key);
                        }
                    }
                    (0, _) => {
                        if let Some(bid) = bid {
                            inner.pool.put(bid);
                        }
                        st.queue.push_back(Ready::Eof);
                        st.done = true;
                    }
                    (e, _) if e == -libc::ENOBUFS => {
                        st.starved = true;
                        inner.pool.grow();
                    }
                    (e, _) if e == -libc::ECANCELED => {}
                    (e, bid) => {
                        if let Some(bid) = bid {
                            inner.pool.put(bid);
                        }
                        st.queue
                            .push_back(Ready::Err(if e < 0 { -e } else { libc::EIO }));
                        st.done = true;
                    }
                }
                if let Some(w) = st.waker.take() {
                    wake.push(w);
                }
            }
            for key in cancels {
                inner.push(cancel(key as u64));
            }
            if !inner.ring.submission().is_empty() {
                inner.submit();
            }
            self.completions.set(self.completions.get() + n);
            wake
        };
        for w in wake.drain(..) {
            w.wake();
        }
        self.inner.borrow_mut().wake = wake;
    }

    fn put(&self, bid: u16) {
        self.inner.borrow_mut().pool.put(bid);
    }
}

impl Inner {
    fn push(&mut self, sqe: io_uring::squeue::Entry) {
        // SAFETY: every SQE here points at nothing that could go away (a socket the receiver
        // keeps open, the buffer ring that lives as long as the ring).
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.submit();
        }
    }

    fn submit(&mut self) {
        if let Err(e) = self.ring.submit() {
            tracing::warn!(error = %e, "recv ring submit failed");
        }
    }
}

fn cancel(user_data: u64) -> io_uring::squeue::Entry {
    opcode::AsyncCancel::new(user_data)
        .build()
        .user_data(CANCEL)
}

/// How completions on this ring wake monoio's loop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bridge {
    /// A poll on the ring's own descriptor, armed on monoio's ring.
    Poll,
    /// An eventfd registered on the ring, read on monoio's ring.
    EventFd,
}

async fn pump(ring: Rc<RecvRing>, bridge: Bridge, fd: OwnedFd) {
    match bridge {
        Bridge::Poll => {
            // monoio has no poll on an arbitrary descriptor, but a TcpStream's `readable` is a
            // plain IORING_OP_POLL_ADD on the descriptor it holds, nothing socket-specific, and
            // an io_uring descriptor polls readable while completions wait on it.
            let ring_fd = monoio::net::TcpStream::from_std(std::net::TcpStream::from(fd))
                .expect("a descriptor for the pump's poll");
            loop {
                ring.drain();
                let res = ring_fd.readable(true).await;
                ring.woken(res).await;
            }
        }
        Bridge::EventFd => {
            let file = monoio::fs::File::from_std(std::fs::File::from(fd)).expect("eventfd");
            let mut buf = vec![0u8; 8];
            loop {
                ring.drain();
                let (res, b) = file.read_at(buf, 0).await;
                buf = b;
                ring.woken(res.map(drop)).await;
            }
        }
    }
}

impl RecvRing {
    /// The pump was woken (`res`: how its wait ended).
    async fn woken(&self, res: io::Result<()>) {
        let wakes = self.wakes.get() + 1;
        self.wakes.set(wakes);
        if wakes.is_multiple_of(1 << 12) {
            tracing::debug!(
                wakes,
                completions = self.completions.get(),
                buffers = self.buffers(),
                "recv ring: completions taken per pump wakeup"
            );
        }
        if let Err(e) = res {
            // Never seen; the receivers would stall without the pump, so log and go on
            // without spinning.
            tracing::error!(error = %e, "recv ring pump wait failed");
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// One socket's receives. Dropping it cancels the receive still in the kernel.
pub struct MultiRecv {
    ring: Rc<RecvRing>,
    key: usize,
}

impl MultiRecv {
    /// The next message: `Ok(None)` at EOF.
    pub fn recv(&mut self) -> Next<'_> {
        Next { recv: self }
    }
}

pub struct Next<'a> {
    recv: &'a mut MultiRecv,
}

impl Future for Next<'_> {
    type Output = io::Result<Option<Chunk>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let recv = &*self.recv;
        let mut guard = recv.ring.inner.borrow_mut();
        let inner = &mut *guard;
        let st = &mut inner.streams[recv.key];
        match st.queue.pop_front() {
            Some(Ready::Data { bid, len }) => {
                let ptr = inner.pool.addr(bid) as *const u8;
                return Poll::Ready(Ok(Some(Chunk {
                    ring: recv.ring.clone(),
                    bid: Some(bid),
                    _owned: None,
                    len,
                    ptr,
                })));
            }
            Some(Ready::Owned(buf, len)) => {
                return Poll::Ready(Ok(Some(Chunk {
                    ring: recv.ring.clone(),
                    bid: None,
                    ptr: buf.as_ptr(),
                    _owned: Some(buf),
                    len,
                })));
            }
            Some(Ready::Eof) => return Poll::Ready(Ok(None)),
            Some(Ready::Err(e)) => return Poll::Ready(Err(io::Error::from_raw_os_error(e))),
            None if st.done => return Poll::Ready(Ok(None)),
            None => {}
        }
        if !st.armed && !st.cancelling {
            st.armed = true;
            let sqe = if st.starved && inner.pool.free() == 0 {
                // The pool is at its maximum and every buffer is held (by connections whose
                // peers do not read): wait for the socket to be readable, then receive once
                // into a buffer of this stream's own rather than wait for one of the pool, so
                // that a crowd of stalled connections slows the others down but never stops
                // them.
                st.polling = true;
                opcode::PollAdd::new(types::Fd(st.fd), libc::POLLIN as u32)
                    .build()
                    .user_data(recv.key as u64 | PRIVATE)
            } else {
                st.starved = false;
                opcode::RecvMulti::new(types::Fd(st.fd), BGID)
                    .build()
                    .user_data(recv.key as u64)
            };
            inner.push(sqe);
            inner.submit();
        }
        let st = &mut inner.streams[recv.key];
        if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            st.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// A receive into a buffer of the stream's own, the socket having polled readable. None: it
/// had nothing after all (EAGAIN).
fn recv_now(fd: RawFd) -> Option<Ready> {
    let mut buf = vec![0u8; BUF_SIZE].into_boxed_slice();
    // SAFETY: the buffer is ours and BUF_SIZE long; MSG_DONTWAIT never blocks the core.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), BUF_SIZE, libc::MSG_DONTWAIT) };
    match n {
        0 => Some(Ready::Eof),
        n if n > 0 => Some(Ready::Owned(buf, n as u32)),
        _ => match io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
        {
            libc::EAGAIN | libc::EINTR => None,
            e => Some(Ready::Err(e)),
        },
    }
}

impl Drop for MultiRecv {
    fn drop(&mut self) {
        let mut guard = self.ring.inner.borrow_mut();
        let inner = &mut *guard;
        let st = &mut inner.streams[self.key];
        let queued: Vec<Ready> = st.queue.drain(..).collect();
        let (armed, cancelling) = (st.armed, st.cancelling);
        let ud = self.key as u64 | if st.polling { PRIVATE } else { 0 };
        if armed {
            st.dropped = true;
            st.waker = None;
        } else {
            inner.streams.remove(self.key);
        }
        for r in queued {
            if let Ready::Data { bid, .. } = r {
                inner.pool.put(bid);
            }
        }
        if armed && !cancelling {
            inner.push(cancel(ud));
            // At once: the kernel holds the socket open until its receive is gone.
            inner.submit();
        }
    }
}

/// One received message, in a buffer of the pool (given back when this is dropped) or, when
/// the pool was exhausted, in one of its own.
pub struct Chunk {
    ring: Rc<RecvRing>,
    bid: Option<u16>,
    /// Keeps the memory `ptr` points into when it is not the pool's.
    _owned: Option<Box<[u8]>>,
    len: u32,
    ptr: *const u8,
}

impl Chunk {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: the kernel wrote `len` bytes there and the buffer is ours until dropped.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len as usize) }
    }
}

// SAFETY: the pointer stays valid and unchanged until the chunk is dropped (the pool never frees
// a buffer while its ring lives), which is all a send needs.
unsafe impl monoio::buf::IoBuf for Chunk {
    fn read_ptr(&self) -> *const u8 {
        self.ptr
    }

    fn bytes_init(&self) -> usize {
        self.len as usize
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if let Some(bid) = self.bid {
            self.ring.put(bid);
        }
    }
}

/// The provided buffers and the ring through which the kernel takes them.
struct Pool {
    /// MAX_BUFS entries, page-aligned, shared with the kernel.
    entries: *mut BufRingEntry,
    tail: u16,
    slabs: Vec<Box<[u8]>>,
    /// Buffers allocated, and of them those held by receivers (taken by a completion and not
    /// yet given back).
    total: u16,
    out: u16,
}

impl Pool {
    fn new(ring: &IoUring) -> io::Result<Pool> {
        let map_len = MAX_BUFS as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let entries = ptr as *mut BufRingEntry;
        // SAFETY: the mapping is page-aligned, MAX_BUFS entries long, and lives as long as the
        // ring (it is unmapped only after the ring is gone).
        let reg = unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, MAX_BUFS, BGID)
        };
        if let Err(e) = reg {
            // SAFETY: the mapping made above.
            unsafe { libc::munmap(ptr, map_len) };
            return Err(e);
        }
        let mut pool = Pool {
            entries,
            tail: 0,
            slabs: Vec::new(),
            total: 0,
            out: 0,
        };
        pool.add(INITIAL_BUFS);
        Ok(pool)
    }

    fn free(&self) -> u16 {
        self.total - self.out
    }

    fn addr(&self, bid: u16) -> *mut u8 {
        let slab = &self.slabs[(bid / SLAB_BUFS) as usize];
        let off = (bid % SLAB_BUFS) as usize * BUF_SIZE;
        slab[off..].as_ptr() as *mut u8
    }

    /// Doubles the pool (up to MAX_BUFS); false when it is at its maximum.
    fn grow(&mut self) -> bool {
        let n = self.total.min(MAX_BUFS - self.total);
        if n == 0 {
            return false;
        }
        self.add(n);
        true
    }

    fn add(&mut self, n: u16) {
        let first = self.total;
        for _ in 0..n.div_ceil(SLAB_BUFS) {
            // Zeroed memory comes untouched from the kernel: a buffer costs RSS once used.
            self.slabs
                .push(vec![0u8; SLAB_BUFS as usize * BUF_SIZE].into_boxed_slice());
        }
        self.total += n.div_ceil(SLAB_BUFS) * SLAB_BUFS;
        for bid in first..self.total {
            self.publish(bid);
        }
        self.commit();
    }

    /// Gives a buffer back to the kernel.
    fn put(&mut self, bid: u16) {
        self.out -= 1;
        self.publish(bid);
        self.commit();
    }

    fn publish(&mut self, bid: u16) {
        let addr = self.addr(bid) as u64;
        // SAFETY: the index is masked into the MAX_BUFS entries of our mapping.
        let e = unsafe { &mut *self.entries.add((self.tail & (MAX_BUFS - 1)) as usize) };
        e.set_addr(addr);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn commit(&self) {
        // SAFETY: the tail field of the ring's first entry, shared with the kernel: a release
        // store publishes the entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The ring is gone by now (Inner drops it first), but its requests may be torn down
        // asynchronously: keep the buffers and the entries rather than risk a late write.
        std::mem::forget(std::mem::take(&mut self.slabs));
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    // SAFETY: utsname is plain data that uname fills.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return false;
    }
    // SAFETY: uname NUL-terminates release.
    let rel = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }.to_string_lossy();
    let mut it = rel.split(|c: char| !c.is_ascii_digit());
    let ma: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mi: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This runtime's ring; None on the epoll driver, which has none (the relays fall back to
    /// the readiness relay there), where these tests have nothing to test.
    fn test_ring() -> Option<Rc<RecvRing>> {
        let ring = RecvRing::current();
        assert!(
            ring.is_some() || std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some(),
            "no multishot ring on io_uring"
        );
        ring
    }

    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    /// `n` loopback connections: (the receiving end, the sending end).
    fn pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        (0..n)
            .map(|_| {
                let tx = TcpStream::connect(a).unwrap();
                let (rx, _) = l.accept().unwrap();
                (rx, tx)
            })
            .collect()
    }

    fn pattern(conn: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + conn * 7) as u8).collect()
    }

    /// Everything a receiver gets until EOF.
    async fn read_all(r: &mut MultiRecv) -> Vec<u8> {
        let mut got = Vec::new();
        while let Some(c) = r.recv().await.unwrap() {
            got.extend_from_slice(&c);
        }
        got
    }

    #[test]
    fn bytes_arrive_in_order_and_eof_follows() {
        crate::runtime::block_on(|| async {
            let Some(ring) = test_ring() else {
                return;
            };
            let mut p = pairs(1);
            let (rx, tx) = p.pop().unwrap();
            let mut r = ring.recv(rx.as_raw_fd());
            let data = pattern(0, 200_000);
            let sent = data.clone();
            let writer = std::thread::spawn(move || {
                let mut tx = tx;
                for part in sent.chunks(1000) {
                    tx.write_all(part).unwrap();
                }
            });
            assert_eq!(read_all(&mut r).await, data);
            writer.join().unwrap();
            drop(rx);
        });
    }

    /// 300 connections with 64 KiB each waiting and nobody reading: the pool grows to its
    /// maximum, receives pause at MAX_QUEUED, and when every buffer is held the starved
    /// connections receive into buffers of their own: every byte still arrives.
    #[test]
    fn unread_connections_exhaust_the_pool_and_every_byte_still_arrives() {
        crate::runtime::block_on(|| async {
            let Some(ring) = test_ring() else {
                return;
            };
            let conns = pairs(300);
            let len = 64 * 1024;
            let mut rs: Vec<MultiRecv> = conns
                .iter()
                .map(|(rx, _)| ring.recv(rx.as_raw_fd()))
                .collect();
            // Arm every receiver (one poll each), then let the bytes pour in.
            for r in rs.iter_mut() {
                let waker = std::task::Waker::noop();
                let mut cx = Context::from_waker(waker);
                let mut next = r.recv();
                let _ = Pin::new(&mut next).poll(&mut cx);
            }
            let senders: Vec<_> = conns
                .iter()
                .enumerate()
                .map(|(i, (_, tx))| {
                    let mut tx = tx.try_clone().unwrap();
                    std::thread::spawn(move || {
                        tx.write_all(&pattern(i, len)).unwrap();
                        tx.shutdown(std::net::Shutdown::Write).unwrap();
                    })
                })
                .collect();
            monoio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert_eq!(
                ring.buffers(),
                MAX_BUFS as usize,
                "the pool grew to its maximum"
            );
            // Keep every message: 300 x 64 KiB is more than the whole pool, so the last
            // connections find it empty.
            let mut kept = Vec::new();
            for (i, r) in rs.iter_mut().enumerate() {
                let mut chunks = Vec::new();
                while let Some(c) = r.recv().await.unwrap() {
                    chunks.push(c);
                }
                let got: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                assert!(got == pattern(i, len), "connection {i}");
                kept.push(chunks);
            }
            let owned = kept.iter().flatten().filter(|c| c.bid.is_none()).count();
            assert!(owned > 0, "no receive went to a buffer of its own");
            drop(kept);
            senders.into_iter().for_each(|s| s.join().unwrap());
            assert_eq!(ring.inner.borrow().pool.out, 0, "every buffer given back");
        });
    }

    #[test]
    fn a_dropped_receiver_lets_its_socket_close() {
        crate::runtime::block_on(|| async {
            let Some(ring) = test_ring() else {
                return;
            };
            let (rx, mut tx) = pairs(1).pop().unwrap();
            let mut r = ring.recv(rx.as_raw_fd());
            tx.write_all(b"x").unwrap();
            assert_eq!(&*r.recv().await.unwrap().unwrap(), b"x");
            // The receive is armed again and holds the socket; dropping both must close it.
            drop(r);
            drop(rx);
            tx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut b = [0u8; 1];
            let t = std::time::Instant::now();
            let got = loop {
                // Let the ring run the cancel while we wait for the close.
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                tx.set_nonblocking(true).unwrap();
                match std::io::Read::read(&mut tx, &mut b) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break 0,
                }
                assert!(
                    t.elapsed() < std::time::Duration::from_secs(5),
                    "socket kept open"
                );
            };
            assert_eq!(got, 0);
        });
    }
}
