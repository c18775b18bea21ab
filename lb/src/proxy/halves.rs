//! A stream shared by the two directions of a relay, without monoio's FIN on drop.
//!
//! monoio's `OwnedWriteHalf` calls `shutdown(SHUT_WR)` when dropped, so a relay that ends in an
//! error would send a clean FIN before the close it wants to be a reset (`SO_LINGER {1, 0}`):
//! a cut stream would look complete (seen: a backend reset passed on as FIN). These halves do
//! nothing on drop; the relay shuts a direction down explicitly when it reaches EOF.

use std::cell::UnsafeCell;
use std::future::Future;
use std::rc::Rc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::BufResult;

/// One direction's handle: reads in one, writes in the other.
pub struct Half<T>(Rc<UnsafeCell<T>>);

/// Two handles on `stream`, one for each relay direction.
pub fn split<T>(stream: T) -> (Half<T>, Half<T>) {
    let shared = Rc::new(UnsafeCell::new(stream));
    (Half(shared.clone()), Half(shared))
}

impl<T> Half<T> {
    /// # Safety
    /// The relay uses one handle only for reads and the other only for writes, which a TCP
    /// socket allows at the same time (monoio's own split relies on the same).
    #[allow(clippy::mut_from_ref)]
    fn inner(&self) -> &mut T {
        // SAFETY: see above; no reference outlives the call that made it.
        unsafe { &mut *self.0.get() }
    }
}

impl<S: AsyncReadRent> AsyncReadRent for Half<S> {
    fn read<T: IoBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.inner().read(buf)
    }

    fn readv<T: IoVecBufMut>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.inner().readv(buf)
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for Half<S> {
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.inner().write(buf)
    }

    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        self.inner().writev(buf)
    }

    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> {
        self.inner().flush()
    }

    fn shutdown(&mut self) -> impl Future<Output = std::io::Result<()>> {
        self.inner().shutdown()
    }
}
