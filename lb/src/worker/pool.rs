//! Per-core pool of pre-connected idle backend connections, so that a new client need not wait
//! for the backend handshake. Off by default (`pool.idle_per_backend = 0`); see the benchmark in
//! bench-results/ for when it pays.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

/// Idle connections to one backend, owned by one core.
pub struct BackendPool {
    addr: SocketAddr,
    target: usize,
    max_age: Duration,
    connect_timeout: Duration,
    idle: RefCell<VecDeque<(TcpStream, Instant)>>,
    refilling: Cell<bool>,
}

impl BackendPool {
    pub fn new(
        addr: SocketAddr,
        target: usize,
        max_age: Duration,
        connect_timeout: Duration,
    ) -> Rc<Self> {
        Rc::new(BackendPool {
            addr,
            target,
            max_age,
            connect_timeout,
            idle: RefCell::new(VecDeque::with_capacity(target)),
            refilling: Cell::new(false),
        })
    }

    pub fn enabled(&self) -> bool {
        self.target > 0
    }

    /// A fresh, still-open pooled connection, if any. Stale ones (too old, or closed by the
    /// backend while idle) are dropped on the way.
    pub fn take(&self) -> Option<TcpStream> {
        let now = Instant::now();
        loop {
            let (stream, born) = self.idle.borrow_mut().pop_front()?;
            if now.duration_since(born) < self.max_age && still_open(&stream) {
                return Some(stream);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.idle.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tops the pool up in a background task on this core; at most one refill runs at a time.
    /// A failed connect ends the refill: the next take triggers another attempt.
    pub fn refill(self: &Rc<Self>) {
        if !self.enabled() || self.refilling.get() || self.len() >= self.target {
            return;
        }
        self.refilling.set(true);
        let pool = self.clone();
        lb_common::task::spawn_guarded("pool-refill", async move {
            while pool.len() < pool.target {
                match monoio::time::timeout(
                    pool.connect_timeout,
                    TcpStream::connect_addr(pool.addr),
                )
                .await
                {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        pool.idle.borrow_mut().push_back((s, Instant::now()));
                    }
                    _ => break,
                }
            }
            pool.refilling.set(false);
        });
    }
}

/// True unless the backend already closed or reset this idle connection. One non-blocking
/// `recv(MSG_PEEK)`: an idle connection has nothing to read, so EAGAIN means open.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: valid fd owned by `stream`; one-byte buffer on the stack.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}
